//! The server on loopback over a real store (SQLite file) holding fleet runs that core's real
//! rules moved (start → gate reached → members upgraded): auth and CSRF, bad requests, actions
//! and their audit, the event stream, /metrics through a Prometheus text parser, and webhooks
//! to a receiver on loopback that checks signatures and answers 500 once.
//!
//! The live version — sandbox clusters as members, `refit upgrade` subprocesses, a PDB-blocked
//! drain, a browser — is `crates/cli/tests/serve.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jiff::Timestamp;
use refit_core::fleet::{
    Decision, Facts, FleetMember, MemberFacts, RunState, Strategy, UpgradeSpec, UpgradeType, apply,
    freeze_targets, next, resolve,
};
use refit_server::{Config, LocalStore, Source, Tokens};
use refit_store::Store;
use refit_store::notify::{Hook, NotifyKind};
use serde_json::{Value, json};

const ALICE: &str = "0123456789abcdef0123456789abcdef";
const BOB: &str = "fedcba9876543210fedcba9876543210";

const STRATEGY: &str = r#"
stages:
  - name: canary
    groups: [{name: canary}]
    afterGates: [{type: Approval, displayName: canary looks good}]
  - name: prod
    groups: [{name: wave-a}]
"#;

fn members() -> Vec<FleetMember> {
    vec![
        FleetMember { name: "canary-1".into(), update_group: Some("canary".into()), ..Default::default() },
        FleetMember { name: "east-1".into(), update_group: Some("wave-a".into()), ..Default::default() },
    ]
}

/// Moves `run` with core's own decisions, as the driver would (a started member succeeds at
/// once), until it waits for something outside.
fn drive(mut run: RunState, store: &mut Store) -> RunState {
    let facts = Facts {
        members: members().into_iter().map(|m| (m.name, MemberFacts::default())).collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    for _ in 0..50 {
        let now = Timestamp::now();
        let decisions = next(&run, &facts, now);
        let mut moved = false;
        for d in decisions {
            let events = match &d {
                Decision::Record(e) => vec![e.clone()],
                Decision::StartMember { member, .. } => vec![
                    d.started(now, Some(format!("up-{member}"))).unwrap(),
                    refit_core::fleet::Event::MemberSucceeded {
                        member: member.clone(),
                        at: now,
                        message: None,
                    },
                ],
                Decision::Wait { .. } => continue,
            };
            for e in events {
                let version = store.fleet_run(&run.name).unwrap().unwrap().version;
                run = apply(&run, &e).unwrap();
                store.save_fleet_run(&run, version, &e).unwrap();
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    run
}

/// A store with run `to-137` waiting at the canary stage's approval gate.
fn store_with_pending_gate(path: &std::path::Path) -> RunState {
    let mut s = Store::open(path).unwrap();
    let strategy = Strategy::parse(STRATEGY).unwrap();
    let plan = resolve(&strategy, &members()).unwrap();
    let spec = UpgradeSpec::new(UpgradeType::Full, Some("1.37.1".parse().unwrap()));
    let run = RunState::new("to-137", spec.clone(), strategy, plan.clone(), Timestamp::now()).unwrap();
    s.create_fleet_run(&run).unwrap();
    let start = refit_core::fleet::Event::Start {
        at: Timestamp::now(),
        targets: Some(freeze_targets(&spec, std::iter::empty())),
        plan: Some(plan),
        by: None,
    };
    let started = apply(&run, &start).unwrap();
    s.save_fleet_run(&started, 1, &start).unwrap();
    let run = drive(started, &mut s);
    assert!(
        run.gates().any(|g| g.state == refit_core::fleet::GateStatus::Pending),
        "the canary gate is pending: {run:#?}"
    );
    run
}

struct Server {
    addr: SocketAddr,
    http: Client<HttpConnector, Full<Bytes>>,
    store: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Server {
    /// A server over a store with a pending gate. `open_reads`: loopback without a token file.
    async fn start(open_reads: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("refit.db");
        store_with_pending_gate(&store);
        let tokens = Tokens::parse(&format!("{ALICE},alice\n{BOB},bob\n")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config =
            Config { listen: addr, tokens, open_reads, tls: None, poll_interval: Duration::from_millis(50) };
        let source: Arc<dyn Source> = Arc::new(LocalStore::open(&store).unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            refit_server::serve_on(listener, config, source, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let http = Client::builder(TokioExecutor::new()).build_http();
        Server { addr, http, store, _dir: dir, stop: Some(tx) }
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let mut req = hyper::Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp =
            self.http.request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.call("GET", path, &headers, "").await
    }

    async fn json(&self, path: &str, token: Option<&str>) -> Value {
        let (status, body) = self.get(path, token).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn csrf(&self, token: &str) -> String {
        self.json("/api/session", Some(token)).await["csrfToken"].as_str().unwrap().to_string()
    }

    async fn post(&self, path: &str, token: &str, csrf: Option<&str>, body: &str) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let mut h = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
        if let Some(c) = csrf {
            h.push(("x-csrf-token", c));
        }
        let (status, body) = self.call("POST", path, &h, body).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

#[tokio::test]
async fn actions_need_a_valid_token_and_the_csrf_token_and_bad_requests_say_why() {
    let srv = Server::start(true).await;
    let approve = "/api/fleet/runs/to-137/approve";
    let body = r#"{"gate":"canary/after/1"}"#;

    // No token, wrong token: 401 with a JSON error.
    let (status, b) = srv.call("POST", approve, &[("content-type", "application/json")], body).await;
    assert_eq!(status, 401, "{b}");
    assert!(serde_json::from_str::<Value>(&b).unwrap()["error"].as_str().unwrap().contains("token"));
    let (status, b) = srv.post(approve, "not-a-token-at-all-000", None, body).await;
    assert_eq!((status, error_of(&b)), (401, "the token is not valid"));
    // A wrong token is refused even where reads are open.
    assert_eq!(srv.get("/api/fleet/runs", Some("wrong-token-0000000000")).await.0, 401);
    // Right token, no CSRF token, or another name's: 403.
    let (status, b) = srv.post(approve, ALICE, None, body).await;
    assert_eq!(status, 403, "{b}");
    assert!(error_of(&b).contains("X-CSRF-Token"));
    let bobs = srv.csrf(BOB).await;
    assert_eq!(srv.post(approve, ALICE, Some(&bobs), body).await.0, 403);
    // A foreign Origin: 403.
    let alices = srv.csrf(ALICE).await;
    let auth = format!("Bearer {ALICE}");
    let (status, _) = srv
        .call(
            "POST",
            approve,
            &[("authorization", &auth), ("x-csrf-token", &alices), ("origin", "https://evil.example")],
            body,
        )
        .await;
    assert_eq!(status, 403);

    // Bad requests: unknown run 404, malformed body 400, an unknown field 400, a bad gate
    // name 400, a gate the run does not have 409 — each a JSON error, nothing changed.
    let (status, b) = srv.post("/api/fleet/runs/nope/approve", ALICE, Some(&alices), body).await;
    assert_eq!(status, 404);
    assert!(error_of(&b).contains("no update run named 'nope'"));
    assert_eq!(srv.get("/api/fleet/runs/nope", None).await.0, 404);
    assert_eq!(srv.get("/api/runs/nope", None).await.0, 404);
    let (status, b) = srv.post(approve, ALICE, Some(&alices), "{\"gate\":").await;
    assert_eq!(status, 400);
    assert!(error_of(&b).starts_with("malformed body"), "{b}");
    assert_eq!(srv.post(approve, ALICE, Some(&alices), "").await.0, 400);
    assert_eq!(srv.post(approve, ALICE, Some(&alices), r#"{"gate":"canary/after/1","x":1}"#).await.0, 400);
    let (status, b) = srv.post(approve, ALICE, Some(&alices), r#"{"gate":"canary"}"#).await;
    assert_eq!(status, 400);
    assert!(error_of(&b).contains("is not a gate"), "{b}");
    let (status, b) = srv.post(approve, ALICE, Some(&alices), r#"{"gate":"prod/before/7"}"#).await;
    assert_eq!(status, 409, "{b}");
    let (status, _) =
        srv.post("/api/fleet/runs/to-137/skip", ALICE, Some(&alices), r#"{"targets":[]}"#).await;
    assert_eq!(status, 400);
    let (status, b) =
        srv.post("/api/fleet/runs/to-137/skip", ALICE, Some(&alices), r#"{"targets":["Cluster:x"]}"#).await;
    assert_eq!(status, 400);
    assert!(error_of(&b).contains("is not a skip target"));
    assert_eq!(srv.get("/api/nothing-here", None).await.0, 404);
    let before = srv.json("/api/fleet/runs/to-137", None).await;
    assert_eq!(before["version"], srv.json("/api/fleet/runs/to-137", None).await["version"]);

    // The real thing: approved by alice (the token's name), the run moves on.
    let (status, b) = srv.post(approve, ALICE, Some(&alices), body).await;
    assert_eq!(status, 200, "{b}");
    let run = srv.json("/api/fleet/runs/to-137", None).await;
    let gate = &run["stages"][0]["afterGates"][0];
    assert_eq!((gate["state"].as_str(), gate["approval"]["by"].as_str()), (Some("Completed"), Some("alice")));
    assert!(run["version"].as_i64() > before["version"].as_i64());
    // Approving again is refused by the run's rules: 409, recorded as refused.
    assert_eq!(srv.post(approve, ALICE, Some(&alices), body).await.0, 409);
    let (status, b) = srv.post("/api/fleet/runs/to-137/stop", BOB, Some(&bobs), "").await;
    assert_eq!(status, 200, "{b}");

    // Every action is in the audit trail with who asked; refusals too.
    let audit = srv.json("/api/fleet/runs/to-137/audit", None).await;
    let trail: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["actor"].as_str().unwrap().into(),
                a["action"].as_str().unwrap().into(),
                a["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        trail,
        [
            t("alice", "approve-gate", "refused"),
            t("alice", "approve-gate", "done"),
            t("alice", "approve-gate", "refused"),
            t("bob", "stop", "done")
        ],
        "the 404 (another run), 400s (nothing parsed) and 401/403s (no caller) are not actions"
    );
    // The store's own history carries the approver too.
    let history = Store::open(&srv.store).unwrap().fleet_run_events("to-137").unwrap();
    assert!(
        history
            .iter()
            .any(|e| matches!(&e.event, refit_core::fleet::Event::ApproveGate { by, .. } if by == "alice"))
    );
    assert!(
        history
            .iter()
            .any(|e| matches!(&e.event, refit_core::fleet::Event::Stop { by: Some(by), .. } if by == "bob")),
        "the stop names bob in the run's history"
    );
}

#[tokio::test]
async fn reads_need_a_token_unless_the_server_is_open_on_loopback() {
    let closed = Server::start(false).await;
    assert_eq!(closed.get("/api/fleet/runs", None).await.0, 401);
    assert_eq!(closed.get("/metrics", None).await.0, 401);
    assert_eq!(closed.get("/healthz", None).await.0, 200);
    let (status, _) = closed.get("/", None).await;
    assert_eq!(status, 303, "the dashboard sends people to the login page");
    let runs = closed.json("/api/fleet/runs", Some(BOB)).await;
    assert_eq!(runs[0]["name"], "to-137");
    assert_eq!(runs[0]["gatesPending"], 1);
    let s = closed.json("/api/session", Some(BOB)).await;
    assert_eq!((s["name"].as_str(), s["canAct"].as_bool()), (Some("bob"), Some(true)));

    let open = Server::start(true).await;
    let s = open.json("/api/session", None).await;
    assert_eq!((s["name"].clone(), s["canAct"].as_bool()), (Value::Null, Some(false)));
    let doc = open.json("/api/openapi.json", None).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let gates = open.json("/api/fleet/gates", None).await;
    assert_eq!(gates.as_array().unwrap().len(), 1);
    assert_eq!(gates[0]["gate"], "canary/after/1");
    assert_eq!(gates[0]["run"], "to-137");
    let members_progress = open.json("/api/fleet/runs/to-137", None).await;
    assert_eq!(members_progress["stages"][0]["groups"][0]["members"][0]["state"], "Completed");
    let (status, html) = open.get("/fleet/runs/to-137", None).await;
    assert_eq!(status, 200);
    assert!(html.contains("canary/after/1") && html.contains("Log in to"), "no buttons without a session");
}

/// The store with a running cluster run `up-1` of cluster `c1` (as `refit upgrade` starts one).
fn cluster_run_up_1(store: &std::path::Path) -> Store {
    let mut s = Store::open(store).unwrap();
    s.create_run(&refit_store::RunRow {
        id: "up-1".into(),
        cluster: "c1".into(),
        target: "1.37.1".into(),
        state: "running".into(),
        spec: "{}".into(),
    })
    .unwrap();
    s
}

/// Reads SSE frames from `/api/events` until one satisfies `pred`.
async fn next_event(
    body: &mut hyper::body::Incoming,
    buf: &mut String,
    pred: impl Fn(&str, &Value) -> bool,
) -> (String, Value) {
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let kind = frame.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").to_string();
            let data: String = frame.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if let Ok(v) = serde_json::from_str::<Value>(&data)
                && pred(&kind, &v)
            {
                return (kind, v);
            }
        }
        let frame =
            tokio::time::timeout(Duration::from_secs(30), body.frame()).await.expect("an event within 30 s");
        let frame = frame.expect("stream open").unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn the_event_stream_carries_cluster_and_fleet_events_as_they_are_stored() {
    let srv = Server::start(true).await;
    let req =
        hyper::Request::get(format!("http://{}/api/events", srv.addr)).body(Full::new(Bytes::new())).unwrap();
    let resp = srv.http.request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut buf = String::new();

    // A cluster run's journal entry, written by another connection (as `refit upgrade` would).
    let blocked = json!({"event":"blocked","node":"w-1","pod":"shop/web-1","pdb":"shop/web","reason":"Cannot evict pod as it would violate the pod's disruption budget."});
    {
        let mut s = cluster_run_up_1(&srv.store);
        s.record_event("up-1", "blocked", &blocked.to_string()).unwrap();
    }
    let (kind, v) = next_event(&mut body, &mut buf, |k, _| k == "cluster").await;
    assert_eq!(kind, "cluster");
    assert_eq!((v["origin"].as_str(), v["run"].as_str()), (Some("cluster"), Some("up-1")));
    assert_eq!(v["event"], blocked, "the event exactly as -o json prints it");
    assert!(v["at"].as_str().unwrap().parse::<Timestamp>().is_ok());

    // A fleet action through the API arrives as the fleet event the store recorded.
    let csrf = srv.csrf(ALICE).await;
    let (status, _) =
        srv.post("/api/fleet/runs/to-137/approve", ALICE, Some(&csrf), r#"{"gate":"canary/after/1"}"#).await;
    assert_eq!(status, 200);
    let (_, v) =
        next_event(&mut body, &mut buf, |k, v| k == "fleet" && v["event"]["event"] == "ApproveGate").await;
    assert_eq!((v["run"].as_str(), v["event"]["by"].as_str()), (Some("to-137"), Some("alice")));
    assert_eq!(v["event"]["gate"], "canary/after/1");

    // The cluster run's view names the blocked pod and its budget.
    let run = srv.json("/api/runs/up-1", None).await;
    assert_eq!(run["state"], "running");
    let (_, html) = srv.get("/runs/up-1", None).await;
    assert!(html.contains("shop/web-1") && html.contains("shop/web"), "{html}");
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_the_documented_names_and_labels() {
    let srv = Server::start(true).await;
    {
        let mut s = cluster_run_up_1(&srv.store);
        for (step, ms) in [("cordon", 40u64), ("drain", 7000)] {
            let e = json!({"event":"step-started","node":"w-1","step":step,"to":"1.37.1"});
            s.record_step("up-1", "w-1", step, "started", "", &e.to_string()).unwrap();
            let e =
                json!({"event":"step-done","node":"w-1","step":step,"to":"1.37.1","millis":ms,"detail":""});
            s.record_step("up-1", "w-1", step, "done", "", &e.to_string()).unwrap();
        }
        let e = json!({"event":"step-started","node":"w-2","step":"drain","to":"1.37.1"});
        s.record_step("up-1", "w-2", "drain", "started", "", &e.to_string()).unwrap();
        let e = json!({"event":"blocked","node":"w-2","pod":"shop/web-1","pdb":"shop/web","reason":"429"});
        s.record_event("up-1", "blocked", &e.to_string()).unwrap();
    }
    // The histogram is fed by the journal tail: wait until it has read the steps.
    let text = {
        let mut text = String::new();
        for _ in 0..100 {
            text = srv.get("/metrics", None).await.1;
            if text.contains("refit_node_step_duration_seconds_count{step=\"drain\"}") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        text
    };
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let find = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    let gauge = |name: &str, labels: &[(&str, &str)]| match find(name, labels).value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    };
    assert_eq!(gauge("refit_fleet_run_state", &[("run", "to-137"), ("state", "Pending")]), 1.0);
    assert_eq!(
        gauge(
            "refit_fleet_member_state",
            &[
                ("run", "to-137"),
                ("stage", "canary"),
                ("group", "canary"),
                ("member", "canary-1"),
                ("state", "Completed")
            ]
        ),
        1.0
    );
    assert_eq!(
        gauge("refit_gates_pending", &[("run", "to-137"), ("gate", "canary/after/1"), ("type", "Approval")]),
        1.0
    );
    assert_eq!(
        gauge("refit_cluster_run_state", &[("run", "up-1"), ("cluster", "c1"), ("state", "running")]),
        1.0
    );
    assert_eq!(
        gauge(
            "refit_drain_blocked",
            &[("run", "up-1"), ("node", "w-2"), ("pod", "shop/web-1"), ("pdb", "shop/web")]
        ),
        1.0
    );
    match &find("refit_node_step_duration_seconds", &[("step", "drain")]).value {
        prometheus_parse::Value::Histogram(buckets) => {
            let le8 = buckets.iter().find(|b| (b.less_than - 12.8).abs() < 1e-9).unwrap();
            let le4 = buckets.iter().find(|b| (b.less_than - 6.4).abs() < 1e-9).unwrap();
            assert_eq!((le4.count, le8.count), (0.0, 1.0), "one 7 s drain");
        }
        other => panic!("{other:?}"),
    }
    assert!(text.contains("# TYPE refit_gate_approval_latency_seconds histogram"), "{text}");
    assert!(!text.contains("webhook"), "no hooks, no series: {text}");
}

struct Received {
    headers: hyper::HeaderMap,
    body: Bytes,
}

/// A webhook receiver on loopback: answers 500 to the first request, 200 afterwards.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut g = seen.lock().unwrap();
                            g.push(Received { headers, body });
                            g.len()
                        };
                        let status = if n == 1 { 500 } else { 200 };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, got)
}

#[tokio::test]
async fn webhooks_are_signed_retried_after_a_500_and_shaped_as_documented() {
    let (hook_addr, got) = receiver().await;
    let srv = Server::start(true).await;
    let secret_file = srv.store.with_file_name("hook.secret");
    std::fs::write(&secret_file, "s3cret-shared-with-the-receiver\n").unwrap();
    {
        let mut s = Store::open(&srv.store).unwrap();
        s.add_hook(&Hook {
            name: "ops".into(),
            url: format!("http://{hook_addr}/refit"),
            events: vec![NotifyKind::GatePending, NotifyKind::StageCompleted, NotifyKind::RunCompleted],
            secret_file: Some(secret_file.display().to_string()),
            created_at: String::new(),
        })
        .unwrap();
    }
    // The gate was reached before the hook existed: a hook hears about what happens from
    // then on. Move the run: approve (stage canary completes) → prod → completed; the driver's
    // part is core's decisions applied to the store.
    let csrf = srv.csrf(ALICE).await;
    let (status, _) =
        srv.post("/api/fleet/runs/to-137/approve", ALICE, Some(&csrf), r#"{"gate":"canary/after/1"}"#).await;
    assert_eq!(status, 200);
    {
        let mut s = Store::open(&srv.store).unwrap();
        let run = s.fleet_run("to-137").unwrap().unwrap().state;
        let end = drive(run, &mut s);
        assert_eq!(end.status.state, refit_core::fleet::UpdateState::Completed);
    }
    // Expected: stage-completed canary, stage-completed prod, run-completed; the first attempt
    // answered 500 and was retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let kinds: Vec<(String, String)> = got
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                (v["type"].as_str().unwrap().to_string(), v["key"].as_str().unwrap().to_string())
            })
            .collect();
        let mut distinct = kinds.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() == 3 && kinds.len() == 4 {
            let first = &kinds[0];
            assert_eq!(kinds.iter().filter(|k| *k == first).count(), 2, "the 500 was retried: {kinds:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "deliveries so far: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let received = got.lock().unwrap();
        for r in received.iter() {
            let sig = r.headers["x-refit-signature"].to_str().unwrap();
            assert_eq!(sig, refit_server::notify::signature(b"s3cret-shared-with-the-receiver", &r.body));
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(r.headers["x-refit-event"].to_str().unwrap(), v["type"].as_str().unwrap());
            assert_eq!(r.headers["content-type"], "application/json");
            for field in ["type", "key", "run", "at", "text", "runState", "progress"] {
                assert!(v.get(field).is_some(), "{field} missing in {v}");
            }
            assert_eq!(v["run"], "to-137");
            assert!(v["text"].as_str().unwrap().starts_with("refit: "), "Slack shows `text` as is");
            match v["type"].as_str().unwrap() {
                "stage-completed" => assert!(["canary", "prod"].contains(&v["stage"].as_str().unwrap())),
                "run-completed" => {
                    assert_eq!(v["runState"], "Completed");
                    assert_eq!(v["progress"]["completed"], 2);
                }
                other => panic!("not subscribed to {other}: {v}"),
            }
        }
    }
    let s = Store::open(&srv.store).unwrap();
    let deliveries = s.deliveries(Some("ops")).unwrap();
    assert_eq!(deliveries.len(), 3);
    assert!(deliveries.iter().all(|d| d.state == refit_store::notify::DeliveryState::Delivered));
    assert_eq!(deliveries.iter().map(|d| d.attempts).sum::<u32>(), 4);
    assert_eq!(s.delivery_failures().unwrap(), vec![("ops".to_string(), 1)]);
    let text = srv.get("/metrics", None).await.1;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let failures = scrape
        .samples
        .iter()
        .find(|s| s.metric == "refit_webhook_delivery_failures_total" && s.labels.get("hook") == Some("ops"))
        .unwrap_or_else(|| panic!("{text}"));
    // OpenMetrics names the counter family without `_total` in its TYPE line; this parser
    // (the 0.0.4 text format) then reads the sample as untyped: the value is what matters.
    assert!(
        matches!(failures.value, prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n) if n == 1.0),
        "{failures:?}"
    );
    assert!(text.contains("# TYPE refit_webhook_delivery_failures counter"), "{text}");
}

#[tokio::test]
async fn a_pending_gate_is_notified_with_the_command_that_approves_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("refit.db");
    let run = store_with_pending_gate(&store);
    let notices = refit_server::notify::notices(&run);
    let gate: Vec<_> = notices.iter().filter(|n| n.kind == NotifyKind::GatePending).collect();
    assert_eq!(gate.len(), 1);
    let g = gate[0].gate.as_ref().unwrap();
    assert_eq!((g.gate.as_str(), g.display_name.as_deref()), ("canary/after/1", Some("canary looks good")));
    assert_eq!(g.approve, "refit fleet gate approve to-137 canary/after/1");
    assert!(gate[0].text.contains("waits for approval of gate canary/after/1 (canary looks good)"));
    assert_eq!(gate[0].stage.as_deref(), Some("canary"));
    // The same state gives the same key: the outbox queues it once.
    assert_eq!(refit_server::notify::notices(&run), notices);
    let source = LocalStore::open(&store).unwrap();
    Store::open(&store)
        .unwrap()
        .add_hook(&Hook {
            name: "early".into(),
            url: "http://127.0.0.1:9/".into(),
            events: vec![NotifyKind::GatePending],
            secret_file: None,
            created_at: String::new(),
        })
        .unwrap();
    refit_server::notify::queue(&source).unwrap();
    assert!(
        source.due_deliveries(10).unwrap().is_empty(),
        "a hook added after the gate was reached is not told"
    );
}

/// A CA, and certificates it signs (server: IP 127.0.0.1; client: a common name), as PEM
/// files and rustls values — what an operator's PKI would hand `refit serve`.
struct Pki {
    dir: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

type Identity = (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>);

impl Pki {
    fn new(dir: &std::path::Path, name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = params.self_signed(&key).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca_der: ca.der().clone(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// Signs a certificate for `cn` (a server one for 127.0.0.1 when `server`), writes
    /// `<cn>.crt`/`<cn>.key` and returns it for a rustls client.
    fn issue(&self, cn: &str, server: bool) -> Identity {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if server {
            params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.dir.join(format!("{cn}.crt")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{cn}.key")), key.serialize_pem()).unwrap();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        (vec![cert.der().clone()], der.into())
    }
}

/// An HTTPS client trusting `ca`, presenting `identity` when given.
fn https_client(
    ca: &rustls::pki_types::CertificateDer<'static>,
    identity: Option<Identity>,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

async fn https_call(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The path beyond loopback without a token file: TLS with `--client-ca`. A certificate the CA
/// signed names the caller (its common name) for reads, actions (with the CSRF token the
/// session gives that name) and the audit; no certificate is anonymous (401 with reads closed);
/// a certificate from another CA fails the handshake; tokens still work over TLS; plain HTTP
/// gets no answer.
#[tokio::test]
async fn client_certificates_name_the_caller_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("refit.db");
    store_with_pending_gate(&store);
    let pki = Pki::new(dir.path(), "ops-ca");
    pki.issue("server", true);
    let carol = pki.issue("carol", false);
    let rogue = Pki::new(dir.path(), "rogue-ca");
    let mallory = rogue.issue("mallory", false);
    let tls = refit_server::tls::TlsFiles {
        cert: pki.dir.join("server.crt"),
        key: pki.dir.join("server.key"),
        client_ca: Some(pki.dir.join("ca.crt")),
    };
    let tokens = Tokens::parse(&format!("{ALICE},alice\n")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        listen: addr,
        tokens,
        open_reads: false,
        tls: Some(tls),
        poll_interval: Duration::from_millis(50),
    };
    let source: Arc<dyn Source> = Arc::new(LocalStore::open(&store).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(refit_server::serve_on(listener, config, source, async {
        let _ = stopped.await;
    }));
    let url = |path: &str| format!("https://{addr}{path}");

    // carol: named by her certificate, she reads, gets her CSRF token, approves, is audited.
    let as_carol = https_client(&pki.ca_der, Some(carol));
    let (status, body) = https_call(&as_carol, "GET", &url("/api/session"), &[], "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((session["name"].as_str(), session["canAct"].as_bool()), (Some("carol"), Some(true)));
    let csrf = session["csrfToken"].as_str().unwrap().to_string();
    assert_eq!(https_call(&as_carol, "GET", &url("/api/fleet/runs"), &[], "").await.unwrap().0, 200);
    let approve = url("/api/fleet/runs/to-137/approve");
    let json = ("content-type", "application/json");
    let body = r#"{"gate":"canary/after/1"}"#;
    let (status, b) = https_call(&as_carol, "POST", &approve, &[json], body).await.unwrap();
    assert_eq!(status, 403, "a certificate is no CSRF token: {b}");
    let (status, b) =
        https_call(&as_carol, "POST", &approve, &[json, ("x-csrf-token", &csrf)], body).await.unwrap();
    assert_eq!(status, 200, "{b}");
    let (_, audit) =
        https_call(&as_carol, "GET", &url("/api/fleet/runs/to-137/audit"), &[], "").await.unwrap();
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let done: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "done")
        .map(|a| (a["actor"].as_str().unwrap(), a["action"].as_str().unwrap()))
        .collect();
    assert_eq!(done, [("carol", "approve-gate")]);

    // No certificate: anonymous, and reads are closed; a token still names its holder.
    let anonymous = https_client(&pki.ca_der, None);
    let (status, b) = https_call(&anonymous, "GET", &url("/api/fleet/runs"), &[], "").await.unwrap();
    assert_eq!(status, 401, "{b}");
    let bearer = format!("Bearer {ALICE}");
    let (status, b) =
        https_call(&anonymous, "GET", &url("/api/session"), &[("authorization", &bearer)], "").await.unwrap();
    assert_eq!(status, 200, "{b}");
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["name"], "alice");

    // A certificate another CA signed: the handshake fails, nothing is answered.
    let as_mallory = https_client(&pki.ca_der, Some(mallory));
    let refused = https_call(&as_mallory, "GET", &url("/api/session"), &[], "").await;
    assert!(refused.is_err(), "a rogue CA's certificate was answered: {refused:?}");

    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req =
        hyper::Request::get(format!("http://{addr}/api/session")).body(Full::new(Bytes::new())).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), plain.request(req)).await;
    assert!(!matches!(answered, Ok(Ok(_))), "plain HTTP got an answer: {answered:?}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
