//! `refit upgrade --to V`: parses the arguments (`input.rs`), then calls the engine library in
//! its lifecycle order (`refit_engine::upgrade`) — cluster lock → begin (resume, abandon or
//! refuse the cluster's latest run) → plan (exactly `refit plan`, then the schedule) →
//! confirmation → record the new run → execute → release — and renders (`render.rs`, the live view in `progress.rs`). Stop signals: `signals.rs`.

mod input;
mod progress;
mod render;
mod signals;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use refit_core::event::Event;
use refit_core::lock::Takeover;
use refit_core::run::{RunState, Schedule};
use refit_engine::lifecycle::lock::{Lock, this_process};
use refit_engine::prepare::PrepareError;
use refit_engine::real::SqliteJournal;
use refit_engine::upgrade::{self, Begun, Note, UpgradeError};
use refit_engine::{EventSink, RunSpec};
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

/// The engine request of a `refit upgrade` command line (`argv[0]` the program), parsed
/// exactly as the command parses its own arguments: the hub controller's in-process member
/// upgrades take theirs so.
pub(crate) fn request_of(argv: &[String]) -> anyhow::Result<upgrade::Request> {
    use clap::Parser;
    let cli = crate::args::Cli::try_parse_from(argv).map_err(|e| usage(e.to_string().trim().to_string()))?;
    let crate::args::Command::Upgrade(args) = cli.command else {
        return Err(usage("internal: a member upgrade's command line is not `refit upgrade`"));
    };
    Ok(Input::parse(&args)?.request)
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
/// The order is the engine's (`refit_engine::upgrade`); this renders and confirms in between.
async fn upgrade(
    args: &UpgradeArgs,
    input: Input,
    conn: &Connection,
    lock: Option<&Lock>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let request = &input.request;
    // The journal is opened once, and created only when a run is recorded.
    let mut journal: Option<Arc<SqliteJournal>> = None;
    let mut cluster = None;
    if let Some(lock) = lock {
        let uid = refit_kube::node::cluster_uid(conn).await?;
        if input.store_path.exists() {
            journal = Some(Arc::new(SqliteJournal::open(&input.store_path)?));
        }
        let known = journal.as_deref().map(|j| j as &dyn refit_engine::context::Journal);
        match upgrade::begin(conn, known, &uid, request, lock).await.map_err(refused)? {
            Begun::Resume { run, spec } => {
                if format == Format::Table {
                    say(&format!(
                        "resuming run {} ({}, target {}): finished steps are not repeated\n",
                        run.id, run.state, run.target
                    ));
                }
                // A resumed run came from the journal, so there is one.
                let Some(j) = journal else { anyhow::bail!("internal: a run was resumed without a journal") };
                return execute(conn, j, run.id, *spec, &input, lock, format).await;
            }
            Begun::Fresh(notes) => notes.iter().for_each(|n| tell(n, format)),
        }
        cluster = Some(uid);
    }

    let planned = match upgrade::plan(conn, request).await {
        Ok(p) => p,
        Err(UpgradeError::Prepare(PrepareError::NothingToDo(m))) => {
            let m = crate::commands::plan::nothing_to_do(&m);
            if format == Format::Table {
                say(&format!("{m}\n"));
            }
            nothing_to_do_summary(format, &m)?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(refused(e)),
    };
    warn_offline(&planned.prepared);
    let backup_shown = planned.backup_shown().map(|b| b.map_err(|()| NO_BACKUP));
    let out = PlanOutput::new(&conn.context, &planned.prepared);
    let sched = &planned.schedule;
    let (Some(lock), Some(cluster)) = (lock, cluster) else {
        let dry = DryRun { plan: out, schedule: sched, etcd_backup: backup_shown.and_then(Result::ok) };
        if !print_structured(format, &dry)? {
            say(&render(&dry.plan));
            say(&render_schedule(sched, backup_shown));
            say("dry run: nothing was changed\n");
        }
        if let Some(Err(no)) = backup_shown {
            return Err(usage(no));
        }
        return Ok(if planned.prepared.plan.blocked { ExitCode::from(1) } else { ExitCode::SUCCESS });
    };
    if format == Format::Table {
        say(&render(&out));
        say(&render_schedule(sched, backup_shown));
    }
    let spec = match planned.spec(request) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            let nothing = format!("nothing to upgrade: every planned node is already at {}", sched.target);
            if format == Format::Table {
                say(&format!("{nothing}\n"));
            }
            nothing_to_do_summary(format, &nothing)?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(UpgradeError::Blocked) => {
            if format != Format::Table {
                print_structured(format, &out)?;
            }
            if format == Format::Json {
                // The typed line a fleet driver reads (the plan above is for people and tools).
                let blocked = refit_core::event::Event::PlanBlocked {
                    blockers: refit_core::event::Blocker::of(&planned.prepared.plan.findings),
                };
                say(&format!("{}\n", serde_json::to_string(&blocked)?));
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(refused(e)),
    };
    if !args.yes && !confirm(sched)? {
        eprintln!("nothing was changed");
        return Ok(ExitCode::from(1));
    }
    let journal = match journal {
        Some(j) => j,
        None => Arc::new(SqliteJournal::open(&input.store_path)?),
    };
    let id = upgrade::record(journal.as_ref(), &cluster, &spec, lock).await.map_err(refused)?;
    execute(conn, journal, id, spec, &input, lock, format).await
}

/// What happened to earlier runs, for the operator.
fn tell(note: &Note, format: Format) {
    match note {
        Note::Abandoned { run, uncordoned } => {
            if format == Format::Table {
                for node in uncordoned {
                    say(&format!("abandoning run {run}: uncordoned {node}\n"));
                }
                say(&format!("run {run} abandoned\n"));
            }
        }
        Note::OrphanCordonsGivenBack { run, uncordoned } if !uncordoned.is_empty() => eprintln!(
            "note: run {run} of the lock's previous holder is not in this store (its journal is elsewhere): uncordoned {}, which this run plans from what the cluster shows",
            uncordoned.join(", ")
        ),
        Note::OrphanCordonsGivenBack { .. } => {}
    }
}

/// The engine's refusals in this command line's words: bad input exits 2 naming the flag
/// that takes the way out; the journal, the lock or the cluster failing exit 1.
fn refused(e: UpgradeError) -> anyhow::Error {
    match e {
        UpgradeError::Prepare(e) => prepare_error(e),
        UpgradeError::Conflict(prev) => usage(format!(
            "run {} of this cluster (to {}) did not finish; continue it with `refit upgrade --to {}`, or give it up with --abandon",
            prev.id, prev.target, prev.target
        )),
        UpgradeError::Downgrade(d) => usage(format!(
            "{} → {} is a downgrade: components may not read data newer releases wrote; if you mean it, add --confirm-downgrade",
            d.from, d.to
        )),
        UpgradeError::NoBackup => usage(NO_BACKUP),
        UpgradeError::NoAction => usage(
            "no node action: pass --action (exec:PROGRAM ARG..., ssh, sandbox, replace-sandbox) or set `action:` in the plan file (-f)",
        ),
        e @ (UpgradeError::Lifecycle(_)
        | UpgradeError::Lock(_)
        | UpgradeError::Blocked
        | UpgradeError::Cluster(_)
        | UpgradeError::Execute(_)) => anyhow::Error::new(e),
    }
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
    signals::on_stop(stop_tx, input.stop_grace);
    // The exec action's per-node locks live next to the store (private, like it).
    let lock_dir = input.store_path.parent().map_or_else(|| "locks".into(), |p| p.join("locks"));
    let ctx = refit_engine::real::context(conn.clone(), journal, sink, lock_dir);
    // Someone taking the cluster lock (--break-lock elsewhere) stops it like a signal.
    let outcome = upgrade::execute(ctx, id, spec, lock, stop_rx, input.not_after).await;
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
