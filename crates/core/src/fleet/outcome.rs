//! How the end of a member upgrade — and the relaunch of one found under way after a driver
//! restart — is recorded in the run.
//!
//! One rule on every path: **a member that cannot be reached waits Pending with the reason and
//! is retried; it is not Failed.** [`super::next`] applies it before a member starts (its facts
//! say `unavailable`); [`relaunch`] applies it when a new driver finds an upgrade under way
//! with no driver (the API server of a member killed mid control-plane step may take seconds
//! to come back); [`ended`] applies it to an upgrade that ended without reaching its cluster
//! because the cluster did not answer. Everything else a member upgrade reports is recorded as
//! it is: success, failure, or a pause at its window's close.

use jiff::Timestamp;

use super::run::{Event, MemberFacts};

/// How a member's upgrade ended, as the driver read it from the upgrade's own report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeEnd {
    /// Done (the message says what it did).
    Succeeded {
        /// What to show.
        message: String,
    },
    /// Failed.
    Failed {
        /// Why.
        error: String,
        /// Whether it reached its cluster (it reported anything from it: a plan, a run's
        /// start, a summary). One that did not may simply not have been able to.
        reached: bool,
    },
    /// Stopped at `--not-after` (its window closed) with nodes left; a rerun continues it.
    Paused {
        /// What it reported.
        message: String,
    },
}

/// The event that records how `member`'s upgrade ended. `facts` is the member looked at after
/// the end (None when it was not looked at): a failure that never reached the cluster, of a
/// member that cannot be reached now, is [`Event::MemberUnreachable`] — Pending, retried.
pub fn ended(member: &str, end: &UpgradeEnd, facts: Option<&MemberFacts>, at: Timestamp) -> Event {
    let member = member.to_string();
    match end {
        UpgradeEnd::Succeeded { message } => {
            Event::MemberSucceeded { member, at, message: Some(message.clone()) }
        }
        UpgradeEnd::Paused { message } => Event::MemberPaused { member, at, message: message.clone() },
        UpgradeEnd::Failed { error, reached: false } => match facts.and_then(|f| f.unavailable.as_ref()) {
            Some(why) => Event::MemberUnreachable {
                member,
                at,
                message: format!("{why} (its upgrade could not start: {error})"),
            },
            None => Event::MemberFailed { member, at, error: error.clone() },
        },
        UpgradeEnd::Failed { error, reached: true } => {
            Event::MemberFailed { member, at, error: error.clone() }
        }
    }
}

/// A NodeImageOnly upgrade is done when the member's nodes report the target images, not when
/// its `refit upgrade` says it finished (issue 18 item 15: a run that rolled no node, or rolled
/// them to the wrong image, was marked Completed). `facts` is the member observed after the
/// end: an end it does not confirm becomes a failure saying what the nodes report; a member
/// that cannot be observed now is a failure that did not reach it (so [`ended`] keeps it
/// Pending and retries). Other upgrade types and other ends pass unchanged.
pub fn confirm_node_images(
    end: UpgradeEnd,
    upgrade_type: crate::fleet::UpgradeType,
    target: &crate::fleet::MemberTarget,
    facts: &MemberFacts,
) -> UpgradeEnd {
    if upgrade_type != crate::fleet::UpgradeType::NodeImageOnly
        || !matches!(end, UpgradeEnd::Succeeded { .. })
    {
        return end;
    }
    if let Some(why) = &facts.unavailable {
        return UpgradeEnd::Failed {
            error: format!("its node images could not be checked after the upgrade: {why}"),
            reached: false,
        };
    }
    let seen = &facts.versions.node_images;
    let observed = target.node_images.is_empty() || !seen.is_empty();
    if observed && crate::fleet::target::at_target(upgrade_type, target, &facts.versions).is_some() {
        return end;
    }
    let now: Vec<String> = seen.iter().map(|i| format!("{} {}", i.family, i.version)).collect();
    let want: Vec<String> = target.node_images.iter().map(|(f, v)| format!("{f} {v}")).collect();
    UpgradeEnd::Failed {
        error: format!(
            "its upgrade reported success, but its nodes report {} (target {})",
            if now.is_empty() { "no node image".to_string() } else { now.join(", ") },
            want.join(", ")
        ),
        reached: true,
    }
}

/// What to record for a member the run says is under way but no driver runs: relaunch its
/// upgrade ([`Event::MemberRelaunched`], which resumes its journal), or — when the member
/// cannot be reached now — [`Event::MemberUnreachable`], so it waits Pending and is started
/// again (continuing the same cluster run) once it answers.
pub fn relaunch(member: &str, facts: &MemberFacts, at: Timestamp) -> Event {
    match &facts.unavailable {
        Some(why) => Event::MemberUnreachable { member: member.to_string(), at, message: why.clone() },
        None => Event::MemberRelaunched { member: member.to_string(), at },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::run::Facts;
    use crate::fleet::{
        Decision, FleetMember, MemberVersions, PendingReason, RunState, Strategy, UpdateState, UpgradeSpec,
        UpgradeType, apply, freeze_targets, next, resolve,
    };

    fn t0() -> Timestamp {
        "2026-06-10T12:00:00Z".parse().unwrap()
    }

    /// A member at 1.36.4, reachable, no window.
    fn facts() -> MemberFacts {
        MemberFacts {
            versions: MemberVersions {
                control_plane: Some("1.36.4".parse().unwrap()),
                nodes: Some("1.36.4".parse().unwrap()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A started run of one member `m` (one by one, to 1.37.1), and the fleet's facts.
    fn one_member_run() -> (RunState, Facts) {
        let members = [FleetMember { name: "m".into(), ..Default::default() }];
        let strategy = Strategy::one_by_one();
        let plan = resolve(&strategy, &members).unwrap();
        let spec = UpgradeSpec::new(UpgradeType::Full, Some("1.37.1".parse().unwrap()));
        let run = RunState::new("r", spec, strategy, plan, t0()).unwrap();
        let all = Facts { members: [("m".to_string(), facts())].into(), ..Facts::default() };
        let targets = freeze_targets(&run.spec, all.members.values().map(|f| &f.versions));
        let run =
            apply(&run, &Event::Start { at: t0(), targets: Some(targets), plan: None, by: None }).unwrap();
        (run, all)
    }

    fn unreachable() -> MemberFacts {
        MemberFacts { unavailable: Some("cannot reach the API server".into()), ..facts() }
    }

    #[test]
    fn a_relaunch_of_an_unreachable_member_waits_pending_and_is_retried_when_it_answers() {
        let (mut run, mut all) = one_member_run();
        // Started, then the driver died; the new driver finds the member under way.
        let start = next(&run, &all, t0());
        let Some(Decision::StartMember { .. }) = start.first() else { panic!("{start:?}") };
        run = apply(&run, &start[0].started(t0(), None).unwrap()).unwrap();
        let m = run.member("m").unwrap();
        assert_eq!((m.status.state, m.attempts), (UpdateState::Running, 1));

        let e = relaunch("m", &unreachable(), t0());
        assert!(matches!(e, Event::MemberUnreachable { .. }), "{e:?}");
        run = apply(&run, &e).unwrap();
        let m = run.member("m").unwrap();
        assert_eq!(m.status.state, UpdateState::Pending, "not Failed");
        assert!(
            matches!(&m.status.pending, Some(PendingReason::Unavailable { message }) if message.contains("API server")),
            "{:?}",
            m.status.pending
        );
        assert!(m.unfinished, "it continues its cluster run to the same target");
        assert_eq!(run.status.state, UpdateState::Pending);

        // Still unreachable: it waits (the same rule as a member that never started).
        all.members.insert("m".into(), unreachable());
        let d = next(&run, &all, t0());
        assert!(d.iter().all(|d| matches!(d, Decision::Wait { .. })), "{d:?}");
        // It answers again: started again, to the target it had.
        all.members.insert("m".into(), facts());
        let d = next(&run, &all, t0());
        match d.first() {
            Some(Decision::StartMember { member, target, .. }) => {
                assert_eq!(member, "m");
                assert_eq!(Some(target), run.member("m").unwrap().target.as_ref());
            }
            other => panic!("{other:?}"),
        }
        // A reachable member is relaunched.
        assert!(matches!(relaunch("m", &facts(), t0()), Event::MemberRelaunched { .. }));
    }

    #[test]
    fn an_upgrade_that_ended_before_its_run_began_on_an_unreachable_member_is_pending_not_failed() {
        let failed = |reached| UpgradeEnd::Failed { error: "cannot reach the API server".into(), reached };
        let e = ended("m", &failed(false), Some(&unreachable()), t0());
        assert!(
            matches!(&e, Event::MemberUnreachable { message, .. } if message.contains("could not start")),
            "{e:?}"
        );
        // Reachable now, or its run had begun: a real failure.
        assert!(matches!(ended("m", &failed(false), Some(&facts()), t0()), Event::MemberFailed { .. }));
        assert!(matches!(ended("m", &failed(false), None, t0()), Event::MemberFailed { .. }));
        assert!(matches!(ended("m", &failed(true), Some(&unreachable()), t0()), Event::MemberFailed { .. }));
        assert!(matches!(
            ended("m", &UpgradeEnd::Succeeded { message: "ok".into() }, None, t0()),
            Event::MemberSucceeded { .. }
        ));
        assert!(matches!(
            ended("m", &UpgradeEnd::Paused { message: "window".into() }, None, t0()),
            Event::MemberPaused { .. }
        ));
    }

    #[test]
    fn an_unreachable_member_of_a_stopping_run_is_stopped() {
        let (mut run, all) = one_member_run();
        let start = next(&run, &all, t0());
        run = apply(&run, &start[0].started(t0(), None).unwrap()).unwrap();
        run = apply(&run, &Event::Stop { at: t0(), by: None }).unwrap();
        assert_eq!(run.member("m").unwrap().status.state, UpdateState::Stopping);
        run = apply(&run, &relaunch("m", &unreachable(), t0())).unwrap();
        assert_eq!(run.member("m").unwrap().status.state, UpdateState::Stopped);
        assert_eq!(run.status.state, UpdateState::Stopped);
    }

    #[test]
    fn a_node_image_upgrade_is_done_only_when_its_nodes_report_the_target_images() {
        use crate::fleet::MemberTarget;
        use crate::fleet::target::NodeImage;
        let target = MemberTarget {
            kubernetes: None,
            node_images: [("ubuntu-2404".to_string(), "202606.10.0".to_string())].into(),
        };
        let facts = |version: &str| MemberFacts {
            versions: MemberVersions {
                node_images: vec![NodeImage { family: "ubuntu-2404".into(), version: version.into() }],
                ..Default::default()
            },
            ..Default::default()
        };
        let done = || UpgradeEnd::Succeeded { message: "rolled 3 nodes".into() };
        assert_eq!(
            confirm_node_images(done(), UpgradeType::NodeImageOnly, &target, &facts("202606.10.0")),
            done()
        );
        let stale = confirm_node_images(done(), UpgradeType::NodeImageOnly, &target, &facts("202601.02.0"));
        assert!(
            matches!(&stale, UpgradeEnd::Failed { error, reached: true }
                if error.contains("ubuntu-2404 202601.02.0") && error.contains("target ubuntu-2404 202606.10.0")),
            "{stale:?}"
        );
        let blind = confirm_node_images(done(), UpgradeType::NodeImageOnly, &target, &MemberFacts::default());
        assert!(
            matches!(&blind, UpgradeEnd::Failed { error, .. } if error.contains("no node image")),
            "{blind:?}"
        );
        let away = MemberFacts { unavailable: Some("connection refused".into()), ..facts("202606.10.0") };
        assert!(matches!(
            confirm_node_images(done(), UpgradeType::NodeImageOnly, &target, &away),
            UpgradeEnd::Failed { reached: false, .. }
        ));
        // Other types and ends are not this rule's business.
        assert_eq!(confirm_node_images(done(), UpgradeType::Full, &target, &facts("202601.02.0")), done());
        let failed = UpgradeEnd::Failed { error: "x".into(), reached: true };
        assert_eq!(
            confirm_node_images(failed.clone(), UpgradeType::NodeImageOnly, &target, &facts("1")),
            failed
        );
    }
}
