//! What the upgrade engine observes about one node, and the waits it needs: a node Ready at
//! a version, a node gone. Waits go through a watch on that one object (kube-runtime's
//! `await_condition`), never a poll, so a node that turns Ready is seen at once.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use refit_core::Version;
use refit_core::run::carried_over;
use serde_json::json;

use crate::Error;
use crate::connect::Connection;

/// One node as the engine sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The Node object exists.
    pub exists: bool,
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet: Option<Version>,
    /// The Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// The run that cordoned it, from refit's annotation.
    pub cordoned_by: Option<String>,
    /// The InternalIP address.
    pub address: Option<String>,
}

fn api_err(context: impl Into<String>, e: kube::Error) -> Error {
    Error::Api { context: context.into(), source: Box::new(e) }
}

fn state_of(n: &Node) -> NodeState {
    let status = n.status.as_ref();
    NodeState {
        exists: true,
        kubelet: status
            .and_then(|s| s.node_info.as_ref())
            .and_then(|i| i.kubelet_version.parse::<Version>().ok()),
        ready: is_ready(n),
        unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
        cordoned_by: crate::cordon::cordon_owner(n),
        address: status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone())),
    }
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Reads one node (a missing node is `exists: false`, not an error).
pub async fn node_state(conn: &Connection, node: &str) -> Result<NodeState, Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    let what = format!("reading node {node}");
    match crate::retry::retrying(&what, || api.get_opt(node)).await.map_err(|e| api_err(what.clone(), e))? {
        Some(n) => Ok(state_of(&n)),
        None => Ok(NodeState::default()),
    }
}

/// Every node's state, by name (one list).
pub async fn node_states(conn: &Connection) -> Result<BTreeMap<String, NodeState>, Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    let lp = ListParams::default();
    let list = crate::retry::retrying("listing nodes", || api.list(&lp))
        .await
        .map_err(|e| api_err("listing nodes", e))?;
    Ok(list.items.iter().map(|n| (n.metadata.name.clone().unwrap_or_default(), state_of(n))).collect())
}

/// kube-runtime's `await_condition` on one node, watched again after a transient failure (an
/// etcd restart ends a watch with an error; the condition is what matters, not the stream). The
/// caller's timeout bounds it; an error that is not transient ends it.
async fn watch_until(
    api: &Api<Node>,
    node: &str,
    cond: impl Fn(Option<&Node>) -> bool + Clone,
) -> Result<(), kube::runtime::wait::Error> {
    loop {
        match await_condition(api.clone(), node, cond.clone()).await {
            Ok(_) => return Ok(()),
            Err(kube::runtime::wait::Error::ProbeFailed(e)) if crate::retry::is_transient_watch(&e) => {
                tracing::warn!("watching node {node}: {e}; watching again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits (through a watch) until `node` is Ready with its kubelet at `version`.
pub async fn wait_ready_at(
    conn: &Connection,
    node: &str,
    version: &Version,
    timeout: Duration,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    let want = version.release();
    let cond = move |n: Option<&Node>| {
        n.is_some_and(|n| {
            let s = state_of(n);
            s.ready && s.kubelet.as_ref().is_some_and(|k| k.release() == want)
        })
    };
    match tokio::time::timeout(timeout, watch_until(&api, node, cond)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            Err(Error::Wait { what: format!("node {node} Ready at {version}"), detail: e.to_string() })
        }
        Err(_) => {
            let now = node_state(conn, node).await.ok();
            let seen = match now {
                Some(s) if s.exists => format!(
                    "it reports kubelet {} and is {}",
                    s.kubelet.map(|k| k.to_string()).unwrap_or_else(|| "unknown".into()),
                    if s.ready { "Ready" } else { "not Ready" }
                ),
                _ => "it does not exist".into(),
            };
            Err(Error::Wait {
                what: format!("node {node} Ready at {version}"),
                detail: format!("not reached within {}s: {seen}", timeout.as_secs()),
            })
        }
    }
}

/// Waits (through a watch) until the Node object is gone.
pub async fn wait_gone(conn: &Connection, node: &str, timeout: Duration) -> Result<(), Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    match tokio::time::timeout(timeout, watch_until(&api, node, |n: Option<&Node>| n.is_none())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Wait { what: format!("node {node} removed"), detail: e.to_string() }),
        Err(_) => Err(Error::Wait {
            what: format!("node {node} removed"),
            detail: format!("still present after {}s", timeout.as_secs()),
        }),
    }
}

/// Deletes a Node object (already gone is fine).
pub async fn delete_node(conn: &Connection, node: &str) -> Result<(), Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    match api.delete(node, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(format!("deleting node {node}"), e)),
    }
}

/// What a replacement node takes over from the node it replaces (core's
/// `run::carried_over` rule): custom labels, annotations and taints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomMetadata {
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Taints, as JSON objects.
    pub taints: Vec<serde_json::Value>,
}

/// Reads the custom metadata of `node` that `carry` lets a replacement take over.
pub async fn custom_metadata(
    conn: &Connection,
    node: &str,
    carry: &carried_over::CarryOver,
) -> Result<CustomMetadata, Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    let what = format!("reading node {node}");
    let n = crate::retry::retrying(&what, || api.get(node)).await.map_err(|e| api_err(what.clone(), e))?;
    let labels = n.metadata.labels.unwrap_or_default().into_iter().filter(|(k, _)| carry.label(k)).collect();
    let annotations =
        n.metadata.annotations.unwrap_or_default().into_iter().filter(|(k, _)| carry.annotation(k)).collect();
    let taints = n
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| carry.taint(&t.key))
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    Ok(CustomMetadata { labels, annotations, taints })
}

/// Puts custom metadata on a node: labels and annotations it does not have yet (a key the new
/// node already has — its own zone, its agent's address — is never overwritten), and taints
/// it lacks.
pub async fn apply_custom_metadata(
    conn: &Connection,
    node: &str,
    meta: &CustomMetadata,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    let what = format!("reading node {node}");
    let n = crate::retry::retrying(&what, || api.get(node)).await.map_err(|e| api_err(what.clone(), e))?;
    let missing = |have: Option<&BTreeMap<String, String>>, want: &BTreeMap<String, String>| {
        want.iter()
            .filter(|(k, _)| !have.is_some_and(|h| h.contains_key(*k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<String, String>>()
    };
    let labels = missing(n.metadata.labels.as_ref(), &meta.labels);
    let annotations = missing(n.metadata.annotations.as_ref(), &meta.annotations);
    let mut taints: Vec<serde_json::Value> = n
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    for t in &meta.taints {
        let same = |x: &serde_json::Value| x.get("key") == t.get("key") && x.get("effect") == t.get("effect");
        if !taints.iter().any(same) {
            taints.push(t.clone());
        }
    }
    let patch = json!({
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {"taints": taints},
    });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| api_err(format!("copying labels, annotations and taints to node {node}"), e))?;
    Ok(())
}

/// A stable identity for the cluster: the UID of its kube-system namespace (survives renamed
/// contexts and moved endpoints, differs between clusters).
pub async fn cluster_uid(conn: &Connection) -> Result<String, Error> {
    let api: Api<Namespace> = Api::all(conn.client.clone());
    let ns = api.get("kube-system").await.map_err(|e| api_err("reading namespace kube-system", e))?;
    // It names the run journal's cluster and the lock file: a UID, or nothing is done.
    let uid = refit_core::identity::ClusterUid::parse(ns.metadata.uid.as_deref().unwrap_or_default())?;
    Ok(uid.to_string())
}

/// Control-plane components whose static (mirror) pods on `node` do not run `version` or are
/// not Ready: empty means every one present is at the version.
pub async fn control_plane_lagging(
    conn: &Connection,
    node: &str,
    version: &Version,
) -> Result<Vec<String>, Error> {
    let api: Api<Pod> = Api::namespaced(conn.client.clone(), "kube-system");
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let pods = api.list(&lp).await.map_err(|e| api_err(format!("listing kube-system pods on {node}"), e))?;
    let tag = format!(":{}", version.git_version());
    let mut out = Vec::new();
    for p in &pods.items {
        let component =
            p.metadata.labels.as_ref().and_then(|l| l.get("component")).cloned().unwrap_or_default();
        if !["kube-apiserver", "kube-controller-manager", "kube-scheduler"].contains(&component.as_str()) {
            continue;
        }
        let at = p.spec.as_ref().is_some_and(|s| {
            s.containers.iter().all(|c| c.image.as_deref().is_some_and(|i| i.ends_with(&tag)))
        });
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !at || !ready {
            out.push(component);
        }
    }
    Ok(out)
}
