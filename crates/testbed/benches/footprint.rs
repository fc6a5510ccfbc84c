//! Testbed footprint: warm start time and resident memory per component, for 20 and 200
//! workers (override with `REFIT_FOOTPRINT_WORKERS=20,200,1000`). Not a test: it prints
//! numbers for the closing notes and asserts nothing about time.
//!
//! Run: `cargo bench -p refit-testbed --bench footprint`

use std::time::{Duration, Instant};

use refit_testbed::{Testbed, TestbedConfig, default_version};

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn self_rss_kib() -> u64 {
    rss_kib(std::process::id() as i32)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("REFIT_FOOTPRINT_WORKERS")
        .unwrap_or_else(|_| "20,200".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let version = default_version().unwrap();
    println!("testbed footprint, Kubernetes v{version}, 1 control-plane member");
    println!("{:>8} {:>10} {:>12}  per component (MiB)", "workers", "start (s)", "total (MiB)");
    for workers in sizes {
        let started = Instant::now();
        let tb = rt.block_on(Testbed::start(TestbedConfig::new(version.clone(), workers))).unwrap();
        let start_s = started.elapsed().as_secs_f64();
        // Let the controllers settle (kube-proxy DaemonSet pods, leases) before measuring.
        std::thread::sleep(Duration::from_secs(20));
        let mut parts: Vec<(String, u64)> =
            tb.process_status().into_iter().map(|(name, (pid, _))| (name, rss_kib(pid))).collect();
        parts.push(("harness (lb)".into(), self_rss_kib()));
        parts.sort();
        let total: u64 = parts.iter().map(|(_, k)| k).sum();
        let detail: Vec<String> = parts.iter().map(|(n, k)| format!("{n}={}", k / 1024)).collect();
        println!("{workers:>8} {start_s:>10.1} {:>12}  {}", total / 1024, detail.join(" "));
        drop(tb);
    }
}
