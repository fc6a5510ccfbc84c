//! The steps of a unit: cordon, drain, upgrade (the node action), validate, uncordon, and
//! remove (replace style). Each returns how it ended; the unit loop journals it.

use std::time::Duration;

use refit_core::event::{Event, FailureKind};
use refit_core::lock::{ForeignCordon, foreign_cordon};
use refit_core::plan::{Role, Step};
use refit_core::remedy::Remedy;
use refit_core::run::carried_over::{self, Adoption};
use refit_core::run::{OnUndrainable, RunState, UnitWork, phase_name};
use refit_kube::cordon::{CordonOutcome, UncordonOutcome};
use refit_kube::drain::{DrainConfig, DrainEvent, DrainReport};
use tokio::time::Instant;

use super::StepEnd;
use crate::engine::Engine;
use crate::report::StepError;
use crate::spec::NodeAction;

impl Engine {
    pub(super) async fn cordon(&self, u: &UnitWork) -> StepEnd {
        match self.ctx.cluster.cordon(&u.node, &self.run_id).await {
            Ok(CordonOutcome::Cordoned) => StepEnd::Done("cordoned".into()),
            Ok(CordonOutcome::AlreadyOurs) => StepEnd::Done("already cordoned by this run".into()),
            Ok(CordonOutcome::ByOther { by: Some(other) }) => {
                // Another refit run holds this node. Only a run that is over (in this store)
                // no longer cares; any other may still be working on it.
                let state = match self.ctx.journal.run(&other).await {
                    Ok(r) => r.and_then(|r| r.state.parse::<RunState>().ok()),
                    Err(e) => return StepEnd::Fail { error: self.journal_failed(&e), release: false },
                };
                match foreign_cordon(state) {
                    ForeignCordon::LeaveAsFound => self.cordoned_by_someone(u, &format!("refit run {other}")),
                    ForeignCordon::Stop => StepEnd::fail(
                        FailureKind::CordonedByOtherRun,
                        format!(
                            "{} is cordoned by refit run {other}, which has not finished (or is not in this store): stopping rather than draining it a second time; finish or abandon that run (refit upgrade --abandon with its store), or `kubectl uncordon {}` if nothing works on it any more",
                            u.node, u.node
                        ),
                        false,
                    ),
                }
            }
            Ok(CordonOutcome::ByOther { by: None }) => self.cordoned_by_someone(u, "someone else"),
            Err(e) => StepEnd::fail(FailureKind::Cordon, format!("cordon: {e}"), false),
        }
    }

    fn cordoned_by_someone(&self, u: &UnitWork, who: &str) -> StepEnd {
        self.emit(Event::Warning {
            message: format!("{} was cordoned by {who}: upgraded, and left cordoned as found", u.node),
        });
        StepEnd::Done(format!("cordoned by {who}: left as found"))
    }

    pub(super) async fn drain(&self, u: &UnitWork) -> StepEnd {
        let cfg = DrainConfig {
            rules: self.spec.drain_rules,
            timeout: self.spec.drain_timeout(),
            concurrency: self.spec.eviction_concurrency.max(1),
            grace_period_seconds: None,
            max_backoff: Duration::from_secs(5),
            ..DrainConfig::default()
        };
        let node = u.node.clone();
        let on_event = |e: DrainEvent| match e {
            DrainEvent::Blocked { pod, pdb, reason } => self.emit(Event::Blocked {
                node: node.clone(),
                pod: format!("{}/{}", pod.namespace, pod.name),
                pdb,
                reason,
                remedy: None,
            }),
            DrainEvent::Refused { pod, reason, remedy } => self.emit(Event::Blocked {
                node: node.clone(),
                pod: format!("{}/{}", pod.namespace, pod.name),
                pdb: None,
                reason,
                remedy: Some(remedy),
            }),
            DrainEvent::Evicted(pod) => self
                .emit(Event::Evicted { node: node.clone(), pod: format!("{}/{}", pod.namespace, pod.name) }),
            _ => {}
        };
        let report = match self.ctx.cluster.drain(&u.node, &cfg, &on_event).await {
            Ok(r) => r,
            Err(e) => return StepEnd::fail(FailureKind::Drain, format!("drain: {e}"), true),
        };
        if report.complete {
            return StepEnd::Done(format!(
                "evicted {} pods, skipped {}",
                report.evicted.len(),
                report.skipped.len()
            ));
        }
        let blockers = describe_blockers(&report);
        match self.spec.on_undrainable {
            OnUndrainable::Fail => StepEnd::Fail {
                error: StepError::new(
                    FailureKind::Undrainable,
                    format!(
                        "cannot drain: {blockers} (uncordoned, not upgraded; --on-undrainable skip|force decide otherwise)"
                    ),
                )
                .with_remedies(remedies_of(&report)),
                release: true,
            },
            OnUndrainable::Skip => StepEnd::LeaveCordoned(format!("not drained, not upgraded: {blockers}")),
            OnUndrainable::Force => {
                match self.ctx.cluster.force_delete_remaining(&u.node, &cfg, &on_event).await {
                    Ok(r) if r.complete => StepEnd::Done(format!(
                        "evicted {} pods, force-deleted {} (--on-undrainable force): {blockers}",
                        report.evicted.len(),
                        report.remaining.len()
                    )),
                    Ok(r) => StepEnd::Fail {
                        error: StepError::new(
                            FailureKind::Undrainable,
                            format!("still not drained after force: {}", describe_blockers(&r)),
                        )
                        .with_remedies(remedies_of(&r)),
                        release: true,
                    },
                    Err(e) => StepEnd::fail(FailureKind::Drain, format!("force delete: {e}"), true),
                }
            }
        }
    }

    fn context(&self, u: &UnitWork, node: &str) -> refit_exec::NodeContext {
        refit_exec::NodeContext {
            node: node.to_string(),
            roles: u.role_list(),
            from: u.from.clone(),
            to: u.to.to_string(),
            phase: phase_name(u.phase()).to_string(),
            address: self.spec.addresses.get(&u.node).cloned().unwrap_or_default(),
            first_control_plane: u.first_control_plane,
        }
    }

    /// `begun_before`: the journal showed this step begun in an earlier attempt.
    pub(super) async fn upgrade(&self, u: &UnitWork, begun_before: bool) -> StepEnd {
        let ctx = self.context(u, &u.node);
        let node = u.node.clone();
        let on_line = |l: &str| self.emit(Event::ActionOutput { node: node.clone(), line: l.to_string() });
        let timeout = self.spec.node_timeout();
        let in_place = match &self.spec.action {
            NodeAction::Replace { control_plane, .. } if !u.steps.contains(&Step::Remove) => {
                if control_plane.is_empty() {
                    return StepEnd::fail(
                        FailureKind::ActionConfig,
                        "the replace action has no controlPlane command for etcd and control-plane members",
                        false,
                    );
                }
                NodeAction::Exec { command: control_plane.clone() }
            }
            NodeAction::Replace { create, carry_over, .. } => {
                return self.create_replacement(u, &ctx, create, carry_over, begun_before, &on_line).await;
            }
            other => other.clone(),
        };
        match self.ctx.actions.upgrade(&self.run_id, &in_place, &ctx, timeout, &on_line).await {
            Ok(()) => StepEnd::Done(String::new()),
            Err(e) => {
                StepEnd::fail(FailureKind::Action, format!("upgrade action: {}", e.message), e.node_unchanged)
            }
        }
    }

    /// Replace style: creates the replacement (unless a run killed earlier already did: the
    /// step began in an earlier attempt, `begun_before`) and gives it the old node's custom
    /// labels, annotations and taints that `carry` allows. A node that merely has the
    /// replacement's name is someone else's: refused, never adopted.
    async fn create_replacement(
        &self,
        u: &UnitWork,
        ctx: &refit_exec::NodeContext,
        create: &[String],
        carry: &refit_core::run::carried_over::CarryOver,
        begun_before: bool,
        on_line: crate::context::OnLine<'_>,
    ) -> StepEnd {
        let new = u.replacement();
        let meta = match self.ctx.cluster.custom_metadata(&u.node, carry).await {
            Ok(m) => m,
            Err(e) => {
                return StepEnd::fail(
                    FailureKind::Action,
                    format!("reading {}'s labels and taints: {e}", u.node),
                    false,
                );
            }
        };
        let mut vars = ctx.placeholder_values();
        vars.push(("new", new.clone()));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let argv = refit_exec::command::substitute(create, &vars);
        let exists = match self.ctx.cluster.node(&new).await {
            Ok(s) => s.exists,
            Err(e) => return StepEnd::fail(FailureKind::Observe, format!("reading node {new}: {e}"), false),
        };
        match carried_over::adoption(exists, begun_before) {
            Adoption::Adopt => {}
            Adoption::Refuse => {
                return StepEnd::fail(
                    FailureKind::ActionConfig,
                    format!(
                        "a node named {new} already exists and this run did not create it: refit does not adopt it; delete or rename it, then rerun"
                    ),
                    true,
                );
            }
            Adoption::Create => {
                if let Err(e) =
                    self.ctx.actions.command(&argv, &ctx.env(), self.spec.node_timeout(), on_line).await
                {
                    return StepEnd::fail(
                        FailureKind::Action,
                        format!("creating replacement {new}: {}", e.message),
                        false,
                    );
                }
            }
        }
        if let Err(e) = self.ctx.cluster.apply_custom_metadata(&new, &meta).await {
            return StepEnd::fail(FailureKind::Action, format!("copying metadata to {new}: {e}"), false);
        }
        StepEnd::Done(format!("replacement {new} created"))
    }

    pub(super) async fn validate(&self, u: &UnitWork) -> StepEnd {
        if u.external {
            return StepEnd::Done("the action succeeded (an external host is not observable)".into());
        }
        let node = if u.steps.contains(&Step::Remove) { u.replacement() } else { u.node.clone() };
        let now = Instant::now();
        // A timeout past what an Instant can hold is as good as none: a century.
        let deadline = now
            .checked_add(self.spec.node_timeout())
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        if let Err(e) = self.ctx.cluster.wait_ready_at(&node, &u.to, self.spec.node_timeout()).await {
            return StepEnd::fail(FailureKind::Validate, e.to_string(), false);
        }
        if u.roles.contains(&Role::ControlPlane) {
            loop {
                match self.ctx.cluster.control_plane_lagging(&node, &u.to).await {
                    Ok(l) if l.is_empty() => break,
                    Ok(l) if Instant::now() >= deadline => {
                        return StepEnd::fail(
                            FailureKind::Validate,
                            format!("{} on {node} not Ready at {}", l.join(", "), u.to),
                            false,
                        );
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return StepEnd::fail(FailureKind::Validate, e.to_string(), false);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        StepEnd::Done(format!("{node} Ready at {}", u.to))
    }

    pub(super) async fn uncordon(&self, u: &UnitWork) -> StepEnd {
        match self.ctx.cluster.uncordon(&u.node, &self.run_id).await {
            Ok(UncordonOutcome::Uncordoned) => StepEnd::Done("uncordoned".into()),
            Ok(UncordonOutcome::NotCordoned) => StepEnd::Done("was not cordoned".into()),
            Ok(UncordonOutcome::NotOurs { by }) => StepEnd::Done(format!(
                "left cordoned as found (cordoned by {})",
                by.unwrap_or_else(|| "someone else".into())
            )),
            Err(e) => StepEnd::fail(FailureKind::Uncordon, format!("uncordon: {e}"), false),
        }
    }

    pub(super) async fn remove(&self, u: &UnitWork) -> StepEnd {
        let NodeAction::Replace { remove, .. } = &self.spec.action else {
            return StepEnd::Done(String::new());
        };
        let ctx = self.context(u, &u.node);
        let mut vars = ctx.placeholder_values();
        vars.push(("new", u.replacement()));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let argv = refit_exec::command::substitute(remove, &vars);
        let node = u.node.clone();
        let on_line = |l: &str| self.emit(Event::ActionOutput { node: node.clone(), line: l.to_string() });
        let exists = self.ctx.cluster.node(&u.node).await.map(|s| s.exists).unwrap_or(true);
        if exists
            && !remove.is_empty()
            && let Err(e) =
                self.ctx.actions.command(&argv, &ctx.env(), self.spec.node_timeout(), &on_line).await
        {
            return StepEnd::fail(FailureKind::Remove, format!("removing {}: {}", u.node, e.message), false);
        }
        if let Err(e) = self.ctx.cluster.delete_node(&u.node).await {
            return StepEnd::fail(FailureKind::Remove, e.to_string(), false);
        }
        match self.ctx.cluster.wait_gone(&u.node, self.spec.node_timeout()).await {
            Ok(()) => StepEnd::Done("removed".into()),
            Err(e) => StepEnd::fail(FailureKind::Remove, e.to_string(), false),
        }
    }
}

/// The allowances that would let the drain take what it refused, each once.
fn remedies_of(r: &DrainReport) -> Vec<Remedy> {
    let set: std::collections::BTreeSet<Remedy> =
        r.remaining.iter().filter_map(|b| b.remedy.clone()).collect();
    set.into_iter().collect()
}

fn describe_blockers(r: &DrainReport) -> String {
    let list: Vec<String> = r
        .remaining
        .iter()
        .take(5)
        .map(|b| match &b.pdb {
            Some(pdb) => format!("{}/{} (PDB {pdb}: {})", b.pod.namespace, b.pod.name, b.reason),
            None => format!("{}/{} ({})", b.pod.namespace, b.pod.name, b.reason),
        })
        .collect();
    let more = r.remaining.len().saturating_sub(5);
    if more > 0 { format!("{} and {more} more", list.join(", ")) } else { list.join(", ") }
}
