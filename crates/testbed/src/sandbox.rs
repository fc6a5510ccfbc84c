//! The sandbox as an operator uses it (`refit sandbox`, `refit demo`): its size limits
//! ([`check_size`]), bringing one up with what it needs built first ([`up`], [`kubeadm_up`]),
//! starting a detached testbed in a directory (demo workloads included), one node's upgrade as
//! a node action would do it ([`upgrade_node`]), what a running one looks like (processes,
//! control-plane members, nodes, workloads and budgets), and the same for a kubeadm sandbox.
//! The CLI parses the arguments, shows [`Progress`] and renders these values and refusals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use refit_core::Version;
use refit_core::fleet::{NODE_IMAGE_ANNOTATION, NodeImage};
use serde::Serialize;

use crate::kubeadm::cluster::{KubeadmCluster, KubeadmConfig};
use crate::{BuildEvent, Cache, Check, Component, Error, Lifetime, Testbed, TestbedConfig, TestbedVersions};

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
pub async fn start(s: SandboxStart, phase: &mut dyn FnMut(&str)) -> Result<Testbed, Error> {
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

/// The control-plane members a sandbox runs (either kind): one, or a few behind its load
/// balancer, as the control-plane tests need; more would only cost the machine.
pub const CONTROL_PLANES: std::ops::RangeInclusive<usize> = 1..=3;

/// Which sandbox `refit sandbox up` brings up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxKind {
    /// A testbed: real control plane, kwok workers (objects, not machines).
    Testbed,
    /// Nodes made by the real kubeadm, each with its own sshd and node agent.
    Kubeadm,
}

impl SandboxKind {
    /// The most workers one machine holds: kwok simulates thousands, while every kubeadm node
    /// runs an sshd and an agent of its own.
    pub fn max_workers(self) -> usize {
        match self {
            SandboxKind::Testbed => 2000,
            SandboxKind::Kubeadm => 50,
        }
    }
}

/// The size rule of both kinds, checked before anything is built or started: 1–3
/// control-plane members ([`CONTROL_PLANES`]), at most [`SandboxKind::max_workers`] workers.
pub fn check_size(kind: SandboxKind, control_planes: usize, workers: usize) -> Result<(), Refusal> {
    if !CONTROL_PLANES.contains(&control_planes) {
        return Err(Refusal::ControlPlanes(control_planes));
    }
    let at_most = kind.max_workers();
    if workers > at_most {
        return Err(Refusal::Workers { kind, asked: workers, at_most });
    }
    Ok(())
}

/// Bad input to a sandbox command: nothing was built, started or changed. A front end shows it
/// as such (the CLI: one usage line naming its flags, exit 2), so the values stay typed here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A control-plane member count outside [`CONTROL_PLANES`].
    #[error("a sandbox runs 1, 2 or 3 control-plane members, not {0}")]
    ControlPlanes(usize),
    /// More workers than this kind of sandbox holds.
    #[error("{asked} workers are more than this sandbox holds here (at most {at_most})")]
    Workers {
        /// The kind asked for.
        kind: SandboxKind,
        /// The workers asked for.
        asked: usize,
        /// Its [`SandboxKind::max_workers`].
        at_most: usize,
    },
    /// A sandbox (of either kind) already has the directory.
    #[error("a sandbox already exists in {}", .0.display())]
    Exists(PathBuf),
    /// No sandbox was ever started in the directory.
    #[error("no sandbox in {}", .0.display())]
    Missing(PathBuf),
    /// The directory holds a sandbox whose etcd is not running (after a reboot).
    #[error("the sandbox in {} is not running", .0.display())]
    NotRunning(PathBuf),
    /// The node is neither a node of the cluster nor a control-plane member.
    #[error("no node named {0} in the sandbox")]
    NoSuchNode(String),
}

/// Why a sandbox operation did not happen or did not finish. Each step that adds what it was
/// doing does so as its own variant, the testbed's error as its source.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Bad input: nothing was built, started or changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The testbed failed (its cache, a build, its state, an operation on it).
    #[error(transparent)]
    Testbed(#[from] Error),
    /// Starting the testbed's processes failed (nothing half-started is left behind).
    #[error("starting the sandbox")]
    Start(#[source] Error),
    /// kubeadm init/join of the sandbox's nodes failed.
    #[error("starting the kubeadm sandbox")]
    StartKubeadm(#[source] Error),
    /// The node could not be read (and it is no control-plane member, whose upgrade goes on
    /// without the API server).
    #[error("reading the node")]
    ReadNode(#[source] Box<kube::Error>),
    /// The node's upgrade is done, its image annotation could not be moved.
    #[error("setting the node image of {node}")]
    NodeImage {
        /// The node.
        node: String,
        /// The API's answer.
        #[source]
        source: Box<kube::Error>,
    },
    /// The kubeadm sandbox is up, its demo namespace could not be created.
    #[error("creating the demo namespace")]
    DemoNamespace(#[source] Box<kube::Error>),
}

/// What a long sandbox operation is doing, for a progress display (the operation goes on
/// whatever the display does with it).
#[derive(Debug)]
pub enum Progress<'a> {
    /// The cache is checked and what is missing built; [`Progress::Build`] events follow, then
    /// [`Progress::Idle`].
    Building,
    /// One step of that build, as [`Cache::ensure`] reports it.
    Build(BuildEvent),
    /// What is going on now (a spinner's text); [`Progress::Idle`] when it is over.
    Phase(&'a str),
    /// The build or the phase is over (whether it worked or not): a display clears it.
    Idle,
    /// The API server did not answer reading `node`, a control-plane member: its upgrade goes
    /// on from the state file (a previous upgrade may have stopped the old apiserver and died
    /// before starting the new one; only this upgrade brings an API server back).
    ApiServerDown {
        /// The node upgraded.
        node: &'a str,
        /// What reading it said.
        error: &'a kube::Error,
    },
}

/// Builds what is missing of `components` (quick check), reporting through `progress`.
fn build(components: &[Component], progress: &mut dyn FnMut(Progress<'_>)) -> Result<(), Error> {
    let cache = Cache::from_env()?;
    progress(Progress::Building);
    let built = cache.ensure(components, Check::Quick, &mut |e| progress(Progress::Build(e)));
    progress(Progress::Idle);
    built
}

/// Brings a testbed sandbox up: its size checked ([`check_size`]), etcd, kwok and its release
/// built when missing, then [`start`]ed.
pub async fn up(
    s: SandboxStart,
    versions: &TestbedVersions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Testbed, SandboxError> {
    check_size(SandboxKind::Testbed, s.control_planes, s.workers)?;
    build(
        &[
            Component::Etcd(versions.etcd.clone()),
            Component::Kwok(versions.kwok.clone()),
            Component::Kubernetes(s.version.clone()),
        ],
        progress,
    )?;
    let started = start(s, &mut |phase| progress(Progress::Phase(phase))).await;
    progress(Progress::Idle);
    started.map_err(SandboxError::Start)
}

/// What a kubeadm sandbox starts with.
#[derive(Debug, Clone)]
pub struct KubeadmSandbox {
    /// Its directory (state, kubeconfig, plan file, node roots).
    pub dir: PathBuf,
    /// The release it starts at.
    pub version: Version,
    /// The testbed set: its etcd and kwok, and every release the package repository offers
    /// (all of them are built, so that the sandbox can be upgraded to each).
    pub versions: TestbedVersions,
    /// Control-plane nodes ([`CONTROL_PLANES`]).
    pub control_planes: usize,
    /// Worker nodes (at most [`SandboxKind::Kubeadm`]'s [`SandboxKind::max_workers`]).
    pub workers: usize,
    /// Create the demo workloads.
    pub demo: bool,
    /// How the node agents, the load balancer and the package repository run as processes
    /// that outlive the command (`[refit, sandbox, node-agent]`, ...).
    pub agent_command: Vec<String>,
    /// See `agent_command`.
    pub lb_command: Vec<String>,
    /// See `agent_command`.
    pub repo_command: Vec<String>,
}

/// Brings a kubeadm sandbox up: size checked, an existing sandbox of either kind refused, the
/// host's prerequisites checked, every release of the set built (binaries, node binaries,
/// packages), kubeadm init/join, then the demo workloads if asked.
pub async fn kubeadm_up(
    s: KubeadmSandbox,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<KubeadmCluster, SandboxError> {
    check_size(SandboxKind::Kubeadm, s.control_planes, s.workers)?;
    if KubeadmCluster::exists(&s.dir) || s.dir.join("state.json").exists() {
        return Err(Refusal::Exists(s.dir).into());
    }
    crate::kubeadm::host::check_prerequisites()?;
    let mut needed = vec![Component::Etcd(s.versions.etcd.clone()), Component::Kwok(s.versions.kwok.clone())];
    for r in &s.versions.kubernetes {
        needed.extend([
            Component::Kubernetes(r.clone()),
            Component::KubernetesNode(r.clone()),
            Component::KubernetesDebs(r.clone()),
        ]);
    }
    build(&needed, progress)?;
    progress(Progress::Phase(&format!(
        "kubeadm init/join of {} control-plane and {} worker node(s) at v{}",
        s.control_planes, s.workers, s.version
    )));
    let cluster = KubeadmCluster::start(KubeadmConfig {
        dir: s.dir,
        version: s.version,
        releases: s.versions.kubernetes,
        control_planes: s.control_planes,
        workers: s.workers,
        lifetime: Lifetime::Detached,
        agent_command: s.agent_command,
        lb_command: Some(s.lb_command),
        repo_command: Some(s.repo_command),
    })
    .await;
    progress(Progress::Idle);
    let cluster = cluster.map_err(SandboxError::StartKubeadm)?;
    if s.demo {
        let client = cluster.client().await?;
        let namespace = Namespace {
            metadata: ObjectMeta { name: Some(DEMO_NAMESPACE.to_string()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|e| SandboxError::DemoNamespace(Box::new(e)))?;
        crate::workloads::install_demo(&client, DEMO_NAMESPACE).await?;
    }
    Ok(cluster)
}

/// The sandbox running in `dir`; refused when none was started there or it no longer runs.
pub fn attach_running(dir: &Path) -> Result<Testbed, Refusal> {
    if !dir.join("state.json").exists() {
        return Err(Refusal::Missing(dir.to_path_buf()));
    }
    running(dir).ok_or_else(|| Refusal::NotRunning(dir.to_path_buf()))
}

/// One node's upgrade, as the sandbox's node action does it (`refit sandbox upgrade-node`).
#[derive(Debug, Clone)]
pub struct NodeUpgrade {
    /// The node.
    pub node: String,
    /// The release it moves to.
    pub to: Version,
    /// Node-image targets (family → version, a member upgrade's `REFIT_NODE_IMAGES`): the
    /// node's image moves to its family's.
    pub node_images: BTreeMap<String, String>,
}

/// What [`upgrade_node`] did.
#[derive(Debug, Clone, Serialize)]
pub struct NodeChange {
    /// The node.
    pub node: String,
    /// Its node image after the change (`refit.dev/node-image`), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// control-plane or worker.
    pub role: &'static str,
    /// Its version before.
    pub from: String,
    /// Its version now.
    pub to: String,
    /// How long the upgrade took, to a tenth of a second.
    pub seconds: f64,
}

/// Upgrades one node of a running sandbox: a control-plane member gets the target's binaries
/// (built first when missing, as an operator's script would fetch packages) — known from the
/// state file, so that an upgrade killed between stopping the old apiserver and starting the
/// new one is finished even with no API server (issue 18 item 19) —, a worker its reported
/// versions; then its node image moves to its family's target.
pub async fn upgrade_node(
    tb: &Testbed,
    u: &NodeUpgrade,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<NodeChange, SandboxError> {
    let client = tb.client().await?;
    let member = tb.member_for_node(&u.node);
    let node = match Api::<Node>::all(client.clone()).get_opt(&u.node).await {
        Ok(node) => node,
        Err(error) if member.is_some() => {
            progress(Progress::ApiServerDown { node: &u.node, error: &error });
            None
        }
        Err(e) => return Err(SandboxError::ReadNode(Box::new(e))),
    };
    if node.is_none() && member.is_none() {
        return Err(Refusal::NoSuchNode(u.node.clone()).into());
    }
    let image_before =
        node.as_ref().and_then(|n| n.metadata.annotations.as_ref()?.get(NODE_IMAGE_ANNOTATION).cloned());
    let from = match (&node, &member) {
        (Some(n), _) => {
            n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.kubelet_version.clone())
        }
        (None, Some(m)) => Some(m.binaries.version.git_version()),
        (None, None) => None,
    }
    .unwrap_or_default();
    let started = Instant::now();
    let role = match member {
        Some(member) => {
            build(&[Component::Kubernetes(u.to.clone())], progress)?;
            tb.upgrade_member(member.index, &u.to).await?;
            "control-plane"
        }
        None => {
            tb.set_node_version(&u.node, &u.to, &u.to).await?;
            "worker"
        }
    };
    let image = move_node_image(&client, &u.node, image_before, &u.node_images)
        .await
        .map_err(|e| SandboxError::NodeImage { node: u.node.clone(), source: Box::new(e) })?;
    Ok(NodeChange {
        node: u.node.clone(),
        image,
        role,
        from,
        to: u.to.git_version(),
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// Moves the node's image annotation to its family's target (core's [`NodeImage::moved`]); a
/// node without a readable image, or of a family without a target, keeps what it has.
/// Returns the node's image afterwards.
async fn move_node_image(
    client: &kube::Client,
    node: &str,
    current: Option<String>,
    targets: &BTreeMap<String, String>,
) -> Result<Option<String>, kube::Error> {
    let moved = current.as_deref().and_then(|c| NodeImage::parse(c).ok()).and_then(|i| i.moved(targets));
    let Some(image) = moved else { return Ok(current) };
    let image = image.to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {NODE_IMAGE_ANNOTATION: image}}});
    Api::<Node>::all(client.clone()).patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(Some(image))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_take_one_to_three_control_plane_members() {
        for kind in [SandboxKind::Testbed, SandboxKind::Kubeadm] {
            for n in CONTROL_PLANES {
                assert_eq!(check_size(kind, n, 0), Ok(()), "{kind:?} {n}");
            }
            assert_eq!(check_size(kind, 0, 1), Err(Refusal::ControlPlanes(0)));
            assert_eq!(check_size(kind, 4, 1), Err(Refusal::ControlPlanes(4)));
        }
    }

    #[test]
    fn workers_stop_at_what_the_kind_holds() {
        assert_eq!(check_size(SandboxKind::Testbed, 1, 2000), Ok(()));
        assert_eq!(
            check_size(SandboxKind::Testbed, 3, 2001),
            Err(Refusal::Workers { kind: SandboxKind::Testbed, asked: 2001, at_most: 2000 })
        );
        assert_eq!(check_size(SandboxKind::Kubeadm, 1, 50), Ok(()));
        assert_eq!(
            check_size(SandboxKind::Kubeadm, 1, 51),
            Err(Refusal::Workers { kind: SandboxKind::Kubeadm, asked: 51, at_most: 50 })
        );
        // The control-plane count is judged first, as the flags are read.
        assert_eq!(check_size(SandboxKind::Kubeadm, 9, 51), Err(Refusal::ControlPlanes(9)));
    }

    #[test]
    fn a_directory_without_a_sandbox_is_refused_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(attach_running(dir.path()), Err(Refusal::Missing(d)) if d == dir.path()));
    }
}
