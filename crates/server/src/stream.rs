//! The journal tail: one task reads new entries of the store's cluster journal and fleet
//! history every poll interval (by sequence number, so nothing is missed or read twice) and
//! broadcasts them to every event-stream client, the metrics and the notifier.
//!
//! A hub source ([`crate::hub::HubSource`]) needs no tail: its watches on UpdateRuns,
//! ClusterUpgrades and Gates send each change as it happens ([`Source::push_events`]).
//!
//! Why polling the local store: the writers are other processes (`refit upgrade`, the fleet driver, the CLI),
//! and SQLite has no cross-process notification; an indexed `seq > ?` read of a WAL database
//! every 200 ms costs microseconds, and bounds the engine-to-browser latency.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::source::Source;
use crate::view::store_time;

/// Which journal an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A cluster run (`refit upgrade`): the body is a `refit_core::event::Event`.
    Cluster,
    /// A fleet run's history: the body is a `refit_core::fleet::Event` (local store); on a
    /// hub, a change of one of the run's objects ([`crate::hub::ObjectChange`]).
    Fleet,
}

/// One entry as the event stream sends it: where it comes from, its place, its run, its time,
/// and the event exactly as the CLI's `-o json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamEvent {
    /// Which journal.
    pub origin: Origin,
    /// Its sequence number in that journal.
    pub seq: i64,
    /// The cluster run id or fleet run name.
    pub run: String,
    /// When it was recorded (RFC 3339), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<jiff::Timestamp>,
    /// The event.
    pub event: serde_json::Value,
}

impl StreamEvent {
    /// The SSE id: `c123` or `f45`.
    pub fn id(&self) -> String {
        match self.origin {
            Origin::Cluster => format!("c{}", self.seq),
            Origin::Fleet => format!("f{}", self.seq),
        }
    }

    /// The event's kind (`blocked`, `ApproveGate` …).
    pub fn kind(&self) -> &str {
        self.event.get("event").and_then(|k| k.as_str()).unwrap_or("")
    }
}

/// The broadcast of new journal entries.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<StreamEvent>>,
}

/// Entries read per query: a burst larger than this is read over several polls.
const BATCH: u32 = 500;

impl Hub {
    /// Starts the tail. Every stored entry is counted into the metrics once (step durations,
    /// by step); only entries newer than the start are broadcast.
    pub async fn start(
        source: Arc<dyn Source>,
        metrics: Arc<Metrics>,
        every: Duration,
    ) -> Result<Hub, crate::Error> {
        let (tx, _) = broadcast::channel(1024);
        let hub = Hub { tx: tx.clone() };
        // A hub's watches send their changes themselves: nothing to tail.
        if source.push_events(&tx) {
            return Ok(hub);
        }
        let heads = {
            let s = source.clone();
            tokio::task::spawn_blocking(move || s.journal_heads())
                .await
                .map_err(|e| crate::Error::Join(e.to_string()))??
        };
        tokio::spawn(async move {
            let (mut cluster, mut fleet) = (0i64, 0i64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = source.clone();
                let read = tokio::task::spawn_blocking(move || -> Result<_, crate::source::ReadError> {
                    Ok((s.journal_after(cluster, BATCH)?, s.fleet_history_after(fleet, BATCH)?))
                })
                .await;
                let (journal, history) = match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        tracing::warn!("event stream: cannot read the store: {e}");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("event stream: {e}");
                        continue;
                    }
                };
                for e in journal {
                    cluster = e.seq;
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&e.body) else { continue };
                    metrics.observe_cluster_event(&event);
                    if e.seq > heads.0 {
                        let _ = tx.send(Arc::new(StreamEvent {
                            origin: Origin::Cluster,
                            seq: e.seq,
                            run: e.run,
                            at: store_time(&e.at),
                            event,
                        }));
                    }
                }
                for e in history {
                    fleet = e.seq;
                    if e.seq > heads.1 {
                        let at = Some(e.event.at());
                        let Ok(event) = serde_json::to_value(&e.event) else { continue };
                        let _ = tx.send(Arc::new(StreamEvent {
                            origin: Origin::Fleet,
                            seq: e.seq,
                            run: e.run,
                            at,
                            event,
                        }));
                    }
                }
            }
        });
        Ok(hub)
    }

    /// A new receiver of entries from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StreamEvent>> {
        self.tx.subscribe()
    }

    /// Connected receivers (event-stream clients and the notifier).
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }
}
