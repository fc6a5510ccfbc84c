//! Unit tests of the update run state machine: one scenario per rule.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::fleet::gate::{GateRef, GateStatus};
use crate::fleet::strategy::Strategy;
use crate::fleet::strategy::{FleetMember, resolve};
use crate::fleet::target::{MemberTarget, MemberVersions, UpgradeSpec};
use crate::fleet::target::{NodeImage, NodeImageSelection, NodeImageTargets, UpgradeType, freeze_targets};
use crate::fleet::window::{Day, MaintenanceWindow, Recurrence};
use crate::version::Version;
use UpdateState::{Completed, Failed, NotStarted, Pending, Running, Skipped, Stopped, Stopping};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

/// Wednesday, 12:00 UTC.
fn t0() -> Timestamp {
    ts("2026-06-10T12:00:00Z")
}

fn hours(h: i64) -> SignedDuration {
    SignedDuration::from_hours(h)
}

fn behind() -> MemberFacts {
    MemberFacts {
        versions: MemberVersions {
            control_plane: Some(v("1.36.4")),
            nodes: Some(v("1.36.4")),
            ..Default::default()
        },
        window: None,
        unavailable: None,
        pending_budget_seconds: None,
    }
}

/// Members `(name, update group)` at 1.36.4, and their facts.
fn fleet(members: &[(&str, &str)]) -> (Vec<FleetMember>, Facts) {
    let fm = members
        .iter()
        .map(|(n, g)| FleetMember {
            name: n.to_string(),
            labels: BTreeMap::new(),
            update_group: Some(g.to_string()),
        })
        .collect();
    let facts = Facts {
        members: members.iter().map(|(n, _)| (n.to_string(), behind())).collect(),
        ..Facts::default()
    };
    (fm, facts)
}

fn spec() -> UpgradeSpec {
    UpgradeSpec::new(UpgradeType::Full, Some(v("1.37.1")))
}

fn new_run(strategy: &str, members: &[FleetMember], spec: UpgradeSpec) -> RunState {
    let strategy = Strategy::parse(strategy).unwrap();
    let plan = resolve(&strategy, members).unwrap();
    RunState::new("run-1", spec, strategy, plan, t0()).unwrap()
}

fn ok(run: &RunState, e: Event) -> RunState {
    apply(run, &e).unwrap_or_else(|err| panic!("{e:?}: {err}"))
}

fn start(run: &RunState, facts: &Facts, at: Timestamp) -> RunState {
    let targets = freeze_targets(&run.spec, facts.members.values().map(|f| &f.versions));
    ok(run, Event::Start { at, targets: Some(targets), plan: None, by: None })
}

/// Applies every decision until only a wait (or nothing) is left; the members started and the
/// final wait.
fn settle(run: &mut RunState, facts: &Facts, now: Timestamp) -> (Vec<String>, Option<Decision>) {
    let mut started = Vec::new();
    for _ in 0..100 {
        let ds = next(run, facts, now);
        if ds.iter().all(|d| matches!(d, Decision::Wait { .. })) {
            return (started, ds.into_iter().next());
        }
        for d in ds {
            match &d {
                Decision::Record(e) => *run = ok(run, e.clone()),
                Decision::StartMember { member, .. } => {
                    *run = ok(run, d.started(now, Some(format!("op-{member}"))).unwrap());
                    started.push(member.clone());
                }
                Decision::Wait { .. } => {}
            }
        }
    }
    panic!("next() did not settle");
}

fn succeed(run: &RunState, m: &str, at: Timestamp) -> RunState {
    ok(run, Event::MemberSucceeded { member: m.into(), at, message: None })
}

fn fail(run: &RunState, m: &str, at: Timestamp) -> RunState {
    ok(run, Event::MemberFailed { member: m.into(), at, error: "kubeadm upgrade apply failed".into() })
}

fn state_of(run: &RunState, m: &str) -> UpdateState {
    run.member(m).unwrap().status.state
}

fn stage<'a>(run: &'a RunState, s: &str) -> &'a StageState {
    run.stages.iter().find(|x| x.name == s).unwrap()
}

fn group<'a>(run: &'a RunState, g: &str) -> &'a GroupState {
    run.stages.iter().flat_map(|s| &s.groups).find(|x| x.name == g).unwrap()
}

const SEED: &str = r#"{ "stages": [ { "name": "stage1", "groups": [ { "name": "group-1a" }, { "name": "group-1b" }, { "name": "group-1c" } ], "afterStageWaitInSeconds": 3600 }, { "name": "stage2", "groups": [ { "name": "group-2a" }, { "name": "group-2b" }, { "name": "group-2c" } ] } ] }"#;

#[test]
fn the_seed_strategy_runs_stages_in_order_groups_in_parallel_members_one_at_a_time() {
    let (members, facts) = fleet(&[
        ("a1", "group-1a"),
        ("a2", "group-1a"),
        ("b1", "group-1b"),
        ("c1", "group-2a"),
        ("c2", "group-2a"),
        ("d1", "group-2c"),
    ]);
    let mut run = new_run(SEED, &members, spec());
    assert_eq!(run.status.state, NotStarted);
    assert_eq!(group(&run, "group-1c").status.state, Skipped); // no members
    run = start(&run, &facts, t0());
    let (started, _) = settle(&mut run, &facts, t0());
    assert_eq!(started, ["a1", "b1"]);
    assert_eq!(run.status.state, Running);
    let t1 = t0() + hours(1);
    run = succeed(&run, "a1", t1);
    assert_eq!(settle(&mut run, &facts, t1).0, ["a2"]);
    run = succeed(&run, "b1", t1);
    run = succeed(&run, "a2", t1);
    let (started, wait) = settle(&mut run, &facts, t1);
    assert!(started.is_empty());
    // The after-stage wait holds stage 2.
    let until = t1 + hours(1);
    assert_eq!(stage(&run, "stage1").status.state, Pending);
    assert_eq!(
        stage(&run, "stage1").status.pending,
        Some(PendingReason::AfterStageWait { stage: "stage1".into(), until })
    );
    assert_eq!(run.status.state, Pending);
    assert!(matches!(wait, Some(Decision::Wait { until: Some(u), .. }) if u == until));
    assert_eq!(stage(&run, "stage2").status.state, NotStarted);
    let (started, _) = settle(&mut run, &facts, until);
    assert_eq!(stage(&run, "stage1").status.state, Completed);
    assert_eq!(started, ["c1", "d1"]);
    let t2 = until + hours(1);
    for m in ["c1", "d1"] {
        run = succeed(&run, m, t2);
    }
    assert_eq!(settle(&mut run, &facts, t2).0, ["c2"]);
    run = succeed(&run, "c2", t2);
    assert!(settle(&mut run, &facts, t2).0.is_empty());
    assert_eq!(run.status.state, Completed);
    assert_eq!(run.status.completed_at, Some(t2));
    assert_eq!(run.status.started_at, Some(t0()));
    assert_eq!(run.progress(), Progress { total: 6, completed: 6, ..Default::default() });
    assert_eq!(run.member("a1").unwrap().target.as_ref().unwrap().kubernetes, Some(v("1.37.1")));
    assert_eq!(run.member("a1").unwrap().operation.as_deref(), Some("op-a1"));
}

#[test]
fn members_already_at_the_target_or_gone_are_skipped_with_the_reason() {
    let (members, mut facts) = fleet(&[("a", "g"), ("b", "g"), ("c", "g"), ("z", "only")]);
    let at = MemberFacts {
        versions: MemberVersions {
            control_plane: Some(v("1.37.1")),
            nodes: Some(v("1.37.2")),
            ..Default::default()
        },
        ..behind()
    };
    facts.members.insert("a".into(), at.clone());
    facts.members.insert("z".into(), at);
    facts.members.remove("c");
    let mut run = new_run(
        "stages: [{name: s1, groups: [{name: only}]}, {name: s2, groups: [{name: g, maxConcurrency: 3}]}]",
        &members,
        spec(),
    );
    run = start(&run, &facts, t0());
    let (started, _) = settle(&mut run, &facts, t0());
    assert_eq!(started, ["b"]);
    assert_eq!(stage(&run, "s1").status.state, Skipped); // its only member was at the target
    let a = run.member("a").unwrap();
    assert_eq!(a.status.state, Skipped);
    assert!(a.status.message.as_deref().unwrap().contains("already at 1.37.1"), "{:?}", a.status.message);
    assert_eq!(run.member("c").unwrap().skip, Some(SkipCause::NotInFleet));
    run = succeed(&run, "b", t0());
    settle(&mut run, &facts, t0());
    assert_eq!(run.status.state, Completed);
}

#[test]
fn gates_hold_their_scope_until_approved_and_pre_approvals_can_expire() {
    let (members, facts) = fleet(&[("c", "canary"), ("p1", "prod-1"), ("p2", "prod-2")]);
    let mut run = new_run(
        r#"
stages:
  - name: canary
    groups: [{name: canary}]
    afterStageWaitInSeconds: 600
    afterGates: [{type: Approval, displayName: canary is healthy}]
  - name: prod
    beforeGates: [{type: Approval}]
    groups:
      - {name: prod-1}
      - {name: prod-2, beforeGates: [{type: Approval}]}
"#,
        &members,
        spec(),
    );
    // Pre-approve prod-2's gate with an expiry before the run can get there.
    let p2_gate: GateRef = "prod/prod-2/before/1".parse().unwrap();
    run = ok(
        &run,
        Event::ApproveGate {
            gate: p2_gate.clone(),
            by: "ana".into(),
            at: t0(),
            expires_at: Some(t0() + hours(1)),
        },
    );
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["c"]);
    run = succeed(&run, "c", t0());
    let (_, wait) = settle(&mut run, &facts, t0());
    let after: GateRef = "canary/after/1".parse().unwrap();
    assert_eq!(run.gate(&after).unwrap().state, GateStatus::Pending);
    // Both the wait and the approval hold the stage; the approval is named first.
    assert_eq!(
        stage(&run, "canary").status.pending,
        Some(PendingReason::Approval { gate: after.clone(), expired: None })
    );
    assert!(matches!(wait, Some(Decision::Wait { until: Some(_), .. })));
    let later = t0() + hours(2);
    settle(&mut run, &facts, later); // the wait ends; the approval still holds
    assert_eq!(stage(&run, "canary").status.state, Pending);
    assert_eq!(stage(&run, "canary").after_stage_wait.as_ref().unwrap().state, GateStatus::Completed);
    run = ok(&run, Event::ApproveGate { gate: after.clone(), by: "ana".into(), at: later, expires_at: None });
    assert_eq!(run.gate(&after).unwrap().approval.as_ref().unwrap().by, "ana");
    assert!(settle(&mut run, &facts, later).0.is_empty());
    assert_eq!(stage(&run, "canary").status.state, Completed);
    // The prod stage waits for its own gate.
    let prod_gate: GateRef = "prod/before/1".parse().unwrap();
    let pending: Vec<String> =
        run.gates().filter(|g| g.state == GateStatus::Pending).map(|g| g.gate.to_string()).collect();
    assert_eq!(pending, ["prod/before/1"]);
    assert_eq!(
        run.status.pending.as_ref().unwrap().to_string(),
        "stage prod: waiting for approval of gate prod/before/1 (refit fleet gate approve)"
    );
    run = ok(&run, Event::ApproveGate { gate: prod_gate, by: "bo".into(), at: later, expires_at: None });
    // prod-1 goes; prod-2's pre-approval expired, so it waits, saying why.
    assert_eq!(settle(&mut run, &facts, later).0, ["p1"]);
    let g = group(&run, "prod-2");
    assert_eq!(g.status.state, Pending);
    assert!(
        matches!(&g.status.pending, Some(PendingReason::Approval { expired: Some(a), .. }) if a.by == "ana")
    );
    run =
        ok(&run, Event::ApproveGate { gate: p2_gate.clone(), by: "ana".into(), at: later, expires_at: None });
    assert_eq!(settle(&mut run, &facts, later).0, ["p2"]);
    // Approving a passed gate says so.
    let err = apply(&run, &Event::ApproveGate { gate: p2_gate, by: "x".into(), at: later, expires_at: None })
        .unwrap_err();
    assert!(err.to_string().contains("is Completed: cannot approve it"), "{err}");
    let err = apply(
        &run,
        &Event::ApproveGate {
            gate: "prod/after/1".parse().unwrap(),
            by: "x".into(),
            at: later,
            expires_at: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, TransitionError::UnknownGate { .. }));
}

#[test]
fn scheduled_start_gates_complete_at_their_time_or_when_approved() {
    let (members, facts) = fleet(&[("a", "g")]);
    let mut run = new_run(
        "stages: [{name: s, beforeGates: [{type: ScheduledStart, startDay: Monday, startTime: \"09:00\", utcOffset: \"+02:00\"}], groups: [{name: g}]}]",
        &members,
        spec(),
    );
    run = start(&run, &facts, t0());
    let (started, wait) = settle(&mut run, &facts, t0());
    assert!(started.is_empty());
    let monday = ts("2026-06-15T07:00:00Z");
    assert_eq!(run.gate(&"s/before/1".parse().unwrap()).unwrap().starts_at, Some(monday));
    assert!(matches!(wait, Some(Decision::Wait { until: Some(u), .. }) if u == monday));
    assert!(
        matches!(stage(&run, "s").status.pending, Some(PendingReason::ScheduledStart { starts_at, .. }) if starts_at == monday)
    );
    assert!(settle(&mut run, &facts, monday - SignedDuration::from_secs(1)).0.is_empty());
    assert_eq!(settle(&mut run, &facts, monday).0, ["a"]);
}

#[test]
fn stop_lets_upgrades_under_way_finish_and_start_continues() {
    let (members, facts) = fleet(&[("a", "g"), ("b", "g"), ("c", "g")]);
    let mut run = new_run("stages: [{name: s, groups: [{name: g, maxConcurrency: 2}]}]", &members, spec());
    assert!(run.under_way(), "not started yet: a --wait waits");
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a", "b"]);
    run = ok(&run, Event::Stop { at: t0(), by: None });
    assert!(run.under_way(), "stopping with upgrades in flight");
    assert_eq!(run.status.state, Stopping);
    assert_eq!((state_of(&run, "a"), state_of(&run, "b")), (Stopping, Stopping));
    assert!(matches!(&next(&run, &facts, t0())[..], [Decision::Wait { until: None, .. }]));
    let err = apply(
        &run,
        &Event::MemberStarted {
            member: "c".into(),
            at: t0(),
            target: MemberTarget::default(),
            operation: None,
            window_closes_at: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, TransitionError::Run { state: Stopping, .. }), "{err}");
    assert!(matches!(
        apply(&run, &Event::Start { at: t0(), targets: None, plan: None, by: None }),
        Err(TransitionError::Run { .. })
    ));
    run = succeed(&run, "a", t0());
    assert_eq!(run.status.state, Stopping);
    run = succeed(&run, "b", t0());
    assert_eq!(run.status.state, Stopped);
    assert!(!run.under_way(), "stopped, nothing in flight: where a --wait ends");
    assert_eq!(group(&run, "g").status.state, Stopped);
    assert_eq!(state_of(&run, "c"), NotStarted);
    assert!(next(&run, &facts, t0()).is_empty());
    assert!(apply(&run, &Event::Stop { at: t0(), by: None }).is_err());
    run = ok(&run, Event::Start { at: t0(), targets: None, plan: None, by: None });
    assert_eq!(run.attempt, 2);
    assert_eq!(settle(&mut run, &facts, t0()).0, ["c"]);
    run = succeed(&run, "c", t0());
    assert_eq!(run.status.state, Completed);
    assert!(!run.under_way());
}

#[test]
fn a_failure_fails_group_stage_and_run_and_nothing_else_starts() {
    let (members, facts) = fleet(&[("a1", "ga"), ("a2", "ga"), ("b1", "gb"), ("b2", "gb"), ("z", "later")]);
    let mut run = new_run(
        "stages: [{name: s, groups: [{name: ga}, {name: gb}]}, {name: t, groups: [{name: later}]}]",
        &members,
        spec(),
    );
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a1", "b1"]);
    run = fail(&run, "a1", t0());
    assert_eq!(group(&run, "ga").status.state, Failed);
    assert_eq!(stage(&run, "s").status.state, Failed);
    assert_eq!(run.status.state, Failed);
    assert_eq!(run.failure_count, 1);
    assert!(run.status.error.as_deref().unwrap().contains("a1"), "{:?}", run.status.error);
    // b1's upgrade runs on and is recorded; nothing new starts.
    assert_eq!(state_of(&run, "b1"), Stopping);
    assert!(next(&run, &facts, t0()).iter().all(|d| matches!(d, Decision::Wait { .. })));
    let start_b2 = Event::MemberStarted {
        member: "b2".into(),
        at: t0(),
        target: MemberTarget::default(),
        operation: None,
        window_closes_at: None,
    };
    assert!(apply(&run, &start_b2).is_err());
    run = succeed(&run, "b1", t0());
    assert_eq!(state_of(&run, "b1"), Completed);
    assert_eq!(run.status.state, Failed);
    assert_eq!(group(&run, "gb").status.state, Stopped);
    assert_eq!(state_of(&run, "z"), NotStarted);
    // Start again re-applies the failed member.
    run = ok(&run, Event::Start { at: t0(), targets: None, plan: None, by: None });
    assert_eq!(state_of(&run, "a1"), NotStarted);
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a1", "b2"]);
    assert_eq!(run.member("a1").unwrap().attempts, 2);
}

#[test]
fn max_allowed_failures_tolerates_failures_counts_them_and_retry_reruns_only_those() {
    let (members, facts) = fleet(&[("a1", "ga"), ("a2", "ga"), ("a3", "ga"), ("z", "later")]);
    let mut run = new_run(
        "stages: [{name: s, maxAllowedFailures: 1, groups: [{name: ga, maxAllowedFailures: \"34%\"}]}, {name: t, groups: [{name: later}]}]",
        &members,
        spec(),
    );
    assert_eq!(group(&run, "ga").max_allowed_failures, 2); // ceil(34% of 3)
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a1"]);
    run = fail(&run, "a1", t0());
    assert_eq!(group(&run, "ga").status.state, Running);
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a2"]);
    run = succeed(&run, "a2", t0());
    run = ok(
        &run,
        Event::Skip { targets: vec![SkipTarget::Member("a3".into())], by: Some("ana".into()), at: t0() },
    );
    assert_eq!(settle(&mut run, &facts, t0()).0, ["z"]);
    assert_eq!((group(&run, "ga").status.state, group(&run, "ga").failure_count), (Completed, 1));
    assert_eq!(stage(&run, "s").status.state, Completed);
    run = succeed(&run, "z", t0());
    assert_eq!((run.status.state, run.failure_count), (Completed, 1));
    // Retry only the failed member, with the frozen targets; the skipped one stays skipped.
    let frozen = run.targets.clone();
    run = ok(&run, Event::RetryFailed { at: t0(), by: None });
    assert_eq!((run.status.state, stage(&run, "s").status.state), (Running, Running));
    assert_eq!(state_of(&run, "a3"), Skipped);
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a1"]);
    assert_eq!(run.targets, frozen);
    run = succeed(&run, "a1", t0());
    assert_eq!((run.status.state, run.failure_count), (Completed, 0));
    assert!(matches!(
        apply(&run, &Event::RetryFailed { at: t0(), by: None }),
        Err(TransitionError::State { .. })
    ));
}

#[test]
fn start_again_reapplies_skipped_work_but_not_members_already_at_the_target() {
    let (members, mut facts) = fleet(&[("a", "g"), ("b", "g"), ("c", "g")]);
    facts.members.get_mut("c").unwrap().versions.control_plane = Some(v("1.37.1"));
    facts.members.get_mut("c").unwrap().versions.nodes = Some(v("1.37.1"));
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = ok(&run, Event::Skip { targets: vec![SkipTarget::Member("b".into())], by: None, at: t0() });
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a"]);
    assert_eq!(run.member("c").unwrap().skip.as_ref().map(SkipCause::leaves_work), Some(false));
    run = fail(&run, "a", t0());
    run = ok(&run, Event::RetryFailed { at: t0(), by: None });
    assert_eq!(state_of(&run, "b"), Skipped);
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a"]);
    run = fail(&run, "a", t0());
    run = ok(&run, Event::Start { at: t0(), targets: None, plan: None, by: None });
    assert_eq!(
        (state_of(&run, "a"), state_of(&run, "b"), state_of(&run, "c")),
        (NotStarted, NotStarted, Skipped)
    );
}

#[test]
fn skip_targets_members_groups_stages_and_after_stage_waits() {
    let (members, facts) = fleet(&[("a", "ga"), ("b", "gb"), ("c", "gc"), ("d", "gd")]);
    let strategy = r#"
stages:
  - {name: s1, groups: [{name: ga}, {name: gb, afterGates: [{type: Approval}]}], afterStageWaitInSeconds: 3600}
  - {name: s2, groups: [{name: gc}], beforeGates: [{type: Approval}]}
  - {name: s3, groups: [{name: gd}]}
"#;
    let mut run = new_run(strategy, &members, spec());
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a", "b"]);
    let skip = |run: &RunState, t: &str| {
        apply(run, &Event::Skip { targets: vec![t.parse().unwrap()], by: Some("ana".into()), at: t0() })
    };
    assert!(skip(&run, "Member:a").unwrap_err().to_string().contains("under way"));
    assert!(matches!(skip(&run, "Member:nobody"), Err(TransitionError::UnknownMember { .. })));
    assert!(matches!(skip(&run, "Group:nobody"), Err(TransitionError::UnknownGroup { .. })));
    // A bad target among good ones changes nothing.
    let bad = apply(
        &run,
        &Event::Skip {
            targets: vec![SkipTarget::Stage("s2".into()), SkipTarget::Stage("s9".into())],
            by: None,
            at: t0(),
        },
    );
    assert!(bad.is_err());
    run = succeed(&run, "a", t0());
    assert!(skip(&run, "Member:a").unwrap_err().to_string().contains("Completed"));
    run = succeed(&run, "b", t0());
    settle(&mut run, &facts, t0());
    // gb waits on its after gate; skipping the group skips the gate (its member stays Completed).
    assert_eq!(group(&run, "gb").status.state, Pending);
    run = skip(&run, "Group:gb").unwrap();
    assert_eq!(run.gate(&"s1/gb/after/1".parse().unwrap()).unwrap().state, GateStatus::Skipped);
    assert_eq!((group(&run, "gb").status.state, state_of(&run, "b")), (Completed, Completed));
    settle(&mut run, &facts, t0());
    assert_eq!(stage(&run, "s1").status.state, Pending);
    run = skip(&run, "AfterStageWait:s1").unwrap();
    assert_eq!(stage(&run, "s1").after_stage_wait.as_ref().unwrap().state, GateStatus::Skipped);
    assert_eq!(stage(&run, "s1").status.state, Completed);
    // Skipping a stage skips its gates and members: the run moves on to s3.
    settle(&mut run, &facts, t0());
    assert_eq!(stage(&run, "s2").status.state, Pending);
    run = skip(&run, "Stage:s2").unwrap();
    assert_eq!(stage(&run, "s2").status.state, Skipped);
    assert_eq!(run.gate(&"s2/before/1".parse().unwrap()).unwrap().state, GateStatus::Skipped);
    assert!(
        run.member("c").unwrap().status.message.as_deref().unwrap().contains("skipped by ana (Stage:s2)")
    );
    assert_eq!(settle(&mut run, &facts, t0()).0, ["d"]);
    assert_eq!(run.skips.len(), 3);
    assert!(skip(&run, "AfterStageWait:s3").is_err()); // s3 has no wait
}

#[test]
fn skipping_a_completed_group_is_refused_and_a_fully_skipped_run_is_skipped() {
    let (members, facts) = fleet(&[("a", "ga"), ("b", "gb")]);
    let mut run = new_run(
        "stages: [{name: s1, groups: [{name: ga}]}, {name: s2, groups: [{name: gb}]}]",
        &members,
        spec(),
    );
    run = start(&run, &facts, t0());
    settle(&mut run, &facts, t0());
    run = succeed(&run, "a", t0());
    let err = apply(&run, &Event::Skip { targets: vec![SkipTarget::Group("ga".into())], by: None, at: t0() })
        .unwrap_err();
    assert!(err.to_string().contains("group ga is Completed"), "{err}");

    let mut fresh = new_run(
        "stages: [{name: s1, groups: [{name: ga}]}, {name: s2, groups: [{name: gb}]}]",
        &members,
        spec(),
    );
    fresh = ok(
        &fresh,
        Event::Skip {
            targets: vec![SkipTarget::Stage("s1".into()), SkipTarget::Stage("s2".into())],
            by: None,
            at: t0(),
        },
    );
    assert_eq!(fresh.status.state, NotStarted); // not finished before it started
    fresh = ok(
        &fresh,
        Event::Start { at: t0(), targets: Some(freeze_targets(&fresh.spec, [])), plan: None, by: None },
    );
    assert_eq!(fresh.status.state, Skipped);
    assert!(next(&fresh, &facts, t0()).is_empty());
    let err = apply(&fresh, &Event::Start { at: t0(), targets: None, plan: None, by: None }).unwrap_err();
    assert!(matches!(err, TransitionError::Run { state: Skipped, .. }));
}

fn window_on(days: Vec<Day>, start: &str, minutes: u32) -> MaintenanceWindow {
    crate::fleet::window::window(Recurrence::Weekly(days), start, minutes, "UTC")
}

#[test]
fn maintenance_windows_order_members_and_pend_with_the_next_opening_until_the_budget_runs_out() {
    // Now is Wednesday 12:00 UTC.
    let (members, mut facts) = fleet(&[("a-closed", "g"), ("b-none", "g"), ("c-soon", "g"), ("d-open", "g")]);
    let set = |facts: &mut Facts, m: &str, w| facts.members.get_mut(m).unwrap().window = Some(w);
    set(&mut facts, "a-closed", window_on(vec![Day::Saturday], "22:00", 240));
    set(&mut facts, "c-soon", window_on(vec![Day::Wednesday], "14:00", 240));
    set(&mut facts, "d-open", window_on(vec![Day::Wednesday], "11:00", 120));
    let mut spec = spec();
    spec.pending_budget_seconds = Some(6 * 3600);
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec);
    run = start(&run, &facts, t0());
    let (started, _) = settle(&mut run, &facts, t0());
    assert_eq!(started, ["d-open"]);
    assert_eq!(run.member("d-open").unwrap().window_closes_at, Some(ts("2026-06-10T13:00:00Z")));
    let saturday = ts("2026-06-13T22:00:00Z");
    assert_eq!(
        run.member("a-closed").unwrap().status.pending,
        Some(PendingReason::WindowClosed { opens_at: Some(saturday) })
    );
    assert_eq!(state_of(&run, "c-soon"), Pending);
    assert_eq!(state_of(&run, "b-none"), NotStarted); // queued behind the open window
    // At 15:00 c-soon's window is open: it goes before the member without a window.
    let t = ts("2026-06-10T15:00:00Z");
    run = succeed(&run, "d-open", t);
    assert_eq!(settle(&mut run, &facts, t).0, ["c-soon"]);
    run = succeed(&run, "c-soon", t);
    assert_eq!(settle(&mut run, &facts, t).0, ["b-none"]);
    run = succeed(&run, "b-none", t);
    let (_, wait) = settle(&mut run, &facts, t);
    // Only the closed window is left: everything is Pending with its next opening…
    let g = group(&run, "g");
    assert_eq!(g.status.state, Pending);
    assert_eq!(g.status.pending.as_ref().unwrap().until(), Some(saturday));
    assert_eq!(run.status.state, Pending);
    assert!(
        run.status
            .pending
            .as_ref()
            .unwrap()
            .to_string()
            .contains("member a-closed: maintenance window closed")
    );
    // …and the driver is told to look again when the budget runs out (before Saturday).
    let deadline = ts("2026-06-10T18:00:00Z");
    assert!(matches!(wait, Some(Decision::Wait { until: Some(u), .. }) if u == deadline), "{wait:?}");
    settle(&mut run, &facts, deadline);
    let a = run.member("a-closed").unwrap();
    assert_eq!(a.status.state, Skipped);
    assert!(matches!(a.skip, Some(SkipCause::Deferred { budget_seconds: 21600, .. })));
    assert!(a.status.message.as_deref().unwrap().starts_with("deferred after 6h pending"));
    assert_eq!(run.status.state, Completed);
}

#[test]
fn a_members_own_pending_budget_overrides_the_runs() {
    // Now is Wednesday 12:00 UTC; both windows open on Saturday.
    let (members, mut facts) = fleet(&[("a", "g"), ("b", "h")]);
    for m in ["a", "b"] {
        facts.members.get_mut(m).unwrap().window = Some(window_on(vec![Day::Saturday], "22:00", 240));
    }
    facts.members.get_mut("b").unwrap().pending_budget_seconds = Some(3600);
    let mut spec = spec();
    spec.pending_budget_seconds = Some(6 * 3600);
    let mut run = new_run("stages: [{name: s, groups: [{name: g}, {name: h}]}]", &members, spec);
    run = start(&run, &facts, t0());
    settle(&mut run, &facts, t0());
    let later = t0() + hours(2);
    settle(&mut run, &facts, later);
    assert!(matches!(run.member("b").unwrap().skip, Some(SkipCause::Deferred { budget_seconds: 3600, .. })));
    assert_eq!(state_of(&run, "a"), Pending, "a keeps the run's six hours");
}

#[test]
fn a_pending_member_whose_window_opens_without_a_free_slot_is_queued_again() {
    let (members, mut facts) = fleet(&[("a", "g"), ("b", "g")]);
    facts.members.get_mut("b").unwrap().window = Some(window_on(vec![Day::Wednesday], "13:00", 60));
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a"]);
    assert_eq!(state_of(&run, "b"), Pending);
    let t = ts("2026-06-10T13:30:00Z");
    settle(&mut run, &facts, t);
    assert_eq!(state_of(&run, "b"), NotStarted);
    run = succeed(&run, "a", t);
    assert_eq!(settle(&mut run, &facts, t).0, ["b"]);
}

#[test]
fn unavailable_members_pend_with_the_reason() {
    let (members, mut facts) = fleet(&[("a", "g")]);
    facts.members.get_mut("a").unwrap().unavailable = Some("apiserver unreachable".into());
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    let (_, wait) = settle(&mut run, &facts, t0());
    assert_eq!(
        run.member("a").unwrap().status.pending,
        Some(PendingReason::Unavailable { message: "apiserver unreachable".into() })
    );
    assert!(matches!(wait, Some(Decision::Wait { until: None, .. })));
    facts.members.get_mut("a").unwrap().unavailable = None;
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a"]);
}

#[test]
fn concurrency_limits_are_enforced_by_apply_too() {
    let (members, facts) = fleet(&[("a", "ga"), ("b", "ga"), ("c", "gb")]);
    let mut run = new_run(
        "stages: [{name: s, maxConcurrency: 2, groups: [{name: ga, maxConcurrency: 2}, {name: gb}]}]",
        &members,
        spec(),
    );
    run = start(&run, &facts, t0());
    let started = |m: &str| Event::MemberStarted {
        member: m.into(),
        at: t0(),
        target: MemberTarget::default(),
        operation: None,
        window_closes_at: None,
    };
    run = ok(&run, started("a"));
    run = ok(&run, started("b"));
    let err = apply(&run, &started("c")).unwrap_err();
    assert_eq!(err, TransitionError::Concurrency { member: "c".into(), scope: "stage s".into(), max: 2 });
    assert!(next(&run, &facts, t0()).iter().all(|d| !matches!(d, Decision::StartMember { .. })));
}

#[test]
fn events_that_do_not_fit_are_refused_with_the_reason() {
    let (members, facts) = fleet(&[("a", "ga"), ("z", "gz")]);
    let run = new_run(
        "stages: [{name: s, groups: [{name: ga}]}, {name: t, groups: [{name: gz}]}]",
        &members,
        spec(),
    );
    assert_eq!(
        apply(&run, &Event::Start { at: t0(), targets: None, plan: None, by: None }),
        Err(TransitionError::TargetsRequired("run-1".into()))
    );
    let started = start(&run, &facts, t0());
    let targets = started.targets.clone();
    assert!(matches!(
        apply(&started, &Event::Start { at: t0(), targets: targets.clone(), plan: None, by: None }),
        Err(TransitionError::Run { state: Running, .. })
    ));
    let later_stage = Event::MemberStarted {
        member: "z".into(),
        at: t0(),
        target: MemberTarget::default(),
        operation: None,
        window_closes_at: None,
    };
    let err = apply(&started, &later_stage).unwrap_err();
    assert!(err.to_string().contains("stage s comes first"), "{err}");
    let err =
        apply(&started, &Event::MemberSucceeded { member: "a".into(), at: t0(), message: None }).unwrap_err();
    assert!(err.to_string().contains("member a is NotStarted: cannot record a success"), "{err}");
    let requested = SkipCause::Requested { target: SkipTarget::Member("a".into()), by: None };
    assert_eq!(
        apply(&started, &Event::MemberSkipped { member: "a".into(), at: t0(), cause: requested }),
        Err(TransitionError::RequestedSkip)
    );
    assert!(matches!(
        apply(&run, &Event::Stop { at: t0(), by: None }),
        Err(TransitionError::Run { state: NotStarted, .. })
    ));
    let mut stopped = ok(&started, Event::Stop { at: t0(), by: None });
    assert_eq!(stopped.status.state, Stopped);
    assert_eq!(
        apply(&stopped, &Event::Start { at: t0(), targets, plan: None, by: None }),
        Err(TransitionError::AlreadyFrozen("run-1".into()))
    );
    stopped = ok(&stopped, Event::Start { at: t0(), targets: None, plan: None, by: None });
    assert_eq!(stopped.status.state, Running);
    assert!("Cluster:x".parse::<SkipTarget>().is_err());
    assert_eq!("AfterStageWait:s1".parse::<SkipTarget>().unwrap(), SkipTarget::AfterStageWait("s1".into()));
    assert!(
        RunState::new(
            "r",
            UpgradeSpec::new(UpgradeType::Full, None),
            Strategy::one_by_one(),
            resolve(&Strategy::one_by_one(), &members).unwrap(),
            t0()
        )
        .is_err()
    );
}

#[test]
fn the_member_set_is_resolved_again_at_the_first_start_keeping_requested_skips() {
    let strategy = Strategy::one_by_one();
    let (old, _) = fleet(&[("a", "x"), ("b", "x")]);
    let (new, facts) = fleet(&[("b", "x"), ("c", "x")]);
    let mut run =
        RunState::new("r", spec(), strategy.clone(), resolve(&strategy, &old).unwrap(), t0()).unwrap();
    run = ok(
        &run,
        Event::Skip { targets: vec![SkipTarget::Member("b".into())], by: Some("ana".into()), at: t0() },
    );
    let targets = freeze_targets(&run.spec, facts.members.values().map(|f| &f.versions));
    let plan = resolve(&strategy, &new).unwrap();
    let mut run =
        ok(&run, Event::Start { at: t0(), targets: Some(targets.clone()), plan: Some(plan), by: None });
    assert!(run.member("a").is_none());
    assert_eq!(state_of(&run, "b"), Skipped);
    assert_eq!(settle(&mut run, &facts, t0()).0, ["c"]);

    let other = Strategy::parse(SEED).unwrap();
    let fresh =
        RunState::new("r", spec(), strategy.clone(), resolve(&strategy, &old).unwrap(), t0()).unwrap();
    let err = apply(
        &fresh,
        &Event::Start {
            at: t0(),
            targets: Some(targets),
            plan: Some(resolve(&other, &new).unwrap()),
            by: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, TransitionError::PlanMismatch { .. }));
}

#[test]
fn node_images_consistent_targets_are_frozen_and_members_without_one_are_skipped() {
    let img = |f: &str, v: &str| NodeImage { family: f.into(), version: v.into() };
    let mut facts = Facts::default();
    for (name, current, offered) in [
        ("eu", vec![img("ubuntu", "1.0")], vec![img("ubuntu", "1.1"), img("ubuntu", "1.2")]),
        ("us", vec![img("ubuntu", "1.0")], vec![img("ubuntu", "1.1")]),
        ("asia", vec![img("azl", "3.0")], vec![]),
    ] {
        facts.members.insert(
            name.into(),
            MemberFacts {
                versions: MemberVersions {
                    node_images: current,
                    available_node_images: offered,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    }
    let members: Vec<FleetMember> =
        facts.members.keys().map(|n| FleetMember { name: n.clone(), ..Default::default() }).collect();
    let mut spec = UpgradeSpec::new(UpgradeType::NodeImageOnly, None);
    spec.node_image_selection = NodeImageSelection::Consistent;
    let strategy = Strategy::one_by_one();
    let mut run =
        RunState::new("imgs", spec, strategy.clone(), resolve(&strategy, &members).unwrap(), t0()).unwrap();
    run = start(&run, &facts, t0());
    assert!(
        matches!(&run.targets.as_ref().unwrap().node_images, NodeImageTargets::Consistent { images, missing } if images["ubuntu"] == "1.1" && missing == &["azl"])
    );
    assert_eq!(settle(&mut run, &facts, t0()).0, ["eu"]);
    assert_eq!(run.member("asia").unwrap().skip, Some(SkipCause::NoTargetImage { family: "azl".into() }));
    assert_eq!(run.member("eu").unwrap().target.as_ref().unwrap().node_images["ubuntu"], "1.1");
}

#[test]
fn profile_runs_skip_members_more_than_one_minor_behind() {
    let (members, mut facts) = fleet(&[("old", "g"), ("ok", "g")]);
    facts.members.get_mut("old").unwrap().versions.control_plane = Some(v("1.35.2"));
    let mut spec = spec();
    spec.at_most_one_minor = true;
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec);
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["ok"]);
    let old = run.member("old").unwrap();
    assert!(matches!(old.skip, Some(SkipCause::TooFarBehind { .. })));
    assert!(old.status.message.as_deref().unwrap().contains("bring it to 1.36"), "{:?}", old.status.message);
}

#[test]
fn runs_round_trip_through_json_and_serialize_to_yaml() {
    let (members, facts) = fleet(&[("a", "group-1a"), ("b", "group-2a")]);
    let mut run = new_run(SEED, &members, spec());
    run = start(&run, &facts, t0());
    settle(&mut run, &facts, t0());
    run = fail(&run, "a", t0());
    let json = serde_json::to_string_pretty(&run).unwrap();
    assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), run);
    assert!(json.contains("\"state\": \"Failed\""), "{json}");
    let yaml = serde_saphyr::to_string(&run).unwrap();
    assert!(yaml.contains("afterStageWait"), "{yaml}");
    let e = Event::Skip { targets: vec![SkipTarget::Group("g".into())], by: None, at: t0() };
    let text = serde_json::to_string(&e).unwrap();
    assert_eq!(text, r#"{"event":"Skip","targets":["Group:g"],"at":"2026-06-10T12:00:00Z"}"#);
    assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
}

#[test]
fn the_transition_tables_hold_what_the_docs_promise() {
    // Completed members never change; parents only re-open via start/retry.
    for to in [NotStarted, Running, Pending, Stopping, Stopped, Skipped, Failed] {
        assert!(!allowed(Level::Member, Completed, to), "{to}");
    }
    assert!(allowed(Level::Member, Running, Stopping));
    assert!(!allowed(Level::Member, NotStarted, Completed));
    assert!(!allowed(Level::Stage, NotStarted, Failed));
    assert!(allowed(Level::Run, Failed, Running));
    assert!(allowed(Level::Group, Pending, Pending));
}

#[test]
fn a_group_empty_at_creation_keeps_its_gates_when_members_join_before_the_start() {
    let text = "stages: [{name: s, groups: [{name: g, beforeGates: [{type: Approval}]}, {name: h}]}]";
    let strategy = Strategy::parse(text).unwrap();
    let (at_creation, _) = fleet(&[("x", "other")]);
    let mut run =
        RunState::new("r", spec(), strategy.clone(), resolve(&strategy, &at_creation).unwrap(), t0())
            .unwrap();
    // Nothing is selected yet: the stage looks skipped, the run is simply not started.
    assert_eq!((run.status.state, stage(&run, "s").status.state), (NotStarted, Skipped));
    assert_eq!(run.gate(&"s/g/before/1".parse().unwrap()).unwrap().state, GateStatus::Skipped);
    // A skip command given before the start applies to the members resolved at the start.
    run = ok(
        &run,
        Event::Skip { targets: vec![SkipTarget::Group("h".into())], by: Some("ana".into()), at: t0() },
    );
    let (now_members, facts) = fleet(&[("a", "g"), ("b", "h")]);
    let targets = freeze_targets(&run.spec, facts.members.values().map(|f| &f.versions));
    let plan = resolve(&strategy, &now_members).unwrap();
    run = ok(&run, Event::Start { at: t0(), targets: Some(targets), plan: Some(plan), by: None });
    assert_eq!(run.gate(&"s/g/before/1".parse().unwrap()).unwrap().state, GateStatus::NotStarted);
    assert!(matches!(run.member("b").unwrap().skip, Some(SkipCause::Requested { .. })));
    let (started, _) = settle(&mut run, &facts, t0());
    assert!(started.is_empty());
    assert_eq!(group(&run, "g").status.state, Pending); // waiting for its approval, as configured
    assert!(run.unselected.is_empty());
}

#[test]
fn a_member_paused_at_its_window_close_waits_for_the_next_opening_and_continues() {
    // Now is Wednesday 12:00 UTC; the window is Wednesdays 11:00–13:00.
    let (members, mut facts) = fleet(&[("m", "g"), ("n", "g")]);
    facts.members.get_mut("m").unwrap().window = Some(window_on(vec![Day::Wednesday], "11:00", 120));
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["m"]);
    assert_eq!(run.member("m").unwrap().window_closes_at, Some(ts("2026-06-10T13:00:00Z")));

    // 13:05: its upgrade stopped starting nodes at 13:00 and paused with nodes left.
    let t = ts("2026-06-10T13:05:00Z");
    run = ok(&run, Event::MemberPaused { member: "m".into(), at: t, message: "2 nodes left".into() });
    let m = run.member("m").unwrap();
    assert_eq!(m.status.state, Pending);
    assert!(
        matches!(&m.status.pending, Some(PendingReason::Paused { message }) if message == "2 nodes left")
    );
    assert_eq!(m.pending_since, Some(t));
    assert_eq!(run.status.state, Pending, "the run waits on it: {:?}", run.status);

    // The driver looks again: the reason becomes the next opening. A member waiting on its
    // window holds no slot: n (no window) goes meanwhile.
    let (started, _) = settle(&mut run, &facts, t);
    assert_eq!(started, ["n"]);
    run = succeed(&run, "n", t);
    let (started, wait) = settle(&mut run, &facts, t);
    assert!(started.is_empty(), "{started:?}");
    let next_week = ts("2026-06-17T11:00:00Z");
    assert_eq!(
        run.member("m").unwrap().status.pending,
        Some(PendingReason::WindowClosed { opens_at: Some(next_week) })
    );
    assert!(matches!(wait, Some(Decision::Wait { until: Some(u), .. }) if u == next_week), "{wait:?}");

    // Next Wednesday it starts again (a second attempt: its single-cluster run resumes).
    let later = ts("2026-06-17T11:30:00Z");
    assert_eq!(settle(&mut run, &facts, later).0, ["m"]);
    let m = run.member("m").unwrap();
    assert_eq!((m.status.state, m.attempts), (Running, 2));
    assert_eq!(m.window_closes_at, Some(ts("2026-06-17T13:00:00Z")));
    assert!(run.member("m").unwrap().unfinished);
    run = succeed(&run, "m", later);
    assert!(!run.member("m").unwrap().unfinished);
    settle(&mut run, &facts, later);
    assert_eq!(run.status.state, Completed);
}

#[test]
fn a_paused_member_that_looks_at_the_target_is_continued_not_skipped() {
    // Paused with only the cluster services left: every node is at 1.37.1 already.
    let (members, mut facts) = fleet(&[("m", "g")]);
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    settle(&mut run, &facts, t0());
    run = ok(
        &run,
        Event::MemberPaused { member: "m".into(), at: t0(), message: "cluster services left".into() },
    );
    let f = facts.members.get_mut("m").unwrap();
    f.versions.control_plane = Some(v("1.37.1"));
    f.versions.nodes = Some(v("1.37.1"));
    // Even across a stop and a start again.
    run = ok(&run, Event::Stop { at: t0(), by: None });
    assert_eq!(state_of(&run, "m"), Stopped);
    run = ok(&run, Event::Start { at: t0(), targets: None, plan: None, by: None });
    let (started, _) = settle(&mut run, &facts, t0());
    assert_eq!(started, ["m"], "continued: {:?}", run.member("m").unwrap().status);
    assert_eq!(run.member("m").unwrap().target.as_ref().unwrap().kubernetes, Some(v("1.37.1")));
    // A member that was never paused and is at the target is skipped as before.
    let (members, mut facts) = fleet(&[("n", "g")]);
    let f = facts.members.get_mut("n").unwrap();
    f.versions.control_plane = Some(v("1.37.1"));
    f.versions.nodes = Some(v("1.37.1"));
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    assert!(settle(&mut run, &facts, t0()).0.is_empty());
    assert_eq!(state_of(&run, "n"), Skipped);
}

#[test]
fn a_member_paused_while_its_run_stops_is_stopped_and_other_states_refuse_a_pause() {
    let (members, facts) = fleet(&[("m", "g")]);
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    let paused =
        |m: &str| Event::MemberPaused { member: m.into(), at: t0(), message: "window closed".into() };
    assert!(apply(&run, &paused("m")).is_err(), "NotStarted cannot pause");
    run = start(&run, &facts, t0());
    settle(&mut run, &facts, t0());
    run = ok(&run, Event::Stop { at: t0(), by: None });
    assert_eq!(state_of(&run, "m"), Stopping);
    run = ok(&run, paused("m"));
    assert_eq!((state_of(&run, "m"), run.status.state), (Stopped, Stopped));
    assert!(apply(&run, &paused("m")).is_err(), "Stopped cannot pause");
    assert!(apply(&run, &paused("ghost")).is_err());
}

#[test]
fn a_member_waiting_on_a_closed_window_has_not_started_until_its_upgrade_does() {
    // Now is Wednesday 12:00 UTC; b's window opens at 13:00.
    let (members, mut facts) = fleet(&[("b", "g")]);
    facts.members.get_mut("b").unwrap().window = Some(window_on(vec![Day::Wednesday], "13:00", 60));
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    settle(&mut run, &facts, t0());
    let b = run.member("b").unwrap();
    assert_eq!(b.status.state, Pending);
    assert_eq!(b.status.started_at, None, "waiting is not starting");
    assert_eq!(b.status.took(t0() + hours(1)), None);
    // The group waits for it from t0 on: it has been reached.
    assert_eq!(group(&run, "g").status.started_at, Some(t0()));
    let t = ts("2026-06-10T13:00:00Z");
    assert_eq!(settle(&mut run, &facts, t).0, ["b"]);
    assert_eq!(run.member("b").unwrap().status.started_at, Some(t));
    // A member stopped while it waited never started either.
    let (members, mut facts) = fleet(&[("c", "g")]);
    facts.members.get_mut("c").unwrap().window = Some(window_on(vec![Day::Saturday], "22:00", 60));
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    settle(&mut run, &facts, t0());
    run = ok(&run, Event::Stop { at: t0() + hours(1), by: None });
    let c = run.member("c").unwrap();
    assert_eq!((c.status.state, c.status.started_at), (Stopped, None));
}

#[test]
fn the_time_a_run_spent_stopped_does_not_count_in_what_its_stages_took() {
    let (members, facts) = fleet(&[("a", "g"), ("b", "g")]);
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a"]);
    // Stopped after an hour of work (a finishes at once), started again ten hours later.
    let t1 = t0() + hours(1);
    run = ok(&run, Event::Stop { at: t1, by: None });
    run = succeed(&run, "a", t1);
    assert_eq!(stage(&run, "s").status.state, Stopped);
    let t2 = t1 + hours(10);
    run = ok(&run, Event::Start { at: t2, targets: None, plan: None, by: None });
    assert_eq!(settle(&mut run, &facts, t2).0, ["b"]);
    // Half an hour in, the stage has taken 1.5 hours, not 11.5.
    let now = t2 + SignedDuration::from_mins(30);
    assert_eq!(stage(&run, "s").status.took(now), Some(SignedDuration::from_mins(90)));
    let t3 = t2 + hours(1);
    run = succeed(&run, "b", t3);
    let s = &stage(&run, "s").status;
    assert_eq!((s.state, s.started_at, s.completed_at), (Completed, Some(t0()), Some(t3)));
    assert_eq!(s.took(t3 + hours(5)), Some(hours(2)), "finished: later instants change nothing");
    assert_eq!(run.status.took(t3), Some(hours(2)));
    assert_eq!(run.member("b").unwrap().status.took(t3), Some(hours(1)));
}

#[test]
fn a_requested_stop_completes_when_the_last_upgrade_under_way_finishes() {
    // c waits behind a: the stop leaves it unstarted.
    let (members, facts) = fleet(&[("a", "g"), ("b", "h"), ("c", "g")]);
    let mut run = new_run("stages: [{name: s, groups: [{name: g}, {name: h}]}]", &members, spec());
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a", "b"]);
    let stopped = ok(&run, Event::Stop { at: t0(), by: None });
    assert_eq!(stopped.status.state, Stopping);
    assert_eq!(follow_up(&run, &stopped, t0()), None, "upgrades are still under way");
    let one = succeed(&stopped, "a", t0() + hours(1));
    assert_eq!(follow_up(&stopped, &one, t0()), None);
    let at = t0() + hours(2);
    let both = succeed(&one, "b", at);
    assert_eq!(both.status.state, Stopped);
    assert_eq!(follow_up(&one, &both, at), Some(Event::StopCompleted { at }));
    // Recording it changes nothing; it fits only a run stopped on request.
    assert_eq!(ok(&both, Event::StopCompleted { at }), both);
    let err = apply(&run, &Event::StopCompleted { at }).unwrap_err();
    assert!(matches!(err, TransitionError::Run { state: Running, .. }), "{err}");
    // A stop with nothing under way completes at once.
    let (members, facts) = fleet(&[("c", "g")]);
    let mut idle = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    idle = start(&idle, &facts, t0());
    let stopped = ok(&idle, Event::Stop { at, by: None });
    assert_eq!(stopped.status.state, Stopped);
    assert_eq!(follow_up(&idle, &stopped, at), Some(Event::StopCompleted { at }));
    // A run that failed (and halted like a stop) is Failed, not a completed stop.
    let (members, facts) = fleet(&[("d", "g")]);
    let mut failing = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    failing = start(&failing, &facts, t0());
    settle(&mut failing, &facts, t0());
    let failed = fail(&failing, "d", at);
    assert_eq!(failed.status.state, Failed);
    assert_eq!(follow_up(&failing, &failed, at), None);
}

#[test]
fn relaunches_and_driver_takeovers_are_history_that_changes_no_state() {
    let (members, facts) = fleet(&[("a", "g"), ("b", "g")]);
    let mut run = new_run("stages: [{name: s, groups: [{name: g}]}]", &members, spec());
    run = start(&run, &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["a"]);
    let at = t0() + hours(1);
    let took = Event::DriverTookOver { driver: "h:2:1".into(), previous: "h:1:0".into(), at };
    assert_eq!(ok(&run, took), run);
    assert_eq!(ok(&run, Event::MemberRelaunched { member: "a".into(), at }), run);
    // Only a member under way can be relaunched.
    let err = apply(&run, &Event::MemberRelaunched { member: "b".into(), at }).unwrap_err();
    assert!(matches!(err, TransitionError::State { .. }), "{err}");
    let err = apply(&run, &Event::MemberRelaunched { member: "ghost".into(), at }).unwrap_err();
    assert!(matches!(err, TransitionError::UnknownMember { .. }), "{err}");
}

const HEALTH: &str = "stages:\n  - name: canary\n    groups: [{name: canary}]\n    afterGates: [{type: Approval}]\n    healthGates:\n      - {name: shop, type: http, url: 'http://127.0.0.1:8080/healthz', soak: 10s, timeout: 60s}\n  - name: prod\n    groups: [{name: prod}]\n";

fn secs(s: i64) -> SignedDuration {
    SignedDuration::from_secs(s)
}

/// `facts` with the probe of canary's `shop` gate saying `holds`.
fn probed(facts: &Facts, holds: bool) -> Facts {
    let seen = if holds {
        crate::health::Observation::Holds("HTTP 200".into())
    } else {
        crate::health::Observation::Fails("answered HTTP 500".into())
    };
    let mut f = facts.clone();
    f.health.insert(("canary".into(), "shop".into()), seen);
    f
}

/// The canary stage done and its approval given: only the health gate holds prod back.
fn canary_done(spec: UpgradeSpec) -> (RunState, Facts) {
    let (members, facts) = fleet(&[("c1", "canary"), ("p1", "prod")]);
    let mut run = start(&new_run(HEALTH, &members, spec), &facts, t0());
    assert_eq!(settle(&mut run, &facts, t0()).0, ["c1"]);
    run = succeed(&run, "c1", t0());
    let gate: GateRef = "canary/after/1".parse().unwrap();
    run = ok(&run, Event::ApproveGate { gate, by: "ann".into(), at: t0(), expires_at: None });
    settle(&mut run, &facts, t0());
    (run, facts)
}

#[test]
fn a_stage_health_gate_holds_the_next_stage_until_it_held_for_its_soak() {
    let (mut run, facts) = canary_done(spec());
    let h = &stage(&run, "canary").health_gates[0];
    assert_eq!(h.state, HealthGateStatus::Pending);
    assert_eq!(h.waiting, Some(HealthWait::FirstProbe));
    assert!(run.health_gates_due(t0()).iter().any(|(s, g)| s == "canary" && g.name == "shop"));
    // Failing: the run waits on it, typed, and prod is untouched.
    let (started, wait) = settle(&mut run, &probed(&facts, false), t0());
    assert!(started.is_empty());
    assert!(
        matches!(wait, Some(Decision::Wait { until: Some(_), ref reason }) if reason.contains("health gate shop"))
    );
    assert_eq!(run.status.state, Pending);
    match &run.status.pending {
        Some(PendingReason::Waiting { reason, .. }) => assert!(
            matches!(&**reason, PendingReason::HealthGate { gate, waiting: HealthWait::Failing { reason }, .. } if gate == "shop" && reason.contains("500")),
            "{reason:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(state_of(&run, "p1"), NotStarted);
    // Not due again before its poll interval (soak 10s: every 2s).
    assert!(run.health_gates_due(t0() + secs(1)).is_empty());
    // Holding: soaking, still waiting.
    let (started, _) = settle(&mut run, &probed(&facts, true), t0() + secs(2));
    assert!(started.is_empty());
    let h = &stage(&run, "canary").health_gates[0];
    assert!(matches!(&h.waiting, Some(HealthWait::Soaking { held_seconds: 0, soak_seconds: 10, .. })));
    // A dip restarts the soak.
    settle(&mut run, &probed(&facts, false), t0() + secs(8));
    settle(&mut run, &probed(&facts, true), t0() + secs(10));
    assert!(settle(&mut run, &probed(&facts, true), t0() + secs(16)).0.is_empty());
    // Held 10 s without a dip: passed, prod starts.
    let (started, _) = settle(&mut run, &probed(&facts, true), t0() + secs(20));
    assert_eq!(started, ["p1"]);
    let h = &stage(&run, "canary").health_gates[0];
    assert_eq!(h.state, HealthGateStatus::Passed);
    assert_eq!(stage(&run, "canary").status.state, Completed);
}

#[test]
fn a_failed_stage_health_gate_pauses_the_run_and_a_start_evaluates_it_again() {
    let (mut run, facts) = canary_done(spec());
    settle(&mut run, &probed(&facts, false), t0());
    // The timeout (60 s) runs out while it fails: the run stops (paused), prod never starts.
    let (started, _) = settle(&mut run, &probed(&facts, false), t0() + secs(61));
    assert!(started.is_empty());
    assert_eq!(run.status.state, Stopped);
    assert_eq!(run.intent, Intent::Stop);
    assert!(
        run.status.message.as_deref().is_some_and(
            |m| m.contains("paused: health gate shop of stage canary failed: timed out after 1m")
        ),
        "{:?}",
        run.status.message
    );
    let h = &stage(&run, "canary").health_gates[0];
    assert_eq!(h.state, HealthGateStatus::Failed);
    assert_eq!(state_of(&run, "p1"), NotStarted);
    assert!(run.health_gates_due(t0() + secs(70)).is_empty());
    // Started again: the gate is evaluated afresh; passing, prod goes.
    run = ok(&run, Event::Start { at: t0() + secs(100), targets: None, plan: None, by: None });
    assert_eq!(run.status.message, None);
    settle(&mut run, &facts, t0() + secs(100));
    assert_eq!(stage(&run, "canary").health_gates[0].state, HealthGateStatus::Pending);
    assert!(settle(&mut run, &probed(&facts, true), t0() + secs(101)).0.is_empty(), "soaking");
    let (started, _) = settle(&mut run, &probed(&facts, true), t0() + secs(111));
    assert_eq!(started, ["p1"]);
}

#[test]
fn a_failed_stage_health_gate_fails_the_run_with_on_gate_failure_fail() {
    let mut s = spec();
    s.on_gate_failure = crate::health::OnGateFailure::Fail;
    let (mut run, facts) = canary_done(s);
    settle(&mut run, &probed(&facts, false), t0());
    settle(&mut run, &probed(&facts, false), t0() + secs(61));
    assert_eq!(run.status.state, Failed);
    assert!(
        run.status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("stage canary failed: health gate shop failed")),
        "{:?}",
        run.status.error
    );
    assert_eq!(state_of(&run, "p1"), NotStarted);
}

#[test]
fn a_skipped_stage_skips_its_health_gates_and_an_observation_out_of_turn_is_refused() {
    let (members, facts) = fleet(&[("c1", "canary"), ("p1", "prod")]);
    let run = start(&new_run(HEALTH, &members, spec()), &facts, t0());
    let seen = Event::HealthGateObserved {
        stage: "canary".into(),
        gate: "shop".into(),
        at: t0(),
        observation: crate::health::Observation::Holds("ok".into()),
    };
    assert!(apply(&run, &seen).is_err(), "not reached yet");
    let reached = Event::HealthGateReached { stage: "canary".into(), gate: "shop".into(), at: t0() };
    assert!(apply(&run, &reached).is_err(), "its groups are still working");
    let mut run =
        ok(&run, Event::Skip { targets: vec![SkipTarget::Stage("canary".into())], by: None, at: t0() });
    assert_eq!(stage(&run, "canary").health_gates[0].state, HealthGateStatus::Skipped);
    assert_eq!(settle(&mut run, &facts, t0()).0, ["p1"]);
}

#[test]
fn a_restarted_driver_goes_on_with_the_soak_where_it_was() {
    let (mut run, facts) = canary_done(spec());
    settle(&mut run, &probed(&facts, true), t0());
    settle(&mut run, &probed(&facts, true), t0() + secs(6));
    // The state goes through the store (JSON) as a new driver reads it.
    let mut back: RunState = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
    assert_eq!(back, run);
    let (started, _) = settle(&mut back, &probed(&facts, true), t0() + secs(10));
    assert_eq!(started, ["p1"], "held since t0: 10 s of soak across the restart");
}

proptest::proptest! {
    /// Whatever the probes see and whenever the driver looks (and restarts, reading the run
    /// back from JSON): prod starts only after canary's health gate passed; a gate decided
    /// Failed leaves the run Stopped (paused) with prod untouched; while undecided the run
    /// waits on it with a typed reason; and the gate passes exactly when the soak rule says.
    #[test]
    fn the_next_stage_starts_only_after_its_health_gate_passed(
        steps in proptest::collection::vec((1i64..8, proptest::bool::ANY, proptest::bool::ANY), 1..40),
    ) {
        let (mut run, facts) = canary_done(spec());
        let mut model = crate::health::Soak::new(std::time::Duration::from_secs(10), std::time::Duration::from_secs(60));
        let reached = stage(&run, "canary").health_gates[0].reached_at.unwrap();
        let mut at = t0();
        for (dt, holds, restart) in steps {
            at += secs(dt);
            if restart {
                run = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
            }
            let due = !run.health_gates_due(at).is_empty();
            let (started, _) = settle(&mut run, &probed(&facts, holds), at);
            let h = stage(&run, "canary").health_gates[0].clone();
            let expected = if due {
                let seen = if holds {
                    crate::health::Observation::Holds("HTTP 200".into())
                } else {
                    crate::health::Observation::Fails("answered HTTP 500".into())
                };
                let gate_time = std::time::Duration::from_millis(u64::try_from(at.duration_since(reached).as_millis()).unwrap());
                Some(model.observe(gate_time, seen))
            } else {
                None
            };
            match h.state {
                HealthGateStatus::Passed => {
                    proptest::prop_assert!(matches!(expected, Some(crate::health::Verdict::Passed { .. })), "{expected:?}");
                    proptest::prop_assert_eq!(started, vec!["p1".to_string()]);
                    break;
                }
                HealthGateStatus::Failed => {
                    proptest::prop_assert!(matches!(expected, Some(crate::health::Verdict::Failed { .. })), "{expected:?}");
                    proptest::prop_assert_eq!(run.status.state, Stopped);
                    proptest::prop_assert_eq!(state_of(&run, "p1"), NotStarted);
                    break;
                }
                HealthGateStatus::Pending => {
                    let decided = matches!(
                        expected,
                        Some(crate::health::Verdict::Passed { .. } | crate::health::Verdict::Failed { .. })
                    );
                    proptest::prop_assert!(!decided, "{:?}", expected);
                    proptest::prop_assert!(started.is_empty());
                    proptest::prop_assert_eq!(state_of(&run, "p1"), NotStarted);
                    proptest::prop_assert_eq!(run.status.state, Pending);
                    let waits_on_gate = matches!(
                        &run.status.pending,
                        Some(PendingReason::Waiting { reason, .. }) if matches!(&**reason, PendingReason::HealthGate { .. })
                    );
                    proptest::prop_assert!(waits_on_gate, "{:?}", run.status.pending);
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }
}

#[test]
fn skipping_the_stage_gets_past_a_health_gate_that_keeps_failing() {
    let (mut run, facts) = canary_done(spec());
    settle(&mut run, &probed(&facts, false), t0());
    settle(&mut run, &probed(&facts, false), t0() + secs(61));
    assert_eq!(run.status.state, Stopped);
    run = ok(
        &run,
        Event::Skip {
            targets: vec![SkipTarget::Stage("canary".into())],
            by: Some("ann".into()),
            at: t0() + secs(70),
        },
    );
    assert_eq!(stage(&run, "canary").status.state, Completed, "its member is done, its gate skipped");
    run = ok(&run, Event::Start { at: t0() + secs(80), targets: None, plan: None, by: None });
    assert_eq!(stage(&run, "canary").health_gates[0].state, HealthGateStatus::Skipped);
    let (started, _) = settle(&mut run, &probed(&facts, false), t0() + secs(80));
    assert_eq!(started, ["p1"]);
}
