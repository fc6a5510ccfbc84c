//! `preflight()` alone at the scale of the plan_scale benchmark, with no cluster: 1 control
//! plane + 1,000 workers, 30,000 pods in 300 Deployments of 100 (every other one under a PDB
//! of maxUnavailable 10), a kube-proxy pod per node, `--max-unavailable 10%`.
//!
//! Not a test: it prints the time of each run (the CPU part of `refit plan`, which the live
//! benchmark cannot separate from reading the cluster) and of the JSON rendering of the plan.
//!
//! Run: `cargo bench -p refit-core --bench preflight`.

use std::collections::BTreeMap;
use std::time::Instant;

use refit_core::checks::CheckOptions;
use refit_core::pdb::{PdbInfo, Selector};
use refit_core::plan::{MaxUnavailable, Mode, PlanOptions};
use refit_core::snapshot::{
    NodeInfo, Owner, Phase, PodInfo, Resources, Scheduling, Snapshot, Taint, Toleration, Volume, WorkloadInfo,
};
use refit_core::{Version, preflight::preflight};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn node(name: &str, control_plane: bool) -> NodeInfo {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("topology.kubernetes.io/zone".to_string(), "zone-a".to_string()),
    ]);
    let mut taints = Vec::new();
    if control_plane {
        labels.insert("node-role.kubernetes.io/control-plane".into(), String::new());
        taints.push(Taint {
            key: "node-role.kubernetes.io/control-plane".into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        });
    }
    NodeInfo {
        name: name.into(),
        labels,
        annotations: BTreeMap::new(),
        taints,
        unschedulable: false,
        ready: true,
        pressure: Vec::new(),
        kubelet: "v1.36.4".into(),
        address: Some("10.0.0.1".into()),
        allocatable: Resources { cpu_millis: 32_000, memory_bytes: 128 << 30, pods: 110 },
    }
}

fn pod(ns: &str, name: &str, node: &str, owner: (&str, &str), labels: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{ns}-{name}"),
        node: Some(node.into()),
        owner: Some(Owner { kind: owner.0.into(), name: owner.1.into() }),
        phase: Phase::Running,
        ready: true,
        mirror: false,
        terminating: false,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        volumes: vec![Volume::Other { name: "kube-api-access".into() }],
    }
}

fn snapshot(workers: usize, pods: usize) -> Snapshot {
    let mut s = Snapshot::default();
    s.nodes.push(node("control-plane-1", true));
    let names: Vec<String> = (1..=workers).map(|i| format!("worker-{i:04}")).collect();
    s.nodes.extend(names.iter().map(|n| node(n, false)));
    let sched = |cpu| Scheduling {
        requests: Resources { cpu_millis: cpu, memory_bytes: 16 << 20, pods: 1 },
        tolerations: vec![Toleration {
            key: "node.kubernetes.io/not-ready".into(),
            operator: "Exists".into(),
            value: String::new(),
            effect: "NoExecute".into(),
        }],
        ..Default::default()
    };
    for n in s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>() {
        let p = pod(
            "kube-system",
            &format!("kube-proxy-{n}"),
            &n,
            ("DaemonSet", "kube-proxy"),
            &[("k8s-app", "kube-proxy")],
        );
        s.scheduling.insert(p.uid.clone(), sched(0));
        s.pods.push(p);
    }
    s.workloads.push(WorkloadInfo {
        kind: "DaemonSet".into(),
        namespace: "kube-system".into(),
        name: "kube-proxy".into(),
        replicas: s.nodes.len() as i32,
        owner: None,
    });
    let per = 100;
    for g in 0..pods.div_ceil(per) {
        let app = format!("app-{g:04}");
        let rs = format!("{app}-5d8f7c");
        s.workloads.push(WorkloadInfo {
            kind: "Deployment".into(),
            namespace: "scale".into(),
            name: app.clone(),
            replicas: per as i32,
            owner: None,
        });
        s.workloads.push(WorkloadInfo {
            kind: "ReplicaSet".into(),
            namespace: "scale".into(),
            name: rs.clone(),
            replicas: per as i32,
            owner: Some(Owner { kind: "Deployment".into(), name: app.clone() }),
        });
        if g % 2 == 0 {
            s.pdbs.push(PdbInfo {
                namespace: "scale".into(),
                name: app.clone(),
                selector: Selector {
                    match_labels: BTreeMap::from([("app".into(), app.clone())]),
                    ..Default::default()
                },
                disruptions_allowed: 10,
                current_healthy: per as i32,
                desired_healthy: per as i32 - 10,
                expected_pods: per as i32,
                always_allow_unhealthy: false,
            });
        }
        for i in g * per..((g + 1) * per).min(pods) {
            let p = pod(
                "scale",
                &format!("{rs}-{i:05}"),
                &names[i % workers],
                ("ReplicaSet", &rs),
                &[("app", &app)],
            );
            s.scheduling.insert(p.uid.clone(), sched(10));
            s.pods.push(p);
        }
    }
    s.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    s.workloads.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    s
}

fn main() {
    let (workers, pods) = (env("REFIT_BENCH_NODES", 1000), env("REFIT_BENCH_PODS", 30_000));
    let s = snapshot(workers, pods);
    let plan_opts = PlanOptions {
        target: Version::new(1, 37, 1),
        max_unavailable: MaxUnavailable::Percent(10),
        mode: Mode::Online,
        partial_ok: false,
        force: false,
        control_plane_only: false,
        extra_roles: BTreeMap::new(),
    };
    let check_opts = CheckOptions { target: Some(Version::new(1, 37, 1)), ..Default::default() };
    println!(
        "preflight over {} nodes, {} pods, {} PDBs, max-unavailable 10%:",
        s.nodes.len(),
        s.pods.len(),
        s.pdbs.len()
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let plan = preflight(&s, None, Vec::new(), &plan_opts, &check_opts).unwrap();
        let decided = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let json = serde_json::to_vec(&plan).unwrap();
        let rendered = t.elapsed().as_secs_f64();
        println!(
            "  preflight {:.0} ms, JSON {:.0} ms ({} KB, {} findings, {} worker batches)",
            decided * 1e3,
            rendered * 1e3,
            json.len() / 1000,
            plan.findings.len(),
            plan.phases.iter().map(|p| p.batches.len()).sum::<usize>()
        );
        times.push(decided);
    }
    times.sort_by(f64::total_cmp);
    println!("median preflight: {:.0} ms", times[times.len() / 2] * 1e3);
}
