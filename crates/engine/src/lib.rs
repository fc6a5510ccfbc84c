//! The rolling upgrade engine: executes a run's [`Schedule`](refit_core::run::Schedule) —
//! etcd and control-plane members one at a time, hop by hop; workers in a sliding window of
//! max-unavailable; then cluster services — journaling every step before and after it acts,
//! so that re-running the same command after any failure continues where it stopped.
//!
//! The loop is observe → decide → act → record: the cluster and the journal are read
//! (`refit-kube`, `refit-store`), `refit_core::run::resume_point` decides where each unit
//! continues, the step acts (cordon/drain through `refit-kube`, the node action through
//! `refit-exec`), and the transition is recorded with its event in one store transaction.
//! The engine never knows how a node is upgraded: only that the action succeeded and the node
//! came back Ready at the version.

// The engine keeps a cluster's nodes in a known state: no panicking shortcut, no unchecked
// arithmetic (clippy.toml lets tests unwrap, expect and index).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

pub mod engine;
pub mod spec;
mod unit;

pub use engine::{Engine, Outcome, Sink, UnitReport, UnitResult};
pub use spec::{BackupSpec, EtcdEndpointSpec, NodeAction, RunSpec};

/// Everything that can stop the engine itself (a unit's failure is an outcome, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal could not be written or read: nothing may change unrecorded, so the run stops.
    #[error("the run journal: {0}")]
    Store(#[from] refit_store::Error),
    /// The stored run cannot be read back.
    #[error("run {run} in the store is unreadable ({detail}); it was written by another refit version")]
    Spec {
        /// The run.
        run: String,
        /// What failed.
        detail: String,
    },
}
