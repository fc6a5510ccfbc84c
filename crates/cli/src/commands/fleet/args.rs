//! `refit fleet ...` arguments (kept next to the commands so the top-level args file only
//! names the subcommand).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `refit fleet`
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The store (SQLite) holding fleet members, strategies, runs and profiles; the same file
    /// as `refit upgrade`'s journal. Default: $REFIT_STATE_DIR/refit.db or the user's state directory.
    #[arg(long, env = "REFIT_STORE", global = true)]
    pub store: Option<PathBuf>,
    /// A hub cluster's kubeconfig: the fleet lives there as custom resources (refit controller
    /// manifests) instead of in the store. So far: gate approve.
    #[arg(long, value_name = "KUBECONFIG", global = true, conflicts_with = "store")]
    pub hub: Option<PathBuf>,
    /// The hub namespace the fleet lives in.
    #[arg(long, global = true, default_value = "refit-system", requires = "hub")]
    pub hub_namespace: String,
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// Fleet commands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Clusters of the fleet: how to reach them, labels, update group, maintenance window.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Reusable templates of stages → groups → members.
    #[command(subcommand)]
    Strategy(StrategyCommand),
    /// Update runs: one upgrade of the fleet, stage by stage.
    #[command(subcommand)]
    Run(RunCommand),
    /// Approval gates of update runs.
    #[command(subcommand)]
    Gate(GateCommand),
    /// Auto-upgrade profiles: keep the fleet on a channel by generating update runs.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Drive every running update run until killed (resumes from the store, never twice), and
    /// fire enabled auto-upgrade profiles.
    #[command(after_help = "\
Examples:
  refit fleet daemon &                  drive runs started with `refit fleet run start NAME`
  refit fleet daemon --store /var/lib/refit/refit.db
Killing it at any moment is safe: a new daemon (or `run start --wait`) continues from the store,
relaunching member upgrades that were under way (each resumes its own journal).
At its start and every 30 s, each enabled profile whose channel (by the catalog `refit catalog
update` keeps) points past a member's version gets its run generated and started, once per
target: a generated run that is deleted is not made again.")]
    Daemon(DaemonArgs),
    /// Webhook notifications (gate pending, stage completed, run failed or completed), delivered by `refit serve`.
    #[command(subcommand)]
    Notify(super::notify::NotifyCommand),
}

/// Member options shared by `add` and `update`.
#[derive(Debug, Clone, Args)]
pub struct MemberFields {
    /// Kubeconfig file of the member (a path; its credentials are never copied or printed).
    /// Required by `add`, with --context: the member is bound to the cluster they reach.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (required by `add`).
    #[arg(long)]
    pub context: Option<String>,
    /// Label KEY=VALUE (repeatable) that strategies select on.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Update group: the strategy group of this name takes the member.
    #[arg(long)]
    pub update_group: Option<String>,
    /// Maintenance window file (YAML/JSON: recurrence, start, durationMinutes, timeZone,
    /// blackoutDates; `refit formats window` prints a complete example).
    #[arg(long, value_name = "FILE")]
    pub window: Option<PathBuf>,
    /// File listing the node images offered to this member (`- family/version` lines, or
    /// `{family, version}` objects; `refit formats node-images`).
    #[arg(long, value_name = "FILE")]
    pub node_image_source: Option<PathBuf>,
    /// Time it may sit Pending before the run defers it (e.g. 6h; 1s to one year); overrides
    /// the run's.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::duration)]
    pub pending_budget: Option<std::time::Duration>,
    /// Node action for its `refit upgrade` (`sandbox:DIR`, `exec:PROGRAM ARG...`, `ssh`).
    #[arg(long)]
    pub action: Option<String>,
    /// Plan file for its `refit upgrade` (-f).
    #[arg(long, value_name = "FILE")]
    pub plan_file: Option<PathBuf>,
    /// An extra `refit upgrade` argument (repeatable; e.g. --upgrade-arg=--max-unavailable=2).
    #[arg(long = "upgrade-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub upgrade_args: Vec<String>,
}

/// `refit fleet member ...`
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a member.
    #[command(after_help = "\
Examples:
  refit fleet member add eu-1 --kubeconfig ~/.kube/eu-1 --context eu-1 --update-group canary --label region=eu
  refit fleet member add us-1 --kubeconfig us.conf --context admin --window weekend.yaml --pending-budget 12h
  refit fleet member add sb-1 --kubeconfig /tmp/sb1/kubeconfig --context refit-testbed --action sandbox:/tmp/sb1

The cluster's identity (its kube-system namespace UID) is recorded: every launch checks that
the kubeconfig still reaches that cluster and refuses another.")]
    Add {
        /// Member name (lowercase letters, digits, dashes).
        name: String,
        #[command(flatten)]
        fields: MemberFields,
    },
    /// Change a member (only the options given change).
    #[command(after_help = "\
Examples:
  refit fleet member update eu-1 --update-group wave-2
  refit fleet member update eu-1 --clear-window --action sandbox:/tmp/sb1")]
    Update {
        /// Member name.
        name: String,
        #[command(flatten)]
        fields: MemberFields,
        /// Remove the maintenance window.
        #[arg(long)]
        clear_window: bool,
        /// Remove every label before adding --label ones.
        #[arg(long)]
        clear_labels: bool,
    },
    /// List members.
    List,
    /// Show one member.
    Show {
        /// Member name.
        name: String,
    },
    /// Remove a member (runs that already froze it keep it).
    Remove {
        /// Member name.
        name: String,
    },
}

/// `refit fleet strategy ...`
#[derive(Debug, Subcommand)]
pub enum StrategyCommand {
    /// Store a strategy from a YAML or JSON file.
    #[command(after_help = "\
Example file (the Azure Fleet stages file is accepted as it is; `refit formats strategy`
prints a complete, commented one):
  {\"stages\": [{\"name\": \"stage1\", \"groups\": [{\"name\": \"group-1a\"}], \"afterStageWaitInSeconds\": 3600}]}

Examples:
  refit fleet strategy create safe -f stages.json
  refit fleet strategy create -f strategy.yaml         the name from the file's name:
  refit fleet strategy create safe -f v2.yaml --replace")]
    Create {
        /// Strategy name (default: the file's `name`).
        name: Option<String>,
        /// The file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replace a strategy of that name (runs keep their copy).
        #[arg(long)]
        replace: bool,
    },
    /// Show a strategy.
    Show {
        /// Strategy name.
        name: String,
    },
    /// List strategies.
    List,
    /// Delete a strategy (runs keep their copy).
    Delete {
        /// Strategy name.
        name: String,
    },
}

/// `refit fleet run ...`
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Create an update run (not started): the strategy is copied into it.
    #[command(after_help = "\
Examples:
  refit fleet run create to-137 --upgrade-type Full --kubernetes-version 1.37.1 --strategy safe
  refit fleet run create cp-137 --upgrade-type ControlPlaneOnly --kubernetes-version 1.37.1 --stages stages.json
  refit fleet run create images --upgrade-type NodeImageOnly --node-image-selection Consistent
  refit fleet run create quick --upgrade-type Full --kubernetes-version 1.37.1     one member at a time

Without --strategy or --stages, every member is upgraded one at a time (Azure Fleet's \"one by
one\"; Azure documents no order). The order: members whose maintenance window is open now,
then those whose window opens within 4 hours, then members without a window, then closed
windows (Azure's documented window priority); by member name within each.
Files: refit formats strategy.")]
    Create(RunCreateArgs),
    /// Start (or start again) a run; --wait drives it in the foreground until it ends.
    #[command(after_help = "\
Examples:
  refit fleet run start to-137 --wait       drive it here (Ctrl-C or kill: rerun to continue)
  refit fleet run start to-137              let `refit fleet daemon` drive it
A Failed or Stopped run starts again, re-applying failed and skipped work. A run already running
is driven (resumed) by --wait. Exit codes with --wait: 0 completed, 1 failed or stopped.")]
    Start {
        /// Run name.
        name: String,
        /// Drive the run in the foreground until it is finished, failed or stopped.
        #[arg(long)]
        wait: bool,
    },
    /// Stop a run: nothing new starts; member upgrades under way finish.
    Stop {
        /// Run name.
        name: String,
    },
    /// Skip members, groups, stages or after-stage waits.
    #[command(after_help = "\
Examples:
  refit fleet run skip to-137 --targets Member:eu-2
  refit fleet run skip to-137 --targets Group:wave-b Stage:canary AfterStageWait:canary")]
    Skip {
        /// Run name.
        name: String,
        /// Member:NAME, Group:NAME, Stage:NAME or AfterStageWait:NAME.
        #[arg(long, num_args = 1.., required = true)]
        targets: Vec<String>,
        /// Who skips (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Show a run: stages → groups → members with state, reason, timings and progress.
    Show {
        /// Run name.
        name: String,
        /// Also print the run's event history.
        #[arg(long)]
        events: bool,
    },
    /// List runs.
    List,
    /// Delete a run and its history (not while a member upgrade is under way).
    Delete {
        /// Run name.
        name: String,
    },
    /// Re-run only the failed members, with the run's frozen targets.
    #[command(after_help = "\
Examples:
  refit fleet run retry to-137 --failed --wait")]
    Retry {
        /// Run name.
        name: String,
        /// Only failed members (required: the one retry there is).
        #[arg(long, required = true)]
        failed: bool,
        /// Drive it in the foreground until it ends.
        #[arg(long)]
        wait: bool,
    },
}

/// `refit fleet run create`
#[derive(Debug, Args)]
pub struct RunCreateArgs {
    /// Run name.
    pub name: String,
    /// Full, ControlPlaneOnly or NodeImageOnly.
    #[arg(long)]
    pub upgrade_type: String,
    /// Kubernetes release (Full, ControlPlaneOnly).
    #[arg(long)]
    pub kubernetes_version: Option<String>,
    /// Latest or Consistent.
    #[arg(long, default_value = "Latest")]
    pub node_image_selection: String,
    /// A stored strategy (default: every member one at a time, in the order below).
    #[arg(long, conflicts_with = "stages")]
    pub strategy: Option<String>,
    /// A stages file (YAML/JSON), copied into the run.
    #[arg(long, value_name = "FILE")]
    pub stages: Option<PathBuf>,
    /// How long a member may sit Pending before it is deferred (e.g. 6h; 1s to one year);
    /// members may override.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::duration)]
    pub pending_budget: Option<std::time::Duration>,
    /// What a stage health gate (strategy `healthGates:`) that fails does: pause (the run
    /// stops; `run start` evaluates the gate again) or fail the run.
    #[arg(long, value_name = "pause|fail", default_value = "pause", value_parser = on_gate_failure)]
    pub on_gate_failure: refit_core::health::OnGateFailure,
    /// Version rule of every member upgrade: default (the next minor from any patch) or
    /// strict (the next minor only from the newest patch of the current one).
    #[arg(long, value_name = "default|strict", default_value = "default", value_parser = policy)]
    pub policy: refit_core::path::Policy,
}

/// clap value parser for `--on-gate-failure`.
fn on_gate_failure(s: &str) -> Result<refit_core::health::OnGateFailure, String> {
    s.parse()
}

/// clap value parser for `--policy`.
fn policy(s: &str) -> Result<refit_core::path::Policy, String> {
    s.parse()
}

/// `refit fleet gate ...`
#[derive(Debug, Subcommand)]
pub enum GateCommand {
    /// List gates (default: every run's Pending gates).
    #[command(after_help = "\
Examples:
  refit fleet gate list
  refit fleet gate list --run to-137 --all")]
    List {
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Gates in every state, not only Pending ones.
        #[arg(long)]
        all: bool,
    },
    /// Approve a gate (Pending, or not reached yet as a pre-approval).
    #[command(after_help = "\
Examples:
  refit fleet gate approve to-137 canary/after/1
  refit fleet gate approve to-137 prod/wave-a/before/1 --expires-in 4h --by alice")]
    Approve {
        /// Run name.
        run: String,
        /// Gate: STAGE/before|after/N or STAGE/GROUP/before|after/N (see gate list).
        gate: String,
        /// A pre-approval still unused after this long no longer counts (e.g. 4h; 1s to one
        /// year).
        #[arg(long, value_name = "DURATION", value_parser = crate::args::duration)]
        expires_in: Option<std::time::Duration>,
        /// Who approves (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

/// `refit fleet profile ...`
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Create an auto-upgrade profile.
    #[command(after_help = "\
Examples:
  refit fleet profile create weekly --channel Stable --strategy safe
  refit fleet profile create pinned --channel TargetKubernetesVersion --target-kubernetes-version 1.36
  refit fleet profile create -f profile.yaml")]
    Create(ProfileCreateArgs),
    /// Show a profile (with its last trigger).
    Show {
        /// Profile name.
        name: String,
    },
    /// List profiles.
    List,
    /// Delete a profile (runs it generated stay).
    Delete {
        /// Profile name.
        name: String,
    },
    /// Create the run the profile asks for now (not started); asking again returns the same run.
    #[command(after_help = "\
Example:
  refit fleet profile generate-run weekly && refit fleet run start weekly-stable-1-36-4 --wait")]
    GenerateRun {
        /// Profile name.
        name: String,
        /// A release catalog instead of the built-in one.
        #[arg(long, env = "REFIT_CATALOG")]
        catalog: Option<PathBuf>,
    },
}

/// `refit fleet profile create`
#[derive(Debug, Args)]
pub struct ProfileCreateArgs {
    /// Profile name (or from -f).
    pub name: Option<String>,
    /// Stable, Rapid, NodeImage or TargetKubernetesVersion.
    #[arg(long)]
    pub channel: Option<String>,
    /// The minor to follow (TargetKubernetesVersion), e.g. 1.36.
    #[arg(long)]
    pub target_kubernetes_version: Option<String>,
    /// Strategy its runs use (default: one member at a time).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Latest or Consistent (NodeImage always uses Consistent).
    #[arg(long)]
    pub node_image_selection: Option<String>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
    /// The profile as a YAML/JSON file instead of options (`refit formats profile`).
    #[arg(short = 'f', long = "file", conflicts_with_all = ["channel", "target_kubernetes_version"])]
    pub file: Option<PathBuf>,
}

/// `refit fleet daemon`
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Stop when no run is left to drive (for scripts and tests) instead of waiting for new ones.
    #[arg(long)]
    pub exit_when_idle: bool,
}
