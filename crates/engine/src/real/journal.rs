//! The journal in the SQLite store, written by one thread of its own: SQLite calls block
//! (each committed transaction waits for fsync), and on tokio's workers they would stall
//! every other node's drain and action. Step transitions are sent to the writer and awaited;
//! free events (action output, warnings, blocked evictions) are sent without waiting and
//! written in batches — whatever queued up while the previous transaction was syncing goes
//! into the next one — instead of one fsynced transaction per output line.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use futures::FutureExt;
use futures::future::BoxFuture;
use refit_core::event::Event;
use refit_core::run::{RunState, StepState};
use refit_store::{RunRow, Store};

use crate::context::{Journal, JournalError, RunRecord, StepRecord};

/// Free events written in one transaction at most.
const MAX_BATCH: usize = 512;

type Call = Box<dyn FnOnce(&mut Store) + Send>;

enum Cmd {
    Event { run: String, kind: String, body: String },
    Call(Call),
}

/// The SQLite journal (see the module documentation).
pub struct SqliteJournal {
    tx: mpsc::Sender<Cmd>,
    path: PathBuf,
}

fn store_err(e: refit_store::Error) -> JournalError {
    JournalError { message: e.to_string(), source: Some(Box::new(e)) }
}

fn stopped() -> JournalError {
    JournalError::msg("the journal writer stopped")
}

impl SqliteJournal {
    /// Opens (creating if needed) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteJournal, refit_store::Error> {
        Store::open(path).map(SqliteJournal::new)
    }

    /// A journal writing into `store`.
    pub fn new(store: Store) -> SqliteJournal {
        let path = store.path().to_path_buf();
        let (tx, rx) = mpsc::channel();
        // A thread that cannot start leaves the sender without a receiver: every call then
        // fails with "the journal writer stopped", which the engine handles as a journal error.
        let spawned =
            std::thread::Builder::new().name("refit-journal".into()).spawn(move || writer(store, rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the journal writer: {e}");
        }
        SqliteJournal { tx, path }
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread and returns its result.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, refit_store::Error> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, JournalError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(Cmd::Call(Box::new(move |s: &mut Store| {
            let _ = tx.send(f(s));
        })));
        async move {
            sent.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?.map_err(store_err)
        }
        .boxed()
    }
}

fn writer(mut store: Store, rx: mpsc::Receiver<Cmd>) {
    let mut next: Option<Cmd> = None;
    loop {
        let cmd = match next.take() {
            Some(c) => c,
            None => match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
        };
        match cmd {
            Cmd::Event { run, kind, body } => {
                let mut batch = vec![(run, kind, body)];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Cmd::Event { run, kind, body }) => batch.push((run, kind, body)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = store.record_events(&batch) {
                    // Free events are best effort: a step's own record says what matters.
                    tracing::warn!("journal: cannot record {} event(s): {e}", batch.len());
                }
            }
            Cmd::Call(f) => f(&mut store),
        }
    }
}

fn record(r: RunRow) -> RunRecord {
    RunRecord { id: r.id, cluster: r.cluster, target: r.target, state: r.state, spec: r.spec }
}

impl Journal for SqliteJournal {
    fn latest_run<'a>(&'a self, cluster: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        let cluster = cluster.to_string();
        self.call(move |s| s.latest_run(&cluster)).map(|r| r.map(|o| o.map(record))).boxed()
    }

    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        let id = id.to_string();
        self.call(move |s| s.run(&id)).map(|r| r.map(|o| o.map(record))).boxed()
    }

    fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<RunRecord, JournalError>> {
        let row =
            RunRow { id: run.id, cluster: run.cluster, target: run.target, state: run.state, spec: run.spec };
        self.call(move |s| s.create_run(&row)).map(|r| r.map(record)).boxed()
    }

    fn set_run_state<'a>(&'a self, run: &'a str, state: RunState) -> BoxFuture<'a, Result<(), JournalError>> {
        let run = run.to_string();
        self.call(move |s| s.set_run_state(&run, state.as_str()))
    }

    fn steps<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<Vec<StepRecord>, JournalError>> {
        let run = run.to_string();
        self.call(move |s| s.steps(&run))
            .map(|r| {
                r.map(|rows| {
                    rows.into_iter()
                        .map(|r| StepRecord { unit: r.unit, step: r.step, state: r.state })
                        .collect()
                })
            })
            .boxed()
    }

    fn record_step<'a>(
        &'a self,
        run: &'a str,
        unit: &'a str,
        key: &'a str,
        state: StepState,
        detail: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let (run, unit, key, detail) =
            (run.to_string(), unit.to_string(), key.to_string(), detail.to_string());
        let body = serde_json::to_string(event).unwrap_or_default();
        self.call(move |s| s.record_step(&run, &unit, &key, state.as_str(), &detail, &body))
    }

    fn record_event(&self, run: &str, event: &Event) {
        let Ok(body) = serde_json::to_string(event) else { return };
        let kind = serde_json::to_value(event)
            .ok()
            .and_then(|v| v.get("event").and_then(|k| k.as_str().map(str::to_string)))
            .unwrap_or_default();
        if self.tx.send(Cmd::Event { run: run.to_string(), kind, body }).is_err() {
            tracing::warn!("journal: the writer stopped; an event was not recorded");
        }
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        // A call queues behind every event sent before it, and the writer handles them in order.
        self.call(|_| Ok(())).map(|_| ()).boxed()
    }
}
