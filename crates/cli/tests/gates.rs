//! Bad health-gate definitions through the real binary (issue 17 item 4): a plan file's
//! `gates:`, a strategy stage's `healthGates:` and `--on-gate-failure` are refused with one
//! `error:` line naming the fix, exit 2, before any cluster is contacted (the kubeconfig points
//! at a port nothing serves) and with nothing written.

mod support;

use std::path::PathBuf;

use support::{DEAD_KUBECONFIG, refit, refused};

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
