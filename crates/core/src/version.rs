//! Kubernetes versions as Refit reasons about them.
//!
//! Kubernetes reports versions in several shapes: `v1.36.5` from `/version`, `1.36.5` from
//! package managers, `v1.36.5-eks-1234abc` or `v1.36.5+k3s1` from distributions. Refit only
//! ever compares the numeric `major.minor.patch` triple (distributions keep upstream ordering),
//! but it keeps the suffix so that output shows what the cluster actually said.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The input is not `[v]MAJOR.MINOR[.PATCH][-suffix|+suffix]`.
    #[error(
        "'{input}' is not a Kubernetes version: expected MAJOR.MINOR.PATCH such as 1.36.5 (a leading 'v' is fine)"
    )]
    Malformed {
        /// What the user gave.
        input: String,
    },
    /// A minor-only version was given where a full patch version is required.
    #[error("'{input}' names a minor, not a release: give the patch too, e.g. {input}.0")]
    MissingPatch {
        /// What the user gave.
        input: String,
    },
}

/// A released (or reported) Kubernetes version: `major.minor.patch` plus an optional suffix.
///
/// Equality and ordering consider only the numeric triple and whether a pre-release is
/// present (`1.36.0-rc.1 < 1.36.0`), never the distribution suffix after `+`.
#[derive(Debug, Clone)]
pub struct Version {
    /// Major version, always 1 for the releases Refit knows.
    pub major: u32,
    /// Minor version: the unit of the skew policy and of upgrade hops.
    pub minor: u32,
    /// Patch release within the minor.
    pub patch: u32,
    /// Pre-release or vendor suffix as written after `-` (e.g. `rc.1`, `eks-1234`), if any.
    pub pre: Option<String>,
    /// Build metadata as written after `+` (e.g. `k3s1`), if any.
    pub build: Option<String>,
}

impl Version {
    /// A plain `major.minor.patch` version.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch, pre: None, build: None }
    }

    /// The minor this version belongs to.
    pub const fn minor_version(&self) -> MinorVersion {
        MinorVersion { major: self.major, minor: self.minor }
    }

    /// The string Kubernetes itself reports in `gitVersion`: `v1.36.5`.
    pub fn git_version(&self) -> String {
        format!("v{self}")
    }

    /// The same version without suffixes: what Refit compares and upgrades to.
    pub fn release(&self) -> Version {
        Version::new(self.major, self.minor, self.patch)
    }

    /// Whether the suffix marks a pre-release (alpha, beta, rc), as opposed to a vendor tag.
    pub fn is_prerelease(&self) -> bool {
        self.pre.as_deref().is_some_and(|p| {
            let p = p.to_ascii_lowercase();
            p.starts_with("alpha") || p.starts_with("beta") || p.starts_with("rc")
        })
    }
}

/// Parses the numeric part of a version: `1.36` or `1.36.5`, with an optional leading `v`.
fn parse_numbers(input: &str) -> Option<(u32, u32, Option<u32>, &str)> {
    let s = input.trim();
    let s = s.strip_prefix('v').or_else(|| s.strip_prefix('V')).unwrap_or(s);
    let end = s.find(['-', '+']).unwrap_or(s.len());
    let (nums, rest) = s.split_at(end);
    let mut parts = nums.split('.');
    let num = |p: Option<&str>| -> Option<u32> {
        let p = p?;
        // Leading zeros ("01") and signs are not versions anyone writes; refuse them.
        if p.is_empty()
            || p.len() > 9
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return None;
        }
        p.parse().ok()
    };
    let major = num(parts.next())?;
    let minor = num(parts.next())?;
    let patch = match parts.next() {
        None => None,
        Some(p) => Some(num(Some(p))?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch, rest))
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let malformed = || VersionError::Malformed { input: input.to_string() };
        let (major, minor, patch, rest) = parse_numbers(input).ok_or_else(malformed)?;
        let patch = patch.ok_or_else(|| VersionError::MissingPatch { input: input.trim().to_string() })?;
        let (pre, build) = match rest.split_once('+') {
            Some((pre, build)) => (pre, Some(build)),
            None => (rest, None),
        };
        let pre = match pre.strip_prefix('-') {
            Some(p) if valid_suffix(p) => Some(p.to_string()),
            Some(_) => return Err(malformed()),
            None if pre.is_empty() => None,
            None => return Err(malformed()),
        };
        let build = match build {
            Some(b) if valid_suffix(b) => Some(b.to_string()),
            Some(_) => return Err(malformed()),
            None => None,
        };
        Ok(Version { major, minor, patch, pre, build })
    }
}

fn valid_suffix(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        if let Some(build) = &self.build {
            write!(f, "+{build}")?;
        }
        Ok(())
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            // A pre-release sorts before its release; vendor suffixes do not change order.
            .then_with(|| other.is_prerelease().cmp(&self.is_prerelease()))
            .then_with(|| match (self.is_prerelease(), other.is_prerelease()) {
                (true, true) => self.pre.cmp(&other.pre),
                _ => Ordering::Equal,
            })
    }
}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.major, self.minor, self.patch, self.is_prerelease()).hash(state);
        if self.is_prerelease() {
            self.pre.hash(state);
        }
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A Kubernetes minor release line such as 1.36: the unit of support, skew and hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MinorVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl MinorVersion {
    /// The minor `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// Whether an apiserver of this minor serves a consistent list (one without
    /// `resourceVersion` or `limit`) from its watch cache: from 1.31, where
    /// ConsistentListFromCache is on by default. Before, it is a range read of etcd. (The pages
    /// after the first of a paginated list are read from etcd even on 1.36.)
    pub fn serves_consistent_lists_from_cache(self) -> bool {
        self >= MinorVersion::new(1, 31)
    }

    /// The next minor (1.36 → 1.37).
    pub const fn next(self) -> Self {
        Self { major: self.major, minor: self.minor.saturating_add(1) }
    }

    /// How many minors `self` is ahead of `other` (negative when behind). Majors other than 1
    /// do not exist for Kubernetes; across majors the distance is reported as very large.
    pub fn minors_ahead_of(self, other: MinorVersion) -> i64 {
        if self.major != other.major {
            return i64::from(self.major).saturating_sub(i64::from(other.major)).saturating_mul(1_000);
        }
        i64::from(self.minor).saturating_sub(i64::from(other.minor))
    }

    /// The first patch release of this minor.
    pub const fn at_patch(self, patch: u32) -> Version {
        Version::new(self.major, self.minor, patch)
    }
}

impl FromStr for MinorVersion {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match parse_numbers(input) {
            Some((major, minor, None, "")) => Ok(MinorVersion { major, minor }),
            _ => Err(VersionError::Malformed { input: input.to_string() }),
        }
    }
}

impl fmt::Display for MinorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for MinorVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MinorVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a user may type as an upgrade target: a full release (`1.37.2`) or a minor (`1.37`,
/// meaning its newest known patch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionRequest {
    /// Exactly this release.
    Exact(Version),
    /// The newest known patch of this minor.
    Minor(MinorVersion),
}

impl VersionRequest {
    /// The minor the request lands on.
    pub fn minor_version(&self) -> MinorVersion {
        match self {
            VersionRequest::Exact(v) => v.minor_version(),
            VersionRequest::Minor(m) => *m,
        }
    }
}

impl FromStr for VersionRequest {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.parse::<Version>() {
            Ok(v) => Ok(VersionRequest::Exact(v)),
            Err(VersionError::MissingPatch { .. }) => input.parse().map(VersionRequest::Minor),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Display for VersionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRequest::Exact(v) => v.fmt(f),
            VersionRequest::Minor(m) => m.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_watch_cache_serves_consistent_lists_from_1_31() {
        assert!(!MinorVersion::new(1, 30).serves_consistent_lists_from_cache());
        assert!(MinorVersion::new(1, 31).serves_consistent_lists_from_cache());
        assert!(MinorVersion::new(1, 37).serves_consistent_lists_from_cache());
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_shapes_kubernetes_reports() {
        assert_eq!(v("v1.36.5"), Version::new(1, 36, 5));
        assert_eq!(v("1.36.5"), Version::new(1, 36, 5));
        assert_eq!(v(" v1.36.5 ").to_string(), "1.36.5");
        let eks = v("v1.36.5-eks-1234abc");
        assert_eq!(eks.pre.as_deref(), Some("eks-1234abc"));
        assert!(!eks.is_prerelease());
        assert_eq!(eks, Version::new(1, 36, 5), "vendor suffixes do not change identity");
        let k3s = v("v1.36.5+k3s1");
        assert_eq!(k3s.build.as_deref(), Some("k3s1"));
        assert_eq!(k3s.to_string(), "1.36.5+k3s1");
        assert_eq!(v("1.36.5").git_version(), "v1.36.5");
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        for bad in [
            "",
            "v",
            "1",
            "1.",
            "1.36.",
            "1.36.5.1",
            "a.b.c",
            "1.36.x",
            "1.-36.5",
            "01.36.5",
            "1.36.5-",
            "1.36.5+",
            "kwok-0.8.0",
            "1.36.5 extra",
            "99999999999.1.1",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!("1.36".parse::<Version>(), Err(VersionError::MissingPatch { input: "1.36".into() }));
    }

    #[test]
    fn error_messages_name_the_fix() {
        let e = "banana".parse::<Version>().unwrap_err().to_string();
        assert!(e.contains("expected MAJOR.MINOR.PATCH"), "{e}");
        let e = "1.37".parse::<Version>().unwrap_err().to_string();
        assert!(e.contains("1.37.0"), "{e}");
    }

    #[test]
    fn prereleases_sort_before_their_release() {
        assert!(v("1.36.0-rc.1") < v("1.36.0"));
        assert!(v("1.36.0-alpha.1") < v("1.36.0-beta.0"));
        assert!(v("1.35.9") < v("1.36.0-alpha.1"));
        assert!(v("1.36.10") > v("1.36.9"), "numeric, not lexical");
    }

    #[test]
    fn minor_and_requests() {
        assert_eq!("1.37".parse::<MinorVersion>().unwrap(), MinorVersion::new(1, 37));
        assert!("1.37.1".parse::<MinorVersion>().is_err());
        assert_eq!(MinorVersion::new(1, 36).next(), MinorVersion::new(1, 37));
        assert_eq!(MinorVersion::new(1, 37).minors_ahead_of(MinorVersion::new(1, 34)), 3);
        assert_eq!(
            "v1.37".parse::<VersionRequest>().unwrap(),
            VersionRequest::Minor(MinorVersion::new(1, 37))
        );
        assert_eq!(
            "1.37.2".parse::<VersionRequest>().unwrap(),
            VersionRequest::Exact(Version::new(1, 37, 2))
        );
        assert!("1.x".parse::<VersionRequest>().is_err());
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&v("1.36.5")).unwrap();
        assert_eq!(json, "\"1.36.5\"");
        assert_eq!(serde_json::from_str::<Version>(&json).unwrap(), v("1.36.5"));
        assert!(serde_json::from_str::<Version>("\"nope\"").is_err());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(major in 0u32..5, minor in 0u32..100, patch in 0u32..100, pre in proptest::option::of("[a-z]{1,5}\\.[0-9]{1,2}")) {
            let version = Version { major, minor, patch, pre: pre.clone(), build: None };
            let parsed: Version = version.to_string().parse().unwrap();
            prop_assert_eq!(parsed.pre, pre);
            prop_assert_eq!((parsed.major, parsed.minor, parsed.patch), (major, minor, patch));
        }

        #[test]
        fn order_matches_numeric_triple(a in (0u32..3, 0u32..50, 0u32..50), b in (0u32..3, 0u32..50, 0u32..50)) {
            let va = Version::new(a.0, a.1, a.2);
            let vb = Version::new(b.0, b.1, b.2);
            prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<Version>();
            let _ = s.parse::<VersionRequest>();
        }
    }
}
