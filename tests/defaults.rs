//! Defaults that fit where scopegate runs, read back through the real
//! binary's `config print`: worker threads follow the CPUs the process may
//! use, and the management deadline follows the store.

mod common;

use std::process::Command;

fn printed(prefix: &[&str], args: &[&str], key: &str) -> String {
    let (program, rest) = match prefix.split_first() {
        Some((program, rest)) => (*program, rest.to_vec()),
        None => (common::BIN, vec![]),
    };
    let mut command = Command::new(program);
    command.args(rest);
    if !prefix.is_empty() {
        command.arg(common::BIN);
    }
    let output = command
        .args(["config", "print"])
        .args(args)
        .env_remove("SCOPEGATE_WORKER_THREADS")
        .env_remove("SCOPEGATE_REQUEST_TIMEOUT_MS")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key} = ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{key} is not printed"))
}

#[test]
fn worker_threads_follow_the_cpus_the_process_may_use() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(printed(&[], &[], "worker_threads"), cpus.min(2).to_string());
    // Pinned to one CPU, as taskset or a 1-CPU container does.
    assert_eq!(printed(&["taskset", "-c", "0"], &[], "worker_threads"), "1");
    assert_eq!(
        printed(
            &["taskset", "-c", "0"],
            &["--worker-threads", "3"],
            "worker_threads"
        ),
        "3",
        "a flag still wins"
    );
}

#[test]
fn the_management_deadline_fits_the_store() {
    assert_eq!(printed(&[], &[], "request_timeout_ms"), "5000");
    let fleet = ["--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:1"];
    assert_eq!(printed(&[], &fleet, "request_timeout_ms"), "15000");
    let explicit = ["--request-timeout-ms", "250"];
    assert_eq!(printed(&[], &explicit, "request_timeout_ms"), "250");
}

/// `config print` shows every setting that has a default, with that
/// default: each flag `serve --help` gives a `[default: …]` appears there.
#[test]
fn config_print_shows_every_default_serve_help_names() {
    let help = std::process::Command::new(common::BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let printed = std::process::Command::new(common::BIN)
        .args(["config", "print"])
        .env_remove("SCOPEGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    let mut flag = None;
    let mut checked = 0;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            flag = rest.split([' ', '=', '<']).next().map(str::to_owned);
        }
        if line.contains("[default: ") {
            let name = flag.as_deref().unwrap().replace('-', "_");
            assert!(
                printed
                    .lines()
                    .any(|line| line.starts_with(&format!("{name} = "))),
                "config print lacks {name}:\n{printed}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked} defaults seen in:\n{help}");
}
