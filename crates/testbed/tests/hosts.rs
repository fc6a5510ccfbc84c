//! Kubeadm-shaped sandbox nodes as small hosts, with everything real: network namespaces, a
//! bridge, overlay mounts, sshd and ssh. These tests need root and openssh-server; without them
//! they fail with the fix in the message (they never skip).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use refit_testbed::kubeadm::host::{Hosts, HostsState, Network, NodeHost, SshFiles, check_prerequisites};
use refit_testbed::{Error, Lifetime};

/// Fails (never skips) on a machine that cannot host nodes, with the fix in the message.
fn require_prerequisites() {
    if let Err(e) = check_prerequisites() {
        panic!("this test needs a machine that can host sandbox nodes: {e}");
    }
}

fn new_hosts(dir: &Path) -> Hosts {
    require_prerequisites();
    Hosts::create(dir, Lifetime::Attached).unwrap()
}

/// A fresh network with one node (its sshd up) in a temporary directory.
fn one_node(name: &str) -> (tempfile::TempDir, Hosts, NodeHost) {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = new_hosts(dir.path());
    let node = hosts.add_node(name).unwrap().clone();
    (dir, hosts, node)
}

fn ssh(files: &SshFiles, extra: &[&str], destination: &str, command: &str) -> Output {
    Command::new("ssh")
        .arg("-F")
        .arg(&files.config_file)
        .args(extra)
        .arg(destination)
        .arg(command)
        .output()
        .expect("run ssh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Mount table lines of this process that mention `dir`.
fn mounts_mentioning(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir))
        .map(String::from)
        .collect()
}

/// Live processes whose network namespace is the one bound on `netns` (a file in /run/netns).
fn processes_in(netns: &Path) -> Vec<(i32, String)> {
    let ns = std::fs::metadata(netns).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
        })
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, text(&cmd).replace('\0', " ").trim().to_string())
        })
        // An empty command line is a process already exiting (a zombie): nothing that could
        // survive, and `alive_with(pid, "")` would match whatever reuses its pid (seen once).
        .filter(|(_, cmd)| !cmd.is_empty())
        .collect()
}

fn alive_with(pid: i32, cmdline: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| text(&c).replace('\0', " ").contains(cmdline))
}

/// A listener inside the node that answers every connection with the node's name. perl-base
/// is Essential in Debian, so every node has it without installing anything.
const ECHO_NAME: &str = r#"use IO::Socket::INET; $| = 1;
my $s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $ARGV[1], Listen => 16, ReuseAddr => 1)
  or die "listen on $ARGV[1]: $!\n";
print "listening\n";
while (my $c = $s->accept) { print $c "$ARGV[0]\n"; close $c; }"#;

/// Connects from inside `from` to `address:port` and prints the first line it receives.
const CONNECT: &str = r#"exec 3<>"/dev/tcp/$1/$2" && read -r line <&3 && echo "$line""#;

fn wait_listening(address: std::net::Ipv4Addr, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect((address, port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}:{port} after 15s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_nodes_are_separate_hosts_reachable_by_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = new_hosts(dir.path());
    let a = hosts.add_node("node-a").unwrap().clone();
    let b = hosts.add_node("node-b").unwrap().clone();
    let files = hosts.ssh().clone();
    assert_ne!(a.address, b.address);

    // Each answers ssh with its own hostname, by address (what the plan file names) and by name.
    for node in [&a, &b] {
        for destination in [node.address.to_string(), node.name.clone()] {
            let out = ssh(&files, &[], &destination, "hostname");
            assert!(out.status.success(), "ssh {destination}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout).trim(), node.name);
        }
    }
    // The operator key is 0600 and the operator's own ~/.ssh is not involved.
    let mode = std::fs::metadata(&files.identity_file).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Fresh machine ids, different from each other and from the host's.
    let id_a = text(&a.read_file("/etc/machine-id").unwrap());
    let id_b = text(&b.read_file("/etc/machine-id").unwrap());
    assert_eq!(id_a.trim().len(), 32, "{id_a:?}");
    assert_ne!(id_a, id_b);
    if let Ok(host_id) = std::fs::read_to_string("/etc/machine-id") {
        assert_ne!(host_id, id_a);
    }
    assert_eq!(text(&a.read_file("/etc/hostname").unwrap()).trim(), "node-a");
    assert!(text(&a.read_file("/etc/hosts").unwrap()).contains(&format!("{}\tnode-a", a.address)));

    // Files written into node A's /etc and /usr/local/bin stay in node A.
    a.write_file("/etc/refit-probe", b"from node-a\n", 0o644).unwrap();
    a.write_file("/usr/local/bin/refit-probe", b"#!/bin/sh\necho probe on $(hostname)\n", 0o755).unwrap();
    let out = ssh(&files, &[], &a.address.to_string(), "cat /etc/refit-probe; refit-probe");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from node-a\nprobe on node-a\n");
    for path in ["/etc/refit-probe", "/usr/local/bin/refit-probe"] {
        let err = b.read_file(path).unwrap_err();
        assert!(is_not_found(&err), "{path} on node-b: {err}");
        assert!(!Path::new(path).exists(), "{path} leaked to the host");
    }
    let out = ssh(&files, &[], &b.address.to_string(), "test ! -e /etc/refit-probe");
    assert!(out.status.success(), "node-b sees node-a's file over ssh");

    // Both listen on 6443 at once, each reaches the other and the gateway.
    let mut listeners = Vec::new();
    for node in [&a, &b] {
        let log = dir.path().join(format!("listen-{}.log", node.name));
        listeners.push(
            node.spawn(
                &format!("listen-{}", node.name),
                "perl",
                &["-e".into(), ECHO_NAME.into(), node.name.clone(), "6443".into()],
                &[],
                &log,
                Lifetime::Attached,
            )
            .unwrap(),
        );
    }
    for node in [&a, &b] {
        wait_listening(node.address, 6443);
    }
    for p in &mut listeners {
        assert!(p.is_running(), "{} exited: both nodes must be able to hold port 6443", p.name);
    }
    for (from, to) in [(&a, &b), (&b, &a)] {
        let out = from.run("bash", ["-c", CONNECT, "bash", &to.address.to_string(), "6443"]);
        let out = out.unwrap_or_else(|e| {
            panic!(
                "{} cannot reach {}:6443 ({e}); if the host filters bridged traffic (br_netfilter \
                 with a FORWARD DROP policy), allow the sandbox bridge",
                from.name, to.address
            )
        });
        assert_eq!(text(&out.stdout).trim(), to.name);
    }
    let gateway = TcpListener::bind((a.gateway, 0)).unwrap();
    let port = gateway.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, peer) = gateway.accept().unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        (peer.ip(), line)
    });
    a.run(
        "bash",
        [
            "-c",
            r#"exec 3<>"/dev/tcp/$1/$2" && echo hello from $(hostname) >&3"#,
            "bash",
            &a.gateway.to_string(),
            &port.to_string(),
        ],
    )
    .unwrap();
    let (peer, line) = server.join().unwrap();
    assert_eq!(peer, a.address);
    assert_eq!(line, "hello from node-a\n");

    // The node sees only its own interfaces: lo and eth0 with its address.
    let out = a.run("ip", ["-4", "-o", "addr", "show"]).unwrap();
    let addrs = text(&out.stdout);
    assert!(addrs.contains(&format!("eth0    inet {}/24", a.address)), "{addrs}");
    assert_eq!(addrs.lines().count(), 2, "{addrs}");
    hosts.destroy().unwrap();
}

#[test]
fn apt_in_a_node_sees_none_of_the_hosts_sources() {
    let (_dir, mut hosts, node) = one_node("apt-node");
    let host_sources: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();

    assert!(is_not_found(&node.read_file("/etc/apt/sources.list").unwrap_err()));
    let out = node.run("find", ["/etc/apt/sources.list.d", "-mindepth", "1"]).unwrap();
    assert_eq!(text(&out.stdout), "", "sources left in the node");
    let update = node.run("apt-get", ["update"]).unwrap();
    let said = text(&update.stdout) + &text(&update.stderr);
    assert!(!said.contains("http"), "apt-get update fetched something: {said}");
    let policy = node.run("apt-cache", ["policy"]).unwrap();
    let policy = text(&policy.stdout);
    assert!(!policy.contains("http") && !policy.contains("debian.org"), "{policy}");
    // The host keeps its sources.
    for source in &host_sources {
        assert!(source.exists(), "{} vanished from the host", source.display());
    }
    hosts.destroy().unwrap();
}

#[test]
fn host_keys_are_checked_strictly_and_only_the_operator_key_logs_in() {
    let (dir, mut hosts, node) = one_node("strict");
    let files = hosts.ssh().clone();
    let address = node.address.to_string();

    let ok = ssh(&files, &[], &address, "true");
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    // A control master, as refit's ssh action (the openssh crate) opens one: `-M` on the
    // command line wins over the file's `ControlMaster no`.
    let ctl = dir.path().join("ctl");
    let ctl_arg = ctl.to_str().unwrap();
    let master = Command::new("ssh")
        .arg("-F")
        .arg(&files.config_file)
        .args(["-M", "-S", ctl_arg, "-f", "-N", "-o", "ControlPersist=yes", &address])
        .output()
        .unwrap();
    assert!(master.status.success(), "{}", text(&master.stderr));
    let out = ssh(&files, &["-S", ctl_arg], &address, "hostname");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "strict");
    let out = ssh(&files, &["-S", ctl_arg, "-O", "exit"], &address, "");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // An empty known_hosts: refused, not accepted-and-added.
    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let option = format!("UserKnownHostsFile={}", empty.display());
    let out = ssh(&files, &["-o", &option], &address, "true");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Host key verification failed"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "", "ssh must not add the key");

    // Another key for the address: refused.
    let other = dir.path().join("other");
    let keygen =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status();
    assert!(keygen.unwrap().success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let wrong = dir.path().join("wrong_known_hosts");
    let key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(&wrong, format!("{address} {}\n", key.join(" "))).unwrap();
    let option = format!("UserKnownHostsFile={}", wrong.display());
    let out = ssh(&files, &["-o", &option], &address, "true");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Host key verification failed"), "{}", text(&out.stderr));

    // A key that is not the operator's: refused (no password fallback either).
    let known = format!("UserKnownHostsFile={}", files.known_hosts_file.display());
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o"])
        .arg(&known)
        .args(["-o", "StrictHostKeyChecking=yes", "-i"])
        .arg(&other)
        .arg(format!("root@{address}"))
        .arg("true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Permission denied (publickey)"), "{}", text(&out.stderr));
    hosts.destroy().unwrap();
}

#[test]
fn destroy_leaves_nothing_and_works_twice_and_from_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut hosts = new_hosts(dir.path());
    let network_time = started.elapsed();
    let started = Instant::now();
    let node = hosts.add_node("doomed").unwrap().clone();
    let node_time = started.elapsed();
    let files = hosts.ssh().clone();
    let bridge = hosts.network().bridge.clone();

    // Processes inside: a detached one we started, a double-forked one, one left by ssh.
    let mut detached = node
        .spawn("sleeper", "sleep", &["1001".into()], &[], &dir.path().join("sleep.log"), Lifetime::Detached)
        .unwrap();
    node.run("sh", ["-c", "(setsid sleep 1002 >/dev/null 2>&1 &) ; exit 0"]).unwrap();
    let out =
        ssh(&files, &[], &node.address.to_string(), "nohup setsid sleep 1003 >/dev/null 2>&1 < /dev/null &");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    let inside = loop {
        let inside = processes_in(&node.netns_path());
        if ["sleep 1001", "sleep 1002", "sleep 1003"]
            .iter()
            .all(|s| inside.iter().any(|(_, c)| c.contains(s)))
        {
            break inside;
        }
        assert!(Instant::now() < deadline, "sleepers not all started: {inside:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(inside.iter().any(|(_, c)| c.contains("sshd")), "{inside:?}");
    assert!(!mounts_mentioning(&node.dir).is_empty());

    // A new handle from the saved state does the teardown.
    let saved = serde_json::to_string(hosts.state()).unwrap();
    let restored: HostsState = serde_json::from_str(&saved).unwrap();
    assert_eq!(&restored, hosts.state());
    let started = Instant::now();
    Hosts::attach(restored.clone()).destroy().unwrap();
    let destroy_time = started.elapsed();

    for (pid, cmd) in &inside {
        assert!(!alive_with(*pid, cmd), "{pid} ({cmd}) survived destroy");
    }
    assert!(!detached.is_running());
    assert_eq!(mounts_mentioning(dir.path()), Vec::<String>::new());
    assert!(!node.netns_path().exists());
    for link in [&bridge, &node.veth] {
        assert!(!Path::new("/sys/class/net").join(link).exists(), "{link} left behind");
    }
    assert!(!node.dir.join("ns").exists() && !node.dir.join("overlay").exists());
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!text(&out.stdout).contains(&node.netns), "{}", text(&out.stdout));

    // Again, from both handles; then the guard's own drop is a third time.
    Hosts::attach(restored).destroy().unwrap();
    hosts.destroy().unwrap();
    drop(hosts);
    eprintln!(
        "timings: network {network_time:?}; one node (netns + mounts + sshd answering) {node_time:?}; \
         destroy (1 node with 4 processes + network) {destroy_time:?}"
    );
}

#[test]
fn destroy_finishes_a_teardown_that_crashed_half_way() {
    require_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let network = Network::create(&Network::unused_id().unwrap()).unwrap();
    let mut guard = Guard(Vec::new(), Some(network.clone()));
    let node = NodeHost::create(&network, &dir.path().join("half"), "half", 3).unwrap();
    guard.0.push(node.clone());
    assert_eq!(node.address, network.node_address(3).unwrap());
    // Another node may not take the same directory, name or index.
    assert!(NodeHost::create(&network, &node.dir, "other", 4).is_err());
    assert!(NodeHost::create(&network, &dir.path().join("x"), "half", 4).is_err());
    assert!(NodeHost::create(&network, &dir.path().join("y"), "y", 3).is_err());
    assert!(node.run("true", [] as [&str; 0]).is_ok(), "the refused creations must not harm the node");

    let mut sleeper = node
        .spawn("sleeper", "sleep", &["1004".into()], &[], &dir.path().join("sleep.log"), Lifetime::Detached)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_in(&node.netns_path()).iter().any(|(_, c)| c.contains("sleep 1004")) {
        assert!(Instant::now() < deadline, "sleep did not start inside the node");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What a destroy that died after unmounting leaves: namespace files unmounted, a process
    // still inside (it keeps the mount namespace alive), the network namespace and veth up.
    for file in ["mnt", "uts"] {
        let status = Command::new("umount").arg(node.dir.join("ns").join(file)).status().unwrap();
        assert!(status.success());
    }
    assert!(sleeper.is_running());

    let saved: NodeHost = serde_json::from_str(&serde_json::to_string(&node).unwrap()).unwrap();
    saved.destroy().unwrap();
    assert!(!sleeper.is_running(), "the process inside must be found by its network namespace");
    assert_eq!(mounts_mentioning(dir.path()), Vec::<String>::new());
    assert!(!node.netns_path().exists());
    saved.destroy().unwrap();
    network.destroy().unwrap();
    network.destroy().unwrap();
    assert!(!Path::new("/sys/class/net").join(&network.bridge).exists());
    drop(guard);
}

/// Tears down what a test built with the low-level API even when an assertion fails.
struct Guard(Vec<NodeHost>, Option<Network>);

impl Drop for Guard {
    fn drop(&mut self) {
        for node in &self.0 {
            let _ = node.destroy();
        }
        if let Some(network) = &self.1 {
            let _ = network.destroy();
        }
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = new_hosts(dir.path());
    for bad in ["Node", "a_b", "-x", "x;reboot"] {
        let err = hosts.add_node(bad).unwrap_err();
        assert!(err.to_string().contains("DNS label"), "{bad}: {err}");
    }
    assert!(hosts.nodes().is_empty());
    assert!(
        !dir.path().join("nodes").exists()
            || std::fs::read_dir(dir.path().join("nodes")).unwrap().count() == 0
    );
    // A second node of the same name, a second network of the same id: refused, and the
    // first ones keep working.
    let node = hosts.add_node("only").unwrap().clone();
    let err = hosts.add_node("only").unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = Network::create(&hosts.network().id).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(Path::new("/sys/class/net").join(&hosts.network().bridge).exists());
    let out = ssh(hosts.ssh(), &[], &node.address.to_string(), "hostname");
    assert!(out.status.success(), "{}", text(&out.stderr));
    hosts.destroy().unwrap();
}

/// Not a test: the process `hosts_of_a_killed_test_process_are_reaped_by_the_next` starts and
/// kills with SIGKILL, so that no destructor runs.
#[test]
#[ignore = "helper process of hosts_of_a_killed_test_process_are_reaped_by_the_next"]
fn orphan_owner() {
    let dir = PathBuf::from(std::env::var_os("REFIT_ORPHAN_DIR").expect("started by the reaping test"));
    let mut hosts = new_hosts(&dir);
    let node = hosts.add_node("orphan").unwrap().clone();
    node.run("sh", ["-c", "(setsid sleep 1005 >/dev/null 2>&1 &) ; exit 0"]).unwrap();
    std::fs::write(dir.join("state.json"), serde_json::to_vec(hosts.state()).unwrap()).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn hosts_of_a_killed_test_process_are_reaped_by_the_next() {
    require_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "orphan_owner", "--ignored", "--test-threads=1"])
        .env("REFIT_ORPHAN_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state_file = dir.path().join("state.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !state_file.exists() {
        assert!(owner.try_wait().unwrap().is_none(), "the owner process exited early");
        assert!(Instant::now() < deadline, "the owner process made no hosts in 60s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let state: HostsState = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let node = state.nodes[0].clone();
    let inside = processes_in(&node.netns_path());
    assert!(inside.iter().any(|(_, c)| c.contains("sleep 1005")), "{inside:?}");
    owner.kill().unwrap();
    owner.wait().unwrap();
    // The owner is gone; its namespace, mounts, bridge and the double-forked sleep are not.
    assert!(node.netns_path().exists());
    assert!(Path::new("/sys/class/net").join(&state.network.bridge).exists());

    // Any attached Hosts::create reaps (another test running now may have done it already).
    Hosts::reap_orphans().unwrap();
    for (pid, cmd) in &inside {
        assert!(!alive_with(*pid, cmd), "{pid} ({cmd}) survived the reaping");
    }
    assert!(!node.netns_path().exists());
    assert!(!Path::new("/sys/class/net").join(&state.network.bridge).exists());
    assert_eq!(mounts_mentioning(dir.path()), Vec::<String>::new());
}

/// Unmounts the test's stand-in for a container's overlay root even when an assertion fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn nodes_work_from_a_directory_on_overlayfs() {
    require_prerequisites();
    // A container's root is typically overlayfs, which cannot be an overlay's upper layer.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["lower", "upper", "work", "root"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let options = format!("lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work", dir.path().display());
    let status =
        Command::new("mount").args(["-t", "overlay", "container-root", "-o", &options]).arg(&root).status();
    assert!(status.unwrap().success());
    let _unmount = Unmount(root.clone());

    let sandbox = root.join("sandbox");
    let mut hosts = new_hosts(&sandbox);
    let node = hosts.add_node("on-overlay").unwrap().clone();
    node.write_file("/etc/refit-probe", b"layered\n", 0o644).unwrap();
    let out = ssh(hosts.ssh(), &[], &node.address.to_string(), "cat /etc/refit-probe");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "layered\n");
    hosts.destroy().unwrap();
    assert_eq!(mounts_mentioning(&sandbox), Vec::<String>::new());
}
