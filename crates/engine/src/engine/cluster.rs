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

    /// The backup itself: (path, bytes), or an empty path when none is configured.
    async fn take_backup(&self) -> Result<(String, u64), String> {
        let name = format!("etcd-{}", self.run_id);
        match &self.spec.backup {
            BackupSpec::None => {
                self.emit(Event::Warning {
                    message: "no etcd backup was configured (--etcd-endpoint with --etcd-cacert/--etcd-cert/--etcd-key, or --backup-command): continuing without one".into(),
                });
                Ok((String::new(), 0))
            }
            // Killed after the snapshot was published but before "done" was journaled: the
            // file (published atomically, complete by construction) is this run's backup.
            BackupSpec::Etcd { dir, .. } if dir.join(format!("{name}.db")).exists() => {
                let path = dir.join(format!("{name}.db"));
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                Ok((path.display().to_string(), bytes))
            }
            BackupSpec::Etcd { endpoints, dir } => {
                self.ctx.actions.etcd_snapshot(endpoints, dir, &name).await
            }
            BackupSpec::Command { command, dir } => {
                let dir_s = dir.display().to_string();
                let argv = refit_exec::command::substitute(command, &[("dir", &dir_s), ("name", &name)]);
                let on_line = |l: &str| {
                    self.emit(Event::ActionOutput { node: CLUSTER_UNIT.into(), line: l.to_string() })
                };
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating backup directory {dir_s}: {e}"))?;
                self.ctx
                    .actions
                    .command(&argv, &[], self.spec.node_timeout(), &on_line)
                    .await
                    .map(|()| (dir.join(&name).display().to_string(), 0))
                    .map_err(|e| e.message)
            }
        }
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
