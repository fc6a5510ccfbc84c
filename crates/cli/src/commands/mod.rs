//! One module per command; `run` dispatches.

mod build;
mod demo;
mod sandbox;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::{Cli, Command, SandboxCommand};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = cli.output;
    match cli.command {
        Command::Sandbox(cmd) => match cmd {
            SandboxCommand::Build(args) => build::run(args, format),
            SandboxCommand::Up(args) => sandbox::up(args, format).await,
            SandboxCommand::Down(dir) => sandbox::down(dir, format),
            SandboxCommand::Status(dir) => sandbox::status(dir, format).await,
            SandboxCommand::UpgradeNode(args) => sandbox::upgrade_node(args, format).await,
            SandboxCommand::AddNode(args) => sandbox::add_node(args, format).await,
            SandboxCommand::RemoveNode(args) => sandbox::remove_node(args, format).await,
            SandboxCommand::ServeLb(args) => sandbox::serve_lb(args).await,
        },
        Command::Demo(args) => demo::run(args, format).await,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "refit", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}
