//! One copy of a node's action at a time, across crashes and reruns (issue 18 items 5, 17).
//!
//! A run is journaled step by step, and a rerun after a `kill -9` resumes a node whose upgrade
//! step was started but not finished. Without more, the resumed run would start the node's
//! action again while the first copy may still be running: on the node (an ssh recipe whose
//! remote commands outlived the local ssh client) or locally (an exec action's background
//! helpers). What each action kind does instead:
//!
//! - **ssh**: the recipe runs detached on the node under a name made of the run, the node and
//!   the target ([`action_id`]); a resumed run attaches to it (see [`crate::ssh`]).
//! - **exec**: the action's whole process group dies with refit (the guardian in
//!   [`crate::command`]), and the action holds a per-run, per-node lock file
//!   ([`NodeLock`]) that a relaunch waits for before it starts the action again.
//!
//! [`RunScope`] is what the engine passes for that: which run the action belongs to and where
//! local locks live.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::Error;
use crate::command::OutputLine;

/// Longest [`action_id`] kept readable; longer ones end in a digest (file and systemd unit
/// names are limited to 255 bytes, and a unit name gets a prefix and a suffix).
const MAX_ID: usize = 180;

/// How often a waiting relaunch tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// The run a node action belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunScope {
    /// The run's id, as journaled (`up-20261120-101500-1-37-1`).
    pub run: String,
    /// A private local directory for the exec action's per-node locks (the store's `locks/`).
    pub lock_dir: PathBuf,
    /// Added to the environment of the run's local commands (a fleet member upgrade's
    /// `REFIT_NODE_IMAGES`, given by the hub controller that runs it in-process).
    pub env: Vec<(String, String)>,
}

/// A name for one action of one run, safe as a file name and a systemd unit name on any node:
/// `<run>-<node>[-<to>]`, every character outside `[A-Za-z0-9._-]` replaced by `_`, and a
/// SHA-256 prefix of the unaltered parts appended when anything was replaced or cut, so two
/// different actions never share a name.
pub fn action_id(run: &str, node: &str, to: &str) -> String {
    let raw = if to.is_empty() { format!("{run}-{node}") } else { format!("{run}-{node}-{to}") };
    let clean: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    let clean = clean.trim_start_matches(['.', '-']).to_string();
    if clean == raw && clean.len() <= MAX_ID {
        return clean;
    }
    let digest = Sha256::digest(format!("{run}\0{node}\0{to}").as_bytes());
    let short: String = clean.chars().take(MAX_ID).collect();
    format!("{short}-{}", hex::encode(digest.get(..8).unwrap_or_default()))
}

/// The exec action's lock for one node of one run: an exclusive `flock` on
/// `<lock_dir>/action-<run>-<node>.lock`, held by the action's guardian process for as long as
/// the action's process group lives (so a relaunch after `kill -9` of refit waits until the
/// first copy is really gone).
#[derive(Debug)]
pub struct NodeLock {
    file: File,
    path: PathBuf,
}

impl NodeLock {
    /// Takes the lock, waiting up to `wait` for an earlier copy of the action to end (its
    /// wait is announced once through `on_line`).
    pub async fn acquire(
        scope: &RunScope,
        node: &str,
        wait: Duration,
        on_line: &(dyn Fn(OutputLine) + Send + Sync),
    ) -> Result<NodeLock, Error> {
        let path = scope.lock_dir.join(format!("action-{}.lock", action_id(&scope.run, node, "")));
        let io = |source| Error::Lock { node: node.to_string(), path: path.clone(), source };
        create_private_dir(&scope.lock_dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let started = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(NodeLock { file, path: path.clone() }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if started.elapsed() >= wait {
                        return Err(Error::Busy { node: node.to_string(), lock: path.clone(), waited: wait });
                    }
                    if !announced {
                        announced = true;
                        on_line(OutputLine::Stderr(format!(
                            "refit: an earlier copy of this node's action (run {}) is still running; waiting for it to end (lock {})",
                            scope.run,
                            path.display()
                        )));
                    }
                    tokio::time::sleep(LOCK_POLL).await;
                }
                Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
            }
        }
    }

    /// The open, locked file (handed to the action's guardian).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Where the lock lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` (0700) if needed and refuses one that others may write to.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is writable by others (mode {:o}); make it private (chmod 700)",
            dir.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_are_safe_names_and_never_collide() {
        assert_eq!(
            action_id("up-20261120-101500-1-37-1", "worker-1", "1.37.1"),
            "up-20261120-101500-1-37-1-worker-1-1.37.1"
        );
        assert_eq!(action_id("r", "n", ""), "r-n");
        let odd = action_id("r", "a/b c", "1.37.1");
        assert!(odd.starts_with("r-a_b_c-1.37.1-") && odd.len() == "r-a_b_c-1.37.1-".len() + 16, "{odd}");
        // Same cleaned text, different originals: different ids.
        assert_ne!(action_id("r", "a/b", "1"), action_id("r", "a_b", "1"));
        assert_ne!(action_id("r", "a/b", "1"), action_id("r", "a b", "1"));
        let long = action_id("r", &"n".repeat(300), "1.37.1");
        assert!(long.len() <= MAX_ID + 17, "{}", long.len());
        assert_ne!(long, action_id("r", &"n".repeat(301), "1.37.1"));
        for id in [odd, long, action_id("-x", ".y", "")] {
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "{id}");
            assert!(!id.starts_with(['-', '.']), "{id}");
        }
    }
}
