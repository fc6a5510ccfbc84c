//! When a run is expected to end, phase by phase, and how much of it fits a window.
//!
//! A maintenance window that ends before the run does is found out at the worst moment, so
//! refit says it in advance: `refit plan --not-after` warns when the run is not expected to
//! fit and says how many nodes will, and a run's progress shows the expected end of each phase.
//!
//! The model is the engine's own: phases run one after the other; within a phase, units go in
//! rounds of `concurrency` (one for etcd and the control plane, the batch size for workers)
//! and a round takes as long as a unit of that phase takes. A unit's time is the mean of the
//! units of that phase measured in this run, or the [`Estimate`] before the first one ends —
//! phases differ too much (a control-plane hop is kubeadm's whole `upgrade apply`; a worker is
//! mostly its drain) to lend each other their measurements.
//!
//! Nothing here reads a clock: durations are offsets from "now", which the caller owns.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::PhaseKind;

/// Per-unit durations assumed before a phase has measured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Estimate {
    /// An etcd member (with a stacked control plane: both).
    pub etcd: Duration,
    /// A control-plane node.
    pub control_plane: Duration,
    /// A worker: cordon, drain, action, Ready, uncordon.
    pub worker: Duration,
    /// The cluster-services phase as a whole (kube-proxy, CoreDNS).
    pub cluster_services: Duration,
}

impl Default for Estimate {
    /// Rough figures for kubeadm-shaped clusters (a kubeadm `upgrade apply` restarts every
    /// static pod and waits for each; a worker's package upgrade and kubelet restart take about
    /// a minute plus its drain); a run replaces them with its own measurements as units finish.
    fn default() -> Self {
        Estimate {
            etcd: Duration::from_secs(300),
            control_plane: Duration::from_secs(240),
            worker: Duration::from_secs(120),
            cluster_services: Duration::from_secs(30),
        }
    }
}

impl Estimate {
    /// The assumed duration of one unit (the whole phase for cluster services).
    pub fn of(&self, kind: PhaseKind) -> Duration {
        match kind {
            PhaseKind::Etcd => self.etcd,
            PhaseKind::ControlPlane => self.control_plane,
            PhaseKind::Workers => self.worker,
            PhaseKind::ClusterServices => self.cluster_services,
        }
    }
}

/// What is left of one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseWork {
    /// Which phase.
    pub kind: PhaseKind,
    /// Units not finished yet (cluster services: 1 while not done, else 0).
    pub remaining: usize,
    /// Units per round (1 for etcd and the control plane; the batch size for workers).
    pub concurrency: usize,
    /// Durations of this phase's units finished in this run.
    pub measured: Vec<Duration>,
}

/// What a plan leaves to do, before anything ran: etcd and control-plane members one at a
/// time once per hop of the path (`hops`, at least one pass), workers `worker_concurrency` at a
/// time, cluster services once when the plan has that phase.
pub fn plan_work(plan: &crate::plan::Plan, hops: usize, worker_concurrency: usize) -> Vec<PhaseWork> {
    plan.phases
        .iter()
        .map(|p| {
            let units: usize = p.batches.iter().map(|b| b.units.len()).sum();
            let (remaining, concurrency) = match p.kind {
                PhaseKind::Etcd | PhaseKind::ControlPlane => (units.saturating_mul(hops.max(1)), 1),
                PhaseKind::Workers => (units, worker_concurrency.max(1)),
                PhaseKind::ClusterServices => (1, 1),
            };
            PhaseWork { kind: p.kind, remaining, concurrency, measured: Vec::new() }
        })
        .collect()
}

/// The mean of `durations` (None when empty), saturating rather than overflowing.
pub fn mean(durations: &[Duration]) -> Option<Duration> {
    let n = u32::try_from(durations.len()).ok().filter(|n| *n > 0)?;
    let total =
        durations.iter().try_fold(Duration::ZERO, |acc, d| acc.checked_add(*d)).unwrap_or(Duration::MAX);
    total.checked_div(n)
}

/// The expected end of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseEta {
    /// Which phase.
    pub kind: PhaseKind,
    /// How long one of its rounds takes (measured mean, or the estimate).
    pub per_round: Duration,
    /// Whether `per_round` was measured in this run (false: the estimate).
    pub measured: bool,
    /// From now until the phase is expected to end.
    pub ends_in: Duration,
}

/// The expected end of each phase and of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Eta {
    /// Phases with work left, in order.
    pub phases: Vec<PhaseEta>,
    /// From now until the run is expected to end.
    pub ends_in: Duration,
}

/// `per × n`, saturating at [`Duration::MAX`] (computed in nanoseconds, so no count of
/// rounds can overflow it).
fn times(per: Duration, n: u128) -> Duration {
    from_nanos(per.as_nanos().saturating_mul(n))
}

/// A count of nanoseconds as a duration, saturating at [`Duration::MAX`].
fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    if secs == u64::MAX { Duration::MAX } else { Duration::new(secs, sub) }
}

/// How many rounds a phase has left.
fn rounds(work: &PhaseWork) -> u128 {
    u128::try_from(work.remaining.div_ceil(work.concurrency.max(1))).unwrap_or(u128::MAX)
}

/// The units in the first `k` rounds of a phase.
fn units_in(work: &PhaseWork, k: u128) -> usize {
    let k = usize::try_from(k).unwrap_or(usize::MAX);
    k.saturating_mul(work.concurrency.max(1)).min(work.remaining)
}

fn per_round(work: &PhaseWork, estimate: &Estimate) -> (Duration, bool) {
    match mean(&work.measured) {
        Some(m) => (m, true),
        None => (estimate.of(work.kind), false),
    }
}

/// Expected ends of every phase with work left, and of the run.
pub fn eta(work: &[PhaseWork], estimate: &Estimate) -> Eta {
    let mut at = Duration::ZERO;
    let mut phases = Vec::new();
    for w in work.iter().filter(|w| w.remaining > 0) {
        let (per, measured) = per_round(w, estimate);
        at = at.saturating_add(times(per, rounds(w)));
        phases.push(PhaseEta { kind: w.kind, per_round: per, measured, ends_in: at });
    }
    Eta { phases, ends_in: at }
}

/// How much of the run a window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fit {
    /// Nodes (units) left to upgrade.
    pub nodes: usize,
    /// Nodes expected to be finished when the window closes.
    pub finished: usize,
    /// Nodes expected to have started before it closes (a run starts nothing after its
    /// deadline but lets what is under way finish: these end up done, late).
    pub started: usize,
    /// The expected end of the whole run, from now.
    pub ends_in: Duration,
    /// Whether the whole run is expected to end inside the window.
    pub fits: bool,
}

/// Sets the rounds of each phase against a window that closes `window` from now.
pub fn fit(work: &[PhaseWork], estimate: &Estimate, window: Duration) -> Fit {
    let mut at = Duration::ZERO;
    let (mut nodes, mut finished, mut started) = (0usize, 0usize, 0usize);
    for w in work.iter().filter(|w| w.remaining > 0) {
        let (per, _) = per_round(w, estimate);
        let n = rounds(w);
        // Cluster services count as a step, not as nodes.
        if w.kind != PhaseKind::ClusterServices {
            nodes = nodes.saturating_add(w.remaining);
            // Round i (0-based) starts at `at + i·per` and ends at `at + (i+1)·per`.
            let left = window.checked_sub(at).map(|d| d.as_nanos());
            let per_ns = per.as_nanos();
            let (begun, done) = match left {
                None => (0, 0),
                Some(_) if per_ns == 0 => (n, n),
                Some(l) => (l.div_ceil(per_ns).min(n), l.checked_div(per_ns).unwrap_or(n).min(n)),
            };
            started = started.saturating_add(units_in(w, begun));
            finished = finished.saturating_add(units_in(w, done));
        }
        at = at.saturating_add(times(per, n));
    }
    Fit { nodes, finished, started, ends_in: at, fits: at <= window }
}

/// Each unit's zone (`topology.kubernetes.io/zone` of its node in `snapshot`), for
/// [`Live::zones`]; units whose node has none are left out.
pub fn zones_of(
    units: &[crate::run::UnitWork],
    snapshot: &crate::snapshot::Snapshot,
) -> Vec<(String, String)> {
    let zone: std::collections::BTreeMap<&str, &String> = snapshot
        .nodes
        .iter()
        .filter_map(|n| Some((n.name.as_str(), n.labels.get(crate::batch::ZONE_LABEL)?)))
        .collect();
    units.iter().filter_map(|u| Some((u.node.clone(), zone.get(u.node.as_str())?.to_string()))).collect()
}

/// The budget that sets an `auto` stage's pace in one zone: of the budgets covering pods on
/// the zone's nodes not started yet, the one those pods take the most rounds of (a round lets
/// through as many of its pods as it allows at once, [`crate::pdb::PdbInfo::ceiling`]). Carried
/// by each choice's event, so a run's progress says which budget its ETA waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pacing {
    /// The zone (None: nodes without a zone label, or one window over every zone).
    pub zone: Option<String>,
    /// The budget, `namespace/name`.
    pub budget: String,
    /// Its pods that the drains of the zone's nodes not started yet will evict.
    pub pods: usize,
    /// The most disruptions it allows at once with every pod healthy (at least 1).
    pub allows: usize,
}

impl Pacing {
    /// Whether this budget takes more rounds than `other` (`pods / allows`, compared exactly).
    fn slower_than(&self, other: &Pacing) -> bool {
        let cross = |a: usize, b: usize| u128::try_from(a).unwrap_or(u128::MAX).saturating_mul(b as u128);
        cross(self.pods, other.allows) > cross(other.pods, self.allows)
    }

    /// Its rounds: `pods / allows`.
    pub fn rounds(&self) -> f64 {
        self.pods as f64 / self.allows.max(1) as f64
    }
}

/// What one `auto` choice moves, from the snapshot it was made from ([`choice_load`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChoiceLoad {
    /// The pods each chosen node's drain will see gone, in the order of `chosen`.
    pub pods: Vec<usize>,
    /// The pods on the candidates not chosen: the nodes still to start.
    pub left: usize,
    /// Per zone of the candidates not chosen, the budget that sets the pace ([`Pacing`]);
    /// empty when no budget that can ever allow a disruption covers their pods.
    pub pacing: Vec<Pacing>,
}

/// What one `auto` choice moves: the pods each chosen node's drain will see gone, the pods on
/// the candidates not chosen — the nodes still to start — and, per zone of those (one group
/// with `across_zones`), the budget their pods take the most rounds of. A pod counts when
/// [`crate::drain::decide`] evicts it with nothing refused (DaemonSet, mirror and terminating
/// pods stay or are already going); for a budget, when it also uses up a disruption
/// ([`crate::snapshot::PodInfo::consumes_disruption`]). Budgets that can never allow one
/// (ceiling 0) are left out: they hold the run, which the chooser says, and set no pace. One
/// pass over the snapshot's pods. What [`Live::load`] counts the work left in.
pub fn choice_load(
    snapshot: &crate::snapshot::Snapshot,
    chosen: &[String],
    candidates: &[String],
    across_zones: bool,
) -> ChoiceLoad {
    use std::collections::{BTreeMap, BTreeSet};
    let all = crate::drain::DrainOptions { delete_emptydir_data: true, force: true };
    let picked: BTreeSet<&str> = chosen.iter().map(String::as_str).collect();
    let waiting: BTreeSet<&str> =
        candidates.iter().map(String::as_str).filter(|c| !picked.contains(c)).collect();
    let zone_of: BTreeMap<&str, &str> = snapshot
        .nodes
        .iter()
        .filter(|_| !across_zones)
        .filter_map(|n| Some((n.name.as_str(), n.labels.get(crate::batch::ZONE_LABEL)?.as_str())))
        .collect();
    let index = crate::pdb::PdbIndex::new(&snapshot.pdbs);
    let mut on: BTreeMap<&str, usize> = BTreeMap::new();
    // (zone, budget index) → pods the drains of nodes not started will evict under it.
    let mut covered: BTreeMap<(Option<&str>, usize), usize> = BTreeMap::new();
    for p in &snapshot.pods {
        let Some(node) = p.node.as_deref() else { continue };
        if !matches!(crate::drain::decide(p, all), crate::drain::Decision::Evict { .. }) {
            continue;
        }
        let n = on.entry(node).or_default();
        *n = n.saturating_add(1);
        if waiting.contains(node) && p.consumes_disruption() {
            for i in index.covering(p) {
                let c = covered.entry((zone_of.get(node).copied(), i)).or_default();
                *c = c.saturating_add(1);
            }
        }
    }
    let count = |node: &str| on.get(node).copied().unwrap_or(0);
    let mut pacing: BTreeMap<Option<&str>, Pacing> = BTreeMap::new();
    for ((zone, i), pods) in covered {
        let Some(budget) = snapshot.pdbs.get(i) else { continue };
        let Some(allows) = usize::try_from(budget.ceiling()).ok().filter(|a| *a > 0) else { continue };
        let this = Pacing { zone: zone.map(str::to_string), budget: budget.key(), pods, allows };
        match pacing.get(&zone) {
            Some(slowest) if !this.slower_than(slowest) => {}
            _ => {
                pacing.insert(zone, this);
            }
        }
    }
    ChoiceLoad {
        pods: chosen.iter().map(|c| count(c)).collect(),
        left: waiting.iter().map(|c| count(c)).fold(0, usize::saturating_add),
        pacing: pacing.into_values().collect(),
    }
}

/// A run's expected end as it goes: the schedule's stages with the units each has left and
/// the times measured so far, turned into [`PhaseWork`] for [`eta`] whenever a unit or a batch
/// ends. Pure bookkeeping (no clock): the engine reports what ended and how long it took.
///
/// Measurements are shared by stages of the same phase (a second control-plane hop takes about
/// as long as the first). A stage under `auto` is a sliding window whose width follows the
/// budgets, the room and the zones, so it has no rounds: its units left take
/// `left × mean unit time / mean concurrency`, the concurrency being the number of its units in
/// flight averaged over the time the stage has run (the engine reports each change with
/// [`Live::in_flight`]; waits with nothing in flight count, at zero). By Little's law that is
/// the stage's measured throughput, so slow zone changes and budget waits are in it — a model
/// of batches that each go as fast as the first was 88% short on the 200-worker benchmark.
///
/// One zone at a time (the default), that pace holds only inside a zone: a zone's last nodes
/// run with the window part empty (nothing of another zone may join them), and the budgets
/// only let the window refill once the evicted pods' replacements are Ready, so on the
/// benchmark the window went in bursts about as wide as the first choice rather than sliding.
/// Each zone's nodes left are therefore counted in whole windows of the widest the stage has
/// had (`⌈left in zone / widest⌉ × widest`) once the engine has said which zone each unit is
/// in ([`Live::zones`]); a run that crossed zones, or whose nodes carry no zone, is not
/// rounded. Replayed over a recorded 200-worker run (the rollout benchmark's
/// `REFIT_BENCH_REPLAY`) this took the error after 10% / 25% / 50% of the nodes from −51% /
/// −55% / −36% to −46% / −46% / −11%.
///
/// What was left is why a count of nodes cannot do better: the pace is set by pods, not nodes.
/// Each eviction waits for the budget, i.e. for the previous pod's replacement to be scheduled
/// and Ready, so the whole cluster moves pods at a roughly steady rate whatever the window's
/// width; the first nodes to end are the lightest (a node with no pod ends in its action's
/// time), which made the early node pace far too fast; and evicted pods land partly on nodes
/// not upgraded yet, to be moved again (7,137 evictions for 6,020 pods on the benchmark). So
/// once the engine reports the pods of each choice ([`Live::load`]) and each eviction
/// ([`Live::evicted`]), an `auto` stage's time left is the pods still to move, with the moves
/// they will cause again ([`Load::moves_per_pod`]), at the stage's measured eviction rate.
/// Replayed over two recorded 200-worker runs, the error after 10% / 25% / 50% / 75% of the
/// nodes went from −51% / +2% / +14% / −8% and −56% / −30% / −2% / +8% (the node model) to
/// −8% / −5% / +6% / −6% and −25% / +6% / −6% / −7%. What was left is early: at 10% the stage
/// has seen only its first window's burst on fresh budgets, faster than the steady rate.
///
/// So the budgets get a model of their own. A choice under `auto` never takes more of a
/// budget's pods than it allows at once, so a budget whose pods are spread over many nodes
/// lets them through in rounds — evicted, replaced, Ready, then the next — and zones go one
/// after the other: the stage cannot end before, in each zone, its slowest budget's pods have
/// gone through ([`Pacing`]: `pods / allows` rounds, pods counted with the pile-up). A round
/// lasts what the stage's first choice took from its start until its last unit ended (the
/// first choice is the fullest round: every budget fresh); until then, the time since. When
/// budgets set the pace, the stage's time left is their rounds (`Σ zones × round`): a round's
/// time already holds the churn of a round's pods, and the pod model's pile-up, measured
/// while no node was upgraded yet to take the evicted pods, runs high early. Without budgets,
/// the pod model as above. Counted from the evictions of three recorded 200-worker runs (the
/// benchmark's 10% budgets set the pace: 4.0–4.6 rounds per zone), the time per round was
/// 23.3, 24.9 and 23.8 s against first choices of 24.0, 25.2 and 26.7 s, and rounds counted
/// from the evictions still to come after 10% / 15% / 25% / 50% of the nodes gave errors of
/// −8/−5/+5/−1%, −13/−4/−3/−3% and −3/−7/−1/−9%.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    stages: Vec<LiveStage>,
    /// Durations of upgraded units, per phase.
    measured: Vec<(PhaseKind, Vec<Duration>)>,
    /// Whether the cluster-services phase is still to come.
    cluster_services: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveStage {
    kind: PhaseKind,
    /// Units in the stage, and those not ended yet.
    units: usize,
    remaining: usize,
    concurrency: usize,
    auto: bool,
    /// `--across-zones`: one window over every zone, nothing to round.
    across_zones: bool,
    window: Window,
    /// The most units in flight at once reported so far.
    widest: usize,
    /// Per zone, the units not ended yet; and each unit's zone (None: not reported yet).
    zones: Option<Zones>,
    /// The pods on the units it chose and on those not started yet (see [`Live::load`]).
    load: Load,
}

/// What an `auto` stage's choices and drains said of the pods to move, for [`Live::load`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Load {
    /// Each unit chosen and not ended: the pods on it when chosen, and those evicted since.
    chosen: std::collections::BTreeMap<String, (usize, usize)>,
    /// At the last choice: the pods on the units not started yet.
    left_pods: usize,
    /// Evictions from the stage's units so far.
    evicted: usize,
    /// When the first choice was reported (the caller's clock offset; None: no choice reported
    /// pods, and the pod model does not apply).
    since: Option<Duration>,
    /// Pods that appeared on units not started between two choices (evicted pods the scheduler
    /// put there), and the evictions and units ended at the last choice (what that is measured
    /// against).
    arrived: usize,
    evicted_then: usize,
    ended_then: usize,
    /// At the last choice: per zone, the budget that sets the pace ([`Pacing`]).
    pacing: Vec<Pacing>,
    /// The first choice's units not ended yet, the longest of them that ended upgraded, and
    /// once all ended, how long that first round took.
    first: std::collections::BTreeSet<String>,
    first_longest: Duration,
    round: Option<Duration>,
}

/// The share of evicted pods landing on nodes not upgraded yet, per unit of the fraction of
/// nodes not upgraded, assumed before a run has seen its own: on the rollout benchmark's
/// 200-worker testbed whole runs evicted 1.15, 1.19 and 1.23 pods per pod (k ≈ 0.3–0.4 in
/// [`Load::moves_per_pod`]); the scheduler prefers the empty upgraded nodes, so far below
/// the uniform placement's k = 1 (1.72 per pod).
const PILE_UP_PRIOR: f64 = 0.35;

/// How many evictions' worth of evidence [`PILE_UP_PRIOR`] counts as, against the arrivals a
/// run measures (about one window of the benchmark's).
const PILE_UP_PRIOR_WEIGHT: f64 = 500.0;

impl Load {
    /// Expected evictions per pod still to move, with `left` of `units` not ended. A pod
    /// evicted when a fraction `x` of the nodes is done lands on one not done with probability
    /// `k (1 − x)` and is moved again; over the nodes left (a share `s = k (1 − x)`), that is
    /// `(eˢ − 1) / s` moves per pod. `k` is measured from the pods that arrived on nodes not
    /// started (blended with [`PILE_UP_PRIOR`]), over the mean fraction not done while they
    /// arrived.
    fn moves_per_pod(&self, left: usize, units: usize) -> f64 {
        let units = units.max(1) as f64;
        let not_done_then = 1.0 - (self.ended_then as f64 / units) / 2.0;
        let weight = PILE_UP_PRIOR_WEIGHT * not_done_then;
        let share = (self.arrived as f64 + PILE_UP_PRIOR * weight)
            / (self.evicted_then as f64 + PILE_UP_PRIOR_WEIGHT);
        let k = (share / not_done_then.max(f64::EPSILON)).clamp(0.0, 3.0);
        let s = k * (left as f64 / units).clamp(0.0, 1.0);
        if s < 1e-9 { 1.0 } else { s.exp_m1() / s }
    }

    /// How long a round of the budgets takes ([`Live`]): the first choice's time from its
    /// start to its last unit's end, or the time since it started while some still run.
    fn round(&self, now: Duration) -> Option<Duration> {
        self.round.or_else(|| Some(now.checked_sub(self.since?)?.max(self.first_longest)))
    }

    /// The time the budgets' rounds need: in each zone, the slowest budget's pods (with the
    /// moves they will cause again) over what it allows at once, summed over the zones, times
    /// a round. None when no budget sets a pace or no round has been timed.
    fn rounds_left(&self, now: Duration, moves: f64) -> Option<Duration> {
        let round = self.round(now).filter(|r| !r.is_zero())?;
        let rounds: f64 = self.pacing.iter().map(Pacing::rounds).sum::<f64>() * moves;
        (rounds > 0.0)
            .then(|| Duration::try_from_secs_f64(round.as_secs_f64() * rounds).unwrap_or(Duration::MAX))
    }

    /// The time left: the budgets' rounds when budgets set the pace ([`Load::rounds_left`]),
    /// else the pods still to move at the stage's measured eviction rate, plus one `unit` time
    /// for the last nodes' own steps after their last eviction. None before a choice reported
    /// pods and an eviction was seen over some time.
    fn time_left(&self, now: Duration, left: usize, units: usize, unit: Duration) -> Option<Duration> {
        let span = now.checked_sub(self.since?)?.as_secs_f64();
        if self.evicted == 0 || span <= 0.0 {
            return None;
        }
        let rate = self.evicted as f64 / span;
        let in_flight: usize = self
            .chosen
            .values()
            .map(|(pods, gone)| pods.saturating_sub(*gone))
            .fold(0, usize::saturating_add);
        let pods = self.left_pods.saturating_add(in_flight) as f64;
        let moves = self.moves_per_pod(left, units);
        if let Some(rounds) = self.rounds_left(now, moves) {
            return Some(rounds);
        }
        let secs = pods * moves / rate;
        Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX).saturating_add(unit))
    }
}

/// The units an `auto` stage has left in each zone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Zones {
    of_node: std::collections::BTreeMap<String, String>,
    left: std::collections::BTreeMap<String, usize>,
}

impl LiveStage {
    /// Units left counted in whole windows of the widest seen, zone by zone (see [`Live`]);
    /// just the units left when zones do not apply or are not known.
    fn in_whole_windows(&self) -> usize {
        let Some(z) = self.zones.as_ref().filter(|_| self.auto && !self.across_zones && self.widest > 1)
        else {
            return self.remaining;
        };
        let zoned: usize = z.left.values().sum();
        let rounded = z
            .left
            .values()
            .fold(0usize, |acc, n| acc.saturating_add(n.div_ceil(self.widest).saturating_mul(self.widest)));
        // Units of no known zone (not in the report) are left as they are.
        rounded.saturating_add(self.remaining.saturating_sub(zoned))
    }
}

/// The time-weighted count of a stage's units in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Window {
    /// When the first count was reported (the caller's clock offset).
    first: Option<Duration>,
    /// When the last count was reported.
    last: Duration,
    /// The count reported last.
    count: usize,
    /// Σ count × nanoseconds since `first`.
    area: u128,
}

impl Window {
    fn report(&mut self, count: usize, at: Duration) {
        let at = at.max(self.last);
        if self.first.is_some() {
            let span = at.saturating_sub(self.last).as_nanos();
            let n = u128::try_from(self.count).unwrap_or(u128::MAX);
            self.area = self.area.saturating_add(span.saturating_mul(n));
        } else {
            self.first = Some(at);
        }
        self.last = at;
        self.count = count;
    }

    /// `per_unit / mean concurrency` (None before any time with units in flight has passed).
    fn per_unit(&self, per_unit: Duration) -> Option<Duration> {
        let span = self.last.saturating_sub(self.first?).as_nanos();
        if self.area == 0 || span == 0 {
            return None;
        }
        // per_unit × span / area, in nanoseconds: the mean concurrency is area / span.
        per_unit.as_nanos().saturating_mul(span).checked_div(self.area).map(from_nanos)
    }

    /// The mean concurrency, rounded (None before any time has passed).
    fn mean(&self) -> Option<usize> {
        let span = self.last.saturating_sub(self.first?).as_nanos();
        let mean = self.area.checked_div(span)?;
        Some(usize::try_from(mean).unwrap_or(usize::MAX))
    }
}

impl Live {
    /// Nothing measured yet: every unit of `schedule` is left.
    pub fn of(schedule: &crate::run::Schedule) -> Live {
        Live {
            stages: schedule
                .stages
                .iter()
                .map(|s| LiveStage {
                    kind: s.phase,
                    units: s.units.len(),
                    remaining: s.units.len(),
                    concurrency: s.concurrency.max(1),
                    auto: s.auto.is_some(),
                    across_zones: s.auto.is_some_and(|a| a.across_zones),
                    window: Window::default(),
                    widest: 0,
                    zones: None,
                    load: Load::default(),
                })
                .collect(),
            measured: Vec::new(),
            cluster_services: schedule.cluster_services,
        }
    }

    /// Unit `node` of stage `stage` ended at `at` (the caller's clock, as for
    /// [`Live::in_flight`]; the count in flight is reported after); `upgraded` is how long it
    /// took when it was upgraded (a skipped or failed unit is no measurement).
    pub fn unit_ended(&mut self, stage: usize, node: &str, upgraded: Option<Duration>, at: Duration) {
        let Some(s) = self.stages.get_mut(stage) else { return };
        // The ETA sent now is computed at `at`, not at the last window report.
        if s.window.first.is_some() {
            s.window.report(s.window.count, at);
        }
        s.remaining = s.remaining.saturating_sub(1);
        if let Some(z) = &mut s.zones
            && let Some(zone) = z.of_node.remove(node)
            && let Some(left) = z.left.get_mut(&zone)
        {
            *left = left.saturating_sub(1);
        }
        s.load.chosen.remove(node);
        if s.load.first.remove(node) {
            s.load.first_longest = s.load.first_longest.max(upgraded.unwrap_or_default());
            if s.load.first.is_empty() {
                s.load.round = Some(s.load.first_longest);
            }
        }
        if let Some(d) = upgraded {
            let kind = s.kind;
            match self.measured.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, m)) => m.push(d),
                None => self.measured.push((kind, vec![d])),
            }
        }
    }

    /// An `auto` stage has `count` units in flight from `at` on (an offset on the caller's
    /// monotonic clock; earlier than the last report counts as the last report).
    pub fn in_flight(&mut self, stage: usize, count: usize, at: Duration) {
        if let Some(s) = self.stages.get_mut(stage) {
            s.window.report(count, at);
            s.widest = s.widest.max(count);
        }
    }

    /// The zone of each unit of `stage` not ended yet, as `(node, zone)` ([`zones_of`]), once:
    /// the engine reports it from the first snapshot an `auto` stage chooses from.
    pub fn zones(&mut self, stage: usize, zones: impl IntoIterator<Item = (String, String)>) {
        let Some(s) = self.stages.get_mut(stage).filter(|s| s.zones.is_none()) else { return };
        let mut z = Zones::default();
        for (node, zone) in zones {
            if z.of_node.insert(node, zone.clone()).is_none() {
                let left = z.left.entry(zone).or_default();
                *left = left.saturating_add(1);
            }
        }
        s.zones = Some(z);
    }

    /// An `auto` stage chose units at `at` (the caller's clock, as for [`Live::in_flight`]),
    /// each with the pods its drain will move ([`choice_load`]), leaving `left_pods` pods on
    /// the units not started and `pacing`, the budget that sets the pace in each zone. From
    /// then on its time left is the pods still to move — those left, those not evicted yet
    /// from the units under way, and the ones evicted pods will bring to nodes not upgraded yet
    /// ([`Load::moves_per_pod`]) — at its measured eviction rate (every pod's replacement must
    /// be scheduled and become Ready before the budgets let the next go: the cluster's pod
    /// churn sets the pace, whatever the window's width), or the budgets' rounds when they take
    /// longer (see [`Live`]).
    pub fn load(
        &mut self,
        stage: usize,
        chosen: impl IntoIterator<Item = (String, usize)>,
        left_pods: usize,
        pacing: Vec<Pacing>,
        at: Duration,
    ) {
        let Some(s) = self.stages.get_mut(stage) else { return };
        let l = &mut s.load;
        let chosen: Vec<(String, usize)> = chosen.into_iter().collect();
        if l.since.is_some() {
            // Pods on the units left now, beyond those left last time less the ones chosen
            // now: evicted pods the scheduler put on nodes still to upgrade.
            let newly: usize = chosen.iter().map(|(_, p)| *p).fold(0, usize::saturating_add);
            let expected = l.left_pods.saturating_sub(newly);
            l.arrived = l.arrived.saturating_add(left_pods.saturating_sub(expected));
        }
        if l.since.is_none() {
            l.first = chosen.iter().map(|(n, _)| n.clone()).collect();
        }
        l.chosen.extend(chosen.into_iter().map(|(n, p)| (n, (p, 0))));
        l.left_pods = left_pods;
        l.pacing = pacing;
        l.since.get_or_insert(at);
        l.evicted_then = l.evicted;
        l.ended_then = s.units.saturating_sub(s.remaining);
    }

    /// A pod was evicted from `node` (every stage counts the evictions from its units).
    pub fn evicted(&mut self, node: &str) {
        for s in &mut self.stages {
            if let Some((_, gone)) = s.load.chosen.get_mut(node) {
                *gone = gone.saturating_add(1);
                s.load.evicted = s.load.evicted.saturating_add(1);
            }
        }
    }

    /// The cluster-services phase is over (or will not run).
    pub fn cluster_services_done(&mut self) {
        self.cluster_services = false;
    }

    /// What is left, phase by phase, for [`eta`].
    pub fn work(&self) -> Vec<PhaseWork> {
        let mut work: Vec<PhaseWork> = self
            .stages
            .iter()
            .map(|s| {
                let units = || {
                    self.measured
                        .iter()
                        .find(|(k, _)| *k == s.kind)
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default()
                };
                // An auto stage whose choices reported pods: the pods still to move at the
                // measured eviction rate ([`Live::load`]), as one time shared by its units.
                if s.auto
                    && let Some(unit) = mean(&units())
                    && let Some(n) = u32::try_from(s.remaining).ok().filter(|n| *n > 0)
                    && let Some(left) = s.load.time_left(s.window.last, s.remaining, s.units, unit)
                {
                    let share = left.checked_div(n).unwrap_or(Duration::MAX);
                    return PhaseWork {
                        kind: s.kind,
                        remaining: s.remaining,
                        concurrency: 1,
                        measured: vec![share],
                    };
                }
                let (concurrency, measured) = if s.auto {
                    // One unit after the other at the measured pace of the window: a unit's
                    // mean time over the mean concurrency. Before a unit ended: rounds of the
                    // concurrency seen so far (else the cap) at the estimate.
                    let per_unit = mean(&units()).and_then(|m| {
                        s.window.per_unit(m).or_else(|| m.checked_div(u32::try_from(s.concurrency).ok()?))
                    });
                    match per_unit {
                        Some(p) => (1, vec![p]),
                        None => (s.window.mean().unwrap_or(s.concurrency).max(1), Vec::new()),
                    }
                } else {
                    (s.concurrency, units())
                };
                // Measured pace, zone tails counted (a plain count before any measurement).
                let remaining =
                    if s.auto && !measured.is_empty() { s.in_whole_windows() } else { s.remaining };
                PhaseWork { kind: s.kind, remaining, concurrency, measured }
            })
            .collect();
        if self.cluster_services {
            work.push(PhaseWork {
                kind: PhaseKind::ClusterServices,
                remaining: 1,
                concurrency: 1,
                measured: Vec::new(),
            });
        }
        work
    }

    /// The expected ends now ([`eta`] over [`Live::work`]).
    pub fn eta(&self, estimate: &Estimate) -> Eta {
        eta(&self.work(), estimate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn work(kind: PhaseKind, remaining: usize, concurrency: usize, measured: &[u64]) -> PhaseWork {
        PhaseWork { kind, remaining, concurrency, measured: measured.iter().map(|s| S * *s as u32).collect() }
    }

    fn run() -> Vec<PhaseWork> {
        vec![
            work(PhaseKind::ControlPlane, 3, 1, &[]),
            work(PhaseKind::Workers, 10, 4, &[]),
            work(PhaseKind::ClusterServices, 1, 1, &[]),
        ]
    }

    #[test]
    fn phases_end_one_after_the_other() {
        let e = eta(&run(), &Estimate::default());
        let ends: Vec<u64> = e.phases.iter().map(|p| p.ends_in.as_secs()).collect();
        // 3 × 240; then 3 rounds (4, 4, 2) × 120; then 30.
        assert_eq!(ends, vec![720, 1080, 1110]);
        assert_eq!(e.ends_in, S * 1110);
        assert!(e.phases.iter().all(|p| !p.measured));
    }

    #[test]
    fn measurements_replace_the_estimate_of_their_phase_only() {
        let mut w = run();
        w[0].measured = vec![S * 100, S * 200];
        w[0].remaining = 1;
        let e = eta(&w, &Estimate::default());
        assert_eq!((e.phases[0].per_round, e.phases[0].measured), (S * 150, true));
        assert_eq!((e.phases[1].per_round, e.phases[1].measured), (S * 120, false));
        assert_eq!(e.ends_in, S * (150 + 360 + 30));
        // A finished phase is left out.
        w[0].remaining = 0;
        assert_eq!(eta(&w, &Estimate::default()).phases[0].kind, PhaseKind::Workers);
    }

    #[test]
    fn a_short_window_says_how_many_nodes_fit() {
        // 720 s of control plane, then worker rounds ending at 840, 960, 1080.
        let f = fit(&run(), &Estimate::default(), S * 900);
        assert_eq!((f.nodes, f.finished, f.started, f.fits), (13, 7, 11, false));
        assert_eq!(f.ends_in, S * 1110);
        let f = fit(&run(), &Estimate::default(), S * 1110);
        assert_eq!((f.finished, f.started, f.fits), (13, 13, true));
        let f = fit(&run(), &Estimate::default(), Duration::ZERO);
        assert_eq!((f.finished, f.started, f.fits), (0, 0, false));
    }

    #[test]
    fn a_plan_becomes_rounds() {
        use crate::plan::{Batch, Mode, Phase, Plan, UnitPlan};
        let unit = |n: &str| UnitPlan {
            node: n.into(),
            roles: Default::default(),
            from: "v1.36.4".into(),
            to: crate::Version::new(1, 37, 1),
            steps: Vec::new(),
            blockers: Vec::new(),
            drain: Default::default(),
        };
        let phase = |kind, sizes: &[usize]| Phase {
            kind,
            batches: sizes
                .iter()
                .map(|n| Batch { units: (0..*n).map(|i| unit(&format!("n-{i}"))).collect() })
                .collect(),
        };
        let plan = Plan {
            target: crate::Version::new(1, 37, 1),
            mode: Mode::Online,
            max_unavailable: "2".into(),
            phases: vec![
                phase(PhaseKind::ControlPlane, &[1, 1, 1]),
                phase(PhaseKind::Workers, &[2, 2, 1]),
                phase(PhaseKind::ClusterServices, &[]),
            ],
            findings: Vec::new(),
            accepted: Vec::new(),
            excluded: Vec::new(),
            blocked: false,
        };
        let w = plan_work(&plan, 2, 2);
        let got: Vec<(PhaseKind, usize, usize)> =
            w.iter().map(|p| (p.kind, p.remaining, p.concurrency)).collect();
        assert_eq!(
            got,
            vec![
                (PhaseKind::ControlPlane, 6, 1),
                (PhaseKind::Workers, 5, 2),
                (PhaseKind::ClusterServices, 1, 1)
            ],
            "control plane once per hop"
        );
        // 6 × 240 + 3 × 120 + 30.
        assert_eq!(eta(&w, &Estimate::default()).ends_in, S * 1830);
    }

    fn schedule(stages: &[(PhaseKind, usize, usize, bool)], services: bool) -> crate::run::Schedule {
        use crate::run::{Schedule, Stage};
        let v = crate::Version::new(1, 37, 1);
        Schedule {
            target: v.clone(),
            stages: stages
                .iter()
                .map(|&(phase, units, concurrency, auto)| Stage {
                    phase,
                    to: v.clone(),
                    concurrency,
                    units: (0..units)
                        .map(|i| crate::run::UnitWork {
                            node: format!("n-{i}"),
                            roles: Default::default(),
                            from: "v1.36.4".into(),
                            to: v.clone(),
                            steps: Vec::new(),
                            external: false,
                            first_control_plane: false,
                        })
                        .collect(),
                    auto: auto.then_some(crate::batch::Auto {
                        cap: crate::plan::MaxUnavailable::Count(u32::try_from(concurrency).unwrap()),
                        across_zones: false,
                    }),
                    surge: None,
                })
                .collect(),
            cluster_services: services,
            excluded: Vec::new(),
        }
    }

    #[test]
    fn a_live_run_replaces_the_estimate_with_its_own_pace() {
        let s = schedule(
            &[
                (PhaseKind::ControlPlane, 1, 1, false),
                (PhaseKind::ControlPlane, 1, 1, false),
                (PhaseKind::Workers, 10, 5, false),
            ],
            true,
        );
        let mut live = Live::of(&s);
        // Before anything: the estimate (240 + 240 + 2 × 120 + 30).
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 750);
        // The first hop took 60 s: the second is expected to take as long.
        live.unit_ended(0, "n-0", Some(S * 60), Duration::ZERO);
        let e = live.eta(&Estimate::default());
        assert_eq!(
            (e.phases[0].kind, e.phases[0].per_round, e.phases[0].measured),
            (PhaseKind::ControlPlane, S * 60, true)
        );
        assert_eq!(e.ends_in, S * (60 + 240 + 30));
        live.unit_ended(1, "n-0", Some(S * 80), Duration::ZERO);
        // Workers: 4 upgraded (10 s each), one skipped: 5 left = one round of 5.
        for _ in 0..4 {
            live.unit_ended(2, "n-0", Some(S * 10), Duration::ZERO);
        }
        live.unit_ended(2, "n-0", None, Duration::ZERO);
        let e = live.eta(&Estimate::default());
        assert_eq!(e.phases.iter().map(|p| p.ends_in.as_secs()).collect::<Vec<_>>(), vec![10, 40]);
        live.cluster_services_done();
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 10);
    }

    #[test]
    fn an_auto_stage_goes_at_its_measured_throughput() {
        let s = schedule(&[(PhaseKind::Workers, 100, 50, true)], false);
        let mut live = Live::of(&s);
        // Before anything: rounds of the cap at the estimate.
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 240);
        // 10 in flight for 20 s, then 20 for 10 s: a mean of 40/3 over 30 s.
        live.in_flight(0, 10, S * 5);
        live.in_flight(0, 20, S * 25);
        live.in_flight(0, 20, S * 35);
        // No unit ended yet: rounds of the mean concurrency (13) at the estimate: 8 × 120 s.
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 960);
        // Units of 20 s: 90 left × 20 s / (40/3) = 135 s.
        for _ in 0..10 {
            live.unit_ended(0, "n-0", Some(S * 20), Duration::ZERO);
        }
        live.in_flight(0, 10, S * 35);
        let e = live.eta(&Estimate::default());
        assert_eq!((e.ends_in, e.phases[0].measured), (S * 135, true));
        // Ten seconds with nothing in flight (held on a budget) lower the pace: 40/3 → 10.
        live.in_flight(0, 0, S * 35);
        live.in_flight(0, 0, S * 45);
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 180);
        // Reports out of order count as the last one; a stage that does not exist changes nothing.
        live.in_flight(0, 0, S * 40);
        live.unit_ended(7, "n-0", Some(S), Duration::ZERO);
        live.in_flight(7, 3, S * 50);
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 180);
    }

    #[test]
    fn one_zone_at_a_time_each_zone_ends_in_a_whole_window() {
        let zoned = |across: bool| {
            let mut s = schedule(&[(PhaseKind::Workers, 30, 30, true)], false);
            if let Some(a) = s.stages[0].auto.as_mut() {
                a.across_zones = across;
            }
            let mut live = Live::of(&s);
            // Zones a, b, c of 10 nodes each (n-0 in a, n-1 in b, ...).
            let zones = ["a", "b", "c"];
            live.zones(0, (0..30).map(|i| (format!("n-{i}"), zones[i % 3].to_string())));
            // Four at once in zone a for 10 s; they end after 10 s each.
            live.in_flight(0, 4, Duration::ZERO);
            for i in [0, 3, 6, 9] {
                live.unit_ended(0, &format!("n-{i}"), Some(S * 10), Duration::ZERO);
            }
            live.in_flight(0, 0, S * 10);
            live
        };
        // A pace of 4 per 10 s; 26 left: a has 6 (2 windows), b and c 10 each (3 each): 8
        // windows of 4 = 32 units' worth, 80 s.
        assert_eq!(zoned(false).eta(&Estimate::default()).ends_in, S * 80);
        // Across zones one window slides over all 26: 65 s.
        assert_eq!(zoned(true).eta(&Estimate::default()).ends_in, S * 65);
        // Zones reported twice or for units that end unknown change nothing; a stage with no
        // zone report is not rounded either.
        let mut live = zoned(false);
        live.zones(0, [("n-1".to_string(), "a".to_string())]);
        live.unit_ended(0, "elsewhere", None, Duration::ZERO);
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 80);
        let mut plain = Live::of(&schedule(&[(PhaseKind::Workers, 30, 30, true)], false));
        plain.in_flight(0, 4, Duration::ZERO);
        for i in [0, 3, 6, 9] {
            plain.unit_ended(0, &format!("n-{i}"), Some(S * 10), Duration::ZERO);
        }
        plain.in_flight(0, 0, S * 10);
        assert_eq!(plain.eta(&Estimate::default()).ends_in, S * 65);
    }

    #[test]
    fn an_auto_stage_that_reports_pods_goes_at_its_eviction_rate_with_the_pile_up() {
        let s = schedule(&[(PhaseKind::Workers, 100, 50, true)], false);
        let chosen = |from: usize, pods: usize| (from..from + 10).map(move |i| (format!("n-{i}"), pods));
        let close = |live: &Live, want: f64| {
            let got = live.eta(&Estimate::default()).ends_in.as_secs_f64();
            assert!((got - want).abs() < 1.0, "ETA {got:.1} s, expected {want:.1} s");
        };
        let moves = |s: f64| s.exp_m1() / s;
        let mut live = Live::of(&s);
        // Ten units of 30 pods chosen at 0 s; their 300 pods evicted and the units ended by
        // 20 s (units of 20 s): 15 pods per second.
        live.load(0, chosen(0, 30), 2700, Vec::new(), Duration::ZERO);
        live.in_flight(0, 10, Duration::ZERO);
        for i in 0..10 {
            for _ in 0..30 {
                live.evicted(&format!("n-{i}"));
            }
            live.unit_ended(0, &format!("n-{i}"), Some(S * 20), Duration::ZERO);
        }
        live.in_flight(0, 0, S * 20);
        // 2,700 pods left, no arrival seen yet: the prior (k = 0.35 over the 90% not done),
        // plus one unit's time.
        close(&live, 2700.0 * moves(0.35 * 0.9) / 15.0 + 20.0);
        // Ten more chosen at 20 s with 45 each; 2,400 left where 2,700 − 450 were expected:
        // 150 of the 300 evicted pods arrived on units not started (k measured from that,
        // blended with the prior). In flight: 450 pods not evicted yet.
        live.load(0, chosen(10, 45), 2400, Vec::new(), S * 20);
        live.in_flight(0, 10, S * 20);
        let not_done = 1.0 - 0.1 / 2.0;
        let k = (150.0 + 0.35 * 500.0 * not_done) / (300.0 + 500.0) / not_done;
        close(&live, (2400.0 + 450.0) * moves(k * 0.9) / 15.0 + 20.0);
        // Evictions from units of no stage, or after they ended, change nothing.
        let before = live.eta(&Estimate::default());
        live.evicted("elsewhere");
        live.evicted("n-0");
        assert_eq!(live.eta(&Estimate::default()), before);
        // Without pods reported (or before a unit ended), the window's throughput as before.
        let plain = |load: bool| {
            let mut l = Live::of(&s);
            if load {
                l.load(0, chosen(0, 30), 2700, Vec::new(), Duration::ZERO);
            }
            l.in_flight(0, 10, Duration::ZERO);
            l.in_flight(0, 10, S * 20);
            l
        };
        assert_eq!(plain(true).eta(&Estimate::default()), plain(false).eta(&Estimate::default()));
        // Huge counts and times saturate rather than overflow or panic.
        let mut huge = plain(true);
        huge.load(
            0,
            [("x".to_string(), usize::MAX)],
            usize::MAX,
            vec![Pacing { zone: None, budget: "b".into(), pods: usize::MAX, allows: 1 }],
            Duration::MAX,
        );
        huge.evicted("x");
        huge.evicted("n-1");
        huge.unit_ended(0, "n-1", Some(Duration::MAX), Duration::ZERO);
        huge.in_flight(0, usize::MAX, Duration::MAX);
        let _ = huge.eta(&Estimate::default());
    }

    #[test]
    fn a_choice_moves_the_pods_a_drain_evicts() {
        use crate::snapshot::build;
        let on = |name: &str, node: &str| {
            let mut p = build::pod(name);
            p.node = Some(node.into());
            p
        };
        let mut snap = crate::snapshot::Snapshot::default();
        // Unmanaged pods count too: the ETA weighs what a drain moves once it may start.
        snap.pods.extend([on("web-1", "n-0"), on("web-2", "n-1"), on("web-3", "n-2"), on("web-4", "n-2")]);
        let mut ds = on("proxy", "n-0");
        ds.owner = Some(crate::snapshot::Owner { kind: "DaemonSet".into(), name: "proxy".into() });
        let mut going = on("old", "n-0");
        going.terminating = true;
        let mut mirror = on("etcd", "n-1");
        mirror.mirror = true;
        let mut unbound = build::pod("pending");
        unbound.node = None;
        snap.pods.extend([ds, going, mirror, unbound]);
        let names = |ns: &[&str]| ns.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let load = choice_load(&snap, &names(&["n-1", "n-0"]), &names(&["n-0", "n-1", "n-2", "n-3"]), false);
        assert_eq!(
            (load.pods, load.left),
            (vec![1, 1], 2),
            "DaemonSet, terminating and mirror pods stay; n-2's two are left, n-3 has none"
        );
        assert_eq!(load.pacing, vec![], "no budget");
        assert_eq!(choice_load(&snap, &[], &[], false), ChoiceLoad::default());
    }

    #[test]
    fn each_zone_is_paced_by_the_budget_its_pods_take_most_rounds_of() {
        use crate::snapshot::build;
        let mut snap = crate::snapshot::Snapshot::default();
        for (n, zone) in [("a-0", "a"), ("a-1", "a"), ("a-2", "a"), ("b-0", "b"), ("b-1", "b")] {
            let mut node = build::node(n);
            node.labels.insert(crate::batch::ZONE_LABEL.into(), zone.into());
            snap.nodes.push(node);
        }
        // `wide`: 50 pods, 5 at once; `tight`: 3 pods, 1 at once; `never`: 2 pods, none ever.
        snap.pdbs.extend([
            build::budget("wide", 50, 45, 50),
            build::budget("tight", 3, 2, 3),
            build::budget("never", 2, 2, 2),
        ]);
        let mut i = 0;
        let mut put = |snap: &mut crate::snapshot::Snapshot, app: &str, node: &str, n: usize| {
            for _ in 0..n {
                build::place(snap, &format!("{app}-{i}"), app, node, 10);
                i += 1;
            }
        };
        put(&mut snap, "wide", "a-0", 10); // chosen: not counted
        put(&mut snap, "wide", "a-1", 8);
        put(&mut snap, "wide", "a-2", 4); // a: 12 of wide → 2.4 rounds
        put(&mut snap, "tight", "a-1", 2); // a: 2 of tight → 2 rounds
        put(&mut snap, "tight", "b-0", 1); // b: 1 of tight → 1 round
        put(&mut snap, "wide", "b-1", 4); // b: 4 of wide → 0.8 round
        put(&mut snap, "never", "b-1", 2); // never allows one: no pace
        put(&mut snap, "free", "b-1", 7); // no budget
        // A pod that is not Ready uses up no disruption: evicted, but not under the budget.
        build::place(&mut snap, "wide-sick", "wide", "b-1", 10);
        snap.pods.last_mut().unwrap().ready = false;
        let names = |ns: &[&str]| ns.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let all = names(&["a-0", "a-1", "a-2", "b-0", "b-1"]);
        let load = choice_load(&snap, &names(&["a-0"]), &all, false);
        assert_eq!((load.pods, load.left), (vec![10], 8 + 4 + 2 + 1 + 4 + 2 + 7 + 1));
        let pace = |zone: Option<&str>, budget: &str, pods, allows| Pacing {
            zone: zone.map(str::to_string),
            budget: format!("default/{budget}"),
            pods,
            allows,
        };
        assert_eq!(load.pacing, vec![pace(Some("a"), "wide", 12, 5), pace(Some("b"), "tight", 1, 1)]);
        // Across zones: one group, the slowest budget over every node left.
        let load = choice_load(&snap, &names(&["a-0"]), &all, true);
        // (wide: 8 + 4 + 4 = 16 pods, 3.2 rounds; tight: 3 rounds.)
        assert_eq!(load.pacing, vec![pace(None, "wide", 16, 5)]);
        // Nodes without a zone label count as one group of their own.
        snap.nodes.retain(|n| n.name != "b-1");
        assert_eq!(
            choice_load(&snap, &names(&["a-0"]), &all, false).pacing,
            vec![pace(None, "wide", 4, 5), pace(Some("a"), "wide", 12, 5), pace(Some("b"), "tight", 1, 1),]
        );
    }

    #[test]
    fn an_auto_stage_paced_by_budgets_goes_by_their_rounds() {
        let s = schedule(&[(PhaseKind::Workers, 100, 50, true)], false);
        let chosen = |from: usize, pods: usize| (from..from + 10).map(move |i| (format!("n-{i}"), pods));
        let pace = |zone: &str, pods: usize, allows: usize| Pacing {
            zone: Some(zone.into()),
            budget: "default/wide".into(),
            pods,
            allows,
        };
        let close = |live: &Live, want: f64| {
            let got = live.eta(&Estimate::default()).ends_in.as_secs_f64();
            assert!((got - want).abs() < 1.0, "ETA {got:.1} s, expected {want:.1} s");
        };
        let moves = |k: f64, left: f64| (k * left).exp_m1() / (k * left);
        // Ten units of 30 pods chosen at 0 s; the budgets: 8 + 4 rounds left in two zones.
        let mut live = Live::of(&s);
        live.load(0, chosen(0, 30), 2700, vec![pace("a", 40, 5), pace("b", 20, 5)], Duration::ZERO);
        live.in_flight(0, 10, Duration::ZERO);
        for i in 0..10u32 {
            for _ in 0..30 {
                live.evicted(&format!("n-{i}"));
            }
            // Its units take 20 to 29 s and end then.
            live.unit_ended(0, &format!("n-{i}"), Some(S * (20 + i)), S * (20 + i));
            // While the first choice runs, a round is the time since it started (the clock of
            // the unit's end, not of the last window report).
            if i == 4 {
                close(&live, 12.0 * moves(0.35, 0.95) * 24.0);
            }
        }
        // Once all ended, a round is the longest of them: 29 s.
        live.in_flight(0, 0, S * 29);
        close(&live, 12.0 * moves(0.35, 0.9) * 29.0);
        // The next choice leaves 2 rounds; the round stays what the first choice took. No pod
        // arrived on the units not started, so k is the prior's weight alone.
        live.load(0, chosen(10, 30), 2400, vec![pace("a", 10, 5)], S * 30);
        close(&live, 2.0 * moves(0.35 * 500.0 / 800.0, 0.9) * 29.0);
        // No budget sets the pace: the pods (2,100 left, 600 chosen and not evicted yet) at the
        // eviction rate (300 in the 29 s to the last report) plus a unit's mean time, as before.
        live.load(0, chosen(20, 30), 2100, Vec::new(), S * 30);
        close(&live, (2100.0 + 600.0) * moves(0.35 * 500.0 / 800.0, 0.9) / (300.0 / 29.0) + 24.5);
    }

    #[test]
    fn zones_come_from_the_nodes_labels() {
        let s = schedule(&[(PhaseKind::Workers, 3, 3, true)], false);
        let mut snap = crate::snapshot::Snapshot::default();
        snap.nodes.push(crate::snapshot::build::node("n-0"));
        snap.nodes.push(crate::snapshot::build::node("n-1"));
        snap.nodes[0].labels.insert(crate::batch::ZONE_LABEL.into(), "a".into());
        // n-1 has no zone label, n-2 is not in the snapshot.
        assert_eq!(zones_of(&s.stages[0].units, &snap), vec![("n-0".to_string(), "a".to_string())]);
    }

    #[test]
    fn an_auto_stage_with_no_time_measured_uses_its_cap() {
        let s = schedule(&[(PhaseKind::Workers, 100, 50, true)], false);
        let mut live = Live::of(&s);
        live.in_flight(0, 10, S * 5);
        // A unit ended but no span of time was reported: its time over the cap.
        live.unit_ended(0, "n-0", Some(S * 50), Duration::ZERO);
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 99);
        // Huge numbers saturate rather than overflow.
        live.in_flight(0, usize::MAX, Duration::MAX);
        live.in_flight(0, usize::MAX, Duration::MAX);
        let _ = live.eta(&Estimate::default());
    }

    #[test]
    fn means_never_overflow() {
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[Duration::MAX, Duration::MAX]), Some(Duration::MAX / 2));
        let e = eta(&[work(PhaseKind::Workers, usize::MAX, 1, &[])], &Estimate::default());
        assert_eq!(e.ends_in, Duration::MAX, "saturates");
    }

    proptest! {
        /// The run ends when its last phase does; phases end in order; a window the run ends
        /// inside holds every node, and a longer window never holds fewer.
        #[test]
        fn eta_and_fit_agree(
            phases in prop::collection::vec((0usize..3, 0usize..40, 1usize..10, prop::collection::vec(1u64..1000, 0..4)), 0..4),
            window in 0u64..20_000,
            more in 0u64..5_000,
        ) {
            let kinds = [PhaseKind::Etcd, PhaseKind::ControlPlane, PhaseKind::Workers];
            let w: Vec<PhaseWork> = phases.iter().map(|(k, r, c, m)| work(kinds[*k], *r, *c, m)).collect();
            let est = Estimate::default();
            let e = eta(&w, &est);
            prop_assert_eq!(e.phases.last().map_or(Duration::ZERO, |p| p.ends_in), e.ends_in);
            prop_assert!(e.phases.windows(2).all(|p| p[0].ends_in <= p[1].ends_in));
            let f = fit(&w, &est, S * window as u32);
            prop_assert_eq!(f.ends_in, e.ends_in);
            prop_assert_eq!(f.nodes, w.iter().map(|p| p.remaining).sum::<usize>());
            prop_assert!(f.finished <= f.started && f.started <= f.nodes);
            prop_assert_eq!(f.fits, e.ends_in <= S * window as u32);
            if f.fits { prop_assert_eq!(f.finished, f.nodes); }
            let g = fit(&w, &est, S * (window + more) as u32);
            prop_assert!(g.finished >= f.finished && g.started >= f.started);
        }
    }
}
