//! Property-based fuzzing of the protobuf list reader (issue 18 item 7): arbitrary bytes, and
//! structure-aware mutations of valid pod and node list bodies (bytes flipped, varint lengths
//! swapped for huge ones, cuts, insertions), each decoded as one page and streamed in chunks of
//! every size. The property: a count or an error, never a panic or an overflow.
//!
//! CI runs [`CI_CASES`] cases per target; the `#[ignore]`d `long_*` test runs
//! `REFIT_FUZZ_CASES` (default 100,000): `REFIT_FUZZ_CASES=1000000 cargo test -p refit-kube
//! --test fuzz_protobuf -- --ignored`.

use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use refit_kube::snapshot::protobuf::decode_for_fuzzing;

const CI_CASES: u32 = 3000;

fn long_cases() -> u32 {
    std::env::var("REFIT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// A body as the apiserver sends it: `k8s\0` + Unknown{typeMeta, raw}.
fn body(kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta { api_version: Some("v1".into()), kind: Some(kind.into()) }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [b"k8s\0".as_slice(), &unknown.encode_to_vec()].concat()
}

fn pod_list() -> Vec<u8> {
    let pod = |name: &str| pb::Pod {
        metadata: Some(meta::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            labels: [("app".to_string(), "web".to_string())].into_iter().collect(),
            ..Default::default()
        }),
        spec: Some(pb::PodSpec {
            node_name: Some("w-1".into()),
            containers: vec![pb::Container {
                name: Some("c".into()),
                image: Some("nginx".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(pb::PodStatus { phase: Some("Running".into()), ..Default::default() }),
    };
    let list = pb::PodList {
        metadata: Some(meta::ListMeta { r#continue: Some("token".into()), ..Default::default() }),
        items: vec![pod("a"), pod("b"), pod("c")],
    };
    body("PodList", list.encode_to_vec())
}

fn node_list() -> Vec<u8> {
    let node = pb::Node {
        metadata: Some(meta::ObjectMeta { name: Some("w-1".into()), ..Default::default() }),
        spec: Some(pb::NodeSpec { unschedulable: Some(false), ..Default::default() }),
        status: Some(pb::NodeStatus {
            addresses: vec![pb::NodeAddress {
                r#type: Some("InternalIP".into()),
                address: Some("10.0.0.1".into()),
            }],
            node_info: Some(pb::NodeSystemInfo {
                kubelet_version: Some("v1.36.4".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let list = pb::NodeList { metadata: Some(meta::ListMeta::default()), items: vec![node.clone(), node] };
    body("NodeList", list.encode_to_vec())
}

/// Decodes `bytes` every way at chunk sizes 1, 7 and `chunk`.
fn decode_every_way(bytes: &[u8], chunk: usize) {
    for c in [1, 7, chunk.max(1)] {
        for r in decode_for_fuzzing(bytes, c) {
            drop(r);
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    /// A varint of this value written over the bytes at a position (a length made huge).
    Varint(usize, u64),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let huge = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(usize::MAX as u64 / 2),
        Just(u32::MAX as u64),
        Just(1u64 << 62),
        any::<u64>()
    ];
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
        3 => (any::<usize>(), huge).prop_map(|(a, v)| Mutation::Varint(a, v)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12)).prop_map(|(a, b)| Mutation::Insert(a, b)),
    ]
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let n = b.len().max(1);
        match m {
            Mutation::Flip(at, x) => {
                if let Some(p) = b.get_mut(at % n) {
                    *p = *x;
                }
            }
            Mutation::Varint(at, v) => {
                let at = at % n;
                let bytes = varint(*v);
                let end = (at + bytes.len()).min(b.len());
                b.splice(at..end, bytes);
            }
            Mutation::Cut(at) => b.truncate(at % (b.len() + 1)),
            Mutation::Insert(at, bytes) => {
                let at = at % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
        }
    }
    b
}

fn run<S: Strategy>(cases: u32, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, check) {
        panic!("{e}");
    }
}

fn arbitrary(cases: u32) {
    run(cases, (prop::collection::vec(any::<u8>(), 0..600), 1usize..64), |(mut bytes, chunk)| {
        decode_every_way(&bytes, chunk);
        // The same bytes behind the magic, so the envelope walk is reached too.
        bytes.splice(0..0, *b"k8s\0");
        decode_every_way(&bytes, chunk);
        Ok(())
    });
}

fn mutated(cases: u32) {
    let (pods, nodes) = (pod_list(), node_list());
    let counts = decode_for_fuzzing(&pods, 5);
    assert_eq!(counts[0].as_ref().unwrap(), &3, "the seed decodes: {counts:?}");
    assert_eq!(counts[2].as_ref().unwrap(), &3);
    assert_eq!(decode_for_fuzzing(&nodes, 5)[3].as_ref().unwrap(), &2);
    run(
        cases,
        (any::<bool>(), prop::collection::vec(mutation(), 1..5), 1usize..200),
        move |(pod, m, chunk)| {
            let seed = if pod { &pods } else { &nodes };
            decode_every_way(&apply(seed, &m), chunk);
            Ok(())
        },
    );
}

#[test]
fn fuzz_arbitrary_bytes() {
    arbitrary(CI_CASES);
}

#[test]
fn fuzz_mutated_list_bodies() {
    mutated(CI_CASES);
}

#[test]
#[ignore = "long mode: REFIT_FUZZ_CASES=1000000 cargo test -p refit-kube --test fuzz_protobuf -- --ignored"]
fn long_fuzz_protobuf_lists() {
    arbitrary(long_cases());
    mutated(long_cases());
}
