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

    /// Whether evicting it uses up one of its budget's disruptions: only a Running, Ready pod
    /// does. The apiserver evicts pending, unready and finished pods without consuming one.
    pub fn consumes_disruption(&self) -> bool {
        self.ready && self.phase == Phase::Running
    }
}

/// A taint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// A toleration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    /// Key; empty with operator `Exists` tolerates everything.
    pub key: String,
    /// `Equal` (default) or `Exists`.
    pub operator: String,
    /// Value for `Equal`.
    pub value: String,
    /// Effect; empty matches every effect.
    pub effect: String,
}

impl Toleration {
    /// Whether this toleration tolerates `taint` (the scheduler's rule).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        match self.operator.as_str() {
            "Exists" => self.key.is_empty() || self.key == taint.key,
            _ => self.key == taint.key && self.value == taint.value,
        }
    }
}

/// Requests of CPU (millicores), memory (bytes) and pod slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Pod slots.
    pub pods: i64,
}

impl Resources {
    /// Component-wise sum, saturating (requests come from users: a huge one must read as
    /// "does not fit", never wrap around to a small or negative number).
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            pods: self.pods.saturating_add(o.pods),
        }
    }

    /// Whether `self` fits in `room`.
    pub fn fits_in(self, room: Resources) -> bool {
        self.cpu_millis <= room.cpu_millis && self.memory_bytes <= room.memory_bytes && self.pods <= room.pods
    }

    /// Component-wise maximum.
    pub fn max(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.max(o.cpu_millis),
            memory_bytes: self.memory_bytes.max(o.memory_bytes),
            pods: self.pods.max(o.pods),
        }
    }

    /// Component-wise difference, saturating.
    pub fn minus(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            pods: self.pods.saturating_sub(o.pods),
        }
    }
}

/// The requests a pod's spec states, per container, before the scheduler's rules combine them
/// ([`PodRequests::effective`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// Regular containers (cpu, memory).
    pub containers: Vec<Resources>,
    /// Init containers in order, each with whether it is a sidecar (`restartPolicy: Always`).
    pub init_containers: Vec<(Resources, bool)>,
    /// Pod-level `spec.resources.requests.cpu`, when set.
    pub pod_cpu_millis: Option<i64>,
    /// Pod-level `spec.resources.requests.memory`, when set.
    pub pod_memory_bytes: Option<i64>,
    /// `spec.overhead` (RuntimeClass).
    pub overhead: Resources,
}

impl PodRequests {
    /// What the scheduler reserves for the pod, following `resourcehelper.PodRequests`:
    /// - regular containers run together, so they add up;
    /// - classic init containers run one at a time before them, so only the largest counts,
    ///   but it also runs next to every sidecar started before it;
    /// - sidecars (init containers with `restartPolicy: Always`) keep running, so they add to
    ///   the regular containers too;
    /// - the pod takes the larger of the two phases, per resource, plus `spec.overhead`;
    /// - pod-level requests, when set, replace the container sum for cpu/memory;
    /// - one pod slot.
    pub fn effective(&self) -> Resources {
        let mut running = self.containers.iter().fold(Resources::default(), |acc, c| acc.plus(*c));
        let mut sidecars = Resources::default();
        let mut init_peak = Resources::default();
        for &(req, sidecar) in &self.init_containers {
            let during = if sidecar {
                running = running.plus(req);
                sidecars = sidecars.plus(req);
                sidecars
            } else {
                req.plus(sidecars)
            };
            init_peak = init_peak.max(during);
        }
        let mut total = running.max(init_peak);
        if let Some(cpu) = self.pod_cpu_millis {
            total.cpu_millis = cpu;
        }
        if let Some(memory) = self.pod_memory_bytes {
            total.memory_bytes = memory;
        }
        total = total.plus(Resources { pods: 0, ..self.overhead });
        total.pods = 1;
        total
    }
}

/// What the checks and the planner need to know about a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations (refit's own live under `refit.dev/`).
    pub annotations: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Ready condition is True.
    pub ready: bool,
    /// Conditions other than Ready that are True (MemoryPressure, DiskPressure, PIDPressure,
    /// NetworkUnavailable).
    pub pressure: Vec<String>,
    /// kubelet version as reported.
    pub kubelet: String,
    /// Internal IP (for actions that reach the node).
    pub address: Option<String>,
    /// Allocatable resources.
    pub allocatable: Resources,
}

impl NodeInfo {
    /// Whether the node carries the control-plane role label.
    pub fn is_control_plane(&self) -> bool {
        self.labels.contains_key("node-role.kubernetes.io/control-plane")
            || self.labels.contains_key("node-role.kubernetes.io/master")
    }
}

/// A workload controller (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Desired replicas (DaemonSets: desired scheduled).
    pub replicas: i32,
    /// For ReplicaSets: the Deployment that owns it, so pods map to what people know.
    pub owner: Option<Owner>,
}

/// A PersistentVolume, reduced to whether it ties data to one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvInfo {
    /// Name.
    pub name: String,
    /// Bound claim as `namespace/name`.
    pub claim: Option<String>,
    /// `local` or `hostPath` volume source: the data lives on one node.
    pub node_local: bool,
}

/// Scheduling constraints of a pod that decide where its replacement can go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduling {
    /// Resource requests (sum of containers; pod slots = 1).
    pub requests: Resources,
    /// `nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Required node affinity: any term must match; within a term all requirements.
    pub required_node_terms: Vec<Vec<crate::pdb::Requirement>>,
    /// `topologySpreadConstraints` with `whenUnsatisfiable: DoNotSchedule` (the scheduler
    /// refuses a node that breaks them; `ScheduleAnyway` ones only score, so they are not kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<Spread>,
}

/// One hard topology spread constraint: among the domains (values of `topology_key` on the
/// nodes the pod may go to), the pods `selector` matches in the pod's namespace may differ by
/// at most `max_skew` between the fullest domain a pod is placed in and the emptiest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    /// `maxSkew` (at least 1).
    pub max_skew: u32,
    /// `topologyKey`, e.g. `topology.kubernetes.io/zone`.
    pub topology_key: String,
    /// `labelSelector` (a missing one matches no pod: the constraint counts nothing).
    pub selector: crate::pdb::Selector,
}

/// Everything preflight reads from a cluster, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// Pods (all namespaces).
    pub pods: Vec<PodInfo>,
    /// Scheduling constraints by pod UID (kept apart: most rules never need them).
    pub scheduling: BTreeMap<String, Scheduling>,
    /// PodDisruptionBudgets.
    pub pdbs: Vec<crate::pdb::PdbInfo>,
    /// Workload controllers.
    pub workloads: Vec<WorkloadInfo>,
    /// PersistentVolumes.
    pub pvs: Vec<PvInfo>,
}

/// Test builders, so each test reads like its scenario.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// Adds a running, ready pod of `app` (a ReplicaSet's, labelled `app`) on `node`,
    /// requesting `cpu` millicores and 1 MiB.
    pub fn place(s: &mut Snapshot, name: &str, app: &str, node: &str, cpu: i64) {
        let mut p = pod(name).owned_by("ReplicaSet", app);
        p.labels.insert("app".into(), app.into());
        p.node = Some(node.into());
        s.scheduling.insert(
            p.uid.clone(),
            Scheduling {
                requests: Resources { cpu_millis: cpu, memory_bytes: 1 << 20, pods: 1 },
                ..Default::default()
            },
        );
        s.pods.push(p);
    }

    /// A budget over the pods labelled `app` in `default`, with its status.
    pub fn budget(app: &str, expected: i32, desired: i32, healthy: i32) -> crate::pdb::PdbInfo {
        crate::pdb::PdbInfo {
            namespace: "default".into(),
            name: app.into(),
            selector: crate::pdb::Selector {
                match_labels: BTreeMap::from([("app".into(), app.into())]),
                ..Default::default()
            },
            disruptions_allowed: (healthy - desired).max(0),
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods: expected,
            always_allow_unhealthy: false,
        }
    }

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

    /// A Ready, schedulable node with a 1.36.4 kubelet, 8 CPUs, 32 GiB and 110 pod slots, and
    /// its hostname label.
    pub fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
            annotations: BTreeMap::new(),
            taints: vec![],
            unschedulable: false,
            ready: true,
            pressure: vec![],
            kubelet: "v1.36.4".into(),
            address: None,
            allocatable: Resources { cpu_millis: 8000, memory_bytes: 32 << 30, pods: 110 },
        }
    }

    impl NodeInfo {
        /// Labels it a control-plane node.
        pub fn control_plane(mut self) -> Self {
            self.labels.insert("node-role.kubernetes.io/control-plane".into(), String::new());
            self
        }
        /// Sets the kubelet version.
        pub fn kubelet(mut self, v: &str) -> Self {
            self.kubelet = v.into();
            self
        }
        /// Sets allocatable CPU (millicores) and 8 GiB of memory.
        pub fn cpu(mut self, millis: i64) -> Self {
            self.allocatable = Resources { cpu_millis: millis, memory_bytes: 8 << 30, pods: 110 };
            self
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MI: i64 = 1 << 20;

    fn r(cpu_millis: i64, memory_bytes: i64) -> Resources {
        Resources { cpu_millis, memory_bytes, pods: 0 }
    }

    #[test]
    fn effective_requests_follow_the_schedulers_rules() {
        let mut spec = PodRequests {
            containers: vec![r(100, 64 * MI), r(200, 32 * MI)],
            // classic 500m alone; then a sidecar; then a classic one beside the sidecar.
            init_containers: vec![
                (r(500, 10 * MI), false),
                (r(100, 16 * MI), true),
                (r(450, 200 * MI), false),
            ],
            overhead: r(10, MI),
            ..PodRequests::default()
        };
        // running: 300m + 100m sidecar = 400m, 112Mi; init peak: 450m + 100m = 550m, 216Mi.
        assert_eq!(spec.effective(), Resources { cpu_millis: 560, memory_bytes: 217 * MI, pods: 1 });
        spec.pod_memory_bytes = Some(1024 * MI);
        assert_eq!(spec.effective().memory_bytes, 1025 * MI, "pod-level replaces the sum; overhead stays");
        assert_eq!(PodRequests::default().effective(), Resources { cpu_millis: 0, memory_bytes: 0, pods: 1 });
    }

    proptest! {
        /// Without init containers the pod asks for the sum of its containers; init containers
        /// never lower it, and nothing overflows however large the numbers.
        #[test]
        fn init_containers_only_add(
            containers in prop::collection::vec((0i64..i64::MAX, 0i64..i64::MAX), 0..4),
            init in prop::collection::vec(((0i64..i64::MAX, 0i64..i64::MAX), any::<bool>()), 0..4),
        ) {
            let containers: Vec<Resources> = containers.into_iter().map(|(c, m)| r(c, m)).collect();
            let plain = PodRequests { containers: containers.clone(), ..PodRequests::default() }.effective();
            let sum = containers.iter().fold(Resources::default(), |a, c| a.plus(*c));
            prop_assert_eq!(plain, Resources { pods: 1, ..sum });
            let init: Vec<(Resources, bool)> = init.into_iter().map(|((c, m), s)| (r(c, m), s)).collect();
            let with_init = PodRequests { containers, init_containers: init, ..PodRequests::default() }.effective();
            prop_assert!(with_init.cpu_millis >= plain.cpu_millis && with_init.memory_bytes >= plain.memory_bytes);
        }
    }
}
