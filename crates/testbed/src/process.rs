//! Child processes of a testbed: started in their own process group, stopped as a group.
//!
//! Two lifetimes exist. An *attached* testbed (tests) must never outlive the process that
//! started it, even after a panic with `panic=abort`, a `kill -9`, or a test harness that exits
//! without running destructors: its children are spawned from one long-lived spawner thread
//! with `PR_SET_PDEATHSIG=SIGKILL`, so the kernel kills them when this process dies. (The
//! death signal fires when the *thread* that forked exits, which is why spawning happens on
//! `refit_spawner`'s thread, which lives as long as the process, and not on whatever tokio
//! worker asked.)
//! A *detached* testbed (the sandbox) must outlive the CLI that started it: its children get
//! a new session and are found again later by PID from the saved state.

#![allow(unsafe_code)] // pre_exec hooks (prctl, setsid) and kill(2); each use has a SAFETY note.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Whether a testbed's processes die with the process that started them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifetime {
    /// Killed when the starting process exits or is killed (tests).
    Attached,
    /// Keeps running until stopped explicitly (the sandbox).
    Detached,
}

/// A running (or once running) child process.
#[derive(Debug)]
pub struct Proc {
    /// Short name used in logs and errors (e.g. `kube-apiserver-0`).
    pub name: String,
    /// Process id; also the process group id (each child leads its own group).
    pub pid: i32,
    /// The handle, when this process started it (lets us reap it and avoid zombies).
    child: Option<Child>,
}

impl Proc {
    /// Starts `program` with `args`, output appended to `log`, in its own process group.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        lifetime: Lifetime,
    ) -> Result<Proc, Error> {
        let out = File::options().create(true).append(true).open(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = match lifetime {
            Lifetime::Attached => {
                // SAFETY: the hook runs in the forked child before exec and calls only
                // async-signal-safe functions (setpgid, prctl, getppid, _exit).
                let parent = std::process::id() as libc::pid_t;
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setpgid(0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The parent may have died between fork and prctl: then nobody will
                        // ever send the death signal, so leave now.
                        if libc::getppid() != parent {
                            libc::_exit(1);
                        }
                        Ok(())
                    });
                }
                let (tx, rx) = mpsc::channel();
                let gone =
                    |e: &dyn std::fmt::Display| Error::Process { name: name.into(), detail: e.to_string() };
                refit_spawner::run(Box::new(move || {
                    let _ = tx.send(cmd.spawn());
                }))
                .map_err(|e| gone(&e))?;
                rx.recv().map_err(|_| gone(&refit_spawner::Unavailable))?
            }
            Lifetime::Detached => {
                // SAFETY: setsid is async-signal-safe; it makes the child a session and group
                // leader so a closing terminal does not take it down.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::setsid() < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                cmd.spawn()
            }
        }
        .map_err(|e| Error::Process {
            name: name.into(),
            detail: format!("cannot start {}: {e}", program.display()),
        })?;
        Ok(Proc { name: name.to_string(), pid: child.id() as i32, child: Some(child) })
    }

    /// A process known only by pid (a detached testbed attached to again later).
    pub fn adopt(name: &str, pid: i32) -> Proc {
        Proc { name: name.to_string(), pid, child: None }
    }

    /// Whether the process is still running (zombies count as exited).
    pub fn is_running(&mut self) -> bool {
        if let Some(child) = self.child.as_mut() {
            return matches!(child.try_wait(), Ok(None));
        }
        pid_alive(self.pid)
    }

    /// SIGTERM to the whole group, then SIGKILL after `grace`; waits until the leader exited.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            self.kill_group(libc::SIGKILL); // stragglers of an exited leader, if any
            return;
        }
        self.kill_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.kill_group(libc::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill_group(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill_group(&self, sig: libc::c_int) {
        if self.pid <= 1 {
            return;
        }
        // SAFETY: kill(2) with a negative pid signals the process group we created for this
        // child; it has no memory-safety preconditions.
        unsafe {
            libc::kill(-self.pid, sig);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only processes we started and own are stopped on drop; adopted ones (a sandbox
        // attached to by a short-lived CLI) are left running on purpose.
        if self.child.is_some() {
            self.stop(Duration::from_secs(5));
        }
    }
}

impl Proc {
    /// Forget the handle without stopping the process (used when a detached testbed is handed
    /// over to its state file).
    pub fn release(mut self) -> i32 {
        let pid = self.pid;
        self.child = None;
        pid
    }
}

/// SIGKILL to one process (not its group).
pub fn kill_pid(pid: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on one positive pid with a constant signal; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Whether `pid` names a live, non-zombie process.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; 'Z' (zombie) and 'X' (dead) are not running.
        Ok(stat) => match stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) {
            Some("Z") | Some("X") => false,
            Some(_) => true,
            None => false,
        },
        Err(_) => false,
    }
}

/// Whether any process is left in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(-pgid, 0) };
    if r != 0 {
        return false;
    }
    // kill(2) also succeeds for zombies; look for a live member.
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).any(
                |pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
                        let fields: Vec<&str> = rest.split_whitespace().collect();
                        let [state, _ppid, pgrp, ..] = fields.as_slice() else { return false };
                        *pgrp == pgid.to_string() && *state != "Z" && *state != "X"
                    })
                },
            )
        })
        .unwrap_or(false)
}

/// Picks `n` distinct free TCP ports on 127.0.0.1 (bound and released; callers retry on the
/// rare race with another process).
///
/// The ports come from below the kernel's ephemeral range (`ip_local_port_range`), never from
/// it: a testbed picks its ports seconds to minutes before the component listens on them, and
/// an ephemeral port is what every outgoing connection on the machine takes meanwhile (CI lost a
/// run to kwok finding its port taken by a client connection). Below the range only another
/// listener can take a port, and a random choice makes two testbeds picking the same one rare.
pub fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let (low, _) = ephemeral_range();
    // 10000.. leaves the well-known and registered low ports alone; fall back to the kernel's
    // choice when the ephemeral range starts too low to leave room.
    let pool = 10_000u16..low;
    if pool.len() < n.saturating_mul(64) {
        return kernel_ports(n);
    }
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut attempts = 0usize;
    while listeners.len() < n {
        attempts += 1;
        if attempts > n.saturating_mul(200) {
            return kernel_ports(n);
        }
        let span = u64::from(pool.end - pool.start);
        let port = pool.start + u16::try_from(random_u64() % span).unwrap_or(0);
        if listeners.iter().any(|l| l.local_addr().is_ok_and(|a| a.port() == port)) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Process { name: "ports".into(), detail: e.to_string() })
}

/// Ports the kernel picks (from the ephemeral range).
fn kernel_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Process { name: "ports".into(), detail: e.to_string() })?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Process { name: "ports".into(), detail: e.to_string() })
}

/// The kernel's ephemeral port range (Linux's default when unreadable).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// A random number from std's per-process random hash keys: enough to spread port choices, no
/// extra dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_children_are_stopped_with_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        // A shell that starts a grandchild: stopping the group must take both.
        let mut p = Proc::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "sleep 300 & wait".into()],
            &[],
            &log,
            Lifetime::Attached,
        )
        .unwrap();
        assert!(p.is_running());
        std::thread::sleep(Duration::from_millis(100));
        assert!(group_alive(p.pid));
        p.stop(Duration::from_secs(2));
        assert!(!p.is_running());
        assert!(!group_alive(p.pid), "the grandchild must be gone too");
    }

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        let ports = free_ports(8).unwrap();
        if low >= 10_512 {
            assert!(ports.iter().all(|p| *p < low || *p > high), "{ports:?} within {low}-{high}");
        }
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
    }
}
