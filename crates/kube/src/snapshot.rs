//! Reads a [`refit_core::snapshot::Snapshot`]: everything preflight and the planner decide on.
//!
//! Built for large clusters (1,000 nodes, 30,000 pods): every list is paginated (pages of
//! [`PAGE_SIZE`], following `continue` tokens, which keeps each response small enough for the
//! read timeout and gives one consistent resourceVersion per resource), the independent lists
//! run concurrently, and each page is converted to plain data and dropped before the next one
//! is fetched, so the full k8s-openapi objects never sit in memory together.
//!
//! Nothing read from the cluster is trusted to be present: a missing field becomes the
//! default an apiserver would have applied (replicas 1, phase Pending...), never a panic.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, PersistentVolume, Pod, ResourceRequirements,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Api, ListParams};
use refit_core::pdb::{PdbInfo, Requirement, Selector};
use refit_core::quantity;
use refit_core::snapshot::{
    NodeInfo, Owner, Phase, PodInfo, PvInfo, Resources, Scheduling, Snapshot, Taint, Toleration, Volume,
    WorkloadInfo,
};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::connect::Connection;

/// Objects per list request: large enough that 30,000 pods take 60 round trips, small enough
/// that one page is a few MB and arrives well within the read timeout.
pub const PAGE_SIZE: u32 = 500;

/// The annotation the kubelet puts on the API copy of a static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Reads nodes, pods (with their scheduling constraints), PDBs, workload controllers and
/// PersistentVolumes, concurrently. Results are sorted (by name, or namespace then name) so
/// that output built from them is stable between runs.
pub async fn read_snapshot(conn: &Connection) -> Result<Snapshot, Error> {
    let c = &conn.client;
    let (mut nodes, pods, mut pdbs, deployments, statefulsets, daemonsets, replicasets, jobs, mut pvs) = futures::try_join!(
        list_all(Api::<Node>::all(c.clone()), "nodes", node_info),
        list_all(Api::<Pod>::all(c.clone()), "pods in all namespaces", pod_info),
        list_all(Api::<PodDisruptionBudget>::all(c.clone()), "PodDisruptionBudgets", pdb_info),
        list_all(Api::<Deployment>::all(c.clone()), "deployments", |d: Deployment| {
            let replicas = d.spec.replicas.unwrap_or(1);
            workload("Deployment", d.metadata, replicas)
        }),
        list_all(Api::<StatefulSet>::all(c.clone()), "statefulsets", |s: StatefulSet| {
            let replicas = s.spec.replicas.unwrap_or(1);
            workload("StatefulSet", s.metadata, replicas)
        }),
        list_all(Api::<DaemonSet>::all(c.clone()), "daemonsets", |d: DaemonSet| {
            // A DaemonSet has no replica count: how many nodes it should run on is its size.
            let replicas = d.status.as_ref().map(|s| s.desired_number_scheduled).unwrap_or(0);
            workload("DaemonSet", d.metadata, replicas)
        }),
        list_all(Api::<ReplicaSet>::all(c.clone()), "replicasets", |r: ReplicaSet| {
            let replicas = r.spec.replicas.unwrap_or(1);
            workload("ReplicaSet", r.metadata, replicas)
        }),
        list_all(Api::<Job>::all(c.clone()), "jobs", |j: Job| {
            let replicas = j.spec.as_ref().and_then(|s| s.parallelism).unwrap_or(1);
            workload("Job", j.metadata, replicas)
        }),
        list_all(Api::<PersistentVolume>::all(c.clone()), "persistentvolumes", pv_info),
    )?;

    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut scheduling = BTreeMap::new();
    let mut pod_infos = Vec::with_capacity(pods.len());
    for (pod, sched) in pods {
        scheduling.insert(pod.uid.clone(), sched);
        pod_infos.push(pod);
    }
    pod_infos.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pdbs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut workloads: Vec<WorkloadInfo> =
        [deployments, statefulsets, daemonsets, replicasets, jobs].into_iter().flatten().collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    pvs.sort_by(|a, b| a.name.cmp(&b.name));

    Ok(Snapshot { nodes, pods: pod_infos, scheduling, pdbs, workloads, pvs })
}

/// Lists every object of `api` page by page, converting each page before fetching the next.
async fn list_all<K, T>(api: Api<K>, what: &str, convert: impl FnMut(K) -> T) -> Result<Vec<T>, Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    list_paged(&api, ListParams::default(), what, convert).await.map(|(items, _)| items)
}

/// [`list_all`] with the caller's selectors, also returning the list's resourceVersion (every
/// page of a paginated list is served at the first page's), from which a watch can start
/// without missing a change.
pub(crate) async fn list_paged<K, T>(
    api: &Api<K>,
    params: ListParams,
    what: &str,
    mut convert: impl FnMut(K) -> T,
) -> Result<(Vec<T>, String), Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE_SIZE);
    let mut page_no = 0usize;
    loop {
        let page = api.list(&params).await.map_err(|e| Error::Api {
            context: if page_no == 0 {
                format!("listing {what}")
            } else {
                // A 410 here means the continue token expired (the list took longer than the
                // apiserver keeps its resourceVersion): a retry of the whole read fixes it.
                format!("listing {what} (page {} of {PAGE_SIZE})", page_no + 1)
            },
            source: Box::new(e),
        })?;
        let next = page.metadata.continue_.filter(|t| !t.is_empty());
        let version = page.metadata.resource_version.unwrap_or_default();
        out.extend(page.items.into_iter().map(&mut convert));
        match next {
            Some(token) => {
                params = params.continue_token(&token);
                page_no += 1;
            }
            None => return Ok((out, version)),
        }
    }
}

fn node_info(n: Node) -> NodeInfo {
    let spec = n.spec.unwrap_or_default();
    let status = n.status.unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let pressure = conditions
        .iter()
        .filter(|c| c.type_ != "Ready" && c.status == "True")
        .map(|c| c.type_.clone())
        .collect();
    let address =
        status.addresses.unwrap_or_default().into_iter().find(|a| a.type_ == "InternalIP").map(|a| a.address);
    let allocatable = status.allocatable.unwrap_or_default();
    NodeInfo {
        name: n.metadata.name.unwrap_or_default(),
        labels: n.metadata.labels.unwrap_or_default(),
        annotations: n.metadata.annotations.unwrap_or_default(),
        taints: spec
            .taints
            .unwrap_or_default()
            .into_iter()
            .map(|t| Taint { key: t.key, value: t.value.unwrap_or_default(), effect: t.effect })
            .collect(),
        unschedulable: spec.unschedulable.unwrap_or(false),
        ready,
        pressure,
        kubelet: status.node_info.map(|i| i.kubelet_version).unwrap_or_default(),
        address,
        allocatable: Resources {
            cpu_millis: allocatable.get("cpu").map_or(0, |q| cpu(q, "node allocatable")),
            memory_bytes: allocatable.get("memory").map_or(0, |q| count(q, "node allocatable")),
            pods: allocatable.get("pods").map_or(0, |q| count(q, "node allocatable")),
        },
    }
}

/// CPU millicores of a quantity the apiserver already validated; an unparseable one (it
/// cannot happen short of a broken apiserver) counts as zero, with a warning, rather than
/// failing the whole snapshot.
fn cpu(q: &Quantity, what: &str) -> i64 {
    quantity::cpu_millis(&q.0).unwrap_or_else(|e| {
        tracing::warn!("{what}: {e}; counted as 0");
        0
    })
}

/// Bytes (or a plain count, such as pod slots) of a quantity; see [`cpu`] for the fallback.
fn count(q: &Quantity, what: &str) -> i64 {
    quantity::bytes(&q.0).unwrap_or_else(|e| {
        tracing::warn!("{what}: {e}; counted as 0");
        0
    })
}

/// The controller ownerReference (there is at most one), as an [`Owner`].
fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<Owner> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner { kind: r.kind.clone(), name: r.name.clone() })
}

/// A pod as plain data (shared with the drain, which decides with core's rules).
pub(crate) fn pod_info(p: Pod) -> (PodInfo, Scheduling) {
    let meta = p.metadata;
    let spec = p.spec.unwrap_or_default();
    let status = p.status.unwrap_or_default();
    let phase = match status.phase.as_deref() {
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        Some("Unknown") => Phase::Unknown,
        // The apiserver sets Pending on create; a pod without a phase has not started.
        Some("Pending") | None => Phase::Pending,
        Some(_) => Phase::Unknown,
    };
    let ready =
        status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let volumes = spec
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let name = v.name.clone();
            if v.empty_dir.is_some() {
                Volume::EmptyDir { name }
            } else if let Some(h) = &v.host_path {
                Volume::HostPath { name, path: h.path.clone() }
            } else if let Some(c) = &v.persistent_volume_claim {
                Volume::Claim { name, claim: c.claim_name.clone() }
            } else {
                Volume::Other { name }
            }
        })
        .collect();
    let key = format!(
        "pod {}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    let scheduling = Scheduling {
        requests: pod_requests(&spec, &key),
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        tolerations: spec
            .tolerations
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|t| Toleration {
                key: t.key.clone().unwrap_or_default(),
                operator: t.operator.clone().unwrap_or_else(|| "Equal".into()),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone().unwrap_or_default(),
            })
            .collect(),
        required_node_terms: required_node_terms(&spec),
    };
    let info = PodInfo {
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        uid: meta.uid.unwrap_or_default(),
        node: spec.node_name.filter(|n| !n.is_empty()),
        owner: controller(meta.owner_references.as_ref()),
        phase,
        ready,
        mirror: meta.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
        terminating: meta.deletion_timestamp.is_some(),
        labels: meta.labels.unwrap_or_default(),
        volumes,
    };
    (info, scheduling)
}

/// Requests of one container (cpu, memory; pod slots are counted once per pod, not here).
fn container_requests(r: Option<&ResourceRequirements>, key: &str) -> Resources {
    let Some(requests) = r.and_then(|r| r.requests.as_ref()) else {
        return Resources::default();
    };
    Resources {
        cpu_millis: requests.get("cpu").map_or(0, |q| cpu(q, key)),
        memory_bytes: requests.get("memory").map_or(0, |q| count(q, key)),
        pods: 0,
    }
}

fn max(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.max(b.cpu_millis),
        memory_bytes: a.memory_bytes.max(b.memory_bytes),
        pods: a.pods.max(b.pods),
    }
}

/// What the scheduler reserves for a pod, following `resourcehelper.PodRequests`:
/// - regular containers run together, so they add up;
/// - classic init containers run one at a time before them, so only the largest counts, but
///   it also runs next to every sidecar started before it;
/// - sidecars (init containers with `restartPolicy: Always`) keep running, so they add to the
///   regular containers too;
/// - the pod takes the larger of the two phases, per resource, plus `spec.overhead`;
/// - pod-level `spec.resources.requests`, when set, replace the container sum for cpu/memory.
fn pod_requests(spec: &k8s_openapi::api::core::v1::PodSpec, key: &str) -> Resources {
    let sum = |cs: &[Container]| {
        cs.iter().fold(Resources::default(), |acc, c| acc.plus(container_requests(c.resources.as_ref(), key)))
    };
    let mut running = sum(&spec.containers);
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.as_deref().unwrap_or_default() {
        let req = container_requests(c.resources.as_ref(), key);
        let during = if c.restart_policy.as_deref() == Some("Always") {
            running = running.plus(req);
            sidecars = sidecars.plus(req);
            sidecars
        } else {
            req.plus(sidecars)
        };
        init_peak = max(init_peak, during);
    }
    let mut total = max(running, init_peak);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        if let Some(q) = pod_level.get("cpu") {
            total.cpu_millis = cpu(q, key);
        }
        if let Some(q) = pod_level.get("memory") {
            total.memory_bytes = count(q, key);
        }
    }
    if let Some(overhead) = &spec.overhead {
        total.cpu_millis += overhead.get("cpu").map_or(0, |q| cpu(q, key));
        total.memory_bytes += overhead.get("memory").map_or(0, |q| count(q, key));
    }
    total.pods = 1;
    total
}

fn requirement(r: &NodeSelectorRequirement) -> Requirement {
    Requirement {
        key: r.key.clone(),
        operator: r.operator.clone(),
        values: r.values.clone().unwrap_or_default(),
    }
}

/// `requiredDuringSchedulingIgnoredDuringExecution` terms as label requirements.
///
/// `matchFields` are not represented: the only field selectable is `metadata.name`, which the
/// DaemonSet controller uses to pin each of its pods to one node, and drains never move
/// DaemonSet pods. A term made only of `matchFields` therefore comes out empty.
fn required_node_terms(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<Vec<Requirement>> {
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
    else {
        return Vec::new();
    };
    required
        .node_selector_terms
        .iter()
        .map(|t| t.match_expressions.as_deref().unwrap_or_default().iter().map(requirement).collect())
        .collect()
}

/// A policy/v1 selector. A missing selector selects no pods (unlike an empty one, which
/// selects all): it becomes a requirement nothing satisfies (`In` an empty set).
fn selector(s: Option<LabelSelector>) -> Selector {
    let Some(s) = s else {
        return Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: String::new(),
                operator: "In".into(),
                values: Vec::new(),
            }],
        };
    };
    Selector {
        match_labels: s.match_labels.unwrap_or_default(),
        match_expressions: s
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .map(|r| Requirement { key: r.key, operator: r.operator, values: r.values.unwrap_or_default() })
            .collect(),
    }
}

/// A budget as plain data (shared with the drain, which names the budget blocking a pod).
pub(crate) fn pdb_info(p: PodDisruptionBudget) -> PdbInfo {
    let spec = p.spec.unwrap_or_default();
    // Before the disruption controller has looked at a budget there is no status: zeros, which
    // the checks read as "allows nothing yet" (what the eviction API would answer too).
    let status = p.status.unwrap_or_default();
    PdbInfo {
        namespace: p.metadata.namespace.unwrap_or_default(),
        name: p.metadata.name.unwrap_or_default(),
        always_allow_unhealthy: spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow"),
        selector: selector(spec.selector),
        disruptions_allowed: status.disruptions_allowed.unwrap_or(0),
        current_healthy: status.current_healthy.unwrap_or(0),
        desired_healthy: status.desired_healthy.unwrap_or(0),
        expected_pods: status.expected_pods.unwrap_or(0),
    }
}

/// A workload with its controller owner (a ReplicaSet's Deployment, a Job's CronJob), so that
/// pods can be reported under the name people deployed.
fn workload(kind: &str, meta: ObjectMeta, replicas: i32) -> WorkloadInfo {
    WorkloadInfo {
        kind: kind.to_string(),
        owner: controller(meta.owner_references.as_ref()),
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        replicas,
    }
}

fn pv_info(pv: PersistentVolume) -> PvInfo {
    let spec = pv.spec.unwrap_or_default();
    PvInfo {
        name: pv.metadata.name.unwrap_or_default(),
        claim: spec.claim_ref.as_ref().and_then(|c| {
            Some(format!("{}/{}", c.namespace.as_deref().unwrap_or_default(), c.name.as_deref()?))
        }),
        node_local: spec.local.is_some() || spec.host_path.is_some(),
    }
}
