//! The `{name}` placeholder grammar of node-action commands, once: the plan file's validation
//! (an unknown name is refused before anything runs) and the substitution the exec and replace
//! actions perform read arguments with this one tokenizer, so what is validated is exactly
//! what is substituted.
//!
//! Grammar: a placeholder is `{`, a name without `{` or `}` (possibly empty), `}`. Everything
//! else is literal text: a `{` that does not open a placeholder (`{{node}` is `{` then
//! `{node}`), a `}` on its own, an unclosed `{`.

/// One piece of an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Literal text.
    Text(&'a str),
    /// A placeholder's name, without braces.
    Placeholder(&'a str),
}

/// The pieces of `arg`, left to right. Adjacent text may come in several pieces.
pub fn pieces(arg: &str) -> Pieces<'_> {
    Pieces { rest: arg }
}

/// Iterator of [`pieces`].
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(open) = self.rest.find('{') else {
            return Some(Piece::Text(std::mem::take(&mut self.rest)));
        };
        if open > 0 {
            let (text, rest) = self.rest.split_at(open);
            self.rest = rest;
            return Some(Piece::Text(text));
        }
        // `rest` starts with `{` (one byte).
        let (brace, after) = self.rest.split_at(1);
        match after.find(['{', '}']).and_then(|close| after.split_at_checked(close)) {
            Some((name, tail)) if tail.starts_with('}') => {
                self.rest = tail.get(1..).unwrap_or_default();
                Some(Piece::Placeholder(name))
            }
            // No placeholder opens here: the `{` is text.
            _ => {
                self.rest = after;
                Some(Piece::Text(brace))
            }
        }
    }
}

/// Replaces the placeholders of each argument with their values, in one pass.
///
/// `vars` holds names without braces (`("node", "worker-1")`). Each argument stays exactly one
/// argument whatever the values contain; values are never rescanned, so a value that itself
/// looks like `{to}` stays literal; a placeholder without a value is left as written.
pub fn substitute(args: &[String], vars: &[(&str, &str)]) -> Vec<String> {
    args.iter()
        .map(|arg| {
            let mut out = String::with_capacity(arg.len());
            for piece in pieces(arg) {
                match piece {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Placeholder(name) => match vars.iter().find(|(n, _)| *n == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push('{');
                            out.push_str(name);
                            out.push('}');
                        }
                    },
                }
            }
            out
        })
        .collect()
}

/// The first placeholder in `args` whose name is not in `known` (names without braces).
pub fn first_unknown<'a>(args: &'a [String], known: &[&str]) -> Option<&'a str> {
    args.iter().flat_map(|a| pieces(a)).find_map(|p| match p {
        Piece::Placeholder(name) if !known.contains(&name) => Some(name),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn substitutes_in_one_pass_and_keeps_arguments_whole() {
        let vars = [("node", "a;rm -rf /"), ("to", "1.37.1"), ("new", "{to}")];
        assert_eq!(
            substitute(
                &s(&["x", "{node}", "--to={to}", "{new}", "{unknown}", "{{node}}", "{", "}{to", "{}"]),
                &vars
            ),
            s(&["x", "a;rm -rf /", "--to=1.37.1", "{to}", "{unknown}", "{a;rm -rf /}", "{", "}{to", "{}"])
        );
        assert_eq!(substitute(&[], &vars), Vec::<String>::new());
        assert_eq!(substitute(&s(&["{node}{node}"]), &[("node", "n")]), s(&["nn"]));
        assert_eq!(substitute(&s(&["é{node}ü"]), &[("node", "n")]), s(&["énü"]));
    }

    #[test]
    fn validation_sees_the_placeholders_substitution_replaces() {
        let known = ["node", "to"];
        assert_eq!(first_unknown(&s(&["./up.sh", "{node}", "--to={to}"]), &known), None);
        assert_eq!(first_unknown(&s(&["{nod}"]), &known), Some("nod"));
        assert_eq!(first_unknown(&s(&["{}"]), &known), Some(""));
        // `{{node}` is a literal `{` then `{node}`: valid, and substituted the same way.
        assert_eq!(first_unknown(&s(&["{{node}"]), &known), None);
        assert_eq!(first_unknown(&s(&["{a{to}"]), &known), None);
        assert_eq!(first_unknown(&s(&["{unclosed", "}"]), &known), None);
        assert_eq!(
            pieces("a{b}{").collect::<Vec<_>>(),
            [Piece::Text("a"), Piece::Placeholder("b"), Piece::Text("{")]
        );
    }

    proptest! {
        /// Text pieces and placeholders put back together give the argument, and after
        /// substitution no placeholder that had a value is left (values are not rescanned and
        /// text never turns into one of them).
        #[test]
        fn pieces_reassemble_and_substitution_leaves_no_known_placeholder(arg in "[a-c{}é]{0,12}") {
            let back: String = pieces(&arg).map(|p| match p {
                Piece::Text(t) => t.to_string(),
                Piece::Placeholder(n) => format!("{{{n}}}"),
            }).collect();
            prop_assert_eq!(&back, &arg);
            let out = substitute(std::slice::from_ref(&arg), &[("a", "X"), ("b", "Y")]);
            prop_assert!(
                out.iter().flat_map(|o| pieces(o)).all(|p| p != Piece::Placeholder("a") && p != Piece::Placeholder("b")),
                "{:?}", out
            );
        }
    }
}
