//! A replace stage under `--max-surge`: each unit's two halves — add the replacement (create,
//! wait Ready), retire the old node (cordon, drain, remove) — started by core's
//! [`surge::next`] from the phase of every unit, so that at most `surge` replacements exist
//! beyond the original worker count and at most `unavailable` old nodes are out of service
//! without a Ready replacement, at every instant.
//!
//! A unit runs as one task through its journaled steps (so kill -9 anywhere resumes like any
//! unit: replacement names are deterministic and a replacement this run began is adopted,
//! never created twice); the task tells the stage when its replacement is Ready (it starts
//! retiring) and, when it drained first, waits for the stage to give it a surge slot before
//! creating its replacement. On a restart, each unit's phase is read back from the journal.

use std::collections::HashMap;
use std::sync::Arc;

use refit_core::event::Event;
use refit_core::plan::Step;
use refit_core::run::{Stage, StepState, UnitWork, step_key};
use refit_core::surge::{self, Limits, Phase};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinSet};

use super::{Engine, Start, not_started};
use crate::report::{UnitReport, UnitResult};

/// What a unit's task tells its surge stage.
enum Msg {
    /// Unit `.0` moved to this phase.
    Phase(usize, Phase),
    /// Unit `.0` drained first and asks for a surge slot: true, create the replacement;
    /// false, the run stops (give the cordon back).
    WantSlot(usize, oneshot::Sender<bool>),
}

/// A unit task's line to its surge stage.
pub(crate) struct SurgeLink {
    unit: usize,
    tx: mpsc::UnboundedSender<Msg>,
}

impl SurgeLink {
    /// Called before each step the unit runs; false: the run stops before this step (only
    /// while waiting for a slot, when the node is drained but unchanged).
    pub(crate) async fn before(&self, step: Step, steps: &[Step]) -> bool {
        if surge::retires_at(step, steps) {
            let _ = self.tx.send(Msg::Phase(self.unit, Phase::Retiring));
        }
        if surge::waits_for_slot(step, steps) {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Msg::WantSlot(self.unit, tx)).is_err() {
                return false;
            }
            return rx.await.unwrap_or(false);
        }
        true
    }
}

impl Engine {
    /// Runs a surge stage (see the module's comment). Units under way always finish; a unit
    /// that fails stops the run (no new unit starts, a drained unit waiting for a slot gives
    /// its cordon back); a unit left cordoned keeps its replacement counted, and when such
    /// units hold every slot the stage stops and says so.
    pub(super) async fn run_surge_stage(
        self: Arc<Self>,
        index: usize,
        stage: &Stage,
        limits: Limits,
    ) -> (Vec<UnitReport>, Option<String>) {
        let units = &stage.units;
        let mut phases = Vec::with_capacity(units.len());
        for u in units {
            phases.push(match self.journal(&u.node).await {
                Ok(j) => {
                    let state = |s: Step| j.get(&step_key(s, &u.to)).copied();
                    let done = |s: Step| matches!(state(s), Some(StepState::Done | StepState::Skipped));
                    surge::resumed(
                        state(Step::Cordon).is_some(),
                        done(Step::Drain),
                        state(Step::Upgrade).is_some(),
                        done(Step::Validate),
                    )
                }
                // The unit itself fails on the journal when it starts.
                Err(_) => Phase::Waiting,
            });
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let mut tasks: JoinSet<UnitReport> = JoinSet::new();
        let mut nodes_of: HashMap<Id, (String, String)> = HashMap::new();
        let mut reports = Vec::new();
        let mut reason = None;
        let mut waiting: HashMap<usize, oneshot::Sender<bool>> = HashMap::new();
        let mut stopping = false;
        // A unit in its drain-first order, or the stage's own (replacement first).
        let work = |u: &UnitWork, drain_first: bool| -> UnitWork {
            if drain_first { UnitWork { steps: surge::DRAIN_FIRST.to_vec(), ..u.clone() } } else { u.clone() }
        };
        let link = |i: usize| SurgeLink { unit: i, tx: tx.clone() };
        // Units an earlier attempt began continue first, in the order they had taken.
        let resumed: Vec<(usize, &UnitWork, Phase)> = units
            .iter()
            .zip(phases.iter().copied())
            .enumerate()
            .filter(|(_, (_, p))| *p != Phase::Waiting)
            .map(|(i, (u, p))| (i, u, p))
            .collect();
        if !resumed.is_empty() {
            self.emit(Event::BatchChosen {
                stage: index,
                nodes: resumed.iter().map(|(_, u, _)| u.node.clone()).collect(),
                in_flight: 0,
                zone: None,
                limit: format!("surge: under way when the run stopped, finished first ({limits})"),
                pods: Vec::new(),
                pods_left: None,
                pacing: Vec::new(),
            });
            for &(i, u, p) in &resumed {
                self.spawn_unit(
                    &mut tasks,
                    &mut nodes_of,
                    index,
                    stage,
                    &work(u, p.short()),
                    Some(link(i)),
                    |_| {},
                );
            }
        }
        loop {
            if self.halted().is_some() {
                stopping = true;
            }
            if stopping {
                for (_, w) in waiting.drain() {
                    let _ = w.send(false);
                }
            } else {
                let mut started = Vec::new();
                for start in surge::next(limits, &phases) {
                    let (surge::Start::Add(i) | surge::Start::DrainFirst(i)) = start;
                    let (Some(unit), Some(slot)) = (units.get(i), phases.get_mut(i)) else { continue };
                    match *slot {
                        Phase::Drained => {
                            // Its task asks for the slot once its drain is recorded done.
                            if let Some(w) = waiting.remove(&i) {
                                *slot = surge::started(*slot, start);
                                let _ = w.send(true);
                                started.push(unit.node.clone());
                            }
                        }
                        Phase::Waiting => {
                            match self.may_start(unit).await {
                                Start::Yes => {}
                                Start::Skip(why) => {
                                    reports.push(not_started(index, unit, why));
                                    *slot = Phase::Done;
                                    continue;
                                }
                                Start::Stop(_) => {
                                    stopping = true;
                                    break;
                                }
                            }
                            *slot = surge::started(*slot, start);
                            let drain_first = matches!(start, surge::Start::DrainFirst(_));
                            self.spawn_unit(
                                &mut tasks,
                                &mut nodes_of,
                                index,
                                stage,
                                &work(unit, drain_first),
                                Some(link(i)),
                                |_| {},
                            );
                            started.push(unit.node.clone());
                        }
                        _ => {}
                    }
                }
                if !started.is_empty() {
                    let (extra, short) = surge::counts(&phases);
                    self.emit(Event::BatchChosen {
                        stage: index,
                        nodes: started.clone(),
                        in_flight: tasks.len().saturating_sub(started.len()),
                        zone: None,
                        limit: format!(
                            "surge: {extra} replacement(s) ahead, {short} old node(s) out of service without one ({limits})"
                        ),
                        pods: Vec::new(),
                        pods_left: None,
                        pacing: Vec::new(),
                    });
                }
            }
            if tasks.is_empty() {
                let left = phases.iter().any(|p| matches!(p, Phase::Waiting | Phase::Drained));
                if stopping || !left {
                    break;
                }
                // Nothing moves and nothing may start: the slots are held by units left
                // cordoned (their replacements exist, their old nodes stay).
                reason = Some(format!(
                    "every surge slot ({limits}) is held by a replacement whose old node was left cordoned; fix those nodes and rerun"
                ));
                self.fail_fast();
                stopping = true;
                continue;
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => {
                    let report = self.joined(index, done, &mut nodes_of);
                    if let Some(slot) = units.iter().position(|u| u.node == report.node).and_then(|i| phases.get_mut(i))
                        && matches!(report.result, UnitResult::Upgraded | UnitResult::Skipped(_))
                    {
                        *slot = Phase::Done;
                    }
                    reports.push(report);
                }
                Some(msg) = rx.recv() => match msg {
                    // A message the unit sent before it ended may arrive after its end.
                    Msg::Phase(i, p) => {
                        if let Some(slot) = phases.get_mut(i)
                            && *slot != Phase::Done
                        {
                            *slot = p;
                        }
                    }
                    // A resumed unit that already holds its slot goes on at once.
                    Msg::WantSlot(i, w) if phases.get(i) == Some(&Phase::DrainedAdding) => {
                        let _ = w.send(true);
                    }
                    Msg::WantSlot(i, w) => {
                        if let Some(slot) = phases.get_mut(i) {
                            *slot = Phase::Drained;
                        }
                        waiting.insert(i, w);
                    }
                },
                _ = self.stop_requested(), if !stopping => {
                    stopping = true;
                }
            }
        }
        let why = self.halted().unwrap_or_else(|| "the run stopped before this unit".into());
        let reported: std::collections::BTreeSet<String> = reports.iter().map(|r| r.node.clone()).collect();
        reports.extend(
            units.iter().filter(|u| !reported.contains(&u.node)).map(|u| not_started(index, u, &why)),
        );
        reports.sort_by_key(|r| units.iter().position(|u| u.node == r.node));
        (reports, reason)
    }
}
