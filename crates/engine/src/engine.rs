//! The stage loop: backup → stages in order → cluster services, with fail-fast, a clean stop
//! on request, and the max-unavailable window for workers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use refit_core::event::{Event, UnitEnd};
use refit_core::plan::PhaseKind;
use refit_core::run::{Halt, RunState, Stage, StepState, UnitWork, phase_name};
use refit_kube::Connection;
use refit_store::Store;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::Error;
use crate::spec::{BackupSpec, RunSpec};

/// Where events go (terminal view, JSON lines, ...). The engine journals them itself.
pub type Sink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Whether a unit may start, and if not, what the stage does next.
enum Start {
    /// It may.
    Yes,
    /// Not this one (the deadline passed), but look at the next: it may be under way.
    Skip(&'static str),
    /// Not this one nor any after it (a failure, a requested stop).
    Stop(&'static str),
}

/// Why a unit was not started after the deadline.
const DEADLINE: &str = "not started: the deadline (--not-after) passed";

/// The journal's unit name for cluster-wide steps (backup, cluster services).
pub const CLUSTER_UNIT: &str = "(cluster)";

/// How one unit ended in this invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "reason", rename_all = "kebab-case")]
pub enum UnitResult {
    /// Moved to the stage's version.
    Upgraded,
    /// Nothing to do (already at the version, finished earlier).
    Skipped(String),
    /// Left cordoned and not upgraded (`--on-undrainable skip`), with why.
    LeftCordoned(String),
    /// Failed; the run stopped.
    Failed(String),
    /// Not started: the run stopped before reaching it.
    NotStarted(String),
    /// Stopped cleanly in the middle (Ctrl-C); what it took was given back.
    Interrupted,
}

impl UnitResult {
    /// How it ended, without the reason.
    pub fn end(&self) -> UnitEnd {
        match self {
            UnitResult::Upgraded => UnitEnd::Upgraded,
            UnitResult::Skipped(_) => UnitEnd::Skipped,
            UnitResult::LeftCordoned(_) => UnitEnd::LeftCordoned,
            UnitResult::Failed(_) => UnitEnd::Failed,
            UnitResult::NotStarted(_) => UnitEnd::NotStarted,
            UnitResult::Interrupted => UnitEnd::Interrupted,
        }
    }

    /// Its name in events and output.
    pub fn name(&self) -> &'static str {
        self.end().as_str()
    }

    /// The reason, when there is one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            UnitResult::Skipped(r)
            | UnitResult::LeftCordoned(r)
            | UnitResult::Failed(r)
            | UnitResult::NotStarted(r) => Some(r),
            _ => None,
        }
    }
}

/// One unit's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitReport {
    /// Stage index.
    pub stage: usize,
    /// Node or host.
    pub node: String,
    /// The stage's version.
    pub to: String,
    /// How it ended.
    #[serde(flatten)]
    pub result: UnitResult,
    /// Time spent on it in this invocation.
    pub millis: u64,
}

/// How the run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Run id.
    pub run: String,
    /// Final state.
    pub state: RunState,
    /// Why, when not completed.
    pub reason: Option<String>,
    /// Every unit of the schedule.
    pub units: Vec<UnitReport>,
    /// Nodes refit left cordoned, and why (nothing else refit cordoned is left cordoned).
    pub left_cordoned: Vec<(String, String)>,
    /// Wall time per stage (and backup, cluster services).
    pub timings: Vec<(String, u64)>,
    /// The etcd backup, if one was taken in this run.
    pub backup: Option<String>,
}

/// A run being executed.
pub struct Engine {
    pub(crate) conn: Connection,
    store: Mutex<Store>,
    pub(crate) run_id: String,
    pub(crate) spec: RunSpec,
    sink: Sink,
    stop: watch::Receiver<bool>,
    /// Start no unit (or cluster-wide step) at or after this instant (`--not-after`).
    not_after: Option<SystemTime>,
    failed: AtomicBool,
    pub(crate) left_cordoned: Mutex<Vec<(String, String)>>,
}

impl Engine {
    /// An engine for run `run_id` (already recorded in `store` with `spec`). `stop` turning
    /// true asks for a clean stop: no new unit starts, drains in progress are abandoned and
    /// their nodes uncordoned, actions already running finish. After `not_after` no new unit
    /// starts either, but units under way finish (a deadline never cuts a node off midway)
    /// and the run ends Paused.
    pub fn new(
        conn: Connection,
        store: Store,
        run_id: String,
        spec: RunSpec,
        sink: Sink,
        stop: watch::Receiver<bool>,
        not_after: Option<SystemTime>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            conn,
            store: Mutex::new(store),
            run_id,
            spec,
            sink,
            stop,
            not_after,
            failed: AtomicBool::new(false),
            left_cordoned: Mutex::new(Vec::new()),
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a node action needs to be exclusive per node and run (issue 18 items 5, 17): the
    /// run id (names an ssh recipe on the node, so a resumed run attaches to it) and a private
    /// directory for the exec action's per-node locks (`locks/` next to the store, where the
    /// cluster lock lives too).
    pub(crate) fn action_scope(&self) -> refit_exec::RunScope {
        let store = self.store();
        let lock_dir = store.path().parent().map(|p| p.join("locks")).unwrap_or_else(|| "locks".into());
        refit_exec::RunScope { run: self.run_id.clone(), lock_dir }
    }

    /// Sends an event to the sink, and journals the ones worth keeping (step transitions are
    /// journaled with their state by [`Engine::record`]).
    pub(crate) fn emit(&self, e: Event) {
        let keep = !matches!(
            e,
            Event::StepStarted { .. }
                | Event::StepDone { .. }
                | Event::StepFailed { .. }
                | Event::Evicted { .. }
        );
        if keep && let Ok(body) = serde_json::to_string(&e) {
            let kind = serde_json::to_value(&e)
                .ok()
                .and_then(|v| v.get("event").and_then(|k| k.as_str().map(str::to_string)))
                .unwrap_or_default();
            if let Err(err) = self.store().record_event(&self.run_id, &kind, &body) {
                tracing::warn!("journal: cannot record an event: {err}");
            }
        }
        (self.sink)(&e);
    }

    /// Records a step transition with its event, atomically, then tells the sink.
    pub(crate) fn record(
        &self,
        unit: &str,
        key: &str,
        state: StepState,
        detail: &str,
        e: Event,
    ) -> Result<(), Error> {
        let body = serde_json::to_string(&e).unwrap_or_default();
        self.store().record_step(&self.run_id, unit, key, state.as_str(), detail, &body)?;
        (self.sink)(&e);
        Ok(())
    }

    /// This run's journal for one unit: step key → state. A state this version does not know
    /// is an error, never skipped: a step read as "not recorded" would be done twice.
    pub(crate) fn journal(&self, unit: &str) -> Result<BTreeMap<String, StepState>, Error> {
        self.store()
            .steps(&self.run_id)?
            .into_iter()
            .filter(|s| s.unit == unit)
            .map(|s| match s.state.parse() {
                Ok(st) => Ok((s.step, st)),
                Err(detail) => Err(Error::Spec { run: self.run_id.clone(), detail }),
            })
            .collect()
    }

    /// Whether a clean stop was requested.
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves when a clean stop is requested.
    pub(crate) async fn stop_requested(&self) {
        let mut rx = self.stop.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                // The sender is gone: nobody can ask any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Why no unit may start any more, if so: a failure or a requested stop.
    fn halted(&self) -> Option<&'static str> {
        if self.failed.load(Ordering::SeqCst) {
            Some("the run stopped on a failure")
        } else if self.stopping() {
            Some("stopped on request")
        } else {
            None
        }
    }

    /// Whether the deadline (`--not-after`) has passed: no unit that has not begun starts.
    fn past_deadline(&self) -> bool {
        !refit_core::run::may_start(SystemTime::now(), self.not_after)
    }

    /// Whether `unit` may start now (a unit the journal shows under way may always finish).
    fn may_start(&self, unit: &UnitWork) -> Result<Start, Error> {
        if let Some(why) = self.halted() {
            return Ok(Start::Stop(why));
        }
        if self.past_deadline() && !refit_core::run::begun(unit, &self.journal(&unit.node)?) {
            return Ok(Start::Skip(DEADLINE));
        }
        Ok(Start::Yes)
    }

    /// The halt the run ended with (for its final state).
    fn halt(&self) -> Option<Halt> {
        if self.stopping() {
            Some(Halt::Requested)
        } else if self.past_deadline() {
            Some(Halt::Deadline)
        } else {
            None
        }
    }

    pub(crate) fn fail_fast(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Executes the run to its end (or to the first failure, or a requested stop).
    pub async fn execute(self: Arc<Self>) -> Result<Outcome, Error> {
        let started = Instant::now();
        let schedule = &self.spec.schedule;
        let resumed = !self.store().steps(&self.run_id)?.is_empty();
        self.store().set_run_state(&self.run_id, RunState::Running.as_str())?;
        self.emit(Event::RunStarted {
            run: self.run_id.clone(),
            target: schedule.target.to_string(),
            stages: schedule.stages.len(),
            units: schedule.units().count(),
            resumed,
        });
        let mut units: Vec<UnitReport> = Vec::new();
        let mut timings = Vec::new();
        let mut backup = None;
        let mut reason: Option<String> = None;

        for (i, stage) in schedule.stages.iter().enumerate() {
            if let Some(why) = self.halted() {
                units.extend(stage.units.iter().map(|u| not_started(i, u, why)));
                continue;
            }
            if self.past_deadline() && !self.any_begun(stage)? {
                units.extend(stage.units.iter().map(|u| not_started(i, u, DEADLINE)));
                continue;
            }
            if stage.phase != PhaseKind::Workers && backup.is_none() {
                let t = Instant::now();
                match self.backup_once().await {
                    Ok(b) => backup = b,
                    Err(e) => {
                        reason = Some(e);
                        self.fail_fast();
                        units.extend(stage.units.iter().map(|u| not_started(i, u, "the etcd backup failed")));
                        continue;
                    }
                }
                timings.push(("etcd backup".to_string(), t.elapsed().as_millis() as u64));
            }
            let t = Instant::now();
            self.emit(Event::StageStarted {
                stage: i,
                phase: stage.phase,
                to: stage.to.to_string(),
                units: stage.units.len(),
                concurrency: stage.concurrency,
            });
            let (reports, why) = self.clone().run_stage(i, stage).await?;
            if reason.is_none() {
                reason = why;
            }
            units.extend(reports);
            timings.push((
                format!("{} → {}", phase_name(stage.phase), stage.to),
                t.elapsed().as_millis() as u64,
            ));
        }

        let failed_unit = units.iter().find_map(|u| match &u.result {
            UnitResult::Failed(e) => Some(format!("{}: {e}", u.node)),
            _ => None,
        });
        if reason.is_none() {
            reason = failed_unit;
        }
        let left_cordoned = self.left_cordoned.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if reason.is_none() && !left_cordoned.is_empty() {
            // Not every node is at the target: the run is not complete, and a rerun (after the
            // blockers are dealt with) continues with exactly those nodes.
            reason = Some(format!(
                "{} node(s) left cordoned and not upgraded: {}",
                left_cordoned.len(),
                left_cordoned.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        let mut work_left = units.iter().any(|u| matches!(u.result, UnitResult::NotStarted(_)));
        if let Some(targets) = &self.spec.cluster_services {
            if reason.is_none() && self.halted().is_none() && !self.past_deadline() {
                let t = Instant::now();
                if let Err(e) = self.cluster_services(targets).await {
                    reason = Some(e);
                }
                timings.push(("cluster services".to_string(), t.elapsed().as_millis() as u64));
            } else {
                work_left = true;
            }
        }
        let (state, reason) = refit_core::run::final_state(self.halt(), work_left, reason);
        self.store().set_run_state(&self.run_id, state.as_str())?;
        self.emit(Event::RunFinished {
            state,
            millis: started.elapsed().as_millis() as u64,
            reason: reason.clone(),
        });
        Ok(Outcome { run: self.run_id.clone(), state, reason, units, left_cordoned, timings, backup })
    }

    /// Runs one stage: units one at a time (etcd, control plane) or in a sliding window of
    /// `concurrency` (workers). A worker left cordoned keeps its slot: it is still unavailable
    /// because of refit, so the window shrinks rather than exceed max-unavailable.
    async fn run_stage(
        self: Arc<Self>,
        index: usize,
        stage: &Stage,
    ) -> Result<(Vec<UnitReport>, Option<String>), Error> {
        let slots = Arc::new(Semaphore::new(stage.concurrency.max(1)));
        let held = Arc::new(AtomicUsize::new(0));
        let mut tasks: tokio::task::JoinSet<Result<UnitReport, Error>> = tokio::task::JoinSet::new();
        let mut reports = Vec::new();
        let mut reason = None;
        let mut pending = stage.units.iter();
        for unit in pending.by_ref() {
            match self.may_start(unit)? {
                Start::Skip(why) => {
                    reports.push(not_started(index, unit, why));
                    continue;
                }
                Start::Stop(why) => {
                    reports.push(not_started(index, unit, why));
                    break;
                }
                Start::Yes => {}
            }
            // Wait for a free slot, collecting finished units meanwhile.
            let permit = loop {
                if self.halted().is_some() {
                    break None;
                }
                if held.load(Ordering::SeqCst) >= stage.concurrency.max(1) {
                    reason = Some(format!(
                        "every one of the {} max-unavailable slots is held by a node left cordoned; fix those nodes and rerun",
                        stage.concurrency
                    ));
                    self.fail_fast();
                    break None;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => break p.ok(),
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => reports.push(joined(done)?),
                }
            };
            // The slot may have come free after the deadline: look again before using it.
            let permit = match (permit, self.may_start(unit)?) {
                (Some(p), Start::Yes) => p,
                (_, Start::Skip(why)) => {
                    reports.push(not_started(index, unit, why));
                    continue;
                }
                (_, Start::Stop(why)) => {
                    reports.push(not_started(index, unit, why));
                    break;
                }
                (None, Start::Yes) => {
                    reports.push(not_started(index, unit, "the run stopped before this unit"));
                    break;
                }
            };
            let engine = self.clone();
            let unit = unit.clone();
            let stage_to = stage.to.clone();
            let held = held.clone();
            tasks.spawn(async move {
                let t = Instant::now();
                let result = engine.run_unit(&unit).await?;
                if matches!(result, UnitResult::LeftCordoned(_)) {
                    held.fetch_add(1, Ordering::SeqCst);
                    permit.forget();
                } else {
                    drop(permit);
                }
                let report = UnitReport {
                    stage: index,
                    node: unit.node.clone(),
                    to: stage_to.to_string(),
                    result,
                    millis: t.elapsed().as_millis() as u64,
                };
                engine.emit(Event::UnitFinished {
                    node: report.node.clone(),
                    to: report.to.clone(),
                    result: report.result.end(),
                    millis: report.millis,
                });
                Ok(report)
            });
        }
        let why = self.halted().unwrap_or("the run stopped before this unit");
        let rest: Vec<UnitReport> = pending.map(|u| not_started(index, u, why)).collect();
        while let Some(done) = tasks.join_next().await {
            reports.push(joined(done)?);
        }
        reports.extend(rest);
        Ok((reports, reason))
    }

    /// Whether any unit of `stage` is under way or finished according to the journal.
    fn any_begun(&self, stage: &Stage) -> Result<bool, Error> {
        for u in &stage.units {
            if refit_core::run::begun(u, &self.journal(&u.node)?) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs a cluster-wide step (backup, cluster services) journaled like a node's: started
    /// before, done or failed after, with its event. `work` returns the detail to record.
    async fn cluster_step(
        &self,
        step: &str,
        work: impl std::future::Future<Output = Result<String, String>>,
    ) -> Result<String, String> {
        let to = self.spec.schedule.target.to_string();
        let key = format!("{step}@{to}");
        let node = CLUSTER_UNIT.to_string();
        let started = Event::StepStarted { node: node.clone(), step: step.into(), to: to.clone() };
        self.record(CLUSTER_UNIT, &key, StepState::Started, "", started).map_err(|e| e.to_string())?;
        let t = Instant::now();
        match work.await {
            Ok(detail) => {
                let millis = t.elapsed().as_millis() as u64;
                let done = Event::StepDone { node, step: step.into(), to, millis, detail: detail.clone() };
                self.record(CLUSTER_UNIT, &key, StepState::Done, &detail, done).map_err(|e| e.to_string())?;
                Ok(detail)
            }
            Err(error) => {
                let failed = Event::StepFailed { node, step: step.into(), to, error: error.clone() };
                let _ = self.record(CLUSTER_UNIT, &key, StepState::Failed, &error, failed);
                Err(error)
            }
        }
    }

    /// Takes the etcd backup once per run (journaled: a resumed run does not take another).
    async fn backup_once(&self) -> Result<Option<String>, String> {
        let key = format!("backup@{}", self.spec.schedule.target);
        if self.journal(CLUSTER_UNIT).map_err(|e| e.to_string())?.get(&key) == Some(&StepState::Done) {
            return Ok(None);
        }
        let path = self
            .cluster_step("backup", async {
                let (path, bytes) = self
                    .take_backup()
                    .await
                    .map_err(|e| format!("etcd backup failed, nothing was changed: {e}"))?;
                if !path.is_empty() {
                    self.emit(Event::Backup { path: path.clone(), bytes });
                }
                Ok(path)
            })
            .await?;
        Ok(Some(path).filter(|p| !p.is_empty()))
    }

    /// The backup itself: (path, bytes), or an empty path when none is configured.
    async fn take_backup(&self) -> Result<(String, u64), String> {
        let name = format!("etcd-{}", self.run_id);
        match &self.spec.backup {
            BackupSpec::None => {
                self.emit(Event::Warning {
                    message: "no etcd backup was configured (--etcd-endpoint with --etcd-cacert/--etcd-cert/--etcd-key, or --backup-command): continuing without one".into(),
                });
                Ok((String::new(), 0))
            }
            // Killed after the snapshot was published but before "done" was journaled: the
            // file (published atomically, complete by construction) is this run's backup.
            BackupSpec::Etcd { dir, .. } if dir.join(format!("{name}.db")).exists() => {
                let path = dir.join(format!("{name}.db"));
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                Ok((path.display().to_string(), bytes))
            }
            BackupSpec::Etcd { endpoints, dir } => {
                let eps: Vec<refit_exec::backup::EtcdEndpoint> = endpoints
                    .iter()
                    .map(|e| refit_exec::backup::EtcdEndpoint {
                        url: e.url.clone(),
                        ca_file: e.ca_file.clone(),
                        cert_file: e.cert_file.clone(),
                        key_file: e.key_file.clone(),
                    })
                    .collect();
                refit_exec::backup::etcd_snapshot(&eps, dir, &name)
                    .await
                    .map(|b| (b.path.display().to_string(), b.bytes))
                    .map_err(|e| e.to_string())
            }
            BackupSpec::Command { command, dir } => {
                let dir_s = dir.display().to_string();
                let argv = refit_exec::command::substitute(command, &[("dir", &dir_s), ("name", &name)]);
                let on_line = |l: refit_exec::command::OutputLine| {
                    self.emit(Event::ActionOutput { node: CLUSTER_UNIT.into(), line: l.text().to_string() })
                };
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating backup directory {dir_s}: {e}"))?;
                refit_exec::command::run_command(&argv, &[], self.spec.node_timeout(), &on_line)
                    .await
                    .map(|_| (dir.join(&name).display().to_string(), 0))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Moves kube-proxy and CoreDNS to the target's versions and waits for their rollouts.
    async fn cluster_services(&self, targets: &refit_core::addons::AddonTargets) -> Result<(), String> {
        let on_event = |e: refit_kube::addons::AddonEvent| {
            self.emit(Event::ClusterService { addon: addon_name(&e), detail: addon_detail(&e) });
        };
        let timeout = self.spec.node_timeout().max(Duration::from_secs(60));
        self.cluster_step("cluster-services", async {
            let report = refit_kube::addons::upgrade_addons(&self.conn, targets, timeout, &on_event)
                .await
                .map_err(|e| format!("cluster services: {e}"))?;
            Ok(report
                .changed
                .iter()
                .map(|(a, from, to)| format!("{a} {from} → {to}"))
                .chain(report.skipped.iter().map(|(a, why)| format!("{a}: {why}")))
                .collect::<Vec<_>>()
                .join("; "))
        })
        .await
        .map(|_| ())
    }
}

fn addon_name(e: &refit_kube::addons::AddonEvent) -> String {
    use refit_kube::addons::AddonEvent as A;
    match e {
        A::Patching { addon, .. }
        | A::Rolling { addon, .. }
        | A::Done { addon }
        | A::Skipped { addon, .. } => addon.clone(),
    }
}

fn addon_detail(e: &refit_kube::addons::AddonEvent) -> String {
    use refit_kube::addons::AddonEvent as A;
    match e {
        A::Patching { from, to, .. } => format!("{from} → {to}"),
        A::Rolling { updated, desired, available, .. } => {
            format!("rolling out: {updated}/{desired} updated, {available} available")
        }
        A::Done { .. } => "rolled out".into(),
        A::Skipped { reason, .. } => format!("skipped: {reason}"),
    }
}

fn not_started(stage: usize, u: &UnitWork, why: &str) -> UnitReport {
    UnitReport {
        stage,
        node: u.node.clone(),
        to: u.to.to_string(),
        result: UnitResult::NotStarted(why.to_string()),
        millis: 0,
    }
}

fn joined(done: Result<Result<UnitReport, Error>, tokio::task::JoinError>) -> Result<UnitReport, Error> {
    match done {
        Ok(r) => r,
        // A panic in a unit task is a bug; report it rather than take the process down with it.
        Err(e) => {
            Err(Error::Spec { run: String::new(), detail: format!("a unit task ended abnormally: {e}") })
        }
    }
}
