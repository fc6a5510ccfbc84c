//! etcd health and the quorum rule against a REAL three-member etcd 3.6 (TLS, client
//! certificates): all healthy, then one member stopped — refit must refuse to take a second
//! member down, and may upgrade the stopped one.

use std::time::{Duration, Instant};

use refit_core::health::etcd::{EtcdHealth, EtcdRefusal};
use refit_exec::backup::EtcdEndpoint;
use refit_exec::etcd::etcd_health;
use refit_testbed::etcd_cluster::EtcdCluster;

fn endpoints(c: &EtcdCluster) -> Vec<EtcdEndpoint> {
    let pki = c.pki();
    c.client_urls()
        .into_iter()
        .map(|url| EtcdEndpoint {
            url,
            ca_file: pki.ca_cert.clone(),
            cert_file: pki.admin_cert.clone(),
            key_file: pki.admin_key.clone(),
        })
        .collect()
}

/// Reads health until `done` says so (a starting or stopping member takes a few seconds to
/// show), failing the test with the last reading after a minute.
async fn health_until(eps: &[EtcdEndpoint], done: impl Fn(&EtcdHealth) -> bool) -> EtcdHealth {
    let start = Instant::now();
    loop {
        let h = etcd_health(eps).await;
        match h {
            Ok(h) if done(&h) => return h,
            other => {
                assert!(start.elapsed() < Duration::from_secs(60), "etcd never got there: {other:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn three_members_with_one_stopped_refuse_a_second_member_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 3).await.unwrap();
    let eps = endpoints(&cluster);
    let h = health_until(&eps, |h| h.members.len() == 3 && h.members.iter().all(|m| m.healthy)).await;
    assert!(h.alarms.is_empty(), "{h:?}");
    h.check().unwrap();
    for m in ["etcd-0", "etcd-1", "etcd-2"] {
        h.may_take_down(m).unwrap();
    }

    cluster.stop_member(2);
    let h = health_until(&eps, |h| h.members.iter().any(|m| m.name == "etcd-2" && !m.healthy)).await;
    assert_eq!(h.members.iter().filter(|m| m.healthy).count(), 2, "{h:?}");
    let e = h.check().unwrap_err().to_string();
    assert!(e.contains("etcd-2"), "{e}");
    match h.may_take_down("etcd-0") {
        Err(EtcdRefusal::WouldLoseQuorum { healthy_after: 1, voters: 3, quorum: 2, unhealthy, .. }) => {
            assert!(unhealthy.starts_with("etcd-2"), "{unhealthy}")
        }
        other => panic!("{other:?}"),
    }
    h.may_take_down("etcd-2").unwrap();

    // Back: healthy again.
    cluster.start_member(2).unwrap();
    health_until(&eps, |h| h.members.iter().all(|m| m.healthy)).await.check().unwrap();
}
