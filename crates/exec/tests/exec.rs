//! The local runner and the exec action with real processes: small shell scripts written to a
//! temporary directory (the script being a shell is the test's choice; refit itself never
//! puts anything through a shell).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use refit_exec::{Error, NodeContext, OutputLine, RunScope, run_command, run_exec, run_exec_exclusive};
use support::Lines;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ctx(node: &str) -> NodeContext {
    NodeContext {
        node: node.into(),
        roles: vec!["etcd".into(), "control-plane".into()],
        from: "1.36.4".into(),
        to: "1.37.1".into(),
        phase: "control-plane".into(),
        address: "10.0.0.7".into(),
        first_control_plane: true,
    }
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Waits (up to a generous bound, not a timing assertion) for `pid` to be gone.
async fn gone(pid: i32) -> bool {
    for _ in 0..200 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn read_pid(path: &Path) -> i32 {
    for _ in 0..400 {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} was never written", path.display());
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn output_streams_line_by_line_and_tails_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "talk.sh",
        "echo one; echo oops >&2; printf 'crlf\\r\\n'; printf 'bad \\377 byte\\n'; printf 'no newline at end'",
    );
    let lines = Lines::default();
    let out = run_command(&argv(&[s.to_str().unwrap()]), &[], LONG, &lines.cb()).await.unwrap();
    let got = lines.take();
    let stdout: Vec<&str> =
        got.iter().filter(|l| matches!(l, OutputLine::Stdout(_))).map(|l| l.text()).collect();
    assert_eq!(stdout, ["one", "crlf", "bad \u{FFFD} byte", "no newline at end"]);
    assert!(got.contains(&OutputLine::Stderr("oops".into())));
    assert_eq!(out.stdout_tail, stdout);
    assert_eq!(out.stderr_tail, ["oops"]);
}

#[tokio::test]
async fn a_line_without_end_is_split_rather_than_buffered_whole() {
    let dir = tempfile::tempdir().unwrap();
    // 200 KiB without a newline.
    let s = script(dir.path(), "flood.sh", "head -c 204800 /dev/zero | tr '\\0' x");
    let lines = Lines::default();
    run_command(&argv(&[s.to_str().unwrap()]), &[], LONG, &lines.cb()).await.unwrap();
    let got = lines.take();
    assert!(got.len() >= 4, "{} pieces", got.len());
    assert!(got.iter().all(|l| l.text().len() <= refit_exec::command::MAX_LINE_BYTES));
    assert_eq!(got.iter().map(|l| l.text().len()).sum::<usize>(), 204800);
}

#[tokio::test]
async fn non_zero_exit_names_program_code_and_last_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "fail.sh", "echo step one; echo 'disk full' >&2; exit 3");
    let err = run_command(&argv(&[s.to_str().unwrap()]), &[], LONG, &|_| {}).await.unwrap_err();
    match &err {
        Error::Failed { program, code, stderr_tail, .. } => {
            assert!(program.ends_with("fail.sh"));
            assert_eq!(*code, Some(3));
            assert_eq!(stderr_tail, &["disk full"]);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("fail.sh") && text.contains("exited with code 3") && text.contains("disk full"),
        "{text}"
    );

    let missing =
        run_command(&argv(&["/nonexistent/refit-no-such-program"]), &[], LONG, &|_| {}).await.unwrap_err();
    assert!(matches!(missing, Error::Spawn { .. }), "{missing:?}");
    assert!(missing.to_string().contains("refit-no-such-program"));
    assert!(matches!(run_command(&[], &[], LONG, &|_| {}).await, Err(Error::EmptyCommand)));
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let s = script(
        dir.path(),
        "hang.sh",
        &format!("sleep 300 & echo $! > {}; echo started; echo waiting >&2; wait", pidfile.display()),
    );
    let err =
        run_command(&argv(&[s.to_str().unwrap()]), &[], Duration::from_secs(2), &|_| {}).await.unwrap_err();
    match &err {
        Error::Timeout { program, stderr_tail, .. } => {
            assert!(program.ends_with("hang.sh"));
            assert_eq!(stderr_tail, &["waiting"]);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let grandchild = read_pid(&pidfile).await;
    assert!(gone(grandchild).await, "grandchild {grandchild} survived the timeout");
}

#[tokio::test]
async fn dropping_the_future_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let s = script(dir.path(), "hang.sh", &format!("sleep 300 & echo $$ $! > {}; wait", pidfile.display()));
    let args = argv(&[s.to_str().unwrap()]);
    let run = run_command(&args, &[], LONG, &|_| {});
    let pids = tokio::select! {
        r = run => panic!("the command ended on its own: {r:?}"),
        pids = async {
            for _ in 0..400 {
                if let Ok(s) = std::fs::read_to_string(&pidfile) && s.ends_with('\n') {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the script never wrote its pids");
        } => pids,
    };
    // Leaving select! dropped the run_command future.
    for pid in pids.split_whitespace().map(|p| p.parse::<i32>().unwrap()) {
        assert!(gone(pid).await, "process {pid} survived the dropped future");
    }
}

#[tokio::test]
async fn strays_left_after_a_successful_exit_are_ended_and_do_not_hang_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("stray.pid");
    // The stray keeps the stdout pipe open: without the group kill the read would never end.
    let s =
        script(dir.path(), "leave.sh", &format!("sleep 300 & echo $! > {}; echo done", pidfile.display()));
    let lines = Lines::default();
    run_command(&argv(&[s.to_str().unwrap()]), &[], LONG, &lines.cb()).await.unwrap();
    assert!(lines.take().contains(&OutputLine::Stdout("done".into())));
    let stray = read_pid(&pidfile).await;
    assert!(gone(stray).await, "stray {stray} outlived the action");
}

#[tokio::test]
async fn exec_substitutes_whole_arguments_and_sets_refit_env() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let pwned = dir.path().join("pwned");
    let s = script(
        dir.path(),
        "record.sh",
        &format!(
            "for a in \"$@\"; do printf 'arg<%s>\\n' \"$a\"; done > {r}\n\
             env | grep -E '^REFIT_(NODE|ROLE|FROM|TO|PHASE|ADDRESS|FIRST_CONTROL_PLANE)=' | sort >> {r}",
            r = record.display()
        ),
    );
    let node = format!("a;rm -rf / $(touch {p}) `touch {p}` x y {{to}}", p = pwned.display());
    let command = argv(&[
        s.to_str().unwrap(),
        "{node}",
        "--to={to}",
        "{role}",
        "{from}",
        "{phase}",
        "{address}",
        "{unknown}",
        "plain",
    ]);
    run_exec(&command, &ctx(&node), LONG, &|_| {}).await.unwrap();
    let got = std::fs::read_to_string(&record).unwrap();
    let expected = format!(
        "arg<{node}>\narg<--to=1.37.1>\narg<etcd,control-plane>\narg<1.36.4>\narg<control-plane>\n\
         arg<10.0.0.7>\narg<{{unknown}}>\narg<plain>\n\
         REFIT_ADDRESS=10.0.0.7\nREFIT_FIRST_CONTROL_PLANE=true\nREFIT_FROM=1.36.4\n\
         REFIT_NODE={node}\nREFIT_PHASE=control-plane\nREFIT_ROLE=etcd,control-plane\nREFIT_TO=1.37.1\n"
    );
    assert_eq!(got, expected);
    assert!(!pwned.exists(), "a node name was interpreted by a shell");
}

#[tokio::test]
async fn exec_failure_is_reported_with_the_substituted_program() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "upgrade.sh", "echo \"cannot upgrade $1\" >&2; exit 42");
    let err =
        run_exec(&argv(&[s.to_str().unwrap(), "{node}"]), &ctx("worker-7"), LONG, &|_| {}).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("upgrade.sh") && text.contains("42") && text.contains("cannot upgrade worker-7"),
        "{text}"
    );
}

/// Run only by `refit_kill_9_leaves_no_child` below, in a child test process that it then
/// kills with SIGKILL: starts a long command and waits forever.
#[tokio::test]
#[ignore = "helper: run by refit_kill_9_leaves_no_child in a process it kills"]
async fn helper_hold_a_long_command() {
    let Ok(pidfile) = std::env::var("REFIT_EXEC_TEST_PIDFILE") else {
        panic!("REFIT_EXEC_TEST_PIDFILE not set: this helper only runs under refit_kill_9_leaves_no_child");
    };
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "long.sh",
        &format!("echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 300"),
    );
    let _ = run_command(&argv(&[s.to_str().unwrap()]), &[], Duration::from_secs(600), &|_| {}).await;
}

#[tokio::test]
async fn refit_kill_9_leaves_no_child() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_hold_a_long_command", "--ignored", "--test-threads=1"])
        .env("REFIT_EXEC_TEST_PIDFILE", &pidfile)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = read_pid(&pidfile).await;
    assert!(alive(child));
    helper.kill().unwrap(); // SIGKILL: no destructor, no drop, no chance to clean up
    helper.wait().unwrap();
    assert!(gone(child).await, "command {child} outlived the kill -9 of the process that ran it");
}

/// The action of the exclusivity tests: forks a background helper that writes `start`, works
/// for `REFIT_TEST_WORK` seconds, then writes `end` (each with its pid and a timestamp) to
/// `markers`; the script itself waits for it.
fn forking_action(dir: &Path) -> Vec<String> {
    let markers = dir.join("markers");
    let s = script(
        dir,
        "forks.sh",
        &format!(
            "( echo \"start $(sh -c 'echo $PPID') $(date +%s.%N)\" >> {m}; sleep \"$REFIT_TEST_WORK\"; \
             echo \"end $(sh -c 'echo $PPID') $(date +%s.%N)\" >> {m} ) &\n\
             echo $! > {dir}/helper.pid\nwait",
            m = markers.display(),
            dir = dir.display()
        ),
    );
    argv(&[s.to_str().unwrap()])
}

/// `(kind, pid, seconds)` of every marker line.
fn markers(dir: &Path) -> Vec<(String, i32, f64)> {
    std::fs::read_to_string(dir.join("markers"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

/// Run only by `an_exec_action_under_way_dies_with_refit_and_the_rerun_runs_it_once_alone`,
/// in a child test process that it kills with SIGKILL: refit running one node's action.
#[tokio::test]
#[ignore = "helper: run by an_exec_action_under_way_dies_with_refit_and_the_rerun_runs_it_once_alone"]
async fn helper_run_an_exclusive_action() {
    let Ok(dir) = std::env::var("REFIT_EXEC_TEST_DIR") else {
        panic!(
            "REFIT_EXEC_TEST_DIR not set: this helper only runs under an_exec_action_under_way_dies_with_refit_and_the_rerun_runs_it_once_alone"
        );
    };
    let dir = PathBuf::from(dir);
    let scope = RunScope { run: "up-test".into(), lock_dir: dir.join("locks"), env: Vec::new() };
    let _ = run_exec_exclusive(&forking_action(&dir), &ctx("worker-001"), &scope, LONG, &|_| {}).await;
}

/// Issue 18 item 17: refit killed (kill -9) while a node's exec action had forked a helper of
/// its own. Before, the helper survived and the relaunch ran the node's action again next to
/// it (two overlapping upgrades of worker-001). Now the helper dies with refit, and the
/// relaunch (same run) runs the action once more, alone.
#[tokio::test]
async fn an_exec_action_under_way_dies_with_refit_and_the_rerun_runs_it_once_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut refit = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_run_an_exclusive_action", "--ignored", "--test-threads=1"])
        .env("REFIT_EXEC_TEST_DIR", dir.path())
        .env("REFIT_TEST_WORK", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let helper = read_pid(&dir.path().join("helper.pid")).await;
    for _ in 0..200 {
        if !markers(dir.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    refit.kill().unwrap(); // SIGKILL: no destructor runs in refit
    refit.wait().unwrap();
    assert!(gone(helper).await, "the action's helper {helper} outlived the kill -9 of refit");

    // The relaunch: same run, same node.
    let scope = RunScope { run: "up-test".into(), lock_dir: dir.path().join("locks"), env: Vec::new() };
    let lines = Lines::default();
    let mut action = forking_action(dir.path());
    action.splice(0..0, ["env".to_string(), "REFIT_TEST_WORK=1".to_string()]);
    run_exec_exclusive(&action, &ctx("worker-001"), &scope, LONG, &lines.cb()).await.unwrap();
    // Wait out the first copy's work time too: had it survived, its `end` would be written.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = markers(dir.path());
    let kinds: Vec<&str> = m.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["start", "start", "end"], "{m:?}");
    let (first, second) = (m[0].1, m[1].1);
    assert_ne!(first, second, "{m:?}");
    assert_eq!(m[2].1, second, "only the relaunched copy completes: {m:?}");
    assert!(m[1].2 >= m[0].2, "{m:?}");
}

#[tokio::test]
async fn two_copies_of_one_nodes_action_in_one_run_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let scope = RunScope { run: "up-test".into(), lock_dir: dir.path().join("locks"), env: Vec::new() };
    let mut action = forking_action(dir.path());
    action.splice(0..0, ["env".to_string(), "REFIT_TEST_WORK=1".to_string()]);
    let (a, b) = (Lines::default(), Lines::default());
    let (a_cb, b_cb) = (a.cb(), b.cb());
    let node = ctx("worker-001");
    let (ra, rb) = tokio::join!(run_exec_exclusive(&action, &node, &scope, LONG, &a_cb), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_exec_exclusive(&action, &node, &scope, LONG, &b_cb).await
    });
    ra.unwrap();
    rb.unwrap();
    let m = markers(dir.path());
    let kinds: Vec<&str> = m.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["start", "end", "start", "end"],
        "the second copy started before the first ended: {m:?}"
    );
    assert!(
        b.take().iter().any(|l| l.text().contains("still running; waiting for it to end")),
        "the waiting copy says why it waits"
    );
    // Another node of the same run is not held back.
    let other = Lines::default();
    let lock = dir.path().join("locks");
    assert!(std::fs::metadata(&lock).unwrap().permissions().mode() & 0o077 == 0, "lock dir is private");
    run_exec_exclusive(&argv(&["true"]), &ctx("worker-002"), &scope, Duration::from_secs(5), &other.cb())
        .await
        .unwrap();
    assert!(other.take().is_empty());
}
