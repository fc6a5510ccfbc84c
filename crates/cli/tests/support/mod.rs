//! What the CLI's integration tests share: the real binary, the testbed's releases, and a
//! sandbox that is stopped however the test ends.
#![allow(dead_code)]

pub mod watcher;

use std::path::PathBuf;

use assert_cmd::Command;
use refit_core::MinorVersion;
use refit_testbed::TestbedVersions;

/// The `refit` binary under test.
pub fn refit() -> Command {
    Command::cargo_bin("refit").unwrap()
}

/// The testbed's release of minor 1.`minor`.
pub fn release(minor: u32) -> String {
    TestbedVersions::from_env()
        .unwrap()
        .kubernetes_for_minor(MinorVersion::new(1, minor))
        .unwrap()
        .to_string()
}

/// Whether the testbed set includes minor 1.`minor`.
pub fn has_minor(minor: u32) -> bool {
    TestbedVersions::from_env().unwrap().kubernetes_for_minor(MinorVersion::new(1, minor)).is_some()
}

/// Stops the sandbox even when an assertion fails, so no detached process outlives the test.
pub struct Sandbox(pub PathBuf);

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.0.join("state.json").exists() {
            let _ = refit().args(["sandbox", "down", "--dir"]).arg(&self.0).output();
        }
    }
}

/// `refit sandbox up` of a detached sandbox in `dir` (control planes, workers at `version`),
/// stopped when the returned guard drops.
pub fn sandbox_up(dir: &std::path::Path, version: &str, control_planes: usize, workers: usize) -> Sandbox {
    let out = refit()
        .args(["sandbox", "up", "--version", version, "--workers", &workers.to_string()])
        .args(["--control-plane", &control_planes.to_string(), "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let guard = Sandbox(dir.to_path_buf());
    assert!(out.status.success(), "sandbox up: {}", String::from_utf8_lossy(&out.stderr));
    guard
}

/// A kubeconfig whose server nothing serves: a command that contacts it fails, so one that is
/// refused as bad input provably refused before any cluster was contacted.
pub const DEAD_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:9\", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n";

/// Runs a command that must be refused as bad input: exit 2, one line, one `error:`, no panic.
pub fn refused(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "{c:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    err
}

/// Runs the command, asserts success, returns stdout.
pub fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the command, asserts success, parses stdout as JSON.
pub fn json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_str(&stdout(cmd)).unwrap()
}

/// A catalog file in `dir` (an air-gapped refresh, as an operator would pass with `--catalog`)
/// whose newest patch of `patch`'s minor is `patch`: a multi-hop path's intermediate hop is the
/// newest known patch of each minor, and this makes it the one the testbed built.
pub fn catalog_newest_at(dir: &std::path::Path, patch: &str) -> PathBuf {
    let shipped = include_str!("../../../../data/catalog.yaml");
    let (minor, p) = patch.rsplit_once('.').unwrap();
    let newer: Vec<String> =
        (p.parse::<u32>().unwrap() + 1..20).map(|p| format!(", \"{minor}.{p}\"")).collect();
    let trimmed = newer.iter().fold(shipped.to_string(), |t, n| t.replace(n.as_str(), ""));
    let path = dir.join("catalog.yaml");
    std::fs::write(&path, trimmed).unwrap();
    path
}

/// `refit upgrade`'s etcd backup flags for a testbed's own etcd (what an exec action, which
/// cannot back up by itself, is given; the sandbox action needs none).
pub fn etcd_backup_args(tb: &refit_testbed::Testbed) -> Vec<String> {
    let (url, pki) = tb.etcd_endpoint();
    vec![
        format!("--etcd-endpoint={url}"),
        format!("--etcd-cacert={}", pki.ca_cert.display()),
        format!("--etcd-cert={}", pki.admin_cert.display()),
        format!("--etcd-key={}", pki.admin_key.display()),
    ]
}

/// The namespace of the upgrade tests' apps.
pub const NS: &str = "shop";

use refit_testbed::workloads::Budget;

/// Deployments spread over the workers, each covered by a PDB: `(app, replicas, budget, least
/// healthy allowed)`.
pub const APPS: &[(&str, i32, Budget, usize)] = &[
    ("web", 12, Budget::MaxUnavailable(1), 11),
    ("api", 6, Budget::MinAvailable(5), 5),
    ("db", 4, Budget::MaxUnavailable(1), 3),
];

pub async fn install_apps(client: &kube::Client, tb: &refit_testbed::Testbed) {
    tb.create_namespace(NS).await.unwrap();
    for (app, replicas, budget, _) in APPS {
        refit_testbed::workloads::apply::<k8s_openapi::api::apps::v1::Deployment>(
            client,
            refit_testbed::workloads::deployment(NS, app, *replicas),
        )
        .await
        .unwrap();
        refit_testbed::workloads::apply::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(
            client,
            refit_testbed::workloads::pdb(NS, app, app, *budget),
        )
        .await
        .unwrap();
    }
    let total: i32 = APPS.iter().map(|a| a.1).sum();
    refit_testbed::workloads::wait_pods_ready(
        client,
        NS,
        "",
        total as usize,
        std::time::Duration::from_secs(120),
    )
    .await
    .unwrap();
}

/// A `refit controller` process on loopback, killed (and reaped) however the test ends.
pub struct ControllerProcess {
    /// The process (tests kill it to hand leadership over).
    pub child: std::process::Child,
    /// Where it serves /healthz, /readyz and /metrics.
    pub addr: std::net::SocketAddr,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `refit controller` in `namespace` against `kubeconfig` and waits until it listens; its
/// log goes to `log` (shown when a test fails) or is drained, so it never blocks on a full pipe.
pub fn start_controller(
    kubeconfig: &std::path::Path,
    namespace: &str,
    log: Option<&std::path::Path>,
) -> ControllerProcess {
    start_controller_with(kubeconfig, namespace, log, &[])
}

/// [`start_controller`] with more arguments.
pub fn start_controller_with(
    kubeconfig: &std::path::Path,
    namespace: &str,
    log: Option<&std::path::Path>,
    extra: &[&str],
) -> ControllerProcess {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_refit"))
        .args(["controller", "-n", namespace, "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(kubeconfig)
        .args(extra)
        .env("RUST_LOG", "info")
        // Its private journal directory goes beside the log (a killed replica leaves it), and
        // so does its state directory (no catalog kept on this machine is read).
        .env("TMPDIR", log.and_then(|l| l.parent()).unwrap_or(&std::env::temp_dir()))
        .env("REFIT_STATE_DIR", log.and_then(|l| l.parent()).unwrap_or(&std::env::temp_dir()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the controller exited before listening").unwrap();
        if let Some(a) = line.strip_prefix("refit controller: listening on http://") {
            break a.parse().unwrap();
        }
    };
    let mut file = log.map(|l| std::fs::File::create(l).unwrap());
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{l}");
            }
        }
    });
    ControllerProcess { child, addr }
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "")
}

/// A plain HTTP/1.0 request with these headers and body: (status, body).
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A loopback HTTP server the test controls: every request is answered with the status in
/// the returned cell (and counted).
pub fn health_server()
-> (u16, std::sync::Arc<std::sync::atomic::AtomicU16>, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let status = Arc::new(AtomicU16::new(500));
    let hits = Arc::new(AtomicUsize::new(0));
    let (s, h) = (status.clone(), hits.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let _ = c.read(&mut buf);
            h.fetch_add(1, Ordering::SeqCst);
            let code = s.load(Ordering::SeqCst);
            let body = if code == 200 { "ok" } else { "shop is degraded" };
            let _ = write!(
                c,
                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, status, hits)
}
