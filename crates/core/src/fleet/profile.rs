//! Auto-upgrade profiles: keep a fleet on a release channel by generating update runs.
//!
//! Channels as in Azure Fleet: Stable (newest patch of N-1), Rapid (newest patch of N),
//! TargetKubernetesVersion (a pinned minor whose patches follow), NodeImage (node images only,
//! always Consistent). N is the newest minor generally available on `today` according to the
//! release catalog, so a catalog that already lists an upcoming release does not pull the fleet
//! onto it early.
//!
//! A profile never moves a member more than one minor in a run: members further behind are
//! listed as held back (and the run skips them with the reason), so stragglers are aligned with
//! a manual run first — Azure's rule, made visible. The run a profile generates has a
//! deterministic name (profile, channel, target), so asking again returns the same run rather
//! than a second one.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::is_valid_name;
use super::target::{NodeImageSelection, UpgradeSpec, UpgradeType};
use crate::catalog::Catalog;
use crate::setting::{Setting, Spelled};
use crate::version::{MinorVersion, Version};

/// The longest profile name: leaves room for the generated run's suffix in 63 characters.
pub const MAX_PROFILE_NAME: usize = 40;

/// What a profile follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Channel {
    /// The newest patch of the minor before the newest (N-1).
    Stable,
    /// The newest patch of the newest minor (N).
    Rapid,
    /// Node images only.
    NodeImage,
    /// The newest patch of a pinned minor.
    TargetKubernetesVersion,
}

impl Channel {
    fn slug(self) -> &'static str {
        match self {
            Channel::Stable => "stable",
            Channel::Rapid => "rapid",
            Channel::NodeImage => "nodeimage",
            Channel::TargetKubernetesVersion => "target",
        }
    }
}

impl std::str::FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Stable" => Ok(Channel::Stable),
            "Rapid" => Ok(Channel::Rapid),
            "NodeImage" => Ok(Channel::NodeImage),
            "TargetKubernetesVersion" => Ok(Channel::TargetKubernetesVersion),
            _ => Err(format!(
                "unknown channel '{s}': expected Stable, Rapid, NodeImage or TargetKubernetesVersion"
            )),
        }
    }
}

/// How the last trigger went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TriggerStatus {
    /// A run was generated (or found).
    Succeeded,
    /// Generating failed.
    Failed,
}

/// The profile's last trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// When.
    pub at: Timestamp,
    /// How it went.
    pub status: TriggerStatus,
    /// The run generated or found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The Kubernetes version it targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<Version>,
    /// What happened, for people ("nothing to do: every member at 1.37.1").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An auto-upgrade profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// What it follows.
    pub channel: Channel,
    /// The pinned minor (TargetKubernetesVersion only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kubernetes_version: Option<MinorVersion>,
    /// The strategy its runs use (None: one by one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Node images for Kubernetes channels (NodeImage always uses Consistent).
    #[serde(default)]
    pub node_image_selection: NodeImageSelection,
    /// A disabled profile generates nothing; runs already made are untouched.
    #[serde(default)]
    pub disabled: bool,
    /// Its last trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<Trigger>,
    /// The run it generated last (kept apart from the last trigger, which a "nothing to do"
    /// overwrites): [`fire`] generates a target's run once, so a run deleted since is not
    /// generated again. The hub keeps it in the profile's `status.lastGeneratedRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_generated_run: Option<String>,
}

/// Why a profile was refused (its settings spelled by the edge: [`Spelled`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// A name that does not follow the pattern.
    BadName(String),
    /// TargetKubernetesVersion without a minor.
    TargetRequired,
    /// A minor on another channel.
    TargetNotAllowed(Channel),
    /// The strategy name does not follow the pattern.
    BadStrategy(String),
    /// Not YAML/JSON of the expected shape.
    Parse(String),
}

impl Spelled for ProfileError {
    fn spell(&self, name: &dyn Fn(Setting) -> String) -> String {
        let target = name(Setting::TargetKubernetesVersion);
        match self {
            ProfileError::BadName(n) => format!(
                "profile name '{n}' is not valid: use lowercase letters, digits and inner dashes, 1–40 characters"
            ),
            ProfileError::TargetRequired => {
                format!("channel TargetKubernetesVersion needs {target} MINOR (e.g. 1.36)")
            }
            ProfileError::TargetNotAllowed(c) => format!(
                "{target} applies only to channel TargetKubernetesVersion (this profile follows {c:?})"
            ),
            ProfileError::BadStrategy(n) => format!("strategy name '{n}' is not valid"),
            ProfileError::Parse(e) => {
                format!("the profile is not valid: {e} (refit formats profile shows a complete one)")
            }
        }
    }
}

crate::setting::display_with_fields!(ProfileError);

/// A member held back because the target is more than one minor ahead of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldBack {
    /// The member.
    pub member: String,
    /// Its control plane.
    pub version: Version,
    /// Why, and the way out.
    pub reason: String,
}

/// The run a profile would generate now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileTarget {
    /// Deterministic run name: asking again gives the same name, so the same run.
    pub run_name: String,
    /// The goal of the run.
    pub spec: UpgradeSpec,
    /// Members the run will skip as too far behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<HeldBack>,
}

impl Profile {
    /// Parses a profile from YAML or JSON and validates it.
    pub fn from_yaml(text: &str) -> Result<Profile, ProfileError> {
        const HINTS: &crate::yaml::Hints = &[
            ("", "a mapping with name and channel (refit formats profile)"),
            ("channel", "one of Stable, Rapid, NodeImage, TargetKubernetesVersion"),
            ("targetKubernetesVersion", "a minor, quoted, e.g. \"1.36\""),
            ("nodeImageSelection", "Latest or Consistent"),
            ("disabled", "true or false"),
        ];
        let p: Profile = crate::yaml::from_str_hinted(text, HINTS).map_err(ProfileError::Parse)?;
        p.validate()?;
        Ok(p)
    }

    /// Checks the name and the channel's fields.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if !is_valid_name(&self.name) || self.name.len() > MAX_PROFILE_NAME {
            return Err(ProfileError::BadName(self.name.clone()));
        }
        match (self.channel, &self.target_kubernetes_version) {
            (Channel::TargetKubernetesVersion, None) => return Err(ProfileError::TargetRequired),
            (c, Some(_)) if c != Channel::TargetKubernetesVersion => {
                return Err(ProfileError::TargetNotAllowed(c));
            }
            _ => {}
        }
        if let Some(s) = &self.strategy
            && !is_valid_name(s)
        {
            return Err(ProfileError::BadStrategy(s.clone()));
        }
        Ok(())
    }

    /// Records a trigger: `Ok(run name)` or `Err(error)`.
    pub fn record_trigger(
        &mut self,
        at: Timestamp,
        outcome: Result<&ProfileTarget, String>,
        message: Option<String>,
    ) {
        self.last_trigger = Some(match outcome {
            Ok(t) => Trigger {
                at,
                status: TriggerStatus::Succeeded,
                run: Some(t.run_name.clone()),
                kubernetes_version: t.spec.kubernetes_version.clone(),
                message,
                error: None,
            },
            Err(e) => Trigger {
                at,
                status: TriggerStatus::Failed,
                run: None,
                kubernetes_version: None,
                message,
                error: Some(e),
            },
        });
    }
}

/// The newest minor generally available on `today`.
pub fn newest_ga_minor(catalog: &Catalog, today: Date) -> Option<MinorVersion> {
    catalog.releases.iter().filter(|r| r.ga <= today).map(|r| r.minor).max()
}

/// The newest released (not pre-release) patch of `minor`, if it is out by `today`.
fn newest_ga_patch(catalog: &Catalog, minor: MinorVersion, today: Date) -> Option<Version> {
    let r = catalog.release(minor).filter(|r| r.ga <= today)?;
    r.patches.iter().filter(|p| !p.is_prerelease()).max().cloned()
}

/// The Kubernetes release a channel points at on `today` (None for NodeImage, or when the
/// catalog has no such release).
pub fn channel_version(profile: &Profile, catalog: &Catalog, today: Date) -> Option<Version> {
    let n = newest_ga_minor(catalog, today)?;
    let minor = match profile.channel {
        Channel::Rapid => n,
        Channel::Stable => MinorVersion::new(n.major, n.minor.checked_sub(1)?),
        Channel::TargetKubernetesVersion => profile.target_kubernetes_version?,
        Channel::NodeImage => return None,
    };
    newest_ga_patch(catalog, minor, today)
}

/// The run the profile would generate for members at `member_versions` (control planes) on
/// `today`, or None: disabled, no members, no such release in the catalog, or nothing to move.
pub fn target_for(
    profile: &Profile,
    catalog: &Catalog,
    member_versions: &BTreeMap<String, Version>,
    today: Date,
) -> Option<ProfileTarget> {
    if profile.disabled || member_versions.is_empty() {
        return None;
    }
    if profile.channel == Channel::NodeImage {
        let mut spec = UpgradeSpec::new(UpgradeType::NodeImageOnly, None);
        spec.node_image_selection = NodeImageSelection::Consistent;
        // Node images are not in the catalog; one generated run per profile and day.
        let day = today.strftime("%Y%m%d");
        return Some(ProfileTarget {
            run_name: format!("{}-nodeimage-{day}", profile.name),
            spec,
            held_back: vec![],
        });
    }
    let target = channel_version(profile, catalog, today)?;
    let tm = target.minor_version();
    let mut held_back = Vec::new();
    let mut movable = 0usize;
    for (name, v) in member_versions {
        if tm.minors_ahead_of(v.minor_version()) > 1 {
            held_back.push(HeldBack {
                member: name.clone(),
                version: v.clone(),
                reason: format!(
                    "{v} is more than one minor behind {target}: profiles move a member one minor per run; bring it to {}.{} with a manual run first",
                    tm.major,
                    tm.minor.saturating_sub(1)
                ),
            });
        } else if v.release() < target {
            movable = movable.saturating_add(1);
        }
    }
    if movable == 0 {
        return None;
    }
    let mut spec = UpgradeSpec::new(UpgradeType::Full, Some(target.clone()));
    spec.node_image_selection = profile.node_image_selection;
    spec.at_most_one_minor = true;
    let version = target.to_string().replace('.', "-");
    Some(ProfileTarget {
        run_name: format!("{}-{}-{version}", profile.name, profile.channel.slug()),
        spec,
        held_back,
    })
}

/// The run a profile fires by itself now — the controller's and `refit fleet daemon`'s one
/// rule: the channel's target (none when the profile is disabled or nothing moves, see
/// [`target_for`]), exactly once per target. `last_generated` is the run the profile generated
/// last: a target whose run was generated already is not generated again, even when that run
/// was deleted since (deleting a run is how a person says "not this one").
pub fn fire(
    profile: &Profile,
    last_generated: Option<&str>,
    catalog: &Catalog,
    member_versions: &BTreeMap<String, Version>,
    today: Date,
) -> Option<ProfileTarget> {
    target_for(profile, catalog, member_versions, today)
        .filter(|t| last_generated != Some(t.run_name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixture;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    fn profile(channel: Channel) -> Profile {
        Profile {
            name: "fleet-a".into(),
            channel,
            target_kubernetes_version: None,
            strategy: None,
            node_image_selection: NodeImageSelection::Latest,
            disabled: false,
            last_trigger: None,
            last_generated_run: None,
        }
    }

    fn members(vs: &[(&str, &str)]) -> BTreeMap<String, Version> {
        vs.iter().map(|(n, x)| (n.to_string(), v(x))).collect()
    }

    #[test]
    fn channels_resolve_against_what_is_released_today() {
        let cat = fixture::catalog();
        // The fixture's 1.37 is GA on 2026-08-26.
        let after = date("2026-11-21");
        let before = date("2026-06-01");
        assert_eq!(channel_version(&profile(Channel::Rapid), &cat, after), Some(v("1.37.1")));
        assert_eq!(channel_version(&profile(Channel::Stable), &cat, after), Some(v("1.36.4")));
        assert_eq!(channel_version(&profile(Channel::Rapid), &cat, before), Some(v("1.36.4")));
        assert_eq!(channel_version(&profile(Channel::Stable), &cat, before), Some(v("1.35.8")));
        let mut pinned = profile(Channel::TargetKubernetesVersion);
        pinned.target_kubernetes_version = Some(MinorVersion::new(1, 35));
        assert_eq!(channel_version(&pinned, &cat, after), Some(v("1.35.8")));
        pinned.target_kubernetes_version = Some(MinorVersion::new(1, 37));
        assert_eq!(channel_version(&pinned, &cat, before), None); // not out yet
        assert_eq!(channel_version(&profile(Channel::NodeImage), &cat, after), None);
    }

    #[test]
    fn a_profile_moves_members_one_minor_and_holds_back_the_rest() {
        let cat = fixture::catalog();
        let today = date("2026-11-21");
        let fleet = members(&[("a", "1.36.2"), ("b", "1.37.0"), ("c", "1.35.1"), ("d", "1.37.1")]);
        let t = target_for(&profile(Channel::Rapid), &cat, &fleet, today).unwrap();
        assert_eq!(t.spec.kubernetes_version, Some(v("1.37.1")));
        assert_eq!(t.spec.upgrade_type, UpgradeType::Full);
        assert!(t.spec.at_most_one_minor);
        assert_eq!(t.held_back.len(), 1);
        assert_eq!(t.held_back[0].member, "c");
        assert!(t.held_back[0].reason.contains("bring it to 1.36"), "{}", t.held_back[0].reason);
        assert_eq!(t.run_name, "fleet-a-rapid-1-37-1");
        // Asking again gives the same run.
        assert_eq!(target_for(&profile(Channel::Rapid), &cat, &fleet, today), Some(t));
        // Nothing to move: None.
        let current = members(&[("b", "1.37.1"), ("d", "1.37.1")]);
        assert_eq!(target_for(&profile(Channel::Rapid), &cat, &current, today), None);
        // Only stragglers: nothing this profile may do.
        let far = members(&[("c", "1.35.1")]);
        assert_eq!(target_for(&profile(Channel::Rapid), &cat, &far, today), None);
        // Disabled: nothing.
        let mut off = profile(Channel::Rapid);
        off.disabled = true;
        assert_eq!(target_for(&off, &cat, &fleet, today), None);
    }

    #[test]
    fn a_profile_fires_once_per_target_never_when_disabled_and_not_again_for_a_deleted_run() {
        let cat = fixture::catalog();
        let today = date("2026-11-21");
        let fleet = members(&[("a", "1.36.2")]);
        let mut p = profile(Channel::Rapid);
        let t = fire(&p, None, &cat, &fleet, today).unwrap();
        assert_eq!(t.run_name, "fleet-a-rapid-1-37-1");
        assert_eq!(
            fire(&p, Some("fleet-a-rapid-1-37-0"), &cat, &fleet, today),
            Some(t.clone()),
            "a newer target"
        );
        assert_eq!(fire(&p, Some("fleet-a-rapid-1-37-1"), &cat, &fleet, today), None, "generated already");
        p.disabled = true;
        assert_eq!(fire(&p, None, &cat, &fleet, today), None, "disabled");
        p.disabled = false;
    }

    proptest::proptest! {
        /// Whatever the fleet and the channel: a disabled profile never fires, a target fires
        /// once however often the profile is looked at, and the run it fires is never the one it
        /// generated last.
        #[test]
        fn a_profile_fires_at_most_once_per_target(
            versions in proptest::collection::btree_map("[a-e]", (35u64..=37, 0u64..=9), 0..5),
            channel in proptest::sample::select(vec![Channel::Stable, Channel::Rapid, Channel::NodeImage]),
            disabled in proptest::bool::ANY,
            looks in 1usize..5,
        ) {
            let cat = fixture::catalog();
            let today = date("2026-11-21");
            let fleet: BTreeMap<String, Version> =
                versions.into_iter().map(|(n, (mi, pa))| (n, v(&format!("1.{mi}.{pa}")))).collect();
            let mut p = profile(channel);
            p.disabled = disabled;
            let mut fired = 0;
            for _ in 0..looks {
                if let Some(t) = fire(&p, p.last_generated_run.as_deref(), &cat, &fleet, today) {
                    proptest::prop_assert!(!disabled);
                    proptest::prop_assert_ne!(p.last_generated_run.as_deref(), Some(t.run_name.as_str()));
                    let target = target_for(&p, &cat, &fleet, today);
                    proptest::prop_assert_eq!(Some(&t), target.as_ref());
                    p.last_generated_run = Some(t.run_name);
                    fired += 1;
                }
            }
            proptest::prop_assert!(fired <= 1, "fired {} times", fired);
        }
    }

    #[test]
    fn node_image_profiles_generate_a_consistent_image_run_per_day() {
        let cat = fixture::catalog();
        let fleet = members(&[("a", "1.36.2")]);
        let t = target_for(&profile(Channel::NodeImage), &cat, &fleet, date("2026-11-21")).unwrap();
        assert_eq!(t.run_name, "fleet-a-nodeimage-20261121");
        assert_eq!(t.spec.upgrade_type, UpgradeType::NodeImageOnly);
        assert_eq!(t.spec.node_image_selection, NodeImageSelection::Consistent);
        assert_eq!(t.spec.kubernetes_version, None);
    }

    #[test]
    fn profiles_validate_and_record_triggers() {
        let p = Profile::from_yaml(
            "name: weekly\nchannel: TargetKubernetesVersion\ntargetKubernetesVersion: \"1.36\"\n",
        )
        .unwrap();
        assert_eq!(p.target_kubernetes_version, Some(MinorVersion::new(1, 36)));
        for (text, want) in [
            ("name: weekly\nchannel: TargetKubernetesVersion\n", ProfileError::TargetRequired),
            (
                "name: weekly\nchannel: Rapid\ntargetKubernetesVersion: \"1.36\"\n",
                ProfileError::TargetNotAllowed(Channel::Rapid),
            ),
            ("name: Weekly\nchannel: Rapid\n", ProfileError::BadName("Weekly".into())),
        ] {
            assert_eq!(Profile::from_yaml(text).unwrap_err(), want, "{text}");
        }
        assert!(matches!(Profile::from_yaml("name: w\nchannel: Nightly\n"), Err(ProfileError::Parse(_))));
        assert!(matches!(
            Profile::from_yaml("name: w\nchannel: Rapid\ncolour: red\n"),
            Err(ProfileError::Parse(_))
        ));

        let mut p = profile(Channel::Rapid);
        let at: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let t =
            target_for(&p, &fixture::catalog(), &members(&[("a", "1.36.2")]), date("2026-11-21")).unwrap();
        p.record_trigger(at, Ok(&t), None);
        let last = p.last_trigger.clone().unwrap();
        assert_eq!(
            (last.status, last.run.as_deref()),
            (TriggerStatus::Succeeded, Some("fleet-a-rapid-1-37-1"))
        );
        p.record_trigger(at, Err("store unavailable".into()), None);
        assert_eq!(p.last_trigger.as_ref().unwrap().error.as_deref(), Some("store unavailable"));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&json).unwrap(), p);
    }
}
