//! A large finished UpdateRun, shared by the size test and the hub test that writes it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::api::ObjectMeta;
use refit_controller::layout::join;
use refit_controller::resources::{UpdateRun, UpdateRunSpec, UpdateRunStatus};
use refit_core::Version;
use refit_core::fleet::{
    Event, FleetMember, MemberTarget, NodeImageSelection, RunState, Strategy, UpdateState, UpgradeSpec,
    UpgradeType, apply, freeze_targets, resolve,
};

pub const MIB: usize = 1024 * 1024;

fn strategy() -> Strategy {
    // Three stages of 10 groups each, as a large fleet would be rolled out (canary, wave,
    // rest), every group fully parallel so each member can be started at once.
    let stages: Vec<serde_json::Value> = ["canary", "wave", "rest"]
        .iter()
        .map(|s| {
            let groups: Vec<_> = (0..10)
                .map(|g| serde_json::json!({"name": format!("{s}-{g}"), "maxConcurrency": "100%"}))
                .collect();
            serde_json::json!({"name": s, "groups": groups, "maxConcurrency": "100%"})
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "stages": stages })).unwrap()
}

pub fn finished_run(n: usize) -> RunState {
    let groups: Vec<String> =
        ["canary", "wave", "rest"].iter().flat_map(|s| (0..10).map(move |g| format!("{s}-{g}"))).collect();
    let fleet: Vec<FleetMember> = (0..n)
        .map(|i| FleetMember {
            name: format!("cluster-{i:05}"),
            labels: BTreeMap::from([("region".to_string(), format!("r{}", i % 7))]),
            update_group: Some(groups[i % groups.len()].clone()),
        })
        .collect();
    let strategy = strategy();
    let plan = resolve(&strategy, &fleet).unwrap();
    let spec = UpgradeSpec {
        upgrade_type: UpgradeType::Full,
        kubernetes_version: Some("1.37.1".parse::<Version>().unwrap()),
        node_image_selection: NodeImageSelection::Latest,
        pending_budget_seconds: Some(43_200),
        ..UpgradeSpec::new(UpgradeType::Full, None)
    };
    let t0: Timestamp = "2026-12-05T06:00:00Z".parse().unwrap();
    let mut run = RunState::new("to-137", spec.clone(), strategy, plan, t0).unwrap();
    let targets = freeze_targets(&spec, std::iter::empty());
    run = apply(&run, &Event::Start { at: t0, targets: Some(targets), plan: None, by: None }).unwrap();
    // One member started and finished through the state machine gives a finished member's
    // shape; every member takes it (name and times its own). Applying 2n events to a run of n
    // members clones the run each time: minutes at 5,000 for the same bytes.
    let first = run.stages[0].groups[0].members[0].name.clone();
    let started = Event::MemberStarted {
        member: first.clone(),
        at: t0,
        target: MemberTarget {
            kubernetes: Some("1.37.1".parse().unwrap()),
            node_images: BTreeMap::from([("ubuntu-24.04".into(), "2026.12.01".into())]),
        },
        operation: Some("run-20261205-060000-00000".into()),
        window_closes_at: None,
    };
    run = apply(&run, &started).unwrap();
    let done = Event::MemberSucceeded {
        member: first,
        at: t0 + jiff::SignedDuration::from_secs(540),
        message: Some("upgraded 3 control-plane and 12 worker nodes to 1.37.1".into()),
    };
    run = apply(&run, &done).unwrap();
    let template = run.stages[0].groups[0].members[0].clone();
    assert_eq!(template.status.state, UpdateState::Completed);
    let all = run.stages.iter_mut().flat_map(|s| s.groups.iter_mut()).flat_map(|g| g.members.iter_mut());
    for (i, m) in (0i64..).zip(all) {
        let name = m.name.clone();
        *m = template.clone();
        m.name = name;
        m.operation = Some(format!("run-20261205-060000-{i:05}"));
        m.status.started_at = Some(t0 + jiff::SignedDuration::from_secs(600 * i));
        m.status.completed_at = Some(t0 + jiff::SignedDuration::from_secs(600 * i + 540));
    }
    run
}

pub fn object(run: RunState) -> UpdateRun {
    let spec = UpdateRunSpec { upgrade: run.spec.clone(), strategy: "three-waves".into(), state: None };
    let mut obj = UpdateRun::new("to-137", spec);
    obj.metadata = ObjectMeta {
        name: Some("to-137".into()),
        namespace: Some("refit-system".into()),
        ..ObjectMeta::default()
    };
    let (status, details) = UpdateRunStatus::of(run.clone());
    // Nothing is lost: the tree and the details make the same run again.
    assert_eq!(join(status.run.clone().unwrap(), &details), run);
    assert_eq!(details.len(), status.members as usize);
    obj.status = Some(status);
    obj
}
