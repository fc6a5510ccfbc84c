//! `refit controller`: hub mode (crates/controller). `manifests` prints what a hub needs.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use refit_controller::manifests::{self, Options};

use crate::output::UsageError;

/// `refit controller ...`: without a subcommand, run a replica.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControllerArgs {
    /// What to do (none: run a controller replica).
    #[command(subcommand)]
    pub command: Option<ControllerCommand>,
    /// The hub's kubeconfig.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context.
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace the fleet's resources (and the leader Lease) live in.
    #[arg(long, short = 'n', default_value = "refit-system")]
    pub namespace: String,
    /// Where /healthz, /readyz and /metrics listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// The local store path member upgrades are given: their etcd backups and node-action
    /// locks lie beside it (default: a private directory of this replica's, removed when it
    /// exits). Their journals are on the hub.
    #[arg(long)]
    pub store: Option<std::path::PathBuf>,
    /// Refresh the release catalog this often (e.g. 6h; 1s to one year), as `refit catalog
    /// update` does, so auto-upgrade profiles see new releases without a new build.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::duration)]
    pub catalog_refresh_every: Option<std::time::Duration>,
    /// Where the scheduled refresh reads: a whole catalog by http(s) URL or file (default:
    /// upstream's release markers).
    #[arg(long, value_name = "URL|FILE", requires = "catalog_refresh_every")]
    pub catalog_from: Option<String>,
}

/// The controller's subcommands.
#[derive(Debug, Subcommand)]
pub enum ControllerCommand {
    /// Print the CRDs, RBAC, the approver admission policy and the Deployment (for kubectl apply -f -).
    Manifests(ManifestsArgs),
}

/// `refit controller manifests`.
#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// The namespace the fleet's resources live in.
    #[arg(long, short = 'n', default_value = "refit-system")]
    pub namespace: String,
    /// The controller image of the Deployment.
    #[arg(long, default_value = "refit:latest")]
    pub image: String,
    /// Controller replicas (they elect a leader).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub replicas: u32,
}

/// Runs `refit controller ...`.
pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => {
            check_namespace(&args.namespace)?;
            let cfg = refit_controller::serve::Config {
                hub: refit_kube::ClusterTarget { kubeconfig: args.kubeconfig, context: args.context },
                election: refit_controller::leader::Config::new(&args.namespace),
                namespace: args.namespace,
                listen: args.listen,
                journal: args.store,
                requests: member_requests(),
                catalog_refresh: args.catalog_refresh_every.map(|every| {
                    refit_controller::serve::CatalogRefresh {
                        source: refit_engine::catalog::Source::parse(
                            args.catalog_from.as_deref(),
                            refit_engine::catalog::UPSTREAM,
                        ),
                        every,
                    }
                }),
            };
            refit_controller::serve::run(cfg, |addr| {
                eprintln!("refit controller: listening on http://{addr}")
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(ControllerCommand::Manifests(m)) => {
            check_namespace(&m.namespace)?;
            let text =
                manifests::render(&Options { namespace: m.namespace, image: m.image, replicas: m.replicas })?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A member upgrade's engine request: the command line the local driver gives its `refit
/// upgrade` children (`refit_fleet::launch::upgrade_argv`), parsed by this binary's own parser
/// (`refit upgrade`'s clap arguments, then its `Input`) — one spelling of every flag for both.
fn member_requests() -> refit_controller::launcher::Requests {
    refit_controller::launcher::Requests(std::sync::Arc::new(
        |up: &refit_fleet::MemberUpgrade, store: &std::path::Path| {
            let exe = std::path::Path::new("refit");
            let argv = refit_fleet::launch::upgrade_argv(exe, store, up)?;
            crate::commands::upgrade::request_of(&argv).map_err(|e| format!("{e:#}"))
        },
    ))
}

fn check_namespace(ns: &str) -> anyhow::Result<()> {
    if refit_core::identity::is_dns_label(ns, refit_core::identity::DNS_LABEL_MAX) {
        return Ok(());
    }
    Err(UsageError(format!(
        "--namespace '{ns}' is not a namespace name (lowercase letters, digits and '-', at most 63)"
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use refit_core::fleet::{MemberTarget, UpgradeType};
    use refit_engine::NodeAction;
    use refit_store::fleet::MemberRecord;

    fn member_upgrade(action: &str, args: &[&str]) -> refit_fleet::MemberUpgrade {
        refit_fleet::MemberUpgrade {
            run: "to-137".into(),
            member: MemberRecord {
                name: "east-1".into(),
                context: Some("east".into()),
                action: Some(action.into()),
                upgrade_args: args.iter().map(|a| a.to_string()).collect(),
                ..MemberRecord::default()
            },
            upgrade_type: UpgradeType::ControlPlaneOnly,
            target: MemberTarget {
                kubernetes: Some("1.37.1".parse().unwrap()),
                node_images: Default::default(),
            },
            control_plane: None,
            not_after: None,
            policy: refit_core::path::Policy::Default,
        }
    }

    #[test]
    fn a_members_request_means_what_its_refit_upgrade_command_line_means() {
        let build = member_requests();
        let store = std::path::Path::new("/tmp/refit-test-store/refit.db");
        let up = member_upgrade("exec:./up.sh {node} {to}", &["--drain-timeout=5m", "--no-etcd-backup"]);
        let r = (build.0)(&up, store).unwrap();
        assert_eq!(
            r.action,
            Some(NodeAction::Exec { command: vec!["./up.sh".into(), "{node}".into(), "{to}".into()] })
        );
        assert_eq!(r.behaviour.drain_timeout_secs, 300);
        assert_eq!(r.backup, Some(refit_engine::BackupSpec::OptedOut));
        assert!(r.plan.control_plane_only, "the run's upgrade type reaches the plan");
        assert!(!r.cluster_services);
        // Bad settings are refused with the command line's own words, before any contact.
        let err = (build.0)(&member_upgrade("teleport", &[]), store).unwrap_err();
        assert!(err.contains("--action 'teleport'"), "{err}");
        let err = (build.0)(&member_upgrade("ssh", &["--drain-timeout=forever"]), store).unwrap_err();
        assert!(err.contains("--drain-timeout"), "{err}");
    }
}
