//! Preflight: every check over a snapshot, composed into the plan. Pure: the CLI gathers the
//! snapshot, the version path and the removed-API findings, and prints what comes back.

use std::collections::BTreeSet;

use crate::accept::Acceptances;
use crate::checks::{self, CheckOptions, Finding, Severity};
use crate::drain;
use crate::path::UpgradePath;
use crate::pdb;
use crate::plan::{self, Phase, PhaseKind, Plan, PlanError, PlanOptions};
use crate::remedy::Remedy;
use crate::skew::node_max_lag;
use crate::snapshot::Snapshot;
use crate::version::Version;

/// Nodes whose kubelet would fall outside the skew policy while the control plane walks the
/// path (workers are upgraded after the control plane reaches the target).
pub fn path_skew(snapshot: &Snapshot, path: &UpgradePath) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(last) = path.hops.last() else { return out };
    for n in snapshot.nodes.iter().filter(|n| !n.is_control_plane()) {
        let Ok(k) = n.kubelet.parse::<Version>() else { continue };
        let lag = node_max_lag(k.minor_version());
        let behind = last.to.minor_version().minors_ahead_of(k.minor_version());
        if behind > lag {
            out.push(Finding {
                check: "version-skew",
                severity: Severity::Blocker,
                subject: format!("node/{}", n.name),
                node: Some(n.name.clone()),
                message: format!(
                    "kubelet {k} would be {behind} minors behind the control plane at {}: the policy allows {lag}; upgrade this node to at least {}.x first",
                    last.to.minor_version(),
                    crate::version::MinorVersion::new(last.to.major, last.to.minor.saturating_sub(lag as u32))
                ),
                remedy: None,
            });
        }
    }
    out
}

/// Removed APIs the upgrade crosses block it; ones already removed are `refit apis`'s business.
pub fn removed_api_findings(found: &[crate::removed::Finding]) -> Vec<Finding> {
    found
        .iter()
        .filter(|f| f.severity == crate::removed::Severity::Crossing)
        .map(|f| Finding {
            check: "removed-api",
            severity: Severity::Blocker,
            subject: f.location.clone(),
            node: None,
            message: format!(
                "uses {} {}, removed in {}: {}",
                f.api_version,
                f.kind,
                f.removed_in,
                f.advice()
            ),
            remedy: None,
        })
        .collect()
}

/// What `--force` overrode in the version path, as warnings.
pub fn forced_findings(path: &UpgradePath) -> Vec<Finding> {
    path.forced
        .iter()
        .map(|forced| Finding {
            check: "version-forced",
            severity: Severity::Warning,
            subject: "cluster".into(),
            node: None,
            message: format!("forced past the version rules: {forced}"),
            remedy: None,
        })
        .collect()
}

/// Runs every check and builds the plan, with nothing accepted (see [`preflight_accepting`]).
pub fn preflight(
    snapshot: &Snapshot,
    path: Option<&UpgradePath>,
    extra: Vec<Finding>,
    plan_opts: &PlanOptions,
    check_opts: &CheckOptions,
) -> Result<Plan, PlanError> {
    preflight_accepting(snapshot, path, extra, plan_opts, check_opts, &Acceptances::default())
}

/// Runs every check and builds the plan. `extra` carries findings gathered elsewhere (removed
/// APIs in use, version path problems). Blockers `accept` covers are moved to
/// [`Plan::accepted`] before the plan is built: they neither block nor make `--partial-ok`
/// leave their node out.
pub fn preflight_accepting(
    snapshot: &Snapshot,
    path: Option<&UpgradePath>,
    extra: Vec<Finding>,
    plan_opts: &PlanOptions,
    check_opts: &CheckOptions,
    accept: &Acceptances,
) -> Result<Plan, PlanError> {
    if plan_opts.mode == plan::Mode::Offline {
        return plan::build(snapshot, Vec::new(), plan_opts);
    }
    let mut findings = extra;
    findings.extend(checks::node_readiness(snapshot, check_opts));
    let roles = plan::cluster_roles(snapshot, &plan_opts.extra_roles);
    findings.extend(checks::availability(snapshot, &roles, check_opts));
    if let Some(p) = path {
        findings.extend(path_skew(snapshot, p));
    }
    // A first plan tells which nodes are upgraded and how workers are batched.
    let draft = plan::build(snapshot, Vec::new(), plan_opts)?;
    let planned: BTreeSet<String> = unit_names(&draft.phases, None);
    // workload_safety already reports what kubectl's drain would refuse (unmanaged pods,
    // emptyDir) as blockers under the same allowances, so drain_blockers is not repeated here.
    findings.extend(checks::workload_safety(snapshot, &planned, check_opts));
    // Indexes built once: everything below runs per batch.
    let covered = pdb::covered_counts(&snapshot.pdbs, &snapshot.pods);
    let capacity = checks::Capacity::new(snapshot);
    for phase in &draft.phases {
        for batch in &phase.batches {
            let nodes: BTreeSet<String> = batch.units.iter().map(|u| u.node.clone()).collect();
            findings.extend(capacity.check(&nodes, check_opts));
            let evicted: Vec<&crate::snapshot::PodInfo> = nodes
                .iter()
                .flat_map(|n| capacity.pods_on(n).iter().copied())
                .filter(|p| matches!(drain::decide(p, check_opts.drain), drain::Decision::Evict { .. }))
                .collect();
            for f in pdb::check_batch_counted(&snapshot.pdbs, &evicted, &covered) {
                let node = evicted
                    .iter()
                    .find(|p| match &f.problem {
                        pdb::PdbProblem::NeverAllows { pods }
                        | pdb::PdbProblem::ExhaustedByUnhealthy { pods, .. }
                        | pdb::PdbProblem::AllInBatch { pods, .. } => pods.contains(&p.key()),
                    })
                    .and_then(|p| p.node.clone());
                let (check, severity, message) = match &f.problem {
                    pdb::PdbProblem::NeverAllows { pods } => (
                        "pdb-never-allows",
                        Severity::Blocker,
                        format!(
                            "allows no disruption with its current replicas, and the drain must evict {}: scale up or relax the budget",
                            pods.join(", ")
                        ),
                    ),
                    pdb::PdbProblem::ExhaustedByUnhealthy { healthy, required, pods } => (
                        "pdb-unhealthy",
                        Severity::Blocker,
                        format!(
                            "{healthy} healthy of {required} required: unhealthy pods use up the budget, so {} cannot be evicted until they recover (or set unhealthyPodEvictionPolicy: AlwaysAllow)",
                            pods.join(", ")
                        ),
                    ),
                    pdb::PdbProblem::AllInBatch { pods, allowed } => (
                        "pdb-all-in-batch",
                        Severity::Warning,
                        format!(
                            "every pod it covers ({}) is in one batch: they leave {allowed} at a time, each replacement must become ready elsewhere first; spread them over batches",
                            pods.join(", ")
                        ),
                    ),
                };
                let remedy = (check == "pdb-all-in-batch").then_some(Remedy::LowerMaxUnavailable);
                findings.push(Finding {
                    check,
                    severity,
                    subject: format!("pdb/{}", f.pdb),
                    node,
                    message,
                    remedy,
                });
            }
        }
    }
    findings.sort_by(|a, b| (a.severity, a.check, &a.subject).cmp(&(b.severity, b.check, &b.subject)));
    findings.dedup();
    let (open, accepted) = accept.apply(findings);
    let mut plan = plan::build(snapshot, open, plan_opts)?;
    plan.accepted = accepted;
    for unit in plan.phases.iter_mut().flat_map(|p| p.batches.iter_mut()).flat_map(|b| b.units.iter_mut()) {
        let pods = capacity.pods_on(&unit.node);
        if !pods.is_empty() {
            unit.drain = drain::plan_node(&unit.node, pods.iter().copied(), check_opts.drain);
        }
    }
    Ok(plan)
}

fn unit_names(phases: &[Phase], kind: Option<PhaseKind>) -> BTreeSet<String> {
    phases
        .iter()
        .filter(|p| kind.is_none_or(|k| k == p.kind))
        .flat_map(|p| p.batches.iter().flat_map(|b| b.units.iter().map(|u| u.node.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::Hop;
    use crate::pdb::{PdbInfo, Selector};
    use crate::plan::{MaxUnavailable, Mode};
    use crate::snapshot::build::pod;
    use crate::snapshot::{Resources, Scheduling};
    use std::collections::BTreeMap;

    fn node(name: &str, cp: bool, kubelet: &str) -> crate::snapshot::NodeInfo {
        let n = crate::snapshot::build::node(name).kubelet(kubelet);
        if cp { n.control_plane() } else { n }
    }

    fn opts() -> (PlanOptions, CheckOptions) {
        (
            PlanOptions {
                target: Version::new(1, 37, 1),
                max_unavailable: MaxUnavailable::Count(1),
                mode: Mode::Online,
                partial_ok: false,
                force: false,
                control_plane_only: false,
                extra_roles: BTreeMap::new(),
            },
            CheckOptions::default(),
        )
    }

    #[test]
    fn a_zero_budget_blocks_the_node_that_holds_its_pod() {
        let mut s = Snapshot {
            nodes: vec![
                node("cp-1", true, "v1.36.4"),
                node("w-1", false, "v1.36.4"),
                node("w-2", false, "v1.36.4"),
            ],
            ..Default::default()
        };
        for (name, n) in [("db-0", "w-1"), ("db-1", "w-2")] {
            let mut p = pod(name).owned_by("StatefulSet", "db");
            p.node = Some(n.into());
            p.labels.insert("app".into(), "db".into());
            s.scheduling.insert(
                p.uid.clone(),
                Scheduling {
                    requests: Resources { cpu_millis: 100, memory_bytes: 1 << 20, pods: 1 },
                    ..Default::default()
                },
            );
            s.pods.push(p);
        }
        s.pdbs.push(PdbInfo {
            namespace: "default".into(),
            name: "db".into(),
            selector: Selector {
                match_labels: BTreeMap::from([("app".into(), "db".into())]),
                ..Default::default()
            },
            disruptions_allowed: 0,
            current_healthy: 2,
            desired_healthy: 2,
            expected_pods: 2,
            always_allow_unhealthy: false,
        });
        let (p, c) = opts();
        let plan = preflight(&s, None, vec![], &p, &c).unwrap();
        assert!(plan.blocked);
        let f: Vec<_> = plan.findings.iter().filter(|f| f.check == "pdb-never-allows").collect();
        assert_eq!(f.len(), 2, "one per batch that evicts a covered pod");
        assert!(f.iter().all(|f| f.subject == "pdb/default/db"));
        let w1 = plan
            .phases
            .iter()
            .flat_map(|p| &p.batches)
            .flat_map(|b| &b.units)
            .find(|u| u.node == "w-1")
            .unwrap();
        assert!(w1.blockers.iter().any(|b| b.check == "pdb-never-allows"));
    }

    #[test]
    fn path_skew_names_workers_left_too_far_behind() {
        let s = Snapshot {
            nodes: vec![
                node("cp-1", true, "v1.35.8"),
                node("old", false, "v1.33.0"),
                node("ok", false, "v1.35.8"),
            ],
            ..Default::default()
        };
        let path = UpgradePath {
            from: Version::new(1, 35, 8),
            to: Version::new(1, 37, 1),
            hops: vec![
                Hop { from: Version::new(1, 35, 8), to: Version::new(1, 36, 4) },
                Hop { from: Version::new(1, 36, 4), to: Version::new(1, 37, 1) },
            ],
            forced: vec![],
        };
        let f = path_skew(&s, &path);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "node/old");
        assert!(f[0].message.contains("1.34.x"), "{}", f[0].message);
    }

    #[test]
    fn only_removals_the_upgrade_crosses_block() {
        use crate::removed::{ObjectRef, Signal};
        let catalog = crate::catalog::Catalog::embedded().unwrap();
        let obj = ObjectRef { kind: "Ingress".into(), namespace: Some("shop".into()), name: "web".into() };
        let signals = vec![
            Signal::LastApplied { object: obj, api_version: "extensions/v1beta1".into() },
            Signal::Metric {
                endpoint: "https://10.0.0.1:6443".into(),
                group: "storage.k8s.io".into(),
                version: "v1beta1".into(),
                resource: "volumeattributesclasses".into(),
                removed_release: "1.37".into(),
            },
        ];
        let m = crate::version::MinorVersion::new;
        let found = crate::removed::findings(&catalog, m(1, 36), m(1, 37), &signals);
        let f = removed_api_findings(&found);
        assert_eq!(f.len(), 1, "the 1.22 Ingress is stale, not a blocker of 1.36 → 1.37");
        assert_eq!((f[0].check, f[0].severity), ("removed-api", Severity::Blocker));
        assert!(f[0].message.contains("VolumeAttributesClass"));
    }

    #[test]
    fn offline_runs_no_check() {
        let s = Snapshot {
            nodes: vec![node("cp-1", true, "v1.36.4"), node("w-1", false, "v1.36.4")],
            pods: vec![pod("bare")],
            ..Default::default()
        };
        let (mut p, c) = opts();
        assert!(preflight(&s, None, vec![], &p, &c).unwrap().blocked, "the bare pod blocks online");
        p.mode = Mode::Offline;
        let plan = preflight(&s, None, vec![], &p, &c).unwrap();
        assert!(!plan.blocked && plan.findings.is_empty());
    }

    /// A pod of `owner` on `node`.
    fn on(name: &str, node: &str) -> crate::snapshot::PodInfo {
        crate::snapshot::PodInfo { node: Some(node.into()), ..pod(name) }
    }

    fn workload(kind: &str, name: &str, replicas: i32) -> crate::snapshot::WorkloadInfo {
        crate::snapshot::WorkloadInfo {
            kind: kind.into(),
            namespace: "default".into(),
            name: name.into(),
            replicas,
            owner: None,
        }
    }

    /// Kismatic's table, one row per worker (w-1..w-6 for the workload rows, w-7/w-8 ingress
    /// and storage), a lone control plane with a stacked etcd member (rows 7 and 8), and a
    /// second cluster with a single worker (row 9).
    fn kismatic_cluster() -> (Snapshot, CheckOptions) {
        use crate::snapshot::{PvInfo, Volume};
        let mut s = Snapshot { nodes: vec![node("cp-1", true, "v1.36.4")], ..Default::default() };
        for i in 1..=9 {
            s.nodes.push(node(&format!("w-{i}"), false, "v1.36.4"));
        }
        s.nodes[7].labels.insert("ingress".into(), String::new());
        s.nodes[8].labels.insert("storage".into(), "ceph".into());
        let mut etcd = on("etcd-cp-1", "cp-1").mirror();
        etcd.namespace = "kube-system".into();
        etcd.labels.insert("component".into(), "etcd".into());
        let mut db = on("db-0", "w-6").owned_by("StatefulSet", "db");
        db.volumes.push(Volume::Claim { name: "data".into(), claim: "data-db-0".into() });
        s.pvs = vec![PvInfo { name: "pv".into(), claim: Some("default/data-db-0".into()), node_local: true }];
        s.workloads = vec![workload("Deployment", "solo", 1), workload("StatefulSet", "db", 3), {
            let mut rs = workload("ReplicaSet", "solo-x", 1);
            rs.owner = Some(crate::snapshot::Owner { kind: "Deployment".into(), name: "solo".into() });
            rs
        }];
        s.pods = vec![
            etcd,
            on("bare", "w-1"),
            on("solo-x-1", "w-2").owned_by("ReplicaSet", "solo-x"),
            on("agent-1", "w-3").owned_by("DaemonSet", "agent"),
            on("cache", "w-4").owned_by("StatefulSet", "db").empty_dir(),
            on("logs", "w-5").owned_by("StatefulSet", "db").host_path("/var/log"),
            db,
        ];
        let check_opts = CheckOptions {
            ingress_labels: vec!["ingress".into()],
            storage_labels: vec!["storage=ceph".into()],
            ..Default::default()
        };
        (s, check_opts)
    }

    /// The rows of Kismatic's table as (check, subject, node) — what must block.
    const KISMATIC: &[(&str, &str, &str)] = &[
        ("unmanaged-pod", "pod/default/bare", "w-1"),
        ("single-replica", "deployment/default/solo", "w-2"),
        ("daemonset-single-node", "daemonset/default/agent", "w-3"),
        ("local-data", "pod/default/cache", "w-4"),
        ("local-data", "pod/default/logs", "w-5"),
        ("local-data", "pod/default/db-0", "w-6"),
        ("etcd-members", "node/cp-1", "cp-1"),
        ("control-plane-count", "node/cp-1", "cp-1"),
        ("ingress-node", "node/w-7", "w-7"),
        ("storage-node", "node/w-8", "w-8"),
    ];

    fn open(plan: &Plan) -> BTreeSet<(&'static str, String)> {
        plan.findings
            .iter()
            .filter(|f| f.severity == Severity::Blocker)
            .map(|f| (f.check, f.subject.clone()))
            .collect()
    }

    #[test]
    fn every_kismatic_condition_blocks_online_mode_on_its_node() {
        let (s, c) = kismatic_cluster();
        let (p, _) = opts();
        let plan = preflight(&s, None, vec![], &p, &c).unwrap();
        assert!(plan.blocked);
        for (check, subject, node) in KISMATIC {
            let f = plan.findings.iter().find(|f| f.check == *check && f.subject == *subject);
            let f = f.unwrap_or_else(|| panic!("{check} {subject} missing: {:?}", open(&plan)));
            assert_eq!(
                (f.severity, f.node.as_deref()),
                (Severity::Blocker, Some(*node)),
                "{check} {subject}"
            );
        }
        // Row 9, on a cluster of its own: one worker.
        let lonely = Snapshot {
            nodes: vec![
                node("cp-1", true, "v1.36.4"),
                node("cp-2", true, "v1.36.4"),
                node("w-1", false, "v1.36.4"),
            ],
            ..Default::default()
        };
        let plan = preflight(&lonely, None, vec![], &p, &CheckOptions::default()).unwrap();
        assert_eq!(open(&plan), BTreeSet::from([("worker-count", "node/w-1".to_string())]));
        assert!(plan.blocked);
        // --ignore-safety-checks reports them without blocking; --offline runs none.
        let (s, c) = kismatic_cluster();
        let mut p = opts().0;
        p.mode = Mode::IgnoreSafetyChecks;
        let plan = preflight(&s, None, vec![], &p, &c).unwrap();
        assert!(!plan.blocked && open(&plan).len() == KISMATIC.len());
        p.mode = Mode::Offline;
        let plan = preflight(&s, None, vec![], &p, &c).unwrap();
        assert!(!plan.blocked && plan.findings.is_empty());
    }

    #[test]
    fn each_acceptance_takes_exactly_its_subject_out_of_the_blockers() {
        let (s, c) = kismatic_cluster();
        let (p, _) = opts();
        for (check, subject, _) in KISMATIC {
            let rule: crate::accept::AcceptRule = format!("{check}={subject}").parse().unwrap();
            let accept = Acceptances::new(&[], std::slice::from_ref(&rule));
            let plan = preflight_accepting(&s, None, vec![], &p, &c, &accept).unwrap();
            let accepted: Vec<(&str, &str)> =
                plan.accepted.iter().map(|a| (a.finding.check, a.finding.subject.as_str())).collect();
            assert_eq!(accepted, [(*check, *subject)], "{rule}");
            assert_eq!(open(&plan).len(), KISMATIC.len() - 1, "{rule}: the others stay open");
            assert!(plan.blocked);
        }
        // All of them, half from the plan file: nothing blocks, every one is listed as accepted.
        let rules: Vec<crate::accept::AcceptRule> =
            KISMATIC.iter().map(|(c, s, _)| format!("{c}={s}").parse().unwrap()).collect();
        let (file, flags) = rules.split_at(5);
        let plan = preflight_accepting(&s, None, vec![], &p, &c, &Acceptances::new(file, flags)).unwrap();
        assert!(!plan.blocked, "{:?}", open(&plan));
        assert_eq!(plan.accepted.len(), KISMATIC.len());
        assert_eq!(plan.accepted.iter().filter(|a| a.origin == crate::accept::Origin::PlanFile).count(), 5);
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["accepted"][0]["rule"], serde_json::json!(plan.accepted[0].rule.to_string()));
    }

    #[test]
    fn partial_ok_leaves_out_exactly_the_workers_concerned_and_refuses_for_members() {
        let (s, c) = kismatic_cluster();
        let (mut p, _) = opts();
        p.partial_ok = true;
        // The lone control plane blocks (etcd-members, control-plane-count): refused.
        let e = preflight(&s, None, vec![], &p, &c).unwrap_err();
        assert_eq!(e, PlanError::PartialControlPlane("cp-1".into()));
        // Core names no flag: a front end spells the way out.
        assert!(!e.to_string().contains("--"), "{e}");
        assert_eq!(e.remedies(), vec![crate::remedy::Remedy::AcceptEach]);
        let members =
            Acceptances::new(&[], &["etcd-members".parse().unwrap(), "control-plane-count".parse().unwrap()]);
        let plan = preflight_accepting(&s, None, vec![], &p, &c, &members).unwrap();
        assert!(!plan.blocked);
        let left_out: BTreeSet<&str> = plan.excluded.iter().map(|(n, _)| n.as_str()).collect();
        let concerned: BTreeSet<&str> =
            KISMATIC.iter().map(|(_, _, n)| *n).filter(|n| *n != "cp-1").collect();
        assert_eq!(left_out, concerned);
        let planned: BTreeSet<String> = unit_names(&plan.phases, None);
        assert_eq!(planned, BTreeSet::from(["cp-1".to_string(), "w-9".to_string()]));
        // An accepted worker stays in.
        let mut more = members.clone();
        more.0.push(("ingress-node=node/w-7".parse().unwrap(), crate::accept::Origin::Flag));
        let plan = preflight_accepting(&s, None, vec![], &p, &c, &more).unwrap();
        assert!(unit_names(&plan.phases, None).contains("w-7"));
        // The control plane tagged worker (plan file roles) is still a member: refused.
        let (mut s, c) = kismatic_cluster();
        s.nodes.retain(|n| n.name == "cp-1" || n.name == "w-9");
        p.extra_roles.insert("cp-1".into(), BTreeSet::from([crate::plan::Role::Worker]));
        let e = preflight(&s, None, vec![], &p, &c).unwrap_err();
        assert_eq!(e, PlanError::PartialControlPlane("cp-1".into()));
    }
}
