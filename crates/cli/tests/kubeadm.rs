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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use refit_core::Version;
use refit_testbed::Lifetime;
use refit_testbed::kubeadm::cluster::{KubeadmCluster, KubeadmConfig};
use refit_testbed::workloads::{Budget, apply, deployment, pdb, wait_pods_ready};
use support::{refit, release};

const NS: &str = "shop";

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

async fn cluster(
    tmp: &tempfile::TempDir,
    from: &str,
    to: &str,
    control_planes: usize,
    workers: usize,
) -> KubeadmCluster {
    let agent = env!("CARGO_BIN_EXE_refit").to_string();
    KubeadmCluster::start(KubeadmConfig {
        // REFIT_TEST_KEEP=DIR keeps the sandbox's logs and state there for a post-mortem.
        dir: std::env::var_os("REFIT_TEST_KEEP").map(PathBuf::from).unwrap_or_else(|| tmp.path().join("sb")),
        version: v(from),
        releases: vec![v(from), v(to)],
        control_planes,
        workers,
        lifetime: Lifetime::Attached,
        agent_command: vec![agent, "sandbox".into(), "node-agent".into()],
        lb_command: None,
        repo_command: None,
    })
    .await
    .unwrap_or_else(|e| panic!("kubeadm sandbox: {e}"))
}

/// What an independent watcher saw during the run.
#[derive(Debug, Default)]
struct Seen {
    max_unschedulable_workers: usize,
    min_ready: BTreeMap<String, usize>,
    skew_breaches: Vec<String>,
}

fn kubelet(n: &Node) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .unwrap_or_default()
}

fn is_cp(n: &Node) -> bool {
    n.metadata.labels.as_ref().is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"))
}

fn minor(v: &str) -> u32 {
    v.trim_start_matches('v').split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

fn watch(client: kube::Client) -> (Arc<Mutex<Seen>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s1 = seen.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    let t1 = tokio::spawn(async move {
        let mut all: BTreeMap<String, Node> = BTreeMap::new();
        let mut stream = watcher(nodes, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                    all.insert(n.metadata.name.clone().unwrap_or_default(), n);
                }
                _ => continue,
            }
            let workers: Vec<&Node> = all.values().filter(|n| !is_cp(n)).collect();
            let cordoned = workers
                .iter()
                .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false))
                .count();
            let cp_min = all.values().filter(|n| is_cp(n)).map(|n| minor(&kubelet(n))).min();
            let mut s = s1.lock().unwrap();
            s.max_unschedulable_workers = s.max_unschedulable_workers.max(cordoned);
            if let Some(cp_min) = cp_min {
                for w in &workers {
                    if minor(&kubelet(w)) > cp_min {
                        s.skew_breaches.push(format!(
                            "{} at {}",
                            w.metadata.name.clone().unwrap_or_default(),
                            kubelet(w)
                        ));
                    }
                }
            }
        }
    });
    let s2 = seen.clone();
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let t2 = tokio::spawn(async move {
        let mut all: BTreeMap<String, Pod> = BTreeMap::new();
        let mut synced = false;
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    all.insert(p.metadata.uid.clone().unwrap_or_default(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    all.remove(&p.metadata.uid.clone().unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => synced = true,
                _ => continue,
            }
            if !synced {
                continue;
            }
            let mut ready: BTreeMap<String, usize> = BTreeMap::new();
            for p in all.values() {
                let app = p.metadata.labels.as_ref().and_then(|l| l.get("app")).cloned().unwrap_or_default();
                let e = ready.entry(app).or_default();
                if refit_testbed::workloads::pod_is_ready(p) {
                    *e += 1;
                }
            }
            let mut s = s2.lock().unwrap();
            for (app, n) in ready {
                let m = s.min_ready.entry(app).or_insert(n);
                *m = (*m).min(n);
            }
        }
    });
    (seen, vec![t1, t2])
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

/// Command lines of the processes running inside `node` (its own /proc view is the host's, so
/// filter by the node's network namespace through the process's own `ip netns identify`).
fn node_binaries(c: &KubeadmCluster, node: &str) -> Vec<String> {
    let out = c
        .exec(node, "sh", &["-c", "for p in /proc/[0-9]*; do [ \"$(readlink $p/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ] && readlink $p/exe; done 2>/dev/null; true"])
        .unwrap();
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_control_plane_and_two_workers_go_from_136_to_137_through_kubeadm_and_apt() {
    let from = release(36);
    let to = release(37);
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(&tmp, &from, &to, 1, 2).await;
    let client = c.client().await.unwrap();

    // Before: packages held at the start release, every node's kubelet at it.
    for n in c.nodes() {
        let held = c.exec(&n.name, "apt-mark", &["showhold"]).unwrap();
        assert_eq!(
            held.split_whitespace().collect::<Vec<_>>(),
            ["kubeadm", "kubectl", "kubelet"],
            "{}",
            n.name
        );
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

    let (seen, tasks) = watch(client.clone());
    let store = tmp.path().join("refit.db");
    let out = refit()
        .args(["upgrade", "--to", &to, "--yes", "--max-unavailable", "1", "--kubeconfig"])
        .arg(c.kubeconfig())
        .arg("-f")
        .arg(c.plan_file())
        .arg("--store")
        .arg(&store)
        .timeout(std::time::Duration::from_secs(1500))
        .output()
        .unwrap();
    for t in &tasks {
        t.abort();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "refit upgrade failed:\n{stdout}\n{stderr}");

    // Every static pod manifest names the target images, and the processes are its binaries.
    let images = manifests_images(&c, "cp-1");
    for (component, image) in &images {
        if component != "etcd" {
            assert!(image.ends_with(&format!(":v{to}")), "{component}: {image}");
        }
    }
    let binaries = node_binaries(&c, "cp-1");
    for component in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        assert!(
            binaries.iter().any(|b| b.ends_with(&format!("k8s-v{to}/{component}"))),
            "{component} is not the v{to} binary on cp-1: {binaries:?}"
        );
        assert!(!binaries.iter().any(|b| b.ends_with(&format!("k8s-v{from}/{component}"))), "{binaries:?}");
    }
    // Packages at the target and held again, on every node; every kubelet reports it.
    let pkg = format!("{to}-1.1");
    for n in c.nodes() {
        let listed = c
            .exec(
                &n.name,
                "dpkg-query",
                &["-W", "-f", "${Package} ${Version}\\n", "kubeadm", "kubelet", "kubectl"],
            )
            .unwrap();
        for line in listed.lines() {
            assert!(line.ends_with(&pkg), "{}: {line}", n.name);
        }
        let held = c.exec(&n.name, "apt-mark", &["showhold"]).unwrap();
        assert_eq!(
            held.split_whitespace().collect::<Vec<_>>(),
            ["kubeadm", "kubectl", "kubelet"],
            "{}",
            n.name
        );
    }
    for n in nodes.list(&ListParams::default()).await.unwrap() {
        assert_eq!(kubelet(&n), format!("v{to}"), "{}", n.metadata.name.unwrap_or_default());
        assert!(!n.spec.and_then(|s| s.unschedulable).unwrap_or(false), "left cordoned");
    }
    // kubeadm's own add-on upgrade moved kube-proxy (and CoreDNS) to its pairing.
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let proxy = ds.get("kube-proxy").await.unwrap();
    let image = proxy.spec.template.spec.unwrap().containers[0].image.clone().unwrap_or_default();
    assert!(image.ends_with(&format!(":v{to}")), "kube-proxy image {image}");

    let seen = seen.lock().unwrap();
    assert!(seen.skew_breaches.is_empty(), "{:?}", seen.skew_breaches);
    assert!(seen.max_unschedulable_workers <= 1, "{seen:?}");
    assert!(seen.min_ready.get("web").copied().unwrap_or(0) >= 3, "PDB violated: {seen:?}");
}
