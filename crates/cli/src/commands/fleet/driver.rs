//! The update-run driver: I/O only, every decision from `refit_core::fleet::next`.
//!
//! One tick of a run: take (or renew) the run's lease → load it → relaunch member upgrades the
//! store says are under way but that no child of ours runs (the previous driver was killed:
//! each `refit upgrade` resumes its own journal, so nothing finished is repeated) → observe the
//! members the current stage may start → `next(run, facts, now)` → record each decision in the
//! store (one transaction, version-checked) and launch the members it starts *after* their
//! `MemberStarted` was recorded → repeat until only a `Wait` comes back. Between ticks the
//! driver sleeps until the earliest `Wait { until }`, a member's outcome, or 2 s (approvals,
//! stops and skips arrive through the store).
//!
//! Member upgrades are subprocesses: `refit upgrade --to V --kubeconfig K [--context C] --yes
//! -o json --store DB ...` through `refit_exec::command::run_command`, which kills the child when
//! the driver dies (PR_SET_PDEATHSIG) and streams its JSON lines (progress for `run show`, the
//! final summary for the reason of a failure).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use refit_core::Version;
use refit_core::fleet::{
    Decision, Event, Facts, MemberFacts, MemberTarget, RunState, UpdateState, UpgradeType,
};
use refit_store::Store;
use refit_store::fleet::{Lease, LeaseOutcome, MemberProgress, MemberRecord};
use tokio::sync::mpsc;

use super::observe::{observe, static_facts};
use super::{CommitError, commit_with, load_run, now};
use crate::output::{Format, usage};

/// Longest sleep between looks at the store (approvals, stops, skips come through it).
const POLL: Duration = Duration::from_secs(2);
/// A lease whose holder has not renewed it for this long is taken over.
const LEASE_TTL_MS: i64 = 15_000;
/// How long an observation of a member is reused.
const FACTS_TTL: Duration = Duration::from_secs(3);
/// A member upgrade that takes longer than this is killed and recorded as failed.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What a member upgrade subprocess reports.
enum Msg {
    Progress { run: String, progress: MemberProgress },
    Done { run: String, member: String, result: MemberOutcome },
}

/// How a member's `refit upgrade` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MemberOutcome {
    /// Done (the message says what it did).
    Succeeded(String),
    /// Failed, with why.
    Failed(String),
    /// Stopped at `--not-after` (its window closed) with nodes left; rerunning continues it.
    Paused(String),
}

/// How a tick left the run.
struct Tick {
    /// Nothing left to drive: finished, stopped, failed or not started, nothing in flight.
    finished: bool,
    /// Look again at this instant at the latest.
    wake: Option<Timestamp>,
}

/// A driver: one process driving one run (`run start --wait`) or every run (`daemon`).
pub struct Driver {
    store_path: PathBuf,
    store: Store,
    exe: PathBuf,
    holder: String,
    format: Format,
    children: HashMap<(String, String), tokio::task::JoinHandle<()>>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    facts: HashMap<String, (Instant, MemberFacts)>,
    held: HashSet<String>,
}

impl Driver {
    /// A driver on the store at `store_path`, launching member upgrades with this binary.
    pub fn new(store_path: &Path, format: Format) -> anyhow::Result<Driver> {
        let exe =
            std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot locate the refit binary: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Driver {
            store_path: store_path.to_path_buf(),
            store: Store::open(store_path)?,
            exe,
            holder: format!("{}:{}:{}", hostname(), std::process::id(), Timestamp::now().as_millisecond()),
            format,
            children: HashMap::new(),
            tx,
            rx,
            facts: HashMap::new(),
            held: HashSet::new(),
        })
    }

    /// Drives `run` until nothing is left to do; returns its final state.
    pub async fn drive(&mut self, run: &str) -> anyhow::Result<RunState> {
        loop {
            let tick = self.tick(run).await?;
            if tick.finished {
                self.release(run);
                return Ok(load_run(&self.store, run)?.state);
            }
            self.wait(tick.wake).await?;
        }
    }

    /// Sleeps until `wake`, a child's message or [`POLL`], handling the messages that arrive.
    async fn wait(&mut self, wake: Option<Timestamp>) -> anyhow::Result<()> {
        let mut sleep = POLL;
        if let Some(w) = wake {
            let ms = w.as_millisecond() - Timestamp::now().as_millisecond();
            sleep = sleep.min(Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)));
        }
        tokio::select! {
            m = self.rx.recv() => if let Some(m) = m { self.handle(m)? },
            _ = tokio::time::sleep(sleep) => {}
        }
        while let Ok(m) = self.rx.try_recv() {
            self.handle(m)?;
        }
        Ok(())
    }

    fn release(&mut self, run: &str) {
        if self.held.remove(run) {
            let _ = self.store.release_lease(run, &self.holder);
        }
    }

    /// Records what a child reported.
    fn handle(&mut self, m: Msg) -> anyhow::Result<()> {
        match m {
            Msg::Progress { run, progress } => {
                self.store.set_member_progress(&run, &progress)?;
            }
            Msg::Done { run, member, result } => {
                self.children.remove(&(run.clone(), member.clone()));
                let event = |at| match &result {
                    MemberOutcome::Succeeded(message) => {
                        Event::MemberSucceeded { member: member.clone(), at, message: Some(message.clone()) }
                    }
                    MemberOutcome::Failed(error) => {
                        Event::MemberFailed { member: member.clone(), at, error: error.clone() }
                    }
                    MemberOutcome::Paused(message) => {
                        Event::MemberPaused { member: member.clone(), at, message: message.clone() }
                    }
                };
                self.record(&run, event(now()));
                self.store.set_member_progress(
                    &run,
                    &MemberProgress {
                        member: member.clone(),
                        operation: None,
                        detail: match &result {
                            MemberOutcome::Succeeded(_) => "done".into(),
                            MemberOutcome::Failed(_) => "failed".into(),
                            MemberOutcome::Paused(_) => "paused: its window closed".into(),
                        },
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Applies and stores one event; a refusal (the run changed meanwhile) is reported and
    /// skipped. Returns whether it was recorded.
    fn record(&mut self, run: &str, event: Event) -> bool {
        match commit_with(&mut self.store, run, |_| Ok(event.clone())) {
            Ok(_) => {
                self.print(run, &event);
                true
            }
            Err(CommitError::Refused(e)) => {
                tracing::debug!(run, error = %e, "event no longer fits the run; skipped");
                false
            }
            Err(CommitError::Other(e)) => {
                eprintln!("warning: run {run}: cannot record {}: {e:#}", describe(&event));
                false
            }
        }
    }

    fn print(&self, run: &str, event: &Event) {
        match self.format {
            Format::Json => {
                if let Ok(line) = serde_json::to_string(&serde_json::json!({"run": run, "fleetEvent": event}))
                {
                    println!("{line}");
                }
            }
            _ => println!("{} {run}: {}", event.at().strftime("%H:%M:%S"), describe(event)),
        }
    }

    /// Takes or renews the lease; Err when another live driver holds it.
    fn lease(&mut self, run: &str) -> anyhow::Result<Result<(), Lease>> {
        let me = hostname();
        let gone = |l: &Lease| {
            let mut parts = l.holder.splitn(2, ':');
            parts.next() == Some(me.as_str()) && !process_alive(l.pid)
        };
        match self.store.acquire_lease(
            run,
            &self.holder,
            i64::from(std::process::id()),
            LEASE_TTL_MS,
            &gone,
        )? {
            LeaseOutcome::Acquired { took_over } => {
                self.held.insert(run.to_string());
                if let Some(l) = took_over {
                    // In the run's history: from when on this process drove it.
                    let event =
                        Event::DriverTookOver { driver: self.holder.clone(), previous: l.holder, at: now() };
                    self.record(run, event);
                }
                Ok(Ok(()))
            }
            LeaseOutcome::Held(l) => Ok(Err(l)),
        }
    }

    /// One tick of `run` (see the module doc).
    async fn tick(&mut self, run: &str) -> anyhow::Result<Tick> {
        if let Err(l) = self.lease(run)? {
            return Err(usage(format!(
                "run {run} is driven by another refit (pid {} on {}); stop that one first or let it drive",
                l.pid,
                l.holder.split(':').next().unwrap_or("?")
            )));
        }
        let mut wake = None;
        for _ in 0..200 {
            let state = load_run(&self.store, run)?.state;
            self.relaunch(&state).await?;
            let facts = self.facts_for(&state).await?;
            let decisions = refit_core::fleet::next(&state, &facts, now());
            let mut acted = false;
            for d in decisions {
                match d {
                    Decision::Record(e) => acted |= self.record(run, e),
                    ref start @ Decision::StartMember { ref member, ref target, window_closes_at, .. } => {
                        let Some(event) = start.started(now(), None) else { continue };
                        if self.record(run, event) {
                            acted = true;
                            let cp = facts.members.get(member).and_then(|f| f.versions.control_plane.clone());
                            self.launch(&state, member, target.clone(), cp, window_closes_at).await?;
                        }
                    }
                    Decision::Wait { until, .. } => wake = until,
                }
            }
            if !acted {
                break;
            }
        }
        let state = load_run(&self.store, run)?.state;
        let mine = self.children.keys().filter(|(r, _)| r == run).count();
        let finished = mine == 0
            && state.progress().in_flight == 0
            && !matches!(
                state.status.state,
                UpdateState::Running | UpdateState::Pending | UpdateState::Stopping
            );
        Ok(Tick { finished, wake })
    }

    /// Facts for every fleet member: windows and budgets for all, the cluster observed for the
    /// members the current stage may start.
    async fn facts_for(&mut self, state: &RunState) -> anyhow::Result<Facts> {
        let members = self.store.members()?;
        let candidates: HashSet<&str> = match state.current_stage() {
            Some(si) if matches!(state.status.state, UpdateState::Running | UpdateState::Pending) => state
                .stages[si]
                .groups
                .iter()
                .flat_map(|g| &g.members)
                .filter(|m| matches!(m.status.state, UpdateState::NotStarted | UpdateState::Pending))
                .map(|m| m.name.as_str())
                .collect(),
            _ => HashSet::new(),
        };
        let mut out = BTreeMap::new();
        for m in &members {
            let f =
                if candidates.contains(m.name.as_str()) { self.observed(m).await } else { static_facts(m) };
            out.insert(m.name.clone(), f);
        }
        Ok(Facts { members: out })
    }

    async fn observed(&mut self, m: &MemberRecord) -> MemberFacts {
        if let Some((at, f)) = self.facts.get(&m.name)
            && at.elapsed() < FACTS_TTL
        {
            return f.clone();
        }
        let f = observe(m).await;
        self.facts.insert(m.name.clone(), (Instant::now(), f.clone()));
        f
    }

    /// Members the store says are under way but no child of ours runs: launch them again
    /// (their `refit upgrade` resumes its journal).
    async fn relaunch(&mut self, state: &RunState) -> anyhow::Result<()> {
        let lost: Vec<(String, Option<MemberTarget>, Option<Timestamp>)> = state
            .members()
            .filter(|(_, _, m)| m.status.state.in_flight())
            .filter(|(_, _, m)| !self.children.contains_key(&(state.name.clone(), m.name.clone())))
            .map(|(_, _, m)| (m.name.clone(), m.target.clone(), m.window_closes_at))
            .collect();
        for (member, target, closes_at) in lost {
            // Recorded first (the history says when and that it was a relaunch); a refusal
            // means the member is no longer under way, so there is nothing to relaunch.
            if !self.record(&state.name, Event::MemberRelaunched { member: member.clone(), at: now() }) {
                continue;
            }
            let cp = match self.store.member(&member)? {
                Some(rec) if state.spec.upgrade_type == UpgradeType::NodeImageOnly => {
                    observe(&rec).await.versions.control_plane
                }
                _ => None,
            };
            // The window it started in still bounds it: a node under way finishes, none starts.
            self.launch(state, &member, target.unwrap_or_default(), cp, closes_at).await?;
        }
        Ok(())
    }

    /// Starts the member's `refit upgrade` as a child task.
    async fn launch(
        &mut self,
        state: &RunState,
        member: &str,
        target: MemberTarget,
        control_plane: Option<Version>,
        not_after: Option<Timestamp>,
    ) -> anyhow::Result<()> {
        let run = state.name.clone();
        let key = (run.clone(), member.to_string());
        let tx = self.tx.clone();
        let Some(rec) = self.store.member(member)? else {
            let _ = tx.send(Msg::Done {
                run,
                member: member.to_string(),
                result: MemberOutcome::Failed(
                    "no longer a fleet member: cannot reach it to upgrade it".into(),
                ),
            });
            return Ok(());
        };
        let argv = upgrade_argv(
            &self.exe,
            &self.store_path,
            &rec,
            state.spec.upgrade_type,
            &target,
            control_plane,
            not_after,
        );
        let env = node_image_env(&target);
        let task = tokio::spawn(async move {
            let member = rec.name.clone();
            let result = match argv {
                Ok(argv) => member_upgrade(&run, &member, &argv, &env, &tx).await,
                Err(e) => MemberOutcome::Failed(e),
            };
            let _ = tx.send(Msg::Done { run, member, result });
        });
        self.children.insert(key, task);
        Ok(())
    }
}

/// The `refit upgrade` command line for one member.
pub fn upgrade_argv(
    exe: &Path,
    store: &Path,
    m: &MemberRecord,
    upgrade_type: UpgradeType,
    target: &MemberTarget,
    control_plane: Option<Version>,
    not_after: Option<Timestamp>,
) -> Result<Vec<String>, String> {
    let to = match upgrade_type {
        UpgradeType::Full | UpgradeType::ControlPlaneOnly => target
            .kubernetes
            .as_ref()
            .map(|v| v.to_string())
            .ok_or("the run's frozen target has no Kubernetes version")?,
        // Node images only: every node is rolled through cordon, drain, the action (which gets
        // REFIT_NODE_IMAGES) and uncordon at the version it already runs.
        UpgradeType::NodeImageOnly => control_plane
            .map(|v| v.to_string())
            .ok_or("the member's control-plane version could not be read (needed to roll its node images)")?,
    };
    let mut argv = vec![
        exe.display().to_string(),
        "upgrade".into(),
        "--to".into(),
        to,
        "--yes".into(),
        "-o".into(),
        "json".into(),
        "--store".into(),
        store.display().to_string(),
    ];
    if let Some(k) = &m.kubeconfig {
        argv.extend(["--kubeconfig".into(), k.clone()]);
    }
    if let Some(c) = &m.context {
        argv.extend(["--context".into(), c.clone()]);
    }
    if let Some(t) = not_after {
        argv.extend(["--not-after".into(), t.to_string()]);
    }
    match upgrade_type {
        UpgradeType::ControlPlaneOnly => argv.push("--control-plane-only".into()),
        UpgradeType::NodeImageOnly => argv.push("--force".into()),
        UpgradeType::Full => {}
    }
    if let Some(a) = &m.action {
        argv.extend(["--action".into(), a.clone()]);
    }
    if let Some(p) = &m.plan_file {
        argv.extend(["-f".into(), p.clone()]);
    }
    argv.extend(m.upgrade_args.iter().cloned());
    Ok(argv)
}

/// `REFIT_NODE_IMAGES=family=version,...` when the member's target moves images.
fn node_image_env(target: &MemberTarget) -> Vec<(String, String)> {
    if target.node_images.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = target.node_images.iter().map(|(f, v)| format!("{f}={v}")).collect();
    vec![("REFIT_NODE_IMAGES".into(), list.join(","))]
}

/// What a member's `refit upgrade -o json` told us so far.
#[derive(Default)]
struct Seen {
    operation: Option<String>,
    units: usize,
    finished: usize,
    current: String,
    state: Option<String>,
    reason: Option<String>,
}

/// Runs one member's upgrade.
async fn member_upgrade(
    run: &str,
    member: &str,
    argv: &[String],
    env: &[(String, String)],
    tx: &mpsc::UnboundedSender<Msg>,
) -> MemberOutcome {
    let seen = Mutex::new(Seen::default());
    let on_line = |line: refit_exec::command::OutputLine| {
        let refit_exec::command::OutputLine::Stdout(text) = line else { return };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return };
        let Ok(mut s) = seen.lock() else { return };
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        if v.get("event").is_none() && v.get("blocked").and_then(|b| b.as_bool()) == Some(true) {
            // The plan itself (printed instead of a run when a check blocks it).
            s.state = Some("blocked".into());
            s.reason = Some(blocked_reason(&v));
            return;
        }
        match v.get("event").and_then(|e| e.as_str()) {
            Some("run-started") => {
                s.operation = field("run");
                s.units = v.get("units").and_then(|u| u.as_u64()).unwrap_or(0) as usize;
                s.finished = 0;
            }
            Some("step-started") => {
                s.current =
                    format!("{}: {}", field("node").unwrap_or_default(), field("step").unwrap_or_default())
            }
            Some("unit-finished") | Some("unit-skipped") => s.finished += 1,
            Some("summary") => {
                let o = v.get("outcome");
                s.state = o.and_then(|o| o.get("state")).and_then(|x| x.as_str()).map(str::to_string);
                s.reason = o.and_then(|o| o.get("reason")).and_then(|x| x.as_str()).map(str::to_string);
                return;
            }
            _ => return,
        }
        let detail = if s.units > 0 {
            format!("{}/{} node steps; {}", s.finished.min(s.units), s.units, s.current)
        } else {
            s.current.clone()
        };
        let _ = tx.send(Msg::Progress {
            run: run.to_string(),
            progress: MemberProgress { member: member.to_string(), operation: s.operation.clone(), detail },
        });
    };
    let result = refit_exec::command::run_command(argv, env, MEMBER_TIMEOUT, &on_line).await;
    let s = seen.into_inner().unwrap_or_default();
    let op = s.operation.clone().map(|o| format!(" (run {o})")).unwrap_or_default();
    match (result, s.state.as_deref()) {
        // Paused exits with its own code; the summary says so either way.
        (_, Some("paused")) => MemberOutcome::Paused(format!(
            "refit upgrade paused{op}: {}",
            s.reason.as_deref().unwrap_or("its deadline passed")
        )),
        (Ok(_), Some(state)) => MemberOutcome::Succeeded(format!("refit upgrade {state}{op}")),
        (Ok(_), None) => MemberOutcome::Succeeded("nothing to upgrade: already at the target".to_string()),
        (Err(e), state) => MemberOutcome::Failed(match s.reason {
            Some(r) => format!("refit upgrade {}{op}: {r}", state.unwrap_or("failed")),
            None => first_lines(&e.to_string()),
        }),
    }
}

/// Why a member's plan is blocked: its first blockers, for the member's error.
fn blocked_reason(plan: &serde_json::Value) -> String {
    let blockers: Vec<String> = plan
        .get("findings")
        .and_then(|f| f.as_array())
        .into_iter()
        .flatten()
        .filter(|f| f.get("severity").and_then(|s| s.as_str()) == Some("blocker"))
        .map(|f| {
            let text = |k: &str| f.get(k).and_then(|x| x.as_str()).unwrap_or("");
            format!("{}: {}", text("subject"), text("message"))
        })
        .collect();
    let more = blockers.len().saturating_sub(3);
    let mut reason =
        format!("the plan is blocked: {}", blockers.into_iter().take(3).collect::<Vec<_>>().join("; "));
    if more > 0 {
        reason.push_str(&format!("; and {more} more (refit plan shows them all)"));
    }
    reason
}

/// An error in at most three lines (the command's last stderr lines are in it).
fn first_lines(s: &str) -> String {
    s.lines().filter(|l| !l.trim().is_empty()).take(3).collect::<Vec<_>>().join(" | ")
}

/// One line per fleet event, for people.
pub fn describe(e: &Event) -> String {
    match e {
        Event::Start { targets: Some(t), .. } => format!(
            "started; targets frozen (kubernetes {}, node images {:?})",
            t.kubernetes.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "unchanged".into()),
            t.node_images
        ),
        Event::Start { .. } => "started again".into(),
        Event::Stop { .. } => "stop requested".into(),
        Event::RetryFailed { .. } => "retrying failed members".into(),
        Event::Skip { targets, by, .. } => format!(
            "skip {} by {}",
            targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" "),
            by.as_deref().unwrap_or("?")
        ),
        Event::ApproveGate { gate, by, .. } => format!("gate {gate} approved by {by}"),
        Event::GateReached { gate, .. } => format!("gate {gate} reached"),
        Event::GateTimeReached { gate, .. } => format!("gate {gate}: its scheduled time came"),
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether process `pid` exists and is not a zombie (a killed driver its parent has not reaped).
fn process_alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: `pid (comm) S ...`.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// `refit fleet daemon`: drives every run that has work, until killed.
pub async fn daemon(store_path: &Path, exit_when_idle: bool, format: Format) -> anyhow::Result<ExitCode> {
    let mut d = Driver::new(store_path, format)?;
    if format.is_table() {
        println!("fleet daemon {} driving runs in {}", d.holder, store_path.display());
    }
    loop {
        let runs = d.store.fleet_runs()?;
        let mut wake: Option<Timestamp> = None;
        let mut busy = false;
        for r in runs {
            let s = &r.state;
            let active =
                matches!(s.status.state, UpdateState::Running | UpdateState::Pending | UpdateState::Stopping)
                    || s.progress().in_flight > 0;
            if !active {
                d.release(&s.name);
                continue;
            }
            match d.tick(&s.name).await {
                Ok(t) if t.finished => d.release(&s.name),
                Ok(t) => {
                    busy = true;
                    wake = match (wake, t.wake) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                // Driven by someone else: leave it to them.
                Err(e) if e.chain().any(|c| c.downcast_ref::<crate::output::UsageError>().is_some()) => {
                    tracing::debug!(run = %s.name, "driven elsewhere: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if exit_when_idle && !busy && d.children.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        d.wait(wake).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_plan_names_its_first_blockers() {
        let plan = serde_json::json!({"blocked": true, "findings": [
            {"severity": "warning", "subject": "node/w-0", "message": "ignored"},
            {"severity": "blocker", "subject": "pod/a/x", "message": "unmanaged"},
            {"severity": "blocker", "subject": "pod/a/y", "message": "unmanaged"},
            {"severity": "blocker", "subject": "pod/a/z", "message": "unmanaged"},
            {"severity": "blocker", "subject": "pod/a/w", "message": "unmanaged"},
        ]});
        let r = blocked_reason(&plan);
        assert!(r.starts_with("the plan is blocked: pod/a/x: unmanaged; pod/a/y"), "{r}");
        assert!(r.ends_with("and 1 more (refit plan shows them all)"), "{r}");
        assert!(!r.contains("ignored"));
    }
}
