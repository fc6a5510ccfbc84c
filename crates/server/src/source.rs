//! Where the server's state comes from and where its actions go: [`Source`], implemented by
//! the local SQLite store ([`LocalStore`]) and by a hub cluster's custom resources
//! ([`crate::hub::HubSource`]); the API, stream, metrics and notifier stay as they are.
//!
//! The trait is synchronous on purpose: the store is, and every call is short. The server calls
//! it from `spawn_blocking`, so a slow disk never stalls the async workers.

use std::path::Path;
use std::sync::Mutex;

use jiff::Timestamp;
use refit_core::fleet::{
    Event, FleetMember, GateRef, NodeImageSelection, RunState, SkipTarget, TransitionError, UpdateState,
    freeze_targets, resolve,
};
use refit_store::fleet::{Lease, MemberProgress, MemberRecord, RunEvent, StoredRun};
use refit_store::notify::{AuditOutcome, AuditRecord, Delivery, FleetEntry, Hook, JournalEntry, NotifyKind};
use refit_store::{RunRow, StepRow, Store};
use serde::{Deserialize, Serialize};

/// Something a person asks the server to do to a fleet run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum Action {
    /// Approve a gate (pending, or not reached yet: a pre-approval).
    ApproveGate {
        /// Which.
        gate: GateRef,
        /// A pre-approval unused after this many seconds no longer counts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_in_seconds: Option<u64>,
    },
    /// Skip members, groups, stages or after-stage waits.
    Skip {
        /// What.
        targets: Vec<SkipTarget>,
    },
    /// Start nothing new; upgrades under way finish.
    Stop,
    /// Start (the first time: freeze the member set and targets) or start again.
    Start,
}

impl Action {
    /// Its name in the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            Action::ApproveGate { .. } => "approve-gate",
            Action::Skip { .. } => "skip",
            Action::Stop => "stop",
            Action::Start => "start",
        }
    }

    /// What it is about, in the audit trail: `run`, `run/gate`, `run/Member:m Group:g`.
    pub fn target(&self, run: &str) -> String {
        match self {
            Action::ApproveGate { gate, .. } => format!("{run}/{gate}"),
            Action::Skip { targets } => {
                format!("{run}/{}", targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
            }
            Action::Stop | Action::Start => run.to_string(),
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] refit_store::Error),
    /// The hub could not be read (or written).
    #[error("the hub: {context}: {source}")]
    Hub {
        /// What was asked.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where the server's state lives: what it can and cannot show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// The local SQLite store: fleets, cluster runs, webhooks, the audit trail.
    Local,
    /// A hub cluster's custom resources in this namespace: fleets only (member upgrades
    /// journal where the controller runs them; webhooks are configured in a local store).
    Hub {
        /// The fleet's namespace.
        namespace: String,
    },
}

/// Why an action did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// No such run.
    #[error("no update run named '{0}'")]
    NoRun(String),
    /// The run's rules refuse it (nothing changed).
    #[error(transparent)]
    Refused(#[from] TransitionError),
    /// It cannot be done from here (with the reason and the way out).
    #[error("{0}")]
    Unsupported(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] refit_store::Error),
    /// Reading or writing the state failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// When a pre-approval asked for `secs` from `now` expires (a user-given number: checked).
pub(crate) fn expiry(now: Timestamp, secs: Option<u64>) -> Result<Option<Timestamp>, ActError> {
    let Some(s) = secs else { return Ok(None) };
    let too_large = || ActError::Unsupported(format!("expiresInSeconds {s} is too large"));
    let secs = i64::try_from(s).map_err(|_| too_large())?;
    Ok(Some(now.checked_add(jiff::SignedDuration::from_secs(secs)).map_err(|_| too_large())?))
}

/// How an action ended, as the audit trail records it: done, refused (nothing changed) with
/// the reason, or failed with the error.
pub(crate) fn audit_outcome(result: &Result<RunState, ActError>) -> (AuditOutcome, String) {
    match result {
        Ok(_) => (AuditOutcome::Done, String::new()),
        Err(e @ (ActError::Refused(_) | ActError::NoRun(_) | ActError::Unsupported(_))) => {
            (AuditOutcome::Refused, e.to_string())
        }
        Err(e) => (AuditOutcome::Failed, e.to_string()),
    }
}

/// Everything the server reads and does.
pub trait Source: Send + Sync + 'static {
    /// Where the state lives.
    fn home(&self) -> Home {
        Home::Local
    }
    /// Starts sending new events to `tx` itself (a hub's watches) and says so; false: the
    /// server tails the journals ([`Source::journal_after`]) every poll interval.
    fn push_events(
        &self,
        _tx: &tokio::sync::broadcast::Sender<std::sync::Arc<crate::stream::StreamEvent>>,
    ) -> bool {
        false
    }
    /// Fleet members, by name.
    fn members(&self) -> Result<Vec<MemberRecord>, ReadError>;
    /// Stored strategies, by name.
    fn strategies(&self) -> Result<Vec<(String, refit_core::fleet::Strategy)>, ReadError>;
    /// Every fleet run, oldest first.
    fn fleet_runs(&self) -> Result<Vec<StoredRun>, ReadError>;
    /// One fleet run.
    fn fleet_run(&self, name: &str) -> Result<Option<StoredRun>, ReadError>;
    /// A fleet run's history.
    fn fleet_run_events(&self, name: &str) -> Result<Vec<RunEvent>, ReadError>;
    /// What the driver last saw of each member's cluster run.
    fn member_progress(&self, run: &str) -> Result<Vec<MemberProgress>, ReadError>;
    /// Who drives a fleet run.
    fn lease(&self, run: &str) -> Result<Option<Lease>, ReadError>;
    /// Every cluster run, newest first.
    fn cluster_runs(&self) -> Result<Vec<RunRow>, ReadError>;
    /// One cluster run.
    fn cluster_run(&self, id: &str) -> Result<Option<RunRow>, ReadError>;
    /// A cluster run's journaled steps.
    fn steps(&self, id: &str) -> Result<Vec<StepRow>, ReadError>;
    /// A cluster run's journal with times.
    fn run_journal(&self, id: &str) -> Result<Vec<JournalEntry>, ReadError>;
    /// Cluster journal entries after `seq`.
    fn journal_after(&self, seq: i64, limit: u32) -> Result<Vec<JournalEntry>, ReadError>;
    /// Fleet history entries after `seq`.
    fn fleet_history_after(&self, seq: i64, limit: u32) -> Result<Vec<FleetEntry>, ReadError>;
    /// The newest sequence numbers (cluster journal, fleet history).
    fn journal_heads(&self) -> Result<(i64, i64), ReadError>;
    /// Performs `action` on `run` for `actor`, audited before and after.
    fn act(&self, actor: &str, run: &str, action: &Action, now: Timestamp) -> Result<RunState, ActError>;
    /// The audit trail (of one run, or all).
    fn audit(&self, run: Option<&str>) -> Result<Vec<AuditRecord>, ReadError>;
    /// Webhooks.
    fn hooks(&self) -> Result<Vec<Hook>, ReadError>;
    /// Queues a notification once per (hook, key).
    fn enqueue_delivery(
        &self,
        hook: &str,
        key: &str,
        kind: NotifyKind,
        run: &str,
        payload: &str,
    ) -> Result<bool, ReadError>;
    /// Deliveries due now.
    fn due_deliveries(&self, limit: u32) -> Result<Vec<Delivery>, ReadError>;
    /// When the next pending delivery is due (Unix ms).
    fn next_delivery_due_ms(&self) -> Result<Option<i64>, ReadError>;
    /// Records a delivery attempt.
    fn record_attempt(&self, id: i64, result: Result<(), (&str, Option<i64>)>) -> Result<(), ReadError>;
    /// Failed delivery attempts per hook.
    fn delivery_failures(&self) -> Result<Vec<(String, u64)>, ReadError>;
}

/// The local store (the same file the CLI uses).
#[derive(Debug)]
pub struct LocalStore {
    store: Mutex<Store>,
}

impl LocalStore {
    /// Opens the store at `path` (creating and migrating it like the CLI does).
    pub fn open(path: &Path) -> Result<LocalStore, ReadError> {
        Ok(LocalStore { store: Mutex::new(Store::open(path)?) })
    }

    fn s(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds the event for `action` against the run as it is now.
    fn event_for(
        &self,
        action: &Action,
        cur: &RunState,
        members: &[FleetMember],
        actor: &str,
        now: Timestamp,
    ) -> Result<Event, ActError> {
        Ok(match action {
            Action::ApproveGate { gate, expires_in_seconds } => Event::ApproveGate {
                gate: gate.clone(),
                by: actor.to_string(),
                at: now,
                expires_at: expiry(now, *expires_in_seconds)?,
            },
            Action::Skip { targets } => {
                Event::Skip { targets: targets.clone(), by: Some(actor.to_string()), at: now }
            }
            Action::Stop => Event::Stop { at: now, by: Some(actor.to_string()) },
            Action::Start if cur.status.state == UpdateState::NotStarted => {
                // As `refit fleet run start`: the first start freezes the member set (resolved
                // again now) and the targets. Consistent node images need every member's images
                // read from its cluster, which only the CLI does.
                if cur.spec.upgrade_type.moves_node_images()
                    && cur.spec.node_image_selection == NodeImageSelection::Consistent
                {
                    return Err(ActError::Unsupported(format!(
                        "run {} picks node images consistently across members: its first start reads every member's images; start it with `refit fleet run start {}`",
                        cur.name, cur.name
                    )));
                }
                let plan =
                    resolve(&cur.strategy, members).map_err(|e| ActError::Unsupported(e.to_string()))?;
                let targets = freeze_targets(&cur.spec, std::iter::empty());
                Event::Start {
                    at: now,
                    targets: Some(targets),
                    plan: Some(plan),
                    by: Some(actor.to_string()),
                }
            }
            Action::Start => Event::Start { at: now, targets: None, plan: None, by: Some(actor.to_string()) },
        })
    }

    /// The same commit as the CLI's fleet commands (`refit_fleet::commit_with`: read → core's
    /// apply + follow_up → one versioned write, read again on a conflict), so a person's action
    /// and the driver's decisions never overwrite each other. The members a first start resolves
    /// are read before the store is held for the commit.
    fn commit(&self, actor: &str, run: &str, action: &Action, now: Timestamp) -> Result<RunState, ActError> {
        let members: Vec<FleetMember> = match action {
            Action::Start => self
                .s()
                .members()?
                .into_iter()
                .map(|m| FleetMember { name: m.name, labels: m.labels, update_group: m.update_group })
                .collect(),
            _ => Vec::new(),
        };
        // event_for's own refusals travel through refit_fleet's error as they are.
        let refused = std::cell::RefCell::new(None);
        let result = refit_fleet::commit::commit_with(&mut self.s(), run, None, |cur| {
            self.event_for(action, cur, &members, actor, now).map_err(|e| {
                let text = e.to_string();
                refused.replace(Some(e));
                refit_fleet::Error::Invalid(text)
            })
        });
        match result {
            Ok(stored) => Ok(stored.state),
            Err(e) => Err(match (refused.into_inner(), e) {
                (Some(own), _) => own,
                (None, refit_fleet::Error::NoRun(name)) => ActError::NoRun(name),
                (None, refit_fleet::Error::Refused(t)) => ActError::Refused(t),
                (None, refit_fleet::Error::Store(s)) => ActError::Store(s),
                (None, other) => ActError::Unsupported(other.to_string()),
            }),
        }
    }
}

impl Source for LocalStore {
    fn members(&self) -> Result<Vec<MemberRecord>, ReadError> {
        Ok(self.s().members()?)
    }
    fn strategies(&self) -> Result<Vec<(String, refit_core::fleet::Strategy)>, ReadError> {
        Ok(self.s().strategies()?)
    }
    fn fleet_runs(&self) -> Result<Vec<StoredRun>, ReadError> {
        Ok(self.s().fleet_runs()?)
    }
    fn fleet_run(&self, name: &str) -> Result<Option<StoredRun>, ReadError> {
        Ok(self.s().fleet_run(name)?)
    }
    fn fleet_run_events(&self, name: &str) -> Result<Vec<RunEvent>, ReadError> {
        Ok(self.s().fleet_run_events(name)?)
    }
    fn member_progress(&self, run: &str) -> Result<Vec<MemberProgress>, ReadError> {
        Ok(self.s().member_progress(run)?)
    }
    fn lease(&self, run: &str) -> Result<Option<Lease>, ReadError> {
        Ok(self.s().lease(run)?)
    }
    fn cluster_runs(&self) -> Result<Vec<RunRow>, ReadError> {
        Ok(self.s().runs()?)
    }
    fn cluster_run(&self, id: &str) -> Result<Option<RunRow>, ReadError> {
        Ok(self.s().run(id)?)
    }
    fn steps(&self, id: &str) -> Result<Vec<StepRow>, ReadError> {
        Ok(self.s().steps(id)?)
    }
    fn run_journal(&self, id: &str) -> Result<Vec<JournalEntry>, ReadError> {
        Ok(self.s().run_journal(id)?)
    }
    fn journal_after(&self, seq: i64, limit: u32) -> Result<Vec<JournalEntry>, ReadError> {
        Ok(self.s().journal_after(seq, limit)?)
    }
    fn fleet_history_after(&self, seq: i64, limit: u32) -> Result<Vec<FleetEntry>, ReadError> {
        Ok(self.s().fleet_history_after(seq, limit)?)
    }
    fn journal_heads(&self) -> Result<(i64, i64), ReadError> {
        Ok(self.s().journal_heads()?)
    }
    fn act(&self, actor: &str, run: &str, action: &Action, now: Timestamp) -> Result<RunState, ActError> {
        let seq = self.s().audit_request(actor, action.name(), &action.target(run))?;
        let result = self.commit(actor, run, action, now);
        let (outcome, detail) = audit_outcome(&result);
        self.s().audit_outcome(seq, outcome, &detail)?;
        result
    }
    fn audit(&self, run: Option<&str>) -> Result<Vec<AuditRecord>, ReadError> {
        Ok(self.s().audit(run)?)
    }
    fn hooks(&self) -> Result<Vec<Hook>, ReadError> {
        Ok(self.s().hooks()?)
    }
    fn enqueue_delivery(
        &self,
        hook: &str,
        key: &str,
        kind: NotifyKind,
        run: &str,
        payload: &str,
    ) -> Result<bool, ReadError> {
        Ok(self.s().enqueue_delivery(hook, key, kind, run, payload)?)
    }
    fn due_deliveries(&self, limit: u32) -> Result<Vec<Delivery>, ReadError> {
        Ok(self.s().due_deliveries(limit)?)
    }
    fn next_delivery_due_ms(&self) -> Result<Option<i64>, ReadError> {
        Ok(self.s().next_delivery_due_ms()?)
    }
    fn record_attempt(&self, id: i64, result: Result<(), (&str, Option<i64>)>) -> Result<(), ReadError> {
        Ok(self.s().record_attempt(id, result)?)
    }
    fn delivery_failures(&self) -> Result<Vec<(String, u64)>, ReadError> {
        Ok(self.s().delivery_failures()?)
    }
}
