//! `refit plan --to V`: what will block, what is unsafe, what will be unavailable, and the
//! ordered plan. Parses the arguments, lets the engine prepare (fetch → validate → decide),
//! prints.

use std::process::ExitCode;

use refit_core::VersionRequest;
use refit_core::batch::{WorkerSettings, WorkerWindows, parse_cap};
use refit_core::catalog::Catalog;
use refit_core::drain::DrainOptions;
use refit_core::plan::{Mode, Plan};
use refit_core::planfile::PlanFile;
use refit_engine::prepare::{PlanInput, PrepareError, Prepared, prepare};
use refit_kube::{ClusterTarget, Connection};
use serde::Serialize;

use crate::args::PlanArgs;
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};
use crate::remedy::usage_spelled;

/// `refit plan`'s output.
#[derive(Serialize)]
pub struct PlanOutput<'a> {
    context: &'a str,
    current: String,
    path: Vec<String>,
    /// Checks that could not run, and why.
    not_run: Vec<String>,
    /// The version policy (`--policy`).
    policy: refit_core::path::Policy,
    #[serde(flatten)]
    plan: &'a Plan,
    /// What the node action can reach, and kubeadm's own plan (ssh action).
    #[serde(skip_serializing_if = "Option::is_none")]
    reach: Option<&'a refit_engine::reach::ReachReport>,
    /// `--max-unavailable auto`: its settings and the first batch it would take now.
    #[serde(skip_serializing_if = "Option::is_none")]
    auto: Option<&'a refit_engine::prepare::AutoPreview>,
    /// `--max-surge` (replace action): replacements ahead and old nodes out, in nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    surge: Option<refit_core::surge::Limits>,
    /// When the run is expected to end (estimates: nothing ran yet), and the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    eta: Option<refit_engine::prepare::PlanEta>,
}

impl<'a> PlanOutput<'a> {
    /// The printable form of what was prepared for `context`.
    pub fn new(context: &'a str, p: &'a Prepared) -> PlanOutput<'a> {
        PlanOutput {
            context,
            current: p.current.to_string(),
            path: p.path.hops.iter().map(|h| h.to.to_string()).collect(),
            not_run: p.not_run.clone(),
            policy: p.policy,
            plan: &p.plan,
            reach: p.reach.as_ref(),
            auto: p.auto.as_ref(),
            surge: p.surge,
            eta: None,
        }
    }

    /// With the expected duration (and the window closing `window` from now).
    pub fn with_eta(mut self, p: &Prepared, window: Option<std::time::Duration>) -> PlanOutput<'a> {
        self.eta = Some(p.eta(window));
        self
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
    let workers = WorkerSettings {
        max_unavailable: args.max_unavailable.parse().map_err(usage_spelled)?,
        cap: args.max_unavailable_cap.as_deref().map(parse_cap).transpose().map_err(usage_spelled)?,
        across_zones: args.across_zones,
        max_surge: args
            .max_surge
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(usage_spelled)?
            .unwrap_or_default(),
    };
    let mode = match (args.offline, args.ignore_safety_checks) {
        (true, true) => return Err(usage("--offline and --ignore-safety-checks exclude each other")),
        (true, false) => Mode::Offline,
        (false, true) => Mode::IgnoreSafetyChecks,
        (false, false) => Mode::Online,
    };
    let action = crate::commands::upgrade::resolve_action(args.action.as_deref(), plan_file.action.as_ref())?;
    if let Some(refit_engine::spec::NodeAction::Ssh { action, .. }) = &action {
        plan_file.check_external_etcd(Some(action)).map_err(|e| usage(e.to_string()))?;
    }
    let style = match &action {
        Some(refit_engine::spec::NodeAction::Replace { .. }) => refit_core::run::Style::Replace,
        _ => refit_core::run::Style::InPlace,
    };
    // Core's rule for how the worker settings combine; it needs the action's style.
    let WorkerWindows { max_unavailable, auto, surge } = workers.resolve(style).map_err(usage_spelled)?;
    let probe = crate::commands::reach::target_probe(args.action.as_deref(), &plan_file)?;
    Ok(PlanInput {
        catalog,
        request,
        max_unavailable,
        auto,
        surge,
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
        accept: args.accept.clone(),
        policy: args.policy,
        readiness: refit_engine::reach::ReadinessInput { min_free: args.min_free_disk },
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
        PrepareError::Path(e) => usage(crate::remedy::sentence(&e.to_string(), &e.remedies())),
        PrepareError::NothingToDo(m) => anyhow::Error::new(NothingToDo(nothing_to_do(&m))),
        PrepareError::Refused(e) => usage(refused(&e)),
        PrepareError::Cluster(e) => anyhow::Error::new(e),
    }
}

/// A plan the checks refused, in this command line's words: core's "leaving out the nodes that
/// failed their checks" is `--partial-ok` here.
fn refused(e: &refit_core::plan::PlanError) -> String {
    let message = match e {
        refit_core::plan::PlanError::PartialControlPlane(node) => {
            format!("--partial-ok leaves out workers only, but {node} failed its checks; fix it first")
        }
        e => e.to_string(),
    };
    crate::remedy::sentence(&message, &e.remedies())
}

/// "Every node is already at the target", with its way out (core's `Remedy::Force`).
pub fn nothing_to_do(message: &str) -> String {
    crate::remedy::sentence(message, &[refit_core::remedy::Remedy::Force])
}

/// Prints the `--offline` warning when it applies, and one for each acceptance that matched
/// nothing.
pub fn warn_offline(p: &Prepared) {
    if p.plan.mode == Mode::Offline {
        eprintln!("WARNING: --offline: no readiness, safety, availability, PDB or capacity check was run");
    }
    for rule in &p.unused_accepts {
        eprintln!(
            "WARNING: accept {rule}: no such blocker in this plan (check the subject as the plan prints it)"
        );
    }
}

pub async fn run(args: PlanArgs, format: Format) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(args.catalog.as_deref())?;
    let request = parse_to(&args)?;
    let plan_file = read_plan_file(args.file.as_deref())?;
    let input = plan_input(&args, catalog, request, plan_file)?;
    let not_after = args.not_after.as_deref().map(crate::commands::upgrade::parse_not_after).transpose()?;
    let conn = connect(&args).await?;
    let prepared = match prepare(&conn, &input).await {
        Ok(p) => p,
        Err(PrepareError::NothingToDo(m)) => return Err(usage(nothing_to_do(&m))),
        Err(e) => return Err(prepare_error(e)),
    };
    warn_offline(&prepared);
    let window = not_after.map(|t| t.duration_since(std::time::SystemTime::now()).unwrap_or_default());
    let out = PlanOutput::new(&conn.context, &prepared).with_eta(&prepared, window);
    if !print_structured(format, &out)? {
        print!("{}", render(&out));
    }
    Ok(if prepared.plan.blocked { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The expected duration, and the warning when the window is too short.
fn render_eta(e: &refit_engine::prepare::PlanEta) -> String {
    let mins = |secs: u64| format!("{}m{:02}s", secs / 60, secs % 60);
    let phases: Vec<String> = e
        .phases
        .iter()
        .map(|p| format!("{} after {}", refit_core::run::phase_name(p.kind), mins(p.ends_in.as_secs())))
        .collect();
    let mut s = format!(
        "Expected duration (estimated per node, refined by the run as nodes finish): {}; the run ends after {}\n",
        phases.join(", "),
        mins(e.ends_in_secs)
    );
    if let Some(w) = &e.window {
        if w.fits {
            s.push_str("It is expected to end before --not-after.\n");
        } else {
            s.push_str(&format!(
                "WARNING: the run is not expected to end before --not-after: about {} of {} nodes finish inside the window ({} start before it; the run then pauses, and a rerun continues)\n",
                w.finished, w.nodes, w.started
            ));
        }
    }
    s.push('\n');
    s
}

/// What `auto` would do now, in a sentence or two.
fn render_auto(a: &refit_engine::prepare::AutoPreview) -> String {
    let how = format!(
        "max-unavailable auto (cap {}, {}): each worker batch is chosen from the live cluster before it starts",
        a.settings.cap,
        if a.settings.across_zones { "across zones" } else { "one zone at a time" }
    );
    let now = match &a.first {
        refit_core::batch::Next::Batch(c) => format!(
            "first batch now: {} node(s){} ({}); not larger: {}",
            c.nodes.len(),
            c.zone.as_ref().map(|z| format!(" in zone {z}")).unwrap_or_default(),
            c.nodes.join(", "),
            c.limit
        ),
        refit_core::batch::Next::Alone { node, hold } => {
            format!("first batch now: {node} alone, its drain waiting on a budget: {hold}")
        }
        refit_core::batch::Next::Wait(hold) => format!("no worker batch can start now: {hold}"),
    };
    format!("{how}\n{now}\n(the table's worker batches show the cap)\n\n")
}

/// The plan as tables.
pub fn render(o: &PlanOutput<'_>) -> String {
    let p = o.plan;
    let pace = match o.surge {
        Some(l) => format!(
            "{l} (replace: up to {} replacement(s) created ahead of the old nodes, each old node cordoned once its replacement is Ready; {} old node(s) may drain before theirs exists)",
            l.surge, l.unavailable
        ),
        None => format!("max-unavailable {}", p.max_unavailable),
    };
    let mut s = format!(
        "Plan for context {}: {} → {} (hops: {}), mode {:?}, policy {}, {pace}\n\n",
        o.context,
        o.current,
        p.target,
        if o.path.is_empty() { "none".into() } else { o.path.join(" → ") },
        p.mode,
        o.policy,
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
                crate::remedy::sentence(&f.message, &f.remedy),
            ]);
        }
        s.push_str(&format!("Findings\n{t}\n\n"));
    }
    if !p.accepted.is_empty() {
        let mut t = table(&["check", "subject", "node", "accepted by", "risk taken on"]);
        for a in &p.accepted {
            t.add_row(vec![
                a.finding.check.to_string(),
                a.finding.subject.clone(),
                a.finding.node.clone().unwrap_or_default(),
                format!("{} {}", a.origin, a.rule),
                a.finding.message.clone(),
            ]);
        }
        s.push_str(&format!("Accepted (not blocking)\n{t}\n\n"));
    }
    if let Some(r) = o.reach {
        s.push_str(&crate::commands::reach::render(r));
    }
    if let Some(a) = o.auto {
        s.push_str(&render_auto(a));
    }
    if let Some(e) = &o.eta {
        s.push_str(&render_eta(e));
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
    let acceptable: Vec<String> = p
        .findings
        .iter()
        .filter(|f| f.severity == refit_core::checks::Severity::Blocker)
        .filter_map(refit_core::accept::AcceptRule::exact)
        .map(|r| format!("--accept {r}"))
        .collect();
    if p.blocked && !acceptable.is_empty() {
        s.push_str(&format!(
            "\nTo take on a blocker of Kismatic's table after checking it, accept it by name: {}\n",
            acceptable.join(" ")
        ));
    }
    s.push_str(if p.blocked {
        "\nBLOCKED: fix the blockers above, accept them one by one (--accept), or choose --partial-ok / --ignore-safety-checks.\n"
    } else {
        "\nReady: nothing blocks this plan.\n"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_core::checks::CheckOptions;
    use refit_core::plan::MaxUnavailable;
    use refit_core::plan::PlanOptions;
    use refit_core::snapshot::Snapshot;

    #[test]
    fn a_refused_partial_plan_names_the_flags_of_this_command_line() {
        let e = refit_core::plan::PlanError::PartialControlPlane("cp-1".into());
        assert_eq!(
            refused(&e),
            "--partial-ok leaves out workers only, but cp-1 failed its checks; fix it first \
             (or accept its findings one by one with --accept CHECK=SUBJECT)"
        );
    }
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
            policy: Default::default(),
            plan,
            reach: None,
            auto: None,
            surge: None,
            eta: None,
        }
    }

    fn make() -> Plan {
        make_accepting(&Default::default())
    }

    fn make_accepting(accept: &refit_core::accept::Acceptances) -> Plan {
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
        refit_core::preflight::preflight_accepting(&snapshot(), None, vec![], &plan_opts, &check_opts, accept)
            .unwrap()
    }

    #[test]
    fn accepted_findings_are_listed_apart_and_open_ones_say_how_to_accept_them() {
        let plan = make_accepting(&refit_core::accept::Acceptances::new(
            &["control-plane-count".parse().unwrap()],
            &["local-data=pod/shop/debug".parse().unwrap()],
        ));
        let mut out = output(&plan);
        out.policy = refit_core::path::Policy::Strict;
        let text = render(&out);
        assert!(text.contains("policy strict"), "{text}");
        let (open, accepted) = text.split_once("Accepted (not blocking)").expect(&text);
        assert!(
            accepted.contains("plan file control-plane-count")
                && accepted.contains("--accept local-data=pod/shop/debug"),
            "{accepted}"
        );
        assert!(
            !open.contains("control-plane-count"),
            "accepted findings are not among the open ones: {open}"
        );
        assert!(
            text.contains("--accept unmanaged-pod=pod/shop/debug"),
            "the open Kismatic blocker says how: {text}"
        );
        assert!(!text.contains("--accept pdb-never-allows"), "a PDB is not accepted by name");
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["policy"], "strict");
        assert_eq!(json["accepted"][0]["origin"], "plan-file");
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
