//! kubeadm-shaped sandbox nodes: what a real kubeadm host has around the kubelet.
//!
//! - [`repo`]: Debian packages of `kubeadm`, `kubelet` and `kubectl` made from the testbed's
//!   binaries, one signed apt repository per minor laid out like pkgs.k8s.io, a static file
//!   server for it, and the commands that install a node from it as the kubeadm install guide
//!   does.

pub mod repo;
