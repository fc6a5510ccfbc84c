//! Hub mode end to end: a real hub (the testbed's kube-apiserver) with refit's CRDs applied
//! from `refit controller manifests`, two real sandbox clusters as Members (kubeconfigs in
//! Secrets), a two-stage UpdateStrategy with an after-stage Approval gate, and an UpdateRun
//! created through the API with `state: Run`. The controller (a local `refit controller`
//! process, since kwok runs no pods) drives it with the fleet driver over the hub's resources:
//! the canary member is upgraded, the run waits on the gate; `refit serve --hub` (a process on
//! loopback with a token file) shows the run tree from the hub, refuses without a token (401),
//! answers an unknown run with a JSON 404, and its approve (token + CSRF) releases the gate on
//! alice's behalf — its event stream shows the Gate change — the second stage runs and the run
//! Succeeds; the server's audit and `/metrics` agree, and its stop of the finished run is
//! refused (409) while its stop of another run is carried out by the reconciler. Before the
//! CRDs exist, `refit serve --hub` is refused (exit 2), as for an unknown context and an
//! unreachable hub. Events and `/metrics` are asserted; a Member whose Secret reaches another cluster than the one it is bound to is
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
use support::{Sandbox, http_get, http_request, refit, refused, release, start_controller};

const NS: &str = "fleet";

/// The approval alice posts.
const APPROVE: &str = r#"{"gate": "canary/after/1"}"#;

/// The hub user `refit serve --hub` runs as.
const SERVE_USER: &str = "refit-serve-user";

/// The `refit serve --hub` token of the person approving through it.
const TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A `refit serve --hub` process, killed (and reaped) however the test ends.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `refit serve --hub` on loopback with a token file naming `alice`; its address.
fn start_serve(root: &Path, kubeconfig: &Path) -> (Serve, std::net::SocketAddr) {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let tokens = root.join("tokens.csv");
    std::fs::write(&tokens, format!("{TOKEN},alice\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("refit"))
        .args(["serve", "--listen", "127.0.0.1:0", "-n", NS, "--hub"])
        .arg(kubeconfig)
        .arg("--token-file")
        .arg(&tokens)
        .arg("--store")
        .arg(root.join("serve").join("refit.db"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let serve = Serve(child);
    assert!(first.contains(&format!("namespace {NS}")), "{first}");
    let addr = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .trim_end_matches('/')
        .parse()
        .unwrap();
    (serve, addr)
}

/// `refit serve --hub` refuses a hub it cannot serve before anything listens (exit 2, one line
/// naming the fix): no refit CRDs yet (call it before the manifests are applied), a context the
/// kubeconfig lacks, nobody serving the kubeconfig's address.
fn serve_refuses_hubs_it_cannot_serve(root: &Path, kubeconfig: &Path) {
    let serve_hub = |kubeconfig: &Path, extra: &[&str]| {
        let mut c = refit();
        c.args(["serve", "--listen", "127.0.0.1:0", "-n", NS, "--hub"]).arg(kubeconfig).args(extra);
        c
    };
    let err = refused(&mut serve_hub(kubeconfig, &[]));
    assert!(err.contains("refit controller manifests"), "{err}");
    let err = refused(&mut serve_hub(kubeconfig, &["--context", "nope"]));
    assert!(err.contains("'nope'"), "{err}");
    let dead = root.join("dead.kubeconfig");
    std::fs::write(&dead, support::DEAD_KUBECONFIG).unwrap();
    let err = refused(&mut serve_hub(&dead, &[]));
    assert!(err.contains("cannot reach"), "{err}");
}

/// A `refit serve --hub` process over the fleet of run `to-137` (a canary stage with an
/// after-stage Approval gate, a prod stage), used as alice with her token and CSRF token.
struct ServeHub {
    _process: Serve,
    addr: std::net::SocketAddr,
    bearer: String,
}

impl ServeHub {
    /// Starts the server as its own hub identity: a user bound in the fleet's namespace to the
    /// manifests' refit-serve role and nothing else (the testbed's admin impersonates it).
    fn start(root: &Path, admin_kubeconfig: &Path, kubectl: &dyn Fn(&[&str]) -> String) -> ServeHub {
        kubectl(&[
            "-n",
            NS,
            "create",
            "rolebinding",
            "serve",
            "--clusterrole",
            "refit-serve",
            "--user",
            SERVE_USER,
        ]);
        let mut kc = kube::config::Kubeconfig::read_from(admin_kubeconfig).unwrap();
        for a in &mut kc.auth_infos {
            a.auth_info.as_mut().unwrap().impersonate = Some(SERVE_USER.into());
        }
        let kubeconfig = root.join("serve.kubeconfig");
        std::fs::write(&kubeconfig, serde_json::to_string(&kc).unwrap()).unwrap();
        let (process, addr) = start_serve(root, &kubeconfig);
        ServeHub { _process: process, addr, bearer: format!("Bearer {TOKEN}") }
    }

    fn auth(&self) -> [(&str, &str); 1] {
        [("Authorization", self.bearer.as_str())]
    }

    /// GET `path` with the token: 200 and its JSON.
    fn get(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_request(self.addr, "GET", path, &self.auth(), "");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POST `path` with the token and the CSRF token: (status, body).
    fn post(&self, path: &str, body: &str) -> (u16, String) {
        let csrf = self.get("/api/session")["csrfToken"].as_str().unwrap().to_string();
        let headers = [("Authorization", self.bearer.as_str()), ("X-CSRF-Token", csrf.as_str())];
        http_request(self.addr, "POST", path, &headers, body)
    }

    /// While the run waits on its gate: the tree from the hub (each member's detail joined in
    /// from its ClusterUpgrade), the dashboard's page, gates and members; no token → 401, an
    /// unknown run → JSON 404, an action without CSRF → 403, a skip (no hub verb) → 409.
    fn shows_the_waiting_run_and_refuses_bad_requests(&self, prod_dir: &Path) {
        let tree = self.get("/api/fleet/runs/to-137");
        assert_eq!(tree["state"], "Pending", "{tree}");
        let canary = &tree["stages"][0];
        assert_eq!(canary["afterGates"][0]["state"], "Pending", "{tree}");
        assert_eq!(canary["groups"][0]["members"][0]["name"], "canary-1", "{tree}");
        assert_eq!(canary["groups"][0]["members"][0]["state"], "Completed", "{tree}");
        assert!(canary["groups"][0]["members"][0]["target"].is_object(), "{tree}");
        assert_eq!(tree["stages"][1]["groups"][0]["members"][0]["state"], "NotStarted", "{tree}");
        let (code, page) = http_request(self.addr, "GET", "/fleet/runs/to-137", &self.auth(), "");
        assert_eq!(code, 200, "{page}");
        assert!(page.contains("canary/after/1") && page.contains("canary-1"), "{page}");
        let pending = self.get("/api/fleet/gates");
        assert_eq!(pending[0]["run"], "to-137", "{pending}");
        let names: Vec<String> = self
            .get("/api/fleet/members")
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].to_string())
            .collect();
        assert_eq!(names, ["\"canary-1\"", "\"prod-1\"", "\"rogue-1\""]);
        let (code, body) = http_request(self.addr, "GET", "/api/fleet/runs/to-137", &[], "");
        assert_eq!(code, 401, "{body}");
        let (code, body) = http_request(self.addr, "GET", "/api/fleet/runs/nope", &self.auth(), "");
        assert_eq!(code, 404, "{body}");
        assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string(), "{body}");
        let (code, body) =
            http_request(self.addr, "POST", "/api/fleet/runs/to-137/approve", &self.auth(), APPROVE);
        assert_eq!(code, 403, "{body}");
        let (code, body) = self.post("/api/fleet/runs/to-137/skip", r#"{"targets": ["Member:prod-1"]}"#);
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("not available on a hub"), "{body}");
        assert!(std::fs::read_to_string(prod_dir.join("actions.log")).is_err(), "prod-1 was touched");
    }

    /// Approves the gate as alice (written to the Gate by the server's hub identity on her
    /// behalf); the watch on Gates feeds the event stream, which shows the change.
    fn approves_the_gate_and_streams_the_change(&self) {
        let stream = event_stream(self.addr);
        // Subscribed once the response starts.
        let head = stream.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(head.contains(" 200 "), "{head}");
        let (code, body) = self.post("/api/fleet/runs/to-137/approve", APPROVE);
        assert_eq!(code, 200, "{body}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = stream.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap();
            if line.starts_with("data:") && line.contains("\"event\":\"Gate\"") && line.contains("to-137") {
                break;
            }
        }
    }

    /// After the run completed: the server shows it completed and approved as `recorded`, its
    /// audit (the hub's Events from refit-serve) names alice, `/metrics` reads the same watch
    /// caches, and a stop of the finished run is refused (409) with nothing written.
    async fn shows_the_completed_run(
        &self,
        recorded: &str,
        runs: &Api<kube::api::DynamicObject>,
        log: &Path,
    ) {
        let shown =
            eventually("the server shows the run completed", Duration::from_secs(30), log, async || {
                let r = self.get("/api/fleet/runs/to-137");
                (r["state"] == "Completed").then_some(r)
            })
            .await;
        assert_eq!(shown["stages"][0]["afterGates"][0]["approval"]["by"], recorded, "{shown}");
        let audit = self.get("/api/fleet/runs/to-137/audit");
        let trail: Vec<(String, String, String)> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["actor"].to_string(), a["action"].to_string(), a["outcome"].to_string()))
            .collect();
        for want in [("alice", "approve-gate", "done"), ("alice", "skip", "refused")] {
            let want = (format!("\"{}\"", want.0), format!("\"{}\"", want.1), format!("\"{}\"", want.2));
            assert!(trail.contains(&want), "no {want:?} in {trail:?}");
        }
        let (code, text) = http_request(self.addr, "GET", "/metrics", &self.auth(), "");
        assert_eq!(code, 200);
        let line = "refit_fleet_run_state{run=\"to-137\",state=\"Completed\"} 1";
        assert!(text.lines().any(|l| l == line), "no '{line}' in\n{text}");
        let (code, body) = self.post("/api/fleet/runs/to-137/stop", "");
        assert_eq!(code, 409, "{body}");
        let r = runs.get("to-137").await.unwrap();
        assert!(!r.metadata.annotations.unwrap_or_default().contains_key("refit.dev/requested-by"));
        assert_eq!(r.data["spec"]["state"], "Run");
    }

    /// Stops `run` (Running or Pending): spec.state written with who asked; the reconciler
    /// stops it.
    async fn stops(&self, run: &str, runs: &Api<kube::api::DynamicObject>, log: &Path) {
        let (code, body) = self.post(&format!("/api/fleet/runs/{run}/stop"), "");
        assert_eq!(code, 200, "{body}");
        let r = runs.get(run).await.unwrap();
        assert_eq!(r.data["spec"]["state"], "Stop");
        assert_eq!(r.metadata.annotations.unwrap_or_default()["refit.dev/requested-by"], "alice");
        eventually("the reconciler stops the run", Duration::from_secs(60), log, async || {
            let r = runs.get(run).await.unwrap();
            (r.data["status"]["state"] == "Stopped").then_some(())
        })
        .await;
    }
}

/// The lines of the server's event stream (`/api/events`), as they arrive.
fn event_stream(addr: std::net::SocketAddr) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /api/events HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(s).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

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
    serve_refuses_hubs_it_cannot_serve(root, &hub.kubeconfig());

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

    // `refit serve --hub` shows the waiting run; alice approves through it.
    let serve = ServeHub::start(root, &hub.kubeconfig(), &kubectl);
    serve.shows_the_waiting_run_and_refuses_bad_requests(&prod_dir);
    serve.approves_the_gate_and_streams_the_change();
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
    assert_eq!(approver, SERVE_USER);
    assert_eq!(gate.data["spec"]["approval"]["onBehalfOf"], "alice");
    let recorded = format!("alice (through {approver})");
    assert_eq!(gate.data["status"]["approvedBy"], recorded.as_str());
    serve.shows_the_completed_run(&recorded, &runs, &log).await;
    // The CLI's approval shares the Gate write; an unknown gate is bad input.
    refused(refit().args(["fleet", "--hub"]).arg(hub.kubeconfig()).args([
        "--hub-namespace",
        NS,
        "gate",
        "approve",
        "to-137",
        "nope/after/1",
    ]));
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

    // Metrics of the leader (its gauges are set by its next pass over the run).
    let wanted = [
        "refit_controller_leader 1",
        "refit_controller_run_state{run=\"to-137\",state=\"Completed\"} 1",
        "refit_controller_run_state{run=\"to-137\",state=\"Pending\"} 0",
        "refit_controller_gates_pending{run=\"to-137\"} 0",
        "refit_controller_member_upgrade_duration_seconds_count{outcome=\"succeeded\"} 2",
    ];
    let mut metrics = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (code, text) = http_get(controller.addr, "/metrics");
        assert_eq!(code, 200);
        metrics = text;
        if wanted.iter().all(|w| metrics.lines().any(|l| l == *w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for line in wanted {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(metrics.lines().any(|l| l == line), "no '{line}' in\n{metrics}\ncontroller log:\n{log}");
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
    serve.stops("rogue-run", &runs, &log).await;
    drop(serve);

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
