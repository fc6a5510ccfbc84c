//! `refit fleet run create|start|stop|skip|show|list|delete|retry`.

use std::path::Path;
use std::process::ExitCode;

use std::sync::Arc;

use refit_core::VersionRequest;
use refit_core::fleet::{
    Event, NodeImageSelection, RunState, SkipTarget, Strategy, UpdateState, UpgradeSpec, UpgradeType,
};
use refit_fleet::KubeObserver;
use refit_fleet::runs::Started;
use serde::Serialize;

use super::args::{RunCommand, RunCreateArgs};
use super::{commit, fleet_err, load_run, now, open, who};
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};

pub async fn run(cmd: RunCommand, store: &Path, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        RunCommand::Create(a) => {
            let state = create(&a, store).await?;
            show_state(store, &state.name, format, false)?;
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Start { name, wait } => start(store, &name, wait, format).await,
        RunCommand::Stop { name } => {
            let mut s = open(store)?;
            load_run(&s, &name)?;
            let r = commit(&mut s, &name, &Event::Stop { at: now(), by: Some(who(None)) })?;
            report(format, &r.state, "stop requested: no new member starts; upgrades under way finish")
        }
        RunCommand::Skip { name, targets, by } => {
            let targets: Vec<SkipTarget> = targets
                .iter()
                .map(|t| t.parse::<SkipTarget>().map_err(usage))
                .collect::<anyhow::Result<_>>()?;
            let mut s = open(store)?;
            load_run(&s, &name)?;
            let listed = targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ");
            let r = commit(&mut s, &name, &Event::Skip { targets, by: Some(who(by)), at: now() })?;
            report(format, &r.state, &format!("skipped {listed}"))
        }
        RunCommand::Show { name, events } => {
            show_state(store, &name, format, events)?;
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::List => {
            let runs = open(store)?.fleet_runs()?;
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
            let mut s = open(store)?;
            let r = load_run(&s, &name)?;
            if r.state.progress().in_flight > 0 {
                return Err(usage(format!(
                    "run {name} has member upgrades under way: stop it and wait until it is Stopped, then delete it"
                )));
            }
            s.delete_fleet_run(&name)?;
            if !print_structured(format, &serde_json::json!({"deleted": name}))? {
                println!("run {name} deleted");
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Retry { name, failed: _, wait } => {
            let mut s = open(store)?;
            load_run(&s, &name)?;
            let r = commit(&mut s, &name, &Event::RetryFailed { at: now(), by: Some(who(None)) })?;
            if wait {
                drop(s);
                return drive(store, &name, format).await;
            }
            report(
                format,
                &r.state,
                "retrying failed members (refit fleet daemon, or run start --wait, drives it)",
            )
        }
    }
}

/// `run create`: everything is checked before the run is written.
pub async fn create(a: &RunCreateArgs, store: &Path) -> anyhow::Result<RunState> {
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
    spec.validate().map_err(|e| usage(e.to_string()))?;
    let s = open(store)?;
    let strategy = match (&a.strategy, &a.stages) {
        (Some(name), _) => s
            .strategy(name)?
            .ok_or_else(|| usage(format!("no strategy named '{name}' (see refit fleet strategy list)")))?,
        (None, Some(file)) => super::strategy::parse_file("--stages", file)?,
        (None, None) => Strategy::one_by_one(),
    };
    create_from(store, &a.name, spec, strategy)
}

/// Writes a new run of `strategy` resolved against the fleet as it is now.
pub fn create_from(
    store: &Path,
    name: &str,
    spec: UpgradeSpec,
    strategy: Strategy,
) -> anyhow::Result<RunState> {
    refit_fleet::runs::create_from(store, name, spec, strategy).map_err(fleet_err)
}

/// Run names: the fleet pattern, up to 63 characters (profile-generated names are long).
fn check_run_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 63
        && !name.is_empty()
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "run name '{name}' is not valid: use lowercase letters, digits and inner dashes, 1–63 characters"
        )))
    }
}

async fn start(store: &Path, name: &str, wait: bool, format: Format) -> anyhow::Result<ExitCode> {
    let started = refit_fleet::runs::start(store, &Arc::new(KubeObserver), name, wait, Some(who(None)))
        .await
        .map_err(fleet_err)?;
    if let Started::AlreadyActive(state) = started
        && format.is_table()
    {
        println!("run {name} is {state}: driving it (finished members are not repeated)");
    }
    if wait {
        return drive(store, name, format).await;
    }
    let r = load_run(&open(store)?, name)?;
    report(format, &r.state, "started (refit fleet daemon drives it; or run start --wait)")
}

/// Drives the run in the foreground; exit 0 when it completed (or had nothing to do).
async fn drive(store: &Path, name: &str, format: Format) -> anyhow::Result<ExitCode> {
    let mut d = super::driver::driver(store, format)?;
    let end = d.drive(name).await.map_err(fleet_err)?;
    drop(d);
    let s = open(store)?;
    let progress = s.member_progress(name)?;
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
    Ok(match end.status.state {
        UpdateState::Completed | UpdateState::Skipped => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

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

fn show_state(store: &Path, name: &str, format: Format, events: bool) -> anyhow::Result<()> {
    let s = open(store)?;
    let r = load_run(&s, name)?;
    let progress = s.member_progress(name)?;
    let driver = s.lease(name)?;
    let history = if events {
        Some(s.fleet_run_events(name)?.into_iter().map(|e| e.event).collect::<Vec<_>>())
    } else {
        None
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
