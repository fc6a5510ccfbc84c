//! What a cluster runs, and what that means: the version of every component, the skew-policy
//! violations among them, support status, and where the cluster can go next.
//!
//! The kube crate fills an [`Inventory`] from a live cluster; [`assess`] turns it into a
//! [`StatusReport`] without any I/O, so every rule is testable from plain data.

use jiff::civil::Date;
use serde::Serialize;

use crate::catalog::{Catalog, Support};
use crate::path::{Policy, upgrade_targets};
use crate::skew::{self, Component, Instance, Violation};
use crate::version::Version;

/// A component instance as observed: where, what it says, and how we know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Node name, endpoint or object it was read from.
    pub location: String,
    /// The version string as reported (image tag, `gitVersion`, ...); `None` when unreadable.
    pub reported: Option<String>,
    /// How it was found (e.g. "GET /version", "static pod image", "node status").
    pub source: String,
    /// Why it could not be read, when `reported` is `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Observed {
    /// The parsed version, when the report is one.
    pub fn version(&self) -> Option<Version> {
        self.reported.as_deref().and_then(|r| r.parse().ok())
    }
}

/// One node's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInventory {
    /// Node name.
    pub name: String,
    /// Roles from `node-role.kubernetes.io/*` labels ("worker" when none).
    pub roles: Vec<String>,
    /// kubelet version (node status).
    pub kubelet: String,
    /// kube-proxy version, when known (node status, else the kube-proxy pod's image).
    pub kube_proxy: Option<String>,
    /// Container runtime, e.g. `containerd://2.1.4`.
    pub container_runtime: String,
    /// Kernel version.
    pub kernel: String,
    /// OS image.
    pub os_image: String,
}

/// Everything `refit status` reads from a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// Each kube-apiserver, asked directly.
    pub apiservers: Vec<Observed>,
    /// Each kube-controller-manager.
    pub controller_managers: Vec<Observed>,
    /// Each kube-scheduler.
    pub schedulers: Vec<Observed>,
    /// Each etcd member.
    pub etcd: Vec<Observed>,
    /// CoreDNS.
    pub coredns: Vec<Observed>,
    /// CNI plugins (DaemonSets of known CNIs).
    pub cni: Vec<Observed>,
    /// Nodes.
    pub nodes: Vec<NodeInventory>,
    /// The local kubectl, when found.
    pub kubectl: Option<Observed>,
}

/// A warning about support or upgradability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// What it concerns.
    pub subject: String,
    /// What to do.
    pub message: String,
    /// The way out, when it is a setting or command (each edge spells it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<crate::remedy::Remedy>,
}

/// The assessed status of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// The raw inventory.
    pub inventory: Inventory,
    /// Oldest kube-apiserver version (the cluster's version for every rule).
    pub control_plane: Option<Version>,
    /// Support state of the control plane's minor today.
    pub support: Option<Support>,
    /// Skew-policy violations.
    pub violations: Vec<Violation>,
    /// Support and upgradability warnings.
    pub warnings: Vec<Warning>,
    /// Versions the control plane can go to in one step (default policy).
    pub next_versions: Vec<Version>,
}

fn instances(component: Component, observed: &[Observed]) -> impl Iterator<Item = Instance> + '_ {
    observed.iter().filter_map(move |o| {
        Some(Instance { component, location: o.location.clone(), version: o.version()? })
    })
}

/// Judges an inventory against the skew policy and the catalog.
pub fn assess(inventory: Inventory, catalog: &Catalog, today: Date) -> StatusReport {
    let mut all: Vec<Instance> = Vec::new();
    all.extend(instances(Component::KubeApiserver, &inventory.apiservers));
    all.extend(instances(Component::KubeControllerManager, &inventory.controller_managers));
    all.extend(instances(Component::KubeScheduler, &inventory.schedulers));
    for n in &inventory.nodes {
        if let Ok(v) = n.kubelet.parse() {
            all.push(Instance { component: Component::Kubelet, location: n.name.clone(), version: v });
        }
        if let Some(Ok(v)) = n.kube_proxy.as_deref().map(str::parse) {
            all.push(Instance { component: Component::KubeProxy, location: n.name.clone(), version: v });
        }
    }
    if let Some(k) = &inventory.kubectl {
        all.extend(instances(Component::Kubectl, std::slice::from_ref(k)));
    }
    let violations = skew::check(&all);

    let control_plane = inventory.apiservers.iter().filter_map(Observed::version).min();
    let mut warnings = Vec::new();
    for o in inventory.apiservers.iter().filter(|o| o.reported.is_none()) {
        warnings.push(Warning {
            subject: format!("kube-apiserver {}", o.location),
            message: format!(
                "unreachable ({}); its version is unknown",
                o.error.as_deref().unwrap_or("no answer")
            ),
            remedy: None,
        });
    }
    for n in &inventory.nodes {
        if n.kubelet.parse::<Version>().is_err() {
            warnings.push(Warning {
                subject: format!("node {}", n.name),
                message: format!("kubelet reports '{}', not a Kubernetes version", n.kubelet),
                remedy: None,
            });
        }
    }
    let support = control_plane.as_ref().map(|cp| catalog.support(cp.minor_version(), today));
    let mut next_versions = Vec::new();
    if let Some(cp) = &control_plane {
        let minor = cp.minor_version();
        match support {
            Some(Support::EndOfLife { since }) => warnings.push(Warning {
                subject: format!("control plane {minor}"),
                message: format!(
                    "out of support{}: upgrade to a supported minor",
                    since.map(|d| format!(" since {d}")).unwrap_or_default()
                ),
                remedy: None,
            }),
            Some(Support::EndingSoon { end_of_life, days_left }) => warnings.push(Warning {
                subject: format!("control plane {minor}"),
                message: format!("support ends {end_of_life} ({days_left} days): plan the upgrade"),
                remedy: None,
            }),
            Some(Support::Unknown) => warnings.push(Warning {
                subject: format!("control plane {minor}"),
                message: "newer than the release catalog".into(),
                remedy: Some(crate::remedy::Remedy::RefreshCatalog),
            }),
            _ => {}
        }
        // A node at the oldest allowed skew blocks the next control-plane minor.
        let next = minor.next();
        for n in &inventory.nodes {
            if let Ok(v) = n.kubelet.parse::<Version>() {
                let lag = skew::node_max_lag(v.minor_version());
                if next.minors_ahead_of(v.minor_version()) > lag
                    && minor.minors_ahead_of(v.minor_version()) <= lag
                {
                    warnings.push(Warning {
                        subject: format!("node {}", n.name),
                        message: format!(
                            "kubelet {v} is {lag} minors behind: upgrade it before the control plane moves to {next}"
                        ),
                        remedy: None,
                    });
                }
            }
        }
        next_versions = upgrade_targets(catalog, cp, Policy::Default);
    }
    StatusReport { inventory, control_plane, support, violations, warnings, next_versions }
}

/// The tag of an image reference: `registry.k8s.io/kube-proxy:v1.36.4` → `v1.36.4`, read with
/// the one image grammar ([`crate::addons::ImageRef`]: a registry port is not a tag, digests
/// are dropped); an image without a tag, or a malformed reference, has none.
pub fn image_tag(image: &str) -> Option<String> {
    crate::addons::ImageRef::parse(image).ok()?.tag
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::fixture;

    pub fn seen(location: &str, reported: &str, source: &str) -> Observed {
        Observed {
            location: location.into(),
            reported: Some(reported.into()),
            source: source.into(),
            error: None,
        }
    }

    pub fn node(name: &str, kubelet: &str) -> NodeInventory {
        NodeInventory {
            name: name.into(),
            roles: vec!["worker".into()],
            kubelet: kubelet.into(),
            kube_proxy: Some(kubelet.into()),
            container_runtime: "containerd://2.1.4".into(),
            kernel: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
        }
    }

    /// A small cluster: 1.36 control plane, mixed workers.
    pub fn inventory() -> Inventory {
        Inventory {
            apiservers: vec![seen("https://10.0.0.1:6443", "v1.36.4", "GET /version")],
            controller_managers: vec![seen("cp-1", "v1.36.4", "static pod image")],
            schedulers: vec![seen("cp-1", "v1.36.4", "static pod image")],
            etcd: vec![seen("cp-1", "3.6.8-0", "static pod image")],
            coredns: vec![seen("kube-system/coredns", "v1.14.2", "deployment image")],
            cni: vec![],
            nodes: vec![
                node("cp-1", "v1.36.4"),
                node("w-1", "v1.36.4"),
                node("w-2", "v1.33.0"),
                node("w-3", "v1.32.9"),
            ],
            kubectl: Some(seen("local", "v1.36.4", "kubectl version --client")),
        }
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("registry.k8s.io/kube-proxy:v1.36.4").as_deref(), Some("v1.36.4"));
        assert_eq!(image_tag("localhost:5000/etcd:3.6.8-0@sha256:abc").as_deref(), Some("3.6.8-0"));
        assert_eq!(image_tag("localhost:5000/etcd"), None);
        assert_eq!(image_tag("coredns"), None);
        assert_eq!(image_tag("coredns:"), None);
        assert_eq!(image_tag("registry.example:5000/team/coredns:v1.14.6").as_deref(), Some("v1.14.6"));
        // What the add-on rewrite reads as the tag is what the inventory reports.
        for image in
            ["registry.k8s.io/kube-proxy:v1.36.4", "localhost:5000/etcd:3.6.8-0@sha256:abc", "coredns"]
        {
            assert_eq!(image_tag(image), crate::addons::ImageRef::parse(image).unwrap().tag);
        }
    }

    #[test]
    fn assessment_names_violations_warnings_and_next_steps() {
        let today: Date = "2026-11-21".parse().unwrap();
        let r = assess(inventory(), &fixture::catalog(), today);
        assert_eq!(r.control_plane, Some(Version::new(1, 36, 4)));
        assert!(matches!(r.support, Some(Support::Supported { .. })));
        // w-3 is four minors behind: a violation naming it (kubelet and kube-proxy).
        assert!(r.violations.iter().all(|v| v.instance.location == "w-3"), "{:?}", r.violations);
        assert_eq!(r.violations.len(), 2);
        // w-2 is exactly three behind: allowed, but it blocks 1.37.
        assert!(
            r.warnings
                .iter()
                .any(|w| w.subject == "node w-2"
                    && w.message.contains("before the control plane moves to 1.37"))
        );
        assert_eq!(r.next_versions.first(), Some(&Version::new(1, 37, 0)));
    }

    #[test]
    fn unreachable_apiservers_and_odd_kubelets_are_warnings_not_crashes() {
        let mut inv = inventory();
        inv.apiservers.push(Observed {
            location: "https://10.0.0.2:6443".into(),
            reported: None,
            source: "GET /version".into(),
            error: Some("connection refused".into()),
        });
        inv.nodes.push(node("fake", "kwok-0.8.0"));
        let r = assess(inv, &fixture::catalog(), "2026-11-21".parse().unwrap());
        assert!(r.warnings.iter().any(|w| w.message.contains("unreachable")));
        assert!(r.warnings.iter().any(|w| w.message.contains("kwok-0.8.0")));
        let empty = assess(Inventory::default(), &fixture::catalog(), "2026-11-21".parse().unwrap());
        assert_eq!(empty.control_plane, None);
        assert!(empty.next_versions.is_empty());
    }
}
