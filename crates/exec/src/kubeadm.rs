//! The built-in `kubeadm` recipe: the standard kubeadm upgrade procedure for one node, as
//! data (a pure function of the node and its package manager), so it can be read, reviewed and
//! snapshot-tested without a node, and run by [`crate::run_ssh`].
//!
//! It follows "Upgrading kubeadm clusters" and "Changing the Kubernetes package repository"
//! (kubernetes.io, tasks/administer-cluster/kubeadm) per role:
//!
//! 1. point the pkgs.k8s.io repository at the target minor (one `sed` over the repository
//!    file; it rewrites every `/core:/stable:/vX.Y/` in it, which covers both the apt line and
//!    the rpm `baseurl` and `gpgkey`, whichever of pkgs.k8s.io's host names is used);
//! 2. kubeadm at the target: `apt-get update`, a simulated install of kubeadm, kubelet and
//!    kubectl at the target (nothing changes yet: a repository without the target fails here,
//!    holds intact), `apt-mark unhold`, `apt-get install kubeadm=V-*`, `apt-mark hold` (dnf:
//!    `dnf install kubeadm-V-*` past the repository's `exclude=` line), then `kubeadm version`;
//! 3. first control-plane node: `kubeadm upgrade plan vV` and `kubeadm upgrade apply vV --yes`;
//!    other control-plane nodes and workers: `kubeadm upgrade node`;
//! 4. kubelet and kubectl at the target, held again;
//! 5. `systemctl daemon-reload` and `systemctl restart kubelet`.
//!
//! Deliberate differences from the page, each for unattended runs: `upgrade plan` is given the
//! target (so it plans exactly that version and needs no internet lookup of "latest"); apt runs
//! with `DEBIAN_FRONTEND=noninteractive` and keeps changed configuration files
//! (`--force-confdef`, `--force-confold`) instead of prompting; the repository index is updated
//! once, after the switch. Every package is installed by its exact version (`kubeadm=V-*`), so
//! apt pins in `/etc/apt/preferences.d` never choose it (apt honours an explicit version over
//! any pin); a pin that forbids the target, or would take the packages back down later, is
//! reported by the plan's target probe ([`crate::probe`], decided in `refit_core::reach`) before
//! anything changes, and never edited by refit. Cordon, drain and uncordon are not here: the engine does them
//! around the action. An etcd-only member gets an empty recipe: kubeadm upgrades stacked etcd
//! with the control plane and does not manage external etcd hosts (use an `exec` action).

use refit_core::Version;
use refit_core::planfile::PackageManager;

use crate::ssh::RemoteCommand;
use crate::{Error, NodeContext};

/// The apt source file the kubeadm installation guide writes.
pub const APT_REPO_FILE: &str = "/etc/apt/sources.list.d/kubernetes.list";
/// The yum/dnf repository file the kubeadm installation guide writes.
pub const RPM_REPO_FILE: &str = "/etc/yum.repos.d/kubernetes.repo";

/// How the recipe runs on a node: its package manager and the kubeadm preflight checks the
/// operator chose to ignore (passed to every `kubeadm upgrade` command).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeadmOptions {
    /// apt or dnf.
    pub package_manager: PackageManager,
    /// Check names for `--ignore-preflight-errors` (validated by the plan file).
    pub ignore_preflight_errors: Vec<String>,
}

impl From<PackageManager> for KubeadmOptions {
    fn from(package_manager: PackageManager) -> Self {
        KubeadmOptions { package_manager, ignore_preflight_errors: Vec::new() }
    }
}

impl KubeadmOptions {
    /// The options of a plan file's ssh action (defaults for any other action).
    pub fn from_action(action: &refit_core::planfile::Action) -> KubeadmOptions {
        match action {
            refit_core::planfile::Action::Ssh { package_manager, ignore_preflight_errors, .. } => {
                KubeadmOptions {
                    package_manager: *package_manager,
                    ignore_preflight_errors: ignore_preflight_errors.clone(),
                }
            }
            _ => KubeadmOptions::default(),
        }
    }
}

/// Whether a recipe that stopped before `step` (see [`crate::Error::stopped_at_step`]) left
/// the node's running components as they were: nothing from the first `kubeadm upgrade apply`
/// or `kubeadm upgrade node` on had run. The repository switch, the kubeadm package and
/// `kubeadm upgrade plan` change no running component, so the node can take workloads again
/// (its cordon is given back); from kubeadm's upgrade on, the node is in an unknown state and
/// stays cordoned.
pub fn node_unchanged_before(recipe: &[RemoteCommand], step: usize) -> bool {
    let first_change = recipe.iter().position(|c| {
        c.program == "kubeadm"
            && c.args.first().map(String::as_str) == Some("upgrade")
            && matches!(c.args.get(1).map(String::as_str), Some("apply" | "node"))
    });
    first_change.is_none_or(|first| step < first)
        && recipe.iter().take(step).all(|c| c.program != "systemctl")
}

/// The `sed -E` expression that moves a pkgs.k8s.io repository file to `minor` (`v1.37`).
pub fn repo_switch_expression(minor: &str) -> String {
    format!(r"s#(/core:/stable:/)v[0-9]+\.[0-9]+/#\1{minor}/#g")
}

/// The commands that upgrade this node with kubeadm to `ctx.to`, in order.
///
/// `ctx.to` must be a released version (`1.37.1` or `v1.37.1`): packages and
/// `kubeadm upgrade apply` need the exact patch, and pre-releases live in other repositories.
pub fn kubeadm_recipe(
    ctx: &NodeContext,
    options: impl Into<KubeadmOptions>,
) -> Result<Vec<RemoteCommand>, Error> {
    let options: KubeadmOptions = options.into();
    let pkg = options.package_manager;
    let ignoring: Vec<String> = if options.ignore_preflight_errors.is_empty() {
        Vec::new()
    } else {
        vec![format!("--ignore-preflight-errors={}", options.ignore_preflight_errors.join(","))]
    };
    let kubeadm = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(ignoring.iter().cloned());
        RemoteCommand::root("kubeadm", all)
    };
    let refuse = |reason: String| Error::Recipe { node: ctx.node.clone(), reason };
    let to: Version = ctx.to.parse().map_err(|e| refuse(format!("target {:?}: {e}", ctx.to)))?;
    if to.pre.is_some() || to.build.is_some() {
        return Err(refuse(format!(
            "target {} is not a release; the recipe installs released packages",
            ctx.to
        )));
    }
    let has = |role: &str| ctx.roles.iter().any(|r| r == role);
    let control_plane = has("control-plane");
    if !control_plane && !has("worker") {
        return Ok(Vec::new());
    }
    let version = to.to_string();
    let minor = format!("v{}", to.minor_version());
    let git = to.git_version();
    let pkg_version = |name: &str| match pkg {
        PackageManager::Apt => format!("{name}={version}-*"),
        PackageManager::Dnf => format!("{name}-{version}-*"),
    };
    let apt = |args: Vec<String>| {
        RemoteCommand::root("apt-get", args).with_env("DEBIAN_FRONTEND", "noninteractive")
    };
    let apt_install = |names: &[&str]| {
        let mut args: Vec<String> = [
            "install",
            "-y",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
        ]
        .map(String::from)
        .into();
        args.extend(names.iter().map(|n| pkg_version(n)));
        apt(args)
    };
    let dnf_install = |names: &[&str]| {
        let mut args: Vec<String> = vec!["install".into(), "-y".into()];
        args.extend(names.iter().map(|n| pkg_version(n)));
        // Works on dnf 4 and dnf 5 alike (dnf 5 dropped `--disableexcludes`).
        args.push("--setopt=disable_excludes=kubernetes".into());
        RemoteCommand::root("dnf", args)
    };
    let mut steps = Vec::new();
    let repo_file = match pkg {
        PackageManager::Apt => APT_REPO_FILE,
        PackageManager::Dnf => RPM_REPO_FILE,
    };
    steps.push(RemoteCommand::root("sed", ["-i", "-E", &repo_switch_expression(&minor), repo_file]));
    match pkg {
        PackageManager::Apt => {
            steps.push(apt(vec!["update".into()]));
            // Before any package changes: does the repository offer all three at the target?
            // (A simulated install of the held packages changes nothing; a missing version
            // fails here with apt's own message, with the holds still in place.)
            let mut check: Vec<String> =
                ["install", "--simulate", "--allow-change-held-packages"].map(String::from).into();
            check.extend(["kubeadm", "kubelet", "kubectl"].iter().map(|n| pkg_version(n)));
            steps.push(apt(check));
            steps.push(RemoteCommand::root("apt-mark", ["unhold", "kubeadm"]));
            steps.push(apt_install(&["kubeadm"]));
            steps.push(RemoteCommand::root("apt-mark", ["hold", "kubeadm"]));
        }
        PackageManager::Dnf => steps.push(dnf_install(&["kubeadm"])),
    }
    steps.push(RemoteCommand::user("kubeadm", ["version", "-o", "short"]));
    if control_plane && ctx.first_control_plane {
        steps.push(kubeadm(&["upgrade", "plan", &git]));
        steps.push(kubeadm(&["upgrade", "apply", &git, "--yes"]));
    } else {
        steps.push(kubeadm(&["upgrade", "node"]));
    }
    match pkg {
        PackageManager::Apt => {
            steps.push(RemoteCommand::root("apt-mark", ["unhold", "kubelet", "kubectl"]));
            steps.push(apt_install(&["kubelet", "kubectl"]));
            steps.push(RemoteCommand::root("apt-mark", ["hold", "kubelet", "kubectl"]));
        }
        PackageManager::Dnf => steps.push(dnf_install(&["kubelet", "kubectl"])),
    }
    steps.push(RemoteCommand::root("systemctl", ["daemon-reload"]));
    steps.push(RemoteCommand::root("systemctl", ["restart", "kubelet"]));
    Ok(steps)
}
