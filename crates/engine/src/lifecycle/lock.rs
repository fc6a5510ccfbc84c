//! The cluster lock: a `coordination.k8s.io/v1` Lease `kube-system/refit-upgrade`, held for
//! the whole command (from before anything is changed until the end), renewed by a task of
//! its own and deleted at the end. It lives in the cluster, so a second `refit upgrade` from
//! any machine and any store is refused with the holder's identity and run; a file lock next
//! to one store could only stop a second run using that same store.
//!
//! The holder's machine, pid and process start time are recorded on the Lease, so a rerun on
//! the same machine after a kill -9 takes the lock over at once (the process is gone); from
//! another machine a dead holder's lock is taken over once it has not been renewed for its
//! duration (plus a margin for clock skew), or at once with `--break-lock`. Who may take it
//! is core's rule (`refit_core::lock::decide`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use refit_core::lock::{Held, Holder, Liveness, LockDecision, Takeover, decide};
use refit_kube::Connection;
use refit_kube::lease::{LeaseClaim, LeaseRecord, Write};
use tokio::sync::{Mutex, watch};

/// Where the lock lives.
pub const NAMESPACE: &str = "kube-system";
/// Its name.
pub const NAME: &str = "refit-upgrade";
/// How long one renewal holds it.
pub const DURATION: Duration = Duration::from_secs(30);
/// How often it is renewed (a third of its duration: two renewals may fail in a row).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

const MACHINE: &str = "refit.dev/machine";
const PID: &str = "refit.dev/pid";
const STARTED: &str = "refit.dev/pid-start";
const RUN: &str = "refit.dev/run";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error(
        "another refit upgrade is running against this cluster: {holder}{run} holds the lock (lease kube-system/refit-upgrade){renewed}; wait for it to end, or take the lock with --break-lock if that process is gone"
    )]
    Held {
        /// Who.
        holder: String,
        /// `, run up-…`, when known.
        run: String,
        /// `, renewed 3s ago`, when known.
        renewed: String,
    },
    /// The Lease could not be read or written.
    #[error("the cluster lock (lease kube-system/refit-upgrade): {0}")]
    Cluster(#[from] refit_kube::Error),
    /// It kept changing while we tried to take it.
    #[error(
        "the cluster lock (lease kube-system/refit-upgrade) kept changing while refit tried to take it; try again"
    )]
    Contended,
}

/// This process as a lock holder.
pub fn this_process() -> Holder {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let machine = std::fs::read_to_string("/etc/machine-id")
        .map(|m| m.trim().to_string())
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| host.clone());
    let pid = std::process::id();
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "unknown".into());
    Holder {
        identity: format!("{user}@{host} (pid {pid})"),
        machine,
        pid,
        started: process_start(pid).unwrap_or(0),
        run: None,
    }
}

/// When process `pid` started (field 22 of `/proc/PID/stat`, clock ticks since boot); None when
/// there is no such process or it has exited and only its zombie is left (state Z or X: a
/// member upgrade killed with its fleet driver stays a zombie until someone reaps it, and must
/// not keep the cluster locked meanwhile).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let mut fields = stat.get(stat.rfind(')')?.checked_add(1)?..)?.split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// What this machine knows about `holder`'s process.
fn liveness(holder: &Holder, me: &Holder) -> Liveness {
    if holder.machine != me.machine {
        return Liveness::Unknown;
    }
    match process_start(holder.pid) {
        Some(started) if started == holder.started => Liveness::Alive,
        _ => Liveness::Gone,
    }
}

fn claim(me: &Holder, duration: Duration) -> LeaseClaim {
    let mut annotations = BTreeMap::from([
        (MACHINE.to_string(), me.machine.clone()),
        (PID.to_string(), me.pid.to_string()),
        (STARTED.to_string(), me.started.to_string()),
    ]);
    if let Some(run) = &me.run {
        annotations.insert(RUN.to_string(), run.clone());
    }
    LeaseClaim { holder: me.identity.clone(), duration, annotations }
}

fn held(r: &LeaseRecord) -> Held {
    let a = &r.annotations;
    let holder = match (a.get(MACHINE), a.get(PID).and_then(|p| p.parse().ok())) {
        (Some(machine), Some(pid)) if !r.holder.is_empty() => Some(Holder {
            identity: r.holder.clone(),
            machine: machine.clone(),
            pid,
            started: a.get(STARTED).and_then(|s| s.parse().ok()).unwrap_or(0),
            run: a.get(RUN).cloned(),
        }),
        _ => None,
    };
    Held { holder, identity: r.holder.clone(), renewed: r.renewed, duration: r.duration }
}

/// Which Lease, and its timings: the cluster lock ([`Place::cluster`]) or another lock on the
/// same rules (the hub controller's leader Lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// How long one renewal holds it.
    pub duration: Duration,
    /// How often it is renewed.
    pub renew_every: Duration,
}

impl Place {
    /// The cluster lock `kube-system/refit-upgrade`.
    pub fn cluster() -> Place {
        Place { namespace: NAMESPACE.into(), name: NAME.into(), duration: DURATION, renew_every: RENEW_EVERY }
    }
}

struct State {
    me: Holder,
    record: LeaseRecord,
    place: Place,
}

/// The cluster lock, held (see the module documentation). Release it with [`Lock::release`].
pub struct Lock {
    conn: Connection,
    state: Arc<Mutex<State>>,
    renewer: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<bool>,
    /// The run the previous holder executed, when its lock was taken over.
    taken_from: Option<String>,
}

impl Lock {
    /// Takes the lock for `me`, or says who holds it. The second value tells when a stale
    /// holder's lock was taken over (and whose it was), for the operator to read.
    pub async fn acquire(
        conn: &Connection,
        me: Holder,
        break_lock: bool,
    ) -> Result<(Lock, Option<(Takeover, String)>), LockError> {
        Lock::acquire_at(conn, Place::cluster(), me, break_lock).await
    }

    /// [`Lock::acquire`] on the Lease at `place`.
    pub async fn acquire_at(
        conn: &Connection,
        place: Place,
        me: Holder,
        break_lock: bool,
    ) -> Result<(Lock, Option<(Takeover, String)>), LockError> {
        let (ns, name) = (place.namespace.as_str(), place.name.as_str());
        for _ in 0..5 {
            let current = refit_kube::lease::read(conn, ns, name).await?;
            let seen = current.as_ref().map(held);
            let life =
                seen.as_ref().and_then(|h| h.holder.as_ref()).map_or(Liveness::Unknown, |h| liveness(h, &me));
            let decision = decide(seen.as_ref(), &me, life, SystemTime::now(), break_lock);
            let previous_run = seen.as_ref().and_then(|h| h.holder.as_ref()).and_then(|h| h.run.clone());
            let written = match (&decision, &current) {
                (LockDecision::Refuse, _) => {
                    let seen = seen.unwrap_or(Held {
                        holder: None,
                        identity: String::new(),
                        renewed: None,
                        duration: place.duration,
                    });
                    return Err(LockError::Held {
                        holder: seen.identity.clone(),
                        run: seen
                            .holder
                            .and_then(|h| h.run)
                            .map(|r| format!(", run {r},"))
                            .unwrap_or_default(),
                        renewed: seen
                            .renewed
                            .and_then(|t| SystemTime::now().duration_since(t).ok())
                            .map(|d| format!(", renewed {}s ago", d.as_secs()))
                            .unwrap_or_default(),
                    });
                }
                (_, None) => refit_kube::lease::create(conn, ns, name, &claim(&me, place.duration)).await?,
                (LockDecision::Ours, Some(prev)) => {
                    refit_kube::lease::replace(conn, ns, name, prev, &claim(&me, place.duration), false)
                        .await?
                }
                (_, Some(prev)) => {
                    refit_kube::lease::replace(conn, ns, name, prev, &claim(&me, place.duration), true)
                        .await?
                }
            };
            let Write::Written(record) = written else { continue };
            let takeover = match decision {
                LockDecision::TakeOver(why) => Some((why, current.map(|c| c.holder).unwrap_or_default())),
                _ => None,
            };
            let taken_from = takeover.as_ref().and(previous_run);
            let state = Arc::new(Mutex::new(State { me, record, place: place.clone() }));
            let (lost_tx, lost) = watch::channel(false);
            let renewer = tokio::spawn(renew(conn.clone(), state.clone(), lost_tx));
            return Ok((Lock { conn: conn.clone(), state, renewer, lost, taken_from }, takeover));
        }
        Err(LockError::Contended)
    }

    /// Records the run this process executes on the lock (a second operator is told which).
    pub async fn set_run(&self, run: &str) -> Result<(), LockError> {
        let mut st = self.state.lock().await;
        st.me.run = Some(run.to_string());
        let c = claim(&st.me, st.place.duration);
        let (ns, name) = (st.place.namespace.clone(), st.place.name.clone());
        match refit_kube::lease::replace(&self.conn, &ns, &name, &st.record, &c, false).await? {
            Write::Written(r) => {
                st.record = r;
                Ok(())
            }
            // The renewal task finds out whether it is still ours and says so.
            Write::Lost => Ok(()),
        }
    }

    /// The run of the holder whose lock this one took over (its process gone, or its lease
    /// not renewed in time, or broken): that run executes nothing any more.
    pub fn taken_from_run(&self) -> Option<&str> {
        self.taken_from.as_deref()
    }

    /// Turns true if someone else took the lock during the run (`--break-lock` elsewhere):
    /// this process must start nothing new.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops renewing and deletes the Lease, unless someone else holds it by now.
    pub async fn release(self) {
        self.renewer.abort();
        let st = self.state.lock().await;
        if *self.lost.borrow() {
            return;
        }
        let (ns, name) = (st.place.namespace.as_str(), st.place.name.as_str());
        match refit_kube::lease::delete(&self.conn, ns, name, &st.record).await {
            Ok(true) => {}
            Ok(false) => {
                // Written since our last renewal: delete it only if it is still ours.
                if let Ok(Some(now)) = refit_kube::lease::read(&self.conn, ns, name).await
                    && held(&now).holder.is_some_and(|h| h.same_process(&st.me))
                {
                    let _ = refit_kube::lease::delete(&self.conn, ns, name, &now).await;
                }
            }
            // It expires by itself; a rerun on this machine takes it over at once anyway.
            Err(e) => tracing::warn!("releasing the cluster lock: {e}"),
        }
    }
}

/// A lock dropped without [`Lock::release`] (its upgrade cancelled: the hub controller's
/// member upgrades when the replica stops leading) stops being renewed, and expires.
impl Drop for Lock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Renews the lock every [`RENEW_EVERY`] until aborted; says so on `lost` if someone else
/// took it. A failed renewal (the apiserver restarting) is retried at the next tick.
async fn renew(conn: Connection, state: Arc<Mutex<State>>, lost: watch::Sender<bool>) {
    let every = state.lock().await.place.renew_every;
    loop {
        tokio::time::sleep(every).await;
        let mut st = state.lock().await;
        let c = claim(&st.me, st.place.duration);
        let (ns, name) = (st.place.namespace.clone(), st.place.name.clone());
        match refit_kube::lease::replace(&conn, &ns, &name, &st.record, &c, false).await {
            Ok(Write::Written(r)) => st.record = r,
            Ok(Write::Lost) => match refit_kube::lease::read(&conn, &ns, &name).await {
                Ok(Some(now)) if held(&now).holder.is_some_and(|h| h.same_process(&st.me)) => st.record = now,
                Ok(_) => {
                    tracing::warn!("the cluster lock was taken by someone else");
                    let _ = lost.send(true);
                    return;
                }
                Err(e) => tracing::warn!("renewing the cluster lock: {e}"),
            },
            Err(e) => tracing::warn!("renewing the cluster lock: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_gone() {
        let me = this_process();
        assert!(me.started > 0, "the start time of this process is readable");
        assert_eq!(liveness(&me, &me), Liveness::Alive);
        let reused = Holder { started: me.started.wrapping_add(1), ..me.clone() };
        assert_eq!(liveness(&reused, &me), Liveness::Gone, "same pid, other start: another process");
        let elsewhere = Holder { machine: "other".into(), ..me.clone() };
        assert_eq!(liveness(&elsewhere, &me), Liveness::Unknown);
    }

    #[test]
    fn an_exited_process_not_yet_reaped_is_gone() {
        let me = this_process();
        let mut child =
            std::process::Command::new("cat").stdin(std::process::Stdio::piped()).spawn().expect("cat runs");
        let started = process_start(child.id()).expect("a running child has a start time");
        let holder = Holder { pid: child.id(), started, ..me.clone() };
        assert_eq!(liveness(&holder, &me), Liveness::Alive);
        drop(child.stdin.take()); // cat exits; nobody reaps it yet: a zombie
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
            stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while state() != 'Z' {
            assert!(std::time::Instant::now() < deadline, "cat did not exit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(liveness(&holder, &me), Liveness::Gone, "a zombie holds no lock");
        child.wait().unwrap();
        assert_eq!(liveness(&holder, &me), Liveness::Gone);
    }

    #[test]
    fn the_holder_reads_back_from_the_lease() {
        let me = Holder { run: Some("up-1".into()), ..this_process() };
        let c = claim(&me, DURATION);
        let r = LeaseRecord {
            holder: c.holder.clone(),
            annotations: c.annotations.clone(),
            duration: c.duration,
            ..LeaseRecord::default()
        };
        assert_eq!(held(&r).holder, Some(me));
    }
}
