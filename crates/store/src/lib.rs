//! Refit's embedded journal: runs, their step transitions and events, in one SQLite file.
//!
//! Nothing is lost: the database runs in WAL mode with `synchronous=FULL` (a committed
//! transition survives a power cut), every write is one `BEGIN IMMEDIATE` transaction (a
//! step's new state and the event that explains it land together or not at all), and one
//! connection writes. The schema is versioned with `PRAGMA user_version`; migrations run in a
//! transaction when the store opens.

pub mod fleet;
pub mod notify;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Everything that can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database file could not be opened or created.
    #[error("cannot open the refit store at {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The directory for the file could not be created.
    #[error("cannot create the directory of the refit store {path}: {source}")]
    Dir {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was written by a newer refit.
    #[error(
        "the refit store at {path} has schema {found}, newer than this refit understands ({supported}); upgrade refit"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its schema.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// A query failed.
    #[error("refit store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// No state directory to put the store in.
    #[error("no state directory for the refit store: set REFIT_STATE_DIR")]
    NoStateDir,
    /// A fleet object with that name exists already.
    #[error("{kind} '{name}' exists already")]
    Exists {
        /// member, strategy, update run, profile.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// No fleet object with that name.
    #[error("no {kind} named '{name}'")]
    NotFound {
        /// member, strategy, update run, profile.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// Someone else wrote the run since it was read: read it again and re-apply.
    #[error("update run '{name}' changed meanwhile (version {found}, expected {expected})")]
    Conflict {
        /// The run.
        name: String,
        /// The version read.
        expected: i64,
        /// The version found.
        found: i64,
    },
    /// A stored JSON document does not decode (or a value does not encode).
    #[error("refit store: unreadable fleet record: {0}")]
    Json(String),
}

/// Migrations, in order; entry N brings the schema from version N to N+1.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    cluster     TEXT NOT NULL,
    target      TEXT NOT NULL,
    state       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE steps (
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    unit        TEXT NOT NULL,
    step        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    detail      TEXT NOT NULL DEFAULT '',
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (run_id, unit, step)
);
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX events_by_run ON events(run_id, seq);
"#,
    fleet::MIGRATION,
    notify::MIGRATION,
];

/// The schema version this code writes.
pub const SCHEMA: i64 = MIGRATIONS.len() as i64;

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// Run id.
    pub id: String,
    /// Cluster (context or member name).
    pub cluster: String,
    /// Target version.
    pub target: String,
    /// Run state.
    pub state: String,
    /// The run's parameters, as JSON (what a resume needs to continue identically).
    pub spec: String,
}

/// One step's latest recorded state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// Node or host.
    pub unit: String,
    /// Step name (cordon, drain, upgrade, validate, uncordon...).
    pub step: String,
    /// State (started, done, failed...).
    pub state: String,
    /// How many times it was started.
    pub attempt: i64,
    /// Free text (error, blocker).
    pub detail: String,
}

const SELECT_RUN: &str = "SELECT id, cluster, target, state, spec FROM runs WHERE id = ?1";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow { id: r.get(0)?, cluster: r.get(1)?, target: r.get(2)?, state: r.get(3)?, spec: r.get(4)? })
}

/// The store: one writer connection.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// `REFIT_STATE_DIR`, else `<user state dir>/refit`, joined with `refit.db`.
pub fn default_path() -> Result<PathBuf, Error> {
    if let Some(d) = std::env::var_os("REFIT_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("refit.db"));
    }
    let base = dirs::state_dir().or_else(dirs::data_local_dir).ok_or(Error::NoStateDir)?;
    Ok(base.join("refit").join("refit.db"))
}

pub(crate) fn now() -> String {
    // Seconds.nanoseconds since the Unix epoch (UTC): sortable as text until the year 2286.
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Dir { path: path.to_path_buf(), source })?;
        }
        let open_err = |source| Error::Open { path: path.to_path_buf(), source };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        if version > SCHEMA {
            return Err(Error::TooNew { path: path.to_path_buf(), found: version, supported: SCHEMA });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(Store { conn, path: path.to_path_buf() })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a new run (or returns the existing one with that id: creating is idempotent).
    pub fn create_run(&mut self, run: &RunRow) -> Result<RunRow, Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        tx.execute(
            "INSERT INTO runs (id, cluster, target, state, spec, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(id) DO NOTHING",
            params![run.id, run.cluster, run.target, run.state, run.spec, at],
        )?;
        let row = tx.query_row(SELECT_RUN, params![run.id], run_row)?;
        tx.commit()?;
        Ok(row)
    }

    /// A run by id.
    pub fn run(&self, id: &str) -> Result<Option<RunRow>, Error> {
        Ok(self.conn.query_row(SELECT_RUN, params![id], run_row).optional()?)
    }

    /// Records a step transition and the event that explains it, atomically. Starting a step
    /// again counts an attempt.
    pub fn record_step(
        &mut self,
        run: &str,
        unit: &str,
        step: &str,
        state: &str,
        detail: &str,
        event: &str,
    ) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        tx.execute(
            "INSERT INTO steps (run_id, unit, step, state, attempt, detail, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)
             ON CONFLICT(run_id, unit, step) DO UPDATE SET
               state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at,
               attempt = steps.attempt + (CASE WHEN excluded.state = 'started' THEN 1 ELSE 0 END)",
            params![run, unit, step, state, detail, at],
        )?;
        tx.execute(
            "INSERT INTO events (run_id, at, kind, body) VALUES (?1, ?2, 'step', ?3)",
            params![run, at, event],
        )?;
        tx.execute("UPDATE runs SET updated_at = ?2 WHERE id = ?1", params![run, at])?;
        tx.commit()?;
        Ok(())
    }

    /// The newest run for `cluster` (by creation time), if any: a rerun of the same command
    /// resumes it when it is unfinished.
    pub fn latest_run(&self, cluster: &str) -> Result<Option<RunRow>, Error> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, cluster, target, state, spec FROM runs WHERE cluster = ?1
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                params![cluster],
                run_row,
            )
            .optional()?)
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunRow>, Error> {
        let mut q = self.conn.prepare(
            "SELECT id, cluster, target, state, spec FROM runs ORDER BY created_at DESC, rowid DESC",
        )?;
        let rows = q.query_map([], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an event that is not a step transition (a blocked eviction, a warning, a
    /// backup), in its own transaction.
    pub fn record_event(&mut self, run: &str, kind: &str, body: &str) -> Result<(), Error> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        tx.execute(
            "INSERT INTO events (run_id, at, kind, body) VALUES (?1, ?2, ?3, ?4)",
            params![run, at, kind, body],
        )?;
        tx.execute("UPDATE runs SET updated_at = ?2 WHERE id = ?1", params![run, at])?;
        tx.commit()?;
        Ok(())
    }

    /// Sets a run's state.
    pub fn set_run_state(&mut self, run: &str, state: &str) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE runs SET state = ?2, updated_at = ?3 WHERE id = ?1",
            params![run, state, now()],
        )?;
        Ok(())
    }

    /// Every step of a run, by unit then step name.
    pub fn steps(&self, run: &str) -> Result<Vec<StepRow>, Error> {
        let mut q = self.conn.prepare(
            "SELECT unit, step, state, attempt, detail FROM steps WHERE run_id = ?1 ORDER BY unit, step",
        )?;
        let rows = q.query_map(params![run], |r| {
            Ok(StepRow {
                unit: r.get(0)?,
                step: r.get(1)?,
                state: r.get(2)?,
                attempt: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The events of a run, oldest first.
    pub fn events(&self, run: &str) -> Result<Vec<String>, Error> {
        let mut q = self.conn.prepare("SELECT body FROM events WHERE run_id = ?1 ORDER BY seq")?;
        let rows = q.query_map(params![run], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> RunRow {
        RunRow {
            id: id.into(),
            cluster: "prod".into(),
            target: "1.37.1".into(),
            state: "running".into(),
            spec: "{}".into(),
        }
    }

    #[test]
    fn opens_with_wal_full_sync_and_the_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("sub/refit.db")).unwrap();
        let mode: String = s.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "FULL");
        let fk: i64 = s.conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
        let v: i64 = s.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA);
    }

    #[test]
    fn a_newer_schema_is_refused_and_reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refit.db");
        drop(Store::open(&path).unwrap());
        drop(Store::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA + 1).unwrap();
        drop(c);
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, Error::TooNew { .. }));
        assert!(err.to_string().contains("upgrade refit"));
    }

    #[test]
    fn steps_and_events_survive_a_reopen_and_attempts_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refit.db");
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.create_run(&run("r1")).unwrap().state, "running");
            // Creating again returns the stored run unchanged.
            let again = RunRow { state: "other".into(), ..run("r1") };
            assert_eq!(s.create_run(&again).unwrap().state, "running");
            s.record_step("r1", "w-1", "drain", "started", "", "{\"drain\":\"started\"}").unwrap();
            s.record_step("r1", "w-1", "drain", "failed", "PDB web", "{\"drain\":\"failed\"}").unwrap();
            s.record_step("r1", "w-1", "drain", "started", "", "{\"drain\":\"started\"}").unwrap();
            s.record_step("r1", "w-1", "drain", "done", "", "{\"drain\":\"done\"}").unwrap();
            s.set_run_state("r1", "completed").unwrap();
        }
        let s = Store::open(&path).unwrap();
        let steps = s.steps("r1").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!((steps[0].state.as_str(), steps[0].attempt), ("done", 2));
        assert_eq!(s.events("r1").unwrap().len(), 4);
        assert_eq!(s.run("r1").unwrap().unwrap().state, "completed");
        assert!(s.run("nope").unwrap().is_none());
    }

    #[test]
    fn the_latest_run_of_a_cluster_and_free_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("refit.db")).unwrap();
        assert!(s.latest_run("prod").unwrap().is_none());
        s.create_run(&run("r1")).unwrap();
        s.create_run(&run("r2")).unwrap();
        s.create_run(&RunRow { cluster: "other".into(), ..run("r3") }).unwrap();
        assert_eq!(s.latest_run("prod").unwrap().unwrap().id, "r2");
        assert_eq!(s.runs().unwrap().len(), 3);
        s.record_event("r2", "blocked", "{\"pod\":\"a\"}").unwrap();
        assert_eq!(s.events("r2").unwrap(), ["{\"pod\":\"a\"}"]);
        assert!(s.record_event("ghost", "warning", "{}").is_err());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("refit.db")).unwrap();
        // No such run: the foreign key refuses the step, and its event is not kept either.
        assert!(s.record_step("ghost", "w-1", "drain", "started", "", "{}").is_err());
        assert!(s.steps("ghost").unwrap().is_empty());
        assert!(s.events("ghost").unwrap().is_empty());
    }
}
