//! Refit's pure domain.
//!
//! Everything here takes plain data (versions, a snapshot of a cluster, a run's journal) and
//! returns decisions. No I/O, no Kubernetes client, no clock: the rules can be read in one place
//! and tested exhaustively. See ARCHITECTURE.md for how the other crates feed it.

pub mod addons;
pub mod catalog;
pub mod checks;
pub mod drain;
pub mod event;
pub mod fleet;
pub mod inventory;
pub mod path;
pub mod pdb;
pub mod plan;
pub mod planfile;
pub mod preflight;
pub mod quantity;
pub mod removed;
pub mod run;
pub mod skew;
pub mod snapshot;
pub mod version;
pub mod yaml;

pub use version::{MinorVersion, Version, VersionError, VersionRequest};
