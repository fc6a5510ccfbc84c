//! `refit controller manifests` applied to a real hub (the testbed's kube-apiserver): the CRDs
//! are accepted and their schemas refuse malformed objects, `kubectl get updateruns` shows the
//! printer columns, RBAC refuses a user who may not approve, and the admission policy refuses
//! an approval recorded under someone else's name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod support;

use kube::api::{Api, Patch, PatchParams, PostParams};
use refit_controller::manifests::{self, APPROVER_ROLE, Options};
use refit_controller::resources::UpdateRun;
use refit_testbed::{Testbed, TestbedConfig, TestbedVersions};

const NS: &str = "fleet";

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        match stdin {
            None => cmd.output().unwrap(),
            Some(text) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
                child.wait_with_output().unwrap()
            }
        }
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects a refusal; returns the error text.
    fn refused(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "kubectl {args:?} was accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        err
    }
}

fn gate(name: &str) -> String {
    format!(
        "apiVersion: refit.dev/v1alpha1\nkind: Gate\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec: {{run: to-137, gate: canary/after/1, type: Approval}}\n"
    )
}

fn approve(k: &Kubectl, gate: &str, approver: &str, user: &str) -> Output {
    let patch = format!(r#"{{"spec":{{"approval":{{"approver":"{approver}"}}}}}}"#);
    k.run(&["-n", NS, "patch", "gate", gate, "--type", "merge", "-p", &patch, "--as", user], None)
}

/// The policy and its binding are compiled by the API server asynchronously: wait until a
/// forged approval is refused, each try on a fresh gate (an accepted forgery stays accepted).
fn wait_policy_active(k: &Kubectl) {
    let start = Instant::now();
    for i in 0.. {
        let name = format!("probe-{i}");
        k.ok(&["apply", "-f", "-"], Some(&gate(&name)));
        let out = approve(k, &name, "someone-else", "alice");
        k.ok(&["-n", NS, "delete", "gate", &name], None);
        if !out.status.success() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the admission policy never became active");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn apply_manifests(k: &Kubectl, dir: &Path) {
    let text = manifests::render(&Options { namespace: NS.into(), ..Options::default() }).unwrap();
    let file = dir.join("hub.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = k.ok(&["apply", "-f", file.to_str().unwrap()], None);
    for kind in
        ["customresourcedefinition.apiextensions.k8s.io/updateruns.refit.dev", "validatingadmissionpolicy"]
    {
        assert!(out.contains(kind), "{out}");
    }
    let crds: Vec<String> =
        ["members", "updatestrategies", "updateruns", "gates", "autoupgradeprofiles", "clusterupgrades"]
            .iter()
            .map(|r| format!("crd/{r}.refit.dev"))
            .collect();
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    args.extend(crds.iter().map(String::as_str));
    k.ok(&args, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_apply_schemas_refuse_malformed_objects_and_approvals_carry_the_real_identity() {
    let versions = TestbedVersions::from_env().unwrap();
    let version = versions.kubernetes.last().cloned().expect("the testbed builds at least one release");
    let tb = Testbed::start(TestbedConfig::new(version.clone(), 0)).await.unwrap();
    let k = Kubectl { bin: tb.kubectl(&version).unwrap(), kubeconfig: tb.kubeconfig() };
    let dir = tempfile::tempdir().unwrap();
    apply_manifests(&k, dir.path());

    // Applying the same manifests again leaves the CRDs unchanged (GitOps tools re-apply).
    // (kubectl's client-side apply reports the admission policy "configured" every time.)
    let text = manifests::render(&Options { namespace: NS.into(), ..Options::default() }).unwrap();
    let again = k.ok(&["apply", "-f", "-"], Some(&text));
    assert!(
        again.lines().filter(|l| l.starts_with("customresourcedefinition")).all(|l| l.ends_with("unchanged")),
        "a second apply changed a CRD:\n{again}"
    );

    // Schemas generated from the Rust types refuse what refit would refuse.
    let bad_type = "apiVersion: refit.dev/v1alpha1\nkind: UpdateRun\nmetadata: {name: bad, namespace: fleet}\n\
                    spec: {upgradeType: Everything, kubernetesVersion: 1.37.1, strategy: s}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(bad_type));
    assert!(err.contains("spec.upgradeType") && err.contains("Unsupported value"), "{err}");
    let bad_version = "apiVersion: refit.dev/v1alpha1\nkind: UpdateRun\nmetadata: {name: bad, namespace: fleet}\n\
                       spec: {upgradeType: Full, kubernetesVersion: latest, strategy: s}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(bad_version));
    assert!(err.contains("spec.kubernetesVersion"), "{err}");
    let bad_limit = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: bad, namespace: fleet}\n\
                     spec: {stages: [{name: canary, groups: [{name: g, maxConcurrency: half}]}]}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(bad_limit));
    assert!(err.contains("maxConcurrency"), "{err}");
    let bad_gate = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: bad, namespace: fleet}\n\
                    spec: {stages: [{name: canary, afterGates: [{type: Vote}]}]}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(bad_gate));
    assert!(err.contains("afterGates[0].type"), "{err}");
    // A gate mixing the types' fields is refused by the schema's CEL rules.
    let mixed = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: bad, namespace: fleet}\n\
                 spec: {stages: [{name: canary, afterGates: [{type: Approval, startDay: Monday}]}]}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(mixed));
    assert!(err.contains("an Approval gate has no startDay"), "{err}");
    // Health gates: a hub takes prometheus and http, never a command (it would run in the
    // controller); the schema's CEL rules say which fields each needs.
    let command = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: bad, namespace: fleet}\n\
                   spec: {stages: [{name: canary, healthGates: [{type: command, url: 'http://x', command: [./smoke.sh]}]}]}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(command));
    assert!(err.contains("unknown field \"spec.stages[0].healthGates[0].command\""), "{err}");
    let command_type = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: bad, namespace: fleet}\n\
                        spec: {stages: [{name: canary, healthGates: [{type: command, url: 'http://x'}]}]}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(command_type));
    assert!(err.contains("healthGates[0].type") && err.contains("Unsupported value"), "{err}");
    let no_query = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: bad, namespace: fleet}\n\
                    spec: {stages: [{name: canary, healthGates: [{type: prometheus, url: 'http://p:9090'}]}]}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(no_query));
    assert!(err.contains("a prometheus gate needs a query"), "{err}");
    let healthy = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: healthy, namespace: fleet}\n\
                   spec: {stages: [{name: canary, groups: [{name: canary}], healthGates: [{type: http, url: 'http://shop/healthz', soak: 2m, timeout: 600},\n\
                   {name: errors, type: prometheus, url: 'http://prom:9090', query: 'up == 0', condition: empty}]}]}\n";
    k.ok(&["apply", "-f", "-"], Some(healthy));
    let kept = k.ok(&["-n", NS, "get", "updatestrategy", "healthy", "-o", "json"], None);
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    let gates = &kept["spec"]["stages"][0]["healthGates"];
    assert_eq!(gates[0]["type"], "http", "{kept}");
    assert_eq!(gates[0]["soak"], "2m", "{kept}");
    assert_eq!(gates[0]["timeout"], 600, "{kept}");
    assert_eq!(gates[1]["query"], "up == 0", "{kept}");
    // What the controller reads back is core's strategy, with the gates resolved.
    let spec: refit_controller::resources::UpdateStrategySpec =
        serde_json::from_value(kept["spec"].clone()).unwrap();
    let strategy = spec.strategy("healthy");
    assert!(strategy.hub_refusal().is_none());
    assert_eq!(strategy.stages[0].health_gates().unwrap().len(), 2);
    let no_secret = "apiVersion: refit.dev/v1alpha1\nkind: Member\nmetadata: {name: m, namespace: fleet}\n\
                     spec: {context: c1}\n";
    let err = k.refused(&["apply", "-f", "-"], Some(no_secret));
    assert!(err.contains("spec.kubeconfigSecret: Required value"), "{err}");

    // Azure's stages file, as it is, is a valid UpdateStrategy spec.
    let strategy = "apiVersion: refit.dev/v1alpha1\nkind: UpdateStrategy\nmetadata: {name: two-stage, namespace: fleet}\n\
                    spec: {stages: [{name: canary, groups: [{name: canary}], afterStageWaitInSeconds: 60,\n\
                    afterGates: [{type: Approval, displayName: check dashboards}]}, {name: rest, groups: [{name: wave-a}, {name: wave-b, maxConcurrency: \"25%\"}]}]}\n";
    k.ok(&["apply", "-f", "-"], Some(strategy));
    let run = "apiVersion: refit.dev/v1alpha1\nkind: UpdateRun\nmetadata: {name: to-137, namespace: fleet}\n\
               spec: {upgradeType: Full, kubernetesVersion: 1.37.1, strategy: two-stage, state: Run}\n";
    k.ok(&["apply", "-f", "-"], Some(run));

    // Printer columns, with the status the controller writes (through /status).
    let status = r#"{"status":{"state":"Running","currentStage":"canary","done":1,"failed":0,"members":3}}"#;
    k.ok(
        &["-n", NS, "patch", "updaterun", "to-137", "--subresource=status", "--type", "merge", "-p", status],
        None,
    );
    let table = k.ok(&["-n", NS, "get", "updateruns"], None);
    println!("{table}");
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "TYPE", "VERSION", "REQUESTED", "STATE", "STAGE", "DONE", "FAILED", "MEMBERS", "AGE"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..9], ["to-137", "Full", "1.37.1", "Run", "Running", "canary", "1", "0", "3"]);
    // A status outside the schema is refused too (the 8 states are an enum).
    let bad_status = r#"{"status":{"state":"Sleeping"}}"#;
    let err = k.refused(
        &[
            "-n",
            NS,
            "patch",
            "updaterun",
            "to-137",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            bad_status,
        ],
        None,
    );
    assert!(err.contains("status.state"), "{err}");

    // Who may approve: alice through the refit-approver ClusterRole in the fleet namespace;
    // mallory has no binding.
    k.ok(
        &[
            "-n",
            NS,
            "create",
            "rolebinding",
            "alice-approves",
            "--clusterrole",
            APPROVER_ROLE,
            "--user",
            "alice",
        ],
        None,
    );
    wait_policy_active(&k);
    k.ok(&["apply", "-f", "-"], Some(&gate("to-137-canary-after-1")));
    k.ok(&["apply", "-f", "-"], Some(&gate("to-137-rest-before-1")));

    let out = approve(&k, "to-137-canary-after-1", "mallory", "mallory");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("forbidden") && err.contains("mallory"), "RBAC: {err}");

    let out = approve(&k, "to-137-canary-after-1", "bob", "alice");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(manifests::APPROVER_POLICY) && err.contains("(alice)"),
        "a forged approver must be refused by the admission policy: {err}"
    );

    let out = approve(&k, "to-137-canary-after-1", "alice", "alice");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let approver = k.ok(
        &["-n", NS, "get", "gate", "to-137-canary-after-1", "-o", "jsonpath={.spec.approval.approver}"],
        None,
    );
    assert_eq!(approver, "alice");
    // Alice cannot rewrite her approval as someone else's afterwards either.
    let out = approve(&k, "to-137-canary-after-1", "bob", "alice");
    assert!(!out.status.success(), "an approval rewritten under another name was accepted");
    let gates = k.ok(&["-n", NS, "get", "gates"], None);
    println!("{gates}");
    assert!(gates.lines().any(|l| l.starts_with("to-137-canary-after-1") && l.contains("alice")), "{gates}");

    // The largest run the size test builds — 5,000 finished members — is accepted by the real
    // API server and etcd, spec and status (written through /status as the controller does).
    let mut big = support::object(support::finished_run(5_000));
    big.metadata.name = Some("big".into());
    big.metadata.namespace = Some(NS.into());
    let status = big.status.take().unwrap();
    let runs: Api<UpdateRun> = Api::namespaced(tb.client().await.unwrap(), NS);
    runs.create(&PostParams::default(), &big).await.unwrap();
    let body = serde_json::json!({ "status": status });
    let bytes = serde_json::to_vec(&body).unwrap().len();
    runs.patch_status("big", &PatchParams::default(), &Patch::Merge(&body)).await.unwrap();
    let back = runs.get_status("big").await.unwrap().status.unwrap();
    assert_eq!((back.members, back.done), (5_000, 5_000));
    assert_eq!(back.run, status.run, "the tree reads back as written");
    println!("a 5,000-member UpdateRun status of {bytes} bytes was written and read back");
    tb.stop();
}
