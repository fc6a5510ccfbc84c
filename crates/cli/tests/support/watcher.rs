//! The independent watcher of the upgrade tests: its own watches on nodes and on one
//! namespace's pods, nothing shared with refit. It records what the safety invariants forbid:
//! a PDB-covered app below its budget, more workers unschedulable at once than
//! max-unavailable, a worker kubelet newer than a control-plane node's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::watcher;
use refit_testbed::workloads::pod_is_ready;

pub fn kubelet(n: &Node) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .unwrap_or_default()
}

pub fn is_cp(n: &Node) -> bool {
    n.metadata.labels.as_ref().is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"))
}

pub fn unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// Whether the node's Ready condition is True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn minor(v: &str) -> u32 {
    v.trim_start_matches('v').split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// What the independent watcher saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub max_unschedulable_workers: usize,
    /// app → the fewest healthy (Ready, not terminating) pods at any moment after the start.
    pub min_healthy: BTreeMap<String, usize>,
    /// Moments a worker ran a newer kubelet minor than some control-plane node.
    pub skew_breaches: Vec<String>,
    /// Once the first list is in: the fewest schedulable workers (Ready, not cordoned) and the
    /// most worker nodes at any moment (replacements beside the nodes they replace).
    pub min_schedulable_workers: Option<usize>,
    pub max_worker_nodes: usize,
}

impl Seen {
    /// The safety invariants of every upgrade: never more than `max_unavailable` workers
    /// unschedulable at once, no app below its PDB's floor (`super::APPS`' least healthy), no
    /// worker kubelet newer than a control-plane node's.
    pub fn assert_safe(&self, max_unavailable: usize) {
        assert!(
            self.max_unschedulable_workers <= max_unavailable,
            "{} workers unschedulable at once",
            self.max_unschedulable_workers
        );
        for (app, _, _, least) in super::APPS {
            let min = self.min_healthy.get(*app).copied().unwrap_or(0);
            assert!(
                min >= *least,
                "{app}: {min} healthy pods at one moment, the PDB allows no fewer than {least}"
            );
        }
        assert!(self.skew_breaches.is_empty(), "{:?}", self.skew_breaches);
    }
}

/// Watches nodes and one namespace's pods until stopped.
pub struct Watcher {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watcher {
    pub async fn start(client: kube::Client, namespace: &str) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let nodes_task = {
            let seen = seen.clone();
            let api: Api<Node> = Api::all(client.clone());
            tokio::spawn(async move {
                let mut nodes: HashMap<String, Node> = HashMap::new();
                let mut synced = false;
                let mut stream = watcher(api, watcher::Config::default()).boxed();
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                            nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
                        }
                        Ok(watcher::Event::Delete(n)) => {
                            nodes.remove(&n.metadata.name.clone().unwrap_or_default());
                        }
                        Ok(watcher::Event::InitDone) => synced = true,
                        _ => continue,
                    }
                    if synced {
                        let workers = nodes.values().filter(|n| !is_cp(n));
                        let schedulable =
                            workers.clone().filter(|n| !unschedulable(n) && node_ready(n)).count();
                        let mut s = seen.lock().unwrap();
                        s.min_schedulable_workers =
                            Some(s.min_schedulable_workers.map_or(schedulable, |m| m.min(schedulable)));
                        s.max_worker_nodes = s.max_worker_nodes.max(workers.count());
                    }
                    let workers: Vec<&Node> = nodes.values().filter(|n| !is_cp(n)).collect();
                    let cordoned = workers.iter().filter(|n| unschedulable(n)).count();
                    let cp_min = nodes.values().filter(|n| is_cp(n)).map(|n| minor(&kubelet(n))).min();
                    let mut s = seen.lock().unwrap();
                    s.max_unschedulable_workers = s.max_unschedulable_workers.max(cordoned);
                    if let Some(cp_min) = cp_min {
                        for w in &workers {
                            if minor(&kubelet(w)) > cp_min {
                                s.skew_breaches.push(format!(
                                    "{} at {} above control plane 1.{cp_min}",
                                    w.metadata.name.clone().unwrap_or_default(),
                                    kubelet(w)
                                ));
                            }
                        }
                    }
                }
            })
        };
        let pods_task = {
            let seen = seen.clone();
            let api: Api<Pod> = Api::namespaced(client, namespace);
            tokio::spawn(async move {
                let mut pods: HashMap<String, Pod> = HashMap::new();
                let mut synced = false;
                let mut stream = watcher(api, watcher::Config::default()).boxed();
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                            pods.insert(p.metadata.uid.clone().unwrap_or_default(), p);
                        }
                        Ok(watcher::Event::Delete(p)) => {
                            pods.remove(&p.metadata.uid.clone().unwrap_or_default());
                        }
                        Ok(watcher::Event::InitDone) => synced = true,
                        _ => continue,
                    }
                    if !synced {
                        continue;
                    }
                    let mut healthy: BTreeMap<String, usize> = BTreeMap::new();
                    for p in pods.values() {
                        let app = p
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("app"))
                            .cloned()
                            .unwrap_or_default();
                        let e = healthy.entry(app).or_default();
                        if pod_is_ready(p) {
                            *e += 1;
                        }
                    }
                    let mut s = seen.lock().unwrap();
                    for (app, n) in healthy {
                        let m = s.min_healthy.entry(app).or_insert(n);
                        *m = (*m).min(n);
                    }
                }
            })
        };
        Watcher { seen, tasks: vec![nodes_task, pods_task] }
    }

    /// Whether the node watch has its first full list (the minimum it records starts then).
    pub fn synced(&self) -> bool {
        self.seen.lock().unwrap().min_schedulable_workers.is_some()
    }

    pub fn stop(self) -> Seen {
        for t in &self.tasks {
            t.abort();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}
