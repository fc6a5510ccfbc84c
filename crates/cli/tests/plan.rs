//! `refit plan` against a real testbed holding the sandbox's demo workloads plus a PDB that
//! can never allow a disruption.

use std::collections::BTreeSet;
use std::path::Path;

use assert_cmd::Command;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use refit_testbed::workloads::{Budget, apply, deployment, install_demo, pdb, wait_pods_ready};
use refit_testbed::{Testbed, TestbedConfig, default_version};
use serde_json::Value;

fn plan(kubeconfig: &Path, args: &[&str]) -> (i32, Value, String) {
    let out = Command::cargo_bin("refit")
        .unwrap()
        .args(["plan", "-o", "json", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn checks(v: &Value) -> Vec<(String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["check"].as_str().unwrap().to_string(), f["subject"].as_str().unwrap().to_string()))
        .collect()
}

fn has(v: &Value, check: &str, subject_part: &str) -> bool {
    checks(v).iter().any(|(c, s)| c == check && s.contains(subject_part))
}

#[tokio::test]
async fn plan_finds_what_blocks_and_orders_the_upgrade() {
    let tb = Testbed::start(TestbedConfig::new(default_version().unwrap(), 4)).await.unwrap();
    tb.create_namespace("demo").await.unwrap();
    let client = tb.client().await.unwrap();
    install_demo(&client, "demo").await.unwrap();
    // A budget that can never allow a disruption: minAvailable equal to the replicas.
    tb.create_namespace("locked").await.unwrap();
    apply::<Deployment>(&client, deployment("locked", "ledger", 2)).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb("locked", "ledger", "ledger", Budget::MinAvailable(2)))
        .await
        .unwrap();
    wait_pods_ready(&client, "locked", "app=ledger", 2, std::time::Duration::from_secs(60)).await.unwrap();
    wait_pods_ready(&client, "demo", "app=web", 6, std::time::Duration::from_secs(60)).await.unwrap();
    // Let the disruption controller publish the budget's status.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let kc = tb.kubeconfig();

    let (code, p, stderr) = plan(&kc, &["--to", "1.37", "--max-unavailable", "2"]);
    assert_eq!(code, 1, "blockers exit 1: {stderr}");
    assert_eq!(p["blocked"], true);
    assert!(has(&p, "unmanaged-pod", "pod/demo/debug-shell"), "{:?}", checks(&p));
    assert!(has(&p, "local-data", "pod/demo/cache-"), "{:?}", checks(&p));
    assert!(has(&p, "single-replica", "deployment/demo/singleton"), "{:?}", checks(&p));
    assert!(has(&p, "pdb-never-allows", "pdb/locked/ledger"), "{:?}", checks(&p));
    // Kismatic's availability rows block on the node concerned: the lone control plane.
    assert!(
        has(&p, "control-plane-count", "node/control-plane-1")
            && has(&p, "etcd-members", "node/control-plane-1")
    );
    let severity = |v: &Value, check: &str| {
        v["findings"].as_array().unwrap().iter().find(|f| f["check"] == check).map(|f| f["severity"].clone())
    };
    for check in ["single-replica", "control-plane-count", "etcd-members"] {
        assert_eq!(severity(&p, check), Some(Value::from("blocker")), "{check}: online mode stops on it");
    }
    assert!(!has(&p, "pdb-never-allows", "pdb/demo/"), "the demo budgets have room: {:?}", checks(&p));
    // Phases in order, the control plane alone, workers two at a time.
    let phases: Vec<&str> =
        p["phases"].as_array().unwrap().iter().map(|ph| ph["kind"].as_str().unwrap()).collect();
    assert_eq!(phases, ["etcd", "workers", "cluster-services"]);
    let workers = &p["phases"][1]["batches"];
    assert_eq!(workers.as_array().unwrap().len(), 2);
    assert!(workers.as_array().unwrap().iter().all(|b| b["units"].as_array().unwrap().len() <= 2));
    assert!(p["path"].as_array().unwrap()[0].as_str().unwrap().starts_with("1.37."));
    // Per node, what the drain does with each pod, with kubectl's semantics.
    let units: Vec<&Value> = p["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|ph| {
            ph["batches"].as_array().unwrap().iter().flat_map(|b| b["units"].as_array().unwrap().iter())
        })
        .collect();
    let holder = units
        .iter()
        .find(|u| u["drain"]["refuse"].as_array().unwrap().iter().any(|r| r[0] == "demo/debug-shell"))
        .expect("the node holding the bare pod refuses to drain");
    assert!(
        holder["drain"]["skip"].as_array().unwrap().iter().any(|s| s[1] == "daemon-set"),
        "DaemonSet pods are skipped"
    );
    let cp = units.iter().find(|u| u["node"] == "control-plane-1").unwrap();
    assert!(
        cp["drain"]["skip"].as_array().unwrap().iter().any(|s| s[1] == "mirror"),
        "static pods are skipped"
    );

    // --ignore-safety-checks reports the same findings and blocks nothing.
    let (code, ignored, _) = plan(&kc, &["--to", "1.37", "--max-unavailable", "2", "--ignore-safety-checks"]);
    assert_eq!((code, ignored["blocked"].clone()), (0, Value::Bool(false)));
    assert_eq!(checks(&ignored).len(), checks(&p).len());

    // --partial-ok refuses while the control plane has a blocker (Kismatic: only when every
    // etcd and master node is ready) ...
    let (code, _, stderr) = plan(&kc, &["--to", "1.37", "--partial-ok"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("control-plane-1") && stderr.trim().lines().count() == 1, "{stderr}");
    // ... and leaves out exactly the blocked workers once its findings are accepted.
    let members = ["--accept", "etcd-members", "--accept", "control-plane-count"];
    let (code, partial, stderr) = plan(&kc, &[&["--to", "1.37", "--partial-ok"][..], &members[..]].concat());
    assert_eq!(code, 0, "{stderr} {partial:#}");
    let excluded: BTreeSet<&str> =
        partial["excluded"].as_array().unwrap().iter().map(|e| e[0].as_str().unwrap()).collect();
    let (_, whole, _) = plan(&kc, &[&["--to", "1.37"][..], &members[..]].concat());
    let blocked_workers: BTreeSet<&str> = whole["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "blocker")
        .filter_map(|f| f["node"].as_str())
        .filter(|n| n.starts_with("worker-"))
        .collect();
    assert!(!excluded.is_empty());
    assert_eq!(excluded, blocked_workers, "exactly the workers with open blockers");

    // --accept takes exactly its subject out of the blockers, and the plan shows it apart.
    let (_, one, stderr) =
        plan(&kc, &["--to", "1.37", "--accept", "single-replica=deployment/demo/singleton"]);
    assert!(!has(&one, "single-replica", "deployment/demo/singleton"), "{stderr}");
    let accepted = one["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["rule"], "single-replica=deployment/demo/singleton");
    assert_eq!(accepted[0]["origin"], "flag");
    let (_, base, _) = plan(&kc, &["--to", "1.37"]);
    let mut left = checks(&base);
    left.retain(|(c, s)| !(c == "single-replica" && s == "deployment/demo/singleton"));
    assert_eq!(checks(&one), left, "the others stay open");
    // A subject that matches nothing is a warning; a check that cannot be accepted is bad input.
    let (_, _, stderr) = plan(&kc, &["--to", "1.37", "--accept", "single-replica=deployment/demo/nope"]);
    assert!(stderr.contains("WARNING: accept single-replica=deployment/demo/nope"), "{stderr}");
    let (code, _, stderr) = plan(&kc, &["--to", "1.37", "--accept", "pdb-never-allows"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a check that can be accepted"), "{stderr}");

    // The allowances turn the drain blockers into warnings.
    let (_, allowed, _) = plan(&kc, &["--to", "1.37", "--delete-emptydir-data", "--delete-unmanaged-pods"]);
    let sev = |check: &str| {
        allowed["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .map(|f| f["severity"].clone())
    };
    assert_eq!(sev("unmanaged-pod"), Some(Value::from("warning")));
    assert_eq!(sev("local-data"), Some(Value::from("warning")));

    // --offline: no check, a loud warning.
    let (code, offline, stderr) = plan(&kc, &["--to", "1.37", "--offline"]);
    assert_eq!(code, 0);
    assert!(offline["findings"].as_array().unwrap().is_empty());
    assert!(stderr.contains("WARNING: --offline"), "{stderr}");

    // Plan files: roles the cluster cannot tell, and bad ones refused with exit 2.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("plan.yaml");
    std::fs::write(&good, "etcd:\n  - {name: etcd-ext-1, address: 10.9.0.1}\ningressLabels: [kubernetes.io/hostname=worker-002]\naccept: [ingress-node=node/worker-002]\n").unwrap();
    let (_, with_file, stderr) = plan(&kc, &["--to", "1.37", "-f", good.to_str().unwrap()]);
    let accepted = with_file["accepted"].as_array().unwrap();
    assert!(
        accepted.iter().any(|a| a["check"] == "ingress-node" && a["origin"] == "plan-file"),
        "the plan file's accept: {stderr} {accepted:?}"
    );
    // The external etcd host counts: two members, each one blocks on etcd-members.
    assert!(
        has(&with_file, "etcd-members", "node/etcd-ext-1")
            && has(&with_file, "etcd-members", "node/control-plane-1")
    );
    let etcd_units: Vec<&str> = with_file["phases"][0]["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["units"].as_array().unwrap().iter().map(|u| u["node"].as_str().unwrap()))
        .collect();
    assert!(etcd_units.contains(&"etcd-ext-1"), "{etcd_units:?}");
    for (content, expected) in [
        ("nodes: [", "not valid"),
        ("nodes:\n  worker-999: {roles: [worker]}\n", "worker-999"),
        ("surprise: 1\n", "not valid"),
    ] {
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, content).unwrap();
        let (code, _, stderr) = plan(&kc, &["--to", "1.37", "-f", bad.to_str().unwrap()]);
        assert_eq!(code, 2, "{content}: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    for (args, expected) in [
        (vec!["--to", "banana"], "not a Kubernetes version"),
        (vec!["--to", "1.37", "--max-unavailable", "0"], "--max-unavailable"),
        (vec!["--to", "1.35"], "downgrades"),
    ] {
        let (code, _, stderr) = plan(&kc, &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// The rules the first test does not reach, each with a trigger and a counter-example.
#[tokio::test]
async fn each_remaining_rule_fires_on_its_trigger_only() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
    use serde_json::json;

    let config = TestbedConfig::new(default_version().unwrap(), 4)
        .apiserver_arg("--runtime-config=storage.k8s.io/v1beta1=true");
    let tb = Testbed::start(config).await.unwrap();
    let client = tb.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::default();
    tb.create_namespace("rules").await.unwrap();

    // cordoned-by-other: someone cordoned worker-003.
    nodes.patch("worker-003", &pp, &Patch::Merge(&json!({"spec": {"unschedulable": true}}))).await.unwrap();
    // node-pressure: worker-004 reports memory pressure. (node-not-ready is unit-tested only:
    // kwok's node-initialize stage sets Ready back to True as soon as it is patched away.)
    nodes
        .patch_status(
            "worker-004",
            &pp,
            &Patch::Strategic(&json!({"status": {"conditions": [
                {"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory", "message": "test"},
            ]}})),
        )
        .await
        .unwrap();
    // storage-node: worker-002 carries the storage label.
    nodes
        .patch("worker-002", &pp, &Patch::Merge(&json!({"metadata": {"labels": {"storage": "ceph"}}})))
        .await
        .unwrap();
    // version-skew: worker-001's kubelet is four minors behind the target.
    let old = refit_core::Version::new(1, 33, 5);
    tb.set_node_version("worker-001", &old, &old).await.unwrap();
    // daemonset-single-node: pinned to worker-002 (kube-proxy runs everywhere: no finding).
    let mut ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "pinned-agent", "namespace": "rules"},
        "spec": {"selector": {"matchLabels": {"app": "pinned-agent"}}, "template": {
            "metadata": {"labels": {"app": "pinned-agent"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": "worker-002"},
                     "containers": [{"name": "a", "image": "registry.k8s.io/pause:3.10.1"}]}}},
    });
    apply::<DaemonSet>(&client, ds.take()).await.unwrap();
    // local-data (hostPath) and capacity: 6-CPU pods, one per node, nowhere to go when drained.
    let mut big = deployment("rules", "big", 2);
    big["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] =
        json!({"cpu": "6", "memory": "1Gi"});
    big["spec"]["template"]["spec"]["volumes"] = json!([{"name": "logs", "hostPath": {"path": "/var/log"}}]);
    apply::<Deployment>(&client, big).await.unwrap();
    // pdb-unhealthy: one of three pods reports not ready; minAvailable 2 leaves no room.
    apply::<Deployment>(&client, deployment("rules", "flaky", 3)).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb("rules", "flaky", "flaky", Budget::MinAvailable(2)))
        .await
        .unwrap();
    let flaky =
        wait_pods_ready(&client, "rules", "app=flaky", 3, std::time::Duration::from_secs(60)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "rules");
    pods.patch_status(
        flaky[0].metadata.name.as_deref().unwrap(),
        &pp,
        &Patch::Strategic(&json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await
    .unwrap();
    // removed-api: a client reads an opt-in beta that 1.37 removes.
    let ar = refit_testbed::workloads::volume_attributes_class_v1beta1();
    Api::<DynamicObject>::all_with(client.clone(), &ar).list(&ListParams::default()).await.unwrap();
    wait_pods_ready(&client, "rules", "app=big", 2, std::time::Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    let (code, p, stderr) = plan(&tb.kubeconfig(), &["--to", "1.37", "--storage-label", "storage=ceph"]);
    assert_eq!(code, 1, "{stderr}");
    let find =
        |check: &str| checks(&p).into_iter().filter(|(c, _)| c == check).map(|(_, s)| s).collect::<Vec<_>>();
    assert_eq!(find("cordoned-by-other"), ["node/worker-003"]);
    assert!(find("node-not-ready").is_empty(), "every node is Ready");
    assert_eq!(find("node-pressure"), ["node/worker-004"]);
    assert_eq!(find("storage-node"), ["node/worker-002"]);
    assert_eq!(find("version-skew"), ["node/worker-001"]);
    assert_eq!(find("daemonset-single-node"), ["daemonset/rules/pinned-agent"]);
    assert!(
        find("local-data").iter().all(|s| s.starts_with("pod/rules/big-")) && !find("local-data").is_empty()
    );
    assert!(
        !find("capacity").is_empty() && find("capacity").iter().all(|s| s.starts_with("pod/rules/big-")),
        "{:?}",
        find("capacity")
    );
    assert!(
        find("pdb-unhealthy").iter().all(|s| s == "pdb/rules/flaky") && !find("pdb-unhealthy").is_empty(),
        "{:?}",
        checks(&p)
    );
    assert!(find("removed-api").iter().any(|s| s.contains("apiserver")), "{:?}", checks(&p));
    assert!(find("worker-count").is_empty(), "four workers are enough");
    assert!(find("unmanaged-pod").is_empty() && find("single-replica").is_empty(), "none here");
}

/// The rules that need a node's lifecycle, a version, a batch shape or a PersistentVolume:
/// node-unreachable (a "kubelet" stopped until the real node lifecycle controller taints the
/// node), node-not-ready, at-target, pdb-all-in-batch, local PersistentVolumes and
/// worker-count, each with a counter-example.
#[tokio::test]
async fn lifecycle_version_batch_and_volume_rules_fire_on_their_trigger_only() {
    use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use serde_json::json;
    use std::time::{Duration, Instant};

    let tb = Testbed::start(TestbedConfig::new(default_version().unwrap(), 5)).await.unwrap();
    let client = tb.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::default();
    tb.create_namespace("life").await.unwrap();
    let kc = tb.kubeconfig();

    // Workloads first, while every node is Ready, each pinned where the scenario needs it.
    let pinned = |name: &str, replicas: i32, hosts: &[&str]| {
        let mut d = deployment("life", name, replicas);
        d["spec"]["template"]["spec"]["affinity"] = json!({
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": hosts}]}]}},
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": name}}, "topologyKey": "kubernetes.io/hostname"}]},
        });
        d
    };
    // pdb-all-in-batch: "pair" has both pods on worker-004 and worker-005, under a budget of one.
    apply::<Deployment>(&client, pinned("pair", 2, &["worker-004", "worker-005"])).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb("life", "pair", "pair", Budget::MaxUnavailable(1)))
        .await
        .unwrap();
    // local-data: "db" claims a local PersistentVolume, "files" an NFS one (no finding).
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "life");
    for (pv, claim, source) in [
        ("local-disk", "data", json!({"local": {"path": "/mnt/disks/1"}})),
        ("nfs-share", "shared", json!({"nfs": {"server": "10.9.0.9", "path": "/exports/shared"}})),
    ] {
        let mut spec = json!({
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": "life", "name": claim},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["worker-004"]}]}]}},
        });
        spec.as_object_mut().unwrap().extend(source.as_object().unwrap().clone());
        let pv_obj = serde_json::from_value(json!({"metadata": {"name": pv}, "spec": spec})).unwrap();
        pvs.create(&PostParams::default(), &pv_obj).await.unwrap();
        let claim_obj = serde_json::from_value(json!({
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap();
        claims.create(&PostParams::default(), &claim_obj).await.unwrap();
    }
    for (name, claim) in [("db", "data"), ("files", "shared")] {
        let mut d = deployment("life", name, 2);
        // Bound by name: the testbed runs no volume binder, so the scheduler would wait.
        d["spec"]["template"]["spec"]["nodeName"] = json!("worker-004");
        d["spec"]["template"]["spec"]["volumes"] =
            json!([{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]);
        apply::<Deployment>(&client, d).await.unwrap();
    }
    for app in ["pair", "db", "files"] {
        wait_pods_ready(&client, "life", &format!("app={app}"), 2, Duration::from_secs(60)).await.unwrap();
    }

    // at-target: worker-003 already runs the target's kubelet.
    let target = refit_testbed::default_version().unwrap();
    let target = refit_core::Version::new(target.major, target.minor + 1, 1);
    tb.set_node_version("worker-003", &target, &target).await.unwrap();
    // node-unreachable: worker-001's kubelet stops; the node lifecycle controller notices
    // after its grace period (60 s on the testbed).
    tb.stop_kubelet("worker-001").await.unwrap();
    let started = Instant::now();
    loop {
        let n = nodes.get("worker-001").await.unwrap();
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        if taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "worker-001 never became unreachable");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // node-not-ready: worker-002's kubelet reports NotReady (out of kwok's hands, so nothing
    // writes Ready back; the report is a heartbeat, so the node stays reachable for a minute).
    tb.stop_kubelet("worker-002").await.unwrap();
    nodes
        .patch_status(
            "worker-002",
            &pp,
            &Patch::Strategic(&json!({"status": {"conditions": [{
                "type": "Ready", "status": "False", "reason": "KubeletNotReady",
                "message": "container runtime network not ready",
                "lastHeartbeatTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }]}})),
        )
        .await
        .unwrap();
    let to = target.to_string();

    let (code, p, stderr) = plan(&kc, &["--to", &to, "--max-unavailable", "1"]);
    assert_eq!(code, 1, "{stderr}");
    let find = |p: &Value, check: &str| {
        checks(p).into_iter().filter(|(c, _)| c == check).map(|(_, s)| s).collect::<Vec<_>>()
    };
    assert_eq!(find(&p, "node-unreachable"), ["node/worker-001"], "{:?}", checks(&p));
    assert_eq!(find(&p, "node-not-ready"), ["node/worker-002"], "{:?}", checks(&p));
    assert_eq!(find(&p, "at-target"), ["node/worker-003"]);
    let excluded: Vec<&str> =
        p["excluded"].as_array().unwrap().iter().map(|e| e[0].as_str().unwrap()).collect();
    assert_eq!(excluded, ["worker-003"], "the node at the target is left out");
    assert!(find(&p, "pdb-all-in-batch").is_empty(), "one worker per batch: the pair is spread");
    let local = find(&p, "local-data");
    assert!(!local.is_empty() && local.iter().all(|s| s.starts_with("pod/life/db-")), "{local:?}");
    assert!(find(&p, "worker-count").is_empty(), "five workers");

    // The batch decides: with every worker in one batch, the pair leaves one at a time.
    let (_, all, _) = plan(&kc, &["--to", &to, "--max-unavailable", "100%"]);
    assert_eq!(find(&all, "pdb-all-in-batch"), ["pdb/life/pair"], "{:?}", checks(&all));
    // --force includes the node at the target and reports no at-target finding.
    let (_, forced, _) = plan(&kc, &["--to", &to, "--force"]);
    assert!(find(&forced, "at-target").is_empty() && forced["excluded"].as_array().unwrap().is_empty());

    // --partial-ok leaves the two broken workers out; the rest is planned.
    let (code, partial, stderr) = plan(
        &kc,
        &[
            "--to",
            &to,
            "--partial-ok",
            "--delete-emptydir-data",
            "--accept",
            "etcd-members",
            "--accept",
            "control-plane-count",
        ],
    );
    assert_eq!(code, 0, "{stderr} {partial:#}");
    let left_out: BTreeSet<&str> =
        partial["excluded"].as_array().unwrap().iter().map(|e| e[0].as_str().unwrap()).collect();
    assert!(left_out.contains("worker-001") && left_out.contains("worker-002"), "{left_out:?}");

    // The kubelet comes back: both readiness findings are gone.
    tb.start_kubelet("worker-002").await.unwrap();
    let (_, back, _) = plan(&kc, &["--to", &to]);
    assert!(find(&back, "node-not-ready").is_empty(), "{:?}", checks(&back));

    // worker-count: one worker left.
    for w in ["worker-002", "worker-003", "worker-004", "worker-005"] {
        tb.remove_worker(w).await.unwrap();
    }
    let (_, lonely, _) = plan(&kc, &["--to", &to]);
    assert_eq!(find(&lonely, "worker-count"), ["node/worker-001"], "{:?}", checks(&lonely));
}

// `--max-unavailable auto` in `refit plan`: six workers in three zones (the testbed labels
// them round-robin), real PDBs whose status the real disruption controller publishes, pods the
// real scheduler placed.

/// `replicas` pods of `name`, at most one per worker (required anti-affinity on the hostname).
fn spread(namespace: &str, name: &str, replicas: i32) -> Value {
    let mut d = deployment(namespace, name, replicas);
    d["spec"]["template"]["spec"]["affinity"] = serde_json::json!({
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": name}}, "topologyKey": "kubernetes.io/hostname"}]},
    });
    d
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn auto_picks_one_zone_within_the_budgets_and_names_the_budget_that_holds_it() {
    let tb = Testbed::start(TestbedConfig::new(default_version().unwrap(), 6)).await.unwrap();
    let client = tb.client().await.unwrap();
    let kc = tb.kubeconfig();
    tb.create_namespace("shop").await.unwrap();

    // Bad input first: nothing about the cluster is read or changed.
    let (code, _, stderr) =
        plan(&kc, &["--to", "1.37", "--max-unavailable", "2", "--max-unavailable-cap", "3"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-unavailable-cap applies only to --max-unavailable auto"), "{stderr}");
    let (code, _, stderr) =
        plan(&kc, &["--to", "1.37", "--max-unavailable", "auto", "--max-unavailable-cap", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-unavailable-cap '0'"), "{stderr}");
    let (code, _, stderr) = plan(&kc, &["--to", "1.37", "--max-unavailable", "some"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("or auto"), "{stderr}");

    // "web": one pod on each worker, a budget allowing one disruption.
    apply::<Deployment>(&client, spread("shop", "web", 6)).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb("shop", "web", "web", Budget::MaxUnavailable(1)))
        .await
        .unwrap();
    wait_pods_ready(&client, "shop", "app=web", 6, std::time::Duration::from_secs(90)).await.unwrap();
    // The disruption controller publishes the budget's status shortly after the pods: poll
    // until the plan shows what `ready` waits for.
    let until = |ready: fn(&Value) -> bool| {
        let kc = kc.clone();
        async move {
            let mut last = (0, Value::Null, String::new());
            for _ in 0..60 {
                last =
                    plan(&kc, &["--to", "1.37", "--max-unavailable", "auto", "--max-unavailable-cap", "4"]);
                if ready(&last.1["auto"]["first"]) {
                    return last.1;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            panic!("the plan never showed the budget's status: {} {} {}", last.0, last.1["auto"], last.2);
        }
    };
    let p = until(|f| f["next"] == "batch" && f["limit"]["limit"] == "held").await;
    let first = &p["auto"]["first"];
    assert_eq!(str_list(&first["nodes"]).len(), 1, "one disruption allowed: one node: {first}");
    assert_eq!(first["limit"]["hold"], "budget", "{first}");
    assert_eq!(first["limit"]["pdb"], "shop/web", "{first}");
    assert_eq!(first["limit"]["allowed"], 1, "{first}");
    assert_eq!(p["auto"]["settings"]["across_zones"], false);

    // Now a budget that allows nothing over the same pods: no batch can start, and the
    // answer names it.
    apply::<PodDisruptionBudget>(&client, pdb("shop", "web", "web", Budget::MinAvailable(6))).await.unwrap();
    let p = until(|f| f["next"] == "wait").await;
    let first = &p["auto"]["first"];
    assert_eq!(first["hold"], "budget", "{first}");
    assert_eq!(first["pdb"], "shop/web", "{first}");
    assert_eq!(first["allowed"], 0, "{first}");
    let out = Command::cargo_bin("refit")
        .unwrap()
        .args(["plan", "--to", "1.37", "--max-unavailable", "auto", "--kubeconfig"])
        .arg(&kc)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the budget blocks the plan too (pdb-never-allows): {stdout}");
    assert!(
        stdout.contains(
            "no worker batch can start now: the disruption budget shop/web allows no disruption now"
        ),
        "{stdout}"
    );

    // The window: one stacked etcd + control-plane node (300 s estimated) and six workers one
    // at a time (120 s each) do not fit in seven minutes; they fit in a day.
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(420)).to_string();
    let (_, p, stderr) = plan(&kc, &["--to", "1.37", "--not-after", &soon]);
    let w = &p["eta"]["window"];
    assert_eq!(w["fits"], false, "{stderr} {}", p["eta"]);
    assert_eq!(w["nodes"], 7, "{w}");
    assert_eq!(w["finished"], 1, "the control plane only: {w}");
    assert_eq!(w["started"], 2, "{w}");
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)).to_string();
    let (_, p, _) = plan(&kc, &["--to", "1.37", "--not-after", &later]);
    assert_eq!(p["eta"]["window"]["fits"], true, "{}", p["eta"]);
    let out = Command::cargo_bin("refit")
        .unwrap()
        .args(["plan", "--to", "1.37", "--not-after", &soon, "--kubeconfig"])
        .arg(&kc)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "WARNING: the run is not expected to end before --not-after: about 1 of 7 nodes finish"
        ),
        "{stdout}"
    );
    let (code, _, stderr) = plan(&kc, &["--to", "1.37", "--not-after", "tonight"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--not-after 'tonight'"), "{stderr}");
}
