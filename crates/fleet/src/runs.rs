//! Creating and starting update runs, and the run a profile generates.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::Date;
use refit_core::catalog::Catalog;
use refit_core::fleet::{
    Event, HeldBack, MemberVersions, NodeImageSelection, Profile, ProfileTarget, RunState, Strategy, Trigger,
    TriggerStatus, UpdateState, UpgradeSpec, fire, freeze_targets, resolve, target_for,
};
use refit_store::Store;
use refit_store::fleet::MemberRecord;
use serde::Serialize;

use crate::commit::{commit_on, load_run_on};
use crate::observe::{Observer, fleet_members, observe_all};
use crate::store::FleetStore;
use crate::{Error, now};

/// Writes a new run of `strategy` resolved against the fleet as it is now.
pub fn create_from(
    store: &Path,
    name: &str,
    spec: UpgradeSpec,
    strategy: Strategy,
) -> Result<RunState, Error> {
    create_in(&mut Store::open(store)?, name, spec, strategy)
}

/// [`create_from`] on an open store.
pub fn create_in(
    s: &mut Store,
    name: &str,
    spec: UpgradeSpec,
    strategy: Strategy,
) -> Result<RunState, Error> {
    let fleet = fleet_members(&Store::members(s)?);
    let plan = resolve(&strategy, &fleet).map_err(|e| Error::Invalid(e.to_string()))?;
    let run = RunState::new(name, spec, strategy, plan, now()).map_err(|e| Error::Invalid(e.to_string()))?;
    s.create_fleet_run(&run)?;
    Ok(run)
}

/// What `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The first start: members resolved again, targets frozen.
    First,
    /// Started again (it was Failed or Stopped).
    Again,
    /// It was already Running/Pending/Stopping: nothing recorded (a driver may take it on).
    AlreadyActive(UpdateState),
}

/// Starts `name`: the first start freezes the member set (resolved again now) and the targets
/// (observing the members when node images must be consistent); a Failed or Stopped run starts
/// again. With `drive`, a run already under way is left as it is (the caller drives it). `by`
/// is who asked, kept in the run's history.
pub async fn start<O: Observer>(
    store: &Path,
    observer: &Arc<O>,
    name: &str,
    drive: bool,
    by: Option<String>,
) -> Result<Started, Error> {
    start_on(&mut Store::open(store)?, observer, name, drive, by).await
}

/// [`start`] on any fleet store (the hub starts a run when its spec asks for `Run`).
pub async fn start_on<S: FleetStore, O: Observer>(
    s: &mut S,
    observer: &Arc<O>,
    name: &str,
    drive: bool,
    by: Option<String>,
) -> Result<Started, Error> {
    let cur = load_run_on(s, name).await?.state;
    let event = match cur.status.state {
        UpdateState::NotStarted => {
            let records = s.members().await?;
            let plan = resolve(&cur.strategy, &fleet_members(&records))
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let planned: Vec<&str> = plan.members().collect();
            let mut versions: Vec<MemberVersions> = Vec::new();
            if cur.spec.upgrade_type.moves_node_images()
                && cur.spec.node_image_selection == NodeImageSelection::Consistent
            {
                let chosen: Vec<_> =
                    records.into_iter().filter(|r| planned.contains(&r.name.as_str())).collect();
                let facts = observe_all(observer, &chosen, crate::observe::OBSERVE_TIMEOUT).await;
                versions = facts.into_values().map(|f| f.versions).collect();
            }
            let targets = freeze_targets(&cur.spec, versions.iter());
            Event::Start { at: now(), targets: Some(targets), plan: Some(plan), by }
        }
        state @ (UpdateState::Running | UpdateState::Pending | UpdateState::Stopping) if drive => {
            return Ok(Started::AlreadyActive(state));
        }
        _ => Event::Start { at: now(), targets: None, plan: None, by },
    };
    let first = matches!(event, Event::Start { targets: Some(_), .. });
    commit_on(s, name, None, |_| Ok(event.clone())).await?;
    Ok(if first { Started::First } else { Started::Again })
}

/// What `profile generate-run` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Generated {
    /// The run (created now or before).
    pub run: Option<String>,
    /// Whether it was created now.
    pub created: bool,
    /// Why there is no run, or that it existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Members left out, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<HeldBack>,
    /// The version it moves members to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<refit_core::Version>,
}

/// Creates the profile's run for `catalog` and the fleet as they are now (not started); the
/// run's name is deterministic, so asking again returns the same run. The outcome — a run, nothing
/// to do, or [`Error::Undecided`] when no member could be read — is recorded as the profile's
/// last trigger.
pub async fn generate<O: Observer>(
    store: &Path,
    observer: &Arc<O>,
    name: &str,
    catalog: &Catalog,
    today: Date,
    at: Timestamp,
) -> Result<Generated, Error> {
    let mut profile = Store::open(store)?.profile(name)?.ok_or_else(|| Error::NoProfile(name.to_string()))?;
    let members = Store::open(store)?.members()?;
    let (versions, unreachable) = control_planes(observer, &members).await;
    let outcome: Result<Generated, Error> = (|| {
        let Some(target) = target_for(&profile, catalog, &versions, today) else {
            let why = if profile.disabled {
                "the profile is disabled".to_string()
            } else if versions.is_empty() {
                // Not "nothing to do": nothing could be decided. A failure, recorded as the
                // profile's last trigger, naming every member and why it was unread.
                return Err(Error::Undecided(format!(
                    "profile {name}: no run generated: {}",
                    if members.is_empty() {
                        "the fleet has no members (refit fleet member add)".to_string()
                    } else {
                        format!("no member could be read — {}", unreachable.join("; "))
                    }
                )));
            } else {
                "nothing to do: every member is at the channel's release (or too far behind for a profile)"
                    .to_string()
            };
            return Ok(Generated {
                run: None,
                created: false,
                message: Some(why),
                held_back: vec![],
                kubernetes_version: None,
            });
        };
        let s = Store::open(store)?;
        if s.fleet_run(&target.run_name)?.is_some() {
            return Ok(Generated {
                run: Some(target.run_name),
                created: false,
                message: Some("the run exists already (unchanged)".into()),
                held_back: target.held_back,
                kubernetes_version: target.spec.kubernetes_version,
            });
        }
        let strategy = match &profile.strategy {
            Some(n) => s.strategy(n)?.ok_or_else(|| {
                Error::NoStrategy(format!("profile {name} names strategy '{n}', which does not exist"))
            })?,
            None => Strategy::one_by_one(),
        };
        drop(s);
        create_from(store, &target.run_name, target.spec.clone(), strategy)?;
        Ok(Generated {
            run: Some(target.run_name),
            created: true,
            message: None,
            held_back: target.held_back,
            kubernetes_version: target.spec.kubernetes_version,
        })
    })();
    match &outcome {
        Ok(g) => {
            profile.last_trigger = Some(Trigger {
                at,
                status: TriggerStatus::Succeeded,
                run: g.run.clone(),
                kubernetes_version: g.kubernetes_version.clone(),
                message: g.message.clone(),
                error: None,
            })
        }
        Err(e) => profile.record_trigger(at, Err(e.to_string()), None),
    }
    Store::open(store)?.put_profile(&profile, true)?;
    outcome
}

/// Each member's control-plane version, and why each member that was not read was not.
async fn control_planes<O: Observer>(
    observer: &Arc<O>,
    members: &[MemberRecord],
) -> (BTreeMap<String, refit_core::Version>, Vec<String>) {
    let facts = observe_all(observer, members, crate::observe::OBSERVE_TIMEOUT).await;
    let mut versions = BTreeMap::new();
    let mut unreachable = Vec::new();
    for (member, f) in facts {
        match (f.unavailable, f.versions.control_plane) {
            (Some(why), _) => unreachable.push(format!("{member}: {why}")),
            (None, Some(v)) => {
                versions.insert(member, v);
            }
            (None, None) => {
                unreachable.push(format!("{member}: its control-plane version could not be read"))
            }
        }
    }
    (versions, unreachable)
}

/// How often `refit fleet daemon` and the controller's leader evaluate the auto-upgrade
/// profiles (each evaluation reads every member's version).
pub const PROFILES_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// What a profile did by itself.
#[derive(Debug, Clone)]
pub struct Fired {
    /// The profile.
    pub profile: String,
    /// The run it generated (or found not started) and started, or why it could not.
    pub outcome: Result<ProfileTarget, String>,
}

/// Every enabled profile whose channel points past a member's version generates its run and
/// starts it, exactly once per target (core's [`fire`], the controller's rule too): a run
/// `profile generate-run` made and nobody started is started; a run generated once and
/// deleted since is not made again. Each firing is recorded in the profile (last trigger,
/// last generated run). Members that cannot be read count for nothing (no run is made for
/// them); a profile that fails (its strategy is gone, say) is tried again next time.
pub async fn fire_profiles<O: Observer>(
    store: &Path,
    observer: &Arc<O>,
    catalog: &Catalog,
    today: Date,
    at: Timestamp,
) -> Result<Vec<Fired>, Error> {
    let profiles = Store::open(store)?.profiles()?;
    if profiles.iter().all(|p| p.disabled) {
        return Ok(vec![]);
    }
    let members = Store::open(store)?.members()?;
    let (versions, _) = control_planes(observer, &members).await;
    let mut fired = Vec::new();
    for mut p in profiles {
        let Some(target) = fire(&p, p.last_generated_run.as_deref(), catalog, &versions, today) else {
            continue;
        };
        let outcome = generate_and_start(store, observer, &p, &target).await;
        match &outcome {
            Ok(()) => {
                p.last_generated_run = Some(target.run_name.clone());
                p.record_trigger(at, Ok(&target), Some("generated and started by refit fleet daemon".into()));
            }
            Err(e) => p.record_trigger(at, Err(e.to_string()), None),
        }
        Store::open(store)?.put_profile(&p, true)?;
        fired.push(Fired {
            profile: p.name.clone(),
            outcome: outcome.map(|()| target).map_err(|e| e.to_string()),
        });
    }
    Ok(fired)
}

/// Where the daemon's looks at the profiles take the release catalog. It is loaded again at
/// each look, so that a `refit catalog update` meanwhile counts; the front end passes the
/// engine's loader (the fleet does not depend on the engine).
pub type CatalogSource = Box<dyn Fn() -> Result<Catalog, Box<dyn std::error::Error + Send + Sync>> + Send>;

/// What one look at the profiles came to: what fired (each with its outcome), or why the look
/// did not happen. Either way the daemon goes on driving and looks again next time.
pub type ProfilesLook = Result<Vec<Fired>, ProfilesError>;

/// Why a look at the profiles did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    /// The release catalog could not be loaded (the channels are read against it).
    #[error("the release catalog: {0}")]
    Catalog(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store could not be read or written.
    #[error(transparent)]
    Fleet(#[from] Error),
}

/// The auto-upgrade profiles on `refit fleet daemon`'s cadence: looked at before the first
/// pass over the runs, then before the first pass once [`PROFILES_EVERY`] has gone by (each
/// look reads every member's version), each time with the catalog as it is then
/// ([`fire_profiles`]). Every look's outcome goes to the front end's `report`.
pub struct ProfileCadence {
    store: std::path::PathBuf,
    catalog: CatalogSource,
    report: Box<dyn FnMut(ProfilesLook) + Send>,
    next_look: std::time::Instant,
}

impl ProfileCadence {
    /// The profiles of the store at `store`; the first call of [`ProfileCadence::look_if_due`]
    /// looks at them.
    pub fn new(
        store: &Path,
        catalog: CatalogSource,
        report: Box<dyn FnMut(ProfilesLook) + Send>,
    ) -> ProfileCadence {
        ProfileCadence { store: store.to_path_buf(), catalog, report, next_look: std::time::Instant::now() }
    }

    /// Looks at the profiles when a look is due, observing members with `observer`, and
    /// reports what it came to; does nothing otherwise.
    pub async fn look_if_due<O: Observer>(&mut self, observer: &Arc<O>) {
        let now = std::time::Instant::now();
        if now < self.next_look {
            return;
        }
        self.next_look = now + PROFILES_EVERY;
        let look = self.look(observer).await;
        (self.report)(look);
    }

    async fn look<O: Observer>(&self, observer: &Arc<O>) -> ProfilesLook {
        let catalog = (self.catalog)().map_err(ProfilesError::Catalog)?;
        let (today, at) = (jiff::Zoned::now().date(), now());
        Ok(fire_profiles(&self.store, observer, &catalog, today, at).await?)
    }
}

/// Creates `target`'s run of `profile` unless it exists, and starts it if it has not started.
async fn generate_and_start<O: Observer>(
    store: &Path,
    observer: &Arc<O>,
    profile: &Profile,
    target: &ProfileTarget,
) -> Result<(), Error> {
    let s = Store::open(store)?;
    let existing = s.fleet_run(&target.run_name)?;
    if existing.is_none() {
        let strategy = match &profile.strategy {
            Some(n) => s.strategy(n)?.ok_or_else(|| {
                Error::NoStrategy(format!(
                    "profile {} names strategy '{n}', which does not exist",
                    profile.name
                ))
            })?,
            None => Strategy::one_by_one(),
        };
        drop(s);
        create_from(store, &target.run_name, target.spec.clone(), strategy)?;
    }
    if existing.is_none_or(|r| r.state.status.state == UpdateState::NotStarted) {
        start(store, observer, &target.run_name, false, Some(format!("profile {}", profile.name))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::KubeObserver;

    #[tokio::test]
    async fn profiles_are_looked_at_first_then_once_per_period_and_a_catalog_failure_is_reported() {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let mut cadence = ProfileCadence::new(
            Path::new("/nonexistent/refit.db"),
            Box::new(|| Err("unreadable".into())),
            Box::new(move |look| {
                let line = match look {
                    Ok(fired) => format!("{} fired", fired.len()),
                    Err(e) => e.to_string(),
                };
                record.lock().unwrap().push(line);
            }),
        );
        let observer = Arc::new(KubeObserver);
        cadence.look_if_due(&observer).await;
        // Within PROFILES_EVERY: no second look (the catalog is not even loaded).
        cadence.look_if_due(&observer).await;
        assert_eq!(*seen.lock().unwrap(), ["the release catalog: unreadable"]);
        cadence.next_look = std::time::Instant::now();
        cadence.look_if_due(&observer).await;
        assert_eq!(seen.lock().unwrap().len(), 2, "due again once the period is over");
    }
}
