//! Draining one node: kubectl drain's decisions (`refit_core::drain`), a faster and more
//! careful execution (reference cluster-anchors §1 describes kubectl's).
//!
//! What changes compared with `kubectl drain`, and why:
//! - **Bounded concurrency.** kubectl starts one goroutine per pod; here at most
//!   [`DrainConfig::concurrency`] eviction requests are in flight, so a 110-pod node does not
//!   hit the apiserver with 110 simultaneous POSTs.
//! - **No hidden retries.** The client never retries a 429 by itself (see `connect`): a PDB
//!   refusal comes back at once and is reported ([`DrainEvent::Blocked`]) with the budget's
//!   name and the apiserver's words.
//! - **Woken by the budget, not by a clock.** kubectl sleeps 5 s after each refusal. Here a
//!   refused pod waits for a change of its PodDisruptionBudget, seen through a watch on PDBs
//!   (started on the first refusal, so drains nothing blocks pay nothing for it), with an
//!   exponential timer capped at [`DrainConfig::max_backoff`] as the safety net. When a
//!   budget allows `n` more disruptions, only `n` of the pods waiting on it try again (the
//!   others would only collect another 429), so a budget that allows one pod at a time costs
//!   about one request per pod rather than one per pod per change.
//! - **Pods are tracked by UID.** Every eviction carries a UID precondition and deletion is
//!   awaited through a watch on the node's pods (a DELETED event for that UID, or the name
//!   reappearing with another UID), never by polling and never by name: a StatefulSet pod
//!   recreated under the same name elsewhere is not chased (kubernetes/kubernetes#138229).
//! - **A deadline, with a report.** The whole drain is bounded by [`DrainConfig::timeout`];
//!   on expiry it returns `Ok` with every pod still there, its budget and the last reason.
//!
//! Like kubectl, a drain evicts nothing when any pod is refused (no controller, emptyDir
//! without the allowance): the report names those pods. The caller cordons the node first
//! (`cordon::cordon`); pods that arrive after the listing are not evicted.

//!
//! Modules: this one (the drain's types and its run), [`evict`] (one pod's eviction and the
//! answer's classification), [`watches`] (the two watches), [`tracker`] (pods awaited by UID),
//! [`budgets`] (PDBs as last seen, who may retry).

mod budgets;
mod evict;
mod tracker;
mod watches;

use budgets::*;
use evict::*;
use tracker::*;
use watches::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use refit_core::drain::{DrainOptions, Mode, Skip, Task, node_work};
use refit_core::pdb::{self, PdbInfo};
use refit_core::snapshot::PodInfo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{OnceCell, Semaphore, watch};
use tokio::time::Instant;

use crate::Error;
use crate::connect::Connection;
use crate::snapshot::{list_paged, pdb_info, pod_info};

/// Server-side timeout of each watch request. Below the client's read timeout
/// (`connect::READ_TIMEOUT`, 30 s), so a quiet watch is closed cleanly by the apiserver and
/// resumed from its last resourceVersion instead of failing on the client's timer.
const WATCH_SECONDS: u32 = 25;
/// Smallest retry delay, whatever the configuration says: a zero delay would spin.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// A "no limit" drain still needs an instant to wait for.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How to drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// kubectl's allowances (`--delete-emptydir-data`, `--force`).
    pub rules: DrainOptions,
    /// Bound for the whole drain (listing, evictions, waiting for pods to go). Zero means no
    /// limit, as kubectl's `--timeout=0`.
    pub timeout: Duration,
    /// Eviction (or delete) requests in flight at once; 0 is taken as 1.
    pub concurrency: usize,
    /// Grace period sent with each eviction; `None` (or negative, kubectl's -1) keeps each
    /// pod's own `terminationGracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// Longest wait between two attempts at a refused pod when no budget change wakes it.
    pub max_backoff: Duration,
    /// First wait after a refusal; doubled on each further refusal up to `max_backoff`.
    pub initial_backoff: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            rules: DrainOptions::default(),
            timeout: Duration::from_secs(600),
            concurrency: 16,
            grace_period_seconds: None,
            max_backoff: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(500),
        }
    }
}

/// One pod, by identity: the UID tells a pod from a successor with the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
}

impl PodRef {
    fn of(p: &PodInfo) -> PodRef {
        PodRef { namespace: p.namespace.clone(), name: p.name.clone(), uid: p.uid.clone() }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What happens to each pod, as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum DrainEvent {
    /// The Eviction API accepted the eviction: the pod is terminating.
    Evicting(PodRef),
    /// An evicted pod is gone (its DELETED event, or its name reused by another UID).
    Evicted(PodRef),
    /// The pod cannot be evicted now (reported when it becomes blocked, and again only if
    /// the blocking budget changes); the drain keeps trying until its deadline.
    Blocked {
        /// The pod.
        pod: PodRef,
        /// The budget(s) refusing it, `namespace/name` (several joined by ", ").
        pdb: Option<String>,
        /// The apiserver's reason.
        reason: String,
    },
    /// The pod disappeared without an eviction of ours (deleted by someone else, or it was
    /// already terminating when the drain started).
    Gone(PodRef),
    /// The drain will not evict this pod (kubectl's rules); nothing is evicted.
    Refused {
        /// The pod.
        pod: PodRef,
        /// Why (kubectl's words).
        reason: String,
        /// The allowance that would change that.
        remedy: refit_core::remedy::Remedy,
    },
    /// [`force_delete_remaining`] deleted the pod and it is gone.
    Deleted(PodRef),
}

/// A pod still on the node when the drain ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    /// The pod.
    pub pod: PodRef,
    /// The budget(s) blocking it, `namespace/name`.
    pub pdb: Option<String>,
    /// The last reason (the apiserver's refusal, "terminating", a refusal by the rules).
    pub reason: String,
    /// The allowance that would let the drain take it, for a refusal by the rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<refit_core::remedy::Remedy>,
}

/// How a drain ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Pods evicted and confirmed gone.
    pub evicted: Vec<PodRef>,
    /// Pods deleted (force) and confirmed gone.
    pub deleted: Vec<PodRef>,
    /// Pods that went away without our eviction (already terminating, deleted by others).
    pub gone: Vec<PodRef>,
    /// Pods left alone by the rules (DaemonSet, mirror) or awaited (terminating).
    pub skipped: Vec<(PodRef, Skip)>,
    /// Pods still on the node that the drain had to remove, with the reason.
    pub remaining: Vec<Blocker>,
    /// Every pod that had to go is gone.
    pub complete: bool,
    /// The drain stopped at its deadline (`remaining` says what was left).
    pub timed_out: bool,
    /// Wall time of the whole call.
    pub elapsed: Duration,
}

/// Evicts every pod of `node` that kubectl's rules allow, through the Eviction API, and waits
/// until they are gone, within `cfg.timeout`. `Err` only when the node or its pods cannot be
/// read at all; refusals, budgets and timeouts are in the report.
pub async fn drain(
    conn: &Connection,
    node: &str,
    cfg: &DrainConfig,
    on_event: &(dyn Fn(DrainEvent) + Send + Sync),
) -> Result<DrainReport, Error> {
    run(conn, node, cfg, on_event, Mode::Evict).await
}

/// `--on-undrainable force`: DELETEs whatever is still on the node, bypassing PDBs, refused
/// pods included, and waits until it is gone. DaemonSet pods and mirror pods stay (their
/// controller or kubelet would put them straight back); pods already terminating are awaited.
pub async fn force_delete_remaining(
    conn: &Connection,
    node: &str,
    cfg: &DrainConfig,
    on_event: &(dyn Fn(DrainEvent) + Send + Sync),
) -> Result<DrainReport, Error> {
    run(conn, node, cfg, on_event, Mode::Delete).await
}

struct Work {
    pod: PodRef,
    labels: BTreeMap<String, String>,
    task: Task,
    /// Whether the budget gate applies (`PodInfo::consumes_disruption`).
    gated: bool,
}

enum Outcome {
    Evicted,
    Deleted,
    Gone,
    Remaining(Blocker),
    TimedOut(Blocker),
}

/// Where a pod stands, for the report if the deadline strikes.
struct Standing {
    pdb: Option<String>,
    reason: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set(standing: &Mutex<Standing>, pdb: Option<String>, reason: impl Into<String>) {
    let mut s = lock(standing);
    s.pdb = pdb;
    s.reason = reason.into();
}

async fn run(
    conn: &Connection,
    node: &str,
    cfg: &DrainConfig,
    on_event: &(dyn Fn(DrainEvent) + Send + Sync),
    mode: Mode,
) -> Result<DrainReport, Error> {
    let start = Instant::now();
    let limit = if cfg.timeout.is_zero() { FOREVER } else { cfg.timeout };
    let deadline = start.checked_add(limit.min(FOREVER)).unwrap_or(start);
    let client = conn.client.clone();

    // A misspelt node must not look like an empty, drained one.
    let nodes = Api::<Node>::all(client.clone());
    match crate::retry::retrying("reading a node", || nodes.get_metadata(node)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(Error::NodeNotFound { node: node.to_string() });
        }
        Err(e) => return Err(Error::Api { context: format!("reading node {node}"), source: Box::new(e) }),
    }
    let pods_api: Api<Pod> = Api::all(client.clone());
    let fields = format!("spec.nodeName={node}");
    let what = format!("pods on node {node}");
    let (pods, _version) = crate::retry::retrying_listed(&what, || {
        list_paged(&pods_api, ListParams::default().fields(&fields), &what, |p| pod_info(p).0)
    })
    .await?;

    let mut report = DrainReport::default();
    let sorted = node_work(&pods, cfg.rules, mode);
    for w in &sorted.warnings {
        tracing::warn!("{w}");
    }
    report.skipped = sorted.skipped.iter().map(|(p, why)| (PodRef::of(p), *why)).collect();
    let refused = sorted.refused;
    let work: Vec<Work> = sorted
        .work
        .into_iter()
        .map(|(p, task)| Work {
            pod: PodRef::of(p),
            labels: p.labels.clone(),
            task,
            gated: p.consumes_disruption(),
        })
        .collect();

    if !refused.is_empty() {
        // kubectl's rule: a node with a pod that must not be evicted is not touched at all.
        for (pod, reason) in refused {
            let pod = PodRef::of(pod);
            let remedy = reason.remedy();
            let reason = reason.advice().to_string();
            on_event(DrainEvent::Refused {
                pod: pod.clone(),
                reason: reason.clone(),
                remedy: remedy.clone(),
            });
            report.remaining.push(Blocker { pod, pdb: None, reason, remedy: Some(remedy) });
        }
        return Ok(finish(report, start));
    }
    if work.is_empty() {
        return Ok(finish(report, start));
    }

    let tracker = Arc::new(Tracker::new(work.iter().map(|w| &w.pod)));
    // The watch's own first list shows every pod deleted since ours as absent: none is missed.
    let _pod_watch = AbortOnDrop(tokio::spawn(watch_forever(pods_api, Some(fields), tracker.clone())));
    let ctx = Ctx {
        client,
        cfg,
        on_event,
        deadline,
        // Bounded: a semaphore panics past its maximum, and a node never needs more.
        permits: Semaphore::new(cfg.concurrency.clamp(1, refit_core::drain::MAX_EVICTION_CONCURRENCY)),
        tracker,
        pdbs: OnceCell::new(),
        tasks: Mutex::new(Vec::new()),
    };
    let mut running: FuturesUnordered<_> = work.iter().map(|w| ctx.settle(w)).collect();
    while let Some((pod, outcome)) = running.next().await {
        match outcome {
            Outcome::Evicted => report.evicted.push(pod),
            Outcome::Deleted => report.deleted.push(pod),
            Outcome::Gone => report.gone.push(pod),
            Outcome::Remaining(b) => report.remaining.push(b),
            Outcome::TimedOut(b) => {
                report.timed_out = true;
                report.remaining.push(b);
            }
        }
    }
    drop(running);
    Ok(finish(report, start))
}

fn finish(mut report: DrainReport, start: Instant) -> DrainReport {
    report.evicted.sort();
    report.deleted.sort();
    report.gone.sort();
    report.skipped.sort_by(|a, b| a.0.cmp(&b.0));
    report.remaining.sort_by(|a, b| a.pod.cmp(&b.pod));
    report.complete = report.remaining.is_empty();
    report.elapsed = start.elapsed();
    report
}

#[cfg(test)]
mod tests;
