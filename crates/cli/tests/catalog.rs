//! `refit catalog show|update` as an operator runs them, against a release server on loopback
//! (upstream's markers and whole catalogs, as dl.k8s.io and a mirror serve them).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;

/// A minimal HTTP/1.1 server: path → (status, body); counts the requests it answered.
struct Server {
    base: String,
    routes: Arc<Mutex<BTreeMap<String, (u16, String)>>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<BTreeMap<String, (u16, String)>>> = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Headers until the blank line.
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                h.lock().unwrap().push(path.clone());
                let (status, body) =
                    r.lock().unwrap().get(&path).cloned().unwrap_or((404, "not found".into()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Server { base, routes, hits }
    }

    fn route(&self, path: &str, status: u16, body: &str) {
        self.routes.lock().unwrap().insert(path.to_string(), (status, body.to_string()));
    }
}

fn refit(state: &Path) -> Command {
    let mut c = Command::cargo_bin("refit").unwrap();
    c.env("REFIT_STATE_DIR", state);
    c
}

fn json(state: &Path, args: &[&str]) -> serde_json::Value {
    let out = refit(state).args(args).args(["-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn newest(shown: &serde_json::Value, minor: &str) -> String {
    let r = shown["releases"].as_array().unwrap().iter().find(|r| r["minor"] == minor).unwrap();
    r["newest"].as_str().unwrap().to_string()
}

const EMBEDDED: &str = include_str!("../../../data/catalog.yaml");

#[test]
fn markers_add_new_patches_and_a_whole_catalog_replaces_the_one_in_use_only_when_newer() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let kept = state.join("catalog.yaml");
    let srv = Server::start();

    let before = json(&state, &["catalog", "show"]);
    assert_eq!(before["origin"]["kind"], "embedded");
    let was = newest(&before, "1.37");

    // Upstream: 1.37 moved three patches on, 1.38 exists, the rest have no marker here.
    let n: u32 = was.rsplit('.').next().unwrap().parse().unwrap();
    srv.route("/release/stable-1.37.txt", 200, &format!("v1.37.{}\n", n + 3));
    srv.route("/release/stable-1.38.txt", 200, "v1.38.0\n");
    let upstream = format!("{}/release", srv.base);
    let out = refit(&state).args(["catalog", "update", "--upstream", &upstream]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let added: Vec<String> = (1..=3).map(|i| format!("1.37.{}", n + i)).collect();
    assert!(text.contains(&format!("3 new release(s): {}", added.join(", "))), "{text}");
    assert!(text.contains("upstream has released 1.38.0"), "{text}");
    assert!(
        srv.hits.lock().unwrap().iter().any(|p| p == "/release/stable-1.36.txt"),
        "asks every supported minor"
    );
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);

    // Every command uses it now: show, and versions offers the new patch as the target.
    let after = json(&state, &["catalog", "show"]);
    assert_eq!(after["origin"]["kind"], "refreshed");
    assert_eq!(newest(&after, "1.37"), added[2]);
    let v = json(&state, &["versions", "--from", "1.36.4", "--to", "1.37"]);
    assert_eq!(v["hops"][0]["to"], added[2].as_str(), "{v}");

    // Again: nothing new, nothing written.
    let mtime = std::fs::metadata(&kept).unwrap().modified().unwrap();
    let again = json(&state, &["catalog", "update", "--upstream", &upstream]);
    assert_eq!(again["changed"], false);
    assert_eq!(std::fs::metadata(&kept).unwrap().modified().unwrap(), mtime);

    // A whole catalog older than the one in use is refused (exit 2, one line, unchanged).
    let kept_text = std::fs::read_to_string(&kept).unwrap();
    srv.route("/old.yaml", 200, &EMBEDDED.replace("updated: \"2026-11-21\"", "updated: \"2025-01-01\""));
    let out = refit(&state)
        .args(["catalog", "update", "--from", &format!("{}/old.yaml", srv.base)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("before the one in use") && err.trim().lines().count() == 1, "{err}");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), kept_text);

    // An invalid one likewise; a source that fails is exit 1; a bad --upstream exit 2.
    srv.route("/broken.yaml", 200, "schema: 1\nupdated: \"2099-01-01\"\nreleases: []\n");
    let out = refit(&state)
        .args(["catalog", "update", "--from", &format!("{}/broken.yaml", srv.base)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no releases"));
    srv.route("/down.yaml", 503, "maintenance");
    let out = refit(&state)
        .args(["catalog", "update", "--from", &format!("{}/down.yaml", srv.base)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("answered HTTP 503: maintenance") && err.contains("nothing was changed"), "{err}");
    let out = refit(&state).args(["catalog", "update", "--upstream", "ftp://x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), kept_text);

    // A newer whole catalog (a mirror's, from a file) replaces it, comments and all.
    let newer = dir.path().join("newer.yaml");
    std::fs::write(&newer, EMBEDDED.replace("updated: \"2026-11-21\"", "updated: \"2099-01-01\"")).unwrap();
    let done = json(&state, &["catalog", "update", "--from", newer.to_str().unwrap()]);
    assert_eq!(done["changed"], true);
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), std::fs::read_to_string(&newer).unwrap());
    assert_eq!(newest(&json(&state, &["catalog", "show"]), "1.37"), was);

    // A kept catalog that no longer reads does not break refit: the built-in one is used.
    std::fs::write(&kept, "schema: 99\n").unwrap();
    let shown = json(&state, &["catalog", "show"]);
    assert_eq!(shown["origin"]["kind"], "embedded");
}
