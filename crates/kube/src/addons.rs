//! Cluster services after all nodes: kube-proxy and CoreDNS moved to the versions the
//! catalog pairs with the target ([`refit_core::addons::targets`]), each rolled out and
//! awaited before the next.
//!
//! What kubeadm's `upgrade apply` does to its add-ons, without kubeadm: only the image tag of
//! the add-on's own container changes (registry, repository, every other field and container
//! stay as the cluster has them), so a mirror registry or a customised manifest survives. An
//! add-on that is absent (managed elsewhere, replaced by a CNI's proxy), has no container of
//! its name, or updates `OnDelete` is skipped with the reason, never half-changed. An add-on
//! already at its target is not patched, but its rollout is still awaited: a re-run after a
//! crash mid-rollout waits for the pods instead of declaring success.
//!
//! The wait is a watch on the one object (no polling), and ends as `kubectl rollout status`
//! does: the controller has seen the latest generation, every pod is updated, and every pod
//! is available. A Deployment whose progress deadline passes fails at once.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodSpec;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use refit_core::addons::{AddonOwner, has_tag, retag};
use serde_json::json;

pub use refit_core::addons::AddonTargets;

use crate::{Connection, Error};

/// Namespace kubeadm (and every distribution following it) puts the add-ons in.
pub const NAMESPACE: &str = "kube-system";
/// Field manager of Refit's patches (shows in managedFields who changed the image).
const MANAGER: &str = "refit";
/// Server-side timeout of each watch request: below the client's read timeout, so a quiet
/// watch is ended by the apiserver and re-opened, not cut by the client.
const WATCH_TIMEOUT_SECS: u32 = 25;
/// Re-reads after a conflicting write before giving up.
const CONFLICT_RETRIES: usize = 5;

/// What happens to the add-ons, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddonEvent {
    /// The image is being changed (full image references).
    Patching {
        /// `kube-proxy` or `coredns`.
        addon: String,
        /// Image before.
        from: String,
        /// Image after.
        to: String,
    },
    /// Rollout progress (reported when a number changes).
    Rolling {
        /// The add-on.
        addon: String,
        /// Pods at the new template.
        updated: i32,
        /// Pods wanted.
        desired: i32,
        /// Pods available.
        available: i32,
    },
    /// Rolled out: every pod updated and available.
    Done {
        /// The add-on.
        addon: String,
    },
    /// Left alone, and why.
    Skipped {
        /// The add-on.
        addon: String,
        /// Why (absent, already at the target, no target, OnDelete...).
        reason: String,
    },
}

/// What [`upgrade_addons`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddonReport {
    /// `(addon, from image, to image)` for each add-on patched and rolled out.
    pub changed: Vec<(String, String, String)>,
    /// `(addon, reason)` for each add-on left alone.
    pub skipped: Vec<(String, String)>,
}

/// The kind of workload an add-on runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    DaemonSet,
    Deployment,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DaemonSet => "DaemonSet",
            Kind::Deployment => "Deployment",
        }
    }
}

/// One add-on: kubeadm's names for its workload and container.
struct Addon {
    name: &'static str,
    kind: Kind,
    container: &'static str,
}

/// In kubeadm's order (`upgrade apply` runs addon/coredns, then addon/kube-proxy).
const ADDONS: [Addon; 2] = [
    Addon { name: "coredns", kind: Kind::Deployment, container: "coredns" },
    Addon { name: "kube-proxy", kind: Kind::DaemonSet, container: "kube-proxy" },
];

/// Moves CoreDNS and kube-proxy in `kube-system` to `targets`, one after the other, each
/// awaited until rolled out or `timeout` (per add-on) passes. Idempotent: a second call
/// patches nothing and reports both as skipped.
pub async fn upgrade_addons(
    conn: &Connection,
    targets: &AddonTargets,
    timeout: Duration,
    on_event: &(dyn Fn(AddonEvent) + Send + Sync),
) -> Result<AddonReport, Error> {
    let mut report = AddonReport::default();
    for addon in &ADDONS {
        let target = match addon.name {
            "coredns" => targets.coredns.as_deref(),
            _ => targets.kube_proxy.as_deref(),
        };
        match upgrade_one(conn, addon, target, targets.owner, timeout, on_event).await? {
            Outcome::Changed { from, to } => {
                on_event(AddonEvent::Done { addon: addon.name.to_string() });
                report.changed.push((addon.name.to_string(), from, to));
            }
            Outcome::Skipped(reason) => {
                on_event(AddonEvent::Skipped { addon: addon.name.to_string(), reason: reason.clone() });
                report.skipped.push((addon.name.to_string(), reason));
            }
        }
    }
    Ok(report)
}

enum Outcome {
    Changed { from: String, to: String },
    Skipped(String),
}

/// What the workload looks like now, kind-independently.
struct Current {
    image: Option<String>,
    containers: Vec<String>,
    resource_version: Option<String>,
    /// Why a changed template would move no pod (OnDelete, paused), if so.
    frozen: Option<String>,
}

async fn upgrade_one(
    conn: &Connection,
    addon: &Addon,
    target: Option<&str>,
    owner: AddonOwner,
    timeout: Duration,
    on_event: &(dyn Fn(AddonEvent) + Send + Sync),
) -> Result<Outcome, Error> {
    let what = format!("{} {NAMESPACE}/{}", addon.kind.name(), addon.name);
    let Some(target) = target else {
        return Ok(Outcome::Skipped(format!(
            "no target version for {} (the catalog has no pairing)",
            addon.name
        )));
    };
    for _ in 0..CONFLICT_RETRIES {
        let Some(current) = read(conn, addon).await? else {
            return Ok(Outcome::Skipped(format!(
                "no {what} (managed elsewhere, or replaced by another component)"
            )));
        };
        let Some(image) = current.image else {
            return Ok(Outcome::Skipped(format!(
                "{what} has no container named {} (containers: {})",
                addon.container,
                current.containers.join(", ")
            )));
        };
        if has_tag(&image, target) {
            if let Some(why) = current.frozen {
                return Ok(Outcome::Skipped(format!(
                    "already at {target} ({image}); {why}, so its rollout is not awaited"
                )));
            }
            // Not patched; a rollout a previous run started may still be under way.
            wait_rollout(conn, addon, 0, timeout, on_event).await?;
            return Ok(Outcome::Skipped(match owner {
                AddonOwner::Refit => format!("already at {target} ({image})"),
                AddonOwner::Kubeadm => format!("at {target}, moved by kubeadm ({image})"),
            }));
        }
        if owner == AddonOwner::Kubeadm {
            return Err(Error::Addon {
                addon: addon.name.to_string(),
                detail: format!(
                    "{what} runs {image}, but kubeadm's add-on phase should have moved it to {target}; \
                     refit leaves kubeadm's add-ons to kubeadm (see `kubeadm upgrade apply phase addon` on the first control-plane node)"
                ),
            });
        }
        if let Some(why) = current.frozen {
            return Ok(Outcome::Skipped(format!(
                "{what} {why}: changing its image would move no pod; update it by hand, or let it roll (RollingUpdate, unpaused) and run again"
            )));
        }
        let to = retag(&image, target)
            .map_err(|e| Error::Addon { addon: addon.name.to_string(), detail: e.to_string() })?;
        on_event(AddonEvent::Patching { addon: addon.name.to_string(), from: image.clone(), to: to.clone() });
        // Strategic merge on the container list (merged by name), guarded by the
        // resourceVersion we read: a concurrent change makes this a 409, and we read again.
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version},
            "spec": {"template": {"spec": {"containers": [{"name": addon.container, "image": to}]}}},
        });
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        let result = match addon.kind {
            Kind::DaemonSet => api::<DaemonSet>(conn)
                .patch(addon.name, &params, &Patch::Strategic(&patch))
                .await
                .map(|o| o.metadata.generation),
            Kind::Deployment => api::<Deployment>(conn)
                .patch(addon.name, &params, &Patch::Strategic(&patch))
                .await
                .map(|o| o.metadata.generation),
        };
        match result {
            Ok(generation) => {
                wait_rollout(conn, addon, generation.unwrap_or(0), timeout, on_event).await?;
                return Ok(Outcome::Changed { from: image, to });
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(addon = addon.name, "conflict patching the image; reading again");
                continue;
            }
            Err(e) => return Err(api_error(format!("patching the image of {what}"), e)),
        }
    }
    Err(Error::Addon {
        addon: addon.name.to_string(),
        detail: format!(
            "{what} changed under us {CONFLICT_RETRIES} times in a row; something keeps rewriting it"
        ),
    })
}

fn api<K>(conn: &Connection) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(conn.client.clone(), NAMESPACE)
}

fn api_error(context: String, e: kube::Error) -> Error {
    Error::Api { context, source: Box::new(e) }
}

async fn read(conn: &Connection, addon: &Addon) -> Result<Option<Current>, Error> {
    let ctx = || format!("reading {} {NAMESPACE}/{}", addon.kind.name(), addon.name);
    let (spec, rv, frozen) = match addon.kind {
        Kind::DaemonSet => {
            let Some(ds) =
                api::<DaemonSet>(conn).get_opt(addon.name).await.map_err(|e| api_error(ctx(), e))?
            else {
                return Ok(None);
            };
            let on_delete = ds
                .spec
                .update_strategy
                .as_ref()
                .and_then(|u| u.type_.as_deref())
                .is_some_and(|t| t == "OnDelete");
            let frozen = on_delete.then(|| "uses updateStrategy OnDelete".to_string());
            (ds.spec.template.spec, ds.metadata.resource_version, frozen)
        }
        Kind::Deployment => {
            let Some(d) =
                api::<Deployment>(conn).get_opt(addon.name).await.map_err(|e| api_error(ctx(), e))?
            else {
                return Ok(None);
            };
            let frozen = (d.spec.paused == Some(true)).then(|| "is paused".to_string());
            (d.spec.template.spec, d.metadata.resource_version, frozen)
        }
    };
    let containers = spec.map(|s: PodSpec| s.containers).unwrap_or_default();
    let image = containers.iter().find(|c| c.name == addon.container).and_then(|c| c.image.clone());
    Ok(Some(Current {
        image,
        containers: containers.iter().map(|c| c.name.clone()).collect(),
        resource_version: rv,
        frozen,
    }))
}

/// Where a rollout stands, read from the workload's status.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    generation: i64,
    observed: i64,
    desired: i32,
    updated: i32,
    available: i32,
    /// Pods of any template (a Deployment's old ReplicaSets included).
    total: i32,
    /// A Deployment's Progressing condition said ProgressDeadlineExceeded.
    deadline_exceeded: Option<String>,
}

impl Progress {
    fn complete(&self) -> bool {
        self.observed >= self.generation
            && self.updated == self.desired
            && self.total == self.desired
            && self.available == self.desired
    }

    /// Whether the controller has acted on the latest template.
    fn seen(&self) -> bool {
        self.observed >= self.generation
    }

    /// What is not ready yet, for a timeout message.
    fn pending(&self) -> String {
        let mut parts = Vec::new();
        if self.observed < self.generation {
            parts.push(format!(
                "the controller has not seen the change (observedGeneration {} < generation {})",
                self.observed, self.generation
            ));
        }
        parts.push(format!(
            "{} of {} pods updated, {} available{}",
            self.updated,
            self.desired,
            self.available,
            if self.total > self.desired {
                format!(", {} pods of the previous template remain", self.total - self.desired)
            } else {
                String::new()
            }
        ));
        parts.join("; ")
    }
}

fn daemonset_progress(ds: &DaemonSet, min_generation: i64) -> Progress {
    let st = ds.status.clone().unwrap_or_default();
    Progress {
        generation: ds.metadata.generation.unwrap_or(0).max(min_generation),
        observed: st.observed_generation.unwrap_or(0),
        desired: st.desired_number_scheduled,
        updated: st.updated_number_scheduled.unwrap_or(0),
        available: st.number_available.unwrap_or(0),
        // A DaemonSet runs one pod per node: old pods are the ones not updated.
        total: st.desired_number_scheduled,
        deadline_exceeded: None,
    }
}

fn deployment_progress(d: &Deployment, min_generation: i64) -> Progress {
    let st = d.status.clone().unwrap_or_default();
    let deadline_exceeded = st
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| c.message.clone().unwrap_or_default());
    Progress {
        generation: d.metadata.generation.unwrap_or(0).max(min_generation),
        observed: st.observed_generation.unwrap_or(0),
        desired: d.spec.replicas.unwrap_or(1),
        updated: st.updated_replicas.unwrap_or(0),
        available: st.available_replicas.unwrap_or(0),
        total: st.replicas.unwrap_or(0),
        deadline_exceeded,
    }
}

/// Watches the add-on until its rollout is complete, reporting progress when it changes.
/// `min_generation` is the generation our patch produced: an older view of the object (a
/// lagging cache) is never taken for the finished rollout.
async fn wait_rollout(
    conn: &Connection,
    addon: &Addon,
    min_generation: i64,
    timeout: Duration,
    on_event: &(dyn Fn(AddonEvent) + Send + Sync),
) -> Result<(), Error> {
    let mut last: Option<Progress> = None;
    let waited = tokio::time::timeout(timeout, async {
        match addon.kind {
            Kind::DaemonSet => {
                let of = |ds: &DaemonSet| daemonset_progress(ds, min_generation);
                watch_progress(api::<DaemonSet>(conn), addon, of, &mut last, on_event).await
            }
            Kind::Deployment => {
                let of = |d: &Deployment| deployment_progress(d, min_generation);
                watch_progress(api::<Deployment>(conn), addon, of, &mut last, on_event).await
            }
        }
    })
    .await;
    let what = format!("{} {NAMESPACE}/{}", addon.kind.name(), addon.name);
    match waited {
        Ok(Ok(())) => Ok(()),
        Ok(Err(detail)) => Err(Error::Addon { addon: addon.name.to_string(), detail }),
        Err(_) => Err(Error::Addon {
            addon: addon.name.to_string(),
            detail: format!(
                "{what} not rolled out after {}s: {} (see `kubectl -n {NAMESPACE} describe {} {}` and its pods)",
                timeout.as_secs(),
                last.map(|p| p.pending()).unwrap_or_else(|| "no status seen yet".to_string()),
                addon.kind.name().to_lowercase(),
                addon.name,
            ),
        }),
    }
}

async fn watch_progress<K>(
    api: Api<K>,
    addon: &Addon,
    progress_of: impl Fn(&K) -> Progress,
    last: &mut Option<Progress>,
    on_event: &(dyn Fn(AddonEvent) + Send + Sync),
) -> Result<(), String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let what = format!("{} {NAMESPACE}/{}", addon.kind.name(), addon.name);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={}", addon.name))
        .timeout(WATCH_TIMEOUT_SECS);
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut seen_in_list = false;
    while let Some(event) = stream.next().await {
        let obj = match event {
            Ok(watcher::Event::Init) => {
                seen_in_list = false;
                continue;
            }
            Ok(watcher::Event::InitDone) if !seen_in_list => {
                return Err(format!("{what} was deleted while rolling out"));
            }
            Ok(watcher::Event::InitDone) => continue,
            Ok(watcher::Event::Delete(_)) => return Err(format!("{what} was deleted while rolling out")),
            Ok(watcher::Event::InitApply(o)) => {
                seen_in_list = true;
                o
            }
            Ok(watcher::Event::Apply(o)) => o,
            Err(e) => {
                // The backoff re-opens the watch; a persistent failure ends in the timeout.
                tracing::debug!(addon = addon.name, "watch error: {e}");
                continue;
            }
        };
        let p = progress_of(&obj);
        if let Some(msg) = &p.deadline_exceeded
            && p.observed >= p.generation
        {
            return Err(format!("{what} exceeded its progress deadline: {msg} ({})", p.pending()));
        }
        let numbers = |p: &Progress| (p.updated, p.desired, p.available);
        // Report changes, once the controller has seen the new template (before that the
        // counts describe the old one); a rollout complete at the first look reports nothing.
        let first_and_done = last.is_none() && p.complete();
        let seen = p.observed >= p.generation;
        if seen && !first_and_done && last.as_ref().is_none_or(|l| !l.seen() || numbers(l) != numbers(&p)) {
            on_event(AddonEvent::Rolling {
                addon: addon.name.to_string(),
                updated: p.updated,
                desired: p.desired,
                available: p.available,
            });
        }
        let done = p.complete();
        *last = Some(p);
        if done {
            return Ok(());
        }
    }
    Err(format!("the watch on {what} ended"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(
        generation: i64,
        observed: i64,
        desired: i32,
        updated: i32,
        available: i32,
        total: i32,
    ) -> Progress {
        Progress { generation, observed, desired, updated, available, total, deadline_exceeded: None }
    }

    #[test]
    fn a_rollout_is_complete_only_when_seen_updated_and_available() {
        assert!(progress(2, 2, 3, 3, 3, 3).complete());
        assert!(!progress(3, 2, 3, 3, 3, 3).complete(), "controller has not seen the change");
        assert!(!progress(2, 2, 3, 2, 3, 3).complete(), "one pod not updated");
        assert!(!progress(2, 2, 3, 3, 2, 3).complete(), "one pod not available");
        assert!(!progress(2, 2, 2, 2, 2, 3).complete(), "an old pod still runs");
        assert!(progress(1, 1, 0, 0, 0, 0).complete(), "nothing to run is done");
    }

    #[test]
    fn pending_says_what_is_not_ready() {
        let p = progress(3, 2, 4, 1, 2, 5).pending();
        assert!(p.contains("observedGeneration 2 < generation 3"), "{p}");
        assert!(
            p.contains("1 of 4 pods updated, 2 available, 1 pods of the previous template remain"),
            "{p}"
        );
    }
}
