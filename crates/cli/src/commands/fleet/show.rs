//! `refit fleet run show` for people: stages → groups → members with state, reason, timings
//! and progress, gates and after-stage waits in their place.
//!
//! Rendering is a pure function of the run, the members' progress and `now` (snapshot-tested).
//! Long reasons (a member's failure can quote a whole `refit upgrade` error) are shortened to
//! [`REASON_WIDTH`] in the table, with a note saying so; `-o wide` and `-o json` keep them
//! whole.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use refit_core::fleet::{GateState, GateStatus, HealthGateState, PendingReason, RunState, Status};
use refit_store::fleet::{Lease, MemberProgress};

use crate::output::{shorten, table};

/// The widest reason the table prints (characters) unless `-o wide`.
pub const REASON_WIDTH: usize = 72;

fn when(t: Option<Timestamp>) -> String {
    t.map(|t| t.strftime("%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

/// `42s`, `5m03s`, `2h05m`, `3d04h`.
pub fn human(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long it took (time spent Stopped excluded); `…` while it goes on.
fn took(s: &Status, now: Timestamp) -> String {
    match s.took(now) {
        Some(d) if s.completed_at.is_some() => human(d),
        Some(d) => format!("{}…", human(d)),
        None => String::new(),
    }
}

fn why(s: &Status, now: Timestamp) -> String {
    if let Some(p) = &s.pending {
        return pending(p, now);
    }
    s.error.clone().or_else(|| s.message.clone()).unwrap_or_default()
}

/// A Pending reason for people at `now`: an after-stage wait says how long is left.
fn pending(p: &PendingReason, now: Timestamp) -> String {
    match p {
        PendingReason::AfterStageWait { stage, until } => format!(
            "after-stage wait of {stage} running: {} left (until {})",
            human(until.duration_since(now)),
            until.strftime("%m-%d %H:%M:%S")
        ),
        PendingReason::Waiting { on, reason } => format!("{on}: {}", pending(reason, now)),
        other => other.to_string(),
    }
}

fn gate_row(g: &GateState, indent: &str) -> Vec<String> {
    let detail = match (&g.state, &g.approval, g.starts_at) {
        (GateStatus::Completed, Some(a), _) => {
            format!("approved by {} at {}", a.by, a.at.strftime("%H:%M:%S"))
        }
        (GateStatus::Pending, _, Some(t)) => format!("starts at {t} (or when approved)"),
        (GateStatus::Pending, _, None) => format!("refit fleet gate approve RUN {}", g.gate),
        (GateStatus::NotStarted, Some(a), _) => format!("pre-approved by {}", a.by),
        _ => String::new(),
    };
    vec![
        format!("{indent}gate {} ({})", g.gate, g.spec.kind()),
        format!("{:?}", g.state),
        when(g.reached_at),
        String::new(),
        detail,
    ]
}

fn health_row(h: &HealthGateState) -> Vec<String> {
    let detail = match (&h.waiting, &h.message) {
        (Some(w), _) => format!("{} — {w}", h.gate.check),
        (None, Some(m)) => m.clone(),
        (None, None) => h.gate.check.to_string(),
    };
    let soak = if h.gate.soak_seconds > 0 {
        format!(
            ", soak {}",
            human(SignedDuration::from_secs(i64::try_from(h.gate.soak_seconds).unwrap_or(i64::MAX)))
        )
    } else {
        String::new()
    };
    vec![
        format!("  health gate {} ({}{soak})", h.gate.name, h.gate.check.kind()),
        format!("{:?}", h.state),
        when(h.reached_at),
        String::new(),
        detail,
    ]
}

/// The run as a table tree at `now`; `wide` keeps long reasons whole.
pub fn render(
    run: &RunState,
    progress: &[MemberProgress],
    driver: Option<&Lease>,
    now: Timestamp,
    wide: bool,
) -> String {
    let p = run.progress();
    let prog: BTreeMap<&str, &MemberProgress> = progress.iter().map(|m| (m.member.as_str(), m)).collect();
    let mut out = format!(
        "Run {} — {} to {} — {}{}\n  members: {} total, {} completed, {} skipped, {} failed, {} in flight, {} pending; attempt {}\n",
        run.name,
        run.spec.upgrade_type,
        super::run::target_text(run),
        run.status.state,
        run.status.pending.as_ref().map(|r| format!(" ({})", pending(r, now))).unwrap_or_default(),
        p.total,
        p.completed,
        p.skipped,
        p.failed,
        p.in_flight,
        p.pending,
        run.attempt,
    );
    if let Some(e) = &run.status.error {
        out.push_str(&format!("  failed: {e}\n"));
    } else if let Some(m) = &run.status.message {
        out.push_str(&format!("  {m}\n"));
    }
    out.push_str(&format!(
        "  version policy: {}; a failed health gate: {}s the run\n",
        run.spec.policy, run.spec.on_gate_failure
    ));
    if let Some(t) = &run.targets {
        out.push_str(&format!(
            "  frozen targets: kubernetes {}, node images {:?}\n",
            t.kubernetes.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "unchanged".into()),
            t.node_images
        ));
    }
    if let Some(l) = driver {
        out.push_str(&format!("  driven by {} (pid {})\n", l.holder, l.pid));
    }
    if !run.unselected.is_empty() {
        out.push_str(&format!("  not selected by any stage: {}\n", run.unselected.join(", ")));
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    for st in &run.stages {
        rows.push(vec![
            format!("{} (stage)", st.name),
            st.status.state.to_string(),
            when(st.status.started_at),
            took(&st.status, now),
            why(&st.status, now),
        ]);
        for g in &st.before_gates {
            rows.push(gate_row(g, "  "));
        }
        for g in &st.groups {
            rows.push(vec![
                format!(
                    "  {} (group, {} at once, failures {}/{})",
                    g.name, g.max_concurrency, g.failure_count, g.max_allowed_failures
                ),
                g.status.state.to_string(),
                when(g.status.started_at),
                took(&g.status, now),
                why(&g.status, now),
            ]);
            for x in &g.before_gates {
                rows.push(gate_row(x, "    "));
            }
            for m in &g.members {
                let mut reason = why(&m.status, now);
                if m.status.state.in_flight()
                    && let Some(pr) = prog.get(m.name.as_str())
                {
                    reason = match &pr.operation {
                        Some(op) => format!("{} ({op})", pr.detail),
                        None => pr.detail.clone(),
                    };
                }
                let attempts = if m.attempts > 1 { format!(" ×{}", m.attempts) } else { String::new() };
                rows.push(vec![
                    format!("    {}{attempts}", m.name),
                    m.status.state.to_string(),
                    when(m.status.started_at),
                    took(&m.status, now),
                    reason,
                ]);
            }
            for x in &g.after_gates {
                rows.push(gate_row(x, "    "));
            }
        }
        for g in &st.after_gates {
            rows.push(gate_row(g, "  "));
        }
        for h in &st.health_gates {
            rows.push(health_row(h));
        }
        if let Some(w) = &st.after_stage_wait {
            // Counting down is work under way: shown as Running with the time left.
            let (state, detail) = match (w.state, w.until) {
                (GateStatus::Pending, Some(u)) => (
                    "Running".to_string(),
                    format!("{} left (until {})", human(u.duration_since(now)), u.strftime("%m-%d %H:%M:%S")),
                ),
                (s, _) => (format!("{s:?}"), String::new()),
            };
            rows.push(vec![
                format!(
                    "  after-stage wait {}",
                    human(SignedDuration::from_secs(i64::try_from(w.seconds).unwrap_or(i64::MAX)))
                ),
                state,
                when(w.started_at),
                String::new(),
                detail,
            ]);
        }
    }
    let mut t = table(&["stage / group / member", "state", "started", "took", "reason / progress"]);
    let mut shortened = false;
    for mut row in rows {
        if !wide && let Some(reason) = row.last_mut() {
            let short = shorten(reason, REASON_WIDTH);
            shortened |= short != *reason;
            *reason = short;
        }
        t.add_row(row);
    }
    out.push_str(&format!("{t}\n"));
    if shortened {
        out.push_str(&format!(
            "(reasons longer than {REASON_WIDTH} characters are shortened: -o wide or -o json shows them whole)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use refit_core::fleet::{
        Event, FleetMember, MemberTarget, PendingReason, Strategy, UpgradeSpec, UpgradeType, apply,
        freeze_targets, resolve,
    };

    use super::*;

    fn at(min: i64) -> Timestamp {
        "2026-06-10T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(min)
    }

    fn step(run: &RunState, e: Event) -> RunState {
        apply(run, &e).unwrap_or_else(|err| panic!("{e:?}: {err}"))
    }

    fn started(member: &str, min: i64) -> Event {
        Event::MemberStarted {
            member: member.into(),
            at: at(min),
            target: MemberTarget::default(),
            operation: None,
            window_closes_at: None,
        }
    }

    /// canary (one member, a 10-minute after-stage wait) → prod (wave-a, wave-b).
    fn run() -> RunState {
        let strategy = Strategy::parse(
            "stages:\n  - name: canary\n    groups: [{name: canary}]\n    afterStageWaitInSeconds: 600\n  - name: prod\n    groups: [{name: wave-a}, {name: wave-b}]\n",
        )
        .unwrap();
        let member = |n: &str, g: &str| FleetMember {
            name: n.into(),
            labels: BTreeMap::new(),
            update_group: Some(g.into()),
        };
        let fleet = [member("canary-1", "canary"), member("east-1", "wave-a"), member("west-1", "wave-b")];
        let plan = resolve(&strategy, &fleet).unwrap();
        let spec = UpgradeSpec::new(UpgradeType::Full, Some("1.37.1".parse().unwrap()));
        let targets = freeze_targets(&spec, std::iter::empty());
        let run = RunState::new("to-137", spec, strategy, plan, at(0)).unwrap();
        let run = step(&run, Event::Start { at: at(0), targets: Some(targets), plan: None, by: None });
        let run = step(&run, started("canary-1", 0));
        let run = step(&run, Event::MemberSucceeded { member: "canary-1".into(), at: at(5), message: None });
        step(&run, Event::AfterStageWaitStarted { stage: "canary".into(), at: at(5) })
    }

    #[test]
    fn an_after_stage_wait_counting_down_is_running_with_the_time_left() {
        let shown = render(&run(), &[], None, at(7), false);
        insta::assert_snapshot!(shown);
        let wait = shown.lines().find(|l| l.trim_start().starts_with("after-stage wait")).unwrap();
        assert!(wait.contains("Running") && wait.contains("8m00s left"), "{wait}");
    }

    #[test]
    fn long_reasons_are_shortened_in_the_table_and_whole_with_wide_and_a_waiting_member_never_started() {
        let mut r = step(&run(), Event::AfterStageWaitElapsed { stage: "canary".into(), at: at(15) });
        r = step(&r, started("east-1", 15));
        let saturday = "2026-06-13T22:00:00Z".parse().unwrap();
        r = step(
            &r,
            Event::MemberPending {
                member: "west-1".into(),
                at: at(15),
                reason: PendingReason::WindowClosed { opens_at: Some(saturday) },
            },
        );
        let error = format!(
            "refit upgrade failed (run up-20260610-121500-1-37-1): control-plane-1: upgrade FAILED: {}",
            "kubeadm upgrade apply v1.37.1 exited with 1: [preflight] Some fatal errors occurred ".repeat(3)
        );
        r = step(&r, Event::MemberFailed { member: "east-1".into(), at: at(20), error: error.clone() });
        let table = render(&r, &[], None, at(30), false);
        insta::assert_snapshot!("failed_table", table);
        assert!(table.lines().all(|l| l.chars().count() <= 160), "{table}");
        assert!(!table.contains(&error));
        assert!(table.contains("-o wide or -o json shows them whole"));
        let wide = render(&r, &[], None, at(30), true);
        assert!(wide.contains(&error), "{wide}");
        assert!(!wide.contains("shortened"));
        let west = r.member("west-1").unwrap();
        assert_eq!(west.status.started_at, None);
        let row = table.lines().find(|l| l.trim_start().starts_with("west-1")).unwrap();
        assert!(!row.contains("06-10"), "no start time for a member that never started: {row}");
    }
}
