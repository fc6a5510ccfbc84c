//! Command-line arguments (clap derive). One struct per command; the commands module runs them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use refit_engine::spec::defaults;

use crate::output::Format;

/// Refit upgrades Kubernetes: one cluster node by node, and fleets of clusters stage by stage.
#[derive(Debug, Parser)]
#[command(name = "refit", version, about, long_about = None, after_help = "\
Examples:
  refit demo                         start a local sandbox cluster with demo workloads
  refit sandbox up --workers 10      a sandbox at 1.36 with ten kwok workers
  refit completion bash > /etc/bash_completion.d/refit

Logs: set RUST_LOG (e.g. RUST_LOG=refit=debug). Exit codes: 0 done, 1 failed or blocked, 2 bad input.")]
pub struct Cli {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A real local Kubernetes cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes).
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Start a sandbox at 1.36 with demo workloads, upgrade it to 1.37 with live progress, show what runs.
    #[command(after_help = "\
Examples:
  refit demo
  refit demo --workers 10
  refit demo --no-upgrade        only start the sandbox")]
    Demo(DemoArgs),
    /// Preflight: what blocks, what is unsafe, what will be unavailable, and the ordered plan.
    #[command(after_help = "\
Examples:
  refit plan --to 1.37
  refit plan --to 1.37 --max-unavailable 10% -o json
  refit plan --to 1.37 -f plan.yaml --partial-ok
  refit plan --to 1.37 --ignore-safety-checks      report findings, block on nothing
Exit code 1 when a blocker stops the plan (online mode).")]
    Plan(PlanArgs),
    /// Upgrade the cluster: etcd → control plane (hop by hop) → workers → cluster services.
    #[command(after_help = "\
Every node: cordon, drain (Eviction API, PDBs respected), upgrade (the node action), validate
(Ready at the version), uncordon. Every step is journaled; after any failure, a crash or Ctrl-C,
rerun the same command to continue where it stopped (finished nodes are not touched again).
One upgrade per cluster at a time, from any machine: refit holds the Lease
kube-system/refit-upgrade for the whole run; a second one is refused with the holder and its run
(--break-lock takes the lock from a holder that is gone for good). Ctrl-C, SIGTERM and SIGHUP
stop cleanly: no new node starts, drains are abandoned and their cordons given back, actions under
way finish (within --stop-grace); a second signal leaves at once.

Examples:
  refit upgrade --to 1.37 --dry-run                       the plan, no change
  refit upgrade --to 1.37 -f plan.yaml --yes              action, addresses, etcd hosts from the plan file
  refit upgrade --to 1.37 --action 'exec:./upgrade-node.sh {node} {to}' --max-unavailable 10%
  refit upgrade --to 1.37 --action sandbox --yes          the sandbox (refit sandbox upgrade-node)
  refit upgrade --to 1.37 --control-plane-only --action ssh --yes   kubeadm over ssh
  refit upgrade --to 1.37 --on-undrainable skip -o json   newline-delimited events
  refit upgrade --to 1.37 --yes --not-after 2026-12-05T06:00:00+01:00   stop starting nodes at 06:00
Exit codes: 0 upgraded; 1 blocked, failed or interrupted (rerun to continue); 2 bad input;
3 paused at --not-after (rerun to continue).")]
    Upgrade(Box<UpgradeArgs>),
    /// What the cluster runs: every component's version, skew violations, support, next versions.
    #[command(after_help = "\
Examples:
  refit status
  refit status --context prod -o json
  refit status --kubeconfig ./admin.conf --kubectl none
Exit code 1 when a component is outside the version skew policy.")]
    Status(StatusArgs),
    /// Every known release and where it can go; the hop path from one version to another.
    #[command(after_help = "\
Examples:
  refit versions                         supported releases and their upgrade targets
  refit versions --from 1.35.2           where 1.35.2 can go in one control-plane step
  refit versions --from 1.35.2 --to 1.37 the hops: newest 1.36 patch, then newest 1.37 patch
  refit versions --from 1.35.2 --to 1.37 --policy strict   (Kismatic: newest patch first)")]
    Versions(VersionsArgs),
    /// APIs the cluster still uses that a target release (or an earlier one) no longer serves.
    #[command(after_help = "\
Signals: kubectl last-applied annotations, managedFields, Helm v3 release manifests, and the
apiserver_requested_deprecated_apis metric of every apiserver (requests since it started).

Examples:
  refit apis --to 1.37                       what blocks an upgrade to 1.37
  refit apis --to 1.37 --context prod -o json
  refit apis --to 1.25 --catalog ./catalog.yaml
Exit code 1 when any removed API is in use (crossing this upgrade or already removed), 0 when none.")]
    Apis(ApisArgs),
    /// Fleets: members, strategies, update runs stage by stage, gates, auto-upgrade profiles.
    #[command(after_help = "\
Examples:
  refit fleet member add eu-1 --kubeconfig eu-1.conf --update-group canary
  refit fleet strategy create safe -f stages.yaml
  refit fleet run create to-137 --upgrade-type Full --kubernetes-version 1.37.1 --strategy safe
  refit fleet run start to-137 --wait
  refit fleet gate approve to-137 canary/after/1
  refit fleet run show to-137")]
    Fleet(crate::commands::fleet::args::FleetArgs),
    /// HTTP API, live dashboard, Prometheus metrics and webhook notifications over the store.
    #[command(after_help = "\
Examples:
  refit serve                                   http://127.0.0.1:8080/ (dashboard), /api, /metrics
  refit serve --listen 0.0.0.0:8443 --token-file tokens.csv --tls-cert tls.crt --tls-key tls.key
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/api/fleet/runs
Webhooks: refit fleet notify add NAME --url URL --events gate-pending,run-failed (refit serve delivers them).")]
    Serve(crate::commands::serve::ServeArgs),
    /// Hub mode: the fleet as custom resources in a hub cluster.
    #[command(after_help = "\
Examples:
  refit controller manifests | kubectl apply -f -          CRDs, RBAC, approver policy, Deployment
  refit controller manifests -n fleet --image registry.example/refit:0.1")]
    Controller(crate::commands::controller::ControllerArgs),
    /// The release catalog: which one is in use, and refreshing it without a new build.
    #[command(subcommand)]
    Catalog(crate::commands::catalog::CatalogCommand),
    /// Every file refit reads (plan, strategy, window, node-images, profile, catalog), each as a
    /// complete, commented example.
    #[command(
        after_help = "Examples:\n  refit formats                  every format (also: refit help formats)\n  refit formats window > w.yaml  one example, to start a file from",
        after_long_help = crate::commands::formats::long_help()
    )]
    Formats {
        /// plan, strategy, window, node-images, profile or catalog (default: all).
        name: Option<String>,
    },
    /// Print shell completions.
    #[command(after_help = "Example:\n  refit completion zsh > ~/.zfunc/_refit")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where the sandbox lives.
#[derive(Debug, Clone, Args)]
pub struct SandboxDir {
    /// Sandbox state directory (kubeconfig, certificates, logs).
    #[arg(long, env = "REFIT_SANDBOX_DIR")]
    pub dir: Option<PathBuf>,
}

/// `refit sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Build the testbed binaries (Kubernetes releases, etcd, kwok) from the Go module proxy.
    #[command(after_help = "\
Examples:
  refit sandbox build
  REFIT_TESTBED_VERSIONS=1.36.4,1.37.1 refit sandbox build
The cache is ~/.cache/refit/testbed unless REFIT_TESTBED_CACHE is set.")]
    Build(BuildArgs),
    /// Start a sandbox cluster that keeps running after this command returns.
    #[command(after_help = "\
Examples:
  refit sandbox up
  refit sandbox up --version 1.36.4 --control-plane 3 --workers 20 --workloads demo")]
    Up(UpArgs),
    /// Stop the sandbox and delete its directory.
    Down(SandboxDir),
    /// Show the sandbox's processes, control-plane members and nodes.
    Status(SandboxDir),
    /// Upgrade one node of the sandbox the way an operator's script would upgrade a real node.
    #[command(after_help = "\
A control-plane node gets its kube-apiserver, controller-manager and scheduler replaced by the
target release (restarted in that order); a worker reports the new kubelet and kube-proxy.

Examples:
  refit sandbox upgrade-node control-plane-1 --to 1.37.1
  refit sandbox upgrade-node worker-003 --to 1.37.1")]
    UpgradeNode(UpgradeNodeArgs),
    /// Add a worker node to the sandbox (replace-style upgrades create new nodes).
    AddNode(AddNodeArgs),
    /// Remove a worker node from the sandbox.
    RemoveNode(NodeArgs),
    /// Stop a node's kubelet: nothing reports its status or renews its lease any more.
    #[command(after_help = "\
Within a minute the node lifecycle controller marks the node Ready=Unknown and taints it
node.kubernetes.io/unreachable, as it does when a real kubelet dies: `refit plan` then reports
node-unreachable. `start-kubelet` brings it back.

Examples:
  refit sandbox stop-kubelet worker-002 && sleep 70 && refit plan --to 1.37
  refit sandbox start-kubelet worker-002")]
    StopKubelet(NodeArgs),
    /// Start a stopped kubelet again and wait until its node is Ready.
    StartKubelet(NodeArgs),
    /// Run the sandbox's apiserver load balancer (started by `sandbox up`; not for direct use).
    #[command(hide = true)]
    ServeLb(ServeLbArgs),
    /// Run a kubeadm sandbox node's kubelet stand-in (started inside the node; not for direct use).
    #[command(hide = true)]
    NodeAgent(NodeAgentArgs),
    /// Serve a kubeadm sandbox's package repositories over HTTP (started by the sandbox; not
    /// for direct use). Prints `listening on ADDR` once bound.
    #[command(hide = true)]
    ServeRepo(ServeRepoArgs),
}

/// `refit sandbox build`
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Verify every cached binary's checksum, not only its size.
    #[arg(long)]
    pub verify: bool,
}

/// `refit sandbox up`
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub dir: SandboxDir,
    /// Kubernetes version (a release like 1.36.4, or a minor like 1.36 for its built patch).
    #[arg(long = "version", default_value = "1.36")]
    pub kube_version: String,
    /// Control-plane members (1 to 3).
    #[arg(long = "control-plane", default_value_t = 1)]
    pub control_planes: usize,
    /// Worker nodes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Workloads to create.
    #[arg(long, value_enum)]
    pub workloads: Option<Workloads>,
    /// Build the cluster with the real `kubeadm init`/`join` on kubeadm-shaped nodes (own
    /// network namespace, private root, sshd, apt packages held at the release), upgradable with
    /// `refit upgrade --action ssh`. Needs root and openssh-server.
    #[arg(long)]
    pub kubeadm: bool,
}

/// Workload sets for the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workloads {
    /// Deployments with PDBs, a StatefulSet, a DaemonSet, a single replica, emptyDir, a bare pod.
    Demo,
}

/// `refit sandbox upgrade-node`
#[derive(Debug, Args)]
pub struct UpgradeNodeArgs {
    #[command(flatten)]
    pub dir: SandboxDir,
    /// The node to upgrade.
    pub node: String,
    /// Target release (e.g. 1.37.1, or 1.37 for the built patch).
    #[arg(long)]
    pub to: String,
    /// Node images FAMILY=VERSION[,...]: the node's `refit.dev/node-image` annotation moves to
    /// the version of its family (a fleet member upgrade passes them in REFIT_NODE_IMAGES).
    #[arg(long, env = "REFIT_NODE_IMAGES", value_name = "FAMILY=VERSION,...")]
    pub node_images: Option<String>,
}

/// `refit sandbox add-node`
#[derive(Debug, Args)]
pub struct AddNodeArgs {
    #[command(flatten)]
    pub dir: SandboxDir,
    /// Name of the new node.
    pub node: String,
    /// Kubelet version (default: the control plane's).
    #[arg(long = "version")]
    pub kube_version: Option<String>,
    /// Labels (KEY=VALUE), repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Annotations (KEY=VALUE), repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Taints (KEY[=VALUE]:EFFECT), repeatable.
    #[arg(long = "taint", value_name = "KEY[=VALUE]:EFFECT")]
    pub taints: Vec<String>,
}

/// `refit sandbox remove-node`, `stop-kubelet`, `start-kubelet`
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub dir: SandboxDir,
    /// The node.
    pub node: String,
}

/// `refit sandbox serve-lb`
#[derive(Debug, Args)]
pub struct ServeLbArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Backend apiserver addresses.
    #[arg(long = "backend")]
    pub backends: Vec<std::net::SocketAddr>,
}

/// `refit sandbox node-agent`
#[derive(Debug, Args)]
pub struct NodeAgentArgs {
    /// The agent's configuration (JSON written by the sandbox).
    #[arg(long)]
    pub config: std::path::PathBuf,
}

/// `refit sandbox serve-repo`
#[derive(Debug, Args)]
pub struct ServeRepoArgs {
    /// The directory to serve (a sandbox's `repo/`).
    #[arg(long)]
    pub root: PathBuf,
    /// Address to listen on (port 0: any free port, printed).
    #[arg(long)]
    pub listen: std::net::SocketAddr,
}

/// `refit demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub dir: SandboxDir,
    /// Worker nodes in the demo sandbox.
    #[arg(long, default_value_t = 6)]
    pub workers: usize,
    /// Only start the sandbox; do not upgrade it.
    #[arg(long)]
    pub no_upgrade: bool,
}

/// `refit versions`
#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The version to upgrade from.
    #[arg(long)]
    pub from: Option<String>,
    /// The target: a release (1.37.1) or a minor (1.37 = its newest patch). Needs --from.
    #[arg(long)]
    pub to: Option<String>,
    /// `default`: the next minor from any patch; `strict`: only from the newest patch.
    #[arg(long, default_value = "default")]
    pub policy: String,
    /// Allow end-of-life or unknown targets and downgrades (the output says what was forced).
    #[arg(long)]
    pub force: bool,
    /// Include end-of-life releases in the list.
    #[arg(long)]
    pub all: bool,
    /// A release catalog to use instead of the built-in one (air-gapped refresh).
    #[arg(long, env = "REFIT_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// Which cluster, as kubectl names it.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Path to the kubeconfig (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// `refit status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// kubectl binary whose client version is checked against the skew policy ("none" skips).
    #[arg(long, default_value = "kubectl")]
    pub kubectl: String,
    /// A release catalog to use instead of the built-in one.
    #[arg(long, env = "REFIT_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// `refit apis`
#[derive(Debug, Args)]
pub struct ApisArgs {
    /// The target release: a minor (1.37) or a release (1.37.1); removals up to it count.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// A release catalog to use instead of the built-in one (air-gapped refresh).
    #[arg(long, env = "REFIT_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// `refit upgrade`
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Show the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask before changing anything (non-interactive use).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// With --force, allow moving the cluster to an older release.
    #[arg(long)]
    pub confirm_downgrade: bool,
    /// Give up this cluster's unfinished run (its cordons are given back) and start afresh.
    #[arg(long)]
    pub abandon: bool,
    /// Take the cluster lock (the Lease kube-system/refit-upgrade) from the refit named as its
    /// holder: only when that process is gone for good (a machine that died; a holder on this
    /// machine that is gone, or one not renewing for 45s, is taken over without it).
    #[arg(long)]
    pub break_lock: bool,
    /// After Ctrl-C, SIGTERM or SIGHUP: how long node actions under way may take to finish
    /// before refit leaves anyway (the journal lets a rerun continue).
    #[arg(long, default_value = defaults::STOP_GRACE_TEXT, value_parser = duration)]
    pub stop_grace: Duration,
    /// Per-node drain deadline (e.g. 300s, 10m; 1s to one year).
    #[arg(long, default_value = defaults::DRAIN_TIMEOUT_TEXT, value_parser = duration)]
    pub drain_timeout: Duration,
    /// Per-node deadline for the action and for the node to be Ready at the version (1s to
    /// one year).
    #[arg(long, default_value = defaults::NODE_TIMEOUT_TEXT, value_parser = duration)]
    pub node_timeout: Duration,
    /// A node that cannot be drained: stop (fail), leave it cordoned and go on (skip), or delete what remains (force).
    #[arg(long, default_value = "fail")]
    pub on_undrainable: String,
    /// A health gate (plan file `gates:`) that fails between batches: end the run paused
    /// (exit 3; the same command resumes it, gate first) or failed (exit 1).
    #[arg(long, default_value = "pause", value_name = "pause|fail")]
    pub on_gate_failure: String,
    /// The control-plane gate, before the first change, before each etcd or control-plane
    /// member and after the last: how long to wait for every apiserver's /readyz and etcd's
    /// health and quorum (with --etcd-endpoint) before the run stops as --on-gate-failure
    /// says (0 turns the gate off).
    #[arg(long, default_value = defaults::CONTROL_PLANE_GATE_TEXT, value_parser = gate_timeout)]
    pub control_plane_gate_timeout: Duration,
    /// Evictions in flight per node (1 to 1000).
    #[arg(long, default_value_t = defaults::EVICTION_CONCURRENCY, value_parser = eviction_concurrency)]
    pub eviction_concurrency: usize,
    /// Leave kube-proxy and CoreDNS alone (add-ons managed elsewhere).
    #[arg(long)]
    pub skip_cluster_services: bool,
    /// etcd client URL for the backup taken before the etcd/control-plane phase; repeatable.
    #[arg(long = "etcd-endpoint")]
    pub etcd_endpoints: Vec<String>,
    /// CA file for --etcd-endpoint.
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for --etcd-endpoint.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for --etcd-endpoint.
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// A backup command instead of the etcd API (placeholders {dir} {name} {path}, no shell).
    /// It must write the snapshot to {path} (= {dir}/{name}.db), 0600: the run goes on only
    /// when that file is an etcd snapshot.
    #[arg(long, conflicts_with = "etcd_endpoints")]
    pub backup_command: Option<String>,
    /// Change etcd and the control plane WITHOUT an etcd snapshot first (said in the plan and
    /// the summary). Without it, a run that touches them and has no backup is refused.
    #[arg(long, conflicts_with_all = ["etcd_endpoints", "backup_command"])]
    pub no_etcd_backup: bool,
    /// Where backups are kept (never deleted). Default: <state dir>/backups.
    #[arg(long)]
    pub backup_dir: Option<PathBuf>,
    /// Run journal (SQLite). Default: $REFIT_STATE_DIR/refit.db or the user's state directory.
    #[arg(long, env = "REFIT_STORE")]
    pub store: Option<PathBuf>,
}

/// `refit plan`
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Target: a release (1.37.1) or a minor (1.37 = its newest patch).
    #[arg(long)]
    pub to: String,
    /// Workers unavailable at once: a count, a percentage, or auto (each batch as large as
    /// every PDB's allowance, room for the evicted pods, one zone and the cap allow, chosen
    /// from the live cluster before it starts). etcd and control plane: always 1.
    #[arg(long, default_value = "1")]
    pub max_unavailable: String,
    /// The most workers one batch takes under --max-unavailable auto: a count or a
    /// percentage of the workers [default: 25%].
    #[arg(long)]
    pub max_unavailable_cap: Option<String>,
    /// With the replace action: replacement workers created ahead of the old ones they
    /// replace, a count or a percentage of the workers (rounded up), as a Deployment's
    /// maxSurge. Each old node is cordoned only once its replacement is Ready; with it,
    /// --max-unavailable (N, P% or 0) counts old nodes drained before their replacement
    /// exists. `--max-surge 2 --max-unavailable 0`: two extra nodes at most, capacity never
    /// drops. Without it, each replacement is created when its old node's turn comes.
    #[arg(long, value_name = "N|P%")]
    pub max_surge: Option<String>,
    /// Under --max-unavailable auto, let a batch take workers of several zones
    /// (topology.kubernetes.io/zone); by default one zone at a time.
    #[arg(long)]
    pub across_zones: bool,
    /// The end of the maintenance window (RFC 3339, e.g. 2026-12-05T06:00:00Z). upgrade:
    /// start no node after it (nodes under way finish, the run ends paused, a rerun
    /// continues); plan: warn when the run is not expected to end before it, and say how many
    /// nodes will.
    #[arg(long)]
    pub not_after: Option<String>,
    /// Plan file: external etcd hosts, node addresses and roles, ingress/storage labels.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Run the checks and report them, but let nothing block.
    #[arg(long)]
    pub ignore_safety_checks: bool,
    /// Run no check at all (loud warning).
    #[arg(long)]
    pub offline: bool,
    /// Leave out workers that fail their checks (only when every etcd and control-plane node passes).
    #[arg(long)]
    pub partial_ok: bool,
    /// Accept one blocker of Kismatic's table (unmanaged-pod, single-replica,
    /// daemonset-single-node, local-data, etcd-members, control-plane-count, worker-count,
    /// ingress-node, storage-node): CHECK for all its findings, CHECK=SUBJECT (as the plan
    /// prints it, e.g. single-replica=deployment/shop/web) for one. Repeatable; also `accept:`
    /// in the plan file. Accepted findings are listed apart and recorded with the run.
    #[arg(long, value_name = "CHECK[=SUBJECT]", value_parser = accept_rule)]
    pub accept: Vec<refit_core::accept::AcceptRule>,
    /// Version rule: default (the next minor from any patch) or strict (the next minor only
    /// from the newest patch of the current one, as Kismatic requires).
    #[arg(long, default_value = "default", value_parser = policy)]
    pub policy: refit_core::path::Policy,
    /// With the ssh action: the free space every node needs on each filesystem the upgrade
    /// writes (/, /var/lib, /etc/kubernetes, the package cache, /usr/bin, /tmp), checked over
    /// ssh before anything changes. 2Gi by default: kubeadm copies etcd's data (2 GiB quota by
    /// default) under /etc/kubernetes/tmp, plus ~150 MiB of packages. 0 turns it off.
    #[arg(long, value_name = "BYTES", default_value = "2Gi", value_parser = free_bytes)]
    pub min_free_disk: u64,
    /// Bypass version-support checks and include nodes already at the target.
    #[arg(long)]
    pub force: bool,
    /// Plan the etcd and control-plane phases only.
    #[arg(long)]
    pub control_plane_only: bool,
    /// Allow evicting pods with emptyDir volumes (their data is lost).
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Allow deleting pods no controller manages (they will not come back).
    #[arg(long)]
    pub delete_unmanaged_pods: bool,
    /// Label (KEY or KEY=VALUE) marking ingress nodes; repeatable.
    #[arg(long)]
    pub ingress_label: Vec<String>,
    /// Label (KEY or KEY=VALUE) marking storage nodes; repeatable.
    #[arg(long)]
    pub storage_label: Vec<String>,
    /// How nodes are upgraded: `exec:PROGRAM ARG...` (placeholders {node} {role} {from} {to}
    /// {phase} {address}, split on spaces, never a shell), `ssh` (kubeadm recipe), `sandbox`,
    /// `replace-sandbox`. Default: the plan file's action. Before anything changes, each node is
    /// asked through it which versions it can reach (ssh: its package repositories, plus
    /// `kubeadm upgrade plan` on the first control-plane node; exec: the plan file's `probe`;
    /// sandbox: its buildable releases): a minor `--to` takes the newest patch they all offer,
    /// a node that cannot reach its target blocks the plan.
    #[arg(long)]
    pub action: Option<String>,
    /// A release catalog to use instead of the built-in one.
    #[arg(long, env = "REFIT_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// clap value parser for `--accept`: core's rule grammar (unknown checks refused, exit 2).
fn accept_rule(s: &str) -> Result<refit_core::accept::AcceptRule, String> {
    s.parse().map_err(|e: refit_core::accept::AcceptError| crate::remedy::spelled(&e))
}

/// clap value parser for `--min-free-disk`: a Kubernetes quantity (2Gi, 500Mi, 0).
fn free_bytes(s: &str) -> Result<u64, String> {
    let b = refit_core::quantity::bytes(s).map_err(|e| e.to_string())?;
    u64::try_from(b)
        .map_err(|_| format!("'{s}' is negative: give a size like 2Gi, or 0 to turn the check off"))
}

/// clap value parser for `--policy`.
fn policy(s: &str) -> Result<refit_core::path::Policy, String> {
    s.parse()
}

/// clap value parser for every duration flag: core's grammar and range (1s to one year), so a
/// bad value is refused by clap (exit 2) before anything runs, and no flag can overflow a clock.
pub fn duration(s: &str) -> Result<Duration, String> {
    refit_core::duration::parse(s).map_err(|e| e.problem.reason().to_string())
}

/// clap value parser for `--control-plane-gate-timeout`: 0 (the gate off) or a duration.
fn gate_timeout(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" { Ok(Duration::ZERO) } else { duration(s) }
}

/// clap value parser for `--eviction-concurrency`: core's range (evictions in flight are
/// semaphore permits; a count past what a semaphore holds used to panic).
fn eviction_concurrency(s: &str) -> Result<usize, String> {
    refit_core::drain::parse_eviction_concurrency(s)
}
