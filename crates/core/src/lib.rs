//! Refit's pure domain.
//!
//! Everything here takes plain data (versions, a snapshot of a cluster, a run's journal) and
//! returns decisions. No I/O, no Kubernetes client, no clock: the rules can be read in one place
//! and tested exhaustively. See ARCHITECTURE.md for how the other crates feed it.

// Rules here take numbers and lists from users and clusters: no panicking shortcut, no
// unchecked arithmetic (clippy.toml lets tests unwrap, expect and index).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
// Test arithmetic overflowing is a failed test, which is the right outcome.
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

pub mod accept;
pub mod addons;
pub mod batch;
pub mod catalog;
pub mod checks;
pub mod drain;
pub mod duration;
pub mod eta;
pub mod event;
pub mod fleet;
pub mod health;
pub mod identity;
pub mod inventory;
pub mod lock;
pub mod path;
pub mod pdb;
pub mod placeholder;
pub mod plan;
pub mod planfile;
pub mod preflight;
pub mod quantity;
pub mod reach;
pub mod readiness;
pub mod refresh;
pub mod remedy;
pub mod removed;
pub mod run;
#[cfg(feature = "schema")]
pub mod schema;
pub mod setting;
pub mod skew;
pub mod snapshot;
pub mod surge;
pub mod transient;
pub mod version;
pub mod yaml;

pub use version::{MinorVersion, Version, VersionError, VersionRequest};
