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
            remove_stale_dirs();
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

/// Shared testbeds live in statics, which are never dropped, so their temporary directories
/// (certificates, etcd data, logs) outlive the test binary. The next one to start removes the
/// directories of testbeds whose process is gone (`refit-testbed-<pid>-*`).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("refit-testbed-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid != std::process::id() as i32 && !crate::process::pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stale_directories_of_dead_testbeds_are_removed() {
        // Find a pid that is not running.
        let dead = (4_000_000..4_100_000).find(|p| !crate::process::pid_alive(*p)).unwrap();
        let stale = std::env::temp_dir().join(format!("refit-testbed-{dead}-abc"));
        let mine = std::env::temp_dir().join(format!("refit-testbed-{}-mine", std::process::id()));
        std::fs::create_dir_all(stale.join("etcd")).unwrap();
        std::fs::create_dir_all(&mine).unwrap();
        super::remove_stale_dirs();
        assert!(!stale.exists());
        assert!(mine.exists(), "a live process's directory stays");
        std::fs::remove_dir_all(&mine).unwrap();
    }
}
