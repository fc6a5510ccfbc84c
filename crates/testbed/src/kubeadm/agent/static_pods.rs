//! Static pods as processes: what a kubelet does with `/etc/kubernetes/manifests`, minus the
//! container runtime.
//!
//! A manifest is read as kubeadm writes it (one Pod, one container). Its image says which
//! testbed binary runs it: `registry.k8s.io/kube-apiserver:v1.37.1` → the cached 1.37.1
//! kube-apiserver; every `registry.k8s.io/etcd:*` tag → the one etcd the testbed builds (kubeadm
//! pairs each minor with its own etcd tag, and 3.6 serves 1.35–1.37 with the flags kubeadm
//! passes). The container's `command` + `args` are run as they are, with `command[0]` replaced by
//! that binary; kubeadm's hostPath volumes are identity mounts (hostPath == mountPath), so
//! ignoring them changes nothing.
//!
//! The manifest's identity is a hash of its bytes and the node name: any stable,
//! content-sensitive value works for kubeadm, which only compares the mirror pod's
//! `kubernetes.io/config.hash` before and after it rewrites a manifest
//! (reference/kubeadm.md §2.4, §7).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use refit_core::Version;

use crate::cache::Cache;

/// One manifest file, parsed and resolved to a program.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    /// The manifest file.
    pub file: PathBuf,
    /// `metadata.name` (the mirror pod is `<name>-<node>`).
    pub name: String,
    /// Content hash (hex): the mirror pod's config.hash.
    pub hash: String,
    /// The whole manifest, as kubeadm wrote it.
    pub manifest: Value,
    /// What runs, or why nothing can.
    pub run: Result<Program, String>,
}

/// A resolved process: the binary and its arguments and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The testbed binary.
    pub binary: PathBuf,
    /// Arguments after the binary.
    pub args: Vec<String>,
    /// Literal environment variables of the container.
    pub env: Vec<(String, String)>,
}

/// A probe the agent runs before it reports the pod Running (kubelet semantics differ: it
/// reports Running as soon as the container starts; waiting for the probe keeps kubeadm from
/// moving on to the next component while this one is still starting, as a healthy container
/// runtime's startup delay would).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `http` or `https`.
    pub https: bool,
    /// Host (empty in the manifest means the pod IP; static pods use host networking).
    pub host: String,
    /// Port number.
    pub port: u16,
    /// Path, e.g. `/livez`.
    pub path: String,
}

/// Content hash of a manifest as seen on `node`.
pub fn manifest_hash(bytes: &[u8], node: &str) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.update(b"\0host:");
    h.update(node.as_bytes());
    // The first 16 bytes of the digest: 32 hex digits.
    let mut hash = hex::encode(h.finalize());
    hash.truncate(32);
    hash
}

/// The manifests in `dir`: `*.yaml`/`*.yml`/`*.json`, dot-files skipped (the kubelet package
/// ships `.kubelet-keep` there and kubeadm writes through temporary names).
pub fn scan(dir: &Path, node: &str, binaries: &dyn Binaries) -> Vec<StaticPod> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
                && p.is_file()
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            let bytes = std::fs::read(&file).ok()?;
            Some(parse(&file, &bytes, node, binaries))
        })
        .collect()
}

/// Parses one manifest. A manifest that cannot be run still yields a `StaticPod` (with the
/// reason in `run`) so the agent can say why in its log instead of ignoring the file.
pub fn parse(file: &Path, bytes: &[u8], node: &str, binaries: &dyn Binaries) -> StaticPod {
    let hash = manifest_hash(bytes, node);
    let fallback_name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("static").to_string();
    let manifest: Value = match std::str::from_utf8(bytes)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_saphyr::from_str::<Value>(s).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            return StaticPod {
                file: file.into(),
                name: fallback_name,
                hash,
                manifest: Value::Null,
                run: Err(format!("not a pod manifest: {e}")),
            };
        }
    };
    let name = manifest
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or(fallback_name);
    let run = program(&manifest, binaries);
    StaticPod { file: file.into(), name, hash, manifest, run }
}

/// Where the binary of a control-plane image comes from.
pub trait Binaries {
    /// The binary for `component` (`etcd`, `kube-apiserver`, ...) at image tag `tag`.
    fn binary(&self, component: &str, tag: &str) -> Result<PathBuf, String>;
}

/// The testbed cache as the source of binaries: Kubernetes components by their image tag,
/// etcd always the one built etcd release.
#[derive(Debug, Clone)]
pub struct CacheBinaries {
    /// The testbed cache.
    pub cache: Cache,
    /// The etcd release every etcd image tag maps to.
    pub etcd: Version,
}

impl Binaries for CacheBinaries {
    fn binary(&self, component: &str, tag: &str) -> Result<PathBuf, String> {
        match component {
            "etcd" => Ok(self.cache.entry_dir(&crate::Component::Etcd(self.etcd.clone())).join("etcd")),
            "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" => {
                let v: Version = tag.parse().map_err(|e| format!("tag {tag} is not a version: {e}"))?;
                let bins = self.cache.kubernetes(&v).map_err(|e| e.to_string())?;
                Ok(match component {
                    "kube-apiserver" => bins.apiserver,
                    "kube-controller-manager" => bins.controller_manager,
                    _ => bins.scheduler,
                })
            }
            other => Err(format!("the sandbox has no binary for {other}")),
        }
    }
}

/// Resolves the first container of `manifest` to a binary and its arguments.
pub fn program(manifest: &Value, binaries: &dyn Binaries) -> Result<Program, String> {
    let c = manifest.pointer("/spec/containers/0").ok_or("the manifest has no container")?;
    let image = c.get("image").and_then(Value::as_str).ok_or("the container has no image")?;
    let (repo, tag) = image.rsplit_once(':').ok_or_else(|| format!("image {image} has no tag"))?;
    let component = repo.rsplit('/').next().unwrap_or(repo);
    let binary = binaries.binary(component, tag).map_err(|e| format!("image {image}: {e}"))?;
    let strings = |key: &str| -> Vec<String> {
        c.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let command = strings("command");
    let mut args: Vec<String> = command.into_iter().skip(1).collect();
    args.extend(strings("args"));
    let env = c
        .get("env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((e.get("name")?.as_str()?.to_string(), e.get("value")?.as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Program { binary, args, env })
}

/// The probe that says the pod is up: startupProbe, else livenessProbe, else none (Running as
/// soon as the process runs).
pub fn probe(manifest: &Value) -> Option<Probe> {
    let c = manifest.pointer("/spec/containers/0")?;
    let get = c
        .pointer("/startupProbe/httpGet")
        .or_else(|| c.pointer("/livenessProbe/httpGet"))
        .or_else(|| c.pointer("/readinessProbe/httpGet"))?;
    let port = match get.get("port")? {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        Value::String(named) => named_port(c, named).or_else(|| named.parse().ok())?,
        _ => return None,
    };
    Some(Probe {
        https: get.get("scheme").and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case("https")),
        host: get.get("host").and_then(Value::as_str).unwrap_or_default().to_string(),
        port,
        path: get.get("path").and_then(Value::as_str).unwrap_or("/").to_string(),
    })
}

fn named_port(container: &Value, name: &str) -> Option<u16> {
    container.get("ports")?.as_array()?.iter().find_map(|p| {
        if p.get("name")?.as_str()? == name {
            u16::try_from(p.get("containerPort")?.as_u64()?).ok()
        } else {
            None
        }
    })
}

/// Labels of the manifest (copied onto the mirror pod).
pub fn labels(manifest: &Value) -> BTreeMap<String, String> {
    string_map(manifest.pointer("/metadata/labels"))
}

/// Annotations of the manifest (copied onto the mirror pod).
pub fn annotations(manifest: &Value) -> BTreeMap<String, String> {
    string_map(manifest.pointer("/metadata/annotations"))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APISERVER: &str = r#"apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: 10.200.0.10:6443
  creationTimestamp: null
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.200.0.10
    - --secure-port=6443
    env:
    - name: HTTPS_PROXY
      value: ""
    image: registry.k8s.io/kube-apiserver:v1.36.4
    livenessProbe:
      httpGet:
        host: 10.200.0.10
        path: /livez
        port: probe-port
        scheme: HTTPS
    ports:
    - containerPort: 6443
      name: probe-port
      protocol: TCP
    startupProbe:
      httpGet:
        host: 10.200.0.10
        path: /livez
        port: probe-port
        scheme: HTTPS
  hostNetwork: true
"#;

    /// The cache layout without the cache's build check (no binaries exist in unit tests).
    struct Fake;
    impl Binaries for Fake {
        fn binary(&self, component: &str, tag: &str) -> Result<PathBuf, String> {
            match component {
                "etcd" => Ok(PathBuf::from("/cache/etcd-v3.6.16/etcd")),
                "kube-apiserver" | "kube-scheduler" => {
                    let v: Version = tag.parse().map_err(|e| format!("tag {tag} is not a version: {e}"))?;
                    Ok(PathBuf::from(format!("/cache/k8s-v{v}/{component}")))
                }
                other => Err(format!("the sandbox has no binary for {other}")),
            }
        }
    }

    #[test]
    fn a_kubeadm_apiserver_manifest_runs_the_cached_binary_with_its_flags() {
        let pod = parse(Path::new("/m/kube-apiserver.yaml"), APISERVER.as_bytes(), "cp-1", &Fake);
        assert_eq!(pod.name, "kube-apiserver");
        let run = pod.run.unwrap();
        assert_eq!(run.binary, PathBuf::from("/cache/k8s-v1.36.4/kube-apiserver"));
        assert_eq!(run.args, ["--advertise-address=10.200.0.10", "--secure-port=6443"]);
        assert_eq!(run.env, [("HTTPS_PROXY".to_string(), String::new())]);
        assert_eq!(
            probe(&pod.manifest),
            Some(Probe { https: true, host: "10.200.0.10".into(), port: 6443, path: "/livez".into() })
        );
        assert_eq!(labels(&pod.manifest).get("component").map(String::as_str), Some("kube-apiserver"));
    }

    #[test]
    fn any_etcd_tag_maps_to_the_testbed_etcd_and_unknown_images_are_refused() {
        let m: Value = serde_json::json!({"metadata": {"name": "etcd"}, "spec": {"containers": [
            {"image": "registry.k8s.io/etcd:3.7.0-0", "command": ["etcd", "--name=a"]}]}});
        let p = program(&m, &Fake).unwrap();
        assert_eq!(p.binary, PathBuf::from("/cache/etcd-v3.6.16/etcd"));
        assert_eq!(p.args, ["--name=a"]);
        let m: Value = serde_json::json!({"spec": {"containers": [{"image": "nginx:1.27"}]}});
        assert!(program(&m, &Fake).unwrap_err().contains("no binary for nginx"));
        let m: Value =
            serde_json::json!({"spec": {"containers": [{"image": "registry.k8s.io/kube-scheduler:latest"}]}});
        assert!(program(&m, &Fake).unwrap_err().contains("not a version"));
    }

    #[test]
    fn the_hash_changes_with_the_content_and_the_node() {
        let a = manifest_hash(b"x", "n1");
        assert_eq!(a, manifest_hash(b"x", "n1"));
        assert_ne!(a, manifest_hash(b"y", "n1"));
        assert_ne!(a, manifest_hash(b"x", "n2"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn unparseable_manifests_are_kept_with_the_reason() {
        let pod = parse(Path::new("/m/broken.yaml"), b"{[", "n", &Fake);
        assert_eq!(pod.name, "broken");
        assert!(pod.run.unwrap_err().contains("not a pod manifest"));
    }
}
