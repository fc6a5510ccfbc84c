//! Node readiness over node access (Kismatic's readiness checks, seed 001): before the run,
//! each node is asked through its own action transport how much room the filesystems refit's
//! recipe writes to have left, and — when the plan says the packages are pre-installed —
//! which versions of kubeadm/kubelet/kubectl it holds. This module decides from what the
//! probe saw; the probe itself (read-only `df` and `dpkg-query`/`rpm`) is `refit_exec::probe`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checks::{Finding, Severity};
use crate::remedy::Remedy;
use crate::version::Version;

/// The paths a node upgrade writes to, each checked for free room on its filesystem:
/// `/` (the root drive Kismatic checks), `/var/lib` (etcd's data and kubelet state grow
/// during the upgrade; dpkg's database), `/etc/kubernetes` (kubeadm backs up the etcd data
/// and the static-pod manifests under `/etc/kubernetes/tmp` before it touches them),
/// `/var/cache/apt/archives` and `/var/cache/dnf` (downloaded packages), `/usr/bin` (the new
/// binaries land next to the old ones before the rename) and `/tmp` (kubeadm's and the
/// probes' scratch space). A path that does not exist is measured at its nearest existing
/// parent.
pub const WRITTEN_PATHS: &[&str] =
    &["/", "/var/lib", "/etc/kubernetes", "/var/cache/apt/archives", "/var/cache/dnf", "/usr/bin", "/tmp"];

/// The default minimum free room on each of those filesystems: 2 GiB. Why: kubeadm copies
/// the etcd data directory into `/etc/kubernetes/tmp` before upgrading a stacked member, and
/// etcd's default backend quota is 2 GiB; the three packages and their download take about
/// 150 MiB more. A node with less may fail half-way through `kubeadm upgrade` — the
/// most expensive place to fail.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 2 << 30;

/// One filesystem as `df -P` reports it, with the asked paths it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    /// Where it is mounted.
    pub mount: String,
    /// The asked paths on it.
    pub paths: Vec<String>,
    /// Free room for unprivileged writers, in bytes (df's "Available").
    pub available: u64,
    /// Size, in bytes.
    pub size: u64,
}

/// What the readiness probe saw on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReadiness {
    /// The node's host name (`uname -n`).
    pub hostname: String,
    /// `/etc/machine-id`, when the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// The filesystems of [`WRITTEN_PATHS`].
    pub filesystems: Vec<Filesystem>,
    /// Installed package versions as the package manager prints them (`1.37.1-1.1`); `None`
    /// when not installed. Only asked when the packages are pre-installed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packages: BTreeMap<String, Option<String>>,
}

/// What a node must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// Minimum free bytes on every filesystem a written path lives on.
    pub min_free: u64,
    /// When the packages are pre-installed: the version they must be at (the node's last
    /// version in the schedule).
    pub preinstalled: Option<Version>,
}

/// Whole MiB, for messages.
fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// The readiness findings of one node: a blocker per filesystem short of room and per
/// pre-installed package missing or at another version; a blocker when the probe could not
/// tell at all (a node whose readiness is unknown is not ready).
pub fn findings(node: &str, observed: Result<&NodeReadiness, &str>, req: &Requirements) -> Vec<Finding> {
    let blocker = |check: &'static str, message: String| Finding {
        check,
        severity: Severity::Blocker,
        subject: format!("node/{node}"),
        node: Some(node.to_string()),
        message,
        remedy: (check == "node-disk-space").then_some(Remedy::MinFreeDisk),
    };
    let observed = match observed {
        Ok(o) => o,
        Err(why) => {
            return vec![blocker(
                "node-readiness-unknown",
                format!("its disk space and packages could not be checked over its action: {why}"),
            )];
        }
    };
    let mut out = Vec::new();
    for fs in observed.filesystems.iter().filter(|fs| fs.available < req.min_free) {
        out.push(blocker(
            "node-disk-space",
            format!(
                "{} (holding {}) has {} MiB free of {} MiB; the upgrade needs {} MiB there (kubeadm's backups, packages, new binaries): free space",
                fs.mount,
                fs.paths.join(", "),
                mib(fs.available),
                mib(fs.size),
                mib(req.min_free)
            ),
        ));
    }
    if let Some(target) = &req.preinstalled {
        for (name, installed) in &observed.packages {
            let at = installed.as_deref().and_then(crate::reach::package_release);
            if at.as_ref().is_some_and(|v| v.release() == target.release()) {
                continue;
            }
            let now = match installed {
                Some(v) => format!("{name} {v} is installed"),
                None => format!("{name} is not installed"),
            };
            out.push(blocker(
                "node-package-missing",
                format!(
                    "the plan says packages are pre-installed, but {now}: install {name} {target} on the node first"
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(mount: &str, available_mib: u64) -> Filesystem {
        Filesystem {
            mount: mount.into(),
            paths: vec![mount.into()],
            available: available_mib << 20,
            size: 10 << 30,
        }
    }

    fn req() -> Requirements {
        Requirements { min_free: DEFAULT_MIN_FREE_BYTES, preinstalled: None }
    }

    #[test]
    fn a_filesystem_short_of_room_names_the_node_mount_paths_and_numbers() {
        let mut o =
            NodeReadiness { filesystems: vec![fs("/", 5000), fs("/var/lib", 812)], ..Default::default() };
        o.filesystems[1].paths.push("/etc/kubernetes".into());
        let f = findings("w-1", Ok(&o), &req());
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].check, f[0].subject.as_str(), f[0].severity),
            ("node-disk-space", "node/w-1", Severity::Blocker)
        );
        let m = &f[0].message;
        assert!(
            m.starts_with("/var/lib (holding /var/lib, /etc/kubernetes) has 812 MiB free of 10240 MiB"),
            "{m}"
        );
        assert!(m.contains("needs 2048 MiB"), "{m}");
        assert!(findings("w-1", Ok(&o), &Requirements { min_free: 512 << 20, ..req() }).is_empty());
        assert!(findings("w-1", Ok(&o), &Requirements { min_free: 0, ..req() }).is_empty(), "0 turns it off");
    }

    #[test]
    fn pre_installed_packages_must_be_at_the_target() {
        let o = NodeReadiness {
            packages: BTreeMap::from([
                ("kubeadm".into(), Some("1.37.1-1.1".into())),
                ("kubelet".into(), Some("1.36.4-1.1".into())),
                ("kubectl".into(), None),
            ]),
            ..Default::default()
        };
        let r = Requirements { preinstalled: Some(Version::new(1, 37, 1)), ..req() };
        let f = findings("w-1", Ok(&o), &r);
        let msgs: Vec<&str> = f.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(f.len(), 2, "{msgs:?}");
        assert!(msgs[0].contains("kubectl is not installed") && msgs[0].contains("install kubectl 1.37.1"));
        assert!(msgs[1].contains("kubelet 1.36.4-1.1 is installed"));
        assert!(findings("w-1", Ok(&o), &req()).is_empty(), "not pre-installed: the recipe installs them");
    }

    #[test]
    fn a_node_that_cannot_be_probed_is_not_ready() {
        let f = findings("w-1", Err("ssh: connection refused"), &req());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].check, "node-readiness-unknown");
        assert!(f[0].message.contains("connection refused"));
    }
}
