//! Reads what a cluster runs into a [`refit_core::inventory::Inventory`].
//!
//! Sources, most direct first: each kube-apiserver's own `/version`; the kubeadm static pods in
//! kube-system for the controller-manager, scheduler and etcd (their image tags); node status
//! for kubelet, runtime, kernel and OS (and kube-proxy when the node still reports it, else the
//! kube-proxy pod on that node); the CoreDNS Deployment; DaemonSets of well-known CNIs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use refit_core::inventory::{Inventory, NodeInventory, Observed, image_tag};

use crate::Error;
use crate::connect::Connection;
use crate::endpoints::apiserver_endpoints;

/// DaemonSet names of common CNI plugins (any namespace).
const CNI_DAEMONSETS: &[&str] = &[
    "calico-node",
    "cilium",
    "kube-flannel-ds",
    "kube-flannel",
    "flannel",
    "weave-net",
    "canal",
    "antrea-agent",
    "kube-router",
    "aws-node",
    "azure-cns",
    "kindnet",
    "kube-ovn-cni",
    "ovnkube-node",
];

fn api_err(context: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |e| Error::Api { context: context.to_string(), source: Box::new(e) }
}

/// Reads the inventory. The local kubectl is not read here (that is the caller's machine).
pub async fn read_inventory(conn: &Connection) -> Result<Inventory, Error> {
    let mut inv = Inventory::default();

    for ep in apiserver_endpoints(conn).await? {
        let location = ep.url.clone();
        let answer = match conn.client_for(&ep.url) {
            Ok(client) => {
                match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
                    Ok(Ok(info)) => Ok(info.git_version),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        inv.apiservers.push(match answer {
            Ok(v) => Observed { location, reported: Some(v), source: "GET /version".into(), error: None },
            Err(e) => Observed { location, reported: None, source: "GET /version".into(), error: Some(e) },
        });
    }

    let system: Api<Pod> = Api::namespaced(conn.client.clone(), "kube-system");
    let pods = system.list(&ListParams::default()).await.map_err(api_err("listing kube-system pods"))?.items;
    let mut kube_proxy_by_node: BTreeMap<String, String> = BTreeMap::new();
    for p in &pods {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let image = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let observed = || Observed {
            location: node.clone(),
            reported: image_tag(&image),
            source: "static pod image".into(),
            error: image_tag(&image).is_none().then(|| format!("image {image} has no tag")),
        };
        match labels.get("component").map(String::as_str) {
            Some("kube-controller-manager") => inv.controller_managers.push(observed()),
            Some("kube-scheduler") => inv.schedulers.push(observed()),
            Some("etcd") => inv.etcd.push(observed()),
            _ => {}
        }
        if labels.get("k8s-app").map(String::as_str) == Some("kube-proxy")
            && let Some(tag) = image_tag(&image)
        {
            kube_proxy_by_node.insert(node.clone(), tag);
        }
    }

    let nodes: Api<Node> = Api::all(conn.client.clone());
    for n in nodes.list(&ListParams::default()).await.map_err(api_err("listing nodes"))?.items {
        let name = n.metadata.name.clone().unwrap_or_default();
        let mut roles: Vec<String> = n
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .keys()
            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(str::to_string))
            .filter(|r| !r.is_empty())
            .collect();
        if roles.is_empty() {
            roles.push("worker".into());
        }
        let info = n.status.and_then(|s| s.node_info).unwrap_or_default();
        let kube_proxy = Some(info.kube_proxy_version.clone())
            .filter(|v| !v.is_empty())
            .or_else(|| kube_proxy_by_node.get(&name).cloned());
        inv.nodes.push(NodeInventory {
            name,
            roles,
            kubelet: info.kubelet_version,
            kube_proxy,
            container_runtime: info.container_runtime_version,
            kernel: info.kernel_version,
            os_image: info.os_image,
        });
    }
    inv.nodes.sort_by(|a, b| a.name.cmp(&b.name));

    let deployments: Api<Deployment> = Api::all(conn.client.clone());
    let dns = deployments
        .list(&ListParams::default().labels("k8s-app=kube-dns"))
        .await
        .map_err(api_err("listing the CoreDNS deployment"))?;
    for d in dns.items {
        let image =
            d.spec.template.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
        inv.coredns.push(Observed {
            location: format!(
                "{}/{}",
                d.metadata.namespace.unwrap_or_default(),
                d.metadata.name.unwrap_or_default()
            ),
            reported: image.as_deref().and_then(image_tag),
            source: "deployment image".into(),
            error: None,
        });
    }

    let daemonsets: Api<DaemonSet> = Api::all(conn.client.clone());
    for ds in daemonsets.list(&ListParams::default()).await.map_err(api_err("listing daemonsets"))?.items {
        let name = ds.metadata.name.clone().unwrap_or_default();
        if !CNI_DAEMONSETS.contains(&name.as_str()) {
            continue;
        }
        let image =
            ds.spec.template.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
        inv.cni.push(Observed {
            location: format!("{}/{name}", ds.metadata.namespace.unwrap_or_default()),
            reported: image.as_deref().and_then(image_tag),
            source: "daemonset image".into(),
            error: None,
        });
    }
    Ok(inv)
}
