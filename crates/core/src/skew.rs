//! The version skew policy (kubernetes.io/releases/version-skew-policy), as pure checks.
//!
//! N is the *oldest* kube-apiserver: in an HA cluster every component may reach any apiserver
//! through the load balancer, so each bound is set by the oldest one.

use serde::Serialize;

use crate::version::{MinorVersion, Version};

/// The components the skew policy speaks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager.
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
    /// cloud-controller-manager.
    CloudControllerManager,
    /// kubelet.
    Kubelet,
    /// kube-proxy.
    KubeProxy,
    /// kubectl.
    Kubectl,
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::CloudControllerManager => "cloud-controller-manager",
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
            Component::Kubectl => "kubectl",
        })
    }
}

/// One running instance of a component: where it runs and what it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// The component.
    pub component: Component,
    /// Where: a node name, an endpoint, or "local" for kubectl.
    pub location: String,
    /// The version it reports.
    pub version: Version,
}

/// A breach of the skew policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The offending instance.
    pub instance: Instance,
    /// What the rule allows, in words a person can act on.
    pub rule: String,
}

/// How many minors a kubelet or kube-proxy of this minor may lag: 3 since the policy of
/// Kubernetes 1.28 (KEP-3935) for kubelets ≥ 1.25, 2 before.
pub fn node_max_lag(node_minor: MinorVersion) -> i64 {
    if node_minor >= MinorVersion::new(1, 25) { 3 } else { 2 }
}

/// Every violation among `instances`. Without an apiserver nothing can be judged.
pub fn check(instances: &[Instance]) -> Vec<Violation> {
    let apiservers: Vec<&Instance> =
        instances.iter().filter(|i| i.component == Component::KubeApiserver).collect();
    let (Some(oldest), Some(newest)) = (
        apiservers.iter().map(|i| i.version.minor_version()).min(),
        apiservers.iter().map(|i| i.version.minor_version()).max(),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut flag = |i: &Instance, rule: String| out.push(Violation { instance: i.clone(), rule });
    for i in instances {
        let m = i.version.minor_version();
        let ahead = m.minors_ahead_of(oldest);
        match i.component {
            Component::KubeApiserver => {
                if newest.minors_ahead_of(oldest) > 1 {
                    flag(
                        i,
                        format!(
                            "HA kube-apiservers must be within one minor of each other (oldest {oldest}, newest {newest})"
                        ),
                    );
                }
            }
            Component::KubeControllerManager
            | Component::KubeScheduler
            | Component::CloudControllerManager => {
                if ahead > 0 {
                    flag(i, format!("must not be newer than the oldest kube-apiserver ({oldest})"));
                } else if ahead < -1 {
                    flag(
                        i,
                        format!("may be at most one minor older than the oldest kube-apiserver ({oldest})"),
                    );
                }
            }
            Component::Kubelet | Component::KubeProxy => {
                let lag = node_max_lag(m);
                if ahead > 0 {
                    flag(
                        i,
                        format!(
                            "must not be newer than the oldest kube-apiserver ({oldest}); upgrade the control plane first"
                        ),
                    );
                } else if ahead.saturating_neg() > lag {
                    flag(
                        i,
                        format!(
                            "may be at most {lag} minors older than the oldest kube-apiserver ({oldest}); upgrade this node"
                        ),
                    );
                }
            }
            Component::Kubectl => {
                // The window is the overlap of ±1 around every apiserver.
                if m.minors_ahead_of(oldest) > 1 || newest.minors_ahead_of(m) > 1 {
                    flag(i, format!("must be within one minor of every kube-apiserver ({oldest}..{newest})"));
                }
            }
        }
    }
    // kube-proxy within ±lag of the kubelet on the same node.
    for proxy in instances.iter().filter(|i| i.component == Component::KubeProxy) {
        if let Some(kubelet) =
            instances.iter().find(|i| i.component == Component::Kubelet && i.location == proxy.location)
        {
            let lag = node_max_lag(proxy.version.minor_version());
            let d = proxy.version.minor_version().minors_ahead_of(kubelet.version.minor_version());
            if d.abs() > lag {
                out.push(Violation {
                    instance: proxy.clone(),
                    rule: format!(
                        "must be within {lag} minors of the kubelet on the same node ({})",
                        kubelet.version
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inst(component: Component, location: &str, v: &str) -> Instance {
        Instance { component, location: location.into(), version: v.parse().unwrap() }
    }

    #[test]
    fn a_consistent_cluster_has_no_violation() {
        let c = [
            inst(Component::KubeApiserver, "cp-1", "1.37.1"),
            inst(Component::KubeApiserver, "cp-2", "1.36.4"),
            inst(Component::KubeControllerManager, "cp-1", "1.36.4"),
            inst(Component::KubeScheduler, "cp-1", "1.36.4"),
            inst(Component::Kubelet, "w-1", "1.33.0"),
            inst(Component::KubeProxy, "w-1", "1.33.0"),
            inst(Component::Kubectl, "local", "1.37.0"),
        ];
        assert_eq!(check(&c), Vec::<Violation>::new());
    }

    #[test]
    fn each_rule_names_the_instance() {
        let c = [
            inst(Component::KubeApiserver, "cp-1", "1.37.1"),
            inst(Component::KubeApiserver, "cp-2", "1.35.8"),
            inst(Component::KubeControllerManager, "cp-2", "1.36.0"),
            inst(Component::KubeScheduler, "cp-2", "1.33.0"),
            inst(Component::Kubelet, "w-new", "1.36.0"),
            inst(Component::Kubelet, "w-old", "1.31.9"),
            inst(Component::KubeProxy, "w-1", "1.35.0"),
            inst(Component::Kubelet, "w-1", "1.31.0"),
            inst(Component::Kubectl, "local", "1.38.0"),
        ];
        let v = check(&c);
        let named = |loc: &str, comp: Component| {
            v.iter().any(|x| x.instance.location == loc && x.instance.component == comp)
        };
        assert!(named("cp-1", Component::KubeApiserver) && named("cp-2", Component::KubeApiserver));
        assert!(named("cp-2", Component::KubeControllerManager), "newer than the oldest apiserver");
        assert!(named("cp-2", Component::KubeScheduler), "two minors behind");
        assert!(named("w-new", Component::Kubelet), "newer than the oldest apiserver");
        assert!(named("w-old", Component::Kubelet), "four minors behind");
        assert!(named("w-1", Component::KubeProxy), "four minors from its kubelet");
        assert!(named("local", Component::Kubectl));
        assert!(v.iter().find(|x| x.instance.location == "w-old").unwrap().rule.contains("at most 3 minors"));
    }

    #[test]
    fn old_kubelets_get_the_old_two_minor_window() {
        let c = [inst(Component::KubeApiserver, "cp", "1.27.0"), inst(Component::Kubelet, "w", "1.24.0")];
        assert_eq!(check(&c).len(), 1);
        let c = [inst(Component::KubeApiserver, "cp", "1.28.0"), inst(Component::Kubelet, "w", "1.25.0")];
        assert!(check(&c).is_empty());
    }

    proptest! {
        /// A kubelet is compliant exactly when 0 <= apiserver - kubelet <= lag.
        #[test]
        fn kubelet_rule_matches_its_definition(api in 20u32..40, node in 15u32..45) {
            let c = [
                inst(Component::KubeApiserver, "cp", &format!("1.{api}.0")),
                inst(Component::Kubelet, "w", &format!("1.{node}.0")),
            ];
            let lag = if node >= 25 { 3 } else { 2 };
            let ok = node <= api && api - node <= lag;
            prop_assert_eq!(check(&c).is_empty(), ok);
        }
    }
}
