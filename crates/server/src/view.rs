//! Pure projections of stored state into what the API and the dashboard show: a cluster run's
//! per-node timeline (cordon, drain, upgrade, validate, uncordon with their times), the current
//! blocker of each node (pod and PodDisruptionBudget) and the run's ETA, folded from the run's
//! journal in order. No I/O: the journal and the frozen schedule come in, a value goes out.

use std::collections::BTreeMap;

use jiff::Timestamp;
use refit_core::event::{Event, UnitEnd};
use refit_core::run::{Schedule, step_name};
use refit_store::RunRow;
use refit_store::notify::JournalEntry;
use serde::{Deserialize, Serialize};

/// The store's clock (`seconds.nanoseconds` since the Unix epoch) as an instant.
pub fn store_time(s: &str) -> Option<Timestamp> {
    let (secs, nanos) = s.split_once('.').unwrap_or((s, "0"));
    let secs: i64 = secs.parse().ok()?;
    let nanos: i32 = nanos.parse().ok()?;
    Timestamp::new(secs, nanos).ok()
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepProgress {
    /// Not begun.
    Pending,
    /// Under way.
    Started,
    /// Done.
    Done,
    /// Failed.
    Failed,
}

/// One step of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// cordon, drain, upgrade, validate, uncordon, remove.
    pub step: String,
    /// Where it stands.
    pub state: StepProgress,
    /// When it (last) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// How long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
    /// What it did or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What holds a drain back right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blocker {
    /// namespace/name of the pod.
    pub pod: String,
    /// namespace/name of the PodDisruptionBudget, when one is the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdb: Option<String>,
    /// The reason as the API server gave it.
    pub reason: String,
    /// When it was first reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

/// One node (or etcd host) in one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node.
    pub node: String,
    /// Its stage (index in the schedule).
    pub stage: usize,
    /// The version this stage moves it to.
    pub to: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its steps in order.
    pub steps: Vec<StepView>,
    /// How it ended in the latest invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<UnitEnd>,
    /// Time spent on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
    /// What holds its drain back now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocker: Option<Blocker>,
    /// The node action's last line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_output: Option<String>,
}

/// A stage of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageView {
    /// etcd, control-plane, workers.
    pub phase: String,
    /// Its version.
    pub to: String,
    /// Units at once.
    pub concurrency: usize,
    /// Units in it.
    pub units: usize,
}

/// A cluster run as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRunView {
    /// Run id.
    pub id: String,
    /// Cluster (context or member name).
    pub cluster: String,
    /// Target version.
    pub target: String,
    /// running, completed, failed, interrupted, paused, abandoned.
    pub state: String,
    /// The first journal entry's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The last journal entry's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    /// The stages.
    pub stages: Vec<StageView>,
    /// The stage under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<usize>,
    /// Every node of every stage.
    pub nodes: Vec<NodeView>,
    /// Seconds left (core's estimate: mean unit time × rounds left), once a unit finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Why it ended, when it did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Warnings, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Cluster-services progress lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_services: Vec<String>,
}

impl StepView {
    fn pending(step: &str) -> StepView {
        StepView {
            step: step.to_string(),
            state: StepProgress::Pending,
            started_at: None,
            millis: None,
            detail: None,
        }
    }
}

impl NodeView {
    fn new(node: &str, stage: usize, to: &str) -> NodeView {
        NodeView {
            node: node.to_string(),
            stage,
            to: to.to_string(),
            roles: Vec::new(),
            steps: Vec::new(),
            result: None,
            millis: None,
            blocker: None,
            last_output: None,
        }
    }
}

impl ClusterRunView {
    /// Nodes whose drain is held back right now.
    pub fn blocked(&self) -> impl Iterator<Item = (&NodeView, &Blocker)> {
        self.nodes.iter().filter_map(|n| n.blocker.as_ref().map(|b| (n, b)))
    }
}

#[derive(Deserialize)]
struct SpecSchedule {
    schedule: Schedule,
}

/// Folds a cluster run's journal into its view. A spec that does not parse (a newer refit
/// wrote it) still gives the nodes the journal names, in the order it names them.
pub fn cluster_run(row: &RunRow, journal: &[JournalEntry]) -> ClusterRunView {
    let schedule = serde_json::from_str::<SpecSchedule>(&row.spec).ok().map(|s| s.schedule);
    let mut stages = Vec::new();
    let mut nodes: Vec<NodeView> = Vec::new();
    if let Some(s) = &schedule {
        for (i, stage) in s.stages.iter().enumerate() {
            stages.push(StageView {
                phase: refit_core::run::phase_name(stage.phase).to_string(),
                to: stage.to.to_string(),
                concurrency: stage.concurrency,
                units: stage.units.len(),
            });
            for u in &stage.units {
                let mut n = NodeView::new(&u.node, i, &u.to.to_string());
                n.roles = u.role_list();
                n.steps = u.steps.iter().map(|s| StepView::pending(step_name(*s))).collect();
                nodes.push(n);
            }
        }
    }
    let mut index: BTreeMap<(String, String), usize> =
        nodes.iter().enumerate().map(|(i, n)| ((n.node.clone(), n.to.clone()), i)).collect();
    // The newest entry of a node whatever its version (events without a version: blocked,
    // action output).
    let mut latest: BTreeMap<String, usize> = BTreeMap::new();
    let mut view = ClusterRunView {
        id: row.id.clone(),
        cluster: row.cluster.clone(),
        target: row.target.clone(),
        state: row.state.clone(),
        started_at: journal.first().and_then(|e| store_time(&e.at)),
        updated_at: journal.last().and_then(|e| store_time(&e.at)),
        stages,
        current_stage: None,
        nodes: Vec::new(),
        eta_seconds: None,
        reason: None,
        warnings: Vec::new(),
        cluster_services: Vec::new(),
    };
    for entry in journal {
        let Ok(event) = serde_json::from_str::<Event>(&entry.body) else { continue };
        let at = store_time(&entry.at);
        match event {
            Event::StageStarted { stage, .. } => view.current_stage = Some(stage),
            Event::StepStarted { node, step, to } => {
                let i = slot(&mut nodes, &mut index, &mut latest, &node, &to);
                if let Some(n) = nodes.get_mut(i) {
                    let s = step_mut(n, &step);
                    s.state = StepProgress::Started;
                    s.started_at = at;
                    s.millis = None;
                    s.detail = None;
                    if step == "drain" {
                        n.blocker = None;
                    }
                }
            }
            Event::StepDone { node, step, to, millis, detail } => {
                let i = slot(&mut nodes, &mut index, &mut latest, &node, &to);
                if let Some(n) = nodes.get_mut(i) {
                    let s = step_mut(n, &step);
                    s.state = StepProgress::Done;
                    s.millis = Some(millis);
                    s.detail = (!detail.is_empty()).then_some(detail);
                    if step == "drain" {
                        n.blocker = None;
                    }
                }
            }
            Event::StepFailed { node, step, to, error, .. } => {
                let i = slot(&mut nodes, &mut index, &mut latest, &node, &to);
                if let Some(n) = nodes.get_mut(i) {
                    let s = step_mut(n, &step);
                    s.state = StepProgress::Failed;
                    s.detail = Some(error);
                    n.blocker = None;
                }
            }
            Event::Blocked { node, pod, pdb, reason, remedy: _ } => {
                // The node's newest entry; one the journal never named gets one at the target.
                let i = match latest.get(&node).copied().or_else(|| nodes.iter().position(|n| n.node == node))
                {
                    Some(i) => i,
                    None => slot(&mut nodes, &mut index, &mut latest, &node, &row.target),
                };
                if let Some(n) = nodes.get_mut(i) {
                    let since = match &n.blocker {
                        Some(b) if b.pod == pod => b.since,
                        _ => at,
                    };
                    n.blocker = Some(Blocker { pod, pdb, reason, since });
                }
            }
            Event::UnitSkipped { node, to, reason } => {
                let i = slot(&mut nodes, &mut index, &mut latest, &node, &to);
                if let Some(n) = nodes.get_mut(i) {
                    n.result = Some(UnitEnd::Skipped);
                    n.last_output = Some(reason);
                }
            }
            Event::UnitFinished { node, to, result, millis } => {
                let i = slot(&mut nodes, &mut index, &mut latest, &node, &to);
                if let Some(n) = nodes.get_mut(i) {
                    n.result = Some(result);
                    n.millis = Some(millis);
                    n.blocker = None;
                }
            }
            Event::ActionOutput { node, line } => {
                if let Some(n) = latest.get(&node).and_then(|i| nodes.get_mut(*i)) {
                    n.last_output = Some(line);
                }
            }
            Event::LeftCordoned { node, reason } => {
                if let Some(n) = latest.get(&node).and_then(|i| nodes.get_mut(*i)) {
                    n.last_output = Some(format!("left cordoned: {reason}"));
                }
            }
            Event::Warning { message } => view.warnings.push(message),
            Event::BatchHeld { reason, .. } => {
                view.warnings.push(format!("no worker batch can start: {reason}"))
            }
            // Its nodes show up as their steps start.
            Event::BatchChosen { .. } => {}
            Event::ClusterService { addon, detail } => {
                view.cluster_services.push(format!("{addon}: {detail}"))
            }
            Event::RunStarted { .. } => {
                // A resumed invocation: nodes under way were interrupted, what finished stays.
                view.reason = None;
                for n in &mut nodes {
                    n.blocker = None;
                    if matches!(n.result, Some(UnitEnd::NotStarted | UnitEnd::Interrupted | UnitEnd::Failed))
                    {
                        n.result = None;
                    }
                }
            }
            Event::RunFinished { reason, .. } => {
                view.reason = reason;
                for n in &mut nodes {
                    n.blocker = None;
                }
            }
            // The summary and a blocked plan are what a fleet driver reads from `-o json`; the
            // journal's own records above already say the same.
            Event::Gate { gate, state: refit_core::event::GateState::Failed, reason } => {
                view.warnings.push(format!("health gate {gate} failed: {reason}"))
            }
            Event::Gate { .. }
            | Event::Evicted { .. }
            | Event::Backup { .. }
            | Event::Summary { .. }
            | Event::PlanBlocked { .. } => {}
        }
    }
    if view.state == "running" {
        let finished: Vec<std::time::Duration> = nodes
            .iter()
            .filter(|n| n.result == Some(UnitEnd::Upgraded))
            .filter_map(|n| n.millis.map(std::time::Duration::from_millis))
            .collect();
        let remaining = nodes.iter().filter(|n| n.result.is_none()).count();
        let concurrency =
            view.current_stage.and_then(|i| view.stages.get(i)).map(|s| s.concurrency).unwrap_or(1);
        view.eta_seconds = refit_core::run::eta(&finished, remaining, concurrency).map(|d| d.as_secs());
    }
    view.nodes = nodes;
    view
}

/// The view of `node` at `to` (added when the schedule did not list it), noted as the node's
/// newest.
fn slot(
    nodes: &mut Vec<NodeView>,
    index: &mut BTreeMap<(String, String), usize>,
    latest: &mut BTreeMap<String, usize>,
    node: &str,
    to: &str,
) -> usize {
    let key = (node.to_string(), to.to_string());
    let i = match index.get(&key) {
        Some(i) => *i,
        None => {
            nodes.push(NodeView::new(node, 0, to));
            let i = nodes.len().saturating_sub(1);
            index.insert(key, i);
            i
        }
    };
    latest.insert(node.to_string(), i);
    i
}

fn step_mut<'a>(n: &'a mut NodeView, step: &str) -> &'a mut StepView {
    let i = match n.steps.iter().position(|s| s.step == step) {
        Some(i) => i,
        None => {
            n.steps.push(StepView::pending(step));
            n.steps.len().saturating_sub(1)
        }
    };
    // `i` is a valid index: found above, or the element just pushed.
    #[allow(clippy::indexing_slicing)]
    &mut n.steps[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, secs: i64, body: serde_json::Value) -> JournalEntry {
        JournalEntry { seq, run: "up-1".into(), at: format!("{secs}.000000000"), body: body.to_string() }
    }

    fn row(state: &str) -> RunRow {
        RunRow {
            id: "up-1".into(),
            cluster: "c".into(),
            target: "1.37.1".into(),
            state: state.into(),
            spec: "{}".into(),
        }
    }

    #[test]
    fn store_times_are_seconds_and_nanoseconds() {
        assert_eq!(store_time("1700000000.500000000").unwrap().as_millisecond(), 1_700_000_000_500);
        assert_eq!(store_time("12").unwrap().as_second(), 12);
        assert!(store_time("x.1").is_none());
    }

    #[test]
    fn a_blocked_drain_names_pod_and_budget_until_the_drain_ends() {
        let j = vec![
            entry(
                1,
                100,
                serde_json::json!({"event":"stage-started","stage":0,"phase":"workers","to":"1.37.1","units":2,"concurrency":1}),
            ),
            entry(
                2,
                101,
                serde_json::json!({"event":"step-started","node":"w-1","step":"cordon","to":"1.37.1"}),
            ),
            entry(
                3,
                102,
                serde_json::json!({"event":"step-done","node":"w-1","step":"cordon","to":"1.37.1","millis":40,"detail":""}),
            ),
            entry(
                4,
                103,
                serde_json::json!({"event":"step-started","node":"w-1","step":"drain","to":"1.37.1"}),
            ),
            entry(
                5,
                104,
                serde_json::json!({"event":"blocked","node":"w-1","pod":"shop/web-1","pdb":"shop/web","reason":"would violate"}),
            ),
            entry(
                6,
                106,
                serde_json::json!({"event":"blocked","node":"w-1","pod":"shop/web-1","pdb":"shop/web","reason":"would violate"}),
            ),
        ];
        let v = cluster_run(&row("running"), &j);
        let n = &v.nodes[0];
        let b = n.blocker.as_ref().unwrap();
        assert_eq!((b.pod.as_str(), b.pdb.as_deref()), ("shop/web-1", Some("shop/web")));
        assert_eq!(b.since.unwrap().as_second(), 104, "first reported, not last");
        assert_eq!(n.steps[0].state, StepProgress::Done);
        assert_eq!(n.steps[1].state, StepProgress::Started);
        assert_eq!(v.blocked().count(), 1);
        assert_eq!(v.current_stage, Some(0));
        assert_eq!(v.eta_seconds, None, "no unit finished yet");

        let mut j2 = j.clone();
        j2.push(entry(7, 110, serde_json::json!({"event":"step-done","node":"w-1","step":"drain","to":"1.37.1","millis":7000,"detail":"evicted 3 pods"})));
        let v = cluster_run(&row("running"), &j2);
        assert!(v.nodes[0].blocker.is_none());
        assert_eq!(v.nodes[0].steps[1].detail.as_deref(), Some("evicted 3 pods"));
    }

    #[test]
    fn the_eta_follows_finished_units_and_the_schedule() {
        let spec = serde_json::json!({"schedule": {
            "target": "1.37.1", "cluster_services": false, "excluded": [],
            "stages": [{"phase": "workers", "to": "1.37.1", "concurrency": 1, "units": [
                {"node": "w-1", "roles": ["worker"], "from": "1.36.4", "to": "1.37.1", "steps": ["cordon","drain","upgrade","validate","uncordon"], "external": false, "first_control_plane": false},
                {"node": "w-2", "roles": ["worker"], "from": "1.36.4", "to": "1.37.1", "steps": ["cordon","drain","upgrade","validate","uncordon"], "external": false, "first_control_plane": false},
                {"node": "w-3", "roles": ["worker"], "from": "1.36.4", "to": "1.37.1", "steps": ["cordon","drain","upgrade","validate","uncordon"], "external": false, "first_control_plane": false}
            ]}]
        }});
        let r = RunRow { spec: spec.to_string(), ..row("running") };
        let j = vec![
            entry(
                1,
                100,
                serde_json::json!({"event":"stage-started","stage":0,"phase":"workers","to":"1.37.1","units":3,"concurrency":1}),
            ),
            entry(
                2,
                110,
                serde_json::json!({"event":"unit-finished","node":"w-1","to":"1.37.1","result":"upgraded","millis":10000}),
            ),
        ];
        let v = cluster_run(&r, &j);
        assert_eq!(v.nodes.len(), 3);
        assert_eq!(v.nodes[0].steps.len(), 5, "every step of the schedule is shown, even before it starts");
        assert_eq!(v.eta_seconds, Some(20), "two units left at 10 s each, one at a time");
        let done = cluster_run(&RunRow { state: "completed".into(), ..r }, &j);
        assert_eq!(done.eta_seconds, None);
    }
}
