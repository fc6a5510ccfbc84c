//! `refit controller`: hub mode (crates/controller). `manifests` prints what a hub needs.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use refit_controller::manifests::{self, Options};

use crate::output::UsageError;

/// `refit controller ...`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ControllerCommand,
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
pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ControllerCommand::Manifests(m) => {
            if !is_dns_label(&m.namespace) {
                return Err(UsageError(format!(
                    "--namespace '{}' is not a namespace name (lowercase letters, digits and '-', at most 63)",
                    m.namespace
                ))
                .into());
            }
            let text =
                manifests::render(&Options { namespace: m.namespace, image: m.image, replicas: m.replicas })?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A Kubernetes namespace name (RFC 1123 label).
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}
