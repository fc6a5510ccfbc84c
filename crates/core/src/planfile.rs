//! The plan file: what the cluster cannot tell refit about itself — external etcd hosts, how
//! to reach each node, extra roles, and which labels mark ingress and storage nodes.
//!
//! ```yaml
//! etcd:                       # external etcd members (not Kubernetes nodes)
//!   - name: etcd-a
//!     address: 10.0.0.5
//! nodes:                      # per-node facts; every name must be a node of the cluster
//!   worker-003:
//!     address: 10.0.1.3
//!     roles: [worker]
//! ingressLabels: [node-role.kubernetes.io/ingress]
//! storageLabels: [storage=ceph]
//! accept: [single-replica=deployment/shop/web]   # blockers accepted one by one
//! action:                     # how each node is upgraded (the upgrade engine runs it)
//!   type: exec
//!   command: [refit, sandbox, upgrade-node, "{node}", --to, "{to}"]
//! gates:                      # health gates between batches (crate::health::gate)
//!   - {type: workloads}
//!   - {type: prometheus, url: "http://prometheus:9090", query: "up == 0", soak: 2m}
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::plan::Role;

/// Why a plan file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanFileError {
    /// Not YAML of the expected shape.
    #[error("the plan file is not valid: {0} (refit formats plan shows a complete one)")]
    Parse(String),
    /// Names a node the cluster does not have.
    #[error(
        "the plan file names node '{0}', which is not in the cluster (see `kubectl get nodes`); remove it or fix the name"
    )]
    UnknownNode(String),
    /// The action is incomplete or names something unknown.
    #[error("the plan file's action is not usable: {0}")]
    Action(String),
    /// A health gate that cannot be used.
    #[error("the plan file's {0}")]
    Gate(#[from] crate::health::GateError),
    /// An external etcd host shares a name with a node.
    #[error(
        "external etcd member '{0}' has the name of a cluster node; list it under nodes with roles [etcd] instead"
    )]
    EtcdIsNode(String),
    /// External etcd hosts with an action that cannot upgrade them (the ssh kubeadm recipe has
    /// nothing to run on a host that is not a kubeadm node: it would report it upgraded).
    #[error(
        "external etcd member '{0}' cannot be upgraded by the ssh action's kubeadm recipe (it only upgrades kubeadm nodes); use an exec action that upgrades it, or upgrade etcd yourself and remove it from the plan file's etcd list"
    )]
    EtcdWithoutAction(String),
    /// An address that is neither an IP nor a DNS name (it reaches node actions and ssh).
    #[error("the plan file's address for '{name}': {source}; write an IP address or a host name")]
    Address {
        /// The node or etcd host.
        name: String,
        /// What is wrong.
        #[source]
        source: crate::identity::AddressError,
    },
}

/// An external etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdHost {
    /// Its name (as the action will receive it).
    pub name: String,
    /// How to reach it.
    pub address: String,
}

/// Facts about one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFacts {
    /// Address to reach it (overrides the node's InternalIP).
    #[serde(default)]
    pub address: Option<String>,
    /// Roles beyond what the cluster shows (e.g. `etcd` for a stacked member without a pod).
    #[serde(default)]
    pub roles: Vec<RoleName>,
}

/// A role as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleName {
    /// etcd.
    Etcd,
    /// control-plane.
    ControlPlane,
    /// worker.
    Worker,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Role {
        match r {
            RoleName::Etcd => Role::Etcd,
            RoleName::ControlPlane => Role::ControlPlane,
            RoleName::Worker => Role::Worker,
        }
    }
}

/// The plan file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlanFile {
    /// External etcd members.
    #[serde(default)]
    pub etcd: Vec<EtcdHost>,
    /// Per-node facts.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeFacts>,
    /// Labels marking ingress nodes (`key` or `key=value`).
    #[serde(default)]
    pub ingress_labels: Vec<String>,
    /// Labels marking storage nodes.
    #[serde(default)]
    pub storage_labels: Vec<String>,
    /// How each node is upgraded.
    #[serde(default)]
    pub action: Option<Action>,
    /// Blockers accepted one by one (`CHECK` or `CHECK=SUBJECT`, as `--accept` takes them):
    /// kept with the cluster's other facts, so every run of this plan file takes on the same
    /// risks and no others.
    #[serde(default)]
    pub accept: Vec<crate::accept::AcceptRule>,
    /// Health gates that must pass between batches of workers (after each batch, before the
    /// next one starts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<crate::health::HealthGateSpec>,
}

/// The node upgrade action. Placeholders (`{node}`, `{role}`, `{from}`, `{to}`, `{phase}`,
/// `{address}`) are replaced in whole arguments, never through a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// A local command per node.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
        /// Optional: a command run per node before anything changes (same placeholders), to
        /// say whether the node can reach `{to}`: exit 0 yes, anything else no (its last
        /// stderr lines are the reason). `refit plan` and `refit upgrade` block on a no.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        probe: Vec<String>,
    },
    /// Commands on the node through the system ssh with a built-in recipe. Everything left
    /// out falls back to the user's own ssh configuration (`~/.ssh/config`, agent, ProxyJump).
    #[serde(rename_all = "camelCase")]
    Ssh {
        /// Recipe name (`kubeadm`).
        #[serde(default = "default_recipe")]
        recipe: String,
        /// Remote user (default: ssh's own configuration).
        #[serde(default)]
        user: Option<String>,
        /// Remote port (default: ssh's own configuration, usually 22).
        #[serde(default)]
        port: Option<u16>,
        /// Private key file to use, and only that one (a path: the key itself never belongs in
        /// a plan file).
        #[serde(default)]
        identity_file: Option<String>,
        /// An ssh_config file instead of `~/.ssh/config`.
        #[serde(default)]
        config_file: Option<String>,
        /// A known_hosts file instead of `~/.ssh/known_hosts`.
        #[serde(default)]
        known_hosts_file: Option<String>,
        /// How unknown host keys are treated (default strict: an unknown host is refused).
        #[serde(default)]
        host_key_check: HostKeyCheck,
        /// Whether commands that need root run through `sudo -n` (default true; a root login
        /// can say false).
        #[serde(default = "default_sudo")]
        sudo: bool,
        /// The node's package manager for the recipe (default apt).
        #[serde(default)]
        package_manager: PackageManager,
        /// kubeadm preflight checks the recipe's `kubeadm upgrade` commands pass to
        /// `--ignore-preflight-errors` (check names as kubeadm prints them, e.g. `ImagePull`).
        #[serde(default)]
        ignore_preflight_errors: Vec<String>,
        /// The nodes already hold kubeadm/kubelet/kubectl at the target (Kismatic's "package
        /// installation disabled"): the readiness probe then checks each node has them at the
        /// target version before anything changes.
        #[serde(default)]
        packages_preinstalled: bool,
    },
    /// Create a replacement node (custom labels, annotations and taints copied to it), then
    /// drain and remove the old one. Placeholders: the exec ones plus `{new}` (the
    /// replacement's name, derived from the old name and the target).
    Replace {
        /// Creates the replacement node at `{to}` and returns once it is registered.
        create: Vec<String>,
        /// Removes the old node's machine; the Node object is deleted by refit if left.
        #[serde(default)]
        remove: Vec<String>,
        /// How etcd and control-plane members are upgraded (in place: they keep their
        /// identity); an exec command with the exec placeholders.
        #[serde(default, rename = "controlPlane")]
        control_plane: Vec<String>,
        /// Which of the old node's custom labels and annotations the replacement takes over
        /// (default: all but the machine's and node agents' own; see
        /// `run::carried_over`). Keys the new node already has are never overwritten.
        #[serde(default, rename = "carryOver")]
        carry_over: crate::run::carried_over::CarryOver,
    },
}

fn default_recipe() -> String {
    "kubeadm".into()
}

fn default_sudo() -> bool {
    true
}

/// Whether `name` can be a kubeadm preflight check name (`ImagePull`,
/// `FileContent--proc-sys-net-ipv4-ip_forward`): nothing that could end the flag's list or
/// start another argument.
fn is_preflight_check_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// How ssh treats a host key it does not know. There is deliberately no "accept anything":
/// a changed key is always refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyCheck {
    /// The key must already be in known_hosts (`StrictHostKeyChecking=yes`).
    #[default]
    Strict,
    /// Unknown hosts are added on first contact; changed keys are still refused
    /// (`StrictHostKeyChecking=accept-new`).
    AcceptNew,
}

/// The package manager of a node, which decides the kubeadm recipe's package commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    /// Debian and Ubuntu (`apt-get`, `apt-mark`), the pkgs.k8s.io `deb` repository.
    #[default]
    Apt,
    /// RHEL, CentOS Stream, Fedora (`dnf`), the pkgs.k8s.io `rpm` repository.
    Dnf,
}

/// Placeholders an exec command may use.
pub const PLACEHOLDERS: &[&str] = &["{node}", "{role}", "{from}", "{to}", "{phase}", "{address}"];

/// Refuses an argument naming a placeholder that does not exist (a typo would otherwise reach
/// the node action literally). The grammar is [`crate::placeholder`]'s, the one substitution uses.
fn check_placeholders(command: &[String], known: &[&str], what: &str) -> Result<(), PlanFileError> {
    let names: Vec<&str> = known.iter().map(|k| k.trim_start_matches('{').trim_end_matches('}')).collect();
    match crate::placeholder::first_unknown(command, &names) {
        Some(name) => Err(PlanFileError::Action(format!(
            "unknown placeholder {{{name}}} in the {what} (known: {})",
            known.join(" ")
        ))),
        None => Ok(()),
    }
}

impl PlanFile {
    /// Parses a plan file (YAML or JSON).
    pub fn from_yaml(text: &str) -> Result<PlanFile, PlanFileError> {
        const COMMAND: &str = "a list of program and arguments, e.g. [./up.sh, \"{node}\"]";
        const HINTS: &crate::yaml::Hints = &[
            (
                "",
                "a mapping of etcd, nodes, ingressLabels, storageLabels, action, accept, gates (refit formats plan)",
            ),
            ("accept", "a list of CHECK or CHECK=SUBJECT, e.g. [single-replica=deployment/shop/web]"),
            ("etcd", "a list of {name, address}"),
            ("nodes", "a mapping of node name to {address, roles}"),
            ("nodes.roles", "a list of etcd, control-plane, worker"),
            ("ingressLabels", "a list of KEY or KEY=VALUE"),
            ("storageLabels", "a list of KEY or KEY=VALUE"),
            ("action", "{type: exec, command: [...]}, {type: ssh, ...} or {type: replace, create: [...]}"),
            ("action.command", COMMAND),
            ("action.create", COMMAND),
            ("action.remove", COMMAND),
            ("action.controlPlane", COMMAND),
            ("action.probe", COMMAND),
            ("gates", "a list of health gates, e.g. [{type: http, url: \"https://shop/healthz\", soak: 1m}]"),
            ("gates.command", COMMAND),
        ];
        let file: PlanFile = crate::yaml::from_str_hinted(text, HINTS).map_err(PlanFileError::Parse)?;
        // Gates need nothing from the cluster: a bad one is refused with the file's parse,
        // before anything connects.
        file.health_gates()?;
        Ok(file)
    }

    /// The validated health gates between batches.
    pub fn health_gates(&self) -> Result<Vec<crate::health::HealthGate>, PlanFileError> {
        Ok(crate::health::gate::resolve_all(&self.gates)?)
    }

    /// Checks the file against the cluster's node names.
    pub fn validate(&self, nodes: &BTreeSet<String>) -> Result<(), PlanFileError> {
        if let Some(n) = self.nodes.keys().find(|n| !nodes.contains(*n)) {
            return Err(PlanFileError::UnknownNode(n.clone()));
        }
        if let Some(e) = self.etcd.iter().find(|e| nodes.contains(&e.name)) {
            return Err(PlanFileError::EtcdIsNode(e.name.clone()));
        }
        let addresses = self.etcd.iter().map(|e| (&e.name, Some(&e.address)));
        for (name, address) in addresses.chain(self.nodes.iter().map(|(n, f)| (n, f.address.as_ref()))) {
            if let Some(a) = address
                && let Err(source) = crate::identity::NodeAddress::parse(a)
            {
                return Err(PlanFileError::Address { name: name.clone(), source });
            }
        }
        match &self.action {
            Some(Action::Exec { command, .. }) if command.first().is_none_or(|c| c.trim().is_empty()) => {
                Err(PlanFileError::Action(
                    "exec needs a command, e.g. command: [./upgrade-node.sh, \"{node}\", \"{to}\"]".into(),
                ))
            }
            Some(Action::Exec { probe, .. }) if probe.first().is_some_and(|c| c.trim().is_empty()) => {
                Err(PlanFileError::Action(
                    "exec probe needs a program, e.g. probe: [./can-reach.sh, \"{node}\", \"{to}\"]".into(),
                ))
            }
            Some(Action::Exec { command, probe }) => {
                check_placeholders(command, PLACEHOLDERS, "exec command")?;
                check_placeholders(probe, PLACEHOLDERS, "exec probe")
            }
            Some(Action::Replace { create, .. }) if create.first().is_none_or(|c| c.trim().is_empty()) => {
                Err(PlanFileError::Action(
                    "replace needs a create command, e.g. create: [./new-node.sh, \"{new}\", \"{to}\"]"
                        .into(),
                ))
            }
            Some(Action::Replace { create, remove, control_plane, carry_over }) => {
                carry_over.check().map_err(PlanFileError::Action)?;
                let known: Vec<&str> = PLACEHOLDERS.iter().copied().chain(["{new}"]).collect();
                check_placeholders(create, &known, "replace create command")?;
                check_placeholders(remove, &known, "replace remove command")?;
                check_placeholders(control_plane, PLACEHOLDERS, "replace controlPlane command")
            }
            Some(Action::Ssh { recipe, .. }) if recipe != "kubeadm" => {
                Err(PlanFileError::Action(format!("unknown ssh recipe '{recipe}' (known: kubeadm)")))
            }
            Some(Action::Ssh { ignore_preflight_errors, .. }) => {
                match ignore_preflight_errors.iter().find(|c| !is_preflight_check_name(c)) {
                    Some(bad) => Err(PlanFileError::Action(format!(
                        "ignorePreflightErrors: '{bad}' is not a kubeadm check name (letters, digits, '-', '_', '.'; e.g. ImagePull)"
                    ))),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Refuses external etcd hosts when `action` (the one the run will use: `--action`, else
    /// the file's) is the ssh kubeadm recipe, which has nothing to run there.
    pub fn check_external_etcd(&self, action: Option<&Action>) -> Result<(), PlanFileError> {
        match (self.etcd.first(), action) {
            (Some(e), Some(Action::Ssh { .. })) => Err(PlanFileError::EtcdWithoutAction(e.name.clone())),
            _ => Ok(()),
        }
    }

    /// How to reach each node and external etcd host: the plan file's address, else the
    /// node's own (its InternalIP), from `nodes` as (name, address).
    pub fn addresses<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> =
            nodes.into_iter().filter_map(|(n, a)| a.map(|a| (n.to_string(), a.to_string()))).collect();
        for e in &self.etcd {
            out.insert(e.name.clone(), e.address.clone());
        }
        for (n, f) in &self.nodes {
            if let Some(a) = &f.address {
                out.insert(n.clone(), a.clone());
            }
        }
        out
    }

    /// Roles the plan adds, by node or host name.
    pub fn extra_roles(&self) -> BTreeMap<String, BTreeSet<Role>> {
        let mut out: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
        for e in &self.etcd {
            out.entry(e.name.clone()).or_default().insert(Role::Etcd);
        }
        for (n, f) in &self.nodes {
            out.entry(n.clone()).or_default().extend(f.roles.iter().map(|r| Role::from(*r)));
        }
        out.retain(|_, r| !r.is_empty());
        out
    }
}

/// What a node action named in one word looks like (the refusal's "expected" phrase).
pub const NAMED_ACTIONS: &str = "exec:PROGRAM ARG..., ssh, sandbox[:DIR] or replace-sandbox[:DIR]";

/// A node action named in one word, as `refit upgrade` and a fleet member's `action` take it
/// (the plan file's `action:` says the rest): the ONE reading of that word, for the upgrade,
/// its target probe, its backup and a member's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedAction<'a> {
    /// `sandbox[:DIR]`: the testbed sandbox's own `upgrade-node` (DIR, else the default one).
    Sandbox(Option<&'a str>),
    /// `replace-sandbox[:DIR]`: sandbox workers replaced (added, then removed).
    ReplaceSandbox(Option<&'a str>),
    /// `ssh` (anything after a `:` is ignored): the plan file's ssh action, else its defaults.
    Ssh,
    /// `exec:PROGRAM ARG...`: what follows the `:`, split on white space (never a shell).
    Exec(&'a str),
}

impl<'a> NamedAction<'a> {
    /// Reads the word; anything else is refused with what it should look like.
    pub fn parse(word: &'a str) -> Result<NamedAction<'a>, crate::setting::BadValue> {
        let (kind, arg) = match word.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (word, None),
        };
        match kind {
            "sandbox" => Ok(NamedAction::Sandbox(arg)),
            "replace-sandbox" => Ok(NamedAction::ReplaceSandbox(arg)),
            "ssh" => Ok(NamedAction::Ssh),
            _ => word.strip_prefix("exec:").map(NamedAction::Exec).ok_or_else(|| {
                crate::setting::BadValue::new(crate::setting::Setting::Action, word, NAMED_ACTIONS)
            }),
        }
    }

    /// The directory a sandbox action names (`Some(None)`: the default sandbox); None for the
    /// actions that are not the sandbox's.
    pub fn sandbox(self) -> Option<Option<&'a str>> {
        match self {
            NamedAction::Sandbox(dir) | NamedAction::ReplaceSandbox(dir) => Some(dir),
            NamedAction::Ssh | NamedAction::Exec(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_action_is_read_one_way() {
        assert_eq!(NamedAction::parse("sandbox"), Ok(NamedAction::Sandbox(None)));
        assert_eq!(NamedAction::parse("sandbox:/tmp/sb"), Ok(NamedAction::Sandbox(Some("/tmp/sb"))));
        assert_eq!(NamedAction::parse("replace-sandbox:d"), Ok(NamedAction::ReplaceSandbox(Some("d"))));
        assert_eq!(NamedAction::parse("ssh"), Ok(NamedAction::Ssh));
        assert_eq!(NamedAction::parse("ssh:x"), Ok(NamedAction::Ssh));
        assert_eq!(
            NamedAction::parse("exec:/bin/up {node} {to}"),
            Ok(NamedAction::Exec("/bin/up {node} {to}"))
        );
        assert_eq!(NamedAction::parse("exec:"), Ok(NamedAction::Exec("")));
        assert_eq!(NamedAction::parse("sandbox:d").ok().and_then(NamedAction::sandbox), Some(Some("d")));
        assert_eq!(NamedAction::parse("ssh").ok().and_then(NamedAction::sandbox), None);
        for bad in ["", "exec", "kubeadm", "Sandbox", "exec /bin/up"] {
            let e = NamedAction::parse(bad).unwrap_err();
            assert_eq!((e.setting, e.expected), (crate::setting::Setting::Action, NAMED_ACTIONS), "{bad}");
        }
    }

    #[test]
    fn parses_validates_and_adds_roles() {
        let f = PlanFile::from_yaml(
            "etcd:\n  - {name: etcd-a, address: 10.0.0.5}\nnodes:\n  w-1: {address: 10.0.1.1, roles: [worker]}\n  cp-1: {roles: [etcd]}\ningressLabels: [ingress]\n",
        )
        .unwrap();
        let nodes: BTreeSet<String> = ["w-1", "cp-1"].iter().map(|s| s.to_string()).collect();
        f.validate(&nodes).unwrap();
        let roles = f.extra_roles();
        assert_eq!(roles["etcd-a"], BTreeSet::from([Role::Etcd]));
        assert_eq!(roles["cp-1"], BTreeSet::from([Role::Etcd]));
        assert_eq!(f.ingress_labels, ["ingress"]);
        assert_eq!(
            f.validate(&BTreeSet::from(["cp-1".to_string()])),
            Err(PlanFileError::UnknownNode("w-1".into()))
        );
        let bad = PlanFile::from_yaml("nodes: {w-1: {address: \"-oProxyCommand=touch /tmp/x\"}}").unwrap();
        let e = bad.validate(&nodes).unwrap_err().to_string();
        assert!(e.contains("'w-1'") && e.contains("neither an IP address nor a DNS name"), "{e}");
        let clash = PlanFile::from_yaml("etcd: [{name: w-1, address: x}]").unwrap();
        assert!(matches!(clash.validate(&nodes), Err(PlanFileError::EtcdIsNode(_))));
    }

    #[test]
    fn actions() {
        let nodes = BTreeSet::new();
        let exec = PlanFile::from_yaml(
            "action: {type: exec, command: [refit, sandbox, upgrade-node, \"{node}\", --to, \"{to}\"]}",
        )
        .unwrap();
        exec.validate(&nodes).unwrap();
        assert!(
            matches!(exec.action, Some(Action::Exec { ref command, ref probe }) if command.len() == 6 && probe.is_empty())
        );
        let probing = PlanFile::from_yaml(
            "action: {type: exec, command: [./up.sh], probe: [./can.sh, \"{node}\", \"{to}\"]}",
        )
        .unwrap();
        probing.validate(&nodes).unwrap();
        assert!(matches!(probing.action, Some(Action::Exec { ref probe, .. }) if probe.len() == 3));
        let ssh = PlanFile::from_yaml("action: {type: ssh}").unwrap();
        assert_eq!(
            ssh.action,
            Some(Action::Ssh {
                recipe: "kubeadm".into(),
                user: None,
                port: None,
                identity_file: None,
                config_file: None,
                known_hosts_file: None,
                host_key_check: HostKeyCheck::Strict,
                sudo: true,
                package_manager: PackageManager::Apt,
                ignore_preflight_errors: Vec::new(),
                packages_preinstalled: false,
            })
        );
        let full = PlanFile::from_yaml(
            "action: {type: ssh, user: ops, port: 2222, identityFile: /k/id, configFile: /k/cfg, knownHostsFile: /k/kh, hostKeyCheck: accept-new, sudo: false, packageManager: dnf, packagesPreinstalled: true}",
        )
        .unwrap();
        full.validate(&nodes).unwrap();
        assert!(matches!(
            full.action,
            Some(Action::Ssh {
                port: Some(2222),
                host_key_check: HostKeyCheck::AcceptNew,
                sudo: false,
                package_manager: PackageManager::Dnf,
                packages_preinstalled: true,
                ..
            })
        ));
        assert!(PlanFile::from_yaml("action: {type: ssh, hostKeyCheck: no}").is_err());
        assert!(PlanFile::from_yaml("action: {type: ssh, packageManager: zypper}").is_err());
        let ignoring =
            PlanFile::from_yaml("action: {type: ssh, ignorePreflightErrors: [ImagePull, FileContent--proc-sys-net-ipv4-ip_forward]}")
                .unwrap();
        ignoring.validate(&nodes).unwrap();
        for bad in ["''", "'--force'", "'a,b'", "'a b'", "'$(x)'"] {
            let f = PlanFile::from_yaml(&format!("action: {{type: ssh, ignorePreflightErrors: [{bad}]}}"))
                .unwrap();
            assert!(
                matches!(f.validate(&nodes), Err(PlanFileError::Action(ref m)) if m.contains("not a kubeadm check name")),
                "{bad}"
            );
        }
        PlanFile::from_yaml(
            "action: {type: replace, create: [./new.sh, \"{new}\", \"{to}\"], remove: [./rm.sh, \"{node}\"]}",
        )
        .unwrap()
        .validate(&nodes)
        .unwrap();
        assert!(PlanFile::from_yaml("action: {type: replace}").is_err(), "create is required");
        for (bad, expected) in [
            ("action: {type: replace, create: []}", "needs a create command"),
            ("action: {type: replace, create: [x, \"{old}\"]}", "{old}"),
            ("action: {type: exec, command: []}", "needs a command"),
            ("action: {type: exec, command: [x, \"{nodes}\"]}", "{nodes}"),
            ("action: {type: exec, command: [x], probe: [check, \"{too}\"]}", "exec probe"),
            ("action: {type: exec, command: [x], probe: [\" \"]}", "probe needs a program"),
            ("action: {type: ssh, recipe: rke}", "rke"),
        ] {
            let err = PlanFile::from_yaml(bad).unwrap().validate(&nodes).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
        assert!(PlanFile::from_yaml("action: {type: teleport}").is_err());
    }

    #[test]
    fn accepted_blockers_parse_and_unknown_checks_are_refused_with_the_field() {
        let f = PlanFile::from_yaml("accept: [worker-count, local-data=pod/shop/cache]").unwrap();
        let rules: Vec<String> = f.accept.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, ["worker-count", "local-data=pod/shop/cache"]);
        for bad in ["accept: [capacity]", "accept: [local-data=]", "accept: local-data"] {
            let e = PlanFile::from_yaml(bad).unwrap_err().to_string();
            assert!(e.contains("accept") && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn external_etcd_hosts_need_an_action_that_upgrades_them() {
        let f = PlanFile::from_yaml("etcd: [{name: etcd-a, address: 10.0.0.5}]").unwrap();
        let ssh = PlanFile::from_yaml("action: {type: ssh}").unwrap().action;
        let exec = PlanFile::from_yaml("action: {type: exec, command: [up.sh]}").unwrap().action;
        assert_eq!(
            f.check_external_etcd(ssh.as_ref()),
            Err(PlanFileError::EtcdWithoutAction("etcd-a".into()))
        );
        assert!(f.check_external_etcd(ssh.as_ref()).unwrap_err().to_string().contains("etcd-a"));
        assert_eq!(f.check_external_etcd(exec.as_ref()), Ok(()));
        assert_eq!(PlanFile::default().check_external_etcd(ssh.as_ref()), Ok(()), "no external etcd");
    }

    #[test]
    fn malformed_files_are_refused() {
        for bad in [
            "nodes: [",
            "etcd: [{name: a}]",
            "nodes: {w-1: {roles: [chef]}}",
            "surprise: true",
            "nodes: {w-1: {adress: x}}",
        ] {
            assert!(PlanFile::from_yaml(bad).is_err(), "{bad}");
        }
        assert_eq!(PlanFile::from_yaml("{}").unwrap(), PlanFile::default());
    }

    #[test]
    fn gates_between_batches() {
        let f = PlanFile::from_yaml(
            "gates:\n  - {type: workloads, soak: 30s}\n  - {name: errors, type: prometheus, url: 'http://127.0.0.1:9090', query: 'up == 0', timeout: 5m}\n",
        )
        .unwrap();
        let gates = f.health_gates().unwrap();
        assert_eq!(gates.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["workloads-1", "errors"]);
        for (bad, says) in [
            ("gates: [{type: grafana}]", "health gate 'grafana-1': unknown type 'grafana'"),
            ("gates: [{type: prometheus, url: 'prom:9090', query: up}]", "not a URL"),
            ("gates: [{type: http, url: 'http://x', soak: -1m}]", "negative"),
            ("gates: [{type: http, url: 'http://x', soke: 1m}]", "soke"),
            ("gates: {type: http}", "a list of health gates"),
        ] {
            let e = PlanFile::from_yaml(bad).unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
