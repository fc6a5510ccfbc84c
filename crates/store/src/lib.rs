//! Refit's embedded journal: runs, their step transitions and events, in one SQLite file.
//!
//! Nothing is lost: the database runs in WAL mode with `synchronous=FULL` (a committed
//! transition survives a power cut), every write is one `BEGIN IMMEDIATE` transaction (a
//! step's new state and the event that explains it land together or not at all), and one
//! connection writes. The schema is versioned with `PRAGMA user_version`; migrations run in a
//! transaction when the store opens.
//!
//! Another process writing at the same moment (the fleet daemon and its member upgrades share
//! one store) makes SQLite answer "busy": SQLite itself waits up to [`BUSY_TIMEOUT`], and a
//! write still refused is retried with jittered backoff ([`with_busy_retry`]) before it
//! becomes an [`Error::Busy`] naming the file.

// Library code may not panic on a missing value or an index (clippy.toml lets tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod catalog;
pub mod fleet;
pub mod notify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};

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
    /// The store (its directory, database, WAL or lock files) can be written by other users,
    /// who could then rewrite the journal or plant a file refit would follow. Nothing was
    /// opened or changed.
    #[error(
        "{path} can be written by other users (mode {mode:04o}): run `chmod {fix} {path}` or choose a private --store"
    )]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode to set (700 for a directory, 600 for a file).
        fix: &'static str,
    },
    /// A file of the store could not be inspected or made private.
    #[error("cannot secure {path}: {source}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's schema version is negative: not a refit store.
    #[error("{path} is not a refit store (schema version {found}); choose another --store")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
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
    /// Another process kept the store locked through every retry.
    #[error(
        "the refit store at {path} stayed locked by another process (is another refit writing to it, or a tool holding it open?): {source}"
    )]
    Busy {
        /// The file.
        path: PathBuf,
        /// SQLite's last answer.
        #[source]
        source: rusqlite::Error,
    },
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
    /// A fleet driver's write named a lease it no longer holds: another driver took the run
    /// over (this one hung or was silent past the lease's time), or it was released.
    #[error(
        "update run '{run}' is no longer driven by this process ({}): its write was refused",
        match holder { Some(h) => format!("{h} took it over"), None => "its lease was released".to_string() }
    )]
    Deposed {
        /// The run.
        run: String,
        /// Who holds it now, if anyone.
        holder: Option<String>,
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
    fleet::MIGRATION_3,
    notify::MIGRATION,
];

/// How long SQLite itself waits for a lock held by another connection before answering busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether SQLite refused because another connection holds a lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Runs `write` (one transaction), retrying it while SQLite answers busy: up to 4 more
/// attempts, 200 ms to 2 s apart with jitter, each after SQLite's own busy wait. Any other
/// error is returned at once. A write is one transaction, so a retry never applies it twice.
pub fn with_busy_retry<T>(
    path: &Path,
    write: impl FnMut() -> Result<T, rusqlite::Error>,
) -> Result<T, Error> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(4)
        .with_jitter();
    write.retry(backoff).sleep(std::thread::sleep).when(is_busy).call().map_err(|e| {
        if is_busy(&e) { Error::Busy { path: path.to_path_buf(), source: e } } else { Error::Sql(e) }
    })
}

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

/// Permission bits of a private directory and of a private file.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) as 0700, or checks that an existing one cannot be
/// written by others. Why: whoever can write the directory can replace the journal, its WAL
/// or a lock file (e.g. with a symlink) under refit's feet.
fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let perm = |source| Error::Permissions { path: dir.to_path_buf(), source };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| Error::Dir { path: dir.to_path_buf(), source })?;
    }
    let mode = std::fs::metadata(dir).map_err(perm)?.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::Unsafe { path: dir.to_path_buf(), mode, fix: "700" });
    }
    Ok(())
}

/// Checks an existing file of the store: refused when others can write it, tightened to 0600
/// when others can only read it (an older refit created them with the umask's 0644).
fn private_file(file: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let perm = |source| Error::Permissions { path: file.to_path_buf(), source };
    let meta = match std::fs::symlink_metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(perm(e)),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() || mode & 0o022 != 0 {
        return Err(Error::Unsafe { path: file.to_path_buf(), mode, fix: "600" });
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE)).map_err(perm)?;
    }
    Ok(())
}

/// The database file and SQLite's companions (`-wal`, `-shm`, `-journal`).
fn store_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date. The
    /// directory is made 0700 when refit creates it; the database and its WAL/SHM files are
    /// 0600 (SQLite gives the companions the database's mode). A directory or file others can
    /// write is refused before anything is opened.
    pub fn open(path: &Path) -> Result<Store, Error> {
        Store::open_with(path, BUSY_TIMEOUT)
    }

    /// [`Store::open`] with SQLite's busy wait set to `busy_timeout` (tests shorten it).
    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<Store, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        private_dir(&dir)?;
        for f in store_files(path) {
            private_file(&f)?;
        }
        // Created 0600 before SQLite sees it, so its -wal and -shm inherit that mode.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| Error::Permissions { path: path.to_path_buf(), source })?;
        let open_err = |source| Error::Open { path: path.to_path_buf(), source };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(busy_timeout).map_err(open_err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        if version > SCHEMA {
            return Err(Error::TooNew { path: path.to_path_buf(), found: version, supported: SCHEMA });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A negative user_version is no refit store (it once skipped every migration).
        let done = usize::try_from(version)
            .map_err(|_| Error::Foreign { path: path.to_path_buf(), found: version })?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
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
        let conn = &mut self.conn;
        with_busy_retry(&self.path, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let at = now();
            tx.execute(
                "INSERT INTO runs (id, cluster, target, state, spec, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(id) DO NOTHING",
                params![run.id, run.cluster, run.target, run.state, run.spec, at],
            )?;
            let row = tx.query_row(SELECT_RUN, params![run.id], run_row)?;
            tx.commit()?;
            Ok(row)
        })
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
        let conn = &mut self.conn;
        with_busy_retry(&self.path, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
            tx.commit()
        })
    }

    /// The newest run for `cluster`, if any: a rerun of the same command resumes it when it is
    /// unfinished. Newest by insertion (rowid), not by the wall clock: a clock stepped back
    /// between two runs must not make the older one "latest" and resume it.
    pub fn latest_run(&self, cluster: &str) -> Result<Option<RunRow>, Error> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, cluster, target, state, spec FROM runs WHERE cluster = ?1
                 ORDER BY rowid DESC LIMIT 1",
                params![cluster],
                run_row,
            )
            .optional()?)
    }

    /// Every run, newest (last inserted) first.
    pub fn runs(&self) -> Result<Vec<RunRow>, Error> {
        let mut q =
            self.conn.prepare("SELECT id, cluster, target, state, spec FROM runs ORDER BY rowid DESC")?;
        let rows = q.query_map([], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an event that is not a step transition (a blocked eviction, a warning, a
    /// backup), in its own transaction.
    pub fn record_event(&mut self, run: &str, kind: &str, body: &str) -> Result<(), Error> {
        self.record_events(&[(run.to_string(), kind.to_string(), body.to_string())])
    }

    /// Records several events, `(run, kind, body)`, in one transaction (one fsync for a burst
    /// of action output instead of one per line).
    pub fn record_events(&mut self, events: &[(String, String, String)]) -> Result<(), Error> {
        let conn = &mut self.conn;
        with_busy_retry(&self.path, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let at = now();
            for (run, kind, body) in events {
                tx.execute(
                    "INSERT INTO events (run_id, at, kind, body) VALUES (?1, ?2, ?3, ?4)",
                    params![run, at, kind, body],
                )?;
                tx.execute("UPDATE runs SET updated_at = ?2 WHERE id = ?1", params![run, at])?;
            }
            tx.commit()
        })
    }

    /// Sets a run's state.
    pub fn set_run_state(&mut self, run: &str, state: &str) -> Result<(), Error> {
        let conn = &self.conn;
        with_busy_retry(&self.path, || {
            conn.execute(
                "UPDATE runs SET state = ?2, updated_at = ?3 WHERE id = ?1",
                params![run, state, now()],
            )
        })?;
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
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", -1).unwrap();
        drop(c);
        assert!(matches!(Store::open(&path).unwrap_err(), Error::Foreign { found: -1, .. }));
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

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(p: &Path, m: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_new_store_is_private_wal_and_shm_included() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/refit");
        let path = dir.join("refit.db");
        let mut s = Store::open(&path).unwrap();
        s.create_run(&run("r1")).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        for f in &store_files(&path)[1..3] {
            assert!(f.exists(), "{} exists while the store is open (WAL mode)", f.display());
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
    }

    #[test]
    fn a_store_an_older_refit_left_readable_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("refit.db");
        drop(Store::open(&path).unwrap());
        set_mode(&path, 0o644);
        drop(Store::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_store_others_can_write_is_refused_and_nothing_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        set_mode(&shared, 0o777);
        let path = shared.join("refit.db");
        let e = Store::open(&path).unwrap_err();
        assert!(matches!(e, Error::Unsafe { fix: "700", .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("can be written by other users (mode 0777)") && text.contains("chmod 700"),
            "{text}"
        );
        assert!(!path.exists(), "nothing created");

        // A world-writable database or WAL file, or a symlink in its place.
        let private = tmp.path().join("private");
        let path = private.join("refit.db");
        drop(Store::open(&path).unwrap());
        set_mode(&path, 0o666);
        assert!(matches!(Store::open(&path).unwrap_err(), Error::Unsafe { fix: "600", mode: 0o666, .. }));
        set_mode(&path, 0o600);
        let wal = store_files(&path)[1].clone();
        std::fs::write(&wal, b"").unwrap();
        set_mode(&wal, 0o622);
        assert!(matches!(Store::open(&path).unwrap_err(), Error::Unsafe { .. }));
        std::fs::remove_file(&wal).unwrap();
        let elsewhere = tmp.path().join("elsewhere.db");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(matches!(Store::open(&path).unwrap_err(), Error::Unsafe { .. }), "a symlink is not followed");
    }

    #[test]
    fn the_latest_run_is_the_last_inserted_whatever_the_clock_said() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("refit.db")).unwrap();
        s.create_run(&run("r1")).unwrap();
        s.create_run(&run("r2")).unwrap();
        // The clock was stepped back before r2 was created: r1 looks newer by its timestamp.
        s.conn.execute("UPDATE runs SET created_at = '9999999999.000000000' WHERE id = 'r1'", []).unwrap();
        assert_eq!(s.latest_run("prod").unwrap().unwrap().id, "r2");
        let ids: Vec<String> = s.runs().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["r2", "r1"]);
    }

    #[test]
    fn a_burst_of_events_is_one_transaction_and_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("refit.db")).unwrap();
        s.create_run(&run("r1")).unwrap();
        let ev =
            |run: &str, n: usize| (run.to_string(), "action-output".to_string(), format!("{{\"n\":{n}}}"));
        s.record_events(&[ev("r1", 1), ev("r1", 2), ev("r1", 3)]).unwrap();
        assert_eq!(s.events("r1").unwrap().len(), 3);
        // One event of a run that does not exist: none of the batch is kept.
        assert!(s.record_events(&[ev("r1", 4), ev("ghost", 5)]).is_err());
        assert_eq!(s.events("r1").unwrap().len(), 3);
    }

    /// Another process holding the write lock: a write waits and retries, succeeds once the
    /// lock is released, and fails with a clear error when it never is.
    #[test]
    fn a_locked_store_is_retried_then_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refit.db");
        let mut s = Store::open_with(&path, Duration::from_millis(50)).unwrap();
        s.create_run(&run("r1")).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let e = s.record_step("r1", "w-1", "cordon", "started", "", "{}").unwrap_err();
        assert!(matches!(e, Error::Busy { .. }), "{e:?}");
        assert!(e.to_string().contains("stayed locked by another process"), "{e}");
        assert!(s.steps("r1").unwrap().is_empty());
        // Released while the writer waits between attempts: the write goes through.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            other.execute_batch("COMMIT").unwrap();
        });
        s.record_step("r1", "w-1", "cordon", "started", "", "{}").unwrap();
        release.join().unwrap();
        assert_eq!(s.steps("r1").unwrap().len(), 1);
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
