//! `refit plan` at scale, next to kubectl on the same testbed in the same run.
//!
//! Starts a testbed with 1,000 kwok workers (REFIT_BENCH_NODES) and 30,000 pods
//! (REFIT_BENCH_PODS, as Deployments of 100 replicas, every other one with a PDB), then
//! measures wall time and peak RSS (wait4's ru_maxrss) of:
//!   - the peer: `kubectl get pods -A -o json` (what any tool must at least read), and
//!   - refit: `refit plan --to <next minor> -o json`.
//!
//! Not a test: it prints the numbers and their ratio; it asserts nothing about time.
//!
//! Run: `cargo bench -p refit-cli --bench plan_scale` (about 10 minutes on 2 cores).

#![allow(unsafe_code)] // wait4(2) for per-child peak RSS

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use refit_testbed::workloads::{Budget, apply, deployment, pdb};
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

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let nodes = env("REFIT_BENCH_NODES", 1000);
    let pods = env("REFIT_BENCH_PODS", 30_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let version = default_version().unwrap();
    let started = Instant::now();
    let tb = rt.block_on(Testbed::start(TestbedConfig::new(version.clone(), nodes))).unwrap();
    println!("testbed: {nodes} workers in {:.0}s", started.elapsed().as_secs_f64());
    rt.block_on(async {
        tb.create_namespace("scale").await.unwrap();
        let client = tb.client().await.unwrap();
        let per = 100;
        let count = pods.div_ceil(per);
        for i in 0..count {
            let name = format!("app-{i:04}");
            let mut d = deployment("scale", &name, per as i32);
            d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "10m".into();
            apply::<Deployment>(&client, d).await.unwrap();
            if i % 2 == 0 {
                apply::<PodDisruptionBudget>(&client, pdb("scale", &name, &name, Budget::MaxUnavailable(10)))
                    .await
                    .unwrap();
            }
        }
        let api: Api<Pod> = Api::namespaced(client, "scale");
        let t = Instant::now();
        loop {
            let mut running = 0;
            let mut token: Option<String> = None;
            loop {
                let mut lp = ListParams::default().limit(5000);
                if let Some(t) = &token {
                    lp = lp.continue_token(t);
                }
                let page = api.list_metadata(&lp).await.unwrap();
                running += page.items.len();
                token = page.metadata.continue_.filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
            }
            if running >= pods || t.elapsed() > Duration::from_secs(1800) {
                println!("pods: {running} created in {:.0}s", t.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    // Let the scheduler and kwok settle.
    std::thread::sleep(Duration::from_secs(30));
    let kubectl = tb.kubectl(&version).unwrap();
    let refit = std::path::PathBuf::from(env!("CARGO_BIN_EXE_refit"));
    let target = format!("1.{}", version.minor + 1);
    for round in 1..=2 {
        let (kt, km, kc) = measure(
            Command::new(&kubectl)
                .args(["get", "pods", "-A", "-o", "json", "--kubeconfig"])
                .arg(tb.kubeconfig()),
        );
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
        println!(
            "round {round}: kubectl get pods -A -o json: {kt:.2}s {km:.0} MiB (exit {kc}) | refit plan: {rt_:.2}s {rm:.0} MiB (exit {rc}) | time ratio refit/kubectl {:.2}, memory ratio {:.2}",
            rt_ / kt,
            rm / km
        );
    }
    drop(tb);
}
