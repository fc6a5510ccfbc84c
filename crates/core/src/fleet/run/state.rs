//! The eight states, the levels they apply to, and the allowed-transition tables.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a run, stage, group or member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum UpdateState {
    /// Not reached yet.
    NotStarted,
    /// Work under way.
    Running,
    /// Waiting: a closed window, a gate, the after-stage wait, an unavailable member. Always
    /// with a [`PendingReason`].
    Pending,
    /// Stop requested; member upgrades already under way are finishing.
    Stopping,
    /// Stopped; can be started again.
    Stopped,
    /// Skipped (by request, already at the target, deferred, or everything inside skipped).
    Skipped,
    /// Failed; can be started again or retried.
    Failed,
    /// Done.
    Completed,
}

impl UpdateState {
    /// Completed or Skipped: nothing left to do here.
    pub fn is_done(self) -> bool {
        matches!(self, UpdateState::Completed | UpdateState::Skipped)
    }

    /// A member upgrade is under way (Running, or finishing while the run stops).
    pub fn in_flight(self) -> bool {
        matches!(self, UpdateState::Running | UpdateState::Stopping)
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A level of the run tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// The run.
    Run,
    /// A stage.
    Stage,
    /// A group.
    Group,
    /// A member.
    Member,
}

pub(super) use UpdateState::{Completed, Failed, NotStarted, Pending, Running, Skipped, Stopped, Stopping};

/// Every change of a member's state that can happen (a state may always stay as it is).
pub const MEMBER_TRANSITIONS: &[(UpdateState, UpdateState)] = &[
    (NotStarted, Running), // started
    (NotStarted, Pending), // window closed, unavailable
    (NotStarted, Skipped), // skip, already at target, not in the fleet any more
    (Pending, Running),    // its window opened
    (Pending, NotStarted), // unblocked but no free slot: queued again
    (Pending, Skipped),    // skip, or deferred after its pending budget
    (Pending, Stopped),    // the run stopped (or failed) while it waited
    (Running, Completed),  // its upgrade succeeded
    (Running, Failed),     // its upgrade failed
    (Running, Stopping),   // the run stopped (or failed) while its upgrade runs
    (Running, Pending),    // its window closed mid-upgrade: paused, continues in the next one
    (Stopping, Completed), // the upgrade under way finished after all
    (Stopping, Failed),    // … or failed
    (Stopping, Running),   // a failed run started again while this upgrade still runs
    (Stopping, Stopped),   // … or paused at its window's close: left for the next start
    (Failed, NotStarted),  // start again / retry failed
    (Failed, Skipped),     // skip a failed member to get past it
    (Skipped, NotStarted), // start again re-applies skipped work
    (Stopped, NotStarted), // start again
    (Stopped, Skipped),    // skip while stopped
];

/// Every change of a stage's, group's or run's (rolled-up) state that can happen.
pub const PARENT_TRANSITIONS: &[(UpdateState, UpdateState)] = &[
    (NotStarted, Running),
    (NotStarted, Pending),
    (NotStarted, Skipped),
    (Running, Pending),
    (Running, Stopping),
    (Running, Stopped),
    (Running, Failed),
    (Running, Completed),
    (Running, Skipped),
    (Pending, Running),
    (Pending, Stopping),
    (Pending, Stopped),
    (Pending, Failed),
    (Pending, Completed),
    (Pending, Skipped),
    (Stopping, Stopped),
    (Stopping, Failed),
    (Stopping, Completed),
    (Stopping, Skipped),
    (Stopping, Running),
    (Stopped, Running),
    (Stopped, Pending),
    (Stopped, NotStarted),
    (Stopped, Skipped),
    (Stopped, Completed),
    (Failed, Running),
    (Failed, Pending),
    (Failed, NotStarted),
    (Failed, Stopping),
    (Failed, Stopped),
    (Failed, Skipped),
    (Failed, Completed),
    (Completed, Running), // retry/start re-opens a scope that completed with tolerated failures
    (Completed, NotStarted), // … whose every member failed (within its threshold)
    (Completed, Skipped), // its only (tolerated) failures were skipped: every member is Skipped
    (Skipped, NotStarted), // start again re-applies skipped work
    (Skipped, Running),
];

/// Whether `from → to` is allowed on `level` (staying put always is).
pub fn allowed(level: Level, from: UpdateState, to: UpdateState) -> bool {
    let table = if level == Level::Member { MEMBER_TRANSITIONS } else { PARENT_TRANSITIONS };
    from == to || table.contains(&(from, to))
}
