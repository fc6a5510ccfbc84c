//! HTTP(S) probes of static pods, as a kubelet runs them: no certificate verification (the
//! kubelet does not verify probe certificates either; controller-manager and scheduler serve
//! self-signed ones), a short timeout, success on a 2xx/3xx status.
//!
//! Hand-written on a TLS stream rather than through hyper: one request line and one status
//! line are all a probe needs, and a dangerous-verifier hyper client would be more code.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::static_pods::Probe;

/// Runs `probe` once; `default_host` stands in for an empty host (the node's address).
pub async fn check(probe: &Probe, default_host: &str) -> Result<(), String> {
    let host = if probe.host.is_empty() { default_host } else { probe.host.as_str() };
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host, probe.port)).await.map_err(|e| e.to_string())?;
        if probe.https {
            let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            status(tls, host, &probe.path).await
        } else {
            status(tcp, host, &probe.path).await
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), fut).await {
        Ok(r) => r,
        Err(_) => Err("probe timed out after 2s".into()),
    }
}

async fn status<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, host: &str, path: &str) -> Result<(), String> {
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: refit-node-agent\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // The status line is all we need; read a little and stop (some servers keep talking).
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("HTTP {code}")),
        None => Err(format!("no HTTP status line: {line:?}")),
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any server certificate (probes only; never used for API calls).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
