//! Finding every kube-apiserver of a cluster, so each can be asked for its own `/version` and
//! `/metrics` (behind a load balancer, one request reaches only one of them).
//!
//! kubeadm annotates each kube-apiserver static pod with the address it advertises
//! (`kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint`). Without such pods
//! (managed control planes), the kubeconfig's server is the only endpoint we can name.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::Error;
use crate::connect::Connection;

/// The annotation kubeadm puts on each kube-apiserver static pod.
pub const ADVERTISE_ANNOTATION: &str = "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint";

/// One kube-apiserver instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiserverEndpoint {
    /// The node it runs on, when known.
    pub node: Option<String>,
    /// `https://host:port`.
    pub url: String,
}

/// Every apiserver the cluster shows, or the kubeconfig's server alone.
pub async fn apiserver_endpoints(conn: &Connection) -> Result<Vec<ApiserverEndpoint>, Error> {
    let pods: Api<Pod> = Api::namespaced(conn.client.clone(), "kube-system");
    let list = pods
        .list(&ListParams::default().labels("component=kube-apiserver"))
        .await
        .map_err(|e| Error::Api { context: "listing kube-apiserver pods".into(), source: Box::new(e) })?;
    let mut out: Vec<ApiserverEndpoint> = list
        .items
        .iter()
        .filter_map(|p| {
            let endpoint = p.metadata.annotations.as_ref()?.get(ADVERTISE_ANNOTATION)?;
            Some(ApiserverEndpoint {
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                url: format!("https://{endpoint}"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node).then(a.url.cmp(&b.url)));
    out.dedup();
    if out.is_empty() {
        out.push(ApiserverEndpoint { node: None, url: conn.server.trim_end_matches('/').to_string() });
    }
    Ok(out)
}
