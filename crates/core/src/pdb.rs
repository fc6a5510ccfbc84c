//! PodDisruptionBudget feasibility: will the evictions a batch needs ever be allowed?
//!
//! kubectl learns that a drain cannot finish by retrying a 429 forever. Refit predicts it
//! before cordoning anything, from three facts per budget:
//! - its ceiling: `expectedPods - desiredHealthy` is the most disruptions it can ever allow
//!   (`minAvailable` equal to the replica count, or `maxUnavailable: 0`, makes it 0 for good);
//! - its health: unhealthy pods already eat the budget (`currentHealthy < desiredHealthy`
//!   leaves nothing to disrupt until they recover), unless the budget lets unhealthy pods be
//!   evicted anyway (`unhealthyPodEvictionPolicy: AlwaysAllow`);
//! - the batch: when every pod the budget covers sits on the nodes of one batch, the
//!   replacements can only come up elsewhere, one budget's worth at a time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::snapshot::PodInfo;

/// A label selector (`matchLabels` + `matchExpressions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// Exact labels.
    pub match_labels: BTreeMap<String, String>,
    /// Expressions.
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// Values for In/NotIn.
    pub values: Vec<String>,
}

impl Selector {
    /// The selector of a budget without one: a missing `policy/v1` selector selects no pods
    /// (unlike an empty one, which selects all), so it is a requirement nothing satisfies
    /// (`In` an empty set).
    pub fn nothing() -> Selector {
        Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: String::new(),
                operator: "In".into(),
                values: Vec::new(),
            }],
        }
    }

    /// Whether `labels` satisfy the selector. An empty selector matches everything (policy/v1).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| match r.operator.as_str() {
                "In" => labels.get(&r.key).is_some_and(|v| r.values.contains(v)),
                "NotIn" => labels.get(&r.key).is_none_or(|v| !r.values.contains(v)),
                "Exists" => labels.contains_key(&r.key),
                "DoesNotExist" => !labels.contains_key(&r.key),
                // An unknown operator matches nothing (the apiserver would have refused it).
                _ => false,
            })
    }
}

/// What the checks need from a PodDisruptionBudget (spec + the disruption controller's status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PdbInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its selector.
    pub selector: Selector,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
    /// `status.currentHealthy`.
    pub current_healthy: i32,
    /// `status.desiredHealthy`.
    pub desired_healthy: i32,
    /// `status.expectedPods`.
    pub expected_pods: i32,
    /// `spec.unhealthyPodEvictionPolicy == AlwaysAllow`.
    pub always_allow_unhealthy: bool,
}

impl PdbInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the budget covers `pod`.
    pub fn covers(&self, pod: &PodInfo) -> bool {
        self.covers_labels(&pod.namespace, &pod.labels)
    }

    /// Whether the budget covers a pod in `namespace` with `labels`: same namespace, and the
    /// selector matches. An empty `policy/v1` selector covers every pod of its namespace, for
    /// the disruption controller and for the eviction subresource alike (checked against the
    /// apiserver of every supported minor: `crates/kube/tests/pdb_selector.rs`).
    pub fn covers_labels(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.namespace && self.selector.matches(labels)
    }

    /// Why an eviction under this budget must wait, in the apiserver's terms.
    pub fn exhausted_reason(&self) -> String {
        format!(
            "the disruption budget {} allows no more disruptions now (needs {} healthy pods, has {})",
            self.name, self.desired_healthy, self.current_healthy
        )
    }

    /// The most disruptions this budget can ever allow with its current pod count.
    pub fn ceiling(&self) -> i32 {
        self.expected_pods.saturating_sub(self.desired_healthy).max(0)
    }
}

/// Whether a pod that uses up a disruption ([`PodInfo::consumes_disruption`]) may ask the
/// Eviction API now, given the budgets covering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Ask; no budget allowance is taken (no budget, or several: the apiserver answers those
    /// pods itself, and a fix of the budgets is then tried at once).
    Ask,
    /// Ask, taking one of the single covering budget's remaining disruptions.
    AskTakingOne,
    /// Wait for the budget to change: every disruption it allows was already handed out to
    /// other waiting pods since its last change.
    Wait,
}

/// The budget gate of a drain. A pod under exactly one budget asks only while that budget
/// allows more disruptions than were `granted` to other waiting pods since it last changed,
/// so a budget that allows `n` lets `n` pods try rather than every waiting pod collecting
/// another 429.
pub fn gate(covering: &[(&PdbInfo, i32)]) -> Gate {
    match covering {
        [(pdb, granted)] if pdb.disruptions_allowed.saturating_sub(*granted) > 0 => Gate::AskTakingOne,
        [_] => Gate::Wait,
        _ => Gate::Ask,
    }
}

/// Why a batch's drain will not finish, or will crawl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum PdbProblem {
    /// The budget can never allow a disruption (`minAvailable` = replicas, `maxUnavailable: 0`).
    NeverAllows {
        /// Covered pods the batch must evict.
        pods: Vec<String>,
    },
    /// Unhealthy pods have used up the budget; evictions wait until they recover.
    ExhaustedByUnhealthy {
        /// Healthy pods now.
        healthy: i32,
        /// Healthy pods the budget requires.
        required: i32,
        /// Covered pods the batch must evict.
        pods: Vec<String>,
    },
    /// Every pod the budget covers is on this batch's nodes: they leave one budget at a time
    /// and each replacement must become ready elsewhere first.
    AllInBatch {
        /// Covered pods.
        pods: Vec<String>,
        /// Disruptions the budget allows at a time.
        allowed: i32,
    },
}

impl PdbProblem {
    /// Whether the drain can never finish without intervention (versus merely slowing down).
    pub fn blocks(&self) -> bool {
        matches!(self, PdbProblem::NeverAllows { .. } | PdbProblem::ExhaustedByUnhealthy { .. })
    }
}

/// A finding about one budget for one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PdbFinding {
    /// The budget (`namespace/name`).
    pub pdb: String,
    /// What is wrong.
    pub problem: PdbProblem,
}

/// Which budgets may cover a pod, without testing every budget against every pod (30,000 pods
/// × 150 budgets is 4.5 million selector matches, the bulk of a large plan's time).
///
/// A budget with `matchLabels` can only cover pods that carry its first label, so it is filed
/// under (namespace, that key, that value); the rest (expressions only, or empty selectors)
/// are filed under their namespace and tried on every pod there. Candidates are then checked
/// with [`PdbInfo::covers`], so the answer is exactly the brute-force one.
pub struct PdbIndex<'a> {
    pdbs: &'a [PdbInfo],
    by_label: BTreeMap<(&'a str, &'a str, &'a str), Vec<usize>>,
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
}

impl<'a> PdbIndex<'a> {
    /// Files every budget.
    pub fn new(pdbs: &'a [PdbInfo]) -> PdbIndex<'a> {
        let mut by_label: BTreeMap<(&str, &str, &str), Vec<usize>> = BTreeMap::new();
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, pdb) in pdbs.iter().enumerate() {
            match pdb.selector.match_labels.iter().next() {
                Some((k, v)) => by_label.entry((&pdb.namespace, k, v)).or_default().push(i),
                None => by_namespace.entry(&pdb.namespace).or_default().push(i),
            }
        }
        PdbIndex { pdbs, by_label, by_namespace }
    }

    /// The budgets covering `pod`, as indices into the budgets, ascending.
    pub fn covering(&self, pod: &PodInfo) -> Vec<usize> {
        let mut out: Vec<usize> = pod
            .labels
            .iter()
            .filter_map(|(k, v)| self.by_label.get(&(pod.namespace.as_str(), k.as_str(), v.as_str())))
            .flatten()
            .chain(self.by_namespace.get(pod.namespace.as_str()).into_iter().flatten())
            .copied()
            .filter(|&i| self.pdbs.get(i).is_some_and(|b| b.covers(pod)))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// How many live (not terminating) pods each budget covers, in `pdbs` order. Computed once per
/// plan: per batch it would be budgets × pods × batches selector matches.
pub fn covered_counts(pdbs: &[PdbInfo], all_pods: &[PodInfo]) -> Vec<usize> {
    let index = PdbIndex::new(pdbs);
    let mut counts: Vec<usize> = vec![0; pdbs.len()];
    for p in all_pods.iter().filter(|p| !p.terminating) {
        for i in index.covering(p) {
            if let Some(c) = counts.get_mut(i) {
                *c = c.saturating_add(1);
            }
        }
    }
    counts
}

/// Checks every budget against the pods a batch of nodes must evict.
///
/// `evicted` are the pods the drain of the batch would evict (see [`crate::drain`]);
/// `all_pods` is every pod of the cluster (to see where the rest of a budget's pods are).
pub fn check_batch(pdbs: &[PdbInfo], evicted: &[&PodInfo], all_pods: &[PodInfo]) -> Vec<PdbFinding> {
    check_batch_counted(pdbs, evicted, &covered_counts(pdbs, all_pods))
}

/// [`check_batch`] with the coverage counts of [`covered_counts`] computed beforehand.
pub fn check_batch_counted(pdbs: &[PdbInfo], evicted: &[&PodInfo], covered: &[usize]) -> Vec<PdbFinding> {
    let index = PdbIndex::new(pdbs);
    let mut per_pdb: Vec<Vec<String>> = vec![Vec::new(); pdbs.len()];
    for p in evicted {
        for i in index.covering(p) {
            if let Some(pods) = per_pdb.get_mut(i) {
                pods.push(p.key());
            }
        }
    }
    let mut out = Vec::new();
    for ((i, pdb), mut pods) in pdbs.iter().enumerate().zip(per_pdb) {
        if pods.is_empty() {
            continue;
        }
        pods.sort();
        if pdb.ceiling() == 0 {
            out.push(PdbFinding { pdb: pdb.key(), problem: PdbProblem::NeverAllows { pods } });
            continue;
        }
        // The ceiling is above zero, so a healthy count at or below the requirement means
        // pods the budget expects are unhealthy and hold the budget at zero.
        if pdb.disruptions_allowed == 0
            && pdb.current_healthy <= pdb.desired_healthy
            && !pdb.always_allow_unhealthy
        {
            out.push(PdbFinding {
                pdb: pdb.key(),
                problem: PdbProblem::ExhaustedByUnhealthy {
                    healthy: pdb.current_healthy,
                    required: pdb.desired_healthy,
                    pods,
                },
            });
            continue;
        }
        let covered_total = covered.get(i).copied().unwrap_or(0);
        if covered_total > 1 && pods.len() == covered_total {
            out.push(PdbFinding {
                pdb: pdb.key(),
                problem: PdbProblem::AllInBatch { pods, allowed: pdb.disruptions_allowed },
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::build::{budget, pod};
    use proptest::prelude::*;

    fn labelled(name: &str, app: &str, node: &str) -> PodInfo {
        let mut p = pod(name).owned_by("ReplicaSet", app);
        p.labels.insert("app".into(), app.into());
        p.node = Some(node.into());
        p
    }

    #[test]
    fn the_gate_lets_through_as_many_pods_as_the_budget_allows() {
        let two = budget("web", 3, 1, 3);
        assert_eq!(two.disruptions_allowed, 2);
        assert_eq!(gate(&[]), Gate::Ask, "no budget: ask");
        assert_eq!(gate(&[(&two, 0)]), Gate::AskTakingOne);
        assert_eq!(gate(&[(&two, 1)]), Gate::AskTakingOne);
        assert_eq!(gate(&[(&two, 2)]), Gate::Wait, "two allowed, two granted");
        let none = budget("db", 3, 3, 3);
        assert_eq!(gate(&[(&none, 0)]), Gate::Wait);
        assert_eq!(gate(&[(&none, 0), (&two, 0)]), Gate::Ask, "several budgets: the apiserver decides");
        assert!(
            none.exhausted_reason().contains("needs 3 healthy pods, has 3"),
            "{}",
            none.exhausted_reason()
        );
    }

    #[test]
    fn an_empty_selector_covers_every_pod_of_its_namespace() {
        let mut all = budget("all", 1, 1, 1);
        all.selector = Selector::default();
        let p = labelled("x-0", "x", "w-1");
        assert!(all.covers(&p));
        assert!(all.covers(&pod("bare")));
        all.selector = Selector::nothing();
        assert!(!all.covers(&p) && !all.covers(&pod("bare")), "a missing selector covers nothing");
        all.namespace = "elsewhere".into();
        assert!(!all.covers(&p));
    }

    #[test]
    fn selectors() {
        let labels =
            BTreeMap::from([("app".to_string(), "web".to_string()), ("tier".to_string(), "fe".to_string())]);
        let req = |op: &str, vals: &[&str]| Requirement {
            key: "tier".into(),
            operator: op.into(),
            values: vals.iter().map(|v| v.to_string()).collect(),
        };
        assert!(Selector::default().matches(&labels), "empty selects all");
        assert!(
            Selector { match_expressions: vec![req("In", &["fe", "be"])], ..Default::default() }
                .matches(&labels)
        );
        assert!(
            !Selector { match_expressions: vec![req("NotIn", &["fe"])], ..Default::default() }
                .matches(&labels)
        );
        assert!(
            Selector { match_expressions: vec![req("Exists", &[])], ..Default::default() }.matches(&labels)
        );
        assert!(
            !Selector { match_expressions: vec![req("DoesNotExist", &[])], ..Default::default() }
                .matches(&labels)
        );
        assert!(
            !Selector { match_expressions: vec![req("Bogus", &[])], ..Default::default() }.matches(&labels)
        );
    }

    #[test]
    fn a_budget_that_can_never_allow_a_disruption_blocks() {
        let pods =
            vec![labelled("db-0", "db", "w-1"), labelled("db-1", "db", "w-2"), labelled("db-2", "db", "w-3")];
        let pdb = budget("db", 3, 3, 3); // minAvailable: 3 of 3
        let f = check_batch(&[pdb], &[&pods[0]], &pods);
        assert!(matches!(&f[0].problem, PdbProblem::NeverAllows { pods } if pods == &["default/db-0"]));
        assert!(f[0].problem.blocks());
    }

    #[test]
    fn unhealthy_pods_eating_the_budget_block_unless_always_allow() {
        let pods = vec![
            labelled("api-0", "api", "w-1"),
            labelled("api-1", "api", "w-2"),
            labelled("api-2", "api", "w-3"),
        ];
        let mut pdb = budget("api", 3, 2, 2); // one unhealthy, maxUnavailable 1 used up
        let f = check_batch(std::slice::from_ref(&pdb), &[&pods[0]], &pods);
        assert!(matches!(f[0].problem, PdbProblem::ExhaustedByUnhealthy { healthy: 2, required: 2, .. }));
        pdb.always_allow_unhealthy = true;
        assert!(check_batch(&[pdb], &[&pods[0]], &pods).is_empty());
    }

    #[test]
    fn every_replica_in_one_batch_is_reported_but_does_not_block() {
        let pods = vec![
            labelled("web-0", "web", "w-1"),
            labelled("web-1", "web", "w-1"),
            labelled("other", "x", "w-1"),
        ];
        let pdb = budget("web", 2, 1, 2);
        let evicted: Vec<&PodInfo> = pods.iter().collect();
        let f = check_batch(&[pdb], &evicted, &pods);
        assert_eq!(f.len(), 1);
        assert!(matches!(&f[0].problem, PdbProblem::AllInBatch { allowed: 1, .. }));
        assert!(!f[0].problem.blocks());
    }

    #[test]
    fn a_healthy_budget_with_room_is_fine_and_other_namespaces_are_ignored() {
        let pods = vec![labelled("web-0", "web", "w-1"), labelled("web-1", "web", "w-2")];
        assert!(check_batch(&[budget("web", 2, 1, 2)], &[&pods[0]], &pods).is_empty());
        let mut other = budget("web", 2, 2, 2);
        other.namespace = "elsewhere".into();
        assert!(check_batch(&[other], &[&pods[0]], &pods).is_empty());
    }

    fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop::sample::select(vec!["app", "tier", "team"]).prop_map(String::from),
            prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
            0..3,
        )
    }

    fn arb_selector() -> impl Strategy<Value = Selector> {
        let req = (
            prop::sample::select(vec!["app", "tier", "team"]),
            prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Bogus"]),
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..3),
        )
            .prop_map(|(k, op, vals)| Requirement {
                key: k.into(),
                operator: op.into(),
                values: vals.into_iter().map(String::from).collect(),
            });
        (arb_labels(), prop::collection::vec(req, 0..2))
            .prop_map(|(match_labels, match_expressions)| Selector { match_labels, match_expressions })
    }

    proptest! {
        /// The index finds exactly the budgets a brute-force match finds, for every pod.
        #[test]
        fn the_index_equals_matching_every_budget_against_every_pod(
            selectors in prop::collection::vec((arb_selector(), prop::bool::ANY), 0..8),
            pods in prop::collection::vec((arb_labels(), prop::bool::ANY, prop::bool::ANY), 0..12),
        ) {
            let pdbs: Vec<PdbInfo> = selectors.into_iter().enumerate().map(|(i, (selector, other_ns))| {
                let mut b = budget(&format!("b{i}"), 2, 1, 2);
                b.selector = selector;
                if other_ns { b.namespace = "other".into(); }
                b
            }).collect();
            let pods: Vec<PodInfo> = pods.into_iter().enumerate().map(|(i, (labels, other_ns, terminating))| {
                let mut p = labelled(&format!("p{i}"), "x", "w-1");
                p.labels = labels;
                p.terminating = terminating;
                if other_ns { p.namespace = "other".into(); }
                p
            }).collect();
            let index = PdbIndex::new(&pdbs);
            for p in &pods {
                let brute: Vec<usize> = (0..pdbs.len()).filter(|&i| pdbs[i].covers(p)).collect();
                prop_assert_eq!(index.covering(p), brute);
            }
            let brute_counts: Vec<usize> = pdbs.iter()
                .map(|b| pods.iter().filter(|p| b.covers(p) && !p.terminating).count()).collect();
            prop_assert_eq!(covered_counts(&pdbs, &pods), brute_counts);
        }

        /// A budget whose ceiling is zero always blocks a batch that evicts one of its pods;
        /// a budget with room and all pods healthy never blocks.
        #[test]
        fn ceiling_decides_blocking(expected in 1i32..10, desired in 0i32..12) {
            let pods: Vec<PodInfo> = (0..expected).map(|i| labelled(&format!("p-{i}"), "app", &format!("w-{i}"))).collect();
            let pdb = budget("app", expected, desired.min(expected), expected);
            let f = check_batch(std::slice::from_ref(&pdb), &[&pods[0]], &pods);
            let blocks = f.iter().any(|f| f.problem.blocks());
            prop_assert_eq!(blocks, pdb.ceiling() == 0);
        }
    }
}
