//! Sandbox nodes shaped like kubeadm hosts, so the real kubeadm + apt recipe runs over ssh.
//!
//! [`host`]: each node is a small host — its own network, UTS and mount namespaces, a private
//! root (overlays of `/etc`, `/usr`, `/var`) and an sshd reachable from the operator's side.

pub mod host;
