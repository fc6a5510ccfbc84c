//! One stage: units one at a time (etcd, control plane) or in a sliding window of
//! max-unavailable (workers).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use refit_core::event::{Event, FailureKind};
use refit_core::run::Stage;
use tokio::sync::Semaphore;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use super::{Engine, Start, not_started};
use crate::report::{StepError, UnitReport, UnitResult, millis};

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
        let width = stage.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(width));
        let held = Arc::new(AtomicUsize::new(0));
        let mut tasks: JoinSet<UnitReport> = JoinSet::new();
        // Which node each task works on, so that a panicked task is reported by node.
        let mut nodes: HashMap<Id, (String, String)> = HashMap::new();
        let mut reports = Vec::new();
        let mut reason = None;
        let mut pending = stage.units.iter();
        for unit in pending.by_ref() {
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
            let engine = self.clone();
            let work = unit.clone();
            let stage_to = stage.to.to_string();
            let held = held.clone();
            let handle = tasks.spawn(async move {
                let t = Instant::now();
                let result = engine.run_unit(&work).await;
                if matches!(result, UnitResult::LeftCordoned(_)) {
                    held.fetch_add(1, Ordering::SeqCst);
                    permit.forget();
                } else {
                    drop(permit);
                }
                let report = UnitReport::new(index, &work.node, &stage_to, result, millis(t.elapsed()));
                engine.emit(Event::UnitFinished {
                    node: report.node.clone(),
                    to: report.to.clone(),
                    result: report.result.end(),
                    millis: report.millis,
                });
                report
            });
            nodes.insert(handle.id(), (unit.node.clone(), stage.to.to_string()));
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

    /// A finished unit task's report. A panic is a bug in refit: the unit is reported failed
    /// with kind `panic` (the node is left as the task left it) and the run stops.
    fn joined(
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
