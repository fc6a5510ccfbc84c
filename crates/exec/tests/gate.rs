//! Health gates against a REAL Prometheus (3.16, built from the Go module proxy into the
//! testbed cache) scraping the testbed's real kube-apiserver over TLS, and a metrics endpoint
//! this test controls (so a condition can be made false and true again on cue).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use refit_core::health::{HealthGate, HealthGateSpec, Observation, Verdict};
use refit_exec::gate::{probe, wait};
use refit_testbed::prometheus::{Prometheus, ScrapeJob};
use refit_testbed::shared;

/// A `/metrics` endpoint serving `refit_test_health VALUE`.
struct Target {
    value: Arc<AtomicI64>,
    port: u16,
}

async fn serve_target() -> Target {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let value = Arc::new(AtomicI64::new(1));
    let v = value.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let v = v.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = format!("# TYPE refit_test_health gauge\nrefit_test_health {v}\n");
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    Target { value, port }
}

/// Prometheus scraping the shared testbed's apiserver(s) and the test's target (its data dir
/// lives as long as the returned TempDir).
async fn prometheus(target: &Target) -> (Prometheus, tempfile::TempDir) {
    let tb = shared().unwrap();
    let (_, pki) = tb.etcd_endpoint();
    let apiservers = tb.members().iter().map(|m| format!("127.0.0.1:{}", m.apiserver_port)).collect();
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        dir.path(),
        &[
            ScrapeJob {
                name: "apiserver".into(),
                targets: apiservers,
                tls: Some(pki),
                path: "/metrics".into(),
            },
            ScrapeJob {
                name: "test".into(),
                targets: vec![format!("127.0.0.1:{}", target.port)],
                tls: None,
                path: "/metrics".into(),
            },
        ],
    )
    .await
    .unwrap();
    (prom, dir)
}

fn gate(prom: &Prometheus, query: &str, condition: &str, soak: &str, timeout: &str) -> HealthGate {
    let yaml = format!(
        "{{type: prometheus, url: '{}', query: '{query}', condition: '{condition}', soak: {soak}, timeout: {timeout}}}",
        prom.url()
    );
    refit_core::yaml::from_str::<HealthGateSpec>(&yaml).unwrap().resolve(0).unwrap()
}

async fn run(g: &HealthGate) -> Verdict {
    let check = g.check.clone();
    wait(g, || probe(&check, &[]), &|reason| eprintln!("[{}] waiting: {reason}", g.name)).await
}

#[tokio::test]
async fn a_gate_on_the_apiservers_metrics() {
    let target = serve_target().await;
    let (prom, _dir) = prometheus(&target).await;
    // Passes on a healthy cluster once the first scrapes are in.
    let up = gate(&prom, "up{job=\"apiserver\"}", "== 1", "2s", "60s");
    assert!(matches!(run(&up).await, Verdict::Passed { .. }));
    let requests = gate(&prom, "sum(apiserver_request_total{job=\"apiserver\"})", "> 0", "0", "60s");
    assert!(matches!(run(&requests).await, Verdict::Passed { .. }));
    // The same metric with a condition that is false: fails at the timeout with the series.
    let down = gate(&prom, "up{job=\"apiserver\"}", "== 0", "0", "5s");
    match run(&down).await {
        Verdict::Failed { reason } => {
            assert!(reason.contains("timed out after 5s") && reason.contains("not == 0"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // `empty` (the default): an alert-style query selecting what is wrong.
    let alert = gate(&prom, "up{job=\"apiserver\"} == 0", "empty", "0", "30s");
    assert!(matches!(run(&alert).await, Verdict::Passed { .. }));
    // http gates: 2xx holds, anything else fails with the status.
    let ready = refit_core::health::HttpUrl::parse(&format!("{}/-/ready", prom.url())).unwrap();
    assert!(
        matches!(refit_exec::gate::http_check(&ready).await, Observation::Holds(ref d) if d == "HTTP 200")
    );
    let missing = refit_core::health::HttpUrl::parse(&format!("{}/no-such-page", prom.url())).unwrap();
    match refit_exec::gate::http_check(&missing).await {
        Observation::Fails(r) => assert!(r.contains("HTTP 404"), "{r}"),
        other => panic!("{other:?}"),
    }
    // A query Prometheus refuses is a failing observation naming Prometheus' error.
    let bad = gate(&prom, "sum(up", "empty", "0", "30s");
    match probe(&bad.check, &[]).await {
        Observation::Fails(r) => assert!(r.contains("bad_data"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_soak_restarts_on_a_dip() {
    let target = serve_target().await;
    let (prom, _dir) = prometheus(&target).await;
    let healthy = gate(&prom, "refit_test_health{job=\"test\"}", "== 1", "3s", "60s");
    assert!(matches!(run(&healthy).await, Verdict::Passed { .. }));

    // How fast a probe sees the condition turn (scrape every 1s + the probe).
    target.value.store(0, Ordering::SeqCst);
    let turned = Instant::now();
    loop {
        if let Observation::Fails(r) = probe(&healthy.check, &[]).await {
            eprintln!("condition turned false; seen after {:?}: {r}", turned.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Dips of 3s every 6s: a soak of 8s never completes, and the gate fails with the reason.
    let flapping = {
        let v = target.value.clone();
        tokio::spawn(async move {
            loop {
                v.store(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
                v.store(0, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        })
    };
    let soaking = gate(&prom, "refit_test_health{job=\"test\"}", "== 1", "8s", "25s");
    let verdict = run(&soaking).await;
    flapping.abort();
    assert!(
        matches!(&verdict, Verdict::Failed { reason } if reason.starts_with("timed out after 25s")),
        "{verdict:?}"
    );

    // A dip of 4s, then healthy: a 3s soak within 20s passes, an 18s soak cannot fit.
    for (soak, passes) in [("3s", true), ("18s", false)] {
        target.value.store(0, Ordering::SeqCst);
        let v = target.value.clone();
        let recover = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            v.store(1, Ordering::SeqCst);
        });
        let g = gate(&prom, "refit_test_health{job=\"test\"}", "== 1", soak, "20s");
        let verdict = run(&g).await;
        recover.await.unwrap();
        assert_eq!(matches!(verdict, Verdict::Passed { .. }), passes, "soak {soak}: {verdict:?}");
    }
}
