//! `refit fleet gate list|approve`.

use std::process::ExitCode;

use refit_core::fleet::{GateRef, GateStatus};
use refit_fleet::FleetApi;
use serde::Serialize;

use super::args::GateCommand;
use super::{actor, fleet_err, now};
use crate::output::{Format, print_structured, table, usage};

/// A gate as listed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed<'a> {
    run: &'a str,
    #[serde(flatten)]
    gate: &'a refit_core::fleet::GateState,
}

/// `gate list` for people: TYPE is the gate's kind (Approval, ScheduledStart), NAME its
/// display name.
fn list_table(listed: &[Listed]) -> comfy_table::Table {
    let mut t = table(&["run", "gate", "type", "name", "state", "reached", "approval"]);
    for l in listed {
        let g = l.gate;
        t.add_row(vec![
            l.run.to_string(),
            g.gate.to_string(),
            g.spec.kind().to_string(),
            g.spec.display_name().unwrap_or_default().to_string(),
            format!("{:?}", g.state),
            g.reached_at.map(|t| t.to_string()).unwrap_or_default(),
            g.approval
                .as_ref()
                .map(|a| {
                    let exp = a.expires_at.map(|e| format!(", expires {e}")).unwrap_or_default();
                    format!("{} at {}{exp}", a.by, a.at)
                })
                .unwrap_or_default(),
        ]);
    }
    t
}

pub async fn run<A: FleetApi>(cmd: GateCommand, api: &mut A, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        GateCommand::List { run, all } => {
            let runs = match &run {
                Some(name) => vec![api.get_run(name).await.map_err(fleet_err)?],
                None => api.list_runs().await.map_err(fleet_err)?,
            };
            let listed: Vec<Listed> = runs
                .iter()
                .flat_map(|r| r.state.gates().map(move |g| Listed { run: &r.state.name, gate: g }))
                .filter(|l| all || l.gate.state == GateStatus::Pending)
                .collect();
            if !print_structured(format, &listed)? {
                println!("{}", list_table(&listed));
            }
            Ok(ExitCode::SUCCESS)
        }
        GateCommand::Approve { run, gate, expires_in, by } => {
            let gate: GateRef = gate.parse().map_err(usage)?;
            let at = now();
            let expires_at = expires_in.map(|d| refit_core::duration::timestamp_after(at, d.as_secs()));
            let by = actor(api, by)?;
            let done = api.approve(&run, &gate, expires_at, by).await.map_err(fleet_err)?;
            let g = done.gate;
            if !print_structured(format, &g)? {
                let state = g.map(|g| format!("{:?}", g.state)).unwrap_or_default();
                println!("gate {gate} of run {run} approved by {} at {at} (gate now {state})", done.by);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use refit_core::fleet::{RunState, Strategy, UpgradeSpec, UpgradeType, resolve};

    use super::*;

    #[test]
    fn gate_list_types_gates_by_kind_and_names_them_apart() {
        let strategy = Strategy::parse(
            "stages:\n  - name: canary\n    groups: [{name: g}]\n    afterGates: [{type: Approval, displayName: canary looks good}]\n  - name: prod\n    groups: [{name: h}]\n    beforeGates: [{type: ScheduledStart, startDay: Monday, startTime: \"09:00\", utcOffset: \"+01:00\"}]\n",
        )
        .unwrap();
        let plan = resolve(&strategy, &[]).unwrap();
        let spec = UpgradeSpec::new(UpgradeType::Full, Some("1.37.1".parse().unwrap()));
        let at = "2026-06-10T12:00:00Z".parse().unwrap();
        let run = RunState::new("to-137", spec, strategy, plan, at).unwrap();
        let listed: Vec<Listed> = run.gates().map(|g| Listed { run: "to-137", gate: g }).collect();
        insta::assert_snapshot!(list_table(&listed).to_string());
    }
}
