//! `refit controller`: two replicas against a real hub (the testbed's kube-apiserver) elect one
//! leader on the Lease `fleet/refit-controller`; `kill -9` of the leader hands leadership to the
//! other replica, whose `/metrics` and the Lease then say so. The takeover time is printed
//! (`--nocapture`), not asserted.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};

const NS: &str = "fleet";

type Replica = support::ControllerProcess;

fn start(kubeconfig: &std::path::Path) -> Replica {
    support::start_controller(kubeconfig, NS, None)
}

fn leading(r: &Replica) -> bool {
    let (status, body) = support::http_get(r.addr, "/metrics");
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
        assert_eq!(support::http_get(r.addr, "/healthz").0, 200);
    }
    // The follower is ready once its own first campaign has read the Lease (it may not have
    // when the leader already leads).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = support::http_get(follower.addr, "/readyz");
        if status == 200 || Instant::now() >= deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("follower of ") && body.contains(&format!("pid {}", leader.child.id())),
        "{body}"
    );
    // It stays that way over several renewals. (7 s, not a multiple of the followers' 2 s
    // retry: the kill lands mid-interval, so the measured takeover is not flattered by a
    // retry due just then.)
    tokio::time::sleep(Duration::from_secs(7)).await;
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
        "takeover after kill -9 of the leader: {:.2} s (lease duration {} s, follower retry {} s; same machine: the dead process is seen at the next retry)",
        took.as_secs_f64(),
        refit_controller::leader::DURATION.as_secs(),
        refit_controller::leader::RETRY.as_secs()
    );
    tb.stop();
}

/// The testbed's admin kubeconfig, impersonating `user` (kubeconfig `as:`), in `dir`.
fn kubeconfig_as(tb: &Testbed, dir: &std::path::Path, user: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(tb.kubeconfig()).unwrap();
    let mut cfg: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    for u in cfg["users"].as_array_mut().unwrap() {
        u["user"]["as"] = serde_json::json!(user);
    }
    let path = dir.join(format!("{user}.conf"));
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gate_approval_records_the_user_the_hub_authenticates_and_a_forged_one_is_refused() {
    let versions = TestbedVersions::from_env().unwrap();
    let version = versions.kubernetes.last().cloned().expect("the testbed builds at least one release");
    let tb = Testbed::start(TestbedConfig::new(version.clone(), 0)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubectl = |args: &[&str]| {
        let out = Command::new(tb.kubectl(&version).unwrap())
            .arg("--kubeconfig")
            .arg(tb.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let manifests = dir.path().join("hub.yaml");
    std::fs::write(&manifests, support::stdout(support::refit().args(["controller", "manifests", "-n", NS])))
        .unwrap();
    kubectl(&["apply", "-f", manifests.to_str().unwrap()]);
    kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd/gates.refit.dev"]);
    kubectl(&[
        "-n",
        NS,
        "create",
        "rolebinding",
        "alice-approves",
        "--clusterrole",
        "refit-approver",
        "--user",
        "alice",
    ]);
    let gate = dir.path().join("gate.yaml");
    std::fs::write(
        &gate,
        format!(
            "apiVersion: refit.dev/v1alpha1\nkind: Gate\nmetadata: {{name: to-137.canary.after.1, namespace: {NS}}}\n\
             spec: {{run: to-137, gate: canary/after/1, type: Approval}}\n"
        ),
    )
    .unwrap();
    kubectl(&["apply", "-f", gate.to_str().unwrap()]);

    let fleet = |user: &str, args: &[&str]| {
        let conf = kubeconfig_as(&tb, dir.path(), user);
        support::refit()
            .arg("fleet")
            .arg("--hub")
            .arg(conf)
            .args(["--hub-namespace", NS])
            .args(args)
            .output()
            .unwrap()
    };
    // mallory has no RBAC binding: refused by the hub (the operator's to fix: exit 2), nothing
    // recorded.
    let out = fleet("mallory", &["gate", "approve", "to-137", "canary/after/1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("forbidden") && err.contains("mallory"), "{err}");
    // --by means nothing on a hub: bad input.
    let out = fleet("alice", &["gate", "approve", "to-137", "canary/after/1", "--by", "bob"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // Core's rules are checked before the hub is written: an approval of a run the hub does not
    // have is bad input, and nothing is written.
    let out = fleet("alice", &["gate", "approve", "to-137", "canary/after/1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no update run named 'to-137'"), "{err}");

    let nothing =
        kubectl(&["-n", NS, "get", "gate", "to-137.canary.after.1", "-o", "jsonpath={.spec.approval}"]);
    assert_eq!(nothing, "", "a refused approval left something behind");
    // kubectl as alice: the admission policy refuses an approval in another name, and records
    // hers (the hub's own identity, not a flag).
    let kubectl_as = |user: &str, patch: &str| {
        Command::new(tb.kubectl(&version).unwrap())
            .arg("--kubeconfig")
            .arg(kubeconfig_as(&tb, dir.path(), user))
            .args(["-n", NS, "patch", "gate", "to-137.canary.after.1", "--type", "merge", "-p", patch])
            .output()
            .unwrap()
    };
    let forged = kubectl_as("alice", r#"{"spec":{"approval":{"approver":"bob"}}}"#);
    let err = String::from_utf8_lossy(&forged.stderr);
    assert!(!forged.status.success(), "a forged approver was accepted");
    assert!(err.contains("must be the user making the request (alice)"), "{err}");
    assert_eq!(
        kubectl(&["-n", NS, "get", "gate", "to-137.canary.after.1", "-o", "jsonpath={.spec.approval}"]),
        "",
        "a forged approval left something behind"
    );
    let honest = kubectl_as("alice", r#"{"spec":{"approval":{"approver":"alice"}}}"#);
    assert!(honest.status.success(), "{}", String::from_utf8_lossy(&honest.stderr));
    let approver = kubectl(&[
        "-n",
        NS,
        "get",
        "gate",
        "to-137.canary.after.1",
        "-o",
        "jsonpath={.spec.approval.approver}",
    ]);
    assert_eq!(approver, "alice");
    tb.stop();
}
