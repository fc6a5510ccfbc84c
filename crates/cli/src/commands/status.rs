//! `refit status`: what the cluster runs, whether it is inside the skew policy and supported,
//! and where it can go next.

use std::process::ExitCode;
use std::time::Duration;

use refit_core::catalog::Support;
use refit_core::inventory::{Observed, StatusReport, assess};
use refit_kube::{ClusterTarget, connect};
use serde::Serialize;

use crate::args::StatusArgs;
use crate::commands::load_catalog;
use crate::commands::versions::compact;
use crate::output::{Format, print_structured, table};

/// What `-o json|yaml` prints.
#[derive(Serialize)]
struct StatusOutput<'a> {
    context: &'a str,
    server: &'a str,
    #[serde(flatten)]
    report: &'a StatusReport,
}

pub async fn run(args: StatusArgs, format: Format) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(args.catalog.as_deref())?;
    let target =
        ClusterTarget { kubeconfig: args.cluster.kubeconfig.clone(), context: args.cluster.context.clone() };
    let conn = connect(&target).await.map_err(|e| crate::output::usage(e.to_string()))?;
    let mut inventory = refit_kube::inventory::read_inventory(&conn).await?;
    inventory.kubectl = local_kubectl(&args.kubectl).await;
    let report = assess(inventory, &catalog, jiff::Zoned::now().date());
    let out = StatusOutput { context: &conn.context, server: &conn.server, report: &report };
    if !print_structured(format, &out)? {
        print!("{}", render(&conn.context, &conn.server, &report));
    }
    Ok(if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `kubectl version --client -o json` of the given binary ("none" skips it).
async fn local_kubectl(bin: &str) -> Option<Observed> {
    if bin == "none" {
        return None;
    }
    let run = tokio::process::Command::new(bin).args(["version", "--client", "-o", "json"]).output();
    let out = tokio::time::timeout(Duration::from_secs(10), run).await.ok()?.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let git = v.pointer("/clientVersion/gitVersion")?.as_str()?.to_string();
    Some(Observed {
        location: format!("local ({bin})"),
        reported: Some(git),
        source: "kubectl version --client".into(),
        error: None,
    })
}

fn support_line(s: &Option<Support>) -> String {
    match s {
        Some(Support::Supported { end_of_life }) => format!("supported until {end_of_life}"),
        Some(Support::EndingSoon { end_of_life, days_left }) => {
            format!("support ends {end_of_life} ({days_left} days)")
        }
        Some(Support::EndOfLife { since: Some(d) }) => format!("END OF LIFE since {d}"),
        Some(Support::EndOfLife { since: None }) => "END OF LIFE".into(),
        Some(Support::Unknown) => "unknown to the catalog".into(),
        None => "unknown (no apiserver answered)".into(),
    }
}

fn reported(o: &Observed) -> String {
    o.reported.clone().unwrap_or_else(|| format!("? ({})", o.error.as_deref().unwrap_or("unknown")))
}

/// The table view (pure, snapshot-tested).
pub fn render(context: &str, server: &str, r: &StatusReport) -> String {
    let inv = &r.inventory;
    let mut s = String::new();
    let cp = r.control_plane.as_ref().map(|v| v.git_version()).unwrap_or_else(|| "unknown".into());
    s.push_str(&format!(
        "Context {context} ({server})\nControl plane {cp}: {}\n\n",
        support_line(&r.support)
    ));

    let mut t = table(&["component", "where", "version", "source"]);
    let mut rows = |name: &str, list: &[Observed]| {
        for o in list {
            t.add_row(vec![name.to_string(), o.location.clone(), reported(o), o.source.clone()]);
        }
    };
    rows("kube-apiserver", &inv.apiservers);
    rows("kube-controller-manager", &inv.controller_managers);
    rows("kube-scheduler", &inv.schedulers);
    rows("etcd", &inv.etcd);
    rows("coredns", &inv.coredns);
    rows("cni", &inv.cni);
    if let Some(k) = &inv.kubectl {
        rows("kubectl", std::slice::from_ref(k));
    }
    s.push_str(&format!("{t}\n\n"));

    let mut t = table(&["node", "roles", "kubelet", "kube-proxy", "runtime", "kernel", "os"]);
    for n in &inv.nodes {
        t.add_row(vec![
            n.name.clone(),
            n.roles.join(","),
            n.kubelet.clone(),
            n.kube_proxy.clone().unwrap_or_else(|| "-".into()),
            n.container_runtime.clone(),
            n.kernel.clone(),
            n.os_image.clone(),
        ]);
    }
    s.push_str(&format!("{t}\n\n"));

    if r.violations.is_empty() {
        s.push_str("Version skew: every component is within the policy.\n");
    } else {
        s.push_str(&format!("Version skew: {} violation(s)\n", r.violations.len()));
        let mut t = table(&["component", "where", "version", "rule"]);
        for v in &r.violations {
            t.add_row(vec![
                v.instance.component.to_string(),
                v.instance.location.clone(),
                v.instance.version.to_string(),
                v.rule.clone(),
            ]);
        }
        s.push_str(&format!("{t}\n"));
    }
    for w in &r.warnings {
        s.push_str(&format!("WARNING {}: {}\n", w.subject, crate::remedy::sentence(&w.message, &w.remedy)));
    }
    s.push_str(&format!("\nNext versions (one control-plane step): {}\n", compact(&r.next_versions)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_core::catalog::Catalog;
    use refit_core::inventory::{Inventory, NodeInventory};

    fn seen(location: &str, reported: &str, source: &str) -> Observed {
        Observed {
            location: location.into(),
            reported: Some(reported.into()),
            source: source.into(),
            error: None,
        }
    }

    fn node(name: &str, roles: &str, kubelet: &str) -> NodeInventory {
        NodeInventory {
            name: name.into(),
            roles: vec![roles.into()],
            kubelet: kubelet.into(),
            kube_proxy: Some(kubelet.into()),
            container_runtime: "containerd://2.1.4".into(),
            kernel: "6.1.0-40-amd64".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
        }
    }

    fn report() -> StatusReport {
        let inv = Inventory {
            apiservers: vec![
                seen("https://10.0.0.1:6443", "v1.36.4", "GET /version"),
                Observed {
                    location: "https://10.0.0.2:6443".into(),
                    reported: None,
                    source: "GET /version".into(),
                    error: Some("connection refused".into()),
                },
            ],
            controller_managers: vec![seen("cp-1", "v1.36.4", "static pod image")],
            schedulers: vec![seen("cp-1", "v1.37.1", "static pod image")],
            etcd: vec![seen("cp-1", "3.6.8-0", "static pod image")],
            coredns: vec![seen("kube-system/coredns", "v1.14.2", "deployment image")],
            cni: vec![seen("kube-system/calico-node", "v3.30.0", "daemonset image")],
            nodes: vec![
                node("cp-1", "control-plane", "v1.36.4"),
                node("w-1", "worker", "v1.33.2"),
                node("w-2", "worker", "v1.31.0"),
            ],
            kubectl: Some(seen("local (kubectl)", "v1.36.0", "kubectl version --client")),
        };
        assess(inv, &Catalog::embedded().unwrap(), "2026-11-21".parse().unwrap())
    }

    #[test]
    fn table_snapshot() {
        insta::assert_snapshot!(render("prod", "https://lb:6443", &report()));
    }

    #[test]
    fn json_snapshot() {
        let r = report();
        let out = StatusOutput { context: "prod", server: "https://lb:6443", report: &r };
        insta::assert_json_snapshot!(out);
    }
}
