//! etcd's health through its gRPC gateway (JSON over HTTPS with the client certificate, the
//! same connection as the backup): the member list, each member's own status, and the raised
//! alarms, read into core's [`EtcdHealth`] so the quorum rule (`may_take_down`) and the
//! health check decide. Nothing here changes etcd.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use refit_core::health::etcd::{EtcdAlarm, EtcdHealth, EtcdMember};

use crate::backup::{EtcdEndpoint, Failure, connect, gateway_message, http_failure, read_some};

/// How long one member may take to answer its status.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read (a member list of hundreds of members is far less).
const MAX_ANSWER: usize = 1 << 20;

/// POSTs `body` to `path` on one endpoint and returns the JSON answer.
async fn post(ep: &EtcdEndpoint, path: &str, body: &'static str) -> Result<serde_json::Value, Failure> {
    let work = async {
        let (mut sender, driver, host, port) = connect(ep).await?;
        let authority =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let req = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .map_err(|e| Failure::Stream(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| http_failure(&e, ep, "sending the request"));
        let result = match resp {
            Ok(resp) => {
                let status = resp.status();
                let mut body = resp.into_body();
                let text = read_some(&mut body, MAX_ANSWER).await;
                if status.is_success() {
                    serde_json::from_str(&text)
                        .map_err(|e| Failure::Stream(format!("{path}: not etcd's JSON answer ({e})")))
                } else {
                    Err(Failure::Http { status: status.as_u16(), message: gateway_message(&text) })
                }
            }
            Err(e) => Err(e),
        };
        driver.abort();
        result
    };
    tokio::time::timeout(STATUS_TIMEOUT, work).await.unwrap_or(Err(Failure::Timeout {
        during: "waiting for etcd's answer",
        seconds: STATUS_TIMEOUT.as_secs(),
    }))
}

/// A uint64 as protojson writes it (a string), or a number.
fn id(v: &serde_json::Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
}

/// Reads etcd's health: the member list and alarms from the first endpoint that answers, then
/// every member's status at its own client URL (with the endpoints' certificates).
pub async fn etcd_health(endpoints: &[EtcdEndpoint]) -> Result<EtcdHealth, String> {
    let mut failures = Vec::new();
    let mut found = None;
    for ep in endpoints {
        match post(ep, "/v3/cluster/member/list", "{}").await {
            Ok(list) => {
                found = Some((ep, list));
                break;
            }
            Err(e) => failures.push(format!("{}: {e}", ep.url)),
        }
    }
    let Some((ep, list)) = found else {
        return Err(if failures.is_empty() {
            "no etcd endpoint to ask".to_string()
        } else {
            format!("no etcd endpoint answered: {}", failures.join("; "))
        });
    };
    let alarms = post(ep, "/v3/maintenance/alarm", r#"{"action":"GET"}"#)
        .await
        .map_err(|e| format!("{}: reading alarms: {e}", ep.url))?;
    let alarms = alarms
        .get("alarms")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    let member = x.get("memberID").and_then(id).unwrap_or(0);
                    Some((member, EtcdAlarm::parse(x.get("alarm")?.as_str()?)))
                })
                .filter(|(_, a)| *a != EtcdAlarm::Other("NONE".into()))
                .collect()
        })
        .unwrap_or_default();
    let raw = list.get("members").and_then(|m| m.as_array()).cloned().unwrap_or_default();
    let statuses = raw.iter().map(|m| async move {
        let url =
            m.get("clientURLs").and_then(|u| u.as_array()).and_then(|u| u.first()).and_then(|u| u.as_str());
        let Some(url) = url else {
            return (false, Some("no client URL (not started yet?)".to_string()));
        };
        let member_ep = EtcdEndpoint { url: url.to_string(), ..ep.clone() };
        match post(&member_ep, "/v3/maintenance/status", "{}").await {
            Ok(st) => {
                let errors = st.get("errors").filter(|e| e.as_array().is_some_and(|e| !e.is_empty()));
                if let Some(errors) = errors {
                    (false, Some(format!("reports errors: {errors}")))
                } else if st.get("leader").and_then(id).unwrap_or(0) == 0 {
                    (false, Some("has no leader".to_string()))
                } else {
                    (true, None)
                }
            }
            Err(e) => (false, Some(e.to_string())),
        }
    });
    let statuses = futures::future::join_all(statuses).await;
    let members = raw
        .iter()
        .zip(statuses)
        .map(|(m, (healthy, problem))| EtcdMember {
            id: m.get("ID").and_then(id).unwrap_or(0),
            name: m.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string(),
            healthy,
            learner: m.get("isLearner").and_then(|l| l.as_bool()).unwrap_or(false),
            problem,
        })
        .collect();
    Ok(EtcdHealth { members, alarms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_as_protojson_writes_them() {
        assert_eq!(id(&serde_json::json!("18446744073709551615")), Some(u64::MAX));
        assert_eq!(id(&serde_json::json!(7)), Some(7));
        assert_eq!(id(&serde_json::json!(null)), None);
    }
}
