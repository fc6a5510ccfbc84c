//! Absurd numbers through the real binary (issue 18 item 6): each one is refused with one
//! `error:` line naming the allowed range, exit 2, nothing changed, and no panic — and a value
//! an older refit stored is not a poison pill for the fleet daemon. No cluster is needed: the
//! refusals happen before any is contacted (the kubeconfig points at a port nothing serves).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use support::{DEAD_KUBECONFIG, refit, refused};

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir { tmp: tempfile::tempdir().unwrap() }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn fleet(&self) -> Command {
        let mut c = refit();
        c.arg("fleet").arg("--store").arg(self.path("refit.db"));
        c
    }
    /// `fleet run create r` to 1.37.1 (Full); the test adds the rest.
    fn run_create(&self) -> Command {
        let mut c = self.fleet();
        c.args(["run", "create", "r", "--upgrade-type", "Full", "--kubernetes-version", "1.37.1"]);
        c
    }
}

/// A member as `member add` records it (bound to its cluster's UID); `member add` itself needs a
/// cluster that answers, which these tests have none of.
fn add_bound_member(d: &Dir, kubeconfig: &std::path::Path) {
    let mut s = refit_store::Store::open(&d.path("refit.db")).unwrap();
    s.add_member(&refit_store::fleet::MemberRecord {
        name: "m1".into(),
        kubeconfig: Some(kubeconfig.display().to_string()),
        context: Some("x".into()),
        cluster_uid: Some("0d6c1a8e-1f7e-4c5a-9d1e-2f3a4b5c6d7e".into()),
        ..Default::default()
    })
    .unwrap();
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn absurd_upgrade_flags_are_refused_before_anything_runs() {
    let d = Dir::new();
    let kubeconfig = d.file("dead.conf", DEAD_KUBECONFIG);
    let store = d.path("state/refit.db");
    for (flag, value, says) in [
        ("--drain-timeout", "5124095576030432h", "at most one year (8760h)"),
        ("--drain-timeout", "2562047788015215h", "at most one year (8760h)"),
        ("--node-timeout", "300000000000s", "at most one year (8760h)"),
        ("--node-timeout", "8761h", "at most one year (8760h)"),
        ("--drain-timeout", "0s", "longer than zero"),
        ("--drain-timeout", "3d", "the unit must be s, m or h"),
        ("--eviction-concurrency", "2305843009213693952", "from 1 to 1000"),
        ("--eviction-concurrency", "0", "from 1 to 1000"),
    ] {
        let err = refused(
            refit()
                .args(["upgrade", "--to", "1.37", "--yes", "--kubeconfig"])
                .arg(&kubeconfig)
                .arg("--store")
                .arg(&store)
                .args([flag, value]),
        );
        assert!(err.contains(flag) && err.contains(value) && err.contains(says), "{flag} {value}: {err}");
    }
    assert!(!store.exists() && !d.path("state").exists(), "nothing written");
    // The range is in --help.
    let help = ok(refit().args(["upgrade", "--help"]));
    assert!(help.contains("1s to one year"), "{help}");
    assert!(help.contains("1 to 1000"), "{help}");
}

/// `--accept`, `--policy`, `--min-free-disk` and a plan an action cannot carry out: refused
/// by the parsers before the cluster (here a dead one) is contacted.
#[test]
fn bad_acceptances_policies_thresholds_and_uncovered_etcd_hosts_are_refused() {
    let d = Dir::new();
    let kubeconfig = d.file("dead.conf", DEAD_KUBECONFIG);
    let etcd = d.file("etcd.yaml", "etcd: [{name: etcd-a, address: 10.0.0.5}]\n");
    for (command, args, says) in [
        ("plan", vec!["--accept", "capacity"], "not a check that can be accepted"),
        ("upgrade", vec!["--accept", "local-data="], "the subject after '='"),
        ("plan", vec!["--policy", "lenient"], "expected default or strict"),
        ("plan", vec!["--min-free-disk=-1Gi"], "negative"),
        ("plan", vec!["--min-free-disk", "lots"], "--min-free-disk"),
        ("plan", vec!["--action", "ssh", "-f", etcd.to_str().unwrap()], "external etcd member 'etcd-a'"),
        ("upgrade", vec!["--action", "ssh", "-f", etcd.to_str().unwrap()], "external etcd member 'etcd-a'"),
    ] {
        let err =
            refused(refit().args([command, "--to", "1.37", "--kubeconfig"]).arg(&kubeconfig).args(&args));
        assert!(err.contains(says), "{command} {args:?}: {err}");
    }
    let help = ok(refit().args(["plan", "--help"]));
    assert!(
        help.contains("--min-free-disk") && help.contains("[default: 2Gi]") && help.contains("etcd's data"),
        "{help}"
    );
    assert!(help.contains("--accept <CHECK[=SUBJECT]>") && help.contains("--policy"), "{help}");
}

/// Worker settings that contradict each other (core's `WorkerSettings::resolve`), each refused
/// with its whole message in flags, by `plan` and `upgrade` alike, before the (dead) cluster.
#[test]
fn contradicting_worker_settings_are_refused_in_flags() {
    let d = Dir::new();
    let kubeconfig = d.file("dead.conf", DEAD_KUBECONFIG);
    let sandbox = d.path("sandbox");
    let replace = format!("replace-sandbox:{}", sandbox.display());
    let auto_only = "applies only to --max-unavailable auto (a fixed size is its own cap and ignores zones)";
    for (args, says) in [
        (vec!["--max-unavailable", "2", "--max-unavailable-cap", "3"], format!("--max-unavailable-cap {auto_only}")),
        (vec!["--max-unavailable", "2", "--across-zones"], format!("--across-zones {auto_only}")),
        (
            vec!["--max-unavailable", "0"],
            "--max-unavailable 0 without --max-surge: no node could ever be upgraded; give --max-surge N (with the replace action) or --max-unavailable 1 or more".into(),
        ),
        (
            vec!["--max-surge", "2"],
            "--max-surge applies only to the replace action (it creates replacement nodes before the old ones drain); drop it or use --action replace".into(),
        ),
        (
            vec!["--max-surge", "2", "--max-unavailable", "auto"],
            "--max-surge takes a fixed --max-unavailable (a count, a percentage or 0), not auto: the surge slots set a replace run's pace".into(),
        ),
        (
            vec!["--action", &replace, "--max-surge", "2", "--max-unavailable-cap", "3"],
            format!("--max-unavailable-cap {auto_only}"),
        ),
        (vec!["--action", &replace, "--max-surge", "2", "--across-zones"], format!("--across-zones {auto_only}")),
        (vec!["--action", &replace, "--max-surge", "x"], "--max-surge 'x' is not a count".into()),
    ] {
        let err = refused(refit().args(["plan", "--to", "1.37", "--kubeconfig"]).arg(&kubeconfig).args(&args));
        assert!(err.contains(&says), "plan {args:?}: {err}");
        let mut upgrade = refit();
        upgrade.args(["upgrade", "--to", "1.37", "--yes", "--kubeconfig"]).arg(&kubeconfig);
        let err = refused(upgrade.arg("--store").arg(d.path("state/refit.db")).args(&args));
        assert!(err.contains(&says), "upgrade {args:?}: {err}");
    }
    assert!(!d.path("state").exists() && !sandbox.exists(), "nothing written");
}

#[test]
fn absurd_fleet_durations_are_refused_and_change_nothing() {
    let d = Dir::new();
    let kubeconfig = d.file("dead.conf", DEAD_KUBECONFIG);
    let err = refused(
        d.fleet()
            .args(["member", "add", "m1", "--pending-budget", "300000000000s", "--kubeconfig"])
            .arg(&kubeconfig),
    );
    assert!(err.contains("--pending-budget") && err.contains("at most one year"), "{err}");
    add_bound_member(&d, &kubeconfig);
    refused(d.fleet().args(["member", "update", "m1", "--pending-budget", "99999999999999999999h"]));
    let members: Value = serde_json::from_str(&ok(d.fleet().args(["member", "list", "-o", "json"]))).unwrap();
    assert!(members[0].get("pendingBudgetSeconds").is_none_or(Value::is_null), "{members:#}");

    let wait = d.file(
        "wait.yaml",
        "stages:\n  - name: canary\n    groups: [{name: canary}]\n    afterStageWaitInSeconds: 300000000000\n    afterGates: [{type: Approval}]\n",
    );
    let err = refused(d.fleet().args(["strategy", "create", "s", "-f"]).arg(&wait));
    assert!(err.contains("afterStageWaitInSeconds") && err.contains("at most one year"), "{err}");
    let err = refused(d.run_create().arg("--stages").arg(&wait));
    assert!(err.contains("afterStageWaitInSeconds"), "{err}");
    refused(d.run_create().args(["--pending-budget", "300000000000s"]));
    let runs: Value = serde_json::from_str(&ok(d.fleet().args(["run", "list", "-o", "json"]))).unwrap();
    assert_eq!(runs, serde_json::json!([]));
    let strategies: Value =
        serde_json::from_str(&ok(d.fleet().args(["strategy", "list", "-o", "json"]))).unwrap();
    assert_eq!(strategies, serde_json::json!([]));

    // A pre-approval that would expire past the end of time.
    let ok_wait = d.file(
        "ok.yaml",
        "stages:\n  - name: canary\n    groups: [{name: canary}]\n    afterGates: [{type: Approval}]\n",
    );
    ok(d.run_create().arg("--stages").arg(&ok_wait));
    let err =
        refused(d.fleet().args(["gate", "approve", "r", "canary/after/1", "--expires-in", "300000000000s"]));
    assert!(err.contains("--expires-in") && err.contains("at most one year"), "{err}");
    let gates: Value =
        serde_json::from_str(&ok(d.fleet().args(["gate", "list", "--all", "-o", "json"]))).unwrap();
    assert!(gates[0].get("approval").is_none_or(Value::is_null), "not approved: {gates:#}");
}

/// An older refit stored any pending budget; `fleet daemon` then panicked on every start (a
/// poison pill). Stored values past the cap count as the cap.
#[test]
fn a_stored_absurd_pending_budget_does_not_crash_the_daemon() {
    let d = Dir::new();
    let kubeconfig = d.file("dead.conf", DEAD_KUBECONFIG);
    add_bound_member(&d, &kubeconfig);
    {
        // What an older refit wrote for `--pending-budget 300000000000s`.
        let mut s = refit_store::Store::open(&d.path("refit.db")).unwrap();
        let mut m = s.member("m1").unwrap().unwrap();
        m.pending_budget_seconds = Some(300_000_000_000);
        s.update_member(&m).unwrap();
    }
    ok(&mut d.run_create());
    ok(d.fleet().args(["run", "start", "r"]));
    let mut daemon = std::process::Command::new(assert_cmd::cargo::cargo_bin("refit"))
        .arg("fleet")
        .arg("--store")
        .arg(d.path("refit.db"))
        .arg("daemon")
        .stderr(std::fs::File::create(d.path("daemon.err")).unwrap())
        .stdout(std::fs::File::create(d.path("daemon.out")).unwrap())
        .spawn()
        .unwrap();
    // The member cannot be reached, so it waits Pending under its budget: the budget's deadline
    // is computed on every tick, which is where the panic was.
    let pending = wait_for(Duration::from_secs(60), || {
        let show: Value =
            serde_json::from_str(&ok(d.fleet().args(["run", "show", "r", "-o", "json"]))).ok()?;
        let text = show.to_string();
        text.contains("cannot reach the API server").then_some(text)
    });
    let alive = daemon.try_wait().unwrap().is_none();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let err = std::fs::read_to_string(d.path("daemon.err")).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(alive, "the daemon is still driving the run: {err}");
    assert!(pending.is_some(), "the member was observed Pending: {err}");
    let out = std::fs::read_to_string(d.path("daemon.out")).unwrap();
    assert!(out.contains("member m1 pending"), "{out}");
    assert!(!out.contains("skipped"), "a one-year budget has not run out: {out}");
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(t) = f() {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}
