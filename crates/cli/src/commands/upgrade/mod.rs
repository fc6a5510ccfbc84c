//! `refit upgrade --to V`: parses the arguments (`input.rs`), then calls the engine library in
//! its lifecycle order — cluster lock → resume, abandon or refuse the cluster's latest run →
//! prepare (exactly `refit plan`) → schedule → confirmation → new run → execute → release —
//! and renders (`render.rs`, the live view in `progress.rs`). Stop signals: `signals.rs`.

mod input;
mod progress;
mod render;
mod signals;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use refit_core::event::Event;
use refit_core::lock::Takeover;
use refit_core::run::{RunState, Schedule, Style, schedule};
use refit_engine::lifecycle::lock::{Lock, this_process};
use refit_engine::lifecycle::{self, Decision};
use refit_engine::prepare::{PrepareError, prepare};
use refit_engine::real::SqliteJournal;
use refit_engine::{Engine, EventSink, NodeAction, RunSpec};
use refit_kube::Connection;
use serde::Serialize;

pub(crate) use input::{parse_not_after, resolve_action};

use crate::args::UpgradeArgs;
use crate::commands::plan::{PlanOutput, connect, prepare_error, render, warn_offline};
use crate::output::{Format, print_structured, usage};
use input::Input;
use render::{render_outcome, render_schedule};

/// The exit code of a run that paused at its `--not-after` deadline.
pub const PAUSED_EXIT: u8 = 3;

#[derive(Serialize)]
struct DryRun<'a> {
    #[serde(flatten)]
    plan: PlanOutput<'a>,
    schedule: &'a Schedule,
    /// How etcd would be backed up (absent: the schedule does not touch it).
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_backup: Option<&'a refit_engine::BackupSpec>,
}

/// The refusal of a run that would change etcd or the control plane with no backup.
const NO_BACKUP: &str = "this run changes etcd and the control plane but no etcd backup is configured: give --etcd-endpoint URL with --etcd-cacert/--etcd-cert/--etcd-key, or --backup-command CMD (it must write {path}), or use --action ssh (snapshot on a control-plane node); --no-etcd-backup goes without one";

/// Prints to stdout, dropping what a closed pipe refuses (`refit upgrade -o json | head -1`
/// must not stop a run).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub async fn run(args: UpgradeArgs, format: Format) -> anyhow::Result<ExitCode> {
    // Input first: nothing is read from the cluster, let alone changed, before it is valid.
    let input = Input::parse(&args)?;
    let conn = connect(&args.plan).await?;
    if args.dry_run {
        return upgrade(&args, input, &conn, None, format).await;
    }
    // The cluster lock, before anything is changed (an abandon uncordons nodes) and for as long
    // as this command may change something.
    let (lock, takeover) = Lock::acquire(&conn, this_process(), args.break_lock).await?;
    if let Some((why, whose)) = takeover {
        let why = match why {
            Takeover::ProcessGone => "its process on this machine is gone",
            Takeover::Expired => "it was not renewed in time",
            Takeover::Broken => "--break-lock",
        };
        eprintln!("note: took the cluster lock over from {whose} ({why})");
    }
    let result = upgrade(&args, input, &conn, Some(&lock), format).await;
    lock.release().await;
    result
}

/// Everything after the lock: `lock` is None for a dry run, which changes and records nothing.
async fn upgrade(
    args: &UpgradeArgs,
    input: Input,
    conn: &Connection,
    lock: Option<&Lock>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    // The journal is opened once, and created only when a run is recorded.
    let mut journal: Option<Arc<SqliteJournal>> = None;
    let mut cluster = None;
    if let Some(lock) = lock {
        let uid = refit_kube::node::cluster_uid(conn).await?;
        if input.store_path.exists() {
            let j = Arc::new(SqliteJournal::open(&input.store_path)?);
            // A run of this cluster that did not finish: continue it as it was planned.
            match lifecycle::decide(j.as_ref(), &uid, &input.plan.request, &input.plan.catalog, args.abandon)
                .await?
            {
                Decision::Fresh => {}
                Decision::Abandon(prev) => {
                    for node in lifecycle::abandon(conn, j.as_ref(), &prev.id).await? {
                        if format == Format::Table {
                            say(&format!("abandoning run {}: uncordoned {node}\n", prev.id));
                        }
                    }
                    if format == Format::Table {
                        say(&format!("run {} abandoned\n", prev.id));
                    }
                }
                Decision::Conflict(prev) => {
                    return Err(usage(format!(
                        "run {} of this cluster (to {}) did not finish; continue it with `refit upgrade --to {}`, or give it up with --abandon",
                        prev.id, prev.target, prev.target
                    )));
                }
                Decision::Resume(prev) => {
                    let spec = lifecycle::resume_spec(&prev, input.behaviour)?;
                    if format == Format::Table {
                        say(&format!(
                            "resuming run {} ({}, target {}): finished steps are not repeated\n",
                            prev.id, prev.state, prev.target
                        ));
                    }
                    lock.set_run(&prev.id).await?;
                    return execute(conn, j, prev.id, spec, &input, lock, format).await;
                }
            }
            journal = Some(j);
        }
        let known: Option<&dyn refit_engine::context::Journal> =
            journal.as_deref().map(|j| j as &dyn refit_engine::context::Journal);
        if let Some(orphan) = lifecycle::orphaned_run(known, lock).await? {
            let nodes = lifecycle::give_back_cordons(conn, &orphan).await?;
            if !nodes.is_empty() {
                eprintln!(
                    "note: run {orphan} of the lock's previous holder is not in this store (its journal is elsewhere): uncordoned {}, which this run plans from what the cluster shows",
                    nodes.join(", ")
                );
            }
        }
        cluster = Some(uid);
    }

    let prepared = match prepare(conn, &input.plan).await {
        Ok(p) => p,
        Err(PrepareError::NothingToDo(m)) => {
            let m = crate::commands::plan::nothing_to_do(&m);
            if format == Format::Table {
                say(&format!("{m}\n"));
            }
            nothing_to_do_summary(format, &m)?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(prepare_error(e)),
    };
    warn_offline(&prepared);
    if prepared.path.forced.iter().any(|f| f.is_downgrade()) && !args.confirm_downgrade {
        return Err(usage(format!(
            "{} → {} is a downgrade: components may not read data newer releases wrote; if you mean it, add --confirm-downgrade",
            prepared.current, prepared.path.to
        )));
    }
    let style = match &input.action {
        Some(NodeAction::Replace { .. }) => Style::Replace,
        _ => Style::InPlace,
    };
    let cluster_services = !args.skip_cluster_services && !args.plan.control_plane_only;
    let mut sched =
        schedule(&prepared.plan, &prepared.path, style, prepared.worker_concurrency, cluster_services);
    if let Some(a) = &prepared.auto {
        sched.batch_automatically(a.settings, prepared.worker_concurrency);
    }
    if let Some(s) = input.plan.surge {
        sched.surge(s);
    }
    // A run that changes etcd or the control plane has a backup, or the operator said not to
    // (`None` here: no stage touches them, or none is configured — refused below).
    let needs_backup = refit_engine::spec::touches_control_plane(&sched);
    let backup_shown = if needs_backup { Some(input.backup.as_ref().ok_or(NO_BACKUP)) } else { None };
    let out = PlanOutput::new(&conn.context, &prepared);
    let (Some(lock), Some(cluster)) = (lock, cluster) else {
        let dry = DryRun { plan: out, schedule: &sched, etcd_backup: backup_shown.and_then(Result::ok) };
        if !print_structured(format, &dry)? {
            say(&render(&dry.plan));
            say(&render_schedule(&sched, backup_shown));
            say("dry run: nothing was changed\n");
        }
        if let Some(Err(no)) = backup_shown {
            return Err(usage(no));
        }
        return Ok(if prepared.plan.blocked { ExitCode::from(1) } else { ExitCode::SUCCESS });
    };
    if format == Format::Table {
        say(&render(&out));
        say(&render_schedule(&sched, backup_shown));
    }
    if prepared.plan.blocked {
        if format != Format::Table {
            print_structured(format, &out)?;
        }
        if format == Format::Json {
            // The typed line a fleet driver reads (the plan above is for people and tools).
            let blocked = refit_core::event::Event::PlanBlocked {
                blockers: refit_core::event::Blocker::of(&prepared.plan.findings),
            };
            say(&format!("{}\n", serde_json::to_string(&blocked)?));
        }
        return Ok(ExitCode::from(1));
    }
    let backup = match backup_shown {
        Some(Ok(b)) => b.clone(),
        Some(Err(no)) => return Err(usage(no)),
        // Never used: no stage touches etcd or the control plane.
        None => refit_engine::BackupSpec::OptedOut,
    };
    let Some(action) = input.action.clone() else {
        return Err(usage(
            "no node action: pass --action (exec:PROGRAM ARG..., ssh, sandbox, replace-sandbox) or set `action:` in the plan file (-f)",
        ));
    };
    if sched.stages.is_empty() {
        let nothing = format!("nothing to upgrade: every planned node is already at {}", sched.target);
        if format == Format::Table {
            say(&format!("{nothing}\n"));
        }
        nothing_to_do_summary(format, &nothing)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes && !confirm(&sched)? {
        eprintln!("nothing was changed");
        return Ok(ExitCode::from(1));
    }
    let b = input.behaviour;
    // The ssh action checks it reaches the hosts the readiness probe saw.
    let action = match action {
        NodeAction::Ssh { action, .. } => NodeAction::Ssh { action, identities: prepared.identities.clone() },
        other => other,
    };
    let spec = RunSpec {
        cluster_services: cluster_services.then(|| refit_core::addons::AddonTargets {
            owner: action.addon_owner(),
            ..refit_core::addons::targets(&input.plan.catalog, &sched.target)
        }),
        schedule: sched,
        action,
        drain_rules: b.drain_rules,
        drain_timeout_secs: b.drain_timeout_secs,
        node_timeout_secs: b.node_timeout_secs,
        on_undrainable: b.on_undrainable,
        force: args.plan.force,
        addresses: prepared.addresses.clone(),
        backup,
        eviction_concurrency: b.eviction_concurrency,
        accepted: prepared.plan.accepted.iter().map(refit_core::accept::Record::from).collect(),
        gates: input.gates.clone(),
        on_gate_failure: b.on_gate_failure,
        etcd_health: input.etcd_health.clone(),
        control_plane_gate_secs: input.control_plane_gate.as_secs(),
    };
    let journal = match journal {
        Some(j) => j,
        None => Arc::new(SqliteJournal::open(&input.store_path)?),
    };
    let id = lifecycle::create_run(journal.as_ref(), &cluster, &spec, &jiff::Zoned::now()).await?;
    lock.set_run(&id).await?;
    execute(conn, journal, id, spec, &input, lock, format).await
}

/// Asks on the terminal; refuses to guess when there is none.
/// With `-o json`, "nothing to do" still ends with a summary line (no run, completed): a fleet
/// driver counts a member upgrade without one as failed.
fn nothing_to_do_summary(format: Format, why: &str) -> anyhow::Result<()> {
    if format == Format::Json {
        let summary = refit_core::event::Event::Summary {
            outcome: refit_core::event::RunSummary {
                run: None,
                state: RunState::Completed,
                reason: Some(why.to_string()),
                remedies: Vec::new(),
            },
        };
        say(&format!("{}\n", serde_json::to_string(&summary)?));
    }
    Ok(())
}

fn confirm(s: &Schedule) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "refusing to change the cluster without a confirmation: pass --yes (or run in a terminal)",
        ));
    }
    let units = s.units().count();
    eprint!(
        "upgrade {units} node step(s) in {} stage(s) to {}? type yes to continue: ",
        s.stages.len(),
        s.target
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

/// Runs the engine with the real context, the live view and the stop signals, then prints
/// the summary.
async fn execute(
    conn: &Connection,
    journal: Arc<SqliteJournal>,
    id: String,
    spec: RunSpec,
    input: &Input,
    lock: &Lock,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let view = Arc::new(progress::View::new(format, &id, &spec.schedule));
    let sink: Arc<dyn EventSink> = {
        let view = view.clone();
        Arc::new(move |e: &Event| view.handle(e))
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    signals::on_stop(stop_tx.clone(), input.stop_grace);
    // Someone took the cluster lock (--break-lock elsewhere): start nothing new.
    let mut lost = lock.lost();
    let warn = sink.clone();
    let watcher = tokio::spawn(async move {
        while lost.changed().await.is_ok() {
            if *lost.borrow() {
                warn.emit(&Event::Warning {
                    message: "the cluster lock was taken by another refit (--break-lock): no new node starts; nodes under way finish".into(),
                });
                let _ = stop_tx.send(true);
                return;
            }
        }
    });
    // The exec action's per-node locks live next to the store (private, like it).
    let lock_dir = input.store_path.parent().map_or_else(|| "locks".into(), |p| p.join("locks"));
    let ctx = refit_engine::real::context(conn.clone(), journal, sink, lock_dir);
    let engine = Engine::new(ctx, id, spec, stop_rx, input.not_after);
    let outcome = engine.execute().await;
    watcher.abort();
    let outcome = outcome?;
    view.finish();
    match format {
        Format::Table | Format::Wide => say(&render_outcome(&outcome)),
        Format::Json => say(&format!(
            "{}\n",
            serde_json::to_string(&serde_json::json!({"event": "summary", "outcome": &outcome}))?
        )),
        Format::Yaml => say(&serde_saphyr::to_string(&outcome)?),
    }
    Ok(match outcome.state {
        RunState::Completed => ExitCode::SUCCESS,
        RunState::Paused => ExitCode::from(PAUSED_EXIT),
        _ => ExitCode::from(1),
    })
}
