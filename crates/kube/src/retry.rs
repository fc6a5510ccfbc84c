//! Repeating an API call that is safe to repeat while the cluster passes through a bad moment
//! (an etcd restart, an apiserver shutting down behind the load balancer): which failures count
//! is core's rule (`refit_core::transient`), the delays are backon's.
//!
//! The client itself retries nothing (see `connect`): a PDB's 429 on an eviction must reach the
//! drain. So the calls that may be repeated opt in here, one by one: reads, and writes guarded
//! by a resourceVersion or preconditions (a repeat after a lost answer is a 409, which the
//! caller already re-decides).

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use refit_core::transient::{API_RETRIES, transient_status};

/// No retry starts after this long in all. A request sent while etcd is down can hang at the
/// apiserver until the client's 30 s read timeout even after etcd is back (seen in
/// `tests/transient.rs`), so a budget of delays alone is not enough: up to two such hangs plus
/// the delays fit; a cluster down for longer fails the call after about two and a half minutes.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// Whether `e` is a passing condition of the cluster: a transient status (core's rule) or the
/// connection failing under the request (refused, reset, timed out).
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => transient_status(s.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// [`is_transient`] for a watch's failure (its list, its start, its stream, or an error event).
pub fn is_transient_watch(e: &kube::runtime::watcher::Error) -> bool {
    use kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => is_transient(e),
        W::WatchError(s) => transient_status(s.code),
        W::NoResourceVersion => false,
    }
}

/// Runs `call` and again on transient failures, within core's [`API_RETRIES`] budget; the last
/// error when it runs out. `what` names the call in the log line each retry writes.
pub async fn retrying<T, F, Fut>(what: &str, call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    retrying_when(what, is_transient, call).await
}

/// [`retrying`] for calls that already return this crate's error (a paged list): repeated when
/// the API error under it is transient.
pub async fn retrying_listed<T, F, Fut>(what: &str, call: F) -> Result<T, crate::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::Error>>,
{
    retrying_when(
        what,
        |e: &crate::Error| matches!(e, crate::Error::Api { source, .. } if is_transient(source)),
        call,
    )
    .await
}

async fn retrying_when<T, E, F, Fut>(what: &str, transient: fn(&E) -> bool, call: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(API_RETRIES.first_delay)
        .with_max_delay(API_RETRIES.max_delay)
        .with_max_times(API_RETRIES.retries)
        .with_jitter();
    call.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| transient(e) && start.elapsed() < GIVE_UP_AFTER)
        .notify(|e, delay| tracing::warn!("{what}: {e}; trying again in {:.1}s", delay.as_secs_f64()))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("x", "y").with_code(code)))
    }

    #[test]
    fn server_conditions_and_broken_connections_are_transient() {
        assert!(is_transient(&status(503)));
        assert!(is_transient(&status(500)));
        assert!(!is_transient(&status(404)));
        assert!(!is_transient(&status(409)));
        assert!(is_transient(&kube::Error::Service("connection refused".into())));
        assert!(!is_transient(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }

    // A fake: an apiserver cannot be made to answer 503 then 200 on cue for one request.
    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_repeated_and_a_final_answer_is_not() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r: Result<u32, _> = retrying("reading x", || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err(status(503)),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);

        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r: Result<u32, _> = retrying("reading x", || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(status(404))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "a 404 is an answer");

        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r: Result<u32, _> = retrying("reading x", || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(status(503))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            API_RETRIES.retries + 1,
            "the budget ends it"
        );
    }
}
