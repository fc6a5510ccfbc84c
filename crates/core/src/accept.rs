//! Accepting findings one at a time: `--accept CHECK` / `--accept CHECK=SUBJECT` and the plan
//! file's `accept:` list.
//!
//! Kismatic's online upgrade stops on every condition of its safety and availability table
//! (seed 001). An operator who has looked at one finding and judged it harmless needs a way to
//! say so *for that finding*, without `--ignore-safety-checks` switching every other check off:
//! a new single-replica Deployment appearing tomorrow must block again. So an acceptance names
//! a check and, optionally, the exact subject the plan printed; an accepted finding is shown
//! apart from the open ones and recorded with the run, never silently dropped.
//!
//! Only the checks of Kismatic's table can be accepted. Readiness (a node not Ready, under
//! pressure), capacity, PDBs, skew and removed APIs are facts about whether the run can
//! succeed at all, not risks an operator can take on: they are fixed, or left to
//! `--partial-ok` / `--ignore-safety-checks`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checks::{Finding, Severity};
use crate::setting::{Setting, Spelled};

/// The checks an operator may accept one by one: Kismatic's safety and availability table, row
/// by row (`local-data` covers its three volume rows: emptyDir, hostPath, hostPath PV).
pub const ACCEPTABLE: &[&str] = &[
    "unmanaged-pod",
    "single-replica",
    "daemonset-single-node",
    "local-data",
    "etcd-members",
    "control-plane-count",
    "worker-count",
    "ingress-node",
    "storage-node",
];

/// Why an acceptance was refused (settings spelled by the edge: [`Spelled`]; a plan file's
/// `accept:` list reads the field names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptError {
    /// Not one of [`ACCEPTABLE`].
    UnknownCheck(String),
    /// `CHECK=` with nothing after it, or a subject with whitespace or control characters.
    BadSubject(String),
}

impl Spelled for AcceptError {
    fn spell(&self, name: &dyn Fn(Setting) -> String) -> String {
        let accept = name(Setting::Accept);
        match self {
            AcceptError::UnknownCheck(s) => format!(
                "{accept} '{s}': not a check that can be accepted (one of: {}); readiness, capacity, PDB, skew and removed-API blockers are fixed, or left to {} / {}",
                ACCEPTABLE.join(", "),
                name(Setting::PartialOk),
                name(Setting::IgnoreSafetyChecks)
            ),
            AcceptError::BadSubject(s) => format!(
                "{accept} '{s}': the subject after '=' must be one as the plan prints it (e.g. pod/NAMESPACE/NAME, deployment/NAMESPACE/NAME, node/NAME)"
            ),
        }
    }
}

crate::setting::display_with_fields!(AcceptError);

/// One acceptance: a check, and optionally the one subject it is accepted for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AcceptRule {
    /// The check's stable name (one of [`ACCEPTABLE`]).
    pub check: &'static str,
    /// The subject as the plan prints it (`pod/ns/name`, `node/w-1`); `None` accepts every
    /// finding of the check.
    pub subject: Option<String>,
}

impl AcceptRule {
    /// Whether this rule accepts `finding` (a blocker of the same check and, when the rule
    /// names one, the same subject).
    pub fn covers(&self, finding: &Finding) -> bool {
        finding.severity == Severity::Blocker
            && finding.check == self.check
            && self.subject.as_deref().is_none_or(|s| s == finding.subject)
    }

    /// The exact rule that accepts `finding` alone, when its check can be accepted: what the
    /// plan suggests next to an open blocker.
    pub fn exact(finding: &Finding) -> Option<AcceptRule> {
        let check = ACCEPTABLE.iter().copied().find(|c| *c == finding.check)?;
        Some(AcceptRule { check, subject: Some(finding.subject.clone()) })
    }
}

impl fmt::Display for AcceptRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Some(s) => write!(f, "{}={s}", self.check),
            None => f.write_str(self.check),
        }
    }
}

impl FromStr for AcceptRule {
    type Err = AcceptError;
    fn from_str(s: &str) -> Result<AcceptRule, AcceptError> {
        let (check, subject) = match s.split_once('=') {
            Some((c, subject)) => (c, Some(subject)),
            None => (s, None),
        };
        let check = ACCEPTABLE
            .iter()
            .copied()
            .find(|c| *c == check.trim())
            .ok_or_else(|| AcceptError::UnknownCheck(crate::identity::printable(s, false)))?;
        let subject = match subject.map(str::trim) {
            None => None,
            Some(sub) if sub.is_empty() || sub.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(AcceptError::BadSubject(crate::identity::printable(s, false)));
            }
            Some(sub) => Some(sub.to_string()),
        };
        Ok(AcceptRule { check, subject })
    }
}

impl Serialize for AcceptRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AcceptRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AcceptRule, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Where an acceptance came from, so the plan and the journal say who took the risk on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `--accept` on the command line.
    Flag,
    /// The plan file's `accept:` list.
    PlanFile,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Flag => "--accept",
            Origin::PlanFile => "plan file",
        })
    }
}

/// The acceptances of one command: the plan file's and the flags'.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptances(pub Vec<(AcceptRule, Origin)>);

impl Acceptances {
    /// The plan file's rules, then the flags'.
    pub fn new(plan_file: &[AcceptRule], flags: &[AcceptRule]) -> Acceptances {
        let file = plan_file.iter().map(|r| (r.clone(), Origin::PlanFile));
        Acceptances(file.chain(flags.iter().map(|r| (r.clone(), Origin::Flag))).collect())
    }

    /// Whether no finding is accepted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Splits `findings` into the open ones and the accepted ones (each with the first rule
    /// that covers it). Warnings and infos never need accepting and stay where they are.
    pub fn apply(&self, findings: Vec<Finding>) -> (Vec<Finding>, Vec<Accepted>) {
        let mut open = Vec::with_capacity(findings.len());
        let mut accepted = Vec::new();
        for finding in findings {
            match self.0.iter().find(|(rule, _)| rule.covers(&finding)) {
                Some((rule, origin)) => {
                    accepted.push(Accepted { finding, rule: rule.clone(), origin: *origin })
                }
                None => open.push(finding),
            }
        }
        (open, accepted)
    }

    /// The rules that accepted nothing (a typo in a subject, or a finding that went away):
    /// worth a warning, never an error — the cluster moves between plan and run.
    pub fn unused<'a>(&'a self, accepted: &[Accepted]) -> Vec<&'a AcceptRule> {
        self.0.iter().map(|(r, _)| r).filter(|r| !accepted.iter().any(|a| &a.rule == *r)).collect()
    }
}

/// A blocker the operator accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// The finding, as the check reported it (its fields beside `rule` and `origin` in JSON).
    #[serde(flatten)]
    pub finding: Finding,
    /// The rule that accepted it.
    pub rule: AcceptRule,
    /// Where the rule came from.
    pub origin: Origin,
}

/// An accepted blocker as a run records it (its spec in the journal): plain values, so a
/// stored run reads back whatever checks a later refit knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The check's name.
    pub check: String,
    /// What it concerned.
    pub subject: String,
    /// The node, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The rule that accepted it (`CHECK` or `CHECK=SUBJECT`).
    pub rule: String,
    /// Where the rule came from.
    pub origin: Origin,
    /// The finding's message: the risk taken on.
    pub message: String,
}

impl From<&Accepted> for Record {
    fn from(a: &Accepted) -> Record {
        Record {
            check: a.finding.check.to_string(),
            subject: a.finding.subject.clone(),
            node: a.finding.node.clone(),
            rule: a.rule.to_string(),
            origin: a.origin,
            message: a.finding.message.clone(),
        }
    }
}

impl fmt::Display for Record {
    /// One line for the run's events: `accepted (--accept single-replica=deployment/a/b): ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted ({} {}): {} {}: {}",
            self.origin, self.rule, self.check, self.subject, self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(check: &'static str, subject: &str) -> Finding {
        Finding {
            check,
            severity: Severity::Blocker,
            subject: subject.into(),
            node: Some("w-1".into()),
            message: "m".into(),
            remedy: None,
        }
    }

    #[test]
    fn rules_parse_print_and_refuse_what_cannot_be_accepted() {
        let r: AcceptRule = "single-replica=deployment/shop/web".parse().unwrap();
        assert_eq!(r.check, "single-replica");
        assert_eq!(r.subject.as_deref(), Some("deployment/shop/web"));
        assert_eq!(r.to_string(), "single-replica=deployment/shop/web");
        assert_eq!("worker-count".parse::<AcceptRule>().unwrap().subject, None);
        for bad in ["capacity", "node-not-ready", "", "single_replica", "=pod/a/b", "version-skew=node/w"] {
            assert!(matches!(bad.parse::<AcceptRule>(), Err(AcceptError::UnknownCheck(_))), "{bad}");
        }
        for bad in ["local-data=", "local-data= ", "local-data=pod/a b", "local-data=pod/\u{1b}[2J"] {
            assert!(matches!(bad.parse::<AcceptRule>(), Err(AcceptError::BadSubject(_))), "{bad:?}");
        }
        let e = "pdb-never-allows".parse::<AcceptRule>().unwrap_err().to_string();
        assert!(e.contains("local-data") && !e.contains('\n'), "{e}");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"single-replica=deployment/shop/web\"");
        assert_eq!(serde_json::from_str::<AcceptRule>(&json).unwrap(), r);
        assert!(serde_json::from_str::<AcceptRule>("\"capacity\"").is_err());
    }

    #[test]
    fn a_subject_rule_accepts_exactly_its_subject_and_a_bare_rule_the_whole_check() {
        let findings = vec![
            blocker("single-replica", "deployment/shop/web"),
            blocker("single-replica", "deployment/shop/db"),
            blocker("local-data", "pod/shop/cache"),
            blocker("capacity", "pod/shop/big"),
            Finding { severity: Severity::Warning, ..blocker("local-data", "pod/shop/logs") },
        ];
        let rules = Acceptances::new(
            &["local-data".parse().unwrap()],
            &["single-replica=deployment/shop/web".parse().unwrap(), "worker-count".parse().unwrap()],
        );
        let (open, accepted) = rules.apply(findings);
        let open: Vec<&str> = open.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(
            open,
            ["deployment/shop/db", "pod/shop/big", "pod/shop/logs"],
            "warnings stay as they are"
        );
        let got: Vec<(&str, Origin)> =
            accepted.iter().map(|a| (a.finding.subject.as_str(), a.origin)).collect();
        assert_eq!(got, [("deployment/shop/web", Origin::Flag), ("pod/shop/cache", Origin::PlanFile)]);
        let unused: Vec<String> = rules.unused(&accepted).iter().map(|r| r.to_string()).collect();
        assert_eq!(unused, ["worker-count"]);
    }

    #[test]
    fn the_suggested_rule_accepts_that_finding_alone() {
        let f = blocker("ingress-node", "node/w-1");
        let rule = AcceptRule::exact(&f).unwrap();
        assert_eq!(rule.to_string(), "ingress-node=node/w-1");
        assert!(rule.covers(&f) && !rule.covers(&blocker("ingress-node", "node/w-2")));
        assert_eq!(AcceptRule::exact(&blocker("capacity", "pod/a/b")), None);
    }
}
