//! Sandbox nodes shaped like kubeadm hosts, so the real kubeadm + apt recipe runs over ssh.
//!
//! - [`host`]: each node is a small host — its own network, UTS and mount namespaces, a private
//!   root (overlays of `/etc`, `/usr`, `/var`) and an sshd reachable from the operator's side.
//! - [`repo`]: Debian packages of `kubeadm`, `kubelet` and `kubectl` made from the testbed's
//!   binaries, one signed apt repository per minor laid out like pkgs.k8s.io, a static file
//!   server for it, and the commands that install a node from it as the kubeadm install guide
//!   does.
//! - [`agent`]: what kubeadm needs from a kubelet on a node without a container runtime
//!   (static pods as processes, mirror pods, TLS bootstrap, health endpoint); [`systemctl`] is
//!   the node's systemd stand-in that restarts it.
//! - [`config`]: kubeadm's init/join configuration and the preflight checks a sandbox skips.
//! - [`cluster`]: a cluster built with the real `kubeadm init`/`join` on such nodes.

pub mod agent;
pub mod cluster;
pub mod config;
pub mod host;
pub mod repo;
pub mod systemctl;
