//! The settings people give refit, named as values so that each edge spells them its own way.
//!
//! The same setting arrives as a flag on the command line (`--max-surge 2`), as a field of a
//! hub object or of an HTTP request (`maxSurge: 2`). A message from core that named the flag
//! would be wrong under the other two, so core's errors carry a [`Setting`] and render through
//! [`Spelled::spell`] with the edge's namer: the CLI passes its flag names, everything else
//! gets the field names of [`Setting::field`] (also what `Display` prints).

/// A setting a person gives refit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setting {
    /// The target version (`refit upgrade --to`).
    To,
    /// Workers drained at once: a count, a percentage, 0 (with a surge) or `auto`.
    MaxUnavailable,
    /// The most workers `auto` takes in one batch.
    MaxUnavailableCap,
    /// Whether an `auto` batch may span zones.
    AcrossZones,
    /// Replacement nodes created ahead of the old ones (the replace action).
    MaxSurge,
    /// The node action.
    Action,
    /// What a node that cannot be drained does: fail, skip or force.
    OnUndrainable,
    /// The deadline after which no node starts.
    NotAfter,
    /// A fleet run's upgrade type.
    UpgradeType,
    /// A fleet run's Kubernetes version.
    KubernetesVersion,
    /// A profile's target minor (channel TargetKubernetesVersion).
    TargetKubernetesVersion,
    /// A blocker accepted by check (and subject).
    Accept,
    /// Leave out the workers with blockers and upgrade the rest.
    PartialOk,
    /// Go on past every safety check.
    IgnoreSafetyChecks,
}

impl Setting {
    /// Every setting (for edges that check they spell each one).
    pub const ALL: [Setting; 14] = [
        Setting::To,
        Setting::MaxUnavailable,
        Setting::MaxUnavailableCap,
        Setting::AcrossZones,
        Setting::MaxSurge,
        Setting::Action,
        Setting::OnUndrainable,
        Setting::NotAfter,
        Setting::UpgradeType,
        Setting::KubernetesVersion,
        Setting::TargetKubernetesVersion,
        Setting::Accept,
        Setting::PartialOk,
        Setting::IgnoreSafetyChecks,
    ];

    /// The setting as a field of a hub object or an HTTP request (lowerCamelCase).
    pub fn field(self) -> &'static str {
        match self {
            Setting::To => "to",
            Setting::MaxUnavailable => "maxUnavailable",
            Setting::MaxUnavailableCap => "maxUnavailableCap",
            Setting::AcrossZones => "acrossZones",
            Setting::MaxSurge => "maxSurge",
            Setting::Action => "action",
            Setting::OnUndrainable => "onUndrainable",
            Setting::NotAfter => "notAfter",
            Setting::UpgradeType => "upgradeType",
            Setting::KubernetesVersion => "kubernetesVersion",
            Setting::TargetKubernetesVersion => "targetKubernetesVersion",
            Setting::Accept => "accept",
            Setting::PartialOk => "partialOk",
            Setting::IgnoreSafetyChecks => "ignoreSafetyChecks",
        }
    }
}

/// A message that names settings, spelled by whoever shows it.
pub trait Spelled {
    /// The message with each setting written as `name` spells it.
    fn spell(&self, name: &dyn Fn(Setting) -> String) -> String;

    /// The message with the settings' field names ([`Setting::field`]).
    fn with_fields(&self) -> String {
        self.spell(&|s| s.field().to_string())
    }
}

/// A value a setting cannot take: the value as given and what it should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// Which setting.
    pub setting: Setting,
    /// The value as given.
    pub value: String,
    /// What the setting takes, as a phrase ("a count (e.g. 2) or a percentage (e.g. 10%)").
    pub expected: &'static str,
}

impl BadValue {
    /// `value` refused for `setting`, which takes `expected`.
    pub fn new(setting: Setting, value: &str, expected: &'static str) -> BadValue {
        BadValue { setting, value: value.to_string(), expected }
    }
}

impl Spelled for BadValue {
    fn spell(&self, name: &dyn Fn(Setting) -> String) -> String {
        format!("{} '{}' is not {}", name(self.setting), self.value, self.expected)
    }
}

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.with_fields())
    }
}

impl std::error::Error for BadValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_spelled_by_the_edge_that_shows_it() {
        let e = BadValue::new(Setting::MaxSurge, "x", "a count (e.g. 2)");
        assert_eq!(e.to_string(), "maxSurge 'x' is not a count (e.g. 2)");
        assert_eq!(e.spell(&|s| format!("--{s:?}")), "--MaxSurge 'x' is not a count (e.g. 2)");
    }

    #[test]
    fn fields_are_lower_camel_case_and_distinct() {
        let all = Setting::ALL;
        let fields: std::collections::BTreeSet<&str> = all.iter().map(|s| s.field()).collect();
        assert_eq!(fields.len(), all.len());
        for f in fields {
            assert!(f.chars().next().is_some_and(|c| c.is_ascii_lowercase()), "{f}");
            assert!(f.chars().all(|c| c.is_ascii_alphanumeric()), "{f}");
        }
    }
}
