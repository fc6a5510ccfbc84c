//! `refit fleet --hub`: the fleet verbs against the hub's resources. So far: approving a gate.
//!
//! The approver is who the hub says the caller is (a `SelfSubjectReview`: the user the API
//! server authenticated, impersonation included), never a name the caller types; the admission
//! policy in the manifests refuses any other name, and RBAC decides who may approve at all.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, Patch, PatchParams, PostParams};
use refit_kube::Connection;
use serde_json::json;

use crate::resources::Gate;

/// What went wrong talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No such gate object.
    #[error("no gate {gate} of run {run} in namespace {namespace} (kubectl -n {namespace} get gates)")]
    NoGate {
        /// The run.
        run: String,
        /// The gate as core names it.
        gate: String,
        /// Where it was looked for.
        namespace: String,
    },
    /// The hub refused (RBAC, the admission policy, a schema): its message.
    #[error("the hub refused: {0}")]
    Refused(String),
    /// The hub could not be asked.
    #[error("{context}: {source}")]
    Api {
        /// What was asked.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<kube::Error>,
    },
}

impl HubError {
    /// Bad input (exit 2): a name that does not exist.
    pub fn is_usage(&self) -> bool {
        matches!(self, HubError::NoGate { .. })
    }
}

fn hub_err(context: impl Into<String>, e: kube::Error) -> HubError {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => HubError::Refused(s.message.clone()),
        e => HubError::Api { context: context.into(), source: Box::new(e) },
    }
}

/// The Gate object of `gate` (`stage/after/1`) in `run`: `run.stage.after.1` (dots cannot
/// occur in run, stage or group names, so the name is unambiguous).
pub fn gate_object_name(run: &str, gate: &str) -> String {
    format!("{run}.{}", gate.replace('/', "."))
}

/// The user the hub authenticates this connection as.
pub async fn whoami(conn: &Connection) -> Result<String, HubError> {
    let api: Api<SelfSubjectReview> = Api::all(conn.client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| hub_err("asking the hub who we are (SelfSubjectReview)", e))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or_else(|| HubError::Refused("the hub did not say who we are (SelfSubjectReview)".into()))
}

/// Approves `gate` of `run` as the caller; returns the approver recorded.
pub async fn approve(
    conn: &Connection,
    namespace: &str,
    run: &str,
    gate: &str,
    expires_at: Option<jiff::Timestamp>,
) -> Result<String, HubError> {
    let me = whoami(conn).await?;
    approve_as(conn, &me, namespace, run, gate, expires_at, None).await?;
    Ok(me)
}

/// Approves `gate` of `run` as `me` (the connection's user, from [`whoami`]), for
/// `on_behalf_of` when a front end approves for one of its users (`refit serve --hub`). The
/// one place a Gate approval is written.
pub async fn approve_as(
    conn: &Connection,
    me: &str,
    namespace: &str,
    run: &str,
    gate: &str,
    expires_at: Option<jiff::Timestamp>,
    on_behalf_of: Option<&str>,
) -> Result<(), HubError> {
    let gates: Api<Gate> = Api::namespaced(conn.client.clone(), namespace);
    let name = gate_object_name(run, gate);
    // A merge patch keeps fields it does not name: null removes an earlier approval's.
    let approval = json!({
        "approver": me,
        "expiresAt": expires_at.map(|t| t.to_string()),
        "onBehalfOf": on_behalf_of,
    });
    let patch = json!({"spec": {"approval": approval}});
    match gates.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(HubError::NoGate { run: run.into(), gate: gate.into(), namespace: namespace.into() })
        }
        Err(e) => Err(hub_err(format!("approving gate {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_made_for_someone_records_them_and_who_vouched() {
        let mut a = crate::resources::ApprovalRequest {
            approver: "system:serviceaccount:ops:refit-serve".into(),
            expires_at: None,
            on_behalf_of: None,
        };
        assert_eq!(a.by(), "system:serviceaccount:ops:refit-serve");
        a.on_behalf_of = Some("alice".into());
        assert_eq!(a.by(), "alice (through system:serviceaccount:ops:refit-serve)");
    }

    #[test]
    fn gate_object_names_are_unambiguous() {
        assert_eq!(gate_object_name("to-137", "canary/after/1"), "to-137.canary.after.1");
        assert_ne!(gate_object_name("r", "a-b/c/before/1"), gate_object_name("r", "a/b-c/before/1"));
    }
}
