//! `refit controller manifests`: everything a hub needs, to pipe into `kubectl apply -f -`.
//!
//! - the CRDs, generated from [`crate::resources`] (schemas from the Rust types);
//! - RBAC: the controller's ServiceAccount with a Role in its namespace (its resources, the
//!   members' kubeconfig Secrets, its leader Lease, Events), and two ClusterRoles to bind people
//!   to: `refit-approver` (approve gates, read runs) and `refit-viewer` (read everything refit),
//!   and one for `refit serve --hub`'s own identity (`refit-serve`);
//! - a ValidatingAdmissionPolicy (+ binding) that refuses a Gate approval whose `approver` is not
//!   the user making the request — so "who approved" is what the API server authenticated, and
//!   RBAC (who may write Gates) decides who can approve at all;
//! - the controller Deployment, 2 replicas electing a leader on a Lease.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::Error;
use crate::resources::{AutoUpgradeProfile, ClusterUpgrade, Gate, Member, UpdateRun, UpdateStrategy};

/// The admission policy's name (its binding has the same).
pub const APPROVER_POLICY: &str = "refit-gate-approver";
/// The ClusterRole people are bound to in order to approve gates.
pub const APPROVER_ROLE: &str = "refit-approver";
/// The ClusterRole for read-only access.
pub const VIEWER_ROLE: &str = "refit-viewer";
/// The ClusterRole of `refit serve --hub`'s own identity: read the fleet, approve gates on
/// behalf of its users, stop, start and skip in runs, and record (and read back) its actions as Events.
pub const SERVE_ROLE: &str = "refit-serve";
/// The controller's ServiceAccount, Role and Deployment.
pub const CONTROLLER: &str = "refit-controller";

/// What varies between hubs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The namespace the fleet lives in.
    pub namespace: String,
    /// The controller's image.
    pub image: String,
    /// Replicas of the Deployment.
    pub replicas: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options { namespace: "refit-system".into(), image: "refit:latest".into(), replicas: 2 }
    }
}

/// The CRDs alone.
pub fn crds() -> Vec<Value> {
    [
        Member::crd(),
        UpdateStrategy::crd(),
        UpdateRun::crd(),
        Gate::crd(),
        AutoUpgradeProfile::crd(),
        ClusterUpgrade::crd(),
    ]
    .into_iter()
    .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
    .collect()
}

/// Every object, in apply order (the namespace and CRDs first).
pub fn objects(o: &Options) -> Vec<Value> {
    let ns = o.namespace.as_str();
    let mut out = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})];
    out.extend(crds());
    out.extend(rbac(ns));
    out.extend(admission_policy());
    out.push(deployment(o));
    out
}

/// Every object as one multi-document YAML stream.
pub fn render(o: &Options) -> Result<String, Error> {
    let mut text = String::new();
    for obj in objects(o) {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(&obj).map_err(|e| Error::Render(e.to_string()))?);
    }
    Ok(text)
}

const RESOURCES: [&str; 6] =
    ["members", "updatestrategies", "updateruns", "gates", "autoupgradeprofiles", "clusterupgrades"];

fn rbac(ns: &str) -> Vec<Value> {
    let all: Vec<String> = RESOURCES.iter().flat_map(|r| [r.to_string(), format!("{r}/status")]).collect();
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CONTROLLER, "namespace": ns}}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": CONTROLLER, "namespace": ns},
            "rules": [
                {"apiGroups": ["refit.dev"], "resources": all,
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                // Members' kubeconfigs: read only, and only in the fleet's namespace.
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": CONTROLLER, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": ns}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": APPROVER_ROLE},
            "rules": [
                {"apiGroups": ["refit.dev"], "resources": ["gates"],
                 "verbs": ["get", "list", "watch", "update", "patch"]},
                {"apiGroups": ["refit.dev"], "resources": RESOURCES, "verbs": ["get", "list", "watch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": SERVE_ROLE},
            "rules": [
                {"apiGroups": ["refit.dev"], "resources": RESOURCES, "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["refit.dev"], "resources": ["gates", "updateruns"], "verbs": ["patch"]},
                // Skips: applied to the run's status by the driver's commit loop (a write
                // naming the resourceVersion it read, re-applied on a conflict), with the
                // skipped member's detail on its ClusterUpgrade (created if it has none yet).
                {"apiGroups": ["refit.dev"], "resources": ["updateruns/status", "clusterupgrades/status"],
                 "verbs": ["update", "patch"]},
                {"apiGroups": ["refit.dev"], "resources": ["clusterupgrades"], "verbs": ["create"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
                 "verbs": ["create", "patch", "update", "list"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": VIEWER_ROLE},
            "rules": [{"apiGroups": ["refit.dev"], "resources": RESOURCES, "verbs": ["get", "list", "watch"]}],
        }),
    ]
}

/// The CEL rule: a Gate whose approval is new or changed must name the requesting user. The
/// controller writes Gates without an approval and records what it saw through `/status`,
/// which this policy does not match.
pub const APPROVER_RULE: &str = "!has(object.spec.approval) || \
     (oldObject != null && has(oldObject.spec.approval) && oldObject.spec.approval == object.spec.approval) || \
     object.spec.approval.approver == request.userInfo.username";

fn admission_policy() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": APPROVER_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["refit.dev"], "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["gates"],
                }]},
                "validations": [{
                    "expression": APPROVER_RULE,
                    "messageExpression":
                        "'spec.approval.approver must be the user making the request (' + request.userInfo.username + ')'",
                    "reason": "Forbidden",
                }],
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": APPROVER_POLICY},
            "spec": {"policyName": APPROVER_POLICY, "validationActions": ["Deny"]},
        }),
    ]
}

fn deployment(o: &Options) -> Value {
    let labels = json!({"app.kubernetes.io/name": CONTROLLER});
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": 5});
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": CONTROLLER, "namespace": o.namespace, "labels": labels},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": CONTROLLER,
                    "containers": [{
                        "name": "controller",
                        "image": o.image,
                        "args": ["controller", "--namespace", o.namespace, "--listen", "0.0.0.0:8080"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "livenessProbe": probe("/healthz"),
                        "readinessProbe": probe("/readyz"),
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "runAsNonRoot": true},
                    }],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_namespaced_with_a_status_subresource_and_columns() {
        let crds = crds();
        assert_eq!(crds.len(), 6);
        for c in &crds {
            assert_eq!(c["spec"]["group"], "refit.dev");
            assert_eq!(c["spec"]["scope"], "Namespaced");
            let v = &c["spec"]["versions"][0];
            assert_eq!(v["name"], "v1alpha1");
            assert!(v["additionalPrinterColumns"].as_array().is_some_and(|c| !c.is_empty()), "{c}");
            let kind = c["spec"]["names"]["kind"].as_str().unwrap();
            if kind != "UpdateStrategy" {
                assert!(v["subresources"]["status"].is_object(), "{kind} has no status subresource");
            }
        }
    }

    #[test]
    fn the_stream_parses_back_as_the_same_objects() {
        let o = Options::default();
        let text = render(&o).unwrap();
        let docs: Vec<Value> = text
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_saphyr::from_str(d).unwrap())
            .collect();
        assert_eq!(docs, objects(&o));
        assert!(text.contains("kind: ValidatingAdmissionPolicyBinding"));
    }
}
