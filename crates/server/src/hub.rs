//! `refit serve --hub`: the server's [`Source`] over a hub cluster's custom resources.
//!
//! - **Reads** come from watch caches (kube-runtime reflectors) of the fleet namespace's
//!   UpdateRuns, ClusterUpgrades, Gates, Members and UpdateStrategies, so a page or a scrape
//!   costs the hub nothing. A run is mapped to core's `RunState` by the controller's own
//!   [`refit_controller::store::stored_run`] — the one mapping the driver reads through too.
//! - **Live updates**: every change those watches see after their first listing is broadcast
//!   on the event stream as an [`ObjectChange`] (the hub keeps no fleet history to replay: the
//!   dashboard re-reads what it shows, API clients re-read the run).
//! - **Actions** are the hub's objects the reconciler acts on: an approval is the Gate write
//!   `refit fleet --hub gate approve` makes ([`refit_controller::hub::approve_as`]), by this
//!   server's own hub identity (the admission policy checks that) on behalf of the token's
//!   name, which the run records as `alice (through USER)`; stop and start set the UpdateRun's
//!   `spec.state` (and a `refit.dev/requested-by` annotation). Core's rules are asked first, so
//!   a request the run would refuse is a 409 and nothing is written. Every action, refused or
//!   not, is a Kubernetes Event on the run (reporting controller `refit-serve`): the audit.
//! - **Local only** (nothing on a hub to show): single-cluster runs and their journals (member
//!   upgrades journal where the controller runs them), webhooks (`refit fleet notify`), the
//!   fleet run's event history.
//! - **Skips** are written to the run's status through the fleet driver's commit loop
//!   ([`refit_fleet::commit_on`] over an unfenced `HubFleet`, as `refit fleet --hub run skip`),
//!   recorded as `alice (through USER)`; the controller's driver reads them as its own.
//!
//! The [`Source`] trait is synchronous and called from blocking threads: writes and the audit
//! read run on the runtime through a captured handle.

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use refit_controller::resources::{ClusterUpgrade, Gate, Member, RunRequest, UpdateRun, UpdateStrategy};
use refit_controller::store::{details_of, member_record, stored_run};
use refit_core::fleet::{Event, RunState, Strategy, UpdateState, apply};
use refit_store::fleet::{Lease, MemberProgress, MemberRecord, RunEvent, StoredRun};
use refit_store::notify::{AuditOutcome, AuditRecord, Delivery, FleetEntry, Hook, JournalEntry, NotifyKind};
use refit_store::{RunRow, StepRow};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::source::{ActError, Action, Home, ReadError, Source, audit_outcome, expiry};
use crate::stream::{Origin, StreamEvent};

/// The Event reporting controller of people's actions through this server.
pub const REPORTER: &str = "refit-serve";

/// The annotation naming who last asked a run to stop or start (shared with `refit fleet --hub`).
pub use refit_controller::hub::REQUESTED_BY;

/// How long the first listing of each kind may take before the server gives up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The watch's server-side timeout: under the client's read timeout, so a quiet watch ends
/// cleanly and is resumed rather than failing on the read.
const WATCH_TIMEOUT_SECS: u32 = 25;

/// Why the hub cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// refit's custom resources are not installed.
    #[error(
        "the hub has no {resource}.refit.dev resources: install refit's CRDs with `refit controller manifests -n {namespace} | kubectl apply -f -`"
    )]
    NoCrds {
        /// The plural resource missing.
        resource: &'static str,
        /// The fleet's namespace.
        namespace: String,
    },
    /// The namespace does not exist.
    #[error("the hub has no namespace '{0}': pass the fleet's namespace with --namespace")]
    NoNamespace(String),
    /// The hub refuses to let this identity read the fleet.
    #[error(
        "the hub refuses to let {user} list {resource} in namespace {namespace}: bind it to the refit-viewer ClusterRole (refit-approver to approve gates)"
    )]
    Forbidden {
        /// Who the hub says we are.
        user: String,
        /// What it refused.
        resource: &'static str,
        /// Where.
        namespace: String,
    },
    /// The first listing did not finish.
    #[error("the hub's {0} could not be listed within {SYNC_TIMEOUT:?}")]
    NotSynced(&'static str),
    /// The hub failed otherwise.
    #[error("{context}: {source}")]
    Api {
        /// What was asked.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<kube::Error>,
    },
    /// Who we are could not be learnt.
    #[error(transparent)]
    Identity(#[from] refit_controller::hub::HubError),
    /// The private directory for members' kubeconfigs could not be made.
    #[error("cannot create a private directory: {0}")]
    Private(#[source] std::io::Error),
}

impl OpenError {
    /// Bad input (exit 2): the hub is not set up for refit, or not for this identity.
    pub fn is_usage(&self) -> bool {
        matches!(self, OpenError::NoCrds { .. } | OpenError::NoNamespace(_) | OpenError::Forbidden { .. })
    }
}

/// What changed, as the event stream sends it on a hub (the `event` field names the kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    /// The kind: `UpdateRun`, `ClusterUpgrade`, `Gate`, `Member`, `UpdateStrategy`.
    pub event: &'static str,
    /// Applied or deleted; `resynced` after a watch listed everything again (re-read all).
    pub change: Change,
    /// The object.
    pub name: String,
    /// Its state (a run's, a member upgrade's, a gate's), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Its resourceVersion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// How an object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Created or updated.
    Applied,
    /// Deleted.
    Deleted,
    /// The watch listed everything again (after losing its place): re-read.
    Resynced,
}

type Sender = broadcast::Sender<Arc<StreamEvent>>;

/// What the stream needs of each kind: its name, and which run and state an object has.
trait Watched:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    const PLURAL: &'static str;
    fn run_and_state(&self) -> (String, Option<String>);
}

fn state_text<T: ToString>(s: Option<&T>) -> Option<String> {
    s.map(ToString::to_string)
}

impl Watched for UpdateRun {
    const KIND: &'static str = "UpdateRun";
    const PLURAL: &'static str = "updateruns";
    fn run_and_state(&self) -> (String, Option<String>) {
        let state = self.status.as_ref().and_then(|s| s.state);
        (self.metadata.name.clone().unwrap_or_default(), state_text(state.as_ref()))
    }
}

impl Watched for ClusterUpgrade {
    const KIND: &'static str = "ClusterUpgrade";
    const PLURAL: &'static str = "clusterupgrades";
    fn run_and_state(&self) -> (String, Option<String>) {
        let state = self.status.as_ref().and_then(|s| s.state);
        (self.spec.run.clone(), state_text(state.as_ref()))
    }
}

impl Watched for Gate {
    const KIND: &'static str = "Gate";
    const PLURAL: &'static str = "gates";
    fn run_and_state(&self) -> (String, Option<String>) {
        let state = self.status.as_ref().and_then(|s| s.state);
        (self.spec.run.clone(), state.map(|s| format!("{s:?}")))
    }
}

impl Watched for Member {
    const KIND: &'static str = "Member";
    const PLURAL: &'static str = "members";
    fn run_and_state(&self) -> (String, Option<String>) {
        (String::new(), None)
    }
}

impl Watched for UpdateStrategy {
    const KIND: &'static str = "UpdateStrategy";
    const PLURAL: &'static str = "updatestrategies";
    fn run_and_state(&self) -> (String, Option<String>) {
        (String::new(), None)
    }
}

/// The event-stream entry for a change of `obj`.
fn change_event<K: Watched>(obj: Option<&K>, change: Change) -> StreamEvent {
    let (run, state) = obj.map(Watched::run_and_state).unwrap_or_default();
    let rv = obj.and_then(|o| o.meta().resource_version.clone());
    let body = ObjectChange {
        event: K::KIND,
        change,
        name: obj.and_then(|o| o.meta().name.clone()).unwrap_or_default(),
        state,
        resource_version: rv.clone(),
    };
    StreamEvent {
        origin: Origin::Fleet,
        // etcd's revisions order every change of the hub.
        seq: rv.and_then(|v| v.parse().ok()).unwrap_or(0),
        run,
        at: Some(Timestamp::now()),
        event: serde_json::to_value(body).unwrap_or_default(),
    }
}

/// A watch cache of `K` in `api`'s namespace; after its first listing, each change goes to the
/// stream once the server has connected it.
fn watch<K: Watched>(api: Api<K>, tx: Arc<OnceLock<Sender>>) -> (Store<K>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(watcher::Event::Apply(o)) => change_event(Some(&o), Change::Applied),
                Ok(watcher::Event::Delete(o)) => change_event(Some(&o), Change::Deleted),
                Ok(watcher::Event::InitDone) if listed => change_event::<K>(None, Change::Resynced),
                Ok(watcher::Event::InitDone) => {
                    listed = true;
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("watching {}: {e}", K::PLURAL);
                    continue;
                }
            };
            if let Some(tx) = tx.get() {
                let _ = tx.send(Arc::new(event));
            }
        }
    });
    (reader, task)
}

/// The hub as the server's source (see the module doc).
pub struct HubSource {
    conn: refit_kube::Connection,
    namespace: String,
    /// Who the hub says this server is: the approver of approvals made through it.
    me: String,
    runs: Store<UpdateRun>,
    upgrades: Store<ClusterUpgrade>,
    gates: Store<Gate>,
    members: Store<Member>,
    strategies: Store<UpdateStrategy>,
    tx: Arc<OnceLock<Sender>>,
    events: refit_controller::events::Events,
    /// The hub's fleet as a person's commands see it (unfenced, leading nothing): skips are
    /// applied to the run's status through the driver's own commit loop, as `refit fleet --hub
    /// run skip` does.
    fleet: tokio::sync::Mutex<refit_controller::store::HubFleet>,
    runtime: tokio::runtime::Handle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HubSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn api_err(context: impl Into<String>, e: kube::Error) -> OpenError {
    OpenError::Api { context: context.into(), source: Box::new(e) }
}

fn read_err(context: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> ReadError {
    ReadError::Hub { context: context.into(), source: Box::new(e) }
}

impl HubSource {
    /// Checks that the hub serves refit's resources in `namespace` to this identity, then
    /// fills the watch caches (every kind listed once) before anything is served.
    pub async fn open(conn: refit_kube::Connection, namespace: &str) -> Result<HubSource, OpenError> {
        let client = conn.client.clone();
        let me = refit_controller::hub::whoami(&conn).await?;
        check::<UpdateRun>(&client, namespace, &me).await?;
        check::<ClusterUpgrade>(&client, namespace, &me).await?;
        check::<Gate>(&client, namespace, &me).await?;
        check::<Member>(&client, namespace, &me).await?;
        check::<UpdateStrategy>(&client, namespace, &me).await?;
        // Listing a namespace that does not exist finds nothing: a mistyped --namespace would
        // show an empty fleet.
        let ns_api: Api<Namespace> = Api::all(client.clone());
        match ns_api.get_opt(namespace).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(OpenError::NoNamespace(namespace.to_string())),
            // Not allowed to read namespaces: the listings above were allowed, which is enough.
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            Err(e) => return Err(api_err(format!("reading namespace {namespace}"), e)),
        }
        let tx = Arc::new(OnceLock::new());
        let (runs, t1) = watch::<UpdateRun>(Api::namespaced(client.clone(), namespace), tx.clone());
        let (upgrades, t2) = watch::<ClusterUpgrade>(Api::namespaced(client.clone(), namespace), tx.clone());
        let (gates, t3) = watch::<Gate>(Api::namespaced(client.clone(), namespace), tx.clone());
        let (members, t4) = watch::<Member>(Api::namespaced(client.clone(), namespace), tx.clone());
        let (strategies, t5) =
            watch::<UpdateStrategy>(Api::namespaced(client.clone(), namespace), tx.clone());
        let fleet = refit_controller::store::HubFleet::new(
            client.clone(),
            namespace,
            &me,
            refit_controller::store::Leadership::none(),
        )
        .map_err(OpenError::Private)?;
        let source = HubSource {
            fleet: tokio::sync::Mutex::new(fleet),
            events: refit_controller::events::Events::reporting(client, REPORTER, &me),
            conn,
            namespace: namespace.to_string(),
            me,
            runs,
            upgrades,
            gates,
            members,
            strategies,
            tx,
            runtime: tokio::runtime::Handle::current(),
            tasks: vec![t1, t2, t3, t4, t5],
        };
        synced(&source.runs, "updateruns").await?;
        synced(&source.upgrades, "clusterupgrades").await?;
        synced(&source.gates, "gates").await?;
        synced(&source.members, "members").await?;
        synced(&source.strategies, "updatestrategies").await?;
        Ok(source)
    }

    /// Who the hub says this server is.
    pub fn identity(&self) -> &str {
        &self.me
    }

    fn upgrades_of(&self, run: &str) -> Vec<Arc<ClusterUpgrade>> {
        self.upgrades.state().into_iter().filter(|cu| cu.spec.run == run).collect()
    }

    fn stored(&self, obj: &UpdateRun) -> Result<Option<StoredRun>, ReadError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let upgrades = self.upgrades_of(&name);
        let details = details_of(upgrades.iter().map(AsRef::as_ref));
        stored_run(obj, &details).map_err(|e| read_err(format!("reading UpdateRun {name}"), e))
    }

    fn run_object(&self, name: &str) -> Option<Arc<UpdateRun>> {
        self.runs.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Checks `action` against the run with core's rules, then writes what the reconciler
    /// acts on.
    async fn write(
        &self,
        actor: &str,
        obj: &UpdateRun,
        cur: &RunState,
        action: &Action,
        now: Timestamp,
    ) -> Result<(), ActError> {
        let name = cur.name.as_str();
        match action {
            Action::ApproveGate { gate, expires_in_seconds } => {
                let expires_at = expiry(now, *expires_in_seconds)?;
                let event =
                    Event::ApproveGate { gate: gate.clone(), by: actor.to_string(), at: now, expires_at };
                apply(cur, &event)?;
                refit_controller::hub::approve_as(
                    &self.conn,
                    &self.me,
                    &self.namespace,
                    name,
                    &gate.to_string(),
                    expires_at,
                    Some(actor),
                )
                .await
                .map_err(|e| match e {
                    e @ refit_controller::hub::HubError::NoGate { .. } => {
                        ActError::Unsupported(e.to_string())
                    }
                    e => ActError::Read(read_err(format!("approving {gate} of {name}"), e)),
                })
            }
            Action::Skip { targets } => {
                // Recorded as approvals through this server are: the person, and who vouched.
                let by = refit_controller::resources::on_behalf_of(actor, &self.me);
                let event = Event::Skip { targets: targets.clone(), by: Some(by), at: now };
                apply(cur, &event)?;
                let mut fleet = self.fleet.lock().await;
                refit_fleet::commit_on(&mut *fleet, name, None, |_| Ok(event.clone()))
                    .await
                    .map(|_| ())
                    .map_err(|e| match e {
                        // The run moved on since it was read, and the skip no longer applies.
                        refit_fleet::Error::Refused(e) => ActError::Refused(e),
                        e => ActError::Read(read_err(format!("skipping in {name}"), e)),
                    })
            }
            Action::Stop | Action::Start => {
                let (request, event) = match action {
                    Action::Stop => (RunRequest::Stop, Event::Stop { at: now, by: Some(actor.to_string()) }),
                    _ => (
                        RunRequest::Run,
                        Event::Start { at: now, targets: None, plan: None, by: Some(actor.to_string()) },
                    ),
                };
                // A first start freezes targets, which the reconciler does; core judges the rest.
                if !(request == RunRequest::Run && cur.status.state == UpdateState::NotStarted) {
                    apply(cur, &event)?;
                }
                refit_controller::hub::request(&self.conn.client, &self.namespace, obj, request, actor)
                    .await
                    .map_err(|e| ActError::Read(read_err(format!("writing UpdateRun {name}"), e)))
            }
        }
    }

    /// The audit record of an Event this server published.
    fn audit_record(seq: i64, e: &KubeEvent) -> Option<AuditRecord> {
        let outcome = match e.reason.as_deref()? {
            "ActionDone" => AuditOutcome::Done,
            "ActionRefused" => AuditOutcome::Refused,
            "ActionFailed" => AuditOutcome::Failed,
            _ => return None,
        };
        let action = e.action.clone()?;
        let note = e.note.as_deref()?;
        let (actor, rest) = note.split_once(&format!(": {action} "))?;
        let (target, tail) = rest.split_once(" through refit serve")?;
        let detail = tail.split_once(" — ").map(|(_, d)| d.to_string()).unwrap_or_default();
        let at = e
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .map(|t| format!("{}.{:09}", t.as_second(), t.subsec_nanosecond()))
            .unwrap_or_default();
        Some(AuditRecord {
            seq,
            at,
            actor: actor.to_string(),
            action,
            target: target.to_string(),
            outcome,
            detail,
        })
    }
}

/// The one-line note of an audited action ([`HubSource::audit_record`] reads it back).
fn audit_note(actor: &str, action: &Action, run: &str, outcome: AuditOutcome, detail: &str) -> String {
    let tail = if detail.is_empty() { String::new() } else { format!(" — {detail}") };
    format!("{actor}: {} {} through refit serve: {outcome:?}{tail}", action.name(), action.target(run))
}

/// Lists `K` once: missing CRDs and refusals become errors that say what to do.
async fn check<K: Watched>(client: &kube::Client, namespace: &str, me: &str) -> Result<(), OpenError> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(OpenError::NoCrds { resource: K::PLURAL, namespace: namespace.to_string() })
        }
        Err(kube::Error::Api(s)) if s.code == 403 => Err(OpenError::Forbidden {
            user: me.to_string(),
            resource: K::PLURAL,
            namespace: namespace.to_string(),
        }),
        Err(e) => Err(api_err(format!("listing {}", K::PLURAL), e)),
    }
}

async fn synced<K: Watched>(store: &Store<K>, what: &'static str) -> Result<(), OpenError> {
    match tokio::time::timeout(SYNC_TIMEOUT, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(OpenError::NotSynced(what)),
    }
}

impl Source for HubSource {
    fn home(&self) -> Home {
        Home::Hub { namespace: self.namespace.clone() }
    }

    fn push_events(&self, tx: &Sender) -> bool {
        let _ = self.tx.set(tx.clone());
        true
    }

    fn members(&self) -> Result<Vec<MemberRecord>, ReadError> {
        let mut out: Vec<MemberRecord> =
            self.members.state().iter().map(|m| member_record(m, None)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn strategies(&self) -> Result<Vec<(String, Strategy)>, ReadError> {
        let mut out: Vec<(String, Strategy)> = self
            .strategies
            .state()
            .iter()
            .filter_map(|s| {
                let name = s.metadata.name.clone()?;
                Some((name.clone(), s.spec.strategy(&name)))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn fleet_runs(&self) -> Result<Vec<StoredRun>, ReadError> {
        let mut out = Vec::new();
        for obj in self.runs.state() {
            if let Some(r) = self.stored(&obj)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.state.created_at, &a.state.name).cmp(&(b.state.created_at, &b.state.name)));
        Ok(out)
    }

    fn fleet_run(&self, name: &str) -> Result<Option<StoredRun>, ReadError> {
        match self.run_object(name) {
            Some(obj) => self.stored(&obj),
            None => Ok(None),
        }
    }

    /// The hub keeps no fleet history (Kubernetes Events are its record: `kubectl describe`).
    fn fleet_run_events(&self, _name: &str) -> Result<Vec<RunEvent>, ReadError> {
        Ok(Vec::new())
    }

    fn member_progress(&self, run: &str) -> Result<Vec<MemberProgress>, ReadError> {
        let mut out: Vec<MemberProgress> = self
            .upgrades_of(run)
            .iter()
            .map(|cu| {
                let status = cu.status.as_ref();
                MemberProgress {
                    member: cu.spec.member.clone(),
                    operation: status.and_then(|s| s.detail.as_ref()?.operation.clone()),
                    detail: status.and_then(|s| s.step.clone()).unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(out)
    }

    /// The elected controller replica drives every run of a hub, not a per-run lease.
    fn lease(&self, _run: &str) -> Result<Option<Lease>, ReadError> {
        Ok(None)
    }

    fn cluster_runs(&self) -> Result<Vec<RunRow>, ReadError> {
        Ok(Vec::new())
    }
    fn cluster_run(&self, _id: &str) -> Result<Option<RunRow>, ReadError> {
        Ok(None)
    }
    fn steps(&self, _id: &str) -> Result<Vec<StepRow>, ReadError> {
        Ok(Vec::new())
    }
    fn run_journal(&self, _id: &str) -> Result<Vec<JournalEntry>, ReadError> {
        Ok(Vec::new())
    }
    fn journal_after(&self, _seq: i64, _limit: u32) -> Result<Vec<JournalEntry>, ReadError> {
        Ok(Vec::new())
    }
    fn fleet_history_after(&self, _seq: i64, _limit: u32) -> Result<Vec<FleetEntry>, ReadError> {
        Ok(Vec::new())
    }
    fn journal_heads(&self) -> Result<(i64, i64), ReadError> {
        Ok((0, 0))
    }

    fn act(&self, actor: &str, run: &str, action: &Action, now: Timestamp) -> Result<RunState, ActError> {
        let Some(obj) = self.run_object(run) else { return Err(ActError::NoRun(run.to_string())) };
        let Some(cur) = self.stored(&obj)? else {
            return Err(ActError::Unsupported(format!(
                "run {run} is not initialized yet (the controller copies its strategy first); try again"
            )));
        };
        let result =
            self.runtime.block_on(self.write(actor, &obj, &cur.state, action, now)).map(|()| cur.state);
        let (outcome, detail) = audit_outcome(&result);
        let reason = match outcome {
            AuditOutcome::Done => "ActionDone",
            AuditOutcome::Refused => "ActionRefused",
            AuditOutcome::Requested | AuditOutcome::Failed => "ActionFailed",
        };
        let note = audit_note(actor, action, run, outcome, &detail);
        self.runtime.block_on(self.events.person_action(
            &obj,
            reason,
            action.name(),
            &note,
            outcome != AuditOutcome::Done,
        ));
        result
    }

    fn audit(&self, run: Option<&str>) -> Result<Vec<AuditRecord>, ReadError> {
        let api: Api<KubeEvent> = Api::namespaced(self.conn.client.clone(), &self.namespace);
        let list = self
            .runtime
            .block_on(api.list(&ListParams::default()))
            .map_err(|e| read_err("listing Events", e))?;
        let mut mine: Vec<&KubeEvent> = list
            .items
            .iter()
            .filter(|e| e.reporting_controller.as_deref() == Some(REPORTER))
            .filter(|e| {
                let regarding = e.regarding.as_ref();
                regarding.and_then(|r| r.kind.as_deref()) == Some("UpdateRun")
                    && run.is_none_or(|r| regarding.and_then(|x| x.name.as_deref()) == Some(r))
            })
            .collect();
        mine.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        Ok(mine.into_iter().zip(1i64..).filter_map(|(e, seq)| HubSource::audit_record(seq, e)).collect())
    }

    fn hooks(&self) -> Result<Vec<Hook>, ReadError> {
        Ok(Vec::new())
    }
    fn enqueue_delivery(
        &self,
        _hook: &str,
        _key: &str,
        _kind: NotifyKind,
        _run: &str,
        _payload: &str,
    ) -> Result<bool, ReadError> {
        Ok(false)
    }
    fn due_deliveries(&self, _limit: u32) -> Result<Vec<Delivery>, ReadError> {
        Ok(Vec::new())
    }
    fn next_delivery_due_ms(&self) -> Result<Option<i64>, ReadError> {
        Ok(None)
    }
    fn record_attempt(&self, _id: i64, _result: Result<(), (&str, Option<i64>)>) -> Result<(), ReadError> {
        Ok(())
    }
    fn delivery_failures(&self) -> Result<Vec<(String, u64)>, ReadError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_note_reads_back_as_the_record_it_was() {
        let gate: refit_core::fleet::GateRef = "canary/after/1".parse().unwrap();
        let action = Action::ApproveGate { gate, expires_in_seconds: None };
        for (outcome, reason, detail) in [
            (AuditOutcome::Done, "ActionDone", ""),
            (AuditOutcome::Refused, "ActionRefused", "gate canary/after/1 is Completed"),
        ] {
            let e = KubeEvent {
                reason: Some(reason.into()),
                action: Some("approve-gate".into()),
                note: Some(audit_note("alice: ops", &action, "to-137", outcome, detail)),
                reporting_controller: Some(REPORTER.into()),
                ..KubeEvent::default()
            };
            let r = HubSource::audit_record(3, &e).unwrap();
            assert_eq!(r.actor, "alice: ops");
            assert_eq!((r.action.as_str(), r.outcome, r.detail.as_str()), ("approve-gate", outcome, detail));
            assert!(r.target.ends_with("to-137/canary/after/1"), "{}", r.target);
        }
    }

    #[test]
    fn a_change_names_its_run_and_state() {
        let mut cu = ClusterUpgrade::new(
            "to-137.canary-1",
            refit_controller::resources::ClusterUpgradeSpec {
                run: "to-137".into(),
                member: "canary-1".into(),
                cluster_uid: String::new(),
                kubernetes_version: None,
            },
        );
        cu.metadata.resource_version = Some("4711".into());
        cu.status = Some(refit_controller::resources::ClusterUpgradeStatus {
            state: Some(UpdateState::Running),
            ..Default::default()
        });
        let e = change_event(Some(&cu), Change::Applied);
        assert_eq!((e.run.as_str(), e.seq, e.kind()), ("to-137", 4711, "ClusterUpgrade"));
        assert_eq!(e.event["state"], "Running");
        assert_eq!(e.event["change"], "applied");
    }
}
