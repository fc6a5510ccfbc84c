//! Reads a [`refit_core::snapshot::Snapshot`]: everything preflight and the planner decide on.
//!
//! Built for large clusters (1,000 nodes, 30,000 pods):
//! - the two large lists (pods, nodes) are read in ONE unpaginated request each on 1.31+
//!   ([`LargeLists::for_server`]) and decoded as the body arrives (`list_streamed`): the
//!   apiserver serves such a consistent list from its watch cache, while every page after the
//!   first of a paginated list is an etcd range read (measured on 1.36.4, 30,000 pods: 0.75 s
//!   and 0.7–1.0 apiserver CPU-s unpaginated, 1.6–2.5 s and 2.7–3.0 CPU-s in pages of 500,
//!   plus 0.6 etcd CPU-s). Streamed, the 67 MB body never sits in memory: each item is decoded
//!   when its last byte arrives. Older servers get pages of [`PAGE_SIZE`] (an unpaginated
//!   consistent list would be one huge etcd read there); the other lists are small and paged;
//! - the independent lists run concurrently;
//! - pods and nodes are asked for as protobuf ([`protobuf`]; JSON is offered as the fallback:
//!   a server or proxy that answers JSON is read in pages of JSON): the apiserver encodes
//!   protobuf about twice as fast as JSON, and the bytes are fewer;
//! - objects are decoded into slim wire types ([`wire`]) that name only the fields Refit reads:
//!   serde skips everything else without allocating. `managedFields` alone is a third of a
//!   pod's JSON and would otherwise be built as a `serde_json::Value` tree per pod. A protobuf
//!   item is decoded with `k8s-pb` and moved into the same wire type, so one projection serves
//!   both encodings;
//! - pages are pipelined: the next page is requested as soon as this one's continue token is
//!   parsed (it precedes the items in both encodings), so the apiserver encodes it while this
//!   side decodes the current one;
//! - each page (or streamed item) is converted to plain data and dropped before the next.
//!
//! What a list sees: no `resourceVersion` is sent, so a list (or a paginated list's first
//! page) is a consistent read, as fresh as etcd at that moment, and every `continue` page is
//! served at the first page's resourceVersion: one consistent view per resource. Different
//! resources are read at different resourceVersions (moments apart): a plan tolerates that, as
//! a drain would.
//!
//! Nothing read from the cluster is trusted to be present: a missing field becomes the
//! default an apiserver would have applied (replicas 1, phase Pending...), never a panic.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, PersistentVolume, Pod, ResourceRequirements,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::Client;
use kube::api::{Api, ListParams};
use refit_core::pdb::{PdbInfo, Requirement, Selector};
use refit_core::quantity;
use refit_core::snapshot::{
    NodeInfo, Owner, Phase, PodInfo, PodRequests, PvInfo, Resources, Scheduling, Snapshot, Spread, Taint,
    Toleration, Volume, WorkloadInfo,
};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::connect::Connection;

pub mod protobuf;

/// Objects per list request: large enough that 30,000 pods take 60 round trips, small enough
/// that one page is a few MB and arrives well within the read timeout.
pub const PAGE_SIZE: u32 = 500;

/// The annotation the kubelet puts on the API copy of a static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Which encoding pods and nodes are asked for in (the other lists are small: always JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Protobuf, offering JSON as the fallback (what [`read_snapshot`] uses): a server or
    /// proxy that cannot serve protobuf answers JSON, and each page is decoded by its
    /// `Content-Type`.
    #[default]
    Protobuf,
    /// JSON only: the path every server supports (and a reference to compare against).
    Json,
}

/// How the two large lists (pods and nodes) are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LargeLists {
    /// One unpaginated request each, protobuf, decoded as the bytes arrive (`list_streamed`);
    /// pages of JSON when the server answers JSON.
    Streamed,
    /// Pages of [`PAGE_SIZE`], pipelined, asked for in this encoding.
    Paged(Encoding),
}

impl LargeLists {
    /// The cheapest way for an apiserver of `version` to serve a consistent read.
    ///
    /// Where the watch cache serves a list without `limit`
    /// ([`refit_core::MinorVersion::serves_consistent_lists_from_cache`]), one request:
    /// pages after the first still go to etcd (measured on 1.36.4 with 30,000 pods: 62 etcd
    /// list requests for 63 pages of 500, none unpaginated; apiserver 0.7–1.0 CPU-s and
    /// 0.75 s unpaginated, 2.7–3.0 CPU-s and 1.6–2.5 s in pages; etcd 0.05 against 0.6 CPU-s).
    /// Elsewhere an unpaginated consistent list is one huge etcd range read, which pagination
    /// spreads out.
    pub fn for_server(version: &refit_core::Version) -> LargeLists {
        if version.minor_version().serves_consistent_lists_from_cache() {
            LargeLists::Streamed
        } else {
            LargeLists::Paged(Encoding::Protobuf)
        }
    }
}

/// Reads nodes, pods (with their scheduling constraints), PDBs, workload controllers and
/// PersistentVolumes, concurrently, the large lists as `large` says (see
/// [`LargeLists::for_server`]). Results are sorted (by name, or namespace then name) so that
/// output built from them is stable between runs.
pub async fn read_snapshot(conn: &Connection, large: LargeLists) -> Result<Snapshot, Error> {
    let c = &conn.client;
    let (mut nodes, pods, mut pdbs, deployments, statefulsets, daemonsets, replicasets, jobs, mut pvs) = futures::try_join!(
        list_large::<Node, wire::Node, _>(c, "nodes", large, node_info),
        list_large::<Pod, wire::Pod, _>(c, "pods in all namespaces", large, pod_from_wire),
        list_slim::<PodDisruptionBudget, PodDisruptionBudget, _>(
            c,
            "PodDisruptionBudgets",
            Pages::json(),
            pdb_info
        ),
        list_slim::<Deployment, wire::Workload, _>(c, "deployments", Pages::json(), |d| {
            let replicas = d.spec.replicas.unwrap_or(1);
            workload("Deployment", d.metadata, replicas)
        }),
        list_slim::<StatefulSet, wire::Workload, _>(c, "statefulsets", Pages::json(), |s| {
            let replicas = s.spec.replicas.unwrap_or(1);
            workload("StatefulSet", s.metadata, replicas)
        }),
        list_slim::<DaemonSet, wire::Workload, _>(c, "daemonsets", Pages::json(), |d| {
            // A DaemonSet has no replica count: how many nodes it should run on is its size.
            let replicas = d.status.desired_number_scheduled.unwrap_or(0);
            workload("DaemonSet", d.metadata, replicas)
        }),
        list_slim::<ReplicaSet, wire::Workload, _>(c, "replicasets", Pages::json(), |r| {
            let replicas = r.spec.replicas.unwrap_or(1);
            workload("ReplicaSet", r.metadata, replicas)
        }),
        list_slim::<Job, wire::Workload, _>(c, "jobs", Pages::json(), |j| {
            let replicas = j.spec.parallelism.unwrap_or(1);
            workload("Job", j.metadata, replicas)
        }),
        list_slim::<PersistentVolume, PersistentVolume, _>(c, "persistentvolumes", Pages::json(), pv_info),
    )?;

    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut scheduling = BTreeMap::new();
    let mut pod_infos = Vec::with_capacity(pods.len());
    for (pod, sched) in pods {
        scheduling.insert(pod.uid.clone(), sched);
        pod_infos.push(pod);
    }
    pod_infos.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pdbs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut workloads: Vec<WorkloadInfo> =
        [deployments, statefulsets, daemonsets, replicasets, jobs].into_iter().flatten().collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    pvs.sort_by(|a, b| a.name.cmp(&b.name));

    Ok(Snapshot { nodes, pods: pod_infos, scheduling, pdbs, workloads, pvs })
}

/// How one list's pages are asked for and decoded.
struct Pages<D> {
    /// The `Accept` header; `None` keeps the client's default (JSON).
    accept: Option<&'static str>,
    /// Decodes one page body, given its `Content-Type`, into its items, calling back with the
    /// continue token as soon as it has been read.
    decode: DecodePage<D>,
}

/// `(Content-Type, body, on_continue) → items`.
type DecodePage<D> = fn(Option<&str>, &[u8], &mut dyn FnMut(&str)) -> Result<Vec<D>, PageError>;

/// Why a page body could not be decoded.
#[derive(Debug, thiserror::Error)]
enum PageError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("protobuf: {0}")]
    Protobuf(#[from] protobuf::Error),
}

impl<D: DeserializeOwned> Pages<D> {
    /// JSON, whatever the `Content-Type` says (as kube reads every response).
    fn json() -> Self {
        Pages { accept: None, decode: |_, body, on_continue| json_page(body, on_continue) }
    }
}

impl<D: DeserializeOwned + protobuf::Item> Pages<D> {
    /// Protobuf (JSON accepted too, each page decoded by its `Content-Type`), or JSON only.
    fn preferred(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Json => Self::json(),
            Encoding::Protobuf => Pages {
                accept: Some(protobuf::ACCEPT),
                decode: |content_type, body, on_continue| {
                    if protobuf::is_protobuf(content_type) {
                        Ok(protobuf::list_page(body, on_continue)?)
                    } else {
                        json_page(body, on_continue)
                    }
                },
            },
        }
    }
}

/// One JSON page: the items as `D`, the continue token handed over when `metadata` is read.
fn json_page<D: DeserializeOwned>(
    body: &[u8],
    on_continue: &mut dyn FnMut(&str),
) -> Result<Vec<D>, PageError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let items = serde::de::DeserializeSeed::deserialize(
        PageSeed::<D, _> { on_continue, items: std::marker::PhantomData },
        &mut de,
    )?;
    de.end()?;
    Ok(items)
}

/// One page of pods decoded and projected exactly as [`read_snapshot`] does it, from a body
/// and `Content-Type` fetched by the caller (protobuf or JSON), with the page's continue
/// token: what tests use to check both decoders on the bytes of a real apiserver.
pub fn decode_pod_page(content_type: Option<&str>, body: &[u8]) -> Result<PodPage, Error> {
    let mut continue_token = None;
    let items = (Pages::<wire::Pod>::preferred(Encoding::Protobuf).decode)(content_type, body, &mut |t| {
        continue_token = Some(t.to_owned());
    })
    .map_err(|e| Error::Decode { context: "decoding a page of pods".into(), detail: e.to_string() })?;
    Ok(PodPage { pods: items.into_iter().map(pod_from_wire).collect(), continue_token })
}

/// A page of pods, from [`decode_pod_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPage {
    /// The pods in the page's order, with their scheduling constraints.
    pub pods: Vec<(PodInfo, Scheduling)>,
    /// The token of the next page; `None` on the last.
    pub continue_token: Option<String>,
}

/// A response body and its `Content-Type`.
struct Page {
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A large list: streamed in one request, or in pages.
async fn list_large<K, D, T>(
    client: &Client,
    what: &str,
    large: LargeLists,
    convert: impl FnMut(D) -> T,
) -> Result<Vec<T>, Error>
where
    K: kube::Resource<DynamicType = ()>,
    D: DeserializeOwned + protobuf::Item,
{
    match large {
        LargeLists::Paged(encoding) => {
            list_slim::<K, D, T>(client, what, Pages::preferred(encoding), convert).await
        }
        LargeLists::Streamed => {
            let mut convert = convert;
            match list_streamed::<K, D, T>(client, what, &mut convert).await? {
                Some(items) => Ok(items),
                // The server (or a proxy) answered JSON: pages of it, as every server serves.
                None => list_slim::<K, D, T>(client, what, Pages::json(), convert).await,
            }
        }
    }
}

/// Lists every object of resource `K` in ONE unpaginated protobuf request, decoding items as
/// the body arrives ([`protobuf::ListStream`]) and converting each at once. `Ok(None)` when the
/// server answered JSON instead (the body is not read).
async fn list_streamed<K, D, T>(
    client: &Client,
    what: &str,
    convert: &mut impl FnMut(D) -> T,
) -> Result<Option<Vec<T>>, Error>
where
    K: kube::Resource<DynamicType = ()>,
    D: protobuf::Item,
{
    use http_body_util::BodyExt;
    let api_error = |e: kube::Error| Error::Api { context: format!("listing {what}"), source: Box::new(e) };
    let mut request = kube::core::Request::new(K::url_path(&(), None))
        .list(&ListParams::default())
        .map_err(|e| api_error(kube::Error::BuildRequest(e)))?;
    request.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static(protobuf::ACCEPT));
    request.extensions_mut().insert("list");
    let response = client.send(request.map(kube::client::Body::from)).await.map_err(api_error)?;
    let code = response.status();
    let content_type =
        response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if code.is_client_error() || code.is_server_error() {
        let body = response.into_body().collect_bytes().await.map_err(api_error)?;
        return Err(api_error(error_status(code, content_type.as_deref(), &body)));
    }
    if !protobuf::is_protobuf(content_type.as_deref()) {
        return Ok(None);
    }
    let decode_error =
        |e: protobuf::Error| Error::Decode { context: format!("listing {what}"), detail: e.to_string() };
    let mut body = response.into_body();
    let mut stream = protobuf::ListStream::<D>::new();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| api_error(kube::Error::Service(Box::new(e))))?;
        if let Ok(data) = frame.into_data() {
            stream.feed(&data, &mut |item| out.push(convert(item))).map_err(decode_error)?;
        }
    }
    stream.finish().map_err(decode_error)?;
    Ok(Some(out))
}

/// Sends one list request and collects its body. An error answer becomes kube's `Status`
/// error, decoded from whichever encoding the apiserver answered in.
async fn fetch_page(client: Client, request: http::Request<Vec<u8>>) -> Result<Page, kube::Error> {
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let code = response.status();
    let content_type =
        response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = Vec::from(response.into_body().collect_bytes().await?);
    if !(code.is_client_error() || code.is_server_error()) {
        return Ok(Page { content_type, body });
    }
    Err(error_status(code, content_type.as_deref(), &body))
}

/// An error answer as kube's `Status` error, decoded from whichever encoding the apiserver
/// answered in: it negotiates errors like objects, so kube's own (JSON-only) error parsing
/// would see protobuf bytes.
fn error_status(code: http::StatusCode, content_type: Option<&str>, body: &[u8]) -> kube::Error {
    let decoded = if protobuf::is_protobuf(content_type) {
        protobuf::status(body).ok()
    } else {
        serde_json::from_slice::<kube::core::Status>(body).ok()
    };
    // Not every error is a Status (a proxy's HTML page, a plain-text 404): its text, as kube does.
    let mut status = decoded.unwrap_or_else(|| {
        kube::core::Status::failure(String::from_utf8_lossy(body).trim(), "Failed to parse error data")
    });
    if status.code == 0 {
        status.code = code.as_u16();
    }
    kube::Error::Api(Box::new(status))
}

/// Lists every object of resource `K` in all namespaces, page by page, decoding each item as
/// `D` (a slim [`wire`] type, or `K` itself when the objects are few) as `pages` says, and
/// converting each page before decoding the next.
///
/// Pages are pipelined: the apiserver writes a list's `metadata` (with the continue token)
/// before its items, so the request for the next page goes out as soon as the token is
/// parsed, and the apiserver encodes page N+1 while this side decodes page N. Without it the
/// two sides take turns, and a 60-page pod list pays both costs in full.
async fn list_slim<K, D, T>(
    client: &Client,
    what: &str,
    pages: Pages<D>,
    mut convert: impl FnMut(D) -> T,
) -> Result<Vec<T>, Error>
where
    K: kube::Resource<DynamicType = ()>,
{
    let request = kube::core::Request::new(K::url_path(&(), None));
    let params = ListParams::default().limit(PAGE_SIZE);
    let context = |page_no: usize| {
        if page_no == 0 {
            format!("listing {what}")
        } else {
            // A 410 here means the continue token expired (the list took longer than the
            // apiserver keeps its resourceVersion): a retry of the whole read fixes it.
            format!("listing {what} (page {} of {PAGE_SIZE})", page_no + 1)
        }
    };
    let fetch = |params: &ListParams| -> Result<PageFetch, kube::Error> {
        let mut req = request.list(params).map_err(kube::Error::BuildRequest)?;
        if let Some(accept) = pages.accept {
            req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
        }
        req.extensions_mut().insert("list");
        Ok(PageFetch(tokio::spawn(fetch_page(client.clone(), req))))
    };
    let mut out = Vec::new();
    let mut pending =
        Some(fetch(&params).map_err(|e| Error::Api { context: context(0), source: Box::new(e) })?);
    let mut page_no = 0usize;
    while let Some(mut task) = pending.take() {
        let api_error = |e: kube::Error| Error::Api { context: context(page_no), source: Box::new(e) };
        let page = (&mut task.0)
            .await
            .map_err(|e| api_error(kube::Error::Service(Box::new(e))))?
            .map_err(api_error)?;
        let mut next_error = None;
        let items = {
            let mut on_continue = |token: &str| match fetch(&params.clone().continue_token(token)) {
                Ok(next) => pending = Some(next),
                Err(e) => next_error = Some(e),
            };
            (pages.decode)(page.content_type.as_deref(), &page.body, &mut on_continue)
                .map_err(|e| Error::Decode { context: context(page_no), detail: e.to_string() })?
        };
        drop(page);
        if let Some(e) = next_error {
            return Err(Error::Api { context: context(page_no + 1), source: Box::new(e) });
        }
        out.extend(items.into_iter().map(&mut convert));
        page_no += 1;
    }
    Ok(out)
}

/// A page being fetched by its own task; dropping it (an earlier page failed) cancels it.
struct PageFetch(tokio::task::JoinHandle<Result<Page, kube::Error>>);

impl Drop for PageFetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decodes one JSON page of a list: its items as `D`, calling `on_continue` with the continue
/// token the moment `metadata` has been read (the API server writes it before the items).
struct PageSeed<'a, D, F: ?Sized> {
    on_continue: &'a mut F,
    items: std::marker::PhantomData<D>,
}

impl<'de, D: serde::Deserialize<'de>, F: FnMut(&str) + ?Sized> serde::de::DeserializeSeed<'de>
    for PageSeed<'_, D, F>
{
    type Value = Vec<D>;

    fn deserialize<De: serde::Deserializer<'de>>(self, deserializer: De) -> Result<Vec<D>, De::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, D: serde::Deserialize<'de>, F: FnMut(&str) + ?Sized> serde::de::Visitor<'de>
    for PageSeed<'_, D, F>
{
    type Value = Vec<D>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Kubernetes list")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<D>, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "metadata" => {
                    let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta = map.next_value()?;
                    if let Some(token) = meta.continue_.as_deref().filter(|t| !t.is_empty()) {
                        (self.on_continue)(token);
                    }
                }
                "items" => items = map.next_value::<Option<Vec<D>>>()?.unwrap_or_default(),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(items)
    }
}

/// Lists the full k8s-openapi objects of `api` with the caller's selectors, page by page (the
/// drain's reads: few objects), also returning the list's resourceVersion (every page of a
/// paginated list is served at the first page's), from which a watch can start without
/// missing a change.
pub(crate) async fn list_paged<K, T>(
    api: &Api<K>,
    params: ListParams,
    what: &str,
    mut convert: impl FnMut(K) -> T,
) -> Result<(Vec<T>, String), Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE_SIZE);
    let mut page_no = 0usize;
    loop {
        let page = api.list(&params).await.map_err(|e| Error::Api {
            context: if page_no == 0 {
                format!("listing {what}")
            } else {
                // A 410 here means the continue token expired (the list took longer than the
                // apiserver keeps its resourceVersion): a retry of the whole read fixes it.
                format!("listing {what} (page {} of {PAGE_SIZE})", page_no + 1)
            },
            source: Box::new(e),
        })?;
        let next = page.metadata.continue_.filter(|t| !t.is_empty());
        let version = page.metadata.resource_version.unwrap_or_default();
        out.extend(page.items.into_iter().map(&mut convert));
        match next {
            Some(token) => {
                params = params.continue_token(&token);
                page_no += 1;
            }
            None => return Ok((out, version)),
        }
    }
}

/// The slim shapes objects are decoded into: only the fields the snapshot reads, everything
/// else skipped by serde as it parses. Field names follow the API's JSON; every field is
/// optional (`default`), as the API server omits empty ones.
///
/// The full k8s-openapi objects the drain reads (from its list and its watch) are projected
/// onto the same shapes (the `From` impls), so that both paths share one conversion.
pub(crate) mod wire {
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
}

fn node_info(n: wire::Node) -> NodeInfo {
    let ready = n.status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let pressure = n
        .status
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready" && c.status == "True")
        .map(|c| c.type_.clone())
        .collect();
    let address = n.status.addresses.into_iter().find(|a| a.type_ == "InternalIP").map(|a| a.address);
    let allocatable = n.status.allocatable;
    NodeInfo {
        name: n.metadata.name.unwrap_or_default(),
        labels: n.metadata.labels.unwrap_or_default(),
        annotations: n.metadata.annotations.unwrap_or_default(),
        taints: n
            .spec
            .taints
            .into_iter()
            .map(|t| Taint { key: t.key, value: t.value.unwrap_or_default(), effect: t.effect })
            .collect(),
        unschedulable: n.spec.unschedulable.unwrap_or(false),
        ready,
        pressure,
        kubelet: n.status.node_info.map(|i| i.kubelet_version).unwrap_or_default(),
        address,
        allocatable: Resources {
            cpu_millis: allocatable.get("cpu").map_or(0, |q| cpu(q, "node allocatable")),
            memory_bytes: allocatable.get("memory").map_or(0, |q| count(q, "node allocatable")),
            pods: allocatable.get("pods").map_or(0, |q| count(q, "node allocatable")),
        },
    }
}

/// CPU millicores of a quantity the apiserver already validated; an unparseable one (it
/// cannot happen short of a broken apiserver) counts as zero, with a warning, rather than
/// failing the whole snapshot.
fn cpu(q: &Quantity, what: &str) -> i64 {
    quantity::cpu_millis(&q.0).unwrap_or_else(|e| {
        tracing::warn!("{what}: {e}; counted as 0");
        0
    })
}

/// Bytes (or a plain count, such as pod slots) of a quantity; see [`cpu`] for the fallback.
fn count(q: &Quantity, what: &str) -> i64 {
    quantity::bytes(&q.0).unwrap_or_else(|e| {
        tracing::warn!("{what}: {e}; counted as 0");
        0
    })
}

/// The controller ownerReference (there is at most one), as an [`Owner`].
fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<Owner> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner { kind: r.kind.clone(), name: r.name.clone() })
}

/// A pod as plain data (shared with the drain, which decides with core's rules).
pub(crate) fn pod_info(p: Pod) -> (PodInfo, Scheduling) {
    pod_from_wire(p.into())
}

/// A decoded pod as plain data.
fn pod_from_wire(p: wire::Pod) -> (PodInfo, Scheduling) {
    let wire::Pod { metadata: meta, spec, status } = p;
    let phase = match status.phase.as_deref() {
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        Some("Unknown") => Phase::Unknown,
        // The apiserver sets Pending on create; a pod without a phase has not started.
        Some("Pending") | None => Phase::Pending,
        Some(_) => Phase::Unknown,
    };
    let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let key = format!(
        "pod {}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    let scheduling = Scheduling {
        requests: pod_requests(&spec, &key),
        node_selector: spec.node_selector,
        tolerations: spec
            .tolerations
            .into_iter()
            .map(|t| Toleration {
                key: t.key.unwrap_or_default(),
                operator: t.operator.unwrap_or_else(|| "Equal".into()),
                value: t.value.unwrap_or_default(),
                effect: t.effect.unwrap_or_default(),
            })
            .collect(),
        required_node_terms: required_node_terms(spec.affinity),
        spread: spread(spec.topology_spread_constraints),
    };
    let volumes = spec
        .volumes
        .into_iter()
        .map(|v| {
            let name = v.name;
            if v.empty_dir.is_some() {
                Volume::EmptyDir { name }
            } else if let Some(h) = v.host_path {
                Volume::HostPath { name, path: h.path }
            } else if let Some(c) = v.persistent_volume_claim {
                Volume::Claim { name, claim: c.claim_name }
            } else {
                Volume::Other { name }
            }
        })
        .collect();
    let info = PodInfo {
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        uid: meta.uid.unwrap_or_default(),
        node: spec.node_name.filter(|n| !n.is_empty()),
        owner: controller(meta.owner_references.as_ref()),
        phase,
        ready,
        mirror: meta.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
        terminating: meta.deletion_timestamp.is_some(),
        labels: meta.labels.unwrap_or_default(),
        volumes,
    };
    (info, scheduling)
}

/// Requests of one container (cpu, memory; pod slots are counted once per pod, not here).
fn container_requests(r: Option<&ResourceRequirements>, key: &str) -> Resources {
    let Some(requests) = r.and_then(|r| r.requests.as_ref()) else {
        return Resources::default();
    };
    Resources {
        cpu_millis: requests.get("cpu").map_or(0, |q| cpu(q, key)),
        memory_bytes: requests.get("memory").map_or(0, |q| count(q, key)),
        pods: 0,
    }
}

/// What the scheduler reserves for a pod: the spec's requests read here, combined by core's
/// rule (`PodRequests::effective`).
fn pod_requests(spec: &wire::PodSpec, key: &str) -> Resources {
    let pod_level = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    PodRequests {
        containers: spec.containers.iter().map(|c| container_requests(c.resources.as_ref(), key)).collect(),
        init_containers: spec
            .init_containers
            .iter()
            .map(|c| {
                (container_requests(c.resources.as_ref(), key), c.restart_policy.as_deref() == Some("Always"))
            })
            .collect(),
        pod_cpu_millis: pod_level.and_then(|r| r.get("cpu")).map(|q| cpu(q, key)),
        pod_memory_bytes: pod_level.and_then(|r| r.get("memory")).map(|q| count(q, key)),
        overhead: spec.overhead.as_ref().map_or(Resources::default(), |o| Resources {
            cpu_millis: o.get("cpu").map_or(0, |q| cpu(q, key)),
            memory_bytes: o.get("memory").map_or(0, |q| count(q, key)),
            pods: 0,
        }),
    }
    .effective()
}

fn requirement(r: &NodeSelectorRequirement) -> Requirement {
    Requirement {
        key: r.key.clone(),
        operator: r.operator.clone(),
        values: r.values.clone().unwrap_or_default(),
    }
}

/// `requiredDuringSchedulingIgnoredDuringExecution` terms as label requirements.
///
/// `matchFields` are not represented: the only field selectable is `metadata.name`, which the
/// DaemonSet controller uses to pin each of its pods to one node, and drains never move
/// DaemonSet pods. A term made only of `matchFields` therefore comes out empty.
fn required_node_terms(affinity: Option<wire::Affinity>) -> Vec<Vec<Requirement>> {
    let Some(required) = affinity
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
    else {
        return Vec::new();
    };
    required
        .node_selector_terms
        .iter()
        .map(|t| t.match_expressions.as_deref().unwrap_or_default().iter().map(requirement).collect())
        .collect()
}

/// The hard (`DoNotSchedule`) topology spread constraints; `ScheduleAnyway` ones only weigh
/// the scheduler's choice. A missing labelSelector counts no pod, as the scheduler's does.
fn spread(constraints: Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>) -> Vec<Spread> {
    constraints
        .into_iter()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
        .map(|c| Spread {
            max_skew: u32::try_from(c.max_skew).unwrap_or(1).max(1),
            topology_key: c.topology_key,
            selector: selector(c.label_selector),
        })
        .collect()
}

/// A policy/v1 selector; a missing one selects nothing (`Selector::nothing`).
fn selector(s: Option<LabelSelector>) -> Selector {
    let Some(s) = s else {
        return Selector::nothing();
    };
    Selector {
        match_labels: s.match_labels.unwrap_or_default(),
        match_expressions: s
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .map(|r| Requirement { key: r.key, operator: r.operator, values: r.values.unwrap_or_default() })
            .collect(),
    }
}

/// A budget as plain data (shared with the drain, which names the budget blocking a pod).
pub fn pdb_info(p: PodDisruptionBudget) -> PdbInfo {
    let spec = p.spec.unwrap_or_default();
    // Before the disruption controller has looked at a budget there is no status: zeros, which
    // the checks read as "allows nothing yet" (what the eviction API would answer too).
    let status = p.status.unwrap_or_default();
    PdbInfo {
        namespace: p.metadata.namespace.unwrap_or_default(),
        name: p.metadata.name.unwrap_or_default(),
        always_allow_unhealthy: spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow"),
        selector: selector(spec.selector),
        disruptions_allowed: status.disruptions_allowed.unwrap_or(0),
        current_healthy: status.current_healthy.unwrap_or(0),
        desired_healthy: status.desired_healthy.unwrap_or(0),
        expected_pods: status.expected_pods.unwrap_or(0),
    }
}

/// A workload with its controller owner (a ReplicaSet's Deployment, a Job's CronJob), so that
/// pods can be reported under the name people deployed.
fn workload(kind: &str, meta: wire::Meta, replicas: i32) -> WorkloadInfo {
    WorkloadInfo {
        kind: kind.to_string(),
        owner: controller(meta.owner_references.as_ref()),
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        replicas,
    }
}

fn pv_info(pv: PersistentVolume) -> PvInfo {
    let spec = pv.spec.unwrap_or_default();
    PvInfo {
        name: pv.metadata.name.unwrap_or_default(),
        claim: spec.claim_ref.as_ref().and_then(|c| {
            Some(format!("{}/{}", c.namespace.as_deref().unwrap_or_default(), c.name.as_deref()?))
        }),
        node_local: spec.local.is_some() || spec.host_path.is_some(),
    }
}
