//! Health gates between batches of workers: after each batch (max-unavailable nodes) has
//! finished, every gate of the run must pass — hold for its soak within its timeout — before
//! the next batch starts. A failed gate starts nothing new; the run ends Paused (resumable,
//! exit 3) or Failed, as `--on-gate-failure` says.

use std::sync::Mutex;

use refit_core::event::{Event, GateState};
use refit_core::health::{OnGateFailure, Verdict};

use super::Engine;

impl Engine {
    /// Why a gate stopped the run, if one did.
    pub(super) fn gate_failure(&self) -> Option<String> {
        self.gate_failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs every gate in order; `Err` says why the run must not go on (a failed gate, or a
    /// stop requested while waiting).
    pub(super) async fn health_gates(&self) -> Result<(), String> {
        let env = vec![("REFIT_RUN".to_string(), self.run_id.clone())];
        for gate in &self.spec.gates {
            // Progress shows each new reason once, not every poll.
            let last = Mutex::new(String::new());
            let on_wait = |reason: &str| {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != reason {
                    *last = reason.to_string();
                    self.emit(Event::Gate {
                        gate: gate.name.clone(),
                        state: GateState::Waiting,
                        reason: reason.to_string(),
                    });
                }
            };
            let probe = || self.ctx.actions.probe_gate(&gate.check, &env);
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
                    let why = format!("health gate {} failed: {reason}", gate.name);
                    *self.gate_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                    if self.spec.on_gate_failure == OnGateFailure::Fail {
                        self.fail_fast();
                    }
                    return Err(why);
                }
            }
        }
        Ok(())
    }
}
