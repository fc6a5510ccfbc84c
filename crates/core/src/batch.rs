//! Automatic worker batching (`--max-unavailable auto`) and the batching value types.
//!
//! A fixed batch size is either too timid (one node at a time: a 200-node cluster takes a
//! day) or too bold (it trips over budgets and capacity, and the drains then crawl through
//! 429s). Refit already sees every pod's budget and every node's free room, so `auto` takes
//! the largest batch that is safe *now*, from the live cluster, before each batch:
//!
//! - **budgets**: for every PodDisruptionBudget, the pods the batch would evict that use up a
//!   disruption ([`PodInfo::consumes_disruption`]) are at most its current allowance
//!   (`status.disruptionsAllowed`), so every eviction of the batch can be granted at once;
//! - **room**: every pod the batch evicts fits on the nodes that stay schedulable (requests,
//!   taints/tolerations, nodeSelector, required node affinity) — the plan's own capacity rule
//!   ([`Capacity`]), so a batch `auto` takes is one `refit plan` would not flag;
//! - **one failure domain**: all nodes share one `topology.kubernetes.io/zone` (nodes without
//!   the label are a domain of their own), unless `--across-zones`;
//! - **a cap**: `--max-unavailable-cap N|P%` ([`DEFAULT_CAP`] when not given).
//!
//! Candidates are tried in the order given (the schedule's), zone by zone in the order their
//! first candidate appears, so one zone is finished before the next starts. A candidate that
//! would break a rule is passed over and the next one tried, so one busy node does not stop
//! the batch. When not even one node can go, the answer is a [`Hold`] naming the budget or the
//! pod that holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checks::{Capacity, CheckOptions};
use crate::drain;
use crate::pdb::PdbIndex;
use crate::plan::MaxUnavailable;
use crate::run::Style;
use crate::setting::{BadValue, Setting, Spelled};
use crate::snapshot::Snapshot;
use crate::surge::Surge;

/// The node label naming a node's failure domain.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The cap of `--max-unavailable auto` when `--max-unavailable-cap` is not given: a quarter of
/// the workers, as a Deployment's default `maxUnavailable`, so `auto` never takes more than
/// the most common fixed setting would.
pub const DEFAULT_CAP: MaxUnavailable = MaxUnavailable::Percent(25);

/// What `--max-unavailable` says: a fixed size, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MaxUnavailableSetting {
    /// A count or a percentage of the workers.
    Fixed(MaxUnavailable),
    /// As many as is safe now ([`choose`]).
    Auto,
    /// `0`: no old node out of service without a Ready replacement; only with `--max-surge`
    /// ([`crate::surge`]), where the surge moves the stage.
    Zero,
}

impl FromStr for MaxUnavailableSetting {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "auto" {
            return Ok(MaxUnavailableSetting::Auto);
        }
        if matches!(s.trim(), "0" | "0%") {
            return Ok(MaxUnavailableSetting::Zero);
        }
        s.parse::<MaxUnavailable>().map(MaxUnavailableSetting::Fixed).map_err(|_| {
            BadValue::new(Setting::MaxUnavailable, s, "a count (e.g. 2), a percentage (e.g. 10%) or auto")
        })
    }
}

impl fmt::Display for MaxUnavailableSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxUnavailableSetting::Fixed(m) => m.fmt(f),
            MaxUnavailableSetting::Auto => f.write_str("auto"),
            MaxUnavailableSetting::Zero => f.write_str("0"),
        }
    }
}

/// Parses auto's cap ([`Setting::MaxUnavailableCap`]): a count or a percentage, like a fixed
/// max-unavailable.
pub fn parse_cap(s: &str) -> Result<MaxUnavailable, BadValue> {
    s.parse::<MaxUnavailable>().map_err(|_| {
        BadValue::new(
            Setting::MaxUnavailableCap,
            s,
            "a count (e.g. 20) or a percentage (e.g. 25%): the most workers auto takes at once",
        )
    })
}

/// The settings of `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auto {
    /// The most workers one batch may take.
    pub cap: MaxUnavailable,
    /// Whether a batch may take nodes of several zones.
    pub across_zones: bool,
}

/// How the workers are batched: the three flags resolved together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Batching {
    /// A fixed batch size.
    Fixed(MaxUnavailable),
    /// Chosen before each batch from the live cluster.
    Auto(Auto),
}

/// Settings that contradict each other (named by [`Setting`], spelled by the edge: see
/// [`Spelled`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchingError {
    /// The cap or across-zones with a fixed size.
    AutoOnly(Setting),
    /// A surge with an action that upgrades nodes in place.
    SurgeNeedsReplace,
    /// Max-unavailable 0 without a surge.
    Stalled,
    /// A surge with max-unavailable auto.
    SurgeWithAuto,
}

impl Spelled for BatchingError {
    fn spell(&self, name: &dyn Fn(Setting) -> String) -> String {
        let (mu, ms) = (name(Setting::MaxUnavailable), name(Setting::MaxSurge));
        match self {
            BatchingError::AutoOnly(s) => format!(
                "{} applies only to {mu} auto (a fixed size is its own cap and ignores zones)",
                name(*s)
            ),
            BatchingError::SurgeNeedsReplace => format!(
                "{ms} applies only to the replace action (it creates replacement nodes before the old ones drain); drop it or use {} replace",
                name(Setting::Action)
            ),
            BatchingError::Stalled => format!(
                "{mu} 0 without {ms}: no node could ever be upgraded; give {ms} N (with the replace action) or {mu} 1 or more"
            ),
            BatchingError::SurgeWithAuto => format!(
                "{ms} takes a fixed {mu} (a count, a percentage or 0), not auto: the surge slots set a replace run's pace"
            ),
        }
    }
}

crate::setting::display_with_fields!(BatchingError);

impl Batching {
    /// Resolves `--max-unavailable`, `--max-unavailable-cap` and `--across-zones`.
    pub fn new(
        setting: MaxUnavailableSetting,
        cap: Option<MaxUnavailable>,
        across_zones: bool,
    ) -> Result<Batching, BatchingError> {
        match setting {
            MaxUnavailableSetting::Auto => {
                Ok(Batching::Auto(Auto { cap: cap.unwrap_or(DEFAULT_CAP), across_zones }))
            }
            MaxUnavailableSetting::Fixed(_) if cap.is_some() => {
                Err(BatchingError::AutoOnly(Setting::MaxUnavailableCap))
            }
            MaxUnavailableSetting::Fixed(_) if across_zones => {
                Err(BatchingError::AutoOnly(Setting::AcrossZones))
            }
            MaxUnavailableSetting::Fixed(m) => Ok(Batching::Fixed(m)),
            MaxUnavailableSetting::Zero => Err(BatchingError::Stalled),
        }
    }

    /// The most workers one batch may take, of `workers` (the fixed size, or auto's cap).
    pub fn most(self, workers: usize) -> usize {
        match self {
            Batching::Fixed(m) | Batching::Auto(Auto { cap: m, .. }) => m.batch_size(workers),
        }
    }
}

/// The worker settings as given, each already parsed on its own ([`Setting::MaxUnavailable`],
/// [`Setting::MaxUnavailableCap`], [`Setting::AcrossZones`], [`Setting::MaxSurge`]). They only
/// make sense together, so they are resolved together, once ([`WorkerSettings::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// A fixed size, `auto`, or 0 (only with a surge).
    pub max_unavailable: MaxUnavailableSetting,
    /// `auto`'s cap, when given.
    pub cap: Option<MaxUnavailable>,
    /// Whether an `auto` batch may span zones.
    pub across_zones: bool,
    /// Replacements ahead of the old nodes (the replace action).
    pub max_surge: MaxSurge,
}

/// How the workers move, the settings resolved: what a plan and a run take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerWindows {
    /// The plan's worker batch size: the fixed size, `auto`'s cap, or with a surge the old
    /// nodes out at once (at least one, so the plan's batches still show the nodes in order).
    pub max_unavailable: MaxUnavailable,
    /// `auto`'s settings: each batch is chosen from the live cluster ([`choose`]).
    pub auto: Option<Auto>,
    /// A replace run's surge ([`Surge`]).
    pub surge: Option<Surge>,
}

impl WorkerSettings {
    /// Resolves the settings for a run of `style`. Refused, in this order (the first mistake
    /// found is the one reported): a surge with 0 or `auto` ([`Surge::new`]); without a surge,
    /// 0, or the cap or across-zones with a fixed size ([`Batching::new`]); a surge where
    /// nothing is replaced ([`MaxSurge::check_style`]); a surge with a cap or across-zones
    /// (both are `auto`'s, and a surge takes no `auto`).
    pub fn resolve(self, style: Style) -> Result<WorkerWindows, BatchingError> {
        let surge = Surge::new(self.max_surge, self.max_unavailable)?;
        let windows = match surge {
            Some(s) => WorkerWindows {
                max_unavailable: s.unavailable.unwrap_or(MaxUnavailable::Count(1)),
                auto: None,
                surge: Some(s),
            },
            None => match Batching::new(self.max_unavailable, self.cap, self.across_zones)? {
                Batching::Fixed(m) => WorkerWindows { max_unavailable: m, auto: None, surge: None },
                Batching::Auto(a) => WorkerWindows { max_unavailable: a.cap, auto: Some(a), surge: None },
            },
        };
        self.max_surge.check_style(style)?;
        if windows.surge.is_some() {
            // A surge takes a fixed size, so `auto`'s own settings are refused as with one.
            if self.cap.is_some() {
                return Err(BatchingError::AutoOnly(Setting::MaxUnavailableCap));
            }
            if self.across_zones {
                return Err(BatchingError::AutoOnly(Setting::AcrossZones));
            }
        }
        Ok(windows)
    }
}

/// `--max-surge N|P%`: replacement nodes created ahead of the old ones they replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum MaxSurge {
    /// No surge: each replacement is created when its old node's turn comes.
    #[default]
    None,
    /// At most N extra nodes.
    Count(u32),
    /// At most P% of the workers, rounded up (as a Deployment's `maxSurge`).
    Percent(u32),
}

impl FromStr for MaxSurge {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            BadValue::new(Setting::MaxSurge, s, "a count (e.g. 2) or a percentage (e.g. 10%) of the workers")
        };
        match s.trim().strip_suffix('%') {
            Some(p) => match p.parse::<u32>() {
                Ok(0) => Ok(MaxSurge::None),
                Ok(p) if p <= 100 => Ok(MaxSurge::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.trim().parse::<u32>() {
                Ok(0) => Ok(MaxSurge::None),
                Ok(n) => Ok(MaxSurge::Count(n)),
                Err(_) => Err(bad()),
            },
        }
    }
}

impl fmt::Display for MaxSurge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxSurge::None => f.write_str("0"),
            MaxSurge::Count(n) => write!(f, "{n}"),
            MaxSurge::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl MaxSurge {
    /// Extra nodes allowed for `workers` workers (percentages round up, as Deployments do).
    pub fn extra(self, workers: usize) -> usize {
        match self {
            MaxSurge::None => 0,
            MaxSurge::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            MaxSurge::Percent(p) => {
                workers.saturating_mul(usize::try_from(p).unwrap_or(usize::MAX)).div_ceil(100)
            }
        }
    }

    /// Refuses a surge where nothing is replaced.
    pub fn check_style(self, style: Style) -> Result<(), BatchingError> {
        match (self, style) {
            (MaxSurge::None, _) | (_, Style::Replace) => Ok(()),
            (_, Style::InPlace) => Err(BatchingError::SurgeNeedsReplace),
        }
    }
}

/// Why a batch cannot take a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "hold", rename_all = "kebab-case")]
pub enum Hold {
    /// The node's pods would take more disruptions from this budget than it allows now
    /// (together with the nodes already in the batch).
    Budget {
        /// The budget, `namespace/name`.
        pdb: String,
        /// `status.disruptionsAllowed` now.
        allowed: i32,
        /// Disruptions the batch would need with this node.
        needed: usize,
        /// The node.
        node: String,
    },
    /// A pod the node's drain evicts would find no room outside the batch.
    NoRoom {
        /// The pod, `namespace/name`.
        pod: String,
        /// The node.
        node: String,
    },
    /// The nodes in flight already fill the cap.
    Full {
        /// Nodes under way.
        in_flight: usize,
        /// The cap in nodes.
        cap: usize,
    },
    /// Every candidate left is in another zone than the nodes in flight: the next zone starts
    /// when they finish.
    OtherZone {
        /// Nodes under way.
        in_flight: usize,
        /// Their zone (None: no zone label, or they span several — a resumed run).
        zone: Option<String>,
    },
    /// No worker is left to choose from.
    NothingLeft,
}

impl Hold {
    /// Whether time alone can release it: a budget that allows disruptions but fewer than the
    /// node needs lets the node drain one allowance at a time.
    pub fn drains_slowly(&self) -> bool {
        matches!(self, Hold::Budget { allowed, .. } if *allowed > 0)
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Budget { pdb, allowed: 0, node, .. } => write!(
                f,
                "the disruption budget {pdb} allows no disruption now and {node} runs pods it covers: wait for its pods to become ready, or relax it"
            ),
            Hold::Budget { pdb, allowed, needed, node } => write!(
                f,
                "the disruption budget {pdb} allows {allowed} disruption(s) now and the batch with {node} would need {needed}"
            ),
            Hold::NoRoom { pod, node } => write!(
                f,
                "pod {pod} on {node} would find no room on the nodes left schedulable (add capacity or free some)"
            ),
            Hold::Full { in_flight, cap } => {
                write!(f, "the {in_flight} node(s) under way fill the cap ({cap} nodes)")
            }
            Hold::OtherZone { in_flight, zone: Some(z) } => write!(
                f,
                "the workers left are in other zones than the {in_flight} node(s) under way in zone {z}: the next zone starts when they finish"
            ),
            Hold::OtherZone { in_flight, zone: None } => write!(
                f,
                "the workers left are in other zones than the {in_flight} node(s) under way: the next zone starts when they finish"
            ),
            Hold::NothingLeft => f.write_str("no worker is left to upgrade"),
        }
    }
}

/// What stopped a batch from growing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "limit", rename_all = "kebab-case")]
pub enum Limit {
    /// It reached the cap.
    Cap {
        /// The cap in nodes.
        cap: usize,
    },
    /// It took every candidate of its zone (or all candidates).
    Candidates,
    /// A candidate had to be passed over, for this reason (the first one met).
    Held(Hold),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Cap { cap } => write!(f, "the cap ({cap} nodes)"),
            Limit::Candidates => f.write_str("no other worker of its zone is left"),
            Limit::Held(h) => h.fmt(f),
        }
    }
}

/// A batch chosen by [`choose`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// The nodes, in candidate order.
    pub nodes: Vec<String>,
    /// Their zone (None: nodes without the zone label, or `--across-zones`).
    pub zone: Option<String>,
    /// Why it is not larger.
    pub limit: Limit,
}

/// The zone of a node (None when it has no zone label or is unknown).
fn zone_of<'a>(snapshot: &'a Snapshot, node: &str) -> Option<&'a str> {
    snapshot.nodes.iter().find(|n| n.name == node).and_then(|n| n.labels.get(ZONE_LABEL)).map(String::as_str)
}

/// The next worker batch under `auto`, from the live `snapshot`: the nodes to start now, on
/// top of the nodes `in_flight` (started earlier, not finished yet: cordoned, draining or in
/// their action).
///
/// The window slides: whenever a node finishes the engine asks again, so the union of the
/// nodes under way and the nodes chosen must keep every rule at every instant. The nodes in
/// flight therefore count as already disrupted: their pods still bound to them are counted
/// against the budgets as if evicted now (the pods they already evicted show in the budgets'
/// current allowance, as unready or missing replacements), their pods need room outside the
/// union, they fill the cap, and their zone is the only one new nodes may come from (unless
/// `--across-zones`). A budget the nodes in flight already overdraw (pods elsewhere became
/// unready meanwhile) is not a reason to hold nodes that take nothing from it.
///
/// `candidates` are the workers still to upgrade, in schedule order; `workers` is how many
/// workers the run upgrades (what a percentage cap is of); `checks` carries the drain
/// allowances (which pods a drain evicts).
pub fn choose(
    snapshot: &Snapshot,
    in_flight: &[String],
    candidates: &[String],
    workers: usize,
    auto: Auto,
    checks: &CheckOptions,
) -> Result<Choice, Hold> {
    let cap = auto.cap.batch_size(workers);
    let capacity = Capacity::new(snapshot);
    let index = PdbIndex::new(&snapshot.pdbs);
    // Disruptions each node takes from each budget if its drain evicts everything at once.
    let demand = |node: &str| -> BTreeMap<usize, usize> {
        let mut d: BTreeMap<usize, usize> = BTreeMap::new();
        let evicted = capacity
            .pods_on(node)
            .iter()
            .filter(|p| p.consumes_disruption())
            .filter(|p| matches!(drain::decide(p, checks.drain), drain::Decision::Evict { .. }));
        for p in evicted {
            for i in index.covering(p) {
                let c = d.entry(i).or_default();
                *c = c.saturating_add(1);
            }
        }
        d
    };
    let flying: BTreeSet<&str> = in_flight.iter().map(String::as_str).collect();
    if flying.len() >= cap && !flying.is_empty() {
        return Err(Hold::Full { in_flight: flying.len(), cap });
    }
    // The budgets' disruptions and the room the nodes in flight already take.
    let mut base_used: BTreeMap<usize, usize> = BTreeMap::new();
    for n in &flying {
        for (i, k) in demand(n) {
            let c = base_used.entry(i).or_default();
            *c = c.saturating_add(k);
        }
    }
    let base: BTreeSet<String> = flying.iter().map(|n| n.to_string()).collect();
    if !base.is_empty()
        && let Some(f) = capacity.check(&base, checks).into_iter().find(|f| f.check == "capacity")
    {
        let pod = f.subject.strip_prefix("pod/").unwrap_or(&f.subject).to_string();
        return Err(Hold::NoRoom { pod, node: f.node.unwrap_or_default() });
    }
    // The zones of the nodes in flight: new nodes must share their one zone.
    let flying_zones: BTreeSet<Option<&str>> = if auto.across_zones {
        BTreeSet::new()
    } else {
        flying.iter().map(|n| zone_of(snapshot, n)).collect()
    };
    // Zones in the order their first candidate appears; one group for all with --across-zones.
    let mut zones: Vec<(Option<&str>, Vec<&str>)> = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for c in candidates.iter().map(String::as_str).filter(|c| !flying.contains(c) && seen.insert(c)) {
        let zone = if auto.across_zones { None } else { zone_of(snapshot, c) };
        match zones.iter_mut().find(|(z, _)| *z == zone) {
            Some((_, nodes)) => nodes.push(c),
            None => zones.push((zone, vec![c])),
        }
    }
    if zones.is_empty() {
        return Err(Hold::NothingLeft);
    }
    if let Some(&only) = flying_zones.iter().next() {
        zones.retain(|(z, _)| flying_zones.len() == 1 && *z == only);
        if zones.is_empty() {
            let zone = (flying_zones.len() == 1).then(|| only.map(str::to_string)).flatten();
            return Err(Hold::OtherZone { in_flight: flying.len(), zone });
        }
    }
    let mut first_hold: Option<Hold> = None;
    for (zone, nodes) in zones {
        let mut batch: BTreeSet<String> = base.clone();
        let mut order: Vec<String> = Vec::new();
        let mut used = base_used.clone();
        let mut held: Option<Hold> = None;
        let mut limit = Limit::Candidates;
        for node in nodes {
            if batch.len() >= cap {
                limit = Limit::Cap { cap };
                break;
            }
            let mine = demand(node);
            let mut with = used.clone();
            for (&i, &n) in &mine {
                let c = with.entry(i).or_default();
                *c = c.saturating_add(n);
            }
            // Only the budgets this node takes from: one the nodes in flight overdraw holds
            // no node that leaves it alone.
            let over = mine.keys().find_map(|&i| {
                let pdb = snapshot.pdbs.get(i)?;
                let needed = with.get(&i).copied().unwrap_or(0);
                let allowed = usize::try_from(pdb.disruptions_allowed).unwrap_or(0);
                (needed > allowed).then(|| Hold::Budget {
                    pdb: pdb.key(),
                    allowed: pdb.disruptions_allowed.max(0),
                    needed,
                    node: node.to_string(),
                })
            });
            if let Some(h) = over {
                held.get_or_insert(h);
                continue;
            }
            batch.insert(node.to_string());
            let no_room = capacity.check(&batch, checks).into_iter().find(|f| f.check == "capacity");
            if let Some(f) = no_room {
                batch.remove(node);
                let pod = f.subject.strip_prefix("pod/").unwrap_or(&f.subject).to_string();
                held.get_or_insert(Hold::NoRoom { pod, node: node.to_string() });
                continue;
            }
            used = with;
            order.push(node.to_string());
        }
        if !order.is_empty() {
            if let (Limit::Candidates, Some(h)) = (&limit, held) {
                limit = Limit::Held(h);
            }
            return Ok(Choice { nodes: order, zone: zone.map(str::to_string), limit });
        }
        if first_hold.is_none() {
            first_hold = held;
        }
    }
    Err(first_hold.unwrap_or(Hold::NothingLeft))
}

/// What the engine does next under `auto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "next", rename_all = "kebab-case")]
pub enum Next {
    /// Upgrade this batch; every eviction can be granted at once.
    Batch(Choice),
    /// No batch drains at once, but the first candidate's budgets only need time: upgrade it
    /// alone, its drain waiting on the budget as `--max-unavailable 1` would.
    Alone {
        /// The node.
        node: String,
        /// The budget it waits on.
        hold: Hold,
    },
    /// Nothing can start: a budget allows no disruption at all, or a pod has no room.
    Wait(Hold),
}

/// [`choose`], falling back to one node whose drain only has to wait for a budget — only
/// while nothing is in flight: with nodes under way, a slot freeing is what to wait for.
pub fn next(
    snapshot: &Snapshot,
    in_flight: &[String],
    candidates: &[String],
    workers: usize,
    auto: Auto,
    checks: &CheckOptions,
) -> Next {
    match choose(snapshot, in_flight, candidates, workers, auto, checks) {
        Ok(choice) => Next::Batch(choice),
        Err(hold @ Hold::Budget { .. }) if hold.drains_slowly() && in_flight.is_empty() => match &hold {
            Hold::Budget { node, .. } => Next::Alone { node: node.clone(), hold },
            _ => Next::Wait(hold),
        },
        Err(hold) => Next::Wait(hold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdb::PdbInfo;
    use crate::snapshot::build::{self, node, place};
    use crate::snapshot::{NodeInfo, Taint};
    use proptest::prelude::*;

    fn zoned(name: &str, zone: &str) -> NodeInfo {
        let mut n = node(name).cpu(4000);
        n.labels.insert(ZONE_LABEL.into(), zone.into());
        n
    }

    fn budget(app: &str, allowed: i32) -> PdbInfo {
        build::budget(app, 10, 10 - allowed, 10)
    }

    /// The `web` budget holding `node`.
    fn web_hold(allowed: i32, needed: usize, node: &str) -> Hold {
        Hold::Budget { pdb: "default/web".into(), allowed, needed, node: node.into() }
    }

    fn names(ns: &[&str]) -> Vec<String> {
        ns.iter().map(|s| s.to_string()).collect()
    }

    fn auto(cap: u32) -> Auto {
        Auto { cap: MaxUnavailable::Count(cap), across_zones: false }
    }

    /// Six workers, two zones, one small pod of `web` on each.
    fn cluster() -> Snapshot {
        let mut s = Snapshot::default();
        for (i, z) in ["a", "a", "a", "b", "b", "b"].iter().enumerate() {
            s.nodes.push(zoned(&format!("w-{i}"), z));
            place(&mut s, &format!("web-{i}"), "web", &format!("w-{i}"), 100);
        }
        s
    }

    #[test]
    fn takes_a_whole_zone_when_nothing_limits_it() {
        let s = cluster();
        let all = names(&["w-0", "w-3", "w-1", "w-4", "w-2", "w-5"]);
        let c = choose(&s, &[], &all, 6, auto(10), &CheckOptions::default()).unwrap();
        assert_eq!(c.nodes, names(&["w-0", "w-1", "w-2"]), "one zone, the first candidate's");
        assert_eq!(c.zone.as_deref(), Some("a"));
        assert_eq!(c.limit, Limit::Candidates);
        let across = Auto { across_zones: true, ..auto(10) };
        let c = choose(&s, &[], &all, 6, across, &CheckOptions::default()).unwrap();
        assert_eq!(c.nodes.len(), 5, "the last node must stay to take the evicted pods");
        assert_eq!(c.limit, Limit::Held(Hold::NoRoom { pod: "default/web-0".into(), node: "w-5".into() }));
        let c = choose(&s, &[], &all, 6, auto(2), &CheckOptions::default()).unwrap();
        assert_eq!((c.nodes.len(), c.limit), (2, Limit::Cap { cap: 2 }));
        let pct = Auto { cap: MaxUnavailable::Percent(50), across_zones: true };
        assert_eq!(choose(&s, &[], &all, 6, pct, &CheckOptions::default()).unwrap().nodes.len(), 3);
    }

    #[test]
    fn a_budget_limits_the_batch_to_its_allowance() {
        let mut s = cluster();
        s.pdbs.push(budget("web", 2));
        let all = names(&["w-0", "w-1", "w-2"]);
        let c = choose(&s, &[], &all, 6, auto(10), &CheckOptions::default()).unwrap();
        assert_eq!(c.nodes, names(&["w-0", "w-1"]));
        assert_eq!(c.limit, Limit::Held(web_hold(2, 3, "w-2")));
        // An unready pod takes no disruption: w-2's pod does not count.
        s.pods[2].ready = false;
        assert_eq!(choose(&s, &[], &all, 6, auto(10), &CheckOptions::default()).unwrap().nodes.len(), 3);
    }

    #[test]
    fn no_headroom_at_all_names_the_budget() {
        let mut s = cluster();
        s.pdbs.push(budget("web", 0));
        let all = names(&["w-0", "w-1", "w-3"]);
        let hold = choose(&s, &[], &all, 6, auto(10), &CheckOptions::default()).unwrap_err();
        assert_eq!(
            hold,
            Hold::Budget { pdb: "default/web".into(), allowed: 0, needed: 1, node: "w-0".into() }
        );
        assert!(hold.to_string().contains("default/web allows no disruption now"), "{hold}");
        assert_eq!(next(&s, &[], &all, 6, auto(10), &CheckOptions::default()), Next::Wait(hold));
    }

    #[test]
    fn a_node_needing_more_than_the_allowance_goes_alone() {
        let mut s = cluster();
        place(&mut s, "web-extra", "web", "w-0", 100);
        s.pdbs.push(budget("web", 1));
        let all = names(&["w-0"]);
        let n = next(&s, &[], &all, 6, auto(10), &CheckOptions::default());
        let Next::Alone { node, hold } = n else { panic!("{n:?}") };
        assert_eq!(node, "w-0");
        assert!(
            hold.to_string().contains("allows 1 disruption(s) now and the batch with w-0 would need 2"),
            "{hold}"
        );
        // With another candidate that fits, the busy node is passed over instead.
        let c = choose(&s, &[], &names(&["w-0", "w-1"]), 6, auto(10), &CheckOptions::default()).unwrap();
        assert_eq!(c.nodes, names(&["w-1"]));
    }

    #[test]
    fn evicted_pods_must_keep_room() {
        let mut s = cluster();
        // Zone a's nodes are nearly full: each runs 3.5 CPUs of 4, so one node's pods fit on
        // zone b and the others only while there is room left.
        for i in 0..3 {
            place(&mut s, &format!("big-{i}"), &format!("big{i}"), &format!("w-{i}"), 3400);
        }
        let all = names(&["w-0", "w-1", "w-2"]);
        let c = choose(&s, &[], &all, 6, auto(10), &CheckOptions::default()).unwrap();
        assert_eq!(c.nodes, names(&["w-0", "w-1", "w-2"]), "zone b has 3 × 3.9 CPUs free");
        // Taint zone b: only zone a's own nodes take the pods, and one node's worth at most.
        for n in s.nodes.iter_mut().filter(|n| n.labels[ZONE_LABEL] == "b") {
            n.taints.push(Taint { key: "k".into(), value: String::new(), effect: "NoSchedule".into() });
        }
        let hold = choose(&s, &[], &all, 6, auto(10), &CheckOptions::default()).unwrap_err();
        assert_eq!(hold, Hold::NoRoom { pod: "default/big-0".into(), node: "w-0".into() });
        assert!(hold.to_string().contains("no room"), "{hold}");
        assert_eq!(next(&s, &[], &all, 6, auto(10), &CheckOptions::default()), Next::Wait(hold));
    }

    #[test]
    fn a_zone_spread_workload_keeps_one_node_of_its_zone() {
        let mut s = cluster();
        for sched in s.scheduling.values_mut() {
            sched.spread = vec![crate::snapshot::Spread {
                max_skew: 1,
                topology_key: ZONE_LABEL.into(),
                selector: crate::pdb::Selector {
                    match_labels: BTreeMap::from([("app".into(), "web".into())]),
                    ..Default::default()
                },
            }];
        }
        // Without the constraint all of zone a goes; with it, its last node must stay to take
        // the evicted pods (moved elsewhere, zone a would be the empty domain: skew 2).
        let c =
            choose(&s, &[], &names(&["w-0", "w-1", "w-2"]), 6, auto(10), &CheckOptions::default()).unwrap();
        assert_eq!(c.nodes, names(&["w-0", "w-1"]));
        assert_eq!(c.limit, Limit::Held(Hold::NoRoom { pod: "default/web-0".into(), node: "w-2".into() }));
    }

    #[test]
    fn nodes_in_flight_fill_the_cap_and_fix_the_zone() {
        let s = cluster();
        let opts = CheckOptions::default();
        let rest = names(&["w-3", "w-1", "w-4", "w-2", "w-5"]);
        // w-0 (zone a) under way: only zone a may join, up to the cap with it.
        let c = choose(&s, &names(&["w-0"]), &rest, 6, auto(2), &opts).unwrap();
        assert_eq!(
            (c.nodes, c.zone.as_deref(), c.limit),
            (names(&["w-1"]), Some("a"), Limit::Cap { cap: 2 })
        );
        let c = choose(&s, &names(&["w-0"]), &rest, 6, auto(10), &opts).unwrap();
        assert_eq!((c.nodes, c.limit), (names(&["w-1", "w-2"]), Limit::Candidates));
        let full = choose(&s, &names(&["w-0", "w-1"]), &rest, 6, auto(2), &opts).unwrap_err();
        assert_eq!(full, Hold::Full { in_flight: 2, cap: 2 });
        assert!(full.to_string().contains("2 node(s) under way fill the cap"), "{full}");
        // Zone a all under way: zone b waits for them.
        let other = choose(&s, &names(&["w-0", "w-1", "w-2"]), &names(&["w-3", "w-4"]), 6, auto(10), &opts);
        assert_eq!(other, Err(Hold::OtherZone { in_flight: 3, zone: Some("a".into()) }));
        // In flight in two zones (a resumed run): nothing joins until they finish.
        let two = choose(&s, &names(&["w-0", "w-3"]), &names(&["w-1", "w-4"]), 6, auto(10), &opts);
        assert_eq!(two, Err(Hold::OtherZone { in_flight: 2, zone: None }));
        // --across-zones: any zone, the cap and room still hold.
        let across = Auto { across_zones: true, ..auto(4) };
        let c = choose(&s, &names(&["w-0", "w-3"]), &rest, 6, across, &opts).unwrap();
        assert_eq!((c.nodes, c.limit), (names(&["w-1", "w-4"]), Limit::Cap { cap: 4 }));
        // A candidate listed as in flight is not chosen twice.
        let c = choose(&s, &names(&["w-0"]), &names(&["w-0", "w-1"]), 6, auto(10), &opts).unwrap();
        assert_eq!(c.nodes, names(&["w-1"]));
    }

    #[test]
    fn pods_still_on_nodes_in_flight_count_against_their_budgets() {
        let mut s = cluster();
        let opts = CheckOptions::default();
        s.pdbs.push(budget("web", 2));
        // w-0's pod is not evicted yet: with it, one more web pod fits the allowance of 2.
        let c = choose(&s, &names(&["w-0"]), &names(&["w-1", "w-2"]), 6, auto(10), &opts).unwrap();
        assert_eq!(c.nodes, names(&["w-1"]));
        assert_eq!(c.limit, Limit::Held(web_hold(2, 3, "w-2")));
        // Once w-0's pod is evicted, its replacement is unready and the allowance shows it.
        s.pods.retain(|p| p.name != "web-0");
        s.pdbs[0] = budget("web", 1);
        let c = choose(&s, &names(&["w-0"]), &names(&["w-1", "w-2"]), 6, auto(10), &opts).unwrap();
        assert_eq!(c.nodes, names(&["w-1"]));
        // A budget the nodes in flight overdraw holds only the nodes that take from it.
        s.pdbs[0] = budget("web", 0);
        place(&mut s, "web-0", "web", "w-0", 100);
        s.pods.retain(|p| p.name != "web-2");
        let c = choose(&s, &names(&["w-0"]), &names(&["w-1", "w-2"]), 6, auto(10), &opts).unwrap();
        assert_eq!(c.nodes, names(&["w-2"]));
        // With nodes under way, a budget that only drains slowly waits for a slot rather
        // than sending a node alone.
        let mut s = cluster();
        place(&mut s, "web-extra", "web", "w-1", 100);
        s.pdbs.push(budget("web", 1));
        let hold =
            |needed| Hold::Budget { pdb: "default/web".into(), allowed: 1, needed, node: "w-1".into() };
        assert_eq!(next(&s, &names(&["w-2"]), &names(&["w-1"]), 6, auto(10), &opts), Next::Wait(hold(3)));
        assert_eq!(
            next(&s, &[], &names(&["w-1"]), 6, auto(10), &opts),
            Next::Alone { node: "w-1".into(), hold: hold(2) }
        );
    }

    #[test]
    fn pods_on_nodes_in_flight_keep_their_room() {
        let mut s = cluster();
        let opts = CheckOptions::default();
        for i in 0..3 {
            place(&mut s, &format!("big-{i}"), &format!("big{i}"), &format!("w-{i}"), 3400);
        }
        // Of zone b only w-3 takes pods: room for one big pod.
        for n in s.nodes.iter_mut().filter(|n| n.name == "w-4" || n.name == "w-5") {
            n.taints.push(Taint { key: "k".into(), value: String::new(), effect: "NoSchedule".into() });
        }
        // Alone, w-1's big pod would go to w-3; with w-0 under way, w-0's own big pod takes
        // that room, so nothing joins.
        let c = choose(&s, &[], &names(&["w-1"]), 6, auto(10), &opts).unwrap();
        assert_eq!(c.nodes, names(&["w-1"]));
        let hold = choose(&s, &names(&["w-0"]), &names(&["w-1", "w-2"]), 6, auto(10), &opts).unwrap_err();
        assert_eq!(hold, Hold::NoRoom { pod: "default/big-1".into(), node: "w-1".into() });
        // Nodes in flight whose own pods have no room hold everything, naming their pod.
        let hold = choose(&s, &names(&["w-0", "w-1"]), &names(&["w-2"]), 6, auto(10), &opts).unwrap_err();
        assert!(matches!(&hold, Hold::NoRoom { node, .. } if node == "w-0" || node == "w-1"), "{hold:?}");
    }

    #[test]
    fn nothing_left_is_its_own_hold() {
        let s = cluster();
        assert_eq!(choose(&s, &[], &[], 6, auto(1), &CheckOptions::default()), Err(Hold::NothingLeft));
    }

    #[test]
    fn flags() {
        assert_eq!("auto".parse(), Ok(MaxUnavailableSetting::Auto));
        assert_eq!("10%".parse(), Ok(MaxUnavailableSetting::Fixed(MaxUnavailable::Percent(10))));
        let e = "many".parse::<MaxUnavailableSetting>().unwrap_err();
        assert_eq!(e.setting, Setting::MaxUnavailable);
        assert!(e.to_string().starts_with("maxUnavailable 'many'") && e.expected.ends_with("or auto"), "{e}");
        assert_eq!(parse_cap("20"), Ok(MaxUnavailable::Count(20)));
        assert!(
            parse_cap("auto").unwrap_err().to_string().starts_with("maxUnavailableCap 'auto' is not a count")
        );
        assert!(parse_cap("0").is_err() && parse_cap("101%").is_err());

        let auto = MaxUnavailableSetting::Auto;
        let fixed = MaxUnavailableSetting::Fixed(MaxUnavailable::Count(3));
        assert_eq!(
            Batching::new(auto, None, false),
            Ok(Batching::Auto(Auto { cap: DEFAULT_CAP, across_zones: false }))
        );
        assert_eq!(Batching::new(auto, None, false).unwrap().most(200), 50, "the default cap, 25%");
        assert_eq!(Batching::new(fixed, None, false).unwrap().most(200), 3);
        let e = Batching::new(fixed, Some(MaxUnavailable::Count(2)), false).unwrap_err();
        assert_eq!(e, BatchingError::AutoOnly(Setting::MaxUnavailableCap));
        assert!(e.to_string().starts_with("maxUnavailableCap applies only to maxUnavailable auto"), "{e}");
        let flags = |s: Setting| format!("--{}", s.field().to_lowercase());
        assert!(e.spell(&flags).starts_with("--maxunavailablecap applies only to --maxunavailable auto"));
        assert_eq!(Batching::new(fixed, None, true), Err(BatchingError::AutoOnly(Setting::AcrossZones)));

        assert_eq!("2".parse(), Ok(MaxSurge::Count(2)));
        assert_eq!("0".parse(), Ok(MaxSurge::None));
        assert_eq!("0%".parse(), Ok(MaxSurge::None));
        assert_eq!("10%".parse::<MaxSurge>().unwrap().extra(15), 2, "rounds up like a Deployment");
        assert_eq!(MaxSurge::Count(3).to_string(), "3");
        for bad in ["", "-1", "x", "101%", "1.5"] {
            let e = bad.parse::<MaxSurge>().unwrap_err();
            assert_eq!(e.setting, Setting::MaxSurge, "{e}");
        }
        assert_eq!(MaxSurge::Count(1).check_style(Style::InPlace), Err(BatchingError::SurgeNeedsReplace));
        assert!(MaxSurge::Count(1).check_style(Style::Replace).is_ok());
        assert!(MaxSurge::None.check_style(Style::InPlace).is_ok());
    }

    /// The worker settings of one case: `max_unavailable`, cap, across-zones, `max_surge`.
    fn settings(m: &str, cap: Option<u32>, across_zones: bool, surge: &str) -> WorkerSettings {
        WorkerSettings {
            max_unavailable: m.parse().unwrap(),
            cap: cap.map(MaxUnavailable::Count),
            across_zones,
            max_surge: surge.parse().unwrap(),
        }
    }

    #[test]
    fn worker_settings_resolve_to_their_windows() {
        let (n, p) = (MaxUnavailable::Count, MaxUnavailable::Percent);
        let windows = |m, auto, surge| Ok(WorkerWindows { max_unavailable: m, auto, surge });
        for style in [Style::InPlace, Style::Replace] {
            // Fixed: its own size, nothing else.
            assert_eq!(settings("3", None, false, "0").resolve(style), windows(n(3), None, None));
            assert_eq!(settings("10%", None, false, "0").resolve(style), windows(p(10), None, None));
            // Auto: the plan shows its cap; the default cap unless one is given.
            let auto = |cap, across_zones| Some(Auto { cap, across_zones });
            assert_eq!(
                settings("auto", None, false, "0").resolve(style),
                windows(DEFAULT_CAP, auto(DEFAULT_CAP, false), None)
            );
            assert_eq!(
                settings("auto", Some(4), true, "0").resolve(style),
                windows(n(4), auto(n(4), true), None)
            );
        }
        // A surge (replace only): the old nodes out at once as given, at least one in the plan.
        let surge = |s, unavailable| Some(Surge { surge: MaxSurge::Count(s), unavailable });
        assert_eq!(
            settings("2", None, false, "3").resolve(Style::Replace),
            windows(n(2), None, surge(3, Some(n(2))))
        );
        assert_eq!(
            settings("0", None, false, "3").resolve(Style::Replace),
            windows(n(1), None, surge(3, None))
        );
    }

    #[test]
    fn worker_settings_that_contradict_each_other_are_refused() {
        use BatchingError::*;
        for (case, style, refused) in [
            (settings("3", Some(2), false, "0"), Style::InPlace, AutoOnly(Setting::MaxUnavailableCap)),
            (settings("3", None, true, "0"), Style::InPlace, AutoOnly(Setting::AcrossZones)),
            (settings("3", Some(2), true, "0"), Style::InPlace, AutoOnly(Setting::MaxUnavailableCap)),
            (settings("0", None, false, "0"), Style::Replace, Stalled),
            (settings("0", Some(2), true, "0"), Style::InPlace, Stalled),
            (settings("auto", None, false, "2"), Style::Replace, SurgeWithAuto),
            // The surge with auto is the first mistake, before the style's.
            (settings("auto", None, false, "2"), Style::InPlace, SurgeWithAuto),
            (settings("2", None, false, "2"), Style::InPlace, SurgeNeedsReplace),
            (settings("0", None, false, "10%"), Style::InPlace, SurgeNeedsReplace),
            (settings("2", Some(3), false, "2"), Style::Replace, AutoOnly(Setting::MaxUnavailableCap)),
            (settings("0", Some(3), false, "2"), Style::Replace, AutoOnly(Setting::MaxUnavailableCap)),
            (settings("2", None, true, "2"), Style::Replace, AutoOnly(Setting::AcrossZones)),
            (settings("0", None, true, "2"), Style::Replace, AutoOnly(Setting::AcrossZones)),
            // The cap's mistake before across-zones'.
            (settings("2", Some(3), true, "2"), Style::Replace, AutoOnly(Setting::MaxUnavailableCap)),
            // The style's mistake before the cap's.
            (settings("2", Some(3), false, "2"), Style::InPlace, SurgeNeedsReplace),
        ] {
            assert_eq!(case.resolve(style), Err(refused.clone()), "{case:?} {style:?}");
        }
        let flag = |s: Setting| match s {
            Setting::MaxUnavailableCap => "--max-unavailable-cap".to_string(),
            Setting::MaxUnavailable => "--max-unavailable".to_string(),
            s => format!("--{s:?}"),
        };
        let e = settings("2", Some(3), false, "2").resolve(Style::Replace).unwrap_err();
        assert_eq!(
            e.spell(&flag),
            "--max-unavailable-cap applies only to --max-unavailable auto (a fixed size is its own cap and ignores zones)"
        );
    }

    /// Every combination: accepted ones keep each setting where it belongs.
    #[test]
    fn every_accepted_combination_keeps_its_settings() {
        for m in ["3", "auto", "0"] {
            for cap in [None, Some(4)] {
                for across_zones in [false, true] {
                    for surge in ["0", "2"] {
                        for style in [Style::InPlace, Style::Replace] {
                            let case = settings(m, cap, across_zones, surge);
                            let Ok(w) = case.resolve(style) else { continue };
                            assert_eq!(w.auto.is_some(), m == "auto", "{case:?}");
                            assert_eq!(w.surge.is_some(), surge != "0", "{case:?}");
                            assert!(w.surge.is_none() || style == Style::Replace, "{case:?} {style:?}");
                            assert!(w.surge.is_none() || cap.is_none(), "{case:?}");
                            assert!(w.surge.is_none() || !across_zones, "{case:?}");
                            assert!(m != "0" || w.surge.is_some(), "0 only with a surge: {case:?}");
                        }
                    }
                }
            }
        }
    }

    /// A random cluster: nodes in up to three zones (some without one), some tainted, pods of
    /// four apps with random requests and readiness, budgets with random allowances.
    fn arb_cluster() -> impl Strategy<Value = (Snapshot, Vec<String>, u32, bool)> {
        let nodes = prop::collection::vec((0usize..4, 1000i64..6000, any::<bool>()), 1..10);
        let pods = prop::collection::vec((0usize..10, 0usize..4, 0i64..2500, any::<bool>(), 0u8..8), 0..40);
        let budgets = prop::collection::vec((0usize..4, 0i32..4), 0..4);
        (nodes, pods, budgets, 1u32..8, any::<bool>(), any::<u64>()).prop_map(
            |(nodes, pods, budgets, cap, across, seed)| {
                let mut s = Snapshot::default();
                for (i, (zone, cpu, tainted)) in nodes.iter().enumerate() {
                    let mut n = node(&format!("w-{i}")).cpu(*cpu);
                    if *zone < 3 {
                        n.labels.insert(ZONE_LABEL.into(), ["a", "b", "c"][*zone].into());
                    }
                    if *tainted && i % 3 == 0 {
                        n.taints.push(Taint {
                            key: "t".into(),
                            value: String::new(),
                            effect: "NoSchedule".into(),
                        });
                    }
                    s.nodes.push(n);
                }
                for (j, (on, app, cpu, ready, extra)) in pods.into_iter().enumerate() {
                    let on = format!("w-{}", on % nodes.len());
                    place(&mut s, &format!("p-{j}"), &format!("app{app}"), &on, cpu);
                    let p = s.pods.last_mut().unwrap();
                    p.ready = ready || extra > 2;
                    if extra == 0 {
                        p.owner =
                            Some(crate::snapshot::Owner { kind: "DaemonSet".into(), name: "ds".into() });
                    }
                    let uid = p.uid.clone();
                    if extra >= 6
                        && let Some(sched) = s.scheduling.get_mut(&uid)
                    {
                        // Spread over zones (or hostnames), one app's pods counted together.
                        sched.spread = vec![crate::snapshot::Spread {
                            max_skew: u32::from(extra) - 5,
                            topology_key: if app % 2 == 0 { ZONE_LABEL } else { "kubernetes.io/hostname" }
                                .into(),
                            selector: crate::pdb::Selector {
                                match_labels: BTreeMap::from([("app".into(), format!("app{app}"))]),
                                ..Default::default()
                            },
                        }];
                    }
                }
                for (app, allowed) in budgets {
                    s.pdbs.push(budget(&format!("app{app}"), allowed));
                }
                // Candidates: every node, in an order the seed shuffles.
                let mut cands: Vec<String> = s.nodes.iter().map(|n| n.name.clone()).collect();
                let len = cands.len();
                for i in 0..len {
                    let j = ((seed >> (i % 60)) as usize).wrapping_add(i) % len;
                    cands.swap(i, j);
                }
                (s, cands, cap, across)
            },
        )
    }

    proptest! {
        /// Whatever the cluster and whatever is already in flight: the union of the nodes in
        /// flight and a chosen batch never asks a budget the batch takes from for more than it
        /// allows when all of their pods are evicted at once, never leaves an evicted pod
        /// without room (nor its topology spread unkept), never spans two zones (unless told
        /// to) and stays within the cap; and a hold means no candidate could have joined alone.
        #[test]
        fn auto_batches_are_safe((s, cands, cap, across) in arb_cluster(), flying in any::<bool>(), mask in any::<u16>()) {
            let opts = CheckOptions::default();
            let a = Auto { cap: MaxUnavailable::Count(cap), across_zones: across };
            // Half the cases start with nothing in flight; the others with a random subset.
            let mut i = 0u32;
            let (in_flight, cands): (Vec<String>, Vec<String>) = if flying {
                cands.into_iter().partition(|_| {
                    i = i.wrapping_add(1);
                    mask & (1 << (i % 16)) != 0
                })
            } else {
                (Vec::new(), cands)
            };
            let workers = in_flight.len() + cands.len();
            match choose(&s, &in_flight, &cands, workers, a, &opts) {
                Ok(c) => {
                    let new: BTreeSet<String> = c.nodes.iter().cloned().collect();
                    prop_assert_eq!(new.len(), c.nodes.len(), "no node twice");
                    prop_assert!(c.nodes.iter().all(|n| cands.contains(n) && !in_flight.contains(n)));
                    let set: BTreeSet<String> = new.iter().chain(&in_flight).cloned().collect();
                    prop_assert!(!c.nodes.is_empty() && set.len() <= cap as usize);
                    let takes = |nodes: &BTreeSet<String>, pdb: &crate::pdb::PdbInfo| s.pods.iter()
                        .filter(|p| p.node.as_ref().is_some_and(|n| nodes.contains(n)))
                        .filter(|p| p.consumes_disruption() && pdb.covers(p))
                        .filter(|p| matches!(drain::decide(p, opts.drain), drain::Decision::Evict { .. }))
                        .count();
                    for pdb in &s.pdbs {
                        if takes(&new, pdb) > 0 {
                            let taken = takes(&set, pdb);
                            prop_assert!(taken as i32 <= pdb.disruptions_allowed.max(0), "{} takes {taken} with the nodes in flight", pdb.key());
                        }
                    }
                    prop_assert!(Capacity::new(&s).check(&set, &opts).is_empty(), "an evicted pod without room");
                    // Topology spread, checked on its own: every evicted pod with a hard spread
                    // constraint has some node outside the union that keeps its skew.
                    let evicted: Vec<&crate::snapshot::PodInfo> = s.pods.iter()
                        .filter(|p| p.node.as_ref().is_some_and(|n| set.contains(n)))
                        .filter(|p| p.owner.is_some() && !p.phase.is_terminal())
                        .filter(|p| matches!(drain::decide(p, opts.drain), drain::Decision::Evict { .. }))
                        .collect();
                    for p in &evicted {
                        for c in &s.scheduling[&p.uid].spread {
                            let domain = |n: &str| s.nodes.iter().find(|x| x.name == n).and_then(|x| x.labels.get(&c.topology_key)).cloned();
                            let mut counts: BTreeMap<String, u64> = s.nodes.iter()
                                .filter_map(|n| n.labels.get(&c.topology_key).map(|d| (d.clone(), 0)))
                                .collect();
                            for q in s.pods.iter().filter(|q| c.selector.matches(&q.labels) && !evicted.iter().any(|e| e.uid == q.uid)) {
                                if let Some(d) = q.node.as_deref().and_then(domain) {
                                    *counts.entry(d).or_default() += 1;
                                }
                            }
                            let min = counts.values().copied().min().unwrap_or(0);
                            let fits = s.nodes.iter()
                                .filter(|n| !set.contains(&n.name) && n.ready && !n.unschedulable && n.taints.is_empty())
                                .filter_map(|n| n.labels.get(&c.topology_key))
                                .any(|d| counts[d] + 1 - min <= u64::from(c.max_skew));
                            prop_assert!(fits, "{} has no node keeping its spread over {}", p.key(), c.topology_key);
                        }
                    }
                    if !across {
                        let zones: BTreeSet<Option<&str>> = set.iter().map(|n| zone_of(&s, n)).collect();
                        prop_assert_eq!(zones.len(), 1, "two zones: {:?}", zones);
                    }
                }
                Err(hold) => {
                    for n in &cands {
                        let alone = choose(&s, &in_flight, std::slice::from_ref(n), workers, a, &opts);
                        prop_assert!(alone.is_err(), "held by {hold} but {n} could join alone");
                    }
                    prop_assert!(!matches!(hold, Hold::NothingLeft) || cands.is_empty());
                }
            }
        }
    }
}
