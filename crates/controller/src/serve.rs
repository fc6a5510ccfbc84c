//! `refit controller --kubeconfig HUB`: one replica — leader election, and `/healthz`,
//! `/readyz`, `/metrics` for the kubelet's probes and Prometheus.
//!
//! Readiness means "knows its role" (leading, or following a named leader): a replica whose
//! hub is unreachable is alive but not ready. `/metrics` carries `refit_controller_leader`
//! (1 on the leader) and `refit_controller_leader_changes_total` (times this replica started
//! leading), and the reconciler's metrics ([`crate::reconcile::Metrics`]). While this replica
//! leads it runs the reconciler ([`crate::reconcile::lead`]), each time in a new term (the
//! fence of its writes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use refit_kube::ClusterTarget;
use tokio::sync::watch;

use crate::Error;
use crate::leader::{self, Role};
use crate::store::Leadership;

/// One replica's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The hub.
    pub hub: ClusterTarget,
    /// The fleet's namespace.
    pub namespace: String,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub listen: SocketAddr,
    /// Leader election.
    pub election: leader::Config,
    /// The local store path member upgrades are given: their etcd backups and node-action
    /// locks lie beside it (None: a private directory of this replica's, removed when it
    /// exits). Their journals are on the hub.
    pub journal: Option<std::path::PathBuf>,
    /// Each member upgrade's engine request (the binary parses it as `refit upgrade`'s
    /// arguments).
    pub requests: crate::launcher::Requests,
    /// Refresh the release catalog on a schedule (None: never; `refit catalog update` by hand).
    pub catalog_refresh: Option<CatalogRefresh>,
}

/// The controller's own `refit catalog update`, on a schedule: new releases reach the
/// auto-upgrade profiles without a new build or an operator.
#[derive(Debug, Clone)]
pub struct CatalogRefresh {
    /// Where from (upstream's release markers, or a whole catalog by URL or file).
    pub source: refit_engine::catalog::Source,
    /// How often (the first refresh is at start).
    pub every: std::time::Duration,
}

/// Refreshes the kept catalog (beside the default store, where every command and the
/// profiles read it) now and every `r.every`; a failed refresh keeps the catalog as it was.
async fn refresh_catalog(r: CatalogRefresh) {
    loop {
        let today = jiff::Zoned::now().date();
        match refit_engine::catalog::update(r.source.clone(), None, today).await {
            Ok(u) => tracing::info!(
                "catalog refreshed from {:?}: dated {}, kept at {}",
                u.source,
                u.updated,
                u.path.display()
            ),
            Err(e) => tracing::warn!("catalog refresh: {e} (the catalog is unchanged)"),
        }
        tokio::time::sleep(r.every).await;
    }
}

struct Shared {
    role: watch::Receiver<Role>,
    registry: Registry,
    /// Kept for the replica's lifetime.
    _journal: tempfile::TempDir,
}

/// Runs a replica until the process ends. `on_listen` is told the bound address (port 0
/// picks one).
pub async fn run(cfg: Config, on_listen: impl FnOnce(SocketAddr)) -> Result<(), Error> {
    let conn = refit_kube::connect(&cfg.hub).await?;
    let me = refit_engine::lifecycle::lock::this_process();
    let holder = me.identity.clone();
    let (tx, role) = watch::channel(Role::Candidate);
    let leader_gauge: Gauge = Gauge::default();
    let changes: Counter<u64, AtomicU64> = Counter::default();
    let mut registry = Registry::with_prefix("refit_controller");
    registry.register("leader", "1 while this replica leads", leader_gauge.clone());
    registry.register("leader_changes", "Times this replica started leading", changes.clone());
    let mut watch_role = role.clone();
    tokio::spawn(async move {
        while watch_role.changed().await.is_ok() {
            let leading = *watch_role.borrow() == Role::Leader;
            leader_gauge.set(i64::from(leading));
            if leading {
                changes.inc();
            }
        }
    });
    let reconciler_metrics = crate::reconcile::Metrics::register(&mut registry);
    // The member upgrades' local journal: given, or private to this replica.
    let private = tempfile::Builder::new()
        .prefix("refit-controller")
        .tempdir()
        .map_err(|e| Error::Journal(format!("cannot create a private directory: {e}")))?;
    let journal = cfg.journal.clone().unwrap_or_else(|| private.path().join("refit.db"));
    let term = Arc::new(AtomicI64::new(0));
    let leadership = Leadership { role: role.clone(), term: term.clone() };
    let client = conn.client.clone();
    let namespace = cfg.namespace.clone();
    let requests = cfg.requests.clone();
    tokio::spawn(async move {
        let mut watch_role = leadership.role.clone();
        loop {
            if *watch_role.borrow_and_update() == Role::Leader {
                term.fetch_add(1, Ordering::SeqCst);
                let lead = crate::reconcile::Lead {
                    client: client.clone(),
                    namespace: namespace.clone(),
                    holder: holder.clone(),
                    leadership: leadership.clone(),
                    metrics: reconciler_metrics.clone(),
                    journal: journal.clone(),
                    requests: requests.clone(),
                    driver: refit_fleet::DriverConfig::default(),
                };
                match crate::reconcile::lead(lead).await {
                    Ok(()) => tracing::info!("no longer leading: the reconciler stopped"),
                    Err(e) => tracing::error!("the reconciler stopped: {e}"),
                }
                // Still leading (the reconciler failed): try again shortly.
                if *watch_role.borrow() == Role::Leader {
                    tokio::time::sleep(crate::reconcile::POLL).await;
                    continue;
                }
            }
            if watch_role.changed().await.is_err() {
                break;
            }
        }
    });
    if let Some(r) = cfg.catalog_refresh.clone() {
        tokio::spawn(refresh_catalog(r));
    }
    tokio::spawn(leader::campaign(conn, cfg.election.clone(), me, tx));
    let shared = Arc::new(Shared { role, registry, _journal: private });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::Listen { addr: cfg.listen, source: e })?;
    let addr = listener.local_addr().map_err(|e| Error::Listen { addr: cfg.listen, source: e })?;
    on_listen(addr);
    axum::serve(listener, app).await.map_err(|e| Error::Listen { addr, source: e })
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match &*s.role.borrow() {
        Role::Candidate => {
            (StatusCode::SERVICE_UNAVAILABLE, "no role yet: the hub has not answered\n".to_string())
        }
        Role::Leader => (StatusCode::OK, "leader\n".to_string()),
        Role::Follower(who) => (StatusCode::OK, format!("follower of {who}\n")),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let mut text = String::new();
    match encode(&mut text, &s.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string()),
    }
}
