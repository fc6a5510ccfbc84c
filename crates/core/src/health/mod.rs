//! Health: the signals that say whether an upgrade may go on — health gates declared by the
//! operator (between batches of a run, after a fleet stage) and the control plane's own health
//! (each apiserver's `/readyz`, etcd's members, alarms and quorum).
//!
//! Everything here is pure: the definitions and their validation ([`gate`]), the soak rule
//! that turns a stream of observations into a verdict ([`soak`]), the reading of an apiserver's
//! `/readyz?verbose` text ([`readyz`]), etcd's quorum rule ([`etcd`]) and the control-plane
//! gate that combines both ([`control_plane`]). The probes that
//! produce observations (HTTP, Prometheus, commands, the Kubernetes API, etcd's gateway) live
//! in `refit-exec` and `refit-kube`; the engine and the fleet driver wait on them.

pub mod control_plane;
pub mod etcd;
pub mod gate;
pub mod readyz;
pub mod soak;
pub mod workloads;

pub use gate::{Condition, GateCheck, GateError, HealthGate, HealthGateSpec, HttpUrl, OnGateFailure};
pub use soak::{Observation, Soak, Verdict};
