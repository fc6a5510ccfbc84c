//! A `coordination.k8s.io/v1` Lease as a lock: read, create, replace and delete, each write
//! guarded by the object's `resourceVersion` (or, for a delete, its UID and resourceVersion),
//! so that of two writers racing for it exactly one wins and the other learns it lost (409)
//! instead of overwriting. The rules for who may take it are core's (`refit_core::lock`);
//! this module only moves the object.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use crate::Error;
use crate::connect::Connection;

/// A Lease as the lock sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity` (empty: released).
    pub holder: String,
    /// `spec.renewTime`.
    pub renewed: Option<SystemTime>,
    /// `spec.acquireTime`.
    pub acquired: Option<SystemTime>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `metadata.annotations` (refit keeps the holder's details there).
    pub annotations: BTreeMap<String, String>,
    /// `metadata.resourceVersion` of the object read or written.
    pub resource_version: String,
    /// `metadata.uid`.
    pub uid: String,
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    /// `spec.holderIdentity`.
    pub holder: String,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
    /// Annotations to set (replacing refit's earlier ones).
    pub annotations: BTreeMap<String, String>,
}

/// How a guarded write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Written; the object as stored now.
    Written(LeaseRecord),
    /// Someone else wrote it first (409): read it again and decide again.
    Lost,
}

fn api_err(context: String, e: kube::Error) -> Error {
    Error::Api { context, source: Box::new(e) }
}

fn record(l: Lease) -> LeaseRecord {
    let spec = l.spec.unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity.unwrap_or_default(),
        renewed: spec.renew_time.map(|t| SystemTime::from(t.0)),
        acquired: spec.acquire_time.map(|t| SystemTime::from(t.0)),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0).unsigned_abs().into()),
        transitions: spec.lease_transitions.unwrap_or(0),
        annotations: l.metadata.annotations.unwrap_or_default(),
        resource_version: l.metadata.resource_version.unwrap_or_default(),
        uid: l.metadata.uid.unwrap_or_default(),
    }
}

fn micro(t: SystemTime) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::try_from(t).ok().map(MicroTime)
}

fn object(name: &str, claim: &LeaseClaim, prev: Option<&LeaseRecord>, taking: bool) -> Lease {
    let now = micro(SystemTime::now());
    // A renewal keeps the time the holder took it at; a takeover or a new lease starts now.
    let acquired = match prev {
        Some(p) if !taking => p.acquired.and_then(micro),
        _ => now.clone(),
    };
    let transitions = prev.map(|p| if taking { p.transitions.saturating_add(1) } else { p.transitions });
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version: prev.map(|p| p.resource_version.clone()),
            annotations: Some(claim.annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(claim.holder.clone()),
            lease_duration_seconds: Some(i32::try_from(claim.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: acquired,
            renew_time: now,
            lease_transitions: Some(transitions.unwrap_or(0)),
            ..LeaseSpec::default()
        }),
    }
}

/// Reads the Lease `namespace/name` (None: there is none).
pub async fn read(conn: &Connection, namespace: &str, name: &str) -> Result<Option<LeaseRecord>, Error> {
    let api: Api<Lease> = Api::namespaced(conn.client.clone(), namespace);
    let what = format!("reading lease {namespace}/{name}");
    let l =
        crate::retry::retrying(&what, || api.get_opt(name)).await.map_err(|e| api_err(what.clone(), e))?;
    Ok(l.map(record))
}

/// Creates the Lease for `claim`; `Lost` when it exists already.
pub async fn create(
    conn: &Connection,
    namespace: &str,
    name: &str,
    claim: &LeaseClaim,
) -> Result<Write, Error> {
    let api: Api<Lease> = Api::namespaced(conn.client.clone(), namespace);
    // A repeat after a lost answer finds it created (409): `Lost`, and the caller reads it back.
    let (pp, obj) = (PostParams::default(), object(name, claim, None, true));
    match crate::retry::retrying("creating a lease", || api.create(&pp, &obj)).await {
        Ok(l) => Ok(Write::Written(record(l))),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Write::Lost),
        Err(e) => Err(api_err(format!("creating lease {namespace}/{name}"), e)),
    }
}

/// Replaces the Lease read as `prev` with `claim` (a renewal keeps the acquire time, a
/// takeover — `taking` — sets it and counts a transition); `Lost` when it changed since.
pub async fn replace(
    conn: &Connection,
    namespace: &str,
    name: &str,
    prev: &LeaseRecord,
    claim: &LeaseClaim,
    taking: bool,
) -> Result<Write, Error> {
    let api: Api<Lease> = Api::namespaced(conn.client.clone(), namespace);
    // Guarded by `prev`'s resourceVersion: a repeat after a lost answer is a 409 (`Lost`).
    let (pp, obj) = (PostParams::default(), object(name, claim, Some(prev), taking));
    match crate::retry::retrying("writing a lease", || api.replace(name, &pp, &obj)).await {
        Ok(l) => Ok(Write::Written(record(l))),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Write::Lost),
        Err(e) => Err(api_err(format!("writing lease {namespace}/{name}"), e)),
    }
}

/// Deletes the Lease if it is still exactly `prev` (UID and resourceVersion): `Ok(false)`
/// when someone else wrote it since (then it is theirs) or it is gone.
pub async fn delete(
    conn: &Connection,
    namespace: &str,
    name: &str,
    prev: &LeaseRecord,
) -> Result<bool, Error> {
    let api: Api<Lease> = Api::namespaced(conn.client.clone(), namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(prev.uid.clone()),
            resource_version: Some(prev.resource_version.clone()),
        }),
        ..DeleteParams::default()
    };
    // Guarded by UID and resourceVersion: a repeat after a lost answer is a 404 (`Ok(false)`).
    match crate::retry::retrying("deleting a lease", || api.delete(name, &dp)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
        Err(e) => Err(api_err(format!("deleting lease {namespace}/{name}"), e)),
    }
}
