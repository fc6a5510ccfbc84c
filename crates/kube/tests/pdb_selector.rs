//! Which pods a `policy/v1` PodDisruptionBudget with an EMPTY selector (`selector: {}`) covers,
//! asked of the real kube-apiserver and kube-controller-manager of every minor the testbed
//! builds. Core keeps one rule (`PdbInfo::covers`: an empty selector covers every pod of its
//! namespace, a missing one none); preflight and the drain both use it, so this test holds
//! that rule against the eviction subresource and the disruption controller.
//!
//! Each minor gets a testbed of its own (one worker). A budget `minAvailable: 2` over a
//! Deployment of two ready pods allows no disruption, so an eviction it covers is refused
//! with 429 naming it, and one it does not cover goes through.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, EvictParams};
use refit_core::MinorVersion;
use refit_core::pdb::PdbInfo;
use refit_kube::drain::{DrainConfig, drain};
use refit_kube::snapshot::pdb_info;
use refit_kube::{ClusterTarget, connect};
use refit_testbed::workloads::{apply, deployment, wait_pods_ready};
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(120);

fn budget(ns: &str, name: &str, selector: Option<Value>) -> Value {
    let mut spec = json!({"minAvailable": 2});
    if let Some(s) = selector {
        spec["selector"] = s;
    }
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// The budget once the disruption controller has computed it for its current spec.
async fn computed(client: &Client, ns: &str, name: &str) -> PodDisruptionBudget {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let p = api.get(name).await.unwrap();
        let s = p.status.clone().unwrap_or_default();
        if s.observed_generation.is_some() && s.observed_generation == p.metadata.generation {
            return p;
        }
        assert!(start.elapsed() < READY, "PDB {ns}/{name} not computed: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two ready pods of `web` in a fresh namespace with one budget `selector`; returns the budget
/// as the controller computed it and the pods.
async fn scenario(
    client: &Client,
    tb: &Testbed,
    ns: &str,
    selector: Option<Value>,
) -> (PodDisruptionBudget, Vec<Pod>) {
    tb.create_namespace(ns).await.unwrap();
    apply::<Deployment>(client, deployment(ns, "web", 2)).await.unwrap();
    let pods = wait_pods_ready(client, ns, "app=web", 2, READY).await.unwrap();
    apply::<PodDisruptionBudget>(client, budget(ns, "budget", selector)).await.unwrap();
    (computed(client, ns, "budget").await, pods)
}

async fn empty_selector_on(minor: u32) {
    let version = TestbedVersions::from_env()
        .unwrap()
        .kubernetes_for_minor(MinorVersion::new(1, minor))
        .unwrap_or_else(|| panic!("the testbed set has no 1.{minor}.x release (REFIT_TESTBED_VERSIONS)"))
        .clone();
    let tb = Testbed::start(TestbedConfig::new(version.clone(), 1)).await.unwrap();
    let client = tb.client().await.unwrap();

    for (ns, selector) in [("empty", Some(json!({}))), ("missing", None)] {
        let (server, pods) = scenario(&client, &tb, ns, selector).await;
        let spec_selector = server.spec.as_ref().and_then(|s| s.selector.clone());
        let info: PdbInfo = pdb_info(server.clone());
        let status = server.status.clone().unwrap_or_default();
        let core_covers: Vec<bool> =
            pods.iter().map(|p| info.covers_labels(ns, p.metadata.labels.as_ref().unwrap())).collect();
        // The disruption controller's view: expectedPods counts the pods it covers.
        let expected = if core_covers.iter().all(|c| *c) { 2 } else { 0 };
        assert_eq!(
            status.expected_pods,
            Some(expected),
            "1.{minor} {ns} (selector {spec_selector:?}): controller status {status:?}, core covers {core_covers:?}"
        );
        // The eviction subresource's view.
        let name = pods[0].metadata.name.clone().unwrap();
        let answer = Api::<Pod>::namespaced(client.clone(), ns).evict(&name, &EvictParams::default()).await;
        match (core_covers[0], answer) {
            (true, Err(kube::Error::Api(s))) => {
                assert_eq!(s.code, 429, "1.{minor} {ns}: {s:?}");
                let causes = s.details.map(|d| d.causes).unwrap_or_default();
                assert!(
                    causes.iter().any(|c| c.reason == "DisruptionBudget" && c.message.contains("budget")),
                    "1.{minor} {ns}: the refusal names no budget: {causes:?}"
                );
            }
            (false, Ok(_)) => {}
            (covers, answer) => panic!(
                "1.{minor} {ns} (selector {spec_selector:?}): core says covered={covers}, the eviction API answered {answer:?}"
            ),
        }
        println!(
            "1.{minor}: selector {ns:7} → controller expectedPods {:?}, eviction {}",
            status.expected_pods,
            if core_covers[0] { "refused (429, budget named)" } else { "accepted" }
        );
    }

    // refit's drain agrees: the worker's `empty` pods stay, blocked by the budget by name.
    let conn = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.unwrap();
    let cfg = DrainConfig {
        timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        ..DrainConfig::default()
    };
    let report = drain(&conn, "worker-001", &cfg, &|_| {}).await.unwrap();
    let blocked: Vec<_> = report.remaining.iter().filter(|b| b.pod.namespace == "empty").collect();
    assert_eq!(blocked.len(), 2, "1.{minor}: {report:?}");
    assert!(blocked.iter().all(|b| b.pdb.as_deref() == Some("empty/budget")), "1.{minor}: {blocked:?}");
    assert!(report.timed_out && !report.complete);
}

#[tokio::test]
async fn an_empty_selector_covers_every_pod_of_its_namespace_on_1_35() {
    empty_selector_on(35).await;
}

#[tokio::test]
async fn an_empty_selector_covers_every_pod_of_its_namespace_on_1_36() {
    empty_selector_on(36).await;
}

#[tokio::test]
async fn an_empty_selector_covers_every_pod_of_its_namespace_on_1_37() {
    empty_selector_on(37).await;
}
