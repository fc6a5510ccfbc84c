//! Which failures of an API call are worth the same call again a moment later.
//!
//! A cluster under maintenance answers some requests badly for a few seconds: etcd restarting
//! (the apiserver answers 500 "etcdserver: request timed out" or 503), one apiserver of several
//! shutting down behind the load balancer (503 "apiserver is shutting down", a reset
//! connection), priority-and-fairness shedding load (429). A run that fails a node because one
//! read met that window fails for nothing: the chaos test saw exactly this. Other answers (404,
//! 403, 409, 422, ...) say something about the request and never change by repeating it.
//!
//! Only calls that are safe to repeat are retried (reads, and writes guarded by a
//! resourceVersion, whose repeat after a lost answer comes back 409 and is re-decided by the
//! caller). Evictions are never retried here: a 429 on an eviction is a PDB's refusal, which
//! the drain handles itself.

use std::time::Duration;

/// Whether an HTTP status from an apiserver is a passing condition of the server rather than
/// an answer about the request.
pub fn transient_status(code: u16) -> bool {
    matches!(code, 429 | 500 | 502 | 503 | 504)
}

/// How long repeated calls may take in all, and their delays: longer than an etcd restart
/// (a few seconds to ~20 s on a busy machine), far shorter than any step timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// The first delay; each next one doubles.
    pub first_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
    /// Attempts after the first.
    pub retries: usize,
}

/// The budget for API calls during a run: 0.5 s, 1 s, 2 s, 4 s, then 5 s apart, 8 retries —
/// about 27 s of waiting in all.
pub const API_RETRIES: RetryBudget =
    RetryBudget { first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(5), retries: 8 };

impl RetryBudget {
    /// The total time spent waiting between attempts when every attempt fails.
    pub fn total_wait(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut delay = self.first_delay;
        for _ in 0..self.retries {
            total = total.saturating_add(delay.min(self.max_delay));
            delay = delay.saturating_mul(2);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_conditions_are_transient_answers_about_the_request_are_not() {
        for code in [429, 500, 502, 503, 504] {
            assert!(transient_status(code), "{code}");
        }
        for code in [200, 400, 401, 403, 404, 405, 409, 410, 422, 501] {
            assert!(!transient_status(code), "{code}");
        }
    }

    #[test]
    fn the_api_budget_outlasts_an_etcd_restart_and_stays_under_a_minute() {
        let total = API_RETRIES.total_wait();
        assert!(total >= Duration::from_secs(20), "{total:?}");
        assert!(total < Duration::from_secs(60), "{total:?}");
    }
}
