//! `refit plan --to V`: what will block, what is unsafe, what will be unavailable, and the
//! ordered plan. Gathers (kube), decides (core::preflight), prints.

use std::collections::BTreeSet;
use std::process::ExitCode;

use refit_core::VersionRequest;
use refit_core::checks::{CheckOptions, Finding};
use refit_core::drain::DrainOptions;
use refit_core::path::{Policy, upgrade_path};
use refit_core::plan::{MaxUnavailable, Mode, Plan, PlanOptions};
use refit_core::planfile::PlanFile;
use refit_core::removed;
use refit_kube::{ClusterTarget, connect};
use serde::Serialize;

use crate::args::PlanArgs;
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};

/// `refit plan`'s output.
#[derive(Serialize)]
pub struct PlanOutput<'a> {
    context: &'a str,
    current: String,
    path: Vec<String>,
    /// Checks that could not run, and why.
    not_run: Vec<String>,
    #[serde(flatten)]
    plan: &'a Plan,
    /// What the node action can reach, and kubeadm's own plan (ssh action).
    #[serde(skip_serializing_if = "Option::is_none")]
    reach: Option<&'a crate::commands::reach::ReachReport>,
}

/// Everything preflight gathered and decided: `refit plan` prints it, `refit upgrade`
/// executes it.
pub struct Prepared {
    /// The cluster.
    pub conn: refit_kube::Connection,
    /// The oldest apiserver's version.
    pub current: refit_core::Version,
    /// The control plane's hops.
    pub path: refit_core::path::UpgradePath,
    /// Findings and the ordered plan.
    pub plan: Plan,
    /// Checks that could not run, and why.
    pub not_run: Vec<String>,
    /// Node addresses: the plan file's, else each node's InternalIP.
    pub addresses: std::collections::BTreeMap<String, String>,
    /// The release catalog in use.
    pub catalog: refit_core::catalog::Catalog,
    /// Worker batch size.
    pub worker_concurrency: usize,
    /// What the node action can reach (None: it has no probe).
    pub reach: Option<crate::commands::reach::ReachReport>,
}

/// Every node is already at the target: bad input for `refit plan` (exit 2, as before), a
/// successful no-op for `refit upgrade`.
#[derive(Debug)]
pub struct NothingToDo(pub String);

impl std::fmt::Display for NothingToDo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NothingToDo {}

/// Reads a plan file, refusing a missing or malformed one as bad input (exit 2).
pub fn read_plan_file(path: Option<&std::path::Path>) -> anyhow::Result<PlanFile> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read plan file {}: {e}", path.display())))?;
            PlanFile::from_yaml(&text).map_err(|e| usage(format!("{}: {e}", path.display())))
        }
        None => Ok(PlanFile::default()),
    }
}

/// Validates the input, reads the cluster, runs every check and builds the plan.
pub async fn prepare(args: &PlanArgs) -> anyhow::Result<Prepared> {
    // Everything the user typed is validated before the cluster is touched.
    let catalog = load_catalog(args.catalog.as_deref())?;
    let request: VersionRequest = args.to.parse().map_err(|e| usage(format!("--to: {e}")))?;
    let max_unavailable: MaxUnavailable = args.max_unavailable.parse().map_err(usage)?;
    let mode = match (args.offline, args.ignore_safety_checks) {
        (true, true) => return Err(usage("--offline and --ignore-safety-checks exclude each other")),
        (true, false) => Mode::Offline,
        (false, true) => Mode::IgnoreSafetyChecks,
        (false, false) => Mode::Online,
    };
    let plan_file = read_plan_file(args.file.as_deref())?;
    crate::commands::upgrade::resolve_action(args.action.as_deref(), plan_file.action.as_ref())?;
    let probe = crate::commands::reach::target_probe(args.action.as_deref(), &plan_file)?;

    let target =
        ClusterTarget { kubeconfig: args.cluster.kubeconfig.clone(), context: args.cluster.context.clone() };
    let started = std::time::Instant::now();
    let conn = connect(&target).await.map_err(|e| usage(e.to_string()))?;
    let current = refit_kube::apis::oldest_apiserver_version(&conn).await?;
    let today = jiff::Zoned::now().date();
    let path = upgrade_path(&catalog, &current, &request, Policy::Default, args.force, today)
        .map_err(|e| usage(e.to_string()))?;
    // The removed-API signals (each apiserver's metrics, metadata-only lists, Helm releases)
    // do not depend on the snapshot: both are read at once. The snapshot's lists use only GA
    // versions, so they never show up in the deprecated-API metric the signals scrape.
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "connected, path resolved");
    let signals = async {
        let s = match mode {
            Mode::Offline => Ok(Vec::new()),
            _ => refit_kube::apis::collect_signals(&conn, &catalog).await,
        };
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "removed-API signals read");
        s
    };
    let snapshot = async {
        let large = refit_kube::snapshot::LargeLists::for_server(&current);
        let s = refit_kube::snapshot::read_snapshot(&conn, large).await;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "snapshot read");
        s
    };
    let (snapshot, signals) = tokio::join!(snapshot, signals);
    let mut snapshot = snapshot?;
    let nodes: BTreeSet<String> = snapshot.nodes.iter().map(|n| n.name.clone()).collect();
    plan_file.validate(&nodes).map_err(|e| usage(e.to_string()))?;
    // The plan file's address replaces the node's InternalIP before the checks: the address
    // check (node-address-invalid) is about the one the action will get.
    for n in &mut snapshot.nodes {
        if let Some(a) = plan_file.nodes.get(&n.name).and_then(|f| f.address.clone()) {
            n.address = Some(a);
        }
    }

    let mut plan_opts = PlanOptions {
        target: path.to.clone(),
        max_unavailable,
        mode,
        partial_ok: args.partial_ok,
        force: args.force,
        control_plane_only: args.control_plane_only,
        extra_roles: plan_file.extra_roles(),
    };
    // What the node action can reach, before anything changes: may move a minor `--to` to the
    // newest patch every node offers, and blocks on nodes that cannot reach their target.
    let reached = crate::commands::reach::probe(
        probe.as_ref(),
        &snapshot,
        &plan_file,
        &catalog,
        &request,
        path,
        &plan_opts,
        args.force,
    )
    .await?;
    let path = reached.path;
    plan_opts.target = path.to.clone();
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "target probed");

    let mut extra: Vec<Finding> = reached.findings;
    let mut not_run = reached.not_run;
    if mode == Mode::Offline {
        not_run.push("all checks (--offline)".to_string());
    } else {
        match signals {
            Ok(signals) => {
                let found =
                    removed::findings(&catalog, current.minor_version(), path.to.minor_version(), &signals);
                extra.extend(refit_core::preflight::removed_api_findings(&found));
            }
            Err(e) => not_run.push(format!("removed-API usage ({e})")),
        }
        extra.extend(refit_core::preflight::forced_findings(&path));
    }
    let mut ingress = plan_file.ingress_labels.clone();
    ingress.extend(args.ingress_label.iter().cloned());
    let mut storage = plan_file.storage_labels.clone();
    storage.extend(args.storage_label.iter().cloned());
    let check_opts = CheckOptions {
        target: Some(path.to.clone()),
        force: args.force,
        drain: DrainOptions {
            delete_emptydir_data: args.delete_emptydir_data,
            force: args.delete_unmanaged_pods,
        },
        ingress_labels: ingress,
        storage_labels: storage,
    };
    let mut plan = refit_core::preflight::preflight(&snapshot, Some(&path), extra, &plan_opts, &check_opts)
        .map_err(|e| match e {
        refit_core::plan::PlanError::NothingToDo(_) => anyhow::Error::new(NothingToDo(e.to_string())),
        e => usage(e.to_string()),
    })?;
    plan.blocked |= refit_core::reach::blocks_regardless_of_mode(&plan);
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "preflight decided");
    let workers = snapshot.nodes.iter().filter(|n| !n.is_control_plane()).count();
    let addresses =
        plan_file.addresses(snapshot.nodes.iter().map(|n| (n.name.as_str(), n.address.as_deref())));
    Ok(Prepared {
        conn,
        current,
        path,
        plan,
        not_run,
        addresses,
        catalog,
        worker_concurrency: max_unavailable.batch_size(workers),
        reach: reached.report,
    })
}

impl Prepared {
    /// The printable form.
    pub fn output(&self) -> PlanOutput<'_> {
        PlanOutput {
            context: &self.conn.context,
            current: self.current.to_string(),
            path: self.path.hops.iter().map(|h| h.to.to_string()).collect(),
            not_run: self.not_run.clone(),
            plan: &self.plan,
            reach: self.reach.as_ref(),
        }
    }
}

pub async fn run(args: PlanArgs, format: Format) -> anyhow::Result<ExitCode> {
    let prepared = match prepare(&args).await {
        Ok(p) => p,
        Err(e) => match e.downcast::<NothingToDo>() {
            Ok(n) => return Err(usage(n.0)),
            Err(e) => return Err(e),
        },
    };
    if prepared.plan.mode == Mode::Offline {
        eprintln!("WARNING: --offline: no readiness, safety, availability, PDB or capacity check was run");
    }
    let out = prepared.output();
    if !print_structured(format, &out)? {
        print!("{}", render(&out));
    }
    Ok(if prepared.plan.blocked { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The plan as tables.
pub fn render(o: &PlanOutput<'_>) -> String {
    let p = o.plan;
    let mut s = format!(
        "Plan for context {}: {} → {} (hops: {}), mode {:?}, max-unavailable {}\n\n",
        o.context,
        o.current,
        p.target,
        if o.path.is_empty() { "none".into() } else { o.path.join(" → ") },
        p.mode,
        p.max_unavailable
    );
    if p.findings.is_empty() {
        s.push_str("Findings: none\n\n");
    } else {
        let mut t = table(&["severity", "check", "subject", "node", "what to do"]);
        for f in &p.findings {
            t.add_row(vec![
                format!("{:?}", f.severity).to_lowercase(),
                f.check.to_string(),
                f.subject.clone(),
                f.node.clone().unwrap_or_default(),
                f.message.clone(),
            ]);
        }
        s.push_str(&format!("Findings\n{t}\n\n"));
    }
    if let Some(r) = o.reach {
        s.push_str(&crate::commands::reach::render(r));
    }
    let mut t = table(&["phase", "batch", "node", "roles", "from", "to", "drain", "steps", "blockers"]);
    for phase in &p.phases {
        if phase.batches.is_empty() {
            t.add_row(vec![format!("{:?}", phase.kind), "-".into(), "kube-proxy, CoreDNS".into()]);
        }
        for (i, b) in phase.batches.iter().enumerate() {
            for u in &b.units {
                t.add_row(vec![
                    format!("{:?}", phase.kind),
                    (i + 1).to_string(),
                    u.node.clone(),
                    u.roles.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join("+"),
                    u.from.clone(),
                    u.to.to_string(),
                    format!(
                        "evict {}, skip {}, refuse {}",
                        u.drain.evict.len(),
                        u.drain.skip.len(),
                        u.drain.refuse.len()
                    ),
                    u.steps.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>().join(","),
                    u.blockers.iter().map(|b| b.check).collect::<Vec<_>>().join(","),
                ]);
            }
        }
    }
    s.push_str(&format!("{t}\n"));
    for (n, why) in &p.excluded {
        s.push_str(&format!("left out: {n} ({why})\n"));
    }
    for n in &o.not_run {
        s.push_str(&format!("NOT RUN: {n}\n"));
    }
    s.push_str(if p.blocked {
        "\nBLOCKED: fix the blockers above, or choose --partial-ok / --ignore-safety-checks.\n"
    } else {
        "\nReady: nothing blocks this plan.\n"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_core::snapshot::Snapshot;
    use serde_json::json;

    fn node(name: &str, cp: bool) -> serde_json::Value {
        let labels = if cp { json!({"node-role.kubernetes.io/control-plane": ""}) } else { json!({}) };
        json!({"name": name, "labels": labels, "annotations": {}, "taints": [], "unschedulable": false,
               "ready": true, "pressure": [], "kubelet": "v1.36.4", "address": null,
               "allocatable": {"cpu_millis": 8000, "memory_bytes": 34359738368i64, "pods": 110}})
    }

    fn pod(
        name: &str,
        node: &str,
        owner: Option<(&str, &str)>,
        volumes: serde_json::Value,
    ) -> serde_json::Value {
        json!({"namespace": "shop", "name": name, "uid": format!("uid-{name}"), "node": node,
               "owner": owner.map(|(k, n)| json!({"kind": k, "name": n})), "phase": "Running", "ready": true,
               "mirror": false, "terminating": false, "labels": {"app": "web"}, "volumes": volumes})
    }

    fn snapshot() -> Snapshot {
        serde_json::from_value(json!({
            "nodes": [node("cp-1", true), node("w-1", false), node("w-2", false), node("w-3", false)],
            "pods": [
                pod("web-1", "w-1", Some(("ReplicaSet", "web-x")), json!([])),
                pod("web-2", "w-2", Some(("ReplicaSet", "web-x")), json!([])),
                pod("debug", "w-3", None, json!([{"type": "emptyDir", "name": "tmp"}])),
            ],
            "scheduling": {},
            "pdbs": [{"namespace": "shop", "name": "web", "selector": {"match_labels": {"app": "web"}, "match_expressions": []},
                      "disruptions_allowed": 0, "current_healthy": 2, "desired_healthy": 2, "expected_pods": 2,
                      "always_allow_unhealthy": false}],
            "workloads": [{"kind": "ReplicaSet", "namespace": "shop", "name": "web-x", "replicas": 2, "owner": {"kind": "Deployment", "name": "web"}},
                          {"kind": "Deployment", "namespace": "shop", "name": "web", "replicas": 2, "owner": null}],
            "pvs": [],
        }))
        .unwrap()
    }

    fn output(plan: &Plan) -> PlanOutput<'_> {
        PlanOutput {
            context: "prod",
            current: "1.36.4".into(),
            path: vec!["1.37.1".into()],
            not_run: vec![],
            plan,
            reach: None,
        }
    }

    fn make() -> Plan {
        let target: refit_core::Version = "1.37.1".parse().unwrap();
        let plan_opts = PlanOptions {
            target: target.clone(),
            max_unavailable: MaxUnavailable::Count(2),
            mode: Mode::Online,
            partial_ok: false,
            force: false,
            control_plane_only: false,
            extra_roles: Default::default(),
        };
        let check_opts = CheckOptions { target: Some(target), ..Default::default() };
        refit_core::preflight::preflight(&snapshot(), None, vec![], &plan_opts, &check_opts).unwrap()
    }

    #[test]
    fn table_snapshot() {
        insta::assert_snapshot!(render(&output(&make())));
    }

    #[test]
    fn json_snapshot() {
        let plan = make();
        insta::assert_json_snapshot!(output(&plan));
    }
}
