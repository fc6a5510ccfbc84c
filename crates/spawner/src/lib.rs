//! The one thread Refit forks its attached children from.
//!
//! A child that must die with refit asks the kernel for it with `PR_SET_PDEATHSIG` (the exec
//! action's guardian, `refit_exec::command`; an attached testbed's daemons,
//! `refit_testbed::process`). That signal fires when the *thread* that forked the child
//! exits, not the process: a child forked from a tokio worker that later retires, or from a
//! short-lived thread, would be killed long before refit. So every such fork happens here, on
//! one thread that lives as long as the process.
//!
//! The thread runs jobs; each caller brings its own reply channel (a blocking `mpsc` for the
//! testbed, a tokio `oneshot` for the exec action, which must not block a runtime worker), so
//! this crate needs nothing but `std`. Both callers used to start a thread of their own with
//! the same loop; one serves both now.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Work to run on the spawner thread: typically `Command::spawn` and sending the result back.
pub type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread could not be started, or is gone: nothing was forked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the thread that starts attached processes could not be started or is gone")
    }
}

impl std::error::Error for Unavailable {}

/// Runs `job` on the spawner thread (started on first use), in the order jobs were given.
/// Returns once the job is queued; the job reports its result through its own channel.
pub fn run(job: Job) -> Result<(), Unavailable> {
    let guard = sender().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.as_ref().ok_or(Unavailable)?.send(job).map_err(|_| Unavailable)
}

fn sender() -> &'static Mutex<Option<mpsc::Sender<Job>>> {
    static SENDER: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("refit-spawner".into()).spawn(move || {
            for job in rx {
                // A job that panics must not end the thread (its children would get their
                // death signal): the panic is contained and the job's reply channel dropped.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            // The sender lives in a static, so the loop only ends as the process exits; the
            // thread must not end before its children do.
            loop {
                std::thread::park();
            }
        });
        Mutex::new(started.ok().map(|_| tx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_on_one_long_lived_thread() {
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            run(Box::new(move || {
                let _ = tx.send((
                    i,
                    std::thread::current().id(),
                    std::thread::current().name().map(String::from),
                ));
            }))
            .unwrap();
        }
        let got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(got.iter().all(|g| g.1 == got[0].1), "one thread: {got:?}");
        assert_eq!(got[0].2.as_deref(), Some("refit-spawner"));
        assert_ne!(got[0].1, std::thread::current().id());
    }

    #[test]
    fn a_panicking_job_does_not_end_the_thread() {
        run(Box::new(|| panic!("a job that panics"))).unwrap();
        let (tx, rx) = mpsc::channel();
        run(Box::new(move || {
            let _ = tx.send(std::thread::current().name().map(String::from));
        }))
        .unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some("refit-spawner"));
    }
}
