//! The testbed against itself: real etcd, kube-apiserver, controller-manager, scheduler and
//! kwok. Most tests share one testbed (their own namespace each); the ones that restart or
//! replace control-plane processes start their own.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};
use refit_core::{MinorVersion, Version};
use refit_testbed::workloads::{Budget, apply, deployment, pdb, pod_is_ready, wait_pods_ready};
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions, shared, unique_namespace};

fn release(minor: u32) -> Version {
    TestbedVersions::from_env()
        .unwrap()
        .kubernetes_for_minor(MinorVersion::new(1, minor))
        .unwrap_or_else(|| panic!("the testbed set has no 1.{minor}.x release (REFIT_TESTBED_VERSIONS)"))
        .clone()
}

#[tokio::test]
async fn apiserver_reports_the_version_that_was_built() {
    let tb = shared().unwrap();
    let version = tb.apiserver_version(0).await.unwrap();
    assert_eq!(version, release(36).git_version());
    // Through the load balancer too, and kubectl agrees.
    let client = tb.client().await.unwrap();
    assert_eq!(client.apiserver_version().await.unwrap().git_version, version);
    let out = std::process::Command::new(tb.kubectl(&release(36)).unwrap())
        .args(["version", "--kubeconfig"])
        .arg(tb.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Client Version: {version}")), "{text}");
    assert!(text.contains(&format!("Server Version: {version}")), "{text}");
}

#[tokio::test]
async fn twenty_kwok_workers_are_ready_with_versions_and_cidrs() {
    let tb = shared().unwrap();
    let nodes: Api<Node> = Api::all(tb.client().await.unwrap());
    let workers =
        nodes.list(&ListParams::default().labels("!node-role.kubernetes.io/control-plane")).await.unwrap();
    let original: Vec<&Node> = workers
        .items
        .iter()
        .filter(|n| n.metadata.name.as_deref().is_some_and(|n| n.starts_with("worker-0")))
        .collect();
    assert!(original.len() >= 20, "expected 20 workers, found {}", original.len());
    let mut cidrs = std::collections::BTreeSet::new();
    for n in &original {
        let status = n.status.as_ref().unwrap();
        assert!(status.conditions.as_ref().unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let info = status.node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, release(36).git_version());
        assert_eq!(info.kube_proxy_version, release(36).git_version());
        assert_eq!(status.allocatable.as_ref().unwrap()["pods"].0, "110");
        let taints = n.spec.as_ref().unwrap().taints.clone().unwrap_or_default();
        assert!(taints.iter().all(|t| t.key != "node.kubernetes.io/not-ready"), "{taints:?}");
        assert!(n.metadata.labels.as_ref().unwrap().contains_key("topology.kubernetes.io/zone"));
        cidrs.insert(n.spec.as_ref().unwrap().pod_cidr.clone().unwrap());
    }
    assert_eq!(cidrs.len(), original.len(), "each node has its own podCIDR");

    let cp = nodes.get("control-plane-1").await.unwrap();
    assert!(cp.metadata.labels.unwrap().contains_key("node-role.kubernetes.io/control-plane"));
    assert_eq!(cp.status.unwrap().node_info.unwrap().kubelet_version, release(36).git_version());
}

#[tokio::test]
async fn a_forty_replica_deployment_schedules_and_runs() {
    let tb = shared().unwrap();
    let ns = unique_namespace("forty");
    tb.create_namespace(&ns).await.unwrap();
    let client = tb.client().await.unwrap();
    apply::<Deployment>(&client, deployment(&ns, "web", 40)).await.unwrap();
    let pods = wait_pods_ready(&client, &ns, "app=web", 40, Duration::from_secs(120)).await.unwrap();
    assert_eq!(pods.len(), 40);
    let nodes: std::collections::BTreeSet<_> =
        pods.iter().map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap()).collect();
    assert!(nodes.len() > 1, "the scheduler spread the pods: {nodes:?}");
    assert!(!nodes.contains("control-plane-1"), "the control-plane taint is honoured");
    assert!(pods.iter().all(|p| p.status.as_ref().unwrap().pod_ip.is_some()), "kwok assigned pod IPs");
}

/// Waits until the PDB's status reports `allowed` disruptions for its current generation.
async fn wait_pdb(api: &Api<PodDisruptionBudget>, name: &str, allowed: i32) {
    let start = Instant::now();
    loop {
        let p = api.get(name).await.unwrap();
        let st = p.status.clone().unwrap_or_default();
        if st.disruptions_allowed == Some(allowed) && st.observed_generation == p.metadata.generation {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "PDB {name} never allowed {allowed}: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn eviction_is_refused_while_the_pdb_allows_nothing_and_the_pod_is_recreated_after() {
    let tb = shared().unwrap();
    let ns = unique_namespace("evict");
    tb.create_namespace(&ns).await.unwrap();
    let client = tb.client().await.unwrap();
    apply::<Deployment>(&client, deployment(&ns, "db", 3)).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb(&ns, "db", "db", Budget::MinAvailable(3))).await.unwrap();
    let pods = wait_pods_ready(&client, &ns, "app=db", 3, Duration::from_secs(60)).await.unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    wait_pdb(&pdbs, "db", 0).await;

    let victim = pods[0].metadata.name.clone().unwrap();
    let victim_uid = pods[0].metadata.uid.clone().unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match api.evict(&victim, &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 429, "{s:?}");
            assert!(s.message.contains("disruption budget"), "{}", s.message);
        }
        other => panic!("eviction under a zero budget must be refused with 429, got {other:?}"),
    }

    // Relax the budget; the disruption controller recomputes it and the eviction goes through.
    pdbs.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"spec": {"minAvailable": 2}})),
    )
    .await
    .unwrap();
    wait_pdb(&pdbs, "db", 1).await;
    api.evict(&victim, &EvictParams::default()).await.expect("eviction allowed by the budget");

    // The ReplicaSet replaces it: three ready pods again, none of them the victim.
    let start = Instant::now();
    loop {
        let pods = api.list(&ListParams::default().labels("app=db")).await.unwrap().items;
        let ready: Vec<&Pod> = pods.iter().filter(|p| pod_is_ready(p)).collect();
        if ready.len() == 3 && ready.iter().all(|p| p.metadata.uid.as_deref() != Some(&victim_uid)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "evicted pod was not recreated: {} ready",
            ready.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn workers_can_be_added_bumped_and_removed() {
    let tb = shared().unwrap();
    let spec = tb.next_worker_specs(1, &release(36));
    let name = spec[0].name.clone();
    tb.add_workers(spec).await.unwrap();
    let nodes: Api<Node> = Api::all(tb.client().await.unwrap());
    let newer = Version::new(1, 36, 99);
    tb.set_node_version(&name, &newer, &newer).await.unwrap();
    // kwok's heartbeats must not overwrite the simulated kubelet upgrade.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = nodes.get(&name).await.unwrap().status.unwrap().node_info.unwrap();
    assert_eq!(info.kubelet_version, "v1.36.99");
    assert_eq!(info.kube_proxy_version, "v1.36.99");
    tb.remove_worker(&name).await.unwrap();
    assert!(nodes.get_opt(&name).await.unwrap().is_none());
    assert!(matches!(tb.remove_worker(&name).await, Err(refit_testbed::Error::NotFound(_))));
}

#[tokio::test]
async fn replacing_a_control_plane_member_keeps_workloads_running() {
    // Three members behind the load balancer, 1.36 → 1.37 on one of them.
    let tb = Testbed::start(TestbedConfig::new(release(36), 4).control_planes(3)).await.unwrap();
    for i in 0..3 {
        assert_eq!(tb.apiserver_version(i).await.unwrap(), release(36).git_version());
    }
    let ns = "steady";
    tb.create_namespace(ns).await.unwrap();
    let client = tb.client().await.unwrap();
    apply::<Deployment>(&client, deployment(ns, "web", 8)).await.unwrap();
    wait_pods_ready(&client, ns, "app=web", 8, Duration::from_secs(60)).await.unwrap();

    // An independent watcher: through the load balancer, every 200 ms, all 8 pods stay Running.
    let watcher = {
        let client = client.clone();
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(client, "steady");
            let mut samples = 0;
            let mut failures = Vec::new();
            loop {
                match api.list(&ListParams::default().labels("app=web")).await {
                    Ok(list) => {
                        let running = list.items.iter().filter(|p| pod_is_ready(p)).count();
                        if running != 8 {
                            failures.push(format!("{running} of 8 running"));
                        }
                        samples += 1;
                    }
                    Err(e) => failures.push(format!("API unavailable through the load balancer: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if samples > 10_000 {
                    break (samples, failures);
                }
            }
        })
    };

    tb.upgrade_member(0, &release(37)).await.unwrap();
    assert_eq!(tb.apiserver_version(0).await.unwrap(), release(37).git_version());
    assert_eq!(tb.apiserver_version(1).await.unwrap(), release(36).git_version());
    let nodes: Api<Node> = Api::all(client.clone());
    let info = nodes.get("control-plane-1").await.unwrap().status.unwrap().node_info.unwrap();
    assert_eq!(info.kubelet_version, release(37).git_version());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let mirror = pods.get("kube-apiserver-control-plane-1").await.unwrap();
    assert_eq!(
        mirror.spec.unwrap().containers[0].image.as_deref(),
        Some(format!("registry.k8s.io/kube-apiserver:{}", release(37).git_version()).as_str())
    );

    // Fault injection: with member 2's apiserver down the cluster still answers.
    tb.stop_apiserver(2).unwrap();
    assert!(tb.apiserver_version(2).await.is_err());
    for _ in 0..10 {
        client.apiserver_version().await.expect("the load balancer fails over");
    }
    tb.start_apiserver_again(2).await.unwrap();
    assert_eq!(tb.apiserver_version(2).await.unwrap(), release(36).git_version());

    watcher.abort();
    let result = watcher.await;
    if let Ok((_, failures)) = result {
        assert!(failures.is_empty(), "{failures:?}");
    }
}

#[tokio::test]
async fn a_single_member_control_plane_survives_an_apiserver_restart() {
    let tb = Testbed::start(TestbedConfig::new(release(35), 2)).await.unwrap();
    assert_eq!(tb.apiserver_version(0).await.unwrap(), release(35).git_version());
    tb.stop_apiserver(0).unwrap();
    assert!(
        tb.client().await.unwrap().apiserver_version().await.is_err(),
        "nothing answers while it is down"
    );
    tb.start_apiserver_again(0).await.unwrap();
    // 1.35 → 1.36, then the nodes are still Ready (kwok and the KCM reconnected).
    tb.upgrade_member(0, &release(36)).await.unwrap();
    assert_eq!(tb.apiserver_version(0).await.unwrap(), release(36).git_version());
    tb.wait_nodes_ready(&[]).await.unwrap();
}

/// An apiserver (re)started while etcd is down exits at its start-up deadline ("etcd grpc
/// connection not ready"); as a kubelet restarts a crashing static pod, the testbed starts it
/// again, so the restart completes once etcd is back (the chaos test overlapped both faults).
#[tokio::test]
async fn an_apiserver_started_during_an_etcd_outage_is_started_again_until_etcd_is_back() {
    let tb = std::sync::Arc::new(Testbed::start(TestbedConfig::new(release(36), 0)).await.unwrap());
    tb.stop_apiserver(0).unwrap();
    // Another process's handle, read before etcd and the apiserver get new pids.
    let stale = Testbed::attach(&tb.dir()).unwrap();
    tb.stop_etcd();
    let restart = {
        let tb = tb.clone();
        tokio::spawn(async move { tb.start_apiserver_again(0).await })
    };
    // Longer than the apiserver's etcd deadline (~20 s): it exits at least once meanwhile.
    let log = tb.dir().join("logs/kube-apiserver-0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("etcd grpc connection not ready") || text.contains("command failed") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the apiserver never gave up on etcd: {log:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!restart.is_finished(), "the restart must still be waiting, not failed or done");
    tb.start_etcd_again().await.unwrap();
    restart.await.unwrap().expect("started again once etcd is back");
    assert_eq!(tb.apiserver_version(0).await.unwrap(), release(36).git_version());
    // The stale handle saves its copy (as a `refit sandbox upgrade-node` started before the
    // outage would): the new pids survive it (CI once lost etcd's, and the sandbox looked
    // stopped to every later command).
    stale.stop_apiserver(0).unwrap();
    assert!(refit_testbed::sandbox::running(&tb.dir()).is_some(), "etcd's new pid was written back over");
    let recorded = Testbed::attach(&tb.dir()).unwrap().recorded_pids();
    assert!(recorded.iter().all(|(_, _, alive)| *alive), "every recorded pid is alive: {recorded:?}");
    assert!(recorded.iter().any(|(n, _, _)| n == "kube-apiserver-0"), "{recorded:?}");
}

#[tokio::test]
async fn dropping_a_testbed_leaves_no_process_behind() {
    let tb = Testbed::start(TestbedConfig::new(release(36), 1)).await.unwrap();
    let pids: Vec<(String, i32)> = tb.process_status().into_iter().map(|(n, (pid, _))| (n, pid)).collect();
    assert!(pids.len() >= 5, "etcd, apiserver, controller-manager, scheduler, kwok: {pids:?}");
    let dir = tb.dir();
    drop(tb);
    for (name, pid) in pids {
        assert!(!refit_testbed::process::group_alive(pid), "{name} (pid {pid}) outlived its testbed");
    }
    assert!(!dir.exists(), "the temporary directory is removed");
}
