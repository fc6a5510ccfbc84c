//! Output formats and the error type that means "bad input" (exit code 2).

use std::fmt;

use clap::ValueEnum;
use serde::Serialize;

/// How a command prints its result (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Human-readable tables (default).
    #[default]
    Table,
    /// JSON (newline-delimited events for long-running commands).
    Json,
    /// YAML.
    Yaml,
}

/// Bad input or usage: printed as one line, exit code 2, nothing changed.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for returning a [`UsageError`].
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Prints `value` as JSON or YAML; returns false for the table format (the caller draws it).
pub fn print_structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Format::Yaml => {
            print!("{}", serde_saphyr::to_string(value)?);
            Ok(true)
        }
    }
}

/// A borderless, kubectl-like table.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    t
}
