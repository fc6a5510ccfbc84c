//! The one event type of a run. Everything that happens — stage changes, steps, blocked
//! evictions with their pod and PDB, action output, backups, timings — is one of these, and
//! every consumer reads the same stream: the terminal view, `-o json` (one object per line),
//! the store's journal, and later the HTTP server.

use serde::{Deserialize, Serialize};

use crate::plan::PhaseKind;
use crate::remedy::Remedy;
use crate::run::RunState;

/// How a unit ended in one invocation (the closed set [`Event::UnitFinished`] reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitEnd {
    /// Moved to the stage's version.
    Upgraded,
    /// Nothing to do.
    Skipped,
    /// Left cordoned, not upgraded (`--on-undrainable skip`).
    LeftCordoned,
    /// Failed; the run stopped.
    Failed,
    /// Not started.
    NotStarted,
    /// Stopped cleanly midway.
    Interrupted,
}

impl UnitEnd {
    /// Its name in events and output.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitEnd::Upgraded => "upgraded",
            UnitEnd::Skipped => "skipped",
            UnitEnd::LeftCordoned => "left-cordoned",
            UnitEnd::Failed => "failed",
            UnitEnd::NotStarted => "not-started",
            UnitEnd::Interrupted => "interrupted",
        }
    }
}

/// Why a step (or a cluster-wide step) failed, as a closed set with stable names: metrics and
/// the run's history count failures by kind, and automation decides on it, never on the
/// wording of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Cordoning the node failed (the API refused or kept conflicting).
    Cordon,
    /// The node is cordoned by another refit run that has not finished: refit stops rather
    /// than drain it a second time.
    CordonedByOtherRun,
    /// The drain could not read the node or its pods, or force-deleting failed.
    Drain,
    /// Pods could not be evicted within the drain timeout (`--on-undrainable fail`).
    Undrainable,
    /// The node action (exec command, ssh recipe, replacement) failed or timed out.
    Action,
    /// The action is not usable as configured (e.g. the replace action has no controlPlane
    /// command for a control-plane member).
    ActionConfig,
    /// The node did not come back Ready at the version (or its control-plane pods did not).
    Validate,
    /// Uncordoning failed.
    Uncordon,
    /// Removing a replaced node failed.
    Remove,
    /// The etcd backup failed (nothing was changed).
    Backup,
    /// Moving kube-proxy or CoreDNS failed.
    ClusterServices,
    /// The run's journal could not be written or read: nothing may change unrecorded.
    Journal,
    /// The cluster lock (the Lease) was taken by someone else during the run.
    LockLost,
    /// A bug: the unit's task panicked.
    Panic,
    /// The node could not be read from the cluster (a failed read is never taken for "no
    /// node": in replace style that would mean "already replaced").
    Observe,
}

impl FailureKind {
    /// Its stable name (metrics labels, history, `-o json`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Cordon => "cordon",
            FailureKind::CordonedByOtherRun => "cordoned-by-other-run",
            FailureKind::Drain => "drain",
            FailureKind::Undrainable => "undrainable",
            FailureKind::Action => "action",
            FailureKind::ActionConfig => "action-config",
            FailureKind::Validate => "validate",
            FailureKind::Uncordon => "uncordon",
            FailureKind::Remove => "remove",
            FailureKind::Backup => "backup",
            FailureKind::ClusterServices => "cluster-services",
            FailureKind::Journal => "journal",
            FailureKind::LockLost => "lock-lost",
            FailureKind::Panic => "panic",
            FailureKind::Observe => "observe",
        }
    }
}

/// Where a health gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateState {
    /// Not decided yet (the condition does not hold, or has not held for the soak).
    Waiting,
    /// Held for its soak: the run goes on.
    Passed,
    /// Its timeout ran out: the run pauses or fails (`--on-gate-failure`).
    Failed,
}

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The run starts (or resumes).
    RunStarted {
        /// Run id.
        run: String,
        /// Target version.
        target: String,
        /// Stages in the schedule.
        stages: usize,
        /// Units in the schedule (a unit in two stages counts twice).
        units: usize,
        /// Whether this continues an earlier attempt.
        resumed: bool,
    },
    /// A stage begins.
    StageStarted {
        /// Index in the schedule.
        stage: usize,
        /// etcd, control-plane, workers.
        phase: PhaseKind,
        /// Version the stage moves its units to.
        to: String,
        /// Units in it.
        units: usize,
        /// Units at once.
        concurrency: usize,
    },
    /// A unit needs nothing (already at the version, finished earlier in this run).
    UnitSkipped {
        /// Node or host.
        node: String,
        /// Version of the stage.
        to: String,
        /// Why.
        reason: String,
    },
    /// A step begins.
    StepStarted {
        /// Node or host.
        node: String,
        /// cordon, drain, upgrade, validate, uncordon, remove.
        step: String,
        /// Version of the stage.
        to: String,
    },
    /// A step finished.
    StepDone {
        /// Node or host.
        node: String,
        /// Which.
        step: String,
        /// Version of the stage.
        to: String,
        /// How long it took.
        millis: u64,
        /// What it did, when there is something to say (e.g. "evicted 12 pods").
        detail: String,
    },
    /// A step failed.
    StepFailed {
        /// Node or host.
        node: String,
        /// Which.
        step: String,
        /// Version of the stage.
        to: String,
        /// What went wrong and what to do.
        error: String,
        /// What kind of failure (absent in journals written before kinds existed, and for
        /// a step interrupted on request).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<FailureKind>,
        /// The ways out the operator has (front ends render them: the CLI as flags).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remedies: Vec<Remedy>,
    },
    /// An eviction was refused (PDB) or a pod cannot be evicted; reported as it happens.
    Blocked {
        /// The node being drained.
        node: String,
        /// namespace/name.
        pod: String,
        /// namespace/name of the PodDisruptionBudget, when one is the reason.
        pdb: Option<String>,
        /// The reason.
        reason: String,
        /// The allowance that would let the drain take the pod, for a refusal by the rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remedy: Option<Remedy>,
    },
    /// A pod was evicted.
    Evicted {
        /// The node being drained.
        node: String,
        /// namespace/name.
        pod: String,
    },
    /// A unit is finished in this invocation (upgraded, skipped, left cordoned, failed...).
    UnitFinished {
        /// Node or host.
        node: String,
        /// Version of the stage.
        to: String,
        /// upgraded, skipped, left-cordoned, failed, not-started, interrupted.
        result: UnitEnd,
        /// Time spent on it.
        millis: u64,
    },
    /// A line the node action printed.
    ActionOutput {
        /// Node or host.
        node: String,
        /// The line.
        line: String,
    },
    /// A node was left cordoned on purpose.
    LeftCordoned {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The etcd backup was written.
    Backup {
        /// Where it is (kept, never deleted).
        path: String,
        /// Its size.
        bytes: u64,
    },
    /// Cluster services progress.
    ClusterService {
        /// kube-proxy, coredns.
        addon: String,
        /// What happened.
        detail: String,
    },
    /// A health gate between batches is waiting, passed or failed.
    Gate {
        /// The gate's name.
        gate: String,
        /// Where it stands.
        state: GateState,
        /// What it waits for, what it saw, or why it failed.
        reason: String,
    },
    /// `--max-unavailable auto` chose the next worker batch from the live cluster.
    BatchChosen {
        /// Index of the stage in the schedule.
        stage: usize,
        /// The nodes, started together.
        nodes: Vec<String>,
        /// Nodes already under way that they join (the window slides).
        #[serde(default)]
        in_flight: usize,
        /// Their zone (None: no zone label, or `--across-zones`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<String>,
        /// Why the batch is not larger, for people.
        limit: String,
        /// The pods each one's drain will move, in the order of `nodes`, from the snapshot the
        /// choice was made from ([`crate::eta::choice_load`]; empty: not read from one).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pods: Vec<usize>,
        /// The pods on the stage's units not started yet after this choice: what the ETA counts
        /// the work left in ([`crate::eta::Live::load`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pods_left: Option<usize>,
        /// Per zone of the units not started yet, the budget that sets the pace: the one their
        /// pods take the most rounds of ([`crate::eta::Pacing`]; empty: none does).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pacing: Vec<crate::eta::Pacing>,
    },
    /// `--max-unavailable auto` could start no node: the budget or pod that holds it.
    BatchHeld {
        /// Index of the stage in the schedule.
        stage: usize,
        /// Why, naming the budget or pod.
        reason: String,
    },
    /// When the run is expected to end: each phase with work left and the whole run, from this
    /// run's measured times (the plan's estimate for a phase that has measured nothing yet).
    /// Sent when the run starts and whenever a unit or an `auto` batch ends; offsets count
    /// from the moment it is sent (`-o json` adds that moment as `at`).
    Eta {
        /// Phases with work left, in order.
        phases: Vec<PhaseEnd>,
        /// Seconds from now until the run is expected to end.
        ends_in_secs: u64,
    },
    /// Something the operator should read.
    Warning {
        /// The message.
        message: String,
    },
    /// The run ends.
    RunFinished {
        /// completed, failed, interrupted, paused.
        state: RunState,
        /// Wall time of this invocation.
        millis: u64,
        /// Why, when it did not complete.
        reason: Option<String>,
    },
    /// The last line of `refit upgrade -o json`: how the command ended. A fleet driver decides a
    /// member's outcome from this event alone (never from an exit code with unrecognised
    /// output), so every way `refit upgrade` ends after reading its cluster prints one — also
    /// "nothing to upgrade", with no run.
    Summary {
        /// The run's outcome (the CLI prints the engine's whole report here; readers take
        /// these fields and ignore the rest).
        outcome: RunSummary,
    },
    /// `refit upgrade` refused to start: preflight found blockers (nothing was changed).
    PlanBlocked {
        /// The blocking findings, in the plan's order.
        blockers: Vec<Blocker>,
    },
}

/// One phase's expected end, as [`Event::Eta`] carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEnd {
    /// etcd, control-plane, workers, cluster-services.
    pub phase: PhaseKind,
    /// Seconds from now until it is expected to end.
    pub ends_in_secs: u64,
    /// Whether its pace was measured in this run (false: the plan's estimate).
    pub measured: bool,
}

impl Event {
    /// The [`Event::Eta`] of an expected end (seconds rounded up: "ends in 0 s" only when done).
    pub fn eta(e: &crate::eta::Eta) -> Event {
        let secs = |d: std::time::Duration| d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
        Event::Eta {
            phases: e
                .phases
                .iter()
                .map(|p| PhaseEnd { phase: p.kind, ends_in_secs: secs(p.ends_in), measured: p.measured })
                .collect(),
            ends_in_secs: secs(e.ends_in),
        }
    }
}

/// How a `refit upgrade` ended, as [`Event::Summary`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run id; None when there was nothing to do (no run was recorded).
    #[serde(default)]
    pub run: Option<String>,
    /// completed, failed, interrupted, paused.
    pub state: RunState,
    /// Why, when it did not complete (or what "nothing to do" found).
    #[serde(default)]
    pub reason: Option<String>,
    /// The ways out of that reason (front ends render them: the CLI as flags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remedies: Vec<Remedy>,
}

/// One preflight blocker, as [`Event::PlanBlocked`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    /// The check's stable name (e.g. `unmanaged-pod`).
    pub check: String,
    /// What it concerns: `node/w-1`, `pod/ns/name`, `cluster`.
    pub subject: String,
    /// What is wrong.
    pub message: String,
    /// The way out, when there is one (the CLI renders it as its flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<Remedy>,
}

impl Blocker {
    /// The blockers among a plan's findings.
    pub fn of(findings: &[crate::checks::Finding]) -> Vec<Blocker> {
        findings
            .iter()
            .filter(|f| f.severity == crate::checks::Severity::Blocker)
            .map(|f| Blocker {
                check: f.check.to_string(),
                subject: f.subject.clone(),
                message: f.message.clone(),
                remedy: f.remedy.clone(),
            })
            .collect()
    }
}

impl Event {
    /// The node an event concerns, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Event::UnitSkipped { node, .. }
            | Event::StepStarted { node, .. }
            | Event::StepDone { node, .. }
            | Event::StepFailed { node, .. }
            | Event::Blocked { node, .. }
            | Event::Evicted { node, .. }
            | Event::ActionOutput { node, .. }
            | Event::LeftCordoned { node, .. }
            | Event::UnitFinished { node, .. } => Some(node),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_one_tagged_object_and_parses_back() {
        let e = Event::Blocked {
            node: "w-1".into(),
            pod: "shop/web-1".into(),
            pdb: Some("shop/web".into()),
            reason: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            remedy: None,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.starts_with(r#"{"event":"blocked","node":"w-1""#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        assert_eq!(e.node(), Some("w-1"));
    }

    #[test]
    fn closed_sets_serialize_as_their_names() {
        for end in [
            UnitEnd::Upgraded,
            UnitEnd::Skipped,
            UnitEnd::LeftCordoned,
            UnitEnd::Failed,
            UnitEnd::NotStarted,
            UnitEnd::Interrupted,
        ] {
            assert_eq!(serde_json::to_value(end).unwrap(), serde_json::json!(end.as_str()));
        }
        let stage = Event::StageStarted {
            stage: 0,
            phase: PhaseKind::ControlPlane,
            to: "1.37.1".into(),
            units: 3,
            concurrency: 1,
        };
        let json = serde_json::to_value(&stage).unwrap();
        assert_eq!(json["phase"], "control-plane");
        let done = Event::RunFinished { state: RunState::Paused, millis: 5, reason: None };
        assert_eq!(serde_json::to_value(&done).unwrap()["state"], RunState::Paused.as_str());
        let failed = Event::StepFailed {
            node: "w-1".into(),
            step: "upgrade".into(),
            to: "1.37.1".into(),
            error: "exit 1".into(),
            kind: Some(FailureKind::CordonedByOtherRun),
            remedies: Vec::new(),
        };
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(json["kind"], FailureKind::CordonedByOtherRun.as_str());
        // A journal written before kinds existed still reads.
        let old = r#"{"event":"step-failed","node":"w-1","step":"drain","to":"1.37.1","error":"x"}"#;
        assert!(matches!(serde_json::from_str::<Event>(old).unwrap(), Event::StepFailed { kind: None, .. }));
        let eta = Event::eta(&crate::eta::Eta {
            phases: vec![crate::eta::PhaseEta {
                kind: PhaseKind::Workers,
                per_round: std::time::Duration::from_secs(3),
                measured: true,
                ends_in: std::time::Duration::from_millis(90_001),
            }],
            ends_in: std::time::Duration::from_millis(90_001),
        });
        let json = serde_json::to_string(&eta).unwrap();
        assert_eq!(
            json,
            r#"{"event":"eta","phases":[{"phase":"workers","ends_in_secs":91,"measured":true}],"ends_in_secs":91}"#,
            "rounded up"
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), eta);
        let unknown = r#"{"event":"run-finished","state":"resuming","millis":1,"reason":null}"#;
        assert!(serde_json::from_str::<Event>(unknown).is_err(), "an unknown state is an error");
    }

    #[test]
    fn a_summary_reads_the_fields_it_needs_from_the_whole_report_and_refuses_unknown_states() {
        // What `refit upgrade -o json` prints last: the engine's report, with more fields.
        let line = r#"{"event":"summary","outcome":{"run":"up-1","state":"failed","reason":"worker-1: upgrade failed","remedies":[{"kind":"deleteUnmanagedPods"}],"units":[],"left_cordoned":[],"timings":[],"backup":null}}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert_eq!(
            e,
            Event::Summary {
                outcome: RunSummary {
                    run: Some("up-1".into()),
                    state: RunState::Failed,
                    reason: Some("worker-1: upgrade failed".into()),
                    remedies: vec![Remedy::DeleteUnmanagedPods],
                }
            }
        );
        let nothing = Event::Summary {
            outcome: RunSummary {
                run: None,
                state: RunState::Completed,
                reason: Some("nothing to upgrade".into()),
                remedies: Vec::new(),
            },
        };
        let json = serde_json::to_string(&nothing).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), nothing);
        assert!(
            serde_json::from_str::<Event>(r#"{"event":"summary","outcome":{"run":"x","state":"great"}}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<Event>(r#"{"event":"sumary"}"#).is_err(),
            "unknown events do not parse"
        );
        let blocked = Event::PlanBlocked {
            blockers: vec![Blocker {
                check: "unmanaged-pod".into(),
                subject: "pod/a/x".into(),
                message: "m".into(),
                remedy: None,
            }],
        };
        let json = serde_json::to_value(&blocked).unwrap();
        assert_eq!(json["event"], "plan-blocked");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), blocked);
    }
}
