//! A kubeadm cluster on sandbox nodes, made the way an operator makes one: every node gets the
//! repository key and the minor's source line, `apt-get install kubeadm kubelet kubectl` at the
//! start release and `apt-mark hold`; the first control-plane node runs the real `kubeadm
//! init`, the others `kubeadm join --control-plane`, the workers `kubeadm join`. The node agent
//! stands in for each kubelet; kwok (on the host, with the admin kubeconfig) reports node status
//! and runs the ordinary pods. A TCP load balancer on the network's gateway is the
//! `controlPlaneEndpoint`, as in kubeadm's HA guide.
//!
//! The result is what refit's ssh action expects of a kubeadm cluster: nodes reachable over ssh
//! at their InternalIP, packages held, `/etc/kubernetes` as kubeadm writes it. The plan file for
//! `refit upgrade --action ssh` is written next to the kubeconfig.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use refit_core::Version;
use serde::{Deserialize, Serialize};

use super::agent::AgentConfig;
use super::config::{self, InitSpec, JoinSpec};
use super::host::{Hosts, HostsState, NodeHost};
use super::repo::{self, NodeCommand, RepoServer, Repository};
use crate::Error;
use crate::cache::{Cache, Component, TestbedVersions};
use crate::lb::LoadBalancer;
use crate::process::{Lifetime, Proc, free_ports, pid_alive};

/// How to start a kubeadm sandbox.
#[derive(Debug, Clone)]
pub struct KubeadmConfig {
    /// Where everything lives (state, kubeconfig, plan file, logs, node roots).
    pub dir: PathBuf,
    /// The release the cluster starts at.
    pub version: Version,
    /// Every release the package repository offers (the start release is added if missing).
    pub releases: Vec<Version>,
    /// Control-plane nodes (stacked etcd): 1 or 3.
    pub control_planes: usize,
    /// Worker nodes.
    pub workers: usize,
    /// Attached (tests: everything dies with the process) or detached (the sandbox).
    pub lifetime: Lifetime,
    /// How to start the node agent: program and leading arguments (`--config FILE` is
    /// appended), e.g. `[refit, sandbox, node-agent]`.
    pub agent_command: Vec<String>,
    /// Detached only: how to run the load balancer and repository server as processes
    /// (`[refit, sandbox, serve-lb]`, `[refit, sandbox, serve-repo]`).
    pub lb_command: Option<Vec<String>>,
    /// See `lb_command`.
    pub repo_command: Option<Vec<String>>,
}

/// One node of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNode {
    /// Node name (and hostname).
    pub name: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Whether it is a control-plane node (with stacked etcd).
    pub control_plane: bool,
}

/// What a kubeadm sandbox saves (`<dir>/kubeadm.json`) to be found again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubeadmState {
    /// The sandbox directory.
    pub dir: PathBuf,
    /// The release it started at.
    pub version: Version,
    /// Network, nodes and ssh files.
    pub hosts: HostsState,
    /// The nodes with their roles.
    pub nodes: Vec<SandboxNode>,
    /// The admin kubeconfig (a copy of the first control-plane node's admin.conf).
    pub kubeconfig: PathBuf,
    /// The plan file for `refit upgrade --action ssh -f`.
    pub plan_file: PathBuf,
    /// `http://<gateway>:<port>` of the package repository.
    pub repo_url: String,
    /// The control-plane endpoint (`<gateway>:6443`).
    pub endpoint: String,
    /// Host-side processes of a detached sandbox (kwok, lb, repo, agents), by name.
    pub pids: BTreeMap<String, i32>,
}

/// A running kubeadm sandbox.
#[derive(Debug)]
pub struct KubeadmCluster {
    state: KubeadmState,
    hosts: Hosts,
    procs: Vec<Proc>,
    lb: Option<LoadBalancer>,
    repo: Option<RepoServer>,
    lifetime: Lifetime,
}

const STATE_FILE: &str = "kubeadm.json";

impl KubeadmCluster {
    /// Builds the cluster (see the module docs). On failure everything started is torn down.
    pub async fn start(cfg: KubeadmConfig) -> Result<KubeadmCluster, Error> {
        if !matches!(cfg.control_planes, 1..=3) {
            return Err(Error::Config(format!("control planes must be 1 to 3, not {}", cfg.control_planes)));
        }
        if cfg.agent_command.is_empty() {
            return Err(Error::Config("no node agent command".into()));
        }
        let cache = Cache::from_env()?;
        let versions = TestbedVersions::from_env()?;
        let mut releases = cfg.releases.clone();
        if !releases.contains(&cfg.version) {
            releases.push(cfg.version.clone());
        }
        releases.sort();
        let mut needed = vec![Component::Etcd(versions.etcd.clone()), Component::Kwok(versions.kwok.clone())];
        for r in &releases {
            needed.push(Component::Kubernetes(r.clone()));
            needed.push(Component::KubernetesDebs(r.clone()));
        }
        cache.require(&needed)?;
        std::fs::create_dir_all(cfg.dir.join("logs")).map_err(|e| Error::io(&cfg.dir, e))?;
        let repository = Repository::create(&cfg.dir, &cache, &releases)?;
        let hosts = Hosts::create(&cfg.dir.join("hosts"), cfg.lifetime)?;
        let gateway = hosts.network().gateway();
        let endpoint = format!("{gateway}:6443");
        let mut cluster = KubeadmCluster {
            state: KubeadmState {
                dir: cfg.dir.clone(),
                version: cfg.version.clone(),
                hosts: hosts.state().clone(),
                nodes: Vec::new(),
                kubeconfig: cfg.dir.join("kubeconfig"),
                plan_file: cfg.dir.join("plan.yaml"),
                repo_url: String::new(),
                endpoint,
                pids: BTreeMap::new(),
            },
            hosts,
            procs: Vec::new(),
            lb: None,
            repo: None,
            lifetime: cfg.lifetime,
        };
        match cluster.boot(&cfg, &cache, &versions, &repository).await {
            Ok(()) => {
                if cfg.lifetime == Lifetime::Detached {
                    // The nodes outlive this process: hand them over to the saved state.
                    let saved = Hosts::attach(cluster.state.hosts.clone());
                    let _ = std::mem::replace(&mut cluster.hosts, saved).release();
                }
                Ok(cluster)
            }
            Err(e) => {
                cluster.stop();
                Err(e)
            }
        }
    }

    async fn boot(
        &mut self,
        cfg: &KubeadmConfig,
        cache: &Cache,
        versions: &TestbedVersions,
        repository: &Repository,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let gateway = self.hosts.network().gateway();
        let names: Vec<(String, bool)> = (1..=cfg.control_planes)
            .map(|i| (format!("cp-{i}"), true))
            .chain((1..=cfg.workers).map(|i| (format!("worker-{i}"), false)))
            .collect();
        // Node addresses are known before the nodes exist: the load balancer can start first.
        let cp_addresses: Vec<SocketAddr> = (0..cfg.control_planes)
            .map(|i| {
                let index = u8::try_from(i).map_err(|_| Error::Config("too many nodes".into()))?;
                Ok(SocketAddr::from((self.hosts.network().node_address(index)?, 6443)))
            })
            .collect::<Result<_, Error>>()?;
        self.start_lb(cfg, SocketAddr::from((gateway, 6443)), cp_addresses)?;
        self.start_repo(cfg, gateway)?;
        tracing::info!("network, load balancer and repository ready in {:?}", started.elapsed());

        for (name, control_plane) in &names {
            let t = Instant::now();
            let host = self.hosts.add_node(name)?.clone();
            host.write_file("/usr/local/bin/systemctl", super::systemctl::SCRIPT.as_bytes(), 0o755)?;
            for c in repo::node_install_commands(&self.state.repo_url, &cfg.version, repository.keyring()) {
                self.run_logged(&host, &format!("install-{name}"), &c)?;
            }
            let agent = AgentConfig {
                node: name.clone(),
                address: host.address.to_string(),
                cache: cache.root().to_path_buf(),
                etcd: versions.etcd.clone(),
                log_dir: self.state.dir.join("logs").join(name),
                healthz_port: 10248,
            };
            let agent_file = host.dir.join("agent.json");
            let json = serde_json::to_string_pretty(&agent).map_err(|e| Error::Config(e.to_string()))?;
            crate::pki::write_file(&agent_file, &json, true)?;
            let mut args: Vec<String> = cfg.agent_command.iter().skip(1).cloned().collect();
            args.push("--config".into());
            args.push(agent_file.display().to_string());
            let program = cfg.agent_command.first().cloned().unwrap_or_default();
            let log = self.state.dir.join("logs").join(format!("agent-{name}.log"));
            let env = [("RUST_LOG".to_string(), "warn,refit_testbed=info".to_string())];
            let proc = host.spawn(&format!("agent-{name}"), &program, &args, &env, &log, cfg.lifetime)?;
            self.keep(format!("agent-{name}"), proc);
            self.state.nodes.push(SandboxNode {
                name: name.clone(),
                address: host.address,
                control_plane: *control_plane,
            });
            tracing::info!(node = %name, "node host with packages at {} ready in {:?}", cfg.version, t.elapsed());
        }
        self.state.hosts = self.hosts.state().clone();
        self.save()?;

        let first = self.node_host("cp-1")?;
        let token = config::bootstrap_token(&rand_bytes::<22>()?);
        let certificate_key = hex::encode(rand_bytes::<32>()?);
        let init = config::init_config(&InitSpec {
            node: first.name.clone(),
            address: first.address.to_string(),
            version: cfg.version.clone(),
            control_plane_endpoint: self.state.endpoint.clone(),
            token: token.clone(),
            certificate_key: certificate_key.clone(),
        });
        first.write_file("/var/lib/refit/kubeadm-init.yaml", init.as_bytes(), 0o600)?;
        let t = Instant::now();
        self.kubeadm(
            &first,
            "init",
            &["init", "--config", "/var/lib/refit/kubeadm-init.yaml", "--upload-certs"],
        )?;
        tracing::info!("kubeadm init on cp-1 took {:?}", t.elapsed());
        let admin = first.read_file("/etc/kubernetes/admin.conf")?;
        let admin = String::from_utf8(admin).map_err(|e| Error::Config(format!("admin.conf: {e}")))?;
        crate::pki::write_file(&self.state.kubeconfig, &admin, true)?;
        self.start_kwok(cfg, cache, versions)?;

        let join = self.kubeadm(&first, "token", &["token", "create", "--print-join-command"])?;
        let ca_cert_hash = config::ca_hash_from_join_command(&join)
            .ok_or_else(|| Error::Config(format!("no CA hash in kubeadm's join command: {join}")))?;
        for node in self.state.nodes.clone().iter().skip(1) {
            let host = self.node_host(&node.name)?;
            let spec = JoinSpec {
                node: node.name.clone(),
                address: node.address.to_string(),
                control_plane_endpoint: self.state.endpoint.clone(),
                token: token.clone(),
                ca_cert_hash: ca_cert_hash.clone(),
                certificate_key: node.control_plane.then(|| certificate_key.clone()),
            };
            host.write_file(
                "/var/lib/refit/kubeadm-join.yaml",
                config::join_config(&spec).as_bytes(),
                0o600,
            )?;
            let t = Instant::now();
            self.kubeadm(&host, "join", &["join", "--config", "/var/lib/refit/kubeadm-join.yaml"])?;
            tracing::info!(node = %node.name, "kubeadm join took {:?}", t.elapsed());
        }
        self.write_plan_file()?;
        self.save()?;
        self.wait_nodes_ready(Duration::from_secs(180)).await?;
        tracing::info!("kubeadm sandbox ready in {:?}", started.elapsed());
        Ok(())
    }

    fn keep(&mut self, name: String, proc: Proc) {
        match self.lifetime {
            Lifetime::Attached => self.procs.push(proc),
            Lifetime::Detached => {
                self.state.pids.insert(name, proc.release());
            }
        }
    }

    fn start_lb(
        &mut self,
        cfg: &KubeadmConfig,
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
    ) -> Result<(), Error> {
        match (&cfg.lifetime, cfg.lb_command.as_deref()) {
            (Lifetime::Detached, Some([program, rest @ ..])) => {
                let mut args: Vec<String> = rest.to_vec();
                args.push(format!("--listen={listen}"));
                args.extend(backends.iter().map(|b| format!("--backend={b}")));
                let log = self.state.dir.join("logs").join("lb.log");
                let proc = Proc::spawn("lb", Path::new(program), &args, &[], &log, Lifetime::Detached)?;
                self.state.pids.insert("lb".into(), proc.release());
            }
            (Lifetime::Detached, _) => {
                return Err(Error::Config("a detached kubeadm sandbox needs an lb command".into()));
            }
            (Lifetime::Attached, _) => self.lb = Some(LoadBalancer::start(listen, backends)?),
        }
        Ok(())
    }

    fn start_repo(&mut self, cfg: &KubeadmConfig, gateway: Ipv4Addr) -> Result<(), Error> {
        let root = self.state.dir.join("repo");
        let addr = match (&cfg.lifetime, cfg.repo_command.as_deref()) {
            (Lifetime::Detached, Some([program, rest @ ..])) => {
                let port = free_port_on(gateway)?;
                let addr = SocketAddr::from((gateway, port));
                let mut args: Vec<String> = rest.to_vec();
                args.extend([
                    "--root".to_string(),
                    root.display().to_string(),
                    "--listen".into(),
                    addr.to_string(),
                ]);
                let log = self.state.dir.join("logs").join("repo.log");
                let proc = Proc::spawn("repo", Path::new(program), &args, &[], &log, Lifetime::Detached)?;
                self.state.pids.insert("repo".into(), proc.release());
                addr
            }
            (Lifetime::Detached, _) => {
                return Err(Error::Config(
                    "a detached kubeadm sandbox needs a repository server command".into(),
                ));
            }
            (Lifetime::Attached, _) => {
                let server = RepoServer::start(&root, SocketAddr::from((gateway, 0)))?;
                let addr = server.addr();
                self.repo = Some(server);
                addr
            }
        };
        self.state.repo_url = format!("http://{addr}");
        Ok(())
    }

    fn start_kwok(
        &mut self,
        cfg: &KubeadmConfig,
        cache: &Cache,
        versions: &TestbedVersions,
    ) -> Result<(), Error> {
        let dir = cache.entry_dir(&Component::Kwok(versions.kwok.clone()));
        let config = self.state.dir.join("kwok.yaml");
        // The testbed's kwok configuration, with mirror pods left to the node agents.
        crate::testbed::write_kwok_config(&dir.join("kwok.yaml"), &config)?;
        let stages = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
        crate::pki::write_file(&config, &config::kwok_stages_without_mirror_pods(&stages), false)?;
        let port = free_ports(1)?.first().copied().ok_or_else(|| Error::Config("no free port".into()))?;
        let args = vec![
            format!("--kubeconfig={}", self.state.kubeconfig.display()),
            format!("--config={}", config.display()),
            "--manage-all-nodes=true".to_string(),
            "--node-lease-duration-seconds=40".to_string(),
            "--cidr=10.128.0.0/12".to_string(),
            "--node-ip=10.0.0.1".to_string(),
            format!("--server-address=127.0.0.1:{port}"),
        ];
        let log = self.state.dir.join("logs").join("kwok.log");
        let proc = Proc::spawn("kwok", &dir.join("kwok"), &args, &[], &log, cfg.lifetime)?;
        self.keep("kwok".into(), proc);
        Ok(())
    }

    /// Runs kubeadm on `host` with the environment kubeadm will also have over ssh (kubeadm
    /// copies proxy variables into the manifests: the same environment keeps them identical),
    /// output to `logs/kubeadm-<what>-<node>.log`; returns stdout.
    fn kubeadm(&self, host: &NodeHost, what: &str, args: &[&str]) -> Result<String, Error> {
        let log = self.state.dir.join("logs").join(format!("kubeadm-{what}-{}.log", host.name));
        let mut cmd = host.command("kubeadm", args);
        cmd.env_clear().env("PATH", NODE_PATH).env("HOME", "/root").stdin(Stdio::null());
        let out = cmd
            .output()
            .map_err(|e| Error::Process { name: format!("kubeadm {what}"), detail: e.to_string() })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        let _ = std::fs::write(&log, format!("$ kubeadm {}\n{text}\n--- stderr\n{err}", args.join(" ")));
        if !out.status.success() {
            let tail: Vec<&str> = err.lines().rev().take(8).collect();
            return Err(Error::Process {
                name: format!("kubeadm {what} on {}", host.name),
                detail: format!(
                    "{}: {} (log: {})",
                    out.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                    log.display()
                ),
            });
        }
        text.truncate(text.trim_end().len());
        Ok(text)
    }

    fn run_logged(&self, host: &NodeHost, what: &str, c: &NodeCommand) -> Result<(), Error> {
        let log = self.state.dir.join("logs").join(format!("{what}.log"));
        let mut cmd = host.command(&c.program, &c.args);
        cmd.env_clear().env("PATH", NODE_PATH).env("HOME", "/root");
        cmd.envs(c.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(if c.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child =
            cmd.spawn().map_err(|e| Error::Process { name: c.program.clone(), detail: e.to_string() })?;
        if let (Some(input), Some(mut stdin)) = (&c.stdin, child.stdin.take()) {
            use std::io::Write;
            stdin
                .write_all(input)
                .map_err(|e| Error::Process { name: c.program.clone(), detail: e.to_string() })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Process { name: c.program.clone(), detail: e.to_string() })?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(&log, e))?;
        use std::io::Write;
        let _ = writeln!(
            f,
            "$ {c}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::Process {
                name: format!("{} on {}", c.program, host.name),
                detail: format!(
                    "{}: {} (log: {})",
                    out.status,
                    err.lines().last().unwrap_or(""),
                    log.display()
                ),
            });
        }
        Ok(())
    }

    fn write_plan_file(&self) -> Result<(), Error> {
        let ssh = self.hosts.ssh();
        let ignored: Vec<String> = config::UPGRADE_IGNORED_PREFLIGHT.iter().map(|s| s.to_string()).collect();
        let plan = serde_json::json!({
            "action": {
                "type": "ssh",
                "user": ssh.user,
                "sudo": false,
                "configFile": ssh.config_file,
                "knownHostsFile": ssh.known_hosts_file,
                "identityFile": ssh.identity_file,
                "ignorePreflightErrors": ignored,
            },
            "accept": sandbox_accepts(&self.state.nodes),
        });
        let text = format!(
            "# refit's plan file for this kubeadm sandbox: refit upgrade --to V --action ssh -f {}\n{}\n",
            self.state.plan_file.display(),
            serde_json::to_string_pretty(&plan).map_err(|e| Error::Config(e.to_string()))?
        );
        crate::pki::write_file(&self.state.plan_file, &text, false)
    }

    async fn wait_nodes_ready(&self, timeout: Duration) -> Result<(), Error> {
        let client = crate::testbed::client_from_kubeconfig(&self.state.kubeconfig, None).await?;
        let nodes: Api<Node> = Api::all(client);
        let start = Instant::now();
        let want = self.state.nodes.len();
        loop {
            let last = match nodes.list(&ListParams::default()).await {
                Ok(list) => {
                    let ready = list.items.iter().filter(|n| crate::testbed::node_is_ready(n)).count();
                    if ready >= want {
                        return Ok(());
                    }
                    format!("{ready} of {want} nodes Ready")
                }
                Err(e) => e.to_string(),
            };
            if start.elapsed() > timeout {
                return Err(Error::NotReady {
                    what: "kubeadm sandbox nodes".into(),
                    seconds: timeout.as_secs(),
                    detail: last,
                    log: self.state.dir.join("logs").display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn save(&self) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| Error::Config(e.to_string()))?;
        crate::pki::write_file(&self.state.dir.join(STATE_FILE), &text, true)
    }

    /// A detached sandbox found again from its directory (dropping it leaves it running).
    pub fn attach(dir: &Path) -> Result<KubeadmCluster, Error> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state: KubeadmState = serde_json::from_str(&text)
            .map_err(|e| Error::State { path: path.clone(), detail: e.to_string() })?;
        let hosts = Hosts::attach(state.hosts.clone());
        Ok(KubeadmCluster {
            state,
            hosts,
            procs: Vec::new(),
            lb: None,
            repo: None,
            lifetime: Lifetime::Detached,
        })
    }

    /// Whether `dir` holds a kubeadm sandbox.
    pub fn exists(dir: &Path) -> bool {
        dir.join(STATE_FILE).exists()
    }

    /// The saved state.
    pub fn state(&self) -> &KubeadmState {
        &self.state
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    /// The plan file for `refit upgrade --action ssh`.
    pub fn plan_file(&self) -> &Path {
        &self.state.plan_file
    }

    /// The nodes.
    pub fn nodes(&self) -> &[SandboxNode] {
        &self.state.nodes
    }

    /// The host of node `name`.
    pub fn node_host(&self, name: &str) -> Result<NodeHost, Error> {
        self.hosts.node(name).cloned().ok_or_else(|| Error::NotFound(format!("no sandbox node named {name}")))
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        crate::testbed::client_from_kubeconfig(&self.state.kubeconfig, None).await
    }

    /// Runs a command inside node `name` (with the node's PATH), returning stdout.
    pub fn exec(&self, name: &str, program: &str, args: &[&str]) -> Result<String, Error> {
        let host = self.node_host(name)?;
        let mut cmd = host.command(program, args);
        cmd.env_clear().env("PATH", NODE_PATH).env("HOME", "/root").stdin(Stdio::null());
        let out = cmd.output().map_err(|e| Error::Process { name: program.into(), detail: e.to_string() })?;
        if !out.status.success() {
            return Err(Error::Process {
                name: format!("{program} on {name}"),
                detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops everything: host-side processes, the nodes (every process in their namespaces,
    /// their mounts) and the network. Idempotent.
    pub fn stop(&mut self) {
        for p in self.procs.iter_mut() {
            p.stop(Duration::from_secs(5));
        }
        self.procs.clear();
        for (name, pid) in std::mem::take(&mut self.state.pids) {
            if pid_alive(pid) {
                let mut p = Proc::adopt(&name, pid);
                p.stop(Duration::from_secs(5));
            }
        }
        if let Err(e) = self.hosts.destroy() {
            tracing::warn!("tearing down the sandbox nodes: {e}");
        }
        self.lb = None;
        self.repo = None;
        let _ = std::fs::remove_file(self.state.dir.join(STATE_FILE));
    }
}

impl Drop for KubeadmCluster {
    fn drop(&mut self) {
        // An attached cluster (tests) never outlives its owner; a detached one is left running.
        if self.lifetime == Lifetime::Attached {
            self.stop();
        }
    }
}

/// The PATH of a root login on a node (sshd's default for root, with the systemctl stand-in in
/// /usr/local/bin first).
const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Secret random bytes (the bootstrap token, the certificate key): a failure is an error,
/// never a predictable token.
fn rand_bytes<const N: usize>() -> Result<[u8; N], Error> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut out = [0u8; N];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut out)).map_err(|e| Error::io(path, e))?;
    Ok(out)
}

fn free_port_on(ip: Ipv4Addr) -> Result<u16, Error> {
    let l = std::net::TcpListener::bind((ip, 0))
        .map_err(|e| Error::Process { name: "port".into(), detail: format!("bind {ip}: {e}") })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Process { name: "port".into(), detail: e.to_string() })
}

/// The availability blockers a small sandbox has by construction (Kismatic blocks an online
/// upgrade of a lone etcd member, a lone control plane, a lone worker): accepted in the
/// sandbox's plan file so `refit upgrade -f` works on it as on any cluster whose operator
/// took those risks on knowingly — and only those its topology has.
fn sandbox_accepts(nodes: &[SandboxNode]) -> Vec<&'static str> {
    let cps = nodes.iter().filter(|n| n.control_plane).count();
    let workers = nodes.len().saturating_sub(cps);
    let mut out = Vec::new();
    if cps < 3 {
        out.push("etcd-members");
    }
    if cps < 2 {
        out.push("control-plane-count");
    }
    if workers < 2 {
        out.push("worker-count");
    }
    out
}
