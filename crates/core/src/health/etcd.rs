//! etcd's health as refit needs it during an upgrade: every voting member healthy, no alarm
//! raised, and the quorum rule — a member is taken down (its node drained and its etcd
//! restarted) only when the healthy voting members left still form a quorum.
//!
//! With three members and one already down, taking a second down stops the cluster's writes
//! (and every apiserver with them); the rule refuses exactly that, naming who is unhealthy.
//! Learners do not vote, so they count for neither side.

use std::fmt;

/// One member as etcd's member list and its health endpoint describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    /// Member id (etcd's, hex when printed).
    pub id: u64,
    /// Its name (kubeadm names stacked members after their node).
    pub name: String,
    /// Answered its status request and is part of a cluster with a leader.
    pub healthy: bool,
    /// A non-voting learner.
    pub learner: bool,
    /// Why it is unhealthy, when it is.
    pub problem: Option<String>,
}

/// An alarm etcd has raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdAlarm {
    /// The backend quota is exhausted: writes are refused until space is freed and the alarm
    /// disarmed.
    NoSpace,
    /// A corruption check failed.
    Corrupt,
    /// Anything else etcd reports.
    Other(String),
}

impl EtcdAlarm {
    /// etcd's name for it (`NOSPACE`, `CORRUPT`).
    pub fn parse(s: &str) -> EtcdAlarm {
        match s {
            "NOSPACE" => EtcdAlarm::NoSpace,
            "CORRUPT" => EtcdAlarm::Corrupt,
            other => EtcdAlarm::Other(other.to_string()),
        }
    }
}

impl fmt::Display for EtcdAlarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdAlarm::NoSpace => f.write_str("NOSPACE"),
            EtcdAlarm::Corrupt => f.write_str("CORRUPT"),
            EtcdAlarm::Other(o) => f.write_str(o),
        }
    }
}

/// What refit learned from etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdHealth {
    /// Every member of the member list.
    pub members: Vec<EtcdMember>,
    /// Raised alarms with the member id that raised them.
    pub alarms: Vec<(u64, EtcdAlarm)>,
}

/// Why etcd's state stops the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdRefusal {
    /// An alarm is raised.
    #[error("etcd alarm {alarm} raised by member {member}: {}", alarm_fix(alarm))]
    Alarm {
        /// The member's name (or id).
        member: String,
        /// The alarm.
        alarm: EtcdAlarm,
    },
    /// Members that should be healthy are not.
    #[error("etcd members not healthy: {}; bring them back before refit goes on", .0.join("; "))]
    Unhealthy(Vec<String>),
    /// Taking the member down would lose the quorum.
    #[error(
        "taking etcd member {member} down would leave {healthy_after} healthy of {voters} voting members, below the quorum of {quorum} (not healthy: {unhealthy}); bring those members back first"
    )]
    WouldLoseQuorum {
        /// The member refit wanted to take down.
        member: String,
        /// Healthy voters without it.
        healthy_after: usize,
        /// Voting members.
        voters: usize,
        /// Votes a quorum needs.
        quorum: usize,
        /// The members already not healthy.
        unhealthy: String,
    },
    /// The node's member is not in the member list.
    #[error(
        "etcd member {0} is not in etcd's member list (see `etcdctl member list`); the plan's etcd roles do not match etcd"
    )]
    NotAMember(String),
}

fn alarm_fix(a: &EtcdAlarm) -> &'static str {
    match a {
        EtcdAlarm::NoSpace => {
            "the database is over its quota; compact and defragment, then `etcdctl alarm disarm`"
        }
        EtcdAlarm::Corrupt => "a member's data is inconsistent; restore it from a snapshot before upgrading",
        EtcdAlarm::Other(_) => "resolve it and `etcdctl alarm disarm` before upgrading",
    }
}

/// Votes a quorum needs among `voters`.
pub fn quorum(voters: usize) -> usize {
    (voters / 2).saturating_add(1)
}

impl EtcdHealth {
    fn voters(&self) -> impl Iterator<Item = &EtcdMember> {
        self.members.iter().filter(|m| !m.learner)
    }

    fn name_of(&self, id: u64) -> String {
        self.members.iter().find(|m| m.id == id).map_or_else(|| format!("{id:x}"), |m| m.name.clone())
    }

    fn unhealthy(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !m.healthy)
            .map(|m| match &m.problem {
                Some(p) => format!("{} ({p})", m.name),
                None => m.name.clone(),
            })
            .collect()
    }

    /// The gate before the first change and after each member: no alarm, every member healthy.
    pub fn check(&self) -> Result<(), EtcdRefusal> {
        if let Some((id, alarm)) = self.alarms.first() {
            return Err(EtcdRefusal::Alarm { member: self.name_of(*id), alarm: alarm.clone() });
        }
        let unhealthy = self.unhealthy();
        if unhealthy.is_empty() { Ok(()) } else { Err(EtcdRefusal::Unhealthy(unhealthy)) }
    }

    /// The quorum rule before member `name` goes down: alarms refuse, and the healthy voting
    /// members other than `name` must still be a quorum (with one or two voters: all the
    /// others must be healthy, as no quorum survives a member down there). Taking down a member
    /// that is already down costs nothing, so upgrading the broken member is allowed.
    pub fn may_take_down(&self, name: &str) -> Result<(), EtcdRefusal> {
        if let Some((id, alarm)) = self.alarms.first() {
            return Err(EtcdRefusal::Alarm { member: self.name_of(*id), alarm: alarm.clone() });
        }
        let Some(target) = self.members.iter().find(|m| m.name == name) else {
            return Err(EtcdRefusal::NotAMember(name.to_string()));
        };
        if target.learner {
            // A learner has no vote: stopping it changes no quorum.
            return Ok(());
        }
        let voters = self.voters().count();
        let healthy_after = self.voters().filter(|m| m.healthy && m.id != target.id).count();
        let quorum = quorum(voters);
        // One or two voters lose the quorum while any member is down, healthy or not: that is
        // the topology's cost (preflight warns about fewer than three members), not something
        // waiting would fix. What is refused is losing a quorum that all-healthy peers keep.
        let keepable = quorum.min(voters.saturating_sub(1));
        if healthy_after >= keepable {
            return Ok(());
        }
        let unhealthy = self.unhealthy();
        Err(EtcdRefusal::WouldLoseQuorum {
            member: name.to_string(),
            healthy_after,
            voters,
            quorum,
            unhealthy: if unhealthy.is_empty() { "none".into() } else { unhealthy.join(", ") },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: u64, healthy: bool) -> EtcdMember {
        EtcdMember {
            id,
            name: format!("etcd-{id}"),
            healthy,
            learner: false,
            problem: (!healthy).then(|| "connection refused".into()),
        }
    }

    #[test]
    fn three_members_one_down_refuses_a_second() {
        let h =
            EtcdHealth { members: vec![member(1, true), member(2, true), member(3, false)], alarms: vec![] };
        let e = h.may_take_down("etcd-1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "taking etcd member etcd-1 down would leave 1 healthy of 3 voting members, below the quorum of 2 (not healthy: etcd-3 (connection refused)); bring those members back first"
        );
        // The broken member itself may be upgraded.
        h.may_take_down("etcd-3").unwrap();
        assert!(h.check().unwrap_err().to_string().contains("etcd-3 (connection refused)"));
        assert!(matches!(h.may_take_down("etcd-9"), Err(EtcdRefusal::NotAMember(_))));
        let all =
            EtcdHealth { members: vec![member(1, true), member(2, true), member(3, true)], alarms: vec![] };
        all.check().unwrap();
        all.may_take_down("etcd-2").unwrap();
        // One or two members lose the quorum during any member's upgrade: allowed when the
        // others are healthy, refused when one of two is already down.
        EtcdHealth { members: vec![member(1, true)], alarms: vec![] }.may_take_down("etcd-1").unwrap();
        EtcdHealth { members: vec![member(1, true), member(2, true)], alarms: vec![] }
            .may_take_down("etcd-1")
            .unwrap();
        let two = EtcdHealth { members: vec![member(1, true), member(2, false)], alarms: vec![] };
        assert!(matches!(
            two.may_take_down("etcd-1"),
            Err(EtcdRefusal::WouldLoseQuorum { healthy_after: 0, quorum: 2, .. })
        ));
        two.may_take_down("etcd-2").unwrap();
    }

    #[test]
    fn alarms_refuse() {
        let h = EtcdHealth {
            members: vec![member(1, true), member(2, true), member(3, true)],
            alarms: vec![(2, EtcdAlarm::parse("NOSPACE"))],
        };
        let e = h.check().unwrap_err().to_string();
        assert!(e.contains("NOSPACE raised by member etcd-2") && e.contains("alarm disarm"), "{e}");
        assert!(h.may_take_down("etcd-1").is_err());
    }

    proptest! {
        /// Allowed exactly when the healthy voters other than the member form a majority of
        /// all voters (or, with one or two voters, are all the others); a learner may always go.
        #[test]
        fn quorum_rule(health in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..8), pick in 0usize..8) {
            let members: Vec<EtcdMember> = health.iter().enumerate().map(|(i, (healthy, learner))| EtcdMember {
                learner: *learner, ..member(i as u64, *healthy)
            }).collect();
            let h = EtcdHealth { members: members.clone(), alarms: vec![] };
            let target = &members[pick % members.len()];
            let voters = members.iter().filter(|m| !m.learner).count();
            let left = members.iter().filter(|m| !m.learner && m.healthy && m.id != target.id).count();
            let others = members.iter().filter(|m| !m.learner && m.id != target.id).count();
            // A majority stays, or (one or two voters) every other voter is healthy.
            let allowed = target.learner || 2 * left > voters || (voters <= 2 && left == others);
            prop_assert_eq!(h.may_take_down(&target.name).is_ok(), allowed);
        }
    }
}
