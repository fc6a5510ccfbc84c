//! `refit demo`: the README's first command. Builds what it needs, starts a sandbox at 1.36
//! with demo workloads (or reuses a running one), shows what runs, upgrades it to 1.37 with
//! `refit upgrade` through the generic exec action (`refit sandbox upgrade-node`), exactly as a
//! user would type it, and shows what runs afterwards. Every release it needs is built first.

use std::process::ExitCode;

use refit_testbed::TestbedVersions;

use crate::args::{DemoArgs, Workloads};
use crate::commands::sandbox;
use crate::output::Format;

pub async fn run(args: DemoArgs, format: Format) -> anyhow::Result<ExitCode> {
    let dir = sandbox::sandbox_dir(&args.dir)?;
    let versions = TestbedVersions::from_env()?;
    let version = sandbox::resolve_version("1.36", &versions)?;
    let to = sandbox::resolve_version("1.37", &versions)?;
    if !args.no_upgrade {
        // Every release the demo needs is built before anything starts: the 1.37 build takes
        // minutes cold, and inside the upgrade it would run in the control-plane node's step,
        // under its node timeout. (`sandbox::start` builds the 1.36 side.)
        crate::commands::build::ensure(
            &refit_testbed::Cache::from_env()?,
            &[refit_testbed::Component::Kubernetes(to.clone())],
            refit_testbed::Check::Quick,
        )?;
    }
    let tb = match refit_testbed::sandbox::running(&dir) {
        Some(tb) => {
            if format == Format::Table {
                println!("reusing the sandbox running in {}", dir.display());
            }
            tb
        }
        None => {
            if format == Format::Table {
                println!(
                    "starting a sandbox: Kubernetes v{version}, 1 control-plane member, {} workers, demo workloads",
                    args.workers
                );
            }
            sandbox::start(
                dir.clone(),
                &version,
                1,
                args.workers,
                Some(Workloads::Demo),
                format != Format::Table,
            )
            .await?
        }
    };
    let status = refit_testbed::sandbox::status(&tb).await?;
    sandbox::print_status(&status, format)?;
    if !args.no_upgrade {
        upgrade(&tb, &dir, &to, format).await?;
        // Read the sandbox again: the upgrade replaced the control-plane processes.
        let tb = refit_testbed::Testbed::attach(&dir)?;
        let status = refit_testbed::sandbox::status(&tb).await?;
        sandbox::print_status(&status, format)?;
    }
    if format == Format::Table {
        println!("\nnext: export KUBECONFIG={}; kubectl get pods -A", tb.kubeconfig().display());
        println!("stop it with: refit sandbox down");
    }
    Ok(ExitCode::SUCCESS)
}

/// The upgrade a user would type against the sandbox. The demo workloads include what an
/// online upgrade refuses on purpose (a bare pod, emptyDir data, a single replica: `refit plan`
/// shows each), so the demo says so and allows them.
async fn upgrade(
    tb: &refit_testbed::Testbed,
    dir: &std::path::Path,
    to: &refit_core::Version,
    format: Format,
) -> anyhow::Result<()> {
    use clap::Parser;
    let (url, pki) = tb.etcd_endpoint();
    let kubeconfig = tb.kubeconfig().display().to_string();
    let backups = dir.join("backups").display().to_string();
    let store = dir.join("refit.db").display().to_string();
    let action = format!("sandbox:{}", dir.display());
    let to = to.to_string();
    let argv = [
        "refit",
        "upgrade",
        "--to",
        &to,
        "--kubeconfig",
        &kubeconfig,
        "--action",
        &action,
        "--yes",
        "--max-unavailable",
        "2",
        "--ignore-safety-checks",
        "--delete-emptydir-data",
        "--delete-unmanaged-pods",
        "--etcd-endpoint",
        &url,
        "--etcd-cacert",
        &pki.ca_cert.display().to_string(),
        "--etcd-cert",
        &pki.admin_cert.display().to_string(),
        "--etcd-key",
        &pki.admin_key.display().to_string(),
        "--backup-dir",
        &backups,
        "--store",
        &store,
    ];
    if format == Format::Table {
        println!(
            "\nupgrading the sandbox to {to} (the demo allows its bare pod, emptyDir data and single replica to be evicted):"
        );
        println!("  {}\n", argv[..10].join(" "));
    }
    let cli = crate::args::Cli::try_parse_from(argv.iter().map(|s| s.to_string()))?;
    let code = Box::pin(crate::commands::run(crate::args::Cli { output: format, ..cli })).await?;
    if code != std::process::ExitCode::SUCCESS {
        anyhow::bail!("the demo upgrade did not complete; rerun `refit demo` to continue it");
    }
    if format == Format::Table {
        println!("\n$ refit status --kubeconfig {kubeconfig}");
    }
    let status = ["refit", "status", "--kubeconfig", &kubeconfig, "--kubectl", "none"];
    let cli = crate::args::Cli::try_parse_from(status.iter().map(|s| s.to_string()))?;
    Box::pin(crate::commands::run(crate::args::Cli { output: format, ..cli })).await?;
    Ok(())
}
