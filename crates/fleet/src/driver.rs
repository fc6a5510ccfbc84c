//! The update-run driver: I/O only, every decision from `refit_core::fleet`.
//!
//! One tick of a run: take (or renew) the run's lease → load it → for member upgrades the store
//! says are under way but that no task of ours runs (the previous driver was killed), look at
//! the member and either relaunch its upgrade (it resumes its own journal, so nothing finished
//! is repeated) or, when it cannot be reached, record it Pending (`core::fleet::outcome`) →
//! observe the members the current stage may start (concurrently, a timeout each) →
//! `next(run, facts, now)` → record each decision (one versioned, fenced transaction) and
//! launch the members it starts *after* their `MemberStarted` was recorded (the current
//! stage's health gates that are due are probed first and their observations passed in the
//! facts, so `next` records them and the soak rule judges them) → repeat until only
//! a `Wait` comes back. Between ticks the driver sleeps until the earliest `Wait { until }`, a
//! member's outcome, or [`DriverConfig::poll`] (approvals, stops and skips arrive through the
//! store). Its leases are renewed by a timer ([`crate::lease::Renewer`]), not by this loop; if
//! another driver took a run over, the run's writes are refused, its member upgrades are
//! cancelled and the run is left to the new holder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use refit_core::Version;
use refit_core::fleet::{
    Decision, Event, Facts, MemberFacts, MemberTarget, RunState, UpdateState, UpgradeEnd, UpgradeType,
};
use refit_core::health::Observation;
use refit_store::fleet::{MemberProgress, MemberRecord};
use tokio::sync::mpsc;

use crate::commit::{commit_on, load_run_on};
use crate::launch::{MemberLauncher, MemberUpgrade, OnProgress};
use crate::lease::Identity;
use crate::observe::{Observer, observe_all, observe_within, static_facts};
use crate::runs::ProfileCadence;
use crate::store::{DriverStore, LocalFleet};
use crate::{Error, now};

/// The driver's timings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Longest sleep between looks at the store.
    pub poll: Duration,
    /// How long an observation of a member is reused.
    pub facts_ttl: Duration,
    /// A lease of another host's driver not renewed for this long is taken over.
    pub lease_ttl_ms: i64,
    /// How often the timer renews the leases held.
    pub renew_every: Duration,
    /// How long observing one member may take.
    pub observe_timeout: Duration,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            poll: Duration::from_secs(2),
            facts_ttl: Duration::from_secs(3),
            lease_ttl_ms: crate::lease::LEASE_TTL_MS,
            renew_every: crate::lease::RENEW_EVERY,
            observe_timeout: crate::observe::OBSERVE_TIMEOUT,
        }
    }
}

/// What the driver tells its front end.
#[derive(Debug)]
pub enum Report<'a> {
    /// An event was recorded in the run.
    Recorded {
        /// The run.
        run: &'a str,
        /// The event.
        event: &'a Event,
    },
    /// Something did not work but the driver goes on.
    Warning {
        /// The run.
        run: &'a str,
        /// What.
        message: String,
    },
}

/// Receives the driver's [`Report`]s (the CLI prints them).
pub type Sink = Arc<dyn Fn(Report<'_>) + Send + Sync>;

/// What a member upgrade task reports.
enum Msg {
    Progress { run: String, progress: MemberProgress },
    Done { run: String, member: String, end: UpgradeEnd },
}

/// How a tick left the run.
#[derive(Debug)]
pub struct Tick {
    /// Nothing left to drive: finished, stopped, failed or not started, nothing in flight.
    pub finished: bool,
    /// Look again at this instant at the latest.
    pub wake: Option<Timestamp>,
}

/// A driver: one process driving one run (`run start --wait`) or every run (`daemon`), on the
/// SQLite store ([`LocalFleet`], the default) or any other [`DriverStore`] (the hub).
pub struct Driver<L: MemberLauncher, O: Observer, S: DriverStore = LocalFleet> {
    store: S,
    launcher: Arc<L>,
    observer: Arc<O>,
    cfg: DriverConfig,
    sink: Sink,
    children: HashMap<(String, String), tokio::task::JoinHandle<()>>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    facts: HashMap<String, (Instant, MemberFacts)>,
}

impl<L: MemberLauncher, O: Observer> Driver<L, O, LocalFleet> {
    /// A driver on the store at `store_path`.
    pub fn new(
        store_path: &Path,
        launcher: L,
        observer: O,
        sink: Sink,
        cfg: DriverConfig,
    ) -> Result<Driver<L, O>, Error> {
        Driver::with_identity(store_path, launcher, observer, sink, cfg, Identity::this_process())
    }

    /// Like [`Driver::new`] under a given identity (tests run two drivers in one process).
    pub fn with_identity(
        store_path: &Path,
        launcher: L,
        observer: O,
        sink: Sink,
        cfg: DriverConfig,
        me: Identity,
    ) -> Result<Driver<L, O>, Error> {
        let store = LocalFleet::open(store_path, me, cfg.lease_ttl_ms, cfg.renew_every)?;
        Ok(Driver::on(store, launcher, observer, sink, cfg))
    }
}

impl<L: MemberLauncher, O: Observer, S: DriverStore> Driver<L, O, S> {
    /// A driver on any fleet store (its leases are the store's).
    pub fn on(store: S, launcher: L, observer: O, sink: Sink, cfg: DriverConfig) -> Driver<L, O, S> {
        let (tx, rx) = mpsc::unbounded_channel();
        Driver {
            store,
            launcher: Arc::new(launcher),
            observer: Arc::new(observer),
            cfg,
            sink,
            children: HashMap::new(),
            tx,
            rx,
            facts: HashMap::new(),
        }
    }

    /// This driver's name in leases and history.
    pub fn holder(&self) -> &str {
        self.store.holder()
    }

    /// The store it drives on.
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// Drives `run` until nothing is left to do; returns its final state.
    pub async fn drive(&mut self, run: &str) -> Result<RunState, Error> {
        loop {
            let tick = self.tick(run).await?;
            if tick.finished {
                self.release(run).await;
                return Ok(load_run_on(&mut self.store, run).await?.state);
            }
            self.wait(tick.wake).await?;
        }
    }

    /// Drives every run that has work, until `exit_when_idle` and nothing is left. With
    /// `profiles` (`refit fleet daemon`), the auto-upgrade profiles are looked at on their
    /// cadence before a pass over the runs, so that a run a profile starts is driven in the
    /// same pass.
    pub async fn daemon(
        &mut self,
        exit_when_idle: bool,
        mut profiles: Option<&mut ProfileCadence>,
    ) -> Result<(), Error> {
        loop {
            if let Some(p) = profiles.as_deref_mut() {
                p.look_if_due(&self.observer).await;
            }
            let runs = self.store.runs().await?;
            let mut wake: Option<Timestamp> = None;
            let mut busy = false;
            for r in runs {
                let s = &r.state;
                let active = matches!(
                    s.status.state,
                    UpdateState::Running | UpdateState::Pending | UpdateState::Stopping
                ) || s.progress().in_flight > 0;
                if !active {
                    self.release(&s.name).await;
                    continue;
                }
                match self.tick(&s.name).await {
                    Ok(t) if t.finished => self.release(&s.name).await,
                    Ok(t) => {
                        busy = true;
                        wake = match (wake, t.wake) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    // Driven by someone else: leave it to them.
                    Err(e @ Error::Held { .. }) => tracing::debug!(run = %s.name, "driven elsewhere: {e}"),
                    Err(Error::Store(e @ refit_store::Error::Deposed { .. })) => {
                        (self.sink)(Report::Warning { run: &s.name, message: e.to_string() })
                    }
                    Err(e) => return Err(e),
                }
            }
            if exit_when_idle && !busy && self.children.is_empty() {
                return Ok(());
            }
            self.wait(wake).await?;
        }
    }

    /// Sleeps until `wake`, a member's message or the poll interval, handling what arrives.
    async fn wait(&mut self, wake: Option<Timestamp>) -> Result<(), Error> {
        self.wait_or(wake, std::future::pending()).await
    }

    /// Like the driver's own wait between ticks — until `wake`, a member upgrade's message
    /// (handled: progress and outcomes are recorded) or the poll interval — or until `also`
    /// completes (the hub's watches: a run or gate changed).
    pub async fn wait_or(
        &mut self,
        wake: Option<Timestamp>,
        also: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let mut sleep = self.cfg.poll;
        if let Some(w) = wake {
            let ms = w.as_millisecond().saturating_sub(Timestamp::now().as_millisecond());
            sleep = sleep.min(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        }
        tokio::select! {
            m = self.rx.recv() => if let Some(m) = m { self.handle(m).await? },
            _ = tokio::time::sleep(sleep) => {}
            () = also => {}
        }
        while let Ok(m) = self.rx.try_recv() {
            self.handle(m).await?;
        }
        Ok(())
    }

    async fn release(&mut self, run: &str) {
        self.store.release_lease(run).await;
    }

    /// Another driver holds `run` now: cancel our member upgrades of it (each resumes its
    /// journal under the new driver) and stop renewing it.
    fn deposed(&mut self, run: &str) {
        self.store.forget_lease(run);
        let mine: Vec<(String, String)> = self.children.keys().filter(|(r, _)| r == run).cloned().collect();
        for key in mine {
            if let Some(task) = self.children.remove(&key) {
                task.abort();
            }
        }
    }

    /// Records what a member task reported.
    async fn handle(&mut self, m: Msg) -> Result<(), Error> {
        match m {
            Msg::Progress { run, progress } => {
                // Best effort: a missed progress line is not worth stopping the run for.
                let fence = self.store.fence(&run);
                match self.store.set_member_progress(&run, &progress, fence.as_ref()).await {
                    Ok(()) => {}
                    Err(e @ Error::Store(refit_store::Error::Deposed { .. })) => {
                        self.deposed(&run);
                        return Err(e);
                    }
                    Err(e) => (self.sink)(Report::Warning { run: &run, message: format!("progress: {e}") }),
                }
            }
            Msg::Done { run, member, end } => {
                self.children.remove(&(run.clone(), member.clone()));
                // A node-image upgrade is done when the nodes say so (core's rule).
                let end = self.confirm_node_images(&run, &member, end).await?;
                // An upgrade that never reached its cluster: is the member reachable now? (If
                // not it waits Pending and is retried, as before a first start.)
                let facts = match (&end, self.store.member(&member).await?) {
                    (UpgradeEnd::Failed { reached: false, .. }, Some(rec)) => {
                        self.facts.remove(&member);
                        Some(observe_within(self.observer.as_ref(), &rec, self.cfg.observe_timeout).await)
                    }
                    _ => None,
                };
                let event = refit_core::fleet::outcome::ended(&member, &end, facts.as_ref(), now());
                let detail = match &event {
                    Event::MemberSucceeded { .. } => "done",
                    Event::MemberPaused { .. } => "paused: its window closed",
                    Event::MemberUnreachable { .. } => "waiting: cannot reach the cluster",
                    _ => "failed",
                };
                self.record(&run, event).await?;
                let progress = MemberProgress { member, operation: None, detail: detail.into() };
                let fence = self.store.fence(&run);
                if let Err(e) = self.store.set_member_progress(&run, &progress, fence.as_ref()).await {
                    (self.sink)(Report::Warning { run: &run, message: format!("progress: {e}") });
                }
            }
        }
        Ok(())
    }

    /// A NodeImageOnly member's reported success checked against its nodes' images
    /// (refit_core::fleet::outcome::confirm_node_images); other ends pass unchanged.
    async fn confirm_node_images(
        &mut self,
        run: &str,
        member: &str,
        end: UpgradeEnd,
    ) -> Result<UpgradeEnd, Error> {
        if !matches!(end, UpgradeEnd::Succeeded { .. }) {
            return Ok(end);
        }
        let state = load_run_on(&mut self.store, run).await?.state;
        if state.spec.upgrade_type != UpgradeType::NodeImageOnly {
            return Ok(end);
        }
        let target =
            state.members().find(|(_, _, m)| m.name == member).and_then(|(_, _, m)| m.target.clone());
        let Some(rec) = self.store.member(member).await? else { return Ok(end) };
        self.facts.remove(member);
        let facts = observe_within(self.observer.as_ref(), &rec, self.cfg.observe_timeout).await;
        Ok(refit_core::fleet::outcome::confirm_node_images(
            end,
            state.spec.upgrade_type,
            &target.unwrap_or_default(),
            &facts,
        ))
    }

    /// Applies and stores one event under our fence; a refusal (the run changed meanwhile) is
    /// skipped. Ok(whether it was recorded); Err only when we were deposed.
    async fn record(&mut self, run: &str, event: Event) -> Result<bool, Error> {
        let fence = self.store.fence(run);
        match commit_on(&mut self.store, run, fence.as_ref(), |_| Ok(event.clone())).await {
            Ok(_) => {
                (self.sink)(Report::Recorded { run, event: &event });
                Ok(true)
            }
            Err(Error::Refused(e)) => {
                tracing::debug!(run, error = %e, "event no longer fits the run; skipped");
                Ok(false)
            }
            Err(Error::Store(e @ refit_store::Error::Deposed { .. })) => {
                self.deposed(run);
                Err(e.into())
            }
            Err(e) => {
                (self.sink)(Report::Warning { run, message: format!("cannot record {event:?}: {e}") });
                Ok(false)
            }
        }
    }

    /// Takes or renews the lease; [`Error::Held`] when another live driver holds it.
    async fn lease(&mut self, run: &str) -> Result<(), Error> {
        match self.store.take_lease(run).await {
            Ok(taken) => {
                if let Some(previous) = taken.took_over {
                    // In the run's history: from when on this driver drove it.
                    let event = Event::DriverTookOver {
                        driver: self.store.holder().to_string(),
                        previous,
                        at: now(),
                    };
                    self.record(run, event).await?;
                }
                Ok(())
            }
            Err(e @ Error::Store(refit_store::Error::Deposed { .. })) => {
                self.deposed(run);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// One tick of `run` (see the module doc).
    pub async fn tick(&mut self, run: &str) -> Result<Tick, Error> {
        self.lease(run).await?;
        let mut wake = None;
        for _ in 0..200 {
            let state = load_run_on(&mut self.store, run).await?.state;
            self.relaunch(&state).await?;
            let mut facts = self.facts_for(&state).await?;
            facts.health = probe_health(&state).await;
            let decisions = refit_core::fleet::next(&state, &facts, now());
            let mut acted = false;
            for d in decisions {
                match d {
                    Decision::Record(e) => acted |= self.record(run, e).await?,
                    ref start @ Decision::StartMember { ref member, ref target, window_closes_at, .. } => {
                        let Some(event) = start.started(now(), None) else { continue };
                        if self.record(run, event).await? {
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
        let state = load_run_on(&mut self.store, run).await?.state;
        let mine = self.children.keys().filter(|(r, _)| r == run).count();
        let finished = mine == 0
            && state.progress().in_flight == 0
            && !matches!(
                state.status.state,
                UpdateState::Running | UpdateState::Pending | UpdateState::Stopping
            );
        Ok(Tick { finished, wake })
    }

    /// Facts for every fleet member: windows and budgets for all, the cluster observed (at
    /// once, a timeout each) for the members the current stage may start.
    async fn facts_for(&mut self, state: &RunState) -> Result<Facts, Error> {
        let members = self.store.members().await?;
        let candidates: HashSet<&str> = match state.current_stage() {
            Some(si) if matches!(state.status.state, UpdateState::Running | UpdateState::Pending) => state
                .stages
                .get(si)
                .into_iter()
                .flat_map(|s| &s.groups)
                .flat_map(|g| &g.members)
                .filter(|m| matches!(m.status.state, UpdateState::NotStarted | UpdateState::Pending))
                .map(|m| m.name.as_str())
                .collect(),
            _ => HashSet::new(),
        };
        let stale: Vec<MemberRecord> = members
            .iter()
            .filter(|m| candidates.contains(m.name.as_str()))
            .filter(|m| self.facts.get(&m.name).is_none_or(|(at, _)| at.elapsed() >= self.cfg.facts_ttl))
            .cloned()
            .collect();
        for (name, f) in observe_all(&self.observer, &stale, self.cfg.observe_timeout).await {
            self.facts.insert(name, (Instant::now(), f));
        }
        let out = members
            .iter()
            .map(|m| {
                let f = match self.facts.get(&m.name) {
                    Some((_, f)) if candidates.contains(m.name.as_str()) => f.clone(),
                    _ => static_facts(m),
                };
                (m.name.clone(), f)
            })
            .collect();
        Ok(Facts { members: out, ..Facts::default() })
    }

    /// Members the store says are under way but no task of ours runs: relaunched (their
    /// upgrade resumes its journal), or Pending when they cannot be reached now.
    async fn relaunch(&mut self, state: &RunState) -> Result<(), Error> {
        let lost: Vec<(String, Option<MemberTarget>, Option<Timestamp>)> = state
            .members()
            .filter(|(_, _, m)| m.status.state.in_flight())
            .filter(|(_, _, m)| !self.children.contains_key(&(state.name.clone(), m.name.clone())))
            .map(|(_, _, m)| (m.name.clone(), m.target.clone(), m.window_closes_at))
            .collect();
        for (member, target, closes_at) in lost {
            let rec = self.store.member(&member).await?;
            let facts = match &rec {
                Some(r) => observe_within(self.observer.as_ref(), r, self.cfg.observe_timeout).await,
                // Not a member any more: relaunched, its launch fails saying so.
                None => MemberFacts::default(),
            };
            let event = refit_core::fleet::outcome::relaunch(&member, &facts, now());
            let relaunched = matches!(event, Event::MemberRelaunched { .. });
            // Recorded first (the history says when and what); a refusal means the member is
            // no longer under way, so there is nothing to relaunch.
            if !self.record(&state.name, event).await? || !relaunched {
                continue;
            }
            let cp = match state.spec.upgrade_type {
                UpgradeType::NodeImageOnly => facts.versions.control_plane,
                _ => None,
            };
            // The window it started in still bounds it: a node under way finishes, none starts.
            self.launch(state, &member, target.unwrap_or_default(), cp, closes_at).await?;
        }
        Ok(())
    }

    /// Starts the member's upgrade as a task.
    async fn launch(
        &mut self,
        state: &RunState,
        member: &str,
        target: MemberTarget,
        control_plane: Option<Version>,
        not_after: Option<Timestamp>,
    ) -> Result<(), Error> {
        let run = state.name.clone();
        let key = (run.clone(), member.to_string());
        let tx = self.tx.clone();
        let Some(rec) = self.store.member(member).await? else {
            let _ = tx.send(Msg::Done {
                run,
                member: member.to_string(),
                end: UpgradeEnd::Failed {
                    error: "no longer a fleet member: cannot reach it to upgrade it".into(),
                    reached: true,
                },
            });
            return Ok(());
        };
        let upgrade = MemberUpgrade {
            run: run.clone(),
            member: rec,
            upgrade_type: state.spec.upgrade_type,
            target,
            control_plane,
            not_after,
            policy: state.spec.policy,
        };
        let launcher = self.launcher.clone();
        let task = tokio::spawn(async move {
            let member = upgrade.member.name.clone();
            let progress: OnProgress = {
                let (tx, run) = (tx.clone(), run.clone());
                Arc::new(move |progress: MemberProgress| {
                    let _ = tx.send(Msg::Progress { run: run.clone(), progress });
                })
            };
            let end = launcher.upgrade(upgrade, progress).await;
            let _ = tx.send(Msg::Done { run, member, end });
        });
        self.children.insert(key, task);
        Ok(())
    }
}

/// Probes the current stage's health gates that are due (core says which), concurrently,
/// each through `refit_exec::gate::probe` — the same probe the engine's gates between worker
/// batches use — and bounded by its probe timeout. A command gate gets the run and stage in
/// `REFIT_FLEET_RUN` / `REFIT_FLEET_STAGE`.
async fn probe_health(state: &RunState) -> BTreeMap<(String, String), Observation> {
    let due = state.health_gates_due(now());
    let probes = due.into_iter().map(|(stage, gate)| async move {
        let env = [
            ("REFIT_FLEET_RUN".to_string(), state.name.clone()),
            ("REFIT_FLEET_STAGE".to_string(), stage.clone()),
        ];
        let seen = refit_exec::gate::probe(&gate.check, &env).await;
        ((stage, gate.name), seen)
    });
    futures::future::join_all(probes).await.into_iter().collect()
}

impl<L: MemberLauncher, O: Observer, S: DriverStore> Drop for Driver<L, O, S> {
    fn drop(&mut self) {
        for (_, task) in self.children.drain() {
            task.abort();
        }
    }
}
