//! The etcd backup relayed by a control-plane node: kubeadm clusters upgraded with the `ssh`
//! action, when no etcd client certificates are given locally (issue 18 item 9).
//!
//! Why relay rather than copy certificates out: the certificates that open etcd
//! (`/etc/kubernetes/pki`, root only) stay on the node. Over the node action's own ssh
//! connection (same options, host key and identity checks, `sudo -n`), refit
//! 1. reads where the node's kube-apiserver finds etcd, from the static pod manifest kubeadm
//!    wrote (`--etcd-servers`, `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`): stacked
//!    etcd (`https://127.0.0.1:2379`) and external etcd alike, with the client certificate the
//!    apiserver itself uses;
//! 2. asks each of those endpoints, in order, for etcd's Maintenance/Snapshot through its gRPC
//!    gateway with `curl` on the node (kubeadm's install guide needs curl to fetch the
//!    repository key, so it is there; `etcdctl` usually is not — it ships in the etcd image);
//! 3. reads curl's output — etcd's gateway stream, unchanged — through the same verifier and
//!    private `.part` file as a direct snapshot (`super::Sink`), so the file on the operator's
//!    machine is checked (SHA-256 trailer, size, bbolt meta page) and published the same way.
//!
//! The next control-plane node is tried when one cannot give a snapshot (unreachable, no
//! manifest, no curl, every endpoint failing).

use std::time::Duration;

use openssh::{Session, Stdio};
use tokio::io::AsyncReadExt;

use super::{Attempt, Backup, EndpointFailure, Error, Failure, IDLE_TIMEOUT, Sink, Source, save};
use crate::NodeContext;
use crate::ssh::{RemoteCommand, SshOptions};

/// The kube-apiserver manifest kubeadm writes on every control-plane node.
pub const APISERVER_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";

/// How long the discovery script may take (it reads one file).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Prints `servers=`, `ca=`, `cert=`, `key=` from the apiserver's flags (POSIX sh; `$1` is the
/// manifest). Defaults are kubeadm's stacked etcd and its healthcheck client certificate.
const DISCOVERY_SCRIPT: &str = r#"m="$1"
if [ ! -r "$m" ]; then echo "refit: $m is missing or unreadable: not a kubeadm control-plane node" >&2; exit 3; fi
flag() { sed -n "s/^[[:space:]]*-[[:space:]]*--$1=//p" "$m" | head -n 1 | tr -d "\"' \r"; }
s=$(flag etcd-servers); ca=$(flag etcd-cafile); cert=$(flag etcd-certfile); key=$(flag etcd-keyfile)
echo "servers=${s:-https://127.0.0.1:2379}"
echo "ca=${ca:-/etc/kubernetes/pki/etcd/ca.crt}"
echo "cert=${cert:-/etc/kubernetes/pki/etcd/healthcheck-client.crt}"
echo "key=${key:-/etc/kubernetes/pki/etcd/healthcheck-client.key}"
if ! command -v curl >/dev/null 2>&1; then echo "refit: curl is not installed on this node: install it, or give --etcd-endpoint with local certificates" >&2; exit 4; fi
"#;

/// Where a node's apiserver finds etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEtcd {
    /// Client URLs, in the apiserver's order.
    pub servers: Vec<String>,
    /// CA file on the node.
    pub ca: String,
    /// Client certificate on the node.
    pub cert: String,
    /// Its key, on the node (never read by refit).
    pub key: String,
}

/// Parses the discovery script's output; the URLs must be `https://` without spaces or
/// control characters, the files absolute paths.
pub fn parse_discovery(text: &str) -> Result<NodeEtcd, String> {
    let get =
        |k: &str| text.lines().find_map(|l| l.trim_end().strip_prefix(&format!("{k}=")).map(str::to_string));
    let (Some(servers), Some(ca), Some(cert), Some(key)) =
        (get("servers"), get("ca"), get("cert"), get("key"))
    else {
        return Err(format!("unexpected answer from the discovery script: {}", text.trim()));
    };
    let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    let servers: Vec<String> = servers.split(',').map(str::to_string).collect();
    if let Some(bad) = servers.iter().find(|s| !s.starts_with("https://") || !clean(s)) {
        return Err(format!(
            "--etcd-servers holds '{}', not an https:// URL",
            refit_core::identity::printable(bad, false)
        ));
    }
    for (what, path) in [("--etcd-cafile", &ca), ("--etcd-certfile", &cert), ("--etcd-keyfile", &key)] {
        if !path.starts_with('/') || !clean(path) {
            return Err(format!(
                "{what} '{}' is not an absolute path",
                refit_core::identity::printable(path, false)
            ));
        }
    }
    Ok(NodeEtcd { servers, ca, cert, key })
}

/// The snapshot's remote command: curl POSTing to etcd's gateway with the node's certificates,
/// its answer streamed unchanged to stdout (no `--fail`: an error body reaches the verifier,
/// which names etcd's message).
pub fn curl_command(etcd: &NodeEtcd, url: &str) -> RemoteCommand {
    RemoteCommand::root(
        "curl",
        [
            "--silent",
            "--show-error",
            "--no-buffer",
            "--connect-timeout",
            "5",
            "--cacert",
            &etcd.ca,
            "--cert",
            &etcd.cert,
            "--key",
            &etcd.key,
            "--request",
            "POST",
            "--header",
            "Content-Type: application/json",
            "--data",
            "{}",
            &format!("{}{}", url.trim_end_matches('/'), super::SNAPSHOT_PATH),
        ],
    )
}

/// One endpoint as seen from one node.
struct Relay<'a> {
    session: &'a Session,
    node: &'a str,
    etcd: &'a NodeEtcd,
    url: String,
    sudo: bool,
}

impl Source for Relay<'_> {
    fn label(&self) -> String {
        format!("{} → {}", self.node, self.url)
    }

    async fn stream(&self, sink: &mut Sink) -> Result<(), Attempt> {
        let argv = curl_command(self.etcd, &self.url).argv(self.sudo);
        let (program, args) = argv.split_first().ok_or_else(|| Failure::Stream("empty command".into()))?;
        let mut cmd = self.session.command(program.as_str());
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| Failure::Connect(format!("ssh: {e}")))?;
        let (Some(mut out), Some(mut err)) = (child.stdout().take(), child.stderr().take()) else {
            return Err(Failure::Stream("ssh gave no output pipes".into()).into());
        };
        let stderr = async move {
            let mut text = Vec::new();
            let _ = (&mut err).take(8192).read_to_end(&mut text).await;
            String::from_utf8_lossy(&text).trim().to_string()
        };
        let stdout = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::time::timeout(IDLE_TIMEOUT, out.read(&mut buf))
                    .await
                    .map_err(|_| Failure::Timeout {
                        during: "receiving the snapshot from the node",
                        seconds: IDLE_TIMEOUT.as_secs(),
                    })?
                    .map_err(|e| Failure::Stream(format!("reading from ssh: {e}")))?;
                let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else { return Ok(()) };
                sink.push(data).await?;
            }
        };
        let (streamed, stderr): (Result<(), Attempt>, String) = tokio::join!(stdout, stderr);
        let status = child.wait().await.map_err(|e| Failure::Stream(format!("ssh: {e}")))?;
        let said = refit_core::identity::printable(&stderr, false);
        match status.code() {
            Some(0) => streamed,
            // curl's exit codes: 7 no connection, 28 timeout, 35/58/59/60/77/83/90/91 TLS.
            Some(7) => Err(Failure::Connect(format!("curl on {}: {said}", self.node)).into()),
            Some(28) => Err(Failure::Timeout { during: "curl on the node", seconds: 5 }.into()),
            Some(35 | 58 | 59 | 60 | 77 | 83 | 90 | 91) => {
                Err(Failure::Tls(format!("curl on {}: {said}", self.node)).into())
            }
            code => Err(Failure::Stream(format!("curl on {} exited {code:?}: {said}", self.node)).into()),
        }
    }
}

/// Takes the snapshot through the first of `nodes` (control-plane nodes, in the order to
/// try) that gives one, into `DIR/NAME.db` on this machine. `opts` are the ssh action's (with
/// the identities recorded at plan time: a host that is not the recorded one is refused).
pub async fn etcd_snapshot_on_nodes(
    nodes: &[NodeContext],
    opts: &SshOptions,
    dir: &std::path::Path,
    name: &str,
) -> Result<Backup, Error> {
    if nodes.is_empty() {
        return Err(Error::NoEndpoints);
    }
    let mut failures = Vec::new();
    for ctx in nodes {
        let fail = |reason: Failure| EndpointFailure { url: format!("{} (ssh)", ctx.node), reason };
        let session = match crate::ssh::open_session(opts, ctx).await {
            Ok(s) => s,
            Err(e) => {
                failures.push(fail(Failure::Connect(e.to_string())));
                continue;
            }
        };
        let result = on_node(&session, ctx, opts, dir, name).await;
        let _ = session.close().await;
        match result {
            Ok(b) => return Ok(b),
            Err(NodeFailure::Discovery(reason)) => failures.push(fail(reason)),
            Err(NodeFailure::Save(Error::AllEndpointsFailed(f))) => failures.extend(f),
            Err(NodeFailure::Save(e)) => return Err(e),
        }
    }
    Err(Error::AllEndpointsFailed(failures))
}

enum NodeFailure {
    Discovery(Failure),
    Save(Error),
}

async fn on_node(
    session: &Session,
    ctx: &NodeContext,
    opts: &SshOptions,
    dir: &std::path::Path,
    name: &str,
) -> Result<Backup, NodeFailure> {
    let script =
        RemoteCommand::root("sh", ["-c", DISCOVERY_SCRIPT, "refit-etcd-discovery", APISERVER_MANIFEST]);
    let argv = script.argv(opts.sudo);
    let (program, args) =
        argv.split_first().ok_or_else(|| NodeFailure::Discovery(Failure::Stream("empty command".into())))?;
    let mut cmd = session.command(program.as_str());
    cmd.args(args).stdin(Stdio::null());
    let out = tokio::time::timeout(DISCOVERY_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            NodeFailure::Discovery(Failure::Timeout {
                during: "finding etcd on the node",
                seconds: DISCOVERY_TIMEOUT.as_secs(),
            })
        })?
        .map_err(|e| NodeFailure::Discovery(Failure::Connect(format!("ssh: {e}"))))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let said = refit_core::identity::printable(String::from_utf8_lossy(&out.stderr).trim(), false);
        return Err(NodeFailure::Discovery(Failure::Stream(format!(
            "finding etcd on {} (exit {:?}): {said}",
            ctx.node,
            out.status.code()
        ))));
    }
    let etcd = parse_discovery(&stdout).map_err(|e| NodeFailure::Discovery(Failure::Url(e)))?;
    tracing::info!(node = %ctx.node, servers = ?etcd.servers, "etcd snapshot through the node");
    let relays: Vec<Relay<'_>> = etcd
        .servers
        .iter()
        .map(|url| Relay { session, node: &ctx.node, etcd: &etcd, url: url.clone(), sudo: opts.sudo })
        .collect();
    save(&relays, dir, name).await.map_err(NodeFailure::Save)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apiservers_etcd_flags_are_read_and_checked() {
        let text = "servers=https://127.0.0.1:2379,https://10.0.0.6:2379\nca=/etc/kubernetes/pki/etcd/ca.crt\ncert=/etc/kubernetes/pki/apiserver-etcd-client.crt\nkey=/etc/kubernetes/pki/apiserver-etcd-client.key\n";
        let e = parse_discovery(text).unwrap();
        assert_eq!(e.servers, vec!["https://127.0.0.1:2379", "https://10.0.0.6:2379"]);
        assert_eq!(e.key, "/etc/kubernetes/pki/apiserver-etcd-client.key");
        assert!(parse_discovery("nothing").is_err());
        assert!(parse_discovery(&text.replace("https://127", "http://127")).is_err());
        assert!(parse_discovery(&text.replace("ca=/etc", "ca=etc")).is_err());
        assert!(
            parse_discovery(&text.replace("servers=https://127.0.0.1:2379", "servers=https://a\u{1b}b"))
                .is_err()
        );
    }

    #[test]
    fn the_snapshot_is_asked_with_curl_as_root_and_values_as_arguments() {
        let e =
            parse_discovery("servers=https://127.0.0.1:2379\nca=/p/ca.crt\ncert=/p/c.crt\nkey=/p/c.key\n")
                .unwrap();
        let argv = curl_command(&e, "https://127.0.0.1:2379/").argv(true);
        assert_eq!(&argv[..4], ["sudo", "-n", "--", "curl"]);
        assert_eq!(argv.last().unwrap(), "https://127.0.0.1:2379/v3/maintenance/snapshot");
        assert!(argv.windows(2).any(|w| w == ["--key", "/p/c.key"]));
        assert!(!argv.contains(&"--fail".to_string()));
    }
}
