//! How a member's upgrade is run: the [`MemberLauncher`] seam and its subprocess
//! implementation.
//!
//! Today every member upgrade is a `refit upgrade --to V --kubeconfig K --context C --yes -o
//! json --store DB ...` subprocess ([`SubprocessLauncher`]): isolation — a member upgrade that
//! crashes or is killed does not take the driver (or the other members) with it, and each one
//! is journaled and resumable on its own. The launcher is a trait so the engine library can run
//! members in-process later (once it exposes a run as a library call) without the driver
//! changing: a launcher only turns a [`MemberUpgrade`] into progress and a
//! [`refit_core::fleet::UpgradeEnd`].
//!
//! The protocol is typed: every stdout line of the child is a `refit_core::event::Event` (the
//! same events its terminal view shows). The outcome comes from the typed [`Event::Summary`] or
//! [`Event::PlanBlocked`] alone; an upgrade that ends without one — whatever its exit code — or
//! prints lines that are not events is a failure, never a success.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use refit_core::Version;
use refit_core::event::{Blocker, Event, RunSummary};
use refit_core::fleet::{MemberTarget, UpgradeEnd, UpgradeType};
use refit_core::run::RunState;
use refit_store::fleet::{MemberProgress, MemberRecord};

/// A member upgrade that takes longer than this is killed and recorded as failed.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// One member upgrade to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberUpgrade {
    /// The fleet run it belongs to.
    pub run: String,
    /// The member, as stored (how to reach it, its action, its cluster binding).
    pub member: MemberRecord,
    /// Full, ControlPlaneOnly, NodeImageOnly.
    pub upgrade_type: UpgradeType,
    /// Its frozen target.
    pub target: MemberTarget,
    /// Its control plane's version (NodeImageOnly rolls every node at it).
    pub control_plane: Option<Version>,
    /// Start no node after this (its maintenance window closes).
    pub not_after: Option<Timestamp>,
    /// The run's version rule (`--policy strict` is passed on; default is the default).
    pub policy: refit_core::path::Policy,
}

/// Receives what a member upgrade reports on its way.
pub type OnProgress = Arc<dyn Fn(MemberProgress) + Send + Sync>;

/// Runs member upgrades.
pub trait MemberLauncher: Send + Sync + 'static {
    /// Runs one member upgrade to its end, reporting progress on the way.
    fn upgrade(
        &self,
        upgrade: MemberUpgrade,
        progress: OnProgress,
    ) -> impl Future<Output = UpgradeEnd> + Send;
}

/// Sees every typed event a member upgrade prints, with the member's name (the hub
/// controller's node-step metrics are timed from them).
pub type OnEvent = Arc<dyn Fn(&str, &Event) + Send + Sync>;

/// Member upgrades as `refit upgrade -o json` subprocesses of `exe` on the store at `store`,
/// through `refit_exec::command::run_command` (own process group, killed with the driver by
/// PR_SET_PDEATHSIG, lines streamed).
#[derive(Clone)]
pub struct SubprocessLauncher {
    /// The `refit` binary.
    pub exe: PathBuf,
    /// The store the upgrades journal into.
    pub store: PathBuf,
    /// Told of each event the upgrades print, if set.
    pub on_event: Option<OnEvent>,
}

impl std::fmt::Debug for SubprocessLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubprocessLauncher")
            .field("exe", &self.exe)
            .field("store", &self.store)
            .field("on_event", &self.on_event.is_some())
            .finish()
    }
}

impl SubprocessLauncher {
    /// Launches with this process's own binary.
    pub fn this_binary(store: &Path) -> Result<SubprocessLauncher, crate::Error> {
        let exe = std::env::current_exe().map_err(crate::Error::Exe)?;
        Ok(SubprocessLauncher { exe, store: store.to_path_buf(), on_event: None })
    }

    /// This launcher, telling `on_event` of every event the upgrades print.
    pub fn with_events(self, on_event: OnEvent) -> SubprocessLauncher {
        SubprocessLauncher { on_event: Some(on_event), ..self }
    }
}

impl MemberLauncher for SubprocessLauncher {
    async fn upgrade(&self, up: MemberUpgrade, progress: OnProgress) -> UpgradeEnd {
        // Bound to its cluster: checked right before the child connects with the same
        // kubeconfig and context (an unreachable member ends here, not reached).
        if let Err(why) = crate::observe::connect_bound(&up.member).await {
            return UpgradeEnd::Failed { error: why, reached: false };
        }
        let argv = match upgrade_argv(&self.exe, &self.store, &up) {
            Ok(a) => a,
            Err(error) => return UpgradeEnd::Failed { error, reached: false },
        };
        let env = node_image_env(&up.target);
        let reader = Mutex::new(Reader::default());
        let member = up.member.name.clone();
        let on_line = |line: refit_exec::command::OutputLine| {
            let refit_exec::command::OutputLine::Stdout(text) = line else { return };
            if let Some(hook) = &self.on_event
                && let Ok(e) = serde_json::from_str::<Event>(&text)
            {
                hook(&member, &e);
            }
            let mut r = reader.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((operation, detail)) = r.line(&text) {
                progress(MemberProgress { member: member.clone(), operation, detail });
            }
        };
        let result = refit_exec::command::run_command(&argv, &env, MEMBER_TIMEOUT, &on_line).await;
        let r = reader.into_inner().unwrap_or_else(|e| e.into_inner());
        r.end(result.map(drop).map_err(|e| first_lines(&e.to_string())))
    }
}

/// The `refit upgrade` command line for one member.
pub fn upgrade_argv(exe: &Path, store: &Path, up: &MemberUpgrade) -> Result<Vec<String>, String> {
    let m = &up.member;
    let to =
        match up.upgrade_type {
            UpgradeType::Full | UpgradeType::ControlPlaneOnly => up
                .target
                .kubernetes
                .as_ref()
                .map(|v| v.to_string())
                .ok_or("the run's frozen target has no Kubernetes version")?,
            // Node images only: every node is rolled through cordon, drain, the action (which gets
            // REFIT_NODE_IMAGES) and uncordon at the version it already runs.
            UpgradeType::NodeImageOnly => up.control_plane.as_ref().map(|v| v.to_string()).ok_or(
                "the member's control-plane version could not be read (needed to roll its node images)",
            )?,
        };
    let mut argv = vec![
        exe.display().to_string(),
        "upgrade".into(),
        "--to".into(),
        to,
        "--yes".into(),
        "-o".into(),
        "json".into(),
        "--store".into(),
        store.display().to_string(),
    ];
    if let Some(k) = &m.kubeconfig {
        argv.extend(["--kubeconfig".into(), k.clone()]);
    }
    if let Some(c) = &m.context {
        argv.extend(["--context".into(), c.clone()]);
    }
    if let Some(t) = up.not_after {
        argv.extend(["--not-after".into(), t.to_string()]);
    }
    if up.policy != refit_core::path::Policy::Default {
        argv.extend(["--policy".into(), up.policy.to_string()]);
    }
    match up.upgrade_type {
        UpgradeType::ControlPlaneOnly => argv.push("--control-plane-only".into()),
        UpgradeType::NodeImageOnly => argv.push("--force".into()),
        UpgradeType::Full => {}
    }
    if let Some(a) = &m.action {
        argv.extend(["--action".into(), a.clone()]);
    }
    if let Some(p) = &m.plan_file {
        argv.extend(["-f".into(), p.clone()]);
    }
    argv.extend(m.upgrade_args.iter().cloned());
    Ok(argv)
}

/// `REFIT_NODE_IMAGES=family=version,...` when the member's target moves images.
pub fn node_image_env(target: &MemberTarget) -> Vec<(String, String)> {
    if target.node_images.is_empty() {
        return Vec::new();
    }
    vec![("REFIT_NODE_IMAGES".into(), refit_core::fleet::image_targets_text(&target.node_images))]
}

/// What a member's `refit upgrade -o json` reported so far, read line by line.
#[derive(Debug, Default)]
pub struct Reader {
    operation: Option<String>,
    units: usize,
    finished: usize,
    current: String,
    /// It reported anything at all (it reached its cluster).
    reached: bool,
    summary: Option<RunSummary>,
    blocked: Option<Vec<Blocker>>,
    /// Lines that are not events: how many, and the first.
    unrecognised: usize,
    first_unrecognised: Option<String>,
}

impl Reader {
    /// Reads one stdout line; the progress to record (operation, detail), if it moved.
    pub fn line(&mut self, text: &str) -> Option<(Option<String>, String)> {
        let event = match serde_json::from_str::<Event>(text) {
            Ok(e) => e,
            Err(_) => {
                // `refit upgrade` prints a blocked plan as a document for people before the
                // typed line: it is not an event, and not counted against a blocked plan.
                self.unrecognised = self.unrecognised.saturating_add(1);
                if self.first_unrecognised.is_none() {
                    self.first_unrecognised = Some(text.chars().take(120).collect());
                }
                return None;
            }
        };
        self.event(event)
    }

    /// Reads one typed event (a line of a child, or an event of an upgrade run in-process);
    /// the progress to record (operation, detail), if it moved.
    pub fn event(&mut self, event: Event) -> Option<(Option<String>, String)> {
        self.reached = true;
        match event {
            Event::RunStarted { run, units, .. } => {
                self.operation = Some(run);
                self.units = units;
                self.finished = 0;
            }
            Event::StepStarted { node, step, .. } => self.current = format!("{node}: {step}"),
            Event::UnitFinished { .. } | Event::UnitSkipped { .. } => {
                self.finished = self.finished.saturating_add(1)
            }
            Event::Summary { outcome } => {
                self.summary = Some(outcome);
                return None;
            }
            Event::PlanBlocked { blockers } => {
                self.blocked = Some(blockers);
                return None;
            }
            _ => return None,
        }
        let detail = if self.units > 0 {
            format!("{}/{} node steps; {}", self.finished.min(self.units), self.units, self.current)
        } else {
            self.current.clone()
        };
        Some((self.operation.clone(), detail))
    }

    /// An upgrade that failed before its end could be reported (an error of the upgrade run
    /// in-process: its journal, its cluster lock, its cluster).
    pub fn failed(self, error: &str) -> UpgradeEnd {
        let op = self.operation.as_ref().map(|o| format!(" (run {o})")).unwrap_or_default();
        UpgradeEnd::Failed { error: format!("refit upgrade failed{op}: {error}"), reached: self.reached }
    }

    /// How the upgrade ended, from what it reported and how its process exited (Err: why).
    pub fn end(self, exit: Result<(), String>) -> UpgradeEnd {
        let op = self.operation.as_ref().map(|o| format!(" (run {o})")).unwrap_or_default();
        if let Some(blockers) = &self.blocked {
            return UpgradeEnd::Failed { error: blocked_reason(blockers), reached: true };
        }
        let Some(s) = self.summary else {
            let how = match exit {
                Ok(()) => "exit 0".to_string(),
                Err(e) => e,
            };
            let printed = match &self.first_unrecognised {
                Some(l) => format!("; it printed '{l}', which is not a refit event (another refit version?)"),
                None => String::new(),
            };
            return UpgradeEnd::Failed {
                error: format!("refit upgrade ended without its summary{op} ({how}){printed}"),
                reached: self.reached,
            };
        };
        let op = s.run.as_ref().map(|o| format!(" (run {o})")).unwrap_or(op);
        let reason = s.reason.clone();
        match (s.state, exit) {
            // Paused exits with its own code; the summary says so either way.
            (RunState::Paused, _) => UpgradeEnd::Paused {
                message: format!(
                    "refit upgrade paused{op}: {}",
                    reason.as_deref().unwrap_or("its deadline passed")
                ),
            },
            (RunState::Completed, Ok(())) if self.unrecognised > 0 => UpgradeEnd::Failed {
                error: format!(
                    "refit upgrade completed{op} but printed {} line(s) that are not refit events, e.g. '{}' (another refit version?)",
                    self.unrecognised,
                    self.first_unrecognised.unwrap_or_default()
                ),
                reached: true,
            },
            (RunState::Completed, Ok(())) => UpgradeEnd::Succeeded {
                message: match s.run {
                    Some(_) => format!("refit upgrade completed{op}"),
                    None => reason.unwrap_or_else(|| "nothing to upgrade: already at the target".into()),
                },
            },
            (state, exit) => UpgradeEnd::Failed {
                error: match (reason, exit) {
                    (Some(r), _) => format!("refit upgrade {}{op}: {r}", state.as_str()),
                    (None, Err(e)) => format!("refit upgrade {}{op}: {e}", state.as_str()),
                    (None, Ok(())) => format!("refit upgrade {}{op}", state.as_str()),
                },
                reached: true,
            },
        }
    }
}

/// Why a member's plan is blocked: its first blockers, for the member's error.
fn blocked_reason(blockers: &[Blocker]) -> String {
    let more = blockers.len().saturating_sub(3);
    let listed: Vec<String> =
        blockers.iter().take(3).map(|b| format!("{}: {}", b.subject, b.message)).collect();
    let mut reason = format!("the plan is blocked: {}", listed.join("; "));
    if more > 0 {
        reason.push_str(&format!("; and {more} more (refit plan shows them all)"));
    }
    reason
}

/// An error in at most three lines (the command's last stderr lines are in it).
fn first_lines(s: &str) -> String {
    s.lines().filter(|l| !l.trim().is_empty()).take(3).collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str], exit: Result<(), String>) -> (Vec<(Option<String>, String)>, UpgradeEnd) {
        let mut r = Reader::default();
        let progress = lines.iter().filter_map(|l| r.line(l)).collect();
        (progress, r.end(exit))
    }

    const STARTED: &str = r#"{"event":"run-started","run":"up-1","target":"1.37.1","stages":2,"units":2,"resumed":false,"at":"2026-06-10T12:00:00Z"}"#;
    const STEP: &str =
        r#"{"event":"step-started","node":"worker-1","step":"drain","to":"1.37.1","run":"up-1"}"#;
    const UNIT: &str =
        r#"{"event":"unit-finished","node":"worker-1","to":"1.37.1","result":"upgraded","millis":5}"#;

    fn summary(state: &str, reason: Option<&str>) -> String {
        serde_json::json!({"event": "summary", "outcome": {"run": "up-1", "state": state, "reason": reason, "units": [], "left_cordoned": [], "timings": [], "backup": null}}).to_string()
    }

    #[test]
    fn typed_events_give_progress_and_the_summary_decides() {
        let done = summary("completed", None);
        let (progress, end) = read(&[STARTED, STEP, UNIT, &done], Ok(()));
        assert_eq!(
            progress,
            [
                (Some("up-1".into()), "0/2 node steps; ".into()),
                (Some("up-1".into()), "0/2 node steps; worker-1: drain".into()),
                (Some("up-1".into()), "1/2 node steps; worker-1: drain".into()),
            ]
        );
        assert_eq!(end, UpgradeEnd::Succeeded { message: "refit upgrade completed (run up-1)".into() });
        let failed = summary("failed", Some("worker-1: upgrade: simulated node failure"));
        let (_, end) = read(&[STARTED, &failed], Err("exit status 1".into()));
        assert_eq!(
            end,
            UpgradeEnd::Failed {
                error: "refit upgrade failed (run up-1): worker-1: upgrade: simulated node failure".into(),
                reached: true
            }
        );
        let paused = summary("paused", Some("2 nodes left"));
        let (_, end) = read(&[STARTED, &paused], Err("exit status 3".into()));
        assert_eq!(
            end,
            UpgradeEnd::Paused { message: "refit upgrade paused (run up-1): 2 nodes left".into() }
        );
    }

    #[test]
    fn no_summary_or_unrecognised_output_is_a_failure_whatever_the_exit_code() {
        // Exit 0 with nothing refit understands: the old driver counted this as success.
        let (_, end) = read(&["hello", "{\"event\":\"from-the-future\"}"], Ok(()));
        match end {
            UpgradeEnd::Failed { error, reached: false } => {
                assert!(
                    error.contains("without its summary (exit 0)") && error.contains("'hello'"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Killed mid-run: it reached its cluster but never said how it ended.
        let (_, end) = read(&[STARTED], Err("killed by signal 9".into()));
        assert!(
            matches!(&end, UpgradeEnd::Failed { error, reached: true } if error.contains("signal 9")),
            "{end:?}"
        );
        // Never connected: nothing printed, the error is stderr's.
        let (_, end) = read(&[], Err("error: cannot reach the API server".into()));
        assert!(
            matches!(&end, UpgradeEnd::Failed { error, reached: false } if error.contains("cannot reach")),
            "{end:?}"
        );
        // A completed summary among lines that are not events: not trusted.
        let done = summary("completed", None);
        let (_, end) = read(&[STARTED, "progress: 50%", &done], Ok(()));
        assert!(
            matches!(&end, UpgradeEnd::Failed { error, .. } if error.contains("not refit events")),
            "{end:?}"
        );
        // A summary saying failed with exit 0 is still a failure.
        let failed = summary("failed", None);
        assert!(matches!(read(&[&failed], Ok(())).1, UpgradeEnd::Failed { .. }));
    }

    #[test]
    fn a_blocked_plan_names_its_first_blockers_and_nothing_to_do_is_a_success() {
        let blocker = |s: &str| Blocker {
            check: "unmanaged-pod".into(),
            subject: s.into(),
            message: "unmanaged".into(),
            remedy: None,
        };
        let blocked = serde_json::to_string(&Event::PlanBlocked {
            blockers: ["pod/a/x", "pod/a/y", "pod/a/z", "pod/a/w"].map(blocker).to_vec(),
        })
        .unwrap();
        // The pretty plan for people comes first; the typed line decides.
        let (_, end) = read(&["{", "  \"blocked\": true", "}", &blocked], Err("exit status 1".into()));
        match end {
            UpgradeEnd::Failed { error, reached: true } => {
                assert!(error.starts_with("the plan is blocked: pod/a/x: unmanaged; pod/a/y"), "{error}");
                assert!(error.ends_with("and 1 more (refit plan shows them all)"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        let nothing = serde_json::to_string(&Event::Summary {
            outcome: RunSummary {
                run: None,
                state: RunState::Completed,
                reason: Some("nothing to upgrade: every planned node is already at 1.37.1".into()),
                remedies: Vec::new(),
            },
        })
        .unwrap();
        assert_eq!(
            read(&[&nothing], Ok(())).1,
            UpgradeEnd::Succeeded {
                message: "nothing to upgrade: every planned node is already at 1.37.1".into()
            }
        );
    }

    #[test]
    fn the_command_line_carries_the_members_cluster_action_and_window() {
        let up = MemberUpgrade {
            run: "r".into(),
            member: MemberRecord {
                name: "m".into(),
                kubeconfig: Some("/k/m.conf".into()),
                context: Some("m".into()),
                action: Some("sandbox:/tmp/m".into()),
                upgrade_args: vec!["--max-unavailable=2".into()],
                ..Default::default()
            },
            upgrade_type: UpgradeType::ControlPlaneOnly,
            target: MemberTarget { kubernetes: Some("1.37.1".parse().unwrap()), ..Default::default() },
            control_plane: None,
            not_after: Some("2026-06-10T14:00:00Z".parse().unwrap()),
            policy: refit_core::path::Policy::Strict,
        };
        let argv = upgrade_argv(Path::new("/bin/refit"), Path::new("/s/refit.db"), &up).unwrap();
        assert_eq!(
            argv.join(" "),
            "/bin/refit upgrade --to 1.37.1 --yes -o json --store /s/refit.db --kubeconfig /k/m.conf --context m --not-after 2026-06-10T14:00:00Z --policy strict --control-plane-only --action sandbox:/tmp/m --max-unavailable=2"
        );
        let plain = MemberUpgrade { policy: refit_core::path::Policy::Default, ..up.clone() };
        let argv = upgrade_argv(Path::new("/bin/refit"), Path::new("/s/refit.db"), &plain).unwrap();
        assert!(!argv.iter().any(|a| a == "--policy"), "{argv:?}");
        let images = MemberUpgrade { upgrade_type: UpgradeType::NodeImageOnly, ..up };
        assert!(
            upgrade_argv(Path::new("/bin/refit"), Path::new("/s"), &images)
                .unwrap_err()
                .contains("control-plane version")
        );
    }
}
