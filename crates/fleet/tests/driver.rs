//! The driver against a real SQLite store, with member clusters and upgrades replaced by
//! fakes (what is under test is the driver: its lease, its fencing, its relaunch rule; the
//! subprocess launcher and observation through the Kubernetes API are tested end to end in
//! `crates/cli/tests/fleet.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use refit_core::fleet::{
    Event, MemberFacts, MemberVersions, PendingReason, Strategy, UpdateState, UpgradeEnd, UpgradeSpec,
    UpgradeType,
};
use refit_fleet::launch::OnProgress;
use refit_fleet::lease::Identity;
use refit_fleet::{Driver, DriverConfig, Error, MemberLauncher, MemberUpgrade, Observer, Report, Sink};
use refit_store::Store;
use refit_store::fleet::{LeaseOutcome, Liveness, MemberRecord};
use tokio::sync::watch;

/// Members' reachability, switched by the test.
#[derive(Clone, Default)]
struct Clusters(Arc<Mutex<HashMap<String, Option<String>>>>);

impl Clusters {
    fn set_unreachable(&self, member: &str, why: Option<&str>) {
        self.0.lock().unwrap().insert(member.into(), why.map(str::to_string));
    }
}

impl Observer for Clusters {
    async fn observe(&self, m: &MemberRecord) -> MemberFacts {
        MemberFacts {
            versions: MemberVersions {
                control_plane: Some("1.36.4".parse().unwrap()),
                nodes: Some("1.36.4".parse().unwrap()),
                ..Default::default()
            },
            unavailable: self.0.lock().unwrap().get(&m.name).cloned().flatten(),
            ..Default::default()
        }
    }
}

/// Member upgrades that run until the test lets them finish.
#[derive(Clone)]
struct Upgrades {
    launched: Arc<Mutex<Vec<String>>>,
    cancelled: Arc<AtomicUsize>,
    finish: watch::Receiver<bool>,
}

/// Counts an upgrade dropped before it ended (its task was aborted).
struct Guard(Arc<AtomicUsize>, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl MemberLauncher for Upgrades {
    async fn upgrade(&self, up: MemberUpgrade, _progress: OnProgress) -> UpgradeEnd {
        self.launched.lock().unwrap().push(up.member.name.clone());
        let mut guard = Guard(self.cancelled.clone(), false);
        let mut finish = self.finish.clone();
        let _ = finish.wait_for(|f| *f).await;
        guard.1 = true;
        UpgradeEnd::Succeeded { message: format!("upgraded {}", up.member.name) }
    }
}

fn upgrades() -> (Upgrades, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    (Upgrades { launched: Arc::default(), cancelled: Arc::default(), finish: rx }, tx)
}

fn quiet() -> Sink {
    Arc::new(|r: Report<'_>| {
        if let Report::Warning { run, message } = r {
            eprintln!("warning: {run}: {message}");
        }
    })
}

fn fast() -> DriverConfig {
    DriverConfig {
        poll: Duration::from_millis(20),
        facts_ttl: Duration::ZERO,
        renew_every: Duration::from_millis(20),
        ..DriverConfig::default()
    }
}

/// A store with one member `m` and a started one-by-one run `r` to 1.37.1.
async fn fleet() -> (tempfile::TempDir, PathBuf, Clusters) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("refit.db");
    Store::open(&store)
        .unwrap()
        .add_member(&MemberRecord {
            name: "m".into(),
            kubeconfig: Some("/nowhere".into()),
            context: Some("m".into()),
            cluster_uid: Some("uid-m".into()),
            ..Default::default()
        })
        .unwrap();
    let spec = UpgradeSpec::new(UpgradeType::Full, Some("1.37.1".parse().unwrap()));
    refit_fleet::runs::create_from(&store, "r", spec, Strategy::one_by_one()).unwrap();
    let clusters = Clusters::default();
    refit_fleet::runs::start(&store, &Arc::new(clusters.clone()), "r", false, None).await.unwrap();
    (dir, store, clusters)
}

fn member_state(store: &Path) -> (UpdateState, Option<PendingReason>) {
    let run = Store::open(store).unwrap().fleet_run("r").unwrap().unwrap().state;
    let m = run.member("m").unwrap();
    (m.status.state, m.status.pending.clone())
}

fn history(store: &Path) -> Vec<Event> {
    Store::open(store).unwrap().fleet_run_events("r").unwrap().into_iter().map(|e| e.event).collect()
}

/// An identity on this host whose process does not exist (a driver that was killed).
fn dead_identity() -> Identity {
    let me = Identity::this_process();
    let pid = i64::from(i32::MAX);
    Identity { holder: format!("{}:{pid}:1", me.host), host: me.host, pid }
}

/// Waits until the member upgrade task (spawned by a tick) has started.
async fn launched(ups: &Upgrades, n: usize) {
    eventually("the member upgrade started", || ups.launched.lock().unwrap().len() == n).await;
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn a_second_driver_is_refused_while_the_first_lives_and_the_first_renews_from_its_timer() {
    let (_d, store, clusters) = fleet().await;
    let (ups, finish) = upgrades();
    let mut first = Driver::new(&store, ups.clone(), clusters.clone(), quiet(), fast()).unwrap();
    first.tick("r").await.unwrap();
    launched(&ups, 1).await;
    assert_eq!(*ups.launched.lock().unwrap(), ["m"]);

    // The first driver is not ticking (its loop could be busy observing): its timer renews.
    let beat = |s: &Path| Store::open(s).unwrap().lease("r").unwrap().unwrap().heartbeat_ms;
    let before = beat(&store);
    eventually("a renewal by the timer", || beat(&store) > before).await;

    // A second driver of this host — even one that considers every heartbeat stale — is
    // refused while the first process lives.
    let me = Identity::this_process();
    let other = Identity { holder: format!("{}:{}:{}", me.host, me.pid, i64::MAX / 2), ..me };
    let stale = DriverConfig { lease_ttl_ms: 0, ..fast() };
    let (ups2, _finish2) = upgrades();
    let mut second =
        Driver::with_identity(&store, ups2.clone(), clusters.clone(), quiet(), stale, other).unwrap();
    match second.tick("r").await {
        Err(e @ Error::Held { .. }) => assert!(e.to_string().contains("driven by another refit"), "{e}"),
        other => panic!("the second driver was not refused: {other:?}"),
    }
    assert!(ups2.launched.lock().unwrap().is_empty(), "it launched nothing");
    assert_eq!(Store::open(&store).unwrap().lease("r").unwrap().unwrap().holder, first.holder());

    finish.send(true).unwrap();
    let end = first.drive("r").await.unwrap();
    assert_eq!(end.status.state, UpdateState::Completed);
    assert_eq!(Store::open(&store).unwrap().lease("r").unwrap(), None, "released at the end");
}

#[tokio::test]
async fn a_deposed_driver_cancels_its_member_upgrades_and_its_writes_are_refused() {
    let (_d, store, clusters) = fleet().await;
    let (ups, finish) = upgrades();
    let mut first = Driver::new(&store, ups.clone(), clusters.clone(), quiet(), fast()).unwrap();
    first.tick("r").await.unwrap();
    launched(&ups, 1).await;
    assert_eq!(*ups.launched.lock().unwrap(), ["m"]);
    let version = Store::open(&store).unwrap().fleet_run("r").unwrap().unwrap().version;

    // A driver on another host found the lease silent (a hung process, a partition) and took
    // the run over.
    let mut other = Store::open(&store).unwrap();
    let taken = other.acquire_lease("r", "elsewhere:7:1", 7, 0, &|_| Liveness::Unknown).unwrap();
    assert!(matches!(taken, LeaseOutcome::Acquired { took_over: Some(_), .. }), "{taken:?}");

    // The deposed driver's member upgrade finishes; recording it is refused and the driver
    // stops driving the run.
    finish.send(true).unwrap();
    let err = first.drive("r").await.unwrap_err();
    assert!(
        matches!(&err, Error::Store(refit_store::Error::Deposed { holder: Some(h), .. }) if h.contains("elsewhere:7:1")),
        "{err}"
    );
    let run = Store::open(&store).unwrap().fleet_run("r").unwrap().unwrap();
    assert_eq!(run.version, version, "nothing was written after the takeover");
    assert_eq!(member_state(&store).0, UpdateState::Running, "the new driver records its outcome");
    assert_eq!(Store::open(&store).unwrap().lease("r").unwrap().unwrap().holder, "elsewhere:7:1");
}

#[tokio::test]
async fn a_deposed_driver_finds_out_from_its_timer_and_kills_what_it_launched() {
    let (_d, store, clusters) = fleet().await;
    let (ups, _finish) = upgrades();
    let mut first = Driver::new(&store, ups.clone(), clusters.clone(), quiet(), fast()).unwrap();
    first.tick("r").await.unwrap();
    launched(&ups, 1).await;
    let mut other = Store::open(&store).unwrap();
    other.acquire_lease("r", "elsewhere:7:1", 7, 0, &|_| Liveness::Unknown).unwrap();
    // Its next renewal is refused; the next tick stops, cancelling the upgrade under way (the
    // new driver relaunches it: it resumes its journal).
    let mut result = None;
    for _ in 0..100 {
        match first.tick("r").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                result = Some(e);
                break;
            }
        }
    }
    let err = result.expect("the deposed driver never noticed");
    assert!(matches!(err, Error::Store(refit_store::Error::Deposed { .. })), "{err}");
    eventually("the member upgrade cancelled", || ups.cancelled.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn after_a_restart_an_unreachable_member_under_way_waits_pending_and_is_retried() {
    let (_d, store, clusters) = fleet().await;
    // The first driver started m, then was killed (its process is gone).
    let (ups, finish) = upgrades();
    {
        let mut killed =
            Driver::with_identity(&store, ups.clone(), clusters.clone(), quiet(), fast(), dead_identity())
                .unwrap();
        killed.tick("r").await.unwrap();
        launched(&ups, 1).await;
    }
    assert_eq!(member_state(&store).0, UpdateState::Running);
    // m's API server is still coming back when a new driver starts.
    clusters.set_unreachable("m", Some("cannot reach the API server: connection refused"));
    let mut next = Driver::new(&store, ups.clone(), clusters.clone(), quiet(), fast()).unwrap();
    next.tick("r").await.unwrap();
    let (state, pending) = member_state(&store);
    assert_eq!(state, UpdateState::Pending, "not Failed");
    assert!(
        matches!(&pending, Some(PendingReason::Unavailable { message }) if message.contains("connection refused")),
        "{pending:?}"
    );
    assert_eq!(ups.launched.lock().unwrap().len(), 1, "not relaunched at an unreachable cluster");
    next.tick("r").await.unwrap();
    assert_eq!(member_state(&store).0, UpdateState::Pending, "still waiting");

    // It answers again: started again (continuing its run), and completes.
    clusters.set_unreachable("m", None);
    finish.send(true).unwrap();
    let end = next.drive("r").await.unwrap();
    assert_eq!(end.status.state, UpdateState::Completed);
    assert_eq!(*ups.launched.lock().unwrap(), ["m", "m"]);
    let kinds: Vec<String> = history(&store)
        .iter()
        .map(|e| serde_json::to_value(e).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    let took = kinds.iter().position(|k| k == "DriverTookOver").unwrap_or_else(|| panic!("{kinds:?}"));
    let waited = kinds.iter().position(|k| k == "MemberUnreachable").unwrap_or_else(|| panic!("{kinds:?}"));
    assert!(took < waited, "{kinds:?}");
    assert!(!kinds.iter().any(|k| k == "MemberFailed"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("MemberSucceeded"), "{kinds:?}");
}

/// Member upgrades that cannot reach their cluster.
#[derive(Clone)]
struct NeverReaches(Arc<AtomicUsize>);

impl MemberLauncher for NeverReaches {
    async fn upgrade(&self, _up: MemberUpgrade, _progress: OnProgress) -> UpgradeEnd {
        self.0.fetch_add(1, Ordering::SeqCst);
        UpgradeEnd::Failed { error: "error: cannot reach the API server".into(), reached: false }
    }
}

#[tokio::test]
async fn an_upgrade_that_could_not_reach_its_cluster_is_pending_while_the_member_is_unreachable() {
    let (_d, store, clusters) = fleet().await;
    let tries = Arc::new(AtomicUsize::new(0));
    let mut d = Driver::new(&store, NeverReaches(tries.clone()), clusters.clone(), quiet(), fast()).unwrap();
    // Reachable when observed, gone when launched: the launch fails without reaching it, and
    // the member is unreachable when looked at again.
    d.tick("r").await.unwrap();
    clusters.set_unreachable("m", Some("connection refused"));
    let waiting = tokio::time::timeout(Duration::from_millis(600), d.drive("r")).await;
    assert!(waiting.is_err(), "the run waits for the member: {waiting:?}");
    let (state, pending) = member_state(&store);
    assert_eq!(state, UpdateState::Pending, "{pending:?}");
    assert_eq!(tries.load(Ordering::SeqCst), 1, "not launched again while unreachable");
    // When the same failure happens with the member reachable, it is a failure.
    clusters.set_unreachable("m", None);
    let end = d.drive("r").await.unwrap();
    assert_eq!(end.status.state, UpdateState::Failed);
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    assert!(end.member("m").unwrap().status.error.as_deref().unwrap_or("").contains("cannot reach"));
}
