//! A stage's health gates inside a run: reached when the stage's groups are done (alongside
//! its after-gates and its wait), probed by the driver every [`Soak::poll_interval`], judged by
//! the one soak rule ([`crate::health::Soak`], taken up again from what the run keeps, so a
//! restarted driver goes on where the last one was), passed, or failed — which pauses the run
//! (Stopped, started again re-evaluates the gate) or fails it, as the run's
//! `onGateFailure` says.

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::health::soak::show;
use crate::health::{HealthGate, Observation, Soak, Verdict};

/// Where a stage's health gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthGateStatus {
    /// The stage's groups are not done yet.
    NotStarted,
    /// Probed until it passes or its timeout runs out.
    Pending,
    /// Held for its soak.
    Passed,
    /// Its timeout ran out first.
    Failed,
    /// Its stage was skipped.
    Skipped,
}

impl HealthGateStatus {
    /// Passed or Skipped: the stage may end.
    pub fn is_done(self) -> bool {
        matches!(self, HealthGateStatus::Passed | HealthGateStatus::Skipped)
    }
}

/// Why a health gate still waits (typed, for the run tree and `-o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum HealthWait {
    /// Reached, not probed yet.
    FirstProbe,
    /// The check does not hold.
    Failing {
        /// What the probe saw.
        reason: String,
    },
    /// The check holds; the soak is not over.
    Soaking {
        /// Seconds held without a dip.
        held_seconds: u64,
        /// Seconds it must hold.
        soak_seconds: u64,
        /// What the probe saw.
        detail: String,
    },
}

impl fmt::Display for HealthWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthWait::FirstProbe => f.write_str("not probed yet"),
            HealthWait::Failing { reason } => write!(f, "failing: {reason}"),
            HealthWait::Soaking { held_seconds, soak_seconds, detail } => write!(
                f,
                "holding for {} of {}: {detail}",
                show(Duration::from_secs(*held_seconds)),
                show(Duration::from_secs(*soak_seconds))
            ),
        }
    }
}

/// A stage's health gate in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthGateState {
    /// The gate as the strategy defined it (frozen with the run).
    pub gate: HealthGate,
    /// Where it stands.
    pub state: HealthGateStatus,
    /// When the stage's groups were done and probing began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<Timestamp>,
    /// When it passed, failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// The last probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Timestamp>,
    /// Held without a dip since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_since: Option<Timestamp>,
    /// The last failing probe's reason (kept through a later hold for the timeout message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Why it waits (set exactly when Pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<HealthWait>,
    /// Passed: what the last probe saw; Failed: why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Gate time: how long after `from` the instant `at` is (never negative).
fn since(from: Timestamp, at: Timestamp) -> Duration {
    let ms = at.duration_since(from).as_millis();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn after(from: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    from.checked_add(d).unwrap_or(Timestamp::MAX)
}

impl HealthGateState {
    /// A gate not reached yet.
    pub fn new(gate: HealthGate) -> HealthGateState {
        HealthGateState {
            gate,
            state: HealthGateStatus::NotStarted,
            reached_at: None,
            completed_at: None,
            observed_at: None,
            holding_since: None,
            last_failure: None,
            waiting: None,
            message: None,
        }
    }

    /// Back to NotStarted (a start again evaluates it afresh).
    pub(super) fn reset(&mut self) {
        *self = HealthGateState::new(self.gate.clone());
    }

    /// Skipped with its stage. A failed gate is skipped too (that is how an operator gets
    /// past one that keeps failing); a passed one keeps its outcome.
    pub(super) fn skip(&mut self, at: Timestamp) {
        if self.state != HealthGateStatus::Passed && self.state != HealthGateStatus::Skipped {
            self.state = HealthGateStatus::Skipped;
            self.completed_at = Some(at);
            self.waiting = None;
        }
    }

    /// Starts probing at `at`.
    pub(super) fn reach(&mut self, at: Timestamp) {
        self.state = HealthGateStatus::Pending;
        self.reached_at = Some(at);
        self.waiting = Some(HealthWait::FirstProbe);
    }

    /// When the next probe is due: at once after it was reached, then every poll interval.
    pub fn next_probe(&self) -> Option<Timestamp> {
        if self.state != HealthGateStatus::Pending {
            return None;
        }
        let poll = Soak::for_gate(&self.gate).poll_interval();
        Some(match (self.observed_at, self.reached_at) {
            (Some(t), _) => after(t, poll),
            (None, Some(r)) => r,
            (None, None) => Timestamp::UNIX_EPOCH,
        })
    }

    /// Whether a probe is due at `now`.
    pub fn due(&self, now: Timestamp) -> bool {
        self.next_probe().is_some_and(|t| t <= now)
    }

    /// Judges a probe's `observation` made at `at` by the soak rule, from where the gate
    /// stood. Returns the verdict's failure reason when the gate failed.
    pub(super) fn observe(&mut self, at: Timestamp, observation: Observation) -> Option<String> {
        let reached = self.reached_at.unwrap_or(at);
        let mut soak = Soak::resume(
            &self.gate,
            self.holding_since.map(|t| since(reached, t)),
            self.last_failure.clone(),
        );
        let verdict = soak.observe(since(reached, at), observation.clone());
        self.observed_at = Some(at);
        self.holding_since = soak.holding_since().map(|d| after(reached, d));
        self.last_failure = soak.last_failure().map(str::to_string);
        match verdict {
            Verdict::Passed { detail } => {
                self.state = HealthGateStatus::Passed;
                self.completed_at = Some(at);
                self.waiting = None;
                self.message = Some(detail);
                None
            }
            Verdict::Failed { reason } => {
                self.state = HealthGateStatus::Failed;
                self.completed_at = Some(at);
                self.waiting = None;
                self.message = Some(reason.clone());
                Some(reason)
            }
            Verdict::Waiting { .. } => {
                self.waiting = Some(match observation {
                    Observation::Fails(reason) => HealthWait::Failing { reason },
                    Observation::Holds(detail) => HealthWait::Soaking {
                        held_seconds: self.holding_since.map(|t| since(t, at).as_secs()).unwrap_or(0),
                        soak_seconds: self.gate.soak_seconds,
                        detail,
                    },
                });
                None
            }
        }
    }
}

/// The gates of a stage, as the run freezes them.
pub(super) fn health_states(gates: &[HealthGate]) -> Vec<HealthGateState> {
    gates.iter().cloned().map(HealthGateState::new).collect()
}

/// Every health gate of the list passed (or was skipped).
pub(super) fn health_done(gates: &[HealthGateState]) -> bool {
    gates.iter().all(|g| g.state.is_done())
}
