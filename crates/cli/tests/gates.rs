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
        ("[{type: workloads, url: 'http://x'}]", "a workloads gate takes no url; remove it"),
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
        // `refit plan` reads the same file the same way.
        let err = refused(
            refit().args(["plan", "--to", "1.37", "--kubeconfig"]).arg(&kubeconfig).arg("-f").arg(&plan),
        );
        assert!(err.contains(says), "plan {gates}: {err}");
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

/// A sandbox at `from` in `tmp/sb` with `args` (workers, control planes), stopped on drop.
fn sandbox_up(tmp: &std::path::Path, from: &str, args: &[&str]) -> (PathBuf, Sandbox) {
    let dir = tmp.join("sb");
    let out = refit()
        .args(["sandbox", "up", "--version", from])
        .args(args)
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    let guard = Sandbox(dir.clone());
    assert!(out.status.success(), "sandbox up: {}", String::from_utf8_lossy(&out.stderr));
    (dir, guard)
}

/// The run ended paused (exit 3). Otherwise the failure shows stderr and the last lines of
/// `refit upgrade -o json` output: the summary or the plan's blockers say why, not stderr.
fn assert_paused(out: &std::process::Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let last = lines[lines.len().saturating_sub(5)..].join("\n");
    assert_eq!(out.status.code(), Some(3), "paused: {}\n{last}", String::from_utf8_lossy(&out.stderr));
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
    let (dir, _guard) = sandbox_up(tmp.path(), &from, &["--workers", "4"]);
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
    assert_paused(&out);
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

/// Issue 17 item 3 on a real 3-member control plane: an apiserver that stops answering while
/// the first member is upgraded holds the run before the next member — paused (exit 3), the
/// apiserver named; once it is back, the same command continues. Prints how long the run took
/// to stop after the apiserver went down (the gate's timeout is 10 s).
#[test]
fn an_apiserver_down_pauses_the_run_before_the_next_control_plane_member() {
    let (from, to) = (release(36), release(37));
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _guard) = sandbox_up(tmp.path(), &from, &["--control-plane", "3", "--workers", "2"]);
    // The action upgrades each node as the sandbox action does; the first one then waits for
    // the test to take another member's apiserver down.
    let marks = tmp.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let script = tmp.path().join("up.sh");
    let exe = assert_cmd::cargo::cargo_bin("refit");
    std::fs::write(
        &script,
        format!(
            "set -e\n{exe:?} sandbox upgrade-node --dir {dir:?} \"$1\" --to \"$2\"\nif [ ! -e {m:?}/hold ]; then echo \"$1\" > {m:?}/hold; while [ ! -e {m:?}/go ]; do sleep 0.2; done; fi\n",
            exe = exe.display().to_string(),
            dir = dir.display().to_string(),
            m = marks.display().to_string(),
        ),
    )
    .unwrap();
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(&plan, "accept: [etcd-members]\n").unwrap();
    // The exec action has no sandbox to back up from: the sandbox's etcd, named (the gate reads
    // its health through the same endpoint).
    let backup = support::etcd_backup_args(&refit_testbed::Testbed::attach(&dir).unwrap());
    let upgrade = || {
        let mut c = refit();
        c.args(["upgrade", "--to", &to, "--yes", "--control-plane-gate-timeout", "10s", "--action"])
            .arg(format!("exec:sh {} {{node}} {{to}}", script.display()))
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .arg("--store")
            .arg(tmp.path().join("refit.db"))
            .args(&backup)
            .arg("-f")
            .arg(&plan)
            .args(["-o", "json"]);
        c
    };
    let mut first_try = upgrade();
    let child = std::thread::spawn(move || first_try.output().unwrap());
    let hold = marks.join("hold");
    let start = std::time::Instant::now();
    while !hold.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(300), "the first member never finished");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let first = std::fs::read_to_string(&hold).unwrap().trim().to_string();
    let tb = refit_testbed::Testbed::attach(&dir).unwrap();
    let down = tb.members().into_iter().find(|m| m.node != first).unwrap();
    tb.stop_apiserver(down.index).unwrap();
    let stopped = std::time::Instant::now();
    std::fs::write(marks.join("go"), "").unwrap();
    let out = child.join().unwrap();
    let took = stopped.elapsed();
    eprintln!("the run stopped {took:?} after the apiserver went down (gate timeout 10s)");
    assert_paused(&out);
    let summary = events(&out.stdout, "summary").pop().unwrap();
    let reason = summary["outcome"]["reason"].as_str().unwrap();
    let port = format!(":{}", down.apiserver_port);
    assert!(reason.contains("health gate control-plane failed") && reason.contains(&port), "{reason}");
    let units = summary["outcome"]["units"].as_array().unwrap();
    let upgraded: Vec<&str> =
        units.iter().filter(|u| u["result"] == "upgraded").map(|u| u["node"].as_str().unwrap()).collect();
    assert_eq!(upgraded, [first.as_str()], "only the first member: {summary}");
    let gates = events(&out.stdout, "gate");
    assert!(gates.iter().any(|g| g["gate"] == "control-plane" && g["state"] == "passed"), "{gates:?}");
    assert!(
        gates.iter().any(|g| g["gate"] == "control-plane"
            && g["state"] == "waiting"
            && g["reason"].as_str().unwrap().contains(&port)),
        "progress names the apiserver: {gates:?}"
    );

    // Back: the same command continues the run and finishes it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(tb.start_apiserver_again(down.index)).unwrap();
    let out = upgrade().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = events(&out.stdout, "summary").pop().unwrap();
    assert_eq!(summary["outcome"]["state"], "completed", "{summary}");
}

/// Issue 17 item 3 against a REAL three-member etcd (the sandbox's control-plane node as a
/// stacked member, two external hosts from the plan file) with one member stopped: refit
/// refuses to take a second member down — before anything changes, exit 3 with the quorum
/// named.
#[test]
fn a_three_member_etcd_with_one_down_is_never_given_a_second_member_down() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Members named like a stacked control plane's: the sandbox's control-plane node (an etcd
    // member by its mirror pod) and two more, external, hosts.
    let names = ["control-plane-1", "etcd-1", "etcd-2"].map(String::from);
    let mut etcd = rt
        .block_on(refit_testbed::etcd_cluster::EtcdCluster::start_named(&tmp.path().join("etcd"), &names))
        .unwrap();
    // Every member up and listed before one is stopped (a member stopped before it published
    // its client URL would read as "not started" rather than down).
    let pki = etcd.pki().clone();
    let eps: Vec<refit_exec::backup::EtcdEndpoint> = etcd
        .client_urls()
        .into_iter()
        .map(|url| refit_exec::backup::EtcdEndpoint {
            url,
            ca_file: pki.ca_cert.clone(),
            cert_file: pki.admin_cert.clone(),
            key_file: pki.admin_key.clone(),
        })
        .collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !rt
        .block_on(refit_exec::etcd::etcd_health(&eps))
        .is_ok_and(|h| h.members.len() == 3 && h.members.iter().all(|m| m.healthy))
    {
        assert!(std::time::Instant::now() < until, "etcd never became healthy");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    etcd.stop_member(2);
    let (from, to) = (release(36), release(37));
    let (dir, _guard) = sandbox_up(tmp.path(), &from, &["--workers", "2"]);
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "accept: [control-plane-count]\netcd:\n  - {name: etcd-1, address: 127.0.0.1}\n  - {name: etcd-2, address: 127.0.0.1}\n",
    )
    .unwrap();
    let mut c = refit();
    c.env("REFIT_SANDBOX_DIR", &dir)
        .args(["upgrade", "--to", &to, "--yes", "--control-plane-gate-timeout", "5s", "--action", "sandbox"])
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--store")
        .arg(tmp.path().join("refit.db"))
        .arg("--backup-dir")
        .arg(tmp.path().join("backups"))
        .arg("--etcd-cacert")
        .arg(&pki.ca_cert)
        .arg("--etcd-cert")
        .arg(&pki.admin_cert)
        .arg("--etcd-key")
        .arg(&pki.admin_key)
        .arg("-f")
        .arg(&plan)
        .args(["-o", "json"]);
    for url in etcd.client_urls() {
        c.arg("--etcd-endpoint").arg(url);
    }
    let out = c.output().unwrap();
    assert_paused(&out);
    let summary = events(&out.stdout, "summary").pop().unwrap();
    let reason = summary["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("taking etcd member control-plane-1 down would leave 1 healthy of 3 voting members")
            && reason.contains("etcd-2"),
        "{reason}: {summary}"
    );
    let units = summary["outcome"]["units"].as_array().unwrap();
    assert_eq!(units[0]["node"], "control-plane-1", "{summary}");
    assert!(units.iter().all(|u| u["result"] == "not-started"), "nothing was taken down: {summary}");
}
