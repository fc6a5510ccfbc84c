//! Owned cordons: refit records on the Node that it cordoned it, and for which run, so that it
//! never uncordons a node someone else cordoned (design §5, invariant §6.4).
//!
//! `kubectl cordon` only flips `spec.unschedulable`; after a crash nobody can tell who did it.
//! Here the flag and two annotations ([`CORDONED_BY`] = the run id, [`CORDONED_AT`]) change in
//! ONE merge patch that carries the node's `resourceVersion`, so the apiserver applies it only
//! to the exact object we looked at (optimistic concurrency; a 409 means someone changed the
//! node in between, and we decide again from a fresh read). Two runs racing for the same node
//! therefore cannot both believe they own the cordon.
//!
//! Both operations are idempotent: after a crash, calling them again with the same run id
//! finds the node in the state the first call left it and says so.
//!
//! The annotation alone is not proof: `kubectl uncordon` then `kubectl cordon` by someone else
//! in the middle of a run leaves the annotation in place (kubectl never touches it), and the
//! node would look like refit's cordon. So refit writes `spec.unschedulable` under its own
//! field manager ([`FIELD_MANAGER`]), and a cordon is this run's only while the annotation
//! names the run AND the apiserver's managedFields still give `spec.unschedulable` to refit:
//! kubectl's uncordon removes the field (and refit's ownership with it), its cordon sets it
//! under kubectl's manager. A node whose object carries no managedFields at all (tracking
//! disabled) falls back to the annotation.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::Error;
use crate::connect::Connection;

/// Annotation naming the run that cordoned the node (its value is the run id).
pub const CORDONED_BY: &str = "refit.dev/cordoned-by";
/// Annotation recording when refit cordoned the node (RFC 3339, UTC).
pub const CORDONED_AT: &str = "refit.dev/cordoned-at";

/// The field manager refit writes `spec.unschedulable` under (see the module docs).
pub const FIELD_MANAGER: &str = "refit";

/// How many times a cordon or uncordon re-reads the node after losing a race (409). Each
/// conflict means another writer changed the node; a handful of them in a row means something
/// is rewriting it constantly, which the caller should hear about rather than wait out.
const MAX_CONFLICTS: usize = 8;

/// What [`cordon`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CordonOutcome {
    /// The node was schedulable; it is now cordoned and annotated with our run id.
    Cordoned,
    /// The node was already cordoned by this run (a re-run after a crash): nothing changed.
    AlreadyOurs,
    /// The node was already unschedulable and not by this run: left exactly as it was. It must
    /// never be uncordoned by this run.
    ByOther {
        /// The run id in [`CORDONED_BY`], when an earlier refit run cordoned it; `None` when a
        /// person or another tool did.
        by: Option<String>,
    },
}

/// What [`uncordon`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UncordonOutcome {
    /// The node was cordoned by this run; it is schedulable again and our annotations are gone.
    Uncordoned,
    /// The node was not cordoned (already uncordoned, e.g. by an earlier call); any annotation
    /// of ours left on it (someone ran `kubectl uncordon`, which keeps annotations) is removed.
    NotCordoned,
    /// The node is cordoned, but not by this run: left as it is.
    NotOurs {
        /// The run id that owns the cordon, if a refit run does.
        by: Option<String>,
    },
}

/// The parts of a Node the cordon decision needs.
struct Observed {
    resource_version: String,
    unschedulable: bool,
    by: Option<String>,
}

async fn observe(api: &Api<Node>, node: &str) -> Result<Observed, Error> {
    let n = match crate::retry::retrying("reading a node", || api.get(node)).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(Error::NodeNotFound { node: node.to_string() });
        }
        Err(e) => return Err(Error::Api { context: format!("reading node {node}"), source: Box::new(e) }),
    };
    Ok(Observed {
        by: cordon_owner(&n),
        resource_version: n.metadata.resource_version.clone().unwrap_or_default(),
        unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
    })
}

/// The taint the node lifecycle controller keeps on an unschedulable node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Waits (up to `timeout`) until an uncordoned `node` no longer carries
/// [`UNSCHEDULABLE_TAINT`]: the controller removes it a moment after the uncordon, and until
/// then nothing without a toleration schedules there — a plan made at once would count the
/// node out. Whether it is gone.
pub async fn wait_untainted(
    conn: &Connection,
    node: &str,
    timeout: std::time::Duration,
) -> Result<bool, Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match api.get(node).await {
            Ok(n) => n,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(true),
            Err(e) => {
                return Err(Error::Api { context: format!("reading node {node}"), source: Box::new(e) });
            }
        };
        let tainted = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == UNSCHEDULABLE_TAINT));
        if !tainted {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The run whose cordon this is: [`CORDONED_BY`]'s value, when refit's field manager still
/// owns `spec.unschedulable` (or the object has no managedFields to say otherwise). `None`
/// when someone else's write set the flag since, whatever the annotation says.
pub fn cordon_owner(n: &Node) -> Option<String> {
    let by = n.metadata.annotations.as_ref().and_then(|a| a.get(CORDONED_BY).cloned())?;
    let Some(entries) = n.metadata.managed_fields.as_ref().filter(|m| !m.is_empty()) else {
        return Some(by);
    };
    let owns_flag = |e: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry| {
        e.fields_v1
            .as_ref()
            .is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:unschedulable")).is_some())
    };
    let unschedulable = n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let refit_owns = entries.iter().any(|e| e.manager.as_deref() == Some(FIELD_MANAGER) && owns_flag(e));
    // Schedulable: no cordon to own; the annotation still names the run (for the give-back).
    if !unschedulable || refit_owns { Some(by) } else { None }
}

/// Sets the node's cordon (`unschedulable`) and refit's `annotations` (a `null` removes one)
/// only if the node still has `resource_version`. `Ok(false)` = lost a race.
async fn guarded_patch(
    api: &Api<Node>,
    node: &str,
    annotations: Value,
    unschedulable: bool,
    resource_version: &str,
) -> Result<bool, Error> {
    let patch = json!({
        "metadata": {"annotations": annotations, "resourceVersion": resource_version},
        "spec": {"unschedulable": unschedulable},
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
    // Guarded by the resourceVersion: a repeat after a lost answer is a 409 (re-observed).
    let patch = Patch::Merge(&patch);
    match crate::retry::retrying("patching a node", || api.patch(node, &params, &patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::NodeNotFound { node: node.to_string() }),
        Err(e) => Err(Error::Api { context: format!("patching node {node}"), source: Box::new(e) }),
    }
}

/// Cordons `node` for run `run_id`, unless it is already unschedulable for another reason.
pub async fn cordon(conn: &Connection, node: &str, run_id: &str) -> Result<CordonOutcome, Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    for _ in 0..MAX_CONFLICTS {
        let seen = observe(&api, node).await?;
        let ours = seen.by.as_deref() == Some(run_id);
        if seen.unschedulable {
            return Ok(if ours {
                CordonOutcome::AlreadyOurs
            } else {
                CordonOutcome::ByOther { by: seen.by }
            });
        }
        // Schedulable: nobody holds a cordon, whatever stale annotation says (an earlier run's
        // cordon that someone lifted with `kubectl uncordon`). The node becomes ours.
        let at = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let annotations = json!({CORDONED_BY: run_id, CORDONED_AT: at});
        if guarded_patch(&api, node, annotations, true, &seen.resource_version).await? {
            return Ok(CordonOutcome::Cordoned);
        }
    }
    Err(Error::Conflict { what: format!("cordoning node {node}"), attempts: MAX_CONFLICTS })
}

/// Uncordons `node` if, and only if, run `run_id` cordoned it.
pub async fn uncordon(conn: &Connection, node: &str, run_id: &str) -> Result<UncordonOutcome, Error> {
    let api: Api<Node> = Api::all(conn.client.clone());
    for _ in 0..MAX_CONFLICTS {
        let seen = observe(&api, node).await?;
        let ours = seen.by.as_deref() == Some(run_id);
        if !ours {
            return Ok(if seen.unschedulable {
                UncordonOutcome::NotOurs { by: seen.by }
            } else {
                UncordonOutcome::NotCordoned
            });
        }
        // `null` removes an annotation in a merge patch.
        let annotations = json!({CORDONED_BY: null, CORDONED_AT: null});
        if guarded_patch(&api, node, annotations, false, &seen.resource_version).await? {
            return Ok(if seen.unschedulable {
                UncordonOutcome::Uncordoned
            } else {
                UncordonOutcome::NotCordoned
            });
        }
    }
    Err(Error::Conflict { what: format!("uncordoning node {node}"), attempts: MAX_CONFLICTS })
}
