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
    /// Tables with every text in full: where a table shortens long texts (failure reasons in
    /// `refit fleet run show`), `wide` prints them whole. Elsewhere the same as `table`.
    Wide,
}

impl Format {
    /// A table for people (`table` or `wide`).
    pub fn is_table(self) -> bool {
        matches!(self, Format::Table | Format::Wide)
    }

    /// `wide` as `table`, for the commands whose tables never shorten anything.
    pub fn narrow(self) -> Format {
        if self == Format::Wide { Format::Table } else { self }
    }
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

/// Prints `value` as JSON or YAML; returns false for the table formats (the caller draws it).
pub fn print_structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<bool> {
    match format {
        Format::Table | Format::Wide => Ok(false),
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

/// `text` cut to at most `max` characters, ending in `…` when cut (table cells; `-o wide`
/// and `-o json` keep the whole text).
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_on_characters_and_marks_the_cut() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("exactly10!", 10), "exactly10!");
        assert_eq!(shorten("éééééééééééé", 5), "éééé…");
        assert_eq!(shorten("abc", 0), "…");
    }
}
