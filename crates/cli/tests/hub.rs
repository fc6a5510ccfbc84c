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
use support::{
    Sandbox, http_get, http_request, refit, refused, release, start_controller, start_controller_with,
};

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
    /// unknown run → JSON 404, an action without CSRF → 403, a skip core refuses → 409.
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
        // Core's rules answer a skip on a hub as anywhere: canary-1 is done, nothing to skip.
        let (code, body) = self.post("/api/fleet/runs/to-137/skip", r#"{"targets": ["Member:canary-1"]}"#);
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("Completed"), "{body}");
        assert_eq!(member_state(&self.get("/api/fleet/runs/to-137"), "canary-1").0, "Completed");
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
            // The controller's log, and what lies beside it (the takeover test's member logs).
            let mut shown = String::new();
            let dir = log.parent().unwrap();
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .flat_map(|p| {
                    let actions = ["actions.log", "done.log", "concurrent.log"].map(|n| p.join(n));
                    std::iter::once(p).chain(actions)
                })
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "log") && p.as_path() != log)
                .collect();
            files.sort();
            for f in std::iter::once(log.to_path_buf()).chain(files) {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                shown.push_str(&format!("--- {}:\n{text}\n", f.display()));
            }
            panic!("{what}: not within {timeout:?}; controller log:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A hub with refit's CRDs applied from `refit controller manifests`, and the node action
/// script its sandbox members use.
struct Hub {
    tb: Testbed,
    version: refit_core::Version,
    client: kube::Client,
    /// The node action: logs each node it starts (`actions.log`) and finishes (`done.log`),
    /// records in `concurrent.log` a start while another action of the same sandbox still runs,
    /// sleeps `$dir/slow` seconds when that file exists, then upgrades the node.
    script: PathBuf,
    tmp: tempfile::TempDir,
}

impl Hub {
    /// The hub's testbed and the node action script, no manifests applied yet.
    async fn bare() -> Hub {
        let versions = TestbedVersions::from_env().unwrap();
        let version = versions.kubernetes.last().cloned().expect("the testbed builds at least one release");
        let tb = Testbed::start(TestbedConfig::new(version.clone(), 0)).await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let client = tb.client().await.unwrap();
        let script = tmp.path().join("node.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
# $1: the sandbox's directory, $2: the node, $3: the version.
# Another action of this sandbox still runs: the same process (pid and start time; one that
# exited and awaits reaping does not count).
if [ -f "$1/running" ]; then
  set -- "$@" $(cat "$1/running")
  st=$(cut -d' ' -f3,4,22 "/proc/$4/stat" 2>/dev/null)
  case "$st" in
    Z*|X*|"") ;;
    *) if [ "${{st##* }}" = "$6" ]; then
         echo "$2 (pid $$) started while action $4 ($5, state/parent/start $st) runs" >> "$1/concurrent.log"
       fi ;;
  esac
fi
echo "$$ $2 $(cut -d' ' -f22 /proc/$$/stat)" > "$1/running"
echo "$2 (pid $$, parent $PPID)" >> "$1/actions.log"
if [ -f "$1/slow" ]; then sleep "$(cat "$1/slow")"; fi
'{}' sandbox upgrade-node --dir "$1" "$2" --to "$3" || exit $?
echo "$2" >> "$1/done.log"
rm -f "$1/running"
"#,
                assert_cmd::cargo::cargo_bin("refit").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hub { tb, version, client, script, tmp }
    }

    /// A hub with the manifests applied.
    async fn start() -> Hub {
        let hub = Hub::bare().await;
        hub.apply_manifests();
        hub
    }

    /// `kubectl apply` of `refit controller manifests`; returns when the CRDs are served.
    fn apply_manifests(&self) {
        let hub = self;
        let manifests = hub.root().join("hub.yaml");
        std::fs::write(&manifests, support::stdout(refit().args(["controller", "manifests", "-n", NS])))
            .unwrap();
        hub.kubectl(&["apply", "-f", manifests.to_str().unwrap()]);
        for crd in
            ["members", "updatestrategies", "updateruns", "gates", "clusterupgrades", "autoupgradeprofiles"]
        {
            hub.kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}.refit.dev"),
            ]);
        }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(self.tb.kubectl(&self.version).unwrap())
            .arg("--kubeconfig")
            .arg(self.tb.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A sandbox member cluster at 1.36 with one worker, and its node action.
    fn sandbox(&self, name: &str) -> (Sandbox, PathBuf, String) {
        let dir = self.root().join(name);
        let guard = support::sandbox_up(&dir, &release(36), 1, 1);
        let action = format!("exec:{} {} {{node}} {{to}}", self.script.display(), dir.display());
        (guard, dir, action)
    }

    /// The fleet namespace's objects of a refit kind.
    fn api(&self, kind: &str) -> Api<kube::api::DynamicObject> {
        let ar = kube::api::ApiResource {
            group: "refit.dev".into(),
            version: "v1alpha1".into(),
            api_version: "refit.dev/v1alpha1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()).replace("strategys", "strategies"),
        };
        Api::namespaced_with(self.client.clone(), NS, &ar)
    }

    /// A Member (and its kubeconfig Secret) of `group` reaching `kubeconfig`.
    async fn add_member(&self, name: &str, group: &str, kubeconfig: &Path, action: &str) {
        // The exec action's upgrade backs up the member sandbox's own etcd (issue 18 item 9).
        let sandbox = kubeconfig.parent().unwrap();
        let mut upgrade_args: Vec<String> = SANDBOX_ACCEPTS.iter().map(|a| a.to_string()).collect();
        upgrade_args.extend(support::etcd_backup_args(&Testbed::attach(sandbox).unwrap()));
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-kubeconfig")},
            "stringData": {"kubeconfig": std::fs::read_to_string(kubeconfig).unwrap()}
        }))
        .unwrap();
        let post = PostParams::default();
        Api::<Secret>::namespaced(self.client.clone(), NS).create(&post, &secret).await.unwrap();
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
        self.api("Member").create(&post, &m).await.unwrap();
    }

    async fn add_strategy(&self, name: &str, stages: serde_json::Value) {
        let s: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "refit.dev/v1alpha1", "kind": "UpdateStrategy",
            "metadata": {"name": name}, "spec": {"stages": stages}
        }))
        .unwrap();
        self.api("UpdateStrategy").create(&PostParams::default(), &s).await.unwrap();
    }

    /// Creates an UpdateRun to 1.37 with `state: Run`.
    async fn run(&self, name: &str, strategy: &str) {
        let r: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "refit.dev/v1alpha1", "kind": "UpdateRun",
            "metadata": {"name": name},
            "spec": {"upgradeType": "Full", "kubernetesVersion": release(37), "strategy": strategy, "state": "Run"}
        }))
        .unwrap();
        self.api("UpdateRun").create(&PostParams::default(), &r).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_run_waits_on_its_gate_until_approved_and_succeeds_and_a_rebound_member_is_refused() {
    let hub = Hub::bare().await;
    serve_refuses_hubs_it_cannot_serve(hub.root(), &hub.tb.kubeconfig());
    hub.apply_manifests();
    let root = hub.root();
    let log = root.join("controller.log");
    let client = hub.client.clone();

    // Two sandbox members; their node action upgrades the node in the sandbox.
    let (_g1, canary_dir, canary_action) = hub.sandbox("canary-1");
    let (_g2, prod_dir, prod_action) = hub.sandbox("prod-1");
    let members = hub.api("Member");
    hub.add_member("canary-1", "canary", &canary_dir.join("kubeconfig"), &canary_action).await;
    hub.add_member("prod-1", "prod", &prod_dir.join("kubeconfig"), &prod_action).await;
    // Bound to prod-1's cluster, but its Secret now reaches canary-1's: a swapped kubeconfig.
    hub.add_member("rogue-1", "rogue", &canary_dir.join("kubeconfig"), &canary_action).await;
    let prod_uid = cluster_uid(&prod_dir.join("kubeconfig")).await;
    members
        .patch_status(
            "rogue-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"clusterUid": prod_uid}})),
        )
        .await
        .unwrap();
    hub.add_strategy(
        "two-stage",
        json!([
            {"name": "canary", "groups": [{"name": "canary"}], "afterGates": [{"type": "Approval"}]},
            {"name": "prod", "groups": [{"name": "prod"}]}
        ]),
    )
    .await;
    hub.add_strategy("rogue-only", json!([{"name": "rogue", "groups": [{"name": "rogue"}]}])).await;
    let runs = hub.api("UpdateRun");
    hub.run("to-137", "two-stage").await;

    let before = hub_requests(&client).await;
    let started = Instant::now();
    // A newer release catalog the controller refreshes from on its schedule (as from a
    // mirror): 1.37.9, out since before today.
    let newer = root.join("newer-catalog.yaml");
    let shipped = include_str!("../../../data/catalog.yaml");
    let with_patch = shipped.replacen(r#""1.37.2"]"#, r#""1.37.2", "1.37.9"]"#, 1);
    assert_ne!(with_patch, shipped, "the shipped catalog's 1.37 patches moved: update this test");
    let updated = jiff::Zoned::now().date().to_string();
    let catalog = with_patch
        .lines()
        .map(|l| if l.starts_with("updated:") { format!("updated: \"{updated}\"") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&newer, catalog + "\n").unwrap();
    let controller = start_controller_with(
        &hub.tb.kubeconfig(),
        NS,
        Some(&log),
        &["--catalog-refresh-every", "2s", "--catalog-from", newer.to_str().unwrap()],
    );
    let mut polls: u64 = 0;

    // The canary is upgraded, then the run waits on the gate; prod-1 has not started.
    let gates = hub.api("Gate");
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
    let serve = ServeHub::start(root, &hub.tb.kubeconfig(), &|a: &[&str]| hub.kubectl(a));
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
    refused(refit().args(["fleet", "--hub"]).arg(hub.tb.kubeconfig()).args([
        "--hub-namespace",
        NS,
        "gate",
        "approve",
        "to-137",
        "nope/after/1",
    ]));
    // Each member's detail and journal object.
    let upgrades = hub.api("ClusterUpgrade");
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
    // (Published right after the status write the test saw: waited for.)
    for (kind, reason) in [
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
        eventually(&format!("a {reason} event about a {kind}"), Duration::from_secs(30), &log, async || {
            seen_event(&client, kind, reason).await.then_some(())
        })
        .await;
    }

    // Metrics of the leader (its gauges are set by its next pass over the run).
    let wanted = [
        "refit_controller_leader 1",
        "refit_controller_run_state{run=\"to-137\",state=\"Completed\"} 1",
        "refit_controller_run_state{run=\"to-137\",state=\"Pending\"} 0",
        "refit_controller_gates_pending{run=\"to-137\"} 0",
        "refit_controller_member_upgrade_duration_seconds_count{outcome=\"succeeded\"} 2",
        // Two nodes per member, each step timed by the member upgrade itself.
        "refit_controller_node_step_duration_seconds_count{step=\"upgrade\"} 4",
        "refit_controller_node_step_duration_seconds_count{step=\"validate\"} 4",
        // The one gate, Pending until approved.
        "refit_controller_approval_latency_seconds_count 1",
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
    hub.run("rogue-run", "rogue-only").await;
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

    // Auto-upgrade profiles fire by themselves: members at 1.37.1 and the catalog the
    // controller refreshed (newest 1.37 patch: 1.37.9, which the built-in one does not list)
    // give the Rapid profile a run to 1.37.9, generated and started once; its strategy's
    // before-stage Approval holds it (the testbed has no such release to install). A disabled
    // profile generates nothing.
    hub.add_strategy(
        "gated",
        json!([{"name": "all", "groups": [{"name": "canary"}, {"name": "prod"}, {"name": "rogue"}],
                "beforeGates": [{"type": "Approval"}]}]),
    )
    .await;
    let profiles = hub.api("AutoUpgradeProfile");
    let post = PostParams::default();
    for (name, disabled) in [("auto", false), ("off", true)] {
        let p: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "refit.dev/v1alpha1", "kind": "AutoUpgradeProfile",
            "metadata": {"name": name},
            "spec": {"channel": "Rapid", "strategy": "gated", "disabled": disabled}
        }))
        .unwrap();
        profiles.create(&post, &p).await.unwrap();
    }
    let generated = eventually("the profile generates its run", Duration::from_secs(120), &log, async || {
        let p = profiles.get("auto").await.unwrap();
        p.data["status"]["lastGeneratedRun"].as_str().map(str::to_string)
    })
    .await;
    assert_eq!(generated, "auto-rapid-1-37-9", "the refreshed catalog's release");
    let r = eventually("the generated run waits on its gate", Duration::from_secs(60), &log, async || {
        let r = runs.get(&generated).await.unwrap();
        (r.data["status"]["state"] == "Pending").then_some(r)
    })
    .await;
    assert_eq!(r.data["spec"]["state"], "Run");
    assert_eq!(r.data["spec"]["strategy"], "gated");
    let profile = profiles.get("auto").await.unwrap();
    assert_eq!(profile.data["status"]["lastTarget"], r.data["spec"]["kubernetesVersion"]);
    // A skip through the server on a hub: written to the run's status by the driver's commit
    // loop, recorded as alice through the server's identity; the controller's driver keeps it.
    let (code, body) =
        serve.post(&format!("/api/fleet/runs/{generated}/skip"), r#"{"targets": ["Member:rogue-1"]}"#);
    assert_eq!(code, 200, "{body}");
    let r = runs.get(&generated).await.unwrap();
    let status = serde_json::to_string(&r.data["status"]).unwrap();
    assert!(status.contains("alice (through "), "the skip names who asked and through whom: {status}");
    let tree = eventually("the server shows the skip", Duration::from_secs(30), &log, async || {
        let tree = serve.get(&format!("/api/fleet/runs/{generated}"));
        (member_state(&tree, "rogue-1").0 == "Skipped").then_some(tree)
    })
    .await;
    assert_eq!(member_state(&tree, "canary-1").0, "NotStarted", "{tree}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tree = serve.get(&format!("/api/fleet/runs/{generated}"));
    assert_eq!(member_state(&tree, "rogue-1").0, "Skipped", "the driver kept the skip: {tree}");
    drop(serve);
    let all = runs.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = all.items.iter().filter_map(|r| r.metadata.name.clone()).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("auto-")).count(), 1, "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("off-")), "a disabled profile generated a run: {names:?}");
    eventually("a RunGenerated event", Duration::from_secs(30), &log, async || {
        seen_event(&client, "AutoUpgradeProfile", "RunGenerated").await.then_some(())
    })
    .await;

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
    hub.tb.stop();
}

/// Whether the fleet namespace has an Event of `reason` about a `kind`.
async fn seen_event(client: &kube::Client, kind: &str, reason: &str) -> bool {
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), NS);
    events.list(&ListParams::default()).await.unwrap().items.iter().any(|e| {
        e.reason.as_deref() == Some(reason)
            && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
    })
}

/// Whether process `pid` runs (an exited one not reaped yet does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s.get(i + 2..i + 3)).map(|st| !matches!(st, "Z" | "X" | "x")))
        .unwrap_or(false)
}

/// A client of the sandbox cluster in `dir`.
async fn member_client(dir: &Path) -> kube::Client {
    Testbed::attach(dir).unwrap().client().await.unwrap()
}

/// The pid of the process holding the cluster lock of the sandbox in `dir`, if any (a
/// controller replica: member upgrades run in its process).
async fn lock_holder(dir: &Path) -> Option<u32> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(member_client(dir).await, "kube-system");
    let lease = leases.get_opt("refit-upgrade").await.ok()??;
    lease.metadata.annotations?.get("refit.dev/pid")?.parse().ok()
}

/// The pid of the node action running in the sandbox in `dir` (its script's marker), if alive.
fn running_action(dir: &Path) -> Option<u32> {
    let marker = std::fs::read_to_string(dir.join("running")).ok()?;
    let pid = marker.split_whitespace().next()?.parse().ok()?;
    alive(pid).then_some(pid)
}

/// The journal a member upgrade keeps on its ClusterUpgrade: (owner, run ids, steps per node).
async fn hub_journal(
    upgrades: &Api<kube::api::DynamicObject>,
    name: &str,
) -> Option<(String, Vec<String>, serde_json::Value)> {
    let cu = upgrades.get_opt(name).await.ok()??;
    let j = cu.data["status"]["journal"].clone();
    let owner = j["owner"].as_str()?.to_string();
    let runs = j["runs"].as_array()?.iter().filter_map(|r| r["id"].as_str().map(str::to_string)).collect();
    Some((owner, runs, j["steps"].clone()))
}

/// Issue 15: two controller replicas run member upgrades in their own process, journaled on
/// each member's ClusterUpgrade. The leader is killed with SIGKILL while a member's
/// control-plane node action runs: the action dies with it (its guardian kills the group),
/// the other replica takes the leader Lease and the member's cluster lock (the holder's
/// process is gone), claims the member's journal and resumes the same run — same id, one run,
/// no cordon given back as an orphan's — and the run completes: every node upgraded and each
/// node action finished exactly once, never two node actions of one member at once, and
/// while the resumed upgrade holds a member's cluster lock a second `refit upgrade` is refused.
/// Prints the takeover time and the hub API requests per member upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_during_a_member_upgrade_is_taken_over_and_every_member_is_upgraded_once() {
    let hub = Hub::start().await;
    let root = hub.root();
    let (_g1, east, east_action) = hub.sandbox("east-1");
    let (_g2, west, west_action) = hub.sandbox("west-1");
    for dir in [&east, &west] {
        // Each node action waits a while first: the kill lands inside one.
        std::fs::write(dir.join("slow"), "6").unwrap();
    }
    hub.add_member("east-1", "all", &east.join("kubeconfig"), &east_action).await;
    hub.add_member("west-1", "all", &west.join("kubeconfig"), &west_action).await;
    hub.add_strategy("one-stage", json!([{"name": "all", "groups": [{"name": "all"}]}])).await;
    // Independent watchers on both members (nodes: skew, cordons) for the whole run.
    let watchers = [
        support::watcher::Watcher::start(member_client(&east).await, "default").await,
        support::watcher::Watcher::start(member_client(&west).await, "default").await,
    ];
    let before = hub_requests(&hub.client).await;
    hub.run("to-137", "one-stage").await;

    let logs = [root.join("replica-1.log"), root.join("replica-2.log")];
    let mut replicas: Vec<_> =
        logs.iter().map(|l| start_controller(&hub.tb.kubeconfig(), NS, Some(l))).collect();
    let leads = |r: &support::ControllerProcess| http_get(r.addr, "/readyz").1 == "leader\n";
    let leader = eventually("a replica leads", Duration::from_secs(60), &logs[0], async || {
        replicas.iter().position(leads)
    })
    .await;
    let (old_log, new_log) = (logs[leader].clone(), logs[1 - leader].clone());
    let upgrades = hub.api("ClusterUpgrade");

    // East-1's first node action (its control plane's) is under way: kill -9 the leader.
    let action =
        eventually("east-1's first node action starts", Duration::from_secs(300), &old_log, async || {
            running_action(&east)
        })
        .await;
    let leader_pid = replicas[leader].child.id();
    assert_eq!(lock_holder(&east).await, Some(leader_pid), "the leader holds east-1's cluster lock");
    let (old_owner, old_runs, _) =
        hub_journal(&upgrades, "to-137.east-1").await.expect("east-1's journal is on the hub");
    assert_eq!(old_runs.len(), 1, "{old_runs:?}");
    let mut killed = replicas.remove(leader);
    let killed_at = Instant::now();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    // Its node action does not run on: it dies with the replica.
    eventually("the killed leader's node action ends", Duration::from_secs(15), &old_log, async || {
        (!alive(action)).then_some(())
    })
    .await;
    let survivor = &replicas[0];
    eventually("the other replica leads", Duration::from_secs(60), &new_log, async || {
        leads(survivor).then_some(())
    })
    .await;
    let takeover = killed_at.elapsed();

    // The new leader resumed east-1's upgrade: it holds its cluster lock, owns its journal,
    // and a node action runs again. A second upgrade of east-1 meanwhile is refused by the lock.
    let survivor_pid = survivor.child.id();
    let new_owner =
        eventually("east-1's upgrade is resumed", Duration::from_secs(180), &new_log, async || {
            lock_holder(&east).await.filter(|p| *p == survivor_pid)?;
            let (owner, _, _) = hub_journal(&upgrades, "to-137.east-1").await?;
            running_action(&east).filter(|p| *p != action)?;
            (owner != old_owner).then_some(owner)
        })
        .await;
    let resumed_after = killed_at.elapsed();
    let out = refit()
        .args(["upgrade", "--to", &release(37), "--context", "refit-testbed", "--yes", "--kubeconfig"])
        .arg(east.join("kubeconfig"))
        .arg("--store")
        .arg(root.join("second.db"))
        .args(["--action", &east_action])
        .args(SANDBOX_ACCEPTS)
        .args(support::etcd_backup_args(&Testbed::attach(&east).unwrap()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second upgrade ran next to the resumed one: {stderr}");
    assert!(stderr.contains("another refit upgrade is running against this cluster"), "{stderr}");
    assert!(stderr.contains(&format!("pid {survivor_pid}")), "refused naming the survivor: {stderr}");

    let runs = hub.api("UpdateRun");
    let run = eventually("the run ends", Duration::from_secs(400), &new_log, async || {
        let r = runs.get("to-137").await.unwrap();
        matches!(r.data["status"]["state"].as_str(), Some("Completed" | "Failed")).then_some(r)
    })
    .await;
    let after = hub_requests(&hub.client).await;
    let status = &run.data["status"];
    assert_eq!(status["state"], "Completed", "{status}");
    assert_eq!((status["done"].as_u64(), status["members"].as_u64()), (Some(2), Some(2)), "{status}");
    // What the watchers saw through the kill and the takeover: no worker kubelet ever newer
    // than a control plane's, never more than the one worker unschedulable at once.
    for (member, w) in ["east-1", "west-1"].into_iter().zip(watchers) {
        let seen = w.stop();
        assert!(seen.skew_breaches.is_empty(), "{member}: {:?}", seen.skew_breaches);
        assert!(seen.max_unschedulable_workers <= 1, "{member}: {seen:?}");
    }
    // The same run resumed from the hub's journal, under the survivor's claim: one run, the
    // killed leader's id, every step done.
    let (owner, east_runs, steps) = hub_journal(&upgrades, "to-137.east-1").await.unwrap();
    assert_eq!(owner, new_owner);
    assert_eq!(east_runs, old_runs, "east-1's run was not resumed: {steps}");
    let log = std::fs::read_to_string(&new_log).unwrap_or_default();
    assert!(!log.contains("given back"), "the survivor gave back an orphan's cordons:\n{log}");
    for (member, dir) in [("east-1", &east), ("west-1", &west)] {
        let cu = upgrades.get(&format!("to-137.{member}")).await.unwrap();
        assert_eq!(cu.data["status"]["state"], "Completed", "{member}: {:?}", cu.data);
        assert!(
            !dir.join("concurrent.log").exists(),
            "{member}: two node actions at once: {}; actions started:\n{}",
            std::fs::read_to_string(dir.join("concurrent.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("actions.log")).unwrap_or_default()
        );
        let steps = cu.data["status"]["journal"]["steps"].as_object().cloned().unwrap_or_default();
        // Every node upgraded, each node action run to its end exactly once (an action
        // killed with the leader is started again, never finished twice), each node's steps
        // journaled done.
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(member_client(dir).await);
        let nodes = nodes.list(&ListParams::default()).await.unwrap().items;
        let done = std::fs::read_to_string(dir.join("done.log")).unwrap_or_default();
        let started = std::fs::read_to_string(dir.join("actions.log")).unwrap_or_default();
        for n in &nodes {
            let name = n.metadata.name.clone().unwrap();
            let info = n.status.as_ref().and_then(|s| s.node_info.as_ref()).unwrap();
            assert_eq!(info.kubelet_version.trim_start_matches('v'), release(37), "{member}/{name}");
            assert!(
                !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
                "{member}/{name} cordoned"
            );
            let finished = done.lines().filter(|l| *l == name).count();
            assert!(
                started.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{member}/{name}: {started}"
            );
            assert_eq!(finished, 1, "{member}/{name} finished {finished} times; started:\n{started}");
            let journaled = steps.get(&name).and_then(|s| s.as_str()).unwrap_or_default();
            assert!(
                !journaled.is_empty() && journaled.split(',').all(|s| s.ends_with("=done")),
                "{member}/{name}: journaled steps '{journaled}'"
            );
        }
        assert_eq!(done.lines().count(), nodes.len(), "{member}: {done}");
    }
    let (code, metrics) = http_get(survivor.addr, "/metrics");
    assert_eq!(code, 200);
    for line in ["refit_controller_leader 1", "refit_controller_leader_changes_total 1"] {
        assert!(metrics.lines().any(|l| l == line), "no '{line}' in\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("refit_controller_node_step_duration_seconds_count{step=\"upgrade\"}")),
        "the in-process upgrades' node steps are not timed:\n{metrics}"
    );
    let total: u64 = after.iter().map(|(k, n)| n.saturating_sub(before.get(k).copied().unwrap_or(0))).sum();
    let mut by_kind: Vec<((String, String), u64)> = after
        .iter()
        .map(|(k, n)| (k.clone(), n.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, n)| *n > 0)
        .collect();
    by_kind.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    println!(
        "takeover after kill -9 of the leader: leading again after {:.1} s, east-1's run {} resumed after {:.1} s; east-1 node actions started: {:?}; hub API requests (refit resources, Secrets, Events; the test's polls included) for 2 member upgrades: {total} (~{} per member upgrade): {by_kind:?}",
        takeover.as_secs_f64(),
        old_runs.join(","),
        resumed_after.as_secs_f64(),
        std::fs::read_to_string(east.join("actions.log")).unwrap_or_default().lines().collect::<Vec<_>>(),
        total / 2
    );
    drop(replicas);
    hub.tb.stop();
}

/// `refit fleet --hub KUBECONFIG -n NS ARGS...`.
fn hub_fleet(hub: &Hub) -> assert_cmd::Command {
    let mut c = refit();
    c.args(["fleet", "--hub"]).arg(hub.tb.kubeconfig()).args(["--hub-namespace", NS]);
    c
}

/// The member's state and reason in a run (`run show -o json`).
fn member_state(run: &serde_json::Value, member: &str) -> (String, String) {
    for s in run["stages"].as_array().unwrap() {
        for g in s["groups"].as_array().unwrap() {
            for m in g["members"].as_array().unwrap() {
                if m["name"] == member {
                    return (m["state"].as_str().unwrap_or_default().to_string(), m.to_string());
                }
            }
        }
    }
    panic!("no member {member} in {run:#}")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fleet_verb_works_against_the_hub_as_in_local_mode() {
    // The local fleet tests' scenarios — stop/start, a maintenance window, skip, a failed
    // member retried — driven only through `refit fleet --hub`, the controller reconciling;
    // bad input is refused (exit 2) with nothing written.
    let hub = Hub::start().await;
    let root = hub.root().to_path_buf();
    let log = root.join("controller.log");
    // A node action that logs the node, fails while `fail` exists, waits while `hold` exists.
    let script = root.join("act.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$2\" >> \"$1/actions.log\"\nif [ -e \"$1/fail\" ]; then echo \"simulated failure on $2\" >&2; exit 3; fi\nwhile [ -e \"$1/hold\" ]; do sleep 0.1; done\nexec '{}' sandbox upgrade-node --dir \"$1\" \"$2\" --to \"$3\"\n",
            assert_cmd::cargo::cargo_bin("refit").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut guards = Vec::new();
    for (name, group) in [("m-a", "a"), ("m-b", "b")] {
        let dir = root.join(name);
        guards.push(support::sandbox_up(&dir, &release(36), 1, 1));
        let action = format!("exec:{} {} {{node}} {{to}}", script.display(), dir.display());
        let backup = support::etcd_backup_args(&Testbed::attach(&dir).unwrap());
        support::stdout(
            hub_fleet(&hub)
                .args(["member", "add", name, "--update-group", group, "--context", "refit-testbed"])
                .arg("--kubeconfig")
                .arg(dir.join("kubeconfig"))
                .args(["--action", &action])
                .args(SANDBOX_ACCEPTS.iter().map(|a| format!("--upgrade-arg={a}")))
                .args(backup.iter().map(|a| format!("--upgrade-arg={a}"))),
        );
    }
    let dir = |m: &str| root.join(m);
    // Bound to its cluster as the controller binds; the kubeconfig is in a Secret, not the Member.
    let members = hub.api("Member");
    let m = members.get("m-a").await.unwrap();
    assert_eq!(m.data["status"]["clusterUid"], cluster_uid(&dir("m-a").join("kubeconfig")).await.as_str());
    assert_eq!(m.data["spec"]["kubeconfigSecret"]["name"], "m-a-kubeconfig");
    let secret = Api::<Secret>::namespaced(hub.client.clone(), NS).get("m-a-kubeconfig").await.unwrap();
    assert!(secret.data.unwrap().contains_key("kubeconfig"));
    let listed: serde_json::Value =
        serde_json::from_str(&support::stdout(hub_fleet(&hub).args(["member", "list", "-o", "json"])))
            .unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["m-a", "m-b"]);

    // Bad input: one line, exit 2, nothing written.
    // (A CRD's storage answers 429 "(re)initializing" for a moment after its first use.)
    let count = |kind: &str| {
        let api = hub.api(kind);
        async move {
            for _ in 0..20 {
                match api.list(&ListParams::default()).await {
                    Ok(l) => return l.items.len(),
                    Err(kube::Error::Api(s)) if s.code == 429 => {
                        tokio::time::sleep(Duration::from_millis(500)).await
                    }
                    Err(e) => panic!("listing: {e}"),
                }
            }
            panic!("the hub kept answering 429")
        }
    };
    refused(hub_fleet(&hub).args(["member", "show", "nope"]));
    refused(
        hub_fleet(&hub)
            .args(["member", "add", "m-a", "--context", "refit-testbed", "--kubeconfig"])
            .arg(dir("m-a").join("kubeconfig")),
    );
    let bad = root.join("bad.yaml");
    std::fs::write(&bad, "stages:\n  - name: x\n    groups: [{name: a, maxConcurrency: zero}]\n").unwrap();
    refused(hub_fleet(&hub).args(["strategy", "create", "bad", "-f"]).arg(&bad));
    // A command health gate would run in the controller: a hub refuses it (a local fleet runs it).
    std::fs::write(&bad, "stages:\n  - name: x\n    groups: [{name: a}]\n    healthGates: [{type: command, command: [./smoke.sh]}]\n").unwrap();
    let why = refused(hub_fleet(&hub).args(["strategy", "create", "bad", "-f"]).arg(&bad));
    assert!(why.contains("prometheus and http health gates only"), "{why}");
    assert_eq!(count("UpdateStrategy").await, 0);
    let create_r0 = || {
        let mut c = hub_fleet(&hub);
        c.args(["run", "create", "r0", "--upgrade-type", "Full", "--kubernetes-version", &release(37)]);
        c
    };
    refused(create_r0().args(["--strategy", "nope"]));
    refused(create_r0().arg("--stages").arg(&bad));
    assert_eq!(count("UpdateRun").await, 0);
    refused(hub_fleet(&hub).arg("daemon"));
    refused(hub_fleet(&hub).args(["profile", "generate-run", "x"]));
    assert_eq!((count("Member").await, count("AutoUpgradeProfile").await), (2, 0));

    // Stage a, then stage b; m-b's window opens in two hours.
    // Stage a also has a health gate (http, answered by this test): the controller's driver
    // probes it as a local driver does.
    let (port, health, hits) = support::health_server();
    let two = root.join("two.yaml");
    std::fs::write(
        &two,
        format!("stages:\n  - name: a\n    groups: [{{name: a}}]\n    afterGates: [{{type: Approval}}]\n    healthGates: [{{name: shop, type: http, url: 'http://127.0.0.1:{port}/healthz'}}]\n  - name: b\n    groups: [{{name: b}}]\n"),
    )
    .unwrap();
    support::stdout(hub_fleet(&hub).args(["strategy", "create", "two", "-f"]).arg(&two));
    std::fs::write(root.join("only-b.yaml"), "stages:\n  - name: b\n    groups: [{name: b}]\n").unwrap();
    support::stdout(
        hub_fleet(&hub).args(["strategy", "create", "only-b", "-f"]).arg(root.join("only-b.yaml")),
    );
    let shown: serde_json::Value = serde_json::from_str(&support::stdout(
        hub_fleet(&hub).args(["strategy", "show", "two", "-o", "json"]),
    ))
    .unwrap();
    assert_eq!(shown["stages"][1]["name"], "b");
    let opens =
        (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2)).to_zoned(jiff::tz::TimeZone::UTC);
    let window = root.join("later.yaml");
    std::fs::write(
        &window,
        format!(
            "recurrence: {{weekly: [Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday]}}\nstart: \"{}\"\ndurationMinutes: 30\ntimeZone: UTC\n",
            opens.strftime("%H:%M")
        ),
    )
    .unwrap();
    support::stdout(hub_fleet(&hub).args(["member", "update", "m-b", "--window"]).arg(&window));
    assert!(members.get("m-b").await.unwrap().data["spec"]["maintenanceWindow"].is_object());

    let _controller = start_controller_with(&hub.tb.kubeconfig(), NS, Some(&log), &[]);
    let to = release(37);
    support::stdout(hub_fleet(&hub).args([
        "run",
        "create",
        "r1",
        "--upgrade-type",
        "Full",
        "--kubernetes-version",
        &to,
        "--strategy",
        "two",
    ]));
    let show = |run: &str| -> serde_json::Value {
        let out = hub_fleet(&hub).args(["run", "show", run, "-o", "json"]).output().unwrap();
        if out.status.success() { serde_json::from_slice(&out.stdout).unwrap() } else { json!({}) }
    };
    let until = |what: &str, run: &str, pred: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = show(run);
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within 2 minutes: {v:#}\ncontroller log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    until("the controller initializes r1", "r1", &|v| v["state"] == "NotStarted");

    // Stop while m-a's upgrade is under way: it finishes, nothing new starts.
    std::fs::write(dir("m-a").join("hold"), "").unwrap();
    support::stdout(hub_fleet(&hub).args(["run", "start", "r1"]));
    until("m-a's upgrade is under way", "r1", &|v| {
        v.get("stages").is_some() && member_state(v, "m-a").0 == "Running"
    });
    support::stdout(hub_fleet(&hub).args(["run", "stop", "r1"]));
    until("the stop is acted on", "r1", &|v| v["state"] == "Stopping");
    std::fs::remove_file(dir("m-a").join("hold")).unwrap();
    let v = until("r1 stops", "r1", &|v| v["state"] == "Stopped");
    assert_eq!(member_state(&v, "m-a").0, "Completed", "{v:#}");
    assert_eq!(member_state(&v, "m-b").0, "NotStarted", "{v:#}");
    // Started again: stage a's approval and its failing health gate hold stage b; approved
    // through `refit fleet --hub` as the user the hub authenticates (the admission policy checks
    // the recorded approver).
    support::stdout(hub_fleet(&hub).args(["run", "start", "r1"]));
    let v = until("r1 waits on stage a's failing health gate", "r1", &|v| {
        v.get("stages").is_some() && v["stages"][0]["healthGates"][0]["waiting"]["kind"] == "Failing"
    });
    let waiting = v["stages"][0]["healthGates"][0]["waiting"]["reason"].as_str().unwrap_or_default();
    assert!(waiting.contains("HTTP 500"), "{v:#}");
    assert_eq!(member_state(&v, "m-b").0, "NotStarted", "{v:#}");
    let approved = support::stdout(hub_fleet(&hub).args(["gate", "approve", "r1", "a/after/1"]));
    let user = approved
        .split_once("approved by ")
        .and_then(|(_, rest)| rest.split_once(" at "))
        .map(|(user, _)| user)
        .unwrap_or_else(|| panic!("{approved}"));
    let gate = hub.api("Gate").get("r1.a.after.1").await.unwrap();
    assert_eq!(gate.data["spec"]["approval"]["approver"], user, "{:?}", gate.data);
    // Approved, but the health gate still fails: probed again, stage b does not start; once it
    // answers 200 the gate passes.
    let seen = hits.load(std::sync::atomic::Ordering::SeqCst);
    until("probed again", "r1", &|_| hits.load(std::sync::atomic::Ordering::SeqCst) >= seen + 2);
    assert_eq!(member_state(&show("r1"), "m-b").0, "NotStarted", "the health gate holds stage b");
    health.store(200, std::sync::atomic::Ordering::SeqCst);
    until("stage a's health gate passes", "r1", &|v| v["stages"][0]["healthGates"][0]["state"] == "Passed");
    // Then m-b waits for its window.
    let v = until("m-b waits for its window", "r1", &|v| {
        v.get("stages").is_some() && member_state(v, "m-b").0 == "Pending"
    });
    assert!(member_state(&v, "m-b").1.contains("WindowClosed"), "{v:#}");
    // Skipped (a skip of a member the run does not have is refused, nothing written).
    refused(hub_fleet(&hub).args(["run", "skip", "r1", "--targets", "Member:nope"]));
    refused(hub_fleet(&hub).args(["run", "skip", "r1", "--targets", "Member:m-b", "--by", "mallory"]));
    support::stdout(hub_fleet(&hub).args(["run", "skip", "r1", "--targets", "Member:m-b"]));
    let v = until("r1 completes", "r1", &|v| v["state"] == "Completed");
    assert_eq!(member_state(&v, "m-b").0, "Skipped", "{v:#}");
    // m-a's two nodes, each once (the stop did not interrupt or repeat one).
    assert_eq!(std::fs::read_to_string(dir("m-a").join("actions.log")).unwrap().lines().count(), 2);
    assert!(!dir("m-b").join("actions.log").exists(), "m-b was touched");

    // A failed member retried: m-b's window cleared, its node action fails once.
    support::stdout(hub_fleet(&hub).args(["member", "update", "m-b", "--clear-window"]));
    std::fs::write(dir("m-b").join("fail"), "").unwrap();
    support::stdout(hub_fleet(&hub).args([
        "run",
        "create",
        "r2",
        "--upgrade-type",
        "Full",
        "--kubernetes-version",
        &to,
        "--strategy",
        "only-b",
    ]));
    until("the controller initializes r2", "r2", &|v| v["state"] == "NotStarted");
    let out = hub_fleet(&hub).args(["run", "start", "r2", "--wait"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(member_state(&show("r2"), "m-b").0, "Failed");
    std::fs::remove_file(dir("m-b").join("fail")).unwrap();
    let out =
        hub_fleet(&hub).args(["run", "retry", "r2", "--failed", "--wait", "-o", "json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = show("r2");
    assert_eq!((v["state"].as_str(), member_state(&v, "m-b").0.as_str()), (Some("Completed"), "Completed"));

    // Lists, gates and deletes.
    let runs: serde_json::Value =
        serde_json::from_str(&support::stdout(hub_fleet(&hub).args(["run", "list", "-o", "json"]))).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    support::stdout(hub_fleet(&hub).args(["gate", "list", "--all"]));
    support::stdout(hub_fleet(&hub).args(["run", "delete", "r2"]));
    assert!(hub.api("UpdateRun").get_opt("r2").await.unwrap().is_none());
    assert!(hub.api("ClusterUpgrade").get_opt("r2.m-b").await.unwrap().is_none());
    support::stdout(hub_fleet(&hub).args([
        "profile",
        "create",
        "weekly",
        "--channel",
        "Stable",
        "--strategy",
        "two",
        "--disabled",
    ]));
    let p: serde_json::Value = serde_json::from_str(&support::stdout(
        hub_fleet(&hub).args(["profile", "show", "weekly", "-o", "json"]),
    ))
    .unwrap();
    assert_eq!((p["channel"].as_str(), p["disabled"].as_bool()), (Some("Stable"), Some(true)));
    support::stdout(hub_fleet(&hub).args(["profile", "delete", "weekly"]));
    support::stdout(hub_fleet(&hub).args(["member", "remove", "m-b"]));
    assert!(
        Api::<Secret>::namespaced(hub.client.clone(), NS).get_opt("m-b-kubeconfig").await.unwrap().is_none()
    );
    drop(guards);
    hub.tb.stop();
}
