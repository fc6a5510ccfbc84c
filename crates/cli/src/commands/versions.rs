//! `refit versions`: what exists, what each version can go to, and the hop path to a target.

use std::process::ExitCode;

use refit_core::catalog::{Catalog, Support};
use refit_core::path::{Policy, UpgradePath, upgrade_path, upgrade_targets};
use refit_core::{Version, VersionRequest};
use serde::Serialize;

use crate::args::VersionsArgs;
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};

#[derive(Serialize)]
struct VersionRow {
    version: Version,
    support: Support,
    upgrades_to: Vec<Version>,
}

/// Compacts a sorted version list into per-minor ranges: `1.35.9, 1.36.0–1.36.4`.
pub fn compact(versions: &[Version]) -> String {
    let parts: Vec<String> = versions
        .chunk_by(|a, b| a.minor_version() == b.minor_version())
        .filter_map(|minor| match minor {
            [one] => Some(one.to_string()),
            [first, .., last] => Some(format!("{first}–{last}")),
            [] => None,
        })
        .collect();
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

fn support_text(s: &Support) -> String {
    match s {
        Support::Supported { end_of_life } => format!("supported until {end_of_life}"),
        Support::EndingSoon { end_of_life, days_left } => format!("ends {end_of_life} ({days_left} days)"),
        Support::EndOfLife { since: Some(d) } => format!("END OF LIFE since {d}"),
        Support::EndOfLife { since: None } => "END OF LIFE".into(),
        Support::Unknown => "unknown (newer than the catalog)".into(),
    }
}

pub fn run(args: VersionsArgs, format: Format) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(args.catalog.as_deref())?;
    let policy: Policy = args.policy.parse().map_err(usage)?;
    let today = jiff::Zoned::now().date();
    let from: Option<Version> = match &args.from {
        Some(f) => Some(f.parse::<Version>().map_err(|e| usage(format!("--from: {e}")))?),
        None => None,
    };
    match (&from, &args.to) {
        (None, Some(_)) => Err(usage("--to needs --from (the version you are upgrading from)")),
        (None, None) => list_all(&catalog, policy, today, args.all, format),
        (Some(from), None) => list_from(&catalog, from, policy, today, format),
        (Some(from), Some(to)) => {
            let to: VersionRequest = to.parse().map_err(|e| usage(format!("--to: {e}")))?;
            let path = upgrade_path(&catalog, from, &to, policy, args.force, today)
                .map_err(|e| usage(crate::remedy::sentence(&e.to_string(), &e.remedies())))?;
            print_path(&path, format)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list_all(
    catalog: &Catalog,
    policy: Policy,
    today: jiff::civil::Date,
    all: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let rows: Vec<VersionRow> = catalog
        .all_versions()
        .map(|v| VersionRow {
            version: v.clone(),
            support: catalog.support(v.minor_version(), today),
            upgrades_to: upgrade_targets(catalog, v, policy),
        })
        .filter(|r| all || !matches!(r.support, Support::EndOfLife { .. }))
        .collect();
    if !print_structured(format, &rows)? {
        let mut t = table(&["version", "support", "upgrades to"]);
        for r in &rows {
            t.add_row(vec![r.version.to_string(), support_text(&r.support), compact(&r.upgrades_to)]);
        }
        println!("{t}");
        if !all {
            println!(
                "\n(end-of-life releases hidden; --all shows them; policy {}, catalog of {})",
                policy, catalog.updated
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_from(
    catalog: &Catalog,
    from: &Version,
    policy: Policy,
    today: jiff::civil::Date,
    format: Format,
) -> anyhow::Result<ExitCode> {
    #[derive(Serialize)]
    struct FromResult {
        from: Version,
        support: Support,
        policy: Policy,
        targets: Vec<VersionRow>,
    }
    let targets = upgrade_targets(catalog, from, policy)
        .into_iter()
        .map(|v| VersionRow {
            support: catalog.support(v.minor_version(), today),
            upgrades_to: Vec::new(),
            version: v,
        })
        .collect();
    let result = FromResult {
        from: from.clone(),
        support: catalog.support(from.minor_version(), today),
        policy,
        targets,
    };
    if !print_structured(format, &result)? {
        println!("from {} ({}), policy {}:", result.from, support_text(&result.support), policy);
        let mut t = table(&["target", "support"]);
        for r in &result.targets {
            t.add_row(vec![r.version.to_string(), support_text(&r.support)]);
        }
        println!("{t}");
        if result.targets.is_empty() {
            println!(
                "no newer release is known; refresh the catalog with `refit catalog update` (or --catalog FILE)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_path(path: &UpgradePath, format: Format) -> anyhow::Result<()> {
    if print_structured(format, path)? {
        return Ok(());
    }
    if path.hops.is_empty() {
        println!("already at {}: nothing to do", path.to);
    } else {
        let mut t = table(&["hop", "from", "to", "kind"]);
        for (i, h) in path.hops.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                h.from.to_string(),
                h.to.to_string(),
                if h.is_minor() { "minor".into() } else { "patch".to_string() },
            ]);
        }
        println!("{t}");
    }
    for f in &path.forced {
        println!("WARNING (--force): {f}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_groups_by_minor() {
        let v: Vec<Version> =
            ["1.35.9", "1.36.0", "1.36.1", "1.36.2"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(compact(&v), "1.35.9, 1.36.0–1.36.2");
        assert_eq!(compact(&[]), "-");
    }
}
