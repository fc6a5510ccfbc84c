//! The update run state machine.
//!
//! A run holds a frozen plan (stages → groups → members), its frozen targets, and a state on
//! every level: NotStarted, Running, Pending, Stopping, Stopped, Skipped, Failed, Completed
//! (Azure Fleet's eight). Two functions drive it:
//!
//! - [`apply`] takes an [`Event`] (a person's command, or a member's outcome, or a decision of
//!   [`next`] being recorded) and returns the new state, or a [`TransitionError`] saying why the
//!   event does not fit. Only members, gates and waits change directly; a stage's, group's or
//!   run's state is always *recomputed* from its children and its own gates and wait (the
//!   rollup), so a parent can never disagree with its children. Every change, leaf or parent, is
//!   checked against the allowed-transition table ([`allowed`]).
//! - [`next`] looks at the run, the members' [`Facts`] and `now`, and says what to do: start
//!   these members, record these gates as reached, mark this member Pending on its window,
//!   skip that one (already at the target), or wait until some instant.
//!
//! The desired state ([`Intent`]: not started, run, stop) is kept apart from the observed state,
//! as KubeFleet does. A failure beyond `maxAllowedFailures` fails its group, stage and run and
//! halts the run like a stop: no new member starts anywhere, member upgrades already under way
//! run to their end and are recorded. A Failed or Stopped run can be started again (failed and
//! skipped work is re-applied; members skipped because they were already at the target stay
//! skipped), or retried (only failed members are re-applied, with the same frozen targets).
//!
//! Modules: [`state`] (the eight states and the transition tables), [`health`] (a stage's
//! health gates: reached, probed, judged by the soak rule), [`reason`] (why Pending,
//! what a skip names), [`tree`] (the run tree and its queries), [`event`] (events, facts,
//! decisions, errors), [`rollup`] (parents from children), [`apply`], [`next`].

mod apply;
mod event;
mod health;
mod next;
mod reason;
mod rollup;
mod state;
mod tree;

pub use apply::{apply, follow_up};
pub use event::{Decision, Event, Facts, MemberFacts, TransitionError};
pub use health::{HealthGateState, HealthGateStatus, HealthWait};
pub use next::next;
pub use reason::{PendingReason, SkipCause, SkipTarget};
pub use state::{Level, MEMBER_TRANSITIONS, PARENT_TRANSITIONS, UpdateState, allowed};
pub use tree::{
    GroupState, Intent, MemberState, Progress, RunState, SkipRecord, StageState, Status, WaitState,
};

#[cfg(test)]
mod tests;
