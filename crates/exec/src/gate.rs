//! Probes of health gates that reach outside the cluster: a Prometheus query, an HTTP check, a
//! local command. Each probe returns one [`Observation`]; the soak rule
//! (`refit_core::health::Soak`) decides what a series of them means.
//!
//! A probe never fails as a Rust error: an unreachable Prometheus, a refused connection or a
//! command that cannot start is a failing observation with its reason, because to the gate it
//! is exactly that — the condition cannot be shown to hold. Every probe is bounded by a
//! timeout so a hanging endpoint cannot stall the run past the gate's own timeout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use refit_core::health::gate::Sample;
use refit_core::health::{Condition, GateCheck, HealthGate, HttpUrl, Observation, Soak, Verdict};

/// The longest one probe may take (a gate's timeout still bounds the whole wait).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a body is kept for a reason or parsed as a query result.
const MAX_BODY: usize = 4 << 20;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// One pooled client for every gate probe: https verified against the system's roots.
fn client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b.https_or_http().enable_http1().build(),
            Err(e) => {
                // No system roots: plain http still works, https fails to verify (and says so).
                tracing::warn!("health gates: no system CA certificates ({e})");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap_or_else(|_| {
                        rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS)
                    })
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_http1()
                    .build()
            }
        };
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// Probes a gate that needs nothing from the cluster (`prometheus`, `http`, `command`).
/// `workloads` is observed through the Kubernetes API by the caller; asked here it fails.
pub async fn probe(check: &GateCheck, env: &[(String, String)]) -> Observation {
    match check {
        GateCheck::Prometheus { url, query, condition } => prometheus(url, query, condition).await,
        GateCheck::Http { url } => http_check(url).await,
        GateCheck::Command { command } => command_check(command, env).await,
        GateCheck::Workloads => {
            Observation::Fails("internal: a workloads gate is observed through the Kubernetes API".into())
        }
    }
}

/// GETs `url`, returning the status and at most [`MAX_BODY`] bytes of the body.
pub(crate) async fn get(url: &str) -> Result<(u16, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let req = http::Request::get(uri)
        .header(http::header::USER_AGENT, concat!("refit/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let work = async {
        let resp = client().request(req).await.map_err(|e| crate::backup::chain(&e))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| crate::backup::chain(&e))?;
            if let Some(data) = frame.data_ref() {
                let room = MAX_BODY.saturating_sub(bytes.len());
                bytes.extend_from_slice(data.get(..data.len().min(room)).unwrap_or_default());
                if room <= data.len() {
                    break;
                }
            }
        }
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())))
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    line.chars().take(max).collect()
}

/// An `http` gate: 2xx holds, anything else (or no answer) fails with the status and the
/// start of the body.
pub async fn http_check(url: &HttpUrl) -> Observation {
    match get(url.as_str()).await {
        Ok((status, _)) if (200..300).contains(&status) => Observation::Holds(format!("HTTP {status}")),
        Ok((status, body)) => {
            let said = first_line(&body, 200);
            Observation::Fails(if said.is_empty() {
                format!("{url} answered HTTP {status}")
            } else {
                format!("{url} answered HTTP {status}: {said}")
            })
        }
        Err(e) => Observation::Fails(format!("{url}: {e}")),
    }
}

/// A `prometheus` gate: the instant query at `url`'s `/api/v1/query`, judged by `condition`.
pub async fn prometheus(url: &HttpUrl, query: &str, condition: &Condition) -> Observation {
    let base = url.as_str().split_once("://").map(|(s, _)| s).unwrap_or("http");
    let full = format!(
        "{base}://{}{}?query={}",
        authority(url),
        url.path_with("/api/v1/query"),
        percent_encode(query)
    );
    match get(&full).await {
        Ok((status, body)) => match query_result(status, &body) {
            Ok(samples) => condition.judge(&samples),
            Err(e) => Observation::Fails(format!("prometheus {url}: {e}")),
        },
        Err(e) => Observation::Fails(format!("prometheus {url}: {e}")),
    }
}

fn authority(url: &HttpUrl) -> String {
    let port = url.port();
    let default = if url.is_https() { 443 } else { 80 };
    if port == default { url.host().to_string() } else { format!("{}:{port}", url.host()) }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len().saturating_mul(3));
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads Prometheus' answer to an instant query: a vector (one sample per series) or a scalar
/// (one sample without labels). Errors carry Prometheus' own `errorType: error`.
pub fn query_result(status: u16, body: &str) -> Result<Vec<Sample>, String> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|_| format!("HTTP {status} and not Prometheus' API answer: {}", first_line(body, 200)))?;
    if v.get("status").and_then(|s| s.as_str()) != Some("success") {
        let kind = v.get("errorType").and_then(|k| k.as_str()).unwrap_or("error");
        let msg = v.get("error").and_then(|m| m.as_str()).unwrap_or("no message");
        return Err(format!("{kind}: {msg}"));
    }
    let value = |pair: Option<&serde_json::Value>| -> Result<f64, String> {
        let text = pair.and_then(|p| p.get(1)).and_then(|t| t.as_str()).ok_or("a sample without a value")?;
        // Prometheus writes NaN, +Inf and -Inf as text.
        match text {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            t => t.parse().map_err(|_| format!("sample value '{t}' is not a number")),
        }
    };
    let data = v.get("data");
    let result = data.and_then(|d| d.get("result"));
    match data.and_then(|d| d.get("resultType")).and_then(|t| t.as_str()) {
        Some("vector") => result
            .and_then(|r| r.as_array())
            .ok_or("a vector result without series")?
            .iter()
            .map(|s| {
                let labels = s.get("metric").map(labels).unwrap_or_default();
                Ok(Sample { labels, value: value(s.get("value"))? })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample { labels: String::new(), value: value(result)? }]),
        Some(other) => Err(format!(
            "the query returns a {other}; a gate needs an instant vector or a scalar (drop the range selector [..])"
        )),
        None => Err("an answer without a resultType".into()),
    }
}

/// `{a="1", b="2"}` as Prometheus prints a series (`__name__` first, outside the braces).
fn labels(metric: &serde_json::Value) -> String {
    let Some(map) = metric.as_object() else { return String::new() };
    let name = map.get("__name__").and_then(|n| n.as_str()).unwrap_or_default();
    let rest: Vec<String> = map
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| {
            format!("{k}={}", serde_json::Value::String(v.as_str().unwrap_or_default().to_string()))
        })
        .collect();
    if rest.is_empty() { name.to_string() } else { format!("{name}{{{}}}", rest.join(", ")) }
}

/// A `command` gate: exit 0 holds; otherwise the exit and the last stderr line are the reason.
pub async fn command_check(command: &[String], env: &[(String, String)]) -> Observation {
    match crate::command::run_command(command, env, PROBE_TIMEOUT, &|_| {}).await {
        Ok(out) => Observation::Holds(match out.stdout_tail.last() {
            Some(l) if !l.trim().is_empty() => format!("exit 0: {}", first_line(l, 200)),
            _ => "exit 0".into(),
        }),
        // The error names the exit and the last stderr lines on lines of their own: one line.
        Err(e) => Observation::Fails(
            e.to_string()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(300)
                .collect(),
        ),
    }
}

/// Waits on one gate: probes every [`Soak::poll_interval`] until the soak rule passes or fails
/// it, reporting each waiting reason to `on_wait` (progress, events). `probe` is the gate's
/// observation — [`probe`] for the external kinds, a Kubernetes API read for `workloads`; each
/// call is bounded by the time the gate has left.
pub async fn wait<F, Fut>(gate: &HealthGate, probe: F, on_wait: &(dyn Fn(&str) + Send + Sync)) -> Verdict
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Observation>,
{
    wait_soak(Soak::for_gate(gate), gate.timeout(), probe, on_wait).await
}

/// [`wait`] for a check that is not a declared gate (the engine's control-plane gate): the
/// same soak rule, probing and timeout.
pub async fn wait_soak<F, Fut>(
    mut soak: Soak,
    timeout: Duration,
    mut probe: F,
    on_wait: &(dyn Fn(&str) + Send + Sync),
) -> Verdict
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Observation>,
{
    let started = tokio::time::Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let observation = match tokio::time::timeout(left.max(Duration::from_millis(1)), probe()).await {
            Ok(o) => o,
            Err(_) => match soak.timed_out(started.elapsed()) {
                Some(v) => return v,
                None => continue,
            },
        };
        match soak.observe(started.elapsed(), observation) {
            Verdict::Waiting { reason } => on_wait(&reason),
            decided => return decided,
        }
        let left = timeout.saturating_sub(started.elapsed());
        tokio::time::sleep(soak.poll_interval().min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_results_are_read() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"apiserver","instance":"127.0.0.1:6443"},"value":[1733380000.1,"1"]},{"metric":{},"value":[1,"NaN"]}]}}"#;
        let s = query_result(200, vector).unwrap();
        assert_eq!(s[0].labels, r#"up{instance="127.0.0.1:6443", job="apiserver"}"#);
        assert_eq!(s[0].value, 1.0);
        assert!(s[1].value.is_nan() && s[1].labels.is_empty());
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2.5"]}}"#;
        assert_eq!(query_result(200, scalar).unwrap()[0].value, 2.5);
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(query_result(400, bad).unwrap_err(), "bad_data: parse error at char 4");
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(query_result(200, matrix).unwrap_err().contains("range selector"));
        assert!(query_result(502, "<html>Bad gateway</html>").unwrap_err().contains("HTTP 502"));
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode(r#"up{job="a b"} == 0"#), "up%7Bjob%3D%22a%20b%22%7D%20%3D%3D%200");
    }

    #[tokio::test]
    async fn commands_and_unreachable_urls() {
        let ok = command_check(&["sh".into(), "-c".into(), "echo fine".into()], &[]).await;
        assert_eq!(ok, Observation::Holds("exit 0: fine".into()));
        let no = command_check(&["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()], &[]).await;
        assert!(matches!(&no, Observation::Fails(r) if r.contains("broken") && r.contains('3')), "{no:?}");
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
        assert!(matches!(http_check(&url).await, Observation::Fails(r) if r.contains(&port.to_string())));
    }
}
