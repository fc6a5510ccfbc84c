//! `refit plan --to V`: what will block, what is unsafe, what will be unavailable, and the
//! ordered plan. Parses the arguments, lets the engine prepare (fetch → validate → decide),
//! prints.

use std::process::ExitCode;

use refit_core::VersionRequest;
use refit_core::catalog::Catalog;
use refit_core::drain::DrainOptions;
use refit_core::plan::{MaxUnavailable, Mode, Plan};
use refit_core::planfile::PlanFile;
use refit_engine::prepare::{PlanInput, PrepareError, Prepared, prepare};
use refit_kube::{ClusterTarget, Connection};
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
    reach: Option<&'a refit_engine::reach::ReachReport>,
}

impl<'a> PlanOutput<'a> {
    /// The printable form of what was prepared for `context`.
    pub fn new(context: &'a str, p: &'a Prepared) -> PlanOutput<'a> {
        PlanOutput {
            context,
            current: p.current.to_string(),
            path: p.path.hops.iter().map(|h| h.to.to_string()).collect(),
            not_run: p.not_run.clone(),
            plan: &p.plan,
            reach: p.reach.as_ref(),
        }
    }
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

/// The plan's input from the arguments, with the catalog, the target and the plan file the
/// caller already read (each once). Everything the user typed is validated here, before the
/// cluster is touched.
pub fn plan_input(
    args: &PlanArgs,
    catalog: Catalog,
    request: VersionRequest,
    plan_file: PlanFile,
) -> anyhow::Result<PlanInput> {
    let max_unavailable: MaxUnavailable = args.max_unavailable.parse().map_err(usage)?;
    let mode = match (args.offline, args.ignore_safety_checks) {
        (true, true) => return Err(usage("--offline and --ignore-safety-checks exclude each other")),
        (true, false) => Mode::Offline,
        (false, true) => Mode::IgnoreSafetyChecks,
        (false, false) => Mode::Online,
    };
    crate::commands::upgrade::resolve_action(args.action.as_deref(), plan_file.action.as_ref())?;
    let probe = crate::commands::reach::target_probe(args.action.as_deref(), &plan_file)?;
    Ok(PlanInput {
        catalog,
        request,
        max_unavailable,
        mode,
        plan_file,
        partial_ok: args.partial_ok,
        force: args.force,
        control_plane_only: args.control_plane_only,
        drain: DrainOptions {
            delete_emptydir_data: args.delete_emptydir_data,
            force: args.delete_unmanaged_pods,
        },
        ingress_labels: args.ingress_label.clone(),
        storage_labels: args.storage_label.clone(),
        today: jiff::Zoned::now().date(),
        probe,
    })
}

/// `--to`, parsed once.
pub fn parse_to(args: &PlanArgs) -> anyhow::Result<VersionRequest> {
    args.to.parse().map_err(|e| usage(format!("--to: {e}")))
}

/// Connects to the cluster the arguments name (an unreachable cluster is bad input: exit 2).
pub async fn connect(args: &PlanArgs) -> anyhow::Result<Connection> {
    let target =
        ClusterTarget { kubeconfig: args.cluster.kubeconfig.clone(), context: args.cluster.context.clone() };
    refit_kube::connect(&target).await.map_err(|e| usage(e.to_string()))
}

/// The engine's preparation errors as the CLI reports them: what was asked is bad input
/// (exit 2), nothing to do is its own value, the cluster failing is exit 1.
pub fn prepare_error(e: PrepareError) -> anyhow::Error {
    match e {
        PrepareError::Input(m) => usage(m),
        PrepareError::NothingToDo(m) => anyhow::Error::new(NothingToDo(m)),
        PrepareError::Cluster(e) => anyhow::Error::new(e),
    }
}

/// Prints the `--offline` warning when it applies.
pub fn warn_offline(p: &Prepared) {
    if p.plan.mode == Mode::Offline {
        eprintln!("WARNING: --offline: no readiness, safety, availability, PDB or capacity check was run");
    }
}

pub async fn run(args: PlanArgs, format: Format) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(args.catalog.as_deref())?;
    let request = parse_to(&args)?;
    let plan_file = read_plan_file(args.file.as_deref())?;
    let input = plan_input(&args, catalog, request, plan_file)?;
    let conn = connect(&args).await?;
    let prepared = match prepare(&conn, &input).await {
        Ok(p) => p,
        Err(PrepareError::NothingToDo(m)) => return Err(usage(m)),
        Err(e) => return Err(prepare_error(e)),
    };
    warn_offline(&prepared);
    let out = PlanOutput::new(&conn.context, &prepared);
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
    use refit_core::checks::CheckOptions;
    use refit_core::plan::PlanOptions;
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
