//! A package repository shaped like pkgs.k8s.io, made from the testbed's own binaries.
//!
//! Refit's ssh action upgrades a kubeadm node the documented way: switch the minor in
//! `/etc/apt/sources.list.d/kubernetes.list`, `apt-get update`, install `kubeadm=V-*` (and
//! later kubelet and kubectl) between `apt-mark unhold` and `apt-mark hold`. For that recipe
//! to meet a real apt and dpkg, the sandbox needs what pkgs.k8s.io serves:
//!
//! - **Packages** ([`package_debs`], a testbed cache entry [`Component::KubernetesDebs`]):
//!   `kubeadm`, `kubelet` and `kubectl` at `<release>-1.1` for amd64, built with
//!   `dpkg-deb --build` from the cached binaries, with the contents and control fields of
//!   kubernetes/release's krel templates (`cmd/krel/templates/latest/*`): kubeadm ships
//!   `/usr/bin/kubeadm` and the kubelet drop-in `10-kubeadm.conf` (krel's, with
//!   `/etc/default/kubelet` as on Debian); kubelet ships `/usr/bin/kubelet`, `kubelet.service`,
//!   `/etc/default/kubelet` (a conffile: `KUBELET_EXTRA_ARGS=`) and the empty
//!   `/var/lib/kubelet` and `/etc/kubernetes/manifests` kept by `.kubelet-keep` files; kubectl
//!   ships `/usr/bin/kubectl`. Differences, each because the sandbox is offline and has no
//!   systemd: kubelet does not depend on `kubernetes-cni` or `iptables` (neither is available
//!   without the internet; the node agent needs neither) and keeps only `mount` and
//!   `util-linux`; kubeadm has no `cri-tools` dependency (krel's metadata drops it from 1.32;
//!   some published 1.3x debs still carried it); no maintainer scripts (krel's are systemd
//!   enable/restart macros, no-ops without systemd); no license/README documents.
//! - **Repositories** ([`Repository::create`]): one flat repository per minor under
//!   `<sandbox>/repo/core:/stable:/v1.37/deb/` — `Packages`, `Packages.gz`, `Release` (SHA-256
//!   list), `InRelease` (clearsigned), `Release.gpg` (detached), `Release.key` (armored public
//!   key), debs under `amd64/` — signed with a key the sandbox generates once (ed25519, no
//!   passphrase, gpg home `<sandbox>/repo-gnupg` at 0700; every gpg-agent it starts is killed
//!   before returning). Nodes trust it through `signed-by=` [`KEYRING_PATH`], holding
//!   [`Repository::keyring`] (the dearmored key, as `gpg --dearmor` of `Release.key` writes it).
//! - **A server** ([`RepoServer`]): GET/HEAD of the files under a root, with Content-Length,
//!   404 for anything else; in-process for tests, detached as `refit sandbox serve-repo`.
//! - **Node setup as data** ([`node_install_commands`]): what the kubeadm install guide runs,
//!   ending with the three packages installed at a release and held.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::process::{Command, Stdio};

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, Response, StatusCode};
use refit_core::{MinorVersion, Version};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::Error;
use crate::cache::{Cache, Component, sha256_file};
use crate::lb::ServerThread;

/// The Debian revision of every package: pkgs.k8s.io's first build of a release is `-1.1`.
pub const REVISION: &str = "1.1";
/// The packages of a kubeadm node, in the order the install guide names them.
pub const PACKAGES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];
/// Where the install guide puts the repository's (dearmored) key.
pub const KEYRING_PATH: &str = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg";
/// The apt source file the install guide writes (and the recipe's `sed` rewrites).
pub const SOURCES_PATH: &str = "/etc/apt/sources.list.d/kubernetes.list";
/// The only architecture built.
pub const ARCH: &str = "amd64";

const MAINTAINER: &str = "Kubernetes Authors <dev@kubernetes.io>";

/// krel's `10-kubeadm.conf` after its Debian `sed` (`/etc/sysconfig/kubelet` → `/etc/default/kubelet`).
const KUBEADM_DROPIN: &str = r#"# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"#;

/// krel's `kubelet.service`.
const KUBELET_SERVICE: &str = "[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
";

/// krel's `kubelet.env`, installed as `/etc/default/kubelet`.
const KUBELET_ENV: &str = "KUBELET_EXTRA_ARGS=\n";

/// The Debian version of a release's packages: `1.37.1-1.1`.
pub fn package_version(release: &Version) -> String {
    format!("{release}-{REVISION}")
}

/// The file name a package has in the repository: `kubeadm_1.37.1-1.1_amd64.deb`.
pub fn deb_file_name(package: &str, release: &Version) -> String {
    format!("{package}_{}_{ARCH}.deb", package_version(release))
}

/// The path of a minor's repository below the server root: `/core:/stable:/v1.37/deb/`.
pub fn minor_path(minor: MinorVersion) -> String {
    format!("/core:/stable:/v{minor}/deb/")
}

/// The line of [`SOURCES_PATH`] for a minor, `base_url` being the server (`http://10.0.0.1:8080`).
pub fn apt_source_line(base_url: &str, minor: MinorVersion) -> String {
    format!("deb [signed-by={KEYRING_PATH}] {}{} /", base_url.trim_end_matches('/'), minor_path(minor))
}

/// One file of a package: where it is installed, its mode, and where its bytes come from.
struct PackageFile {
    path: &'static str,
    mode: u32,
    source: Source,
}

enum Source {
    Binary(PathBuf),
    Text(&'static str),
}

/// One package's control data and files.
struct PackageSpec {
    name: &'static str,
    section: &'static str,
    summary: &'static str,
    depends: Option<&'static str>,
    conffiles: &'static [&'static str],
    files: Vec<PackageFile>,
}

fn specs(cache: &Cache, release: &Version) -> Result<Vec<PackageSpec>, Error> {
    let node = cache.kubernetes_node(release)?;
    let k8s = cache.kubernetes(release)?;
    Ok(vec![
        PackageSpec {
            name: "kubeadm",
            section: "admin",
            summary: "Command-line utility for administering a Kubernetes cluster",
            depends: None,
            conffiles: &[],
            files: vec![
                PackageFile { path: "usr/bin/kubeadm", mode: 0o755, source: Source::Binary(node.kubeadm) },
                PackageFile {
                    path: "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
                    mode: 0o644,
                    source: Source::Text(KUBEADM_DROPIN),
                },
            ],
        },
        PackageSpec {
            name: "kubelet",
            section: "net",
            summary: "Node agent for Kubernetes clusters",
            depends: Some("mount, util-linux"),
            conffiles: &["/etc/default/kubelet"],
            files: vec![
                PackageFile { path: "usr/bin/kubelet", mode: 0o755, source: Source::Binary(node.kubelet) },
                PackageFile {
                    path: "usr/lib/systemd/system/kubelet.service",
                    mode: 0o644,
                    source: Source::Text(KUBELET_SERVICE),
                },
                PackageFile { path: "etc/default/kubelet", mode: 0o644, source: Source::Text(KUBELET_ENV) },
                PackageFile { path: "var/lib/kubelet/.kubelet-keep", mode: 0o644, source: Source::Text("") },
                PackageFile {
                    path: "etc/kubernetes/manifests/.kubelet-keep",
                    mode: 0o644,
                    source: Source::Text(""),
                },
            ],
        },
        PackageSpec {
            name: "kubectl",
            section: "admin",
            summary: "Command-line utility for interacting with a Kubernetes cluster",
            depends: None,
            conffiles: &[],
            files: vec![PackageFile {
                path: "usr/bin/kubectl",
                mode: 0o755,
                source: Source::Binary(k8s.kubectl),
            }],
        },
    ])
}

/// Builds `kubeadm.deb`, `kubelet.deb` and `kubectl.deb` of `release` into `out` from the
/// cache's binaries (the [`Component::KubernetesDebs`] entry; the cache writes the manifest).
/// Everything is made in `out.tmp` and renamed at the end, so a kill half-way leaves no
/// half-populated `out`.
pub(crate) fn package_debs(
    cache: &Cache,
    release: &Version,
    out: &Path,
    progress: &mut dyn FnMut(String),
) -> Result<(), Error> {
    let specs = specs(cache, release)?;
    let tmp = sibling(out, "tmp");
    remove_dir_if_present(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let version = package_version(release);
    for spec in &specs {
        progress(format!("[package {}] {} {version}", release, spec.name));
        let root = tmp.join(format!("{}-root", spec.name));
        let mut installed_bytes: u64 = 0;
        for f in &spec.files {
            let dest = root.join(f.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            match &f.source {
                Source::Binary(src) => {
                    std::fs::copy(src, &dest).map_err(|e| Error::io(src, e))?;
                }
                Source::Text(text) => std::fs::write(&dest, text).map_err(|e| Error::io(&dest, e))?,
            }
            set_mode(&dest, f.mode)?;
            let size = std::fs::metadata(&dest).map_err(|e| Error::io(&dest, e))?.len();
            installed_bytes = installed_bytes.saturating_add(size);
        }
        let debian = root.join("DEBIAN");
        std::fs::create_dir_all(&debian).map_err(|e| Error::io(&debian, e))?;
        let mut control = format!(
            "Package: {}\nVersion: {version}\nArchitecture: {ARCH}\nMaintainer: {MAINTAINER}\n\
             Installed-Size: {}\n",
            spec.name,
            installed_bytes.div_ceil(1024)
        );
        if let Some(depends) = spec.depends {
            control.push_str(&format!("Depends: {depends}\n"));
        }
        control.push_str(&format!(
            "Section: {}\nPriority: optional\nHomepage: https://kubernetes.io\nDescription: {}\n {}.\n",
            spec.section, spec.summary, spec.summary
        ));
        write_new(&debian.join("control"), control.as_bytes())?;
        if !spec.conffiles.is_empty() {
            let list: String = spec.conffiles.iter().map(|c| format!("{c}\n")).collect();
            write_new(&debian.join("conffiles"), list.as_bytes())?;
        }
        let deb = tmp.join(format!("{}.deb", spec.name));
        // gzip: a quarter of xz's time for these binaries, and apt unpacks it faster.
        run_tool(
            Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&root).arg(&deb),
            None,
        )?;
        remove_dir_if_present(&root)?;
    }
    remove_dir_if_present(out)?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(())
}

/// The sandbox's package repositories on disk: one per minor, signed by the sandbox's key.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    keyring: Vec<u8>,
    armored_key: String,
    releases: BTreeMap<MinorVersion, Vec<Version>>,
}

impl Repository {
    /// Creates (or recreates) `<sandbox_dir>/repo`: one repository per minor of `releases`,
    /// holding every given release of that minor, from the cache's packages (which must be
    /// built: [`Component::KubernetesDebs`]). The signing key is made on the first call and
    /// reused afterwards. The new tree is written beside the old one and swapped in, so a
    /// server already serving `<sandbox_dir>/repo` keeps working and a kill half-way leaves
    /// the previous tree or none, never a half-written one.
    pub fn create(sandbox_dir: &Path, cache: &Cache, releases: &[Version]) -> Result<Repository, Error> {
        if releases.is_empty() {
            return Err(Error::Config("a package repository needs at least one release".into()));
        }
        let mut by_minor: BTreeMap<MinorVersion, Vec<Version>> = BTreeMap::new();
        for r in releases {
            cache.require(&[Component::KubernetesDebs(r.clone())])?;
            by_minor.entry(r.minor_version()).or_default().push(r.clone());
        }
        for list in by_minor.values_mut() {
            list.sort();
            list.dedup();
        }
        std::fs::create_dir_all(sandbox_dir).map_err(|e| Error::io(sandbox_dir, e))?;
        let key = SigningKey::ensure(&sandbox_dir.join("repo-gnupg"))?;
        let armored_key = key.export(true)?;
        let keyring = key.export(false)?;
        let armored_key = String::from_utf8(armored_key)
            .map_err(|_| Error::Process { name: "gpg".into(), detail: "armored key is not text".into() })?;

        let root = sandbox_dir.join("repo");
        let new = sibling(&root, "new");
        remove_dir_if_present(&new)?;
        for (minor, list) in &by_minor {
            let dir = new.join(minor_path(*minor).trim_matches('/'));
            let debs = dir.join(ARCH);
            std::fs::create_dir_all(&debs).map_err(|e| Error::io(&debs, e))?;
            let mut packages = String::new();
            for release in list {
                let entry = cache.entry_dir(&Component::KubernetesDebs(release.clone()));
                for name in PACKAGES {
                    let src = entry.join(format!("{name}.deb"));
                    let file = deb_file_name(name, release);
                    let dest = debs.join(&file);
                    // Hard links cost nothing; another file system gets a copy.
                    if std::fs::hard_link(&src, &dest).is_err() {
                        std::fs::copy(&src, &dest).map_err(|e| Error::io(&src, e))?;
                    }
                    packages.push_str(&packages_stanza(&dest, &format!("{ARCH}/{file}"))?);
                    packages.push('\n');
                }
            }
            write_new(&dir.join("Packages"), packages.as_bytes())?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(packages.as_bytes()).map_err(|e| Error::io(&dir, e))?;
            let gz = gz.finish().map_err(|e| Error::io(&dir, e))?;
            write_new(&dir.join("Packages.gz"), &gz)?;
            let release_text =
                release_file(*minor, &[("Packages", packages.as_bytes()), ("Packages.gz", &gz)]);
            let release_path = dir.join("Release");
            write_new(&release_path, release_text.as_bytes())?;
            key.sign(&release_path, &dir.join("InRelease"), &dir.join("Release.gpg"))?;
            write_new(&dir.join("Release.key"), armored_key.as_bytes())?;
        }
        key.stop_agent()?;
        let old = sibling(&root, "old");
        remove_dir_if_present(&old)?;
        if root.exists() {
            std::fs::rename(&root, &old).map_err(|e| Error::io(&root, e))?;
        }
        std::fs::rename(&new, &root).map_err(|e| Error::io(&root, e))?;
        remove_dir_if_present(&old)?;
        Ok(Repository { root, keyring, armored_key, releases: by_minor })
    }

    /// The directory to serve (`<sandbox>/repo`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The repository key as nodes keep it at [`KEYRING_PATH`] (binary OpenPGP, dearmored).
    pub fn keyring(&self) -> &[u8] {
        &self.keyring
    }

    /// The repository key as `Release.key` serves it (ASCII-armored).
    pub fn armored_key(&self) -> &str {
        &self.armored_key
    }

    /// The minors served, each with its releases (oldest first).
    pub fn releases(&self) -> &BTreeMap<MinorVersion, Vec<Version>> {
        &self.releases
    }

    /// The directory of one minor's repository.
    pub fn minor_dir(&self, minor: MinorVersion) -> PathBuf {
        self.root.join(minor_path(minor).trim_matches('/'))
    }
}

/// One package's stanza of a `Packages` index: the deb's own control fields (as `dpkg-deb`
/// reads them back) plus where it is and its size and hash.
fn packages_stanza(deb: &Path, filename: &str) -> Result<String, Error> {
    let control = run_tool(Command::new("dpkg-deb").arg("--field").arg(deb), None)?;
    let control = String::from_utf8(control)
        .map_err(|_| Error::Process { name: "dpkg-deb".into(), detail: "control is not UTF-8".into() })?;
    let size = std::fs::metadata(deb).map_err(|e| Error::io(deb, e))?.len();
    let sha256 = sha256_file(deb).map_err(|e| Error::io(deb, e))?;
    let mut stanza = control.trim_end().to_string();
    stanza.push_str(&format!("\nFilename: {filename}\nSize: {size}\nSHA256: {sha256}\n"));
    Ok(stanza)
}

/// A flat repository's `Release`: what it is, and the SHA-256 of every index (apt refuses an
/// index whose hash is not listed in a signed Release).
fn release_file(minor: MinorVersion, indexes: &[(&str, &[u8])]) -> String {
    let date = jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S UTC").to_string();
    let mut out = format!(
        "Origin: refit sandbox\nLabel: refit sandbox core:stable:v{minor}\nArchitectures: {ARCH}\nDate: {date}\nSHA256:\n"
    );
    for (name, bytes) in indexes {
        out.push_str(&format!(" {} {} {name}\n", hex::encode(Sha256::digest(bytes)), bytes.len()));
    }
    out
}

/// The sandbox's repository signing key, in its own gpg home.
struct SigningKey {
    home: PathBuf,
    fingerprint: String,
}

impl SigningKey {
    /// The key in `home`, generated there first if the directory does not exist. Generation
    /// happens in `home.tmp` and is renamed into place, so a kill half-way is redone.
    fn ensure(home: &Path) -> Result<SigningKey, Error> {
        if !home.exists() {
            let tmp = sibling(home, "tmp");
            remove_dir_if_present(&tmp)?;
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            set_mode(&tmp, 0o700)?;
            let generating = SigningKey { home: tmp.clone(), fingerprint: String::new() };
            let generated = generating
                .gpg(&[
                    "--passphrase",
                    "",
                    "--quick-gen-key",
                    "Refit sandbox package repository <sandbox@refit.invalid>",
                    "ed25519",
                    "sign",
                    "never",
                ])
                .map(|_| ());
            // The agent is tied to the home's path: stop it before the rename, in every case.
            let stopped = generating.stop_agent();
            generated?;
            stopped?;
            std::fs::rename(&tmp, home).map_err(|e| Error::io(home, e))?;
        }
        let mut key = SigningKey { home: home.to_path_buf(), fingerprint: String::new() };
        let listing = key.gpg(&["--with-colons", "--list-secret-keys"])?;
        let listing = String::from_utf8_lossy(&listing);
        key.fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:").map(|rest| rest.trim_matches(':').to_string()))
            .ok_or_else(|| Error::Process {
                name: "gpg".into(),
                detail: format!(
                    "no secret key in {} (remove the directory to make a new one)",
                    home.display()
                ),
            })?;
        Ok(key)
    }

    /// Runs gpg on this home, non-interactively, and returns its standard output.
    fn gpg(&self, args: &[&str]) -> Result<Vec<u8>, Error> {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir").arg(&self.home).args([
            "--batch",
            "--no-tty",
            "--quiet",
            "--pinentry-mode",
            "loopback",
        ]);
        cmd.args(args);
        run_tool(&mut cmd, None)
    }

    fn export(&self, armor: bool) -> Result<Vec<u8>, Error> {
        let mut args = vec!["--export"];
        if armor {
            args.insert(0, "--armor");
        }
        args.push(&self.fingerprint);
        self.gpg(&args)
    }

    /// Writes `InRelease` (clearsigned) and `Release.gpg` (detached, armored) for `release`.
    fn sign(&self, release: &Path, inrelease: &Path, detached: &Path) -> Result<(), Error> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let base = ["--passphrase", "", "--yes", "--digest-algo", "SHA256", "--local-user"];
        let mut clear: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        clear.extend([
            self.fingerprint.clone(),
            "--clearsign".into(),
            "--output".into(),
            path(inrelease),
            path(release),
        ]);
        self.gpg(&clear.iter().map(String::as_str).collect::<Vec<_>>())?;
        let mut det: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        det.extend([
            self.fingerprint.clone(),
            "--armor".into(),
            "--detach-sign".into(),
            "--output".into(),
            path(detached),
            path(release),
        ]);
        self.gpg(&det.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(())
    }

    /// Stops the gpg-agent gpg started for this home (none may outlive the sandbox's work).
    /// `gpgconf --kill` only asks the agent to exit: on a loaded machine it was seen still
    /// running afterwards (the repo test caught it), so this waits for it to be gone, and kills
    /// it after 2 s.
    fn stop_agent(&self) -> Result<(), Error> {
        run_tool(Command::new("gpgconf").arg("--homedir").arg(&self.home).args(["--kill", "all"]), None)?;
        let started = std::time::Instant::now();
        loop {
            let left = agents_of(&self.home);
            if left.is_empty() {
                return Ok(());
            }
            if started.elapsed() > std::time::Duration::from_secs(2) {
                left.iter().copied().for_each(crate::process::kill_pid);
            }
            if started.elapsed() > std::time::Duration::from_secs(10) {
                return Err(Error::Process {
                    name: "gpg-agent".into(),
                    detail: format!("pids {left:?} outlived gpgconf --kill and SIGKILL"),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The pids of the gpg-agents running for gpg home `home` (their command line names it).
fn agents_of(home: &Path) -> Vec<i32> {
    let needle = home.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                cmdline.contains("gpg-agent") && cmdline.contains(&needle)
            })
        })
        .collect()
}

/// A command to run on a node: a program and its arguments (never a shell string), extra
/// environment, and the bytes to feed its standard input, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCommand {
    /// The program (looked up in the node's `PATH`).
    pub program: String,
    /// Its arguments, each exactly one argument.
    pub args: Vec<String>,
    /// Variables set for this command only.
    pub env: Vec<(String, String)>,
    /// Standard input (files are written by piping their bytes to `install`).
    pub stdin: Option<Vec<u8>>,
}

impl NodeCommand {
    fn new<I: IntoIterator<Item = S>, S: Into<String>>(program: &str, args: I) -> NodeCommand {
        NodeCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: vec![],
            stdin: None,
        }
    }

    /// The program followed by its arguments.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone()).chain(self.args.iter().cloned()).collect()
    }
}

impl std::fmt::Display for NodeCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={v} ")?;
        }
        write!(f, "{}", self.argv().join(" "))?;
        if let Some(input) = &self.stdin {
            write!(f, " < ({} bytes)", input.len())?;
        }
        Ok(())
    }
}

/// The commands that leave a fresh node as the kubeadm install guide (apt) leaves it, at
/// `release`: the repository key at [`KEYRING_PATH`], the minor's source line in
/// [`SOURCES_PATH`], `apt-get update`, the three packages installed at exactly
/// `<release>-1.1`, and held. Run them in order as root; each must succeed.
///
/// The first command purges any `kubeadm`, `kubelet` or `kubectl` the node already has: a
/// no-op on a fresh host, but sandbox nodes are overlays of the machine's own root, and a
/// machine may carry a kubectl from elsewhere (this project's build machine has Google Cloud
/// SDK's `kubectl 1:528.0.0-0`, whose epoch makes every pkgs.k8s.io version a downgrade that
/// `apt-get install -y` refuses).
pub fn node_install_commands(base_url: &str, release: &Version, keyring: &[u8]) -> Vec<NodeCommand> {
    let apt = |args: Vec<String>| NodeCommand {
        env: vec![("DEBIAN_FRONTEND".into(), "noninteractive".into())],
        ..NodeCommand::new("apt-get", args)
    };
    let write = |path: &str, bytes: Vec<u8>| NodeCommand {
        stdin: Some(bytes),
        ..NodeCommand::new("install", ["-D", "-m", "0644", "/dev/stdin", path])
    };
    let source = format!("{}\n", apt_source_line(base_url, release.minor_version()));
    let mut install = vec!["install".to_string(), "-y".to_string()];
    install.extend(PACKAGES.iter().map(|p| format!("{p}={}", package_version(release))));
    vec![
        NodeCommand::new("dpkg", std::iter::once("--purge").chain(PACKAGES)),
        write(KEYRING_PATH, keyring.to_vec()),
        write(SOURCES_PATH, source.into_bytes()),
        apt(vec!["update".into()]),
        apt(install),
        NodeCommand::new("apt-mark", std::iter::once("hold").chain(PACKAGES)),
    ]
}

/// A static file server for a repository root, on its own thread; stopped when dropped.
#[derive(Debug)]
pub struct RepoServer {
    thread: ServerThread,
}

impl RepoServer {
    /// Serves the files under `root` on `listen` (port 0 picks a free port: see [`Self::addr`]).
    pub fn start(root: &Path, listen: SocketAddr) -> Result<RepoServer, Error> {
        let root = root.to_path_buf();
        Ok(RepoServer { thread: ServerThread::start("repository-server", listen, move |l| serve(l, root))? })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.thread.addr
    }
}

/// Serves the files under `root` forever (`refit sandbox serve-repo` runs this detached).
pub async fn serve(listener: TcpListener, root: PathBuf) {
    let root = std::sync::Arc::new(root);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let root = root.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let root = root.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&root, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn empty_body() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

fn status_only(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp =
        Response::new(Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    resp
}

async fn respond<B>(root: &Path, req: Request<B>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        let mut resp = status_only(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        resp.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let Some(path) = resolve(root, req.uri().path()) else {
        return status_only(StatusCode::NOT_FOUND, "not found");
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return status_only(StatusCode::NOT_FOUND, "not found"),
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return status_only(StatusCode::NOT_FOUND, "not found"),
    };
    let body = if head {
        empty_body()
    } else {
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        BodyExt::boxed(StreamBody::new(Box::pin(chunks)))
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(len));
    let content_type = match path.extension().and_then(|e| e.to_str()) {
        Some("deb") => "application/vnd.debian.binary-package",
        Some("gz") => "application/gzip",
        _ => "text/plain",
    };
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    resp
}

/// The file a request path names under `root`: percent-decoded, only normal components (no
/// `..`, no absolute escape), or `None`.
fn resolve(root: &Path, request_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(request_path)?;
    let mut out = root.to_path_buf();
    let mut any = false;
    for part in Path::new(&decoded).components() {
        match part {
            PathComponent::RootDir => {}
            PathComponent::Normal(p) => {
                out.push(p);
                any = true;
            }
            PathComponent::CurDir | PathComponent::ParentDir | PathComponent::Prefix(_) => return None,
        }
    }
    any.then_some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((plain, escaped)) = rest.split_once('%') {
        out.extend_from_slice(plain.as_bytes());
        let (hex, after) = escaped.split_at_checked(2)?;
        out.push(u8::from_str_radix(hex, 16).ok()?);
        rest = after;
    }
    out.extend_from_slice(rest.as_bytes());
    let decoded = String::from_utf8(out).ok()?;
    (!decoded.contains('\0')).then_some(decoded)
}

/// Runs a tool to completion; its standard output, or an error with its standard error.
fn run_tool(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>, Error> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let err = |detail: String| Error::Process { name: name.clone(), detail };
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| err(format!("cannot run: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(|e| err(format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        return Err(err(format!(
            "`{name} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// `dir.<suffix>` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

fn remove_dir_if_present(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lines_follow_pkgs_k8s_io() {
        let v: Version = "1.37.1".parse().unwrap();
        assert_eq!(package_version(&v), "1.37.1-1.1");
        assert_eq!(deb_file_name("kubeadm", &v), "kubeadm_1.37.1-1.1_amd64.deb");
        assert_eq!(
            apt_source_line("http://10.0.0.1:8080/", v.minor_version()),
            "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] http://10.0.0.1:8080/core:/stable:/v1.37/deb/ /"
        );
    }

    #[test]
    fn request_paths_stay_under_the_root() {
        let root = Path::new("/srv/repo");
        assert_eq!(
            resolve(root, "/core:/stable:/v1.37/deb/InRelease"),
            Some(PathBuf::from("/srv/repo/core:/stable:/v1.37/deb/InRelease"))
        );
        assert_eq!(
            resolve(root, "/core%3A/stable%3A/v1.37/deb/Release"),
            Some(PathBuf::from("/srv/repo/core:/stable:/v1.37/deb/Release"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/a/%2e%2e/%2e%2e/etc/passwd"), None);
        assert_eq!(resolve(root, "/"), None);
        assert_eq!(resolve(root, "/a%zz"), None);
        assert_eq!(resolve(root, "/a%00b"), None);
    }

    #[test]
    fn install_commands_end_with_the_release_installed_and_held() {
        let v: Version = "1.36.4".parse().unwrap();
        let cmds = node_install_commands("http://10.0.0.1:8080", &v, b"KEY");
        let shown: Vec<String> = cmds.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "dpkg --purge kubeadm kubelet kubectl",
                "install -D -m 0644 /dev/stdin /etc/apt/keyrings/kubernetes-apt-keyring.gpg < (3 bytes)",
                "install -D -m 0644 /dev/stdin /etc/apt/sources.list.d/kubernetes.list < (109 bytes)",
                "DEBIAN_FRONTEND=noninteractive apt-get update",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y kubeadm=1.36.4-1.1 kubelet=1.36.4-1.1 kubectl=1.36.4-1.1",
                "apt-mark hold kubeadm kubelet kubectl",
            ]
        );
        assert_eq!(
            cmds[2].stdin.as_deref(),
            Some(format!("{}\n", apt_source_line("http://10.0.0.1:8080", v.minor_version())).as_bytes())
        );
        assert_eq!(cmds[1].stdin.as_deref(), Some(&b"KEY"[..]));
    }
}
