//! Every apiserver's `/readyz?verbose` on a REAL two-member control plane: both ready, then one
//! stopped — the control-plane gate names that apiserver, the other stays ready.

use refit_kube::health::apiservers_health;
use refit_kube::{ClusterTarget, connect};
use refit_testbed::{Testbed, TestbedConfig, default_version};

#[tokio::test]
async fn each_apiserver_is_asked_and_a_stopped_one_is_named() {
    let tb =
        Testbed::start(TestbedConfig::new(default_version().unwrap(), 0).control_planes(2)).await.unwrap();
    let conn = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.unwrap();
    let all = apiservers_health(&conn).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    for h in &all {
        assert_eq!(h.problem(), None, "{h:?}");
        assert!(h.readyz.as_ref().unwrap().failing.is_empty());
    }
    let stopped = tb.members()[1].apiserver_url();
    tb.stop_apiserver(1).unwrap();
    let all = apiservers_health(&conn).await.unwrap();
    let problems: Vec<String> = all.iter().filter_map(|h| h.problem()).collect();
    assert_eq!(problems.len(), 1, "{all:?}");
    assert!(problems[0].contains(&stopped) && problems[0].contains("did not answer /readyz"), "{problems:?}");
}
