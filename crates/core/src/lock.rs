//! Who may upgrade a cluster, and a node, right now: the rules behind refit's cluster lock (a
//! `coordination.k8s.io/v1` Lease in the cluster, so that two operators on two machines with
//! two stores cannot both run) and behind a node that another refit run cordoned. Pure: the
//! engine reads the Lease, the local process table and the journal, and asks here.

use std::time::{Duration, SystemTime};

use crate::run::RunState;

/// One process holding (or asking for) the cluster lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// What people read: `alice@build-7 (pid 4242)`.
    pub identity: String,
    /// The machine (`/etc/machine-id`, else the host name): a process on this machine can be
    /// checked for life, one elsewhere cannot.
    pub machine: String,
    /// Its process id.
    pub pid: u32,
    /// When that process started (kernel ticks since boot): a reused pid is another process.
    pub started: u64,
    /// The run it executes, once there is one.
    pub run: Option<String>,
}

impl Holder {
    /// Whether `other` is this very process.
    pub fn same_process(&self, other: &Holder) -> bool {
        self.machine == other.machine && self.pid == other.pid && self.started == other.started
    }
}

/// The lock as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Who holds it (None: released, or written by something that is not refit).
    pub holder: Option<Holder>,
    /// The raw `holderIdentity` (for a holder refit cannot parse; empty when released).
    pub identity: String,
    /// When the holder last renewed it.
    pub renewed: Option<SystemTime>,
    /// How long a renewal holds it.
    pub duration: Duration,
}

/// What this machine knows about a holder's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs on this machine and is alive.
    Alive,
    /// It ran on this machine and is gone (killed, crashed): its lock is stale.
    Gone,
    /// It runs elsewhere: only the Lease's renewals tell.
    Unknown,
}

/// Why a lock held by someone else is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Its process on this machine is gone (a kill -9, a crash): a rerun continues at once.
    ProcessGone,
    /// It was not renewed within its duration (plus a margin for clock skew).
    Expired,
    /// The operator said so (`--break-lock`).
    Broken,
}

/// The decision about the cluster lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockDecision {
    /// Free: take it.
    Take,
    /// It is ours already (this process wrote it).
    Ours,
    /// Held by someone else whose claim no longer stands: take it over, and say so.
    TakeOver(Takeover),
    /// Held by someone else: refuse.
    Refuse,
}

/// Margin on top of a lease's duration before it counts as expired: clocks of two machines
/// disagree a little, and a holder renewing on time must never be taken over.
pub const SKEW_MARGIN: Duration = Duration::from_secs(15);

/// Decides whether `me` may take the lock `held` at `now`. `liveness` is what this machine
/// knows about the holder's process (`Unknown` unless it is on this machine).
pub fn decide(
    held: Option<&Held>,
    me: &Holder,
    liveness: Liveness,
    now: SystemTime,
    break_lock: bool,
) -> LockDecision {
    let Some(held) = held else { return LockDecision::Take };
    if held.identity.is_empty() && held.holder.is_none() {
        return LockDecision::Take;
    }
    if held.holder.as_ref().is_some_and(|h| h.same_process(me)) {
        return LockDecision::Ours;
    }
    if break_lock {
        return LockDecision::TakeOver(Takeover::Broken);
    }
    if liveness == Liveness::Gone {
        return LockDecision::TakeOver(Takeover::ProcessGone);
    }
    if liveness == Liveness::Alive {
        return LockDecision::Refuse;
    }
    // A renewal in the future (another machine's clock runs ahead) counts as now.
    let expired = held
        .renewed
        .and_then(|r| r.checked_add(held.duration))
        .and_then(|until| until.checked_add(SKEW_MARGIN))
        .is_none_or(|until| now > until);
    if expired { LockDecision::TakeOver(Takeover::Expired) } else { LockDecision::Refuse }
}

/// What a run does with a node cordoned by another refit run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignCordon {
    /// That run is over (completed or abandoned): its cordon is someone's decision now, as
    /// a person's would be — upgrade the node and leave it cordoned as found.
    LeaveAsFound,
    /// That run has not finished (or is not in this store, so nothing says it has): draining
    /// the node again would fight it. Stop.
    Stop,
}

/// Decides about a node cordoned by refit run `by` (not this run), given that run's state in
/// this store (`None`: not in this store).
pub fn foreign_cordon(state: Option<RunState>) -> ForeignCordon {
    match state {
        Some(RunState::Completed | RunState::Abandoned) => ForeignCordon::LeaveAsFound,
        _ => ForeignCordon::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn holder(machine: &str, pid: u32) -> Holder {
        Holder {
            identity: format!("op@{machine} (pid {pid})"),
            machine: machine.into(),
            pid,
            started: 100,
            run: Some("up-1".into()),
        }
    }

    fn held(h: Option<Holder>, renewed_secs_ago: u64, now: SystemTime) -> Held {
        Held {
            identity: h.as_ref().map(|h| h.identity.clone()).unwrap_or_default(),
            holder: h,
            renewed: now.checked_sub(Duration::from_secs(renewed_secs_ago)),
            duration: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_free_or_own_lock_is_taken() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let me = holder("m1", 10);
        assert_eq!(decide(None, &me, Liveness::Unknown, now, false), LockDecision::Take);
        assert_eq!(decide(Some(&held(None, 0, now)), &me, Liveness::Unknown, now, false), LockDecision::Take);
        assert_eq!(
            decide(Some(&held(Some(me.clone()), 0, now)), &me, Liveness::Alive, now, false),
            LockDecision::Ours
        );
    }

    #[test]
    fn a_live_holder_is_refused_and_a_dead_or_silent_one_taken_over() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let me = holder("m1", 10);
        let other_here = held(Some(holder("m1", 11)), 5, now);
        assert_eq!(decide(Some(&other_here), &me, Liveness::Alive, now, false), LockDecision::Refuse);
        assert_eq!(
            decide(Some(&other_here), &me, Liveness::Gone, now, false),
            LockDecision::TakeOver(Takeover::ProcessGone)
        );
        // The same pid, started at another time: another process (pid reuse).
        let reused = Holder { started: 99, ..holder("m1", 10) };
        assert_ne!(
            decide(Some(&held(Some(reused), 5, now)), &me, Liveness::Gone, now, false),
            LockDecision::Ours
        );
        let elsewhere = held(Some(holder("m2", 11)), 5, now);
        assert_eq!(decide(Some(&elsewhere), &me, Liveness::Unknown, now, false), LockDecision::Refuse);
        assert_eq!(
            decide(Some(&elsewhere), &me, Liveness::Unknown, now, true),
            LockDecision::TakeOver(Takeover::Broken)
        );
        let silent = held(Some(holder("m2", 11)), 30 + 16, now);
        assert_eq!(
            decide(Some(&silent), &me, Liveness::Unknown, now, false),
            LockDecision::TakeOver(Takeover::Expired)
        );
        // Something that is not refit holds it: only time (or --break-lock) frees it.
        let foreign = Held { holder: None, identity: "kubectl".into(), ..held(None, 5, now) };
        assert_eq!(decide(Some(&foreign), &me, Liveness::Unknown, now, false), LockDecision::Refuse);
    }

    proptest! {
        /// A holder elsewhere that renewed within its duration is never taken over without
        /// --break-lock, whatever the clocks say within the margin.
        #[test]
        fn a_renewing_holder_elsewhere_is_never_taken_over(ago in 0u64..=45, ahead in 0u64..1000) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            let me = holder("m1", 10);
            let mut h = held(Some(holder("m2", 11)), ago, now);
            let d = decide(Some(&h), &me, Liveness::Unknown, now, false);
            prop_assert_eq!(d, LockDecision::Refuse);
            h.renewed = now.checked_add(Duration::from_secs(ahead));
            prop_assert_eq!(decide(Some(&h), &me, Liveness::Unknown, now, false), LockDecision::Refuse);
        }
    }

    #[test]
    fn a_cordon_of_an_unfinished_or_unknown_run_stops() {
        assert_eq!(foreign_cordon(Some(RunState::Completed)), ForeignCordon::LeaveAsFound);
        assert_eq!(foreign_cordon(Some(RunState::Abandoned)), ForeignCordon::LeaveAsFound);
        for s in [RunState::Running, RunState::Failed, RunState::Interrupted, RunState::Paused] {
            assert_eq!(foreign_cordon(Some(s)), ForeignCordon::Stop);
        }
        assert_eq!(foreign_cordon(None), ForeignCordon::Stop);
    }
}
