//! Who drives a run: the driver's identity, whether a holder is alive, and the renewal timer.
//!
//! A run's lease lives in the store (`refit_store::fleet`): holder, heartbeat, generation.
//! Three rules make two drivers on one run impossible:
//! - **Renewed by a timer, not by the loop.** [`Renewer`] is a thread of its own with its own
//!   store connection, renewing every [`RENEW_EVERY`]: observing slow members, a long store
//!   wait or a busy loop never lets a live driver's heartbeat go stale.
//! - **Never taken over from a live process.** On the holder's host the process is checked
//!   ([`liveness`]: its pid exists, is not a zombie, and started before the holder took its
//!   name — a reused pid is not the holder); a live one keeps the lease however old its
//!   heartbeat, a dead one loses it at once (a kill -9 is taken over without waiting). From
//!   another host only the heartbeat can tell: stale after [`LEASE_TTL_MS`].
//! - **Fenced writes.** Every store write of a driver names its fence (holder + generation);
//!   a driver deposed while it hung finds its writes refused and stops driving the run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use refit_store::Store;
use refit_store::fleet::{Fence, Lease, Liveness};

/// A lease whose holder (on another host) has not renewed it for this long is taken over.
pub const LEASE_TTL_MS: i64 = 15_000;
/// How often the timer renews every lease the driver holds (well inside [`LEASE_TTL_MS`]).
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// A driver process's name in leases and history: `host:pid:started-ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `host:pid:started-ms`, unique per driver.
    pub holder: String,
    /// This host's name.
    pub host: String,
    /// This process.
    pub pid: i64,
}

impl Identity {
    /// This process, now.
    pub fn this_process() -> Identity {
        let host = hostname();
        let pid = i64::from(std::process::id());
        Identity { holder: format!("{host}:{pid}:{}", jiff::Timestamp::now().as_millisecond()), host, pid }
    }
}

/// `host`, `pid` and `started-ms` of a holder name (None when it is not one of ours).
pub fn parse_holder(holder: &str) -> Option<(&str, i64, i64)> {
    let mut parts = holder.rsplitn(3, ':');
    let ms = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    Some((host, pid, ms))
}

/// What this host can tell about a lease holder: on this host, whether its process is alive;
/// elsewhere, nothing.
pub fn liveness(my_host: &str, lease: &Lease) -> Liveness {
    match parse_holder(&lease.holder) {
        Some((host, pid, named_ms)) if host == my_host => {
            if process_alive(pid, named_ms) {
                Liveness::Alive
            } else {
                Liveness::Gone
            }
        }
        _ => Liveness::Unknown,
    }
}

/// Whether process `pid` runs, is not a zombie (a killed driver its parent has not reaped), and
/// started no later than `named_ms` (when the holder took its name) — else the pid was reused.
pub fn process_alive(pid: i64, named_ms: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) S ppid ...`: fields after the parenthesised name; starttime is field 22.
    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return false;
    }
    match (fields.get(19).and_then(|t| t.parse::<i64>().ok()), boot_time_ms(), clock_ticks()) {
        // Boot time is whole seconds: two seconds of slack.
        (Some(ticks), Some(boot), Some(hz)) if hz > 0 => {
            let started = boot.saturating_add(ticks.saturating_mul(1000) / hz);
            started <= named_ms.saturating_add(2_000)
        }
        _ => true,
    }
}

fn boot_time_ms() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    secs.checked_mul(1000)
}

#[allow(unsafe_code)]
fn clock_ticks() -> Option<i64> {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The leases a driver holds, renewed by a timer thread with its own store connection; which
/// of them another driver took over (found when a renewal is refused).
pub struct Renewer {
    held: Arc<Mutex<HashMap<String, Fence>>>,
    /// Runs taken over, with their new holder (None: released).
    deposed: Arc<Mutex<HashMap<String, Option<String>>>>,
    // Dropping it stops the thread.
    _stop: mpsc::Sender<()>,
}

impl Renewer {
    /// Starts the timer on the store at `path`.
    pub fn start(path: &Path, every: Duration) -> Result<Renewer, refit_store::Error> {
        let mut store = Store::open(path)?;
        let held: Arc<Mutex<HashMap<String, Fence>>> = Arc::default();
        let deposed: Arc<Mutex<HashMap<String, Option<String>>>> = Arc::default();
        let (stop, stopped) = mpsc::channel::<()>();
        let (h, d) = (held.clone(), deposed.clone());
        std::thread::Builder::new()
            .name("refit-fleet-lease".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let fences: Vec<Fence> = lock(&h).values().cloned().collect();
                    for f in fences {
                        match store.renew_lease(&f) {
                            Ok(()) => {}
                            Err(refit_store::Error::Deposed { holder, .. }) => {
                                lock(&h).remove(&f.run);
                                lock(&d).insert(f.run.clone(), holder);
                            }
                            Err(e) => tracing::warn!(run = %f.run, "cannot renew the driver lease: {e}"),
                        }
                    }
                }
            })
            .map_err(|e| refit_store::Error::Json(format!("cannot start the lease timer: {e}")))?;
        Ok(Renewer { held, deposed, _stop: stop })
    }

    /// Renews `fence`'s lease from now on.
    pub fn hold(&self, fence: Fence) {
        lock(&self.deposed).remove(&fence.run);
        lock(&self.held).insert(fence.run.clone(), fence);
    }

    /// The fence held for `run`, if any.
    pub fn fence(&self, run: &str) -> Option<Fence> {
        lock(&self.held).get(run).cloned()
    }

    /// Stops renewing `run`'s lease; the fence it had.
    pub fn drop_run(&self, run: &str) -> Option<Fence> {
        lock(&self.held).remove(run)
    }

    /// Whether a renewal found `run` taken over, and by whom (None: released).
    pub fn deposed(&self, run: &str) -> Option<Option<String>> {
        lock(&self.deposed).remove(run)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_pid_reused_after_the_name_was_taken_is_not_the_holder() {
        let me = Identity::this_process();
        let (host, pid, ms) = parse_holder(&me.holder).unwrap();
        assert_eq!((host, pid), (me.host.as_str(), me.pid));
        assert!(process_alive(pid, ms));
        // A holder named long before this process started cannot be this process.
        assert!(!process_alive(pid, ms - 3_600_000));
        assert!(!process_alive(i64::from(i32::MAX), ms), "no such pid");
        let lease = |holder: &str| Lease {
            generation: 1,
            run: "r".into(),
            holder: holder.into(),
            pid,
            heartbeat_ms: 0,
            acquired_ms: 0,
        };
        assert_eq!(liveness(&me.host, &lease(&me.holder)), Liveness::Alive);
        assert_eq!(liveness(&me.host, &lease(&format!("{}:{}:1", me.host, i32::MAX))), Liveness::Gone);
        assert_eq!(liveness(&me.host, &lease("elsewhere:1:1")), Liveness::Unknown);
        assert_eq!(parse_holder("h:o:s:t:12:34"), Some(("h:o:s:t", 12, 34)));
    }

    #[test]
    fn a_zombie_is_not_alive() {
        // A child that exited but is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i64::from(child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if stat.rsplit_once(')').unwrap().1.trim_start().starts_with('Z') {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the child never exited: {stat}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(pid, jiff::Timestamp::now().as_millisecond()));
        child.wait().unwrap();
    }
}
