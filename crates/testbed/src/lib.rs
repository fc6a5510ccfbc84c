//! A real Kubernetes control plane on 127.0.0.1 for tests and for people.
//!
//! The binaries are real: etcd 3.6, kube-apiserver, kube-controller-manager, kube-scheduler
//! and kubectl built from the Go module proxy ([`cache`]), with kwok standing in for the
//! kubelets of the nodes. [`Testbed`] starts, operates (control-plane binary swaps, worker
//! version bumps, node add/remove, apiserver faults) and stops one such cluster; [`shared`]
//! hands tests one testbed per test binary; the sandbox is a detached testbed whose state
//! lives in a directory.

// Library code may not panic on a missing value or an index (clippy.toml lets tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod cache;
pub mod etcd_cluster;
pub mod kubeadm;
pub mod lb;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod sandbox;
mod shared;
mod testbed;
pub mod workloads;

pub use cache::{BuildEvent, Cache, Check, Component, EntryState, TestbedVersions};
pub use process::Lifetime;
pub use shared::{default_version, shared, unique_namespace};
pub use testbed::{Member, NodeRole, Testbed, TestbedConfig, WorkerSpec, node_is_ready};

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A setting (environment variable, argument) is invalid.
    #[error("invalid testbed configuration: {0}")]
    Config(String),
    /// A component is not in the cache; the message says how to build it.
    #[error(
        "{component} is not in the testbed cache ({reason}); build it with `refit sandbox build` (or scripts/test)"
    )]
    NotBuilt {
        /// The missing component.
        component: String,
        /// What the cache check found.
        reason: String,
    },
    /// A component failed to build.
    #[error("building {component} failed: {detail}")]
    Build {
        /// The component.
        component: String,
        /// What went wrong, with the build's last output.
        detail: String,
    },
    /// TLS material could not be generated.
    #[error("generating TLS material: {0}")]
    Pki(String),
    /// A child process could not be started or managed.
    #[error("process {name}: {detail}")]
    Process {
        /// The component name.
        name: String,
        /// What happened.
        detail: String,
    },
    /// A component did not become ready in time.
    #[error("{what} not ready after {seconds}s: {detail} (logs in {log})")]
    NotReady {
        /// What was awaited.
        what: String,
        /// How long we waited.
        seconds: u64,
        /// The last observation.
        detail: String,
        /// Where the component's log is.
        log: String,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {context}: {source}")]
    Kube {
        /// What we were doing.
        context: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// An operation named something the testbed does not have.
    #[error("{0}")]
    NotFound(String),
    /// A command the testbed ran (on the host or inside a node) failed.
    #[error("{what} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Command {
        /// What was run, and where.
        what: String,
        /// How it ended (`exit status: 1`, `signal: 9`).
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// The machine lacks something the testbed needs (root, sshd, ...); the message names the fix.
    #[error("{0}")]
    Prerequisite(String),
    /// The saved state of a detached testbed is unreadable.
    #[error("testbed state {path}: {detail}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube { context: context.into(), source: Box::new(source) }
    }
}
