//! Talking to the testbed's components: kubeconfigs, TLS clients, plain HTTP for kwok, and the
//! readiness wait every component start uses.

use super::*;

/// A kubeconfig that trusts the testbed CA and authenticates with the admin certificate
/// (files referenced, never inlined), serialized from kube's own `Kubeconfig` so paths with
/// YAML-special characters stay paths.
pub(super) fn kubeconfig_yaml(server: &str, pki: &Pki) -> Result<String, Error> {
    let (cluster, user) = ("refit-testbed", "refit-admin");
    let kc = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority: Some(pki.ca_cert.display().to_string()),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(pki.admin_cert.display().to_string()),
                client_key: Some(pki.admin_key.display().to_string()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: cluster.into(),
            context: Some(Context { cluster: cluster.into(), user: Some(user.into()), ..Context::default() }),
            ..NamedContext::default()
        }],
        current_context: Some(cluster.into()),
        ..Kubeconfig::default()
    };
    serde_saphyr::to_string(&kc).map_err(|e| Error::Config(format!("writing a kubeconfig: {e}")))
}

/// A kube client from a kubeconfig file, with timeouts so a dead endpoint fails fast.
pub(crate) async fn client_from_kubeconfig(path: &Path, context: Option<String>) -> Result<Client, Error> {
    let kc =
        Kubeconfig::read_from(path).map_err(|e| Error::State { path: path.into(), detail: e.to_string() })?;
    let opts = KubeConfigOptions { context, ..Default::default() };
    let config = Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| Error::State { path: path.into(), detail: e.to_string() })?;
    client_from_config(config)
}

pub(super) fn client_from_config(mut config: Config) -> Result<Client, Error> {
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    config.default_retry = false;
    Client::try_from(config).map_err(|e| Error::kube("building client", e))
}

/// A client for a TLS endpoint of the testbed that is not an apiserver (etcd, KCM, scheduler).
pub(super) async fn tls_client(url: &str, pki: &Pki) -> Result<Client, Error> {
    let path = pki
        .ca_cert
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("endpoint-{}.kubeconfig", url.rsplit(':').next().unwrap_or("0")));
    write_file(&path, &kubeconfig_yaml(url, pki)?, true)?;
    client_from_kubeconfig(&path, None).await
}

pub(super) async fn get_text(client: &Client, path: &str) -> Result<String, String> {
    let req = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    client.request_text(req).await.map_err(|e| e.to_string())
}

/// A bare HTTP/1.0 GET for kwok's plain-HTTP health endpoint.
pub(crate) async fn plain_http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.map_err(|e| e.to_string())?;
    match buf.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") => {
            Ok(body.to_string())
        }
        _ => Err(buf.lines().next().unwrap_or("no response").to_string()),
    }
}

/// Polls `probe` every 100–500 ms until it succeeds or `timeout` passes.
pub(crate) async fn wait_until<F, Fut>(
    what: &str,
    log: &Path,
    timeout: Duration,
    probe: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    wait_while_alive(what, log, timeout, || true, probe).await
}

/// [`wait_until`] for a process of ours: gives up at once when `alive` says it exited (a
/// component that died on start — a port taken, a bad flag — must not cost the whole timeout),
/// naming the last lines of its log.
pub(crate) async fn wait_while_alive<A, F, Fut>(
    what: &str,
    log: &Path,
    timeout: Duration,
    mut alive: A,
    mut probe: F,
) -> Result<(), Error>
where
    A: FnMut() -> bool,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(10), probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "probe timed out".to_string(),
        };
        let exited = !alive();
        if exited || start.elapsed() > timeout {
            let detail = if exited {
                format!("the process exited; its log ends: {}", log_tail(log, 3))
            } else {
                last.chars().take(300).collect()
            };
            return Err(Error::NotReady {
                what: what.to_string(),
                seconds: start.elapsed().as_secs(),
                detail,
                log: log.display().to_string(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// The last `n` non-empty lines of a log, joined, at most 400 characters.
pub(super) fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines.get(lines.len().saturating_sub(n)..).unwrap_or_default().join(" | ");
    let count = tail.chars().count();
    tail.chars().skip(count.saturating_sub(400)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_reads_back_with_every_path_as_written() {
        let p = |s: &str| PathBuf::from(s);
        let pki = Pki {
            ca_cert: p("/tmp/a dir: with #yaml/ca.crt"),
            admin_cert: p("/tmp/x/admin.crt"),
            admin_key: p("/tmp/x/admin.key"),
            sa_key: p("/tmp/x/sa.key"),
            sa_pub: p("/tmp/x/sa.pub"),
        };
        let text = kubeconfig_yaml("https://127.0.0.1:6443", &pki).unwrap();
        let kc = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("refit-testbed"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority.as_deref(), Some("/tmp/a dir: with #yaml/ca.crt"));
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate.as_deref(), Some("/tmp/x/admin.crt"));
        assert_eq!(user.client_key.as_deref(), Some("/tmp/x/admin.key"));
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!((ctx.cluster.as_str(), ctx.user.as_deref()), ("refit-testbed", Some("refit-admin")));
        assert!(text.contains("kind: Config") && text.contains("apiVersion: v1"), "{text}");
    }
}
