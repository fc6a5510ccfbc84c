//! `refit apis --to V`: which removed APIs the cluster still uses, for a target release.
//!
//! Thin: parse, connect, let refit_kube gather the signals and refit_core judge them, print.

use std::collections::BTreeSet;
use std::process::ExitCode;

use refit_core::removed::{Finding, Severity, SignalKind, Summary, findings};
use refit_core::{MinorVersion, Version, VersionRequest};
use refit_kube::{ClusterTarget, connect};
use serde::Serialize;

use crate::args::ApisArgs;
use crate::commands::load_catalog;
use crate::output::{Format, print_structured, table, usage};

/// What `-o json|yaml` prints.
#[derive(Serialize)]
struct ApisReport<'a> {
    context: &'a str,
    server: &'a str,
    /// The oldest apiserver's version: what the cluster is until its upgrade finishes.
    current: Version,
    target: MinorVersion,
    /// The newest minor the catalog knows removals for.
    catalog_newest: MinorVersion,
    summary: Summary,
    findings: &'a [Finding],
}

pub async fn run(args: ApisArgs, format: Format) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(args.catalog.as_deref())?;
    let target = args
        .to
        .parse::<VersionRequest>()
        .map_err(|e| usage(format!("--to: {e} (e.g. --to 1.37)")))?
        .minor_version();
    let cluster =
        ClusterTarget { kubeconfig: args.cluster.kubeconfig.clone(), context: args.cluster.context.clone() };
    let conn = connect(&cluster).await.map_err(|e| usage(e.to_string()))?;
    let current = refit_kube::apis::oldest_apiserver_version(&conn).await?;
    let signals = refit_kube::apis::collect_signals(&conn, &catalog).await?;
    let found = findings(&catalog, current.minor_version(), target, &signals);
    let report = ApisReport {
        context: &conn.context,
        server: &conn.server,
        current,
        target,
        catalog_newest: catalog.newest_minor(),
        summary: Summary::of(&found),
        findings: &found,
    };
    if !print_structured(format, &report)? {
        print!("{}", render(&report));
    }
    Ok(if found.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The WHERE column: the place, plus the field managers for a managed-fields finding.
fn place(f: &Finding) -> String {
    if f.signal == SignalKind::ManagedFields && !f.managers.is_empty() {
        format!("{} (by {})", f.location, f.managers.join(", "))
    } else {
        f.location.clone()
    }
}

fn render(r: &ApisReport<'_>) -> String {
    let mut out = String::new();
    if r.findings.is_empty() {
        out.push_str(&format!(
            "no removed API in use for {} (cluster at {}, context {})\n",
            r.target, r.current, r.context
        ));
    } else {
        let mut t = table(&["severity", "removed in", "api", "where", "signal", "use instead"]);
        for f in r.findings {
            t.add_row(vec![
                f.severity.to_string(),
                f.removed_in.to_string(),
                format!("{} {}", f.api_version, f.kind),
                place(f),
                f.signal.to_string(),
                f.advice(),
            ]);
        }
        out.push_str(&format!("{t}\n"));
        // Migration caveats once per API, for the findings whose column shows a replacement.
        let mut noted = BTreeSet::new();
        let notes: Vec<String> = r
            .findings
            .iter()
            .filter(|f| f.use_instead.is_some())
            .filter_map(|f| Some((f.api_version.clone(), f.note.clone()?)))
            .filter(|(gv, _)| noted.insert(gv.clone()))
            .map(|(gv, note)| format!("  {gv}: {note}"))
            .collect();
        if !notes.is_empty() {
            out.push_str(&format!("\nnotes:\n{}\n", notes.join("\n")));
        }
        out.push_str(&format!(
            "\n{} crossing the upgrade from {} to {} (fix before upgrading), {} already removed (stale manifests or clients)\n",
            r.summary.crossing,
            r.current.minor_version(),
            r.target,
            r.summary.already_removed
        ));
    }
    if r.findings.iter().any(|f| f.signal == SignalKind::Metric) {
        out.push_str("(metric findings count requests since each apiserver last started)\n");
    }
    if r.target > r.catalog_newest {
        out.push_str(&format!(
            "the catalog knows removals up to {} only; refresh it with --catalog FILE\n",
            r.catalog_newest
        ));
    }
    if r.findings.iter().all(|f| f.severity == Severity::AlreadyRemoved)
        && r.target < r.current.minor_version()
    {
        out.push_str(&format!("note: --to {} is older than the cluster ({})\n", r.target, r.current));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_core::catalog::Catalog;
    use refit_core::removed::{ObjectRef, Signal};

    fn obj(kind: &str, ns: &str, name: &str) -> ObjectRef {
        ObjectRef { kind: kind.into(), namespace: Some(ns.into()), name: name.into() }
    }

    /// One finding of each signal, crossing and already removed, from the shipped catalog.
    fn sample() -> Vec<Finding> {
        let signals = vec![
            Signal::LastApplied {
                object: obj("Ingress", "shop", "web"),
                api_version: "extensions/v1beta1".into(),
            },
            Signal::ManagedFields {
                object: obj("HorizontalPodAutoscaler", "shop", "api"),
                manager: "kubectl-client-side-apply".into(),
                api_version: "autoscaling/v2beta2".into(),
            },
            Signal::HelmRelease {
                release: "legacy".into(),
                namespace: "ops".into(),
                revision: 7,
                object_kind: "PodSecurityPolicy".into(),
                object_name: "restricted".into(),
                api_version: "policy/v1beta1".into(),
            },
            Signal::Metric {
                endpoint: "https://10.0.0.1:6443".into(),
                group: "storage.k8s.io".into(),
                version: "v1beta1".into(),
                resource: "volumeattributesclasses".into(),
                removed_release: "1.37".into(),
            },
        ];
        findings(&Catalog::embedded().unwrap(), MinorVersion::new(1, 36), MinorVersion::new(1, 37), &signals)
    }

    fn report(found: &[Finding]) -> ApisReport<'_> {
        ApisReport {
            context: "prod",
            server: "https://lb:6443",
            current: "1.36.4".parse().unwrap(),
            target: MinorVersion::new(1, 37),
            catalog_newest: MinorVersion::new(1, 37),
            summary: Summary::of(found),
            findings: found,
        }
    }

    #[test]
    fn table_snapshot() {
        let found = sample();
        assert_eq!(found.len(), 4);
        insta::assert_snapshot!(render(&report(&found)));
    }

    #[test]
    fn json_snapshot() {
        let found = sample();
        insta::assert_json_snapshot!(report(&found));
    }
}
