//! `refit sandbox build`: fill the testbed cache, with visible progress.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use refit_testbed::{BuildEvent, Cache, Check, Component, TestbedVersions};
use serde::Serialize;

use crate::args::BuildArgs;
use crate::output::{Format, print_structured, table};

/// What [`ensure`] did for one component.
#[derive(Serialize)]
pub struct Built {
    component: String,
    state: &'static str,
    seconds: Option<u64>,
    path: String,
}

pub fn run(args: BuildArgs, format: Format) -> anyhow::Result<ExitCode> {
    let versions = TestbedVersions::from_env()?;
    let cache = Cache::from_env()?;
    let check = if args.verify { Check::Full } else { Check::Quick };
    let results = ensure(&cache, &versions.components(), check)?;
    if !print_structured(format, &results)? {
        let mut t = table(&["component", "state", "build seconds", "path"]);
        for r in &results {
            t.add_row(vec![
                r.component.clone(),
                r.state.to_string(),
                r.seconds.map(|s| s.to_string()).unwrap_or_default(),
                r.path.clone(),
            ]);
        }
        println!("{t}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds what is missing with a spinner per component; `refit sandbox build`'s.
pub fn ensure(cache: &Cache, components: &[Component], check: Check) -> anyhow::Result<Vec<Built>> {
    let mut view = BuildView::new(BuildView::style()?);
    let outcome = cache.ensure(components, check, &mut |e| view.show(e));
    let results = view.finish();
    outcome?;
    Ok(results
        .into_iter()
        .map(|(component, seconds)| Built {
            path: cache.entry_dir(&component).display().to_string(),
            component: component.to_string(),
            state: if seconds.is_some() { "built" } else { "cached" },
            seconds,
        })
        .collect())
}

/// A build's progress as people see it: on a terminal a spinner shows the latest line;
/// elsewhere (CI logs) each step is a line. Used by `build`, and by `sandbox up`,
/// `sandbox upgrade-node` and `demo` for the builds the sandbox library runs.
pub struct BuildView {
    tty: bool,
    bar: ProgressBar,
    /// Each component, with its build's seconds (None: it was cached).
    results: Vec<(Component, Option<u64>)>,
}

impl BuildView {
    /// The spinner's style.
    pub fn style() -> anyhow::Result<ProgressStyle> {
        Ok(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {wide_msg}")?)
    }

    /// Shows the spinner (on a terminal) until [`BuildView::finish`].
    pub fn new(style: ProgressStyle) -> BuildView {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if tty { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        BuildView { tty, bar, results: Vec::new() }
    }

    /// Shows one step of the build.
    pub fn show(&mut self, e: BuildEvent) {
        let (bar, tty) = (&self.bar, self.tty);
        match e {
            BuildEvent::Cached(c) => self.results.push((c, None)),
            BuildEvent::Started { component, reason } => {
                bar.reset_elapsed();
                bar.set_prefix(format!("building {component}"));
                bar.set_message(reason.clone());
                let line = match component {
                    Component::KubernetesDebs(_) => {
                        format!("packaging {component} from the cached binaries ({reason})")
                    }
                    _ => format!(
                        "building {component} from the Go module proxy ({reason}; cold builds take minutes)"
                    ),
                };
                if tty { bar.println(line) } else { eprintln!("{line}") }
            }
            BuildEvent::Output { line, .. } => {
                if !tty && line.starts_with("[build") {
                    eprintln!("{line}");
                }
                bar.set_message(line)
            }
            BuildEvent::Finished { component, seconds } => {
                let line = format!("built {component} in {seconds}s");
                if tty {
                    bar.println(line)
                } else {
                    eprintln!("{line}")
                }
                self.results.push((component, Some(seconds)));
            }
        }
    }

    /// Clears the spinner; each component with its build's seconds (None: it was cached).
    pub fn finish(self) -> Vec<(Component, Option<u64>)> {
        self.bar.finish_and_clear();
        self.results
    }
}
