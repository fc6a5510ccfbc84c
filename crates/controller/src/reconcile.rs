//! The leader's reconciler: `refit_fleet`'s driver on the hub's resources ([`HubFleet`]).
//!
//! While this replica leads, one loop reconciles every UpdateRun of the namespace:
//! 1. **Bind** Members not bound yet to the cluster their kubeconfig reaches (first contact);
//!    every later observation and launch checks that binding.
//! 2. **Initialize** a new UpdateRun: its UpdateStrategy copied and resolved against the
//!    Members as they are now (core's `RunState::new`, as `refit fleet run create`), status
//!    `Initialized`, one Gate object per gate of the run (approvals are ordinary writes to it).
//! 3. **The spec's request**, once per generation (`status.observedGeneration`): `state: Run`
//!    starts the run (the first start freezes targets, as `refit fleet run start`), `Stop`
//!    requests a stop.
//! 4. **Approvals** written to Gate objects become the run's `ApproveGate` events (who: the
//!    approver the admission policy checked against the authenticated user); each Gate's status
//!    mirrors the run's gate.
//! 5. **Drive**: the driver's tick (observe → `core::fleet::next` → record → launch member
//!    upgrades through the launcher), the same code as local mode.
//!
//! The loop wakes on any change of an UpdateRun or Gate (watches), on a member upgrade's end,
//! at the run's next deadline, or after [`POLL`]. It ends when leadership is lost: the driver
//! is dropped, which cancels the member upgrades it launched (their journals resume them under
//! the next leader).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use refit_core::fleet::{Event, GateRef, GateStatus, RunState, UpdateState, resolve};
use refit_fleet::commit_on;
use refit_fleet::driver::{Driver, DriverConfig, Report, Sink};
use refit_fleet::observe::{KubeObserver, fleet_members, observe_all};
use refit_fleet::store::{DriverStore, FleetStore};
use serde_json::json;
use tokio::sync::Notify;

use crate::launcher::InProcessLauncher;
use crate::leader::Role;
use crate::resources::{
    AutoUpgradeProfile, Gate, GateResourceSpec, GateResourceStatus, GateType, RunRequest, UpdateRun,
    UpdateRunSpec, UpdateStrategy,
};
use crate::store::{HubFleet, Leadership, fleet_err};

/// Longest sleep between two looks at the hub.
pub const POLL: Duration = Duration::from_secs(2);

/// Label pairs of a metric.
type Labels = Vec<(String, String)>;

/// The reconciler's Prometheus metrics (registered on the replica's `/metrics`).
#[derive(Clone)]
pub struct Metrics {
    /// `refit_controller_run_state{run,state}`: 1 for the run's state, 0 for the others.
    pub run_state: Family<Labels, Gauge>,
    /// `refit_controller_member_upgrade_duration_seconds{outcome}`.
    pub member_upgrade: Family<Labels, Histogram>,
    /// `refit_controller_gates_pending{run}`: gates reached and waiting.
    pub gates_pending: Family<Labels, Gauge>,
    /// `refit_controller_node_step_duration_seconds{step}`: the node steps (cordon, drain,
    /// upgrade, validate, uncordon, remove) of member upgrades, timed by the upgrades
    /// themselves (their `step-done` events).
    pub node_step: Family<Labels, Histogram>,
    /// `refit_controller_approval_latency_seconds`: from a gate's reaching (Pending) to its
    /// approval being recorded (pre-approvals, given before the gate was reached, wait for
    /// nobody and are not counted).
    pub approval_latency: Histogram,
    /// `refit_controller_pods_blocking_drains{member}`: pods whose eviction is refused (a PDB,
    /// or a pod drain rules keep) on the node the member's upgrade drains now.
    pub pods_blocking_drains: Family<Labels, Gauge>,
    started: Arc<Mutex<HashMap<(String, String), Instant>>>,
    blocking: Arc<Mutex<HashMap<String, std::collections::BTreeSet<String>>>>,
}

fn duration_buckets() -> Histogram {
    // 5 s … about 11 h.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(5.0, 2.0, 14))
}

fn step_buckets() -> Histogram {
    // 0.25 s … about 34 min.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.25, 2.0, 14))
}

fn approval_buckets() -> Histogram {
    // 1 s … about 2 days (people approve in minutes to days).
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 3.0, 12))
}

/// How long `gate` waited Pending for its approval; None when it was approved before it was
/// reached (or is not approved).
pub fn approval_latency(gate: &refit_core::fleet::GateState) -> Option<Duration> {
    let (reached, approved) = (gate.reached_at?, gate.approval.as_ref()?.at);
    let ms = approved.as_millisecond().checked_sub(reached.as_millisecond())?;
    u64::try_from(ms).ok().map(Duration::from_millis)
}

impl Metrics {
    /// New metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            run_state: Family::default(),
            member_upgrade: Family::new_with_constructor(duration_buckets as fn() -> Histogram),
            gates_pending: Family::default(),
            node_step: Family::new_with_constructor(step_buckets as fn() -> Histogram),
            approval_latency: approval_buckets(),
            pods_blocking_drains: Family::default(),
            started: Arc::default(),
            blocking: Arc::default(),
        };
        registry.register("run_state", "1 for each update run's current state", m.run_state.clone());
        registry.register_with_unit(
            "member_upgrade_duration",
            "How long member upgrades took, by outcome",
            prometheus_client::registry::Unit::Seconds,
            m.member_upgrade.clone(),
        );
        registry.register("gates_pending", "Gates of a run reached and waiting", m.gates_pending.clone());
        registry.register_with_unit(
            "node_step_duration",
            "How long member upgrades' node steps took, by step",
            prometheus_client::registry::Unit::Seconds,
            m.node_step.clone(),
        );
        registry.register_with_unit(
            "approval_latency",
            "How long gates waited Pending for their approval",
            prometheus_client::registry::Unit::Seconds,
            m.approval_latency.clone(),
        );
        registry.register(
            "pods_blocking_drains",
            "Pods refusing eviction from the node a member upgrade drains",
            m.pods_blocking_drains.clone(),
        );
        m
    }

    /// Times node steps and counts blocking pods from what a member upgrade prints.
    pub fn upgrade_event(&self, member: &str, e: &refit_core::event::Event) {
        use refit_core::event::Event as E;
        let labels = || vec![("member".to_string(), member.to_string())];
        let mut blocking = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            E::StepDone { step, millis, .. } => {
                self.node_step
                    .get_or_create(&vec![("step".to_string(), step.clone())])
                    .observe(Duration::from_millis(*millis).as_secs_f64());
                if step == "drain" {
                    blocking.remove(member);
                    self.pods_blocking_drains.get_or_create(&labels()).set(0);
                }
            }
            E::StepFailed { step, .. } if step == "drain" => {
                blocking.remove(member);
                self.pods_blocking_drains.get_or_create(&labels()).set(0);
            }
            E::Blocked { pod, .. } => {
                let pods = blocking.entry(member.to_string()).or_default();
                pods.insert(pod.clone());
                self.pods_blocking_drains
                    .get_or_create(&labels())
                    .set(i64::try_from(pods.len()).unwrap_or(i64::MAX));
            }
            _ => {}
        }
    }

    /// Sets the state and pending gates of `run`.
    pub fn run(&self, run: &RunState) {
        for s in STATES {
            let labels = vec![("run".to_string(), run.name.clone()), ("state".to_string(), s.to_string())];
            self.run_state.get_or_create(&labels).set(i64::from(run.status.state == s));
        }
        let pending = run.gates().filter(|g| g.state == GateStatus::Pending).count();
        self.gates_pending
            .get_or_create(&vec![("run".to_string(), run.name.clone())])
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Times member upgrades from what the driver records.
    fn event(&self, run: &str, e: &Event) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let (member, outcome) = match e {
            Event::MemberStarted { member, .. } | Event::MemberRelaunched { member, .. } => {
                started.entry((run.to_string(), member.clone())).or_insert_with(Instant::now);
                return;
            }
            Event::MemberSucceeded { member, .. } => (member, "succeeded"),
            Event::MemberFailed { member, .. } => (member, "failed"),
            Event::MemberPaused { member, .. } => (member, "paused"),
            _ => return,
        };
        if let Some(at) = started.remove(&(run.to_string(), member.clone())) {
            self.member_upgrade
                .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
                .observe(at.elapsed().as_secs_f64());
        }
    }
}

const STATES: [UpdateState; 8] = [
    UpdateState::NotStarted,
    UpdateState::Running,
    UpdateState::Pending,
    UpdateState::Stopping,
    UpdateState::Stopped,
    UpdateState::Skipped,
    UpdateState::Failed,
    UpdateState::Completed,
];

/// What the leader needs.
pub struct Lead {
    /// The hub.
    pub client: kube::Client,
    /// The fleet's namespace.
    pub namespace: String,
    /// This replica's name.
    pub holder: String,
    /// Whether (and in which term) it leads.
    pub leadership: Leadership,
    /// Metrics.
    pub metrics: Metrics,
    /// The local path member upgrades are given as their store (`--store`): their etcd
    /// backups and the exec action's node locks lie beside it. Their journals are on the hub.
    pub journal: PathBuf,
    /// Each member upgrade's engine request (the binary's parser of `refit upgrade`).
    pub requests: crate::launcher::Requests,
    /// The driver's timings.
    pub driver: DriverConfig,
}

type HubDriver = Driver<InProcessLauncher, KubeObserver, HubFleet>;

/// Reconciles until this replica stops leading (Ok) or the hub fails for good (Err).
pub async fn lead(lead: Lead) -> Result<(), refit_fleet::Error> {
    let Lead { client, namespace, holder, leadership, metrics, journal, requests, driver } = lead;
    let Some(term) = leadership.leading() else { return Ok(()) };
    let store = HubFleet::new(client.clone(), &namespace, &holder, leadership.clone())
        .map_err(|e| refit_fleet::Error::Invalid(format!("cannot create the kubeconfig directory: {e}")))?;
    // Member upgrades stop starting nodes as soon as this term ends (the next leader resumes
    // them from their journals on the hub).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stopper = {
        let leadership = leadership.clone();
        let mut role = leadership.role.clone();
        tokio::spawn(async move {
            while leadership.leading() == Some(term) {
                if role.changed().await.is_err() {
                    break;
                }
            }
            let _ = stop_tx.send(true);
        })
    };
    let launcher = {
        let metrics = metrics.clone();
        let still = leadership.clone();
        InProcessLauncher {
            upgrades: Api::namespaced(client.clone(), &namespace),
            owner: format!("{holder}/{term}"),
            leading: Arc::new(move || still.leading() == Some(term)),
            stop,
            requests,
            store: journal,
            on_event: Some(Arc::new(move |member: &str, e: &refit_core::event::Event| {
                metrics.upgrade_event(member, e)
            })),
        }
    };
    let sink: Sink = {
        let metrics = metrics.clone();
        Arc::new(move |r: Report<'_>| match r {
            Report::Recorded { run, event } => {
                metrics.event(run, event);
                tracing::info!(run, "{}", serde_json::to_string(event).unwrap_or_default());
            }
            Report::Warning { run, message } => tracing::warn!(run, "{message}"),
        })
    };
    let mut d: HubDriver = Driver::on(store, launcher, KubeObserver, sink, driver);
    let nudge = Arc::new(Notify::new());
    let watches = [
        tokio::spawn(nudge_on::<UpdateRun>(client.clone(), namespace.clone(), nudge.clone())),
        tokio::spawn(nudge_on::<Gate>(client.clone(), namespace.clone(), nudge.clone())),
    ];
    let mut role = leadership.role.clone();
    let mut profiles_due = Instant::now();
    let result = loop {
        if leadership.leading().is_none() {
            break Ok(());
        }
        let wake = match pass(&mut d, &metrics, &mut profiles_due).await {
            Ok(w) => w,
            Err(e @ refit_fleet::Error::Store(refit_store::Error::Deposed { .. })) => {
                tracing::warn!("{e}");
                break Ok(());
            }
            Err(e) => {
                tracing::warn!("reconcile: {e}");
                None
            }
        };
        let notified = nudge.notified();
        let lost = async {
            while *role.borrow() == Role::Leader {
                if role.changed().await.is_err() {
                    break;
                }
            }
        };
        let extra = async {
            tokio::select! {
                () = notified => {}
                () = lost => {}
            }
        };
        if let Err(e) = d.wait_or(wake, extra).await {
            tracing::warn!("driver: {e}");
        }
    };
    for w in watches {
        w.abort();
    }
    stopper.abort();
    result
}

/// Wakes the loop on every change of a `K` in the namespace.
async fn nudge_on<K>(client: kube::Client, namespace: String, nudge: Arc<Notify>)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(client, &namespace);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    // Only a new object or a new generation (a spec change: a request, an approval) wakes the
    // loop; status writes — most of them the controller's own — do not.
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let name = o.meta().name.clone().unwrap_or_default();
                if seen.insert(name, o.meta().generation) != Some(o.meta().generation) {
                    nudge.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("watch: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// How often the leader evaluates the AutoUpgradeProfiles (as `refit fleet daemon` does).
pub const PROFILES_EVERY: Duration = refit_fleet::runs::PROFILES_EVERY;

/// Every enabled AutoUpgradeProfile whose channel points past some member's version generates
/// its run and starts it (`state: Run`), exactly once per target: the run's name is
/// deterministic (core's `target_for`) and recorded in the profile's status.
async fn profiles(store: &mut HubFleet) -> Result<(), refit_fleet::Error> {
    let api: Api<AutoUpgradeProfile> = Api::namespaced(store.client().clone(), store.namespace());
    let list =
        api.list(&ListParams::default()).await.map_err(|e| fleet_err("listing AutoUpgradeProfiles", e))?;
    if list.items.iter().all(|p| p.spec.disabled) {
        return Ok(());
    }
    let catalog = match refit_engine::catalog::load(None, None) {
        Ok((c, _)) => c,
        Err(e) => return Err(refit_fleet::Error::Invalid(format!("the release catalog: {e}"))),
    };
    let members = FleetStore::members(store).await?;
    let facts = observe_all(&Arc::new(KubeObserver), &members, refit_fleet::observe::OBSERVE_TIMEOUT).await;
    let versions: std::collections::BTreeMap<String, refit_core::Version> = facts
        .into_iter()
        .filter(|(_, f)| f.unavailable.is_none())
        .filter_map(|(m, f)| Some((m, f.versions.control_plane?)))
        .collect();
    let today = jiff::Zoned::now().date();
    let runs: Api<UpdateRun> = Api::namespaced(store.client().clone(), store.namespace());
    for p in list.items {
        let Some(name) = p.metadata.name.clone() else { continue };
        let profile = refit_core::fleet::Profile {
            name: name.clone(),
            channel: p.spec.channel,
            target_kubernetes_version: p
                .spec
                .target_kubernetes_version
                .as_deref()
                .and_then(|m| m.parse().ok()),
            strategy: p.spec.strategy.clone(),
            node_image_selection: p.spec.node_image_selection,
            disabled: p.spec.disabled,
            last_trigger: None,
            last_generated_run: None,
        };
        // Core's rule, shared with `refit fleet daemon`: once per target, never when disabled.
        let last = p.status.as_ref().and_then(|s| s.last_generated_run.as_deref());
        let Some(target) = refit_core::fleet::fire(&profile, last, &catalog, &versions, today) else {
            continue;
        };
        let Some(strategy) = p.spec.strategy.clone() else {
            let why = format!("profile {name}: no run generated: name an UpdateStrategy in spec.strategy");
            store.events().profile(&p, "NoStrategy", &why, true).await;
            continue;
        };
        let mut run = UpdateRun::new(
            &target.run_name,
            UpdateRunSpec { upgrade: target.spec.clone(), strategy, state: Some(RunRequest::Run) },
        );
        run.metadata.namespace = Some(store.namespace().to_string());
        match runs.create(&PostParams::default(), &run).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(fleet_err(format!("creating UpdateRun {}", target.run_name), e)),
        }
        let status = json!({"status": {
            "lastGeneratedRun": target.run_name,
            "lastTarget": target.spec.kubernetes_version,
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| fleet_err(format!("writing AutoUpgradeProfile {name}"), e))?;
        let held = target.held_back.iter().map(|h| format!("; held back: {} ({})", h.member, h.reason));
        let message = format!("generated and started run {}{}", target.run_name, held.collect::<String>());
        store.events().profile(&p, "RunGenerated", &message, false).await;
    }
    Ok(())
}

/// One pass over every UpdateRun (see the module doc); the earliest wake-up asked for.
async fn pass(
    d: &mut HubDriver,
    metrics: &Metrics,
    profiles_due: &mut Instant,
) -> Result<Option<jiff::Timestamp>, refit_fleet::Error> {
    d.store().bind_members().await?;
    if Instant::now() >= *profiles_due {
        *profiles_due = Instant::now() + PROFILES_EVERY;
        if let Err(e) = profiles(d.store()).await {
            tracing::warn!("auto-upgrade profiles: {e}");
        }
    }
    let api: Api<UpdateRun> = Api::namespaced(d.store().client().clone(), d.store().namespace());
    let runs = api.list(&ListParams::default()).await.map_err(|e| fleet_err("listing UpdateRuns", e))?;
    let mut wake: Option<jiff::Timestamp> = None;
    for obj in runs.items {
        let Some(name) = obj.metadata.name.clone() else { continue };
        match reconcile_run(d, metrics, &name).await {
            Ok(w) => {
                wake = match (wake, w) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Err(e @ refit_fleet::Error::Store(refit_store::Error::Deposed { .. })) => return Err(e),
            Err(e) => tracing::warn!(run = %name, "{e}"),
        }
    }
    Ok(wake)
}

async fn reconcile_run(
    d: &mut HubDriver,
    metrics: &Metrics,
    name: &str,
) -> Result<Option<jiff::Timestamp>, refit_fleet::Error> {
    let Some((obj, run)) = d.store().run_object(name).await? else { return Ok(None) };
    let Some(mut run) = run else {
        initialize(d.store(), &obj).await?;
        return Ok(None);
    };
    // The spec's request, once per generation.
    let status = obj.status.clone().unwrap_or_default();
    if obj.metadata.generation.is_some() && status.observed_generation != obj.metadata.generation {
        match obj.spec.state {
            Some(RunRequest::Run) => {
                let observer = Arc::new(KubeObserver);
                match refit_fleet::runs::start_on(d.store(), &observer, name, true, None).await {
                    Ok(_) | Err(refit_fleet::Error::Refused(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(RunRequest::Stop) => {
                let stop = Event::Stop { at: jiff::Timestamp::now(), by: None };
                match commit_on(d.store(), name, None, |_| Ok(stop.clone())).await {
                    Ok(_) | Err(refit_fleet::Error::Refused(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            None => {}
        }
        let Some((obj, now)) = d.store().run_object(name).await? else { return Ok(None) };
        d.store().observe_generation(&obj).await?;
        run = now.unwrap_or(run);
    }
    // A run that needed nothing at this version needs nothing now.
    if d.store().is_settled(&obj) {
        return Ok(None);
    }
    if approvals(d.store(), metrics, name).await? {
        run = refit_fleet::commit::load_run_on(d.store(), name).await?;
    }
    let mut wake = None;
    let state = run.state;
    let active =
        matches!(state.status.state, UpdateState::Running | UpdateState::Pending | UpdateState::Stopping)
            || state.progress().in_flight > 0;
    if active {
        let tick = d.tick(name).await?;
        wake = tick.wake;
        if tick.finished {
            d.store().release_lease(name).await;
        }
    }
    let state = if active { refit_fleet::commit::load_run_on(d.store(), name).await?.state } else { state };
    metrics.run(&state);
    mirror_gates(d.store(), &state).await?;
    if !active && state.progress().in_flight == 0 {
        d.store().settle(name);
    }
    Ok(wake)
}

/// A new UpdateRun: its strategy copied and resolved against the fleet now, its gates created.
async fn initialize(store: &mut HubFleet, obj: &UpdateRun) -> Result<(), refit_fleet::Error> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let strategies: Api<UpdateStrategy> = Api::namespaced(store.client().clone(), store.namespace());
    let Some(s) = strategies
        .get_opt(&obj.spec.strategy)
        .await
        .map_err(|e| fleet_err(format!("reading UpdateStrategy {}", obj.spec.strategy), e))?
    else {
        let why =
            format!("UpdateStrategy {} does not exist (kubectl get updatestrategies)", obj.spec.strategy);
        store.events().run(obj, "InvalidStrategy", &why, true).await;
        return Err(refit_fleet::Error::NoStrategy(why));
    };
    let strategy = s.spec.strategy(&obj.spec.strategy);
    let members = FleetStore::members(store).await?;
    let made = match strategy.hub_refusal() {
        Some(e) => Err(e.to_string()),
        None => resolve(&strategy, &fleet_members(&members)).map_err(|e| e.to_string()).and_then(|plan| {
            RunState::new(&name, obj.spec.upgrade.clone(), strategy, plan, jiff::Timestamp::now())
                .map_err(|e| e.to_string())
        }),
    };
    let run = match made {
        Ok(r) => r,
        Err(why) => {
            store.events().run(obj, "Invalid", &why, true).await;
            return Err(refit_fleet::Error::Invalid(format!("UpdateRun {name}: {why}")));
        }
    };
    let gates: Api<Gate> = Api::namespaced(store.client().clone(), store.namespace());
    for g in run.gates() {
        let gate_name = crate::hub::gate_object_name(&name, &g.gate.to_string());
        let type_ = match g.spec {
            refit_core::fleet::GateSpec::Approval { .. } => GateType::Approval,
            refit_core::fleet::GateSpec::ScheduledStart { .. } => GateType::ScheduledStart,
        };
        let mut obj = Gate::new(
            &gate_name,
            GateResourceSpec { run: name.clone(), gate: g.gate.to_string(), type_, approval: None },
        );
        obj.metadata.namespace = Some(store.namespace().to_string());
        obj.metadata.labels = Some([(crate::store::RUN_LABEL.to_string(), name.clone())].into());
        match gates.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(fleet_err(format!("creating Gate {gate_name}"), e)),
        }
    }
    store.write_status(obj, &run).await?;
    store
        .events()
        .run(
            obj,
            "Initialized",
            &format!("run {name}: {} members in {} stages", run.progress().total, run.stages.len()),
            false,
        )
        .await;
    Ok(())
}

/// Approvals written to the run's Gate objects, recorded in the run; whether any was.
async fn approvals(store: &mut HubFleet, metrics: &Metrics, run: &str) -> Result<bool, refit_fleet::Error> {
    let mut recorded = false;
    let gates: Api<Gate> = Api::namespaced(store.client().clone(), store.namespace());
    let list = gates
        .list(&ListParams::default().labels(&format!("{}={run}", crate::store::RUN_LABEL)))
        .await
        .map_err(|e| fleet_err(format!("listing the Gates of {run}"), e))?;
    for g in list.items {
        let Some(approval) = g.spec.approval.clone() else { continue };
        let Ok(gate) = g.spec.gate.parse::<GateRef>() else { continue };
        let expires_at = approval.expires_at.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let approved = gate.clone();
        let event = move |cur: &RunState| {
            // Recorded once: the run already holds this approver's approval.
            match cur.gate(&gate) {
                Some(s)
                    if s.approval.as_ref().is_some_and(|a| a.by == approval.by()) || s.state.is_done() =>
                {
                    Err(refit_fleet::Error::Invalid("already recorded".into()))
                }
                _ => Ok(Event::ApproveGate {
                    gate: gate.clone(),
                    by: approval.by(),
                    at: jiff::Timestamp::now(),
                    expires_at,
                }),
            }
        };
        match commit_on(store, run, None, event).await {
            Ok(now) => {
                recorded = true;
                if let Some(waited) = now.state.gate(&approved).and_then(approval_latency) {
                    metrics.approval_latency.observe(waited.as_secs_f64());
                }
            }
            Err(refit_fleet::Error::Invalid(_) | refit_fleet::Error::Refused(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(recorded)
}

/// Each Gate object's status as the run has it.
async fn mirror_gates(store: &mut HubFleet, run: &RunState) -> Result<(), refit_fleet::Error> {
    let gates: Api<Gate> = Api::namespaced(store.client().clone(), store.namespace());
    let list = gates
        .list(&ListParams::default().labels(&format!("{}={}", crate::store::RUN_LABEL, run.name)))
        .await
        .map_err(|e| fleet_err(format!("listing the Gates of {}", run.name), e))?;
    for g in list.items {
        let Ok(gate) = g.spec.gate.parse::<GateRef>() else { continue };
        let Some(s) = run.gate(&gate) else { continue };
        let want = GateResourceStatus {
            state: Some(s.state),
            reached_at: s.reached_at.map(|t| t.to_string()),
            completed_at: s.completed_at.map(|t| t.to_string()),
            approved_by: s.approval.as_ref().map(|a| a.by.clone()),
            approved_at: s.approval.as_ref().map(|a| a.at.to_string()),
        };
        if g.status.as_ref() == Some(&want) {
            continue;
        }
        let name = g.metadata.name.clone().unwrap_or_default();
        gates
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": want})))
            .await
            .map_err(|e| fleet_err(format!("writing Gate {name}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_core::fleet::{Approval, GateSpec, GateState};

    #[test]
    fn approval_latency_counts_from_reaching_to_approving_and_not_pre_approvals() {
        let at = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let mut g = GateState::new("s/after/1".parse().unwrap(), GateSpec::Approval { display_name: None });
        assert_eq!(approval_latency(&g), None, "neither reached nor approved");
        g.reached_at = Some(at(100));
        assert_eq!(approval_latency(&g), None, "reached, not approved");
        g.approval = Some(Approval { by: "alice".into(), at: at(160), expires_at: None });
        assert_eq!(approval_latency(&g), Some(Duration::from_secs(60)));
        g.approval = Some(Approval { by: "alice".into(), at: at(40), expires_at: None });
        assert_eq!(approval_latency(&g), None, "approved before it was reached");
    }

    #[test]
    fn node_steps_are_timed_and_blocking_pods_counted_until_the_drain_ends() {
        use refit_core::event::Event as E;
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let step = |step: &str, millis| E::StepDone {
            node: "w1".into(),
            step: step.into(),
            to: "1.37.1".into(),
            millis,
            detail: String::new(),
        };
        let blocked = |pod: &str| E::Blocked {
            node: "w1".into(),
            pod: pod.into(),
            pdb: Some("web".into()),
            reason: "disruption budget".into(),
            remedy: None,
        };
        m.upgrade_event("m1", &blocked("shop/web-1"));
        m.upgrade_event("m1", &blocked("shop/web-1"));
        m.upgrade_event("m1", &blocked("shop/web-2"));
        let text = || {
            let mut t = String::new();
            prometheus_client::encoding::text::encode(&mut t, &registry).unwrap();
            t
        };
        assert!(text().lines().any(|l| l == "pods_blocking_drains{member=\"m1\"} 2"), "{}", text());
        m.upgrade_event("m1", &step("drain", 1500));
        m.upgrade_event("m1", &step("upgrade", 4000));
        let t = text();
        assert!(t.lines().any(|l| l == "pods_blocking_drains{member=\"m1\"} 0"), "{t}");
        assert!(t.lines().any(|l| l == "node_step_duration_seconds_count{step=\"drain\"} 1"), "{t}");
        assert!(t.lines().any(|l| l == "node_step_duration_seconds_sum{step=\"upgrade\"} 4.0"), "{t}");
    }
}
