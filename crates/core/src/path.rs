//! Where a cluster may go from here: upgrade targets and hop paths.
//!
//! The control plane moves one minor at a time (never skipping one, even with a single
//! apiserver). Within a minor any higher patch is fine. Two policies decide when the next minor
//! is reachable: `default` (from any patch, as upstream and kubeadm allow) and `strict` (only
//! from the newest patch of the current minor, as Kismatic requires). Each intermediate hop
//! lands on the newest known patch of its minor; the last lands on the requested release.

use jiff::civil::Date;
use serde::Serialize;

use crate::catalog::{Catalog, Support};
use crate::version::{MinorVersion, Version, VersionRequest};

/// When the next minor is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Any higher patch; the next minor from any patch.
    #[default]
    Default,
    /// The next minor only from the newest patch of the current one.
    Strict,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Policy::Default),
            "strict" => Ok(Policy::Strict),
            _ => Err(format!("unknown policy '{s}': expected default or strict")),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Default => "default",
            Policy::Strict => "strict",
        })
    }
}

/// One step of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// Version before the hop.
    pub from: Version,
    /// Version after the hop.
    pub to: Version,
}

impl Hop {
    /// Whether the hop changes the minor.
    pub fn is_minor(&self) -> bool {
        self.from.minor_version() != self.to.minor_version()
    }
}

/// The hops from a version to a target, with what `--force` had to override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradePath {
    /// Where the cluster is.
    pub from: Version,
    /// Where it will be.
    pub to: Version,
    /// The hops, in order (empty when already at the target).
    pub hops: Vec<Hop>,
    /// What `--force` overrode (end of life, unknown release, downgrade); empty otherwise.
    pub forced: Vec<Forced>,
}

/// One thing `--force` overrode. Decisions match on the variant (a downgrade needs its own
/// confirmation); the text, also the JSON form, is only for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// The target is not a release the catalog knows.
    NotInCatalog(Version),
    /// The target's minor reached end of life (`since`: the date, or "an unknown date").
    EndOfLife {
        /// The minor.
        minor: MinorVersion,
        /// When.
        since: String,
    },
    /// The target is older than the cluster.
    Downgrade {
        /// The cluster's version.
        from: Version,
        /// The target.
        to: Version,
    },
}

impl Forced {
    /// Whether this is a downgrade.
    pub fn is_downgrade(&self) -> bool {
        matches!(self, Forced::Downgrade { .. })
    }
}

impl std::fmt::Display for Forced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forced::NotInCatalog(target) => write!(f, "{target} is not in the catalog"),
            Forced::EndOfLife { minor, since } => write!(f, "{minor} reached end of life on {since}"),
            Forced::Downgrade { from, to } => write!(f, "downgrade from {from} to {to}"),
        }
    }
}

impl Serialize for Forced {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why no path was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is older than the current version.
    #[error("{to} is older than {from}: downgrades are not supported upstream; refit refuses them")]
    Downgrade {
        /// Current.
        from: String,
        /// Requested.
        to: String,
    },
    /// The target release is not in the catalog.
    #[error("{to} is not a known Kubernetes release (the catalog knows {known})")]
    UnknownRelease {
        /// Requested.
        to: String,
        /// The known patches of that minor, or "no 1.x releases".
        known: String,
    },
    /// A minor with no known patch (an unknown minor, or a gap the path must cross).
    #[error("no known release of {minor}: the catalog ends at {newest}")]
    UnknownMinor {
        /// The minor.
        minor: MinorVersion,
        /// Newest minor in the catalog.
        newest: MinorVersion,
    },
    /// The target minor is out of support.
    #[error("{to} reached end of life on {since}: choose a supported target (see `refit versions`)")]
    EndOfLife {
        /// Requested.
        to: String,
        /// Support ended.
        since: String,
    },
}

impl PathError {
    /// The ways out a front end offers with the message (core names no flag: the CLI renders
    /// these as `--force`, `refit catalog update`, an API as fields).
    pub fn remedies(&self) -> Vec<crate::remedy::Remedy> {
        use crate::remedy::Remedy;
        match self {
            PathError::Downgrade { .. } | PathError::EndOfLife { .. } => vec![Remedy::OverrideVersionRule],
            PathError::UnknownRelease { .. } => vec![Remedy::RefreshCatalog, Remedy::OverrideVersionRule],
            PathError::UnknownMinor { .. } => vec![Remedy::RefreshCatalog],
        }
    }
}

/// Targets reachable in one control-plane step from `from` under `policy`, ascending.
pub fn upgrade_targets(catalog: &Catalog, from: &Version, policy: Policy) -> Vec<Version> {
    let minor = from.minor_version();
    let mut out: Vec<Version> = catalog
        .release(minor)
        .map(|r| r.patches.iter().filter(|p| *p > from).cloned().collect())
        .unwrap_or_default();
    let at_newest = catalog.newest_patch(minor).is_none_or(|newest| from >= newest);
    if (policy == Policy::Default || at_newest)
        && let Some(next) = catalog.release(minor.next())
    {
        out.extend(next.patches.iter().cloned());
    }
    out
}

/// The hop path from `from` to `to`.
///
/// `force` lets an end-of-life or unknown target, or a downgrade, through; each override is
/// listed in [`UpgradePath::forced`] so the output can say so.
pub fn upgrade_path(
    catalog: &Catalog,
    from: &Version,
    to: &VersionRequest,
    policy: Policy,
    force: bool,
    today: Date,
) -> Result<UpgradePath, PathError> {
    let from = from.release();
    let target = match to {
        VersionRequest::Exact(v) => v.release(),
        VersionRequest::Minor(m) => catalog
            .newest_patch(*m)
            .cloned()
            .ok_or(PathError::UnknownMinor { minor: *m, newest: catalog.newest_minor() })?,
    };
    let mut forced = Vec::new();

    if !catalog.knows(&target) {
        let known = catalog
            .release(target.minor_version())
            .map(|r| r.patches.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| format!("no {} releases", target.minor_version()));
        let err = PathError::UnknownRelease { to: target.to_string(), known };
        if !force {
            return Err(err);
        }
        forced.push(Forced::NotInCatalog(target.clone()));
    }
    if let Support::EndOfLife { since } = catalog.support(target.minor_version(), today) {
        let since = since.map(|d| d.to_string()).unwrap_or_else(|| "an unknown date".into());
        if !force {
            return Err(PathError::EndOfLife { to: target.to_string(), since });
        }
        forced.push(Forced::EndOfLife { minor: target.minor_version(), since });
    }
    if target < from {
        if !force {
            return Err(PathError::Downgrade { from: from.to_string(), to: target.to_string() });
        }
        forced.push(Forced::Downgrade { from: from.clone(), to: target.clone() });
    }

    // Walk one minor at a time towards the target (backwards for a forced downgrade): each
    // intermediate minor on its newest known patch, the last minor on the target itself.
    let mut hops = Vec::new();
    let mut current = from.clone();
    let (lo, hi) = (from.minor_version(), target.minor_version());
    if policy == Policy::Strict
        && hi > lo
        && let Some(newest) = catalog.newest_patch(lo)
        && &current < newest
    {
        hops.push(Hop { from: current.clone(), to: newest.clone() });
        current = newest.clone();
    }
    let step = |m: MinorVersion| {
        if hi > lo { m.next() } else { MinorVersion::new(m.major, m.minor.saturating_sub(1)) }
    };
    let mut minor = lo;
    while minor != hi {
        minor = step(minor);
        let next = if minor == hi {
            target.clone()
        } else {
            catalog
                .newest_patch(minor)
                .cloned()
                .ok_or(PathError::UnknownMinor { minor, newest: catalog.newest_minor() })?
        };
        hops.push(Hop { from: current.clone(), to: next.clone() });
        current = next;
    }
    if current != target {
        hops.push(Hop { from: current.clone(), to: target.clone() });
    }
    Ok(UpgradePath { from, to: target, hops, forced })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixture;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }
    fn req(s: &str) -> VersionRequest {
        s.parse().unwrap()
    }
    fn today() -> Date {
        "2026-11-21".parse().unwrap()
    }
    fn hops(p: &UpgradePath) -> Vec<String> {
        p.hops.iter().map(|h| h.to.to_string()).collect()
    }

    #[test]
    fn targets_under_each_policy() {
        let c = fixture::catalog();
        let t = |from: &str, policy| {
            upgrade_targets(&c, &v(from), policy).iter().map(|v| v.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            t("1.35.1", Policy::Default),
            ["1.35.8", "1.36.0", "1.36.1", "1.36.2", "1.36.3", "1.36.4"]
        );
        assert_eq!(t("1.35.1", Policy::Strict), ["1.35.8"], "strict: the newest patch first");
        assert_eq!(t("1.35.8", Policy::Strict), ["1.36.0", "1.36.1", "1.36.2", "1.36.3", "1.36.4"]);
        assert_eq!(t("1.37.1", Policy::Default), Vec::<String>::new(), "nothing newer is known");
        assert_eq!(
            t("1.36.99", Policy::Strict),
            ["1.37.0", "1.37.1"],
            "past the newest known patch counts as newest"
        );
    }

    #[test]
    fn paths_walk_one_minor_at_a_time_on_newest_patches() {
        let c = fixture::catalog();
        let p = upgrade_path(&c, &v("1.35.1"), &req("1.37"), Policy::Default, false, today()).unwrap();
        assert_eq!(hops(&p), ["1.36.4", "1.37.1"]);
        assert!(p.hops.iter().all(Hop::is_minor));
        let p = upgrade_path(&c, &v("1.35.1"), &req("1.37.0"), Policy::Default, false, today()).unwrap();
        assert_eq!(hops(&p), ["1.36.4", "1.37.0"], "a pinned target patch is honoured");
        let p = upgrade_path(&c, &v("1.35.1"), &req("1.37"), Policy::Strict, false, today()).unwrap();
        assert_eq!(hops(&p), ["1.35.8", "1.36.4", "1.37.1"]);
        let p = upgrade_path(&c, &v("1.36.1"), &req("1.36.4"), Policy::Strict, false, today()).unwrap();
        assert_eq!(hops(&p), ["1.36.4"]);
        let p = upgrade_path(&c, &v("v1.36.4-eks-1"), &req("1.36"), Policy::Default, false, today()).unwrap();
        assert!(p.hops.is_empty(), "already there");
    }

    #[test]
    fn refusals_and_what_force_overrides() {
        let c = fixture::catalog();
        let e = upgrade_path(&c, &v("1.37.1"), &req("1.36.4"), Policy::Default, false, today()).unwrap_err();
        assert!(matches!(e, PathError::Downgrade { .. }), "{e}");
        let p = upgrade_path(&c, &v("1.37.1"), &req("1.35.8"), Policy::Default, true, today()).unwrap();
        assert_eq!(hops(&p), ["1.36.4", "1.35.8"]);
        assert!(p.forced[0].is_downgrade());
        assert!(p.forced[0].to_string().starts_with("downgrade from "), "{}", p.forced[0]);
        assert_eq!(serde_json::to_value(&p.forced[0]).unwrap(), serde_json::json!(p.forced[0].to_string()));

        let e = upgrade_path(&c, &v("1.36.1"), &req("1.36.9"), Policy::Default, false, today()).unwrap_err();
        assert!(e.to_string().contains("1.36.0, 1.36.1"), "{e}");
        let p = upgrade_path(&c, &v("1.36.1"), &req("1.36.9"), Policy::Default, true, today()).unwrap();
        assert_eq!(p.forced.len(), 1);

        let e = upgrade_path(&c, &v("1.33.0"), &req("1.33.2"), Policy::Default, false, today()).unwrap_err();
        assert!(matches!(e, PathError::EndOfLife { .. }), "{e}");
        let e = upgrade_path(&c, &v("1.36.0"), &req("1.39"), Policy::Default, true, today()).unwrap_err();
        assert!(matches!(e, PathError::UnknownMinor { .. }), "{e}");
        let e = upgrade_path(&c, &v("1.37.0"), &req("1.39.0"), Policy::Default, true, today()).unwrap_err();
        assert!(
            e.to_string().contains("1.38"),
            "a forced unknown target still cannot skip an unknown minor: {e}"
        );
    }

    #[test]
    fn refusals_name_no_flag_and_carry_their_ways_out() {
        use crate::remedy::Remedy::{OverrideVersionRule, RefreshCatalog};
        let c = fixture::catalog();
        let cases = [
            (("1.37.1", "1.36.4", false), vec![OverrideVersionRule]),
            (("1.36.1", "1.36.9", false), vec![RefreshCatalog, OverrideVersionRule]),
            (("1.33.0", "1.33.2", false), vec![OverrideVersionRule]),
            (("1.36.0", "1.39", true), vec![RefreshCatalog]),
        ];
        for ((from, to, force), want) in cases {
            let e = upgrade_path(&c, &v(from), &req(to), Policy::Default, force, today()).unwrap_err();
            assert!(!e.to_string().contains("--"), "core names no flag: {e}");
            assert_eq!(e.remedies(), want, "{e}");
        }
    }

    proptest! {
        /// Whatever the start and target, a path never moves the control plane more than one
        /// minor per hop, ends on the target, and each hop is a real upgrade.
        #[test]
        fn every_path_hops_at_most_one_minor(from_i in 0usize..17, to_i in 0usize..17, strict: bool) {
            let c = fixture::catalog();
            let all: Vec<Version> = c.all_versions().cloned().collect();
            let (from, to) = (&all[from_i], &all[to_i]);
            let policy = if strict { Policy::Strict } else { Policy::Default };
            match upgrade_path(&c, from, &VersionRequest::Exact(to.clone()), policy, false, today()) {
                Ok(p) => {
                    let mut cur = from.clone();
                    for h in &p.hops {
                        prop_assert_eq!(&h.from, &cur);
                        prop_assert!(h.to > h.from);
                        prop_assert!(h.to.minor_version().minors_ahead_of(h.from.minor_version()) <= 1);
                        cur = h.to.clone();
                    }
                    prop_assert_eq!(&cur, to);
                    if strict {
                        for h in p.hops.iter().filter(|h| h.is_minor()) {
                            prop_assert_eq!(Some(&h.from), c.newest_patch(h.from.minor_version()));
                        }
                    }
                }
                Err(PathError::Downgrade { .. }) => prop_assert!(to < from),
                Err(PathError::EndOfLife { .. }) => prop_assert!(to.minor <= 34, "1.33 and 1.34 are past end of life"),
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }
    }
}
