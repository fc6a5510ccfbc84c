//! `refit fleet strategy create|show|list|delete`.

use std::path::Path;
use std::process::ExitCode;

use refit_core::fleet::Strategy;
use refit_fleet::FleetApi;

use super::args::StrategyCommand;
use super::{check_name, fleet_err, read_file};
use crate::output::{Format, print_structured, table, usage};

/// Reads and validates a strategy file; every problem is one line and exit code 2.
pub fn parse_file(flag: &str, path: &Path) -> anyhow::Result<Strategy> {
    let text = read_file(flag, path)?;
    let s = Strategy::parse(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    Ok(s)
}

pub async fn run<A: FleetApi>(cmd: StrategyCommand, api: &mut A, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        StrategyCommand::Create { name, file, replace } => {
            let mut s = parse_file("-f", &file)?;
            let name = match (name, &s.name) {
                (Some(n), _) => n,
                (None, Some(n)) => n.clone(),
                (None, None) => {
                    return Err(usage(format!(
                        "{} has no name: give one (refit fleet strategy create NAME -f FILE)",
                        file.display()
                    )));
                }
            };
            check_name("strategy", &name)?;
            s.name = Some(name.clone());
            api.put_strategy(&name, &s, replace).await.map_err(fleet_err)?;
            if !print_structured(format, &s)? {
                let groups: usize = s.stages.iter().map(|st| st.effective_groups().len()).sum();
                println!("strategy {name} stored: {} stage(s), {groups} group(s)", s.stages.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        StrategyCommand::Show { name } => {
            let s = api.get_strategy(&name).await.map_err(fleet_err)?.ok_or_else(|| {
                usage(format!("no strategy named '{name}' (see refit fleet strategy list)"))
            })?;
            if !print_structured(format, &s)? {
                print!("{}", serde_saphyr::to_string(&s)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        StrategyCommand::List => {
            let all = api.list_strategies().await.map_err(fleet_err)?;
            let items: Vec<&Strategy> = all.iter().map(|(_, s)| s).collect();
            if !print_structured(format, &items)? {
                let mut t = table(&["name", "stages"]);
                for (n, s) in &all {
                    let stages: Vec<String> = s
                        .stages
                        .iter()
                        .map(|st| {
                            let groups: Vec<String> =
                                st.effective_groups().iter().map(|g| g.name.clone()).collect();
                            format!("{}[{}]", st.name, groups.join(","))
                        })
                        .collect();
                    t.add_row(vec![n.clone(), stages.join(" → ")]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        StrategyCommand::Delete { name } => {
            if !api.delete_strategy(&name).await.map_err(fleet_err)? {
                return Err(usage(format!("no strategy named '{name}' (see refit fleet strategy list)")));
            }
            if !print_structured(format, &serde_json::json!({"deleted": name}))? {
                println!("strategy {name} deleted (runs made from it keep their copy)");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
