//! The live view of a run, fed by the engine's events: on a terminal, an overall bar (units
//! done, ETA) and one line per node in flight (its step and current blocker); without a
//! terminal, one plain line per step; with `-o json`, every event as one JSON object per line
//! (with the time and the run id), for automation.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use refit_core::event::Event;
use refit_core::run::Schedule;

use crate::output::Format;

enum Mode {
    Bars { multi: MultiProgress, overall: ProgressBar },
    Lines,
    Json,
}

struct State {
    nodes: HashMap<String, ProgressBar>,
    finished: Vec<Duration>,
    done: usize,
    concurrency: usize,
}

/// The view of one run.
pub struct View {
    mode: Mode,
    run: String,
    total: usize,
    started: Instant,
    state: Mutex<State>,
}

impl View {
    /// A view for `format`, sized from the schedule.
    pub fn new(format: Format, run: &str, schedule: &Schedule) -> View {
        let total = schedule.units().count();
        let mode = match format {
            Format::Json | Format::Yaml => Mode::Json,
            Format::Table if std::io::stderr().is_terminal() => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let overall = multi.add(ProgressBar::new(total as u64));
                overall.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                overall.set_prefix(format!("run {run}"));
                overall.enable_steady_tick(Duration::from_millis(200));
                Mode::Bars { multi, overall }
            }
            Format::Table => Mode::Lines,
        };
        let concurrency = schedule.stages.iter().map(|s| s.concurrency).max().unwrap_or(1);
        View {
            mode,
            run: run.to_string(),
            total,
            started: Instant::now(),
            state: Mutex::new(State { nodes: HashMap::new(), finished: Vec::new(), done: 0, concurrency }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shows one event.
    pub fn handle(&self, e: &Event) {
        match &self.mode {
            Mode::Json => {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("at".into(), jiff::Timestamp::now().to_string().into());
                    o.insert("run".into(), self.run.clone().into());
                }
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{v}");
                let _ = out.flush();
            }
            Mode::Lines => {
                if let Some(line) = line_for(e) {
                    let secs = self.started.elapsed().as_secs_f64();
                    println!("[{secs:7.1}s] {line}");
                }
            }
            Mode::Bars { multi, overall } => self.bars(multi, overall, e),
        }
    }

    fn bars(&self, multi: &MultiProgress, overall: &ProgressBar, e: &Event) {
        let mut st = self.state();
        match e {
            Event::StepStarted { node, step, to } => {
                let bar = st.nodes.entry(node.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix:24} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(node.clone());
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                bar.set_message(format!("{step} → {to}"));
            }
            Event::Blocked { node, pod, pdb, reason } => {
                if let Some(b) = st.nodes.get(node) {
                    let why = pdb.as_ref().map(|p| format!("PDB {p}")).unwrap_or_else(|| reason.clone());
                    b.set_message(format!("drain: blocked by {pod} ({why})"));
                }
            }
            Event::StepFailed { .. }
            | Event::Warning { .. }
            | Event::LeftCordoned { .. }
            | Event::Backup { .. } => {
                if let Some(line) = line_for(e) {
                    multi.suspend(|| eprintln!("{line}"));
                }
            }
            Event::UnitFinished { node, millis, result, .. } => {
                if let Some(b) = st.nodes.remove(node) {
                    b.finish_and_clear();
                    multi.remove(&b);
                }
                st.done += 1;
                if *result == refit_core::event::UnitEnd::Upgraded {
                    st.finished.push(Duration::from_millis(*millis));
                }
                overall.set_position(st.done as u64);
                let eta =
                    refit_core::run::eta(&st.finished, self.total.saturating_sub(st.done), st.concurrency);
                overall.set_message(match eta {
                    Some(d) => format!("ETA {}", fmt_secs(d)),
                    None => String::new(),
                });
            }
            Event::ClusterService { addon, detail } => {
                overall.set_message(format!("cluster services: {addon} {detail}"))
            }
            Event::StageStarted { phase, to, units, .. } => {
                let phase = refit_core::run::phase_name(*phase);
                multi.suspend(|| eprintln!("stage: {phase} → {to} ({units} node(s))"));
            }
            _ => {}
        }
    }

    /// Clears the live view before the summary is printed.
    pub fn finish(&self) {
        if let Mode::Bars { overall, .. } = &self.mode {
            for (_, b) in self.state().nodes.drain() {
                b.finish_and_clear();
            }
            overall.finish_and_clear();
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 { format!("{}m{:02}s", s / 60, s % 60) } else { format!("{s}s") }
}

/// The plain-text line for an event (None for the ones too chatty to print).
fn line_for(e: &Event) -> Option<String> {
    Some(match e {
        Event::RunStarted { run, target, stages, units, resumed } => format!(
            "{} run {run}: {units} node step(s) in {stages} stage(s) to {target}",
            if *resumed { "resuming" } else { "starting" }
        ),
        Event::StageStarted { phase, to, units, concurrency, .. } => {
            format!(
                "stage {} → {to}: {units} node(s), {concurrency} at a time",
                refit_core::run::phase_name(*phase)
            )
        }
        Event::UnitSkipped { node, reason, .. } => format!("{node}: skipped ({reason})"),
        Event::StepStarted { node, step, .. } => format!("{node}: {step}"),
        Event::StepDone { node, step, millis, detail, .. } => {
            let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
            format!("{node}: {step} done in {:.1}s{detail}", *millis as f64 / 1000.0)
        }
        Event::StepFailed { node, step, error, .. } => format!("{node}: {step} FAILED: {error}"),
        Event::Blocked { node, pod, pdb, reason } => match pdb {
            Some(p) => format!("{node}: eviction of {pod} blocked by PDB {p}: {reason}"),
            None => format!("{node}: {pod} blocks the drain: {reason}"),
        },
        Event::LeftCordoned { node, reason } => format!("{node}: LEFT CORDONED: {reason}"),
        Event::Backup { path, bytes } => format!("etcd backup written: {path} ({bytes} bytes, kept)"),
        Event::ClusterService { addon, detail } => format!("cluster services: {addon}: {detail}"),
        Event::Warning { message } => format!("WARNING: {message}"),
        Event::RunFinished { state, millis, reason } => format!(
            "run {} after {:.1}s{}",
            state.as_str(),
            *millis as f64 / 1000.0,
            reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        Event::Evicted { .. } | Event::ActionOutput { .. } | Event::UnitFinished { .. } => return None,
    })
}
