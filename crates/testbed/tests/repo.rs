//! The sandbox's package repository against a real apt, dpkg and gpg.
//!
//! apt runs in a throwaway "host": a process in its own mount namespace with overlays over
//! /etc, /usr and /var (upper layers in a temporary directory) and the machine's own Debian
//! sources removed, so it installs, holds and upgrades packages for real without touching
//! the machine. The repository is served on 127.0.0.1 by [`RepoServer`].
//!
//! Needs root (mount namespaces) and the testbed cache with the packages of the 1.36 and 1.37
//! releases (`refit sandbox build`). Timings are printed (`--nocapture`), never asserted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use refit_core::Version;
use refit_exec::{NodeContext, PackageManager, kubeadm_recipe};
use refit_testbed::kubeadm::repo::{
    self, NodeCommand, PACKAGES, RepoServer, Repository, SOURCES_PATH, node_install_commands,
};
use refit_testbed::{BuildEvent, Cache, Check, Component, EntryState, TestbedVersions};

/// The two releases the tests move between (the configured 1.36 and 1.37 patches).
fn releases() -> (Version, Version) {
    let versions = TestbedVersions::from_env().unwrap();
    let pick = |m: &str| {
        versions.kubernetes_for_minor(m.parse().unwrap()).cloned().expect("1.36 and 1.37 configured")
    };
    (pick("1.36"), pick("1.37"))
}

fn cache() -> Cache {
    let cache = Cache::from_env().unwrap();
    let (old, new) = releases();
    cache
        .require(&[Component::KubernetesDebs(old), Component::KubernetesDebs(new)])
        .expect("build the testbed first (refit sandbox build)");
    cache
}

/// A sandbox directory with both minors' repositories, served on 127.0.0.1.
struct Served {
    dir: tempfile::TempDir,
    repo: Repository,
    server: Option<RepoServer>,
}

impl Served {
    fn new() -> Served {
        let cache = cache();
        let (old, new) = releases();
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let repo = Repository::create(dir.path(), &cache, &[old, new]).unwrap();
        println!("repository generation (key, 2 minors, 6 debs): {:.2}s", started.elapsed().as_secs_f64());
        assert_eq!(gpg_agents(dir.path()), Vec::<String>::new(), "no gpg-agent outlives Repository::create");
        let server = RepoServer::start(repo.root(), "127.0.0.1:0".parse().unwrap()).unwrap();
        Served { dir, repo, server: Some(server) }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    /// Stops the server and checks that nothing the repository started is left.
    fn finish(mut self) {
        let addr = self.addr();
        drop(self.server.take());
        assert!(TcpStream::connect(addr).is_err(), "the server stopped listening");
        assert_eq!(gpg_agents(self.dir.path()), Vec::<String>::new());
    }
}

/// Command lines of running processes that mention `dir` (a gpg-agent names its --homedir).
fn gpg_agents(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains("gpg-agent") && cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

/// A throwaway host: a mount namespace whose /etc, /usr and /var are overlays, without the
/// machine's Debian sources. Commands run in it through nsenter.
struct Host {
    ns: Child,
    _layers: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let layers = tempfile::tempdir().unwrap();
        for d in ["etc", "usr", "var"] {
            std::fs::create_dir(layers.path().join(format!("{d}.upper"))).unwrap();
            std::fs::create_dir(layers.path().join(format!("{d}.work"))).unwrap();
        }
        // A fixed script; the layer directory arrives as $1.
        let script = r#"set -e
for d in etc usr var; do
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$1/$d.upper,workdir=$1/$d.work" "/$d"
done
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
echo ready
exec sleep infinity"#;
        let mut ns = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "host"])
            .arg(layers.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(ns.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if line.trim() != "ready" {
            let mut err = String::new();
            ns.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the throwaway host did not start (root and overlayfs needed): {err}");
        }
        Host { ns, _layers: layers }
    }

    /// Runs a command inside the host and returns its output (never panics on failure).
    fn run(&self, cmd: &NodeCommand) -> Output {
        let mut c = Command::new("nsenter");
        c.arg("--target").arg(self.ns.id().to_string()).args(["--mount", "--", "env"]);
        for (k, v) in &cmd.env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(&cmd.program).args(&cmd.args);
        c.stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(input) = &cmd.stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs a command that must succeed; its standard output.
    fn ok(&self, cmd: &NodeCommand) -> String {
        let out = self.run(cmd);
        assert!(out.status.success(), "`{cmd}` failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sh(&self, program: &str, args: &[&str]) -> String {
        self.ok(&command(program, args))
    }

    fn write(&self, path: &str, contents: &str) {
        let mut cmd = command("install", &["-D", "-m", "0644", "/dev/stdin", path]);
        cmd.stdin = Some(contents.as_bytes().to_vec());
        self.ok(&cmd);
    }

    /// The installed version and hold state of the three packages, and what the binaries say.
    fn installed(&self) -> (Vec<String>, Vec<String>) {
        let status = self.sh(
            "dpkg-query",
            &["-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n", "kubeadm", "kubelet", "kubectl"],
        );
        let held = self.sh("apt-mark", &["showhold"]);
        (status.lines().map(|l| l.trim().to_string()).collect(), held.lines().map(str::to_string).collect())
    }

    fn assert_at(&self, release: &Version) {
        let (status, held) = self.installed();
        let mut names = PACKAGES.to_vec();
        names.sort();
        let want: Vec<String> =
            names.iter().map(|p| format!("{p} {} hi", repo::package_version(release))).collect();
        let mut status = status;
        status.sort();
        assert_eq!(status, want, "dpkg's view of the three packages: held (h), installed (i)");
        assert_eq!(held, names, "all three held");
        assert_eq!(self.sh("/usr/bin/kubeadm", &["version", "-o", "short"]).trim(), release.git_version());
        assert_eq!(
            self.sh("/usr/bin/kubelet", &["--version"]).trim(),
            format!("Kubernetes {}", release.git_version())
        );
        let kubectl = self.sh("/usr/bin/kubectl", &["version", "--client", "-o", "json"]);
        assert!(kubectl.contains(&format!("\"gitVersion\": \"{}\"", release.git_version())), "{kubectl}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.ns.kill();
        let _ = self.ns.wait();
    }
}

fn command(program: &str, args: &[&str]) -> NodeCommand {
    NodeCommand {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        stdin: None,
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Installs the node at `release` as the install guide does; returns the seconds it took.
fn install(host: &Host, served: &Served, release: &Version) -> f64 {
    let started = Instant::now();
    for cmd in node_install_commands(&served.base_url(), release, served.repo.keyring()) {
        host.ok(&cmd);
    }
    started.elapsed().as_secs_f64()
}

/// The ssh action's own recipe for a worker moving to `to`, without the steps that need a
/// cluster (kubeadm upgrade, systemctl): the repository switch and every package step.
fn recipe_package_steps(from: &Version, to: &Version) -> Vec<NodeCommand> {
    let ctx = NodeContext {
        node: "worker-1".into(),
        roles: vec!["worker".into()],
        from: from.to_string(),
        to: to.to_string(),
        phase: "workers".into(),
        address: String::new(),
        first_control_plane: false,
    };
    let steps: Vec<NodeCommand> = kubeadm_recipe(&ctx, PackageManager::Apt)
        .unwrap()
        .into_iter()
        .filter(|c| ["sed", "apt-get", "apt-mark"].contains(&c.program.as_str()))
        .map(|c| NodeCommand { program: c.program, args: c.args, env: c.env, stdin: None })
        .collect();
    assert_eq!(
        steps.len(),
        9,
        "sed, update, simulated install of all three, kubeadm unhold/install/hold, kubelet+kubectl unhold/install/hold"
    );
    steps
}

#[test]
fn a_node_installed_at_1_36_moves_to_1_37_with_the_recipes_own_steps() {
    let (old, new) = releases();
    let served = Served::new();
    let host = Host::new();
    let seconds = install(&host, &served, &old);
    println!("apt install of kubeadm/kubelet/kubectl {old} (update + install + hold): {seconds:.2}s");
    host.assert_at(&old);
    // The package contents kubeadm and the node agent rely on.
    let kubelet_files = host.sh("dpkg", &["-L", "kubelet"]);
    for f in [
        "/usr/bin/kubelet",
        "/usr/lib/systemd/system/kubelet.service",
        "/etc/default/kubelet",
        "/etc/kubernetes/manifests/.kubelet-keep",
        "/var/lib/kubelet/.kubelet-keep",
    ] {
        assert!(kubelet_files.lines().any(|l| l == f), "kubelet ships {f}:\n{kubelet_files}");
    }
    let dropin = host.sh("cat", &["/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"]);
    assert!(dropin.contains("EnvironmentFile=-/etc/default/kubelet"), "{dropin}");
    assert!(
        host.sh("dpkg-query", &["-W", "-f", "${Depends}", "kubeadm"]).trim().is_empty(),
        "kubeadm depends on nothing"
    );

    let started = Instant::now();
    for step in recipe_package_steps(&old, &new) {
        host.ok(&step);
    }
    println!(
        "recipe package steps {old} -> {new} (switch, update, 2 installs, holds): {:.2}s",
        started.elapsed().as_secs_f64()
    );
    host.assert_at(&new);
    let source = host.sh("cat", &[SOURCES_PATH]);
    assert_eq!(source.trim(), repo::apt_source_line(&served.base_url(), new.minor_version()));

    // As on pkgs.k8s.io: the minor's repository lists its version with the repository's URL.
    let madison = host.sh("apt-cache", &["madison", "kubeadm"]);
    let want = format!(
        "kubeadm | {} | {}/core:/stable:/v{}/deb  Packages",
        repo::package_version(&new),
        served.base_url(),
        new.minor_version()
    );
    assert!(madison.lines().any(|l| l.trim() == want), "madison:\n{madison}\nwanted: {want}");
    assert!(
        !madison.contains(&repo::package_version(&old)),
        "the 1.37 repository has no 1.36 package:\n{madison}"
    );
    drop(host);
    served.finish();
}

/// A Release whose signature no longer matches: apt refuses the repository. Recorded as well:
/// once a good index of the same repository was fetched, apt 2.6 only warns, keeps the old
/// index and exits 0 — unless `--error-on=any` is given.
#[test]
fn a_tampered_release_fails_apt_update_with_the_signature_error() {
    let (old, _) = releases();
    let served = Served::new();
    let host = Host::new();
    let cmds = node_install_commands(&served.base_url(), &old, served.repo.keyring());
    let (setup, update) = (&cmds[..3], &cmds[3]);
    assert_eq!(update.args, ["update"]);
    for cmd in setup {
        host.ok(cmd);
    }

    // Change one line of the signed text of both Release forms: the signatures no longer
    // match what they cover.
    let dir = served.repo.minor_dir(old.minor_version());
    let originals: Vec<(PathBuf, String)> = ["Release", "InRelease"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect();
    let tamper = || {
        for (path, text) in &originals {
            let tampered = text.replacen("Label: refit sandbox", "Label: someone else", 1);
            assert_ne!(text, &tampered);
            std::fs::write(path, tampered).unwrap();
        }
    };
    tamper();
    let out = host.run(update);
    let said = text(&out);
    assert!(!out.status.success(), "apt-get update must fail:\n{said}");
    assert!(said.contains("BADSIG") && said.contains("is not signed"), "apt's signature error:\n{said}");
    println!("tampered, first update: exit {:?}\n{said}", out.status.code());

    // The same after one good update.
    for (path, text) in &originals {
        std::fs::write(path, text).unwrap();
    }
    host.ok(update);
    tamper();
    let out = host.run(update);
    let said = text(&out);
    println!("tampered after a good update: exit {:?}\n{said}", out.status.code());
    assert!(
        out.status.success() && said.contains("BADSIG"),
        "apt 2.6 warns and keeps the old index:\n{said}"
    );
    let strict = NodeCommand { args: vec!["update".into(), "--error-on=any".into()], ..update.clone() };
    let out = host.run(&strict);
    assert!(!out.status.success() && text(&out).contains("BADSIG"), "{}", text(&out));
    drop(host);
    served.finish();
}

#[test]
fn a_version_the_repository_lacks_is_refused_with_apts_message() {
    let (old, _) = releases();
    let served = Served::new();
    let host = Host::new();
    install(&host, &served, &old);
    let missing = format!("{}.{}.{}-*", old.major, old.minor, old.patch + 50);
    let out = host.run(&NodeCommand {
        env: vec![("DEBIAN_FRONTEND".into(), "noninteractive".into())],
        ..command("apt-get", &["install", "-y", &format!("kubeadm={missing}")])
    });
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains(&format!("Version '{missing}' for 'kubeadm' was not found")), "{said}");
    host.assert_at(&old);
    drop(host);
    served.finish();
}

/// What apt does with the recipe's explicit `=V-*` requests when an operator pinned the
/// packages in /etc/apt/preferences.d: the pins change apt's candidate (what a bare
/// `apt-get install kubeadm` or an upgrade would pick), never an explicit version — the recipe
/// moves the node in both cases (apt 2.6).
#[test]
fn pins_in_preferences_d_against_the_recipes_explicit_versions() {
    let (old, new) = releases();
    let served = Served::new();
    let (old_pkg, new_pkg) = (repo::package_version(&old), repo::package_version(&new));

    // A pin that prefers the old minor (above 1000: apt would even downgrade to it).
    let pin = format!("Package: kube*\nPin: version {}.{}.*\nPin-Priority: 1001\n", old.major, old.minor);
    let (host, policy, transcript, failed) = upgrade_with_pin(&served, &old, &new, &pin);
    println!("pin 1001 on {}.{}.*:\n{policy}\n{transcript}", old.major, old.minor);
    assert!(policy.contains(&format!("Candidate: {old_pkg}")), "the pin holds the candidate back:\n{policy}");
    assert!(policy.lines().any(|l| l.trim() == format!("*** {old_pkg} 1001")), "{policy}");
    assert_eq!(failed, None, "an explicit version request wins over a 1001 pin");
    host.assert_at(&new);
    drop(host);

    // A pin that forbids the new minor.
    let pin = format!("Package: kube*\nPin: version {}.{}.*\nPin-Priority: -1\n", new.major, new.minor);
    let (host, policy, transcript, failed) = upgrade_with_pin(&served, &old, &new, &pin);
    println!("pin -1 on {}.{}.*:\n{policy}\n{transcript}", new.major, new.minor);
    assert!(
        policy.contains(&format!("Candidate: {old_pkg}")),
        "the pin refuses the new candidate:\n{policy}"
    );
    assert!(policy.lines().any(|l| l.trim() == format!("{new_pkg} -1")), "{policy}");
    assert_eq!(failed, None, "an explicit version request wins over a -1 pin too");
    host.assert_at(&new);
    drop(host);
    served.finish();
}

/// The failed step of a run, with its output.
type Failure = Option<(String, String)>;

/// A fresh host installed at `old`, `pin` written to /etc/apt/preferences.d, then the
/// recipe's package steps towards `new` run until one fails: the host, `apt-cache policy
/// kubeadm` right after the recipe's `apt-get update`, the transcript, and the failure.
fn upgrade_with_pin(
    served: &Served,
    old: &Version,
    new: &Version,
    pin: &str,
) -> (Host, String, String, Failure) {
    let host = Host::new();
    install(&host, served, old);
    host.write("/etc/apt/preferences.d/kubernetes", pin);
    let mut transcript = String::new();
    let mut policy = String::new();
    for step in recipe_package_steps(old, new) {
        let out = host.run(&step);
        transcript.push_str(&format!("$ {step}\n{}\n", text(&out)));
        if !out.status.success() {
            return (host, policy, transcript, Some((step.to_string(), text(&out))));
        }
        if step.args == ["update"] {
            policy = host.sh("apt-cache", &["policy", "kubeadm"]);
        }
    }
    (host, policy, transcript, None)
}

/// The packages entry is derived from the binaries: cached when they did not change,
/// repackaged when one did, and a leftover of a killed packaging run is no obstacle.
#[test]
fn packages_are_rebuilt_exactly_when_an_input_changed() {
    let real = cache();
    let (old, _) = releases();
    let tmp = tempfile::tempdir().unwrap();
    let private = Cache::at(tmp.path().to_path_buf());
    // The inputs, linked (binaries) and copied (manifests) from the real cache.
    for c in [Component::Kubernetes(old.clone()), Component::KubernetesNode(old.clone())] {
        let (from, to) = (real.entry_dir(&c), private.entry_dir(&c));
        std::fs::create_dir_all(&to).unwrap();
        for f in c.files() {
            if std::fs::hard_link(from.join(f), to.join(f)).is_err() {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
        }
        std::fs::copy(from.join("manifest.json"), to.join("manifest.json")).unwrap();
    }
    let debs = Component::KubernetesDebs(old.clone());
    // A killed run's leftovers.
    let leftover = PathBuf::from(format!("{}.tmp", private.entry_dir(&debs).display()));
    std::fs::create_dir_all(leftover.join("kubelet-root")).unwrap();

    let started = Instant::now();
    let mut events = Vec::new();
    private.ensure(std::slice::from_ref(&debs), Check::Full, &mut |e| events.push(e)).unwrap();
    println!("packaging kubeadm/kubelet/kubectl {old}: {:.2}s", started.elapsed().as_secs_f64());
    assert!(events.iter().any(|e| matches!(e, BuildEvent::Finished { .. })), "{events:?}");
    assert!(!leftover.exists(), "the leftover was replaced");
    let EntryState::Ready(manifest) = private.state(&debs, Check::Full) else { panic!("packages ready") };
    for f in &manifest.files {
        println!("  {}: {:.1} MiB", f.name, f.size as f64 / 1048576.0);
    }
    assert_eq!(manifest.inputs.len(), 3);
    let dir = private.entry_dir(&debs);
    let fields = Command::new("dpkg-deb").arg("--field").arg(dir.join("kubelet.deb")).output().unwrap();
    let fields = String::from_utf8_lossy(&fields.stdout).into_owned();
    assert!(fields.contains(&format!("Version: {}\n", repo::package_version(&old))), "{fields}");
    assert!(fields.contains("Depends: mount, util-linux\n"), "{fields}");
    let contents = Command::new("dpkg-deb").arg("--contents").arg(dir.join("kubeadm.deb")).output().unwrap();
    let contents = String::from_utf8_lossy(&contents.stdout).into_owned();
    assert!(contents.contains("root/root") && contents.contains("./usr/bin/kubeadm"), "{contents}");

    let mut again = Vec::new();
    private.ensure(std::slice::from_ref(&debs), Check::Full, &mut |e| again.push(e)).unwrap();
    assert!(matches!(again.as_slice(), [BuildEvent::Cached(_)]), "{again:?}");

    // kubectl "rebuilt" (its manifest records another checksum): the packages are stale.
    let k8s = private.entry_dir(&Component::Kubernetes(old.clone())).join("manifest.json");
    let text = std::fs::read_to_string(&k8s).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["name"] == "kubectl" {
            f["sha256"] = serde_json::Value::String("0".repeat(64));
        }
    }
    std::fs::write(&k8s, serde_json::to_string(&m).unwrap()).unwrap();
    assert!(
        matches!(private.state(&debs, Check::Quick), EntryState::Corrupt(ref r) if r.contains("kubectl changed")),
        "{:?}",
        private.state(&debs, Check::Quick)
    );
    let mut rebuilt = Vec::new();
    private.ensure(std::slice::from_ref(&debs), Check::Quick, &mut |e| rebuilt.push(e)).unwrap();
    assert!(rebuilt.iter().any(|e| matches!(e, BuildEvent::Started { .. })), "{rebuilt:?}");
    assert!(matches!(private.state(&debs, Check::Quick), EntryState::Ready(_)));
}

/// The server alone (no cache needed): GET and HEAD with Content-Length, 404, 405, no escape.
#[test]
fn the_server_answers_get_and_head_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("core:/stable:/v1.37/deb");
    std::fs::create_dir_all(&dir).unwrap();
    let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("Packages"), &body).unwrap();
    let server = RepoServer::start(root.path(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.addr();

    let get = request(addr, "GET", "/core:/stable:/v1.37/deb/Packages");
    assert_eq!(get.status, 200);
    assert_eq!(get.header("content-length"), Some(body.len().to_string()));
    assert_eq!(get.body, body);
    let encoded = request(addr, "GET", "/core%3A/stable%3A/v1.37/deb/Packages");
    assert_eq!(encoded.status, 200);
    let head = request(addr, "HEAD", "/core:/stable:/v1.37/deb/Packages");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(body.len().to_string()));
    assert!(head.body.is_empty());
    for missing in ["/core:/stable:/v1.37/deb/InRelease", "/core:/stable:/v1.37/deb/", "/", "/../etc/passwd"]
    {
        assert_eq!(request(addr, "GET", missing).status, 404, "{missing}");
    }
    let post = request(addr, "POST", "/core:/stable:/v1.37/deb/Packages");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD".to_string()));

    drop(server);
    assert!(TcpStream::connect(addr).is_err(), "stopped when dropped");
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end.
fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: raw[split + 4..].to_vec() }
}
