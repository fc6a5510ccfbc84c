//! The update run state machine.
//!
//! A run holds a frozen plan (stages → groups → members), its frozen targets, and a state on
//! every level: NotStarted, Running, Pending, Stopping, Stopped, Skipped, Failed, Completed
//! (Azure Fleet's eight). Two functions drive it:
//!
//! - [`apply`] takes an [`Event`] (a person's command, or a member's outcome, or a decision of
//!   [`next`] being recorded) and returns the new state, or a [`TransitionError`] saying why the
//!   event does not fit. Only members, gates and waits change directly; a stage's, group's or
//!   run's state is always *recomputed* from its children and its own gates and wait (the
//!   rollup), so a parent can never disagree with its children. Every change, leaf or parent, is
//!   checked against the allowed-transition table ([`allowed`]).
//! - [`next`] looks at the run, the members' [`Facts`] and `now`, and says what to do: start
//!   these members, record these gates as reached, mark this member Pending on its window,
//!   skip that one (already at the target), or wait until some instant.
//!
//! The desired state ([`Intent`]: not started, run, stop) is kept apart from the observed state,
//! as KubeFleet does. A failure beyond `maxAllowedFailures` fails its group, stage and run and
//! halts the run like a stop: no new member starts anywhere, member upgrades already under way
//! run to their end and are recorded. A Failed or Stopped run can be started again (failed and
//! skipped work is re-applied; members skipped because they were already at the target stay
//! skipped), or retried (only failed members are re-applied, with the same frozen targets).

use std::collections::BTreeMap;
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::gate::{Approval, GateRef, GateSpec, GateState, GateStatus, GateTiming};
use super::strategy::{PlannedGroup, PlannedStage, RunPlan, Strategy};
use super::target::{self, MemberTarget, MemberVersions, SpecError, Targets, UpgradeSpec};
use super::window::{self, MaintenanceWindow, WindowPriority};
use crate::version::Version;

/// The state of a run, stage, group or member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum UpdateState {
    /// Not reached yet.
    NotStarted,
    /// Work under way.
    Running,
    /// Waiting: a closed window, a gate, the after-stage wait, an unavailable member. Always
    /// with a [`PendingReason`].
    Pending,
    /// Stop requested; member upgrades already under way are finishing.
    Stopping,
    /// Stopped; can be started again.
    Stopped,
    /// Skipped (by request, already at the target, deferred, or everything inside skipped).
    Skipped,
    /// Failed; can be started again or retried.
    Failed,
    /// Done.
    Completed,
}

impl UpdateState {
    /// Completed or Skipped: nothing left to do here.
    pub fn is_done(self) -> bool {
        matches!(self, UpdateState::Completed | UpdateState::Skipped)
    }

    /// A member upgrade is under way (Running, or finishing while the run stops).
    pub fn in_flight(self) -> bool {
        matches!(self, UpdateState::Running | UpdateState::Stopping)
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A level of the run tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// The run.
    Run,
    /// A stage.
    Stage,
    /// A group.
    Group,
    /// A member.
    Member,
}

use UpdateState::{Completed, Failed, NotStarted, Pending, Running, Skipped, Stopped, Stopping};

/// Every change of a member's state that can happen (a state may always stay as it is).
pub const MEMBER_TRANSITIONS: &[(UpdateState, UpdateState)] = &[
    (NotStarted, Running), // started
    (NotStarted, Pending), // window closed, unavailable
    (NotStarted, Skipped), // skip, already at target, not in the fleet any more
    (Pending, Running),    // its window opened
    (Pending, NotStarted), // unblocked but no free slot: queued again
    (Pending, Skipped),    // skip, or deferred after its pending budget
    (Pending, Stopped),    // the run stopped (or failed) while it waited
    (Running, Completed),  // its upgrade succeeded
    (Running, Failed),     // its upgrade failed
    (Running, Stopping),   // the run stopped (or failed) while its upgrade runs
    (Running, Pending),    // its window closed mid-upgrade: paused, continues in the next one
    (Stopping, Completed), // the upgrade under way finished after all
    (Stopping, Failed),    // … or failed
    (Stopping, Running),   // a failed run started again while this upgrade still runs
    (Stopping, Stopped),   // … or paused at its window's close: left for the next start
    (Failed, NotStarted),  // start again / retry failed
    (Failed, Skipped),     // skip a failed member to get past it
    (Skipped, NotStarted), // start again re-applies skipped work
    (Stopped, NotStarted), // start again
    (Stopped, Skipped),    // skip while stopped
];

/// Every change of a stage's, group's or run's (rolled-up) state that can happen.
pub const PARENT_TRANSITIONS: &[(UpdateState, UpdateState)] = &[
    (NotStarted, Running),
    (NotStarted, Pending),
    (NotStarted, Skipped),
    (Running, Pending),
    (Running, Stopping),
    (Running, Stopped),
    (Running, Failed),
    (Running, Completed),
    (Running, Skipped),
    (Pending, Running),
    (Pending, Stopping),
    (Pending, Stopped),
    (Pending, Failed),
    (Pending, Completed),
    (Pending, Skipped),
    (Stopping, Stopped),
    (Stopping, Failed),
    (Stopping, Completed),
    (Stopping, Skipped),
    (Stopping, Running),
    (Stopped, Running),
    (Stopped, Pending),
    (Stopped, NotStarted),
    (Stopped, Skipped),
    (Stopped, Completed),
    (Failed, Running),
    (Failed, Pending),
    (Failed, NotStarted),
    (Failed, Stopping),
    (Failed, Stopped),
    (Failed, Skipped),
    (Failed, Completed),
    (Completed, Running), // retry/start re-opens a scope that completed with tolerated failures
    (Completed, NotStarted), // … whose every member failed (within its threshold)
    (Completed, Skipped), // its only (tolerated) failures were skipped: every member is Skipped
    (Skipped, NotStarted), // start again re-applies skipped work
    (Skipped, Running),
];

/// Whether `from → to` is allowed on `level` (staying put always is).
pub fn allowed(level: Level, from: UpdateState, to: UpdateState) -> bool {
    let table = if level == Level::Member { MEMBER_TRANSITIONS } else { PARENT_TRANSITIONS };
    from == to || table.contains(&(from, to))
}

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

/// The state of a scope: shared by run, stage, group and member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The state.
    pub state: UpdateState,
    /// When it left NotStarted (a member: when its upgrade started — waiting Pending for a
    /// window or a slot is not starting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it became Completed, Skipped, Failed or Stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// Seconds spent Stopped or Failed before it was started again: part of the span from
    /// `started_at` to `completed_at`, but not of how long it [took](Status::took) — a run
    /// stopped overnight did not take the night.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stopped_seconds: u64,
    /// Why it is Pending (set exactly when Pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingReason>,
    /// Information: a skip reason, a success message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    fn new() -> Status {
        Status {
            state: NotStarted,
            started_at: None,
            completed_at: None,
            stopped_seconds: 0,
            pending: None,
            message: None,
            error: None,
        }
    }

    /// Moves a stage, group or run to `state` at `at`, keeping the timestamps and the
    /// Pending reason consistent. Any state but NotStarted and Skipped starts it: a stage
    /// waiting at its before-gate has been reached.
    fn set(&mut self, state: UpdateState, pending: Option<PendingReason>, at: Timestamp) {
        self.set_as(!matches!(state, NotStarted | Skipped), state, pending, at);
    }

    /// Moves a member to `state` at `at`. Only its upgrade starts it (Running; MemberStarted
    /// records the instant): a member Pending on a closed window, or Stopped before it ever
    /// ran, never started.
    fn set_member(&mut self, state: UpdateState, pending: Option<PendingReason>, at: Timestamp) {
        self.set_as(state.in_flight(), state, pending, at);
    }

    fn set_as(&mut self, starts: bool, state: UpdateState, pending: Option<PendingReason>, at: Timestamp) {
        if self.state != state {
            if self.started_at.is_none() && starts {
                self.started_at = Some(at);
            }
            let ends = |s: UpdateState| matches!(s, Completed | Skipped | Failed | Stopped);
            if matches!(self.state, Stopped | Failed)
                && !ends(state)
                && let (Some(_), Some(stopped)) = (self.started_at, self.completed_at)
            {
                let secs = u64::try_from(at.duration_since(stopped).as_secs()).unwrap_or(0);
                self.stopped_seconds = self.stopped_seconds.saturating_add(secs);
            }
            self.completed_at = ends(state).then_some(at);
            self.state = state;
        }
        self.pending = if state == Pending { pending } else { None };
    }

    /// How long it took (or has taken by `now`, when not finished): from its start to its end,
    /// less the time it spent Stopped or Failed before being started again. None before it
    /// started.
    pub fn took(&self, now: Timestamp) -> Option<SignedDuration> {
        let start = self.started_at?;
        let end = self.completed_at.unwrap_or(now);
        let stopped = SignedDuration::from_secs(i64::try_from(self.stopped_seconds).unwrap_or(i64::MAX));
        Some(end.duration_since(start).saturating_sub(stopped).max(SignedDuration::ZERO))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A member inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberState {
    /// Member name.
    pub name: String,
    /// State and timings.
    #[serde(flatten)]
    pub status: Status,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<SkipCause>,
    /// Pending since (this stretch), for the pending budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<Timestamp>,
    /// What it is being moved to (set when it starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<MemberTarget>,
    /// The single-cluster run driving it (as the driver named it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// How many times it was started.
    #[serde(default)]
    pub attempts: u32,
    /// When the maintenance window it started in closes: the single-cluster engine starts no
    /// new node after it (work under way is never cut off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_closes_at: Option<Timestamp>,
    /// Its upgrade paused with work left (MemberPaused): when started again it continues to
    /// the target it started with, even if it looks at the target by then (its run may have
    /// only the cluster services left), so its single-cluster run is finished, not abandoned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfinished: bool,
}

impl MemberState {
    fn new(name: &str) -> MemberState {
        MemberState {
            name: name.to_string(),
            status: Status::new(),
            skip: None,
            pending_since: None,
            target: None,
            operation: None,
            attempts: 0,
            window_closes_at: None,
            unfinished: false,
        }
    }

    /// Back to NotStarted for another attempt (an unfinished upgrade keeps its target).
    fn reset(&mut self) {
        self.status = Status::new();
        self.skip = None;
        self.pending_since = None;
        if !self.unfinished {
            self.target = None;
        }
        self.window_closes_at = None;
    }

    fn skip_with(&mut self, cause: SkipCause, at: Timestamp) {
        self.status.set_member(Skipped, None, at);
        self.status.message = Some(cause.to_string());
        self.status.error = None;
        self.pending_since = None;
        self.skip = Some(cause);
    }
}

/// The pause after a stage; it uses the four gate states (Pending = waiting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitState {
    /// Its length.
    pub seconds: u64,
    /// Where it stands.
    pub state: GateStatus,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
}

/// A group inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupState {
    /// Group name.
    pub name: String,
    /// State (rolled up).
    #[serde(flatten)]
    pub status: Status,
    /// Members updating at once.
    pub max_concurrency: u32,
    /// Failures tolerated.
    pub max_allowed_failures: u32,
    /// Failed members.
    pub failure_count: u32,
    /// Gates before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_gates: Vec<GateState>,
    /// Gates after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_gates: Vec<GateState>,
    /// Members in order.
    pub members: Vec<MemberState>,
}

impl GroupState {
    /// Members whose upgrade is under way.
    pub fn in_flight(&self) -> u32 {
        self.members.iter().filter(|m| m.status.state.in_flight()).count() as u32
    }
}

/// A stage inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageState {
    /// Stage name.
    pub name: String,
    /// State (rolled up).
    #[serde(flatten)]
    pub status: Status,
    /// Members updating at once across the stage.
    pub max_concurrency: u32,
    /// Member failures tolerated across the stage.
    pub max_allowed_failures: u32,
    /// Failed members.
    pub failure_count: u32,
    /// Gates before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_gates: Vec<GateState>,
    /// Gates after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_gates: Vec<GateState>,
    /// The pause after it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_stage_wait: Option<WaitState>,
    /// Groups.
    pub groups: Vec<GroupState>,
}

impl StageState {
    /// Members of the stage whose upgrade is under way.
    pub fn in_flight(&self) -> u32 {
        self.groups.iter().map(GroupState::in_flight).sum()
    }

    fn groups_done(&self) -> bool {
        self.groups.iter().all(|g| g.status.state.is_done())
    }

    fn wait_done(&self) -> bool {
        self.after_stage_wait.as_ref().is_none_or(|w| w.state.is_done())
    }
}

/// What the run was asked to do (kept apart from what it observes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Intent {
    /// Created, not started yet.
    NotStarted,
    /// Make progress.
    Run,
    /// Start nothing new (asked to stop, or halted by a failure).
    Stop,
}

/// A skip command, as recorded in the run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkipRecord {
    /// What was skipped.
    pub targets: Vec<SkipTarget>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When.
    pub at: Timestamp,
}

/// An update run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// Run name.
    pub name: String,
    /// The goal.
    pub spec: UpgradeSpec,
    /// The strategy as copied at creation (later edits to the strategy do not reach the run).
    pub strategy: Strategy,
    /// What it was asked to do.
    pub intent: Intent,
    /// State (rolled up).
    #[serde(flatten)]
    pub status: Status,
    /// Frozen at the first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targets>,
    /// Starts so far (a restart or retry counts).
    pub attempt: u32,
    /// Failed members.
    pub failure_count: u32,
    /// Stages in order.
    pub stages: Vec<StageState>,
    /// Members no stage selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unselected: Vec<String>,
    /// Skip commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skips: Vec<SkipRecord>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// What the driver knows about a member right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberFacts {
    /// What it runs and can get.
    #[serde(flatten)]
    pub versions: MemberVersions,
    /// Its maintenance window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
    /// Why it cannot be worked on now (unreachable, another operation under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// This member's budget for time spent Pending; overrides the run's
    /// `pendingBudgetSeconds` (a member with a rare window may wait longer than the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_budget_seconds: Option<u64>,
}

/// What the driver knows about the fleet right now. A planned member missing here is no
/// longer a fleet member and is skipped when the run reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// By member name.
    pub members: BTreeMap<String, MemberFacts>,
}

/// Something that happened to a run. Every event carries its instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all_fields = "camelCase")]
pub enum Event {
    /// Start (first time: with the frozen targets, and optionally the member set re-resolved
    /// now) or start again (Failed, Stopped).
    Start {
        /// When.
        at: Timestamp,
        /// Required on the first start, refused afterwards.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        targets: Option<Targets>,
        /// The member set resolved at start; replaces the one from creation (first start only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan: Option<RunPlan>,
        /// Who asked (a person's name, a token's name; None from the driver itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Stop: start nothing new; upgrades under way finish.
    Stop {
        /// When.
        at: Timestamp,
        /// Who asked (a person's name, a token's name; None from the driver itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Re-run only the failed members (Failed, Stopped or Completed run), same targets.
    RetryFailed {
        /// When.
        at: Timestamp,
        /// Who asked (a person's name, a token's name; None from the driver itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Skip members, groups, stages or after-stage waits.
    Skip {
        /// What.
        targets: Vec<SkipTarget>,
        /// Who.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Approve a gate (Pending, or NotStarted as a pre-approval).
    ApproveGate {
        /// Which.
        gate: GateRef,
        /// Who.
        by: String,
        /// When.
        at: Timestamp,
        /// A pre-approval unused by then no longer counts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
    },
    /// The run reached a gate (from [`next`]).
    GateReached {
        /// Which.
        gate: GateRef,
        /// When.
        at: Timestamp,
    },
    /// A ScheduledStart gate's time came (from [`next`]).
    GateTimeReached {
        /// Which.
        gate: GateRef,
        /// When.
        at: Timestamp,
    },
    /// The after-stage wait began (from [`next`]).
    AfterStageWaitStarted {
        /// The stage.
        stage: String,
        /// When.
        at: Timestamp,
    },
    /// The after-stage wait ended (from [`next`]).
    AfterStageWaitElapsed {
        /// The stage.
        stage: String,
        /// When.
        at: Timestamp,
    },
    /// A member's upgrade starts. Recorded *before* the driver launches it (so a stop recorded
    /// in between makes this fail and nothing is launched).
    MemberStarted {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
        /// Its target.
        target: MemberTarget,
        /// The single-cluster run that will drive it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation: Option<String>,
        /// When its window closes (None: no window).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_closes_at: Option<Timestamp>,
    },
    /// A member's upgrade succeeded.
    MemberSucceeded {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
        /// What to show.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A member's upgrade failed.
    MemberFailed {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
        /// Why.
        error: String,
    },
    /// A member's upgrade stopped at its maintenance window's close with nodes left (the
    /// single-cluster run ended Paused: no node was cut off). The member is Pending and
    /// continues, resuming that run, when its window opens again; in a stopping run it is
    /// Stopped.
    MemberPaused {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
        /// What its upgrade reported.
        message: String,
    },
    /// A member upgrade under way could not reach its cluster (its API server is down or
    /// coming back, e.g. relaunched right after a driver restart): the member waits Pending
    /// with the reason, like a member that is unreachable before it starts, and continues —
    /// resuming its cluster run to the same target — once it can be reached (see
    /// [`super::outcome`]). In a stopping run it is Stopped.
    MemberUnreachable {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
        /// What the driver saw.
        message: String,
    },
    /// A member cannot start now (from [`next`]).
    MemberPending {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
        /// Why.
        reason: PendingReason,
    },
    /// A pending member is no longer blocked but waits for a free slot (from [`next`]).
    MemberUnblocked {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
    },
    /// The run skips a member on its own (from [`next`]: at target, gone, deferred …).
    MemberSkipped {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
        /// Why (never `Requested`: that is [`Event::Skip`]).
        cause: SkipCause,
    },
    /// A driver took the run over from one that stopped renewing its lease (killed, crashed,
    /// its host gone). History only — the state does not change — but it is the first thing
    /// an operator looks for after an incident: from when on a new process drove the run.
    DriverTookOver {
        /// The new driver (`host:pid:started-ms`).
        driver: String,
        /// The driver it replaced.
        previous: String,
        /// When.
        at: Timestamp,
    },
    /// A member upgrade the run says is under way, but that no live driver runs (its driver
    /// died), is launched again; its `refit upgrade` resumes its own journal, so no finished
    /// node is repeated. Only for a member in flight; the state does not change.
    MemberRelaunched {
        /// The member.
        member: String,
        /// When.
        at: Timestamp,
    },
    /// A requested stop completed: nothing was left under way and the run is Stopped (see
    /// [`follow_up`]). Only for a stopped run; the state does not change.
    StopCompleted {
        /// When.
        at: Timestamp,
    },
}

impl Event {
    /// When it happened.
    pub fn at(&self) -> Timestamp {
        match self {
            Event::Start { at, .. }
            | Event::Stop { at, .. }
            | Event::RetryFailed { at, .. }
            | Event::Skip { at, .. }
            | Event::ApproveGate { at, .. }
            | Event::GateReached { at, .. }
            | Event::GateTimeReached { at, .. }
            | Event::AfterStageWaitStarted { at, .. }
            | Event::AfterStageWaitElapsed { at, .. }
            | Event::MemberStarted { at, .. }
            | Event::MemberSucceeded { at, .. }
            | Event::MemberFailed { at, .. }
            | Event::MemberPaused { at, .. }
            | Event::MemberUnreachable { at, .. }
            | Event::MemberPending { at, .. }
            | Event::MemberUnblocked { at, .. }
            | Event::MemberSkipped { at, .. }
            | Event::DriverTookOver { at, .. }
            | Event::MemberRelaunched { at, .. }
            | Event::StopCompleted { at } => *at,
        }
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all_fields = "camelCase")]
pub enum Decision {
    /// Start this member's upgrade: apply [`Decision::started`] first (it fails if the run was
    /// stopped meanwhile), then launch the single-cluster run.
    StartMember {
        /// Its stage.
        stage: String,
        /// Its group.
        group: String,
        /// The member.
        member: String,
        /// What to move it to.
        target: MemberTarget,
        /// When its window closes: start no new node after this (None: no window).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_closes_at: Option<Timestamp>,
    },
    /// Nothing to perform: apply this event now.
    Record(Event),
    /// Nothing to do until `until` (None: until an outside event — an approval, a member's
    /// outcome).
    Wait {
        /// When to look again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
        /// What it waits for.
        reason: String,
    },
}

impl Decision {
    /// For `StartMember`, the event to record before launching.
    pub fn started(&self, at: Timestamp, operation: Option<String>) -> Option<Event> {
        match self {
            Decision::StartMember { member, target, window_closes_at, .. } => Some(Event::MemberStarted {
                member: member.clone(),
                at,
                target: target.clone(),
                operation,
                window_closes_at: *window_closes_at,
            }),
            _ => None,
        }
    }
}

/// Why an event does not fit the run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The run's state does not allow the command.
    #[error("run '{run}' is {state}: cannot {action}; {hint}")]
    Run {
        /// The run.
        run: String,
        /// Its state.
        state: UpdateState,
        /// What was asked.
        action: &'static str,
        /// The way out.
        hint: &'static str,
    },
    /// No such member in the run.
    #[error("run '{run}' has no member '{name}' (see refit fleet run show)")]
    UnknownMember {
        /// The run.
        run: String,
        /// The name.
        name: String,
    },
    /// No such group.
    #[error("run '{run}' has no group '{name}' (see refit fleet run show)")]
    UnknownGroup {
        /// The run.
        run: String,
        /// The name.
        name: String,
    },
    /// No such stage.
    #[error("run '{run}' has no stage '{name}' (see refit fleet run show)")]
    UnknownStage {
        /// The run.
        run: String,
        /// The name.
        name: String,
    },
    /// No such gate.
    #[error("run '{run}' has no gate '{gate}' (see refit fleet gate list)")]
    UnknownGate {
        /// The run.
        run: String,
        /// The reference.
        gate: String,
    },
    /// A member, group, stage, gate or wait is in the wrong state for the event.
    #[error("{what} is {state}: cannot {action}")]
    State {
        /// `member m`, `gate g`, `group g` …
        what: String,
        /// Its state.
        state: String,
        /// What was asked.
        action: &'static str,
    },
    /// The event concerns a part of the run it has not reached.
    #[error("{what} is not reached yet: {why}")]
    NotReached {
        /// What.
        what: String,
        /// Why not.
        why: String,
    },
    /// Starting the member would exceed a `maxConcurrency`.
    #[error("starting member '{member}' would exceed maxConcurrency {max} of {scope}")]
    Concurrency {
        /// The member.
        member: String,
        /// `group g` or `stage s`.
        scope: String,
        /// The limit.
        max: u32,
    },
    /// The first start must freeze the targets.
    #[error("the first start of run '{0}' must carry its frozen targets")]
    TargetsRequired(String),
    /// Targets and member set are frozen at the first start.
    #[error("run '{0}' froze its targets and members when it first started; they cannot change")]
    AlreadyFrozen(String),
    /// The plan given at start does not have the strategy's stages and groups.
    #[error("the plan given at start does not match run '{run}': {problem}")]
    PlanMismatch {
        /// The run.
        run: String,
        /// What differs.
        problem: String,
    },
    /// `MemberSkipped` with the `Requested` cause.
    #[error("a requested skip is recorded with the Skip event, not MemberSkipped")]
    RequestedSkip,
    /// A change outside the allowed-transition table (a bug if it is a parent's).
    #[error("{level:?} '{name}' cannot go from {from} to {to}")]
    Disallowed {
        /// The level.
        level: Level,
        /// Its name.
        name: String,
        /// From.
        from: UpdateState,
        /// To.
        to: UpdateState,
    },
}

fn gate_states(stage: &str, group: Option<&str>, timing: GateTiming, specs: &[GateSpec]) -> Vec<GateState> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            GateState::new(
                GateRef { stage: stage.to_string(), group: group.map(str::to_string), timing, index: i + 1 },
                spec.clone(),
            )
        })
        .collect()
}

fn group_state(stage: &str, g: &PlannedGroup) -> GroupState {
    GroupState {
        name: g.name.clone(),
        status: Status::new(),
        max_concurrency: g.max_concurrency.max(1),
        max_allowed_failures: g.max_allowed_failures,
        failure_count: 0,
        before_gates: gate_states(stage, Some(&g.name), GateTiming::Before, &g.before_gates),
        after_gates: gate_states(stage, Some(&g.name), GateTiming::After, &g.after_gates),
        members: g.members.iter().map(|m| MemberState::new(m)).collect(),
    }
}

fn stage_state(s: &PlannedStage) -> StageState {
    StageState {
        name: s.name.clone(),
        status: Status::new(),
        max_concurrency: s.max_concurrency.max(1),
        max_allowed_failures: s.max_allowed_failures,
        failure_count: 0,
        before_gates: gate_states(&s.name, None, GateTiming::Before, &s.before_gates),
        after_gates: gate_states(&s.name, None, GateTiming::After, &s.after_gates),
        after_stage_wait: (s.after_stage_wait_in_seconds > 0).then_some(WaitState {
            seconds: s.after_stage_wait_in_seconds,
            state: GateStatus::NotStarted,
            started_at: None,
            until: None,
        }),
        groups: s.groups.iter().map(|g| group_state(&s.name, g)).collect(),
    }
}

/// Counts of members by state, for progress displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Members in the plan.
    pub total: u32,
    /// Completed.
    pub completed: u32,
    /// Skipped.
    pub skipped: u32,
    /// Failed.
    pub failed: u32,
    /// Running or Stopping.
    pub in_flight: u32,
    /// Pending.
    pub pending: u32,
}

impl RunState {
    /// A new run (NotStarted) from a plan resolved now; the member set is resolved again at
    /// the first start if the driver passes a plan then.
    pub fn new(
        name: impl Into<String>,
        spec: UpgradeSpec,
        strategy: Strategy,
        plan: RunPlan,
        created_at: Timestamp,
    ) -> Result<RunState, SpecError> {
        spec.validate()?;
        let name = name.into();
        let mut run = RunState {
            stages: plan.stages.iter().map(stage_state).collect(),
            unselected: plan.unselected,
            name,
            spec,
            strategy,
            intent: Intent::NotStarted,
            status: Status::new(),
            targets: None,
            attempt: 0,
            failure_count: 0,
            skips: Vec::new(),
            created_at,
        };
        rollup(&mut run, created_at);
        Ok(run)
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&MemberState> {
        self.stages.iter().flat_map(|s| &s.groups).flat_map(|g| &g.members).find(|m| m.name == name)
    }

    /// Every member with its stage and group.
    pub fn members(&self) -> impl Iterator<Item = (&StageState, &GroupState, &MemberState)> {
        self.stages
            .iter()
            .flat_map(|s| s.groups.iter().flat_map(move |g| g.members.iter().map(move |m| (s, g, m))))
    }

    /// Every gate of the run.
    pub fn gates(&self) -> impl Iterator<Item = &GateState> {
        self.stages.iter().flat_map(|s| {
            s.before_gates
                .iter()
                .chain(s.groups.iter().flat_map(|g| g.before_gates.iter().chain(&g.after_gates)))
                .chain(&s.after_gates)
        })
    }

    /// The gate `gate`.
    pub fn gate(&self, gate: &GateRef) -> Option<&GateState> {
        self.gates().find(|g| &g.gate == gate)
    }

    /// The first stage not yet done (Completed or Skipped).
    pub fn current_stage(&self) -> Option<usize> {
        self.stages.iter().position(|s| !s.status.state.is_done())
    }

    /// Member counts.
    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for (_, _, m) in self.members() {
            p.total += 1;
            match m.status.state {
                Completed => p.completed += 1,
                Skipped => p.skipped += 1,
                Failed => p.failed += 1,
                Running | Stopping => p.in_flight += 1,
                Pending => p.pending += 1,
                _ => {}
            }
        }
        p
    }

    fn locate_member(&self, name: &str) -> Result<(usize, usize, usize), TransitionError> {
        for (si, s) in self.stages.iter().enumerate() {
            for (gi, g) in s.groups.iter().enumerate() {
                if let Some(mi) = g.members.iter().position(|m| m.name == name) {
                    return Ok((si, gi, mi));
                }
            }
        }
        Err(TransitionError::UnknownMember { run: self.name.clone(), name: name.to_string() })
    }

    fn locate_group(&self, name: &str) -> Result<(usize, usize), TransitionError> {
        for (si, s) in self.stages.iter().enumerate() {
            if let Some(gi) = s.groups.iter().position(|g| g.name == name) {
                return Ok((si, gi));
            }
        }
        Err(TransitionError::UnknownGroup { run: self.name.clone(), name: name.to_string() })
    }

    fn locate_stage(&self, name: &str) -> Result<usize, TransitionError> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| TransitionError::UnknownStage { run: self.name.clone(), name: name.to_string() })
    }

    fn gate_mut(&mut self, gate: &GateRef) -> Result<&mut GateState, TransitionError> {
        let unknown = TransitionError::UnknownGate { run: self.name.clone(), gate: gate.to_string() };
        let Some(stage) = self.stages.iter_mut().find(|s| s.name == gate.stage) else { return Err(unknown) };
        let list = match &gate.group {
            None => match gate.timing {
                GateTiming::Before => &mut stage.before_gates,
                GateTiming::After => &mut stage.after_gates,
            },
            Some(g) => {
                let Some(grp) = stage.groups.iter_mut().find(|x| &x.name == g) else { return Err(unknown) };
                match gate.timing {
                    GateTiming::Before => &mut grp.before_gates,
                    GateTiming::After => &mut grp.after_gates,
                }
            }
        };
        list.get_mut(gate.index.wrapping_sub(1)).ok_or(unknown)
    }

    /// The run may make progress (started, not stopping or halted).
    fn ensure_active(&self, action: &'static str) -> Result<(), TransitionError> {
        if self.intent == Intent::Run && matches!(self.status.state, Running | Pending) {
            Ok(())
        } else {
            Err(TransitionError::Run {
                run: self.name.clone(),
                state: self.status.state,
                action,
                hint: "the run is not making progress (start it first)",
            })
        }
    }

    /// Stage `si` is the current one and its before-gates passed.
    fn ensure_stage_open(&self, si: usize, what: &str) -> Result<(), TransitionError> {
        let not = |why: String| Err(TransitionError::NotReached { what: what.to_string(), why });
        match self.current_stage() {
            Some(c) if c == si => {}
            Some(c) if c < si => return not(format!("stage {} comes first", self.stages[c].name)),
            _ => return not(format!("stage {} is already done", self.stages[si].name)),
        }
        if !self.stages[si].before_gates.iter().all(|g| g.state.is_done()) {
            return not(format!("the gates before stage {} have not passed", self.stages[si].name));
        }
        Ok(())
    }

    /// Group `(si, gi)` is open for member work.
    fn ensure_group_open(&self, si: usize, gi: usize, what: &str) -> Result<(), TransitionError> {
        self.ensure_stage_open(si, what)?;
        let g = &self.stages[si].groups[gi];
        if !g.before_gates.iter().all(|x| x.state.is_done()) {
            return Err(TransitionError::NotReached {
                what: what.to_string(),
                why: format!("the gates before group {} have not passed", g.name),
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- rollup

fn pending_gate(gates: &[GateState]) -> Option<PendingReason> {
    gates.iter().find(|g| g.state == GateStatus::Pending).map(|g| match (&g.spec, g.starts_at) {
        (GateSpec::ScheduledStart { .. }, Some(starts_at)) => {
            PendingReason::ScheduledStart { gate: g.gate.clone(), starts_at }
        }
        _ => PendingReason::Approval { gate: g.gate.clone(), expired: g.expired.clone() },
    })
}

fn gates_done(gates: &[GateState]) -> bool {
    gates.iter().all(|g| g.state.is_done())
}

fn gates_reached(gates: &[GateState]) -> bool {
    gates.iter().any(|g| g.reached_at.is_some())
}

/// The reason of the pending child that waits least long (unknown ends last).
fn earliest<'a>(children: impl Iterator<Item = (String, &'a PendingReason)>) -> Option<PendingReason> {
    children
        .min_by_key(|(_, r)| (r.until().is_none(), r.until()))
        .map(|(on, r)| PendingReason::Waiting { on, reason: Box::new(r.clone()) })
}

/// What a stage or group rollup needs to know about its children and its own gates and wait.
struct Rollup {
    /// Why it failed, when failures exceed its threshold (or a child failed).
    failure: Option<String>,
    /// Every child is Skipped (true for none).
    all_skipped: bool,
    /// Every child is done (members: Completed, Skipped or Failed; groups: Completed, Skipped).
    children_done: bool,
    /// A member upgrade is under way inside.
    in_flight: bool,
    /// It has started, in this attempt or an earlier one.
    started: bool,
    /// A pending before-gate.
    before: Option<PendingReason>,
    /// Every before-gate passed.
    before_done: bool,
    /// A pending after-gate (or after-stage wait).
    after: Option<PendingReason>,
    /// Every after-gate (and the wait) passed.
    after_done: bool,
    /// Every child not done is waiting (Pending or NotStarted) and one is Pending: its reason.
    waiting: Option<PendingReason>,
}

/// The one precedence of states for stages and groups: failed, skipped, completed, then the
/// run's intent, then gates, work under way, after-gates, and pending children.
fn decide(r: Rollup, intent: Intent) -> (UpdateState, Option<PendingReason>, Option<String>) {
    if let Some(e) = r.failure {
        return (Failed, None, Some(e));
    }
    let (state, pending) = if !r.in_flight && r.all_skipped {
        (Skipped, None)
    } else if r.children_done && r.before_done && r.after_done {
        (Completed, None)
    } else if intent == Intent::Stop {
        (
            if r.in_flight {
                Stopping
            } else if r.started {
                Stopped
            } else {
                NotStarted
            },
            None,
        )
    } else if intent == Intent::NotStarted {
        (NotStarted, None)
    } else if let Some(p) = r.before {
        (Pending, Some(p))
    } else if r.in_flight {
        (Running, None)
    } else if r.children_done {
        match r.after {
            Some(p) => (Pending, Some(p)),
            None => (Running, None), // after-gates not reached yet: next() reaches them
        }
    } else if !r.started {
        (NotStarted, None)
    } else {
        match r.waiting {
            Some(p) => (Pending, Some(p)),
            None => (Running, None),
        }
    };
    (state, pending, None)
}

/// The reason of the child that waits least long, if every open child is waiting
/// (`waiting`: its state is Pending or NotStarted) and at least one is Pending.
fn waiting_on<'a>(
    open: impl Iterator<Item = (String, UpdateState, Option<&'a PendingReason>)>,
) -> Option<PendingReason> {
    let mut all_waiting = true;
    let mut reasons = Vec::new();
    for (on, state, reason) in open {
        all_waiting &= matches!(state, Pending | NotStarted);
        if let Some(r) = reason {
            reasons.push((on, r));
        }
    }
    if all_waiting { earliest(reasons.into_iter()) } else { None }
}

fn roll_group(g: &mut GroupState, intent: Intent, at: Timestamp) {
    let failed = g.members.iter().filter(|m| m.status.state == Failed).count() as u32;
    g.failure_count = failed;
    let failure = (failed > g.max_allowed_failures).then(|| {
        let names: Vec<&str> =
            g.members.iter().filter(|m| m.status.state == Failed).map(|m| m.name.as_str()).collect();
        format!(
            "{failed} member(s) failed ({}), more than maxAllowedFailures {}",
            names.join(", "),
            g.max_allowed_failures
        )
    });
    let settled = |s: UpdateState| matches!(s, Completed | Skipped | Failed);
    let rollup = Rollup {
        failure,
        all_skipped: g.members.iter().all(|m| m.status.state == Skipped),
        children_done: g.members.iter().all(|m| settled(m.status.state)),
        in_flight: g.in_flight() > 0,
        // Once started (this or an earlier attempt), a scope never looks unstarted again.
        started: g.status.started_at.is_some()
            || gates_reached(&g.before_gates)
            || gates_reached(&g.after_gates)
            || g.members.iter().any(|m| match m.status.state {
                NotStarted => false,
                Skipped => !matches!(m.skip, Some(SkipCause::Requested { .. })),
                _ => true,
            }),
        before: pending_gate(&g.before_gates),
        before_done: gates_done(&g.before_gates),
        after: pending_gate(&g.after_gates),
        after_done: gates_done(&g.after_gates),
        waiting: waiting_on(
            g.members
                .iter()
                .filter(|m| !settled(m.status.state))
                .map(|m| (format!("member {}", m.name), m.status.state, m.status.pending.as_ref())),
        ),
    };
    let (state, pending, error) = decide(rollup, intent);
    if state == Skipped {
        // Gates inside a skipped scope are Skipped: none lingers as Pending in `gate list`.
        g.before_gates.iter_mut().chain(&mut g.after_gates).for_each(|x| x.skip(at));
    }
    g.status.set(state, pending, at);
    g.status.error = error;
}

fn roll_stage(st: &mut StageState, intent: Intent, at: Timestamp) {
    let failed: u32 = st.groups.iter().map(|g| g.failure_count).sum();
    st.failure_count = failed;
    let failure = match st.groups.iter().find(|g| g.status.state == Failed) {
        Some(g) => Some(format!("group {} failed: {}", g.name, g.status.error.clone().unwrap_or_default())),
        None => (failed > st.max_allowed_failures).then(|| {
            format!(
                "{failed} member failure(s) across the stage, more than maxAllowedFailures {}",
                st.max_allowed_failures
            )
        }),
    };
    let wait = st.after_stage_wait.as_ref().and_then(|w| match (w.state, w.until) {
        (GateStatus::Pending, Some(until)) => {
            Some(PendingReason::AfterStageWait { stage: st.name.clone(), until })
        }
        _ => None,
    });
    let rollup = Rollup {
        failure,
        all_skipped: st.groups.iter().all(|g| g.status.state == Skipped),
        children_done: st.groups_done(),
        in_flight: st.in_flight() > 0,
        started: st.status.started_at.is_some()
            || gates_reached(&st.before_gates)
            || gates_reached(&st.after_gates)
            || st.after_stage_wait.as_ref().is_some_and(|w| w.started_at.is_some())
            || st.groups.iter().any(|g| !matches!(g.status.state, NotStarted | Skipped)),
        before: pending_gate(&st.before_gates),
        before_done: gates_done(&st.before_gates),
        // An after-gate is named before the wait: it needs a person.
        after: pending_gate(&st.after_gates).or(wait),
        after_done: gates_done(&st.after_gates) && st.wait_done(),
        waiting: waiting_on(
            st.groups
                .iter()
                .filter(|g| !g.status.state.is_done())
                // A group counts as waiting only when Pending (a NotStarted group of a started
                // stage is about to be worked on).
                .map(|g| {
                    (
                        format!("group {}", g.name),
                        if g.status.state == Pending { Pending } else { Running },
                        g.status.pending.as_ref(),
                    )
                }),
        ),
    };
    let (state, pending, error) = decide(rollup, intent);
    if state == Skipped {
        st.before_gates.iter_mut().chain(&mut st.after_gates).for_each(|x| x.skip(at));
        if let Some(w) = &mut st.after_stage_wait
            && !w.state.is_done()
        {
            w.state = GateStatus::Skipped;
        }
    }
    st.status.set(state, pending, at);
    st.status.error = error;
}

fn roll_run(run: &mut RunState, at: Timestamp) {
    run.failure_count = run.stages.iter().map(|s| s.failure_count).sum();
    let in_flight = run.stages.iter().any(|s| s.in_flight() > 0);
    let mut error = None;
    let (state, pending) = if run.intent == Intent::NotStarted {
        // Not started is not finished, even when every stage looks skipped today: the member
        // set is resolved again at the first start.
        (NotStarted, None)
    } else if let Some(s) = run.stages.iter().find(|s| s.status.state == Failed) {
        error = Some(format!("stage {} failed: {}", s.name, s.status.error.clone().unwrap_or_default()));
        (Failed, None)
    } else if !in_flight && run.stages.iter().all(|s| s.status.state == Skipped) {
        (Skipped, None)
    } else if run.stages.iter().all(|s| s.status.state.is_done()) {
        (Completed, None)
    } else if run.intent == Intent::Stop {
        (if in_flight { Stopping } else { Stopped }, None)
    } else {
        match run.current_stage().map(|i| &run.stages[i]) {
            Some(s) if s.status.state == Pending => (
                Pending,
                s.status.pending.as_ref().map(|r| PendingReason::Waiting {
                    on: format!("stage {}", s.name),
                    reason: Box::new(r.clone()),
                }),
            ),
            _ => (Running, None),
        }
    };
    run.status.set(state, pending, at);
    run.status.error = error;
}

/// Recomputes every parent from its children; a failure halts the run.
fn rollup(run: &mut RunState, at: Timestamp) {
    let intent = run.intent;
    for st in &mut run.stages {
        for g in &mut st.groups {
            roll_group(g, intent, at);
        }
        roll_stage(st, intent, at);
    }
    roll_run(run, at);
    if run.status.state == Failed && run.intent == Intent::Run {
        // Fail-fast: nothing new starts anywhere; upgrades under way finish and are recorded.
        run.intent = Intent::Stop;
        halt_members(run, at);
        rollup(run, at);
    }
}

fn halt_members(run: &mut RunState, at: Timestamp) {
    for st in &mut run.stages {
        for g in &mut st.groups {
            for m in &mut g.members {
                match m.status.state {
                    Running => m.status.set_member(Stopping, None, at),
                    Pending => {
                        m.status.set_member(Stopped, None, at);
                        m.pending_since = None;
                    }
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------- apply

fn snapshot(run: &RunState) -> BTreeMap<(Level, String), UpdateState> {
    let mut out = BTreeMap::new();
    out.insert((Level::Run, run.name.clone()), run.status.state);
    for s in &run.stages {
        out.insert((Level::Stage, s.name.clone()), s.status.state);
        for g in &s.groups {
            out.insert((Level::Group, g.name.clone()), g.status.state);
            for m in &g.members {
                out.insert((Level::Member, m.name.clone()), m.status.state);
            }
        }
    }
    out
}

/// Applies `event` to `run`: the new state, or why the event does not fit (the run is then
/// unchanged — the store records nothing).
pub fn apply(run: &RunState, event: &Event) -> Result<RunState, TransitionError> {
    let before = snapshot(run);
    let mut next = run.clone();
    mutate(&mut next, event)?;
    rollup(&mut next, event.at());
    for (key, to) in snapshot(&next) {
        if let Some(&from) = before.get(&key)
            && !allowed(key.0, from, to)
        {
            return Err(TransitionError::Disallowed { level: key.0, name: key.1, from, to });
        }
    }
    Ok(next)
}

fn member_state_error(m: &MemberState, action: &'static str) -> TransitionError {
    TransitionError::State { what: format!("member {}", m.name), state: m.status.state.to_string(), action }
}

fn mutate(run: &mut RunState, event: &Event) -> Result<(), TransitionError> {
    let at = event.at();
    match event {
        Event::Start { targets, plan, .. } => {
            if !matches!(run.status.state, NotStarted | Failed | Stopped) {
                return Err(TransitionError::Run {
                    run: run.name.clone(),
                    state: run.status.state,
                    action: "start",
                    hint: match run.status.state {
                        Stopping => "wait until the member upgrades under way finish (Stopped)",
                        Completed => "it is finished; create a new run, or retry --failed if members failed",
                        Skipped => "every stage is skipped: there is nothing to do",
                        _ => "it is already running",
                    },
                });
            }
            match (&run.targets, targets) {
                (None, None) => return Err(TransitionError::TargetsRequired(run.name.clone())),
                (None, Some(t)) => {
                    if let Some(p) = plan {
                        replan(run, p)?;
                    }
                    run.targets = Some(t.clone());
                }
                (Some(_), None) if plan.is_none() => {}
                (Some(_), _) => return Err(TransitionError::AlreadyFrozen(run.name.clone())),
            }
            if run.status.state != NotStarted {
                reset_for_restart(run, true, at);
            }
            run.intent = Intent::Run;
            run.attempt += 1;
        }
        Event::Stop { .. } => {
            if !(run.intent == Intent::Run && matches!(run.status.state, Running | Pending)) {
                return Err(TransitionError::Run {
                    run: run.name.clone(),
                    state: run.status.state,
                    action: "stop",
                    hint: "only a Running or Pending run can be stopped",
                });
            }
            run.intent = Intent::Stop;
            halt_members(run, at);
        }
        Event::RetryFailed { .. } => {
            if !matches!(run.status.state, Failed | Stopped | Completed) {
                return Err(TransitionError::Run {
                    run: run.name.clone(),
                    state: run.status.state,
                    action: "retry failed members",
                    hint: "retry applies to a Failed, Stopped or Completed run",
                });
            }
            if run.failure_count == 0 {
                return Err(TransitionError::State {
                    what: format!("run {}", run.name),
                    state: "without failed members".into(),
                    action: "retry failed members",
                });
            }
            reset_for_restart(run, false, at);
            run.intent = Intent::Run;
            run.attempt += 1;
        }
        Event::Skip { targets, by, .. } => skip(run, targets, by.as_deref(), at)?,
        Event::ApproveGate { gate, by, expires_at, .. } => {
            if run.status.state.is_done() {
                return Err(TransitionError::Run {
                    run: run.name.clone(),
                    state: run.status.state,
                    action: "approve a gate",
                    hint: "the run is finished",
                });
            }
            let g = run.gate_mut(gate)?;
            let approval = Approval { by: by.clone(), at, expires_at: *expires_at };
            match g.state {
                GateStatus::NotStarted => g.approval = Some(approval),
                GateStatus::Pending => {
                    g.approval = Some(approval);
                    g.complete(at);
                }
                s => {
                    return Err(TransitionError::State {
                        what: format!("gate {gate}"),
                        state: format!("{s:?}"),
                        action: "approve it",
                    });
                }
            }
        }
        Event::GateReached { gate, .. } => {
            run.ensure_active("reach a gate")?;
            let si = run.locate_stage(&gate.stage)?;
            let what = format!("gate {gate}");
            match (&gate.group, gate.timing) {
                (None, GateTiming::Before) => {
                    let not = |why: String| Err(TransitionError::NotReached { what: what.clone(), why });
                    match run.current_stage() {
                        Some(c) if c == si => {}
                        _ => return not(format!("stage {} is not the current stage", gate.stage)),
                    }
                }
                (None, GateTiming::After) => {
                    run.ensure_stage_open(si, &what)?;
                    if !run.stages[si].groups_done() {
                        return Err(TransitionError::NotReached {
                            what,
                            why: format!("groups of stage {} are still working", gate.stage),
                        });
                    }
                }
                (Some(g), timing) => {
                    let (gsi, gi) = run.locate_group(g)?;
                    if gsi != si {
                        return Err(TransitionError::UnknownGate {
                            run: run.name.clone(),
                            gate: gate.to_string(),
                        });
                    }
                    run.ensure_stage_open(si, &what)?;
                    if timing == GateTiming::After {
                        run.ensure_group_open(si, gi, &what)?;
                        let grp = &run.stages[si].groups[gi];
                        if !grp.members.iter().all(|m| matches!(m.status.state, Completed | Skipped | Failed))
                        {
                            return Err(TransitionError::NotReached {
                                what,
                                why: format!("members of group {g} are still working"),
                            });
                        }
                    }
                }
            }
            let g = run.gate_mut(gate)?;
            if g.state != GateStatus::NotStarted {
                return Err(TransitionError::State {
                    what: format!("gate {gate}"),
                    state: format!("{:?}", g.state),
                    action: "reach it",
                });
            }
            g.reach(at);
        }
        Event::GateTimeReached { gate, .. } => {
            let g = run.gate_mut(gate)?;
            match (g.state, g.starts_at) {
                (GateStatus::Pending, Some(t)) if t <= at => g.complete(at),
                _ => {
                    return Err(TransitionError::State {
                        what: format!("gate {gate}"),
                        state: format!("{:?} (starts at {:?})", g.state, g.starts_at),
                        action: "complete it on its schedule",
                    });
                }
            }
        }
        Event::AfterStageWaitStarted { stage, .. } => {
            run.ensure_active("start the after-stage wait")?;
            let si = run.locate_stage(stage)?;
            let what = format!("the after-stage wait of {stage}");
            run.ensure_stage_open(si, &what)?;
            if !run.stages[si].groups_done() {
                return Err(TransitionError::NotReached { what, why: "its groups are still working".into() });
            }
            let w = wait_mut(run, si)?;
            if w.state != GateStatus::NotStarted {
                return Err(TransitionError::State {
                    what,
                    state: format!("{:?}", w.state),
                    action: "start it",
                });
            }
            w.state = GateStatus::Pending;
            w.started_at = Some(at);
            w.until = Some(crate::duration::timestamp_after(at, w.seconds));
        }
        Event::AfterStageWaitElapsed { stage, .. } => {
            let si = run.locate_stage(stage)?;
            let w = wait_mut(run, si)?;
            match (w.state, w.until) {
                (GateStatus::Pending, Some(u)) if u <= at => w.state = GateStatus::Completed,
                _ => {
                    return Err(TransitionError::State {
                        what: format!("the after-stage wait of {stage}"),
                        state: format!("{:?} (until {:?})", w.state, w.until),
                        action: "end it",
                    });
                }
            }
        }
        Event::MemberStarted { member, target, operation, window_closes_at, .. } => {
            run.ensure_active("start a member")?;
            let (si, gi, mi) = run.locate_member(member)?;
            run.ensure_group_open(si, gi, &format!("member {member}"))?;
            let m = &run.stages[si].groups[gi].members[mi];
            if !matches!(m.status.state, NotStarted | Pending) {
                return Err(member_state_error(m, "start it"));
            }
            let (st, g) = (&run.stages[si], &run.stages[si].groups[gi]);
            if g.in_flight() >= g.max_concurrency {
                return Err(TransitionError::Concurrency {
                    member: member.clone(),
                    scope: format!("group {}", g.name),
                    max: g.max_concurrency,
                });
            }
            if st.in_flight() >= st.max_concurrency {
                return Err(TransitionError::Concurrency {
                    member: member.clone(),
                    scope: format!("stage {}", st.name),
                    max: st.max_concurrency,
                });
            }
            let m = &mut run.stages[si].groups[gi].members[mi];
            m.status.set_member(Running, None, at);
            m.status.started_at = Some(at);
            m.status.error = None;
            m.status.message = None;
            m.pending_since = None;
            m.target = Some(target.clone());
            m.operation = operation.clone();
            m.window_closes_at = *window_closes_at;
            m.attempts += 1;
        }
        Event::MemberSucceeded { member, .. } | Event::MemberFailed { member, .. } => {
            let failed = matches!(event, Event::MemberFailed { .. });
            let (si, gi, mi) = run.locate_member(member)?;
            let m = &mut run.stages[si].groups[gi].members[mi];
            if !m.status.state.in_flight() {
                return Err(member_state_error(
                    m,
                    if failed { "record a failure" } else { "record a success" },
                ));
            }
            m.unfinished = false;
            if failed {
                m.status.set_member(Failed, None, at);
                m.status.error = message_of(event);
            } else {
                m.status.set_member(Completed, None, at);
                m.status.message = message_of(event);
            }
        }
        Event::MemberPaused { member, message, .. } | Event::MemberUnreachable { member, message, .. } => {
            let (reason, action) = match event {
                Event::MemberPaused { .. } => {
                    (PendingReason::Paused { message: message.clone() }, "pause it")
                }
                _ => (PendingReason::Unavailable { message: message.clone() }, "wait for it to be reachable"),
            };
            let (si, gi, mi) = run.locate_member(member)?;
            let m = &mut run.stages[si].groups[gi].members[mi];
            if m.status.state.in_flight() {
                m.unfinished = true;
            }
            match m.status.state {
                Running => {
                    m.pending_since = Some(at);
                    m.status.set_member(Pending, Some(reason), at);
                }
                Stopping => {
                    m.status.set_member(Stopped, None, at);
                    m.status.message = Some(reason.to_string());
                }
                _ => return Err(member_state_error(m, action)),
            }
        }
        Event::MemberPending { member, reason, .. } => {
            run.ensure_active("mark a member pending")?;
            let (si, gi, mi) = run.locate_member(member)?;
            run.ensure_group_open(si, gi, &format!("member {member}"))?;
            let m = &mut run.stages[si].groups[gi].members[mi];
            if !matches!(m.status.state, NotStarted | Pending) {
                return Err(member_state_error(m, "mark it pending"));
            }
            m.pending_since = m.pending_since.or(Some(at));
            m.status.set_member(Pending, Some(reason.clone()), at);
        }
        Event::MemberUnblocked { member, .. } => {
            let (si, gi, mi) = run.locate_member(member)?;
            let m = &mut run.stages[si].groups[gi].members[mi];
            if m.status.state != Pending {
                return Err(member_state_error(m, "unblock it"));
            }
            m.pending_since = None;
            m.status.set_member(NotStarted, None, at);
        }
        Event::MemberSkipped { member, cause, .. } => {
            if matches!(cause, SkipCause::Requested { .. }) {
                return Err(TransitionError::RequestedSkip);
            }
            run.ensure_active("skip a member")?;
            let (si, gi, mi) = run.locate_member(member)?;
            run.ensure_group_open(si, gi, &format!("member {member}"))?;
            let m = &mut run.stages[si].groups[gi].members[mi];
            if !matches!(m.status.state, NotStarted | Pending) {
                return Err(member_state_error(m, "skip it"));
            }
            m.skip_with(cause.clone(), at);
        }
        Event::DriverTookOver { .. } => {}
        Event::MemberRelaunched { member, .. } => {
            let (si, gi, mi) = run.locate_member(member)?;
            let m = &run.stages[si].groups[gi].members[mi];
            if !m.status.state.in_flight() {
                return Err(member_state_error(m, "relaunch its upgrade"));
            }
        }
        Event::StopCompleted { .. } => {
            if !(run.intent == Intent::Stop && run.status.state == Stopped) {
                return Err(TransitionError::Run {
                    run: run.name.clone(),
                    state: run.status.state,
                    action: "record a completed stop",
                    hint: "only a run stopped on request has completed a stop",
                });
            }
        }
    }
    Ok(())
}

/// The event that follows `event` on its own, if any: when applying it took a run that was
/// asked to stop to Stopped (its last upgrade under way finished, or nothing was under way),
/// [`Event::StopCompleted`]. Callers store both events in one write so the history says when
/// the stop was asked for *and* when it took effect.
pub fn follow_up(before: &RunState, after: &RunState, at: Timestamp) -> Option<Event> {
    (after.intent == Intent::Stop && after.status.state == Stopped && before.status.state != Stopped)
        .then_some(Event::StopCompleted { at })
}

fn message_of(event: &Event) -> Option<String> {
    match event {
        Event::MemberSucceeded { message, .. } => message.clone(),
        Event::MemberFailed { error, .. } => Some(error.clone()),
        _ => None,
    }
}

fn wait_mut(run: &mut RunState, si: usize) -> Result<&mut WaitState, TransitionError> {
    let name = run.stages[si].name.clone();
    run.stages[si].after_stage_wait.as_mut().ok_or(TransitionError::State {
        what: format!("stage {name}"),
        state: "without an after-stage wait".into(),
        action: "use its after-stage wait",
    })
}

/// Replaces the member set from creation with the one resolved at the first start, keeping
/// requested member skips (by name), gate pre-approvals and skipped gates.
fn replan(run: &mut RunState, plan: &RunPlan) -> Result<(), TransitionError> {
    let mismatch = |problem: String| TransitionError::PlanMismatch { run: run.name.clone(), problem };
    let names = |s: &[String]| s.join(", ");
    let old: Vec<String> = run.stages.iter().map(|s| s.name.clone()).collect();
    let new: Vec<String> = plan.stages.iter().map(|s| s.name.clone()).collect();
    if old != new {
        return Err(mismatch(format!("stages [{}] instead of [{}]", names(&new), names(&old))));
    }
    for (st, ps) in run.stages.iter().zip(&plan.stages) {
        let old: Vec<String> = st.groups.iter().map(|g| g.name.clone()).collect();
        let new: Vec<String> = ps.groups.iter().map(|g| g.name.clone()).collect();
        if old != new {
            return Err(mismatch(format!(
                "stage {} has groups [{}] instead of [{}]",
                st.name,
                names(&new),
                names(&old)
            )));
        }
    }
    // Rebuild from the new plan (an empty group skipped at creation may have members now),
    // keep the pre-approvals, and replay the skip commands given before the start.
    let approvals: BTreeMap<GateRef, Approval> =
        run.gates().filter_map(|g| g.approval.clone().map(|a| (g.gate.clone(), a))).collect();
    run.stages = plan.stages.iter().map(stage_state).collect();
    for (gate, approval) in approvals {
        if let Ok(g) = run.gate_mut(&gate) {
            g.approval = Some(approval);
        }
    }
    for record in run.skips.clone() {
        for t in &record.targets {
            // A member no longer planned was skipped for nothing: nothing to replay.
            let _ = skip_one(run, t, record.by.as_deref(), record.at);
        }
    }
    run.unselected = plan.unselected.clone();
    Ok(())
}

/// Re-applies failed work (and, for a start, skipped work) of a Failed/Stopped/Completed run.
fn reset_for_restart(run: &mut RunState, skipped_too: bool, at: Timestamp) {
    for st in &mut run.stages {
        for g in &mut st.groups {
            for m in &mut g.members {
                match m.status.state {
                    Failed | Stopped => m.reset(),
                    Skipped if skipped_too && m.skip.as_ref().is_some_and(SkipCause::leaves_work) => {
                        m.reset()
                    }
                    Stopping => m.status.set_member(Running, None, at),
                    _ => {}
                }
            }
            if skipped_too {
                g.before_gates.iter_mut().chain(&mut g.after_gates).for_each(GateState::reset_skipped);
            }
        }
        if skipped_too {
            st.before_gates.iter_mut().chain(&mut st.after_gates).for_each(GateState::reset_skipped);
            if let Some(w) = &mut st.after_stage_wait
                && w.state == GateStatus::Skipped
            {
                *w = WaitState {
                    seconds: w.seconds,
                    state: GateStatus::NotStarted,
                    started_at: None,
                    until: None,
                };
            }
        }
    }
}

fn skip(
    run: &mut RunState,
    targets: &[SkipTarget],
    by: Option<&str>,
    at: Timestamp,
) -> Result<(), TransitionError> {
    if run.status.state.is_done() {
        return Err(TransitionError::Run {
            run: run.name.clone(),
            state: run.status.state,
            action: "skip",
            hint: "the run is finished",
        });
    }
    if targets.is_empty() {
        return Err(TransitionError::State {
            what: "skip".into(),
            state: "without targets".into(),
            action: "skip nothing (name Member:m, Group:g, Stage:s or AfterStageWait:s)",
        });
    }
    // Validate everything first so that a bad target changes nothing.
    for t in targets {
        match t {
            SkipTarget::Member(n) => {
                let (si, gi, mi) = run.locate_member(n)?;
                let m = &run.stages[si].groups[gi].members[mi];
                if m.status.state.in_flight() {
                    return Err(TransitionError::State {
                        what: format!("member {n}"),
                        state: format!(
                            "{} (its upgrade is under way and finishes either way)",
                            m.status.state
                        ),
                        action: "skip it",
                    });
                }
                if m.status.state == Completed {
                    return Err(member_state_error(m, "skip it"));
                }
            }
            SkipTarget::Group(n) => {
                let (si, gi) = run.locate_group(n)?;
                let g = &run.stages[si].groups[gi];
                if g.status.state == Completed {
                    return Err(TransitionError::State {
                        what: format!("group {n}"),
                        state: "Completed".into(),
                        action: "skip it",
                    });
                }
            }
            SkipTarget::Stage(n) => {
                let si = run.locate_stage(n)?;
                if run.stages[si].status.state == Completed {
                    return Err(TransitionError::State {
                        what: format!("stage {n}"),
                        state: "Completed".into(),
                        action: "skip it",
                    });
                }
            }
            SkipTarget::AfterStageWait(n) => {
                let si = run.locate_stage(n)?;
                let w = wait_mut(run, si)?;
                if w.state == GateStatus::Completed {
                    return Err(TransitionError::State {
                        what: format!("the after-stage wait of {n}"),
                        state: "Completed".into(),
                        action: "skip it",
                    });
                }
            }
        }
    }
    for t in targets {
        skip_one(run, t, by, at)?;
    }
    run.skips.push(SkipRecord { targets: targets.to_vec(), by: by.map(str::to_string), at });
    Ok(())
}

/// Applies one skip target (already validated, or replayed onto a new plan).
fn skip_one(
    run: &mut RunState,
    t: &SkipTarget,
    by: Option<&str>,
    at: Timestamp,
) -> Result<(), TransitionError> {
    let cause = SkipCause::Requested { target: t.clone(), by: by.map(str::to_string) };
    let skip_member = |m: &mut MemberState| {
        if matches!(m.status.state, NotStarted | Pending | Failed | Stopped) {
            m.skip_with(cause.clone(), at);
        }
    };
    let skip_group = |g: &mut GroupState| {
        g.members.iter_mut().for_each(skip_member);
        g.before_gates.iter_mut().chain(&mut g.after_gates).for_each(|x| x.skip(at));
    };
    match t {
        SkipTarget::Member(n) => {
            let (si, gi, mi) = run.locate_member(n)?;
            skip_member(&mut run.stages[si].groups[gi].members[mi]);
        }
        SkipTarget::Group(n) => {
            let (si, gi) = run.locate_group(n)?;
            skip_group(&mut run.stages[si].groups[gi]);
        }
        SkipTarget::Stage(n) => {
            let si = run.locate_stage(n)?;
            let st = &mut run.stages[si];
            st.groups.iter_mut().for_each(skip_group);
            st.before_gates.iter_mut().chain(&mut st.after_gates).for_each(|x| x.skip(at));
            if let Some(w) = &mut st.after_stage_wait
                && !w.state.is_done()
            {
                w.state = GateStatus::Skipped;
            }
        }
        SkipTarget::AfterStageWait(n) => {
            let si = run.locate_stage(n)?;
            let w = wait_mut(run, si)?;
            if !w.state.is_done() {
                w.state = GateStatus::Skipped;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- next

enum Assessment {
    Skip(SkipCause),
    Blocked(PendingReason),
    Ready { target: MemberTarget, closes_at: Option<Timestamp> },
}

fn assess(
    run: &RunState,
    targets: &Targets,
    m: &MemberState,
    facts: Option<&MemberFacts>,
    now: Timestamp,
) -> Assessment {
    let Some(f) = facts else { return Assessment::Skip(SkipCause::NotInFleet) };
    if let (true, Some(t)) = (m.unfinished, &m.target) {
        // Paused mid-upgrade: continue to the same target, whatever the member looks like now.
        return ready_when_open(t.clone(), f, now);
    }
    let target = match target::member_target(targets, &f.versions) {
        Ok(t) => t,
        Err(family) => return Assessment::Skip(SkipCause::NoTargetImage { family }),
    };
    if run.spec.at_most_one_minor
        && let (Some(cp), Some(t)) = (&f.versions.control_plane, &target.kubernetes)
        && t.minor_version().minors_ahead_of(cp.minor_version()) > 1
    {
        return Assessment::Skip(SkipCause::TooFarBehind { version: cp.clone(), target: t.clone() });
    }
    if let Some(message) = target::at_target(run.spec.upgrade_type, &target, &f.versions) {
        return Assessment::Skip(SkipCause::AtTarget { message });
    }
    ready_when_open(target, f, now)
}

/// Ready for `target` unless the member is unavailable or its window is closed.
fn ready_when_open(target: MemberTarget, f: &MemberFacts, now: Timestamp) -> Assessment {
    if let Some(message) = &f.unavailable {
        return Assessment::Blocked(PendingReason::Unavailable { message: message.clone() });
    }
    let mut closes_at = None;
    if let Some(w) = &f.window {
        match w.schedule() {
            Err(e) => return Assessment::Blocked(PendingReason::WindowInvalid { message: e.to_string() }),
            Ok(s) if !s.is_open(now) => {
                return Assessment::Blocked(PendingReason::WindowClosed { opens_at: s.next_opening(now) });
            }
            Ok(s) => closes_at = s.closes_at(now),
        }
    }
    Assessment::Ready { target, closes_at }
}

/// Records gate decisions; true when every gate of the list has passed.
fn gate_step(
    gates: &[GateState],
    now: Timestamp,
    out: &mut Vec<Decision>,
    waits: &mut Vec<(Option<Timestamp>, String)>,
) -> bool {
    for g in gates {
        match g.state {
            GateStatus::NotStarted => {
                out.push(Decision::Record(Event::GateReached { gate: g.gate.clone(), at: now }))
            }
            GateStatus::Pending => match g.starts_at {
                Some(t) if t <= now => {
                    out.push(Decision::Record(Event::GateTimeReached { gate: g.gate.clone(), at: now }))
                }
                Some(t) => waits.push((Some(t), format!("{} at {t}", g.title()))),
                None => waits.push((None, format!("approval of gate {}", g.gate))),
            },
            GateStatus::Completed | GateStatus::Skipped => {}
        }
    }
    gates_done(gates)
}

/// What the driver should do now. Decisions of one call are independent of each other;
/// apply the `Record`s (and the `StartMember`s' events), then call again until only a `Wait`
/// (or nothing: the run is finished, stopped or not started) comes back.
pub fn next(run: &RunState, facts: &Facts, now: Timestamp) -> Vec<Decision> {
    let mut out = Vec::new();
    if run.status.state == Stopping {
        let n = run.progress().in_flight;
        return vec![Decision::Wait {
            until: None,
            reason: format!("stopping: {n} member upgrade(s) under way"),
        }];
    }
    let Some(targets) = &run.targets else { return out };
    if run.intent != Intent::Run || !matches!(run.status.state, Running | Pending) {
        // A failed run halts, but upgrades already under way still report their outcome.
        let n = run.progress().in_flight;
        if n > 0 {
            out.push(Decision::Wait {
                until: None,
                reason: format!("run {}: {n} member upgrade(s) under way", run.status.state),
            });
        }
        return out;
    }
    let Some(si) = run.current_stage() else { return out };
    let st = &run.stages[si];
    let mut waits: Vec<(Option<Timestamp>, String)> = Vec::new();
    if gate_step(&st.before_gates, now, &mut out, &mut waits) {
        let mut stage_slots = st.max_concurrency.saturating_sub(st.in_flight());
        for g in &st.groups {
            if g.status.state.is_done() || g.status.state == Failed {
                continue;
            }
            if !gate_step(&g.before_gates, now, &mut out, &mut waits) {
                continue;
            }
            if g.members.iter().all(|m| matches!(m.status.state, Completed | Skipped | Failed)) {
                gate_step(&g.after_gates, now, &mut out, &mut waits);
                continue;
            }
            let mut group_slots = g.max_concurrency.saturating_sub(g.in_flight());
            let mut candidates: Vec<(WindowPriority, usize, &MemberState)> = g
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| matches!(m.status.state, NotStarted | Pending))
                .map(|(i, m)| {
                    let w = facts.members.get(&m.name).and_then(|f| f.window.as_ref());
                    (window::priority(w, now), i, m)
                })
                .collect();
            candidates.sort_by_key(|(p, i, _)| (*p, *i));
            for (_, _, m) in candidates {
                let member = m.name.clone();
                match assess(run, targets, m, facts.members.get(&m.name), now) {
                    Assessment::Skip(cause) => {
                        out.push(Decision::Record(Event::MemberSkipped { member, at: now, cause }))
                    }
                    Assessment::Blocked(reason) => {
                        let since = m.pending_since.unwrap_or(now);
                        let budget = facts
                            .members
                            .get(&m.name)
                            .and_then(|f| f.pending_budget_seconds)
                            .or(run.spec.pending_budget_seconds);
                        // A stored budget past the cap (an older refit accepted any) counts as
                        // the cap: never a panic on every daemon start.
                        let deadline = budget.map(|b| (crate::duration::timestamp_after(since, b), b));
                        match deadline {
                            Some((d, budget_seconds)) if d <= now => {
                                out.push(Decision::Record(Event::MemberSkipped {
                                    member,
                                    at: now,
                                    cause: SkipCause::Deferred {
                                        pending_since: since,
                                        budget_seconds,
                                        reason,
                                    },
                                }));
                            }
                            _ => {
                                let until = match (reason.until(), deadline.map(|d| d.0)) {
                                    (Some(a), Some(b)) => Some(a.min(b)),
                                    (a, b) => a.or(b),
                                };
                                waits.push((until, format!("member {}: {reason}", m.name)));
                                if m.status.state != Pending || m.status.pending.as_ref() != Some(&reason) {
                                    out.push(Decision::Record(Event::MemberPending {
                                        member,
                                        at: now,
                                        reason,
                                    }));
                                }
                            }
                        }
                    }
                    Assessment::Ready { target, closes_at } => {
                        if group_slots > 0 && stage_slots > 0 {
                            group_slots -= 1;
                            stage_slots -= 1;
                            out.push(Decision::StartMember {
                                stage: st.name.clone(),
                                group: g.name.clone(),
                                member,
                                target,
                                window_closes_at: closes_at,
                            });
                        } else if m.status.state == Pending {
                            out.push(Decision::Record(Event::MemberUnblocked { member, at: now }));
                        }
                    }
                }
            }
        }
        if st.groups_done() {
            gate_step(&st.after_gates, now, &mut out, &mut waits);
            if let Some(w) = &st.after_stage_wait {
                match (w.state, w.until) {
                    (GateStatus::NotStarted, _) => out.push(Decision::Record(Event::AfterStageWaitStarted {
                        stage: st.name.clone(),
                        at: now,
                    })),
                    (GateStatus::Pending, Some(u)) if u <= now => {
                        out.push(Decision::Record(Event::AfterStageWaitElapsed {
                            stage: st.name.clone(),
                            at: now,
                        }))
                    }
                    (GateStatus::Pending, u) => waits.push((u, format!("after-stage wait of {}", st.name))),
                    _ => {}
                }
            }
        }
    }
    if out.is_empty() {
        let in_flight = st.in_flight();
        if in_flight > 0 {
            waits.push((None, format!("{in_flight} member upgrade(s) under way")));
        }
        let until = waits.iter().filter_map(|(t, _)| *t).min();
        let mut reasons: Vec<String> = waits.into_iter().map(|(_, r)| r).collect();
        reasons.dedup();
        let more = reasons.len().saturating_sub(5);
        reasons.truncate(5);
        let mut reason = reasons.join("; ");
        if more > 0 {
            reason.push_str(&format!("; and {more} more"));
        }
        out.push(Decision::Wait { until, reason });
    }
    out
}

#[cfg(test)]
mod tests;
