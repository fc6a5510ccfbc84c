//! Where a run's state lives on the hub: the tree in the UpdateRun, each member's detail in its
//! ClusterUpgrade.
//!
//! etcd keeps objects up to about 1.5 MiB and the API server refuses larger requests. Core's
//! `RunState` of a finished 5,000-member run is about 1.5 MB as JSON (~300 bytes a member:
//! target, operation, message besides name, state and timings), so the UpdateRun keeps the tree
//! with each member's state, timings, attempts and pending/skip reasons (what the state machine
//! and `kubectl get` need across the whole run), and the per-member detail — its target, the
//! single-cluster run driving it, its message and error — moves to that member's ClusterUpgrade
//! object, which exists anyway for its journal. [`split`] and [`join`] are exact inverses, so
//! the controller hands core the same `RunState` local mode does.

use std::collections::BTreeMap;

use refit_core::fleet::{MemberState, MemberTarget, RunState};
use serde::{Deserialize, Serialize};

/// What of a member's state lives in its ClusterUpgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberDetail {
    /// What it is moved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<MemberTarget>,
    /// The single-cluster run driving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Information (a success message, a skip reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl MemberDetail {
    fn is_empty(&self) -> bool {
        self == &MemberDetail::default()
    }
}

fn members_mut(run: &mut RunState) -> impl Iterator<Item = &mut MemberState> {
    run.stages.iter_mut().flat_map(|s| s.groups.iter_mut()).flat_map(|g| g.members.iter_mut())
}

/// The tree for the UpdateRun, and the detail of every member that has any (by member name).
pub fn split(mut run: RunState) -> (RunState, BTreeMap<String, MemberDetail>) {
    let mut details = BTreeMap::new();
    for m in members_mut(&mut run) {
        let d = MemberDetail {
            target: m.target.take(),
            operation: m.operation.take(),
            message: m.status.message.take(),
            error: m.status.error.take(),
        };
        if !d.is_empty() {
            details.insert(m.name.clone(), d);
        }
    }
    (run, details)
}

/// Core's run again, from the UpdateRun's tree and the ClusterUpgrades' details.
pub fn join(mut run: RunState, details: &BTreeMap<String, MemberDetail>) -> RunState {
    for m in members_mut(&mut run) {
        if let Some(d) = details.get(&m.name) {
            m.target = d.target.clone();
            m.operation = d.operation.clone();
            m.status.message = d.message.clone();
            m.status.error = d.error.clone();
        }
    }
    run
}
