//! Health gates through the real binary (issue 17 item 4). Bad definitions — a plan file's
//! `gates:`, a strategy stage's `healthGates:`, `--on-gate-failure` — are refused with one
//! `error:` line naming the fix, exit 2, before any cluster is contacted (the kubeconfig points
//! at a port nothing serves) and with nothing written. A gate between batches holds a real
//! sandbox's upgrade: failing, the run pauses (exit 3) after the first batch; fixed, the same
//! command continues it.

mod support;

use std::path::PathBuf;

use support::{DEAD_KUBECONFIG, Sandbox, refit, refused, release};

#[test]
fn bad_gates_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| -> PathBuf {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let kubeconfig = file("dead.conf", DEAD_KUBECONFIG);
    let store = tmp.path().join("state/refit.db");
    for (gates, says) in [
        ("[{type: grafana}]", "unknown type 'grafana' (expected workloads, prometheus, http or command)"),
        ("[{type: prometheus, url: 'prometheus:9090', query: up}]", "is not a URL"),
        ("[{type: prometheus, url: 'ftp://p:9090', query: up}]", "the scheme must be http or https"),
        ("[{type: http, url: 'http://shop/healthz', soak: -5m}]", "soak '-5m' is negative"),
        ("[{type: http, url: 'http://shop/healthz', timeout: 9000h}]", "at most one year"),
        (
            "[{type: command, command: [./check.sh], soak: 10m, timeout: 5m}]",
            "make the timeout longer than the soak",
        ),
        ("[{type: workloads}]", "not run by refit upgrade yet"),
    ] {
        let plan = file("plan.yaml", &format!("gates: {gates}\n"));
        let err = refused(
            refit()
                .args(["upgrade", "--to", "1.37", "--yes", "--action", "exec:true", "--kubeconfig"])
                .arg(&kubeconfig)
                .arg("--store")
                .arg(&store)
                .arg("-f")
                .arg(&plan),
        );
        assert!(err.contains(says), "{gates}: {err}");
        if !says.contains("refit upgrade") {
            // `refit plan` reads the same file the same way.
            let err = refused(
                refit().args(["plan", "--to", "1.37", "--kubeconfig"]).arg(&kubeconfig).arg("-f").arg(&plan),
            );
            assert!(err.contains(says), "plan {gates}: {err}");
        }
    }
    let err = refused(
        refit()
            .args(["upgrade", "--to", "1.37", "--yes", "--on-gate-failure", "stop", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--store")
            .arg(&store),
    );
    assert!(err.contains("--on-gate-failure") && err.contains("expected pause or fail"), "{err}");
    assert!(!tmp.path().join("state").exists(), "nothing written");

    // A fleet strategy's stage gates: refused by `strategy create`, nothing stored.
    let fleet_store = tmp.path().join("fleet.db");
    let strategy = file(
        "s.yaml",
        "stages:\n  - name: canary\n    groups: [{name: canary}]\n    healthGates: [{type: http, url: 'http://x', soak: -1m}]\n",
    );
    let err = refused(
        refit()
            .arg("fleet")
            .arg("--store")
            .arg(&fleet_store)
            .args(["strategy", "create", "s", "-f"])
            .arg(&strategy),
    );
    assert!(err.contains("stage 'canary'") && err.contains("negative"), "{err}");
    let out = refit()
        .arg("fleet")
        .arg("--store")
        .arg(&fleet_store)
        .args(["strategy", "list", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

/// Events of one kind from `refit upgrade -o json` output.
fn events(stdout: &[u8], kind: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == kind)
        .collect()
}

#[test]
fn a_failing_gate_pauses_the_run_after_a_batch_and_the_same_command_continues_it() {
    let (from, to) = (release(36), release(37));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    let out = refit()
        .args(["sandbox", "up", "--version", &from, "--workers", "4", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _guard = Sandbox(dir.clone());
    assert!(out.status.success(), "sandbox up: {}", String::from_utf8_lossy(&out.stderr));
    let healthy = tmp.path().join("healthy");
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "accept: [etcd-members, control-plane-count]\ngates:\n  - name: smoke\n    type: command\n    command: [test, -e, {:?}]\n    timeout: 6s\n",
            healthy.display().to_string()
        ),
    )
    .unwrap();
    let upgrade = || {
        let mut c = refit();
        c.env("REFIT_SANDBOX_DIR", &dir)
            .args([
                "upgrade",
                "--to",
                &to,
                "--yes",
                "--action",
                "sandbox",
                "--max-unavailable",
                "2",
                "--kubeconfig",
            ])
            .arg(dir.join("kubeconfig"))
            .arg("--store")
            .arg(tmp.path().join("refit.db"))
            // No backup flags: the sandbox action backs the sandbox's etcd up itself.
            .arg("-f")
            .arg(&plan)
            .args(["-o", "json"]);
        c
    };

    // The gate fails: the control plane and the first batch of two workers are upgraded, then
    // nothing more starts and the run ends paused.
    let out = upgrade().output().unwrap();
    assert_eq!(out.status.code(), Some(3), "paused: {}", String::from_utf8_lossy(&out.stderr));
    let gates = events(&out.stdout, "gate");
    let failed: Vec<_> = gates.iter().filter(|g| g["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{gates:?}");
    assert_eq!(failed[0]["gate"], "smoke");
    assert!(failed[0]["reason"].as_str().unwrap().starts_with("timed out after 6s"), "{gates:?}");
    assert!(gates.iter().any(|g| g["state"] == "waiting"), "progress shows the wait: {gates:?}");
    let summary = events(&out.stdout, "summary").pop().unwrap();
    assert_eq!(summary["outcome"]["state"], "paused", "{summary}");
    assert!(summary["outcome"]["reason"].as_str().unwrap().contains("health gate smoke failed"), "{summary}");
    let upgraded = |s: &serde_json::Value| -> usize {
        s["outcome"]["units"].as_array().unwrap().iter().filter(|u| u["result"] == "upgraded").count()
    };
    assert_eq!(upgraded(&summary), 3, "the control plane and one batch of two: {summary}");

    // Fixed: the same command resumes the run, passes the gate, upgrades the rest.
    std::fs::write(&healthy, "").unwrap();
    let out = upgrade().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = events(&out.stdout, "summary").pop().unwrap();
    assert_eq!(summary["outcome"]["state"], "completed", "{summary}");
    assert!(events(&out.stdout, "gate").iter().any(|g| g["state"] == "passed" && g["gate"] == "smoke"));
    assert_eq!(upgraded(&summary), 2, "only the workers left: {summary}");
    let store = refit_store::Store::open(&tmp.path().join("refit.db")).unwrap();
    assert_eq!(store.runs().unwrap().len(), 1, "the paused run was resumed, not replaced");
}
