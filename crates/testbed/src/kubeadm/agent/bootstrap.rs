//! Kubelet TLS bootstrap: `/etc/kubernetes/bootstrap-kubelet.conf` (a bootstrap token kubeadm
//! wrote at join) becomes `/etc/kubernetes/kubelet.conf` (a client certificate for
//! `system:node:<name>`), through a CertificateSigningRequest that the real
//! kube-controller-manager approves (csrapproving, allowed by kubeadm's RBAC bindings) and signs
//! (csrsigning with the cluster CA) — reference/kubeadm.md §6.1.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where the client certificate and key go (one PEM with both, as the kubelet writes it).
pub const CLIENT_PEM: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";

/// Runs the bootstrap to completion (or fails after `timeout`), writing `kubelet_conf`.
pub async fn bootstrap(
    node: &str,
    bootstrap_conf: &Path,
    kubelet_conf: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let kc =
        Kubeconfig::read_from(bootstrap_conf).map_err(|e| format!("{}: {e}", bootstrap_conf.display()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| format!("{}: no cluster", bootstrap_conf.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| format!("{}: {e}", bootstrap_conf.display()))?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;

    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "system:nodes");
    dn.push(DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    let request = params.serialize_request(&key).map_err(|e| e.to_string())?;
    let pem = request.pem().map_err(|e| e.to_string())?;
    let name = format!("node-csr-{}", &hex::encode(Sha256::digest(pem.as_bytes()))[..43]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": b64.encode(pem.as_bytes()),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    });
    let api: kube::Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        kube::Api::all(client.clone());
    let start = Instant::now();
    loop {
        let body = serde_json::to_vec(&csr).map_err(|e| e.to_string())?;
        let req = http::Request::post("/apis/certificates.k8s.io/v1/certificatesigningrequests")
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| e.to_string())?;
        match client.request_text(req).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => break,
            Err(e) if start.elapsed() < timeout => {
                tracing::info!("creating the node CSR: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("creating the node CSR: {e}")),
        }
    }
    let cert = loop {
        match api.get(&name).await {
            Ok(c) => {
                if let Some(cert) = c.status.and_then(|s| s.certificate) {
                    break cert.0;
                }
            }
            Err(e) => tracing::info!("reading CSR {name}: {e}"),
        }
        if start.elapsed() > timeout {
            return Err(format!("CSR {name} was not signed within {}s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut both = String::from_utf8(cert).map_err(|e| format!("signed certificate is not PEM: {e}"))?;
    both.push_str(&key.serialize_pem());
    let pem_path = Path::new(CLIENT_PEM);
    if let Some(dir) = pem_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_private(pem_path, both.as_bytes())?;
    let conf = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(Cluster { ..cluster }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(CLIENT_PEM.into()),
                client_key: Some(CLIENT_PEM.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("default-context".into()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Default::default()
    };
    // JSON is YAML: both the Go and the Rust kubeconfig loaders read it.
    let text = serde_json::to_string_pretty(&conf).map_err(|e| e.to_string())?;
    write_private(kubelet_conf, text.as_bytes())
}

/// Writes a file readable by its owner only, replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("refit-tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
