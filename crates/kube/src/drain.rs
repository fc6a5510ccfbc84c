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
    match Api::<Node>::all(client.clone()).get_metadata(node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(Error::NodeNotFound { node: node.to_string() });
        }
        Err(e) => return Err(Error::Api { context: format!("reading node {node}"), source: Box::new(e) }),
    }
    let pods_api: Api<Pod> = Api::all(client.clone());
    let fields = format!("spec.nodeName={node}");
    let (pods, _version) =
        list_paged(&pods_api, ListParams::default().fields(&fields), &format!("pods on node {node}"), |p| {
            pod_info(p).0
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

/// Everything the per-pod futures share. They all run inside the caller's task (the event
/// callback is borrowed, not `'static`); only the two watches are spawned.
struct Ctx<'a> {
    client: Client,
    cfg: &'a DrainConfig,
    on_event: &'a (dyn Fn(DrainEvent) + Send + Sync),
    deadline: Instant,
    permits: Semaphore,
    tracker: Arc<Tracker>,
    /// Started on the first budget refusal; `None` inside when PDBs cannot be listed (then
    /// blocked pods are retried on the timer only).
    pdbs: OnceCell<Option<Arc<PdbCache>>>,
    tasks: Mutex<Vec<AbortOnDrop>>,
}

/// Why a pod's wait ended.
enum Woken {
    /// Its timer: try regardless of what the budget cache says.
    Timer,
    /// A change (budget status, the pod's own disappearance).
    Change,
}

impl Ctx<'_> {
    fn emit(&self, e: DrainEvent) {
        tracing::debug!(?e, "drain");
        (self.on_event)(e);
    }

    /// Runs one pod to its end, or to the deadline.
    async fn settle(&self, w: &Work) -> (PodRef, Outcome) {
        let standing = Mutex::new(Standing { pdb: None, reason: "not evicted yet".into() });
        let outcome = tokio::select! {
            o = self.work(w, &standing) => o,
            _ = tokio::time::sleep_until(self.deadline) => {
                let s = lock(&standing);
                Outcome::TimedOut(Blocker { pod: w.pod.clone(), pdb: s.pdb.clone(), reason: s.reason.clone(), remedy: None })
            }
        };
        (w.pod.clone(), outcome)
    }

    async fn work(&self, w: &Work, standing: &Mutex<Standing>) -> Outcome {
        match w.task {
            Task::Await => {
                set(standing, None, "terminating since before the drain; waiting for it to go");
                self.wait_gone(&w.pod.uid).await;
                self.emit(DrainEvent::Gone(w.pod.clone()));
                Outcome::Gone
            }
            Task::Evict => self.evict(w, standing).await,
            Task::Delete => self.delete(w, standing).await,
        }
    }

    async fn evict(&self, w: &Work, standing: &Mutex<Standing>) -> Outcome {
        let pod = &w.pod;
        let mut backoff = Backoff::new(self.cfg.initial_backoff, self.cfg.max_backoff, &pod.uid);
        // The budget reported in the last Blocked event: report again only when it changes.
        let mut reported: Option<Option<String>> = None;
        let mut forced = false;
        loop {
            if self.tracker.is_gone(&pod.uid) {
                self.emit(DrainEvent::Gone(pod.clone()));
                return Outcome::Gone;
            }
            let permit = self.permits.acquire().await.ok();
            let cache = self.pdbs.get().and_then(|c| c.as_ref());
            // The gate is checked while holding a permit, i.e. just before the request would
            // go out: pods queued behind the first wave see the budget the wave learnt about.
            if let (Some(cache), false, true) = (cache, forced, w.gated)
                && let Gate::Closed { pdb, reason, seen } = cache.gate(&pod.namespace, &w.labels)
            {
                drop(permit);
                set(standing, Some(pdb.clone()), reason.clone());
                self.report_blocked(pod, Some(pdb), reason, &mut reported);
                forced = matches!(self.wait(w, Some(cache), &seen, backoff.next()).await, Woken::Timer);
                continue;
            }
            let seen = cache.map(|c| c.fingerprint(&pod.namespace, &w.labels)).unwrap_or_default();
            let answer = classify(
                &pod.namespace,
                post_eviction(&self.client, pod, self.cfg.grace_period_seconds).await,
            );
            drop(permit);
            match answer {
                Answer::Accepted => {
                    set(standing, None, "evicted; waiting for the pod to terminate");
                    self.emit(DrainEvent::Evicting(pod.clone()));
                    self.wait_gone(&pod.uid).await;
                    self.emit(DrainEvent::Evicted(pod.clone()));
                    return Outcome::Evicted;
                }
                Answer::Gone => {
                    // 404, or the UID precondition failed: the pod we listed no longer exists.
                    self.emit(DrainEvent::Gone(pod.clone()));
                    return Outcome::Gone;
                }
                Answer::Budget { reason, named } => {
                    let cache = self.pdb_cache().await;
                    let pdb = cache.and_then(|c| c.names(&pod.namespace, &w.labels)).or(named);
                    set(standing, pdb.clone(), reason.clone());
                    self.report_blocked(pod, pdb, reason, &mut reported);
                    forced = matches!(self.wait(w, cache, &seen, backoff.next()).await, Woken::Timer);
                }
                Answer::Retry { reason } => {
                    tracing::debug!("evicting {pod}: {reason}; retrying");
                    set(standing, None, reason);
                    forced = matches!(self.wait(w, None, &seen, backoff.next()).await, Woken::Timer);
                }
                Answer::Fatal { reason } => {
                    self.report_blocked(pod, None, reason.clone(), &mut reported);
                    return Outcome::Remaining(Blocker { pod: pod.clone(), pdb: None, reason, remedy: None });
                }
            }
        }
    }

    async fn delete(&self, w: &Work, standing: &Mutex<Standing>) -> Outcome {
        let pod = &w.pod;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let params = DeleteParams {
            grace_period_seconds: grace(self.cfg.grace_period_seconds).and_then(|g| u32::try_from(g).ok()),
            preconditions: Some(Preconditions { uid: Some(pod.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        let mut backoff = Backoff::new(self.cfg.initial_backoff, self.cfg.max_backoff, &pod.uid);
        let mut reported = None;
        loop {
            if self.tracker.is_gone(&pod.uid) {
                self.emit(DrainEvent::Gone(pod.clone()));
                return Outcome::Gone;
            }
            let permit = self.permits.acquire().await.ok();
            let answer = classify(&pod.namespace, api.delete(&pod.name, &params).await.map(|_| ()));
            drop(permit);
            match answer {
                Answer::Accepted => {
                    set(standing, None, "deleted; waiting for the pod to terminate");
                    self.wait_gone(&pod.uid).await;
                    self.emit(DrainEvent::Deleted(pod.clone()));
                    return Outcome::Deleted;
                }
                Answer::Gone => {
                    self.emit(DrainEvent::Gone(pod.clone()));
                    return Outcome::Gone;
                }
                Answer::Budget { reason, .. } | Answer::Retry { reason } => {
                    set(standing, None, reason);
                    self.wait(w, None, &[], backoff.next()).await;
                }
                Answer::Fatal { reason } => {
                    self.report_blocked(pod, None, reason.clone(), &mut reported);
                    return Outcome::Remaining(Blocker { pod: pod.clone(), pdb: None, reason, remedy: None });
                }
            }
        }
    }

    fn report_blocked(
        &self,
        pod: &PodRef,
        pdb: Option<String>,
        reason: String,
        reported: &mut Option<Option<String>>,
    ) {
        if reported.as_ref() != Some(&pdb) {
            *reported = Some(pdb.clone());
            self.emit(DrainEvent::Blocked { pod: pod.clone(), pdb, reason });
        }
    }

    /// The PDB cache, listing PDBs and starting their watch on first use.
    async fn pdb_cache(&self) -> Option<&Arc<PdbCache>> {
        self.pdbs
            .get_or_init(|| async {
                let api: Api<PodDisruptionBudget> = Api::all(self.client.clone());
                match list_paged(&api, ListParams::default(), "PodDisruptionBudgets", |p| p).await {
                    Ok((items, _version)) => {
                        let cache = Arc::new(PdbCache::new(items));
                        let task = tokio::spawn(watch_forever(api, None, cache.clone()));
                        lock(&self.tasks).push(AbortOnDrop(task));
                        Some(cache)
                    }
                    Err(e) => {
                        tracing::warn!("{e}; pods refused by a budget are retried on a timer only");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    /// Waits until the pod is gone, its budgets change from `seen`, or `delay` passes.
    async fn wait(
        &self,
        w: &Work,
        cache: Option<&Arc<PdbCache>>,
        seen: &[(String, u64)],
        delay: Duration,
    ) -> Woken {
        let timer = tokio::time::sleep(delay);
        tokio::pin!(timer);
        // Subscribing before looking: a change after the look wakes `changed()`.
        let mut gone_rx = self.tracker.subscribe();
        let mut pdb_rx = cache.map(|c| c.subscribe());
        loop {
            if self.tracker.is_gone(&w.pod.uid) {
                return Woken::Change;
            }
            if let Some(c) = cache
                && c.fingerprint(&w.pod.namespace, &w.labels) != seen
            {
                return Woken::Change;
            }
            let budget_changed = async {
                match pdb_rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut timer => return Woken::Timer,
                r = gone_rx.changed() => if r.is_err() { (&mut timer).await; return Woken::Timer },
                ok = budget_changed => if !ok { (&mut timer).await; return Woken::Timer },
            }
        }
    }

    async fn wait_gone(&self, uid: &str) {
        let mut rx = self.tracker.subscribe();
        while !self.tracker.is_gone(uid) {
            if rx.changed().await.is_err() {
                // The tracker outlives every pod future; if it ever did not, the deadline ends this.
                std::future::pending::<()>().await;
            }
        }
    }
}

fn grace(g: Option<i64>) -> Option<i64> {
    g.filter(|g| *g >= 0)
}

/// POSTs a policy/v1 Eviction for exactly this pod (UID precondition).
///
/// Built by hand because kube's `Api::evict` sends its delete options under `delete_options`
/// (kube-core 5.0 `subresource.rs`), a key the apiserver ignores, so neither a grace period
/// nor a precondition would reach it.
async fn post_eviction(client: &Client, pod: &PodRef, grace_period: Option<i64>) -> Result<(), kube::Error> {
    let mut delete_options = json!({"preconditions": {"uid": pod.uid}});
    if let Some(g) = grace(grace_period) {
        delete_options["gracePeriodSeconds"] = json!(g);
    }
    let body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
        "deleteOptions": delete_options,
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{}/pods/{}/eviction", pod.namespace, pod.name))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
        .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(|_| ())
}

/// What an eviction (or delete) answer means for the drain.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Accepted,
    Gone,
    /// Refused by a budget (or by several): wait for a budget change.
    Budget {
        reason: String,
        named: Option<String>,
    },
    /// Worth another try after a pause: throttling, conflicts, a terminating namespace,
    /// a server or network error.
    Retry {
        reason: String,
    },
    /// Retrying cannot help (forbidden, invalid).
    Fatal {
        reason: String,
    },
}

fn classify(namespace: &str, result: Result<(), kube::Error>) -> Answer {
    let s = match result {
        Ok(()) => return Answer::Accepted,
        Err(kube::Error::Api(s)) => s,
        Err(e) => return Answer::Retry { reason: e.to_string() },
    };
    let causes = s.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default();
    let budget_cause = causes.iter().find(|c| c.reason == "DisruptionBudget");
    let pdb_detail = s.details.as_ref().filter(|d| d.kind == "poddisruptionbudget");
    match s.code {
        404 => Answer::Gone,
        // "Precondition failed: UID in precondition: ..., UID in object meta: ...".
        409 if s.message.to_ascii_lowercase().contains("precondition") => Answer::Gone,
        429 if budget_cause.is_some() || s.message.contains("disruption budget") => {
            let cause = budget_cause.map(|c| c.message.as_str()).unwrap_or_default();
            let reason = if cause.is_empty() { s.message.clone() } else { format!("{} {cause}", s.message) };
            let named = budget_name(cause).map(|n| format!("{namespace}/{n}"));
            Answer::Budget { reason, named }
        }
        // The eviction subresource refuses pods covered by several budgets with a 500; fixing
        // the budgets (a PDB change) is what unblocks it.
        500 if s.message.contains("more than one PodDisruptionBudget") => {
            Answer::Budget { reason: s.message.clone(), named: None }
        }
        // A budget with negative allowance, or too many evictions the disruption controller
        // has not confirmed yet: the budget's next status fixes it.
        403 if pdb_detail.is_some() => Answer::Budget {
            reason: s.message.clone(),
            named: pdb_detail.map(|d| format!("{namespace}/{}", d.name)),
        },
        // The namespace is being deleted: its pods go with it (kubectl also waits).
        403 if causes.iter().any(|c| c.reason == "NamespaceTerminating") => {
            Answer::Retry { reason: s.message.clone() }
        }
        400 | 401 | 403 | 405 | 422 => Answer::Fatal { reason: format!("{} ({})", s.message, s.code) },
        _ => Answer::Retry { reason: format!("{} ({})", s.message, s.code) },
    }
}

/// The budget's name in "The disruption budget NAME needs ..." / "... NAME is still being
/// processed by the server." (policy/v1 eviction causes).
fn budget_name(cause: &str) -> Option<&str> {
    cause.strip_prefix("The disruption budget ")?.split_whitespace().next()
}

/// Exponential delays (backon's) with per-pod jitter, so pods refused together do not all come
/// back in the same millisecond: a base doubling from the initial delay, plus a random part
/// below the base (seeded by the pod's UID). The base stops at half of `max`, so no delay is
/// ever longer than `max` and delays at the cap stay spread.
struct Backoff {
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration, uid: &str) -> Backoff {
        let max = max.max(MIN_BACKOFF.saturating_mul(2));
        let half = max / 2;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        uid.hash(&mut h);
        let delays = ExponentialBuilder::new()
            .with_min_delay(initial.clamp(MIN_BACKOFF, half))
            .with_max_delay(half)
            .with_factor(2.0)
            .with_jitter()
            .with_jitter_seed(h.finish())
            .without_max_times()
            .build();
        Backoff { delays, max }
    }

    fn next(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }
}

/// Aborts a spawned watch when the drain ends (however it ends, cancellation included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a watch feeds.
trait Sink<K>: Send + Sync + 'static {
    fn applied(&self, obj: K);
    fn deleted(&self, obj: K);
    /// A fresh list after the watch fell too far behind (410): deletions in between are
    /// only visible as absences.
    fn relisted(&self, objs: Vec<K>);
}

/// Feeds `sink` from a watch on `api` for as long as the drain runs: kube's `watcher`, which
/// resumes from the last resourceVersion it saw (bookmarks keep it fresh), re-lists when the
/// apiserver answers 410 Gone (handed to the sink as [`Sink::relisted`]: its first list too,
/// which shows anything deleted since the caller's own list as absent), and re-opens a failed
/// watch after a jittered exponential backoff.
async fn watch_forever<K, S>(api: Api<K>, fields: Option<String>, sink: Arc<S>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    S: Sink<K>,
{
    let mut config = watcher::Config::default().timeout(WATCH_SECONDS);
    if let Some(f) = &fields {
        config = config.fields(f);
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut listed = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(o)) => sink.applied(o),
            Ok(watcher::Event::Delete(o)) => sink.deleted(o),
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(o)) => listed.push(o),
            Ok(watcher::Event::InitDone) => sink.relisted(std::mem::take(&mut listed)),
            // The backoff re-opens the watch; the drain's deadline bounds the whole wait.
            Err(e) => tracing::debug!("watch interrupted: {e}"),
        }
    }
}

/// The pods the drain waits for, and which of them are gone, fed by the watch on the node.
struct Tracker {
    state: Mutex<Tracked>,
    /// Bumped on every change; waiters re-check on each bump.
    tx: watch::Sender<u64>,
}

#[derive(Default)]
struct Tracked {
    by_name: HashMap<(String, String), String>,
    uids: HashSet<String>,
    gone: HashSet<String>,
}

impl Tracker {
    fn new<'a>(pods: impl Iterator<Item = &'a PodRef>) -> Tracker {
        let mut t = Tracked::default();
        for p in pods {
            t.by_name.insert((p.namespace.clone(), p.name.clone()), p.uid.clone());
            t.uids.insert(p.uid.clone());
        }
        Tracker { state: Mutex::new(t), tx: watch::Sender::new(0) }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    fn is_gone(&self, uid: &str) -> bool {
        lock(&self.state).gone.contains(uid)
    }

    fn bump(&self, changed: bool) {
        if changed {
            self.tx.send_modify(|v| *v += 1);
        }
    }
}

impl Tracked {
    fn mark(&mut self, uid: &str) -> bool {
        self.uids.contains(uid) && self.gone.insert(uid.to_string())
    }

    /// A pod object seen: if its name belongs to a tracked pod with another UID, that pod is
    /// gone (its successor took the name).
    fn seen(&mut self, p: &Pod) -> bool {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        let uid = p.metadata.uid.clone().unwrap_or_default();
        match self.by_name.get(&key).cloned() {
            Some(tracked) if tracked != uid => self.mark(&tracked),
            _ => false,
        }
    }
}

impl Sink<Pod> for Tracker {
    fn applied(&self, p: Pod) {
        let changed = lock(&self.state).seen(&p);
        self.bump(changed);
    }

    fn deleted(&self, p: Pod) {
        let changed = {
            let mut st = lock(&self.state);
            let uid = p.metadata.uid.clone().unwrap_or_default();
            st.mark(&uid) | st.seen(&p)
        };
        self.bump(changed);
    }

    fn relisted(&self, pods: Vec<Pod>) {
        let changed = {
            let mut st = lock(&self.state);
            let present: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            let missing: Vec<String> = st.uids.iter().filter(|u| !present.contains(*u)).cloned().collect();
            let mut changed = false;
            for uid in missing {
                changed |= st.mark(&uid);
            }
            for p in &pods {
                changed |= st.seen(p);
            }
            changed
        };
        self.bump(changed);
    }
}

/// PodDisruptionBudgets as the watch last saw them, with an epoch per budget (bumped when
/// anything the drain looks at changes) and the retries already granted in that epoch.
struct PdbCache {
    state: Mutex<PdbState>,
    tx: watch::Sender<u64>,
}

#[derive(Default)]
struct PdbState {
    budgets: HashMap<String, Budget>,
    epoch: u64,
}

struct Budget {
    info: PdbInfo,
    epoch: u64,
    /// Retries let through since `epoch` began: at most `disruptions_allowed` of them.
    granted: i32,
}

/// Whether a gated pod may ask now.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    Open,
    /// `seen`: the pod's budget fingerprint at the decision, to wait for a change from.
    Closed {
        pdb: String,
        reason: String,
        seen: Vec<(String, u64)>,
    },
}

impl PdbState {
    fn put(&mut self, info: PdbInfo) -> bool {
        let key = info.key();
        if self.budgets.get(&key).is_some_and(|b| b.info == info) {
            return false;
        }
        self.epoch += 1;
        self.budgets.insert(key, Budget { info, epoch: self.epoch, granted: 0 });
        true
    }

    /// Budgets covering a pod (`PdbInfo::covers_labels`: core's one rule, the apiserver's).
    fn covering<'s>(
        &'s mut self,
        namespace: &'s str,
        labels: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'s String, &'s mut Budget)> + 's {
        self.budgets.iter_mut().filter(move |(_, b)| b.info.covers_labels(namespace, labels))
    }
}

impl PdbCache {
    fn new(items: Vec<PodDisruptionBudget>) -> PdbCache {
        let mut st = PdbState::default();
        for p in items {
            st.put(pdb_info(p));
        }
        PdbCache { state: Mutex::new(st), tx: watch::Sender::new(0) }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    fn bump(&self, changed: bool) {
        if changed {
            self.tx.send_modify(|v| *v += 1);
        }
    }

    /// The covering budgets and their epochs: equal fingerprints = nothing changed for this pod.
    fn fingerprint(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<(String, u64)> {
        let mut st = lock(&self.state);
        let mut fp: Vec<(String, u64)> =
            st.covering(namespace, labels).map(|(k, b)| (k.clone(), b.epoch)).collect();
        fp.sort();
        fp
    }

    fn names(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<String> {
        let names: Vec<String> = self.fingerprint(namespace, labels).into_iter().map(|(k, _)| k).collect();
        (!names.is_empty()).then(|| names.join(", "))
    }

    /// Core's budget gate over the covering budgets and the retries granted since their last
    /// change; a pod let through on a budget's allowance takes one.
    fn gate(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Gate {
        let mut st = lock(&self.state);
        let mut covering: Vec<(&String, &mut Budget)> = st.covering(namespace, labels).collect();
        let view: Vec<(&PdbInfo, i32)> = covering.iter().map(|(_, b)| (&b.info, b.granted)).collect();
        match (pdb::gate(&view), covering.as_mut_slice()) {
            (pdb::Gate::AskTakingOne, [(_, b)]) => {
                b.granted = b.granted.saturating_add(1);
                Gate::Open
            }
            (pdb::Gate::Wait, [(key, b)]) => Gate::Closed {
                pdb: (*key).clone(),
                seen: vec![((*key).clone(), b.epoch)],
                reason: b.info.exhausted_reason(),
            },
            _ => Gate::Open,
        }
    }
}

impl Sink<PodDisruptionBudget> for PdbCache {
    fn applied(&self, p: PodDisruptionBudget) {
        let changed = lock(&self.state).put(pdb_info(p));
        self.bump(changed);
    }

    fn deleted(&self, p: PodDisruptionBudget) {
        let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        let changed = lock(&self.state).budgets.remove(&key).is_some();
        self.bump(changed);
    }

    fn relisted(&self, items: Vec<PodDisruptionBudget>) {
        let changed = {
            let mut st = lock(&self.state);
            let infos: Vec<PdbInfo> = items.into_iter().map(pdb_info).collect();
            let keys: HashSet<String> = infos.iter().map(|i| i.key()).collect();
            let before = st.budgets.len();
            st.budgets.retain(|k, _| keys.contains(k));
            let mut changed = st.budgets.len() != before;
            for info in infos {
                changed |= st.put(info);
            }
            changed
        };
        self.bump(changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};
    use refit_core::pdb::Selector;

    fn status(code: u16, message: &str, causes: &[(&str, &str)], kind: &str, name: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            status: None,
            code,
            message: message.into(),
            metadata: None,
            reason: String::new(),
            details: Some(StatusDetails {
                name: name.into(),
                group: String::new(),
                kind: kind.into(),
                uid: String::new(),
                causes: causes
                    .iter()
                    .map(|(r, m)| StatusCause {
                        reason: r.to_string(),
                        message: m.to_string(),
                        field: String::new(),
                    })
                    .collect(),
                retry_after_seconds: 0,
            }),
        }))
    }

    #[test]
    fn eviction_answers_are_read_as_the_apiserver_means_them() {
        let refused = status(
            429,
            "Cannot evict pod as it would violate the pod's disruption budget.",
            &[("DisruptionBudget", "The disruption budget web needs 3 healthy pods and has 3 currently")],
            "",
            "",
        );
        let Answer::Budget { reason, named } = classify("shop", Err(refused)) else { panic!() };
        assert_eq!(named.as_deref(), Some("shop/web"));
        assert!(reason.contains("violate") && reason.contains("needs 3 healthy pods"), "{reason}");
        let processing = status(
            429,
            "Cannot evict pod as it would violate the pod's disruption budget.",
            &[("DisruptionBudget", "The disruption budget db is still being processed by the server.")],
            "",
            "",
        );
        assert!(
            matches!(classify("x", Err(processing)), Answer::Budget { named: Some(n), .. } if n == "x/db")
        );
        // API priority and fairness also answers 429, without a budget cause: just retry.
        assert!(matches!(
            classify("x", Err(status(429, "Too many requests", &[], "", ""))),
            Answer::Retry { .. }
        ));
        let several = status(
            500,
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            &[],
            "",
            "",
        );
        assert!(matches!(classify("x", Err(several)), Answer::Budget { named: None, .. }));
        assert_eq!(classify("x", Err(status(404, "not found", &[], "pods", "p"))), Answer::Gone);
        let replaced = status(
            409,
            "Precondition failed: UID in precondition: a, UID in object meta: b",
            &[],
            "pods",
            "p",
        );
        assert_eq!(classify("x", Err(replaced)), Answer::Gone);
        assert!(matches!(classify("x", Err(status(409, "conflict", &[], "", ""))), Answer::Retry { .. }));
        let negative = status(403, "pdb disruptions allowed is negative", &[], "poddisruptionbudget", "web");
        assert!(
            matches!(classify("x", Err(negative)), Answer::Budget { named: Some(n), .. } if n == "x/web")
        );
        let terminating =
            status(403, "namespace x is being terminated", &[("NamespaceTerminating", "")], "", "");
        assert!(matches!(classify("x", Err(terminating)), Answer::Retry { .. }));
        assert!(matches!(
            classify("x", Err(status(403, "forbidden", &[], "pods", "p"))),
            Answer::Fatal { .. }
        ));
        assert!(matches!(classify("x", Err(status(503, "unavailable", &[], "", ""))), Answer::Retry { .. }));
        assert_eq!(classify("x", Ok(())), Answer::Accepted);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let ms = Duration::from_millis;
        let delays = |uid: &str| {
            let mut b = Backoff::new(ms(100), Duration::from_secs(1), uid);
            (0..8).map(|_| b.next()).collect::<Vec<Duration>>()
        };
        let d = delays("uid-1");
        assert!(d[0] >= ms(100) && d[0] < ms(200), "{d:?}");
        assert!(d[1] >= ms(200) && d[1] < ms(400), "{d:?}");
        assert!(d[2] >= ms(400) && d[2] < ms(800), "{d:?}");
        assert!(d.iter().all(|x| *x <= Duration::from_secs(1)), "{d:?}");
        assert!(d[7] >= ms(500), "{d:?}");
        // Jittered per pod, the same for the same pod.
        assert_eq!(delays("uid-1"), d);
        assert_ne!(delays("uid-2"), d);
        assert!(d[4..].windows(2).any(|w| w[0] != w[1]), "spread at the cap too: {d:?}");
        // Zero is never a delay.
        assert!(Backoff::new(Duration::ZERO, Duration::ZERO, "u").next() >= MIN_BACKOFF);
    }

    fn pod(ns: &str, name: &str, uid: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name, "uid": uid}})).unwrap()
    }

    #[test]
    fn tracker_follows_uids_not_names() {
        let a = PodRef { namespace: "n".into(), name: "db-0".into(), uid: "u1".into() };
        let b = PodRef { namespace: "n".into(), name: "web".into(), uid: "u2".into() };
        let c = PodRef { namespace: "n".into(), name: "api".into(), uid: "u3".into() };
        let t = Tracker::new([&a, &b, &c].into_iter());
        let rx = t.subscribe();
        // Modifications of the tracked pod itself change nothing.
        t.applied(pod("n", "db-0", "u1"));
        assert!(!t.is_gone("u1"));
        assert!(!rx.has_changed().unwrap());
        // Its successor under the same name means it is gone.
        t.applied(pod("n", "db-0", "u9"));
        assert!(t.is_gone("u1"));
        assert!(rx.has_changed().unwrap());
        t.deleted(pod("n", "web", "u2"));
        assert!(t.is_gone("u2"));
        // Untracked pods are ignored; a re-list shows absences.
        t.deleted(pod("n", "other", "u7"));
        assert!(!t.is_gone("u7"));
        t.relisted(vec![pod("n", "db-0", "u9")]);
        assert!(t.is_gone("u3"));
    }

    fn budget(name: &str, app: &str, allowed: i32) -> PdbInfo {
        PdbInfo {
            namespace: "n".into(),
            name: name.into(),
            selector: Selector {
                match_labels: BTreeMap::from([("app".to_string(), app.to_string())]),
                match_expressions: vec![],
            },
            disruptions_allowed: allowed,
            current_healthy: 3,
            desired_healthy: 3 - allowed,
            expected_pods: 3,
            always_allow_unhealthy: false,
        }
    }

    #[test]
    fn the_gate_lets_through_as_many_pods_as_the_budget_allows_per_change() {
        let cache = PdbCache { state: Mutex::new(PdbState::default()), tx: watch::Sender::new(0) };
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let lonely = BTreeMap::from([("app".to_string(), "lonely".to_string())]);
        assert!(lock(&cache.state).put(budget("web", "web", 0)));
        assert!(!lock(&cache.state).put(budget("web", "web", 0)), "an identical status is no change");
        assert!(matches!(cache.gate("n", &web), Gate::Closed { pdb, .. } if pdb == "n/web"));
        assert_eq!(cache.gate("n", &lonely), Gate::Open, "no budget: ask");
        assert_eq!(cache.gate("other", &web), Gate::Open, "budgets are per namespace");
        let before = cache.fingerprint("n", &web);
        lock(&cache.state).put(budget("web", "web", 2));
        assert_ne!(cache.fingerprint("n", &web), before);
        assert_eq!(cache.gate("n", &web), Gate::Open);
        assert_eq!(cache.gate("n", &web), Gate::Open);
        assert!(matches!(cache.gate("n", &web), Gate::Closed { .. }), "two allowed, two granted");
        // A second budget over the same pods: the apiserver refuses those pods (500); the
        // gate does not hold them back, so a fix of the budgets is tried at once.
        lock(&cache.state).put(budget("web-too", "web", 0));
        assert_eq!(cache.gate("n", &web), Gate::Open);
        assert_eq!(cache.names("n", &web).as_deref(), Some("n/web, n/web-too"));
        // An empty selector covers every pod of its namespace, for evictions too (core's
        // rule, checked against the apiserver in tests/pdb_selector.rs).
        let mut all = budget("all", "x", 0);
        all.selector.match_labels.clear();
        lock(&cache.state).put(all);
        assert_eq!(cache.names("n", &lonely).as_deref(), Some("n/all"));
        assert!(matches!(cache.gate("n", &lonely), Gate::Closed { pdb, .. } if pdb == "n/all"));
        assert_eq!(cache.names("other", &lonely), None);
    }
}
