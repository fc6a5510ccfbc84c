//! Health gates between batches of workers: after each batch (max-unavailable nodes) has
//! finished, every gate of the run must pass — hold for its soak within its timeout — before
//! the next batch starts. The control-plane gate (every apiserver's `/readyz`, etcd's health
//! and quorum) runs before the first change, before each etcd or control-plane member and
//! after the last one. A failed gate starts nothing new; the run ends Paused (resumable,
//! exit 3) or Failed, as `--on-gate-failure` says.

use std::sync::Mutex;
use std::time::Duration;

use refit_core::event::{Event, GateState};
use refit_core::health::control_plane::{self, ControlPlaneView, EtcdView, GATE_NAME, Moment};
use refit_core::health::{GateCheck, Observation, OnGateFailure, Soak, Verdict};
use refit_core::plan::{PhaseKind, Role};
use refit_core::run::UnitWork;

use super::Engine;

impl Engine {
    /// Why a gate stopped the run, if one did.
    pub(super) fn gate_failure(&self) -> Option<String> {
        self.gate_failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that a gate stopped the run (nothing new starts; with `--on-gate-failure fail`
    /// the run fails) and returns why.
    fn gate_stops(&self, gate: &str, reason: &str) -> String {
        let why = format!("health gate {gate} failed: {reason}");
        *self.gate_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        if self.spec.on_gate_failure == OnGateFailure::Fail {
            self.fail_fast();
        }
        why
    }

    /// Announces each new waiting reason of `gate` once (not every poll).
    fn on_wait<'a>(&'a self, gate: &'a str) -> impl Fn(&str) + Send + Sync + 'a {
        let last = Mutex::new(String::new());
        move |reason: &str| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if *last != reason {
                *last = reason.to_string();
                self.emit(Event::Gate {
                    gate: gate.to_string(),
                    state: GateState::Waiting,
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Says once, when the run starts, that etcd's health will not be checked because no
    /// etcd access was configured (only when the run has etcd or control-plane members).
    pub(super) fn warn_no_etcd_access(&self) {
        let members = self.spec.schedule.stages.iter().any(|s| s.phase != PhaseKind::Workers);
        if members && self.spec.etcd_health.is_empty() && self.spec.control_plane_gate_secs > 0 {
            self.emit(Event::Warning {
                message: "etcd's health and quorum are not checked between members: no etcd access configured (--etcd-endpoint with --etcd-cacert/--etcd-cert/--etcd-key); only each apiserver's /readyz is".into(),
            });
        }
    }

    /// The control-plane gate at `moment`: every apiserver ready and etcd healthy (or, before
    /// an etcd member goes down, its quorum kept), waited for up to the spec's timeout. `Err`
    /// says why the run must not go on.
    pub(super) async fn control_plane_gate(&self, moment: Moment<'_>) -> Result<(), String> {
        let secs = self.spec.control_plane_gate_secs;
        if secs == 0 {
            return Ok(());
        }
        let probe = || async move {
            let (apiservers, etcd) = futures::join!(self.ctx.health.apiservers(), async {
                if self.spec.etcd_health.is_empty() {
                    EtcdView::NotConfigured
                } else {
                    match self.ctx.health.etcd(&self.spec.etcd_health).await {
                        Ok(h) => EtcdView::Read(h),
                        Err(e) => EtcdView::Unreachable(e),
                    }
                }
            });
            control_plane::judge(&ControlPlaneView { apiservers, etcd }, moment)
        };
        let on_wait = self.on_wait(GATE_NAME);
        let soak = Soak::new(Duration::ZERO, Duration::from_secs(secs));
        let verdict = tokio::select! {
            v = refit_exec::gate::wait_soak(soak, Duration::from_secs(secs), probe, &on_wait) => v,
            () = self.stop_requested() => return Err("stopped on request".into()),
        };
        match verdict {
            Verdict::Passed { detail } => {
                self.emit(Event::Gate { gate: GATE_NAME.into(), state: GateState::Passed, reason: detail });
                Ok(())
            }
            Verdict::Failed { reason } | Verdict::Waiting { reason } => {
                self.emit(Event::Gate {
                    gate: GATE_NAME.into(),
                    state: GateState::Failed,
                    reason: reason.clone(),
                });
                Err(self.gate_stops(GATE_NAME, &reason))
            }
        }
    }

    /// The control-plane gate before an etcd or control-plane member: the quorum rule when
    /// it is an etcd member, every member healthy otherwise. Skipped for a member an earlier
    /// attempt began (it is down already, and must finish).
    pub(super) async fn member_gate(&self, unit: &UnitWork) -> Result<(), String> {
        if let Ok(j) = self.journal(&unit.node).await
            && refit_core::run::begun(unit, &j)
        {
            return Ok(());
        }
        let moment =
            if unit.roles.contains(&Role::Etcd) { Moment::TakingDown(&unit.node) } else { Moment::Settled };
        self.control_plane_gate(moment).await
    }

    /// Runs every gate in order; `Err` says why the run must not go on (a failed gate, or a
    /// stop requested while waiting).
    pub(super) async fn health_gates(&self) -> Result<(), String> {
        let env = vec![("REFIT_RUN".to_string(), self.run_id.clone())];
        for gate in &self.spec.gates {
            let on_wait = self.on_wait(&gate.name);
            let probe = || async {
                match &gate.check {
                    GateCheck::Workloads => self.probe_workloads().await,
                    check => self.ctx.actions.probe_gate(check, &env).await,
                }
            };
            let verdict = tokio::select! {
                v = refit_exec::gate::wait(gate, probe, &on_wait) => v,
                () = self.stop_requested() => return Err("stopped on request".into()),
            };
            match verdict {
                Verdict::Passed { detail } => {
                    self.emit(Event::Gate {
                        gate: gate.name.clone(),
                        state: GateState::Passed,
                        reason: detail,
                    });
                }
                Verdict::Failed { reason } | Verdict::Waiting { reason } => {
                    self.emit(Event::Gate {
                        gate: gate.name.clone(),
                        state: GateState::Failed,
                        reason: reason.clone(),
                    });
                    return Err(self.gate_stops(&gate.name, &reason));
                }
            }
        }
        // Every gate passed: what the batches touched is available again.
        self.touched.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// Before a worker's unit starts, when the run has a `workloads` gate: the workloads of the
    /// pods on its node, which the next gate waits for. A failed read is a warning (the gate
    /// then cannot wait for them, and says nothing false).
    pub(super) async fn note_workloads(&self, unit: &UnitWork) {
        if unit.phase() != PhaseKind::Workers
            || !self.spec.gates.iter().any(|g| g.check == GateCheck::Workloads)
        {
            return;
        }
        match self.ctx.health.workloads_on(&unit.node).await {
            Ok(w) => self.touched.lock().unwrap_or_else(|e| e.into_inner()).extend(w),
            Err(e) => self.emit(Event::Warning {
                message: format!(
                    "{}: cannot read its pods' workloads for the workloads gate ({e}); they are not waited for",
                    unit.node
                ),
            }),
        }
    }

    /// One observation of the `workloads` gate.
    async fn probe_workloads(&self) -> Observation {
        let touched = self.touched.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match self.ctx.health.workloads(&touched).await {
            Ok(statuses) => refit_core::health::workloads::judge(&statuses),
            Err(e) => Observation::Fails(format!("cannot read the workloads: {e}")),
        }
    }
}
