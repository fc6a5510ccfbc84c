//! One stage: units one at a time (etcd, control plane) or in a sliding window of
//! max-unavailable (workers).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use refit_core::batch;
use refit_core::checks::CheckOptions;
use refit_core::event::{Event, FailureKind};
use refit_core::plan::{MaxUnavailable, PhaseKind};
use refit_core::run::{Stage, UnitWork};
use tokio::sync::Semaphore;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use super::{Engine, Start, not_started};

/// What [`Engine::choose`] found.
enum Chosen {
    /// Start these now.
    Nodes(Vec<String>),
    /// Nothing can join now, for this reason.
    Held(batch::Hold),
    /// The snapshot could not be read.
    Unreadable(String),
}
use crate::report::{StepError, UnitReport, UnitResult, millis};

/// How often a held `auto` stage re-reads the cluster.
const AUTO_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl Engine {
    /// Runs one stage: units one at a time (etcd, control plane) or in a sliding window of
    /// `concurrency` (workers). A worker left cordoned keeps its slot: it is still unavailable
    /// because of refit, so the window shrinks rather than exceed max-unavailable. Nothing
    /// here ends the stage early for units under way: they always finish (a unit task that
    /// panicked is reported as such).
    pub(super) async fn run_stage(
        self: Arc<Self>,
        index: usize,
        stage: &Stage,
    ) -> (Vec<UnitReport>, Option<String>) {
        if let Some(limits) = stage.surge {
            return self.run_surge_stage(index, stage, limits).await;
        }
        if let Some(auto) = stage.auto {
            return self.run_auto_stage(index, stage, auto).await;
        }
        let width = stage.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(width));
        let held = Arc::new(AtomicUsize::new(0));
        let mut tasks: JoinSet<UnitReport> = JoinSet::new();
        // Which node each task works on, so that a panicked task is reported by node.
        let mut nodes: HashMap<Id, (String, String)> = HashMap::new();
        let mut reports = Vec::new();
        let mut reason = None;
        let mut pending = stage.units.iter();
        // With health gates, workers go in batches of `width`: a batch finishes, the gates
        // pass, then the next batch starts (the batch's effect is what the gates observe).
        let gated = stage.phase == PhaseKind::Workers && !self.spec.gates.is_empty();
        let mut started = 0usize;
        for unit in pending.by_ref() {
            if gated && started > 0 && started.is_multiple_of(width) {
                while let Some(done) = tasks.join_next_with_id().await {
                    reports.push(self.joined(index, done, &mut nodes));
                }
                if self.halted().is_none()
                    && let Err(why) = self.health_gates().await
                {
                    reports.push(not_started(index, unit, &why));
                    break;
                }
            }
            match self.may_start(unit).await {
                Start::Skip(why) => {
                    reports.push(not_started(index, unit, why));
                    continue;
                }
                Start::Stop(why) => {
                    reports.push(not_started(index, unit, &why));
                    break;
                }
                Start::Yes => {}
            }
            // Wait for a free slot, collecting finished units meanwhile.
            let permit = loop {
                if self.halted().is_some() {
                    break None;
                }
                if held.load(Ordering::SeqCst) >= width {
                    reason = Some(format!(
                        "every one of the {} max-unavailable slots is held by a node left cordoned; fix those nodes and rerun",
                        stage.concurrency
                    ));
                    self.fail_fast();
                    break None;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => break p.ok(),
                    Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                        reports.push(self.joined(index, done, &mut nodes));
                    }
                }
            };
            // The slot may have come free after the deadline: look again before using it.
            let permit = match (permit, self.may_start(unit).await) {
                (Some(p), Start::Yes) => p,
                (_, Start::Skip(why)) => {
                    reports.push(not_started(index, unit, why));
                    continue;
                }
                (_, Start::Stop(why)) => {
                    reports.push(not_started(index, unit, &why));
                    break;
                }
                (None, Start::Yes) => {
                    reports.push(not_started(index, unit, "the run stopped before this unit"));
                    break;
                }
            };
            if stage.phase != PhaseKind::Workers
                && let Err(why) = self.member_gate(unit).await
            {
                drop(permit);
                reports.push(not_started(index, unit, &why));
                break;
            }
            let held = held.clone();
            self.spawn_unit(&mut tasks, &mut nodes, index, stage, unit, None, move |result| {
                if matches!(result, UnitResult::LeftCordoned(_)) {
                    held.fetch_add(1, Ordering::SeqCst);
                    permit.forget();
                } else {
                    drop(permit);
                }
            });
            started = started.saturating_add(1);
        }
        let why = self.halted().unwrap_or_else(|| "the run stopped before this unit".into());
        let rest: Vec<UnitReport> = pending.map(|u| not_started(index, u, &why)).collect();
        while let Some(done) = tasks.join_next_with_id().await {
            reports.push(self.joined(index, done, &mut nodes));
        }
        reports.extend(rest);
        // In the schedule's order, whichever finished first.
        reports.sort_by_key(|r| stage.units.iter().position(|u| u.node == r.node));
        (reports, reason)
    }

    /// Starts `unit` as a task; `on_result` runs when the unit ends, before its report.
    /// `link`: the unit's surge stage, told of its phases (a surge stage's units only).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_unit(
        self: &Arc<Self>,
        tasks: &mut JoinSet<UnitReport>,
        nodes: &mut HashMap<Id, (String, String)>,
        index: usize,
        stage: &Stage,
        unit: &UnitWork,
        link: Option<super::surge::SurgeLink>,
        on_result: impl FnOnce(&UnitResult) + Send + 'static,
    ) {
        let engine = self.clone();
        let work = unit.clone();
        let stage_to = stage.to.to_string();
        let handle = tasks.spawn(async move {
            let t = Instant::now();
            engine.note_workloads(&work).await;
            let result = engine.run_unit(&work, link.as_ref()).await;
            on_result(&result);
            let report = UnitReport::new(index, &work.node, &stage_to, result, millis(t.elapsed()));
            engine.emit(Event::UnitFinished {
                node: report.node.clone(),
                to: report.to.clone(),
                result: report.result.end(),
                millis: report.millis,
            });
            let upgraded = matches!(report.result, UnitResult::Upgraded)
                .then(|| std::time::Duration::from_millis(report.millis));
            let at = engine.live_now();
            engine.eta(|l| l.unit_ended(index, &report.node, upgraded, at));
            report
        });
        nodes.insert(handle.id(), (unit.node.clone(), stage.to.to_string()));
    }

    /// A worker stage under `--max-unavailable auto`, as a sliding window: whenever a unit
    /// ends (a slot frees), a fresh snapshot of the cluster and core's [`batch::next`] choose
    /// which of the units not yet started join the ones still in flight; core counts those as
    /// already disrupted (their pods against the budgets and the room, their zone, the cap),
    /// so every rule holds for all the nodes under way at every instant. A choice held by a
    /// budget or by room is asked again every [`AUTO_RETRY`] as well (replacement pods become
    /// Ready without a unit ending). When nothing can start and nothing is in flight, the
    /// stage says which budget or pod holds it (`BatchHeld`) and waits, re-reading the cluster
    /// every [`AUTO_RETRY`], up to the drain timeout, then stops with the hold as its reason.
    /// With health gates the window does not slide: a batch runs to its end, the gates pass,
    /// then the next is chosen (the batch's effect is what the gates observe). A node left
    /// cordoned counts against the cap for the rest of the stage. Units under way always
    /// finish, whatever stops the stage.
    async fn run_auto_stage(
        self: Arc<Self>,
        index: usize,
        stage: &Stage,
        auto: batch::Auto,
    ) -> (Vec<UnitReport>, Option<String>) {
        let mut tasks: JoinSet<UnitReport> = JoinSet::new();
        let mut nodes_of: HashMap<Id, (String, String)> = HashMap::new();
        let mut reports = Vec::new();
        let mut reason = None;
        let mut left: Vec<&UnitWork> = stage.units.iter().collect();
        let checks = CheckOptions { drain: self.spec.drain_rules, ..CheckOptions::default() };
        let held = Arc::new(AtomicUsize::new(0));
        let mut waiting_since: Option<Instant> = None;
        let mut gate_stop: Option<String> = None;
        let workers = stage.units.len();
        let gated = !self.spec.gates.is_empty();
        // Units an earlier attempt began are already unavailable (cordoned, half drained):
        // they start first, and the chooser counts them as in flight.
        let mut begun: Vec<String> = Vec::new();
        for unit in &left {
            if let Ok(j) = self.journal(&unit.node).await
                && refit_core::run::begun(unit, &j)
            {
                begun.push(unit.node.clone());
            }
        }
        let mut resumed = (!begun.is_empty()).then_some(begun);
        // Whether to choose now (at the start, after a unit ended, after a retry), whether
        // the stage starts nothing more, and whether a hold is worth a timed retry.
        let (mut choose_now, mut stopping, mut retry) = (true, false, false);
        loop {
            if self.halted().is_some() {
                stopping = true;
            }
            // Gated, a batch runs to its end (and the gates) before the next is chosen.
            let may_choose = |stopping: bool, left: &[&UnitWork], tasks: &JoinSet<UnitReport>| {
                !stopping && !left.is_empty() && (!gated || tasks.is_empty())
            };
            if choose_now && may_choose(stopping, &left, &tasks) {
                choose_now = false;
                retry = false;
                // Units the deadline or a stop rules out are reported, not chosen.
                let mut keep = Vec::new();
                for unit in left {
                    if stopping {
                        keep.push(unit);
                        continue;
                    }
                    match self.may_start(unit).await {
                        Start::Yes => keep.push(unit),
                        Start::Skip(why) => reports.push(not_started(index, unit, why)),
                        Start::Stop(_) => {
                            stopping = true;
                            keep.push(unit);
                        }
                    }
                }
                left = keep;
                let chosen = if stopping || left.is_empty() {
                    Vec::new()
                } else if let Some(nodes) = resumed.take() {
                    self.emit(Event::BatchChosen {
                        stage: index,
                        nodes: nodes.clone(),
                        in_flight: 0,
                        zone: None,
                        limit: "under way when the run stopped: finished first".into(),
                        pods: Vec::new(),
                        pods_left: None,
                        pacing: Vec::new(),
                    });
                    // Others may join them at once.
                    choose_now = true;
                    nodes
                } else {
                    let in_flight: Vec<String> = nodes_of.values().map(|(n, _)| n.clone()).collect();
                    let cap = auto.cap.batch_size(workers).saturating_sub(held.load(Ordering::SeqCst));
                    if cap == 0 {
                        reason = Some(format!(
                            "every one of the {} max-unavailable slots is held by a node left cordoned; fix those nodes and rerun",
                            stage.concurrency
                        ));
                        self.fail_fast();
                        stopping = true;
                        Vec::new()
                    } else if in_flight.len() >= cap {
                        // The window is full: a unit ending frees a slot.
                        Vec::new()
                    } else {
                        match self
                            .choose(index, stage, &in_flight, &left, cap, auto, &checks, self.live_now())
                            .await
                        {
                            Chosen::Nodes(nodes) => nodes,
                            other => {
                                // Held, or the cluster could not be read (one failed read
                                // among hundreds is no reason to stop a run).
                                let (why, timed) = match &other {
                                    Chosen::Held(h) => (
                                        h.to_string(),
                                        matches!(h, batch::Hold::Budget { .. } | batch::Hold::NoRoom { .. }),
                                    ),
                                    Chosen::Unreadable(why) => (why.clone(), true),
                                    Chosen::Nodes(_) => (String::new(), false),
                                };
                                if in_flight.is_empty() {
                                    // Nothing can start and nothing is under way: name the
                                    // hold, wait for it up to the drain timeout.
                                    let first = waiting_since.is_none();
                                    let since = *waiting_since.get_or_insert_with(Instant::now);
                                    if first {
                                        self.emit(Event::BatchHeld { stage: index, reason: why.clone() });
                                    }
                                    if since.elapsed() >= self.spec.drain_timeout() {
                                        reason = Some(format!(
                                            "no worker batch could start within the drain timeout: {why}"
                                        ));
                                        self.fail_fast();
                                        stopping = true;
                                    }
                                    retry = true;
                                } else {
                                    // A unit ending frees a slot or a zone; a budget, room or
                                    // the API may also come back while they run.
                                    retry = timed;
                                }
                                Vec::new()
                            }
                        }
                    }
                };
                if !chosen.is_empty() {
                    waiting_since = None;
                    for unit in left.iter().filter(|u| chosen.contains(&u.node)) {
                        let held = held.clone();
                        self.spawn_unit(&mut tasks, &mut nodes_of, index, stage, unit, None, move |result| {
                            if matches!(result, UnitResult::LeftCordoned(_)) {
                                held.fetch_add(1, Ordering::SeqCst);
                            }
                        });
                    }
                    left.retain(|u| !chosen.contains(&u.node));
                    let now = self.live_now();
                    self.eta(|l| l.in_flight(index, tasks.len(), now));
                }
            }
            if tasks.is_empty() {
                if stopping || left.is_empty() {
                    break;
                }
                // Held with nothing in flight: look again after a while (or when stopped).
                tokio::select! {
                    _ = tokio::time::sleep(AUTO_RETRY) => {}
                    _ = self.stop_requested() => {}
                }
                choose_now = true;
                continue;
            }
            if choose_now && may_choose(stopping, &left, &tasks) {
                continue;
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => {
                    reports.push(self.joined(index, done, &mut nodes_of));
                    // Every unit that ended meanwhile, before choosing once for all of them.
                    while let Some(done) = tasks.try_join_next_with_id() {
                        reports.push(self.joined(index, done, &mut nodes_of));
                    }
                    let now = self.live_now();
                    self.note_live(|l| l.in_flight(index, tasks.len(), now));
                    choose_now = true;
                    // Health gates after each batch, before the next is chosen.
                    if gated
                        && tasks.is_empty()
                        && !left.is_empty()
                        && !stopping
                        && self.halted().is_none()
                        && let Err(why) = self.health_gates().await
                    {
                        gate_stop = Some(why);
                        stopping = true;
                    }
                }
                _ = tokio::time::sleep(AUTO_RETRY), if retry => {
                    choose_now = true;
                }
            }
        }
        let why =
            gate_stop.or_else(|| self.halted()).unwrap_or_else(|| "the run stopped before this unit".into());
        reports.extend(left.into_iter().map(|u| not_started(index, u, &why)));
        reports.sort_by_key(|r| stage.units.iter().position(|u| u.node == r.node));
        (reports, reason)
    }

    /// Asks core which of `left` join the units `in_flight`, from a fresh snapshot, within
    /// `cap` nodes in all; emits the choice (`at`: the stage's clock, for the ETA).
    #[allow(clippy::too_many_arguments)]
    async fn choose(
        &self,
        index: usize,
        stage: &Stage,
        in_flight: &[String],
        left: &[&UnitWork],
        cap: usize,
        auto: batch::Auto,
        checks: &CheckOptions,
        at: std::time::Duration,
    ) -> Chosen {
        let snapshot = match self.ctx.cluster.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                return Chosen::Unreadable(format!("cannot read the cluster to choose the next batch: {e}"));
            }
        };
        // The ETA counts each zone's nodes left (from the first snapshot the stage reads).
        self.note_live(|l| l.zones(index, refit_core::eta::zones_of(&stage.units, &snapshot)));
        let candidates: Vec<String> = left.iter().map(|u| u.node.clone()).collect();
        let this = batch::Auto { cap: MaxUnavailable::Count(u32::try_from(cap).unwrap_or(u32::MAX)), ..auto };
        // The pods the chosen nodes' drains move and those on the nodes still to start: the
        // ETA counts the work left in pods (evicted pods pile onto the nodes not upgraded yet).
        // Per zone, the budget whose rounds set the pace (the ETA's other bound).
        let load = |nodes: &[String]| {
            let c = refit_core::eta::choice_load(&snapshot, nodes, &candidates, auto.across_zones);
            let pacing = c.pacing.clone();
            self.note_live(|l| {
                l.load(index, nodes.iter().cloned().zip(c.pods.iter().copied()), c.left, pacing, at)
            });
            (c.pods, Some(c.left), c.pacing)
        };
        match batch::next(&snapshot, in_flight, &candidates, stage.units.len(), this, checks) {
            batch::Next::Batch(choice) => {
                let (pods, pods_left, pacing) = load(&choice.nodes);
                self.emit(Event::BatchChosen {
                    stage: index,
                    nodes: choice.nodes.clone(),
                    in_flight: in_flight.len(),
                    zone: choice.zone.clone(),
                    limit: choice.limit.to_string(),
                    pods,
                    pods_left,
                    pacing,
                });
                Chosen::Nodes(choice.nodes)
            }
            batch::Next::Alone { node, hold } => {
                let (pods, pods_left, pacing) = load(std::slice::from_ref(&node));
                self.emit(Event::BatchChosen {
                    stage: index,
                    nodes: vec![node.clone()],
                    in_flight: in_flight.len(),
                    zone: None,
                    limit: format!("{hold}: it drains alone, waiting on the budget"),
                    pods,
                    pods_left,
                    pacing,
                });
                Chosen::Nodes(vec![node])
            }
            batch::Next::Wait(hold) => Chosen::Held(hold),
        }
    }

    /// A finished unit task's report. A panic is a bug in refit: the unit is reported failed
    /// with kind `panic` (the node is left as the task left it) and the run stops.
    pub(super) fn joined(
        &self,
        index: usize,
        done: Result<(Id, UnitReport), JoinError>,
        nodes: &mut HashMap<Id, (String, String)>,
    ) -> UnitReport {
        match done {
            Ok((id, report)) => {
                nodes.remove(&id);
                report
            }
            Err(e) => {
                let (node, to) = nodes.remove(&e.id()).unwrap_or_default();
                self.fail_fast();
                let what = if e.is_panic() {
                    let payload = e.into_panic();
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    format!(
                        "refit's task for {node} panicked ({text}); this is a bug in refit: please report it. The node is as the task left it; rerun the same command to continue"
                    )
                } else {
                    format!("refit's task for {node} was cancelled")
                };
                let error = StepError::new(FailureKind::Panic, what);
                self.emit(Event::UnitFinished {
                    node: node.clone(),
                    to: to.clone(),
                    result: refit_core::event::UnitEnd::Failed,
                    millis: 0,
                });
                UnitReport::new(index, &node, &to, UnitResult::Failed(error), 0)
            }
        }
    }
}
