//! How `refit plan` / `refit upgrade` name the target probe of their node action (the probe
//! itself runs in the engine's preparation, refit_engine::reach) and how the section prints.

use std::collections::BTreeSet;

use refit_core::planfile::{Action, NamedAction, PlanFile};
use refit_core::reach::Observation;
use refit_engine::reach::ReachReport;
use refit_exec::SshOptions;
use refit_exec::probe::TargetProbe;

use crate::output::{table, usage};

/// The probe of the node action `--action` (else the plan file's) names; None when it has none
/// (an `exec:` flag, an exec action without `probe`, a replace action, no action).
pub fn target_probe(flag: Option<&str>, plan: &PlanFile) -> anyhow::Result<Option<TargetProbe>> {
    // An action word that does not parse names no probe here: the upgrade refuses it.
    let named = flag.map(NamedAction::parse);
    if matches!(named, Some(Ok(NamedAction::Sandbox(_) | NamedAction::ReplaceSandbox(_)))) {
        let versions = refit_testbed::TestbedVersions::from_env()?;
        let mut buildable: BTreeSet<refit_core::Version> = versions.kubernetes.iter().cloned().collect();
        buildable.extend(refit_testbed::Cache::from_env()?.built_kubernetes());
        return Ok(Some(TargetProbe::Releases(buildable)));
    }
    let ssh_default;
    let action = match named {
        None => plan.action.as_ref(),
        Some(Ok(NamedAction::Ssh)) => match &plan.action {
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
