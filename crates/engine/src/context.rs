//! The engine's seams: everything it does to the world goes through one of these traits, and
//! an [`Engine`](crate::Engine) is built from a [`Context`] holding one of each. The real
//! implementations (kube, exec, the SQLite store, the system clock) are wired in one place,
//! [`crate::real`]; the engine's unit tests use fakes and paused tokio time, and a hub-cluster
//! journal will implement [`Journal`] next.
//!
//! The methods return boxed futures so that the traits are object-safe (`Arc<dyn Cluster>`):
//! a run makes a few calls per node, so the allocation costs nothing measurable.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use refit_core::Version;
use refit_core::addons::AddonTargets;
use refit_core::event::Event;
use refit_core::run::RunState;
use refit_exec::NodeContext;
use refit_kube::addons::{AddonEvent, AddonReport};
use refit_kube::cordon::{CordonOutcome, UncordonOutcome};
use refit_kube::drain::{DrainConfig, DrainEvent, DrainReport};
use refit_kube::node::{CustomMetadata, NodeState};

use crate::spec::{EtcdEndpointSpec, NodeAction};

/// A callback for drain events.
pub type OnDrain<'a> = &'a (dyn Fn(DrainEvent) + Send + Sync);
/// A callback for add-on events.
pub type OnAddon<'a> = &'a (dyn Fn(AddonEvent) + Send + Sync);
/// A callback for each line an action prints.
pub type OnLine<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// What the engine does to and reads from the cluster (the kube crate in production).
pub trait Cluster: Send + Sync {
    /// Nodes, pods (with their scheduling constraints) and budgets as preflight reads them:
    /// `--max-unavailable auto` chooses each worker batch from a fresh one.
    fn snapshot(&self) -> BoxFuture<'_, Result<refit_core::snapshot::Snapshot, refit_kube::Error>>;
    /// One node's state (a missing node is `exists: false`; an unreadable one an error).
    fn node(&self, node: &str) -> BoxFuture<'_, Result<NodeState, refit_kube::Error>>;
    /// Every node's state, by name (one list).
    fn nodes(
        &self,
    ) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, NodeState>, refit_kube::Error>>;
    /// Cordons `node` for `run` (never takes someone else's cordon).
    fn cordon<'a>(
        &'a self,
        node: &'a str,
        run: &'a str,
    ) -> BoxFuture<'a, Result<CordonOutcome, refit_kube::Error>>;
    /// Uncordons `node` if `run` cordoned it.
    fn uncordon<'a>(
        &'a self,
        node: &'a str,
        run: &'a str,
    ) -> BoxFuture<'a, Result<UncordonOutcome, refit_kube::Error>>;
    /// Drains `node` through the Eviction API.
    fn drain<'a>(
        &'a self,
        node: &'a str,
        cfg: &'a DrainConfig,
        on_event: OnDrain<'a>,
    ) -> BoxFuture<'a, Result<DrainReport, refit_kube::Error>>;
    /// `--on-undrainable force`: deletes what is left.
    fn force_delete_remaining<'a>(
        &'a self,
        node: &'a str,
        cfg: &'a DrainConfig,
        on_event: OnDrain<'a>,
    ) -> BoxFuture<'a, Result<DrainReport, refit_kube::Error>>;
    /// Waits until `node` is Ready with its kubelet at `version`.
    fn wait_ready_at<'a>(
        &'a self,
        node: &'a str,
        version: &'a Version,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>>;
    /// Control-plane components on `node` not Ready at `version` (empty: all are).
    fn control_plane_lagging<'a>(
        &'a self,
        node: &'a str,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Vec<String>, refit_kube::Error>>;
    /// The labels, annotations and taints a replacement takes over (`carry` says which).
    fn custom_metadata<'a>(
        &'a self,
        node: &'a str,
        carry: &'a refit_core::run::carried_over::CarryOver,
    ) -> BoxFuture<'a, Result<CustomMetadata, refit_kube::Error>>;
    /// Puts them on the replacement.
    fn apply_custom_metadata<'a>(
        &'a self,
        node: &'a str,
        meta: &'a CustomMetadata,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>>;
    /// Deletes the Node object (gone already is fine).
    fn delete_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), refit_kube::Error>>;
    /// Waits until the Node object is gone.
    fn wait_gone<'a>(
        &'a self,
        node: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>>;
    /// Moves kube-proxy and CoreDNS to `targets` and waits for their rollouts.
    fn upgrade_addons<'a>(
        &'a self,
        targets: &'a AddonTargets,
        timeout: Duration,
        on_event: OnAddon<'a>,
    ) -> BoxFuture<'a, Result<AddonReport, refit_kube::Error>>;
}

/// How a node action (or a local command) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionFailure {
    /// What failed, for people.
    pub message: String,
    /// The action stopped before it changed the node (no connection, a package missing from
    /// the repository): the engine gives the node's cordon back.
    pub node_unchanged: bool,
}

/// How nodes are upgraded and local commands run (the exec crate in production).
pub trait NodeActions: Send + Sync {
    /// Upgrades one node in place with `action` (an exec command or the ssh recipe), for run
    /// `run`: exclusive per node and run, so a resumed run attaches to (ssh) or waits for (exec)
    /// a copy of this action still under way instead of starting a second one beside it.
    fn upgrade<'a>(
        &'a self,
        run: &'a str,
        action: &'a NodeAction,
        ctx: &'a NodeContext,
        timeout: Duration,
        on_line: OnLine<'a>,
    ) -> BoxFuture<'a, Result<(), ActionFailure>>;
    /// Runs a local command (a replacement's create/remove, a backup command).
    fn command<'a>(
        &'a self,
        argv: &'a [String],
        env: &'a [(String, String)],
        timeout: Duration,
        on_line: OnLine<'a>,
    ) -> BoxFuture<'a, Result<(), ActionFailure>>;
    /// One observation of a health gate's check (`prometheus`, `http`, `command`; a
    /// `workloads` gate is observed through the cluster and answers "not supported" here).
    fn probe_gate<'a>(
        &'a self,
        check: &'a refit_core::health::GateCheck,
        env: &'a [(String, String)],
    ) -> BoxFuture<'a, refit_core::health::Observation>;
    /// An etcd snapshot named `name` in `dir`: (path, bytes).
    fn etcd_snapshot<'a>(
        &'a self,
        endpoints: &'a [EtcdEndpointSpec],
        dir: &'a Path,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(String, u64), String>>;
    /// An etcd snapshot named `name` in `dir`, taken on the first of `nodes` (control-plane
    /// nodes) that gives one, through `action` (the ssh action): (path, bytes).
    fn etcd_snapshot_on_node<'a>(
        &'a self,
        action: &'a NodeAction,
        nodes: &'a [NodeContext],
        dir: &'a Path,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(String, u64), String>>;
}

/// The cluster's health as gates read it: the control plane's own (kube's `/readyz` of every
/// apiserver, etcd through its API in production) and the `workloads` gate's. Reads only.
pub trait Health: Send + Sync {
    /// Every apiserver asked for `/readyz?verbose`: how many, and the problem of each one that
    /// is not ready. `Err` when the apiservers cannot be listed.
    fn apiservers(&self) -> BoxFuture<'_, Result<refit_core::health::control_plane::ApiserversView, String>>;
    /// etcd's member list, members' status and alarms through `endpoints` (tried in order).
    fn etcd<'a>(
        &'a self,
        endpoints: &'a [EtcdEndpointSpec],
    ) -> BoxFuture<'a, Result<refit_core::health::etcd::EtcdHealth, String>>;
    /// The workloads of the pods on `node` now (read when its unit starts).
    fn workloads_on<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<BTreeSet<refit_core::health::workloads::WorkloadRef>, String>>;
    /// Each workload's status (deleted ones left out).
    fn workloads<'a>(
        &'a self,
        refs: &'a BTreeSet<refit_core::health::workloads::WorkloadRef>,
    ) -> BoxFuture<'a, Result<Vec<refit_core::health::workloads::WorkloadStatus>, String>>;
}

/// A run as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// The cluster's identity (kube-system UID).
    pub cluster: String,
    /// Target version.
    pub target: String,
    /// Its state, as stored (parsed by the lifecycle: an unknown one is an error).
    pub state: String,
    /// The [`RunSpec`](crate::RunSpec), as JSON.
    pub spec: String,
}

/// One step's latest journaled state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Node or host.
    pub unit: String,
    /// Step key (`drain@1.37.1`).
    pub step: String,
    /// State as stored.
    pub state: String,
}

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JournalError {
    /// What failed.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl JournalError {
    /// An error with only a message.
    pub fn msg(message: impl Into<String>) -> JournalError {
        JournalError { message: message.into(), source: None }
    }
}

/// Where runs, their steps and events are recorded (SQLite in local mode; a hub cluster's
/// objects next). Step transitions are awaited (nothing acts before its "started" is
/// durable); free events are best effort and may be written in batches.
pub trait Journal: Send + Sync {
    /// The newest run of `cluster`.
    fn latest_run<'a>(&'a self, cluster: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>>;
    /// A run by id.
    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>>;
    /// Records a new run, or returns the one stored under that id (creating is idempotent).
    fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<RunRecord, JournalError>>;
    /// Sets a run's state.
    fn set_run_state<'a>(&'a self, run: &'a str, state: RunState) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Every step of a run.
    fn steps<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<Vec<StepRecord>, JournalError>>;
    /// Records a step transition with the event that explains it, atomically.
    fn record_step<'a>(
        &'a self,
        run: &'a str,
        unit: &'a str,
        key: &'a str,
        state: refit_core::run::StepState,
        detail: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Records an event that is not a step transition; best effort, never waits for the disk.
    fn record_event(&self, run: &str, event: &Event);
    /// Waits until every event recorded so far is written (or failed to be).
    fn flush(&self) -> BoxFuture<'_, ()>;
}

/// The time of day (deadlines). Durations are measured with `tokio::time::Instant`, which
/// paused test time controls too.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// Where events go: the terminal view, `-o json` lines, later the HTTP server's stream.
pub trait EventSink: Send + Sync {
    /// One event, in order.
    fn emit(&self, e: &Event);
}

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn emit(&self, e: &Event) {
        self(e)
    }
}

/// Everything an engine works through.
#[derive(Clone)]
pub struct Context {
    /// The cluster.
    pub cluster: Arc<dyn Cluster>,
    /// Node actions and local commands.
    pub actions: Arc<dyn NodeActions>,
    /// The control plane's health (the control-plane gate).
    pub health: Arc<dyn Health>,
    /// The journal.
    pub journal: Arc<dyn Journal>,
    /// The time of day.
    pub clock: Arc<dyn Clock>,
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
}
