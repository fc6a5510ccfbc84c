//! The soak rule: a gate passes once its check has held continuously for the soak time, and
//! fails when the timeout runs out first.
//!
//! Observations come from a probe every few seconds; time is the gate's own elapsed time (the
//! caller's monotonic clock minus the gate's start), so the rule needs no clock. A dip — one
//! failing observation — restarts the soak: a condition that flaps never passes, however often
//! it holds. On timeout the verdict carries the last reason, so the operator reads *why* the
//! gate failed, not only that it did.

use std::time::Duration;

/// What one probe of a gate saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", content = "detail")]
pub enum Observation {
    /// The condition holds; the text says what was seen (`3 < 5`).
    Holds(String),
    /// It does not (or could not be checked); the text says why.
    Fails(String),
}

/// Where a gate stands after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Held for the whole soak: the upgrade goes on.
    Passed {
        /// The last observation's text.
        detail: String,
    },
    /// Not yet decided: probe again after [`Soak::poll_interval`].
    Waiting {
        /// What the gate waits for, for progress and events.
        reason: String,
    },
    /// The timeout ran out first.
    Failed {
        /// The last reason (what failed, or how far the soak got).
        reason: String,
    },
}

/// One gate's evaluation in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soak {
    soak: Duration,
    timeout: Duration,
    /// Since when (gate time) the check has held without a dip.
    holding_since: Option<Duration>,
    /// The last failure's reason, kept through a later hold for the timeout message.
    last_failure: Option<String>,
}

impl Soak {
    /// A gate that must hold for `soak` within `timeout`.
    pub fn new(soak: Duration, timeout: Duration) -> Soak {
        Soak { soak, timeout, holding_since: None, last_failure: None }
    }

    /// For a [`super::HealthGate`].
    pub fn for_gate(gate: &super::HealthGate) -> Soak {
        Soak::new(gate.soak(), gate.timeout())
    }

    /// A gate's evaluation taken up again from what was kept of it (a fleet run keeps its
    /// stage gates in the store, so a restarted driver goes on where the last one was):
    /// held without a dip since `holding_since` (gate time), the last failure's reason.
    pub fn resume(
        gate: &super::HealthGate,
        holding_since: Option<Duration>,
        last_failure: Option<String>,
    ) -> Soak {
        Soak { holding_since, last_failure, ..Soak::for_gate(gate) }
    }

    /// Since when (gate time) the check has held without a dip.
    pub fn holding_since(&self) -> Option<Duration> {
        self.holding_since
    }

    /// The last failing observation's reason.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// How long to wait between probes: a fifth of the soak, between 1 s and 5 s (2 s with no
    /// soak), so a short soak is still seen to hold several times and a dip of a few seconds
    /// is not missed.
    pub fn poll_interval(&self) -> Duration {
        if self.soak.is_zero() {
            return Duration::from_secs(2);
        }
        self.soak.checked_div(5).unwrap_or_default().clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Records an observation made at `at` (gate time, non-decreasing) and decides.
    pub fn observe(&mut self, at: Duration, observation: Observation) -> Verdict {
        match observation {
            Observation::Holds(detail) => {
                let since = *self.holding_since.get_or_insert(at);
                let held = at.saturating_sub(since);
                if held >= self.soak {
                    return Verdict::Passed { detail };
                }
                if at >= self.timeout {
                    return Verdict::Failed {
                        reason: format!(
                            "timed out after {} while soaking: held {} of the {} soak ({detail})",
                            show(self.timeout),
                            show(held),
                            show(self.soak)
                        ),
                    };
                }
                Verdict::Waiting {
                    reason: format!("holding for {} of {}: {detail}", show(held), show(self.soak)),
                }
            }
            Observation::Fails(reason) => {
                self.holding_since = None;
                self.last_failure = Some(reason.clone());
                self.timed_out(at).unwrap_or(Verdict::Waiting { reason })
            }
        }
    }

    /// The verdict when no observation came by `at` (a probe that hangs is bounded by the
    /// gate's timeout too): `Failed` once the timeout has run out, else nothing new.
    pub fn timed_out(&self, at: Duration) -> Option<Verdict> {
        if at < self.timeout {
            return None;
        }
        let last = match (&self.last_failure, self.holding_since) {
            (_, Some(since)) => {
                format!("held {} of the {} soak", show(at.saturating_sub(since)), show(self.soak))
            }
            (Some(r), None) => r.clone(),
            (None, None) => "no answer from the check".to_string(),
        };
        Some(Verdict::Failed { reason: format!("timed out after {}: {last}", show(self.timeout)) })
    }
}

/// A duration as progress shows it (`1m30s`).
pub fn show(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn passes_after_a_continuous_soak_and_restarts_on_a_dip() {
        let mut g = Soak::new(secs(30), secs(120));
        assert!(
            matches!(g.observe(secs(0), Observation::Holds("ok".into())), Verdict::Waiting { ref reason } if reason == "holding for 0s of 30s: ok")
        );
        assert!(matches!(g.observe(secs(20), Observation::Holds("ok".into())), Verdict::Waiting { .. }));
        assert!(
            matches!(g.observe(secs(25), Observation::Fails("5xx at 3/s".into())), Verdict::Waiting { ref reason } if reason == "5xx at 3/s")
        );
        assert!(matches!(g.observe(secs(40), Observation::Holds("ok".into())), Verdict::Waiting { .. }));
        assert!(matches!(g.observe(secs(65), Observation::Holds("ok".into())), Verdict::Waiting { .. }));
        assert_eq!(
            g.observe(secs(70), Observation::Holds("ok".into())),
            Verdict::Passed { detail: "ok".into() }
        );
    }

    #[test]
    fn no_soak_passes_on_the_first_hold() {
        let mut g = Soak::new(Duration::ZERO, secs(60));
        assert!(matches!(g.observe(secs(3), Observation::Fails("down".into())), Verdict::Waiting { .. }));
        assert!(matches!(g.observe(secs(5), Observation::Holds("up".into())), Verdict::Passed { .. }));
        assert_eq!(g.poll_interval(), secs(2));
        assert_eq!(Soak::new(secs(2), secs(9)).poll_interval(), secs(1));
        assert_eq!(Soak::new(secs(3600), secs(9000)).poll_interval(), secs(5));
    }

    #[test]
    fn the_timeout_fails_with_the_last_reason() {
        let mut g = Soak::new(secs(60), secs(100));
        g.observe(secs(0), Observation::Fails("etcd: 2 of 3 healthy".into()));
        assert_eq!(g.timed_out(secs(99)), None);
        assert_eq!(
            g.timed_out(secs(100)),
            Some(Verdict::Failed { reason: "timed out after 1m40s: etcd: 2 of 3 healthy".into() })
        );
        g.observe(secs(80), Observation::Holds("ok".into()));
        assert_eq!(
            g.observe(secs(100), Observation::Holds("ok".into())),
            Verdict::Failed {
                reason: "timed out after 1m40s while soaking: held 20s of the 1m soak (ok)".into()
            }
        );
        assert_eq!(
            Soak::new(secs(0), secs(10)).timed_out(secs(10)),
            Some(Verdict::Failed { reason: "timed out after 10s: no answer from the check".into() })
        );
    }

    proptest! {
        /// Over any sequence of observations: the gate passes exactly when some run of holds
        /// with no dip in between spans the soak before the timeout was passed by a failure;
        /// it fails only at or after the timeout; and once decided the caller stops.
        #[test]
        fn the_verdict_follows_the_rule(
            soak in 0u64..50,
            extra in 1u64..100,
            steps in proptest::collection::vec((1u64..15, any::<bool>()), 1..40),
        ) {
            let timeout = soak + extra;
            let mut g = Soak::new(secs(soak), secs(timeout));
            let mut at = 0u64;
            let mut since: Option<u64> = None;
            for (dt, holds) in steps {
                at += dt;
                let obs = if holds { Observation::Holds("h".into()) } else { Observation::Fails("f".into()) };
                let v = g.observe(secs(at), obs);
                // The model.
                if holds { since.get_or_insert(at); } else { since = None; }
                let passes = since.is_some_and(|s| at - s >= soak);
                match v {
                    Verdict::Passed { .. } => { prop_assert!(passes); break; }
                    Verdict::Failed { .. } => { prop_assert!(!passes && at >= timeout); break; }
                    Verdict::Waiting { .. } => prop_assert!(!passes && at < timeout),
                }
            }
        }

        /// A dip inside every soak-long window means the gate never passes.
        #[test]
        fn a_flapping_condition_never_passes(soak in 2u64..60, period in 1u64..60) {
            prop_assume!(period < soak);
            let mut g = Soak::new(secs(soak), secs(soak * 100));
            for i in 0..(soak * 20) {
                let obs = if i % period == 0 { Observation::Fails("dip".into()) } else { Observation::Holds("ok".into()) };
                let passed = matches!(g.observe(secs(i), obs), Verdict::Passed { .. });
                prop_assert!(!passed);
            }
        }
    }
}
