//! Evicting one pod at a time within the drain: the eviction POST with its UID precondition, the apiserver's answer classified (gone, budget, retry, fatal), and the backoff between attempts.

use super::*;

/// Everything the per-pod futures share. They all run inside the caller's task (the event
/// callback is borrowed, not `'static`); only the two watches are spawned.
pub(super) struct Ctx<'a> {
    pub(super) client: Client,
    pub(super) cfg: &'a DrainConfig,
    pub(super) on_event: &'a (dyn Fn(DrainEvent) + Send + Sync),
    pub(super) deadline: Instant,
    pub(super) permits: Semaphore,
    pub(super) tracker: Arc<Tracker>,
    /// Started on the first budget refusal; `None` inside when PDBs cannot be listed (then
    /// blocked pods are retried on the timer only).
    pub(super) pdbs: OnceCell<Option<Arc<PdbCache>>>,
    pub(super) tasks: Mutex<Vec<AbortOnDrop>>,
}

/// Why a pod's wait ended.
pub(super) enum Woken {
    /// Its timer: try regardless of what the budget cache says.
    Timer,
    /// A change (budget status, the pod's own disappearance).
    Change,
}

impl Ctx<'_> {
    pub(super) fn emit(&self, e: DrainEvent) {
        tracing::debug!(?e, "drain");
        (self.on_event)(e);
    }

    /// Runs one pod to its end, or to the deadline.
    pub(super) async fn settle(&self, w: &Work) -> (PodRef, Outcome) {
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

    pub(super) async fn work(&self, w: &Work, standing: &Mutex<Standing>) -> Outcome {
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

    pub(super) async fn evict(&self, w: &Work, standing: &Mutex<Standing>) -> Outcome {
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

    pub(super) async fn delete(&self, w: &Work, standing: &Mutex<Standing>) -> Outcome {
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

    pub(super) fn report_blocked(
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
    pub(super) async fn pdb_cache(&self) -> Option<&Arc<PdbCache>> {
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
    pub(super) async fn wait(
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

    pub(super) async fn wait_gone(&self, uid: &str) {
        let mut rx = self.tracker.subscribe();
        while !self.tracker.is_gone(uid) {
            if rx.changed().await.is_err() {
                // The tracker outlives every pod future; if it ever did not, the deadline ends this.
                std::future::pending::<()>().await;
            }
        }
    }
}

pub(super) fn grace(g: Option<i64>) -> Option<i64> {
    g.filter(|g| *g >= 0)
}

/// POSTs a policy/v1 Eviction for exactly this pod (UID precondition).
///
/// Built by hand because kube's `Api::evict` sends its delete options under `delete_options`
/// (kube-core 5.0 `subresource.rs`), a key the apiserver ignores, so neither a grace period
/// nor a precondition would reach it.
pub(super) async fn post_eviction(
    client: &Client,
    pod: &PodRef,
    grace_period: Option<i64>,
) -> Result<(), kube::Error> {
    let delete_options = match grace(grace_period) {
        Some(g) => json!({"preconditions": {"uid": pod.uid}, "gracePeriodSeconds": g}),
        None => json!({"preconditions": {"uid": pod.uid}}),
    };
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
pub(super) enum Answer {
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

pub(super) fn classify(namespace: &str, result: Result<(), kube::Error>) -> Answer {
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
pub(super) fn budget_name(cause: &str) -> Option<&str> {
    cause.strip_prefix("The disruption budget ")?.split_whitespace().next()
}

/// Exponential delays (backon's) with per-pod jitter, so pods refused together do not all come
/// back in the same millisecond: a base doubling from the initial delay, plus a random part
/// below the base (seeded by the pod's UID). The base stops at half of `max`, so no delay is
/// ever longer than `max` and delays at the cap stay spread.
pub(super) struct Backoff {
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(initial: Duration, max: Duration, uid: &str) -> Backoff {
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

    pub(super) fn next(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }
}
