//! The kubeadm recipe as data: its command sequence per role and package manager is pinned
//! by snapshots (a change to the procedure shows up as a reviewed snapshot diff), and the
//! repository switch is run for real with `sed` on sample repository files.

use std::time::Duration;

use refit_exec::kubeadm::{APT_REPO_FILE, RPM_REPO_FILE, repo_switch_expression};
use refit_exec::{Error, NodeContext, PackageManager, RemoteCommand, kubeadm_recipe, run_command};

fn node(name: &str, roles: &[&str], first: bool) -> NodeContext {
    NodeContext {
        node: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        from: "1.36.4".into(),
        to: "1.37.1".into(),
        phase: if roles.contains(&"worker") { "workers".into() } else { "control-plane".into() },
        address: "10.0.0.1".into(),
        first_control_plane: first,
    }
}

fn render(recipe: &[RemoteCommand]) -> String {
    recipe.iter().map(|c| format!("{c}\n")).collect()
}

#[test]
fn apt_first_control_plane() {
    let r = kubeadm_recipe(&node("cp-1", &["etcd", "control-plane"], true), PackageManager::Apt).unwrap();
    insta::assert_snapshot!(render(&r));
}

#[test]
fn apt_other_control_plane() {
    let r = kubeadm_recipe(&node("cp-2", &["etcd", "control-plane"], false), PackageManager::Apt).unwrap();
    insta::assert_snapshot!(render(&r));
}

#[test]
fn apt_worker() {
    let r = kubeadm_recipe(&node("w-1", &["worker"], false), PackageManager::Apt).unwrap();
    insta::assert_snapshot!(render(&r));
}

#[test]
fn dnf_first_control_plane() {
    let r = kubeadm_recipe(&node("cp-1", &["control-plane"], true), PackageManager::Dnf).unwrap();
    insta::assert_snapshot!(render(&r));
}

#[test]
fn dnf_other_control_plane() {
    let r = kubeadm_recipe(&node("cp-2", &["control-plane"], false), PackageManager::Dnf).unwrap();
    insta::assert_snapshot!(render(&r));
}

#[test]
fn dnf_worker() {
    let r = kubeadm_recipe(&node("w-1", &["worker"], false), PackageManager::Dnf).unwrap();
    insta::assert_snapshot!(render(&r));
}

#[test]
fn roles_versions_and_refusals() {
    // The flag only matters on a control-plane node; a worker never runs `upgrade apply`.
    let worker = kubeadm_recipe(&node("w-1", &["worker"], true), PackageManager::Apt).unwrap();
    assert!(!render(&worker).contains("upgrade apply"));
    assert!(render(&worker).contains("kubeadm upgrade node"));
    // A control-plane node that also runs workloads is upgraded once, as control plane.
    let both =
        kubeadm_recipe(&node("cp-1", &["control-plane", "worker"], true), PackageManager::Apt).unwrap();
    assert_eq!(both, kubeadm_recipe(&node("cp-1", &["control-plane"], true), PackageManager::Apt).unwrap());
    // An external etcd host is not kubeadm's to upgrade.
    assert!(kubeadm_recipe(&node("etcd-a", &["etcd"], false), PackageManager::Apt).unwrap().is_empty());
    // `v` prefix accepted; the commands are the same.
    let mut v = node("w-1", &["worker"], false);
    v.to = "v1.37.1".into();
    assert_eq!(
        kubeadm_recipe(&v, PackageManager::Dnf).unwrap(),
        kubeadm_recipe(&node("w-1", &["worker"], false), PackageManager::Dnf).unwrap()
    );
    for bad in ["1.37", "latest", "1.37.0-rc.1", "1.37.1; reboot", ""] {
        let mut n = node("w-1", &["worker"], false);
        n.to = bad.into();
        let err = kubeadm_recipe(&n, PackageManager::Apt).unwrap_err();
        assert!(matches!(err, Error::Recipe { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains("w-1"), "{err}");
    }
    // Only root commands are marked for sudo: `kubeadm version` runs as the login user.
    let cp = kubeadm_recipe(&node("cp-1", &["control-plane"], true), PackageManager::Apt).unwrap();
    assert!(cp.iter().filter(|c| !c.sudo).all(|c| c.program == "kubeadm" && c.args[0] == "version"));
}

/// The `sed` the recipe sends, run for real on the repository files the kubeadm installation
/// guide writes: every `vX.Y` of pkgs.k8s.io moves to the target minor, nothing else changes.
#[tokio::test]
async fn the_repository_switch_rewrites_deb_and_rpm_files() {
    if !std::path::Path::new("/usr/bin/sed").exists() && !std::path::Path::new("/bin/sed").exists() {
        panic!("sed is missing: install Debian's sed package");
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("kubernetes.list");
    std::fs::write(
        &deb,
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.36/deb/ /\n",
    )
    .unwrap();
    let rpm = dir.path().join("kubernetes.repo");
    std::fs::write(
        &rpm,
        "[kubernetes]\nname=Kubernetes\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.36/rpm/\nenabled=1\ngpgcheck=1\n\
         gpgkey=https://pkgs.k8s.io/core:/stable:/v1.36/rpm/repodata/repomd.xml.key\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n",
    )
    .unwrap();
    for (pkg, file, path) in
        [(PackageManager::Apt, APT_REPO_FILE, &deb), (PackageManager::Dnf, RPM_REPO_FILE, &rpm)]
    {
        let recipe = kubeadm_recipe(&node("w-1", &["worker"], false), pkg).unwrap();
        let sed = &recipe[0];
        assert_eq!(sed.program, "sed");
        assert_eq!(sed.args.last().map(String::as_str), Some(file));
        assert_eq!(sed.args[2], repo_switch_expression("v1.37"));
        // The same arguments, pointed at the sample file.
        let mut argv = vec!["sed".to_string()];
        argv.extend(sed.args[..sed.args.len() - 1].iter().cloned());
        argv.push(path.to_str().unwrap().to_string());
        run_command(&argv, &[], Duration::from_secs(60), &|_| {}).await.unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&deb).unwrap(),
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.37/deb/ /\n"
    );
    assert_eq!(
        std::fs::read_to_string(&rpm).unwrap(),
        "[kubernetes]\nname=Kubernetes\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.37/rpm/\nenabled=1\ngpgcheck=1\n\
         gpgkey=https://pkgs.k8s.io/core:/stable:/v1.37/rpm/repodata/repomd.xml.key\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"
    );
}

#[test]
fn a_recipe_that_stops_before_kubeadm_upgrades_leaves_the_node_unchanged() {
    use refit_exec::kubeadm::node_unchanged_before;
    for (name, roles, first, verb) in [
        ("cp-1", &["etcd", "control-plane"][..], true, "apply"),
        ("cp-2", &["control-plane"][..], false, "node"),
        ("w-1", &["worker"][..], false, "node"),
    ] {
        for pkg in [PackageManager::Apt, PackageManager::Dnf] {
            let r = kubeadm_recipe(&node(name, roles, first), pkg).unwrap();
            let upgrade = r
                .iter()
                .position(|c| c.program == "kubeadm" && c.args.get(1).map(String::as_str) == Some(verb))
                .unwrap();
            for step in 0..r.len() {
                assert_eq!(
                    node_unchanged_before(&r, step),
                    step < upgrade,
                    "{name} {pkg:?} step {step}: {}",
                    r[step]
                );
            }
        }
    }
    // The apt check of all three packages comes before any hold is lifted.
    let r = kubeadm_recipe(&node("w-1", &["worker"], false), PackageManager::Apt).unwrap();
    let check = r.iter().position(|c| c.args.iter().any(|a| a == "--simulate")).unwrap();
    let unhold = r.iter().position(|c| c.program == "apt-mark" && c.args[0] == "unhold").unwrap();
    assert!(check < unhold);
    assert_eq!(r[check].args.iter().filter(|a| a.ends_with("=1.37.1-*")).count(), 3);
}

/// apt pins in /etc/apt/preferences.d (issue 13 item 6): apt honours an explicit version
/// whatever a pin says, so every package the recipe installs, in every role and with either
/// package manager, is named with the exact target — a pin can never choose the version. (What
/// a pin means for later is judged by the plan's target probe: `refit_core::reach`.)
#[test]
fn every_install_names_the_exact_target_so_pins_cannot_choose_it() {
    for pm in [PackageManager::Apt, PackageManager::Dnf] {
        for (name, roles, first) in [
            ("cp-1", &["etcd", "control-plane"][..], true),
            ("cp-2", &["etcd", "control-plane"][..], false),
            ("w-1", &["worker"][..], false),
        ] {
            let recipe = kubeadm_recipe(&node(name, roles, first), pm).unwrap();
            let installs: Vec<&RemoteCommand> = recipe
                .iter()
                .filter(|c| {
                    matches!(c.program.as_str(), "apt-get" | "dnf")
                        && c.args.first().is_some_and(|a| a == "install")
                })
                .collect();
            assert!(installs.len() >= 2, "{pm:?} {name}: {installs:?}");
            for c in installs {
                let packages: Vec<&String> = c
                    .args
                    .iter()
                    .skip(1)
                    .filter(|a| !a.starts_with('-') && !a.starts_with("Dpkg::"))
                    .collect();
                assert!(!packages.is_empty(), "{c}");
                for p in packages {
                    let exact = p.ends_with("=1.37.1-*") || p.ends_with("-1.37.1-*");
                    assert!(exact, "{pm:?} {name}: `{c}` installs {p} without the exact target");
                }
            }
        }
    }
}
