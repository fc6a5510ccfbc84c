//! A run's lifecycle around its execution: the cluster lock ([`lock`]), what to do about the
//! cluster's latest run (resume it, give it up, refuse), and new runs with unique ids. The
//! CLI, a server or a hub controller call these in the same order: lock → [`decide`] →
//! ([`abandon`]) → prepare → [`create_run`] or [`resume_spec`] → execute → release.

pub mod lock;

use refit_core::run::{Continuation, OnUndrainable, RunState};
use refit_kube::Connection;

use crate::context::{Journal, JournalError, RunRecord};
use crate::spec::RunSpec;

/// What can go wrong around a run.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The journal could not be read or written.
    #[error("the run journal: {0}")]
    Journal(#[from] JournalError),
    /// The cluster could not be read or changed.
    #[error(transparent)]
    Cluster(#[from] refit_kube::Error),
    /// A stored run this version cannot read: never started over, never resumed.
    #[error(
        "run {run} in the store: {detail}; it was written by another refit version (nothing was changed)"
    )]
    Unreadable {
        /// The run.
        run: String,
        /// What does not parse.
        detail: String,
    },
    /// Every id of this second was taken.
    #[error("cannot find a free run id for {0} in the store")]
    NoFreeId(String),
}

/// What a new command does about the cluster's latest run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No unfinished run: plan and start a new one.
    Fresh,
    /// An unfinished run to the same target: continue it with its frozen schedule.
    Resume(RunRecord),
    /// The operator gives this unfinished run up, then a new one starts.
    Abandon(RunRecord),
    /// An unfinished run to another target: refuse (finish it, or abandon it).
    Conflict(RunRecord),
}

/// Decides from the cluster's latest run and the requested target (core's rules: a minor
/// `--to` continues its run at whichever patch the nodes could reach when it started). A state
/// this version does not know is an error: never start over, or resume, a run it cannot read.
pub async fn decide(
    journal: &dyn Journal,
    cluster: &str,
    request: &refit_core::VersionRequest,
    catalog: &refit_core::catalog::Catalog,
    abandon: bool,
) -> Result<Decision, LifecycleError> {
    let Some(latest) = journal.latest_run(cluster).await? else { return Ok(Decision::Fresh) };
    let state: RunState = latest
        .state
        .parse()
        .map_err(|detail| LifecycleError::Unreadable { run: latest.id.clone(), detail })?;
    let target = refit_core::reach::continued_target(request, catalog, Some(latest.target.as_str()));
    Ok(match refit_core::run::continuation(Some((state, latest.target.as_str())), target.as_ref(), abandon) {
        Continuation::Fresh => Decision::Fresh,
        Continuation::Resume => Decision::Resume(latest),
        Continuation::Abandon => Decision::Abandon(latest),
        Continuation::Conflict => Decision::Conflict(latest),
    })
}

/// Gives up an unfinished run: the nodes it cordoned are uncordoned (they are refit's to give
/// back; a new run would otherwise see them as another run's), then it is marked abandoned.
/// Returns the nodes uncordoned.
pub async fn abandon(
    conn: &Connection,
    journal: &dyn Journal,
    run: &str,
) -> Result<Vec<String>, LifecycleError> {
    let released = give_back_cordons(conn, run).await?;
    journal.set_run_state(run, RunState::Abandoned).await?;
    Ok(released)
}

/// Uncordons the nodes `run` cordoned; the nodes uncordoned. Returns once they lost the
/// unschedulable taint too (or after [`UNTAINT_WAIT`]): a plan made right after must be able to
/// count them as room for the pods it moves.
pub async fn give_back_cordons(conn: &Connection, run: &str) -> Result<Vec<String>, LifecycleError> {
    let mut released = Vec::new();
    for (node, state) in refit_kube::node::node_states(conn).await? {
        if state.unschedulable && state.cordoned_by.as_deref() == Some(run) {
            refit_kube::cordon::uncordon(conn, &node, run).await?;
            released.push(node);
        }
    }
    for node in &released {
        if !refit_kube::cordon::wait_untainted(conn, node, UNTAINT_WAIT).await? {
            tracing::warn!(
                "{node} still carries the unschedulable taint {UNTAINT_WAIT:?} after its uncordon"
            );
        }
    }
    Ok(released)
}

/// How long [`give_back_cordons`] waits for the node lifecycle controller to lift the
/// unschedulable taint of the nodes it uncordoned.
pub const UNTAINT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The run whose cordons a new run gives back before planning: the run of the lock holder
/// this command took the cluster lock over from, when this store has no record of it (its
/// journal is elsewhere: another machine's, or a hub controller replica's that died). That run
/// executes nothing any more (its lock was taken under core's rules), and nobody could ever
/// resume it from here; its cordons would otherwise stop this run at those nodes
/// ([`refit_core::lock::foreign_cordon`]) or, on a node it already upgraded, stay for good.
/// Given back, the nodes are planned from what the cluster shows, like any other.
pub async fn orphaned_run(
    journal: Option<&dyn Journal>,
    lock: &lock::Lock,
) -> Result<Option<String>, LifecycleError> {
    let Some(run) = lock.taken_from_run() else { return Ok(None) };
    let known = match journal {
        Some(j) => j.run(run).await?.is_some(),
        None => false,
    };
    Ok((!known).then(|| run.to_string()))
}

/// How to behave while executing: what a rerun may change about a run (an operator reruns
/// with `--on-undrainable skip`, a longer timeout, or an allowance for emptyDir data); the
/// schedule itself stays as it was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    /// What to do with a node that cannot be drained.
    pub on_undrainable: OnUndrainable,
    /// Per-node drain deadline, seconds.
    pub drain_timeout_secs: u64,
    /// Per-node action and validation deadline, seconds.
    pub node_timeout_secs: u64,
    /// Evictions in flight per node.
    pub eviction_concurrency: usize,
    /// kubectl-drain allowances.
    pub drain_rules: refit_core::drain::DrainOptions,
    /// What a failed health gate does (`--on-gate-failure`).
    pub on_gate_failure: refit_core::health::OnGateFailure,
}

/// The behaviour `refit upgrade` has with no flag given ([`crate::spec::defaults`]).
impl Default for Behaviour {
    fn default() -> Behaviour {
        use crate::spec::defaults;
        Behaviour {
            on_undrainable: OnUndrainable::default(),
            drain_timeout_secs: defaults::DRAIN_TIMEOUT.as_secs(),
            node_timeout_secs: defaults::NODE_TIMEOUT.as_secs(),
            eviction_concurrency: defaults::EVICTION_CONCURRENCY,
            drain_rules: refit_core::drain::DrainOptions::default(),
            on_gate_failure: refit_core::health::OnGateFailure::default(),
        }
    }
}

impl RunSpec {
    /// This spec with `b`'s behaviour.
    pub fn with_behaviour(mut self, b: Behaviour) -> RunSpec {
        self.on_undrainable = b.on_undrainable;
        self.drain_timeout_secs = b.drain_timeout_secs;
        self.node_timeout_secs = b.node_timeout_secs;
        self.eviction_concurrency = b.eviction_concurrency;
        self.drain_rules = b.drain_rules;
        self.on_gate_failure = b.on_gate_failure;
        self
    }
}

/// The frozen spec of a run being resumed, with this command's behaviour.
pub fn resume_spec(prev: &RunRecord, behaviour: Behaviour) -> Result<RunSpec, LifecycleError> {
    let spec: RunSpec = serde_json::from_str(&prev.spec).map_err(|e| LifecycleError::Unreadable {
        run: prev.id.clone(),
        detail: format!("unreadable spec ({e})"),
    })?;
    Ok(spec.with_behaviour(behaviour))
}

/// Records a new run and returns its id: `up-<time>-<target>`, with `-2`, `-3`... when that id
/// is taken. Ids are per second and one store holds many clusters (a fleet starts members in
/// parallel), so a taken id is expected; reusing it would journal two clusters into one run.
pub async fn create_run(
    journal: &dyn Journal,
    cluster: &str,
    spec: &RunSpec,
    now: &jiff::Zoned,
) -> Result<String, LifecycleError> {
    let base = format!(
        "up-{}-{}",
        now.strftime("%Y%m%d-%H%M%S"),
        spec.schedule.target.to_string().replace('.', "-")
    );
    let body = serde_json::to_string(spec)
        .map_err(|e| LifecycleError::Unreadable { run: base.clone(), detail: e.to_string() })?;
    for n in 1..=1000u32 {
        let id = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let row = RunRecord {
            id: id.clone(),
            cluster: cluster.to_string(),
            target: spec.schedule.target.to_string(),
            state: RunState::Running.as_str().into(),
            spec: body.clone(),
        };
        // Creating is idempotent: what comes back is ours only if it is exactly what we wrote.
        let stored = journal.create_run(row.clone()).await?;
        if stored.cluster == row.cluster && stored.spec == row.spec && stored.state == row.state {
            return Ok(id);
        }
    }
    Err(LifecycleError::NoFreeId(base))
}
