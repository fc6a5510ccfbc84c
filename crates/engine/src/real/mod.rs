//! The real implementations of the engine's seams, wired in this one place: the cluster through
//! `refit-kube`, node actions through `refit-exec`, the journal in the SQLite store (written
//! off the async workers, see [`journal`]), and the system clock.

pub mod journal;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use refit_core::Version;
use refit_core::addons::AddonTargets;
use refit_exec::NodeContext;
use refit_exec::command::OutputLine;
use refit_kube::Connection;
use refit_kube::addons::AddonReport;
use refit_kube::cordon::{CordonOutcome, UncordonOutcome};
use refit_kube::drain::{DrainConfig, DrainReport};
use refit_kube::node::{CustomMetadata, NodeState};

pub use journal::SqliteJournal;

use refit_core::health::control_plane::ApiserversView;
use refit_core::health::etcd::EtcdHealth;
use refit_core::health::workloads::{WorkloadRef, WorkloadStatus};

use crate::context::{
    ActionFailure, Clock, Cluster, Context, EventSink, Health, Journal, NodeActions, OnAddon, OnDrain, OnLine,
};
use crate::spec::{EtcdEndpointSpec, NodeAction};

/// The engine's context for a real cluster, the node actions of `refit-exec` (their per-node
/// locks in `lock_dir`, a private directory: the store's `locks/`), `journal` and the system
/// clock.
pub fn context(
    conn: Connection,
    journal: Arc<dyn Journal>,
    sink: Arc<dyn EventSink>,
    lock_dir: PathBuf,
) -> Context {
    context_with_env(conn, journal, sink, lock_dir, Vec::new())
}

/// [`context`] whose node actions' local commands get `env` added to their environment (a
/// fleet member upgrade's `REFIT_NODE_IMAGES`, where the upgrade runs in the controller's
/// process rather than in a child that inherits it).
pub fn context_with_env(
    conn: Connection,
    journal: Arc<dyn Journal>,
    sink: Arc<dyn EventSink>,
    lock_dir: PathBuf,
    env: Vec<(String, String)>,
) -> Context {
    Context {
        health: Arc::new(KubeControlPlane(conn.clone())),
        cluster: Arc::new(KubeCluster(conn)),
        actions: Arc::new(ExecActions { lock_dir, env }),
        journal,
        clock: Arc::new(SystemClock),
        sink,
    }
}

/// The cluster through `refit-kube`.
pub struct KubeCluster(pub Connection);

impl Cluster for KubeCluster {
    fn snapshot(&self) -> BoxFuture<'_, Result<refit_core::snapshot::Snapshot, refit_kube::Error>> {
        async move {
            let version = refit_kube::apis::oldest_apiserver_version(&self.0).await?;
            let large = refit_kube::snapshot::LargeLists::for_server(&version);
            refit_kube::snapshot::read_snapshot(&self.0, large).await
        }
        .boxed()
    }

    fn node(&self, node: &str) -> BoxFuture<'_, Result<NodeState, refit_kube::Error>> {
        let node = node.to_string();
        async move { refit_kube::node::node_state(&self.0, &node).await }.boxed()
    }

    fn nodes(
        &self,
    ) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, NodeState>, refit_kube::Error>> {
        refit_kube::node::node_states(&self.0).boxed()
    }

    fn cordon<'a>(
        &'a self,
        node: &'a str,
        run: &'a str,
    ) -> BoxFuture<'a, Result<CordonOutcome, refit_kube::Error>> {
        refit_kube::cordon::cordon(&self.0, node, run).boxed()
    }

    fn uncordon<'a>(
        &'a self,
        node: &'a str,
        run: &'a str,
    ) -> BoxFuture<'a, Result<UncordonOutcome, refit_kube::Error>> {
        refit_kube::cordon::uncordon(&self.0, node, run).boxed()
    }

    fn drain<'a>(
        &'a self,
        node: &'a str,
        cfg: &'a DrainConfig,
        on_event: OnDrain<'a>,
    ) -> BoxFuture<'a, Result<DrainReport, refit_kube::Error>> {
        refit_kube::drain::drain(&self.0, node, cfg, on_event).boxed()
    }

    fn force_delete_remaining<'a>(
        &'a self,
        node: &'a str,
        cfg: &'a DrainConfig,
        on_event: OnDrain<'a>,
    ) -> BoxFuture<'a, Result<DrainReport, refit_kube::Error>> {
        refit_kube::drain::force_delete_remaining(&self.0, node, cfg, on_event).boxed()
    }

    fn wait_ready_at<'a>(
        &'a self,
        node: &'a str,
        version: &'a Version,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        refit_kube::node::wait_ready_at(&self.0, node, version, timeout).boxed()
    }

    fn control_plane_lagging<'a>(
        &'a self,
        node: &'a str,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Vec<String>, refit_kube::Error>> {
        refit_kube::node::control_plane_lagging(&self.0, node, version).boxed()
    }

    fn custom_metadata<'a>(
        &'a self,
        node: &'a str,
        carry: &'a refit_core::run::carried_over::CarryOver,
    ) -> BoxFuture<'a, Result<CustomMetadata, refit_kube::Error>> {
        refit_kube::node::custom_metadata(&self.0, node, carry).boxed()
    }

    fn apply_custom_metadata<'a>(
        &'a self,
        node: &'a str,
        meta: &'a CustomMetadata,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        refit_kube::node::apply_custom_metadata(&self.0, node, meta).boxed()
    }

    fn delete_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        refit_kube::node::delete_node(&self.0, node).boxed()
    }

    fn wait_gone<'a>(
        &'a self,
        node: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), refit_kube::Error>> {
        refit_kube::node::wait_gone(&self.0, node, timeout).boxed()
    }

    fn upgrade_addons<'a>(
        &'a self,
        targets: &'a AddonTargets,
        timeout: Duration,
        on_event: OnAddon<'a>,
    ) -> BoxFuture<'a, Result<AddonReport, refit_kube::Error>> {
        refit_kube::addons::upgrade_addons(&self.0, targets, timeout, on_event).boxed()
    }
}

/// The control plane's health: each apiserver through `refit-kube`, etcd through
/// `refit-exec`'s gateway client.
pub struct KubeControlPlane(pub Connection);

impl Health for KubeControlPlane {
    fn apiservers(&self) -> BoxFuture<'_, Result<ApiserversView, String>> {
        async move {
            let all = refit_kube::health::apiservers_health(&self.0).await.map_err(|e| e.to_string())?;
            Ok(ApiserversView {
                asked: all.len(),
                problems: all.iter().filter_map(refit_kube::health::ApiserverHealth::problem).collect(),
            })
        }
        .boxed()
    }

    fn etcd<'a>(&'a self, endpoints: &'a [EtcdEndpointSpec]) -> BoxFuture<'a, Result<EtcdHealth, String>> {
        async move { refit_exec::etcd::etcd_health(&etcd_endpoints(endpoints)).await }.boxed()
    }

    fn workloads_on<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<BTreeSet<WorkloadRef>, String>> {
        async move { refit_kube::health::workloads_on_node(&self.0, node).await.map_err(|e| e.to_string()) }
            .boxed()
    }

    fn workloads<'a>(
        &'a self,
        refs: &'a BTreeSet<WorkloadRef>,
    ) -> BoxFuture<'a, Result<Vec<WorkloadStatus>, String>> {
        async move { refit_kube::health::workload_statuses(&self.0, refs).await.map_err(|e| e.to_string()) }
            .boxed()
    }
}

fn etcd_endpoints(endpoints: &[EtcdEndpointSpec]) -> Vec<refit_exec::backup::EtcdEndpoint> {
    endpoints
        .iter()
        .map(|e| refit_exec::backup::EtcdEndpoint {
            url: e.url.clone(),
            ca_file: e.ca_file.clone(),
            cert_file: e.cert_file.clone(),
            key_file: e.key_file.clone(),
        })
        .collect()
}

/// Node actions and local commands through `refit-exec`.
pub struct ExecActions {
    /// Where the exec action's per-node locks live (issue 18 items 5, 17).
    pub lock_dir: PathBuf,
    /// Added to the environment of every local command (the exec action, the replace
    /// action's commands).
    pub env: Vec<(String, String)>,
}

impl NodeActions for ExecActions {
    fn probe_gate<'a>(
        &'a self,
        check: &'a refit_core::health::GateCheck,
        env: &'a [(String, String)],
    ) -> BoxFuture<'a, refit_core::health::Observation> {
        refit_exec::gate::probe(check, env).boxed()
    }

    fn upgrade<'a>(
        &'a self,
        run: &'a str,
        action: &'a NodeAction,
        ctx: &'a NodeContext,
        timeout: Duration,
        on_line: OnLine<'a>,
    ) -> BoxFuture<'a, Result<(), ActionFailure>> {
        async move {
            let scope = refit_exec::RunScope {
                run: run.to_string(),
                lock_dir: self.lock_dir.clone(),
                env: self.env.clone(),
            };
            let lines = |l: OutputLine| on_line(l.text());
            let changed =
                |e: refit_exec::Error| ActionFailure { message: e.to_string(), node_unchanged: false };
            match action {
                NodeAction::Exec { command } => {
                    refit_exec::exec::run_exec_exclusive(command, ctx, &scope, timeout, &lines)
                        .await
                        .map_err(changed)
                }
                NodeAction::Ssh { action, identities } => {
                    let Some(mut opts) = refit_exec::ssh::SshOptions::from_action(action) else {
                        return Err(ActionFailure {
                            message: "the ssh action has no usable options".into(),
                            node_unchanged: false,
                        });
                    };
                    opts.expected = identities.clone();
                    let options = refit_exec::kubeadm::KubeadmOptions::from_action(action);
                    let recipe = refit_exec::kubeadm::kubeadm_recipe(ctx, options)
                        .map_err(|e| ActionFailure { message: e.to_string(), node_unchanged: true })?;
                    refit_exec::ssh::run_ssh_detached(&recipe, ctx, &scope, &opts, timeout, &lines)
                        .await
                        .map_err(|e| {
                            // A recipe that stopped before kubeadm touched the node (no connection,
                            // a package missing from the repository) leaves it as it was.
                            let node_unchanged = e.stopped_at_step().is_some_and(|step| {
                                refit_exec::kubeadm::node_unchanged_before(&recipe, step)
                            });
                            ActionFailure { message: e.to_string(), node_unchanged }
                        })
                }
                NodeAction::Replace { .. } => Err(ActionFailure {
                    message: "internal: the replace action is not an in-place upgrade".into(),
                    node_unchanged: true,
                }),
            }
        }
        .boxed()
    }

    fn command<'a>(
        &'a self,
        argv: &'a [String],
        env: &'a [(String, String)],
        timeout: Duration,
        on_line: OnLine<'a>,
    ) -> BoxFuture<'a, Result<(), ActionFailure>> {
        async move {
            let lines = |l: OutputLine| on_line(l.text());
            let env: Vec<(String, String)> = env.iter().chain(&self.env).cloned().collect();
            refit_exec::command::run_command(argv, &env, timeout, &lines)
                .await
                .map(|_| ())
                .map_err(|e| ActionFailure { message: e.to_string(), node_unchanged: false })
        }
        .boxed()
    }

    fn etcd_snapshot<'a>(
        &'a self,
        endpoints: &'a [EtcdEndpointSpec],
        dir: &'a Path,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(String, u64), String>> {
        async move {
            refit_exec::backup::etcd_snapshot(&etcd_endpoints(endpoints), dir, name)
                .await
                .map(|b| (b.path.display().to_string(), b.bytes))
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn etcd_snapshot_on_node<'a>(
        &'a self,
        action: &'a NodeAction,
        nodes: &'a [NodeContext],
        dir: &'a Path,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(String, u64), String>> {
        async move {
            let NodeAction::Ssh { action, identities } = action else {
                return Err("only the ssh action can take the snapshot on a node".to_string());
            };
            let mut opts = refit_exec::ssh::SshOptions::from_action(action)
                .ok_or_else(|| "the ssh action has no usable options".to_string())?;
            opts.expected = identities.clone();
            refit_exec::backup::node::etcd_snapshot_on_nodes(nodes, &opts, dir, name)
                .await
                .map(|b| (b.path.display().to_string(), b.bytes))
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
