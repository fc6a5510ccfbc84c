//! Which versions a node action can reach, decided before anything changes.
//!
//! Why: a target the action cannot deliver used to surface only inside a node's upgrade step —
//! after refit had cordoned and drained that node (`--to 1.37` resolved to the catalog's 1.37.2
//! while the node's repository had 1.37.1). The action's probe observes what each node can reach
//! (the exec crate: the ssh action asks the node's package repository of each minor, an exec
//! action runs the plan file's `probe`, the sandbox knows its buildable releases); this module
//! decides, purely:
//!
//! - [`needs`]: the versions each node must reach — every stage of the schedule that moves it
//!   (control-plane members every hop, workers their stages), so probe and run agree;
//! - [`narrow`]: the catalog cut down to the patches every asked node can reach, so that a
//!   minor-only `--to` (and every intermediate hop) lands on the newest patch the nodes all offer,
//!   still within the catalog's rules (a patch the catalog does not know is never chosen);
//! - [`findings`]: a blocker for every node that cannot reach a version it needs, whose probe
//!   failed, or whose apt pins would take the packages back below the target later.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::checks::{Finding, Severity};
use crate::run::Schedule;
use crate::version::{MinorVersion, Version, VersionRequest};

/// The check of a node that cannot reach a version it needs.
pub const TARGET_UNREACHABLE: &str = "target-unreachable";
/// The check of a node whose probe could not run.
pub const PROBE_FAILED: &str = "target-probe-failed";
/// The check of a node whose apt preferences pin the packages below the target.
pub const APT_PIN: &str = "apt-pin";
/// The check of a first control-plane node whose `kubeadm upgrade plan` refused the target.
pub const KUBEADM_PLAN: &str = "kubeadm-plan";
/// The note that says how a minor-only `--to` was resolved.
pub const TARGET_RESOLVED: &str = "target-resolved";

/// What a probe saw for one minor on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinorOffer {
    /// Releases at which the node can get everything the action installs (for the ssh
    /// action: kubeadm, kubelet and kubectl all offered at that version).
    pub releases: BTreeSet<Version>,
    /// The package manager's view of each package with the node's own preferences (pins)
    /// applied; empty when the action installs no packages.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packages: BTreeMap<String, PackagePolicy>,
    /// Why nothing could be listed (e.g. the repository of that minor answered with an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// apt's policy for one package (`apt-cache policy`), with the target minor's repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePolicy {
    /// The version apt would install without an explicit one, as it writes it (`1.36.4-1.1`,
    /// `(none)`).
    pub candidate: String,
    /// The version table: each version apt knows, its pin priority, and whether a repository
    /// offers it (false: it is only the installed package).
    pub versions: BTreeMap<String, PinnedVersion>,
}

/// One row of apt's version table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedVersion {
    /// Its pin priority (500 by default, 100 installed-only, above 1000 allows downgrades,
    /// below 0 forbids it).
    pub priority: i32,
    /// Whether a repository offers it (as opposed to only the dpkg status of the installed one).
    pub offered: bool,
}

/// What a probe saw on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Observation {
    /// The releases the node can reach, per minor asked about.
    Offers {
        /// Per minor.
        minors: BTreeMap<MinorVersion, MinorOffer>,
        /// Preference files that pin the packages (`/etc/apt/preferences.d/...`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pin_files: Vec<String>,
    },
    /// Only a yes or no for each version asked about (an exec action's `probe` command).
    Answers {
        /// Per version: reachable, and the probe's own words when it said no.
        versions: BTreeMap<Version, Result<(), String>>,
    },
    /// The probe could not tell (no connection, an unexpected error).
    Failed {
        /// Why.
        reason: String,
    },
}

/// The versions each node must reach, from the schedule a run would execute: a control-plane
/// member needs every hop, a worker the versions of its stages.
pub fn needs(schedule: &Schedule) -> BTreeMap<String, BTreeSet<Version>> {
    let mut out: BTreeMap<String, BTreeSet<Version>> = BTreeMap::new();
    for (_, unit) in schedule.units() {
        out.entry(unit.node.clone()).or_default().insert(unit.to.clone());
    }
    out
}

/// The first control-plane member of the first control-plane stage and that stage's version:
/// where the kubeadm recipe runs `kubeadm upgrade plan` and `apply` first.
pub fn first_control_plane(schedule: &Schedule) -> Option<(String, Version)> {
    schedule.units().map(|(_, u)| u).find(|u| u.first_control_plane).map(|u| (u.node.clone(), u.to.clone()))
}

/// The catalog with the patches of every minor after `from` cut down to those every node asked
/// about that minor can reach. A minor nobody was asked about, or whose intersection is empty
/// (then [`findings`] blocks), keeps the catalog's patches; so does `keep` (an exact `--to`
/// chooses its own patch).
pub fn narrow(
    catalog: &Catalog,
    from: MinorVersion,
    keep: Option<MinorVersion>,
    observed: &BTreeMap<String, Observation>,
) -> Catalog {
    let mut out = catalog.clone();
    for release in out.releases.iter_mut().filter(|r| r.minor > from && Some(r.minor) != keep) {
        let mut reachable: Option<BTreeSet<Version>> = None;
        for obs in observed.values() {
            let offered: BTreeSet<Version> = match obs {
                Observation::Offers { minors, .. } => match minors.get(&release.minor) {
                    Some(offer) => offer.releases.iter().map(Version::release).collect(),
                    None => continue,
                },
                Observation::Answers { versions } => {
                    let asked: Vec<&Version> =
                        versions.keys().filter(|v| v.minor_version() == release.minor).collect();
                    if asked.is_empty() {
                        continue;
                    }
                    versions
                        .iter()
                        .filter(|(v, answer)| v.minor_version() == release.minor && answer.is_ok())
                        .map(|(v, _)| v.release())
                        .collect()
                }
                Observation::Failed { .. } => continue,
            };
            reachable = Some(match reachable {
                None => offered,
                Some(r) => r.intersection(&offered).cloned().collect(),
            });
        }
        if let Some(r) = reachable {
            let kept: Vec<Version> = release.patches.iter().filter(|p| r.contains(*p)).cloned().collect();
            if !kept.is_empty() {
                release.patches = kept;
            }
        }
    }
    out
}

/// The minor `narrow` must leave alone for this request: an exact target's own.
pub fn kept_minor(request: &VersionRequest) -> Option<MinorVersion> {
    match request {
        VersionRequest::Exact(v) => Some(v.minor_version()),
        VersionRequest::Minor(_) => None,
    }
}

/// An Info finding saying how a minor-only `--to` was resolved, when what the nodes can reach
/// made it differ from the catalog's newest patch.
pub fn resolution_note(
    request: &VersionRequest,
    catalog_target: &Version,
    target: &Version,
) -> Option<Finding> {
    match request {
        VersionRequest::Minor(m) if catalog_target != target => Some(Finding {
            check: TARGET_RESOLVED,
            severity: Severity::Info,
            subject: "cluster".into(),
            node: None,
            message: format!(
                "target {m} is {target}: the newest patch every node can reach (the catalog's newest is {catalog_target})"
            ),
            remedy: None,
        }),
        _ => None,
    }
}

/// A blocker on the first control-plane node: the target's own `kubeadm upgrade plan` refused
/// there (the recipe runs the same plan first, so the run would stop on that node, cordoned).
pub fn kubeadm_plan_refused(node: &str, version: &Version, error: &str) -> Finding {
    Finding {
        check: KUBEADM_PLAN,
        severity: Severity::Blocker,
        subject: format!("node/{node}"),
        node: Some(node.to_string()),
        message: format!("kubeadm upgrade plan {} refused: {error}", version.git_version()),
        remedy: None,
    }
}

/// Whether `plan` must stop although its mode ignores safety checks: `--ignore-safety-checks`
/// waives what is unsafe, not what is impossible — a node that cannot reach its target, a
/// probe that could not tell, or kubeadm refusing would fail inside that node's step, after
/// its cordon. (Online mode blocks on them like on any blocker; `--partial-ok` may leave such
/// workers out.)
pub fn blocks_regardless_of_mode(plan: &crate::plan::Plan) -> bool {
    plan.mode == crate::plan::Mode::IgnoreSafetyChecks
        && plan.findings.iter().any(|f| {
            f.severity == Severity::Blocker
                && matches!(f.check, TARGET_UNREACHABLE | PROBE_FAILED | KUBEADM_PLAN)
        })
}

/// The target an unfinished run must have for `request` to continue it (see
/// [`crate::run::continuation`]): an exact request its own release; a minor request the
/// unfinished run's target when that is a patch of the minor — which patch was decided by what
/// the nodes could reach when the run started — else the catalog's newest patch.
pub fn continued_target(
    request: &VersionRequest,
    catalog: &Catalog,
    unfinished: Option<&str>,
) -> Option<Version> {
    match request {
        VersionRequest::Exact(v) => Some(v.release()),
        VersionRequest::Minor(m) => unfinished
            .and_then(|t| t.parse::<Version>().ok())
            .filter(|t| t.minor_version() == *m)
            .or_else(|| catalog.newest_patch(*m).cloned()),
    }
}

/// Strips a package revision (`1.37.1-1.1` → 1.37.1); None when it is not a version.
pub fn package_release(text: &str) -> Option<Version> {
    let upstream = text.split_once('-').map_or(text, |(v, _)| v);
    // An epoch (`1:1.37.1-1.1`) is the packager's, not Kubernetes'.
    let upstream = upstream.rsplit_once(':').map_or(upstream, |(_, v)| v);
    upstream.parse::<Version>().ok().map(|v| v.release())
}

/// Blockers for nodes that cannot reach what they need, whose probe failed, or whose pins put
/// the package manager's candidate below the final version (after the upgrade, the next unhold
/// and upgrade of the packages would take the node back down).
pub fn findings(
    needs: &BTreeMap<String, BTreeSet<Version>>,
    observed: &BTreeMap<String, Observation>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (node, wanted) in needs {
        let Some(obs) = observed.get(node) else { continue };
        let blocker = |check: &'static str, message: String| Finding {
            check,
            severity: Severity::Blocker,
            subject: format!("node/{node}"),
            node: Some(node.clone()),
            message,
            remedy: None,
        };
        match obs {
            Observation::Failed { reason } => out.push(blocker(
                PROBE_FAILED,
                format!("cannot tell whether the node can reach {}: {reason}", list(wanted)),
            )),
            Observation::Answers { versions } => {
                for v in wanted {
                    match versions.get(v) {
                        Some(Ok(())) => {}
                        Some(Err(why)) => out.push(blocker(
                            TARGET_UNREACHABLE,
                            format!("the action's probe says {v} cannot be reached: {why}"),
                        )),
                        None => out.push(blocker(PROBE_FAILED, format!("the probe was not asked about {v}"))),
                    }
                }
            }
            Observation::Offers { minors, pin_files } => {
                for v in wanted {
                    let offer = minors.get(&v.minor_version());
                    let offered =
                        offer.is_some_and(|o| o.releases.iter().any(|r| r.release() == v.release()));
                    if offered {
                        continue;
                    }
                    let seen = match offer {
                        None => "it was not asked about that minor".to_string(),
                        Some(o) => match (&o.error, o.releases.is_empty()) {
                            (Some(e), _) => e.clone(),
                            (None, true) => format!("nothing of {} is offered", v.minor_version()),
                            (None, false) => format!("offered: {}", list(&o.releases)),
                        },
                    };
                    out.push(blocker(
                        TARGET_UNREACHABLE,
                        format!("{v} is not offered to this node ({seen})"),
                    ));
                }
                // Pins matter for where the node ends: its last version.
                let Some(last) = wanted.iter().next_back() else { continue };
                let Some(offer) = minors.get(&last.minor_version()) else { continue };
                let files = if pin_files.is_empty() {
                    "/etc/apt/preferences, /etc/apt/preferences.d".to_string()
                } else {
                    pin_files.join(", ")
                };
                for (package, policy) in &offer.packages {
                    if let Some(problem) = pin_problem(policy, last) {
                        out.push(blocker(APT_PIN, format!("{package}: {problem} ({files})")));
                    }
                }
            }
        }
    }
    out
}

/// What is wrong with a package's pins for reaching `target`, if anything. The recipe installs
/// the exact version, which apt does whatever the pins say; what a pin still changes is what
/// happens afterwards, and whether the operator meant to forbid the target:
/// - a version at the target pinned below 0: the operator's preferences forbid it;
/// - a candidate below the target that a repository still offers (a pin above 1000 on the old
///   minor, with a repository that serves it): the next unhold and install or dist-upgrade
///   takes the package back down. An old candidate that is only the installed package is no
///   risk — once the target is installed, nothing offers the old one.
pub fn pin_problem(policy: &PackagePolicy, target: &Version) -> Option<String> {
    let forbidding = policy
        .versions
        .iter()
        .find(|(v, row)| row.priority < 0 && package_release(v).as_ref() == Some(&target.release()));
    if let Some((v, row)) = forbidding {
        return Some(format!(
            "this node's apt preferences forbid {v} (pin priority {}); the recipe's exact install would override the pin: remove the pin, or allow {}.* if the upgrade is meant",
            row.priority,
            target.minor_version()
        ));
    }
    let candidate = package_release(&policy.candidate)?;
    let offered = policy.versions.get(&policy.candidate).is_some_and(|row| row.offered);
    (candidate < target.release() && offered).then(|| {
        format!(
            "with this node's apt pins the candidate is {}, below {target}, and a repository still offers it: the recipe installs {target} by its exact version, but the next unhold and install would take the package back down; update the pin to {}.* or remove it",
            policy.candidate,
            target.minor_version()
        )
    })
}

fn list<'a>(versions: impl IntoIterator<Item = &'a Version>) -> String {
    versions.into_iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{Policy, upgrade_path};
    use crate::plan::{MaxUnavailable, Mode, PlanOptions};
    use crate::run::{Style, schedule};
    use crate::snapshot::Snapshot;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn m(s: &str) -> MinorVersion {
        s.parse().unwrap()
    }

    fn offers(minor: &str, releases: &[&str]) -> Observation {
        Observation::Offers {
            minors: BTreeMap::from([(
                m(minor),
                MinorOffer { releases: releases.iter().map(|r| v(r)).collect(), ..Default::default() },
            )]),
            pin_files: vec![],
        }
    }

    fn today() -> jiff::civil::Date {
        jiff::civil::date(2026, 11, 1)
    }

    /// A cluster of one control plane and two workers at `from`, and the schedule to `to`.
    fn sched(catalog: &Catalog, from: &str, to: &VersionRequest) -> Schedule {
        let nodes = vec![
            crate::snapshot::build::node("cp-1").kubelet(&format!("v{from}")).control_plane(),
            crate::snapshot::build::node("w-1").kubelet(&format!("v{from}")),
            crate::snapshot::build::node("w-2").kubelet(&format!("v{from}")),
        ];
        let snapshot = Snapshot { nodes, ..Default::default() };
        let path = upgrade_path(catalog, &v(from), to, Policy::Default, false, today()).unwrap();
        let opts = PlanOptions {
            target: path.to.clone(),
            max_unavailable: MaxUnavailable::Count(1),
            mode: Mode::Online,
            partial_ok: false,
            force: false,
            control_plane_only: false,
            extra_roles: Default::default(),
        };
        let plan = crate::plan::build(&snapshot, vec![], &opts).unwrap();
        schedule(&plan, &path, Style::InPlace, 1, true)
    }

    #[test]
    fn a_minor_request_lands_on_the_newest_patch_every_node_offers() {
        let catalog = Catalog::embedded().unwrap();
        let newest = catalog.newest_patch(m("1.37")).unwrap().clone();
        let request = VersionRequest::Minor(m("1.37"));
        let observed = BTreeMap::from([
            ("cp-1".to_string(), offers("1.37", &["1.37.0", "1.37.1"])),
            ("w-1".to_string(), offers("1.37", &["1.37.0", "1.37.1", &newest.to_string()])),
            // A repository offering a patch the catalog does not know changes nothing.
            ("w-2".to_string(), offers("1.37", &["1.37.1", "1.37.99"])),
        ]);
        let narrowed = narrow(&catalog, m("1.36"), kept_minor(&request), &observed);
        let path = upgrade_path(&narrowed, &v("1.36.4"), &request, Policy::Default, false, today()).unwrap();
        assert_eq!(path.to, v("1.37.1"));
        let note = resolution_note(&request, &newest, &path.to).unwrap();
        assert!(
            note.message.contains("1.37.1") && note.message.contains(&newest.to_string()),
            "{}",
            note.message
        );
        let s = sched(&narrowed, "1.36.4", &request);
        assert!(findings(&needs(&s), &observed).is_empty());
    }

    #[test]
    fn an_exact_target_is_kept_and_nodes_without_it_block() {
        let catalog = Catalog::embedded().unwrap();
        let request = VersionRequest::Exact(v("1.37.1"));
        let observed = BTreeMap::from([
            ("cp-1".to_string(), offers("1.37", &["1.37.1"])),
            ("w-1".to_string(), offers("1.37", &["1.37.0"])),
            ("w-2".to_string(), Observation::Failed { reason: "ssh: connection refused".into() }),
        ]);
        let narrowed = narrow(&catalog, m("1.36"), kept_minor(&request), &observed);
        assert_eq!(
            narrowed.release(m("1.37")),
            catalog.release(m("1.37")),
            "an exact target's minor is kept"
        );
        let s = sched(&narrowed, "1.36.4", &request);
        let f = findings(&needs(&s), &observed);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!((f[0].check, f[0].node.as_deref()), (TARGET_UNREACHABLE, Some("w-1")));
        assert!(f[0].message.contains("offered: 1.37.0"), "{}", f[0].message);
        assert_eq!((f[1].check, f[1].node.as_deref()), (PROBE_FAILED, Some("w-2")));
        assert!(f.iter().all(|f| f.severity == Severity::Blocker));
    }

    #[test]
    fn intermediate_hops_take_what_the_control_plane_can_reach() {
        let catalog = Catalog::embedded().unwrap();
        let request = VersionRequest::Minor(m("1.37"));
        let cp = Observation::Offers {
            minors: BTreeMap::from([
                (m("1.36"), MinorOffer { releases: [v("1.36.4")].into(), ..Default::default() }),
                (m("1.37"), MinorOffer { releases: [v("1.37.1")].into(), ..Default::default() }),
            ]),
            pin_files: vec![],
        };
        let observed = BTreeMap::from([
            ("cp-1".to_string(), cp),
            ("w-1".to_string(), offers("1.37", &["1.37.1"])),
            ("w-2".to_string(), offers("1.37", &["1.37.1"])),
        ]);
        let narrowed = narrow(&catalog, m("1.35"), kept_minor(&request), &observed);
        let s = sched(&narrowed, "1.35.8", &request);
        let need = needs(&s);
        assert_eq!(need["cp-1"], [v("1.36.4"), v("1.37.1")].into());
        assert_eq!(need["w-1"], [v("1.37.1")].into(), "workers go once");
        assert_eq!(first_control_plane(&s), Some(("cp-1".into(), v("1.36.4"))));
        assert!(findings(&need, &observed).is_empty());
    }

    #[test]
    fn exec_answers_and_pins() {
        let need = BTreeMap::from([("w-1".to_string(), BTreeSet::from([v("1.37.1")]))]);
        let no = Observation::Answers { versions: BTreeMap::from([(v("1.37.1"), Err("not built".into()))]) };
        let f = findings(&need, &BTreeMap::from([("w-1".to_string(), no)]));
        assert_eq!(f[0].check, TARGET_UNREACHABLE);
        assert!(f[0].message.contains("not built"));
        let yes = Observation::Answers { versions: BTreeMap::from([(v("1.37.1"), Ok(()))]) };
        assert!(findings(&need, &BTreeMap::from([("w-1".to_string(), yes)])).is_empty());

        let policy = |candidate: &str, rows: &[(&str, i32, bool)]| PackagePolicy {
            candidate: candidate.into(),
            versions: rows
                .iter()
                .map(|(v, priority, offered)| {
                    (v.to_string(), PinnedVersion { priority: *priority, offered: *offered })
                })
                .collect(),
        };
        let pinned = |p: PackagePolicy| Observation::Offers {
            minors: BTreeMap::from([(
                m("1.37"),
                MinorOffer {
                    releases: [v("1.37.1")].into(),
                    packages: BTreeMap::from([("kubeadm".to_string(), p)]),
                    error: None,
                },
            )]),
            pin_files: vec!["/etc/apt/preferences.d/kube".into()],
        };
        let check = |p: PackagePolicy| findings(&need, &BTreeMap::from([("w-1".to_string(), pinned(p))]));
        // 1001 on 1.36.* with a repository that still serves 1.36.4: a later downgrade.
        let f = check(policy("1.36.4-1.1", &[("1.37.1-1.1", 500, true), ("1.36.4-1.1", 1001, true)]));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].check, APT_PIN);
        assert!(f[0].message.contains("take the package back down"), "{}", f[0].message);
        assert!(f[0].message.contains("/etc/apt/preferences.d/kube") && f[0].message.contains("1.37.*"));
        // -1 on the target: the operator forbids it.
        let f = check(policy("1.36.4-1.1", &[("1.37.1-1.1", -1, true), ("1.36.4-1.1", 100, false)]));
        assert!(f[0].message.contains("forbid 1.37.1-1.1 (pin priority -1)"), "{}", f[0].message);
        // The per-minor layout: the old candidate is only the installed package, nothing offers it
        // once the target is installed.
        assert!(
            check(policy("1.36.4-1.1", &[("1.37.1-1.1", 500, true), ("1.36.4-1.1", 1001, false)])).is_empty()
        );
        for fine in ["1.37.1-1.1", "1.37.2-1.1", "(none)"] {
            assert!(check(policy(fine, &[("1.37.1-1.1", 500, true)])).is_empty(), "{fine}");
        }
    }

    #[test]
    fn ignoring_safety_checks_does_not_ignore_an_unreachable_target() {
        let snapshot = Snapshot {
            nodes: vec![
                crate::snapshot::build::node("cp-1").kubelet("v1.36.4").control_plane(),
                crate::snapshot::build::node("w-1").kubelet("v1.36.4"),
            ],
            ..Default::default()
        };
        let need = BTreeMap::from([("w-1".to_string(), BTreeSet::from([v("1.37.1")]))]);
        let f = findings(&need, &BTreeMap::from([("w-1".to_string(), offers("1.37", &["1.37.0"]))]));
        let mut opts = PlanOptions {
            target: v("1.37.1"),
            max_unavailable: MaxUnavailable::Count(1),
            mode: Mode::IgnoreSafetyChecks,
            partial_ok: false,
            force: false,
            control_plane_only: false,
            extra_roles: Default::default(),
        };
        let plan = crate::plan::build(&snapshot, f.clone(), &opts).unwrap();
        assert!(!plan.blocked && blocks_regardless_of_mode(&plan));
        opts.mode = Mode::Online;
        let plan = crate::plan::build(&snapshot, f.clone(), &opts).unwrap();
        assert!(plan.blocked && !blocks_regardless_of_mode(&plan));
        opts.partial_ok = true;
        let plan = crate::plan::build(&snapshot, f, &opts).unwrap();
        assert!(!plan.blocked, "--partial-ok leaves the worker out");
    }

    #[test]
    fn a_minor_request_continues_the_patch_its_run_chose() {
        let catalog = Catalog::embedded().unwrap();
        let minor = VersionRequest::Minor(m("1.37"));
        assert_eq!(continued_target(&minor, &catalog, Some("1.37.1")), Some(v("1.37.1")));
        let newest = catalog.newest_patch(m("1.37")).cloned();
        assert_eq!(continued_target(&minor, &catalog, Some("1.36.4")), newest);
        assert_eq!(continued_target(&minor, &catalog, None), newest);
        let exact = VersionRequest::Exact(v("1.37.0"));
        assert_eq!(continued_target(&exact, &catalog, Some("1.37.1")), Some(v("1.37.0")));
    }

    #[test]
    fn package_versions() {
        assert_eq!(package_release("1.37.1-1.1"), Some(v("1.37.1")));
        assert_eq!(package_release("1:1.37.1-1.1"), Some(v("1.37.1")));
        assert_eq!(package_release("1.37.1"), Some(v("1.37.1")));
        assert_eq!(package_release("(none)"), None);
    }

    proptest! {
        /// Narrowing only ever removes patches, never empties a minor, and leaves the kept
        /// minor and the minors up to `from` exactly as the catalog has them.
        #[test]
        fn narrowing_keeps_the_catalogs_rules(picks in proptest::collection::vec(proptest::collection::vec(0u32..12, 0..6), 0..4), exact in any::<bool>()) {
            let catalog = Catalog::embedded().unwrap();
            let observed: BTreeMap<String, Observation> = picks
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let releases: Vec<String> = p.iter().map(|n| format!("1.37.{n}")).collect();
                    let refs: Vec<&str> = releases.iter().map(String::as_str).collect();
                    (format!("n-{i}"), offers("1.37", &refs))
                })
                .collect();
            let keep = exact.then(|| m("1.37"));
            let narrowed = narrow(&catalog, m("1.36"), keep, &observed);
            for (a, b) in catalog.releases.iter().zip(&narrowed.releases) {
                prop_assert!(!b.patches.is_empty());
                prop_assert!(b.patches.iter().all(|p| a.patches.contains(p)));
                if a.minor <= m("1.36") || Some(a.minor) == keep {
                    prop_assert_eq!(&a.patches, &b.patches);
                }
            }
        }
    }
}
