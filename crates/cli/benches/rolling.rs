//! A rolling upgrade of many workers: refit's wall time against the ideal, and against the
//! peer — a sequential shell loop of `kubectl drain`, the same per-node action, and `kubectl
//! uncordon` — on the same testbed in the same run. Also apiserver requests per node.
//!
//! The testbed's control plane is already at the target and its workers one minor behind, so
//! only the worker phase runs. The node action is a fixed simulated upgrade time
//! (REFIT_BENCH_ACTION_SECS, default 5 s, a sleep) followed by `refit sandbox upgrade-node`.
//! The ideal is the batches' unavoidable time: ⌈workers / max-unavailable⌉ × the measured mean
//! action time. The peer loop runs over REFIT_BENCH_PEER_NODES workers (default 10) and is
//! reported per node and extrapolated to all workers (it is sequential, so it scales linearly).
//!
//! Not a test: it prints the numbers; it asserts nothing about time.
//! Run: `cargo bench -p refit-cli --bench rolling` (about 4 minutes on 2 cores).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use refit_core::MinorVersion;
use refit_testbed::workloads::{Budget, apply, deployment, pdb, wait_pods_ready};
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sum of `apiserver_request_total` for what an upgrade tool itself asks: pods (incl.
/// evictions), nodes and PDBs, without status writes (kwok's heartbeats, the action's own
/// version report) and pod creations (the ReplicaSet controller's, equal for both tools).
async fn tool_requests(client: &kube::Client) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    let mut sum = 0.0;
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |k: &str| {
            line.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string()
        };
        let resource = label("resource");
        let sub = label("subresource");
        let verb = label("verb");
        if !["pods", "nodes", "poddisruptionbudgets"].contains(&resource.as_str()) {
            continue;
        }
        if sub == "status" || sub == "binding" || (resource == "pods" && verb == "POST" && sub.is_empty()) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
        }
    }
    sum
}

fn main() {
    let workers = env("REFIT_BENCH_WORKERS", 100);
    let action_secs = env("REFIT_BENCH_ACTION_SECS", 5);
    let peer_nodes = env("REFIT_BENCH_PEER_NODES", 10).min(workers);
    let versions = TestbedVersions::from_env().unwrap();
    let to = versions.kubernetes_for_minor(MinorVersion::new(1, 37)).unwrap().clone();
    let from = versions.kubernetes_for_minor(MinorVersion::new(1, 36)).unwrap().clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig::new(to.clone(), workers).worker_version(from.clone())))
        .unwrap();
    let client = rt.block_on(tb.client()).unwrap();
    let pods = workers * 2;
    rt.block_on(async {
        tb.create_namespace("bench").await.unwrap();
        apply::<Deployment>(&client, deployment("bench", "web", pods as i32)).await.unwrap();
        apply::<PodDisruptionBudget>(&client, pdb("bench", "web", "web", Budget::MaxUnavailable(10)))
            .await
            .unwrap();
        wait_pods_ready(&client, "bench", "app=web", pods, std::time::Duration::from_secs(300))
            .await
            .unwrap();
    });
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
    println!(
        "testbed: control plane {to}, {workers} workers at {from}, {pods} pods under a PDB (maxUnavailable 10)"
    );

    // The peer: one node after the other, as the shell loops in runbooks do.
    let before = rt.block_on(tool_requests(&client));
    let started = Instant::now();
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
    let peer_secs = started.elapsed().as_secs_f64();
    let peer_requests = rt.block_on(tool_requests(&client)) - before;
    // Put those workers back one minor behind for refit.
    rt.block_on(async {
        for i in 1..=peer_nodes {
            tb.set_node_version(&format!("worker-{i:03}"), &from, &from).await.unwrap();
        }
    });

    // An independent watcher measures what no tool can shorten: from a pod's deletion being
    // requested (deletionTimestamp appears) to the pod being gone (kwok's termination here).
    let termination: std::sync::Arc<std::sync::Mutex<Vec<f64>>> = Default::default();
    let watch = {
        let termination = termination.clone();
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), "bench");
        rt.spawn(async move {
            use futures::StreamExt;
            let mut since: std::collections::HashMap<String, Instant> = Default::default();
            let mut stream = kube::runtime::watcher(api, Default::default()).boxed();
            while let Some(Ok(ev)) = stream.next().await {
                match ev {
                    kube::runtime::watcher::Event::Apply(p) if p.metadata.deletion_timestamp.is_some() => {
                        since.entry(p.metadata.uid.unwrap_or_default()).or_insert_with(Instant::now);
                    }
                    kube::runtime::watcher::Event::Delete(p) => {
                        if let Some(t) = since.remove(&p.metadata.uid.unwrap_or_default()) {
                            termination.lock().unwrap().push(t.elapsed().as_secs_f64());
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let before = rt.block_on(tool_requests(&client));
    let started = Instant::now();
    let out = Command::new(refit_bin)
        .args([
            "upgrade",
            "--to",
            &to.to_string(),
            "--yes",
            "--max-unavailable",
            "10%",
            "--skip-cluster-services",
        ])
        .args([
            "--action",
            &format!("exec:{} {{node}} {{to}}", script.display()),
            "-o",
            "json",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .arg("--store")
        .arg(tmp.path().join("refit.db"))
        .output()
        .unwrap();
    let refit_secs = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "refit upgrade failed: {}", String::from_utf8_lossy(&out.stderr));
    let refit_requests = rt.block_on(tool_requests(&client)) - before;
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let actions: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "step-done" && e["step"] == "upgrade")
        .filter_map(|e| e["millis"].as_f64())
        .collect();
    assert_eq!(actions.len(), workers, "every worker upgraded once");
    let mean_action = actions.iter().sum::<f64>() / actions.len() as f64 / 1000.0;
    let stage_secs = events
        .last()
        .and_then(|s| s["outcome"]["timings"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .find(|t| t[0].as_str().is_some_and(|p| p.starts_with("workers")))
        .and_then(|t| t[1].as_f64())
        .unwrap_or(0.0)
        / 1000.0;
    watch.abort();
    let term = termination.lock().unwrap().clone();
    let mean_term = if term.is_empty() { 0.0 } else { term.iter().sum::<f64>() / term.len() as f64 };
    let batch = (workers / 10).max(1);
    let ideal = workers.div_ceil(batch) as f64 * mean_action;
    let ideal_term = workers.div_ceil(batch) as f64 * (mean_action + mean_term);
    // A node cannot be upgraded before its pods have left it: counting each node's own drain
    // as unavoidable too gives the ideal of a tool that only overlaps what can be overlapped.
    let mean_drain = events
        .iter()
        .filter(|e| e["event"] == "step-done" && e["step"] == "drain")
        .filter_map(|e| e["millis"].as_f64())
        .sum::<f64>()
        / workers as f64
        / 1000.0;
    let ideal_drain = workers.div_ceil(batch) as f64 * (mean_action + mean_drain);
    let peer_per_node = peer_secs / peer_nodes as f64;
    let peer_total = peer_per_node * workers as f64;

    println!();
    println!(
        "rolling upgrade of {workers} workers, --max-unavailable 10% ({batch} at once), simulated action {action_secs} s"
    );
    println!("  mean action time (measured)        {mean_action:8.2} s");
    println!("  ideal (⌈{workers}/{batch}⌉ × action)            {ideal:8.1} s");
    println!(
        "  pod termination (independent watcher: deletion requested → gone), mean of {}: {mean_term:.2} s",
        term.len()
    );
    println!("  ideal incl. termination (⌈{workers}/{batch}⌉ × (action + termination)) {ideal_term:8.1} s");
    println!(
        "  refit: worker phase                {stage_secs:8.1} s   ratio to ideal {:.3}, to ideal incl. termination {:.3}",
        stage_secs / ideal,
        stage_secs / ideal_term
    );
    println!(
        "  ideal incl. each node's drain (⌈{workers}/{batch}⌉ × (action + drain {mean_drain:.2} s)) {ideal_drain:8.1} s   ratio {:.3}",
        stage_secs / ideal_drain
    );
    println!(
        "  refit: whole command               {refit_secs:8.1} s   (preflight, journal, summary included)"
    );
    println!(
        "  kubectl loop: {peer_nodes} nodes in {peer_secs:.1} s = {peer_per_node:.2} s/node → {peer_total:.0} s for {workers} (extrapolated; sequential)"
    );
    println!("  kubectl loop / refit (whole command) {:.1}×", peer_total / refit_secs);
    let mut per_step: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for e in events.iter().filter(|e| e["event"] == "step-done") {
        per_step
            .entry(e["step"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(e["millis"].as_f64().unwrap_or(0.0));
    }
    for (step, ms) in &per_step {
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        let max = ms.iter().cloned().fold(0.0, f64::max);
        println!("  refit step {step:10} mean {mean:7.0} ms  max {max:7.0} ms");
    }
    let blocked = events.iter().filter(|e| e["event"] == "blocked").count();
    println!("  PDB refusals reported: {blocked}");
    println!(
        "  apiserver requests per node (pods, nodes, PDBs; no status, no creates): kubectl loop {:.1}, refit {:.1} (ratio {:.2})",
        peer_requests / peer_nodes as f64,
        refit_requests / workers as f64,
        (refit_requests / workers as f64) / (peer_requests / peer_nodes as f64)
    );
}
