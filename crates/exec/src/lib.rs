//! Node upgrade actions: how one node gets upgraded.
//!
//! The upgrade engine never knows *how* a node is upgraded, only whether its action succeeded
//! (and then whether the node came back Ready at the target). So every action has the same
//! shape: a [`NodeContext`] in, output lines streamed to a callback while it runs, `Ok(())` or
//! an [`Error`] that names what failed, and a timeout after which nothing it started is left
//! running.
//!
//! - [`command`]: the generic local runner (no shell, own process group, killed as a group),
//!   also used for backup commands and the replace action's create/remove commands.
//! - [`exec`](mod@exec): a local command per node with whole-argument placeholders and
//!   `REFIT_*` variables.
//! - [`ssh`]: a recipe over the system ssh (one master connection per node), with the built-in
//!   [`kubeadm`] recipe.
//! - [`backup`]: the etcd snapshot taken before the etcd/control-plane phase.
//! - [`exclusive`]: one copy of a node's action at a time, across `kill -9` and reruns: the
//!   [`RunScope`] an action runs in, per-node locks, names of detached recipes.
//!
//! Nothing here reads or prints credentials: identity files are passed to ssh by path.

// Library code may not panic on a missing value or an index (clippy.toml lets tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod backup;
pub mod command;
pub mod detached;
mod error;
pub mod etcd;
pub mod exclusive;
pub mod exec;
pub mod gate;
pub mod kubeadm;
pub mod probe;
pub mod release;
pub mod ssh;

use serde::{Deserialize, Serialize};

pub use command::{CommandOutput, OutputLine, run_command, substitute};
pub use error::{ERROR_TAIL_LINES, Error};
pub use exclusive::{RunScope, action_id};
pub use exec::{run_exec, run_exec_exclusive};
pub use kubeadm::kubeadm_recipe;
pub use refit_core::planfile::{HostKeyCheck, PackageManager};
pub use ssh::{RemoteCommand, SshOptions, run_ssh, run_ssh_detached};

/// What an action is told about the node it upgrades.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeContext {
    /// The node (or external etcd host) name.
    pub node: String,
    /// Its roles: `etcd`, `control-plane`, `worker` (a node may hold several).
    pub roles: Vec<String>,
    /// The version it runs now.
    pub from: String,
    /// The version this action brings it to (one hop for the control plane).
    pub to: String,
    /// The phase it is upgraded in: `etcd`, `control-plane` or `workers`.
    pub phase: String,
    /// How to reach it (the plan file's address, else its InternalIP); may be empty.
    pub address: String,
    /// Whether this is the control-plane node that runs `kubeadm upgrade apply` for this hop.
    pub first_control_plane: bool,
}
