//! The upgrade plan: ordered phases (etcd → control plane → workers → cluster services),
//! batches of workers sized by max-unavailable, per-node steps, and the findings that shaped it.
//!
//! A node with several roles is one unit, upgraded once, in the earliest phase its roles put it
//! in (a stacked etcd + control-plane node goes in the etcd phase). etcd and control-plane units
//! always go one at a time; workers go in batches.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checks::{Finding, Severity};
use crate::snapshot::{NodeInfo, Snapshot};
use crate::version::Version;

/// What a node does for the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs an etcd member.
    Etcd,
    /// Runs the control-plane components.
    ControlPlane,
    /// Runs workloads.
    Worker,
}

/// The phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseKind {
    /// etcd members (and stacked control-plane nodes with them).
    Etcd,
    /// Control-plane nodes.
    ControlPlane,
    /// Workers, in batches.
    Workers,
    /// kube-proxy, CoreDNS, CNI.
    ClusterServices,
}

impl PhaseKind {
    /// The phase a node with `roles` is upgraded in: an etcd member with the etcd phase (a
    /// stacked control-plane node too: one pass over all its components), a control-plane
    /// node with the control plane, anything else with the workers.
    pub fn of_roles(roles: &BTreeSet<Role>) -> PhaseKind {
        if roles.contains(&Role::Etcd) {
            PhaseKind::Etcd
        } else if roles.contains(&Role::ControlPlane) {
            PhaseKind::ControlPlane
        } else {
            PhaseKind::Workers
        }
    }
}

/// Why a node is left out of a plan. Decisions match on the variant; the text (also what plans
/// and stored schedules carry in JSON, unchanged) is only for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// Its kubelet already runs the target.
    AtTarget(Version),
    /// A worker, and only the control plane is upgraded.
    ControlPlaneOnly,
    /// It has blockers and `--partial-ok` leaves such workers out.
    PartialOk {
        /// How many.
        blockers: usize,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::AtTarget(v) => write!(f, "already at {v}"),
            Exclusion::ControlPlaneOnly => f.write_str("worker: --control-plane-only"),
            Exclusion::PartialOk { blockers } => write!(f, "--partial-ok: {blockers} blocker(s)"),
        }
    }
}

impl FromStr for Exclusion {
    type Err = String;
    /// The text [`Display`](fmt::Display) writes (schedules stored by earlier runs hold it).
    fn from_str(s: &str) -> Result<Exclusion, String> {
        let bad = || format!("unknown exclusion '{s}'");
        if let Some(v) = s.strip_prefix("already at ") {
            return v.parse().map(Exclusion::AtTarget).map_err(|_| bad());
        }
        if s == "worker: --control-plane-only" {
            return Ok(Exclusion::ControlPlaneOnly);
        }
        let n =
            s.strip_prefix("--partial-ok: ").and_then(|r| r.strip_suffix(" blocker(s)")).ok_or_else(bad)?;
        n.parse().map(|blockers| Exclusion::PartialOk { blockers }).map_err(|_| bad())
    }
}

impl Serialize for Exclusion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Exclusion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Exclusion, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One step of one node's upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Mark unschedulable (recorded as refit's on the node).
    Cordon,
    /// Evict its pods.
    Drain,
    /// Run the node action.
    Upgrade,
    /// Wait for Ready at the target version.
    Validate,
    /// Mark schedulable again (only if refit cordoned it).
    Uncordon,
    /// Remove the old node once its replacement serves (the replace action).
    Remove,
}

/// How many workers may be unavailable at once: a count or a percentage of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaxUnavailable {
    /// At most N nodes.
    Count(u32),
    /// At most P% of the workers (rounded down, at least one).
    Percent(u32),
}

impl MaxUnavailable {
    /// The batch size for `workers` workers.
    pub fn batch_size(self, workers: usize) -> usize {
        match self {
            MaxUnavailable::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            MaxUnavailable::Percent(p) => {
                workers.saturating_mul(usize::try_from(p).unwrap_or(usize::MAX)).checked_div(100).unwrap_or(0)
            }
        }
        .max(1)
    }
}

impl FromStr for MaxUnavailable {
    type Err = crate::setting::BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            crate::setting::BadValue::new(
                crate::setting::Setting::MaxUnavailable,
                s,
                "a count (e.g. 2) or a percentage (e.g. 10%)",
            )
        };
        match s.trim().strip_suffix('%') {
            Some(p) => match p.parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(MaxUnavailable::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(MaxUnavailable::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How findings are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Blockers stop the upgrade.
    #[default]
    Online,
    /// Run the checks and report, block on nothing (`--ignore-safety-checks`).
    IgnoreSafetyChecks,
    /// Run no checks at all (`--offline`).
    Offline,
}

/// Plan settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Target version.
    pub target: Version,
    /// Worker batch size.
    pub max_unavailable: MaxUnavailable,
    /// How findings are treated.
    pub mode: Mode,
    /// Leave out workers that failed their checks (only when every etcd and control-plane
    /// unit passed).
    pub partial_ok: bool,
    /// Include units already at the target.
    pub force: bool,
    /// Stop after the control plane (no worker phase).
    pub control_plane_only: bool,
    /// Roles the cluster cannot tell (external etcd hosts, nodes marked by a plan file).
    pub extra_roles: BTreeMap<String, BTreeSet<Role>>,
}

/// One node (or external etcd host) and what will happen to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitPlan {
    /// Node or host name.
    pub node: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
    /// Version now (kubelet, or empty for an external etcd host).
    pub from: String,
    /// Version after.
    pub to: Version,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Blocking findings on this unit.
    pub blockers: Vec<Finding>,
    /// What the drain of this node does with each of its pods (kubectl semantics): filled
    /// by preflight, empty for hosts that are not nodes.
    pub drain: crate::drain::NodeDrain,
}

/// A group of units upgraded together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// The units.
    pub units: Vec<UnitPlan>,
}

/// One phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    /// Which.
    pub kind: PhaseKind,
    /// Its batches, in order.
    pub batches: Vec<Batch>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Target version.
    pub target: Version,
    /// Mode the plan was made in.
    pub mode: Mode,
    /// Worker batch size.
    pub max_unavailable: String,
    /// Phases in order.
    pub phases: Vec<Phase>,
    /// Every finding (per node and cluster-wide) that is not accepted.
    pub findings: Vec<Finding>,
    /// Blockers the operator accepted one by one (`--accept`, the plan file's `accept:`),
    /// shown apart from the open ones and recorded with the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted: Vec<crate::accept::Accepted>,
    /// Units left out, with the reason.
    pub excluded: Vec<(String, Exclusion)>,
    /// Whether the upgrade may start (no blocker counts in this mode).
    pub blocked: bool,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Leaving out the nodes that failed their checks (the CLI's `--partial-ok`) cannot
    /// leave out etcd or control-plane members. (Its way out besides a fix is
    /// [`crate::remedy::Remedy::AcceptEach`].)
    #[error(
        "leaving out the nodes that failed their checks covers workers only, but {0} failed its checks; fix it first"
    )]
    PartialControlPlane(String),
    /// Nothing to upgrade.
    /// (Its way out is [`crate::remedy::Remedy::Force`]: include the nodes at the target.)
    #[error("every node is already at {0}; nothing to do")]
    NothingToDo(String),
}

impl PlanError {
    /// Its ways out, for a front end to spell (a flag, a request field).
    pub fn remedies(&self) -> Vec<crate::remedy::Remedy> {
        match self {
            PlanError::PartialControlPlane(_) => vec![crate::remedy::Remedy::AcceptEach],
            PlanError::NothingToDo(_) => vec![crate::remedy::Remedy::Force],
        }
    }
}

/// A node's roles: the plan file's, the control-plane label, a stacked etcd member (an etcd
/// mirror pod on it); a worker when nothing else.
fn roles_of(node: Option<&NodeInfo>, stacked_etcd: bool, extra: Option<&BTreeSet<Role>>) -> BTreeSet<Role> {
    let mut roles = extra.cloned().unwrap_or_default();
    if node.is_some_and(NodeInfo::is_control_plane) {
        roles.insert(Role::ControlPlane);
    }
    if node.is_some() && stacked_etcd {
        roles.insert(Role::Etcd);
    }
    if roles.is_empty() {
        roles.insert(Role::Worker);
    }
    roles
}

/// Every unit's roles, by node or external host name: the cluster's nodes and the plan
/// file's hosts (`extra`). One rule for the plan's phases and the availability checks' counts.
pub fn cluster_roles(
    snapshot: &Snapshot,
    extra: &BTreeMap<String, BTreeSet<Role>>,
) -> BTreeMap<String, BTreeSet<Role>> {
    let etcd_nodes: BTreeSet<&str> = snapshot
        .pods
        .iter()
        .filter(|p| p.mirror && p.labels.get("component").map(String::as_str) == Some("etcd"))
        .filter_map(|p| p.node.as_deref())
        .collect();
    let mut out: BTreeMap<String, BTreeSet<Role>> = snapshot
        .nodes
        .iter()
        .map(|n| {
            (n.name.clone(), roles_of(Some(n), etcd_nodes.contains(n.name.as_str()), extra.get(&n.name)))
        })
        .collect();
    for (name, roles) in extra {
        out.entry(name.clone()).or_insert_with(|| roles_of(None, false, Some(roles)));
    }
    out
}

/// Builds the plan from the snapshot and the findings of the checks.
pub fn build(snapshot: &Snapshot, findings: Vec<Finding>, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let findings = if opts.mode == Mode::Offline { Vec::new() } else { findings };
    // Indexes, so that nothing below is per node × per pod (or × per finding).
    let mut blocking: BTreeMap<&str, Vec<Finding>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.severity == Severity::Blocker) {
        if let Some(n) = f.node.as_deref() {
            blocking.entry(n).or_default().push(f.clone());
        }
    }
    let nodes: BTreeMap<&str, &NodeInfo> = snapshot.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut units: Vec<UnitPlan> = Vec::new();
    let mut excluded = Vec::new();
    for (name, roles) in cluster_roles(snapshot, &opts.extra_roles) {
        let node = nodes.get(name.as_str()).copied();
        let from = node.map(|n| n.kubelet.clone()).unwrap_or_default();
        if !opts.force && from.parse::<Version>().is_ok_and(|v| v.release() == opts.target.release()) {
            excluded.push((name.clone(), Exclusion::AtTarget(opts.target.clone())));
            continue;
        }
        if opts.control_plane_only && !roles.contains(&Role::ControlPlane) && !roles.contains(&Role::Etcd) {
            excluded.push((name.clone(), Exclusion::ControlPlaneOnly));
            continue;
        }
        let steps = if node.is_none() {
            vec![Step::Upgrade, Step::Validate] // an external etcd host: nothing to cordon
        } else {
            vec![Step::Cordon, Step::Drain, Step::Upgrade, Step::Validate, Step::Uncordon]
        };
        let blockers = match opts.mode {
            Mode::Online => blocking.remove(name.as_str()).unwrap_or_default(),
            _ => Vec::new(),
        };
        units.push(UnitPlan {
            node: name,
            roles,
            from,
            to: opts.target.clone(),
            steps,
            blockers,
            drain: Default::default(),
        });
    }
    if opts.partial_ok && opts.mode == Mode::Online {
        // Kismatic: "a partial upgrade can only be performed when all etcd and master nodes
        // are ready" — a member that is also a worker is still a member.
        if let Some(u) = units.iter().find(|u| {
            !u.blockers.is_empty() && (u.roles.contains(&Role::Etcd) || u.roles.contains(&Role::ControlPlane))
        }) {
            return Err(PlanError::PartialControlPlane(u.node.clone()));
        }
        units.retain(|u| {
            if u.blockers.is_empty() {
                return true;
            }
            excluded.push((u.node.clone(), Exclusion::PartialOk { blockers: u.blockers.len() }));
            false
        });
    }
    if units.is_empty()
        && !excluded.is_empty()
        && excluded.iter().all(|(_, why)| matches!(why, Exclusion::AtTarget(_)))
    {
        return Err(PlanError::NothingToDo(opts.target.to_string()));
    }
    let phase_of = |u: &UnitPlan| PhaseKind::of_roles(&u.roles);
    let mut phases = Vec::new();
    for kind in [PhaseKind::Etcd, PhaseKind::ControlPlane, PhaseKind::Workers] {
        let members: Vec<UnitPlan> = units.iter().filter(|u| phase_of(u) == kind).cloned().collect();
        if members.is_empty() {
            continue;
        }
        let size =
            if kind == PhaseKind::Workers { opts.max_unavailable.batch_size(members.len()) } else { 1 };
        let batches = members.chunks(size).map(|c| Batch { units: c.to_vec() }).collect();
        phases.push(Phase { kind, batches });
    }
    if !opts.control_plane_only {
        phases.push(Phase { kind: PhaseKind::ClusterServices, batches: Vec::new() });
    }
    let blocked = opts.mode == Mode::Online
        && (units.iter().any(|u| !u.blockers.is_empty())
            || findings.iter().any(|f| f.severity == Severity::Blocker && f.node.is_none()));
    Ok(Plan {
        target: opts.target.clone(),
        mode: opts.mode,
        max_unavailable: opts.max_unavailable.to_string(),
        phases,
        findings,
        accepted: Vec::new(),
        excluded,
        blocked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::build::pod;
    use proptest::prelude::*;

    fn node(name: &str, cp: bool, kubelet: &str) -> crate::snapshot::NodeInfo {
        let n = crate::snapshot::build::node(name).kubelet(kubelet);
        if cp { n.control_plane() } else { n }
    }

    fn cluster(workers: usize) -> Snapshot {
        let mut s = Snapshot::default();
        s.nodes.push(node("cp-1", true, "v1.36.4"));
        s.nodes.push(node("cp-2", true, "v1.36.4"));
        for i in 0..workers {
            s.nodes.push(node(&format!("w-{i:02}"), false, "v1.36.4"));
        }
        let mut etcd = pod("etcd-cp-1").mirror();
        etcd.namespace = "kube-system".into();
        etcd.node = Some("cp-1".into());
        etcd.labels.insert("component".into(), "etcd".into());
        s.pods.push(etcd);
        s
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            target: Version::new(1, 37, 1),
            max_unavailable: MaxUnavailable::Count(2),
            mode: Mode::Online,
            partial_ok: false,
            force: false,
            control_plane_only: false,
            extra_roles: BTreeMap::new(),
        }
    }

    fn blocker(node: &str) -> Finding {
        Finding {
            check: "node-not-ready",
            severity: Severity::Blocker,
            subject: format!("node/{node}"),
            node: Some(node.into()),
            message: "not Ready".into(),
            remedy: None,
        }
    }

    #[test]
    fn exclusions_read_back_from_their_text_and_serialize_as_it() {
        for e in [
            Exclusion::AtTarget("1.37.1".parse().unwrap()),
            Exclusion::ControlPlaneOnly,
            Exclusion::PartialOk { blockers: 3 },
        ] {
            assert_eq!(e.to_string().parse::<Exclusion>(), Ok(e.clone()));
            assert_eq!(serde_json::to_value(&e).unwrap(), serde_json::json!(e.to_string()));
            assert_eq!(serde_json::from_value::<Exclusion>(serde_json::json!(e.to_string())).unwrap(), e);
        }
        assert_eq!(Exclusion::PartialOk { blockers: 2 }.to_string(), "--partial-ok: 2 blocker(s)");
        assert_eq!(Exclusion::ControlPlaneOnly.to_string(), "worker: --control-plane-only");
        assert!("already at lunch".parse::<Exclusion>().is_err());
        assert!("left out".parse::<Exclusion>().is_err());
    }

    #[test]
    fn phases_in_order_with_multi_role_nodes_once() {
        let p = build(&cluster(5), vec![], &opts()).unwrap();
        let kinds: Vec<PhaseKind> = p.phases.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [PhaseKind::Etcd, PhaseKind::ControlPlane, PhaseKind::Workers, PhaseKind::ClusterServices]
        );
        let etcd = &p.phases[0].batches[0].units[0];
        assert_eq!(etcd.node, "cp-1");
        assert_eq!(etcd.roles, BTreeSet::from([Role::Etcd, Role::ControlPlane]), "one unit, one pass");
        assert_eq!(p.phases[1].batches.len(), 1);
        let sizes: Vec<usize> = p.phases[2].batches.iter().map(|b| b.units.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(!p.blocked);
    }

    #[test]
    fn external_etcd_hosts_only_upgrade_and_validate() {
        let mut o = opts();
        o.extra_roles.insert("etcd-a".into(), BTreeSet::from([Role::Etcd]));
        let p = build(&cluster(1), vec![], &o).unwrap();
        let host = p.phases[0].batches.iter().flat_map(|b| &b.units).find(|u| u.node == "etcd-a").unwrap();
        assert_eq!(host.steps, [Step::Upgrade, Step::Validate]);
    }

    #[test]
    fn modes_and_partial_ok() {
        let s = cluster(4);
        let p = build(&s, vec![blocker("w-01")], &opts()).unwrap();
        assert!(p.blocked);
        let mut o = opts();
        o.mode = Mode::IgnoreSafetyChecks;
        let p = build(&s, vec![blocker("w-01")], &o).unwrap();
        assert!(!p.blocked && p.findings.len() == 1, "reported, not blocking");
        o.mode = Mode::Offline;
        assert!(build(&s, vec![blocker("w-01")], &o).unwrap().findings.is_empty());
        let mut o = opts();
        o.partial_ok = true;
        let p = build(&s, vec![blocker("w-01")], &o).unwrap();
        assert!(!p.blocked);
        assert!(p.excluded.iter().any(|(n, _)| n == "w-01"));
        assert_eq!(
            build(&s, vec![blocker("cp-2")], &o).unwrap_err(),
            PlanError::PartialControlPlane("cp-2".into())
        );
        // A member also tagged worker is still a member: refused, never silently left out.
        o.extra_roles.insert("cp-2".into(), BTreeSet::from([Role::Worker]));
        assert_eq!(
            build(&s, vec![blocker("cp-2")], &o).unwrap_err(),
            PlanError::PartialControlPlane("cp-2".into())
        );
        o.extra_roles = BTreeMap::from([("cp-1".to_string(), BTreeSet::from([Role::Worker]))]);
        assert_eq!(
            build(&s, vec![blocker("cp-1")], &o).unwrap_err(),
            PlanError::PartialControlPlane("cp-1".into()),
            "a stacked etcd member tagged worker too"
        );
    }

    #[test]
    fn nodes_at_target_are_skipped_unless_forced_and_cp_only_stops_early() {
        let mut s = cluster(2);
        s.nodes[2].kubelet = "v1.37.1".into();
        let p = build(&s, vec![], &opts()).unwrap();
        assert!(p.excluded.contains(&("w-00".into(), Exclusion::AtTarget("1.37.1".parse().unwrap()))));
        let text: Vec<String> = p.excluded.iter().map(|(_, why)| why.to_string()).collect();
        assert!(text.contains(&"already at 1.37.1".to_string()), "{text:?}");
        let mut o = opts();
        o.force = true;
        assert!(build(&s, vec![], &o).unwrap().excluded.is_empty());
        let mut o = opts();
        o.control_plane_only = true;
        let p = build(&s, vec![], &o).unwrap();
        assert!(
            p.phases.iter().all(|ph| ph.kind != PhaseKind::Workers && ph.kind != PhaseKind::ClusterServices)
        );
        for n in &mut s.nodes {
            n.kubelet = "v1.37.1".into();
        }
        assert!(matches!(build(&s, vec![], &opts()), Err(PlanError::NothingToDo(_))));
    }

    #[test]
    fn max_unavailable_parsing() {
        assert_eq!("3".parse::<MaxUnavailable>(), Ok(MaxUnavailable::Count(3)));
        assert_eq!("10%".parse::<MaxUnavailable>(), Ok(MaxUnavailable::Percent(10)));
        for bad in ["0", "0%", "101%", "-1", "x", "", "10 %"] {
            assert!(bad.parse::<MaxUnavailable>().is_err(), "{bad}");
        }
        assert_eq!(MaxUnavailable::Percent(10).batch_size(100), 10);
        assert_eq!(MaxUnavailable::Percent(10).batch_size(5), 1, "at least one");
    }

    proptest! {
        /// Every non-excluded node appears in exactly one batch; no worker batch exceeds the
        /// limit; etcd and control-plane batches hold one unit.
        #[test]
        fn batches_partition_the_nodes(workers in 0usize..60, limit in 1u32..20, percent: bool) {
            let s = cluster(workers);
            let mut o = opts();
            o.max_unavailable = if percent { MaxUnavailable::Percent(limit * 5) } else { MaxUnavailable::Count(limit) };
            let p = build(&s, vec![], &o).unwrap();
            let mut seen = BTreeSet::new();
            for ph in &p.phases {
                for b in &ph.batches {
                    match ph.kind {
                        PhaseKind::Workers => prop_assert!(b.units.len() <= o.max_unavailable.batch_size(workers)),
                        _ => prop_assert_eq!(b.units.len(), 1),
                    }
                    for u in &b.units {
                        prop_assert!(seen.insert(u.node.clone()), "{} twice", u.node);
                    }
                }
            }
            prop_assert_eq!(seen.len(), workers + 2);
        }
    }
}
