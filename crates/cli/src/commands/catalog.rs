//! `refit catalog show|update`: which release catalog refit uses, and refreshing it without a
//! new build (the work is `refit_engine::catalog`'s).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use refit_engine::catalog::{self, Origin, Source, UpdateError};

use crate::output::{Format, print_structured, table, usage};

/// `refit catalog ...`
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// The catalog in use: where it comes from, its date, each minor's newest patch and support.
    #[command(after_help = "Examples:\n  refit catalog show\n  refit catalog show -o json")]
    Show(ShowArgs),
    /// Refresh the catalog from upstream's release markers, or from a whole catalog file or
    /// address, into the state directory (the built-in one stays the fallback).
    #[command(after_help = "\
Without --from, asks upstream's release markers (<upstream>/stable-1.N.txt) for each supported
minor and the next one, and adds the patches released since; a new minor needs a whole catalog
(--from). With --from, the catalog there replaces the one in use if it is valid and not older.
Nothing is written unless something changed; the file is 0600 in the private state directory.

Examples:
  refit catalog update
  refit catalog update --from https://mirror.example/refit/catalog.yaml
  refit catalog update --from ./catalog.yaml
  refit catalog update --upstream https://mirror.example/release   an internal mirror of dl.k8s.io")]
    Update(UpdateArgs),
}

/// `refit catalog show`
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Show this catalog file instead (as `--catalog` elsewhere).
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
}

/// `refit catalog update`
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// A whole catalog (refit's format): an http(s) address or a file.
    #[arg(long, value_name = "URL|FILE")]
    pub from: Option<String>,
    /// Where upstream's release markers are (an internal mirror of dl.k8s.io/release).
    #[arg(long, value_name = "URL", default_value = catalog::UPSTREAM)]
    pub upstream: String,
}

/// Runs `refit catalog ...`.
pub async fn run(cmd: CatalogCommand, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        CatalogCommand::Show(args) => show(args, format),
        CatalogCommand::Update(args) => update(args, format).await,
    }
}

fn origin_text(o: &Origin) -> String {
    match o {
        Origin::File { path } => format!("{} (--catalog)", path.display()),
        Origin::Refreshed { path } => format!("{} (refit catalog update)", path.display()),
        Origin::Embedded => "built in".to_string(),
    }
}

fn show(args: ShowArgs, format: Format) -> anyhow::Result<ExitCode> {
    let (c, origin) = catalog::load(args.catalog.as_deref(), None).map_err(|e| usage(e.to_string()))?;
    #[derive(serde::Serialize)]
    struct Shown<'a> {
        origin: &'a Origin,
        updated: &'a str,
        releases: Vec<Line>,
    }
    #[derive(serde::Serialize)]
    struct Line {
        minor: String,
        newest: String,
        patches: usize,
        end_of_life: String,
    }
    let releases = c
        .releases
        .iter()
        .rev()
        .map(|r| Line {
            minor: r.minor.to_string(),
            newest: r.patches.last().map(|p| p.to_string()).unwrap_or_default(),
            patches: r.patches.len(),
            end_of_life: r.end_of_life.to_string(),
        })
        .collect();
    let shown = Shown { origin: &origin, updated: &c.updated, releases };
    if !print_structured(format, &shown)? {
        println!("catalog: {}, updated {}", origin_text(&origin), c.updated);
        let mut t = table(&["minor", "newest patch", "patches", "end of life"]);
        for l in &shown.releases {
            t.add_row(vec![l.minor.clone(), l.newest.clone(), l.patches.to_string(), l.end_of_life.clone()]);
        }
        println!("{t}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn update(args: UpdateArgs, format: Format) -> anyhow::Result<ExitCode> {
    if !(args.upstream.starts_with("http://") || args.upstream.starts_with("https://")) {
        return Err(usage(format!("--upstream '{}' is not an http(s) address", args.upstream)));
    }
    let source = Source::parse(args.from.as_deref(), &args.upstream);
    let today = jiff::Zoned::now().date();
    let done = match catalog::update(source, None, today).await {
        Ok(u) => u,
        // A source that does not answer is not bad input: exit 1, nothing changed.
        Err(UpdateError::Fetch(e)) => anyhow::bail!("{e}; nothing was changed"),
        Err(e @ (UpdateError::Refused(_) | UpdateError::Load(_))) => return Err(usage(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if !print_structured(format, &done)? {
        let r = &done.refreshed;
        if r.changed {
            let added: Vec<String> = r.added.iter().map(|v| v.to_string()).collect();
            println!(
                "catalog updated ({}): {} new release(s){}{}",
                done.updated,
                added.len(),
                if added.is_empty() { String::new() } else { format!(": {}", added.join(", ")) },
                format_args!("; kept in {}", done.path.display())
            );
        } else {
            println!("the catalog is current (updated {}); nothing was changed", done.updated);
        }
        for v in &r.unknown_minors {
            println!(
                "upstream has released {v}, a minor this catalog does not list: its support dates and kubeadm's images need a whole catalog (refit catalog update --from URL|FILE)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
