//! Health gates: checks the operator declares (in the plan file between batches, in a fleet
//! strategy per stage) that must hold — continuously for a soak time, within a timeout — before
//! the upgrade goes on.
//!
//! ```yaml
//! gates:
//!   - type: workloads            # the batch's Deployments/StatefulSets/DaemonSets available again
//!   - name: error-rate
//!     type: prometheus
//!     url: http://prometheus.monitoring:9090
//!     query: sum(rate(apiserver_request_total{code=~"5.."}[5m]))
//!     condition: "< 0.5"         # or `empty` (the default): the query returns no series
//!     soak: 2m                   # must hold this long without a dip (default 0: once)
//!     timeout: 10m               # gives up after this long (default 10m)
//!   - {type: http, url: https://shop.example.com/healthz}    # answers 2xx
//!   - {type: command, command: [./smoke-test.sh, --quick]}   # exits 0
//! ```
//!
//! The file form ([`HealthGateSpec`]) keeps what was written, so a stored strategy or plan
//! reads back as the operator wrote it; [`HealthGateSpec::resolve`] turns it into the typed
//! [`HealthGate`] a run freezes, refusing every bad definition with one line naming the fix.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Timeout of a gate that does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest PromQL query accepted (a query is sent as a URL parameter).
pub const MAX_QUERY_LEN: usize = 4096;

/// Why a gate definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health gate '{gate}': {problem}")]
pub struct GateError {
    /// The gate's name (or `TYPE-N` for an unnamed one).
    pub gate: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// A health gate as written in a plan file or a strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthGateSpec {
    /// `workloads`, `prometheus`, `http` or `command`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A name for progress, events and errors (default `TYPE-N`, N its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `prometheus`: the server's base URL; `http`: the URL that must answer 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `prometheus`: the PromQL instant query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `prometheus`: `empty` (default) or a comparison every series must meet (`< 0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// `command`: program and arguments (no shell), exit 0 = holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// How long the condition must hold without a dip (default 0: one passing observation).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "duration_text")]
    pub soak: Option<String>,
    /// How long to wait for the gate to pass (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "duration_text")]
    pub timeout: Option<String>,
}

/// Durations in a file may be written `10m` or as plain seconds (`600`).
fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like 30s, 10m or 1h")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}

/// A validated health gate, as a run or a fleet run freezes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthGate {
    /// Its name (unique in its list).
    pub name: String,
    /// What is checked.
    pub check: GateCheck,
    /// Seconds the check must hold without a dip (0: once).
    pub soak_seconds: u64,
    /// Seconds before the gate fails.
    pub timeout_seconds: u64,
}

impl HealthGate {
    /// The soak time.
    pub fn soak(&self) -> Duration {
        Duration::from_secs(self.soak_seconds)
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }
}

/// What a gate checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GateCheck {
    /// The Deployments, StatefulSets and DaemonSets with pods on the batch's nodes are
    /// available again (observed by the engine through the Kubernetes API).
    Workloads,
    /// A PromQL instant query against a Prometheus server meets a condition.
    Prometheus {
        /// Base URL of the server (`/api/v1/query` is appended).
        url: HttpUrl,
        /// The query.
        query: String,
        /// What the result must be.
        condition: Condition,
    },
    /// A URL answers 2xx.
    Http {
        /// The URL.
        url: HttpUrl,
    },
    /// A local command exits 0.
    Command {
        /// Program and arguments.
        command: Vec<String>,
    },
}

impl GateCheck {
    /// The type as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            GateCheck::Workloads => "workloads",
            GateCheck::Prometheus { .. } => "prometheus",
            GateCheck::Http { .. } => "http",
            GateCheck::Command { .. } => "command",
        }
    }
}

impl fmt::Display for GateCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateCheck::Workloads => f.write_str("the batch's workloads are available"),
            GateCheck::Prometheus { url, query, condition } => {
                write!(f, "{query} is {condition} at {url}")
            }
            GateCheck::Http { url } => write!(f, "{url} answers 2xx"),
            GateCheck::Command { command } => write!(f, "`{}` exits 0", command.join(" ")),
        }
    }
}

const KINDS: &str = "workloads, prometheus, http or command";

impl HealthGateSpec {
    /// Validates the definition; `position` (0-based) names an unnamed gate.
    pub fn resolve(&self, position: usize) -> Result<HealthGate, GateError> {
        let name = match &self.name {
            Some(n) => n.trim().to_string(),
            None => format!("{}-{}", self.kind.trim(), position.saturating_add(1)),
        };
        let bad = |problem: String| GateError { gate: name.clone(), problem };
        let unused = |field: &str, used: bool| -> Result<(), GateError> {
            if used {
                Err(bad(format!("a {} gate takes no {field}; remove it", self.kind.trim())))
            } else {
                Ok(())
            }
        };
        let url = |what: &str| -> Result<HttpUrl, GateError> {
            let Some(u) = &self.url else {
                return Err(bad(format!("a {what} gate needs url: (e.g. {})", example_url(what))));
            };
            HttpUrl::parse(u).map_err(|e| bad(format!("url: {e}")))
        };
        let check = match self.kind.trim() {
            "workloads" => {
                unused("url", self.url.is_some())?;
                unused("query", self.query.is_some())?;
                unused("condition", self.condition.is_some())?;
                unused("command", !self.command.is_empty())?;
                GateCheck::Workloads
            }
            "prometheus" => {
                unused("command", !self.command.is_empty())?;
                let url = url("prometheus")?;
                let query = self.query.as_deref().map(str::trim).unwrap_or_default();
                if query.is_empty() {
                    return Err(bad(
                        "a prometheus gate needs query: (a PromQL instant query, e.g. up{job=\"apiserver\"} == 0)"
                            .into(),
                    ));
                }
                if query.len() > MAX_QUERY_LEN {
                    return Err(bad(format!("the query is longer than {MAX_QUERY_LEN} characters")));
                }
                let condition = match &self.condition {
                    Some(c) => c.parse().map_err(|e: String| bad(format!("condition: {e}")))?,
                    None => Condition::Empty,
                };
                GateCheck::Prometheus { url, query: query.to_string(), condition }
            }
            "http" => {
                unused("query", self.query.is_some())?;
                unused("condition", self.condition.is_some())?;
                unused("command", !self.command.is_empty())?;
                GateCheck::Http { url: url("http")? }
            }
            "command" => {
                unused("url", self.url.is_some())?;
                unused("query", self.query.is_some())?;
                unused("condition", self.condition.is_some())?;
                if self.command.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err(bad(
                        "a command gate needs command: [PROGRAM, ARG...] (e.g. [./smoke-test.sh, --quick])"
                            .into(),
                    ));
                }
                GateCheck::Command { command: self.command.clone() }
            }
            other => {
                return Err(bad(format!("unknown type '{other}' (expected {KINDS})")));
            }
        };
        if name.is_empty()
            || name.chars().count() > 63
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad(
                "the name must be 1–63 letters, digits, '-', '_' or '.' (e.g. error-rate)".into()
            ));
        }
        let soak = match &self.soak {
            None => Duration::ZERO,
            Some(s) if is_zero(s) => Duration::ZERO,
            Some(s) => gate_duration(s).map_err(|e| bad(format!("soak {e}")))?,
        };
        let timeout = match &self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(s) => gate_duration(s).map_err(|e| bad(format!("timeout {e}")))?,
        };
        if soak >= timeout {
            return Err(bad(format!(
                "soak {}s is not shorter than timeout {}s: the gate could never pass; make the timeout longer than the soak",
                soak.as_secs(),
                timeout.as_secs()
            )));
        }
        Ok(HealthGate { name, check, soak_seconds: soak.as_secs(), timeout_seconds: timeout.as_secs() })
    }
}

fn example_url(what: &str) -> &'static str {
    if what == "prometheus" {
        "http://prometheus.monitoring:9090"
    } else {
        "https://shop.example.com/healthz"
    }
}

fn is_zero(s: &str) -> bool {
    let t = s.trim();
    let digits = t.strip_suffix('s').unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b == b'0')
}

/// The duration grammar of every flag and file, with a word for a negative value (which the
/// grammar only calls "not a duration").
fn gate_duration(s: &str) -> Result<Duration, String> {
    if s.trim().starts_with('-') {
        return Err(format!("'{}' is negative: write a duration like 30s, 10m or 1h", s.trim()));
    }
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// Validates a list of gates (plan file `gates:`, a stage's `healthGates:`): each definition,
/// and names unique in the list.
pub fn resolve_all(specs: &[HealthGateSpec]) -> Result<Vec<HealthGate>, GateError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let g = s.resolve(i)?;
        if !names.insert(g.name.clone()) {
            return Err(GateError {
                gate: g.name,
                problem: "the name is used twice in the list; give each gate its own name:".into(),
            });
        }
        out.push(g);
    }
    Ok(out)
}

/// An `http://` or `https://` URL with a host, no credentials and nothing a log should not
/// show. Kept as written; the parts are read from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let s = s.trim();
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "'{}' contains spaces or control characters; percent-encode them",
                printable(s)
            ));
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!("'{s}' is not a URL; write http://HOST[:PORT]/PATH or https://..."));
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(format!("'{s}': the scheme must be http or https (got '{scheme}')"));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(format!(
                "'{}': credentials in a URL would be printed and stored; remove the user:password@ part",
                redact(s)
            ));
        }
        if s.contains('#') {
            return Err(format!("'{s}': a fragment (#...) is never sent to the server; remove it"));
        }
        let u = HttpUrl(s.to_string());
        let host = u.host();
        let host_ok = if let Some(ip6) = host.strip_prefix('[') {
            ip6.strip_suffix(']').is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                && !host.starts_with(['-', '.'])
        };
        if !host_ok {
            return Err(format!("'{s}': '{host}' is not a host name or IP address"));
        }
        if let Some(p) = u.port_text()
            && !p.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(format!("'{s}': port '{p}' is not a number from 1 to 65535"));
        }
        Ok(u)
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn rest(&self) -> &str {
        self.0.split_once("://").map(|(_, r)| r).unwrap_or_default()
    }

    fn authority(&self) -> &str {
        self.rest().split(['/', '?']).next().unwrap_or_default()
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.0.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("https:"))
    }

    /// The host (an IPv6 address keeps its brackets).
    pub fn host(&self) -> &str {
        let a = self.authority();
        if a.starts_with('[') {
            match a.find(']') {
                Some(end) => a.get(..=end).unwrap_or(a),
                None => a,
            }
        } else {
            a.split(':').next().unwrap_or_default()
        }
    }

    fn port_text(&self) -> Option<&str> {
        let a = self.authority();
        let after_host = a.get(self.host().len()..).unwrap_or_default();
        after_host.strip_prefix(':')
    }

    /// The port (the scheme's default when none is written).
    pub fn port(&self) -> u16 {
        self.port_text().and_then(|p| p.parse().ok()).unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// Path and query, `/` when empty.
    pub fn path_and_query(&self) -> String {
        let r = self.rest();
        let tail = r.get(self.authority().len()..).unwrap_or_default();
        if tail.is_empty() {
            "/".into()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        }
    }

    /// This URL's path with `suffix` appended (`/api/v1/query` on a Prometheus base URL that
    /// may itself have a path prefix); any query of the base is dropped.
    pub fn path_with(&self, suffix: &str) -> String {
        let pq = self.path_and_query();
        let path = pq.split('?').next().unwrap_or_default().trim_end_matches('/');
        format!("{path}{suffix}")
    }
}

fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn redact(s: &str) -> String {
    match (s.split_once("://"), s.find('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…{}", s.get(at..).unwrap_or_default()),
        _ => "the URL".into(),
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HttpUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How a comparison compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `<`
    Less,
    /// `<=`
    LessOrEqual,
    /// `>`
    Greater,
    /// `>=`
    GreaterOrEqual,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
}

impl Comparison {
    const ALL: [(&'static str, Comparison); 6] = [
        ("<=", Comparison::LessOrEqual),
        (">=", Comparison::GreaterOrEqual),
        ("==", Comparison::Equal),
        ("!=", Comparison::NotEqual),
        ("<", Comparison::Less),
        (">", Comparison::Greater),
    ];

    fn symbol(self) -> &'static str {
        Self::ALL.iter().find(|(_, c)| *c == self).map(|(s, _)| *s).unwrap_or("?")
    }

    /// Whether `v OP threshold` (NaN meets nothing, as in PromQL).
    pub fn holds(self, v: f64, threshold: f64) -> bool {
        match self {
            Comparison::Less => v < threshold,
            Comparison::LessOrEqual => v <= threshold,
            Comparison::Greater => v > threshold,
            Comparison::GreaterOrEqual => v >= threshold,
            Comparison::Equal => v == threshold,
            Comparison::NotEqual => !v.is_nan() && v != threshold,
        }
    }
}

/// What a Prometheus query's result must be.
#[derive(Debug, Clone, Copy)]
pub enum Condition {
    /// No series at all (alert style: the query selects what is wrong).
    Empty,
    /// At least one series, and every series' value compares true.
    Compare {
        /// The comparison.
        op: Comparison,
        /// The threshold (finite).
        value: f64,
    },
}

impl PartialEq for Condition {
    fn eq(&self, other: &Condition) -> bool {
        match (self, other) {
            (Condition::Empty, Condition::Empty) => true,
            (Condition::Compare { op: a, value: x }, Condition::Compare { op: b, value: y }) => {
                a == b && x.to_bits() == y.to_bits()
            }
            _ => false,
        }
    }
}

// Thresholds are finite by construction, so bit equality is an equivalence.
impl Eq for Condition {}

impl std::str::FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Condition, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("empty") {
            return Ok(Condition::Empty);
        }
        let bad =
            || format!("'{t}' is neither `empty` nor a comparison like \"< 0.5\" (<, <=, >, >=, ==, !=)");
        let (op, rest) = Comparison::ALL
            .iter()
            .find_map(|(sym, op)| t.strip_prefix(sym).map(|r| (*op, r)))
            .ok_or_else(bad)?;
        let value: f64 = rest.trim().parse().map_err(|_| bad())?;
        if !value.is_finite() {
            return Err(format!("'{t}': the threshold must be a finite number"));
        }
        Ok(Condition::Compare { op, value })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Empty => f.write_str("empty"),
            Condition::Compare { op, value } => write!(f, "{} {value}", op.symbol()),
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One series of a Prometheus instant-vector (or the single value of a scalar) result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels as Prometheus prints them (`{job="apiserver"}`), empty for a scalar.
    pub labels: String,
    /// Its value.
    pub value: f64,
}

impl Condition {
    /// Judges a query result.
    pub fn judge(&self, samples: &[Sample]) -> super::Observation {
        use super::Observation;
        let show = |s: &Sample| {
            if s.labels.is_empty() { format!("{}", s.value) } else { format!("{} = {}", s.labels, s.value) }
        };
        match self {
            Condition::Empty => match samples.first() {
                None => Observation::Holds("the query returns no series".into()),
                Some(first) => Observation::Fails(format!(
                    "the query returns {} series (e.g. {}), expected none",
                    samples.len(),
                    show(first)
                )),
            },
            Condition::Compare { op, value } => {
                if samples.is_empty() {
                    return Observation::Fails(format!("the query returns no data (expected values {self})"));
                }
                match samples.iter().find(|s| !op.holds(s.value, *value)) {
                    Some(s) => Observation::Fails(format!("{}, not {self}", show(s))),
                    None => Observation::Holds(match samples {
                        [one] => format!("{}, {self}", show(one)),
                        _ => format!("all {} series {self}", samples.len()),
                    }),
                }
            }
        }
    }
}

/// What a failing gate (a health gate or the control plane's) does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum OnGateFailure {
    /// The run stops `paused` (exit 3); the same command resumes it, starting with the gate.
    #[default]
    Pause,
    /// The run fails (exit 1).
    Fail,
}

impl std::str::FromStr for OnGateFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<OnGateFailure, String> {
        match s.trim() {
            "pause" => Ok(OnGateFailure::Pause),
            "fail" => Ok(OnGateFailure::Fail),
            other => Err(format!("'{other}' is not a gate failure mode; expected pause or fail")),
        }
    }
}

impl fmt::Display for OnGateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnGateFailure::Pause => "pause",
            OnGateFailure::Fail => "fail",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Observation;
    use super::*;

    fn spec(yaml: &str) -> HealthGateSpec {
        crate::yaml::from_str(yaml).unwrap()
    }

    fn resolve(yaml: &str) -> Result<HealthGate, String> {
        spec(yaml).resolve(0).map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_resolves() {
        let g = resolve("{type: workloads}").unwrap();
        assert_eq!(
            (g.name.as_str(), g.check.clone(), g.soak_seconds, g.timeout_seconds),
            ("workloads-1", GateCheck::Workloads, 0, 600)
        );
        let g = resolve(
            "{name: errors, type: prometheus, url: 'http://127.0.0.1:9090/prom/', query: 'sum(rate(x[1m]))', condition: '<= 0.5', soak: 2m, timeout: 10m}",
        )
        .unwrap();
        let GateCheck::Prometheus { url, query, condition } = &g.check else { panic!("{g:?}") };
        assert_eq!(url.path_with("/api/v1/query"), "/prom/api/v1/query");
        assert_eq!((url.host(), url.port(), url.is_https()), ("127.0.0.1", 9090, false));
        assert_eq!(query, "sum(rate(x[1m]))");
        assert_eq!(*condition, Condition::Compare { op: Comparison::LessOrEqual, value: 0.5 });
        assert_eq!((g.soak_seconds, g.timeout_seconds), (120, 600));
        let g = resolve("{type: prometheus, url: 'https://[::1]/', query: up == 0}").unwrap();
        assert!(
            matches!(&g.check, GateCheck::Prometheus { condition: Condition::Empty, url, .. } if url.port() == 443 && url.host() == "[::1]")
        );
        let g = resolve(
            "{type: http, url: 'https://shop.example.com:8443/healthz?deep=1', timeout: 90, soak: 0}",
        )
        .unwrap();
        let GateCheck::Http { url } = &g.check else { panic!() };
        assert_eq!(
            (url.host(), url.port(), url.path_and_query().as_str()),
            ("shop.example.com", 8443, "/healthz?deep=1")
        );
        assert_eq!((g.soak_seconds, g.timeout_seconds), (0, 90));
        let g = resolve("{type: command, command: [./smoke.sh, --quick], soak: 30s}").unwrap();
        assert_eq!(g.check, GateCheck::Command { command: vec!["./smoke.sh".into(), "--quick".into()] });
        // The typed gate round-trips through JSON (a run's frozen spec).
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<HealthGate>(&json).unwrap(), g);
    }

    #[test]
    fn every_bad_definition_names_the_fix() {
        for (bad, says) in [
            ("{type: grafana}", "unknown type 'grafana' (expected workloads, prometheus, http or command)"),
            ("{type: prometheus, query: up}", "needs url:"),
            ("{type: prometheus, url: 'ftp://x', query: up}", "scheme must be http or https"),
            ("{type: prometheus, url: 'prometheus:9090', query: up}", "not a URL"),
            ("{type: prometheus, url: 'http://', query: up}", "is not a host name"),
            ("{type: prometheus, url: 'http://a b', query: up}", "spaces"),
            ("{type: prometheus, url: 'http://u:secret@p:9090', query: up}", "credentials"),
            ("{type: prometheus, url: 'http://p:99999', query: up}", "port '99999'"),
            ("{type: prometheus, url: 'http://p:9090'}", "needs query:"),
            (
                "{type: prometheus, url: 'http://p', query: up, condition: 'about 3'}",
                "neither `empty` nor a comparison",
            ),
            ("{type: prometheus, url: 'http://p', query: up, condition: '< inf'}", "finite"),
            ("{type: http}", "needs url:"),
            ("{type: http, url: 'http://x/#top'}", "fragment"),
            ("{type: http, url: 'http://x', query: up}", "takes no query"),
            ("{type: command}", "needs command:"),
            ("{type: command, command: ['']}", "needs command:"),
            ("{type: workloads, url: 'http://x'}", "takes no url"),
            ("{type: workloads, soak: -5m}", "soak '-5m' is negative"),
            ("{type: workloads, soak: 3d}", "soak '3d': the unit must be s, m or h"),
            ("{type: workloads, timeout: 9000h}", "at most one year"),
            ("{type: workloads, timeout: 0}", "longer than zero"),
            ("{type: workloads, soak: 10m, timeout: 5m}", "make the timeout longer than the soak"),
            ("{type: workloads, soak: 10m}", "not shorter than timeout 600s"),
            ("{type: workloads, name: 'a b'}", "the name must be"),
        ] {
            let e = resolve(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        assert!(!resolve("{type: http, url: 'http://u:secret@p'}").unwrap_err().contains("secret"));
        // Unknown fields are refused by the parser, naming the field.
        let e =
            crate::yaml::from_str::<HealthGateSpec>("{type: http, url: 'http://x', sok: 2m}").unwrap_err();
        assert!(e.contains("sok"), "{e}");
        let dup = [spec("{type: workloads, name: w}"), spec("{type: http, url: 'http://x', name: w}")];
        assert!(resolve_all(&dup).unwrap_err().to_string().contains("used twice"));
        let two = [spec("{type: workloads}"), spec("{type: workloads}")];
        assert_eq!(
            resolve_all(&two).unwrap().iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["workloads-1", "workloads-2"]
        );
    }

    #[test]
    fn conditions_judge_results() {
        let s = |labels: &str, value: f64| Sample { labels: labels.into(), value };
        let empty: Condition = "empty".parse().unwrap();
        assert!(matches!(empty.judge(&[]), Observation::Holds(_)));
        assert!(
            matches!(empty.judge(&[s("{a=\"1\"}", 1.0)]), Observation::Fails(ref r) if r.contains("1 series") && r.contains("{a=\"1\"} = 1"))
        );
        let lt: Condition = " < 5 ".parse().unwrap();
        assert_eq!(lt.to_string(), "< 5");
        assert!(matches!(lt.judge(&[s("", 3.0)]), Observation::Holds(ref d) if d == "3, < 5"));
        assert!(
            matches!(lt.judge(&[s("{i=\"a\"}", 3.0), s("{i=\"b\"}", 7.0)]), Observation::Fails(ref r) if r == "{i=\"b\"} = 7, not < 5")
        );
        assert!(matches!(lt.judge(&[]), Observation::Fails(ref r) if r.contains("no data")));
        assert!(matches!(lt.judge(&[s("", f64::NAN)]), Observation::Fails(_)));
        let ne: Condition = "!= 0".parse().unwrap();
        assert!(matches!(ne.judge(&[s("", f64::NAN)]), Observation::Fails(_)));
        for (text, v, holds) in
            [(">= 2", 2.0, true), ("> 2", 2.0, false), ("== 1", 1.0, true), ("<= -1", 0.0, false)]
        {
            let c: Condition = text.parse().unwrap();
            assert_eq!(matches!(c.judge(&[s("", v)]), Observation::Holds(_)), holds, "{text} {v}");
            assert_eq!(c.to_string().parse::<Condition>().unwrap(), c);
        }
    }

    #[test]
    fn on_gate_failure() {
        assert_eq!("pause".parse::<OnGateFailure>().unwrap(), OnGateFailure::Pause);
        assert_eq!("fail".parse::<OnGateFailure>().unwrap(), OnGateFailure::Fail);
        assert!("stop".parse::<OnGateFailure>().unwrap_err().contains("expected pause or fail"));
        assert_eq!(OnGateFailure::default().to_string(), "pause");
    }
}
