//! An etcd restart under a run, on a REAL control plane: while etcd is down the apiserver
//! answers with errors (a plain read fails — asserted, so this test cannot pass on a cluster
//! that never failed), and refit's reads, cordon and lock writes ride it out: they are repeated
//! (core's `transient` rule) and succeed once etcd is back, instead of failing the node's step
//! and so the run (what the chaos test saw).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use refit_kube::cordon::{CordonOutcome, cordon};
use refit_kube::lease::{LeaseClaim, Write};
use refit_kube::node::node_state;
use refit_kube::{ClusterTarget, connect};
use refit_testbed::{Testbed, TestbedConfig, default_version};

#[tokio::test]
async fn reads_a_cordon_and_a_lease_write_wait_out_an_etcd_restart() {
    let tb = Testbed::start(TestbedConfig::new(default_version().unwrap(), 1)).await.unwrap();
    let conn = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.unwrap();
    let nodes: Api<Node> = Api::all(conn.client.clone());
    let names: Vec<String> = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .filter(|n| !n.starts_with("control-plane"))
        .collect();
    let worker = names.first().expect("the testbed has one worker").clone();

    tb.stop_etcd();
    // refit's calls start with the outage...
    let reader = {
        let (conn, worker) = (conn.clone(), worker.clone());
        tokio::spawn(async move { node_state(&conn, &worker).await })
    };
    let cordoner = {
        let (conn, worker) = (conn.clone(), worker.clone());
        tokio::spawn(async move { cordon(&conn, &worker, "transient-test").await })
    };
    let locker = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let claim = LeaseClaim {
                holder: "transient-test".into(),
                duration: Duration::from_secs(60),
                annotations: BTreeMap::new(),
            };
            refit_kube::lease::create(&conn, "kube-system", "refit-transient-test", &claim).await
        })
    };
    // ...and last longer than a plain read does: it fails (asserted, so this test cannot pass on
    // an outage nobody notices), refit's are repeated.
    let t = std::time::Instant::now();
    let plain = tokio::time::timeout(Duration::from_secs(45), nodes.get(&worker)).await;
    eprintln!("a plain read during the outage: {plain:?} after {:?}", t.elapsed());
    assert!(!matches!(plain, Ok(Ok(_))), "a plain read during the etcd outage did not fail: {plain:?}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    tb.start_etcd_again().await.unwrap();

    let state = reader.await.unwrap().expect("the node read waits out the outage");
    assert!(state.exists, "{state:?}");
    let cordoned = cordoner.await.unwrap().expect("the cordon waits out the outage");
    assert!(matches!(cordoned, CordonOutcome::Cordoned | CordonOutcome::AlreadyOurs), "{cordoned:?}");
    assert!(nodes.get(&worker).await.unwrap().spec.unwrap().unschedulable.unwrap_or(false));
    match locker.await.unwrap().expect("the lease write waits out the outage") {
        Write::Written(r) => assert_eq!(r.holder, "transient-test"),
        // Written on an attempt whose answer was lost: the repeat finds it (409).
        Write::Lost => {
            let r =
                refit_kube::lease::read(&conn, "kube-system", "refit-transient-test").await.unwrap().unwrap();
            assert_eq!(r.holder, "transient-test");
        }
    }
}
