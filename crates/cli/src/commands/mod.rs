//! One module per command; `run` dispatches.

mod apis;
mod build;
pub mod catalog;
pub mod controller;
mod demo;
pub mod fleet;
pub mod formats;
mod plan;
mod reach;
mod sandbox;
pub mod serve;
mod status;
mod upgrade;
mod versions;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::{Cli, Command, SandboxCommand};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Only fleet tables shorten texts; every other command's `-o wide` is its table.
    let format = match &cli.command {
        Command::Fleet(_) => cli.output,
        _ => cli.output.narrow(),
    };
    match cli.command {
        Command::Sandbox(cmd) => match cmd {
            SandboxCommand::Build(args) => build::run(args, format),
            SandboxCommand::Up(args) => sandbox::up(args, format).await,
            SandboxCommand::Down(dir) => sandbox::down(dir, format),
            SandboxCommand::Status(dir) => sandbox::status(dir, format).await,
            SandboxCommand::UpgradeNode(args) => sandbox::upgrade_node(args, format).await,
            SandboxCommand::AddNode(args) => sandbox::add_node(args, format).await,
            SandboxCommand::RemoveNode(args) => sandbox::remove_node(args, format).await,
            SandboxCommand::StopKubelet(args) => sandbox::set_kubelet(args, false, format).await,
            SandboxCommand::StartKubelet(args) => sandbox::set_kubelet(args, true, format).await,
            SandboxCommand::ServeLb(args) => sandbox::serve_lb(args).await,
            SandboxCommand::NodeAgent(args) => sandbox::node_agent(args).await,
            SandboxCommand::ServeRepo(args) => sandbox::serve_repo(args).await,
        },
        Command::Demo(args) => demo::run(args, format).await,
        Command::Versions(args) => versions::run(args, format),
        Command::Apis(args) => apis::run(args, format).await,
        Command::Status(args) => status::run(args, format).await,
        Command::Plan(args) => plan::run(args, format).await,
        Command::Upgrade(args) => upgrade::run(*args, format).await,
        Command::Fleet(args) => fleet::run(args, format).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Controller(args) => controller::run(args).await,
        Command::Catalog(cmd) => catalog::run(cmd, format).await,
        Command::Formats { name } => formats::run(name.as_deref()),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "refit", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The catalog from `--catalog FILE`, else the one `refit catalog update` kept (when newer),
/// else the built-in one. A bad file is bad input (exit 2).
pub fn load_catalog(path: Option<&std::path::Path>) -> anyhow::Result<refit_core::catalog::Catalog> {
    use refit_engine::catalog::{CatalogLoadError, load};
    match load(path, None) {
        Ok((c, _)) => Ok(c),
        Err(e @ (CatalogLoadError::Read { .. } | CatalogLoadError::Invalid { .. })) if path.is_some() => {
            Err(crate::output::usage(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}
