//! Hub mode: a fleet kept as Kubernetes custom resources in a hub cluster (issue 15).
//!
//! Local mode keeps a fleet in one operator's SQLite file; hub mode keeps the same objects —
//! members, strategies, update runs, gates, profiles and each member upgrade's journal — as
//! custom resources (`refit.dev/v1alpha1`), so the fleet outlives any one machine, several
//! people approve gates with their own Kubernetes identity, and kubectl, GitOps tools and
//! dashboards read and write it. Every rule stays `refit_core::fleet`'s.
//!
//! - [`leader`]: replicas elect a leader on a Lease (the engine's cluster lock, elsewhere).
//! - [`serve`]: one replica: election, `/healthz`, `/readyz`, `/metrics`, and while leading
//!   the [`reconcile`]r.
//! - [`reconcile`]: the leader's loop: `refit_fleet`'s driver over [`store::HubFleet`] (the
//!   hub's resources as a fleet store), plus what only the hub has (binding Members,
//!   initializing UpdateRuns, the spec's Run/Stop, approvals written to Gate objects).
//! - [`events`]: Kubernetes Events for what people watch.
//! - [`resources`]: the custom resource types (schemas generated from them and from core's).
//! - [`hub`]: `refit fleet --hub` verbs (gate approval as the hub's authenticated user).
//! - [`journal`]: the engine's journal of each member upgrade on its ClusterUpgrade (fenced
//!   by an owner every write tests; the next leader resumes the same run from it).
//! - [`launcher`]: member upgrades in-process through the engine library, journaled by
//!   [`journal`] (the default; the local driver keeps `refit upgrade` children).
//! - [`layout`]: which part of a run lives in the UpdateRun, which in each ClusterUpgrade
//!   (an UpdateRun of 5,000 members stays under 1 MiB).
//! - [`manifests`]: CRDs, RBAC, the approver admission policy and the Deployment.

// A panic here would take a fleet (or the hub) down with it: none outside tests
// (clippy.toml lets tests unwrap and expect).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod events;
pub mod hub;
pub mod journal;
pub mod launcher;
pub mod layout;
pub mod leader;
pub mod manifests;
pub mod reconcile;
pub mod resources;
pub mod serve;
pub mod store;

/// Everything that can go wrong in hub mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifests could not be written as YAML.
    #[error("cannot render the manifests: {0}")]
    Render(String),
    /// The hub could not be reached.
    #[error("the hub: {0}")]
    Hub(#[from] refit_kube::Error),
    /// The member upgrades' journal could not be prepared.
    #[error("{0}")]
    Journal(String),
    /// The HTTP endpoint could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
