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
