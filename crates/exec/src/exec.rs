//! The `exec` action: one local command per node, told which node through whole-argument
//! placeholders and `REFIT_*` environment variables, never through a shell string.

use std::time::Duration;

use crate::command::{OutputLine, run_command, run_command_holding, substitute};
use crate::exclusive::{NodeLock, RunScope};
use crate::{Error, NodeContext};

impl NodeContext {
    /// The roles as one value: `etcd,control-plane`.
    pub fn role_list(&self) -> String {
        self.roles.join(",")
    }

    /// Placeholder names (without braces) and their values for this node: `node`, `role`,
    /// `from`, `to`, `phase`, `address` — the set `refit_core::planfile::PLACEHOLDERS` allows.
    ///
    /// `from` and `address` come from what the node wrote about itself (kubeletVersion,
    /// InternalIP): preflight blocks a node whose values are not a version and an IP or DNS
    /// name, and here, for runs that ignored the safety checks, such a value is passed as
    /// empty rather than handed to a command (`-oProxyCommand=...` as an address).
    pub fn placeholder_values(&self) -> Vec<(&'static str, String)> {
        let from =
            if self.from.parse::<refit_core::Version>().is_ok() { self.from.clone() } else { String::new() };
        let address = refit_core::identity::NodeAddress::parse(&self.address)
            .map(|a| a.to_string())
            .unwrap_or_default();
        vec![
            ("node", self.node.clone()),
            ("role", self.role_list()),
            ("from", from),
            ("to", self.to.clone()),
            ("phase", self.phase.clone()),
            ("address", address),
        ]
    }

    /// The environment an exec action gets on top of refit's own: `REFIT_NODE`, `REFIT_ROLE`,
    /// `REFIT_FROM`, `REFIT_TO`, `REFIT_PHASE`, `REFIT_ADDRESS`, `REFIT_FIRST_CONTROL_PLANE`
    /// (`true`/`false`).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .placeholder_values()
            .into_iter()
            .map(|(name, value)| (format!("REFIT_{}", name.to_ascii_uppercase()), value))
            .collect();
        env.push(("REFIT_FIRST_CONTROL_PLANE".into(), self.first_control_plane.to_string()));
        env
    }
}

/// Runs the exec action's `command` for one node: placeholders substituted inside each
/// argument (each stays one argument), the node's facts in `REFIT_*` variables, the whole
/// process group killed after `timeout`. Output goes to `on_line` as it arrives.
pub async fn run_exec(
    command: &[String],
    ctx: &NodeContext,
    timeout: Duration,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<(), Error> {
    let values = ctx.placeholder_values();
    let vars: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let argv = substitute(command, &vars);
    run_command(&argv, &ctx.env(), timeout, on_line).await.map(|_| ())
}

/// [`run_exec`] as one node's action in a run: exclusive per node and run.
///
/// The action holds the node's lock ([`NodeLock`]) through its guardian, and its whole process
/// group dies with refit (see [`crate::command`]). What a resumed run does with an exec action
/// that was under way when refit was killed: the guardian has killed the first copy's process
/// group (background helpers included); the relaunch waits for the lock — so for that group to
/// be gone — up to `timeout`, then starts the action again from its beginning (refit cannot
/// know how far the first copy got: an exec action must be safe to run again, and `REFIT_RUN`
/// lets it recognize a rerun of the same run).
pub async fn run_exec_exclusive(
    command: &[String],
    ctx: &NodeContext,
    scope: &RunScope,
    timeout: Duration,
    on_line: &(dyn Fn(OutputLine) + Send + Sync),
) -> Result<(), Error> {
    let lock = NodeLock::acquire(scope, &ctx.node, timeout, on_line).await?;
    let values = ctx.placeholder_values();
    let vars: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let argv = substitute(command, &vars);
    let mut env = ctx.env();
    env.push(("REFIT_RUN".into(), scope.run.clone()));
    env.extend(scope.env.iter().cloned());
    let result = run_command_holding(&argv, &env, timeout, Some(lock.file()), on_line).await.map(|_| ());
    drop(lock);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_file_placeholder_has_a_value() {
        let ctx = NodeContext {
            node: "n".into(),
            roles: vec!["etcd".into(), "control-plane".into()],
            from: "1.36.4".into(),
            to: "1.37.1".into(),
            phase: "etcd".into(),
            address: "10.0.0.1".into(),
            first_control_plane: true,
        };
        let names: Vec<String> = ctx.placeholder_values().iter().map(|(k, _)| format!("{{{k}}}")).collect();
        assert_eq!(names, refit_core::planfile::PLACEHOLDERS);
        let env = ctx.env();
        assert!(env.contains(&("REFIT_ROLE".into(), "etcd,control-plane".into())));
        assert!(env.contains(&("REFIT_FIRST_CONTROL_PLANE".into(), "true".into())));
        assert_eq!(env.len(), 7);
    }

    #[test]
    fn hostile_node_values_never_reach_the_command() {
        let ctx = NodeContext {
            node: "n".into(),
            roles: vec!["worker".into()],
            from: "$(touch /tmp/x)".into(),
            to: "1.37.1".into(),
            phase: "workers".into(),
            address: "-oProxyCommand=touch /tmp/x".into(),
            first_control_plane: false,
        };
        let env = ctx.env();
        assert!(env.contains(&("REFIT_ADDRESS".into(), String::new())), "{env:?}");
        assert!(env.contains(&("REFIT_FROM".into(), String::new())), "{env:?}");
    }
}
