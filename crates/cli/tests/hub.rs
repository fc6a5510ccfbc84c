//! Hub mode end to end: a real hub (the testbed's kube-apiserver) with refit's CRDs applied
//! from `refit controller manifests`, two real sandbox clusters as Members (kubeconfigs in
//! Secrets), a two-stage UpdateStrategy with an after-stage Approval gate, and an UpdateRun
//! created through the API with `state: Run`. The controller (a local `refit controller`
//! process, since kwok runs no pods) drives it with the fleet driver over the hub's resources:
//! the canary member is upgraded, the run waits on the gate, `refit fleet --hub gate approve`
//! releases it, the second stage runs and the run Succeeds. Events and `/metrics` are
//! asserted; a Member whose Secret reaches another cluster than the one it is bound to is
//! refused and nothing is launched at it. API requests against the hub are counted per member
//! upgrade and printed (`--nocapture`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};
use serde_json::json;
use support::{Sandbox, http_get, refit, release, start_controller};

const NS: &str = "fleet";

const SANDBOX_ACCEPTS: [&str; 3] =
    ["--accept=etcd-members", "--accept=control-plane-count", "--accept=worker-count"];

/// A sandbox cluster at 1.36 with one worker, and the exec action that upgrades its nodes.
fn sandbox(root: &Path, name: &str, script: &Path) -> (Sandbox, PathBuf, String) {
    let dir = root.join(name);
    let out = refit()
        .args(["sandbox", "up", "--version", &release(36), "--workers", "1", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let guard = Sandbox(dir.clone());
    assert!(out.status.success(), "sandbox up: {}", String::from_utf8_lossy(&out.stderr));
    let action = format!("exec:{} {} {{node}} {{to}}", script.display(), dir.display());
    (guard, dir, action)
}

/// The kube-system UID of the cluster `kubeconfig` reaches.
async fn cluster_uid(kubeconfig: &Path) -> String {
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    ns.get("kube-system").await.unwrap().metadata.uid.unwrap()
}

/// The hub's count of API requests to refit's resources, Secrets and Events (its own
/// `apiserver_request_total`), by verb and resource.
async fn hub_requests(client: &kube::Client) -> BTreeMap<(String, String), u64> {
    let text = client.request_text(http::Request::get("/metrics").body(Vec::new()).unwrap()).await.unwrap();
    let label = |l: &str, k: &str| {
        l.split_once(&format!("{k}=\""))
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(v, _)| v.to_string())
            .unwrap_or_default()
    };
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let resource = label(l, "resource");
        if !(l.contains("group=\"refit.dev\"") || resource == "secrets" || resource == "events") {
            continue;
        }
        let n = l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        let sub = label(l, "subresource");
        let key = (label(l, "verb"), if sub.is_empty() { resource } else { format!("{resource}/{sub}") });
        *out.entry(key).or_insert(0) += n;
    }
    out
}

async fn eventually<T>(
    what: &str,
    timeout: Duration,
    log: &Path,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what}: not within {timeout:?}; controller log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_run_waits_on_its_gate_until_approved_and_succeeds_and_a_rebound_member_is_refused() {
    let versions = TestbedVersions::from_env().unwrap();
    let version = versions.kubernetes.last().cloned().expect("the testbed builds at least one release");
    let hub = Testbed::start(TestbedConfig::new(version.clone(), 0)).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let log = root.join("controller.log");
    let kubectl = |args: &[&str]| {
        let out = Command::new(hub.kubectl(&version).unwrap())
            .arg("--kubeconfig")
            .arg(hub.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let manifests = root.join("hub.yaml");
    std::fs::write(&manifests, support::stdout(refit().args(["controller", "manifests", "-n", NS]))).unwrap();
    kubectl(&["apply", "-f", manifests.to_str().unwrap()]);
    for crd in ["members", "updatestrategies", "updateruns", "gates", "clusterupgrades"] {
        kubectl(&["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{crd}.refit.dev")]);
    }

    // Two sandbox members; their node action upgrades the node in the sandbox.
    let script = root.join("node.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$2\" >> \"$1/actions.log\"\nexec '{}' sandbox upgrade-node --dir \"$1\" \"$2\" --to \"$3\"\n",
            assert_cmd::cargo::cargo_bin("refit").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_g1, canary_dir, canary_action) = sandbox(root, "canary-1", &script);
    let (_g2, prod_dir, prod_action) = sandbox(root, "prod-1", &script);

    let client = hub.client().await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let dynamic = |kind: &str| {
        let ar = kube::api::ApiResource {
            group: "refit.dev".into(),
            version: "v1alpha1".into(),
            api_version: "refit.dev/v1alpha1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()).replace("strategys", "strategies"),
        };
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), NS, &ar)
    };
    let members = dynamic("Member");
    let post = PostParams::default();
    let add_member = async |name: &str, group: &str, kubeconfig: &Path, action: &str| {
        // The exec action's upgrade backs up the member sandbox's own etcd (issue 18 item 9).
        let sandbox = kubeconfig.parent().unwrap();
        let mut upgrade_args: Vec<String> = SANDBOX_ACCEPTS.iter().map(|a| a.to_string()).collect();
        upgrade_args.extend(support::etcd_backup_args(&Testbed::attach(sandbox).unwrap()));
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-kubeconfig")},
            "stringData": {"kubeconfig": std::fs::read_to_string(kubeconfig).unwrap()}
        }))
        .unwrap();
        secrets.create(&post, &secret).await.unwrap();
        let m: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "refit.dev/v1alpha1", "kind": "Member",
            "metadata": {"name": name},
            "spec": {
                "kubeconfigSecret": {"name": format!("{name}-kubeconfig")},
                "context": "refit-testbed",
                "updateGroup": group,
                "action": action,
                "upgradeArgs": upgrade_args,
            }
        }))
        .unwrap();
        members.create(&post, &m).await.unwrap();
    };
    add_member("canary-1", "canary", &canary_dir.join("kubeconfig"), &canary_action).await;
    add_member("prod-1", "prod", &prod_dir.join("kubeconfig"), &prod_action).await;
    // Bound to prod-1's cluster, but its Secret now reaches canary-1's: a swapped kubeconfig.
    add_member("rogue-1", "rogue", &canary_dir.join("kubeconfig"), &canary_action).await;
    let prod_uid = cluster_uid(&prod_dir.join("kubeconfig")).await;
    members
        .patch_status(
            "rogue-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"clusterUid": prod_uid}})),
        )
        .await
        .unwrap();

    let strategies = dynamic("UpdateStrategy");
    for (name, stages) in [
        (
            "two-stage",
            json!([
                {"name": "canary", "groups": [{"name": "canary"}], "afterGates": [{"type": "Approval"}]},
                {"name": "prod", "groups": [{"name": "prod"}]}
            ]),
        ),
        ("rogue-only", json!([{"name": "rogue", "groups": [{"name": "rogue"}]}])),
    ] {
        let s: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "refit.dev/v1alpha1", "kind": "UpdateStrategy",
            "metadata": {"name": name}, "spec": {"stages": stages}
        }))
        .unwrap();
        strategies.create(&post, &s).await.unwrap();
    }
    let runs = dynamic("UpdateRun");
    let new_run = |name: &str, strategy: &str| -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "refit.dev/v1alpha1", "kind": "UpdateRun",
            "metadata": {"name": name},
            "spec": {"upgradeType": "Full", "kubernetesVersion": release(37), "strategy": strategy, "state": "Run"}
        }))
        .unwrap()
    };
    runs.create(&post, &new_run("to-137", "two-stage")).await.unwrap();

    let before = hub_requests(&client).await;
    let started = Instant::now();
    let controller = start_controller(&hub.kubeconfig(), NS, Some(&log));
    let mut polls: u64 = 0;

    // The canary is upgraded, then the run waits on the gate; prod-1 has not started.
    let gates = dynamic("Gate");
    eventually("the canary's after-stage gate is reached", Duration::from_secs(300), &log, async || {
        polls += 1;
        let g = gates.get_opt("to-137.canary.after.1").await.unwrap()?;
        (g.data["status"]["state"] == "Pending").then_some(())
    })
    .await;
    let run = runs.get("to-137").await.unwrap();
    let tree = serde_json::to_string(&run.data["status"]["run"]).unwrap();
    assert_eq!(run.data["status"]["state"], "Pending", "{tree}");
    assert!(
        std::fs::read_to_string(prod_dir.join("actions.log")).is_err(),
        "prod-1 was touched before the gate was approved"
    );
    assert!(std::fs::read_to_string(canary_dir.join("actions.log")).unwrap().lines().count() >= 2);

    // Approved as the hub's authenticated user: the run goes on and succeeds.
    let out = refit()
        .args(["fleet", "--hub"])
        .arg(hub.kubeconfig())
        .args(["--hub-namespace", NS, "gate", "approve", "to-137", "canary/after/1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = eventually("the run succeeds", Duration::from_secs(300), &log, async || {
        polls += 1;
        let r = runs.get("to-137").await.unwrap();
        matches!(r.data["status"]["state"].as_str(), Some("Completed" | "Failed")).then_some(r)
    })
    .await;
    let after = hub_requests(&client).await;
    let run_secs = started.elapsed().as_secs();
    let status = &run.data["status"];
    assert_eq!(status["state"], "Completed", "{status}");
    assert_eq!((status["done"].as_u64(), status["members"].as_u64()), (Some(2), Some(2)));
    let generation = run.metadata.generation.unwrap();
    let conditions = status["conditions"].as_array().unwrap();
    let condition =
        |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap_or_else(|| panic!("{t}: {status}"));
    assert_eq!(condition("Initialized")["status"], "True");
    assert_eq!(condition("Progressing")["status"], "False");
    assert_eq!(condition("Succeeded")["status"], "True");
    assert_eq!(condition("Succeeded")["observedGeneration"], generation);
    assert_eq!(status["observedGeneration"], generation);
    let gate = gates.get("to-137.canary.after.1").await.unwrap();
    assert_eq!(gate.data["status"]["state"], "Completed");
    let approver = gate.data["spec"]["approval"]["approver"].as_str().unwrap().to_string();
    assert_eq!(gate.data["status"]["approvedBy"], approver.as_str());
    // Each member's detail and journal object.
    let upgrades = dynamic("ClusterUpgrade");
    for m in ["canary-1", "prod-1"] {
        let cu = upgrades.get(&format!("to-137.{m}")).await.unwrap();
        assert_eq!(cu.data["status"]["state"], "Completed", "{m}: {:?}", cu.data);
        assert_eq!(cu.data["spec"]["run"], "to-137");
    }
    // Both clusters really moved.
    for dir in [&canary_dir, &prod_dir] {
        let nodes = std::fs::read_to_string(dir.join("actions.log")).unwrap();
        assert_eq!(nodes.lines().count(), 2, "{}: {nodes}", dir.display());
    }

    // Events, as `kubectl describe` shows them.
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), NS);
    let list = events.list(&ListParams::default()).await.unwrap();
    let seen: Vec<(String, String)> = list
        .items
        .iter()
        .map(|e| {
            (
                e.regarding.as_ref().and_then(|r| r.kind.clone()).unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
            )
        })
        .collect();
    for want in [
        ("UpdateRun", "Initialized"),
        ("UpdateRun", "Started"),
        ("Gate", "WaitingOnGate"),
        ("UpdateRun", "WaitingOnGate"),
        ("Gate", "Approved"),
        ("Member", "Bound"),
        ("Member", "UpgradeStarted"),
        ("Member", "UpgradeSucceeded"),
        ("UpdateRun", "Completed"),
    ] {
        assert!(seen.iter().any(|(k, r)| (k.as_str(), r.as_str()) == want), "no {want:?} event in {seen:?}");
    }

    // Metrics of the leader.
    let (code, metrics) = http_get(controller.addr, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "refit_controller_leader 1",
        "refit_controller_run_state{run=\"to-137\",state=\"Completed\"} 1",
        "refit_controller_run_state{run=\"to-137\",state=\"Pending\"} 0",
        "refit_controller_gates_pending{run=\"to-137\"} 0",
        "refit_controller_member_upgrade_duration_seconds_count{outcome=\"succeeded\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no '{line}' in\n{metrics}");
    }

    // A member whose Secret reaches another cluster than the one it is bound to: refused,
    // nothing launched at that cluster.
    let actions_before = std::fs::read_to_string(canary_dir.join("actions.log")).unwrap();
    runs.create(&post, &new_run("rogue-run", "rogue-only")).await.unwrap();
    let why = eventually("the rebound member is refused", Duration::from_secs(120), &log, async || {
        let r = runs.get("rogue-run").await.unwrap();
        let tree = serde_json::to_string(&r.data["status"]).unwrap();
        tree.contains("reaches another cluster").then_some(tree)
    })
    .await;
    assert!(why.contains(&prod_uid), "{why}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_to_string(canary_dir.join("actions.log")).unwrap(), actions_before);
    assert!(
        upgrades
            .get_opt("rogue-run.rogue-1")
            .await
            .unwrap()
            .is_none_or(|cu| cu.data["status"]["state"] != "Running")
    );

    // What the hub served for the first run (its two member upgrades), less this test's own
    // polling (GETs of updateruns and gates): printed, not asserted.
    let mut by_kind: Vec<((String, String), u64)> = after
        .iter()
        .map(|(k, n)| (k.clone(), n.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, n)| *n > 0)
        .collect();
    by_kind.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let total: u64 = by_kind.iter().map(|(_, n)| n).sum::<u64>().saturating_sub(polls);
    println!(
        "hub API requests (refit resources, Secrets, Events) for a 2-member, 2-stage run in {run_secs} s: {total} (~{} per member upgrade; includes the polling while the run waited on its gate); by verb and resource, the test's {polls} polls included: {by_kind:?}",
        total / 2
    );
    drop(controller);
    hub.stop();
}
