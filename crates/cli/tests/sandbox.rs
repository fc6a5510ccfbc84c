//! `refit sandbox` and friends, run as a user runs them: the real binary, a real sandbox.

use std::path::Path;

use assert_cmd::Command;

mod support;
use support::{Sandbox, json, refit, release, stdout};

#[test]
fn bad_input_is_refused_with_exit_code_2_and_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sandbox", "up", "--version", "banana"], "not a Kubernetes version"),
        (vec!["sandbox", "up", "--version", "1.99"], "no 1.99.x release"),
        (vec!["sandbox", "up", "--version", "1.36.999"], "not in the testbed set"),
        (vec!["sandbox", "up", "--control-plane", "5"], "--control-plane must be 1, 2 or 3"),
        (vec!["sandbox", "status"], "no sandbox in"),
        (vec!["sandbox", "down"], "no sandbox in"),
        (vec!["sandbox", "upgrade-node", "worker-001", "--to", "1.37"], "no sandbox in"),
    ];
    for (args, expected) in cases {
        let out = refit().args(&args).arg("--dir").arg(&sb).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line, got {stderr}");
        assert!(!sb.exists(), "{args:?} changed nothing");
    }
}

#[test]
fn completions_and_help_have_examples() {
    let bash = stdout(refit().args(["completion", "bash"]));
    assert!(bash.contains("sandbox") && bash.contains("upgrade-node"));
    let help = stdout(refit().args(["sandbox", "upgrade-node", "--help"]));
    assert!(help.contains("Examples:"), "{help}");
}

fn assert_gone(pids: &[i64]) {
    for pid in pids {
        assert!(!refit_testbed::process::pid_alive(*pid as i32), "pid {pid} outlived `sandbox down`");
    }
}

#[test]
fn a_sandbox_lives_across_commands_and_upgrades_node_by_node() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Sandbox(dir.path().join("sandbox"));
    let dirarg = |c: &mut Command| -> () {
        c.arg("--dir").arg(&sb.0);
    };

    let mut up = refit();
    up.args(["sandbox", "up", "--version", "1.36", "--workers", "3", "--workloads", "demo"]);
    dirarg(&mut up);
    let text = stdout(&mut up);
    let kubeconfig = sb.0.join("kubeconfig");
    assert!(text.contains(&format!("export KUBECONFIG={}", kubeconfig.display())), "{text}");

    // A second `up` on the same directory is refused and leaves it running.
    let mut again = refit();
    again.args(["sandbox", "up"]);
    dirarg(&mut again);
    again.assert().code(2);

    let mut status = refit();
    status.args(["sandbox", "status", "-o", "json"]);
    dirarg(&mut status);
    let st = json(&mut status);
    assert_eq!(st["control_plane"][0]["version"], format!("v{}", release(36)));
    assert_eq!(st["nodes"].as_array().unwrap().len(), 4);
    assert!(st["processes"].as_array().unwrap().iter().all(|p| p["running"] == true));
    let pids: Vec<i64> =
        st["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_i64().unwrap()).collect();

    // The demo workloads are there, through kubectl like a user would look.
    let kubectl =
        refit_testbed::Cache::from_env().unwrap().kubernetes(&release(36).parse().unwrap()).unwrap().kubectl;
    let out = std::process::Command::new(&kubectl)
        .args(["get", "deploy,sts,ds,pdb,pods", "-n", "demo", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let listing = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for name in [
        "deployment.apps/web",
        "deployment.apps/singleton",
        "deployment.apps/cache",
        "statefulset.apps/db",
        "daemonset.apps/node-agent",
        "poddisruptionbudget.policy/web",
        "pod/debug-shell",
    ] {
        assert!(listing.contains(name), "{name} missing from:\n{listing}");
    }

    // Upgrade the control-plane node, then a worker, the way a per-node script would.
    let mut cp = refit();
    cp.args(["sandbox", "upgrade-node", "control-plane-1", "--to", "1.37", "-o", "json"]);
    dirarg(&mut cp);
    let change = json(&mut cp);
    assert_eq!(change["role"], "control-plane");
    assert_eq!(change["to"], format!("v{}", release(37)));
    let mut w = refit();
    w.args(["sandbox", "upgrade-node", "worker-002", "--to", &release(37)]);
    dirarg(&mut w);
    w.assert().success();

    let mut status = refit();
    status.args(["sandbox", "status", "-o", "json"]);
    dirarg(&mut status);
    let st = json(&mut status);
    assert_eq!(st["control_plane"][0]["version"], format!("v{}", release(37)));
    let node =
        |name: &str| st["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap().clone();
    assert_eq!(node("worker-002")["kubelet"], format!("v{}", release(37)));
    assert_eq!(node("worker-001")["kubelet"], format!("v{}", release(36)));
    let new_pids: Vec<i64> =
        st["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_i64().unwrap()).collect();

    // Replace-style node management.
    let mut add = refit();
    add.args([
        "sandbox",
        "add-node",
        "worker-new",
        "--label",
        "pool=blue",
        "--taint",
        "dedicated=db:NoSchedule",
    ]);
    dirarg(&mut add);
    add.assert().success();
    let mut rm = refit();
    rm.args(["sandbox", "remove-node", "worker-new"]);
    dirarg(&mut rm);
    rm.assert().success();
    let mut rm_cp = refit();
    rm_cp.args(["sandbox", "remove-node", "control-plane-1"]);
    dirarg(&mut rm_cp);
    rm_cp.assert().code(2);

    // A stopped kubelet: kwok lets go of the node (its lease is no longer renewed); started
    // again, the node is Ready. An unknown node is bad input.
    let lease_renewed = |node: &str| {
        let out = std::process::Command::new(&kubectl)
            .args([
                "get",
                "lease",
                node,
                "-n",
                "kube-node-lease",
                "-o",
                "jsonpath={.spec.renewTime}",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut stop = refit();
    stop.args(["sandbox", "stop-kubelet", "worker-001"]);
    dirarg(&mut stop);
    stop.assert().success();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let stopped_at = lease_renewed("worker-001");
    std::thread::sleep(std::time::Duration::from_secs(25));
    assert_eq!(lease_renewed("worker-001"), stopped_at, "nothing renews a stopped kubelet's lease");
    let mut start = refit();
    start.args(["sandbox", "start-kubelet", "worker-001", "-o", "json"]);
    dirarg(&mut start);
    assert_eq!(json(&mut start)["running"], true);
    let renewed = std::time::Instant::now();
    while lease_renewed("worker-001") == stopped_at {
        assert!(renewed.elapsed() < std::time::Duration::from_secs(30), "the lease is renewed again");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let mut unknown = refit();
    unknown.args(["sandbox", "stop-kubelet", "worker-999"]);
    dirarg(&mut unknown);
    unknown.assert().code(2);

    let mut down = refit();
    down.args(["sandbox", "down"]);
    dirarg(&mut down);
    down.assert().success();
    assert!(!Path::new(&sb.0).exists());
    assert_gone(&pids);
    assert_gone(&new_pids);
}
