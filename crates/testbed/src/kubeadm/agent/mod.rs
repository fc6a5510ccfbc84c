//! The node agent: what kubeadm needs from a kubelet, on a sandbox node that has no container
//! runtime (reference/kubeadm.md §0). kwok still reports the node's status and runs ordinary
//! pods; the agent does the rest:
//!
//! - serves the kubelet health endpoint (`127.0.0.1:10248/healthz`), which `kubeadm init/join`
//!   wait for;
//! - runs the static pods of `/etc/kubernetes/manifests` as processes of the matching testbed
//!   binaries, inside the node's namespaces (it runs there itself), restarts them when a manifest
//!   changes (kubeadm renames a new manifest into place) and when they crash (with backoff);
//! - turns `bootstrap-kubelet.conf` into `kubelet.conf` through a real CSR (TLS bootstrap);
//! - registers the Node with the installed kubelet's version and posts a mirror pod per static
//!   pod with a content hash, Running once the manifest's probe passes;
//! - on SIGHUP ("systemctl restart kubelet", through the node's systemctl stand-in) reads the
//!   kubelet version again and reports it on the Node, as a restarted kubelet would.
//!
//! The manifest directory is polled every second rather than watched with inotify: kubeadm's
//! upgrade waits up to 5 minutes for a hash change, so a second is invisible, and a poll also
//! sees what a watch misses across the agent's own restarts.

mod bootstrap;
pub mod objects;
mod probe;
pub mod static_pods;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use refit_core::Version;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::Error;
use crate::cache::Cache;
use crate::process::{Lifetime, Proc};
use objects::{CONFIG_MIRROR, NodeFacts};
use static_pods::{Binaries, CacheBinaries, StaticPod};

/// Where the node agent's pid is written (in the node's private /run); the node's `systemctl`
/// stand-in signals it.
pub const PID_FILE: &str = "/run/refit-node-agent.pid";

/// Everything the agent needs to know; written as JSON by the sandbox and passed with
/// `--config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Node name (the node's hostname).
    pub node: String,
    /// The node's address.
    pub address: String,
    /// The testbed cache root (binaries of the static pods).
    pub cache: PathBuf,
    /// The etcd release that runs every etcd image.
    pub etcd: Version,
    /// Where static pod logs go.
    pub log_dir: PathBuf,
    /// Port of the kubelet health endpoint on 127.0.0.1 (kubelet default 10248).
    pub healthz_port: u16,
}

/// Files the agent reads inside the node (kubeadm's and the kubelet package's paths).
const MANIFESTS: &str = "/etc/kubernetes/manifests";
const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
const BOOTSTRAP_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
const KUBELET_BINARY: &str = "/usr/bin/kubelet";
const FLAGS_ENV: &str = "/var/lib/kubelet/kubeadm-flags.env";

/// A static pod the agent runs.
struct Running {
    pod: StaticPod,
    proc: Option<Proc>,
    started_at: String,
    healthy: bool,
    last_probe: Option<Instant>,
    restarts: u32,
    next_start: Instant,
}

/// What the agent last wrote for a mirror pod.
struct Mirror {
    hash: String,
    running: bool,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<PathBuf, Running>,
    client: Option<Client>,
    bootstrap: Option<JoinHandle<Result<(), String>>>,
    node_uid: Option<String>,
    node_synced: bool,
    facts: Option<NodeFacts>,
    mirrors: BTreeMap<String, Mirror>,
}

/// Runs the agent until SIGTERM or SIGINT; then stops its static pods.
pub async fn run(config: AgentConfig) -> Result<(), Error> {
    std::fs::write(PID_FILE, std::process::id().to_string())
        .map_err(|e| Error::io(Path::new(PID_FILE), e))?;
    std::fs::create_dir_all(&config.log_dir).map_err(|e| Error::io(&config.log_dir, e))?;
    let healthz: SocketAddr = ([127, 0, 0, 1], config.healthz_port).into();
    tokio::spawn(serve_healthz(healthz));
    let sig = |k: SignalKind| {
        signal(k).map_err(|e| Error::Process { name: "node-agent".into(), detail: e.to_string() })
    };
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let binaries = CacheBinaries { cache: Cache::at(config.cache.clone()), etcd: config.etcd.clone() };
    let mut st = State { facts: read_facts(&config), ..Default::default() };
    tracing::info!(node = %config.node, kubelet = ?st.facts.as_ref().map(|f| &f.kubelet_version), "node agent started");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hup.recv() => {
                st.facts = read_facts(&config);
                st.node_synced = false;
                tracing::info!(kubelet = ?st.facts.as_ref().map(|f| &f.kubelet_version), "kubelet restarted");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        reconcile_processes(&config, &binaries, &mut st).await;
        if let Err(e) = sync_api(&config, &mut st).await {
            tracing::debug!("API sync: {e}");
        }
    }
    tokio::task::block_in_place(|| {
        for r in st.pods.values_mut() {
            if let Some(p) = r.proc.as_mut() {
                p.stop(Duration::from_secs(10));
            }
        }
    });
    let _ = std::fs::remove_file(PID_FILE);
    Ok(())
}

/// The kubelet's facts as the installed package and kubeadm left them.
fn read_facts(config: &AgentConfig) -> Option<NodeFacts> {
    let out = std::process::Command::new(KUBELET_BINARY).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().find(|w| w.starts_with('v'))?.to_string();
    let taints =
        std::fs::read_to_string(FLAGS_ENV).map(|s| objects::taints_from_flags(&s)).unwrap_or_default();
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim().to_string();
    Some(NodeFacts {
        name: config.node.clone(),
        address: config.address.clone(),
        kubelet_version: version,
        taints,
        machine_id,
    })
}

async fn serve_healthz(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot serve the kubelet health endpoint on {addr}: {e}");
            return;
        }
    };
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
        });
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()
}

/// Starts, restarts and stops processes to match the manifests; probes the ones not yet up.
async fn reconcile_processes(config: &AgentConfig, binaries: &dyn Binaries, st: &mut State) {
    let desired: BTreeMap<PathBuf, StaticPod> =
        static_pods::scan(Path::new(MANIFESTS), &config.node, binaries)
            .into_iter()
            .map(|p| (p.file.clone(), p))
            .collect();
    let gone: Vec<PathBuf> = st
        .pods
        .iter()
        .filter(|(file, r)| desired.get(*file).is_none_or(|d| d.hash != r.pod.hash))
        .map(|(f, _)| f.clone())
        .collect();
    for file in gone {
        if let Some(mut r) = st.pods.remove(&file) {
            tracing::info!(pod = %r.pod.name, "manifest changed or removed: stopping");
            if let Some(p) = r.proc.as_mut() {
                tokio::task::block_in_place(|| p.stop(Duration::from_secs(10)));
            }
        }
    }
    let now = Instant::now();
    for (file, pod) in desired {
        st.pods.entry(file).or_insert_with(|| {
            if let Err(why) = &pod.run {
                tracing::error!(pod = %pod.name, "cannot run static pod: {why}");
            }
            Running {
                pod,
                proc: None,
                started_at: String::new(),
                healthy: false,
                last_probe: None,
                restarts: 0,
                next_start: now,
            }
        });
    }
    for r in st.pods.values_mut() {
        let Ok(program) = &r.pod.run else { continue };
        let alive = r.proc.as_mut().is_some_and(|p| p.is_running());
        if !alive {
            if r.proc.take().is_some() {
                r.restarts = r.restarts.saturating_add(1);
                r.healthy = false;
                let backoff = Duration::from_secs(1u64 << r.restarts.min(4)).min(Duration::from_secs(20));
                r.next_start = now + backoff;
                tracing::warn!(pod = %r.pod.name, restarts = r.restarts, "static pod exited; restarting in {backoff:?}");
            }
            if now >= r.next_start {
                let log = config.log_dir.join(format!("{}.log", r.pod.name));
                match Proc::spawn(
                    &r.pod.name,
                    &program.binary,
                    &program.args,
                    &program.env,
                    &log,
                    Lifetime::Attached,
                ) {
                    Ok(p) => {
                        tracing::info!(pod = %r.pod.name, pid = p.pid, binary = %program.binary.display(), "started");
                        r.proc = Some(p);
                        r.started_at = now_rfc3339();
                        r.last_probe = None;
                    }
                    Err(e) => {
                        tracing::error!(pod = %r.pod.name, "{e}");
                        r.next_start = now + Duration::from_secs(5);
                    }
                }
            }
            continue;
        }
        let due = r.last_probe.is_none_or(|t| {
            t.elapsed() >= if r.healthy { Duration::from_secs(10) } else { Duration::from_millis(900) }
        });
        if due {
            r.last_probe = Some(Instant::now());
            r.healthy = match static_pods::probe(&r.pod.manifest) {
                None => true,
                Some(p) => match probe::check(&p, &config.address).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(pod = %r.pod.name, "probe: {e}");
                        false
                    }
                },
            };
        }
    }
}

fn kube_err(what: &str, e: kube::Error) -> String {
    format!("{what}: {e}")
}

/// Registers the node and keeps the mirror pods in line with the running static pods.
async fn sync_api(config: &AgentConfig, st: &mut State) -> Result<(), String> {
    if st.client.is_none() {
        if Path::new(KUBELET_CONF).exists() {
            let client = crate::testbed::client_from_kubeconfig(Path::new(KUBELET_CONF), None)
                .await
                .map_err(|e| e.to_string())?;
            st.client = Some(client);
        } else if let Some(handle) = st.bootstrap.take() {
            if handle.is_finished() {
                match handle.await {
                    Ok(Ok(())) => tracing::info!("TLS bootstrap done: {KUBELET_CONF} written"),
                    Ok(Err(e)) => tracing::warn!("TLS bootstrap failed: {e}; retrying"),
                    Err(e) => tracing::warn!("TLS bootstrap task: {e}"),
                }
            } else {
                st.bootstrap = Some(handle);
            }
            return Ok(());
        } else if Path::new(BOOTSTRAP_CONF).exists() {
            let node = config.node.clone();
            st.bootstrap = Some(tokio::spawn(async move {
                bootstrap::bootstrap(
                    &node,
                    Path::new(BOOTSTRAP_CONF),
                    Path::new(KUBELET_CONF),
                    Duration::from_secs(300),
                )
                .await
            }));
            return Ok(());
        } else {
            return Ok(());
        }
    }
    let Some(client) = st.client.clone() else { return Ok(()) };
    let Some(facts) = st.facts.clone() else { return Ok(()) };
    let nodes: Api<Node> = Api::all(client.clone());
    if !st.node_synced {
        let uid = match nodes.get_opt(&config.node).await.map_err(|e| kube_err("reading the node", e))? {
            None => {
                let node: Node = serde_json::from_value(objects::node(&facts)).map_err(|e| e.to_string())?;
                let created = nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .map_err(|e| kube_err("registering the node", e))?;
                tracing::info!(version = %facts.kubelet_version, "node registered");
                created.metadata.uid
            }
            Some(n) => {
                let patch = serde_json::json!({"status": objects::node_status(&facts)});
                nodes
                    .patch_status(&config.node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| kube_err("updating the node status", e))?;
                tracing::info!(version = %facts.kubelet_version, "node status updated");
                n.metadata.uid
            }
        };
        st.node_uid = uid;
        st.node_synced = true;
    }
    let Some(node_uid) = st.node_uid.clone() else { return Ok(()) };
    // What the API has on this node. A node may list pods bound to it (by field selector) but
    // not GET a pod that does not exist yet (the node authorizer finds no relationship), so
    // the list is the one read, as the kubelet's own pod watch is.
    let all: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={}", config.node));
    let listed = all.list(&lp).await.map_err(|e| kube_err("listing the node's pods", e))?;
    let mut existing: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for p in listed.items {
        let Some(ann) = p.metadata.annotations.as_ref() else { continue };
        if !ann.contains_key(CONFIG_MIRROR) {
            continue;
        }
        let hash = ann.get(objects::CONFIG_HASH).cloned();
        existing.insert(p.metadata.name.clone().unwrap_or_default(), (p.metadata.uid.clone(), hash));
    }
    let mut wanted = BTreeMap::new();
    for r in st.pods.values() {
        if r.pod.run.is_err() {
            continue;
        }
        let name = objects::mirror_name(&r.pod, &config.node);
        let ns =
            r.pod.manifest.pointer("/metadata/namespace").and_then(|v| v.as_str()).unwrap_or("kube-system");
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let running = r.healthy && r.proc.is_some();
        wanted.insert(name.clone(), ());
        match existing.get(&name) {
            Some((_, Some(hash))) if *hash == r.pod.hash => {}
            Some((uid, _)) => {
                delete_mirror(&pods, &name, uid.clone()).await?;
                st.mirrors.remove(&name);
                create_mirror(&pods, r, config, &node_uid).await?;
            }
            None => {
                st.mirrors.remove(&name);
                create_mirror(&pods, r, config, &node_uid).await?;
            }
        }
        if st.mirrors.get(&name).is_some_and(|m| m.hash == r.pod.hash && m.running == running) {
            continue;
        }
        let status = objects::mirror_status(&r.pod, &config.address, running, &r.started_at, r.restarts);
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| kube_err("updating a mirror pod's status", e))?;
        st.mirrors.insert(name, Mirror { hash: r.pod.hash.clone(), running });
    }
    // Mirror pods no static pod stands behind any more.
    for (name, (uid, _)) in existing {
        if !wanted.contains_key(&name) {
            delete_mirror(&Api::namespaced(client.clone(), "kube-system"), &name, uid).await?;
            st.mirrors.remove(&name);
        }
    }
    Ok(())
}

async fn create_mirror(
    pods: &Api<Pod>,
    r: &Running,
    config: &AgentConfig,
    node_uid: &str,
) -> Result<(), String> {
    let pod: Pod =
        serde_json::from_value(objects::mirror_pod(&r.pod, &config.node, node_uid, &now_rfc3339()))
            .map_err(|e| e.to_string())?;
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => Ok(()),
        // Still being deleted: the next tick tries again.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Err(format!("mirror pod {} still exists", objects::mirror_name(&r.pod, &config.node)))
        }
        Err(e) => Err(kube_err("creating a mirror pod", e)),
    }
}

async fn delete_mirror(pods: &Api<Pod>, name: &str, uid: Option<String>) -> Result<(), String> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid, resource_version: None }),
        ..Default::default()
    };
    match pods.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(kube_err("deleting a mirror pod", e)),
    }
}

/// The agent's command line: `--config FILE` (JSON [`AgentConfig`]). Logs go to stderr
/// (`RUST_LOG`, default info). Shared by `refit-node-agent` and `refit sandbox node-agent`.
pub fn main_with_args(args: Vec<String>) -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = match args.as_slice() {
        [flag, path] if flag == "--config" => std::fs::read_to_string(path)
            .map_err(|e| format!("{path}: {e}"))
            .and_then(|s| serde_json::from_str::<AgentConfig>(&s).map_err(|e| format!("{path}: {e}"))),
        _ => Err("usage: refit-node-agent --config FILE".to_string()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
