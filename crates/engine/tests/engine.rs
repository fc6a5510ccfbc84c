//! The engine on fakes and paused tokio time: the sliding window, a left-cordoned node's slot,
//! `--not-after`, fail-fast, a clean stop, resume after every journal write, a panicking unit,
//! a journal that stops working, and a node another run holds. Every behaviour here is also
//! exercised end to end against the testbed by crates/cli/tests/upgrade.rs; these tests reach
//! the interleavings a real cluster cannot be made to produce on demand.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use refit_core::event::{Event, FailureKind};
use refit_core::run::{OnUndrainable, RunState};
use refit_engine::{Engine, Outcome, UnitResult};
use support::{Behave, Fault, TO, World};
use tokio::sync::watch;

async fn run(
    w: &World,
    id: &str,
    spec: refit_engine::RunSpec,
    not_after: Option<std::time::SystemTime>,
) -> Outcome {
    let (_stop, rx) = watch::channel(false);
    let engine = Engine::new(w.context(), id.into(), spec, rx, not_after);
    engine.execute().await.unwrap()
}

fn results(o: &Outcome) -> Vec<(String, &'static str)> {
    o.units.iter().map(|u| (u.node.clone(), u.result.name())).collect()
}

#[tokio::test(start_paused = true)]
async fn the_window_never_exceeds_max_unavailable_and_every_node_reaches_the_target() {
    let w = World::new(1, 10);
    let spec = w.spec(3, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 11);
    assert!(w.cluster.unschedulable().is_empty(), "nothing left cordoned");
    assert_eq!(
        w.cluster.max_unschedulable_workers.load(Ordering::SeqCst),
        3,
        "the window is used, never exceeded"
    );
    for n in 1..=10 {
        assert_eq!(w.actions.runs(&format!("w-{n:02}")), 1);
    }
    assert_eq!(w.actions.max_running.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_node_left_cordoned_keeps_its_slot() {
    let w = World::new(0, 6);
    w.cluster.undrainable.lock().unwrap().insert("w-01".into());
    let spec = w.spec(2, OnUndrainable::Skip);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    // w-01 stays cordoned (its slot held): the others went through one at a time.
    assert_eq!(o.state, RunState::Failed);
    assert!(o.reason.as_deref().unwrap().contains("left cordoned"), "{:?}", o.reason);
    assert_eq!(w.cluster.unschedulable(), ["w-01"]);
    assert_eq!(w.cluster.max_unschedulable_workers.load(Ordering::SeqCst), 2, "never above max-unavailable");
    assert_eq!(w.cluster.at(TO), 5);
    assert_eq!(o.left_cordoned.len(), 1);
    assert!(results(&o).contains(&("w-01".into(), "left-cordoned")));
}

#[tokio::test(start_paused = true)]
async fn every_slot_held_by_left_cordoned_nodes_stops_the_stage() {
    let w = World::new(0, 4);
    for n in ["w-01", "w-02"] {
        w.cluster.undrainable.lock().unwrap().insert(n.into());
    }
    let spec = w.spec(2, OnUndrainable::Skip);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed);
    assert!(o.reason.as_deref().unwrap().contains("max-unavailable slots"), "{:?}", o.reason);
    assert_eq!(w.actions.runs("w-03") + w.actions.runs("w-04"), 0, "no node starts without a slot");
    assert_eq!(w.cluster.max_unschedulable_workers.load(Ordering::SeqCst), 2);
}

/// Each unit takes 80 s (drain 20 s + action 60 s); the deadline falls in the second unit.
#[tokio::test(start_paused = true)]
async fn a_deadline_lets_the_unit_under_way_finish_and_starts_no_other() {
    let w = World::new(0, 4);
    let spec = w.spec(1, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    let deadline = w.clock.now_plus(Duration::from_secs(100));
    let o = run(&w, &id, spec.clone(), Some(deadline)).await;
    assert_eq!(o.state, RunState::Paused, "{:?}", o.reason);
    assert_eq!(
        results(&o),
        [
            ("w-01".into(), "upgraded"),
            ("w-02".into(), "upgraded"),
            ("w-03".into(), "not-started"),
            ("w-04".into(), "not-started")
        ]
    );
    assert!(w.cluster.unschedulable().is_empty(), "a pause leaves nothing cordoned");
    // The rerun (no deadline) continues: the two others, not the first two again.
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed);
    for n in 1..=4 {
        assert_eq!(w.actions.runs(&format!("w-{n:02}")), 1, "w-{n:02}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_action_stops_the_run_fast_with_a_typed_error() {
    let w = World::new(1, 5);
    w.actions.behave.lock().unwrap().insert("w-02".into(), Behave::Fail);
    let spec = w.spec(1, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed);
    let failed = o.units.iter().find(|u| u.node == "w-02").unwrap();
    assert_eq!(failed.failure, Some(FailureKind::Action));
    assert!(matches!(&failed.result, UnitResult::Failed(e) if e.message.contains("exit status 1")));
    for n in ["w-03", "w-04", "w-05"] {
        assert_eq!(w.actions.runs(n), 0, "{n} started after the failure");
    }
    assert_eq!(w.cluster.unschedulable(), ["w-02"], "a node the action failed on stays cordoned");
    let kinds: Vec<_> = w
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::StepFailed { kind, .. } => Some(kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [Some(FailureKind::Action)]);
}

#[tokio::test(start_paused = true)]
async fn a_stop_lets_actions_finish_abandons_drains_and_gives_cordons_back() {
    let w = World::new(0, 4);
    let spec = w.spec(2, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    // w-02's drain takes long: it is abandoned by the stop; w-01's action is under way.
    *w.cluster.drain_time.lock().unwrap() = Duration::from_secs(5);
    let (stop, rx) = watch::channel(false);
    let engine = Engine::new(w.context(), id.clone(), spec.clone(), rx, None);
    let exec = tokio::spawn(engine.execute());
    // Both units drain 5 s, then act 60 s: stop in the middle of the actions.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(w.actions.running.load(Ordering::SeqCst), 2);
    stop.send(true).unwrap();
    let o = exec.await.unwrap().unwrap();
    assert_eq!(o.state, RunState::Interrupted);
    assert_eq!(w.cluster.at(TO), 2, "the two actions under way finished");
    assert_eq!(w.actions.runs("w-03") + w.actions.runs("w-04"), 0);
    assert!(w.cluster.unschedulable().is_empty());

    // A stop during a drain: the drain is abandoned, its cordon given back.
    *w.cluster.drain_time.lock().unwrap() = Duration::from_secs(300);
    let (stop, rx) = watch::channel(false);
    let engine = Engine::new(w.context(), id.clone(), spec.clone(), rx, None);
    let exec = tokio::spawn(engine.execute());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(w.cluster.unschedulable(), ["w-03", "w-04"]);
    stop.send(true).unwrap();
    let o = exec.await.unwrap().unwrap();
    assert_eq!(o.state, RunState::Interrupted);
    assert!(w.cluster.unschedulable().is_empty(), "abandoned drains give their cordons back");
    assert_eq!(w.actions.runs("w-03"), 0);

    // The rerun finishes exactly the rest.
    *w.cluster.drain_time.lock().unwrap() = Duration::from_secs(5);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed);
    for n in 1..=4 {
        assert_eq!(w.actions.runs(&format!("w-{n:02}")), 1);
    }
}

/// Runs `spec` until the journal's write `n`, which never returns: the run is dropped there,
/// as kill -9 would leave it.
async fn die_at_write(w: &World, id: &str, spec: &refit_engine::RunSpec, n: usize) {
    *w.journal.fault.lock().unwrap() = Fault::HangAt(n);
    let (_stop, rx) = watch::channel(false);
    let engine = Engine::new(w.context(), id.to_string(), spec.clone(), rx, None);
    let hung = w.journal.hung.notified();
    tokio::select! {
        _ = engine.execute() => panic!("write {n} was never reached"),
        _ = hung => {}
    }
}

/// The process dies at each journal write in turn (the write never returns and the run is
/// dropped, as a kill -9 would leave it); a new engine on the same journal and cluster
/// finishes the run. No node finished before a crash is upgraded again, nothing is left
/// cordoned, every node reaches the target.
#[tokio::test(start_paused = true)]
async fn a_run_resumes_after_a_crash_at_every_journal_write() {
    let total = {
        let w = World::new(1, 3);
        let spec = w.spec(2, OnUndrainable::Fail);
        let id = w.create("r1", &spec);
        run(&w, &id, spec, None).await;
        w.journal.writes.load(Ordering::SeqCst)
    };
    assert!(total > 20, "{total} writes");
    for crash_at in 0..total {
        let w = World::new(1, 3);
        let spec = w.spec(2, OnUndrainable::Fail);
        let id = w.create("r1", &spec);
        die_at_write(&w, &id, &spec, crash_at).await;
        let finished: Vec<String> = ["cp-1", "w-01", "w-02", "w-03"]
            .into_iter()
            .filter(|n| {
                w.journal.step(&id, n, &format!("uncordon@{TO}")) == Some(refit_core::run::StepState::Done)
            })
            .map(str::to_string)
            .collect();
        let before: Vec<usize> = finished.iter().map(|n| w.actions.runs(n)).collect();
        // Let whatever the dead process left running (nothing here: dropped) settle, restart.
        *w.journal.fault.lock().unwrap() = Fault::None;
        let o = run(&w, &id, spec, None).await;
        assert_eq!(o.state, RunState::Completed, "crash at write {crash_at}: {:?}", o.reason);
        assert_eq!(w.cluster.at(TO), 4, "crash at write {crash_at}");
        assert!(
            w.cluster.unschedulable().is_empty(),
            "crash at write {crash_at}: {:?}",
            w.cluster.unschedulable()
        );
        let after: Vec<usize> = finished.iter().map(|n| w.actions.runs(n)).collect();
        assert_eq!(
            before, after,
            "crash at write {crash_at}: finished nodes {finished:?} were upgraded again"
        );
        for n in ["cp-1", "w-01", "w-02", "w-03"] {
            assert!(w.actions.runs(n) <= 2, "crash at write {crash_at}: {n} ran {} times", w.actions.runs(n));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_unit_is_reported_as_a_panic_and_the_others_finish() {
    let w = World::new(0, 3);
    w.actions.behave.lock().unwrap().insert("w-02".into(), Behave::Panic);
    let spec = w.spec(3, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed);
    let p = o.units.iter().find(|u| u.node == "w-02").unwrap();
    assert_eq!(p.failure, Some(FailureKind::Panic));
    let reason = p.result.reason().unwrap();
    assert!(reason.contains("panicked") && reason.contains("bug in refit"), "{reason}");
    assert!(!reason.contains("another refit version"), "{reason}");
    assert_eq!(w.cluster.at(TO), 2, "the units beside it finished");
}

/// The journal fails from its 12th write on: the units under way finish their action (they
/// do not get killed), nothing new starts, and the run ends with the journal as its reason.
#[tokio::test(start_paused = true)]
async fn a_journal_that_stops_working_starts_nothing_new() {
    let w = World::new(0, 6);
    let spec = w.spec(2, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    *w.journal.fault.lock().unwrap() = Fault::FailFrom(12);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed);
    assert!(o.reason.as_deref().unwrap().contains("journal cannot be written"), "{:?}", o.reason);
    let failed: Vec<_> = o.units.iter().filter(|u| u.failure == Some(FailureKind::Journal)).collect();
    assert!(!failed.is_empty());
    let started: usize = (1..=6).map(|n| w.actions.runs(&format!("w-{n:02}"))).sum();
    assert!(started <= 4, "{started} actions: nodes started after the journal broke");
    assert!(
        o.units.iter().any(|u| matches!(&u.result, UnitResult::NotStarted(r) if r.contains("journal"))),
        "{:?}",
        results(&o)
    );
    assert!(
        w.events()
            .iter()
            .any(|e| matches!(e, Event::Warning { message } if message.contains("no new node starts")))
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_cordoned_by_another_unfinished_run_stops_the_run() {
    let w = World::new(0, 3);
    w.cluster.set("w-02", |n| {
        n.unschedulable = true;
        n.cordoned_by = Some("up-other".into());
    });
    let spec = w.spec(1, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec.clone(), None).await;
    assert_eq!(o.state, RunState::Failed);
    let u = o.units.iter().find(|u| u.node == "w-02").unwrap();
    assert_eq!(u.failure, Some(FailureKind::CordonedByOtherRun));
    assert_eq!(w.actions.runs("w-02"), 0, "not drained, not upgraded");
    assert_eq!(w.cluster.node("w-02").cordoned_by.as_deref(), Some("up-other"), "its cordon untouched");

    // Once that run is over (completed in this store), its cordon is left as found.
    w.create("up-other", &spec);
    w.journal.runs.lock().unwrap().get_mut("up-other").unwrap().state = "completed".into();
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.actions.runs("w-02"), 1);
    assert!(w.cluster.node("w-02").unschedulable, "left cordoned as found");
}

#[tokio::test(start_paused = true)]
async fn the_real_sqlite_journal_locked_mid_run_lets_units_under_way_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refit.db");
    let store = refit_store::Store::open_with(&path, Duration::from_millis(20)).unwrap();
    let journal = Arc::new(refit_engine::real::SqliteJournal::new(store));
    let w = World::new(0, 4);
    let spec = w.spec(2, OnUndrainable::Fail);
    let ctx = refit_engine::Context { journal: journal.clone(), ..w.context() };
    let id = refit_engine::lifecycle::create_run(journal.as_ref(), "uid-1", &spec, &jiff::Zoned::now())
        .await
        .unwrap();
    let (_stop, rx) = watch::channel(false);
    let engine = Engine::new(ctx, id.clone(), spec, rx, None);
    w.actions.held.send_replace(true);
    let exec = tokio::spawn(engine.execute());
    // In the middle of the first two actions, another process takes the write lock. (The
    // journal answers in real time on its own thread: wait in small steps of paused time.)
    for _ in 0..100_000 {
        if w.actions.running.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.actions.running.load(Ordering::SeqCst), 2);
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    w.actions.held.send_replace(false);
    let o = exec.await.unwrap().unwrap();
    assert_eq!(o.state, RunState::Failed);
    assert!(o.reason.as_deref().unwrap().contains("stayed locked by another process"), "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 2, "the two actions under way finished");
    assert_eq!(w.actions.runs("w-03") + w.actions.runs("w-04"), 0, "nothing new started");
    drop(other);
    // Unlocked: the journal says the run is unfinished, and a rerun continues it.
    let store = refit_store::Store::open(&path).unwrap();
    assert_eq!(store.run(&id).unwrap().unwrap().state, "running");
}

fn gated(
    spec: refit_engine::RunSpec,
    on_failure: refit_core::health::OnGateFailure,
) -> refit_engine::RunSpec {
    let gate = refit_core::yaml::from_str::<refit_core::health::HealthGateSpec>(
        "{name: error-rate, type: command, command: [./check.sh], soak: 30s, timeout: 5m}",
    )
    .unwrap()
    .resolve(0)
    .unwrap();
    refit_engine::RunSpec { gates: vec![gate], on_gate_failure: on_failure, ..spec }
}

#[tokio::test(start_paused = true)]
async fn health_gates_hold_each_batch_and_a_failed_one_pauses_the_run_until_a_rerun() {
    use refit_core::event::GateState;
    let w = World::new(0, 6);
    let spec = gated(w.spec(2, OnUndrainable::Fail), refit_core::health::OnGateFailure::Pause);
    let id = w.create("r1", &spec);
    // Healthy: three batches of two, the gate soaked between them (twice), every node done.
    let o = run(&w, &id, spec.clone(), None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    let passed = w
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Gate { state: GateState::Passed, gate, .. } if gate == "error-rate"))
        .count();
    assert_eq!(passed, 2);
    assert_eq!(w.actions.max_running.load(Ordering::SeqCst), 2);

    // The gate fails after the first batch: nothing more starts and the run ends Paused.
    let w = World::new(0, 6);
    let id = w.create("r2", &spec);
    w.actions.gate_holds.store(false, Ordering::SeqCst);
    let o = run(&w, &id, spec.clone(), None).await;
    assert_eq!(o.state, RunState::Paused, "{:?}", o.reason);
    let reason = o.reason.clone().unwrap();
    assert!(
        reason.contains("health gate error-rate failed") && reason.contains("error rate 7/s"),
        "{reason}"
    );
    assert_eq!(w.cluster.at(TO), 2, "only the first batch");
    assert!(w.cluster.unschedulable().is_empty());
    assert!(w.events().iter().any(
        |e| matches!(e, Event::Gate { state: GateState::Waiting, reason, .. } if reason == "error rate 7/s")
    ));
    assert!(
        w.events()
            .iter()
            .any(|e| matches!(e, Event::Gate { state: GateState::Failed, gate, .. } if gate == "error-rate"))
    );
    // Fixed: the same run continues, the gate checked first, the finished batch not redone.
    w.actions.gate_holds.store(true, Ordering::SeqCst);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 6);
    for n in 1..=6 {
        assert_eq!(w.actions.runs(&format!("w-{n:02}")), 1, "w-{n:02} upgraded once");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_gate_fails_the_run_with_on_gate_failure_fail() {
    let w = World::new(0, 4);
    let spec = gated(w.spec(2, OnUndrainable::Fail), refit_core::health::OnGateFailure::Fail);
    let id = w.create("r1", &spec);
    w.actions.gate_holds.store(false, Ordering::SeqCst);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed, "{:?}", o.reason);
    assert!(
        o.reason.as_deref().unwrap().contains("health gate error-rate failed: timed out after 5m"),
        "{:?}",
        o.reason
    );
    assert_eq!(w.cluster.at(TO), 2);
}

fn etcd_members(healthy: &[bool]) -> refit_core::health::etcd::EtcdHealth {
    use refit_core::health::etcd::{EtcdHealth, EtcdMember};
    let member = |(i, ok): (usize, &bool)| {
        let problem = if *ok { None } else { Some("connection refused".to_string()) };
        EtcdMember { id: 1 + i as u64, name: format!("cp-{}", 1 + i), healthy: *ok, learner: false, problem }
    };
    EtcdHealth { members: healthy.iter().enumerate().map(member).collect(), alarms: Vec::new() }
}

/// The control plane as stacked etcd members, with etcd access configured.
fn stacked(w: &World, on_failure: refit_core::health::OnGateFailure) -> refit_engine::RunSpec {
    let mut spec = w.spec(1, OnUndrainable::Fail);
    for stage in &mut spec.schedule.stages {
        for u in &mut stage.units {
            if u.roles.contains(&refit_core::plan::Role::ControlPlane) {
                u.roles.insert(refit_core::plan::Role::Etcd);
            }
        }
    }
    spec.etcd_health = vec![refit_engine::EtcdEndpointSpec {
        url: "https://127.0.0.1:2379".into(),
        ca_file: "ca.crt".into(),
        cert_file: "c.crt".into(),
        key_file: "c.key".into(),
    }];
    spec.control_plane_gate_secs = 30;
    spec.on_gate_failure = on_failure;
    spec
}

/// Issue 17 item 3: an apiserver that stops being ready while another member is upgraded
/// holds the run before its own member: the run ends Paused naming the apiserver and its
/// failing check, and the same command continues once it is ready again.
#[tokio::test(start_paused = true)]
async fn the_control_plane_gate_pauses_before_a_member_whose_apiserver_is_not_ready() {
    use refit_core::event::GateState;
    let w = World::new(3, 2);
    let mut spec = w.spec(1, OnUndrainable::Fail);
    spec.control_plane_gate_secs = 30;
    let id = w.create("r1", &spec);
    w.health.set_apiservers(|c| {
        if c.node("cp-1").kubelet == support::v(TO) {
            vec!["apiserver https://10.0.0.2:6443 is not ready: failing etcd".into()]
        } else {
            vec![]
        }
    });
    let started = tokio::time::Instant::now();
    let o = run(&w, &id, spec.clone(), None).await;
    assert_eq!(o.state, RunState::Paused, "{:?}", o.reason);
    let reason = o.reason.clone().unwrap();
    assert!(
        reason.contains("health gate control-plane failed: timed out after 30s")
            && reason.contains("https://10.0.0.2:6443 is not ready: failing etcd"),
        "{reason}"
    );
    let r = results(&o);
    assert_eq!(r[0], ("cp-1".to_string(), "upgraded"));
    assert!(r[1..].iter().all(|(_, res)| *res == "not-started"), "{r:?}");
    assert!(w.cluster.unschedulable().is_empty());
    assert!(w.events().iter().any(|e| matches!(e,
        Event::Gate { gate, state: GateState::Waiting, reason } if gate == "control-plane" && reason.contains("failing etcd"))));
    // The gate before cp-1 (passed), then cp-2's: it gave up after its 30 s.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(30), "{took:?}");
    // Ready again: the same run goes on, the finished member not redone.
    w.health.set_apiservers(|_| vec![]);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    for n in ["cp-1", "cp-2", "cp-3", "w-01", "w-02"] {
        assert_eq!(w.actions.runs(n), 1, "{n} upgraded once");
    }
    // Without etcd access the run says, once, that etcd is not checked.
    let warned = w
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Warning { message } if message.contains("no etcd access configured")))
        .count();
    assert_eq!(warned, 2, "once per attempt");
}

/// Issue 17 item 3: a 3-member etcd with one member down refuses to take a second one down
/// (the quorum rule), but upgrades the broken member itself; alarms stop the run.
#[tokio::test(start_paused = true)]
async fn the_etcd_quorum_is_never_given_up() {
    use refit_core::health::OnGateFailure;
    let w = World::new(3, 0);
    let spec = stacked(&w, OnGateFailure::Fail);
    let id = w.create("r1", &spec);
    *w.health.etcd.lock().unwrap() = Ok(etcd_members(&[true, true, false]));
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed, "{:?}", o.reason);
    let reason = o.reason.unwrap();
    assert!(
        reason.contains("taking etcd member cp-1 down would leave 1 healthy of 3")
            && reason.contains("cp-3 (connection refused)"),
        "{reason}"
    );
    assert_eq!(w.cluster.at(TO), 0, "nothing was taken down");
    assert!(w.health.etcd_probes.load(Ordering::SeqCst) > 0);

    // The broken member goes first: it may be upgraded, and the next one waits for it to be
    // healthy again.
    let w = World::new(3, 0);
    let spec = stacked(&w, OnGateFailure::Pause);
    let id = w.create("r1", &spec);
    *w.health.etcd.lock().unwrap() = Ok(etcd_members(&[false, true, true]));
    let o = run(&w, &id, spec.clone(), None).await;
    assert_eq!(o.state, RunState::Paused, "{:?}", o.reason);
    assert!(o.reason.as_deref().unwrap().contains("taking etcd member cp-2 down"), "{:?}", o.reason);
    assert_eq!(results(&o)[0], ("cp-1".to_string(), "upgraded"));
    assert_eq!(w.cluster.at(TO), 1);

    // An alarm stops it even with every member healthy; etcd unreachable too.
    let mut alarmed = etcd_members(&[true, true, true]);
    alarmed.alarms.push((2, refit_core::health::etcd::EtcdAlarm::NoSpace));
    *w.health.etcd.lock().unwrap() = Ok(alarmed);
    let o = run(&w, &id, spec.clone(), None).await;
    assert!(o.reason.as_deref().unwrap().contains("NOSPACE raised by member cp-2"), "{:?}", o.reason);
    *w.health.etcd.lock().unwrap() = Err("no etcd endpoint answered: connection refused".into());
    let o = run(&w, &id, spec.clone(), None).await;
    assert!(o.reason.as_deref().unwrap().contains("etcd: no etcd endpoint answered"), "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 1);
    // Healthy again: the run finishes.
    *w.health.etcd.lock().unwrap() = Ok(etcd_members(&[true, true, true]));
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 3);
}

/// Issue 17 item 4, the `workloads` gate: after a batch, the Deployments/StatefulSets/
/// DaemonSets whose pods were on its nodes when their units started must be available again;
/// not available, the run pauses before the next batch and names them.
#[tokio::test(start_paused = true)]
async fn the_workloads_gate_waits_for_what_the_batch_touched() {
    use refit_core::health::workloads::{WorkloadKind, WorkloadRef};
    let w = World::new(0, 4);
    let gate =
        refit_core::yaml::from_str::<refit_core::health::HealthGateSpec>("{type: workloads, timeout: 1m}")
            .unwrap()
            .resolve(0)
            .unwrap();
    let spec = refit_engine::RunSpec { gates: vec![gate], ..w.spec(2, OnUndrainable::Fail) };
    let id = w.create("r1", &spec);
    let web = WorkloadRef { kind: WorkloadKind::ReplicaSet, namespace: "shop".into(), name: "web".into() };
    let db = WorkloadRef { kind: WorkloadKind::StatefulSet, namespace: "shop".into(), name: "db".into() };
    w.health.workloads_on.lock().unwrap().insert("w-01".into(), [web.clone()].into());
    w.health.workloads_on.lock().unwrap().insert("w-03".into(), [db].into());
    w.health.unavailable.lock().unwrap().insert("web".into());
    let o = run(&w, &id, spec.clone(), None).await;
    assert_eq!(o.state, RunState::Paused, "{:?}", o.reason);
    let reason = o.reason.unwrap();
    assert!(
        reason.contains("health gate workloads-1 failed: timed out after 1m")
            && reason.contains("ReplicaSet shop/web: 0 of 2 ready"),
        "{reason}"
    );
    assert_eq!(w.cluster.at(TO), 2, "the first batch only");
    // Asked about exactly what the first batch's nodes ran.
    assert!(w.health.workloads_asked.lock().unwrap().iter().all(|a| a == &[web.clone()].into()));
    // Available again: the same command goes on.
    w.health.unavailable.lock().unwrap().clear();
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 4);
}

/// Issue 18 item 12, node churn: a node deleted before its turn or under its drain is skipped
/// with a warning (not failed forever); a node that joined during the run is reported as not
/// upgraded instead of "every node is at the target"; a node that cannot be read fails its
/// unit (kind observe) and is never taken for a missing one.
#[tokio::test(start_paused = true)]
async fn deleted_nodes_are_skipped_added_ones_reported_and_unreadable_ones_fail() {
    let w = World::new(0, 5);
    let spec = w.spec(1, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    w.cluster.nodes.lock().unwrap().remove("w-05");
    let cluster = w.cluster.clone();
    tokio::spawn(async move {
        while !cluster.nodes.lock().unwrap().get("w-02").is_some_and(|n| n.unschedulable) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut nodes = cluster.nodes.lock().unwrap();
        nodes.remove("w-02");
        let new = support::FakeNode {
            kubelet: support::v(support::FROM),
            unschedulable: false,
            cordoned_by: None,
            worker: true,
        };
        nodes.insert("w-new".into(), new);
    });
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    let r = results(&o);
    for (n, want) in [("w-01", "upgraded"), ("w-02", "skipped"), ("w-03", "upgraded"), ("w-05", "skipped")] {
        assert!(r.contains(&(n.to_string(), want)), "{n} {want}: {r:?}");
    }
    for n in ["w-02", "w-05"] {
        let u = o.units.iter().find(|u| u.node == n).unwrap();
        assert!(u.result.reason().unwrap().contains("no longer in the cluster"), "{u:?}");
    }
    assert_eq!(o.not_planned.len(), 1, "{:?}", o.not_planned);
    assert_eq!(o.not_planned[0].0, "w-new");
    assert!(o.not_planned[0].1.contains("added after planning"));
    let warnings: Vec<String> = w
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .filter_map(|e| match e {
            Event::Warning { message } => Some(message),
            _ => None,
        })
        .collect();
    for n in ["w-02", "w-05", "w-new"] {
        assert!(warnings.iter().any(|m| m.contains(n)), "a warning names {n}: {warnings:?}");
    }
    assert!(w.cluster.unschedulable().is_empty(), "nothing left cordoned");

    // A node that cannot be read: its unit fails, the run stops, nothing is assumed.
    let w = World::new(0, 2);
    w.cluster.unreadable.lock().unwrap().insert("w-01".into());
    let spec = w.spec(1, OnUndrainable::Fail);
    let id = w.create("r2", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed);
    let u = o.units.iter().find(|u| u.node == "w-01").unwrap();
    assert_eq!(u.failure, Some(FailureKind::Observe), "{u:?}");
    assert_eq!(w.actions.runs("w-01"), 0);
    assert_eq!(w.actions.runs("w-02"), 0, "the run stops on it: nothing new starts");
}

/// `--max-unavailable auto` on a cluster of `workers` in zones a then b (half each).
fn auto_world(workers: usize) -> (World, refit_engine::RunSpec) {
    let w = World::new(0, workers);
    for i in 1..=workers {
        let zone = if i <= workers / 2 { "a" } else { "b" };
        w.cluster.zones.lock().unwrap().insert(format!("w-{i:02}"), zone.into());
    }
    let mut spec = w.spec(1, OnUndrainable::Fail);
    let auto =
        refit_core::batch::Auto { cap: refit_core::plan::MaxUnavailable::Count(10), across_zones: false };
    spec.schedule.batch_automatically(auto, auto.cap.batch_size(workers));
    (w, spec)
}

/// A running, ready pod of `app` (a ReplicaSet's) on `node`, requesting 100m.
fn web_pod(w: &World, name: &str, node: &str) {
    let pod = refit_core::snapshot::PodInfo {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        node: Some(node.into()),
        owner: Some(refit_core::snapshot::Owner { kind: "ReplicaSet".into(), name: "web".into() }),
        phase: refit_core::snapshot::Phase::Running,
        ready: true,
        mirror: false,
        terminating: false,
        labels: [("app".to_string(), "web".to_string())].into(),
        volumes: Vec::new(),
    };
    let mut s = w.cluster.workloads.lock().unwrap();
    s.scheduling.insert(
        pod.uid.clone(),
        refit_core::snapshot::Scheduling {
            requests: refit_core::snapshot::Resources { cpu_millis: 100, memory_bytes: 1 << 20, pods: 1 },
            ..Default::default()
        },
    );
    s.pods.push(pod);
}

fn web_budget(allowed: i32) -> refit_core::pdb::PdbInfo {
    refit_core::pdb::PdbInfo {
        namespace: "default".into(),
        name: "web".into(),
        selector: refit_core::pdb::Selector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        },
        disruptions_allowed: allowed,
        current_healthy: 3,
        desired_healthy: 3 - allowed,
        expected_pods: 3,
        always_allow_unhealthy: false,
    }
}

#[tokio::test(start_paused = true)]
async fn auto_takes_a_zone_at_a_time_as_the_budgets_allow() {
    let (w, spec) = auto_world(6);
    // One web pod in zone a on w-01 and w-02, under a budget allowing one disruption: they
    // cannot be in one batch.
    web_pod(&w, "web-1", "w-01");
    web_pod(&w, "web-2", "w-02");
    w.cluster.workloads.lock().unwrap().pdbs.push(web_budget(1));
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 6);
    let batches: Vec<(Vec<String>, Option<String>)> = w
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BatchChosen { nodes, zone, .. } => Some((nodes, zone)),
            _ => None,
        })
        .collect();
    let names = |ns: &[&str]| ns.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        batches,
        vec![
            (names(&["w-01", "w-03"]), Some("a".to_string())),
            (names(&["w-02"]), Some("a".to_string())),
            (names(&["w-04", "w-05", "w-06"]), Some("b".to_string())),
        ],
        "zone a first, w-02 passed over while w-01's pod takes the budget's one disruption"
    );
    assert_eq!(w.cluster.max_unschedulable_workers.load(Ordering::SeqCst), 3);
    assert_eq!(w.cluster.snapshots_taken.load(Ordering::SeqCst), 3, "one fresh read per batch");
    // Each choice says what its drains move and what is left on the nodes still to start
    // (the ETA counts the work left in pods).
    let loads: Vec<(Vec<usize>, Option<usize>)> = w
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BatchChosen { pods, pods_left, .. } => Some((pods, pods_left)),
            _ => None,
        })
        .collect();
    assert_eq!(
        loads,
        vec![(vec![1, 0], Some(1)), (vec![1], Some(0)), (vec![0, 0, 0], Some(0))],
        "web-1 on w-01, web-2 on w-02"
    );
}

/// Issue 14: the auto window slides — a node joins as soon as a slot frees, without waiting
/// for the slowest node under way; the next zone starts only when the last node of the
/// previous one has finished.
#[tokio::test(start_paused = true)]
async fn auto_window_slides_without_waiting_for_the_slowest_node() {
    let (w, mut spec) = auto_world(6);
    let auto =
        refit_core::batch::Auto { cap: refit_core::plan::MaxUnavailable::Count(2), across_zones: false };
    spec.schedule.batch_automatically(auto, 2);
    w.cluster.drain_times.lock().unwrap().insert("w-01".into(), Duration::from_secs(400));
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 6);
    let events = w.events();
    let batches: Vec<Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::BatchChosen { nodes, .. } => Some(nodes.clone()),
            _ => None,
        })
        .collect();
    let names = |ns: &[&str]| ns.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        batches,
        vec![names(&["w-01", "w-02"]), names(&["w-03"]), names(&["w-04", "w-05"]), names(&["w-06"])],
        "w-03 fills w-02's slot; zone b waits for w-01"
    );
    let at = |pred: &dyn Fn(&Event) -> bool| events.iter().position(pred).unwrap();
    let w03_chosen =
        at(&|e| matches!(e, Event::BatchChosen { nodes, in_flight: 1, .. } if nodes[0] == "w-03"));
    let w01_done = at(&|e| matches!(e, Event::UnitFinished { node, .. } if node == "w-01"));
    let w04_chosen = at(&|e| matches!(e, Event::BatchChosen { nodes, .. } if nodes[0] == "w-04"));
    assert!(w03_chosen < w01_done, "w-03 started while the slow w-01 was still under way");
    assert!(w01_done < w04_chosen, "one zone at a time");
    assert_eq!(w.cluster.max_unschedulable_workers.load(Ordering::SeqCst), 2, "never above the cap");
}

/// A sliding window reads the cluster whenever a node ends: a read that fails is retried, not
/// a reason to stop the run; reads that keep failing with nothing under way stop it after the
/// drain timeout, saying why.
#[tokio::test(start_paused = true)]
async fn auto_retries_a_failed_read_of_the_cluster() {
    let (w, mut spec) = auto_world(4);
    let auto =
        refit_core::batch::Auto { cap: refit_core::plan::MaxUnavailable::Count(1), across_zones: false };
    spec.schedule.batch_automatically(auto, 1);
    w.cluster.snapshots_fail_after.store(1, Ordering::SeqCst);
    w.cluster.snapshots_failing.store(3, Ordering::SeqCst);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 4);

    let (w, spec) = auto_world(2);
    w.cluster.snapshots_fail_after.store(1, Ordering::SeqCst);
    w.cluster.snapshots_failing.store(usize::MAX / 2, Ordering::SeqCst);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed);
    let reason = o.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("within the drain timeout: cannot read the cluster to choose the next batch"),
        "{reason}"
    );
    assert_eq!(w.cluster.at(TO), 1, "zone a's node (the one read) finished; zone b's never started");
}

#[tokio::test(start_paused = true)]
async fn auto_with_no_headroom_waits_then_names_the_budget() {
    let (w, spec) = auto_world(2);
    web_pod(&w, "web-1", "w-01");
    web_pod(&w, "web-2", "w-02");
    w.cluster.workloads.lock().unwrap().pdbs.push(web_budget(0));
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Failed);
    let reason = o.reason.clone().unwrap();
    assert!(reason.contains("default/web allows no disruption now"), "{reason}");
    let held = w.events().iter().filter(|e| matches!(e, Event::BatchHeld { .. })).count();
    assert_eq!(held, 1, "announced once while it waits");
    assert!(w.cluster.snapshots_taken.load(Ordering::SeqCst) > 100, "re-read while waiting (600 s / 5 s)");
    assert!(w.cluster.unschedulable().is_empty(), "nothing was cordoned");
    assert_eq!(w.cluster.at(TO), 0);
    assert!(results(&o).iter().all(|(_, r)| *r == "not-started"), "{:?}", results(&o));
}

#[tokio::test(start_paused = true)]
async fn auto_starts_the_node_an_earlier_attempt_began_first_and_counts_it_in_flight() {
    let (w, spec) = auto_world(4);
    let id = w.create("r1", &spec);
    // An earlier attempt cordoned w-03 (zone b) and recorded it, then died.
    w.journal
        .steps
        .lock()
        .unwrap()
        .insert((id.clone(), "w-03".into(), format!("cordon@{TO}")), refit_core::run::StepState::Done);
    w.cluster.set("w-03", |n| {
        n.unschedulable = true;
        n.cordoned_by = Some(id.clone());
    });
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(w.cluster.at(TO), 4);
    let batches: Vec<Vec<String>> = w
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BatchChosen { nodes, .. } => Some(nodes),
            _ => None,
        })
        .collect();
    assert_eq!(batches.first(), Some(&vec!["w-03".to_string()]), "the begun node alone, first");
    assert_eq!(
        batches.get(1),
        Some(&vec!["w-04".to_string()]),
        "then its zone's other node joins it while it is in flight"
    );
    assert!(
        w.cluster.max_unschedulable_workers.load(Ordering::SeqCst) <= 2,
        "never two zones' worth at once"
    );
}

/// Issue 18 item 9: a backup command's success is not enough — what it wrote must be a
/// private etcd snapshot, or the run stops before any node is touched. And the node action's
/// own backup (the ssh action's) is taken on the first control-plane node of the schedule.
#[tokio::test(start_paused = true)]
async fn a_backup_command_that_writes_no_snapshot_stops_the_run_before_any_cordon() {
    for (script, says) in [
        ("exit 0", "did not write it"),
        ("umask 077; : > \"$1\"", "is empty"),
        ("umask 077; echo done > \"$1\"", "not an etcd snapshot"),
        ("umask 022; head -c 4128 /dev/zero > \"$1\"", "mode 0644"),
    ] {
        let w = World::new(1, 3);
        let dir = tempfile::tempdir().unwrap();
        let mut spec = w.spec(2, OnUndrainable::Fail);
        spec.backup = refit_engine::BackupSpec::Command {
            command: vec!["sh".into(), "-c".into(), script.into(), "backup".into(), "{path}".into()],
            dir: dir.path().join("backups"),
        };
        let id = w.create("r1", &spec);
        let o = run(&w, &id, spec, None).await;
        assert_eq!(o.state, RunState::Failed, "{script}");
        let reason = o.reason.clone().unwrap_or_default();
        assert!(reason.contains("etcd backup failed") && reason.contains(says), "{script}: {reason}");
        assert!(o.units.iter().all(|u| u.result.name() == "not-started"), "{script}: {:?}", results(&o));
        assert_eq!(w.cluster.at(TO), 0, "{script}: no node upgraded");
        assert!(w.cluster.unschedulable().is_empty(), "{script}: nothing cordoned");
        assert_eq!(
            std::fs::metadata(dir.path().join("backups"))
                .map(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o777
                })
                .unwrap(),
            0o700,
            "the directory is created private"
        );
    }

    let w = World::new(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let mut spec = w.spec(2, OnUndrainable::Fail);
    spec.backup = refit_engine::BackupSpec::Node { dir: dir.path().to_path_buf() };
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_eq!(o.backup.as_deref(), Some("cp-1:snapshot.db"), "taken through the first control plane");
    assert!(!o.backup_opted_out);
}

/// The live ETA: the plan's estimate at the start, then this run's own pace phase by phase —
/// after the first round of two workers (each at least its 60 s action) the four rounds left
/// are expected to take 4 × their measured mean, and the last ETA says the run is over.
#[tokio::test(start_paused = true)]
async fn the_eta_follows_the_runs_own_pace() {
    use refit_core::plan::PhaseKind;
    let w = World::new(1, 10);
    let spec = w.spec(2, OnUndrainable::Fail);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    let events = w.events();
    let etas: Vec<(usize, &Event)> =
        events.iter().enumerate().filter(|(_, e)| matches!(e, Event::Eta { .. })).collect();
    let Some((_, Event::Eta { phases, ends_in_secs })) = etas.first() else { panic!("no ETA: {events:?}") };
    // The estimate: a control-plane node 240 s, then 5 rounds of workers × 120 s.
    assert_eq!(*ends_in_secs, 240 + 5 * 120);
    assert!(phases.iter().all(|p| !p.measured));
    // The ETA sent when the second worker finished (the first round).
    let workers_done = |upto: usize| {
        events[..upto]
            .iter()
            .filter(|e| matches!(e, Event::UnitFinished { node, .. } if node.starts_with("w-")))
            .count()
    };
    let (_, after_round) =
        etas.iter().find(|(i, _)| workers_done(*i) == 2).expect("an ETA after two workers");
    let Event::Eta { phases, ends_in_secs } = after_round else { unreachable!() };
    assert_eq!(phases.len(), 1, "only the workers are left: {phases:?}");
    assert_eq!((phases[0].phase, phases[0].measured), (PhaseKind::Workers, true));
    let took: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::UnitFinished { node, millis, .. } if node.starts_with("w-") => Some(*millis),
            _ => None,
        })
        .take(2)
        .collect();
    let expected = (took.iter().sum::<u64>() / 2 * 4).div_ceil(1000);
    assert!(expected >= 240, "each unit at least its 60 s action: {took:?}");
    assert_eq!(*ends_in_secs, expected, "4 rounds of the measured mean");
    let Some((_, Event::Eta { phases, ends_in_secs })) = etas.last() else { unreachable!() };
    assert_eq!((phases.len(), *ends_in_secs), (0, 0), "nothing left");
}

/// The old workers gone, each replaced exactly once by its replacement at the target.
fn assert_replaced(w: &World, workers: usize) {
    let nodes = w.cluster.nodes.lock().unwrap().clone();
    for n in 1..=workers {
        let old = format!("w-{n:02}");
        let new = refit_core::run::replacement_name(&old, &support::v(TO));
        assert!(!nodes.contains_key(&old), "{old} removed");
        assert_eq!(nodes.get(&new).map(|n| n.kubelet.to_string()), Some(TO.to_string()), "{new}");
        assert_eq!(w.cluster.created.lock().unwrap().get(&new), Some(&1), "{new} created once");
    }
    assert_eq!(nodes.len(), workers);
}

/// `--max-surge 2 --max-unavailable 0`: capacity never drops (every old node is cordoned only
/// once its replacement is Ready), never more than 2 extra nodes, and both slots are used.
#[tokio::test(start_paused = true)]
async fn surge_two_unavailable_zero_never_drops_capacity_nor_exceeds_the_surge() {
    let w = World::new(0, 6);
    let spec = w.surge_spec(2, 0);
    let id = w.create("r1", &spec);
    let o = run(&w, &id, spec, None).await;
    assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
    assert_replaced(&w, 6);
    assert_eq!(w.cluster.min_schedulable_workers.load(Ordering::SeqCst), 6, "capacity never dropped");
    assert_eq!(w.cluster.max_worker_nodes.load(Ordering::SeqCst), 8, "2 extra nodes at most, and used");
    let surge_events = w
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::BatchChosen { limit, .. } if limit.starts_with("surge: ")))
        .count();
    assert!(surge_events >= 3, "each start says where the surge stands ({surge_events})");
}

/// `--max-surge 1 --max-unavailable 1`: one replacement ahead, and one old node drained first
/// meanwhile (a Deployment's combination): never below 5 schedulable, never above 7 nodes;
/// the allowance is used, so the stage goes faster than the surge alone.
#[tokio::test(start_paused = true)]
async fn surge_and_unavailable_combine_like_a_deployment() {
    let timed = |surge, unavailable| async move {
        let w = World::new(0, 6);
        let spec = w.surge_spec(surge, unavailable);
        let id = w.create("r1", &spec);
        let t = tokio::time::Instant::now();
        let o = run(&w, &id, spec, None).await;
        assert_eq!(o.state, RunState::Completed, "{:?}", o.reason);
        assert_replaced(&w, 6);
        (w, t.elapsed())
    };
    let (w, both) = timed(1, 1).await;
    assert_eq!(w.cluster.min_schedulable_workers.load(Ordering::SeqCst), 5, "one old node out, used");
    assert_eq!(w.cluster.max_worker_nodes.load(Ordering::SeqCst), 7, "one extra node at most");
    let (w, alone) = timed(1, 0).await;
    assert_eq!(w.cluster.min_schedulable_workers.load(Ordering::SeqCst), 6);
    assert!(both < alone, "draining first within the allowance overlaps work: {both:?} vs {alone:?}");
}

/// kill -9 at every journal write of a surge run (2 ahead, 1 drained first), the first one
/// between "replacement Ready" (validate done) and "old node cordoned" included: the rerun
/// finishes, never creates a replacement twice, leaves nothing cordoned, and the limits hold
/// across the crash and the resume.
#[tokio::test(start_paused = true)]
async fn a_surge_run_resumes_after_a_crash_at_every_journal_write() {
    let total = {
        let w = World::new(0, 4);
        let spec = w.surge_spec(2, 1);
        let id = w.create("r1", &spec);
        run(&w, &id, spec, None).await;
        w.journal.writes.load(Ordering::SeqCst)
    };
    assert!(total > 20, "{total} writes");
    let mut between_ready_and_cordon = 0;
    for crash_at in 0..total {
        let w = World::new(0, 4);
        let spec = w.surge_spec(2, 1);
        let id = w.create("r1", &spec);
        die_at_write(&w, &id, &spec, crash_at).await;
        let ready_not_cordoned = (1..=4).any(|n| {
            let n = format!("w-{n:02}");
            w.journal.step(&id, &n, &format!("validate@{TO}")) == Some(refit_core::run::StepState::Done)
                && w.journal.step(&id, &n, &format!("cordon@{TO}")).is_none()
        });
        if ready_not_cordoned {
            between_ready_and_cordon += 1;
        }
        *w.journal.fault.lock().unwrap() = Fault::None;
        let o = run(&w, &id, spec, None).await;
        assert_eq!(o.state, RunState::Completed, "crash at write {crash_at}: {:?}", o.reason);
        assert_replaced(&w, 4);
        assert!(w.cluster.unschedulable().is_empty(), "crash at write {crash_at}");
        assert!(w.cluster.max_worker_nodes.load(Ordering::SeqCst) <= 6, "crash at write {crash_at}");
        assert!(w.cluster.min_schedulable_workers.load(Ordering::SeqCst) >= 3, "crash at write {crash_at}");
    }
    assert!(
        between_ready_and_cordon > 0,
        "some crash fell between a Ready replacement and its old node's cordon"
    );
}
