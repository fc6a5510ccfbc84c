//! The fleet driver: update runs across many clusters, stage by stage.
//!
//! Every rule — strategy resolution, the run state machine, rollups, windows, channels, what an
//! upgrade's end means — is `refit_core::fleet`'s. This crate does the I/O around them, for any
//! front end (the `refit fleet` commands today; an HTTP server or a hub controller next):
//!
//! - [`api`]: [`FleetApi`], the seam people's verbs (`refit fleet member|strategy|run|gate|
//!   profile`) run on, in the SQLite store or on a hub.
//! - [`commit`]: every change to a run is read (state, version) → `core::fleet::apply(event)`
//!   (+ `follow_up`) → one versioned write of the event(s), read again on a conflict — so
//!   people's commands (stop, skip, approve) and the driver's decisions never overwrite each
//!   other. A driver's writes also carry its lease [`refit_store::fleet::Fence`].
//! - [`driver`]: the [`Driver`] and its loop (lease → relaunch lost member upgrades → observe →
//!   `core::fleet::next` → record → launch), renewing its lease from a timer ([`lease`]).
//! - [`launch`]: the [`MemberLauncher`] seam and its subprocess implementation (`refit upgrade
//!   -o json`, read as typed `refit_core::event::Event`s).
//! - [`observe`]: the [`Observer`] seam, member observation through the Kubernetes API
//!   (concurrent, bounded, a timeout per member) and a member's binding to its cluster.
//! - [`runs`]: creating and starting runs, and a profile's generated run.
//! - [`store`]: the [`FleetStore`] seam the driver and the commit loop run on: the SQLite
//!   store ([`LocalFleet`]) here, the hub's custom resources in `refit_controller`.

// A panic here would take a fleet (or the hub) down with it: none outside tests
// (clippy.toml lets tests unwrap and expect).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod api;
pub mod commit;
pub mod driver;
pub mod launch;
pub mod lease;
pub mod observe;
pub mod runs;
pub mod store;

pub use api::{FleetApi, StrategySource};
pub use commit::{commit, commit_on, commit_with};
pub use driver::{Driver, DriverConfig, Report, Sink};
pub use launch::{MemberLauncher, MemberUpgrade, SubprocessLauncher};
pub use observe::{KubeObserver, Observer};
pub use store::{DriverStore, FleetStore, LocalFleet, Taken};

/// Everything that can go wrong in the fleet library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed (or refused a deposed driver's write).
    #[error(transparent)]
    Store(#[from] refit_store::Error),
    /// No run of that name.
    #[error("no update run named '{0}' (see refit fleet run list)")]
    NoRun(String),
    /// No profile of that name.
    #[error("no profile named '{0}' (see refit fleet profile list)")]
    NoProfile(String),
    /// No strategy of that name.
    #[error("{0}")]
    NoStrategy(String),
    /// Another live driver holds the run's lease.
    #[error(
        "run {run} is driven by another refit (pid {pid} on {host}); stop that one first or let it drive"
    )]
    Held {
        /// The run.
        run: String,
        /// The holder's process id.
        pid: i64,
        /// The holder's host.
        host: String,
    },
    /// The state machine refused the event (the run is unchanged).
    #[error(transparent)]
    Refused(#[from] refit_core::fleet::TransitionError),
    /// The input does not fit (strategy resolution, names, a spec): nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The run changed under us on every attempt.
    #[error("update run '{0}' keeps changing under us; try again")]
    KeepsChanging(String),
    /// The `refit` binary to launch member upgrades with cannot be found.
    #[error("cannot locate the refit binary: {0}")]
    Exe(#[source] std::io::Error),
    /// Nothing could be decided (a profile read no member).
    #[error("{0}")]
    Undecided(String),
    /// Where the fleet lives (the hub) failed.
    #[error("{context}: {source}")]
    Backend {
        /// What was asked.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Bad input or a name that does not exist: the CLI's exit 2 (nothing was changed).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::NoRun(_)
                | Error::NoProfile(_)
                | Error::NoStrategy(_)
                | Error::Held { .. }
                | Error::Refused(_)
                | Error::Invalid(_)
                | Error::Store(refit_store::Error::NotFound { .. } | refit_store::Error::Exists { .. })
        )
    }
}

/// Now, as the fleet records it.
pub(crate) fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}
