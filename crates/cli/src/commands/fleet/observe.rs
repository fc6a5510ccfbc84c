//! What the driver observes about members: versions (control plane, kubelets), node images,
//! the images offered to them, and whether they can be reached — turned into core's
//! [`MemberFacts`].
//!
//! Node images. A node's image is the annotation `refit.dev/node-image: FAMILY/VERSION` (e.g.
//! `ubuntu-2404/202606.10.0`), written by whatever builds the node (on the sandbox:
//! `refit sandbox upgrade-node NODE --to V --node-images FAMILY=VERSION`). The images offered to
//! a member come from its node-image source, a file listing `FAMILY/VERSION` entries. A member
//! upgrade that moves images passes the targets to `refit upgrade` as
//! `REFIT_NODE_IMAGES=FAMILY=VERSION[,FAMILY=VERSION]`, which the node action inherits (the
//! sandbox's upgrade-node reads it; an exec action's script can).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use refit_core::Version;
use refit_core::fleet::{FleetMember, MemberFacts, MemberVersions, NodeImage};
use refit_store::fleet::MemberRecord;

/// The node annotation naming the node's image.
pub const NODE_IMAGE_ANNOTATION: &str = "refit.dev/node-image";

/// How long observing one member may take before it counts as unreachable.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses `FAMILY/VERSION` (core's rule).
pub fn parse_image(s: &str) -> Result<NodeImage, String> {
    NodeImage::parse(s)
}

/// Reads a node-image source file (core parses it).
pub fn read_image_source(path: &Path) -> Result<Vec<NodeImage>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_image_source(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the text of a node-image source file (core's rule).
pub fn parse_image_source(text: &str) -> Result<Vec<NodeImage>, String> {
    refit_core::fleet::parse_image_source(text)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// The fleet as strategy resolution sees it.
pub fn fleet_members(members: &[MemberRecord]) -> Vec<FleetMember> {
    members
        .iter()
        .map(|m| FleetMember {
            name: m.name.clone(),
            labels: m.labels.clone(),
            update_group: m.update_group.clone(),
        })
        .collect()
}

/// Facts without looking at the cluster (window and budget only).
pub fn static_facts(m: &MemberRecord) -> MemberFacts {
    MemberFacts {
        versions: MemberVersions::default(),
        window: m.maintenance_window.clone(),
        unavailable: None,
        pending_budget_seconds: m.pending_budget_seconds,
    }
}

/// Looks at the member's cluster; an unreachable member is `unavailable` with the reason.
pub async fn observe(m: &MemberRecord) -> MemberFacts {
    let mut facts = static_facts(m);
    match tokio::time::timeout(OBSERVE_TIMEOUT, versions(m)).await {
        Ok(Ok(v)) => facts.versions = v,
        Ok(Err(e)) => facts.unavailable = Some(e),
        Err(_) => facts.unavailable = Some(format!("no answer within {}s", OBSERVE_TIMEOUT.as_secs())),
    }
    facts
}

async fn versions(m: &MemberRecord) -> Result<MemberVersions, String> {
    let target = refit_kube::ClusterTarget {
        kubeconfig: m.kubeconfig.as_ref().map(Into::into),
        context: m.context.clone(),
    };
    let conn = refit_kube::connect(&target).await.map_err(|e| e.to_string())?;
    let control_plane =
        refit_kube::apis::oldest_apiserver_version(&conn).await.map_err(|e| first_line(&e.to_string()))?;
    let nodes = Api::<Node>::all(conn.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing nodes: {}", first_line(&e.to_string())))?
        .items;
    let kubelets: Option<Version> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref()?.kubelet_version.parse::<Version>().ok())
        .min();
    let mut node_images: Vec<NodeImage> = nodes
        .iter()
        .filter_map(|n| n.metadata.annotations.as_ref()?.get(NODE_IMAGE_ANNOTATION))
        .filter_map(|a| parse_image(a).ok())
        .collect();
    // One entry per family: the oldest image of the family (the pool is "at" its oldest node).
    node_images.sort_by(|a, b| {
        a.family
            .cmp(&b.family)
            .then_with(|| refit_core::fleet::target::compare_image_versions(&a.version, &b.version))
    });
    node_images.dedup_by(|b, a| a.family == b.family);
    let available_node_images = match &m.node_image_source {
        Some(src) => read_image_source(Path::new(src))?,
        None => Vec::new(),
    };
    Ok(MemberVersions {
        control_plane: Some(control_plane),
        nodes: kubelets,
        node_images,
        available_node_images,
    })
}

/// Parses `FAMILY=VERSION[,FAMILY=VERSION]` (the `--node-images` / REFIT_NODE_IMAGES form).
pub fn parse_image_targets(spec: Option<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in spec.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((f, v)) if !f.is_empty() && !v.is_empty() && !f.contains('/') && !v.contains('/') => {
                out.insert(f.to_string(), v.to_string());
            }
            _ => {
                return Err(crate::output::usage(format!(
                    "--node-images '{item}': expected FAMILY=VERSION (e.g. ubuntu-2404=202606.10.0)"
                )));
            }
        }
    }
    Ok(out)
}

/// The node's image annotation, if any.
pub fn node_image_of(node: &Node) -> Option<String> {
    node.metadata.annotations.as_ref()?.get(NODE_IMAGE_ANNOTATION).cloned()
}

/// Moves the node's image to the target of its family (a node without an image, or of a
/// family without a target, keeps what it has). Returns the node's image afterwards.
pub async fn move_node_image(
    client: &kube::Client,
    node: &str,
    current: Option<&str>,
    targets: &BTreeMap<String, String>,
) -> anyhow::Result<Option<String>> {
    let Some(cur) = current.and_then(|c| parse_image(c).ok()) else { return Ok(current.map(str::to_string)) };
    let Some(version) = targets.get(&cur.family) else { return Ok(current.map(str::to_string)) };
    let image = format!("{}/{version}", cur.family);
    let patch = serde_json::json!({"metadata": {"annotations": {NODE_IMAGE_ANNOTATION: image}}});
    Api::<Node>::all(client.clone())
        .patch(node, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(|e| anyhow::anyhow!("setting the node image of {node}: {e}"))?;
    Ok(Some(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_sources_parse_or_say_why() {
        assert_eq!(
            parse_image("ubuntu-2404/202606.10.0").unwrap(),
            NodeImage { family: "ubuntu-2404".into(), version: "202606.10.0".into() }
        );
        for bad in ["", "ubuntu", "/1", "u/", "a/b/c"] {
            assert!(parse_image(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("images.yaml");
        std::fs::write(&p, "- ubuntu/1.0\n- {family: azl, version: '3.1'}\n").unwrap();
        assert_eq!(read_image_source(&p).unwrap().len(), 2);
        std::fs::write(&p, "- ubuntu\n").unwrap();
        assert!(read_image_source(&p).unwrap_err().contains("FAMILY/VERSION"));
        std::fs::write(&p, "images: 3\n").unwrap();
        assert!(read_image_source(&p).is_err());
    }
}
