//! One unit through its steps. Each step is recorded as started before it acts and as done
//! (or failed) after, and each is idempotent, so a unit killed anywhere continues at the
//! first step the journal does not show done (`refit_core::run::resume_point`).

use std::time::{Duration, Instant};

use refit_core::event::Event;
use refit_core::plan::{Role, Step};
use refit_core::run::{
    Observed, OnUndrainable, Resume, StepState, UnitWork, phase_name, resume_point, step_key, step_name,
};
use refit_kube::cordon::{CordonOutcome, UncordonOutcome};
use refit_kube::drain::{DrainConfig, DrainEvent, DrainReport};

use crate::Error;
use crate::engine::{Engine, UnitResult};
use crate::spec::NodeAction;

/// How a step ended.
enum StepEnd {
    /// Done, with a detail for the journal.
    Done(String),
    /// The unit stops here and stays cordoned on purpose (`--on-undrainable skip`).
    LeaveCordoned(String),
    /// The unit failed and the run must stop. `release`: the node was not changed, so refit
    /// gives back its cordon.
    Fail { error: String, release: bool },
    /// A clean stop was requested while the step could still be abandoned.
    Interrupted,
}

impl Engine {
    /// Moves one unit through the steps it still needs.
    pub(crate) async fn run_unit(&self, u: &UnitWork) -> Result<UnitResult, Error> {
        let observed = if u.external { Observed::default() } else { self.observe(&u.node).await };
        let journal = self.journal(&u.node)?;
        let at = match resume_point(u, &journal, &observed, self.spec.force) {
            Resume::Done(reason) => {
                self.emit(Event::UnitSkipped {
                    node: u.node.clone(),
                    to: u.to.to_string(),
                    reason: reason.clone(),
                });
                return Ok(UnitResult::Skipped(reason));
            }
            Resume::At(i) => i,
        };
        for &step in u.steps.get(at..).unwrap_or_default() {
            // Before a node is changed, work can be abandoned and its cordon given back.
            let abandonable = matches!(step, Step::Cordon | Step::Drain) || u.steps.first() == Some(&step);
            if abandonable && self.stopping() {
                self.give_back(u).await;
                return Ok(UnitResult::Interrupted);
            }
            let key = step_key(step, &u.to);
            let name = step_name(step).to_string();
            let to = u.to.to_string();
            self.record(
                &u.node,
                &key,
                StepState::Started,
                "",
                Event::StepStarted { node: u.node.clone(), step: name.clone(), to: to.clone() },
            )?;
            let t = Instant::now();
            let end = match step {
                Step::Cordon => self.cordon(u).await,
                Step::Drain => {
                    if abandonable {
                        tokio::select! {
                            end = self.drain(u) => end,
                            _ = self.stop_requested() => StepEnd::Interrupted,
                        }
                    } else {
                        self.drain(u).await
                    }
                }
                Step::Upgrade => self.upgrade(u).await,
                Step::Validate => self.validate(u).await,
                Step::Uncordon => self.uncordon(u).await,
                Step::Remove => self.remove(u).await,
            };
            let millis = t.elapsed().as_millis() as u64;
            match end {
                StepEnd::Done(detail) => {
                    let e = Event::StepDone {
                        node: u.node.clone(),
                        step: name,
                        to,
                        millis,
                        detail: detail.clone(),
                    };
                    self.record(&u.node, &key, StepState::Done, &detail, e)?;
                }
                StepEnd::LeaveCordoned(reason) => {
                    let e = Event::StepFailed { node: u.node.clone(), step: name, to, error: reason.clone() };
                    self.record(&u.node, &key, StepState::Failed, &reason, e)?;
                    self.leave_cordoned(&u.node, &reason);
                    return Ok(UnitResult::LeftCordoned(reason));
                }
                StepEnd::Fail { error, release } => {
                    let e = Event::StepFailed { node: u.node.clone(), step: name, to, error: error.clone() };
                    self.record(&u.node, &key, StepState::Failed, &error, e)?;
                    self.fail_fast();
                    if release {
                        self.give_back(u).await;
                    } else if !u.external && self.observe(&u.node).await.cordoned_by_this_run {
                        self.leave_cordoned(
                            &u.node,
                            &format!("{step:?} failed: left cordoned so that no workload lands on a node in an unknown state; fix it and rerun the same command").to_lowercase(),
                        );
                    }
                    return Ok(UnitResult::Failed(error));
                }
                StepEnd::Interrupted => {
                    let e = Event::StepFailed {
                        node: u.node.clone(),
                        step: name,
                        to,
                        error: "interrupted".into(),
                    };
                    self.record(&u.node, &key, StepState::Failed, "interrupted", e)?;
                    self.give_back(u).await;
                    return Ok(UnitResult::Interrupted);
                }
            }
        }
        Ok(UnitResult::Upgraded)
    }

    async fn observe(&self, node: &str) -> Observed {
        match refit_kube::node::node_state(&self.conn, node).await {
            Ok(s) => Observed {
                exists: s.exists,
                kubelet: s.kubelet,
                ready: s.ready,
                cordoned_by_this_run: s.unschedulable
                    && s.cordoned_by.as_deref() == Some(self.run_id.as_str()),
            },
            Err(e) => {
                tracing::warn!("observing {node}: {e}");
                Observed::default()
            }
        }
    }

    fn leave_cordoned(&self, node: &str, reason: &str) {
        self.left_cordoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((node.to_string(), reason.to_string()));
        self.emit(Event::LeftCordoned { node: node.to_string(), reason: reason.to_string() });
    }

    /// Gives back a cordon this run took on a node it did not change (a failed or abandoned
    /// drain). Recorded like any step, so a resumed run knows.
    async fn give_back(&self, u: &UnitWork) {
        if u.external {
            return;
        }
        match refit_kube::cordon::uncordon(&self.conn, &u.node, &self.run_id).await {
            Ok(UncordonOutcome::Uncordoned) => {
                let key = format!("release@{}", u.to);
                let e = Event::StepDone {
                    node: u.node.clone(),
                    step: "release".into(),
                    to: u.to.to_string(),
                    millis: 0,
                    detail: "uncordoned: not upgraded".into(),
                };
                let _ = self.record(&u.node, &key, StepState::Done, "uncordoned: not upgraded", e);
            }
            Ok(_) => {}
            Err(e) => self.leave_cordoned(
                &u.node,
                &format!("could not uncordon it: {e}; run `kubectl uncordon {}`", u.node),
            ),
        }
    }

    async fn cordon(&self, u: &UnitWork) -> StepEnd {
        match refit_kube::cordon::cordon(&self.conn, &u.node, &self.run_id).await {
            Ok(CordonOutcome::Cordoned) => StepEnd::Done("cordoned".into()),
            Ok(CordonOutcome::AlreadyOurs) => StepEnd::Done("already cordoned by this run".into()),
            Ok(CordonOutcome::ByOther { by }) => {
                let who = by.map(|b| format!("refit run {b}")).unwrap_or_else(|| "someone else".into());
                self.emit(Event::Warning {
                    message: format!(
                        "{} was cordoned by {who}: upgraded, and left cordoned as found",
                        u.node
                    ),
                });
                StepEnd::Done(format!("cordoned by {who}: left as found"))
            }
            Err(e) => StepEnd::Fail { error: format!("cordon: {e}"), release: false },
        }
    }

    async fn drain(&self, u: &UnitWork) -> StepEnd {
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
            }),
            DrainEvent::Refused { pod, reason } => self.emit(Event::Blocked {
                node: node.clone(),
                pod: format!("{}/{}", pod.namespace, pod.name),
                pdb: None,
                reason,
            }),
            DrainEvent::Evicted(pod) => self
                .emit(Event::Evicted { node: node.clone(), pod: format!("{}/{}", pod.namespace, pod.name) }),
            _ => {}
        };
        let report = match refit_kube::drain::drain(&self.conn, &u.node, &cfg, &on_event).await {
            Ok(r) => r,
            Err(e) => return StepEnd::Fail { error: format!("drain: {e}"), release: true },
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
                error: format!(
                    "cannot drain: {blockers} (uncordoned, not upgraded; --on-undrainable skip|force decide otherwise)"
                ),
                release: true,
            },
            OnUndrainable::Skip => StepEnd::LeaveCordoned(format!("not drained, not upgraded: {blockers}")),
            OnUndrainable::Force => {
                match refit_kube::drain::force_delete_remaining(&self.conn, &u.node, &cfg, &on_event).await {
                    Ok(r) if r.complete => StepEnd::Done(format!(
                        "evicted {} pods, force-deleted {} (--on-undrainable force): {blockers}",
                        report.evicted.len(),
                        report.remaining.len()
                    )),
                    Ok(r) => StepEnd::Fail {
                        error: format!("still not drained after force: {}", describe_blockers(&r)),
                        release: true,
                    },
                    Err(e) => StepEnd::Fail { error: format!("force delete: {e}"), release: true },
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

    async fn upgrade(&self, u: &UnitWork) -> StepEnd {
        let ctx = self.context(u, &u.node);
        let node = u.node.clone();
        let on_line = |l: refit_exec::command::OutputLine| {
            self.emit(Event::ActionOutput { node: node.clone(), line: l.text().to_string() })
        };
        let timeout = self.spec.node_timeout();
        // Exclusive per node and run: a resumed run attaches to (ssh) or waits for (exec) a
        // copy of this action still under way instead of starting a second one beside it.
        let scope = self.action_scope();
        let result = match &self.spec.action {
            NodeAction::Exec { command } => {
                refit_exec::exec::run_exec_exclusive(command, &ctx, &scope, timeout, &on_line).await
            }
            NodeAction::Ssh { action } => {
                let Some(opts) = refit_exec::ssh::SshOptions::from_action(action) else {
                    return StepEnd::Fail {
                        error: "the ssh action has no usable options".into(),
                        release: false,
                    };
                };
                let options = refit_exec::kubeadm::KubeadmOptions::from_action(action);
                let recipe = match refit_exec::kubeadm::kubeadm_recipe(&ctx, options) {
                    Ok(recipe) => recipe,
                    Err(e) => return StepEnd::Fail { error: format!("upgrade action: {e}"), release: true },
                };
                match refit_exec::ssh::run_ssh_detached(&recipe, &ctx, &scope, &opts, timeout, &on_line).await
                {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // A recipe that stopped before kubeadm touched the node (no connection,
                        // a package missing from the repository) leaves it as it was.
                        let release = e
                            .stopped_at_step()
                            .is_some_and(|step| refit_exec::kubeadm::node_unchanged_before(&recipe, step));
                        return StepEnd::Fail { error: format!("upgrade action: {e}"), release };
                    }
                }
            }
            NodeAction::Replace { control_plane, .. } if !u.steps.contains(&Step::Remove) => {
                if control_plane.is_empty() {
                    return StepEnd::Fail {
                        error: "the replace action has no controlPlane command for etcd and control-plane members".into(),
                        release: false,
                    };
                }
                refit_exec::exec::run_exec_exclusive(control_plane, &ctx, &scope, timeout, &on_line).await
            }
            NodeAction::Replace { create, .. } => {
                let new = u.replacement();
                let meta = match refit_kube::node::custom_metadata(&self.conn, &u.node).await {
                    Ok(m) => m,
                    Err(e) => {
                        return StepEnd::Fail {
                            error: format!("reading {}'s labels and taints: {e}", u.node),
                            release: false,
                        };
                    }
                };
                let mut vars = ctx.placeholder_values();
                vars.push(("new", new.clone()));
                let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let argv = refit_exec::command::substitute(create, &vars);
                let exists =
                    refit_kube::node::node_state(&self.conn, &new).await.map(|s| s.exists).unwrap_or(false);
                let created = if exists {
                    Ok(()) // created before a crash: do not create it twice
                } else {
                    refit_exec::command::run_command(&argv, &ctx.env(), timeout, &on_line).await.map(|_| ())
                };
                if let Err(e) = created {
                    return StepEnd::Fail {
                        error: format!("creating replacement {new}: {e}"),
                        release: false,
                    };
                }
                if let Err(e) = refit_kube::node::apply_custom_metadata(&self.conn, &new, &meta).await {
                    return StepEnd::Fail {
                        error: format!("copying metadata to {new}: {e}"),
                        release: false,
                    };
                }
                return StepEnd::Done(format!("replacement {new} created"));
            }
        };
        match result {
            Ok(()) => StepEnd::Done(String::new()),
            Err(e) => StepEnd::Fail { error: format!("upgrade action: {e}"), release: false },
        }
    }

    async fn validate(&self, u: &UnitWork) -> StepEnd {
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
        if let Err(e) =
            refit_kube::node::wait_ready_at(&self.conn, &node, &u.to, self.spec.node_timeout()).await
        {
            return StepEnd::Fail { error: e.to_string(), release: false };
        }
        if u.roles.contains(&Role::ControlPlane) {
            loop {
                match refit_kube::node::control_plane_lagging(&self.conn, &node, &u.to).await {
                    Ok(l) if l.is_empty() => break,
                    Ok(l) if Instant::now() >= deadline => {
                        return StepEnd::Fail {
                            error: format!("{} on {node} not Ready at {}", l.join(", "), u.to),
                            release: false,
                        };
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return StepEnd::Fail { error: e.to_string(), release: false };
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        StepEnd::Done(format!("{node} Ready at {}", u.to))
    }

    async fn uncordon(&self, u: &UnitWork) -> StepEnd {
        match refit_kube::cordon::uncordon(&self.conn, &u.node, &self.run_id).await {
            Ok(UncordonOutcome::Uncordoned) => StepEnd::Done("uncordoned".into()),
            Ok(UncordonOutcome::NotCordoned) => StepEnd::Done("was not cordoned".into()),
            Ok(UncordonOutcome::NotOurs { by }) => StepEnd::Done(format!(
                "left cordoned as found (cordoned by {})",
                by.unwrap_or_else(|| "someone else".into())
            )),
            Err(e) => StepEnd::Fail { error: format!("uncordon: {e}"), release: false },
        }
    }

    async fn remove(&self, u: &UnitWork) -> StepEnd {
        let NodeAction::Replace { remove, .. } = &self.spec.action else {
            return StepEnd::Done(String::new());
        };
        let ctx = self.context(u, &u.node);
        let new = u.replacement();
        let mut vars = ctx.placeholder_values();
        vars.push(("new", new));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let argv = refit_exec::command::substitute(remove, &vars);
        let node = u.node.clone();
        let on_line = |l: refit_exec::command::OutputLine| {
            self.emit(Event::ActionOutput { node: node.clone(), line: l.text().to_string() })
        };
        let exists =
            refit_kube::node::node_state(&self.conn, &u.node).await.map(|s| s.exists).unwrap_or(true);
        if exists
            && !remove.is_empty()
            && let Err(e) =
                refit_exec::command::run_command(&argv, &ctx.env(), self.spec.node_timeout(), &on_line).await
        {
            return StepEnd::Fail { error: format!("removing {}: {e}", u.node), release: false };
        }
        if let Err(e) = refit_kube::node::delete_node(&self.conn, &u.node).await {
            return StepEnd::Fail { error: e.to_string(), release: false };
        }
        match refit_kube::node::wait_gone(&self.conn, &u.node, self.spec.node_timeout()).await {
            Ok(()) => StepEnd::Done("removed".into()),
            Err(e) => StepEnd::Fail { error: e.to_string(), release: false },
        }
    }
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
