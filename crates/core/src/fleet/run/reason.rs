//! Why a scope is Pending, and what a skip names and why it happened.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fleet::gate::{Approval, GateRef};
use crate::version::Version;

/// Why something is Pending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum PendingReason {
    /// The member's maintenance window is closed.
    WindowClosed {
        /// When it opens next (None: not within ten years, e.g. blacked out).
        opens_at: Option<Timestamp>,
    },
    /// The member's window cannot be evaluated (e.g. an unknown time zone).
    WindowInvalid {
        /// Why.
        message: String,
    },
    /// Its upgrade paused at the window's close with nodes left (replaced by the window's
    /// next opening as soon as the driver looks again).
    Paused {
        /// What the upgrade reported.
        message: String,
    },
    /// The member cannot be reached or is busy.
    Unavailable {
        /// What the driver saw.
        message: String,
    },
    /// An approval gate waits for someone.
    Approval {
        /// Which gate.
        gate: GateRef,
        /// A pre-approval that expired before the gate was reached.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expired: Option<Approval>,
    },
    /// A ScheduledStart gate waits for its time.
    ScheduledStart {
        /// Which gate.
        gate: GateRef,
        /// When it completes by itself.
        starts_at: Timestamp,
    },
    /// A stage's health gate has not passed yet.
    HealthGate {
        /// The stage.
        stage: String,
        /// The gate's name.
        gate: String,
        /// What it checks (`http://… answers 2xx`).
        check: String,
        /// Why it still waits.
        waiting: super::health::HealthWait,
    },
    /// The pause after a stage.
    AfterStageWait {
        /// The stage.
        stage: String,
        /// When it ends.
        until: Timestamp,
    },
    /// A child is pending (`member m`, `group g`, `stage s`).
    Waiting {
        /// Which child.
        on: String,
        /// Its reason.
        reason: Box<PendingReason>,
    },
}

impl PendingReason {
    /// The instant the wait ends by itself, if known (the next window opening, a scheduled
    /// start, the end of the after-stage wait).
    pub fn until(&self) -> Option<Timestamp> {
        match self {
            PendingReason::WindowClosed { opens_at } => *opens_at,
            PendingReason::ScheduledStart { starts_at, .. } => Some(*starts_at),
            PendingReason::AfterStageWait { until, .. } => Some(*until),
            PendingReason::Waiting { reason, .. } => reason.until(),
            _ => None,
        }
    }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingReason::WindowClosed { opens_at: Some(t) } => {
                write!(f, "maintenance window closed; opens at {t}")
            }
            PendingReason::WindowClosed { opens_at: None } => {
                write!(f, "maintenance window closed and not opening within ten years (blackout dates?)")
            }
            PendingReason::WindowInvalid { message } => write!(f, "maintenance window unusable: {message}"),
            PendingReason::Unavailable { message } => write!(f, "member unavailable: {message}"),
            PendingReason::Paused { message } => {
                write!(f, "paused at its maintenance window's close ({message}); continues when it opens")
            }
            PendingReason::Approval { gate, expired: None } => {
                write!(f, "waiting for approval of gate {gate} (refit fleet gate approve)")
            }
            PendingReason::Approval { gate, expired: Some(a) } => write!(
                f,
                "waiting for approval of gate {gate}: the approval by {} expired at {}",
                a.by,
                a.expires_at.map(|t| t.to_string()).unwrap_or_default()
            ),
            PendingReason::ScheduledStart { gate, starts_at } => {
                write!(f, "gate {gate} starts at {starts_at} (or when approved)")
            }
            PendingReason::AfterStageWait { stage, until } => {
                write!(f, "after-stage wait of {stage} until {until}")
            }
            PendingReason::HealthGate { stage, gate, check, waiting } => {
                write!(f, "health gate {gate} of stage {stage} ({check}): {waiting}")
            }
            PendingReason::Waiting { on, reason } => write!(f, "{on}: {reason}"),
        }
    }
}

/// A skip target as written on the command line: `Member:m`, `Group:g`, `Stage:s`,
/// `AfterStageWait:s`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipTarget {
    /// One member.
    Member(String),
    /// A group and everything in it.
    Group(String),
    /// A stage, its groups, gates and after-stage wait.
    Stage(String),
    /// Only the pause after a stage.
    AfterStageWait(String),
}

impl fmt::Display for SkipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipTarget::Member(n) => write!(f, "Member:{n}"),
            SkipTarget::Group(n) => write!(f, "Group:{n}"),
            SkipTarget::Stage(n) => write!(f, "Stage:{n}"),
            SkipTarget::AfterStageWait(n) => write!(f, "AfterStageWait:{n}"),
        }
    }
}

impl std::str::FromStr for SkipTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "'{s}' is not a skip target: expected Member:NAME, Group:NAME, Stage:NAME or AfterStageWait:NAME"
            )
        };
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        let name = name.to_string();
        match kind {
            "Member" => Ok(SkipTarget::Member(name)),
            "Group" => Ok(SkipTarget::Group(name)),
            "Stage" => Ok(SkipTarget::Stage(name)),
            "AfterStageWait" => Ok(SkipTarget::AfterStageWait(name)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for SkipTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SkipTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a member was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all_fields = "camelCase")]
pub enum SkipCause {
    /// Someone skipped it (or its group or stage).
    Requested {
        /// The target named.
        target: SkipTarget,
        /// Who.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Already at (or ahead of) the run's target.
    AtTarget {
        /// What it runs.
        message: String,
    },
    /// No longer a fleet member.
    NotInFleet,
    /// No node image of a family it runs is available to it (Consistent: to every member).
    NoTargetImage {
        /// The family.
        family: String,
    },
    /// More than one minor behind a profile's target.
    TooFarBehind {
        /// Its control plane.
        version: Version,
        /// The target.
        target: Version,
    },
    /// Pending for longer than the run's pending budget.
    Deferred {
        /// Pending since.
        pending_since: Timestamp,
        /// The budget.
        budget_seconds: u64,
        /// What it was waiting for.
        reason: PendingReason,
    },
}

impl SkipCause {
    /// Whether the skip leaves work undone, so that starting the run again re-applies it.
    /// Only "already at the target" does not.
    pub fn leaves_work(&self) -> bool {
        !matches!(self, SkipCause::AtTarget { .. })
    }
}

impl fmt::Display for SkipCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipCause::Requested { target, by: Some(by) } => write!(f, "skipped by {by} ({target})"),
            SkipCause::Requested { target, by: None } => write!(f, "skipped ({target})"),
            SkipCause::AtTarget { message } => f.write_str(message),
            SkipCause::NotInFleet => f.write_str("no longer a fleet member"),
            SkipCause::NoTargetImage { family } => {
                write!(f, "no target node image of family {family} for this member")
            }
            SkipCause::TooFarBehind { version, target } => write!(
                f,
                "{version} is more than one minor behind {target}: a profile moves a member one minor per run; bring it to {}.{} with a manual run first",
                target.major,
                target.minor.saturating_sub(1)
            ),
            SkipCause::Deferred { budget_seconds, reason, .. } => write!(
                f,
                "deferred after {:#} pending ({reason}); start the run again to take it",
                SignedDuration::from_secs(i64::try_from(*budget_seconds).unwrap_or(i64::MAX))
            ),
        }
    }
}
