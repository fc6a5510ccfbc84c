//! Node actions killed half-way (issue 18 item 19): the sandbox's own node action, `refit
//! sandbox upgrade-node`, killed with SIGKILL between stopping a control-plane member's old
//! API server and starting the new one, leaves a node that running the same command again
//! finishes — as a real node's package upgrade would.

mod support;

use std::time::{Duration, Instant};

use refit_testbed::Testbed;
use support::{Sandbox, refit, release};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_upgrade_node_killed_between_stopping_the_old_apiserver_and_starting_the_new_is_finished_by_a_rerun()
 {
    let (from, to) = (release(36), release(37));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    let up = refit()
        .args(["sandbox", "up", "--version", &from, "--workers", "1", "--control-plane", "1", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _guard = Sandbox(dir.clone());
    assert!(up.status.success(), "sandbox up: {}", String::from_utf8_lossy(&up.stderr));

    // The upgrade, held right after it stopped the old apiserver (the test hook), then killed.
    let mut first = std::process::Command::new(assert_cmd::cargo::cargo_bin("refit"))
        .args(["sandbox", "upgrade-node", "control-plane-1", "--to", &to, "--dir"])
        .arg(&dir)
        .env("REFIT_TESTBED_HOLD_AFTER_STOP", "kube-apiserver")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = dir.join("held-kube-apiserver-0");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !held.exists() {
        assert!(Instant::now() < deadline, "upgrade-node never reached the point between stop and start");
        assert!(first.try_wait().unwrap().is_none(), "upgrade-node ended before stopping the apiserver");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    // The node is down as the issue found it: no API server answers.
    let tb = Testbed::attach(&dir).unwrap();
    assert!(tb.apiserver_version(0).await.is_err(), "an apiserver still answers after the kill");

    // The same command again finishes the swap.
    let again = refit()
        .args(["sandbox", "upgrade-node", "control-plane-1", "--to", &to, "-o", "json", "--dir"])
        .arg(&dir)
        .timeout(Duration::from_secs(600))
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "rerun failed: {}\n{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    let change: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(change["to"], format!("v{to}"));

    // Healthy at the new version: apiserver, controller-manager and scheduler of the target
    // running, the Node reporting it.
    let tb = Testbed::attach(&dir).unwrap();
    assert_eq!(tb.apiserver_version(0).await.unwrap(), format!("v{to}"));
    let member = &tb.members()[0];
    assert_eq!(member.binaries.version.to_string(), to);
    let running = tb.recorded_pids();
    for component in ["kube-apiserver-0", "kube-controller-manager-0", "kube-scheduler-0"] {
        let (_, pid, alive) = running.iter().find(|(n, _, _)| n == component).unwrap_or_else(|| {
            panic!("{component} is not recorded: {running:?}");
        });
        assert!(*alive, "{component} ({pid}) is not running");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(exe.to_string_lossy().contains(&to), "{component} runs {}", exe.display());
    }
    let client = tb.client().await.unwrap();
    let node: k8s_openapi::api::core::v1::Node = kube::Api::all(client).get("control-plane-1").await.unwrap();
    let kubelet = node.status.unwrap().node_info.unwrap().kubelet_version;
    assert_eq!(kubelet, format!("v{to}"));
}
