//! The engine's [`Journal`] on the hub: a member upgrade's runs and step transitions kept in
//! its `ClusterUpgrade` (`status.journal`), so the replica that leads next resumes the same run
//! — same id, finished steps not redone — instead of starting one that cannot see the dead
//! one's journal.
//!
//! - **Ownership, fenced.** A replica [`HubJournal::open`]s the journal by writing itself as
//!   its `owner` (`REPLICA/TERM`) with the object's resourceVersion: two replicas cannot both
//!   claim it from the same version, and the one that claims last owns it. Every later write
//!   is a JSON patch whose first operation tests that `owner` is still this replica's: the
//!   API server applies the test and the write atomically, so a deposed leader's write fails
//!   ([`HubJournalError::Deposed`], typed) and its engine starts nothing more, while writes of
//!   other status fields (the fleet driver's `step` and `detail`) never conflict with it. A
//!   replica that knows it no longer leads writes nothing ([`HubJournalError::NotLeading`]).
//! - **Reads are local.** The owner is the only writer, so what it read when it opened the
//!   journal plus what it wrote since is the journal: the engine's many `steps` reads cost no
//!   request. One PATCH per step transition; nothing else.
//! - **Compact.** Each node's steps are one string (`cordon@1.37.1=done,drain@1.37.1=done`),
//!   only the newest run keeps its steps and spec, and the spec is stored gzipped (see
//!   `a_5000_node_member_journal_fits_one_etcd_object` for the sizes: about 120 bytes per node
//!   when every step is done, 0.6 MiB at 5,000 nodes; 1 MiB is reached near 8,000 nodes).
//! - **Events** that are not step transitions (action output, warnings, evictions) are not
//!   stored: they reach the controller's metrics and logs through the engine's event sink,
//!   and a step's own record says what matters for a resume.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use refit_core::event::Event;
use refit_core::run::{RunState, StepState};
use refit_engine::context::{Journal, JournalError, RunRecord, StepRecord};
use serde_json::json;

use crate::resources::{
    ClusterUpgrade, ClusterUpgradeSpec, ClusterUpgradeStatus, JournalRun, UpgradeJournal,
};
use crate::store::RUN_LABEL;

/// Tries at claiming a journal that others keep writing.
const CLAIM_TRIES: usize = 8;

/// What can go wrong with a hub journal.
#[derive(Debug, thiserror::Error)]
pub enum HubJournalError {
    /// Another replica owns the journal now: this one was deposed, and its upgrade stops.
    #[error(
        "ClusterUpgrade {name} is journaled by {owner} now (this replica, {me}, was deposed): nothing more is written"
    )]
    Deposed {
        /// The ClusterUpgrade.
        name: String,
        /// Who owns it now.
        owner: String,
        /// This replica's claim.
        me: String,
    },
    /// This replica no longer leads: it writes nothing (the next leader resumes the upgrade).
    #[error("this replica no longer leads: ClusterUpgrade {name} is not written")]
    NotLeading {
        /// The ClusterUpgrade.
        name: String,
    },
    /// The hub refused or could not be reached.
    #[error("{context}")]
    Api {
        /// What was done.
        context: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// Someone else kept writing the object while it was claimed.
    #[error("cannot claim ClusterUpgrade {name}: it changed under every one of {tries} tries")]
    Busy {
        /// The ClusterUpgrade.
        name: String,
        /// How many.
        tries: usize,
    },
    /// Only the newest run of a member upgrade keeps its steps.
    #[error("ClusterUpgrade {name}: run {run} is not its newest run (only the newest keeps its steps)")]
    NotNewest {
        /// The ClusterUpgrade.
        name: String,
        /// The run asked for.
        run: String,
    },
    /// A stored field this version cannot read.
    #[error("ClusterUpgrade {name}: {detail}")]
    Unreadable {
        /// The ClusterUpgrade.
        name: String,
        /// What does not parse.
        detail: String,
    },
}

impl From<HubJournalError> for JournalError {
    fn from(e: HubJournalError) -> JournalError {
        JournalError { message: e.to_string(), source: Some(Box::new(e)) }
    }
}

/// Whether this replica still leads in the term it opened the journal in.
pub type StillLeading = Arc<dyn Fn() -> bool + Send + Sync>;

/// A member upgrade's journal in its ClusterUpgrade (see the module documentation).
pub struct HubJournal {
    api: Api<ClusterUpgrade>,
    name: String,
    owner: String,
    leading: StillLeading,
    /// The journal as read when claimed plus every write since.
    state: Mutex<UpgradeJournal>,
    /// Who owned it before this replica claimed it (empty: nobody).
    previous_owner: String,
}

impl std::fmt::Debug for HubJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubJournal").field("name", &self.name).field("owner", &self.owner).finish()
    }
}

fn api_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> HubJournalError {
    let context = context.into();
    move |source| HubJournalError::Api { context, source }
}

impl HubJournal {
    /// Claims the journal of ClusterUpgrade `name` for `owner` (creating the object from
    /// `spec` if it does not exist yet); `leading` is asked before every write.
    pub async fn open(
        api: Api<ClusterUpgrade>,
        name: &str,
        spec: ClusterUpgradeSpec,
        owner: &str,
        leading: StillLeading,
    ) -> Result<HubJournal, HubJournalError> {
        for _ in 0..CLAIM_TRIES {
            if !leading() {
                return Err(HubJournalError::NotLeading { name: name.to_string() });
            }
            let obj =
                match api.get_opt(name).await.map_err(api_err(format!("reading ClusterUpgrade {name}")))? {
                    Some(o) => o,
                    None => {
                        let mut cu = ClusterUpgrade::new(name, spec.clone());
                        cu.metadata.namespace = api_namespace(&api);
                        cu.metadata.labels = Some([(RUN_LABEL.to_string(), spec.run.clone())].into());
                        match api.create(&PostParams::default(), &cu).await {
                            Ok(o) => o,
                            // Created meanwhile (the fleet store writes its detail): read it again.
                            Err(kube::Error::Api(s)) if s.code == 409 => continue,
                            Err(e) => return Err(api_err(format!("creating ClusterUpgrade {name}"))(e)),
                        }
                    }
                };
            let mut status: ClusterUpgradeStatus = obj.status.clone().unwrap_or_default();
            let mut journal = status.journal.clone().unwrap_or_default();
            let previous_owner = std::mem::replace(&mut journal.owner, owner.to_string());
            status.journal = Some(journal.clone());
            let next = ClusterUpgrade {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: obj.metadata.namespace.clone(),
                    resource_version: obj.metadata.resource_version.clone(),
                    ..ObjectMeta::default()
                },
                spec: obj.spec.clone(),
                status: Some(status),
            };
            match api.replace_status(name, &PostParams::default(), &next).await {
                Ok(_) => {
                    return Ok(HubJournal {
                        api,
                        name: name.to_string(),
                        owner: owner.to_string(),
                        leading,
                        state: Mutex::new(journal),
                        previous_owner,
                    });
                }
                // Written since it was read (a detail, a step, another replica's claim).
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(api_err(format!("claiming ClusterUpgrade {name}"))(e)),
            }
        }
        Err(HubJournalError::Busy { name: name.to_string(), tries: CLAIM_TRIES })
    }

    /// The ClusterUpgrade's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who owned the journal before this replica claimed it (empty: nobody).
    pub fn previous_owner(&self) -> &str {
        &self.previous_owner
    }

    /// The journal as this replica knows it (what it read plus what it wrote).
    pub fn snapshot(&self) -> UpgradeJournal {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UpgradeJournal> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `ops` after testing that this replica still owns the journal; a refusal is
    /// told apart by reading the owner back (deposed, or a write that did not apply).
    async fn write(&self, ops: Vec<serde_json::Value>) -> Result<(), HubJournalError> {
        if !(self.leading)() {
            return Err(HubJournalError::NotLeading { name: self.name.clone() });
        }
        let mut all = vec![json!({"op": "test", "path": "/status/journal/owner", "value": self.owner})];
        all.extend(ops);
        // json-patch's type, inferred from kube's variant (kube re-exports no name for it).
        let patch =
            Patch::Json::<()>(serde_json::from_value(serde_json::Value::Array(all)).map_err(|e| {
                HubJournalError::Unreadable {
                    name: self.name.clone(),
                    detail: format!("a journal patch does not serialize: {e}"),
                }
            })?);
        match self.api.patch_status(&self.name, &PatchParams::default(), &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                let owner = self
                    .api
                    .get_opt(&self.name)
                    .await
                    .map_err(api_err(format!("reading ClusterUpgrade {}", self.name)))?
                    .and_then(|o| o.status?.journal.map(|j| j.owner))
                    .unwrap_or_default();
                if owner != self.owner {
                    return Err(HubJournalError::Deposed {
                        name: self.name.clone(),
                        owner: if owner.is_empty() {
                            "nobody (the journal was removed)".into()
                        } else {
                            owner
                        },
                        me: self.owner.clone(),
                    });
                }
                Err(api_err(format!("writing the journal of ClusterUpgrade {}", self.name))(
                    kube::Error::Api(s),
                ))
            }
            Err(e) => Err(api_err(format!("writing the journal of ClusterUpgrade {}", self.name))(e)),
        }
    }
}

fn api_namespace(api: &Api<ClusterUpgrade>) -> Option<String> {
    let url = api.resource_url();
    // `/apis/refit.dev/v1alpha1/namespaces/NS/clusterupgrades`
    url.split('/').skip_while(|s| *s != "namespaces").nth(1).map(str::to_string)
}

/// A JSON pointer's escaping of one object key (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The steps of one node, from its stored string: (step key, state) in recorded order.
pub fn parse_steps(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter(|e| !e.is_empty())
        .map(|e| match e.rsplit_once('=') {
            Some((k, s)) => (k.to_string(), s.to_string()),
            // Written by no refit: kept as a state nobody knows, so the engine refuses it.
            None => (e.to_string(), String::new()),
        })
        .collect()
}

/// One node's string with `key` set to `state` (kept in place, or appended).
pub fn set_step(text: &str, key: &str, state: StepState) -> String {
    let mut steps = parse_steps(text);
    match steps.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = state.as_str().to_string(),
        None => steps.push((key.to_string(), state.as_str().to_string())),
    }
    steps.iter().map(|(k, s)| format!("{k}={s}")).collect::<Vec<_>>().join(",")
}

/// A run spec as stored: JSON, gzip, base64.
pub fn pack_spec(json: &str) -> Result<String, std::io::Error> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gz.finish()?))
}

/// The JSON of a stored run spec.
pub fn unpack_spec(text: &str) -> Result<String, String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("spec: {e}"))?;
    let mut out = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut out)
        .map_err(|e| format!("spec: {e}"))?;
    Ok(out)
}

impl HubJournal {
    fn record_of(&self, r: &JournalRun) -> Result<RunRecord, JournalError> {
        let spec = if r.spec.is_empty() {
            String::new()
        } else {
            unpack_spec(&r.spec)
                .map_err(|detail| HubJournalError::Unreadable { name: self.name.clone(), detail })?
        };
        Ok(RunRecord {
            id: r.id.clone(),
            cluster: r.cluster.clone(),
            target: r.target.clone(),
            state: r.state.clone(),
            spec,
        })
    }
}

impl Journal for HubJournal {
    fn latest_run<'a>(&'a self, cluster: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        let latest = self.lock().runs.iter().rev().find(|r| r.cluster == cluster).cloned();
        async move { latest.map(|r| self.record_of(&r)).transpose() }.boxed()
    }

    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, JournalError>> {
        let found = self.lock().runs.iter().find(|r| r.id == id).cloned();
        async move { found.map(|r| self.record_of(&r)).transpose() }.boxed()
    }

    fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<RunRecord, JournalError>> {
        async move {
            let existing = self.lock().runs.iter().find(|r| r.id == run.id).cloned();
            if let Some(r) = existing {
                return self.record_of(&r);
            }
            let spec = pack_spec(&run.spec).map_err(|e| HubJournalError::Unreadable {
                name: self.name.clone(),
                detail: format!("cannot compress the run spec: {e}"),
            })?;
            let mut runs = self.lock().runs.clone();
            // Only the newest run resumes: the older ones keep their record, not their spec.
            for r in &mut runs {
                r.spec.clear();
            }
            runs.push(JournalRun {
                id: run.id.clone(),
                cluster: run.cluster.clone(),
                target: run.target.clone(),
                state: run.state.clone(),
                spec,
            });
            self.write(vec![
                json!({"op": "add", "path": "/status/journal/runs", "value": runs}),
                json!({"op": "add", "path": "/status/journal/steps", "value": {}}),
            ])
            .await?;
            let mut j = self.lock();
            j.runs = runs;
            j.steps.clear();
            Ok(run)
        }
        .boxed()
    }

    fn set_run_state<'a>(&'a self, run: &'a str, state: RunState) -> BoxFuture<'a, Result<(), JournalError>> {
        async move {
            let Some(i) = self.lock().runs.iter().position(|r| r.id == run) else {
                return Err(JournalError::msg(format!("ClusterUpgrade {}: no run {run}", self.name)));
            };
            self.write(vec![json!({"op": "replace", "path": format!("/status/journal/runs/{i}/state"), "value": state.as_str()})])
                .await?;
            if let Some(r) = self.lock().runs.get_mut(i) {
                r.state = state.as_str().to_string();
            }
            Ok(())
        }
        .boxed()
    }

    fn steps<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<Vec<StepRecord>, JournalError>> {
        let j = self.lock();
        let out = match j.runs.last() {
            Some(newest) if newest.id == run => Ok(j
                .steps
                .iter()
                .flat_map(|(unit, text)| {
                    parse_steps(text).into_iter().map(|(step, state)| StepRecord {
                        unit: unit.clone(),
                        step,
                        state,
                    })
                })
                .collect()),
            // An older run's steps were dropped when a newer one started; no run: no steps.
            Some(_) if j.runs.iter().any(|r| r.id == run) => {
                Err(HubJournalError::NotNewest { name: self.name.clone(), run: run.to_string() }.into())
            }
            _ => Ok(Vec::new()),
        };
        drop(j);
        async move { out }.boxed()
    }

    fn record_step<'a>(
        &'a self,
        run: &'a str,
        unit: &'a str,
        key: &'a str,
        state: StepState,
        _detail: &'a str,
        _event: &'a Event,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        async move {
            let text = {
                let j = self.lock();
                if j.runs.last().map(|r| r.id.as_str()) != Some(run) {
                    return Err(
                        HubJournalError::NotNewest { name: self.name.clone(), run: run.to_string() }.into()
                    );
                }
                set_step(j.steps.get(unit).map(String::as_str).unwrap_or_default(), key, state)
            };
            self.write(vec![json!({
                "op": "add",
                "path": format!("/status/journal/steps/{}", pointer_key(unit)),
                "value": text,
            })])
            .await?;
            self.lock().steps.insert(unit.to_string(), text);
            Ok(())
        }
        .boxed()
    }

    fn record_event(&self, _run: &str, _event: &Event) {
        // Not stored (see the module documentation): the event sink has them.
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

/// The steps of a stored journal, by node: (step key, state) in recorded order.
pub fn steps_by_node(j: &UpgradeJournal) -> BTreeMap<String, Vec<(String, String)>> {
    j.steps.iter().map(|(n, t)| (n.clone(), parse_steps(t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_steps_are_one_string_updated_in_place() {
        let s = set_step("", "cordon@1.37.1", StepState::Started);
        let s = set_step(&s, "cordon@1.37.1", StepState::Done);
        let s = set_step(&s, "drain@1.37.1", StepState::Started);
        assert_eq!(s, "cordon@1.37.1=done,drain@1.37.1=started");
        assert_eq!(
            parse_steps(&s),
            [("cordon@1.37.1".into(), "done".into()), ("drain@1.37.1".into(), "started".into())]
        );
        // Something no refit wrote is kept as a state nobody knows (the engine refuses it).
        assert_eq!(parse_steps("cordon@1.37.1"), [("cordon@1.37.1".into(), String::new())]);
        assert_eq!(pointer_key("a/b~c"), "a~1b~0c");
    }

    /// A member of 3 control-plane nodes and `workers` workers, every step of every node done,
    /// its addresses known (the ssh action's): the ClusterUpgrade as the hub stores it.
    fn finished_member(workers: usize) -> ClusterUpgrade {
        use std::collections::BTreeSet;

        use refit_core::plan::{PhaseKind, Role, Step};
        use refit_core::run::{Schedule, Stage, UnitWork, step_key};
        let to: refit_core::Version = "1.37.1".parse().unwrap();
        let steps = vec![Step::Cordon, Step::Drain, Step::Upgrade, Step::Validate, Step::Uncordon];
        let unit = |node: String, role: Role, first: bool| UnitWork {
            node,
            roles: BTreeSet::from([role]),
            from: "1.36.4".into(),
            to: to.clone(),
            steps: steps.clone(),
            external: false,
            first_control_plane: first,
        };
        let cps: Vec<UnitWork> =
            (0..3).map(|i| unit(format!("control-plane-{i}"), Role::ControlPlane, i == 0)).collect();
        let ws: Vec<UnitWork> =
            (0..workers).map(|i| unit(format!("worker-{i:05}"), Role::Worker, false)).collect();
        let schedule = Schedule {
            target: to.clone(),
            stages: vec![
                Stage {
                    phase: PhaseKind::ControlPlane,
                    to: to.clone(),
                    concurrency: 1,
                    units: cps,
                    auto: None,
                    surge: None,
                },
                Stage {
                    phase: PhaseKind::Workers,
                    to: to.clone(),
                    concurrency: 50,
                    units: ws,
                    auto: None,
                    surge: None,
                },
            ],
            cluster_services: true,
            excluded: Vec::new(),
        };
        let nodes: Vec<String> = schedule.units().map(|(_, u)| u.node.clone()).collect();
        let spec = refit_engine::RunSpec {
            addresses: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)))
                .collect(),
            schedule,
            action: refit_engine::NodeAction::Exec {
                command: vec!["/usr/local/bin/upgrade-node".into(), "{node}".into(), "{to}".into()],
            },
            drain_rules: Default::default(),
            drain_timeout_secs: 600,
            node_timeout_secs: 900,
            on_undrainable: Default::default(),
            force: false,
            backup: refit_engine::BackupSpec::OptedOut,
            cluster_services: None,
            eviction_concurrency: 4,
            accepted: Vec::new(),
            gates: Vec::new(),
            on_gate_failure: Default::default(),
            etcd_health: Vec::new(),
            control_plane_gate_secs: refit_engine::DEFAULT_CONTROL_PLANE_GATE_SECS,
        };
        let json = serde_json::to_string(&spec).unwrap();
        let mut journal = UpgradeJournal {
            owner: "refit-controller-7d9f8b6c5-x2x9q/12".into(),
            runs: vec![JournalRun {
                id: "up-20261205-154501-1-37-1".into(),
                cluster: "3f1c9b7e-5a2d-4c8e-9f10-2b6d7e8a9c01".into(),
                target: "1.37.1".into(),
                state: "completed".into(),
                spec: pack_spec(&json).unwrap(),
            }],
            steps: BTreeMap::new(),
        };
        for n in &nodes {
            let text =
                steps.iter().fold(String::new(), |t, s| set_step(&t, &step_key(*s, &to), StepState::Done));
            journal.steps.insert(n.clone(), text);
        }
        journal.steps.insert(
            refit_engine::CLUSTER_UNIT.into(),
            set_step("", "cluster-services@1.37.1", StepState::Done),
        );
        let mut cu = ClusterUpgrade::new(
            "auto-rapid-1-37-1.cluster-00042",
            ClusterUpgradeSpec {
                run: "auto-rapid-1-37-1".into(),
                member: "cluster-00042".into(),
                cluster_uid: "3f1c9b7e-5a2d-4c8e-9f10-2b6d7e8a9c01".into(),
                kubernetes_version: Some(to),
            },
        );
        cu.status = Some(ClusterUpgradeStatus { journal: Some(journal), ..Default::default() });
        println!(
            "spec JSON {} bytes, stored gzipped {} bytes",
            json.len(),
            cu.status.as_ref().unwrap().journal.as_ref().unwrap().runs[0].spec.len()
        );
        cu
    }

    #[test]
    fn a_5000_node_member_journal_fits_one_etcd_object() {
        const MIB: usize = 1024 * 1024;
        for workers in [1_000, 5_000] {
            let cu = finished_member(workers);
            let bytes = serde_json::to_vec(&cu).unwrap().len();
            println!(
                "{workers} workers, every step done: the ClusterUpgrade {bytes} bytes ({:.1}% of 1 MiB, {} per node)",
                bytes as f64 * 100.0 / MIB as f64,
                bytes / (workers + 3)
            );
            assert!(bytes < MIB, "{workers} workers: {bytes} bytes");
        }
    }

    #[test]
    fn a_spec_is_stored_gzipped_and_read_back_as_written() {
        let json = r#"{"schedule":{"target":"1.37.1"}}"#;
        assert_eq!(unpack_spec(&pack_spec(json).unwrap()).unwrap(), json);
        assert!(unpack_spec("not base64!").is_err());
    }
}
