//! The engine's journal on a real hub (the testbed's kube-apiserver): a member upgrade's run
//! and step transitions written to its ClusterUpgrade are what the next owner reads to resume
//! the same run; the deposed owner's next write fails, typed, and lands nowhere; the fleet
//! driver's own writes to the same status never conflict with the journal's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use refit_controller::journal::{HubJournal, HubJournalError, StillLeading};
use refit_controller::resources::{ClusterUpgrade, ClusterUpgradeSpec};
use refit_core::event::Event;
use refit_core::plan::{PhaseKind, Role, Step};
use refit_core::run::{RunState, Schedule, Stage, StepState, UnitWork, step_key};
use refit_engine::context::{Journal, JournalError};
use refit_engine::lifecycle::{self, Behaviour, Decision};
use refit_engine::{BackupSpec, NodeAction, RunSpec};
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};

const NS: &str = "fleet";
const UID: &str = "0b7d3c1e-uid-of-east";

fn spec() -> RunSpec {
    let to: refit_core::Version = "1.37.1".parse().unwrap();
    let unit = |node: &str, role: Role, first: bool| UnitWork {
        node: node.into(),
        roles: BTreeSet::from([role]),
        from: "1.36.4".into(),
        to: to.clone(),
        steps: vec![Step::Cordon, Step::Drain, Step::Upgrade, Step::Validate, Step::Uncordon],
        external: false,
        first_control_plane: first,
    };
    RunSpec {
        schedule: Schedule {
            target: to.clone(),
            stages: vec![
                Stage {
                    phase: PhaseKind::ControlPlane,
                    to: to.clone(),
                    concurrency: 1,
                    units: vec![unit("cp-1", Role::ControlPlane, true)],
                    auto: None,
                    surge: None,
                },
                Stage {
                    phase: PhaseKind::Workers,
                    to: to.clone(),
                    concurrency: 1,
                    units: vec![unit("worker-1", Role::Worker, false)],
                    auto: None,
                    surge: None,
                },
            ],
            cluster_services: false,
            excluded: Vec::new(),
        },
        action: NodeAction::Exec { command: vec!["upgrade-node".into(), "{node}".into()] },
        drain_rules: Default::default(),
        drain_timeout_secs: 600,
        node_timeout_secs: 900,
        on_undrainable: Default::default(),
        force: false,
        addresses: BTreeMap::new(),
        backup: BackupSpec::OptedOut,
        cluster_services: None,
        eviction_concurrency: 4,
        accepted: Vec::new(),
        gates: Vec::new(),
        on_gate_failure: Default::default(),
        etcd_health: Vec::new(),
        control_plane_gate_secs: refit_engine::DEFAULT_CONTROL_PLANE_GATE_SECS,
    }
}

fn flag(leading: &Arc<AtomicBool>) -> StillLeading {
    let l = leading.clone();
    Arc::new(move || l.load(Ordering::SeqCst))
}

fn hub_error(e: &JournalError) -> &HubJournalError {
    e.source
        .as_deref()
        .and_then(|s| s.downcast_ref::<HubJournalError>())
        .unwrap_or_else(|| panic!("not a hub journal error: {e}"))
}

async fn step(j: &HubJournal, run: &str, node: &str, s: Step, state: StepState) -> Result<(), JournalError> {
    let key = step_key(s, &"1.37.1".parse().unwrap());
    let e = Event::Warning { message: format!("{node} {key} {}", state.as_str()) };
    j.record_step(run, node, &key, state, "", &e).await
}

async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &ClusterUpgrade::crd()).await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let start = Instant::now();
    loop {
        let crd = crds.get(ClusterUpgrade::crd_name()).await.unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the ClusterUpgrade CRD never became Established");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Established is not served yet everywhere: wait until a list answers.
    let api: Api<ClusterUpgrade> = Api::namespaced(client.clone(), NS);
    while api.list(&Default::default()).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "ClusterUpgrades are never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_owner_resumes_the_same_run_from_the_hub_and_the_deposed_one_writes_nothing() {
    let versions = TestbedVersions::from_env().unwrap();
    let version = versions.kubernetes.last().cloned().expect("the testbed builds at least one release");
    let tb = Testbed::start(TestbedConfig::new(version, 0)).await.unwrap();
    let client = tb.client().await.unwrap();
    install_crd(&client).await;
    let api: Api<ClusterUpgrade> = Api::namespaced(client.clone(), NS);
    let name = "to-137.east";
    let cu_spec = ClusterUpgradeSpec {
        run: "to-137".into(),
        member: "east".into(),
        cluster_uid: UID.into(),
        kubernetes_version: Some("1.37.1".parse().unwrap()),
    };

    // Replica a opens the journal (creating the ClusterUpgrade) and starts a run through the
    // engine's lifecycle, as the in-process launcher does.
    let a_leads = Arc::new(AtomicBool::new(true));
    let a =
        HubJournal::open(api.clone(), name, cu_spec.clone(), "replica-a/1", flag(&a_leads)).await.unwrap();
    assert_eq!(a.previous_owner(), "");
    let catalog = refit_core::catalog::Catalog::embedded().unwrap();
    let request: refit_core::VersionRequest = "1.37.1".parse().unwrap();
    assert_eq!(lifecycle::decide(&a, UID, &request, &catalog, false).await.unwrap(), Decision::Fresh);
    let run = lifecycle::create_run(&a, UID, &spec(), &jiff::Zoned::now()).await.unwrap();
    for (s, state) in [
        (Step::Cordon, StepState::Started),
        (Step::Cordon, StepState::Done),
        (Step::Drain, StepState::Started),
    ] {
        step(&a, &run, "cp-1", s, state).await.unwrap();
    }
    // The fleet driver writes the member's progress to the same status meanwhile (a merge
    // patch, no resourceVersion): the journal's next write does not conflict with it.
    let progress = serde_json::json!({"status": {"step": "cp-1: drain", "state": "Running"}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&progress)).await.unwrap();
    step(&a, &run, "cp-1", Step::Drain, StepState::Done).await.unwrap();
    step(&a, &run, "cp-1", Step::Upgrade, StepState::Started).await.unwrap();

    // Replica b leads next and claims the journal: the same run, its steps as a wrote them.
    let b_leads = Arc::new(AtomicBool::new(true));
    let b =
        HubJournal::open(api.clone(), name, cu_spec.clone(), "replica-b/2", flag(&b_leads)).await.unwrap();
    assert_eq!(b.previous_owner(), "replica-a/1");
    let prev = match lifecycle::decide(&b, UID, &request, &catalog, false).await.unwrap() {
        Decision::Resume(prev) => prev,
        other => panic!("the next owner does not resume the run: {other:?}"),
    };
    assert_eq!(prev.id, run, "the same run id");
    assert_eq!(
        lifecycle::resume_spec(&prev, Behaviour { eviction_concurrency: 4, ..Behaviour::default() }).unwrap(),
        spec(),
        "the frozen spec, read back whole"
    );
    let steps: Vec<(String, String, String)> =
        b.steps(&run).await.unwrap().into_iter().map(|s| (s.unit, s.step, s.state)).collect();
    assert_eq!(
        steps,
        [
            ("cp-1".into(), "cordon@1.37.1".into(), "done".into()),
            ("cp-1".into(), "drain@1.37.1".into(), "done".into()),
            ("cp-1".into(), "upgrade@1.37.1".into(), "started".into()),
        ]
    );

    // a still thinks it leads (a partition): its write is refused by the hub, typed, and
    // nothing of it lands.
    let err = step(&a, &run, "cp-1", Step::Upgrade, StepState::Done).await.unwrap_err();
    match hub_error(&err) {
        HubJournalError::Deposed { owner, me, .. } => {
            assert_eq!((owner.as_str(), me.as_str()), ("replica-b/2", "replica-a/1"))
        }
        other => panic!("{other:?}"),
    }
    let err = a.set_run_state(&run, RunState::Failed).await.unwrap_err();
    assert!(matches!(hub_error(&err), HubJournalError::Deposed { .. }), "{err}");
    let stored = api.get(name).await.unwrap();
    let journal = stored.status.clone().unwrap().journal.unwrap();
    assert_eq!(journal.owner, "replica-b/2");
    assert_eq!(journal.steps["cp-1"], "cordon@1.37.1=done,drain@1.37.1=done,upgrade@1.37.1=started");
    assert_eq!(journal.runs.len(), 1);
    assert_eq!(journal.runs[0].state, "running");
    // The driver's fields are untouched by the journal's writes.
    assert_eq!(stored.status.unwrap().step.as_deref(), Some("cp-1: drain"));

    // b resumes where a stopped; a replica that knows it no longer leads writes nothing.
    step(&b, &run, "cp-1", Step::Upgrade, StepState::Done).await.unwrap();
    b_leads.store(false, Ordering::SeqCst);
    let err = step(&b, &run, "cp-1", Step::Validate, StepState::Started).await.unwrap_err();
    assert!(matches!(hub_error(&err), HubJournalError::NotLeading { .. }), "{err}");
    b_leads.store(true, Ordering::SeqCst);
    b.set_run_state(&run, RunState::Completed).await.unwrap();

    // What b knows is what the hub holds.
    let stored = api.get(name).await.unwrap();
    assert_eq!(stored.status.clone().unwrap().journal.unwrap(), b.snapshot());
    assert_eq!(stored.labels().get("refit.dev/run").map(String::as_str), Some("to-137"));
    drop(tb);
}
