//! A node that writes hostile values about itself (issue 18 item 8), on a real testbed: an
//! InternalIP of `-oProxyCommand=touch FILE` and a kubeletVersion of `$(touch FILE)` — what a
//! compromised kubelet can write into its own Node status. `refit plan` blocks both nodes by
//! name, `refit upgrade` changes nothing, and a run that ignores the safety checks still never
//! hands either value to the node action.

mod support;

use std::path::Path;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use refit_testbed::Testbed;
use serde_json::{Value, json};
use support::{Sandbox, refit, release};

async fn hostile_status(nodes: &Api<Node>, name: &str, status: Value) {
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({ "status": status })))
        .await
        .unwrap();
}

fn node_findings(plan: &Value, node: &str) -> Vec<String> {
    plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["subject"] == format!("node/{node}"))
        .map(|f| format!("{}: {}", f["check"].as_str().unwrap(), f["message"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_hostile_address_or_version_is_blocked_and_never_handed_on() {
    let from = release(36);
    let to = release(37);
    // A detached sandbox stopped by its guard: the action's `refit sandbox upgrade-node` starts
    // the control plane's new processes, which an in-process testbed would not stop.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    let up = refit()
        .args(["sandbox", "up", "--version", &from, "--workers", "2", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _guard = Sandbox(dir.clone());
    assert!(up.status.success(), "sandbox up: {}", String::from_utf8_lossy(&up.stderr));
    let tb = Testbed::attach(&dir).unwrap();
    let client = tb.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let proof = tmp.path().join("pwned");
    let address = format!("-oProxyCommand=touch {}", proof.display());
    let version = format!("$(touch {})", proof.display());
    hostile_status(&nodes, "worker-001", json!({"addresses": [{"type": "InternalIP", "address": address}]}))
        .await;
    hostile_status(&nodes, "worker-002", json!({"nodeInfo": {"kubeletVersion": version}})).await;
    // The apiserver keeps what the node wrote (nothing validates these fields).
    let w1 = nodes.get("worker-001").await.unwrap();
    let status = w1.status.unwrap();
    let w1_from = status.node_info.unwrap().kubelet_version.trim_start_matches('v').to_string();
    let seen = status.addresses.unwrap();
    assert!(seen.iter().any(|a| a.address == address), "{seen:?}");

    let kubeconfig = tb.kubeconfig();
    let plan =
        refit().args(["plan", "--to", &to, "-o", "json", "--kubeconfig"]).arg(&kubeconfig).output().unwrap();
    assert_eq!(plan.status.code(), Some(1), "blocked: {}", String::from_utf8_lossy(&plan.stderr));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let w1 = node_findings(&plan, "worker-001");
    assert!(
        w1.iter()
            .any(|f| f.starts_with("node-address-invalid: its InternalIP address '-oProxyCommand=touch")
                && f.contains("neither an IP address nor a DNS name")),
        "{w1:?}"
    );
    let w2 = node_findings(&plan, "worker-002");
    assert!(w2.iter().any(|f| f.starts_with("node-version-invalid: its kubeletVersion '$(touch")), "{w2:?}");

    // The upgrade is blocked the same way: nothing is cordoned, no action runs.
    let (script, log) = logging_action(tmp.path());
    let store = tmp.path().join("state/refit.db");
    let upgrade = |extra: &[&str]| {
        let mut c = refit();
        c.args(["upgrade", "--to", &to, "--yes", "--max-unavailable", "2", "--kubeconfig"])
            .arg(&kubeconfig)
            .env("REFIT_SANDBOX_DIR", tb.dir())
            .arg("--store")
            .arg(&store)
            .arg("--action")
            .arg(format!("exec:{} {{node}} {{address}} {{from}}", script.display()))
            .args(support::etcd_backup_args(&tb))
            .args(extra);
        c.output().unwrap()
    };
    let out = upgrade(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!log.exists(), "no action ran");
    for n in nodes.list(&Default::default()).await.unwrap() {
        assert_ne!(n.spec.and_then(|s| s.unschedulable), Some(true), "nothing cordoned");
    }

    // An operator who ignores the safety checks still never passes the values on: the
    // action sees an empty {address} and {from} (and REFIT_ADDRESS, REFIT_FROM).
    let out = upgrade(&["--ignore-safety-checks"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = std::fs::read_to_string(&log).unwrap();
    let line = |node: &str| lines.lines().find(|l| l.starts_with(&format!("{node}|"))).unwrap_or_default();
    assert_eq!(line("worker-001"), format!("worker-001||{}||{}", w1_from, w1_from), "{lines}");
    let w2: Vec<&str> = line("worker-002").split('|').collect();
    assert_eq!(w2.len(), 5, "{lines}");
    assert!(w2[1].parse::<std::net::IpAddr>().is_ok() && w2[1] == w2[3], "its real address: {lines}");
    assert_eq!((w2[2], w2[4]), ("", ""), "an empty {{from}}: {lines}");
    assert!(!proof.exists(), "nothing ran the node's values");
}

/// An exec action that appends its arguments and the REFIT_ADDRESS/REFIT_FROM variables to a
/// log, one line per call, then upgrades the node as the sandbox does.
fn logging_action(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("action.sh");
    let log = dir.join("action.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s|%s|%s|%s|%s\\n' \"$1\" \"$2\" \"$3\" \"$REFIT_ADDRESS\" \"$REFIT_FROM\" >> '{}'\nexec '{}' sandbox upgrade-node \"$REFIT_NODE\" --to \"$REFIT_TO\"\n",
            log.display(),
            assert_cmd::cargo::cargo_bin("refit").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}
