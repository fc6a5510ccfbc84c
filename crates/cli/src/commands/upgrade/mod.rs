//! `refit upgrade --to V`: preflight (exactly `refit plan`), the schedule, a confirmation,
//! then the engine — or, when an unfinished run of this cluster to the same target is in the
//! journal, that run resumed with its frozen schedule.

mod progress;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use refit_core::VersionRequest;
use refit_core::planfile::Action;
use refit_core::run::{
    Continuation, OnUndrainable, RunState, Schedule, Style, phase_name, schedule, step_name,
};
use refit_engine::{BackupSpec, Engine, EtcdEndpointSpec, NodeAction, Outcome, RunSpec};
use refit_store::{RunRow, Store};
use serde::Serialize;

use crate::args::UpgradeArgs;
use crate::commands::load_catalog;
use crate::commands::plan::{prepare, read_plan_file, render};
use crate::output::{Format, print_structured, table, usage};

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
            Some(a @ Action::Ssh { .. }) => Some(NodeAction::Ssh { action: a.clone() }),
            Some(Action::Replace { create, remove, control_plane }) => Some(NodeAction::Replace {
                create: create.clone(),
                remove: remove.clone(),
                control_plane: control_plane.clone(),
            }),
            None => None,
        });
    };
    // The sandbox's own commands, with its directory spelled out (the action runs in another
    // process): `sandbox` uses $REFIT_SANDBOX_DIR or the default, `sandbox:DIR` names it.
    let sandbox = |dir: Option<&str>| -> anyhow::Result<(String, String)> {
        let dir = match dir {
            Some(d) => PathBuf::from(d),
            None => crate::commands::sandbox::sandbox_dir(&crate::args::SandboxDir {
                dir: std::env::var_os("REFIT_SANDBOX_DIR").map(PathBuf::from),
            })?,
        };
        Ok((exe()?, dir.display().to_string()))
    };
    let (kind, arg) = match flag.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (flag, None),
    };
    let action = match kind {
        "sandbox" => {
            let (exe, dir) = sandbox(arg)?;
            NodeAction::Exec {
                command: svec(&[&exe, "sandbox", "upgrade-node", "--dir", &dir, "{node}", "--to", "{to}"]),
            }
        }
        "replace-sandbox" => {
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
            }
        }
        "ssh" => match plan_action {
            Some(a @ Action::Ssh { .. }) => NodeAction::Ssh { action: a.clone() },
            _ => NodeAction::Ssh {
                action: refit_core::planfile::PlanFile::from_yaml("action: {type: ssh}")
                    .ok()
                    .and_then(|p| p.action)
                    .ok_or_else(|| usage("internal: the default ssh action does not parse"))?,
            },
        },
        _ => match flag.strip_prefix("exec:") {
            Some(cmd) => {
                let command: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
                let probe = refit_core::planfile::PlanFile {
                    action: Some(Action::Exec { command: command.clone(), probe: Vec::new() }),
                    ..Default::default()
                };
                probe.validate(&Default::default()).map_err(|e| usage(format!("--action: {e}")))?;
                NodeAction::Exec { command }
            }
            None => {
                return Err(usage(format!(
                    "--action '{flag}': expected exec:PROGRAM ARG..., ssh, sandbox[:DIR] or replace-sandbox[:DIR]"
                )));
            }
        },
    };
    Ok(Some(action))
}

fn svec(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn backup_spec(args: &UpgradeArgs, dir: PathBuf) -> anyhow::Result<BackupSpec> {
    if let Some(cmd) = &args.backup_command {
        let command: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
        if command.is_empty() {
            return Err(usage("--backup-command is empty"));
        }
        return Ok(BackupSpec::Command { command, dir });
    }
    if args.etcd_endpoints.is_empty() {
        return Ok(BackupSpec::None);
    }
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
    let endpoints = args
        .etcd_endpoints
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
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(BackupSpec::Etcd { endpoints, dir })
}

fn store_path(args: &UpgradeArgs) -> anyhow::Result<PathBuf> {
    match &args.store {
        Some(p) => Ok(p.clone()),
        None => Ok(refit_store::default_path()?),
    }
}

#[derive(Serialize)]
struct DryRun<'a> {
    #[serde(flatten)]
    plan: crate::commands::plan::PlanOutput<'a>,
    schedule: &'a Schedule,
}

pub async fn run(args: UpgradeArgs, format: Format) -> anyhow::Result<ExitCode> {
    // Input first: nothing is read from the cluster, let alone changed, before it is valid.
    // Durations and the eviction concurrency were checked by clap (core's ranges).
    let (drain_timeout, node_timeout) = (args.drain_timeout, args.node_timeout);
    let on_undrainable: OnUndrainable = args.on_undrainable.parse().map_err(usage)?;
    let plan_file = read_plan_file(args.plan.file.as_deref())?;
    let action = resolve_action(args.plan.action.as_deref(), plan_file.action.as_ref())?;
    let request: VersionRequest = args.plan.to.parse().map_err(|e| usage(format!("--to: {e}")))?;
    let store_path = store_path(&args)?;
    let backup_dir = args.backup_dir.clone().unwrap_or_else(|| {
        store_path.parent().map(|p| p.join("backups")).unwrap_or_else(|| PathBuf::from("backups"))
    });
    let backup = backup_spec(&args, backup_dir)?;
    let not_after = args.not_after.as_deref().map(parse_not_after).transpose()?;

    // A run of this cluster to this target that did not finish: continue it as it was planned.
    let catalog = load_catalog(args.plan.catalog.as_deref())?;
    let cluster_target = refit_kube::ClusterTarget {
        kubeconfig: args.plan.cluster.kubeconfig.clone(),
        context: args.plan.cluster.context.clone(),
    };
    let conn = refit_kube::connect(&cluster_target).await.map_err(|e| usage(e.to_string()))?;
    let cluster = refit_kube::node::cluster_uid(&conn).await?;
    let mut lock = None;
    if !args.dry_run && store_path.exists() {
        lock = Some(lock_cluster(&store_path, &cluster)?);
        let store = Store::open(&store_path)?;
        let latest = store.latest_run(&cluster)?;
        // A state this version does not know is an error: never start over (or resume) a run
        // we cannot read.
        let seen = match latest.as_ref() {
            Some(r) => Some((
                r.state.parse::<RunState>().map_err(|e| {
                    anyhow::anyhow!(
                        "run {} in the store: {e}; it was written by another refit version (nothing was changed)",
                        r.id
                    )
                })?,
                r.target.as_str(),
            )),
            None => None,
        };
        // A minor `--to` continues its run to whichever patch the nodes could reach then.
        let target_release = refit_core::reach::continued_target(
            &request,
            &catalog,
            latest.as_ref().map(|r| r.target.as_str()),
        );
        match (refit_core::run::continuation(seen, target_release.as_ref(), args.abandon), latest) {
            (Continuation::Abandon, Some(prev)) => abandon(&conn, store, &prev.id, format).await?,
            (Continuation::Conflict, Some(prev)) => {
                return Err(usage(format!(
                    "run {} of this cluster (to {}) did not finish; continue it with `refit upgrade --to {}`, or give it up with --abandon",
                    prev.id, prev.target, prev.target
                )));
            }
            (Continuation::Resume, Some(prev)) => {
                let mut spec: RunSpec = serde_json::from_str(&prev.spec).map_err(|e| {
                    anyhow::anyhow!("run {} in {}: unreadable spec ({e})", prev.id, store_path.display())
                })?;
                // The schedule stays as it was decided; how to behave while executing it is what
                // this command says (an operator reruns with --on-undrainable skip, a longer
                // timeout, or an allowance for emptyDir data).
                spec.on_undrainable = on_undrainable;
                spec.drain_timeout_secs = drain_timeout.as_secs();
                spec.node_timeout_secs = node_timeout.as_secs();
                spec.eviction_concurrency = args.eviction_concurrency;
                spec.drain_rules = refit_core::drain::DrainOptions {
                    delete_emptydir_data: args.plan.delete_emptydir_data,
                    force: args.plan.delete_unmanaged_pods,
                };
                if format == Format::Table {
                    println!(
                        "resuming run {} ({}, target {}): finished steps are not repeated",
                        prev.id, prev.state, prev.target
                    );
                }
                let code = execute(conn, store, prev.id, spec, not_after, format).await;
                drop(lock);
                return code;
            }
            _ => {}
        }
    }

    let prepared = match prepare(&args.plan).await {
        Ok(p) => p,
        Err(e) => match e.downcast::<crate::commands::plan::NothingToDo>() {
            Ok(n) => {
                if format == Format::Table {
                    println!("{n}");
                }
                nothing_to_do_summary(format, &n.0)?;
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e),
        },
    };
    if prepared.plan.mode == refit_core::plan::Mode::Offline {
        eprintln!("WARNING: --offline: no readiness, safety, availability, PDB or capacity check was run");
    }
    if prepared.path.forced.iter().any(|f| f.is_downgrade()) && !args.confirm_downgrade {
        return Err(usage(format!(
            "{} → {} is a downgrade: components may not read data newer releases wrote; if you mean it, add --confirm-downgrade",
            prepared.current, prepared.path.to
        )));
    }
    let style = match &action {
        Some(NodeAction::Replace { .. }) => Style::Replace,
        _ => Style::InPlace,
    };
    let cluster_services = !args.skip_cluster_services && !args.plan.control_plane_only;
    let sched =
        schedule(&prepared.plan, &prepared.path, style, prepared.worker_concurrency, cluster_services);
    let out = prepared.output();
    if args.dry_run {
        let dry = DryRun { plan: out, schedule: &sched };
        if !print_structured(format, &dry)? {
            print!("{}", render(&dry.plan));
            print!("{}", render_schedule(&sched));
            println!("dry run: nothing was changed");
        }
        return Ok(if prepared.plan.blocked { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    if format == Format::Table {
        print!("{}", render(&out));
        print!("{}", render_schedule(&sched));
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
            println!("{}", serde_json::to_string(&blocked)?);
        }
        return Ok(ExitCode::from(1));
    }
    let Some(action) = action else {
        return Err(usage(
            "no node action: pass --action (exec:PROGRAM ARG..., ssh, sandbox, replace-sandbox) or set `action:` in the plan file (-f)",
        ));
    };
    if sched.stages.is_empty() {
        let nothing = format!("nothing to upgrade: every planned node is already at {}", sched.target);
        if format == Format::Table {
            println!("{nothing}");
        }
        nothing_to_do_summary(format, &nothing)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes && !confirm(&sched)? {
        eprintln!("nothing was changed");
        return Ok(ExitCode::from(1));
    }
    let spec = RunSpec {
        cluster_services: cluster_services.then(|| refit_core::addons::AddonTargets {
            owner: action.addon_owner(),
            ..refit_core::addons::targets(&prepared.catalog, &sched.target)
        }),
        schedule: sched,
        action,
        drain_rules: refit_core::drain::DrainOptions {
            delete_emptydir_data: args.plan.delete_emptydir_data,
            force: args.plan.delete_unmanaged_pods,
        },
        drain_timeout_secs: drain_timeout.as_secs(),
        node_timeout_secs: node_timeout.as_secs(),
        on_undrainable,
        force: args.plan.force,
        addresses: prepared.addresses.clone(),
        backup,
        eviction_concurrency: args.eviction_concurrency,
    };
    let lock = match lock {
        Some(l) => l,
        None => lock_cluster(&store_path, &cluster)?,
    };
    let mut store = Store::open(&store_path)?;
    let id = create_fresh_run(&mut store, &cluster, &spec)?;
    let code = execute(prepared.conn, store, id, spec, not_after, format).await;
    drop(lock);
    code
}

/// With `-o json`, "nothing to do" still ends with a summary line (no run, completed): a fleet
/// driver counts a member upgrade without one as failed.
fn nothing_to_do_summary(format: Format, why: &str) -> anyhow::Result<()> {
    if format == Format::Json {
        let summary = refit_core::event::Event::Summary {
            outcome: refit_core::event::RunSummary {
                run: None,
                state: RunState::Completed,
                reason: Some(why.to_string()),
            },
        };
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// One `refit upgrade` per cluster at a time (the journal has one writer per run, and two
/// engines would fight over the same nodes): the store's per-cluster lock file (private, named
/// after the checked cluster UID). The kernel drops it when the process dies, kill -9
/// included, so a rerun after a crash is never locked out.
fn lock_cluster(store_path: &std::path::Path, cluster: &str) -> anyhow::Result<refit_store::ClusterLock> {
    Ok(refit_store::lock_cluster(store_path, cluster)?)
}

/// Gives up an unfinished run: the nodes it cordoned are uncordoned (they are refit's to give
/// back; a new run would otherwise see them as someone else's), then it is marked abandoned.
async fn abandon(
    conn: &refit_kube::Connection,
    mut store: Store,
    run: &str,
    format: Format,
) -> anyhow::Result<()> {
    for (node, state) in refit_kube::node::node_states(conn).await? {
        if state.unschedulable && state.cordoned_by.as_deref() == Some(run) {
            refit_kube::cordon::uncordon(conn, &node, run).await?;
            if format == Format::Table {
                println!("abandoning run {run}: uncordoned {node}");
            }
        }
    }
    store.set_run_state(run, RunState::Abandoned.as_str())?;
    if format == Format::Table {
        println!("run {run} abandoned");
    }
    Ok(())
}

/// Asks on the terminal; refuses to guess when there is none.
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

async fn execute(
    conn: refit_kube::Connection,
    store: Store,
    id: String,
    spec: RunSpec,
    not_after: Option<std::time::SystemTime>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let view = Arc::new(progress::View::new(format, &id, &spec.schedule));
    let sink: refit_engine::Sink = {
        let view = view.clone();
        Arc::new(move |e| view.handle(e))
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // First Ctrl-C: a clean stop (no new node starts, drains are abandoned and their nodes
    // uncordoned, running actions finish). Second: leave now; the journal lets a rerun resume.
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nstopping cleanly (Ctrl-C again to leave at once; rerun the same command to continue)"
            );
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let engine = Engine::new(conn, store, id, spec, sink, stop_rx, not_after);
    let outcome = engine.execute().await?;
    view.finish();
    match format {
        Format::Table | Format::Wide => print!("{}", render_outcome(&outcome)),
        Format::Json => println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"event": "summary", "outcome": &outcome}))?
        ),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&outcome)?),
    }
    Ok(match outcome.state {
        RunState::Completed => ExitCode::SUCCESS,
        RunState::Paused => ExitCode::from(PAUSED_EXIT),
        _ => ExitCode::from(1),
    })
}

/// Records a new run and returns its id: `up-<time>-<target>`, with `-2`, `-3`... when that id
/// is taken. Ids are per second and one store holds many clusters (a fleet starts members in
/// parallel), so a taken id is expected; reusing it would journal two clusters into one run.
fn create_fresh_run(store: &mut Store, cluster: &str, spec: &RunSpec) -> anyhow::Result<String> {
    let base = format!(
        "up-{}-{}",
        jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"),
        spec.schedule.target.to_string().replace('.', "-")
    );
    let body = serde_json::to_string(spec)?;
    for n in 1..=1000 {
        let id = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let row = RunRow {
            id: id.clone(),
            cluster: cluster.to_string(),
            target: spec.schedule.target.to_string(),
            state: RunState::Running.as_str().into(),
            spec: body.clone(),
        };
        // create_run is idempotent: what comes back is ours only if it is exactly what we wrote.
        let stored = store.create_run(&row)?;
        if stored.cluster == row.cluster && stored.spec == row.spec && stored.state == row.state {
            return Ok(id);
        }
    }
    anyhow::bail!("cannot find a free run id for {base} in the store")
}

/// The exit code of a run that paused at its `--not-after` deadline.
pub const PAUSED_EXIT: u8 = 3;

/// `--not-after`: an RFC 3339 instant with its offset (a bare local time would be ambiguous).
fn parse_not_after(s: &str) -> anyhow::Result<std::time::SystemTime> {
    let t: jiff::Timestamp = s.parse().map_err(|e| {
        usage(format!("--not-after '{s}': {e}; write an RFC 3339 instant such as 2026-12-05T06:00:00Z"))
    })?;
    Ok(std::time::SystemTime::from(t))
}

fn render_schedule(s: &Schedule) -> String {
    let mut t = table(&["stage", "phase", "to", "at once", "nodes", "steps"]);
    for (i, st) in s.stages.iter().enumerate() {
        let nodes: Vec<&str> = st.units.iter().map(|u| u.node.as_str()).collect();
        let shown = if nodes.len() > 6 {
            format!("{} … (+{})", nodes[..6].join(", "), nodes.len() - 6)
        } else {
            nodes.join(", ")
        };
        let steps = st
            .units
            .first()
            .map(|u| u.steps.iter().map(|s| step_name(*s)).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        t.add_row(vec![
            (i + 1).to_string(),
            phase_name(st.phase).into(),
            st.to.to_string(),
            st.concurrency.to_string(),
            shown,
            steps,
        ]);
    }
    let mut out = format!("\nSchedule\n{t}\n");
    if s.cluster_services {
        out.push_str("then: cluster services (kube-proxy, CoreDNS) at the target's versions\n");
    }
    out
}

fn render_outcome(o: &Outcome) -> String {
    let mut t = table(&["node", "to", "result", "time", "reason"]);
    for u in &o.units {
        t.add_row(vec![
            u.node.clone(),
            u.to.clone(),
            u.result.name().to_string(),
            format!("{:.1}s", u.millis as f64 / 1000.0),
            u.result.reason().unwrap_or("").to_string(),
        ]);
    }
    let mut out = format!("\nSummary of run {}\n{t}\n\n", o.run);
    let mut times = table(&["phase", "time"]);
    for (phase, ms) in &o.timings {
        times.add_row(vec![phase.clone(), format!("{:.1}s", *ms as f64 / 1000.0)]);
    }
    out.push_str(&format!("{times}\n"));
    if let Some(b) = &o.backup {
        out.push_str(&format!("etcd backup: {b} (kept)\n"));
    }
    for (n, why) in &o.left_cordoned {
        out.push_str(&format!("LEFT CORDONED: {n}: {why}\n"));
    }
    out.push_str(&match (&o.state, &o.reason) {
        (RunState::Completed, _) => "\nCompleted: every node is at the target.\n".to_string(),
        (state, Some(r)) => {
            format!("\n{}: {r}\nRerun the same command to continue.\n", state.as_str().to_uppercase())
        }
        (state, None) => format!("\n{}\n", state.as_str().to_uppercase()),
    });
    out
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
