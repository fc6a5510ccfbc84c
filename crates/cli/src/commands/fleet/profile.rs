//! `refit fleet profile create|show|list|delete|generate-run`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use refit_core::fleet::{Channel, NodeImageSelection, Profile, Strategy, target_for};
use serde::Serialize;

use super::args::{ProfileCommand, ProfileCreateArgs};
use super::observe::observe;
use super::{now, open, read_file, store_err};
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};

pub async fn run(cmd: ProfileCommand, store: &Path, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        ProfileCommand::Create(a) => {
            let p = from_args(&a)?;
            open(store)?.put_profile(&p, false).map_err(store_err)?;
            if !print_structured(format, &p)? {
                println!(
                    "profile {} created ({:?}{})",
                    p.name,
                    p.channel,
                    if p.disabled { ", disabled" } else { "" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ProfileCommand::Show { name } => {
            let p = get(store, &name)?;
            if !print_structured(format, &p)? {
                print!("{}", serde_saphyr::to_string(&p)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        ProfileCommand::List => {
            let all = open(store)?.profiles()?;
            if !print_structured(format, &all)? {
                let mut t = table(&["name", "channel", "strategy", "disabled", "last trigger"]);
                for p in &all {
                    t.add_row(vec![
                        p.name.clone(),
                        format!("{:?}", p.channel),
                        p.strategy.clone().unwrap_or_else(|| "(one by one)".into()),
                        p.disabled.to_string(),
                        p.last_trigger
                            .as_ref()
                            .map(|t| {
                                format!(
                                    "{} {:?} {}",
                                    t.at.strftime("%Y-%m-%d %H:%M"),
                                    t.status,
                                    t.run
                                        .clone()
                                        .or_else(|| t.error.clone())
                                        .or_else(|| t.message.clone())
                                        .unwrap_or_default()
                                )
                            })
                            .unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ProfileCommand::Delete { name } => {
            if !open(store)?.delete_profile(&name)? {
                return Err(usage(format!("no profile named '{name}' (see refit fleet profile list)")));
            }
            if !print_structured(format, &serde_json::json!({"deleted": name}))? {
                println!("profile {name} deleted (runs it generated stay)");
            }
            Ok(ExitCode::SUCCESS)
        }
        ProfileCommand::GenerateRun { name, catalog } => {
            generate(store, &name, catalog.as_deref(), format).await
        }
    }
}

fn get(store: &Path, name: &str) -> anyhow::Result<Profile> {
    open(store)?
        .profile(name)?
        .ok_or_else(|| usage(format!("no profile named '{name}' (see refit fleet profile list)")))
}

fn from_args(a: &ProfileCreateArgs) -> anyhow::Result<Profile> {
    let mut p = match &a.file {
        Some(f) => {
            let text = read_file("-f", f)?;
            Profile::from_yaml(&text).map_err(|e| usage(format!("{}: {e}", f.display())))?
        }
        None => {
            let name = a.name.clone().ok_or_else(|| usage("give the profile a name (or -f FILE)"))?;
            let channel: Channel = a
                .channel
                .as_deref()
                .ok_or_else(|| {
                    usage("--channel is required (Stable, Rapid, NodeImage, TargetKubernetesVersion)")
                })?
                .parse()
                .map_err(usage)?;
            let target_kubernetes_version = match &a.target_kubernetes_version {
                Some(m) => Some(m.parse().map_err(|e| usage(format!("--target-kubernetes-version: {e}")))?),
                None => None,
            };
            Profile {
                name,
                channel,
                target_kubernetes_version,
                strategy: None,
                node_image_selection: NodeImageSelection::Latest,
                disabled: false,
                last_trigger: None,
            }
        }
    };
    if let Some(n) = &a.name {
        p.name = n.clone();
    }
    if let Some(s) = &a.strategy {
        p.strategy = Some(s.clone());
    }
    if let Some(n) = &a.node_image_selection {
        p.node_image_selection = n.parse().map_err(usage)?;
    }
    p.disabled |= a.disabled;
    p.validate().map_err(|e| usage(e.to_string()))?;
    Ok(p)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Generated {
    run: Option<String>,
    created: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    held_back: Vec<refit_core::fleet::HeldBack>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_version: Option<refit_core::Version>,
}

/// Creates the profile's run for the catalog and fleet as they are now (not started); the
/// run's name is deterministic, so asking again returns the same run. The outcome is recorded
/// as the profile's last trigger.
async fn generate(
    store: &Path,
    name: &str,
    catalog: Option<&Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mut profile = get(store, name)?;
    let catalog = load_catalog(catalog)?;
    let members = open(store)?.members()?;
    let mut versions = BTreeMap::new();
    let mut unreachable = Vec::new();
    for m in &members {
        match observe(m).await {
            f if f.unavailable.is_some() => {
                unreachable.push(format!("{}: {}", m.name, f.unavailable.unwrap_or_default()))
            }
            f => match f.versions.control_plane {
                Some(v) => {
                    versions.insert(m.name.clone(), v);
                }
                None => unreachable.push(format!("{}: its control-plane version could not be read", m.name)),
            },
        }
    }
    let at = now();
    let today = jiff::Zoned::now().date();
    let outcome: anyhow::Result<Generated> = async {
        let Some(target) = target_for(&profile, &catalog, &versions, today) else {
            let why = if profile.disabled {
                "the profile is disabled".to_string()
            } else if versions.is_empty() {
                // Not "nothing to do": nothing could be decided. A failure (exit 1), recorded
                // as the profile's last trigger, naming every member and why it was unread.
                return Err(anyhow::anyhow!(
                    "profile {name}: no run generated: {}",
                    if members.is_empty() {
                        "the fleet has no members (refit fleet member add)".to_string()
                    } else {
                        format!("no member could be read — {}", unreachable.join("; "))
                    }
                ));
            } else {
                "nothing to do: every member is at the channel's release (or too far behind for a profile)"
                    .to_string()
            };
            return Ok(Generated {
                run: None,
                created: false,
                message: Some(why),
                held_back: vec![],
                kubernetes_version: None,
            });
        };
        let s = open(store)?;
        if s.fleet_run(&target.run_name)?.is_some() {
            return Ok(Generated {
                run: Some(target.run_name),
                created: false,
                message: Some("the run exists already (unchanged)".into()),
                held_back: target.held_back,
                kubernetes_version: target.spec.kubernetes_version,
            });
        }
        let strategy = match &profile.strategy {
            Some(n) => s
                .strategy(n)?
                .ok_or_else(|| usage(format!("profile {name} names strategy '{n}', which does not exist")))?,
            None => Strategy::one_by_one(),
        };
        drop(s);
        super::run::create_from(store, &target.run_name, target.spec.clone(), strategy)?;
        Ok(Generated {
            run: Some(target.run_name),
            created: true,
            message: None,
            held_back: target.held_back,
            kubernetes_version: target.spec.kubernetes_version,
        })
    }
    .await;
    match &outcome {
        Ok(g) => {
            profile.last_trigger = Some(refit_core::fleet::Trigger {
                at,
                status: refit_core::fleet::TriggerStatus::Succeeded,
                run: g.run.clone(),
                kubernetes_version: g.kubernetes_version.clone(),
                message: g.message.clone(),
                error: None,
            })
        }
        Err(e) => profile.record_trigger(at, Err(format!("{e:#}")), None),
    }
    open(store)?.put_profile(&profile, true)?;
    let g = outcome?;
    if !print_structured(format, &g)? {
        match (&g.run, g.created) {
            (Some(r), true) => println!("run {r} created (not started): refit fleet run start {r} --wait"),
            (Some(r), false) => println!("run {r} exists already: unchanged"),
            (None, _) => println!("no run: {}", g.message.clone().unwrap_or_default()),
        }
        for h in &g.held_back {
            println!("held back: {} ({}): {}", h.member, h.version, h.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}
