//! Who is asking, and whether a state-changing request really comes from them.
//!
//! - **Tokens** come from a file (`--token-file`), one `TOKEN,NAME` per line — the shape of
//!   kube-apiserver's static token file, extra columns ignored. The NAME is who the audit
//!   trail and gate approvals record. Tokens are kept only as SHA-256 digests and compared in
//!   constant time; the file must not be readable by group or others.
//! - **Browsers** log in once (`/login`) and carry the token in an HttpOnly, SameSite=Strict
//!   cookie; API clients send `Authorization: Bearer TOKEN`.
//! - **CSRF**: every state-changing request also needs `X-CSRF-Token`, an HMAC of the caller's
//!   name under a key made when the server starts (the dashboard embeds it; API clients read it
//!   from `/api/session`). A cross-site page can neither read it nor set the header without a
//!   CORS preflight, which the server never grants. A request whose `Origin` is not this
//!   server is refused as well.

use std::fmt;
use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::Error;

/// The cookie that carries a browser's token.
pub const COOKIE: &str = "refit_token";

/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Shortest token accepted from a file (hex of 16 random bytes is 32).
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone)]
struct Entry {
    name: String,
    digest: [u8; 32],
}

/// The tokens the server accepts, and its CSRF key.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<Entry>,
    csrf_key: [u8; 32],
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: never a token, never the key.
        f.debug_struct("Tokens").field("names", &self.names()).finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

impl Tokens {
    /// No tokens: nobody can act (reads may still be open on loopback).
    pub fn none() -> Tokens {
        Tokens { entries: Vec::new(), csrf_key: random_bytes() }
    }

    /// Parses a token file's text (`TOKEN,NAME` per line; `#` comments and blank lines).
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i.saturating_add(1);
            let mut cols = line.split(',').map(|c| c.trim().trim_matches('"'));
            let token = cols.next().unwrap_or_default();
            let name = cols.next().unwrap_or_default();
            if name.is_empty() {
                return Err(format!("line {n}: expected TOKEN,NAME"));
            }
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {n}: the token of {name} is shorter than {MIN_TOKEN_LEN} characters"
                ));
            }
            if name.chars().any(char::is_control) || name.chars().count() > 100 {
                return Err(format!("line {n}: a name is 1-100 printable characters"));
            }
            let d = digest(token);
            if entries.iter().any(|e| same(&e.digest, &d)) {
                return Err(format!("line {n}: the token of {name} is used twice"));
            }
            entries.push(Entry { name: name.to_string(), digest: d });
        }
        if entries.is_empty() {
            return Err("no TOKEN,NAME line in it".into());
        }
        Ok(Tokens { entries, csrf_key: random_bytes() })
    }

    /// Reads a token file; refuses one that group or others can read (a token is a password).
    pub fn from_file(path: &Path) -> Result<Tokens, Error> {
        let err = |message: String| Error::File { flag: "--token-file", path: path.to_path_buf(), message };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(err(format!("is readable by others (mode {:o}); chmod 600 it", mode & 0o777)));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Tokens::parse(&text).map_err(err)
    }

    /// A new random token for `name`, written to `path` (mode 0600, replacing what was there)
    /// as a token file: the default for a server on loopback, so actions still need a token
    /// that only this user can read.
    pub fn generate_file(path: &Path, name: &str) -> Result<Tokens, Error> {
        let err = |message: String| Error::File { flag: "token file", path: path.to_path_buf(), message };
        let token = hex::encode(&random_bytes()[..24]);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(e.to_string()))?;
        f.write_all(format!("{token},{name}\n").as_bytes()).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        Ok(Tokens {
            entries: vec![Entry { name: name.to_string(), digest: digest(&token) }],
            csrf_key: random_bytes(),
        })
    }

    /// The names tokens are given to.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The name of the token presented, if it is one of ours. Every entry is compared, so the
    /// time taken does not tell which one matched.
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        let d = digest(presented);
        let mut found = None;
        for e in &self.entries {
            if same(&e.digest, &d) {
                found = Some(e.name.as_str());
            }
        }
        found
    }

    /// The CSRF token of `name` for this server process.
    pub fn csrf_for(&self, name: &str) -> String {
        match Hmac::<Sha256>::new_from_slice(&self.csrf_key) {
            Ok(mut mac) => {
                mac.update(b"refit-csrf\0");
                mac.update(name.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            // HMAC accepts keys of any length; unreachable, and then nothing matches.
            Err(_) => String::new(),
        }
    }

    /// Whether `presented` is `name`'s CSRF token (constant time).
    pub fn csrf_ok(&self, name: &str, presented: &str) -> bool {
        let expected = self.csrf_for(name);
        !expected.is_empty() && same(&digest(&expected), &digest(presented))
    }
}

/// How a request identified itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Nothing presented.
    Anonymous,
    /// A valid token (header or cookie) or a verified client certificate: the name.
    Named(String),
    /// A token was presented and it is not one of ours.
    Invalid,
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').map(str::trim).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Identifies a request from its `Authorization` and `Cookie` headers and its TLS client name.
pub fn identify(
    tokens: &Tokens,
    authorization: Option<&str>,
    cookies: Option<&str>,
    client: Option<&str>,
) -> Identity {
    if let Some(a) = authorization {
        let Some(t) = a.strip_prefix("Bearer ").map(str::trim) else { return Identity::Invalid };
        return tokens.authenticate(t).map_or(Identity::Invalid, |n| Identity::Named(n.to_string()));
    }
    if let Some(t) = cookies.and_then(|c| cookie(c, COOKIE)).filter(|t| !t.is_empty()) {
        return tokens.authenticate(t).map_or(Identity::Invalid, |n| Identity::Named(n.to_string()));
    }
    match client {
        Some(c) => Identity::Named(c.to_string()),
        None => Identity::Anonymous,
    }
}

/// Whether an `Origin` header (when a browser sent one) names this server (`Host`).
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    match (origin, host) {
        (None, _) => true,
        (Some(o), Some(h)) => o.split_once("://").is_some_and(|(_, rest)| rest == h),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_names_its_tokens_and_refuses_weak_or_repeated_ones() {
        let t = Tokens::parse("# ops\n0123456789abcdef0123,alice,1000,\"ops\"\n\nfedcba9876543210fedc,bob\n")
            .unwrap();
        assert_eq!(t.names(), ["alice", "bob"]);
        assert_eq!(t.authenticate("0123456789abcdef0123"), Some("alice"));
        assert_eq!(t.authenticate("fedcba9876543210fedc"), Some("bob"));
        assert_eq!(t.authenticate("0123456789abcdef012"), None);
        assert!(Tokens::parse("short,alice").unwrap_err().contains("shorter than 16"));
        assert!(Tokens::parse("0123456789abcdef0123").unwrap_err().contains("TOKEN,NAME"));
        assert!(
            Tokens::parse("0123456789abcdef0123,a\n0123456789abcdef0123,b").unwrap_err().contains("twice")
        );
        assert!(Tokens::parse("# nothing\n").is_err());
        assert!(!format!("{t:?}").contains("0123"), "Debug never shows a token");
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused_and_a_generated_one_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "0123456789abcdef0123,alice\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Tokens::from_file(&f).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Tokens::from_file(&f).unwrap().names(), ["alice"]);

        let g = dir.path().join("sub/serve.token");
        let t = Tokens::generate_file(&g, "carol").unwrap();
        assert_eq!(std::fs::metadata(&g).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&g).unwrap();
        let (token, name) = text.trim().split_once(',').unwrap();
        assert_eq!((t.authenticate(token), name), (Some("carol"), "carol"));
        assert_eq!(Tokens::from_file(&g).unwrap().names(), ["carol"], "the server reads what it wrote");
    }

    #[test]
    fn identity_comes_from_the_header_then_the_cookie_then_the_client_certificate() {
        let t = Tokens::parse("0123456789abcdef0123,alice").unwrap();
        let named = |n: &str| Identity::Named(n.into());
        assert_eq!(identify(&t, Some("Bearer 0123456789abcdef0123"), None, None), named("alice"));
        assert_eq!(identify(&t, Some("Bearer nope"), None, None), Identity::Invalid);
        assert_eq!(identify(&t, Some("Basic xyz"), None, None), Identity::Invalid);
        assert_eq!(identify(&t, None, Some("a=b; refit_token=0123456789abcdef0123"), None), named("alice"));
        assert_eq!(identify(&t, None, Some("refit_token=wrong"), None), Identity::Invalid);
        assert_eq!(identify(&t, None, None, Some("dave")), named("dave"));
        assert_eq!(identify(&t, None, Some("other=1"), None), Identity::Anonymous);
    }

    #[test]
    fn csrf_tokens_are_per_name_and_per_process() {
        let t = Tokens::parse("0123456789abcdef0123,alice\nfedcba9876543210fedc,bob").unwrap();
        let a = t.csrf_for("alice");
        assert!(t.csrf_ok("alice", &a));
        assert!(!t.csrf_ok("bob", &a));
        assert!(!t.csrf_ok("alice", ""));
        let other = Tokens::parse("0123456789abcdef0123,alice").unwrap();
        assert!(!other.csrf_ok("alice", &a), "a new server process has a new key");
        assert!(same_origin(None, Some("127.0.0.1:8080")));
        assert!(same_origin(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(!same_origin(Some("https://evil.example"), Some("127.0.0.1:8080")));
    }
}
