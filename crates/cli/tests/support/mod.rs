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
