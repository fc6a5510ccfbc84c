//! One testbed per test binary, shared by every test in it.
//!
//! Starting a control plane takes seconds; most tests only need a namespace of their own, so
//! they share one testbed (started on first use) and isolate themselves with
//! [`unique_namespace`]. Tests that break the cluster on purpose (stop an apiserver, swap
//! control-plane binaries) start their own [`Testbed`] instead.
//!
//! The shared testbed is never dropped (statics are not), but its processes are attached: the
//! kernel kills them when the test binary exits, however it exits.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use refit_core::{MinorVersion, Version};

use crate::{Error, Testbed, TestbedConfig, TestbedVersions};

/// The Kubernetes release shared and most other testbeds start at: the newest configured
/// 1.36.x (the "from" version), else the oldest configured release.
pub fn default_version() -> Result<Version, Error> {
    let versions = TestbedVersions::from_env()?;
    versions
        .kubernetes_for_minor(MinorVersion::new(1, 36))
        .or_else(|| versions.kubernetes.first())
        .cloned()
        .ok_or_else(|| Error::Config("REFIT_TESTBED_VERSIONS lists no Kubernetes release".into()))
}

/// The shared testbed of this test binary: one control-plane member at [`default_version`]
/// and `REFIT_TESTBED_WORKERS` (default 20) workers.
pub fn shared() -> Result<&'static Testbed, String> {
    static SHARED: OnceLock<Result<Testbed, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            std::thread::spawn(|| {
                let workers =
                    std::env::var("REFIT_TESTBED_WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(20);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let version = default_version().map_err(|e| e.to_string())?;
                    Testbed::start(TestbedConfig::new(version, workers)).await.map_err(|e| e.to_string())
                })
            })
            .join()
            .unwrap_or_else(|_| Err("starting the shared testbed panicked".to_string()))
        })
        .as_ref()
        .map_err(|e| e.clone())
}

/// A namespace name no other test in this process uses: `PREFIX-<pid>-<n>`.
pub fn unique_namespace(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
