//! The control plane's own health, as the control-plane gate reads it: every kube-apiserver's
//! `/readyz?verbose` (each instance asked directly, since behind a load balancer one request
//! reaches only one of them), read by core's [`Readyz`] so the failing checks are named.

use std::time::Duration;

use kube::Client;
use refit_core::health::readyz::Readyz;

use crate::Error;
use crate::connect::Connection;
use crate::endpoints::{ApiserverEndpoint, apiserver_endpoints};

/// How long one apiserver may take to answer.
pub const READYZ_TIMEOUT: Duration = Duration::from_secs(10);

/// One apiserver's answer (or why there was none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiserverHealth {
    /// Which apiserver.
    pub endpoint: ApiserverEndpoint,
    /// What its `/readyz?verbose` said; `Err` when it did not answer.
    pub readyz: Result<Readyz, String>,
}

impl ApiserverHealth {
    /// Why this apiserver is not ready, if it is not.
    pub fn problem(&self) -> Option<String> {
        match &self.readyz {
            Ok(r) => r.reason(&self.endpoint.url),
            Err(e) => Some(format!("apiserver {} did not answer /readyz: {e}", self.endpoint.url)),
        }
    }
}

/// `/readyz?verbose` of one apiserver through `client`.
pub async fn readyz(client: &Client) -> Result<Readyz, String> {
    let req = http::Request::get("/readyz?verbose").body(Vec::new()).map_err(|e| e.to_string())?;
    let work = async {
        let resp = client.send(req.map(kube::client::Body::from)).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect_bytes().await.map_err(|e| e.to_string())?;
        Ok(Readyz::parse(status, &String::from_utf8_lossy(&body)))
    };
    tokio::time::timeout(READYZ_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", READYZ_TIMEOUT.as_secs())))
}

/// Every apiserver's readiness, asked concurrently.
pub async fn apiservers_health(conn: &Connection) -> Result<Vec<ApiserverHealth>, Error> {
    let endpoints = apiserver_endpoints(conn).await?;
    let asks = endpoints.into_iter().map(|endpoint| async move {
        let readyz = match conn.client_for(&endpoint.url) {
            Ok(client) => readyz(&client).await,
            Err(e) => Err(e.to_string()),
        };
        ApiserverHealth { endpoint, readyz }
    });
    Ok(futures::future::join_all(asks).await)
}
