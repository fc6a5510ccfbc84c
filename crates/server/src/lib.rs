//! `refit serve`: one process that shows and steers what the CLI shows and steers — a JSON API
//! (described by `/api/openapi.json`), a server-sent-events stream of the same events `-o json`
//! prints, a dashboard rendered on the server (a little vanilla script for live updates, no
//! build step), Prometheus metrics, and webhook notifications.
//!
//! The server never talks to SQLite itself: it reads and acts through [`source::Source`], which
//! the local store implements ([`source::LocalStore`]) and so does a hub cluster's fleet
//! ([`hub::HubSource`], `refit serve --hub`: watch caches, changes pushed to the stream). Actions (approve a gate, skip, stop, start) are core's fleet events applied the way the
//! CLI applies them, and every one is audited with the name of the token that asked.
//!
//! Layout: `auth` (tokens, sessions, CSRF), `api` (JSON routes), `hub` (the hub source), `stream` (the journal tail and
//! its broadcast), `metrics`, `dashboard` (HTML), `view` (pure projections: a cluster run's
//! per-node timeline, blockers and ETA), `notify` (webhook rules and delivery), `openapi`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod hub;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod source;
pub mod stream;
pub mod tls;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use auth::Tokens;
pub use hub::HubSource;
pub use source::{LocalStore, Source};

/// Everything that can go wrong when the server starts or runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] refit_store::Error),
    /// The state could not be read.
    #[error(transparent)]
    Read(#[from] source::ReadError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file the server was given cannot be used (token file, certificate, key).
    #[error("{flag} {path}: {message}")]
    File {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The configuration is unsafe or inconsistent (e.g. listening beyond loopback without
    /// authentication).
    #[error("{0}")]
    Config(String),
    /// Serving failed.
    #[error("the server stopped: {0}")]
    Serve(#[source] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("internal error: {0}")]
    Join(String),
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Who may act (and, when `open_reads` is false, read).
    pub tokens: Tokens,
    /// Whether reading needs no token (only on loopback without a token file).
    pub open_reads: bool,
    /// TLS (server certificate, optional client CA).
    pub tls: Option<tls::TlsFiles>,
    /// How often the store's journals are tailed: the stream's latency floor.
    pub poll_interval: Duration,
}

/// Checks the safety rule of the issue: beyond loopback the server needs a token file or TLS
/// client certificates; a token sent in clear over a network is refused too (TLS required).
pub fn check_exposure(
    listen: SocketAddr,
    token_file: bool,
    tls: Option<&tls::TlsFiles>,
) -> Result<(), Error> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    let client_certs = tls.is_some_and(|t| t.client_ca.is_some());
    if !token_file && !client_certs {
        return Err(Error::Config(format!(
            "--listen {listen} is not a loopback address: give --token-file FILE (with --tls-cert/--tls-key) or TLS client certificates (--client-ca), or listen on 127.0.0.1"
        )));
    }
    if tls.is_none() {
        return Err(Error::Config(format!(
            "--listen {listen} is not a loopback address: tokens must not cross a network in clear; add --tls-cert and --tls-key"
        )));
    }
    Ok(())
}

/// Runs the server until `shutdown` resolves: the listener, the journal tail, the notifier.
pub async fn serve(
    config: Config,
    source: Arc<dyn Source>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen { addr: config.listen, source })?;
    serve_on(listener, config, source, shutdown).await
}

/// Like [`serve`] on a listener already bound (tests bind port 0 and read the port).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    source: Arc<dyn Source>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Arc::new(metrics::Metrics::new());
    let hub = stream::Hub::start(source.clone(), metrics.clone(), config.poll_interval).await?;
    // Webhooks are configured in, and delivered from, a local store.
    let notifier = (source.home() == source::Home::Local)
        .then(|| notify::Notifier::start(source.clone(), hub.subscribe(), metrics.clone()));
    let state = api::AppState::new(source, config.clone(), hub, metrics);
    let app = api::router(state);
    let result = match &config.tls {
        None => axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::Serve),
        Some(files) => tls::serve(listener, app, files, shutdown).await,
    };
    if let Some(n) = notifier {
        n.abort();
    }
    result
}
