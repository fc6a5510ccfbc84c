//! `refit fleet` end to end: the real binary, three real sandbox clusters (etcd, kube-apiserver,
//! controller-manager, scheduler, kwok nodes) as members, each member upgraded by a real
//! `refit upgrade` subprocess. Two stages: a one-member canary stage with an after-stage
//! approval gate and a short after-stage wait, then a stage of two groups.
//!
//! The three sandboxes start once (1 control plane + 2 workers each, at 1.36) and are reused:
//! the first Full run moves the control planes to 1.37; between later scenarios the workers
//! are brought back to 1.36 with `refit sandbox upgrade-node`, so every later run really
//! upgrades nodes again (the control planes stay, as they would after a real first wave).
//!
//! Member upgrades go through an exec action (a script that waits two seconds, then calls
//! `refit sandbox upgrade-node`): the wait makes "while a member upgrade is under way" a
//! window a test can hit, and a `fail` file in a sandbox's directory makes that member's
//! node action fail, as a broken node would.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Sandbox, refit, release};

/// Timestamps in the run's JSON are RFC 3339 UTC; comparing them as instants.
fn ts(v: &Value) -> jiff::Timestamp {
    v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")).parse().unwrap()
}

struct Fleet {
    // Fields drop in order: the sandboxes are stopped before their directory is removed.
    _guards: Vec<Sandbox>,
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    sandboxes: Vec<(String, PathBuf)>,
}

const MEMBERS: [(&str, &str); 3] = [("canary-1", "canary"), ("east-1", "wave-a"), ("west-1", "wave-b")];

/// The availability blockers of a one-control-plane, two-worker sandbox (Kismatic blocks a
/// lone etcd member and a lone control plane): accepted for each member's upgrade.
const SANDBOX_ACCEPTS: &[&str] = &[
    "--upgrade-arg=--accept=etcd-members",
    "--upgrade-arg=--accept=control-plane-count",
    "--upgrade-arg=--accept=worker-count",
];

/// The member upgrades' etcd backup (their exec action does not back up by itself): the
/// sandbox's etcd, through `--upgrade-arg`.
fn etcd_backup_upgrade_args(sandbox: &Path) -> Vec<String> {
    let tb = refit_testbed::Testbed::attach(sandbox).unwrap();
    support::etcd_backup_args(&tb).into_iter().map(|a| format!("--upgrade-arg={a}")).collect()
}

const STRATEGY: &str = r#"
stages:
  - name: canary
    groups: [{name: canary}]
    afterStageWaitInSeconds: 4
    afterGates: [{type: Approval, displayName: canary looks good}]
  - name: prod
    groups: [{name: wave-a}, {name: wave-b}]
"#;

impl Fleet {
    fn up() -> Fleet {
        Fleet::with(&MEMBERS, STRATEGY, 2)
    }

    /// Sandboxes `(name, update group)` at 1.36 with `workers` workers each, as members (label
    /// `tier=<group>`), and `strategy` stored as `two-stage`.
    fn with(members: &[(&str, &str)], strategy: &str, workers: usize) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let store = root.join("refit.db");
        let script = root.join("node.sh");
        let exe = assert_cmd::cargo::cargo_bin("refit");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# $1 sandbox dir, $2 node, $3 version\necho \"$2\" >> \"$1/actions.log\"\nif [ -e \"$1/fail\" ]; then echo \"simulated node failure on $2\" >&2; exit 3; fi\nsleep 2\nwhile [ -e \"$1/hold\" ]; do sleep 0.1; done\nexec '{}' sandbox upgrade-node --dir \"$1\" \"$2\" --to \"$3\"\n",
                exe.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut guards = Vec::new();
        let mut sandboxes = Vec::new();
        for &(name, group) in members {
            let dir = root.join(name);
            let out = refit()
                .args([
                    "sandbox",
                    "up",
                    "--version",
                    &release(36),
                    "--workers",
                    &workers.to_string(),
                    "--dir",
                ])
                .arg(&dir)
                .output()
                .unwrap();
            guards.push(Sandbox(dir.clone()));
            assert!(out.status.success(), "sandbox up: {}", String::from_utf8_lossy(&out.stderr));
            let action = format!("exec:{} {} {{node}} {{to}}", script.display(), dir.display());
            let mut f = Fleet::cmd_in(&store);
            run_ok(
                f.args(["member", "add", name, "--update-group", group, "--label", &format!("tier={group}")])
                    .arg("--kubeconfig")
                    .arg(dir.join("kubeconfig"))
                    .args(["--context", "refit-testbed", "--action", &action])
                    .args(SANDBOX_ACCEPTS)
                    .args(etcd_backup_upgrade_args(&dir)),
            );
            sandboxes.push((name.to_string(), dir));
        }
        std::fs::write(root.join("strategy.yaml"), strategy).unwrap();
        run_ok(
            Fleet::cmd_in(&store)
                .args(["strategy", "create", "two-stage", "-f"])
                .arg(root.join("strategy.yaml")),
        );
        Fleet { _tmp: tmp, root, store, sandboxes, _guards: guards }
    }

    fn cmd_in(store: &Path) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("refit"));
        c.arg("fleet").arg("--store").arg(store);
        c
    }

    fn cmd(&self) -> Command {
        Fleet::cmd_in(&self.store)
    }

    fn dir(&self, member: &str) -> &Path {
        &self.sandboxes.iter().find(|(n, _)| n == member).unwrap().1
    }

    fn create(&self, run: &str, extra: &[&str]) {
        run_ok(
            self.cmd()
                .args(["run", "create", run, "--upgrade-type", "Full", "--kubernetes-version", &release(37)])
                .args(extra),
        );
    }

    fn show(&self, run: &str) -> Value {
        let out = self.cmd().args(["run", "show", run, "-o", "json"]).output().unwrap();
        assert!(out.status.success(), "run show: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `run start NAME --wait -o json` in the background.
    fn spawn_start(&self, run: &str) -> Child {
        self.cmd()
            .args(["run", "start", run, "--wait", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Polls `run show` until `pred` holds (or fails the test after three minutes).
    fn wait_for(&self, run: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let v = self.show(run);
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {v:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every worker back to 1.36 (the control planes stay at 1.37).
    fn workers_back_to_136(&self, members: &[&str]) {
        for m in members {
            let dir = self.dir(m);
            let status = support::json(refit().args(["sandbox", "status", "-o", "json", "--dir"]).arg(dir));
            for n in status["nodes"].as_array().unwrap() {
                let name = n["name"].as_str().unwrap();
                if name.starts_with("worker-") {
                    support::stdout(
                        refit()
                            .args(["sandbox", "upgrade-node", name, "--to", &release(36), "--dir"])
                            .arg(dir),
                    );
                }
            }
        }
    }

    /// Kubelet versions of the member's nodes.
    fn kubelets(&self, member: &str) -> Vec<String> {
        let status =
            support::json(refit().args(["sandbox", "status", "-o", "json", "--dir"]).arg(self.dir(member)));
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["kubelet"].as_str().unwrap().to_string())
            .collect()
    }
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A run's event history (`run show --events -o json`).
fn history(fleet: &mut Command, run: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&run_ok(fleet.args(["run", "show", run, "--events", "-o", "json"]))).unwrap();
    v["events"].as_array().unwrap().clone()
}

/// The fleet events a driver printed with `-o json`.
fn fleet_events(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("fleetEvent").cloned())
        .collect()
}

fn members(v: &Value) -> Vec<&Value> {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["groups"].as_array().unwrap())
        .flat_map(|g| g["members"].as_array().unwrap())
        .collect()
}

fn member<'a>(v: &'a Value, name: &str) -> &'a Value {
    members(v).into_iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no member {name}"))
}

fn stage<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

fn group<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["groups"].as_array().unwrap())
        .find(|g| g["name"] == name)
        .unwrap()
}

fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap()
}

/// The single-cluster runs `refit upgrade` journaled, with the most attempts any step of
/// each took: (cluster, run id, state, units with a step started more than once).
fn cluster_runs(store: &Path) -> Vec<(String, String, String, usize)> {
    let s = refit_store::Store::open(store).unwrap();
    s.runs()
        .unwrap()
        .into_iter()
        .map(|r| {
            let steps = s.steps(&r.id).unwrap();
            let mut repeated: Vec<&str> =
                steps.iter().filter(|st| st.attempt > 1).map(|st| st.unit.as_str()).collect();
            repeated.dedup();
            (r.cluster, r.id, r.state, repeated.len())
        })
        .collect()
}

#[test]
fn three_sandbox_members_in_two_stages_upgrade_with_gates_windows_skips_stop_failures_and_a_killed_driver() {
    let f = Fleet::up();
    let to = release(37);

    // ---------------------------------------------------------------- a closed window
    // west-1's window opens two hours from now (every day, 30 minutes, UTC): the member is
    // Pending with the reason and the next opening; nothing is started on it.
    let opens = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    let start = opens.to_zoned(jiff::tz::TimeZone::UTC).strftime("%H:%M").to_string();
    let window = f.root.join("window.yaml");
    std::fs::write(
        &window,
        format!(
            "recurrence: {{weekly: [Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday]}}\nstart: \"{start}\"\ndurationMinutes: 30\ntimeZone: UTC\n"
        ),
    )
    .unwrap();
    run_ok(f.cmd().args(["member", "update", "west-1", "--window"]).arg(&window));
    let stages = f.root.join("west-only.yaml");
    std::fs::write(&stages, "stages: [{name: west, groups: [{name: wave-b}]}]\n").unwrap();
    f.create("windowed", &["--stages", stages.to_str().unwrap()]);
    let driver = f.spawn_start("windowed");
    let v =
        f.wait_for("windowed", "west-1 pending on its window", |v| state(member(v, "west-1")) == "Pending");
    let pending = &member(&v, "west-1")["pending"];
    assert_eq!(pending["kind"], "WindowClosed", "{v:#}");
    let opens_at = ts(&pending["opensAt"]);
    assert!(
        (opens_at.as_second() - opens.as_second()).abs() <= 60,
        "next opening {opens_at}, expected about {opens}"
    );
    assert_eq!(state(&v), "Pending");
    let shown = run_ok(f.cmd().args(["run", "show", "windowed"]));
    assert!(shown.contains("maintenance window closed; opens at"), "{shown}");
    run_ok(f.cmd().args(["run", "stop", "windowed"]));
    let (code, _, err) = finish(driver);
    assert_eq!(code, 1, "a stopped run ends --wait with 1: {err}");
    let v = f.show("windowed");
    assert_eq!((state(&v), state(member(&v, "west-1"))), ("Stopped", "Stopped"));
    assert!(f.kubelets("west-1").iter().all(|k| k.contains("1.36")), "nothing was started on west-1");
    run_ok(f.cmd().args(["member", "update", "west-1", "--clear-window"]));

    // ---------------------------------------------------------------- order, approval, kill -9
    f.create("to-137", &["--strategy", "two-stage"]);
    let driver = f.spawn_start("to-137");
    let v = f.wait_for("to-137", "the canary stage waiting for approval", |v| {
        state(stage(v, "canary")) == "Pending" && state(member(v, "canary-1")) == "Completed"
    });
    // The run waits for a person, says so, and nothing of stage 2 has started.
    assert_eq!(state(&v), "Pending");
    assert!(v["pending"].to_string().contains("canary/after/1"), "{}", v["pending"]);
    assert!(members(&v).iter().filter(|m| m["name"] != "canary-1").all(|m| state(m) == "NotStarted"));
    let listed = run_ok(f.cmd().args(["gate", "list"]));
    assert!(listed.contains("to-137") && listed.contains("canary/after/1"), "{listed}");
    std::thread::sleep(Duration::from_secs(5)); // longer than the wait: only the approval holds it
    assert_eq!(state(stage(&f.show("to-137"), "prod")), "NotStarted");
    run_ok(f.cmd().args(["gate", "approve", "to-137", "canary/after/1", "--by", "alice"]));

    // Kill -9 the driver while a prod member upgrade is under way.
    let v = f.wait_for("to-137", "a prod member upgrade under way", |v| {
        let op = v["progress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["member"] == "east-1" && p["operation"].is_string());
        state(member(v, "east-1")) == "Running" && op
    });
    let gate = &stage(&v, "canary")["afterGates"][0];
    assert_eq!((gate["state"].as_str(), gate["approval"]["by"].as_str()), (Some("Completed"), Some("alice")));
    let canary_done = ts(&member(&v, "canary-1")["completedAt"]);
    for m in ["east-1", "west-1"] {
        let started = &member(&v, m)["startedAt"];
        if !started.is_null() {
            assert!(ts(started) > canary_done, "{m} started before the canary finished");
            assert!(ts(started) >= ts(&gate["completedAt"]), "{m} started before the approval");
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut driver = driver;
    driver.kill().unwrap(); // SIGKILL: its member upgrades die with it (PR_SET_PDEATHSIG)
    driver.wait().unwrap();
    let v = f.show("to-137");
    assert_eq!(state(member(&v, "east-1")), "Running", "the store still says it is under way");

    // A new driver continues: relaunches what was under way, never the canary again.
    let (code, out, err) = finish(f.spawn_start("to-137"));
    assert_eq!(code, 0, "restarted driver: {out}\n{err}");
    let v = f.show("to-137");
    assert_eq!(state(&v), "Completed", "{v:#}");
    for m in ["canary-1", "east-1", "west-1"] {
        assert_eq!(state(member(&v, m)), "Completed");
        assert_eq!(member(&v, m)["attempts"], 1, "{m} counted one start (relaunch is not a new attempt)");
        assert!(f.kubelets(m).iter().all(|k| k.contains(&to)), "{m}: {:?}", f.kubelets(m));
    }
    assert!(
        fleet_events(&out).iter().all(|e| e["member"] != "canary-1"),
        "the canary was not touched again: {out}"
    );
    // The history says what happened after the kill: the new driver took over, then relaunched
    // the member upgrade it found under way.
    let after_kill = history(&mut f.cmd(), "to-137");
    let kinds: Vec<&str> = after_kill.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let took = kinds.iter().position(|k| *k == "DriverTookOver").unwrap_or_else(|| panic!("{kinds:?}"));
    let relaunched = after_kill
        .iter()
        .position(|e| e["event"] == "MemberRelaunched" && e["member"] == "east-1")
        .unwrap_or_else(|| panic!("{kinds:?}"));
    assert!(took < relaunched, "{kinds:?}");
    assert_ne!(after_kill[took]["driver"], after_kill[took]["previous"]);
    let runs = cluster_runs(&f.store);
    assert_eq!(runs.len(), 3, "one refit upgrade run per cluster, the killed one resumed: {runs:?}");
    for (cluster, id, st, repeated) in &runs {
        assert_eq!(st, "completed", "{cluster} {id}");
        assert!(*repeated <= 1, "{cluster}: only the node under way at the kill may repeat a step: {runs:?}");
    }

    // ---------------------------------------------------------------- skips, already at target
    f.workers_back_to_136(&["east-1"]);
    f.create("skips", &["--strategy", "two-stage"]);
    run_ok(f.cmd().args(["run", "skip", "skips", "--targets", "Stage:canary", "--by", "bob"]));
    let (code, _, err) = finish(f.spawn_start("skips"));
    assert_eq!(code, 0, "{err}");
    let v = f.show("skips");
    assert_eq!(state(&v), "Completed");
    assert_eq!(state(stage(&v, "canary")), "Skipped");
    assert!(member(&v, "canary-1")["message"].as_str().unwrap().contains("skipped by bob (Stage:canary)"));
    assert_eq!(
        stage(&v, "canary")["afterGates"][0]["state"],
        "Skipped",
        "gates in a skipped stage are skipped"
    );
    assert_eq!(state(member(&v, "east-1")), "Completed");
    let west = member(&v, "west-1");
    assert_eq!(state(west), "Skipped");
    assert!(west["message"].as_str().unwrap().contains("already at"), "{west}");

    // Group and member skips, an after-stage wait skip, a pre-approval with expiry, stop and start.
    f.workers_back_to_136(&["canary-1", "east-1", "west-1"]);
    f.create("stop-start", &["--strategy", "two-stage"]);
    run_ok(f.cmd().args(["run", "skip", "stop-start", "--targets", "AfterStageWait:canary", "Group:wave-b"]));
    run_ok(f.cmd().args([
        "gate",
        "approve",
        "stop-start",
        "canary/after/1",
        "--expires-in",
        "1h",
        "--by",
        "carol",
    ]));
    let driver = f.spawn_start("stop-start");
    f.wait_for("stop-start", "the canary under way", |v| state(member(v, "canary-1")) == "Running");
    run_ok(f.cmd().args(["run", "stop", "stop-start"]));
    let v = f.show("stop-start");
    assert!(matches!(state(&v), "Stopping" | "Stopped"), "{}", state(&v));
    let (code, _, _) = finish(driver);
    assert_eq!(code, 1, "a stopped run ends --wait with 1");
    let v = f.show("stop-start");
    assert_eq!(state(&v), "Stopped", "{v:#}");
    assert_eq!(state(member(&v, "canary-1")), "Completed", "the upgrade under way finished after the stop");
    // The history has the stop's request and, once the canary finished, its completion.
    let kinds: Vec<String> = history(&mut f.cmd(), "stop-start")
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    let asked = kinds.iter().position(|k| k == "Stop").unwrap_or_else(|| panic!("{kinds:?}"));
    assert_eq!(kinds.last().map(String::as_str), Some("StopCompleted"), "{kinds:?}");
    assert!(kinds[asked..].iter().any(|k| k == "MemberSucceeded"), "{kinds:?}");
    assert_eq!(state(member(&v, "east-1")), "NotStarted", "nothing new started after the stop");
    assert_eq!(state(group(&v, "wave-b")), "Skipped");
    assert_eq!(stage(&v, "canary")["afterStageWait"]["state"], "Skipped");
    assert_eq!(stage(&v, "canary")["afterGates"][0]["approval"]["by"], "carol");
    assert!(f.kubelets("east-1").iter().any(|k| k.contains("1.36")), "stage 2 was not touched");
    // Starting a stopped run again continues, and re-applies skipped work: wave-b too.
    let (code, _, err) = finish(f.spawn_start("stop-start"));
    assert_eq!(code, 0, "{err}");
    let v = f.show("stop-start");
    assert_eq!(state(&v), "Completed", "{v:#}");
    for m in ["canary-1", "east-1", "west-1"] {
        assert_eq!(state(member(&v, m)), "Completed", "{m}");
    }
    assert_eq!(member(&v, "canary-1")["attempts"], 1, "the canary finished before the stop: not repeated");
    // A member skip.
    f.workers_back_to_136(&["canary-1", "east-1", "west-1"]);
    f.create("member-skip", &["--strategy", "two-stage"]);
    run_ok(f.cmd().args(["run", "skip", "member-skip", "--targets", "Member:east-1", "Stage:canary"]));
    let (code, _, err) = finish(f.spawn_start("member-skip"));
    assert_eq!(code, 0, "{err}");
    let v = f.show("member-skip");
    assert_eq!((state(member(&v, "east-1")), state(member(&v, "west-1"))), ("Skipped", "Completed"));
    assert!(f.kubelets("east-1").iter().any(|k| k.contains("1.36")));

    // ---------------------------------------------------------------- failures
    // Fail-fast: east-1's node action fails; the run fails, west-1 (in flight in the parallel
    // group) finishes, then retry --failed re-runs only east-1 once the node is fixed.
    f.workers_back_to_136(&["east-1", "west-1"]);
    std::fs::write(f.dir("east-1").join("fail"), "").unwrap();
    f.create("fail-fast", &["--strategy", "two-stage"]);
    run_ok(f.cmd().args(["run", "skip", "fail-fast", "--targets", "Stage:canary"]));
    let (code, _, _) = finish(f.spawn_start("fail-fast"));
    assert_eq!(code, 1, "a failed run ends --wait with 1");
    let v = f.show("fail-fast");
    assert_eq!(state(&v), "Failed");
    let east = member(&v, "east-1");
    assert_eq!(state(east), "Failed");
    assert!(east["error"].as_str().unwrap().contains("simulated node failure"), "{east}");
    assert!(v["error"].as_str().unwrap().contains("wave-a"), "{}", v["error"]);
    assert_ne!(state(member(&v, "west-1")), "Running");
    std::fs::remove_file(f.dir("east-1").join("fail")).unwrap();
    let west_before = member(&v, "west-1")["attempts"].clone();
    let out = run_ok(f.cmd().args(["run", "retry", "fail-fast", "--failed", "--wait", "-o", "json"]));
    let started: Vec<Value> =
        fleet_events(&out).into_iter().filter(|e| e["event"] == "MemberStarted").collect();
    assert_eq!(started.len(), 1, "only the failed member is re-run: {out}");
    assert_eq!(started[0]["member"], "east-1");
    let v = f.show("fail-fast");
    assert_eq!(state(&v), "Completed", "{v:#}");
    assert_eq!(member(&v, "east-1")["attempts"], 2);
    if state(member(&v, "west-1")) == "Completed" {
        assert_eq!(member(&v, "west-1")["attempts"], west_before, "west-1 was not re-run");
    }
    assert!(f.kubelets("east-1").iter().all(|k| k.contains(&to)));

    // maxAllowedFailures 1 on wave-a: the failure is tolerated, the run completes.
    f.workers_back_to_136(&["east-1", "west-1"]);
    std::fs::write(f.dir("east-1").join("fail"), "").unwrap();
    let tolerant = f.root.join("tolerant.yaml");
    std::fs::write(
        &tolerant,
        "stages:\n  - name: prod\n    groups: [{name: wave-a, maxAllowedFailures: 1}, {name: wave-b}]\n    maxAllowedFailures: 1\n",
    )
    .unwrap();
    f.create("tolerant", &["--stages", tolerant.to_str().unwrap()]);
    let (code, out, err) = finish(f.spawn_start("tolerant"));
    assert_eq!(code, 0, "{out}\n{err}");
    let v = f.show("tolerant");
    assert_eq!(state(&v), "Completed");
    assert_eq!(v["failureCount"], 1);
    assert_eq!((state(member(&v, "east-1")), state(member(&v, "west-1"))), ("Failed", "Completed"));
    assert!(
        v["unselected"].as_array().unwrap().iter().any(|m| m == "canary-1"),
        "no stage selects the canary"
    );
    std::fs::remove_file(f.dir("east-1").join("fail")).unwrap();

    // ---------------------------------------------------------------- node images
    // west-1's nodes run ubuntu/1.0; its source offers 1.1. A NodeImageOnly run (Consistent)
    // freezes ubuntu=1.1, rolls every node at its version with REFIT_NODE_IMAGES for the
    // action, and a second run finds the member at the target.
    annotate_images(f.dir("west-1"), "ubuntu/1.0");
    let source = f.root.join("images.yaml");
    std::fs::write(&source, "- ubuntu/1.0\n- ubuntu/1.1\n").unwrap();
    run_ok(f.cmd().args(["member", "update", "west-1", "--node-image-source"]).arg(&source));
    let kubelets_before = f.kubelets("west-1");
    for run in ["images", "images-again"] {
        run_ok(
            f.cmd()
                .args([
                    "run",
                    "create",
                    run,
                    "--upgrade-type",
                    "NodeImageOnly",
                    "--node-image-selection",
                    "Consistent",
                ])
                .arg("--stages")
                .arg(&stages),
        );
        let (code, out, err) = finish(f.spawn_start(run));
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let v = f.show("images");
    assert_eq!(state(member(&v, "west-1")), "Completed", "{v:#}");
    assert_eq!(v["targets"]["nodeImages"]["images"]["ubuntu"], "1.1", "{}", v["targets"]);
    assert_eq!(member(&v, "west-1")["target"]["nodeImages"]["ubuntu"], "1.1");
    assert_eq!(node_images(f.dir("west-1")), vec!["ubuntu/1.1"; 3]);
    assert_eq!(f.kubelets("west-1"), kubelets_before, "node images only: versions unchanged");
    let again = member(&f.show("images-again"), "west-1").clone();
    assert_eq!(state(&again), "Skipped");
    assert!(again["message"].as_str().unwrap().contains("node images already at or ahead"), "{again}");

    // ---------------------------------------------------------------- profiles
    // Pinned to 1.37: the catalog's newest 1.37 patch is newer than what the members run, so
    // a run is generated (not started); asking again returns the same run.
    run_ok(f.cmd().args([
        "profile",
        "create",
        "pinned",
        "--channel",
        "TargetKubernetesVersion",
        "--target-kubernetes-version",
        "1.37",
        "--strategy",
        "two-stage",
    ]));
    let first: Value =
        serde_json::from_str(&run_ok(f.cmd().args(["profile", "generate-run", "pinned", "-o", "json"])))
            .unwrap();
    let second: Value =
        serde_json::from_str(&run_ok(f.cmd().args(["profile", "generate-run", "pinned", "-o", "json"])))
            .unwrap();
    let name = first["run"].as_str().unwrap_or_else(|| panic!("no run generated: {first}"));
    assert_eq!((first["created"].as_bool(), second["created"].as_bool()), (Some(true), Some(false)));
    assert_eq!(second["run"], name);
    let generated = f.show(name);
    assert_eq!(state(&generated), "NotStarted");
    assert_eq!(generated["strategy"]["name"], "two-stage");
    let p: Value =
        serde_json::from_str(&run_ok(f.cmd().args(["profile", "show", "pinned", "-o", "json"]))).unwrap();
    assert_eq!(
        (p["lastTrigger"]["status"].as_str(), p["lastTrigger"]["run"].as_str()),
        (Some("Succeeded"), Some(name))
    );

    // ---------------------------------------------------------------- bound to its cluster
    // moved-1 was added with a copy of canary-1's kubeconfig; then the file is overwritten
    // with west-1's. The member is not rebound, and a run never touches west-1 through it:
    // moved-1 waits Pending with the reason, then is deferred by its budget.
    f.workers_back_to_136(&["west-1"]);
    let moved = f.root.join("moved.conf");
    std::fs::copy(f.dir("canary-1").join("kubeconfig"), &moved).unwrap();
    let action =
        format!("exec:{} {} {{node}} {{to}}", f.root.join("node.sh").display(), f.dir("west-1").display());
    run_ok(
        f.cmd()
            .args(["member", "add", "moved-1", "--update-group", "moved", "--context", "refit-testbed"])
            .args(["--pending-budget", "2s", "--action", &action])
            .args(etcd_backup_upgrade_args(f.dir("west-1")))
            .arg("--kubeconfig")
            .arg(&moved),
    );
    std::fs::copy(f.dir("west-1").join("kubeconfig"), &moved).unwrap();
    let out = f
        .cmd()
        .args(["member", "update", "moved-1", "--context", "refit-testbed", "--kubeconfig"])
        .arg(&moved)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("reach another cluster"), "{err}");
    let only_moved = f.root.join("moved.yaml");
    std::fs::write(&only_moved, "stages: [{name: moved, groups: [{name: moved}]}]\n").unwrap();
    let west_runs = cluster_runs(&f.store).len();
    f.create("bound", &["--stages", only_moved.to_str().unwrap()]);
    let (_, out, err) = finish(f.spawn_start("bound"));
    let v = f.show("bound");
    let m = member(&v, "moved-1");
    assert_eq!(state(m), "Skipped", "{out}{err}{v:#}");
    let msg = m["message"].as_str().unwrap();
    assert!(msg.contains("deferred") && msg.contains("another cluster"), "{msg}");
    assert!(f.kubelets("west-1").iter().any(|k| k.contains("1.36")), "west-1 was not touched");
    assert_eq!(cluster_runs(&f.store).len(), west_runs, "no refit upgrade ran");
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Sets every node's `refit.dev/node-image` annotation (what the node's builder would do).
fn annotate_images(dir: &Path, image: &str) {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    block_on(async {
        let client = refit_testbed::Testbed::attach(dir).unwrap().client().await.unwrap();
        let nodes: Api<Node> = Api::all(client);
        for n in nodes.list(&ListParams::default()).await.unwrap() {
            let patch = serde_json::json!({"metadata": {"annotations": {"refit.dev/node-image": image}}});
            nodes
                .patch(&n.metadata.name.unwrap(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    })
}

fn node_images(dir: &Path) -> Vec<String> {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, ListParams};
    block_on(async {
        let client = refit_testbed::Testbed::attach(dir).unwrap().client().await.unwrap();
        Api::<Node>::all(client)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|n| {
                n.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("refit.dev/node-image"))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    })
}

#[test]
fn bad_strategy_and_run_files_and_unknown_names_are_refused_with_exit_code_2_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("refit.db");
    let file = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let seed = file(
        "seed.json",
        r#"{ "stages": [ { "name": "stage1", "groups": [ { "name": "group-1a" } ], "afterStageWaitInSeconds": 3600 } ] }"#,
    );
    let fleet = || {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("refit"));
        c.arg("fleet").arg("--store").arg(&store);
        c
    };
    let refused = |c: &mut Command, needle: &str| {
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{c:?}: {err}");
        assert!(err.contains(needle), "{c:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    };
    // The seed's stages file is accepted as it is.
    run_ok(fleet().args(["strategy", "create", "seed", "-f"]).arg(&seed));
    for (name, text, needle) in [
        ("unknown-field.yaml", "stages: [{name: s, groups: [{name: g}], colour: red}]\n", "colour"),
        ("bad-name.yaml", "stages: [{name: Stage1, groups: [{name: g}]}]\n", "Stage1"),
        ("no-stages.yaml", "stages: []\n", "no stages"),
        ("dup.yaml", "stages: [{name: s, groups: [{name: g}]}, {name: s, groups: [{name: h}]}]\n", "twice"),
        (
            "bad-gate.yaml",
            "stages: [{name: s, groups: [{name: g}], afterGates: [{type: Coffee}]}]\n",
            "Coffee",
        ),
        (
            "limit.yaml",
            "stages: [{name: s, groups: [{name: g, maxConcurrency: \"150%\"}]}]\n",
            "maxConcurrency",
        ),
        ("not-yaml.yaml", "{{{{", "not valid"),
    ] {
        let p = file(name, text);
        refused(fleet().args(["strategy", "create", "x", "-f"]).arg(&p), needle);
        refused(
            fleet()
                .args([
                    "run",
                    "create",
                    "r",
                    "--upgrade-type",
                    "Full",
                    "--kubernetes-version",
                    "1.37.1",
                    "--stages",
                ])
                .arg(&p),
            needle,
        );
    }
    refused(
        fleet().args(["strategy", "create", "x", "-f"]).arg(tmp.path().join("missing.yaml")),
        "missing.yaml",
    );
    refused(fleet().args(["run", "create", "r", "--upgrade-type", "Sideways"]), "unknown upgrade type");
    refused(fleet().args(["run", "create", "r", "--upgrade-type", "Full"]), "--kubernetes-version");
    refused(
        fleet().args([
            "run",
            "create",
            "r",
            "--upgrade-type",
            "NodeImageOnly",
            "--kubernetes-version",
            "1.37.1",
        ]),
        "drop --kubernetes-version",
    );
    refused(
        fleet().args([
            "run",
            "create",
            "r",
            "--upgrade-type",
            "Full",
            "--kubernetes-version",
            "1.37.1",
            "--strategy",
            "nope",
        ]),
        "no strategy named 'nope'",
    );
    refused(fleet().args(["run", "show", "nope"]), "no update run named 'nope'");
    refused(fleet().args(["run", "start", "nope"]), "no update run named 'nope'");
    refused(fleet().args(["member", "show", "nope"]), "no member named 'nope'");
    refused(fleet().args(["member", "add", "Bad_Name"]), "not valid");
    refused(
        fleet().args(["member", "add", "m", "--window"]).arg(file(
            "w.yaml",
            "recurrence: {weekly: []}\nstart: \"22:00\"\ndurationMinutes: 60\ntimeZone: UTC\n",
        )),
        "at least one day",
    );
    refused(
        fleet().args(["member", "add", "m", "--window"]).arg(file(
            "z.yaml",
            "recurrence: {weekly: [Monday]}\nstart: \"22:00\"\ndurationMinutes: 60\ntimeZone: Mars/Olympus\n",
        )),
        "unknown time zone",
    );
    run_ok(fleet().args([
        "run",
        "create",
        "r",
        "--upgrade-type",
        "Full",
        "--kubernetes-version",
        "1.37.1",
        "--strategy",
        "seed",
    ]));
    refused(fleet().args(["run", "skip", "r", "--targets", "Cluster:x"]), "not a skip target");
    refused(fleet().args(["run", "skip", "r", "--targets", "Member:ghost"]), "no member 'ghost'");
    refused(fleet().args(["gate", "approve", "r", "stage1/after/9"]), "no gate");
    refused(
        fleet().args(["run", "create", "r", "--upgrade-type", "Full", "--kubernetes-version", "1.37.1"]),
        "exists already",
    );
    refused(fleet().args(["run", "stop", "r"]), "cannot stop");
    // Nothing the refusals touched was written.
    let listed: Value = serde_json::from_str(&run_ok(fleet().args(["run", "list", "-o", "json"]))).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let events: Value =
        serde_json::from_str(&run_ok(fleet().args(["run", "show", "r", "--events", "-o", "json"]))).unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 0, "{events:#}");
    assert_eq!(
        serde_json::from_str::<Value>(&run_ok(fleet().args(["member", "list", "-o", "json"]))).unwrap(),
        serde_json::json!([])
    );
    assert_eq!(
        serde_json::from_str::<Value>(&run_ok(fleet().args(["strategy", "list", "-o", "json"])))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A stage behind a ScheduledStart gate, driven by `refit fleet daemon` (killed with -9 and
/// replaced mid-upgrade): win-1's maintenance window closes while its control-plane node is
/// under way, so that node finishes, no other starts, and the member waits Pending for the
/// window's next opening; when its window is cleared it continues the same single-cluster run
/// (finished nodes not repeated). late-1's window is closed and its pending budget short: it
/// is deferred with the reason instead of holding the stage. Then Stable and Rapid profiles
/// generate their runs from the catalog.
#[test]
fn a_window_closing_mid_member_pauses_it_the_daemon_resumes_it_and_budgets_defer_members() {
    let f = Fleet::with(&[("win-1", "a"), ("late-1", "b")], STRATEGY, 2);
    let to = release(37);
    let utc = jiff::tz::TimeZone::UTC;
    let every_day = "{weekly: [Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday]}";
    let write = |name: &str, text: String| {
        let p = f.root.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    // win-1: every day, one minute from 30 s ago (closes in about 30 s). late-1: opens in two
    // hours, 3 s of pending budget.
    // Whole seconds: window and gate times are written to the second.
    let second = |t: jiff::Timestamp| jiff::Timestamp::from_second(t.as_second()).unwrap();
    let now = second(jiff::Timestamp::now());
    let win_start = now - jiff::SignedDuration::from_secs(30);
    let closes = win_start + jiff::SignedDuration::from_secs(60);
    let window = write(
        "win.yaml",
        format!(
            "recurrence: {every_day}\nstart: \"{}\"\ndurationMinutes: 1\ntimeZone: UTC\n",
            win_start.to_zoned(utc.clone()).strftime("%H:%M:%S")
        ),
    );
    run_ok(f.cmd().args(["member", "update", "win-1", "--window"]).arg(&window));
    let later = write(
        "later.yaml",
        format!(
            "recurrence: {every_day}\nstart: \"{}\"\ndurationMinutes: 30\ntimeZone: UTC\n",
            (now + jiff::SignedDuration::from_hours(2)).to_zoned(utc.clone()).strftime("%H:%M")
        ),
    );
    run_ok(f.cmd().args(["member", "update", "late-1", "--pending-budget", "3s", "--window"]).arg(&later));

    // The stage starts at a scheduled time 8 s from now (its weekday and time in UTC).
    let gate_at = second(jiff::Timestamp::now()) + jiff::SignedDuration::from_secs(8);
    let z = gate_at.to_zoned(utc.clone());
    let gated = write(
        "gated.yaml",
        format!(
            "stages:\n  - name: only\n    beforeGates: [{{type: ScheduledStart, startDay: {}, startTime: \"{}\", utcOffset: \"+00:00\"}}]\n    groups: [{{name: a}}, {{name: b}}]\n",
            z.strftime("%A"),
            z.strftime("%H:%M:%S")
        ),
    );
    run_ok(f.cmd().args(["strategy", "create", "gated", "-f"]).arg(&gated));
    std::fs::write(f.dir("win-1").join("hold"), "").unwrap();
    f.create("windows", &["--strategy", "gated"]);
    run_ok(f.cmd().args(["run", "start", "windows"]));

    let daemon = |n: usize, extra: &[&str]| {
        let log = std::fs::File::create(f.root.join(format!("daemon-{n}.log"))).unwrap();
        f.cmd()
            .args(["daemon", "-o", "json"])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let mut first = daemon(1, &[]);
    let v = f.wait_for("windows", "the stage waiting for its scheduled start", |v| {
        stage(v, "only")["beforeGates"][0]["state"] == "Pending"
    });
    if jiff::Timestamp::now() < gate_at {
        assert!(members(&v).iter().all(|m| state(m) == "NotStarted"), "nothing before the gate: {v:#}");
        assert!(v["pending"].to_string().contains("ScheduledStart"), "{}", v["pending"]);
    }
    let v = f.wait_for("windows", "win-1 under way", |v| state(member(v, "win-1")) == "Running");
    assert!(ts(&member(&v, "win-1")["startedAt"]) >= gate_at, "started before the scheduled gate");
    assert_eq!(stage(&v, "only")["beforeGates"][0]["state"], "Completed");

    // late-1: Pending on its window, then deferred after 3 s, with both reasons.
    let v = f.wait_for("windows", "late-1 deferred", |v| state(member(v, "late-1")) == "Skipped");
    let msg = member(&v, "late-1")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("deferred") && msg.contains("maintenance window closed"), "{msg}");
    assert!(f.kubelets("late-1").iter().all(|k| k.contains("1.36")), "nothing started on late-1");

    // Kill -9 the daemon while win-1's control-plane action is held; a new daemon relaunches it.
    let actions = |m: &str| -> Vec<String> {
        std::fs::read_to_string(f.dir(m).join("actions.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let wait_actions = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while actions("win-1").len() < n {
            assert!(Instant::now() < deadline, "action {n} never ran: {:?}", actions("win-1"));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_actions(1);
    first.kill().unwrap();
    first.wait().unwrap();
    let second = daemon(2, &["--exit-when-idle"]);
    wait_actions(2);
    assert_eq!(actions("win-1"), ["control-plane-1", "control-plane-1"], "relaunched the node under way");
    // Let the window close while that node is under way, then let the node finish.
    while jiff::Timestamp::now() <= closes + jiff::SignedDuration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_file(f.dir("win-1").join("hold")).unwrap();
    let v = f.wait_for("windows", "win-1 paused on its window", |v| {
        member(v, "win-1")["pending"]["kind"] == "WindowClosed"
    });
    let win = member(&v, "win-1");
    assert_eq!(state(win), "Pending");
    let opens_at = ts(&win["pending"]["opensAt"]);
    let tomorrow = win_start + jiff::SignedDuration::from_hours(24);
    assert!(
        (opens_at.as_second() - tomorrow.as_second()).abs() <= 1,
        "opens {opens_at}, expected {tomorrow}"
    );
    assert_eq!(state(&v), "Pending");
    assert_eq!(actions("win-1").len(), 2, "no node started after the window closed");
    let ks = f.kubelets("win-1");
    assert_eq!(ks.iter().filter(|k| k.contains(&to)).count(), 1, "the control plane only: {ks:?}");
    let runs = cluster_runs(&f.store);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].2, "paused", "{runs:?}");
    let shown = run_ok(f.cmd().args(["run", "show", "windows"]));
    assert!(shown.contains("maintenance window closed; opens at"), "{shown}");

    // The operator clears the window: the daemon continues win-1 in the same run, and exits
    // when nothing is left.
    run_ok(f.cmd().args(["member", "update", "win-1", "--clear-window"]));
    let (code, out, _) = finish(second);
    let log = std::fs::read_to_string(f.root.join("daemon-2.log")).unwrap();
    assert_eq!(code, 0, "{out}{log}");
    let v = f.show("windows");
    assert_eq!(state(&v), "Completed", "{v:#}");
    let win = member(&v, "win-1");
    assert_eq!((state(win), win["attempts"].as_u64()), ("Completed", Some(2)), "{win}");
    assert!(f.kubelets("win-1").iter().all(|k| k.contains(&to)));
    let mut a = actions("win-1");
    a.sort();
    assert_eq!(
        a,
        ["control-plane-1", "control-plane-1", "worker-001", "worker-002"],
        "nothing finished was repeated"
    );
    let runs = cluster_runs(&f.store);
    assert_eq!((runs.len(), runs[0].2.as_str()), (1, "completed"), "the paused run was resumed: {runs:?}");
    assert!(log.contains("MemberPaused"), "{log}");

    // ---------------------------------------------------------------- channels
    // Rapid follows the newest GA minor (N), Stable the one before (N-1); each generates a run
    // (not started) from the built-in catalog, for the members behind it.
    let mut minors = Vec::new();
    for channel in ["Stable", "Rapid"] {
        let name = channel.to_lowercase();
        run_ok(f.cmd().args(["profile", "create", &name, "--channel", channel]));
        let g: Value =
            serde_json::from_str(&run_ok(f.cmd().args(["profile", "generate-run", &name, "-o", "json"])))
                .unwrap();
        let run = g["run"].as_str().unwrap_or_else(|| panic!("{channel}: no run generated: {g}"));
        let r = f.show(run);
        assert_eq!(state(&r), "NotStarted");
        let target: refit_core::Version = r["spec"]["kubernetesVersion"].as_str().unwrap().parse().unwrap();
        minors.push(target.minor_version());
    }
    assert_eq!(minors[0].minor + 1, minors[1].minor, "Stable is one minor behind Rapid: {minors:?}");
    assert!(minors[1].minor >= 37, "Rapid is at least what the members run: {minors:?}");
}

/// The health gate `name` of `stage_name` in a run's JSON.
fn health_gate<'a>(v: &'a Value, stage_name: &str, name: &str) -> &'a Value {
    stage(v, stage_name)["healthGates"]
        .as_array()
        .unwrap_or_else(|| panic!("no health gates: {v:#}"))
        .iter()
        .find(|h| h["gate"]["name"] == name)
        .unwrap()
}

#[test]
fn a_stage_health_gate_holds_the_next_stage_until_its_check_passes_and_a_failing_one_pauses_the_run() {
    let (port, status, hits) = support::health_server();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let strategy = format!(
        "stages:\n  - name: canary\n    groups: [{{name: canary}}]\n    healthGates: [{{name: shop, type: http, url: '{url}', soak: 3s, timeout: 10m}}]\n  - name: prod\n    groups: [{{name: prod}}]\n"
    );
    let f = Fleet::with(&[("canary-1", "canary"), ("prod-1", "prod")], &strategy, 1);
    let to = release(37);

    // ------------------------------------------------ failing: the next stage does not start
    f.create("gated", &["--strategy", "two-stage"]);
    let driver = f.spawn_start("gated");
    let v = f.wait_for("gated", "the health gate failing", |v| {
        health_gate(v, "canary", "shop")["waiting"]["kind"] == "Failing"
    });
    assert_eq!(state(member(&v, "canary-1")), "Completed", "{v:#}");
    assert_eq!(state(&v), "Pending", "{v:#}");
    let pending = &v["pending"]["reason"];
    assert_eq!(pending["kind"], "HealthGate", "the run says what it waits on: {v:#}");
    assert_eq!((pending["stage"].as_str(), pending["gate"].as_str()), (Some("canary"), Some("shop")));
    assert!(pending["waiting"]["reason"].as_str().unwrap().contains("HTTP 500"), "{pending}");
    let shown = run_ok(f.cmd().args(["run", "show", "gated", "-o", "wide"]));
    assert!(shown.contains("health gate shop (http, soak 3s)"), "{shown}");
    assert!(shown.contains("answered HTTP 500: shop is degraded"), "{shown}");
    // Probed again and again, and still nothing on prod.
    let seen = hits.load(std::sync::atomic::Ordering::SeqCst);
    f.wait_for("gated", "more probes", |_| hits.load(std::sync::atomic::Ordering::SeqCst) >= seen + 2);
    let v = f.show("gated");
    assert_eq!(state(member(&v, "prod-1")), "NotStarted", "{v:#}");
    assert!(f.kubelets("prod-1").iter().all(|k| k.contains("1.36")), "prod untouched");

    // ------------------------------------------------ kill -9 the driver mid-gate
    let mut driver = driver;
    driver.kill().unwrap();
    driver.wait().unwrap();
    let probes_before = health_gate(&f.show("gated"), "canary", "shop")["observedAt"].clone();
    assert!(probes_before.is_string(), "probed before the kill");

    // ------------------------------------------------ 200 for the soak: stage 2 runs
    // A new driver goes on with the gate where the killed one left it (the run keeps it).
    status.store(200, std::sync::atomic::Ordering::SeqCst);
    let (code, out, err) = finish(f.spawn_start("gated"));
    assert_eq!(code, 0, "{out}{err}");
    let kinds: Vec<String> =
        history(&mut f.cmd(), "gated").iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert!(kinds.iter().any(|k| k == "DriverTookOver"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "HealthGateReached").count(),
        1,
        "the gate was taken up, not reached again: {kinds:?}"
    );
    let v = f.show("gated");
    assert_eq!(state(&v), "Completed", "{v:#}");
    let gate = health_gate(&v, "canary", "shop");
    assert_eq!(gate["state"], "Passed", "{gate:#}");
    let passed = ts(&gate["completedAt"]);
    let held = ts(&gate["holdingSince"]);
    assert!(passed.duration_since(held).as_secs() >= 3, "held its 3 s soak: {gate:#}");
    eprintln!(
        "health gate with a 3s soak passed {} ms after it first held; prod-1 started {} ms after that",
        passed.duration_since(held).as_millis(),
        ts(&member(&v, "prod-1")["startedAt"]).duration_since(passed).as_millis()
    );
    assert!(ts(&member(&v, "prod-1")["startedAt"]) >= passed, "prod after the gate: {v:#}");
    assert!(f.kubelets("prod-1").iter().all(|k| k.contains(&to)));
    let events = fleet_events(&out);
    assert!(
        events.iter().any(|e| e["event"] == "HealthGateObserved" && e["observation"]["result"] == "Holds"),
        "{out}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "HealthGateObserved").count() >= 3,
        "failing probes before the kill, holding ones after: {kinds:?}"
    );

    // ------------------------------------------------ a gate that fails pauses the run
    f.workers_back_to_136(&["canary-1", "prod-1"]);
    status.store(503, std::sync::atomic::Ordering::SeqCst);
    let short = f.root.join("short.yaml");
    std::fs::write(
        &short,
        format!(
            "stages:\n  - name: canary\n    groups: [{{name: canary}}]\n    healthGates: [{{name: shop, type: http, url: '{url}', timeout: 4s}}]\n  - name: prod\n    groups: [{{name: prod}}]\n"
        ),
    )
    .unwrap();
    f.create("paused", &["--stages", short.to_str().unwrap()]);
    let (code, out, err) = finish(f.spawn_start("paused"));
    assert_eq!(code, 1, "a paused run is not done: {out}{err}");
    let v = f.show("paused");
    assert_eq!(state(&v), "Stopped", "{v:#}");
    let gate = health_gate(&v, "canary", "shop");
    assert_eq!(gate["state"], "Failed", "{gate:#}");
    // For the report (not asserted: wall-clock): how long after it was reached the gate
    // stopped the run (its timeout plus at most one poll).
    eprintln!(
        "health gate with a 4s timeout failed {} ms after it was reached",
        ts(&gate["completedAt"]).duration_since(ts(&gate["reachedAt"])).as_millis()
    );
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("paused: health gate shop of stage canary failed: timed out after 4s")
            && message.contains("HTTP 503"),
        "{v:#}"
    );
    assert_eq!(state(member(&v, "prod-1")), "NotStarted");
    assert!(f.kubelets("prod-1").iter().any(|k| k.contains("1.36")), "prod untouched");
    let shown = run_ok(f.cmd().args(["run", "show", "paused"]));
    assert!(shown.contains("paused: health gate shop of stage canary failed"), "{shown}");
    // Started again once the shop is healthy: the gate is evaluated afresh and prod runs.
    status.store(200, std::sync::atomic::Ordering::SeqCst);
    let (code, out, err) = finish(f.spawn_start("paused"));
    assert_eq!(code, 0, "{out}{err}");
    let v = f.show("paused");
    assert_eq!(state(&v), "Completed", "{v:#}");
    assert_eq!(health_gate(&v, "canary", "shop")["state"], "Passed");
    assert!(f.kubelets("prod-1").iter().all(|k| k.contains(&to)));
}

/// A catalog newer than the built-in one listing 1.37.9 (out since before today), as a mirror
/// would serve it.
fn catalog_with_1_37_9() -> String {
    let shipped = include_str!("../../../data/catalog.yaml");
    let with_patch = shipped.replacen(r#""1.37.2"]"#, r#""1.37.2", "1.37.9"]"#, 1);
    assert_ne!(with_patch, shipped, "the shipped catalog's 1.37 patches moved: update this test");
    let updated = jiff::Zoned::now().date().to_string();
    let lines: Vec<String> = with_patch
        .lines()
        .map(|l| if l.starts_with("updated:") { format!("updated: \"{updated}\"") } else { l.to_string() })
        .collect();
    lines.join("\n") + "\n"
}

#[test]
fn the_daemon_fires_an_enabled_profile_once_per_target_and_a_disabled_one_never() {
    // One sandbox member at 1.36 and a catalog refreshed to list 1.37.9: the Rapid profile's
    // target. Its strategy holds the run at a before-stage Approval, so nothing is upgraded.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = root.join("refit.db");
    let dir = root.join("only-1");
    let _guard = support::sandbox_up(&dir, &release(36), 1, 0);
    let fleet = || {
        let mut c = Fleet::cmd_in(&store);
        c.env("REFIT_STATE_DIR", root);
        c
    };
    run_ok(
        fleet()
            .args(["member", "add", "only-1", "--update-group", "all", "--context", "refit-testbed"])
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig")),
    );
    let gated = root.join("gated.yaml");
    std::fs::write(
        &gated,
        "stages:\n  - name: all\n    groups: [{name: all}]\n    beforeGates: [{type: Approval}]\n",
    )
    .unwrap();
    run_ok(fleet().args(["strategy", "create", "gated", "-f"]).arg(&gated));
    let newer = root.join("newer-catalog.yaml");
    std::fs::write(&newer, catalog_with_1_37_9()).unwrap();
    run_ok(
        Command::new(assert_cmd::cargo::cargo_bin("refit"))
            .env("REFIT_STATE_DIR", root)
            .args(["catalog", "update", "--from"])
            .arg(&newer),
    );
    run_ok(fleet().args(["profile", "create", "auto", "--channel", "Rapid", "--strategy", "gated"]));
    run_ok(fleet().args([
        "profile",
        "create",
        "off",
        "--channel",
        "Rapid",
        "--strategy",
        "gated",
        "--disabled",
    ]));
    let runs = || -> Vec<Value> {
        serde_json::from_str::<Value>(&run_ok(fleet().args(["run", "list", "-o", "json"])))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(runs().is_empty());

    // The daemon generates the run and starts it; it waits at its gate.
    let daemon = fleet().arg("daemon").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let all = runs();
        if let Some(r) = all.iter().find(|r| r["state"] == "Pending") {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no run generated and started: {all:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(run["name"], "auto-rapid-1-37-9", "{run:#}");
    assert_eq!(run["spec"]["kubernetesVersion"], "1.37.9", "the refreshed catalog's release");
    let mut killed = daemon;
    killed.kill().unwrap();
    let (_, out, err) = finish(killed);
    assert!(out.contains("profile auto: run auto-rapid-1-37-9 generated and started"), "{out}\n{err}");
    let all = runs();
    assert_eq!(all.len(), 1, "exactly one run, none from the disabled profile: {all:#?}");
    let profile: Value =
        serde_json::from_str(&run_ok(fleet().args(["profile", "show", "auto", "-o", "json"]))).unwrap();
    assert_eq!(profile["lastGeneratedRun"], "auto-rapid-1-37-9", "{profile:#}");
    assert_eq!(profile["lastTrigger"]["status"], "Succeeded", "{profile:#}");
    let off: Value =
        serde_json::from_str(&run_ok(fleet().args(["profile", "show", "off", "-o", "json"]))).unwrap();
    assert!(off.get("lastTrigger").is_none() && off.get("lastGeneratedRun").is_none(), "{off:#}");

    // Deleted by a person: a new daemon does not make it again (once per target).
    run_ok(fleet().args(["run", "delete", "auto-rapid-1-37-9"]));
    let again = fleet().args(["daemon", "--exit-when-idle"]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(runs().is_empty(), "a deleted run was generated again: {:#?}", runs());
}
