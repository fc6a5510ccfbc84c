//! Draining a node: refit's `cordon` + `drain` next to `kubectl drain`, on the same testbed in
//! the same run.
//!
//! (a) wall time to drain a node holding 110 pods (11 Deployments of 10, pinned to the node by
//!     a label, able to land on two other workers once it is drained);
//! (b) latency from a PDB becoming satisfiable (an independent watcher sees
//!     `disruptionsAllowed` go 0 → 1) to the next eviction (the watcher sees the pod's
//!     `deletionTimestamp`); kubectl sleeps 5 s between retries;
//! (d) apiserver requests per node drained, from the apiserver's own `apiserver_request_total`
//!     (GET /metrics before and after each drain of (a), on a testbed running nothing else).
//!
//! Not a test: it prints numbers and ratios and asserts nothing about time.
//! Run: `cargo bench -p refit-kube --bench drain` (REFIT_BENCH_ROUNDS, default 2; about 5
//! minutes on 2 cores).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use refit_kube::cordon::{cordon, uncordon};
use refit_kube::drain::{DrainConfig, DrainEvent, drain};
use refit_kube::{ClusterTarget, Connection, connect};
use refit_testbed::workloads::{Budget, apply, deployment, pdb, pod_is_ready};
use refit_testbed::{Testbed, TestbedConfig, default_version};
use serde_json::json;

const DRAINED: &str = "worker-001";
const LANDING: [&str; 2] = ["worker-002", "worker-003"];
const GATED: &str = "worker-004";
const PODS: usize = 110;
const NS: &str = "bench";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Kubectl,
    Refit,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Kubectl => "kubectl drain",
            Tool::Refit => "refit drain",
        }
    }
}

async fn label(client: &Client, node: &str, key: &str, on: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let value = if on { json!("yes") } else { serde_json::Value::Null };
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {key: value}}})))
        .await
        .expect("label node");
}

async fn ready_on(client: &Client, node: &str, app_prefix: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list =
        pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await.expect("list");
    list.items
        .iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get("app")).is_some_and(|a| a.starts_with(app_prefix))
        })
        .filter(|p| pod_is_ready(p))
        .count()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 110 pods of `trial` on [`DRAINED`], then the landing workers opened to them.
async fn fill(client: &Client, trial: &str) -> String {
    let key = format!("bench.refit.dev/{trial}");
    label(client, DRAINED, &key, true).await;
    for i in 0..PODS / 10 {
        let mut d = deployment(NS, &format!("{trial}-{i}"), 10);
        d["spec"]["template"]["spec"]["nodeSelector"] = json!({key.as_str(): "yes"});
        apply::<Deployment>(client, d).await.expect("deployment");
    }
    wait_for("110 pods ready", Duration::from_secs(300), async || {
        ready_on(client, DRAINED, trial).await >= PODS
    })
    .await;
    for n in LANDING {
        label(client, n, &key, true).await;
    }
    key
}

async fn empty(client: &Client, trial: &str, key: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    for i in 0..PODS / 10 {
        let _ = deployments.delete(&format!("{trial}-{i}"), &DeleteParams::foreground()).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for("pods removed", Duration::from_secs(300), async || {
        pods.list(&ListParams::default()).await.is_ok_and(|l| {
            !l.items.iter().any(|p| {
                p.metadata.labels.as_ref().and_then(|l| l.get("app")).is_some_and(|a| a.starts_with(trial))
            })
        })
    })
    .await;
    for n in [DRAINED].iter().chain(LANDING.iter()) {
        label(client, n, key, false).await;
    }
}

/// `apiserver_request_total` by its label set.
async fn request_counts(client: &Client) -> BTreeMap<String, f64> {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(req).await.expect("GET /metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("apiserver_request_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_string(), value.trim().parse::<f64>().ok()?))
        })
        .collect()
}

fn label_value<'a>(labels: &'a str, key: &str) -> &'a str {
    labels
        .split("\",")
        .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
        .map(|v| v.trim_end_matches('"'))
        .unwrap_or("")
}

/// Requests between two scrapes, grouped as `VERB resource[/subresource]`.
fn request_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, v) in after {
        let d = v - before.get(labels).copied().unwrap_or(0.0);
        if d > 0.0 {
            let resource = label_value(labels, "resource");
            let sub = label_value(labels, "subresource");
            let what = match (resource, sub) {
                ("", _) => "(non-resource)".to_string(),
                (r, "") => r.to_string(),
                (r, s) => format!("{r}/{s}"),
            };
            *out.entry(format!("{} {what}", label_value(labels, "verb"))).or_insert(0.0) += d;
        }
    }
    out
}

/// What the drainer itself asks for. Everything else in the window is the cluster reacting,
/// the same for both tools: controllers recreating and binding pods, kwok updating and
/// deleting them, events, leases, the controller-manager's unschedulable taint (one GET and
/// one PATCH of the node).
fn drainer_requests(delta: &BTreeMap<String, f64>) -> f64 {
    let get = |k: &str| delta.get(k).copied().unwrap_or(0.0);
    let own: f64 = delta
        .iter()
        .filter(|(k, _)| {
            let (verb, what) = k.split_once(' ').unwrap_or_default();
            matches!(
                (verb, what),
                ("POST", "pods/eviction")
                    | ("GET" | "LIST" | "WATCH", "pods")
                    | ("GET" | "PATCH" | "PUT" | "APPLY", "nodes")
                    | ("GET" | "WATCH", "poddisruptionbudgets")
            )
        })
        .map(|(_, v)| v)
        .sum();
    // The eviction handler lists the namespace's PDBs through the apiserver's loopback client
    // once per eviction request; only lists beyond that are the drainer's (its PDB watch).
    let pdb_lists = (get("LIST poddisruptionbudgets") - get("POST pods/eviction")).max(0.0);
    // Discovery (kubectl asks /api, /apis, ... each time); our own "before" scrape of
    // /metrics may be counted in the window too, so one non-resource GET is not theirs.
    let non_resource = (get("GET (non-resource)") - 1.0).max(0.0);
    own + pdb_lists + non_resource
}

fn kubectl_drain(kubectl: &Path, kubeconfig: &Path, home: &Path, node: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(kubectl);
    cmd.args(["drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--kubeconfig"])
        .arg(kubeconfig)
        .env("HOME", home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

async fn uncordon_plain(client: &Client, node: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": false}})))
        .await
        .expect("uncordon");
}

struct Env {
    conn: Connection,
    kubectl: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    home: tempfile::TempDir,
}

/// (a) + (d): one trial of one tool. Returns (seconds, drainer requests, all requests).
async fn drain_110(env: &Env, tool: Tool, trial: &str) -> (f64, f64, f64, BTreeMap<String, f64>) {
    let client = &env.conn.client;
    let key = fill(client, trial).await;
    // Let the controllers settle (budget-less here, but the ReplicaSets' status writes).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = request_counts(client).await;
    let start = Instant::now();
    match tool {
        Tool::Refit => {
            cordon(&env.conn, DRAINED, trial).await.expect("cordon");
            let report = drain(&env.conn, DRAINED, &DrainConfig::default(), &|_| {}).await.expect("drain");
            assert!(report.complete, "{report:#?}");
        }
        Tool::Kubectl => {
            let status = kubectl_drain(&env.kubectl, &env.kubeconfig, env.home.path(), DRAINED)
                .status()
                .await
                .expect("kubectl");
            assert!(status.success(), "kubectl drain failed");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Watches are counted when they end; give closed connections a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = request_counts(client).await;
    let delta = request_delta(&before, &after);
    let drainer = drainer_requests(&delta);
    let all: f64 = delta.values().sum::<f64>() - 1.0;
    match tool {
        Tool::Refit => {
            uncordon(&env.conn, DRAINED, trial).await.expect("uncordon");
        }
        Tool::Kubectl => uncordon_plain(client, DRAINED).await,
    }
    empty(client, trial, &key).await;
    (seconds, drainer, all, delta)
}

#[derive(Debug, Clone, Copy)]
enum Seen {
    /// `disruptionsAllowed` went from 0 to more.
    Open(Instant),
    /// A pod got its deletionTimestamp.
    Evicted(Instant),
}

/// The independent watcher of (b): budget openings and evictions, with the instant seen.
async fn watch_gate(client: Client, name: String, seen: Arc<Mutex<Vec<Seen>>>) {
    let pdbs = watcher(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), NS),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    );
    let pods = watcher(
        Api::<Pod>::namespaced(client, NS),
        watcher::Config::default().labels(&format!("app={name}")),
    );
    let mut pdbs = std::pin::pin!(pdbs);
    let mut pods = std::pin::pin!(pods);
    let mut allowed = 0;
    let mut terminating = std::collections::HashSet::new();
    loop {
        tokio::select! {
            Some(Ok(e)) = pdbs.next() => {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = e {
                    let now = p.status.and_then(|s| s.disruptions_allowed).unwrap_or(0);
                    if allowed == 0 && now > 0 {
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen::Open(Instant::now()));
                    }
                    allowed = now;
                }
            }
            Some(Ok(e)) = pods.next() => {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = e
                    && p.metadata.deletion_timestamp.is_some()
                    && terminating.insert(p.metadata.uid.clone().unwrap_or_default())
                {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen::Evicted(Instant::now()));
                }
            }
            else => return,
        }
    }
}

fn count_evicted(seen: &Mutex<Vec<Seen>>) -> usize {
    seen.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|s| matches!(s, Seen::Evicted(_))).count()
}

/// (b): six pods behind a budget that allows none; the budget is relaxed one step at a time,
/// at pseudo-random moments, and each step's opening-to-eviction latency is recorded.
async fn gate_latency(env: &Env, tool: Tool, trial: &str) -> Vec<f64> {
    let client = &env.conn.client;
    const N: i32 = 6;
    let key = format!("bench.refit.dev/{trial}");
    label(client, GATED, &key, true).await;
    let mut d = deployment(NS, trial, N);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({key.as_str(): "yes"});
    apply::<Deployment>(client, d).await.expect("deployment");
    apply::<PodDisruptionBudget>(client, pdb(NS, trial, trial, Budget::MinAvailable(N))).await.expect("pdb");
    wait_for("gated pods ready", Duration::from_secs(120), async || {
        ready_on(client, GATED, trial).await >= N as usize
    })
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    let settled = async |allowed: i32| {
        let p = pdbs.get(trial).await.expect("pdb");
        let s = p.status.clone().unwrap_or_default();
        s.observed_generation == p.metadata.generation && s.disruptions_allowed == Some(allowed)
    };
    wait_for("budget computed", Duration::from_secs(60), async || settled(0).await).await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let watch = tokio::spawn(watch_gate(client.clone(), trial.to_string(), seen.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_event = {
        let blocked = blocked.clone();
        move |e: DrainEvent| {
            if matches!(e, DrainEvent::Blocked { .. }) {
                blocked.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    let drainer = async {
        match tool {
            Tool::Refit => {
                cordon(&env.conn, GATED, trial).await.expect("cordon");
                let report =
                    drain(&env.conn, GATED, &DrainConfig::default(), &on_event).await.expect("drain");
                assert!(report.complete, "{report:#?}");
            }
            Tool::Kubectl => {
                let status = kubectl_drain(&env.kubectl, &env.kubeconfig, env.home.path(), GATED)
                    .status()
                    .await
                    .expect("kubectl");
                assert!(status.success());
            }
        }
    };
    let driver = async {
        // Both tools have met the closed budget before the first relaxation.
        match tool {
            Tool::Refit => {
                wait_for("refusal", Duration::from_secs(30), async || {
                    blocked.load(std::sync::atomic::Ordering::Relaxed)
                })
                .await
            }
            Tool::Kubectl => tokio::time::sleep(Duration::from_secs(2)).await,
        }
        let mut rng: u64 = 0x9e3779b97f4a7c15;
        let mut latencies = Vec::new();
        for step in (0..N).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let pause = 0.5 + (rng >> 33) as f64 / (1u64 << 31) as f64 * 2.0;
            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
            let evicted = count_evicted(&seen);
            apply::<PodDisruptionBudget>(client, pdb(NS, trial, trial, Budget::MinAvailable(step)))
                .await
                .expect("relax");
            wait_for("the next eviction", Duration::from_secs(60), async || count_evicted(&seen) > evicted)
                .await;
            let s = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let evicted_at =
                s.iter().rev().find_map(|x| if let Seen::Evicted(t) = x { Some(*t) } else { None });
            let opened_at = s.iter().rev().find_map(|x| if let Seen::Open(t) = x { Some(*t) } else { None });
            if let (Some(e), Some(o)) = (evicted_at, opened_at) {
                latencies.push(e.saturating_duration_since(o).as_secs_f64());
            }
            if step > 0 {
                wait_for("budget closed again", Duration::from_secs(60), async || settled(0).await).await;
            }
        }
        latencies
    };
    let ((), latencies) = tokio::join!(drainer, driver);
    watch.abort();
    match tool {
        Tool::Refit => {
            uncordon(&env.conn, GATED, trial).await.expect("uncordon");
        }
        Tool::Kubectl => uncordon_plain(client, GATED).await,
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let _ = deployments.delete(trial, &DeleteParams::foreground()).await;
    let _ = pdbs.delete(trial, &DeleteParams::default()).await;
    label(client, GATED, &key, false).await;
    latencies
}

fn stats(xs: &[f64]) -> String {
    if xs.is_empty() {
        return "no samples".into();
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!("n={} mean {:.3}s median {:.3}s max {:.3}s", v.len(), mean, v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let rounds: usize = std::env::var("REFIT_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let version = default_version().expect("testbed version");
    let mut config = TestbedConfig::new(version.clone(), 5);
    // Nothing but our workloads: no kube-proxy DaemonSet, no CoreDNS (the request counts of
    // (d) then only hold the drain and the cluster's reaction to it).
    config.addons = false;
    let started = Instant::now();
    let tb = rt.block_on(Testbed::start(config)).expect("testbed");
    println!("testbed {} with 5 workers in {:.0}s", version.git_version(), started.elapsed().as_secs_f64());
    rt.block_on(async {
        tb.create_namespace(NS).await.expect("namespace");
        let env = Env {
            conn: connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.expect("connect"),
            kubectl: tb.kubectl(&version).expect("kubectl"),
            kubeconfig: tb.kubeconfig(),
            home: tempfile::tempdir().expect("tempdir"),
        };

        println!("\n(a) drain of a node with {PODS} pods, (d) apiserver requests per node drained");
        let (mut times, mut requests) = (BTreeMap::new(), BTreeMap::new());
        for round in 1..=rounds {
            for tool in [Tool::Kubectl, Tool::Refit] {
                let trial = format!("r{round}{}", if tool == Tool::Refit { "refit" } else { "kubectl" });
                let (secs, drainer, all, delta) = drain_110(&env, tool, &trial).await;
                println!(
                    "round {round}: {:13} {secs:6.2}s  drainer requests {drainer:4.0}  (all apiserver requests in the window {all:4.0})",
                    tool.name()
                );
                let top: Vec<String> = delta.iter().map(|(k, v)| format!("{k}={v:.0}")).collect();
                println!("          {}", top.join(" "));
                times.entry(tool.name()).or_insert_with(Vec::new).push(secs);
                requests.entry(tool.name()).or_insert_with(Vec::new).push(drainer);
            }
        }
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let (kt, rt_) = (mean(&times["kubectl drain"]), mean(&times["refit drain"]));
        let (kr, rr) = (mean(&requests["kubectl drain"]), mean(&requests["refit drain"]));
        println!("(a) mean: kubectl {kt:.2}s, refit {rt_:.2}s: refit is {:.1}x faster (goal >= 5x)", kt / rt_);
        println!("(d) mean drainer requests per node: kubectl {kr:.0}, refit {rr:.0} (ratio {:.2})", kr / rr);

        println!("\n(b) PDB becomes satisfiable -> next eviction");
        for tool in [Tool::Kubectl, Tool::Refit] {
            let trial = format!("gate{}", if tool == Tool::Refit { "refit" } else { "kubectl" });
            let l = gate_latency(&env, tool, &trial).await;
            println!("{:13} {}  samples {:?}", tool.name(), stats(&l), l.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>());
        }
    });
    tb.stop();
}
