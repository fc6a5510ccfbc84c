//! The release catalog: every Kubernetes minor Refit knows, with its support dates, patch
//! releases, the add-on versions kubeadm pairs with it, and the APIs it stops serving.
//!
//! The catalog is data (`data/catalog.yaml`, embedded at build time) so that an air-gapped
//! site can refresh it with `--catalog FILE` without a new binary. It is validated when loaded:
//! a catalog that would make Refit advise something wrong (a replacement API that a later
//! release removes, patches out of order, a gap between minors) is refused.

use std::collections::BTreeSet;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::version::{MinorVersion, Version};

/// The catalog compiled into the binary.
pub const EMBEDDED: &str = include_str!("../../../data/catalog.yaml");

/// Why a catalog was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Not YAML of the expected shape.
    #[error("the catalog is not valid: {0} (refit formats catalog shows a complete one)")]
    Parse(String),
    /// A schema this binary does not understand.
    #[error(
        "catalog schema {found} is not supported (this refit reads schema {supported}); use a catalog made for this version"
    )]
    Schema {
        /// Schema in the file.
        found: u32,
        /// Schema supported.
        supported: u32,
    },
    /// The data contradicts itself.
    #[error("the catalog is inconsistent: {0}")]
    Invalid(String),
}

/// The whole catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// File format version.
    pub schema: u32,
    /// When the data was last refreshed (YYYY-MM-DD).
    pub updated: String,
    /// Every minor, oldest first.
    pub releases: Vec<Release>,
}

/// One minor release line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The minor, e.g. 1.36.
    pub minor: MinorVersion,
    /// Date of the x.0 release.
    pub ga: Date,
    /// End of upstream patch support.
    pub end_of_life: Date,
    /// Known patch releases, ascending.
    pub patches: Vec<Version>,
    /// What kubeadm deploys alongside this minor.
    pub kubeadm: KubeadmImages,
    /// APIs no longer served from this minor on.
    #[serde(default)]
    pub removed_apis: Vec<RemovedApi>,
    /// Free-text notes (source choices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// Add-on image tags kubeadm pairs with a minor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeadmImages {
    /// etcd image tag, e.g. `3.6.10-0`.
    pub etcd: String,
    /// CoreDNS image tag as kubeadm writes it, e.g. `v1.14.2`.
    pub coredns: String,
    /// pause image tag.
    pub pause: String,
}

/// A group/version whose kinds stop being served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedApi {
    /// API group (`""` for core).
    pub group: String,
    /// API version, e.g. `v1beta1`.
    pub version: String,
    /// The kinds concerned.
    pub kinds: Vec<RemovedKind>,
    /// What the migration guide says to move to (`group/version`), if anything.
    pub replacement: Option<String>,
    /// The GA group/version no later release removes: what Refit advises.
    pub ga_replacement: Option<String>,
    /// Extra advice (e.g. "use Pod Security Admission").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A kind and its REST resource name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedKind {
    /// Kind, e.g. `Ingress`.
    pub kind: String,
    /// Plural resource, e.g. `ingresses` (the `resource` label of the deprecation metric).
    pub resource: String,
}

impl RemovedApi {
    /// `group/version`, or just `version` for the core group (as `apiVersion` is written).
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }
}

/// `group/version` as written in `apiVersion` (core group: just the version).
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }
}

/// The schema this code reads.
pub const SCHEMA: u32 = 1;

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        Catalog::from_yaml(EMBEDDED)
    }

    /// Parses and validates a catalog.
    pub fn from_yaml(text: &str) -> Result<Catalog, CatalogError> {
        #[derive(Deserialize)]
        struct Head {
            schema: u32,
        }
        let head: Head = crate::yaml::from_str(text).map_err(CatalogError::Parse)?;
        if head.schema != SCHEMA {
            return Err(CatalogError::Schema { found: head.schema, supported: SCHEMA });
        }
        const DATE: &str = "a date YYYY-MM-DD";
        const HINTS: &crate::yaml::Hints = &[
            ("releases", "a list of releases (refit formats catalog)"),
            ("releases.minor", "a minor, quoted, e.g. \"1.36\""),
            ("releases.ga", DATE),
            ("releases.end_of_life", DATE),
            ("releases.patches", "a list of versions, e.g. [1.36.0, 1.36.1]"),
            ("releases.kubeadm", "{etcd, coredns, pause} image tags"),
            ("releases.removed_apis", "a list of {group, version, kinds, replacement, ga_replacement}"),
        ];
        let catalog: Catalog = crate::yaml::from_str_hinted(text, HINTS).map_err(CatalogError::Parse)?;
        catalog.validate()?;
        Ok(catalog)
    }

    fn validate(&self) -> Result<(), CatalogError> {
        let invalid = |m: String| Err(CatalogError::Invalid(m));
        if self.releases.is_empty() {
            return invalid("no releases".into());
        }
        for (a, b) in self.releases.iter().zip(self.releases.iter().skip(1)) {
            if b.minor != a.minor.next() {
                return invalid(format!(
                    "{} is followed by {}: minors must be contiguous and ascending",
                    a.minor, b.minor
                ));
            }
        }
        for r in &self.releases {
            if r.patches.is_empty() {
                return invalid(format!("{} lists no patch release", r.minor));
            }
            if let Some(p) = r
                .patches
                .iter()
                .find(|p| p.minor_version() != r.minor || p.pre.is_some() || p.build.is_some())
            {
                return invalid(format!("{} lists {p}, which is not a {} release", r.minor, r.minor));
            }
            if r.patches.iter().zip(r.patches.iter().skip(1)).any(|(a, b)| a >= b) {
                return invalid(format!("{} patches are not strictly ascending", r.minor));
            }
            if r.end_of_life <= r.ga {
                return invalid(format!("{} ends support before it starts", r.minor));
            }
        }
        // Never advise a replacement that a later release removes.
        let mut removed_at: Vec<(String, MinorVersion)> = Vec::new();
        for r in &self.releases {
            for api in &r.removed_apis {
                if api.kinds.is_empty() {
                    return invalid(format!("{}: removal of {} names no kind", r.minor, api.api_version()));
                }
                removed_at.push((api.api_version(), r.minor));
            }
        }
        for r in &self.releases {
            for api in &r.removed_apis {
                if let Some(ga) = &api.ga_replacement
                    && let Some((_, when)) = removed_at.iter().find(|(gv, _)| gv == ga)
                {
                    return invalid(format!(
                        "{} advises {ga} in place of {}, but {when} removes {ga}",
                        r.minor,
                        api.api_version()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The release line of `minor`, if known.
    pub fn release(&self, minor: MinorVersion) -> Option<&Release> {
        self.releases.iter().find(|r| r.minor == minor)
    }

    /// The newest known patch of `minor`.
    pub fn newest_patch(&self, minor: MinorVersion) -> Option<&Version> {
        self.release(minor).and_then(|r| r.patches.last())
    }

    /// Whether `v` is a known release.
    pub fn knows(&self, v: &Version) -> bool {
        self.release(v.minor_version()).is_some_and(|r| r.patches.contains(&v.release()))
    }

    /// The newest minor in the catalog.
    pub fn newest_minor(&self) -> MinorVersion {
        self.releases.last().map(|r| r.minor).unwrap_or(MinorVersion::new(1, 0))
    }

    /// Every known release, oldest first.
    pub fn all_versions(&self) -> impl Iterator<Item = &Version> {
        self.releases.iter().flat_map(|r| r.patches.iter())
    }

    /// The support state of `minor` on `today`.
    pub fn support(&self, minor: MinorVersion, today: Date) -> Support {
        match self.release(minor) {
            None if minor > self.newest_minor() => Support::Unknown,
            None => Support::EndOfLife { since: None },
            Some(r) if today > r.end_of_life => Support::EndOfLife { since: Some(r.end_of_life) },
            Some(r) => {
                // Subtracting civil dates gives a span in whole days.
                let days = today.until(r.end_of_life).map_or(0, |span| i64::from(span.get_days()));
                if days <= 60 {
                    Support::EndingSoon { end_of_life: r.end_of_life, days_left: days }
                } else {
                    Support::Supported { end_of_life: r.end_of_life }
                }
            }
        }
    }

    /// APIs removed by any minor in `(from, to]`: what an upgrade from `from` to `to` crosses.
    pub fn removals_between(&self, from: MinorVersion, to: MinorVersion) -> Vec<(MinorVersion, &RemovedApi)> {
        self.releases
            .iter()
            .filter(|r| r.minor > from && r.minor <= to)
            .flat_map(|r| r.removed_apis.iter().map(move |a| (r.minor, a)))
            .collect()
    }

    /// Every group/version any release removes, with the minor that removes it.
    pub fn removed_group_versions(&self) -> BTreeSet<(String, MinorVersion)> {
        self.releases
            .iter()
            .flat_map(|r| r.removed_apis.iter().map(move |a| (a.api_version(), r.minor)))
            .collect()
    }
}

/// Where a minor stands in its support lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Support {
    /// Receiving patches.
    Supported {
        /// Last day of support.
        end_of_life: Date,
    },
    /// Within 60 days of its end of life.
    EndingSoon {
        /// Last day of support.
        end_of_life: Date,
        /// Days left.
        days_left: i64,
    },
    /// No longer receiving patches.
    EndOfLife {
        /// When support ended, if known.
        since: Option<Date>,
    },
    /// Newer than anything in the catalog (refresh it with `--catalog`).
    Unknown,
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A small catalog for tests, independent of the shipped data.
    use super::Catalog;

    pub const YAML: &str = r#"
schema: 1
updated: "2026-11-21"
releases:
  - minor: "1.33"
    ga: "2025-04-23"
    end_of_life: "2026-06-28"
    patches: ["1.33.0", "1.33.1", "1.33.2"]
    kubeadm: {etcd: "3.5.21-0", coredns: "v1.12.0", pause: "3.10"}
    removed_apis: []
  - minor: "1.34"
    ga: "2025-08-27"
    end_of_life: "2026-10-27"
    patches: ["1.34.0", "1.34.1", "1.34.2", "1.34.3"]
    kubeadm: {etcd: "3.6.4-0", coredns: "v1.12.1", pause: "3.10.1"}
    removed_apis: []
  - minor: "1.35"
    ga: "2025-12-17"
    end_of_life: "2027-02-28"
    patches: ["1.35.0", "1.35.1", "1.35.8"]
    kubeadm: {etcd: "3.6.6-0", coredns: "v1.13.1", pause: "3.10.1"}
    removed_apis:
      - group: "flowcontrol.apiserver.k8s.io"
        version: "v1beta9"
        kinds: [{kind: "FlowSchema", resource: "flowschemas"}]
        replacement: "flowcontrol.apiserver.k8s.io/v1"
        ga_replacement: "flowcontrol.apiserver.k8s.io/v1"
  - minor: "1.36"
    ga: "2026-04-22"
    end_of_life: "2027-06-28"
    patches: ["1.36.0", "1.36.1", "1.36.2", "1.36.3", "1.36.4"]
    kubeadm: {etcd: "3.6.8-0", coredns: "v1.14.2", pause: "3.10.2"}
    removed_apis: []
  - minor: "1.37"
    ga: "2026-08-26"
    end_of_life: "2027-10-28"
    patches: ["1.37.0", "1.37.1"]
    kubeadm: {etcd: "3.6.10-0", coredns: "v1.14.6", pause: "3.10.2"}
    removed_apis:
      - group: "example.k8s.io"
        version: "v1beta1"
        kinds: [{kind: "Widget", resource: "widgets"}]
        replacement: null
        ga_replacement: null
        note: "no replacement"
"#;

    pub fn catalog() -> Catalog {
        Catalog::from_yaml(YAML).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn the_shipped_catalog_is_valid_and_knows_the_landmarks() {
        let c = Catalog::embedded().unwrap();
        assert_eq!(c.releases.first().unwrap().minor, MinorVersion::new(1, 19));
        assert_eq!(c.newest_minor(), MinorVersion::new(1, 37));
        let removal = |minor: u32, gv: &str, kind: &str| {
            c.release(MinorVersion::new(1, minor))
                .unwrap()
                .removed_apis
                .iter()
                .find(|a| a.api_version() == gv && a.kinds.iter().any(|k| k.kind == kind))
                .cloned()
                .unwrap_or_else(|| panic!("1.{minor} should remove {gv} {kind}"))
        };
        let ingress = removal(22, "extensions/v1beta1", "Ingress");
        assert_eq!(ingress.ga_replacement.as_deref(), Some("networking.k8s.io/v1"));
        assert!(ingress.kinds.iter().any(|k| k.resource == "ingresses"));
        assert_eq!(removal(25, "policy/v1beta1", "PodSecurityPolicy").ga_replacement, None);
        assert_eq!(
            removal(25, "policy/v1beta1", "PodDisruptionBudget").ga_replacement.as_deref(),
            Some("policy/v1")
        );
        assert_eq!(
            removal(26, "autoscaling/v2beta2", "HorizontalPodAutoscaler").ga_replacement.as_deref(),
            Some("autoscaling/v2")
        );
        let fs = removal(29, "flowcontrol.apiserver.k8s.io/v1beta2", "FlowSchema");
        assert_eq!(fs.ga_replacement.as_deref(), Some("flowcontrol.apiserver.k8s.io/v1"));
        removal(32, "flowcontrol.apiserver.k8s.io/v1beta3", "FlowSchema");
        // kubeadm's pairings for the testbed's releases, from their own constants.go.
        let k = |m: u32| c.release(MinorVersion::new(1, m)).unwrap().kubeadm.clone();
        assert_eq!(k(35).coredns, "v1.13.1");
        assert_eq!(k(35).etcd, "3.6.6-0");
        assert!(
            c.knows(&Version::new(1, 36, 4))
                && c.knows(&Version::new(1, 37, 1))
                && c.knows(&Version::new(1, 35, 8))
        );
    }

    #[test]
    fn the_fixture_parses_and_answers_lookups() {
        let c = fixture::catalog();
        assert_eq!(c.newest_minor(), MinorVersion::new(1, 37));
        assert_eq!(c.newest_patch(MinorVersion::new(1, 36)).unwrap().to_string(), "1.36.4");
        assert!(c.knows(&"1.35.8".parse().unwrap()));
        assert!(!c.knows(&"1.35.7".parse().unwrap()));
        assert_eq!(c.all_versions().count(), 17);
        let crossed = c.removals_between(MinorVersion::new(1, 34), MinorVersion::new(1, 37));
        assert_eq!(crossed.len(), 2);
        assert_eq!(crossed[0].1.api_version(), "flowcontrol.apiserver.k8s.io/v1beta9");
        assert_eq!(api_version("", "v1"), "v1");
    }

    #[test]
    fn support_state_follows_the_dates() {
        let c = fixture::catalog();
        let m = |n| MinorVersion::new(1, n);
        assert_eq!(
            c.support(m(33), date("2026-11-21")),
            Support::EndOfLife { since: Some(date("2026-06-28")) }
        );
        assert_eq!(
            c.support(m(37), date("2026-11-21")),
            Support::Supported { end_of_life: date("2027-10-28") }
        );
        assert!(matches!(c.support(m(35), date("2027-01-15")), Support::EndingSoon { days_left: 44, .. }));
        assert_eq!(c.support(m(38), date("2026-11-21")), Support::Unknown);
        assert_eq!(c.support(m(18), date("2026-11-21")), Support::EndOfLife { since: None });
    }

    #[test]
    fn inconsistent_catalogs_are_refused() {
        let broken = [
            (fixture::YAML.replace("schema: 1", "schema: 9"), "schema 9"),
            (fixture::YAML.replace("\"1.34.2\", \"1.34.3\"", "\"1.34.3\", \"1.34.2\""), "ascending"),
            (fixture::YAML.replace("\"1.36.4\"]", "\"1.37.9\"]"), "not a 1.36 release"),
            (fixture::YAML.replace("minor: \"1.34\"", "minor: \"1.30\""), "contiguous"),
            (
                fixture::YAML.replace(
                    "ga_replacement: \"flowcontrol.apiserver.k8s.io/v1\"",
                    "ga_replacement: \"example.k8s.io/v1beta1\"",
                ),
                "1.37 removes example.k8s.io/v1beta1",
            ),
            ("releases: [".to_string(), "not valid"),
            (fixture::YAML.replace("ga: \"2026-04-22\"", "ga: \"April\""), "not valid"),
        ];
        for (yaml, expected) in broken {
            let err = Catalog::from_yaml(&yaml).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }
}
