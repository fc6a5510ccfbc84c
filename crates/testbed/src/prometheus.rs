//! A real Prometheus server for health-gate tests: the `prometheus` binary from the testbed
//! cache (built from the Go module proxy like etcd and kwok), scraping a testbed's apiservers
//! over TLS with the testbed's client certificate.
//!
//! Scrapes and rule evaluation run every second so that a test sees a changed condition within
//! seconds. The server lives as long as the handle (attached: it also dies with the test
//! process).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::{Cache, Component, TestbedVersions};
use crate::pki::Pki;
use crate::process::{Lifetime, Proc, free_ports};
use crate::{Error, Testbed};

/// How long Prometheus may take to load its (empty) TSDB and answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    proc: Proc,
    port: u16,
    dir: PathBuf,
}

/// One scrape job.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// `job` label.
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// `https` with the testbed's client certificate, else plain `http`.
    pub tls: Option<Pki>,
    /// The metrics path (`/metrics`).
    pub path: String,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (config, data, log) with these jobs and waits until ready.
    pub async fn start(dir: &Path, jobs: &[ScrapeJob]) -> Result<Prometheus, Error> {
        let cache = Cache::from_env()?;
        let versions = TestbedVersions::from_env()?;
        let component = Component::Prometheus(versions.prometheus.clone());
        cache.require(std::slice::from_ref(&component))?;
        let binary = cache.entry_dir(&component).join("prometheus");
        std::fs::create_dir_all(dir.join("data")).map_err(|e| Error::io(dir, e))?;
        let config = dir.join("prometheus.yml");
        crate::pki::write_file(&config, &config_yaml(jobs), false)?;
        let port = *free_ports(1)?.first().ok_or_else(|| Error::Config("no free port".into()))?;
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_string(),
        ];
        let log = dir.join("prometheus.log");
        let env = vec![("GOMAXPROCS".to_string(), "1".to_string())];
        let proc = Proc::spawn("prometheus", &binary, &args, &env, &log, Lifetime::Attached)?;
        let mut p = Prometheus { proc, port, dir: dir.to_path_buf() };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ready = crate::testbed::wait_until("prometheus", &log, READY_TIMEOUT, || async move {
            crate::testbed::plain_http_get(addr, "/-/ready").await.map(|_| ())
        })
        .await;
        if let Err(e) = ready {
            p.stop();
            return Err(e);
        }
        Ok(p)
    }

    /// Its base URL (`http://127.0.0.1:PORT`), as a gate's `url:` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where its configuration, data and log are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops it.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_yaml(jobs: &[ScrapeJob]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for j in jobs {
        out.push_str(&format!(
            "  - job_name: {}\n    metrics_path: {}\n",
            yaml_str(&j.name),
            yaml_str(&j.path)
        ));
        if let Some(pki) = &j.tls {
            out.push_str(&format!(
                "    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
                yaml_str(&pki.ca_cert.display().to_string()),
                yaml_str(&pki.admin_cert.display().to_string()),
                yaml_str(&pki.admin_key.display().to_string()),
            ));
        }
        let targets: Vec<String> = j.targets.iter().map(|t| yaml_str(t)).collect();
        out.push_str(&format!("    static_configs:\n      - targets: [{}]\n", targets.join(", ")));
    }
    out
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Testbed {
    /// Starts a Prometheus (in the testbed's directory) scraping every apiserver member's
    /// `/metrics` as job `apiserver`, with the testbed's client certificate.
    pub async fn start_prometheus(&self) -> Result<Prometheus, Error> {
        let (_, pki) = self.etcd_endpoint();
        let targets = self.members().iter().map(|m| format!("127.0.0.1:{}", m.apiserver_port)).collect();
        let job = ScrapeJob { name: "apiserver".into(), targets, tls: Some(pki), path: "/metrics".into() };
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir_in(self.dir())
            .map_err(|e| Error::io(&self.dir(), e))?
            .keep();
        Prometheus::start(&dir, &[job]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_quotes_every_value() {
        let yaml = config_yaml(&[ScrapeJob {
            name: "api\"server".into(),
            targets: vec!["127.0.0.1:6443".into()],
            tls: None,
            path: "/metrics".into(),
        }]);
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(v["scrape_configs"][0]["job_name"], "api\"server");
        assert_eq!(v["scrape_configs"][0]["static_configs"][0]["targets"][0], "127.0.0.1:6443");
        assert_eq!(v["global"]["scrape_interval"], "1s");
    }
}
