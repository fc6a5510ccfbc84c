//! Objects the testbed puts in its cluster: kubeadm-style static (mirror) pods and add-ons,
//! the sandbox's demo workloads, and small builders tests use to create their own workloads.
//!
//! Everything is applied with server-side apply under the field manager `refit-testbed`, so
//! applying twice is a no-op and applying a new version updates in place.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use refit_core::{MinorVersion, Version};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::Error;

const MANAGER: &str = "refit-testbed";

/// CoreDNS image tag kubeadm deploys with a control plane of this minor, from the release
/// catalog (the newest known minor's pairing for anything newer).
pub fn coredns_version(minor: MinorVersion) -> String {
    let catalog = refit_core::catalog::Catalog::embedded().ok();
    catalog
        .as_ref()
        .and_then(|c| c.release(minor).or_else(|| c.releases.last()))
        .map(|r| r.kubeadm.coredns.clone())
        .unwrap_or_else(|| "v1.14.2".to_string())
}

/// Applies `obj` (a JSON manifest) with server-side apply.
pub async fn apply<K>(client: &Client, obj: Value) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
    let ns = obj.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("default").to_string();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj))
        .await
        .map_err(|e| Error::kube(format!("applying {}/{ns}/{name}", K::kind(&Default::default())), e))
}

/// Creates or updates the mirror pods kubeadm's static manifests produce on a control-plane
/// node (kube-apiserver, kube-controller-manager, kube-scheduler, and etcd on the etcd node),
/// with the images of `version`. Tools (and `refit status`) read component versions from them
/// exactly as on a kubeadm cluster.
pub async fn apply_static_pods(
    client: &Client,
    node: &str,
    version: &Version,
    etcd: Option<&Version>,
    apiserver_endpoint: &str,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get(node).await.map_err(|e| Error::kube(format!("getting node {node}"), e))?;
    let uid = n.metadata.uid.unwrap_or_default();
    let mut components: Vec<(&str, String)> = vec![
        ("kube-apiserver", format!("registry.k8s.io/kube-apiserver:{}", version.git_version())),
        (
            "kube-controller-manager",
            format!("registry.k8s.io/kube-controller-manager:{}", version.git_version()),
        ),
        ("kube-scheduler", format!("registry.k8s.io/kube-scheduler:{}", version.git_version())),
    ];
    if let Some(etcd) = etcd {
        components.push(("etcd", format!("registry.k8s.io/etcd:{etcd}-0")));
    }
    for (component, image) in components {
        let name = format!("{component}-{node}");
        let mut annotations = serde_json::Map::from_iter([
            (
                "kubernetes.io/config.mirror".to_string(),
                json!(format!("{component}-{}", version.git_version())),
            ),
            ("kubernetes.io/config.source".to_string(), json!("file")),
            ("kubernetes.io/config.seen".to_string(), json!("2026-01-01T00:00:00Z")),
        ]);
        if component == "kube-apiserver" {
            // kubeadm records where each apiserver listens; tools use it to ask each one.
            annotations.insert(
                "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint".to_string(),
                json!(apiserver_endpoint),
            );
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "kube-system",
                "labels": {"component": component, "tier": "control-plane"},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": true}],
            },
            "spec": {
                "nodeName": node,
                "hostNetwork": true,
                "priorityClassName": "system-node-critical",
                "priority": 2000001000,
                "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
                "containers": [{"name": component, "image": image, "command": [component]}],
            },
        });
        // A kubelet replaces a mirror pod whose manifest changed (its mirror annotation is
        // immutable): delete the old one, then create the new one.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
        let existing =
            pods.get_opt(&name).await.map_err(|e| Error::kube(format!("getting pod {name}"), e))?;
        if let Some(existing) = existing {
            let current =
                existing.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
            if current.as_deref() == Some(image.as_str()) {
                continue;
            }
            let dp = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            match pods.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("deleting mirror pod {name}"), e)),
            }
            let start = Instant::now();
            while pods
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("getting pod {name}"), e))?
                .is_some()
            {
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(Error::NotReady {
                        what: format!("deletion of mirror pod {name}"),
                        seconds: 30,
                        detail: "still present".into(),
                        log: "kwok.log".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        apply::<Pod>(client, pod).await?;
    }
    Ok(())
}

/// kubeadm's cluster add-ons: the kube-proxy DaemonSet (at the workers' version) and the
/// CoreDNS Deployment and Service (at the version kubeadm pairs with the control plane).
pub async fn install_addons(
    client: &Client,
    control_plane: &Version,
    kube_proxy: &Version,
) -> Result<(), Error> {
    let labels = json!({"k8s-app": "kube-proxy"});
    apply::<DaemonSet>(
        client,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "hostNetwork": true,
                        "priorityClassName": "system-node-critical",
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "kube-proxy", "image": format!("registry.k8s.io/kube-proxy:{}", kube_proxy.git_version())}],
                    },
                },
            },
        }),
    )
    .await?;
    let dns = json!({"k8s-app": "kube-dns"});
    apply::<Deployment>(
        client,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": dns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": dns},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": dns},
                    "spec": {
                        "priorityClassName": "system-cluster-critical",
                        "tolerations": [
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                        ],
                        "containers": [{
                            "name": "coredns",
                            "image": format!("registry.k8s.io/coredns/coredns:{}", coredns_version(control_plane.minor_version())),
                            "resources": {"requests": {"cpu": "100m", "memory": "70Mi"}, "limits": {"memory": "170Mi"}},
                        }],
                    },
                },
            },
        }),
    )
    .await?;
    apply::<Service>(
        client,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": dns},
            "spec": {"selector": dns, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
        }),
    )
    .await?;
    Ok(())
}

/// A Deployment of `replicas` pause-like pods labelled `app: NAME`.
pub fn deployment(namespace: &str, name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app", "image": "registry.k8s.io/pause:3.10.1",
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                }]},
            },
        },
    })
}

/// A PodDisruptionBudget over `app: APP` with either `minAvailable` or `maxUnavailable`.
pub fn pdb(namespace: &str, name: &str, app: &str, budget: Budget) -> Value {
    let spec = match budget {
        Budget::MinAvailable(n) => json!({"minAvailable": n, "selector": {"matchLabels": {"app": app}}}),
        Budget::MaxUnavailable(n) => json!({"maxUnavailable": n, "selector": {"matchLabels": {"app": app}}}),
    };
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// The two ways a PDB states its budget.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// `minAvailable: N`
    MinAvailable(i32),
    /// `maxUnavailable: N`
    MaxUnavailable(i32),
}

/// The sandbox's demo mix: what a real cluster has and what makes an upgrade interesting.
pub async fn install_demo(client: &Client, namespace: &str) -> Result<(), Error> {
    apply::<Deployment>(client, deployment(namespace, "web", 6)).await?;
    apply::<PodDisruptionBudget>(client, pdb(namespace, "web", "web", Budget::MinAvailable(4))).await?;
    apply::<Deployment>(client, deployment(namespace, "api", 4)).await?;
    apply::<PodDisruptionBudget>(client, pdb(namespace, "api", "api", Budget::MaxUnavailable(1))).await?;
    // A single replica: unavailable while its node drains.
    apply::<Deployment>(client, deployment(namespace, "singleton", 1)).await?;
    // Pods with emptyDir: their data is lost when evicted.
    let mut cache = deployment(namespace, "cache", 2);
    let no_container = || Error::Config("the cache deployment has no pod spec with a container".into());
    cache
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(no_container)?
        .insert("volumes".to_string(), json!([{"name": "scratch", "emptyDir": {}}]));
    cache
        .pointer_mut("/spec/template/spec/containers/0")
        .and_then(Value::as_object_mut)
        .ok_or_else(no_container)?
        .insert("volumeMounts".to_string(), json!([{"name": "scratch", "mountPath": "/scratch"}]));
    apply::<Deployment>(client, cache).await?;
    let db = json!({"app": "db"});
    apply::<StatefulSet>(
        client,
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": namespace, "labels": db},
            "spec": {
                "serviceName": "db", "replicas": 3, "selector": {"matchLabels": db},
                "template": {"metadata": {"labels": db}, "spec": {"containers": [{
                    "name": "db", "image": "registry.k8s.io/pause:3.10.1",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                }]}},
            },
        }),
    )
    .await?;
    apply::<PodDisruptionBudget>(client, pdb(namespace, "db", "db", Budget::MaxUnavailable(1))).await?;
    let agent = json!({"app": "node-agent"});
    apply::<DaemonSet>(
        client,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "node-agent", "namespace": namespace, "labels": agent},
            "spec": {"selector": {"matchLabels": agent}, "template": {"metadata": {"labels": agent}, "spec": {
                "containers": [{"name": "agent", "image": "registry.k8s.io/pause:3.10.1"}],
            }}},
        }),
    )
    .await?;
    // A bare pod: nothing recreates it after a drain.
    apply::<Pod>(
        client,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "debug-shell", "namespace": namespace, "labels": {"app": "debug-shell"}},
            "spec": {"containers": [{"name": "shell", "image": "registry.k8s.io/pause:3.10.1"}]},
        }),
    )
    .await?;
    Ok(())
}

/// Waits until at least `count` pods matching `selector` in `namespace` are Running and Ready.
pub async fn wait_pods_ready(
    client: &Client,
    namespace: &str,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    loop {
        let pods = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| Error::kube(format!("listing pods {selector} in {namespace}"), e))?;
        let ready: Vec<Pod> = pods.items.into_iter().filter(pod_is_ready).collect();
        if ready.len() >= count {
            return Ok(ready);
        }
        if start.elapsed() > timeout {
            return Err(Error::NotReady {
                what: format!("{count} pods {selector} in {namespace}"),
                seconds: timeout.as_secs(),
                detail: format!("{} ready", ready.len()),
                log: "kwok / kube-controller-manager logs".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Running, not terminating, with condition Ready=True.
pub fn pod_is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
}

/// Labels helper for tests.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// storage.k8s.io/v1beta1 VolumeAttributesClass: an opt-in beta in 1.36
/// (`--runtime-config=storage.k8s.io/v1beta1=true`) that 1.37 removes — the testbed's real
/// example of a deprecated API still in use.
pub fn volume_attributes_class_v1beta1() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "storage.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "storage.k8s.io/v1beta1".into(),
        kind: "VolumeAttributesClass".into(),
        plural: "volumeattributesclasses".into(),
    }
}
