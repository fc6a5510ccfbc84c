//! `refit serve` over a live fleet run, watched by a real headless Chromium (Debian's package;
//! `.ci/run` installs it) driven through the DevTools protocol over a pipe.
//!
//! Two sandbox clusters are the members (canary-1: 1.36 with two workers; west-1: one worker),
//! upgraded to 1.37 by real `refit upgrade` subprocesses of the real fleet driver. On canary-1 a
//! Deployment pinned to worker-001 under a budget that allows no disruption blocks the drain:
//! the browser must show that pod and that budget; when the budget is relaxed the page must
//! update without a reload; the canary stage's approval gate is approved from the keyboard in
//! the page and the run must advance to the end. Screenshots are kept in
//! `target/serve-artifacts/`; memory and latency are printed (the report quotes them).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use refit_testbed::Testbed;
use refit_testbed::workloads::{Budget, apply, deployment, pdb, wait_pods_ready};
use serde_json::{Value, json};
use support::{Sandbox, refit, release};

const TOKEN: &str = "5e7f0c1a9b3d4e6f8a2c5b7d9e1f3a5c";

const STRATEGY: &str = r#"
stages:
  - name: canary
    groups: [{name: canary}]
    afterGates: [{type: Approval, displayName: canary looks good}]
  - name: prod
    groups: [{name: wave}]
"#;

// ------------------------------------------------------------------ a small HTTP client

/// GET `path` with the token; (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        unchunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn api(addr: &str, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_api(addr: &str, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let v = api(addr, path);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------ Chromium over DevTools

/// Headless Chromium driven through `--remote-debugging-pipe` (fd 3: commands in, fd 4:
/// answers out, NUL-separated JSON): no port, no WebSocket library.
struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    answers: mpsc::Receiver<Value>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh").arg("-c").arg(format!("command -v {c}")).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!(
        "no Chromium on this machine: apt-get install chromium (.ci/run installs it); this test needs a real browser"
    );
}

impl Browser {
    #[allow(unsafe_code)]
    fn launch() -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = std::io::pipe().unwrap();
        let (out_r, out_w) = std::io::pipe().unwrap();
        let (r, w) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        assert!(r > 4 && w > 4, "pipe fds must not collide with 3 and 4");
        let mut c = Command::new(chromium());
        c.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: between fork and exec only dup2 runs (async-signal-safe); it gives the child
        // the pipe ends as fds 3 and 4 (dup2 clears close-on-exec on the copies).
        unsafe {
            c.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().unwrap();
        drop(cmd_r);
        drop(out_w);
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out_r);
            loop {
                let mut msg = Vec::new();
                match reader.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        msg.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&msg)
                            && v.get("id").is_some()
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser { child, to: cmd_w, answers, next: 0, session: String::new(), _profile: profile };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call_browser("Target.attachToTarget", json!({"targetId": id, "flatten": true}));
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        b.call("Page.enable", json!({}));
        b
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let v = self.answers.recv_timeout(Duration::from_secs(60)).expect("Chromium answers within 60 s");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.send(method, params, Some(&s))
    }

    fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({"expression": js, "returnByValue": true, "awaitPromise": true}));
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_js(
            "the page loaded",
            "document.readyState === 'complete' && !!document.getElementById('live')",
        );
    }

    /// Waits until `js` is truthy in the page (polled every 50 ms, up to four minutes).
    fn wait_js(&mut self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let v = self.eval(js);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if Instant::now() > deadline {
                let html = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out waiting for {what}; the page shows:\n{}", html.as_str().unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Presses a key in the page as a keyboard would.
    fn key(&mut self, key: &str, code: &str, vk: u32, text: &str) {
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk, "text": text}),
        );
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk}),
        );
    }

    fn loaded_at(&mut self) -> Value {
        self.eval("document.documentElement.dataset.loadedAt")
    }
}

// ------------------------------------------------------------------ the fleet

fn fleet(store: &Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("refit"));
    c.arg("fleet").arg("--store").arg(store);
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn artifacts() -> PathBuf {
    // target/debug/refit → target/serve-artifacts
    let dir =
        assert_cmd::cargo::cargo_bin("refit").parent().unwrap().parent().unwrap().join("serve-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_live_fleet_run_in_a_real_browser() {
    let shots = artifacts();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = root.join("refit.db");
    let exe = assert_cmd::cargo::cargo_bin("refit");
    let script = root.join("node.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n# $1 sandbox dir, $2 node, $3 version\nsleep 1\nexec '{}' sandbox upgrade-node --dir \"$1\" \"$2\" --to \"$3\"\n", exe.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut guards = Vec::new();
    for (name, group, workers) in [("canary-1", "canary", 2), ("west-1", "wave", 1)] {
        let dir = root.join(name);
        let out = refit()
            .args(["sandbox", "up", "--version", &release(36), "--workers", &workers.to_string(), "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        guards.push(Sandbox(dir.clone()));
        assert!(out.status.success(), "sandbox up: {}", String::from_utf8_lossy(&out.stderr));
        let action = format!("exec:{} {} {{node}} {{to}}", script.display(), dir.display());
        ok(fleet(&store)
            .args(["member", "add", name, "--update-group", group, "--kubeconfig"])
            .arg(dir.join("kubeconfig"))
            .args([
                "--context",
                "refit-testbed",
                "--action",
                &action,
                "--upgrade-arg=--ignore-safety-checks",
                "--upgrade-arg=--drain-timeout=10m",
            ])
            .args(
                support::etcd_backup_args(&Testbed::attach(&dir).unwrap())
                    .into_iter()
                    .map(|a| format!("--upgrade-arg={a}")),
            ));
    }
    std::fs::write(root.join("strategy.yaml"), STRATEGY).unwrap();
    ok(fleet(&store).args(["strategy", "create", "two-stage", "-f"]).arg(root.join("strategy.yaml")));

    // On canary-1: a pod on worker-001 under a budget that allows no disruption.
    let canary = Testbed::attach(&root.join("canary-1")).unwrap();
    let client = canary.client().await.unwrap();
    canary.create_namespace("shop").await.unwrap();
    let mut d = deployment("shop", "web", 1);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "worker-001"});
    apply::<Deployment>(&client, d).await.unwrap();
    apply::<PodDisruptionBudget>(&client, pdb("shop", "web", "web", Budget::MinAvailable(1))).await.unwrap();
    wait_pods_ready(&client, "shop", "app=web", 1, Duration::from_secs(60)).await.unwrap();

    // The server: a token file (so the browser logs in), an ephemeral port.
    let tokens = root.join("tokens.csv");
    std::fs::write(&tokens, format!("{TOKEN},alice\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut serve = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(&store)
        .arg("--token-file")
        .arg(&tokens)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(serve.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let serve_pid = serve.id();
    let _serve = Killed(serve);
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let addr = url.trim_start_matches("http://").to_string();
    std::thread::sleep(Duration::from_millis(500));
    let idle_kib = rss_kib(serve_pid);

    ok(fleet(&store).args([
        "run",
        "create",
        "to-137",
        "--upgrade-type",
        "Full",
        "--kubernetes-version",
        &release(37),
        "--strategy",
        "two-stage",
    ]));
    let driver = Killed(
        fleet(&store)
            .args(["run", "start", "to-137", "--wait", "-o", "json"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Twenty more event-stream clients for the whole run (memory while streaming).
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .unwrap();
        streams.push(s);
    }
    let mut streaming_kib = 0;

    // Log in like a person: the login form, the token typed in.
    let mut b = Browser::launch();
    b.navigate(&format!("{url}/login?next=/"));
    b.eval(&format!("document.getElementById('token').value = '{TOKEN}'; document.querySelector('form.login').submit(); true"));
    b.wait_js(
        "the runs page after login",
        "location.pathname === '/' && document.body !== null && document.body.innerText.includes('signed in as')",
    );

    // The canary member's cluster run, once the driver started it.
    let run = wait_api(&addr, "/api/fleet/runs/to-137", "canary-1's cluster run", |v| {
        v["progressByMember"]
            .as_array()
            .is_some_and(|p| p.iter().any(|m| m["member"] == "canary-1" && m["operation"].is_string()))
    });
    let op = run["progressByMember"].as_array().unwrap().iter().find(|m| m["member"] == "canary-1").unwrap()
        ["operation"]
        .as_str()
        .unwrap()
        .to_string();
    wait_api(&addr, &format!("/api/runs/{op}"), "the blocked drain", |v| {
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["node"] == "worker-001" && n["blocker"].is_object()))
    });
    b.navigate(&format!("{url}/runs/{op}"));
    let shown = b.wait_js(
        "the blocker on the page",
        "(document.querySelector('.blockers li[data-node=\"worker-001\"]') || {}).innerText",
    );
    let shown = shown.as_str().unwrap().to_string();
    assert!(shown.contains("shop/web-"), "the pod is named: {shown}");
    assert!(shown.contains("PodDisruptionBudget shop/web"), "the budget is named: {shown}");
    let row = b.eval("document.querySelector('tr[data-node=\"worker-001\"]').innerText");
    assert!(row.as_str().unwrap().contains("blocked"), "{row}");
    b.screenshot(&shots.join("1-drain-blocked-by-pdb.png"));
    streaming_kib = streaming_kib.max(rss_kib(serve_pid));

    // Relax the budget and unpin the pod: the drain goes through, the page follows without a
    // reload. A MutationObserver notes when the drain shows done.
    let loaded = b.loaded_at();
    b.eval(
        "window.__drainDone = null; new MutationObserver(() => { if (!window.__drainDone && document.querySelector('tr[data-node=\"worker-001\"] li[data-step=\"drain\"].done')) window.__drainDone = Date.now(); }).observe(document.getElementById('live'), {childList: true, subtree: true}); true",
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"nodeSelector": null}}}})),
        )
        .await
        .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "shop");
    pdbs.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minAvailable": 0}})))
        .await
        .unwrap();
    let seen_ms = b.wait_js("the drain done on the page", "window.__drainDone").as_i64().unwrap();
    assert_eq!(b.loaded_at(), loaded, "updated in place, not reloaded");
    assert_eq!(b.eval("!!document.querySelector('.blockers')"), json!(false), "the blocker is gone");
    let view = api(&addr, &format!("/api/runs/{op}"));
    let drain =
        view["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "worker-001").unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "drain")
            .unwrap()
            .clone();
    let started: jiff::Timestamp = drain["startedAt"].as_str().unwrap().parse().unwrap();
    let done_ms = started.as_millisecond() + drain["millis"].as_i64().unwrap();
    let drain_latency_ms = seen_ms - done_ms;
    b.screenshot(&shots.join("2-drain-done-live.png"));

    // The gate: reached when canary-1 is done. Approve it from the keyboard.
    b.navigate(&format!("{url}/fleet/runs/to-137"));
    b.wait_js(
        "the pending gate with its Approve button",
        "!!document.querySelector('.gate-row[data-gate=\"canary/after/1\"] button.act-approve') && document.querySelector('.gate-row[data-gate=\"canary/after/1\"] .state').innerText === 'Pending'",
    );
    streaming_kib = streaming_kib.max(rss_kib(serve_pid));
    b.screenshot(&shots.join("3-gate-pending.png"));
    let loaded = b.loaded_at();
    b.eval(
        "document.querySelector('.gate-row[data-gate=\"canary/after/1\"] button.act-approve').focus(); true",
    );
    b.key("Enter", "Enter", 13, "\r");
    b.wait_js(
        "the confirmation dialog",
        "document.getElementById('confirm').open && document.activeElement.id === 'confirm-ok'",
    );
    b.screenshot(&shots.join("4-approve-confirmation.png"));
    b.key("Enter", "Enter", 13, "\r");
    b.wait_js(
        "the gate approved on the page",
        "(document.querySelector('.gate-row[data-gate=\"canary/after/1\"]') || {}).innerText?.includes('approved by alice')",
    );
    let after = api(&addr, "/api/fleet/runs/to-137");
    let gate = &after["stages"][0]["afterGates"][0];
    assert_eq!((gate["state"].as_str(), gate["approval"]["by"].as_str()), (Some("Completed"), Some("alice")));
    let audit = api(&addr, "/api/fleet/runs/to-137/audit");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["actor"] == "alice" && a["action"] == "approve-gate" && a["outcome"] == "done"),
        "{audit}"
    );

    // The run advances to the end; the page follows without a reload.
    b.wait_js(
        "the run completed on the page",
        "document.querySelector('h1 .state').innerText === 'Completed'",
    );
    assert_eq!(b.loaded_at(), loaded, "the approval and what followed updated the page in place");
    let updates = b.eval("document.getElementById('live').dataset.updates");
    b.screenshot(&shots.join("5-run-completed.png"));
    streaming_kib = streaming_kib.max(rss_kib(serve_pid));
    let mut driver = driver;
    let status = driver.0.wait().unwrap();
    assert!(status.success(), "the fleet run ended {status}");
    let members_done = api(&addr, "/api/fleet/runs/to-137")["progress"].clone();
    let _ = members_done;

    // The event streams got the same events.
    let mut first_stream = streams.remove(0);
    first_stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = first_stream.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("text/event-stream"), "{text}");

    let metrics = http_get(&addr, "/metrics").1;
    assert!(metrics.contains("refit_gate_approval_latency_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("refit_fleet_run_state{run=\"to-137\",state=\"Completed\"} 1"), "{metrics}");

    eprintln!(
        "serve measurements: idle RSS {idle_kib} KiB; max RSS with 21 event-stream clients during the run {streaming_kib} KiB; engine → browser latency of the drain's step-done {drain_latency_ms} ms; live page updates {updates}; screenshots in {}",
        shots.display()
    );
    drop(streams);
    drop(guards);
}
