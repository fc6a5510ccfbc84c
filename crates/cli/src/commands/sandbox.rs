//! `refit sandbox ...`: a detached testbed kept running for a person.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use refit_core::{Version, VersionRequest};
use refit_testbed::kubeadm::cluster::KubeadmCluster;
use refit_testbed::sandbox::{
    KubeadmSandbox, NodeUpgrade, Progress, Refusal, SandboxError, SandboxKind, SandboxStart, SandboxStatus,
};
use refit_testbed::{Cache, Testbed, TestbedVersions, WorkerSpec};
use serde::Serialize;

use crate::commands::build::BuildView;

use crate::args::{
    AddNodeArgs, NodeAgentArgs, NodeArgs, SandboxDir, ServeLbArgs, ServeRepoArgs, UpArgs, UpgradeNodeArgs,
    Workloads,
};
use crate::output::{Format, print_structured, table, usage};

/// The sandbox directory: `--dir`, `REFIT_SANDBOX_DIR`, else `<state dir>/refit/sandbox`.
pub fn sandbox_dir(dir: &SandboxDir) -> anyhow::Result<PathBuf> {
    if let Some(d) = &dir.dir {
        return Ok(d.clone());
    }
    let base = dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .ok_or_else(|| usage("no state directory for the sandbox: pass --dir or set REFIT_SANDBOX_DIR"))?;
    Ok(base.join("refit").join("sandbox"))
}

/// Resolves `1.36` or `1.36.4` against the configured testbed releases.
pub fn resolve_version(input: &str, versions: &TestbedVersions) -> anyhow::Result<Version> {
    let request: VersionRequest = input.parse().map_err(|e| usage(format!("{e}")))?;
    let configured = || versions.kubernetes.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
    match request {
        VersionRequest::Exact(v) => {
            let v = v.release();
            let built = Cache::from_env()?.built_kubernetes();
            if versions.kubernetes.contains(&v) || built.contains(&v) {
                Ok(v)
            } else {
                Err(usage(format!(
                    "Kubernetes {v} is not in the testbed set ({}); add it to REFIT_TESTBED_VERSIONS to build it",
                    configured()
                )))
            }
        }
        VersionRequest::Minor(m) => versions.kubernetes_for_minor(m).cloned().ok_or_else(|| {
            usage(format!(
                "no {m}.x release in the testbed set ({}); add one to REFIT_TESTBED_VERSIONS",
                configured()
            ))
        }),
    }
}

/// A sandbox operation's [`Progress`] as people see it: each build as `refit sandbox build`
/// shows it, a spinner for each phase (hidden when quiet), notices on stderr.
struct SandboxView {
    build_style: ProgressStyle,
    phase_style: ProgressStyle,
    quiet: bool,
    build: Option<BuildView>,
    phase: Option<ProgressBar>,
}

impl SandboxView {
    fn new(quiet: bool) -> anyhow::Result<SandboxView> {
        Ok(SandboxView {
            build_style: BuildView::style()?,
            phase_style: ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")?,
            quiet,
            build: None,
            phase: None,
        })
    }

    fn show(&mut self, p: Progress<'_>) {
        match p {
            Progress::Building => self.build = Some(BuildView::new(self.build_style.clone())),
            Progress::Build(e) => {
                if let Some(build) = &mut self.build {
                    build.show(e);
                }
            }
            Progress::Phase(msg) => {
                let (style, quiet) = (&self.phase_style, self.quiet);
                let bar = self.phase.get_or_insert_with(|| {
                    if quiet {
                        return ProgressBar::hidden();
                    }
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(style.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(msg.to_string());
            }
            Progress::Idle => {
                if let Some(build) = self.build.take() {
                    build.finish();
                }
                if let Some(bar) = self.phase.take() {
                    bar.finish_and_clear();
                }
            }
            Progress::ApiServerDown { node, error } => {
                eprintln!("the API server does not answer ({error}); finishing {node}'s upgrade first");
            }
        }
    }
}

/// A sandbox refusal as the one usage line that names this CLI's flags (exit 2).
fn refused(r: Refusal) -> anyhow::Error {
    usage(match r {
        Refusal::ControlPlanes(n) => format!("--control-plane must be 1, 2 or 3, not {n}"),
        Refusal::Workers { kind: SandboxKind::Testbed, asked, at_most } => {
            format!("--workers {asked} is more than one testbed can simulate here (at most {at_most})")
        }
        Refusal::Workers { kind: SandboxKind::Kubeadm, asked, at_most } => format!(
            "--workers {asked} is more kubeadm nodes than one machine holds here (at most {at_most}; each runs sshd and an agent)"
        ),
        Refusal::Exists(dir) => format!(
            "a sandbox already exists in {}; stop it with `refit sandbox down` or pass another --dir",
            dir.display()
        ),
        Refusal::Missing(dir) => {
            format!("no sandbox in {}; start one with `refit sandbox up`", dir.display())
        }
        Refusal::NotRunning(dir) => format!(
            "the sandbox in {} is not running; `refit sandbox down` then `refit sandbox up`",
            dir.display()
        ),
        Refusal::NoSuchNode(node) => {
            format!("no node named {node} in the sandbox (see `refit sandbox status`)")
        }
    })
}

/// A sandbox error as before the library ran these steps: refusals as usage lines, the
/// testbed's own errors as they are (main maps some to exit 2), the others with their step.
fn sandbox_error(e: SandboxError) -> anyhow::Error {
    match e {
        SandboxError::Refused(r) => refused(r),
        SandboxError::Testbed(e) => e.into(),
        other => other.into(),
    }
}

/// How the sandbox runs this binary's own `refit sandbox NAME` subcommands as processes that
/// outlive this command (load balancer, node agents, package repository); `what` names them
/// should the binary not be found.
fn own_commands(what: &str) -> anyhow::Result<impl Fn(&str) -> Vec<String>> {
    let exe = std::env::current_exe().with_context(|| format!("locating the refit binary for {what}"))?;
    let exe = exe.display().to_string();
    Ok(move |name: &str| vec![exe.clone(), "sandbox".to_string(), name.to_string()])
}

#[derive(Serialize)]
struct UpResult {
    dir: String,
    kubeconfig: String,
    version: String,
    control_planes: usize,
    workers: usize,
    seconds: f64,
}

/// Starts the sandbox (building what it needs first); used by `sandbox up` and `demo`.
pub async fn start(
    dir: PathBuf,
    version: &Version,
    control_planes: usize,
    workers: usize,
    workloads: Option<Workloads>,
    quiet: bool,
) -> anyhow::Result<Testbed> {
    let versions = TestbedVersions::from_env()?;
    let start = SandboxStart {
        dir,
        version: version.clone(),
        control_planes,
        workers,
        lb_command: own_commands("the load balancer")?("serve-lb"),
        demo: matches!(workloads, Some(Workloads::Demo)),
    };
    let mut view = SandboxView::new(quiet)?;
    refit_testbed::sandbox::up(start, &versions, &mut |p| view.show(p)).await.map_err(sandbox_error)
}

pub async fn up(args: UpArgs, format: Format) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = sandbox_dir(&args.dir)?;
    let versions = TestbedVersions::from_env()?;
    let version = resolve_version(&args.kube_version, &versions)?;
    if args.kubeadm {
        return kubeadm_up(dir, &version, &versions, &args, format, started).await;
    }
    let tb = start(dir.clone(), &version, args.control_planes, args.workers, args.workloads, false).await?;
    let result = UpResult {
        dir: dir.display().to_string(),
        kubeconfig: tb.kubeconfig().display().to_string(),
        version: version.to_string(),
        control_planes: args.control_planes,
        workers: args.workers,
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    if !print_structured(format, &result)? {
        println!(
            "sandbox up in {:.1}s: Kubernetes v{} with {} control-plane member(s) and {} workers",
            result.seconds, result.version, result.control_planes, result.workers
        );
        println!("kubeconfig: {}", result.kubeconfig);
        println!("export KUBECONFIG={}", result.kubeconfig);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn down(dir: SandboxDir, format: Format) -> anyhow::Result<ExitCode> {
    let dir = sandbox_dir(&dir)?;
    if KubeadmCluster::exists(&dir) {
        KubeadmCluster::attach(&dir)?.stop();
    } else if !dir.join("state.json").exists() {
        return Err(usage(format!("no sandbox in {} (nothing to stop)", dir.display())));
    } else {
        Testbed::attach(&dir)?.stop();
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    #[derive(Serialize)]
    struct Down {
        stopped: String,
    }
    if !print_structured(format, &Down { stopped: dir.display().to_string() })? {
        println!("sandbox in {} stopped and removed", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a status as tables (or JSON/YAML).
pub fn print_status(status: &SandboxStatus, format: Format) -> anyhow::Result<()> {
    if print_structured(format, status)? {
        return Ok(());
    }
    println!("sandbox {}  (export KUBECONFIG={})\n", status.dir, status.kubeconfig);
    let mut t = table(&["control-plane node", "apiserver", "version"]);
    for m in &status.control_plane {
        t.add_row(vec![m.node.clone(), m.apiserver.clone(), m.version.clone()]);
    }
    println!("{t}\n");
    let mut t = table(&["node", "role", "ready", "schedulable", "kubelet", "kube-proxy"]);
    for n in &status.nodes {
        t.add_row(vec![
            n.name.clone(),
            n.role.clone(),
            n.ready.to_string(),
            n.schedulable.to_string(),
            n.kubelet.clone(),
            n.kube_proxy.clone(),
        ]);
    }
    println!("{t}\n");
    let mut t = table(&["namespace", "kind", "name", "ready", "allowed disruptions"]);
    for w in &status.workloads {
        t.add_row(vec![
            w.namespace.clone(),
            w.kind.to_string(),
            w.name.clone(),
            format!("{}/{}", w.ready, w.desired),
            w.disruptions_allowed.map(|d| d.to_string()).unwrap_or_default(),
        ]);
    }
    println!("{t}\n");
    let mut t = table(&["process", "pid", "running"]);
    for p in &status.processes {
        t.add_row(vec![p.name.clone(), p.pid.to_string(), p.running.to_string()]);
    }
    println!("{t}");
    Ok(())
}

fn attach_running(dir: &SandboxDir) -> anyhow::Result<Testbed> {
    refit_testbed::sandbox::attach_running(&sandbox_dir(dir)?).map_err(refused)
}

pub async fn status(dir: SandboxDir, format: Format) -> anyhow::Result<ExitCode> {
    let path = sandbox_dir(&dir)?;
    if KubeadmCluster::exists(&path) {
        return kubeadm_status(&path, format).await;
    }
    let tb = attach_running(&dir)?;
    let status = refit_testbed::sandbox::status(&tb).await?;
    print_status(&status, format)?;
    let all_running = status.processes.iter().all(|p| p.running);
    Ok(if all_running { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn upgrade_node(args: UpgradeNodeArgs, format: Format) -> anyhow::Result<ExitCode> {
    let tb = attach_running(&args.dir)?;
    let versions = TestbedVersions::from_env()?;
    let to = resolve_version(&args.to, &versions)?;
    let node_images = refit_core::fleet::parse_image_targets(args.node_images.as_deref())
        .map_err(crate::remedy::usage_spelled)?;
    let upgrade = NodeUpgrade { node: args.node, to, node_images };
    let mut view = SandboxView::new(false)?;
    let change = refit_testbed::sandbox::upgrade_node(&tb, &upgrade, &mut |p| view.show(p))
        .await
        .map_err(sandbox_error)?;
    if !print_structured(format, &change)? {
        println!(
            "{} ({}) upgraded {} -> {} in {:.1}s",
            change.node, change.role, change.from, change.to, change.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_pairs(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(usage(format!("{what} '{s}' is not KEY=VALUE"))),
        })
        .collect()
}

fn parse_taint(s: &str) -> anyhow::Result<serde_json::Value> {
    let bad = || {
        usage(format!(
            "taint '{s}' is not KEY[=VALUE]:EFFECT (effect NoSchedule, PreferNoSchedule or NoExecute)"
        ))
    };
    let (kv, effect) = s.rsplit_once(':').ok_or_else(bad)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") || kv.is_empty() {
        return Err(bad());
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Ok(serde_json::json!({"key": key, "value": value, "effect": effect}))
}

pub async fn add_node(args: AddNodeArgs, format: Format) -> anyhow::Result<ExitCode> {
    let tb = attach_running(&args.dir)?;
    let labels = parse_pairs(&args.labels, "label")?;
    let annotations = parse_pairs(&args.annotations, "annotation")?;
    let taints = args.taints.iter().map(|t| parse_taint(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let version = match &args.kube_version {
        Some(v) => resolve_version(v, &TestbedVersions::from_env()?)?,
        None => {
            let members = tb.members();
            let first = members
                .first()
                .context("the sandbox has no control-plane member to take a version from: give --version")?;
            first.binaries.version.clone()
        }
    };
    let client = tb.client().await?;
    if Api::<Node>::all(client).get_opt(&args.node).await?.is_some() {
        return Err(usage(format!("a node named {} already exists", args.node)));
    }
    tb.add_workers(vec![WorkerSpec {
        name: args.node.clone(),
        version: version.clone(),
        labels,
        annotations,
        taints,
    }])
    .await?;
    #[derive(Serialize)]
    struct Added {
        node: String,
        version: String,
    }
    if !print_structured(format, &Added { node: args.node.clone(), version: version.git_version() })? {
        println!("node {} added at {} and Ready", args.node, version.git_version());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn remove_node(args: NodeArgs, format: Format) -> anyhow::Result<ExitCode> {
    let tb = attach_running(&args.dir)?;
    if tb.member_for_node(&args.node).is_some() {
        return Err(usage(format!("{} runs a control-plane member; only workers can be removed", args.node)));
    }
    tb.remove_worker(&args.node).await?;
    #[derive(Serialize)]
    struct Removed {
        node: String,
    }
    if !print_structured(format, &Removed { node: args.node.clone() })? {
        println!("node {} removed", args.node);
    }
    Ok(ExitCode::SUCCESS)
}

/// Stops (`running: false`) or starts a node's kubelet.
pub async fn set_kubelet(args: NodeArgs, running: bool, format: Format) -> anyhow::Result<ExitCode> {
    let tb = attach_running(&args.dir)?;
    if running {
        tb.start_kubelet(&args.node).await?;
    } else {
        tb.stop_kubelet(&args.node).await?;
    }
    #[derive(Serialize)]
    struct Kubelet {
        node: String,
        running: bool,
    }
    if !print_structured(format, &Kubelet { node: args.node.clone(), running })? {
        if running {
            println!("kubelet of {} started; the node is Ready", args.node);
        } else {
            println!("kubelet of {} stopped; the node turns unreachable within about a minute", args.node);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn serve_lb(args: ServeLbArgs) -> anyhow::Result<ExitCode> {
    if args.backends.is_empty() {
        return Err(usage("serve-lb needs at least one --backend"));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    refit_testbed::lb::serve(listener, args.backends).await;
    Ok(ExitCode::SUCCESS)
}

/// `refit sandbox node-agent --config FILE`: the kubelet stand-in of a kubeadm sandbox node.
pub async fn node_agent(args: NodeAgentArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| usage(format!("{}: {e}", args.config.display())))?;
    let config: refit_testbed::kubeadm::agent::AgentConfig = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{}: not a node agent configuration: {e}", args.config.display())))?;
    refit_testbed::kubeadm::agent::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// `refit sandbox serve-repo --root DIR --listen ADDR`: a kubeadm sandbox's package repository.
pub async fn serve_repo(args: ServeRepoArgs) -> anyhow::Result<ExitCode> {
    if !args.root.is_dir() {
        return Err(usage(format!("serve-repo: --root {} is not a directory", args.root.display())));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // The launcher reads the bound address from this line (the port may have been 0).
    println!("listening on {}", listener.local_addr()?);
    std::io::Write::flush(&mut std::io::stdout())?;
    refit_testbed::kubeadm::repo::serve(listener, args.root).await;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct KubeadmUp {
    dir: String,
    kubeconfig: String,
    plan_file: String,
    version: String,
    nodes: Vec<refit_testbed::kubeadm::cluster::SandboxNode>,
    seconds: f64,
}

/// `refit sandbox up --kubeadm`: a cluster made by the real kubeadm on kubeadm-shaped nodes.
async fn kubeadm_up(
    dir: PathBuf,
    version: &Version,
    versions: &TestbedVersions,
    args: &UpArgs,
    format: Format,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let sub = own_commands("the node agents")?;
    let sandbox = KubeadmSandbox {
        dir: dir.clone(),
        version: version.clone(),
        versions: versions.clone(),
        control_planes: args.control_planes,
        workers: args.workers,
        demo: matches!(args.workloads, Some(Workloads::Demo)),
        agent_command: sub("node-agent"),
        lb_command: sub("serve-lb"),
        repo_command: sub("serve-repo"),
    };
    let mut view = SandboxView::new(false)?;
    let cluster =
        refit_testbed::sandbox::kubeadm_up(sandbox, &mut |p| view.show(p)).await.map_err(sandbox_error)?;
    let result = KubeadmUp {
        dir: dir.display().to_string(),
        kubeconfig: cluster.kubeconfig().display().to_string(),
        plan_file: cluster.plan_file().display().to_string(),
        version: version.to_string(),
        nodes: cluster.nodes().to_vec(),
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    if !print_structured(format, &result)? {
        println!(
            "kubeadm sandbox up in {:.1}s: Kubernetes v{} on {} node(s) built by kubeadm init/join",
            result.seconds,
            result.version,
            result.nodes.len()
        );
        for n in &result.nodes {
            let role = if n.control_plane { "control-plane" } else { "worker" };
            println!(
                "  {:<12} {:<15} {role}   ssh -F {}/hosts/ssh_config {}",
                n.name,
                n.address,
                dir.display(),
                n.name
            );
        }
        println!("export KUBECONFIG={}", result.kubeconfig);
        // The repository offers the built releases only: name one exactly (a bare minor would
        // resolve to the catalog's newest patch, which may not be built here).
        if let Some(newest) = versions.kubernetes.iter().max().filter(|v| *v > version) {
            println!(
                "upgrade it: refit upgrade --to {newest} -f {} --kubeconfig {}",
                result.plan_file, result.kubeconfig
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn kubeadm_status(dir: &std::path::Path, format: Format) -> anyhow::Result<ExitCode> {
    let status = refit_testbed::sandbox::kubeadm_status(dir).await?;
    let healthy = status.healthy();
    if !print_structured(format, &status)? {
        println!("kubeadm sandbox in {} (kubeconfig {})", status.dir, status.kubeconfig);
        let mut t = table(&["NODE", "ADDRESS", "ROLE", "KUBELET", "READY", "SCHEDULABLE"]);
        for n in &status.nodes {
            t.add_row(vec![
                n.name.clone(),
                n.address.clone(),
                n.role.to_string(),
                n.kubelet.clone(),
                n.ready.to_string(),
                (!n.unschedulable).to_string(),
            ]);
        }
        println!("{t}");
        let mut p = table(&["PROCESS", "PID", "RUNNING"]);
        for r in &status.processes {
            p.add_row(vec![r.name.clone(), r.pid.to_string(), r.running.to_string()]);
        }
        println!("{p}");
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
