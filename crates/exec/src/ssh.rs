//! The `ssh` action: a recipe of commands run on the node through the system `ssh`.
//!
//! Why the system ssh (the `openssh` crate) rather than an ssh library: operators already
//! have `~/.ssh/config`, agents, ProxyJump bastions, certificates and known_hosts set up, and
//! all of it keeps working. One master connection is opened per node and every command of the
//! recipe is multiplexed over it, so authentication (and a bastion hop) happens once.
//!
//! Safety rules:
//! - Host keys are checked strictly by default: an unknown host is refused. `AcceptNew` adds
//!   unknown hosts; a *changed* key is refused in every mode.
//! - Every program name and argument is escaped for the remote shell (openssh's `arg`); no
//!   value is ever sent raw, so `$(...)`, `;`, quotes and spaces arrive literally.
//! - The destination is checked before it reaches ssh: an address starting with `-` would be
//!   read by ssh as an option (`-oProxyCommand=...` runs a local command).
//! - Identity files are passed by path; their contents are never read, logged or reported.
//!
//! Limit: without a terminal the remote side does not get SIGHUP, so when the action times
//! out or is dropped the local ssh processes end but a remote command already running
//! finishes on its own (kubeadm's steps are idempotent and a rerun repeats them safely).

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use refit_core::planfile::{Action, HostKeyCheck};
use serde::{Deserialize, Serialize};

use crate::command::{OutputLine, Stream, Tails, pump};
use crate::error::ERROR_TAIL_LINES;
use crate::{Error, NodeContext};

/// How long the master connection stays up after its last command when nobody closes it
/// (refit was killed): long enough to bridge two commands, short enough not to linger.
const MASTER_IDLE_SECS: usize = 60;

/// One command of a recipe: a program and its arguments, sent escaped, never as shell text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCommand {
    /// The program (looked up in the remote `PATH`).
    pub program: String,
    /// Its arguments, each arriving as exactly one argument.
    pub args: Vec<String>,
    /// Variables set for this command only (through `env NAME=VALUE`, after sudo, so sudo's
    /// environment reset cannot drop them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Whether it needs root (run through `sudo -n` when [`SshOptions::sudo`] is set).
    pub sudo: bool,
}

impl RemoteCommand {
    /// A command that runs as the login user.
    pub fn user<I: IntoIterator<Item = S>, S: Into<String>>(program: &str, args: I) -> Self {
        RemoteCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: vec![],
            sudo: false,
        }
    }

    /// A command that needs root.
    pub fn root<I: IntoIterator<Item = S>, S: Into<String>>(program: &str, args: I) -> Self {
        RemoteCommand { sudo: true, ..RemoteCommand::user(program, args) }
    }

    /// The same command with one more environment variable.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The argument vector as the remote side receives it: `[sudo -n --] [env NAME=VALUE...]
    /// program args...`.
    pub fn argv(&self, use_sudo: bool) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.args.len() + 4 + self.env.len());
        if use_sudo && self.sudo {
            argv.extend(["sudo".to_string(), "-n".to_string(), "--".to_string()]);
        }
        if !self.env.is_empty() {
            argv.push("env".into());
            argv.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// A readable rendering for logs, errors and snapshots: `sudo ` when root is needed, and
/// arguments with spaces or shell characters in single quotes (for reading only — what is
/// sent is the escaped argument vector, never this text).
impl fmt::Display for RemoteCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.argv(false).iter().map(|a| display_quote(a)).collect();
        if self.sudo {
            write!(f, "sudo ")?;
        }
        write!(f, "{}", shown.join(" "))
    }
}

fn display_quote(arg: &str) -> String {
    let plain =
        !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain { arg.to_string() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}

/// How to reach the nodes. Everything left `None` comes from the user's ssh configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// Remote user (`-l`).
    pub user: Option<String>,
    /// Remote port (`-p`).
    pub port: Option<u16>,
    /// The only private key to offer (`-i` with `IdentitiesOnly=yes`).
    pub identity_file: Option<PathBuf>,
    /// An ssh_config file instead of `~/.ssh/config` (`-F`).
    pub config_file: Option<PathBuf>,
    /// Host key policy; strict unless the operator chose otherwise.
    pub known_hosts: HostKeyCheck,
    /// A known_hosts file instead of `~/.ssh/known_hosts` (`UserKnownHostsFile`).
    pub known_hosts_file: Option<PathBuf>,
    /// Run the commands marked as needing root through `sudo -n` (never prompts: a sudo that
    /// wants a password fails the command instead of hanging).
    pub sudo: bool,
    /// `ConnectTimeout` for the master connection.
    pub connect_timeout: Duration,
    /// Where the master's control socket lives (default: openssh's, under the user's state
    /// directory). Unix socket paths are short: keep this path short.
    pub control_dir: Option<PathBuf>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            user: None,
            port: None,
            identity_file: None,
            config_file: None,
            known_hosts: HostKeyCheck::Strict,
            known_hosts_file: None,
            sudo: true,
            connect_timeout: Duration::from_secs(30),
            control_dir: None,
        }
    }
}

impl SshOptions {
    /// The options a plan file's `ssh` action asks for; `None` for other actions.
    pub fn from_action(action: &Action) -> Option<SshOptions> {
        match action {
            Action::Ssh {
                user,
                port,
                identity_file,
                config_file,
                known_hosts_file,
                host_key_check,
                sudo,
                ..
            } => Some(SshOptions {
                user: user.clone(),
                port: *port,
                identity_file: identity_file.as_ref().map(PathBuf::from),
                config_file: config_file.as_ref().map(PathBuf::from),
                known_hosts: *host_key_check,
                known_hosts_file: known_hosts_file.as_ref().map(PathBuf::from),
                sudo: *sudo,
                ..SshOptions::default()
            }),
            _ => None,
        }
    }

    fn builder(&self) -> SessionBuilder {
        let mut b = SessionBuilder::default();
        b.known_hosts_check(match self.known_hosts {
            HostKeyCheck::Strict => KnownHosts::Strict,
            HostKeyCheck::AcceptNew => KnownHosts::Add,
        });
        b.connect_timeout(self.connect_timeout);
        b.server_alive_interval(Duration::from_secs(15));
        if let Some(idle) = NonZeroUsize::new(MASTER_IDLE_SECS) {
            b.control_persist(ControlPersist::IdleFor(idle));
        }
        if let Some(u) = &self.user {
            b.user(u.clone());
        }
        if let Some(p) = self.port {
            b.port(p);
        }
        if let Some(k) = &self.identity_file {
            b.keyfile(k);
        }
        if let Some(c) = &self.config_file {
            b.config_file(c);
        }
        if let Some(k) = &self.known_hosts_file {
            b.user_known_hosts_file(k);
        }
        if let Some(d) = &self.control_dir {
            b.control_directory(d);
        }
        b
    }
}

/// The host ssh is given: the node's address, or its name when no address is known. Either
/// must be an IP address or a DNS name (core's rule), so nothing reads as an ssh option.
fn destination(ctx: &NodeContext) -> Result<String, Error> {
    let host = if ctx.address.is_empty() { ctx.node.as_str() } else { ctx.address.as_str() };
    if let Ok(a) = refit_core::identity::NodeAddress::parse(host) {
        return Ok(a.to_string());
    }
    let refuse = |reason| {
        Err(Error::BadDestination {
            node: ctx.node.clone(),
            address: refit_core::identity::printable(host, false),
            reason,
        })
    };
    if host.is_empty() {
        return refuse("empty");
    }
    if host.starts_with('-') {
        return refuse("it would be read as an ssh option");
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("it contains whitespace or control characters");
    }
    if host.contains('@') || host.contains("://") {
        return refuse("give a host name or IP address; the user belongs in the ssh options");
    }
    refuse("it is neither an IP address nor a DNS name")
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An error and its causes on one line (openssh puts ssh's own words in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(s.to_string().trim());
        cur = s.source();
    }
    out
}

/// ssh's connection failure in one actionable line: host key problems (the ones an operator
/// must decide about) are named plainly; otherwise ssh's own lines without the `@@@` banner.
fn explain_connect(detail: &str) -> String {
    let lines: Vec<&str> =
        detail.lines().map(|l| l.trim().trim_matches('@').trim()).filter(|l| !l.is_empty()).collect();
    let find = |needle: &str| lines.iter().find(|l| l.contains(needle)).copied();
    if find("REMOTE HOST IDENTIFICATION HAS CHANGED").is_some() {
        let offending = find("Offending").map(|l| format!(" ({l})")).unwrap_or_default();
        return format!(
            "the host key has CHANGED since it was recorded{offending}; refusing (possible \
             man-in-the-middle). If the node was reinstalled, verify its new key out of band and \
             replace the known_hosts entry"
        );
    }
    if let Some(l) = find("host key is known") {
        return format!(
            "{l} Host key checking is strict: add the node's key to known_hosts (verified out of \
             band), or set hostKeyCheck: accept-new"
        );
    }
    let shown: Vec<&str> = lines.iter().rev().take(3).rev().copied().collect();
    shown.join(" / ")
}

/// Runs `recipe` on the node, in order, over one ssh master connection; stops at the first
/// command that fails. Output of every command goes to `on_line` as it arrives. `timeout`
/// bounds the whole action (connection included). Errors name the node and the command.
pub async fn run_ssh(
    recipe: &[RemoteCommand],
    ctx: &NodeContext,
    opts: &SshOptions,
    timeout: Duration,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<(), Error> {
    let destination = destination(ctx)?;
    if let Some(bad) =
        recipe.iter().find(|c| c.program.is_empty() || c.env.iter().any(|(k, _)| !valid_env_name(k)))
    {
        return Err(Error::SshCommand {
            node: ctx.node.clone(),
            command: bad.to_string(),
            detail: "a recipe command needs a program and variable names like NAME_1".into(),
        });
    }
    if recipe.is_empty() {
        tracing::info!(node = %ctx.node, "empty ssh recipe: nothing to run");
        return Ok(());
    }
    let current = Mutex::new("connect".to_string());
    let work = async {
        let session = opts.builder().connect(&destination).await.map_err(|e| Error::SshConnect {
            node: ctx.node.clone(),
            destination: destination.clone(),
            detail: explain_connect(&chain(&e)),
        })?;
        tracing::debug!(node = %ctx.node, %destination, "ssh master connected");
        let mut result = Ok(());
        for (step, cmd) in recipe.iter().enumerate() {
            *current.lock().unwrap_or_else(|p| p.into_inner()) = cmd.to_string();
            result = run_remote(&session, step, cmd, ctx, opts, on_line).await;
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = session.close().await {
            tracing::warn!(node = %ctx.node, "closing the ssh master connection: {}", chain(&e));
        }
        result
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::RemoteTimeout {
            node: ctx.node.clone(),
            command: current.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            timeout,
        }),
    }
}

async fn run_remote(
    session: &Session,
    step: usize,
    cmd: &RemoteCommand,
    ctx: &NodeContext,
    opts: &SshOptions,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<(), Error> {
    let shown = cmd.to_string();
    let lost = |detail: String| Error::SshCommand { node: ctx.node.clone(), command: shown.clone(), detail };
    let argv = cmd.argv(opts.sudo);
    let (program, args) = argv.split_first().ok_or_else(|| lost("empty command".into()))?;
    tracing::debug!(node = %ctx.node, command = %shown, "remote command");
    let mut remote = session.command(program.as_str());
    remote.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = remote.spawn().await.map_err(|e| lost(chain(&e)))?;
    let tails = Tails::default();
    let (out, err) = (child.stdout().take(), child.stderr().take());
    let (a, b) =
        tokio::join!(pump(out, Stream::Stdout, &tails, on_line), pump(err, Stream::Stderr, &tails, on_line));
    a.and(b).map_err(|e| lost(format!("reading its output: {e}")))?;
    let failed = |code| Error::RemoteFailed {
        node: ctx.node.clone(),
        step,
        command: shown.clone(),
        code,
        stderr_tail: tails.err_tail(ERROR_TAIL_LINES),
    };
    match child.wait().await {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(failed(status.code())),
        // openssh reports exit code 127 as "not found" and 255 as "terminated"; 255 is also
        // what ssh says when the connection broke, so ask the master which one it was.
        Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(failed(Some(127))),
        Err(openssh::Error::RemoteProcessTerminated) => match session.check().await {
            Ok(()) => Err(failed(Some(255))),
            Err(e) => Err(lost(format!("the connection broke: {}", chain(&e)))),
        },
        Err(e) => Err(lost(chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(node: &str, address: &str) -> NodeContext {
        NodeContext {
            node: node.into(),
            roles: vec!["worker".into()],
            from: "1.36.4".into(),
            to: "1.37.1".into(),
            phase: "workers".into(),
            address: address.into(),
            first_control_plane: false,
        }
    }

    #[test]
    fn destinations_that_ssh_would_misread_are_refused() {
        assert_eq!(destination(&ctx("w-1", "10.0.0.1")).unwrap(), "10.0.0.1");
        assert_eq!(destination(&ctx("w-1", "")).unwrap(), "w-1");
        assert_eq!(destination(&ctx("w-1", "fe80::1")).unwrap(), "fe80::1");
        for bad in
            ["-oProxyCommand=touch /tmp/x", "a b", "root@h", "ssh://h:22", "a\nb", "$(id)", "h;rm", "a..b"]
        {
            let err = destination(&ctx("w-1", bad)).unwrap_err().to_string();
            assert!(err.contains("w-1") && err.contains("not usable"), "{bad}: {err}");
        }
        assert!(destination(&ctx("", "")).is_err());
    }

    #[test]
    fn host_key_failures_are_explained() {
        let changed = "failed to connect to the remote host: @@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\nOffending ED25519 key in /k/known_hosts:1\nHost key verification failed.";
        let text = explain_connect(changed);
        assert!(
            text.contains("CHANGED") && text.contains("/k/known_hosts:1") && !text.contains('@'),
            "{text}"
        );
        let unknown = "failed to connect to the remote host: No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.";
        assert!(explain_connect(unknown).contains("accept-new"));
        assert_eq!(explain_connect("a\nb\nc\nd: Connection refused"), "b / c / d: Connection refused");
    }

    #[test]
    fn argv_puts_sudo_then_env_then_the_program() {
        let c = RemoteCommand::root("apt-get", ["install", "-y", "kubeadm=1.37.1-*"])
            .with_env("DEBIAN_FRONTEND", "noninteractive");
        assert_eq!(
            c.argv(true),
            [
                "sudo",
                "-n",
                "--",
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "kubeadm=1.37.1-*"
            ]
        );
        assert_eq!(c.argv(false)[0], "env");
        assert_eq!(RemoteCommand::user("kubeadm", ["version"]).argv(true), ["kubeadm", "version"]);
        assert_eq!(
            c.to_string(),
            "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y 'kubeadm=1.37.1-*'"
        );
        assert_eq!(RemoteCommand::user("echo", ["it's", ""]).to_string(), r"echo 'it'\''s' ''");
        assert!(valid_env_name("DEBIAN_FRONTEND") && valid_env_name("_A1"));
        assert!(
            !valid_env_name("") && !valid_env_name("1A") && !valid_env_name("-i") && !valid_env_name("A=B")
        );
    }

    #[test]
    fn options_follow_the_plan_file() {
        let plan = refit_core::planfile::PlanFile::from_yaml(
            "action: {type: ssh, user: ops, port: 2222, identityFile: /k/id, hostKeyCheck: accept-new, sudo: false}",
        )
        .unwrap();
        let opts = SshOptions::from_action(plan.action.as_ref().unwrap()).unwrap();
        assert_eq!(opts.user.as_deref(), Some("ops"));
        assert_eq!(opts.port, Some(2222));
        assert_eq!(opts.identity_file, Some(PathBuf::from("/k/id")));
        assert_eq!(opts.known_hosts, HostKeyCheck::AcceptNew);
        assert!(!opts.sudo);
        assert_eq!(SshOptions::from_action(&Action::Exec { command: vec!["x".into()] }), None);
        assert_eq!(SshOptions::default().known_hosts, HostKeyCheck::Strict);
    }
}
