//! The rollup: a stage's, group's and run's state is always recomputed from its children, gates and wait, so a parent never disagrees with its children.

use jiff::Timestamp;

use crate::fleet::gate::{GateSpec, GateState, GateStatus};

use super::health::*;
use super::reason::*;
use super::state::*;
use super::tree::*;

pub(super) fn pending_gate(gates: &[GateState]) -> Option<PendingReason> {
    gates.iter().find(|g| g.state == GateStatus::Pending).map(|g| match (&g.spec, g.starts_at) {
        (GateSpec::ScheduledStart { .. }, Some(starts_at)) => {
            PendingReason::ScheduledStart { gate: g.gate.clone(), starts_at }
        }
        _ => PendingReason::Approval { gate: g.gate.clone(), expired: g.expired.clone() },
    })
}

pub(super) fn gates_done(gates: &[GateState]) -> bool {
    gates.iter().all(|g| g.state.is_done())
}

pub(super) fn gates_reached(gates: &[GateState]) -> bool {
    gates.iter().any(|g| g.reached_at.is_some())
}

/// The reason of the pending child that waits least long (unknown ends last).
pub(super) fn earliest<'a>(
    children: impl Iterator<Item = (String, &'a PendingReason)>,
) -> Option<PendingReason> {
    children
        .min_by_key(|(_, r)| (r.until().is_none(), r.until()))
        .map(|(on, r)| PendingReason::Waiting { on, reason: Box::new(r.clone()) })
}

/// What a stage or group rollup needs to know about its children and its own gates and wait.
pub(super) struct Rollup {
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
pub(super) fn decide(r: Rollup, intent: Intent) -> (UpdateState, Option<PendingReason>, Option<String>) {
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
pub(super) fn waiting_on<'a>(
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

pub(super) fn roll_group(g: &mut GroupState, intent: Intent, at: Timestamp) {
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

/// The reason of the first health gate still waiting.
pub(super) fn pending_health(st: &StageState) -> Option<PendingReason> {
    st.health_gates.iter().find(|h| h.state == HealthGateStatus::Pending).map(|h| PendingReason::HealthGate {
        stage: st.name.clone(),
        gate: h.gate.name.clone(),
        check: h.gate.check.to_string(),
        waiting: h.waiting.clone().unwrap_or(HealthWait::FirstProbe),
    })
}

/// `fail_on_gate`: a failed health gate fails the stage (`onGateFailure: fail`); otherwise
/// it paused the run when it failed, and the stage only waits.
pub(super) fn roll_stage(st: &mut StageState, intent: Intent, fail_on_gate: bool, at: Timestamp) {
    let failed: u32 = st.groups.iter().map(|g| g.failure_count).sum();
    st.failure_count = failed;
    let gate_failed = st.health_gates.iter().find(|h| h.state == HealthGateStatus::Failed);
    let failure = match st.groups.iter().find(|g| g.status.state == Failed) {
        Some(g) => Some(format!("group {} failed: {}", g.name, g.status.error.clone().unwrap_or_default())),
        None => match gate_failed {
            Some(h) if fail_on_gate => {
                Some(format!("health gate {} failed: {}", h.gate.name, h.message.clone().unwrap_or_default()))
            }
            _ => (failed > st.max_allowed_failures).then(|| {
                format!(
                    "{failed} member failure(s) across the stage, more than maxAllowedFailures {}",
                    st.max_allowed_failures
                )
            }),
        },
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
            || st.health_gates.iter().any(|h| h.reached_at.is_some())
            || st.groups.iter().any(|g| !matches!(g.status.state, NotStarted | Skipped)),
        before: pending_gate(&st.before_gates),
        before_done: gates_done(&st.before_gates),
        // An after-gate is named before the wait: it needs a person.
        after: pending_gate(&st.after_gates).or(pending_health(st)).or(wait),
        after_done: gates_done(&st.after_gates) && health_done(&st.health_gates) && st.wait_done(),
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
        st.health_gates.iter_mut().for_each(|h| h.skip(at));
        if let Some(w) = &mut st.after_stage_wait
            && !w.state.is_done()
        {
            w.state = GateStatus::Skipped;
        }
    }
    st.status.set(state, pending, at);
    st.status.error = error;
}

pub(super) fn roll_run(run: &mut RunState, at: Timestamp) {
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
        match run.current_stage().and_then(|i| run.stages.get(i)) {
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
pub(super) fn rollup(run: &mut RunState, at: Timestamp) {
    let intent = run.intent;
    let fail_on_gate = run.spec.on_gate_failure == crate::health::OnGateFailure::Fail;
    for st in &mut run.stages {
        for g in &mut st.groups {
            roll_group(g, intent, at);
        }
        roll_stage(st, intent, fail_on_gate, at);
    }
    roll_run(run, at);
    if run.status.state == Failed && run.intent == Intent::Run {
        // Fail-fast: nothing new starts anywhere; upgrades under way finish and are recorded.
        run.intent = Intent::Stop;
        halt_members(run, at);
        rollup(run, at);
    }
}

pub(super) fn halt_members(run: &mut RunState, at: Timestamp) {
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
