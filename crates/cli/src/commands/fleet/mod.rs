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
use refit_core::fleet::Event;
use refit_store::Store;
use refit_store::fleet::StoredRun;

use crate::output::{Format, UsageError, usage};
use args::{FleetArgs, FleetCommand};

/// Runs `refit fleet ...`.
pub async fn run(args: FleetArgs, format: Format) -> anyhow::Result<ExitCode> {
    if let Some(hub) = &args.hub {
        return hub_run(hub, &args.hub_namespace, args.command).await;
    }
    let store = store_path(args.store.as_ref())?;
    match args.command {
        FleetCommand::Member(cmd) => member::run(cmd, &store, format).await,
        FleetCommand::Strategy(cmd) => strategy::run(cmd, &store, format),
        FleetCommand::Run(cmd) => run::run(cmd, &store, format).await,
        FleetCommand::Gate(cmd) => gate::run(cmd, &store, format),
        FleetCommand::Profile(cmd) => profile::run(cmd, &store, format).await,
        FleetCommand::Daemon(a) => driver::daemon(&store, a.exit_when_idle, format).await,
        FleetCommand::Notify(cmd) => notify::run(cmd, &store, format),
    }
}

/// `refit fleet --hub KUBECONFIG ...`: the verbs hub mode has so far (crates/controller's hub).
async fn hub_run(hub: &std::path::Path, namespace: &str, command: FleetCommand) -> anyhow::Result<ExitCode> {
    use args::GateCommand;
    let FleetCommand::Gate(GateCommand::Approve { run, gate, expires_in, by }) = command else {
        return Err(UsageError(
            "with --hub only `gate approve` works so far; use kubectl for the hub's other objects \
             (kubectl get updateruns,gates,members)"
                .into(),
        )
        .into());
    };
    if by.is_some() {
        return Err(UsageError(
            "--by has no meaning with --hub: the approver is the user the hub authenticates".into(),
        )
        .into());
    }
    let expires_at = expires_in.map(|d| refit_core::duration::timestamp_after(Timestamp::now(), d.as_secs()));
    let target = refit_kube::ClusterTarget { kubeconfig: Some(hub.to_path_buf()), context: None };
    let conn = refit_kube::connect(&target).await?;
    match refit_controller::hub::approve(&conn, namespace, &run, &gate, expires_at).await {
        Ok(who) => {
            println!("approved {run} {gate} as {who}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_usage() => Err(UsageError(e.to_string()).into()),
        Err(e) => Err(e.into()),
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

/// The run named `name`, or a usage error.
fn load_run(store: &Store, name: &str) -> anyhow::Result<StoredRun> {
    refit_fleet::commit::load_run(store, name).map_err(fleet_err)
}

/// Applies a person's `event` to the stored run (see `refit_fleet::commit`); a refusal by the
/// state machine is bad input (exit 2) and changes nothing.
fn commit(store: &mut Store, name: &str, event: &Event) -> anyhow::Result<StoredRun> {
    refit_fleet::commit(store, name, event).map_err(fleet_err)
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
