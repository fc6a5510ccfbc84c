//! `refit fleet member add|update|list|show|remove`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use refit_core::fleet::MaintenanceWindow;
use refit_core::planfile::{NAMED_ACTIONS, NamedAction};
use refit_store::fleet::MemberRecord;

use super::args::{MemberCommand, MemberFields};
use refit_fleet::FleetApi;

use super::{check_name, fleet_err, read_file};
use crate::output::{Format, print_structured, table, usage};

pub async fn run<A: FleetApi>(cmd: MemberCommand, api: &mut A, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        MemberCommand::Add { name, fields } => {
            check_name("member", &name)?;
            let mut m = MemberRecord { name, ..Default::default() };
            apply_fields(&mut m, &fields)?;
            if api.get_member(&m.name).await.map_err(fleet_err)?.is_some() {
                return Err(usage(format!("member '{}' exists already", m.name)));
            }
            let (Some(kubeconfig), Some(context)) = (&m.kubeconfig, &m.context) else {
                return Err(usage(
                    "--kubeconfig and --context are required: a member is bound to the one cluster they reach",
                ));
            };
            m.cluster_uid = Some(identity(kubeconfig, context).await?);
            api.add_member(&m).await.map_err(fleet_err)?;
            done(format, &m, "added")
        }
        MemberCommand::Update { name, fields, clear_window, clear_labels } => {
            let mut m =
                api.get_member(&name).await.map_err(fleet_err)?.ok_or_else(|| {
                    usage(format!("no member named '{name}' (see refit fleet member list)"))
                })?;
            if clear_window {
                m.maintenance_window = None;
            }
            if clear_labels {
                m.labels.clear();
            }
            apply_fields(&mut m, &fields)?;
            if fields.kubeconfig.is_some() || fields.context.is_some() {
                let (Some(kubeconfig), Some(context)) = (&m.kubeconfig, &m.context) else {
                    return Err(usage(
                        "give both --kubeconfig and --context: a member is bound to one cluster",
                    ));
                };
                let found = identity(kubeconfig, context).await?;
                let uid = refit_core::fleet::binding::rebind(m.cluster_uid.as_deref(), &found).map_err(|e| {
                    usage(format!(
                        "--kubeconfig/--context reach another cluster (kube-system UID {}) than member {}'s ({}): a member stays bound to its cluster; remove it and add it again to bind another",
                        e.found, m.name, e.bound
                    ))
                })?;
                m.cluster_uid = Some(uid);
            }
            api.update_member(&m).await.map_err(fleet_err)?;
            done(format, &m, "updated")
        }
        MemberCommand::List => {
            let members = api.list_members().await.map_err(fleet_err)?;
            if !print_structured(format, &members)? {
                let mut t = table(&["name", "update group", "labels", "window", "context", "action"]);
                for m in &members {
                    t.add_row(vec![
                        m.name.clone(),
                        m.update_group.clone().unwrap_or_default(),
                        labels(&m.labels),
                        m.maintenance_window.as_ref().map(describe_window).unwrap_or_default(),
                        m.context.clone().unwrap_or_default(),
                        m.action.clone().unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        MemberCommand::Show { name } => {
            let m =
                api.get_member(&name).await.map_err(fleet_err)?.ok_or_else(|| {
                    usage(format!("no member named '{name}' (see refit fleet member list)"))
                })?;
            if !print_structured(format, &m)? {
                print!("{}", serde_saphyr::to_string(&m)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        MemberCommand::Remove { name } => {
            if !api.remove_member(&name).await.map_err(fleet_err)? {
                return Err(usage(format!("no member named '{name}' (see refit fleet member list)")));
            }
            if format.is_table() {
                println!("member {name} removed");
            } else {
                print_structured(format, &serde_json::json!({"removed": name}))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The identity (kube-system UID) of the cluster a kubeconfig and context reach.
async fn identity(kubeconfig: &str, context: &str) -> anyhow::Result<String> {
    refit_fleet::observe::cluster_identity(Path::new(kubeconfig), context).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot read the identity of the cluster --kubeconfig {kubeconfig} --context {context} reach: {e}; nothing was changed"
        )
    })
}

fn done(format: Format, m: &MemberRecord, what: &str) -> anyhow::Result<ExitCode> {
    if !print_structured(format, m)? {
        println!("member {} {what}", m.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// Validates every given option before anything is written.
fn apply_fields(m: &mut MemberRecord, f: &MemberFields) -> anyhow::Result<()> {
    if let Some(k) = &f.kubeconfig {
        if !k.exists() {
            return Err(usage(format!("--kubeconfig {}: no such file", k.display())));
        }
        m.kubeconfig = Some(absolute(k).display().to_string());
    }
    if let Some(c) = &f.context {
        m.context = Some(c.clone());
    }
    for l in &f.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                m.labels.insert(k.to_string(), v.to_string());
            }
            _ => return Err(usage(format!("--label '{l}' is not KEY=VALUE"))),
        }
    }
    if let Some(g) = &f.update_group {
        check_name("update group", g)?;
        m.update_group = Some(g.clone());
    }
    if let Some(w) = &f.window {
        let text = read_file("--window", w)?;
        let window = MaintenanceWindow::from_yaml(&text)
            .map_err(|e| usage(format!("--window {}: {e}", w.display())))?;
        m.maintenance_window = Some(window);
    }
    if let Some(src) = &f.node_image_source {
        refit_fleet::observe::read_image_source(src)
            .map_err(|e| usage(format!("--node-image-source: {e}")))?;
        m.node_image_source = Some(absolute(src).display().to_string());
    }
    if let Some(b) = &f.pending_budget {
        m.pending_budget_seconds = Some(b.as_secs());
    }
    if let Some(a) = &f.action {
        check_action(a)?;
        m.action = Some(a.clone());
    }
    if let Some(p) = &f.plan_file {
        if !p.exists() {
            return Err(usage(format!("--plan-file {}: no such file", p.display())));
        }
        m.plan_file = Some(absolute(p).display().to_string());
    }
    if !f.upgrade_args.is_empty() {
        m.upgrade_args = f.upgrade_args.clone();
    }
    Ok(())
}

/// The actions `refit upgrade --action` understands (core's reading of the word; the upgrade
/// checks the details when it runs), an `exec:` naming no program refused already.
fn check_action(a: &str) -> anyhow::Result<()> {
    match NamedAction::parse(a) {
        Ok(NamedAction::Exec("")) | Err(_) => Err(usage(format!("--action '{a}': expected {NAMED_ACTIONS}"))),
        Ok(_) => Ok(()),
    }
}

/// Member upgrades run from the driver's working directory, which may differ: store absolute paths.
fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// One line for a window: `Saturday,Sunday 22:00 +240m Europe/Berlin`.
pub fn describe_window(w: &MaintenanceWindow) -> String {
    let when = match &w.recurrence {
        refit_core::fleet::Recurrence::Weekly(days) => {
            days.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
        }
        refit_core::fleet::Recurrence::Monthly(d) => format!("monthly day {d}"),
    };
    format!("{when} {} +{}m {}", w.start.strftime("%H:%M"), w.duration_minutes, w.time_zone)
}
