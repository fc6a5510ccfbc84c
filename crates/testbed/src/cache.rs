//! The testbed cache: real Kubernetes, etcd and kwok binaries built from the Go module proxy.
//!
//! Each component lives in its own directory (`k8s-v1.36.4/`, `k8s-node-v1.36.4/`,
//! `k8s-debs-v1.36.4/`, `etcd-v3.6.16/`, `kwok-v0.8.0/`, `prometheus-v3.16.0/`) with a `manifest.json` written only
//! after the build succeeded (`scripts/build-testbed.sh` for binaries; the Debian packages are
//! made in Rust from the cached binaries, [`crate::kubeadm::repo::package_debs`]). An entry is
//! valid when its manifest matches the current recipe and every file listed has the recorded
//! size (quick check, used on every testbed start) and SHA-256 (full check, used by `ensure`);
//! an entry derived from other entries (the packages) is also stale when an input's recorded
//! checksum changed. Anything else — no manifest, a missing or truncated file, a leftover
//! `.tmp` — is rebuilt.
//!
//! Nothing here is committed: the root defaults to `~/.cache/refit/testbed` and is overridden
//! by `REFIT_TESTBED_CACHE`. Go's own module and build caches stay where Go keeps them, so a
//! rebuild after a corrupt entry is warm.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use refit_core::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// The build script, embedded so that an installed `refit` binary can build the testbed too.
const BUILD_SCRIPT: &str = include_str!("../scripts/build-testbed.sh");

/// Bump when the build recipe changes in a way that makes old cache entries wrong.
pub const RECIPE: u32 = 1;

/// Kubernetes releases built by default: the newest patches of three consecutive minors that
/// the Go module proxy serves completely (module zip + checksum database entry). Probed on
/// 2026-11-21: 1.36.5 has no checksum-database entry and 1.37.2 has no module zip on the proxy
/// reachable here, so 1.36.4 and 1.37.1 are the newest buildable patches.
pub const DEFAULT_KUBERNETES: &[&str] = &["1.35.8", "1.36.4", "1.37.1"];
/// etcd server release built for every Kubernetes minor (3.6 is what 1.35–1.37 pair with).
pub const DEFAULT_ETCD: &str = "3.6.16";
/// kwok release (v0.8 needs its stages passed explicitly; the build assembles them).
pub const DEFAULT_KWOK: &str = "0.8.0";
/// Prometheus release for health-gate tests (module `github.com/prometheus/prometheus`
/// v0.316.0; the newest on the proxy on 2026-12-05). Built without service discovery or web UI:
/// 1m44s on 2 cores with a Go build cache warm from the Kubernetes builds, 52 MB.
pub const DEFAULT_PROMETHEUS: &str = "3.16.0";

/// One buildable thing in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "component", content = "version", rename_all = "lowercase")]
pub enum Component {
    /// kube-apiserver, kube-controller-manager, kube-scheduler and kubectl of one release.
    Kubernetes(Version),
    /// etcd and etcdctl.
    Etcd(Version),
    /// kwok and its stage configuration.
    Kwok(Version),
    /// kubeadm and kubelet of one release: the node side, for kubeadm-shaped sandboxes. A
    /// component of its own (not part of [`Component::Kubernetes`]) so that adding it left
    /// every existing cache entry valid.
    KubernetesNode(Version),
    /// The Debian packages `kubeadm`, `kubelet` and `kubectl` of one release (`<v>-1.1`),
    /// packaged from the two entries above; stored as `kubeadm.deb` etc.
    KubernetesDebs(Version),
    /// The Prometheus server (health gates' PromQL checks run against a real one). Its own
    /// component, added after the others, so every existing entry stays valid.
    Prometheus(Version),
}

impl Component {
    /// The script's name for the component kind.
    fn kind(&self) -> &'static str {
        match self {
            Component::Kubernetes(_) => "k8s",
            Component::Etcd(_) => "etcd",
            Component::Kwok(_) => "kwok",
            Component::KubernetesNode(_) => "k8s-node",
            Component::KubernetesDebs(_) => "k8s-debs",
            Component::Prometheus(_) => "prometheus",
        }
    }

    /// The component's version.
    pub fn version(&self) -> &Version {
        match self {
            Component::Kubernetes(v)
            | Component::Etcd(v)
            | Component::Kwok(v)
            | Component::KubernetesNode(v)
            | Component::KubernetesDebs(v)
            | Component::Prometheus(v) => v,
        }
    }

    /// Directory name inside the cache.
    fn dir_name(&self) -> String {
        format!("{}-v{}", self.kind(), self.version())
    }

    /// The files a complete entry must contain.
    pub fn files(&self) -> &'static [&'static str] {
        match self {
            Component::Kubernetes(_) => {
                &["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]
            }
            Component::Etcd(_) => &["etcd", "etcdctl"],
            Component::Kwok(_) => &["kwok", "kwok.yaml"],
            Component::KubernetesNode(_) => &["kubeadm", "kubelet"],
            Component::KubernetesDebs(_) => &["kubeadm.deb", "kubelet.deb", "kubectl.deb"],
            Component::Prometheus(_) => &["prometheus"],
        }
    }

    /// The files of other entries this one is made from (entry, file name): a change in any of
    /// them makes this entry stale.
    pub fn inputs(&self) -> Vec<(Component, &'static str)> {
        match self {
            Component::KubernetesDebs(v) => vec![
                (Component::KubernetesNode(v.clone()), "kubeadm"),
                (Component::KubernetesNode(v.clone()), "kubelet"),
                (Component::Kubernetes(v.clone()), "kubectl"),
            ],
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Kubernetes(v) => write!(f, "kubernetes v{v}"),
            Component::Etcd(v) => write!(f, "etcd v{v}"),
            Component::Kwok(v) => write!(f, "kwok v{v}"),
            Component::KubernetesNode(v) => write!(f, "kubeadm and kubelet v{v}"),
            Component::KubernetesDebs(v) => write!(f, "kubeadm/kubelet/kubectl packages v{v}"),
            Component::Prometheus(v) => write!(f, "prometheus v{v}"),
        }
    }
}

/// What the build recorded about a finished cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The component and version built.
    #[serde(flatten)]
    pub component: Component,
    /// [`RECIPE`] at build time.
    pub recipe: u32,
    /// `go version` output of the toolchain that built it.
    pub go_version: String,
    /// Wall-clock seconds the build took (cold or warm, as it happened).
    pub build_seconds: u64,
    /// Every file with its size and SHA-256.
    pub files: Vec<FileEntry>,
    /// For a derived entry: the input files it was made from (`<entry dir>/<file>`) with their
    /// checksums at the time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<FileEntry>,
}

/// One file of a cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the entry directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the contents.
    pub sha256: String,
}

/// The state of one cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// Built and intact.
    Ready(Manifest),
    /// Never built (no directory or no manifest).
    Missing,
    /// Present but unusable; the reason says why. It will be rebuilt.
    Corrupt(String),
}

/// How thoroughly to check an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Manifest, recipe and file sizes: milliseconds.
    Quick,
    /// Also every file's SHA-256: about a second per Kubernetes release.
    Full,
}

/// A line of build progress, for a progress bar or a log.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// The entry is valid; nothing to do.
    Cached(Component),
    /// A build starts; the reason says why (missing, or what was corrupt).
    Started {
        /// What is built.
        component: Component,
        /// Why it is (re)built.
        reason: String,
    },
    /// A line the build printed (module downloads, compile steps).
    Output {
        /// What is being built.
        component: Component,
        /// The line.
        line: String,
    },
    /// The build finished and the entry verified.
    Finished {
        /// What was built.
        component: Component,
        /// Seconds it took.
        seconds: u64,
    },
}

/// The set of components a testbed needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedVersions {
    /// Kubernetes releases, oldest first.
    pub kubernetes: Vec<Version>,
    /// etcd release.
    pub etcd: Version,
    /// kwok release.
    pub kwok: Version,
    /// Prometheus release.
    pub prometheus: Version,
}

impl TestbedVersions {
    /// The versions from `REFIT_TESTBED_VERSIONS` (comma-separated Kubernetes releases),
    /// `REFIT_TESTBED_ETCD`, `REFIT_TESTBED_KWOK` and `REFIT_TESTBED_PROMETHEUS`, else the
    /// defaults above.
    pub fn from_env() -> Result<TestbedVersions, Error> {
        let parse = |var: &str, value: &str| -> Result<Version, Error> {
            value.trim().parse().map_err(|e| Error::Config(format!("{var}: {e}")))
        };
        let kubernetes = match std::env::var("REFIT_TESTBED_VERSIONS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse("REFIT_TESTBED_VERSIONS", s))
                .collect::<Result<Vec<_>, _>>()?,
            _ => DEFAULT_KUBERNETES.iter().map(|s| parse("default", s)).collect::<Result<_, _>>()?,
        };
        let mut kubernetes = kubernetes;
        kubernetes.sort();
        kubernetes.dedup();
        let etcd = parse(
            "REFIT_TESTBED_ETCD",
            &std::env::var("REFIT_TESTBED_ETCD").unwrap_or_else(|_| DEFAULT_ETCD.to_string()),
        )?;
        let kwok = parse(
            "REFIT_TESTBED_KWOK",
            &std::env::var("REFIT_TESTBED_KWOK").unwrap_or_else(|_| DEFAULT_KWOK.to_string()),
        )?;
        let prometheus = parse(
            "REFIT_TESTBED_PROMETHEUS",
            &std::env::var("REFIT_TESTBED_PROMETHEUS").unwrap_or_else(|_| DEFAULT_PROMETHEUS.to_string()),
        )?;
        Ok(TestbedVersions { kubernetes, etcd, kwok, prometheus })
    }

    /// Every component, in build order: etcd and kwok first (small, needed by every
    /// testbed), then Kubernetes newest first (the newest minors are the ones tests need most),
    /// then per release its kubeadm and kubelet (mostly linking once the release's control
    /// plane is built: same modules, warm Go build cache) and its packages (made from both),
    /// then Prometheus (shares many modules with Kubernetes: warm by then).
    pub fn components(&self) -> Vec<Component> {
        let mut out = vec![Component::Etcd(self.etcd.clone()), Component::Kwok(self.kwok.clone())];
        out.extend(self.kubernetes.iter().rev().cloned().map(Component::Kubernetes));
        for v in self.kubernetes.iter().rev() {
            out.push(Component::KubernetesNode(v.clone()));
            out.push(Component::KubernetesDebs(v.clone()));
        }
        out.push(Component::Prometheus(self.prometheus.clone()));
        out
    }

    /// The newest Kubernetes release whose minor is `minor`, if configured.
    pub fn kubernetes_for_minor(&self, minor: refit_core::MinorVersion) -> Option<&Version> {
        self.kubernetes.iter().filter(|v| v.minor_version() == minor).max()
    }
}

/// Binaries of one Kubernetes release in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesBinaries {
    /// The release.
    pub version: Version,
    /// kube-apiserver.
    pub apiserver: PathBuf,
    /// kube-controller-manager.
    pub controller_manager: PathBuf,
    /// kube-scheduler.
    pub scheduler: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
}

/// kubeadm and kubelet of one release in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBinaries {
    /// The release.
    pub version: Version,
    /// kubeadm.
    pub kubeadm: PathBuf,
    /// kubelet.
    pub kubelet: PathBuf,
}

/// The testbed cache on disk.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache at `REFIT_TESTBED_CACHE`, else `<user cache dir>/refit/testbed`.
    pub fn from_env() -> Result<Cache, Error> {
        if let Some(dir) = std::env::var_os("REFIT_TESTBED_CACHE").filter(|d| !d.is_empty()) {
            return Ok(Cache::at(PathBuf::from(dir)));
        }
        let base = dirs::cache_dir().ok_or_else(|| {
            Error::Config("no user cache directory (set HOME or REFIT_TESTBED_CACHE)".to_string())
        })?;
        Ok(Cache::at(base.join("refit").join("testbed")))
    }

    /// A cache rooted at `root`.
    pub fn at(root: PathBuf) -> Cache {
        Cache { root }
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one component.
    pub fn entry_dir(&self, c: &Component) -> PathBuf {
        self.root.join(c.dir_name())
    }

    /// Checks one entry.
    pub fn state(&self, c: &Component, check: Check) -> EntryState {
        let dir = self.entry_dir(c);
        let manifest_path = dir.join("manifest.json");
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return EntryState::Missing,
            Err(e) => return EntryState::Corrupt(format!("cannot read {}: {e}", manifest_path.display())),
        };
        let manifest: Manifest = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => return EntryState::Corrupt(format!("manifest is not valid: {e}")),
        };
        if manifest.component != *c {
            return EntryState::Corrupt(format!("manifest is for {}, not {c}", manifest.component));
        }
        if manifest.recipe != RECIPE {
            return EntryState::Corrupt(format!("built by recipe {}, current is {RECIPE}", manifest.recipe));
        }
        for (input, file) in c.inputs() {
            let name = format!("{}/{file}", input.dir_name());
            let Some(recorded) = manifest.inputs.iter().find(|f| f.name == name) else {
                return EntryState::Corrupt(format!("manifest lists no input {name}"));
            };
            match self.input_entry(&input, file) {
                Ok(now) if now.sha256 == recorded.sha256 => {}
                Ok(_) => return EntryState::Corrupt(format!("{name} changed since it was packaged")),
                Err(why) => return EntryState::Corrupt(format!("input {name}: {why}")),
            }
        }
        for want in c.files() {
            let Some(entry) = manifest.files.iter().find(|f| f.name == *want) else {
                return EntryState::Corrupt(format!("manifest lists no {want}"));
            };
            let path = dir.join(want);
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(_) => return EntryState::Corrupt(format!("{want} is missing")),
            };
            if size != entry.size {
                return EntryState::Corrupt(format!("{want} is {size} bytes, expected {}", entry.size));
            }
            if check == Check::Full {
                match sha256_file(&path) {
                    Ok(sum) if sum == entry.sha256 => {}
                    Ok(_) => return EntryState::Corrupt(format!("{want} does not match its checksum")),
                    Err(e) => return EntryState::Corrupt(format!("cannot read {want}: {e}")),
                }
            }
        }
        EntryState::Ready(manifest)
    }

    /// One input file of a derived entry as its own (quick-checked) manifest records it.
    fn input_entry(&self, input: &Component, file: &str) -> Result<FileEntry, String> {
        match self.state(input, Check::Quick) {
            EntryState::Ready(m) => {
                m.files.into_iter().find(|f| f.name == file).ok_or_else(|| format!("{input} lists no {file}"))
            }
            EntryState::Missing => Err(format!("{input} is not built")),
            EntryState::Corrupt(why) => Err(format!("{input}: {why}")),
        }
    }

    /// Builds every component that is missing or corrupt; a valid entry is left alone.
    /// Holds an exclusive lock on the cache so concurrent callers build each entry once.
    pub fn ensure(
        &self,
        components: &[Component],
        check: Check,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<(), Error> {
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let _lock = FileLock::exclusive(&self.root.join(".lock"))?;
        for c in components {
            let reason = match self.state(c, check) {
                EntryState::Ready(_) => {
                    progress(BuildEvent::Cached(c.clone()));
                    continue;
                }
                EntryState::Missing => "not built yet".to_string(),
                EntryState::Corrupt(why) => why,
            };
            progress(BuildEvent::Started { component: c.clone(), reason });
            self.build(c, progress)?;
        }
        Ok(())
    }

    /// Quick-checks every component and fails with the build command if any is not ready.
    pub fn require(&self, components: &[Component]) -> Result<(), Error> {
        for c in components {
            match self.state(c, Check::Quick) {
                EntryState::Ready(_) => {}
                EntryState::Missing => {
                    return Err(Error::NotBuilt { component: c.to_string(), reason: "not built".into() });
                }
                EntryState::Corrupt(why) => {
                    return Err(Error::NotBuilt { component: c.to_string(), reason: why });
                }
            }
        }
        Ok(())
    }

    /// Paths of a built Kubernetes release (quick-checked).
    pub fn kubernetes(&self, version: &Version) -> Result<KubernetesBinaries, Error> {
        let c = Component::Kubernetes(version.clone());
        self.require(std::slice::from_ref(&c))?;
        let dir = self.entry_dir(&c);
        Ok(KubernetesBinaries {
            version: version.clone(),
            apiserver: dir.join("kube-apiserver"),
            controller_manager: dir.join("kube-controller-manager"),
            scheduler: dir.join("kube-scheduler"),
            kubectl: dir.join("kubectl"),
        })
    }

    /// Paths of a release's `kubeadm` and `kubelet` (quick-checked).
    pub fn kubernetes_node(&self, version: &Version) -> Result<NodeBinaries, Error> {
        let c = Component::KubernetesNode(version.clone());
        self.require(std::slice::from_ref(&c))?;
        let dir = self.entry_dir(&c);
        Ok(NodeBinaries {
            version: version.clone(),
            kubeadm: dir.join("kubeadm"),
            kubelet: dir.join("kubelet"),
        })
    }

    /// The Kubernetes releases present and valid in the cache (quick check), oldest first.
    pub fn built_kubernetes(&self) -> Vec<Version> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut out: Vec<Version> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("k8s-v")?.parse::<Version>().ok())
            .filter(|v| {
                matches!(self.state(&Component::Kubernetes(v.clone()), Check::Quick), EntryState::Ready(_))
            })
            .collect();
        out.sort();
        out
    }

    fn build(&self, c: &Component, progress: &mut dyn FnMut(BuildEvent)) -> Result<(), Error> {
        let started = Instant::now();
        let dir = self.entry_dir(c);
        // A stale manifest must never vouch for a half-rebuilt directory.
        let _ = std::fs::remove_file(dir.join("manifest.json"));
        let mut inputs = Vec::new();
        if let Component::KubernetesDebs(v) = c {
            for (input, file) in c.inputs() {
                let mut entry = self
                    .input_entry(&input, file)
                    .map_err(|detail| Error::Build { component: c.to_string(), detail })?;
                entry.name = format!("{}/{file}", input.dir_name());
                inputs.push(entry);
            }
            crate::kubeadm::repo::package_debs(self, v, &dir, &mut |line| {
                progress(BuildEvent::Output { component: c.clone(), line })
            })?;
        } else {
            self.run_build_script(c, &dir, progress)?;
        }
        let mut files = Vec::new();
        for name in c.files() {
            let path = dir.join(name);
            let size = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            let sha256 = sha256_file(&path).map_err(|e| Error::io(&path, e))?;
            files.push(FileEntry { name: name.to_string(), size, sha256 });
        }
        let manifest = Manifest {
            component: c.clone(),
            recipe: RECIPE,
            go_version: go_version(),
            build_seconds: started.elapsed().as_secs(),
            files,
            inputs,
        };
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Config(e.to_string()))?;
        let tmp = dir.join("manifest.json.tmp");
        crate::pki::write_file(&tmp, &text, false)?;
        std::fs::rename(&tmp, dir.join("manifest.json")).map_err(|e| Error::io(&dir, e))?;
        progress(BuildEvent::Finished { component: c.clone(), seconds: manifest.build_seconds });
        Ok(())
    }

    /// Runs `scripts/build-testbed.sh` for one component into `dir`.
    fn run_build_script(
        &self,
        c: &Component,
        dir: &Path,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<(), Error> {
        let script = self.root.join("build-testbed.sh");
        if std::fs::read_to_string(&script).ok().as_deref() != Some(BUILD_SCRIPT) {
            crate::pki::write_file(&script, BUILD_SCRIPT, false)?;
        }
        let mut child = Command::new("bash")
            .arg(&script)
            .arg(c.kind())
            .arg(c.version().to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Build {
                component: c.to_string(),
                detail: format!("cannot run bash: {e}"),
            })?;
        // Merge stdout into the progress stream from a helper thread; stderr on this thread.
        let stdout = child.stdout.take();
        let out_thread = std::thread::spawn(move || {
            let mut lines = Vec::new();
            if let Some(s) = stdout {
                lines.extend(BufReader::new(s).lines().map_while(Result::ok));
            }
            lines
        });
        let mut tail: Vec<String> = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tail.push(line.clone());
                if tail.len() > 30 {
                    tail.remove(0);
                }
                progress(BuildEvent::Output { component: c.clone(), line });
            }
        }
        let status =
            child.wait().map_err(|e| Error::Build { component: c.to_string(), detail: e.to_string() })?;
        let _ = out_thread.join();
        if !status.success() {
            return Err(Error::Build {
                component: c.to_string(),
                detail: format!("build script exited with {status}; last output:\n{}", tail.join("\n")),
            });
        }
        Ok(())
    }
}

fn go_version() -> String {
    Command::new("go")
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let Some(read) = buf.get(..n) else {
            return Err(std::io::Error::other(format!("a read of {n} bytes into a buffer of {}", buf.len())));
        };
        hasher.update(read);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// An advisory exclusive lock (flock) held until dropped.
pub(crate) struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    pub(crate) fn exclusive(path: &Path) -> Result<FileLock, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.lock().map_err(|e| Error::io(path, e))?;
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_entry(cache: &Cache, c: &Component) {
        let dir = cache.entry_dir(c);
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for name in c.files() {
            let path = dir.join(name);
            std::fs::write(&path, format!("contents of {name}")).unwrap();
            files.push(FileEntry {
                name: name.to_string(),
                size: std::fs::metadata(&path).unwrap().len(),
                sha256: sha256_file(&path).unwrap(),
            });
        }
        let m = Manifest {
            component: c.clone(),
            recipe: RECIPE,
            go_version: "go".into(),
            build_seconds: 1,
            files,
            inputs: Vec::new(),
        };
        std::fs::write(dir.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    }

    #[test]
    fn detects_missing_corrupt_and_ready_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().to_path_buf());
        let c = Component::Etcd("3.6.16".parse().unwrap());
        assert_eq!(cache.state(&c, Check::Full), EntryState::Missing);

        fake_entry(&cache, &c);
        assert!(matches!(cache.state(&c, Check::Full), EntryState::Ready(_)));

        // Same size, different bytes: only the full check sees it.
        std::fs::write(cache.entry_dir(&c).join("etcd"), "contents of etcX").unwrap();
        assert!(matches!(cache.state(&c, Check::Quick), EntryState::Ready(_)));
        assert!(matches!(cache.state(&c, Check::Full), EntryState::Corrupt(ref r) if r.contains("checksum")));

        // Truncated file: the quick check sees it.
        std::fs::write(cache.entry_dir(&c).join("etcd"), "x").unwrap();
        assert!(matches!(cache.state(&c, Check::Quick), EntryState::Corrupt(ref r) if r.contains("bytes")));

        // Missing file.
        std::fs::remove_file(cache.entry_dir(&c).join("etcdctl")).unwrap();
        assert!(matches!(cache.state(&c, Check::Quick), EntryState::Corrupt(ref r) if r.contains("etcd")));

        // Garbage manifest.
        std::fs::write(cache.entry_dir(&c).join("manifest.json"), "{").unwrap();
        assert!(
            matches!(cache.state(&c, Check::Quick), EntryState::Corrupt(ref r) if r.contains("manifest"))
        );
    }

    #[test]
    fn a_manifest_for_another_component_or_recipe_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().to_path_buf());
        let c = Component::Kwok("0.8.0".parse().unwrap());
        fake_entry(&cache, &c);
        let path = cache.entry_dir(&c).join("manifest.json");
        let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        m.recipe = RECIPE + 1;
        std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        assert!(matches!(cache.state(&c, Check::Quick), EntryState::Corrupt(ref r) if r.contains("recipe")));
        m.recipe = RECIPE;
        m.component = Component::Kwok("0.7.0".parse().unwrap());
        std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        assert!(
            matches!(cache.state(&c, Check::Quick), EntryState::Corrupt(ref r) if r.contains("not kwok v0.8.0"))
        );
    }

    #[test]
    fn ensure_leaves_valid_entries_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().to_path_buf());
        let c = Component::Etcd("3.6.16".parse().unwrap());
        fake_entry(&cache, &c);
        let mut events = Vec::new();
        cache.ensure(std::slice::from_ref(&c), Check::Full, &mut |e| events.push(e)).unwrap();
        assert!(matches!(events.as_slice(), [BuildEvent::Cached(_)]));
        assert_eq!(cache.built_kubernetes(), Vec::<Version>::new());
    }

    #[test]
    fn build_order_puts_small_components_and_newest_releases_first() {
        let v = TestbedVersions {
            kubernetes: vec!["1.35.8".parse().unwrap(), "1.36.4".parse().unwrap()],
            etcd: "3.6.16".parse().unwrap(),
            kwok: "0.8.0".parse().unwrap(),
            prometheus: "3.16.0".parse().unwrap(),
        };
        let names: Vec<String> = v.components().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            [
                "etcd v3.6.16",
                "kwok v0.8.0",
                "kubernetes v1.36.4",
                "kubernetes v1.35.8",
                "kubeadm and kubelet v1.36.4",
                "kubeadm/kubelet/kubectl packages v1.36.4",
                "kubeadm and kubelet v1.35.8",
                "kubeadm/kubelet/kubectl packages v1.35.8",
                "prometheus v3.16.0",
            ]
        );
        assert_eq!(v.kubernetes_for_minor("1.35".parse().unwrap()).unwrap().to_string(), "1.35.8");
        assert!(v.kubernetes_for_minor("1.37".parse().unwrap()).is_none());
    }
}
