//! What a run reports: how each unit ended, typed step errors, the outcome.

use refit_core::event::{FailureKind, UnitEnd};
use refit_core::remedy::Remedy;
use refit_core::run::RunState;
use serde::{Serialize, Serializer};

/// A step's failure: a stable kind (metrics, history, automation) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What went wrong and what to do.
    pub message: String,
    /// The ways out core named (front ends render them: the CLI as flags).
    pub remedies: Vec<Remedy>,
}

impl StepError {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> StepError {
        StepError { kind, message: message.into(), remedies: Vec::new() }
    }

    /// The same failure, with the ways out of it.
    pub fn with_remedies(mut self, remedies: Vec<Remedy>) -> StepError {
        self.remedies = remedies;
        self
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

/// In the summary a failure's reason stays the message it always was; its kind is a field of
/// its own ([`UnitReport::failure`]).
impl Serialize for StepError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.message)
    }
}

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
    Failed(StepError),
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
            UnitResult::Skipped(r) | UnitResult::LeftCordoned(r) | UnitResult::NotStarted(r) => Some(r),
            UnitResult::Failed(e) => Some(&e.message),
            _ => None,
        }
    }

    /// The ways out of its failure core named (none for other results).
    pub fn remedies(&self) -> &[Remedy] {
        match self {
            UnitResult::Failed(e) => &e.remedies,
            _ => &[],
        }
    }

    /// The failure's kind, for a failed unit.
    pub fn failure(&self) -> Option<FailureKind> {
        match self {
            UnitResult::Failed(e) => Some(e.kind),
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
    /// The failure's kind, for a failed unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// Time spent on it in this invocation.
    pub millis: u64,
}

impl UnitReport {
    /// A report for `node` of stage `stage`.
    pub fn new(stage: usize, node: &str, to: &str, result: UnitResult, millis: u64) -> UnitReport {
        UnitReport {
            stage,
            node: node.to_string(),
            to: to.to_string(),
            failure: result.failure(),
            result,
            millis,
        }
    }
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
    /// The ways out of the units' failures core named, each once (front ends render them:
    /// the CLI as flags).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remedies: Vec<Remedy>,
    /// Every unit of the schedule.
    pub units: Vec<UnitReport>,
    /// Nodes refit left cordoned, and why (nothing else refit cordoned is left cordoned).
    pub left_cordoned: Vec<(String, String)>,
    /// Nodes that joined the cluster after planning and are not at the target, and why they
    /// were not upgraded.
    pub not_planned: Vec<(String, String)>,
    /// Wall time per stage (and backup, cluster services).
    pub timings: Vec<(String, u64)>,
    /// The etcd backup, if one was taken in this run.
    pub backup: Option<String>,
    /// The run changed etcd or the control plane without a backup because the operator said
    /// so (`--no-etcd-backup`): said again in the summary, table and JSON.
    pub backup_opted_out: bool,
}

impl Outcome {
    /// The run's end as its `summary` event carries it (what a fleet driver reads, from a
    /// child's line or from an upgrade run in-process).
    pub fn summary(&self) -> refit_core::event::RunSummary {
        refit_core::event::RunSummary {
            run: Some(self.run.clone()),
            state: self.state,
            reason: self.reason.clone(),
            remedies: self.remedies.clone(),
        }
    }
}

/// Milliseconds of a duration, saturating (a run never lasts 584 million years).
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
