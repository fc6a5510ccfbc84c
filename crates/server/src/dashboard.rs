//! The dashboard: HTML rendered on the server from the same values the API returns, plus one
//! small script (`/static/app.js`, no build step) that listens to `/api/events` and swaps the
//! page's live region for a fresh rendering (`?fragment=1`) — the page updates without a
//! reload — and asks for confirmation before an action. Plain links and buttons: usable with
//! a keyboard; laid out for 1280×800 and wider.
//!
//! Pages: `/` (fleet runs, pending gates, cluster runs), `/fleet/runs/{name}` (stage → group →
//! member tree, states coloured, reasons, gates with Approve, Skip/Stop/Start), `/runs/{id}`
//! (one row per node: the cordon → drain → upgrade → validate → uncordon timeline with
//! durations, the current blocker with pod and PodDisruptionBudget, the ETA), `/login`.

use std::fmt::Write;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use jiff::Timestamp;
use refit_core::fleet::{GateState, GateStatus, RunState, Status, UpdateState};
use serde::Deserialize;

use crate::api::{AppState, Caller, blocking, load_cluster_run, load_fleet_run, summary};
use crate::view::{ClusterRunView, StepProgress};

const APP_JS: &str = include_str!("static/app.js");
const APP_CSS: &str = include_str!("static/app.css");

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/fleet/runs/{name}", get(fleet_run_page))
        .route("/runs/{id}", get(cluster_run_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route(
            "/static/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }),
        )
        .route(
            "/static/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS) }),
        )
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment as it goes into a URL (run names and ids are plain, but never trusted).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn page(title: &str, caller: &Caller, csrf: Option<&str>, stream: &str, body: &str) -> String {
    let who = match &caller.0 {
        Some(n) => format!(
            "<span class=\"who\">signed in as <b>{}</b></span> <form method=\"post\" action=\"/logout\" class=\"inline\" data-csrf-form><button type=\"submit\">Log out</button></form>",
            esc(n)
        ),
        None => "<a href=\"/login\">Log in to act</a>".to_string(),
    };
    let csrf_meta =
        csrf.map(|c| format!("<meta name=\"csrf-token\" content=\"{}\">", esc(c))).unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">{csrf_meta}<meta name=\"refit-stream\" content=\"{}\"><title>{} · refit</title><link rel=\"stylesheet\" href=\"/static/app.css\"><script src=\"/static/app.js\" defer></script></head>\n<body><a class=\"skip\" href=\"#live\">Skip to content</a><header><a href=\"/\" class=\"brand\">refit</a><nav><a href=\"/\">Runs</a> <a href=\"/api/openapi.json\">API</a> <a href=\"/metrics\">Metrics</a></nav><div class=\"session\">{who}</div></header>\n<div id=\"flash\" role=\"status\" aria-live=\"polite\"></div>\n<main id=\"live\" tabindex=\"-1\">{body}</main>\n<dialog id=\"confirm\" aria-labelledby=\"confirm-text\"><form method=\"dialog\"><p id=\"confirm-text\"></p><div class=\"buttons\"><button value=\"cancel\" id=\"confirm-cancel\">Cancel</button> <button value=\"ok\" id=\"confirm-ok\" class=\"primary\">Confirm</button></div></form></dialog>\n</body></html>\n",
        esc(stream),
        esc(title),
    )
}

fn badge(state: &str) -> String {
    format!("<span class=\"state s-{}\">{}</span>", esc(&state.to_ascii_lowercase()), esc(state))
}

fn when(t: Option<Timestamp>) -> String {
    t.map(|t| format!("<time datetime=\"{t}\">{}</time>", t.strftime("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default()
}

/// `1h 02m`, `3m 07s`, `12.3s`.
pub fn duration_text(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return String::new();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    // Whole seconds for longer spans; far beyond any run's length is irrelevant.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = secs as u64;
    if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn took(status: &Status, now: Timestamp) -> String {
    status.took(now).map(|d| duration_text(d.as_secs_f64())).unwrap_or_default()
}

fn reason(status: &Status) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &status.pending {
        parts.push(p.to_string());
    }
    if let Some(m) = &status.message {
        parts.push(m.clone());
    }
    if let Some(e) = &status.error {
        parts.push(e.clone());
    }
    esc(&parts.join(" · "))
}

#[derive(Deserialize)]
struct Fragment {
    #[serde(default)]
    fragment: Option<u8>,
}

fn respond(
    fragment: bool,
    title: &str,
    caller: &Caller,
    state: &AppState,
    stream: &str,
    body: String,
) -> Response {
    if fragment {
        return Html(body).into_response();
    }
    let csrf = caller.0.as_ref().map(|n| state.tokens.csrf_for(n));
    Html(page(title, caller, csrf.as_deref(), stream, &body)).into_response()
}

async fn index(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    q: Query<Fragment>,
) -> Response {
    let data = blocking(&state, |s| -> Result<_, crate::source::ReadError> {
        Ok((s.fleet_runs()?, s.cluster_runs()?))
    })
    .await;
    let (runs, clusters) = match data {
        Ok(d) => d,
        Err(e) => return (e.status, Html(format!("<p>{}</p>", esc(&e.message)))).into_response(),
    };
    let can_act = caller.0.is_some();
    let mut b = String::from("<h1>Runs</h1>");
    b.push_str("<section aria-labelledby=\"h-fleet\"><h2 id=\"h-fleet\">Fleet update runs</h2>");
    if runs.is_empty() {
        b.push_str("<p class=\"empty\">No update runs (refit fleet run create).</p>");
    } else {
        b.push_str("<table class=\"runs\"><thead><tr><th>Run</th><th>Type</th><th>Target</th><th>State</th><th>Members</th><th>Gates waiting</th><th>Created</th></tr></thead><tbody>");
        for r in &runs {
            let s = summary(&r.state);
            let p = s.progress;
            let _ = write!(
                b,
                "<tr data-run=\"{n}\"><td><a href=\"/fleet/runs/{u}\">{n}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}/{} done, {} failed, {} skipped, {} in flight</td><td>{}</td><td>{}</td></tr>",
                esc(&s.upgrade_type),
                esc(s.target.as_deref().unwrap_or("node images")),
                badge(&s.state.to_string()),
                p.completed,
                p.total,
                p.failed,
                p.skipped,
                p.in_flight,
                s.gates_pending,
                when(Some(s.created_at)),
                n = esc(&s.name),
                u = seg(&s.name),
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");
    let pending: Vec<(&RunState, &GateState)> = runs
        .iter()
        .flat_map(|r| r.state.gates().map(move |g| (&r.state, g)))
        .filter(|(_, g)| g.state == GateStatus::Pending)
        .collect();
    b.push_str("<section aria-labelledby=\"h-gates\"><h2 id=\"h-gates\">Gates waiting</h2>");
    if pending.is_empty() {
        b.push_str("<p class=\"empty\">None.</p>");
    } else {
        b.push_str("<ul class=\"gates\">");
        for (r, g) in pending {
            let _ = write!(
                b,
                "<li>{} of <a href=\"/fleet/runs/{}\">{}</a> {}</li>",
                gate_text(g),
                seg(&r.name),
                esc(&r.name),
                gate_button(&r.name, g, can_act)
            );
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
    b.push_str("<section aria-labelledby=\"h-cluster\"><h2 id=\"h-cluster\">Cluster runs</h2>");
    if clusters.is_empty() {
        b.push_str("<p class=\"empty\">No cluster runs (refit upgrade).</p>");
    } else {
        b.push_str("<table class=\"runs\"><thead><tr><th>Run</th><th>Cluster</th><th>Target</th><th>State</th></tr></thead><tbody>");
        for c in &clusters {
            let _ = write!(
                b,
                "<tr><td><a href=\"/runs/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                seg(&c.id),
                esc(&c.id),
                esc(&c.cluster),
                esc(&c.target),
                badge(&c.state)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");
    respond(q.fragment.is_some(), "Runs", &caller, &state, "", b)
}

fn gate_text(g: &GateState) -> String {
    let name = g.spec.display_name().map(|d| format!(" “{}”", esc(d))).unwrap_or_default();
    format!(
        "<span class=\"gate\">{} gate <code>{}</code>{name}</span>",
        esc(g.spec.kind()),
        esc(&g.gate.to_string())
    )
}

fn action_button(run: &str, action: &str, label: &str, confirm: &str, data: &str, can_act: bool) -> String {
    if !can_act {
        return format!(
            "<a class=\"button login\" href=\"/login?next=/fleet/runs/{}\">Log in to {}</a>",
            seg(run),
            esc(&label.to_lowercase())
        );
    }
    format!(
        "<button type=\"button\" class=\"act act-{a}\" data-run=\"{r}\" data-action=\"{a}\" data-body=\"{d}\" data-confirm=\"{c}\">{l}</button>",
        a = esc(action),
        r = esc(run),
        d = esc(data),
        c = esc(confirm),
        l = esc(label),
    )
}

fn gate_button(run: &str, g: &GateState, can_act: bool) -> String {
    if g.state.is_done() {
        return String::new();
    }
    let gate = g.gate.to_string();
    let label = if g.state == GateStatus::Pending { "Approve" } else { "Pre-approve" };
    let body = serde_json::json!({ "gate": gate }).to_string();
    action_button(run, "approve", label, &format!("Approve gate {gate} of run {run}?"), &body, can_act)
}

fn skip_button(run: &str, target: &str, can_act: bool) -> String {
    let body = serde_json::json!({ "targets": [target] }).to_string();
    action_button(run, "skip", "Skip", &format!("Skip {target} in run {run}?"), &body, can_act)
}

fn gates_html(run: &str, gates: &[GateState], can_act: bool) -> String {
    let mut b = String::new();
    for g in gates {
        let approval = g
            .approval
            .as_ref()
            .map(|a| format!(" approved by <b>{}</b> at {}", esc(&a.by), when(Some(a.at))))
            .unwrap_or_default();
        let _ = write!(
            b,
            "<div class=\"gate-row\" data-gate=\"{}\">{} {}{approval} {}</div>",
            esc(&g.gate.to_string()),
            gate_text(g),
            badge(&format!("{:?}", g.state)),
            gate_button(run, g, can_act)
        );
    }
    b
}

/// The body of a fleet run's page.
pub(crate) fn fleet_run_body(
    d: &crate::api::FleetRunDetail,
    audit: &[refit_store::notify::AuditRecord],
    now: Timestamp,
    can_act: bool,
) -> String {
    let r = &d.run;
    let p = r.progress();
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Update run <span class=\"name\">{}</span> {}</h1><p class=\"meta\">{} to {} · {}/{} members done, {} failed, {} skipped, {} in flight, {} pending · started {} · took {}{}</p>",
        esc(&r.name),
        badge(&r.status.state.to_string()),
        esc(&r.spec.upgrade_type.to_string()),
        esc(&r
            .spec
            .kubernetes_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "node images".into())),
        p.completed,
        p.total,
        p.failed,
        p.skipped,
        p.in_flight,
        p.pending,
        when(r.status.started_at),
        took(&r.status, now),
        d.driver.as_ref().map(|l| format!(" · driven by {}", esc(&l.holder))).unwrap_or_default(),
    );
    let why = reason(&r.status);
    if !why.is_empty() {
        let _ = write!(b, "<p class=\"reason\">{why}</p>");
    }
    b.push_str("<div class=\"toolbar\">");
    if matches!(r.status.state, UpdateState::NotStarted | UpdateState::Stopped | UpdateState::Failed) {
        b.push_str(&action_button(
            &r.name,
            "start",
            "Start",
            &format!("Start run {}? (refit fleet daemon drives it)", r.name),
            "",
            can_act,
        ));
    }
    if matches!(r.status.state, UpdateState::Running | UpdateState::Pending) {
        b.push_str(&action_button(
            &r.name,
            "stop",
            "Stop",
            &format!("Stop run {}? Nothing new starts; upgrades under way finish.", r.name),
            "",
            can_act,
        ));
    }
    b.push_str("</div>");
    for s in &r.stages {
        let _ = write!(
            b,
            "<section class=\"stage\" data-stage=\"{n}\" aria-label=\"stage {n}\"><h2>Stage {n} {} <small>took {}</small> {}</h2>",
            badge(&s.status.state.to_string()),
            took(&s.status, now),
            if s.status.state.is_done() {
                String::new()
            } else {
                skip_button(&r.name, &format!("Stage:{}", s.name), can_act)
            },
            n = esc(&s.name),
        );
        let rs = reason(&s.status);
        if !rs.is_empty() {
            let _ = write!(b, "<p class=\"reason\">{rs}</p>");
        }
        b.push_str(&gates_html(&r.name, &s.before_gates, can_act));
        for g in &s.groups {
            let _ = write!(
                b,
                "<div class=\"group\" data-group=\"{n}\"><h3>Group {n} {} <small>{} at once, {} failure(s) allowed</small> {}</h3>",
                badge(&g.status.state.to_string()),
                g.max_concurrency,
                g.max_allowed_failures,
                if g.status.state.is_done() {
                    String::new()
                } else {
                    skip_button(&r.name, &format!("Group:{}", g.name), can_act)
                },
                n = esc(&g.name),
            );
            b.push_str(&gates_html(&r.name, &g.before_gates, can_act));
            b.push_str("<table class=\"members\"><thead><tr><th>Member</th><th>State</th><th>Reason</th><th>Progress</th><th>Started</th><th>Took</th><th></th></tr></thead><tbody>");
            for m in &g.members {
                let progress = d.progress_by_member.iter().find(|p| p.member == m.name);
                let op = progress
                    .and_then(|p| p.operation.as_ref())
                    .map(|o| format!("<a href=\"/runs/{}\">{}</a> ", seg(o), esc(o)))
                    .unwrap_or_default();
                let detail = progress.map(|p| esc(&p.detail)).unwrap_or_default();
                let _ = write!(
                    b,
                    "<tr data-member=\"{n}\" class=\"m-{}\"><td>{n}</td><td>{}</td><td class=\"reason\">{}</td><td>{op}{detail}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&m.status.state.to_string().to_ascii_lowercase()),
                    badge(&m.status.state.to_string()),
                    reason(&m.status),
                    when(m.status.started_at),
                    took(&m.status, now),
                    if m.status.state.is_done() || m.status.state.in_flight() {
                        String::new()
                    } else {
                        skip_button(&r.name, &format!("Member:{}", m.name), can_act)
                    },
                    n = esc(&m.name),
                );
            }
            b.push_str("</tbody></table>");
            b.push_str(&gates_html(&r.name, &g.after_gates, can_act));
            b.push_str("</div>");
        }
        b.push_str(&gates_html(&r.name, &s.after_gates, can_act));
        if let Some(w) = &s.after_stage_wait {
            let _ = write!(
                b,
                "<div class=\"wait\">After-stage wait {} {}{}</div>",
                duration_text(w.seconds as f64),
                badge(&format!("{:?}", w.state)),
                w.until.map(|u| format!(" until {}", when(Some(u)))).unwrap_or_default()
            );
        }
        b.push_str("</section>");
    }
    if !r.unselected.is_empty() {
        let _ =
            write!(b, "<p class=\"meta\">Members no stage selected: {}</p>", esc(&r.unselected.join(", ")));
    }
    if !audit.is_empty() {
        b.push_str("<section aria-labelledby=\"h-audit\"><h2 id=\"h-audit\">Actions through this server</h2><table class=\"audit\"><thead><tr><th>When</th><th>Who</th><th>Action</th><th>Target</th><th>Outcome</th></tr></thead><tbody>");
        for a in audit.iter().rev().take(20) {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td></tr>",
                when(crate::view::store_time(&a.at)),
                esc(&a.actor),
                esc(&a.action),
                esc(&a.target),
                esc(&format!("{:?}", a.outcome).to_lowercase()),
                esc(&a.detail)
            );
        }
        b.push_str("</tbody></table></section>");
    }
    b
}

async fn fleet_run_page(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    q: Query<Fragment>,
) -> Response {
    let d = match load_fleet_run(&state, name.clone()).await {
        Ok(d) => d,
        Err(e) => return (e.status, Html(not_found_page(&e.message))).into_response(),
    };
    let n = name.clone();
    let audit = blocking(&state, move |s| s.audit(Some(&n))).await.unwrap_or_default();
    let body = fleet_run_body(&d, &audit, Timestamp::now(), caller.0.is_some());
    respond(q.fragment.is_some(), &format!("Run {name}"), &caller, &state, "", body)
}

/// The body of a cluster run's page.
pub fn cluster_run_body(v: &ClusterRunView) -> String {
    let mut b = String::new();
    let eta = v.eta_seconds.map(|s| format!(" · about {} left", duration_text(s as f64))).unwrap_or_default();
    let _ = write!(
        b,
        "<h1>Cluster run <span class=\"name\">{}</span> {}</h1><p class=\"meta\">cluster {} · to {} · started {} · last change {}<span class=\"eta\">{eta}</span></p>",
        esc(&v.id),
        badge(&v.state),
        esc(&v.cluster),
        esc(&v.target),
        when(v.started_at),
        when(v.updated_at),
    );
    if let Some(r) = &v.reason {
        let _ = write!(b, "<p class=\"reason\">{}</p>", esc(r));
    }
    let blocked: Vec<_> = v.blocked().collect();
    if !blocked.is_empty() {
        b.push_str("<section class=\"blockers\" aria-labelledby=\"h-blocked\"><h2 id=\"h-blocked\">Blocked now</h2><ul>");
        for (n, bl) in blocked {
            let pdb = bl
                .pdb
                .as_ref()
                .map(|p| format!(" by PodDisruptionBudget <code class=\"pdb\">{}</code>", esc(p)))
                .unwrap_or_default();
            let _ = write!(
                b,
                "<li data-node=\"{n}\"><b>{n}</b>: drain waits for pod <code class=\"pod\">{}</code>{pdb} since {} — {}</li>",
                esc(&bl.pod),
                when(bl.since),
                esc(&bl.reason),
                n = esc(&n.node),
            );
        }
        b.push_str("</ul></section>");
    }
    b.push_str("<table class=\"nodes\"><thead><tr><th>Node</th><th>Stage</th><th>Timeline</th><th>Result</th><th>Now</th></tr></thead><tbody>");
    for n in &v.nodes {
        let stage = v.stages.get(n.stage).map(|s| s.phase.clone()).unwrap_or_default();
        let mut timeline = String::from("<ol class=\"timeline\">");
        for s in &n.steps {
            let cls = match s.state {
                StepProgress::Pending => "pending",
                StepProgress::Started => "started",
                StepProgress::Done => "done",
                StepProgress::Failed => "failed",
            };
            #[allow(clippy::cast_precision_loss)]
            let t = s.millis.map(|m| duration_text(m as f64 / 1000.0)).unwrap_or_default();
            let title = s.detail.as_deref().map(|d| format!(" title=\"{}\"", esc(d))).unwrap_or_default();
            let _ = write!(
                timeline,
                "<li class=\"step {cls}\" data-step=\"{}\"{title}><span>{}</span> <small>{t}</small></li>",
                esc(&s.step),
                esc(&s.step)
            );
        }
        timeline.push_str("</ol>");
        let now = match (&n.blocker, &n.last_output) {
            (Some(bl), _) => format!(
                "<span class=\"blocked\">blocked: pod <code>{}</code>{}</span>",
                esc(&bl.pod),
                bl.pdb.as_ref().map(|p| format!(", PDB <code>{}</code>", esc(p))).unwrap_or_default()
            ),
            (None, Some(o)) => esc(o),
            (None, None) => String::new(),
        };
        #[allow(clippy::cast_precision_loss)]
        let took = n.millis.map(|m| format!(" {}", duration_text(m as f64 / 1000.0))).unwrap_or_default();
        let _ = write!(
            b,
            "<tr data-node=\"{nn}\"><td>{nn} <small>{}</small></td><td>{} → {}</td><td>{timeline}</td><td>{}{took}</td><td>{now}</td></tr>",
            esc(&n.roles.join(",")),
            esc(&stage),
            esc(&n.to),
            n.result.map(|r| badge(r.as_str())).unwrap_or_default(),
            nn = esc(&n.node),
        );
    }
    b.push_str("</tbody></table>");
    for w in &v.warnings {
        let _ = write!(b, "<p class=\"warning\">{}</p>", esc(w));
    }
    for c in &v.cluster_services {
        let _ = write!(b, "<p class=\"meta\">{}</p>", esc(c));
    }
    b
}

async fn cluster_run_page(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    q: Query<Fragment>,
) -> Response {
    match load_cluster_run(&state, id.clone()).await {
        Ok(v) => respond(
            q.fragment.is_some(),
            &format!("Cluster run {id}"),
            &caller,
            &state,
            &id,
            cluster_run_body(&v),
        ),
        Err(e) => (e.status, Html(not_found_page(&e.message))).into_response(),
    }
}

/// A 404 page.
pub fn not_found_page(what: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found · refit</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main><h1>Not found</h1><p>{}</p><p><a href=\"/\">All runs</a></p></main></body></html>",
        esc(what)
    )
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
    invalid: Option<u8>,
}

/// Only local paths: a login must never redirect elsewhere.
fn local_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

async fn login_page(q: Query<LoginQuery>) -> Response {
    let next = local_next(q.next.as_deref());
    let invalid = if q.invalid.is_some() {
        "<p class=\"warning\" role=\"alert\">That token is not valid.</p>"
    } else {
        ""
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · refit</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main id=\"live\"><h1>Log in</h1>{invalid}<form method=\"post\" action=\"/login\" class=\"login\"><input type=\"hidden\" name=\"next\" value=\"{}\"><label for=\"token\">Token</label> <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus> <button type=\"submit\" class=\"primary\">Log in</button></form><p class=\"meta\">The token is a line of the server's --token-file (TOKEN,NAME), or, on loopback without one, the file refit serve named when it started.</p></main></body></html>",
        esc(&next)
    ))
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !crate::auth::same_origin(origin, host) {
        return (StatusCode::FORBIDDEN, "cross-origin login refused").into_response();
    }
    let next = local_next(f.next.as_deref());
    if state.tokens.authenticate(f.token.trim()).is_none() {
        return Redirect::to(&format!("/login?next={}&invalid=1", seg_path(&next))).into_response();
    }
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{}={}; Path=/; HttpOnly; SameSite=Strict{secure}", crate::auth::COOKIE, f.token.trim());
    let mut r = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn seg_path(p: &str) -> String {
    p.split('/').map(seg).collect::<Vec<_>>().join("/")
}

async fn logout() -> Response {
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("refit_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_paths_are_encoded() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(seg("to-137"), "to-137");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(local_next(Some("//evil.example")), "/");
        assert_eq!(local_next(Some("https://evil.example")), "/");
        assert_eq!(local_next(Some("/fleet/runs/x")), "/fleet/runs/x");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(duration_text(7.25), "7.2s");
        assert_eq!(duration_text(187.0), "3m 07s");
        assert_eq!(duration_text(3720.0), "1h 02m");
        assert_eq!(duration_text(f64::NAN), "");
    }
}
