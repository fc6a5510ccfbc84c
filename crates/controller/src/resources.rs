//! The hub's custom resources (`refit.dev/v1alpha1`, namespaced).
//!
//! Specs and statuses embed `refit_core::fleet`'s own types (stages, gates, windows, upgrade
//! specs, the 8 update states, channels) rather than copies, so the hub and local mode speak one
//! language and the OpenAPI schemas the API server validates against are generated from the
//! same Rust types the rules read. The run tree in `UpdateRun.status.run` is core's `RunState`
//! as the local store keeps it; its schema is left open (`x-kubernetes-preserve-unknown-fields`)
//! because only the controller writes it, through the status subresource, and core's serde is
//! its contract. Columns for `kubectl get` read a typed projection next to it.

use std::collections::BTreeMap;

use kube::CustomResource;
use refit_core::Version;
use refit_core::fleet::strategy::StageSpec;
use refit_core::fleet::{
    Channel, GateStatus, MaintenanceWindow, NodeImageSelection, RunState, Strategy, UpdateState, UpgradeSpec,
};
use schemars::JsonSchema;

use crate::layout::MemberDetail;
use serde::{Deserialize, Serialize};

/// The API group of every refit resource.
pub const GROUP: &str = "refit.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// A condition, as Kubernetes' `metav1.Condition` (a local type: k8s-openapi's would need its
/// schemars feature, i.e. a second build of the whole API crate, for five fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Initialized`, `Progressing`, `Succeeded`, `Reachable` ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// One CamelCase word for machines.
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// Holds.
    True,
    /// Does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// Where a member's kubeconfig is: a key of a Secret in the member's namespace (never inline in
/// the Member, which many people may read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key holding the kubeconfig.
    #[serde(default = "default_kubeconfig_key")]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}

/// A cluster of the fleet.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "refit.dev",
    version = "v1alpha1",
    kind = "Member",
    namespaced,
    status = "MemberStatus",
    shortname = "rmem",
    category = "refit",
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.updateGroup"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.kubernetesVersion"}"#,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"Reachable\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MemberSpec {
    /// The Secret key holding its kubeconfig.
    pub kubeconfig_secret: SecretKeyRef,
    /// The kubeconfig context (bound: the cluster it reaches is recorded in status).
    pub context: String,
    /// Update group (a strategy's group of that name selects it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_group: Option<String>,
    /// Labels strategies select on (strategy selectors, not the object's metadata labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When work on it may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// How long it may sit Pending before it is deferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_budget_seconds: Option<u64>,
    /// The node action, as `refit upgrade --action` takes it (`ssh`, `exec:...`, `sandbox:DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Extra `refit upgrade` arguments for this member (e.g. `--accept=control-plane-count`),
    /// as `refit fleet member add --upgrade-arg` stores them locally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade_args: Vec<String>,
}

/// What the controller observed of a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The kube-system namespace UID seen at first contact: checked before every launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_uid: Option<String>,
    /// Its control plane's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<Version>,
    /// When it last answered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// `Reachable`, `Bound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A reusable strategy: stages → groups → members (Azure's stages file as it is).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "refit.dev",
    version = "v1alpha1",
    kind = "UpdateStrategy",
    namespaced,
    shortname = "rstrat",
    category = "refit",
    printcolumn = r#"{"name":"Stages","type":"string","jsonPath":".spec.stages[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategySpec {
    /// Stages, run one after another.
    pub stages: Vec<StageSpec>,
}

impl UpdateStrategySpec {
    /// Core's strategy, named after the object.
    pub fn strategy(&self, name: &str) -> Strategy {
        Strategy { name: Some(name.to_string()), stages: self.stages.clone() }
    }
}

/// What a person asks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunRequest {
    /// Start it (again, after a stop or a failure).
    Run,
    /// Nothing new starts; member upgrades under way finish.
    Stop,
}

/// An update run: the goal, the strategy it copies at its start, and what a person asks.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "refit.dev",
    version = "v1alpha1",
    kind = "UpdateRun",
    namespaced,
    status = "UpdateRunStatus",
    shortname = "rrun",
    category = "refit",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.upgradeType"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.kubernetesVersion"}"#,
    printcolumn = r#"{"name":"Requested","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.currentStage"}"#,
    printcolumn = r#"{"name":"Done","type":"integer","jsonPath":".status.done"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.members"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRunSpec {
    /// Upgrade type, Kubernetes version, node-image selection, pending budget.
    #[serde(flatten)]
    pub upgrade: UpgradeSpec,
    /// The UpdateStrategy (same namespace) copied into the run when it is created.
    pub strategy: String,
    /// Run or Stop; absent: created, not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunRequest>,
}

/// An update run's status: core's run tree, a projection of it for columns, and conditions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRunStatus {
    /// The generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Initialized`, `Progressing`, `Succeeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The run's state (rolled up by core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<UpdateState>,
    /// The stage under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Members completed or skipped.
    #[serde(default)]
    pub done: u32,
    /// Members failed.
    #[serde(default)]
    pub failed: u32,
    /// Members in the run.
    #[serde(default)]
    pub members: u32,
    /// The run tree: frozen strategy and targets, stages → groups → members with states,
    /// reasons and timings, gates, skips (core's `RunState`, each member's detail moved to its
    /// ClusterUpgrade: [`crate::layout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "open_object")]
    pub run: Option<RunState>,
}

impl UpdateRunStatus {
    /// The status for `run` — the tree without per-member detail, and its projection — and
    /// that detail for the members' ClusterUpgrades ([`crate::layout`]); conditions are left to
    /// the caller.
    pub fn of(run: RunState) -> (UpdateRunStatus, BTreeMap<String, MemberDetail>) {
        let (run, details) = crate::layout::split(run);
        let current_stage = run.current_stage().and_then(|i| run.stages.get(i)).map(|s| s.name.clone());
        let (mut done, mut failed, mut members) = (0u32, 0u32, 0u32);
        for (_, _, m) in run.members() {
            members = members.saturating_add(1);
            if m.status.state.is_done() {
                done = done.saturating_add(1);
            } else if m.status.state == UpdateState::Failed {
                failed = failed.saturating_add(1);
            }
        }
        let status = UpdateRunStatus {
            observed_generation: None,
            conditions: Vec::new(),
            state: Some(run.status.state),
            current_stage,
            done,
            failed,
            members,
            run: Some(run),
        };
        (status, details)
    }
}

/// Before or after a stage or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateType {
    /// Someone must approve it.
    Approval,
    /// Completes at a scheduled time (or earlier when approved).
    ScheduledStart,
}

/// An approval as its approver writes it. The API server's admission policy (in the manifests)
/// refuses one whose `approver` is not the requesting user, and RBAC decides who may write it:
/// identity comes from Kubernetes, not from a free-text flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    /// The approving user, exactly as the API server authenticates them.
    pub approver: String,
    /// Optional expiry of a pre-approval (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The person a front end approved for (`refit serve --hub`: its token's name). The
    /// approver stays the front end's own hub identity, checked by the admission policy, so
    /// the record says both: who asked, and who vouched for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

impl ApprovalRequest {
    /// Who the run records as the approver: `alice (through system:serviceaccount:…)` when a
    /// front end approved for someone, else the approver.
    pub fn by(&self) -> String {
        match &self.on_behalf_of {
            Some(person) => on_behalf_of(person, &self.approver),
            None => self.approver.clone(),
        }
    }
}

/// Who a run records for what a front end did for someone (an approval, a skip):
/// `alice (through system:serviceaccount:…)`.
pub fn on_behalf_of(person: &str, through: &str) -> String {
    format!("{person} (through {through})")
}

/// A gate of a run, one object per gate so approvals are ordinary, auditable writes.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "refit.dev",
    version = "v1alpha1",
    kind = "Gate",
    namespaced,
    status = "GateResourceStatus",
    shortname = "rgate",
    category = "refit",
    printcolumn = r#"{"name":"Run","type":"string","jsonPath":".spec.run"}"#,
    printcolumn = r#"{"name":"Gate","type":"string","jsonPath":".spec.gate"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Approver","type":"string","jsonPath":".spec.approval.approver"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GateResourceSpec {
    /// The UpdateRun.
    pub run: String,
    /// The gate inside it, as core names it: `stage/after/1`, `stage/group/before/1`.
    pub gate: String,
    /// Approval or ScheduledStart.
    #[serde(rename = "type")]
    pub type_: GateType,
    /// The approval, written by the approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRequest>,
}

/// Where a gate stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResourceStatus {
    /// Pending, Completed or Skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<GateStatus>,
    /// When the run reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<String>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// The approval the run recorded (who and when).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
}

/// An auto-upgrade profile: a channel, a strategy, and the run it generated last.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "refit.dev",
    version = "v1alpha1",
    kind = "AutoUpgradeProfile",
    namespaced,
    status = "AutoUpgradeProfileStatus",
    shortname = "rprof",
    category = "refit",
    printcolumn = r#"{"name":"Channel","type":"string","jsonPath":".spec.channel"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Last run","type":"string","jsonPath":".status.lastGeneratedRun"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AutoUpgradeProfileSpec {
    /// What it follows.
    pub channel: Channel,
    /// The pinned minor (TargetKubernetesVersion only), e.g. `1.37`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+$"))]
    pub target_kubernetes_version: Option<String>,
    /// The UpdateStrategy its runs use (absent: one by one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Node images for Kubernetes channels.
    #[serde(default)]
    pub node_image_selection: NodeImageSelection,
    /// A disabled profile generates nothing.
    #[serde(default)]
    pub disabled: bool,
}

/// What a profile did last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoUpgradeProfileStatus {
    /// The run it generated last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_generated_run: Option<String>,
    /// The version that run moves members to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_target: Option<Version>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One member's upgrade within one run: the hub's copy of that cluster run's journal, so any
/// replica can resume any member.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "refit.dev",
    version = "v1alpha1",
    kind = "ClusterUpgrade",
    namespaced,
    status = "ClusterUpgradeStatus",
    shortname = "rcu",
    category = "refit",
    printcolumn = r#"{"name":"Run","type":"string","jsonPath":".spec.run"}"#,
    printcolumn = r#"{"name":"Member","type":"string","jsonPath":".spec.member"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.kubernetesVersion"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterUpgradeSpec {
    /// The UpdateRun.
    pub run: String,
    /// The Member.
    pub member: String,
    /// The cluster it must be (kube-system UID), checked before every step.
    pub cluster_uid: String,
    /// The member's frozen target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<Version>,
}

/// A member upgrade's journal on the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterUpgradeStatus {
    /// The member's state in the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<UpdateState>,
    /// The member's detail in the run: target, operation, message, error ([`crate::layout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "open_object")]
    pub detail: Option<MemberDetail>,
    /// The node step under way (`cp-1: drain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The engine's journal of this member upgrade ([`crate::journal`]): written before and
    /// after every node step by the replica that owns it, read by the next one to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<UpgradeJournal>,
}

/// A member upgrade's engine journal, compact enough for a 5,000-node member to fit one etcd
/// object ([`crate::journal`] has the sizes): the runs' records, and the newest run's step
/// states as one string per node instead of one record per transition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeJournal {
    /// Who writes it (`REPLICA/TERM`): claimed with the object's resourceVersion, and every
    /// write tests it first, so a deposed leader's write fails instead of landing.
    pub owner: String,
    /// The engine runs of this member upgrade, oldest first.
    #[serde(default)]
    pub runs: Vec<JournalRun>,
    /// The newest run's steps: node → `step@version=state` entries, comma-separated, in the
    /// order first recorded (`cordon@1.37.1=done,drain@1.37.1=started`).
    #[serde(default)]
    pub steps: BTreeMap<String, String>,
}

/// One engine run as the hub journal keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalRun {
    /// Run id (`up-20261205-154501-1-37-1`).
    pub id: String,
    /// The member cluster's identity (kube-system UID).
    pub cluster: String,
    /// Target version.
    pub target: String,
    /// Its state (`running`, `completed`, ...).
    pub state: String,
    /// The frozen run spec, JSON, gzip, base64 (a 5,000-node schedule is ~1 MB of JSON and
    /// ~58 KB so); empty for runs superseded by a newer one (only the newest resumes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec: String,
}

/// An object whose fields are kept as written (only the controller writes it).
fn open_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
