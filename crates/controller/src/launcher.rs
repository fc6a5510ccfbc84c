//! Member upgrades in the controller's own process ([`InProcessLauncher`]): each one is the
//! engine library's unattended upgrade (`refit_engine::upgrade::unattended`: cluster lock →
//! begin → plan → spec → record → execute → release) journaled on its ClusterUpgrade
//! ([`HubJournal`]), so the replica that leads next resumes the same run — same id, finished
//! node steps not redone — instead of relaunching a child that cannot see a dead one's
//! journal.
//!
//! What it shares with the local driver's `refit upgrade` children
//! (`refit_fleet::SubprocessLauncher`): the request is parsed from the same command line
//! (`refit_fleet::launch::upgrade_argv`, by the CLI's own parser: [`Requests`]), the same
//! binding check before connecting, the same typed events read by the same
//! `refit_fleet::launch::Reader` for progress and for the end (`UpgradeEnd`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kube::api::Api;
use refit_core::event::{Event, RunSummary};
use refit_core::fleet::UpgradeEnd;
use refit_core::run::RunState;
use refit_engine::EventSink;
use refit_engine::upgrade::{End, Request, unattended};
use refit_fleet::launch::{MemberLauncher, MemberUpgrade, OnEvent, OnProgress, Reader, node_image_env};
use refit_store::fleet::MemberProgress;
use tokio::sync::watch;

use crate::journal::{HubJournal, StillLeading};
use crate::resources::{ClusterUpgrade, ClusterUpgradeSpec};
use crate::store::cluster_upgrade_name;

/// Builds a member upgrade's engine request — the binary's parser of `refit upgrade`'s
/// arguments, so a member's `action`, plan file and `upgradeArgs` mean exactly what they mean
/// on the command line (and to the local driver's children), given the store path the
/// upgrade's backups default beside. Err: why (bad input).
#[derive(Clone)]
pub struct Requests(pub Arc<BuildRequest>);

/// What [`Requests`] calls: the member upgrade and its store path → the request, or why not.
pub type BuildRequest = dyn Fn(&MemberUpgrade, &Path) -> Result<Request, String> + Send + Sync;

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requests(..)")
    }
}

/// Member upgrades through the engine library, journaled on the hub (see the module doc).
#[derive(Clone)]
pub struct InProcessLauncher {
    /// The fleet's ClusterUpgrades.
    pub upgrades: Api<ClusterUpgrade>,
    /// This replica's claim on the journals it writes: `REPLICA/TERM`.
    pub owner: String,
    /// Asked before every journal write.
    pub leading: StillLeading,
    /// Turns true when this replica stops leading (or shuts down): no node starts any more.
    pub stop: watch::Receiver<bool>,
    /// The request of each member upgrade.
    pub requests: Requests,
    /// The local store path upgrades are given (private to this replica): their etcd backups
    /// (unless configured elsewhere) and the exec action's per-node locks lie beside it.
    pub store: PathBuf,
    /// Told of every event of every upgrade, if set (the controller's metrics).
    pub on_event: Option<OnEvent>,
}

impl std::fmt::Debug for InProcessLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessLauncher").field("owner", &self.owner).finish()
    }
}

impl MemberLauncher for InProcessLauncher {
    async fn upgrade(&self, up: MemberUpgrade, progress: OnProgress) -> UpgradeEnd {
        // Bound to its cluster: checked right before this connection is used.
        let conn = match refit_fleet::observe::connect_bound(&up.member).await {
            Ok(c) => c,
            Err(error) => return UpgradeEnd::Failed { error, reached: false },
        };
        let request = match (self.requests.0)(&up, &self.store) {
            Ok(r) => r,
            Err(error) => return UpgradeEnd::Failed { error, reached: false },
        };
        let member = up.member.name.clone();
        let name = cluster_upgrade_name(&up.run, &member);
        let spec = ClusterUpgradeSpec {
            run: up.run.clone(),
            member: member.clone(),
            cluster_uid: up.member.cluster_uid.clone().unwrap_or_default(),
            kubernetes_version: up.target.kubernetes.clone(),
        };
        let journal =
            match HubJournal::open(self.upgrades.clone(), &name, spec, &self.owner, self.leading.clone())
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    return UpgradeEnd::Failed { error: format!("the member's journal: {e}"), reached: true };
                }
            };
        let reader = Arc::new(Mutex::new(Reader::default()));
        let sink: Arc<dyn EventSink> = {
            let (reader, hook, member) = (reader.clone(), self.on_event.clone(), member.clone());
            Arc::new(move |e: &Event| {
                if let Some(hook) = &hook {
                    hook(&member, e);
                }
                let moved = reader.lock().unwrap_or_else(|p| p.into_inner()).event(e.clone());
                if let Some((operation, detail)) = moved {
                    progress(MemberProgress { member: member.clone(), operation, detail });
                }
            })
        };
        let ctx = refit_engine::real::context_with_env(
            conn.clone(),
            Arc::new(journal),
            sink,
            self.store.parent().map_or_else(|| PathBuf::from("locks"), |p| p.join("locks")),
            node_image_env(&up.target),
        );
        let holder = refit_engine::lifecycle::lock::this_process();
        let not_after = up.not_after.map(std::time::SystemTime::from);
        let end = unattended(&conn, ctx, holder, &request, self.stop.clone(), not_after).await;
        let mut r = std::mem::take(&mut *reader.lock().unwrap_or_else(|p| p.into_inner()));
        let last = match end {
            Ok(End::Ran(outcome)) => Event::Summary { outcome: outcome.summary() },
            Ok(End::NothingToDo(why)) => Event::Summary {
                outcome: RunSummary {
                    run: None,
                    state: RunState::Completed,
                    reason: Some(why),
                    remedies: Vec::new(),
                },
            },
            Ok(End::Blocked(blockers)) => Event::PlanBlocked { blockers },
            Err(e) => return r.failed(&error_chain(&e)),
        };
        r.event(last);
        r.end(Ok(()))
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
