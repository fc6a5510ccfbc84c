//! What changes a run (events), what the driver knows (facts), what `next` decides (decisions), and why an event may not fit (transition errors).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::fleet::gate::GateRef;
use crate::fleet::strategy::RunPlan;
use crate::fleet::target::{MemberTarget, MemberVersions, Targets};
use crate::fleet::window::MaintenanceWindow;

use super::reason::*;
use super::state::*;

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
    /// What the driver's probes of the health gates due ([`super::RunState::health_gates_due`])
    /// saw, by (stage, gate name).
    #[serde(skip)]
    pub health: BTreeMap<(String, String), crate::health::Observation>,
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
    /// The stage's groups are done: its health gate starts being probed (from [`next`]).
    HealthGateReached {
        /// The stage.
        stage: String,
        /// The gate's name.
        gate: String,
        /// When.
        at: Timestamp,
    },
    /// A probe of a stage's health gate (from [`next`], with the driver's observation):
    /// judged by the soak rule, it passes the gate, keeps it waiting, or fails it — which
    /// pauses (stops) or fails the run as its `onGateFailure` says.
    HealthGateObserved {
        /// The stage.
        stage: String,
        /// The gate's name.
        gate: String,
        /// When.
        at: Timestamp,
        /// What the probe saw.
        observation: crate::health::Observation,
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
            | Event::HealthGateReached { at, .. }
            | Event::HealthGateObserved { at, .. }
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
