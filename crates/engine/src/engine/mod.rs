//! The stage loop: backup → stages in order → cluster services, with fail-fast, a clean stop
//! on request, a deadline, and the max-unavailable window for workers (`stage.rs`); the
//! cluster-wide steps are in `cluster.rs`.

mod cluster;
mod gates;
mod stage;
pub(crate) mod surge;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use refit_core::event::{Event, FailureKind};
use refit_core::health::control_plane::Moment;
use refit_core::plan::PhaseKind;
use refit_core::run::{Halt, RunState, Stage, StepState, UnitWork, phase_name};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Error;
use crate::context::{Context, JournalError};
use crate::report::{Outcome, StepError, UnitReport, UnitResult, millis};
use crate::spec::RunSpec;

/// Whether a unit may start, and if not, what the stage does next.
enum Start {
    /// It may.
    Yes,
    /// Not this one (the deadline passed), but look at the next: it may be under way.
    Skip(&'static str),
    /// Not this one nor any after it (a failure, a requested stop, a broken journal).
    Stop(String),
}

/// Why a unit was not started after the deadline.
const DEADLINE: &str = "not started: the run's deadline passed";

/// The journal's unit name for cluster-wide steps (backup, cluster services).
pub const CLUSTER_UNIT: &str = "(cluster)";

/// A run being executed.
pub struct Engine {
    pub(crate) ctx: Context,
    pub(crate) run_id: String,
    pub(crate) spec: RunSpec,
    stop: watch::Receiver<bool>,
    /// Start no unit (or cluster-wide step) at or after this instant (`--not-after`).
    not_after: Option<SystemTime>,
    failed: AtomicBool,
    /// The journal could not be written: nothing new starts (why, once).
    journal_broken: Mutex<Option<String>>,
    pub(crate) left_cordoned: Mutex<Vec<(String, String)>>,
    /// A health gate failed: nothing new starts (why, once).
    gate_failed: Mutex<Option<String>>,
    /// What is left and how fast it went so far: the live ETA ([`Event::Eta`]).
    live: Mutex<refit_core::eta::Live>,
    /// The origin of the offsets the live ETA is told (when this engine was made): one clock
    /// for a stage's choices, window reports and unit ends, so none of them is stale.
    live_origin: Instant,
    /// The workloads with pods on the nodes started since the last gates passed (what a
    /// `workloads` gate waits for).
    touched: Mutex<std::collections::BTreeSet<refit_core::health::workloads::WorkloadRef>>,
}

impl Engine {
    /// Nodes that joined the cluster during the run and are not at the target (core's rule),
    /// each announced as a warning. A failed read is a warning too: the run's own work is done.
    async fn added_after_planning(&self) -> Vec<(String, String)> {
        let nodes = match self.ctx.cluster.nodes().await {
            Ok(n) => n,
            Err(e) => {
                self.emit(Event::Warning {
                    message: format!("listing nodes for ones added during the run: {e}"),
                });
                return Vec::new();
            }
        };
        let added = refit_core::run::added_after_planning(
            &self.spec.schedule,
            nodes.iter().map(|(n, s)| (n.as_str(), s.kubelet.as_ref())),
        );
        for (n, why) in &added {
            self.emit(Event::Warning { message: format!("{n}: {why}") });
        }
        added
    }

    /// An engine for run `run_id` (already recorded in the context's journal with `spec`).
    /// `stop` turning true asks for a clean stop: no new unit starts, drains in progress are
    /// abandoned and their nodes uncordoned, actions already running finish. After
    /// `not_after` no new unit starts either, but units under way finish (a deadline never
    /// cuts a node off midway) and the run ends Paused.
    pub fn new(
        ctx: Context,
        run_id: String,
        spec: RunSpec,
        stop: watch::Receiver<bool>,
        not_after: Option<SystemTime>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            ctx,
            run_id,
            stop,
            not_after,
            failed: AtomicBool::new(false),
            journal_broken: Mutex::new(None),
            left_cordoned: Mutex::new(Vec::new()),
            gate_failed: Mutex::new(None),
            live: Mutex::new(refit_core::eta::Live::of(&spec.schedule)),
            live_origin: Instant::now(),
            spec,
            touched: Mutex::default(),
        })
    }

    /// Updates the run's ETA bookkeeping without sending an ETA (the event that follows,
    /// a unit's end, sends one).
    pub(crate) fn note_live(&self, change: impl FnOnce(&mut refit_core::eta::Live)) {
        change(&mut self.live.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Now, as an offset on the live ETA's clock.
    pub(crate) fn live_now(&self) -> std::time::Duration {
        self.live_origin.elapsed()
    }

    /// Updates the live ETA with `change` and sends the new expected ends.
    pub(crate) fn eta(&self, change: impl FnOnce(&mut refit_core::eta::Live)) {
        let e = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut live);
            live.eta(&refit_core::eta::Estimate::default())
        };
        self.emit(Event::eta(&e));
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Sends an event to the sink, and journals the ones worth keeping (step transitions are
    /// journaled with their state by [`Engine::record`]; evictions are too many to keep).
    pub(crate) fn emit(&self, e: Event) {
        let keep = !matches!(
            e,
            Event::StepStarted { .. }
                | Event::StepDone { .. }
                | Event::StepFailed { .. }
                | Event::Evicted { .. }
        );
        if keep {
            self.ctx.journal.record_event(&self.run_id, &e);
        }
        if let Event::Evicted { node, .. } = &e {
            // An auto stage's ETA goes at its eviction rate.
            self.note_live(|l| l.evicted(node));
        }
        self.ctx.sink.emit(&e);
    }

    /// Records a step transition with its event, atomically, then tells the sink. A journal
    /// that cannot be written stops the run from starting anything new.
    pub(crate) async fn record(
        &self,
        unit: &str,
        key: &str,
        state: StepState,
        detail: &str,
        e: Event,
    ) -> Result<(), StepError> {
        match self.ctx.journal.record_step(&self.run_id, unit, key, state, detail, &e).await {
            Ok(()) => {
                self.ctx.sink.emit(&e);
                Ok(())
            }
            Err(err) => Err(self.journal_failed(&err)),
        }
    }

    /// Marks the journal broken (nothing new starts) and returns the unit's error.
    pub(crate) fn journal_failed(&self, err: &JournalError) -> StepError {
        let mut broken = self.journal_broken.lock().unwrap_or_else(|e| e.into_inner());
        if broken.is_none() {
            *broken = Some(err.to_string());
            drop(broken);
            self.ctx.sink.emit(&Event::Warning {
                message: format!(
                    "the run journal cannot be written ({err}): no new node starts; nodes under way finish"
                ),
            });
        }
        StepError::new(FailureKind::Journal, format!("the run journal: {err}"))
    }

    /// This run's journal for one unit: step key → state. A state this version does not know
    /// is an error, never skipped: a step read as "not recorded" would be done twice.
    pub(crate) async fn journal(&self, unit: &str) -> Result<BTreeMap<String, StepState>, StepError> {
        let steps = self.ctx.journal.steps(&self.run_id).await.map_err(|e| self.journal_failed(&e))?;
        steps
            .into_iter()
            .filter(|s| s.unit == unit)
            .map(|s| match s.state.parse() {
                Ok(st) => Ok((s.step, st)),
                Err(detail) => Err(self.journal_failed(&JournalError::msg(format!(
                    "run {} is unreadable ({detail}); it was written by another refit version",
                    self.run_id
                )))),
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

    fn broken(&self) -> Option<String> {
        self.journal_broken.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why no unit may start any more, if so: a broken journal, a failure or a requested stop.
    fn halted(&self) -> Option<String> {
        if self.broken().is_some() {
            Some("the run journal cannot be written".into())
        } else if let Some(gate) = self.gate_failure() {
            Some(gate)
        } else if self.failed.load(Ordering::SeqCst) {
            Some("the run stopped on a failure".into())
        } else if self.stopping() {
            Some("stopped on request".into())
        } else {
            None
        }
    }

    /// Whether the deadline (`--not-after`) has passed: no unit that has not begun starts.
    fn past_deadline(&self) -> bool {
        !refit_core::run::may_start(self.ctx.clock.now(), self.not_after)
    }

    /// Whether `unit` may start now (a unit the journal shows under way may always finish).
    async fn may_start(&self, unit: &UnitWork) -> Start {
        if let Some(why) = self.halted() {
            return Start::Stop(why);
        }
        if self.past_deadline() {
            match self.journal(&unit.node).await {
                Ok(j) if refit_core::run::begun(unit, &j) => {}
                Ok(_) => return Start::Skip(DEADLINE),
                Err(_) => return Start::Stop("the run journal cannot be read".into()),
            }
        }
        Start::Yes
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

    /// Executes the run to its end (or to the first failure, or a requested stop). `Err` only
    /// when the journal cannot be read or written before anything started; later journal
    /// failures end the run Failed with the reason, after the units under way finished.
    pub async fn execute(self: Arc<Self>) -> Result<Outcome, Error> {
        let started = Instant::now();
        let schedule = &self.spec.schedule;
        let resumed = !self.ctx.journal.steps(&self.run_id).await.map_err(Error::Journal)?.is_empty();
        self.ctx.journal.set_run_state(&self.run_id, RunState::Running).await.map_err(Error::Journal)?;
        self.emit(Event::RunStarted {
            run: self.run_id.clone(),
            target: schedule.target.to_string(),
            stages: schedule.stages.len(),
            units: schedule.units().count(),
            resumed,
        });
        self.eta(|_| {});
        if !resumed {
            for a in &self.spec.accepted {
                self.emit(Event::Warning { message: a.to_string() });
            }
        }
        self.warn_no_etcd_access();
        let mut units: Vec<UnitReport> = Vec::new();
        let mut timings = Vec::new();
        let mut backup = None;
        let mut reason: Option<String> = None;

        for (i, stage) in schedule.stages.iter().enumerate() {
            if let Some(why) = self.halted() {
                units.extend(stage.units.iter().map(|u| not_started(i, u, &why)));
                continue;
            }
            if self.past_deadline() && !self.any_begun(stage).await {
                units.extend(stage.units.iter().map(|u| not_started(i, u, DEADLINE)));
                continue;
            }
            // Before the first change when workers come first, and after the last etcd or
            // control-plane member (each member has its own gate before it, in the stage).
            let first_after_members = i == 0
                || i.checked_sub(1)
                    .and_then(|p| schedule.stages.get(p))
                    .is_some_and(|p| p.phase != PhaseKind::Workers);
            if stage.phase == PhaseKind::Workers
                && first_after_members
                && let Err(why) = self.control_plane_gate(Moment::Settled).await
            {
                units.extend(stage.units.iter().map(|u| not_started(i, u, &why)));
                continue;
            }
            if stage.phase != PhaseKind::Workers && backup.is_none() {
                let t = Instant::now();
                match self.backup_once().await {
                    Ok(b) => backup = b,
                    Err(e) => {
                        reason = Some(e.message);
                        self.fail_fast();
                        units.extend(stage.units.iter().map(|u| not_started(i, u, "the etcd backup failed")));
                        continue;
                    }
                }
                timings.push(("etcd backup".to_string(), millis(t.elapsed())));
            }
            let t = Instant::now();
            self.emit(Event::StageStarted {
                stage: i,
                phase: stage.phase,
                to: stage.to.to_string(),
                units: stage.units.len(),
                concurrency: stage.concurrency,
            });
            let (reports, why) = self.clone().run_stage(i, stage).await;
            if reason.is_none() {
                reason = why;
            }
            units.extend(reports);
            timings.push((format!("{} → {}", phase_name(stage.phase), stage.to), millis(t.elapsed())));
        }

        // A run that ends with its members (no workers after them) is not done until the
        // control plane is healthy after the last one.
        if schedule.stages.last().is_some_and(|s| s.phase != PhaseKind::Workers)
            && reason.is_none()
            && self.halted().is_none()
            && !self.past_deadline()
        {
            // A failure is recorded as the gate's; the run's end below reads it.
            let _ = self.control_plane_gate(Moment::Settled).await;
        }
        let failed_unit = units.iter().find_map(|u| match &u.result {
            UnitResult::Failed(e) => Some(format!("{}: {e}", u.node)),
            _ => None,
        });
        if let Some(broken) = self.broken() {
            // The first thing to fix: until the journal can be written, no run can go on.
            reason = Some(format!(
                "the run journal cannot be written ({broken}): no new node was started and the nodes under way finished; make the store writable and rerun the same command to continue"
            ));
        }
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
                    reason = Some(e.message);
                }
                self.eta(|l| l.cluster_services_done());
                timings.push(("cluster services".to_string(), millis(t.elapsed())));
            } else {
                work_left = true;
            }
        }
        let gate = self.gate_failure();
        let pause_on_gate = self.spec.on_gate_failure == refit_core::health::OnGateFailure::Pause;
        if reason.is_none() && !pause_on_gate {
            reason = gate.clone();
        }
        let not_planned = self.added_after_planning().await;
        let (state, mut reason) = refit_core::run::final_state(self.halt(), work_left, reason);
        // A gate that failed with `--on-gate-failure pause` ends the run Paused: a rerun of
        // the same command checks the gate again first, then continues.
        let (state, mut reason) = match gate {
            Some(g) if pause_on_gate && state == RunState::Completed => (
                RunState::Paused,
                Some(format!(
                    "{g}; no node was started after it: fix what the gate checks and rerun the same command to continue"
                )),
            ),
            _ => (state, reason.take()),
        };
        if let Err(e) = self.ctx.journal.set_run_state(&self.run_id, state).await {
            // The journal still says running: a rerun resumes the run, which is right.
            tracing::warn!("journal: cannot record the run's end: {e}");
            if reason.is_none() {
                reason = Some(format!("the run's end could not be recorded ({e}); rerun the same command"));
            }
        }
        self.emit(Event::RunFinished { state, millis: millis(started.elapsed()), reason: reason.clone() });
        self.ctx.journal.flush().await;
        let remedies: std::collections::BTreeSet<_> =
            units.iter().flat_map(|u| u.result.remedies()).cloned().collect();
        Ok(Outcome {
            run: self.run_id.clone(),
            state,
            reason,
            remedies: remedies.into_iter().collect(),
            units,
            left_cordoned,
            not_planned,
            timings,
            backup,
            backup_opted_out: self.spec.backup == crate::spec::BackupSpec::OptedOut
                && crate::spec::touches_control_plane(schedule),
        })
    }

    /// Whether any unit of `stage` is under way or finished according to the journal (an
    /// unreadable journal counts as begun: the unit's own read reports it).
    async fn any_begun(&self, stage: &Stage) -> bool {
        for u in &stage.units {
            match self.journal(&u.node).await {
                Ok(j) if !refit_core::run::begun(u, &j) => {}
                _ => return true,
            }
        }
        false
    }
}

fn not_started(stage: usize, u: &UnitWork, why: &str) -> UnitReport {
    UnitReport::new(stage, &u.node, &u.to.to_string(), UnitResult::NotStarted(why.to_string()), 0)
}
