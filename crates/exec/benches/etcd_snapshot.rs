//! etcd backup throughput: refit's snapshot (gRPC gateway, JSON + base64, verified while
//! streaming) against the peer, `etcdctl snapshot save` (native gRPC), on the same testbed
//! etcd grown to about `REFIT_BENCH_ETCD_MB` (default 100) MB. Prints numbers; asserts none.
//!
//! `cargo bench -p refit-exec --bench etcd_snapshot` (add `--profile dev` to skip the release
//! build of the whole tree).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use refit_exec::backup::{EtcdEndpoint, etcd_snapshot};
use refit_testbed::{Testbed, TestbedConfig, default_version};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mb: usize = std::env::var("REFIT_BENCH_ETCD_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tb = Testbed::start(TestbedConfig::new(default_version().expect("version"), 1))
            .await
            .expect("testbed");
        let (url, pki) = tb.etcd_endpoint();
        let ep = EtcdEndpoint {
            url: url.clone(),
            ca_file: pki.ca_cert.clone(),
            cert_file: pki.admin_cert.clone(),
            key_file: pki.admin_key.clone(),
        };
        let etcdctl = |args: &[&str]| {
            let mut c = Command::new(tb.etcdctl());
            c.arg(format!("--endpoints={url}"))
                .arg(format!("--cacert={}", pki.ca_cert.display()))
                .arg(format!("--cert={}", pki.admin_cert.display()))
                .arg(format!("--key={}", pki.admin_key.display()))
                .args(args);
            c
        };
        // Grow etcd with 1 MiB values (below etcd's 1.5 MiB request limit), pseudo-random so
        // nothing about them is special.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..mb {
            let value: String = (0..1_000_000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'a' + (seed % 26) as u8)
                })
                .collect();
            let mut child = etcdctl(&["put", &format!("/refit-bench/{i}")])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("etcdctl put");
            child.stdin.take().expect("stdin").write_all(value.as_bytes()).expect("write value");
            assert!(child.wait().expect("etcdctl").success(), "etcdctl put failed");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        let (mut our_bytes, mut peer_bytes) = (0, 0);
        for run in 0..3 {
            let start = Instant::now();
            let b = etcd_snapshot(std::slice::from_ref(&ep), dir.path(), &format!("refit-{run}"))
                .await
                .expect("refit snapshot");
            ours.push(start.elapsed());
            our_bytes = b.bytes;

            let path = dir.path().join(format!("etcdctl-{run}.db"));
            let start = Instant::now();
            let out = etcdctl(&["snapshot", "save"]).arg(&path).output().expect("etcdctl");
            assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
            peer.push(start.elapsed());
            peer_bytes = std::fs::metadata(&path).expect("etcdctl file").len();
        }
        if std::env::var_os("REFIT_BENCH_CURL").is_some() {
            for _ in 0..2 {
                let start = Instant::now();
                let out = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-X", "POST", "-d", "{}"])
                    .arg("--cacert")
                    .arg(&pki.ca_cert)
                    .arg("--cert")
                    .arg(&pki.admin_cert)
                    .arg("--key")
                    .arg(&pki.admin_key)
                    .arg(format!("{url}/v3/maintenance/snapshot"))
                    .output()
                    .expect("curl");
                println!(
                    "curl of the gateway stream (no decoding): {:.0} ms ({})",
                    start.elapsed().as_secs_f64() * 1e3,
                    out.status
                );
            }
        }
        let (o, p) = (median(ours), median(peer));
        let rate = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
        println!("etcd snapshot of a {mb} MB etcd (median of 3, same testbed):");
        println!(
            "  refit (gateway, verified)   {our_bytes:>11} bytes  {:>7.0} ms  {:>6.0} MB/s",
            o.as_secs_f64() * 1e3,
            rate(our_bytes, o)
        );
        println!(
            "  etcdctl snapshot save       {peer_bytes:>11} bytes  {:>7.0} ms  {:>6.0} MB/s",
            p.as_secs_f64() * 1e3,
            rate(peer_bytes, p)
        );
        println!("  refit / etcdctl time        {:.2}x", o.as_secs_f64() / p.as_secs_f64());
        tb.stop();
    });
}
