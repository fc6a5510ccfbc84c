//! The node's `systemctl` stand-in (installed as `/usr/local/bin/systemctl`, first in root's
//! PATH): sandbox nodes have no systemd, and both kubeadm and the upgrade runbook call
//! `systemctl daemon-reload` / `systemctl restart kubelet`. Restarting the kubelet signals the
//! node agent (SIGHUP), which then reads the installed kubelet's version again; kubeadm's other
//! checks (`is-active`, `is-enabled`, firewalld, systemd-resolved) get the answers a healthy
//! kubeadm host gives (reference/kubeadm.md §9.1).

/// The script's text.
pub const SCRIPT: &str = r#"#!/bin/sh
# refit sandbox node: a stand-in for systemd's systemctl (there is no systemd in a sandbox node).
# Only the kubelet unit exists; restarting it signals the node agent.
verb=""
unit=""
for a in "$@"; do
  case "$a" in
    -*) ;;
    *) if [ -z "$verb" ]; then verb="$a"; elif [ -z "$unit" ]; then unit="${a%.service}"; fi ;;
  esac
done
agent() { kill -"$1" "$(cat /run/refit-node-agent.pid 2>/dev/null)" 2>/dev/null; }
case "$verb" in
  daemon-reload|enable|disable|mask|unmask|reset-failed) exit 0 ;;
  start|restart|try-restart|reload-or-restart|reload)
    [ "$unit" = kubelet ] || exit 0
    agent HUP || { echo "kubelet agent is not running" >&2; exit 1; }
    exit 0 ;;
  stop) exit 0 ;;
  is-active)
    if [ "$unit" = kubelet ] && agent 0; then echo active; exit 0; fi
    echo inactive; exit 3 ;;
  is-enabled)
    if [ "$unit" = kubelet ]; then echo enabled; exit 0; fi
    echo disabled; exit 1 ;;
  status)
    if [ "$unit" = kubelet ]; then echo "● kubelet.service - kubelet (refit node agent)"; echo "     Loaded: loaded"; agent 0 && { echo "     Active: active (running)"; exit 0; }; fi
    exit 3 ;;
  *) echo "systemctl (refit sandbox): '$verb' is not supported" >&2; exit 1 ;;
esac
"#;
