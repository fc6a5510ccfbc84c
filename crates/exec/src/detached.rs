//! The node side of a detached ssh recipe, as data: two POSIX `sh` scripts and the status
//! file they leave (pure, unit-tested; run over a real sshd by `tests/ssh.rs` and on the
//! kubeadm sandbox's nodes by `cli/tests/kubeadm.rs`).
//!
//! Why detached: a remote command dies with (or outlives, unseen) the local ssh client, so a
//! `kill -9` of refit during `kubeadm upgrade apply` used to leave the resumed run unable to
//! tell a recipe still running from one that never ran, and it started the recipe again next
//! to the first (issue 18 item 5). Now the recipe runs on the node under its own name, and any
//! later call — the same run resumed — finds it.
//!
//! Layout on the node, under the action root (`/var/lib/refit/actions` as root, else
//! `${XDG_STATE_HOME:-~/.local/state}/refit/actions`; 0700), per action id
//! ([`crate::action_id`]: run, node, target):
//!
//! ```text
//! <id>/run       the runner script           <id>/lock    held by the runner while it lives
//! <id>/started   "<UTC time> <pid>"           <id>/step    the index of the command under way
//! <id>/stdout    the recipe's output          <id>/stderr
//! <id>/status    rc=N step=K started=T ended=T   (written last, by rename: the result)
//! <id>.N/        an earlier failed or interrupted attempt, kept for inspection
//! node.lock      held by whichever runner is executing: one recipe at a time per node
//! ```
//!
//! The **agent** ([`AGENT`], run through ssh as `sh -c AGENT refit-action MODE ID [RUNNER]`):
//! - `start` decides under `<id>.start`'s lock: a runner holding `<id>/lock` → attach; a
//!   successful status → take it; a failed status, or a runner gone without a status (the node
//!   rebooted) → keep that attempt as `<id>.N` and start again (kubeadm's steps may be
//!   repeated, and that is what an operator's rerun after a failure asks for); nothing yet →
//!   start. Starting is `systemd-run --unit=refit-<id>` when systemd is PID 1
//!   (`/run/systemd/system` exists) and the agent runs as root, else `setsid nohup`; either
//!   way the recipe keeps the session's `PATH`. Then it follows the two output files
//!   (byte offsets, so nothing is lost or repeated) until the status appears (exit 0) or the
//!   runner is gone without one (exit 3).
//! - `result` prints the status file (exit 0), or the step under way (exit 4).
//!
//! The **runner** ([`runner_script`]) takes `<id>/lock`, returns at once if another runner
//! already claimed the id (so two launches run the recipe once), writes `started`, waits for
//! `node.lock`, then runs the commands in order with their output appended to the files and
//! the lock descriptors closed (a daemon a command starts must not hold them), stops at the
//! first failure, and writes the status.

use crate::ssh::RemoteCommand;

/// The agent script (see the module docs). `$1` mode, `$2` action id, `$3` the runner script
/// (`start` only), `$4` the action root (empty: the default for the remote user).
pub const AGENT: &str = r#"set -u
umask 077
mode=$1 unit=$2
case $unit in ''|*/*|.*) echo "refit: bad action id '$unit'" >&2; exit 64;; esac
root=${4:-}
if [ -z "$root" ]; then
  if [ "$(id -u)" = 0 ]; then root=/var/lib/refit/actions
  else root=${XDG_STATE_HOME:-$HOME/.local/state}/refit/actions; fi
fi
d=$root/$unit
mkdir -p "$root" || exit 70
command -v flock >/dev/null 2>&1 || { echo "refit: flock(1) (util-linux) is missing on this node; the ssh action needs it" >&2; exit 69; }
state() {
  [ -d "$d" ] || { echo new; return; }
  if [ -f "$d/started" ] && ! flock -n "$d/lock" true; then echo running; return; fi
  if [ -f "$d/status" ]; then
    if [ "$(sed -n 's/^rc=//p' "$d/status")" = 0 ]; then echo ok; else echo failed; fi
    return
  fi
  if [ -f "$d/started" ]; then echo lost; else echo new; fi
}
launch() {
  mkdir -p "$d" && printf '%s\n' "$3" > "$d/run" || return 70
  if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ] && command -v systemd-run >/dev/null 2>&1; then
    systemd-run --quiet --collect --unit="refit-$unit" --description="refit node action $unit" \
      --setenv=PATH="$PATH" /bin/sh "$d/run" "$d" 8>&- || return 71
  else
    setsid nohup /bin/sh "$d/run" "$d" </dev/null >/dev/null 2>&1 8>&- &
  fi
  i=0
  while [ ! -f "$d/started" ] && [ ! -f "$d/status" ]; do
    i=$((i+1))
    [ "$i" -gt 300 ] && { echo "refit: the recipe runner did not start on this node (see $d)" >&2; return 72; }
    sleep 0.1 2>/dev/null || sleep 1
  done
}
size() { n=$(wc -c 2>/dev/null < "$1") || n=0; echo $((n+0)); }
follow() {
  o=0 e=0
  while :; do
    if [ -f "$d/status" ]; then end=1
    elif [ -f "$d/started" ] && flock -n "$d/lock" true && [ ! -f "$d/status" ]; then end=3
    else end=0; fi
    n=$(size "$d/stdout")
    if [ "$n" -gt "$o" ]; then tail -c +$((o+1)) "$d/stdout" | head -c $((n-o)); o=$n; fi
    n=$(size "$d/stderr")
    if [ "$n" -gt "$e" ]; then tail -c +$((e+1)) "$d/stderr" | head -c $((n-e)) >&2; e=$n; fi
    [ "$end" = 1 ] && exit 0
    [ "$end" = 3 ] && exit 3
    sleep 1
  done
}
case $mode in
start)
  exec 8>>"$root/$unit.start"
  flock -x 8 || exit 70
  s=$(state)
  case $s in failed|lost)
    n=1; while [ -e "$d.$n" ]; do n=$((n+1)); done
    mv "$d" "$d.$n" || exit 70
    echo "refit: an earlier attempt of this recipe ($s) is kept in $d.$n; starting it again" >&2
    s=new;;
  esac
  case $s in
    new) launch "$@" || exit $?;;
    running) echo "refit: attached to this recipe, running on the node since $(cut -d' ' -f1 "$d/started")" >&2;;
    ok) echo "refit: this recipe already finished on the node; taking its recorded result" >&2;;
  esac
  exec 8>&-
  follow;;
result)
  if [ -f "$d/status" ]; then cat "$d/status"; exit 0; fi
  [ -f "$d/step" ] && echo "step=$(cat "$d/step")"
  exit 4;;
*) echo "refit: unknown mode '$mode'" >&2; exit 64;;
esac
"#;

/// The agent exits with this when the runner is gone without a result.
pub const AGENT_LOST: i32 = 3;

/// `result` exits with this when there is no status (only the step under way).
pub const RESULT_NONE: i32 = 4;

/// Single quotes for POSIX sh: the text arrives as exactly one word, whatever it holds.
pub fn sh_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The runner script for `recipe` (see the module docs). Commands run as the runner's user
/// (the agent is started through `sudo -n` when any command needs root), without the
/// per-command sudo of the attached path.
pub fn runner_script(recipe: &[RemoteCommand]) -> String {
    let mut s = String::from(
        r#"d=$1
exec 9>>"$d/lock" || exit 70
flock -x 9 || exit 70
[ -f "$d/started" ] && exit 0
: >>"$d/stdout"; : >>"$d/stderr"
printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" >"$d/started.tmp" && mv "$d/started.tmp" "$d/started"
exec 7>>"${d%/*}/node.lock" || exit 70
if ! flock -n 7; then echo "refit: another refit recipe is running on this node; waiting for it to end" >>"$d/stderr"; flock -x 7; fi
end() {
  printf 'rc=%s\nstep=%s\nstarted=%s\nended=%s\n' "$1" "$2" "$(cut -d' ' -f1 "$d/started")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$d/status.tmp"
  mv "$d/status.tmp" "$d/status"
  exit "$1"
}
"#,
    );
    for (step, cmd) in recipe.iter().enumerate() {
        let line: Vec<String> = cmd.argv(false).iter().map(|a| sh_quote(a)).collect();
        s.push_str(&format!(
            "echo {step} >\"$d/step\"; {} </dev/null >>\"$d/stdout\" 2>>\"$d/stderr\" 7>&- 9>&- || end $? {step}\n",
            line.join(" ")
        ));
    }
    s.push_str(&format!("end 0 {}\n", recipe.len()));
    s
}

/// What a finished recipe recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The exit code of the command that failed, 0 when all succeeded.
    pub rc: i32,
    /// The index of the command that failed (the recipe's length when all succeeded).
    pub step: usize,
    /// When the runner started and ended (UTC, as the node's clock says).
    pub started: String,
    /// See `started`.
    pub ended: String,
}

/// Reads `result`'s output: the status file's `key=value` lines. `None` when `rc` or `step`
/// is missing or not a number (a file refit did not write).
pub fn parse_status(text: &str) -> Option<Status> {
    let get =
        |key: &str| text.lines().find_map(|l| l.trim().strip_prefix(key).and_then(|r| r.strip_prefix('=')));
    Some(Status {
        rc: get("rc")?.trim().parse().ok()?,
        step: get("step")?.trim().parse().ok()?,
        started: get("started").unwrap_or_default().to_string(),
        ended: get("ended").unwrap_or_default().to_string(),
    })
}

/// The argument vector that runs the agent on the node: `[sudo -n --] sh -c AGENT refit-action
/// MODE ID RUNNER ROOT` (sent escaped, each element one argument).
pub fn agent_argv(as_root: bool, mode: &str, id: &str, runner: &str, root: &str) -> Vec<String> {
    let mut argv = Vec::new();
    if as_root {
        argv.extend(["sudo", "-n", "--"].map(String::from));
    }
    argv.extend(["sh", "-c", AGENT, "refit-action", mode, id, runner, root].map(String::from));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_runs_each_command_quoted_in_order_and_records_where_it_stopped() {
        let recipe = vec![
            RemoteCommand::root("apt-get", ["install", "-y", "kubeadm=1.37.1-*"])
                .with_env("DEBIAN_FRONTEND", "noninteractive"),
            RemoteCommand::user("echo", ["it's $(not) run", ""]),
        ];
        let s = runner_script(&recipe);
        assert!(
            s.contains(
                "echo 0 >\"$d/step\"; 'env' 'DEBIAN_FRONTEND=noninteractive' 'apt-get' 'install' '-y' 'kubeadm=1.37.1-*' </dev/null >>\"$d/stdout\" 2>>\"$d/stderr\" 7>&- 9>&- || end $? 0\n"
            ),
            "{s}"
        );
        assert!(s.contains(r#"'echo' 'it'\''s $(not) run' '' </dev/null"#), "{s}");
        assert!(s.ends_with("end 0 2\n"), "{s}");
        // No sudo inside: the agent runs as root as a whole.
        assert!(!s.contains("sudo"), "{s}");
        // Claimed once: a second runner of the same id leaves at once.
        assert!(s.contains("[ -f \"$d/started\" ] && exit 0"));
    }

    #[test]
    fn the_agent_starts_with_systemd_run_when_systemd_is_pid_1_else_setsid() {
        // Branch selection as written: the systemd check comes first and names the unit.
        let systemd = AGENT
            .find("[ -d /run/systemd/system ] && [ \"$(id -u)\" = 0 ] && command -v systemd-run")
            .unwrap();
        let unit = AGENT.find("systemd-run --quiet --collect --unit=\"refit-$unit\"").unwrap();
        let fallback = AGENT.find("setsid nohup /bin/sh \"$d/run\" \"$d\" </dev/null").unwrap();
        assert!(systemd < unit && unit < fallback);
        // The start lock is not inherited by the runner either way.
        assert_eq!(AGENT.matches("\"$d\" 8>&-").count(), 1);
        assert!(AGENT.contains("</dev/null >/dev/null 2>&1 8>&- &"));
    }

    #[test]
    fn agent_argv_runs_sh_with_the_script_as_one_argument() {
        let argv = agent_argv(true, "start", "r-n-1.37.1", "RUNNER", "");
        assert_eq!(argv[..5], ["sudo", "-n", "--", "sh", "-c"]);
        assert_eq!(argv[5], AGENT);
        assert_eq!(argv[6..], ["refit-action", "start", "r-n-1.37.1", "RUNNER", ""]);
        assert_eq!(agent_argv(false, "result", "x", "", "/tmp/a")[0], "sh");
    }

    #[test]
    fn status_files_parse_and_foreign_ones_do_not() {
        let s = parse_status("rc=100\nstep=2\nstarted=2026-11-20T10:00:00Z\nended=2026-11-20T10:00:09Z\n")
            .unwrap();
        assert_eq!((s.rc, s.step), (100, 2));
        assert_eq!(s.ended, "2026-11-20T10:00:09Z");
        assert_eq!(parse_status("rc=0\nstep=12\n").unwrap().step, 12);
        assert_eq!(parse_status("step=3\n"), None);
        assert_eq!(parse_status("rc=x\nstep=1\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn quoting_keeps_every_argument_one_word() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
