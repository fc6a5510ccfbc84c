//! `next`: the run, the members' facts and now → the driver's decisions.

use jiff::Timestamp;

use crate::fleet::gate::{GateState, GateStatus};
use crate::fleet::target::{self, MemberTarget, Targets};
use crate::fleet::window::{self, WindowPriority};

use super::event::*;
use super::health::*;
use super::reason::*;
use super::rollup::*;
use super::state::*;
use super::tree::*;

pub(super) enum Assessment {
    Skip(SkipCause),
    Blocked(PendingReason),
    Ready { target: MemberTarget, closes_at: Option<Timestamp> },
}

pub(super) fn assess(
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
pub(super) fn ready_when_open(target: MemberTarget, f: &MemberFacts, now: Timestamp) -> Assessment {
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
pub(super) fn gate_step(
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

/// Reaches a done stage's health gates, and records the driver's probes of those due.
fn health_step(
    st: &StageState,
    facts: &Facts,
    now: Timestamp,
    out: &mut Vec<Decision>,
    waits: &mut Vec<(Option<Timestamp>, String)>,
) {
    for h in &st.health_gates {
        let (stage, gate) = (st.name.clone(), h.gate.name.clone());
        match h.state {
            HealthGateStatus::NotStarted => {
                out.push(Decision::Record(Event::HealthGateReached { stage, gate, at: now }))
            }
            HealthGateStatus::Pending => match facts.health.get(&(stage, gate)) {
                Some(observation) if h.due(now) => out.push(Decision::Record(Event::HealthGateObserved {
                    stage: st.name.clone(),
                    gate: h.gate.name.clone(),
                    at: now,
                    observation: observation.clone(),
                })),
                _ => waits.push((
                    h.next_probe(),
                    format!(
                        "health gate {} ({}): {}",
                        h.gate.name,
                        h.gate.check,
                        h.waiting.clone().unwrap_or(HealthWait::FirstProbe)
                    ),
                )),
            },
            HealthGateStatus::Passed | HealthGateStatus::Failed | HealthGateStatus::Skipped => {}
        }
    }
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
    let Some(st) = run.current_stage().and_then(|si| run.stages.get(si)) else { return out };
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
                            group_slots = group_slots.saturating_sub(1);
                            stage_slots = stage_slots.saturating_sub(1);
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
            health_step(st, facts, now, &mut out, &mut waits);
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
