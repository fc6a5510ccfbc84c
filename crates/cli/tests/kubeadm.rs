//! Real node upgrades: `refit upgrade --action ssh` with the built-in kubeadm recipe, against a
//! cluster that the real `kubeadm init`/`join` built on kubeadm-shaped sandbox nodes (own
//! network, UTS and mount namespaces, sshd, apt with a signed per-minor repository, a node agent
//! in place of the kubelet). Everything on the node is real: sshd, apt-get, dpkg, kubeadm of each
//! release, the control-plane binaries kubeadm's manifests name.
//!
//! Needs root (namespaces, mounts) and openssh-server (`.ci/run` installs it); fails loudly
//! otherwise.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use refit_core::Version;
use refit_testbed::Lifetime;
use refit_testbed::kubeadm::cluster::{KubeadmCluster, KubeadmConfig};
use refit_testbed::kubeadm::host::NodeHost;
use refit_testbed::workloads::{Budget, apply, deployment, pdb, wait_pods_ready};
use support::watcher::{Watcher, kubelet};
use support::{catalog_newest_at, release};

const NS: &str = "shop";

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

/// A kubeadm sandbox at `from` whose repository offers `releases` too (its start time is
/// printed for the closing note).
async fn cluster(
    tmp: &tempfile::TempDir,
    from: &str,
    releases: &[&str],
    control_planes: usize,
    workers: usize,
) -> KubeadmCluster {
    let agent = env!("CARGO_BIN_EXE_refit").to_string();
    let started = Instant::now();
    let c = KubeadmCluster::start(KubeadmConfig {
        // REFIT_TEST_KEEP=DIR keeps the sandbox's logs and state there for a post-mortem.
        dir: std::env::var_os("REFIT_TEST_KEEP").map(PathBuf::from).unwrap_or_else(|| tmp.path().join("sb")),
        version: v(from),
        releases: releases.iter().map(|r| v(r)).collect(),
        control_planes,
        workers,
        lifetime: Lifetime::Attached,
        agent_command: vec![agent, "sandbox".into(), "node-agent".into()],
        lb_command: None,
        repo_command: None,
    })
    .await
    .unwrap_or_else(|e| panic!("kubeadm sandbox: {e}"));
    eprintln!(
        "timing: sandbox {control_planes} cp + {workers} workers at {from} up in {:?}",
        started.elapsed()
    );
    c
}

/// `kubeadm`, `kubelet`, `kubectl` with their installed versions on `node`, one per line.
fn packages(c: &KubeadmCluster, node: &str) -> String {
    c.exec(node, "dpkg-query", &["-W", "-f", "${Package} ${Version}\\n", "kubeadm", "kubelet", "kubectl"])
        .unwrap()
}

/// The packages held on `node`.
fn held(c: &KubeadmCluster, node: &str) -> Vec<String> {
    c.exec(node, "apt-mark", &["showhold"]).unwrap().split_whitespace().map(str::to_string).collect()
}

/// The common sandbox: 1 control plane + 2 workers at 1.36 with 1.37 in the repository, and
/// an admin client; returns (from, to, cluster, client).
async fn one_cp_two_workers(tmp: &tempfile::TempDir) -> (String, String, KubeadmCluster, kube::Client) {
    let (from, to) = (release(36), release(37));
    let c = cluster(tmp, &from, &[&from, &to], 1, 2).await;
    let client = c.client().await.unwrap();
    (from, to, c, client)
}

fn manifests_images(c: &KubeadmCluster, node: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for file in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        let text = c.exec(node, "cat", &[&format!("/etc/kubernetes/manifests/{file}.yaml")]).unwrap();
        let image =
            text.lines().find_map(|l| l.trim().strip_prefix("image: ")).unwrap_or_default().to_string();
        out.insert(file.to_string(), image);
    }
    out
}

/// The processes running inside `node` as (pid, executable, command line): its own /proc view
/// is the host's, so filter by the node's network namespace.
fn node_processes(c: &KubeadmCluster, node: &str) -> Vec<(u32, String, String)> {
    processes_in(&c.node_host(node).unwrap())
}

/// [`node_processes`] for a node's host handle (which a sampling thread can own).
fn processes_in(host: &NodeHost) -> Vec<(u32, String, String)> {
    let script = "for p in /proc/[0-9]*; do [ \"$(readlink $p/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ] && \
                  echo \"${p#/proc/} $(readlink $p/exe) $(tr '\\0' ' ' < $p/cmdline)\"; done 2>/dev/null; true";
    let out = host.command("sh", ["-c", script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let pid = parts.next()?.parse().ok()?;
            Some((pid, parts.next()?.to_string(), parts.next().unwrap_or_default().trim().to_string()))
        })
        .collect()
}

fn node_binaries(c: &KubeadmCluster, node: &str) -> Vec<String> {
    node_processes(c, node).into_iter().map(|(_, exe, _)| exe).collect()
}

/// The `refit upgrade` every scenario runs: the sandbox's plan file (ssh action, built-in
/// kubeadm recipe), one worker at a time, JSON events on stdout.
fn upgrade(c: &KubeadmCluster, to: &str, store: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_refit"));
    cmd.args(["upgrade", "--to", to, "--yes", "--max-unavailable", "1", "-o", "json", "--kubeconfig"])
        .arg(c.kubeconfig())
        .arg("-f")
        .arg(c.plan_file())
        .arg("--store")
        .arg(store);
    cmd
}

/// What one `refit upgrade` did.
struct Ran {
    code: Option<i32>,
    events: Vec<serde_json::Value>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Events of one kind about one node.
    fn of<'a>(&'a self, kind: &'a str, node: &'a str) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
        self.events.iter().filter(move |e| e["event"] == kind && e["node"] == node)
    }

    /// The stage versions at which `node`'s upgrade step started, in order.
    fn upgrades(&self, node: &str) -> Vec<String> {
        self.of("step-started", node)
            .filter(|e| e["step"] == "upgrade")
            .map(|e| e["to"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// What the action printed on `node`.
    fn output(&self, node: &str) -> Vec<String> {
        self.of("action-output", node).map(|e| e["line"].as_str().unwrap_or_default().to_string()).collect()
    }
}

fn run(cmd: std::process::Command, what: &str) -> Ran {
    let started = Instant::now();
    let out = assert_cmd::Command::from_std(cmd).timeout(Duration::from_secs(1500)).output().unwrap();
    eprintln!("timing: {what}: refit upgrade took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ran { code: out.status.code(), events, stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// `refit plan` against the sandbox with its plan file, JSON out: (exit code, parsed output,
/// stderr).
fn plan(c: &KubeadmCluster, to: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let started = Instant::now();
    let out = assert_cmd::Command::cargo_bin("refit")
        .unwrap()
        .args(["plan", "--to", to, "-o", "json", "--kubeconfig"])
        .arg(c.kubeconfig())
        .args(extra)
        .timeout(Duration::from_secs(600))
        .output()
        .unwrap();
    eprintln!("timing: refit plan --to {to} {extra:?} took {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("plan printed no JSON ({e}): {}\n{stderr}", String::from_utf8_lossy(&out.stdout))
    });
    (out.status.code(), json, stderr)
}

/// The findings of one check in a plan's JSON, as (node, message).
fn findings_of(plan: &serde_json::Value, check: &str) -> Vec<(String, String)> {
    plan["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["check"] == check)
        .map(|f| {
            (
                f["node"].as_str().unwrap_or_default().to_string(),
                f["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Everything a read-only probe must leave as it was on `node`: the packages and their holds,
/// apt's sources, preferences, lists and caches, and every file under /etc/kubernetes.
fn node_state(c: &KubeadmCluster, node: &str) -> String {
    let script = "dpkg -l 'kube*'; apt-mark showhold; \
                  find /etc/kubernetes /etc/apt /var/lib/apt /var/cache/apt /var/lib/dpkg -type f -print0 \
                  | sort -z | xargs -0 sha256sum";
    c.exec(node, "sh", &["-c", script]).unwrap()
}

/// No node is cordoned.
async fn none_cordoned(client: &kube::Client) {
    for n in Api::<Node>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        let name = n.metadata.name.clone().unwrap_or_default();
        assert!(!n.spec.and_then(|s| s.unschedulable).unwrap_or(false), "{name} is cordoned");
    }
}

/// Points `node`'s repository at a mirror whose channel of `to`'s minor still serves `from`'s
/// packages (a local mirror that has not synced the new minor); returns the original sources
/// line to restore.
fn stale_mirror(c: &KubeadmCluster, node: &str, from: &str, to: &str) -> String {
    let repo = c.state().dir.join("repo");
    let minor = |r: &str| format!("v{}", r.rsplit_once('.').unwrap().0);
    let stale = repo.join("stale/core:/stable:");
    std::fs::create_dir_all(&stale).unwrap();
    for channel in [minor(from), minor(to)] {
        let link = stale.join(channel);
        if !link.exists() {
            std::os::unix::fs::symlink(repo.join("core:/stable:").join(minor(from)), link).unwrap();
        }
    }
    let list = refit_testbed::kubeadm::repo::SOURCES_PATH;
    let line = c.exec(node, "cat", &[list]).unwrap();
    let moved = line.replace("/core:/stable:/", "/stale/core:/stable:/");
    assert_ne!(moved, line);
    c.node_host(node).unwrap().write_file(list, moved.as_bytes(), 0o644).unwrap();
    line
}

/// Every node at `to` after a completed run: control-plane manifests and processes at the
/// target binaries, packages at the target and held, kubelets reporting it, nobody cordoned,
/// kube-proxy at kubeadm's pairing.
async fn assert_all_at(c: &KubeadmCluster, client: &kube::Client, from: &str, to: &str) {
    for n in c.nodes().iter().filter(|n| n.control_plane) {
        for (component, image) in manifests_images(c, &n.name) {
            if component != "etcd" {
                assert!(image.ends_with(&format!(":v{to}")), "{}: {component}: {image}", n.name);
            }
        }
        let binaries = node_binaries(c, &n.name);
        for component in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
            assert!(
                binaries.iter().any(|b| b.ends_with(&format!("k8s-v{to}/{component}"))),
                "{component} is not the v{to} binary on {}: {binaries:?}",
                n.name
            );
            assert!(
                !binaries.iter().any(|b| b.ends_with(&format!("k8s-v{from}/{component}"))),
                "{binaries:?}"
            );
        }
    }
    let pkg = format!("{to}-1.1");
    for n in c.nodes() {
        let listed = packages(c, &n.name);
        for line in listed.lines() {
            assert!(line.ends_with(&pkg), "{}: {line}", n.name);
        }
        assert_eq!(held(c, &n.name), ["kubeadm", "kubectl", "kubelet"], "{}", n.name);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for n in nodes.list(&ListParams::default()).await.unwrap() {
        assert_eq!(kubelet(&n), format!("v{to}"), "{}", n.metadata.name.clone().unwrap_or_default());
        assert!(!n.spec.and_then(|s| s.unschedulable).unwrap_or(false), "left cordoned");
    }
    // kubeadm's own add-on upgrade moved kube-proxy (and CoreDNS) to its pairing.
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let proxy = ds.get("kube-proxy").await.unwrap();
    let image = proxy.spec.template.spec.unwrap().containers[0].image.clone().unwrap_or_default();
    assert!(image.ends_with(&format!(":v{to}")), "kube-proxy image {image}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_control_plane_and_two_workers_go_from_136_to_137_through_kubeadm_and_apt() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, to, c, client) = one_cp_two_workers(&tmp).await;

    // Before: packages held at the start release, every node's kubelet at it.
    for n in c.nodes() {
        assert_eq!(held(&c, &n.name), ["kubeadm", "kubectl", "kubelet"], "{}", n.name);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for n in nodes.list(&ListParams::default()).await.unwrap() {
        assert_eq!(kubelet(&n), format!("v{from}"));
    }

    // A workload under a PDB spread over the workers.
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = ns
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await;
    apply::<Deployment>(&client, deployment(NS, "web", 4)).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb(NS, "web", "web", Budget::MaxUnavailable(1))).await.unwrap();
    wait_pods_ready(&client, NS, "", 4, std::time::Duration::from_secs(120)).await.unwrap();

    // Before anything changes, every action says which versions it can reach (issue 17 item 6).
    let minor = to.rsplit_once('.').unwrap().0.to_string();
    // An exec action's probe: worker-2 cannot reach the target.
    let exec_plan = tmp.path().join("exec-plan.yaml");
    std::fs::write(
        &exec_plan,
        "action:\n  type: exec\n  command: [\"true\"]\n  probe: [sh, -c, 'test \"$REFIT_NODE\" != worker-2 || (echo \"no image for $REFIT_TO\" >&2; exit 1)']\n",
    )
    .unwrap();
    let (code, p, err) = plan(&c, &to, &["-f", exec_plan.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{p}\n{err}");
    assert_eq!(
        findings_of(&p, "target-unreachable"),
        [(
            "worker-2".to_string(),
            format!(
                "the action's probe says {to} cannot be reached: sh exited with code 1; last stderr lines: / no image for {to}"
            )
        )],
        "{p}"
    );
    // The sandbox action's buildable set: a catalog patch it cannot build blocks every node,
    // and a minor resolves to the patch it can build.
    let catalog = refit_core::catalog::Catalog::embedded().unwrap();
    let built = refit_testbed::Cache::from_env().unwrap().built_kubernetes();
    let unbuildable = catalog
        .release(v(&to).minor_version())
        .unwrap()
        .patches
        .iter()
        .find(|p| !built.contains(*p) && p.to_string() != to)
        .expect("a catalog patch of the target minor that is not built")
        .to_string();
    let sandbox_action = format!("sandbox:{}", tmp.path().join("no-sandbox").display());
    let (code, p, err) = plan(&c, &unbuildable, &["--action", &sandbox_action]);
    assert_eq!(code, Some(1), "{p}\n{err}");
    let unreachable = findings_of(&p, "target-unreachable");
    assert_eq!(unreachable.len(), 3, "{p}");
    assert!(
        unreachable.iter().all(|(_, m)| m.contains(&format!("{unbuildable} is not offered"))),
        "{unreachable:?}"
    );
    // (The lone control plane and etcd member are accepted, as the sandbox's plan file does.)
    let (code, p, err) = plan(
        &c,
        &minor,
        &["--action", &sandbox_action, "--accept", "etcd-members", "--accept", "control-plane-count"],
    );
    assert_eq!((code, p["target"].as_str()), (Some(0), Some(to.as_str())), "{p}\n{err}");

    // A node whose repository lacks the target: `refit plan` names it, `refit upgrade` stops
    // before cordoning anything, and nothing on any node changed.
    let before: BTreeMap<String, String> =
        c.nodes().iter().map(|n| (n.name.clone(), node_state(&c, &n.name))).collect();
    let original = stale_mirror(&c, "worker-1", &from, &to);
    let blocked = run(upgrade(&c, &to, &tmp.path().join("blocked.db")), "blocked by worker-1's repository");
    assert_eq!(blocked.code, Some(1), "{}\n{}", blocked.stdout, blocked.stderr);
    let unreachable =
        // The plan document comes first; the `plan-blocked` event line a fleet driver reads follows.
        findings_of(
            &serde_json::Deserializer::from_str(&blocked.stdout)
                .into_iter::<serde_json::Value>()
                .next()
                .and_then(Result::ok)
                .unwrap_or_default(),
            "target-unreachable",
        );
    assert_eq!(unreachable.len(), 1, "{}", blocked.stdout);
    assert_eq!(unreachable[0].0, "worker-1");
    assert!(
        unreachable[0].1.contains(&format!("{to} is not offered to this node (offered: {from})")),
        "{unreachable:?}"
    );
    assert!(!blocked.stdout.contains("step-started"), "a step started: {}", blocked.stdout);
    none_cordoned(&client).await;
    c.node_host("worker-1")
        .unwrap()
        .write_file(refit_testbed::kubeadm::repo::SOURCES_PATH, original.as_bytes(), 0o644)
        .unwrap();

    // `refit plan --to 1.37` (a minor, as an operator types it) with the ssh action: resolved to
    // the patch every node's repository offers, and kubeadm's own plan for it, from the first
    // control-plane node — without changing any node.
    let (code, p, err) = plan(&c, &minor, &["-f", c.plan_file().to_str().unwrap()]);
    assert_eq!(code, Some(0), "{p}\n{err}");
    assert_eq!(p["target"].as_str(), Some(to.as_str()), "{p}");
    let catalog_newest = catalog.newest_patch(v(&to).minor_version()).unwrap().to_string();
    if catalog_newest != to {
        let note = findings_of(&p, "target-resolved");
        assert!(note.len() == 1 && note[0].1.contains(&catalog_newest), "{p}");
    }
    let kubeadm_plan = &p["reach"]["kubeadmPlan"];
    assert_eq!(kubeadm_plan["node"], "cp-1", "{p}");
    assert!(kubeadm_plan["error"].is_null(), "{kubeadm_plan}");
    let components: BTreeMap<String, (String, String)> = kubeadm_plan["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] != "kubelet")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("name"), (s("currentVersion"), s("newVersion")))
        })
        .collect();
    eprintln!("kubeadm upgrade plan on cp-1: {components:?}");
    assert_eq!(components["kube-apiserver"], (format!("v{from}"), format!("v{to}")));
    assert_eq!(components["kube-proxy"].1, format!("v{to}"));
    let kubeadm_images = &catalog.release(v(&to).minor_version()).unwrap().kubeadm;
    assert_eq!(components["etcd"].1, kubeadm_images.etcd, "etcd at kubeadm's pairing");
    assert!(components.contains_key("CoreDNS"), "{components:?}");
    // Readiness over ssh (Kismatic's disk check): every node has room on the filesystems the
    // upgrade writes; a threshold no node meets blocks on each, naming the mount and numbers.
    assert!(
        findings_of(&p, "node-disk-space").is_empty() && findings_of(&p, "node-readiness-unknown").is_empty(),
        "{p}"
    );
    let (code, full, err) =
        plan(&c, &minor, &["-f", c.plan_file().to_str().unwrap(), "--min-free-disk", "1000Ti"]);
    assert_eq!(code, Some(1), "{full}\n{err}");
    let disk = findings_of(&full, "node-disk-space");
    for n in c.nodes() {
        assert!(
            disk.iter().any(|(node, m)| node == &n.name
                && m.contains(" MiB free of ")
                && m.contains("needs 1048576000 MiB")
                && m.contains("/var/lib")),
            "{}: {disk:?}",
            n.name
        );
    }
    let after: BTreeMap<String, String> =
        c.nodes().iter().map(|n| (n.name.clone(), node_state(&c, &n.name))).collect();
    for (node, state) in &before {
        assert_eq!(state, &after[node], "the probe changed {node}");
    }
    // The table shows the same.
    let table = support::stdout(
        support::refit()
            .args(["plan", "--to", &minor, "--kubeconfig"])
            .arg(c.kubeconfig())
            .arg("-f")
            .arg(c.plan_file()),
    );
    assert!(table.contains("kubeadm upgrade plan") && table.contains("kube-apiserver"), "{table}");

    let watcher = Watcher::start(client.clone(), NS).await;
    // The issue's own command: `--to 1.37`, resolved to what the repositories offer.
    let ran = run(upgrade(&c, &minor, &tmp.path().join("refit.db")), "1 cp + 2 workers");
    let seen = watcher.stop();
    assert!(ran.ok(), "refit upgrade failed:\n{}\n{}", ran.stdout, ran.stderr);
    assert_all_at(&c, &client, &from, &to).await;
    // The run's ssh action carried each host's identity as the plan's probe read it (its
    // spec in the journal): every node, by its own host name.
    let store = refit_store::Store::open(&tmp.path().join("refit.db")).unwrap();
    let run = store.runs().unwrap().into_iter().next().unwrap();
    let spec: serde_json::Value = serde_json::from_str(&run.spec).unwrap();
    for n in c.nodes() {
        assert_eq!(spec["action"]["identities"][&n.name]["hostname"], n.name.as_str(), "{spec}");
    }
    // No etcd certificates were given: the snapshot was taken on cp-1 through the ssh action
    // (issue 18 item 9) — a real etcd snapshot, 0600 in a 0700 directory, holding the cluster.
    assert_eq!(spec["backup"]["type"], "node", "{spec}");
    assert_etcd_snapshot(&ran, &tmp.path().join("backups"), NS).await;

    assert!(seen.skew_breaches.is_empty(), "{:?}", seen.skew_breaches);
    assert!(seen.max_unschedulable_workers <= 1, "{seen:?}");
    assert!(seen.min_healthy.get("web").copied().unwrap_or(0) >= 3, "PDB violated: {seen:?}");
}

/// The run's `backup` event names a file in `dir` that is a verified etcd snapshot (exec's
/// own check: bbolt meta page, SHA-256 trailer), private, and holds namespace `ns`.
async fn assert_etcd_snapshot(ran: &Ran, dir: &Path, ns: &str) {
    use std::os::unix::fs::PermissionsExt;
    let event = ran.events.iter().find(|e| e["event"] == "backup").unwrap_or_else(|| {
        panic!("no backup event:\n{}", ran.stdout);
    });
    let path = PathBuf::from(event["path"].as_str().unwrap());
    assert_eq!(path.parent(), Some(dir), "{event}");
    let checked = refit_exec::backup::check_snapshot_file(&path).await.unwrap();
    assert_eq!(checked.bytes, event["bytes"].as_u64().unwrap());
    assert!(checked.bytes > 64 * 1024, "{event}");
    assert_eq!(checked.bytes % 512, 32, "etcd's digest trailer is there");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700);
    let data = std::fs::read(&path).unwrap();
    let needle = format!("/registry/namespaces/{ns}");
    assert!(data.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} is in the snapshot");
}

// ------------------------------------------------------------------ the --ignored scenarios

/// Health of the stacked etcd members as seen from the host: `etcdctl endpoint health` with the
/// cluster's healthcheck-client certificate (read from cp-1), every 500 ms, until stopped.
struct EtcdWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(Duration, usize, String)>>,
}

impl EtcdWatch {
    fn start(c: &KubeadmCluster, dir: &Path) -> EtcdWatch {
        let pki = dir.join("etcd-pki");
        std::fs::create_dir_all(&pki).unwrap();
        for f in ["ca.crt", "healthcheck-client.crt", "healthcheck-client.key"] {
            let text = c.exec("cp-1", "cat", &[&format!("/etc/kubernetes/pki/etcd/{f}")]).unwrap();
            std::fs::write(pki.join(f), text).unwrap();
        }
        let cache = refit_testbed::Cache::from_env().unwrap();
        let etcd = refit_testbed::TestbedVersions::from_env().unwrap().etcd;
        let etcdctl = cache.entry_dir(&refit_testbed::Component::Etcd(etcd)).join("etcdctl");
        let endpoints: Vec<String> = c
            .nodes()
            .iter()
            .filter(|n| n.control_plane)
            .map(|n| format!("https://{}:2379", n.address))
            .collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let begin = Instant::now();
            let mut samples = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let out = std::process::Command::new(&etcdctl)
                    .arg(format!("--endpoints={}", endpoints.join(",")))
                    .arg(format!("--cacert={}", pki.join("ca.crt").display()))
                    .arg(format!("--cert={}", pki.join("healthcheck-client.crt").display()))
                    .arg(format!("--key={}", pki.join("healthcheck-client.key").display()))
                    .args(["--dial-timeout=2s", "--command-timeout=3s", "endpoint", "health", "-w", "json"])
                    .output();
                let (healthy, detail) = match out {
                    Ok(o) => {
                        let list: Vec<serde_json::Value> =
                            serde_json::from_slice(&o.stdout).unwrap_or_default();
                        let healthy = list.iter().filter(|e| e["health"] == true).count();
                        let sick: Vec<String> = list
                            .iter()
                            .filter(|e| e["health"] != true)
                            .map(|e| format!("{} {}", e["endpoint"], e["error"]))
                            .collect();
                        (
                            healthy,
                            format!("{} {}", sick.join("; "), String::from_utf8_lossy(&o.stderr).trim()),
                        )
                    }
                    Err(e) => (0, e.to_string()),
                };
                samples.push((begin.elapsed(), healthy, detail));
                std::thread::sleep(Duration::from_millis(500).saturating_sub(t.elapsed()));
            }
            samples
        });
        EtcdWatch { stop, handle }
    }

    fn finish(self) -> Vec<(Duration, usize, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The pid of the process running `exe_suffix` inside `node`.
fn pid_of(c: &KubeadmCluster, node: &str, exe_suffix: &str) -> Option<u32> {
    node_processes(c, node).into_iter().find(|(_, exe, _)| exe.ends_with(exe_suffix)).map(|(pid, _, _)| pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long kubeadm scenario: cargo test -p refit-cli --test kubeadm -- --ignored"]
async fn three_stacked_etcd_members_keep_quorum_through_every_members_upgrade() {
    let (from, to) = (release(36), release(37));
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(&tmp, &from, &[&from, &to], 3, 1).await;
    let client = c.client().await.unwrap();
    let cps: Vec<String> = c.nodes().iter().filter(|n| n.control_plane).map(|n| n.name.clone()).collect();
    let before: BTreeMap<String, u32> = cps
        .iter()
        .map(|n| (n.clone(), pid_of(&c, n, "/etcd").unwrap_or_else(|| panic!("no etcd on {n}"))))
        .collect();

    let etcd = EtcdWatch::start(&c, tmp.path());
    std::thread::sleep(Duration::from_secs(2));
    let ran = run(upgrade(&c, &to, &tmp.path().join("refit.db")), "3 cp + 1 worker");
    std::thread::sleep(Duration::from_secs(2));
    let samples = etcd.finish();
    assert!(ran.ok(), "refit upgrade failed:\n{}\n{}", ran.stdout, ran.stderr);

    // Quorum all along: never fewer than 2 of 3 members healthy, sampled every 500 ms.
    assert!(samples.len() > 20, "too few samples: {samples:?}");
    let low: Vec<_> = samples.iter().filter(|(_, healthy, _)| *healthy < 2).collect();
    assert!(low.is_empty(), "etcd below quorum at: {low:?}");
    let degraded = samples.iter().filter(|(_, healthy, _)| *healthy < 3).count();
    eprintln!(
        "etcd: {} samples over {:?}, {degraded} with a member down",
        samples.len(),
        samples.last().map(|s| s.0)
    );
    // Each member was restarted by kubeadm's etcd upgrade (a new process), one at a time.
    for n in &cps {
        let after = pid_of(&c, n, "/etcd").unwrap_or_else(|| panic!("no etcd on {n} after the run"));
        assert_ne!(before[n], after, "etcd on {n} was not restarted");
        let etcd_image = &manifests_images(&c, n)["etcd"];
        eprintln!("{n}: etcd pid {} -> {after}, image {etcd_image}", before[n]);
    }
    assert_all_at(&c, &client, &from, &to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long kubeadm scenario: cargo test -p refit-cli --test kubeadm -- --ignored"]
async fn multi_hop_walks_every_control_plane_through_kubeadm_per_minor_and_workers_once() {
    let (from, mid, to) = (release(35), release(36), release(37));
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(&tmp, &from, &[&from, &mid, &to], 1, 2).await;
    let client = c.client().await.unwrap();
    let mut cmd = upgrade(&c, &to, &tmp.path().join("refit.db"));
    cmd.arg("--catalog").arg(catalog_newest_at(tmp.path(), &mid));
    let ran = run(cmd, "multi-hop 1 cp + 2 workers");
    assert!(ran.ok(), "refit upgrade failed:\n{}\n{}", ran.stdout, ran.stderr);

    for n in c.nodes() {
        let hops = ran.upgrades(&n.name);
        let out = ran.output(&n.name);
        if n.control_plane {
            // kubeadm at each hop's version, then its upgrade at that version.
            assert_eq!(hops, [mid.as_str(), to.as_str()], "{} walks one minor at a time", n.name);
            for hop in [&mid, &to] {
                assert!(
                    out.iter().any(|l| l.trim() == format!("v{hop}")),
                    "{}: no kubeadm v{hop}: {out:?}",
                    n.name
                );
                assert!(
                    out.iter().any(|l| l.contains("SUCCESS") && l.contains(&format!("v{hop}"))),
                    "{}: kubeadm did not report an upgrade to v{hop}: {out:?}",
                    n.name
                );
            }
        } else {
            assert_eq!(hops, [to.as_str()], "{} goes once, straight to {to}", n.name);
        }
    }
    // Workers only after the last control-plane hop.
    let position = |node: &str, to: &str| {
        ran.events.iter().position(|e| {
            e["event"] == "step-started" && e["step"] == "upgrade" && e["node"] == node && e["to"] == to
        })
    };
    let cp_last = position("cp-1", &to).unwrap();
    for w in ["worker-1", "worker-2"] {
        assert!(position(w, &to).unwrap() > cp_last, "{w} before the control plane finished");
    }
    assert_all_at(&c, &client, &from, &to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long kubeadm scenario: cargo test -p refit-cli --test kubeadm -- --ignored"]
async fn multi_hop_with_three_control_planes_runs_kubeadm_on_every_member_per_minor() {
    let (from, mid, to) = (release(35), release(36), release(37));
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(&tmp, &from, &[&from, &mid, &to], 3, 1).await;
    let client = c.client().await.unwrap();
    // `--to 1.37` with the shipped catalog: the hop through 1.36 and the target both land on
    // the patches every node's repository offers (no trimmed catalog).
    let minor = to.rsplit_once('.').unwrap().0.to_string();
    let ran = run(upgrade(&c, &minor, &tmp.path().join("refit.db")), "multi-hop 3 cp + 1 worker");
    assert!(ran.ok(), "refit upgrade failed:\n{}\n{}", ran.stdout, ran.stderr);
    for n in c.nodes() {
        let hops = ran.upgrades(&n.name);
        let out = ran.output(&n.name);
        if n.control_plane {
            assert_eq!(hops, [mid.as_str(), to.as_str()], "{} walks one minor at a time", n.name);
            for hop in [&mid, &to] {
                assert!(
                    out.iter().any(|l| l.trim() == format!("v{hop}")),
                    "{}: no kubeadm v{hop}: {out:?}",
                    n.name
                );
            }
            // The first member applies each hop (`upgrade apply` prints both lines), the others
            // follow with `kubeadm upgrade node` (only the second).
            let count = |text: &str| out.iter().filter(|l| l.contains(text)).count();
            let applied = count("SUCCESS! A control plane node of your cluster was upgraded");
            let upgraded = count("The control plane instance for this node was successfully upgraded");
            eprintln!(
                "{}: {applied} apply success line(s), {upgraded} control-plane upgrade line(s)",
                n.name
            );
            let expected_applies = if n.name == "cp-1" { 2 } else { 0 };
            assert_eq!((applied, upgraded), (expected_applies, 2), "{}: one kubeadm upgrade per hop", n.name);
        } else {
            assert_eq!(hops, [to.as_str()], "{} goes once, straight to {to}", n.name);
        }
    }
    assert_all_at(&c, &client, &from, &to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long kubeadm scenario: cargo test -p refit-cli --test kubeadm -- --ignored"]
async fn refit_killed_while_kubeadm_upgrade_apply_runs_then_rerun_completes() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let (from, to, c, client) = one_cp_two_workers(&tmp).await;
    let store = tmp.path().join("refit.db");

    // Every `kubeadm upgrade apply` process cp-1 ever runs, sampled every 200 ms.
    let applies = Arc::new(Mutex::new(std::collections::BTreeSet::<u32>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (applies, stop) = (applies.clone(), stop.clone());
        let cp1 = c.node_host("cp-1").unwrap();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (pid, _, cmdline) in processes_in(&cp1) {
                    if cmdline.contains("kubeadm upgrade apply") {
                        applies.lock().unwrap().insert(pid);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let started = Instant::now();
    let mut first = upgrade(&c, &to, &store);
    first.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut child = first.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let drain =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(600);
    while applies.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "kubeadm upgrade apply never started on cp-1");
        assert!(child.try_wait().unwrap().is_none(), "refit ended before kubeadm upgrade apply started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Well into the apply (past its preflight, writing manifests), then SIGKILL.
    std::thread::sleep(Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = started.elapsed();
    let first_events = drain.join().unwrap();
    let apply_running =
        node_processes(&c, "cp-1").iter().any(|(_, _, cmd)| cmd.contains("kubeadm upgrade apply"));
    eprintln!(
        "killed refit {killed_at:?} after its start; kubeadm apply still running on cp-1: {apply_running}"
    );
    assert!(
        !first_events.iter().any(|l| l.contains("\"summary\"")),
        "the first run finished before the kill"
    );

    // The same command again.
    let ran = run(upgrade(&c, &to, &store), "rerun after kill -9");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(ran.ok(), "rerun failed:\n{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.events.iter().any(|e| e["event"] == "run-started" && e["resumed"] == true), "{}", ran.stdout);
    let applies = applies.lock().unwrap().clone();
    let rerun_cp1 = ran.upgrades("cp-1");
    eprintln!(
        "kubeadm upgrade apply processes on cp-1: {applies:?}; the rerun started cp-1's upgrade step {} time(s)",
        rerun_cp1.len()
    );
    // Issue 18 item 5: the recipe runs detached on the node under the run's name, so the
    // resumed run attached to the one under way (or took its result) instead of starting it
    // again: exactly one `kubeadm upgrade apply` over the whole run.
    assert!(rerun_cp1.len() <= 1, "{rerun_cp1:?}");
    assert_eq!(applies.len(), 1, "kubeadm upgrade apply ran more than once on cp-1: {applies:?}");
    let cp1_out = ran.output("cp-1");
    assert!(
        cp1_out.iter().any(|l| l.contains("attached to this recipe") || l.contains("already finished")),
        "the rerun did not attach to cp-1's recipe: {cp1_out:?}"
    );
    for w in ["worker-1", "worker-2"] {
        assert_eq!(ran.upgrades(w).len(), 1, "{w}");
    }
    assert_all_at(&c, &client, &from, &to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long kubeadm scenario: cargo test -p refit-cli --test kubeadm -- --ignored"]
async fn bad_cases_stale_repository_pins_and_a_hand_edited_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, to, c, client) = one_cp_two_workers(&tmp).await;

    // (b) An operator's flag in cp-1's scheduler manifest.
    let manifest = "/etc/kubernetes/manifests/kube-scheduler.yaml";
    let text = c.exec("cp-1", "cat", &[manifest]).unwrap();
    let edited = text.replacen("    - kube-scheduler\n", "    - kube-scheduler\n    - --v=3\n", 1);
    assert_ne!(edited, text, "no command line to edit in {text}");
    c.node_host("cp-1").unwrap().write_file(manifest, edited.as_bytes(), 0o600).unwrap();

    // (c) apt pins on worker-2 (issue 13 item 6). One that forbids the target blocks the plan,
    // naming the node and the pin file; one that prefers the old minor (1001) does not — the
    // recipe installs the exact target, and with per-minor repositories nothing offers the old
    // version afterwards (checked after the run).
    let prefs = "/etc/apt/preferences.d/kubernetes";
    let pin = |version: &str, priority: i32| {
        let text =
            format!("Package: kubeadm kubelet kubectl\nPin: version {version}.*\nPin-Priority: {priority}\n");
        c.node_host("worker-2").unwrap().write_file(prefs, text.as_bytes(), 0o644).unwrap();
    };
    let minor_of = |r: &str| r.rsplit_once('.').unwrap().0.to_string();
    pin(&minor_of(&to), -1);
    let (code, p, err) = plan(&c, &to, &["-f", c.plan_file().to_str().unwrap()]);
    assert_eq!(code, Some(1), "{p}\n{err}");
    let pins = findings_of(&p, "apt-pin");
    eprintln!("pin -1 on {}.*: {pins:?}", minor_of(&to));
    assert_eq!(pins.len(), 3, "one per package: {p}");
    assert!(
        pins.iter().all(|(n, m)| n == "worker-2" && m.contains("forbid") && m.contains(prefs)),
        "{pins:?}"
    );
    pin(&minor_of(&from), 1001);
    let (code, p, err) = plan(&c, &to, &["-f", c.plan_file().to_str().unwrap()]);
    assert_eq!(
        code,
        Some(0),
        "a 1001 pin on the old minor, offered by no repository, is no risk: {p}\n{err}"
    );

    // (a) worker-1's mirror lags: its v1.37 channel still serves 1.36 (a local mirror that
    // has not synced the new minor). The plan blocks on it (the CI test checks that); with
    // --offline (no probe, no check) the recipe's own check must still stop on worker-1
    // before anything on it changes.
    let line = stale_mirror(&c, "worker-1", &from, &to);
    let list = refit_testbed::kubeadm::repo::SOURCES_PATH;
    let nodes: Api<Node> = Api::all(client.clone());

    let mut offline = upgrade(&c, &to, &tmp.path().join("refit.db"));
    offline.arg("--offline");
    let ran = run(offline, "bad cases");
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);

    // (a) The run stops on worker-1 with apt's own message, naming the node.
    let failed: Vec<&serde_json::Value> = ran.of("step-failed", "worker-1").collect();
    assert_eq!(failed.len(), 1, "{}", ran.stdout);
    let error = failed[0]["error"].as_str().unwrap_or_default();
    eprintln!("worker-1 failed with: {error}");
    assert!(error.contains(&format!("Version '{to}-*' for 'kubeadm' was not found")), "{error}");
    assert!(error.contains("node worker-1"), "{error}");
    // Nothing else changed: worker-2 untouched, worker-1's packages at the start release.
    assert!(ran.upgrades("worker-2").is_empty() && ran.of("step-started", "worker-2").next().is_none());
    let w2 = nodes.get("worker-2").await.unwrap();
    assert_eq!(kubelet(&w2), format!("v{from}"));
    assert!(!w2.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false));
    let w1 = nodes.get("worker-1").await.unwrap();
    assert_eq!(kubelet(&w1), format!("v{from}"));
    let pkgs = packages(&c, "worker-1");
    assert!(pkgs.lines().all(|l| l.ends_with(&format!("{from}-1.1"))), "{pkgs}");
    let w1_cordoned = w1.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let holds = held(&c, "worker-1");
    eprintln!("worker-1 after the failure: cordoned={w1_cordoned}, held={holds:?}");
    // The recipe stopped before kubeadm touched worker-1 (apt's simulated install of the three
    // packages fails first, holds in place), so its cordon was given back.
    assert!(!w1_cordoned, "worker-1 was left cordoned although nothing on it changed");
    assert!(
        ran.of("left-cordoned", "worker-1").next().is_none(),
        "a left-cordoned event for worker-1: {}",
        ran.stdout
    );
    assert_eq!(holds, ["kubeadm", "kubectl", "kubelet"], "holds on worker-1");

    // (b) What kubeadm does with the hand edit: recorded, not assumed.
    let after = c.exec("cp-1", "cat", &[manifest]).unwrap();
    let backups = c
        .exec(
            "cp-1",
            "sh",
            &["-c", "grep -l -- '--v=3' /etc/kubernetes/tmp/*/kube-scheduler.yaml 2>/dev/null; true"],
        )
        .unwrap();
    eprintln!(
        "cp-1 scheduler manifest after kubeadm upgrade apply: edit {}; backups holding it: {backups:?}",
        if after.contains("--v=3") { "kept" } else { "overwritten" }
    );
    assert!(ran.upgrades("cp-1") == [to.clone()], "{:?}", ran.upgrades("cp-1"));
    assert!(after.contains(&format!("kube-scheduler:v{to}")), "{after}");
    assert!(!after.contains("--v=3"), "kubeadm kept the hand edit: {after}");
    assert!(!backups.trim().is_empty(), "kubeadm kept no backup of the hand-edited manifest");

    // worker-1's repository fixed, the same command continues the run: worker-2 goes through
    // the recipe with its 1001 pin on the old minor and ends at the target, and apt has nothing
    // to take it back to.
    c.node_host("worker-1").unwrap().write_file(list, line.as_bytes(), 0o644).unwrap();
    let mut again = upgrade(&c, &to, &tmp.path().join("refit.db"));
    again.arg("--offline");
    let rerun = run(again, "bad cases, rerun");
    assert!(rerun.ok(), "{}\n{}", rerun.stdout, rerun.stderr);
    assert_all_at(&c, &client, &from, &to).await;
    let policy = c.exec("worker-2", "apt-cache", &["policy", "kubeadm"]).unwrap();
    eprintln!("worker-2 after the run with a 1001 pin on {}.*:\n{policy}", minor_of(&from));
    assert!(policy.contains(&format!("Candidate: {to}-1.1")), "{policy}");
    let simulated =
        c.exec("worker-2", "apt-get", &["-s", "--allow-change-held-packages", "dist-upgrade"]).unwrap();
    assert!(simulated.contains("0 upgraded, 0 newly installed, 0 to remove"), "{simulated}");
}
