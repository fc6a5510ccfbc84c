//! The hub as a fleet store: `refit_fleet`'s driver and commit loop on the hub's resources.
//!
//! - A run is its `UpdateRun`: the tree in `status.run`, each member's detail in its
//!   `ClusterUpgrade` (`RUN.MEMBER`, labelled `refit.dev/run=RUN`), joined back into core's
//!   `RunState` on read ([`crate::layout`]). Its version is the UpdateRun's resourceVersion.
//! - A write replaces the UpdateRun's status naming the resourceVersion read: the API server
//!   answers 409 when anyone wrote the object since, which is the commit loop's `Conflict`
//!   (read again, apply again). The member details that changed are written to their
//!   ClusterUpgrades after the run (the run is the record; a detail is what people read).
//! - The fence is the leader's term: a driver's write is refused (`Deposed`, nothing written)
//!   unless this replica still leads in the term it took the run in. Between the check and the
//!   write a deposed leader can only write a resourceVersion it read while leading: if the new
//!   leader wrote since, the API server refuses it (409).
//! - Members: the `Member` objects; each kubeconfig is read from the referenced Secret and
//!   written to a 0600 file in a private (0700) directory for the launcher, and never logged.
//!   The cluster UID bound in the Member's status is checked before every observation and
//!   launch (`refit_fleet::observe::check_bound`).
//! - Every fleet event recorded becomes, where people watch for it, a Kubernetes Event
//!   ([`crate::events`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use refit_core::fleet::{Event, RunState, UpdateState};
use refit_fleet::store::{DriverStore, FleetStore, Taken};
use refit_store::fleet::{Fence, MemberProgress, MemberRecord, StoredRun};
use serde_json::json;
use tokio::sync::watch;

use crate::events::Events;
use crate::layout::MemberDetail;
use crate::leader::Role;
use crate::resources::{
    ClusterUpgrade, ClusterUpgradeSpec, ClusterUpgradeStatus, Condition, ConditionStatus, Member, UpdateRun,
    UpdateRunStatus,
};

/// How long a member's kubeconfig read from its Secret is used before the Secret is read again.
pub const SECRET_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// The label every ClusterUpgrade carries: its run.
pub const RUN_LABEL: &str = "refit.dev/run";

/// The ClusterUpgrade of `member` in `run` (dots cannot occur in either name).
pub fn cluster_upgrade_name(run: &str, member: &str) -> String {
    format!("{run}.{member}")
}

/// Whether this replica leads, and in which term (counted up each time it starts leading).
#[derive(Clone)]
pub struct Leadership {
    /// The replica's role.
    pub role: watch::Receiver<Role>,
    /// The current term (valid while `role` is Leader).
    pub term: Arc<AtomicI64>,
}

impl Leadership {
    /// A person's (or a server acting for one): leads nothing, so its writes are unfenced and
    /// it never drives a run.
    pub fn none() -> Leadership {
        let (_, role) = watch::channel(Role::Follower(String::new()));
        Leadership { role, term: Arc::default() }
    }

    /// The term this replica leads in, if it leads.
    pub fn leading(&self) -> Option<i64> {
        (*self.role.borrow() == Role::Leader).then(|| self.term.load(Ordering::SeqCst))
    }

    fn leader_name(&self) -> String {
        match &*self.role.borrow() {
            Role::Follower(who) if !who.is_empty() => who.clone(),
            _ => "another replica".into(),
        }
    }
}

/// A fleet failure on the hub, as the fleet library reports it.
pub(crate) fn fleet_err(context: impl Into<String>, e: kube::Error) -> refit_fleet::Error {
    refit_fleet::Error::Backend { context: context.into(), source: Box::new(e) }
}

/// The hub's fleet store (see the module doc).
pub struct HubFleet {
    client: kube::Client,
    namespace: String,
    holder: String,
    leadership: Leadership,
    held: HashMap<String, Fence>,
    /// The member details of each run as last read, to write only those that changed.
    details: HashMap<String, BTreeMap<String, MemberDetail>>,
    /// Each run's object as last read: a write names its resourceVersion (the commit loop
    /// reads right before it writes, so this saves reading it twice).
    objects: HashMap<String, UpdateRun>,
    /// The resourceVersion of each run at its last settled pass (nothing to do since).
    settled: HashMap<String, String>,
    /// Each member's kubeconfig file as last read from its Secret, and when.
    kubeconfig_read: std::sync::Mutex<HashMap<String, (std::time::Instant, Option<PathBuf>)>>,
    /// Member kubeconfigs (0700 directory, 0600 files); removed when dropped.
    kubeconfigs: tempfile::TempDir,
    events: Events,
}

impl HubFleet {
    /// The fleet in `namespace` of the hub `client` reaches, driven by `holder` while
    /// `leadership` says it leads.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        holder: &str,
        leadership: Leadership,
    ) -> Result<HubFleet, std::io::Error> {
        let kubeconfigs = tempfile::Builder::new().prefix("refit-hub-kubeconfigs").tempdir()?;
        // tempfile's directory is 0700 already; say so where it matters.
        set_mode(kubeconfigs.path(), 0o700)?;
        let events = Events::new(client.clone(), holder);
        Ok(HubFleet {
            client,
            namespace: namespace.to_string(),
            holder: holder.to_string(),
            leadership,
            held: HashMap::new(),
            details: HashMap::new(),
            objects: HashMap::new(),
            settled: HashMap::new(),
            kubeconfig_read: std::sync::Mutex::default(),
            kubeconfigs,
            events,
        })
    }

    /// The hub's client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The fleet's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether `obj` is as it was at its last settled pass (nothing changed since).
    pub fn is_settled(&self, obj: &UpdateRun) -> bool {
        let name = obj.metadata.name.as_deref().unwrap_or_default();
        obj.metadata.resource_version.is_some()
            && self.settled.get(name) == obj.metadata.resource_version.as_ref()
    }

    /// Remembers that `name` needed nothing at the version last read.
    pub fn settle(&mut self, name: &str) {
        if let Some(rv) = self.objects.get(name).and_then(|o| o.metadata.resource_version.clone()) {
            self.settled.insert(name.to_string(), rv);
        }
    }

    /// The Event recorder.
    pub fn events(&self) -> &Events {
        &self.events
    }

    fn runs_api(&self) -> Api<UpdateRun> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn upgrades_api(&self) -> Api<ClusterUpgrade> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn check_fence(&self, run: &str, fence: Option<&Fence>) -> Result<(), refit_fleet::Error> {
        let Some(f) = fence else { return Ok(()) };
        match self.leadership.leading() {
            Some(term) if term == f.generation && f.holder == self.holder => Ok(()),
            _ => Err(refit_store::Error::Deposed {
                run: run.to_string(),
                holder: Some(self.leadership.leader_name()),
            }
            .into()),
        }
    }

    /// The UpdateRun object and the run it holds (None: not initialized yet).
    pub async fn run_object(
        &mut self,
        name: &str,
    ) -> Result<Option<(UpdateRun, Option<StoredRun>)>, refit_fleet::Error> {
        let Some(obj) = self
            .runs_api()
            .get_opt(name)
            .await
            .map_err(|e| fleet_err(format!("reading UpdateRun {name}"), e))?
        else {
            return Ok(None);
        };
        if obj.status.as_ref().and_then(|s| s.run.as_ref()).is_none() {
            return Ok(Some((obj, None)));
        }
        let details = self.read_details(name).await?;
        let stored = stored_run(&obj, &details)?;
        self.details.insert(name.to_string(), details);
        self.objects.insert(name.to_string(), obj.clone());
        Ok(Some((obj, stored)))
    }

    async fn read_details(&self, run: &str) -> Result<BTreeMap<String, MemberDetail>, refit_fleet::Error> {
        let list = self
            .upgrades_api()
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={run}")))
            .await
            .map_err(|e| fleet_err(format!("listing the ClusterUpgrades of {run}"), e))?;
        Ok(details_of(&list.items))
    }

    /// Writes the status of `obj` for `state` (conditions from the state), naming the
    /// resourceVersion `obj` was read at; the new version. 409 → `Conflict`.
    pub async fn write_status(
        &mut self,
        obj: &UpdateRun,
        state: &RunState,
    ) -> Result<(i64, BTreeMap<String, MemberDetail>), refit_fleet::Error> {
        let name = state.name.clone();
        let (mut status, details) = UpdateRunStatus::of(state.clone());
        let old = obj.status.clone().unwrap_or_default();
        let generation = obj.metadata.generation;
        status.observed_generation = old.observed_generation;
        status.conditions = conditions(&old.conditions, state, generation, jiff::Timestamp::now());
        let mut next = UpdateRun {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: obj.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: obj.spec.clone(),
            status: Some(status),
        };
        next.metadata.generation = generation;
        let written = match self.runs_api().replace_status(&name, &PostParams::default(), &next).await {
            Ok(o) => o,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Err(refit_store::Error::Conflict {
                    name,
                    expected: version_of(obj).unwrap_or_default(),
                    found: -1,
                }
                .into());
            }
            Err(e) => return Err(fleet_err(format!("writing UpdateRun {name}"), e)),
        };
        Ok((version_of(&written)?, details))
    }

    /// Sets the UpdateRun's observedGeneration (the spec's request was acted on), keeping the
    /// rest of its status.
    pub async fn observe_generation(&self, obj: &UpdateRun) -> Result<(), refit_fleet::Error> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let patch = json!({"status": {"observedGeneration": obj.metadata.generation}});
        self.runs_api()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| fleet_err(format!("writing UpdateRun {name}"), e))?;
        Ok(())
    }

    /// Writes the member details of `run` that changed since read to their ClusterUpgrades.
    async fn write_details(
        &mut self,
        state: &RunState,
        details: BTreeMap<String, MemberDetail>,
    ) -> Result<(), refit_fleet::Error> {
        let run = &state.name;
        let before = self.details.remove(run).unwrap_or_default();
        let changed: Vec<&String> = details.keys().filter(|m| before.get(*m) != details.get(*m)).collect();
        let members = if changed.is_empty() { HashMap::new() } else { self.members_by_name().await? };
        for member in changed {
            let Some(detail) = details.get(member) else { continue };
            let state_of =
                state.members().find(|(_, _, m)| &m.name == member).map(|(_, _, m)| m.status.state);
            self.put_upgrade(run, member, detail, state_of, members.get(member)).await?;
        }
        self.details.insert(run.clone(), details);
        Ok(())
    }

    async fn members_by_name(&self) -> Result<HashMap<String, Member>, refit_fleet::Error> {
        let api: Api<Member> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = api.list(&ListParams::default()).await.map_err(|e| fleet_err("listing Members", e))?;
        Ok(list.items.into_iter().filter_map(|m| Some((m.metadata.name.clone()?, m))).collect())
    }

    async fn put_upgrade(
        &self,
        run: &str,
        member: &str,
        detail: &MemberDetail,
        state: Option<UpdateState>,
        m: Option<&Member>,
    ) -> Result<(), refit_fleet::Error> {
        let name = cluster_upgrade_name(run, member);
        let api = self.upgrades_api();
        let exists =
            api.get_opt(&name).await.map_err(|e| fleet_err(format!("reading ClusterUpgrade {name}"), e))?;
        if exists.is_none() {
            let mut cu = ClusterUpgrade::new(
                &name,
                ClusterUpgradeSpec {
                    run: run.to_string(),
                    member: member.to_string(),
                    cluster_uid: m.and_then(|m| m.status.as_ref()?.cluster_uid.clone()).unwrap_or_default(),
                    kubernetes_version: detail.target.as_ref().and_then(|t| t.kubernetes.clone()),
                },
            );
            cu.metadata.namespace = Some(self.namespace.clone());
            cu.metadata.labels = Some([(RUN_LABEL.to_string(), run.to_string())].into());
            cu.metadata.owner_references = None;
            match api.create(&PostParams::default(), &cu).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(fleet_err(format!("creating ClusterUpgrade {name}"), e)),
            }
        }
        let status = ClusterUpgradeStatus { state, detail: Some(detail.clone()), step: None, journal: None };
        let patch = json!({"status": {"state": status.state, "detail": status.detail}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| fleet_err(format!("writing ClusterUpgrade {name}"), e))?;
        Ok(())
    }

    /// A Member as the fleet library sees it: its kubeconfig written from its Secret to a 0600
    /// file (rewritten only when it changed; the Secret is read again after [`SECRET_TTL`] —
    /// whatever the file says, the cluster it reaches is checked against the binding before
    /// every observation and launch).
    async fn record_of(&self, m: &Member) -> Result<MemberRecord, refit_fleet::Error> {
        let name = m.metadata.name.clone().unwrap_or_default();
        let cached = {
            let read = self.kubeconfig_read.lock().unwrap_or_else(|e| e.into_inner());
            read.get(&name).filter(|(at, _)| at.elapsed() < SECRET_TTL).map(|(_, p)| p.clone())
        };
        let kubeconfig = match cached {
            Some(p) => p,
            None => {
                let p = self.read_kubeconfig(&name, m).await?;
                let mut read = self.kubeconfig_read.lock().unwrap_or_else(|e| e.into_inner());
                read.insert(name.clone(), (std::time::Instant::now(), p.clone()));
                p
            }
        };
        Ok(member_record(m, kubeconfig.map(|p| p.display().to_string())))
    }

    /// The member's kubeconfig from its Secret, written to its file (None: unreadable; the
    /// member is then recorded without one, and observing it says why).
    async fn read_kubeconfig(&self, name: &str, m: &Member) -> Result<Option<PathBuf>, refit_fleet::Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let r = &m.spec.kubeconfig_secret;
        Ok(match secrets.get_opt(&r.name).await {
            Ok(Some(s)) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(bytes) => Some(self.write_kubeconfig(name, &bytes.0)?),
                None => {
                    tracing::warn!(member = %name, secret = %r.name, key = %r.key, "the Secret has no such key");
                    None
                }
            },
            Ok(None) => {
                tracing::warn!(member = %name, secret = %r.name, "the member's Secret does not exist");
                None
            }
            Err(e) => return Err(fleet_err(format!("reading the Secret of member {name}"), e)),
        })
    }

    fn write_kubeconfig(&self, member: &str, bytes: &[u8]) -> Result<PathBuf, refit_fleet::Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.kubeconfigs.path().join(format!("{member}.kubeconfig"));
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(path);
        }
        let io = |e: std::io::Error| {
            refit_fleet::Error::Invalid(format!("writing member {member}'s kubeconfig: {e}"))
        };
        let tmp = self.kubeconfigs.path().join(format!(".{member}.kubeconfig.new"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// Binds every Member without a cluster UID to the cluster its kubeconfig reaches now
    /// (first contact); later contacts are checked against it.
    pub async fn bind_members(&self) -> Result<(), refit_fleet::Error> {
        let api: Api<Member> = Api::namespaced(self.client.clone(), &self.namespace);
        for m in self.members_by_name().await?.into_values() {
            if m.status.as_ref().is_some_and(|s| s.cluster_uid.is_some()) {
                continue;
            }
            let rec = self.record_of(&m).await?;
            let Some(kc) = &rec.kubeconfig else { continue };
            let name = rec.name.clone();
            match refit_fleet::observe::cluster_identity(std::path::Path::new(kc), &m.spec.context).await {
                Ok(uid) => {
                    let patch = json!({"status": {"clusterUid": uid, "lastSeen": jiff::Timestamp::now().to_string()}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| fleet_err(format!("binding member {name}"), e))?;
                    self.events
                        .member(
                            &m,
                            "Bound",
                            &format!("bound to the cluster with kube-system UID {uid}"),
                            false,
                        )
                        .await;
                }
                Err(why) => tracing::warn!(member = %name, "cannot reach the member to bind it: {why}"),
            }
        }
        Ok(())
    }
}

/// The run an UpdateRun holds — its tree joined with its members' details from their
/// ClusterUpgrades ([`details_of`]) — at the object's resourceVersion; None while it is not
/// initialized. The one mapping of the hub's objects to core's run: the driver reads through it
/// ([`HubFleet::run_object`]), and so do readers that keep a watch cache (`refit serve --hub`).
pub fn stored_run(
    obj: &UpdateRun,
    details: &BTreeMap<String, MemberDetail>,
) -> Result<Option<StoredRun>, refit_fleet::Error> {
    let Some(tree) = obj.status.as_ref().and_then(|s| s.run.clone()) else { return Ok(None) };
    Ok(Some(StoredRun { state: crate::layout::join(tree, details), version: version_of(obj)? }))
}

/// Each member's detail, by member, from a run's ClusterUpgrades.
pub fn details_of<'a>(
    upgrades: impl IntoIterator<Item = &'a ClusterUpgrade>,
) -> BTreeMap<String, MemberDetail> {
    upgrades
        .into_iter()
        .filter_map(|cu| Some((cu.spec.member.clone(), cu.status.as_ref()?.detail.clone()?)))
        .collect()
}

/// A Member as the fleet library sees it, with the kubeconfig file written from its Secret
/// (None for readers that never touch Secrets).
pub fn member_record(m: &Member, kubeconfig: Option<String>) -> MemberRecord {
    MemberRecord {
        name: m.metadata.name.clone().unwrap_or_default(),
        kubeconfig,
        context: Some(m.spec.context.clone()),
        cluster_uid: m.status.as_ref().and_then(|s| s.cluster_uid.clone()),
        labels: m.spec.labels.clone(),
        update_group: m.spec.update_group.clone(),
        maintenance_window: m.spec.maintenance_window.clone(),
        node_image_source: None,
        pending_budget_seconds: m.spec.pending_budget_seconds,
        action: m.spec.action.clone(),
        plan_file: None,
        upgrade_args: m.spec.upgrade_args.clone(),
    }
}

fn version_of(obj: &UpdateRun) -> Result<i64, refit_fleet::Error> {
    let rv = obj.metadata.resource_version.as_deref().unwrap_or_default();
    rv.parse::<i64>().map_err(|_| {
        refit_fleet::Error::Invalid(format!(
            "UpdateRun {}: resourceVersion '{rv}' is not a number (refit needs an etcd-backed hub)",
            obj.metadata.name.as_deref().unwrap_or_default()
        ))
    })
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<(), std::io::Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// `Initialized`, `Progressing` and `Succeeded` for `state`, each keeping its transition time
/// while its status is unchanged.
pub fn conditions(
    old: &[Condition],
    state: &RunState,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    use ConditionStatus::{False, True};
    let s = state.status.state;
    let progressing = matches!(s, UpdateState::Running | UpdateState::Pending | UpdateState::Stopping);
    let (succeeded, why) = match s {
        UpdateState::Completed => (True, "Completed"),
        UpdateState::Failed => (False, "Failed"),
        UpdateState::Stopped => (False, "Stopped"),
        UpdateState::Skipped => (True, "Skipped"),
        _ => (ConditionStatus::Unknown, "NotFinished"),
    };
    let wanted = [
        ("Initialized", True, "Initialized", "the strategy was copied and its members resolved".to_string()),
        (
            "Progressing",
            if progressing { True } else { False },
            if progressing { "Running" } else { "NotRunning" },
            format!("the run is {s}"),
        ),
        ("Succeeded", succeeded, why, format!("the run is {s}")),
    ];
    wanted
        .into_iter()
        .map(|(t, status, reason, message)| {
            let since = old
                .iter()
                .find(|c| c.type_ == t && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.to_string());
            Condition {
                type_: t.to_string(),
                status,
                reason: reason.to_string(),
                message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

impl FleetStore for HubFleet {
    async fn run(&mut self, name: &str) -> Result<Option<StoredRun>, refit_fleet::Error> {
        Ok(self.run_object(name).await?.and_then(|(_, r)| r))
    }

    async fn runs(&mut self) -> Result<Vec<StoredRun>, refit_fleet::Error> {
        let list = self
            .runs_api()
            .list(&ListParams::default())
            .await
            .map_err(|e| fleet_err("listing UpdateRuns", e))?;
        let mut out = Vec::new();
        for obj in list.items {
            let Some(name) = obj.metadata.name.clone() else { continue };
            if let Some((_, Some(r))) = self.run_object(&name).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn save_run(
        &mut self,
        state: &RunState,
        expected: i64,
        events: &[Event],
        fence: Option<&Fence>,
    ) -> Result<i64, refit_fleet::Error> {
        self.check_fence(&state.name, fence)?;
        let name = state.name.clone();
        let obj = match self.objects.get(&name) {
            Some(o) if version_of(o).ok() == Some(expected) => o.clone(),
            // Not the version read last: someone wrote it since (or it was never read).
            _ => return Err(refit_store::Error::Conflict { name, expected, found: -1 }.into()),
        };
        let before = obj
            .status
            .as_ref()
            .and_then(|s| s.run.as_ref())
            .map(|r| r.status.state)
            .unwrap_or(UpdateState::NotStarted);
        let (version, details) = self.write_status(&obj, state).await?;
        self.write_details(state, details).await?;
        let notes = crate::events::translate(&state.name, before, state, events);
        let members = if notes.iter().any(|n| matches!(n.subject, crate::events::Subject::Member(_))) {
            self.members_by_name().await?
        } else {
            HashMap::new()
        };
        self.events.publish_all(&obj, &state.name, notes, &members).await;
        Ok(version)
    }

    async fn members(&mut self) -> Result<Vec<MemberRecord>, refit_fleet::Error> {
        let mut out = Vec::new();
        for m in self.members_by_name().await?.into_values() {
            out.push(self.record_of(&m).await?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn member(&mut self, name: &str) -> Result<Option<MemberRecord>, refit_fleet::Error> {
        let api: Api<Member> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.get_opt(name).await.map_err(|e| fleet_err(format!("reading Member {name}"), e))? {
            Some(m) => Ok(Some(self.record_of(&m).await?)),
            None => Ok(None),
        }
    }

    async fn set_member_progress(
        &mut self,
        run: &str,
        progress: &MemberProgress,
        fence: Option<&Fence>,
    ) -> Result<(), refit_fleet::Error> {
        self.check_fence(run, fence)?;
        let name = cluster_upgrade_name(run, &progress.member);
        let patch = json!({"status": {"step": progress.detail}});
        match self.upgrades_api().patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            // Not created yet (its detail is written with the run): progress is best effort.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(fleet_err(format!("writing ClusterUpgrade {name}"), e)),
        }
    }
}

impl DriverStore for HubFleet {
    async fn take_lease(&mut self, run: &str) -> Result<Taken, refit_fleet::Error> {
        match self.leadership.leading() {
            Some(term) => {
                let fence = Fence { run: run.to_string(), holder: self.holder.clone(), generation: term };
                self.held.insert(run.to_string(), fence.clone());
                // Who drove it before is in the leader Lease's history, not the run's.
                Ok(Taken { fence, took_over: None })
            }
            None if self.held.contains_key(run) => Err(refit_store::Error::Deposed {
                run: run.to_string(),
                holder: Some(self.leadership.leader_name()),
            }
            .into()),
            None => Err(refit_fleet::Error::Backend {
                context: format!("run {run} is driven by the leader ({})", self.leadership.leader_name()),
                source: "this replica does not lead".into(),
            }),
        }
    }

    fn fence(&self, run: &str) -> Option<Fence> {
        self.held.get(run).cloned()
    }

    async fn release_lease(&mut self, run: &str) {
        self.held.remove(run);
    }

    fn forget_lease(&mut self, run: &str) {
        self.held.remove(run);
    }

    fn holder(&self) -> &str {
        &self.holder
    }
}
