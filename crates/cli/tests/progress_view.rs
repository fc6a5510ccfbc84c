//! `refit upgrade`'s live view in a real terminal: the real binary rolling every node of a real
//! sandbox (`--force` to the version it runs: cordon, drain, the sandbox action, validate,
//! uncordon) inside tmux at 80 and 160 columns, its screen captured every 100 ms while it runs.
//!
//! What a person must never see: a line wider than the terminal (the terminal wraps it, and a
//! wrapped line is one indicatif does not count when it redraws — the bars then leave copies
//! of themselves behind), the overall bar or a node's line twice, or the "(cluster) backup"
//! spinner still turning once the backup step is over (`--no-etcd-backup` here, so the step
//! ends at once with a warning).
//!
//! Needs tmux (`.ci/run` installs it) and the testbed's 1.36 release.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Sandbox, has_minor, refit, release};

/// A tmux server of our own (its own socket), killed when the test ends however it ends.
struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0, "-f", "/dev/null"]);
        c
    }

    /// The screen as shown, or (`history`) the whole scrollback with wrapped lines joined (a
    /// line wider than the pane is one line there). Live bars are checked on the screen: the
    /// bars fill their line to the last column, which tmux records as a wrap.
    fn capture(&self, history: bool) -> String {
        let mut c = self.cmd();
        c.args(["capture-pane", "-p", "-t", "view"]);
        if history {
            c.args(["-J", "-S", "-"]);
        }
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

const SPINNER: &str = "⠁⠂⠄⡀⢀⠠⠐⠈⠉⠙⠚⠒⠲⠴⠤⠦⠖⠓⠋ ";

/// The node a spinner line is about (`  ⠙ worker-001   drain → 1.37.1`).
fn spinner_node(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("  ")?;
    let mut chars = rest.chars();
    let c = chars.next()?;
    if !SPINNER.contains(c) || c == ' ' {
        return None;
    }
    chars.as_str().split_whitespace().next()
}

/// Upgrades a fresh sandbox in a `width`-column tmux pane; returns every frame captured while
/// the view ran and the whole joined scrollback at the end.
fn upgrade_in_tmux(width: u16, work: &Path) -> (Vec<String>, String, String) {
    let dir = work.join(format!("sb-{width}"));
    let out = refit()
        .args(["sandbox", "up", "--version", &release(36), "--workers", "4", "--control-plane", "1", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _guard = Sandbox(dir.clone());
    assert!(out.status.success(), "sandbox up: {}", String::from_utf8_lossy(&out.stderr));
    let kubeconfig = dir.join("kubeconfig");
    assert!(kubeconfig.exists(), "{}", kubeconfig.display());
    let exe = assert_cmd::cargo::cargo_bin("refit");
    let script = format!(
        "REFIT_SANDBOX_DIR={} {} upgrade --to {} --force --yes --action sandbox --no-etcd-backup --accept etcd-members --accept control-plane-count --kubeconfig {} --store {}; echo REFIT-EXIT:$?; sleep 600",
        quote(&dir.display().to_string()),
        quote(&exe.display().to_string()),
        release(36),
        quote(&kubeconfig.display().to_string()),
        quote(&work.join(format!("refit-{width}.db")).display().to_string()),
    );
    let tmux = Tmux(format!("refit-view-{}-{width}", std::process::id()));
    let started = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "view", "-x", &width.to_string(), "-y", "40"])
        .args(["bash", "-c", &script])
        .status()
        .unwrap();
    assert!(started.success(), "tmux new-session");
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let screen = tmux.capture(false);
        let done = screen.contains("REFIT-EXIT:");
        frames.push(screen);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the upgrade did not finish:\n{}", tmux.capture(true));
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = tmux.capture(true);
    let exit = all.lines().find_map(|l| l.strip_prefix("REFIT-EXIT:")).unwrap_or("?").trim().to_string();
    (frames, all, exit)
}

#[test]
fn the_live_view_fits_80_and_160_columns_without_duplicated_lines_or_a_spinner_left_turning() {
    if !has_minor(36) {
        eprintln!("skipped: the testbed set has no 1.36");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    for width in [80u16, 160] {
        let (frames, all, exit) = upgrade_in_tmux(width, work.path());
        assert_eq!(exit, "0", "the upgrade failed at {width} columns:\n{all}");
        let live: Vec<&String> = frames.iter().filter(|f| f.contains("run up-")).collect();
        assert!(live.len() >= 3, "the view was seen only {} times at {width} columns:\n{all}", live.len());
        let mut node_lines_seen = 0;
        for frame in &live {
            let bars = frame.lines().filter(|l| l.starts_with("run up-")).count();
            assert!(bars <= 1, "{bars} overall bars at {width} columns:\n{frame}");
            let nodes: Vec<&str> = frame.lines().filter_map(spinner_node).collect();
            let mut unique = nodes.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), nodes.len(), "a node's line twice at {width} columns:\n{frame}");
            node_lines_seen += nodes.iter().filter(|n| **n != "(cluster)").count();
            // Once a node is being upgraded, the backup step is long over.
            if nodes.iter().any(|n| *n != "(cluster)") {
                assert!(
                    !frame.lines().any(|l| spinner_node(l) == Some("(cluster)") && l.contains("backup")),
                    "the (cluster) backup line is still there at {width} columns:\n{frame}"
                );
            }
        }
        assert!(node_lines_seen > 0, "no node line was ever seen at {width} columns");
        // Every line the view printed above its bars (from the first stage or warning to the
        // summary; wrapped lines joined back) fits the terminal. The plan tables before it are
        // `refit plan`'s and not the view's.
        let start = all.find("WARNING: no etcd backup").or_else(|| all.find("stage ")).unwrap_or(0);
        let end = all.find("Summary of run").unwrap_or(all.len());
        for line in all[start..end].lines() {
            let n = line.trim_end().chars().count();
            assert!(n <= usize::from(width), "a {n}-column line at {width} columns: {line}");
        }
        // The bars are gone at the end.
        let last = frames.last().unwrap();
        assert!(!last.lines().any(|l| l.starts_with("run up-")), "{last}");
        assert!(!last.lines().any(|l| spinner_node(l).is_some()), "{last}");
        eprintln!(
            "{width} columns: {} frames, {} with the live view; final screen:\n{last}",
            frames.len(),
            live.len()
        );
    }
}
