//! `refit upgrade` end to end, as an operator runs it: the real binary against a real sandbox
//! (etcd, 1–3 kube-apiservers behind a load balancer, controller-managers, schedulers, kwok
//! nodes), the sandbox driven through the generic `exec` action calling `refit sandbox
//! upgrade-node` — no special path in the engine.
//!
//! An independent watcher (its own watches on nodes and pods, nothing shared with refit)
//! records what the safety invariants forbid: a PDB-covered app below its budget, more workers
//! unschedulable at once than max-unavailable, a worker kubelet newer than a control-plane
//! node's, and any node left cordoned at the end.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams};
use refit_testbed::Testbed;
use refit_testbed::workloads::{Budget, apply, deployment, pdb, wait_pods_ready};
use serde_json::json;
use support::watcher::{Watcher, kubelet, unschedulable};
use support::{APPS, NS, Sandbox, catalog_newest_at, has_minor, install_apps, refit, release};

/// A sandbox for one test, stopped when the test ends however it ends.
struct Cluster {
    // Fields drop in order: the sandbox is stopped before its directory is removed.
    _guard: Sandbox,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    /// `--accept` for the availability blockers this topology has by construction.
    accepts: Vec<String>,
}

impl Cluster {
    fn up(version: &str, control_planes: usize, workers: usize) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        let guard = support::sandbox_up(&dir, version, control_planes, workers);
        // The testbed runs one etcd member whatever the control planes.
        let mut accepts = vec!["--accept=etcd-members".to_string()];
        if control_planes < 2 {
            accepts.push("--accept=control-plane-count".into());
        }
        if workers < 2 {
            accepts.push("--accept=worker-count".into());
        }
        Cluster { _guard: guard, store: tmp.path().join("refit.db"), _tmp: tmp, dir, accepts }
    }

    fn testbed(&self) -> Testbed {
        Testbed::attach(&self.dir).unwrap()
    }

    async fn client(&self) -> kube::Client {
        self.testbed().client().await.unwrap()
    }

    /// `refit upgrade` against this sandbox, with its journal, the sandbox action, `--yes`
    /// and the etcd backup through the etcd API.
    fn upgrade(&self, to: &str) -> assert_cmd::Command {
        self.upgrade_with_store(to, &self.store)
    }

    /// The same with another journal (as another machine would have).
    fn upgrade_with_store(&self, to: &str, store: &Path) -> assert_cmd::Command {
        let mut cmd = self.upgrade_without_backup(to, store);
        cmd.args(support::etcd_backup_args(&self.testbed()))
            .arg("--backup-dir")
            .arg(self.dir.parent().unwrap().join("backups"));
        cmd
    }

    /// `refit upgrade` with no backup flag at all (the action decides whether it can back up).
    fn upgrade_without_backup(&self, to: &str, store: &Path) -> assert_cmd::Command {
        let tb = self.testbed();
        let mut cmd = refit();
        cmd.env("REFIT_SANDBOX_DIR", &self.dir)
            .args(["upgrade", "--to", to, "--yes", "--kubeconfig"])
            .arg(tb.kubeconfig())
            // The sandbox's topology (one etcd member, one or three control planes, few
            // workers) is what these tests run on, not what they test: Kismatic's
            // availability rows for it are accepted, as its operator would.
            .args(&self.accepts)
            .arg("--store")
            .arg(store);
        cmd
    }

    async fn nodes(&self) -> Vec<Node> {
        Api::<Node>::all(self.client().await).list(&ListParams::default()).await.unwrap().items
    }
}

/// Writes an exec action that logs each invocation, then runs the sandbox's upgrade-node
/// (what an operator's per-node script does), and returns its path and its log.
fn logging_action(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("actions.log");
    let script = dir.join("upgrade-node.sh");
    let refit_bin = assert_cmd::cargo::cargo_bin("refit");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$REFIT_NODE $REFIT_TO $REFIT_PHASE\" >> '{}'\nsleep 0.3\nexec '{}' sandbox upgrade-node \"$REFIT_NODE\" --to \"$REFIT_TO\"\n",
            log.display(),
            refit_bin.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Units whose last step (uncordon) is journaled done, read from the journal itself.
fn finished_units(store: &Path, to: &str) -> BTreeSet<String> {
    if !store.exists() {
        return BTreeSet::new();
    }
    let s = refit_store::Store::open(store).unwrap();
    let Some(run) = s.runs().unwrap().into_iter().next() else { return BTreeSet::new() };
    s.steps(&run.id)
        .unwrap()
        .into_iter()
        .filter(|st| st.step == format!("uncordon@{to}") && st.state == "done")
        .map(|st| st.unit)
        .collect()
}

fn spawn(cmd: &assert_cmd::Command) -> Child {
    let mut c = std::process::Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let log = std::env::temp_dir().join(format!("refit-upgrade-test-{}.stderr", std::process::id()));
    let err = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    c.stdout(Stdio::piped()).stderr(err).spawn().unwrap()
}

/// What refit printed on stderr in this test process's spawned runs.
fn spawned_stderr() -> String {
    std::fs::read_to_string(
        std::env::temp_dir().join(format!("refit-upgrade-test-{}.stderr", std::process::id())),
    )
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_and_thirty_workers_survive_ten_kills_and_reach_the_target() {
    let (from, to) = (release(36), release(37));
    let c = Cluster::up(&from, 3, 30);
    let client = c.client().await;
    install_apps(&client, &c.testbed()).await;
    let watcher = Watcher::start(client.clone(), NS).await;
    let (script, log) = logging_action(c._tmp.path());
    let mut upgrade = c.upgrade(&to);
    upgrade.args(["--max-unavailable", "3", "--action"]).arg(format!("exec:{} {{node}}", script.display()));
    upgrade.args(["-o", "json"]);

    // Ten kill -9 at pseudo-random moments (seeded: a failure can be replayed), each followed
    // by a rerun of the same command.
    let mut rng_state: u64 = 0x5eed_2026;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut kills = 0;
    while kills < 10 {
        let done_before = finished_units(&c.store, &to);
        let lines_before = log_lines(&log).len();
        let mut child = spawn(&upgrade);
        // Kill after a random number of finished steps, plus a random delay: points spread over
        // the control-plane and worker phases, between steps and in the middle of actions.
        let steps = 1 + next() % 12;
        let extra_ms = next() % 250;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send(v["event"].as_str().unwrap_or("").to_string());
                }
            }
        });
        let mut seen = 0;
        let mut finished = false;
        while seen < steps {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(e) if e == "step-done" => seen += 1,
                Ok(e) if e == "summary" => {
                    finished = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    finished = true;
                    break;
                }
            }
        }
        if finished {
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "attempt {} ended on its own with {status}: {}",
                kills + 1,
                spawned_stderr()
            );
            break; // the run completed before this kill point
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Nothing finished before this attempt was started again by it.
        let again: Vec<String> = log_lines(&log)[lines_before..]
            .iter()
            .filter(|l| done_before.contains(l.split(' ').next().unwrap_or("")))
            .cloned()
            .collect();
        assert!(again.is_empty(), "kill {kills}: finished nodes were upgraded again: {again:?}");
    }
    let done_before = finished_units(&c.store, &to);
    let lines_before = log_lines(&log).len();
    let out = upgrade.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "final run after {kills} kills: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdout
    );
    let again: Vec<String> = log_lines(&log)[lines_before..]
        .iter()
        .filter(|l| done_before.contains(l.split(' ').next().unwrap_or("")))
        .cloned()
        .collect();
    assert!(again.is_empty(), "final run redid finished nodes: {again:?}");
    assert_eq!(kills, 10, "the run finished before ten kill points");

    // Events are one JSON object per line, ending with the summary.
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["event"] == "run-started" && e["resumed"] == true));
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["outcome"]["state"], "completed");

    // Every component at the target.
    let tb = c.testbed();
    for m in tb.members() {
        assert_eq!(tb.apiserver_version(m.index).await.unwrap(), format!("v{to}"), "apiserver of {}", m.node);
    }
    let nodes = c.nodes().await;
    assert_eq!(nodes.len(), 33);
    for n in &nodes {
        assert_eq!(kubelet(n), format!("v{to}"), "{:?}", n.metadata.name);
        assert!(!unschedulable(n), "{:?} left cordoned", n.metadata.name);
    }
    let ds = Api::<DaemonSet>::namespaced(client.clone(), "kube-system").get("kube-proxy").await.unwrap();
    let image = ds.spec.template.spec.unwrap().containers[0].image.clone().unwrap();
    assert!(image.ends_with(&format!(":v{to}")), "kube-proxy image {image}");
    // Each node upgraded at least once; workers exactly once after their last kill point.
    let lines = log_lines(&log);
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap();
        assert!(lines.iter().any(|l| l.starts_with(&format!("{name} "))), "{name} never upgraded");
    }
    // The backup was taken once and kept.
    let backups: Vec<_> = std::fs::read_dir(c._tmp.path().join("backups")).unwrap().collect();
    assert_eq!(backups.len(), 1, "one etcd backup per run");

    let seen = watcher.stop();
    assert!(
        seen.max_unschedulable_workers <= 3,
        "{} workers unschedulable at once",
        seen.max_unschedulable_workers
    );
    assert!(seen.max_unschedulable_workers >= 1, "the watcher saw no cordon at all");
    for (app, _, _, least) in APPS {
        let min = seen.min_healthy.get(*app).copied().unwrap_or(0);
        assert!(
            min >= *least,
            "{app}: {min} healthy pods at one moment, the PDB allows no fewer than {least}"
        );
    }
    assert!(seen.skew_breaches.is_empty(), "{:?}", seen.skew_breaches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_hop_walks_the_control_plane_and_moves_workers_once() {
    if !has_minor(35) {
        eprintln!("1.35 is not in REFIT_TESTBED_VERSIONS: the 1.35 → 1.37 path cannot be built here");
        return;
    }
    let (from, mid, to) = (release(35), release(36), release(37));
    let c = Cluster::up(&from, 3, 6);
    let (script, log) = logging_action(c._tmp.path());
    // The path's intermediate hop is the newest 1.36 patch the catalog knows; this catalog
    // (an air-gapped refresh, as an operator would pass) knows the one the testbed built.
    let catalog = catalog_newest_at(c._tmp.path(), &mid);
    let mut upgrade = c.upgrade(&to);
    upgrade.args(["--max-unavailable", "2", "--catalog"]).arg(&catalog);
    upgrade.arg("--action").arg(format!("exec:{} {{node}}", script.display()));
    let out = upgrade.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let lines = log_lines(&log);
    for cp in ["control-plane-1", "control-plane-2", "control-plane-3"] {
        let hops: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{cp} ")))
            .map(|l| l.split(' ').nth(1).unwrap())
            .collect();
        assert_eq!(hops, [mid.as_str(), to.as_str()], "{cp} walks the path one minor at a time");
    }
    let cp_done = lines.iter().rposition(|l| l.starts_with("control-plane-")).unwrap();
    for w in 1..=6 {
        let name = format!("worker-{w:03}");
        let ups: Vec<(usize, &String)> =
            lines.iter().enumerate().filter(|(_, l)| l.starts_with(&format!("{name} "))).collect();
        assert_eq!(ups.len(), 1, "{name} is drained and upgraded once: {ups:?}");
        assert!(
            ups[0].1.contains(&to) && ups[0].0 > cp_done,
            "{name} straight to {to}, after the control plane"
        );
    }
    for n in c.nodes().await {
        assert_eq!(kubelet(&n), format!("v{to}"));
    }
}

/// Reads JSON events from a running refit until one matches.
fn wait_event(
    lines: &mut impl Iterator<Item = String>,
    what: impl Fn(&serde_json::Value) -> bool,
    seen: &mut Vec<String>,
) -> serde_json::Value {
    for line in lines.by_ref() {
        seen.push(line.clone());
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && what(&v)
        {
            return v;
        }
    }
    panic!("refit ended before the awaited event; it printed:\n{}", seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_restarted_in_the_middle_of_a_drain_does_not_stop_the_run() {
    let to = release(37);
    let c = Cluster::up(&release(36), 3, 3);
    let client = c.client().await;
    let tb = c.testbed();
    tb.create_namespace(NS).await.unwrap();
    // Two pods on worker-001 under a budget that allows no disruption: its drain blocks.
    let mut d = deployment(NS, "pinned", 2);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "worker-001"});
    apply::<Deployment>(&client, d).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb(NS, "pinned", "pinned", Budget::MinAvailable(2)))
        .await
        .unwrap();
    wait_pods_ready(&client, NS, "app=pinned", 2, Duration::from_secs(60)).await.unwrap();

    let mut upgrade = c.upgrade(&to);
    // Preflight rightly finds that this budget never allows a disruption: run anyway.
    upgrade.args(["--action", "sandbox", "--drain-timeout", "5m", "--ignore-safety-checks", "-o", "json"]);
    let mut child = spawn(&upgrade);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let mut seen = Vec::new();
    let blocked = wait_event(&mut lines, |e| e["event"] == "blocked" && e["node"] == "worker-001", &mut seen);
    assert_eq!(blocked["pdb"], format!("{NS}/pinned"), "the report names the budget");
    // One upgrade per cluster at a time: a second one is refused while this one runs.
    let second = c.upgrade(&to).args(["--action", "sandbox", "--ignore-safety-checks"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another refit upgrade is running"));

    // Restart the first apiserver while the drain waits; refit goes through the load balancer.
    // (Attached again: the upgrade replaced the member's processes since `tb` was read.)
    let tb = c.testbed();
    tb.stop_apiserver(0).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    tb.start_apiserver_again(0).await.unwrap();
    // Let the drain through: unpin the pods (new ones land elsewhere) and relax the budget.
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    api.patch(
        "pinned",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"nodeSelector": null}}}})),
    )
    .await
    .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    pdbs.patch("pinned", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minAvailable": 1}})))
        .await
        .unwrap();

    let summary = wait_event(&mut lines, |e| e["event"] == "summary", &mut seen);
    let status = child.wait().unwrap();
    assert!(status.success(), "refit failed after the apiserver restart:\n{}", seen.join("\n"));
    assert_eq!(summary["outcome"]["state"], "completed");
    for n in c.nodes().await {
        assert_eq!(kubelet(&n), format!("v{to}"));
        assert!(!unschedulable(&n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undrainable_nodes_fail_then_skip_then_force_and_bad_input_changes_nothing() {
    let to = release(37);
    let c = Cluster::up(&release(36), 1, 3);
    let client = c.client().await;
    let tb = c.testbed();
    tb.create_namespace(NS).await.unwrap();
    // A bare pod (no controller) on worker-002: kubectl's drain refuses it.
    apply::<Pod>(
        &client,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": NS},
               "spec": {"nodeName": "worker-002", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1"}]}}),
    )
    .await
    .unwrap();
    wait_pods_ready(&client, NS, "", 1, Duration::from_secs(60)).await.unwrap();
    let untouched =
        |nodes: &[Node]| nodes.iter().all(|n| !unschedulable(n) && kubelet(n) == format!("v{}", release(36)));

    // Bad input: refused with exit code 2, one line naming the fix, nothing changed.
    let plan = c._tmp.path().join("plan.yaml");
    std::fs::write(&plan, "nodes:\n  worker-999: {address: 10.0.0.9}\n").unwrap();
    let broken = c._tmp.path().join("broken.yaml");
    std::fs::write(&broken, "nodes: [this is: not a map\n").unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("1.99", vec![], "1.99"),
        ("banana", vec![], "--to"),
        (&to, vec!["-f".into(), plan.display().to_string()], "worker-999"),
        (&to, vec!["-f".into(), broken.display().to_string()], "plan file"),
        (&to, vec!["--on-undrainable".into(), "maybe".into()], "--on-undrainable"),
        (&to, vec!["--drain-timeout".into(), "soon".into()], "--drain-timeout"),
        (&to, vec!["--action".into(), "teleport".into()], "--action"),
    ];
    for (target, extra, expected) in cases {
        let mut cmd = c.upgrade(target);
        if !extra.contains(&"--action".to_string()) {
            cmd.args(["--action", "sandbox"]);
        }
        cmd.args(&extra);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{extra:?}: one line: {stderr}");
        assert!(untouched(&c.nodes().await), "{extra:?} changed the cluster");
        assert!(!c.store.exists(), "{extra:?} created a run");
    }

    let run_with = |mode: &str, extra: &[&str]| {
        let mut cmd = c.upgrade(&to);
        cmd.args([
            "--action",
            "sandbox",
            "--max-unavailable",
            "2",
            "--ignore-safety-checks",
            "--on-undrainable",
            mode,
        ]);
        cmd.args(extra);
        cmd.output().unwrap()
    };
    let run = |mode: &str| run_with(mode, &[]);
    // fail: the run stops, names the pod, and gives the node back uncordoned and unchanged.
    let out = run("fail");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("shop/bare"), "the report names the blocking pod: {text}");
    let nodes = c.nodes().await;
    let w2 = nodes.iter().find(|n| n.metadata.name.as_deref() == Some("worker-002")).unwrap();
    assert!(!unschedulable(w2), "fail mode gives the cordon back");
    assert_eq!(kubelet(w2), format!("v{}", release(36)));

    // skip: worker-002 is left cordoned and not upgraded, the others go on; reported, exit 1.
    let out = run("skip");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("LEFT CORDONED: worker-002"), "{text}");
    let nodes = c.nodes().await;
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap();
        if name == "worker-002" {
            assert!(unschedulable(n));
            assert_eq!(kubelet(n), format!("v{}", release(36)));
        } else {
            assert_eq!(kubelet(n), format!("v{to}"), "{name}");
            assert!(!unschedulable(n), "{name}");
        }
    }

    // force overrides budgets and timeouts, not the rules: the bare pod stays (nothing is
    // deleted), worker-002 is not upgraded, and the message names the allowance.
    let out = run("force");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("--delete-unmanaged-pods"), "{text}");
    assert!(Api::<Pod>::namespaced(client.clone(), NS).get_opt("bare").await.unwrap().is_some());
    let w2 = c.nodes().await.into_iter().find(|n| n.metadata.name.as_deref() == Some("worker-002")).unwrap();
    assert_eq!(kubelet(&w2), format!("v{}", release(36)));

    // force with the pod's own allowance: what remains is deleted; the run completes.
    let out = run_with("force", &["--delete-unmanaged-pods"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    for n in c.nodes().await {
        assert_eq!(kubelet(&n), format!("v{to}"));
        assert!(!unschedulable(&n));
    }
    assert!(Api::<Pod>::namespaced(client.clone(), NS).get_opt("bare").await.unwrap().is_none());
    // A completed run is not resumed: the next command finds nothing to do.
    let out = run("fail");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already at"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A downgrade needs --force and an explicit confirmation; without it nothing changes.
    let out = c.upgrade(&release(36)).args(["--action", "sandbox", "--force"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--confirm-downgrade"));
    // --force includes the nodes already at the target: every node goes through its steps again.
    let out = c
        .upgrade(&to)
        .args(["--action", "sandbox", "--force", "--ignore-safety-checks", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let redone = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "step-done" && e["step"] == "upgrade")
        .count();
    assert_eq!(redone, 4, "control plane and three workers upgraded again");
}

#[test]
fn dry_run_shows_the_schedule_and_changes_nothing() {
    let c = Cluster::up(&release(36), 1, 2);
    let out = c.upgrade(&release(37)).args(["--dry-run", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages = v["schedule"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "control plane, then workers: {v}");
    assert_eq!(stages[1]["units"].as_array().unwrap().len(), 2);
    assert!(!c.store.exists(), "a dry run records no run");
    let out =
        c.upgrade(&release(37)).args(["--dry-run", "--control-plane-only", "-o", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages = v["schedule"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 1, "--control-plane-only: no worker stage: {v}");
    assert_eq!(v["schedule"]["cluster_services"], false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for n in c.nodes().await {
            assert!(!unschedulable(&n));
            assert_eq!(kubelet(&n), format!("v{}", release(36)));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_creates_a_new_node_with_the_old_ones_labels_and_taints_and_removes_the_old() {
    let to = release(37);
    let c = Cluster::up(&release(36), 1, 2);
    let client = c.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    // Custom keys, and keys of the old machine and its agents (Cluster API, Calico, CSI), and a
    // custom key the new node has already (the testbed's own label).
    let custom = json!({"metadata": {
                            "labels": {"team": "payments", "cluster.x-k8s.io/cluster-name": "old",
                                       "testbed.refit.dev/node": "old-machine"},
                            "annotations": {"owner": "ops@example.com",
                                            "projectcalico.org/IPv4Address": "10.9.9.9/24",
                                            "csi.volume.kubernetes.io/nodeid": "{\"ebs.csi.aws.com\":\"i-0ld\"}"}},
                        "spec": {"taints": [{"key": "dedicated", "value": "payments", "effect": "NoSchedule"}]}});
    nodes.patch("worker-001", &PatchParams::default(), &Patch::Merge(&custom)).await.unwrap();
    let out = c.upgrade(&to).args(["--action", "replace-sandbox"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let names: BTreeSet<String> = c.nodes().await.iter().filter_map(|n| n.metadata.name.clone()).collect();
    let v = to.replace('.', "-");
    assert_eq!(
        names,
        ["control-plane-1".to_string(), format!("worker-001-v{v}"), format!("worker-002-v{v}")]
            .into_iter()
            .collect(),
        "workers replaced, the control plane upgraded in place"
    );
    let new = nodes.get(&format!("worker-001-v{v}")).await.unwrap();
    assert_eq!(kubelet(&new), format!("v{to}"));
    assert!(!unschedulable(&new));
    assert_eq!(new.metadata.labels.as_ref().unwrap().get("team").map(String::as_str), Some("payments"));
    assert_eq!(
        new.metadata.annotations.as_ref().unwrap().get("owner").map(String::as_str),
        Some("ops@example.com")
    );
    let taints = new.spec.as_ref().unwrap().taints.clone().unwrap_or_default();
    assert!(taints.iter().any(|t| t.key == "dedicated" && t.effect == "NoSchedule"), "{taints:?}");
    let (labels, annotations) = (new.metadata.labels.unwrap(), new.metadata.annotations.unwrap());
    assert!(!labels.contains_key("cluster.x-k8s.io/cluster-name"), "the old machine's key: {labels:?}");
    assert_eq!(labels["testbed.refit.dev/node"], "true", "a key the new node has is never overwritten");
    for agent in ["projectcalico.org/IPv4Address", "csi.volume.kubernetes.io/nodeid"] {
        assert!(!annotations.contains_key(agent), "{agent} is the old node's agent's: {annotations:?}");
    }
    let cp = nodes.get("control-plane-1").await.unwrap();
    assert_eq!(kubelet(&cp), format!("v{to}"));
}

/// `--max-surge 2 --max-unavailable 0` with the replace action (issue 14): an independent
/// watcher sees the schedulable workers (Ready, not cordoned) never below the start and never
/// more than 2 worker nodes beyond it, and the surge used; every worker is replaced. Bad
/// combinations are refused first (exit 2, nothing changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_replaces_workers_without_ever_dropping_capacity() {
    let to = release(37);
    let c = Cluster::up(&release(36), 1, 4);
    for (args, says) in [
        (&["--action", "sandbox", "--max-surge", "2"][..], "--max-surge applies only to the replace action"),
        (
            &["--action", "replace-sandbox", "--max-unavailable", "0"][..],
            "--max-unavailable 0 without --max-surge",
        ),
        (&["--action", "replace-sandbox", "--max-surge", "101%"][..], "--max-surge '101%'"),
        (&["--action", "replace-sandbox", "--max-surge", "2", "--max-unavailable", "auto"][..], "not auto"),
    ] {
        let out = c.upgrade(&to).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(
        !c.store.exists() || refit_store::Store::open(&c.store).unwrap().runs().unwrap().is_empty(),
        "bad input records no run"
    );
    let client = c.client().await;
    let watcher = Watcher::start(client.clone(), NS).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !watcher.synced() {
        assert!(std::time::Instant::now() < deadline, "the watcher never listed the nodes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    let out = c
        .upgrade(&to)
        .args(["--action", "replace-sandbox", "--max-surge", "2", "--max-unavailable", "0", "-o", "json"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let seen = watcher.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let names: BTreeSet<String> = c.nodes().await.iter().filter_map(|n| n.metadata.name.clone()).collect();
    let v = to.replace('.', "-");
    let expected: BTreeSet<String> = std::iter::once("control-plane-1".to_string())
        .chain((1..=4).map(|i| format!("worker-{i:03}-v{v}")))
        .collect();
    assert_eq!(names, expected, "every worker replaced");
    eprintln!(
        "surge 2 / unavailable 0 on 4 workers: {took:?}, fewest schedulable workers {:?}, most worker nodes {}",
        seen.min_schedulable_workers, seen.max_worker_nodes
    );
    assert_eq!(seen.min_schedulable_workers, Some(4), "capacity never dropped below the 4 workers");
    assert_eq!(seen.max_worker_nodes, 6, "never more than 2 extra nodes, and the surge used");
    let surge_lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["event"] == "batch-chosen" && e["limit"].as_str().is_some_and(|l| l.starts_with("surge: "))
        })
        .count();
    assert!(surge_lines >= 2, "the events say where the surge stands:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_gives_back_the_cordon_and_a_rerun_finishes() {
    let to = release(37);
    let c = Cluster::up(&release(36), 1, 2);
    let client = c.client().await;
    c.testbed().create_namespace(NS).await.unwrap();
    let mut d = deployment(NS, "pinned", 2);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "worker-001"});
    apply::<Deployment>(&client, d).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb(NS, "pinned", "pinned", Budget::MinAvailable(2)))
        .await
        .unwrap();
    wait_pods_ready(&client, NS, "app=pinned", 2, Duration::from_secs(60)).await.unwrap();

    let mut upgrade = c.upgrade(&to);
    upgrade.args(["--action", "sandbox", "--ignore-safety-checks", "-o", "json"]);
    let mut child = spawn(&upgrade);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let mut seen = Vec::new();
    wait_event(&mut lines, |e| e["event"] == "blocked" && e["node"] == "worker-001", &mut seen);
    let node = Api::<Node>::all(client.clone()).get("worker-001").await.unwrap();
    assert!(unschedulable(&node), "cordoned while draining");
    // Ctrl-C: the drain is abandoned and the node given back.
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let summary = wait_event(&mut lines, |e| e["event"] == "summary", &mut seen);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", seen.join("\n"));
    assert_eq!(summary["outcome"]["state"], "interrupted");
    let node = Api::<Node>::all(client.clone()).get("worker-001").await.unwrap();
    assert!(!unschedulable(&node), "a clean stop leaves nothing cordoned by refit");
    assert_eq!(kubelet(&node), format!("v{}", release(36)));

    // Relax the budget and rerun the same command: it continues and completes.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    pdbs.patch("pinned", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minAvailable": 1}})))
        .await
        .unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    api.patch(
        "pinned",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"nodeSelector": null}}}})),
    )
    .await
    .unwrap();
    let out = c.upgrade(&to).args(["--action", "sandbox", "--ignore-safety-checks"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("resuming run"), "{text}");
    for n in c.nodes().await {
        assert_eq!(kubelet(&n), format!("v{to}"));
        assert!(!unschedulable(&n));
    }
}

/// An exec action that logs each node and then waits while `hold` exists before it runs the
/// sandbox's upgrade-node: `(--action value, hold file, log)`.
fn held_action(c: &Cluster) -> (String, PathBuf, PathBuf) {
    let hold = c.dir.join("hold");
    let log = c.dir.join("actions.log");
    let script = c.dir.join("held-action.sh");
    let refit_bin = assert_cmd::cargo::cargo_bin("refit");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$REFIT_NODE\" >> '{log}'\nwhile [ -e '{hold}' ]; do sleep 0.1; done\nexec '{bin}' sandbox upgrade-node \"$REFIT_NODE\" --to \"$REFIT_TO\"\n",
            log = log.display(),
            hold = hold.display(),
            bin = refit_bin.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (format!("exec:{}", script.display()), hold, log)
}

/// Waits until the action log has `n` lines.
fn wait_log(log: &Path, n: usize) {
    let started = std::time::Instant::now();
    while log_lines(log).len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the action never started: {:?}",
            log_lines(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster lock is in the cluster: a second `refit upgrade` with another store (as from
/// another machine) is refused naming the holder and its run; a lock a live holder elsewhere
/// renews is refused too, and `--break-lock` takes it; the lock is gone after each run.
#[test]
fn a_second_upgrade_from_another_store_is_refused_with_the_holder_and_its_run() {
    let to = release(37);
    let c = Cluster::up(&release(36), 1, 1);
    let (action, hold, log) = held_action(&c);
    std::fs::write(&hold, "").unwrap();
    let mut first = spawn(c.upgrade(&to).args(["--action", &action, "-o", "json"]));
    wait_log(&log, 1);
    let other_store = c._tmp.path().join("other").join("refit.db");
    let second = c.upgrade_with_store(&to, &other_store).args(["--action", &action]).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another refit upgrade is running"), "{stderr}");
    assert!(stderr.contains(&format!("(pid {})", first.id())), "names the holder: {stderr}");
    assert!(stderr.contains(", run up-"), "names its run: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!other_store.exists(), "the refused upgrade recorded nothing");
    assert_eq!(log_lines(&log).len(), 1, "the refused upgrade ran no action");
    std::fs::remove_file(&hold).unwrap();
    let status = first.wait().unwrap();
    assert!(status.success(), "{}", spawned_stderr());
    // The run recorded the blockers it was started with accepted (its spec in the journal).
    let run = refit_store::Store::open(&c.store).unwrap().runs().unwrap().into_iter().next().unwrap();
    let spec: serde_json::Value = serde_json::from_str(&run.spec).unwrap();
    let accepted: BTreeSet<&str> =
        spec["accepted"].as_array().unwrap().iter().map(|a| a["rule"].as_str().unwrap()).collect();
    assert_eq!(accepted, BTreeSet::from(["etcd-members", "control-plane-count", "worker-count"]), "{spec}");
    assert!(spec["accepted"][0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let leases = || -> Api<k8s_openapi::api::coordination::v1::Lease> {
        rt.block_on(async { Api::namespaced(c.client().await, "kube-system") })
    };
    let lease = |api: &Api<k8s_openapi::api::coordination::v1::Lease>| {
        rt.block_on(api.get_opt("refit-upgrade")).unwrap()
    };
    let api = leases();
    assert!(lease(&api).is_none(), "the lock is released at the end");

    // A holder on another machine that keeps renewing: refused; --break-lock takes it.
    let now = k8s_openapi::jiff::Timestamp::now();
    let foreign = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "refit-upgrade", "namespace": "kube-system",
                     "annotations": {"refit.dev/machine": "elsewhere", "refit.dev/pid": "1", "refit.dev/pid-start": "1", "refit.dev/run": "up-bob"}},
        "spec": {"holderIdentity": "bob@elsewhere (pid 1)", "leaseDurationSeconds": 3600,
                 "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()},
    });
    rt.block_on(apply::<k8s_openapi::api::coordination::v1::Lease>(&rt.block_on(c.client()), foreign))
        .unwrap();
    let out = c.upgrade(&to).args(["--action", &action]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bob@elsewhere (pid 1), run up-bob,"), "{stderr}");
    assert!(stderr.contains("--break-lock"), "names the way out: {stderr}");
    let out = c.upgrade(&to).args(["--action", &action, "--break-lock"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("took the cluster lock over from bob@elsewhere (pid 1) (--break-lock)"),
        "{stderr}"
    );
    assert!(lease(&api).is_none(), "released again");
}

/// SIGTERM and SIGHUP stop like the first Ctrl-C: the action under way finishes, no other node
/// starts, nothing stays cordoned; a rerun continues. A consumer of `-o json` that goes away
/// (`| head -1`) does not stop the run.
#[test]
fn sigterm_and_sighup_stop_cleanly_and_a_closed_output_pipe_does_not_stop_the_run() {
    let (from, to) = (release(36), release(37));
    let c = Cluster::up(&from, 1, 2);
    let (action, hold, log) = held_action(&c);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kubelets = || -> Vec<String> { rt.block_on(async { c.nodes().await.iter().map(kubelet).collect() }) };
    let cordoned =
        || -> usize { rt.block_on(async { c.nodes().await.iter().filter(|n| unschedulable(n)).count() }) };
    for (signal, n) in [("-TERM", 1), ("-HUP", 2)] {
        std::fs::write(&hold, "").unwrap();
        let mut child = spawn(c.upgrade(&to).args(["--action", &action, "-o", "json"]));
        wait_log(&log, n);
        assert!(
            std::process::Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        // The action under way is not cut off: it finishes when it is let go.
        std::thread::sleep(Duration::from_millis(500));
        std::fs::remove_file(&hold).unwrap();
        let status = child.wait().unwrap();
        let mut stdout = Vec::new();
        std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        assert_eq!(status.code(), Some(1), "{signal}: {}", spawned_stderr());
        let summary = last_summary(&stdout);
        assert_eq!(summary["outcome"]["state"], "interrupted", "{signal}: {summary}");
        assert_eq!(log_lines(&log).len(), n, "{signal}: no other node started");
        assert_eq!(
            kubelets().iter().filter(|k| k.contains(&to)).count(),
            n,
            "{signal}: the node under way finished"
        );
        assert_eq!(cordoned(), 0, "{signal}: nothing left cordoned");
    }
    assert!(spawned_stderr().contains("stopping cleanly on SIGTERM"), "{}", spawned_stderr());
    // The last node, with the output's reader gone after one line.
    let cmd = c.upgrade(&to);
    let mut line = format!("{:?}", cmd.get_program());
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&format!("'{}'", a.to_string_lossy()));
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{line} --action '{action}' -o json | head -1"))
        .env("REFIT_SANDBOX_DIR", &c.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let store = refit_store::Store::open(&c.store).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 1, "one run, resumed twice");
    assert_eq!(runs[0].state, "completed", "the run went on after its reader left");
    assert!(kubelets().iter().all(|k| k.contains(&to)), "{:?}", kubelets());
    assert_eq!(cordoned(), 0);
}

/// `--not-after`: a deadline that passes while a node is under way lets that node finish,
/// starts no other, ends the run paused (exit 3, state "paused"); a rerun continues it without
/// repeating the finished node. A deadline already past changes nothing. Deterministic: the
/// first node's action is held until the deadline has passed.
#[test]
fn a_deadline_lets_the_node_under_way_finish_starts_no_other_and_a_rerun_continues() {
    let (from, to) = (release(36), release(37));
    let c = Cluster::up(&from, 1, 2);
    let (action, hold, log) = held_action(&c);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kubelets = || -> Vec<String> { rt.block_on(async { c.nodes().await.iter().map(kubelet).collect() }) };

    // Bad input: exit 2, nothing recorded.
    let out = c.upgrade(&to).args(["--action", &action, "--not-after", "tomorrow"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    assert!(!c.store.exists());

    // Already past: the run is recorded, nothing starts, it ends paused.
    let past = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60)).to_string();
    let out =
        c.upgrade(&to).args(["--action", &action, "--not-after", &past, "-o", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "paused: {}", String::from_utf8_lossy(&out.stderr));
    let summary = last_summary(&out.stdout);
    assert_eq!(summary["outcome"]["state"], "paused", "{summary}");
    assert!(summary["outcome"]["units"].as_array().unwrap().iter().all(|u| u["result"] == "not-started"));
    assert!(log_lines(&log).is_empty(), "no action ran");
    assert!(kubelets().iter().all(|k| k.contains(&from)));

    // A deadline a few seconds ahead, passing while the control-plane node's action is held.
    std::fs::write(&hold, "").unwrap();
    let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4);
    let mut child =
        spawn(c.upgrade(&to).args(["--action", &action, "--not-after", &deadline.to_string(), "-o", "json"]));
    let started = std::time::Instant::now();
    while log_lines(&log).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(120), "the first action never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    while jiff::Timestamp::now() <= deadline + jiff::SignedDuration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&hold).unwrap();
    let status = child.wait().unwrap();
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(3), "paused at the deadline: {}", spawned_stderr());
    let summary = last_summary(&stdout);
    assert_eq!(summary["outcome"]["state"], "paused", "{summary}");
    assert_eq!(log_lines(&log), ["control-plane-1"], "only the node under way at the deadline ran");
    let units = summary["outcome"]["units"].as_array().unwrap();
    let upgraded: Vec<&str> =
        units.iter().filter(|u| u["result"] == "upgraded").map(|u| u["node"].as_str().unwrap()).collect();
    assert_eq!(upgraded, ["control-plane-1"], "{summary}");
    let ks = kubelets();
    assert_eq!(ks.iter().filter(|k| k.contains(&to)).count(), 1, "{ks:?}");
    rt.block_on(async {
        for n in c.nodes().await {
            assert!(!unschedulable(&n), "no node is left cordoned at a pause");
        }
    });

    // The rerun (no deadline) continues the same run: the workers, not the control plane again.
    let out = c.upgrade(&to).args(["--action", &action, "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = last_summary(&out.stdout);
    assert_eq!(summary["outcome"]["state"], "completed");
    let store = refit_store::Store::open(&c.store).unwrap();
    assert_eq!(store.runs().unwrap().len(), 1, "the paused run was resumed, not replaced");
    let lines = log_lines(&log);
    assert_eq!(lines.iter().filter(|l| *l == "control-plane-1").count(), 1, "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(kubelets().iter().all(|k| k.contains(&to)));
}

/// The summary line of a `refit upgrade -o json` run.
fn last_summary(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {}", String::from_utf8_lossy(stdout)))
}

/// Node churn during a run (issue 18 item 12), on the testbed: worker-002 is deleted while its
/// action waits (after its cordon and drain), worker-003 before its turn, and worker-004 joins
/// at the old version. The run completes: the deleted ones are skipped with a warning (not
/// failed), the new one is reported as not upgraded, and nothing is left cordoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_deleted_during_a_run_are_skipped_and_nodes_added_are_reported() {
    let from = release(36);
    let to = release(37);
    let c = Cluster::up(&from, 1, 3);
    let hold = c.dir.join("hold");
    let log = c.dir.join("actions.log");
    let script = c.dir.join("churn-action.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$REFIT_NODE\" >> '{log}'\nif [ \"$REFIT_NODE\" = worker-002 ]; then while [ -e '{hold}' ]; do sleep 0.1; done; fi\nexec '{bin}' sandbox upgrade-node \"$REFIT_NODE\" --to \"$REFIT_TO\"\n",
            log = log.display(),
            hold = hold.display(),
            bin = assert_cmd::cargo::cargo_bin("refit").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&hold, "").unwrap();

    let mut upgrade = c.upgrade(&to);
    upgrade.args(["--action", &format!("exec:{}", script.display())]);
    upgrade.args(["--ignore-safety-checks", "--max-unavailable", "1", "-o", "json"]);
    let mut child = spawn(&upgrade);
    let started = std::time::Instant::now();
    while !log_lines(&log).iter().any(|l| l == "worker-002") {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "worker-002 never started: {:?}",
            log_lines(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tb = c.testbed();
    tb.remove_worker("worker-002").await.unwrap();
    tb.remove_worker("worker-003").await.unwrap();
    let joined = tb.add_workers(tb.next_worker_specs(1, &from.parse().unwrap())).await.unwrap();
    assert_eq!(joined, ["worker-004"]);
    std::fs::remove_file(&hold).unwrap();

    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&stdout);
    assert!(status.success(), "{text}\n{}", spawned_stderr());
    let summary = last_summary(&stdout);
    let outcome = &summary["outcome"];
    assert_eq!(outcome["state"], "completed", "{outcome:#}");
    let unit = |n: &str| {
        outcome["units"].as_array().unwrap().iter().find(|u| u["node"] == n).cloned().unwrap_or_default()
    };
    assert_eq!(unit("worker-001")["result"], "upgraded", "{outcome:#}");
    for n in ["worker-002", "worker-003"] {
        let u = unit(n);
        assert_eq!(u["result"], "skipped", "{n}: {outcome:#}");
        assert!(u["reason"].as_str().unwrap().contains("no longer in the cluster"), "{u}");
    }
    assert!(!log_lines(&log).contains(&"worker-003".to_string()), "no action for a node already gone");
    let added = outcome["not_planned"].as_array().unwrap();
    assert_eq!(added.len(), 1, "{outcome:#}");
    assert_eq!(added[0][0], "worker-004");
    let warnings: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "warning")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    for n in ["worker-002", "worker-003", "worker-004"] {
        assert!(warnings.iter().any(|w| w.contains(n)), "a warning names {n}: {warnings:?}");
    }
    for n in c.nodes().await {
        assert!(!unschedulable(&n), "{:?} left cordoned", n.metadata.name);
    }
}

/// A node that merely has the replacement's name is someone else's: the replace action refuses
/// to adopt it (issue 18 item 13), changes nothing on the node it would have replaced, and
/// leaves the other node alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_never_adopts_a_node_that_merely_has_the_replacements_name() {
    let to = release(37);
    let c = Cluster::up(&release(36), 1, 1);
    let v = to.replace('.', "-");
    let impostor = format!("worker-001-v{v}");
    let tb = c.testbed();
    let mut spec = tb.next_worker_specs(1, &to.parse().unwrap());
    spec[0].name = impostor.clone();
    tb.add_workers(spec).await.unwrap();

    let out =
        c.upgrade(&to).args(["--action", "replace-sandbox", "--ignore-safety-checks"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("a node named {impostor} already exists and this run did not create it")),
        "{text}"
    );
    let nodes: Api<Node> = Api::all(c.client().await);
    let old = nodes.get("worker-001").await.unwrap();
    assert_eq!(kubelet(&old), format!("v{}", release(36)), "not replaced");
    assert!(!unschedulable(&old), "given back");
    let other = nodes.get(&impostor).await.unwrap();
    assert!(other.metadata.labels.as_ref().is_none_or(|l| !l.contains_key("team")));
    assert!(!unschedulable(&other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_batches_stay_in_one_zone_within_every_budget_and_finish() {
    let to = release(37);
    // Six workers, two in each of three zones (the sandbox labels them round-robin).
    let c = Cluster::up(&release(36), 1, 6);
    let client = c.client().await;
    install_apps(&client, &c.testbed()).await;
    let watcher = Watcher::start(client.clone(), NS).await;
    let out = c
        .upgrade(&to)
        .args([
            "--action",
            "sandbox",
            "--max-unavailable",
            "auto",
            "--max-unavailable-cap",
            "4",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let zone_of: std::collections::BTreeMap<String, String> = c
        .nodes()
        .await
        .iter()
        .filter_map(|n| {
            let labels = n.metadata.labels.as_ref()?;
            Some((n.metadata.name.clone()?, labels.get("topology.kubernetes.io/zone")?.clone()))
        })
        .collect();
    let batches: Vec<Vec<String>> = events
        .iter()
        .filter(|e| e["event"] == "batch-chosen")
        .map(|e| e["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect())
        .collect();
    assert!(!batches.is_empty(), "no batch-chosen event: {stdout}");
    // Each choice says what each chosen node's drain moves and what is left on the nodes not
    // started (the ETA goes by them).
    for e in events.iter().filter(|e| e["event"] == "batch-chosen") {
        let nodes = e["nodes"].as_array().map(Vec::len);
        assert_eq!(e["pods"].as_array().map(Vec::len), nodes, "one count per chosen node: {e}");
        assert!(e["pods_left"].is_u64(), "{e}");
    }
    let workers: BTreeSet<String> = batches.iter().flatten().cloned().collect();
    assert_eq!(workers.len(), 6, "every worker in exactly one batch: {batches:?}");
    assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 6, "{batches:?}");
    // The window slides: at every choice, the nodes chosen and the ones still under way
    // (chosen, not finished) are of one zone and within the cap together.
    let mut flying: BTreeSet<String> = BTreeSet::new();
    for e in &events {
        if e["event"] == "unit-finished" {
            flying.remove(e["node"].as_str().unwrap_or_default());
        } else if e["event"] == "batch-chosen" {
            flying.extend(e["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()));
            let zones: BTreeSet<&String> = flying.iter().filter_map(|n| zone_of.get(n)).collect();
            assert_eq!(zones.len(), 1, "nodes under way span zones: {flying:?} {zone_of:?}");
            assert!(flying.len() <= 4, "above the cap: {flying:?}");
        }
    }
    let summary = events.last().unwrap();
    assert_eq!(summary["outcome"]["state"], "completed", "{summary}");
    for n in c.nodes().await {
        assert_eq!(kubelet(&n), format!("v{to}"), "{:?}", n.metadata.name);
        assert!(!unschedulable(&n), "{:?} left cordoned", n.metadata.name);
    }
    let seen = watcher.stop();
    seen.assert_safe(4);
    println!(
        "auto batches: {batches:?}; most workers unschedulable at once: {}",
        seen.max_unschedulable_workers
    );
}

/// Whether any node is cordoned.
async fn any_cordoned(c: &Cluster) -> Vec<String> {
    c.nodes()
        .await
        .into_iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
        .filter_map(|n| n.metadata.name)
        .collect()
}

/// Issue 18 item 9: a run that changes etcd and the control plane takes an etcd snapshot or
/// does not start. With no backup configured and an action that cannot take one (exec), the
/// run is refused (exit 2, one line naming the fix, nothing recorded or cordoned); a backup
/// command whose file is empty, or is not an etcd snapshot, stops the run before any cordon;
/// `--no-etcd-backup` proceeds and says so in the plan (table and JSON) and the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_etcd_backup_refuses_bad_backups_stop_before_any_cordon_and_the_opt_out_is_said() {
    let (from, to) = (release(36), release(37));
    let c = Cluster::up(&from, 1, 2);
    let (script, log) = logging_action(&c.dir);
    let action = format!("exec:{} {{node}}", script.display());
    let store = |n: &str| c._tmp.path().join(format!("{n}.db"));

    // No backup, and the exec action cannot take one: refused before anything is recorded.
    let err = support::refused(c.upgrade_without_backup(&to, &store("a")).args(["--action", &action]));
    assert!(err.contains("no etcd backup is configured") && err.contains("--no-etcd-backup"), "{err}");
    assert!(!store("a").exists(), "no run recorded");
    // The dry run shows why, and is refused the same way.
    let out =
        c.upgrade_without_backup(&to, &store("a")).args(["--action", &action, "--dry-run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("first: etcd backup: MISSING"));

    // A backup command that "succeeds" but writes an empty file, or one that is not a snapshot.
    for (n, body, says) in
        [("empty", ": > \"$1\"", "is empty"), ("text", "echo done > \"$1\"", "not an etcd snapshot")]
    {
        let cmd = c.dir.join(format!("{n}-backup.sh"));
        std::fs::write(&cmd, format!("#!/bin/sh\numask 077\n{body}\n")).unwrap();
        std::fs::set_permissions(&cmd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = c
            .upgrade_without_backup(&to, &store(n))
            .args(["--action", &action, "-o", "json", "--backup-command"])
            .arg(format!("{} {{path}}", cmd.display()))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        let summary = last_summary(&out.stdout);
        let reason = summary["outcome"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("etcd backup failed") && reason.contains(says), "{n}: {summary}");
        assert!(
            summary["outcome"]["units"].as_array().unwrap().iter().all(|u| u["result"] == "not-started"),
            "{summary}"
        );
        assert!(any_cordoned(&c).await.is_empty(), "{n}: nothing cordoned");
        assert!(log_lines(&log).is_empty(), "{n}: no node action ran");
    }

    // The explicit opt-out: said in the plan (table, JSON), at the start and in the summary.
    let out = c
        .upgrade_without_backup(&to, &store("b"))
        .args(["--action", &action, "--no-etcd-backup", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("first: etcd backup: NONE (--no-etcd-backup)"));
    let out = c
        .upgrade_without_backup(&to, &store("b"))
        .args(["--action", &action, "--no-etcd-backup", "--dry-run", "-o", "json"])
        .output()
        .unwrap();
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dry["etcd_backup"]["type"], "opted-out", "{}", dry["etcd_backup"]);
    let out = c
        .upgrade_without_backup(&to, &store("b"))
        .args(["--action", &action, "--no-etcd-backup", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = last_summary(&out.stdout);
    assert_eq!(summary["outcome"]["state"], "completed", "{summary}");
    assert_eq!(summary["outcome"]["backup_opted_out"], true, "{summary}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--no-etcd-backup was given"), "the warning event");
    assert!(summary["outcome"]["backup"].is_null(), "no backup taken: {summary}");
}
