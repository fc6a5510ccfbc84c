//! `refit`: upgrades Kubernetes clusters node by node and fleets stage by stage.
//!
//! This file only wires things together: parse arguments, set up logging, run the command,
//! turn its error into the documented exit code (0 done, 1 failed or blocked, 2 bad input).

mod args;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::output::UsageError;

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    if matches!(cli.command, args::Command::Upgrade(_)) {
        // A run must not die with the consumer of its output (`-o json | head -1`) halfway
        // through a node's action: its writes to a closed pipe are dropped instead.
        ignore_sigpipe();
    }
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            let usage = err.chain().any(|c| c.downcast_ref::<UsageError>().is_some())
                || err.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<refit_testbed::Error>(),
                        Some(
                            refit_testbed::Error::NotBuilt { .. }
                                | refit_testbed::Error::NotFound(_)
                                | refit_testbed::Error::Config(_)
                        )
                    )
                });
            eprintln!("{}", one_line(&err));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// The error as one line: `error: ` once, then the outermost context and each cause. A cause
/// rendered by a library may carry its own `error: ` (or span lines); only its first line
/// counts, without the prefix.
fn one_line(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err
        .chain()
        .map(|c| {
            let text = c.to_string();
            let mut line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            while let Some(rest) = line.strip_prefix("error:") {
                line = rest.trim_start();
            }
            line.to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    format!("error: {}", parts.join(": "))
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings only).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,kube_client=off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Rust ignores SIGPIPE, so `refit versions | head` would panic on the closed pipe. Restore
/// the default (exit quietly), as every Unix filter behaves.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `refit upgrade` keeps running when its output pipe closes (see main).
#[allow(unsafe_code)]
fn ignore_sigpipe() {
    // SAFETY: called in main before the runtime starts any thread; SIG_IGN is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_error_prefix_per_line_whatever_the_causes_say() {
        let err = anyhow::anyhow!("error: line 4 column 5: expected a sequence\n  --> here\n")
            .context("bad.yaml: the strategy is not valid");
        assert_eq!(
            one_line(&err),
            "error: bad.yaml: the strategy is not valid: line 4 column 5: expected a sequence"
        );
        assert_eq!(one_line(&anyhow::anyhow!("plain")), "error: plain");
    }
}
