//! Nodes as small hosts: a network namespace, a private root and an sshd per node.
//!
//! kubeadm and apt expect a machine: their own address (kubeadm's default ports — 6443, 2379,
//! 10250 — on every node at once), their own `/etc/kubernetes`, `/var/lib/kubelet`, `/etc/apt`
//! and dpkg database, a hostname that is the node name, and an sshd through which the operator's
//! recipe arrives. A [`NodeHost`] is the smallest thing that is all of that, built only from
//! kernel namespaces (no container runtime, no image, nothing downloaded):
//!
//! - **A network per sandbox** ([`Network`]): one Linux bridge `rfb-<id>` holding the gateway
//!   `.1` of a /24 picked from 10.200.0.0–10.254.255.0 that no interface address or route of
//!   the host overlaps (read from `ip -j addr` / `ip -j route`, under a machine-wide lock so two
//!   sandboxes starting at once never pick the same one). Nodes hang off the bridge by a veth
//!   pair. No NAT, no forwarding: the host's `ip_forward` is not touched, so nodes reach each
//!   other and the host (the gateway address) and nothing else. IPv6 is switched off on the
//!   host-side links so that nothing outside our namespaces gets even a link-local address.
//! - **A network namespace per node** (`ip netns add refit-<id>-<name>`, so `ip netns exec` works
//!   for people debugging), `lo` up, `eth0` at `.10+index`, a default route via the gateway
//!   (kubeadm auto-detects its advertise address from the default route), and
//!   `net.ipv4.ip_forward=1` *inside* the node because kubeadm's preflight wants it (the node has
//!   one interface, so it forwards nothing anywhere).
//! - **A UTS namespace** so `hostname` is the node name: kubeadm defaults the node name to the
//!   hostname, and falls back to it when it cannot read the node's credentials.
//! - **A mount namespace** with overlays over `/etc`, `/usr` and `/var` (lower = the host's,
//!   upper under the node's directory) and a tmpfs on `/run`. Those three trees are where kubeadm,
//!   dpkg and apt write (`/etc/kubernetes`, `/etc/apt`, `/usr/bin/kubeadm`, `/var/lib/dpkg`,
//!   `/var/lib/kubelet`, `/var/lib/etcd`); with a merged `/usr`, `/bin`, `/sbin` and `/lib` are
//!   covered too. We do *not* overlay `/`: that would need a new root (pivot_root, fresh
//!   `/proc`, `/sys`, `/dev`) and would hide what nodes must share with the host — the testbed
//!   binary cache under `/root/.cache`, test temp dirs under `/tmp`, the work tree — and an
//!   overlay's upper dir may not live inside its lower dir, which for `/` is everywhere. `/run`
//!   is private because sshd needs `/run/sshd` and pid files, and `/var/run` points there.
//!   When the node's directory is on overlayfs (a container's root), which cannot be an upper
//!   layer, the layers go on a tmpfs mounted in the node's directory.
//! - **Persistent namespaces as files**: the mount and UTS namespaces are bind-mounted on
//!   `dir/ns/{mnt,uts}` by `unshare --mount=FILE --uts=FILE`, so they outlive every process and
//!   a later CLI (`refit sandbox down`) finds them from the serialized handle. `dir/ns` is first
//!   made a private bind mount, as `ip netns` does for `/run/netns`: the kernel refuses to bind a
//!   mount-namespace file under a shared mount (the propagation could loop back into itself).
//! - **Entering a node** is `nsenter --net --mount --uts`, in a child: a multithreaded process
//!   (tokio) may not `setns` into a mount namespace itself. There is no PID namespace: node
//!   processes stay visible and killable from the host, `/proc` stays the host's, and no init is
//!   needed. Files are written and read through the node's mount namespace, never in the
//!   overlay's upper dir behind a live mount's back (overlayfs forbids changing layers under a
//!   mounted overlay).
//! - **sshd per node** on the node's address, with per-node host keys made inside the node, root
//!   login by key only, keys in `/etc/ssh/authorized_keys.d/root` of the node's private `/etc`
//!   (the operator's `/root/.ssh` is shared with the host and stays untouched). The operator
//!   side ([`SshFiles`]) is one ed25519 key pair, a `known_hosts` with every node's key and an
//!   `ssh_config` with strict host key checking, so `ssh -F <dir>/ssh_config <address>` works
//!   and refit's ssh action can be pointed at the same three files.
//! - **Teardown by namespace, not by pid**: [`NodeHost::destroy`] kills every process whose
//!   network, mount or UTS namespace is the node's (a scan of `/proc/*/ns`), which also catches
//!   what kubeadm, a node agent or an ssh session double-forked — process groups and sessions of
//!   those are not ours to know. Then it unmounts everything under the node's `ns/` and
//!   `overlay/` (only what it made: a handle read from a state file is not trusted to name a
//!   directory whose mounts may all go) and *unlinks* the namespace files: nodes created later hold copies of those bind mounts in their
//!   own mount namespaces, and unlinking a mount point detaches it in every other namespace
//!   (Linux ≥ 3.18), so nothing keeps a destroyed node's namespaces alive. Every step tolerates
//!   the state a crash half-way leaves, so destroy can be repeated and run from a new process.
//!
//! [`Hosts`] composes the three for a sandbox and destroys everything when dropped. A test
//! process killed with SIGKILL runs no destructor: attached `Hosts` therefore register in
//! `/run/refit-testbed-hosts/` with their owner's pid and start time, and the next attached
//! `Hosts::create` on the machine reaps those whose owner is gone.
//!
//! Known limit: a host whose `FORWARD` chain drops bridged traffic (`br_netfilter` loaded with
//! `bridge-nf-call-iptables=1` and a DROP policy, as Docker leaves it) filters node-to-node
//! packets; the node-to-node test says so when it happens.

#![allow(unsafe_code)] // geteuid(2), kill(2), umount2(2), statfs(2); each use has a SAFETY note.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::cache::FileLock;
use crate::process::{Lifetime, Proc, pid_alive};

/// Where `ip netns` keeps its namespace files.
const NETNS_DIR: &str = "/run/netns";
/// Attached hosts register here (one JSON file per network id) so that hosts of a test process
/// killed without cleanup are reaped by the next one.
const REGISTRY: &str = "/run/refit-testbed-hosts";
/// sshd must be started by absolute path (it re-executes itself).
const SSHD: &str = "/usr/sbin/sshd";
/// Serializes subnet choice between sandboxes starting at the same time on this machine.
const NETWORK_LOCK: &str = "/run/lock/refit-testbed-networks.lock";
/// The first candidate /24 (10.200.0.0) and the last (10.254.255.0), as numbers.
const FIRST_SUBNET: u32 = u32::from_be_bytes([10, 200, 0, 0]);
const LAST_SUBNET: u32 = u32::from_be_bytes([10, 254, 255, 0]);
/// Node `index` gets host number `FIRST_NODE_HOST + index` in the /24.
const FIRST_NODE_HOST: u8 = 10;
/// Length of a sandbox network id: `rfv-<id>-<index>` must fit IFNAMSIZ (15 characters).
const ID_LEN: usize = 6;
/// Node names become hostnames (≤ 64) and parts of namespace names.
const MAX_NAME_LEN: usize = 63;
/// Exit code our in-node read script uses for "no such file".
const NOT_FOUND_EXIT: i32 = 44;
/// How long stopped node processes get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long node processes get to be gone after SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sshd gets to answer on port 22.
const SSHD_READY: Duration = Duration::from_secs(15);

/// Fails with the fix in the message when this machine cannot host kubeadm-shaped nodes.
pub fn check_prerequisites() -> Result<(), Error> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Prerequisite(
            "kubeadm-shaped sandbox nodes need root (network namespaces, a bridge, mounts): run as \
             root (sudo, or the CI container)"
                .into(),
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("mount", "mount"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ] {
        if find_in_path(tool).is_none() {
            return Err(Error::Prerequisite(format!(
                "`{tool}` is missing from PATH: install it with `apt-get install -y {package}`"
            )));
        }
    }
    if !Path::new(SSHD).is_file() {
        return Err(Error::Prerequisite(format!(
            "sshd is missing ({SSHD}): install it with `apt-get update && apt-get install -y \
             openssh-server` (do not enable the system service; every node starts its own sshd)"
        )));
    }
    Ok(())
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// The network
// ---------------------------------------------------------------------------------------------

/// A sandbox's network: a bridge on the host holding the gateway of a private /24.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Short id (6 lowercase letters or digits) naming the bridge, veths and network namespaces.
    pub id: String,
    /// The bridge, `rfb-<id>`.
    pub bridge: String,
    /// The /24's network address (`10.x.y.0`).
    pub subnet: Ipv4Addr,
}

impl Network {
    /// A fresh id no bridge or network namespace on this machine uses yet.
    pub fn unused_id() -> Result<String, Error> {
        for _ in 0..64 {
            let mut bytes = [0u8; ID_LEN];
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(|e| Error::io(Path::new("/dev/urandom"), e))?;
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let id: String = bytes
                .iter()
                .filter_map(|b| ALPHABET.get(usize::from(*b) % ALPHABET.len()))
                .map(|c| char::from(*c))
                .collect();
            let netns_prefix = format!("refit-{id}-");
            let netns_taken = fs::read_dir(NETNS_DIR).is_ok_and(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with(&netns_prefix))
            });
            if !interface_exists(&bridge_name(&id)) && !netns_taken {
                return Ok(id);
            }
        }
        Err(Error::Config("no unused sandbox network id found after 64 tries".into()))
    }

    /// Creates the bridge with the gateway address of a /24 nothing on this host uses.
    pub fn create(id: &str) -> Result<Network, Error> {
        check_prerequisites()?;
        validate_id(id)?;
        let bridge = bridge_name(id);
        // Held until the bridge carries its address, which is what the next sandbox will see;
        // the name is checked under it too, so a clash never has us clean up another's bridge.
        let _lock = network_lock()?;
        if interface_exists(&bridge) {
            return Err(Error::Config(format!(
                "interface {bridge} already exists: network id {id} is in use (pick another id)"
            )));
        }
        let taken = used_prefixes()?;
        let subnet = pick_subnet(&taken).ok_or_else(|| {
            Error::Config(
                "every /24 in 10.200.0.0–10.254.255.0 overlaps an address or route of this host; \
                 remove unused routes or sandboxes (refit sandbox down)"
                    .into(),
            )
        })?;
        let network = Network { id: id.to_string(), bridge, subnet };
        let result = network.build();
        if let Err(e) = result {
            let _ = network.destroy();
            return Err(e);
        }
        Ok(network)
    }

    fn build(&self) -> Result<(), Error> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        disable_ipv6(&self.bridge)?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        Ok(())
    }

    /// The gateway: `.1` of the subnet, on the bridge (the host's own address in the network).
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The address of node `index`: `.10 + index`.
    pub fn node_address(&self, index: u8) -> Result<Ipv4Addr, Error> {
        let host = FIRST_NODE_HOST
            .checked_add(index)
            .filter(|h| *h < 255)
            .ok_or_else(|| Error::Config(format!("node index {index} is out of range (0..=244)")))?;
        let [a, b, c, _] = self.subnet.octets();
        Ok(Ipv4Addr::new(a, b, c, host))
    }

    /// Removes the bridge. Nothing to do when it is already gone.
    pub fn destroy(&self) -> Result<(), Error> {
        validate_id(&self.id)?;
        if self.bridge != bridge_name(&self.id) {
            return Err(Error::Config(format!(
                "refusing to delete interface {}: a sandbox bridge is named {}",
                self.bridge,
                bridge_name(&self.id)
            )));
        }
        if interface_exists(&self.bridge) {
            ip(&["link", "del", &self.bridge])?;
        }
        Ok(())
    }
}

fn bridge_name(id: &str) -> String {
    format!("rfb-{id}")
}

fn validate_id(id: &str) -> Result<(), Error> {
    if id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "network id {id:?} must be {ID_LEN} lowercase letters or digits (interface names are limited \
             to 15 characters)"
        )))
    }
}

fn network_lock() -> Result<FileLock, Error> {
    let path = Path::new(NETWORK_LOCK);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    FileLock::exclusive(path)
}

/// Every IPv4 prefix the host uses: interface addresses and routes of every table.
fn used_prefixes() -> Result<Vec<(Ipv4Addr, u8)>, Error> {
    let addrs = ip(&["-4", "-j", "addr", "show"])?;
    let routes = ip(&["-4", "-j", "route", "show", "table", "all"])?;
    parse_prefixes(&String::from_utf8_lossy(&addrs.stdout), &String::from_utf8_lossy(&routes.stdout)).map_err(
        |detail| Error::Command {
            what: "reading `ip -j addr` / `ip -j route`".into(),
            status: "unparsable".into(),
            stderr: detail,
        },
    )
}

/// The prefixes in `ip -4 -j addr` and `ip -4 -j route show table all` output. Default routes
/// are left out: they overlap everything and say nothing about which subnets are in use.
fn parse_prefixes(addrs: &str, routes: &str) -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let parse = |text: &str| -> Result<Vec<serde_json::Value>, String> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    };
    let mut out = Vec::new();
    for link in parse(addrs)? {
        for info in link.get("addr_info").and_then(|a| a.as_array()).into_iter().flatten() {
            if info.get("family").and_then(|f| f.as_str()) != Some("inet") {
                continue;
            }
            let local = info.get("local").and_then(|l| l.as_str()).and_then(|s| s.parse::<Ipv4Addr>().ok());
            let len = info
                .get("prefixlen")
                .and_then(|l| l.as_u64())
                .and_then(|l| u8::try_from(l).ok())
                .filter(|l| *l <= 32);
            if let (Some(local), Some(len)) = (local, len) {
                out.push((local, len));
            }
        }
    }
    for route in parse(routes)? {
        let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else { continue };
        if dst == "default" {
            continue;
        }
        let (addr, len) = match dst.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|e| format!("route {dst}: {e}"))?),
            None => (dst, 32),
        };
        let Ok(addr) = addr.parse::<Ipv4Addr>() else { continue };
        if len == 0 || len > 32 {
            continue;
        }
        out.push((addr, len));
    }
    Ok(out)
}

/// The first /24 from 10.200.0.0 to 10.254.255.0 that overlaps none of `taken`.
fn pick_subnet(taken: &[(Ipv4Addr, u8)]) -> Option<Ipv4Addr> {
    let mask = |len: u8| if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
    (FIRST_SUBNET..=LAST_SUBNET).step_by(256).map(Ipv4Addr::from).find(|candidate| {
        taken.iter().all(|(addr, len)| {
            // Two prefixes overlap exactly when they agree on the shorter one's bits.
            let m = mask((*len).min(24));
            u32::from(*candidate) & m != u32::from(*addr) & m
        })
    })
}

// ---------------------------------------------------------------------------------------------
// One node
// ---------------------------------------------------------------------------------------------

/// One kubeadm-shaped node: its namespaces, address and directory. Serializable so that a new
/// process (a detached sandbox's `down`) can operate and destroy it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHost {
    /// Node name; also its hostname.
    pub name: String,
    /// Position in the network (address `.10 + index`).
    pub index: u8,
    /// The node's address on `eth0` (/24).
    pub address: Ipv4Addr,
    /// The network's gateway (the host's side of the bridge).
    pub gateway: Ipv4Addr,
    /// The node's directory: namespace files under `ns/`, overlay layers under `overlay/`.
    pub dir: PathBuf,
    /// The network namespace's name (`ip netns`), `refit-<id>-<name>`.
    pub netns: String,
    /// The host end of the node's veth pair, `rfv-<id>-<index>`.
    pub veth: String,
    /// The node's ssh host public key (`ssh-ed25519 AAAA…`), once its sshd has started.
    pub host_key: Option<String>,
}

/// The overlaid trees: where kubeadm, dpkg and apt write (see the module docs).
const OVERLAID: [&str; 3] = ["etc", "usr", "var"];

/// Runs inside the new mount + UTS namespaces (and the node's network namespace). Arguments:
/// name, overlay root, /etc/hosts content, machine id, overlay source tag. Values are passed as
/// arguments, never pasted into the script.
const SETUP_SCRIPT: &str = r#"set -eu
name=$1 root=$2 hosts=$3 machine_id=$4 tag=$5
printf '%s' "$name" > /proc/sys/kernel/hostname
for d in etc usr var; do
  mount -t overlay "$tag-$d" -o "lowerdir=/$d,upperdir=$root/$d/upper,workdir=$root/$d/work" "/$d"
done
mount -t tmpfs -o mode=0755,nosuid,nodev "$tag-run" /run
mkdir -m 0755 /run/sshd
mkdir -m 1777 /run/lock
printf '%s\n' "$name" > /etc/hostname
printf '%s' "$hosts" > /etc/hosts
printf '%s\n' "$machine_id" > /etc/machine-id
rm -f /etc/apt/sources.list
if [ -d /etc/apt/sources.list.d ]; then find /etc/apt/sources.list.d -mindepth 1 -delete; fi
if [ -d /var/lib/apt/lists ]; then find /var/lib/apt/lists -mindepth 1 -maxdepth 1 -type f ! -name lock -delete; fi
echo 1 > /proc/sys/net/ipv4/ip_forward
"#;

/// Writes stdin to `$1` atomically with mode `$2` (octal), creating parent directories.
const WRITE_SCRIPT: &str = r#"set -eu
umask 022
mkdir -p -- "$(dirname -- "$1")"
tmp="$1.refit-new"
cat > "$tmp"
chmod "$2" "$tmp"
mv -f -- "$tmp" "$1"
"#;

/// Prints `$1`, or exits 44 when it does not exist.
const READ_SCRIPT: &str = r#"[ -e "$1" ] || exit 44
exec cat -- "$1""#;

/// Replaces the host keys copied up from the host's /etc with the node's own.
const HOST_KEY_SCRIPT: &str = r#"set -eu
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C "root@$1" -f /etc/ssh/ssh_host_ed25519_key
"#;

impl NodeHost {
    /// Creates node `name` in `network` at `.10 + index`, its namespaces persisted under `dir`
    /// (created if missing; it must not hold another node). On failure everything created so
    /// far is destroyed again.
    pub fn create(network: &Network, dir: &Path, name: &str, index: u8) -> Result<NodeHost, Error> {
        let host = NodeHost::plan(network, dir, name, index)?;
        host.build_or_clean_up(network)?;
        Ok(host)
    }

    /// The node `create` would make, after checking that nothing it needs is taken; creates
    /// only `dir`.
    fn plan(network: &Network, dir: &Path, name: &str, index: u8) -> Result<NodeHost, Error> {
        check_prerequisites()?;
        validate_name(name)?;
        validate_id(&network.id)?;
        let address = network.node_address(index)?;
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let dir = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        validate_dir(&dir)?;
        let host = NodeHost {
            name: name.to_string(),
            index,
            address,
            gateway: network.gateway(),
            netns: format!("refit-{}-{name}", network.id),
            veth: format!("rfv-{}-{index}", network.id),
            dir,
            host_key: None,
        };
        // Refuse before touching anything: cleaning up after a clash would destroy the other node.
        if host.dir.join("ns").exists() {
            return Err(Error::Config(format!(
                "{} already holds a node (its ns/ directory exists): destroy that node first",
                host.dir.display()
            )));
        }
        if host.netns_path().exists() {
            return Err(Error::Config(format!("network namespace {} already exists", host.netns)));
        }
        if interface_exists(&host.veth) {
            return Err(Error::Config(format!(
                "interface {} already exists (node index {index} in use)",
                host.veth
            )));
        }
        Ok(host)
    }

    fn build_or_clean_up(&self, network: &Network) -> Result<(), Error> {
        let result = self.build(network);
        if result.is_err() {
            let _ = self.destroy();
        }
        result
    }

    fn build(&self, network: &Network) -> Result<(), Error> {
        let ns = self.dir.join("ns");
        let layers = self.overlay_root();
        fs::create_dir_all(&layers).map_err(|e| Error::io(&layers, e))?;
        if is_overlayfs(&layers) {
            // overlayfs cannot be an upper layer (a container's own root usually is overlayfs):
            // the node's layers then live in memory, unmounted with the node.
            run_checked(
                &format!("mounting a tmpfs for the layers of node {}", self.name),
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "mode=0700"])
                    .arg(format!("{}-layers", self.netns))
                    .arg(&layers),
            )?;
        }
        for tree in OVERLAID {
            for layer in ["upper", "work"] {
                let d = self.overlay_root().join(tree).join(layer);
                fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            }
        }
        fs::create_dir_all(&ns).map_err(|e| Error::io(&ns, e))?;

        // Network namespace, veth (node end created directly inside as eth0), addresses, routes.
        ip(&["netns", "add", &self.netns])?;
        ip(&["link", "add", &self.veth, "type", "veth", "peer", "name", "eth0", "netns", &self.netns])?;
        disable_ipv6(&self.veth)?;
        ip(&["link", "set", &self.veth, "master", &network.bridge, "up"])?;
        let inside = format!(
            "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\nroute add default via {}\n",
            self.address, self.gateway
        );
        run_with_input(
            &format!("configuring eth0 of node {}", self.name),
            Command::new("ip").args(["-n", &self.netns, "-batch", "-"]),
            inside.as_bytes(),
        )?;

        // Mount + UTS namespaces, bound on files under a private bind mount of ns/.
        run_checked(
            &format!("making {} a private mount", ns.display()),
            Command::new("mount").arg("--bind").arg("--make-private").arg(&ns).arg(&ns),
        )?;
        for file in ["mnt", "uts"] {
            let f = ns.join(file);
            File::create(&f).map_err(|e| Error::io(&f, e))?;
        }
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            self.address, self.name
        );
        let mut setup = Command::new("nsenter");
        setup
            .arg(prefixed("--net=", &self.netns_path()))
            .args(["--", "unshare"])
            .arg(prefixed("--mount=", &self.mount_ns_path()))
            .arg(prefixed("--uts=", &self.uts_ns_path()))
            .args(["--propagation", "private", "--", "/bin/sh", "-c", SETUP_SCRIPT, "sh", &self.name])
            .arg(self.overlay_root())
            .arg(hosts)
            .arg(machine_id()?)
            .arg(&self.netns);
        run_checked(&format!("setting up the root of node {}", self.name), &mut setup)?;
        Ok(())
    }

    /// The network namespace file (`/run/netns/<netns>`).
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// The mount namespace file.
    pub fn mount_ns_path(&self) -> PathBuf {
        self.dir.join("ns").join("mnt")
    }

    /// The UTS namespace file.
    pub fn uts_ns_path(&self) -> PathBuf {
        self.dir.join("ns").join("uts")
    }

    fn overlay_root(&self) -> PathBuf {
        self.dir.join("overlay")
    }

    /// The `nsenter` options that put a process into this node.
    fn nsenter_args(&self) -> [OsString; 3] {
        [
            prefixed("--net=", &self.netns_path()),
            prefixed("--mount=", &self.mount_ns_path()),
            prefixed("--uts=", &self.uts_ns_path()),
        ]
    }

    /// A command that runs `program` inside the node (network, mount and UTS namespaces).
    /// `program` is looked up in the node's own `/usr`.
    pub fn command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        cmd.args(self.nsenter_args()).arg("--").arg(program).args(args);
        cmd
    }

    /// Runs `program` inside the node to completion; a failure carries the exit status and the
    /// last lines of its stderr.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let what = format!("{} on node {}", program.as_ref().to_string_lossy(), self.name);
        run_checked(&what, &mut self.command(program, args))
    }

    /// Starts a long-running `program` inside the node in its own process group, output
    /// appended to `log` (see [`Proc::spawn`] for what the lifetime means).
    pub fn spawn(
        &self,
        name: &str,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        lifetime: Lifetime,
    ) -> Result<Proc, Error> {
        let mut full: Vec<String> =
            self.nsenter_args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        full.push("--".into());
        full.push(program.into());
        full.extend(args.iter().cloned());
        Proc::spawn(name, Path::new("nsenter"), &full, env, log, lifetime)
    }

    /// Writes `bytes` to `path` (absolute, inside the node) with `mode`, atomically (a temporary
    /// file renamed over it), through the node's own mount namespace.
    pub fn write_file(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), Error> {
        check_node_path(path)?;
        let mut cmd = self.command("/bin/sh", ["-c", WRITE_SCRIPT, "sh", path, &format!("{mode:o}")]);
        run_with_input(&format!("writing {path} on node {}", self.name), &mut cmd, bytes)?;
        Ok(())
    }

    /// Reads `path` (absolute, inside the node) through the node's own mount namespace; a
    /// missing file is an [`Error::Io`] of kind `NotFound`.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        check_node_path(path)?;
        let out = self
            .command("/bin/sh", ["-c", READ_SCRIPT, "sh", path])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| cannot_start(&format!("reading {path} on node {}", self.name), e))?;
        if out.status.code() == Some(NOT_FOUND_EXIT) {
            return Err(Error::io(
                Path::new(&format!("{}:{path}", self.name)),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Ok(check_output(&format!("reading {path} on node {}", self.name), out)?.stdout)
    }

    /// Gives the node its own ssh host key and authorized key, and starts `sshd -D -e` on
    /// `address:22`; returns once sshd answers. Records the host key in [`NodeHost::host_key`].
    pub fn start_sshd(&mut self, ssh: &SshFiles, log: &Path, lifetime: Lifetime) -> Result<Proc, Error> {
        let authorized = ssh.public_key()?;
        self.run("/bin/sh", ["-c", HOST_KEY_SCRIPT, "sh", &self.name])?;
        self.write_file(&format!("/etc/ssh/authorized_keys.d/{}", ssh.user), authorized.as_bytes(), 0o600)?;
        self.write_file("/etc/ssh/sshd_config", sshd_config(self.address).as_bytes(), 0o644)?;
        let public =
            String::from_utf8_lossy(&self.read_file("/etc/ssh/ssh_host_ed25519_key.pub")?).into_owned();
        let host_key = public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        if !host_key.starts_with("ssh-ed25519 ") {
            return Err(Error::Process {
                name: format!("sshd-{}", self.name),
                detail: format!("unexpected host public key {public:?}"),
            });
        }
        let mut proc = self.spawn(
            &format!("sshd-{}", self.name),
            SSHD,
            &["-D".into(), "-e".into(), "-f".into(), "/etc/ssh/sshd_config".into()],
            &[],
            log,
            lifetime,
        )?;
        wait_for_ssh_banner(SocketAddr::from((self.address, 22)), &mut proc, log)?;
        self.host_key = Some(host_key);
        Ok(proc)
    }

    /// Kills every process in the node's namespaces, unmounts everything under its `ns/` and
    /// `overlay/`, deletes its namespaces, veth and overlay layers (logs in its directory stay). Idempotent, and works after a crash
    /// half-way or from a new process given only the serialized handle.
    pub fn destroy(&self) -> Result<(), Error> {
        // The handle may come from a state file: touch only what a node of ours can have made.
        validate_name(&self.name)?;
        validate_dir(&self.dir)?;
        if !self.netns.starts_with("refit-") || !self.veth.starts_with("rfv-") {
            return Err(Error::Config(format!(
                "refusing to destroy node {}: namespace {:?} / interface {:?} are not a sandbox node's",
                self.name, self.netns, self.veth
            )));
        }
        let namespaces: Vec<(u64, u64)> = [self.netns_path(), self.mount_ns_path(), self.uts_ns_path()]
            .iter()
            .filter_map(|p| namespace_id(p))
            .collect();
        stop_namespace_members(&namespaces, &self.name)?;
        let ours = [self.dir.join("ns"), self.overlay_root()];
        for d in &ours {
            unmount_under(d)?;
        }
        if self.netns_path().exists() {
            ip(&["netns", "del", &self.netns])?;
        }
        if interface_exists(&self.veth) {
            // Deleting the namespace takes its veth pair along, asynchronously; do not race it.
            if let Err(e) = ip(&["link", "del", &self.veth])
                && interface_exists(&self.veth)
            {
                return Err(e);
            }
        }
        // Unlinking the namespace files detaches the copies other nodes' namespaces hold.
        for d in &ours {
            match fs::remove_dir_all(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(d, e)),
            }
        }
        Ok(())
    }
}

/// Whether `path` lies on an overlayfs.
fn is_overlayfs(path: &Path) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs is plain old data, for which all-zero bytes are a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) reads a NUL-terminated path and writes into a buffer of the right type,
    // both alive for the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    #[allow(clippy::useless_conversion)] // f_type is i64 on x86_64 glibc, narrower elsewhere
    let kind = i64::from(buf.f_type);
    rc == 0 && kind == OVERLAYFS_SUPER_MAGIC
}

fn prefixed(option: &str, path: &Path) -> OsString {
    let mut s = OsString::from(option);
    s.push(path.as_os_str());
    s
}

fn validate_name(name: &str) -> Result<(), Error> {
    if refit_core::identity::is_dns_label(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "node name {name:?} must be a DNS label: 1-{MAX_NAME_LEN} lowercase letters, digits or '-', \
             not starting or ending with '-'"
        )))
    }
}

/// The node directory goes into overlay mount options (',' and ':' separate those), into
/// ssh_config (quoted) and must not lie inside a tree it overlays.
fn validate_dir(dir: &Path) -> Result<(), Error> {
    let text = dir.to_str().ok_or_else(|| Error::Config(format!("{} is not UTF-8", dir.display())))?;
    if !dir.is_absolute() || dir.parent().is_none() {
        return Err(Error::Config(format!("node directory {text:?} must be an absolute path below /")));
    }
    if text.contains([',', ':', '"', '\n', '\\']) {
        return Err(Error::Config(format!(
            "node directory {text:?} contains ',', ':', '\"', '\\\\' or a newline, which overlay \
             options and ssh_config cannot carry: choose another directory"
        )));
    }
    for tree in ["/etc", "/usr", "/var", "/run", "/proc", "/sys", "/dev"] {
        if dir.starts_with(tree) {
            return Err(Error::Config(format!(
                "node directory {text} lies under {tree}, which nodes overlay or share: use a directory \
                 under /root, /tmp or /work"
            )));
        }
    }
    Ok(())
}

fn check_node_path(path: &str) -> Result<(), Error> {
    if path.starts_with('/') && !path.contains('\0') {
        Ok(())
    } else {
        Err(Error::Config(format!("path {path:?} inside a node must be absolute")))
    }
}

/// A fresh machine id: 128 random bits as 32 lowercase hex digits (machine-id(5)).
fn machine_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io(Path::new("/dev/urandom"), e))?;
    Ok(hex::encode(bytes))
}

/// The node's sshd_config: the whole file (no `Include` of the host's drop-ins).
fn sshd_config(address: Ipv4Addr) -> String {
    format!(
        "# Written by refit's sandbox: root by key only, keys in this node's private /etc.\n\
         ListenAddress {address}:22\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u\n\
         UsePAM no\n\
         AllowAgentForwarding no\n\
         AllowTcpForwarding no\n\
         X11Forwarding no\n\
         PermitUserEnvironment no\n\
         PrintMotd no\n\
         PidFile none\n\
         Subsystem sftp internal-sftp\n"
    )
}

fn wait_for_ssh_banner(addr: SocketAddr, proc: &mut Proc, log: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + SSHD_READY;
    loop {
        if !proc.is_running() {
            return Err(Error::Process {
                name: proc.name.clone(),
                detail: format!("sshd exited: {}", log_tail(log)),
            });
        }
        let last = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 4];
                match stream.read_exact(&mut banner) {
                    Ok(()) if &banner == b"SSH-" => return Ok(()),
                    Ok(()) => format!("unexpected banner {:?}", String::from_utf8_lossy(&banner)),
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                what: proc.name.clone(),
                seconds: SSHD_READY.as_secs(),
                detail: format!("{addr}: {last}"),
                log: log.display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Teardown helpers
// ---------------------------------------------------------------------------------------------

/// The (device, inode) of the namespace bound on `path`, when a namespace is bound there (a
/// plain file left by a crash is not one, and must never match a process).
fn namespace_id(path: &Path) -> Option<(u64, u64)> {
    let nsfs = fs::metadata("/proc/self/ns/net").ok()?.dev();
    let meta = fs::metadata(path).ok()?;
    (meta.dev() == nsfs).then(|| (meta.dev(), meta.ino()))
}

/// Live processes with a network, mount or UTS namespace in `namespaces`.
fn namespace_members(namespaces: &[(u64, u64)]) -> Vec<i32> {
    if namespaces.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            ["net", "mnt", "uts"].iter().any(|kind| {
                fs::metadata(format!("/proc/{pid}/ns/{kind}"))
                    .is_ok_and(|m| namespaces.contains(&(m.dev(), m.ino())))
            })
        })
        .collect()
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is a positive process id found
    // in /proc just now (never 0 or -1, which would signal groups or everyone).
    if pid > 1 {
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// SIGTERM to every member, SIGKILL to whoever is left after the grace, until none is left;
/// then waits until every process seen has exited (a process leaves its namespaces early in
/// exit(2) but may spend a while tearing down the last reference to the node's mounts).
fn stop_namespace_members(namespaces: &[(u64, u64)], node: &str) -> Result<(), Error> {
    let mut members = namespace_members(namespaces);
    if members.is_empty() {
        return Ok(());
    }
    let mut seen: BTreeSet<i32> = members.iter().copied().collect();
    for pid in &members {
        signal(*pid, libc::SIGTERM);
    }
    let term_deadline = Instant::now() + TERM_GRACE;
    while !members.is_empty() && Instant::now() < term_deadline {
        std::thread::sleep(Duration::from_millis(20));
        members = namespace_members(namespaces);
        seen.extend(&members);
    }
    // Loop: a process may fork between our scan and its death.
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !members.is_empty() && Instant::now() < deadline {
        for pid in &members {
            signal(*pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
        members = namespace_members(namespaces);
        seen.extend(&members);
    }
    let mut exiting: Vec<i32> = Vec::new();
    while Instant::now() < deadline {
        exiting = seen.iter().copied().filter(|pid| pid_alive(*pid)).collect();
        if exiting.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if members.is_empty() && exiting.is_empty() {
        return Ok(());
    }
    Err(Error::Process {
        name: node.to_string(),
        detail: format!(
            "processes {members:?} in the node's namespaces survived SIGKILL, {exiting:?} did not finish              exiting, within {}s",
            STOP_TIMEOUT.as_secs()
        ),
    })
}

/// Mount points at or under `dir` in this process's mount table, deepest first.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let table = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io(Path::new("/proc/self/mountinfo"), e))?;
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(field))))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(points)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let [first, after_first @ ..] = rest {
        if *first == b'\\'
            && let Some((digits, after_escape)) = after_first.split_first_chunk::<3>()
            && digits.iter().all(|b| (b'0'..=b'7').contains(b))
            && let Ok(b) = u8::try_from(digits.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0')))
        {
            out.push(b);
            rest = after_escape;
            continue;
        }
        out.push(*first);
        rest = after_first;
    }
    out
}

/// Unmounts everything at or under `dir` (stacked mounts included), deepest first.
fn unmount_under(dir: &Path) -> Result<(), Error> {
    for _ in 0..16 {
        let points = mounts_under(dir)?;
        if points.is_empty() {
            return Ok(());
        }
        for point in points {
            let c = CString::new(point.as_os_str().as_bytes())
                .map_err(|_| Error::Config(format!("mount point {} contains NUL", point.display())))?;
            // SAFETY: umount2(2) reads a NUL-terminated path that lives for the call. A busy
            // mount is detached lazily: it leaves the table now and goes when unused.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) };
            if rc != 0 {
                // SAFETY: as above.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH);
                }
            }
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Process { name: "unmount".into(), detail: format!("cannot unmount {left:?}") })
    }
}

// ---------------------------------------------------------------------------------------------
// The operator's side of ssh
// ---------------------------------------------------------------------------------------------

/// The operator's ssh files for a sandbox: what refit's ssh action is given
/// (`action: {type: ssh, configFile, knownHostsFile, identityFile, user}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshFiles {
    /// Private key (ed25519, 0600).
    pub identity_file: PathBuf,
    /// Every node's host key for its address.
    pub known_hosts_file: PathBuf,
    /// `ssh -F` file: per node address, user, key, strict host key checking.
    pub config_file: PathBuf,
    /// The login user on nodes.
    pub user: String,
}

impl SshFiles {
    /// The key pair in `dir` (generated unless it exists), and where known_hosts and
    /// ssh_config go (written by [`SshFiles::write`]).
    pub fn create(dir: &Path) -> Result<SshFiles, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let dir = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        validate_dir(&dir)?;
        let files = SshFiles {
            identity_file: dir.join("id_ed25519"),
            known_hosts_file: dir.join("known_hosts"),
            config_file: dir.join("ssh_config"),
            user: "root".into(),
        };
        if !files.identity_file.exists() {
            run_checked(
                "ssh-keygen (the sandbox's operator key)",
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "refit-sandbox-operator", "-f"])
                    .arg(&files.identity_file),
            )?;
        }
        fs::set_permissions(&files.identity_file, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(&files.identity_file, e))?;
        files.write(&[])?;
        Ok(files)
    }

    /// The public half of the operator key, one line.
    pub fn public_key(&self) -> Result<String, Error> {
        let path = self.identity_file.with_extension("pub");
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok(format!("{}\n", text.trim()))
    }

    /// Rewrites known_hosts and ssh_config for `nodes` (nodes without a host key are left out).
    pub fn write(&self, nodes: &[NodeHost]) -> Result<(), Error> {
        let with_keys: Vec<(&NodeHost, &str)> =
            nodes.iter().filter_map(|n| Some((n, n.host_key.as_deref()?))).collect();
        let known: String = with_keys.iter().map(|(n, key)| format!("{} {key}\n", n.address)).collect();
        write_atomically(&self.known_hosts_file, known.as_bytes(), 0o644)?;
        write_atomically(&self.config_file, ssh_config(self, &with_keys).as_bytes(), 0o644)
    }
}

/// `Host` blocks for every node address (what the plan file names) and, for people, every node
/// name; everything that could reach past the sandbox (agents, forwarding, other keys, the
/// system known_hosts) is off.
fn ssh_config(files: &SshFiles, nodes: &[(&NodeHost, &str)]) -> String {
    let settings = format!(
        "  User {user}\n  IdentityFile \"{id}\"\n  IdentitiesOnly yes\n  UserKnownHostsFile \"{known}\"\n  \
         GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  UpdateHostKeys no\n  \
         CheckHostIP no\n  ForwardAgent no\n  ForwardX11 no\n  ClearAllForwardings yes\n  \
         ControlMaster no\n  BatchMode yes\n  ConnectTimeout 10\n  LogLevel ERROR\n",
        user = files.user,
        id = files.identity_file.display(),
        known = files.known_hosts_file.display(),
    );
    let mut out = String::from("# Written by refit's sandbox: ssh -F <this file> <node address>\n");
    if nodes.is_empty() {
        return out;
    }
    let addresses: Vec<String> = nodes.iter().map(|(n, _)| n.address.to_string()).collect();
    out.push_str(&format!("Host {}\n{settings}", addresses.join(" ")));
    for (node, _) in nodes {
        // Connecting by name checks the key recorded for the address.
        out.push_str(&format!(
            "Host {}\n  HostName {}\n  HostKeyAlias {}\n{settings}",
            node.name, node.address, node.address
        ));
    }
    out
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("refit-new");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

// ---------------------------------------------------------------------------------------------
// The owner
// ---------------------------------------------------------------------------------------------

/// What a sandbox saves about its hosts (in its state.json) to find them again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsState {
    /// The directory holding the ssh files and `nodes/<name>/`.
    pub dir: PathBuf,
    /// The bridge and subnet.
    pub network: Network,
    /// The operator's ssh files.
    pub ssh: SshFiles,
    /// The nodes, in creation order.
    pub nodes: Vec<NodeHost>,
}

/// An attached [`Hosts`]' entry in the machine's registry: who owns it, and what to destroy
/// once the owner is gone.
#[derive(Debug, Serialize, Deserialize)]
struct Registration {
    owner_pid: i32,
    /// The owner's start time (clock ticks after boot), so a reused pid is not mistaken for it.
    owner_start: u64,
    state: HostsState,
}

/// The start time of `pid` (field 22 of /proc/PID/stat), if it runs.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at field 3 (state).
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A sandbox's network, nodes and sshds. Destroys all of it when dropped, unless released
/// ([`Hosts::release`]) or attached to from saved state ([`Hosts::attach`]).
#[derive(Debug)]
pub struct Hosts {
    state: HostsState,
    lifetime: Lifetime,
    /// sshd handles of attached hosts (reaped on destroy); detached sshds are released.
    sshd: Vec<Proc>,
    owned: bool,
}

impl Hosts {
    /// A new network with the operator's ssh key pair in `dir`; no nodes yet.
    /// Attached hosts first reap those of test processes that died without cleaning up
    /// ([`Hosts::reap_orphans`]).
    pub fn create(dir: &Path, lifetime: Lifetime) -> Result<Hosts, Error> {
        check_prerequisites()?;
        if lifetime == Lifetime::Attached {
            Hosts::reap_orphans()?;
        }
        let ssh = SshFiles::create(dir)?;
        let dir = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        let network = Network::create(&Network::unused_id()?)?;
        let hosts = Hosts {
            state: HostsState { dir, network, ssh, nodes: Vec::new() },
            lifetime,
            sshd: Vec::new(),
            owned: true,
        };
        hosts.register(None)?;
        Ok(hosts)
    }

    /// Records attached hosts (plus `planned`, a node about to be built) in the machine's
    /// registry with this process as owner. A detached sandbox's record is its own state file.
    fn register(&self, planned: Option<&NodeHost>) -> Result<(), Error> {
        if self.lifetime != Lifetime::Attached || !self.owned {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.nodes.extend(planned.cloned());
        let me = std::process::id() as i32;
        let owner_start = process_start_time(me)
            .ok_or_else(|| Error::Config("cannot read this process's start time from /proc".into()))?;
        let record = Registration { owner_pid: me, owner_start, state };
        let dir = Path::new(REGISTRY);
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::Config(format!("serializing the hosts registration: {e}")))?;
        write_atomically(&self.registration_path(), &json, 0o600)
    }

    fn unregister(&self) {
        let _ = fs::remove_file(self.registration_path());
    }

    fn registration_path(&self) -> PathBuf {
        Path::new(REGISTRY).join(format!("{}.json", self.state.network.id))
    }

    /// Destroys the attached hosts of processes that died without running their destructors
    /// (kill -9, `panic=abort`, a harness exiting early): their sshds died with them, but
    /// namespaces, mounts, the bridge and whatever was double-forked inside would stay. Returns
    /// how many it destroyed. Registrations of live owners are left alone.
    pub fn reap_orphans() -> Result<usize, Error> {
        let dir = Path::new(REGISTRY);
        let Ok(entries) = fs::read_dir(dir) else { return Ok(0) };
        // One reaper at a time; the others find the records gone.
        let _lock = network_lock()?;
        let mut reaped = 0;
        for path in entries.filter_map(|e| Some(e.ok()?.path())) {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(record) = serde_json::from_slice::<Registration>(&bytes) else {
                tracing::warn!(path = %path.display(), "unreadable hosts registration left alone");
                continue;
            };
            if process_start_time(record.owner_pid) == Some(record.owner_start) {
                continue; // the owner lives
            }
            let mut orphan = Hosts::attach(record.state);
            match orphan.destroy() {
                Ok(()) => {
                    let _ = fs::remove_file(&path);
                    reaped += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reaping orphaned sandbox hosts")
                }
            }
        }
        Ok(reaped)
    }

    /// Hosts known from saved state; dropping this handle leaves them running.
    pub fn attach(state: HostsState) -> Hosts {
        Hosts { state, lifetime: Lifetime::Detached, sshd: Vec::new(), owned: false }
    }

    /// Creates node `name` at the lowest free index, with its sshd started, and adds it to
    /// known_hosts and ssh_config.
    pub fn add_node(&mut self, name: &str) -> Result<&NodeHost, Error> {
        if self.state.nodes.iter().any(|n| n.name == name) {
            return Err(Error::Config(format!("node {name} already exists")));
        }
        let index = (0..=244u8)
            .find(|i| self.state.nodes.iter().all(|n| n.index != *i))
            .ok_or_else(|| Error::Config("a sandbox network holds at most 245 nodes".into()))?;
        let dir = self.state.dir.join("nodes").join(name);
        let mut host = NodeHost::plan(&self.state.network, &dir, name, index)?;
        // Registered before it exists, so a kill -9 half-way still leaves a record to reap.
        self.register(Some(&host))?;
        host.build_or_clean_up(&self.state.network)?;
        let log = host.dir.join("sshd.log");
        match host.start_sshd(&self.state.ssh, &log, self.lifetime) {
            Ok(proc) => match self.lifetime {
                Lifetime::Attached => self.sshd.push(proc),
                Lifetime::Detached => {
                    proc.release();
                }
            },
            Err(e) => {
                let _ = host.destroy();
                return Err(e);
            }
        }
        self.state.nodes.push(host);
        self.register(None)?;
        self.state.ssh.write(&self.state.nodes)?;
        self.state.nodes.last().ok_or_else(|| Error::NotFound(format!("no sandbox node named {name}")))
    }

    /// Destroys node `name` and drops it from known_hosts and ssh_config.
    pub fn remove_node(&mut self, name: &str) -> Result<(), Error> {
        let (pos, node) = self
            .state
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.name == name)
            .ok_or_else(|| Error::NotFound(format!("no sandbox node named {name}")))?;
        node.destroy()?;
        self.state.nodes.remove(pos);
        self.register(None)?;
        self.reap_sshds();
        self.state.ssh.write(&self.state.nodes)
    }

    /// What to save to find these hosts again.
    pub fn state(&self) -> &HostsState {
        &self.state
    }

    /// The nodes, in creation order.
    pub fn nodes(&self) -> &[NodeHost] {
        &self.state.nodes
    }

    /// Node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeHost> {
        self.state.nodes.iter().find(|n| n.name == name)
    }

    /// The operator's ssh files.
    pub fn ssh(&self) -> &SshFiles {
        &self.state.ssh
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.state.network
    }

    /// Hands the hosts over to saved state: dropping no longer destroys them (detached sandbox).
    pub fn release(mut self) -> HostsState {
        self.unregister();
        self.owned = false;
        for proc in self.sshd.drain(..) {
            proc.release();
        }
        self.state.clone()
    }

    /// Destroys every node (last first) and the network; continues past failures and returns
    /// the first. Idempotent.
    pub fn destroy(&mut self) -> Result<(), Error> {
        let mut first: Option<Error> = None;
        for node in self.state.nodes.iter().rev() {
            if let Err(e) = node.destroy() {
                first.get_or_insert(e);
            }
        }
        self.reap_sshds();
        if let Err(e) = self.state.network.destroy() {
            first.get_or_insert(e);
        }
        match first {
            None => {
                if self.owned {
                    self.unregister();
                }
                Ok(())
            }
            Some(e) => Err(e),
        }
    }

    /// Forgets sshd handles whose process is gone (reaping them, so no zombie is left).
    fn reap_sshds(&mut self) {
        self.sshd.retain_mut(|p| p.is_running());
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = self.destroy()
        {
            tracing::warn!(error = %e, "destroying the sandbox hosts");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small process and interface helpers
// ---------------------------------------------------------------------------------------------

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Host-side links get no IPv6 link-local address (nothing outside our namespaces gets an
/// address). A kernel without IPv6 has nothing to switch off.
fn disable_ipv6(interface: &str) -> Result<(), Error> {
    let knob = Path::new("/proc/sys/net/ipv6/conf").join(interface).join("disable_ipv6");
    if !knob.exists() {
        return Ok(());
    }
    fs::write(&knob, "1").map_err(|e| Error::io(&knob, e))
}

fn ip(args: &[&str]) -> Result<Output, Error> {
    run_checked(&format!("ip {}", args.join(" ")), Command::new("ip").args(args))
}

fn cannot_start(what: &str, e: std::io::Error) -> Error {
    Error::Process { name: what.to_string(), detail: format!("cannot start: {e}") }
}

fn run_checked(what: &str, cmd: &mut Command) -> Result<Output, Error> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| cannot_start(what, e))?;
    check_output(what, out)
}

fn run_with_input(what: &str, cmd: &mut Command, input: &[u8]) -> Result<Output, Error> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cannot_start(what, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A child that dies early closes the pipe; its status and stderr tell why.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(|e| cannot_start(what, e))?;
    check_output(what, out)
}

fn check_output(what: &str, out: Output) -> Result<Output, Error> {
    if out.status.success() {
        return Ok(out);
    }
    Err(Error::Command {
        what: what.to_string(),
        status: out.status.to_string(),
        stderr: tail(&out.stderr, 10),
    })
}

/// The last `n` non-empty lines of `bytes`, joined with " | " to stay on one line.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    lines.get(lines.len().saturating_sub(n)..).unwrap_or_default().join(" | ")
}

fn log_tail(log: &Path) -> String {
    fs::read(log).map(|b| tail(&b, 10)).unwrap_or_else(|e| format!("(no log {}: {e})", log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_free_subnet_skips_overlapping_addresses_and_routes() {
        assert_eq!(pick_subnet(&[]), Some(Ipv4Addr::new(10, 200, 0, 0)));
        let taken = [
            (Ipv4Addr::new(10, 200, 0, 1), 24),  // an interface in the first /24
            (Ipv4Addr::new(10, 200, 1, 77), 32), // a host route in the second
            (Ipv4Addr::new(10, 200, 2, 0), 23),  // a route over the third and fourth
            (Ipv4Addr::new(192, 168, 0, 0), 16), // unrelated
        ];
        assert_eq!(pick_subnet(&taken), Some(Ipv4Addr::new(10, 200, 4, 0)));
        // A route covering the whole range leaves nothing; checked to fail without the mask.
        assert_eq!(pick_subnet(&[(Ipv4Addr::new(10, 0, 0, 0), 8)]), None);
        assert_eq!(pick_subnet(&[(Ipv4Addr::new(10, 192, 0, 0), 10)]), None);
        // The last candidate is 10.254.255.0.
        let all_but_last: Vec<(Ipv4Addr, u8)> = (200u8..=254)
            .flat_map(|b| (0u8..=255).map(move |c| (Ipv4Addr::new(10, b, c, 0), 24)))
            .filter(|(a, _)| *a != Ipv4Addr::new(10, 254, 255, 0))
            .collect();
        assert_eq!(pick_subnet(&all_but_last), Some(Ipv4Addr::new(10, 254, 255, 0)));
    }

    #[test]
    fn prefixes_come_from_addresses_and_routes_but_not_default_routes() {
        let addrs = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"eth0","addr_info":[{"family":"inet","local":"10.200.0.5","prefixlen":24},
            {"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let routes = r#"[{"dst":"default","gateway":"192.0.2.1"},{"dst":"10.201.0.0/16"},
            {"type":"local","dst":"10.202.0.9","table":"local"},{"dst":"0.0.0.0/0"}]"#;
        let got = parse_prefixes(addrs, routes).unwrap();
        assert_eq!(
            got,
            vec![
                (Ipv4Addr::new(127, 0, 0, 1), 8),
                (Ipv4Addr::new(10, 200, 0, 5), 24),
                (Ipv4Addr::new(10, 201, 0, 0), 16),
                (Ipv4Addr::new(10, 202, 0, 9), 32),
            ]
        );
        assert_eq!(pick_subnet(&got), Some(Ipv4Addr::new(10, 200, 1, 0)));
        assert!(parse_prefixes("", "").unwrap().is_empty());
        assert!(parse_prefixes("not json", "").is_err());
    }

    #[test]
    fn node_addresses_start_at_ten_and_stop_before_broadcast() {
        let n = Network {
            id: "abc123".into(),
            bridge: "rfb-abc123".into(),
            subnet: Ipv4Addr::new(10, 200, 7, 0),
        };
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 200, 7, 1));
        assert_eq!(n.node_address(0).unwrap(), Ipv4Addr::new(10, 200, 7, 10));
        assert_eq!(n.node_address(244).unwrap(), Ipv4Addr::new(10, 200, 7, 254));
        assert!(n.node_address(245).is_err());
        assert!(n.node_address(255).is_err());
    }

    #[test]
    fn names_ids_and_dirs_are_checked_before_anything_is_created() {
        assert!(validate_name("control-plane-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id("a1b2c3").is_ok());
        for bad in ["a1b2c", "a1b2c3d", "A1B2C3", "a-b2c3"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_dir(Path::new("/tmp/x")).is_ok());
        for bad in ["/tmp/a,b", "/tmp/a:b", "/var/tmp/x", "/etc/x", "/run/x", "/", "tmp/x"] {
            assert!(validate_dir(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), b"/tmp/a b\\c".to_vec());
        assert_eq!(unescape_mountinfo(r"/tmp/plain\"), b"/tmp/plain\\".to_vec());
    }

    #[test]
    fn the_ssh_config_pins_every_node_to_the_sandbox_files() {
        let files = SshFiles {
            identity_file: "/s/id_ed25519".into(),
            known_hosts_file: "/s/known_hosts".into(),
            config_file: "/s/ssh_config".into(),
            user: "root".into(),
        };
        let node = NodeHost {
            name: "cp-1".into(),
            index: 0,
            address: Ipv4Addr::new(10, 200, 0, 10),
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            dir: "/s/nodes/cp-1".into(),
            netns: "refit-abc123-cp-1".into(),
            veth: "rfv-abc123-0".into(),
            host_key: Some("ssh-ed25519 AAAA".into()),
        };
        let text = ssh_config(&files, &[(&node, "ssh-ed25519 AAAA")]);
        assert!(text.contains("Host 10.200.0.10\n"), "{text}");
        for line in [
            "StrictHostKeyChecking yes",
            "UserKnownHostsFile \"/s/known_hosts\"",
            "IdentityFile \"/s/id_ed25519\"",
            "IdentitiesOnly yes",
            "ForwardAgent no",
            "ClearAllForwardings yes",
            "ControlMaster no",
            "User root",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        assert!(text.contains("Host cp-1\n  HostName 10.200.0.10\n  HostKeyAlias 10.200.0.10\n"), "{text}");
        assert_eq!(ssh_config(&files, &[]).lines().count(), 1);
    }
}
