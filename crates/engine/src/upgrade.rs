//! One cluster upgrade from a typed request to a run ready to execute, in the order every
//! front end follows (`refit upgrade`, the hub controller's in-process member upgrades, a
//! server): [`begin`] (resume, abandon or refuse the cluster's latest run; give back the
//! cordons of a run whose journal is elsewhere) → [`plan`] (prepare, exactly `refit plan`,
//! then the schedule) → [`Planned::spec`] (the refusals before a run: blocked, no etcd
//! backup, no node action) → [`record`] (a new run with a unique id, the lock pointing at it)
//! → [`execute`] (the engine under the cluster lock: a lost lock stops it). Front ends
//! render, and confirm, in between; nothing here prints or reads an argument.
//! [`unattended`] is the same order with nobody to confirm (the hub controller's in-process
//! member upgrades): lock → begin → plan → spec → record → execute → release, one typed end.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use refit_core::Version;
use refit_core::event::{Blocker, Event};
use refit_core::run::{Schedule, Style, schedule};
use refit_kube::Connection;
use tokio::sync::watch;

use crate::context::{Context, Journal, RunRecord};
use crate::lifecycle::lock::Lock;
use crate::lifecycle::{self, Behaviour, Decision, LifecycleError};
use crate::prepare::{PlanInput, PrepareError, Prepared, prepare};
use crate::report::Outcome;
use crate::spec::{BackupSpec, EtcdEndpointSpec, NodeAction, RunSpec, touches_control_plane};
use refit_core::lock::Holder;

/// What an upgrade is asked, parsed (the CLI from its arguments, the controller from a
/// member and its run).
#[derive(Debug, Clone)]
pub struct Request {
    /// What to plan.
    pub plan: PlanInput,
    /// The node action (None: only a dry run can go on).
    pub action: Option<NodeAction>,
    /// How to behave while executing.
    pub behaviour: Behaviour,
    /// The etcd backup: configured, the action's own, or the operator's opt-out; None when
    /// there is none (a run that touches etcd or the control plane is refused).
    pub backup: Option<BackupSpec>,
    /// The plan file's health gates between batches.
    pub gates: Vec<refit_core::health::HealthGate>,
    /// Where the control-plane gate reads etcd's health.
    pub etcd_health: Vec<EtcdEndpointSpec>,
    /// The control-plane gate's timeout (zero: the gate is off).
    pub control_plane_gate: Duration,
    /// Whether the cluster's services (CoreDNS, kube-proxy) are upgraded with it.
    pub cluster_services: bool,
    /// The operator confirmed a downgrade.
    pub confirm_downgrade: bool,
    /// Give up the cluster's unfinished run instead of resuming it.
    pub abandon: bool,
}

/// Why an upgrade does not go on.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Preparation stopped (bad input, nothing to do, the cluster).
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The journal, the lock or the cluster around the run.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The lock could not be pointed at the run.
    #[error(transparent)]
    Lock(#[from] crate::lifecycle::lock::LockError),
    /// An unfinished run of this cluster goes to another target.
    #[error("run {} of this cluster (to {}) did not finish", .0.id, .0.target)]
    Conflict(Box<RunRecord>),
    /// The path goes down and the operator did not confirm it.
    #[error("{} → {} is a downgrade: components may not read data newer releases wrote", .0.from, .0.to)]
    Downgrade(Box<Downgrade>),
    /// The plan has open blockers.
    #[error("the plan is blocked")]
    Blocked,
    /// The run changes etcd or the control plane and no etcd backup is configured.
    #[error("this run changes etcd and the control plane but no etcd backup is configured")]
    NoBackup,
    /// No node action.
    #[error("no node action")]
    NoAction,
    /// The cluster's identity could not be read.
    #[error("reading the cluster's identity: {0}")]
    Cluster(#[source] refit_kube::Error),
    /// The run failed to execute (its journal, the cluster around it).
    #[error(transparent)]
    Execute(#[from] crate::Error),
}

/// A downgrade's two ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downgrade {
    /// The oldest apiserver's version.
    pub from: Version,
    /// The target.
    pub to: Version,
}

/// What happened to earlier runs before this one planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// An unfinished run was given up (`abandon`); its cordons were given back.
    Abandoned {
        /// The run.
        run: String,
        /// The nodes uncordoned.
        uncordoned: Vec<String>,
    },
    /// The lock's previous holder ran a run this journal does not know; its cordons were
    /// given back ([`lifecycle::orphaned_run`]).
    OrphanCordonsGivenBack {
        /// The run.
        run: String,
        /// The nodes uncordoned (may be empty).
        uncordoned: Vec<String>,
    },
}

/// Where the cluster's latest run leaves this upgrade.
#[derive(Debug, Clone)]
pub enum Begun {
    /// An unfinished run to the same target: continue it with its frozen schedule and this
    /// request's behaviour.
    Resume {
        /// The run as stored.
        run: RunRecord,
        /// Its spec.
        spec: Box<RunSpec>,
    },
    /// Plan a new run (earlier runs dealt with, as the notes say).
    Fresh(Vec<Note>),
}

/// Decides about the cluster's latest run under `lock`: resume it, give it up (`abandon`), or
/// refuse ([`UpgradeError::Conflict`]); then gives back the cordons of the lock's previous
/// holder when `journal` does not know its run. `journal` is None when there is none yet (no
/// run of any cluster recorded).
pub async fn begin(
    conn: &Connection,
    journal: Option<&dyn Journal>,
    cluster: &str,
    request: &Request,
    lock: &Lock,
) -> Result<Begun, UpgradeError> {
    let mut notes = Vec::new();
    if let Some(j) = journal {
        match lifecycle::decide(j, cluster, &request.plan.request, &request.plan.catalog, request.abandon)
            .await?
        {
            Decision::Fresh => {}
            Decision::Abandon(prev) => {
                let uncordoned = lifecycle::abandon(conn, j, &prev.id).await?;
                notes.push(Note::Abandoned { run: prev.id, uncordoned });
            }
            Decision::Conflict(prev) => return Err(UpgradeError::Conflict(Box::new(prev))),
            Decision::Resume(prev) => {
                let spec = lifecycle::resume_spec(&prev, request.behaviour)?;
                lock.set_run(&prev.id).await?;
                return Ok(Begun::Resume { run: prev, spec: Box::new(spec) });
            }
        }
    }
    if let Some(orphan) = lifecycle::orphaned_run(journal, lock).await? {
        let uncordoned = lifecycle::give_back_cordons(conn, &orphan).await?;
        notes.push(Note::OrphanCordonsGivenBack { run: orphan, uncordoned });
    }
    Ok(Begun::Fresh(notes))
}

/// The etcd backup a planned run takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backup {
    /// No stage touches etcd or the control plane.
    NotNeeded,
    /// This one.
    Configured(BackupSpec),
    /// Needed, and none is configured (the run is refused; a dry run shows it).
    Missing,
}

/// A new run's plan: preflight's result and the schedule made from it.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What preparation found and decided.
    pub prepared: Prepared,
    /// The frozen order of the run.
    pub schedule: Schedule,
    /// Its etcd backup.
    pub backup: Backup,
}

/// Prepares (fetch → validate → decide) and schedules a new run. A downgrade the request
/// did not confirm is refused here, before anything is shown as a plan to run.
pub async fn plan(conn: &Connection, request: &Request) -> Result<Planned, UpgradeError> {
    let prepared = prepare(conn, &request.plan).await?;
    if prepared.path.forced.iter().any(|f| f.is_downgrade()) && !request.confirm_downgrade {
        let (from, to) = (prepared.current.clone(), prepared.path.to.clone());
        return Err(UpgradeError::Downgrade(Box::new(Downgrade { from, to })));
    }
    let style = match &request.action {
        Some(NodeAction::Replace { .. }) => Style::Replace,
        _ => Style::InPlace,
    };
    let mut sched = schedule(
        &prepared.plan,
        &prepared.path,
        style,
        prepared.worker_concurrency,
        request.cluster_services,
    );
    if let Some(a) = &prepared.auto {
        sched.batch_automatically(a.settings, prepared.worker_concurrency);
    }
    if let Some(s) = request.plan.surge {
        sched.surge(s);
    }
    let backup = match (touches_control_plane(&sched), &request.backup) {
        (false, _) => Backup::NotNeeded,
        (true, Some(b)) => Backup::Configured(b.clone()),
        (true, None) => Backup::Missing,
    };
    Ok(Planned { prepared, schedule: sched, backup })
}

impl Planned {
    /// The backup as a plan shows it: None when not needed, `Err(())` when missing.
    pub fn backup_shown(&self) -> Option<Result<&BackupSpec, ()>> {
        match &self.backup {
            Backup::NotNeeded => None,
            Backup::Configured(b) => Some(Ok(b)),
            Backup::Missing => Some(Err(())),
        }
    }

    /// The run's spec, or why there is none: blocked, no backup, no action; `Ok(None)` when
    /// every planned node is already at the target (nothing to run).
    pub fn spec(&self, request: &Request) -> Result<Option<RunSpec>, UpgradeError> {
        if self.prepared.plan.blocked {
            return Err(UpgradeError::Blocked);
        }
        let backup = match &self.backup {
            Backup::Configured(b) => b.clone(),
            Backup::Missing => return Err(UpgradeError::NoBackup),
            // Never used: no stage touches etcd or the control plane.
            Backup::NotNeeded => BackupSpec::OptedOut,
        };
        let Some(action) = request.action.clone() else { return Err(UpgradeError::NoAction) };
        if self.schedule.stages.is_empty() {
            return Ok(None);
        }
        let b = request.behaviour;
        // The ssh action checks it reaches the hosts the readiness probe saw.
        let action = match action {
            NodeAction::Ssh { action, .. } => {
                NodeAction::Ssh { action, identities: self.prepared.identities.clone() }
            }
            other => other,
        };
        Ok(Some(RunSpec {
            cluster_services: request.cluster_services.then(|| refit_core::addons::AddonTargets {
                owner: action.addon_owner(),
                ..refit_core::addons::targets(&request.plan.catalog, &self.schedule.target)
            }),
            schedule: self.schedule.clone(),
            action,
            drain_rules: b.drain_rules,
            drain_timeout_secs: b.drain_timeout_secs,
            node_timeout_secs: b.node_timeout_secs,
            on_undrainable: b.on_undrainable,
            force: request.plan.force,
            addresses: self.prepared.addresses.clone(),
            backup,
            eviction_concurrency: b.eviction_concurrency,
            accepted: self.prepared.plan.accepted.iter().map(refit_core::accept::Record::from).collect(),
            gates: request.gates.clone(),
            on_gate_failure: b.on_gate_failure,
            etcd_health: request.etcd_health.clone(),
            control_plane_gate_secs: request.control_plane_gate.as_secs(),
        }))
    }
}

/// Records the new run (unique id) and points the cluster lock at it; returns its id.
pub async fn record(
    journal: &dyn Journal,
    cluster: &str,
    spec: &RunSpec,
    lock: &Lock,
) -> Result<String, UpgradeError> {
    let id = lifecycle::create_run(journal, cluster, spec, &jiff::Zoned::now()).await?;
    lock.set_run(&id).await?;
    Ok(id)
}

/// Executes run `id` under `lock` until it ends, `stop` turns true (start no new node; nodes
/// under way finish) or someone takes the lock (`--break-lock` elsewhere: the same stop, with a
/// warning on the sink). Every front end executes through here, so a lost lock stops them
/// all alike.
pub async fn execute(
    ctx: Context,
    id: String,
    spec: crate::RunSpec,
    lock: &Lock,
    mut stop: watch::Receiver<bool>,
    not_after: Option<SystemTime>,
) -> Result<Outcome, crate::Error> {
    let (stop_tx, stop_rx) = watch::channel(*stop.borrow());
    let mut lost = lock.lost();
    let warn = ctx.sink.clone();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() {
                        // Nobody can ask any more: only the lock can stop the run now.
                        let _ = lost.wait_for(|l| *l).await;
                        return lock_lost(&warn, &stop_tx);
                    }
                    if *stop.borrow() {
                        let _ = stop_tx.send(true);
                        return;
                    }
                }
                r = lost.changed() => {
                    if r.is_ok() && *lost.borrow() {
                        return lock_lost(&warn, &stop_tx);
                    }
                    if r.is_err() {
                        let _ = stop.wait_for(|s| *s).await;
                        let _ = stop_tx.send(true);
                        return;
                    }
                }
            }
        }
    });
    let outcome = crate::Engine::new(ctx, id, spec, stop_rx, not_after).execute().await;
    watcher.abort();
    outcome
}

fn lock_lost(sink: &Arc<dyn crate::EventSink>, stop: &watch::Sender<bool>) {
    sink.emit(&Event::Warning {
        message: "the cluster lock was taken by another refit (--break-lock): no new node starts; nodes under way finish".into(),
    });
    let _ = stop.send(true);
}

/// How an [`unattended`] upgrade ended, when it did not fail.
#[derive(Debug, Clone)]
pub enum End {
    /// A run executed (resumed or new) to this outcome: completed, failed, interrupted or
    /// paused.
    Ran(Box<Outcome>),
    /// No run was needed: why (e.g. every node is at the target already).
    NothingToDo(String),
    /// The plan is blocked: nothing was recorded or changed.
    Blocked(Vec<Blocker>),
}

/// One cluster upgrade with nobody to confirm it, in [`begin`]'s order: the cluster lock for
/// `holder` → [`begin`] (an unfinished run of `ctx.journal` to the same target is resumed) →
/// [`plan`] → [`Planned::spec`] → [`record`] → [`execute`] → the lock released on every path.
/// `ctx` is the run's context (`crate::real::context`): its journal is where the run is
/// recorded and resumed from, its sink sees every event (notes about earlier runs come as
/// warnings). `stop` asks for a clean stop (shutdown, lost leadership).
pub async fn unattended(
    conn: &Connection,
    ctx: Context,
    holder: Holder,
    request: &Request,
    stop: watch::Receiver<bool>,
    not_after: Option<SystemTime>,
) -> Result<End, UpgradeError> {
    let (lock, takeover) = Lock::acquire(conn, holder, false).await?;
    if let Some((_, whose)) = takeover {
        ctx.sink.emit(&Event::Warning { message: format!("took the cluster lock over from {whose}") });
    }
    let end = unattended_locked(conn, ctx, &lock, request, stop, not_after).await;
    lock.release().await;
    end
}

async fn unattended_locked(
    conn: &Connection,
    ctx: Context,
    lock: &Lock,
    request: &Request,
    stop: watch::Receiver<bool>,
    not_after: Option<SystemTime>,
) -> Result<End, UpgradeError> {
    let uid = refit_kube::node::cluster_uid(conn).await.map_err(UpgradeError::Cluster)?;
    let journal = ctx.journal.clone();
    match begin(conn, Some(journal.as_ref()), &uid, request, lock).await? {
        Begun::Resume { run, spec } => {
            let outcome = execute(ctx, run.id, *spec, lock, stop, not_after).await?;
            return Ok(End::Ran(Box::new(outcome)));
        }
        Begun::Fresh(notes) => {
            for n in notes {
                let message = match n {
                    Note::Abandoned { run, uncordoned } => {
                        format!("run {run} abandoned; uncordoned: {}", uncordoned.join(", "))
                    }
                    Note::OrphanCordonsGivenBack { run, uncordoned } => format!(
                        "run {run} of the lock's previous holder is not in this journal: its cordons given back ({})",
                        uncordoned.join(", ")
                    ),
                };
                ctx.sink.emit(&Event::Warning { message });
            }
        }
    }
    let planned = match plan(conn, request).await {
        Ok(p) => p,
        Err(UpgradeError::Prepare(PrepareError::NothingToDo(m))) => return Ok(End::NothingToDo(m)),
        Err(e) => return Err(e),
    };
    let spec = match planned.spec(request) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            return Ok(End::NothingToDo(format!(
                "nothing to upgrade: every planned node is already at {}",
                planned.schedule.target
            )));
        }
        Err(UpgradeError::Blocked) => {
            return Ok(End::Blocked(Blocker::of(&planned.prepared.plan.findings)));
        }
        Err(e) => return Err(e),
    };
    let id = record(journal.as_ref(), &uid, &spec, lock).await?;
    let outcome = execute(ctx, id, spec, lock, stop, not_after).await?;
    Ok(End::Ran(Box::new(outcome)))
}
