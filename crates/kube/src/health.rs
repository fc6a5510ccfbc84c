//! The control plane's own health, as the control-plane gate reads it: every kube-apiserver's
//! `/readyz?verbose` (each instance asked directly, since behind a load balancer one request
//! reaches only one of them), read by core's [`Readyz`] so the failing checks are named; and
//! the `workloads` gate's reads (which controllers had pods on a node, their status).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use refit_core::health::readyz::Readyz;
use refit_core::health::workloads::{self, WorkloadKind, WorkloadRef, WorkloadStatus};
use refit_core::snapshot::Owner;

use crate::Error;
use crate::connect::Connection;
use crate::endpoints::{ApiserverEndpoint, apiserver_endpoints};

/// How long one apiserver may take to answer.
pub const READYZ_TIMEOUT: Duration = Duration::from_secs(10);

/// One apiserver's answer (or why there was none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiserverHealth {
    /// Which apiserver.
    pub endpoint: ApiserverEndpoint,
    /// What its `/readyz?verbose` said; `Err` when it did not answer.
    pub readyz: Result<Readyz, String>,
}

impl ApiserverHealth {
    /// Why this apiserver is not ready, if it is not.
    pub fn problem(&self) -> Option<String> {
        match &self.readyz {
            Ok(r) => r.reason(&self.endpoint.url),
            Err(e) => Some(format!("apiserver {} did not answer /readyz: {e}", self.endpoint.url)),
        }
    }
}

/// `/readyz?verbose` of one apiserver through `client`.
pub async fn readyz(client: &Client) -> Result<Readyz, String> {
    let req = http::Request::get("/readyz?verbose").body(Vec::new()).map_err(|e| e.to_string())?;
    let work = async {
        let resp = client.send(req.map(kube::client::Body::from)).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect_bytes().await.map_err(|e| e.to_string())?;
        Ok(Readyz::parse(status, &String::from_utf8_lossy(&body)))
    };
    tokio::time::timeout(READYZ_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", READYZ_TIMEOUT.as_secs())))
}

/// Every apiserver's readiness, asked concurrently.
pub async fn apiservers_health(conn: &Connection) -> Result<Vec<ApiserverHealth>, Error> {
    let endpoints = apiserver_endpoints(conn).await?;
    let asks = endpoints.into_iter().map(|endpoint| async move {
        let readyz = match conn.client_for(&endpoint.url) {
            Ok(client) => readyz(&client).await,
            Err(e) => Err(e.to_string()),
        };
        ApiserverHealth { endpoint, readyz }
    });
    Ok(futures::future::join_all(asks).await)
}

/// The workloads of the pods on `node` now (their controllers; a ReplicaSet stands for its
/// Deployment until [`workload_statuses`] resolves it): what the `workloads` gate waits for
/// after the batch that takes this node.
pub async fn workloads_on_node(
    conn: &Connection,
    node: &str,
) -> Result<std::collections::BTreeSet<WorkloadRef>, Error> {
    let pods: Api<Pod> = Api::all(conn.client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|e| Error::Api { context: format!("listing the pods on {node}"), source: Box::new(e) })?;
    let owners: Vec<(String, Owner)> = list
        .items
        .iter()
        .filter_map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let o = p.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
            Some((ns, Owner { kind: o.kind.clone(), name: o.name.clone() }))
        })
        .collect();
    Ok(workloads::touched(owners.iter().map(|(ns, o)| (ns.as_str(), Some(o)))))
}

/// (generation, observedGeneration, desired, ready, available) of a Deployment or StatefulSet
/// (same status fields, different types); `None` when it is gone.
macro_rules! replicated {
    ($kind:ty, $client:expr, $w:expr) => {{
        let api: Api<$kind> = Api::namespaced($client.clone(), &$w.namespace);
        api.get_opt(&$w.name).await.map(|d| {
            d.map(|d| {
                let s = d.status.unwrap_or_default();
                (
                    d.metadata.generation,
                    s.observed_generation,
                    d.spec.replicas.unwrap_or(1),
                    s.ready_replicas,
                    s.available_replicas,
                )
            })
        })
    }};
}

/// Each workload's status, a ReplicaSet owned by a Deployment read as that Deployment. A
/// workload deleted meanwhile is left out (nothing to wait for).
pub async fn workload_statuses(
    conn: &Connection,
    refs: &std::collections::BTreeSet<WorkloadRef>,
) -> Result<Vec<WorkloadStatus>, Error> {
    let c = conn.client.clone();
    let read = |w: &WorkloadRef| format!("reading {w}");
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for w in refs {
        let mut w = w.clone();
        if w.kind == WorkloadKind::ReplicaSet {
            let api: Api<ReplicaSet> = Api::namespaced(c.clone(), &w.namespace);
            let Some(rs) = api
                .get_opt(&w.name)
                .await
                .map_err(|e| Error::Api { context: read(&w), source: Box::new(e) })?
            else {
                continue;
            };
            let owner = rs
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.iter().find(|o| o.controller == Some(true) && o.kind == "Deployment"));
            match owner {
                Some(d) => w = WorkloadRef { kind: WorkloadKind::Deployment, name: d.name.clone(), ..w },
                None => {
                    let s = rs.status.unwrap_or_default();
                    out.push(WorkloadStatus {
                        generation: rs.metadata.generation.unwrap_or(0),
                        observed_generation: s.observed_generation.unwrap_or(0),
                        desired: i64::from(rs.spec.replicas.unwrap_or(1)),
                        ready: i64::from(s.ready_replicas.unwrap_or(0)),
                        available: i64::from(s.available_replicas.unwrap_or(0)),
                        workload: w,
                    });
                    continue;
                }
            }
        }
        if !seen.insert(w.clone()) {
            continue;
        }
        let ns = w.namespace.clone();
        let status = match w.kind {
            WorkloadKind::Deployment => replicated!(Deployment, c, w),
            WorkloadKind::StatefulSet => replicated!(StatefulSet, c, w),
            WorkloadKind::DaemonSet => {
                let api: Api<DaemonSet> = Api::namespaced(c.clone(), &ns);
                api.get_opt(&w.name).await.map(|d| {
                    d.map(|d| {
                        let s = d.status.unwrap_or_default();
                        (
                            d.metadata.generation,
                            s.observed_generation,
                            s.desired_number_scheduled,
                            Some(s.number_ready),
                            s.number_available,
                        )
                    })
                })
            }
            WorkloadKind::ReplicaSet => continue,
        }
        .map_err(|e| Error::Api { context: read(&w), source: Box::new(e) })?;
        let Some((generation, observed, desired, ready, available)) = status else { continue };
        out.push(WorkloadStatus {
            workload: w,
            generation: generation.unwrap_or(0),
            observed_generation: observed.unwrap_or(0),
            desired: i64::from(desired),
            ready: i64::from(ready.unwrap_or(0)),
            available: i64::from(available.unwrap_or(0)),
        });
    }
    Ok(out)
}
