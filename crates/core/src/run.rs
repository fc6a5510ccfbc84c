//! A run: the plan turned into an ordered schedule, and the decisions that let a run resume
//! from its journal after any failure.
//!
//! The schedule is what the engine executes, in order: stages of units (nodes or external etcd
//! hosts), each stage moving its units to one version. The control plane walks the path one
//! hop at a time, one member at a time; workers are upgraded once, straight to the target,
//! unless a control-plane hop would leave a kubelet further behind than the skew policy allows
//! — then those workers (only those) are first brought to the control plane's version of the
//! moment, in a worker stage before that hop.
//!
//! The schedule is frozen into the run's record when the run starts, so a resumed run
//! executes exactly what was decided, whatever the cluster looks like mid-flight (half-drained
//! nodes would otherwise trip the preflight checks that allowed the run in the first place).
//!
//! Resuming is decided per unit from two sources: the journal (which steps of this unit, for
//! this stage's version, were recorded done) and the cluster (a node already at the version and
//! not cordoned by this run is finished, whatever the journal lost).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::path::UpgradePath;
use crate::plan::{Exclusion, PhaseKind, Plan, Role, Step};
use crate::skew::node_max_lag;
use crate::version::Version;

/// What to do with a node whose drain cannot finish (`--on-undrainable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUndrainable {
    /// Stop the run with a report naming the blocking pods and PDBs (the node is uncordoned:
    /// it was not changed).
    #[default]
    Fail,
    /// Leave the node cordoned and not upgraded, report it, and go on with the others.
    Skip,
    /// Delete what remains (bypassing PDBs) and go on.
    Force,
}

impl FromStr for OnUndrainable {
    type Err = crate::setting::BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(OnUndrainable::Fail),
            "skip" => Ok(OnUndrainable::Skip),
            "force" => Ok(OnUndrainable::Force),
            _ => Err(crate::setting::BadValue::new(
                crate::setting::Setting::OnUndrainable,
                s,
                "one of fail, skip or force",
            )),
        }
    }
}

impl fmt::Display for OnUndrainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnUndrainable::Fail => "fail",
            OnUndrainable::Skip => "skip",
            OnUndrainable::Force => "force",
        })
    }
}

/// How units are upgraded: in place (the action changes the node) or by replacing the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Style {
    /// cordon, drain, upgrade, validate, uncordon.
    #[default]
    InPlace,
    /// create the replacement (upgrade), validate it, cordon and drain the old node, remove it.
    Replace,
}

/// One node (or external etcd host) in one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitWork {
    /// Node or host name.
    pub node: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
    /// Version before this stage (as known when the schedule was made).
    pub from: String,
    /// Version after this stage.
    pub to: Version,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Not a Kubernetes node (an external etcd host): nothing to cordon or observe.
    pub external: bool,
    /// The first control-plane member of its hop (kubeadm: `upgrade apply` here, `upgrade
    /// node` elsewhere).
    pub first_control_plane: bool,
}

impl UnitWork {
    /// The phase its roles put it in (the `{phase}` an action receives).
    pub fn phase(&self) -> PhaseKind {
        PhaseKind::of_roles(&self.roles)
    }

    /// The node that replaces this one at its stage's version (the replace style).
    pub fn replacement(&self) -> String {
        replacement_name(&self.node, &self.to)
    }

    /// Roles as the action receives them: `etcd,control-plane`.
    pub fn role_list(&self) -> Vec<String> {
        self.roles.iter().map(|r| role_name(*r).to_string()).collect()
    }
}

/// The name of the node that replaces `node` at `to`: deterministic, so a resumed run finds
/// the replacement it already created. A replacement of a replacement drops the old suffix.
pub fn replacement_name(node: &str, to: &Version) -> String {
    let base = match node.rsplit_once("-v") {
        Some((b, suffix)) if suffix.chars().all(|c| c.is_ascii_digit() || c == '-') => b,
        _ => node,
    };
    format!("{base}-v{}-{}-{}", to.major, to.minor, to.patch)
}

/// What a replacement node takes over from the node it replaces (issue 18 item 13). By
/// default every custom label and annotation except the ones that describe the old machine
/// and the agents running on it (see [`carried_over::NOT_CARRIED_LABELS`] and
/// [`carried_over::NOT_CARRIED_ANNOTATIONS`]); the plan file can narrow that to an allow-list.
/// Keys the new node already has are never overwritten (applied by the kube crate).
pub mod carried_over {
    use serde::{Deserialize, Serialize};

    /// Label prefixes that belong to the machine, the kubelet or a node agent: Kubernetes'
    /// own (including topology: a replacement may land in another zone), kwok's, CSI drivers'
    /// topology keys, Cluster API's machine bookkeeping, and refit's own.
    pub const NOT_CARRIED_LABELS: &[&str] = &[
        "kubernetes.io/",
        "beta.kubernetes.io/",
        "node.kubernetes.io/",
        "topology.kubernetes.io/",
        "node-role.kubernetes.io/",
        "kwok.x-k8s.io/",
        "cluster.x-k8s.io/",
        "topology.ebs.csi.aws.com/",
        "topology.gke.io/",
        "topology.disk.csi.azure.com/",
        "topology.cinder.csi.openstack.org/",
        "refit.dev/",
    ];

    /// Annotation prefixes that belong to the machine or a node agent: the CSI node ids, the
    /// CNI's addresses and tunnel endpoints (Calico, Flannel, Cilium, Weave), Cluster API's
    /// machine, the kubelet's and kubeadm's own, kwok's, and refit's.
    pub const NOT_CARRIED_ANNOTATIONS: &[&str] = &[
        "node.alpha.kubernetes.io/",
        "volumes.kubernetes.io/",
        "csi.volume.kubernetes.io/",
        "kubeadm.alpha.kubernetes.io/",
        "projectcalico.org/",
        "flannel.alpha.coreos.com/",
        "io.cilium.",
        "network.cilium.io/",
        "weave.works/",
        "cluster.x-k8s.io/",
        "kwok.x-k8s.io/",
        "refit.dev/",
    ];

    /// Which custom keys a replacement takes over: `None` lists mean the default (everything
    /// not in the NOT_CARRIED lists); a list is an allow-list of exact keys or prefixes ending
    /// in `/` or `*` (still never a NOT_CARRIED key: those describe the old machine).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct CarryOver {
        /// Labels to carry over.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub labels: Option<Vec<String>>,
        /// Annotations to carry over.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub annotations: Option<Vec<String>>,
    }

    fn matches(pattern: &str, key: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None if pattern.ends_with('/') => key.starts_with(pattern),
            None => key == pattern,
        }
    }

    fn allowed(list: &Option<Vec<String>>, denied: &[&str], key: &str) -> bool {
        !denied.iter().any(|p| key.starts_with(p))
            && list.as_ref().is_none_or(|l| l.iter().any(|p| matches(p, key)))
    }

    impl CarryOver {
        /// Whether a label is copied to the replacement.
        pub fn label(&self, key: &str) -> bool {
            allowed(&self.labels, NOT_CARRIED_LABELS, key)
        }

        /// Whether an annotation is copied to the replacement.
        pub fn annotation(&self, key: &str) -> bool {
            allowed(&self.annotations, NOT_CARRIED_ANNOTATIONS, key)
        }

        /// Whether a taint (by key) is copied: the node lifecycle ones are not.
        pub fn taint(&self, key: &str) -> bool {
            !key.starts_with("node.kubernetes.io/")
        }

        /// A pattern of an allow-list that can never match (a NOT_CARRIED key), with why.
        pub fn check(&self) -> Result<(), String> {
            let lists = [
                (&self.labels, NOT_CARRIED_LABELS, "labels"),
                (&self.annotations, NOT_CARRIED_ANNOTATIONS, "annotations"),
            ];
            for (list, denied, what) in lists {
                for p in list.iter().flatten() {
                    if p.trim().is_empty() {
                        return Err(format!("carryOver.{what}: an empty pattern"));
                    }
                    if let Some(d) = denied.iter().find(|d| p.starts_with(**d)) {
                        return Err(format!(
                            "carryOver.{what}: '{p}' is under {d}, which describes the old machine and is never carried over"
                        ));
                    }
                }
            }
            Ok(())
        }
    }

    /// What to do when the replacement's name is already taken.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Adoption {
        /// No such node: create it.
        Create,
        /// It exists and this unit's step began in an earlier attempt (a run killed after the
        /// create command): it is ours, go on with it.
        Adopt,
        /// It exists and this run never began creating it: someone else's node that merely has
        /// the name; refit does not take it over.
        Refuse,
    }

    /// The rule for an existing node with the replacement's name.
    pub fn adoption(exists: bool, begun_before: bool) -> Adoption {
        match (exists, begun_before) {
            (false, _) => Adoption::Create,
            (true, true) => Adoption::Adopt,
            (true, false) => Adoption::Refuse,
        }
    }
}

/// A role's name as actions and output spell it.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Etcd => "etcd",
        Role::ControlPlane => "control-plane",
        Role::Worker => "worker",
    }
}

/// A phase's name as actions and output spell it.
pub fn phase_name(p: PhaseKind) -> &'static str {
    match p {
        PhaseKind::Etcd => "etcd",
        PhaseKind::ControlPlane => "control-plane",
        PhaseKind::Workers => "workers",
        PhaseKind::ClusterServices => "cluster-services",
    }
}

/// Units moved to one version, `concurrency` at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The phase (etcd and control-plane stages run one unit at a time).
    pub phase: PhaseKind,
    /// The version this stage moves its units to.
    pub to: Version,
    /// Units at once (under `auto`: its cap).
    pub concurrency: usize,
    /// The units, in order.
    pub units: Vec<UnitWork>,
    /// `--max-unavailable auto`: each batch is chosen from the live cluster before it starts
    /// ([`crate::batch::next`]) instead of a sliding window of `concurrency`. Absent in
    /// schedules stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<crate::batch::Auto>,
    /// `--max-surge` with the replace action: each unit's two halves (add the replacement,
    /// retire the old node) are started by [`crate::surge::next`] within these limits
    /// instead of a window of `concurrency` units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surge: Option<crate::surge::Limits>,
}

/// Everything a run executes, frozen when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The target.
    pub target: Version,
    /// The stages, in order; cluster services come after the last stage unless
    /// `cluster_services` is false.
    pub stages: Vec<Stage>,
    /// Whether kube-proxy and CoreDNS are moved to the target's versions at the end.
    pub cluster_services: bool,
    /// Units planned but left out (already at target, --partial-ok, --control-plane-only).
    pub excluded: Vec<(String, Exclusion)>,
}

impl Schedule {
    /// Batches every worker stage with `auto`; `width` (its cap resolved against the
    /// workers) is what the stage shows as its units at once.
    pub fn batch_automatically(&mut self, auto: crate::batch::Auto, width: usize) {
        for s in self.stages.iter_mut().filter(|s| s.phase == PhaseKind::Workers) {
            s.auto = Some(auto);
            s.concurrency = width.max(1);
        }
    }

    /// Schedules the replace-style worker stages by `surge` (its limits resolved against each
    /// stage's workers); "at once" becomes the nodes that may be under way together.
    pub fn surge(&mut self, surge: crate::surge::Surge) {
        let replace = |s: &Stage| s.units.iter().all(|u| u.steps.contains(&Step::Remove));
        for s in self.stages.iter_mut().filter(|s| s.phase == PhaseKind::Workers && replace(s)) {
            let limits = surge.limits(s.units.len());
            s.surge = Some(limits);
            s.concurrency = limits.surge.saturating_add(limits.unavailable).clamp(1, s.units.len().max(1));
        }
    }

    /// Every (stage, unit) pair.
    pub fn units(&self) -> impl Iterator<Item = (usize, &UnitWork)> {
        self.stages.iter().enumerate().flat_map(|(i, s)| s.units.iter().map(move |u| (i, u)))
    }
}

/// How the engine must move each unit through its steps.
fn steps_for(external: bool, style: Style) -> Vec<Step> {
    match (external, style) {
        (true, _) => vec![Step::Upgrade, Step::Validate],
        (false, Style::InPlace) => {
            vec![Step::Cordon, Step::Drain, Step::Upgrade, Step::Validate, Step::Uncordon]
        }
        (false, Style::Replace) => {
            vec![Step::Upgrade, Step::Validate, Step::Cordon, Step::Drain, Step::Remove]
        }
    }
}

/// Turns a plan and the control plane's path into the schedule.
///
/// `control_plane_version` is the oldest apiserver now; `style` how nodes are upgraded;
/// `worker_concurrency` the number of workers that may be unavailable at once.
pub fn schedule(
    plan: &Plan,
    path: &UpgradePath,
    style: Style,
    worker_concurrency: usize,
    cluster_services: bool,
) -> Schedule {
    let external: BTreeSet<&str> = plan
        .phases
        .iter()
        .flat_map(|p| p.batches.iter().flat_map(|b| b.units.iter()))
        .filter(|u| u.steps == [Step::Upgrade, Step::Validate])
        .map(|u| u.node.as_str())
        .collect();
    let units_of = |kind: PhaseKind| -> Vec<&crate::plan::UnitPlan> {
        plan.phases
            .iter()
            .filter(|p| p.kind == kind)
            .flat_map(|p| p.batches.iter().flat_map(|b| b.units.iter()))
            .collect()
    };
    let control: Vec<(PhaseKind, &crate::plan::UnitPlan)> = units_of(PhaseKind::Etcd)
        .into_iter()
        .map(|u| (PhaseKind::Etcd, u))
        .chain(units_of(PhaseKind::ControlPlane).into_iter().map(|u| (PhaseKind::ControlPlane, u)))
        .collect();
    let workers = units_of(PhaseKind::Workers);
    // What each worker runs as the schedule unfolds.
    let mut worker_at: BTreeMap<&str, Option<Version>> =
        workers.iter().map(|u| (u.node.as_str(), u.from.parse::<Version>().ok())).collect();
    // Replacing is for workers: etcd and control-plane members keep their identity (their
    // certificates, etcd membership and advertise addresses) and are upgraded in place.
    let work = |u: &crate::plan::UnitPlan, from: String, to: &Version, first: bool| {
        let ext = external.contains(u.node.as_str());
        let worker = !u.roles.contains(&Role::Etcd) && !u.roles.contains(&Role::ControlPlane);
        UnitWork {
            node: u.node.clone(),
            roles: u.roles.clone(),
            from,
            to: to.clone(),
            steps: steps_for(ext, if worker { style } else { Style::InPlace }),
            external: ext,
            first_control_plane: first,
        }
    };
    let mut hops: Vec<(Version, Version)> =
        path.hops.iter().map(|h| (h.from.clone(), h.to.clone())).collect();
    if hops.is_empty() && !control.is_empty() {
        // Already at the target (or --force): one pass over the members that were planned.
        hops.push((path.from.clone(), plan.target.clone()));
    }
    let mut stages = Vec::new();
    for (from, to) in &hops {
        let lagging: Vec<&crate::plan::UnitPlan> = workers
            .iter()
            .copied()
            .filter(|u| match worker_at.get(u.node.as_str()).and_then(Option::as_ref) {
                Some(v) => {
                    to.minor_version().minors_ahead_of(v.minor_version()) > node_max_lag(v.minor_version())
                }
                None => false,
            })
            .collect();
        if !lagging.is_empty() {
            let units = lagging
                .iter()
                .map(|u| {
                    let now = worker_at
                        .get(u.node.as_str())
                        .and_then(Option::as_ref)
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    work(u, now, from, false)
                })
                .collect();
            for u in &lagging {
                worker_at.insert(u.node.as_str(), Some(from.clone()));
            }
            stages.push(Stage {
                phase: PhaseKind::Workers,
                to: from.clone(),
                concurrency: worker_concurrency.max(1),
                units,
                auto: None,
                surge: None,
            });
        }
        if let Some(&(phase, _)) = control.first() {
            let units = control
                .iter()
                .enumerate()
                .map(|(i, (_, u))| {
                    let first = i
                        == control
                            .iter()
                            .position(|(_, c)| c.roles.contains(&Role::ControlPlane))
                            .unwrap_or(0);
                    let was = if stages.iter().any(|s: &Stage| s.phase != PhaseKind::Workers) {
                        from.to_string()
                    } else {
                        u.from.trim_start_matches('v').to_string()
                    };
                    work(u, was, to, first)
                })
                .collect();
            stages.push(Stage { phase, to: to.clone(), concurrency: 1, units, auto: None, surge: None });
        }
    }
    let remaining: Vec<UnitWork> = workers
        .iter()
        .filter(|u| {
            worker_at.get(u.node.as_str()).and_then(Option::as_ref) != Some(&plan.target)
                || plan_includes_at_target(plan)
        })
        .map(|u| {
            let now = worker_at
                .get(u.node.as_str())
                .and_then(Option::as_ref)
                .map(|v| v.to_string())
                .unwrap_or_else(|| u.from.clone());
            work(u, now, &plan.target, false)
        })
        .collect();
    if !remaining.is_empty() {
        stages.push(Stage {
            phase: PhaseKind::Workers,
            to: plan.target.clone(),
            concurrency: worker_concurrency.max(1),
            units: remaining,
            auto: None,
            surge: None,
        });
    }
    Schedule {
        target: plan.target.clone(),
        stages,
        cluster_services: cluster_services
            && plan.phases.iter().any(|p| p.kind == PhaseKind::ClusterServices),
        excluded: plan.excluded.clone(),
    }
}

/// A plan that includes units already at the target was made with `--force`: such workers
/// are upgraded again on purpose.
fn plan_includes_at_target(plan: &Plan) -> bool {
    !plan.excluded.iter().any(|(_, why)| matches!(why, Exclusion::AtTarget(_)))
}

/// The journal's name for a step of a unit in a stage: `upgrade@1.37.1`.
pub fn step_key(step: Step, to: &Version) -> String {
    format!("{}@{to}", step_name(step))
}

/// Whether the journal shows work on `unit` at its version (a step started, done, failed or
/// skipped): such a unit is under way (or finished), and a deadline does not hold it back —
/// a node is never left halfway because a window closed.
pub fn begun(unit: &UnitWork, journal: &BTreeMap<String, StepState>) -> bool {
    unit.steps.iter().any(|s| journal.contains_key(&step_key(*s, &unit.to)))
}

/// A step's name in the journal and in output.
pub fn step_name(step: Step) -> &'static str {
    match step {
        Step::Cordon => "cordon",
        Step::Drain => "drain",
        Step::Upgrade => "upgrade",
        Step::Validate => "validate",
        Step::Uncordon => "uncordon",
        Step::Remove => "remove",
    }
}

/// A step's recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Begun (recorded before the mutation).
    Started,
    /// Finished (recorded after it).
    Done,
    /// Failed.
    Failed,
    /// Decided not to do (the reason is in the detail).
    Skipped,
}

impl StepState {
    /// The journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Started => "started",
            StepState::Done => "done",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
        }
    }
}

impl FromStr for StepState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "started" => Ok(StepState::Started),
            "done" => Ok(StepState::Done),
            "failed" => Ok(StepState::Failed),
            "skipped" => Ok(StepState::Skipped),
            _ => Err(format!("unknown step state '{s}'")),
        }
    }
}

/// What the cluster shows about a unit right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The node exists.
    pub exists: bool,
    /// Its kubelet's version.
    pub kubelet: Option<Version>,
    /// Ready.
    pub ready: bool,
    /// Cordoned, and the cordon is this run's.
    pub cordoned_by_this_run: bool,
}

/// Where a unit stands when a run (re)starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Nothing left to do; the reason says why.
    Done(String),
    /// Continue at this index of the unit's steps.
    At(usize),
    /// The node is no longer in the cluster (deleted after planning) and this unit never
    /// replaced it: nothing to upgrade, skipped with a warning (the reason says so).
    Gone(String),
}

/// Decides where `unit` continues, from its journal entries (`step_key` → state) and what the
/// cluster shows. Pure, so every crash point can be tested without a cluster.
///
/// - Every step recorded done → done.
/// - The last step done (uncordon, remove) → done: a node that got this far is finished.
/// - A node at the stage's version that this run does not hold cordoned, with no step of this
///   stage begun → done ("already at the target"; with `force` it is upgraded again unless
///   the journal says this run already did it).
/// - Otherwise: the first step not recorded done. An upgrade recorded as started but not done
///   is re-run (actions are idempotent by contract), unless the node already reports the
///   version, in which case the run continues with validation.
pub fn resume_point(
    unit: &UnitWork,
    journal: &BTreeMap<String, StepState>,
    observed: &Observed,
    force: bool,
) -> Resume {
    let state = |s: Step| journal.get(&step_key(s, &unit.to)).copied();
    let done = |s: Step| matches!(state(s), Some(StepState::Done) | Some(StepState::Skipped));
    if unit.steps.iter().all(|s| done(*s)) {
        return Resume::Done("finished earlier in this run".into());
    }
    if let Some(last) = unit.steps.last()
        && done(*last)
    {
        return Resume::Done("finished earlier in this run".into());
    }
    let begun = unit.steps.iter().any(|s| state(*s).is_some());
    let at_version = observed.kubelet.as_ref().is_some_and(|v| v.release() == unit.to.release());
    if !unit.external && !begun && at_version && !observed.cordoned_by_this_run && !force {
        return Resume::Done(format!("already at {}", unit.to));
    }
    if unit.steps.contains(&Step::Remove) && !unit.external && !observed.exists && begun {
        // Replaced: the old node is gone, so the remaining steps have nothing to act on.
        return Resume::Done("replaced earlier in this run".into());
    }
    if !unit.external && !observed.exists {
        return Resume::Gone(gone_reason(&unit.node));
    }
    let mut at = unit.steps.iter().position(|s| !done(*s)).unwrap_or(unit.steps.len());
    if unit.steps.get(at) == Some(&Step::Upgrade)
        && at_version
        && !unit.external
        && state(Step::Upgrade).is_some()
    {
        at = at.saturating_add(1);
    }
    // Between the cordon and the end of the drain's effect (the step after the drain), the
    // node must be held by this run. If it is not (refit gave the cordon back after a failed
    // drain, or an operator uncordoned it), the drain's work is void: cordon again.
    if let (Some(c), Some(d)) = (
        unit.steps.iter().position(|s| *s == Step::Cordon),
        unit.steps.iter().position(|s| *s == Step::Drain),
    ) && at > c
        && at <= d.saturating_add(1)
        && !unit.external
        && !observed.cordoned_by_this_run
    {
        at = c;
    }
    Resume::At(at)
}

/// Why a unit whose node left the cluster during the run is skipped.
pub fn gone_reason(node: &str) -> String {
    format!("{node} is no longer in the cluster (deleted after planning): not upgraded")
}

/// Whether a unit whose step failed is skipped instead, because its node left the cluster:
/// only an in-place unit (a replace unit's node is deleted by the unit itself) of a node, not
/// an external etcd host.
pub fn skip_when_gone(unit: &UnitWork, observed: &Observed) -> bool {
    !unit.external && !unit.steps.contains(&Step::Remove) && !observed.exists
}

/// Nodes the cluster has now that the plan never saw (neither scheduled nor left out: added
/// during the run) and that are not at the schedule's target: reported at the end as not
/// upgraded, so a run never claims every node is at the target when one joined after
/// planning. Replacements this run created are not new.
pub fn added_after_planning<'a>(
    schedule: &Schedule,
    nodes: impl IntoIterator<Item = (&'a str, Option<&'a Version>)>,
) -> Vec<(String, String)> {
    let mut known: std::collections::BTreeSet<String> =
        schedule.excluded.iter().map(|(n, _)| n.clone()).collect();
    for (_, u) in schedule.units() {
        known.insert(u.node.clone());
        if u.steps.contains(&Step::Remove) {
            known.insert(u.replacement());
        }
    }
    nodes
        .into_iter()
        .filter(|(n, _)| !known.contains(*n))
        .filter(|(_, v)| v.is_none_or(|v| v.release() != schedule.target.release()))
        .map(|(n, v)| {
            let at = v.map_or_else(|| "an unknown version".to_string(), |v| v.to_string());
            (n.to_string(), format!("not upgraded: added after planning (at {at})"))
        })
        .collect()
}

/// The run's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Executing (or killed while executing: a rerun resumes it).
    Running,
    /// Every unit done.
    Completed,
    /// Stopped on a failure; a rerun resumes it.
    Failed,
    /// Stopped by the operator (Ctrl-C); a rerun resumes it.
    Interrupted,
    /// Stopped at its deadline (`--not-after`, a fleet member's maintenance window closing):
    /// no node was started after it, none was cut off; a rerun resumes it.
    Paused,
    /// Given up by the operator (`--abandon`): never resumed; its cordons were given back.
    Abandoned,
}

impl RunState {
    /// The store's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
            RunState::Paused => "paused",
            RunState::Abandoned => "abandoned",
        }
    }

    /// Whether a rerun of the same command continues this run.
    pub fn resumable(self) -> bool {
        !matches!(self, RunState::Completed | RunState::Abandoned)
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(RunState::Running),
            "completed" => Ok(RunState::Completed),
            "failed" => Ok(RunState::Failed),
            "interrupted" => Ok(RunState::Interrupted),
            "paused" => Ok(RunState::Paused),
            "abandoned" => Ok(RunState::Abandoned),
            _ => Err(format!("unknown run state '{s}'")),
        }
    }
}

/// What a new `refit upgrade` does about the cluster's latest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation {
    /// No unfinished run: plan and start a new one.
    Fresh,
    /// An unfinished run to the same target: continue it with its frozen schedule.
    Resume,
    /// The operator gives the unfinished run up (`--abandon`), then a new one starts.
    Abandon,
    /// An unfinished run to another target: refuse (finish it, or abandon it).
    Conflict,
}

/// Decides from the cluster's latest run (its state and target) and the requested target.
/// A target the catalog cannot resolve never matches, so the planner reports it.
pub fn continuation(
    latest: Option<(RunState, &str)>,
    target: Option<&Version>,
    abandon: bool,
) -> Continuation {
    match latest {
        Some((state, _)) if !state.resumable() => Continuation::Fresh,
        None => Continuation::Fresh,
        Some(_) if abandon => Continuation::Abandon,
        Some((_, prev)) if target.is_some_and(|t| t.to_string() == prev) => Continuation::Resume,
        Some(_) => Continuation::Conflict,
    }
}

/// Why a run stopped starting new work before it was done (None: it was not asked to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// The operator asked (Ctrl-C).
    Requested,
    /// Its deadline (`--not-after`) passed; the instant is in the reason.
    Deadline,
}

/// Whether a run may start another unit (or cluster-wide step) at `now`: not once its
/// deadline has passed. Work already under way is never cut off by a deadline.
pub fn may_start(now: SystemTime, not_after: Option<SystemTime>) -> bool {
    not_after.is_none_or(|d| now < d)
}

/// How a run ends. Any reason is Failed; otherwise a halt with work left is Interrupted
/// (requested) or Paused (deadline), with the advice to rerun; nothing left is Completed.
/// `work_left` is whether a unit or cluster-wide step was not done.
pub fn final_state(
    halt: Option<Halt>,
    work_left: bool,
    reason: Option<String>,
) -> (RunState, Option<String>) {
    match (reason, halt) {
        (Some(r), _) => (RunState::Failed, Some(r)),
        (None, Some(Halt::Requested)) => {
            (RunState::Interrupted, Some("stopped on request; rerun the same command to continue".into()))
        }
        (None, Some(Halt::Deadline)) if work_left => (
            RunState::Paused,
            Some(
                "the run's deadline passed: no node was started after it; rerun the same command to continue"
                    .into(),
            ),
        ),
        (None, _) => (RunState::Completed, None),
    }
}

/// An estimate of the time left: the mean duration of finished units times the rounds of
/// `concurrency` units still to go. None until one unit has finished.
pub fn eta(finished: &[Duration], remaining: usize, concurrency: usize) -> Option<Duration> {
    let mean = crate::eta::mean(finished)?;
    let rounds = u32::try_from(remaining.div_ceil(concurrency.max(1))).unwrap_or(u32::MAX);
    Some(mean.saturating_mul(rounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_takes_over_custom_metadata_only() {
        use carried_over::{Adoption, CarryOver, adoption};
        let d = CarryOver::default();
        assert!(d.label("team") && d.label("example.com/pool"));
        for machine in [
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "cluster.x-k8s.io/cluster-name",
            "topology.ebs.csi.aws.com/zone",
        ] {
            assert!(!d.label(machine), "{machine}");
        }
        assert!(d.annotation("example.com/owner"));
        for agent in [
            "refit.dev/cordoned-by",
            "volumes.kubernetes.io/controller-managed-attach-detach",
            "csi.volume.kubernetes.io/nodeid",
            "projectcalico.org/IPv4Address",
            "flannel.alpha.coreos.com/public-ip",
            "io.cilium.network.ipv4-pod-cidr",
            "cluster.x-k8s.io/machine",
            "kubeadm.alpha.kubernetes.io/cri-socket",
        ] {
            assert!(!d.annotation(agent), "{agent}");
        }
        assert!(d.taint("dedicated") && !d.taint("node.kubernetes.io/unreachable"));

        // An allow-list: exact keys and prefixes; never a machine key, even when listed.
        let only = CarryOver {
            labels: Some(vec!["team".into(), "example.com/".into(), "pool-*".into()]),
            annotations: Some(vec![]),
        };
        assert!(only.label("team") && only.label("example.com/tier") && only.label("pool-a"));
        assert!(!only.label("teams") && !only.label("other.io/x") && !only.label("kubernetes.io/os"));
        assert!(!only.annotation("example.com/owner"), "an empty list carries no annotation");
        assert!(only.check().is_ok());
        let bad = CarryOver { labels: Some(vec!["topology.kubernetes.io/zone".into()]), annotations: None };
        assert!(bad.check().unwrap_err().contains("never carried over"));
        assert!(CarryOver { labels: Some(vec![" ".into()]), annotations: None }.check().is_err());

        // A node that merely has the replacement's name is not adopted.
        assert_eq!(adoption(false, false), Adoption::Create);
        assert_eq!(adoption(false, true), Adoption::Create);
        assert_eq!(adoption(true, true), Adoption::Adopt);
        assert_eq!(adoption(true, false), Adoption::Refuse);
    }

    #[test]
    fn replacement_names_are_stable_and_do_not_stack() {
        let v: Version = "1.37.1".parse().unwrap();
        assert_eq!(replacement_name("worker-003", &v), "worker-003-v1-37-1");
        assert_eq!(replacement_name("worker-003-v1-36-4", &v), "worker-003-v1-37-1");
        assert_eq!(replacement_name("edge-vm", &v), "edge-vm-v1-37-1");
    }

    #[test]
    fn the_phase_of_a_unit_is_its_highest_role() {
        let roles = |rs: &[Role]| rs.iter().copied().collect::<BTreeSet<Role>>();
        assert_eq!(PhaseKind::of_roles(&roles(&[Role::Etcd, Role::ControlPlane])), PhaseKind::Etcd);
        assert_eq!(PhaseKind::of_roles(&roles(&[Role::ControlPlane, Role::Worker])), PhaseKind::ControlPlane);
        assert_eq!(PhaseKind::of_roles(&roles(&[Role::Worker])), PhaseKind::Workers);
        assert_eq!(PhaseKind::of_roles(&roles(&[])), PhaseKind::Workers);
    }
    use crate::path::Hop;
    use crate::plan::{Batch, Mode, Phase, UnitPlan};
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn unit(node: &str, roles: &[Role], from: &str, to: &str) -> UnitPlan {
        UnitPlan {
            node: node.into(),
            roles: roles.iter().copied().collect(),
            from: from.into(),
            to: v(to),
            steps: vec![Step::Cordon, Step::Drain, Step::Upgrade, Step::Validate, Step::Uncordon],
            blockers: vec![],
            drain: Default::default(),
        }
    }

    fn plan(target: &str, cp: Vec<UnitPlan>, workers: Vec<UnitPlan>, batch: usize) -> Plan {
        let mut phases = Vec::new();
        let (etcd, cp): (Vec<_>, Vec<_>) = cp.into_iter().partition(|u| u.roles.contains(&Role::Etcd));
        for (kind, us) in [(PhaseKind::Etcd, etcd), (PhaseKind::ControlPlane, cp)] {
            if !us.is_empty() {
                phases.push(Phase {
                    kind,
                    batches: us.into_iter().map(|u| Batch { units: vec![u] }).collect(),
                });
            }
        }
        if !workers.is_empty() {
            phases.push(Phase {
                kind: PhaseKind::Workers,
                batches: workers.chunks(batch).map(|c| Batch { units: c.to_vec() }).collect(),
            });
        }
        phases.push(Phase { kind: PhaseKind::ClusterServices, batches: vec![] });
        Plan {
            target: v(target),
            mode: Mode::Online,
            max_unavailable: batch.to_string(),
            phases,
            findings: vec![],
            accepted: vec![],
            excluded: vec![],
            blocked: false,
        }
    }

    fn path(hops: &[(&str, &str)]) -> UpgradePath {
        UpgradePath {
            from: v(hops[0].0),
            to: v(hops[hops.len() - 1].1),
            hops: hops.iter().map(|(a, b)| Hop { from: v(a), to: v(b) }).collect(),
            forced: vec![],
        }
    }

    fn cps(from: &str, to: &str) -> Vec<UnitPlan> {
        vec![
            unit("cp-1", &[Role::Etcd, Role::ControlPlane], from, to),
            unit("cp-2", &[Role::ControlPlane], from, to),
            unit("cp-3", &[Role::ControlPlane], from, to),
        ]
    }

    #[test]
    fn one_hop_control_plane_one_at_a_time_then_workers_once() {
        let workers: Vec<_> =
            (1..=4).map(|i| unit(&format!("w-{i}"), &[Role::Worker], "v1.36.4", "1.37.1")).collect();
        let p = plan("1.37.1", cps("v1.36.4", "1.37.1"), workers, 2);
        let s = schedule(&p, &path(&[("1.36.4", "1.37.1")]), Style::InPlace, 2, true);
        assert_eq!(s.stages.len(), 2);
        assert_eq!(s.stages[0].phase, PhaseKind::Etcd);
        assert_eq!(s.stages[0].concurrency, 1);
        assert_eq!(
            s.stages[0].units.iter().map(|u| u.node.as_str()).collect::<Vec<_>>(),
            ["cp-1", "cp-2", "cp-3"]
        );
        assert!(s.stages[0].units[0].first_control_plane);
        assert!(!s.stages[0].units[1].first_control_plane);
        assert_eq!(s.stages[1].phase, PhaseKind::Workers);
        assert_eq!(s.stages[1].concurrency, 2);
        assert_eq!(s.stages[1].units.len(), 4);
        assert!(s.cluster_services);
    }

    #[test]
    fn multi_hop_walks_the_control_plane_and_moves_workers_once_when_skew_allows() {
        let workers: Vec<_> =
            (1..=3).map(|i| unit(&format!("w-{i}"), &[Role::Worker], "v1.35.8", "1.37.1")).collect();
        let p = plan("1.37.1", cps("v1.35.8", "1.37.1"), workers, 1);
        let s = schedule(&p, &path(&[("1.35.8", "1.36.4"), ("1.36.4", "1.37.1")]), Style::InPlace, 1, true);
        let shape: Vec<(PhaseKind, String, usize)> =
            s.stages.iter().map(|st| (st.phase, st.to.to_string(), st.units.len())).collect();
        assert_eq!(
            shape,
            [
                (PhaseKind::Etcd, "1.36.4".into(), 3),
                (PhaseKind::Etcd, "1.37.1".into(), 3),
                (PhaseKind::Workers, "1.37.1".into(), 3)
            ]
        );
        assert_eq!(s.stages[1].units[0].from, "1.36.4");
        assert_eq!(s.stages[2].units[0].from, "1.35.8");
    }

    #[test]
    fn workers_too_far_behind_go_hop_by_hop_and_only_they() {
        // 1.33 kubelets may lag 3 minors: fine under a 1.36 control plane, not under 1.37.
        let workers = vec![
            unit("old", &[Role::Worker], "v1.33.5", "1.37.1"),
            unit("new", &[Role::Worker], "v1.36.4", "1.37.1"),
        ];
        let p = plan("1.37.1", cps("v1.36.4", "1.37.1"), workers, 1);
        let s = schedule(&p, &path(&[("1.36.4", "1.37.1")]), Style::InPlace, 1, true);
        let shape: Vec<(PhaseKind, String, Vec<&str>)> = s
            .stages
            .iter()
            .map(|st| (st.phase, st.to.to_string(), st.units.iter().map(|u| u.node.as_str()).collect()))
            .collect();
        assert_eq!(
            shape,
            [
                (PhaseKind::Workers, "1.36.4".into(), vec!["old"]),
                (PhaseKind::Etcd, "1.37.1".into(), vec!["cp-1", "cp-2", "cp-3"]),
                (PhaseKind::Workers, "1.37.1".into(), vec!["old", "new"]),
            ]
        );
        assert_eq!(s.stages[2].units[0].from, "1.36.4");
    }

    #[test]
    fn replace_style_creates_before_it_drains_and_external_hosts_are_not_cordoned() {
        let mut p = plan(
            "1.37.1",
            cps("v1.36.4", "1.37.1"),
            vec![unit("w-1", &[Role::Worker], "v1.36.4", "1.37.1")],
            1,
        );
        let mut ext = unit("etcd-a", &[Role::Etcd], "", "1.37.1");
        ext.steps = vec![Step::Upgrade, Step::Validate];
        p.phases[0].batches.insert(0, Batch { units: vec![ext] });
        let s = schedule(&p, &path(&[("1.36.4", "1.37.1")]), Style::Replace, 1, false);
        assert!(!s.cluster_services);
        let etcd = &s.stages[0].units[0];
        assert!(etcd.external);
        assert_eq!(etcd.steps, [Step::Upgrade, Step::Validate]);
        assert_eq!(s.stages[0].units[1].steps, steps_for(false, Style::InPlace), "control plane in place");
        assert!(
            s.stages[0].units[1].first_control_plane,
            "the first control-plane member, not the etcd host"
        );
        assert_eq!(
            s.stages[1].units[0].steps,
            [Step::Upgrade, Step::Validate, Step::Cordon, Step::Drain, Step::Remove]
        );
    }

    fn w(to: &str) -> UnitWork {
        UnitWork {
            node: "w-1".into(),
            roles: [Role::Worker].into(),
            from: "1.36.4".into(),
            to: v(to),
            steps: steps_for(false, Style::InPlace),
            external: false,
            first_control_plane: false,
        }
    }

    fn journal(entries: &[(Step, StepState)]) -> BTreeMap<String, StepState> {
        entries.iter().map(|(s, st)| (step_key(*s, &v("1.37.1")), *st)).collect()
    }

    fn seen(kubelet: &str, ours: bool) -> Observed {
        Observed { exists: true, kubelet: Some(v(kubelet)), ready: true, cordoned_by_this_run: ours }
    }

    #[test]
    fn a_node_deleted_after_planning_is_gone_a_replaced_one_is_done_and_new_nodes_are_reported() {
        let gone = Observed::default();
        let u = w("1.37.1");
        // In place: deleted before the unit began, or mid-way: skipped, never failed forever.
        assert_eq!(resume_point(&u, &journal(&[]), &gone, false), Resume::Gone(gone_reason("w-1")));
        let j = journal(&[(Step::Cordon, StepState::Done), (Step::Drain, StepState::Started)]);
        assert_eq!(resume_point(&u, &j, &gone, false), Resume::Gone(gone_reason("w-1")));
        assert!(skip_when_gone(&u, &gone));
        assert!(!skip_when_gone(&u, &seen("1.36.4", true)), "a node still there fails as before");
        // Replace style: gone after it began = the unit replaced it; gone before = deleted.
        let r = UnitWork { steps: steps_for(false, Style::Replace), ..w("1.37.1") };
        let begun = BTreeMap::from([(step_key(r.steps[0], &r.to), StepState::Done)]);
        assert!(
            matches!(resume_point(&r, &begun, &gone, false), Resume::Done(why) if why.contains("replaced"))
        );
        assert_eq!(resume_point(&r, &journal(&[]), &gone, false), Resume::Gone(gone_reason("w-1")));
        assert!(!skip_when_gone(&r, &gone), "a replace unit's failure is its own");
        // An external etcd host is never observed as a node.
        let e = UnitWork { external: true, steps: vec![Step::Upgrade, Step::Validate], ..w("1.37.1") };
        assert_eq!(resume_point(&e, &journal(&[]), &gone, false), Resume::At(0));
        assert!(!skip_when_gone(&e, &gone));

        // Nodes that joined after planning and are not at the target are reported.
        let sched = Schedule {
            target: v("1.37.1"),
            stages: vec![Stage {
                phase: PhaseKind::Workers,
                to: v("1.37.1"),
                concurrency: 1,
                units: vec![r.clone()],
                auto: None,
                surge: None,
            }],
            cluster_services: false,
            excluded: vec![("left-out".into(), Exclusion::ControlPlaneOnly)],
        };
        let (old, new) = (v("1.36.4"), v("1.37.1"));
        let now = [
            ("w-1-v1-37-1", Some(&new)),
            ("left-out", Some(&old)),
            ("joined", Some(&old)),
            ("joined-new", Some(&new)),
            ("joined-unknown", None),
        ];
        let added = added_after_planning(&sched, now);
        let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["joined", "joined-unknown"], "{added:?}");
        assert!(added[0].1.contains("added after planning (at 1.36.4)"));
    }

    #[test]
    fn resume_points() {
        let u = w("1.37.1");
        // Fresh node at the old version: from the start.
        assert_eq!(resume_point(&u, &journal(&[]), &seen("1.36.4", false), false), Resume::At(0));
        // Already at the target and not ours: done without touching it (unless --force).
        assert!(matches!(resume_point(&u, &journal(&[]), &seen("1.37.1", false), false), Resume::Done(_)));
        assert_eq!(resume_point(&u, &journal(&[]), &seen("1.37.1", false), true), Resume::At(0));
        // Killed mid-drain: cordon done, drain started → drain again.
        let j = journal(&[(Step::Cordon, StepState::Done), (Step::Drain, StepState::Started)]);
        assert_eq!(resume_point(&u, &j, &seen("1.36.4", true), false), Resume::At(1));
        // Killed after the action changed the node but before "done" was recorded: validate.
        let j = journal(&[
            (Step::Cordon, StepState::Done),
            (Step::Drain, StepState::Done),
            (Step::Upgrade, StepState::Started),
        ]);
        assert_eq!(resume_point(&u, &j, &seen("1.37.1", true), false), Resume::At(3));
        // ... or before it changed anything: run the action again.
        assert_eq!(resume_point(&u, &j, &seen("1.36.4", true), false), Resume::At(2));
        // At the target, still cordoned by us, uncordon not recorded: finish the uncordon.
        let j = journal(&[
            (Step::Cordon, StepState::Done),
            (Step::Drain, StepState::Done),
            (Step::Upgrade, StepState::Done),
            (Step::Validate, StepState::Done),
        ]);
        assert_eq!(resume_point(&u, &j, &seen("1.37.1", true), false), Resume::At(4));
        // The cordon was given back (failed drain, or an operator uncordoned it): cordon again.
        let j = journal(&[(Step::Cordon, StepState::Done), (Step::Drain, StepState::Failed)]);
        assert_eq!(resume_point(&u, &j, &seen("1.36.4", false), false), Resume::At(0));
        assert_eq!(resume_point(&u, &j, &seen("1.36.4", true), false), Resume::At(1));
        // Uncordon done: finished, even with --force (never redo a finished node).
        let j = journal(&[(Step::Uncordon, StepState::Done)]);
        assert!(matches!(resume_point(&u, &j, &seen("1.37.1", false), true), Resume::Done(_)));
        // Another stage's journal entries do not count for this one.
        let j: BTreeMap<String, StepState> =
            [(step_key(Step::Uncordon, &v("1.36.4")), StepState::Done)].into_iter().collect();
        assert_eq!(resume_point(&u, &j, &seen("1.36.4", false), false), Resume::At(0));
    }

    fn step_strategy() -> impl Strategy<Value = Vec<Option<StepState>>> {
        proptest::collection::vec(
            proptest::option::of(prop_oneof![
                Just(StepState::Started),
                Just(StepState::Done),
                Just(StepState::Failed)
            ]),
            5,
        )
    }

    proptest! {
        /// Whatever the journal holds (any crash point), the resume point is never past a step
        /// that is not done, except an upgrade the node already shows; and a finished node is
        /// never started again.
        #[test]
        fn resume_never_skips_unfinished_work(states in step_strategy(), at_target in any::<bool>(), ours in any::<bool>(), force in any::<bool>()) {
            let u = w("1.37.1");
            let entries: Vec<(Step, StepState)> = u.steps.iter().zip(&states).filter_map(|(s, st)| st.map(|st| (*s, st))).collect();
            let j = journal(&entries);
            let obs = seen(if at_target { "1.37.1" } else { "1.36.4" }, ours);
            match resume_point(&u, &j, &obs, force) {
                Resume::At(i) => {
                    prop_assert!(i <= u.steps.len());
                    for s in &u.steps[..i] {
                        let d = matches!(j.get(&step_key(*s, &u.to)), Some(StepState::Done));
                        prop_assert!(d || (*s == Step::Upgrade && at_target), "skipped {:?}", s);
                    }
                    prop_assert!(!matches!(j.get(&step_key(Step::Uncordon, &u.to)), Some(StepState::Done)));
                }
                Resume::Gone(_) => prop_assert!(false, "an observed node is never gone"),
                Resume::Done(_) => {
                    let last_done = matches!(j.get(&step_key(Step::Uncordon, &u.to)), Some(StepState::Done));
                    prop_assert!(last_done || (at_target && !ours && entries.is_empty() && !force));
                }
            }
        }

        /// Every planned unit appears in the schedule, control-plane stages run one unit at a
        /// time, and every worker's last stage is the target.
        #[test]
        fn schedule_covers_every_unit(n in 0usize..12, batch in 1usize..5, old in proptest::collection::vec(any::<bool>(), 12)) {
            let workers: Vec<_> = (0..n).map(|i| unit(&format!("w-{i}"), &[Role::Worker], if old[i] { "v1.33.1" } else { "v1.36.4" }, "1.37.1")).collect();
            let p = plan("1.37.1", cps("v1.36.4", "1.37.1"), workers, batch);
            let s = schedule(&p, &path(&[("1.36.4", "1.37.1")]), Style::InPlace, batch, true);
            for st in &s.stages {
                if st.phase != PhaseKind::Workers { prop_assert_eq!(st.concurrency, 1); }
            }
            for i in 0..n {
                let name = format!("w-{i}");
                let last = s.stages.iter().rev().find(|st| st.units.iter().any(|u| u.node == name));
                prop_assert_eq!(last.map(|st| st.to.to_string()), Some("1.37.1".to_string()));
            }
        }
    }

    #[test]
    fn continuation_of_the_latest_run() {
        let t = v("1.37.1");
        assert_eq!(continuation(None, Some(&t), false), Continuation::Fresh);
        assert_eq!(continuation(Some((RunState::Completed, "1.37.1")), Some(&t), false), Continuation::Fresh);
        assert_eq!(continuation(Some((RunState::Abandoned, "1.36.4")), Some(&t), false), Continuation::Fresh);
        for st in [RunState::Running, RunState::Failed, RunState::Interrupted, RunState::Paused] {
            assert_eq!(continuation(Some((st, "1.37.1")), Some(&t), false), Continuation::Resume);
            assert_eq!(continuation(Some((st, "1.37.0")), Some(&t), false), Continuation::Conflict);
            assert_eq!(continuation(Some((st, "1.37.0")), None, false), Continuation::Conflict);
            assert_eq!(continuation(Some((st, "1.37.1")), Some(&t), true), Continuation::Abandon);
        }
    }

    #[test]
    fn final_states() {
        let x = || Some("x".to_string());
        for left in [false, true] {
            assert_eq!(final_state(None, left, None), (RunState::Completed, None));
            assert_eq!(final_state(Some(Halt::Requested), left, None).0, RunState::Interrupted);
            for halt in [None, Some(Halt::Requested), Some(Halt::Deadline)] {
                assert_eq!(final_state(halt, left, x()), (RunState::Failed, x()), "a reason always fails");
            }
        }
        assert_eq!(final_state(Some(Halt::Deadline), true, None).0, RunState::Paused);
        assert_eq!(
            final_state(Some(Halt::Deadline), false, None),
            (RunState::Completed, None),
            "a deadline that passed after the last unit finished changes nothing"
        );
        assert!(RunState::Paused.resumable());
    }

    #[test]
    fn nothing_starts_at_or_after_the_deadline() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(may_start(t, None));
        assert!(may_start(t - Duration::from_millis(1), Some(t)));
        assert!(!may_start(t, Some(t)));
        assert!(!may_start(t + Duration::from_secs(1), Some(t)));
    }

    #[test]
    fn eta_counts_rounds() {
        assert_eq!(eta(&[], 4, 2), None);
        let d = Duration::from_secs(10);
        assert_eq!(eta(&[d, d], 5, 2), Some(Duration::from_secs(30)));
    }

    #[test]
    fn names_parse_back() {
        for s in [StepState::Started, StepState::Done, StepState::Failed, StepState::Skipped] {
            assert_eq!(s.as_str().parse::<StepState>().unwrap(), s);
        }
        for s in [
            RunState::Running,
            RunState::Completed,
            RunState::Failed,
            RunState::Interrupted,
            RunState::Paused,
            RunState::Abandoned,
        ] {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
        }
        // Strictly: the store's readers turn an unknown state into an error.
        assert!("Failed".parse::<RunState>().is_err(), "no case folding");
        assert!("resuming".parse::<RunState>().unwrap_err().contains("'resuming'"));
        assert!("".parse::<StepState>().is_err());
        assert_eq!("skip".parse::<OnUndrainable>().unwrap(), OnUndrainable::Skip);
        assert!("nope".parse::<OnUndrainable>().is_err());
    }
}
