//! The fleet-store seam: what the driver and the commit loop need from wherever a fleet lives.
//!
//! Local mode keeps a fleet in the SQLite store ([`LocalFleet`]); hub mode keeps it as custom
//! resources in a hub cluster (`refit_controller`'s implementation). The driver, the commit
//! loop and starting a run are written once, against [`FleetStore`], so both homes run the same
//! code and every rule stays `refit_core::fleet`'s.
//!
//! The contract, whatever the home:
//! - a run is read with a version; a write names the version it read and fails with
//!   `refit_store::Error::Conflict` when someone wrote the run since (the commit loop reads
//!   again and re-applies);
//! - a driver's writes carry its [`Fence`]; a write under a fence the driver no longer holds
//!   (another driver, or another controller replica, took over) fails with
//!   `refit_store::Error::Deposed` and changes nothing;
//! - [`DriverStore::take_lease`] is what makes a driver the one driving a run (a per-run lease
//!   in SQLite; the elected leader on the hub). People's commands need no lease: the plain
//!   SQLite [`Store`] is a [`FleetStore`], only a driver's store is a [`DriverStore`].
//!
//! Methods take `&mut self` so an implementation need not be `Sync` (a SQLite connection is not).

use std::future::Future;
use std::path::Path;

use refit_core::fleet::{Event, RunState};
use refit_store::Store;
use refit_store::fleet::{Fence, LeaseOutcome, MemberProgress, MemberRecord, StoredRun};

use crate::Error;
use crate::lease::{Identity, Renewer, liveness};

/// A lease taken (or renewed) on a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The fence the driver's writes carry from now on.
    pub fence: Fence,
    /// Who drove the run before, when it was taken over from them now.
    pub took_over: Option<String>,
}

/// Where a fleet lives, as the driver and the commit loop use it (see the module doc).
pub trait FleetStore: Send + 'static {
    /// The run named `name` and its version.
    fn run(&mut self, name: &str) -> impl Future<Output = Result<Option<StoredRun>, Error>> + Send;

    /// Every run.
    fn runs(&mut self) -> impl Future<Output = Result<Vec<StoredRun>, Error>> + Send;

    /// Writes `state` — produced by applying `events` to the version `expected` read — and the
    /// events; the new version. `Conflict` when the run changed since, `Deposed` when `fence`
    /// no longer holds it.
    fn save_run(
        &mut self,
        state: &RunState,
        expected: i64,
        events: &[Event],
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<i64, Error>> + Send;

    /// Every member, ready to be observed and launched (a kubeconfig file the launcher can read).
    fn members(&mut self) -> impl Future<Output = Result<Vec<MemberRecord>, Error>> + Send;

    /// One member.
    fn member(&mut self, name: &str) -> impl Future<Output = Result<Option<MemberRecord>, Error>> + Send;

    /// Records what a member's single-cluster run reported last (`Deposed` as for a write).
    fn set_member_progress(
        &mut self,
        run: &str,
        progress: &MemberProgress,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A fleet store a driver drives on: it also decides who drives a run.
pub trait DriverStore: FleetStore {
    /// Takes or renews the right to drive `run`. `Error::Held` when another live driver has it;
    /// `Deposed` when this driver had it and lost it.
    fn take_lease(&mut self, run: &str) -> impl Future<Output = Result<Taken, Error>> + Send;

    /// The fence held on `run`, if any.
    fn fence(&self, run: &str) -> Option<Fence>;

    /// Gives `run` up (it needs no driver now).
    fn release_lease(&mut self, run: &str) -> impl Future<Output = ()> + Send;

    /// Stops holding `run` without writing anything (this driver was deposed).
    fn forget_lease(&mut self, run: &str);

    /// Who this driver is, in leases and history.
    fn holder(&self) -> &str;
}

/// Local mode: the SQLite store, with per-run leases renewed by a timer thread
/// ([`crate::lease`]).
pub struct LocalFleet {
    store: Store,
    renewer: Renewer,
    me: Identity,
    ttl_ms: i64,
}

impl LocalFleet {
    /// The store at `path`, leases named after `me`, renewed every `renew_every`; another
    /// host's lease not renewed for `ttl_ms` is taken over.
    pub fn open(
        path: &Path,
        me: Identity,
        ttl_ms: i64,
        renew_every: std::time::Duration,
    ) -> Result<LocalFleet, Error> {
        Ok(LocalFleet { store: Store::open(path)?, renewer: Renewer::start(path, renew_every)?, me, ttl_ms })
    }

    /// The SQLite store underneath (runs, profiles, history).
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }
}

impl FleetStore for Store {
    async fn run(&mut self, name: &str) -> Result<Option<StoredRun>, Error> {
        Ok(self.fleet_run(name)?)
    }

    async fn runs(&mut self) -> Result<Vec<StoredRun>, Error> {
        Ok(self.fleet_runs()?)
    }

    async fn save_run(
        &mut self,
        state: &RunState,
        expected: i64,
        events: &[Event],
        fence: Option<&Fence>,
    ) -> Result<i64, Error> {
        Ok(self.save_fleet_run_events(state, expected, events, fence)?)
    }

    async fn members(&mut self) -> Result<Vec<MemberRecord>, Error> {
        Ok(Store::members(self)?)
    }

    async fn member(&mut self, name: &str) -> Result<Option<MemberRecord>, Error> {
        Ok(Store::member(self, name)?)
    }

    async fn set_member_progress(
        &mut self,
        run: &str,
        progress: &MemberProgress,
        fence: Option<&Fence>,
    ) -> Result<(), Error> {
        Ok(Store::set_member_progress(self, run, progress, fence)?)
    }
}

impl FleetStore for LocalFleet {
    async fn run(&mut self, name: &str) -> Result<Option<StoredRun>, Error> {
        FleetStore::run(&mut self.store, name).await
    }

    async fn runs(&mut self) -> Result<Vec<StoredRun>, Error> {
        FleetStore::runs(&mut self.store).await
    }

    async fn save_run(
        &mut self,
        state: &RunState,
        expected: i64,
        events: &[Event],
        fence: Option<&Fence>,
    ) -> Result<i64, Error> {
        self.store.save_run(state, expected, events, fence).await
    }

    async fn members(&mut self) -> Result<Vec<MemberRecord>, Error> {
        FleetStore::members(&mut self.store).await
    }

    async fn member(&mut self, name: &str) -> Result<Option<MemberRecord>, Error> {
        FleetStore::member(&mut self.store, name).await
    }

    async fn set_member_progress(
        &mut self,
        run: &str,
        progress: &MemberProgress,
        fence: Option<&Fence>,
    ) -> Result<(), Error> {
        FleetStore::set_member_progress(&mut self.store, run, progress, fence).await
    }
}

impl DriverStore for LocalFleet {
    async fn take_lease(&mut self, run: &str) -> Result<Taken, Error> {
        if let Some(holder) = self.renewer.deposed(run) {
            return Err(refit_store::Error::Deposed { run: run.to_string(), holder }.into());
        }
        let host = self.me.host.clone();
        let alive = move |l: &refit_store::fleet::Lease| liveness(&host, l);
        match self.store.acquire_lease(run, &self.me.holder, self.me.pid, self.ttl_ms, &alive)? {
            LeaseOutcome::Acquired { fence, took_over } => {
                self.renewer.hold(fence.clone());
                Ok(Taken { fence, took_over: took_over.map(|l| l.holder) })
            }
            // Ours until now: another driver took it over before our timer noticed.
            LeaseOutcome::Held(l) if self.renewer.fence(run).is_some() => {
                Err(refit_store::Error::Deposed { run: run.to_string(), holder: Some(l.holder) }.into())
            }
            LeaseOutcome::Held(l) => Err(Error::Held {
                run: run.to_string(),
                pid: l.pid,
                host: crate::lease::parse_holder(&l.holder)
                    .map(|(h, _, _)| h.to_string())
                    .unwrap_or_default(),
            }),
        }
    }

    fn fence(&self, run: &str) -> Option<Fence> {
        self.renewer.fence(run)
    }

    async fn release_lease(&mut self, run: &str) {
        if let Some(fence) = self.renewer.drop_run(run) {
            let _ = self.store.release_lease(&fence);
        }
    }

    fn forget_lease(&mut self, run: &str) {
        self.renewer.drop_run(run);
    }

    fn holder(&self) -> &str {
        &self.me.holder
    }
}
