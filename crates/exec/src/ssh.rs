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
//! - No agent, X11 or port forwarding reaches the node, whatever the user's ssh config says: a
//!   compromised node must not get the operator's agent. The master connection reads a config
//!   refit writes for it (`ForwardAgent no`, `ForwardX11 no`, `ClearAllForwardings yes`, then
//!   `Include` of the user's own config: ssh keeps the first value it reads); multiplexed
//!   commands get forwarding only when the master allows it.
//!
//! Two ways to run a recipe:
//! - [`run_ssh_detached`] — the engine's node action: the recipe runs on the node under a name
//!   made of the run, the node and the target, detached from the ssh connection (systemd-run,
//!   else `setsid nohup`) and one at a time per node; refit streams its output and takes its
//!   recorded result. A resumed run attaches to a recipe still running, takes the result of
//!   one that finished, and starts only one that never ran (or failed, or was lost with a
//!   reboot). See [`crate::detached`].
//! - [`run_ssh`] — attached: each command a remote command of the connection (for short probes
//!   such as reading a node's state). Limit: without a terminal the remote side does not get
//!   SIGHUP, so when it times out or is dropped a remote command already running finishes on
//!   its own.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use refit_core::identity::HostIdentity;
use refit_core::planfile::{Action, HostKeyCheck};
use serde::{Deserialize, Serialize};

use crate::command::{OutputLine, Stream, Tails, pump};
use crate::detached::{AGENT_LOST, RESULT_NONE, agent_argv, parse_status, runner_script};
use crate::error::ERROR_TAIL_LINES;
use crate::exclusive::{RunScope, action_id};
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
    /// Where detached recipes keep their state on the node (default: `/var/lib/refit/actions`
    /// as root, else `~/.local/state/refit/actions`).
    pub action_root: Option<String>,
    /// Each node's identity as recorded when the plan was made (the readiness probe reads
    /// it). A node listed here is checked on every connection before anything runs: a host
    /// that is not the recorded one is refused ([`Error::WrongHost`]).
    pub expected: BTreeMap<String, HostIdentity>,
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
            action_root: None,
            expected: BTreeMap::new(),
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

    /// The ssh_config the master connection reads: forwarding off first (ssh keeps the first
    /// value it reads), then the user's own configuration (`configFile`, else
    /// `~/.ssh/config` and the system-wide file, as ssh would read them without `-F`).
    pub fn hardened_config(&self) -> Result<String, String> {
        let mut text = String::from(
            "# Written by refit for one connection: no agent, X11 or port forwarding to the node.\n\
             ForwardAgent no\nForwardX11 no\nForwardX11Trusted no\nClearAllForwardings yes\n",
        );
        match &self.config_file {
            Some(path) => {
                let path = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let shown = path.to_str().filter(|p| !p.contains('"') && !p.chars().any(char::is_control));
                let Some(shown) = shown else {
                    return Err(format!(
                        "the ssh config file {} cannot be included safely (quotes or control characters in its path)",
                        path.display()
                    ));
                };
                text.push_str(&format!("Include \"{shown}\"\n"));
            }
            None => text.push_str("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"),
        }
        Ok(text)
    }

    fn builder(&self, config: &std::path::Path) -> SessionBuilder {
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
        b.config_file(config);
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
    let Some(destination) = prepare(recipe, ctx)? else { return Ok(()) };
    let current = Mutex::new("connect".to_string());
    let work = async {
        let session = connect(opts, ctx, &destination).await?;
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

/// Checks the node's address and the recipe before anything connects: the destination to
/// give ssh, or `None` for an empty recipe (nothing to run).
fn prepare(recipe: &[RemoteCommand], ctx: &NodeContext) -> Result<Option<String>, Error> {
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
        return Ok(None);
    }
    Ok(Some(destination))
}

/// An open master connection to `ctx`'s node, its identity checked like the node action's,
/// for commands of refit's own (the etcd backup relayed by a control-plane node).
pub(crate) async fn open_session(opts: &SshOptions, ctx: &NodeContext) -> Result<Session, Error> {
    let destination = destination(ctx)?;
    connect(opts, ctx, &destination).await
}

/// Opens the master connection with the hardened config (written to a private temporary
/// directory that is removed once ssh has read it).
async fn connect(opts: &SshOptions, ctx: &NodeContext, destination: &str) -> Result<Session, Error> {
    let refuse = |detail: String| Error::SshConnect {
        node: ctx.node.clone(),
        destination: destination.to_string(),
        detail,
    };
    let text = opts.hardened_config().map_err(refuse)?;
    let dir = tempfile::Builder::new()
        .prefix("refit-ssh-")
        .tempdir()
        .map_err(|e| refuse(format!("writing the ssh config: {e}")))?;
    let config = dir.path().join("config");
    std::fs::write(&config, text).map_err(|e| refuse(format!("writing {}: {e}", config.display())))?;
    let session =
        opts.builder(&config).connect(destination).await.map_err(|e| refuse(explain_connect(&chain(&e))))?;
    tracing::debug!(node = %ctx.node, %destination, "ssh master connected");
    if let Some(want) = opts.expected.get(&ctx.node) {
        let wrong = |detail: String| Error::WrongHost {
            node: ctx.node.clone(),
            destination: destination.to_string(),
            detail,
        };
        let seen =
            host_identity(&session).await.map_err(|e| wrong(format!("its identity cannot be read: {e}")))?;
        if let Some(detail) = want.differs(&seen) {
            let _ = session.close().await;
            return Err(wrong(detail));
        }
    }
    Ok(session)
}

/// The identity script: host name, then machine id (POSIX sh; nothing needs root).
const IDENTITY_SCRIPT: &str = "uname -n; cat /etc/machine-id 2>/dev/null || true";

/// Reads the host's name and machine id over `session`.
async fn host_identity(session: &Session) -> Result<HostIdentity, String> {
    let tails = Tails::default();
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), IDENTITY_SCRIPT.into()];
    match remote_status(session, &argv, Some(&tails), &|_| {}).await? {
        Some(0) => {}
        code => return Err(format!("exit code {code:?}")),
    }
    let (out, _) = tails.into_vecs();
    let mut lines = out.into_iter().map(|l| l.trim().to_string());
    let hostname = lines.next().filter(|h| !h.is_empty()).ok_or("no host name")?;
    Ok(HostIdentity { hostname, machine_id: lines.next().filter(|m| !m.is_empty()) })
}

/// Runs `recipe` on the node as one detached, exclusive recipe of run `scope.run` (see the
/// module docs and [`crate::detached`]): starts it, or attaches to the copy already running or
/// finished under the same run, node and target; streams its output to `on_line`; returns its
/// recorded result. `timeout` bounds refit's wait, not the recipe: when it runs out the recipe
/// keeps running on the node and a rerun attaches to it ([`Error::RemoteStillRunning`]).
pub async fn run_ssh_detached(
    recipe: &[RemoteCommand],
    ctx: &NodeContext,
    scope: &RunScope,
    opts: &SshOptions,
    timeout: Duration,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<(), Error> {
    let Some(destination) = prepare(recipe, ctx)? else { return Ok(()) };
    let id = action_id(&scope.run, &ctx.node, &ctx.to);
    let unit = format!("refit-{id}");
    let as_root = opts.sudo && recipe.iter().any(|c| c.sudo);
    let root = opts.action_root.clone().unwrap_or_default();
    let runner = runner_script(recipe);
    let lost = |detail: String| Error::SshCommand {
        node: ctx.node.clone(),
        command: format!("the recipe runner {unit}"),
        detail,
    };
    let work = async {
        let session = connect(opts, ctx, &destination).await?;
        let tails = Tails::default();
        let start = agent_argv(as_root, "start", &id, &runner, &root);
        let code = remote_status(&session, &start, Some(&tails), on_line).await.map_err(&lost)?;
        let (text, result_code) = {
            let argv = agent_argv(as_root, "result", &id, "", &root);
            let out = Tails::default();
            let code = remote_status(&session, &argv, Some(&out), &|_| {}).await.map_err(&lost)?;
            let (stdout, _) = out.into_vecs();
            (stdout.join("\n"), code)
        };
        if let Err(e) = session.close().await {
            tracing::warn!(node = %ctx.node, "closing the ssh master connection: {}", chain(&e));
        }
        let step_command = |step: usize| recipe.get(step).map(|c| c.to_string());
        match (code, result_code) {
            (Some(0), Some(0)) => {}
            (Some(AGENT_LOST), Some(RESULT_NONE)) => {
                let step = parse_step(&text);
                return Err(Error::RemoteLost {
                    node: ctx.node.clone(),
                    unit: unit.clone(),
                    command: step.and_then(step_command),
                });
            }
            (code, _) => {
                return Err(lost(format!(
                    "it could not be started or followed (exit code {}){}",
                    code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into()),
                    tails_text(&tails.err_tail(ERROR_TAIL_LINES))
                )));
            }
        }
        let Some(status) = parse_status(&text) else {
            return Err(lost(format!("its status on the node cannot be read: {text:?}")));
        };
        if status.rc == 0 {
            return Ok(());
        }
        Err(Error::RemoteFailed {
            node: ctx.node.clone(),
            step: status.step,
            command: step_command(status.step).unwrap_or_else(|| format!("step {}", status.step)),
            code: Some(status.rc),
            stderr_tail: tails.err_tail(ERROR_TAIL_LINES),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::RemoteStillRunning { node: ctx.node.clone(), unit: unit.clone(), timeout }),
    }
}

fn parse_step(text: &str) -> Option<usize> {
    text.lines().find_map(|l| l.trim().strip_prefix("step=")).and_then(|s| s.trim().parse().ok())
}

fn tails_text(tail: &[String]) -> String {
    if tail.is_empty() { String::new() } else { format!("; last stderr lines: {}", tail.join(" / ")) }
}

/// Runs one remote argument vector, its output streamed to `on_line` and kept in `tails`;
/// returns its exit code (`None` when ssh reports none). An error is a broken connection.
async fn remote_status(
    session: &Session,
    argv: &[String],
    tails: Option<&Tails>,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<Option<i32>, String> {
    let (program, args) = argv.split_first().ok_or_else(|| "empty command".to_string())?;
    let mut remote = session.command(program.as_str());
    remote.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = remote.spawn().await.map_err(|e| chain(&e))?;
    let own = Tails::default();
    let tails = tails.unwrap_or(&own);
    let (out, err) = (child.stdout().take(), child.stderr().take());
    let (a, b) =
        tokio::join!(pump(out, Stream::Stdout, tails, on_line), pump(err, Stream::Stderr, tails, on_line));
    a.and(b).map_err(|e| format!("reading its output: {e}"))?;
    match child.wait().await {
        Ok(status) => Ok(status.code()),
        Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(127)),
        Err(openssh::Error::RemoteProcessTerminated) => match session.check().await {
            Ok(()) => Ok(Some(255)),
            Err(e) => Err(format!("the connection broke: {}", chain(&e))),
        },
        Err(e) => Err(chain(&e)),
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
    tracing::debug!(node = %ctx.node, command = %shown, "remote command");
    let tails = Tails::default();
    let code = remote_status(session, &cmd.argv(opts.sudo), Some(&tails), on_line)
        .await
        .map_err(|detail| Error::SshCommand { node: ctx.node.clone(), command: shown.clone(), detail })?;
    match code {
        Some(0) => Ok(()),
        code => Err(Error::RemoteFailed {
            node: ctx.node.clone(),
            step,
            command: shown,
            code,
            stderr_tail: tails.err_tail(ERROR_TAIL_LINES),
        }),
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
        assert_eq!(SshOptions::from_action(&Action::Exec { command: vec!["x".into()], probe: vec![] }), None);
        assert_eq!(SshOptions::default().known_hosts, HostKeyCheck::Strict);
    }
}
