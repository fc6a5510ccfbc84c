//! `refit fleet profile create|show|list|delete|generate-run`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use refit_core::fleet::{Channel, NodeImageSelection, Profile};
use refit_fleet::KubeObserver;

use super::args::{ProfileCommand, ProfileCreateArgs};
use refit_fleet::FleetApi;

use super::{fleet_err, now, read_file};
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};

/// `local`: the store's path (None on a hub, where the controller generates runs itself).
pub async fn run<A: FleetApi>(
    cmd: ProfileCommand,
    api: &mut A,
    local: Option<&Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    match cmd {
        ProfileCommand::Create(a) => {
            let p = from_args(&a)?;
            api.create_profile(&p).await.map_err(fleet_err)?;
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
            let p = api.get_profile(&name).await.map_err(fleet_err)?.ok_or_else(|| no_profile(&name))?;
            if !print_structured(format, &p)? {
                print!("{}", serde_saphyr::to_string(&p)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        ProfileCommand::List => {
            let all = api.list_profiles().await.map_err(fleet_err)?;
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
            if !api.delete_profile(&name).await.map_err(fleet_err)? {
                return Err(no_profile(&name));
            }
            if !print_structured(format, &serde_json::json!({"deleted": name}))? {
                println!("profile {name} deleted (runs it generated stay)");
            }
            Ok(ExitCode::SUCCESS)
        }
        ProfileCommand::GenerateRun { name, catalog } => match local {
            Some(store) => generate(store, &name, catalog.as_deref(), format).await,
            None => Err(usage(
                "`profile generate-run` has no meaning with --hub: the controller generates each profile's run by itself (kubectl get autoupgradeprofiles)",
            )),
        },
    }
}

fn no_profile(name: &str) -> anyhow::Error {
    usage(format!("no profile named '{name}' (see refit fleet profile list)"))
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
                last_generated_run: None,
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
    // A file's settings are its fields; the flags' are flags.
    p.validate().map_err(|e| match &a.file {
        Some(f) => usage(format!("{}: {e}", f.display())),
        None => crate::remedy::usage_spelled(e),
    })?;
    Ok(p)
}

/// Creates the profile's run for the catalog and fleet as they are now (not started); asking
/// again returns the same run. The outcome is recorded as the profile's last trigger.
async fn generate(
    store: &Path,
    name: &str,
    catalog: Option<&Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(catalog)?;
    let today = jiff::Zoned::now().date();
    let g = refit_fleet::runs::generate(store, &Arc::new(KubeObserver), name, &catalog, today, now())
        .await
        .map_err(|e| match e {
        // Nothing could be decided: a failure (exit 1), not bad input.
        refit_fleet::Error::Undecided(why) => anyhow::anyhow!(why),
        e => fleet_err(e),
    })?;
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
