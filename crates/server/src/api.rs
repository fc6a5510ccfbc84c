//! The routes: the JSON API under `/api`, `/metrics`, and the dashboard pages.
//!
//! Errors are JSON `{"error": "..."}` with the status that says who must act: 400 malformed
//! request, 401 no or wrong token, 403 missing CSRF token or foreign origin, 404 unknown run,
//! 409 the run's rules refuse the action (nothing changed), 500 the store failed, 502 the hub
//! failed (`refit serve --hub`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Config;
use crate::auth::{self, Identity, Tokens};
use crate::metrics::Metrics;
use crate::source::{ActError, Action, ReadError, Source};
use crate::stream::Hub;
use crate::tls::ClientName;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(crate) source: Arc<dyn Source>,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) open_reads: bool,
    pub(crate) secure_cookies: bool,
    pub(crate) hub: Hub,
    pub(crate) metrics: Arc<Metrics>,
}

impl AppState {
    /// The state of a server with this configuration.
    pub fn new(source: Arc<dyn Source>, config: Config, hub: Hub, metrics: Arc<Metrics>) -> AppState {
        AppState {
            source,
            tokens: Arc::new(config.tokens),
            open_reads: config.open_reads,
            secure_cookies: config.tls.is_some(),
            hub,
            metrics,
        }
    }
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// One line saying what is wrong and what to do.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"refit\""));
        }
        r
    }
}

impl From<refit_store::Error> for ApiError {
    fn from(e: refit_store::Error) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        match e {
            ReadError::Store(e) => e.into(),
            // The hub failed, not this server: a gateway error.
            e @ ReadError::Hub { .. } => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }
}

impl From<ActError> for ApiError {
    fn from(e: ActError) -> ApiError {
        match e {
            ActError::NoRun(_) => ApiError::not_found(format!("{e} (see GET /api/fleet/runs)")),
            ActError::Refused(_) | ActError::Unsupported(_) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            ActError::Store(e) => e.into(),
            ActError::Read(e) => e.into(),
        }
    }
}

/// Runs a store call off the async workers.
pub(crate) async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn Source) -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let source = state.source.clone();
    tokio::task::spawn_blocking(move || f(source.as_ref()).map_err(Into::into))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")))?
}

/// Who the request is from, as the auth layer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Option<String>);

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The authentication and CSRF layer. Reads need a valid identity unless reads are open;
/// every state-changing API request needs an identity, its CSRF token and a same-origin
/// `Origin` (when the browser sends one). A wrong token is 401 even where reads are open.
async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let public = matches!(path.as_str(), "/healthz" | "/login" | "/static/app.js" | "/static/app.css");
    let h = req.headers();
    let client = req.extensions().get::<ClientName>().map(|c| c.0.clone());
    let identity = auth::identify(
        &state.tokens,
        header_str(h, header::AUTHORIZATION),
        header_str(h, header::COOKIE),
        client.as_deref(),
    );
    let html = !path.starts_with("/api") && path != "/metrics";
    let name = match identity {
        Identity::Named(n) => Some(n),
        Identity::Invalid if public => None,
        Identity::Invalid => {
            if html {
                return login_redirect(&path, true);
            }
            return ApiError::new(StatusCode::UNAUTHORIZED, "the token is not valid").into_response();
        }
        Identity::Anonymous => None,
    };
    let writes = req.method() != Method::GET && req.method() != Method::HEAD;
    if writes && path != "/login" {
        let Some(n) = &name else {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "actions need a token: Authorization: Bearer TOKEN (or log in to the dashboard)",
            )
            .into_response();
        };
        let h = req.headers();
        if !auth::same_origin(header_str(h, header::ORIGIN), header_str(h, header::HOST)) {
            return ApiError::new(StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
        }
        let csrf = h.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !state.tokens.csrf_ok(n, csrf) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header (GET /api/session gives yours)",
            )
            .into_response();
        }
    } else if name.is_none() && !state.open_reads && !public {
        if html {
            return login_redirect(&path, false);
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs a token: Authorization: Bearer TOKEN",
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller(name));
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: with no-referrer a browser sends `Origin: null` on form
    // posts, and the origin check refuses the login (found by the Chromium test).
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
    }
    resp
}

fn login_redirect(path: &str, invalid: bool) -> Response {
    let next: String = path.chars().filter(|c| c.is_ascii_alphanumeric() || "/-_.".contains(*c)).collect();
    let mut r = Redirect::to(&format!("/login?next={next}{}", if invalid { "&invalid=1" } else { "" }))
        .into_response();
    // An invalid cookie is dropped so the login page can set a new one.
    if invalid {
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static("refit_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        );
    }
    r
}

/// The router of the whole server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/session", get(session))
        .route("/api/events", get(events))
        .route("/api/fleet/members", get(members))
        .route("/api/fleet/strategies", get(strategies))
        .route("/api/fleet/gates", get(gates))
        .route("/api/fleet/runs", get(fleet_runs))
        .route("/api/fleet/runs/{name}", get(fleet_run))
        .route("/api/fleet/runs/{name}/events", get(fleet_run_events))
        .route("/api/fleet/runs/{name}/audit", get(fleet_run_audit))
        .route("/api/fleet/runs/{name}/approve", post(approve))
        .route("/api/fleet/runs/{name}/skip", post(skip))
        .route("/api/fleet/runs/{name}/stop", post(stop))
        .route("/api/fleet/runs/{name}/start", post(start))
        .route("/api/runs", get(cluster_runs))
        .route("/api/runs/{id}", get(cluster_run))
        .merge(crate::dashboard::routes())
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn fallback(req: Request) -> Response {
    if req.uri().path().starts_with("/api") {
        ApiError::not_found(format!("no route {} {} (see /api/openapi.json)", req.method(), req.uri().path()))
            .into_response()
    } else {
        (StatusCode::NOT_FOUND, axum::response::Html(crate::dashboard::not_found_page(req.uri().path())))
            .into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::DOCUMENT).into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    name: Option<String>,
    csrf_token: Option<String>,
    can_act: bool,
}

async fn session(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    let csrf = caller.0.as_ref().map(|n| state.tokens.csrf_for(n));
    axum::Json(Session { can_act: caller.0.is_some(), name: caller.0, csrf_token: csrf }).into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = state.metrics.clone();
    let clients = state.hub.receivers().saturating_sub(1);
    let text = blocking(&state, move |s| metrics.render(s, clients)).await?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}

async fn members(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(blocking(&state, |s| s.members()).await?).into_response())
}

#[derive(Serialize)]
struct NamedStrategy {
    name: String,
    #[serde(flatten)]
    strategy: refit_core::fleet::Strategy,
}

async fn strategies(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = blocking(&state, |s| s.strategies()).await?;
    let list: Vec<NamedStrategy> =
        list.into_iter().map(|(name, strategy)| NamedStrategy { name, strategy }).collect();
    Ok(axum::Json(list).into_response())
}

/// A run in the list.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunSummary {
    pub name: String,
    pub upgrade_type: String,
    pub target: Option<String>,
    pub state: refit_core::fleet::UpdateState,
    pub progress: refit_core::fleet::Progress,
    pub created_at: jiff::Timestamp,
    pub started_at: Option<jiff::Timestamp>,
    pub completed_at: Option<jiff::Timestamp>,
    pub gates_pending: usize,
}

pub(crate) fn summary(r: &refit_core::fleet::RunState) -> RunSummary {
    RunSummary {
        name: r.name.clone(),
        upgrade_type: r.spec.upgrade_type.to_string(),
        target: r.spec.kubernetes_version.as_ref().map(ToString::to_string),
        state: r.status.state,
        progress: r.progress(),
        created_at: r.created_at,
        started_at: r.status.started_at,
        completed_at: r.status.completed_at,
        gates_pending: r.gates().filter(|g| g.state == refit_core::fleet::GateStatus::Pending).count(),
    }
}

async fn fleet_runs(State(state): State<AppState>) -> Result<Response, ApiError> {
    let runs = blocking(&state, |s| s.fleet_runs()).await?;
    Ok(axum::Json(runs.iter().map(|r| summary(&r.state)).collect::<Vec<_>>()).into_response())
}

/// A fleet run with what the driver saw and who drives it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FleetRunDetail {
    #[serde(flatten)]
    pub run: refit_core::fleet::RunState,
    pub version: i64,
    pub progress_by_member: Vec<refit_store::fleet::MemberProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<refit_store::fleet::Lease>,
}

pub(crate) async fn load_fleet_run(state: &AppState, name: String) -> Result<FleetRunDetail, ApiError> {
    blocking(state, move |s| {
        let Some(r) = s.fleet_run(&name)? else {
            return Err(ApiError::not_found(format!(
                "no update run named '{name}' (see GET /api/fleet/runs)"
            )));
        };
        Ok(FleetRunDetail {
            progress_by_member: s.member_progress(&name)?,
            driver: s.lease(&name)?,
            run: r.state,
            version: r.version,
        })
    })
    .await
}

async fn fleet_run(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(load_fleet_run(&state, name).await?).into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryEntry {
    seq: i64,
    version: i64,
    #[serde(flatten)]
    event: refit_core::fleet::Event,
}

async fn fleet_run_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let events = blocking(&state, move |s| {
        if s.fleet_run(&name)?.is_none() {
            return Err(ApiError::not_found(format!(
                "no update run named '{name}' (see GET /api/fleet/runs)"
            )));
        }
        Ok(s.fleet_run_events(&name)?)
    })
    .await?;
    let list: Vec<HistoryEntry> =
        events.into_iter().map(|e| HistoryEntry { seq: e.seq, version: e.version, event: e.event }).collect();
    Ok(axum::Json(list).into_response())
}

async fn fleet_run_audit(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(blocking(&state, move |s| s.audit(Some(&name))).await?).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatesQuery {
    #[serde(default)]
    all: bool,
}

#[derive(Serialize)]
struct ListedGate {
    run: String,
    #[serde(flatten)]
    gate: refit_core::fleet::GateState,
}

async fn gates(State(state): State<AppState>, q: Query<GatesQuery>) -> Result<Response, ApiError> {
    let all = q.all;
    let runs = blocking(&state, |s| s.fleet_runs()).await?;
    let list: Vec<ListedGate> = runs
        .iter()
        .flat_map(|r| r.state.gates().map(move |g| ListedGate { run: r.state.name.clone(), gate: g.clone() }))
        .filter(|g| all || g.gate.state == refit_core::fleet::GateStatus::Pending)
        .collect();
    Ok(axum::Json(list).into_response())
}

/// A JSON body, or 400 naming what is wrong with it.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad("a JSON body is required"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("malformed body: {e}")))
}

async fn act(state: &AppState, caller: Caller, name: String, action: Action) -> Result<Response, ApiError> {
    let Some(actor) = caller.0 else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "actions need a token"));
    };
    let run = blocking(state, move |s| s.act(&actor, &name, &action, jiff::Timestamp::now())).await?;
    Ok(axum::Json(summary(&run)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApproveBody {
    gate: String,
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

async fn approve(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: ApproveBody = body(&bytes)?;
    let gate = b.gate.parse().map_err(ApiError::bad)?;
    act(&state, caller, name, Action::ApproveGate { gate, expires_in_seconds: b.expires_in_seconds }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipBody {
    targets: Vec<String>,
}

async fn skip(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: SkipBody = body(&bytes)?;
    if b.targets.is_empty() {
        return Err(ApiError::bad(
            "targets: name at least one (Member:NAME, Group:NAME, Stage:NAME, AfterStageWait:NAME)",
        ));
    }
    let targets =
        b.targets.iter().map(|t| t.parse()).collect::<Result<Vec<_>, _>>().map_err(ApiError::bad)?;
    act(&state, caller, name, Action::Skip { targets }).await
}

async fn stop(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act(&state, caller, name, Action::Stop).await
}

async fn start(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act(&state, caller, name, Action::Start).await
}

/// A cluster run in the list.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterRunSummary {
    pub id: String,
    pub cluster: String,
    pub target: String,
    pub state: String,
}

async fn cluster_runs(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = blocking(&state, |s| s.cluster_runs()).await?;
    let list: Vec<ClusterRunSummary> = rows
        .into_iter()
        .map(|r| ClusterRunSummary { id: r.id, cluster: r.cluster, target: r.target, state: r.state })
        .collect();
    Ok(axum::Json(list).into_response())
}

pub(crate) async fn load_cluster_run(
    state: &AppState,
    id: String,
) -> Result<crate::view::ClusterRunView, ApiError> {
    blocking(state, move |s| {
        let Some(row) = s.cluster_run(&id)? else {
            return Err(ApiError::not_found(format!("no cluster run with id '{id}' (see GET /api/runs)")));
        };
        let journal = s.run_journal(&id)?;
        Ok(crate::view::cluster_run(&row, &journal))
    })
    .await
}

async fn cluster_run(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(load_cluster_run(&state, id).await?).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    run: Option<String>,
}

/// `/api/events`: new journal entries as server-sent events (`event: cluster|fleet`, `id:
/// c123|f45`, data: [`crate::stream::StreamEvent`] as JSON). A client that falls behind gets an
/// `event: lagged` and should re-read what it shows.
async fn events(
    State(state): State<AppState>,
    q: Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.hub.subscribe();
    let only = q.0.run;
    let stream = futures::stream::unfold((rx, only), |(mut rx, only)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if only.as_ref().is_some_and(|r| r != &e.run) {
                        continue;
                    }
                    let kind = match e.origin {
                        crate::stream::Origin::Cluster => "cluster",
                        crate::stream::Origin::Fleet => "fleet",
                    };
                    let data = serde_json::to_string(e.as_ref()).unwrap_or_default();
                    return Some((Ok(SseEvent::default().id(e.id()).event(kind).data(data)), (rx, only)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = SseEvent::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(ev), (rx, only)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
