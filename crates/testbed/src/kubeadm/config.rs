//! kubeadm's configuration files for the sandbox (kubeadm.k8s.io/v1beta4, the only version
//! 1.37 accepts and the current one on 1.35 and 1.36), and the preflight checks the sandbox
//! skips, each with the reason (reference/kubeadm.md §10; every one exists because a sandbox
//! node has no container runtime, pulls no images, or shares the host's kernel and memory).

use refit_core::Version;

/// Preflight checks `kubeadm init`/`join` may not pass on a sandbox node, with why.
pub const IGNORED_PREFLIGHT: &[(&str, &str)] = &[
    ("CRI", "no container runtime: the node agent runs static pods as processes"),
    ("ContainerRuntimeVersion", "no container runtime to ask for its version"),
    ("ImagePull", "no images are pulled: each image tag maps to a testbed binary"),
    ("SystemVerification", "kernel and cgroup validators read the host's kernel, shared by every node"),
    ("Swap", "the host's swap, shared by every node"),
    ("NumCPU", "the host's CPUs, shared by every node (the test machine has 2)"),
    ("Mem", "the host's memory, shared by every node"),
    (
        "FileContent--proc-sys-net-ipv4-ip_forward",
        "a new network namespace starts with forwarding off; no pod traffic crosses sandbox nodes",
    ),
    ("FileExisting-conntrack", "kube-proxy does not run on sandbox nodes (kwok reports its pods)"),
];

/// Preflight checks `kubeadm upgrade apply/node` may not pass on a sandbox node.
pub const UPGRADE_IGNORED_PREFLIGHT: &[&str] =
    &["ContainerRuntimeVersion", "ImagePull", "SystemVerification"];

/// The names of [`IGNORED_PREFLIGHT`].
pub fn ignored_preflight() -> Vec<&'static str> {
    IGNORED_PREFLIGHT.iter().map(|(name, _)| *name).collect()
}

/// The `nodeRegistration` block init and join share: the node's name, a CRI socket kubeadm
/// never dials (see [`IGNORED_PREFLIGHT`]), no image pulls, the kubelet's node IP, and the
/// skipped preflight checks.
fn node_registration(node: &str, address: &str) -> String {
    format!(
        "nodeRegistration:
  name: {node}
  criSocket: unix:///var/run/containerd/containerd.sock
  imagePullPolicy: Never
  kubeletExtraArgs:
  - name: node-ip
    value: {address}
  ignorePreflightErrors:{ignored}
",
        ignored = list(&ignored_preflight()),
    )
}

/// What `kubeadm init` is given.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// The first control-plane node's name.
    pub node: String,
    /// Its address (the apiserver advertises it).
    pub address: String,
    /// The Kubernetes release the cluster starts at.
    pub version: Version,
    /// `host:port` every client uses: the sandbox's load balancer in front of the apiservers.
    pub control_plane_endpoint: String,
    /// The bootstrap token joins use (`abcdef.0123456789abcdef`).
    pub token: String,
    /// The key that encrypts the uploaded control-plane certificates (64 hex digits).
    pub certificate_key: String,
}

fn list(items: &[&str]) -> String {
    items.iter().map(|i| format!("\n  - {i}")).collect()
}

/// InitConfiguration + ClusterConfiguration for the first control-plane node.
pub fn init_config(s: &InitSpec) -> String {
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
- token: \"{token}\"
  ttl: 24h0m0s
  usages: [signing, authentication]
  groups: [system:bootstrappers:kubeadm:default-node-token]
certificateKey: \"{key}\"
localAPIEndpoint:
  advertiseAddress: {address}
  bindPort: 6443
{registration}---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {version}
clusterName: refit-sandbox
controlPlaneEndpoint: {endpoint}
networking:
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
",
        token = s.token,
        key = s.certificate_key,
        address = s.address,
        registration = node_registration(&s.node, &s.address),
        version = s.version.git_version(),
        endpoint = s.control_plane_endpoint,
    )
}

/// What a `kubeadm join` is given.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// The joining node's name.
    pub node: String,
    /// Its address.
    pub address: String,
    /// The control-plane endpoint (`host:port`).
    pub control_plane_endpoint: String,
    /// The bootstrap token.
    pub token: String,
    /// `sha256:<hex>` of the cluster CA's public key.
    pub ca_cert_hash: String,
    /// For a control-plane node: the certificate key of `init --upload-certs`.
    pub certificate_key: Option<String>,
}

/// JoinConfiguration for a worker or (with a certificate key) a control-plane node.
pub fn join_config(s: &JoinSpec) -> String {
    let control_plane = match &s.certificate_key {
        Some(key) => format!(
            "controlPlane:\n  certificateKey: \"{key}\"\n  localAPIEndpoint:\n    advertiseAddress: {}\n    bindPort: 6443\n",
            s.address
        ),
        None => String::new(),
    };
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: {endpoint}
    token: \"{token}\"
    caCertHashes: [\"{hash}\"]
{control_plane}{registration}",
        endpoint = s.control_plane_endpoint,
        token = s.token,
        hash = s.ca_cert_hash,
        registration = node_registration(&s.node, &s.address),
    )
}

/// A fresh bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`) from `random` bytes.
pub fn bootstrap_token(random: &[u8; 22]) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let chars: String = random
        .iter()
        .map(|b| char::from(ALPHABET.get(usize::from(*b) % ALPHABET.len()).copied().unwrap_or(b'a')))
        .collect();
    format!("{}.{}", &chars[..6], &chars[6..])
}

/// The discovery hash from `kubeadm token create --print-join-command`'s output.
pub fn ca_hash_from_join_command(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--discovery-token-ca-cert-hash" {
            return words.next().filter(|h| h.starts_with("sha256:")).map(str::to_string);
        }
    }
    None
}

/// kwok's stage configuration with mirror pods left to the node agent: kwok would otherwise
/// report a control-plane pod Running before its process is up, and kubeadm would move on
/// (reference/kubeadm.md §9.5). The delete stage keeps them, so a graceful deletion of a mirror
/// pod still completes.
pub fn kwok_stages_without_mirror_pods(stages: &str) -> String {
    stages
        .split("\n---\n")
        .map(|doc| {
            let is_pod_stage = doc.contains("kind: Pod") && doc.contains("kind: Stage");
            let is_delete = doc.contains("name: pod-delete");
            if is_pod_stage && !is_delete && doc.contains("    matchExpressions:\n") {
                doc.replacen(
                    "    matchExpressions:\n",
                    "    matchExpressions:\n    - key: '.metadata.annotations[\"kubernetes.io/config.mirror\"]'\n      operator: 'DoesNotExist'\n",
                    1,
                )
            } else {
                doc.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_join_configs_carry_the_node_the_endpoint_and_the_ignored_checks() {
        let init = init_config(&InitSpec {
            node: "cp-1".into(),
            address: "10.200.0.10".into(),
            version: "1.36.4".parse().unwrap(),
            control_plane_endpoint: "10.200.0.1:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            certificate_key: "ab".repeat(32),
        });
        assert!(init.contains("kubernetesVersion: v1.36.4"));
        assert!(init.contains("controlPlaneEndpoint: 10.200.0.1:6443"));
        assert!(init.contains("advertiseAddress: 10.200.0.10"));
        assert!(init.contains("  - ImagePull\n"));
        let join = join_config(&JoinSpec {
            node: "cp-2".into(),
            address: "10.200.0.11".into(),
            control_plane_endpoint: "10.200.0.1:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hash: "sha256:00".into(),
            certificate_key: Some("k".into()),
        });
        assert!(join.contains(
            "controlPlane:\n  certificateKey: \"k\"\n  localAPIEndpoint:\n    advertiseAddress: 10.200.0.11"
        ));
        assert!(join.contains("caCertHashes: [\"sha256:00\"]"));
        let worker = join_config(&JoinSpec { certificate_key: None, ..join_spec() });
        assert!(!worker.contains("controlPlane"));
    }

    fn join_spec() -> JoinSpec {
        JoinSpec {
            node: "w-1".into(),
            address: "10.200.0.12".into(),
            control_plane_endpoint: "e:6443".into(),
            token: "t".into(),
            ca_cert_hash: "sha256:1".into(),
            certificate_key: None,
        }
    }

    #[test]
    fn tokens_have_kubeadms_shape() {
        let t = bootstrap_token(&[7u8; 22]);
        assert_eq!(t.len(), 23);
        assert_eq!(t.find('.'), Some(6));
        assert!(t.chars().all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn the_ca_hash_is_read_from_the_join_command() {
        let out =
            "kubeadm join 10.200.0.1:6443 --token abc.def --discovery-token-ca-cert-hash sha256:0123abcd \n";
        assert_eq!(ca_hash_from_join_command(out).as_deref(), Some("sha256:0123abcd"));
        assert_eq!(ca_hash_from_join_command("kubeadm join x"), None);
    }

    #[test]
    fn kwok_pod_stages_skip_mirror_pods_but_deletion_does_not() {
        let stages = "kind: Stage\nmetadata:\n  name: pod-ready\nspec:\n  resourceRef:\n    kind: Pod\n  selector:\n    matchExpressions:\n    - key: x\n---\nkind: Stage\nmetadata:\n  name: pod-delete\nspec:\n  resourceRef:\n    kind: Pod\n  selector:\n    matchExpressions:\n    - key: y\n---\nkind: Stage\nmetadata:\n  name: node-initialize\nspec:\n  resourceRef:\n    kind: Node\n  selector:\n    matchExpressions:\n    - key: z";
        let out = kwok_stages_without_mirror_pods(stages);
        let docs: Vec<&str> = out.split("\n---\n").collect();
        assert!(docs[0].contains("kubernetes.io/config.mirror"));
        assert!(!docs[1].contains("config.mirror"));
        assert!(!docs[2].contains("config.mirror"));
    }
}
