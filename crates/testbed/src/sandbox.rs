//! The sandbox as an operator uses it (`refit sandbox`, `refit demo`): starting a detached
//! testbed in a directory (demo workloads included), what a running one looks like (processes,
//! control-plane members, nodes, workloads and budgets), and the same for a kubeadm sandbox.
//! The CLI parses the arguments, shows progress and renders these values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use refit_core::Version;
use serde::Serialize;

use crate::kubeadm::cluster::KubeadmCluster;
use crate::{Error, Lifetime, Testbed, TestbedConfig};

/// The namespace `--workloads demo` fills.
pub const DEMO_NAMESPACE: &str = "demo";

/// Whether a sandbox is running in `dir` (its etcd is alive).
pub fn running(dir: &Path) -> Option<Testbed> {
    let tb = Testbed::attach(dir).ok()?;
    tb.recorded_pids().iter().any(|(name, _, alive)| name == "etcd" && *alive).then_some(tb)
}

/// What a sandbox starts with.
#[derive(Debug, Clone)]
pub struct SandboxStart {
    /// Its directory (state, logs, kubeconfig).
    pub dir: PathBuf,
    /// The control plane's and the workers' version.
    pub version: Version,
    /// Control-plane members (1–3).
    pub control_planes: usize,
    /// kwok workers.
    pub workers: usize,
    /// The command serving the load balancer in front of several members (`refit sandbox
    /// serve-lb`), so that it outlives the process that started the sandbox.
    pub lb_command: Vec<String>,
    /// Create the demo workloads and wait until their pods are ready.
    pub demo: bool,
}

/// Starts a detached sandbox (the binaries must be built). A dead sandbox's leftovers in the
/// directory (after a reboot) are removed first; a running one is refused. `phase` is told
/// what is going on, for a progress display.
pub async fn start(s: SandboxStart, phase: &dyn Fn(&str)) -> Result<Testbed, Error> {
    if s.dir.join("state.json").exists() {
        if running(&s.dir).is_some() {
            return Err(Error::Config(format!(
                "a sandbox is already running in {}; stop it with `refit sandbox down` or pass another --dir",
                s.dir.display()
            )));
        }
        std::fs::remove_dir_all(&s.dir).map_err(|e| Error::io(&s.dir, e))?;
    }
    let config = TestbedConfig {
        version: s.version.clone(),
        control_planes: s.control_planes,
        workers: s.workers,
        worker_version: None,
        dir: Some(s.dir.clone()),
        lifetime: Lifetime::Detached,
        lb_command: Some(s.lb_command.clone()),
        addons: true,
        apiserver_args: Vec::new(),
    };
    phase(&format!(
        "starting etcd, {} control-plane member(s) at v{} and {} kwok workers",
        s.control_planes, s.version, s.workers
    ));
    let tb = match Testbed::start(config).await {
        Ok(tb) => tb,
        Err(e) => {
            // Leave nothing half-started behind.
            if let Ok(tb) = Testbed::attach(&s.dir) {
                tb.stop();
            }
            return Err(e);
        }
    };
    if s.demo {
        phase("creating demo workloads");
        install_demo(&tb).await?;
    }
    Ok(tb)
}

/// The demo workloads (web 6, api 4, singleton 1, cache 2, db 3, a bare pod, an agent per
/// worker), waited for until every pod is ready.
pub async fn install_demo(tb: &Testbed) -> Result<(), Error> {
    tb.create_namespace(DEMO_NAMESPACE).await?;
    let client = tb.client().await?;
    crate::workloads::install_demo(&client, DEMO_NAMESPACE).await?;
    let workers = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("!node-role.kubernetes.io/control-plane"))
        .await
        .map_err(|e| Error::kube("listing the workers", e))?
        .items
        .len();
    crate::workloads::wait_pods_ready(&client, DEMO_NAMESPACE, "", 17 + workers, Duration::from_secs(180))
        .await?;
    Ok(())
}

/// What `refit sandbox status` and `refit demo` show.
#[derive(Debug, Serialize)]
pub struct SandboxStatus {
    /// Its directory.
    pub dir: String,
    /// Its kubeconfig.
    pub kubeconfig: String,
    /// Every process it started.
    pub processes: Vec<ProcessRow>,
    /// Its control-plane members.
    pub control_plane: Vec<MemberRow>,
    /// Its nodes.
    pub nodes: Vec<NodeRow>,
    /// Deployments, StatefulSets, DaemonSets and budgets.
    pub workloads: Vec<WorkloadRow>,
}

/// A workload or a budget.
#[derive(Debug, Serialize)]
pub struct WorkloadRow {
    /// Namespace.
    pub namespace: String,
    /// Deployment, StatefulSet, DaemonSet or PodDisruptionBudget.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Ready replicas (a budget: currently healthy).
    pub ready: i32,
    /// Desired replicas (a budget: desired healthy).
    pub desired: i32,
    /// For PodDisruptionBudgets: disruptions allowed now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disruptions_allowed: Option<i32>,
}

/// A process the sandbox started.
#[derive(Debug, Serialize)]
pub struct ProcessRow {
    /// Its name (etcd, kube-apiserver-0, ...).
    pub name: String,
    /// Its pid.
    pub pid: i32,
    /// Whether it runs.
    pub running: bool,
}

/// A control-plane member.
#[derive(Debug, Serialize)]
pub struct MemberRow {
    /// Its node.
    pub node: String,
    /// Its apiserver's address.
    pub apiserver: String,
    /// Its version (or "unreachable").
    pub version: String,
}

/// A node.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    /// Name.
    pub name: String,
    /// control-plane or worker.
    pub role: String,
    /// Ready.
    pub ready: bool,
    /// Not cordoned.
    pub schedulable: bool,
    /// Its kubelet's version.
    pub kubelet: String,
    /// Its kube-proxy's version.
    pub kube_proxy: String,
}

/// Reads the sandbox's processes, members, nodes and workloads.
pub async fn status(tb: &Testbed) -> Result<SandboxStatus, Error> {
    let processes = tb
        .recorded_pids()
        .into_iter()
        .map(|(name, pid, running)| ProcessRow { name, pid, running })
        .collect();
    let mut control_plane = Vec::new();
    for m in tb.members() {
        let version = tb.apiserver_version(m.index).await.unwrap_or_else(|_| "unreachable".to_string());
        control_plane.push(MemberRow { node: m.node.clone(), apiserver: m.apiserver_url(), version });
    }
    let client = tb.client().await?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing nodes", e))?;
    let nodes = nodes
        .items
        .iter()
        .map(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            let info = n.status.as_ref().and_then(|s| s.node_info.clone()).unwrap_or_default();
            NodeRow {
                name: n.metadata.name.clone().unwrap_or_default(),
                role: if labels.contains_key("node-role.kubernetes.io/control-plane") {
                    "control-plane"
                } else {
                    "worker"
                }
                .into(),
                ready: crate::node_is_ready(n),
                schedulable: !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
                kubelet: info.kubelet_version,
                kube_proxy: info.kube_proxy_version,
            }
        })
        .collect();
    let workloads = workloads(&client).await.map_err(|e| Error::kube("listing workloads", e))?;
    Ok(SandboxStatus {
        dir: tb.dir().display().to_string(),
        kubeconfig: tb.kubeconfig().display().to_string(),
        processes,
        control_plane,
        nodes,
        workloads,
    })
}

async fn workloads(client: &kube::Client) -> Result<Vec<WorkloadRow>, kube::Error> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let lp = ListParams::default();
    let ns_name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
    };
    let row = |(namespace, name): (String, String), kind, ready, desired, disruptions_allowed| WorkloadRow {
        namespace,
        kind,
        name,
        ready,
        desired,
        disruptions_allowed,
    };
    let mut rows = Vec::new();
    for d in Api::<Deployment>::all(client.clone()).list(&lp).await?.items {
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        rows.push(row(ns_name(&d.metadata), "Deployment", ready, d.spec.replicas.unwrap_or(1), None));
    }
    for s in Api::<StatefulSet>::all(client.clone()).list(&lp).await?.items {
        let ready = s.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        rows.push(row(ns_name(&s.metadata), "StatefulSet", ready, s.spec.replicas.unwrap_or(1), None));
    }
    for d in Api::<DaemonSet>::all(client.clone()).list(&lp).await?.items {
        let st = d.status.unwrap_or_default();
        rows.push(row(ns_name(&d.metadata), "DaemonSet", st.number_ready, st.desired_number_scheduled, None));
    }
    for p in Api::<PodDisruptionBudget>::all(client.clone()).list(&lp).await?.items {
        let st = p.status.unwrap_or_default();
        rows.push(row(
            ns_name(&p.metadata),
            "PodDisruptionBudget",
            st.current_healthy.unwrap_or(0),
            st.desired_healthy.unwrap_or(0),
            st.disruptions_allowed,
        ));
    }
    rows.sort_by(|a, b| (&a.namespace, a.kind, &a.name).cmp(&(&b.namespace, b.kind, &b.name)));
    Ok(rows)
}

/// A kubeadm sandbox's node.
#[derive(Debug, Serialize)]
pub struct KubeadmNodeRow {
    /// Name.
    pub name: String,
    /// Its address in the sandbox's network.
    pub address: String,
    /// control-plane or worker.
    pub role: &'static str,
    /// Its kubelet's version, as the node reports it.
    pub kubelet: String,
    /// Ready.
    pub ready: bool,
    /// Cordoned.
    pub unschedulable: bool,
}

/// What `refit sandbox status` shows of a kubeadm sandbox.
#[derive(Debug, Serialize)]
pub struct KubeadmStatus {
    /// Its directory.
    pub dir: String,
    /// Its kubeconfig.
    pub kubeconfig: String,
    /// The plan file that upgrades it over ssh.
    pub plan_file: String,
    /// Its processes (sshd, agents, ...).
    pub processes: Vec<ProcessRow>,
    /// Its nodes.
    pub nodes: Vec<KubeadmNodeRow>,
}

impl KubeadmStatus {
    /// Every process runs and every node is Ready.
    pub fn healthy(&self) -> bool {
        self.processes.iter().all(|p| p.running) && self.nodes.iter().all(|n| n.ready)
    }
}

/// Reads a kubeadm sandbox's processes and nodes.
pub async fn kubeadm_status(dir: &Path) -> Result<KubeadmStatus, Error> {
    let cluster = KubeadmCluster::attach(dir)?;
    let state = cluster.state();
    let processes: Vec<ProcessRow> = state
        .pids
        .iter()
        .map(|(name, pid)| ProcessRow {
            name: name.clone(),
            pid: *pid,
            running: crate::process::pid_alive(*pid),
        })
        .collect();
    let client = cluster.client().await?;
    let listed = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing the nodes", e))?;
    let nodes: Vec<KubeadmNodeRow> = state
        .nodes
        .iter()
        .map(|n| {
            let node = listed.items.iter().find(|k| k.metadata.name.as_deref() == Some(n.name.as_str()));
            KubeadmNodeRow {
                name: n.name.clone(),
                address: n.address.to_string(),
                role: if n.control_plane { "control-plane" } else { "worker" },
                kubelet: node
                    .and_then(|k| k.status.as_ref())
                    .and_then(|s| s.node_info.as_ref())
                    .map(|i| i.kubelet_version.clone())
                    .unwrap_or_default(),
                ready: node.is_some_and(crate::node_is_ready),
                unschedulable: node
                    .and_then(|k| k.spec.as_ref())
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
            }
        })
        .collect();
    Ok(KubeadmStatus {
        dir: dir.display().to_string(),
        kubeconfig: state.kubeconfig.display().to_string(),
        plan_file: state.plan_file.display().to_string(),
        processes,
        nodes,
    })
}
