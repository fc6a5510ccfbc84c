//! Fakes for the engine's seams: a cluster of nodes in memory (cordons, drains, kubelet
//! versions), node actions that take time on tokio's (paused) clock and move the node's
//! kubelet, an in-memory journal that can fail or "crash" at its Nth write, a clock that
//! follows tokio's, and a sink that keeps every event. They record what the safety
//! invariants need: how many workers were unschedulable at once, how often each node's
//! action ran, how many actions ran at once.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use refit_core::Version;
use refit_core::addons::AddonTargets;
use refit_core::event::Event;
use refit_core::plan::{PhaseKind, Role, Step};
use refit_core::run::{OnUndrainable, RunState, Schedule, Stage, StepState, UnitWork};
use refit_core::snapshot::{NodeInfo, Resources, Snapshot};
use refit_engine::context::{
    ActionFailure, Clock, Cluster, Context, Health, Journal, JournalError, NodeActions, OnAddon, OnDrain,
    OnLine, RunRecord, StepRecord,
};
use refit_engine::{BackupSpec, EtcdEndpointSpec, NodeAction, RunSpec};
use refit_exec::NodeContext;
use refit_kube::addons::AddonReport;
use refit_kube::cordon::{CordonOutcome, UncordonOutcome};
use refit_kube::drain::{Blocker, DrainConfig, DrainReport, PodRef};
use refit_kube::node::{CustomMetadata, NodeState};
use tokio::sync::Notify;

pub const FROM: &str = "1.36.4";
pub const TO: &str = "1.37.1";

pub fn v(s: &str) -> Version {
    s.parse().unwrap()
}

#[derive(Debug, Clone)]
pub struct FakeNode {
    pub kubelet: Version,
    pub unschedulable: bool,
    pub cordoned_by: Option<String>,
    pub worker: bool,
}

impl FakeNode {
    /// What the cluster shows of it.
    pub fn state(&self) -> NodeState {
        NodeState {
            exists: true,
            kubelet: Some(self.kubelet.clone()),
            ready: true,
            unschedulable: self.unschedulable,
            cordoned_by: self.cordoned_by.clone(),
            address: None,
        }
    }
}

/// The cluster.
#[derive(Default)]
pub struct FakeCluster {
    pub nodes: Mutex<BTreeMap<String, FakeNode>>,
    /// Nodes whose drain never completes (a PDB that never allows).
    pub undrainable: Mutex<BTreeSet<String>>,
    /// How long a drain takes.
    pub drain_time: Mutex<Duration>,
    /// Drains that take another time than `drain_time`, by node.
    pub drain_times: Mutex<BTreeMap<String, Duration>>,
    /// Nodes whose reads fail (the API server answering errors for them).
    pub unreadable: Mutex<BTreeSet<String>>,
    /// Most workers unschedulable at one moment.
    pub max_unschedulable_workers: AtomicUsize,
    /// Fewest schedulable workers (existing, not cordoned) at one moment, and most worker
    /// nodes at one moment (replacements beside their old nodes).
    pub min_schedulable_workers: AtomicUsize,
    pub max_worker_nodes: AtomicUsize,
    /// Replacements that joined (the replace action's `create NAME` command ran to its end),
    /// by name.
    pub created: Mutex<BTreeMap<String, usize>>,
    /// How long creating a replacement takes.
    pub create_time: Mutex<Duration>,
    /// Zones of the nodes (`topology.kubernetes.io/zone`), for `auto` batching.
    pub zones: Mutex<BTreeMap<String, String>>,
    /// Pods and budgets the snapshot shows (nodes come from `nodes`).
    pub workloads: Mutex<Snapshot>,
    /// How many snapshots the engine read.
    pub snapshots_taken: AtomicUsize,
    /// Snapshots after this many taken fail (the API server answering errors); 0: none do.
    pub snapshots_fail_after: AtomicUsize,
    /// How many snapshots fail once they start failing.
    pub snapshots_failing: AtomicUsize,
}

impl FakeCluster {
    pub fn new(control_planes: usize, workers: usize) -> Arc<FakeCluster> {
        let c = FakeCluster::default();
        {
            let mut nodes = c.nodes.lock().unwrap();
            for i in 1..=control_planes {
                nodes.insert(
                    format!("cp-{i}"),
                    FakeNode { kubelet: v(FROM), unschedulable: false, cordoned_by: None, worker: false },
                );
            }
            for i in 1..=workers {
                nodes.insert(
                    format!("w-{i:02}"),
                    FakeNode { kubelet: v(FROM), unschedulable: false, cordoned_by: None, worker: true },
                );
            }
        }
        *c.drain_time.lock().unwrap() = Duration::from_secs(20);
        *c.create_time.lock().unwrap() = Duration::from_secs(30);
        c.min_schedulable_workers.store(usize::MAX, Ordering::SeqCst);
        c.note();
        Arc::new(c)
    }

    pub fn node(&self, name: &str) -> FakeNode {
        self.nodes.lock().unwrap().get(name).cloned().unwrap()
    }

    pub fn set(&self, name: &str, f: impl FnOnce(&mut FakeNode)) {
        f(self.nodes.lock().unwrap().get_mut(name).unwrap());
        self.note();
    }

    fn note(&self) {
        let nodes = self.nodes.lock().unwrap();
        let n = nodes.values().filter(|n| n.worker && n.unschedulable).count();
        let workers = nodes.values().filter(|n| n.worker).count();
        drop(nodes);
        self.max_unschedulable_workers.fetch_max(n, Ordering::SeqCst);
        self.min_schedulable_workers.fetch_min(workers - n, Ordering::SeqCst);
        self.max_worker_nodes.fetch_max(workers, Ordering::SeqCst);
    }

    /// The replace action's `create NAME`: after `create_time` the replacement joins, Ready
    /// at the target (a name already taken is an error, as a second machine would be).
    pub async fn create(&self, name: &str) -> Result<(), String> {
        let t = *self.create_time.lock().unwrap();
        tokio::time::sleep(t).await;
        let mut nodes = self.nodes.lock().unwrap();
        if nodes.contains_key(name) {
            return Err(format!("{name} exists"));
        }
        nodes.insert(
            name.to_string(),
            FakeNode { kubelet: v(TO), unschedulable: false, cordoned_by: None, worker: true },
        );
        drop(nodes);
        *self.created.lock().unwrap().entry(name.to_string()).or_default() += 1;
        self.note();
        Ok(())
    }

    pub fn unschedulable(&self) -> Vec<String> {
        self.nodes.lock().unwrap().iter().filter(|(_, n)| n.unschedulable).map(|(k, _)| k.clone()).collect()
    }

    pub fn at(&self, version: &str) -> usize {
        self.nodes.lock().unwrap().values().filter(|n| n.kubelet == v(version)).count()
    }
}

fn missing(node: &str) -> refit_kube::Error {
    refit_kube::Error::NodeNotFound { node: node.to_string() }
}

impl Cluster for FakeCluster {
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, refit_kube::Error>> {
        let taken = self.snapshots_taken.fetch_add(1, Ordering::SeqCst) + 1;
        let after = self.snapshots_fail_after.load(Ordering::SeqCst);
        if after > 0 && taken > after && taken <= after + self.snapshots_failing.load(Ordering::SeqCst) {
            return async { Err(missing("snapshot")) }.boxed();
        }
        let zones = self.zones.lock().unwrap().clone();
        let mut s = self.workloads.lock().unwrap().clone();
        s.nodes = self
            .nodes
            .lock()
            .unwrap()
            .iter()
            .map(|(name, n)| NodeInfo {
                name: name.clone(),
                labels: zones
                    .get(name)
                    .map(|z| BTreeMap::from([(refit_core::batch::ZONE_LABEL.to_string(), z.clone())]))
                    .unwrap_or_default(),
                annotations: BTreeMap::new(),
                taints: Vec::new(),
                unschedulable: n.unschedulable,
                ready: true,
                pressure: Vec::new(),
                kubelet: format!("v{}", n.kubelet),
                address: None,
                allocatable: Resources { cpu_millis: 4000, memory_bytes: 16 << 30, pods: 110 },
            })
            .collect();
        async move { Ok(s) }.boxed()
    }

    fn node(&self, node: &str) -> BoxFuture<'_, Result<NodeState, refit_kube::Error>> {
        if self.unreadable.lock().unwrap().contains(node) {
            let e = refit_kube::Error::Wait { what: format!("reading {node}"), detail: "503".into() };
            return async move { Err(e) }.boxed();
        }
        let s = self.nodes.lock().unwrap().get(node).map(FakeNode::state);
        async move { Ok(s.unwrap_or_default()) }.boxed()
    }

    fn nodes(
        &self,
    ) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, NodeState>, refit_kube::Error>> {
        let all = self.nodes.lock().unwrap().iter().map(|(name, n)| (name.clone(), n.state())).collect();
        async move { Ok(all) }.boxed()
    }

    fn cordon<'a>(
        &'a self,
        node: &'a str,
        run: &'a str,
    ) -> BoxFuture<'a, Result<CordonOutcome, refit_kube::Error>> {
        async move {
            let mut nodes = self.nodes.lock().unwrap();
            let n = nodes.get_mut(node).ok_or_else(|| missing(node))?;
            let out = if n.unschedulable {
                if n.cordoned_by.as_deref() == Some(run) {
                    CordonOutcome::AlreadyOurs
                } else {
                    CordonOutcome::ByOther { by: n.cordoned_by.clone() }
                }
            } else {
                n.unschedulable = true;
                n.cordoned_by = Some(run.to_string());
                CordonOutcome::Cordoned
            };
            drop(nodes);
            self.note();
            Ok(out)
        }
        .boxed()
    }

    fn uncordon<'a>(
        &'a self,
        node: &'a str,
        run: &'a str,
    ) -> BoxFuture<'a, Result<UncordonOutcome, refit_kube::Error>> {
        async move {
            let mut nodes = self.nodes.lock().unwrap();
            let n = nodes.get_mut(node).ok_or_else(|| missing(node))?;
            Ok(if n.cordoned_by.as_deref() == Some(run) && n.unschedulable {
                n.unschedulable = false;
                n.cordoned_by = None;
                UncordonOutcome::Uncordoned
            } else if !n.unschedulable {
                UncordonOutcome::NotCordoned
            } else {
                UncordonOutcome::NotOurs { by: n.cordoned_by.clone() }
            })
        }
        .boxed()
    }

    fn drain<'a>(
        &'a self,
        node: &'a str,
        cfg: &'a DrainConfig,
        _on_event: OnDrain<'a>,
    ) -> BoxFuture<'a, Result<DrainReport, refit_kube::Error>> {
        async move {
            if self.undrainable.lock().unwrap().contains(node) {
                tokio::time::sleep(cfg.timeout).await;
                let pod = PodRef { namespace: "shop".into(), name: format!("web-{node}"), uid: "u".into() };
                return Ok(DrainReport {
                    remaining: vec![Blocker {
                        pod,
                        pdb: Some("shop/web".into()),
                        reason: "budget".into(),
                        remedy: None,
                    }],
                    complete: false,
                    timed_out: true,
                    ..DrainReport::default()
                });
            }
            let t = self.drain_times.lock().unwrap().get(node).copied();
            let t = t.unwrap_or_else(|| *self.drain_time.lock().unwrap());
            tokio::time::sleep(t).await;
            if !self.nodes.lock().unwrap().contains_key(node) {
                return Err(missing(node));
            }
            Ok(DrainReport { complete: true, ..DrainReport::default() })
        }
        .boxed()
    }

    fn force_delete_remaining<'a>(
        &'a self,
        _node: &'a str,
        _cfg: &'a DrainConfig,
        _on_event: OnDrain<'a>,
    ) -> BoxFuture<'a, Result<DrainReport, refit_kube::Error>> {
        async move { Ok(DrainReport { complete: true, ..DrainReport::default() }) }.boxed()
    }

    fn wait_ready_at<'a>(
        &'a self,
        node: &'a str,
        version: &'a Version,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        let at = self.nodes.lock().unwrap().get(node).map(|n| n.kubelet == *version);
        async move {
            match at {
                Some(true) => Ok(()),
                _ => Err(refit_kube::Error::Wait {
                    what: format!("{node} Ready at {version}"),
                    detail: "timed out".into(),
                }),
            }
        }
        .boxed()
    }

    fn control_plane_lagging<'a>(
        &'a self,
        _node: &'a str,
        _version: &'a Version,
    ) -> BoxFuture<'a, Result<Vec<String>, refit_kube::Error>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    fn custom_metadata<'a>(
        &'a self,
        _node: &'a str,
        _carry: &'a refit_core::run::carried_over::CarryOver,
    ) -> BoxFuture<'a, Result<CustomMetadata, refit_kube::Error>> {
        async move { Ok(CustomMetadata::default()) }.boxed()
    }

    fn apply_custom_metadata<'a>(
        &'a self,
        _node: &'a str,
        _meta: &'a CustomMetadata,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        async move { Ok(()) }.boxed()
    }

    fn delete_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        self.nodes.lock().unwrap().remove(node);
        self.note();
        async move { Ok(()) }.boxed()
    }

    fn wait_gone<'a>(
        &'a self,
        _node: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        async move { Ok(()) }.boxed()
    }

    fn upgrade_addons<'a>(
        &'a self,
        _targets: &'a AddonTargets,
        _timeout: Duration,
        _on_event: OnAddon<'a>,
    ) -> BoxFuture<'a, Result<AddonReport, refit_kube::Error>> {
        async move { Ok(AddonReport::default()) }.boxed()
    }
}

/// What a node's action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behave {
    Succeed,
    Fail,
    Panic,
}

/// Node actions: each takes `action_time` of tokio's clock, then moves the node's kubelet.
pub struct FakeActions {
    pub cluster: Arc<FakeCluster>,
    pub action_time: Mutex<Duration>,
    pub behave: Mutex<BTreeMap<String, Behave>>,
    /// Action runs per node (started).
    pub runs: Mutex<BTreeMap<String, usize>>,
    /// Actions running now, and the most at once.
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    /// Notified when an action starts.
    pub started: Notify,
    /// While true, actions wait after their time is up (a test decides when they end).
    pub held: tokio::sync::watch::Sender<bool>,
    /// Whether health gates hold (a test flips it), and how often they were probed.
    pub gate_holds: std::sync::atomic::AtomicBool,
    pub gate_probes: AtomicUsize,
}

impl FakeActions {
    pub fn new(cluster: Arc<FakeCluster>) -> Arc<FakeActions> {
        Arc::new(FakeActions {
            cluster,
            action_time: Mutex::new(Duration::from_secs(60)),
            behave: Mutex::new(BTreeMap::new()),
            runs: Mutex::new(BTreeMap::new()),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            started: Notify::new(),
            held: tokio::sync::watch::channel(false).0,
            gate_holds: std::sync::atomic::AtomicBool::new(true),
            gate_probes: AtomicUsize::new(0),
        })
    }

    pub fn runs(&self, node: &str) -> usize {
        self.runs.lock().unwrap().get(node).copied().unwrap_or(0)
    }
}

impl NodeActions for FakeActions {
    fn probe_gate<'a>(
        &'a self,
        _check: &'a refit_core::health::GateCheck,
        _env: &'a [(String, String)],
    ) -> BoxFuture<'a, refit_core::health::Observation> {
        async move {
            self.gate_probes.fetch_add(1, Ordering::SeqCst);
            if self.gate_holds.load(Ordering::SeqCst) {
                refit_core::health::Observation::Holds("error rate 0".into())
            } else {
                refit_core::health::Observation::Fails("error rate 7/s".into())
            }
        }
        .boxed()
    }

    fn upgrade<'a>(
        &'a self,
        _run: &'a str,
        _action: &'a NodeAction,
        ctx: &'a NodeContext,
        _timeout: Duration,
        on_line: OnLine<'a>,
    ) -> BoxFuture<'a, Result<(), ActionFailure>> {
        async move {
            *self.runs.lock().unwrap().entry(ctx.node.clone()).or_default() += 1;
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            self.started.notify_waiters();
            on_line(&format!("upgrading {}", ctx.node));
            let t = *self.action_time.lock().unwrap();
            tokio::time::sleep(t).await;
            let mut held = self.held.subscribe();
            let _ = held.wait_for(|h| !h).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            let behave = self.behave.lock().unwrap().get(&ctx.node).copied().unwrap_or(Behave::Succeed);
            match behave {
                Behave::Succeed => {
                    self.cluster.set(&ctx.node, |n| n.kubelet = v(&ctx.to));
                    Ok(())
                }
                Behave::Fail => Err(ActionFailure { message: "exit status 1".into(), node_unchanged: false }),
                Behave::Panic => panic!("the fake action of {} panics", ctx.node),
            }
        }
        .boxed()
    }

    /// Local commands succeed without running, except `sh -c SCRIPT`, which runs for real
    /// (the backup command tests: what it writes is checked).
    fn command<'a>(
        &'a self,
        argv: &'a [String],
        _env: &'a [(String, String)],
        _timeout: Duration,
        _on_line: OnLine<'a>,
    ) -> BoxFuture<'a, Result<(), ActionFailure>> {
        async move {
            if let [create, name] = argv
                && create == "create"
            {
                return self
                    .cluster
                    .create(name)
                    .await
                    .map_err(|message| ActionFailure { message, node_unchanged: true });
            }
            if argv.first().map(String::as_str) != Some("sh") {
                return Ok(());
            }
            let status = std::process::Command::new("sh").args(&argv[1..]).status().unwrap();
            if status.success() {
                Ok(())
            } else {
                Err(ActionFailure { message: format!("{status}"), node_unchanged: true })
            }
        }
        .boxed()
    }

    fn etcd_snapshot<'a>(
        &'a self,
        _endpoints: &'a [EtcdEndpointSpec],
        _dir: &'a Path,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<(String, u64), String>> {
        async move { Ok(("snapshot.db".to_string(), 1)) }.boxed()
    }

    fn etcd_snapshot_on_node<'a>(
        &'a self,
        _action: &'a NodeAction,
        nodes: &'a [NodeContext],
        _dir: &'a Path,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<(String, u64), String>> {
        async move { Ok((format!("{}:snapshot.db", nodes[0].node), 1)) }.boxed()
    }
}

/// What the journal does at a given write (counted over step records and run states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every write from the Nth (0-based) fails.
    FailFrom(usize),
    /// The Nth write never returns (the process "dies" there; the test drops the run).
    HangAt(usize),
}

/// The journal, in memory; shared across "process restarts" to test resumes.
pub struct MemJournal {
    pub runs: Mutex<BTreeMap<String, RunRecord>>,
    pub steps: Mutex<BTreeMap<(String, String, String), StepState>>,
    pub events: Mutex<Vec<Event>>,
    pub writes: AtomicUsize,
    pub fault: Mutex<Fault>,
    pub hung: Notify,
}

impl MemJournal {
    pub fn new() -> Arc<MemJournal> {
        Arc::new(MemJournal {
            runs: Mutex::new(BTreeMap::new()),
            steps: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Vec::new()),
            writes: AtomicUsize::new(0),
            fault: Mutex::new(Fault::None),
            hung: Notify::new(),
        })
    }

    /// Whether this write may go through (false: fail); hangs forever on a HangAt.
    async fn write(&self) -> Result<(), JournalError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        let fault = *self.fault.lock().unwrap();
        match fault {
            Fault::FailFrom(k) if n >= k => Err(JournalError::msg("disk I/O error")),
            Fault::HangAt(k) if n == k => {
                self.hung.notify_one();
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => Ok(()),
        }
    }

    pub fn step(&self, run: &str, unit: &str, key: &str) -> Option<StepState> {
        self.steps.lock().unwrap().get(&(run.into(), unit.into(), key.into())).copied()
    }
}

impl Journal for MemJournal {
    fn latest_run<'a>(&'a self, cluster: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        let r = self.runs.lock().unwrap().values().rfind(|r| r.cluster == cluster).cloned();
        async move { Ok(r) }.boxed()
    }

    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        let r = self.runs.lock().unwrap().get(id).cloned();
        async move { Ok(r) }.boxed()
    }

    fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<RunRecord, JournalError>> {
        let r = self.runs.lock().unwrap().entry(run.id.clone()).or_insert(run).clone();
        async move { Ok(r) }.boxed()
    }

    fn set_run_state<'a>(&'a self, run: &'a str, state: RunState) -> BoxFuture<'a, Result<(), JournalError>> {
        async move {
            self.write().await?;
            if let Some(r) = self.runs.lock().unwrap().get_mut(run) {
                r.state = state.as_str().into();
            }
            Ok(())
        }
        .boxed()
    }

    fn steps<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<Vec<StepRecord>, JournalError>> {
        let rows = self
            .steps
            .lock()
            .unwrap()
            .iter()
            .filter(|((r, _, _), _)| r == run)
            .map(|((_, u, k), s)| StepRecord { unit: u.clone(), step: k.clone(), state: s.as_str().into() })
            .collect();
        async move { Ok(rows) }.boxed()
    }

    fn record_step<'a>(
        &'a self,
        run: &'a str,
        unit: &'a str,
        key: &'a str,
        state: StepState,
        _detail: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        async move {
            self.write().await?;
            self.steps.lock().unwrap().insert((run.into(), unit.into(), key.into()), state);
            self.events.lock().unwrap().push(event.clone());
            Ok(())
        }
        .boxed()
    }

    fn record_event(&self, _run: &str, event: &Event) {
        self.events.lock().unwrap().push(event.clone());
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

/// Follows tokio's (paused) clock from a fixed instant.
pub struct TestClock {
    pub base: SystemTime,
    pub start: tokio::time::Instant,
}

impl TestClock {
    pub fn new() -> Arc<TestClock> {
        Arc::new(TestClock {
            base: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            start: tokio::time::Instant::now(),
        })
    }

    /// `d` from now.
    pub fn now_plus(&self, d: Duration) -> SystemTime {
        self.now() + d
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

/// Keeps every event.
#[derive(Default)]
pub struct Events(pub Mutex<Vec<Event>>);

impl refit_engine::EventSink for Events {
    fn emit(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

/// One world: cluster, actions, journal, clock, events.
/// A rule that says, from the cluster as it is now, which apiservers are not ready.
pub type ApiserverRule = Box<dyn Fn(&FakeCluster) -> Vec<String> + Send + Sync>;

/// The control plane's health: apiserver problems from a rule over the fake cluster (so a test
/// can break one when another member is upgraded), etcd as set; every probe is counted.
pub struct FakeHealth {
    pub cluster: Arc<FakeCluster>,
    pub apiservers: Mutex<ApiserverRule>,
    pub etcd: Mutex<Result<refit_core::health::etcd::EtcdHealth, String>>,
    pub probes: AtomicUsize,
    pub etcd_probes: AtomicUsize,
    /// Workloads with pods on each node.
    pub workloads_on: Mutex<BTreeMap<String, BTreeSet<refit_core::health::workloads::WorkloadRef>>>,
    /// Names of workloads that are not available.
    pub unavailable: Mutex<BTreeSet<String>>,
    /// Every set of workloads a gate asked about.
    pub workloads_asked: Mutex<Vec<BTreeSet<refit_core::health::workloads::WorkloadRef>>>,
}

impl FakeHealth {
    pub fn new(cluster: Arc<FakeCluster>) -> Arc<FakeHealth> {
        Arc::new(FakeHealth {
            cluster,
            apiservers: Mutex::new(Box::new(|_| Vec::new())),
            etcd: Mutex::new(Err("no etcd in this test".into())),
            probes: AtomicUsize::new(0),
            etcd_probes: AtomicUsize::new(0),
            workloads_on: Mutex::default(),
            unavailable: Mutex::default(),
            workloads_asked: Mutex::default(),
        })
    }

    pub fn set_apiservers(&self, rule: impl Fn(&FakeCluster) -> Vec<String> + Send + Sync + 'static) {
        *self.apiservers.lock().unwrap() = Box::new(rule);
    }
}

impl Health for FakeHealth {
    fn apiservers(&self) -> BoxFuture<'_, Result<refit_core::health::control_plane::ApiserversView, String>> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        let asked = self.cluster.nodes.lock().unwrap().values().filter(|n| !n.worker).count();
        let problems = (self.apiservers.lock().unwrap())(&self.cluster);
        async move { Ok(refit_core::health::control_plane::ApiserversView { asked, problems }) }.boxed()
    }

    fn etcd<'a>(
        &'a self,
        _endpoints: &'a [EtcdEndpointSpec],
    ) -> BoxFuture<'a, Result<refit_core::health::etcd::EtcdHealth, String>> {
        self.etcd_probes.fetch_add(1, Ordering::SeqCst);
        let h = self.etcd.lock().unwrap().clone();
        async move { h }.boxed()
    }

    fn workloads_on<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<BTreeSet<refit_core::health::workloads::WorkloadRef>, String>> {
        let on = self.workloads_on.lock().unwrap().get(node).cloned().unwrap_or_default();
        async move { Ok(on) }.boxed()
    }

    fn workloads<'a>(
        &'a self,
        refs: &'a BTreeSet<refit_core::health::workloads::WorkloadRef>,
    ) -> BoxFuture<'a, Result<Vec<refit_core::health::workloads::WorkloadStatus>, String>> {
        self.workloads_asked.lock().unwrap().push(refs.clone());
        let unavailable = self.unavailable.lock().unwrap().clone();
        let out = refs
            .iter()
            .map(|w| {
                let ready = if unavailable.contains(&w.name) { 0 } else { 2 };
                refit_core::health::workloads::WorkloadStatus {
                    workload: w.clone(),
                    generation: 1,
                    observed_generation: 1,
                    desired: 2,
                    ready,
                    available: ready,
                }
            })
            .collect();
        async move { Ok(out) }.boxed()
    }
}

pub struct World {
    pub health: Arc<FakeHealth>,
    pub cluster: Arc<FakeCluster>,
    pub actions: Arc<FakeActions>,
    pub journal: Arc<MemJournal>,
    pub clock: Arc<TestClock>,
    pub events: Arc<Events>,
}

impl World {
    pub fn new(control_planes: usize, workers: usize) -> World {
        let cluster = FakeCluster::new(control_planes, workers);
        World {
            health: FakeHealth::new(cluster.clone()),
            actions: FakeActions::new(cluster.clone()),
            cluster,
            journal: MemJournal::new(),
            clock: TestClock::new(),
            events: Arc::new(Events::default()),
        }
    }

    pub fn context(&self) -> Context {
        Context {
            health: self.health.clone(),
            cluster: self.cluster.clone(),
            actions: self.actions.clone(),
            journal: self.journal.clone(),
            clock: self.clock.clone(),
            sink: self.events.clone(),
        }
    }

    /// The in-place schedule of this cluster: the control plane one at a time, then the
    /// workers `max_unavailable` at a time.
    pub fn schedule(&self, max_unavailable: usize) -> Schedule {
        let nodes = self.cluster.nodes.lock().unwrap().clone();
        let unit = |name: &str, role: Role, first: bool| UnitWork {
            node: name.to_string(),
            roles: BTreeSet::from([role]),
            from: FROM.into(),
            to: v(TO),
            steps: vec![Step::Cordon, Step::Drain, Step::Upgrade, Step::Validate, Step::Uncordon],
            external: false,
            first_control_plane: first,
        };
        let cps: Vec<UnitWork> = nodes
            .iter()
            .filter(|(_, n)| !n.worker)
            .enumerate()
            .map(|(i, (name, _))| unit(name, Role::ControlPlane, i == 0))
            .collect();
        let workers: Vec<UnitWork> =
            nodes.iter().filter(|(_, n)| n.worker).map(|(name, _)| unit(name, Role::Worker, false)).collect();
        let mut stages = Vec::new();
        if !cps.is_empty() {
            stages.push(Stage {
                phase: PhaseKind::ControlPlane,
                to: v(TO),
                concurrency: 1,
                units: cps,
                auto: None,
                surge: None,
            });
        }
        if !workers.is_empty() {
            stages.push(Stage {
                phase: PhaseKind::Workers,
                to: v(TO),
                concurrency: max_unavailable,
                units: workers,
                auto: None,
                surge: None,
            });
        }
        Schedule { target: v(TO), stages, cluster_services: false, excluded: Vec::new() }
    }

    /// The replace schedule of this cluster's workers under `--max-surge`: replacement first
    /// (`create {new}`, validate, cordon, drain, remove), started by the surge rule.
    pub fn surge_spec(&self, surge: usize, unavailable: usize) -> RunSpec {
        let mut spec = self.spec(1, OnUndrainable::Fail);
        for s in &mut spec.schedule.stages {
            for u in &mut s.units {
                u.steps = vec![Step::Upgrade, Step::Validate, Step::Cordon, Step::Drain, Step::Remove];
            }
            s.surge = Some(refit_core::surge::Limits { surge, unavailable });
            s.concurrency = surge + unavailable;
        }
        spec.action = NodeAction::Replace {
            create: vec!["create".into(), "{new}".into()],
            remove: Vec::new(),
            control_plane: Vec::new(),
            carry_over: Default::default(),
        };
        spec
    }

    pub fn spec(&self, max_unavailable: usize, on_undrainable: OnUndrainable) -> RunSpec {
        RunSpec {
            schedule: self.schedule(max_unavailable),
            action: NodeAction::Exec { command: vec!["upgrade-node".into(), "{node}".into()] },
            drain_rules: Default::default(),
            drain_timeout_secs: 600,
            node_timeout_secs: 900,
            on_undrainable,
            force: false,
            addresses: BTreeMap::new(),
            backup: BackupSpec::OptedOut,
            cluster_services: None,
            eviction_concurrency: 4,
            accepted: Vec::new(),
            gates: Vec::new(),
            on_gate_failure: Default::default(),
            etcd_health: Vec::new(),
            control_plane_gate_secs: refit_engine::DEFAULT_CONTROL_PLANE_GATE_SECS,
        }
    }

    /// Records the run in the journal (as the lifecycle would) and returns its id.
    pub fn create(&self, id: &str, spec: &RunSpec) -> String {
        self.journal.runs.lock().unwrap().insert(
            id.into(),
            RunRecord {
                id: id.into(),
                cluster: "uid-1".into(),
                target: TO.into(),
                state: "running".into(),
                spec: serde_json::to_string(spec).unwrap(),
            },
        );
        id.to_string()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.0.lock().unwrap().clone()
    }
}
