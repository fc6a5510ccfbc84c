//! Fleet update runs: the pure rules for upgrading many clusters stage by stage.
//!
//! Modelled on Azure Kubernetes Fleet Manager update runs (`../shared/reference/fleet-anchors.md`),
//! with the gaps its users complain about filled in (approval expiry, retry of failed members with
//! the run's frozen targets, a per-member budget for time spent Pending, members no stage selects
//! reported instead of failing the run).
//!
//! - [`strategy`]: stages (in order) → groups (in parallel) → members (one at a time by default),
//!   parsed from YAML or JSON, validated, and resolved against the fleet's members into a frozen
//!   [`strategy::RunPlan`].
//! - [`binding`]: a member stays bound to the cluster it was added with (its kube-system UID).
//! - [`gate`]: Approval and ScheduledStart gates before and after stages and groups.
//! - [`window`]: per-member maintenance windows (weekly or monthly, IANA time zone, DST-correct,
//!   blackout dates) and the order in which members are taken.
//! - [`target`]: upgrade types, node-image selection (Latest, Consistent) and what "already at
//!   the target" means.
//! - [`run`]: the update run state machine: states, the allowed-transition table, rollups,
//!   [`run::apply`] for events and [`run::next`] for the driver's next decisions.
//! - [`outcome`]: how a member upgrade's end, or its relaunch after a driver restart, is
//!   recorded (an unreachable member is Pending and retried on every path).
//! - [`profile`]: auto-upgrade profiles and channels, and the deterministic run they generate.
//!
//! Nothing here does I/O or reads a clock: "now" is always an argument. Every type is serde so
//! the store can keep it as JSON and the CLI can print it with `-o json|yaml`. (Time-zone rules
//! come from jiff's time-zone database, which on Linux is the system's `/usr/share/zoneinfo`.)

pub mod binding;
pub mod gate;
pub mod outcome;
pub mod profile;
pub mod run;
pub mod strategy;
pub mod target;
pub mod window;

#[cfg(test)]
mod proptests;

pub use gate::{Approval, GateRef, GateSpec, GateState, GateStatus, GateTiming};
pub use outcome::UpgradeEnd;
pub use profile::{
    Channel, HeldBack, Profile, ProfileError, ProfileTarget, Trigger, TriggerStatus, fire, target_for,
};
pub use run::{
    Decision, Event, Facts, GroupState, HealthGateState, HealthGateStatus, HealthWait, Intent, Level,
    MEMBER_TRANSITIONS, MemberFacts, MemberState, PARENT_TRANSITIONS, PendingReason, Progress, RunState,
    SkipCause, SkipTarget, StageState, Status, TransitionError, UpdateState, allowed, apply, follow_up, next,
};
pub use strategy::{FleetMember, LabelSelector, Limit, RunPlan, Strategy, StrategyError, resolve};
pub use target::{
    ImageTargetsError, MemberTarget, MemberVersions, NODE_IMAGE_ANNOTATION, NodeImage, NodeImageSelection,
    NodeImageTargets, SpecError, Targets, UpgradeSpec, UpgradeType, freeze_targets, image_targets_text,
    parse_image_source, parse_image_targets,
};
pub use window::{Day, MaintenanceWindow, Recurrence, WindowError, WindowPriority};

/// The longest name a stage, group, profile or run may have (Azure's limit for stages).
pub const MAX_NAME_LEN: usize = 50;

/// Whether `name` is usable as a stage, group, strategy or profile name: lowercase letters,
/// digits and inner dashes, 1–50 characters (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, as Azure Fleet
/// requires). Names appear in skip targets (`Group:g`) and gate references (`s/g/before/1`),
/// so they must not contain `:` or `/`.
pub fn is_valid_name(name: &str) -> bool {
    crate::identity::is_dns_label(name, MAX_NAME_LEN)
}

/// Whether `name` is usable as an update run's name: the same pattern, up to 63 characters (a
/// profile's generated run names are long; a run is a Kubernetes object on a hub).
pub fn is_valid_run_name(name: &str) -> bool {
    crate::identity::is_dns_label(name, crate::identity::DNS_LABEL_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_names_follow_the_azure_pattern() {
        for ok in ["stage1", "group-1a", "a", "0", "prod-eu-west"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        let long = "a".repeat(51);
        for bad in ["", "-a", "a-", "Stage", "a_b", "a/b", "a:b", "a b", long.as_str()] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        let run = "r".repeat(63);
        assert!(is_valid_run_name(&run) && !is_valid_name(&run), "run names go to 63");
        assert!(!is_valid_run_name(&"r".repeat(64)));
        assert!(!is_valid_run_name("Run-1") && !is_valid_run_name("-r") && is_valid_run_name("r-1"));
    }
}
