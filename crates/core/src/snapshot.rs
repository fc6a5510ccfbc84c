//! A plain-data picture of a cluster: what the preflight checks, the planner and the drain
//! rules read. The kube crate fills it from the API; tests build it with the short builders at
//! the bottom (`pod("web-1").on("w-1").owned_by("ReplicaSet", "web-abc")` style).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who controls a pod (its controller ownerReference).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Kind, e.g. `ReplicaSet`, `DaemonSet`, `StatefulSet`, `Job`.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// A pod volume, reduced to what matters for safety.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Volume {
    /// `emptyDir`: lost when the pod leaves the node.
    EmptyDir {
        /// Volume name.
        name: String,
    },
    /// `hostPath`: tied to the node.
    HostPath {
        /// Volume name.
        name: String,
        /// The host path.
        path: String,
    },
    /// A PersistentVolumeClaim.
    Claim {
        /// Volume name.
        name: String,
        /// Claim name.
        claim: String,
    },
    /// Anything else (configMap, secret, projected, CSI ephemeral...): safe to move.
    Other {
        /// Volume name.
        name: String,
    },
}

/// Pod lifecycle phase as Kubernetes reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Not yet running.
    Pending,
    /// Running.
    Running,
    /// Completed successfully.
    Succeeded,
    /// Completed with failure.
    Failed,
    /// Unknown.
    Unknown,
}

impl Phase {
    /// Succeeded or Failed: the pod will never run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// What the drain and the checks need to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID: pods are tracked by UID, never by name alone.
    pub uid: String,
    /// The node it is bound to.
    pub node: Option<String>,
    /// Its controller, if any.
    pub owner: Option<Owner>,
    /// Phase.
    pub phase: Phase,
    /// Ready condition.
    pub ready: bool,
    /// A static pod's mirror (annotation `kubernetes.io/config.mirror`).
    pub mirror: bool,
    /// Already terminating (deletionTimestamp set).
    pub terminating: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Volumes.
    pub volumes: Vec<Volume>,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod has an emptyDir volume.
    pub fn has_empty_dir(&self) -> bool {
        self.volumes.iter().any(|v| matches!(v, Volume::EmptyDir { .. }))
    }
}

/// Test builders, so each test reads like its scenario.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// A running, ready pod in namespace `default` owned by nothing.
    pub fn pod(name: &str) -> PodInfo {
        PodInfo {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some("w-1".into()),
            owner: None,
            phase: Phase::Running,
            ready: true,
            mirror: false,
            terminating: false,
            labels: BTreeMap::new(),
            volumes: Vec::new(),
        }
    }

    impl PodInfo {
        /// Sets the controller.
        pub fn owned_by(mut self, kind: &str, name: &str) -> Self {
            self.owner = Some(Owner { kind: kind.into(), name: name.into() });
            self
        }
        /// Sets the phase.
        pub fn phase(mut self, phase: Phase) -> Self {
            self.phase = phase;
            self
        }
        /// Marks it a mirror pod.
        pub fn mirror(mut self) -> Self {
            self.mirror = true;
            self
        }
        /// Marks it terminating.
        pub fn terminating(mut self) -> Self {
            self.terminating = true;
            self
        }
        /// Adds an emptyDir volume.
        pub fn empty_dir(mut self) -> Self {
            self.volumes.push(Volume::EmptyDir { name: "scratch".into() });
            self
        }
        /// Adds a hostPath volume.
        pub fn host_path(mut self, path: &str) -> Self {
            self.volumes.push(Volume::HostPath { name: "host".into(), path: path.into() });
            self
        }
    }
}
