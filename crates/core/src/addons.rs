//! Cluster services (add-ons) after an upgrade: which kube-proxy and CoreDNS images a target
//! release pairs with, and how an image reference gets a new tag.
//!
//! kubeadm moves kube-proxy to the control plane's own version and CoreDNS to the version its
//! constants pair with the minor; an upgrade that leaves them behind leaves kube-proxy outside
//! the skew policy and CoreDNS unsupported. The catalog records kubeadm's pairing per minor,
//! so the targets are a lookup. Rewriting only the tag keeps whatever registry the cluster
//! pulls from (a mirror, an air-gapped registry with a port): Refit never decides where images
//! come from, only which version runs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::version::Version;

/// The image tags the add-ons should run after an upgrade; `None` leaves that add-on alone
/// (the catalog does not know the pairing, or the caller opted out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonTargets {
    /// kube-proxy image tag, e.g. `v1.37.1`.
    pub kube_proxy: Option<String>,
    /// CoreDNS image tag, e.g. `v1.14.6`.
    pub coredns: Option<String>,
    /// Who moves them (runs journaled before this field existed: refit).
    #[serde(default)]
    pub owner: AddonOwner,
}

/// Who upgrades the add-ons. kubeadm's `upgrade apply` (and, since 1.28, the last
/// control-plane node's `upgrade node`) upgrades CoreDNS and kube-proxy itself: when the nodes
/// are upgraded by kubeadm, refit patching them too would fight kubeadm's own add-on phase, so
/// refit only checks that they arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddonOwner {
    /// Refit patches the images and awaits the rollouts.
    #[default]
    Refit,
    /// kubeadm moved them; refit verifies the versions and awaits the rollouts.
    Kubeadm,
}

impl AddonOwner {
    /// The owner when nodes are upgraded by `action` (a plan file's action).
    pub fn for_action(action: &crate::planfile::Action) -> AddonOwner {
        match action {
            crate::planfile::Action::Ssh { recipe, .. } if recipe == "kubeadm" => AddonOwner::Kubeadm,
            _ => AddonOwner::Refit,
        }
    }
}

/// What the catalog pairs with `target`: kube-proxy at the target's own version (as kubeadm
/// tags it: `v` + version, `+` written `_` because tags cannot contain `+`), CoreDNS at the
/// version kubeadm deploys with the target's minor. A minor the catalog does not know gets no
/// CoreDNS target: guessing a DNS version would be worse than keeping the running one.
pub fn targets(catalog: &Catalog, target: &Version) -> AddonTargets {
    AddonTargets {
        kube_proxy: Some(kubernetes_image_tag(target)),
        coredns: catalog.release(target.minor_version()).map(|r| r.kubeadm.coredns.clone()),
        owner: AddonOwner::Refit,
    }
}

/// The tag Kubernetes images carry for `version`: `v1.37.1`, `v1.37.1-rc.0`, `v1.37.1_k3s1`
/// (kubeadm's `KubernetesVersionToImageTag`: `+` is not allowed in a tag).
pub fn kubernetes_image_tag(version: &Version) -> String {
    version.git_version().replace('+', "_")
}

/// Why an image reference or tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The reference has no repository name.
    #[error("'{0}' is not an image reference (expected [registry[:port]/]repository[:tag][@digest])")]
    Reference(String),
    /// The tag has characters a registry refuses, or is too long.
    #[error(
        "'{0}' is not a valid image tag (letters, digits, '_', '.', '-'; at most 128, not starting with '.' or '-')"
    )]
    Tag(String),
}

/// An image reference split into its parts: `registry.example:5000/team/kube-proxy:v1.36.4@sha256:…`
/// is name `registry.example:5000/team/kube-proxy`, tag `v1.36.4`, digest `sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry (with port, if any) and repository path: everything before the tag.
    pub name: String,
    /// The tag, if written.
    pub tag: Option<String>,
    /// The digest (`algorithm:hex`), if written.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Splits a reference. The tag is the part after the last `:` of the last path segment,
    /// so a registry port (`host:5000/…`) is never mistaken for a tag.
    pub fn parse(image: &str) -> Result<ImageRef, ImageError> {
        let bad = || ImageError::Reference(image.to_string());
        let s = image.trim();
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) if !d.is_empty() && d.contains(':') && !d.contains('@') => (r, Some(d.to_string())),
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        // The tag is after the last `:` of the last path segment (a registry port is not).
        let last_segment = rest.rsplit('/').next().unwrap_or(rest);
        let (name, tag) = match last_segment.rfind(':') {
            Some(_) => {
                let (name, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
                if !valid_tag(tag) {
                    return Err(bad());
                }
                (name, Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() || name.ends_with('/') || name.starts_with('/') || name.contains("//") {
            return Err(bad());
        }
        Ok(ImageRef { name: name.to_string(), tag, digest })
    }

    /// The same image at `tag`. The digest is dropped: it pins the old image, and a runtime
    /// given both pulls by digest, so keeping it would silently keep the old version.
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef, ImageError> {
        if !valid_tag(tag) {
            return Err(ImageError::Tag(tag.to_string()));
        }
        Ok(ImageRef { name: self.name.clone(), tag: Some(tag.to_string()), digest: None })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `image` with its tag replaced by `tag`, registry and repository kept, digest dropped:
/// `registry.k8s.io/kube-proxy:v1.36.4` → `registry.k8s.io/kube-proxy:v1.37.1`.
pub fn retag(image: &str, tag: &str) -> Result<String, ImageError> {
    Ok(ImageRef::parse(image)?.with_tag(tag)?.to_string())
}

/// Whether `image` already runs `tag` (its written tag equals it). A reference without a tag
/// (`latest` implied) or with another tag does not.
pub fn has_tag(image: &str, tag: &str) -> bool {
    ImageRef::parse(image).is_ok_and(|r| r.tag.as_deref() == Some(tag))
}

/// The OCI distribution spec's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    tag.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixture;
    use proptest::prelude::*;

    #[test]
    fn targets_follow_the_catalog_pairing_of_the_target_minor() {
        let c = fixture::catalog();
        let t = targets(&c, &Version::new(1, 37, 1));
        assert_eq!(t.kube_proxy.as_deref(), Some("v1.37.1"));
        assert_eq!(t.coredns.as_deref(), Some("v1.14.6"));
        let t = targets(&c, &Version::new(1, 36, 4));
        assert_eq!(
            t,
            AddonTargets {
                kube_proxy: Some("v1.36.4".into()),
                coredns: Some("v1.14.2".into()),
                owner: AddonOwner::Refit
            }
        );
    }

    #[test]
    fn kubeadm_owns_the_add_ons_when_it_upgrades_the_nodes() {
        use crate::planfile::PlanFile;
        let action = |yaml: &str| PlanFile::from_yaml(yaml).unwrap().action.unwrap();
        assert_eq!(AddonOwner::for_action(&action("action: {type: ssh}")), AddonOwner::Kubeadm);
        assert_eq!(AddonOwner::for_action(&action("action: {type: exec, command: [x]}")), AddonOwner::Refit);
        assert_eq!(
            AddonOwner::for_action(&action("action: {type: replace, create: [x]}")),
            AddonOwner::Refit
        );
        // Specs journaled before the owner existed read as refit's.
        let old: AddonTargets = serde_json::from_str(r#"{"kube_proxy":"v1.37.1","coredns":null}"#).unwrap();
        assert_eq!(old.owner, AddonOwner::Refit);
    }

    #[test]
    fn the_shipped_catalog_pairs_the_testbed_releases() {
        let c = Catalog::embedded().unwrap();
        assert_eq!(targets(&c, &Version::new(1, 37, 1)).coredns.as_deref(), Some("v1.14.6"));
        assert_eq!(targets(&c, &Version::new(1, 35, 8)).coredns.as_deref(), Some("v1.13.1"));
    }

    #[test]
    fn an_unknown_minor_gets_no_coredns_target() {
        let c = fixture::catalog();
        let t = targets(&c, &Version::new(1, 40, 0));
        assert_eq!(t.kube_proxy.as_deref(), Some("v1.40.0"));
        assert_eq!(t.coredns, None);
    }

    #[test]
    fn kube_proxy_tags_are_written_as_kubeadm_writes_them() {
        assert_eq!(kubernetes_image_tag(&"1.37.1-rc.0".parse().unwrap()), "v1.37.1-rc.0");
        assert_eq!(kubernetes_image_tag(&"1.37.1+k3s1".parse().unwrap()), "v1.37.1_k3s1");
    }

    #[test]
    fn retag_keeps_registry_port_and_repository_and_drops_the_digest() {
        let cases = [
            ("registry.k8s.io/kube-proxy:v1.36.4", "registry.k8s.io/kube-proxy:v1.37.1"),
            ("registry.k8s.io/kube-proxy", "registry.k8s.io/kube-proxy:v1.37.1"),
            ("kube-proxy:v1.36.4", "kube-proxy:v1.37.1"),
            ("mirror.local:5000/k8s/kube-proxy:v1.36.4", "mirror.local:5000/k8s/kube-proxy:v1.37.1"),
            ("mirror.local:5000/kube-proxy", "mirror.local:5000/kube-proxy:v1.37.1"),
            ("[::1]:5000/kube-proxy:old", "[::1]:5000/kube-proxy:v1.37.1"),
            (
                "registry.k8s.io/kube-proxy:v1.36.4@sha256:0123456789abcdef",
                "registry.k8s.io/kube-proxy:v1.37.1",
            ),
            ("registry.k8s.io/kube-proxy@sha256:0123456789abcdef", "registry.k8s.io/kube-proxy:v1.37.1"),
        ];
        for (from, to) in cases {
            assert_eq!(retag(from, "v1.37.1").unwrap(), to, "{from}");
        }
        assert_eq!(
            retag("registry.k8s.io/coredns/coredns:v1.14.2", "v1.14.6").unwrap(),
            "registry.k8s.io/coredns/coredns:v1.14.6"
        );
    }

    #[test]
    fn malformed_references_and_tags_are_refused() {
        for bad in [
            "",
            " ",
            ":v1",
            "/kube-proxy:v1",
            "a//b:v1",
            "reg/:v1",
            "img:bad tag",
            "img@",
            "img@nodigest",
            "img:",
        ] {
            assert!(matches!(ImageRef::parse(bad), Err(ImageError::Reference(_))), "{bad:?}");
        }
        for bad in ["", ".v1", "-v1", "v1+k3s", "v1/2", &"x".repeat(129)] {
            assert!(matches!(retag("img:v0", bad), Err(ImageError::Tag(_))), "{bad:?}");
        }
    }

    #[test]
    fn has_tag_compares_the_written_tag_only() {
        assert!(has_tag("registry.k8s.io/kube-proxy:v1.37.1", "v1.37.1"));
        assert!(has_tag("registry.k8s.io/kube-proxy:v1.37.1@sha256:ab", "v1.37.1"));
        assert!(!has_tag("registry.k8s.io/kube-proxy:v1.36.4", "v1.37.1"));
        assert!(!has_tag("registry.k8s.io/kube-proxy", "v1.37.1"));
        assert!(!has_tag("host:5000/kube-proxy", "5000/kube-proxy"));
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?"
    }
    fn registry() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(
            ("[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}", proptest::option::of(1u16..65535)).prop_map(
                |(host, port)| match port {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                },
            ),
        )
    }
    fn tag() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"
    }

    proptest! {
        #[test]
        fn retag_sets_exactly_the_tag(
            reg in registry(),
            path in proptest::collection::vec(component(), 1..4),
            old in proptest::option::of(tag()),
            digest in proptest::option::of("[0-9a-f]{8,64}"),
            new in tag(),
        ) {
            let name = match &reg {
                Some(r) => format!("{r}/{}", path.join("/")),
                None => path.join("/"),
            };
            let mut image = name.clone();
            if let Some(t) = &old { image = format!("{image}:{t}"); }
            if let Some(d) = &digest { image = format!("{image}@sha256:{d}"); }

            let parsed = ImageRef::parse(&image).unwrap();
            prop_assert_eq!(&parsed.name, &name);
            prop_assert_eq!(&parsed.tag, &old);
            prop_assert_eq!(parsed.to_string(), image.clone());

            let out = retag(&image, &new).unwrap();
            prop_assert_eq!(&out, &format!("{name}:{new}"));
            prop_assert!(has_tag(&out, &new));
            // Idempotent: retagging to the same tag changes nothing.
            prop_assert_eq!(retag(&out, &new).unwrap(), out);
        }
    }
}
