//! The API objects a kubelet writes for its node, built as pure data: the Node it registers,
//! the mirror pod of each static pod, and that mirror pod's status.
//!
//! Shapes follow the kubelet (`pkg/kubelet/pod/mirror_client.go`, `pkg/kubelet/config/common.go`)
//! and what the NodeRestriction admission plugin accepts from a node: a mirror pod carries
//! `kubernetes.io/config.mirror`, is bound to this node, has exactly one controller owner
//! reference to this node's Node (UID included) and references no other API objects
//! (reference/kubeadm.md §7).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::static_pods::{StaticPod, annotations, labels};

/// Annotation holding the static pod's content hash (kubeadm compares it before/after).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Annotation that makes a pod a mirror pod.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// What the agent knows about the node it stands in for.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Node name (also its hostname).
    pub name: String,
    /// The node's address.
    pub address: String,
    /// `kubelet --version` of the installed kubelet package, as a git version (`v1.37.1`).
    pub kubelet_version: String,
    /// Taints from `--register-with-taints` in kubeadm-flags.env.
    pub taints: Vec<Value>,
    /// /etc/machine-id of the node.
    pub machine_id: String,
}

/// The Node a kubelet registers: hostname label (kubeadm waits for it), addresses, nodeInfo
/// with the kubelet's version (kubeadm parses it as semver), capacity. kwok then keeps its
/// status (conditions, heartbeats) and leaves these fields as they are.
pub fn node(f: &NodeFacts) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f.name,
            "labels": {
                "kubernetes.io/hostname": f.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": f.taints},
        "status": node_status(f),
    })
}

/// The status fields the agent owns (also sent again after a "kubelet restart").
pub fn node_status(f: &NodeFacts) -> Value {
    json!({
        "addresses": [
            {"type": "InternalIP", "address": f.address},
            {"type": "Hostname", "address": f.name},
        ],
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
        "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "kubeletVersion": f.kubelet_version,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "refit-node-agent://1",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "osImage": "refit sandbox node",
            "kernelVersion": "",
            "machineID": f.machine_id,
            "systemUUID": f.machine_id,
            "bootID": "",
        },
    })
}

/// Name of the mirror pod of `pod` on `node`.
pub fn mirror_name(pod: &StaticPod, node: &str) -> String {
    format!("{}-{}", pod.name, node.to_lowercase())
}

/// The mirror pod of `pod` on node `node` (whose Node has `node_uid`).
pub fn mirror_pod(pod: &StaticPod, node: &str, node_uid: &str, seen: &str) -> Value {
    let mut ann: BTreeMap<String, String> = annotations(&pod.manifest);
    ann.insert(CONFIG_HASH.into(), pod.hash.clone());
    ann.insert(CONFIG_MIRROR.into(), pod.hash.clone());
    ann.insert("kubernetes.io/config.source".into(), "file".into());
    ann.insert("kubernetes.io/config.seen".into(), seen.into());
    let mut spec = pod.manifest.get("spec").cloned().unwrap_or_else(|| json!({}));
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("nodeName".into(), json!(node));
        let tolerations = obj.entry("tolerations").or_insert_with(|| json!([]));
        if let Some(list) = tolerations.as_array_mut() {
            list.push(json!({"operator": "Exists", "effect": "NoExecute"}));
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": mirror_name(pod, node),
            "namespace": pod.manifest.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("kube-system"),
            "labels": labels(&pod.manifest),
            "annotations": ann,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": true}],
        },
        "spec": spec,
    })
}

/// The mirror pod's status: Running (and Ready) once the process is up and its probe passed,
/// Pending before. kubeadm waits for `phase == Running` of every pod of a component.
pub fn mirror_status(
    pod: &StaticPod,
    address: &str,
    running: bool,
    started_at: &str,
    restarts: u32,
) -> Value {
    let container = pod
        .manifest
        .pointer("/spec/containers/0/name")
        .and_then(Value::as_str)
        .unwrap_or(pod.name.as_str())
        .to_string();
    let image = pod.manifest.pointer("/spec/containers/0/image").and_then(Value::as_str).unwrap_or_default();
    let flag = if running { "True" } else { "False" };
    let state = if running {
        json!({"running": {"startedAt": started_at}})
    } else {
        json!({"waiting": {"reason": "ContainerCreating"}})
    };
    json!({
        "status": {
            "phase": if running { "Running" } else { "Pending" },
            "hostIP": address,
            "podIP": address,
            "podIPs": [{"ip": address}],
            "startTime": started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag},
                {"type": "Ready", "status": flag},
            ],
            "containerStatuses": [{
                "name": container,
                "image": image,
                "imageID": "",
                "ready": running,
                "started": running,
                "restartCount": restarts,
                "state": state,
            }],
        }
    })
}

/// Taints from kubeadm-flags.env's `--register-with-taints=k=v:Effect,k2:Effect`.
pub fn taints_from_flags(env_file: &str) -> Vec<Value> {
    let Some(arg) = env_file.split(['"', ' ', '\n']).find_map(|w| w.strip_prefix("--register-with-taints="))
    else {
        return Vec::new();
    };
    arg.split(',')
        .filter_map(|t| {
            let (kv, effect) = t.rsplit_once(':')?;
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            (!key.is_empty()).then(|| {
                if value.is_empty() {
                    json!({"key": key, "effect": effect})
                } else {
                    json!({"key": key, "value": value, "effect": effect})
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn pod() -> StaticPod {
        StaticPod {
            file: PathBuf::from("/etc/kubernetes/manifests/etcd.yaml"),
            name: "etcd".into(),
            hash: "abc".into(),
            manifest: json!({
                "metadata": {"name": "etcd", "namespace": "kube-system",
                    "labels": {"component": "etcd", "tier": "control-plane"},
                    "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": "https://10.200.0.10:2379"}},
                "spec": {"hostNetwork": true, "containers": [{"name": "etcd", "image": "registry.k8s.io/etcd:3.6.8-0"}]},
            }),
            run: Err("unused".into()),
        }
    }

    #[test]
    fn a_mirror_pod_is_what_node_restriction_accepts_and_kubeadm_reads() {
        let m = mirror_pod(&pod(), "CP-1", "uid-1", "2026-12-04T00:00:00Z");
        assert_eq!(m["metadata"]["name"], "etcd-cp-1");
        assert_eq!(m["metadata"]["annotations"][CONFIG_MIRROR], "abc");
        assert_eq!(m["metadata"]["annotations"][CONFIG_HASH], "abc");
        assert_eq!(
            m["metadata"]["annotations"]["kubeadm.kubernetes.io/etcd.advertise-client-urls"],
            "https://10.200.0.10:2379"
        );
        assert_eq!(m["metadata"]["labels"]["component"], "etcd");
        assert_eq!(m["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(m["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(m["spec"]["nodeName"], "CP-1");
        assert_eq!(m["spec"]["tolerations"][0]["effect"], "NoExecute");
    }

    #[test]
    fn status_is_running_only_once_up() {
        let s = mirror_status(&pod(), "10.200.0.10", false, "t", 0);
        assert_eq!(s["status"]["phase"], "Pending");
        let s = mirror_status(&pod(), "10.200.0.10", true, "t", 2);
        assert_eq!(s["status"]["phase"], "Running");
        assert_eq!(s["status"]["containerStatuses"][0]["restartCount"], 2);
        assert_eq!(s["status"]["containerStatuses"][0]["image"], "registry.k8s.io/etcd:3.6.8-0");
    }

    #[test]
    fn taints_are_read_from_kubeadm_flags() {
        let env =
            "KUBELET_KUBEADM_ARGS=\"--node-ip=10.0.0.1 --register-with-taints=a=b:NoSchedule,c:NoExecute\"\n";
        assert_eq!(
            taints_from_flags(env),
            vec![
                json!({"key": "a", "value": "b", "effect": "NoSchedule"}),
                json!({"key": "c", "effect": "NoExecute"})
            ]
        );
        assert!(taints_from_flags("KUBELET_KUBEADM_ARGS=\"\"").is_empty());
    }
}
