//! `refit demo`: the README's first command. Builds what it needs, starts a sandbox at 1.36
//! with demo workloads (or reuses a running one), and shows what runs.

use std::process::ExitCode;

use refit_testbed::TestbedVersions;

use crate::args::{DemoArgs, Workloads};
use crate::commands::sandbox;
use crate::output::Format;

pub async fn run(args: DemoArgs, format: Format) -> anyhow::Result<ExitCode> {
    let dir = sandbox::sandbox_dir(&args.dir)?;
    let versions = TestbedVersions::from_env()?;
    let version = sandbox::resolve_version("1.36", &versions)?;
    let tb = match refit_testbed::Testbed::attach(&dir) {
        Ok(tb) if tb.recorded_pids().iter().any(|(n, _, alive)| n == "etcd" && *alive) => {
            if format == Format::Table {
                println!("reusing the sandbox running in {}", dir.display());
            }
            tb
        }
        _ => {
            if format == Format::Table {
                println!(
                    "starting a sandbox: Kubernetes v{version}, 1 control-plane member, {} workers, demo workloads",
                    args.workers
                );
            }
            sandbox::start(dir, &version, 1, args.workers, Some(Workloads::Demo), format != Format::Table)
                .await?
        }
    };
    let status = sandbox::collect_status(&tb).await?;
    sandbox::print_status(&status, format)?;
    if format == Format::Table {
        println!("\nnext: export KUBECONFIG={}; kubectl get pods -A", tb.kubeconfig().display());
        println!("stop it with: refit sandbox down");
    }
    Ok(ExitCode::SUCCESS)
}
