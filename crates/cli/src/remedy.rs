//! Core's remedies as this command line's flags: core says *which* way out a finding or a
//! refused drain has (`refit_core::remedy::Remedy`), the CLI spells it as the flag that takes
//! it. An HTTP API or the hub controller spells the same value as a field of its request.

use refit_core::remedy::Remedy;
use refit_core::setting::{Setting, Spelled};

/// The flag that gives setting `s` on this command line.
pub fn setting_flag(s: Setting) -> String {
    match s {
        Setting::MaxUnavailable => "--max-unavailable",
        Setting::MaxUnavailableCap => "--max-unavailable-cap",
        Setting::AcrossZones => "--across-zones",
        Setting::MaxSurge => "--max-surge",
        Setting::Action => "--action",
        Setting::OnUndrainable => "--on-undrainable",
        Setting::UpgradeType => "--upgrade-type",
        Setting::KubernetesVersion => "--kubernetes-version",
        Setting::TargetKubernetesVersion => "--target-kubernetes-version",
        Setting::Accept => "--accept",
        Setting::PartialOk => "--partial-ok",
        Setting::IgnoreSafetyChecks => "--ignore-safety-checks",
        Setting::NodeImages => "--node-images",
    }
    .into()
}

/// A core message that names settings, with this command line's flags.
pub fn spelled(m: &impl Spelled) -> String {
    m.spell(&setting_flag)
}

/// A core refusal naming settings as bad input (exit 2), spelled with this command line's flags.
pub fn usage_spelled(m: impl Spelled) -> anyhow::Error {
    crate::output::usage(spelled(&m))
}

/// The flag (with its argument, when the remedy names one) that takes `r`.
pub fn flag(r: &Remedy) -> String {
    match r {
        Remedy::DeleteEmptyDirData => "--delete-emptydir-data".into(),
        Remedy::DeleteUnmanagedPods => "--delete-unmanaged-pods".into(),
        Remedy::Accept { check, subject } => format!("--accept {check}={subject}"),
        Remedy::AcceptEach => "--accept CHECK=SUBJECT".into(),
        Remedy::LowerMaxUnavailable => "--max-unavailable".into(),
        Remedy::MinFreeDisk => "--min-free-disk".into(),
        Remedy::Force | Remedy::OverrideVersionRule => "--force".into(),
        Remedy::RefreshCatalog => "`refit catalog update` (or --catalog FILE)".into(),
    }
}

/// `message`, followed by its ways out as flags: `… (allow with --delete-emptydir-data)`.
pub fn sentence<'a>(message: &str, remedies: impl IntoIterator<Item = &'a Remedy>) -> String {
    let ways: Vec<String> = remedies.into_iter().map(|r| format!("{} {}", r.verb(), flag(r))).collect();
    if ways.is_empty() { message.to_string() } else { format!("{message} ({})", ways.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every long flag of every subcommand.
    fn long_flags(c: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        out.extend(c.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")));
        for sub in c.get_subcommands() {
            long_flags(sub, out);
        }
    }

    #[test]
    fn every_setting_is_spelled_as_a_flag_this_command_line_has() {
        let mut flags = std::collections::BTreeSet::new();
        long_flags(&<crate::args::Cli as clap::CommandFactory>::command(), &mut flags);
        for &s in Setting::ALL {
            assert!(
                flags.contains(&setting_flag(s)),
                "{s:?} is spelled {}, which no command takes",
                setting_flag(s)
            );
        }
        let e = refit_core::batch::BatchingError::AutoOnly(Setting::AcrossZones);
        assert_eq!(
            spelled(&e),
            "--across-zones applies only to --max-unavailable auto (a fixed size is its own cap and ignores zones)"
        );
        let e = refit_core::fleet::parse_image_targets(Some("ubuntu/1")).unwrap_err();
        assert_eq!(
            spelled(&e),
            "--node-images 'ubuntu/1': expected FAMILY=VERSION (e.g. ubuntu-2404=202606.10.0)"
        );
    }

    #[test]
    fn a_message_reads_with_its_flags() {
        assert_eq!(sentence("it will not come back", &[]), "it will not come back");
        assert_eq!(
            sentence("uses emptyDir", &[Remedy::DeleteEmptyDirData]),
            "uses emptyDir (allow with --delete-emptydir-data)"
        );
        assert_eq!(
            sentence(
                "lost when the pod moves",
                &[Remedy::Accept { check: "local-data".into(), subject: "pod/a/b".into() }, Remedy::Force]
            ),
            "lost when the pod moves (accept with --accept local-data=pod/a/b; include it with --force)"
        );
        assert_eq!(sentence("room", &[Remedy::LowerMaxUnavailable]), "room (or lower --max-unavailable)");
        assert_eq!(sentence("disk", &[Remedy::MinFreeDisk]), "disk (or set --min-free-disk)");
    }
}
