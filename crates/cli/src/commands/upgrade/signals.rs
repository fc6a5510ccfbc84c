//! Stop signals during a run. Ctrl-C (SIGINT), SIGTERM (systemd, a container runtime, `kill`)
//! and SIGHUP (the terminal went away) all ask for the same clean stop: no new node starts,
//! drains are abandoned and their cordons given back, node actions under way finish. They get
//! `grace` to do so; a second signal, or the end of the grace period, leaves at once (exit
//! 130) — the journal lets a rerun of the same command continue.
//!
//! SIGPIPE is ignored for `refit upgrade` (main.rs): a consumer of `-o json` that goes away
//! (`| head -1`) must not kill the process in the middle of a node's action; output to a
//! closed pipe is dropped instead.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The exit code when refit leaves before the clean stop completed.
const LEFT_AT_ONCE: i32 = 130;

/// Watches for stop signals for the rest of the process; the first sets `stop`.
pub fn on_stop(stop: watch::Sender<bool>, grace: Duration) {
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        tracing::warn!("cannot watch SIGTERM/SIGHUP: only Ctrl-C stops the run cleanly");
        tokio::spawn(ctrl_c_only(stop, grace));
        return;
    };
    tokio::spawn(async move {
        let first = tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_ok() { "Ctrl-C" } else { return },
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        };
        announce(first, grace);
        let _ = stop.send(true);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = tokio::time::sleep(grace) => {
                eprintln!("the stop grace period ({}s) passed with node actions still running: leaving now; rerun the same command to continue", grace.as_secs());
            }
        }
        std::process::exit(LEFT_AT_ONCE);
    });
}

async fn ctrl_c_only(stop: watch::Sender<bool>, grace: Duration) {
    if tokio::signal::ctrl_c().await.is_ok() {
        announce("Ctrl-C", grace);
        let _ = stop.send(true);
        let _ = tokio::time::timeout(grace, tokio::signal::ctrl_c()).await;
        std::process::exit(LEFT_AT_ONCE);
    }
}

fn announce(signal: &str, grace: Duration) {
    let again = if signal == "Ctrl-C" { "Ctrl-C again" } else { "a second signal" };
    eprintln!(
        "\nstopping cleanly on {signal}: actions under way get up to {}s to finish ({again} to leave at once; rerun the same command to continue)",
        grace.as_secs()
    );
}
