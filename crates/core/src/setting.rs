//! The settings people give refit, named as values so that each edge spells them its own way.
//!
//! The same setting arrives as a flag on the command line (`--max-surge 2`), as a field of a
//! hub object or of an HTTP request (`maxSurge: 2`). A message from core that named the flag
//! would be wrong under the other two, so core's errors carry a [`Setting`] and render through
//! [`Spelled::spell`] with the edge's namer: the CLI passes its flag names, everything else
//! gets the field names of [`Setting::field`] (also what `Display` prints).

/// The settings, each once: the enum, [`Setting::ALL`] and [`Setting::field`] come from this
/// one list, so a setting cannot be added to one and missed in another.
macro_rules! settings {
    ($($(#[doc = $doc:literal])* $variant:ident => $field:literal,)*) => {
        /// A setting a person gives refit.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Setting {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Setting {
            /// Every setting (for edges that check they spell each one).
            pub const ALL: &'static [Setting] = &[$(Setting::$variant),*];

            /// The setting as a field of a hub object or an HTTP request (lowerCamelCase).
            pub fn field(self) -> &'static str {
                match self {
                    $(Setting::$variant => $field,)*
                }
            }
        }
    };
}

settings! {
    /// Workers drained at once: a count, a percentage, 0 (with a surge) or `auto`.
    MaxUnavailable => "maxUnavailable",
    /// The most workers `auto` takes in one batch.
    MaxUnavailableCap => "maxUnavailableCap",
    /// Whether an `auto` batch may span zones.
    AcrossZones => "acrossZones",
    /// Replacement nodes created ahead of the old ones (the replace action).
    MaxSurge => "maxSurge",
    /// The node action.
    Action => "action",
    /// What a node that cannot be drained does: fail, skip or force.
    OnUndrainable => "onUndrainable",
    /// A fleet run's upgrade type.
    UpgradeType => "upgradeType",
    /// A fleet run's Kubernetes version.
    KubernetesVersion => "kubernetesVersion",
    /// A profile's target minor (channel TargetKubernetesVersion).
    TargetKubernetesVersion => "targetKubernetesVersion",
    /// A blocker accepted by check (and subject).
    Accept => "accept",
    /// Leave out the workers with blockers and upgrade the rest.
    PartialOk => "partialOk",
    /// Go on past every safety check.
    IgnoreSafetyChecks => "ignoreSafetyChecks",
    /// Node-image targets, family → version (what a member upgrade moves its nodes' images to).
    NodeImages => "nodeImages",
}

/// `Display` (the field names, [`Spelled::with_fields`]) and `Error` for error types that are
/// [`Spelled`]: what every edge but the CLI shows.
macro_rules! display_with_fields {
    ($($t:ty),+ $(,)?) => {
        $(
            impl std::fmt::Display for $t {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(&$crate::setting::Spelled::with_fields(self))
                }
            }

            impl std::error::Error for $t {}
        )+
    };
}
pub(crate) use display_with_fields;

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
    /// The value is kept printable (a value from a file or an object could carry escapes).
    pub fn new(setting: Setting, value: &str, expected: &'static str) -> BadValue {
        BadValue { setting, value: crate::identity::printable(value, false), expected }
    }
}

impl Spelled for BadValue {
    fn spell(&self, name: &dyn Fn(Setting) -> String) -> String {
        format!("{} '{}' is not {}", name(self.setting), self.value, self.expected)
    }
}

display_with_fields!(BadValue);

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
        let fields: std::collections::BTreeSet<&str> = Setting::ALL.iter().map(|s| s.field()).collect();
        assert_eq!(fields.len(), Setting::ALL.len());
        for f in fields {
            assert!(f.chars().next().is_some_and(|c| c.is_ascii_lowercase()), "{f}");
            assert!(f.chars().all(|c| c.is_ascii_alphanumeric()), "{f}");
        }
    }

    #[test]
    fn a_bad_value_never_carries_control_characters() {
        let e = BadValue::new(Setting::MaxSurge, "1\u{1b}[2J", "a count");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }
}
