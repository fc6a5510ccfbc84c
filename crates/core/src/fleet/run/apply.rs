//! `apply`: an event → the new run state or a transition error; every change checked against the tables.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::fleet::gate::{Approval, GateRef, GateState, GateStatus, GateTiming};
use crate::fleet::strategy::RunPlan;

use super::event::*;
use super::health::*;
use super::reason::*;
use super::rollup::*;
use super::state::*;
use super::tree::*;

pub(super) fn snapshot(run: &RunState) -> BTreeMap<(Level, String), UpdateState> {
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

pub(super) fn member_state_error(m: &MemberState, action: &'static str) -> TransitionError {
    TransitionError::State { what: format!("member {}", m.name), state: m.status.state.to_string(), action }
}

pub(super) fn mutate(run: &mut RunState, event: &Event) -> Result<(), TransitionError> {
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
                        Completed => {
                            "it is finished; create a new run, or retry its failed members if any failed"
                        }
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
            run.status.message = None;
            run.intent = Intent::Run;
            run.attempt = run.attempt.saturating_add(1);
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
            run.attempt = run.attempt.saturating_add(1);
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
                    if !run.stage_at(si)?.groups_done() {
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
                        let grp = run.group_at(si, gi)?;
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
        Event::HealthGateReached { stage, gate, .. } => {
            run.ensure_active("reach a health gate")?;
            let si = run.locate_stage(stage)?;
            let what = format!("health gate {gate} of stage {stage}");
            run.ensure_stage_open(si, &what)?;
            if !run.stage_at(si)?.groups_done() {
                return Err(TransitionError::NotReached { what, why: "its groups are still working".into() });
            }
            let h = health_mut(run, si, gate)?;
            if h.state != HealthGateStatus::NotStarted {
                return Err(TransitionError::State {
                    what,
                    state: format!("{:?}", h.state),
                    action: "reach it",
                });
            }
            h.reach(at);
        }
        Event::HealthGateObserved { stage, gate, observation, .. } => {
            run.ensure_active("record a health gate's probe")?;
            let si = run.locate_stage(stage)?;
            let h = health_mut(run, si, gate)?;
            if h.state != HealthGateStatus::Pending || h.reached_at.is_some_and(|r| at < r) {
                return Err(TransitionError::State {
                    what: format!("health gate {gate} of stage {stage}"),
                    state: format!("{:?}", h.state),
                    action: "record a probe",
                });
            }
            if let Some(reason) = h.observe(at, observation.clone()) {
                let why = format!("health gate {gate} of stage {stage} failed: {reason}");
                match run.spec.on_gate_failure {
                    // Paused: nothing new starts; `run start` evaluates the gate again.
                    crate::health::OnGateFailure::Pause => {
                        run.intent = Intent::Stop;
                        halt_members(run, at);
                        run.status.message = Some(format!("paused: {why}"));
                    }
                    // The stage fails through the rollup (a failed gate counts as its failure).
                    crate::health::OnGateFailure::Fail => {}
                }
            }
        }
        Event::AfterStageWaitStarted { stage, .. } => {
            run.ensure_active("start the after-stage wait")?;
            let si = run.locate_stage(stage)?;
            let what = format!("the after-stage wait of {stage}");
            run.ensure_stage_open(si, &what)?;
            if !run.stage_at(si)?.groups_done() {
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
            let m = run.member_at(si, gi, mi)?;
            if !matches!(m.status.state, NotStarted | Pending) {
                return Err(member_state_error(m, "start it"));
            }
            let (st, g) = (run.stage_at(si)?, run.group_at(si, gi)?);
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
            let m = run.member_at_mut(si, gi, mi)?;
            m.status.set_member(Running, None, at);
            m.status.started_at = Some(at);
            m.status.error = None;
            m.status.message = None;
            m.pending_since = None;
            m.target = Some(target.clone());
            m.operation = operation.clone();
            m.window_closes_at = *window_closes_at;
            m.attempts = m.attempts.saturating_add(1);
        }
        Event::MemberSucceeded { member, .. } | Event::MemberFailed { member, .. } => {
            let failed = matches!(event, Event::MemberFailed { .. });
            let (si, gi, mi) = run.locate_member(member)?;
            let m = run.member_at_mut(si, gi, mi)?;
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
            let m = run.member_at_mut(si, gi, mi)?;
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
            let m = run.member_at_mut(si, gi, mi)?;
            if !matches!(m.status.state, NotStarted | Pending) {
                return Err(member_state_error(m, "mark it pending"));
            }
            m.pending_since = m.pending_since.or(Some(at));
            m.status.set_member(Pending, Some(reason.clone()), at);
        }
        Event::MemberUnblocked { member, .. } => {
            let (si, gi, mi) = run.locate_member(member)?;
            let m = run.member_at_mut(si, gi, mi)?;
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
            let m = run.member_at_mut(si, gi, mi)?;
            if !matches!(m.status.state, NotStarted | Pending) {
                return Err(member_state_error(m, "skip it"));
            }
            m.skip_with(cause.clone(), at);
        }
        Event::DriverTookOver { .. } => {}
        Event::MemberRelaunched { member, .. } => {
            let (si, gi, mi) = run.locate_member(member)?;
            let m = run.member_at(si, gi, mi)?;
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

pub(super) fn message_of(event: &Event) -> Option<String> {
    match event {
        Event::MemberSucceeded { message, .. } => message.clone(),
        Event::MemberFailed { error, .. } => Some(error.clone()),
        _ => None,
    }
}

pub(super) fn health_mut<'a>(
    run: &'a mut RunState,
    si: usize,
    gate: &str,
) -> Result<&'a mut HealthGateState, TransitionError> {
    let run_name = run.name.clone();
    let stage = run.stage_at_mut(si)?;
    let unknown =
        TransitionError::UnknownGate { run: run_name, gate: format!("{}/health/{gate}", stage.name) };
    stage.health_gates.iter_mut().find(|h| h.gate.name == gate).ok_or(unknown)
}

pub(super) fn wait_mut(run: &mut RunState, si: usize) -> Result<&mut WaitState, TransitionError> {
    let stage = run.stage_at_mut(si)?;
    let name = stage.name.clone();
    stage.after_stage_wait.as_mut().ok_or(TransitionError::State {
        what: format!("stage {name}"),
        state: "without an after-stage wait".into(),
        action: "use its after-stage wait",
    })
}

/// Replaces the member set from creation with the one resolved at the first start, keeping
/// requested member skips (by name), gate pre-approvals and skipped gates.
pub(super) fn replan(run: &mut RunState, plan: &RunPlan) -> Result<(), TransitionError> {
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
pub(super) fn reset_for_restart(run: &mut RunState, skipped_too: bool, at: Timestamp) {
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
        // A failed gate is evaluated again. A skipped one too, unless its stage completed
        // with it skipped: skipping the stage is how an operator gets past a gate that keeps
        // failing, and starting the run again must not take that back.
        let completed = st.status.state == Completed;
        for h in &mut st.health_gates {
            if h.state == HealthGateStatus::Failed
                || (skipped_too && h.state == HealthGateStatus::Skipped && !completed)
            {
                h.reset();
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

pub(super) fn skip(
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
                let m = run.member_at(si, gi, mi)?;
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
                let g = run.group_at(si, gi)?;
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
                if run.stage_at(si)?.status.state == Completed {
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
pub(super) fn skip_one(
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
            skip_member(run.member_at_mut(si, gi, mi)?);
        }
        SkipTarget::Group(n) => {
            let (si, gi) = run.locate_group(n)?;
            skip_group(run.group_at_mut(si, gi)?);
        }
        SkipTarget::Stage(n) => {
            let si = run.locate_stage(n)?;
            let st = run.stage_at_mut(si)?;
            st.groups.iter_mut().for_each(skip_group);
            st.before_gates.iter_mut().chain(&mut st.after_gates).for_each(|x| x.skip(at));
            st.health_gates.iter_mut().for_each(|h| h.skip(at));
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
