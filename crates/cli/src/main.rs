//! `refit`: upgrades Kubernetes clusters node by node and fleets stage by stage.
//!
//! This file only wires things together: parse arguments, set up logging, run the command,
//! turn its error into the documented exit code (0 done, 1 failed or blocked, 2 bad input).

// Library code may not panic on a missing value or an index (clippy.toml lets tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod args;
mod commands;
mod output;
mod remedy;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::output::UsageError;

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
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
                // A store others can write is refused as bad input: the fix is the operator's.
                || err.chain().any(|c| {
                    matches!(c.downcast_ref::<refit_store::Error>(), Some(refit_store::Error::Unsafe { .. }))
                })
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

/// clap's own exits: help and version print as clap prints them (exit 0); a usage error is
/// one `error:` line like every other bad input (clap adds a blank line and a hint), exit 2.
fn clap_exit(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    eprintln!("{}", clap_one_line(&e.render().to_string()));
    ExitCode::from(2)
}

/// clap's message as one line: its first line, plus its tips (`a similar argument exists`).
fn clap_one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines.next().unwrap_or("error: bad arguments").to_string();
    for tip in lines.filter(|l| l.starts_with("tip:")) {
        out.push_str("; ");
        out.push_str(tip);
    }
    out
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
    fn a_clap_error_is_one_line_with_its_tips() {
        let e =
            Cli::try_parse_from(["refit", "upgrade", "--to", "1.37", "--drain-timeout", "5124095576030432h"])
                .unwrap_err();
        let line = clap_one_line(&e.render().to_string());
        assert_eq!(
            line,
            "error: invalid value '5124095576030432h' for '--drain-timeout <DRAIN_TIMEOUT>': must be at most one year (8760h)"
        );
        let e = Cli::try_parse_from(["refit", "upgrade", "--to", "1.37", "--forc"]).unwrap_err();
        let line = clap_one_line(&e.render().to_string());
        assert!(line.starts_with("error: unexpected argument '--forc' found; tip:"), "{line}");
        assert!(!line.contains('\n'));
    }

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
