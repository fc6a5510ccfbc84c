//! Core's remedies as this command line's flags: core says *which* way out a finding or a
//! refused drain has (`refit_core::remedy::Remedy`), the CLI spells it as the flag that takes
//! it. An HTTP API or the hub controller spells the same value as a field of its request.

use refit_core::remedy::Remedy;

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
