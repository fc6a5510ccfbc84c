//! `refit fleet notify add|list|remove|deliveries`: webhook subscriptions. `refit serve`
//! delivers them (signed, retried, recorded); this only keeps the list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use refit_store::notify::{Hook, NotifyKind};

use super::{check_name, open, store_err};
use crate::output::{Format, print_structured, table, usage};

/// `refit fleet notify ...`
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send JSON notifications to a URL (a Slack incoming webhook works as is).
    #[command(after_help = "\
Examples:
  refit fleet notify add ops --url https://hooks.example/refit --events gate-pending,stage-completed,run-failed,run-completed --secret-file ops.secret
  refit fleet notify add slack --url https://hooks.slack.com/services/T0/B0/XXX --events run-failed
Payloads are POSTed as JSON (see the Notification schema in refit serve's /api/openapi.json) with
X-Refit-Event, X-Refit-Delivery and, with --secret-file, X-Refit-Signature: sha256=HMAC-SHA256 of
the body. `refit serve` delivers them at least once (retries with backoff); deduplicate on `key`.")]
    Add {
        /// Name of the subscription.
        name: String,
        /// Where to POST (http or https).
        #[arg(long)]
        url: String,
        /// What to send: gate-pending, stage-completed, run-failed, run-completed (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// File holding the HMAC secret (mode 0600; its path is stored, never the secret).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Webhook subscriptions.
    List,
    /// Remove a subscription and its delivery records.
    Remove {
        /// Its name.
        name: String,
    },
    /// Deliveries (newest first): state, attempts, last error.
    Deliveries {
        /// Only this subscription's.
        name: Option<String>,
    },
}

/// Checks a webhook URL: http(s) with a host, no credentials in it (they would be printed).
fn check_url(url: &str) -> anyhow::Result<()> {
    let uri: http::Uri = url.parse().map_err(|e| usage(format!("--url {url}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(usage(format!("--url {url}: use an http:// or https:// URL"))),
    }
    let Some(authority) = uri.authority() else {
        return Err(usage(format!("--url {url}: no host")));
    };
    if authority.as_str().contains('@') {
        return Err(usage("--url: no user or password in the URL (use --secret-file to sign payloads)"));
    }
    Ok(())
}

/// Checks a secret file: readable, not empty, not readable by group or others.
fn check_secret(path: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| usage(format!("--secret-file {shown}: {e}")))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(usage(format!(
            "--secret-file {shown}: readable by others (mode {:o}); chmod 600 it",
            mode & 0o777
        )));
    }
    let secret = std::fs::read(path).map_err(|e| usage(format!("--secret-file {shown}: {e}")))?;
    if secret.iter().all(u8::is_ascii_whitespace) {
        return Err(usage(format!("--secret-file {shown}: empty")));
    }
    // The notifier runs elsewhere (another directory): keep an absolute path.
    std::fs::canonicalize(path).map_err(|e| usage(format!("--secret-file {shown}: {e}")))
}

pub fn run(cmd: NotifyCommand, store: &Path, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        NotifyCommand::Add { name, url, events, secret_file } => {
            check_name("webhook", &name)?;
            check_url(&url)?;
            let mut kinds: Vec<NotifyKind> = events
                .iter()
                .map(|e| e.trim().parse::<NotifyKind>().map_err(|m| usage(format!("--events: {m}"))))
                .collect::<anyhow::Result<_>>()?;
            kinds.sort_unstable();
            kinds.dedup();
            let secret_file = secret_file.as_deref().map(check_secret).transpose()?;
            let hook = Hook {
                name: name.clone(),
                url,
                events: kinds,
                secret_file: secret_file.map(|p| p.display().to_string()),
                created_at: String::new(),
            };
            open(store)?.add_hook(&hook).map_err(store_err)?;
            if !print_structured(format, &hook)? {
                println!(
                    "webhook {name} added: {} (refit serve delivers them)",
                    hook.events.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        NotifyCommand::List => {
            let hooks = open(store)?.hooks()?;
            if !print_structured(format, &hooks)? {
                let mut t = table(&["name", "url", "events", "signed"]);
                for h in &hooks {
                    t.add_row(vec![
                        h.name.clone(),
                        h.url.clone(),
                        h.events.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                        if h.secret_file.is_some() { "yes" } else { "no" }.to_string(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        NotifyCommand::Remove { name } => {
            if !open(store)?.remove_hook(&name)? {
                return Err(usage(format!("no webhook named '{name}' (see refit fleet notify list)")));
            }
            if !print_structured(format, &serde_json::json!({"removed": name}))? {
                println!("webhook {name} removed");
            }
            Ok(ExitCode::SUCCESS)
        }
        NotifyCommand::Deliveries { name } => {
            let list = open(store)?.deliveries(name.as_deref())?;
            if !print_structured(format, &list)? {
                let mut t = table(&["id", "webhook", "type", "run", "state", "attempts", "last error"]);
                for d in &list {
                    t.add_row(vec![
                        d.id.to_string(),
                        d.hook.clone(),
                        d.kind.to_string(),
                        d.run.clone(),
                        format!("{:?}", d.state),
                        d.attempts.to_string(),
                        d.last_error.clone().unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.example/refit").is_ok());
        assert!(check_url("http://127.0.0.1:9000/x").is_ok());
        assert!(check_url("ftp://hooks.example/").is_err());
        assert!(check_url("/relative").is_err());
        assert!(check_url("https://user:pw@hooks.example/").is_err());
    }
}
