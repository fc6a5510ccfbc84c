//! The seam people's `refit fleet` verbs run on, wherever the fleet lives: the SQLite store here,
//! the hub's custom resources in `refit_controller::hub` (`refit fleet --hub`).
//!
//! Each verb of the CLI is written once against [`FleetApi`]; only what has no meaning in one
//! home differs (driving a run in the foreground, a run's SQLite history, a strategy inline in
//! a run on the hub), and an implementation refuses such a request with [`Error::Invalid`]
//! (nothing changed). Every change to a run goes through core's rules first: a refused one
//! changes nothing in either home.

use std::future::Future;

use refit_core::fleet::{Event, GateRef, GateState, Profile, RunState, Strategy, UpgradeSpec};
use refit_store::Store;
use refit_store::fleet::{MemberProgress, MemberRecord, StoredRun};

use crate::Error;
use crate::commit::{commit, load_run};

/// Where a new run's stages come from.
#[derive(Debug, Clone)]
pub enum StrategySource {
    /// A stored strategy (a hub's UpdateStrategy).
    Named(String),
    /// A stages file copied into the run (local only: a hub run names its UpdateStrategy).
    Inline(Strategy),
    /// Every member one at a time (local only).
    OneByOne,
}

/// An approval as recorded: who, and the gate after it.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The approver the run records.
    pub by: String,
    /// The gate as the run has it now (on a hub: before the controller records the approval).
    pub gate: Option<GateState>,
}

/// The run once a request made while it was `before` has been acted on and nothing of it is
/// under way ([`RunState::under_way`]), read every `poll`: how `--wait` follows a run that a
/// hub's controller drives. Until the controller acts, the run still shows its state from
/// before the request, so a resting state counts only once the run was seen under way or has
/// left `before`.
pub async fn wait_for_end<A: FleetApi>(
    api: &mut A,
    name: &str,
    before: refit_core::fleet::UpdateState,
    poll: std::time::Duration,
) -> Result<RunState, Error> {
    let mut seen_under_way = false;
    loop {
        let r = api.get_run(name).await?.state;
        let under_way = r.under_way();
        seen_under_way |= under_way;
        if !under_way && (seen_under_way || r.status.state != before) {
            return Ok(r);
        }
        tokio::time::sleep(poll).await;
    }
}

/// People's fleet verbs (see the module doc).
pub trait FleetApi {
    /// Every run.
    fn list_runs(&mut self) -> impl Future<Output = Result<Vec<StoredRun>, Error>>;
    /// One run ([`Error::NoRun`] when there is none).
    fn get_run(&mut self, name: &str) -> impl Future<Output = Result<StoredRun, Error>>;
    /// What each member upgrade of `run` reported last.
    fn progress(&mut self, run: &str) -> impl Future<Output = Result<Vec<MemberProgress>, Error>>;
    /// Creates a run (not started); whether it is initialized already (the hub's controller
    /// initializes a new UpdateRun on its next pass: None then).
    fn create_run(
        &mut self,
        name: &str,
        spec: UpgradeSpec,
        strategy: StrategySource,
    ) -> impl Future<Output = Result<Option<RunState>, Error>>;
    /// A person's event on a run — stop, skip, retry — checked against core's rules first; the
    /// run as it is after it.
    fn act(&mut self, name: &str, event: Event) -> impl Future<Output = Result<StoredRun, Error>>;
    /// Who acts, when this home knows it better than the caller (a hub: the user it
    /// authenticates; the caller then names nobody).
    fn authenticated(&self) -> Option<&str>;
    /// Starts (or starts again) a run; with `drive`, a run already under way is left as it is
    /// (the caller drives or waits for it).
    fn start(
        &mut self,
        name: &str,
        drive: bool,
        by: String,
    ) -> impl Future<Output = Result<crate::runs::Started, Error>>;
    /// Approves `gate` of `run` as `by` (on a hub: the authenticated user).
    fn approve(
        &mut self,
        run: &str,
        gate: &GateRef,
        expires_at: Option<jiff::Timestamp>,
        by: String,
    ) -> impl Future<Output = Result<Approved, Error>>;
    /// Deletes a run that has no member upgrade under way.
    fn delete_run(&mut self, name: &str) -> impl Future<Output = Result<(), Error>>;

    /// Every member.
    fn list_members(&mut self) -> impl Future<Output = Result<Vec<MemberRecord>, Error>>;
    /// One member.
    fn get_member(&mut self, name: &str) -> impl Future<Output = Result<Option<MemberRecord>, Error>>;
    /// Adds a member bound to its cluster (`cluster_uid` read by the caller);
    /// `refit_store::Error::Exists` when it exists.
    fn add_member(&mut self, m: &MemberRecord) -> impl Future<Output = Result<(), Error>>;
    /// Replaces a member.
    fn update_member(&mut self, m: &MemberRecord) -> impl Future<Output = Result<(), Error>>;
    /// Removes a member; false when there was none.
    fn remove_member(&mut self, name: &str) -> impl Future<Output = Result<bool, Error>>;

    /// Every strategy, by name.
    fn list_strategies(&mut self) -> impl Future<Output = Result<Vec<(String, Strategy)>, Error>>;
    /// One strategy.
    fn get_strategy(&mut self, name: &str) -> impl Future<Output = Result<Option<Strategy>, Error>>;
    /// Stores a strategy (`replace`: overwrite one of that name).
    fn put_strategy(
        &mut self,
        name: &str,
        s: &Strategy,
        replace: bool,
    ) -> impl Future<Output = Result<(), Error>>;
    /// Deletes a strategy; false when there was none.
    fn delete_strategy(&mut self, name: &str) -> impl Future<Output = Result<bool, Error>>;

    /// Every profile.
    fn list_profiles(&mut self) -> impl Future<Output = Result<Vec<Profile>, Error>>;
    /// One profile.
    fn get_profile(&mut self, name: &str) -> impl Future<Output = Result<Option<Profile>, Error>>;
    /// Stores a new profile.
    fn create_profile(&mut self, p: &Profile) -> impl Future<Output = Result<(), Error>>;
    /// Deletes a profile; false when there was none.
    fn delete_profile(&mut self, name: &str) -> impl Future<Output = Result<bool, Error>>;
}

impl FleetApi for Store {
    async fn list_runs(&mut self) -> Result<Vec<StoredRun>, Error> {
        Ok(self.fleet_runs()?)
    }

    async fn get_run(&mut self, name: &str) -> Result<StoredRun, Error> {
        load_run(self, name)
    }

    async fn progress(&mut self, run: &str) -> Result<Vec<MemberProgress>, Error> {
        Ok(self.member_progress(run)?)
    }

    async fn create_run(
        &mut self,
        name: &str,
        spec: UpgradeSpec,
        strategy: StrategySource,
    ) -> Result<Option<RunState>, Error> {
        let strategy = match strategy {
            StrategySource::Named(n) => self.strategy(&n)?.ok_or_else(|| {
                Error::NoStrategy(format!("no strategy named '{n}' (see refit fleet strategy list)"))
            })?,
            StrategySource::Inline(s) => s,
            StrategySource::OneByOne => Strategy::one_by_one(),
        };
        Ok(Some(crate::runs::create_in(self, name, spec, strategy)?))
    }

    async fn act(&mut self, name: &str, event: Event) -> Result<StoredRun, Error> {
        load_run(self, name)?;
        commit(self, name, &event)
    }

    fn authenticated(&self) -> Option<&str> {
        None
    }

    async fn start(&mut self, name: &str, drive: bool, by: String) -> Result<crate::runs::Started, Error> {
        crate::runs::start_on(self, &std::sync::Arc::new(crate::KubeObserver), name, drive, Some(by)).await
    }

    async fn approve(
        &mut self,
        run: &str,
        gate: &GateRef,
        expires_at: Option<jiff::Timestamp>,
        by: String,
    ) -> Result<Approved, Error> {
        let event = Event::ApproveGate { gate: gate.clone(), by: by.clone(), at: crate::now(), expires_at };
        let r = self.act(run, event).await?;
        Ok(Approved { by, gate: r.state.gate(gate).cloned() })
    }

    async fn delete_run(&mut self, name: &str) -> Result<(), Error> {
        let r = load_run(self, name)?;
        check_deletable(&r.state)?;
        self.delete_fleet_run(name)?;
        Ok(())
    }

    async fn list_members(&mut self) -> Result<Vec<MemberRecord>, Error> {
        Ok(self.members()?)
    }

    async fn get_member(&mut self, name: &str) -> Result<Option<MemberRecord>, Error> {
        Ok(self.member(name)?)
    }

    async fn add_member(&mut self, m: &MemberRecord) -> Result<(), Error> {
        Ok(Store::add_member(self, m)?)
    }

    async fn update_member(&mut self, m: &MemberRecord) -> Result<(), Error> {
        Ok(Store::update_member(self, m)?)
    }

    async fn remove_member(&mut self, name: &str) -> Result<bool, Error> {
        Ok(Store::remove_member(self, name)?)
    }

    async fn list_strategies(&mut self) -> Result<Vec<(String, Strategy)>, Error> {
        Ok(self.strategies()?)
    }

    async fn get_strategy(&mut self, name: &str) -> Result<Option<Strategy>, Error> {
        Ok(self.strategy(name)?)
    }

    async fn put_strategy(&mut self, name: &str, s: &Strategy, replace: bool) -> Result<(), Error> {
        Ok(Store::put_strategy(self, name, s, replace)?)
    }

    async fn delete_strategy(&mut self, name: &str) -> Result<bool, Error> {
        Ok(Store::delete_strategy(self, name)?)
    }

    async fn list_profiles(&mut self) -> Result<Vec<Profile>, Error> {
        Ok(self.profiles()?)
    }

    async fn get_profile(&mut self, name: &str) -> Result<Option<Profile>, Error> {
        Ok(self.profile(name)?)
    }

    async fn create_profile(&mut self, p: &Profile) -> Result<(), Error> {
        Ok(self.put_profile(p, false)?)
    }

    async fn delete_profile(&mut self, name: &str) -> Result<bool, Error> {
        Ok(Store::delete_profile(self, name)?)
    }
}

/// A run may be deleted when no member upgrade of it is under way (in either home).
pub fn check_deletable(run: &RunState) -> Result<(), Error> {
    if run.progress().in_flight > 0 {
        return Err(Error::Invalid(format!(
            "run {} has member upgrades under way: stop it and wait until it is Stopped, then delete it",
            run.name
        )));
    }
    Ok(())
}
