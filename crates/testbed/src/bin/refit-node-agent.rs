//! `refit-node-agent --config FILE`: the kubelet stand-in of a kubeadm-shaped sandbox node (see
//! `refit_testbed::kubeadm::agent`). Started by the sandbox inside the node's namespaces.

use std::process::ExitCode;

fn main() -> ExitCode {
    refit_testbed::kubeadm::agent::main_with_args(std::env::args().skip(1).collect())
}
