//! Property tests of the update run state machine: random strategies, random fleets and random
//! sequences of commands, member outcomes, driver steps and nonsense events. After every
//! accepted event:
//!
//! - every state change (run, stage, group, member) is in the allowed-transition table;
//! - every parent agrees with its children (checked by predicates written independently of the
//!   rollup code);
//! - Pending always carries a reason, and nothing else does;
//! - no group or stage has more member upgrades under way than its `maxConcurrency`;
//! - failures beyond `maxAllowedFailures` fail the stage and the run, and no member starts
//!   while a stage is failed or in a stage whose predecessors are not done.
//!
//! And every decision [`next`] returns applies cleanly.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use proptest::sample::Index;

use super::gate::{GateSpec, GateStatus};
use super::run::{
    Decision, Event, Facts, GroupState, Intent, MemberFacts, PendingReason, RunState, SkipCause, SkipTarget,
    StageState, TransitionError, UpdateState, allowed, apply, next,
};
use super::strategy::{
    FleetMember, GroupSpec, LabelSelector, Limit, StageSpec, Strategy as FleetStrategy, resolve,
};
use super::target::{MemberTarget, MemberVersions, UpgradeSpec, UpgradeType, freeze_targets};
use super::window::{Day, MaintenanceWindow, Recurrence};
use crate::version::Version;

use UpdateState::{Completed, Failed, NotStarted, Pending, Running, Skipped, Stopping};

#[derive(Debug, Clone)]
struct Scenario {
    strategy: FleetStrategy,
    members: Vec<FleetMember>,
    facts: Facts,
    budget: Option<u64>,
}

#[derive(Debug, Clone)]
struct GroupShape {
    concurrency: u32,
    failures: u32,
    before: bool,
    after: bool,
    members: Vec<u8>,
}

#[derive(Debug, Clone)]
struct StageShape {
    concurrency: u32,
    failures: u32,
    wait: bool,
    before: bool,
    after: bool,
    groups: Vec<GroupShape>,
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn approval() -> Vec<GateSpec> {
    vec![GateSpec::Approval { display_name: None }]
}

fn window(days: Vec<Day>, start: &str, minutes: u32) -> MaintenanceWindow {
    super::window::window(Recurrence::Weekly(days), start, minutes, "Europe/Berlin")
}

/// Member kinds: 0–5 behind with no window, 6 at the target, 7 a rare window, 8 a daily
/// window, 9 unavailable, 10 gone from the fleet.
fn facts_for(kind: u8) -> Option<MemberFacts> {
    let behind =
        MemberVersions { control_plane: Some(v("1.36.4")), nodes: Some(v("1.36.4")), ..Default::default() };
    let mut f =
        MemberFacts { versions: behind, window: None, unavailable: None, pending_budget_seconds: None };
    match kind {
        6 => {
            f.versions.control_plane = Some(v("1.37.1"));
            f.versions.nodes = Some(v("1.37.1"));
        }
        7 => f.window = Some(window(vec![Day::Sunday], "02:30", 90)),
        8 => {
            f.window = Some(window(
                vec![
                    Day::Monday,
                    Day::Tuesday,
                    Day::Wednesday,
                    Day::Thursday,
                    Day::Friday,
                    Day::Saturday,
                    Day::Sunday,
                ],
                "06:00",
                720,
            ))
        }
        9 => f.unavailable = Some("unreachable".into()),
        10 => return None,
        _ => {}
    }
    Some(f)
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    let group =
        (1u32..=3, 0u32..=2, any::<bool>(), any::<bool>(), proptest::collection::vec(0u8..=10, 0..=4))
            .prop_map(|(concurrency, failures, before, after, members)| GroupShape {
                concurrency,
                failures,
                before,
                after,
                members,
            });
    let stage = (
        1u32..=4,
        0u32..=2,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(group, 1..=3),
    )
        .prop_map(|(concurrency, failures, wait, before, after, groups)| StageShape {
            concurrency,
            failures,
            wait,
            before,
            after,
            groups,
        });
    (proptest::collection::vec(stage, 1..=3), proptest::option::of(0u64..20_000)).prop_map(
        |(stages, budget)| {
            let mut members = Vec::new();
            let mut facts = Facts::default();
            let mut specs = Vec::new();
            let mut n = 0;
            for (si, st) in stages.iter().enumerate() {
                let mut groups = Vec::new();
                for (gi, g) in st.groups.iter().enumerate() {
                    let name = format!("g{si}{gi}");
                    for kind in &g.members {
                        let m = format!("m{n:02}");
                        n += 1;
                        members.push(FleetMember {
                            name: m.clone(),
                            labels: BTreeMap::new(),
                            update_group: Some(name.clone()),
                        });
                        if let Some(f) = facts_for(*kind) {
                            facts.members.insert(m, f);
                        }
                    }
                    groups.push(GroupSpec {
                        name,
                        member_selector: None,
                        max_concurrency: Some(Limit::Count(g.concurrency.min(st.concurrency))),
                        max_allowed_failures: Some(Limit::Count(g.failures)),
                        before_gates: if g.before { approval() } else { vec![] },
                        after_gates: if g.after { approval() } else { vec![] },
                    });
                }
                specs.push(StageSpec {
                    name: format!("s{si}"),
                    groups,
                    member_selector: None::<LabelSelector>,
                    max_concurrency: Some(Limit::Count(st.concurrency)),
                    max_allowed_failures: Some(Limit::Count(st.failures)),
                    after_stage_wait_in_seconds: if st.wait { 3600 } else { 0 },
                    before_gates: if st.before { approval() } else { vec![] },
                    after_gates: if st.after { approval() } else { vec![] },
                    health_gates: vec![],
                });
            }
            Scenario { strategy: FleetStrategy { name: None, stages: specs }, members, facts, budget }
        },
    )
}

#[derive(Debug, Clone)]
enum Action {
    /// Apply every decision of one `next()` call.
    Drive,
    /// Apply one decision of a `next()` call.
    DriveOne(Index),
    /// Finish a member upgrade under way: 0 success, 1 failure, 2 paused at its window's close,
    /// 3 unreachable (relaunched while its API server was down).
    Finish(Index, u8),
    Stop,
    Start,
    Retry,
    SkipMember(Index),
    SkipGroup(Index),
    SkipStage(Index),
    SkipWait(Index),
    Approve(Index, Option<u8>),
    /// Advance time by minutes.
    Advance(u16),
    /// An event made up without looking at the state (mostly refused).
    Junk(Index, Index, u8),
}

fn arb_action() -> impl Strategy<Value = Action> {
    let skip = prop_oneof![
        any::<Index>().prop_map(Action::SkipMember),
        any::<Index>().prop_map(Action::SkipGroup),
        any::<Index>().prop_map(Action::SkipStage),
        any::<Index>().prop_map(Action::SkipWait),
    ];
    prop_oneof![
        12 => Just(Action::Drive),
        2 => any::<Index>().prop_map(Action::DriveOne),
        10 => (any::<Index>(), prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)])
            .prop_map(|(i, how)| Action::Finish(i, how)),
        1 => Just(Action::Stop),
        2 => Just(Action::Start),
        1 => Just(Action::Retry),
        1 => skip,
        4 => (any::<Index>(), proptest::option::of(0u8..4)).prop_map(|(i, e)| Action::Approve(i, e)),
        3 => (1u16..3000).prop_map(Action::Advance),
        3 => (any::<Index>(), any::<Index>(), 0u8..10).prop_map(|(a, b, k)| Action::Junk(a, b, k)),
    ]
}

fn pick<'a, T>(items: &'a [T], i: &Index) -> Option<&'a T> {
    (!items.is_empty()).then(|| &items[i.index(items.len())])
}

/// The events an action tries, in order.
fn events_for(run: &RunState, facts: &Facts, now: &mut Timestamp, action: &Action) -> Vec<Event> {
    let at = *now;
    let members: Vec<String> = run.members().map(|(_, _, m)| m.name.clone()).collect();
    let groups: Vec<String> = run.stages.iter().flat_map(|s| &s.groups).map(|g| g.name.clone()).collect();
    let stages: Vec<String> = run.stages.iter().map(|s| s.name.clone()).collect();
    let gates: Vec<_> = run.gates().map(|g| g.gate.clone()).collect();
    let to_event = |d: &Decision| match d {
        Decision::Record(e) => Some(e.clone()),
        Decision::StartMember { .. } => d.started(at, None),
        Decision::Wait { .. } => None,
    };
    match action {
        Action::Drive => next(run, facts, at).iter().filter_map(to_event).collect(),
        Action::DriveOne(i) => pick(&next(run, facts, at), i).and_then(to_event).into_iter().collect(),
        Action::Finish(i, how) => {
            let flying: Vec<String> = run
                .members()
                .filter(|(_, _, m)| m.status.state.in_flight())
                .map(|(_, _, m)| m.name.clone())
                .collect();
            pick(&flying, i)
                .map(|m| match how {
                    0 => Event::MemberSucceeded { member: m.clone(), at, message: None },
                    1 => Event::MemberFailed { member: m.clone(), at, error: "boom".into() },
                    2 => Event::MemberPaused { member: m.clone(), at, message: "window closed".into() },
                    _ => Event::MemberUnreachable { member: m.clone(), at, message: "no answer".into() },
                })
                .into_iter()
                .collect()
        }
        Action::Stop => vec![Event::Stop { at, by: None }],
        Action::Start => {
            let targets = run
                .targets
                .is_none()
                .then(|| freeze_targets(&run.spec, facts.members.values().map(|f| &f.versions)));
            vec![Event::Start { at, targets, plan: None, by: None }]
        }
        Action::Retry => vec![Event::RetryFailed { at, by: None }],
        Action::SkipMember(i) => skip(pick(&members, i).cloned().map(SkipTarget::Member), at),
        Action::SkipGroup(i) => skip(pick(&groups, i).cloned().map(SkipTarget::Group), at),
        Action::SkipStage(i) => skip(pick(&stages, i).cloned().map(SkipTarget::Stage), at),
        Action::SkipWait(i) => skip(pick(&stages, i).cloned().map(SkipTarget::AfterStageWait), at),
        Action::Approve(i, expiry) => pick(&gates, i)
            .map(|g| Event::ApproveGate {
                gate: g.clone(),
                by: "prop".into(),
                at,
                expires_at: expiry.map(|h| at + SignedDuration::from_hours(i64::from(h))),
            })
            .into_iter()
            .collect(),
        Action::Advance(mins) => {
            *now += SignedDuration::from_mins(i64::from(*mins));
            vec![]
        }
        Action::Junk(a, b, kind) => {
            let m = pick(&members, a).cloned().unwrap_or_else(|| "ghost".into());
            let e = match kind {
                0 => Event::MemberStarted {
                    member: m,
                    at,
                    target: MemberTarget::default(),
                    operation: None,
                    window_closes_at: None,
                },
                1 => Event::MemberSucceeded { member: m, at, message: None },
                2 => Event::MemberFailed { member: m, at, error: "junk".into() },
                3 => Event::MemberPending {
                    member: m,
                    at,
                    reason: PendingReason::WindowClosed { opens_at: None },
                },
                4 => Event::MemberUnblocked { member: m, at },
                5 => Event::MemberSkipped { member: m, at, cause: SkipCause::NotInFleet },
                6 => match pick(&gates, b) {
                    Some(g) => Event::GateReached { gate: g.clone(), at },
                    None => return vec![],
                },
                7 => match pick(&gates, b) {
                    Some(g) => Event::GateTimeReached { gate: g.clone(), at },
                    None => return vec![],
                },
                8 => match pick(&stages, b) {
                    Some(s) => Event::AfterStageWaitStarted { stage: s.clone(), at },
                    None => return vec![],
                },
                _ => match pick(&stages, b) {
                    Some(s) => Event::AfterStageWaitElapsed { stage: s.clone(), at },
                    None => return vec![],
                },
            };
            vec![e]
        }
    }
}

fn skip(target: Option<SkipTarget>, at: Timestamp) -> Vec<Event> {
    target.map(|t| Event::Skip { targets: vec![t], by: Some("prop".into()), at }).into_iter().collect()
}

fn states(run: &RunState) -> BTreeMap<String, (super::run::Level, UpdateState)> {
    use super::run::Level;
    let mut out = BTreeMap::new();
    out.insert("run".to_string(), (Level::Run, run.status.state));
    for s in &run.stages {
        out.insert(format!("stage {}", s.name), (Level::Stage, s.status.state));
        for g in &s.groups {
            out.insert(format!("group {}", g.name), (Level::Group, g.status.state));
            for m in &g.members {
                out.insert(format!("member {}", m.name), (Level::Member, m.status.state));
            }
        }
    }
    out
}

fn done(s: UpdateState) -> bool {
    matches!(s, Completed | Skipped)
}

fn flying(s: UpdateState) -> bool {
    matches!(s, Running | Stopping)
}

/// A group agrees with its members and gates.
fn check_group(g: &GroupState) -> Result<(), TestCaseError> {
    let ms: Vec<UpdateState> = g.members.iter().map(|m| m.status.state).collect();
    let failed = ms.iter().filter(|s| **s == Failed).count() as u32;
    let any_flying = ms.iter().any(|s| flying(*s));
    let gates_done = g
        .before_gates
        .iter()
        .chain(&g.after_gates)
        .all(|x| matches!(x.state, GateStatus::Completed | GateStatus::Skipped));
    let gate_pending = g.before_gates.iter().chain(&g.after_gates).any(|x| x.state == GateStatus::Pending);
    let st = g.status.state;
    let ctx = || format!("group {} is {st} with members {ms:?}", g.name);
    prop_assert_eq!(st == Failed, failed > g.max_allowed_failures, "{}", ctx());
    prop_assert_eq!(g.failure_count, failed, "{}", ctx());
    if st != Failed {
        prop_assert_eq!(st == Skipped, ms.iter().all(|s| *s == Skipped), "{}", ctx());
    }
    if st == Completed {
        prop_assert!(ms.iter().all(|s| matches!(s, Completed | Skipped | Failed)) && gates_done, "{}", ctx());
    }
    if any_flying {
        prop_assert!(matches!(st, Running | Stopping | Failed), "{}", ctx());
    }
    if st == Stopping {
        prop_assert!(any_flying, "{}", ctx());
    }
    if st == Pending {
        prop_assert!(gate_pending || (!any_flying && ms.contains(&Pending)), "{}", ctx());
    }
    if st == NotStarted {
        prop_assert!(ms.iter().all(|s| matches!(s, NotStarted | Skipped)), "{}", ctx());
    }
    if !matches!(st, Completed | Skipped | Failed) {
        prop_assert!(
            !(ms.iter().all(|s| matches!(s, Completed | Skipped | Failed)) && gates_done),
            "{}",
            ctx()
        );
    }
    Ok(())
}

/// A stage agrees with its groups, gates and wait.
fn check_stage(s: &StageState) -> Result<(), TestCaseError> {
    let gs: Vec<UpdateState> = s.groups.iter().map(|g| g.status.state).collect();
    let failed: u32 =
        s.groups.iter().flat_map(|g| &g.members).filter(|m| m.status.state == Failed).count() as u32;
    let any_flying = s.groups.iter().flat_map(|g| &g.members).any(|m| flying(m.status.state));
    let wait_done = s
        .after_stage_wait
        .as_ref()
        .is_none_or(|w| matches!(w.state, GateStatus::Completed | GateStatus::Skipped));
    let wait_pending = s.after_stage_wait.as_ref().is_some_and(|w| w.state == GateStatus::Pending);
    let gates_done = s
        .before_gates
        .iter()
        .chain(&s.after_gates)
        .all(|x| matches!(x.state, GateStatus::Completed | GateStatus::Skipped));
    let gate_pending = s.before_gates.iter().chain(&s.after_gates).any(|x| x.state == GateStatus::Pending);
    let st = s.status.state;
    let ctx = || format!("stage {} is {st} with groups {gs:?}, {failed} failed", s.name);
    prop_assert_eq!(st == Failed, gs.contains(&Failed) || failed > s.max_allowed_failures, "{}", ctx());
    if st != Failed {
        prop_assert_eq!(st == Skipped, gs.iter().all(|g| *g == Skipped), "{}", ctx());
    }
    if st == Completed {
        prop_assert!(gs.iter().all(|g| done(*g)) && gates_done && wait_done, "{}", ctx());
    }
    if any_flying {
        prop_assert!(matches!(st, Running | Stopping | Failed), "{}", ctx());
    }
    if st == Stopping {
        prop_assert!(any_flying, "{}", ctx());
    }
    if st == Pending {
        let open: Vec<&UpdateState> = gs.iter().filter(|g| !done(**g)).collect();
        prop_assert!(
            gate_pending || wait_pending || (!open.is_empty() && open.iter().all(|g| **g == Pending)),
            "{}",
            ctx()
        );
    }
    if !matches!(st, Completed | Skipped | Failed) {
        prop_assert!(!(gs.iter().all(|g| done(*g)) && gates_done && wait_done), "{}", ctx());
    }
    Ok(())
}

/// Every invariant of a run after an accepted event.
fn check_run(run: &RunState) -> Result<(), TestCaseError> {
    let ss: Vec<UpdateState> = run.stages.iter().map(|s| s.status.state).collect();
    let st = run.status.state;
    let any_flying = run.members().any(|(_, _, m)| flying(m.status.state));
    if run.intent == Intent::NotStarted {
        prop_assert_eq!(st, NotStarted, "a run never started is NotStarted");
        prop_assert!(!any_flying);
    } else {
        prop_assert_eq!(st == Failed, ss.contains(&Failed), "run {} with stages {:?}", st, ss);
    }
    if st != Failed && run.intent != Intent::NotStarted {
        prop_assert_eq!(st == Skipped, ss.iter().all(|s| *s == Skipped), "run {} with stages {:?}", st, ss);
        prop_assert_eq!(
            st == Completed,
            ss.iter().all(|s| done(*s)) && !ss.iter().all(|s| *s == Skipped),
            "run {} with stages {:?}",
            st,
            ss
        );
    }
    if any_flying {
        prop_assert!(
            matches!(st, Running | Pending | Stopping | Failed),
            "run {} with members in flight",
            st
        );
    }
    // Pending exactly when there is a reason, on every level.
    prop_assert_eq!(st == Pending, run.status.pending.is_some());
    for s in &run.stages {
        prop_assert_eq!(s.status.state == Pending, s.status.pending.is_some(), "stage {}", &s.name);
        check_stage(s)?;
        // Failures beyond a threshold fail the stage and the run.
        let over = s.groups.iter().any(|g| g.failure_count > g.max_allowed_failures)
            || s.failure_count > s.max_allowed_failures;
        if over {
            prop_assert_eq!(s.status.state, Failed);
            prop_assert_eq!(st, Failed);
        }
        // Never more upgrades under way than allowed.
        prop_assert!(
            s.in_flight() <= s.max_concurrency,
            "stage {}: {} > {}",
            &s.name,
            s.in_flight(),
            s.max_concurrency
        );
        for g in &s.groups {
            prop_assert_eq!(g.status.state == Pending, g.status.pending.is_some(), "group {}", &g.name);
            prop_assert!(
                g.in_flight() <= g.max_concurrency,
                "group {}: {} > {}",
                &g.name,
                g.in_flight(),
                g.max_concurrency
            );
            check_group(g)?;
            for m in &g.members {
                prop_assert_eq!(m.status.state == Pending, m.status.pending.is_some(), "member {}", &m.name);
                prop_assert_eq!(m.status.state == Skipped, m.skip.is_some(), "member {}", &m.name);
            }
        }
    }
    Ok(())
}

fn check_step(before: &RunState, after: &RunState, event: &Event) -> Result<(), TestCaseError> {
    let old = states(before);
    for (key, (level, to)) in states(after) {
        if let Some((_, from)) = old.get(&key) {
            prop_assert!(allowed(level, *from, to), "{key}: {from} → {to} after {event:?}");
        }
    }
    if let Event::MemberStarted { member, .. } = event {
        prop_assert!(
            matches!(before.status.state, Running | Pending),
            "started {member} in a {} run",
            before.status.state
        );
        prop_assert!(
            !before.stages.iter().any(|s| s.status.state == Failed),
            "started {member} with a failed stage"
        );
        let si = before
            .stages
            .iter()
            .position(|s| s.groups.iter().any(|g| g.members.iter().any(|m| &m.name == member)));
        let si = si.unwrap_or(0);
        prop_assert!(
            before.stages[..si].iter().all(|s| done(s.status.state)),
            "started {member} before earlier stages were done"
        );
    }
    check_run(after)
}

fn run_scenario(sc: &Scenario, actions: &[Action]) -> Result<(u32, u32), TestCaseError> {
    let plan = resolve(&sc.strategy, &sc.members).unwrap();
    let mut spec = UpgradeSpec::new(UpgradeType::Full, Some(v("1.37.1")));
    spec.pending_budget_seconds = sc.budget;
    let mut now: Timestamp = "2026-06-10T12:00:00Z".parse().unwrap();
    let mut run = RunState::new("prop", spec, sc.strategy.clone(), plan, now).unwrap();
    check_run(&run)?;
    let (mut accepted, mut refused) = (0, 0);
    for action in actions {
        let from_next = matches!(action, Action::Drive | Action::DriveOne(_));
        for e in events_for(&run, &sc.facts, &mut now, action) {
            match apply(&run, &e) {
                Ok(after) => {
                    check_step(&run, &after, &e)?;
                    run = after;
                    accepted += 1;
                }
                Err(err) => {
                    prop_assert!(
                        !matches!(err, TransitionError::Disallowed { .. }),
                        "outside the table: {err} ({e:?})"
                    );
                    prop_assert!(!from_next, "a decision of next() was refused: {err} ({e:?})");
                    refused += 1;
                }
            }
        }
    }
    // JSON round trip of whatever state was reached.
    let json = serde_json::to_string(&run).unwrap();
    prop_assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), run);
    Ok((accepted, refused))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn fleet_runs_keep_their_invariants_under_random_events(
        sc in arb_scenario(),
        actions in proptest::collection::vec(arb_action(), 1..120),
    ) {
        run_scenario(&sc, &actions)?;
    }

    /// Only the driver and successful members: every run finishes (no state where next()
    /// neither acts nor has anything to wait for while work is left).
    #[test]
    fn a_run_driven_to_the_end_finishes(sc in arb_scenario()) {
        let plan = resolve(&sc.strategy, &sc.members).unwrap();
        let mut spec = UpgradeSpec::new(UpgradeType::Full, Some(v("1.37.1")));
        spec.pending_budget_seconds = Some(sc.budget.unwrap_or(3600));
        let mut now: Timestamp = "2026-06-10T12:00:00Z".parse().unwrap();
        let mut run = RunState::new("prop", spec, sc.strategy.clone(), plan, now).unwrap();
        let targets = freeze_targets(&run.spec, sc.facts.members.values().map(|f| &f.versions));
        run = apply(&run, &Event::Start { at: now, targets: Some(targets), plan: None, by: None }).unwrap();
        for _ in 0..2000 {
            if matches!(run.status.state, Completed | Skipped) {
                break;
            }
            let ds = next(&run, &sc.facts, now);
            let mut acted = false;
            for d in &ds {
                let e = match d {
                    Decision::Record(e) => e.clone(),
                    Decision::StartMember { .. } => d.started(now, None).unwrap(),
                    Decision::Wait { .. } => continue,
                };
                let after = apply(&run, &e).map_err(|err| TestCaseError::fail(format!("{err} ({e:?})")))?;
                check_step(&run, &after, &e)?;
                run = after;
                acted = true;
            }
            if acted {
                continue;
            }
            // Finish in-flight members; approve pending gates; otherwise wait as told.
            let flying: Vec<String> = run.members().filter(|(_, _, m)| m.status.state.in_flight()).map(|(_, _, m)| m.name.clone()).collect();
            let pending_gates: Vec<_> = run.gates().filter(|g| g.state == GateStatus::Pending).map(|g| g.gate.clone()).collect();
            if let Some(m) = flying.first() {
                run = apply(&run, &Event::MemberSucceeded { member: m.clone(), at: now, message: None }).unwrap();
            } else if let Some(g) = pending_gates.first() {
                run = apply(&run, &Event::ApproveGate { gate: g.clone(), by: "prop".into(), at: now, expires_at: None }).unwrap();
            } else {
                match ds.first() {
                    Some(Decision::Wait { until: Some(u), .. }) => now = (*u).max(now + SignedDuration::from_secs(1)),
                    other => prop_assert!(false, "stuck in {} with {:?}", run.status.state, other),
                }
            }
        }
        prop_assert!(matches!(run.status.state, Completed | Skipped), "ended {}", run.status.state);
        prop_assert_eq!(run.progress().total, run.progress().completed + run.progress().skipped);
    }
}
