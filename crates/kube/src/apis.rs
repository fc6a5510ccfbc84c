//! Gathering the signals of removed-API usage from a live cluster (the matching against the
//! catalog is pure and lives in `refit_core::removed`).
//!
//! Four sources, read in this order:
//! 1. `apiserver_requested_deprecated_apis` from EVERY apiserver's `/metrics` (each apiserver
//!    counts only the requests it served, so behind a load balancer one scrape is not enough).
//!    Scraped first, before Refit itself lists anything.
//! 2. and 3. `last-applied-configuration` annotations and `managedFields` of the objects of
//!    every kind the catalog lists as removed somewhere, read through metadata-only lists.
//! 4. Helm v3 release secrets: the newest revision of each release.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::discovery::{Discovery, verbs};
use refit_core::Version;
use refit_core::catalog::Catalog;
use refit_core::removed::{
    LAST_APPLIED_ANNOTATION, ObjectRef, Signal, decode_helm_release, last_applied_api_version,
    parse_deprecated_api_metric,
};

use crate::Error;
use crate::connect::Connection;
use crate::endpoints::apiserver_endpoints;

/// How many lists (or release secrets) are in flight at once: enough to hide latency, few
/// enough not to load the apiserver during a pre-upgrade check.
const CONCURRENCY: usize = 4;
/// Objects per list page.
const PAGE: u32 = 500;

/// The oldest version among the cluster's apiservers (each asked directly): during a
/// control-plane upgrade the members differ, and the oldest is what the cluster still is.
pub async fn oldest_apiserver_version(conn: &Connection) -> Result<Version, Error> {
    let mut oldest: Option<Version> = None;
    for endpoint in apiserver_endpoints(conn).await? {
        let client = conn.client_for(&endpoint.url)?;
        let info = client
            .apiserver_version()
            .await
            .map_err(|e| Error::Apiserver { endpoint: endpoint.url.clone(), detail: e.to_string() })?;
        let version: Version = info.git_version.parse().map_err(|e| Error::Apiserver {
            endpoint: endpoint.url.clone(),
            detail: format!("/version: {e}"),
        })?;
        if oldest.as_ref().is_none_or(|o| version < *o) {
            oldest = Some(version);
        }
    }
    oldest.ok_or_else(|| Error::Apiserver {
        endpoint: conn.server.clone(),
        detail: "no apiserver found".into(),
    })
}

/// Every signal of API usage the cluster shows, for `refit_core::removed::findings` to judge.
pub async fn collect_signals(conn: &Connection, catalog: &Catalog) -> Result<Vec<Signal>, Error> {
    // Metrics first: Refit's own lists below must not be the requests it then reports.
    let mut signals = metric_signals(conn).await?;
    signals.extend(object_signals(&conn.client, catalog).await?);
    signals.extend(helm_signals(&conn.client).await?);
    Ok(signals)
}

/// Signal 4: the deprecated-API request counter of each apiserver.
async fn metric_signals(conn: &Connection) -> Result<Vec<Signal>, Error> {
    let mut signals = Vec::new();
    for endpoint in apiserver_endpoints(conn).await? {
        let client = conn.client_for(&endpoint.url)?;
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| Error::Apiserver { endpoint: endpoint.url.clone(), detail: e.to_string() })?;
        let text = client.request_text(request).await.map_err(|e| Error::Apiserver {
            endpoint: endpoint.url.clone(),
            detail: format!("GET /metrics: {e}"),
        })?;
        signals.extend(parse_deprecated_api_metric(&text).into_iter().map(|s| Signal::Metric {
            endpoint: endpoint.url.clone(),
            group: s.group,
            version: s.version,
            resource: s.resource,
            removed_release: s.removed_release,
        }));
    }
    Ok(signals)
}

/// The group of a `group/version` (`v1` alone is the core group).
fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// Where to list the objects of each kind the catalog removes somewhere.
///
/// A stored object can be read through any version its group serves (the apiserver converts),
/// and annotations and managedFields are the same in every version, so each kind is listed
/// once: in its replacement group if served there, else in its old group; within a group at a
/// version no release removes, when there is one (reading through a deprecated version would
/// itself count in the deprecated-API metric). Kinds served nowhere, and create-only kinds
/// (TokenReview and the like) that cannot be listed, are skipped.
fn list_targets(discovery: &Discovery, catalog: &Catalog) -> Vec<ApiResource> {
    let removed: BTreeSet<String> = catalog.removed_group_versions().into_iter().map(|(gv, _)| gv).collect();
    let mut targets: Vec<ApiResource> = Vec::new();
    for api in catalog.releases.iter().flat_map(|r| r.removed_apis.iter()) {
        let mut groups: Vec<&str> = Vec::new();
        for g in [api.ga_replacement.as_deref().map(group_of), api.replacement.as_deref().map(group_of)]
            .into_iter()
            .flatten()
            .chain([api.group.as_str()])
        {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        for kind in &api.kinds {
            let served = groups.iter().find_map(|g| {
                let group = discovery.get(g)?;
                let mut candidates: Vec<ApiResource> = group
                    .versions()
                    .flat_map(|v| group.versioned_resources(v))
                    .filter(|(ar, caps)| ar.plural == kind.resource && caps.supports_operation(verbs::LIST))
                    .map(|(ar, _)| ar)
                    .collect();
                // Stable sort: the server's version preference, with removed versions last.
                candidates.sort_by_key(|ar| removed.contains(&ar.api_version));
                candidates.into_iter().next()
            });
            if let Some(ar) = served
                && !targets.iter().any(|t| t.group == ar.group && t.plural == ar.plural)
            {
                targets.push(ar);
            }
        }
    }
    targets
}

/// Signals 1 and 2 for every object of every removed kind still served.
async fn object_signals(client: &Client, catalog: &Catalog) -> Result<Vec<Signal>, Error> {
    let mut groups: BTreeSet<String> = BTreeSet::new();
    for api in catalog.releases.iter().flat_map(|r| r.removed_apis.iter()) {
        groups.insert(api.group.clone());
        for gv in [&api.ga_replacement, &api.replacement].into_iter().flatten() {
            groups.insert(group_of(gv).to_string());
        }
    }
    let allow: Vec<&str> = groups.iter().map(String::as_str).collect();
    let discovery = Discovery::new(client.clone())
        .filter(&allow)
        .run()
        .await
        .map_err(|e| Error::Api { context: "API discovery".into(), source: Box::new(e) })?;
    // Only annotations and managedFields entries naming a removed group/version are kept, so
    // a large cluster does not turn into a large signal list.
    let removed: BTreeSet<String> = catalog.removed_group_versions().into_iter().map(|(gv, _)| gv).collect();
    let removed = &removed;
    let per_kind: Vec<Vec<Signal>> = futures::stream::iter(list_targets(&discovery, catalog))
        .map(|ar| async move { scan_kind(client.clone(), ar, removed).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(per_kind.into_iter().flatten().collect())
}

/// Lists one kind in all namespaces (metadata only, page by page) and reads each object's
/// last-applied annotation and managedFields.
async fn scan_kind(
    client: Client,
    ar: ApiResource,
    removed: &BTreeSet<String>,
) -> Result<Vec<Signal>, Error> {
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut signals = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list_metadata(&params).await.map_err(|e| Error::Api {
            context: format!("listing {} {}", ar.api_version, ar.plural),
            source: Box::new(e),
        })?;
        for item in &page.items {
            signals.extend(signals_of(&ar.kind, &item.metadata, removed));
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    Ok(signals)
}

/// The last-applied and managedFields signals of one object that name a removed API.
fn signals_of(kind: &str, meta: &ObjectMeta, removed: &BTreeSet<String>) -> Vec<Signal> {
    let object = ObjectRef {
        kind: kind.to_string(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
    };
    let mut signals = Vec::new();
    if let Some(api_version) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
        .and_then(|a| last_applied_api_version(a))
        .filter(|gv| removed.contains(gv))
    {
        signals.push(Signal::LastApplied { object: object.clone(), api_version });
    }
    for entry in meta.managed_fields.iter().flatten() {
        if let Some(api_version) = entry.api_version.as_ref().filter(|gv| removed.contains(*gv)) {
            signals.push(Signal::ManagedFields {
                object: object.clone(),
                manager: entry.manager.clone().unwrap_or_else(|| "(unnamed)".into()),
                api_version: api_version.clone(),
            });
        }
    }
    signals
}

/// Signal 3: the manifest of the newest revision of each Helm v3 release (older revisions
/// are history; the next `helm upgrade` compares against the newest).
async fn helm_signals(client: &Client) -> Result<Vec<Signal>, Error> {
    let secrets: Api<Secret> = Api::all(client.clone());
    // Find the newest revision per release from labels alone (a release secret can be 1 MiB).
    let mut newest: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut params = ListParams::default().labels("owner=helm").fields("type=helm.sh/release.v1").limit(PAGE);
    loop {
        let page = secrets.list_metadata(&params).await.map_err(|e| Error::Api {
            context: "listing Helm release secrets".into(),
            source: Box::new(e),
        })?;
        for s in &page.items {
            let (Some(ns), Some(secret), Some(labels)) =
                (&s.metadata.namespace, &s.metadata.name, &s.metadata.labels)
            else {
                continue;
            };
            let release = labels.get("name").cloned().unwrap_or_else(|| secret.clone());
            let revision = labels.get("version").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let slot = newest.entry((ns.clone(), release)).or_insert((revision, secret.clone()));
            if revision > slot.0 {
                *slot = (revision, secret.clone());
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    let per_release: Vec<Vec<Signal>> = futures::stream::iter(newest)
        .map(|((ns, _), (_, secret))| async move { release_signals(client.clone(), ns, secret).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(per_release.into_iter().flatten().collect())
}

/// Reads one release secret and turns each manifest document into a signal. A secret that
/// does not decode is reported in the log and skipped (it cannot be acted on by Refit).
async fn release_signals(client: Client, namespace: String, name: String) -> Result<Vec<Signal>, Error> {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let Some(secret) = api.get_opt(&name).await.map_err(|e| Error::Api {
        context: format!("reading Helm release secret {namespace}/{name}"),
        source: Box::new(e),
    })?
    else {
        return Ok(Vec::new()); // deleted since the list (helm uninstall, history pruning)
    };
    let Some(data) = secret.data.as_ref().and_then(|d| d.get("release")) else {
        tracing::warn!(secret = %format!("{namespace}/{name}"), "Helm release secret has no data.release");
        return Ok(Vec::new());
    };
    match decode_helm_release(&data.0) {
        Ok(release) => Ok(release
            .objects
            .into_iter()
            .map(|o| Signal::HelmRelease {
                release: release.name.clone(),
                namespace: if release.namespace.is_empty() {
                    namespace.clone()
                } else {
                    release.namespace.clone()
                },
                revision: release.revision,
                object_kind: o.kind,
                object_name: o.name,
                api_version: o.api_version,
            })
            .collect()),
        Err(e) => {
            tracing::warn!(secret = %format!("{namespace}/{name}"), "skipping: {e}");
            Ok(Vec::new())
        }
    }
}
