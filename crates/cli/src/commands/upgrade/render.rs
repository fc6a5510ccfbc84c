//! The tables `refit upgrade` prints: the schedule before it starts, the summary after.

use refit_core::run::{RunState, Schedule, phase_name, step_name};
use refit_engine::{BackupSpec, Outcome};

use crate::output::table;

/// The schedule table, then what happens around it: the etcd backup taken before the first
/// etcd or control-plane stage (`backup`: None when no stage touches them) and the cluster
/// services after the last.
pub fn render_schedule(s: &Schedule, backup: Option<Result<&BackupSpec, &str>>) -> String {
    let mut t = table(&["stage", "phase", "to", "at once", "nodes", "steps"]);
    for (i, st) in s.stages.iter().enumerate() {
        let nodes: Vec<&str> = st.units.iter().map(|u| u.node.as_str()).collect();
        let shown = if nodes.len() > 6 {
            format!(
                "{} … (+{})",
                nodes.iter().take(6).copied().collect::<Vec<_>>().join(", "),
                nodes.len() - 6
            )
        } else {
            nodes.join(", ")
        };
        let steps = st
            .units
            .first()
            .map(|u| u.steps.iter().map(|s| step_name(*s)).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        t.add_row(vec![
            (i + 1).to_string(),
            phase_name(st.phase).into(),
            st.to.to_string(),
            match st.surge {
                Some(l) => format!("{} ({l})", st.concurrency),
                None => st.concurrency.to_string(),
            },
            shown,
            steps,
        ]);
    }
    let mut out = format!("\nSchedule\n{t}\n");
    match backup {
        Some(Ok(b)) => out.push_str(&format!("first: etcd backup: {}\n", b.describe())),
        Some(Err(missing)) => out.push_str(&format!("first: etcd backup: MISSING: {missing}\n")),
        None => {}
    }
    if s.cluster_services {
        out.push_str("then: cluster services (kube-proxy, CoreDNS) at the target's versions\n");
    }
    out
}

pub fn render_outcome(o: &Outcome) -> String {
    let mut t = table(&["node", "to", "result", "time", "reason"]);
    for u in &o.units {
        t.add_row(vec![
            u.node.clone(),
            u.to.clone(),
            u.result.name().to_string(),
            format!("{:.1}s", u.millis as f64 / 1000.0),
            crate::remedy::sentence(u.result.reason().unwrap_or(""), u.result.remedies()),
        ]);
    }
    let mut out = format!("\nSummary of run {}\n{t}\n\n", o.run);
    let mut times = table(&["phase", "time"]);
    for (phase, ms) in &o.timings {
        times.add_row(vec![phase.clone(), format!("{:.1}s", *ms as f64 / 1000.0)]);
    }
    out.push_str(&format!("{times}\n"));
    if let Some(b) = &o.backup {
        out.push_str(&format!("etcd backup: {b} (kept)\n"));
    }
    if o.backup_opted_out {
        out.push_str(
            "etcd backup: NONE (--no-etcd-backup): etcd and the control plane changed without a snapshot\n",
        );
    }
    for (n, why) in &o.left_cordoned {
        out.push_str(&format!("LEFT CORDONED: {n}: {why}\n"));
    }
    for (n, why) in &o.not_planned {
        out.push_str(&format!("NOT UPGRADED: {n}: {why}\n"));
    }
    out.push_str(&match (&o.state, &o.reason) {
        (RunState::Completed, _) if !o.not_planned.is_empty() => format!(
            "\nCompleted: every planned node is at the target; {} node(s) added after planning were not (run refit upgrade again for them).\n",
            o.not_planned.len()
        ),
        (RunState::Completed, _) => "\nCompleted: every node is at the target.\n".to_string(),
        (state, Some(r)) => format!(
            "\n{}: {}\nRerun the same command to continue.\n",
            state.as_str().to_uppercase(),
            crate::remedy::sentence(r, &o.remedies)
        ),
        (state, None) => format!("\n{}\n", state.as_str().to_uppercase()),
    });
    out
}
