//! The slim shapes objects are decoded into: only the fields the snapshot reads, everything
//! else skipped by serde as it parses. Field names follow the API's JSON; every field is
//! optional (`default`), as the API server omits empty ones.
//!
//! The full k8s-openapi objects the drain reads (from its list and its watch) are projected
//! onto the same shapes (the `From` impls), so that both paths share one conversion.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The metadata fields Refit reads (no managedFields, no finalizers, no timestamps).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub owner_references: Option<Vec<OwnerReference>>,
    /// Only whether it is set matters (the pod is terminating).
    pub deletion_timestamp: Option<IgnoredAny>,
}

impl From<ObjectMeta> for Meta {
    fn from(m: ObjectMeta) -> Self {
        Meta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            labels: m.labels,
            annotations: m.annotations,
            owner_references: m.owner_references,
            deletion_timestamp: m.deletion_timestamp.map(|_| IgnoredAny),
        }
    }
}

/// A pod: what the drain rules, the capacity check and the volume checks need.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Pod {
    pub metadata: Meta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub volumes: Vec<PodVolume>,
    pub containers: Vec<Container>,
    pub init_containers: Vec<Container>,
    /// Pod-level requests (they replace the containers' sum when set).
    pub resources: Option<core::ResourceRequirements>,
    pub overhead: Option<BTreeMap<String, Quantity>>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<core::Toleration>,
    pub affinity: Option<Affinity>,
    pub topology_spread_constraints: Vec<core::TopologySpreadConstraint>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub resources: Option<core::ResourceRequirements>,
    /// `Always` makes an init container a sidecar.
    pub restart_policy: Option<String>,
}

/// A volume source: only the kinds preflight tells apart.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct PodVolume {
    pub name: String,
    pub empty_dir: Option<IgnoredAny>,
    pub host_path: Option<HostPath>,
    pub persistent_volume_claim: Option<Claim>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct HostPath {
    pub path: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Claim {
    pub claim_name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Affinity {
    pub node_affinity: Option<NodeAffinity>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeAffinity {
    pub required_during_scheduling_ignored_during_execution: Option<core::NodeSelector>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PodStatus {
    pub phase: Option<String>,
    pub conditions: Vec<Condition>,
}

/// A pod or node condition without its timestamps and messages.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

impl From<core::Pod> for Pod {
    fn from(p: core::Pod) -> Self {
        let spec = p.spec.unwrap_or_default();
        let status = p.status.unwrap_or_default();
        let container =
            |c: core::Container| Container { resources: c.resources, restart_policy: c.restart_policy };
        Pod {
            metadata: p.metadata.into(),
            spec: PodSpec {
                node_name: spec.node_name,
                volumes: spec
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| PodVolume {
                        name: v.name,
                        empty_dir: v.empty_dir.map(|_| IgnoredAny),
                        host_path: v.host_path.map(|h| HostPath { path: h.path }),
                        persistent_volume_claim: v
                            .persistent_volume_claim
                            .map(|c| Claim { claim_name: c.claim_name }),
                    })
                    .collect(),
                containers: spec.containers.into_iter().map(container).collect(),
                init_containers: spec
                    .init_containers
                    .unwrap_or_default()
                    .into_iter()
                    .map(container)
                    .collect(),
                resources: spec.resources,
                overhead: spec.overhead,
                node_selector: spec.node_selector.unwrap_or_default(),
                tolerations: spec.tolerations.unwrap_or_default(),
                affinity: spec.affinity.map(|a| Affinity {
                    node_affinity: a.node_affinity.map(|n| NodeAffinity {
                        required_during_scheduling_ignored_during_execution: n
                            .required_during_scheduling_ignored_during_execution,
                    }),
                }),
                topology_spread_constraints: spec.topology_spread_constraints.unwrap_or_default(),
            },
            status: PodStatus {
                phase: status.phase,
                conditions: status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| Condition { type_: c.type_, status: c.status })
                    .collect(),
            },
        }
    }
}

/// A node: no images, no volumes, no timestamps.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Node {
    pub metadata: Meta,
    pub spec: NodeSpec,
    pub status: NodeStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NodeSpec {
    pub taints: Vec<Taint>,
    pub unschedulable: Option<bool>,
}

/// A taint without the time it was added.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatus {
    pub conditions: Vec<Condition>,
    pub addresses: Vec<core::NodeAddress>,
    pub allocatable: BTreeMap<String, Quantity>,
    pub node_info: Option<NodeSystemInfo>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSystemInfo {
    pub kubelet_version: String,
}

/// A workload controller (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job): its name,
/// owner and size.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Workload {
    pub metadata: Meta,
    pub spec: WorkloadSpec,
    pub status: WorkloadStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct WorkloadSpec {
    /// Deployments, StatefulSets, ReplicaSets.
    pub replicas: Option<i32>,
    /// Jobs.
    pub parallelism: Option<i32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadStatus {
    /// DaemonSets.
    pub desired_number_scheduled: Option<i32>,
}
