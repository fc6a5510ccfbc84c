//! What the driver observes about members — versions (control plane, kubelets), node images,
//! the images offered to them, whether they can be reached — turned into core's
//! [`MemberFacts`]; and a member's binding to its cluster.
//!
//! Observation is behind [`Observer`] (the real one reads the Kubernetes API; tests give
//! facts). [`observe_all`] looks at members concurrently, at most [`CONCURRENCY`] at once and
//! each within [`OBSERVE_TIMEOUT`]: one dead member costs one timeout, not one per member
//! before it, and never holds the driver (its lease is renewed by a timer anyway).
//!
//! Binding. A member records the UID of its cluster's `kube-system` namespace when it is
//! added ([`cluster_identity`]). Every observation and every launch reads it again
//! ([`check_bound`]): a kubeconfig that now reaches another cluster (a swapped file, a reused
//! context name) makes the member unavailable with the reason, and nothing is launched at it.
//!
//! Node images. A node's image is the annotation `refit.dev/node-image: FAMILY/VERSION` (e.g.
//! `ubuntu-2404/202606.10.0`), written by whatever builds the node (on the sandbox:
//! `refit sandbox upgrade-node NODE --to V --node-images FAMILY=VERSION`). The images offered to
//! a member come from its node-image source, a file listing `FAMILY/VERSION` entries. A member
//! upgrade that moves images passes the targets to `refit upgrade` as
//! `REFIT_NODE_IMAGES=FAMILY=VERSION[,FAMILY=VERSION]`, which the node action inherits (core's
//! `fleet::image_targets_text` writes that form, `fleet::parse_image_targets` reads it).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use refit_core::Version;
use refit_core::fleet::{FleetMember, MemberFacts, MemberVersions, NodeImage};
use refit_store::fleet::MemberRecord;

/// The node annotation naming the node's image (core's, which the sandbox writes).
pub use refit_core::fleet::NODE_IMAGE_ANNOTATION;

/// How long observing one member may take before it counts as unreachable.
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);

/// How many members are observed at once.
pub const CONCURRENCY: usize = 16;

/// Looks at one member's cluster. An unreachable (or rebound) member is `unavailable` with the
/// reason; never an error.
pub trait Observer: Send + Sync + 'static {
    /// The member as it is now.
    fn observe(&self, member: &MemberRecord) -> impl Future<Output = MemberFacts> + Send;
}

/// The real observer: the member's kubeconfig and context, through the Kubernetes API.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeObserver;

impl Observer for KubeObserver {
    async fn observe(&self, m: &MemberRecord) -> MemberFacts {
        let mut facts = static_facts(m);
        match versions(m).await {
            Ok(v) => facts.versions = v,
            Err(e) => facts.unavailable = Some(e),
        }
        facts
    }
}

/// Observes `members` concurrently ([`CONCURRENCY`] at once), each within `timeout`; the facts
/// by member name.
pub async fn observe_all<O: Observer>(
    observer: &Arc<O>,
    members: &[MemberRecord],
    timeout: Duration,
) -> BTreeMap<String, MemberFacts> {
    futures::stream::iter(members.iter().cloned())
        .map(|m| {
            let observer = observer.clone();
            async move {
                let f = observe_within(observer.as_ref(), &m, timeout).await;
                (m.name, f)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// One member, within `timeout` (no answer: unavailable, saying so).
pub async fn observe_within<O: Observer>(observer: &O, m: &MemberRecord, timeout: Duration) -> MemberFacts {
    match tokio::time::timeout(timeout, observer.observe(m)).await {
        Ok(f) => f,
        Err(_) => MemberFacts {
            unavailable: Some(format!("no answer within {}s", timeout.as_secs())),
            ..static_facts(m)
        },
    }
}

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

fn target_of(m: &MemberRecord) -> refit_kube::ClusterTarget {
    refit_kube::ClusterTarget {
        kubeconfig: m.kubeconfig.as_ref().map(Into::into),
        context: m.context.clone(),
    }
}

/// The identity of the cluster a kubeconfig and context reach: its `kube-system` namespace's UID.
pub async fn cluster_identity(kubeconfig: &Path, context: &str) -> Result<String, String> {
    let target = refit_kube::ClusterTarget {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        context: Some(context.to_string()),
    };
    let conn = refit_kube::connect(&target).await.map_err(|e| first_line(&e.to_string()))?;
    identity_of(&conn).await
}

async fn identity_of(conn: &refit_kube::Connection) -> Result<String, String> {
    let uid = refit_kube::node::cluster_uid(conn).await.map_err(|e| first_line(&e.to_string()))?;
    if uid.is_empty() {
        return Err("the cluster's kube-system namespace has no UID".into());
    }
    Ok(uid)
}

/// Whether the cluster `conn` reaches is the one `m` was added with (why not, when not).
pub async fn check_bound(m: &MemberRecord, conn: &refit_kube::Connection) -> Result<(), String> {
    let Some(bound) = &m.cluster_uid else {
        return Err(format!(
            "member {} is bound to no cluster (added before refit recorded cluster identities): run refit fleet member update {} --kubeconfig FILE --context NAME",
            m.name, m.name
        ));
    };
    let found = identity_of(conn).await?;
    refit_core::fleet::binding::same(bound, &found).map_err(|e| {
        format!(
            "its kubeconfig now reaches another cluster (kube-system UID {}, the member was added with {}): refusing to touch it; fix the kubeconfig, or remove the member and add it again",
            e.found, e.bound
        )
    })
}

/// Connects to the member's cluster and checks it is the one the member is bound to.
pub async fn connect_bound(m: &MemberRecord) -> Result<refit_kube::Connection, String> {
    let conn = refit_kube::connect(&target_of(m)).await.map_err(|e| first_line(&e.to_string()))?;
    check_bound(m, &conn).await?;
    Ok(conn)
}

async fn versions(m: &MemberRecord) -> Result<MemberVersions, String> {
    let conn = connect_bound(m).await?;
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

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A member whose API server hangs; counts how many are looked at at once.
    #[derive(Default)]
    struct Hangs {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    struct Leaving<'a>(&'a AtomicUsize);

    impl Drop for Leaving<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Observer for Hangs {
        async fn observe(&self, _m: &MemberRecord) -> MemberFacts {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            let _leaving = Leaving(&self.now);
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            MemberFacts::default()
        }
    }

    #[tokio::test]
    async fn members_are_observed_at_once_and_each_hanging_one_ends_in_its_timeout() {
        let members: Vec<MemberRecord> =
            (0..40).map(|i| MemberRecord { name: format!("m{i}"), ..Default::default() }).collect();
        let hangs = Arc::new(Hangs::default());
        let facts = observe_all(&hangs, &members, Duration::from_millis(200)).await;
        assert_eq!(facts.len(), 40);
        assert!(facts.values().all(|f| f.unavailable.as_deref() == Some("no answer within 0s")), "{facts:?}");
        // Not one after another, and never more than the bound at once.
        assert_eq!(hangs.most.load(Ordering::SeqCst), CONCURRENCY);
        assert_eq!(hangs.now.load(Ordering::SeqCst), 0, "every hanging observation was dropped");
    }
}
