//! Removed-API signals from a real HA testbed: every apiserver is scraped, not only the one
//! behind the load balancer that happens to answer.

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use refit_core::catalog::Catalog;
use refit_core::removed::Signal;
use refit_kube::apis::{collect_signals, oldest_apiserver_version};
use refit_kube::{ClusterTarget, connect};
use refit_testbed::{Testbed, TestbedConfig, default_version};

#[tokio::test]
async fn each_apiserver_is_asked_for_its_own_deprecated_api_requests() {
    let config = TestbedConfig::new(default_version().unwrap(), 1)
        .control_planes(2)
        .apiserver_arg("--runtime-config=networking.k8s.io/v1beta1=true");
    let tb = Testbed::start(config).await.unwrap();
    let conn = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.unwrap();
    assert_eq!(oldest_apiserver_version(&conn).await.unwrap(), default_version().unwrap());

    // networking.k8s.io/v1beta1 IPAddress (deprecated 1.34, removed 1.37), asked of member 1 only.
    let ar = ApiResource {
        group: "networking.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "networking.k8s.io/v1beta1".into(),
        kind: "IPAddress".into(),
        plural: "ipaddresses".into(),
    };
    let beta: Api<DynamicObject> = Api::all_with(tb.member_client(1).await.unwrap(), &ar);
    beta.list(&ListParams::default()).await.expect("the opt-in beta is served");

    let signals = collect_signals(&conn, &Catalog::embedded().unwrap()).await.unwrap();
    let endpoints: Vec<&str> = signals
        .iter()
        .filter_map(|s| match s {
            Signal::Metric { endpoint, resource, version, .. }
                if resource == "ipaddresses" && version == "v1beta1" =>
            {
                Some(endpoint.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(endpoints, vec![tb.members()[1].apiserver_url().as_str()], "{signals:#?}");
    tb.stop();
}
