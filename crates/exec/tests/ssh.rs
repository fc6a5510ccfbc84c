//! The ssh action against a REAL sshd on loopback: throwaway host and user keys, a written
//! known_hosts, strict host key checking. The package tools of the kubeadm recipe are logging
//! stand-ins placed first in the remote PATH (sshd's `SetEnv`); the transport, the escaping,
//! sudo's argument handling and the ordering are all real.
//!
//! Needs `/usr/sbin/sshd` (Debian `openssh-server`) and `ssh`/`ssh-keygen` (`openssh-client`);
//! `.ci/run` installs both. Without them these tests fail, saying so.

mod support;

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use refit_exec::{
    Error, HostKeyCheck, NodeContext, OutputLine, PackageManager, RemoteCommand, RunScope, SshOptions,
    kubeadm_recipe, run_ssh, run_ssh_detached,
};
use support::Lines;

const SSHD: &str = "/usr/sbin/sshd";
const LONG: Duration = Duration::from_secs(120);

fn need_tools() {
    if !Path::new(SSHD).exists() {
        panic!(
            "{SSHD} is missing: install Debian's openssh-server (apt-get install openssh-server); .ci/run does"
        );
    }
    for tool in ["ssh", "ssh-keygen"] {
        let found = Command::new(tool).arg("-V").stderr(Stdio::null()).stdout(Stdio::null()).status().is_ok()
            || Command::new("which").arg(tool).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        if !found {
            panic!("{tool} is missing: install Debian's openssh-client (apt-get install openssh-client)");
        }
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "refit-test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen failed for {}", path.display());
}

fn write_exe(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A running sshd for one test, killed (by pid) on drop.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    user: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn start() -> Sshd {
        need_tools();
        let dir = tempfile::Builder::new().prefix("rx").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        keygen(&d.join("other_host_key"));
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        let fakebin = d.join("bin");
        std::fs::create_dir(&fakebin).unwrap();
        let log = d.join("calls.log");
        // Every stand-in records its name and arguments, one `<arg>` each, then succeeds.
        let recorder = format!(
            "#!/bin/sh\n{{ printf '%s' \"$(basename \"$0\")\"; for a in \"$@\"; do printf ' <%s>' \"$a\"; done; echo; }} >> {}\n",
            log.display()
        );
        for tool in ["kubeadm", "apt-get", "apt-mark", "dnf", "systemctl", "record"] {
            write_exe(&fakebin.join(tool), &recorder);
        }
        // The login shell's own start-up files use sed too: only the recipe's `sed -i` is
        // recorded, everything else goes to the real one.
        let real_sed = ["/usr/bin/sed", "/bin/sed"].into_iter().find(|p| Path::new(p).exists()).unwrap();
        write_exe(
            &fakebin.join("sed"),
            &recorder.replacen(
                "#!/bin/sh\n",
                &format!("#!/bin/sh\n[ \"$1\" = -i ] || exec {real_sed} \"$@\"\n"),
                1,
            ),
        );
        // sudo stand-in: records, then runs what follows `-n --` (as real sudo would).
        write_exe(
            &fakebin.join("sudo"),
            &format!(
                "{recorder}[ \"$1\" = -n ] || exit 90\nshift\n[ \"$1\" = -- ] || exit 91\nshift\nexec \"$@\"\n"
            ),
        );
        write_exe(&fakebin.join("complain"), "#!/bin/sh\necho \"$*\" >&2\n");
        // Runs until its output goes nowhere: ends by itself once the ssh channel is closed, so
        // the timeout test leaves nothing behind on the "node" (a remote command is not killed
        // by ssh; see the ssh module's docs).
        write_exe(&fakebin.join("tick"), "#!/bin/sh\nwhile echo tick; do sleep 1; done\n");
        if is_root() {
            // sshd started by root needs its privilege separation directory.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let cfg = d.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\nMaxSessions 20\n\
                     SetEnv PATH={bin}:/usr/local/bin:/usr/bin:/bin\nLogLevel VERBOSE\n",
                    d = d.display(),
                    bin = fakebin.display()
                ),
            )
            .unwrap();
            let err = std::fs::File::create(d.join("sshd.log")).unwrap();
            let mut child =
                Command::new(SSHD).args(["-D", "-e", "-f"]).arg(&cfg).stderr(err).spawn().unwrap();
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { dir, port, child, user };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start: {}", std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default());
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A known_hosts file naming this server with `key` (a `.pub` file in the temp dir).
    fn known_hosts(&self, key: &str) -> PathBuf {
        let pubkey = std::fs::read_to_string(self.path(key)).unwrap();
        let mut parts = pubkey.split_whitespace();
        let line = format!("[127.0.0.1]:{} {} {}\n", self.port, parts.next().unwrap(), parts.next().unwrap());
        let path = self.path(&format!("known_hosts_{key}"));
        std::fs::write(&path, line).unwrap();
        path
    }

    fn options(&self, known_hosts: PathBuf) -> SshOptions {
        // An ssh_config of our own: the machine's ~/.ssh/config and agent stay out of it.
        let config = self.path("ssh_config");
        std::fs::write(&config, "GlobalKnownHostsFile /dev/null\nIdentityAgent none\n").unwrap();
        SshOptions {
            user: Some(self.user.clone()),
            port: Some(self.port),
            identity_file: Some(self.path("user_key")),
            config_file: Some(config),
            known_hosts: HostKeyCheck::Strict,
            known_hosts_file: Some(known_hosts),
            sudo: false,
            connect_timeout: Duration::from_secs(20),
            control_dir: Some(self.dir.path().to_path_buf()),
            action_root: Some(self.path("actions").display().to_string()),
            expected: Default::default(),
        }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("calls.log")).unwrap_or_default()
    }
}

fn is_root() -> bool {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap().trim() == "0"
}

fn ctx(node: &str, roles: &[&str], first: bool) -> NodeContext {
    NodeContext {
        node: node.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        from: "1.36.4".into(),
        to: "1.37.1".into(),
        phase: "workers".into(),
        address: "127.0.0.1".into(),
        first_control_plane: first,
    }
}

fn cmd(program: &str, args: &[&str]) -> RemoteCommand {
    RemoteCommand::user(program, args.iter().copied())
}

#[tokio::test]
async fn commands_run_in_order_and_their_output_streams() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let recipe = [
        cmd("record", &["one"]),
        cmd("echo", &["first"]),
        cmd("complain", &["on", "stderr"]),
        cmd("record", &["two"]),
        cmd("echo", &["last"]),
    ];
    let lines = Lines::default();
    run_ssh(&recipe, &ctx("node-a", &["worker"], false), &opts, LONG, &lines.cb()).await.unwrap();
    assert_eq!(
        lines.take(),
        [
            OutputLine::Stdout("first".into()),
            OutputLine::Stderr("on stderr".into()),
            OutputLine::Stdout("last".into())
        ]
    );
    assert_eq!(sshd.calls(), "record <one>\nrecord <two>\n");
}

#[tokio::test]
async fn hostile_arguments_arrive_literally() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let pwned = sshd.path("pwned");
    let sub = format!("$(touch {})", pwned.display());
    let tick = format!("`touch {}`", pwned.display());
    let semi = format!("x; touch {}", pwned.display());
    let hostile: Vec<&str> = vec![
        "a b",
        "it's",
        "\"double\"",
        &sub,
        &tick,
        &semi,
        "*",
        "$HOME",
        "back\\slash",
        "new\nline",
        "",
        "--",
        "{node}",
        "&& touch nothing |",
    ];
    let recipe = [cmd("record", &hostile)];
    run_ssh(&recipe, &ctx("node-a", &["worker"], false), &opts, LONG, &|_| {}).await.unwrap();
    let expected: String = std::iter::once("record".to_string())
        .chain(hostile.iter().map(|a| format!(" <{a}>")))
        .collect::<String>()
        + "\n";
    assert_eq!(sshd.calls(), expected);
    assert!(!pwned.exists(), "an argument was interpreted by the remote shell");
}

#[tokio::test]
async fn an_unknown_or_changed_host_key_is_refused_under_strict() {
    let sshd = Sshd::start();
    let recipe = [cmd("record", &["must-not-run"])];
    // Changed: known_hosts holds another key for this host.
    let opts = sshd.options(sshd.known_hosts("other_host_key.pub"));
    let err = run_ssh(&recipe, &ctx("node-a", &["worker"], false), &opts, LONG, &|_| {}).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::SshConnect { .. }), "{err:?}");
    assert!(text.contains("node-a") && text.contains("host key has CHANGED"), "{text}");
    // Unknown: an empty known_hosts.
    let empty = sshd.path("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let err =
        run_ssh(&recipe, &ctx("node-a", &["worker"], false), &sshd.options(empty.clone()), LONG, &|_| {})
            .await
            .unwrap_err();
    assert!(matches!(err, Error::SshConnect { .. }), "{err:?}");
    assert!(err.to_string().contains("strict"), "{err}");
    assert_eq!(sshd.calls(), "", "a command ran although the host key was refused");
    // AcceptNew adds an unknown host on first contact ...
    let mut accept = sshd.options(empty.clone());
    accept.known_hosts = HostKeyCheck::AcceptNew;
    run_ssh(&recipe, &ctx("node-a", &["worker"], false), &accept, LONG, &|_| {}).await.unwrap();
    assert!(std::fs::read_to_string(&empty).unwrap().contains("ssh-ed25519"));
    // ... but still refuses a changed key.
    let mut changed = sshd.options(sshd.known_hosts("other_host_key.pub"));
    changed.known_hosts = HostKeyCheck::AcceptNew;
    assert!(run_ssh(&recipe, &ctx("node-a", &["worker"], false), &changed, LONG, &|_| {}).await.is_err());
    assert_eq!(sshd.calls(), "record <must-not-run>\n");
}

#[tokio::test]
async fn a_failing_command_stops_the_sequence_and_is_named() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let recipe =
        [cmd("record", &["before"]), cmd("ls", &["/nonexistent/refit-dir"]), cmd("record", &["after"])];
    let err = run_ssh(&recipe, &ctx("node-b", &["worker"], false), &opts, LONG, &|_| {}).await.unwrap_err();
    match &err {
        Error::RemoteFailed { node, command, code, stderr_tail, .. } => {
            assert_eq!(node, "node-b");
            assert_eq!(command, "ls /nonexistent/refit-dir");
            assert_eq!(*code, Some(2));
            assert!(stderr_tail.iter().any(|l| l.contains("refit-dir")), "{stderr_tail:?}");
        }
        other => panic!("expected RemoteFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("node-b") && err.to_string().contains("ls /nonexistent/refit-dir"));
    assert_eq!(sshd.calls(), "record <before>\n");
    // A program that does not exist on the node is reported the same way.
    let err =
        run_ssh(&[cmd("refit-no-such-tool", &[])], &ctx("node-b", &["worker"], false), &opts, LONG, &|_| {})
            .await
            .unwrap_err();
    assert!(matches!(err, Error::RemoteFailed { code: Some(127), .. }), "{err:?}");
}

#[tokio::test]
async fn the_action_times_out_naming_the_running_command() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let recipe = [cmd("record", &["first"]), cmd("tick", &[]), cmd("record", &["never"])];
    let err = run_ssh(&recipe, &ctx("node-c", &["worker"], false), &opts, Duration::from_secs(5), &|_| {})
        .await
        .unwrap_err();
    match &err {
        Error::RemoteTimeout { node, command, .. } => {
            assert_eq!(node, "node-c");
            assert_eq!(command, "tick");
        }
        other => panic!("expected RemoteTimeout, got {other:?}"),
    }
    assert_eq!(sshd.calls(), "record <first>\n");
}

/// What the logging stand-ins record for `recipe` when sent with `sudo`: the sudo call (when
/// the command needs root), then the tool itself.
fn expected_calls(recipe: &[RemoteCommand], sudo: bool) -> String {
    let line = |argv: &[String]| -> String {
        let name = argv[0].as_str();
        std::iter::once(name.to_string())
            .chain(argv[1..].iter().map(|a| format!(" <{a}>")))
            .collect::<String>()
            + "\n"
    };
    let mut out = String::new();
    for c in recipe {
        let argv = c.argv(sudo);
        if argv[0] == "sudo" {
            out.push_str(&line(&argv));
        }
        let mut plain = vec![c.program.clone()];
        plain.extend(c.args.iter().cloned());
        out.push_str(&line(&plain));
    }
    out
}

#[tokio::test]
async fn the_kubeadm_recipe_runs_over_ssh_exactly_as_written() {
    let sshd = Sshd::start();
    let known = sshd.known_hosts("host_key.pub");
    for (node, pkg, sudo) in [
        (ctx("cp-1", &["etcd", "control-plane"], true), PackageManager::Apt, true),
        (ctx("cp-2", &["control-plane"], false), PackageManager::Dnf, true),
        (ctx("w-1", &["worker"], false), PackageManager::Apt, false),
    ] {
        std::fs::write(sshd.path("calls.log"), "").unwrap();
        let recipe = kubeadm_recipe(&node, pkg).unwrap();
        let mut opts = sshd.options(known.clone());
        opts.sudo = sudo;
        run_ssh(&recipe, &node, &opts, LONG, &|_| {}).await.unwrap();
        let calls = sshd.calls();
        assert_eq!(calls, expected_calls(&recipe, sudo), "{} ({pkg:?}, sudo {sudo})", node.node);
        // The recorded sequence is a real upgrade order: kubeadm before kubelet, restart last.
        // (apt's simulated install of all three, before anything changes, is not the install.)
        let lines: Vec<&str> = calls.lines().collect();
        let kubeadm_upgrade = lines.iter().position(|l| l.contains("kubeadm <upgrade>")).unwrap();
        let kubelet_install = lines
            .iter()
            .position(|l| (l.contains("<kubelet=") || l.contains("<kubelet-")) && !l.contains("<--simulate>"))
            .unwrap();
        assert!(kubeadm_upgrade < kubelet_install);
        assert!(calls.trim_end().ends_with("systemctl <restart> <kubelet>"));
    }
}

fn scope(run: &str) -> RunScope {
    RunScope {
        run: run.into(),
        lock_dir: std::env::temp_dir().join("refit-test-unused-locks"),
        env: Vec::new(),
    }
}

/// Issue 18 item 5: the ssh client dies mid-recipe (refit killed, or its time ran out); the
/// recipe goes on on the node; the next call of the same run attaches, streams the output and
/// returns the recipe's result — and the recipe ran once.
#[tokio::test]
async fn a_detached_recipe_outlives_its_client_and_the_rerun_attaches_instead_of_starting_it_again() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let node = ctx("node-d", &["worker"], false);
    let recipe = [
        cmd("record", &["one"]),
        cmd("sh", &["-c", "echo halfway; sleep 4; echo done; echo warned >&2"]),
        cmd("record", &["two"]),
    ];
    // The first client gives up (is dropped) while the recipe sleeps.
    let first = Lines::default();
    let err = run_ssh_detached(&recipe, &node, &scope("run-1"), &opts, Duration::from_secs(2), &first.cb())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RemoteStillRunning { .. }), "{err:?}");
    assert!(err.to_string().contains("refit-run-1-node-d-1.37.1"), "{err}");
    assert!(first.take().contains(&OutputLine::Stdout("halfway".into())));
    assert_eq!(sshd.calls(), "record <one>\n", "the recipe is under way on the node");

    // The rerun attaches: the whole output once more, the result, and nothing run twice.
    let second = Lines::default();
    run_ssh_detached(&recipe, &node, &scope("run-1"), &opts, LONG, &second.cb()).await.unwrap();
    let lines = second.take();
    assert!(lines.iter().any(|l| l.text().contains("attached to this recipe")), "{lines:?}");
    for want in [
        OutputLine::Stdout("halfway".into()),
        OutputLine::Stdout("done".into()),
        OutputLine::Stderr("warned".into()),
    ] {
        assert_eq!(lines.iter().filter(|l| **l == want).count(), 1, "{want:?} in {lines:?}");
    }
    assert_eq!(sshd.calls(), "record <one>\nrecord <two>\n");

    // Once finished, a further call takes the recorded result without running anything.
    let third = Lines::default();
    run_ssh_detached(&recipe, &node, &scope("run-1"), &opts, LONG, &third.cb()).await.unwrap();
    assert!(third.take().iter().any(|l| l.text().contains("already finished")));
    assert_eq!(sshd.calls(), "record <one>\nrecord <two>\n");
    let status = std::fs::read_to_string(sshd.path("actions/run-1-node-d-1.37.1/status")).unwrap();
    assert!(status.starts_with("rc=0\nstep=3\n"), "{status}");

    // Another run is another recipe: it runs again.
    run_ssh_detached(&recipe, &node, &scope("run-2"), &opts, LONG, &|_| {}).await.unwrap();
    assert_eq!(sshd.calls(), "record <one>\nrecord <two>\nrecord <one>\nrecord <two>\n");
    let mode = std::fs::metadata(sshd.path("actions")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the action root is private: {mode:o}");
}

#[tokio::test]
async fn a_failed_detached_recipe_names_its_step_and_a_rerun_starts_it_afresh() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let node = ctx("node-e", &["worker"], false);
    let recipe =
        [cmd("record", &["before"]), cmd("ls", &["/nonexistent/refit-dir"]), cmd("record", &["after"])];
    let err = run_ssh_detached(&recipe, &node, &scope("run-f"), &opts, LONG, &|_| {}).await.unwrap_err();
    match &err {
        Error::RemoteFailed { node, step, command, code, stderr_tail } => {
            assert_eq!((node.as_str(), *step, command.as_str()), ("node-e", 1, "ls /nonexistent/refit-dir"));
            assert_eq!(*code, Some(2));
            assert!(stderr_tail.iter().any(|l| l.contains("refit-dir")), "{stderr_tail:?}");
        }
        other => panic!("expected RemoteFailed, got {other:?}"),
    }
    assert_eq!(err.stopped_at_step(), Some(1));
    assert_eq!(sshd.calls(), "record <before>\n");
    // The operator fixes the node and reruns: a new attempt, the failed one kept.
    let lines = Lines::default();
    let fixed = [cmd("record", &["before"]), cmd("true", &[]), cmd("record", &["after"])];
    run_ssh_detached(&fixed, &node, &scope("run-f"), &opts, LONG, &lines.cb()).await.unwrap();
    assert!(lines.take().iter().any(|l| l.text().contains("kept in")));
    assert_eq!(sshd.calls(), "record <before>\nrecord <before>\nrecord <after>\n");
    assert!(sshd.path("actions/run-f-node-e-1.37.1.1/status").exists());
}

#[tokio::test]
async fn two_recipes_on_one_node_run_one_after_the_other() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let log = sshd.path("order.log");
    let step = |tag: &str| {
        cmd(
            "sh",
            &["-c", &format!("echo {tag}-in >> {l}; sleep 1; echo {tag}-out >> {l}", l = log.display())],
        )
    };
    let (a, b) = ([step("a")], [step("b")]);
    let node = ctx("node-f", &["worker"], false);
    let (run_a, run_b) = (scope("run-a"), scope("run-b"));
    let (ra, rb) = tokio::join!(
        run_ssh_detached(&a, &node, &run_a, &opts, LONG, &|_| {}),
        run_ssh_detached(&b, &node, &run_b, &opts, LONG, &|_| {}),
    );
    ra.unwrap();
    rb.unwrap();
    let order = std::fs::read_to_string(&log).unwrap();
    assert!(
        order == "a-in\na-out\nb-in\nb-out\n" || order == "b-in\nb-out\na-in\na-out\n",
        "two recipes overlapped on one node: {order:?}"
    );
}

/// Agent and X11 forwarding stay off whatever the user's config says: ssh itself, asked for
/// the options it would use (`ssh -G`) with the config refit writes.
#[test]
fn the_master_connection_never_forwards_an_agent_x11_or_ports() {
    need_tools();
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("user_config");
    std::fs::write(
        &user,
        "Host *\n  ForwardAgent yes\n  ForwardX11 yes\n  LocalForward 9999 localhost:22\n  User someone\n",
    )
    .unwrap();
    let opts = SshOptions { config_file: Some(user), ..SshOptions::default() };
    let config = dir.path().join("config");
    std::fs::write(&config, opts.hardened_config().unwrap()).unwrap();
    let out = Command::new("ssh").arg("-G").arg("-F").arg(&config).arg("node-x").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective = String::from_utf8_lossy(&out.stdout).to_lowercase();
    for want in ["forwardagent no", "forwardx11 no", "clearallforwardings yes", "user someone"] {
        assert!(effective.lines().any(|l| l == want), "{want} missing from:\n{effective}");
    }
    assert!(!effective.contains("localforward"), "{effective}");
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    /// `size_kib` big, with `fill_kib` of it written.
    fn mount(size_kib: u64, fill_kib: u64) -> SmallFs {
        assert!(is_root(), "mounting a small tmpfs needs root (CI runs as root): run this test as root");
        let dir = tempfile::Builder::new().prefix("refit-full").tempdir_in("/tmp").unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        std::fs::write(dir.path().join("ballast"), vec![7u8; (fill_kib * 1024) as usize]).unwrap();
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Kismatic's readiness checks over the node's own transport: the real `df` of a nearly full
/// filesystem and the real package database, read through a real sshd, decided by core.
#[tokio::test]
async fn the_readiness_probe_names_a_nearly_full_filesystem_and_a_missing_package() {
    use refit_core::readiness::{DEFAULT_MIN_FREE_BYTES, Requirements, WRITTEN_PATHS, findings};
    use refit_exec::probe::probe_readiness;
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let full = SmallFs::mount(8192, 7168);
    let mount = full.0.path().display().to_string();
    let mut paths: Vec<&str> = WRITTEN_PATHS.to_vec();
    paths.push(&mount);
    let node = ctx("node-a", &["worker"], false);
    let seen =
        probe_readiness(&opts, &node, &paths, &["kubeadm", "refit-no-such-package"], LONG).await.unwrap();
    assert!(!seen.hostname.is_empty());
    let small =
        seen.filesystems.iter().find(|fs| fs.mount == mount).expect("the tmpfs is its own filesystem");
    assert_eq!(small.paths, std::slice::from_ref(&mount));
    assert_eq!(small.size, 8 << 20);
    assert!(small.available <= 1 << 20, "{small:?}");
    assert!(seen.filesystems.iter().all(|fs| fs.paths.iter().all(|p| paths.contains(&p.as_str()))));
    assert_eq!(seen.packages["refit-no-such-package"], None);

    // 4 MiB wanted: only the tmpfs is short (the machine's own disks have more).
    let req = Requirements { min_free: 4 << 20, preinstalled: Some("1.37.1".parse().unwrap()) };
    let f = findings("node-a", Ok(&seen), &req);
    let disk: Vec<&str> =
        f.iter().filter(|f| f.check == "node-disk-space").map(|f| f.message.as_str()).collect();
    assert_eq!(disk.len(), 1, "{disk:?}");
    assert!(disk[0].starts_with(&format!("{mount} (holding {mount}) has ")), "{}", disk[0]);
    assert!(disk[0].contains("MiB free of 8 MiB") && disk[0].contains("needs 4 MiB"), "{}", disk[0]);
    let pkg: Vec<&str> =
        f.iter().filter(|f| f.check == "node-package-missing").map(|f| f.message.as_str()).collect();
    assert!(pkg.iter().any(|m| m.contains("refit-no-such-package is not installed")), "{pkg:?}");
    assert!(f.iter().all(|f| f.subject == "node/node-a"));
    // The default threshold is what `--help` states.
    assert_eq!(DEFAULT_MIN_FREE_BYTES, 2 << 30);

    // A node that cannot be reached is not ready, and says why.
    let dead = SshOptions { port: Some(1), connect_timeout: Duration::from_secs(5), ..opts.clone() };
    let why = probe_readiness(&dead, &node, &paths, &[], LONG).await.unwrap_err();
    let f = findings("node-a", Err(&why), &req);
    assert_eq!(f[0].check, "node-readiness-unknown");
}

/// The ssh action checks it reached the host the plan recorded before running anything: the
/// identity the readiness probe read passes, another one is refused with nothing run — for the
/// plain and the detached recipe alike.
#[tokio::test]
async fn a_host_that_is_not_the_recorded_one_runs_nothing() {
    use refit_core::identity::HostIdentity;
    let sshd = Sshd::start();
    let mut opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let node = ctx("node-a", &["worker"], false);
    let seen = refit_exec::probe::probe_readiness(&opts, &node, &["/"], &[], LONG).await.unwrap();
    let recorded = HostIdentity { hostname: seen.hostname.clone(), machine_id: seen.machine_id.clone() };
    opts.expected.insert("node-a".into(), recorded.clone());
    run_ssh(&[cmd("record", &["same-host"])], &node, &opts, LONG, &|_| {}).await.unwrap();
    assert_eq!(sshd.calls(), "record <same-host>\n");

    let elsewhere = HostIdentity { hostname: "node-b".into(), machine_id: Some("0000feed".into()) };
    opts.expected.insert("node-a".into(), elsewhere);
    let e = run_ssh(&[cmd("record", &["wrong-host"])], &node, &opts, LONG, &|_| {}).await.unwrap_err();
    assert!(matches!(e, Error::WrongHost { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("node node-a") && text.contains("nothing was run"), "{text}");
    let e = run_ssh_detached(&[cmd("record", &["wrong-host"])], &node, &scope("r1"), &opts, LONG, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongHost { .. }), "{e:?}");
    assert_eq!(sshd.calls(), "record <same-host>\n", "nothing ran on the wrong host");
    // Another node's recorded identity does not concern this one.
    opts.expected = [("node-b".to_string(), recorded)].into();
    run_ssh(&[cmd("record", &["unlisted"])], &node, &opts, LONG, &|_| {}).await.unwrap();
}

/// Control characters a node writes to stderr never reach an error message.
#[tokio::test]
async fn a_nodes_escape_sequences_are_stripped_from_error_tails() {
    let sshd = Sshd::start();
    let opts = sshd.options(sshd.known_hosts("host_key.pub"));
    let e = run_ssh(
        &[cmd("sh", &["-c", "printf 'bad \\033]0;pwned\\007\\033[2J thing\\n' >&2; exit 4"])],
        &ctx("node-a", &["worker"], false),
        &opts,
        LONG,
        &|_| {},
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("bad ?]0;pwned??[2J thing"), "{text:?}");
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
}
