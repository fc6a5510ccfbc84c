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

/// A running testbed.
pub struct Testbed {
    state: Mutex<State>,
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
        let etcd_dir = cache.entry_dir(&Component::Etcd(versions.etcd.clone()));
        let kwok_dir = cache.entry_dir(&Component::Kwok(versions.kwok.clone()));
        let members = (0..n)
            .map(|i| Member {
                index: i,
                node: format!("control-plane-{}", i + 1),
                binaries: binaries.clone(),
                apiserver_port: ports[4 + 3 * i],
                controller_manager_port: ports[5 + 3 * i],
                scheduler_port: ports[6 + 3 * i],
                pids: BTreeMap::new(),
            })
            .collect();
        let state = State {
            kubeconfig: dir.join("kubeconfig"),
            dir: dir.clone(),
            lifetime: config.lifetime,
            pki,
            etcd_binary: etcd_dir.join("etcd"),
            etcdctl_binary: etcd_dir.join("etcdctl"),
            etcd_version: versions.etcd.clone(),
            etcd_client_port: ports[0],
            etcd_peer_port: ports[1],
            etcd_pid: 0,
            lb_port: ports[2],
            lb_pid: None,
            lb_command: config.lb_command.clone(),
            kwok_binary: kwok_dir.join("kwok"),
            kwok_config: kwok_dir.join("kwok.yaml"),
            kwok_port: ports[3],
            kwok_pid: 0,
            members,
            next_worker: 1,
            addons: config.addons,
            apiserver_args: config.apiserver_args.clone(),
        };
        let testbed = Testbed {
            state: Mutex::new(state),
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
        Ok(Testbed {
            state: Mutex::new(state),
            procs: Mutex::new(procs),
            lb: Mutex::new(None),
            cache: Cache::from_env()?,
            _tempdir: None,
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self) -> Result<(), Error> {
        let st = self.st().clone();
        let path = st.dir.join("state.json");
        let tmp = st.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(&st).map_err(|e| Error::Config(e.to_string()))?;
        write_file(&tmp, &text, true)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
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

    async fn boot(&self) -> Result<(), Error> {
        self.start_etcd().await?;
        self.start_lb()?;
        let n = self.st().members.len();
        // The first apiserver bootstraps RBAC and system objects alone; the others join it.
        self.start_apiserver(0).await?;
        let rest: Vec<_> = (1..n).map(|i| self.start_apiserver(i)).collect();
        for r in futures::future::join_all(rest).await {
            r?;
        }
        for i in 0..n {
            self.start_controller_manager(i)?;
            self.start_scheduler(i)?;
        }
        for i in 0..n {
            self.wait_component_health(i, CONTROLLER_MANAGER).await?;
            self.wait_component_health(i, SCHEDULER).await?;
        }
        self.start_kwok().await?;
        Ok(())
    }

    async fn start_etcd(&self) -> Result<(), Error> {
        let st = self.st().clone();
        let peer = format!("http://127.0.0.1:{}", st.etcd_peer_port);
        let client = format!("https://127.0.0.1:{}", st.etcd_client_port);
        let args = vec![
            "--name=etcd-0".to_string(),
            format!("--data-dir={}", st.dir.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=etcd-0={peer}"),
            format!("--cert-file={}", st.pki.admin_cert.display()),
            format!("--key-file={}", st.pki.admin_key.display()),
            format!("--trusted-ca-file={}", st.pki.ca_cert.display()),
            "--client-cert-auth=true".to_string(),
            "--auto-compaction-retention=1".to_string(),
            "--quota-backend-bytes=8589934592".to_string(),
            // A testbed's data is disposable; fsync would dominate its write latency.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let pid = self.spawn("etcd", &st.etcd_binary, args)?;
        self.st().etcd_pid = pid;
        self.save()?;
        let client = tls_client(&client, &st.pki).await?;
        wait_while_alive(
            "etcd",
            &self.log_path("etcd"),
            READY_TIMEOUT,
            || self.running("etcd"),
            || {
                let client = client.clone();
                async move {
                    let body = get_text(&client, "/health").await?;
                    if body.contains("\"health\":\"true\"") { Ok(()) } else { Err(body) }
                }
            },
        )
        .await
    }

    fn start_lb(&self) -> Result<(), Error> {
        let st = self.st().clone();
        let listen: SocketAddr = ([127, 0, 0, 1], st.lb_port).into();
        let backends: Vec<SocketAddr> =
            st.members.iter().map(|m| SocketAddr::from(([127, 0, 0, 1], m.apiserver_port))).collect();
        match (&st.lifetime, &st.lb_command) {
            (Lifetime::Detached, Some(cmd)) if !cmd.is_empty() => {
                let mut args: Vec<String> = cmd[1..].to_vec();
                args.push(format!("--listen={listen}"));
                for b in &backends {
                    args.push(format!("--backend={b}"));
                }
                let pid = self.spawn("load-balancer", Path::new(&cmd[0]), args)?;
                self.st().lb_pid = Some(pid);
                self.save()?;
            }
            (Lifetime::Detached, _) => {
                return Err(Error::Config("a detached testbed needs lb_command".into()));
            }
            (Lifetime::Attached, _) => {
                *self.lb.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(LoadBalancer::start(listen, backends)?);
            }
        }
        Ok(())
    }

    fn apiserver_args(st: &State, m: &Member) -> Vec<String> {
        let p = &st.pki;
        let mut args = vec![
            format!("--etcd-servers=https://127.0.0.1:{}", st.etcd_client_port),
            format!("--etcd-cafile={}", p.ca_cert.display()),
            format!("--etcd-certfile={}", p.admin_cert.display()),
            format!("--etcd-keyfile={}", p.admin_key.display()),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={}", m.apiserver_port),
            format!("--tls-cert-file={}", p.admin_cert.display()),
            format!("--tls-private-key-file={}", p.admin_key.display()),
            format!("--client-ca-file={}", p.ca_cert.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", p.sa_pub.display()),
            format!("--service-account-signing-key-file={}", p.sa_key.display()),
            "--service-cluster-ip-range=10.96.0.0/16".to_string(),
            "--authorization-mode=Node,RBAC".to_string(),
            "--allow-privileged=true".to_string(),
            // Several apiservers share 127.0.0.1; they must not fight over the endpoints.
            "--endpoint-reconciler-type=none".to_string(),
            // Tests drive hundreds of requests a second; priority-and-fairness would queue them.
            "--max-requests-inflight=1000".to_string(),
            "--max-mutating-requests-inflight=500".to_string(),
            "--profiling=false".to_string(),
        ];
        args.extend(st.apiserver_args.iter().cloned());
        args
    }

    async fn start_apiserver(&self, index: usize) -> Result<(), Error> {
        let (program, args, member) = {
            let st = self.st();
            let m =
                st.members.get(index).ok_or_else(|| Error::NotFound(format!("no member {index}")))?.clone();
            (m.binaries.apiserver.clone(), Self::apiserver_args(&st, &m), m)
        };
        let name = format!("{APISERVER}-{index}");
        let pid = self.spawn(&name, &program, args)?;
        self.st().members[index].pids.insert(APISERVER.into(), pid);
        self.save()?;
        self.wait_apiserver(&member).await
    }

    async fn wait_apiserver(&self, member: &Member) -> Result<(), Error> {
        let client = self.member_client(member.index).await?;
        let want = member.binaries.version.git_version();
        let name = format!("{APISERVER}-{}", member.index);
        wait_while_alive(
            &name,
            &self.log_path(&name),
            READY_TIMEOUT,
            || self.running(&name),
            || {
                let client = client.clone();
                let want = want.clone();
                async move {
                    let ready = get_text(&client, "/readyz").await?;
                    if ready.trim() != "ok" {
                        return Err(ready);
                    }
                    let v = client.apiserver_version().await.map_err(|e| e.to_string())?;
                    if v.git_version == want {
                        Ok(())
                    } else {
                        Err(format!("reports {} not {want}", v.git_version))
                    }
                }
            },
        )
        .await
    }

    /// Flags the controller-manager and the scheduler share: their member's kubeconfig for
    /// everything, a TLS serving port with the testbed certificate, fast leader election
    /// (only contended when there are several members).
    fn controller_args(st: &State, index: usize, port: u16) -> Vec<String> {
        let p = &st.pki;
        let kubeconfig = st.dir.join(format!("member-{index}.kubeconfig"));
        let ha = st.members.len() > 1;
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p.admin_cert.display()),
            format!("--tls-private-key-file={}", p.admin_key.display()),
            format!("--client-ca-file={}", p.ca_cert.display()),
            format!("--leader-elect={ha}"),
            "--leader-elect-lease-duration=6s".to_string(),
            "--leader-elect-renew-deadline=4s".to_string(),
            "--leader-elect-retry-period=1s".to_string(),
            "--profiling=false".to_string(),
        ]
    }

    fn start_controller_manager(&self, index: usize) -> Result<(), Error> {
        let (program, args) = {
            let st = self.st();
            let m = &st.members[index];
            let mut args = Self::controller_args(&st, index, m.controller_manager_port);
            args.extend([
                format!("--root-ca-file={}", st.pki.ca_cert.display()),
                format!("--service-account-private-key-file={}", st.pki.sa_key.display()),
                format!("--controllers={CONTROLLERS}"),
                "--use-service-account-credentials=false".to_string(),
                "--node-monitor-period=5s".to_string(),
                "--node-monitor-grace-period=60s".to_string(),
                "--kube-api-qps=200".to_string(),
                "--kube-api-burst=400".to_string(),
                "--concurrent-deployment-syncs=10".to_string(),
                "--concurrent-replicaset-syncs=10".to_string(),
            ]);
            (m.binaries.controller_manager.clone(), args)
        };
        let pid = self.spawn(&format!("{CONTROLLER_MANAGER}-{index}"), &program, args)?;
        self.st().members[index].pids.insert(CONTROLLER_MANAGER.into(), pid);
        self.save()
    }

    fn start_scheduler(&self, index: usize) -> Result<(), Error> {
        let (program, args) = {
            let st = self.st();
            let m = &st.members[index];
            (m.binaries.scheduler.clone(), Self::controller_args(&st, index, m.scheduler_port))
        };
        let pid = self.spawn(&format!("{SCHEDULER}-{index}"), &program, args)?;
        self.st().members[index].pids.insert(SCHEDULER.into(), pid);
        self.save()
    }

    async fn wait_component_health(&self, index: usize, component: &str) -> Result<(), Error> {
        let (url, pki) = {
            let st = self.st();
            let m = &st.members[index];
            let port =
                if component == CONTROLLER_MANAGER { m.controller_manager_port } else { m.scheduler_port };
            (format!("https://127.0.0.1:{port}"), st.pki.clone())
        };
        let client = tls_client(&url, &pki).await?;
        let name = format!("{component}-{index}");
        wait_while_alive(
            &name,
            &self.log_path(&name),
            READY_TIMEOUT,
            || self.running(&name),
            || {
                let client = client.clone();
                async move {
                    let body = get_text(&client, "/healthz").await?;
                    if body.trim() == "ok" { Ok(()) } else { Err(body) }
                }
            },
        )
        .await
    }

    async fn start_kwok(&self) -> Result<(), Error> {
        let st = self.st().clone();
        let config = st.dir.join("kwok.yaml");
        write_kwok_config(&st.kwok_config, &config)?;
        let args = vec![
            format!("--kubeconfig={}", st.kubeconfig.display()),
            format!("--config={}", config.display()),
            // Every node except those whose "kubelet" a test stopped (see `stop_kubelet`).
            "--manage-all-nodes=false".to_string(),
            format!("--manage-nodes-with-label-selector=!{KUBELET_STOPPED_LABEL}"),
            "--node-lease-duration-seconds=40".to_string(),
            "--cidr=10.128.0.0/12".to_string(),
            "--node-ip=10.0.0.1".to_string(),
        ];
        // kwok's port only serves its health check: when another process took it between the
        // pick and now (kwok exits at once), a fresh one is picked, twice at most.
        let mut port = st.kwok_port;
        let mut attempt = 0;
        loop {
            let mut args = args.clone();
            args.push(format!("--server-address=127.0.0.1:{port}"));
            let pid = self.spawn("kwok", &st.kwok_binary, args)?;
            {
                let mut st = self.st();
                st.kwok_pid = pid;
                st.kwok_port = port;
            }
            self.save()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = self.log_path("kwok");
            let ready = wait_while_alive(
                "kwok",
                &log,
                READY_TIMEOUT,
                || self.running("kwok"),
                || async move {
                    let body = plain_http_get(addr, "/healthz").await?;
                    if body.trim() == "ok" { Ok(()) } else { Err(body) }
                },
            )
            .await;
            match ready {
                Err(e) if attempt < 2 && !self.running("kwok") => {
                    attempt += 1;
                    tracing::warn!("kwok exited on start ({e}); retrying on another port");
                    port = *free_ports(1)?.first().ok_or_else(|| Error::Config("no free port".into()))?;
                }
                other => return other,
            }
        }
    }

    async fn create_control_plane_nodes(&self) -> Result<(), Error> {
        let client = self.client().await?;
        let (members, etcd_version) = {
            let st = self.st();
            (st.members.clone(), st.etcd_version.clone())
        };
        for m in &members {
            let node = node_object(
                &m.node,
                NodeRole::ControlPlane,
                &m.binaries.version,
                m.index,
                &BTreeMap::from([(MEMBER_ANNOTATION.to_string(), m.index.to_string())]),
                &BTreeMap::new(),
                &[json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})],
            );
            create_node(&client, node).await?;
            let etcd = if m.index == 0 { Some(&etcd_version) } else { None };
            let endpoint = format!("127.0.0.1:{}", m.apiserver_port);
            crate::workloads::apply_static_pods(&client, &m.node, &m.binaries.version, etcd, &endpoint)
                .await?;
        }
        Ok(())
    }

    /// Names and specs for `n` new workers continuing the testbed's numbering.
    pub fn next_worker_specs(&self, n: usize, version: &Version) -> Vec<WorkerSpec> {
        let mut st = self.st();
        let first = st.next_worker;
        st.next_worker += n;
        (first..first + n)
            .map(|i| WorkerSpec {
                name: format!("worker-{i:03}"),
                version: version.clone(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                taints: Vec::new(),
            })
            .collect()
    }

    /// Adds workers and waits until each is Ready and untainted.
    pub async fn add_workers(&self, specs: Vec<WorkerSpec>) -> Result<Vec<String>, Error> {
        let client = self.client().await?;
        let mut names = Vec::new();
        let offset = self.st().members.len();
        let creates = specs.iter().enumerate().map(|(i, s)| {
            let index = offset + worker_index(&s.name).unwrap_or(i);
            let node = node_object(
                &s.name,
                NodeRole::Worker,
                &s.version,
                index,
                &s.labels,
                &s.annotations,
                &s.taints,
            );
            create_node(&client, node)
        });
        // Bounded parallelism: the apiserver handles it, and 200 nodes take seconds not minutes.
        let mut stream = futures::stream::iter(creates).buffer_unordered(16);
        use futures::StreamExt;
        while let Some(r) = stream.next().await {
            r?;
        }
        for s in &specs {
            names.push(s.name.clone());
        }
        self.wait_nodes_ready(&names).await?;
        Ok(names)
    }

    /// Deletes a worker's Node (its pods are then garbage-collected, as on a real cluster).
    pub async fn remove_worker(&self, name: &str) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        api.delete(name, &Default::default()).await.map(|_| ()).map_err(|e| node_error(name, "deleting", e))
    }

    /// Sets a worker's kubelet and kube-proxy versions, as an upgraded kubelet would report.
    pub async fn set_node_version(
        &self,
        name: &str,
        kubelet: &Version,
        kube_proxy: &Version,
    ) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        let patch = json!({"status": {"nodeInfo": {
            "kubeletVersion": kubelet.git_version(),
            "kubeProxyVersion": kube_proxy.git_version(),
        }}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| node_error(name, "patching", e))
    }

    /// Stops a node's "kubelet": kwok lets go of the node (it leaves kwok's label selector),
    /// so nothing reports its status or renews its lease any more. Within the controller
    /// manager's grace period (60 s here) the node lifecycle controller marks it Ready=Unknown
    /// and taints it `node.kubernetes.io/unreachable`, as it does with a real dead kubelet;
    /// until then a test may write the node's status itself (e.g. Ready=False).
    pub async fn stop_kubelet(&self, name: &str) -> Result<(), Error> {
        self.label_node(name, json!({KUBELET_STOPPED_LABEL: "true"})).await
    }

    /// Starts a stopped "kubelet" again (kwok takes the node back, renews its lease and
    /// reports it Ready) and waits until the node is Ready without a not-ready taint.
    pub async fn start_kubelet(&self, name: &str) -> Result<(), Error> {
        self.label_node(name, json!({KUBELET_STOPPED_LABEL: null})).await?;
        self.wait_nodes_ready(&[name.to_string()]).await
    }

    async fn label_node(&self, name: &str, labels: serde_json::Value) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        let patch = json!({"metadata": {"labels": labels}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| node_error(name, "labelling", e))
    }

    /// Replaces a control-plane member's binaries with another release and restarts them in
    /// kubeadm's order (apiserver, controller-manager, scheduler), waiting for each; then
    /// reports the new kubelet version on its Node and updates its mirror pods.
    ///
    /// Crash-safe, like a node's package upgrade (issue 18 item 19): the target binaries are
    /// recorded in the state file *before* anything is stopped (the intent), and every step is
    /// idempotent ([`Testbed::converge_member`]: a component already running the recorded
    /// binary is kept, anything else is replaced). A `kill -9` at any point — even between
    /// stopping the old apiserver and starting the new one — leaves a member that running the
    /// same upgrade again completes. Nothing before the Node update needs the API server.
    pub async fn upgrade_member(&self, index: usize, version: &Version) -> Result<(), Error> {
        let binaries = self.cache.kubernetes(version)?;
        let node = {
            let mut st = self.st();
            let m = st
                .members
                .get_mut(index)
                .ok_or_else(|| Error::NotFound(format!("no control-plane member {index}")))?;
            m.binaries = binaries;
            m.node.clone()
        };
        self.save()?;
        self.converge_member(index).await?;
        self.set_node_version(&node, version, version).await?;
        let client = self.client().await?;
        let (etcd, endpoint) = {
            let st = self.st();
            let etcd = if index == 0 { Some(st.etcd_version.clone()) } else { None };
            (etcd, format!("127.0.0.1:{}", st.members[index].apiserver_port))
        };
        crate::workloads::apply_static_pods(&client, &node, version, etcd.as_ref(), &endpoint).await?;
        Ok(())
    }

    /// Brings a member's apiserver, controller-manager and scheduler (in that order) to the
    /// binaries its state records: a process alive and running that binary is kept, any
    /// other (an older binary, or none: stopped by a killed upgrade) is stopped and started
    /// again; each is then waited for until healthy. Running it twice changes nothing more.
    ///
    /// Test hook: with `REFIT_TESTBED_HOLD_AFTER_STOP=<component>` (e.g. `kube-apiserver`),
    /// after stopping that component it writes `held-<component>-<index>` in the testbed
    /// directory and waits for ten minutes, so a test can `kill -9` an upgrade between
    /// stopping the old binary and starting the new one.
    pub async fn converge_member(&self, index: usize) -> Result<(), Error> {
        for component in [APISERVER, CONTROLLER_MANAGER, SCHEDULER] {
            let (pid, binary) = {
                let st = self.st();
                let m = st
                    .members
                    .get(index)
                    .ok_or_else(|| Error::NotFound(format!("no control-plane member {index}")))?;
                let binary = match component {
                    APISERVER => m.binaries.apiserver.clone(),
                    CONTROLLER_MANAGER => m.binaries.controller_manager.clone(),
                    _ => m.binaries.scheduler.clone(),
                };
                (m.pids.get(component).copied(), binary)
            };
            let name = format!("{component}-{index}");
            if pid.is_some_and(|p| runs_binary(p, &binary)) {
                tracing::debug!(%name, "already runs {}", binary.display());
            } else {
                // Known by pid when this handle attached: stopped whichever process started it.
                self.stop_proc(&name);
                self.st().members[index].pids.remove(component);
                self.save()?;
                hold_after_stop(&self.dir(), &name, component);
                match component {
                    APISERVER => self.start_apiserver(index).await?,
                    CONTROLLER_MANAGER => self.start_controller_manager(index)?,
                    _ => self.start_scheduler(index)?,
                }
            }
            match component {
                APISERVER => {
                    let member = self.st().members[index].clone();
                    self.wait_apiserver(&member).await?
                }
                _ => self.wait_component_health(index, component).await?,
            }
            self.save()?;
        }
        Ok(())
    }

    /// The member whose Node is `node`, if it is a control-plane node.
    pub fn member_for_node(&self, node: &str) -> Option<Member> {
        self.st().members.iter().find(|m| m.node == node).cloned()
    }

    /// Stops one member's apiserver (fault injection). Clients through the load balancer fail
    /// over to other members, if any.
    pub fn stop_apiserver(&self, index: usize) -> Result<(), Error> {
        if index >= self.st().members.len() {
            return Err(Error::NotFound(format!("no control-plane member {index}")));
        }
        self.stop_proc(&format!("{APISERVER}-{index}"));
        self.st().members[index].pids.remove(APISERVER);
        self.save()
    }

    /// Chaos: stops etcd — every apiserver loses its store until [`Testbed::start_etcd_again`]
    /// (same data directory, same ports). The state file is not rewritten: another process
    /// (a `refit sandbox upgrade-node` under way) may be writing it, and etcd's recorded pid
    /// is only replaced when etcd starts again.
    pub fn stop_etcd(&self) {
        self.stop_proc("etcd");
    }

    /// Chaos: starts etcd again after [`Testbed::stop_etcd`] and waits until it is healthy.
    pub async fn start_etcd_again(&self) -> Result<(), Error> {
        self.reload()?;
        self.start_etcd().await
    }

    /// Chaos: stops one member's apiserver like [`Testbed::stop_apiserver`], touching only its
    /// own pid in the state file (re-read first: another process may have changed it).
    pub fn stop_apiserver_only(&self, index: usize) -> Result<(), Error> {
        self.reload()?;
        if index >= self.st().members.len() {
            return Err(Error::NotFound(format!("no control-plane member {index}")));
        }
        self.stop_proc(&format!("{APISERVER}-{index}"));
        self.st().members[index].pids.remove(APISERVER);
        self.save()
    }

    /// Chaos: kills kwok (the workers' "kubelets" stop renewing their leases and statuses) and
    /// starts it again, waiting until it serves.
    pub async fn restart_kwok(&self) -> Result<(), Error> {
        self.reload()?;
        self.stop_proc("kwok");
        self.start_kwok().await
    }

    /// Re-reads the state file (a detached sandbox's state changes under other processes) so
    /// that the next save writes back what they wrote.
    fn reload(&self) -> Result<(), Error> {
        let path = self.dir().join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut fresh: State = serde_json::from_str(&text)
            .map_err(|e| Error::State { path: path.clone(), detail: e.to_string() })?;
        let mut st = self.st();
        fresh.lifetime = st.lifetime;
        *st = fresh;
        Ok(())
    }

    /// Starts a member's apiserver again and waits for it.
    pub async fn start_apiserver_again(&self, index: usize) -> Result<(), Error> {
        self.reload()?;
        self.start_apiserver(index).await?;
        self.reload_keeping_apiserver(index)?;
        self.save()
    }

    /// After starting member `index`'s apiserver: the state file as other processes left it,
    /// with this apiserver's new pid.
    fn reload_keeping_apiserver(&self, index: usize) -> Result<(), Error> {
        let pid = self.st().members.get(index).and_then(|m| m.pids.get(APISERVER).copied());
        self.reload()?;
        if let (Some(pid), Some(m)) = (pid, self.st().members.get_mut(index)) {
            m.pids.insert(APISERVER.to_string(), pid);
        }
        Ok(())
    }

    /// `gitVersion` of one member's apiserver, asked directly.
    pub async fn apiserver_version(&self, index: usize) -> Result<String, Error> {
        let client = self.member_client(index).await?;
        let v = client.apiserver_version().await.map_err(|e| Error::kube("GET /version", e))?;
        Ok(v.git_version)
    }

    /// Waits until the named nodes (all nodes when empty) are Ready with no not-ready taint.
    pub async fn wait_nodes_ready(&self, names: &[String]) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        let log = self.log_path("kwok");
        let names = names.to_vec();
        wait_until("nodes", &log, READY_TIMEOUT, || {
            let api = api.clone();
            let names = names.clone();
            async move {
                let nodes = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
                let mut not_ready = Vec::new();
                for n in &nodes.items {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    if !names.is_empty() && !names.contains(&name) {
                        continue;
                    }
                    if !node_is_ready(n) {
                        not_ready.push(name);
                    }
                }
                if !names.is_empty() {
                    let present: Vec<String> =
                        nodes.items.iter().filter_map(|n| n.metadata.name.clone()).collect();
                    not_ready.extend(names.iter().filter(|n| !present.contains(n)).cloned());
                }
                if not_ready.is_empty() {
                    Ok(())
                } else {
                    not_ready.sort();
                    Err(format!("{} not ready yet (first: {})", not_ready.len(), not_ready[0]))
                }
            }
        })
        .await
    }

    async fn wait_cluster_ready(&self) -> Result<(), Error> {
        self.wait_nodes_ready(&[]).await?;
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, "default");
        wait_until(
            "default ServiceAccount",
            &self.log_path("kube-controller-manager-0"),
            READY_TIMEOUT,
            || {
                let api = api.clone();
                async move {
                    match api.get_opt("default").await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("missing".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
    }

    /// Creates a namespace and waits for its default ServiceAccount (until it exists, the
    /// ServiceAccount admission plugin refuses pods).
    pub async fn create_namespace(&self, name: &str) -> Result<(), Error> {
        let client = self.client().await?;
        let ns: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
            .map_err(|e| Error::Config(e.to_string()))?;
        match ns.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("creating namespace {name}"), e)),
        }
        let sa: Api<ServiceAccount> = Api::namespaced(client, name);
        wait_until(
            &format!("ServiceAccount default in {name}"),
            &self.log_path("kube-controller-manager-0"),
            READY_TIMEOUT,
            || {
                let sa = sa.clone();
                async move {
                    match sa.get_opt("default").await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("missing".into()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
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

/// kwok's options followed by the stages the build assembled. kwok v0.8 does not apply its
/// documented option defaults when a configuration file is given, so every parallelism knob is
/// set here (a zero parallelism makes kwok exit at start).
pub(crate) fn write_kwok_config(stages: &Path, out: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(stages).map_err(|e| Error::io(stages, e))?;
    let body: Vec<&str> = text.split("\n---\n").skip(1).collect();
    if body.is_empty() {
        return Err(Error::Config(format!("{} holds no kwok stages", stages.display())));
    }
    let header = "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n  \
        nodeLeaseParallelism: 16\n  podPlayStageParallelism: 16\n  nodePlayStageParallelism: 16\n  \
        podsOnNodeSyncParallelism: 4\n";
    write_file(out, &format!("{header}---\n{}", body.join("\n---\n")), false)
}

/// A failed request about node `name`: NotFound (bad input: exit 2 in the CLI) for a 404.
fn node_error(name: &str, doing: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => Error::NotFound(format!("no node named {name}")),
        e => Error::kube(format!("{doing} node {name}"), e),
    }
}

fn worker_index(name: &str) -> Option<usize> {
    name.strip_prefix("worker-")?.parse().ok()
}

/// A Node as kubeadm + a kubelet would register it, with kwok-friendly status.
fn node_object(
    name: &str,
    role: NodeRole,
    version: &Version,
    index: usize,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    taints: &[serde_json::Value],
) -> serde_json::Value {
    let zones = ["zone-a", "zone-b", "zone-c"];
    let mut all_labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("topology.kubernetes.io/region".to_string(), "local".to_string()),
        ("topology.kubernetes.io/zone".to_string(), zones[index % zones.len()].to_string()),
        ("node.kubernetes.io/instance-type".to_string(), "kwok.8x32".to_string()),
        (TESTBED_LABEL.to_string(), "true".to_string()),
    ]);
    if role == NodeRole::ControlPlane {
        all_labels.insert("node-role.kubernetes.io/control-plane".into(), String::new());
        all_labels.insert("node.kubernetes.io/exclude-from-external-load-balancers".into(), String::new());
    }
    all_labels.extend(labels.clone());
    let mut all_annotations = BTreeMap::from([
        ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
        ("kwok.x-k8s.io/node".to_string(), "fake".to_string()),
    ]);
    all_annotations.extend(annotations.clone());
    // 10.128.0.0/12 split into /24s: room for 4096 nodes of 254 pods.
    let cidr = format!("10.{}.{}.0/24", 128 + index / 256, index % 256);
    let resources = json!({
        "cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi", "hugepages-2Mi": "0",
    });
    let allocatable = json!({
        "cpu": "7800m", "memory": "31Gi", "pods": "110", "ephemeral-storage": "95Gi", "hugepages-2Mi": "0",
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": all_annotations},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": format!("kwok://{name}"), "taints": taints},
        "status": {
            "capacity": resources,
            "allocatable": allocatable,
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "",
                "containerRuntimeVersion": "containerd://2.1.4",
                "kernelVersion": "6.1.0-40-amd64",
                "kubeProxyVersion": version.git_version(),
                "kubeletVersion": version.git_version(),
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": "",
            },
        },
    })
}

async fn create_node(client: &Client, node: serde_json::Value) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let name = node["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let obj: Node = serde_json::from_value(node).map_err(|e| Error::Config(e.to_string()))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Err(Error::Config(format!("node {name} already exists")))
        }
        Err(e) => Err(Error::kube(format!("creating node {name}"), e)),
    }
}

/// Ready=True and no `node.kubernetes.io/not-ready` taint.
pub fn node_is_ready(n: &Node) -> bool {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
    ready && !tainted
}

/// A kubeconfig that trusts the testbed CA and authenticates with the admin certificate
/// (files referenced, never inlined), serialized from kube's own `Kubeconfig` so paths with
/// YAML-special characters stay paths.
fn kubeconfig_yaml(server: &str, pki: &Pki) -> Result<String, Error> {
    let (cluster, user) = ("refit-testbed", "refit-admin");
    let kc = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority: Some(pki.ca_cert.display().to_string()),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(pki.admin_cert.display().to_string()),
                client_key: Some(pki.admin_key.display().to_string()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: cluster.into(),
            context: Some(Context { cluster: cluster.into(), user: Some(user.into()), ..Context::default() }),
            ..NamedContext::default()
        }],
        current_context: Some(cluster.into()),
        ..Kubeconfig::default()
    };
    serde_saphyr::to_string(&kc).map_err(|e| Error::Config(format!("writing a kubeconfig: {e}")))
}

/// A kube client from a kubeconfig file, with timeouts so a dead endpoint fails fast.
pub(crate) async fn client_from_kubeconfig(path: &Path, context: Option<String>) -> Result<Client, Error> {
    let kc =
        Kubeconfig::read_from(path).map_err(|e| Error::State { path: path.into(), detail: e.to_string() })?;
    let opts = KubeConfigOptions { context, ..Default::default() };
    let config = Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| Error::State { path: path.into(), detail: e.to_string() })?;
    client_from_config(config)
}

fn client_from_config(mut config: Config) -> Result<Client, Error> {
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    config.default_retry = false;
    Client::try_from(config).map_err(|e| Error::kube("building client", e))
}

/// A client for a TLS endpoint of the testbed that is not an apiserver (etcd, KCM, scheduler).
async fn tls_client(url: &str, pki: &Pki) -> Result<Client, Error> {
    let path = pki
        .ca_cert
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("endpoint-{}.kubeconfig", url.rsplit(':').next().unwrap_or("0")));
    write_file(&path, &kubeconfig_yaml(url, pki)?, true)?;
    client_from_kubeconfig(&path, None).await
}

async fn get_text(client: &Client, path: &str) -> Result<String, String> {
    let req = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    client.request_text(req).await.map_err(|e| e.to_string())
}

/// A bare HTTP/1.0 GET for kwok's plain-HTTP health endpoint.
pub(crate) async fn plain_http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.map_err(|e| e.to_string())?;
    match buf.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") => {
            Ok(body.to_string())
        }
        _ => Err(buf.lines().next().unwrap_or("no response").to_string()),
    }
}

/// Polls `probe` every 100–500 ms until it succeeds or `timeout` passes.
pub(crate) async fn wait_until<F, Fut>(
    what: &str,
    log: &Path,
    timeout: Duration,
    probe: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    wait_while_alive(what, log, timeout, || true, probe).await
}

/// [`wait_until`] for a process of ours: gives up at once when `alive` says it exited (a
/// component that died on start — a port taken, a bad flag — must not cost the whole timeout),
/// naming the last lines of its log.
pub(crate) async fn wait_while_alive<A, F, Fut>(
    what: &str,
    log: &Path,
    timeout: Duration,
    mut alive: A,
    mut probe: F,
) -> Result<(), Error>
where
    A: FnMut() -> bool,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(10), probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "probe timed out".to_string(),
        };
        let exited = !alive();
        if exited || start.elapsed() > timeout {
            let detail = if exited {
                format!("the process exited; its log ends: {}", log_tail(log, 3))
            } else {
                last.chars().take(300).collect()
            };
            return Err(Error::NotReady {
                what: what.to_string(),
                seconds: start.elapsed().as_secs(),
                detail,
                log: log.display().to_string(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// The last `n` non-empty lines of a log, joined, at most 400 characters.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    let count = tail.chars().count();
    tail.chars().skip(count.saturating_sub(400)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_reads_back_with_every_path_as_written() {
        let p = |s: &str| PathBuf::from(s);
        let pki = Pki {
            ca_cert: p("/tmp/a dir: with #yaml/ca.crt"),
            admin_cert: p("/tmp/x/admin.crt"),
            admin_key: p("/tmp/x/admin.key"),
            sa_key: p("/tmp/x/sa.key"),
            sa_pub: p("/tmp/x/sa.pub"),
        };
        let text = kubeconfig_yaml("https://127.0.0.1:6443", &pki).unwrap();
        let kc = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("refit-testbed"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority.as_deref(), Some("/tmp/a dir: with #yaml/ca.crt"));
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate.as_deref(), Some("/tmp/x/admin.crt"));
        assert_eq!(user.client_key.as_deref(), Some("/tmp/x/admin.key"));
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!((ctx.cluster.as_str(), ctx.user.as_deref()), ("refit-testbed", Some("refit-admin")));
        assert!(text.contains("kind: Config") && text.contains("apiVersion: v1"), "{text}");
    }
}
