//! Preflight checks: named rules over a [`Snapshot`], each finding naming what it concerns and
//! what to do. Kismatic's online-upgrade model (seed 001): readiness, safety and availability
//! findings block the upgrade unless the operator chooses otherwise.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::drain::{self, DrainOptions};
use crate::remedy::Remedy;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot, Volume, WorkloadInfo};
use crate::version::Version;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Stops the upgrade in online mode.
    Blocker,
    /// Unsafe or unavailable, reported; does not stop the upgrade.
    Warning,
    /// Worth knowing (e.g. a node skipped because it is already at the target).
    Info,
}

/// One finding of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule's stable name (e.g. `unmanaged-pod`).
    pub check: &'static str,
    /// Severity.
    pub severity: Severity,
    /// What it concerns: `node/w-1`, `pod/ns/name`, `deployment/ns/name`, `pdb/ns/name`, `cluster`.
    pub subject: String,
    /// The node it happens on, when there is one (for per-node plans).
    pub node: Option<String>,
    /// What is wrong (never how a front end spells the way out: that is `remedy`).
    pub message: String,
    /// The way out the operator has, when there is one (the CLI renders it as its flag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<Remedy>,
}

/// Settings of the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// The target kubelet version (nodes already there are skipped unless `force`).
    pub target: Option<Version>,
    /// Include nodes already at the target.
    pub force: bool,
    /// Drain allowances (`--delete-emptydir-data`, `--force` for unmanaged pods).
    pub drain: DrainOptions,
    /// Label keys (or `key=value`) marking ingress nodes.
    pub ingress_labels: Vec<String>,
    /// Label keys (or `key=value`) marking storage nodes.
    pub storage_labels: Vec<String>,
}

/// Annotation refit puts on a node it cordoned (value: the run id).
pub const CORDONED_BY: &str = "refit.dev/cordoned-by";

fn has_label(node: &NodeInfo, selectors: &[String]) -> Option<String> {
    selectors
        .iter()
        .find(|s| match s.split_once('=') {
            Some((k, v)) => node.labels.get(k).map(String::as_str) == Some(v),
            None => node.labels.contains_key(s.as_str()),
        })
        .cloned()
}

/// Readiness of each node: Ready, no pressure, reachable, not cordoned by someone else, and
/// whether it is already at the target.
pub fn node_readiness(snapshot: &Snapshot, opts: &CheckOptions) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in &snapshot.nodes {
        let subject = format!("node/{}", n.name);
        let mut push = |check: &'static str, severity, message: String| {
            out.push(Finding {
                check,
                severity,
                subject: subject.clone(),
                node: Some(n.name.clone()),
                message,
                // Only "already at the target" has a way out: include the node anyway.
                remedy: (check == "at-target").then_some(Remedy::Force),
            })
        };
        if n.taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable") {
            push(
                "node-unreachable",
                Severity::Blocker,
                "the node controller marked it unreachable: bring its kubelet back or remove the node".into(),
            );
        } else if !n.ready {
            push(
                "node-not-ready",
                Severity::Blocker,
                "not Ready: fix the node (kubelet, runtime, network) before upgrading".into(),
            );
        }
        for p in &n.pressure {
            push(
                "node-pressure",
                Severity::Blocker,
                format!("{p} is True: free resources on the node before upgrading"),
            );
        }
        // What the node wrote about itself reaches the node action ({address}, {from}): a
        // node that is not what it claims is refused, never handed on.
        if let Some(a) = &n.address
            && let Err(e) = crate::identity::NodeAddress::parse(a)
        {
            push(
                "node-address-invalid",
                Severity::Blocker,
                format!(
                    "its InternalIP {e}: refit will not pass it to the node action; check the node (a compromised kubelet can write this), or give its address in the plan file (nodes: {{{}: {{address: ...}}}})",
                    n.name
                ),
            );
        }
        if n.kubelet.parse::<Version>().is_err() {
            push(
                "node-version-invalid",
                Severity::Blocker,
                format!(
                    "its kubeletVersion '{}' is not a Kubernetes version: refit will not pass it to the node action; check the node",
                    crate::identity::printable(&n.kubelet, false).chars().take(80).collect::<String>()
                ),
            );
        }
        if n.unschedulable && !n.annotations.contains_key(CORDONED_BY) {
            push(
                "cordoned-by-other",
                Severity::Warning,
                "cordoned by someone else: refit upgrades it but leaves it cordoned as found".into(),
            );
        }
        if let Some(target) = &opts.target
            && let Ok(v) = n.kubelet.parse::<Version>()
            && v.release() == target.release()
            && !opts.force
        {
            push("at-target", Severity::Info, format!("already at {target}: skipped"));
        }
    }
    out
}

/// The workload controllers by (kind, namespace, name): every pod looks up its owner, and a
/// scan of all workloads per pod is 30,000 × 600 string comparisons on a large cluster.
struct WorkloadIndex<'a>(BTreeMap<(&'a str, &'a str, &'a str), &'a WorkloadInfo>);

impl<'a> WorkloadIndex<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        WorkloadIndex(
            snapshot
                .workloads
                .iter()
                .map(|w| ((w.kind.as_str(), w.namespace.as_str(), w.name.as_str()), w))
                .collect(),
        )
    }

    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&'a WorkloadInfo> {
        self.0.get(&(kind, namespace, name)).copied()
    }

    /// The owning workload a person knows: a ReplicaSet's Deployment, else the controller
    /// itself (kind, name).
    fn owner_of<'p>(&self, pod: &'p PodInfo) -> Option<(&'p str, &'p str)>
    where
        'a: 'p,
    {
        let owner = pod.owner.as_ref()?;
        if owner.kind == "ReplicaSet"
            && let Some(rs) = self.get("ReplicaSet", &pod.namespace, &owner.name)
            && let Some(dep) = &rs.owner
        {
            return Some((dep.kind.as_str(), dep.name.as_str()));
        }
        Some((owner.kind.as_str(), owner.name.as_str()))
    }
}

/// Safety and availability of the workloads on the nodes being upgraded.
pub fn workload_safety(snapshot: &Snapshot, nodes: &BTreeSet<String>, opts: &CheckOptions) -> Vec<Finding> {
    let mut out = Vec::new();
    let local_pvs: BTreeSet<&str> =
        snapshot.pvs.iter().filter(|pv| pv.node_local).filter_map(|pv| pv.claim.as_deref()).collect();
    let index = WorkloadIndex::new(snapshot);
    let mut single_seen = BTreeSet::new();
    for pod in snapshot.pods.iter().filter(|p| p.node.as_ref().is_some_and(|n| nodes.contains(n))) {
        let node = pod.node.clone();
        let subject = format!("pod/{}", pod.key());
        if pod.mirror || pod.terminating || pod.phase.is_terminal() {
            continue;
        }
        if pod.owner.is_none() {
            out.push(Finding {
                check: "unmanaged-pod",
                severity: if opts.drain.force { Severity::Warning } else { Severity::Blocker },
                subject: subject.clone(),
                node: node.clone(),
                message: "not managed by a ReplicaSet, ReplicationController, Job, DaemonSet or StatefulSet: deleted by the drain, it will not come back; run it under a controller".into(),
                remedy: Some(Remedy::DeleteUnmanagedPods),
            });
        }
        // A DaemonSet's pod never moves (the drain leaves it on its node, kubectl's
        // --ignore-daemonsets): its volumes' data stays where the pod stays.
        let moves = pod.owner.as_ref().is_none_or(|o| o.kind != "DaemonSet");
        for v in pod.volumes.iter().filter(|_| moves) {
            let (what, path) = match v {
                Volume::EmptyDir { name } => ("an emptyDir", name.clone()),
                Volume::HostPath { path, .. } => ("a hostPath", path.clone()),
                Volume::Claim { claim, .. }
                    if local_pvs.contains(format!("{}/{claim}", pod.namespace).as_str()) =>
                {
                    ("a local PersistentVolume", claim.clone())
                }
                _ => continue,
            };
            // Kismatic blocks on every local volume; `--delete-emptydir-data` is the operator's
            // word that emptyDir data may go (kubectl's own allowance), hostPath and local PVs
            // are accepted one by one (`--accept local-data=pod/NS/NAME`).
            let allowed = what == "an emptyDir" && opts.drain.delete_emptydir_data;
            let blocker = !allowed;
            out.push(Finding {
                check: "local-data",
                severity: if blocker { Severity::Blocker } else { Severity::Warning },
                subject: subject.clone(),
                node: node.clone(),
                message: format!(
                    "uses {what} volume ({path}): its data stays on the node and is lost or unavailable when the pod moves{}",
                    if blocker && what != "an emptyDir" { "; accept it once it holds nothing to keep" } else { "" }
                ),
                remedy: match (blocker, what) {
                    (true, "an emptyDir") => Some(Remedy::DeleteEmptyDirData),
                    (true, _) => Some(Remedy::Accept { check: "local-data".into(), subject: subject.clone() }),
                    (false, _) => None,
                },
            });
        }
        if let Some((kind, name)) = index.owner_of(pod)
            && kind != "DaemonSet"
            && kind != "Job"
            && let Some(w) = index.get(kind, &pod.namespace, name)
            && w.replicas <= 1
            && single_seen.insert((kind, pod.namespace.as_str(), name))
        {
            out.push(Finding {
                check: "single-replica",
                severity: Severity::Blocker,
                subject: format!("{}/{}/{}", kind.to_lowercase(), pod.namespace, name),
                node: node.clone(),
                message: "runs a single replica: unavailable while its node drains (scale to 2+ with a PDB)"
                    .into(),
                remedy: None,
            });
        }
    }
    // DaemonSets scheduled on a single node. The DaemonSet controller's own count of the nodes
    // it wants (`desiredNumberScheduled`) decides when it is known: right after a DaemonSet or
    // a node appears, its pods are created on every node but bound one by one by the
    // scheduler, and counting bound pods alone would call a DaemonSet of every node
    // single-node (seen in CI: kube-proxy on a fresh 9-node cluster). A count of 0 is a status
    // the controller has not written yet, so the pods decide.
    let mut ds_nodes: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for p in &snapshot.pods {
        if let (Some(o), Some(n)) = (&p.owner, &p.node)
            && o.kind == "DaemonSet"
        {
            ds_nodes.entry((p.namespace.clone(), o.name.clone())).or_default().insert(n.clone());
        }
    }
    for ((ns, name), on) in ds_nodes {
        let wanted = index.get("DaemonSet", &ns, &name).map(|w| w.replicas).filter(|d| *d > 0);
        if on.len() == 1 && wanted.is_none_or(|d| d == 1) && on.iter().all(|n| nodes.contains(n)) {
            out.push(Finding {
                check: "daemonset-single-node",
                severity: Severity::Blocker,
                subject: format!("daemonset/{ns}/{name}"),
                node: on.iter().next().cloned(),
                message:
                    "scheduled on one node only: what it serves is unavailable while that node is upgraded"
                        .into(),
                remedy: None,
            });
        }
    }
    out
}

/// Cluster-level availability, as Kismatic's table puts it: per node, an etcd member of a
/// cluster with fewer than 3, a control-plane node of a cluster with fewer than 2, a worker of
/// a cluster with fewer than 2, and every ingress or storage node. Each is a blocker on that
/// node (so `--partial-ok` leaves out exactly such workers and refuses for etcd and
/// control-plane members). `roles` are every unit's roles ([`crate::plan::cluster_roles`]:
/// the plan file's external etcd hosts count as etcd members).
pub fn availability(
    snapshot: &Snapshot,
    roles: &BTreeMap<String, BTreeSet<crate::plan::Role>>,
    opts: &CheckOptions,
) -> Vec<Finding> {
    use crate::plan::Role;
    let mut out = Vec::new();
    let on = |check, name: &str, message: String| Finding {
        check,
        severity: Severity::Blocker,
        subject: format!("node/{name}"),
        node: Some(name.to_string()),
        message,
        remedy: None,
    };
    let with = |role: Role| roles.iter().filter(move |(_, r)| r.contains(&role)).map(|(n, _)| n.as_str());
    let etcd = with(Role::Etcd).count();
    if etcd < 3 {
        for n in with(Role::Etcd) {
            out.push(on("etcd-members", n, format!("etcd member of a cluster with {etcd}: the cluster's datastore is unavailable while it restarts (3 or more keep quorum)")));
        }
    }
    let cps = with(Role::ControlPlane).count();
    if cps < 2 {
        for n in with(Role::ControlPlane) {
            out.push(on(
                "control-plane-count",
                n,
                format!(
                    "control-plane node of a cluster with {cps}: the API is unavailable while it is upgraded"
                ),
            ));
        }
    }
    let workers = with(Role::Worker).count();
    if workers < 2 {
        for n in with(Role::Worker) {
            out.push(on(
                "worker-count",
                n,
                format!("worker of a cluster with {workers}: workloads have nowhere to go while it drains"),
            ));
        }
    }
    for n in &snapshot.nodes {
        for (check, labels, what) in [
            ("ingress-node", &opts.ingress_labels, "ingress"),
            ("storage-node", &opts.storage_labels, "storage"),
        ] {
            if let Some(label) = has_label(n, labels) {
                out.push(on(
                    check,
                    &n.name,
                    format!("{what} node (label {label}): traffic or volumes it serves are interrupted while it is upgraded"),
                ));
            }
        }
    }
    out
}

/// Which pods the drain of `nodes` would evict (kubectl semantics) and which it cannot.
pub fn drain_blockers(snapshot: &Snapshot, node: &str, opts: &CheckOptions) -> Vec<Finding> {
    let plan = drain::plan_node(node, &snapshot.pods, opts.drain);
    plan.refuse
        .iter()
        .map(|(pod, why)| Finding {
            check: "drain-refused",
            severity: Severity::Blocker,
            subject: format!("pod/{pod}"),
            node: Some(node.to_string()),
            message: format!("the drain of {node} cannot start: {pod} {}", why.advice()),
            remedy: Some(why.remedy()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::build::{node, pod};
    use crate::snapshot::{Owner, PvInfo, Taint, WorkloadInfo};

    fn workload(kind: &str, name: &str, replicas: i32) -> WorkloadInfo {
        WorkloadInfo {
            kind: kind.into(),
            namespace: "default".into(),
            name: name.into(),
            replicas,
            owner: None,
        }
    }

    fn checks(f: &[Finding]) -> Vec<(&'static str, String)> {
        f.iter().map(|f| (f.check, f.subject.clone())).collect()
    }

    #[test]
    fn readiness_rules_each_fire_on_their_node_only() {
        let mut s = Snapshot::default();
        let mut down = node("down");
        down.ready = false;
        let mut gone = node("gone");
        gone.ready = false;
        gone.taints.push(Taint {
            key: "node.kubernetes.io/unreachable".into(),
            value: String::new(),
            effect: "NoExecute".into(),
        });
        let mut full = node("full");
        full.pressure = vec!["DiskPressure".into()];
        let mut theirs = node("theirs");
        theirs.unschedulable = true;
        let mut ours = node("ours");
        ours.unschedulable = true;
        ours.annotations.insert(CORDONED_BY.into(), "run-1".into());
        let done = node("done").kubelet("v1.37.1");
        s.nodes = vec![node("fine"), down, gone, full, theirs, ours, done];
        let opts = CheckOptions { target: Some(Version::new(1, 37, 1)), ..Default::default() };
        let f = node_readiness(&s, &opts);
        assert_eq!(
            checks(&f),
            vec![
                ("node-not-ready", "node/down".to_string()),
                ("node-unreachable", "node/gone".to_string()),
                ("node-pressure", "node/full".to_string()),
                ("cordoned-by-other", "node/theirs".to_string()),
                ("at-target", "node/done".to_string()),
            ]
        );
        let forced = CheckOptions { force: true, ..opts };
        assert!(!node_readiness(&s, &forced).iter().any(|f| f.check == "at-target"));
    }

    #[test]
    fn workload_rules_name_the_pod_or_workload() {
        let mut s = Snapshot { nodes: vec![node("w-1"), node("w-2")], ..Default::default() };
        let mut rs = workload("ReplicaSet", "solo-abc", 1);
        rs.owner = Some(Owner { kind: "Deployment".into(), name: "solo".into() });
        s.workloads = vec![
            workload("Deployment", "solo", 1),
            rs,
            workload("Deployment", "web", 3),
            workload("ReplicaSet", "web-x", 3),
        ];
        s.pvs =
            vec![PvInfo { name: "pv-1".into(), claim: Some("default/data-db-0".into()), node_local: true }];
        let mut db = pod("db-0").owned_by("StatefulSet", "db");
        db.volumes.push(Volume::Claim { name: "data".into(), claim: "data-db-0".into() });
        s.workloads.push(workload("StatefulSet", "db", 3));
        s.pods = vec![
            pod("solo-abc-1").owned_by("ReplicaSet", "solo-abc"),
            pod("web-x-1").owned_by("ReplicaSet", "web-x"),
            pod("bare"),
            pod("cache").owned_by("ReplicaSet", "web-x").empty_dir(),
            pod("logs").owned_by("ReplicaSet", "web-x").host_path("/var/log"),
            db,
            pod("agent").owned_by("DaemonSet", "agent").host_path("/run/xtables.lock"),
            PodInfo { node: Some("w-2".into()), ..pod("elsewhere") },
        ];
        let nodes = BTreeSet::from(["w-1".to_string()]);
        let f = workload_safety(&s, &nodes, &CheckOptions::default());
        let got = checks(&f);
        assert!(got.contains(&("unmanaged-pod", "pod/default/bare".into())));
        assert!(got.contains(&("single-replica", "deployment/default/solo".into())), "{got:?}");
        assert!(!got.iter().any(|(_, s)| s.contains("web") && s.starts_with("deployment")));
        assert!(got.contains(&("local-data", "pod/default/cache".into())));
        assert!(got.contains(&("local-data", "pod/default/logs".into())));
        assert!(got.contains(&("local-data", "pod/default/db-0".into())), "local PV");
        assert!(got.contains(&("daemonset-single-node", "daemonset/default/agent".into())));
        assert!(
            !got.contains(&("local-data", "pod/default/agent".into())),
            "a DaemonSet pod stays on its node with its hostPath (kube-proxy's xtables lock)"
        );
        assert!(
            !got.iter().any(|(_, s)| s.contains("elsewhere")),
            "pods on other nodes are not this batch's concern"
        );
        let emptydir = f.iter().find(|f| f.subject == "pod/default/cache").unwrap();
        assert_eq!(emptydir.severity, Severity::Blocker);
        let allowed = CheckOptions {
            drain: DrainOptions { delete_emptydir_data: true, force: true },
            ..Default::default()
        };
        let f = workload_safety(&s, &nodes, &allowed);
        let still: Vec<(&str, &str)> = f
            .iter()
            .filter(|f| f.severity == Severity::Blocker)
            .map(|f| (f.check, f.subject.as_str()))
            .collect();
        assert_eq!(
            still,
            [
                ("single-replica", "deployment/default/solo"),
                ("local-data", "pod/default/logs"),
                ("local-data", "pod/default/db-0"),
                ("daemonset-single-node", "daemonset/default/agent"),
            ],
            "the drain allowances cover emptyDir and unmanaged pods only; the rest of Kismatic's table still blocks"
        );
    }

    #[test]
    fn a_daemonset_is_single_node_by_its_controllers_count_when_it_has_one() {
        let on = |name: &str, node: &str| PodInfo {
            node: Some(node.into()),
            ..pod(name).owned_by("DaemonSet", "proxy")
        };
        let batch = BTreeSet::from(["w-1".to_string()]);
        let single = |s: &Snapshot| {
            workload_safety(s, &batch, &CheckOptions::default())
                .iter()
                .any(|f| f.check == "daemonset-single-node")
        };
        let mut s = Snapshot { nodes: vec![node("w-1"), node("w-2"), node("w-3")], ..Default::default() };
        // Pods created for every node, one bound so far; the controller wants three.
        s.pods = vec![
            on("proxy-a", "w-1"),
            PodInfo { node: None, ..pod("proxy-b").owned_by("DaemonSet", "proxy") },
        ];
        s.workloads = vec![workload("DaemonSet", "proxy", 3)];
        assert!(!single(&s), "a DaemonSet of three nodes whose pods are still being bound");
        s.workloads = vec![workload("DaemonSet", "proxy", 1)];
        assert!(single(&s), "the controller wants one node");
        s.workloads = vec![workload("DaemonSet", "proxy", 0)];
        assert!(single(&s), "a status not written yet: the bound pods decide");
        s.workloads.clear();
        assert!(single(&s), "no DaemonSet listed: the bound pods decide");
        s.pods.push(on("proxy-c", "w-2"));
        assert!(!single(&s), "pods on two nodes");
        s.pods = vec![on("proxy-a", "w-2")];
        assert!(!single(&s), "its one node is not in the batch");
    }

    #[test]
    fn availability_rules_block_each_node_concerned() {
        use crate::plan::{Role, cluster_roles};
        let mut s = Snapshot::default();
        let mut ingress = node("w-1");
        ingress.labels.insert("node-role.kubernetes.io/ingress".into(), String::new());
        let mut storage = node("w-2");
        storage.labels.insert("storage".into(), "ceph".into());
        s.nodes = vec![node("cp-1").control_plane(), ingress, storage];
        let mut etcd = pod("etcd-cp-1").mirror();
        etcd.namespace = "kube-system".into();
        etcd.node = Some("cp-1".into());
        etcd.labels.insert("component".into(), "etcd".into());
        s.pods = vec![etcd];
        let opts = CheckOptions {
            ingress_labels: vec!["node-role.kubernetes.io/ingress".into()],
            storage_labels: vec!["storage=ceph".into()],
            ..Default::default()
        };
        let none = BTreeMap::new();
        let f = availability(&s, &cluster_roles(&s, &none), &opts);
        assert!(f.iter().all(|f| f.severity == Severity::Blocker), "Kismatic stops on every row");
        assert_eq!(
            checks(&f),
            vec![
                ("etcd-members", "node/cp-1".to_string()),
                ("control-plane-count", "node/cp-1".to_string()),
                ("ingress-node", "node/w-1".to_string()),
                ("storage-node", "node/w-2".to_string()),
            ],
            "two workers are enough"
        );
        assert!(f.iter().all(|f| f.node.as_deref() == f.subject.strip_prefix("node/")));
        // One worker left: that worker is the one concerned.
        s.nodes.retain(|n| n.name != "w-2");
        let f = availability(&s, &cluster_roles(&s, &none), &opts);
        assert!(checks(&f).contains(&("worker-count", "node/w-1".into())));
        // External etcd hosts of the plan file count: three members keep quorum.
        let extra = BTreeMap::from([
            ("etcd-a".to_string(), BTreeSet::from([Role::Etcd])),
            ("etcd-b".to_string(), BTreeSet::from([Role::Etcd])),
        ]);
        let f = availability(&s, &cluster_roles(&s, &extra), &opts);
        assert!(!f.iter().any(|f| f.check == "etcd-members"), "{:?}", checks(&f));
        let f =
            availability(&s, &cluster_roles(&s, &BTreeMap::from([extra.into_iter().next().unwrap()])), &opts);
        let etcd: Vec<String> =
            f.iter().filter(|f| f.check == "etcd-members").map(|f| f.subject.clone()).collect();
        assert_eq!(etcd, ["node/cp-1", "node/etcd-a"]);
        // A control-plane node also tagged worker counts as a worker too.
        let extra = BTreeMap::from([("cp-1".to_string(), BTreeSet::from([Role::Worker]))]);
        let f = availability(&s, &cluster_roles(&s, &extra), &opts);
        assert!(!f.iter().any(|f| f.check == "worker-count"), "cp-1 and w-1 are two workers");
    }

    #[test]
    fn drain_blockers_follow_kubectl() {
        let s =
            Snapshot { pods: vec![pod("bare"), pod("ok").owned_by("ReplicaSet", "x")], ..Default::default() };
        let f = drain_blockers(&s, "w-1", &CheckOptions::default());
        assert_eq!(checks(&f), vec![("drain-refused", "pod/default/bare".to_string())]);
        assert_eq!(f[0].remedy, Some(Remedy::DeleteUnmanagedPods));
        assert!(!f[0].message.contains("--"), "core names no flag: {}", f[0].message);
    }
}

/// Whether `pod`'s replacement may be scheduled on `node` (taints with NoSchedule/NoExecute,
/// nodeSelector, required node affinity), ignoring resources.
pub fn schedulable_on(sched: &crate::snapshot::Scheduling, node: &NodeInfo) -> bool {
    let tolerated = node
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| sched.tolerations.iter().any(|tol| tol.tolerates(t)));
    tolerated && schedulable_on_labels(sched, node)
}

/// The label half of [`schedulable_on`]: `nodeSelector` and required node affinity (what a
/// topology spread constraint's domains honour by default; taints are not).
fn schedulable_on_labels(sched: &crate::snapshot::Scheduling, node: &NodeInfo) -> bool {
    let selected = sched.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity = sched.required_node_terms.is_empty()
        || sched.required_node_terms.iter().any(|term| {
            crate::pdb::Selector { match_labels: BTreeMap::new(), match_expressions: term.clone() }
                .matches(&node.labels)
        });
    selected && affinity
}

/// The order replacements are placed in: largest CPU request first (first-fit decreasing),
/// then by name, so the result does not depend on the order pods were listed in.
fn first_fit_order(
    a: (&PodInfo, &crate::snapshot::Scheduling),
    b: (&PodInfo, &crate::snapshot::Scheduling),
) -> std::cmp::Ordering {
    b.1.requests
        .cpu_millis
        .cmp(&a.1.requests.cpu_millis)
        .then_with(|| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)))
}

/// Capacity: do the pods the drain of a batch evicts fit on the nodes that stay schedulable?
/// First-fit by decreasing CPU request, against allocatable minus what already runs there.
///
/// What the check reads on every batch is computed once per plan: each node's free
/// room (allocatable minus the requests of the pods running there) and each node's pods. Per
/// batch, recomputing them is a pass over every pod of the cluster.
pub struct Capacity<'a> {
    snapshot: &'a Snapshot,
    /// Free room of each node, in `snapshot.nodes` order; `None` for a node that takes no new
    /// pods (cordoned or not Ready).
    free: Vec<Option<crate::snapshot::Resources>>,
    /// The pods bound to each node.
    pods_by_node: BTreeMap<&'a str, Vec<&'a PodInfo>>,
}

impl<'a> Capacity<'a> {
    /// Indexes the snapshot.
    pub fn new(snapshot: &'a Snapshot) -> Capacity<'a> {
        let mut pods_by_node: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
        for p in &snapshot.pods {
            if let Some(n) = p.node.as_deref() {
                pods_by_node.entry(n).or_default().push(p);
            }
        }
        let free = snapshot
            .nodes
            .iter()
            .map(|n| {
                if n.unschedulable || !n.ready {
                    return None;
                }
                let pods = pods_by_node.get(n.name.as_str()).into_iter().flatten();
                let used = pods
                    .filter(|p| !p.phase.is_terminal() && !p.terminating)
                    .filter_map(|p| snapshot.scheduling.get(&p.uid));
                Some(used.fold(n.allocatable, |room, sched| room.minus(sched.requests)))
            })
            .collect();
        Capacity { snapshot, free, pods_by_node }
    }

    /// The pods bound to `node`.
    pub fn pods_on(&self, node: &str) -> &[&'a PodInfo] {
        self.pods_by_node.get(node).map_or(&[], Vec::as_slice)
    }

    /// Whether a replacement of `pod` on node `target` (an index into the snapshot's nodes)
    /// keeps each of its hard topology spread constraints, as the scheduler's
    /// PodTopologySpread filter decides: the domains are the values of the constraint's key on
    /// the nodes the pod's selector and required affinity allow (its default
    /// `nodeAffinityPolicy: Honor`; taints and cordons do not remove a domain, its default
    /// `nodeTaintsPolicy: Ignore` — so a drained zone stays a domain and counts as empty), and
    /// placing the pod must leave `count(target's domain) + 1 - min(count)` within maxSkew.
    /// Counted: matching pods of the namespace that stay (not evicted by the batch, not
    /// terminating or finished) plus the replacements placed so far. A node without the key
    /// is never a target for the pod.
    fn spread_allows(
        &self,
        pod: &PodInfo,
        sched: &crate::snapshot::Scheduling,
        target: usize,
        gone: &BTreeSet<&str>,
        placed: &[(&PodInfo, usize)],
    ) -> bool {
        let nodes = &self.snapshot.nodes;
        sched.spread.iter().all(|c| {
            let Some(target_domain) = nodes.get(target).and_then(|n| n.labels.get(&c.topology_key)) else {
                return false;
            };
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            let mut domain_of: BTreeMap<&str, &str> = BTreeMap::new();
            for n in nodes.iter().filter(|n| schedulable_on_labels(sched, n)) {
                if let Some(d) = n.labels.get(&c.topology_key) {
                    counts.entry(d.as_str()).or_insert(0);
                    domain_of.insert(n.name.as_str(), d.as_str());
                }
            }
            let counts_for = |p: &PodInfo| p.namespace == pod.namespace && c.selector.matches(&p.labels);
            for p in self.snapshot.pods.iter().filter(|p| counts_for(p)) {
                if gone.contains(p.uid.as_str()) || p.terminating || p.phase.is_terminal() {
                    continue;
                }
                if let Some(d) = p.node.as_deref().and_then(|n| domain_of.get(n))
                    && let Some(c) = counts.get_mut(d)
                {
                    *c = c.saturating_add(1);
                }
            }
            for (_, i) in placed.iter().filter(|(p, _)| counts_for(p)) {
                if let Some(d) = nodes.get(*i).and_then(|n| domain_of.get(n.name.as_str()))
                    && let Some(c) = counts.get_mut(d)
                {
                    *c = c.saturating_add(1);
                }
            }
            let Some(&here) = counts.get(target_domain.as_str()) else { return false };
            let min = counts.values().copied().min().unwrap_or(0);
            here.saturating_add(1).saturating_sub(min) <= u64::from(c.max_skew)
        })
    }

    /// The capacity findings of one batch.
    pub fn check(&self, batch: &BTreeSet<String>, opts: &CheckOptions) -> Vec<Finding> {
        let nodes = &self.snapshot.nodes;
        let mut room: Vec<Option<crate::snapshot::Resources>> = nodes
            .iter()
            .zip(&self.free)
            .map(|(n, free)| if batch.contains(&n.name) { None } else { *free })
            .collect();
        // The pods the drain of the batch evicts and a controller recreates elsewhere.
        let mut moving: Vec<(&PodInfo, &crate::snapshot::Scheduling)> = batch
            .iter()
            .flat_map(|n| self.pods_on(n).iter().copied())
            .filter(|p| p.owner.is_some() && !p.phase.is_terminal())
            .filter(|p| matches!(drain::decide(p, opts.drain), drain::Decision::Evict { .. }))
            .filter_map(|p| self.snapshot.scheduling.get(&p.uid).map(|s| (p, s)))
            .collect();
        moving.sort_by(|a, b| first_fit_order(*a, *b));
        let gone: BTreeSet<&str> = moving.iter().map(|(p, _)| p.uid.as_str()).collect();
        // Replacements placed so far (pod, node index): they count for later spread checks.
        let mut placed: Vec<(&PodInfo, usize)> = Vec::new();
        let mut out = Vec::new();
        for (pod, sched) in moving {
            let target = room.iter_mut().zip(nodes.iter()).enumerate().find(|(i, (room, node))| {
                room.is_some_and(|r| sched.requests.fits_in(r))
                    && schedulable_on(sched, node)
                    && self.spread_allows(pod, sched, *i, &gone, &placed)
            });
            match target {
                Some((i, (room, _))) => {
                    *room = room.map(|r| r.minus(sched.requests));
                    placed.push((pod, i));
                }
                None => out.push(Finding {
                    check: "capacity",
                    severity: Severity::Blocker,
                    subject: format!("pod/{}", pod.key()),
                    node: pod.node.clone(),
                    message: format!(
                        "no schedulable node outside this batch has room for it ({}m CPU, {} MiB) and matches its selectors, affinity, tolerations and topology spread: it would stay Pending: add capacity",
                        sched.requests.cpu_millis,
                        sched.requests.memory_bytes >> 20
                    ),
                    remedy: Some(Remedy::LowerMaxUnavailable),
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod capacity_tests {
    use super::*;
    use crate::snapshot::build::{node, pod};
    use crate::snapshot::{Phase, Resources, Scheduling, Taint, Toleration};

    fn placed(s: &mut Snapshot, name: &str, node: &str, cpu: i64) {
        crate::snapshot::build::place(s, name, "rs", node, cpu);
    }

    /// Three zones of two nodes, and `web` spread one per zone with maxSkew 1 (DoNotSchedule).
    fn spread_cluster() -> Snapshot {
        let mut s = Snapshot::default();
        for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"), ("c1", "c"), ("c2", "c")] {
            let mut node = node(n).cpu(4000);
            node.labels.insert("topology.kubernetes.io/zone".into(), z.into());
            s.nodes.push(node);
        }
        for (p, n) in [("web-a", "a1"), ("web-b", "b1"), ("web-c", "c1")] {
            crate::snapshot::build::place(&mut s, p, "web", n, 100);
            let uid = s.pods.last().unwrap().uid.clone();
            s.scheduling.get_mut(&uid).unwrap().spread = vec![crate::snapshot::Spread {
                max_skew: 1,
                topology_key: "topology.kubernetes.io/zone".into(),
                selector: crate::pdb::Selector {
                    match_labels: BTreeMap::from([("app".into(), "web".into())]),
                    ..Default::default()
                },
            }];
        }
        s
    }

    #[test]
    fn a_spread_pod_needs_a_node_that_keeps_its_skew() {
        let s = spread_cluster();
        let cap = Capacity::new(&s);
        let batch = |ns: &[&str]| ns.iter().map(|n| n.to_string()).collect::<BTreeSet<String>>();
        // a1 goes: its pod moves to a2, the same zone: skew kept.
        assert!(cap.check(&batch(&["a1"]), &CheckOptions::default()).is_empty());
        // The whole zone a goes: zone a is still a domain (cordoned, not gone), now empty; the
        // pod in zone b or c would make a skew of 2.
        let f = cap.check(&batch(&["a1", "a2"]), &CheckOptions::default());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "pod/default/web-a");
        assert!(f[0].message.contains("topology spread"), "{}", f[0].message);
        // maxSkew 2 allows it.
        let mut loose = s.clone();
        for sched in loose.scheduling.values_mut() {
            for c in &mut sched.spread {
                c.max_skew = 2;
            }
        }
        assert!(Capacity::new(&loose).check(&batch(&["a1", "a2"]), &CheckOptions::default()).is_empty());
        // Two pods of zone a and one elsewhere: a1 with both goes; they go to a2, one each
        // counted as it is placed (a: 2, b: 1, c: 1 → fine; a third would not be).
        let mut two = s.clone();
        crate::snapshot::build::place(&mut two, "web-a2", "web", "a1", 100);
        let uid = two.pods.last().unwrap().uid.clone();
        let spread = two.scheduling[&two.pods[0].uid].spread.clone();
        two.scheduling.get_mut(&uid).unwrap().spread = spread;
        assert!(Capacity::new(&two).check(&batch(&["a1"]), &CheckOptions::default()).is_empty());
        // A node without the key is no target: zone labels off b and c, then a1+a2 cannot go.
        let mut unlabelled = s.clone();
        for n in unlabelled.nodes.iter_mut().filter(|n| !n.name.starts_with('a')) {
            n.labels.remove("topology.kubernetes.io/zone");
        }
        assert_eq!(
            Capacity::new(&unlabelled).check(&batch(&["a1", "a2"]), &CheckOptions::default()).len(),
            1
        );
    }

    #[test]
    fn evicted_pods_must_fit_elsewhere() {
        let batch = BTreeSet::from(["a".to_string()]);
        let mut s = Snapshot { nodes: vec![node("a").cpu(1000), node("b").cpu(1000)], ..Default::default() };
        placed(&mut s, "p1", "a", 600);
        placed(&mut s, "p2", "a", 200);
        placed(&mut s, "q1", "b", 200);
        assert!(
            Capacity::new(&s).check(&batch, &CheckOptions::default()).is_empty(),
            "800m into b's free 800m"
        );

        placed(&mut s, "p3", "a", 100);
        let f = Capacity::new(&s).check(&batch, &CheckOptions::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "pod/default/p3", "largest first, the smallest is left over");
        assert_eq!(f[0].severity, Severity::Blocker);

        // A third node, but cordoned: no help.
        let mut c = node("c").cpu(4000);
        c.unschedulable = true;
        s.nodes.push(c);
        assert_eq!(Capacity::new(&s).check(&batch, &CheckOptions::default()).len(), 1);
    }

    #[test]
    fn taints_selectors_and_affinity_limit_where_replacements_go() {
        let batch = BTreeSet::from(["a".to_string()]);
        let mut tainted = node("b").cpu(4000);
        tainted.taints.push(Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
        });
        let mut s = Snapshot { nodes: vec![node("a").cpu(1000), tainted], ..Default::default() };
        placed(&mut s, "p1", "a", 100);
        assert_eq!(Capacity::new(&s).check(&batch, &CheckOptions::default()).len(), 1, "untolerated taint");
        let uid = s.pods[0].uid.clone();
        s.scheduling.get_mut(&uid).unwrap().tolerations.push(Toleration {
            key: "dedicated".into(),
            operator: "Equal".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
        });
        assert!(Capacity::new(&s).check(&batch, &CheckOptions::default()).is_empty(), "tolerated");
        s.scheduling.get_mut(&uid).unwrap().node_selector.insert("kubernetes.io/hostname".into(), "a".into());
        assert_eq!(
            Capacity::new(&s).check(&batch, &CheckOptions::default()).len(),
            1,
            "pinned to the drained node"
        );
        let sched = s.scheduling.get_mut(&uid).unwrap();
        sched.node_selector.clear();
        sched.required_node_terms = vec![vec![crate::pdb::Requirement {
            key: "kubernetes.io/hostname".into(),
            operator: "In".into(),
            values: vec!["b".into()],
        }]];
        assert!(Capacity::new(&s).check(&batch, &CheckOptions::default()).is_empty(), "affinity allows b");
    }

    /// The capacity check as it was before [`Capacity`] (room and moving pods recomputed from
    /// every pod for each batch): the reference the index must agree with.
    fn capacity_by_scanning(
        snapshot: &Snapshot,
        batch: &BTreeSet<String>,
        opts: &CheckOptions,
    ) -> Vec<String> {
        let mut room: BTreeMap<&str, Resources> = BTreeMap::new();
        for n in snapshot.nodes.iter().filter(|n| !batch.contains(&n.name) && !n.unschedulable && n.ready) {
            room.insert(n.name.as_str(), n.allocatable);
        }
        for p in snapshot.pods.iter().filter(|p| !p.phase.is_terminal() && !p.terminating) {
            if let (Some(node), Some(sched)) = (p.node.as_deref(), snapshot.scheduling.get(&p.uid))
                && let Some(r) = room.get_mut(node)
            {
                *r = r.minus(sched.requests);
            }
        }
        let mut moving: Vec<(&PodInfo, &Scheduling)> = snapshot
            .pods
            .iter()
            .filter(|p| p.node.as_ref().is_some_and(|n| batch.contains(n)))
            .filter(|p| p.owner.is_some() && !p.phase.is_terminal())
            .filter(|p| matches!(drain::decide(p, opts.drain), drain::Decision::Evict { .. }))
            .filter_map(|p| snapshot.scheduling.get(&p.uid).map(|s| (p, s)))
            .collect();
        moving.sort_by(|a, b| first_fit_order(*a, *b));
        let mut out = Vec::new();
        for (pod, sched) in moving {
            let target = snapshot
                .nodes
                .iter()
                .filter(|n| room.contains_key(n.name.as_str()) && schedulable_on(sched, n))
                .find(|n| sched.requests.fits_in(room[n.name.as_str()]))
                .map(|n| n.name.as_str());
            match target {
                Some(n) => {
                    if let Some(r) = room.get_mut(n) {
                        *r = r.minus(sched.requests);
                    }
                }
                None => out.push(format!("pod/{}", pod.key())),
            }
        }
        out
    }

    use proptest::prelude::*;

    proptest! {
        /// Over random nodes (cordoned, not Ready, tainted, small), pods (owned or not, on any
        /// node, finished, terminating, tolerating or pinned) and batches, the index finds the
        /// same pods without room as recomputing everything per batch.
        #[test]
        fn the_index_equals_scanning_every_pod_per_batch(
            nodes in prop::collection::vec((0i64..3000, prop::bool::weighted(0.2), prop::bool::weighted(0.2), prop::bool::weighted(0.3)), 1..6),
            pods in prop::collection::vec((0usize..6, 0i64..1500, prop::bool::weighted(0.8), 0u8..6, prop::bool::ANY, prop::bool::ANY), 0..24),
            batch in prop::collection::btree_set(0usize..6, 0..4),
        ) {
            let mut s = Snapshot::default();
            for (i, (cpu, cordoned, down, tainted)) in nodes.iter().enumerate() {
                let mut n = node(&format!("n{i}"));
                n.allocatable.cpu_millis = *cpu;
                n.unschedulable = *cordoned;
                n.ready = !*down;
                if *tainted {
                    n.taints.push(Taint { key: "dedicated".into(), value: "db".into(), effect: "NoSchedule".into() });
                }
                s.nodes.push(n);
            }
            for (i, (on, cpu, owned, state, tolerates, pinned)) in pods.into_iter().enumerate() {
                let mut p = pod(&format!("p{i:02}"));
                if owned {
                    p = p.owned_by("ReplicaSet", "rs");
                }
                p.node = (on < 6).then(|| format!("n{on}"));
                match state {
                    0 => p.phase = Phase::Succeeded,
                    1 => p.terminating = true,
                    2 => p.phase = Phase::Pending,
                    _ => {}
                }
                let mut sched = Scheduling {
                    requests: Resources { cpu_millis: cpu, memory_bytes: 1 << 20, pods: 1 },
                    ..Default::default()
                };
                if tolerates {
                    sched.tolerations.push(Toleration { key: "dedicated".into(), operator: "Exists".into(), value: String::new(), effect: String::new() });
                }
                if pinned {
                    sched.node_selector.insert("kubernetes.io/hostname".into(), format!("n{}", (on + 1) % 6));
                }
                s.scheduling.insert(p.uid.clone(), sched);
                s.pods.push(p);
            }
            let batch: BTreeSet<String> = batch.into_iter().map(|i| format!("n{i}")).collect();
            let opts = CheckOptions::default();
            let indexed: Vec<String> = Capacity::new(&s).check(&batch, &opts).into_iter().map(|f| f.subject).collect();
            prop_assert_eq!(indexed, capacity_by_scanning(&s, &batch, &opts));
        }
    }
}
