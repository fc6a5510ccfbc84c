//! `refit fleet run show` for people: stages → groups → members with state, reason, timings
//! and progress, gates and after-stage waits in their place.

use std::collections::BTreeMap;

use jiff::Timestamp;
use refit_core::fleet::{GateState, GateStatus, RunState, Status, UpdateState};
use refit_store::fleet::{Lease, MemberProgress};

use crate::output::table;

fn when(t: Option<Timestamp>) -> String {
    t.map(|t| t.strftime("%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

fn took(s: &Status) -> String {
    match (s.started_at, s.completed_at) {
        (Some(a), Some(b)) if b >= a => format!("{:.0}s", b.duration_since(a).as_secs_f64().max(0.0)),
        (Some(a), None) => format!("{:.0}s…", Timestamp::now().duration_since(a).as_secs_f64().max(0.0)),
        _ => String::new(),
    }
}

fn why(s: &Status) -> String {
    if let Some(p) = &s.pending {
        return p.to_string();
    }
    s.error.clone().or_else(|| s.message.clone()).unwrap_or_default()
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

/// The run as a table tree.
pub fn render(run: &RunState, progress: &[MemberProgress], driver: Option<&Lease>) -> String {
    let p = run.progress();
    let prog: BTreeMap<&str, &MemberProgress> = progress.iter().map(|m| (m.member.as_str(), m)).collect();
    let mut out = format!(
        "Run {} — {} to {} — {}{}\n  members: {} total, {} completed, {} skipped, {} failed, {} in flight, {} pending; attempt {}\n",
        run.name,
        run.spec.upgrade_type,
        super::run::target_text(run),
        run.status.state,
        run.status.pending.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        p.total,
        p.completed,
        p.skipped,
        p.failed,
        p.in_flight,
        p.pending,
        run.attempt,
    );
    if let Some(e) = &run.status.error {
        out.push_str(&format!("  error: {e}\n"));
    }
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
    let mut t = table(&["stage / group / member", "state", "started", "took", "reason / progress"]);
    for st in &run.stages {
        t.add_row(vec![
            format!("{} (stage)", st.name),
            st.status.state.to_string(),
            when(st.status.started_at),
            took(&st.status),
            why(&st.status),
        ]);
        for g in &st.before_gates {
            t.add_row(gate_row(g, "  "));
        }
        for g in &st.groups {
            t.add_row(vec![
                format!(
                    "  {} (group, {} at once, failures {}/{})",
                    g.name, g.max_concurrency, g.failure_count, g.max_allowed_failures
                ),
                g.status.state.to_string(),
                when(g.status.started_at),
                took(&g.status),
                why(&g.status),
            ]);
            for x in &g.before_gates {
                t.add_row(gate_row(x, "    "));
            }
            for m in &g.members {
                let mut reason = why(&m.status);
                if m.status.state.in_flight()
                    && let Some(pr) = prog.get(m.name.as_str())
                {
                    reason = match &pr.operation {
                        Some(op) => format!("{} ({op})", pr.detail),
                        None => pr.detail.clone(),
                    };
                }
                let attempts = if m.attempts > 1 { format!(" ×{}", m.attempts) } else { String::new() };
                t.add_row(vec![
                    format!("    {}{attempts}", m.name),
                    m.status.state.to_string(),
                    when(m.status.started_at),
                    if m.status.state == UpdateState::NotStarted { String::new() } else { took(&m.status) },
                    reason,
                ]);
            }
            for x in &g.after_gates {
                t.add_row(gate_row(x, "    "));
            }
        }
        for g in &st.after_gates {
            t.add_row(gate_row(g, "  "));
        }
        if let Some(w) = &st.after_stage_wait {
            t.add_row(vec![
                format!("  after-stage wait {}s", w.seconds),
                format!("{:?}", w.state),
                when(w.started_at),
                String::new(),
                w.until.map(|u| format!("until {u}")).unwrap_or_default(),
            ]);
        }
    }
    out.push_str(&format!("{t}\n"));
    out
}
