//! `scopegate serve`: settings from file, env and flags, logging, the
//! runtime, and the signals that drain it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{ConfigError, ServeOptions};
use crate::server;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys). Flags and
    /// SCOPEGATE_* environment variables override it.
    #[arg(long, env = "SCOPEGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: ServeOptions,
}

pub(super) fn runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // With one worker, a task a running task wakes goes behind the tasks
    // already ready, not first: the connection task then writes the answers
    // of every request decided in one turn with one writev, not one each
    // (10× fewer syscalls, 1.3× the throughput at 64 in flight). With more
    // workers the LIFO slot stays: every task queued would wake an idle
    // worker to steal it, 1.4× the CPU per request at one in flight.
    // BENCHMARKS.md, issue #38. Needs `--cfg tokio_unstable`
    // (.cargo/config.toml).
    #[cfg(tokio_unstable)]
    if worker_threads == 1 {
        builder.disable_lifo_slot();
    }
    builder
        .worker_threads(worker_threads)
        // Store writes run on blocking threads; an idle one leaves soon
        // instead of after tokio's 10 s, so an idle sidecar keeps few threads.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::from(2)
        })
}

pub(super) fn effective_options(args: ServeArgs) -> Result<ServeOptions, ConfigError> {
    Ok(match &args.config {
        Some(path) => args.options.or(ServeOptions::from_file(path)?),
        None => args.options,
    })
}

pub(super) fn serve(args: ServeArgs) -> ExitCode {
    let config = match effective_options(args).and_then(|options| options.resolve()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    init_logging(config.json_logs);
    match runtime.block_on(server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "scopegate failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn init_logging(json: bool) {
    // limitador opens an INFO span around every counter call (a registry
    // entry per Check of a limited key) and logs nothing in it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,limitador=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub(super) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// On one worker, tasks a task wakes run in the order they became ready
    /// (no LIFO slot), which is what lets the connection task batch writes.
    #[test]
    fn woken_tasks_run_in_the_order_they_became_ready() {
        let runtime = super::runtime(1).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let recorded = order.clone();
        runtime
            .block_on(runtime.spawn(async move {
                let tasks: Vec<_> = ["first", "second", "third"]
                    .into_iter()
                    .map(|name| {
                        let order = recorded.clone();
                        tokio::spawn(async move { order.lock().unwrap().push(name) })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            }))
            .unwrap();
        assert_eq!(*order.lock().unwrap(), ["first", "second", "third"]);
    }
}
