//! Refreshing the release catalog without a new build (`refit catalog update`).
//!
//! Two sources, one rule each:
//! - **A whole catalog** (`--from URL|FILE`, refit's own format): it replaces the one in use
//!   only when it is valid (as any `--catalog` file) and not older (`updated`) — a stale mirror
//!   must not take releases away. [`adopt`].
//! - **Upstream's release markers** (`stable-1.N.txt`, the newest patch of each minor as the
//!   Kubernetes release bucket publishes it): patch numbers are contiguous upstream, so every
//!   patch between the catalog's newest and the marker is added. A marker for a minor the
//!   catalog does not list cannot be added from a marker alone (support dates, kubeadm's
//!   images and removed APIs are not in it): it is reported, so the operator fetches a whole
//!   catalog. [`with_patches`].
//!
//! Both are pure; fetching and storing are at the edges (exec, store, engine::catalog).

use std::collections::BTreeMap;

use jiff::civil::Date;
use serde::Serialize;

use crate::catalog::{Catalog, CatalogError};
use crate::version::{MinorVersion, Version};

/// The most patches one refresh may add to one minor: a marker far beyond the catalog is a
/// wrong or hostile source, not fifty forgotten releases.
pub const MAX_NEW_PATCHES: u32 = 50;

/// What a refresh changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refreshed {
    /// The catalog to use from now on.
    #[serde(skip)]
    pub catalog: Catalog,
    /// Patches it knows now and did not before, ascending.
    pub added: Vec<Version>,
    /// Releases upstream names whose minor the catalog does not list (a whole catalog is
    /// needed for them).
    pub unknown_minors: Vec<Version>,
    /// Whether anything changed (false: the catalog in use was already current).
    pub changed: bool,
}

/// Why a refresh was refused (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The new catalog is not valid.
    #[error(transparent)]
    Invalid(#[from] CatalogError),
    /// The new catalog is older than the one in use.
    #[error(
        "that catalog was updated {theirs}, before the one in use ({ours}): a stale source would take releases away; nothing was changed"
    )]
    Older {
        /// Its `updated`.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// A marker that is not a plain release of its minor.
    #[error("upstream's marker for {minor} says '{said}', which is not a {minor} release")]
    BadMarker {
        /// The minor asked for.
        minor: MinorVersion,
        /// What the marker said.
        said: String,
    },
    /// A marker implausibly far ahead.
    #[error(
        "upstream's marker for {minor} says {said}, more than {MAX_NEW_PATCHES} patches past the catalog's {newest}: refusing a source that far off"
    )]
    TooFar {
        /// The minor.
        minor: MinorVersion,
        /// The marker.
        said: String,
        /// The catalog's newest patch of that minor.
        newest: String,
    },
}

/// Adopts a whole catalog (`text`, refit's format) in place of `current`.
pub fn adopt(current: &Catalog, text: &str) -> Result<Refreshed, RefreshError> {
    let new = Catalog::from_yaml(text)?;
    // `updated` is validated as a date by neither format nor code yet; compare as dates when
    // both parse, else as text (YYYY-MM-DD sorts as text too).
    let older = match (current.updated.parse::<Date>(), new.updated.parse::<Date>()) {
        (Ok(ours), Ok(theirs)) => theirs < ours,
        _ => new.updated < current.updated,
    };
    if older {
        return Err(RefreshError::Older { theirs: new.updated, ours: current.updated.clone() });
    }
    let known: std::collections::BTreeSet<&Version> = current.all_versions().collect();
    let added: Vec<Version> = new.all_versions().filter(|v| !known.contains(v)).cloned().collect();
    let changed = new != *current;
    Ok(Refreshed { catalog: new, added, unknown_minors: Vec::new(), changed })
}

/// Parses one upstream marker (`stable-1.N.txt`: `v1.36.5` and a newline).
pub fn parse_marker(minor: MinorVersion, text: &str) -> Result<Version, RefreshError> {
    let said = text.trim();
    let bad = || RefreshError::BadMarker { minor, said: said.chars().take(40).collect() };
    let v: Version = said.parse().map_err(|_| bad())?;
    if v.pre.is_some() || v.build.is_some() || v.major != minor.major {
        return Err(bad());
    }
    Ok(v)
}

/// `current` with every patch up to each minor's marker (`markers`: the newest patch upstream
/// publishes per minor); `today` becomes `updated` when anything was added.
pub fn with_patches(
    current: &Catalog,
    markers: &BTreeMap<MinorVersion, Version>,
    today: Date,
) -> Result<Refreshed, RefreshError> {
    let mut catalog = current.clone();
    let mut added = Vec::new();
    let mut unknown_minors = Vec::new();
    for (minor, said) in markers {
        if said.minor_version() != *minor || said.pre.is_some() || said.build.is_some() {
            return Err(RefreshError::BadMarker { minor: *minor, said: said.to_string() });
        }
        let Some(release) = catalog.releases.iter_mut().find(|r| r.minor == *minor) else {
            unknown_minors.push(said.clone());
            continue;
        };
        let Some(newest) = release.patches.last().cloned() else { continue };
        if *said <= newest {
            continue;
        }
        if said.patch.saturating_sub(newest.patch) > MAX_NEW_PATCHES {
            return Err(RefreshError::TooFar {
                minor: *minor,
                said: said.to_string(),
                newest: newest.to_string(),
            });
        }
        for patch in newest.patch.saturating_add(1)..=said.patch {
            let v = Version::new(minor.major, minor.minor, patch);
            release.patches.push(v.clone());
            added.push(v);
        }
    }
    let changed = !added.is_empty();
    if changed {
        catalog.updated = today.to_string();
    }
    // The result must pass the same validation as any catalog file.
    let text = serde_saphyr::to_string(&catalog).map_err(|e| CatalogError::Parse(e.to_string()))?;
    let catalog = Catalog::from_yaml(&text)?;
    Ok(Refreshed { catalog, added, unknown_minors, changed })
}

/// The minors whose markers a refresh asks for: every minor the catalog lists that is still
/// supported or ended less than a year ago (older lines get no patches), and the next one
/// (a new minor is reported, not added).
pub fn minors_to_ask(current: &Catalog, today: Date) -> Vec<MinorVersion> {
    let year_ago = today.checked_sub(jiff::Span::new().days(365)).unwrap_or(today);
    let mut out: Vec<MinorVersion> =
        current.releases.iter().filter(|r| r.end_of_life >= year_ago).map(|r| r.minor).collect();
    out.push(current.newest_minor().next());
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::catalog::fixture;

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    fn m(minor: u32) -> MinorVersion {
        MinorVersion::new(1, minor)
    }

    #[test]
    fn markers_add_every_patch_up_to_them_and_report_new_minors() {
        let c = fixture::catalog();
        let markers = BTreeMap::from([
            (m(36), "1.36.4".parse().unwrap()),
            (m(37), "1.37.3".parse().unwrap()),
            (m(38), "1.38.0".parse().unwrap()),
            (m(36), "1.36.6".parse().unwrap()),
        ]);
        let r = with_patches(&c, &markers, d("2026-12-05")).unwrap();
        let added: Vec<String> = r.added.iter().map(|v| v.to_string()).collect();
        assert_eq!(added, ["1.36.5", "1.36.6", "1.37.2", "1.37.3"]);
        assert_eq!(r.unknown_minors, vec!["1.38.0".parse::<Version>().unwrap()]);
        assert!(r.changed);
        assert_eq!(r.catalog.updated, "2026-12-05");
        assert_eq!(r.catalog.newest_patch(m(37)).unwrap().to_string(), "1.37.3");
        // Everything else is as it was.
        assert_eq!(r.catalog.releases.len(), c.releases.len());
        assert_eq!(r.catalog.release(m(35)), c.release(m(35)));
    }

    #[test]
    fn markers_at_or_behind_the_catalog_change_nothing() {
        let c = fixture::catalog();
        let markers =
            BTreeMap::from([(m(37), "1.37.1".parse().unwrap()), (m(36), "1.36.2".parse().unwrap())]);
        let r = with_patches(&c, &markers, d("2026-12-05")).unwrap();
        assert!(!r.changed && r.added.is_empty());
        assert_eq!(r.catalog, c);
    }

    #[test]
    fn bad_or_far_markers_are_refused() {
        let c = fixture::catalog();
        assert!(matches!(parse_marker(m(36), "v1.36.5\n"), Ok(v) if v.to_string() == "1.36.5"));
        for bad in ["", "<html>", "v1.36.5-rc.1", "v2.36.5", "1.36"] {
            assert!(matches!(parse_marker(m(36), bad), Err(RefreshError::BadMarker { .. })), "{bad}");
        }
        let other = BTreeMap::from([(m(36), "1.37.9".parse().unwrap())]);
        assert!(matches!(with_patches(&c, &other, d("2026-12-05")), Err(RefreshError::BadMarker { .. })));
        let far = BTreeMap::from([(m(36), "1.36.999".parse().unwrap())]);
        let e = with_patches(&c, &far, d("2026-12-05")).unwrap_err();
        assert!(e.to_string().contains("more than 50 patches past the catalog's 1.36.4"), "{e}");
    }

    #[test]
    fn a_whole_catalog_is_adopted_when_valid_and_not_older() {
        let c = fixture::catalog();
        let newer = fixture::YAML
            .replace("updated: \"2026-11-21\"", "updated: \"2026-12-01\"")
            .replace("patches: [\"1.37.0\", \"1.37.1\"]", "patches: [\"1.37.0\", \"1.37.1\", \"1.37.2\"]");
        let r = adopt(&c, &newer).unwrap();
        assert!(r.changed);
        assert_eq!(r.added, vec!["1.37.2".parse::<Version>().unwrap()]);
        // The same catalog again: nothing changes.
        let same = adopt(&c, fixture::YAML).unwrap();
        assert!(!same.changed && same.added.is_empty());
        // Older: refused, naming both dates.
        let older = fixture::YAML.replace("updated: \"2026-11-21\"", "updated: \"2026-01-01\"");
        let e = adopt(&c, &older).unwrap_err();
        assert!(e.to_string().contains("updated 2026-01-01, before the one in use (2026-11-21)"), "{e}");
        // Invalid: the catalog's own validation.
        let broken =
            fixture::YAML.replace("patches: [\"1.37.0\", \"1.37.1\"]", "patches: [\"1.37.1\", \"1.37.0\"]");
        assert!(matches!(adopt(&c, &broken), Err(RefreshError::Invalid(_))));
        assert!(matches!(adopt(&c, "not: [a catalog"), Err(RefreshError::Invalid(_))));
    }

    #[test]
    fn the_minors_asked_are_the_supported_ones_and_the_next() {
        let c = fixture::catalog();
        let asked = minors_to_ask(&c, d("2026-12-05"));
        // 1.33 ended 2026-06-28 (within a year): still asked; 1.38 is the next.
        assert_eq!(asked, vec![m(33), m(34), m(35), m(36), m(37), m(38)]);
        let later = minors_to_ask(&c, d("2027-11-01"));
        assert_eq!(later.first(), Some(&m(35)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Whatever the markers, a refresh either refuses or yields a valid catalog that keeps
        /// every release it had, adds only patches past the old newest, and grows each minor
        /// by a contiguous run.
        #[test]
        fn a_refresh_never_loses_a_release_and_adds_contiguous_patches(
            patches in proptest::collection::vec((33u32..=39, 0u32..80), 0..8),
        ) {
            let c = fixture::catalog();
            let markers: BTreeMap<MinorVersion, Version> =
                patches.iter().map(|(minor, p)| (m(*minor), Version::new(1, *minor, *p))).collect();
            if let Ok(r) = with_patches(&c, &markers, d("2026-12-05")) {
                for v in c.all_versions() {
                    prop_assert!(r.catalog.knows(v));
                }
                for release in &r.catalog.releases {
                    let old = c.release(release.minor).unwrap();
                    let old_newest = old.patches.last().unwrap().patch;
                    let new: Vec<u32> = release.patches.iter().map(|p| p.patch).filter(|p| *p > old_newest).collect();
                    let want: Vec<u32> = (old_newest + 1..=old_newest + new.len() as u32).collect();
                    prop_assert_eq!(new, want);
                }
                prop_assert_eq!(r.changed, !r.added.is_empty());
            }
        }
    }
}
