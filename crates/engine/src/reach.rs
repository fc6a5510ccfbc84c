//! The target probe step of preparation (called once from [`crate::prepare::prepare`]): asks
//! every planned node, through its action, which versions it can reach (refit_exec::probe),
//! lets core decide (refit_core::reach: `--to 1.37` resolved to what the nodes offer, blockers
//! for the rest) and keeps the report `refit plan` prints, with `kubeadm upgrade plan`'s
//! component targets when the action is the ssh kubeadm recipe.

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
use refit_exec::NodeContext;
use refit_exec::probe::{KubeadmPlan, ProbeRequest, TargetProbe, probe_nodes, readiness_nodes};
use serde::Serialize;

use crate::prepare::PrepareError;

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
    /// Each node's identity as the readiness probe read it (ssh action): the run's action
    /// checks it reaches the same hosts.
    pub identities: BTreeMap<String, refit_core::identity::HostIdentity>,
}

/// What the readiness probe checks (core::readiness): free room, pre-installed packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadinessInput {
    /// `--min-free-disk` in bytes (0: not checked).
    pub min_free: u64,
}

/// `refit plan`'s target-reach section.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct NodeReach {
    /// Versions it must reach.
    pub needs: BTreeSet<refit_core::Version>,
    /// What its probe saw.
    pub observed: Observation,
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
    policy: Policy,
    today: jiff::civil::Date,
    readiness: ReadinessInput,
) -> Result<Reached, PrepareError> {
    let unprobed = |path, not_run: Vec<String>| Reached {
        path,
        findings: Vec::new(),
        not_run,
        report: None,
        identities: BTreeMap::new(),
    };
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
    let resolved = upgrade_path(&narrowed, &path.from, request, policy, force, today)?;
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
    // Readiness over the same transport (ssh): room on the filesystems the upgrade writes,
    // pre-installed packages, and who each host is.
    let mut identities = BTreeMap::new();
    if let TargetProbe::Ssh { options, .. } = probe {
        let preinstalled = matches!(plan_file.action, Some(Action::Ssh { packages_preinstalled: true, .. }));
        let ctxs: Vec<NodeContext> = asked.iter().map(|r| r.ctx.clone()).collect();
        let seen = readiness_nodes(options, ctxs, preinstalled, PROBE_TIMEOUT).await;
        for (node, result) in &seen {
            let to = asked.iter().find(|r| &r.ctx.node == node).and_then(|r| r.ctx.to.parse().ok());
            let req = refit_core::readiness::Requirements {
                min_free: readiness.min_free,
                preinstalled: if preinstalled { to } else { None },
            };
            findings.extend(refit_core::readiness::findings(
                node,
                result.as_ref().map_err(String::as_str),
                &req,
            ));
            if let Ok(r) = result {
                identities.insert(
                    node.clone(),
                    refit_core::identity::HostIdentity {
                        hostname: r.hostname.clone(),
                        machine_id: r.machine_id.clone(),
                    },
                );
            }
        }
    }
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
        identities,
    })
}
