//! What `refit serve` keeps in the store (migration 4): webhook subscriptions, their
//! deliveries (an outbox: a notification is written once per hook before it is sent, so a
//! restart delivers what a crash left, at least once), the audit trail of actions taken through
//! the server (who — the token's name — did what to which run, and how it ended), and the
//! readers that tail the journals by sequence number (the event stream, metrics, notifications).
//!
//! Why an audit table next to the fleet history: a stop or a start of a fleet run has no `by`
//! in core's events, and a refused action (a gate that was not pending) changes no run at all;
//! both must still say who asked. Each action is recorded *before* it is attempted and its
//! outcome after, so even a server killed in between leaves the request on record.

use std::fmt;
use std::str::FromStr;

use refit_core::fleet::Event;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::{Error, Store, now};

/// The notify schema (migration 4).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE notify_hooks (
    name        TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    secret_file TEXT,
    created_at  TEXT NOT NULL
);
CREATE TABLE notify_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    hook            TEXT NOT NULL REFERENCES notify_hooks(name) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    kind            TEXT NOT NULL,
    run             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT,
    UNIQUE (hook, key)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries(state, next_attempt_ms);
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
"#;

/// What a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyKind {
    /// An Approval gate is waiting for someone.
    GatePending,
    /// A stage finished (Completed).
    StageCompleted,
    /// The run failed.
    RunFailed,
    /// The run completed.
    RunCompleted,
}

impl NotifyKind {
    /// Every kind, in the order the help lists them.
    pub const ALL: [NotifyKind; 4] = [
        NotifyKind::GatePending,
        NotifyKind::StageCompleted,
        NotifyKind::RunFailed,
        NotifyKind::RunCompleted,
    ];

    /// Its name on the command line, in payloads and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::GatePending => "gate-pending",
            NotifyKind::StageCompleted => "stage-completed",
            NotifyKind::RunFailed => "run-failed",
            NotifyKind::RunCompleted => "run-completed",
        }
    }
}

impl fmt::Display for NotifyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotifyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NotifyKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!(
                "'{s}' is not a notification event: expected {}",
                NotifyKind::ALL.map(NotifyKind::as_str).join(", ")
            )
        })
    }
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// Its name.
    pub name: String,
    /// Where payloads are POSTed.
    pub url: String,
    /// What it is told about.
    pub events: Vec<NotifyKind>,
    /// The file holding the HMAC secret (a path: the secret itself is never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// When it was added (the store's clock, `seconds.nanoseconds`; set by the store): a hook
    /// is told about what happens from then on, not about a fleet's past.
    #[serde(default)]
    pub created_at: String,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not delivered yet (waiting for its next attempt).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after the last attempt.
    Failed,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            _ => Err(Error::Json(format!("unknown delivery state '{s}'"))),
        }
    }
}

/// One notification to one hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Its id (also the payload's `id` and the `X-Refit-Delivery` header).
    pub id: i64,
    /// The hook.
    pub hook: String,
    /// What it notifies, unique per hook (a notification is queued once).
    pub key: String,
    /// Its kind.
    pub kind: NotifyKind,
    /// The fleet run.
    pub run: String,
    /// The JSON body as sent.
    pub payload: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_attempt_ms: i64,
    /// What went wrong last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    /// Recorded before it was attempted (a record left like this: the server died meanwhile).
    Requested,
    /// Done.
    Done,
    /// Refused (the run's state does not allow it); nothing changed.
    Refused,
    /// Failed for another reason.
    Failed,
}

impl AuditOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Requested => "requested",
            AuditOutcome::Done => "done",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "requested" => Ok(AuditOutcome::Requested),
            "done" => Ok(AuditOutcome::Done),
            "refused" => Ok(AuditOutcome::Refused),
            "failed" => Ok(AuditOutcome::Failed),
            _ => Err(Error::Json(format!("unknown audit outcome '{s}'"))),
        }
    }
}

/// One action taken through the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Order.
    pub seq: i64,
    /// When it was requested (the store's clock: `seconds.nanoseconds`).
    pub at: String,
    /// Who (the token's name).
    pub actor: String,
    /// approve-gate, skip, stop, start.
    pub action: String,
    /// `run` or `run/gate`, `run/Member:m`.
    pub target: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The refusal or error, if any.
    pub detail: String,
}

/// One entry of a cluster run's journal, with its place in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Order across the store.
    pub seq: i64,
    /// The run.
    pub run: String,
    /// When (the store's clock: `seconds.nanoseconds` since the Unix epoch).
    pub at: String,
    /// The event as `-o json` prints it.
    pub body: String,
}

/// One entry of a fleet run's history, with its place in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEntry {
    /// Order across the store.
    pub seq: i64,
    /// The fleet run.
    pub run: String,
    /// The run version it produced.
    pub version: i64,
    /// The event.
    pub event: Event,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Json(e.to_string())
}

const SELECT_DELIVERY: &str =
    "SELECT id, hook, key, kind, run, payload, state, attempts, next_attempt_ms, last_error
    FROM notify_deliveries";

type RawDelivery = (i64, String, String, String, String, String, String, i64, i64, Option<String>);

fn raw_delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawDelivery> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn delivery(
    (id, hook, key, kind, run, payload, state, attempts, next, err): RawDelivery,
) -> Result<Delivery, Error> {
    Ok(Delivery {
        id,
        hook,
        key,
        kind: kind.parse().map_err(Error::Json)?,
        run,
        payload,
        state: DeliveryState::parse(&state)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_ms: next,
        last_error: err,
    })
}

impl Store {
    // ------------------------------------------------------------ hooks

    /// Adds a webhook; refuses a name in use.
    pub fn add_hook(&mut self, hook: &Hook) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM notify_hooks WHERE name = ?1", params![hook.name], |_| Ok(()))
            .optional()?;
        if exists.is_some() {
            return Err(Error::Exists { kind: "webhook", name: hook.name.clone() });
        }
        tx.execute(
            "INSERT INTO notify_hooks (name, url, events, secret_file, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hook.name, hook.url, serde_json::to_string(&hook.events).map_err(json_err)?, hook.secret_file, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every webhook, by name.
    pub fn hooks(&self) -> Result<Vec<Hook>, Error> {
        let mut q = self
            .conn
            .prepare("SELECT name, url, events, secret_file, created_at FROM notify_hooks ORDER BY name")?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(name, url, events, secret_file, created_at)| {
                let events =
                    serde_json::from_str(&events).map_err(|e| Error::Json(format!("webhook {name}: {e}")))?;
                Ok(Hook { name, url, events, secret_file, created_at })
            })
            .collect()
    }

    /// Removes a webhook and its deliveries; false when there was none.
    pub fn remove_hook(&mut self, name: &str) -> Result<bool, Error> {
        Ok(self.conn.execute("DELETE FROM notify_hooks WHERE name = ?1", params![name])? > 0)
    }

    // ------------------------------------------------------------ deliveries

    /// Queues a notification for `hook` unless one with `key` was queued before; true when
    /// this call queued it. The outbox makes delivery at-least-once across restarts and the
    /// key makes detection idempotent (the notifier may see the same state twice).
    pub fn enqueue_delivery(
        &mut self,
        hook: &str,
        key: &str,
        kind: NotifyKind,
        run: &str,
        payload: &str,
    ) -> Result<bool, Error> {
        let n = self.conn.execute(
            "INSERT INTO notify_deliveries (hook, key, kind, run, payload, state, attempts, next_attempt_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?7) ON CONFLICT(hook, key) DO NOTHING",
            params![hook, key, kind.as_str(), run, payload, unix_ms(), now()],
        )?;
        Ok(n > 0)
    }

    /// Pending deliveries whose next attempt is due, oldest first.
    pub fn due_deliveries(&self, limit: u32) -> Result<Vec<Delivery>, Error> {
        let mut q = self.conn.prepare(&format!(
            "{SELECT_DELIVERY} WHERE state = 'pending' AND next_attempt_ms <= ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = q.query_map(params![unix_ms(), limit], raw_delivery)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(delivery).collect()
    }

    /// The earliest next attempt among pending deliveries (Unix ms), if any.
    pub fn next_delivery_due_ms(&self) -> Result<Option<i64>, Error> {
        Ok(self
            .conn
            .query_row(
                "SELECT MIN(next_attempt_ms) FROM notify_deliveries WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Every delivery (newest first), optionally of one hook.
    pub fn deliveries(&self, hook: Option<&str>) -> Result<Vec<Delivery>, Error> {
        let mut q = self
            .conn
            .prepare(&format!("{SELECT_DELIVERY} WHERE ?1 IS NULL OR hook = ?1 ORDER BY id DESC"))?;
        let rows = q.query_map(params![hook], raw_delivery)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(delivery).collect()
    }

    /// Records an attempt: delivered, or failed with `error` and retried at `retry_at_ms`
    /// (None: given up).
    pub fn record_attempt(&mut self, id: i64, result: Result<(), (&str, Option<i64>)>) -> Result<(), Error> {
        match result {
            Ok(()) => self.conn.execute(
                "UPDATE notify_deliveries SET state = 'delivered', attempts = attempts + 1, last_error = NULL,
                    delivered_at = ?2 WHERE id = ?1",
                params![id, now()],
            )?,
            Err((error, retry_at)) => {
                let state = if retry_at.is_some() { DeliveryState::Pending } else { DeliveryState::Failed };
                self.conn.execute(
                    "UPDATE notify_deliveries SET state = ?2, attempts = attempts + 1, last_error = ?3,
                        next_attempt_ms = COALESCE(?4, next_attempt_ms) WHERE id = ?1",
                    params![id, state.as_str(), error, retry_at],
                )?
            }
        };
        Ok(())
    }

    /// Failed attempts per hook (every attempt that did not deliver, including retried ones).
    pub fn delivery_failures(&self) -> Result<Vec<(String, u64)>, Error> {
        let mut q = self.conn.prepare(
            "SELECT hook, SUM(CASE WHEN state = 'delivered' THEN attempts - 1 ELSE attempts END)
             FROM notify_deliveries GROUP BY hook ORDER BY hook",
        )?;
        let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.map(|r| r.map(|(h, n)| (h, u64::try_from(n).unwrap_or(0)))).collect::<Result<_, _>>()?)
    }

    // ------------------------------------------------------------ audit

    /// Records that `actor` asked for `action` on `target` (before it is attempted).
    pub fn audit_request(&mut self, actor: &str, action: &str, target: &str) -> Result<i64, Error> {
        self.conn.execute(
            "INSERT INTO audit (at, actor, action, target, outcome) VALUES (?1, ?2, ?3, ?4, 'requested')",
            params![now(), actor, action, target],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records how the action `seq` ended.
    pub fn audit_outcome(&mut self, seq: i64, outcome: AuditOutcome, detail: &str) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE audit SET outcome = ?2, detail = ?3 WHERE seq = ?1",
            params![seq, outcome.as_str(), detail],
        )?;
        Ok(())
    }

    /// The audit trail, oldest first (optionally the actions on one run: `run` or `run/...`).
    pub fn audit(&self, run: Option<&str>) -> Result<Vec<AuditRecord>, Error> {
        let mut q = self.conn.prepare(
            "SELECT seq, at, actor, action, target, outcome, detail FROM audit
             WHERE ?1 IS NULL OR target = ?1 OR substr(target, 1, length(?1) + 1) = ?1 || '/' ORDER BY seq",
        )?;
        let rows = q
            .query_map(params![run], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(seq, at, actor, action, target, outcome, detail)| {
                Ok(AuditRecord {
                    seq,
                    at,
                    actor,
                    action,
                    target,
                    outcome: AuditOutcome::parse(&outcome)?,
                    detail,
                })
            })
            .collect()
    }

    // ------------------------------------------------------------ journal tails

    /// Cluster-run journal entries after `seq`, oldest first, at most `limit`.
    pub fn journal_after(&self, seq: i64, limit: u32) -> Result<Vec<JournalEntry>, Error> {
        let mut q = self
            .conn
            .prepare("SELECT seq, run_id, at, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = q.query_map(params![seq, limit], |r| {
            Ok(JournalEntry { seq: r.get(0)?, run: r.get(1)?, at: r.get(2)?, body: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One cluster run's journal with each entry's time, oldest first.
    pub fn run_journal(&self, run: &str) -> Result<Vec<JournalEntry>, Error> {
        let mut q =
            self.conn.prepare("SELECT seq, run_id, at, body FROM events WHERE run_id = ?1 ORDER BY seq")?;
        let rows = q.query_map(params![run], |r| {
            Ok(JournalEntry { seq: r.get(0)?, run: r.get(1)?, at: r.get(2)?, body: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Fleet-run history entries after `seq`, oldest first, at most `limit`.
    pub fn fleet_history_after(&self, seq: i64, limit: u32) -> Result<Vec<FleetEntry>, Error> {
        let mut q = self.conn.prepare(
            "SELECT seq, run, version, body FROM fleet_run_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = q
            .query_map(params![seq, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(seq, run, version, body)| {
                let event = serde_json::from_str(&body)
                    .map_err(|e| Error::Json(format!("event {seq} of run {run}: {e}")))?;
                Ok(FleetEntry { seq, run, version, event })
            })
            .collect()
    }

    /// The newest sequence numbers of the cluster journal and the fleet history (0 when
    /// empty): where a tail that only wants new entries starts.
    pub fn journal_heads(&self) -> Result<(i64, i64), Error> {
        let cluster: Option<i64> = self.conn.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
        let fleet: Option<i64> =
            self.conn.query_row("SELECT MAX(seq) FROM fleet_run_events", [], |r| r.get(0))?;
        Ok((cluster.unwrap_or(0), fleet.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str) -> Hook {
        Hook {
            name: name.into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![NotifyKind::GatePending, NotifyKind::RunFailed],
            secret_file: Some("/etc/refit/hook.secret".into()),
            created_at: String::new(),
        }
    }

    #[test]
    fn kinds_parse_by_their_names_and_refuse_others() {
        for k in NotifyKind::ALL {
            assert_eq!(k.as_str().parse::<NotifyKind>(), Ok(k));
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
        }
        let err = "gate-approved".parse::<NotifyKind>().unwrap_err();
        assert!(err.contains("gate-pending, stage-completed, run-failed, run-completed"), "{err}");
    }

    #[test]
    fn a_notification_is_queued_once_per_hook_and_attempts_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("refit.db")).unwrap();
        s.add_hook(&hook("ops")).unwrap();
        assert!(matches!(s.add_hook(&hook("ops")), Err(Error::Exists { .. })));
        let stored = s.hooks().unwrap();
        assert_eq!(stored, vec![Hook { created_at: stored[0].created_at.clone(), ..hook("ops") }]);
        assert!(!stored[0].created_at.is_empty());
        assert!(s.enqueue_delivery("ops", "r/gate-pending/g@1", NotifyKind::GatePending, "r", "{}").unwrap());
        assert!(
            !s.enqueue_delivery("ops", "r/gate-pending/g@1", NotifyKind::GatePending, "r", "{}").unwrap()
        );
        assert!(s.enqueue_delivery("ghost", "k", NotifyKind::RunFailed, "r", "{}").is_err(), "unknown hook");
        let due = s.due_deliveries(10).unwrap();
        assert_eq!(due.len(), 1);
        let id = due[0].id;
        s.record_attempt(id, Err(("HTTP 500", Some(0)))).unwrap();
        let d = &s.deliveries(Some("ops")).unwrap()[0];
        assert_eq!(
            (d.state, d.attempts, d.last_error.as_deref()),
            (DeliveryState::Pending, 1, Some("HTTP 500"))
        );
        s.record_attempt(id, Ok(())).unwrap();
        let d = &s.deliveries(None).unwrap()[0];
        assert_eq!((d.state, d.attempts, d.last_error.as_deref()), (DeliveryState::Delivered, 2, None));
        assert_eq!(s.delivery_failures().unwrap(), vec![("ops".to_string(), 1)]);
        assert!(s.due_deliveries(10).unwrap().is_empty());
        assert!(s.remove_hook("ops").unwrap());
        assert!(s.deliveries(None).unwrap().is_empty(), "deliveries go with their hook");
    }

    #[test]
    fn the_audit_keeps_requests_and_outcomes_by_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("refit.db")).unwrap();
        let a = s.audit_request("alice", "approve-gate", "to-137/canary/after/1").unwrap();
        let b = s.audit_request("bob", "stop", "to-137").unwrap();
        s.audit_request("bob", "stop", "to-1370").unwrap();
        s.audit_outcome(a, AuditOutcome::Done, "").unwrap();
        s.audit_outcome(b, AuditOutcome::Refused, "run is Completed").unwrap();
        let trail = s.audit(Some("to-137")).unwrap();
        assert_eq!(trail.len(), 2, "{trail:?}");
        assert_eq!((trail[0].actor.as_str(), trail[0].outcome), ("alice", AuditOutcome::Done));
        assert_eq!((trail[1].outcome, trail[1].detail.as_str()), (AuditOutcome::Refused, "run is Completed"));
        assert_eq!(s.audit(None).unwrap().len(), 3);
    }

    #[test]
    fn tails_read_after_a_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("refit.db")).unwrap();
        assert_eq!(s.journal_heads().unwrap(), (0, 0));
        s.create_run(&crate::RunRow {
            id: "r1".into(),
            cluster: "c".into(),
            target: "1.37.1".into(),
            state: "running".into(),
            spec: "{}".into(),
        })
        .unwrap();
        s.record_event("r1", "warning", "{\"event\":\"warning\",\"message\":\"a\"}").unwrap();
        s.record_event("r1", "warning", "{\"event\":\"warning\",\"message\":\"b\"}").unwrap();
        let all = s.journal_after(0, 10).unwrap();
        assert_eq!(all.len(), 2);
        let after = s.journal_after(all[0].seq, 10).unwrap();
        assert_eq!(after.len(), 1);
        assert!(after[0].body.contains("\"b\""));
        assert_eq!(s.run_journal("r1").unwrap(), all);
        assert_eq!(s.journal_heads().unwrap().0, all[1].seq);
    }
}
