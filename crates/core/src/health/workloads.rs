//! The `workloads` gate: the Deployments, StatefulSets and DaemonSets whose pods were on a
//! batch's nodes when their units started are available again — every desired replica ready
//! and available, and the controller has seen the latest spec (observedGeneration), so a
//! status from before the eviction is not mistaken for recovery.
//!
//! Which workloads a batch touched is read from the pods' controllers when each unit starts
//! ([`touched`]); a ReplicaSet stands for its Deployment (the kube side resolves it).

use std::collections::BTreeSet;
use std::fmt;

use super::soak::Observation;
use crate::snapshot::Owner;

/// The kinds of controller whose availability the gate waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    /// A Deployment (reached through its pods' ReplicaSet).
    Deployment,
    /// A ReplicaSet no Deployment owns.
    ReplicaSet,
    /// A StatefulSet.
    StatefulSet,
    /// A DaemonSet (its pods are not evicted, but they restart with the node's kubelet).
    DaemonSet,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        })
    }
}

/// One workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The workload a pod's controller stands for, if the gate waits for that kind (a Job's or a
/// bare pod's do not come back, so they are not waited for).
pub fn workload_of(namespace: &str, owner: &Owner) -> Option<WorkloadRef> {
    let kind = match owner.kind.as_str() {
        "ReplicaSet" => WorkloadKind::ReplicaSet,
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        _ => return None,
    };
    Some(WorkloadRef { kind, namespace: namespace.to_string(), name: owner.name.clone() })
}

/// The workloads of pods (namespace, controller) — those on the nodes a batch is about to take.
pub fn touched<'a>(pods: impl IntoIterator<Item = (&'a str, Option<&'a Owner>)>) -> BTreeSet<WorkloadRef> {
    pods.into_iter().filter_map(|(ns, owner)| workload_of(ns, owner?)).collect()
}

/// A workload's status as its controller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadStatus {
    /// Which workload (a ReplicaSet resolved to its Deployment).
    pub workload: WorkloadRef,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// Desired pods (`spec.replicas`, a DaemonSet's `desiredNumberScheduled`).
    pub desired: i64,
    /// Ready pods.
    pub ready: i64,
    /// Available pods (ready for minReadySeconds).
    pub available: i64,
}

impl WorkloadStatus {
    /// Why it is not available again, if it is not.
    pub fn problem(&self) -> Option<String> {
        if self.observed_generation < self.generation {
            return Some(format!(
                "{}: its controller has not seen generation {} yet (observed {})",
                self.workload, self.generation, self.observed_generation
            ));
        }
        if self.ready < self.desired || self.available < self.desired {
            return Some(format!(
                "{}: {} of {} ready, {} available",
                self.workload, self.ready, self.desired, self.available
            ));
        }
        None
    }
}

/// One observation of the gate: every workload available again (a workload deleted meanwhile
/// is not waited for, so it is not in `statuses`).
pub fn judge(statuses: &[WorkloadStatus]) -> Observation {
    let problems: Vec<String> = statuses.iter().filter_map(WorkloadStatus::problem).collect();
    if problems.is_empty() {
        Observation::Holds(format!("{} workload(s) available", statuses.len()))
    } else {
        let more = problems.len().saturating_sub(5);
        let mut shown: Vec<String> = problems.into_iter().take(5).collect();
        if more > 0 {
            shown.push(format!("and {more} more"));
        }
        Observation::Fails(shown.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, desired: i64, ready: i64, observed: i64) -> WorkloadStatus {
        WorkloadStatus {
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "shop".into(),
                name: name.into(),
            },
            generation: 2,
            observed_generation: observed,
            desired,
            ready,
            available: ready,
        }
    }

    #[test]
    fn available_again_means_every_replica_and_the_latest_generation() {
        assert_eq!(judge(&[status("web", 3, 3, 2)]), Observation::Holds("1 workload(s) available".into()));
        assert_eq!(judge(&[]), Observation::Holds("0 workload(s) available".into()));
        assert_eq!(
            judge(&[status("web", 3, 1, 2), status("api", 2, 2, 2)]),
            Observation::Fails("Deployment shop/web: 1 of 3 ready, 1 available".into())
        );
        let Observation::Fails(r) = judge(&[status("web", 3, 3, 1)]) else { panic!() };
        assert!(r.contains("has not seen generation 2"), "{r}");
        let many: Vec<WorkloadStatus> = (0..8).map(|i| status(&format!("w{i}"), 1, 0, 2)).collect();
        let Observation::Fails(r) = judge(&many) else { panic!() };
        assert!(r.ends_with("and 3 more"), "{r}");
    }

    #[test]
    fn only_controllers_that_bring_pods_back_are_waited_for() {
        let rs = Owner { kind: "ReplicaSet".into(), name: "web-7d9".into() };
        let job = Owner { kind: "Job".into(), name: "backup".into() };
        let ds = Owner { kind: "DaemonSet".into(), name: "proxy".into() };
        let t = touched([
            ("shop", Some(&rs)),
            ("shop", Some(&rs)),
            ("ops", Some(&job)),
            ("kube-system", Some(&ds)),
            ("x", None),
        ]);
        let names: Vec<String> = t.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["ReplicaSet shop/web-7d9", "DaemonSet kube-system/proxy"]);
    }
}
