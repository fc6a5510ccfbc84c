//! Everything in Refit that talks to a Kubernetes API server.
//!
//! For now: building clients the way kubectl users expect (`--kubeconfig`, `--context`,
//! `KUBECONFIG` with its path list merged), with the safety settings the design requires:
//! connect and read timeouts so an unreachable cluster fails in seconds instead of hanging, and
//! no automatic retry of 429/503/504 so that a PDB refusal of an eviction reaches the caller.

// Library code may not panic on a missing value or an index (clippy.toml lets tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod addons;
pub mod apis;
pub mod connect;
pub mod cordon;
pub mod drain;
pub mod endpoints;
pub mod health;
pub mod inventory;
pub mod lease;
pub mod node;
pub mod retry;
pub mod snapshot;

pub use connect::{ClusterTarget, Connection, connect};

/// Everything that can go wrong reaching a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be found, read or parsed.
    #[error("kubeconfig {path}: {detail}")]
    Kubeconfig {
        /// Which file (or `$KUBECONFIG`).
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The requested context is not in the kubeconfig.
    #[error("context '{context}' is not in {path} (contexts there: {available}); pick one with --context")]
    UnknownContext {
        /// The context asked for.
        context: String,
        /// The kubeconfig searched.
        path: String,
        /// The contexts it has.
        available: String,
    },
    /// The API server did not answer.
    #[error(
        "cannot reach the API server of context '{context}' at {server}: {detail}; check the cluster is up and --context/--kubeconfig point at it"
    )]
    Unreachable {
        /// The context used.
        context: String,
        /// The server URL.
        server: String,
        /// The transport error.
        detail: String,
    },
    /// One apiserver of the cluster did not answer: a check that must ask each of them
    /// (versions, deprecated-API metrics) would otherwise be silently incomplete.
    #[error("apiserver {endpoint}: {detail}; every apiserver must answer for this check (is one down?)")]
    Apiserver {
        /// The apiserver's URL.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// A wait (through a watch) did not reach its condition.
    #[error("waiting for {what}: {detail}")]
    Wait {
        /// What was awaited.
        what: String,
        /// Why it ended.
        detail: String,
    },
    /// The node named does not exist.
    #[error("node {node} does not exist (check the name: `kubectl get nodes`)")]
    NodeNotFound {
        /// The node asked for.
        node: String,
    },
    /// An optimistic update kept losing to other writers (409 after re-reading each time).
    #[error("{what}: the object changed under us {attempts} times in a row; something keeps rewriting it")]
    Conflict {
        /// What we were doing.
        what: String,
        /// How many times we re-read and tried again.
        attempts: usize,
    },
    /// An add-on (kube-proxy, CoreDNS) could not be moved to its target or did not roll out.
    #[error("add-on {addon}: {detail}")]
    Addon {
        /// `kube-proxy` or `coredns`.
        addon: String,
        /// What failed or is not ready, and what to do.
        detail: String,
    },
    /// An answer of the API server could not be decoded (a broken server, or a proxy that
    /// rewrote it).
    #[error("{context}: the API server's answer could not be decoded: {detail}")]
    Decode {
        /// What we were reading.
        context: String,
        /// The encoding and what is wrong with the bytes.
        detail: String,
    },
    /// A value the cluster wrote is not what it claims to be (a kube-system UID that is not a
    /// UID): refit will not use it as a name.
    #[error(transparent)]
    ClusterUid(#[from] refit_core::identity::ClusterUidError),
    /// Any other API error.
    #[error("{context}: {source}")]
    Api {
        /// What we were doing.
        context: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
}
