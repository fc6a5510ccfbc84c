//! Lists read as Kubernetes protobuf, for the two lists that are large (pods and nodes).
//!
//! Why: on a large cluster the apiserver's encoding of the pod list is what `refit plan`
//! waits for, and kube-apiserver encodes built-in types as protobuf about twice as fast as
//! JSON (and the bytes are fewer).
//!
//! The wire format: a body is the 4-byte magic `k8s\0`, then a `runtime.Unknown` message
//! whose `raw` field holds the encoded object (a `PodList`), untouched by any
//! `contentEncoding`. The apiserver writes a message's fields in field-number order, so a
//! list's `metadata` (field 1, with the continue token) comes before its `items` (field 2):
//! the envelope and the list are walked field by field here, the token is handed over the
//! moment it is read (the next page is requested before any item is decoded), and each item
//! is decoded with the `k8s-pb` types, moved into the same slim [`wire`] types the JSON path
//! decodes into, and dropped. One projection (`pod_from_wire`, `node_info`) serves both.
//!
//! Protobuf has no "absent" for Go's non-pointer strings, maps and lists: the apiserver
//! writes `""`, `{}` and `[]` where JSON omits the field. The conversions below turn those
//! back into what the JSON path sees (`None`), so that a defaulting rule such as "a
//! toleration without an operator means Equal" reads the same either way.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as json;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::api::resource::Quantity as PbQuantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::TypeMeta;
use prost::Message;
use serde::de::IgnoredAny;

use super::wire;

/// The protobuf media type of kube-apiserver.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What a list request asks for: protobuf, or JSON from a server (or proxy) that cannot.
pub const ACCEPT: &str = "application/vnd.kubernetes.protobuf, application/json";

/// The first four bytes of every protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body does not start with `k8s\0`: not a Kubernetes protobuf body.
    #[error("the body does not start with the Kubernetes protobuf magic k8s\\0")]
    Magic,
    /// The bytes end inside a field, or use a wire type Kubernetes never writes.
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    /// A message did not decode as its `k8s-pb` type.
    #[error("{what}: {source}")]
    Decode {
        /// Which message.
        what: &'static str,
        /// prost's reason.
        source: prost::DecodeError,
    },
    /// The envelope says the bytes are compressed or otherwise encoded (no apiserver does).
    #[error("content encoding {0:?} is not supported")]
    ContentEncoding(String),
    /// The envelope holds another kind than the list asked for.
    #[error("expected a {expected}, got a {got}")]
    Kind {
        /// The list kind asked for.
        expected: &'static str,
        /// What the envelope names.
        got: String,
    },
}

/// Whether a `Content-Type` header names Kubernetes protobuf (parameters ignored).
pub fn is_protobuf(content_type: Option<&str>) -> bool {
    content_type.and_then(|c| c.split(';').next()).is_some_and(|c| c.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// A slim wire type that can be decoded from the apiserver's protobuf.
pub(crate) trait Item: Sized {
    /// The list kind the envelope names (`PodList`).
    const LIST_KIND: &'static str;
    /// The `k8s-pb` message of one item.
    type Message: Message + Default;
    /// Moves the fields Refit reads out of the decoded message.
    fn from_message(m: Self::Message) -> Self;
}

/// Decodes one page of a list: its items, calling `on_continue` with the continue token as
/// soon as the list's metadata has been read (before the first item is decoded).
pub(crate) fn list_page<D: Item>(body: &[u8], on_continue: &mut dyn FnMut(&str)) -> Result<Vec<D>, Error> {
    let list = object(body, D::LIST_KIND)?;
    let mut items = Vec::new();
    for field in Fields(list) {
        match field? {
            (1, meta) => {
                if let Some(token) = continue_of(meta)? {
                    on_continue(&token);
                }
            }
            (2, item) => items.push(D::from_message(decode("list item", item)?)),
            _ => {}
        }
    }
    Ok(items)
}

/// The continue token of a protobuf list body, reading nothing past the list's metadata:
/// for measuring the apiserver alone (the benchmark's floor), where decoding is not wanted.
pub fn continue_token(body: &[u8]) -> Result<Option<String>, Error> {
    for field in Fields(object(body, "")?) {
        if let (1, meta) = field? {
            return continue_of(meta);
        }
    }
    Ok(None)
}

/// An error response's `Status` (the apiserver answers errors in the negotiated encoding).
/// Its `details` are left out: the message and reason say what went wrong.
pub(crate) fn status(body: &[u8]) -> Result<kube::core::Status, Error> {
    let s: pb_meta::Status = decode("Status", object(body, "Status")?)?;
    Ok(kube::core::Status {
        status: match s.status.as_deref() {
            Some("Success") => Some(kube::core::response::StatusSummary::Success),
            Some("Failure") => Some(kube::core::response::StatusSummary::Failure),
            _ => None,
        },
        code: s.code.and_then(|c| u16::try_from(c).ok()).unwrap_or(0),
        message: s.message.unwrap_or_default(),
        reason: s.reason.unwrap_or_default(),
        metadata: None,
        details: None,
    })
}

fn continue_of(list_meta: &[u8]) -> Result<Option<String>, Error> {
    let meta: pb_meta::ListMeta = decode("list metadata", list_meta)?;
    Ok(text(meta.r#continue))
}

fn decode<M: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, Error> {
    M::decode(bytes).map_err(|source| Error::Decode { what, source })
}

/// The encoded object inside the envelope, checked to be of `kind` (unless empty).
fn object<'a>(body: &'a [u8], kind: &'static str) -> Result<&'a [u8], Error> {
    let envelope = body.strip_prefix(MAGIC).ok_or(Error::Magic)?;
    // A missing `raw` is an empty message, as protobuf reads any missing field.
    let mut raw: &[u8] = &[];
    for field in Fields(envelope) {
        match field? {
            (1, type_meta) => {
                let got = decode::<TypeMeta>("type meta", type_meta)?.kind.unwrap_or_default();
                if !kind.is_empty() && !got.is_empty() && got != kind {
                    return Err(Error::Kind { expected: kind, got });
                }
            }
            (2, bytes) => raw = bytes,
            (3, encoding) if !encoding.is_empty() => {
                return Err(Error::ContentEncoding(String::from_utf8_lossy(encoding).into_owned()));
            }
            _ => {}
        }
    }
    Ok(raw)
}

/// The length-delimited fields of one message, in wire order, as (field number, payload).
/// Scalars are skipped: every field read here is a message or a string.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, Error> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or(Error::Malformed("truncated varint"))?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::Malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], Error> {
        let len = usize::try_from(len).map_err(|_| Error::Malformed("field length"))?;
        if len > self.0.len() {
            return Err(Error::Malformed("field longer than its message"));
        }
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(field)
    }

    /// The next length-delimited field, `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, &'a [u8])>, Error> {
        while !self.0.is_empty() {
            let key = self.varint()?;
            match key & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                5 => {
                    self.take(4)?;
                }
                2 => {
                    let len = self.varint()?;
                    return Ok(Some((key >> 3, self.take(len)?)));
                }
                _ => return Err(Error::Malformed("group wire type")),
            }
        }
        Ok(None)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.field().transpose();
        if matches!(next, Some(Err(_))) {
            self.0 = &[];
        }
        next
    }
}

/// `""` (what protobuf carries for an unset Go string) as `None`, as JSON omits it.
fn text(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// An empty map or list as `None`, as JSON omits it.
fn some<C: IntoIterator>(c: C) -> Option<C>
where
    for<'c> &'c C: IntoIterator,
{
    let empty = (&c).into_iter().next().is_none();
    (!empty).then_some(c)
}

fn quantities(m: BTreeMap<String, PbQuantity>) -> BTreeMap<String, Quantity> {
    m.into_iter().map(|(k, q)| (k, Quantity(q.string.unwrap_or_default()))).collect()
}

fn condition(type_: Option<String>, status: Option<String>) -> wire::Condition {
    wire::Condition { type_: type_.unwrap_or_default(), status: status.unwrap_or_default() }
}

fn meta(m: Option<pb_meta::ObjectMeta>) -> wire::Meta {
    let m = m.unwrap_or_default();
    let owners = m.owner_references.into_iter().map(|r| OwnerReference {
        api_version: r.api_version.unwrap_or_default(),
        block_owner_deletion: r.block_owner_deletion,
        controller: r.controller,
        kind: r.kind.unwrap_or_default(),
        name: r.name.unwrap_or_default(),
        uid: r.uid.unwrap_or_default(),
    });
    wire::Meta {
        name: text(m.name),
        namespace: text(m.namespace),
        uid: text(m.uid),
        labels: some(m.labels),
        annotations: some(m.annotations),
        owner_references: some(owners.collect()),
        deletion_timestamp: m.deletion_timestamp.map(|_| IgnoredAny),
    }
}

fn resources(r: pb::ResourceRequirements) -> json::ResourceRequirements {
    let claims = r
        .claims
        .into_iter()
        .map(|c| json::ResourceClaim { name: c.name.unwrap_or_default(), request: text(c.request) });
    json::ResourceRequirements {
        claims: some(claims.collect()),
        limits: some(quantities(r.limits)),
        requests: some(quantities(r.requests)),
    }
}

fn node_selector(s: pb::NodeSelector) -> json::NodeSelector {
    let requirements = |rs: Vec<pb::NodeSelectorRequirement>| {
        some(
            rs.into_iter()
                .map(|r| json::NodeSelectorRequirement {
                    key: r.key.unwrap_or_default(),
                    operator: r.operator.unwrap_or_default(),
                    values: some(r.values),
                })
                .collect(),
        )
    };
    json::NodeSelector {
        node_selector_terms: s
            .node_selector_terms
            .into_iter()
            .map(|t| json::NodeSelectorTerm {
                match_expressions: requirements(t.match_expressions),
                match_fields: requirements(t.match_fields),
            })
            .collect(),
    }
}

fn volume(v: pb::Volume) -> wire::PodVolume {
    let source = v.volume_source.unwrap_or_default();
    wire::PodVolume {
        name: v.name.unwrap_or_default(),
        empty_dir: source.empty_dir.map(|_| IgnoredAny),
        host_path: source.host_path.map(|h| wire::HostPath { path: h.path.unwrap_or_default() }),
        persistent_volume_claim: source
            .persistent_volume_claim
            .map(|c| wire::Claim { claim_name: c.claim_name.unwrap_or_default() }),
    }
}

fn container(c: pb::Container) -> wire::Container {
    wire::Container { resources: c.resources.map(resources), restart_policy: text(c.restart_policy) }
}

impl Item for wire::Pod {
    const LIST_KIND: &'static str = "PodList";
    type Message = pb::Pod;

    fn from_message(p: pb::Pod) -> Self {
        let spec = p.spec.unwrap_or_default();
        let status = p.status.unwrap_or_default();
        let tolerations = spec.tolerations.into_iter().map(|t| json::Toleration {
            effect: text(t.effect),
            key: text(t.key),
            operator: text(t.operator),
            toleration_seconds: t.toleration_seconds,
            value: text(t.value),
        });
        wire::Pod {
            metadata: meta(p.metadata),
            spec: wire::PodSpec {
                node_name: text(spec.node_name),
                volumes: spec.volumes.into_iter().map(volume).collect(),
                containers: spec.containers.into_iter().map(container).collect(),
                init_containers: spec.init_containers.into_iter().map(container).collect(),
                resources: spec.resources.map(resources),
                overhead: some(quantities(spec.overhead)),
                node_selector: spec.node_selector,
                tolerations: tolerations.collect(),
                affinity: spec.affinity.map(|a| wire::Affinity {
                    node_affinity: a.node_affinity.map(|n| wire::NodeAffinity {
                        required_during_scheduling_ignored_during_execution: n
                            .required_during_scheduling_ignored_during_execution
                            .map(node_selector),
                    }),
                }),
            },
            status: wire::PodStatus {
                phase: text(status.phase),
                conditions: status.conditions.into_iter().map(|c| condition(c.r#type, c.status)).collect(),
            },
        }
    }
}

impl Item for wire::Node {
    const LIST_KIND: &'static str = "NodeList";
    type Message = pb::Node;

    fn from_message(n: pb::Node) -> Self {
        let spec = n.spec.unwrap_or_default();
        let status = n.status.unwrap_or_default();
        let taints = spec.taints.into_iter().map(|t| wire::Taint {
            key: t.key.unwrap_or_default(),
            value: text(t.value),
            effect: t.effect.unwrap_or_default(),
        });
        let addresses = status.addresses.into_iter().map(|a| json::NodeAddress {
            address: a.address.unwrap_or_default(),
            type_: a.r#type.unwrap_or_default(),
        });
        wire::Node {
            metadata: meta(n.metadata),
            spec: wire::NodeSpec { taints: taints.collect(), unschedulable: spec.unschedulable },
            status: wire::NodeStatus {
                conditions: status.conditions.into_iter().map(|c| condition(c.r#type, c.status)).collect(),
                addresses: addresses.collect(),
                allocatable: quantities(status.allocatable),
                node_info: status
                    .node_info
                    .map(|i| wire::NodeSystemInfo { kubelet_version: i.kubelet_version.unwrap_or_default() }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope around `raw` as the apiserver writes it: magic, then `runtime.Unknown`.
    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(TypeMeta { api_version: Some("v1".into()), kind: Some(kind.into()) }),
            raw: Some(raw.to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    fn pod_list(token: &str, names: &[&str]) -> Vec<u8> {
        let list = pb::PodList {
            metadata: Some(pb_meta::ListMeta { r#continue: Some(token.into()), ..Default::default() }),
            items: names
                .iter()
                .map(|n| pb::Pod {
                    metadata: Some(pb_meta::ObjectMeta { name: Some((*n).into()), ..Default::default() }),
                    ..Default::default()
                })
                .collect(),
        };
        envelope("PodList", &list.encode_to_vec())
    }

    #[test]
    fn the_continue_token_is_handed_over_before_the_items_are_decoded() {
        let body = pod_list("abc", &["a", "b"]);
        let mut seen = Vec::new();
        let items: Vec<wire::Pod> = list_page(&body, &mut |t| seen.push(t.to_owned())).unwrap();
        assert_eq!(seen, ["abc"]);
        let names: Vec<_> = items.iter().map(|p| p.metadata.name.as_deref().unwrap_or_default()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(continue_token(&body).unwrap().as_deref(), Some("abc"));
        // The last page has an empty token: no next page.
        let last = pod_list("", &["c"]);
        let mut seen = Vec::new();
        let _: Vec<wire::Pod> = list_page(&last, &mut |t| seen.push(t.to_owned())).unwrap();
        assert!(seen.is_empty());
        assert_eq!(continue_token(&last).unwrap(), None);
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let body = pod_list("abc", &["a", "b"]);
        let decode = |b: &[u8]| list_page::<wire::Pod>(b, &mut |_| {}).map(|items| items.len());
        assert!(matches!(decode(br#"{"kind":"PodList"}"#), Err(Error::Magic)));
        // Every truncation of a valid body fails cleanly (or, cut at a field boundary, decodes
        // fewer items) — never panics.
        for cut in 0..body.len() {
            let _ = decode(&body[..cut]);
        }
        assert!(matches!(decode(&envelope("NodeList", &[])), Err(Error::Kind { .. })));
        let mut gzipped = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&body[4..]).unwrap();
        gzipped.content_encoding = Some("gzip".into());
        assert!(matches!(
            decode(&[MAGIC, &gzipped.encode_to_vec()].concat()),
            Err(Error::ContentEncoding(e)) if e == "gzip"
        ));
        // A group wire type (never written by Kubernetes) inside the list.
        assert!(matches!(decode(&envelope("PodList", &[0x0b])), Err(Error::Malformed(_))));
    }

    #[test]
    fn an_error_status_keeps_its_message_reason_and_code() {
        let s = pb_meta::Status {
            status: Some("Failure".into()),
            message: Some("The provided continue parameter is too old".into()),
            reason: Some("Expired".into()),
            code: Some(410),
            ..Default::default()
        };
        let got = status(&envelope("Status", &s.encode_to_vec())).unwrap();
        assert_eq!(got.code, 410);
        assert_eq!(got.reason, "Expired");
        assert_eq!(got.message, "The provided continue parameter is too old");
        assert_eq!(got.status, Some(kube::core::response::StatusSummary::Failure));
    }

    #[test]
    fn content_types() {
        assert!(is_protobuf(Some("application/vnd.kubernetes.protobuf")));
        assert!(is_protobuf(Some("application/vnd.kubernetes.protobuf;stream=watch")));
        assert!(!is_protobuf(Some("application/json")));
        assert!(!is_protobuf(None));
    }
}
