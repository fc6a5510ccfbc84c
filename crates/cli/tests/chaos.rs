//! Chaos on the testbed (issue 18 item 16): `refit upgrade` of a 3-control-plane / 20-worker
//! sandbox while etcd is stopped for 20 s, one apiserver behind the load balancer is stopped,
//! kwok (every worker's "kubelet") is restarted, and refit itself is killed with SIGKILL — each
//! at a random point of the run. Reruns of the same command must complete it, and an
//! independent watcher (its own watches, nothing shared with refit) must see no PDB violation,
//! no version skew violation, never more than max-unavailable workers unschedulable, and no
//! cordon left behind.
//!
//! Randomness is seeded and the seed printed: `REFIT_CHAOS_SEED=N` replays a run.
//!
//! The long mode (`--ignored`): 50 random kill -9s across runs of a smaller sandbox, reporting
//! how many runs completed and how many node actions ran again after they had finished (the
//! goal: none) or beside a copy still running (none).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use refit_testbed::Testbed;
use support::watcher::{Watcher, kubelet, unschedulable};
use support::{NS, Sandbox, install_apps, release};

/// xorshift64: small, seedable, enough to spread fault points.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("REFIT_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("chaos seed: {seed} (replay with REFIT_CHAOS_SEED={seed})");
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A detached sandbox, an action that logs every start and end (and any copy of itself still
/// running for the same node: a live process, not the zombie a killed copy leaves until it is
/// reaped), and the journal.
struct Chaos {
    _guard: Sandbox,
    tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    log: PathBuf,
    script: PathBuf,
    control_planes: usize,
}

impl Chaos {
    fn up(version: &str, control_planes: usize, workers: usize) -> Chaos {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        let guard = support::sandbox_up(&dir, version, control_planes, workers);
        let log = tmp.path().join("actions.log");
        let script = tmp.path().join("upgrade-node.sh");
        let pids = tmp.path().join("pids");
        std::fs::create_dir_all(&pids).unwrap();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 p=$(cat '{pids}/'\"$REFIT_NODE\" 2>/dev/null)\n\
                 s=$(sed 's/.*) //' /proc/\"$p\"/stat 2>/dev/null | cut -d' ' -f1)\n\
                 if [ -n \"$p\" ] && [ -n \"$s\" ] && [ \"$s\" != Z ] && [ \"$s\" != X ]; then echo \"overlap $REFIT_NODE $REFIT_TO $p $s\" >> '{log}'; fi\n\
                 echo $$ > '{pids}/'\"$REFIT_NODE\"\n\
                 echo \"start $REFIT_NODE $REFIT_TO $$\" >> '{log}'\n\
                 '{refit}' sandbox upgrade-node --dir '{dir}' \"$REFIT_NODE\" --to \"$REFIT_TO\" >/dev/null\n\
                 rc=$?\n\
                 echo \"end $REFIT_NODE $REFIT_TO $rc\" >> '{log}'\n\
                 exit $rc\n",
                pids = pids.display(),
                log = log.display(),
                refit = assert_cmd::cargo::cargo_bin("refit").display(),
                dir = dir.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let store = tmp.path().join("refit.db");
        Chaos { _guard: guard, tmp, dir, store, log, script, control_planes }
    }

    fn testbed(&self) -> Testbed {
        Testbed::attach(&self.dir).unwrap()
    }

    /// The one command every attempt runs (the operator's: the same line again after a crash).
    fn upgrade(&self, to: &str) -> Command {
        let tb = self.testbed();
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("refit"));
        c.args(["upgrade", "--to", to, "--yes", "--max-unavailable", "3", "-o", "json", "--kubeconfig"])
            .arg(tb.kubeconfig())
            .arg("--store")
            .arg(&self.store)
            .arg("--action")
            .arg(format!("exec:{} {{node}}", self.script.display()))
            .args(support::etcd_backup_args(&tb))
            // The testbed's one etcd member is its topology, not what this tests.
            .arg("--accept=etcd-members");
        if self.control_planes < 2 {
            c.arg("--accept=control-plane-count");
        }
        c
    }
}

/// What the action log says: runs that finished per (node, to), actions started again after
/// finishing (repeats), and copies started while another was running (overlaps).
#[derive(Debug, Default)]
struct Actions {
    starts: usize,
    finished: BTreeMap<(String, String), usize>,
    repeated: Vec<String>,
    overlaps: Vec<String>,
}

fn read_actions(log: &Path) -> Actions {
    let mut a = Actions::default();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["start", node, to, _] => {
                a.starts += 1;
                if a.finished.contains_key(&(node.to_string(), to.to_string())) {
                    a.repeated.push(line.to_string());
                }
            }
            ["end", node, to, "0"] => *a.finished.entry((node.to_string(), to.to_string())).or_default() += 1,
            ["overlap", ..] => a.overlaps.push(line.to_string()),
            _ => {}
        }
    }
    a
}

/// How one attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Completed,
    Killed,
    /// It ended on its own without completing (a fault made a step fail): rerun.
    Stopped(String),
}

/// Runs one attempt; `steps` counts `step-done` events over all attempts; the attempt is
/// killed with SIGKILL once `kill_at` is reached (plus `delay`).
fn attempt(
    cmd: &mut Command,
    steps: &Arc<AtomicUsize>,
    kill_at: Option<usize>,
    delay: Duration,
    err: &Path,
) -> End {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(err).unwrap();
    let mut child: Child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let counter = steps.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == "step-done" {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tx.send(v);
            }
        }
    });
    let mut summary = None;
    loop {
        if let Some(k) = kill_at
            && steps.load(Ordering::SeqCst) >= k
        {
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                return End::Killed;
            }
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(v) if v["event"] == "summary" => summary = Some(v),
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().unwrap();
    match summary {
        Some(s) if status.success() && s["outcome"]["state"] == "completed" => End::Completed,
        Some(s) => End::Stopped(format!("{status}: {}", s["outcome"]["reason"])),
        None => End::Stopped(format!("{status}, no summary (see {})", err.display())),
    }
}

/// Every node at `to`, none cordoned, every apiserver at `to`.
async fn assert_at_target(c: &Chaos, to: &str, nodes_expected: usize) {
    let tb = c.testbed();
    for m in tb.members() {
        assert_eq!(tb.apiserver_version(m.index).await.unwrap(), format!("v{to}"), "apiserver of {}", m.node);
    }
    let client = tb.client().await.unwrap();
    let nodes = Api::<Node>::all(client).list(&ListParams::default()).await.unwrap().items;
    assert_eq!(nodes.len(), nodes_expected);
    for n in &nodes {
        assert_eq!(kubelet(n), format!("v{to}"), "{:?}", n.metadata.name);
        assert!(!unschedulable(n), "{:?} left cordoned (a stranded cordon)", n.metadata.name);
    }
}

/// One fault of the chaos run, injected once `at` step-done events were seen.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// etcd stopped for 20 s.
    Etcd,
    /// One member's apiserver stopped for 10 s (clients go through the load balancer).
    Apiserver(usize),
    /// kwok killed and started again.
    Kwok,
}

async fn inject(dir: &Path, fault: Fault) {
    match fault {
        Fault::Etcd => {
            Testbed::attach(dir).unwrap().stop_etcd();
            tokio::time::sleep(Duration::from_secs(20)).await;
            Testbed::attach(dir).unwrap().start_etcd_again().await.unwrap();
        }
        Fault::Apiserver(i) => {
            Testbed::attach(dir).unwrap().stop_apiserver_only(i).unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            Testbed::attach(dir).unwrap().start_apiserver_again(i).await.unwrap();
        }
        Fault::Kwok => Testbed::attach(dir).unwrap().restart_kwok().await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_an_apiserver_down_kwok_restarted_and_refit_killed_the_reruns_complete_safely() {
    let (from, to) = (release(36), release(37));
    let mut rng = Rng::seeded();
    let c = Chaos::up(&from, 3, 20);
    let tb = c.testbed();
    let client = tb.client().await.unwrap();
    install_apps(&client, &tb).await;
    let watcher = Watcher::start(client.clone(), NS).await;

    // Fault points, in step-done events (about 117 in the whole run: the backup, 23 nodes × 5
    // steps, the cluster services); the apiserver is stopped once the control plane is done
    // (steps 1-16), so that its own member's upgrade does not restart it underneath the fault.
    let mut faults = vec![
        (rng.range(2, 75) as usize, Fault::Etcd),
        (rng.range(20, 75) as usize, Fault::Apiserver(rng.range(0, 2) as usize)),
        (rng.range(2, 75) as usize, Fault::Kwok),
    ];
    faults.sort_by_key(|f| f.0);
    let kill_at = rng.range(2, 85) as usize;
    let kill_delay = Duration::from_millis(rng.range(0, 400));
    eprintln!("faults at steps {faults:?}; kill -9 at step {kill_at} + {kill_delay:?}");

    let steps = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // Each fault waits for its own point, so that a long one (etcd's 20 s) does not push the
    // others past the end of the run.
    let injected: Vec<_> = faults
        .into_iter()
        .map(|(at, fault)| {
            let (steps, done, dir) = (steps.clone(), done.clone(), c.dir.clone());
            tokio::spawn(async move {
                while steps.load(Ordering::SeqCst) < at {
                    if done.load(Ordering::SeqCst) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let t = Instant::now();
                inject(&dir, fault).await;
                eprintln!("injected {fault:?} at step {at} ({:.1}s)", t.elapsed().as_secs_f64());
                Some(fault)
            })
        })
        .collect();
    // Stands in for kubelets that never lose their pods: a kwok restarted while pods are being
    // bound can miss one for good (`Testbed::nudge_pods_kwok_missed`); its PDB would then hold
    // every drain. Pods nudged are printed.
    let nudger = {
        let (done, dir) = (done.clone(), c.dir.clone());
        tokio::spawn(async move {
            let mut nudged = Vec::new();
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let Ok(tb) = Testbed::attach(&dir) else { continue };
                match tb.nudge_pods_kwok_missed(Duration::from_secs(45)).await {
                    Ok(pods) if !pods.is_empty() => {
                        eprintln!("nudged pods kwok left Pending: {pods:?}");
                        nudged.extend(pods);
                    }
                    Ok(_) => {}
                    // The API down under a fault: next round.
                    Err(e) => eprintln!("nudge: {e}"),
                }
            }
            nudged
        })
    };
    let err = c.tmp.path().join("refit.stderr");
    let started = Instant::now();
    let mut ends = Vec::new();
    let mut kill = Some(kill_at);
    loop {
        assert!(started.elapsed() < Duration::from_secs(600), "not completed after 10 minutes: {ends:?}");
        let mut cmd = c.upgrade(&to);
        let steps2 = steps.clone();
        let (k, e) = (kill, err.clone());
        let end =
            tokio::task::spawn_blocking(move || attempt(&mut cmd, &steps2, k, kill_delay, &e)).await.unwrap();
        eprintln!("attempt {}: {end:?} at step {}", ends.len() + 1, steps.load(Ordering::SeqCst));
        if end == End::Killed {
            kill = None;
        }
        let completed = end == End::Completed;
        ends.push(end);
        if completed {
            break;
        }
        // A fault can make an attempt stop (the API down, a step failing): the operator reruns.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut faults_done = Vec::new();
    for task in injected {
        faults_done.extend(task.await.unwrap());
    }
    let injected = faults_done;
    let nudged = nudger.await.unwrap();
    eprintln!("pods nudged after kwok missed them: {}", nudged.len());
    let seen = watcher.stop();
    eprintln!("{} attempts in {:.0}s: {ends:?}", ends.len(), started.elapsed().as_secs_f64());

    assert_eq!(injected.len(), 3, "every fault was injected before the run ended: {injected:?}");
    assert!(ends.contains(&End::Killed), "refit was killed once: {ends:?}");
    assert_at_target(&c, &to, 23).await;
    let actions = read_actions(&c.log);
    assert!(actions.overlaps.is_empty(), "two copies of a node's action at once: {:?}", actions.overlaps);
    assert!(actions.repeated.is_empty(), "finished node actions ran again: {:?}", actions.repeated);
    assert_eq!(actions.finished.len(), 23, "every node's action finished once: {actions:?}");
    seen.assert_safe(3);
    // The backup was taken once for the run, whatever the faults.
    let backups: Vec<_> = std::fs::read_dir(c.tmp.path().join("backups")).unwrap().collect();
    assert_eq!(backups.len(), 1, "one etcd backup per run: {backups:?}");
}

/// The long mode of the kill test: 50 SIGKILLs at random points (after 0-2 finished steps and
/// 0-1.5 s), each followed by the same command again, over as many runs as it takes (a new
/// sandbox for each run: 3 control planes behind the load balancer, 6 workers — with one
/// control plane, a kill in the middle of its apiserver swap leaves no API server for the
/// rerun to reach until the swap is finished by hand). Prints the completions, the repeated and
/// overlapping node actions and the time per kill; asserts none repeated and every run done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 50 kill -9s, about 20 minutes: cargo test -p refit-cli --test chaos -- --ignored"]
async fn fifty_random_kills_every_run_completes_and_no_node_action_repeats() {
    let (from, to) = (release(36), release(37));
    let mut rng = Rng::seeded();
    let target_kills: usize =
        std::env::var("REFIT_CHAOS_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let started = Instant::now();
    let (mut kills, mut runs, mut completed, mut attempts) = (0, 0, 0, 0);
    let (mut repeated, mut overlaps, mut starts) = (Vec::new(), Vec::new(), 0);
    let (mut stopped, mut stops_in_a_row) = (Vec::<String>::new(), 0);
    while kills < target_kills {
        let c = Chaos::up(&from, 3, 6);
        runs += 1;
        let steps = Arc::new(AtomicUsize::new(0));
        let err = c.tmp.path().join("refit.stderr");
        loop {
            let left = target_kills - kills;
            let kill_at = (left > 0).then(|| steps.load(Ordering::SeqCst) + rng.range(0, 2) as usize);
            let delay = Duration::from_millis(rng.range(0, 1500));
            let mut cmd = c.upgrade(&to);
            let (s, e) = (steps.clone(), err.clone());
            let end =
                tokio::task::spawn_blocking(move || attempt(&mut cmd, &s, kill_at, delay, &e)).await.unwrap();
            attempts += 1;
            match end {
                End::Killed => {
                    kills += 1;
                    stops_in_a_row = 0;
                }
                End::Completed => break,
                // A rerun that started while the apiserver of a member whose swap the kill cut
                // short was still shutting down can fail on its first request (it says so and
                // changes nothing); the operator runs the same command again.
                End::Stopped(why) => {
                    stops_in_a_row += 1;
                    eprintln!("run {runs}, attempt {attempts} stopped: {why}");
                    stopped.push(why.clone());
                    assert!(
                        stops_in_a_row < 5,
                        "run {runs}: five reruns in a row did not continue: {why}\n{}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        completed += 1;
        assert_at_target(&c, &to, 9).await;
        let a = read_actions(&c.log);
        starts += a.starts;
        repeated.extend(a.repeated);
        overlaps.extend(a.overlaps);
        eprintln!(
            "run {runs} completed; {kills} kills so far, {attempts} attempts, {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "KILL TEST: {kills} kill -9s over {attempts} attempts ({} reruns stopped on their own and were run again); runs completed {completed}/{runs}; node actions started {starts}, repeated after finishing {}, overlapping {}; {secs:.0}s in all, {:.1}s per kill",
        stopped.len(),
        repeated.len(),
        overlaps.len(),
        secs / kills.max(1) as f64
    );
    assert_eq!(completed, runs);
    assert!(repeated.is_empty(), "finished node actions ran again: {repeated:?}");
    assert!(overlaps.is_empty(), "two copies of a node's action at once: {overlaps:?}");
}
