//! What a run executes, as stored in the journal when it starts: the frozen schedule and every
//! option that changes behaviour. A rerun after a crash reads this back, so it continues with
//! exactly the decisions the first attempt made.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use refit_core::addons::AddonTargets;
use refit_core::drain::DrainOptions;
use refit_core::run::{OnUndrainable, Schedule};
use serde::{Deserialize, Serialize};

/// How each node is upgraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NodeAction {
    /// A local command per node (placeholders `{node} {role} {from} {to} {phase} {address}`).
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
    /// The plan file's ssh action (recipe and connection options).
    Ssh {
        /// As written in the plan file.
        action: refit_core::planfile::Action,
        /// Each node's identity as the readiness probe read it when the run was planned: the
        /// action refuses a host that is not the recorded one.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        identities: BTreeMap<String, refit_core::identity::HostIdentity>,
    },
    /// Create a replacement node, move the old one's custom labels, annotations and taints to
    /// it, then drain and remove the old one. Placeholders: `{node}` (old), `{new}`, `{to}`.
    Replace {
        /// Creates the replacement and returns when it is registered.
        create: Vec<String>,
        /// Removes the old node (its machine); the engine deletes the Node object if the
        /// command leaves it.
        remove: Vec<String>,
        /// Upgrades etcd and control-plane members in place (an exec command).
        control_plane: Vec<String>,
        /// Which custom labels and annotations the replacement takes over.
        #[serde(default)]
        carry_over: refit_core::run::carried_over::CarryOver,
    },
}

impl NodeAction {
    /// Who upgrades the add-ons when nodes are upgraded this way (core's rule).
    pub fn addon_owner(&self) -> refit_core::addons::AddonOwner {
        match self {
            NodeAction::Ssh { action, .. } => refit_core::addons::AddonOwner::for_action(action),
            NodeAction::Exec { .. } | NodeAction::Replace { .. } => refit_core::addons::AddonOwner::Refit,
        }
    }
}

/// One etcd client endpoint for the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdEndpointSpec {
    /// `https://host:2379`.
    pub url: String,
    /// CA bundle.
    pub ca_file: PathBuf,
    /// Client certificate.
    pub cert_file: PathBuf,
    /// Client key (the path only: its contents are never read into logs or output).
    pub key_file: PathBuf,
}

/// How etcd is backed up before the first etcd or control-plane stage. A run whose schedule
/// touches etcd or the control plane ([`touches_control_plane`]) takes a snapshot or does not
/// start; going without one is the operator's explicit choice (`--no-etcd-backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackupSpec {
    /// No backup: the operator said so (`--no-etcd-backup`). Announced when the run starts and
    /// in its summary. (`none` is how runs journaled before the opt-out existed spell it.)
    #[serde(rename = "opted-out", alias = "none")]
    OptedOut,
    /// A snapshot through the etcd API, written into `dir`.
    Etcd {
        /// Endpoints, tried in order.
        endpoints: Vec<EtcdEndpointSpec>,
        /// Where backups are kept (never deleted).
        dir: PathBuf,
    },
    /// A snapshot taken on a control-plane node through the node action (the ssh action: the
    /// node's own etcd certificates, `curl` to etcd's gateway there), copied into `dir`.
    Node {
        /// Where backups are kept (never deleted).
        dir: PathBuf,
    },
    /// A command (e.g. a site's own backup script); `{dir}`, `{name}` and `{path}` are
    /// substituted. It must write the snapshot to `{path}` (`DIR/NAME.db`), 0600: its success
    /// counts only when that file is an etcd snapshot.
    Command {
        /// Program and arguments.
        command: Vec<String>,
        /// Where backups are kept.
        dir: PathBuf,
    },
}

impl BackupSpec {
    /// One line for the plan: how the snapshot will be taken, or that it will not.
    pub fn describe(&self) -> String {
        match self {
            BackupSpec::OptedOut => {
                "NONE (--no-etcd-backup): no etcd snapshot is taken before etcd and the control plane change"
                    .into()
            }
            BackupSpec::Etcd { endpoints, dir } => format!(
                "snapshot through the etcd API ({}) into {}",
                endpoints.iter().map(|e| e.url.as_str()).collect::<Vec<_>>().join(", "),
                dir.display()
            ),
            BackupSpec::Node { dir } => format!(
                "snapshot taken on a control-plane node over ssh (its etcd certificates), copied into {}",
                dir.display()
            ),
            BackupSpec::Command { command, dir } => format!(
                "`{}` writes {}/etcd-RUN.db (checked: an etcd snapshot, 0600)",
                command.join(" "),
                dir.display()
            ),
        }
    }
}

/// Whether a schedule changes etcd or the control plane (a stage other than workers): such a
/// run takes an etcd snapshot first, or the operator opted out.
pub fn touches_control_plane(schedule: &Schedule) -> bool {
    schedule.stages.iter().any(|s| s.phase != refit_core::plan::PhaseKind::Workers)
}

/// Everything a run needs to execute and resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The frozen schedule.
    pub schedule: Schedule,
    /// How nodes are upgraded.
    pub action: NodeAction,
    /// kubectl-drain allowances (emptyDir data, unmanaged pods).
    pub drain_rules: DrainOptions,
    /// Per-node drain deadline.
    pub drain_timeout_secs: u64,
    /// Per-node deadline for the action and for the node to come back Ready at the version.
    pub node_timeout_secs: u64,
    /// What to do with a node that cannot be drained.
    pub on_undrainable: OnUndrainable,
    /// Include nodes already at the version (`--force`).
    pub force: bool,
    /// Node addresses (plan file, else InternalIP), for actions that reach the node.
    pub addresses: BTreeMap<String, String>,
    /// The etcd backup.
    pub backup: BackupSpec,
    /// Add-on versions for the cluster-services phase (None: left alone).
    pub cluster_services: Option<AddonTargets>,
    /// Evictions in flight per node.
    pub eviction_concurrency: usize,
    /// Blockers the operator accepted one by one for this run (`--accept`, the plan file's
    /// `accept:`): recorded with it, and announced when it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted: Vec<refit_core::accept::Record>,
    /// Health gates between batches of workers (the plan file's `gates:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<refit_core::health::HealthGate>,
    /// What a failed gate does to the run.
    #[serde(default)]
    pub on_gate_failure: refit_core::health::OnGateFailure,
    /// Where the control-plane gate reads etcd's health (the `--etcd-endpoint`s); empty: only
    /// the apiservers are checked, and the run warns once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_health: Vec<EtcdEndpointSpec>,
    /// How long the control-plane gate waits for a healthy control plane before it stops the
    /// run (as `on_gate_failure` says); 0 turns the gate off.
    #[serde(default = "default_control_plane_gate_secs")]
    pub control_plane_gate_secs: u64,
}

/// The control-plane gate's timeout when a spec does not say (a run recorded before it
/// existed, a caller that does not care): long enough for an apiserver restarted by its
/// member's upgrade to become ready again, short enough that a broken one stops the run soon.
pub const DEFAULT_CONTROL_PLANE_GATE_SECS: u64 = 120;

/// The defaults of how a run behaves, in one place: `refit upgrade`'s flags show and use the
/// texts (clap's `default_value`), a library caller (the hub's in-process member upgrade)
/// takes the values through [`Behaviour::default`](crate::lifecycle::Behaviour). Each text
/// is the value as the flag spells it; a unit test keeps the two equal.
pub mod defaults {
    use std::time::Duration;

    /// Per-node drain deadline (`--drain-timeout`).
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
    /// [`DRAIN_TIMEOUT`] as the flag spells it.
    pub const DRAIN_TIMEOUT_TEXT: &str = "10m";
    /// Per-node deadline for the action and the node's readiness (`--node-timeout`).
    pub const NODE_TIMEOUT: Duration = Duration::from_secs(900);
    /// [`NODE_TIMEOUT`] as the flag spells it.
    pub const NODE_TIMEOUT_TEXT: &str = "15m";
    /// How long node actions under way may finish after a stop (`--stop-grace`).
    pub const STOP_GRACE: Duration = Duration::from_secs(600);
    /// [`STOP_GRACE`] as the flag spells it.
    pub const STOP_GRACE_TEXT: &str = "10m";
    /// The control-plane gate's wait (`--control-plane-gate-timeout`).
    pub const CONTROL_PLANE_GATE: Duration = Duration::from_secs(super::DEFAULT_CONTROL_PLANE_GATE_SECS);
    /// [`CONTROL_PLANE_GATE`] as the flag spells it.
    pub const CONTROL_PLANE_GATE_TEXT: &str = "2m";
    /// Evictions in flight per node (`--eviction-concurrency`).
    pub const EVICTION_CONCURRENCY: usize = 16;

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn each_flag_text_is_its_value() {
            for (text, value) in [
                (DRAIN_TIMEOUT_TEXT, DRAIN_TIMEOUT),
                (NODE_TIMEOUT_TEXT, NODE_TIMEOUT),
                (STOP_GRACE_TEXT, STOP_GRACE),
                (CONTROL_PLANE_GATE_TEXT, CONTROL_PLANE_GATE),
            ] {
                assert_eq!(refit_core::duration::parse(text).unwrap(), value, "{text}");
            }
            assert!(refit_core::drain::parse_eviction_concurrency(&EVICTION_CONCURRENCY.to_string()).is_ok());
        }
    }
}

fn default_control_plane_gate_secs() -> u64 {
    DEFAULT_CONTROL_PLANE_GATE_SECS
}

impl RunSpec {
    /// The drain deadline.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// The per-node deadline.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_secs(self.node_timeout_secs)
    }
}
