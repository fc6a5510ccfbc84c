//! What a drain does with each pod on a node: exactly `kubectl drain`'s filters, because
//! operators know them (k8s.io/kubectl `pkg/drain/filters.go`, reference cluster-anchors §1).
//!
//! Filters run in kubectl's order and the first one that says "do not delete" decides:
//! 1. already terminating → skip (it is leaving by itself; the drain only waits for it);
//! 2. DaemonSet-managed → skip (the DaemonSet would recreate it on the same node; a terminal
//!    DaemonSet pod is deleted) — refit always behaves like `--ignore-daemonsets`;
//! 3. mirror pod (static pod) → skip;
//! 4. emptyDir volume, not terminal → refuse unless `delete_emptydir_data` (then evict, warned);
//! 5. no controller, not terminal → refuse unless `force` (then evict, warned: it will not
//!    come back).
//!
//! Everything else is evicted through the Eviction API. Like kubectl, any controller counts as
//! "replicated" (a single-replica Deployment passes here; availability is a separate check), and
//! hostPath or local PersistentVolumes are not drain blockers (they are safety findings).

use serde::Serialize;

use crate::remedy::Remedy;
use crate::snapshot::PodInfo;

/// Drain options, as kubectl names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DrainOptions {
    /// `--delete-emptydir-data`: evict pods with emptyDir volumes (their data is lost).
    pub delete_emptydir_data: bool,
    /// `--force`: evict pods that no controller will recreate.
    pub force: bool,
}

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skip {
    /// Already terminating.
    Terminating,
    /// Managed by a DaemonSet.
    DaemonSet,
    /// A static pod's mirror.
    Mirror,
}

/// Why a pod blocks the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Has emptyDir data and `delete_emptydir_data` is off.
    LocalStorage,
    /// Has no controller and `force` is off.
    Unmanaged,
}

impl Refusal {
    /// Why the pod is refused, in kubectl's words (the way out is [`Refusal::remedy`]).
    pub fn advice(self) -> &'static str {
        match self {
            Refusal::LocalStorage => "uses emptyDir: its data is lost when evicted",
            Refusal::Unmanaged => {
                "is not managed by a ReplicaSet, ReplicationController, Job, DaemonSet or StatefulSet: it will not come back"
            }
        }
    }

    /// The allowance that lets the drain go on.
    pub fn remedy(self) -> Remedy {
        match self {
            Refusal::LocalStorage => Remedy::DeleteEmptyDirData,
            Refusal::Unmanaged => Remedy::DeleteUnmanagedPods,
        }
    }
}

/// The decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Decision {
    /// Evict through the Eviction API (PDBs apply).
    Evict {
        /// What the operator should know (data loss, not coming back).
        warnings: Vec<String>,
    },
    /// Leave it.
    Skip {
        /// Why.
        reason: Skip,
    },
    /// The drain cannot proceed while this pod is here.
    Refuse {
        /// Why.
        reason: Refusal,
    },
}

/// Decides what draining does with `pod`.
pub fn decide(pod: &PodInfo, opts: DrainOptions) -> Decision {
    if pod.terminating {
        return Decision::Skip { reason: Skip::Terminating };
    }
    let terminal = pod.phase.is_terminal();
    if pod.owner.as_ref().is_some_and(|o| o.kind == "DaemonSet") {
        return if terminal {
            Decision::Evict { warnings: Vec::new() }
        } else {
            Decision::Skip { reason: Skip::DaemonSet }
        };
    }
    if pod.mirror {
        return Decision::Skip { reason: Skip::Mirror };
    }
    let mut warnings = Vec::new();
    if pod.has_empty_dir() && !terminal {
        if !opts.delete_emptydir_data {
            return Decision::Refuse { reason: Refusal::LocalStorage };
        }
        warnings.push(format!("{}: deleting emptyDir data", pod.key()));
    }
    if pod.owner.is_none() && !terminal {
        if !opts.force {
            return Decision::Refuse { reason: Refusal::Unmanaged };
        }
        warnings.push(format!("{}: not managed by a controller, it will not be recreated", pod.key()));
    }
    Decision::Evict { warnings }
}

/// The drain of one node, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeDrain {
    /// Pods to evict, with warnings.
    pub evict: Vec<(String, Vec<String>)>,
    /// Pods left alone, with the reason.
    pub skip: Vec<(String, Skip)>,
    /// Pods that block the drain, with the reason.
    pub refuse: Vec<(String, Refusal)>,
}

impl NodeDrain {
    /// Whether the drain can start at all (kubectl aborts a node before evicting anything when
    /// any pod is refused).
    pub fn can_start(&self) -> bool {
        self.refuse.is_empty()
    }
}

/// Applies [`decide`] to every pod bound to `node`.
pub fn plan_node<'a>(
    node: &str,
    pods: impl IntoIterator<Item = &'a PodInfo>,
    opts: DrainOptions,
) -> NodeDrain {
    let mut out = NodeDrain::default();
    for p in pods.into_iter().filter(|p| p.node.as_deref() == Some(node)) {
        match decide(p, opts) {
            Decision::Evict { warnings } => out.evict.push((p.key(), warnings)),
            Decision::Skip { reason } => out.skip.push((p.key(), reason)),
            Decision::Refuse { reason } => out.refuse.push((p.key(), reason)),
        }
    }
    out
}

/// The most evictions one node's drain keeps in flight (`--eviction-concurrency`). A node
/// holds at most a few hundred pods (110 by default); more permits than that change nothing,
/// and far more (past what a semaphore holds) used to panic.
pub const MAX_EVICTION_CONCURRENCY: usize = 1000;

/// Parses `--eviction-concurrency`: a whole number from 1 to [`MAX_EVICTION_CONCURRENCY`].
pub fn parse_eviction_concurrency(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_EVICTION_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {MAX_EVICTION_CONCURRENCY}")),
    }
}

/// What a drain run does: evict through the Eviction API, or (`--on-undrainable force`)
/// delete what is left, bypassing budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evictions, PDBs respected; any refused pod stops the drain before it starts.
    Evict,
    /// DELETEs, bypassing budgets (DaemonSet and mirror pods still stay). Pods the rules
    /// refuse stay refused: `--on-undrainable force` overrides budgets and timeouts, not
    /// `--delete-emptydir-data` or `--delete-unmanaged-pods`, which the operator gives on
    /// their own (force once deleted emptyDir and unmanaged pods silently).
    Delete,
}

/// What the drain does for one pod it has to see gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Evict it.
    Evict,
    /// Delete it.
    Delete,
    /// Already terminating: only wait for it.
    Await,
}

/// Every pod of one node sorted by what a drain run does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWork<'a> {
    /// Pods to see gone, with how, and whether the budget gate applies
    /// ([`PodInfo::consumes_disruption`]).
    pub work: Vec<(&'a PodInfo, Task)>,
    /// Pods left alone, with why (terminating pods are also in `work`, awaited).
    pub skipped: Vec<(&'a PodInfo, Skip)>,
    /// Pods that stop the drain before anything is evicted or deleted (in either mode).
    pub refused: Vec<(&'a PodInfo, Refusal)>,
    /// What the operator should know about pods that will go (data loss, not coming back).
    pub warnings: Vec<String>,
}

/// Applies [`decide`] to `pods` (one node's) for a drain in `mode`. Like kubectl, a drain with
/// any refused pod must evict or delete nothing: the caller checks `refused` first.
pub fn node_work<'a>(
    pods: impl IntoIterator<Item = &'a PodInfo>,
    opts: DrainOptions,
    mode: Mode,
) -> NodeWork<'a> {
    let mut out =
        NodeWork { work: Vec::new(), skipped: Vec::new(), refused: Vec::new(), warnings: Vec::new() };
    for p in pods {
        let task = match (decide(p, opts), mode) {
            (Decision::Evict { warnings }, _) => {
                out.warnings.extend(warnings);
                if mode == Mode::Evict { Task::Evict } else { Task::Delete }
            }
            (Decision::Skip { reason: Skip::Terminating }, _) => {
                out.skipped.push((p, Skip::Terminating));
                Task::Await
            }
            (Decision::Skip { reason }, _) => {
                out.skipped.push((p, reason));
                continue;
            }
            (Decision::Refuse { reason }, _) => {
                out.refused.push((p, reason));
                continue;
            }
        };
        out.work.push((p, task));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Phase;
    use crate::snapshot::build::pod;
    use proptest::prelude::*;

    const STRICT: DrainOptions = DrainOptions { delete_emptydir_data: false, force: false };
    const ALL: DrainOptions = DrainOptions { delete_emptydir_data: true, force: true };

    fn evicts(d: &Decision) -> bool {
        matches!(d, Decision::Evict { .. })
    }

    #[test]
    fn kubectl_filter_order() {
        let rs = pod("web-1").owned_by("ReplicaSet", "web-abc");
        assert_eq!(decide(&rs, STRICT), Decision::Evict { warnings: vec![] });
        let ds = pod("agent").owned_by("DaemonSet", "agent");
        assert_eq!(decide(&ds, ALL), Decision::Skip { reason: Skip::DaemonSet });
        assert!(
            evicts(&decide(&ds.clone().phase(Phase::Failed), STRICT)),
            "terminal DaemonSet pods are deleted"
        );
        let mirror = pod("kube-apiserver-cp").mirror().owned_by("Node", "cp");
        assert_eq!(decide(&mirror, ALL), Decision::Skip { reason: Skip::Mirror });
        let bare = pod("debug");
        assert_eq!(decide(&bare, STRICT), Decision::Refuse { reason: Refusal::Unmanaged });
        let Decision::Evict { warnings } = decide(&bare, DrainOptions { force: true, ..STRICT }) else {
            panic!()
        };
        assert!(warnings[0].contains("will not be recreated"));
        let cache = pod("cache-1").owned_by("ReplicaSet", "cache-x").empty_dir();
        assert_eq!(decide(&cache, STRICT), Decision::Refuse { reason: Refusal::LocalStorage });
        assert!(evicts(&decide(&cache, DrainOptions { delete_emptydir_data: true, ..STRICT })));
        // emptyDir is checked before "unmanaged", as in kubectl.
        assert_eq!(decide(&pod("x").empty_dir(), STRICT), Decision::Refuse { reason: Refusal::LocalStorage });
        // Terminal pods pass every filter.
        assert!(evicts(&decide(&pod("job-done").empty_dir().phase(Phase::Succeeded), STRICT)));
        // Terminating pods are waited for, not evicted.
        assert_eq!(decide(&bare.clone().terminating(), STRICT), Decision::Skip { reason: Skip::Terminating });
        // hostPath is not a kubectl drain blocker.
        assert!(evicts(&decide(&pod("logs").owned_by("ReplicaSet", "l").host_path("/var/log"), STRICT)));
    }

    #[test]
    fn node_plan_only_looks_at_its_node() {
        let pods = vec![
            pod("a").owned_by("ReplicaSet", "a"),
            pod("b").owned_by("DaemonSet", "b"),
            pod("c"),
            PodInfo { node: Some("w-2".into()), ..pod("d") },
        ];
        let plan = plan_node("w-1", &pods, STRICT);
        assert_eq!(plan.evict.len(), 1);
        assert_eq!(plan.skip, vec![("default/b".to_string(), Skip::DaemonSet)]);
        assert_eq!(plan.refuse, vec![("default/c".to_string(), Refusal::Unmanaged)]);
        assert!(!plan.can_start());
        assert!(plan_node("w-1", &pods, ALL).can_start());
    }

    #[test]
    fn force_deletes_past_budgets_but_never_widens_the_allowances() {
        let web = pod("web-1").owned_by("ReplicaSet", "web");
        let cache = pod("cache-1").owned_by("ReplicaSet", "cache").empty_dir();
        let bare = pod("debug");
        let pods = [web.clone(), cache.clone(), bare.clone()];
        let w = node_work(&pods, STRICT, Mode::Delete);
        assert_eq!(w.work.len(), 1, "only the replicated pod may be deleted");
        assert_eq!(w.work[0].1, Task::Delete);
        let refused: Vec<_> = w.refused.iter().map(|(p, r)| (p.name.as_str(), *r)).collect();
        assert_eq!(refused, [("cache-1", Refusal::LocalStorage), ("debug", Refusal::Unmanaged)]);
        // Their own flags allow them, in either mode.
        let w = node_work(&pods, ALL, Mode::Delete);
        assert!(w.refused.is_empty());
        assert_eq!(w.work.len(), 3);
        assert_eq!(w.warnings.len(), 2, "{:?}", w.warnings);
        let w = node_work(&pods, DrainOptions { delete_emptydir_data: true, ..STRICT }, Mode::Delete);
        assert_eq!(w.refused.len(), 1);
        assert_eq!(w.refused[0].1, Refusal::Unmanaged);
    }

    #[test]
    fn eviction_concurrency_is_bounded() {
        assert_eq!(parse_eviction_concurrency("16"), Ok(16));
        assert_eq!(parse_eviction_concurrency("1000"), Ok(1000));
        for bad in ["0", "1001", "-1", "", "x", "2305843009213693952", "99999999999999999999999"] {
            assert!(parse_eviction_concurrency(bad).unwrap_err().contains("1 to 1000"), "{bad}");
        }
    }

    proptest! {
        /// With every allowance on, nothing is ever refused; with none, nothing with emptyDir or
        /// without an owner is ever evicted unless it is terminal.
        #[test]
        fn allowances_are_monotonic(owner in 0u8..4, empty in any::<bool>(), mirror in any::<bool>(), terminating in any::<bool>(), phase in 0u8..4) {
            let mut p = pod("p");
            p.owner = match owner { 0 => None, 1 => Some(crate::snapshot::Owner { kind: "DaemonSet".into(), name: "d".into() }), 2 => Some(crate::snapshot::Owner { kind: "ReplicaSet".into(), name: "r".into() }), _ => Some(crate::snapshot::Owner { kind: "Job".into(), name: "j".into() }) };
            if empty { p = p.empty_dir(); }
            p.mirror = mirror;
            p.terminating = terminating;
            p.phase = [Phase::Pending, Phase::Running, Phase::Succeeded, Phase::Failed][phase as usize];
            let refused = matches!(decide(&p, ALL), Decision::Refuse { .. });
            prop_assert!(!refused);
            if let Decision::Evict { .. } = decide(&p, STRICT) {
                prop_assert!(p.phase.is_terminal() || (!p.has_empty_dir() && p.owner.is_some()));
            }
        }
    }
}
