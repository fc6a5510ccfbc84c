//! The target probe step of `refit plan` / `refit upgrade` (called once from `prepare`): asks
//! every planned node, through its action, which versions it can reach (refit_exec::probe),
//! lets core decide (refit_core::reach: `--to 1.37` resolved to what the nodes offer, blockers
//! for the rest), and prints the section — with `kubeadm upgrade plan`'s component targets when
//! the action is the ssh kubeadm recipe.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use refit_core::VersionRequest;
use refit_core::catalog::Catalog;
use refit_core::checks::Finding;
use refit_core::path::{Policy, UpgradePath, upgrade_path};
use refit_core::plan::{PlanOptions, Role};
use refit_core::planfile::{Action, PlanFile};
use refit_core::reach::{self, Observation};
use refit_core::run::{Style, phase_name, role_name, schedule};
use refit_core::snapshot::Snapshot;
use refit_exec::probe::{KubeadmPlan, ProbeRequest, TargetProbe, probe_nodes};
use refit_exec::{NodeContext, SshOptions};
use serde::Serialize;

use crate::output::{table, usage};

/// How long one node's probe may take (apt updates per minor; kubeadm's plan waits up to a
/// minute for its health-check Job).
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the probe step decided.
pub struct Reached {
    /// The path, re-resolved against what the nodes can reach.
    pub path: UpgradePath,
    /// Blockers and notes for preflight.
    pub findings: Vec<Finding>,
    /// Checks that could not run.
    pub not_run: Vec<String>,
    /// The section `refit plan` prints (None: nothing was probed).
    pub report: Option<ReachReport>,
}

/// `refit plan`'s target-reach section.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReachReport {
    /// How the action was probed.
    pub probe: &'static str,
    /// Per node: the versions it needs and what the probe saw.
    pub nodes: BTreeMap<String, NodeReach>,
    /// What `kubeadm upgrade plan` says on the first control-plane node (ssh action).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeadm_plan: Option<KubeadmPlan>,
}

/// One node's line of the section.
#[derive(Debug, Serialize)]
pub struct NodeReach {
    /// Versions it must reach.
    pub needs: BTreeSet<refit_core::Version>,
    /// What its probe saw.
    pub observed: Observation,
}

/// The probe of the node action `--action` (else the plan file's) names; None when it has none
/// (an `exec:` flag, an exec action without `probe`, a replace action, no action).
pub fn target_probe(flag: Option<&str>, plan: &PlanFile) -> anyhow::Result<Option<TargetProbe>> {
    let kind = flag.map(|f| f.split_once(':').map_or(f, |(k, _)| k));
    if matches!(kind, Some("sandbox" | "replace-sandbox")) {
        let versions = refit_testbed::TestbedVersions::from_env()?;
        let mut buildable: BTreeSet<refit_core::Version> = versions.kubernetes.iter().cloned().collect();
        buildable.extend(refit_testbed::Cache::from_env()?.built_kubernetes());
        return Ok(Some(TargetProbe::Releases(buildable)));
    }
    let ssh_default;
    let action = match kind {
        None => plan.action.as_ref(),
        Some("ssh") => match &plan.action {
            Some(a @ Action::Ssh { .. }) => Some(a),
            _ => {
                ssh_default = PlanFile::from_yaml("action: {type: ssh}")
                    .map_err(|e| usage(format!("internal: the default ssh action does not parse: {e}")))?
                    .action;
                ssh_default.as_ref()
            }
        },
        Some(_) => None,
    };
    Ok(match action {
        Some(a @ Action::Ssh { .. }) => SshOptions::from_action(a).map(|options| TargetProbe::Ssh {
            options,
            kubeadm: refit_exec::kubeadm::KubeadmOptions::from_action(a),
        }),
        Some(Action::Exec { probe, .. }) if !probe.is_empty() => {
            Some(TargetProbe::Exec { command: probe.clone() })
        }
        _ => None,
    })
}

/// Probes the planned nodes and decides. `path` is the catalog's; `draft` the plan options
/// with its target.
#[allow(clippy::too_many_arguments)]
pub async fn probe(
    probe: Option<&TargetProbe>,
    snapshot: &Snapshot,
    plan_file: &PlanFile,
    catalog: &Catalog,
    request: &VersionRequest,
    path: UpgradePath,
    draft: &PlanOptions,
    force: bool,
) -> anyhow::Result<Reached> {
    let unprobed = |path, not_run: Vec<String>| Reached { path, findings: Vec::new(), not_run, report: None };
    let Some(probe) = probe else { return Ok(unprobed(path, Vec::new())) };
    if draft.mode == refit_core::plan::Mode::Offline {
        return Ok(unprobed(path, vec!["target probe (--offline)".into()]));
    }
    // The plan without findings at `path`'s target: which nodes are upgraded, in which roles.
    let plan_for = |path: &UpgradePath| {
        refit_core::plan::build(
            snapshot,
            Vec::new(),
            &PlanOptions { target: path.to.clone(), ..draft.clone() },
        )
    };
    if plan_for(&path).is_err() {
        // Nothing to do, or --partial-ok refusing: preflight reports it as before.
        return Ok(unprobed(path, Vec::new()));
    }
    let addresses =
        plan_file.addresses(snapshot.nodes.iter().map(|n| (n.name.as_str(), n.address.as_deref())));
    let requests = |path: &UpgradePath| -> Vec<ProbeRequest> {
        let Ok(plan) = plan_for(path) else { return Vec::new() };
        let sched = schedule(&plan, path, Style::InPlace, 1, false);
        let needs = reach::needs(&sched);
        let first = reach::first_control_plane(&sched);
        let mut last: BTreeMap<&str, &refit_core::run::UnitWork> = BTreeMap::new();
        for (_, u) in sched.units() {
            last.insert(u.node.as_str(), u);
        }
        last.into_iter()
            .filter(|(_, u)| {
                // The kubeadm recipe does nothing on an etcd-only host: nothing to reach there.
                !matches!(probe, TargetProbe::Ssh { .. })
                    || u.roles.contains(&Role::ControlPlane)
                    || u.roles.contains(&Role::Worker)
            })
            .map(|(node, u)| ProbeRequest {
                ctx: NodeContext {
                    node: node.to_string(),
                    roles: u.roles.iter().map(|r| role_name(*r).to_string()).collect(),
                    from: u.from.clone(),
                    to: u.to.to_string(),
                    phase: phase_name(u.phase()).to_string(),
                    address: addresses.get(node).cloned().unwrap_or_default(),
                    first_control_plane: u.first_control_plane,
                },
                versions: needs.get(node).cloned().unwrap_or_default(),
                kubeadm_plan: first.as_ref().filter(|(n, _)| n == node).map(|(_, v)| v.clone()),
            })
            .collect()
    };
    // Ask about every minor the catalog's path crosses; which patch of each is then decided by
    // what the nodes offer. kubeadm's plan waits for the decision (it plans one exact version).
    let without_plan = |mut r: Vec<ProbeRequest>| {
        r.iter_mut().for_each(|r| r.kubeadm_plan = None);
        r
    };
    let mut report = probe_nodes(probe, without_plan(requests(&path)), PROBE_TIMEOUT).await;
    let narrowed =
        reach::narrow(catalog, path.from.minor_version(), reach::kept_minor(request), &report.observed);
    let today = jiff::Zoned::now().date();
    let resolved = upgrade_path(&narrowed, &path.from, request, Policy::Default, force, today)
        .map_err(|e| usage(e.to_string()))?;
    let asked = requests(&resolved);
    match probe {
        // An exec probe answers for exact versions: ask again about the ones now chosen.
        TargetProbe::Exec { .. } if resolved != path => {
            report = probe_nodes(probe, without_plan(asked.clone()), PROBE_TIMEOUT).await;
        }
        TargetProbe::Ssh { .. } => {
            let first: Vec<ProbeRequest> =
                asked.iter().filter(|r| r.kubeadm_plan.is_some()).cloned().collect();
            if !first.is_empty() {
                report.kubeadm_plan = probe_nodes(probe, first, PROBE_TIMEOUT).await.kubeadm_plan;
            }
        }
        _ => {}
    }
    let needs: BTreeMap<String, BTreeSet<refit_core::Version>> =
        asked.iter().map(|r| (r.ctx.node.clone(), r.versions.clone())).collect();
    let mut findings = reach::findings(&needs, &report.observed);
    findings.extend(reach::resolution_note(request, &path.to, &resolved.to));
    if let Some(p) = &report.kubeadm_plan
        && let Some(e) = &p.error
    {
        findings.push(reach::kubeadm_plan_refused(&p.node, &p.version, e));
    }
    let not_run = report.not_probed.iter().map(|(n, why)| format!("target probe of {n} ({why})")).collect();
    let kind = match probe {
        TargetProbe::Ssh { .. } => "ssh: each node's package repository (apt)",
        TargetProbe::Exec { .. } => "exec: the plan file's probe command",
        TargetProbe::Releases(_) => "sandbox: the releases it can build",
    };
    let nodes = report
        .observed
        .into_iter()
        .map(|(n, observed)| {
            let needs = needs.get(&n).cloned().unwrap_or_default();
            (n, NodeReach { needs, observed })
        })
        .collect();
    Ok(Reached {
        path: resolved,
        findings,
        not_run,
        report: Some(ReachReport { probe: kind, nodes, kubeadm_plan: report.kubeadm_plan }),
    })
}

/// The section as text.
pub fn render(r: &ReachReport) -> String {
    let mut t = table(&["node", "needs", "can reach"]);
    for (node, n) in &r.nodes {
        let seen = match &n.observed {
            Observation::Offers { minors, .. } => minors
                .iter()
                .map(|(m, o)| match (&o.error, o.releases.is_empty()) {
                    (Some(e), true) => format!("{m}: {e}"),
                    (_, true) => format!("{m}: none"),
                    _ => o.releases.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Observation::Answers { versions } => versions
                .iter()
                .map(|(v, a)| match a {
                    Ok(()) => v.to_string(),
                    Err(_) => format!("not {v}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Observation::Failed { reason } => format!("probe failed: {reason}"),
        };
        let needs = n.needs.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
        t.add_row(vec![node.clone(), needs, seen]);
    }
    let mut s = format!("Target reach ({})\n{t}\n\n", r.probe);
    if let Some(p) = &r.kubeadm_plan {
        s.push_str(&format!(
            "kubeadm upgrade plan {} on {} (the target's kubeadm, fetched, not installed)\n",
            p.version.git_version(),
            p.node
        ));
        match &p.error {
            Some(e) => s.push_str(&format!("  refused: {e}\n\n")),
            None => {
                let mut t = table(&["component", "node", "current", "target"]);
                for c in &p.components {
                    t.add_row(vec![
                        c.name.clone(),
                        c.node_name.clone().unwrap_or_default(),
                        c.current_version.clone(),
                        c.new_version.clone(),
                    ]);
                }
                s.push_str(&format!("{t}\n"));
                let manual: Vec<&str> = p
                    .config_versions
                    .iter()
                    .filter(|c| c.manual_upgrade_required)
                    .map(|c| c.group.as_str())
                    .collect();
                if !manual.is_empty() {
                    s.push_str(&format!(
                        "  component configs to convert by hand first: {}\n",
                        manual.join(", ")
                    ));
                }
                s.push('\n');
            }
        }
    }
    s
}
