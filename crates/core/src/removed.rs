//! Removed-API usage: which of the signals a live cluster gives away point at an API that the
//! target release (or an earlier one) no longer serves, and what to use instead.
//!
//! No single signal is enough. The stored object is converted to whatever version a client
//! asks for, so listing objects never shows the API they were written with; what does is
//! the `last-applied-configuration` annotation (kubectl apply), `managedFields[].apiVersion`
//! (every writer), the manifests Helm keeps of each release (the next `helm upgrade` diffs
//! against them), and the apiserver's own count of requests to deprecated APIs (clients that
//! leave no object behind: controllers, CI jobs, review requests). The I/O that gathers them
//! lives in `refit_kube::apis`; this module holds the pure parts: decoding, matching against
//! the catalog, classification and advice.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, RemovedApi, api_version};
use crate::version::MinorVersion;

/// The annotation `kubectl apply` writes with the whole applied manifest.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The apiserver metric counting requests to deprecated APIs (since the apiserver started).
pub const DEPRECATED_API_METRIC: &str = "apiserver_requested_deprecated_apis";
/// A decompressed Helm release larger than this is refused (a gzip bomb must not exhaust memory;
/// Secrets are at most 1 MiB, real releases decompress to a few MiB).
pub const MAX_RELEASE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a piece of cluster data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovedError {
    /// A Helm release secret's `data.release` is not what Helm v3 writes.
    #[error("not a Helm v3 release: {0}")]
    HelmRelease(String),
}

/// A Kubernetes object, as findings name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Kind, e.g. `Ingress`.
    pub kind: String,
    /// Namespace; `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One observation that something uses a given API version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "kebab-case")]
pub enum Signal {
    /// The object was last `kubectl apply`-ed with `api_version`.
    LastApplied {
        /// The object carrying the annotation.
        object: ObjectRef,
        /// `apiVersion` inside the annotation.
        api_version: String,
    },
    /// A field manager wrote the object through `api_version`.
    ManagedFields {
        /// The object.
        object: ObjectRef,
        /// The manager (`kubectl-client-side-apply`, `helm`, a controller name...).
        manager: String,
        /// `managedFields[].apiVersion`.
        api_version: String,
    },
    /// A document of a Helm release's stored manifest.
    HelmRelease {
        /// Release name.
        release: String,
        /// Release namespace.
        namespace: String,
        /// Release revision (`version` in Helm's JSON).
        revision: u64,
        /// The document's kind.
        object_kind: String,
        /// The document's `metadata.name`.
        object_name: String,
        /// The document's `apiVersion`.
        api_version: String,
    },
    /// An apiserver counted requests to a deprecated API.
    Metric {
        /// The apiserver that counted them (`https://host:port`).
        endpoint: String,
        /// `group` label (`""` for core).
        group: String,
        /// `version` label.
        version: String,
        /// `resource` label (plural).
        resource: String,
        /// `removed_release` label (e.g. `1.37`; empty when no removal is planned).
        removed_release: String,
    },
}

impl Signal {
    /// The short name shown in the SIGNAL column.
    pub fn kind(&self) -> SignalKind {
        match self {
            Signal::LastApplied { .. } => SignalKind::LastApplied,
            Signal::ManagedFields { .. } => SignalKind::ManagedFields,
            Signal::HelmRelease { .. } => SignalKind::HelmRelease,
            Signal::Metric { .. } => SignalKind::Metric,
        }
    }
}

/// Which kind of evidence a finding rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalKind {
    /// `kubectl.kubernetes.io/last-applied-configuration`.
    LastApplied,
    /// `metadata.managedFields`.
    ManagedFields,
    /// A Helm v3 release manifest.
    HelmRelease,
    /// `apiserver_requested_deprecated_apis`.
    Metric,
}

impl std::fmt::Display for SignalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignalKind::LastApplied => "last-applied",
            SignalKind::ManagedFields => "managed-fields",
            SignalKind::HelmRelease => "helm-release",
            SignalKind::Metric => "metric",
        })
    }
}

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Removed by a minor this upgrade crosses: fix before upgrading.
    Crossing,
    /// Removed at or before the cluster's current minor: a stale manifest or client that
    /// already cannot work against this cluster (lower severity, still worth cleaning up).
    AlreadyRemoved,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Crossing => "crossing",
            Severity::AlreadyRemoved => "already-removed",
        })
    }
}

/// A Helm release, as findings name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    /// Release name.
    pub name: String,
    /// Release namespace.
    pub namespace: String,
    /// Revision.
    pub revision: u64,
}

/// One use of a removed API, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Crossing this upgrade, or already removed.
    pub severity: Severity,
    /// The minor that stops serving the API.
    pub removed_in: MinorVersion,
    /// The removed `group/version`.
    pub api_version: String,
    /// The removed kind (for a metric: the kind whose resource was requested, or the
    /// resource itself when the catalog does not know it).
    pub kind: String,
    /// What the finding rests on.
    pub signal: SignalKind,
    /// Human-readable place: the object, the manager, the release or the apiserver.
    pub location: String,
    /// The object concerned (object signals and Helm documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// Field managers that wrote with the removed API (managed-fields signal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// The Helm release whose manifest holds the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseRef>,
    /// The apiserver that counted the requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The group/version to move to (the catalog's GA replacement, never one a later
    /// release removes); `None` when there is no replacement API.
    pub use_instead: Option<String>,
    /// The catalog's advice (migration caveats, or what to do when nothing replaces the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Finding {
    /// The USE INSTEAD column: the replacement, else the note.
    pub fn advice(&self) -> String {
        match (&self.use_instead, &self.note) {
            (Some(gv), _) => format!("{gv} {}", self.kind),
            (None, Some(note)) => note.clone(),
            (None, None) => "no replacement API; see the Kubernetes deprecation guide".into(),
        }
    }
}

/// Totals of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Findings that block the upgrade.
    pub crossing: usize,
    /// Findings about APIs the cluster already stopped serving.
    pub already_removed: usize,
}

impl Summary {
    /// Counts `findings` by severity.
    pub fn of(findings: &[Finding]) -> Summary {
        let crossing = findings.iter().filter(|f| f.severity == Severity::Crossing).count();
        Summary { crossing, already_removed: findings.len().saturating_sub(crossing) }
    }
}

/// A catalog removal that counts for a target: the minor, the API entry and the kind.
struct Removal<'a> {
    minor: MinorVersion,
    api: &'a RemovedApi,
    kind: &'a str,
}

/// Every (minor, api, kind) the catalog removes at or before `target`.
fn removals_up_to(catalog: &Catalog, target: MinorVersion) -> Vec<Removal<'_>> {
    catalog
        .releases
        .iter()
        .filter(|r| r.minor <= target)
        .flat_map(|r| {
            r.removed_apis.iter().flat_map(move |api| {
                api.kinds.iter().map(move |k| Removal { minor: r.minor, api, kind: &k.kind })
            })
        })
        .collect()
}

/// Matches `signals` against the catalog's removals up to `target` and classifies each match
/// against the cluster's `current` minor. The result is de-duplicated (one finding per signal
/// kind, place and removed group/version; field managers of one object are merged) and
/// sorted: crossing first, then by removing minor, API and place.
pub fn findings(
    catalog: &Catalog,
    current: MinorVersion,
    target: MinorVersion,
    signals: &[Signal],
) -> Vec<Finding> {
    let removals = removals_up_to(catalog, target);
    let severity = |minor: MinorVersion| {
        if minor > current { Severity::Crossing } else { Severity::AlreadyRemoved }
    };
    let by_kind =
        |gv: &str, kind: &str| removals.iter().find(|r| r.api.api_version() == gv && r.kind == kind);
    let finding = |r: &Removal<'_>, signal: SignalKind, location: String| Finding {
        severity: severity(r.minor),
        removed_in: r.minor,
        api_version: r.api.api_version(),
        kind: r.kind.to_string(),
        signal,
        location,
        object: None,
        managers: Vec::new(),
        release: None,
        endpoint: None,
        use_instead: r.api.ga_replacement.clone(),
        note: r.api.note.clone(),
    };

    // Keyed by (signal kind, place, group/version, kind) so repeats collapse into one finding.
    let mut out: BTreeMap<(SignalKind, String, String, String), Finding> = BTreeMap::new();
    for signal in signals {
        match signal {
            Signal::LastApplied { object, api_version } => {
                if let Some(r) = by_kind(api_version, &object.kind) {
                    let mut f = finding(r, SignalKind::LastApplied, object.to_string());
                    f.object = Some(object.clone());
                    out.entry((f.signal, f.location.clone(), f.api_version.clone(), f.kind.clone()))
                        .or_insert(f);
                }
            }
            Signal::ManagedFields { object, manager, api_version } => {
                if let Some(r) = by_kind(api_version, &object.kind) {
                    let mut f = finding(r, SignalKind::ManagedFields, object.to_string());
                    f.object = Some(object.clone());
                    let entry = out
                        .entry((f.signal, f.location.clone(), f.api_version.clone(), f.kind.clone()))
                        .or_insert(f);
                    if !entry.managers.contains(manager) {
                        entry.managers.push(manager.clone());
                        entry.managers.sort();
                    }
                }
            }
            Signal::HelmRelease { release, namespace, revision, object_kind, object_name, api_version } => {
                if let Some(r) = by_kind(api_version, object_kind) {
                    let object =
                        ObjectRef { kind: object_kind.clone(), namespace: None, name: object_name.clone() };
                    let location =
                        format!("helm release {namespace}/{release} (revision {revision}): {object}");
                    let mut f = finding(r, SignalKind::HelmRelease, location);
                    f.object = Some(object);
                    f.release = Some(ReleaseRef {
                        name: release.clone(),
                        namespace: namespace.clone(),
                        revision: *revision,
                    });
                    out.entry((f.signal, f.location.clone(), f.api_version.clone(), f.kind.clone()))
                        .or_insert(f);
                }
            }
            Signal::Metric { endpoint, group, version, resource, removed_release } => {
                let gv = api_version(group, version);
                let known = removals.iter().find(|r| {
                    r.api.group == *group
                        && r.api.version == *version
                        && r.api.kinds.iter().any(|k| k.kind == r.kind && k.resource == *resource)
                });
                let location = format!("apiserver {endpoint}");
                let mut f = match known {
                    Some(r) => finding(r, SignalKind::Metric, location),
                    // Not in the catalog (a CRD's deprecated version, a subresource, an older
                    // catalog): the apiserver's own removed_release label is authoritative.
                    None => {
                        let Ok(minor) = removed_release.parse::<MinorVersion>() else { continue };
                        if minor > target || catalog_removes_later(catalog, &gv, resource, target) {
                            continue;
                        }
                        let same_gv = removals.iter().find(|r| r.api.api_version() == gv);
                        Finding {
                            severity: severity(minor),
                            removed_in: minor,
                            api_version: gv.clone(),
                            kind: resource.clone(),
                            signal: SignalKind::Metric,
                            location,
                            object: None,
                            managers: Vec::new(),
                            release: None,
                            endpoint: None,
                            use_instead: same_gv.and_then(|r| r.api.ga_replacement.clone()),
                            note: same_gv.and_then(|r| r.api.note.clone()),
                        }
                    }
                };
                f.endpoint = Some(endpoint.clone());
                out.entry((f.signal, f.location.clone(), f.api_version.clone(), f.kind.clone())).or_insert(f);
            }
        }
    }
    let mut list: Vec<Finding> = out.into_values().collect();
    list.sort_by(|a, b| {
        (a.severity, a.removed_in, &a.api_version, &a.kind, &a.location, a.signal).cmp(&(
            b.severity,
            b.removed_in,
            &b.api_version,
            &b.kind,
            &b.location,
            b.signal,
        ))
    });
    list
}

/// Whether the catalog files this group/version/resource under a minor after `target` (then
/// a metric label claiming an earlier removal is not trusted over the catalog).
fn catalog_removes_later(catalog: &Catalog, gv: &str, resource: &str, target: MinorVersion) -> bool {
    catalog.releases.iter().filter(|r| r.minor > target).any(|r| {
        r.removed_apis.iter().any(|a| a.api_version() == gv && a.kinds.iter().any(|k| k.resource == resource))
    })
}

/// The `apiVersion` a `last-applied-configuration` annotation records, if it is JSON with one.
pub fn last_applied_api_version(annotation: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "apiVersion")]
        api_version: Option<String>,
    }
    serde_json::from_str::<Head>(annotation).ok()?.api_version.filter(|v| !v.is_empty())
}

/// One series of `apiserver_requested_deprecated_apis` with a non-zero value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSample {
    /// `group` label.
    pub group: String,
    /// `version` label.
    pub version: String,
    /// `resource` label.
    pub resource: String,
    /// `subresource` label.
    pub subresource: String,
    /// `removed_release` label.
    pub removed_release: String,
}

/// The requested-deprecated-API series in a Prometheus text exposition (`GET /metrics`).
/// Other metrics, comments and malformed lines are ignored; a value of 0 (or anything not a
/// positive number) means no request was seen and yields nothing.
pub fn parse_deprecated_api_metric(text: &str) -> Vec<MetricSample> {
    text.lines().filter_map(parse_metric_line).collect()
}

fn parse_metric_line(line: &str) -> Option<MetricSample> {
    let rest = line.trim_start().strip_prefix(DEPRECATED_API_METRIC)?;
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(body) => parse_labels(body)?,
        None if rest.starts_with([' ', '\t']) => (BTreeMap::new(), rest),
        None => return None, // another metric whose name merely starts the same way
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    if value.is_nan() || value <= 0.0 {
        return None;
    }
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Some(MetricSample {
        group: label("group"),
        version: label("version"),
        resource: label("resource"),
        subresource: label("subresource"),
        removed_release: label("removed_release"),
    })
}

/// Parses `k="v",k2="v2"}` (text after the opening brace); returns the labels and the text
/// after the closing brace. Values may contain the escapes `\\`, `\"` and `\n`.
fn parse_labels(body: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_string();
        rest = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()? {
                    (_, 'n') => value.push('\n'),
                    (_, c) => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key, value);
        // `end` is the byte offset of the closing `"` (one byte).
        rest = rest.get(end..).and_then(|r| r.strip_prefix('"'))?;
    }
}

/// A decoded Helm v3 release: who it is and the objects its manifest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmRelease {
    /// Release name.
    pub name: String,
    /// Release namespace.
    pub namespace: String,
    /// Revision.
    pub revision: u64,
    /// One entry per manifest document that names an apiVersion and kind.
    pub objects: Vec<ManifestObject>,
}

/// The identity of one manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestObject {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name` (empty when the document has none).
    pub name: String,
}

/// Decodes a Helm v3 release secret's `data.release` (the bytes after the Secret's own
/// base64 layer): base64 text of gzip (Helm writes gzip; plain JSON is accepted as Helm reads
/// it too) of the release JSON, whose `manifest` is multi-document YAML.
pub fn decode_helm_release(data: &[u8]) -> Result<HelmRelease, RemovedError> {
    let bad = |m: String| RemovedError::HelmRelease(m);
    let text: Vec<u8> = data.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|e| bad(format!("release data is not base64: {e}")))?;
    let json = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_RELEASE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("release data is not valid gzip: {e}")))?;
        if out.len() as u64 > MAX_RELEASE_BYTES {
            return Err(bad(format!("release decompresses to more than {MAX_RELEASE_BYTES} bytes")));
        }
        out
    } else {
        raw
    };
    #[derive(Deserialize)]
    struct Release {
        name: String,
        #[serde(default)]
        namespace: String,
        #[serde(default)]
        version: u64,
        #[serde(default)]
        manifest: String,
    }
    let release: Release =
        serde_json::from_slice(&json).map_err(|e| bad(format!("release JSON is malformed: {e}")))?;
    Ok(HelmRelease {
        objects: manifest_objects(&release.manifest),
        name: release.name,
        namespace: release.namespace,
        revision: release.version,
    })
}

/// The (apiVersion, kind, name) of every document of a multi-document YAML manifest.
/// Documents are split and parsed one by one, so one odd document (a template that renders
/// to something unusual) does not hide the others; documents without apiVersion and kind
/// (empty, comments only, unparseable) are skipped.
pub fn manifest_objects(manifest: &str) -> Vec<ManifestObject> {
    #[derive(Deserialize)]
    struct Meta {
        name: Option<String>,
    }
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "apiVersion")]
        api_version: Option<String>,
        kind: Option<String>,
        metadata: Option<Meta>,
    }
    split_documents(manifest)
        .into_iter()
        .filter(|doc| doc.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .filter_map(|doc| serde_saphyr::from_str::<Head>(&doc).ok())
        .filter_map(|h| {
            Some(ManifestObject {
                api_version: h.api_version.filter(|v| !v.is_empty())?,
                kind: h.kind.filter(|k| !k.is_empty())?,
                name: h.metadata.and_then(|m| m.name).unwrap_or_default(),
            })
        })
        .collect()
}

/// Splits YAML text at document separators (`---` at the start of a line).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;
    use crate::catalog::fixture;

    fn m(minor: u32) -> MinorVersion {
        MinorVersion::new(1, minor)
    }

    fn obj(kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef { kind: kind.into(), namespace: ns.map(Into::into), name: name.into() }
    }

    fn shipped() -> Catalog {
        Catalog::embedded().unwrap()
    }

    /// What Helm stores in `data.release` (after the Secret's own base64): base64(gzip(json)).
    fn helm_blob(json: &serde_json::Value) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json.to_string().as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap()).into_bytes()
    }

    #[test]
    fn object_signals_match_group_version_and_kind_and_advise_the_ga_replacement() {
        let c = shipped();
        let signals = vec![
            Signal::LastApplied {
                object: obj("Ingress", Some("shop"), "web"),
                api_version: "extensions/v1beta1".into(),
            },
            // The current version of the same object is not a finding.
            Signal::LastApplied {
                object: obj("Ingress", Some("shop"), "api"),
                api_version: "networking.k8s.io/v1".into(),
            },
            // networking.k8s.io/v1beta1 is removed twice: Ingress in 1.22, IPAddress in 1.37.
            Signal::ManagedFields {
                object: obj("IPAddress", None, "10.0.0.7"),
                manager: "kube-apiserver".into(),
                api_version: "networking.k8s.io/v1beta1".into(),
            },
            Signal::ManagedFields {
                object: obj("PodSecurityPolicy", None, "restricted"),
                manager: "kubectl".into(),
                api_version: "policy/v1beta1".into(),
            },
        ];
        let f = findings(&c, m(36), m(37), &signals);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Crossing);
        assert_eq!((f[0].removed_in, f[0].kind.as_str()), (m(37), "IPAddress"));
        assert_eq!(f[0].use_instead.as_deref(), Some("networking.k8s.io/v1"));
        assert_eq!(f[0].managers, vec!["kube-apiserver".to_string()]);
        let ingress = f.iter().find(|f| f.kind == "Ingress").unwrap();
        assert_eq!(ingress.severity, Severity::AlreadyRemoved);
        assert_eq!(ingress.removed_in, m(22));
        assert_eq!(ingress.location, "Ingress shop/web");
        assert_eq!(ingress.advice(), "networking.k8s.io/v1 Ingress");
        let psp = f.iter().find(|f| f.kind == "PodSecurityPolicy").unwrap();
        assert_eq!(psp.use_instead, None);
        assert!(psp.advice().contains("Pod Security Admission"), "{}", psp.advice());
        assert_eq!(Summary::of(&f), Summary { crossing: 1, already_removed: 2 });
    }

    #[test]
    fn only_removals_up_to_the_target_count_and_the_current_minor_classifies() {
        let c = shipped();
        let s = vec![Signal::LastApplied {
            object: obj("VolumeAttributesClass", None, "gold"),
            api_version: "storage.k8s.io/v1beta1".into(),
        }];
        assert!(findings(&c, m(36), m(36), &s).is_empty(), "1.37 removes it: not a 1.36 concern");
        assert_eq!(findings(&c, m(36), m(37), &s)[0].severity, Severity::Crossing);
        assert_eq!(findings(&c, m(37), m(37), &s)[0].severity, Severity::AlreadyRemoved);
    }

    #[test]
    fn repeats_collapse_and_managers_merge() {
        let c = shipped();
        let o = obj("Ingress", Some("a"), "x");
        let mf = |manager: &str| Signal::ManagedFields {
            object: o.clone(),
            manager: manager.into(),
            api_version: "extensions/v1beta1".into(),
        };
        let la = Signal::LastApplied { object: o.clone(), api_version: "extensions/v1beta1".into() };
        let f = findings(&c, m(36), m(37), &[mf("kubectl"), mf("helm"), mf("kubectl"), la.clone(), la]);
        assert_eq!(f.len(), 2, "one per signal kind: {f:#?}");
        let managed = f.iter().find(|f| f.signal == SignalKind::ManagedFields).unwrap();
        assert_eq!(managed.managers, vec!["helm".to_string(), "kubectl".to_string()]);
    }

    #[test]
    fn metric_samples_match_by_resource_and_fall_back_to_the_label() {
        let c = shipped();
        let metric = |group: &str, version: &str, resource: &str, removed: &str| Signal::Metric {
            endpoint: "https://10.0.0.1:6443".into(),
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            removed_release: removed.into(),
        };
        let f = findings(
            &c,
            m(36),
            m(37),
            &[
                metric("storage.k8s.io", "v1beta1", "volumeattributesclasses", "1.37"),
                metric("storage.k8s.io", "v1beta1", "volumeattributesclasses", "1.37"),
                // A CRD's deprecated version the catalog cannot know.
                metric("example.com", "v1alpha1", "widgets", "1.30"),
                // Deprecated but removal not planned or beyond the target: nothing.
                metric("example.com", "v1beta1", "gadgets", ""),
                metric("resource.k8s.io", "v1beta1", "deviceclasses", "1.38"),
            ],
        );
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[0].kind, "VolumeAttributesClass");
        assert_eq!(f[0].endpoint.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(f[0].location, "apiserver https://10.0.0.1:6443");
        assert_eq!(f[0].use_instead.as_deref(), Some("storage.k8s.io/v1"));
        assert_eq!((f[1].severity, f[1].kind.as_str()), (Severity::AlreadyRemoved, "widgets"));
    }

    #[test]
    fn the_fixture_catalog_note_is_the_advice_when_nothing_replaces() {
        let f = findings(
            &fixture::catalog(),
            m(35),
            m(37),
            &[Signal::HelmRelease {
                release: "shop".into(),
                namespace: "apps".into(),
                revision: 3,
                object_kind: "Widget".into(),
                object_name: "w".into(),
                api_version: "example.k8s.io/v1beta1".into(),
            }],
        );
        assert_eq!(f[0].advice(), "no replacement");
        assert_eq!(f[0].location, "helm release apps/shop (revision 3): Widget w");
        assert_eq!(f[0].release.as_ref().unwrap().revision, 3);
    }

    #[test]
    fn metric_text_is_parsed_with_escapes_and_zero_values_ignored() {
        let text = r#"# HELP apiserver_requested_deprecated_apis [STABLE] Gauge of deprecated APIs
# TYPE apiserver_requested_deprecated_apis gauge
apiserver_requested_deprecated_apis{group="storage.k8s.io",removed_release="1.37",resource="volumeattributesclasses",subresource="",version="v1beta1"} 1
apiserver_requested_deprecated_apis{group="",removed_release="",resource="odd\"name\\x",subresource="status",version="v1"} 1 1700000000
apiserver_requested_deprecated_apis{group="policy",removed_release="1.25",resource="podsecuritypolicies",subresource="",version="v1beta1"} 0
apiserver_requested_deprecated_apis_total{group="x",removed_release="1.1",resource="y",subresource="",version="v1"} 3
apiserver_request_total{code="200"} 5
apiserver_requested_deprecated_apis{group="broken
"#;
        let s = parse_deprecated_api_metric(text);
        assert_eq!(s.len(), 2, "{s:#?}");
        assert_eq!(s[0].resource, "volumeattributesclasses");
        assert_eq!(s[0].removed_release, "1.37");
        assert_eq!(s[1].resource, "odd\"name\\x");
        assert_eq!(s[1].subresource, "status");
    }

    #[test]
    fn helm_releases_decode_to_their_manifest_objects() {
        let manifest = "---\n# Source: shop/templates/ingress.yaml\napiVersion: extensions/v1beta1\nkind: Ingress\nmetadata:\n  name: shop\nspec:\n  rules: []\n---\n# Source: shop/templates/empty.yaml\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\n  labels: {app: shop}\n---\nnot: [valid\n";
        let json = serde_json::json!({"name": "shop", "namespace": "apps", "version": 4, "manifest": manifest, "info": {"status": "deployed"}});
        let r = decode_helm_release(&helm_blob(&json)).unwrap();
        assert_eq!((r.name.as_str(), r.namespace.as_str(), r.revision), ("shop", "apps", 4));
        assert_eq!(
            r.objects,
            vec![
                ManifestObject {
                    api_version: "extensions/v1beta1".into(),
                    kind: "Ingress".into(),
                    name: "shop".into()
                },
                ManifestObject {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "shop".into()
                },
            ]
        );
        // Uncompressed JSON is read too (Helm accepts it), with line-wrapped base64.
        let plain = base64::engine::general_purpose::STANDARD.encode(json.to_string());
        let wrapped: String =
            plain.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c) + "\n").collect();
        assert_eq!(decode_helm_release(wrapped.as_bytes()).unwrap().objects.len(), 2);
    }

    #[test]
    fn broken_helm_data_is_an_error_not_a_panic() {
        for bad in [&b"%%%"[..], b"", b"H4sIAAAAAAAA", b"aGVsbG8="] {
            let err = decode_helm_release(bad).unwrap_err().to_string();
            assert!(err.starts_with("not a Helm v3 release"), "{err}");
        }
    }

    #[test]
    fn last_applied_annotations_give_their_api_version() {
        let a = r#"{"apiVersion":"extensions/v1beta1","kind":"Ingress","metadata":{"name":"x"}}"#;
        assert_eq!(last_applied_api_version(a).as_deref(), Some("extensions/v1beta1"));
        assert_eq!(last_applied_api_version("{}"), None);
        assert_eq!(last_applied_api_version("not json"), None);
    }

    proptest! {
        #[test]
        fn metric_parsing_never_panics(text in "\\PC*") {
            let _ = parse_deprecated_api_metric(&text);
            let _ = parse_deprecated_api_metric(&format!("apiserver_requested_deprecated_apis{{{text}"));
        }

        #[test]
        fn metric_lines_round_trip(group in "[a-z.]{0,12}", resource in "[a-z]{1,12}", value in 1u32..1000) {
            let line = format!(
                "apiserver_requested_deprecated_apis{{group=\"{group}\",removed_release=\"1.30\",resource=\"{resource}\",subresource=\"\",version=\"v1beta1\"}} {value}"
            );
            let s = parse_deprecated_api_metric(&line);
            prop_assert_eq!(s.len(), 1);
            prop_assert_eq!(&s[0].group, &group);
            prop_assert_eq!(&s[0].resource, &resource);
        }

        #[test]
        fn helm_decoding_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_helm_release(&data);
        }

        #[test]
        fn findings_only_for_removals_up_to_the_target(
            current in 19u32..38,
            target in 19u32..40,
            picks in proptest::collection::vec((0usize..200, 0usize..4), 0..20),
        ) {
            let c = shipped();
            // Signals built from every removal in the catalog, at every minor.
            let all: Vec<(MinorVersion, String, String, String)> = c.releases.iter().flat_map(|r| {
                r.removed_apis.iter().flat_map(move |a| a.kinds.iter().map(move |k|
                    (r.minor, a.api_version(), k.kind.clone(), k.resource.clone())))
            }).collect();
            let signals: Vec<Signal> = picks.iter().map(|(i, which)| {
                let (minor, gv, kind, resource) = all[i % all.len()].clone();
                let object = obj(&kind, Some("ns"), "o");
                match which {
                    0 => Signal::LastApplied { object, api_version: gv },
                    1 => Signal::ManagedFields { object, manager: "m".into(), api_version: gv },
                    2 => Signal::HelmRelease { release: "r".into(), namespace: "ns".into(), revision: 1,
                        object_kind: kind, object_name: "o".into(), api_version: gv },
                    _ => {
                        let (group, version) = gv.split_once('/').map(|(g, v)| (g.to_string(), v.to_string()))
                            .unwrap_or((String::new(), gv.clone()));
                        Signal::Metric { endpoint: "e".into(), group, version, resource,
                            removed_release: minor.to_string() }
                    }
                }
            }).collect();
            let f = findings(&c, m(current), m(target), &signals);
            for finding in &f {
                prop_assert!(finding.removed_in <= m(target));
                prop_assert_eq!(finding.severity == Severity::Crossing, finding.removed_in > m(current));
                if let Some(gv) = &finding.use_instead {
                    prop_assert!(!c.removed_group_versions().iter().any(|(r, _)| r == gv));
                }
            }
            // Every signal whose removal is within the target is reported.
            for (i, which) in &picks {
                let (minor, gv, kind, _) = &all[i % all.len()];
                if *minor <= m(target) {
                    let _ = which;
                    prop_assert!(f.iter().any(|x| &x.api_version == gv && &x.kind == kind));
                }
            }
        }
    }
}
