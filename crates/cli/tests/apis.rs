//! `refit apis` as a user runs it, against real testbed clusters: Helm release manifests,
//! last-applied annotations, and the deprecated-API metric of a real kube-apiserver.
//!
//! The shared testbed holds other tests' objects too, so assertions name this test's own
//! objects; the metric test starts its own testbed (it needs an opt-in beta API served).

use std::io::Write;
use std::path::Path;

use assert_cmd::Command;
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use refit_testbed::{Testbed, TestbedConfig, default_version, shared, unique_namespace};
use serde_json::{Value, json};

fn refit() -> Command {
    Command::cargo_bin("refit").unwrap()
}

/// Runs `refit apis ARGS -o json` against `kubeconfig`; returns the exit code and the report.
fn apis_json(kubeconfig: &Path, args: &[&str]) -> (i32, Value) {
    let out = refit()
        .arg("apis")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: no JSON report ({e}); stderr: {stderr}"));
    (out.status.code().unwrap(), report)
}

fn findings(report: &Value) -> Vec<Value> {
    report["findings"].as_array().unwrap().clone()
}

/// What Helm v3 stores in a release secret's `data.release` (before the Secret's own base64).
fn helm_release_data(name: &str, namespace: &str, revision: u64, manifest: &str) -> Vec<u8> {
    let release = json!({
        "name": name, "namespace": namespace, "version": revision, "manifest": manifest,
        "info": {"status": "deployed"}, "chart": {"metadata": {"name": "shop", "version": "1.0.0"}},
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(release.to_string().as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap()).into_bytes()
}

fn helm_secret(namespace: &str, release: &str, revision: u64, manifest: &str) -> Secret {
    let data = helm_release_data(release, namespace, revision, manifest);
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("sh.helm.release.v1.{release}.v{revision}"),
            "namespace": namespace,
            "labels": {"owner": "helm", "name": release, "version": revision.to_string(), "status": "deployed"},
        },
        "type": "helm.sh/release.v1",
        "data": {"release": base64::engine::general_purpose::STANDARD.encode(data)},
    }))
    .unwrap()
}

#[tokio::test]
async fn helm_manifests_and_last_applied_annotations_name_the_object_and_the_replacement() {
    let tb = shared().unwrap();
    let ns = unique_namespace("apis");
    tb.create_namespace(&ns).await.unwrap();
    let client = tb.client().await.unwrap();

    // A Helm release whose newest revision still ships an extensions/v1beta1 Ingress next to a
    // current Deployment; its first revision had an old PDB, which no longer matters.
    let old = "---\n# Source: shop/templates/pdb.yaml\napiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata:\n  name: shop\nspec:\n  minAvailable: 1\n";
    let current = "---\n# Source: shop/templates/ingress.yaml\napiVersion: extensions/v1beta1\nkind: Ingress\nmetadata:\n  name: shop-web\nspec:\n  backend:\n    serviceName: shop\n    servicePort: 80\n---\n# Source: shop/templates/deployment.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\nspec:\n  replicas: 1\n";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets.create(&PostParams::default(), &helm_secret(&ns, "shop", 1, old)).await.unwrap();
    secrets.create(&PostParams::default(), &helm_secret(&ns, "shop", 2, current)).await.unwrap();

    // An Ingress served at networking.k8s.io/v1 whose last `kubectl apply` used extensions/v1beta1.
    let last_applied = json!({"apiVersion": "extensions/v1beta1", "kind": "Ingress", "metadata": {"name": "legacy", "namespace": ns}}).to_string();
    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "legacy", "namespace": ns, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied}},
        "spec": {"defaultBackend": {"service": {"name": "legacy", "port": {"number": 80}}}},
    }))
    .unwrap();
    Api::<Ingress>::namespaced(client.clone(), &ns).create(&PostParams::default(), &ingress).await.unwrap();

    let (code, report) = apis_json(&tb.kubeconfig(), &["--to", "1.37"]);
    assert_eq!(code, 1, "usage found means exit 1: {report:#}");
    let mine: Vec<Value> =
        findings(&report).into_iter().filter(|f| f["location"].as_str().unwrap().contains(&ns)).collect();

    let helm = mine.iter().find(|f| f["signal"] == "helm-release").unwrap_or_else(|| panic!("{mine:#?}"));
    assert_eq!(helm["release"]["name"], "shop");
    assert_eq!(helm["release"]["namespace"], ns.as_str());
    assert_eq!(helm["release"]["revision"], 2);
    assert_eq!(helm["object"]["name"], "shop-web");
    assert_eq!(helm["api_version"], "extensions/v1beta1");
    assert_eq!(helm["kind"], "Ingress");
    assert_eq!(helm["removed_in"], "1.22");
    assert_eq!(helm["severity"], "already-removed", "1.22 is older than the 1.36 cluster");
    assert_eq!(helm["use_instead"], "networking.k8s.io/v1");
    assert!(
        !mine.iter().any(|f| f["kind"] == "PodDisruptionBudget" || f["kind"] == "Deployment"),
        "only the newest revision's removed APIs: {mine:#?}"
    );

    let applied = mine.iter().find(|f| f["signal"] == "last-applied").unwrap_or_else(|| panic!("{mine:#?}"));
    assert_eq!(applied["location"], format!("Ingress {ns}/legacy"));
    assert_eq!(applied["object"]["namespace"], ns.as_str());
    assert_eq!(applied["use_instead"], "networking.k8s.io/v1");
    assert!(report["summary"]["already_removed"].as_u64().unwrap() >= 2, "{report:#}");

    // The table a person reads names the same things.
    let out = refit().args(["apis", "--to", "1.37", "--kubeconfig"]).arg(tb.kubeconfig()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "SEVERITY",
        "USE INSTEAD",
        &format!("helm release {ns}/shop (revision 2): Ingress shop-web"),
        "networking.k8s.io/v1 Ingress",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
}

#[test]
fn bad_input_is_refused_with_exit_code_2_and_one_line() {
    let tb = shared().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--to", "banana"], "not a Kubernetes version"),
        (&["--to", "1.37", "--context", "prod"], "context 'prod'"),
        (&["--to", "1.37", "--catalog", "/nonexistent/catalog.yaml"], "cannot read catalog"),
    ];
    for (args, expected) in cases {
        let out = refit().arg("apis").args(args).arg("--kubeconfig").arg(tb.kubeconfig()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line, got {stderr}");
    }
    // Same credentials, a port nothing listens on: unreachable, named, exit 2.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text: String = std::fs::read_to_string(tb.kubeconfig())
        .unwrap()
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server:") {
                format!("    server: https://127.0.0.1:{port}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let unreachable = dir.path().join("kubeconfig");
    std::fs::write(&unreachable, text).unwrap();
    let out = refit().args(["apis", "--to", "1.37", "--kubeconfig"]).arg(&unreachable).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach the API server") && stderr.contains(&port.to_string()), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let help = String::from_utf8(refit().args(["apis", "--help"]).output().unwrap().stdout).unwrap();
    assert!(help.contains("Examples:") && help.contains("--to"), "{help}");
}

/// storage.k8s.io/v1beta1 VolumeAttributesClass: served by 1.36 only when opted in, deprecated
/// since 1.34, removed in 1.37 (k8s.io/api lifecycle tags; the catalog agrees).
#[tokio::test]
async fn a_request_to_a_deprecated_beta_api_is_found_through_the_metric_of_its_apiserver() {
    let config = TestbedConfig::new(default_version().unwrap(), 1)
        .apiserver_arg("--runtime-config=storage.k8s.io/v1beta1=true");
    let tb = Testbed::start(config).await.unwrap();

    // A fresh cluster uses no removed API.
    let (code, report) = apis_json(&tb.kubeconfig(), &["--to", "1.37"]);
    assert_eq!((code, findings(&report).len()), (0, 0), "{report:#}");
    assert_eq!(report["summary"]["crossing"], 0);

    // A client lists VolumeAttributesClasses through the deprecated beta.
    let ar = refit_testbed::workloads::volume_attributes_class_v1beta1();
    let beta: Api<DynamicObject> = Api::all_with(tb.client().await.unwrap(), &ar);
    beta.list(&ListParams::default()).await.expect("the opt-in beta is served");

    let (code, report) = apis_json(&tb.kubeconfig(), &["--to", "1.37"]);
    assert_eq!(code, 1, "{report:#}");
    let endpoint = tb.members()[0].apiserver_url();
    let metric = findings(&report)
        .into_iter()
        .find(|f| f["signal"] == "metric" && f["kind"] == "VolumeAttributesClass")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(metric["endpoint"], endpoint.as_str());
    assert_eq!(metric["location"], format!("apiserver {endpoint}"));
    assert_eq!(metric["api_version"], "storage.k8s.io/v1beta1");
    assert_eq!(metric["removed_in"], "1.37");
    assert_eq!(metric["severity"], "crossing");
    assert_eq!(metric["use_instead"], "storage.k8s.io/v1");
    assert_eq!(report["current"].as_str().unwrap(), default_version().unwrap().to_string());

    // An operator that still writes through the beta leaves its mark in managedFields, even
    // though refit reads the object through storage.k8s.io/v1.
    let mut vac = DynamicObject::new("gold", &ar);
    vac.data = serde_json::json!({"driverName": "csi.example.com", "parameters": {"iops": "3000"}});
    let pp = kube::api::PostParams { field_manager: Some("legacy-operator".into()), ..Default::default() };
    beta.create(&pp, &vac).await.expect("create through the beta");
    let (code, report) = apis_json(&tb.kubeconfig(), &["--to", "1.37"]);
    assert_eq!(code, 1, "{report:#}");
    let managed = findings(&report)
        .into_iter()
        .find(|f| f["signal"] == "managed-fields" && f["kind"] == "VolumeAttributesClass")
        .unwrap_or_else(|| panic!("no managed-fields finding: {report:#}"));
    assert!(managed["location"].as_str().unwrap().contains("gold"), "{managed:#}");
    assert!(managed["managers"].as_array().unwrap().iter().any(|m| m == "legacy-operator"), "{managed:#}");
    assert_eq!(managed["severity"], "crossing");

    // Staying on 1.36 crosses no removal: nothing to report, exit 0.
    let (code, report) = apis_json(&tb.kubeconfig(), &["--to", "1.36"]);
    assert_eq!((code, findings(&report).len()), (0, 0), "{report:#}");
    tb.stop();
}
