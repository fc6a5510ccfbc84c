//! kubeadm-shaped sandbox nodes: small hosts (network, UTS and mount namespaces, a private root,
//! sshd), a signed per-minor apt repository of kubeadm/kubelet/kubectl packages built from the
//! testbed's binaries, and a node agent that does for kubeadm what a kubelet would, so that the
//! real `kubeadm init/join/upgrade` and the real apt recipe run end to end.

pub mod agent;
// pub mod cluster;
pub mod config;
pub mod systemctl;
