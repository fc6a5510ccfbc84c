//! Leader election among controller replicas, on a `coordination.k8s.io/v1` Lease.
//!
//! kube-rs 5 has no leader election of its own (kube-runtime offers controllers, watchers and
//! reflectors, not leases), and the project already has the exact primitive: the engine's
//! cluster lock ([`refit_engine::lifecycle::lock`]) — a Lease written only with the
//! resourceVersion read (of two racing writers one wins, the other gets 409 and reads again),
//! renewed by a task of its own, with core's rule deciding who may take it
//! (`refit_core::lock::decide`: a holder's lease is taken over once it has not been renewed for
//! its duration plus a margin for clock skew, or at once when its process on this machine is
//! gone). A replica is a candidate that keeps trying to take that lock at [`Config::place`];
//! holding it is leading, and when the renewal task finds it taken the replica stops leading
//! at once (its `lost` signal). Writes of the leader to the fleet's objects are fenced
//! separately by their own resourceVersions.

use std::time::Duration;

use refit_core::lock::Holder;
use refit_engine::lifecycle::lock::{Lock, LockError, Place};
use refit_kube::Connection;
use tokio::sync::watch;

/// The leader Lease's name (in the fleet's namespace).
pub const LEASE: &str = "refit-controller";
/// How long one renewal holds leadership.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews (a third of the duration).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a follower tries again.
pub const RETRY: Duration = Duration::from_secs(2);

/// What a replica is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Starting: not asked yet.
    Candidate,
    /// Leading.
    Leader,
    /// Someone else leads (their identity, as the Lease names them).
    Follower(String),
}

/// Where and how often.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Lease.
    pub place: Place,
    /// A follower's retry interval.
    pub retry: Duration,
}

impl Config {
    /// The default Lease in `namespace`.
    pub fn new(namespace: &str) -> Config {
        Config {
            place: Place {
                namespace: namespace.to_string(),
                name: LEASE.into(),
                duration: DURATION,
                renew_every: RENEW_EVERY,
            },
            retry: RETRY,
        }
    }
}

/// Runs for ever: tries to lead, leads until the Lease is lost, tries again. Every change of
/// role is sent on `role`.
pub async fn campaign(conn: Connection, cfg: Config, me: Holder, role: watch::Sender<Role>) {
    loop {
        match Lock::acquire_at(&conn, cfg.place.clone(), me.clone(), false).await {
            Ok((lock, takeover)) => {
                if let Some((why, from)) = takeover {
                    tracing::info!("leading: took the lease over from {from} ({why:?})");
                } else {
                    tracing::info!("leading");
                }
                role.send_replace(Role::Leader);
                let mut lost = lock.lost();
                // Leads until the renewal task finds the Lease taken.
                while !*lost.borrow() {
                    if lost.changed().await.is_err() {
                        break;
                    }
                }
                tracing::warn!("the leader lease was taken by another replica: following");
                role.send_replace(Role::Follower(String::new()));
            }
            Err(LockError::Held { holder, .. }) => {
                if *role.borrow() != Role::Follower(holder.clone()) {
                    role.send_replace(Role::Follower(holder));
                }
            }
            Err(e) => tracing::warn!("leader election: {e}"),
        }
        tokio::time::sleep(cfg.retry).await;
    }
}
