//! `refit formats [NAME]` (and `refit help formats`): a complete, commented example of every
//! file the CLI reads — plan file, strategy, maintenance window, node-image source, profile,
//! release catalog.
//!
//! The examples are files next to this module, embedded as they are; the tests parse each one
//! with the same parser the command that reads it uses (and check the README shows the same
//! text), so the documentation cannot drift from what refit accepts.

use std::process::ExitCode;

use crate::output::usage;

/// One file format.
pub struct FileFormat {
    /// `refit formats NAME`.
    pub name: &'static str,
    /// What reads it.
    pub read_by: &'static str,
    /// The complete, commented example.
    pub example: &'static str,
}

/// Every format, in the order `refit formats` prints them.
pub const FORMATS: &[FileFormat] = &[
    FileFormat {
        name: "plan",
        read_by: "refit plan|upgrade -f FILE, refit fleet member add --plan-file FILE",
        example: include_str!("formats/plan.yaml"),
    },
    FileFormat {
        name: "strategy",
        read_by: "refit fleet strategy create -f FILE, refit fleet run create --stages FILE",
        example: include_str!("formats/strategy.yaml"),
    },
    FileFormat {
        name: "window",
        read_by: "refit fleet member add|update --window FILE",
        example: include_str!("formats/window.yaml"),
    },
    FileFormat {
        name: "node-images",
        read_by: "refit fleet member add|update --node-image-source FILE",
        example: include_str!("formats/node-images.yaml"),
    },
    FileFormat {
        name: "profile",
        read_by: "refit fleet profile create -f FILE",
        example: include_str!("formats/profile.yaml"),
    },
    FileFormat {
        name: "catalog",
        read_by: "--catalog FILE / REFIT_CATALOG (versions, apis, plan, upgrade, fleet profile generate-run)",
        example: include_str!("formats/catalog.yaml"),
    },
];

/// The long help of `refit formats` (so `refit help formats` prints every example).
pub fn long_help() -> String {
    let mut out = String::from(
        "Every file refit reads, each as a complete, commented example (`refit formats NAME > FILE` \
         writes one to start from). YAML or JSON; unknown fields are refused, and a wrong shape \
         is reported with the field and what was expected.\n",
    );
    for f in FORMATS {
        out.push_str(&format!("\n== {} — {}\n\n{}", f.name, f.read_by, f.example));
    }
    out
}

/// Runs `refit formats [NAME]`.
pub fn run(name: Option<&str>) -> anyhow::Result<ExitCode> {
    match name {
        None => print!("{}", long_help()),
        Some(n) => match FORMATS.iter().find(|f| f.name == n) {
            Some(f) => print!("{}", f.example),
            None => {
                let names: Vec<&str> = FORMATS.iter().map(|f| f.name).collect();
                return Err(usage(format!("no file format named '{n}': use one of {}", names.join(", "))));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser the commands reading format `name` use (validation that needs no cluster
    /// included).
    fn parse(name: &str, text: &str) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match name {
            "plan" => {
                // Checked against the nodes it names itself (`refit plan` checks the cluster's).
                let p = refit_core::planfile::PlanFile::from_yaml(text).map_err(|x| e(&x))?;
                p.validate(&p.nodes.keys().cloned().collect()).map_err(|x| e(&x))
            }
            "strategy" => refit_core::fleet::Strategy::parse(text).map(drop).map_err(|x| e(&x)),
            "window" => refit_core::fleet::MaintenanceWindow::from_yaml(text).map(drop).map_err(|x| e(&x)),
            "node-images" => refit_fleet::observe::parse_image_source(text).map(drop),
            "profile" => refit_core::fleet::Profile::from_yaml(text).map(drop).map_err(|x| e(&x)),
            "catalog" => refit_core::catalog::Catalog::from_yaml(text).map(drop).map_err(|x| e(&x)),
            other => panic!("no parser for format {other}"),
        }
    }

    /// The example with its commented-out alternative for `key` (a `# key:` line and the
    /// `#   ...` lines under it) in place of the active `key:` block.
    fn alternatives(example: &str) -> Vec<String> {
        let lines: Vec<&str> = example.lines().collect();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let Some(rest) = l.strip_prefix("# ") else { continue };
            let Some((key, _)) = rest.split_once(':') else { continue };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
                continue;
            }
            let mut block = vec![rest.to_string()];
            block.extend(
                lines[i + 1..].iter().take_while(|l| l.starts_with("#   ")).map(|l| l[2..].to_string()),
            );
            let start = lines.iter().position(|l| l.starts_with(&format!("{key}:"))).expect("active key");
            let end = start
                + 1
                + lines[start + 1..].iter().take_while(|l| l.starts_with(' ') || l.starts_with('-')).count();
            let mut variant: Vec<String> = lines[..start].iter().map(|s| s.to_string()).collect();
            variant.extend(block);
            variant.extend(lines[end..].iter().map(|s| s.to_string()));
            out.push(variant.join("\n"));
        }
        out
    }

    #[test]
    fn every_printed_example_and_each_commented_alternative_is_accepted_by_its_parser() {
        let mut variants = 0;
        for f in FORMATS {
            parse(f.name, f.example).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            for alt in alternatives(f.example) {
                parse(f.name, &alt).unwrap_or_else(|e| panic!("{} alternative: {e}\n{alt}", f.name));
                variants += 1;
            }
        }
        // The window's monthly recurrence, the plan file's ssh and replace actions.
        assert_eq!(variants, 3);
    }

    #[test]
    fn each_parser_refuses_what_its_example_does_not_allow() {
        // The check above could pass with parsers that accept anything.
        for f in FORMATS {
            let bad = format!("{}\nnoSuchField: 1\n", f.example.trim_end());
            let bad = if f.name == "node-images" { "- 42\n- {name: x}\n".to_string() } else { bad };
            assert!(parse(f.name, &bad).is_err(), "{} accepted {bad}", f.name);
        }
    }

    #[test]
    fn the_readme_shows_every_example_as_refit_prints_it() {
        let readme = include_str!("../../../../README.md");
        for f in FORMATS {
            assert!(readme.contains(f.example), "README.md lacks the {} example as printed", f.name);
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let err = run(Some("windows")).unwrap_err().to_string();
        assert!(err.contains("'windows'") && err.contains("plan, strategy, window, node-images"), "{err}");
    }
}
