//! `refit serve`: the HTTP API, dashboard, metrics and webhooks over the local store, or with
//! `--hub` over a hub cluster's fleet. Thin: checks the flags (bad or unsafe ones exit 2 before
//! anything listens), opens the source (a hub that cannot be reached or has no refit CRDs is
//! exit 2 too), picks the tokens, binds, prints where it listens, and hands over to
//! `refit_server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use refit_server::{Config, HubSource, LocalStore, Source, Tokens, tls::TlsFiles};

use crate::output::usage;

/// `refit serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen. Anything but a loopback address needs --token-file (or --client-ca)
    /// and TLS (--tls-cert, --tls-key).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The store to show (the same file `refit upgrade` and `refit fleet` use). With --hub, only
    /// where the generated loopback token is kept.
    #[arg(long, env = "REFIT_STORE")]
    pub store: Option<PathBuf>,
    /// Bearer tokens, one `TOKEN,NAME` per line (kube-apiserver's static token file shape; mode
    /// 0600). NAME is who approvals and the audit trail record. Without it (loopback only),
    /// reading needs no token and actions need the token refit writes to serve.token next to
    /// the store.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates signed by this CA (PEM); the subject's common name is the
    /// caller's name.
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Show and steer the fleet of a hub cluster (`refit controller` mode) instead of the local
    /// store: runs, members, strategies and gates from its custom resources, approvals and
    /// stop/start written as the objects its controller acts on. Cluster runs and webhooks
    /// stay local-store features.
    #[arg(long, value_name = "KUBECONFIG")]
    pub hub: Option<PathBuf>,
    /// The hub kubeconfig's context (default: its current context).
    #[arg(long, requires = "hub")]
    pub context: Option<String>,
    /// The hub namespace the fleet lives in.
    #[arg(long, short = 'n', default_value = "refit-system", requires = "hub")]
    pub namespace: String,
    /// How often the store's journals are read for new events (the event stream's latency).
    #[arg(long, default_value = "200ms", value_name = "DURATION")]
    pub poll_interval: String,
}

/// The name the generated loopback token is given: the user running the server.
fn local_name() -> String {
    std::env::var("USER").ok().filter(|u| !u.trim().is_empty()).unwrap_or_else(|| "local".to_string())
}

/// Runs `refit serve` until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Milliseconds (`200ms`) are this flag's usual unit; longer ones read like every duration.
    let poll = match args.poll_interval.strip_suffix("ms").map(str::parse::<u64>) {
        Some(Ok(ms)) => Duration::from_millis(ms),
        Some(Err(_)) => {
            return Err(usage(format!("--poll-interval {}: expected e.g. 200ms or 2s", args.poll_interval)));
        }
        None => refit_core::duration::parse(&args.poll_interval)
            .map_err(|e| usage(format!("--poll-interval {}: {e}", args.poll_interval)))?,
    };
    if poll < Duration::from_millis(10) || poll > Duration::from_secs(60) {
        return Err(usage("--poll-interval: between 10ms and 60s"));
    }
    let tls = args.tls_cert.as_ref().zip(args.tls_key.as_ref()).map(|(c, k)| TlsFiles {
        cert: c.clone(),
        key: k.clone(),
        client_ca: args.client_ca.clone(),
    });
    refit_server::check_exposure(args.listen, args.token_file.is_some(), tls.as_ref())
        .map_err(|e| usage(e.to_string()))?;
    if let Some(t) = &tls {
        refit_server::tls::server_config(t).map_err(|e| usage(e.to_string()))?;
    }
    let store = match args.store {
        Some(p) => p,
        None => refit_store::default_path()?,
    };
    let (source, shown): (Arc<dyn Source>, String) = match &args.hub {
        Some(kubeconfig) => {
            let target = refit_kube::ClusterTarget {
                kubeconfig: Some(kubeconfig.clone()),
                context: args.context.clone(),
            };
            // A hub that cannot be reached, a context it lacks, or no refit CRDs: the flags
            // point at the wrong place (exit 2).
            let conn = refit_kube::connect(&target).await.map_err(|e| usage(format!("--hub: {e}")))?;
            let hub = HubSource::open(conn, &args.namespace).await.map_err(|e| {
                if e.is_usage() { usage(format!("--hub: {e}")) } else { anyhow::Error::new(e) }
            })?;
            let shown =
                format!("hub {} namespace {} as {}", kubeconfig.display(), args.namespace, hub.identity());
            (Arc::new(hub), shown)
        }
        None => (Arc::new(LocalStore::open(&store)?), format!("store {}", store.display())),
    };
    let (tokens, token_note) = match &args.token_file {
        Some(f) => (Tokens::from_file(f).map_err(|e| usage(e.to_string()))?, String::new()),
        None => {
            let file = store.with_file_name("serve.token");
            // Kept across restarts (a browser stays logged in); a file someone else made
            // readable is replaced.
            let tokens = match Tokens::from_file(&file) {
                Ok(t) => t,
                Err(_) => Tokens::generate_file(&file, &local_name())?,
            };
            (tokens, format!("; actions need the token in {} (log in with it)", file.display()))
        }
    };
    let config = Config {
        listen: args.listen,
        open_reads: args.token_file.is_none() && args.listen.ip().is_loopback(),
        tokens,
        tls: tls.clone(),
        poll_interval: poll,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("refit serve: {scheme}://{addr}/ ({shown}){token_note}");
    refit_server::serve_on(listener, config, source, shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
