//! `/metrics` in the Prometheus text format (prometheus-client).
//!
//! States are read from the store at scrape time (a scrape always agrees with `run show`);
//! node step durations are a histogram fed by the journal tail (every stored step is counted
//! once per server process, so the histogram is cumulative like any Prometheus histogram).
//!
//! Names and labels:
//! - `refit_fleet_run_state{run,state}` 1 for the run's state (kube-state-metrics style)
//! - `refit_fleet_member_state{run,stage,group,member,state}` 1
//! - `refit_cluster_run_state{run,cluster,state}` 1
//! - `refit_gates_pending{run,gate,type}` 1 per gate waiting
//! - `refit_gate_approval_latency_seconds` histogram: gate reached → approved
//! - `refit_drain_blocked{run,cluster,node,pod,pdb}` 1 per node whose drain is held back now
//! - `refit_node_step_duration_seconds{step}` histogram: cordon, drain, upgrade, validate, …
//! - `refit_webhook_delivery_failures_total{hook}` attempts that did not deliver
//! - `refit_event_stream_clients` connected event-stream clients

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::source::Source;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn step_histogram() -> Histogram {
    // 0.1 s … about 14 min.
    Histogram::new(exponential_buckets(0.1, 2.0, 14))
}

/// The metrics kept across scrapes.
pub struct Metrics {
    step_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Metrics {
        Metrics { step_seconds: Family::new_with_constructor(step_histogram) }
    }

    /// Counts a cluster-run event (only finished steps matter here).
    pub fn observe_cluster_event(&self, event: &serde_json::Value) {
        if event.get("event").and_then(|e| e.as_str()) != Some("step-done") {
            return;
        }
        let (Some(step), Some(millis)) =
            (event.get("step").and_then(|s| s.as_str()), event.get("millis").and_then(|m| m.as_u64()))
        else {
            return;
        };
        // Precision loss above 2^53 ms is irrelevant for a duration.
        #[allow(clippy::cast_precision_loss)]
        let secs = millis as f64 / 1000.0;
        self.step_seconds.get_or_create(&labels(&[("step", step)])).observe(secs);
    }

    /// The text exposition, reading states from `source` now.
    pub fn render(
        &self,
        source: &dyn Source,
        stream_clients: usize,
    ) -> Result<String, crate::source::ReadError> {
        let mut r = Registry::default();

        let run_state = Family::<Labels, Gauge>::default();
        let member_state = Family::<Labels, Gauge>::default();
        let gates_pending = Family::<Labels, Gauge>::default();
        let approval = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        for stored in source.fleet_runs()? {
            let run = &stored.state;
            let state = run.status.state.to_string();
            run_state.get_or_create(&labels(&[("run", &run.name), ("state", &state)])).set(1);
            for (s, g, m) in run.members() {
                let st = m.status.state.to_string();
                member_state
                    .get_or_create(&labels(&[
                        ("run", &run.name),
                        ("stage", &s.name),
                        ("group", &g.name),
                        ("member", &m.name),
                        ("state", &st),
                    ]))
                    .set(1);
            }
            for gate in run.gates() {
                if gate.state == refit_core::fleet::GateStatus::Pending {
                    let g = gate.gate.to_string();
                    gates_pending
                        .get_or_create(&labels(&[
                            ("run", &run.name),
                            ("gate", &g),
                            ("type", gate.spec.kind()),
                        ]))
                        .set(1);
                }
                if let (Some(reached), Some(a)) = (gate.reached_at, &gate.approval)
                    && a.at >= reached
                {
                    approval.observe(a.at.duration_since(reached).as_secs_f64());
                }
            }
        }
        r.register(
            "refit_fleet_run_state",
            "Fleet update runs by state (1 = the run is in this state)",
            run_state,
        );
        r.register("refit_fleet_member_state", "Members of fleet update runs by state", member_state);
        r.register("refit_gates_pending", "Gates waiting (approval or scheduled start)", gates_pending);
        r.register(
            "refit_gate_approval_latency_seconds",
            "Time from a gate being reached to its approval",
            approval,
        );

        let cluster_state = Family::<Labels, Gauge>::default();
        let blocked = Family::<Labels, Gauge>::default();
        for row in source.cluster_runs()? {
            cluster_state
                .get_or_create(&labels(&[("run", &row.id), ("cluster", &row.cluster), ("state", &row.state)]))
                .set(1);
            if row.state == "running" {
                let view = crate::view::cluster_run(&row, &source.run_journal(&row.id)?);
                for (n, b) in view.blocked() {
                    blocked
                        .get_or_create(&labels(&[
                            ("run", &row.id),
                            ("cluster", &row.cluster),
                            ("node", &n.node),
                            ("pod", &b.pod),
                            ("pdb", b.pdb.as_deref().unwrap_or("")),
                        ]))
                        .set(1);
                }
            }
        }
        r.register("refit_cluster_run_state", "Cluster runs (refit upgrade) by state", cluster_state);
        r.register(
            "refit_drain_blocked",
            "Nodes whose drain is held back now, with the pod and its PDB",
            blocked,
        );
        r.register(
            "refit_node_step_duration_seconds",
            "Duration of node steps by step",
            self.step_seconds.clone(),
        );

        let failures = Family::<Labels, Counter>::default();
        for (hook, n) in source.delivery_failures()? {
            failures.get_or_create(&labels(&[("hook", &hook)])).inc_by(n);
        }
        r.register("refit_webhook_delivery_failures", "Webhook delivery attempts that failed", failures);
        let clients = Gauge::<i64>::default();
        clients.set(i64::try_from(stream_clients).unwrap_or(i64::MAX));
        r.register("refit_event_stream_clients", "Connected event-stream clients", clients);

        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &r);
        Ok(out)
    }
}
