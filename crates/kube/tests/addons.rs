//! Add-on upgrades (kube-proxy DaemonSet, CoreDNS Deployment) on a REAL testbed of its own:
//! these tests change kube-system, so they do not share the test binary's testbed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use refit_core::Version;
use refit_core::addons::targets;
use refit_core::catalog::Catalog;
use refit_kube::addons::{AddonEvent, AddonTargets, upgrade_addons};
use refit_kube::{ClusterTarget, Connection, Error, connect};
use refit_testbed::{Testbed, TestbedConfig, default_version};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(180);

async fn images(conn: &Connection, label: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(conn.client.clone(), "kube-system");
    let list = pods.list(&ListParams::default().labels(label)).await.unwrap();
    list.items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter().filter_map(|c| c.image.clone())))
        .collect()
}

async fn nodes(conn: &Connection) -> usize {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(conn.client.clone());
    nodes.list(&ListParams::default()).await.unwrap().items.len()
}

#[tokio::test]
async fn addons_move_to_the_targets_pairing_then_stay_and_absent_ones_are_skipped() {
    let from = default_version().unwrap();
    let tb = Testbed::start(TestbedConfig::new(from.clone(), 3)).await.unwrap();
    let conn = connect(&ClusterTarget { kubeconfig: Some(tb.kubeconfig()), context: None }).await.unwrap();
    let catalog = Catalog::embedded().unwrap();
    let to: Version = "1.37.1".parse().unwrap();
    let t = targets(&catalog, &to);
    assert_eq!(
        t,
        AddonTargets {
            kube_proxy: Some("v1.37.1".into()),
            coredns: Some("v1.14.6".into()),
            owner: Default::default()
        }
    );
    let before_dns = format!(
        "registry.k8s.io/coredns/coredns:{}",
        catalog.release(from.minor_version()).unwrap().kubeadm.coredns
    );
    let before_proxy = format!("registry.k8s.io/kube-proxy:{}", from.git_version());
    assert!(images(&conn, "k8s-app=kube-proxy").await.iter().all(|i| *i == before_proxy));

    // 1. The upgrade: both patched, rolled out, every pod at the new image.
    let events = Mutex::new(Vec::<AddonEvent>::new());
    let start = Instant::now();
    let report = upgrade_addons(&conn, &t, TIMEOUT, &|e| events.lock().unwrap().push(e)).await.unwrap();
    let took = start.elapsed();
    let events = events.into_inner().unwrap();
    for e in &events {
        eprintln!("{e:?}");
    }
    let new_dns = "registry.k8s.io/coredns/coredns:v1.14.6".to_string();
    let new_proxy = "registry.k8s.io/kube-proxy:v1.37.1".to_string();
    assert_eq!(
        report.changed,
        vec![
            ("coredns".to_string(), before_dns.clone(), new_dns.clone()),
            ("kube-proxy".to_string(), before_proxy.clone(), new_proxy.clone()),
        ]
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    for addon in ["coredns", "kube-proxy"] {
        let pos = |f: &dyn Fn(&AddonEvent) -> bool| events.iter().position(f);
        let patching = pos(&|e| matches!(e, AddonEvent::Patching { addon: a, .. } if a == addon)).unwrap();
        let rolling = pos(&|e| matches!(e, AddonEvent::Rolling { addon: a, .. } if a == addon)).unwrap();
        let done = pos(&|e| matches!(e, AddonEvent::Done { addon: a } if a == addon)).unwrap();
        assert!(patching < rolling && rolling < done, "{addon}: {events:?}");
    }
    // The last Rolling event of each add-on is the finished state.
    let n = nodes(&conn).await as i32;
    let last_rolling = |addon: &str| {
        events
            .iter()
            .rev()
            .find_map(|e| match e {
                AddonEvent::Rolling { addon: a, updated, desired, available } if a == addon => {
                    Some((*updated, *desired, *available))
                }
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(last_rolling("kube-proxy"), (n, n, n), "one kube-proxy per node, all updated: {events:?}");
    assert_eq!(last_rolling("coredns"), (2, 2, 2));
    let proxy_images = images(&conn, "k8s-app=kube-proxy").await;
    assert_eq!(proxy_images.len(), n as usize);
    assert!(proxy_images.iter().all(|i| *i == new_proxy), "{proxy_images:?}");
    let dns_images = images(&conn, "k8s-app=kube-dns").await;
    assert_eq!(dns_images, vec![new_dns.clone(), new_dns.clone()]);
    let rolling_events = events.iter().filter(|e| matches!(e, AddonEvent::Rolling { .. })).count();
    println!(
        "add-on rollout on {n} nodes: coredns (2 replicas) + kube-proxy ({n} pods) in {:.1} s, {rolling_events} progress events",
        took.as_secs_f64()
    );

    // 2. The same call again: nothing patched, both skipped as already there.
    let ds: Api<DaemonSet> = Api::namespaced(conn.client.clone(), "kube-system");
    let generation = ds.get("kube-proxy").await.unwrap().metadata.generation;
    let events = Mutex::new(Vec::<AddonEvent>::new());
    let again = upgrade_addons(&conn, &t, TIMEOUT, &|e| events.lock().unwrap().push(e)).await.unwrap();
    let events = events.into_inner().unwrap();
    assert!(again.changed.is_empty(), "{again:?}");
    assert_eq!(again.skipped.len(), 2);
    assert!(again.skipped.iter().all(|(_, why)| why.contains("already at")), "{again:?}");
    assert!(
        events.iter().all(|e| matches!(e, AddonEvent::Skipped { .. })),
        "no patch, no rollout: {events:?}"
    );
    assert_eq!(ds.get("kube-proxy").await.unwrap().metadata.generation, generation, "not touched");

    // 3. Resume: a run that died after patching finds the image at the target; it patches
    // nothing but still waits for the rollout (slowed down with minReadySeconds here, so the
    // call certainly starts before the rollout ends).
    let deployments: Api<Deployment> = Api::namespaced(conn.client.clone(), "kube-system");
    let resumed_dns = "registry.k8s.io/coredns/coredns:v1.14.7";
    deployments
        .patch(
            "coredns",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"minReadySeconds": 3, "template": {"spec": {"containers": [
                {"name": "coredns", "image": resumed_dns}
            ]}}}})),
        )
        .await
        .unwrap();
    let t_resume =
        AddonTargets { kube_proxy: t.kube_proxy.clone(), coredns: Some("v1.14.7".into()), owner: t.owner };
    let events = Mutex::new(Vec::<AddonEvent>::new());
    let r = upgrade_addons(&conn, &t_resume, TIMEOUT, &|e| events.lock().unwrap().push(e)).await.unwrap();
    let events = events.into_inner().unwrap();
    assert!(r.changed.is_empty() && r.skipped.iter().all(|(_, why)| why.contains("already at")), "{r:?}");
    assert!(
        events.iter().any(|e| matches!(e, AddonEvent::Rolling { addon, .. } if addon == "coredns")),
        "the unfinished rollout was awaited: {events:?}"
    );
    let st = deployments.get("coredns").await.unwrap().status.unwrap();
    assert_eq!((st.updated_replicas, st.available_replicas, st.replicas), (Some(2), Some(2), Some(2)));
    assert_eq!(images(&conn, "k8s-app=kube-dns").await, vec![resumed_dns.to_string(); 2]);

    // 4. An absent add-on is skipped with the reason; no target means no change either.
    deployments.delete("coredns", &DeleteParams::default()).await.unwrap();
    let t2 = AddonTargets { kube_proxy: None, coredns: Some("v1.99.0".into()), owner: Default::default() };
    let events = Mutex::new(Vec::<AddonEvent>::new());
    let r = upgrade_addons(&conn, &t2, TIMEOUT, &|e| events.lock().unwrap().push(e)).await.unwrap();
    assert!(r.changed.is_empty());
    let why = |addon: &str| r.skipped.iter().find(|(a, _)| a == addon).map(|(_, w)| w.clone()).unwrap();
    assert!(why("coredns").contains("no Deployment kube-system/coredns"), "{r:?}");
    assert!(why("kube-proxy").contains("no target version"), "{r:?}");
    assert_eq!(events.into_inner().unwrap().len(), 2);

    // 5. A rollout that cannot finish: CoreDNS recreated with pods that fit no node. The wait
    // ends with an error naming the add-on and what is not ready.
    deployments
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    "template": {
                        "metadata": {"labels": {"k8s-app": "kube-dns"}},
                        "spec": {
                            "nodeSelector": {"refit-test/nowhere": "true"},
                            "containers": [{"name": "coredns", "image": before_dns}],
                        },
                    },
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let t3 = AddonTargets { kube_proxy: None, coredns: Some("v1.14.6".into()), owner: Default::default() };
    let err = upgrade_addons(&conn, &t3, Duration::from_secs(5), &|_| {}).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, Error::Addon { ref addon, .. } if addon == "coredns"), "{msg}");
    assert!(msg.contains("not rolled out after 5s") && msg.contains("0 available"), "{msg}");
    tb.stop();
}
