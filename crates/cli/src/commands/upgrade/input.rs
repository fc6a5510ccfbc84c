//! `refit upgrade`'s input: every argument parsed and checked before the cluster is touched,
//! and each file (catalog, plan file) read once.

use std::path::PathBuf;
use std::time::Duration;

use refit_core::VersionRequest;
use refit_core::planfile::{Action, NamedAction};
use refit_core::run::OnUndrainable;
use refit_engine::lifecycle::Behaviour;
use refit_engine::upgrade::Request;
use refit_engine::{BackupSpec, EtcdEndpointSpec, NodeAction};

use crate::args::UpgradeArgs;
use crate::commands::load_catalog;
use crate::commands::plan::{parse_to, plan_input, read_plan_file};
use crate::output::usage;

/// Everything `refit upgrade` was asked, parsed.
pub struct Input {
    /// The upgrade, as the engine takes it.
    pub request: Request,
    /// `--not-after`.
    pub not_after: Option<std::time::SystemTime>,
    /// The journal's file.
    pub store_path: PathBuf,
    /// `--stop-grace`.
    pub stop_grace: Duration,
}

impl Input {
    /// Parses and checks every argument (bad input: exit 2, nothing read from the cluster).
    pub fn parse(args: &UpgradeArgs) -> anyhow::Result<Input> {
        // Durations and the eviction concurrency were checked by clap (core's ranges).
        let (drain_timeout, node_timeout, stop_grace) =
            (args.drain_timeout, args.node_timeout, args.stop_grace);
        let on_undrainable: OnUndrainable =
            args.on_undrainable.parse().map_err(crate::remedy::usage_spelled)?;
        let on_gate_failure: refit_core::health::OnGateFailure =
            args.on_gate_failure.parse().map_err(|e: String| usage(format!("--on-gate-failure {e}")))?;
        let plan_file = read_plan_file(args.plan.file.as_deref())?;
        let gates = plan_file.health_gates().map_err(|e| usage(e.to_string()))?;
        let action = resolve_action(args.plan.action.as_deref(), plan_file.action.as_ref())?;
        let request: VersionRequest = parse_to(&args.plan)?;
        let store_path = store_path(args)?;
        let backup_dir = args.backup_dir.clone().unwrap_or_else(|| {
            store_path.parent().map(|p| p.join("backups")).unwrap_or_else(|| PathBuf::from("backups"))
        });
        let backup = backup_spec(args, backup_dir, action.as_ref(), args.plan.action.as_deref())?;
        let not_after = args.plan.not_after.as_deref().map(parse_not_after).transpose()?;
        let catalog = load_catalog(args.plan.catalog.as_deref())?;
        let plan = plan_input(&args.plan, catalog, request, plan_file)?;
        let behaviour = Behaviour {
            on_undrainable,
            drain_timeout_secs: drain_timeout.as_secs(),
            node_timeout_secs: node_timeout.as_secs(),
            eviction_concurrency: args.eviction_concurrency,
            drain_rules: plan.drain,
            on_gate_failure,
        };
        // The control-plane gate reads the etcd the flags name, else the one the backup
        // reaches (a sandbox's), whatever the backup itself does (a command, opted out).
        let etcd_health = match &backup {
            _ if !args.etcd_endpoints.is_empty() => etcd_endpoints(args)?,
            Some(BackupSpec::Etcd { endpoints, .. }) => endpoints.clone(),
            _ => Vec::new(),
        };
        let request = Request {
            cluster_services: !args.skip_cluster_services && !plan.control_plane_only,
            plan,
            action,
            behaviour,
            backup,
            gates,
            etcd_health,
            control_plane_gate: args.control_plane_gate_timeout,
            confirm_downgrade: args.confirm_downgrade,
            abandon: args.abandon,
        };
        Ok(Input { request, not_after, store_path, stop_grace })
    }
}

/// The node action from `--action`, else the plan file's.
pub(crate) fn resolve_action(
    flag: Option<&str>,
    plan_action: Option<&Action>,
) -> anyhow::Result<Option<NodeAction>> {
    let exe = || -> anyhow::Result<String> {
        Ok(std::env::current_exe()
            .map_err(|e| usage(format!("cannot locate the refit binary: {e}")))?
            .display()
            .to_string())
    };
    let Some(flag) = flag else {
        return Ok(match plan_action {
            Some(Action::Exec { command, .. }) => Some(NodeAction::Exec { command: command.clone() }),
            Some(a @ Action::Ssh { .. }) => {
                Some(NodeAction::Ssh { action: a.clone(), identities: Default::default() })
            }
            Some(Action::Replace { create, remove, control_plane, carry_over }) => {
                Some(NodeAction::Replace {
                    create: create.clone(),
                    remove: remove.clone(),
                    control_plane: control_plane.clone(),
                    carry_over: carry_over.clone(),
                })
            }
            None => None,
        });
    };
    // The sandbox's own commands, with its directory spelled out (the action runs in another
    // process): `sandbox` uses $REFIT_SANDBOX_DIR or the default, `sandbox:DIR` names it.
    let sandbox = |dir: Option<&str>| -> anyhow::Result<(String, String)> {
        Ok((exe()?, sandbox_dir(dir)?.display().to_string()))
    };
    let named =
        NamedAction::parse(flag).map_err(|e| usage(format!("--action '{flag}': expected {}", e.expected)))?;
    let action = match named {
        NamedAction::Sandbox(arg) => {
            let (exe, dir) = sandbox(arg)?;
            NodeAction::Exec {
                command: svec(&[&exe, "sandbox", "upgrade-node", "--dir", &dir, "{node}", "--to", "{to}"]),
            }
        }
        NamedAction::ReplaceSandbox(arg) => {
            let (exe, dir) = sandbox(arg)?;
            NodeAction::Replace {
                create: svec(&[&exe, "sandbox", "add-node", "--dir", &dir, "{new}", "--version", "{to}"]),
                remove: svec(&[&exe, "sandbox", "remove-node", "--dir", &dir, "{node}"]),
                control_plane: svec(&[
                    &exe,
                    "sandbox",
                    "upgrade-node",
                    "--dir",
                    &dir,
                    "{node}",
                    "--to",
                    "{to}",
                ]),
                // The plan file still says what the replacement takes over.
                carry_over: match plan_action {
                    Some(Action::Replace { carry_over, .. }) => carry_over.clone(),
                    _ => Default::default(),
                },
            }
        }
        NamedAction::Ssh => match plan_action {
            Some(a @ Action::Ssh { .. }) => {
                NodeAction::Ssh { action: a.clone(), identities: Default::default() }
            }
            _ => NodeAction::Ssh {
                identities: Default::default(),
                action: refit_core::planfile::PlanFile::from_yaml("action: {type: ssh}")
                    .ok()
                    .and_then(|p| p.action)
                    .ok_or_else(|| usage("internal: the default ssh action does not parse"))?,
            },
        },
        NamedAction::Exec(cmd) => {
            let command: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
            let probe = refit_core::planfile::PlanFile {
                action: Some(Action::Exec { command: command.clone(), probe: Vec::new() }),
                ..Default::default()
            };
            probe.validate(&Default::default()).map_err(|e| usage(format!("--action: {e}")))?;
            NodeAction::Exec { command }
        }
    };
    Ok(Some(action))
}

/// The sandbox `--action sandbox[:DIR]` / `replace-sandbox[:DIR]` names: DIR, else
/// $REFIT_SANDBOX_DIR, else the default.
fn sandbox_dir(dir: Option<&str>) -> anyhow::Result<PathBuf> {
    Ok(match dir {
        Some(d) => PathBuf::from(d),
        None => crate::commands::sandbox::sandbox_dir(&crate::args::SandboxDir {
            dir: std::env::var_os("REFIT_SANDBOX_DIR").map(PathBuf::from),
        })?,
    })
}

fn svec(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The etcd backup this command asks for: `--no-etcd-backup`, `--backup-command`,
/// `--etcd-endpoint` (with its certificates), else the action's own way — the ssh action takes
/// the snapshot on a control-plane node, a testbed sandbox names its etcd — else none.
fn backup_spec(
    args: &UpgradeArgs,
    dir: PathBuf,
    action: Option<&NodeAction>,
    action_flag: Option<&str>,
) -> anyhow::Result<Option<BackupSpec>> {
    if args.no_etcd_backup {
        return Ok(Some(BackupSpec::OptedOut));
    }
    if let Some(cmd) = &args.backup_command {
        let command: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
        if command.is_empty() {
            return Err(usage("--backup-command is empty"));
        }
        return Ok(Some(BackupSpec::Command { command, dir }));
    }
    if args.etcd_endpoints.is_empty() {
        if matches!(action, Some(NodeAction::Ssh { .. })) {
            return Ok(Some(BackupSpec::Node { dir }));
        }
        return sandbox_backup(action_flag, dir);
    }
    Ok(Some(BackupSpec::Etcd { endpoints: etcd_endpoints(args)?, dir }))
}

/// `--etcd-endpoint` with its certificates: what the backup and the control-plane gate reach.
fn etcd_endpoints(args: &UpgradeArgs) -> anyhow::Result<Vec<EtcdEndpointSpec>> {
    let need = |v: &Option<PathBuf>, flag: &str| -> anyhow::Result<PathBuf> {
        let p = v.clone().ok_or_else(|| usage(format!("--etcd-endpoint needs {flag}")))?;
        if !p.exists() {
            return Err(usage(format!("{flag} {}: no such file", p.display())));
        }
        Ok(p)
    };
    let (ca, cert, key) = (
        need(&args.etcd_cacert, "--etcd-cacert")?,
        need(&args.etcd_cert, "--etcd-cert")?,
        need(&args.etcd_key, "--etcd-key")?,
    );
    args.etcd_endpoints
        .iter()
        .map(|url| {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(usage(format!(
                    "--etcd-endpoint '{url}' is not a URL (e.g. https://10.0.0.5:2379)"
                )));
            }
            Ok(EtcdEndpointSpec {
                url: url.clone(),
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
}

/// A testbed sandbox knows its etcd (`state.json`: client URL, CA, a client certificate):
/// `--action sandbox[:DIR]` and `replace-sandbox[:DIR]` back it up through the etcd API.
fn sandbox_backup(action_flag: Option<&str>, dir: PathBuf) -> anyhow::Result<Option<BackupSpec>> {
    let Some(flag) = action_flag else { return Ok(None) };
    let Some(arg) = NamedAction::parse(flag).ok().and_then(NamedAction::sandbox) else { return Ok(None) };
    let sandbox = sandbox_dir(arg)?;
    if !sandbox.join("state.json").exists() {
        // Not a testbed sandbox (or not up): nothing known about its etcd.
        return Ok(None);
    }
    let tb = refit_testbed::Testbed::attach(&sandbox)
        .map_err(|e| usage(format!("--action {flag}: reading the sandbox's etcd: {e}")))?;
    let (url, pki) = tb.etcd_endpoint();
    let endpoint =
        EtcdEndpointSpec { url, ca_file: pki.ca_cert, cert_file: pki.admin_cert, key_file: pki.admin_key };
    Ok(Some(BackupSpec::Etcd { endpoints: vec![endpoint], dir }))
}

fn store_path(args: &UpgradeArgs) -> anyhow::Result<PathBuf> {
    match &args.store {
        Some(p) => Ok(p.clone()),
        None => Ok(refit_store::default_path()?),
    }
}

/// `--not-after`: an RFC 3339 instant with its offset (a bare local time would be ambiguous).
pub(crate) fn parse_not_after(s: &str) -> anyhow::Result<std::time::SystemTime> {
    let t: jiff::Timestamp = s.parse().map_err(|e| {
        usage(format!("--not-after '{s}': {e}; write an RFC 3339 instant such as 2026-12-05T06:00:00Z"))
    })?;
    Ok(std::time::SystemTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_from_the_flag_never_go_through_a_shell() {
        let a = resolve_action(Some("exec:./up.sh {node} --to={to}"), None).unwrap().unwrap();
        assert_eq!(
            a,
            NodeAction::Exec { command: vec!["./up.sh".into(), "{node}".into(), "--to={to}".into()] }
        );
        assert!(resolve_action(Some("exec:./up.sh {nod}"), None).is_err(), "unknown placeholder");
        assert!(resolve_action(Some("teleport"), None).is_err());
        assert!(matches!(resolve_action(Some("ssh"), None).unwrap(), Some(NodeAction::Ssh { .. })));
        assert!(resolve_action(None, None).unwrap().is_none());
    }
}
