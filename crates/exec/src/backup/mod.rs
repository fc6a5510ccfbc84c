//! The etcd backup taken before an upgrade touches etcd or the control plane.
//!
//! A backup is only worth something if it restores, so this takes the same snapshot
//! `etcdctl snapshot save` takes — the Maintenance/Snapshot RPC — through etcd's gRPC gateway
//! (JSON over HTTPS with the client certificate kube-apiserver itself uses), and checks it the
//! way `etcdutl snapshot restore` will: etcd appends the SHA-256 of the database to the stream,
//! and a file whose last 32 bytes are not the SHA-256 of everything before them is refused
//! here, not discovered during a disaster. Using the gateway keeps Refit free of a gRPC stack
//! and of etcd's Go client; the HTTP and TLS crates are the ones kube already brings.
//!
//! Kept hand-written on purpose (issue 12 looked for a library): the Rust etcd clients
//! (`etcd-client`) are gRPC over tonic, a second HTTP/2 + protobuf stack in the binary for one
//! RPC, and none of them verifies the snapshot's SHA-256 trailer or writes the file the
//! never-overwrite way above; the gateway client here is one streamed POST on hyper.
//!
//! Safety rules: a backup is written to `NAME.db.part`, flushed to disk, verified, and only
//! then published as `NAME.db` with a hard link, which fails instead of replacing an existing
//! file — an existing backup is never overwritten and never deleted. The file is mode 0600:
//! an etcd snapshot holds every Secret of the cluster. Key file contents never appear in an
//! error or a log line.

pub mod node;

use std::fmt;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Connecting (TCP) to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The TLS handshake and the response head.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest silence between two pieces of the stream. A large database takes minutes to
/// send, so the total is not bounded; a stalled member is.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway path of Maintenance/Snapshot (etcd ≥ 3.4 serves `/v3/`).
pub(crate) const SNAPSHOT_PATH: &str = "/v3/maintenance/snapshot";
/// etcd appends a SHA-256 digest (32 bytes) to the database it streams.
const TRAILER: usize = 32;
/// A gateway line carries one 32 KiB chunk (≈44 KiB of base64); anything far larger is not
/// etcd talking.
const MAX_LINE: usize = 16 << 20;
/// bbolt's meta page magic, at offset 16 of the file (after the 16-byte page header).
const BOLT_MAGIC: u32 = 0xED0C_DAED;
/// The bbolt file format version etcd 3.x writes.
const BOLT_VERSION: u32 = 2;
/// The page header's flag of a meta page.
const BOLT_META_PAGE: u16 = 0x04;
/// How much of the start of a database is kept to check its two meta pages (pages 0 and 1;
/// bbolt's page size is the OS page size, 4 KiB on the platforms etcd supports, at most 64 KiB).
const HEAD: usize = 128 * 1024;

/// One etcd member's client URL and the certificates to reach it (kubeadm:
/// `/etc/kubernetes/pki/etcd/ca.crt` and the apiserver's `apiserver-etcd-client.{crt,key}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEndpoint {
    /// Client URL, e.g. `https://127.0.0.1:2379`.
    pub url: String,
    /// CA that signed etcd's serving certificate.
    pub ca_file: PathBuf,
    /// Client certificate etcd accepts.
    pub cert_file: PathBuf,
    /// Its private key (read, never printed).
    pub key_file: PathBuf,
}

/// A snapshot on disk, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// `DIR/NAME.db`.
    pub path: PathBuf,
    /// Size of the file (database plus the 32-byte digest etcd appends).
    pub bytes: u64,
    /// SHA-256 of the whole file, hex: lets anyone check later that the backup is unchanged.
    pub sha256: String,
    /// The endpoint that served it (a snapshot is one member's point-in-time state).
    pub endpoint: String,
    /// The storage version etcd reported (3.6+; tells which etcd can restore it).
    pub etcd_version: Option<String>,
}

/// Why no backup was written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint was given.
    #[error(
        "no etcd endpoint to back up from: configure etcd endpoints and certificates, or a backup action"
    )]
    NoEndpoints,
    /// The backup name would escape the directory or hide the file.
    #[error(
        "'{name}' is not a usable backup name: use letters, digits, '.', '_' and '-', not starting with '.'"
    )]
    Name {
        /// The name given.
        name: String,
    },
    /// A backup of that name exists; it is never replaced.
    #[error("{path} already exists and is never overwritten: choose another backup name or directory")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Another process is writing the same backup right now.
    #[error(
        "{path} is being written by another process (it holds the lock): wait for it or choose another name"
    )]
    Busy {
        /// The partial file.
        path: PathBuf,
    },
    /// The local disk failed us; another endpoint would not help.
    #[error("{action} {path}: {source} (check the backup directory exists, is writable and has space)")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A backup directory or file others can reach, or that is not what it claims to be.
    #[error("{path} {detail}")]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong and the fix.
        detail: String,
    },
    /// A backup command said it succeeded, but its file is not an etcd snapshot.
    #[error("{path} is not an etcd snapshot: {detail}")]
    NotASnapshot {
        /// The file the command was to write.
        path: PathBuf,
        /// Why not.
        detail: String,
    },
    /// Every endpoint failed; each is listed with its reason.
    #[error("no etcd endpoint gave a valid snapshot: {}", list(.0))]
    AllEndpointsFailed(Vec<EndpointFailure>),
}

fn list(failures: &[EndpointFailure]) -> String {
    failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; ")
}

/// One endpoint's failure.
#[derive(Debug)]
pub struct EndpointFailure {
    /// The endpoint's URL.
    pub url: String,
    /// What went wrong there.
    pub reason: Failure,
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.url, self.reason)
    }
}

/// What went wrong at one endpoint, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The URL is not `https://HOST:PORT`.
    #[error("not an etcd client URL ({0}); expected https://HOST:PORT")]
    Url(String),
    /// A certificate or key file could not be used. Never carries file contents.
    #[error("{role} {path}: {detail}")]
    Credentials {
        /// `CA file`, `client certificate` or `client key`.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, in words that never quote the file.
        detail: String,
    },
    /// Nothing answered.
    #[error("cannot connect: {0} (is etcd running and listening there?)")]
    Connect(String),
    /// TLS failed: the server's certificate is not trusted, or it refused ours.
    #[error("TLS: {0}")]
    Tls(String),
    /// The answer was not a snapshot stream.
    #[error("etcd answered HTTP {status}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// etcd's message, or the start of the body.
        message: String,
    },
    /// etcd reported an error in the middle of the stream.
    #[error("etcd ended the snapshot with an error: {0}")]
    Server(String),
    /// The stream broke or was malformed.
    #[error("snapshot stream: {0}")]
    Stream(String),
    /// The data does not verify; it was not kept.
    #[error("snapshot failed verification: {0}; it was discarded (try again, or another member)")]
    Integrity(String),
    /// A step took too long.
    #[error("no progress for {seconds}s while {during} (is the member overloaded or partitioned?)")]
    Timeout {
        /// What was awaited.
        during: &'static str,
        /// The limit.
        seconds: u64,
    },
}

/// Takes a snapshot from the first endpoint that gives a valid one and writes it to
/// `DIR/NAME.db` (directory created 0700 if missing, file 0600). Endpoints are tried in
/// order; a local disk error stops at once, since another member would not fix it.
pub async fn etcd_snapshot(endpoints: &[EtcdEndpoint], dir: &Path, name: &str) -> Result<Backup, Error> {
    save(endpoints, dir, name).await
}

/// Where a snapshot stream comes from: etcd's gateway asked directly ([`EtcdEndpoint`]), or a
/// control-plane node that relays it (`node.rs`). Whatever the source, the bytes go through
/// the same [`Sink`]: verified, written to the private `.part`, published the same way.
pub(crate) trait Source {
    /// The endpoint as reported (`https://10.0.0.5:2379`, `cp-1 → https://127.0.0.1:2379`).
    fn label(&self) -> String;
    /// Streams etcd's gateway answer (newline-delimited JSON) into `sink`.
    fn stream<'a>(
        &'a self,
        sink: &'a mut Sink,
    ) -> impl std::future::Future<Output = Result<(), Attempt>> + Send + 'a;
}

impl Source for EtcdEndpoint {
    fn label(&self) -> String {
        self.url.clone()
    }

    async fn stream(&self, sink: &mut Sink) -> Result<(), Attempt> {
        let (mut sender, driver, host, port) = connect(self).await?;
        let result = stream_snapshot(self, &host, port, &mut sender, sink).await;
        driver.abort();
        result
    }
}

/// The one save loop: name and directory checked, each source tried in order until one
/// gives a snapshot that verifies, published without ever replacing a file.
pub(crate) async fn save<S: Source + Sync>(sources: &[S], dir: &Path, name: &str) -> Result<Backup, Error> {
    if sources.is_empty() {
        return Err(Error::NoEndpoints);
    }
    if !valid_name(name) {
        return Err(Error::Name { name: name.to_string() });
    }
    private_dir(dir)?;
    let path = dir.join(format!("{name}.db"));
    let part = dir.join(format!("{name}.db.part"));
    if exists(&path) {
        return Err(Error::Exists { path });
    }
    let mut failures = Vec::new();
    for source in sources {
        let start = Instant::now();
        let label = source.label();
        let taken = match Sink::open(&part) {
            Ok(mut sink) => match source.stream(&mut sink).await {
                Ok(()) => sink.finish().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match taken {
            Ok(mut taken) => {
                let published = publish(&part, &path);
                drop(taken.lock.take());
                published?;
                tracing::info!(
                    endpoint = %label, path = %path.display(), bytes = taken.bytes,
                    seconds = start.elapsed().as_secs_f64(), "etcd snapshot saved"
                );
                return Ok(Backup {
                    path,
                    bytes: taken.bytes,
                    sha256: taken.sha256,
                    endpoint: label,
                    etcd_version: taken.version,
                });
            }
            Err(Attempt::Local(e)) => {
                discard(&part);
                return Err(e);
            }
            Err(Attempt::Endpoint(reason)) => {
                discard(&part);
                tracing::warn!(endpoint = %label, %reason, "etcd snapshot failed; trying the next endpoint");
                failures.push(EndpointFailure { url: label, reason });
            }
        }
    }
    Err(Error::AllEndpointsFailed(failures))
}

/// The backup directory: created 0700 when missing; an existing one that others can write is
/// refused (they could swap or plant files under refit — a snapshot holds every Secret of the
/// cluster), like the store's directory. One others can only read is the operator's choice:
/// the snapshots in it are 0600.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Io { action: "creating", path: dir.to_path_buf(), source: e }),
        Err(e) => Err(Error::Io { action: "reading", path: dir.to_path_buf(), source: e }),
        Ok(m) if !m.is_dir() => Err(Error::Unsafe {
            path: dir.to_path_buf(),
            detail: "is not a directory (a symlink is not followed)".into(),
        }),
        Ok(m) if m.permissions().mode() & 0o022 != 0 => Err(Error::Unsafe {
            path: dir.to_path_buf(),
            detail: format!(
                "is mode {:04o}: others could replace backups (etcd snapshots hold every Secret); run chmod 700 on it",
                m.permissions().mode() & 0o7777
            ),
        }),
        Ok(_) => Ok(()),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn exists(path: &Path) -> bool {
    // symlink_metadata: a dangling symlink named like the backup is "existing" too.
    std::fs::symlink_metadata(path).is_ok()
}

/// Removes our partial file. Only ever the `.part`, never a published backup.
fn discard(part: &Path) {
    if let Err(e) = std::fs::remove_file(part)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(path = %part.display(), error = %e, "could not remove a partial snapshot");
    }
}

/// Publishes the verified `.part` as the backup without ever replacing a file: `link(2)`
/// fails if the name exists, where `rename(2)` would silently replace it. The directory is
/// synced so the new name survives a crash.
fn publish(part: &Path, path: &Path) -> Result<(), Error> {
    match std::fs::hard_link(part, path) {
        Ok(()) => discard(part),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            discard(part);
            return Err(Error::Exists { path: path.to_path_buf() });
        }
        // Filesystems without hard links: check, then rename (a race only with another
        // writer choosing the same name in the same instant).
        Err(_) if !exists(path) => std::fs::rename(part, path).map_err(|e| Error::Io {
            action: "renaming the snapshot to",
            path: path.to_path_buf(),
            source: e,
        })?,
        Err(_) => {
            discard(part);
            return Err(Error::Exists { path: path.to_path_buf() });
        }
    }
    if let Some(dir) = path.parent() {
        let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
        if let Err(e) = synced {
            return Err(Error::Io {
                action: "syncing the directory of",
                path: path.to_path_buf(),
                source: e,
            });
        }
    }
    Ok(())
}

/// Why one attempt failed: the endpoint (try the next) or the local disk (stop).
pub(crate) enum Attempt {
    Endpoint(Failure),
    Local(Error),
}

impl From<Failure> for Attempt {
    fn from(f: Failure) -> Self {
        Attempt::Endpoint(f)
    }
}

#[derive(Debug)]
struct Taken {
    bytes: u64,
    sha256: String,
    version: Option<String>,
    /// The locked `.part`, held until it is published.
    lock: Option<std::fs::File>,
}

/// An HTTP/1.1 connection over TLS with the client certificate to one endpoint: the sender,
/// the connection's driver task (abort it when done), the host and the port.
pub(crate) async fn connect(
    ep: &EtcdEndpoint,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
        String,
        u16,
    ),
    Failure,
> {
    let (host, port) = parse_url(&ep.url)?;
    let tls = tls_config(ep)?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| Failure::Url(format!("'{host}' is not a host name or IP address")))?;

    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| Failure::Timeout { during: "connecting", seconds: CONNECT_TIMEOUT.as_secs() })?
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name, tcp))
        .await
        .map_err(|_| Failure::Timeout { during: "the TLS handshake", seconds: HANDSHAKE_TIMEOUT.as_secs() })?
        .map_err(|e| tls_failure(&e, ep))?;

    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Stream(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(conn);
    Ok((sender, driver, host, port))
}

fn parse_url(url: &str) -> Result<(String, u16), Failure> {
    let uri: http::Uri = url.parse().map_err(|e| Failure::Url(format!("{e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            return Err(Failure::Url(format!(
                "scheme {other}: the snapshot is taken over TLS with a client certificate"
            )));
        }
        None => return Err(Failure::Url("no scheme".into())),
    }
    let host = uri.host().ok_or_else(|| Failure::Url("no host".into()))?;
    // http::Uri keeps IPv6 brackets; ServerName and connect() want the bare address.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(2379)))
}

/// The TLS client for one endpoint: only its CA is trusted (not the system roots: etcd's CA
/// is private), and the client certificate is presented.
fn tls_config(ep: &EtcdEndpoint) -> Result<rustls::ClientConfig, Failure> {
    let cred = |role: &'static str, path: &Path, detail: String| Failure::Credentials {
        role,
        path: path.to_path_buf(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = read_certs(&ep.ca_file).map_err(|d| cred("CA file", &ep.ca_file, d))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| cred("CA file", &ep.ca_file, format!("not a usable CA certificate: {e}")))?;
    }
    let chain = read_certs(&ep.cert_file).map_err(|d| cred("client certificate", &ep.cert_file, d))?;
    let key = PrivateKeyDer::from_pem_file(&ep.key_file)
        .map_err(|e| cred("client key", &ep.key_file, pem_problem(&e, "private key")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            // rustls' message here describes the key type, never the key material.
            cred("client key", &ep.key_file, format!("does not fit {}: {e}", ep.cert_file.display()))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_problem(&e, "certificate"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(&e, "certificate"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

/// A PEM error in words that never quote the file (pki-types' own Display can include a line
/// of it, which for a key file would be key material).
fn pem_problem(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error as P;
    match e {
        P::Io(io) => format!("cannot read: {io}"),
        P::NoItemsFound => format!("no PEM {what} in the file"),
        P::MissingSectionEnd { .. } | P::IllegalSectionStart { .. } | P::Base64Decode(_) => {
            format!("malformed PEM (expected a {what})")
        }
        _ => format!("not a usable PEM {what}"),
    }
}

/// Classifies a TLS failure into the advice an operator needs.
fn tls_failure(e: &(dyn std::error::Error + 'static), ep: &EtcdEndpoint) -> Failure {
    match find_rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(cert)) => {
            use rustls::CertificateError as C;
            let advice = match cert {
                C::UnknownIssuer | C::BadSignature => format!(
                    "etcd's certificate is not signed by the CA in {}: point the CA file at etcd's CA (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)",
                    ep.ca_file.display()
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "etcd's certificate does not name this host: use the address its certificate was issued for"
                        .to_string()
                }
                C::Expired | C::ExpiredContext { .. } => {
                    "etcd's certificate has expired: renew etcd's certificates first".to_string()
                }
                other => format!("etcd's certificate is refused: {other:?}"),
            };
            Failure::Tls(advice)
        }
        Some(rustls::Error::AlertReceived(alert)) => Failure::Tls(format!(
            "etcd refused the client certificate {} ({alert:?}): use a client certificate signed by etcd's CA (kubeadm: apiserver-etcd-client.crt)",
            ep.cert_file.display()
        )),
        Some(other) => Failure::Tls(other.to_string()),
        None => Failure::Tls(chain(e)),
    }
}

/// An error and its sources in one line (hyper's Display stops at its own layer).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cur = s.source();
    }
    out
}

fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cur = Some(inner);
            continue;
        }
        cur = err.source();
    }
    None
}

/// The failure of an HTTP exchange: a TLS alert arriving after the handshake (TLS 1.3 reports
/// a refused client certificate on the first read) is classified as TLS.
pub(crate) fn http_failure(e: &hyper::Error, ep: &EtcdEndpoint, what: &str) -> Failure {
    match find_rustls_error(e) {
        Some(_) => tls_failure(e, ep),
        None => Failure::Stream(format!("{what}: {}", chain(e))),
    }
}

async fn stream_snapshot(
    ep: &EtcdEndpoint,
    host: &str,
    port: u16,
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    sink: &mut Sink,
) -> Result<(), Attempt> {
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let req = http::Request::post(SNAPSHOT_PATH)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .map_err(|e| Failure::Stream(e.to_string()))?;
    let resp = tokio::time::timeout(HANDSHAKE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| Failure::Timeout {
            during: "waiting for the answer",
            seconds: HANDSHAKE_TIMEOUT.as_secs(),
        })?
        .map_err(|e| http_failure(&e, ep, "sending the request"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = read_some(&mut body, 8192).await;
        return Err(Failure::Http { status: status.as_u16(), message: gateway_message(&text) }.into());
    }
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await.map_err(|_| Failure::Timeout {
            during: "receiving the snapshot",
            seconds: IDLE_TIMEOUT.as_secs(),
        })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| http_failure(&e, ep, "receiving the snapshot"))?;
        let Ok(data) = frame.into_data() else { continue };
        sink.push(&data).await?;
    }
    Ok(())
}

/// Where a snapshot stream goes: etcd's gateway lines are split, decoded, verified as they
/// arrive ([`Verifier`]) and written to the locked, private `NAME.db.part`.
pub(crate) struct Sink {
    out: tokio::io::BufWriter<tokio::fs::File>,
    check: Verifier,
    lines: LineSplitter,
    part: PathBuf,
}

impl Sink {
    fn open(part: &Path) -> Result<Sink, Attempt> {
        let file = open_part(part)?;
        Ok(Sink {
            out: tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file)),
            check: Verifier::default(),
            lines: LineSplitter::default(),
            part: part.to_path_buf(),
        })
    }

    /// Takes the next bytes of the gateway's answer, however they were cut.
    pub(crate) async fn push(&mut self, data: &[u8]) -> Result<(), Attempt> {
        for line in self.lines.push(data).map_err(Failure::Stream)? {
            take_line(&line, &mut self.check, &mut self.out, &self.part).await?;
        }
        Ok(())
    }

    /// The end of the stream: the rest written, flushed and synced, then verified.
    async fn finish(mut self) -> Result<Taken, Attempt> {
        let rest = self.lines.rest().to_vec();
        take_line(&rest, &mut self.check, &mut self.out, &self.part).await?;
        self.out.flush().await.map_err(|e| local("writing", &self.part, e))?;
        let file = self.out.into_inner();
        // The data must be on disk before the name says "backup".
        file.sync_all().await.map_err(|e| local("syncing", &self.part, e))?;
        let mut verified = self.check.finish().map_err(Failure::Integrity)?;
        verified.lock = Some(file.into_std().await);
        Ok(verified)
    }
}

/// Verifies and writes one gateway line.
async fn take_line(
    line: &[u8],
    check: &mut Verifier,
    out: &mut tokio::io::BufWriter<tokio::fs::File>,
    part: &Path,
) -> Result<(), Attempt> {
    if let Chunk::Data { blob, remaining, version } = parse_chunk(line)? {
        check.chunk(&blob, remaining, version);
        out.write_all(&blob).await.map_err(|e| local("writing", part, e))?;
    }
    Ok(())
}

fn local(action: &'static str, path: &Path, e: std::io::Error) -> Attempt {
    Attempt::Local(Error::Io { action, path: path.to_path_buf(), source: e })
}

/// Opens (or reclaims, if a crashed attempt left it) the partial file, locked so two
/// processes never write the same backup.
fn open_part(part: &Path) -> Result<std::fs::File, Attempt> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // Never through a symlink: whoever could plant one in the backup directory would
        // have the snapshot (every Secret) written, or a file of theirs truncated, elsewhere.
        .custom_flags(libc::O_NOFOLLOW)
        .open(part)
        .map_err(|e| local("creating", part, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Attempt::Local(Error::Busy { path: part.to_path_buf() }));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(local("locking", part, e)),
    }
    file.set_len(0).map_err(|e| local("truncating", part, e))?;
    // A reclaimed file keeps its old mode; a snapshot holds every Secret.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| local("restricting", part, e))?;
    Ok(file)
}

pub(crate) async fn read_some(body: &mut Incoming, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(d) = frame.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    buf.truncate(limit);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The message of a gateway error body (`{"code":16,"message":"..."}` or a stream's
/// `{"error":{...}}`), else the body's first line.
pub(crate) fn gateway_message(text: &str) -> String {
    let v: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
    let msg = v.as_ref().and_then(|v| {
        let e = v.get("error").unwrap_or(v);
        e.get("message").and_then(|m| m.as_str()).map(str::to_string)
    });
    msg.unwrap_or_else(|| text.lines().next().unwrap_or("").chars().take(300).collect())
}

/// Splits the gateway's newline-delimited JSON into lines across frame boundaries. Only new
/// bytes are searched for the newline: a 44 KiB line arriving in small frames is scanned once.
#[derive(Default)]
struct LineSplitter {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
}

impl LineSplitter {
    fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        // Only the bytes after `scanned` can hold a newline; everything up to the last one
        // found is complete lines.
        let new = self.buf.get(self.scanned..).unwrap_or_default();
        if let Some(i) = new.iter().rposition(|&b| b == b'\n') {
            let end = self.scanned + i + 1;
            let complete: Vec<u8> = self.buf.drain(..end).collect();
            out = complete.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        }
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_LINE {
            return Err(format!("a line of more than {MAX_LINE} bytes: not etcd's snapshot stream"));
        }
        Ok(out)
    }

    fn rest(&self) -> &[u8] {
        &self.buf
    }
}

#[derive(Debug)]
enum Chunk {
    Data { blob: Vec<u8>, remaining: Option<u64>, version: Option<String> },
    Empty,
}

/// One gateway line: `{"result":{"remaining_bytes":"…","blob":"<base64>","version":"3.6.0"}}`
/// (protojson with proto names: uint64 as a string, zero values omitted), or
/// `{"error":{"code":…,"message":…}}`.
fn parse_chunk(line: &[u8]) -> Result<Chunk, Failure> {
    let text = std::str::from_utf8(line).map_err(|_| Failure::Stream("a line that is not UTF-8".into()))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(Chunk::Empty);
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Failure::Stream(format!("not JSON ({e}): {}", text.chars().take(120).collect::<String>()))
    })?;
    // A stream's error is `{"error":{...}}`; an error before any data is the gateway's plain
    // `{"code":…,"message":…}` (what a relaying node, which does not see the HTTP status,
    // passes on).
    let plain = v.get("result").is_none() && v.get("message").is_some();
    if let Some(err) = v.get("error").or(plain.then_some(&v)) {
        let message = err.get("message").and_then(|m| m.as_str()).unwrap_or("unknown error");
        let code = err.get("code").and_then(|c| c.as_i64()).unwrap_or(0);
        return Err(Failure::Server(format!("{message} (gRPC code {code})")));
    }
    let Some(result) = v.get("result") else {
        return Err(Failure::Stream(format!(
            "a line without result or error: {}",
            text.chars().take(120).collect::<String>()
        )));
    };
    let blob = match result.get("blob") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| Failure::Stream(format!("blob is not base64: {e}")))?,
        Some(other) => return Err(Failure::Stream(format!("blob is not a string: {other}"))),
    };
    let remaining = match result.get("remaining_bytes") {
        None | Some(serde_json::Value::Null) => Some(0),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(n) => n.as_u64(),
    };
    let version =
        result.get("version").and_then(|s| s.as_str()).filter(|s| !s.is_empty()).map(str::to_string);
    Ok(Chunk::Data { blob, remaining, version })
}

/// Checks the stream as it arrives: the SHA-256 of everything but the last 32 bytes must equal
/// those 32 bytes (what `etcdutl snapshot restore` checks), the size must be a database plus
/// the digest (etcd's `hasChecksum`: size % 512 == 32), the byte count must match what etcd
/// announced, and the file must start like a bbolt database.
#[derive(Default)]
struct Verifier {
    whole: Sha256,
    db: Sha256,
    /// The last (up to) 32 bytes, not yet known to be database rather than digest.
    tail: Vec<u8>,
    bytes: u64,
    head: Vec<u8>,
    /// Bytes etcd announced: first chunk's length plus its `remaining_bytes`.
    announced: Option<u64>,
    version: Option<String>,
    chunks: u64,
}

impl Verifier {
    fn chunk(&mut self, blob: &[u8], remaining: Option<u64>, version: Option<String>) {
        if self.chunks == 0 {
            self.announced = remaining.map(|r| r + blob.len() as u64);
        }
        self.chunks += 1;
        if self.version.is_none() {
            self.version = version;
        }
        self.whole.update(blob);
        self.bytes += blob.len() as u64;
        if self.head.len() < HEAD {
            let take = HEAD - self.head.len();
            self.head.extend(blob.iter().take(take));
        }
        // Everything but the newest 32 bytes is certainly database: hash it straight from the
        // chunk; keep only the last 32 bytes back.
        if let Some((db, last)) = blob.split_last_chunk::<TRAILER>() {
            self.db.update(&self.tail);
            self.db.update(db);
            self.tail.clear();
            self.tail.extend_from_slice(last);
        } else {
            self.tail.extend_from_slice(blob);
            if let Some((db, _)) = self.tail.split_last_chunk::<TRAILER>()
                && !db.is_empty()
            {
                self.db.update(db);
                let cut = db.len();
                self.tail.drain(..cut);
            }
        }
    }

    fn finish(self) -> Result<Taken, String> {
        if self.chunks == 0 || self.bytes == 0 {
            return Err("etcd sent no data".into());
        }
        if self.tail.len() < TRAILER {
            return Err(format!("only {} bytes, too short to carry the SHA-256 digest", self.bytes));
        }
        let db_bytes = self.bytes - TRAILER as u64;
        if let Some(a) = self.announced
            && a != db_bytes
        {
            return Err(format!("etcd announced {a} database bytes, {db_bytes} arrived (stream cut short?)"));
        }
        if self.bytes % 512 != TRAILER as u64 {
            return Err(format!(
                "{} bytes is not a database plus its digest (size % 512 must be 32)",
                self.bytes
            ));
        }
        let digest = self.db.finalize();
        if digest.as_slice() != self.tail.as_slice() {
            return Err(format!(
                "the SHA-256 of the database ({}) differs from the digest etcd appended ({})",
                hex::encode(digest),
                hex::encode(&self.tail)
            ));
        }
        if let Some(problem) = bbolt_problem(&self.head) {
            return Err(problem);
        }
        Ok(Taken {
            bytes: self.bytes,
            sha256: hex::encode(self.whole.finalize()),
            version: self.version,
            lock: None,
        })
    }
}

/// Why `head` (the first bytes of a file) does not start like a bbolt database, as etcd's
/// snapshots and data files are: `None` when one of its two meta pages (page 0, or page 1
/// one page size further) is valid the way bbolt checks it when it opens a file — the meta
/// page flag, the magic number, format version 2, a plausible page size, and the FNV-1a
/// checksum over the meta fields. bbolt writes the pages little-endian on every platform
/// etcd ships for.
pub fn bbolt_problem(head: &[u8]) -> Option<String> {
    let first = match meta_page(head) {
        Ok(_) => return None,
        Err(e) => e,
    };
    // Page 0 may be torn; page 1 sits one page size further (bbolt falls back to it too).
    let size = head.get(24..28).and_then(le_u32).filter(|s| plausible_page_size(*s)).unwrap_or(4096);
    let second = head.get(usize::try_from(size).ok()?..).map(meta_page);
    match second {
        Some(Ok(_)) => None,
        _ => Some(first),
    }
}

/// One meta page: `Ok(page size)` or why it is not a valid one.
fn meta_page(page: &[u8]) -> Result<u32, String> {
    // Page header: id u64, flags u16, count u16, overflow u32; then the meta: magic u32,
    // version u32, pageSize u32, flags u32, root bucket (root u64, sequence u64), freelist
    // u64, pgid u64, txid u64, checksum u64 (FNV-1a 64 of the 56 bytes before it).
    let Some(meta) = page.get(16..80) else {
        return Err(format!("{} bytes: too short for a bbolt meta page", page.len()));
    };
    let flags = page.get(8..10).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(u16::from_le_bytes);
    let magic = meta.get(0..4).and_then(le_u32);
    if magic != Some(BOLT_MAGIC) {
        return Err("no bbolt magic number in the first meta page (not an etcd snapshot or data file)".into());
    }
    if flags.is_none_or(|f| f & BOLT_META_PAGE == 0) {
        return Err("the first page is not flagged as a bbolt meta page".into());
    }
    let version = meta.get(4..8).and_then(le_u32).unwrap_or(0);
    if version != BOLT_VERSION {
        return Err(format!("bbolt format version {version}, expected {BOLT_VERSION}"));
    }
    let size = meta.get(8..12).and_then(le_u32).unwrap_or(0);
    if !plausible_page_size(size) {
        return Err(format!("page size {size} is not a bbolt page size"));
    }
    let stored = meta.get(56..64).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes);
    if meta.get(..56).map(fnv1a64) != stored {
        return Err("the bbolt meta page checksum does not match (a damaged or truncated file)".into());
    }
    Ok(size)
}

fn le_u32(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_le_bytes)
}

fn plausible_page_size(size: u32) -> bool {
    size.is_power_of_two() && (512..=65536).contains(&size)
}

/// FNV-1a, 64 bits (Go's hash/fnv New64a, which bbolt uses for its meta checksum).
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Checks the file a backup command wrote (`--backup-command` succeeding is not enough): it
/// exists as a regular file, owner-only (0600) in a directory others cannot write, is not
/// empty, and is an etcd snapshot — a bbolt database whose meta page verifies, and, when it
/// carries etcd's SHA-256 digest (size % 512 == 32, what `etcdctl snapshot save` writes), a
/// digest that matches, exactly what `etcdutl snapshot restore` will check. A database copied
/// without the digest is accepted when its size is whole pages (restore needs
/// `--skip-hash-check` for it).
pub async fn check_snapshot_file(path: &Path) -> Result<Backup, Error> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || check_file(&owned)).await.map_err(|e| Error::Io {
        action: "checking",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?
}

fn check_file(path: &Path) -> Result<Backup, Error> {
    use std::io::Read;
    let not = |detail: String| Error::NotASnapshot { path: path.to_path_buf(), detail };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(not("the backup command succeeded but did not write it".into()));
        }
        Err(e) => return Err(Error::Io { action: "reading", path: path.to_path_buf(), source: e }),
    };
    if !meta.file_type().is_file() {
        return Err(not("not a regular file (a symlink is not followed)".into()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::Unsafe {
            path: path.to_path_buf(),
            detail: format!(
                "is mode {mode:04o}: an etcd snapshot holds every Secret; the backup command must create it 0600 (umask 077)"
            ),
        });
    }
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    if meta.len() == 0 {
        return Err(not("the file is empty".into()));
    }
    let io = |e| Error::Io { action: "reading", path: path.to_path_buf(), source: e };
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io)?;
    let with_digest = meta.len() % 512 == TRAILER as u64;
    let mut check = Verifier::default();
    let mut plain = Sha256::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else { break };
        if with_digest {
            check.chunk(data, None, None);
        } else {
            plain.update(data);
            let take = HEAD.saturating_sub(head.len()).min(data.len());
            head.extend_from_slice(data.get(..take).unwrap_or_default());
        }
    }
    let (bytes, sha256) = if with_digest {
        let taken = check.finish().map_err(not)?;
        (taken.bytes, taken.sha256)
    } else {
        if let Some(problem) = bbolt_problem(&head) {
            return Err(not(problem));
        }
        let size = head.get(16 + 8..16 + 12).and_then(le_u32).unwrap_or(4096);
        if meta.len() % u64::from(size) != 0 {
            return Err(not(format!(
                "{} bytes is neither whole {size}-byte pages nor a database plus etcd's digest (a cut-off file?)",
                meta.len()
            )));
        }
        (meta.len(), hex::encode(plain.finalize()))
    };
    Ok(Backup { path: path.to_path_buf(), bytes, sha256, endpoint: String::new(), etcd_version: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake "database": a bbolt-like header, page-sized, then etcd's digest.
    fn fake_snapshot(pages: usize) -> Vec<u8> {
        let mut db = fake_db(pages);
        let digest = Sha256::digest(&db);
        db.extend_from_slice(&digest);
        db
    }

    /// A database without etcd's digest: two valid meta pages, then filler pages.
    fn fake_db(pages: usize) -> Vec<u8> {
        let mut db = vec![0u8; 4096 * pages.max(2)];
        for (i, b) in db.iter_mut().enumerate().skip(8192) {
            *b = (i * 31 % 251) as u8;
        }
        for page in 0..2 {
            let p = &mut db[page * 4096..];
            p[0..8].copy_from_slice(&(page as u64).to_le_bytes());
            p[8..10].copy_from_slice(&BOLT_META_PAGE.to_le_bytes());
            p[16..20].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
            p[20..24].copy_from_slice(&BOLT_VERSION.to_le_bytes());
            p[24..28].copy_from_slice(&4096u32.to_le_bytes());
            p[64..72].copy_from_slice(&(page as u64 + 7).to_le_bytes()); // txid
            let sum = fnv1a64(&p[16..72]);
            p[72..80].copy_from_slice(&sum.to_le_bytes());
        }
        db
    }

    /// Feeds `data` in etcd's framing: 32 KiB chunks with remaining_bytes, then the digest.
    fn verify(data: &[u8], chunk: usize) -> Result<Taken, String> {
        let (db, digest) = data.split_at(data.len().saturating_sub(TRAILER));
        let mut v = Verifier::default();
        let mut sent = 0;
        for c in db.chunks(chunk) {
            sent += c.len();
            v.chunk(c, Some((db.len() - sent) as u64), Some("3.6.0".into()));
        }
        v.chunk(digest, Some(0), Some("3.6.0".into()));
        v.finish()
    }

    #[test]
    fn a_good_stream_verifies_whatever_the_chunking() {
        let snap = fake_snapshot(20);
        for chunk in [32 * 1024, 4096, 1000, 7] {
            let t = verify(&snap, chunk).unwrap();
            assert_eq!(t.bytes, snap.len() as u64);
            assert_eq!(t.sha256, hex::encode(Sha256::digest(&snap)));
            assert_eq!(t.version.as_deref(), Some("3.6.0"));
        }
    }

    #[test]
    fn a_flipped_byte_a_cut_stream_or_a_missing_digest_is_refused() {
        let snap = fake_snapshot(20);
        let mut flipped = snap.clone();
        flipped[5000] ^= 1;
        assert!(verify(&flipped, 32 * 1024).unwrap_err().contains("SHA-256"));

        // Cut after some chunks: the announced size no longer matches.
        let mut v = Verifier::default();
        let db = &snap[..snap.len() - TRAILER];
        v.chunk(&db[..32 * 1024], Some((db.len() - 32 * 1024) as u64), None);
        assert!(v.finish().unwrap_err().contains("announced"));

        // Without the digest (and without size announcements).
        let mut v = Verifier::default();
        v.chunk(db, None, None);
        assert!(v.finish().unwrap_err().contains("size % 512"));

        let mut not_bolt = fake_snapshot(2);
        not_bolt[16] = 0;
        not_bolt[4096 + 16] = 0;
        let n = not_bolt.len() - TRAILER;
        let digest = Sha256::digest(&not_bolt[..n]);
        not_bolt[n..].copy_from_slice(&digest);
        assert!(verify(&not_bolt, 4096).unwrap_err().contains("bbolt"));
        assert!(Verifier::default().finish().unwrap_err().contains("no data"));
    }

    #[test]
    fn a_bbolt_meta_page_is_checked_as_bbolt_opens_a_file() {
        let db = fake_db(4);
        assert_eq!(bbolt_problem(&db), None);
        // A torn page 0 is survived through page 1, as bbolt does.
        let mut torn = db.clone();
        torn[40] ^= 0xff; // the root bucket id: page 0's checksum no longer matches
        assert_eq!(bbolt_problem(&torn), None);
        torn[4096 + 40] ^= 0xff;
        assert!(bbolt_problem(&torn).unwrap().contains("checksum"), "{:?}", bbolt_problem(&torn));
        let mut old = db.clone();
        for p in [0, 4096] {
            old[p + 20] = 1;
        }
        assert!(bbolt_problem(&old).unwrap().contains("version 1"));
        let mut flags = db.clone();
        for p in [0, 4096] {
            flags[p + 8] = 0x10;
        }
        assert!(bbolt_problem(&flags).unwrap().contains("meta page"));
        assert!(bbolt_problem(b"").unwrap().contains("too short"));
        assert!(
            bbolt_problem(
                b"SQLite format 3\0 and then some more bytes than eighty, surely, yes indeed it is"
            )
            .is_some()
        );
        // Whatever the bytes, an answer and never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..3000 {
            let mut junk = db.get(..len % 9000).unwrap_or_default().to_vec();
            for b in junk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(61) {
                    *b = x as u8;
                }
            }
            let _ = bbolt_problem(&junk);
        }
    }

    fn write_private(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[tokio::test]
    async fn a_backup_commands_file_must_be_a_private_etcd_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("backups");
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);

        let snap = fake_snapshot(6);
        let good = write_private(&dir, "good", &snap, 0o600);
        let b = check_snapshot_file(&good).await.unwrap();
        assert_eq!((b.bytes, b.sha256), (snap.len() as u64, hex::encode(Sha256::digest(&snap))));
        // A bare database (etcd's data file copied) is whole pages, no digest.
        let bare = write_private(&dir, "bare", &fake_db(3), 0o400);
        assert_eq!(check_snapshot_file(&bare).await.unwrap().bytes, 3 * 4096);

        let err = |e: Error| e.to_string();
        let empty = write_private(&dir, "empty", b"", 0o600);
        assert!(err(check_snapshot_file(&empty).await.unwrap_err()).contains("empty"));
        let text = write_private(&dir, "text", b"backup done\n", 0o600);
        assert!(matches!(check_snapshot_file(&text).await, Err(Error::NotASnapshot { .. })));
        let mut flipped = snap.clone();
        flipped[9000] ^= 1;
        let flipped = write_private(&dir, "flipped", &flipped, 0o600);
        assert!(err(check_snapshot_file(&flipped).await.unwrap_err()).contains("SHA-256"));
        let cut = write_private(&dir, "cut", &snap[..snap.len() - 100], 0o600);
        assert!(matches!(check_snapshot_file(&cut).await, Err(Error::NotASnapshot { .. })));
        assert!(
            err(check_snapshot_file(&dir.join("missing")).await.unwrap_err()).contains("did not write it")
        );
        let open = write_private(&dir, "open", &snap, 0o644);
        assert!(err(check_snapshot_file(&open).await.unwrap_err()).contains("0644"));
        let link = dir.join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(err(check_snapshot_file(&link).await.unwrap_err()).contains("symlink"));
        // The directory must not be writable by others.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(err(check_snapshot_file(&good).await.unwrap_err()).contains("chmod 700"));
        assert!(matches!(private_dir(&dir), Err(Error::Unsafe { .. })));
    }

    #[test]
    fn a_symlink_planted_as_the_partial_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"precious").unwrap();
        let part = dir.path().join("etcd-snapshot.db.part");
        std::os::unix::fs::symlink(&target, &part).unwrap();
        assert!(matches!(open_part(&part), Err(Attempt::Local(Error::Io { action: "creating", .. }))));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious", "not truncated");
        // A real partial file left by a crash is reclaimed, 0600.
        std::fs::remove_file(&part).unwrap();
        std::fs::write(&part, b"old").unwrap();
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o644)).unwrap();
        let Ok(f) = open_part(&part) else { panic!("a real partial file is reclaimed") };
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn gateway_lines_are_decoded_as_protojson_writes_them() {
        let line = br#"{"result":{"remaining_bytes":"65536","blob":"AAEC","version":"3.6.0"}}"#;
        let Chunk::Data { blob, remaining, version } = parse_chunk(line).unwrap() else { panic!() };
        assert_eq!((blob, remaining, version.as_deref()), (vec![0, 1, 2], Some(65536), Some("3.6.0")));
        // Zero values are omitted by protojson.
        let Chunk::Data { blob, remaining, .. } = parse_chunk(br#"{"result":{"blob":"AA=="}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((blob, remaining), (vec![0], Some(0)));
        let err = parse_chunk(br#"{"error":{"code":14,"message":"etcdserver: no leader"}}"#).unwrap_err();
        assert_eq!(err, Failure::Server("etcdserver: no leader (gRPC code 14)".into()));
        // The gateway's error before any data, as a relaying node's curl passes it on.
        let err = parse_chunk(br#"{"code":7,"message":"permission denied","details":[]}"#).unwrap_err();
        assert_eq!(err, Failure::Server("permission denied (gRPC code 7)".into()));
        assert!(matches!(parse_chunk(b"<html>"), Err(Failure::Stream(_))));
        assert!(matches!(parse_chunk(br#"{"result":{"blob":"!!"}}"#), Err(Failure::Stream(_))));
        assert!(matches!(parse_chunk(b"\n"), Ok(Chunk::Empty)));
    }

    #[test]
    fn lines_are_reassembled_across_frames() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"{\"a\"").unwrap().is_empty());
        let lines = s.push(b":1}\n{\"b\":2}\n{\"c\"").unwrap();
        assert_eq!(lines, vec![b"{\"a\":1}\n".to_vec(), b"{\"b\":2}\n".to_vec()]);
        assert_eq!(s.rest(), b"{\"c\"");
        assert!(s.push(&vec![b'x'; MAX_LINE + 1]).is_err());
    }

    #[test]
    fn error_bodies_give_etcds_message() {
        assert_eq!(
            gateway_message(r#"{"code":16,"message":"etcdserver: user name is empty"}"#),
            "etcdserver: user name is empty"
        );
        assert_eq!(gateway_message(r#"{"error":{"code":14,"message":"no leader"}}"#), "no leader");
        assert_eq!(gateway_message("404 page not found\n"), "404 page not found");
    }

    #[test]
    fn urls_and_names_are_checked() {
        assert_eq!(parse_url("https://127.0.0.1:2379").unwrap(), ("127.0.0.1".into(), 2379));
        assert_eq!(parse_url("https://[::1]:2379").unwrap(), ("::1".into(), 2379));
        assert_eq!(parse_url("https://etcd-0.example").unwrap(), ("etcd-0.example".into(), 2379));
        assert!(matches!(parse_url("http://127.0.0.1:2379"), Err(Failure::Url(_))));
        assert!(matches!(parse_url("127.0.0.1:2379"), Err(Failure::Url(_))));
        for ok in ["pre-upgrade-1.37", "run_42", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", "x\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn pem_problems_never_quote_the_file() {
        use rustls::pki_types::pem::Error as P;
        let secret = b"-----BEGIN PRIVATE KEY SECRETMATERIAL".to_vec();
        let msg = pem_problem(&P::IllegalSectionStart { line: secret }, "private key");
        assert!(!msg.contains("SECRET"), "{msg}");
        let msg = pem_problem(&P::Base64Decode("SECRETMATERIAL".into()), "private key");
        assert!(!msg.contains("SECRET"), "{msg}");
    }
}
