//! A standalone multi-member etcd cluster (the cached etcd binary, TLS with client-certificate
//! auth as the testbed's own etcd) for tests of etcd health and the quorum rule: members can be
//! stopped and started again. The testbed's control plane keeps its single member; this one
//! serves no apiserver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::cache::{Cache, Component, TestbedVersions};
use crate::pki::Pki;
use crate::process::{Lifetime, Proc, free_ports};

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    binary: PathBuf,
    pki: Pki,
    /// (client port, peer port) per member.
    ports: Vec<(u16, u16)>,
    procs: Vec<Option<Proc>>,
    /// Member names, by index.
    names: Vec<String>,
}

impl EtcdCluster {
    /// Starts `members` members in `dir` and waits until each one answers on its client port.
    pub async fn start(dir: &Path, members: usize) -> Result<EtcdCluster, Error> {
        let names: Vec<String> = (0..members).map(Self::name).collect();
        Self::start_named(dir, &names).await
    }

    /// Starts one member per name (a stacked member is named after its node, as kubeadm
    /// does, so the quorum rule can be tested on a sandbox's control-plane node).
    pub async fn start_named(dir: &Path, names: &[String]) -> Result<EtcdCluster, Error> {
        let members = names.len();
        let cache = Cache::from_env()?;
        let versions = TestbedVersions::from_env()?;
        let component = Component::Etcd(versions.etcd.clone());
        cache.require(std::slice::from_ref(&component))?;
        let pki = Pki::generate(&dir.join("pki"))?;
        let ports = free_ports(members.saturating_mul(2))?;
        let ports: Vec<(u16, u16)> =
            ports.chunks(2).filter_map(|c| Some((*c.first()?, *c.get(1)?))).collect();
        let mut cluster = EtcdCluster {
            dir: dir.to_path_buf(),
            binary: cache.entry_dir(&component).join("etcd"),
            pki,
            procs: (0..ports.len()).map(|_| None).collect(),
            ports,
            names: names.to_vec(),
        };
        for i in 0..cluster.ports.len() {
            cluster.start_member(i)?;
        }
        for i in 0..cluster.ports.len() {
            let addr = ([127, 0, 0, 1], cluster.ports.get(i).map_or(0, |p| p.0)).into();
            let log = cluster.log(i);
            crate::testbed::wait_until("etcd member", &log, Duration::from_secs(60), || async move {
                tokio::net::TcpStream::connect::<std::net::SocketAddr>(addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await?;
        }
        Ok(cluster)
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("etcd-{i}.log"))
    }

    /// Member `i`'s name (`etcd-i`).
    pub fn name(i: usize) -> String {
        format!("etcd-{i}")
    }

    /// Member `i`'s name in this cluster.
    pub fn member_name(&self, i: usize) -> String {
        self.names.get(i).cloned().unwrap_or_else(|| Self::name(i))
    }

    /// Every member's client URL.
    pub fn client_urls(&self) -> Vec<String> {
        self.ports.iter().map(|(c, _)| format!("https://127.0.0.1:{c}")).collect()
    }

    /// The CA and the client certificate (also the members' serving certificate).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// (Re)starts member `i` with its data directory (a restart rejoins the cluster).
    pub fn start_member(&mut self, i: usize) -> Result<(), Error> {
        let initial: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(j, (_, p))| format!("{}=http://127.0.0.1:{p}", self.member_name(j)))
            .collect();
        let (client, peer) =
            *self.ports.get(i).ok_or_else(|| Error::NotFound(format!("no etcd member {i}")))?;
        let client = format!("https://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let name = self.member_name(i);
        let args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", self.dir.join(&name).display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}", initial.join(",")),
            "--initial-cluster-state=new".to_string(),
            format!("--cert-file={}", self.pki.admin_cert.display()),
            format!("--key-file={}", self.pki.admin_key.display()),
            format!("--trusted-ca-file={}", self.pki.ca_cert.display()),
            "--client-cert-auth=true".to_string(),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let env = vec![("GOMAXPROCS".to_string(), "1".to_string())];
        let proc = Proc::spawn(&name, &self.binary, &args, &env, &self.log(i), Lifetime::Attached)?;
        if let Some(slot) = self.procs.get_mut(i) {
            *slot = Some(proc);
        }
        Ok(())
    }

    /// Stops member `i` (kills it after a grace period).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(Some(mut p)) = self.procs.get_mut(i).map(Option::take) {
            p.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.stop_member(i);
        }
    }
}
