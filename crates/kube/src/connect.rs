//! Clients per kubeconfig context, configured for a tool that must never hang or hide errors.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Error;

/// Connect timeout: an unreachable address fails quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read timeout for ordinary requests (watches use their own idle timeouts).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Which cluster to talk to, as kubectl flags name it.
#[derive(Debug, Clone, Default)]
pub struct ClusterTarget {
    /// `--kubeconfig`; else `$KUBECONFIG` (a path list, merged), else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`; else the kubeconfig's current context.
    pub context: Option<String>,
}

/// A connected client plus what it points at.
#[derive(Clone)]
pub struct Connection {
    /// The client (timeouts set, no automatic retries).
    pub client: Client,
    /// The context used.
    pub context: String,
    /// The API server URL.
    pub server: String,
    /// The resolved configuration (holds credentials: never printed).
    config: Config,
}

impl Connection {
    /// A client with the same credentials and TLS trust, aimed at another endpoint of the
    /// same cluster (one apiserver of several, behind the load balancer).
    pub fn client_for(&self, server: &str) -> Result<Client, Error> {
        let mut config = self.config.clone();
        config.cluster_url = server
            .parse()
            .map_err(|e| Error::Kubeconfig { path: server.to_string(), detail: format!("not a URL: {e}") })?;
        Client::try_from(config)
            .map_err(|e| Error::Api { context: format!("client for {server}"), source: Box::new(e) })
    }
}

impl std::fmt::Debug for Connection {
    // Never print the client: its config holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("context", &self.context).field("server", &self.server).finish()
    }
}

fn load(target: &ClusterTarget) -> Result<(Kubeconfig, String), Error> {
    match &target.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .map(|kc| (kc, path.display().to_string()))
            .map_err(|e| Error::Kubeconfig { path: path.display().to_string(), detail: e.to_string() }),
        None => Kubeconfig::read()
            .map(|kc| (kc, std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into())))
            .map_err(|e| Error::Kubeconfig {
                path: std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into()),
                detail: format!("{e} (pass --kubeconfig or set KUBECONFIG)"),
            }),
    }
}

/// Builds a client for `target` and checks that the API server answers (`GET /version`).
pub async fn connect(target: &ClusterTarget) -> Result<Connection, Error> {
    let (kubeconfig, path) = load(target)?;
    let context = match &target.context {
        Some(c) => c.clone(),
        None => kubeconfig.current_context.clone().ok_or_else(|| Error::Kubeconfig {
            path: path.clone(),
            detail: "no current-context set; pass --context".into(),
        })?,
    };
    if !kubeconfig.contexts.iter().any(|c| c.name == context) {
        let mut names: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        return Err(Error::UnknownContext {
            context,
            path,
            available: if names.is_empty() { "none".into() } else { names.join(", ") },
        });
    }
    let options = KubeConfigOptions { context: Some(context.clone()), ..Default::default() };
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| Error::Kubeconfig { path: path.clone(), detail: e.to_string() })?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    // A PDB refusal (429) is information to act on, never something to retry silently.
    config.default_retry = false;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config.clone())
        .map_err(|e| Error::Api { context: "building client".into(), source: Box::new(e) })?;
    match tokio::time::timeout(CONNECT_TIMEOUT + READ_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(Connection { client, context, server, config }),
        Ok(Err(e)) => Err(Error::Unreachable { context, server, detail: e.to_string() }),
        Err(_) => Err(Error::Unreachable { context, server, detail: "timed out".into() }),
    }
}
