//! The run tree: the status shared by every scope, members, groups, stages and the run itself; a new run from a plan, progress counts and the queries on the tree.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::fleet::gate::{GateRef, GateSpec, GateState, GateStatus, GateTiming};
use crate::fleet::strategy::{PlannedGroup, PlannedStage, RunPlan, Strategy};
use crate::fleet::target::{MemberTarget, SpecError, Targets, UpgradeSpec};

use super::event::*;
use super::health::*;
use super::reason::*;
use super::rollup::*;
use super::state::*;
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
    pub(super) fn new() -> Status {
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
    pub(super) fn set(&mut self, state: UpdateState, pending: Option<PendingReason>, at: Timestamp) {
        self.set_as(!matches!(state, NotStarted | Skipped), state, pending, at);
    }

    /// Moves a member to `state` at `at`. Only its upgrade starts it (Running; MemberStarted
    /// records the instant): a member Pending on a closed window, or Stopped before it ever
    /// ran, never started.
    pub(super) fn set_member(&mut self, state: UpdateState, pending: Option<PendingReason>, at: Timestamp) {
        self.set_as(state.in_flight(), state, pending, at);
    }

    pub(super) fn set_as(
        &mut self,
        starts: bool,
        state: UpdateState,
        pending: Option<PendingReason>,
        at: Timestamp,
    ) {
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

pub(super) fn is_zero(n: &u64) -> bool {
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
    pub(super) fn new(name: &str) -> MemberState {
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
    pub(super) fn reset(&mut self) {
        self.status = Status::new();
        self.skip = None;
        self.pending_since = None;
        if !self.unfinished {
            self.target = None;
        }
        self.window_closes_at = None;
    }

    pub(super) fn skip_with(&mut self, cause: SkipCause, at: Timestamp) {
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
    /// Health gates checked after its groups are done (alongside the after-gates and the
    /// wait), before the next stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_gates: Vec<HealthGateState>,
    /// Groups.
    pub groups: Vec<GroupState>,
}

impl StageState {
    /// Members of the stage whose upgrade is under way.
    pub fn in_flight(&self) -> u32 {
        self.groups.iter().map(GroupState::in_flight).sum()
    }

    pub(super) fn groups_done(&self) -> bool {
        self.groups.iter().all(|g| g.status.state.is_done())
    }

    pub(super) fn wait_done(&self) -> bool {
        self.after_stage_wait.as_ref().is_none_or(|w| w.state.is_done())
    }

    /// The health gate named `name`.
    pub fn health_gate(&self, name: &str) -> Option<&HealthGateState> {
        self.health_gates.iter().find(|h| h.gate.name == name)
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

pub(super) fn gate_states(
    stage: &str,
    group: Option<&str>,
    timing: GateTiming,
    specs: &[GateSpec],
) -> Vec<GateState> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            GateState::new(
                GateRef {
                    stage: stage.to_string(),
                    group: group.map(str::to_string),
                    timing,
                    index: i.saturating_add(1),
                },
                spec.clone(),
            )
        })
        .collect()
}

pub(super) fn group_state(stage: &str, g: &PlannedGroup) -> GroupState {
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

pub(super) fn stage_state(s: &PlannedStage) -> StageState {
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
        health_gates: health_states(&s.health_gates),
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

    /// Whether the run has work under way or still ahead of it without anyone acting: not
    /// started, running, pending, stopping, or a member upgrade still in flight. What a
    /// `--wait` waits out (Completed, Failed, Stopped and Skipped are where it rests).
    pub fn under_way(&self) -> bool {
        matches!(
            self.status.state,
            UpdateState::NotStarted | UpdateState::Running | UpdateState::Pending | UpdateState::Stopping
        ) || self.progress().in_flight > 0
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

    /// The health gates of the current stage whose probe is due at `now` (the driver probes
    /// these and passes the observations in [`Facts::health`]): only while the run makes
    /// progress and the stage's groups are done.
    pub fn health_gates_due(&self, now: Timestamp) -> Vec<(String, crate::health::HealthGate)> {
        if self.intent != Intent::Run || !matches!(self.status.state, Running | Pending) {
            return Vec::new();
        }
        let Some(st) = self.current_stage().and_then(|i| self.stages.get(i)) else { return Vec::new() };
        if !st.groups_done() {
            return Vec::new();
        }
        st.health_gates.iter().filter(|h| h.due(now)).map(|h| (st.name.clone(), h.gate.clone())).collect()
    }

    /// The first stage not yet done (Completed or Skipped).
    pub fn current_stage(&self) -> Option<usize> {
        self.stages.iter().position(|s| !s.status.state.is_done())
    }

    /// Member counts.
    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for (_, _, m) in self.members() {
            let one_more = |n: &mut u32| *n = n.saturating_add(1);
            one_more(&mut p.total);
            match m.status.state {
                Completed => one_more(&mut p.completed),
                Skipped => one_more(&mut p.skipped),
                Failed => one_more(&mut p.failed),
                Running | Stopping => one_more(&mut p.in_flight),
                Pending => one_more(&mut p.pending),
                _ => {}
            }
        }
        p
    }

    /// Stage `si` (a position [`Self::locate_stage`] gave). Out of range only if the run
    /// changed between locating and reading, which is reported rather than a panic.
    pub(super) fn stage_at(&self, si: usize) -> Result<&StageState, TransitionError> {
        self.stages.get(si).ok_or_else(|| self.lost_stage(si))
    }

    pub(super) fn stage_at_mut(&mut self, si: usize) -> Result<&mut StageState, TransitionError> {
        let lost = self.lost_stage(si);
        self.stages.get_mut(si).ok_or(lost)
    }

    /// Group `gi` of stage `si` (a position [`Self::locate_group`] gave).
    pub(super) fn group_at(&self, si: usize, gi: usize) -> Result<&GroupState, TransitionError> {
        self.stage_at(si)?.groups.get(gi).ok_or_else(|| self.lost_group(si, gi))
    }

    pub(super) fn group_at_mut(&mut self, si: usize, gi: usize) -> Result<&mut GroupState, TransitionError> {
        let lost = self.lost_group(si, gi);
        self.stage_at_mut(si)?.groups.get_mut(gi).ok_or(lost)
    }

    /// Member `mi` of group `(si, gi)` (a position [`Self::locate_member`] gave).
    pub(super) fn member_at(&self, si: usize, gi: usize, mi: usize) -> Result<&MemberState, TransitionError> {
        self.group_at(si, gi)?.members.get(mi).ok_or_else(|| self.lost_member(si, gi, mi))
    }

    pub(super) fn member_at_mut(
        &mut self,
        si: usize,
        gi: usize,
        mi: usize,
    ) -> Result<&mut MemberState, TransitionError> {
        let lost = self.lost_member(si, gi, mi);
        self.group_at_mut(si, gi)?.members.get_mut(mi).ok_or(lost)
    }

    fn lost_stage(&self, si: usize) -> TransitionError {
        TransitionError::UnknownStage { run: self.name.clone(), name: format!("#{si}") }
    }

    fn lost_group(&self, si: usize, gi: usize) -> TransitionError {
        TransitionError::UnknownGroup { run: self.name.clone(), name: format!("#{si}.{gi}") }
    }

    fn lost_member(&self, si: usize, gi: usize, mi: usize) -> TransitionError {
        TransitionError::UnknownMember { run: self.name.clone(), name: format!("#{si}.{gi}.{mi}") }
    }

    pub(super) fn locate_member(&self, name: &str) -> Result<(usize, usize, usize), TransitionError> {
        for (si, s) in self.stages.iter().enumerate() {
            for (gi, g) in s.groups.iter().enumerate() {
                if let Some(mi) = g.members.iter().position(|m| m.name == name) {
                    return Ok((si, gi, mi));
                }
            }
        }
        Err(TransitionError::UnknownMember { run: self.name.clone(), name: name.to_string() })
    }

    pub(super) fn locate_group(&self, name: &str) -> Result<(usize, usize), TransitionError> {
        for (si, s) in self.stages.iter().enumerate() {
            if let Some(gi) = s.groups.iter().position(|g| g.name == name) {
                return Ok((si, gi));
            }
        }
        Err(TransitionError::UnknownGroup { run: self.name.clone(), name: name.to_string() })
    }

    pub(super) fn locate_stage(&self, name: &str) -> Result<usize, TransitionError> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| TransitionError::UnknownStage { run: self.name.clone(), name: name.to_string() })
    }

    pub(super) fn gate_mut(&mut self, gate: &GateRef) -> Result<&mut GateState, TransitionError> {
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
    pub(super) fn ensure_active(&self, action: &'static str) -> Result<(), TransitionError> {
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
    pub(super) fn ensure_stage_open(&self, si: usize, what: &str) -> Result<(), TransitionError> {
        let not = |why: String| Err(TransitionError::NotReached { what: what.to_string(), why });
        let stage = self.stage_at(si)?;
        match self.current_stage() {
            Some(c) if c == si => {}
            Some(c) if c < si => {
                let first = self.stage_at(c)?;
                return not(format!("stage {} comes first", first.name));
            }
            _ => return not(format!("stage {} is already done", stage.name)),
        }
        if !stage.before_gates.iter().all(|g| g.state.is_done()) {
            return not(format!("the gates before stage {} have not passed", stage.name));
        }
        Ok(())
    }

    /// Group `(si, gi)` is open for member work.
    pub(super) fn ensure_group_open(&self, si: usize, gi: usize, what: &str) -> Result<(), TransitionError> {
        self.ensure_stage_open(si, what)?;
        let g = self.group_at(si, gi)?;
        if !g.before_gates.iter().all(|x| x.state.is_done()) {
            return Err(TransitionError::NotReached {
                what: what.to_string(),
                why: format!("the gates before group {} have not passed", g.name),
            });
        }
        Ok(())
    }
}
