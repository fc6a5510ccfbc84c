//! `refit status` against a real testbed with mixed kubelet versions.

use assert_cmd::Command;
use refit_core::{MinorVersion, Version};
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};

fn release(minor: u32) -> Version {
    TestbedVersions::from_env().unwrap().kubernetes_for_minor(MinorVersion::new(1, minor)).unwrap().clone()
}

#[tokio::test]
async fn status_reads_every_component_and_names_the_nodes_outside_the_skew_policy() {
    let tb = Testbed::start(TestbedConfig::new(release(36), 3)).await.unwrap();
    // worker-001 four minors behind, worker-002 ahead of the control plane.
    let old = Version::new(1, 32, 9);
    tb.set_node_version("worker-001", &old, &old).await.unwrap();
    tb.set_node_version("worker-002", &release(37), &release(37)).await.unwrap();

    let out = Command::cargo_bin("refit")
        .unwrap()
        .args(["status", "--kubectl", "none", "-o", "json", "--kubeconfig"])
        .arg(tb.kubeconfig())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "violations exit 1: {}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cp = release(36).git_version();
    assert_eq!(st["control_plane"], release(36).to_string());
    assert_eq!(st["context"], "refit-testbed");
    let inv = &st["inventory"];
    assert_eq!(inv["apiservers"][0]["reported"], cp.as_str());
    assert_eq!(inv["apiservers"][0]["source"], "GET /version");
    assert_eq!(inv["controller_managers"][0]["reported"], cp.as_str());
    assert_eq!(inv["schedulers"][0]["reported"], cp.as_str());
    assert_eq!(inv["etcd"][0]["location"], "control-plane-1");
    assert!(inv["etcd"][0]["reported"].as_str().unwrap().starts_with("3.6."));
    assert!(inv["coredns"][0]["reported"].as_str().unwrap().starts_with("v1."));
    let nodes = inv["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let cpnode = nodes.iter().find(|n| n["name"] == "control-plane-1").unwrap();
    assert_eq!(cpnode["roles"][0], "control-plane");
    assert_eq!(cpnode["container_runtime"], "containerd://2.1.4");
    assert!(
        !cpnode["kernel"].as_str().unwrap().is_empty() && !cpnode["os_image"].as_str().unwrap().is_empty()
    );

    let violations = st["violations"].as_array().unwrap();
    let at = |node: &str, component: &str| {
        violations
            .iter()
            .any(|v| v["instance"]["location"] == node && v["instance"]["component"] == component)
    };
    assert!(at("worker-001", "kubelet") && at("worker-001", "kube-proxy"), "{violations:#?}");
    assert!(at("worker-002", "kubelet"), "newer than the apiserver: {violations:#?}");
    assert!(!violations.iter().any(|v| v["instance"]["location"] == "worker-003"));
    assert!(st["next_versions"].as_array().unwrap().iter().any(|v| v.as_str().unwrap().starts_with("1.37.")));

    // The table names them too.
    let out = Command::cargo_bin("refit")
        .unwrap()
        .args(["status", "--kubectl", "none", "--kubeconfig"])
        .arg(tb.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Version skew: 4 violation(s)") && text.contains("worker-001"), "{text}");

    // A healthy cluster exits 0.
    tb.set_node_version("worker-001", &release(36), &release(36)).await.unwrap();
    tb.set_node_version("worker-002", &release(36), &release(36)).await.unwrap();
    let kubectl = tb.kubectl(&release(36)).unwrap();
    Command::cargo_bin("refit")
        .unwrap()
        .args(["status", "--kubectl"])
        .arg(&kubectl)
        .arg("--kubeconfig")
        .arg(tb.kubeconfig())
        .assert()
        .code(0);
}

#[tokio::test]
async fn bad_targets_are_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--kubeconfig".into(), missing.display().to_string()], "kubeconfig"),
        (
            vec!["--context".into(), "nowhere".into(), "--kubeconfig".into(), write_kubeconfig(dir.path())],
            "'nowhere'",
        ),
        (vec!["--kubeconfig".into(), write_kubeconfig(dir.path())], "cannot reach"),
    ];
    for (args, expected) in cases {
        let out = Command::cargo_bin("refit").unwrap().arg("status").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// A syntactically fine kubeconfig pointing at a port nothing listens on.
fn write_kubeconfig(dir: &std::path::Path) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: not-a-real-token\ncontexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\ncurrent-context: ctx\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}
