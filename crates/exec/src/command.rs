//! The generic local command runner every action builds on (exec, backup commands, the
//! replace action's create/remove commands).
//!
//! Why it looks the way it does:
//! - **No shell, ever.** `argv[0]` is looked up in `PATH` and exec'd with the other elements
//!   as its arguments, so a node called `a;rm -rf /` is one harmless argument.
//! - **Own process group.** Upgrade scripts start helpers (ssh, kubectl, sleep); killing only
//!   the script would orphan them. The child leads a new process group and the *whole group*
//!   is killed on timeout, when the returned future is dropped (the engine gave up), and when
//!   the program exits leaving strays behind (anything that should outlive the action must
//!   detach itself with `setsid`, as the sandbox's own processes do).
//! - **Dies with refit, whole group included.** The process refit forks is a small *guardian*
//!   (no exec: a loop of raw system calls in the forked child, see [`guardian`]) that leads the
//!   process group and forks the program as its own child. `PR_SET_PDEATHSIG` alone would not
//!   do: the kernel sends it to the direct child only, so a script's background helpers would
//!   outlive a `kill -9` of refit and a resumed run would start the node's action next to them
//!   (issue 18 item 17: one node upgraded twice at once). The guardian gets `SIGTERM` when refit
//!   dies and then kills the whole group, itself included; the program gets `SIGKILL` if the
//!   guardian dies. The death signal fires when the *thread* that forked exits, so guardians
//!   are forked from one long-lived spawner thread (`refit_spawner`, shared with the testbed),
//!   never from a tokio worker that may retire.
//!   Processes that leave the group on purpose (`setsid`, as the sandbox's daemons do) are not
//!   the action's to kill. The guardian may also hold a lock file for the action (the exec
//!   action's per-node lock, [`crate::exec`]): the lock is free exactly when the guardian, and
//!   so the group, is gone.
//! - **Streamed output.** Lines are handed to the caller as they arrive (the live view and the
//!   journal show progress while a node upgrades), and the last lines are kept for the error.

#![allow(unsafe_code)] // pre_exec (prctl, getppid) and kill(2); each use has a SAFETY note.

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::{ERROR_TAIL_LINES, Error};

/// How many trailing lines of each stream [`CommandOutput`] keeps.
pub const KEPT_LINES: usize = 200;

/// Longest line handed out in one piece; longer runs without a newline are split, so a program
/// printing megabytes without a newline cannot make refit buffer them all.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// After the program exits (and its strays were killed), how long to wait for the last output
/// still in the pipes; a detached daemon that kept our pipe open must not hang the action.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// One line of a command's output, without its line ending; invalid UTF-8 is replaced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "stream", content = "line", rename_all = "lowercase")]
pub enum OutputLine {
    /// A line the command wrote to stdout.
    Stdout(String),
    /// A line the command wrote to stderr.
    Stderr(String),
}

impl OutputLine {
    /// The text of the line, whichever stream it came from.
    pub fn text(&self) -> &str {
        match self {
            OutputLine::Stdout(s) | OutputLine::Stderr(s) => s,
        }
    }
}

/// What a successful command left behind: the last lines of its output (the whole output went
/// through the `on_line` callback as it arrived).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The last [`KEPT_LINES`] stdout lines.
    pub stdout_tail: Vec<String>,
    /// The last [`KEPT_LINES`] stderr lines.
    pub stderr_tail: Vec<String>,
}

/// Replaces `{name}` placeholders inside each argument, in one pass (the grammar plan files
/// are validated with: `refit_core::placeholder`). Both the exec and the replace action use it.
pub use refit_core::placeholder::substitute;

/// Runs `argv` (program and arguments, no shell) with `env` added to refit's environment,
/// stdin closed, and stdout/stderr streamed line by line to `on_line`.
///
/// Succeeds when the program exits with code 0. Fails with [`Error::Failed`] (naming the
/// program, its exit code or signal, and its last stderr lines), [`Error::Timeout`] after
/// `timeout` (the whole process group is killed first), or [`Error::Spawn`]. Dropping the
/// future kills the process group as well.
pub async fn run_command(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<CommandOutput, Error> {
    run_command_holding(argv, env, timeout, None, on_line).await
}

/// [`run_command`], with `lock` (an open, locked file) held by the command's guardian until the
/// command's whole process group is gone — also when refit is killed first.
pub(crate) async fn run_command_holding(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    lock: Option<&std::fs::File>,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<CommandOutput, Error> {
    let (program, args) = argv.split_first().ok_or(Error::EmptyCommand)?;
    if program.is_empty() {
        return Err(Error::EmptyCommand);
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    let keep_fd = lock.map(std::os::fd::AsRawFd::as_raw_fd).unwrap_or(-1);
    // SAFETY: the hook runs in the forked child before exec; `guardian` uses only
    // async-signal-safe system calls and touches no memory of the parent (see its docs).
    unsafe {
        cmd.pre_exec(move || guardian(parent, keep_fd));
    }
    let mut child =
        spawn_attached(cmd).await.map_err(|source| Error::Spawn { program: program.clone(), source })?;
    let mut group = GroupGuard { pgid: child.id().map(|p| p as libc::pid_t) };
    tracing::debug!(program = %program, pid = ?group.pgid, "command started");

    let tails = Tails::default();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let mut out = std::pin::pin!(pump(stdout, Stream::Stdout, &tails, on_line));
        let mut err = std::pin::pin!(pump(stderr, Stream::Stderr, &tails, on_line));
        let (mut out_done, mut err_done) = (false, false);
        let status = loop {
            tokio::select! {
                r = &mut out, if !out_done => { out_done = true; r? }
                r = &mut err, if !err_done => { err_done = true; r? }
                s = child.wait() => break s?,
            }
        };
        // The leader is gone; whatever is left in its group is a stray.
        group.kill();
        let drain = async {
            if !out_done {
                (&mut out).await?;
            }
            if !err_done {
                (&mut err).await?;
            }
            Ok::<(), io::Error>(())
        };
        match tokio::time::timeout(DRAIN_GRACE, drain).await {
            Ok(r) => r?,
            Err(_) => {
                tracing::debug!(program = %program, "output pipe held open after exit; stopped reading")
            }
        }
        Ok::<_, io::Error>(status)
    };
    let status = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            group.kill();
            return Err(Error::Io { program: program.clone(), source });
        }
        Err(_) => {
            group.kill();
            // SIGKILL cannot be ignored; reap the leader so no zombie is left.
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Err(Error::Timeout {
                program: program.clone(),
                timeout,
                stderr_tail: tails.err_tail(ERROR_TAIL_LINES),
            });
        }
    };
    group.disarm();
    let (stdout_tail, stderr_tail) = tails.into_vecs();
    match status.code() {
        Some(0) => Ok(CommandOutput { stdout_tail, stderr_tail }),
        code => Err(Error::Failed {
            program: program.clone(),
            code,
            signal: status.signal(),
            stderr_tail: last(&stderr_tail, ERROR_TAIL_LINES),
        }),
    }
}

/// Kills the child's process group when dropped (the caller gave up) unless disarmed.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.pgid.filter(|p| *p > 1) {
            kill_group(pgid);
        }
    }
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs in the child refit forked, after std set up its stdio and process group and before
/// it would exec the program. It forks again: the new child returns `Ok` and becomes the
/// program (std execs it); this process stays behind as the *guardian* and never returns.
///
/// The guardian keeps the group alive and answerable for the action:
/// - when the program exits, it exits the same way (code, or the same signal), so refit sees
///   the program's status;
/// - when refit dies (`PR_SET_PDEATHSIG` = `SIGTERM`, or its parent pid changes), it sends
///   `SIGKILL` to the whole process group, itself included: background helpers of the program
///   die with it, instead of running on next to the resumed run's new copy of the action;
/// - it closes every inherited descriptor except stdio and `keep_fd` (the action's lock, held
///   until the guardian dies; std's exec-error pipe must not stay open here, or spawning would
///   wait forever).
///
/// Only async-signal-safe calls (sigprocmask, prctl, fork, waitpid, sigtimedwait, kill,
/// close_range/close, setrlimit, signal, _exit): the parent is multi-threaded.
fn guardian(parent: libc::pid_t, keep_fd: libc::c_int) -> io::Result<()> {
    // SAFETY: plain system calls on local values; see the function docs for why each is
    // allowed between fork and exec.
    unsafe {
        let mut watched: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut watched);
        libc::sigaddset(&mut watched, libc::SIGCHLD);
        libc::sigaddset(&mut watched, libc::SIGTERM);
        let mut before: libc::sigset_t = std::mem::zeroed();
        // Blocked first, so that neither the program's exit nor refit's death can be missed.
        if libc::sigprocmask(libc::SIG_BLOCK, &watched, &mut before) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // refit may have died between fork and prctl: nobody would send the signal then.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        let guardian = libc::getpid();
        let program = libc::fork();
        if program < 0 {
            return Err(io::Error::last_os_error());
        }
        if program == 0 {
            // The program: std execs it when this returns. It dies if its guardian does.
            libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != guardian {
                libc::_exit(1);
            }
            return Ok(());
        }
        close_inherited(keep_fd);
        let tick = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        loop {
            let mut status: libc::c_int = 0;
            if libc::waitpid(program, &mut status, libc::WNOHANG) == program {
                exit_as(status);
            }
            if libc::getppid() != parent {
                libc::kill(0, libc::SIGKILL);
                libc::_exit(137);
            }
            if libc::sigtimedwait(&watched, std::ptr::null_mut(), &tick) == libc::SIGTERM {
                libc::kill(0, libc::SIGKILL);
                libc::_exit(137);
            }
        }
    }
}

/// Closes every descriptor above stderr except `keep` (the guardian's copy of the parent's
/// descriptors: sockets, the store, other actions' locks, std's exec-error pipe).
///
/// SAFETY (caller): only between fork and exec or in a process that never returns to Rust code
/// that owns those descriptors.
unsafe fn close_inherited(keep: libc::c_int) {
    let ranges: [(libc::c_uint, libc::c_uint); 2] = if keep > 2 {
        [(3, (keep - 1) as libc::c_uint), ((keep + 1) as libc::c_uint, libc::c_uint::MAX)]
    } else {
        [(3, libc::c_uint::MAX), (1, 0)] // the second range is empty (first > last): skipped
    };
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range(2) takes plain integers; see the function docs.
        let done = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } == 0;
        if !done {
            // Kernels before 5.9: close one by one up to the descriptor limit.
            let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
            let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
                limit.rlim_cur.min(1 << 20) as libc::c_uint
            } else {
                4096
            };
            let mut fd = first;
            while fd <= last && fd < max {
                unsafe { libc::close(fd as libc::c_int) };
                fd += 1;
            }
        }
    }
}

/// Ends the guardian the way the program ended: its exit code, or the signal that killed it
/// (re-raised with its default action and no core file).
///
/// SAFETY (caller): only in the guardian (a forked child that never returns).
unsafe fn exit_as(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: setrlimit, signal, sigprocmask and kill are async-signal-safe system calls.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(sig, libc::SIG_DFL);
            let mut only: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut only);
            libc::sigaddset(&mut only, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig)
        }
    }
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 1 }) }
}

fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill(2) with a negative pid signals the process group this module created for
    // the child; it has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// The last lines of both streams, shared by the two pumps and read after a timeout too.
#[derive(Default)]
pub(crate) struct Tails {
    out: Mutex<VecDeque<String>>,
    err: Mutex<VecDeque<String>>,
}

impl Tails {
    fn push(&self, stream: Stream, line: &str) {
        let q = match stream {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        };
        let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == KEPT_LINES {
            q.pop_front();
        }
        // stderr tails only ever end up in error messages people read: a node's escape
        // sequences (clear screen, retitle, bidi reordering) must not reach the terminal.
        // stdout tails stay as written: callers parse them.
        q.push_back(match stream {
            Stream::Stderr => refit_core::identity::printable(line, false),
            Stream::Stdout => line.to_string(),
        });
    }

    /// The last `n` stderr lines.
    pub(crate) fn err_tail(&self, n: usize) -> Vec<String> {
        let q = self.err.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
    }

    pub(crate) fn into_vecs(self) -> (Vec<String>, Vec<String>) {
        let out = self.out.into_inner().unwrap_or_else(|p| p.into_inner());
        let err = self.err.into_inner().unwrap_or_else(|p| p.into_inner());
        (out.into(), err.into())
    }
}

fn last(lines: &[String], n: usize) -> Vec<String> {
    lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect()
}

/// Reads `reader` to its end, handing each line to `on_line` as it completes and keeping the
/// last ones in `tails`. Shared with the ssh action, whose remote output arrives the same way.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    stream: Stream,
    tails: &Tails,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> io::Result<()> {
    let Some(mut reader) = reader else { return Ok(()) };
    let emit = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = String::from_utf8_lossy(bytes).into_owned();
        tails.push(stream, &line);
        on_line(match stream {
            Stream::Stdout => OutputLine::Stdout(line),
            Stream::Stderr => OutputLine::Stderr(line),
        });
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            if !buf.is_empty() {
                emit(&buf);
            }
            return Ok(());
        }
        let Some(read) = chunk.get(..n) else {
            return Err(io::Error::other(format!("a read of {n} bytes into a buffer of {}", chunk.len())));
        };
        buf.extend_from_slice(read);
        // Every piece but an unfinished last one ends with a newline.
        let mut consumed = 0;
        for piece in buf.split_inclusive(|b| *b == b'\n') {
            let Some(line) = piece.strip_suffix(b"\n") else { break };
            emit(line);
            consumed += piece.len();
        }
        buf.drain(..consumed);
        while buf.len() >= MAX_LINE_BYTES {
            let rest = buf.split_off(MAX_LINE_BYTES);
            emit(&buf);
            buf = rest;
        }
    }
}

/// Forks `cmd` on `refit_spawner`'s long-lived thread (see the module docs for why) without
/// blocking this runtime's worker.
async fn spawn_attached(mut cmd: Command) -> io::Result<Child> {
    let handle = Handle::try_current().map_err(|_| io::Error::other("run_command needs a tokio runtime"))?;
    let (reply, answer) = oneshot::channel::<io::Result<Child>>();
    refit_spawner::run(Box::new(move || {
        // tokio registers the child with the runtime of the caller, so enter it here.
        let _runtime = handle.enter();
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()))
            .unwrap_or_else(|_| Err(io::Error::other("the runtime refused to spawn the process")));
        if let Err(Ok(child)) = reply.send(spawned) {
            // The caller gave up while we were forking: end what we started.
            if let Some(pid) = child.id() {
                kill_group(pid as libc::pid_t);
            }
        }
    }))
    .map_err(io::Error::other)?;
    answer.await.map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}
