//! One testbed cluster: etcd, 1–3 control-plane members, a load balancer, kwok and its nodes.
//!
//! The layout mirrors a kubeadm cluster with stacked control planes: every member runs a
//! kube-apiserver, kube-controller-manager and kube-scheduler (the latter two talk to their
//! own member's apiserver, as kubeadm wires them), each member has a Node labelled
//! `node-role.kubernetes.io/control-plane` with mirror pods for its components, and clients
//! reach the apiservers through a load balancer. Workers are kwok nodes.
//!
//! All state needed to operate the cluster later (ports, pids, binaries, versions) is written
//! to `state.json` after every change, so a detached testbed (the sandbox) can be operated
//! by a CLI process other than the one that started it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::{Client, Config};
use refit_core::Version;
use serde::{Deserialize, Serialize};
use serde_json::json;

mod boot;
mod clients;
mod members;
mod nodes;
mod state_file;

pub(crate) use boot::write_kwok_config;
use clients::*;
pub(crate) use clients::{client_from_kubeconfig, plain_http_get, wait_until};
pub use nodes::node_is_ready;

use crate::Error;
use crate::cache::{Cache, Component, KubernetesBinaries, TestbedVersions};
use crate::lb::LoadBalancer;
use crate::pki::{Pki, write_file};
use crate::process::{Lifetime, Proc, free_ports, pid_alive};

/// Annotation on a control-plane Node naming the testbed member that runs on it.
pub const MEMBER_ANNOTATION: &str = "testbed.refit.dev/member";
/// Label on every node the testbed created.
pub const TESTBED_LABEL: &str = "testbed.refit.dev/node";

/// What to start.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// Control-plane version (every member starts at it).
    pub version: Version,
    /// Number of control-plane members, 1 to 3.
    pub control_planes: usize,
    /// Worker nodes to create.
    pub workers: usize,
    /// Kubelet/kube-proxy version of the workers; defaults to `version`.
    pub worker_version: Option<Version>,
    /// Where to keep state, certificates, data and logs; a temporary directory when `None`
    /// (removed when the testbed is dropped).
    pub dir: Option<PathBuf>,
    /// Attached (tests) or detached (sandbox).
    pub lifetime: Lifetime,
    /// For a detached testbed: the command that runs the load balancer as its own process
    /// (the testbed appends `--listen ADDR --backend ADDR...`). Attached testbeds run it
    /// in-process.
    pub lb_command: Option<Vec<String>>,
    /// Deploy kubeadm's cluster add-ons: a kube-proxy DaemonSet and a CoreDNS Deployment.
    pub addons: bool,
    /// Extra kube-apiserver flags, e.g. `--runtime-config=storage.k8s.io/v1beta1=true` to serve
    /// an opt-in beta API that a later release removes.
    pub apiserver_args: Vec<String>,
}

impl TestbedConfig {
    /// An attached testbed at `version` with one control-plane member and `workers` workers.
    pub fn new(version: Version, workers: usize) -> TestbedConfig {
        TestbedConfig {
            version,
            control_planes: 1,
            workers,
            worker_version: None,
            dir: None,
            lifetime: Lifetime::Attached,
            lb_command: None,
            addons: true,
            apiserver_args: Vec::new(),
        }
    }

    /// Sets the number of control-plane members.
    pub fn control_planes(mut self, n: usize) -> Self {
        self.control_planes = n;
        self
    }

    /// Adds a kube-apiserver flag.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Sets the workers' kubelet version.
    pub fn worker_version(mut self, v: Version) -> Self {
        self.worker_version = Some(v);
        self
    }
}

/// The role of a testbed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Runs a control-plane member.
    ControlPlane,
    /// A kwok worker.
    Worker,
}

/// A worker to add.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Node name.
    pub name: String,
    /// Kubelet and kube-proxy version.
    pub version: Version,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Extra annotations.
    pub annotations: BTreeMap<String, String>,
    /// Taints, as Kubernetes JSON objects.
    pub taints: Vec<serde_json::Value>,
}

/// One control-plane member as recorded in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// 0-based index.
    pub index: usize,
    /// Its Node's name.
    pub node: String,
    /// The binaries it runs.
    pub binaries: KubernetesBinaries,
    /// kube-apiserver secure port.
    pub apiserver_port: u16,
    /// kube-controller-manager secure port.
    pub controller_manager_port: u16,
    /// kube-scheduler secure port.
    pub scheduler_port: u16,
    /// Pids (also process-group ids) of its processes, by component name.
    pub pids: BTreeMap<String, i32>,
}

impl Member {
    /// The member's apiserver URL (bypassing the load balancer).
    pub fn apiserver_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    dir: PathBuf,
    lifetime: Lifetime,
    pki: Pki,
    kubeconfig: PathBuf,
    etcd_binary: PathBuf,
    etcdctl_binary: PathBuf,
    etcd_version: Version,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    etcd_pid: i32,
    lb_port: u16,
    lb_pid: Option<i32>,
    lb_command: Option<Vec<String>>,
    kwok_binary: PathBuf,
    kwok_config: PathBuf,
    kwok_port: u16,
    kwok_pid: i32,
    members: Vec<Member>,
    next_worker: usize,
    addons: bool,
    #[serde(default)]
    apiserver_args: Vec<String>,
}

impl State {
    /// Control-plane member `index`.
    fn member(&self, index: usize) -> Result<&Member, Error> {
        self.members.get(index).ok_or_else(|| Error::NotFound(format!("no control-plane member {index}")))
    }

    /// Control-plane member `index`, to change.
    fn member_mut(&mut self, index: usize) -> Result<&mut Member, Error> {
        self.members.get_mut(index).ok_or_else(|| Error::NotFound(format!("no control-plane member {index}")))
    }
}

/// A running testbed.
pub struct Testbed {
    state: Mutex<State>,
    /// `state` as this process last read or wrote the file: what a save merges against
    /// ([`state_file::merge3`]).
    base: Mutex<serde_json::Value>,
    procs: Mutex<HashMap<String, Proc>>,
    lb: Mutex<Option<LoadBalancer>>,
    cache: Cache,
    _tempdir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed").field("dir", &self.dir()).finish()
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a component that exits while starting is started again (as a kubelet restarts a
/// crashing static pod), within [`READY_TIMEOUT`].
const MAX_RESTARTS: u32 = 8;

/// The apiserver, controller-manager and scheduler names used in pids and logs.
const APISERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const SCHEDULER: &str = "kube-scheduler";

/// The label that takes a node out of kwok's hands: its kubelet is "stopped"
/// ([`Testbed::stop_kubelet`]).
pub const KUBELET_STOPPED_LABEL: &str = "testbed.refit.dev/kubelet-stopped";

/// Controllers the testbed runs: what PDBs, evictions, rollouts, node readiness, namespaces
/// and garbage collection need (reference/testbed.md §7), plus jobs for completions.
const CONTROLLERS: &str = "deployment-controller,replicaset-controller,disruption-controller,\
node-lifecycle-controller,taint-eviction-controller,serviceaccount-controller,namespace-controller,\
garbage-collector-controller,pod-garbage-collector-controller,daemonset-controller,\
statefulset-controller,root-ca-certificate-publisher-controller,job-controller,\
clusterrole-aggregation-controller,endpointslice-controller";

impl Testbed {
    /// Starts a testbed and waits until every component and node is ready.
    pub async fn start(config: TestbedConfig) -> Result<Testbed, Error> {
        if !(1..=3).contains(&config.control_planes) {
            return Err(Error::Config(format!(
                "control planes must be 1 to 3, got {}",
                config.control_planes
            )));
        }
        let cache = Cache::from_env()?;
        let versions = TestbedVersions::from_env()?;
        let worker_version = config.worker_version.clone().unwrap_or_else(|| config.version.clone());
        cache.require(&[
            Component::Etcd(versions.etcd.clone()),
            Component::Kwok(versions.kwok.clone()),
            Component::Kubernetes(config.version.clone()),
        ])?;
        let binaries = cache.kubernetes(&config.version)?;

        let (dir, tempdir) = match &config.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("refit-testbed-{}-", std::process::id()))
                    .tempdir()
                    .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        for sub in ["logs", "etcd"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let pki = Pki::generate(&dir.join("pki"))?;

        let n = config.control_planes;
        let ports = free_ports(4 + 3 * n)?;
        let port = |i: usize| {
            ports.get(i).copied().ok_or_else(|| Error::Process {
                name: "ports".into(),
                detail: format!("{} free ports found, {} needed", ports.len(), 4 + 3 * n),
            })
        };
        let etcd_dir = cache.entry_dir(&Component::Etcd(versions.etcd.clone()));
        let kwok_dir = cache.entry_dir(&Component::Kwok(versions.kwok.clone()));
        let members = (0..n)
            .map(|i| {
                Ok(Member {
                    index: i,
                    node: format!("control-plane-{}", i + 1),
                    binaries: binaries.clone(),
                    apiserver_port: port(4 + 3 * i)?,
                    controller_manager_port: port(5 + 3 * i)?,
                    scheduler_port: port(6 + 3 * i)?,
                    pids: BTreeMap::new(),
                })
            })
            .collect::<Result<_, Error>>()?;
        let state = State {
            kubeconfig: dir.join("kubeconfig"),
            dir: dir.clone(),
            lifetime: config.lifetime,
            pki,
            etcd_binary: etcd_dir.join("etcd"),
            etcdctl_binary: etcd_dir.join("etcdctl"),
            etcd_version: versions.etcd.clone(),
            etcd_client_port: port(0)?,
            etcd_peer_port: port(1)?,
            etcd_pid: 0,
            lb_port: port(2)?,
            lb_pid: None,
            lb_command: config.lb_command.clone(),
            kwok_binary: kwok_dir.join("kwok"),
            kwok_config: kwok_dir.join("kwok.yaml"),
            kwok_port: port(3)?,
            kwok_pid: 0,
            members,
            next_worker: 1,
            addons: config.addons,
            apiserver_args: config.apiserver_args.clone(),
        };
        let testbed = Testbed {
            state: Mutex::new(state),
            base: Mutex::new(serde_json::Value::Null),
            procs: Mutex::new(HashMap::new()),
            lb: Mutex::new(None),
            cache,
            _tempdir: tempdir,
        };
        match testbed.bring_up(&config, &worker_version).await {
            Ok(()) => Ok(testbed),
            Err(e) => {
                // Nothing half-started may survive a failed start, attached or detached.
                testbed.stop();
                Err(e)
            }
        }
    }

    async fn bring_up(&self, config: &TestbedConfig, worker_version: &Version) -> Result<(), Error> {
        self.write_kubeconfigs()?;
        self.save()?;
        self.boot().await?;
        self.create_control_plane_nodes().await?;
        if config.workers > 0 {
            let specs = self.next_worker_specs(config.workers, worker_version);
            self.add_workers(specs).await?;
        }
        if config.addons {
            crate::workloads::install_addons(&self.client().await?, &config.version, worker_version).await?;
        }
        self.wait_cluster_ready().await?;
        self.save()
    }

    /// Re-attaches to a detached testbed from its directory (the sandbox).
    pub fn attach(dir: &Path) -> Result<Testbed, Error> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut state: State = serde_json::from_str(&text)
            .map_err(|e| Error::State { path: path.clone(), detail: e.to_string() })?;
        // An attached handle does not own the cluster: dropping it must never stop it (a
        // `refit sandbox upgrade-node` run against a test's testbed would otherwise take the
        // whole testbed down when it exits), and what it starts must outlive it.
        state.lifetime = Lifetime::Detached;
        let mut procs = HashMap::new();
        procs.insert("etcd".to_string(), Proc::adopt("etcd", state.etcd_pid));
        procs.insert("kwok".to_string(), Proc::adopt("kwok", state.kwok_pid));
        if let Some(pid) = state.lb_pid {
            procs.insert("load-balancer".to_string(), Proc::adopt("load-balancer", pid));
        }
        for m in &state.members {
            for (component, pid) in &m.pids {
                let name = format!("{component}-{}", m.index);
                procs.insert(name.clone(), Proc::adopt(&name, *pid));
            }
        }
        let base = serde_json::to_value(&state).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Testbed {
            state: Mutex::new(state),
            base: Mutex::new(base),
            procs: Mutex::new(procs),
            lb: Mutex::new(None),
            cache: Cache::from_env()?,
            _tempdir: None,
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state, merged with what other processes wrote since this one last read or
    /// wrote it (see [`state_file`]); this process's copy becomes the merged state.
    fn save(&self) -> Result<(), Error> {
        let dir = self.dir();
        let _lock = state_file::Locked::take(&dir)?;
        let ours = serde_json::to_value(&*self.st()).map_err(|e| Error::Config(e.to_string()))?;
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let merged = match state_file::read(&dir)? {
            Some(theirs) => state_file::merge3(&base, &ours, &theirs),
            None => ours,
        };
        // Checked before it is written: a merge that is not a state never reaches the file.
        let fresh = state_from(&dir, &merged)?;
        state_file::write(&dir, &merged)?;
        self.install(fresh, merged);
        Ok(())
    }

    /// Makes `fresh` (parsed from `value`, the file's content) this process's state, keeping
    /// its own lifetime, and `value` the base of its next save.
    fn install(&self, mut fresh: State, value: serde_json::Value) {
        let mut st = self.st();
        fresh.lifetime = st.lifetime;
        *st = fresh;
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// The testbed's directory (state, certificates, logs).
    pub fn dir(&self) -> PathBuf {
        self.st().dir.clone()
    }

    /// The admin kubeconfig (through the load balancer).
    pub fn kubeconfig(&self) -> PathBuf {
        self.st().kubeconfig.clone()
    }

    /// The control-plane members.
    pub fn members(&self) -> Vec<Member> {
        self.st().members.clone()
    }

    /// etcd's client URL and the certificate files a client (backup, etcdctl) needs.
    pub fn etcd_endpoint(&self) -> (String, Pki) {
        let st = self.st();
        (format!("https://127.0.0.1:{}", st.etcd_client_port), st.pki.clone())
    }

    /// The etcdctl binary matching the testbed's etcd.
    pub fn etcdctl(&self) -> PathBuf {
        self.st().etcdctl_binary.clone()
    }

    /// The kubectl of the given release from the cache.
    pub fn kubectl(&self, version: &Version) -> Result<PathBuf, Error> {
        Ok(self.cache.kubernetes(version)?.kubectl)
    }

    /// A fresh client through the load balancer. Clients are cheap; a new one per caller
    /// keeps them bound to the caller's tokio runtime.
    pub async fn client(&self) -> Result<Client, Error> {
        let path = self.kubeconfig();
        client_from_kubeconfig(&path, None).await
    }

    /// A client talking straight to one member's apiserver.
    pub async fn member_client(&self, index: usize) -> Result<Client, Error> {
        let path = self.st().dir.join(format!("member-{index}.kubeconfig"));
        client_from_kubeconfig(&path, None).await
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.st().dir.join("logs").join(format!("{name}.log"))
    }

    fn write_kubeconfigs(&self) -> Result<(), Error> {
        let st = self.st().clone();
        write_file(
            &st.kubeconfig,
            &kubeconfig_yaml(&format!("https://127.0.0.1:{}", st.lb_port), &st.pki)?,
            true,
        )?;
        for m in &st.members {
            let path = st.dir.join(format!("member-{}.kubeconfig", m.index));
            write_file(&path, &kubeconfig_yaml(&m.apiserver_url(), &st.pki)?, true)?;
        }
        // Health endpoints of etcd, the controller-manager and the scheduler use the same CA
        // and client certificate.
        Ok(())
    }

    fn spawn(&self, name: &str, program: &Path, args: Vec<String>) -> Result<i32, Error> {
        let lifetime = self.st().lifetime;
        let log = self.log_path(name);
        // Go processes in a 2-core testbed: a soft memory limit keeps the idle footprint down.
        let env = vec![("GOMAXPROCS".to_string(), "2".to_string())];
        let proc = Proc::spawn(name, program, &args, &env, &log, lifetime)?;
        let pid = proc.pid;
        let proc = match lifetime {
            Lifetime::Attached => proc,
            Lifetime::Detached => Proc::adopt(name, proc.release()),
        };
        let old = self.procs.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), proc);
        if let Some(mut old) = old {
            old.stop(STOP_GRACE);
        }
        Ok(pid)
    }

    /// Waits until `probe` passes for our process `name` (its log named on failure), giving up at
    /// once if the process exits.
    async fn wait_ready<F, Fut>(&self, name: &str, probe: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        wait_while_alive(name, &self.log_path(name), READY_TIMEOUT, || self.running(name), probe).await
    }

    /// Whether our process `name` still runs: false only when we know it exited (one we do not
    /// hold counts as running, so a wait on it runs to its timeout as before).
    fn running(&self, name: &str) -> bool {
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name).is_none_or(|p| p.is_running())
    }

    fn stop_proc(&self, name: &str) {
        let proc = self.procs.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        if let Some(mut p) = proc {
            p.stop(STOP_GRACE);
        }
    }

    /// Whether each process of the testbed is running, by name.
    pub fn process_status(&self) -> BTreeMap<String, (i32, bool)> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.iter_mut().map(|(name, p)| (name.clone(), (p.pid, p.is_running()))).collect()
    }

    /// Stops every process (kwok, schedulers, controller-managers, apiservers, then etcd) and
    /// waits for them to exit. Safe to call twice.
    pub fn stop(&self) {
        let mut names: Vec<String> =
            self.procs.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        let rank = |n: &str| match n {
            "kwok" => 0,
            n if n.starts_with(SCHEDULER) || n.starts_with(CONTROLLER_MANAGER) => 1,
            n if n.starts_with(APISERVER) => 2,
            "load-balancer" => 3,
            _ => 4, // etcd last
        };
        names.sort_by_key(|n| rank(n));
        for n in names {
            self.stop_proc(&n);
        }
        self.lb.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.stop_strays();
    }

    /// Kills any process still running a cached binary with this testbed's directory on its
    /// command line. Why: a detached sandbox's state file is written by several processes (a
    /// chaos restart of kwok, `refit sandbox upgrade-node`); when one writes back a pid another
    /// just replaced, the process behind the lost pid would outlive `sandbox down`.
    fn stop_strays(&self) {
        let dir = self.dir().display().to_string();
        let cache = self.cache.root().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let ours = args.first().is_some_and(|exe| exe.starts_with(&cache))
                && args.iter().skip(1).any(|a| a.contains(&format!("{dir}/")));
            if ours && pid_alive(pid) {
                // Started detached, so it leads its own process group, as adopted ones do.
                Proc::adopt("stray", pid).stop(STOP_GRACE);
            }
        }
    }

    /// Pids of every process the state file knows (a detached testbed's status).
    pub fn recorded_pids(&self) -> Vec<(String, i32, bool)> {
        let st = self.st();
        let mut out = vec![("etcd".to_string(), st.etcd_pid), ("kwok".to_string(), st.kwok_pid)];
        if let Some(pid) = st.lb_pid {
            out.push(("load-balancer".to_string(), pid));
        }
        for m in &st.members {
            for (c, pid) in &m.pids {
                out.push((format!("{c}-{}", m.index), *pid));
            }
        }
        out.into_iter().map(|(n, p)| (n, p, pid_alive(p))).collect()
    }
}

/// The state in `value`, as read from (or about to be written to) `dir/state.json`.
fn state_from(dir: &Path, value: &serde_json::Value) -> Result<State, Error> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::State { path: dir.join("state.json"), detail: e.to_string() })
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.st().lifetime == Lifetime::Attached {
            self.stop();
        }
    }
}

/// Whether process `pid` is alive and executes `binary` (its `/proc/PID/exe`): a recorded pid
/// is only trusted as "our component" when it still runs the file we started.
fn runs_binary(pid: i32, binary: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let want = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    exe == want
}

/// The `REFIT_TESTBED_HOLD_AFTER_STOP` test hook of [`Testbed::converge_member`].
fn hold_after_stop(dir: &Path, name: &str, component: &str) {
    if std::env::var("REFIT_TESTBED_HOLD_AFTER_STOP").ok().as_deref() == Some(component) {
        let marker = dir.join(format!("held-{name}"));
        let _ = std::fs::write(&marker, std::process::id().to_string());
        std::thread::sleep(Duration::from_secs(600));
    }
}
