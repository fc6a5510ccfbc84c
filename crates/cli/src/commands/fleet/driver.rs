//! The fleet driver as `refit` runs it: `refit_fleet::Driver` with member upgrades as
//! `refit upgrade` subprocesses of this binary and members observed through the Kubernetes
//! API; what it records is printed (a line per event, or `{"run", "fleetEvent"}` JSON lines).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use refit_core::fleet::Event;
use refit_core::health::Observation;
use refit_fleet::runs::{CatalogSource, ProfileCadence, ProfilesLook};
use refit_fleet::{Driver, DriverConfig, KubeObserver, Report, Sink, SubprocessLauncher};

use super::fleet_err;
use crate::output::Format;

/// The driver `refit` runs: this binary's `refit upgrade` per member, on the store at `store`.
pub fn driver(store: &Path, format: Format) -> anyhow::Result<Driver<SubprocessLauncher, KubeObserver>> {
    let launcher = SubprocessLauncher::this_binary(store).map_err(fleet_err)?;
    Driver::new(store, launcher, KubeObserver, printer(format), DriverConfig::default()).map_err(fleet_err)
}

/// Prints what the driver records, as `format` asks.
fn printer(format: Format) -> Sink {
    Arc::new(move |r: Report<'_>| match r {
        Report::Recorded { run, event } => match format {
            Format::Json => {
                if let Ok(line) = serde_json::to_string(&serde_json::json!({"run": run, "fleetEvent": event}))
                {
                    println!("{line}");
                }
            }
            _ => println!("{} {run}: {}", event.at().strftime("%H:%M:%S"), describe(event)),
        },
        Report::Warning { run, message } => eprintln!("warning: run {run}: {message}"),
    })
}

/// `refit fleet daemon`: drives every run that has work, until killed, firing the auto-upgrade
/// profiles on their cadence with the catalog as it is at each look (a `refit catalog update`
/// meanwhile counts).
pub async fn daemon(store: &Path, exit_when_idle: bool, format: Format) -> anyhow::Result<ExitCode> {
    let mut d = driver(store, format)?;
    if format.is_table() {
        println!("fleet daemon {} driving runs in {}", d.holder(), store.display());
    }
    let catalog: CatalogSource = Box::new(|| Ok(refit_engine::catalog::load(None, None).map(|(c, _)| c)?));
    let mut profiles =
        ProfileCadence::new(store, catalog, Box::new(move |look| print_profiles(look, format)));
    d.daemon(exit_when_idle, Some(&mut profiles)).await.map_err(fleet_err)?;
    Ok(ExitCode::SUCCESS)
}

/// What a look at the profiles came to: what fired is printed, a failure is a warning (the
/// daemon goes on driving).
fn print_profiles(look: ProfilesLook, format: Format) {
    match look {
        Ok(fired) => {
            for f in fired {
                match (&f.outcome, format) {
                    (Ok(t), Format::Json) => println!(
                        "{}",
                        serde_json::json!({"profile": f.profile, "generatedRun": t.run_name, "heldBack": t.held_back})
                    ),
                    (Ok(t), _) => println!("profile {}: run {} generated and started", f.profile, t.run_name),
                    (Err(e), _) => eprintln!("warning: profile {}: no run generated: {e}", f.profile),
                }
            }
        }
        Err(e) => eprintln!("warning: auto-upgrade profiles: {e}"),
    }
}

/// " by NAME" when the event says who asked.
fn by_whom(by: &Option<String>) -> String {
    by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default()
}

/// One line per fleet event, for people.
pub fn describe(e: &Event) -> String {
    match e {
        Event::Start { targets: Some(t), by, .. } => format!(
            "started{}; targets frozen (kubernetes {}, node images {:?})",
            by_whom(by),
            t.kubernetes.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "unchanged".into()),
            t.node_images
        ),
        Event::Start { by, .. } => format!("started again{}", by_whom(by)),
        Event::Stop { by, .. } => format!("stop requested{}", by_whom(by)),
        Event::RetryFailed { by, .. } => format!("retrying failed members{}", by_whom(by)),
        Event::Skip { targets, by, .. } => format!(
            "skip {} by {}",
            targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" "),
            by.as_deref().unwrap_or("?")
        ),
        Event::ApproveGate { gate, by, .. } => format!("gate {gate} approved by {by}"),
        Event::GateReached { gate, .. } => format!("gate {gate} reached"),
        Event::GateTimeReached { gate, .. } => format!("gate {gate}: its scheduled time came"),
        Event::HealthGateReached { stage, gate, .. } => {
            format!("health gate {gate} of stage {stage} reached: probing")
        }
        Event::HealthGateObserved { stage, gate, observation, .. } => match observation {
            Observation::Holds(d) => format!("health gate {gate} of stage {stage}: holds ({d})"),
            Observation::Fails(r) => format!("health gate {gate} of stage {stage}: fails ({r})"),
        },
        Event::AfterStageWaitStarted { stage, .. } => format!("after-stage wait of {stage} started"),
        Event::AfterStageWaitElapsed { stage, .. } => format!("after-stage wait of {stage} elapsed"),
        Event::MemberStarted { member, target, .. } => format!(
            "member {member} started (→ {})",
            target.kubernetes.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "node images".into())
        ),
        Event::MemberSucceeded { member, message, .. } => {
            format!(
                "member {member} succeeded{}",
                message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
            )
        }
        Event::MemberFailed { member, error, .. } => format!("member {member} FAILED: {error}"),
        Event::MemberPaused { member, message, .. } => {
            format!("member {member} paused at its window's close: {message}")
        }
        Event::MemberPending { member, reason, .. } => format!("member {member} pending: {reason}"),
        Event::MemberUnreachable { member, message, .. } => {
            format!("member {member} cannot be reached: waiting, retried when it answers ({message})")
        }
        Event::MemberUnblocked { member, .. } => format!("member {member} unblocked, waiting for a slot"),
        Event::MemberSkipped { member, cause, .. } => format!("member {member} skipped: {cause}"),
        Event::DriverTookOver { driver, previous, .. } => {
            format!("driver {driver} took the run over from {previous} (no longer renewing its lease)")
        }
        Event::MemberRelaunched { member, .. } => {
            format!(
                "member {member} was under way with no driver: its upgrade relaunched (resumes its journal)"
            )
        }
        Event::StopCompleted { .. } => "stop completed: nothing under way, run Stopped".into(),
    }
}
