//! A cluster run end to end, as a library the CLI, a server and a hub controller call alike:
//!
//! - [`prepare`]: fetch → validate → decide, once per command (what `refit plan` prints);
//! - [`lifecycle`]: the cluster lock (a Lease in the cluster), resume or abandon the cluster's
//!   latest run, unique run ids;
//! - [`Engine`]: executes a run's [`Schedule`](refit_core::run::Schedule) — etcd and
//!   control-plane members one at a time, hop by hop; workers in a sliding window of
//!   max-unavailable; then cluster services — journaling every step before and after it acts,
//!   so that re-running the same command after any failure continues where it stopped.
//!
//! The loop is observe → decide → act → record: the cluster and the journal are read,
//! `refit_core::run::resume_point` decides where each unit continues, the step acts
//! (cordon/drain, the node action), and the transition is recorded with its event. Everything
//! the engine does to the world goes through the traits of [`context`] (cluster, node
//! actions, journal, clock, event sink); the real ones are wired in [`real`]. The engine never
//! knows how a node is upgraded: only that the action succeeded and the node came back Ready
//! at the version.

// The engine keeps a cluster's nodes in a known state: no panicking shortcut, no unchecked
// arithmetic (clippy.toml lets tests unwrap, expect and index).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

pub mod catalog;
pub mod context;
pub mod engine;
pub mod lifecycle;
pub mod prepare;
pub mod reach;
pub mod real;
pub mod report;
pub mod spec;
mod unit;
pub mod upgrade;

pub use context::{Context, EventSink};
pub use engine::{CLUSTER_UNIT, Engine};
pub use report::{Outcome, StepError, UnitReport, UnitResult};
pub use spec::{BackupSpec, DEFAULT_CONTROL_PLANE_GATE_SECS, EtcdEndpointSpec, NodeAction, RunSpec};

/// What can stop the engine itself before it started (a unit's failure is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal could not be read or written before anything started.
    #[error("the run journal: {0}")]
    Journal(#[source] context::JournalError),
}
