//! A member's binding to its cluster: the UID of the cluster's `kube-system` namespace,
//! recorded when the member is added. Changing how a member is reached (its kubeconfig or
//! context) must not change *which* cluster it is: a swapped file or a reused context name
//! would otherwise point every later run at a cluster nobody chose.

/// The cluster UID a member keeps after its access changed, given the one it `recorded` (None:
/// added before refit recorded identities) and the one its new access `found`: the same
/// cluster keeps its binding, an unbound member is bound now, another cluster is refused.
pub fn rebind(recorded: Option<&str>, found: &str) -> Result<String, OtherCluster> {
    if let Some(bound) = recorded {
        same(bound, found)?;
    }
    Ok(found.to_string())
}

/// Whether access that `found` a cluster may be used for a member `bound` to one: only when
/// it is the same cluster. (A member bound to none is touched by nothing until its access is
/// updated, which binds it: [`rebind`].)
pub fn same(bound: &str, found: &str) -> Result<(), OtherCluster> {
    if bound == found {
        Ok(())
    } else {
        Err(OtherCluster { bound: bound.to_string(), found: found.to_string() })
    }
}

/// The member's new access reaches another cluster than the one it is bound to (nothing is
/// changed: to bind another cluster, remove the member and add it again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the member's access reaches another cluster (kube-system UID {found}) than its own ({bound}): a member stays bound to its cluster; remove it and add it again to bind another"
)]
pub struct OtherCluster {
    /// The UID the member is bound to.
    pub bound: String,
    /// The UID its new access reaches.
    pub found: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_cluster_keeps_its_binding() {
        assert_eq!(rebind(Some("uid-a"), "uid-a"), Ok("uid-a".to_string()));
    }

    #[test]
    fn an_unbound_member_is_bound_to_what_its_access_reaches() {
        assert_eq!(rebind(None, "uid-a"), Ok("uid-a".to_string()));
    }

    #[test]
    fn only_the_bound_cluster_may_be_used() {
        assert_eq!(same("uid-a", "uid-a"), Ok(()));
        assert_eq!(
            same("uid-a", "uid-b"),
            Err(OtherCluster { bound: "uid-a".into(), found: "uid-b".into() })
        );
    }

    #[test]
    fn another_cluster_is_refused_naming_both() {
        let e = rebind(Some("uid-a"), "uid-b").unwrap_err();
        assert_eq!(e, OtherCluster { bound: "uid-a".into(), found: "uid-b".into() });
        let shown = e.to_string();
        assert!(shown.contains("uid-a") && shown.contains("uid-b"), "{shown}");
        assert!(!shown.contains("--"), "core names no flag: {shown}");
    }
}
