//! `refit plan` at scale, next to kubectl on the same testbed in the same run.
//!
//! Starts a testbed with 1,000 kwok workers (REFIT_BENCH_NODES) and 30,000 pods
//! (REFIT_BENCH_PODS, as Deployments of 100 replicas, every other one with a PDB), then
//! measures wall time and peak RSS (wait4's ru_maxrss) of:
//!   - the peer: `kubectl get pods -A -o json` (what any tool must at least read), and
//!   - refit: `refit plan --to <next minor> -o json`.
//!
//! Each with the apiserver's CPU seconds during it, after the floors: the apiserver alone
//! serving every pod, read as bytes (no decoding), in pages of 500 as JSON and as protobuf,
//! and unpaginated as protobuf (what refit asks for: the floor refit itself is measured
//! against).
//!
//! Not a test: it prints the numbers and their ratio; it asserts nothing about time.
//!
//! Run: `cargo bench -p refit-cli --bench plan_scale` (about 10 minutes on 2 cores at the
//! default size; `cargo bench` measures the release `refit` it builds). `cargo test -p refit-cli
//! --bench plan_scale` runs the harness from the debug build; `REFIT_BENCH_REFIT=PATH` then
//! names the `refit` binary measured (e.g. `target/release/refit` from `cargo build --release
//! -p refit-cli --bin refit`: users run a release build, not a debug one). The binary measured
//! is printed. `REFIT_BENCH_HOLD=FILE` keeps the populated testbed up (its kubeconfig printed)
//! while FILE exists, before measuring, for profiling requests by hand (or to measure only
//! once the machine is quiet). `REFIT_BENCH_CREATES=N` sets how many pod creates are in flight
//! at once (default 32); `REFIT_BENCH_ROUNDS` how many measuring rounds (default 2);
//! `REFIT_BENCH_SETTLE_SECS` caps the wait for a settled apiserver
//! (default 600: at 5,000 nodes the lease renewals alone keep it busier than the threshold);
//! workers beyond `REFIT_BENCH_NODE_CHUNK` (default 500) are added that many at a time (the
//! testbed waits 180 s for each start's workers to be Ready, and kwok readies a few per second
//! on a loaded 2-core machine: 5,000 at once did not make it).
//!
//! At the end of population and after each round it prints the testbed's own resident memory
//! (etcd, kube-apiserver, kwok, controller-manager, scheduler), which is what limits the size
//! this machine holds.

#![allow(unsafe_code)] // wait4(2) for per-child peak RSS

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PostParams};
use refit_testbed::workloads::{Budget, apply, pdb};
use refit_testbed::{Testbed, TestbedConfig, default_version};

/// Runs a command to completion; returns (wall seconds, peak RSS in MiB, exit code).
fn measure(cmd: &mut Command) -> (f64, f64, i32) {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and usage are valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    std::mem::forget(child); // already reaped
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (start.elapsed().as_secs_f64(), usage.ru_maxrss as f64 / 1024.0, code)
}

/// Retries a request that an overloaded 2-core apiserver timed out (a conflict means an
/// earlier attempt landed).
async fn retry<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let mut delay = Duration::from_millis(200);
    for attempt in 0.. {
        match f().await {
            Ok(v) => return v,
            Err(e) if attempt < 8 => {
                eprintln!("retrying after {e:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => panic!("gave up: {e:?}"),
        }
    }
    unreachable!()
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
fn cpu_seconds(pid: u64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<f64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    fields.get(11).zip(fields.get(12)).map_or(0.0, |(u, s)| (u + s) / ticks)
}

/// The encodings the floor is measured in.
#[derive(Clone, Copy)]
enum Wire {
    Json,
    Protobuf,
}

/// The apiserver serving every pod in pages of refit's size, read as bytes only (the continue
/// token picked out of the list's metadata, which the apiserver writes before the items): the
/// wall time of the server's side of the pod list, and its size.
async fn serve_pods(client: &kube::Client, wire: Wire, paged: bool) -> (f64, usize) {
    use refit_kube::snapshot::protobuf;
    let start = Instant::now();
    let mut token: Option<String> = None;
    let mut bytes = 0;
    loop {
        let limit = if paged { refit_kube::snapshot::PAGE_SIZE } else { 0 };
        let mut url = format!("/api/v1/pods?limit={limit}");
        if let Some(t) = &token {
            url.push_str(&format!("&continue={t}"));
        }
        let accept = match wire {
            Wire::Json => "application/json",
            Wire::Protobuf => protobuf::MEDIA_TYPE,
        };
        let request = http::Request::get(url).header(http::header::ACCEPT, accept).body(Vec::new()).unwrap();
        let response = client.send(request.map(kube::client::Body::from)).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let body = response.into_body().collect_bytes().await.unwrap();
        bytes += body.len();
        token = match wire {
            Wire::Json => {
                let head = String::from_utf8_lossy(&body[..body.len().min(4096)]);
                head.split("\"continue\":\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .filter(|t| !t.is_empty())
                    .map(String::from)
            }
            Wire::Protobuf => protobuf::continue_token(&body).unwrap(),
        };
        if token.is_none() {
            return (start.elapsed().as_secs_f64(), bytes);
        }
    }
}

/// Resident and peak resident memory of a process, in MiB, from /proc/PID/status.
fn rss_mib(pid: u64) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One line with the resident (and peak) memory of every testbed process.
fn testbed_memory(state: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    let mut total = 0.0;
    let mut collect = |name: &str, pid: Option<u64>| {
        if let Some(pid) = pid {
            let (rss, peak) = rss_mib(pid);
            total += rss;
            parts.push(format!("{name} {rss:.0} MiB (peak {peak:.0})"));
        }
    };
    for (name, pid) in state["members"][0]["pids"].as_object().into_iter().flatten() {
        collect(name, pid.as_u64());
    }
    for (name, pid) in state.as_object().into_iter().flatten() {
        if let Some(pid) = pid.as_u64().filter(|_| name.ends_with("pid")) {
            collect(name, Some(pid));
        }
    }
    format!("{} | total {total:.0} MiB", parts.join(", "))
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let nodes = env("REFIT_BENCH_NODES", 1000);
    let pods = env("REFIT_BENCH_PODS", 30_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let version = default_version().unwrap();
    let started = Instant::now();
    // kwok readies nodes at a few per second on a loaded 2-core machine, and the testbed
    // waits 180 s for its workers to be Ready: beyond 500 they are added 500 at a time.
    let chunk = env("REFIT_BENCH_NODE_CHUNK", 500).max(1);
    let tb = rt.block_on(Testbed::start(TestbedConfig::new(version.clone(), nodes.min(chunk)))).unwrap();
    let mut up = nodes.min(chunk);
    while up < nodes {
        let n = (nodes - up).min(chunk);
        let t = Instant::now();
        rt.block_on(tb.add_workers(tb.next_worker_specs(n, &version))).unwrap();
        up += n;
        println!("  {up} workers Ready ({n} more in {:.0}s)", t.elapsed().as_secs_f64());
    }
    println!("testbed: {nodes} workers in {:.0}s", started.elapsed().as_secs_f64());
    rt.block_on(async {
        tb.create_namespace("scale").await.unwrap();
        let client = tb.client().await.unwrap();
        // Pods are created already bound (nodeName set, round-robin) and owned by real
        // ReplicaSets whose selectors match none of them: the cluster then looks like 300
        // Deployments' worth of running pods without making the scheduler and the
        // ReplicaSet controller place 30,000 pods on 2 cores first.
        let per = 100;
        let groups = pods.div_ceil(per);
        let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "scale");
        let mut uids = Vec::new();
        let post = PostParams::default();
        for g in 0..groups {
            let name = format!("app-{g:04}");
            let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"rs": name}},
                         "template": {"metadata": {"labels": {"rs": name}},
                                      "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1"}]}}},
            }))
            .unwrap();
            let created = retry(|| rs_api.create(&post, &rs)).await;
            uids.push((name.clone(), created.metadata.uid.unwrap()));
            if g % 2 == 0 {
                retry(|| apply::<PodDisruptionBudget>(&client, pdb("scale", &name, &name, Budget::MaxUnavailable(10)))).await;
            }
        }
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), "scale");
        let t = Instant::now();
        let creates = (0..pods).map(|i| {
            let (rs, uid) = uids[i / per].clone();
            let pod_api = pod_api.clone();
            let post = PostParams::default();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("{rs}-{i:05}"), "labels": {"app": rs},
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uid, "controller": true}]},
                    "spec": {"nodeName": format!("worker-{:03}", 1 + i % nodes),
                             "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1",
                                             "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
                }))
                .unwrap();
                retry(|| pod_api.create(&post, &pod)).await;
            }
        });
        let mut created = futures::stream::iter(creates).buffer_unordered(env("REFIT_BENCH_CREATES", 32));
        let mut n = 0usize;
        while created.next().await.is_some() {
            n += 1;
            if n.is_multiple_of(10_000) {
                println!("  {n} pods created after {:.0}s", t.elapsed().as_secs_f64());
            }
        }
        println!("pods: {pods} created in {:.0}s", t.elapsed().as_secs_f64());
    });
    // Let kwok mark the pods Running and the disruption controller publish budgets, then wait
    // (up to 10 minutes) until the apiserver is down to the steady work of the cluster (lease
    // renewals of every node), so that neither tool is measured against a settling cluster.
    std::thread::sleep(Duration::from_secs(60));
    let state = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tb.dir().join("state.json")).unwrap()).unwrap()
    };
    println!("testbed memory: {}", testbed_memory(&state()));
    let state = state();
    let apiserver = state["members"][0]["pids"]["kube-apiserver"].as_u64().unwrap();
    let settle = Instant::now();
    let idle = loop {
        let c = cpu_seconds(apiserver);
        std::thread::sleep(Duration::from_secs(10));
        let busy = (cpu_seconds(apiserver) - c) / 10.0;
        if busy < 0.5 || settle.elapsed() > Duration::from_secs(env("REFIT_BENCH_SETTLE_SECS", 600) as u64) {
            break busy;
        }
    };
    println!(
        "settled after {:.0}s: the idle apiserver uses {idle:.2} cores (subtract from the CPU figures below)",
        settle.elapsed().as_secs_f64() + 60.0
    );
    if let Ok(hold) = std::env::var("REFIT_BENCH_HOLD") {
        println!("holding: KUBECONFIG={} (remove {hold} to continue)", tb.kubeconfig().display());
        while std::path::Path::new(&hold).exists() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let kubectl = tb.kubectl(&version).unwrap();
    let refit = std::env::var_os("REFIT_BENCH_REFIT")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_refit")), std::path::PathBuf::from);
    println!("measuring {}", refit.display());
    let target = format!("1.{}", version.minor + 1);
    let client = rt.block_on(tb.client()).unwrap();
    for round in 1..=env("REFIT_BENCH_ROUNDS", 2) {
        // Pages of 500 (what kubectl asks for: every page after the first is read from etcd),
        // and one unpaginated protobuf list (what refit asks for on 1.31+: the watch cache).
        for (wire, name, paged) in [
            (Wire::Json, "JSON", true),
            (Wire::Protobuf, "protobuf", true),
            (Wire::Protobuf, "protobuf", false),
        ] {
            let c0 = cpu_seconds(apiserver);
            let (st, bytes) = rt.block_on(serve_pods(&client, wire, paged));
            let how = if paged {
                format!("pages of {}", refit_kube::snapshot::PAGE_SIZE)
            } else {
                "unpaginated".into()
            };
            println!(
                "round {round}: floor, the apiserver serving all pods ({} MB {name}, {how}): {st:.2}s, apiserver CPU {:.2}s",
                bytes / 1_000_000,
                cpu_seconds(apiserver) - c0
            );
        }
        let c2 = cpu_seconds(apiserver);
        let (rt_, rm, rc) = measure(
            Command::new(&refit)
                .args([
                    "plan",
                    "--to",
                    &target,
                    "-o",
                    "json",
                    "--ignore-safety-checks",
                    "--max-unavailable",
                    "10%",
                    "--kubeconfig",
                ])
                .arg(tb.kubeconfig()),
        );
        let c3 = cpu_seconds(apiserver);
        println!(
            "round {round}: refit plan: {rt_:.2}s {rm:.0} MiB (exit {rc}, apiserver CPU {:.2}s)",
            c3 - c2
        );
        // kubectl last: at the largest sizes it needs the most memory of anything here (4.2 GiB
        // at 75,000 pods), and refit's figure is printed before it runs.
        let c1 = cpu_seconds(apiserver);
        let (kt, km, kc) = measure(
            Command::new(&kubectl)
                .args(["get", "pods", "-A", "-o", "json", "--kubeconfig"])
                .arg(tb.kubeconfig()),
        );
        let c4 = cpu_seconds(apiserver);
        println!(
            "round {round}: kubectl get pods -A -o json: {kt:.2}s {km:.0} MiB (exit {kc}, apiserver CPU {:.2}s) | refit plan: {rt_:.2}s {rm:.0} MiB (exit {rc}, apiserver CPU {:.2}s) | time ratio refit/kubectl {:.2}, memory ratio {:.2}",
            c4 - c1,
            c3 - c2,
            rt_ / kt,
            rm / km
        );
        println!("round {round}: testbed memory: {}", testbed_memory(&state));
    }
    drop(tb);
}
