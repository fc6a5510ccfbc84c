//! The crate's one error type.
//!
//! Every variant names what the engine needs to report the failure without more context:
//! the program (or the node and the remote command) and why. Secrets never appear: an
//! identity file is named by its path only, and output tails come from the command itself.

use std::time::Duration;

/// How many trailing stderr lines an error carries: enough to see why, short enough for one
/// report line per node.
pub const ERROR_TAIL_LINES: usize = 10;

/// Why an action (or one of its commands) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line was empty: there is no program to run.
    #[error("the command is empty: give a program and its arguments")]
    EmptyCommand,

    /// The program could not be started (not found, not executable, ...).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// What exec(2) or the runtime said.
        #[source]
        source: std::io::Error,
    },

    /// Reading the program's output or waiting for it failed.
    #[error("lost track of {program}: {source}")]
    Io {
        /// The program as given.
        program: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },

    /// The program ended unsuccessfully.
    #[error("{program} {}{}", exit_text(*code, *signal), tail_text(stderr_tail))]
    Failed {
        /// The program as given.
        program: String,
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that ended it, when it was killed.
        signal: Option<i32>,
        /// Its last stderr lines (at most [`ERROR_TAIL_LINES`]).
        stderr_tail: Vec<String>,
    },

    /// The program ran out of time; its whole process group was killed.
    #[error("{program} did not finish within {}; its process group was killed{}", secs(*timeout), tail_text(stderr_tail))]
    Timeout {
        /// The program as given.
        program: String,
        /// The limit it ran into.
        timeout: Duration,
        /// Its last stderr lines (at most [`ERROR_TAIL_LINES`]).
        stderr_tail: Vec<String>,
    },

    /// The node's address cannot be given to ssh safely (empty, or would read as an option).
    #[error("node {node}: address {address:?} is not usable for ssh ({reason})")]
    BadDestination {
        /// The node.
        node: String,
        /// The address as given.
        address: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The ssh master connection to the node could not be established (unreachable,
    /// authentication refused, unknown or changed host key, ...).
    #[error("node {node}: cannot connect over ssh to {destination}: {detail}")]
    SshConnect {
        /// The node.
        node: String,
        /// The destination given to ssh.
        destination: String,
        /// ssh's own explanation.
        detail: String,
    },

    /// The host the address leads to is not the one recorded for this node when the plan was
    /// made: nothing was run on it.
    #[error(
        "node {node}: {destination} is not the host the plan recorded for it ({detail}); nothing was run there — check the node's address (a changed IP or DNS name, or an InternalIP the node rewrote), then plan again"
    )]
    WrongHost {
        /// The node.
        node: String,
        /// The destination given to ssh.
        destination: String,
        /// What differs.
        detail: String,
    },

    /// A remote command could not be run or its result was lost (the connection broke).
    #[error("node {node}: `{command}` could not be run over ssh: {detail}")]
    SshCommand {
        /// The node.
        node: String,
        /// The remote command as displayed.
        command: String,
        /// What went wrong.
        detail: String,
    },

    /// A remote command ended unsuccessfully; the commands after it were not run.
    #[error("node {node}: `{command}` {}{}", exit_text(*code, None), tail_text(stderr_tail))]
    RemoteFailed {
        /// The node.
        node: String,
        /// Its position in the recipe (0 = the first command).
        step: usize,
        /// The remote command as displayed.
        command: String,
        /// Its exit code, when known.
        code: Option<i32>,
        /// Its last stderr lines (at most [`ERROR_TAIL_LINES`]).
        stderr_tail: Vec<String>,
    },

    /// The ssh action ran out of time during `command`; the local ssh processes were killed.
    #[error("node {node}: the ssh action did not finish within {} (running `{command}`)", secs(*timeout))]
    RemoteTimeout {
        /// The node.
        node: String,
        /// The remote command that was running, or `connect`.
        command: String,
        /// The limit it ran into.
        timeout: Duration,
    },

    /// The detached recipe was still running on the node when the action's time ran out. It
    /// was left running (killing kubeadm midway is worse); a rerun attaches to it.
    #[error("node {node}: the recipe did not finish within {}; it keeps running on the node as {unit} (a rerun of the same command waits for it and takes its result)", secs(*timeout))]
    RemoteStillRunning {
        /// The node.
        node: String,
        /// The recipe's name on the node (systemd unit or directory under the action root).
        unit: String,
        /// The limit it ran into.
        timeout: Duration,
    },

    /// The detached recipe's runner ended without recording a result (the node rebooted, or
    /// someone killed it). A rerun starts the recipe again (kubeadm's steps may be repeated).
    #[error("node {node}: the recipe {unit} ended on the node without a result{}; rerun the same command to start it again", match command { Some(c) => format!(" while running `{c}`"), None => String::new() })]
    RemoteLost {
        /// The node.
        node: String,
        /// The recipe's name on the node.
        unit: String,
        /// The command it was running, when known.
        command: Option<String>,
    },

    /// The exec action's per-node lock file could not be opened or locked.
    #[error("node {node}: cannot lock {}: {source}", path.display())]
    Lock {
        /// The node.
        node: String,
        /// The lock file.
        path: std::path::PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },

    /// An earlier copy of this node's action (same run) still held its lock after `waited`.
    #[error("node {node}: an earlier copy of this node's action still runs (lock {} held for {}); find it with `fuser {}` and rerun once it ended", lock.display(), secs(*waited), lock.display())]
    Busy {
        /// The node.
        node: String,
        /// The lock file.
        lock: std::path::PathBuf,
        /// How long refit waited.
        waited: Duration,
    },

    /// The kubeadm recipe cannot be built for this node (e.g. the target is not a release).
    #[error("node {node}: the kubeadm recipe cannot be built: {reason}")]
    Recipe {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// For an ssh recipe: the recipe step before which the action stopped — every command
    /// before it succeeded, none after it ran. `Some(0)` when nothing ran (no connection, a
    /// refused address, no recipe); `None` when that is unknown (a broken connection or a
    /// timeout may leave a remote command running).
    pub fn stopped_at_step(&self) -> Option<usize> {
        match self {
            Error::RemoteFailed { step, .. } => Some(*step),
            Error::SshConnect { .. }
            | Error::BadDestination { .. }
            | Error::Recipe { .. }
            | Error::Busy { .. }
            | Error::Lock { .. } => Some(0),
            _ => None,
        }
    }
}

fn exit_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        (None, None) => "failed without an exit code".to_string(),
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() { String::new() } else { format!("; last stderr lines:\n  {}", tail.join("\n  ")) }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{:.1}s", d.as_secs_f64()) }
}
