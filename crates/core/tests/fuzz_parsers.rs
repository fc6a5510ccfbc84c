//! Property-based fuzzing of every parser and file format core reads (issue 18 item 7):
//! versions, quantities, durations, percentages, plan files, strategy files, window files,
//! node-image sources, profiles, catalogs, Helm release payloads, the apiserver metric text,
//! and the small grammars beside them (gate references, UTC offsets, image references,
//! addresses, cluster UIDs, run and step states, placeholders).
//!
//! Two kinds of input per format: arbitrary text (or bytes), and structure-aware mutations of
//! the valid document `refit formats` prints (a field's value swapped for an absurd one, a line
//! dropped, duplicated or re-indented, a cut at any byte). The property is always "an answer,
//! never a panic"; where a parser accepts, what it accepted is checked too (a version prints
//! back as itself, a duration is in range, a window answers questions about instants).
//!
//! CI runs [`CI_CASES`] cases per target (the whole file well under a minute). The long mode is
//! the `#[ignore]`d `long_*` tests: `REFIT_FUZZ_CASES=1000000 cargo test -p refit-core --test
//! fuzz_parsers -- --ignored` runs that many cases per target.

use std::str::FromStr;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use refit_core::catalog::Catalog;
use refit_core::fleet::{
    GateRef, Limit, MaintenanceWindow, Profile, Strategy as FleetStrategy, parse_image_source,
};
use refit_core::planfile::PlanFile;
use refit_core::{MinorVersion, Version, VersionRequest};

/// Cases per target in CI.
const CI_CASES: u32 = 4000;

/// Cases per target in the long mode: `REFIT_FUZZ_CASES`, else 100,000.
fn long_cases() -> u32 {
    std::env::var("REFIT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// The valid documents `refit formats` prints, the seeds of the structure-aware mutations.
const PLAN: &str = include_str!("../../cli/src/commands/formats/plan.yaml");
const STRATEGY: &str = include_str!("../../cli/src/commands/formats/strategy.yaml");
const WINDOW: &str = include_str!("../../cli/src/commands/formats/window.yaml");
const NODE_IMAGES: &str = include_str!("../../cli/src/commands/formats/node-images.yaml");
const PROFILE: &str = include_str!("../../cli/src/commands/formats/profile.yaml");
const CATALOG: &str = include_str!("../../cli/src/commands/formats/catalog.yaml");
const METRIC: &str = "# HELP apiserver_requested_deprecated_apis [STABLE] Gauge of deprecated APIs that have been requested\n# TYPE apiserver_requested_deprecated_apis gauge\napiserver_requested_deprecated_apis{group=\"storage.k8s.io\",removed_release=\"1.37\",resource=\"volumeattributesclasses\",subresource=\"\",version=\"v1beta1\"} 1\napiserver_requested_deprecated_apis{group=\"\",removed_release=\"\",resource=\"odd\\\"name\\\\x\",subresource=\"status\",version=\"v1\"} 1 1700000000\n";

/// Values a hostile or careless author writes in a field.
const ABSURD: &[&str] = &[
    "",
    "~",
    "null",
    "0",
    "-1",
    "300000000000",
    "5124095576030432h",
    "18446744073709551616",
    "-9223372036854775809",
    "1e999",
    "NaN",
    ".inf",
    "0x7fffffff",
    "\"\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "*undefined_alias",
    "&anchor x",
    "!!binary aGVsbG8=",
    "!!python/object:os.system",
    "-oProxyCommand=touch /tmp/x",
    "$(id)",
    "\u{1b}[2J\u{1b}[H",
    "\u{202e}gnp.exe",
    "😀😀😀",
    "1.37.99999999999999999999",
    "v1.37.1-rc.0+build.1",
    "1.-1",
    "101%",
    "-5%",
    "99999999999999999999%",
    "24:60",
    "+14:01",
    "Mars/Olympus_Mons",
    "9999-99-99",
    "2026-02-30/2026-01-01",
    "|\n  multi\n  line",
    ">-",
    "? complex\n: key",
    "'unterminated",
    "\"unterminated",
    "a: b: c",
    "- - - -",
];

/// A structure-aware mutation of a valid document.
#[derive(Debug, Clone)]
enum Mutation {
    /// The value after the first `:` of a line (or the whole line) replaced.
    Value { line: usize, value: String },
    /// A line removed.
    Drop(usize),
    /// A line repeated.
    Duplicate(usize),
    /// A line's indentation changed by this many spaces (negative: removed).
    Indent(usize, i8),
    /// The document cut at a byte (on a character boundary).
    Cut(usize),
    /// Arbitrary text inserted at a byte.
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let absurd = prop::sample::select(ABSURD).prop_map(str::to_string);
    let value = prop_oneof![3 => absurd, 1 => "\\PC{0,30}", 1 => any::<u64>().prop_map(|n| n.to_string()), 1 => any::<i64>().prop_map(|n| n.to_string())];
    prop_oneof![
        6 => (any::<usize>(), value).prop_map(|(line, value)| Mutation::Value { line, value }),
        1 => any::<usize>().prop_map(Mutation::Drop),
        1 => any::<usize>().prop_map(Mutation::Duplicate),
        1 => (any::<usize>(), -4i8..=4).prop_map(|(l, d)| Mutation::Indent(l, d)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), "\\PC{0,12}|[:\\-\\[\\]{}&*!|>'\"%@`#,?]{1,4}").prop_map(|(at, s)| Mutation::Insert(at, s)),
    ]
}

/// Up to four mutations applied in turn.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=4)
}

fn apply(doc: &str, muts: &[Mutation]) -> String {
    let mut text = doc.to_string();
    for m in muts {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let n = lines.len().max(1);
        match m {
            Mutation::Value { line, value } => {
                if let Some(l) = lines.get_mut(line % n) {
                    *l = match l.split_once(':') {
                        Some((k, _)) => format!("{k}: {value}"),
                        None => match l.split_once("- ") {
                            Some((indent, _)) => format!("{indent}- {value}"),
                            None => value.clone(),
                        },
                    };
                }
                text = lines.join("\n");
            }
            Mutation::Drop(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
                text = lines.join("\n");
            }
            Mutation::Duplicate(i) => {
                if let Some(l) = lines.get(i % n).cloned() {
                    lines.insert(i % n, l);
                }
                text = lines.join("\n");
            }
            Mutation::Indent(i, d) => {
                if let Some(l) = lines.get_mut(i % n) {
                    *l = if *d >= 0 {
                        format!("{}{l}", " ".repeat(usize::from(d.unsigned_abs())))
                    } else {
                        let strip = usize::from(d.unsigned_abs()).min(l.len() - l.trim_start().len());
                        l[strip..].to_string()
                    };
                }
                text = lines.join("\n");
            }
            Mutation::Cut(at) => {
                let at = boundary(&text, at % (text.len() + 1));
                text.truncate(at);
            }
            Mutation::Insert(at, s) => {
                let at = boundary(&text, at % (text.len() + 1));
                text.insert_str(at, s);
            }
        }
    }
    text
}

fn boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Runs `check` on `cases` generated values; a panic or a failed property fails the test with
/// the (shrunk) input.
fn fuzz<S: Strategy>(cases: u32, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, check) {
        panic!("{e}");
    }
}

/// Arbitrary text: any characters, and text made of the characters the grammars use.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => "[0-9a-zA-Z.+\\-:/%=_ ]{0,40}",
        1 => "v?[0-9]{1,25}(\\.[0-9]{1,25}){0,3}(-[a-z0-9.]{0,8})?(\\+[a-z0-9.]{0,8})?",
        1 => "[0-9]{1,30}(\\.[0-9]{0,10})?([eE][+-]?[0-9]{1,4})?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|n|u)?",
        1 => "[0-9]{1,25}(h|m|s|ms|d|w|us|ns)([0-9]{1,25}(h|m|s))?|PT[0-9]{1,25}[HMS]",
        1 => prop::sample::select(ABSURD).prop_map(str::to_string),
    ]
}

// ---------------------------------------------------------------------------------------
// The targets: one function per parser, each called by a CI test and a long-mode test.

fn versions(cases: u32) {
    fuzz(cases, text(), |s| {
        if let Ok(v) = Version::from_str(&s) {
            let again =
                Version::from_str(&v.to_string()).map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
            prop_assert_eq!(&again, &v);
            let _ = v.release();
        }
        let _ = MinorVersion::from_str(&s);
        let _ = VersionRequest::from_str(&s);
        Ok(())
    });
}

fn quantities(cases: u32) {
    fuzz(cases, text(), |s| {
        if let Ok(q) = refit_core::quantity::Quantity::parse(&s) {
            for scale in [-9, -3, 0, 3, 9, i32::MIN, i32::MAX] {
                let _ = q.scaled_ceil(scale);
            }
        }
        let _ = refit_core::quantity::cpu_millis(&s);
        let _ = refit_core::quantity::bytes(&s);
        Ok(())
    });
}

fn durations(cases: u32) {
    fuzz(cases, text(), |s| {
        if let Ok(d) = refit_core::duration::parse(&s) {
            prop_assert!(
                d >= std::time::Duration::from_secs(1) && d <= refit_core::duration::MAX,
                "{s}: {d:?}"
            );
        }
        Ok(())
    });
}

fn percentages_and_counts(cases: u32) {
    fuzz(cases, text(), |s| {
        let _ = refit_core::plan::MaxUnavailable::from_str(&s).map(|m| {
            for n in [0, 1, 7, 100, usize::MAX] {
                let _ = m.batch_size(n);
            }
        });
        let _ = Limit::from_str(&s);
        let _ = refit_core::drain::parse_eviction_concurrency(&s);
        Ok(())
    });
}

fn small_grammars(cases: u32) {
    fuzz(cases, text(), |s| {
        let _ = GateRef::from_str(&s);
        let _ = refit_core::fleet::gate::UtcOffset::from_str(&s);
        let _ = refit_core::addons::ImageRef::parse(&s);
        let _ = refit_core::run::RunState::from_str(&s);
        let _ = refit_core::run::StepState::from_str(&s);
        let _ = refit_core::run::OnUndrainable::from_str(&s);
        let _ = refit_core::identity::ClusterUid::parse(&s);
        if let Ok(a) = refit_core::identity::NodeAddress::parse(&s) {
            prop_assert!(!a.to_string().starts_with('-'), "{a}");
        }
        let _ = refit_core::placeholder::pieces(&s).count();
        let _ = refit_core::removed::last_applied_api_version(&s);
        let printable = refit_core::identity::printable(&s, true);
        prop_assert!(!printable.chars().any(|c| c.is_control() && c != '\n'));
        Ok(())
    });
}

fn plan_file(doc: &str) -> Result<(), TestCaseError> {
    if let Ok(p) = PlanFile::from_yaml(doc) {
        let nodes = ["worker-003".to_string(), "cp-1".to_string()].into_iter().collect();
        let _ = p.validate(&nodes);
        let _ = p.validate(&Default::default());
    }
    Ok(())
}

fn strategy_file(doc: &str) -> Result<(), TestCaseError> {
    if let Ok(s) = FleetStrategy::parse(doc) {
        prop_assert!(s.validate().is_ok(), "parse validates");
        for st in &s.stages {
            prop_assert!(st.after_stage_wait_in_seconds <= refit_core::duration::MAX_SECONDS);
        }
    }
    Ok(())
}

fn window_file(doc: &str) -> Result<(), TestCaseError> {
    if let Ok(w) = MaintenanceWindow::from_yaml(doc)
        && let Ok(w) = w.schedule()
    {
        // An accepted window answers every question, at any instant jiff can hold.
        for t in [jiff::Timestamp::MIN, jiff::Timestamp::UNIX_EPOCH, jiff::Timestamp::MAX] {
            let _ = w.is_open(t);
            let _ = w.closes_at(t);
            let _ = w.next_opening(t);
            let _ = w.current(t);
        }
        let now: jiff::Timestamp =
            "2026-12-24T21:30:00Z".parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let _ = w.next_opening(now);
    }
    Ok(())
}

fn node_image_source(doc: &str) -> Result<(), TestCaseError> {
    if let Ok(images) = parse_image_source(doc) {
        for i in images {
            prop_assert!(!i.family.trim().is_empty() && !i.version.trim().is_empty(), "{i:?}");
            prop_assert!(!i.family.contains('/') && !i.version.contains('/'), "{i:?}");
        }
    }
    Ok(())
}

fn profile_file(doc: &str) -> Result<(), TestCaseError> {
    if let Ok(p) = Profile::from_yaml(doc) {
        let _ = p.validate();
    }
    Ok(())
}

fn catalog_file(doc: &str) -> Result<(), TestCaseError> {
    if let Ok(c) = Catalog::from_yaml(doc) {
        for minor in 0..40 {
            let _ = c.newest_patch(MinorVersion::new(1, minor));
        }
    }
    Ok(())
}

fn metric_text(doc: &str) -> Result<(), TestCaseError> {
    let _ = refit_core::removed::parse_deprecated_api_metric(doc);
    Ok(())
}

/// A document format: its seed, its check.
type Format = (&'static str, fn(&str) -> Result<(), TestCaseError>);

const FORMATS: &[(&str, Format)] = &[
    ("plan", (PLAN, plan_file)),
    ("strategy", (STRATEGY, strategy_file)),
    ("window", (WINDOW, window_file)),
    ("node-images", (NODE_IMAGES, node_image_source)),
    ("profile", (PROFILE, profile_file)),
    ("catalog", (CATALOG, catalog_file)),
    ("metric", (METRIC, metric_text)),
];

fn format_arbitrary(name: &str, cases: u32) {
    let (_, check) = format(name);
    fuzz(cases, any::<String>(), |s| check(&s));
}

fn format_mutated(name: &str, cases: u32) {
    let (seed, check) = format(name);
    // The seed itself is accepted (a mutation test of a rejected seed would test nothing).
    check(seed).unwrap();
    fuzz(cases, mutations(), |m| check(&apply(seed, &m)));
}

fn format(name: &str) -> Format {
    FORMATS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).unwrap()
}

/// Helm release payloads: arbitrary bytes, and valid payloads (base64 of gzip of the release
/// JSON) around a mutated manifest and mutated JSON.
fn helm(cases: u32) {
    use std::io::Write;
    let release = |name: &str, manifest: &str, gzip: bool| -> Vec<u8> {
        let json =
            serde_json::json!({"name": name, "namespace": "default", "version": 3, "manifest": manifest})
                .to_string();
        let raw = if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(json.as_bytes()).unwrap();
            e.finish().unwrap()
        } else {
            json.into_bytes()
        };
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw).into_bytes()
    };
    let manifest = "apiVersion: policy/v1beta1\nkind: PodSecurityPolicy\nmetadata:\n  name: psp\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n";
    let seed = release("web", manifest, true);
    assert_eq!(refit_core::removed::decode_helm_release(&seed).unwrap().objects.len(), 2);
    fuzz(cases, prop::collection::vec(any::<u8>(), 0..512), |bytes| {
        let _ = refit_core::removed::decode_helm_release(&bytes);
        Ok(())
    });
    fuzz(cases, (mutations(), any::<bool>(), "\\PC{0,20}"), move |(m, gzip, name)| {
        let payload = release(&name, &apply(manifest, &m), gzip);
        prop_assert!(
            refit_core::removed::decode_helm_release(&payload).is_ok(),
            "a well-formed release decodes"
        );
        Ok(())
    });
    // Bytes flipped in a valid payload (base64, gzip and JSON layers all reached).
    fuzz(cases, prop::collection::vec((any::<usize>(), any::<u8>()), 1..6), move |flips| {
        let mut p = seed.clone();
        for (at, b) in flips {
            let n = p.len();
            if let Some(x) = p.get_mut(at % n) {
                *x = b;
            }
        }
        let _ = refit_core::removed::decode_helm_release(&p);
        Ok(())
    });
}

/// Everything, with `cases` per target.
fn all(cases: u32) {
    versions(cases);
    quantities(cases);
    durations(cases);
    percentages_and_counts(cases);
    small_grammars(cases);
    for (name, _) in FORMATS {
        format_arbitrary(name, cases);
        format_mutated(name, cases);
    }
    helm(cases);
}

// ---------------------------------------------------------------------------------------
// CI: every target at CI_CASES.

#[test]
fn fuzz_versions() {
    versions(CI_CASES);
}

#[test]
fn fuzz_quantities() {
    quantities(CI_CASES);
}

#[test]
fn fuzz_durations() {
    durations(CI_CASES);
}

#[test]
fn fuzz_percentages_and_counts() {
    percentages_and_counts(CI_CASES);
}

#[test]
fn fuzz_small_grammars() {
    small_grammars(CI_CASES);
}

#[test]
fn fuzz_file_formats_arbitrary_text() {
    for (name, _) in FORMATS {
        format_arbitrary(name, CI_CASES);
    }
}

#[test]
fn fuzz_file_formats_mutated_documents() {
    for (name, _) in FORMATS {
        format_mutated(name, CI_CASES);
    }
}

#[test]
fn fuzz_helm_release_payloads() {
    helm(CI_CASES);
}

/// A YAML "billion laughs" (aliases expanding exponentially) is refused or read within the
/// reader's budget, not expanded into memory.
#[test]
fn alias_bombs_are_not_expanded() {
    let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = format!("*a{}", i - 1);
        doc.push_str(&format!("a{i}: &a{i} [{}]\n", [prev.as_str(); 10].join(", ")));
    }
    doc.push_str("stages: *a11\n");
    assert!(FleetStrategy::parse(&doc).is_err());
    assert!(PlanFile::from_yaml(&doc.replace("stages", "etcd")).is_err());
}

// ---------------------------------------------------------------------------------------
// Long mode: REFIT_FUZZ_CASES per target.

#[test]
#[ignore = "long mode: REFIT_FUZZ_CASES=1000000 cargo test -p refit-core --test fuzz_parsers -- --ignored"]
fn long_fuzz_every_core_parser() {
    all(long_cases());
}
