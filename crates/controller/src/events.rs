//! Kubernetes Events for what people watch: a run started, waits on a gate, a member failed or
//! succeeded, a run completed or failed (`kubectl describe updaterun|member|gate`).
//!
//! Which fleet event becomes which Kubernetes Event is [`translate`] (pure); publishing is
//! best effort — an Event the hub refuses is logged, never a reason to stop a run.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use refit_core::fleet::{Event, RunState, UpdateState};

use crate::resources::{Gate, Member, UpdateRun};

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The run itself.
    Run,
    /// A member of the fleet.
    Member(String),
    /// A gate of the run (core's name, `stage/after/1`).
    Gate(String),
}

/// One Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// What it is about.
    pub subject: Subject,
    /// PascalCase reason (`Started`, `WaitingOnGate`, `MemberFailed`, `Completed` ...).
    pub reason: &'static str,
    /// For people.
    pub message: String,
    /// A Warning rather than Normal.
    pub warning: bool,
}

/// The Events for `events` recorded on a run that went from `before` to `after`.
pub fn translate(run: &str, before: UpdateState, after: &RunState, events: &[Event]) -> Vec<Note> {
    let note = |subject, reason, message: String, warning| Note { subject, reason, message, warning };
    let mut out = Vec::new();
    for e in events {
        match e {
            Event::Start { targets: Some(t), by, .. } => out.push(note(
                Subject::Run,
                "Started",
                format!(
                    "run {run} started{} (kubernetes {})",
                    by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default(),
                    t.kubernetes.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "unchanged".into())
                ),
                false,
            )),
            Event::Start { .. } => {
                out.push(note(Subject::Run, "Restarted", format!("run {run} started again"), false))
            }
            Event::Stop { .. } => {
                out.push(note(Subject::Run, "StopRequested", format!("run {run}: stop requested"), false))
            }
            Event::GateReached { gate, .. } => {
                let pending = after.gate(gate).is_some_and(|g| !g.state.is_done());
                if pending {
                    let m = format!("run {run} waits on gate {gate}");
                    out.push(note(Subject::Gate(gate.to_string()), "WaitingOnGate", m.clone(), false));
                    out.push(note(Subject::Run, "WaitingOnGate", m, false));
                }
            }
            Event::ApproveGate { gate, by, .. } => out.push(note(
                Subject::Gate(gate.to_string()),
                "Approved",
                format!("gate {gate} of run {run} approved by {by}"),
                false,
            )),
            Event::MemberStarted { member, .. } => out.push(note(
                Subject::Member(member.clone()),
                "UpgradeStarted",
                format!("run {run}: upgrade of {member} started"),
                false,
            )),
            Event::MemberSucceeded { member, .. } => out.push(note(
                Subject::Member(member.clone()),
                "UpgradeSucceeded",
                format!("run {run}: {member} upgraded"),
                false,
            )),
            Event::MemberFailed { member, error, .. } => {
                let m = format!("run {run}: upgrade of {member} failed: {error}");
                out.push(note(Subject::Member(member.clone()), "MemberFailed", m.clone(), true));
                out.push(note(Subject::Run, "MemberFailed", m, true));
            }
            _ => {}
        }
    }
    let now = after.status.state;
    if now != before {
        match now {
            UpdateState::Completed => {
                out.push(note(Subject::Run, "Completed", format!("run {run} completed"), false))
            }
            UpdateState::Failed => out.push(note(Subject::Run, "Failed", format!("run {run} failed"), true)),
            UpdateState::Stopped => {
                out.push(note(Subject::Run, "Stopped", format!("run {run} stopped"), false))
            }
            _ => {}
        }
    }
    out
}

/// Publishes Events as the controller.
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// A recorder reporting as `refit-controller`, instance `holder`.
    pub fn new(client: kube::Client, holder: &str) -> Events {
        Events::reporting(client, "refit-controller", holder)
    }

    /// A recorder reporting as `controller` (`refit-serve` for people's actions through
    /// `refit serve --hub`), instance `instance`.
    pub fn reporting(client: kube::Client, controller: &str, instance: &str) -> Events {
        let reporter = Reporter { controller: controller.into(), instance: Some(instance.to_string()) };
        Events { recorder: Recorder::new(client, reporter) }
    }

    /// Publishes `notes` (from [`translate`]) about run `name`, its members and gates.
    pub async fn publish_all(
        &self,
        run: &UpdateRun,
        name: &str,
        notes: Vec<Note>,
        members: &HashMap<String, Member>,
    ) {
        for n in notes {
            let reference = match &n.subject {
                Subject::Run => Some(run.object_ref(&())),
                Subject::Member(m) => members.get(m).map(|m| m.object_ref(&())),
                Subject::Gate(g) => Some(gate_ref(run, &crate::hub::gate_object_name(name, g))),
            };
            match reference {
                Some(r) => self.publish(&r, n.reason, &n.message, n.warning).await,
                None => tracing::debug!(reason = n.reason, "no object for the event: {}", n.message),
            }
        }
    }

    /// An Event on a Member.
    pub async fn member(&self, m: &Member, reason: &'static str, message: &str, warning: bool) {
        self.publish(&m.object_ref(&()), reason, message, warning).await;
    }

    /// An Event on an auto-upgrade profile.
    pub async fn profile(
        &self,
        p: &crate::resources::AutoUpgradeProfile,
        reason: &'static str,
        message: &str,
        warning: bool,
    ) {
        self.publish(&p.object_ref(&()), reason, message, warning).await;
    }

    /// An Event on a run.
    pub async fn run(&self, r: &UpdateRun, reason: &'static str, message: &str, warning: bool) {
        self.publish(&r.object_ref(&()), reason, message, warning).await;
    }

    /// An Event on a run about a person's `action` (its Event `action` field), e.g. what
    /// `refit serve --hub` was asked to do and how it ended.
    pub async fn person_action(
        &self,
        r: &UpdateRun,
        reason: &str,
        action: &str,
        message: &str,
        warning: bool,
    ) {
        self.publish_as(&r.object_ref(&()), reason, action, message, warning).await;
    }

    async fn publish(&self, reference: &ObjectReference, reason: &str, message: &str, warning: bool) {
        self.publish_as(reference, reason, "Reconcile", message, warning).await;
    }

    async fn publish_as(
        &self,
        reference: &ObjectReference,
        reason: &str,
        action: &str,
        message: &str,
        warning: bool,
    ) {
        let ev = KubeEvent {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(message.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(reason, "cannot publish an Event: {e}");
        }
    }
}

/// A reference to the Gate object `name` in the run's namespace (no read needed).
fn gate_ref(run: &UpdateRun, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(Gate::api_version(&()).to_string()),
        kind: Some(Gate::kind(&()).to_string()),
        name: Some(name.to_string()),
        namespace: run.metadata.namespace.clone(),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use refit_core::fleet::{GateRef, GateTiming};

    fn run() -> RunState {
        let strategy: refit_core::fleet::Strategy = serde_saphyr::from_str(
            "stages:\n  - name: canary\n    groups: [{name: canary}]\n    afterGates: [{type: Approval}]\n",
        )
        .unwrap();
        let fleet = vec![refit_core::fleet::FleetMember {
            name: "m1".into(),
            labels: Default::default(),
            update_group: Some("canary".into()),
        }];
        let plan = refit_core::fleet::resolve(&strategy, &fleet).unwrap();
        let spec: refit_core::fleet::UpgradeSpec =
            serde_json::from_value(serde_json::json!({"upgradeType": "Full", "kubernetesVersion": "1.37.1"}))
                .unwrap();
        RunState::new("r", spec, strategy, plan, Timestamp::UNIX_EPOCH).unwrap()
    }

    #[test]
    fn a_failed_member_warns_on_the_member_and_the_run_and_a_finished_run_says_how() {
        let mut after = run();
        let at = Timestamp::UNIX_EPOCH;
        let failed = Event::MemberFailed { member: "m1".into(), at, error: "boom".into() };
        let notes = translate("r", UpdateState::Running, &after, std::slice::from_ref(&failed));
        assert_eq!(notes.len(), 2);
        assert!(notes.iter().all(|n| n.warning && n.reason == "MemberFailed" && n.message.contains("boom")));
        assert_eq!(notes[0].subject, Subject::Member("m1".into()));
        after.status.state = UpdateState::Completed;
        let notes = translate("r", UpdateState::Running, &after, &[]);
        assert_eq!(
            notes,
            [Note {
                subject: Subject::Run,
                reason: "Completed",
                message: "run r completed".into(),
                warning: false
            }]
        );
        // No change of state: nothing about the run.
        assert!(translate("r", UpdateState::Completed, &after, &[]).is_empty());
    }

    #[test]
    fn a_gate_reached_and_still_pending_is_waited_on_a_passed_one_is_not() {
        let gate = GateRef { stage: "canary".into(), group: None, timing: GateTiming::After, index: 1 };
        let reached = Event::GateReached { gate: gate.clone(), at: Timestamp::UNIX_EPOCH };
        let mut after = run();
        after.stages[0].after_gates[0].state = refit_core::fleet::GateStatus::Pending;
        let notes = translate("r", UpdateState::Running, &after, std::slice::from_ref(&reached));
        let reasons: Vec<_> = notes.iter().map(|n| (&n.subject, n.reason)).collect();
        assert_eq!(
            reasons,
            [(&Subject::Gate("canary/after/1".into()), "WaitingOnGate"), (&Subject::Run, "WaitingOnGate")]
        );
        // Pre-approved: passed as it was reached, nothing to wait on.
        after.stages[0].after_gates[0].state = refit_core::fleet::GateStatus::Completed;
        assert!(translate("r", UpdateState::Running, &after, &[reached]).is_empty());
    }
}
