//! What the operator can do about a finding, as a value.
//!
//! Core decides *that* a finding can be allowed, accepted or worked around, never *how* a front
//! end spells it: the CLI renders a [`Remedy`] as its flag (`--delete-emptydir-data`), an HTTP
//! API or the hub controller as the field of its request, a dashboard as a hint. So no message
//! made in core names a command-line flag, and every front end offers the same ways out.

use serde::{Deserialize, Serialize};

/// One way out of a finding or a refused drain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Remedy {
    /// Allow the drain to delete emptyDir data (kubectl drain's own allowance).
    DeleteEmptyDirData,
    /// Allow the drain to delete pods no controller manages (they do not come back).
    DeleteUnmanagedPods,
    /// Accept this one finding of Kismatic's table, for exactly this subject.
    Accept {
        /// The check's stable name (e.g. `local-data`).
        check: String,
        /// What it concerns, as the plan prints it (e.g. `pod/NS/NAME`).
        subject: String,
    },
    /// Accept the findings in the way one by one, each for its subject (when the plan does
    /// not know which the operator means: they are listed in the plan).
    AcceptEach,
    /// Take fewer workers at once (a smaller max-unavailable).
    LowerMaxUnavailable,
    /// Lower the free-disk threshold of the readiness probe.
    MinFreeDisk,
    /// Include nodes already at the target.
    Force,
    /// Override a version rule (a downgrade, an unknown release, an end-of-life target) on the
    /// operator's own responsibility.
    OverrideVersionRule,
    /// Bring the release catalog up to date (newer releases than the one refit knows).
    RefreshCatalog,
}

impl Remedy {
    /// The verb a sentence puts before the remedy: allowances are "allow", acceptances
    /// "accept", the rest change a setting.
    pub fn verb(&self) -> &'static str {
        match self {
            Remedy::DeleteEmptyDirData | Remedy::DeleteUnmanagedPods => "allow with",
            Remedy::Accept { .. } => "accept with",
            Remedy::AcceptEach => "or accept its findings one by one with",
            Remedy::LowerMaxUnavailable => "or lower",
            Remedy::MinFreeDisk => "or set",
            Remedy::Force => "include it with",
            Remedy::OverrideVersionRule => "or override with",
            Remedy::RefreshCatalog => "refresh it with",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remedies_serialize_as_tagged_values_and_read_back() {
        let all = [
            Remedy::DeleteEmptyDirData,
            Remedy::DeleteUnmanagedPods,
            Remedy::Accept { check: "local-data".into(), subject: "pod/a/b".into() },
            Remedy::AcceptEach,
            Remedy::LowerMaxUnavailable,
            Remedy::MinFreeDisk,
            Remedy::Force,
            Remedy::OverrideVersionRule,
            Remedy::RefreshCatalog,
        ];
        for r in all {
            let json = serde_json::to_string(&r).unwrap();
            assert!(json.starts_with("{\"kind\":"), "{json}");
            assert_eq!(serde_json::from_str::<Remedy>(&json).unwrap(), r);
            assert!(!r.verb().contains("--"));
        }
        assert_eq!(
            serde_json::to_string(&Remedy::Accept { check: "local-data".into(), subject: "pod/a/b".into() })
                .unwrap(),
            r#"{"kind":"accept","check":"local-data","subject":"pod/a/b"}"#
        );
    }
}
