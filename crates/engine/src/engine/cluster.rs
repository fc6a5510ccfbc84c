//! Cluster-wide steps, journaled like a node's under the unit [`CLUSTER_UNIT`]: the etcd
//! backup (once per run) and the cluster services (kube-proxy, CoreDNS).

use std::time::Duration;

use refit_core::event::{Event, FailureKind};
use refit_core::run::StepState;
use tokio::time::Instant;

use super::{CLUSTER_UNIT, Engine};
use crate::report::{StepError, millis};
use crate::spec::BackupSpec;

impl Engine {
    /// Runs a cluster-wide step (backup, cluster services) journaled like a node's: started
    /// before, done or failed after, with its event. `work` returns the detail to record.
    async fn cluster_step(
        &self,
        step: &str,
        work: impl std::future::Future<Output = Result<String, StepError>>,
    ) -> Result<String, StepError> {
        let to = self.spec.schedule.target.to_string();
        let key = format!("{step}@{to}");
        let node = CLUSTER_UNIT.to_string();
        let started = Event::StepStarted { node: node.clone(), step: step.into(), to: to.clone() };
        self.record(CLUSTER_UNIT, &key, StepState::Started, "", started).await?;
        let t = Instant::now();
        match work.await {
            Ok(detail) => {
                let done = Event::StepDone {
                    node,
                    step: step.into(),
                    to,
                    millis: millis(t.elapsed()),
                    detail: detail.clone(),
                };
                self.record(CLUSTER_UNIT, &key, StepState::Done, &detail, done).await?;
                Ok(detail)
            }
            Err(error) => {
                let failed = Event::StepFailed {
                    node,
                    step: step.into(),
                    to,
                    error: error.message.clone(),
                    kind: Some(error.kind),
                    remedies: Vec::new(),
                };
                let _ = self.record(CLUSTER_UNIT, &key, StepState::Failed, &error.message, failed).await;
                Err(error)
            }
        }
    }

    /// Takes the etcd backup once per run (journaled: a resumed run does not take another).
    pub(super) async fn backup_once(&self) -> Result<Option<String>, StepError> {
        let key = format!("backup@{}", self.spec.schedule.target);
        if self.journal(CLUSTER_UNIT).await?.get(&key) == Some(&StepState::Done) {
            return Ok(None);
        }
        let path = self
            .cluster_step("backup", async {
                let (path, bytes) = self.take_backup().await.map_err(|e| {
                    StepError::new(
                        FailureKind::Backup,
                        format!("etcd backup failed, nothing was changed: {e}"),
                    )
                })?;
                if !path.is_empty() {
                    self.emit(Event::Backup { path: path.clone(), bytes });
                }
                Ok(path)
            })
            .await?;
        Ok(Some(path).filter(|p| !p.is_empty()))
    }

    /// The backup itself: (path, bytes), or an empty path when the operator opted out.
    async fn take_backup(&self) -> Result<(String, u64), String> {
        let name = format!("etcd-{}", self.run_id);
        let file = |dir: &std::path::Path| dir.join(format!("{name}.db"));
        match &self.spec.backup {
            BackupSpec::OptedOut => {
                self.emit(Event::Warning {
                    message: "no etcd backup: --no-etcd-backup was given, so etcd and the control plane change without a snapshot to go back to".into(),
                });
                Ok((String::new(), 0))
            }
            // Killed after the snapshot was published but before "done" was journaled: the
            // file (published atomically, verified before it got its name) is this run's backup.
            BackupSpec::Etcd { dir, .. } | BackupSpec::Node { dir } if file(dir).exists() => {
                let path = file(dir);
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                Ok((path.display().to_string(), bytes))
            }
            BackupSpec::Etcd { endpoints, dir } => {
                self.ctx.actions.etcd_snapshot(endpoints, dir, &name).await
            }
            BackupSpec::Node { dir } => {
                let nodes = self.control_plane_contexts();
                if nodes.is_empty() {
                    return Err("no control-plane node in the schedule to take the snapshot on".into());
                }
                self.ctx.actions.etcd_snapshot_on_node(&self.spec.action, &nodes, dir, &name).await
            }
            BackupSpec::Command { command, dir } => {
                let path = file(dir);
                // A file an earlier attempt of this run's command left is used only if it is a
                // whole snapshot; otherwise the command runs again.
                if let Ok(b) = refit_exec::backup::check_snapshot_file(&path).await {
                    return Ok((path.display().to_string(), b.bytes));
                }
                refit_exec::backup::private_dir(dir).map_err(|e| e.to_string())?;
                let (dir_s, path_s) = (dir.display().to_string(), path.display().to_string());
                let argv = refit_exec::command::substitute(
                    command,
                    &[("dir", &dir_s), ("name", &name), ("path", &path_s)],
                );
                let on_line = |l: &str| {
                    self.emit(Event::ActionOutput { node: CLUSTER_UNIT.into(), line: l.to_string() })
                };
                self.ctx
                    .actions
                    .command(&argv, &[], self.spec.node_timeout(), &on_line)
                    .await
                    .map_err(|e| format!("the backup command failed: {}", e.message))?;
                // Its exit code is not enough: the file must be there, private, and a snapshot.
                let b = refit_exec::backup::check_snapshot_file(&path)
                    .await
                    .map_err(|e| format!("the backup command succeeded, but {e}"))?;
                Ok((path_s, b.bytes))
            }
        }
    }

    /// The control-plane nodes of the schedule, in its order, as the node action sees them:
    /// where a snapshot can be taken through the action.
    fn control_plane_contexts(&self) -> Vec<refit_exec::NodeContext> {
        let mut seen = std::collections::BTreeSet::new();
        self.spec
            .schedule
            .units()
            .map(|(_, u)| u)
            .filter(|u| u.roles.contains(&refit_core::plan::Role::ControlPlane) && !u.external)
            .filter(|u| seen.insert(u.node.clone()))
            .map(|u| self.context(u, &u.node))
            .collect()
    }

    /// Moves kube-proxy and CoreDNS to the target's versions and waits for their rollouts.
    pub(super) async fn cluster_services(
        &self,
        targets: &refit_core::addons::AddonTargets,
    ) -> Result<(), StepError> {
        let on_event = |e: refit_kube::addons::AddonEvent| {
            self.emit(Event::ClusterService { addon: addon_name(&e), detail: addon_detail(&e) });
        };
        let timeout = self.spec.node_timeout().max(Duration::from_secs(60));
        self.cluster_step("cluster-services", async {
            let report = self.ctx.cluster.upgrade_addons(targets, timeout, &on_event).await.map_err(|e| {
                StepError::new(FailureKind::ClusterServices, format!("cluster services: {e}"))
            })?;
            Ok(report
                .changed
                .iter()
                .map(|(a, from, to)| format!("{a} {from} → {to}"))
                .chain(report.skipped.iter().map(|(a, why)| format!("{a}: {why}")))
                .collect::<Vec<_>>()
                .join("; "))
        })
        .await
        .map(|_| ())
    }
}

fn addon_name(e: &refit_kube::addons::AddonEvent) -> String {
    use refit_kube::addons::AddonEvent as A;
    match e {
        A::Patching { addon, .. }
        | A::Rolling { addon, .. }
        | A::Done { addon }
        | A::Skipped { addon, .. } => addon.clone(),
    }
}

fn addon_detail(e: &refit_kube::addons::AddonEvent) -> String {
    use refit_kube::addons::AddonEvent as A;
    match e {
        A::Patching { from, to, .. } => format!("{from} → {to}"),
        A::Rolling { updated, desired, available, .. } => {
            format!("rolling out: {updated}/{desired} updated, {available} available")
        }
        A::Done { .. } => "rolled out".into(),
        A::Skipped { reason, .. } => format!("skipped: {reason}"),
    }
}
