//! Reading the files people write — plan file, strategy, maintenance window, profile,
//! node-image source, release catalog — with one-line errors that name the field and what
//! was expected.
//!
//! serde-saphyr knows where (line, column) and what it found, but not which field it was
//! filling: a window written `recurrence: [Saturday]` would only say "expected …" somewhere on
//! line 1. serde_path_to_error tracks the field path (`stages[1].groups[0].maxConcurrency`)
//! through the same deserializer, so every error reads
//! `field PATH (line L, column C): WHAT WAS WRONG; expected …`. JSON is YAML, so JSON files
//! go through the same path.

use std::cell::RefCell;

use serde::de::DeserializeOwned;

/// Parses YAML (or JSON) into `T`; the error is one line naming the field, where it is and
/// what was expected (without the source snippet serde-saphyr can render).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    from_str_hinted(text, &[])
}

/// What a field of a format takes, for the errors whose own words do not say it: `(path,
/// expected)` with the path's list indices left out (`stages.groups.maxConcurrency`; `""` is
/// the whole file). serde-saphyr reports structural mismatches in its own terms ("expected
/// sequence start", "invalid u8"), which name no example a person could copy.
pub type Hints = [(&'static str, &'static str)];

/// [`from_str`] with the format's [`Hints`].
pub fn from_str_hinted<T: DeserializeOwned>(text: &str, hints: &Hints) -> Result<T, String> {
    let path = RefCell::new(None::<String>);
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            let p = e.path().to_string();
            // `?` is serde_path_to_error's "the root": nothing to name.
            if p != "?" && p != "." {
                *path.borrow_mut() = Some(p);
            }
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let e = e.without_snippet();
        let message = first_line(&e.to_string());
        // serde-saphyr appends the position to its message; say it once, next to the field.
        let (message, at) = match e.location() {
            Some(l) if l.line() > 0 => {
                let at = format!("line {}, column {}", l.line(), l.column());
                (strip_position(&message, l.line(), l.column()), Some(at))
            }
            _ => (message, None),
        };
        let path = path.into_inner();
        let message = match hint(path.as_deref().unwrap_or(""), hints) {
            Some(h) if !says_what_was_expected(&message) => format!("{message}; expected {h}"),
            _ => message,
        };
        match (path, at) {
            (Some(p), Some(at)) => format!("field {p} ({at}): {message}"),
            (Some(p), None) => format!("field {p}: {message}"),
            (None, Some(at)) => format!("{at}: {message}"),
            (None, None) => message,
        }
    })
}

/// The hint for `path` (list indices ignored).
fn hint(path: &str, hints: &Hints) -> Option<&'static str> {
    let mut bare = String::new();
    let mut depth: u32 = 0;
    for c in path.chars() {
        match c {
            '[' => depth = depth.saturating_add(1),
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    let bare = bare.trim_start_matches('.');
    hints.iter().find(|(p, _)| *p == bare).map(|(_, h)| *h)
}

/// Whether serde's message already names what would have been right (an unknown variant or
/// field lists the known ones; a custom visitor says what it takes) — not serde-saphyr's
/// structural words.
fn says_what_was_expected(message: &str) -> bool {
    message.contains("expected")
        && !["sequence start", "mapping start", "scalar", "did not match any variant"]
            .iter()
            .any(|w| message.contains(w))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The message without a trailing `at line L, column C` (the caller states the position).
fn strip_position(message: &str, line: u64, column: u64) -> String {
    for suffix in [format!(" at line {line}, column {column}"), format!(" at line {line} column {column}")] {
        if let Some(m) = message.strip_suffix(&suffix) {
            return m.trim_end_matches(':').to_string();
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Outer {
        #[serde(default)]
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Inner {
        max_count: u32,
    }

    #[test]
    fn a_hint_says_what_a_field_takes_when_the_parser_does_not() {
        const HINTS: &Hints = &[("items", "a list of {maxCount: N}"), ("items.maxCount", "a whole number")];
        let e = from_str_hinted::<Outer>("items:\n  - maxCount: [1]\n", HINTS).unwrap_err();
        assert!(e.starts_with("field items[0].maxCount (line 2, column 15): "), "{e}");
        assert!(e.ends_with("; expected a whole number"), "{e}");
        let e = from_str_hinted::<Outer>("items: 3\n", HINTS).unwrap_err();
        assert!(e.ends_with("; expected a list of {maxCount: N}"), "{e}");
        // A message that lists the right values keeps its own words.
        let e = from_str_hinted::<Outer>("items: []\ncolour: red\n", HINTS).unwrap_err();
        assert!(e.contains("expected one of items") && !e.contains("; expected"), "{e}");
    }

    #[test]
    fn errors_name_the_field_path_and_the_position() {
        let e = from_str::<Outer>("items:\n  - maxCount: 1\n  - maxCount: lots\n").unwrap_err();
        assert!(e.starts_with("field items[1].maxCount (line 3, column 15): "), "{e}");
        assert_eq!(e.lines().count(), 1);
        let e = from_str::<Outer>("items:\n  - maxCount: 1\n    colour: red\n").unwrap_err();
        assert!(e.contains("items[0]") && e.contains("colour"), "{e}");
        let e = from_str::<Outer>("{{{{").unwrap_err();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(!e.is_empty());
        let json = from_str::<Outer>(r#"{"items": [{"maxCount": 2}]}"#).unwrap();
        assert_eq!(json.items.iter().map(|i| i.max_count).collect::<Vec<_>>(), [2]);
    }
}
