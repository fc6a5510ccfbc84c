//! `refit fleet ...`: members, strategies, update runs, gates, profiles, and the driver.
//!
//! The work is `refit_fleet`'s (the driver, member observation and launches, run creation and
//! commits) and every rule `refit_core::fleet`'s; this module parses arguments, calls them and
//! prints. A change to a run is always `refit_fleet::commit`: read (state, version) →
//! `core::fleet::apply(event)` → write if the version is unchanged (else read again).

pub mod args;
mod driver;
mod gate;
mod member;
mod notify;
mod profile;
mod run;
mod show;
mod strategy;

use std::path::PathBuf;
use std::process::ExitCode;

use jiff::Timestamp;
use refit_fleet::FleetApi;
use refit_store::Store;

use crate::output::{Format, UsageError, usage};
use args::{FleetArgs, FleetCommand};

/// Runs `refit fleet ...`: each verb written once against `refit_fleet::FleetApi`, for the
/// SQLite store or (`--hub`) the hub's resources.
pub async fn run(args: FleetArgs, format: Format) -> anyhow::Result<ExitCode> {
    if let Some(hub) = &args.hub {
        return hub_run(hub, &args.hub_namespace, args.command, format).await;
    }
    let store = store_path(args.store.as_ref())?;
    match args.command {
        FleetCommand::Member(cmd) => member::run(cmd, &mut open(&store)?, format).await,
        FleetCommand::Strategy(cmd) => strategy::run(cmd, &mut open(&store)?, format).await,
        FleetCommand::Run(cmd) => run::run(cmd, &mut open(&store)?, Some(&store), format).await,
        FleetCommand::Gate(cmd) => gate::run(cmd, &mut open(&store)?, format).await,
        FleetCommand::Profile(cmd) => profile::run(cmd, &mut open(&store)?, Some(&store), format).await,
        FleetCommand::Daemon(a) => driver::daemon(&store, a.exit_when_idle, format).await,
        FleetCommand::Notify(cmd) => notify::run(cmd, &store, format),
    }
}

/// `refit fleet --hub KUBECONFIG ...`: the same verbs on the hub's resources
/// (`refit_controller::hub::HubClient`); what has no meaning there says so (exit 2).
async fn hub_run(
    hub: &std::path::Path,
    namespace: &str,
    command: FleetCommand,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let no_meaning = |what: &str| -> anyhow::Result<ExitCode> { Err(UsageError(what.to_string()).into()) };
    match command {
        FleetCommand::Member(cmd) => member::run(cmd, &mut connect_hub(hub, namespace).await?, format).await,
        FleetCommand::Strategy(cmd) => {
            strategy::run(cmd, &mut connect_hub(hub, namespace).await?, format).await
        }
        FleetCommand::Run(cmd) => run::run(cmd, &mut connect_hub(hub, namespace).await?, None, format).await,
        FleetCommand::Gate(cmd) => gate::run(cmd, &mut connect_hub(hub, namespace).await?, format).await,
        FleetCommand::Profile(cmd) => {
            profile::run(cmd, &mut connect_hub(hub, namespace).await?, None, format).await
        }
        FleetCommand::Daemon(_) => no_meaning(
            "`fleet daemon` has no meaning with --hub: the hub's runs and profiles are driven by `refit controller --kubeconfig HUB`",
        ),
        FleetCommand::Notify(_) => no_meaning(
            "`fleet notify` has no meaning with --hub yet: the hub records Kubernetes Events (kubectl get events -n NAMESPACE)",
        ),
    }
}

/// The hub's fleet, as the user its kubeconfig authenticates.
async fn connect_hub(
    hub: &std::path::Path,
    namespace: &str,
) -> anyhow::Result<refit_controller::hub::HubClient> {
    let target = refit_kube::ClusterTarget { kubeconfig: Some(hub.to_path_buf()), context: None };
    let conn =
        refit_kube::connect(&target).await.map_err(|e| usage(format!("--hub {}: {e}", hub.display())))?;
    refit_controller::hub::HubClient::new(conn, namespace).await.map_err(fleet_err)
}

/// Who acts: the user the hub authenticates (then `--by` is refused), else [`who`].
fn actor<A: FleetApi>(api: &A, by: Option<String>) -> anyhow::Result<String> {
    match (api.authenticated(), by) {
        (Some(_), Some(_)) => {
            Err(usage("--by has no meaning with --hub: the hub records the user it authenticates"))
        }
        (Some(me), None) => Ok(me.to_string()),
        (None, by) => Ok(who(by)),
    }
}

/// `--store`, else the default journal (the same file `refit upgrade` uses).
fn store_path(flag: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(p) => Ok(p.clone()),
        None => Ok(refit_store::default_path()?),
    }
}

fn open(path: &std::path::Path) -> anyhow::Result<Store> {
    Ok(Store::open(path)?)
}

/// A store error as the CLI reports it: unknown or duplicate names are bad input (exit 2).
fn store_err(e: refit_store::Error) -> anyhow::Error {
    match e {
        refit_store::Error::NotFound { kind, name } => {
            usage(format!("no {kind} named '{name}' (see refit fleet {} list)", list_of(kind)))
        }
        refit_store::Error::Exists { kind, name } => usage(format!("{kind} '{name}' exists already")),
        e => anyhow::Error::new(e),
    }
}

/// A fleet library error as the CLI reports it: bad input, unknown names, a refusal by the
/// state machine or a run driven elsewhere are exit 2 (nothing was changed).
fn fleet_err(e: refit_fleet::Error) -> anyhow::Error {
    match e {
        refit_fleet::Error::Store(e) => store_err(e),
        e if e.is_usage() => usage(e.to_string()),
        e => anyhow::Error::new(e),
    }
}

fn list_of(kind: &str) -> &str {
    match kind {
        "update run" => "run",
        k => k,
    }
}

/// Who is acting: `--by`, else $USER, else the operating system's name of this process's
/// user (a service or container often has no $USER), else `uid N`. Never "unknown": an
/// approval must say who gave it.
fn who(by: Option<String>) -> String {
    by.filter(|b| !b.trim().is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(os_user)
}

/// The name the user database (files, LDAP, … through NSS) gives this process's real uid.
#[allow(unsafe_code)]
fn os_user() -> String {
    // SAFETY: getuid cannot fail. getpwuid_r writes only into `pwd` and `buf`, which outlive
    // the call and whose sizes are passed; on success `pw_name` points into `buf` as a NUL-
    // terminated string, read before `buf` is dropped.
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0 as libc::c_char; 4096];
    for _ in 0..4 {
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc == 0 && !found.is_null() && !pwd.pw_name.is_null() {
            let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
            if !name.is_empty() {
                return name;
            }
        }
        break;
    }
    format!("uid {uid}")
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Reads a file the user named; a missing file is bad input.
fn read_file(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("{flag} {}: {e}", path.display())))
}

/// Checks a fleet object's name against Azure Fleet's pattern.
fn check_name(kind: &str, name: &str) -> anyhow::Result<()> {
    if refit_core::fleet::is_valid_name(name) {
        Ok(())
    } else {
        Err(usage(format!(
            "{kind} name '{name}' is not valid: use lowercase letters, digits and inner dashes, 1–50 characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_user_is_the_name_of_this_processs_uid() {
        // Checked against the user database read independently: /etc/passwd's entry for the
        // uid that owns a file this process just created.
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mine");
        std::fs::write(&f, "").unwrap();
        let uid = std::fs::metadata(&f).unwrap().uid();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let expected = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == uid.to_string())
            .map(|f| f[0].to_string())
            .unwrap_or_else(|| format!("uid {uid}"));
        assert_eq!(os_user(), expected);
        assert_eq!(who(Some("alice".into())), "alice");
        assert_eq!(who(Some("  ".into())), who(None), "a blank --by is no name");
    }
}
