//! Issue 14's rollout benchmark: 200 kwok workers in 3 zones, about 6,000 pods under budgets
//! of varied tightness, a fixed simulated node action of 3 s, upgraded with
//! `--max-unavailable 1`, `10%`, `25%` and `auto`, next to the peer — a sequential `kubectl
//! drain` / action / `kubectl uncordon` loop — on the same testbed in the same run. An
//! independent watcher (its own watches on nodes, pods and budgets; never refit's events)
//! measures what each run did to the cluster: the most workers unschedulable at once and the
//! zones they were in, pods left Pending for lack of room, and budgets whose healthy pods fell
//! below what they require (violations). The ETA refit printed after 10% of the workers is
//! set against the run's actual end.
//!
//! Workloads (namespace `bench`, pods of 50m CPU / 64 Mi, spread by the scheduler's default
//! topology spreading):
//!   - 40 Deployments × 3 replicas, PDB `maxUnavailable: 1`
//!   - 40 Deployments × 5 replicas, PDB `minAvailable: 4` (N-1)
//!   - 20 Deployments × 50 replicas, PDB `maxUnavailable: 10%`
//!   - 47 Deployments × 100 replicas, no PDB
//!
//! `--max-unavailable 1` over 200 workers at ≥ 3 s each is well over 10 minutes, so it runs
//! under `--not-after` for REFIT_BENCH_ONE_SECS (default 150 s; the run ends Paused) and is
//! extrapolated from the workers it finished; the kubectl loop runs over
//! REFIT_BENCH_PEER_NODES workers (default 10) and is extrapolated likewise (both are
//! sequential, so they scale linearly). Between runs every worker is put back one minor
//! behind and the bench waits until every pod is Ready again.
//!
//! Where each run's time went, from refit's own events: per upgraded node the mean seconds of
//! each step (cordon, drain — split into evicting, until the last pod was evicted, and waiting
//! for the evicted pods to be gone — action, uncordon) and the evictions a budget refused
//! (429s); the mean number of nodes in flight; under `auto`, the slots the cap left idle, by
//! what held the window (a budget, room, the zone, the cap, nothing left in the zone), in
//! slot-seconds. `REFIT_BENCH_TRACE=DIR` keeps each run's NDJSON events there.
//!
//! The floor, last: every bench pod deleted at once and timed until as many replacements are
//! Ready — the testbed's pod churn, which no rollout moving every pod can beat
//! (REFIT_BENCH_FLOOR=0 skips it).
//!
//! Not a test: it prints the table; it asserts nothing about time.
//! Run: `cargo bench -p refit-cli --bench rollout` (about 30 minutes on 2 cores;
//! REFIT_BENCH_WORKERS, REFIT_BENCH_ACTION_SECS, REFIT_BENCH_RUNS=1,10%,25%,auto to change it).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::runtime::watcher;
use refit_core::MinorVersion;
use refit_testbed::workloads::apply;
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};
use serde_json::{Value, json};

const NS: &str = "bench";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the independent watcher sees now, and the worst of it since the last reset.
#[derive(Default)]
struct Watched {
    /// Unschedulable workers → their zone.
    cordoned: BTreeMap<String, String>,
    /// Pods the scheduler found no room for (PodScheduled=False, Unschedulable).
    no_room: BTreeSet<String>,
    /// Budgets with fewer healthy pods than they require.
    below: BTreeSet<String>,
    /// Pods Running and Ready (not terminating).
    ready: BTreeSet<String>,
    most_cordoned: usize,
    most_zones: usize,
    most_no_room: usize,
    violated: BTreeSet<String>,
}

impl Watched {
    fn note(&mut self) {
        self.most_cordoned = self.most_cordoned.max(self.cordoned.len());
        let zones: BTreeSet<&String> = self.cordoned.values().collect();
        self.most_zones = self.most_zones.max(zones.len());
        self.most_no_room = self.most_no_room.max(self.no_room.len());
        self.violated.extend(self.below.iter().cloned());
    }

    fn reset(&mut self) {
        self.most_cordoned = 0;
        self.most_zones = 0;
        self.most_no_room = 0;
        self.violated.clear();
        self.note();
    }
}

/// Starts the watcher's three watches; each keeps `Watched` current.
fn watch(rt: &tokio::runtime::Runtime, client: &kube::Client, seen: Arc<Mutex<Watched>>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let s = seen.clone();
    rt.spawn(async move {
        let mut stream =
            watcher(nodes, watcher::Config::default().labels("!node-role.kubernetes.io/control-plane"))
                .boxed();
        while let Some(ev) = stream.next().await {
            let mut w = s.lock().unwrap();
            match ev {
                Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let zone = n
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
                        .unwrap_or_default();
                    if n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
                        w.cordoned.insert(name, zone);
                    } else {
                        w.cordoned.remove(&name);
                    }
                }
                Ok(watcher::Event::Delete(n)) => {
                    w.cordoned.remove(&n.metadata.name.unwrap_or_default());
                }
                _ => {}
            }
            w.note();
        }
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let s = seen.clone();
    rt.spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let mut w = s.lock().unwrap();
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let unschedulable =
                        p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                            c.iter().any(|c| {
                                c.type_ == "PodScheduled"
                                    && c.status == "False"
                                    && c.reason.as_deref() == Some("Unschedulable")
                            })
                        });
                    if unschedulable {
                        w.no_room.insert(uid.clone());
                    } else {
                        w.no_room.remove(&uid);
                    }
                    if refit_testbed::workloads::pod_is_ready(&p) {
                        w.ready.insert(uid);
                    } else {
                        w.ready.remove(&uid);
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    let uid = p.metadata.uid.unwrap_or_default();
                    w.no_room.remove(&uid);
                    w.ready.remove(&uid);
                }
                _ => {}
            }
            w.note();
        }
    });
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    rt.spawn(async move {
        let mut stream = watcher(pdbs, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let mut w = seen.lock().unwrap();
            if let Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b)) = ev {
                let name = b.metadata.name.clone().unwrap_or_default();
                let current = b.metadata.generation == b.status.as_ref().and_then(|s| s.observed_generation);
                let short = b.status.as_ref().is_some_and(|s| s.current_healthy < s.desired_healthy);
                if current && short {
                    w.below.insert(name);
                } else {
                    w.below.remove(&name);
                }
            }
            w.note();
        }
    });
}

/// A Deployment of `replicas` pods labelled `app: NAME, bench: rollout`.
fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "bench": "rollout"}},
                "spec": {"containers": [{
                    "name": "app", "image": "registry.k8s.io/pause:3.10.1",
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                }]},
            },
        },
    })
}

fn budget(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": name}});
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

/// One row of the table.
struct Row {
    name: String,
    /// Measured seconds, and the total for every worker (extrapolated when partial).
    measured: f64,
    total: f64,
    /// Workers the measured part covered.
    nodes: usize,
    largest_batch: usize,
    most_cordoned: usize,
    violations: usize,
    no_room: usize,
    zones: usize,
    refusals: usize,
}

fn at(e: &Value) -> Option<jiff::Timestamp> {
    e["at"].as_str().and_then(|s| s.parse().ok())
}

fn main() {
    let workers = env("REFIT_BENCH_WORKERS", 200);
    let action_secs = env("REFIT_BENCH_ACTION_SECS", 3);
    let peer_nodes = env("REFIT_BENCH_PEER_NODES", 10).min(workers);
    let one_secs = env("REFIT_BENCH_ONE_SECS", 150);
    // Fewer Deployments of each kind (a quick check of the bench itself).
    let div = env("REFIT_BENCH_APPS_DIV", 1).max(1);
    let runs: Vec<String> = std::env::var("REFIT_BENCH_RUNS")
        .unwrap_or_else(|_| "10%,25%,auto,1".into())
        .split(',')
        .map(str::to_string)
        .collect();
    if let Ok(dir) = std::env::var("REFIT_BENCH_REPLAY") {
        // No cluster: the breakdown and this build's ETA model over runs recorded with
        // REFIT_BENCH_TRACE.
        for setting in &runs {
            let file =
                std::path::Path::new(&dir).join(format!("refit-{}.ndjson", setting.replace('%', "pct")));
            let Ok(text) = std::fs::read_to_string(&file) else {
                println!("  --max-unavailable {setting:5}: no trace at {}", file.display());
                continue;
            };
            let events: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            println!("{}", replay(setting, &events, workers));
            println!("{}", breakdown(setting, &events, workers));
        }
        return;
    }
    let versions = TestbedVersions::from_env().unwrap();
    let to = versions.kubernetes_for_minor(MinorVersion::new(1, 37)).unwrap().clone();
    let from = versions.kubernetes_for_minor(MinorVersion::new(1, 36)).unwrap().clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig::new(to.clone(), workers).worker_version(from.clone())))
        .unwrap();
    let client = rt.block_on(tb.client()).unwrap();
    println!("testbed: {workers} workers in {:.0} s", started.elapsed().as_secs_f64());
    let seen: Arc<Mutex<Watched>> = Default::default();
    watch(&rt, &client, seen.clone());
    // Waits (from the watcher's view: no lists of thousands of pods) until `n` pods are Ready.
    let wait_ready = |n: usize| {
        let t = Instant::now();
        while seen.lock().unwrap().ready.len() < n {
            assert!(t.elapsed() < Duration::from_secs(1800), "{n} pods not Ready in 30 minutes");
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let mut pods = 0usize;
    // Every Deployment's name (the floor deletes their pods one Deployment at a time).
    let mut apps: Vec<String> = Vec::new();
    let t = Instant::now();
    rt.block_on(async {
        tb.create_namespace(NS).await.unwrap();
        let mut objects: Vec<(Value, Option<Value>)> = Vec::new();
        for i in 0..40 / div {
            let n = format!("tight-{i:02}");
            objects.push((deployment(&n, 3), Some(budget(&n, json!({"maxUnavailable": 1})))));
            let n = format!("quorum-{i:02}");
            objects.push((deployment(&n, 5), Some(budget(&n, json!({"minAvailable": 4})))));
        }
        for i in 0..20 / div {
            let n = format!("pct-{i:02}");
            objects.push((deployment(&n, 50), Some(budget(&n, json!({"maxUnavailable": "10%"})))));
        }
        for i in 0..47 / div {
            objects.push((deployment(&format!("free-{i:02}"), 100), None));
        }
        for (d, b) in objects {
            pods += d["spec"]["replicas"].as_u64().unwrap() as usize;
            apps.extend(d["metadata"]["name"].as_str().map(str::to_string));
            if let Some(b) = b {
                apply::<PodDisruptionBudget>(&client, b).await.unwrap();
            }
            apply::<k8s_openapi::api::apps::v1::Deployment>(&client, d).await.unwrap();
        }
    });
    wait_ready(pods);
    let pdbs = (40 + 40 + 20) / div;
    println!("workloads: {pods} pods Ready in {:.0} s ({pdbs} PDBs)", t.elapsed().as_secs_f64());

    let tmp = tempfile::tempdir().unwrap();
    let refit_bin = env!("CARGO_BIN_EXE_refit");
    let script = tmp.path().join("upgrade-node.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep {action_secs}\nexec '{refit_bin}' sandbox upgrade-node --dir '{}' \"$1\" --to \"$2\" >/dev/null\n",
            tb.dir().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kubeconfig = tb.kubeconfig();
    let kubectl = tb.kubectl(&to).unwrap();

    // Every worker back one minor behind, and every pod Ready, before each run.
    let reset = |n: usize| {
        rt.block_on(async {
            for i in 1..=n {
                tb.set_node_version(&format!("worker-{i:03}"), &from, &from).await.unwrap();
            }
        });
        wait_ready(pods);
        // Let the disruption controller catch up with the last replacements.
        std::thread::sleep(Duration::from_secs(10));
        seen.lock().unwrap().reset();
    };
    let watched = |row: &mut Row| {
        let w = seen.lock().unwrap();
        row.most_cordoned = w.most_cordoned;
        row.violations = w.violated.len();
        row.no_room = w.most_no_room;
        row.zones = w.most_zones;
    };

    let mut rows: Vec<Row> = Vec::new();
    let mut eta_report: Vec<String> = Vec::new();
    let mut breakdowns: Vec<String> = Vec::new();
    let mut eta_replays: Vec<String> = Vec::new();

    // The peer: one node after the other, as the shell loops in runbooks do.
    seen.lock().unwrap().reset();
    let t = Instant::now();
    for i in 1..=peer_nodes {
        let node = format!("worker-{i:03}");
        let ok = |c: &mut Command| {
            let out = c.stdin(Stdio::null()).output().unwrap();
            if !out.status.success() {
                eprintln!("{c:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            out.status.success()
        };
        assert!(ok(Command::new(&kubectl)
            .args(["drain", &node, "--ignore-daemonsets", "--delete-emptydir-data", "--kubeconfig"])
            .arg(&kubeconfig)));
        assert!(ok(Command::new(&script).args([&node, &to.to_string()])));
        assert!(ok(Command::new(&kubectl).args(["uncordon", &node, "--kubeconfig"]).arg(&kubeconfig)));
    }
    let secs = t.elapsed().as_secs_f64();
    let mut row = Row {
        name: format!("kubectl drain/action/uncordon loop ({peer_nodes} nodes, extrapolated)"),
        measured: secs,
        total: secs / peer_nodes as f64 * workers as f64,
        nodes: peer_nodes,
        largest_batch: 1,
        most_cordoned: 0,
        violations: 0,
        no_room: 0,
        zones: 0,
        refusals: 0,
    };
    watched(&mut row);
    eprintln!("done: {} — {:.1} s measured, {:.1} s for every worker", row.name, row.measured, row.total);
    rows.push(row);
    reset(peer_nodes);

    for setting in &runs {
        let one = setting == "1";
        let mut cmd = Command::new(refit_bin);
        cmd.args(["upgrade", "--to", &to.to_string(), "--yes", "--max-unavailable", setting])
            .args(["--skip-cluster-services", "--action"])
            .arg(format!("exec:{} {{node}} {{to}}", script.display()))
            .args(["-o", "json", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--store")
            .arg(tmp.path().join(format!("refit-{}.db", setting.replace('%', "pct"))));
        if one {
            let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(one_secs as i64);
            cmd.args(["--not-after", &deadline.to_string()]);
        }
        let t = Instant::now();
        let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().unwrap();
        let secs = t.elapsed().as_secs_f64();
        let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let Ok(dir) = std::env::var("REFIT_BENCH_TRACE") {
            let file =
                std::path::Path::new(&dir).join(format!("refit-{}.ndjson", setting.replace('%', "pct")));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &out.stdout).unwrap();
        }
        let upgraded =
            events.iter().filter(|e| e["event"] == "unit-finished" && e["result"] == "upgraded").count();
        breakdowns.push(breakdown(setting, &events, workers));
        eta_replays.push(replay(setting, &events, workers));
        if !one {
            if !out.status.success() {
                // What went wrong, before the store's directory is gone.
                for e in events.iter().filter(|e| {
                    (e["event"] == "unit-finished" && e["result"] != "upgraded")
                        || ["run-finished", "batch-held", "step-failed", "summary"]
                            .contains(&e["event"].as_str().unwrap_or_default())
                }) {
                    eprintln!("{e}");
                }
                panic!("refit upgrade --max-unavailable {setting} failed");
            }
            assert_eq!(upgraded, workers, "every worker upgraded once");
        }
        // Under auto the window slides: the most nodes in flight at once (those chosen and
        // the ones under way they join), from refit's own events.
        let largest = events
            .iter()
            .filter(|e| e["event"] == "batch-chosen")
            .filter_map(|e| {
                let joined = e["nodes"].as_array().map(Vec::len)?;
                Some(joined + e["in_flight"].as_u64().unwrap_or(0) as usize)
            })
            .max()
            .unwrap_or_else(|| {
                events
                    .iter()
                    .find(|e| e["event"] == "stage-started")
                    .and_then(|e| e["concurrency"].as_u64())
                    .unwrap_or(0) as usize
            });
        let refusals = events.iter().filter(|e| e["event"] == "blocked").count();
        let stage = |name: &str| events.iter().find(|e| e["event"] == name).and_then(at);
        // The ETA after 10% of the workers, against the run's actual end.
        let mut finished = 0usize;
        let tenth = workers.div_ceil(10);
        let end = events.iter().rev().find(|e| e["event"] == "run-finished").and_then(at);
        for e in &events {
            if e["event"] == "unit-finished" {
                finished += 1;
            }
            if e["event"] == "eta" && finished >= tenth {
                if let (Some(sent), Some(end)) = (at(e), end) {
                    let predicted = e["ends_in_secs"].as_f64().unwrap_or(0.0);
                    let actual = end.duration_since(sent).as_secs_f64();
                    let begun = stage("run-started").unwrap_or(sent);
                    let whole = actual + sent.duration_since(begun).as_secs_f64();
                    eta_report.push(format!(
                        "  --max-unavailable {setting:5}: after {finished} workers the ETA said {predicted:.0} s left; the run ended {actual:.1} s later: error {:+.1}% of the time left, {:+.1}% of the whole run",
                        (predicted - actual) / actual * 100.0,
                        (predicted - actual) / whole * 100.0
                    ));
                }
                break;
            }
        }
        let total = if one {
            // Sequential: the worker phase per upgraded node × every worker, plus the
            // command's own time around it (preflight, journal, summary).
            let (Some(s), Some(e)) = (stage("stage-started"), end) else { panic!("no stage in {events:?}") };
            let phase = e.duration_since(s).as_secs_f64();
            secs - phase + phase / upgraded.max(1) as f64 * workers as f64
        } else {
            secs
        };
        let mut row = Row {
            name: if one {
                format!("refit --max-unavailable 1 ({upgraded} nodes in {one_secs} s, extrapolated)")
            } else {
                format!("refit --max-unavailable {setting}")
            },
            measured: secs,
            total,
            nodes: upgraded,
            largest_batch: largest,
            most_cordoned: 0,
            violations: 0,
            no_room: 0,
            zones: 0,
            refusals,
        };
        watched(&mut row);
        eprintln!("done: {} — {:.1} s measured, {:.1} s for every worker", row.name, row.measured, row.total);
        rows.push(row);
        reset(workers);
    }

    println!();
    println!(
        "rollout of {workers} workers (3 zones), {pods} pods, {pdbs} PDBs, simulated action {action_secs} s; independent watcher"
    );
    println!(
        "{:62} {:>9} {:>9} {:>6} {:>7} {:>6} {:>7} {:>5} {:>8} {:>8}",
        "run", "measured", "total s", "batch", "unsched", "viol.", "no-room", "zones", "429s", "vs 1"
    );
    let one = rows.iter().find(|r| r.name.contains("unavailable 1 ")).map(|r| r.total);
    for r in &rows {
        println!(
            "{:62} {:>8.1}s {:>8.1}s {:>6} {:>7} {:>6} {:>7} {:>5} {:>8} {:>8}",
            r.name,
            r.measured,
            r.total,
            r.largest_batch,
            r.most_cordoned,
            r.violations,
            r.no_room,
            r.zones,
            r.refusals,
            one.map(|o| format!("{:.1}×", o / r.total)).unwrap_or_default()
        );
        let _ = r.nodes;
    }
    let auto = rows.iter().find(|r| r.name.ends_with("auto")).map(|r| r.total);
    let fastest =
        rows.iter().filter(|r| r.name.ends_with('%')).map(|r| r.total).fold(f64::INFINITY, f64::min);
    let peer = rows.first().map(|r| r.total);
    if let (Some(a), Some(o), Some(p)) = (auto, one, peer) {
        println!(
            "auto: {:.1}× faster than --max-unavailable 1 (goal ≥ 10×), {:.2}× the fastest fixed setting (goal ≤ 1.1×), {:.1}× faster than the kubectl loop",
            o / a,
            a / fastest,
            p / a
        );
    }
    println!("ETA accuracy (first ETA after 10% of the workers vs the actual end):");
    for l in &eta_report {
        println!("{l}");
    }
    for l in &eta_replays {
        println!("{l}");
    }
    println!("where the time went (per upgraded node, from refit's events):");
    for b in &breakdowns {
        println!("{b}");
    }
    println!(
        "columns: batch = largest batch refit started (auto: most nodes in flight at once in its sliding window); unsched = most workers unschedulable at once, viol. = PDBs seen with fewer healthy pods than required, no-room = most pods Pending as Unschedulable at once, zones = most zones with an unschedulable worker at once (all four from the watcher); 429s = evictions refused by a PDB (refit's events)"
    );
    // The testbed's pod churn, measured last (after the table is out): every bench pod deleted
    // at once (as evictions delete them, with their grace period; one request per Deployment's
    // pods, 8 at a time — a single delete of thousands outlasts the client's timeout), until as
    // many replacements are Ready. Any rollout moves every pod at least once, so none can end
    // sooner on this testbed: `1`'s time over this is the most any setting can gain over `1`.
    if std::env::var("REFIT_BENCH_FLOOR").as_deref() != Ok("0") {
        let before: BTreeSet<String> = seen.lock().unwrap().ready.clone();
        let t = Instant::now();
        let failed = rt.block_on(async {
            let api: Api<Pod> = Api::namespaced(client.clone(), NS);
            futures::stream::iter(apps.iter())
                .map(|app| {
                    let api = api.clone();
                    async move {
                        let lp = kube::api::ListParams::default().labels(&format!("app={app}"));
                        api.delete_collection(&Default::default(), &lp).await.err()
                    }
                })
                .buffer_unordered(8)
                .filter_map(|e| async move { e })
                .collect::<Vec<_>>()
                .await
        });
        for e in &failed {
            eprintln!("floor: a delete failed: {e}");
        }
        let deadline = Duration::from_secs(1800);
        let secs = loop {
            let fresh = seen.lock().unwrap().ready.difference(&before).count();
            if fresh >= pods {
                break Some(t.elapsed().as_secs_f64());
            }
            if t.elapsed() > deadline {
                println!("floor: {fresh} of {pods} replacements Ready after {deadline:?}; not measured");
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if let Some(f) = secs {
            println!(
                "floor: all {pods} pods deleted at once and as many replacements Ready in {f:.1} s ({:.1} pods/s, the testbed's churn): no rollout that moves every pod can end sooner here{}",
                pods as f64 / f,
                one.map(|o| format!(
                    "; --max-unavailable 1 / floor = {:.1}× is the most any setting can gain over 1 on this machine",
                    o / f
                ))
                .unwrap_or_default()
            );
        }
    }
}

/// Seconds between two events' timestamps.
fn secs_between(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    b.duration_since(a).as_secs_f64()
}

/// What held an `auto` window, from a `batch-chosen` limit or a `batch-held` reason.
fn hold_kind(text: &str) -> &'static str {
    if text.contains("disruption budget") {
        "budget"
    } else if text.contains("no room") {
        "room"
    } else if text.contains("other zones") {
        "zone change"
    } else if text.contains("no other worker of its zone") {
        "zone exhausted"
    } else if text.contains("cap") {
        "cap"
    } else {
        "other"
    }
}

/// Where one run's time went (see the module's documentation).
fn breakdown(setting: &str, events: &[Value], workers: usize) -> String {
    let mut steps: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut unit = (0.0, 0usize);
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    // Per node: when its drain started, when its last pod was evicted.
    let mut drain_start: BTreeMap<String, jiff::Timestamp> = BTreeMap::new();
    let mut last_evicted: BTreeMap<String, jiff::Timestamp> = BTreeMap::new();
    let (mut evicting, mut gone, mut drains) = (0.0, 0.0, 0usize);
    // The window: +1 at a node's first step, -1 at its end; idle slots by the last hold.
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut last: Option<jiff::Timestamp> = None;
    let (mut area, mut span) = (0.0, 0.0);
    let mut held: &'static str = "start";
    let mut idle: BTreeMap<&'static str, f64> = BTreeMap::new();
    let cap = events
        .iter()
        .find(|e| e["event"] == "stage-started" && e["phase"] == "workers")
        .and_then(|e| e["concurrency"].as_u64())
        .unwrap_or(1) as f64;
    for e in events {
        let Some(t) = at(e) else { continue };
        let node = e["node"].as_str().unwrap_or_default().to_string();
        let kind = e["event"].as_str().unwrap_or_default();
        // Time since the last event, at the window's width until now.
        let started = kind == "step-started" && !in_flight.contains(&node);
        if let Some(l) = last.filter(|_| !in_flight.is_empty() || started) {
            let dt = secs_between(l, t);
            area += dt * in_flight.len() as f64;
            span += dt;
            *idle.entry(held).or_default() += dt * (cap - in_flight.len() as f64).max(0.0);
        }
        last = Some(t);
        match kind {
            "step-started" => {
                in_flight.insert(node.clone());
                if e["step"] == "drain" {
                    drain_start.insert(node, t);
                }
            }
            "evicted" => {
                last_evicted.insert(node, t);
            }
            "blocked" => {
                *refused.entry(e["pdb"].as_str().unwrap_or("(no budget)").to_string()).or_default() += 1;
            }
            "step-done" => {
                let step = e["step"].as_str().unwrap_or_default().to_string();
                let s = steps.entry(step.clone()).or_default();
                s.0 += e["millis"].as_f64().unwrap_or(0.0) / 1000.0;
                s.1 += 1;
                if step == "drain"
                    && let Some(start) = drain_start.remove(&node)
                {
                    let evicted = last_evicted.remove(&node).unwrap_or(start);
                    evicting += secs_between(start, evicted);
                    gone += secs_between(evicted, t);
                    drains += 1;
                }
            }
            "unit-finished" => {
                in_flight.remove(&node);
                if e["result"] == "upgraded" {
                    unit.0 += e["millis"].as_f64().unwrap_or(0.0) / 1000.0;
                    unit.1 += 1;
                }
            }
            "batch-chosen" => held = hold_kind(e["limit"].as_str().unwrap_or_default()),
            "batch-held" => held = hold_kind(e["reason"].as_str().unwrap_or_default()),
            _ => {}
        }
    }
    let per = |total: f64, n: usize| if n == 0 { 0.0 } else { total / n as f64 };
    let mut out = format!(
        "  --max-unavailable {setting:5}: {} nodes, {:.1} s each in flight, {:.1} in flight on average over {:.0} s",
        unit.1,
        per(unit.0, unit.1),
        if span > 0.0 { area / span } else { 0.0 },
        span
    );
    let listed: f64 = steps.values().map(|(t, n)| per(*t, *n)).sum();
    let mut parts: Vec<String> =
        steps.iter().map(|(name, (t, n))| format!("{name} {:.2}", per(*t, *n))).collect();
    parts.push(format!(
        "(drain: evicting {:.2}, pods going {:.2})",
        per(evicting, drains),
        per(gone, drains)
    ));
    parts.push(format!("between steps {:.2}", per(unit.0, unit.1) - listed));
    out.push_str(&format!("\n      steps (s/node): {}", parts.join(", ")));
    // Every eviction is a pod deleted by the simulated kubelet, recreated by its ReplicaSet,
    // scheduled and made Ready: the cluster's pod churn, which bounds every setting alike.
    let evicted = events.iter().filter(|e| e["event"] == "evicted").count();
    let run_secs = match (
        events.iter().find(|e| e["event"] == "stage-started").and_then(at),
        events.iter().rev().find(|e| e["event"] == "run-finished").and_then(at),
    ) {
        (Some(a), Some(b)) => secs_between(a, b),
        _ => 0.0,
    };
    out.push_str(&format!(
        "\n      pods evicted: {evicted}, {:.1} per second of the worker stage",
        if run_secs > 0.0 { evicted as f64 / run_secs } else { 0.0 }
    ));
    // Whether later nodes carried more: each node's evictions, nodes in the order they
    // started, averaged per tenth of the run.
    let mut order: Vec<String> = Vec::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        let node = e["node"].as_str().unwrap_or_default();
        match e["event"].as_str().unwrap_or_default() {
            "step-started" if !order.iter().any(|n| n == node) => order.push(node.to_string()),
            "evicted" => *per_node.entry(node.to_string()).or_default() += 1,
            _ => {}
        }
    }
    if !order.is_empty() {
        let tenth = order.len().div_ceil(10);
        let means: Vec<String> = order
            .chunks(tenth)
            .map(|c| {
                let sum: usize = c.iter().map(|n| per_node.get(n).copied().unwrap_or(0)).sum();
                format!("{:.0}", sum as f64 / c.len() as f64)
            })
            .collect();
        out.push_str(&format!("\n      pods evicted per node, by tenth of the run: {}", means.join(" ")));
    }
    let refusals: usize = refused.values().sum();
    out.push_str(&format!(
        "\n      evictions refused by a budget: {refusals} ({:.1} per node",
        per(refusals as f64, workers)
    ));
    if let Some((pdb, n)) = refused.iter().max_by_key(|(_, n)| **n) {
        out.push_str(&format!("; most: {pdb} {n}"));
    }
    out.push(')');
    if setting == "auto" {
        let total: f64 = idle.values().sum();
        let parts: Vec<String> = idle.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
        out.push_str(&format!(
            "\n      idle slots of the cap ({cap:.0}), slot-seconds by what held the window: {} (total {total:.0})",
            parts.join(", ")
        ));
    }
    out
}

/// This build's ETA model replayed over a run's events (what the engine reports to
/// [`refit_core::eta::Live`]: each choice's nodes in flight, each unit's end and time), and its
/// error against the run's actual end after 10%, 25%, 50% and 75% of the workers. Lets a change to
/// the model be judged on a recorded run (`REFIT_BENCH_REPLAY=DIR`) without running it again.
fn replay(setting: &str, events: &[Value], workers: usize) -> String {
    use refit_core::eta::{Estimate, Live};
    let stage_start = events.iter().find(|e| e["event"] == "stage-started" && e["phase"] == "workers");
    let (Some(t0), Some(end)) =
        (stage_start.and_then(at), events.iter().rev().find(|e| e["event"] == "run-finished").and_then(at))
    else {
        return format!("  --max-unavailable {setting:5}: no worker stage or no end in the trace");
    };
    let concurrency = stage_start.and_then(|e| e["concurrency"].as_u64()).unwrap_or(1) as usize;
    let version = refit_core::Version::new(1, 37, 1);
    let auto = (setting == "auto").then_some(refit_core::batch::Auto {
        cap: refit_core::plan::MaxUnavailable::Count(u32::try_from(concurrency).unwrap_or(u32::MAX)),
        across_zones: false,
    });
    let schedule = refit_core::run::Schedule {
        target: version.clone(),
        stages: vec![refit_core::run::Stage {
            phase: refit_core::plan::PhaseKind::Workers,
            to: version.clone(),
            concurrency,
            units: (0..workers)
                .map(|i| refit_core::run::UnitWork {
                    node: format!("worker-{i:03}"),
                    roles: Default::default(),
                    from: "v1.36.0".into(),
                    to: version.clone(),
                    steps: Vec::new(),
                    external: false,
                    first_control_plane: false,
                })
                .collect(),
            auto,
            surge: None,
        }],
        cluster_services: false,
        excluded: Vec::new(),
    };
    let mut live = Live::of(&schedule);
    // The engine reports every worker's zone from its first snapshot; the trace names the
    // zone of each batch chosen.
    live.zones(
        0,
        events.iter().filter(|e| e["event"] == "batch-chosen").flat_map(|e| {
            let zone = e["zone"].as_str().map(str::to_string);
            e["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |n| Some((n.as_str()?.to_string(), zone.clone()?)))
        }),
    );
    let mut in_flight = 0usize;
    let mut finished = 0usize;
    let mut marks = vec![workers.div_ceil(10), workers.div_ceil(4), workers.div_ceil(2), workers * 3 / 4]
        .into_iter()
        .peekable();
    let mut out = Vec::new();
    for e in events {
        let Some(t) = at(e) else { continue };
        let now = Duration::from_secs_f64(secs_between(t0, t).max(0.0));
        match e["event"].as_str().unwrap_or_default() {
            "batch-chosen" => {
                let chosen = e["nodes"].as_array().map_or(0, Vec::len);
                // Traces from before the choices carried their pods replay without them.
                if let (Some(pods), Some(left)) = (e["pods"].as_array(), e["pods_left"].as_u64()) {
                    let nodes = e["nodes"].as_array().into_iter().flatten().filter_map(|n| n.as_str());
                    let pods = pods.iter().map(|p| p.as_u64().unwrap_or(0) as usize);
                    // Traces from before the choices named their pacing budgets replay without.
                    let pacing = serde_json::from_value(e["pacing"].clone()).unwrap_or_default();
                    live.load(0, nodes.map(str::to_string).zip(pods), left as usize, pacing, now);
                }
                in_flight = e["in_flight"].as_u64().unwrap_or(0) as usize + chosen;
                live.in_flight(0, in_flight, now);
            }
            "evicted" => live.evicted(e["node"].as_str().unwrap_or_default()),
            "unit-finished" => {
                let upgraded = (e["result"] == "upgraded")
                    .then(|| Duration::from_millis(e["millis"].as_u64().unwrap_or(0)));
                live.unit_ended(0, e["node"].as_str().unwrap_or_default(), upgraded, now);
                in_flight = in_flight.saturating_sub(1);
                live.in_flight(0, in_flight, now);
                finished += 1;
                if marks.peek() == Some(&finished) {
                    marks.next();
                    let predicted = live.eta(&Estimate::default()).ends_in.as_secs_f64();
                    let actual = secs_between(t, end);
                    out.push(format!(
                        "after {finished}: {predicted:.0} s vs {actual:.0} s ({:+.1}%)",
                        (predicted - actual) / actual * 100.0
                    ));
                }
            }
            _ => {}
        }
    }
    format!("  --max-unavailable {setting:5}: this build's model replayed: {}", out.join("; "))
}
