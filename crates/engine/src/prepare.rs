//! Preparation, done once per command as named steps: **fetch** (the oldest apiserver's
//! version, the preflight snapshot and the removed-API signals, read concurrently) →
//! **validate** (the upgrade path, the plan file against the cluster's nodes) → **probe**
//! (what the node action can reach, [`crate::reach`]) → **decide** (core's checks and plan). `refit plan` prints the result; `refit upgrade` turns it into a
//! schedule and executes it. Every input arrives parsed ([`PlanInput`]): nothing here reads
//! a file or an argument, so a command reads each input once.

use std::collections::{BTreeMap, BTreeSet};

use refit_core::VersionRequest;
use refit_core::accept::{AcceptRule, Acceptances};
use refit_core::batch::{self, Auto};
use refit_core::catalog::Catalog;
use refit_core::checks::{CheckOptions, Finding};
use refit_core::drain::DrainOptions;
use refit_core::path::{Policy, UpgradePath, upgrade_path};
use refit_core::plan::{MaxUnavailable, Mode, Plan, PlanOptions};
use refit_core::planfile::PlanFile;
use refit_core::removed;
use refit_core::snapshot::Snapshot;
use refit_kube::Connection;

/// What a plan is asked for, parsed and validated by the caller.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The release catalog.
    pub catalog: Catalog,
    /// `--to`.
    pub request: VersionRequest,
    /// `--max-unavailable` (under `auto`: its cap, the most a batch may take).
    pub max_unavailable: MaxUnavailable,
    /// `--max-unavailable auto` with its cap and `--across-zones`.
    pub auto: Option<Auto>,
    /// `--max-surge` with the replace action, and `--max-unavailable` beside it.
    pub surge: Option<refit_core::surge::Surge>,
    /// Online, ignoring safety checks, or offline.
    pub mode: Mode,
    /// The plan file (empty when none was given).
    pub plan_file: PlanFile,
    /// `--partial-ok`.
    pub partial_ok: bool,
    /// `--force`.
    pub force: bool,
    /// `--control-plane-only`.
    pub control_plane_only: bool,
    /// kubectl-drain allowances.
    pub drain: DrainOptions,
    /// Extra ingress labels (the plan file's come first).
    pub ingress_labels: Vec<String>,
    /// Extra storage labels.
    pub storage_labels: Vec<String>,
    /// Today (support windows, the catalog's end-of-life dates).
    pub today: jiff::civil::Date,
    /// How the node action says which versions it can reach (None: it cannot tell).
    pub probe: Option<refit_exec::probe::TargetProbe>,
    /// `--accept`: blockers accepted one by one (the plan file's `accept:` come first).
    pub accept: Vec<AcceptRule>,
    /// `--policy`: when the next minor is reachable (strict: only from the newest patch).
    pub policy: Policy,
    /// `--min-free-disk` and the readiness probe's other settings.
    pub readiness: crate::reach::ReadinessInput,
}

/// Everything preflight gathered and decided.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The oldest apiserver's version.
    pub current: refit_core::Version,
    /// The control plane's hops.
    pub path: UpgradePath,
    /// Findings and the ordered plan.
    pub plan: Plan,
    /// Checks that could not run, and why.
    pub not_run: Vec<String>,
    /// Node addresses: the plan file's, else each node's InternalIP.
    pub addresses: BTreeMap<String, String>,
    /// Worker batch size (under `auto`: the cap).
    pub worker_concurrency: usize,
    /// Under `--max-unavailable auto`: what it would do with the cluster as it is now.
    pub auto: Option<AutoPreview>,
    /// Under `--max-surge`: its limits in nodes for this cluster's workers.
    pub surge: Option<refit_core::surge::Limits>,
    /// What the node action can reach (None: it has no probe).
    pub reach: Option<crate::reach::ReachReport>,
    /// The version policy the path was resolved under.
    pub policy: Policy,
    /// Each node's identity as the readiness probe read it (ssh action).
    pub identities: BTreeMap<String, refit_core::identity::HostIdentity>,
    /// Acceptances that matched no finding (a typo, or a finding that went away): warned
    /// about, never an error — the cluster moves between plan and run.
    pub unused_accepts: Vec<AcceptRule>,
}

/// The plan's expected duration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanEta {
    /// Each phase's expected end, from the start.
    pub phases: Vec<refit_core::eta::PhaseEta>,
    /// The run's expected end, from the start, in seconds.
    pub ends_in_secs: u64,
    /// Against `--not-after`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<refit_core::eta::Fit>,
}

impl Prepared {
    /// The expected duration of this plan (estimates: nothing ran yet), and how much of it
    /// fits a window closing `window` from now. Workers go in batches of the concurrency the
    /// run would use: `auto`'s first batch as it would be chosen now (one node when a budget
    /// holds it), else the fixed batch size.
    pub fn eta(&self, window: Option<std::time::Duration>) -> PlanEta {
        let width = match self.auto.as_ref().map(|a| &a.first) {
            Some(refit_core::batch::Next::Batch(c)) => c.nodes.len(),
            Some(_) => 1,
            None => self.worker_concurrency,
        };
        let work = refit_core::eta::plan_work(&self.plan, self.path.hops.len(), width);
        let estimate = refit_core::eta::Estimate::default();
        let e = refit_core::eta::eta(&work, &estimate);
        PlanEta {
            phases: e.phases,
            ends_in_secs: e.ends_in.as_secs(),
            window: window.map(|w| refit_core::eta::fit(&work, &estimate, w)),
        }
    }
}

/// `--max-unavailable auto` in a plan: its settings and the first batch it would choose now
/// (each later batch is chosen from the cluster as it is then).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AutoPreview {
    /// The settings.
    pub settings: Auto,
    /// The first batch, or what holds it.
    pub first: batch::Next,
}

/// Why preparation stopped.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// What was asked cannot be planned for this cluster (no path to the version, the plan
    /// file names nodes the cluster does not have, ...): bad input.
    #[error("{0}")]
    Input(String),
    /// No upgrade path to what was asked (bad input too), with its ways out.
    #[error(transparent)]
    Path(#[from] refit_core::path::PathError),
    /// Every node is already at the target.
    #[error("{0}")]
    NothingToDo(String),
    /// The checks' findings leave no plan (bad input: what was asked cannot be honoured),
    /// with its ways out.
    #[error(transparent)]
    Refused(refit_core::plan::PlanError),
    /// The cluster could not be read.
    #[error(transparent)]
    Cluster(#[from] refit_kube::Error),
}

/// Fetch → validate → decide (see the module documentation).
pub async fn prepare(conn: &Connection, input: &PlanInput) -> Result<Prepared, PrepareError> {
    let started = std::time::Instant::now();
    // Fetch (1): the version the path starts from.
    let current = refit_kube::apis::oldest_apiserver_version(conn).await?;
    // Validate (1): the path.
    let path =
        upgrade_path(&input.catalog, &current, &input.request, input.policy, input.force, input.today)?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "connected, path resolved");
    // Fetch (2): the removed-API signals (each apiserver's metrics, metadata-only lists, Helm
    // releases) do not depend on the snapshot, so both are read at once. The snapshot's lists
    // use only GA versions, so they never show up in the deprecated-API metric the signals
    // scrape.
    let signals = async {
        let s = match input.mode {
            Mode::Offline => Ok(Vec::new()),
            _ => refit_kube::apis::collect_signals(conn, &input.catalog).await,
        };
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "removed-API signals read");
        s
    };
    let snapshot = async {
        let large = refit_kube::snapshot::LargeLists::for_server(&current);
        let s = refit_kube::snapshot::read_snapshot(conn, large).await;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "snapshot read");
        s
    };
    let (snapshot, signals) = tokio::join!(snapshot, signals);
    let mut snapshot = snapshot?;
    // Validate (2): the plan file against the nodes.
    let nodes: BTreeSet<String> = snapshot.nodes.iter().map(|n| n.name.clone()).collect();
    input.plan_file.validate(&nodes).map_err(|e| PrepareError::Input(e.to_string()))?;
    // The plan file's address replaces the node's InternalIP before the checks: the address
    // check (node-address-invalid) is about the one the action will get.
    for n in &mut snapshot.nodes {
        if let Some(a) = input.plan_file.nodes.get(&n.name).and_then(|f| f.address.clone()) {
            n.address = Some(a);
        }
    }
    // Probe: what the node action can reach, before anything changes. May move a minor `--to`
    // to the newest patch every node offers, and blocks on nodes that cannot reach their target.
    let draft = plan_options(input, &path);
    let reached = crate::reach::probe(
        input.probe.as_ref(),
        &snapshot,
        &input.plan_file,
        &input.catalog,
        &input.request,
        path,
        &draft,
        input.force,
        input.policy,
        input.today,
        input.readiness,
    )
    .await?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "target probed");
    // Decide.
    let prepared = decide(input, current, reached, &snapshot, signals)?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "preflight decided");
    Ok(prepared)
}

/// The pure part: checks and plan from what was fetched.
fn decide(
    input: &PlanInput,
    current: refit_core::Version,
    reached: crate::reach::Reached,
    snapshot: &Snapshot,
    signals: Result<Vec<removed::Signal>, refit_kube::Error>,
) -> Result<Prepared, PrepareError> {
    let path = reached.path;
    let mut extra: Vec<Finding> = reached.findings;
    let mut not_run = reached.not_run;
    if input.mode == Mode::Offline {
        not_run.push("all checks (--offline)".to_string());
    } else {
        match signals {
            Ok(signals) => {
                let found = removed::findings(
                    &input.catalog,
                    current.minor_version(),
                    path.to.minor_version(),
                    &signals,
                );
                extra.extend(refit_core::preflight::removed_api_findings(&found));
            }
            Err(e) => not_run.push(format!("removed-API usage ({e})")),
        }
        extra.extend(refit_core::preflight::forced_findings(&path));
    }
    let plan_file = &input.plan_file;
    let plan_opts = plan_options(input, &path);
    let mut ingress = plan_file.ingress_labels.clone();
    ingress.extend(input.ingress_labels.iter().cloned());
    let mut storage = plan_file.storage_labels.clone();
    storage.extend(input.storage_labels.iter().cloned());
    let check_opts = CheckOptions {
        target: Some(path.to.clone()),
        force: input.force,
        drain: input.drain,
        ingress_labels: ingress,
        storage_labels: storage,
    };
    let accept = Acceptances::new(&plan_file.accept, &input.accept);
    let mut plan = refit_core::preflight::preflight_accepting(
        snapshot,
        Some(&path),
        extra,
        &plan_opts,
        &check_opts,
        &accept,
    )
    .map_err(|e| match e {
        refit_core::plan::PlanError::NothingToDo(_) => PrepareError::NothingToDo(e.to_string()),
        e => PrepareError::Refused(e),
    })?;
    plan.blocked |= refit_core::reach::blocks_regardless_of_mode(&plan);
    let unused_accepts = accept.unused(&plan.accepted).into_iter().cloned().collect();
    let workers = snapshot.nodes.iter().filter(|n| !n.is_control_plane()).count();
    let auto = input.auto.map(|settings| {
        let candidates: Vec<String> = plan
            .phases
            .iter()
            .filter(|p| p.kind == refit_core::plan::PhaseKind::Workers)
            .flat_map(|p| p.batches.iter().flat_map(|b| b.units.iter().map(|u| u.node.clone())))
            .collect();
        let first = batch::next(snapshot, &[], &candidates, candidates.len(), settings, &check_opts);
        AutoPreview { settings, first }
    });
    let addresses: BTreeMap<String, String> =
        plan_file.addresses(snapshot.nodes.iter().map(|n| (n.name.as_str(), n.address.as_deref())));
    Ok(Prepared {
        current,
        path,
        plan,
        not_run,
        addresses,
        worker_concurrency: input.max_unavailable.batch_size(workers),
        auto,
        surge: input.surge.map(|s| s.limits(workers)),
        reach: reached.report,
        identities: reached.identities,
        policy: input.policy,
        unused_accepts,
    })
}

/// The plan options `input` asks for, targeting `path`'s end.
fn plan_options(input: &PlanInput, path: &UpgradePath) -> PlanOptions {
    PlanOptions {
        target: path.to.clone(),
        max_unavailable: input.max_unavailable,
        mode: input.mode,
        partial_ok: input.partial_ok,
        force: input.force,
        control_plane_only: input.control_plane_only,
        extra_roles: input.plan_file.extra_roles(),
    }
}
