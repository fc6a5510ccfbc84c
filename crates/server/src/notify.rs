//! Webhook notifications: which fleet-run states deserve one ([`notices`], pure), and the
//! notifier that queues them in the store's outbox and delivers them.
//!
//! - **Level, not edge**: a notice is derived from the run's state (a gate Pending since T, a
//!   stage Completed at T, the run Failed at T) with a key naming that fact, and queued once per
//!   hook (`UNIQUE(hook, key)`). A notifier that restarts, or sees a state twice, queues nothing
//!   twice; one that was down still notices what happened meanwhile.
//! - **At least once**: a queued delivery is retried (1 s, 2 s, 4 s … up to 5 min apart, 10
//!   attempts) until the receiver answers 2xx; every attempt is recorded. Receivers deduplicate
//!   on the payload's `key`.
//! - **Signed**: `X-Refit-Signature: sha256=HEX`, HMAC-SHA256 of the exact body under the hook's
//!   secret (read from its file at each attempt, never stored). `text` is a one-line summary, so
//!   a Slack incoming webhook shows it as is.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use refit_core::fleet::{GateSpec, GateStatus, RunState, UpdateState};
use refit_store::notify::{Delivery, Hook, NotifyKind};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::source::Source;
use crate::stream::{Origin, StreamEvent};
use crate::view::store_time;

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: u32 = 10;

/// The gate of a `gate-pending` notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateInfo {
    /// `stage/after/1`.
    pub gate: String,
    /// Approval.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The command that approves it.
    pub approve: String,
}

/// A notification's body (the payload schema; `/api/openapi.json` has it as `Notification`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    /// gate-pending, stage-completed, run-failed, run-completed.
    #[serde(rename = "type")]
    pub kind: NotifyKind,
    /// What it is about, unique per fact: receivers deduplicate on it.
    pub key: String,
    /// The fleet run.
    pub run: String,
    /// When the fact happened.
    pub at: Timestamp,
    /// One line for people (Slack shows it).
    pub text: String,
    /// The run's state now.
    pub run_state: UpdateState,
    /// The stage concerned (gate-pending, stage-completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The gate (gate-pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateInfo>,
    /// Why the run failed (run-failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Member counts.
    pub progress: refit_core::fleet::Progress,
}

/// Every notice the run's state implies now (whether or not already sent).
pub fn notices(run: &RunState) -> Vec<Notice> {
    let progress = run.progress();
    let base = |kind: NotifyKind, key: String, at: Timestamp, text: String| Notice {
        kind,
        key,
        run: run.name.clone(),
        at,
        text,
        run_state: run.status.state,
        stage: None,
        gate: None,
        error: None,
        progress,
    };
    let mut out = Vec::new();
    for g in run.gates() {
        if g.state != GateStatus::Pending || !matches!(g.spec, GateSpec::Approval { .. }) {
            continue;
        }
        let Some(at) = g.reached_at else { continue };
        let approve = format!("refit fleet gate approve {} {}", run.name, g.gate);
        let named = g.spec.display_name().map(|d| format!(" ({d})")).unwrap_or_default();
        let mut n = base(
            NotifyKind::GatePending,
            format!("{}/gate-pending/{}@{at}", run.name, g.gate),
            at,
            format!("refit: update run {} waits for approval of gate {}{named}: {approve}", run.name, g.gate),
        );
        n.stage = Some(g.gate.stage.clone());
        n.gate = Some(GateInfo {
            gate: g.gate.to_string(),
            kind: g.spec.kind().to_string(),
            display_name: g.spec.display_name().map(str::to_string),
            approve,
        });
        out.push(n);
    }
    for s in &run.stages {
        if s.status.state != UpdateState::Completed {
            continue;
        }
        let Some(at) = s.status.completed_at else { continue };
        let members = s.groups.iter().map(|g| g.members.len()).sum::<usize>();
        let mut n = base(
            NotifyKind::StageCompleted,
            format!("{}/stage-completed/{}@{at}", run.name, s.name),
            at,
            format!(
                "refit: stage {} of update run {} completed ({members} member(s)); run {}",
                s.name, run.name, run.status.state
            ),
        );
        n.stage = Some(s.name.clone());
        out.push(n);
    }
    if let Some(at) = run.status.completed_at {
        match run.status.state {
            UpdateState::Failed => {
                let failed: Vec<String> = run
                    .members()
                    .filter(|(_, _, m)| m.status.state == UpdateState::Failed)
                    .map(|(_, _, m)| format!("{}: {}", m.name, m.status.error.as_deref().unwrap_or("failed")))
                    .collect();
                let error = run.status.error.clone().unwrap_or_else(|| failed.join("; "));
                let mut n = base(
                    NotifyKind::RunFailed,
                    format!("{}/run-failed@{at}", run.name),
                    at,
                    format!("refit: update run {} failed: {error}", run.name),
                );
                n.error = Some(error);
                out.push(n);
            }
            UpdateState::Completed => out.push(base(
                NotifyKind::RunCompleted,
                format!("{}/run-completed@{at}", run.name),
                at,
                format!(
                    "refit: update run {} completed: {} of {} member(s) upgraded, {} skipped",
                    run.name, progress.completed, progress.total, progress.skipped
                ),
            )),
            _ => {}
        }
    }
    out
}

/// When to try again after `attempts` failed attempts (None: give up).
pub fn retry_delay(attempts: u32) -> Option<Duration> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let secs = 1u64.checked_shl(attempts.saturating_sub(1)).unwrap_or(u64::MAX).min(300);
    Some(Duration::from_secs(secs))
}

/// `sha256=HEX` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// The notifier task.
pub struct Notifier {
    task: tokio::task::JoinHandle<()>,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> HttpClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::warn!("webhooks: no system CA certificates ({e}); https receivers will fail to verify");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth());
            match config {
                Ok(c) => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(c)
                    .https_or_http()
                    .enable_http1()
                    .build(),
                Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                    .https_or_http()
                    .enable_http1()
                    .build(),
            }
        }
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

fn unix_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

impl Notifier {
    /// Starts it: it looks again on every fleet event, and at least every `poll`.
    pub fn start(
        source: Arc<dyn Source>,
        events: broadcast::Receiver<Arc<StreamEvent>>,
        _metrics: Arc<Metrics>,
    ) -> Notifier {
        Notifier::start_every(source, events, Duration::from_secs(2))
    }

    /// Like [`Notifier::start`] with an explicit idle poll (hooks added by another process,
    /// retries falling due).
    pub fn start_every(
        source: Arc<dyn Source>,
        mut events: broadcast::Receiver<Arc<StreamEvent>>,
        poll: Duration,
    ) -> Notifier {
        let task = tokio::spawn(async move {
            let http = client();
            loop {
                let s = source.clone();
                match tokio::task::spawn_blocking(move || queue(s.as_ref())).await {
                    Ok(Err(e)) => tracing::warn!("webhooks: cannot queue notifications: {e}"),
                    Err(e) => tracing::warn!("webhooks: {e}"),
                    Ok(Ok(())) => {}
                }
                deliver_due(&source, &http).await;
                let s = source.clone();
                let next_due = tokio::task::spawn_blocking(move || s.next_delivery_due_ms())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten();
                let wait = next_due
                    .map(|due| {
                        Duration::from_millis(u64::try_from(due.saturating_sub(unix_ms())).unwrap_or(0))
                    })
                    .map_or(poll, |d| d.min(poll));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    r = events.recv() => {
                        match r {
                            Ok(e) if e.origin == Origin::Fleet => {}
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => tokio::time::sleep(poll).await,
                        }
                    }
                }
            }
        });
        Notifier { task }
    }

    /// Stops it.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Queues every notice each hook wants that happened since the hook was added.
pub fn queue(source: &dyn Source) -> Result<(), crate::source::ReadError> {
    let hooks: Vec<Hook> = source.hooks()?;
    if hooks.is_empty() {
        return Ok(());
    }
    for stored in source.fleet_runs()? {
        for n in notices(&stored.state) {
            for h in hooks.iter().filter(|h| h.events.contains(&n.kind)) {
                if store_time(&h.created_at).is_some_and(|since| n.at < since) {
                    continue;
                }
                let payload =
                    serde_json::to_string(&n).map_err(|e| refit_store::Error::Json(e.to_string()))?;
                source.enqueue_delivery(&h.name, &n.key, n.kind, &n.run, &payload)?;
            }
        }
    }
    Ok(())
}

async fn deliver_due(source: &Arc<dyn Source>, http: &HttpClient) {
    let s = source.clone();
    let Ok(Ok((due, hooks))) = tokio::task::spawn_blocking(move || -> Result<_, crate::source::ReadError> {
        Ok((s.due_deliveries(50)?, s.hooks()?))
    })
    .await
    else {
        return;
    };
    for d in due {
        let Some(hook) = hooks.iter().find(|h| h.name == d.hook) else { continue };
        let result = attempt(http, hook, &d).await;
        let attempts = d.attempts.saturating_add(1);
        let s = source.clone();
        let id = d.id;
        let record = tokio::task::spawn_blocking(move || match result {
            Ok(()) => s.record_attempt(id, Ok(())),
            Err(e) => {
                let retry = retry_delay(attempts)
                    .map(|d| unix_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
                tracing::warn!("webhook delivery {id} failed (attempt {attempts}): {e}");
                s.record_attempt(id, Err((&e, retry)))
            }
        })
        .await;
        if let Ok(Err(e)) = record {
            tracing::warn!("webhooks: cannot record an attempt: {e}");
        }
    }
}

async fn attempt(http: &HttpClient, hook: &Hook, d: &Delivery) -> Result<(), String> {
    let mut req = hyper::Request::post(&hook.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("refit/", env!("CARGO_PKG_VERSION")))
        .header("x-refit-event", d.kind.as_str())
        .header("x-refit-delivery", d.id.to_string());
    if let Some(file) = &hook.secret_file {
        let secret = std::fs::read(file).map_err(|e| format!("secret file {file}: {e}"))?;
        let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
        req = req.header("x-refit-signature", signature(secret, d.payload.as_bytes()));
    }
    let req = req
        .body(Full::new(Bytes::from(d.payload.clone())))
        .map_err(|e| format!("bad request for {}: {e}", hook.url))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("{e}"))?;
    let status = resp.status();
    // Read (and drop) the body so the connection can be reused.
    let _ = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    if status.is_success() { Ok(()) } else { Err(format!("HTTP {}", status.as_u16())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_end() {
        let d: Vec<u64> = (1..=MAX_ATTEMPTS).filter_map(retry_delay).map(|d| d.as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
        assert_eq!(retry_delay(MAX_ATTEMPTS), None);
        assert_eq!(retry_delay(0), Some(Duration::from_secs(1)));
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
