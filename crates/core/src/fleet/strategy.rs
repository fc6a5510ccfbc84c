//! Update strategies: reusable templates of stages → groups → members, and their resolution
//! against the fleet into the frozen plan of one update run.
//!
//! Stages run one after another; the groups of a stage run in parallel; the members of a group
//! go one at a time unless `maxConcurrency` says otherwise. A group selects the members whose
//! update group is its name, or those matching its `memberSelector`; a stage's
//! `memberSelector` narrows every group of the stage, and a stage with a selector and no groups
//! has one implicit group named after the stage. The seed's stages file is accepted as it is:
//!
//! ```json
//! { "stages": [ { "name": "stage1", "groups": [ { "name": "group-1a" } ], "afterStageWaitInSeconds": 3600 } ] }
//! ```
//!
//! Limits follow Azure Fleet: `maxConcurrency` is a count or a percentage, resolved against the
//! scope's member count rounded down with a minimum of 1 (defaults: stage 50, group 1; the
//! stage value is a ceiling across its groups); `maxAllowedFailures` is a count or a percentage
//! resolved rounded up (default 0: the first failure fails the scope).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::gate::{GateSpec, MAX_DISPLAY_NAME};
use super::is_valid_name;

/// Default `maxConcurrency` of a stage (Azure's).
pub const DEFAULT_STAGE_CONCURRENCY: u32 = 50;
/// Default `maxConcurrency` of a group: one member at a time.
pub const DEFAULT_GROUP_CONCURRENCY: u32 = 1;
/// The most groups a stage may hold (Azure's limit).
pub const MAX_GROUPS_PER_STAGE: usize = 50;
/// Name of the single stage (and group) of a one-by-one run.
pub const ONE_BY_ONE: &str = "one-by-one";

/// A count or a percentage of a scope's members: `3` or `"25%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// So many members.
    Count(u32),
    /// This percentage of the scope's members.
    Percent(u32),
}

impl Limit {
    /// The limit for a scope of `n` members, rounding a percentage down (`up = false`, as for
    /// concurrency) or up (`up = true`, as for allowed failures).
    pub fn resolve(self, n: usize, up: bool) -> u32 {
        match self {
            Limit::Count(c) => c,
            Limit::Percent(p) => {
                let scaled = u64::from(p).saturating_mul(u64::try_from(n).unwrap_or(u64::MAX));
                let v = if up { scaled.div_ceil(100) } else { scaled / 100 };
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(c) => write!(f, "{c}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || format!("'{s}' is neither a count nor a percentage (write 3 or \"25%\")");
        match t.strip_suffix('%') {
            Some(p) => p.trim().parse().map(Limit::Percent).map_err(|_| bad()),
            None => t.parse().map(Limit::Count).map_err(|_| bad()),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Count(c) => s.serialize_u32(*c),
            Limit::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count (3) or a percentage (\"25%\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Limit, E> {
                u32::try_from(v).map(Limit::Count).map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Limit, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Limit, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Operators of a label selector expression (Kubernetes' set-based selectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SelectorOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelExpression {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: SelectorOperator,
    /// Values for In and NotIn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A Kubernetes-style label selector over fleet members. An empty selector selects every
/// member (as in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must equal these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpression>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let got = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => got.is_some_and(|v| e.values.contains(v)),
                    SelectorOperator::NotIn => got.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => got.is_some(),
                    SelectorOperator::DoesNotExist => got.is_none(),
                }
            })
    }

    fn check(&self, at: &str) -> Result<(), StrategyError> {
        let problem = |p: String| Err(StrategyError::Selector { at: at.to_string(), problem: p });
        if self.match_labels.keys().any(|k| k.trim().is_empty()) {
            return problem("a label key is empty".into());
        }
        for e in &self.match_expressions {
            if e.key.trim().is_empty() {
                return problem("an expression has an empty key".into());
            }
            match e.operator {
                SelectorOperator::In | SelectorOperator::NotIn if e.values.is_empty() => {
                    return problem(format!("{:?} on '{}' needs at least one value", e.operator, e.key));
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist if !e.values.is_empty() => {
                    return problem(format!("{:?} on '{}' takes no values", e.operator, e.key));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A group of a stage: its members update in parallel with the other groups of the stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    /// Group name; without a `memberSelector`, members whose update group has this name.
    pub name: String,
    /// Members by label instead of by update-group name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_selector: Option<LabelSelector>,
    /// Members updating at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<Limit>,
    /// Failures tolerated before the group fails (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allowed_failures: Option<Limit>,
    /// Gates before any member starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_gates: Vec<GateSpec>,
    /// Gates after every member is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_gates: Vec<GateSpec>,
}

/// A stage: its groups run in parallel; the next stage starts when it is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageSpec {
    /// Stage name.
    pub name: String,
    /// Its groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupSpec>,
    /// Narrows every group to matching members; with no groups, one implicit group of all
    /// matching members, named after the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_selector: Option<LabelSelector>,
    /// Members updating at once across all groups (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<Limit>,
    /// Member failures tolerated across the stage before it fails (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allowed_failures: Option<Limit>,
    /// Pause after the stage before the next one starts (runs alongside the after-gates).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub after_stage_wait_in_seconds: u64,
    /// Gates before the stage starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_gates: Vec<GateSpec>,
    /// Gates after every group is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_gates: Vec<GateSpec>,
    /// Health gates checked after the stage's members finish, before the next stage starts
    /// (alongside the after-gates and the wait): prometheus, http or command (a `workloads`
    /// gate judges one cluster's batch and is refused here). A hub takes prometheus and http
    /// only (its schema, `crate::schema`; [`Strategy::hub_refusal`] for what reaches it anyway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_gates: Vec<crate::health::HealthGateSpec>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl StageSpec {
    /// The stage's validated health gates (validated with the strategy, so an error here means
    /// the strategy was stored by an older refit).
    pub fn health_gates(&self) -> Result<Vec<crate::health::HealthGate>, crate::health::GateError> {
        crate::health::gate::resolve_all(&self.health_gates)
    }

    /// The groups, with the implicit group of a selector-only stage.
    pub fn effective_groups(&self) -> Vec<GroupSpec> {
        if self.groups.is_empty() && self.member_selector.is_some() {
            vec![GroupSpec {
                name: self.name.clone(),
                member_selector: Some(LabelSelector::default()),
                max_concurrency: None,
                max_allowed_failures: None,
                before_gates: vec![],
                after_gates: vec![],
            }]
        } else {
            self.groups.clone()
        }
    }
}

/// A strategy: stages in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Strategy {
    /// Its name, if the file gives one (the CLI may name it instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stages, run one after another.
    pub stages: Vec<StageSpec>,
}

/// Why a strategy (or its resolution against the fleet) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrategyError {
    /// Not YAML/JSON of the expected shape (unknown field, unknown gate type, wrong type).
    #[error("the strategy is not valid: {0} (refit formats strategy shows a complete one)")]
    Parse(String),
    /// No stages at all.
    #[error("the strategy has no stages: list at least one under stages:")]
    NoStages,
    /// A name that does not follow the pattern.
    #[error(
        "{kind} name '{name}' is not valid: use lowercase letters, digits and inner dashes, 1–50 characters (e.g. stage-1)"
    )]
    BadName {
        /// stage, group or strategy.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A name used twice.
    #[error("{kind} name '{name}' is used twice: {kind} names must be unique in a strategy")]
    Duplicate {
        /// stage or group.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A stage that selects nothing.
    #[error(
        "stage '{0}' has no groups: list groups (by update-group name or memberSelector), or give the stage a memberSelector"
    )]
    EmptyStage(String),
    /// Too many groups in a stage.
    #[error("stage '{stage}' has {count} groups: at most 50 are allowed; split it into more stages")]
    TooManyGroups {
        /// The stage.
        stage: String,
        /// How many.
        count: usize,
    },
    /// A limit out of range.
    #[error("{at} is {value}: {allowed}")]
    OutOfRange {
        /// Where (`stage 's' maxConcurrency`).
        at: String,
        /// What was written.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A group count above its stage's count.
    #[error(
        "group '{group}' maxConcurrency {group_value} exceeds its stage's maxConcurrency {stage_value}: lower the group's or raise the stage's"
    )]
    GroupAboveStage {
        /// The group.
        group: String,
        /// Its value.
        group_value: u32,
        /// The stage's.
        stage_value: u32,
    },
    /// A gate that is not allowed where it is.
    #[error("{at}: {problem}")]
    Gate {
        /// Where.
        at: String,
        /// What is wrong.
        problem: String,
    },
    /// A label selector that cannot match as written.
    #[error("{at} memberSelector: {problem}")]
    Selector {
        /// Where.
        at: String,
        /// What is wrong.
        problem: String,
    },
    /// Two fleet members with one name.
    #[error("fleet member '{0}' is listed twice")]
    DuplicateMember(String),
    /// A member selected by two groups.
    #[error(
        "member '{member}' is selected by both {first} and {second}: a member may belong to one group only; narrow the selectors or change its update group"
    )]
    SelectedTwice {
        /// The member.
        member: String,
        /// `stage/group` that selected it first.
        first: String,
        /// The other.
        second: String,
    },
}

impl Strategy {
    /// Why a hub cannot run this strategy, if it cannot: a `command` health gate would run a
    /// program in the controller for anyone allowed to write an UpdateStrategy. The hub's
    /// schema refuses one already; this is the rule the controller and `refit fleet --hub`
    /// apply to whatever reaches them anyway (an older CRD, a strategy written before).
    pub fn hub_refusal(&self) -> Option<StrategyError> {
        // Judged on the resolved gate, as a run would run it (not on the text of its type).
        // A gate that does not resolve is refused by the strategy's own validation.
        self.stages.iter().find_map(|stage| {
            let gate = stage.health_gates.iter().enumerate().find_map(|(i, g)| {
                let g = g.resolve(i).ok()?;
                matches!(g.check, crate::health::GateCheck::Command { .. }).then_some(g)
            })?;
            Some(StrategyError::Gate {
                at: format!("stage '{}' health gate '{}'", stage.name, gate.name),
                problem: "a hub takes prometheus and http health gates only (a command would run in the controller); check it with one of those, or run this fleet locally".into(),
            })
        })
    }

    /// Parses a strategy from YAML or JSON, then validates it.
    pub fn parse(text: &str) -> Result<Strategy, StrategyError> {
        // JSON is YAML: one reader, so JSON files get the same field-naming errors.
        const GATES: &str = "a list of gates, e.g. [{type: Approval, displayName: looks good}]";
        const HINTS: &crate::yaml::Hints = &[
            ("", "a mapping with stages (refit formats strategy)"),
            ("stages", "a list of stages, e.g. [{name: canary, groups: [{name: canary}]}]"),
            ("stages.groups", "a list of groups, e.g. [{name: wave-a}]"),
            ("stages.afterStageWaitInSeconds", "a whole number of seconds"),
            ("stages.beforeGates", GATES),
            ("stages.afterGates", GATES),
            (
                "stages.healthGates",
                "a list of health gates, e.g. [{type: prometheus, url: \"http://prom:9090\", query: \"up == 0\"}]",
            ),
            ("stages.groups.beforeGates", GATES),
            ("stages.groups.afterGates", GATES),
            ("stages.memberSelector", "{matchLabels: {KEY: VALUE}, matchExpressions: [...]}"),
            ("stages.groups.memberSelector", "{matchLabels: {KEY: VALUE}, matchExpressions: [...]}"),
        ];
        let s: Strategy = crate::yaml::from_str_hinted(text, HINTS).map_err(StrategyError::Parse)?;
        s.validate()?;
        Ok(s)
    }

    /// The strategy of a run with no strategy: every member, one at a time, in name order.
    pub fn one_by_one() -> Strategy {
        Strategy {
            name: None,
            stages: vec![StageSpec {
                name: ONE_BY_ONE.into(),
                groups: vec![],
                member_selector: Some(LabelSelector::default()),
                max_concurrency: Some(Limit::Count(1)),
                max_allowed_failures: None,
                after_stage_wait_in_seconds: 0,
                before_gates: vec![],
                after_gates: vec![],
                health_gates: vec![],
            }],
        }
    }

    /// Checks names, limits, gates and selectors.
    pub fn validate(&self) -> Result<(), StrategyError> {
        if let Some(n) = &self.name
            && !is_valid_name(n)
        {
            return Err(StrategyError::BadName { kind: "strategy", name: n.clone() });
        }
        if self.stages.is_empty() {
            return Err(StrategyError::NoStages);
        }
        let mut stages = BTreeSet::new();
        let mut groups = BTreeSet::new();
        for st in &self.stages {
            if !is_valid_name(&st.name) {
                return Err(StrategyError::BadName { kind: "stage", name: st.name.clone() });
            }
            if !stages.insert(st.name.as_str()) {
                return Err(StrategyError::Duplicate { kind: "stage", name: st.name.clone() });
            }
            if st.groups.is_empty() && st.member_selector.is_none() {
                return Err(StrategyError::EmptyStage(st.name.clone()));
            }
            if st.groups.len() > MAX_GROUPS_PER_STAGE {
                return Err(StrategyError::TooManyGroups { stage: st.name.clone(), count: st.groups.len() });
            }
            let at = format!("stage '{}'", st.name);
            check_limits(&at, st.max_concurrency, st.max_allowed_failures)?;
            // The wait is added to a clock when the stage ends: one range for every duration.
            if crate::duration::check_seconds_or_zero(st.after_stage_wait_in_seconds).is_err() {
                return Err(StrategyError::OutOfRange {
                    at: format!("{at} afterStageWaitInSeconds"),
                    value: st.after_stage_wait_in_seconds.to_string(),
                    allowed: "at most one year (31536000 seconds)",
                });
            }
            check_gates(&at, &st.before_gates, &st.after_gates)?;
            let health = crate::health::gate::resolve_all(&st.health_gates)
                .map_err(|e| StrategyError::Gate { at: at.clone(), problem: e.to_string() })?;
            if let Some(w) = health.iter().find(|g| g.check == crate::health::GateCheck::Workloads) {
                return Err(StrategyError::Gate {
                    at: at.clone(),
                    problem: format!(
                        "health gate '{}': a workloads gate judges the workloads one cluster's batch touched and means nothing after a fleet stage; put it in the members' plan file (gates:) or use a prometheus, http or command gate here",
                        w.name
                    ),
                });
            }
            if let Some(sel) = &st.member_selector {
                sel.check(&at)?;
            }
            for g in st.effective_groups() {
                if !is_valid_name(&g.name) {
                    return Err(StrategyError::BadName { kind: "group", name: g.name.clone() });
                }
                if !groups.insert(g.name.clone()) {
                    return Err(StrategyError::Duplicate { kind: "group", name: g.name.clone() });
                }
                let at = format!("group '{}' (stage '{}')", g.name, st.name);
                check_limits(&at, g.max_concurrency, g.max_allowed_failures)?;
                check_gates(&at, &g.before_gates, &g.after_gates)?;
                if let Some(sel) = &g.member_selector {
                    sel.check(&at)?;
                }
                if let (Some(Limit::Count(gv)), Some(Limit::Count(sv))) =
                    (g.max_concurrency, st.max_concurrency)
                    && gv > sv
                {
                    return Err(StrategyError::GroupAboveStage {
                        group: g.name.clone(),
                        group_value: gv,
                        stage_value: sv,
                    });
                }
            }
        }
        Ok(())
    }
}

fn check_limits(at: &str, concurrency: Option<Limit>, failures: Option<Limit>) -> Result<(), StrategyError> {
    match concurrency {
        Some(Limit::Count(0)) => {
            return Err(StrategyError::OutOfRange {
                at: format!("{at} maxConcurrency"),
                value: "0".into(),
                allowed: "at least 1 member must be able to update (or a percentage 1–100%)",
            });
        }
        Some(l @ Limit::Percent(p)) if !(1..=100).contains(&p) => {
            return Err(StrategyError::OutOfRange {
                at: format!("{at} maxConcurrency"),
                value: l.to_string(),
                allowed: "a percentage must be 1–100%",
            });
        }
        _ => {}
    }
    if let Some(l @ Limit::Percent(p)) = failures
        && p > 100
    {
        return Err(StrategyError::OutOfRange {
            at: format!("{at} maxAllowedFailures"),
            value: l.to_string(),
            allowed: "a percentage must be 0–100%",
        });
    }
    Ok(())
}

fn check_gates(at: &str, before: &[GateSpec], after: &[GateSpec]) -> Result<(), StrategyError> {
    let gate = |problem: String| Err(StrategyError::Gate { at: at.to_string(), problem });
    for g in before.iter().chain(after) {
        if let Some(n) = g.display_name()
            && (n.trim().is_empty() || n.chars().count() > MAX_DISPLAY_NAME)
        {
            return gate(format!("gate displayName must be 1–100 characters (got {})", n.chars().count()));
        }
    }
    if after.iter().any(|g| matches!(g, GateSpec::ScheduledStart { .. })) {
        return gate("a ScheduledStart gate is allowed only in beforeGates (it schedules a start)".into());
    }
    if before.iter().filter(|g| matches!(g, GateSpec::ScheduledStart { .. })).count() > 1 {
        return gate("at most one ScheduledStart gate per beforeGates".into());
    }
    Ok(())
}

/// A fleet member as strategy resolution sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetMember {
    /// Member name.
    pub name: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its update group (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_group: Option<String>,
}

/// A group of the plan: its members (in order) and resolved limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedGroup {
    /// Group name.
    pub name: String,
    /// Members, in name order.
    pub members: Vec<String>,
    /// Members updating at once (≥ 1, ≤ the stage's).
    pub max_concurrency: u32,
    /// Failures tolerated.
    pub max_allowed_failures: u32,
    /// Gates before.
    pub before_gates: Vec<GateSpec>,
    /// Gates after.
    pub after_gates: Vec<GateSpec>,
}

/// A stage of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStage {
    /// Stage name.
    pub name: String,
    /// Groups.
    pub groups: Vec<PlannedGroup>,
    /// Members updating at once across the stage.
    pub max_concurrency: u32,
    /// Member failures tolerated across the stage.
    pub max_allowed_failures: u32,
    /// Pause after the stage.
    pub after_stage_wait_in_seconds: u64,
    /// Gates before.
    pub before_gates: Vec<GateSpec>,
    /// Gates after.
    pub after_gates: Vec<GateSpec>,
    /// Health gates after its groups are done (validated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_gates: Vec<crate::health::HealthGate>,
}

/// A strategy resolved against the fleet: who is in which group, with numeric limits. Frozen
/// into a run when it starts, so later fleet changes never reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPlan {
    /// Stages in order.
    pub stages: Vec<PlannedStage>,
    /// Members no stage selects: reported, not updated (and not an error — KubeFleet failing
    /// the run for them is a known pain).
    pub unselected: Vec<String>,
}

impl RunPlan {
    /// Every planned member, in stage and group order.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().flat_map(|s| s.groups.iter().flat_map(|g| g.members.iter().map(String::as_str)))
    }
}

/// Resolves `strategy` against the fleet's `members`.
pub fn resolve(strategy: &Strategy, members: &[FleetMember]) -> Result<RunPlan, StrategyError> {
    strategy.validate()?;
    let mut sorted: Vec<&FleetMember> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some([a, _]) = sorted.windows(2).find(|w| matches!(w, [a, b] if a.name == b.name)) {
        return Err(StrategyError::DuplicateMember(a.name.clone()));
    }
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut stages = Vec::with_capacity(strategy.stages.len());
    for st in &strategy.stages {
        let in_stage = |m: &FleetMember| st.member_selector.as_ref().is_none_or(|s| s.matches(&m.labels));
        let mut groups = Vec::new();
        for g in st.effective_groups() {
            let chosen: Vec<String> = sorted
                .iter()
                .filter(|m| in_stage(m))
                .filter(|m| match &g.member_selector {
                    Some(sel) => sel.matches(&m.labels),
                    None => m.update_group.as_deref() == Some(g.name.as_str()),
                })
                .map(|m| m.name.clone())
                .collect();
            let here = format!("{}/{}", st.name, g.name);
            for m in &chosen {
                if let Some(first) = owner.insert(m.clone(), here.clone()) {
                    return Err(StrategyError::SelectedTwice { member: m.clone(), first, second: here });
                }
            }
            groups.push((g, chosen));
        }
        let stage_size: usize = groups.iter().map(|(_, m)| m.len()).sum();
        let stage_conc =
            st.max_concurrency.map_or(DEFAULT_STAGE_CONCURRENCY, |l| l.resolve(stage_size, false)).max(1);
        let stage_fail = st.max_allowed_failures.map_or(0, |l| l.resolve(stage_size, true));
        let groups = groups
            .into_iter()
            .map(|(g, members)| PlannedGroup {
                max_concurrency: g
                    .max_concurrency
                    .map_or(DEFAULT_GROUP_CONCURRENCY, |l| l.resolve(members.len(), false))
                    .clamp(1, stage_conc),
                max_allowed_failures: g.max_allowed_failures.map_or(0, |l| l.resolve(members.len(), true)),
                name: g.name,
                members,
                before_gates: g.before_gates,
                after_gates: g.after_gates,
            })
            .collect();
        stages.push(PlannedStage {
            name: st.name.clone(),
            groups,
            max_concurrency: stage_conc,
            max_allowed_failures: stage_fail,
            after_stage_wait_in_seconds: st.after_stage_wait_in_seconds,
            before_gates: st.before_gates.clone(),
            after_gates: st.after_gates.clone(),
            health_gates: st.health_gates().map_err(|e| StrategyError::Gate {
                at: format!("stage '{}'", st.name),
                problem: e.to_string(),
            })?,
        });
    }
    let unselected =
        sorted.iter().filter(|m| !owner.contains_key(m.name.as_str())).map(|m| m.name.clone()).collect();
    Ok(RunPlan { stages, unselected })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stages file of the seed (Azure's example-stages.json), verbatim.
    const SEED_STAGES: &str = r#"{ "stages": [ { "name": "stage1", "groups": [ { "name": "group-1a" }, { "name": "group-1b" }, { "name": "group-1c" } ], "afterStageWaitInSeconds": 3600 }, { "name": "stage2", "groups": [ { "name": "group-2a" }, { "name": "group-2b" }, { "name": "group-2c" } ] } ] }"#;

    fn member(name: &str, group: Option<&str>, labels: &[(&str, &str)]) -> FleetMember {
        FleetMember {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            update_group: group.map(str::to_string),
        }
    }

    #[test]
    fn the_seed_stages_file_parses_as_it_is() {
        let s = Strategy::parse(SEED_STAGES).unwrap();
        assert_eq!(s.stages.len(), 2);
        assert_eq!(s.stages[0].after_stage_wait_in_seconds, 3600);
        assert_eq!(
            s.stages[1].groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["group-2a", "group-2b", "group-2c"]
        );
        // The same file read as YAML (JSON is YAML) gives the same strategy.
        let yaml: Strategy = serde_saphyr::from_str(SEED_STAGES).unwrap();
        assert_eq!(yaml, s);
        // And it round-trips through JSON.
        let back = Strategy::parse(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn stages_carry_health_gates() {
        let s = Strategy::parse(
            "stages:\n  - name: canary\n    groups: [{name: canary}]\n    healthGates:\n      - {name: errors, type: prometheus, url: 'http://prom:9090', query: 'up == 0', soak: 5m, timeout: 30m}\n  - name: rest\n    groups: [{name: rest}]\n",
        )
        .unwrap();
        let gates = s.stages[0].health_gates().unwrap();
        assert_eq!(
            (gates[0].name.as_str(), gates[0].soak_seconds, gates[0].timeout_seconds),
            ("errors", 300, 1800)
        );
        assert!(s.stages[1].health_gates().unwrap().is_empty());
        let plan = resolve(&s, &[]).unwrap();
        assert_eq!(plan.stages[0].health_gates, gates);
        let back = Strategy::parse(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        for (bad, says) in [
            ("healthGates: [{type: pager}]", "stage 'canary': health gate 'pager-1': unknown type 'pager'"),
            ("healthGates: [{type: http, url: 'gopher://x'}]", "scheme must be http or https"),
            ("healthGates: [{type: http, url: 'http://x', soak: -10s}]", "negative"),
            ("healthGates: [{type: workloads}]", "health gate 'workloads-1': a workloads gate judges"),
            ("healthGates: [{type: prometheus, url: 'http://p:9090'}]", "needs query:"),
            ("healthGates: [{type: http, url: 'http://x', timeout: 9000h}]", "at most one year"),
        ] {
            let text = format!("stages:\n  - name: canary\n    groups: [{{name: canary}}]\n    {bad}\n");
            let e = Strategy::parse(&text).unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn a_hub_refuses_command_health_gates_and_takes_the_others() {
        let with = |gates: &str| {
            Strategy::parse(&format!(
                "stages:\n  - name: canary\n    groups: [{{name: canary}}]\n  - name: rest\n    groups: [{{name: rest}}]\n    healthGates: {gates}\n"
            ))
            .unwrap()
        };
        assert!(with("[]").hub_refusal().is_none());
        assert!(
            with("[{type: http, url: 'http://x'}, {type: prometheus, url: 'http://p', query: up}]")
                .hub_refusal()
                .is_none()
        );
        // Whatever spelling resolves to a command gate is one.
        let e = with("[{type: http, url: 'http://x'}, {type: ' command', command: [./smoke.sh]}]")
            .hub_refusal()
            .unwrap()
            .to_string();
        assert!(e.contains("health gate 'command-2'"), "{e}");
        let e = with("[{type: http, url: 'http://x'}, {name: smoke, type: command, command: [./smoke.sh]}]")
            .hub_refusal()
            .unwrap()
            .to_string();
        assert!(e.contains("stage 'rest' health gate 'smoke'") && e.contains("prometheus and http"), "{e}");
        assert!(!e.contains('\n') && !e.contains("--"), "one line, no flag: {e}");
    }

    #[test]
    fn a_full_yaml_strategy_parses() {
        let s = Strategy::parse(
            r#"
name: prod-rollout
stages:
  - name: canary
    memberSelector: {matchLabels: {ring: canary}}
    afterStageWaitInSeconds: 600
    afterGates: [{type: Approval, displayName: canary looks fine}]
  - name: prod
    maxConcurrency: "50%"
    maxAllowedFailures: 1
    beforeGates:
      - {type: ScheduledStart, startDay: Monday, startTime: "09:00", utcOffset: "+01:00"}
    groups:
      - name: eu
        maxConcurrency: 2
      - name: us
        memberSelector:
          matchExpressions: [{key: region, operator: In, values: [us-east, us-west]}]
        maxAllowedFailures: "10%"
"#,
        )
        .unwrap();
        assert_eq!(s.stages[1].max_concurrency, Some(Limit::Percent(50)));
        assert_eq!(s.stages[1].groups[0].max_concurrency, Some(Limit::Count(2)));
        assert_eq!(s.stages[1].groups[1].max_allowed_failures, Some(Limit::Percent(10)));
        assert_eq!(s.stages[0].effective_groups()[0].name, "canary");
    }

    #[test]
    fn bad_strategies_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("stages: []", "no stages"),
            ("stages: [{name: Stage1, groups: [{name: a}]}]", "stage name 'Stage1' is not valid"),
            (
                "stages: [{name: s, groups: [{name: a}]}, {name: s, groups: [{name: b}]}]",
                "stage name 's' is used twice",
            ),
            (
                "stages: [{name: s, groups: [{name: a}]}, {name: t, groups: [{name: a}]}]",
                "group name 'a' is used twice",
            ),
            (
                "stages: [{name: s, memberSelector: {}}, {name: t, groups: [{name: s}]}]",
                "group name 's' is used twice",
            ),
            ("stages: [{name: s}]", "stage 's' has no groups"),
            (
                "stages: [{name: s, groups: [{name: a, maxConcurrency: \"150%\"}]}]",
                "150%: a percentage must be 1–100%",
            ),
            ("stages: [{name: s, groups: [{name: a, maxConcurrency: 0}]}]", "maxConcurrency is 0"),
            (
                "stages: [{name: s, groups: [{name: a, maxConcurrency: \"x%\"}]}]",
                "neither a count nor a percentage",
            ),
            (
                "stages: [{name: s, maxAllowedFailures: \"101%\", groups: [{name: a}]}]",
                "maxAllowedFailures is 101%",
            ),
            (
                "stages: [{name: s, maxConcurrency: 2, groups: [{name: a, maxConcurrency: 3}]}]",
                "exceeds its stage's",
            ),
            ("stages: [{name: s, groups: [{name: a, beforeGates: [{type: Coffee}]}]}]", "Coffee"),
            (
                "stages: [{name: s, groups: [{name: a, afterGates: [{type: ScheduledStart, startDay: Monday, startTime: \"09:00\", utcOffset: \"+00:00\"}]}]}]",
                "only in beforeGates",
            ),
            (
                "stages: [{name: s, groups: [{name: a, beforeGates: [{type: Approval, displayName: \"\"}]}]}]",
                "displayName must be 1–100",
            ),
            (
                "stages: [{name: s, groups: [{name: a, memberSelector: {matchExpressions: [{key: k, operator: In}]}}]}]",
                "needs at least one value",
            ),
            (
                "stages: [{name: s, groups: [{name: a, memberSelector: {matchExpressions: [{key: k, operator: Exists, values: [x]}]}}]}]",
                "takes no values",
            ),
            ("stages: [{name: s, groups: [{name: a, colour: red}]}]", "colour"),
            ("stages: [{name: s, groups: [{name: a}], afterStageWait: 5}]", "afterStageWait"),
            ("{\"stages\": [{\"name\": \"s\", \"groups\": [], \"extra\": 1}]}", "extra"),
        ];
        for (text, want) in cases {
            let err = Strategy::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n  got: {err}\n  want: {want}");
        }
        let many: Vec<String> = (0..51).map(|i| format!("{{name: g{i}}}")).collect();
        let err =
            Strategy::parse(&format!("stages: [{{name: s, groups: [{}]}}]", many.join(","))).unwrap_err();
        assert_eq!(err, StrategyError::TooManyGroups { stage: "s".into(), count: 51 });
    }

    #[test]
    fn resolution_assigns_members_by_group_and_selector_and_reports_the_rest() {
        let s = Strategy::parse(SEED_STAGES).unwrap();
        let members = vec![
            member("c", Some("group-1a"), &[]),
            member("a", Some("group-1a"), &[]),
            member("b", Some("group-2c"), &[]),
            member("d", Some("elsewhere"), &[]),
            member("e", None, &[]),
        ];
        let plan = resolve(&s, &members).unwrap();
        assert_eq!(plan.stages[0].groups[0].members, ["a", "c"]);
        assert_eq!(plan.stages[0].groups[1].members, Vec::<String>::new());
        assert_eq!(plan.stages[1].groups[2].members, ["b"]);
        assert_eq!(plan.unselected, ["d", "e"]);
        assert_eq!(plan.stages[0].max_concurrency, DEFAULT_STAGE_CONCURRENCY);
        assert_eq!(plan.stages[0].groups[0].max_concurrency, 1);
        assert_eq!(plan.members().collect::<Vec<_>>(), ["a", "c", "b"]);

        let s = Strategy::parse(
            "stages:\n  - name: eu\n    memberSelector: {matchLabels: {region: eu}}\n    groups:\n      - {name: eu-a, memberSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [gold]}]}, maxConcurrency: \"50%\", maxAllowedFailures: \"10%\"}\n      - {name: gold}\n",
        )
        .unwrap();
        let members = vec![
            member("m1", None, &[("region", "eu")]),
            member("m2", None, &[("region", "eu"), ("tier", "silver")]),
            member("m3", Some("gold"), &[("region", "eu"), ("tier", "gold")]),
            member("m4", Some("gold"), &[("region", "us"), ("tier", "gold")]),
            member("m5", None, &[("region", "eu")]),
        ];
        let plan = resolve(&s, &members).unwrap();
        let g = &plan.stages[0].groups;
        assert_eq!(g[0].members, ["m1", "m2", "m5"]);
        assert_eq!(g[0].max_concurrency, 1); // 50% of 3, rounded down
        assert_eq!(g[0].max_allowed_failures, 1); // 10% of 3, rounded up
        assert_eq!(g[1].members, ["m3"]); // m4 is outside the stage's selector
        assert_eq!(plan.unselected, ["m4"]);
    }

    #[test]
    fn resolution_refuses_overlaps_and_duplicate_members() {
        let s = Strategy::parse(
            "stages:\n  - {name: a, memberSelector: {matchLabels: {env: prod}}}\n  - {name: b, memberSelector: {}}\n",
        )
        .unwrap();
        let err = resolve(&s, &[member("x", None, &[("env", "prod")])]).unwrap_err();
        assert_eq!(
            err,
            StrategyError::SelectedTwice { member: "x".into(), first: "a/a".into(), second: "b/b".into() }
        );
        let err =
            resolve(&Strategy::one_by_one(), &[member("x", None, &[]), member("x", None, &[])]).unwrap_err();
        assert_eq!(err, StrategyError::DuplicateMember("x".into()));
    }

    #[test]
    fn one_by_one_takes_every_member_in_name_order() {
        let plan =
            resolve(&Strategy::one_by_one(), &[member("b", Some("g"), &[]), member("a", None, &[])]).unwrap();
        assert_eq!(plan.stages.len(), 1);
        assert_eq!(plan.stages[0].groups[0].members, ["a", "b"]);
        assert_eq!(plan.stages[0].max_concurrency, 1);
        assert!(plan.unselected.is_empty());
    }

    #[test]
    fn limits_resolve_with_the_documented_rounding() {
        assert_eq!(Limit::Percent(25).resolve(10, false), 2);
        assert_eq!(Limit::Percent(25).resolve(10, true), 3);
        assert_eq!(Limit::Percent(10).resolve(0, true), 0);
        assert_eq!(Limit::Count(4).resolve(2, false), 4);
        assert_eq!("25%".parse::<Limit>().unwrap(), Limit::Percent(25));
        assert_eq!(serde_json::to_string(&[Limit::Count(3), Limit::Percent(25)]).unwrap(), r#"[3,"25%"]"#);
    }
}
