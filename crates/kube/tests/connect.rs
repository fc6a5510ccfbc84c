//! Connecting to the real testbed, and the errors users see for bad targets.

use refit_kube::{ClusterTarget, Error, connect};
use refit_testbed::shared;

#[tokio::test]
async fn connects_through_the_kubeconfig_and_its_current_context() {
    let tb = shared().unwrap();
    let conn = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.unwrap();
    assert_eq!(conn.context, "refit-testbed");
    let debug = format!("{conn:?}");
    assert!(!debug.contains("PRIVATE"), "no credentials in debug output: {debug}");
}

#[tokio::test]
async fn an_unknown_context_names_the_ones_available() {
    let tb = shared().unwrap();
    let err = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: Some("prod".into()) })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownContext { .. }));
    let msg = err.to_string();
    assert!(msg.contains("'prod'") && msg.contains("refit-testbed") && msg.contains("--context"), "{msg}");
}

#[tokio::test]
async fn an_unreachable_cluster_fails_fast_with_a_clear_error() {
    let tb = shared().unwrap();
    // Same credentials, a port nothing listens on.
    let text = std::fs::read_to_string(tb.kubeconfig()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let re = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server:") {
                format!("    server: https://127.0.0.1:{port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, re).unwrap();
    let err = connect(&ClusterTarget { kubeconfig: Some(path), context: None }).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn a_malformed_kubeconfig_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "clusters: [this is: not yaml").unwrap();
    let err = connect(&ClusterTarget { kubeconfig: Some(path.clone()), context: None }).await.unwrap_err();
    assert!(matches!(err, Error::Kubeconfig { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()));
}
