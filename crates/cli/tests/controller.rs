//! `refit controller`: two replicas against a real hub (the testbed's kube-apiserver) elect one
//! leader on the Lease `fleet/refit-controller`; `kill -9` of the leader hands leadership to the
//! other replica, whose `/metrics` and the Lease then say so. The takeover time is printed
//! (`--nocapture`), not asserted.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};

const NS: &str = "fleet";

struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(kubeconfig: &std::path::Path) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_refit"))
        .args(["controller", "-n", NS, "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the controller exited before listening").unwrap();
        if let Some(a) = line.strip_prefix("refit controller: listening on http://") {
            break a.parse().unwrap();
        }
    };
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Replica { child, addr }
}

/// A plain HTTP/1.0 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn leading(r: &Replica) -> bool {
    let (status, body) = get(r.addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines().any(|l| l == "refit_controller_leader 1")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_after_a_kill_9() {
    let versions = TestbedVersions::from_env().unwrap();
    let version = versions.kubernetes.last().cloned().expect("the testbed builds at least one release");
    let tb = Testbed::start(TestbedConfig::new(version, 0)).await.unwrap();
    tb.create_namespace(NS).await.unwrap();
    let a = start(&tb.kubeconfig());
    let b = start(&tb.kubeconfig());

    // Exactly one leads; both are alive and ready (the follower knows whom it follows).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (leader, follower) = loop {
        match (leading(&a), leading(&b)) {
            (true, false) => break (a, b),
            (false, true) => break (b, a),
            (true, true) => panic!("two leaders"),
            (false, false) => {}
        }
        assert!(Instant::now() < deadline, "no replica became leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for r in [&leader, &follower] {
        assert_eq!(get(r.addr, "/healthz").0, 200);
    }
    let (status, body) = get(follower.addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("follower of ") && body.contains(&format!("pid {}", leader.child.id())),
        "{body}"
    );
    // It stays that way over several renewals.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(leading(&leader) && !leading(&follower), "leadership moved without a reason");

    let leases: Api<Lease> = Api::namespaced(tb.client().await.unwrap(), NS);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    let before = holder(leases.get("refit-controller").await.unwrap());
    assert!(before.contains(&format!("pid {}", leader.child.id())), "{before}");

    // kill -9 the leader.
    let mut leader = leader;
    let killed_at = Instant::now();
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !leading(&follower) {
        assert!(Instant::now() < deadline, "the surviving replica never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed_at.elapsed();
    let after = leases.get("refit-controller").await.unwrap();
    let transitions = after.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
    assert!(holder(after).contains(&format!("pid {}", follower.child.id())));
    assert!(transitions >= 1, "a takeover counts a lease transition");
    println!(
        "takeover after kill -9 of the leader: {:.2} s (lease duration {} s; same machine: the dead process is seen at once)",
        took.as_secs_f64(),
        refit_controller::leader::DURATION.as_secs()
    );
    tb.stop();
}
