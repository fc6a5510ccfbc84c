//! The one way a run changes: read (state, version) → `core::fleet::apply(event)` → write if the
//! version is unchanged, else read again. What followed from the event (a requested stop that
//! completed) goes into the same write.
//!
//! [`commit`] and [`commit_with`] do it on the SQLite store (people's commands, synchronous);
//! [`commit_on`] on any [`FleetStore`] (the driver, local or hub). Both share [`applied`].

use refit_core::fleet::{Event, RunState};
use refit_store::Store;
use refit_store::fleet::{Fence, StoredRun};

use crate::Error;
use crate::store::FleetStore;

/// How many times a write is retried when someone else wrote the run in between.
const ATTEMPTS: usize = 50;

/// The run named `name`.
pub fn load_run(store: &Store, name: &str) -> Result<StoredRun, Error> {
    store.fleet_run(name)?.ok_or_else(|| Error::NoRun(name.to_string()))
}

/// The run named `name`, from any fleet store.
pub async fn load_run_on<S: FleetStore>(store: &mut S, name: &str) -> Result<StoredRun, Error> {
    store.run(name).await?.ok_or_else(|| Error::NoRun(name.to_string()))
}

/// `event` applied to `cur`, with what followed from it: the next state and the events to
/// record with it (core's rules; a refusal is [`Error::Refused`]).
pub fn applied(cur: &RunState, event: Event) -> Result<(RunState, Vec<Event>), Error> {
    let mut next = refit_core::fleet::apply(cur, &event)?;
    let at = event.at();
    let mut events = vec![event];
    if let Some(f) = refit_core::fleet::follow_up(cur, &next, at) {
        next = refit_core::fleet::apply(&next, &f)?;
        events.push(f);
    }
    Ok((next, events))
}

/// Applies `event` to the stored run and writes the result (a person's command: no fence). A
/// refusal by the state machine changes nothing.
pub fn commit(store: &mut Store, name: &str, event: &Event) -> Result<StoredRun, Error> {
    commit_with(store, name, None, |_| Ok(event.clone()))
}

/// Like [`commit`], with the event built from the current state, and — for a driver — its
/// lease's fence checked in the same transaction as the write.
pub fn commit_with(
    store: &mut Store,
    name: &str,
    fence: Option<&Fence>,
    make: impl Fn(&RunState) -> Result<Event, Error>,
) -> Result<StoredRun, Error> {
    for _ in 0..ATTEMPTS {
        let cur = load_run(store, name)?;
        let (next, events) = applied(&cur.state, make(&cur.state)?)?;
        match store.save_fleet_run_events(&next, cur.version, &events, fence) {
            Ok(version) => return Ok(StoredRun { state: next, version }),
            Err(refit_store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::KeepsChanging(name.to_string()))
}

/// [`commit_with`] on any fleet store: read → apply → versioned (and fenced) write, read again
/// on a conflict.
pub async fn commit_on<S: FleetStore>(
    store: &mut S,
    name: &str,
    fence: Option<&Fence>,
    make: impl Fn(&RunState) -> Result<Event, Error>,
) -> Result<StoredRun, Error> {
    for _ in 0..ATTEMPTS {
        let cur = load_run_on(store, name).await?;
        let (next, events) = applied(&cur.state, make(&cur.state)?)?;
        match store.save_run(&next, cur.version, &events, fence).await {
            Ok(version) => return Ok(StoredRun { state: next, version }),
            Err(Error::Store(refit_store::Error::Conflict { .. })) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::KeepsChanging(name.to_string()))
}
