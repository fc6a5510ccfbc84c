//! `refit fleet --hub`: the fleet verbs against the hub's resources ([`HubClient`], the hub's
//! [`FleetApi`]: the CLI's verbs are written once, for the SQLite store and for the hub).
//!
//! - Runs: `UpdateRun`s as [`crate::store::stored_run`] reads them. Start and stop write the
//!   spec's `state` (the controller acts on it once per generation: [`spec_writes`]); skip and
//!   retry are applied to the run's status through the same commit loop as the driver's
//!   (`refit_fleet::commit_on` on [`HubFleet`], no fence: a person's command), so a write that
//!   races the controller's is read again and re-applied, never lost. Every change is checked
//!   against core's rules first: a refused one writes nothing.
//! - Members: a kubeconfig goes into a Secret (`NAME-kubeconfig`, labelled with the member) the
//!   Member references; the member is bound to the cluster it reaches now (`status.clusterUid`,
//!   as the controller binds at first contact).
//! - Strategies and profiles: `UpdateStrategy` and `AutoUpgradeProfile` objects.
//!
//! The approver is who the hub says the caller is (a `SelfSubjectReview`: the user the API
//! server authenticated, impersonation included), never a name the caller types; the admission
//! policy in the manifests refuses any other name, and RBAC decides who may approve at all.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use refit_core::fleet::{Event, GateRef, Profile, RunState, Strategy, UpdateState, UpgradeSpec};
use refit_fleet::api::{Approved, FleetApi, StrategySource, check_deletable};
use refit_fleet::runs::Started;
use refit_kube::Connection;
use refit_store::fleet::{MemberProgress, MemberRecord, StoredRun};
use serde_json::json;

use crate::resources::{
    AutoUpgradeProfile, AutoUpgradeProfileSpec, ClusterUpgrade, Gate, Member, MemberSpec, RunRequest,
    SecretKeyRef, UpdateRun, UpdateRunSpec, UpdateStrategy, UpdateStrategySpec,
};
use crate::store::{HubFleet, Leadership, RUN_LABEL, details_of, member_record, stored_run};

/// What went wrong talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No such gate object.
    #[error("no gate {gate} of run {run} in namespace {namespace} (kubectl -n {namespace} get gates)")]
    NoGate {
        /// The run.
        run: String,
        /// The gate as core names it.
        gate: String,
        /// Where it was looked for.
        namespace: String,
    },
    /// The hub refused (RBAC, the admission policy, a schema): its message.
    #[error("the hub refused: {0}")]
    Refused(String),
    /// The hub could not be asked.
    #[error("{context}: {source}")]
    Api {
        /// What was asked.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<kube::Error>,
    },
}

impl HubError {
    /// Bad input (exit 2): a name that does not exist, or a request the hub refuses (RBAC, the
    /// admission policy, a schema) — the operator's to fix, as every hub verb's refusal is
    /// (`HubClient`'s reads map the same statuses to `Invalid`).
    pub fn is_usage(&self) -> bool {
        matches!(self, HubError::NoGate { .. } | HubError::Refused(_))
    }
}

fn hub_err(context: impl Into<String>, e: kube::Error) -> HubError {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => HubError::Refused(s.message.clone()),
        e => HubError::Api { context: context.into(), source: Box::new(e) },
    }
}

/// The Gate object of `gate` (`stage/after/1`) in `run`: `run.stage.after.1` (dots cannot
/// occur in run, stage or group names, so the name is unambiguous).
pub fn gate_object_name(run: &str, gate: &str) -> String {
    format!("{run}.{}", gate.replace('/', "."))
}

/// The user the hub authenticates this connection as.
pub async fn whoami(conn: &Connection) -> Result<String, HubError> {
    let api: Api<SelfSubjectReview> = Api::all(conn.client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| hub_err("asking the hub who we are (SelfSubjectReview)", e))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or_else(|| HubError::Refused("the hub did not say who we are (SelfSubjectReview)".into()))
}

/// Approves `gate` of `run` as the caller; returns the approver recorded.
pub async fn approve(
    conn: &Connection,
    namespace: &str,
    run: &str,
    gate: &str,
    expires_at: Option<jiff::Timestamp>,
) -> Result<String, HubError> {
    let me = whoami(conn).await?;
    approve_as(conn, &me, namespace, run, gate, expires_at, None).await?;
    Ok(me)
}

/// Approves `gate` of `run` as `me` (the connection's user, from [`whoami`]), for
/// `on_behalf_of` when a front end approves for one of its users (`refit serve --hub`). The
/// one place a Gate approval is written.
pub async fn approve_as(
    conn: &Connection,
    me: &str,
    namespace: &str,
    run: &str,
    gate: &str,
    expires_at: Option<jiff::Timestamp>,
    on_behalf_of: Option<&str>,
) -> Result<(), HubError> {
    let gates: Api<Gate> = Api::namespaced(conn.client.clone(), namespace);
    let name = gate_object_name(run, gate);
    // A merge patch keeps fields it does not name: null removes an earlier approval's.
    let approval = json!({
        "approver": me,
        "expiresAt": expires_at.map(|t| t.to_string()),
        "onBehalfOf": on_behalf_of,
    });
    let patch = json!({"spec": {"approval": approval}});
    match gates.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(HubError::NoGate { run: run.into(), gate: gate.into(), namespace: namespace.into() })
        }
        Err(e) => Err(hub_err(format!("approving gate {name}"), e)),
    }
}

/// The `spec.state` writes that make the controller act on `want`. It acts once per generation
/// of the spec, so starting again a run whose spec already says Run (it failed, say) writes
/// Stop first — a stop the run's rules refuse on a finished run, so nothing but the new
/// generation comes of it. A stop is always one write: it never passes through Run.
pub fn spec_writes(current: Option<RunRequest>, want: RunRequest) -> Vec<RunRequest> {
    match (current, want) {
        (Some(RunRequest::Run), RunRequest::Run) => vec![RunRequest::Stop, RunRequest::Run],
        (_, want) => vec![want],
    }
}

/// The annotation naming who last asked for the run's `spec.state`.
pub const REQUESTED_BY: &str = "refit.dev/requested-by";

/// Writes `want` into run `name`'s spec (see [`spec_writes`]), naming `actor`.
pub async fn request(
    client: &kube::Client,
    namespace: &str,
    obj: &UpdateRun,
    want: RunRequest,
    actor: &str,
) -> Result<(), kube::Error> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let api: Api<UpdateRun> = Api::namespaced(client.clone(), namespace);
    for state in spec_writes(obj.spec.state, want) {
        let patch = json!({
            "metadata": {"annotations": {REQUESTED_BY: actor}},
            "spec": {"state": state},
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// The label on a member's kubeconfig Secret that `refit fleet --hub member add` made.
pub const MEMBER_LABEL: &str = "refit.dev/member";

/// The hub as people's fleet verbs see it (see the module doc).
pub struct HubClient {
    conn: Connection,
    namespace: String,
    me: String,
    fleet: HubFleet,
}

fn backend(context: impl Into<String>, e: kube::Error) -> refit_fleet::Error {
    match e {
        kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound" && s.message.contains("the server could not find the requested resource") => {
            refit_fleet::Error::Invalid(
                "the hub has no refit resources: install them with `refit controller manifests | kubectl apply -f -`"
                    .into(),
            )
        }
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => {
            refit_fleet::Error::Invalid(format!("the hub refused: {}", s.message))
        }
        e => crate::store::fleet_err(context, e),
    }
}

fn exists(kind: &'static str, name: &str) -> refit_fleet::Error {
    refit_store::Error::Exists { kind, name: name.to_string() }.into()
}

impl HubClient {
    /// The fleet in `namespace` of the hub `conn` reaches, as the user the hub says we are.
    pub async fn new(conn: Connection, namespace: &str) -> Result<HubClient, refit_fleet::Error> {
        let me = whoami(&conn).await.map_err(|e| refit_fleet::Error::Backend {
            context: "asking the hub who we are".into(),
            source: Box::new(e),
        })?;
        // A person's commands hold no lease and lead nothing: their writes are unfenced.
        let fleet = HubFleet::new(conn.client.clone(), namespace, &me, Leadership::none())
            .map_err(|e| refit_fleet::Error::Invalid(format!("cannot create a private directory: {e}")))?;
        Ok(HubClient { conn, namespace: namespace.to_string(), me, fleet })
    }

    /// Who the hub says we are.
    pub fn identity(&self) -> &str {
        &self.me
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.conn.client.clone(), &self.namespace)
    }

    async fn run_obj(&self, name: &str) -> Result<UpdateRun, refit_fleet::Error> {
        self.api::<UpdateRun>()
            .get_opt(name)
            .await
            .map_err(|e| backend(format!("reading UpdateRun {name}"), e))?
            .ok_or_else(|| refit_fleet::Error::NoRun(name.to_string()))
    }

    async fn upgrades(&self, run: Option<&str>) -> Result<Vec<ClusterUpgrade>, refit_fleet::Error> {
        let lp = match run {
            Some(r) => ListParams::default().labels(&format!("{RUN_LABEL}={r}")),
            None => ListParams::default(),
        };
        Ok(self
            .api::<ClusterUpgrade>()
            .list(&lp)
            .await
            .map_err(|e| backend("listing ClusterUpgrades", e))?
            .items)
    }

    async fn member_obj(&self, name: &str) -> Result<Option<Member>, refit_fleet::Error> {
        self.api::<Member>().get_opt(name).await.map_err(|e| backend(format!("reading Member {name}"), e))
    }

    /// The Secret holding `m`'s kubeconfig, written from its file.
    async fn put_kubeconfig(
        &self,
        m: &MemberRecord,
        create: bool,
    ) -> Result<SecretKeyRef, refit_fleet::Error> {
        let secret_name = format!("{}-kubeconfig", m.name);
        let key = SecretKeyRef { name: secret_name.clone(), key: "kubeconfig".into() };
        let Some(path) = &m.kubeconfig else { return Ok(key) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| refit_fleet::Error::Invalid(format!("--kubeconfig {path}: {e}")))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some([(MEMBER_LABEL.to_string(), m.name.clone())].into()),
                ..ObjectMeta::default()
            },
            string_data: Some([("kubeconfig".to_string(), text)].into()),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        let api = self.api::<Secret>();
        let context = format!("writing the Secret {secret_name}");
        if create {
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Err(refit_fleet::Error::Invalid(format!(
                        "Secret {secret_name} exists already in {}: remove it, or reference it from a Member with kubectl",
                        self.namespace
                    )));
                }
                Err(e) => return Err(backend(context, e)),
            }
        } else {
            api.patch(&secret_name, &PatchParams::apply("refit").force(), &Patch::Apply(&secret))
                .await
                .map_err(|e| backend(context, e))?;
        }
        Ok(key)
    }

    fn member_spec(m: &MemberRecord, key: SecretKeyRef) -> Result<MemberSpec, refit_fleet::Error> {
        if m.node_image_source.is_some() || m.plan_file.is_some() {
            return Err(refit_fleet::Error::Invalid(
                "--node-image-source and --plan-file have no meaning on a hub (files on this machine the controller cannot read)"
                    .into(),
            ));
        }
        Ok(MemberSpec {
            kubeconfig_secret: key,
            context: m.context.clone().unwrap_or_default(),
            update_group: m.update_group.clone(),
            labels: m.labels.clone(),
            maintenance_window: m.maintenance_window.clone(),
            pending_budget_seconds: m.pending_budget_seconds,
            action: m.action.clone(),
            upgrade_args: m.upgrade_args.clone(),
        })
    }

    async fn bind(&self, name: &str, uid: &Option<String>) -> Result<(), refit_fleet::Error> {
        let Some(uid) = uid else { return Ok(()) };
        let patch = json!({"status": {"clusterUid": uid, "lastSeen": jiff::Timestamp::now().to_string()}});
        self.api::<Member>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| backend(format!("binding Member {name}"), e))?;
        Ok(())
    }
}

/// A hub profile as core's.
fn profile_of(p: &AutoUpgradeProfile) -> Profile {
    Profile {
        name: p.metadata.name.clone().unwrap_or_default(),
        channel: p.spec.channel,
        target_kubernetes_version: p.spec.target_kubernetes_version.as_deref().and_then(|m| m.parse().ok()),
        strategy: p.spec.strategy.clone(),
        node_image_selection: p.spec.node_image_selection,
        disabled: p.spec.disabled,
        last_trigger: None,
        last_generated_run: p.status.as_ref().and_then(|s| s.last_generated_run.clone()),
    }
}

impl FleetApi for HubClient {
    async fn list_runs(&mut self) -> Result<Vec<StoredRun>, refit_fleet::Error> {
        let runs = self
            .api::<UpdateRun>()
            .list(&ListParams::default())
            .await
            .map_err(|e| backend("listing UpdateRuns", e))?;
        let upgrades = self.upgrades(None).await?;
        let mut out = Vec::new();
        for obj in &runs.items {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let details = details_of(upgrades.iter().filter(|cu| cu.spec.run == name));
            if let Some(r) = stored_run(obj, &details)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.state.name.cmp(&b.state.name));
        Ok(out)
    }

    async fn get_run(&mut self, name: &str) -> Result<StoredRun, refit_fleet::Error> {
        let obj = self.run_obj(name).await?;
        let details = details_of(&self.upgrades(Some(name)).await?);
        stored_run(&obj, &details)?.ok_or_else(|| {
            refit_fleet::Error::Invalid(format!(
                "run {name} is not initialized yet: the controller copies its strategy on its next pass (is `refit controller` running? kubectl describe updaterun {name})"
            ))
        })
    }

    async fn progress(&mut self, run: &str) -> Result<Vec<MemberProgress>, refit_fleet::Error> {
        Ok(self
            .upgrades(Some(run))
            .await?
            .into_iter()
            .filter_map(|cu| {
                let step = cu.status?.step?;
                Some(MemberProgress { member: cu.spec.member, operation: None, detail: step })
            })
            .collect())
    }

    async fn create_run(
        &mut self,
        name: &str,
        spec: UpgradeSpec,
        strategy: StrategySource,
    ) -> Result<Option<RunState>, refit_fleet::Error> {
        let StrategySource::Named(strategy) = strategy else {
            return Err(refit_fleet::Error::Invalid(
                "on a hub a run names an UpdateStrategy (--strategy NAME; refit fleet --hub … strategy create NAME -f FILE)"
                    .into(),
            ));
        };
        let Some(s) = self.get_strategy(&strategy).await? else {
            return Err(refit_fleet::Error::NoStrategy(format!(
                "no strategy named '{strategy}' (see refit fleet --hub … strategy list)"
            )));
        };
        // What the controller does at initialization, checked now: nothing is written when the
        // strategy does not resolve against the members.
        let members = self.list_members().await?;
        let plan = refit_core::fleet::resolve(&s, &refit_fleet::observe::fleet_members(&members))
            .map_err(|e| refit_fleet::Error::Invalid(e.to_string()))?;
        RunState::new(name, spec.clone(), s, plan, jiff::Timestamp::now())
            .map_err(|e| refit_fleet::Error::Invalid(e.to_string()))?;
        let mut obj = UpdateRun::new(name, UpdateRunSpec { upgrade: spec, strategy, state: None });
        obj.metadata.namespace = Some(self.namespace.clone());
        match self.api::<UpdateRun>().create(&PostParams::default(), &obj).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(exists("update run", name)),
            Err(e) => Err(backend(format!("creating UpdateRun {name}"), e)),
        }
    }

    async fn act(&mut self, name: &str, event: Event) -> Result<StoredRun, refit_fleet::Error> {
        let obj = self.run_obj(name).await?;
        let cur = self.get_run(name).await?;
        let want = match &event {
            Event::Stop { .. } => Some(RunRequest::Stop),
            Event::Start { .. } => Some(RunRequest::Run),
            _ => None,
        };
        let Some(want) = want else {
            // Skip, retry: applied to the run itself, as the driver's decisions are.
            return refit_fleet::commit_on(&mut self.fleet, name, None, |_| Ok(event.clone())).await;
        };
        // A first start freezes targets, which the controller does; core judges the rest.
        if !(want == RunRequest::Run && cur.state.status.state == UpdateState::NotStarted) {
            refit_core::fleet::apply(&cur.state, &event)?;
        }
        request(&self.conn.client, &self.namespace, &obj, want, &self.me)
            .await
            .map_err(|e| backend(format!("writing UpdateRun {name}"), e))?;
        Ok(cur)
    }

    fn authenticated(&self) -> Option<&str> {
        Some(&self.me)
    }

    async fn start(&mut self, name: &str, drive: bool, by: String) -> Result<Started, refit_fleet::Error> {
        let cur = self.get_run(name).await?.state.status.state;
        if drive && matches!(cur, UpdateState::Running | UpdateState::Pending | UpdateState::Stopping) {
            return Ok(Started::AlreadyActive(cur));
        }
        self.act(name, Event::Start { at: jiff::Timestamp::now(), targets: None, plan: None, by: Some(by) })
            .await?;
        Ok(if cur == UpdateState::NotStarted { Started::First } else { Started::Again })
    }

    /// Approves as the authenticated user (`_by`: the caller's name for them, not trusted).
    async fn approve(
        &mut self,
        run: &str,
        gate: &GateRef,
        expires_at: Option<jiff::Timestamp>,
        _by: String,
    ) -> Result<Approved, refit_fleet::Error> {
        let cur = self.get_run(run).await?;
        let event = Event::ApproveGate {
            gate: gate.clone(),
            by: self.me.clone(),
            at: jiff::Timestamp::now(),
            expires_at,
        };
        refit_core::fleet::apply(&cur.state, &event)?;
        approve_as(&self.conn, &self.me, &self.namespace, run, &gate.to_string(), expires_at, None)
            .await
            .map_err(|e| match e {
                e if e.is_usage() => refit_fleet::Error::Invalid(e.to_string()),
                e => refit_fleet::Error::Backend {
                    context: format!("approving {gate} of {run}"),
                    source: Box::new(e),
                },
            })?;
        Ok(Approved { by: self.me.clone(), gate: cur.state.gate(gate).cloned() })
    }

    async fn delete_run(&mut self, name: &str) -> Result<(), refit_fleet::Error> {
        let obj = self.run_obj(name).await?;
        if let Some(r) = stored_run(&obj, &details_of(&self.upgrades(Some(name)).await?))? {
            check_deletable(&r.state)?;
        }
        let dp = DeleteParams::default();
        self.api::<UpdateRun>()
            .delete(name, &dp)
            .await
            .map_err(|e| backend(format!("deleting UpdateRun {name}"), e))?;
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={name}"));
        self.api::<ClusterUpgrade>()
            .delete_collection(&dp, &lp)
            .await
            .map_err(|e| backend(format!("deleting the ClusterUpgrades of {name}"), e))?;
        self.api::<Gate>()
            .delete_collection(&dp, &lp)
            .await
            .map_err(|e| backend(format!("deleting the Gates of {name}"), e))?;
        Ok(())
    }

    async fn list_members(&mut self) -> Result<Vec<MemberRecord>, refit_fleet::Error> {
        let list = self
            .api::<Member>()
            .list(&ListParams::default())
            .await
            .map_err(|e| backend("listing Members", e))?;
        let mut out: Vec<MemberRecord> = list.items.iter().map(|m| member_record(m, None)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn get_member(&mut self, name: &str) -> Result<Option<MemberRecord>, refit_fleet::Error> {
        Ok(self.member_obj(name).await?.map(|m| member_record(&m, None)))
    }

    async fn add_member(&mut self, m: &MemberRecord) -> Result<(), refit_fleet::Error> {
        if self.member_obj(&m.name).await?.is_some() {
            return Err(exists("member", &m.name));
        }
        let spec = Self::member_spec(m, SecretKeyRef { name: String::new(), key: String::new() })?;
        let key = self.put_kubeconfig(m, true).await?;
        let mut obj = Member::new(&m.name, MemberSpec { kubeconfig_secret: key, ..spec });
        obj.metadata.namespace = Some(self.namespace.clone());
        match self.api::<Member>().create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => return Err(exists("member", &m.name)),
            Err(e) => return Err(backend(format!("creating Member {}", m.name), e)),
        }
        self.bind(&m.name, &m.cluster_uid).await
    }

    async fn update_member(&mut self, m: &MemberRecord) -> Result<(), refit_fleet::Error> {
        let Some(mut obj) = self.member_obj(&m.name).await? else {
            return Err(refit_store::Error::NotFound { kind: "member", name: m.name.clone() }.into());
        };
        let key = if m.kubeconfig.is_some() {
            self.put_kubeconfig(m, false).await?
        } else {
            obj.spec.kubeconfig_secret.clone()
        };
        obj.spec = Self::member_spec(m, key)?;
        obj.status = None;
        self.api::<Member>()
            .replace(&m.name, &PostParams::default(), &obj)
            .await
            .map_err(|e| backend(format!("writing Member {}", m.name), e))?;
        self.bind(&m.name, &m.cluster_uid).await
    }

    async fn remove_member(&mut self, name: &str) -> Result<bool, refit_fleet::Error> {
        let Some(obj) = self.member_obj(name).await? else { return Ok(false) };
        let dp = DeleteParams::default();
        self.api::<Member>()
            .delete(name, &dp)
            .await
            .map_err(|e| backend(format!("deleting Member {name}"), e))?;
        // Its kubeconfig Secret, when `member add` made it (a Secret someone else made stays).
        let secrets = self.api::<Secret>();
        let secret = &obj.spec.kubeconfig_secret.name;
        if let Ok(Some(s)) = secrets.get_opt(secret).await
            && s.metadata.labels.as_ref().and_then(|l| l.get(MEMBER_LABEL)).map(String::as_str) == Some(name)
        {
            secrets.delete(secret, &dp).await.map_err(|e| backend(format!("deleting Secret {secret}"), e))?;
        }
        Ok(true)
    }

    async fn list_strategies(&mut self) -> Result<Vec<(String, Strategy)>, refit_fleet::Error> {
        let list = self
            .api::<UpdateStrategy>()
            .list(&ListParams::default())
            .await
            .map_err(|e| backend("listing UpdateStrategies", e))?;
        let mut out: BTreeMap<String, Strategy> = BTreeMap::new();
        for s in list.items {
            let name = s.metadata.name.clone().unwrap_or_default();
            out.insert(name.clone(), s.spec.strategy(&name));
        }
        Ok(out.into_iter().collect())
    }

    async fn get_strategy(&mut self, name: &str) -> Result<Option<Strategy>, refit_fleet::Error> {
        Ok(self
            .api::<UpdateStrategy>()
            .get_opt(name)
            .await
            .map_err(|e| backend(format!("reading UpdateStrategy {name}"), e))?
            .map(|s| s.spec.strategy(name)))
    }

    async fn put_strategy(
        &mut self,
        name: &str,
        s: &Strategy,
        replace: bool,
    ) -> Result<(), refit_fleet::Error> {
        if let Some(e) = s.hub_refusal() {
            return Err(refit_fleet::Error::Invalid(e.to_string()));
        }
        let api = self.api::<UpdateStrategy>();
        let mut obj = UpdateStrategy::new(name, UpdateStrategySpec { stages: s.stages.clone() });
        obj.metadata.namespace = Some(self.namespace.clone());
        let existing =
            api.get_opt(name).await.map_err(|e| backend(format!("reading UpdateStrategy {name}"), e))?;
        let written = match existing {
            Some(_) if !replace => return Err(exists("strategy", name)),
            Some(old) => {
                obj.metadata.resource_version = old.metadata.resource_version;
                api.replace(name, &PostParams::default(), &obj).await
            }
            None => api.create(&PostParams::default(), &obj).await,
        };
        match written {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(exists("strategy", name)),
            Err(e) => Err(backend(format!("writing UpdateStrategy {name}"), e)),
        }
    }

    async fn delete_strategy(&mut self, name: &str) -> Result<bool, refit_fleet::Error> {
        match self.api::<UpdateStrategy>().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(backend(format!("deleting UpdateStrategy {name}"), e)),
        }
    }

    async fn list_profiles(&mut self) -> Result<Vec<Profile>, refit_fleet::Error> {
        let list = self
            .api::<AutoUpgradeProfile>()
            .list(&ListParams::default())
            .await
            .map_err(|e| backend("listing AutoUpgradeProfiles", e))?;
        let mut out: Vec<Profile> = list.items.iter().map(profile_of).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn get_profile(&mut self, name: &str) -> Result<Option<Profile>, refit_fleet::Error> {
        Ok(self
            .api::<AutoUpgradeProfile>()
            .get_opt(name)
            .await
            .map_err(|e| backend(format!("reading AutoUpgradeProfile {name}"), e))?
            .as_ref()
            .map(profile_of))
    }

    async fn create_profile(&mut self, p: &Profile) -> Result<(), refit_fleet::Error> {
        let spec = AutoUpgradeProfileSpec {
            channel: p.channel,
            target_kubernetes_version: p.target_kubernetes_version.map(|m| m.to_string()),
            strategy: p.strategy.clone(),
            node_image_selection: p.node_image_selection,
            disabled: p.disabled,
        };
        let mut obj = AutoUpgradeProfile::new(&p.name, spec);
        obj.metadata.namespace = Some(self.namespace.clone());
        match self.api::<AutoUpgradeProfile>().create(&PostParams::default(), &obj).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(exists("profile", &p.name)),
            Err(e) => Err(backend(format!("creating AutoUpgradeProfile {}", p.name), e)),
        }
    }

    async fn delete_profile(&mut self, name: &str) -> Result<bool, refit_fleet::Error> {
        match self.api::<AutoUpgradeProfile>().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(backend(format!("deleting AutoUpgradeProfile {name}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_made_for_someone_records_them_and_who_vouched() {
        let mut a = crate::resources::ApprovalRequest {
            approver: "system:serviceaccount:ops:refit-serve".into(),
            expires_at: None,
            on_behalf_of: None,
        };
        assert_eq!(a.by(), "system:serviceaccount:ops:refit-serve");
        a.on_behalf_of = Some("alice".into());
        assert_eq!(a.by(), "alice (through system:serviceaccount:ops:refit-serve)");
    }

    #[test]
    fn starting_again_passes_through_stop_and_stopping_never_through_run() {
        use RunRequest::{Run, Stop};
        assert_eq!(spec_writes(None, Run), [Run]);
        assert_eq!(spec_writes(Some(Stop), Run), [Run]);
        assert_eq!(spec_writes(Some(Run), Run), [Stop, Run]);
        for current in [None, Some(Run), Some(Stop)] {
            assert_eq!(spec_writes(current, Stop), [Stop]);
        }
    }

    #[test]
    fn gate_object_names_are_unambiguous() {
        assert_eq!(gate_object_name("to-137", "canary/after/1"), "to-137.canary.after.1");
        assert_ne!(gate_object_name("r", "a-b/c/before/1"), gate_object_name("r", "a/b-c/before/1"));
    }
}
