//! The live view of a run, fed by the engine's events: on a terminal, an overall bar (units
//! done, ETA) and one line per node in flight (its step and current blocker); without a
//! terminal, one plain line per step; with `-o json`, every event as one JSON object per line
//! (with the time and the run id), for automation.
//!
//! On a terminal, a spinner turns only while its step works: a finished step stops it (until
//! the node's next step), and a cluster-wide step (the etcd backup, cluster services) or a
//! skipped or failed unit removes its line. No line is wider than the terminal — messages are
//! cut to the width (`wide_msg`) and log lines printed above the bars are wrapped — because a
//! line the terminal wraps is one indicatif does not count when it redraws, which shows up
//! as duplicated bar lines.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use refit_core::event::Event;
use refit_core::run::Schedule;
use refit_engine::engine::CLUSTER_UNIT;

use crate::output::Format;

enum Mode {
    Bars { multi: MultiProgress, overall: ProgressBar },
    Lines,
    Json,
}

struct State {
    nodes: HashMap<String, ProgressBar>,
    done: usize,
}

/// The view of one run.
pub struct View {
    mode: Mode,
    run: String,
    started: Instant,
    state: Mutex<State>,
}

impl View {
    /// A view for `format`, sized from the schedule.
    pub fn new(format: Format, run: &str, schedule: &Schedule) -> View {
        let total = schedule.units().count();
        let mode = match format {
            Format::Json | Format::Yaml => Mode::Json,
            Format::Table | Format::Wide if std::io::stderr().is_terminal() => {
                bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), run, total)
            }
            Format::Table | Format::Wide => Mode::Lines,
        };
        View {
            mode,
            run: run.to_string(),
            started: Instant::now(),
            state: Mutex::new(State { nodes: HashMap::new(), done: 0 }),
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
                    // A closed pipe drops the line; it never stops the run.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "[{secs:7.1}s] {line}");
                    let _ = out.flush();
                }
            }
            Mode::Bars { multi, overall } => self.bars(multi, overall, e),
        }
    }

    fn bars(&self, multi: &MultiProgress, overall: &ProgressBar, e: &Event) {
        let mut st = self.state();
        let remove = |st: &mut State, node: &str| {
            if let Some(b) = st.nodes.remove(node) {
                b.finish_and_clear();
                multi.remove(&b);
            }
        };
        match e {
            Event::StepStarted { node, step, to } => {
                let bar = st.nodes.entry(node.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix:24} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(node.clone());
                    b
                });
                bar.enable_steady_tick(Duration::from_millis(120));
                bar.set_message(format!("{step} → {to}"));
            }
            // A finished step stops its spinner: a cluster-wide step is a line of its own
            // (gone when done); a node's line waits, still, for the node's next step.
            Event::StepDone { node, .. } if node == CLUSTER_UNIT => remove(&mut st, node),
            Event::StepDone { node, step, .. } => {
                if let Some(b) = st.nodes.get(node) {
                    b.disable_steady_tick();
                    b.set_message(format!("{step} done"));
                }
            }
            Event::UnitSkipped { node, .. } => remove(&mut st, node),
            Event::Blocked { node, pod, pdb, reason, .. } => {
                if let Some(b) = st.nodes.get(node) {
                    let why = pdb.as_ref().map(|p| format!("PDB {p}")).unwrap_or_else(|| reason.clone());
                    let text = format!("drain: blocked by {pod} ({why})");
                    b.set_message(refit_core::identity::printable(&text, false));
                }
            }
            Event::StepFailed { node, .. } => {
                remove(&mut st, node);
                log_above(multi, e);
            }
            Event::Warning { .. }
            | Event::LeftCordoned { .. }
            | Event::Backup { .. }
            | Event::Gate { .. }
            | Event::BatchChosen { .. }
            | Event::BatchHeld { .. } => log_above(multi, e),
            Event::UnitFinished { node, .. } => {
                remove(&mut st, node);
                st.done += 1;
                overall.set_position(st.done as u64);
            }
            Event::Eta { .. } => overall.set_message(line_for(e).unwrap_or_default()),
            Event::ClusterService { addon, detail } => {
                overall.set_message(format!("cluster services: {addon} {detail}"))
            }
            Event::StageStarted { .. } => log_above(multi, e),
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

/// The bars of a run on `multi`: the overall bar, node lines added as steps start.
fn bars(multi: MultiProgress, run: &str, total: usize) -> Mode {
    let overall = multi.add(ProgressBar::new(total as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:.bold} [{elapsed_precise}] {bar:20} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    overall.set_prefix(format!("run {run}"));
    overall.enable_steady_tick(Duration::from_millis(200));
    Mode::Bars { multi, overall }
}

/// Prints an event's line above the bars, wrapped to the terminal's width.
fn log_above(multi: &MultiProgress, e: &Event) {
    if let Some(line) = line_for(e) {
        let width = terminal_size::terminal_size_of(std::io::stderr()).map(|(w, _)| usize::from(w.0));
        let text = match width {
            Some(w) if w > 0 => wrap(&line, w),
            _ => line,
        };
        multi.suspend(|| eprintln!("{text}"));
    }
}

/// `text` wrapped at spaces to lines of at most `width` characters (a word longer than a
/// line is cut), continuation lines indented by two spaces.
fn wrap(text: &str, width: usize) -> String {
    let width = width.max(3);
    let room = |lines: &[String]| if lines.is_empty() { width } else { width - 2 };
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        let mut word = word.to_string();
        loop {
            let r = room(&lines);
            let len = cur.chars().count();
            let words = word.chars().count();
            if (len == 0 && words <= r) || (len > 0 && len + 1 + words <= r) {
                if len > 0 {
                    cur.push(' ');
                }
                cur.push_str(&word);
                break;
            }
            if len > 0 {
                lines.push(std::mem::take(&mut cur));
                continue;
            }
            // A word longer than a whole line: cut it.
            lines.push(word.chars().take(r).collect());
            word = word.chars().skip(r).collect();
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == 0 { l.clone() } else { format!("  {l}") })
        .collect::<Vec<_>>()
        .join("\n")
}

fn fmt_secs(s: u64) -> String {
    match s {
        3600.. => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        60.. => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{s}s"),
    }
}

/// "ETA 12m30s (workers 12m00s, cluster services 12m30s)": the run's expected end and each
/// phase's, from now; `~` marks a phase paced by the plan's estimate, not by this run.
fn eta_line(phases: &[refit_core::event::PhaseEnd], ends_in_secs: u64) -> String {
    let each: Vec<String> = phases
        .iter()
        .map(|p| {
            format!(
                "{} {}{}",
                refit_core::run::phase_name(p.phase),
                if p.measured { "" } else { "~" },
                fmt_secs(p.ends_in_secs)
            )
        })
        .collect();
    format!("ETA {} ({})", fmt_secs(ends_in_secs), each.join(", "))
}

/// The plain-text line for an event (None for the ones too chatty to print).
/// What the cluster, a node or an action wrote reaches these lines (reasons, stderr tails):
/// control characters are taken out before anything is printed (core's `printable`).
fn line_for(e: &Event) -> Option<String> {
    raw_line_for(e).map(|l| refit_core::identity::printable(&l, false))
}

fn raw_line_for(e: &Event) -> Option<String> {
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
        Event::StepFailed { node, step, error, remedies, .. } => {
            format!("{node}: {step} FAILED: {}", crate::remedy::sentence(error, remedies))
        }
        Event::Blocked { node, pod, pdb, reason, remedy } => match pdb {
            Some(p) => format!("{node}: eviction of {pod} blocked by PDB {p}: {reason}"),
            None => format!("{node}: {pod} blocks the drain: {}", crate::remedy::sentence(reason, remedy)),
        },
        Event::LeftCordoned { node, reason } => format!("{node}: LEFT CORDONED: {reason}"),
        Event::Backup { path, bytes } => format!("etcd backup written: {path} ({bytes} bytes, kept)"),
        Event::ClusterService { addon, detail } => format!("cluster services: {addon}: {detail}"),
        Event::Warning { message } => format!("WARNING: {message}"),
        Event::Gate { gate, state, reason } => match state {
            refit_core::event::GateState::Waiting => format!("health gate {gate}: waiting: {reason}"),
            refit_core::event::GateState::Passed => format!("health gate {gate}: passed ({reason})"),
            refit_core::event::GateState::Failed => format!("health gate {gate}: FAILED: {reason}"),
        },
        Event::BatchChosen { nodes, in_flight, zone, limit, pacing, .. } => format!(
            "next batch: {} node(s){} ({}){}; not larger: {limit}{}",
            nodes.len(),
            zone.as_ref().map(|z| format!(" in zone {z}")).unwrap_or_default(),
            nodes.join(", "),
            if *in_flight > 0 { format!(", joining {in_flight} under way") } else { String::new() },
            paced_by(pacing)
        ),
        Event::BatchHeld { reason, .. } => format!("no worker batch can start: {reason}"),
        Event::Eta { phases, ends_in_secs } => eta_line(phases, *ends_in_secs),
        Event::RunFinished { state, millis, reason } => format!(
            "run {} after {:.1}s{}",
            state.as_str(),
            *millis as f64 / 1000.0,
            reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        Event::Evicted { .. } | Event::ActionOutput { .. } | Event::UnitFinished { .. } => return None,
        // Printed by the command itself, never sent to the view.
        Event::Summary { .. } | Event::PlanBlocked { .. } => return None,
    })
}

/// "; paced by …": the budget the ETA waits on longest — the one whose pods left take the most
/// rounds in their zone (empty when no budget sets the pace).
fn paced_by(pacing: &[refit_core::eta::Pacing]) -> String {
    pacing.iter().max_by(|a, b| a.rounds().total_cmp(&b.rounds())).map_or_else(String::new, |p| {
        format!(
            "; paced by PDB {}{}: {} pod(s) left, {} at a time",
            p.budget,
            p.zone.as_ref().map(|z| format!(" in zone {z}")).unwrap_or_default(),
            p.pods,
            p.allows
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_line_names_the_budget_that_paces_the_stage() {
        let pace = |zone: &str, pods, allows| refit_core::eta::Pacing {
            zone: Some(zone.into()),
            budget: format!("shop/web-{zone}"),
            pods,
            allows,
        };
        let chosen = |pacing| Event::BatchChosen {
            stage: 0,
            nodes: vec!["w-1".into(), "w-2".into()],
            in_flight: 3,
            zone: Some("a".into()),
            limit: "the cap".into(),
            pods: vec![4, 5],
            pods_left: Some(40),
            pacing,
        };
        assert_eq!(
            line_for(&chosen(vec![pace("a", 12, 5), pace("b", 3, 1)])).as_deref(),
            Some(
                "next batch: 2 node(s) in zone a (w-1, w-2), joining 3 under way; not larger: the cap; \
                 paced by PDB shop/web-b in zone b: 3 pod(s) left, 1 at a time"
            )
        );
        assert_eq!(
            line_for(&chosen(Vec::new())).as_deref(),
            Some("next batch: 2 node(s) in zone a (w-1, w-2), joining 3 under way; not larger: the cap")
        );
    }

    /// The bars view drawing to nowhere, for checking which lines it keeps.
    fn hidden_view() -> View {
        View {
            mode: bars(MultiProgress::with_draw_target(ProgressDrawTarget::hidden()), "up-1", 3),
            run: "up-1".into(),
            started: Instant::now(),
            state: Mutex::new(State { nodes: HashMap::new(), done: 0 }),
        }
    }

    fn lines(v: &View) -> Vec<String> {
        let mut n: Vec<String> = v.state().nodes.keys().cloned().collect();
        n.sort();
        n
    }

    fn started(node: &str, step: &str) -> Event {
        Event::StepStarted { node: node.into(), step: step.into(), to: "1.37.1".into() }
    }

    fn done(node: &str, step: &str) -> Event {
        Event::StepDone {
            node: node.into(),
            step: step.into(),
            to: "1.37.1".into(),
            millis: 5,
            detail: String::new(),
        }
    }

    #[test]
    fn a_finished_or_skipped_step_stops_its_spinner() {
        let v = hidden_view();
        // No backup configured: the step starts, warns, and is done at once.
        v.handle(&started(CLUSTER_UNIT, "backup"));
        assert_eq!(lines(&v), [CLUSTER_UNIT]);
        v.handle(&Event::Warning { message: "no etcd backup was configured".into() });
        v.handle(&done(CLUSTER_UNIT, "backup"));
        assert!(lines(&v).is_empty(), "the backup line is gone once the step is done");
        // A node's line stays between its steps, still, and goes with its unit.
        v.handle(&started("cp-1", "cordon"));
        v.handle(&done("cp-1", "cordon"));
        assert_eq!(lines(&v), ["cp-1"]);
        if let Some(b) = v.state().nodes.get("cp-1") {
            assert_eq!(b.message(), "cordon done");
        }
        v.handle(&started("cp-1", "drain"));
        v.handle(&Event::UnitFinished {
            node: "cp-1".into(),
            to: "1.37.1".into(),
            result: refit_core::event::UnitEnd::Upgraded,
            millis: 9,
        });
        assert!(lines(&v).is_empty());
        // A skipped unit and a failed step take their line away too.
        v.handle(&started("w-1", "cordon"));
        v.handle(&Event::UnitSkipped {
            node: "w-1".into(),
            to: "1.37.1".into(),
            reason: "at the version".into(),
        });
        v.handle(&started("w-2", "upgrade"));
        v.handle(&Event::StepFailed {
            node: "w-2".into(),
            step: "upgrade".into(),
            to: "1.37.1".into(),
            error: "boom".into(),
            kind: None,
            remedies: Vec::new(),
        });
        assert!(lines(&v).is_empty());
    }

    #[test]
    fn the_eta_names_the_run_and_each_phase() {
        use refit_core::event::PhaseEnd;
        use refit_core::plan::PhaseKind;
        let e = Event::Eta {
            phases: vec![
                PhaseEnd { phase: PhaseKind::Workers, ends_in_secs: 750, measured: true },
                PhaseEnd { phase: PhaseKind::ClusterServices, ends_in_secs: 3790, measured: false },
            ],
            ends_in_secs: 3790,
        };
        assert_eq!(line_for(&e).unwrap(), "ETA 1h03m (workers 12m30s, cluster-services ~1h03m)");
        let v = hidden_view();
        v.handle(&e);
        if let Mode::Bars { overall, .. } = &v.mode {
            assert!(overall.message().starts_with("ETA 1h03m"), "{}", overall.message());
        }
    }

    #[test]
    fn log_lines_are_wrapped_to_the_terminal_width() {
        let line = "WARNING: no etcd backup was configured (--etcd-endpoint with --etcd-cacert/--etcd-cert/--etcd-key, or --backup-command): continuing without one";
        for width in [20, 40, 80] {
            let w = wrap(line, width);
            assert!(w.lines().all(|l| l.chars().count() <= width), "{width}:\n{w}");
            let chars = |s: &str| s.split_whitespace().collect::<String>();
            assert_eq!(chars(&w), chars(line), "nothing lost at {width}");
        }
        assert_eq!(wrap("short", 80), "short");
        assert!(wrap("aaaaaaaaaa", 4).lines().all(|l| l.chars().count() <= 4));
    }
}
