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

use serde::Serialize;

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

/// The pods a drain of `nodes` would see gone, from `snapshot`: those [`crate::drain::decide`]
/// evicts when nothing is refused (DaemonSet, mirror and terminating pods stay or are already
/// going). What [`Live::load`] weighs the work left by.
pub fn pods_to_move<'a>(
    snapshot: &crate::snapshot::Snapshot,
    nodes: impl IntoIterator<Item = &'a str>,
) -> usize {
    let nodes: std::collections::BTreeSet<&str> = nodes.into_iter().collect();
    let all = crate::drain::DrainOptions { delete_emptydir_data: true, force: true };
    snapshot
        .pods
        .iter()
        .filter(|p| p.node.as_deref().is_some_and(|n| nodes.contains(n)))
        .filter(|p| matches!(crate::drain::decide(p, all), crate::drain::Decision::Evict { .. }))
        .count()
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
/// −55% / −36% to −46% / −46% / −11%; what is left is the pace itself slowing (each node's
/// drain took longer as the evicted pods piled onto the nodes left and the machine's pod
/// churn saturated, and later windows were narrower), which no average of the past foresees.
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

/// What an `auto` stage's choices said of the pods to move, for [`Live::load`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Load {
    /// Pods on each unit chosen and not ended yet, when chosen.
    chosen: std::collections::BTreeMap<String, usize>,
    /// Units upgraded (whose times the pace is measured on), and the pods they had.
    measured: usize,
    measured_pods: usize,
    /// At the last choice: the units not started yet, and the pods on them.
    left: usize,
    left_pods: usize,
}

impl Load {
    /// The units not started yet, weighed by their pods against the pods of the units the pace
    /// was measured on: `not_started × (pods per unit left ÷ pods per unit measured)`, rounded
    /// up. None before a measured unit with pods and a choice that left units.
    fn weighed(&self, not_started: usize) -> Option<usize> {
        if self.measured == 0 || self.measured_pods == 0 || self.left == 0 {
            return None;
        }
        let wide = |n: usize| u128::try_from(n).unwrap_or(u128::MAX);
        let num = wide(not_started).saturating_mul(wide(self.left_pods)).saturating_mul(wide(self.measured));
        let den = wide(self.left).saturating_mul(wide(self.measured_pods));
        let weighed = num.div_ceil(den);
        Some(usize::try_from(weighed).unwrap_or(usize::MAX))
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

    /// Unit `node` of stage `stage` ended; `upgraded` is how long it took when it was
    /// upgraded (a skipped or failed unit is no measurement).
    pub fn unit_ended(&mut self, stage: usize, node: &str, upgraded: Option<Duration>) {
        let Some(s) = self.stages.get_mut(stage) else { return };
        s.remaining = s.remaining.saturating_sub(1);
        if let Some(z) = &mut s.zones
            && let Some(zone) = z.of_node.remove(node)
            && let Some(left) = z.left.get_mut(&zone)
        {
            *left = left.saturating_sub(1);
        }
        if let Some(pods) = s.load.chosen.remove(node)
            && upgraded.is_some()
        {
            s.load.measured = s.load.measured.saturating_add(1);
            s.load.measured_pods = s.load.measured_pods.saturating_add(pods);
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

    /// An `auto` stage chose units, each with the pods its drain will move ([`pods_to_move`]),
    /// leaving `left` units not started with `left_pods` pods on them. Evicted pods land on the
    /// nodes not upgraded yet, so later nodes carry more than the first did: the units not
    /// started are weighed by their pods against those the pace was measured on.
    pub fn load(
        &mut self,
        stage: usize,
        chosen: impl IntoIterator<Item = (String, usize)>,
        left: usize,
        left_pods: usize,
    ) {
        if let Some(s) = self.stages.get_mut(stage) {
            s.load.chosen.extend(chosen);
            s.load.left = left;
            s.load.left_pods = left_pods;
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
                let remaining = if s.auto && !measured.is_empty() {
                    // The units not started, weighed by their pods (the in-flight ones as they are).
                    let not_started = s.remaining.saturating_sub(s.window.count).min(s.load.left);
                    let whole = s.in_whole_windows();
                    match s.load.weighed(not_started) {
                        Some(w) => whole.saturating_sub(not_started).saturating_add(w),
                        None => whole,
                    }
                } else {
                    s.remaining
                };
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
        live.unit_ended(0, "n-0", Some(S * 60));
        let e = live.eta(&Estimate::default());
        assert_eq!(
            (e.phases[0].kind, e.phases[0].per_round, e.phases[0].measured),
            (PhaseKind::ControlPlane, S * 60, true)
        );
        assert_eq!(e.ends_in, S * (60 + 240 + 30));
        live.unit_ended(1, "n-0", Some(S * 80));
        // Workers: 4 upgraded (10 s each), one skipped: 5 left = one round of 5.
        for _ in 0..4 {
            live.unit_ended(2, "n-0", Some(S * 10));
        }
        live.unit_ended(2, "n-0", None);
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
            live.unit_ended(0, "n-0", Some(S * 20));
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
        live.unit_ended(7, "n-0", Some(S));
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
                live.unit_ended(0, &format!("n-{i}"), Some(S * 10));
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
        live.unit_ended(0, "elsewhere", None);
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 80);
        let mut plain = Live::of(&schedule(&[(PhaseKind::Workers, 30, 30, true)], false));
        plain.in_flight(0, 4, Duration::ZERO);
        for i in [0, 3, 6, 9] {
            plain.unit_ended(0, &format!("n-{i}"), Some(S * 10));
        }
        plain.in_flight(0, 0, S * 10);
        assert_eq!(plain.eta(&Estimate::default()).ends_in, S * 65);
    }

    #[test]
    fn units_not_started_are_weighed_by_the_pods_on_them() {
        let s = schedule(&[(PhaseKind::Workers, 100, 50, true)], false);
        let chosen = |from: usize, pods: usize| (from..from + 10).map(move |i| (format!("n-{i}"), pods));
        let mut live = Live::of(&s);
        // Ten units of 30 pods chosen and run 10 at a time for 20 s: a pace of 2 s per unit.
        live.load(0, chosen(0, 30), 90, 2700);
        live.in_flight(0, 10, Duration::ZERO);
        for i in 0..10 {
            live.unit_ended(0, &format!("n-{i}"), Some(S * 20));
        }
        live.in_flight(0, 0, S * 20);
        // The 90 left carry 30 pods each, as the measured ten did: 90 × 2 s.
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 180);
        // Ten more chosen with 45 each (the first ten's pods landed on them); the 80 left now
        // carry 36 each: the 10 in flight as they are, the 80 weighed against the 30 pods of
        // the units measured: 80 × 36 / 30 = 96; 106 units at 2 s.
        live.load(0, chosen(10, 45), 80, 2880);
        live.in_flight(0, 10, S * 20);
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 212);
        // Once they end, they are measured with their 45 pods (37.5 per unit measured): 80 ×
        // 36 / 37.5 = 76.8 → 77 units; the pace is now 20 units in 30 s of 10 at once → 1.5 s.
        for i in 10..20 {
            live.unit_ended(0, &format!("n-{i}"), Some(S * 10));
        }
        live.in_flight(0, 0, S * 30);
        assert_eq!(live.eta(&Estimate::default()).ends_in, S * 231 / 2);
        // No pods anywhere (nothing to weigh by): the units as they are.
        let plain = |load: bool| {
            let mut l = Live::of(&s);
            if load {
                l.load(0, chosen(0, 0), 90, 0);
            }
            l.in_flight(0, 10, Duration::ZERO);
            l.unit_ended(0, "n-0", Some(S * 20));
            l.in_flight(0, 9, S * 20);
            l
        };
        assert_eq!(plain(true).eta(&Estimate::default()), plain(false).eta(&Estimate::default()));
        // Huge counts saturate rather than overflow.
        let mut huge = plain(false);
        huge.load(0, [("n-1".to_string(), usize::MAX)], usize::MAX, usize::MAX);
        huge.unit_ended(0, "n-1", Some(S));
        let _ = huge.eta(&Estimate::default());
    }

    #[test]
    fn pods_to_move_are_those_a_drain_evicts() {
        use crate::snapshot::build;
        let on = |name: &str, node: &str| {
            let mut p = build::pod(name);
            p.node = Some(node.into());
            p
        };
        let mut snap = crate::snapshot::Snapshot::default();
        // Unmanaged pods count too: the ETA weighs what a drain moves once it may start.
        snap.pods.extend([on("web-1", "n-0"), on("web-2", "n-1"), on("web-3", "n-2")]);
        let mut ds = on("proxy", "n-0");
        ds.owner = Some(crate::snapshot::Owner { kind: "DaemonSet".into(), name: "proxy".into() });
        let mut going = on("old", "n-0");
        going.terminating = true;
        let mut mirror = on("etcd", "n-1");
        mirror.mirror = true;
        snap.pods.extend([ds, going, mirror]);
        assert_eq!(pods_to_move(&snap, ["n-0", "n-1"]), 2, "DaemonSet, terminating and mirror pods stay");
        assert_eq!(pods_to_move(&snap, []), 0);
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
        live.unit_ended(0, "n-0", Some(S * 50));
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
