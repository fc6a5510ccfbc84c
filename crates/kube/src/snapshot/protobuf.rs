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
//! A pod is decoded from the fields the projection reads only ([`tag`]): the walk steps over
//! the others (managedFields, container statuses, env, probes, projected volume sources: most
//! of a pod's bytes) by their length, and each kept field is merged into the `k8s-pb` message
//! alone, which in protobuf is the same as decoding it with the rest. Decoding whole pods cost
//! more CPU than the JSON path's slim types saved on the apiserver.
//!
//! Protobuf has no "absent" for Go's non-pointer strings, maps and lists: the apiserver
//! writes `""`, `{}` and `[]` where JSON omits the field. The conversions below turn those
//! back into what the JSON path sees (`None`), so that a defaulting rule such as "a
//! toleration without an operator means Equal" reads the same either way.
//!
//! Kept hand-written on purpose (issue 12 looked for a library): kube's client reads a whole
//! body before decoding and knows only JSON, and prost decodes whole messages; no crate decodes
//! a Kubernetes protobuf list item by item as it streams in. Measured on 1,000 nodes / 30,000
//! pods (`cargo bench -p refit-cli --bench plan_scale`, README): the unpaginated streamed list
//! is served and decoded in 0.9–1.0 s against 1.2–1.4 s for protobuf pages and 2.4–2.6 s for
//! JSON pages, and the whole `refit plan` peaks at 159–161 MiB (the 67 MB body is never held
//! whole).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as json;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, OwnerReference,
};
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
    /// Decodes one item of the list from its bytes.
    fn decode(item: &[u8]) -> Result<Self, Error>;
}

/// Decodes one page of a list: its items, calling `on_continue` with the continue token as
/// soon as the list's metadata has been read (before the first item is decoded).
pub(crate) fn list_page<D: Item>(body: &[u8], on_continue: &mut dyn FnMut(&str)) -> Result<Vec<D>, Error> {
    let list = object(body, D::LIST_KIND)?;
    let mut items = Vec::new();
    for field in Fields(list) {
        let field = field?;
        match field.number {
            1 => {
                if let Some(token) = continue_of(field.payload)? {
                    on_continue(&token);
                }
            }
            2 => items.push(D::decode(field.payload)?),
            _ => {}
        }
    }
    Ok(items)
}

/// The continue token of a protobuf list body, reading nothing past the list's metadata:
/// for measuring the apiserver alone (the benchmark's floor), where decoding is not wanted.
pub fn continue_token(body: &[u8]) -> Result<Option<String>, Error> {
    for field in Fields(object(body, "")?) {
        let field = field?;
        if field.number == 1 {
            return continue_of(field.payload);
        }
    }
    Ok(None)
}

/// Decodes a whole (unpaginated) list as its bytes arrive: each item is decoded as soon as
/// its last byte is in, and the bytes it came in are let go, so a 67 MB pod list never sits in
/// memory and the decoding overlaps the apiserver's encoding.
///
/// The walk is the same as [`list_page`]'s, one level at a time: the envelope's fields, then,
/// inside its `raw` field (the list), the list's fields, items being field 2. Only `raw` is
/// entered before it is complete; every other field is waited for whole.
pub(crate) struct ListStream<D> {
    /// Bytes received and not yet consumed (less than one field, between calls).
    buf: Vec<u8>,
    state: StreamState,
    kind: &'static str,
    item: std::marker::PhantomData<fn() -> D>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    /// Waiting for the `k8s\0` magic.
    Magic,
    /// Between the envelope's fields.
    Envelope,
    /// Inside the envelope's `raw` field (the list): this many of its bytes are still to come.
    List { remaining: usize },
}

/// Where one field lies, read from its key (and length).
struct Head {
    number: u64,
    wire_type: u8,
    /// Bytes of the key and the length.
    head: usize,
    /// Bytes of the value.
    len: usize,
    /// Where the field ends, from its start (`head + len`, checked when the head is read: a
    /// length near `usize::MAX` from a hostile body is an error, not an overflow).
    end: usize,
}

impl Head {
    /// Where the field ends, from its start.
    fn end(&self) -> usize {
        self.end
    }
}

/// The value of the field `h` at the start of `bytes` (whose length the caller checked against
/// `h.end()`).
fn body_of<'a>(bytes: &'a [u8], h: &Head) -> Result<&'a [u8], Error> {
    bytes.get(h.head..h.end()).ok_or(Error::Malformed("field longer than its message"))
}

/// The head of the field at the start of `bytes`; `None` while the bytes end inside it.
fn field_head(bytes: &[u8]) -> Result<Option<Head>, Error> {
    let mut cursor = Fields(bytes);
    let key = match cursor.varint() {
        Ok(k) => k,
        Err(_) if bytes.len() < 10 => return Ok(None),
        Err(e) => return Err(e),
    };
    let wire_type = (key & 7) as u8;
    let body_len = match wire_type {
        0 => match cursor.varint() {
            Ok(_) => 0,
            Err(_) if cursor.0.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        },
        1 => 8,
        5 => 4,
        2 => match cursor.varint() {
            Ok(len) => usize::try_from(len).map_err(|_| Error::Malformed("field length"))?,
            Err(_) if cursor.0.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        },
        _ => return Err(Error::Malformed("group wire type")),
    };
    let head = bytes.len().saturating_sub(cursor.0.len());
    let end = head.checked_add(body_len).ok_or(Error::Malformed("field length"))?;
    Ok(Some(Head { number: key >> 3, wire_type, head, len: body_len, end }))
}

impl<D: Item> ListStream<D> {
    /// A stream expecting a list of `D`.
    pub(crate) fn new() -> Self {
        ListStream {
            buf: Vec::new(),
            state: StreamState::Magic,
            kind: D::LIST_KIND,
            item: std::marker::PhantomData,
        }
    }

    /// Takes the next bytes of the body, handing each item completed by them to `each`.
    pub(crate) fn feed(&mut self, chunk: &[u8], each: &mut dyn FnMut(D)) -> Result<(), Error> {
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            // `pos` only moves over bytes already in the buffer.
            let rest = self.buf.get(pos..).unwrap_or_default();
            match self.state {
                StreamState::Magic => {
                    if rest.len() < MAGIC.len() {
                        break;
                    }
                    if !rest.starts_with(MAGIC) {
                        return Err(Error::Magic);
                    }
                    pos += MAGIC.len();
                    self.state = StreamState::Envelope;
                }
                StreamState::List { remaining: 0 } => self.state = StreamState::Envelope,
                StreamState::Envelope => {
                    let Some(h) = field_head(rest)? else { break };
                    if h.wire_type == 2 && h.number == 2 {
                        pos += h.head;
                        self.state = StreamState::List { remaining: h.len };
                        continue;
                    }
                    if rest.len() < h.end() {
                        break;
                    }
                    if h.wire_type == 2 {
                        check_envelope_field(h.number, body_of(rest, &h)?, self.kind)?;
                    }
                    pos += h.end();
                }
                StreamState::List { remaining } => {
                    let Some(h) = field_head(rest)? else { break };
                    if h.end() > remaining {
                        return Err(Error::Malformed("field longer than its message"));
                    }
                    if rest.len() < h.end() {
                        break;
                    }
                    if h.wire_type == 2 && h.number == 2 {
                        each(D::decode(body_of(rest, &h)?)?);
                    }
                    pos += h.end();
                    self.state = StreamState::List { remaining: remaining - h.end() };
                }
            }
        }
        self.buf.drain(..pos);
        Ok(())
    }

    /// The end of the body: it must have ended between the envelope's fields.
    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.state {
            StreamState::Magic => Err(Error::Magic),
            StreamState::Envelope | StreamState::List { remaining: 0 } if self.buf.is_empty() => Ok(()),
            _ => Err(Error::Malformed("the body ends inside a field")),
        }
    }
}

/// Decodes `body` as a pod list and as a node list, each both as one page and streamed in
/// `chunk`-byte pieces, returning the item counts. The entry point of the fuzz tests
/// (`kube/tests/fuzz_protobuf.rs`): whatever the bytes, each must be a count or an error,
/// never a panic or an overflow.
#[doc(hidden)]
pub fn decode_for_fuzzing(body: &[u8], chunk: usize) -> [Result<usize, Error>; 4] {
    fn streamed<D: Item>(body: &[u8], chunk: usize) -> Result<usize, Error> {
        let mut s = ListStream::<D>::new();
        let mut n = 0usize;
        for piece in body.chunks(chunk.max(1)) {
            s.feed(piece, &mut |_item: D| n = n.saturating_add(1))?;
        }
        s.finish()?;
        Ok(n)
    }
    [
        list_page::<wire::Pod>(body, &mut |_| {}).map(|v| v.len()),
        list_page::<wire::Node>(body, &mut |_| {}).map(|v| v.len()),
        streamed::<wire::Pod>(body, chunk),
        streamed::<wire::Node>(body, chunk),
    ]
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
        let field = field?;
        match field.number {
            2 => raw = field.payload,
            number => check_envelope_field(number, field.payload, kind)?,
        }
    }
    Ok(raw)
}

/// One of the envelope's fields other than `raw`: the type meta must name `kind` (unless either
/// is empty), and there must be no content encoding.
fn check_envelope_field(number: u64, payload: &[u8], kind: &'static str) -> Result<(), Error> {
    match number {
        1 => {
            let got = decode::<TypeMeta>("type meta", payload)?.kind.unwrap_or_default();
            if !kind.is_empty() && !got.is_empty() && got != kind {
                return Err(Error::Kind { expected: kind, got });
            }
        }
        3 if !payload.is_empty() => {
            return Err(Error::ContentEncoding(String::from_utf8_lossy(payload).into_owned()));
        }
        _ => {}
    }
    Ok(())
}

/// The length-delimited fields of one message, in wire order. Scalars are skipped: every
/// field read here is a message, a string or a map entry.
struct Fields<'a>(&'a [u8]);

/// One length-delimited field as it lies in the bytes.
struct Field<'a> {
    number: u64,
    /// The field's value (a message's own fields, a string's bytes).
    payload: &'a [u8],
    /// The whole field, key and length included: what `Message::merge` decodes it from alone.
    raw: &'a [u8],
}

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
    fn field(&mut self) -> Result<Option<Field<'a>>, Error> {
        while !self.0.is_empty() {
            let start = self.0;
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
                    let payload = self.take(len)?;
                    let used = start.len() - self.0.len();
                    let raw = start.get(..used).ok_or(Error::Malformed("field past its message"))?;
                    return Ok(Some(Field { number: key >> 3, payload, raw }));
                }
                _ => return Err(Error::Malformed("group wire type")),
            }
        }
        Ok(None)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, Error>;

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

/// `v` mapped by `f` into a vector of exactly its length. `collect` would reuse `v`'s buffer
/// in place, and a `k8s-pb` element is many times the size of the slim one it becomes (a
/// `Volume` holds every kind of volume source inline): each pod would keep a buffer sized for
/// its protobuf volumes, about 95 MB over 30,000 pods.
fn map<T, U>(v: Vec<T>, f: impl FnMut(T) -> U) -> Vec<U> {
    let mut out = Vec::with_capacity(v.len());
    out.extend(v.into_iter().map(f));
    out
}

fn quantities(m: BTreeMap<String, PbQuantity>) -> BTreeMap<String, Quantity> {
    m.into_iter().map(|(k, q)| (k, Quantity(q.string.unwrap_or_default()))).collect()
}

fn condition(type_: Option<String>, status: Option<String>) -> wire::Condition {
    wire::Condition { type_: type_.unwrap_or_default(), status: status.unwrap_or_default() }
}

fn meta(m: Option<pb_meta::ObjectMeta>) -> wire::Meta {
    let m = m.unwrap_or_default();
    let owners = map(m.owner_references, |r| OwnerReference {
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
        owner_references: some(owners),
        deletion_timestamp: m.deletion_timestamp.map(|_| IgnoredAny),
    }
}

fn resources(r: pb::ResourceRequirements) -> json::ResourceRequirements {
    let claims =
        map(r.claims, |c| json::ResourceClaim { name: c.name.unwrap_or_default(), request: text(c.request) });
    json::ResourceRequirements {
        claims: some(claims),
        limits: some(quantities(r.limits)),
        requests: some(quantities(r.requests)),
    }
}

fn node_selector(s: pb::NodeSelector) -> json::NodeSelector {
    let requirements = |rs: Vec<pb::NodeSelectorRequirement>| {
        some(map(rs, |r| json::NodeSelectorRequirement {
            key: r.key.unwrap_or_default(),
            operator: r.operator.unwrap_or_default(),
            values: some(r.values),
        }))
    };
    json::NodeSelector {
        node_selector_terms: map(s.node_selector_terms, |t| json::NodeSelectorTerm {
            match_expressions: requirements(t.match_expressions),
            match_fields: requirements(t.match_fields),
        }),
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

/// The field numbers (those of `k8s-pb`'s generated types, i.e. of Kubernetes' `.proto`
/// files) of what the pod projection reads.
mod tag {
    pub const POD_METADATA: u64 = 1;
    pub const POD_SPEC: u64 = 2;
    pub const POD_STATUS: u64 = 3;
    /// name, namespace, uid, deletionTimestamp, labels, annotations, ownerReferences.
    pub const METADATA: &[u64] = &[1, 3, 5, 9, 11, 12, 13];
    pub const SPEC_VOLUMES: u64 = 1;
    pub const SPEC_CONTAINERS: u64 = 2;
    pub const SPEC_INIT_CONTAINERS: u64 = 20;
    pub const SPEC_AFFINITY: u64 = 18;
    /// nodeSelector, nodeName, tolerations, overhead, topologySpreadConstraints, resources
    /// (pod-level).
    pub const SPEC: &[u64] = &[7, 10, 22, 32, 33, 40];
    /// resources, restartPolicy.
    pub const CONTAINER: &[u64] = &[8, 24];
    pub const VOLUME_NAME: u64 = 1;
    pub const VOLUME_SOURCE: u64 = 2;
    /// hostPath, emptyDir, persistentVolumeClaim.
    pub const VOLUME_SOURCES: &[u64] = &[1, 2, 10];
    /// nodeAffinity.
    pub const AFFINITY: &[u64] = &[1];
    pub const STATUS_PHASE: u64 = 1;
    pub const STATUS_CONDITIONS: u64 = 2;
    /// type, status.
    pub const CONDITION: &[u64] = &[1, 2];
}

/// Merges one field (key included) into `m`.
fn merge<M: Message>(m: &mut M, what: &'static str, raw: &[u8]) -> Result<(), Error> {
    m.merge(raw).map_err(|source| Error::Decode { what, source })
}

/// A `M` built field by field from `bytes` by `read`, which merges, decodes or skips each.
fn read_fields<M: Default>(
    bytes: &[u8],
    mut read: impl FnMut(&mut M, Field<'_>) -> Result<(), Error>,
) -> Result<M, Error> {
    let mut m = M::default();
    for field in Fields(bytes) {
        read(&mut m, field?)?;
    }
    Ok(m)
}

/// A `M` decoded from only the fields of `bytes` numbered in `keep`.
fn decode_kept<M: Message + Default>(what: &'static str, bytes: &[u8], keep: &[u64]) -> Result<M, Error> {
    read_fields(
        bytes,
        |m: &mut M, field| {
            if keep.contains(&field.number) { merge(m, what, field.raw) } else { Ok(()) }
        },
    )
}

/// A pod with only the fields the projection reads.
fn pod_message(bytes: &[u8]) -> Result<pb::Pod, Error> {
    read_fields(bytes, |pod: &mut pb::Pod, field| {
        match field.number {
            tag::POD_METADATA => {
                pod.metadata = Some(decode_kept("pod metadata", field.payload, tag::METADATA)?)
            }
            tag::POD_SPEC => pod.spec = Some(read_fields(field.payload, pod_spec)?),
            tag::POD_STATUS => pod.status = Some(read_fields(field.payload, pod_status)?),
            _ => {}
        }
        Ok(())
    })
}

fn pod_spec(spec: &mut pb::PodSpec, field: Field<'_>) -> Result<(), Error> {
    let kept = |what| decode_kept(what, field.payload, tag::CONTAINER);
    match field.number {
        tag::SPEC_VOLUMES => spec.volumes.push(read_fields(field.payload, volume_field)?),
        tag::SPEC_CONTAINERS => spec.containers.push(kept("container")?),
        tag::SPEC_INIT_CONTAINERS => spec.init_containers.push(kept("init container")?),
        tag::SPEC_AFFINITY => spec.affinity = Some(decode_kept("affinity", field.payload, tag::AFFINITY)?),
        n if tag::SPEC.contains(&n) => merge(spec, "pod spec", field.raw)?,
        _ => {}
    }
    Ok(())
}

fn volume_field(volume: &mut pb::Volume, field: Field<'_>) -> Result<(), Error> {
    match field.number {
        tag::VOLUME_NAME => merge(volume, "volume", field.raw)?,
        tag::VOLUME_SOURCE => {
            volume.volume_source = Some(decode_kept("volume source", field.payload, tag::VOLUME_SOURCES)?);
        }
        _ => {}
    }
    Ok(())
}

fn pod_status(status: &mut pb::PodStatus, field: Field<'_>) -> Result<(), Error> {
    match field.number {
        tag::STATUS_PHASE => merge(status, "pod status", field.raw)?,
        tag::STATUS_CONDITIONS => {
            status.conditions.push(decode_kept("condition", field.payload, tag::CONDITION)?)
        }
        _ => {}
    }
    Ok(())
}

impl Item for wire::Pod {
    const LIST_KIND: &'static str = "PodList";

    fn decode(item: &[u8]) -> Result<Self, Error> {
        pod_message(item).map(pod)
    }
}

/// The fields Refit reads, moved out of a (partly) decoded pod.
fn pod(p: pb::Pod) -> wire::Pod {
    let spec = p.spec.unwrap_or_default();
    let status = p.status.unwrap_or_default();
    let tolerations = map(spec.tolerations, |t| json::Toleration {
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
            volumes: map(spec.volumes, volume),
            containers: map(spec.containers, container),
            init_containers: map(spec.init_containers, container),
            resources: spec.resources.map(resources),
            overhead: some(quantities(spec.overhead)),
            node_selector: spec.node_selector,
            tolerations,
            affinity: spec.affinity.map(|a| wire::Affinity {
                node_affinity: a.node_affinity.map(|n| wire::NodeAffinity {
                    required_during_scheduling_ignored_during_execution: n
                        .required_during_scheduling_ignored_during_execution
                        .map(node_selector),
                }),
            }),
            topology_spread_constraints: map(spec.topology_spread_constraints, |c| {
                json::TopologySpreadConstraint {
                    max_skew: c.max_skew.unwrap_or_default(),
                    topology_key: c.topology_key.unwrap_or_default(),
                    when_unsatisfiable: c.when_unsatisfiable.unwrap_or_default(),
                    label_selector: c.label_selector.map(|l| LabelSelector {
                        match_labels: some(l.match_labels),
                        match_expressions: some(map(l.match_expressions, |r| LabelSelectorRequirement {
                            key: r.key.unwrap_or_default(),
                            operator: r.operator.unwrap_or_default(),
                            values: some(r.values),
                        })),
                    }),
                    ..Default::default()
                }
            }),
        },
        status: wire::PodStatus {
            phase: text(status.phase),
            conditions: map(status.conditions, |c| condition(c.r#type, c.status)),
        },
    }
}

impl Item for wire::Node {
    const LIST_KIND: &'static str = "NodeList";

    /// Nodes are decoded whole: there are few of them.
    fn decode(item: &[u8]) -> Result<Self, Error> {
        decode("node", item).map(node)
    }
}

/// The fields Refit reads, moved out of a decoded node.
fn node(n: pb::Node) -> wire::Node {
    let spec = n.spec.unwrap_or_default();
    let status = n.status.unwrap_or_default();
    let taints = map(spec.taints, |t| wire::Taint {
        key: t.key.unwrap_or_default(),
        value: text(t.value),
        effect: t.effect.unwrap_or_default(),
    });
    let addresses = map(status.addresses, |a| json::NodeAddress {
        address: a.address.unwrap_or_default(),
        type_: a.r#type.unwrap_or_default(),
    });
    wire::Node {
        metadata: meta(n.metadata),
        spec: wire::NodeSpec { taints, unschedulable: spec.unschedulable },
        status: wire::NodeStatus {
            conditions: map(status.conditions, |c| condition(c.r#type, c.status)),
            addresses,
            allocatable: quantities(status.allocatable),
            node_info: status
                .node_info
                .map(|i| wire::NodeSystemInfo { kubelet_version: i.kubelet_version.unwrap_or_default() }),
        },
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

    /// Every item, fed in chunks of `size` bytes.
    fn streamed(body: &[u8], size: usize) -> Result<Vec<String>, Error> {
        let mut stream = ListStream::<wire::Pod>::new();
        let mut names = Vec::new();
        for chunk in body.chunks(size) {
            stream.feed(chunk, &mut |p: wire::Pod| names.push(p.metadata.name.unwrap_or_default()))?;
        }
        stream.finish()?;
        Ok(names)
    }

    #[test]
    fn a_streamed_list_decodes_the_same_items_whatever_the_chunks() {
        let names: Vec<String> = (0..40).map(|i| format!("pod-{i:03}-{}", "x".repeat(i * 7))).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let body = pod_list("", &refs);
        let whole: Vec<String> = list_page::<wire::Pod>(&body, &mut |_| {})
            .unwrap()
            .into_iter()
            .map(|p| p.metadata.name.unwrap_or_default())
            .collect();
        assert_eq!(whole, names);
        for size in [1, 2, 3, 7, 64, 333, body.len()] {
            assert_eq!(streamed(&body, size).unwrap(), names, "chunks of {size}");
        }
        // An empty list, and the wrong kind.
        assert!(streamed(&pod_list("", &[]), 5).unwrap().is_empty());
        let nodes = envelope("NodeList", &pb::NodeList::default().encode_to_vec());
        assert!(matches!(streamed(&nodes, 3), Err(Error::Kind { .. })));
    }

    #[test]
    fn a_streamed_list_refuses_a_truncated_or_foreign_body() {
        let body = pod_list("", &["a", "b", "c"]);
        for cut in [0, 2, 5, body.len() / 2, body.len() - 1] {
            assert!(streamed(&body[..cut], 4).is_err(), "cut at {cut}");
        }
        assert!(matches!(streamed(b"{\"kind\":\"PodList\"}", 4), Err(Error::Magic)));
        // A list whose length says 2 bytes while its first item is longer. The body is magic,
        // then the envelope's field 1 (key, one length byte, the type meta), then field 2's
        // key and the list's length: that length byte is the one rewritten.
        let mut lying = body.clone();
        let type_meta_len = lying[MAGIC.len() + 1] as usize;
        lying[MAGIC.len() + 2 + type_meta_len + 1] = 2;
        assert!(
            matches!(streamed(&lying, 8), Err(Error::Malformed("field longer than its message"))),
            "{:?}",
            streamed(&lying, 8)
        );
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

    fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, PbQuantity> {
        pairs.iter().map(|(k, v)| ((*k).into(), PbQuantity { string: Some((*v).into()) })).collect()
    }

    fn requests(pairs: &[(&str, &str)]) -> Option<pb::ResourceRequirements> {
        Some(pb::ResourceRequirements {
            requests: quantities(pairs),
            limits: quantities(&[("cpu", "4")]),
            ..Default::default()
        })
    }

    /// A pod with every field the projection reads, and some big ones it does not.
    fn rich_pod() -> pb::Pod {
        let source = |s: pb::VolumeSource| Some(s);
        let volume = |name: &str, volume_source| pb::Volume { name: Some(name.into()), volume_source };
        let container = |name: &str, restart_policy: Option<&str>, r: &[(&str, &str)]| pb::Container {
            name: Some(name.into()),
            image: Some("registry.k8s.io/pause:3.10.1".into()),
            resources: requests(r),
            restart_policy: restart_policy.map(Into::into),
            env: vec![pb::EnvVar { name: Some("A".into()), value: Some("b".into()), ..Default::default() }],
            ..Default::default()
        };
        let time = Some(pb_meta::Time { seconds: Some(1_700_000_000), nanos: Some(0) });
        let requirement = |key: &str, operator: &str, values: &[&str]| pb::NodeSelectorRequirement {
            key: Some(key.into()),
            operator: Some(operator.into()),
            values: values.iter().map(|v| (*v).into()).collect(),
        };
        pb::Pod {
            metadata: Some(pb_meta::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                resource_version: Some("42".into()),
                creation_timestamp: time,
                deletion_timestamp: time,
                labels: [("app".to_string(), "x".to_string())].into(),
                annotations: [(super::super::MIRROR_ANNOTATION.to_string(), "hash".to_string())].into(),
                owner_references: vec![pb_meta::OwnerReference {
                    api_version: Some("apps/v1".into()),
                    kind: Some("ReplicaSet".into()),
                    name: Some("x-1".into()),
                    uid: Some("u-0".into()),
                    controller: Some(true),
                    block_owner_deletion: None,
                }],
                finalizers: vec!["f".into()],
                managed_fields: vec![pb_meta::ManagedFieldsEntry {
                    manager: Some("kubectl".into()),
                    operation: Some("Update".into()),
                    fields_v1: Some(pb_meta::FieldsV1 { raw: Some(vec![b'{'; 512]) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            spec: Some(pb::PodSpec {
                node_name: Some("worker-1".into()),
                scheduler_name: Some("default-scheduler".into()),
                volumes: vec![
                    volume(
                        "e",
                        source(pb::VolumeSource {
                            empty_dir: Some(Default::default()),
                            ..Default::default()
                        }),
                    ),
                    volume(
                        "h",
                        source(pb::VolumeSource {
                            host_path: Some(pb::HostPathVolumeSource {
                                path: Some("/var/log".into()),
                                r#type: Some(String::new()),
                            }),
                            ..Default::default()
                        }),
                    ),
                    volume(
                        "c",
                        source(pb::VolumeSource {
                            persistent_volume_claim: Some(pb::PersistentVolumeClaimVolumeSource {
                                claim_name: Some("data".into()),
                                read_only: Some(false),
                            }),
                            ..Default::default()
                        }),
                    ),
                    volume(
                        "token",
                        source(pb::VolumeSource {
                            projected: Some(Default::default()),
                            ..Default::default()
                        }),
                    ),
                ],
                init_containers: vec![
                    container("sidecar", Some("Always"), &[("cpu", "100m"), ("memory", "16Mi")]),
                    container("init", None, &[("cpu", "500m")]),
                ],
                containers: vec![container("a", None, &[("cpu", "100m"), ("memory", "128Mi")])],
                resources: requests(&[("memory", "1Gi")]),
                overhead: quantities(&[("cpu", "250m")]),
                node_selector: [("kubernetes.io/os".to_string(), "linux".to_string())].into(),
                tolerations: vec![
                    pb::Toleration {
                        key: Some("team".into()),
                        operator: Some(String::new()),
                        value: Some("db".into()),
                        effect: Some(String::new()),
                        toleration_seconds: None,
                    },
                    pb::Toleration {
                        key: Some("node.kubernetes.io/unreachable".into()),
                        operator: Some("Exists".into()),
                        effect: Some("NoExecute".into()),
                        toleration_seconds: Some(30),
                        ..Default::default()
                    },
                ],
                affinity: Some(pb::Affinity {
                    node_affinity: Some(pb::NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(pb::NodeSelector {
                            node_selector_terms: vec![pb::NodeSelectorTerm {
                                match_expressions: vec![
                                    requirement("zone", "In", &["a", "b"]),
                                    requirement("gpu", "DoesNotExist", &[]),
                                ],
                                match_fields: vec![requirement("metadata.name", "In", &["worker-1"])],
                            }],
                        }),
                        ..Default::default()
                    }),
                    pod_anti_affinity: Some(Default::default()),
                    ..Default::default()
                }),
                topology_spread_constraints: vec![
                    pb::TopologySpreadConstraint {
                        max_skew: Some(2),
                        topology_key: Some("topology.kubernetes.io/zone".into()),
                        when_unsatisfiable: Some("DoNotSchedule".into()),
                        label_selector: Some(pb_meta::LabelSelector {
                            match_labels: [("app".to_string(), "x".to_string())].into(),
                            match_expressions: vec![pb_meta::LabelSelectorRequirement {
                                key: Some("tier".into()),
                                operator: Some("In".into()),
                                values: vec!["web".into()],
                            }],
                        }),
                        ..Default::default()
                    },
                    pb::TopologySpreadConstraint {
                        max_skew: Some(1),
                        topology_key: Some("kubernetes.io/hostname".into()),
                        when_unsatisfiable: Some("ScheduleAnyway".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            status: Some(pb::PodStatus {
                phase: Some("Running".into()),
                conditions: vec![pb::PodCondition {
                    r#type: Some("Ready".into()),
                    status: Some("True".into()),
                    last_transition_time: time,
                    ..Default::default()
                }],
                pod_ip: Some("10.0.0.1".into()),
                container_statuses: vec![pb::ContainerStatus {
                    name: Some("a".into()),
                    image_id: Some("sha256:abc".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_pod_decoded_from_the_kept_fields_projects_as_the_whole_pod() {
        let bytes = rich_pod().encode_to_vec();
        let kept = super::super::pod_from_wire(<wire::Pod as Item>::decode(&bytes).unwrap());
        let whole = super::super::pod_from_wire(pod(pb::Pod::decode(bytes.as_slice()).unwrap()));
        assert_eq!(kept, whole);
        // Not two empty projections: what the rich pod says came through.
        let (info, scheduling) = kept;
        assert!(info.mirror && info.terminating && info.ready && info.volumes.len() == 4, "{info:?}");
        assert_eq!(info.owner.map(|o| o.name).as_deref(), Some("x-1"));
        assert_eq!(scheduling.required_node_terms.len(), 1);
        assert_eq!(scheduling.tolerations[0].operator, "Equal");
        // The hard spread constraint only, with its whole selector.
        assert_eq!(scheduling.spread.len(), 1, "{:?}", scheduling.spread);
        let c = &scheduling.spread[0];
        assert_eq!((c.max_skew, c.topology_key.as_str()), (2, "topology.kubernetes.io/zone"));
        assert_eq!(c.selector.match_labels.get("app").map(String::as_str), Some("x"));
        assert_eq!(c.selector.match_expressions[0].values, ["web"]);
        // cpu: the init container beside the sidecar (600m) beats 100m + 100m; plus overhead.
        // memory: the pod-level request replaces the containers' sum.
        assert_eq!(scheduling.requests.cpu_millis, 850);
        assert_eq!(scheduling.requests.memory_bytes, 1 << 30);
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
    fn a_length_near_usize_max_is_an_error_not_an_overflow() {
        // u64::MAX as a varint: ten bytes.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        // Inside the list (raw, field 2, 127 bytes to come): an item field of that length.
        let in_list = [MAGIC, &[0x12, 0x7f, 0x12], &huge[..]].concat();
        // In the envelope: a type-meta field of that length.
        let in_envelope = [MAGIC, &[0x0a], &huge[..]].concat();
        for body in [in_list, in_envelope] {
            for chunk in [1, 3, body.len()] {
                for r in decode_for_fuzzing(&body, chunk) {
                    assert!(r.is_err(), "{r:?}");
                }
            }
        }
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
