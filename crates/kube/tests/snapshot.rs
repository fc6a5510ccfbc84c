//! Reading a snapshot from the real testbed: each kind of object is created in a namespace of
//! this test and read back through `read_snapshot`, field by field. Other tests share the
//! cluster, so only our own objects (and the testbed's fixed nodes) are asserted exactly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use refit_core::pdb::Requirement;
use refit_core::snapshot::{Owner, Phase, Resources, Taint, Toleration, Volume};
use refit_kube::snapshot::{Encoding, LargeLists, decode_pod_page, protobuf, read_snapshot};
use refit_kube::{ClusterTarget, Connection, connect};
use refit_testbed::workloads::{Budget, apply, deployment, pdb, wait_pods_ready};
use refit_testbed::{shared, unique_namespace};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const MI: i64 = 1 << 20;

fn req(key: &str, operator: &str, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator: operator.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn tol(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
    Toleration { key: key.into(), operator: operator.into(), value: value.into(), effect: effect.into() }
}

/// Waits until the disruption controller has computed the budget's status for its current
/// spec and sees `healthy` pods.
async fn wait_pdb(client: &Client, ns: &str, name: &str, healthy: i32) {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let p = api.get(name).await.unwrap();
        let status = p.status.unwrap_or_default();
        if status.observed_generation.is_some()
            && status.observed_generation == p.metadata.generation
            && status.current_healthy == Some(healthy)
        {
            return;
        }
        assert!(start.elapsed() < TIMEOUT, "PDB {ns}/{name} status not computed: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A connection to the shared testbed and a fresh namespace of this test.
async fn setup(prefix: &str) -> (Connection, String) {
    let tb = shared().unwrap();
    let conn = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.unwrap();
    let ns = unique_namespace(prefix);
    tb.create_namespace(&ns).await.unwrap();
    (conn, ns)
}

/// Creates a pod from its metadata and spec (in `ns`).
async fn create_pod(client: &Client, ns: &str, mut metadata: Value, spec: Value) {
    metadata["namespace"] = json!(ns);
    apply::<Pod>(client, json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}))
        .await
        .unwrap();
}

/// The pods both reading tests need besides their own: `claimer` (Pending for ever: it claims
/// a volume nothing provides), `doomed` (held by a finalizer: terminating once deleted, until
/// [`release`]) and the Job `batch` (parallelism 2, 4 completions; kwok completes its pods
/// at once).
async fn create_common_pods(client: &Client, ns: &str) {
    create_pod(
        client,
        ns,
        json!({"name": "claimer"}),
        json!({
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        }),
    )
    .await;
    create_pod(
        client,
        ns,
        json!({"name": "doomed", "labels": {"app": "doomed"}, "finalizers": ["refit.dev/test-hold"]}),
        json!({"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1"}]}),
    )
    .await;
    apply::<Job>(
        client,
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "batch", "namespace": ns},
            "spec": {"parallelism": 2, "completions": 4, "template": {"metadata": {"labels": {"app": "batch"}}, "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1"}],
            }}},
        }),
    )
    .await
    .unwrap();
}

/// Waits until the Job's pods number at least `count`, counting only those in `phase` if given.
async fn wait_job_pods(pods: &Api<Pod>, count: usize, phase: Option<&str>) {
    let start = Instant::now();
    loop {
        let list = pods.list(&ListParams::default().labels("app=batch")).await.unwrap();
        let n = list
            .items
            .iter()
            .filter(|p| phase.is_none() || p.status.as_ref().and_then(|s| s.phase.as_deref()) == phase)
            .count();
        if n >= count {
            return;
        }
        assert!(start.elapsed() < TIMEOUT, "the Job has {n} pods (phase {phase:?}), not {count}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lets `doomed` go (a finalizer outlives its namespace).
async fn release(pods: &Api<Pod>) {
    pods.patch("doomed", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
}

#[tokio::test]
async fn reads_nodes_pods_budgets_workloads_and_volumes() {
    let (conn, ns) = setup("snap").await;
    let client = conn.client.clone();

    // Two Deployments with a budget each: minAvailable by labels, and maxUnavailable by an
    // expression that lets unhealthy pods go. (Budgets must not overlap: the disruption
    // controller then tracks only one of them per pod, and eviction refuses such pods.)
    apply::<Deployment>(&client, deployment(&ns, "web", 3)).await.unwrap();
    apply::<Deployment>(&client, deployment(&ns, "api", 2)).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb(&ns, "web", "web", Budget::MinAvailable(2))).await.unwrap();
    apply::<PodDisruptionBudget>(
        &client,
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "api", "namespace": ns},
            "spec": {
                "maxUnavailable": 1,
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
                "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api", "gateway"]}]},
            },
        }),
    )
    .await
    .unwrap();

    // A pod with node-tied volumes and every kind of scheduling constraint; its init container
    // asks for more CPU than its containers together, its containers for more memory.
    create_pod(
        &client,
        &ns,
        json!({"name": "pinned", "labels": {"app": "pinned"}}),
        json!({
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            ],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a", "zone-b", "zone-c"]},
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
                ]},
                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]},
            ]}}},
            "initContainers": [{
                "name": "init", "image": "registry.k8s.io/pause:3.10.1",
                "resources": {"requests": {"cpu": "0.5", "memory": "32Mi"}},
            }],
            "containers": [
                {"name": "a", "image": "registry.k8s.io/pause:3.10.1",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "logs", "mountPath": "/logs"}]},
                {"name": "b", "image": "registry.k8s.io/pause:3.10.1",
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}},
            ],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "logs", "hostPath": {"path": "/var/log/pinned"}},
                {"name": "cfg", "configMap": {"name": "kube-root-ca.crt"}},
            ],
        }),
    )
    .await;

    // A bare pod, and the common ones (one claims a volume nothing provides).
    create_pod(
        &client,
        &ns,
        json!({"name": "loner", "labels": {"app": "loner"}}),
        json!({"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1"}]}),
    )
    .await;
    create_common_pods(&client, &ns).await;

    // A node-local PersistentVolume pre-bound to the claim above (cluster-scoped: unique name).
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv_name = format!("pv-{ns}");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/data/pv"},
            "claimRef": {"namespace": ns, "name": "data"},
        },
    }))
    .unwrap();
    pvs.create(&PostParams::default(), &pv).await.unwrap();

    wait_pods_ready(&client, &ns, "app=web", 3, TIMEOUT).await.unwrap();
    wait_pods_ready(&client, &ns, "app=api", 2, TIMEOUT).await.unwrap();
    wait_pods_ready(&client, &ns, "app in (pinned,loner,doomed)", 3, TIMEOUT).await.unwrap();
    // kwok completes Job pods at once: wait for them to exist, not to be ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_job_pods(&pods, 2, None).await;
    wait_pdb(&client, &ns, "web", 3).await;
    wait_pdb(&client, &ns, "api", 2).await;
    pods.delete("doomed", &DeleteParams::default()).await.unwrap();

    let snap = read_snapshot(&conn, LargeLists::Streamed).await.unwrap();

    // Nodes: the testbed's realistic allocatable, the control-plane taint, readiness.
    assert!(snap.nodes.iter().filter(|n| n.ready).count() >= 20, "{} ready nodes", snap.nodes.len());
    let worker = snap.nodes.iter().find(|n| n.name == "worker-001").expect("worker-001");
    assert_eq!(worker.allocatable, Resources { cpu_millis: 7800, memory_bytes: 31 * 1024 * MI, pods: 110 });
    assert!(worker.ready && !worker.unschedulable && worker.taints.is_empty(), "{worker:?}");
    assert!(worker.pressure.is_empty(), "{worker:?}");
    assert!(worker.kubelet.starts_with("v1."), "{worker:?}");
    assert!(worker.address.is_some(), "kwok reports an InternalIP: {worker:?}");
    assert_eq!(worker.labels.get("kubernetes.io/hostname").map(String::as_str), Some("worker-001"));
    assert!(worker.annotations.contains_key("kwok.x-k8s.io/node"));
    let cp = snap.nodes.iter().find(|n| n.name == "control-plane-1").expect("control-plane-1");
    assert!(cp.is_control_plane());
    assert!(cp.taints.contains(&Taint {
        key: "node-role.kubernetes.io/control-plane".into(),
        value: String::new(),
        effect: "NoSchedule".into(),
    }));

    // Mirror pods of the kubeadm-style control plane, owned by their Node.
    let apiserver = snap
        .pods
        .iter()
        .find(|p| p.namespace == "kube-system" && p.name == "kube-apiserver-control-plane-1")
        .expect("apiserver mirror pod");
    assert!(apiserver.mirror);
    assert_eq!(apiserver.owner, Some(Owner { kind: "Node".into(), name: "control-plane-1".into() }));
    assert!(!snap.pods.iter().any(|p| p.namespace == ns && p.mirror));

    // Deployment pods belong to a ReplicaSet that belongs to the Deployment.
    let web: Vec<_> = snap
        .pods
        .iter()
        .filter(|p| p.namespace == ns && p.labels.get("app").is_some_and(|a| a == "web"))
        .collect();
    assert_eq!(web.len(), 3);
    for p in &web {
        let owner = p.owner.as_ref().expect("web pods have a controller");
        assert_eq!(owner.kind, "ReplicaSet");
        assert!(p.phase == Phase::Running && p.ready && p.node.is_some() && !p.terminating, "{p:?}");
        let s = &snap.scheduling[&p.uid];
        assert_eq!(s.requests, Resources { cpu_millis: 50, memory_bytes: 64 * MI, pods: 1 });
        let rs = snap
            .workloads
            .iter()
            .find(|w| w.namespace == ns && w.kind == "ReplicaSet" && w.name == owner.name)
            .expect("the pods' ReplicaSet");
        assert_eq!(rs.owner, Some(Owner { kind: "Deployment".into(), name: "web".into() }));
        assert_eq!(rs.replicas, 3);
    }
    let dep = snap
        .workloads
        .iter()
        .find(|w| w.namespace == ns && w.kind == "Deployment" && w.name == "web")
        .expect("deployment");
    assert_eq!((dep.name.as_str(), dep.replicas, &dep.owner), ("web", 3, &None));
    let job = snap.workloads.iter().find(|w| w.namespace == ns && w.kind == "Job").expect("job");
    assert_eq!((job.name.as_str(), job.replicas), ("batch", 2));
    assert!(
        snap.pods
            .iter()
            .filter(
                |p| p.namespace == ns && p.owner == Some(Owner { kind: "Job".into(), name: "batch".into() })
            )
            .count()
            >= 2
    );
    let proxy = snap
        .workloads
        .iter()
        .find(|w| w.namespace == "kube-system" && w.kind == "DaemonSet" && w.name == "kube-proxy")
        .expect("kube-proxy DaemonSet");
    assert!(proxy.replicas >= 20, "desiredNumberScheduled: {proxy:?}");

    // The pinned pod: volumes in order, and its scheduling constraints.
    let pinned = snap.pods.iter().find(|p| p.namespace == ns && p.name == "pinned").expect("pinned pod");
    assert_eq!(pinned.owner, None);
    assert!(pinned.has_empty_dir());
    // The ServiceAccount admission plugin adds a projected token volume to every pod.
    let ours = |p: &refit_core::snapshot::PodInfo| -> Vec<Volume> {
        p.volumes
            .iter()
            .filter(|v| !matches!(v, Volume::Other { name } if name.starts_with("kube-api-access-")))
            .cloned()
            .collect()
    };
    assert_eq!(pinned.volumes.len(), 4, "{pinned:?}");
    assert_eq!(
        ours(pinned),
        vec![
            Volume::EmptyDir { name: "scratch".into() },
            Volume::HostPath { name: "logs".into(), path: "/var/log/pinned".into() },
            Volume::Other { name: "cfg".into() },
        ]
    );
    let s = &snap.scheduling[&pinned.uid];
    // cpu: the init container's 500m beats 100m + 50m; memory: 128Mi + 64Mi beats 32Mi.
    assert_eq!(s.requests, Resources { cpu_millis: 500, memory_bytes: 192 * MI, pods: 1 });
    assert_eq!(s.node_selector, BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]));
    assert_eq!(
        s.tolerations[..2],
        [
            tol("dedicated", "Equal", "db", "NoSchedule"),
            tol("node.kubernetes.io/unreachable", "Exists", "", "NoExecute"),
        ]
    );
    assert_eq!(
        s.required_node_terms,
        vec![
            vec![
                req("topology.kubernetes.io/zone", "In", &["zone-a", "zone-b", "zone-c"]),
                req("node-role.kubernetes.io/control-plane", "DoesNotExist", &[]),
            ],
            vec![req("kubernetes.io/arch", "Exists", &[])],
        ]
    );

    let loner = snap.pods.iter().find(|p| p.namespace == ns && p.name == "loner").expect("loner");
    assert!(loner.owner.is_none() && ours(loner).is_empty() && loner.ready && loner.phase == Phase::Running);
    assert!(snap.scheduling[&loner.uid].required_node_terms.is_empty());
    let claimer = snap.pods.iter().find(|p| p.namespace == ns && p.name == "claimer").expect("claimer");
    assert_eq!(ours(claimer), vec![Volume::Claim { name: "data".into(), claim: "data".into() }]);
    assert!(claimer.phase == Phase::Pending && !claimer.ready && claimer.node.is_none(), "{claimer:?}");
    let doomed = snap.pods.iter().find(|p| p.namespace == ns && p.name == "doomed").expect("doomed");
    assert!(doomed.terminating, "{doomed:?}");

    // Budgets with the disruption controller's numbers.
    let b = snap.pdbs.iter().find(|p| p.namespace == ns && p.name == "web").expect("pdb web");
    assert_eq!(b.selector.match_labels, BTreeMap::from([("app".to_string(), "web".to_string())]));
    assert!(b.selector.match_expressions.is_empty());
    assert_eq!(
        (
            b.expected_pods,
            b.desired_healthy,
            b.current_healthy,
            b.disruptions_allowed,
            b.always_allow_unhealthy
        ),
        (3, 2, 3, 1, false)
    );
    assert!(web.iter().all(|p| b.covers(p)) && !b.covers(pinned));
    let e = snap.pdbs.iter().find(|p| p.namespace == ns && p.name == "api").expect("pdb api");
    assert!(e.selector.match_labels.is_empty());
    assert_eq!(e.selector.match_expressions, vec![req("app", "In", &["api", "gateway"])]);
    assert_eq!(
        (
            e.expected_pods,
            e.desired_healthy,
            e.current_healthy,
            e.disruptions_allowed,
            e.always_allow_unhealthy
        ),
        (2, 1, 2, 1, true)
    );

    // The node-local PersistentVolume and its claim.
    let pv = snap.pvs.iter().find(|p| p.name == pv_name).expect("our PV");
    assert_eq!(pv.claim.as_deref(), Some(format!("{ns}/data").as_str()));
    assert!(pv.node_local);

    // Every pod has its scheduling entry; UIDs are unique.
    assert!(snap.pods.iter().all(|p| snap.scheduling.contains_key(&p.uid)));
    assert_eq!(snap.scheduling.len(), snap.pods.len());

    // Release what outlives the namespace: the finalizer and the cluster-scoped PV.
    release(&pods).await;
    pvs.delete(&pv_name, &DeleteParams::default()).await.unwrap();
}

/// More pods than one page holds: pagination must return each exactly once.
#[tokio::test]
async fn follows_continue_tokens_across_pages() {
    let (conn, ns) = setup("snap-pages").await;
    let n = refit_kube::snapshot::PAGE_SIZE as usize + 20;
    apply::<Deployment>(&conn.client, deployment(&ns, "many", n as i32)).await.unwrap();
    // Created is enough (no need to be ready): the list returns them either way.
    let pods: Api<Pod> = Api::namespaced(conn.client.clone(), &ns);
    let start = Instant::now();
    while pods.list(&Default::default()).await.unwrap().items.len() < n {
        assert!(start.elapsed() < Duration::from_secs(120), "ReplicaSet did not create {n} pods");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for large in
        [LargeLists::Streamed, LargeLists::Paged(Encoding::Protobuf), LargeLists::Paged(Encoding::Json)]
    {
        let snap = read_snapshot(&conn, large).await.unwrap();
        let mine: Vec<_> = snap.pods.iter().filter(|p| p.namespace == ns).collect();
        assert_eq!(mine.len(), n, "{large:?}");
        let mut uids: Vec<_> = mine.iter().map(|p| &p.uid).collect();
        uids.sort();
        uids.dedup();
        assert_eq!(uids.len(), n, "no pod twice ({large:?})");
        assert!(snap.pods.len() > refit_kube::snapshot::PAGE_SIZE as usize);
    }
}

/// One list page fetched as-is: its `Content-Type` and body.
async fn fetch_page(client: &Client, url: &str, accept: &str) -> (Option<String>, Vec<u8>) {
    let request = http::Request::get(url)
        .header(http::header::ACCEPT, accept)
        .body(kube::client::Body::from(Vec::new()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    let content_type =
        response.headers().get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
    (content_type, response.into_body().collect_bytes().await.unwrap().to_vec())
}

/// Pods and nodes read as protobuf project exactly as read as JSON: on the bytes of one page
/// that a real apiserver encoded each way, and through `read_snapshot`'s pipelined lists.
/// The pods cover every field the projection reads, including the ones where protobuf and
/// JSON differ on the wire (an unset operator is `""` in protobuf, absent in JSON).
#[tokio::test]
async fn protobuf_and_json_read_the_same_pods_and_nodes() {
    let (conn, ns) = setup("snap-pb").await;
    let client = conn.client.clone();

    // spec.overhead is set by RuntimeClass admission from the pod's RuntimeClass.
    let runtime_classes: Api<RuntimeClass> = Api::all(client.clone());
    let rc_name = format!("rc-{ns}");
    let rc: RuntimeClass = serde_json::from_value(json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": rc_name},
        "handler": "runc",
        "overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}},
    }))
    .unwrap();
    runtime_classes.create(&PostParams::default(), &rc).await.unwrap();
    // Owners that exist (the garbage collector deletes pods whose owners are gone).
    let mut owner_uids = Vec::new();
    for name in ["owner", "other-owner"] {
        let cm = apply::<ConfigMap>(
            &client,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}}),
        )
        .await
        .unwrap();
        owner_uids.push(cm.metadata.uid.unwrap());
    }

    let image = "registry.k8s.io/pause:3.10.1";
    create_pod(
        &client,
        &ns,
        json!({
            "name": "everything",
            "labels": {"app": "everything", "tier": "db"},
            "annotations": {"note": "not a mirror"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "other-owner", "uid": owner_uids[1]},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uids[0], "controller": true, "blockOwnerDeletion": false},
            ],
            }),
        json!({
            "runtimeClassName": rc_name,
            "nodeSelector": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
                // No operator: Equal by definition.
                {"key": "team", "value": "storage"},
                // No key, Exists: tolerates every taint.
                {"operator": "Exists"},
            ],
            "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a", "zone-b", "zone-c"]},
                        {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
                    ]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["worker-001"]}]},
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                ],
            }},
            "topologySpreadConstraints": [
                {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"tier": "db"}, "matchExpressions": [{"key": "app", "operator": "Exists"}]}},
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": {"tier": "db"}}},
            ],
            "initContainers": [
                {"name": "proxy", "image": image, "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}, "limits": {"cpu": "200m", "memory": "32Mi"}}},
                {"name": "init", "image": image,
                 "resources": {"requests": {"cpu": "0.5", "memory": "32Mi"}}},
            ],
            "containers": [
                {"name": "a", "image": image,
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
                 "volumeMounts": [{"name": "cache", "mountPath": "/cache"}, {"name": "logs", "mountPath": "/logs"}]},
                {"name": "b", "image": image, "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}},
            ],
            "volumes": [
                {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "logs", "hostPath": {"path": "/var/log/everything", "type": "DirectoryOrCreate"}},
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            ],
        }),
    )
    .await;
    // Pod-level requests replace the containers' sum.
    create_pod(
        &client,
        &ns,
        json!({"name": "pod-level", "labels": {"app": "pod-level"}}),
        json!({
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "containers": [{"name": "c", "image": image, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
        }),
    )
    .await;
    // Pending, terminating, Succeeded (owned by the Job); and ReplicaSet pods.
    create_common_pods(&client, &ns).await;
    apply::<Deployment>(&client, deployment(&ns, "web", 2)).await.unwrap();

    wait_pods_ready(&client, &ns, "app in (everything,pod-level,doomed)", 3, TIMEOUT).await.unwrap();
    wait_pods_ready(&client, &ns, "app=web", 2, TIMEOUT).await.unwrap();
    // The Job complete (it no longer changes between the reads compared below).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_job_pods(&pods, 4, Some("Succeeded")).await;
    pods.delete("doomed", &DeleteParams::default()).await.unwrap();

    // One page, as the apiserver encodes it each way, through the same decoding entry point.
    let url = format!("/api/v1/namespaces/{ns}/pods");
    let (pb_type, pb_body) = fetch_page(&client, &url, protobuf::ACCEPT).await;
    assert!(protobuf::is_protobuf(pb_type.as_deref()), "the apiserver answered {pb_type:?}");
    assert!(pb_body.starts_with(b"k8s\0"));
    let (json_type, json_body) = fetch_page(&client, &url, "application/json").await;
    assert!(json_type.as_deref().is_some_and(|t| t.starts_with("application/json")), "{json_type:?}");
    let from_pb = decode_pod_page(pb_type.as_deref(), &pb_body).unwrap();
    let from_json = decode_pod_page(json_type.as_deref(), &json_body).unwrap();
    assert_eq!(from_pb.pods.len(), 10, "{:?}", from_pb.pods.iter().map(|(p, _)| &p.name).collect::<Vec<_>>());
    assert_eq!(from_pb, from_json);

    // What the projection made of them (so that the equality above is not of two empty reads).
    let find = |name: &str| from_pb.pods.iter().find(|(p, _)| p.name == name).expect(name);
    let (everything, s) = find("everything");
    assert_eq!(everything.owner, Some(Owner { kind: "ConfigMap".into(), name: "owner".into() }));
    assert!(
        everything.phase == Phase::Running
            && everything.ready
            && !everything.mirror
            && !everything.terminating
    );
    assert_eq!(everything.labels.get("tier").map(String::as_str), Some("db"));
    assert_eq!(
        everything.volumes[..3],
        [
            Volume::EmptyDir { name: "cache".into() },
            Volume::HostPath { name: "logs".into(), path: "/var/log/everything".into() },
            Volume::Other { name: "token".into() },
        ]
    );
    // Running: a + b + the sidecar = 250m, 208Mi; the init container runs beside the sidecar
    // started before it: 600m, 48Mi. Per resource the larger, plus the overhead 250m, 64Mi.
    assert_eq!(s.requests, Resources { cpu_millis: 850, memory_bytes: 272 * MI, pods: 1 });
    assert_eq!(s.node_selector.len(), 2);
    // The ones where the wire formats differ: no operator (Equal), no key; a term of
    // matchFields only (not represented: empty).
    assert_eq!(s.tolerations[2..4], [tol("team", "Equal", "storage", ""), tol("", "Exists", "", "")]);
    assert_eq!(s.required_node_terms.len(), 2);
    assert_eq!(s.required_node_terms[0].len(), 2);
    assert!(s.required_node_terms[1].is_empty());
    // Only the hard spread constraint, with its selector.
    assert_eq!(s.spread.len(), 1, "{:?}", s.spread);
    assert_eq!((s.spread[0].max_skew, s.spread[0].topology_key.as_str()), (2, "topology.kubernetes.io/zone"));
    assert_eq!(s.spread[0].selector.match_labels.get("tier").map(String::as_str), Some("db"));
    assert_eq!(s.spread[0].selector.match_expressions, [req("app", "Exists", &[])]);
    assert_eq!(
        find("pod-level").1.requests,
        Resources { cpu_millis: 1000, memory_bytes: 1024 * MI, pods: 1 }
    );
    let (claimer, _) = find("claimer");
    assert!(claimer.phase == Phase::Pending && claimer.node.is_none() && !claimer.ready, "{claimer:?}");
    assert!(claimer.volumes.contains(&Volume::Claim { name: "data".into(), claim: "data".into() }));
    assert!(find("doomed").0.terminating);
    let batch = from_pb
        .pods
        .iter()
        .find(|(p, _)| p.labels.get("app").is_some_and(|a| a == "batch"))
        .expect("job pod");
    assert_eq!(batch.0.phase, Phase::Succeeded);
    assert_eq!(batch.0.owner, Some(Owner { kind: "Job".into(), name: "batch".into() }));

    // The whole read, both ways: our pods, the control plane's (mirror pods), every node.
    // Other tests change their own namespaces meanwhile, so only these are compared; a
    // status that moved between the two reads gets another try.
    let ours = |snap: &refit_core::snapshot::Snapshot| {
        let pods: Vec<_> = snap
            .pods
            .iter()
            .filter(|p| p.namespace == ns || p.namespace == "kube-system")
            .map(|p| (p.clone(), snap.scheduling[&p.uid].clone()))
            .collect();
        (pods, snap.nodes.clone())
    };
    let mut attempt = 0;
    let (from_pb, from_json, streamed) = loop {
        let from_pb = ours(&read_snapshot(&conn, LargeLists::Paged(Encoding::Protobuf)).await.unwrap());
        let from_json = ours(&read_snapshot(&conn, LargeLists::Paged(Encoding::Json)).await.unwrap());
        let streamed = ours(&read_snapshot(&conn, LargeLists::Streamed).await.unwrap());
        attempt += 1;
        if (from_pb == from_json && streamed == from_json) || attempt == 3 {
            break (from_pb, from_json, streamed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(from_pb.1, from_json.1, "nodes");
    assert_eq!(from_pb.0, from_json.0, "pods");
    assert_eq!(streamed.1, from_json.1, "nodes, streamed");
    assert_eq!(streamed.0, from_json.0, "pods, streamed");
    assert!(from_pb.0.iter().any(|(p, _)| p.mirror), "kube-system has the control plane's mirror pods");
    assert_eq!(from_pb.0.iter().filter(|(p, _)| p.namespace == ns).count(), 10);
    assert!(from_pb.1.len() >= 20);

    release(&pods).await;
    runtime_classes.delete(&rc_name, &DeleteParams::default()).await.unwrap();
}
