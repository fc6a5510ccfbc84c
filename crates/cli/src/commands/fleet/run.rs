//! `refit fleet run create|start|stop|skip|show|list|delete|retry`, in the store or on a hub
//! (`refit_fleet::FleetApi`).

use std::path::Path;
use std::process::ExitCode;

use refit_core::VersionRequest;
use refit_core::fleet::{
    Event, NodeImageSelection, RunState, SkipTarget, UpdateState, UpgradeSpec, UpgradeType,
};
use refit_fleet::runs::Started;
use refit_fleet::{FleetApi, StrategySource};
use serde::Serialize;

use super::args::{RunCommand, RunCreateArgs};
use super::{actor, fleet_err, now, open};
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};

/// `local`: the store's path (None on a hub, whose controller drives runs: `--wait` waits for
/// it).
pub async fn run<A: FleetApi>(
    cmd: RunCommand,
    api: &mut A,
    local: Option<&Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    match cmd {
        RunCommand::Create(a) => {
            let (spec, strategy) = create_args(&a)?;
            match api.create_run(&a.name, spec, strategy).await.map_err(fleet_err)? {
                Some(state) => show_state(api, local, &state.name, format, false).await?,
                None => {
                    if !print_structured(format, &serde_json::json!({"created": a.name}))? {
                        println!(
                            "run {} created: the controller copies its strategy on its next pass (not started)",
                            a.name
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Start { name, wait } => start(api, local, &name, wait, format).await,
        RunCommand::Stop { name } => {
            let by = actor(api, None)?;
            let r = api.act(&name, Event::Stop { at: now(), by: Some(by) }).await.map_err(fleet_err)?;
            report(format, &r.state, "stop requested: no new member starts; upgrades under way finish")
        }
        RunCommand::Skip { name, targets, by } => {
            let targets: Vec<SkipTarget> = targets
                .iter()
                .map(|t| t.parse::<SkipTarget>().map_err(usage))
                .collect::<anyhow::Result<_>>()?;
            let by = actor(api, by)?;
            let listed = targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ");
            let event = Event::Skip { targets, by: Some(by), at: now() };
            let r = api.act(&name, event).await.map_err(fleet_err)?;
            report(format, &r.state, &format!("skipped {listed}"))
        }
        RunCommand::Show { name, events } => {
            show_state(api, local, &name, format, events).await?;
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::List => {
            let runs = api.list_runs().await.map_err(fleet_err)?;
            let states: Vec<&RunState> = runs.iter().map(|r| &r.state).collect();
            if !print_structured(format, &states)? {
                let mut t = table(&["name", "type", "target", "state", "members", "created"]);
                for r in &states {
                    let p = r.progress();
                    t.add_row(vec![
                        r.name.clone(),
                        r.spec.upgrade_type.to_string(),
                        target_text(r),
                        r.status.state.to_string(),
                        format!(
                            "{}/{} done, {} failed, {} skipped, {} in flight",
                            p.completed, p.total, p.failed, p.skipped, p.in_flight
                        ),
                        r.created_at.strftime("%Y-%m-%d %H:%M").to_string(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Delete { name } => {
            api.delete_run(&name).await.map_err(fleet_err)?;
            if !print_structured(format, &serde_json::json!({"deleted": name}))? {
                println!("run {name} deleted");
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Retry { name, failed: _, wait } => {
            let by = actor(api, None)?;
            let before = api.get_run(&name).await.map_err(fleet_err)?.state.status.state;
            let r =
                api.act(&name, Event::RetryFailed { at: now(), by: Some(by) }).await.map_err(fleet_err)?;
            if wait {
                return drive(api, local, &name, format, before).await;
            }
            report(
                format,
                &r.state,
                "retrying failed members (refit fleet daemon, or run start --wait, drives it)",
            )
        }
    }
}

/// `run create`'s goal and strategy, every flag checked before anything is written.
fn create_args(a: &RunCreateArgs) -> anyhow::Result<(UpgradeSpec, StrategySource)> {
    check_run_name(&a.name)?;
    let upgrade_type: UpgradeType = a.upgrade_type.parse().map_err(usage)?;
    let version = match &a.kubernetes_version {
        None => None,
        Some(v) => {
            let request: VersionRequest =
                v.parse().map_err(|e| usage(format!("--kubernetes-version: {e}")))?;
            Some(match request {
                VersionRequest::Exact(v) => v,
                VersionRequest::Minor(m) => {
                    load_catalog(None)?.newest_patch(m).cloned().ok_or_else(|| {
                        usage(format!("--kubernetes-version {v}: the catalog knows no release of {m}"))
                    })?
                }
            })
        }
    };
    let mut spec = UpgradeSpec::new(upgrade_type, version);
    spec.node_image_selection = a.node_image_selection.parse::<NodeImageSelection>().map_err(usage)?;
    if let Some(b) = &a.pending_budget {
        spec.pending_budget_seconds = Some(b.as_secs());
    }
    spec.on_gate_failure = a.on_gate_failure;
    spec.policy = a.policy;
    spec.validate().map_err(crate::remedy::usage_spelled)?;
    let strategy = match (&a.strategy, &a.stages) {
        (Some(name), _) => StrategySource::Named(name.clone()),
        (None, Some(file)) => StrategySource::Inline(super::strategy::parse_file("--stages", file)?),
        (None, None) => StrategySource::OneByOne,
    };
    Ok((spec, strategy))
}

/// Run names: the fleet pattern, up to 63 characters (profile-generated names are long).
fn check_run_name(name: &str) -> anyhow::Result<()> {
    if refit_core::fleet::is_valid_run_name(name) {
        Ok(())
    } else {
        Err(usage(format!(
            "run name '{name}' is not valid: use lowercase letters, digits and inner dashes, 1–63 characters"
        )))
    }
}

async fn start<A: FleetApi>(
    api: &mut A,
    local: Option<&Path>,
    name: &str,
    wait: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let by = actor(api, None)?;
    let before = api.get_run(name).await.map_err(fleet_err)?.state.status.state;
    let started = api.start(name, wait, by).await.map_err(fleet_err)?;
    if let Started::AlreadyActive(state) = started
        && format.is_table()
    {
        println!("run {name} is {state}: driving it (finished members are not repeated)");
    }
    if wait {
        return drive(api, local, name, format, before).await;
    }
    let r = api.get_run(name).await.map_err(fleet_err)?;
    let driven_by = match local {
        Some(_) => "refit fleet daemon drives it; or run start --wait",
        None => "the controller drives it",
    };
    report(format, &r.state, &format!("started ({driven_by})"))
}

/// Drives the run in the foreground (local), or waits for the hub's controller to finish it
/// (`before`: its state before the request); exit 0 when it completed (or had nothing to do).
async fn drive<A: FleetApi>(
    api: &mut A,
    local: Option<&Path>,
    name: &str,
    format: Format,
    before: UpdateState,
) -> anyhow::Result<ExitCode> {
    let end = match local {
        Some(store) => {
            let mut d = super::driver::driver(store, format)?;
            d.drive(name).await.map_err(fleet_err)?
        }
        None => refit_fleet::api::wait_for_end(api, name, before, HUB_POLL).await.map_err(fleet_err)?,
    };
    let progress = api.progress(name).await.map_err(fleet_err)?;
    match format {
        Format::Table | Format::Wide => {
            print!("{}", super::show::render(&end, &progress, None, now(), format == Format::Wide))
        }
        Format::Json => println!(
            "{}",
            serde_json::to_string(
                &serde_json::json!({"event": "summary", "run": &end, "progress": progress})
            )?
        ),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&end)?),
    }
    Ok(if end.status.state.is_done() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// How often `--wait` on a hub looks at the run.
const HUB_POLL: std::time::Duration = std::time::Duration::from_secs(2);

fn report(format: Format, state: &RunState, what: &str) -> anyhow::Result<ExitCode> {
    if !print_structured(format, state)? {
        println!("run {}: {what}; now {}", state.name, state.status.state);
    }
    Ok(ExitCode::SUCCESS)
}

/// The run as `-o json|yaml` prints it: the state, what the driver saw, who drives it.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    run: &'a RunState,
    progress: Vec<refit_store::fleet::MemberProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<refit_store::fleet::Lease>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Event>>,
}

async fn show_state<A: FleetApi>(
    api: &mut A,
    local: Option<&Path>,
    name: &str,
    format: Format,
    events: bool,
) -> anyhow::Result<()> {
    let r = api.get_run(name).await.map_err(fleet_err)?;
    let progress = api.progress(name).await.map_err(fleet_err)?;
    let (driver, history) = match local {
        Some(store) => {
            let s = open(store)?;
            let history = if events {
                Some(s.fleet_run_events(name)?.into_iter().map(|e| e.event).collect::<Vec<_>>())
            } else {
                None
            };
            (s.lease(name)?, history)
        }
        None if events => {
            return Err(usage(format!(
                "--events has no meaning with --hub: a hub run's history is its Kubernetes Events (kubectl describe updaterun {name})"
            )));
        }
        None => (None, None),
    };
    let shown = Shown { run: &r.state, progress, driver, events: history };
    if !print_structured(format, &shown)? {
        print!(
            "{}",
            super::show::render(
                &r.state,
                &shown.progress,
                shown.driver.as_ref(),
                now(),
                format == Format::Wide
            )
        );
        if let Some(h) = &shown.events {
            println!("\nEvents");
            for e in h {
                println!("  {} {}", e.at().strftime("%Y-%m-%d %H:%M:%S"), super::driver::describe(e));
            }
        }
    }
    Ok(())
}

pub fn target_text(r: &RunState) -> String {
    match (&r.spec.kubernetes_version, r.spec.upgrade_type) {
        (Some(v), _) => v.to_string(),
        (None, _) => format!("node images ({:?})", r.spec.node_image_selection),
    }
}
