//! One unit through its steps. Each step is recorded as started before it acts and as done
//! (or failed) after, and each is idempotent, so a unit killed anywhere continues at the
//! first step the journal does not show done (`refit_core::run::resume_point`). The steps
//! themselves are in `steps.rs`.

mod steps;

use refit_core::event::{Event, FailureKind};
use refit_core::plan::Step;
use refit_core::run::{
    Observed, Resume, StepState, UnitWork, gone_reason, resume_point, skip_when_gone, step_key, step_name,
};
use refit_kube::cordon::UncordonOutcome;
use tokio::time::Instant;

use crate::engine::Engine;
use crate::report::{StepError, UnitResult, millis};

/// How a step ended.
pub(crate) enum StepEnd {
    /// Done, with a detail for the journal.
    Done(String),
    /// The unit stops here and stays cordoned on purpose (`--on-undrainable skip`).
    LeaveCordoned(String),
    /// The unit failed and the run must stop. `release`: the node was not changed, so refit
    /// gives back its cordon.
    Fail { error: StepError, release: bool },
    /// A clean stop was requested while the step could still be abandoned.
    Interrupted,
}

impl StepEnd {
    fn fail(kind: FailureKind, message: impl Into<String>, release: bool) -> StepEnd {
        StepEnd::Fail { error: StepError::new(kind, message), release }
    }
}

impl Engine {
    /// Moves one unit through the steps it still needs. A journal that cannot be written
    /// ends the unit where it is (nothing acts unrecorded); so does a node that cannot be read
    /// (nothing is decided blind), which also stops the run like any failed step.
    ///
    /// `link`: a surge stage's unit tells its stage of its phases through it, and waits there
    /// for a surge slot when it drained first.
    pub(crate) async fn run_unit(
        &self,
        u: &UnitWork,
        link: Option<&crate::engine::surge::SurgeLink>,
    ) -> UnitResult {
        match self.unit_steps(u, link).await {
            Ok(r) => r,
            Err(e) => {
                if e.kind != FailureKind::Journal {
                    self.fail_fast();
                }
                if !u.external && self.observe(&u.node).await.is_ok_and(|o| o.cordoned_by_this_run) {
                    let why = match e.kind {
                        FailureKind::Journal => "the run journal could not be written".to_string(),
                        _ => e.message.clone(),
                    };
                    self.leave_cordoned(
                        &u.node,
                        &format!("{why}: left cordoned, in whatever step it reached; rerun the same command to continue"),
                    );
                }
                UnitResult::Failed(e)
            }
        }
    }

    async fn unit_steps(
        &self,
        u: &UnitWork,
        link: Option<&crate::engine::surge::SurgeLink>,
    ) -> Result<UnitResult, StepError> {
        let observed = if u.external { Observed::default() } else { self.observe(&u.node).await? };
        let journal = self.journal(&u.node).await?;
        let at = match resume_point(u, &journal, &observed, self.spec.force) {
            Resume::Done(reason) => {
                self.emit(Event::UnitSkipped {
                    node: u.node.clone(),
                    to: u.to.to_string(),
                    reason: reason.clone(),
                });
                return Ok(UnitResult::Skipped(reason));
            }
            Resume::At(i) => i,
            Resume::Gone(reason) => return Ok(self.gone(u, reason)),
        };
        for &step in u.steps.get(at..).unwrap_or_default() {
            // Before a node is changed, work can be abandoned and its cordon given back.
            let abandonable = matches!(step, Step::Cordon | Step::Drain) || u.steps.first() == Some(&step);
            if abandonable && self.stopping() {
                self.give_back(u).await;
                return Ok(UnitResult::Interrupted);
            }
            // A surge stage's unit that drained first waits here for a slot; refused, it
            // gives back the cordon of its drained, unchanged node.
            if let Some(link) = link
                && !link.before(step, &u.steps).await
            {
                self.give_back(u).await;
                return Ok(UnitResult::Interrupted);
            }
            let key = step_key(step, &u.to);
            let name = step_name(step).to_string();
            let to = u.to.to_string();
            let started = Event::StepStarted { node: u.node.clone(), step: name.clone(), to: to.clone() };
            self.record(&u.node, &key, StepState::Started, "", started).await?;
            let t = Instant::now();
            let end = match step {
                Step::Cordon => self.cordon(u).await,
                Step::Drain if abandonable => {
                    tokio::select! {
                        end = self.drain(u) => end,
                        _ = self.stop_requested() => StepEnd::Interrupted,
                    }
                }
                Step::Drain => self.drain(u).await,
                Step::Upgrade => self.upgrade(u, journal.contains_key(&key)).await,
                Step::Validate => self.validate(u).await,
                Step::Uncordon => self.uncordon(u).await,
                Step::Remove => self.remove(u).await,
            };
            let ms = millis(t.elapsed());
            match end {
                StepEnd::Done(detail) => {
                    let e = Event::StepDone {
                        node: u.node.clone(),
                        step: name,
                        to,
                        millis: ms,
                        detail: detail.clone(),
                    };
                    self.record(&u.node, &key, StepState::Done, &detail, e).await?;
                }
                StepEnd::LeaveCordoned(reason) => {
                    let e = Event::StepFailed {
                        node: u.node.clone(),
                        step: name,
                        to,
                        error: reason.clone(),
                        kind: Some(FailureKind::Undrainable),
                        remedies: Vec::new(),
                    };
                    self.record(&u.node, &key, StepState::Failed, &reason, e).await?;
                    self.leave_cordoned(&u.node, &reason);
                    return Ok(UnitResult::LeftCordoned(reason));
                }
                StepEnd::Fail { error, release } => {
                    // The node left the cluster under the step: nothing to upgrade any more.
                    if let Ok(o) = self.observe(&u.node).await
                        && skip_when_gone(u, &o)
                    {
                        let reason =
                            format!("{} (its {name} step failed: {})", gone_reason(&u.node), error.message);
                        let e = Event::Warning { message: reason.clone() };
                        self.record(&u.node, &key, StepState::Skipped, &reason, e).await?;
                        self.emit(Event::UnitSkipped { node: u.node.clone(), to, reason: reason.clone() });
                        return Ok(UnitResult::Skipped(reason));
                    }
                    let e = Event::StepFailed {
                        node: u.node.clone(),
                        step: name,
                        to,
                        error: error.message.clone(),
                        kind: Some(error.kind),
                        remedies: error.remedies.clone(),
                    };
                    self.fail_fast();
                    self.record(&u.node, &key, StepState::Failed, &error.message, e).await?;
                    if release {
                        self.give_back(u).await;
                    } else if !u.external && self.observe(&u.node).await.is_ok_and(|o| o.cordoned_by_this_run)
                    {
                        self.leave_cordoned(
                            &u.node,
                            &format!("{step:?} failed: left cordoned so that no workload lands on a node in an unknown state; fix it and rerun the same command").to_lowercase(),
                        );
                    }
                    return Ok(UnitResult::Failed(error));
                }
                StepEnd::Interrupted => {
                    let e = Event::StepFailed {
                        node: u.node.clone(),
                        step: name,
                        to,
                        error: "interrupted".into(),
                        kind: None,
                        remedies: Vec::new(),
                    };
                    self.record(&u.node, &key, StepState::Failed, "interrupted", e).await?;
                    self.give_back(u).await;
                    return Ok(UnitResult::Interrupted);
                }
            }
        }
        Ok(UnitResult::Upgraded)
    }

    /// What the cluster shows about `node`. A failed read is an error, never "no node" (in
    /// replace style that would read as "already replaced").
    pub(crate) async fn observe(&self, node: &str) -> Result<Observed, StepError> {
        let s = self.ctx.cluster.node(node).await.map_err(|e| {
            StepError::new(FailureKind::Observe, format!("reading node {node} from the cluster: {e}"))
        })?;
        Ok(Observed {
            exists: s.exists,
            kubelet: s.kubelet,
            ready: s.ready,
            cordoned_by_this_run: s.unschedulable && s.cordoned_by.as_deref() == Some(self.run_id.as_str()),
        })
    }

    /// A unit whose node left the cluster: skipped with a warning, never failed forever.
    fn gone(&self, u: &UnitWork, reason: String) -> UnitResult {
        self.emit(Event::Warning { message: reason.clone() });
        self.emit(Event::UnitSkipped { node: u.node.clone(), to: u.to.to_string(), reason: reason.clone() });
        UnitResult::Skipped(reason)
    }

    pub(crate) fn leave_cordoned(&self, node: &str, reason: &str) {
        self.left_cordoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((node.to_string(), reason.to_string()));
        self.emit(Event::LeftCordoned { node: node.to_string(), reason: reason.to_string() });
    }

    /// Gives back a cordon this run took on a node it did not change (a failed or abandoned
    /// drain). Recorded like any step, so a resumed run knows.
    async fn give_back(&self, u: &UnitWork) {
        if u.external {
            return;
        }
        match self.ctx.cluster.uncordon(&u.node, &self.run_id).await {
            Ok(UncordonOutcome::Uncordoned) => {
                let key = format!("release@{}", u.to);
                let e = Event::StepDone {
                    node: u.node.clone(),
                    step: "release".into(),
                    to: u.to.to_string(),
                    millis: 0,
                    detail: "uncordoned: not upgraded".into(),
                };
                let _ = self.record(&u.node, &key, StepState::Done, "uncordoned: not upgraded", e).await;
            }
            Ok(_) => {}
            Err(e) => self.leave_cordoned(
                &u.node,
                &format!("could not uncordon it: {e}; run `kubectl uncordon {}`", u.node),
            ),
        }
    }
}
