//! Fleet objects in the store: members, strategies, update runs (the whole
//! `refit_core::fleet::RunState` as JSON, with a version counter), the run's event history,
//! auto-upgrade profiles, and the driver lease.
//!
//! Why it looks like this:
//! - **One row per run, the whole state as JSON.** The run state machine lives in core and
//!   recomputes every parent on each event; the store keeps its output verbatim, so what
//!   `run show` prints is exactly what the rules decided. The state and the event that produced
//!   it are written in one transaction.
//! - **Optimistic concurrency.** Several processes touch a run: the driver records decisions
//!   and member outcomes, while `run stop`, `run skip` and `gate approve` come from people.
//!   Each writer reads (state, version), applies its event in core, and writes back only if the
//!   version is still the one it read ([`Error::Conflict`] otherwise: read again, apply again).
//!   Nothing is ever lost or applied to a state it was not checked against.
//! - **A lease per run, fenced.** Exactly one driver (`run start --wait` or `fleet daemon`)
//!   launches member upgrades for a run. The lease row names the holder, its heartbeat and a
//!   generation bumped by every new holder. Another driver takes it over only when the holder is
//!   gone — its process is known dead, or (when that cannot be known, e.g. another host) its
//!   heartbeat is stale; a holder known to be alive is never taken over (the caller says which:
//!   the store does no process I/O). Every write a driver makes names its [`Fence`] (holder +
//!   generation) and is checked in the same transaction, so a driver that was deposed while it
//!   hung cannot overwrite what its successor decided ([`Error::Deposed`]). A released lease
//!   keeps its row (holder empty) so generations never repeat.

use std::collections::BTreeMap;

use refit_core::fleet::{Event, MaintenanceWindow, Profile, RunState, Strategy};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::{Error, Store, now};

/// The fleet schema (migration 2).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE fleet_members (
    name                    TEXT PRIMARY KEY,
    kubeconfig              TEXT,
    context                 TEXT,
    labels                  TEXT NOT NULL DEFAULT '{}',
    update_group            TEXT,
    maintenance_window      TEXT,
    node_image_source       TEXT,
    pending_budget_seconds  INTEGER,
    action                  TEXT,
    plan_file               TEXT,
    upgrade_args            TEXT NOT NULL DEFAULT '[]',
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);
CREATE TABLE fleet_strategies (
    name        TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE fleet_runs (
    name        TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE fleet_run_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    run         TEXT NOT NULL REFERENCES fleet_runs(name) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    at          TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX fleet_run_events_by_run ON fleet_run_events(run, seq);
CREATE TABLE fleet_member_progress (
    run         TEXT NOT NULL REFERENCES fleet_runs(name) ON DELETE CASCADE,
    member      TEXT NOT NULL,
    operation   TEXT,
    detail      TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (run, member)
);
CREATE TABLE fleet_profiles (
    name        TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE fleet_leases (
    run             TEXT PRIMARY KEY REFERENCES fleet_runs(name) ON DELETE CASCADE,
    holder          TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    heartbeat_ms    INTEGER NOT NULL,
    acquired_ms     INTEGER NOT NULL
);
"#;

/// Lease generations and members bound to their cluster (migration 3).
pub(crate) const MIGRATION_3: &str = r#"
ALTER TABLE fleet_leases ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fleet_members ADD COLUMN cluster_uid TEXT;
"#;

/// A fleet member as stored: how to reach it and how the fleet treats it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    /// Member name (unique in the fleet).
    pub name: String,
    /// Kubeconfig file (None: $KUBECONFIG or ~/.kube/config of the driver). A path, never the
    /// credentials themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// Kubeconfig context (None: its current context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The UID of the cluster's kube-system namespace, read when the member was added: the
    /// member is bound to that cluster, and nothing is launched against a kubeconfig that
    /// reaches another one (a swapped file, a reused context name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_uid: Option<String>,
    /// Labels strategies select on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Update group (a strategy's group of that name selects it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_group: Option<String>,
    /// When work on it may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Where its node images come from: a file listing the images offered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_image_source: Option<String>,
    /// How long it may sit Pending before it is deferred (overrides the run's budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_budget_seconds: Option<u64>,
    /// The node action `refit upgrade` uses on it (`sandbox:DIR`, `exec:...`, `ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Its plan file (`refit upgrade -f`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_file: Option<String>,
    /// More `refit upgrade` arguments for it (etcd backup flags, --max-unavailable …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade_args: Vec<String>,
}

/// A stored run: its state and the version the next write must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    /// The state, as core's rules left it.
    pub state: RunState,
    /// Bumped by every write.
    pub version: i64,
}

/// One entry of a run's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEvent {
    /// Order across the store.
    pub seq: i64,
    /// The run version this event produced (an event and the ones that followed from it
    /// share it).
    pub version: i64,
    /// The event.
    pub event: Event,
}

/// What the driver last saw of a member's single-cluster run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberProgress {
    /// The member.
    pub member: String,
    /// The `refit upgrade` run id, once it printed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// A one-line summary ("3/5 nodes; worker-2: drain").
    pub detail: String,
}

/// Who drives a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Bumped by every new holder (the fencing token).
    pub generation: i64,
    /// The run.
    pub run: String,
    /// Holder id (`host:pid:start`), unique per driver process.
    pub holder: String,
    /// Its process id.
    pub pid: i64,
    /// Last heartbeat, Unix milliseconds.
    pub heartbeat_ms: i64,
    /// When it took the lease, Unix milliseconds.
    pub acquired_ms: i64,
}

/// What a holder proves on every write: the lease is still its own, at the generation it took.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The run.
    pub run: String,
    /// The holder.
    pub holder: String,
    /// The generation it acquired.
    pub generation: i64,
}

/// What the caller knows about a lease holder's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Known to be running: never taken over, however old its heartbeat.
    Alive,
    /// Known to be gone (killed, exited): taken over at once.
    Gone,
    /// Cannot be told (another host): taken over once its heartbeat is stale.
    Unknown,
}

/// The outcome of asking for a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Ours now (new, renewed, or taken over from a dead or silent holder).
    Acquired {
        /// What our writes must name.
        fence: Fence,
        /// The holder we took it from, if any.
        took_over: Option<Lease>,
    },
    /// Someone alive holds it.
    Held(Lease),
}

fn json<T: Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::Json(e.to_string()))
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Json(format!("{what}: {e}")))
}

const SELECT_MEMBER: &str = "SELECT name, kubeconfig, context, labels, update_group, maintenance_window,
    node_image_source, pending_budget_seconds, action, plan_file, upgrade_args, cluster_uid FROM fleet_members";

const SELECT_LEASE: &str =
    "SELECT run, holder, pid, heartbeat_ms, acquired_ms, generation FROM fleet_leases WHERE run = ?1";

fn decode_lease(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        run: r.get(0)?,
        holder: r.get(1)?,
        pid: r.get(2)?,
        heartbeat_ms: r.get(3)?,
        acquired_ms: r.get(4)?,
        generation: r.get(5)?,
    })
}

/// Refuses a write whose fence no longer holds the run's lease.
fn check_fence(tx: &rusqlite::Transaction<'_>, fence: Option<&Fence>) -> Result<(), Error> {
    let Some(f) = fence else { return Ok(()) };
    let current = tx.query_row(SELECT_LEASE, params![f.run], decode_lease).optional()?;
    match current {
        Some(l) if l.holder == f.holder && l.generation == f.generation => Ok(()),
        other => Err(Error::Deposed {
            run: f.run.clone(),
            holder: other.map(|l| l.holder).filter(|h| !h.is_empty()),
        }),
    }
}

/// A member row with its JSON columns (labels, window, upgrade args) still as text.
type RawMember = (MemberRecord, String, Option<String>, String);

fn decode_member(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawMember> {
    let budget: Option<i64> = r.get(7)?;
    let m = MemberRecord {
        name: r.get(0)?,
        kubeconfig: r.get(1)?,
        context: r.get(2)?,
        cluster_uid: r.get(11)?,
        labels: BTreeMap::new(),
        update_group: r.get(4)?,
        maintenance_window: None,
        node_image_source: r.get(6)?,
        pending_budget_seconds: budget.and_then(|b| u64::try_from(b).ok()),
        action: r.get(8)?,
        plan_file: r.get(9)?,
        upgrade_args: Vec::new(),
    };
    Ok((m, r.get(3)?, r.get(5)?, r.get(10)?))
}

fn finish_member((mut m, labels, window, args): RawMember) -> Result<MemberRecord, Error> {
    m.labels = parse(&format!("labels of member {}", m.name), &labels)?;
    if let Some(w) = window {
        m.maintenance_window = Some(parse(&format!("maintenance window of member {}", m.name), &w)?);
    }
    m.upgrade_args = parse(&format!("upgrade arguments of member {}", m.name), &args)?;
    Ok(m)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    // ------------------------------------------------------------ members

    /// Adds a member; refuses a name already in the fleet.
    pub fn add_member(&mut self, m: &MemberRecord) -> Result<(), Error> {
        self.write_member(m, false)
    }

    /// Replaces a member's record; refuses an unknown name.
    pub fn update_member(&mut self, m: &MemberRecord) -> Result<(), Error> {
        self.write_member(m, true)
    }

    fn write_member(&mut self, m: &MemberRecord, replace: bool) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx
            .query_row("SELECT 1 FROM fleet_members WHERE name = ?1", params![m.name], |_| Ok(()))
            .optional()?
            .is_some();
        match (exists, replace) {
            (true, false) => return Err(Error::Exists { kind: "member", name: m.name.clone() }),
            (false, true) => return Err(Error::NotFound { kind: "member", name: m.name.clone() }),
            _ => {}
        }
        let at = now();
        let window = m.maintenance_window.as_ref().map(json).transpose()?;
        let budget = m.pending_budget_seconds.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        tx.execute(
            "INSERT INTO fleet_members (name, kubeconfig, context, labels, update_group, maintenance_window,
                node_image_source, pending_budget_seconds, action, plan_file, upgrade_args, created_at, updated_at,
                cluster_uid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13)
             ON CONFLICT(name) DO UPDATE SET kubeconfig = excluded.kubeconfig, context = excluded.context,
                labels = excluded.labels, update_group = excluded.update_group,
                maintenance_window = excluded.maintenance_window, node_image_source = excluded.node_image_source,
                pending_budget_seconds = excluded.pending_budget_seconds, action = excluded.action,
                plan_file = excluded.plan_file, upgrade_args = excluded.upgrade_args,
                updated_at = excluded.updated_at, cluster_uid = excluded.cluster_uid",
            params![
                m.name,
                m.kubeconfig,
                m.context,
                json(&m.labels)?,
                m.update_group,
                window,
                m.node_image_source,
                budget,
                m.action,
                m.plan_file,
                json(&m.upgrade_args)?,
                at,
                m.cluster_uid
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A member by name.
    pub fn member(&self, name: &str) -> Result<Option<MemberRecord>, Error> {
        let row = self
            .conn
            .query_row(&format!("{SELECT_MEMBER} WHERE name = ?1"), params![name], decode_member)
            .optional()?;
        row.map(finish_member).transpose()
    }

    /// Every member, by name.
    pub fn members(&self) -> Result<Vec<MemberRecord>, Error> {
        let mut q = self.conn.prepare(&format!("{SELECT_MEMBER} ORDER BY name"))?;
        let rows = q.query_map([], decode_member)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(finish_member).collect()
    }

    /// Removes a member; false when there was none. Runs that already froze it keep it.
    pub fn remove_member(&mut self, name: &str) -> Result<bool, Error> {
        Ok(self.conn.execute("DELETE FROM fleet_members WHERE name = ?1", params![name])? > 0)
    }

    // ------------------------------------------------------------ strategies

    /// Stores a strategy under `name`; `replace` allows overwriting an existing one.
    pub fn put_strategy(&mut self, name: &str, s: &Strategy, replace: bool) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM fleet_strategies WHERE name = ?1", params![name], |_| Ok(()))
            .optional()?
            .is_some();
        if exists && !replace {
            return Err(Error::Exists { kind: "strategy", name: name.to_string() });
        }
        tx.execute(
            "INSERT INTO fleet_strategies (name, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![name, json(s)?, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A strategy by name.
    pub fn strategy(&self, name: &str) -> Result<Option<Strategy>, Error> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM fleet_strategies WHERE name = ?1", params![name], |r| r.get(0))
            .optional()?;
        body.map(|b| parse(&format!("strategy {name}"), &b)).transpose()
    }

    /// Every strategy, by name.
    pub fn strategies(&self) -> Result<Vec<(String, Strategy)>, Error> {
        let mut q = self.conn.prepare("SELECT name, body FROM fleet_strategies ORDER BY name")?;
        let rows = q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(|(n, b)| Ok((n.clone(), parse(&format!("strategy {n}"), &b)?))).collect()
    }

    /// Deletes a strategy; false when there was none. Runs hold their own copy.
    pub fn delete_strategy(&mut self, name: &str) -> Result<bool, Error> {
        Ok(self.conn.execute("DELETE FROM fleet_strategies WHERE name = ?1", params![name])? > 0)
    }

    // ------------------------------------------------------------ update runs

    /// Records a new run at version 1; refuses a name in use.
    pub fn create_fleet_run(&mut self, run: &RunState) -> Result<StoredRun, Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM fleet_runs WHERE name = ?1", params![run.name], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            return Err(Error::Exists { kind: "update run", name: run.name.clone() });
        }
        let at = now();
        tx.execute(
            "INSERT INTO fleet_runs (name, state, version, created_at, updated_at) VALUES (?1, ?2, 1, ?3, ?3)",
            params![run.name, json(run)?, at],
        )?;
        tx.commit()?;
        Ok(StoredRun { state: run.clone(), version: 1 })
    }

    /// A run by name.
    pub fn fleet_run(&self, name: &str) -> Result<Option<StoredRun>, Error> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row("SELECT state, version FROM fleet_runs WHERE name = ?1", params![name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        row.map(|(s, version)| Ok(StoredRun { state: parse(&format!("update run {name}"), &s)?, version }))
            .transpose()
    }

    /// Every run, oldest first.
    pub fn fleet_runs(&self) -> Result<Vec<StoredRun>, Error> {
        let mut q =
            self.conn.prepare("SELECT name, state, version FROM fleet_runs ORDER BY created_at, rowid")?;
        let rows = q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(n, s, version)| Ok(StoredRun { state: parse(&format!("update run {n}"), &s)?, version }))
            .collect()
    }

    /// Writes `state` (produced by applying `event` to the version `expected` read) and the
    /// event, in one transaction; [`Error::Conflict`] if someone wrote the run meanwhile.
    /// Returns the new version.
    pub fn save_fleet_run(&mut self, state: &RunState, expected: i64, event: &Event) -> Result<i64, Error> {
        self.save_fleet_run_events(state, expected, std::slice::from_ref(event), None)
    }

    /// Like [`Store::save_fleet_run`] for an event and the events that followed from it
    /// (`core::fleet::follow_up`: a stop that completed), all recorded with the one version
    /// they produced, in order, in the same transaction. A driver passes its `fence`: the
    /// write is refused ([`Error::Deposed`]) unless it still holds the run's lease. (People's
    /// commands — stop, skip, approve — pass None: they never hold a lease.)
    pub fn save_fleet_run_events(
        &mut self,
        state: &RunState,
        expected: i64,
        events: &[Event],
        fence: Option<&Fence>,
    ) -> Result<i64, Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        let found: Option<i64> = tx
            .query_row("SELECT version FROM fleet_runs WHERE name = ?1", params![state.name], |r| r.get(0))
            .optional()?;
        match found {
            None => return Err(Error::NotFound { kind: "update run", name: state.name.clone() }),
            Some(v) if v != expected => {
                return Err(Error::Conflict { name: state.name.clone(), expected, found: v });
            }
            Some(_) => {}
        }
        let at = now();
        let version = expected + 1;
        tx.execute(
            "UPDATE fleet_runs SET state = ?2, version = ?3, updated_at = ?4 WHERE name = ?1",
            params![state.name, json(state)?, version, at],
        )?;
        for event in events {
            tx.execute(
                "INSERT INTO fleet_run_events (run, version, at, body) VALUES (?1, ?2, ?3, ?4)",
                params![state.name, version, at, json(event)?],
            )?;
        }
        tx.commit()?;
        Ok(version)
    }

    /// The events of a run, oldest first.
    pub fn fleet_run_events(&self, name: &str) -> Result<Vec<RunEvent>, Error> {
        let mut q = self
            .conn
            .prepare("SELECT seq, version, body FROM fleet_run_events WHERE run = ?1 ORDER BY seq")?;
        let rows = q
            .query_map(params![name], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(seq, version, body)| {
                Ok(RunEvent { seq, version, event: parse(&format!("event {seq} of run {name}"), &body)? })
            })
            .collect()
    }

    /// Deletes a run with its history, progress and lease; false when there was none.
    pub fn delete_fleet_run(&mut self, name: &str) -> Result<bool, Error> {
        Ok(self.conn.execute("DELETE FROM fleet_runs WHERE name = ?1", params![name])? > 0)
    }

    /// Records what the driver last saw of a member's single-cluster run (refused when `fence`
    /// no longer holds the run's lease).
    pub fn set_member_progress(
        &mut self,
        run: &str,
        p: &MemberProgress,
        fence: Option<&Fence>,
    ) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        tx.execute(
            "INSERT INTO fleet_member_progress (run, member, operation, detail, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(run, member) DO UPDATE SET operation = COALESCE(excluded.operation, operation),
                detail = excluded.detail, updated_at = excluded.updated_at",
            params![run, p.member, p.operation, p.detail, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Progress of every member of a run that reported some.
    pub fn member_progress(&self, run: &str) -> Result<Vec<MemberProgress>, Error> {
        let mut q = self.conn.prepare(
            "SELECT member, operation, detail FROM fleet_member_progress WHERE run = ?1 ORDER BY member",
        )?;
        let rows = q.query_map(params![run], |r| {
            Ok(MemberProgress { member: r.get(0)?, operation: r.get(1)?, detail: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ------------------------------------------------------------ profiles

    /// Stores a profile; `replace` allows overwriting (a trigger record updates it).
    pub fn put_profile(&mut self, p: &Profile, replace: bool) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM fleet_profiles WHERE name = ?1", params![p.name], |_| Ok(()))
            .optional()?
            .is_some();
        if exists && !replace {
            return Err(Error::Exists { kind: "profile", name: p.name.clone() });
        }
        if !exists && replace {
            return Err(Error::NotFound { kind: "profile", name: p.name.clone() });
        }
        tx.execute(
            "INSERT INTO fleet_profiles (name, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![p.name, json(p)?, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A profile by name.
    pub fn profile(&self, name: &str) -> Result<Option<Profile>, Error> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM fleet_profiles WHERE name = ?1", params![name], |r| r.get(0))
            .optional()?;
        body.map(|b| parse(&format!("profile {name}"), &b)).transpose()
    }

    /// Every profile, by name.
    pub fn profiles(&self) -> Result<Vec<Profile>, Error> {
        let mut q = self.conn.prepare("SELECT name, body FROM fleet_profiles ORDER BY name")?;
        let rows = q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(|(n, b)| parse(&format!("profile {n}"), &b)).collect()
    }

    /// Deletes a profile; false when there was none. Runs it generated stay.
    pub fn delete_profile(&mut self, name: &str) -> Result<bool, Error> {
        Ok(self.conn.execute("DELETE FROM fleet_profiles WHERE name = ?1", params![name])? > 0)
    }

    // ------------------------------------------------------------ driver lease

    /// Takes (or renews) the lease on `run` for `holder`. An existing lease of another holder
    /// is taken over when `liveness` says its process is gone, or cannot tell and its heartbeat
    /// is `ttl_ms` old or older (0: always stale, so a takeover within the same millisecond is
    /// deterministic); a holder known to be alive keeps it. A new holder gets the next generation.
    pub fn acquire_lease(
        &mut self,
        run: &str,
        holder: &str,
        pid: i64,
        ttl_ms: i64,
        liveness: &dyn Fn(&Lease) -> Liveness,
    ) -> Result<LeaseOutcome, Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now_ms = unix_ms();
        let current = tx.query_row(SELECT_LEASE, params![run], decode_lease).optional()?;
        let generation = current.as_ref().map_or(0, |l| l.generation);
        let took_over = match current {
            Some(l) if l.holder == holder => {
                tx.execute("UPDATE fleet_leases SET heartbeat_ms = ?2 WHERE run = ?1", params![run, now_ms])?;
                tx.commit()?;
                let fence =
                    Fence { run: run.to_string(), holder: holder.to_string(), generation: l.generation };
                return Ok(LeaseOutcome::Acquired { fence, took_over: None });
            }
            // Released: free to take, not a takeover.
            Some(l) if l.holder.is_empty() => None,
            Some(l) => {
                let stale = now_ms.saturating_sub(l.heartbeat_ms) >= ttl_ms;
                match liveness(&l) {
                    Liveness::Alive => return Ok(LeaseOutcome::Held(l)),
                    Liveness::Unknown if !stale => return Ok(LeaseOutcome::Held(l)),
                    Liveness::Gone | Liveness::Unknown => Some(l),
                }
            }
            None => None,
        };
        let generation = generation.saturating_add(1);
        tx.execute(
            "INSERT INTO fleet_leases (run, holder, pid, heartbeat_ms, acquired_ms, generation)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)
             ON CONFLICT(run) DO UPDATE SET holder = excluded.holder, pid = excluded.pid,
                heartbeat_ms = excluded.heartbeat_ms, acquired_ms = excluded.acquired_ms,
                generation = excluded.generation",
            params![run, holder, pid, now_ms, generation],
        )?;
        tx.commit()?;
        let fence = Fence { run: run.to_string(), holder: holder.to_string(), generation };
        Ok(LeaseOutcome::Acquired { fence, took_over })
    }

    /// Renews the heartbeat of a lease still held under `fence`; [`Error::Deposed`] when
    /// another driver took it over (or it was released).
    pub fn renew_lease(&mut self, fence: &Fence) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, Some(fence))?;
        tx.execute(
            "UPDATE fleet_leases SET heartbeat_ms = ?2 WHERE run = ?1",
            params![fence.run, unix_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Gives the lease up (only if `fence` still holds it); its generation stays.
    pub fn release_lease(&mut self, fence: &Fence) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE fleet_leases SET holder = '', pid = 0, heartbeat_ms = 0
             WHERE run = ?1 AND holder = ?2 AND generation = ?3",
            params![fence.run, fence.holder, fence.generation],
        )?;
        Ok(())
    }

    /// Who drives `run`, if anyone holds the lease.
    pub fn lease(&self, run: &str) -> Result<Option<Lease>, Error> {
        Ok(self
            .conn
            .query_row(SELECT_LEASE, params![run], decode_lease)
            .optional()?
            .filter(|l| !l.holder.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use refit_core::fleet::{FleetMember, UpgradeSpec, UpgradeType, resolve};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn strategy() -> Strategy {
        Strategy::parse(
            r#"{ "stages": [ { "name": "stage1", "groups": [ { "name": "group-1a" } ], "afterStageWaitInSeconds": 3600 } ] }"#,
        )
        .unwrap()
    }

    fn run(name: &str) -> RunState {
        let members = vec![
            FleetMember { name: "a".into(), update_group: Some("group-1a".into()), ..Default::default() },
            FleetMember { name: "b".into(), update_group: Some("group-1a".into()), ..Default::default() },
        ];
        let s = strategy();
        let plan = resolve(&s, &members).unwrap();
        let spec = UpgradeSpec::new(UpgradeType::Full, Some("1.37.1".parse().unwrap()));
        RunState::new(name, spec, s, plan, ts("2026-06-10T12:00:00Z")).unwrap()
    }

    fn open() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refit.db");
        (dir, path)
    }

    #[test]
    fn members_round_trip_and_names_are_checked() {
        let (_d, path) = open();
        let mut s = Store::open(&path).unwrap();
        let w = MaintenanceWindow::from_yaml(
            "recurrence: {weekly: [Saturday]}\nstart: \"22:00\"\ndurationMinutes: 240\ntimeZone: Europe/Berlin\n",
        )
        .unwrap();
        let m = MemberRecord {
            name: "eu-1".into(),
            kubeconfig: Some("/k/eu-1.conf".into()),
            context: Some("eu-1".into()),
            cluster_uid: Some("6c1f2b9e-0000-4000-8000-000000000001".into()),
            labels: [("region".to_string(), "eu".to_string())].into(),
            update_group: Some("canary".into()),
            maintenance_window: Some(w),
            pending_budget_seconds: Some(3600),
            action: Some("sandbox:/tmp/sb".into()),
            upgrade_args: vec!["--max-unavailable".into(), "2".into()],
            ..Default::default()
        };
        s.add_member(&m).unwrap();
        assert!(matches!(s.add_member(&m), Err(Error::Exists { .. })));
        drop(s);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.member("eu-1").unwrap().as_ref(), Some(&m));
        let changed = MemberRecord {
            context: Some("ctx".into()),
            maintenance_window: None,
            cluster_uid: None,
            ..m.clone()
        };
        s.update_member(&changed).unwrap();
        assert_eq!(s.members().unwrap(), vec![changed]);
        assert!(matches!(
            s.update_member(&MemberRecord { name: "ghost".into(), ..Default::default() }),
            Err(Error::NotFound { .. })
        ));
        assert!(s.remove_member("eu-1").unwrap());
        assert!(!s.remove_member("eu-1").unwrap());
        assert!(s.members().unwrap().is_empty());
    }

    #[test]
    fn strategies_and_profiles_round_trip() {
        let (_d, path) = open();
        let mut s = Store::open(&path).unwrap();
        s.put_strategy("safe", &strategy(), false).unwrap();
        assert!(matches!(s.put_strategy("safe", &strategy(), false), Err(Error::Exists { .. })));
        assert_eq!(s.strategy("safe").unwrap(), Some(strategy()));
        assert_eq!(s.strategies().unwrap().len(), 1);
        assert!(s.delete_strategy("safe").unwrap());
        assert_eq!(s.strategy("safe").unwrap(), None);

        let p = Profile::from_yaml("name: weekly\nchannel: Rapid\n").unwrap();
        s.put_profile(&p, false).unwrap();
        assert!(matches!(s.put_profile(&p, false), Err(Error::Exists { .. })));
        let mut q = p.clone();
        q.disabled = true;
        s.put_profile(&q, true).unwrap();
        assert_eq!(s.profile("weekly").unwrap(), Some(q));
        assert_eq!(s.profiles().unwrap().len(), 1);
        assert!(s.delete_profile("weekly").unwrap());
    }

    #[test]
    fn run_writes_are_versioned_and_a_stale_write_changes_nothing() {
        let (_d, path) = open();
        let mut s = Store::open(&path).unwrap();
        let r = run("r1");
        let stored = s.create_fleet_run(&r).unwrap();
        assert_eq!(stored.version, 1);
        assert!(matches!(s.create_fleet_run(&r), Err(Error::Exists { .. })));

        // Two writers read version 1; the first wins, the second is told to read again.
        let stop = Event::Skip {
            targets: vec!["Member:a".parse().unwrap()],
            by: Some("ops".into()),
            at: ts("2026-06-10T12:01:00Z"),
        };
        let skipped = refit_core::fleet::apply(&r, &stop).unwrap();
        assert_eq!(s.save_fleet_run(&skipped, 1, &stop).unwrap(), 2);
        let err = s.save_fleet_run(&skipped, 1, &stop).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: 2, .. }), "{err}");
        let back = s.fleet_run("r1").unwrap().unwrap();
        assert_eq!((back.version, &back.state), (2, &skipped));
        let events = s.fleet_run_events("r1").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].version, &events[0].event), (2, &stop));

        // An event and what followed from it: one write, one version, in order — and a stale
        // write of both records neither.
        let took = Event::DriverTookOver {
            driver: "h:2:1".into(),
            previous: "h:1:0".into(),
            at: ts("2026-06-10T12:02:00Z"),
        };
        let done = Event::StopCompleted { at: ts("2026-06-10T12:02:00Z") };
        assert_eq!(s.save_fleet_run_events(&skipped, 2, &[took.clone(), done.clone()], None).unwrap(), 3);
        assert!(s.save_fleet_run_events(&skipped, 2, &[took.clone(), done.clone()], None).is_err());
        let events = s.fleet_run_events("r1").unwrap();
        let tail: Vec<(i64, &Event)> = events[1..].iter().map(|e| (e.version, &e.event)).collect();
        assert_eq!(tail, [(3, &took), (3, &done)]);

        s.set_member_progress(
            "r1",
            &MemberProgress { member: "a".into(), operation: Some("up-1".into()), detail: "1/3".into() },
            None,
        )
        .unwrap();
        s.set_member_progress(
            "r1",
            &MemberProgress { member: "a".into(), operation: None, detail: "2/3".into() },
            None,
        )
        .unwrap();
        assert_eq!(
            s.member_progress("r1").unwrap(),
            vec![MemberProgress { member: "a".into(), operation: Some("up-1".into()), detail: "2/3".into() }]
        );
        assert_eq!(s.fleet_runs().unwrap().len(), 1);
        assert!(s.delete_fleet_run("r1").unwrap());
        assert!(s.fleet_run_events("r1").unwrap().is_empty(), "history goes with the run");
        assert!(s.member_progress("r1").unwrap().is_empty());
        assert!(matches!(s.save_fleet_run(&r, 1, &stop), Err(Error::NotFound { .. })));
    }

    fn fence_of(o: LeaseOutcome) -> (Fence, Option<Lease>) {
        match o {
            LeaseOutcome::Acquired { fence, took_over } => (fence, took_over),
            other => panic!("not acquired: {other:?}"),
        }
    }

    #[test]
    fn a_live_holder_keeps_its_lease_a_gone_one_loses_it_and_a_silent_one_only_when_unknown() {
        let (_d, path) = open();
        let mut a = Store::open(&path).unwrap();
        let mut b = Store::open(&path).unwrap();
        a.create_fleet_run(&run("r1")).unwrap();
        let alive = |_: &Lease| Liveness::Alive;
        let gone = |_: &Lease| Liveness::Gone;
        let unknown = |_: &Lease| Liveness::Unknown;
        let (fa, took) = fence_of(a.acquire_lease("r1", "host:1", 1, 10_000, &alive).unwrap());
        assert_eq!((fa.generation, took), (1, None));
        assert!(
            matches!(b.acquire_lease("r1", "host:2", 2, 10_000, &alive).unwrap(), LeaseOutcome::Held(l) if l.pid == 1)
        );
        // Renewing is always fine for the holder, and keeps the generation.
        let (again, _) = fence_of(a.acquire_lease("r1", "host:1", 1, 10_000, &alive).unwrap());
        assert_eq!(again, fa);
        a.renew_lease(&fa).unwrap();
        // A live holder is never taken over, however stale its heartbeat (ttl 0 here).
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(matches!(b.acquire_lease("r1", "host:2", 2, 0, &alive).unwrap(), LeaseOutcome::Held(_)));
        // Another host's holder (liveness unknown) keeps it while it renews...
        assert!(matches!(
            b.acquire_lease("r1", "host:2", 2, 10_000, &unknown).unwrap(),
            LeaseOutcome::Held(_)
        ));
        // ... and loses it once silent past the ttl.
        let (fb, took) = fence_of(b.acquire_lease("r1", "host:2", 2, 0, &unknown).unwrap());
        assert_eq!((fb.generation, took.map(|l| l.holder)), (2, Some("host:1".to_string())));
        // The holder's process died (kill -9): taken over at once, whatever the heartbeat.
        let (fa2, took) = fence_of(a.acquire_lease("r1", "host:1b", 3, 10_000, &gone).unwrap());
        assert_eq!((fa2.generation, took.map(|l| l.holder)), (3, Some("host:2".to_string())));
        // Releasing needs the fence; a released lease is free (not a takeover) and the next
        // holder's generation is still new.
        b.release_lease(&fb).unwrap();
        assert_eq!(a.lease("r1").unwrap().unwrap().holder, "host:1b");
        a.release_lease(&fa2).unwrap();
        assert_eq!(a.lease("r1").unwrap(), None);
        let (f4, took) = fence_of(b.acquire_lease("r1", "host:2", 2, 10_000, &alive).unwrap());
        assert_eq!((f4.generation, took), (4, None));
    }

    #[test]
    fn a_deposed_drivers_writes_are_refused_and_change_nothing() {
        let (_d, path) = open();
        let mut a = Store::open(&path).unwrap();
        let mut b = Store::open(&path).unwrap();
        let r = run("r1");
        a.create_fleet_run(&r).unwrap();
        let (fa, _) = fence_of(a.acquire_lease("r1", "host-a:1:0", 1, 10_000, &|_| Liveness::Alive).unwrap());
        let skip = |who: &str| Event::Skip {
            targets: vec!["Member:a".parse().unwrap()],
            by: Some(who.into()),
            at: ts("2026-06-10T12:01:00Z"),
        };
        let e = skip("a");
        let next = refit_core::fleet::apply(&r, &e).unwrap();
        assert_eq!(a.save_fleet_run_events(&next, 1, std::slice::from_ref(&e), Some(&fa)).unwrap(), 2);
        // Driver a hangs; b (on another host) finds its heartbeat stale and takes over.
        let (fb, _) = fence_of(b.acquire_lease("r1", "host-b:7:0", 7, 0, &|_| Liveness::Unknown).unwrap());
        // a wakes up: every write it tries is refused, even at the current version.
        let progress = MemberProgress { member: "a".into(), operation: None, detail: "x".into() };
        for err in [
            a.save_fleet_run_events(&next, 2, std::slice::from_ref(&e), Some(&fa)).unwrap_err(),
            a.set_member_progress("r1", &progress, Some(&fa)).unwrap_err(),
            a.renew_lease(&fa).unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::Deposed { run, holder: Some(h) } if run == "r1" && h == "host-b:7:0"),
                "{err}"
            );
            assert!(err.to_string().contains("host-b:7:0 took it over"), "{err}");
        }
        a.release_lease(&fa).unwrap(); // not a's any more: nothing happens
        assert_eq!(a.fleet_run("r1").unwrap().unwrap().version, 2, "nothing a wrote after the takeover");
        assert!(a.member_progress("r1").unwrap().is_empty());
        assert_eq!(a.lease("r1").unwrap().unwrap().holder, "host-b:7:0");
        // The new holder writes; people's commands (no fence) still write.
        assert!(b.save_fleet_run_events(&next, 2, std::slice::from_ref(&e), Some(&fb)).is_ok());
        assert!(a.save_fleet_run(&next, 3, &skip("ops")).is_ok());
    }

    #[test]
    fn the_fleet_migration_upgrades_a_version_one_store_in_place() {
        let (_d, path) = open();
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(crate::MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO runs (id, cluster, target, state, spec, created_at, updated_at)
                 VALUES ('up-1', 'c', '1.37.1', 'completed', '{}', '1', '1')",
                [],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert!(s.run("up-1").unwrap().is_some(), "single-cluster runs survive");
        s.create_fleet_run(&run("r1")).unwrap();
        assert_eq!(s.fleet_runs().unwrap().len(), 1);
    }

    #[test]
    fn migration_three_keeps_members_and_leases_of_a_version_two_store() {
        let (_d, path) = open();
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(crate::MIGRATIONS[0]).unwrap();
            c.execute_batch(crate::MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute(
                "INSERT INTO fleet_members (name, kubeconfig, created_at, updated_at) VALUES ('old', '/k', '1', '1')",
                [],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let m = s.member("old").unwrap().unwrap();
        assert_eq!((m.kubeconfig.as_deref(), m.cluster_uid), (Some("/k"), None), "not bound yet");
        s.create_fleet_run(&run("r1")).unwrap();
        match s.acquire_lease("r1", "h:1:0", 1, 1_000, &|_| Liveness::Alive).unwrap() {
            LeaseOutcome::Acquired { fence, .. } => assert_eq!(fence.generation, 1),
            other => panic!("{other:?}"),
        }
    }
}
