//! TLS material for a testbed, generated in Rust (no openssl, no cfssl).
//!
//! Like kwokctl, one CA signs one admin certificate that every component serves with and
//! authenticates with (CN `refit-admin`, O `system:masters`, server + client usage, SANs for
//! loopback). A separate key pair signs ServiceAccount tokens. ECDSA P-256 throughout: Go's
//! crypto/tls, the apiserver's key loaders and rustls (kube-rs) all accept it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::Error;

/// Paths of the PEM files a testbed's components are started with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pki {
    /// CA certificate: trusted by every client and server.
    pub ca_cert: PathBuf,
    /// Admin certificate: serves every component and authenticates every client.
    pub admin_cert: PathBuf,
    /// Admin private key.
    pub admin_key: PathBuf,
    /// ServiceAccount token signing key (private).
    pub sa_key: PathBuf,
    /// ServiceAccount token verification key (public).
    pub sa_pub: PathBuf,
}

impl Pki {
    /// Generates a CA, the admin certificate and the ServiceAccount key pair into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tls = |e: rcgen::Error| Error::Pki(e.to_string());

        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.distinguished_name.push(DnType::CommonName, "refit-testbed-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let admin_key = KeyPair::generate().map_err(tls)?;
        let mut admin = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .map_err(tls)?;
        admin.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        admin.subject_alt_names.push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        admin.distinguished_name.push(DnType::CommonName, "refit-admin");
        admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        admin.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        admin.use_authority_key_identifier_extension = true;
        let admin_cert = admin.signed_by(&admin_key, &issuer).map_err(tls)?;

        let sa_key = KeyPair::generate().map_err(tls)?;

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        write_file(&pki.ca_cert, &ca_cert.pem(), false)?;
        write_file(&pki.admin_cert, &admin_cert.pem(), false)?;
        write_file(&pki.admin_key, &admin_key.serialize_pem(), true)?;
        write_file(&pki.sa_key, &sa_key.serialize_pem(), true)?;
        write_file(&pki.sa_pub, &sa_key.public_key_pem(), false)?;
        Ok(pki)
    }
}

/// Writes a file; private keys get mode 0600 so other users on the machine cannot read them.
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem_files_with_private_keys_locked_down() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let ca = std::fs::read_to_string(&pki.ca_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = std::fs::read_to_string(&pki.admin_key).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let mode = std::fs::metadata(&pki.admin_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(std::fs::read_to_string(&pki.sa_pub).unwrap().contains("PUBLIC KEY"));
    }
}
