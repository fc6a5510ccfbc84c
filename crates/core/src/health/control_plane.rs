//! The control-plane gate: whether the control plane is healthy enough for refit to go on —
//! before the first change, before each etcd or control-plane member is taken down, and after
//! the last one. It combines what every apiserver's `/readyz?verbose` said with etcd's own
//! view (member list, each member's status, alarms) into one [`Observation`], so the soak rule
//! waits for a control plane that is settling and fails one that stays broken.
//!
//! Before an etcd member goes down the quorum rule decides ([`EtcdHealth::may_take_down`]):
//! a member already down may be upgraded (that costs no vote), a healthy one only when the
//! others keep the quorum. Everywhere else every member must be healthy and no alarm raised.

use super::etcd::{EtcdHealth, EtcdRefusal};
use super::soak::Observation;

/// The gate's name in events and reasons.
pub const GATE_NAME: &str = "control-plane";

/// What refit could learn from etcd in one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdView {
    /// No etcd access configured (`--etcd-endpoint` and its certificates): only the
    /// apiservers are checked, and the run says so once.
    NotConfigured,
    /// Configured, but no endpoint answered: the quorum cannot be shown to hold.
    Unreachable(String),
    /// What etcd said.
    Read(EtcdHealth),
}

/// One probe of the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneView {
    /// Every apiserver's problem (one line each, empty: all ready); `Err` when the apiservers
    /// could not even be listed.
    pub apiservers: Result<ApiserversView, String>,
    /// etcd.
    pub etcd: EtcdView,
}

/// The apiservers that answered and the problems of those that are not ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiserversView {
    /// How many apiservers were asked.
    pub asked: usize,
    /// One line per apiserver that is not ready (naming its failing checks) or did not answer.
    pub problems: Vec<String>,
}

/// What the gate is about to let happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment<'a> {
    /// Before the first change, or after the last member: everything must be healthy.
    Settled,
    /// Before the etcd member of this name (a node with the etcd role) goes down: the quorum
    /// rule decides for etcd.
    TakingDown(&'a str),
}

/// Judges one probe at `moment`: holds with what was seen, or fails naming every problem.
pub fn judge(view: &ControlPlaneView, moment: Moment<'_>) -> Observation {
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    match &view.apiservers {
        Ok(a) if a.problems.is_empty() => seen.push(format!("{} apiserver(s) ready", a.asked)),
        Ok(a) => problems.extend(a.problems.iter().cloned()),
        Err(e) => problems.push(format!("cannot list the apiservers: {e}")),
    }
    match &view.etcd {
        EtcdView::NotConfigured => {}
        EtcdView::Unreachable(e) => problems.push(format!("etcd: {e}")),
        EtcdView::Read(h) => {
            let verdict = match moment {
                // A member etcd does not list by the node's name (another naming than kubeadm's)
                // falls back to "every member healthy", which keeps the quorum whoever goes down.
                Moment::TakingDown(name) => match h.may_take_down(name) {
                    Err(EtcdRefusal::NotAMember(_)) => h.check(),
                    other => other,
                },
                Moment::Settled => h.check(),
            };
            match verdict {
                Ok(()) => seen.push(format!(
                    "etcd: {} of {} member(s) healthy, no alarm",
                    h.members.iter().filter(|m| m.healthy).count(),
                    h.members.len()
                )),
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    if problems.is_empty() {
        Observation::Holds(seen.join("; "))
    } else {
        Observation::Fails(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::etcd::{EtcdAlarm, EtcdMember};

    fn etcd(healthy: &[bool]) -> EtcdHealth {
        EtcdHealth {
            members: healthy
                .iter()
                .enumerate()
                .map(|(i, h)| EtcdMember {
                    id: i as u64 + 1,
                    name: format!("cp-{}", i + 1),
                    healthy: *h,
                    learner: false,
                    problem: (!h).then(|| "connection refused".into()),
                })
                .collect(),
            alarms: vec![],
        }
    }

    fn ready(n: usize) -> Result<ApiserversView, String> {
        Ok(ApiserversView { asked: n, problems: vec![] })
    }

    #[test]
    fn healthy_control_plane_holds() {
        let v = ControlPlaneView { apiservers: ready(3), etcd: EtcdView::Read(etcd(&[true, true, true])) };
        assert_eq!(
            judge(&v, Moment::Settled),
            Observation::Holds("3 apiserver(s) ready; etcd: 3 of 3 member(s) healthy, no alarm".into())
        );
        assert!(matches!(judge(&v, Moment::TakingDown("cp-2")), Observation::Holds(_)));
        let only_api = ControlPlaneView { apiservers: ready(1), etcd: EtcdView::NotConfigured };
        assert_eq!(judge(&only_api, Moment::Settled), Observation::Holds("1 apiserver(s) ready".into()));
    }

    #[test]
    fn failing_readyz_names_the_apiserver_and_check() {
        let v = ControlPlaneView {
            apiservers: Ok(ApiserversView {
                asked: 3,
                problems: vec!["apiserver https://10.0.0.2:6443 is not ready: failing etcd".into()],
            }),
            etcd: EtcdView::NotConfigured,
        };
        assert_eq!(
            judge(&v, Moment::Settled),
            Observation::Fails("apiserver https://10.0.0.2:6443 is not ready: failing etcd".into())
        );
        let unlisted =
            ControlPlaneView { apiservers: Err("forbidden".into()), etcd: EtcdView::NotConfigured };
        assert!(
            matches!(judge(&unlisted, Moment::Settled), Observation::Fails(r) if r.contains("forbidden"))
        );
    }

    #[test]
    fn quorum_decides_before_a_member_and_all_healthy_elsewhere() {
        let one_down =
            ControlPlaneView { apiservers: ready(3), etcd: EtcdView::Read(etcd(&[true, true, false])) };
        // The broken member may be upgraded; a healthy one may not go down.
        assert!(matches!(judge(&one_down, Moment::TakingDown("cp-3")), Observation::Holds(_)));
        let Observation::Fails(r) = judge(&one_down, Moment::TakingDown("cp-1")) else { panic!() };
        assert!(r.contains("would leave 1 healthy of 3") && r.contains("cp-3 (connection refused)"), "{r}");
        assert!(
            matches!(judge(&one_down, Moment::Settled), Observation::Fails(r) if r.contains("not healthy"))
        );
        // A node etcd does not know by name: every member must be healthy.
        assert!(matches!(judge(&one_down, Moment::TakingDown("other")), Observation::Fails(_)));
        let all = ControlPlaneView { apiservers: ready(3), etcd: EtcdView::Read(etcd(&[true, true, true])) };
        assert!(matches!(judge(&all, Moment::TakingDown("other")), Observation::Holds(_)));
        let unreachable = ControlPlaneView {
            apiservers: ready(3),
            etcd: EtcdView::Unreachable("no endpoint answered".into()),
        };
        assert!(
            matches!(judge(&unreachable, Moment::Settled), Observation::Fails(r) if r == "etcd: no endpoint answered")
        );
        let mut alarmed = etcd(&[true, true, true]);
        alarmed.alarms.push((2, EtcdAlarm::NoSpace));
        let v = ControlPlaneView { apiservers: ready(3), etcd: EtcdView::Read(alarmed) };
        for m in [Moment::Settled, Moment::TakingDown("cp-1")] {
            assert!(
                matches!(judge(&v, m), Observation::Fails(r) if r.contains("NOSPACE raised by member cp-2"))
            );
        }
    }
}
