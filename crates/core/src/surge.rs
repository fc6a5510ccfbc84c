//! `--max-surge` with the replace action: which replace step may start next, so that extra
//! nodes and lost capacity stay within their limits at every instant, as a Deployment combines
//! `maxSurge` and `maxUnavailable`.
//!
//! Without a surge, a replace unit creates its replacement when its old node's turn comes,
//! inside a window of max-unavailable units. With one, each unit is two halves scheduled from
//! the state of every unit of the stage:
//!
//! - **add**: create the replacement and wait until it is Ready. It needs a surge slot: at
//!   most `surge` replacements exist beyond the original worker count (a replacement counts
//!   from its creation until its old node is removed).
//! - **retire**: cordon, drain and remove the old node. Once its replacement is Ready this
//!   costs no capacity (one node leaves, one came), so it starts at once.
//!
//! `unavailable` is what a Deployment's `maxUnavailable` is: old nodes out of service with no
//! Ready replacement yet. When every surge slot is taken, a unit may *drain first* within that
//! allowance: its old node is cordoned and drained before its replacement exists, then it
//! waits for a surge slot to add its replacement, then its old node is removed. With
//! `unavailable` 0 no unit drains first, so schedulable capacity never drops below the start.
//! `surge` 0 is the replace action without `--max-surge` (its own window), never a stage here;
//! both 0 is refused: nothing could progress.

use serde::{Deserialize, Serialize};

use crate::batch::{BatchingError, MaxSurge, MaxUnavailableSetting};
use crate::plan::{MaxUnavailable, Step};

/// A drain-first unit's steps: its old node is cordoned and drained before the replacement is
/// created, and removed once the replacement is Ready (a replace unit's own order is
/// replacement first: upgrade, validate, cordon, drain, remove).
pub const DRAIN_FIRST: [Step; 5] = [Step::Cordon, Step::Drain, Step::Upgrade, Step::Validate, Step::Remove];

/// Whether the unit about to run `step` (of `steps`) ends the adding half: the step after
/// validation (cordon when the replacement came first, remove when the old node drained
/// first) starts retiring the old node.
pub fn retires_at(step: Step, steps: &[Step]) -> bool {
    previous(step, steps) == Some(Step::Validate)
}

/// Whether `step` (of `steps`) must wait for a surge slot: the replacement's creation after
/// a drain first.
pub fn waits_for_slot(step: Step, steps: &[Step]) -> bool {
    step == Step::Upgrade && previous(step, steps) == Some(Step::Drain)
}

fn previous(step: Step, steps: &[Step]) -> Option<Step> {
    let at = steps.iter().position(|s| *s == step)?;
    steps.get(at.checked_sub(1)?).copied()
}

/// `--max-surge` and `--max-unavailable` of a surge run, as the user gave them (percentages
/// are resolved per stage by [`Surge::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Surge {
    /// Extra nodes (never [`MaxSurge::None`]).
    pub surge: MaxSurge,
    /// Old nodes out of service without a Ready replacement (None: 0).
    pub unavailable: Option<MaxUnavailable>,
}

impl Surge {
    /// Combines the two flags. `Ok(None)`: no surge (the replace action keeps its window).
    /// Refused: both 0 (nothing could progress), and `auto` with a surge (auto sizes batches
    /// of old nodes by their budgets; a surge run's pace is set by its surge slots).
    pub fn new(surge: MaxSurge, unavailable: MaxUnavailableSetting) -> Result<Option<Surge>, BatchingError> {
        match (surge, unavailable) {
            (MaxSurge::None, MaxUnavailableSetting::Zero) => Err(BatchingError::Stalled),
            (MaxSurge::None, _) => Ok(None),
            (_, MaxUnavailableSetting::Auto) => Err(BatchingError::SurgeWithAuto),
            (s, MaxUnavailableSetting::Zero) => Ok(Some(Surge { surge: s, unavailable: None })),
            (s, MaxUnavailableSetting::Fixed(m)) => Ok(Some(Surge { surge: s, unavailable: Some(m) })),
        }
    }

    /// The limits in nodes for a stage of `workers` workers. A percentage surge rounds up (at
    /// least one node, as a Deployment's), a percentage unavailability rounds down (as a
    /// Deployment's; `--max-unavailable`'s own batches never go below one node, but here 0 is
    /// a real answer: the surge moves the stage).
    pub fn limits(self, workers: usize) -> Limits {
        let unavailable = match self.unavailable {
            None => 0,
            Some(MaxUnavailable::Count(n)) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(MaxUnavailable::Percent(p)) => {
                workers.saturating_mul(usize::try_from(p).unwrap_or(usize::MAX)) / 100
            }
        };
        Limits { surge: self.surge.extra(workers).max(1), unavailable }
    }
}

/// A surge stage's limits, in nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Replacements that may exist beyond the original worker count at once (at least 1).
    pub surge: usize,
    /// Old nodes that may be out of service with no Ready replacement at once.
    pub unavailable: usize,
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "max-surge {}, max-unavailable {}", self.surge, self.unavailable)
    }
}

/// Where one unit of a surge stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not started: its old node serves, no replacement.
    Waiting,
    /// Its replacement is being created or is not Ready yet; the old node serves.
    Adding,
    /// Its replacement is Ready; the old node is cordoned, drained and removed.
    Retiring,
    /// Drain first: the old node is cordoned and being drained, no replacement yet.
    Draining,
    /// Drain first: the old node is drained and out of service, waiting for a surge slot.
    Drained,
    /// Drain first: its replacement is being created; the old node is out of service.
    DrainedAdding,
    /// The old node is removed (or the unit ended without holding anything).
    Done,
}

impl Phase {
    /// Whether this unit's replacement exists beyond the original worker count.
    pub fn extra(self) -> bool {
        matches!(self, Phase::Adding | Phase::Retiring | Phase::DrainedAdding)
    }

    /// Whether this unit's old node is out of service with no Ready replacement.
    pub fn short(self) -> bool {
        matches!(self, Phase::Draining | Phase::Drained | Phase::DrainedAdding)
    }

    /// Whether the unit is working (not waiting for the scheduler, not finished).
    pub fn moving(self) -> bool {
        matches!(self, Phase::Adding | Phase::Retiring | Phase::Draining | Phase::DrainedAdding)
    }
}

/// What may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "start", content = "unit", rename_all = "kebab-case")]
pub enum Start {
    /// Create unit `i`'s replacement: from [`Phase::Waiting`] (replacement first) or from
    /// [`Phase::Drained`] (its old node already out).
    Add(usize),
    /// Cordon and drain unit `i`'s old node before its replacement exists.
    DrainFirst(usize),
}

/// How many replacements exist beyond the original worker count, and how many old nodes are
/// out of service with no Ready replacement.
pub fn counts(phases: &[Phase]) -> (usize, usize) {
    let extra = phases.iter().filter(|p| p.extra()).count();
    let short = phases.iter().filter(|p| p.short()).count();
    (extra, short)
}

/// The starts allowed now, in order, from the phase of every unit of the stage (in schedule
/// order). Drained units get surge slots first (they hold capacity out of service); then
/// waiting units in order take the remaining surge slots, then drain first within
/// `unavailable`. Applying every start returned keeps both limits.
pub fn next(limits: Limits, phases: &[Phase]) -> Vec<Start> {
    let (mut extra, mut short) = counts(phases);
    let mut out = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        if *p == Phase::Drained && extra < limits.surge {
            out.push(Start::Add(i));
            extra = extra.saturating_add(1);
        }
    }
    for (i, p) in phases.iter().enumerate() {
        if *p != Phase::Waiting {
            continue;
        }
        if extra < limits.surge {
            out.push(Start::Add(i));
            extra = extra.saturating_add(1);
        } else if short < limits.unavailable {
            out.push(Start::DrainFirst(i));
            short = short.saturating_add(1);
        } else {
            break;
        }
    }
    out
}

/// The phase a start moves its unit to.
pub fn started(phase: Phase, start: Start) -> Phase {
    match (phase, start) {
        (Phase::Drained, Start::Add(_)) => Phase::DrainedAdding,
        (_, Start::Add(_)) => Phase::Adding,
        (_, Start::DrainFirst(_)) => Phase::Draining,
    }
}

/// The phase a unit's working half ends in: a replacement Ready moves on to retire its old
/// node, a drain first waits for a surge slot, a removal finishes the unit.
pub fn finished(phase: Phase) -> Phase {
    match phase {
        Phase::Adding | Phase::DrainedAdding => Phase::Retiring,
        Phase::Draining => Phase::Drained,
        Phase::Retiring | Phase::Done => Phase::Done,
        Phase::Waiting => Phase::Waiting,
        Phase::Drained => Phase::Drained,
    }
}

/// Where a unit an earlier attempt began stands, from which of its steps the journal shows
/// begun (`cordon`, `upgrade`) and done (`drain`, `validate`): a validated replacement is
/// retiring its old node (whichever order it took); a cordon with no validated replacement
/// means it drained first.
pub fn resumed(cordon_begun: bool, drain_done: bool, upgrade_begun: bool, validate_done: bool) -> Phase {
    match (cordon_begun, drain_done, upgrade_begun, validate_done) {
        (_, _, _, true) => Phase::Retiring,
        (true, _, true, false) => Phase::DrainedAdding,
        (true, true, false, false) => Phase::Drained,
        (true, false, false, false) => Phase::Draining,
        (false, _, true, false) => Phase::Adding,
        (false, _, false, false) => Phase::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Schedulable workers, counted node by node: an old node serves until it is cordoned, a
    /// replacement from when it is Ready (a unit retiring has one Ready and one cordoned).
    fn schedulable(phases: &[Phase]) -> usize {
        phases
            .iter()
            .map(|p| match p {
                Phase::Waiting | Phase::Adding | Phase::Retiring | Phase::Done => 1,
                Phase::Draining | Phase::Drained | Phase::DrainedAdding => 0,
            })
            .sum()
    }

    fn l(surge: usize, unavailable: usize) -> Limits {
        Limits { surge, unavailable }
    }

    #[test]
    fn both_zero_is_refused_and_auto_does_not_mix() {
        let zero: MaxUnavailableSetting = "0".parse().unwrap();
        let e = Surge::new(MaxSurge::None, zero).unwrap_err();
        assert_eq!(e, BatchingError::Stalled);
        assert!(e.to_string().contains("maxSurge N"), "names the fix: {e}");
        assert_eq!(
            Surge::new(MaxSurge::None, MaxUnavailableSetting::Fixed(MaxUnavailable::Count(2))),
            Ok(None)
        );
        assert_eq!(
            Surge::new(MaxSurge::Count(2), MaxUnavailableSetting::Auto),
            Err(BatchingError::SurgeWithAuto)
        );
        let s = Surge::new(MaxSurge::Count(2), zero).unwrap().unwrap();
        assert_eq!(s.limits(10), l(2, 0));
        let s = Surge::new(MaxSurge::Percent(10), "25%".parse().unwrap()).unwrap().unwrap();
        assert_eq!(s.limits(15), l(2, 3), "surge rounds up, unavailability down");
        assert_eq!(Surge { surge: MaxSurge::Percent(1), unavailable: None }.limits(3), l(1, 0));
    }

    #[test]
    fn replacements_first_then_drain_first_within_the_allowance() {
        let w = [Phase::Waiting; 5];
        assert_eq!(next(l(2, 0), &w), [Start::Add(0), Start::Add(1)]);
        assert_eq!(next(l(2, 1), &w), [Start::Add(0), Start::Add(1), Start::DrainFirst(2)]);
        // A drained unit takes the slot a removal frees before any waiting unit.
        let p = [Phase::Done, Phase::Retiring, Phase::Drained, Phase::Waiting];
        assert_eq!(next(l(2, 1), &p), [Start::Add(2)]);
        assert_eq!(next(l(1, 1), &p), []);
        assert_eq!(next(l(3, 0), &[Phase::Done; 3]), []);
    }

    #[test]
    fn a_resumed_unit_is_where_its_journal_says() {
        assert_eq!(resumed(false, false, false, false), Phase::Waiting);
        assert_eq!(resumed(false, false, true, false), Phase::Adding);
        assert_eq!(resumed(true, true, true, true), Phase::Retiring);
        assert_eq!(resumed(true, false, false, false), Phase::Draining);
        assert_eq!(resumed(true, true, false, false), Phase::Drained);
        assert_eq!(resumed(true, true, true, false), Phase::DrainedAdding);
    }

    #[test]
    fn the_halves_meet_after_validation() {
        let replace_first = [Step::Upgrade, Step::Validate, Step::Cordon, Step::Drain, Step::Remove];
        assert!(retires_at(Step::Cordon, &replace_first));
        assert!(!retires_at(Step::Remove, &replace_first));
        assert!(retires_at(Step::Remove, &DRAIN_FIRST));
        assert!(waits_for_slot(Step::Upgrade, &DRAIN_FIRST));
        assert!(!waits_for_slot(Step::Upgrade, &replace_first));
        assert!(!retires_at(Step::Upgrade, &DRAIN_FIRST));
    }

    proptest! {
        /// For random limits, stage sizes and orders in which the units' working halves end,
        /// applying every start `next` allows keeps at most `surge` replacements beyond the
        /// original count and at most `unavailable` old nodes out without a Ready replacement
        /// at every instant (so with 0 the schedulable count never drops), and every unit ends
        /// replaced: the rule never deadlocks.
        #[test]
        fn limits_hold_at_every_instant_and_every_node_is_replaced(
            workers in 0usize..40,
            surge in 1usize..6,
            unavailable in 0usize..6,
            picks in proptest::collection::vec(any::<u16>(), 400),
        ) {
            let limits = l(surge, unavailable);
            let mut phases = vec![Phase::Waiting; workers];
            let mut picks = picks.into_iter().cycle();
            let mut steps = 0usize;
            loop {
                for s in next(limits, &phases) {
                    let i = match s { Start::Add(i) | Start::DrainFirst(i) => i };
                    phases[i] = started(phases[i], s);
                    let (extra, short) = counts(&phases);
                    prop_assert!(extra <= surge, "{extra} extra nodes > {surge}: {phases:?}");
                    prop_assert!(short <= unavailable, "{short} short > {unavailable}: {phases:?}");
                }
                let moving: Vec<usize> = (0..phases.len()).filter(|i| phases[*i].moving()).collect();
                if moving.is_empty() {
                    prop_assert!(phases.iter().all(|p| *p == Phase::Done), "stuck: {phases:?}");
                    break;
                }
                let k = usize::from(picks.next().unwrap_or(0)) % moving.len();
                let i = moving[k];
                phases[i] = finished(phases[i]);
                let (extra, short) = counts(&phases);
                prop_assert!(extra <= surge && short <= unavailable);
                prop_assert!(schedulable(&phases) + unavailable >= workers, "capacity dropped: {phases:?}");
                steps += 1;
                prop_assert!(steps <= workers * 4 + 1, "every unit moves through at most 4 halves");
            }
        }
    }
}
