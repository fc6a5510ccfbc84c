//! Target probes: what each node's action can reach, observed before anything changes.
//!
//! `refit plan` and `refit upgrade` ask every planned node, through its own action, which of
//! the versions it needs it can get; `refit_core::reach` decides from the observations (a
//! minor-only `--to` resolved to what the nodes offer, blockers for the rest), so an unreachable
//! target stops the run before the first cordon.
//!
//! - **ssh (kubeadm recipe, apt)**: one read-only script per node ([`APT_PROBE_SCRIPT`]). For
//!   each minor it needs, the node's own repository file is rewritten — into a temporary
//!   directory — to that minor's pkgs.k8s.io channel (exactly the switch the recipe makes), and
//!   apt reads it with `Dir::Etc::sourcelist`, `Dir::State::Lists` and `Dir::Cache` pointing
//!   into the temporary directory: `apt-cache madison` lists what it offers and `apt-cache
//!   policy` what the node's pins make of it. On the first control-plane node the target's
//!   kubeadm is fetched (`apt-get download`, `dpkg-deb -x`, never installed) and its
//!   `kubeadm upgrade plan vX.Y.Z -o json` shows the component targets kubeadm will apply.
//!   Nothing on the node changes: no package, source, list, cache or /etc/kubernetes file (the
//!   kubeadm sandbox test checks dpkg, the sources and checksums). kubeadm's plan itself, as
//!   always, creates its short-lived `upgrade-health-check` Job in kube-system (its CreateJob
//!   health check; the Job deletes itself after 65 s).
//! - **dnf**: not probed yet (reported as not run).
//! - **exec**: the plan file's optional `probe` command, once per node and version, with the
//!   action's placeholders: exit 0 = reachable.
//! - **a fixed set** ([`TargetProbe::Releases`]): the sandbox's buildable releases, the same
//!   for every node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use refit_core::reach::{MinorOffer, Observation, PackagePolicy, PinnedVersion, package_release};
use refit_core::readiness::{Filesystem, NodeReadiness, WRITTEN_PATHS};
use refit_core::{MinorVersion, Version};
use serde::{Deserialize, Serialize};

use crate::kubeadm::{APT_REPO_FILE, KubeadmOptions};
use crate::ssh::{RemoteCommand, SshOptions, run_ssh};
use crate::{ERROR_TAIL_LINES, NodeContext, OutputLine, PackageManager, run_exec};

/// Nodes probed at once.
pub const PROBE_CONCURRENCY: usize = 8;

/// The packages the kubeadm recipe installs, all of which must be offered at a version.
pub const PACKAGES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

/// The read-only apt probe (POSIX sh, run as root). Arguments: the repository file, the
/// version whose `kubeadm upgrade plan` to run here (or empty), its
/// `--ignore-preflight-errors=...` flag (or empty), then the minors (`v1.37`). Every value is a
/// positional parameter, never part of the script text. Output lines start with
/// `refit-probe KIND`; kubeadm's JSON plan follows its `kubeadm-plan` line.
pub const APT_PROBE_SCRIPT: &str = r#"set -u
repo=$1; plan=$2; ignore=$3; shift 3
if [ ! -r "$repo" ]; then echo "refit-probe no-repository $repo"; exit 0; fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/refit-probe.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"
echo "refit-probe pins $(grep -lsiE '^[[:space:]]*Package:.*(kube|[*])' /etc/apt/preferences /etc/apt/preferences.d/* | tr '\n' ' ')"
apt_in() {
  prog=$1; shift
  "$prog" -q -o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts="$d/parts" \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" "$@"
}
for minor in "$@"; do
  d="$tmp/$minor"
  mkdir -p "$d/lists/partial" "$d/cache" "$d/parts" "$d/dl"
  chown _apt "$d/lists/partial" "$d/dl" 2>/dev/null || true
  sed -E "s#(/core:/stable:/)v[0-9]+\.[0-9]+/#\1$minor/#g" "$repo" > "$d/sources.list"
  echo "refit-probe minor $minor"
  if ! out=$(apt_in apt-get update 2>&1); then
    printf '%s\n' "$out" | grep -E '^(E|Err):' | sed 's/^/refit-probe error /'
    continue
  fi
  apt_in apt-cache madison kubeadm kubelet kubectl 2>/dev/null | sed 's/^/refit-probe offer /'
  apt_in apt-cache policy kubeadm kubelet kubectl 2>/dev/null | sed 's/^/refit-probe policy /'
  if [ -n "$plan" ] && [ "v${plan%.*}" = "$minor" ]; then
    echo "refit-probe kubeadm-plan $plan"
    if (cd "$d/dl" && apt_in apt-get download "kubeadm=$plan-*" >&2) && dpkg-deb -x "$d"/dl/kubeadm_*.deb "$d/root"; then
      "$d/root/usr/bin/kubeadm" upgrade plan "v$plan" -o json ${ignore:+"$ignore"} || echo "refit-probe kubeadm-plan-failed $?"
    else
      echo "refit-probe kubeadm-plan-failed download"
    fi
  fi
done
"#;

/// How an action's reach is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetProbe {
    /// The ssh action's kubeadm recipe: the node's package repositories.
    Ssh {
        /// How to reach the nodes.
        options: SshOptions,
        /// Package manager and kubeadm's ignored preflight checks.
        kubeadm: KubeadmOptions,
    },
    /// An exec action's `probe` command.
    Exec {
        /// Program and arguments, with the action's placeholders.
        command: Vec<String>,
    },
    /// The same releases for every node (the sandbox's buildable set).
    Releases(BTreeSet<Version>),
}

/// One node to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// The node (its name, roles, address; `to` is its last version).
    pub ctx: NodeContext,
    /// The versions it must reach.
    pub versions: BTreeSet<Version>,
    /// Run `kubeadm upgrade plan` for this version here (the first control-plane node).
    pub kubeadm_plan: Option<Version>,
}

/// One component target of `kubeadm upgrade plan` (kubeadm's `ComponentUpgradePlan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentTarget {
    /// `kube-apiserver`, `etcd`, `CoreDNS`, `kube-proxy`, `kubelet`, `kubeadm`, ...
    pub name: String,
    /// The node, for per-node components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Now.
    pub current_version: String,
    /// After `kubeadm upgrade apply`.
    pub new_version: String,
}

/// A component configuration's API version (kubeadm's `ComponentConfigVersionState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigVersion {
    /// API group, e.g. `kubelet.config.k8s.io`.
    pub group: String,
    /// In use now (empty when kubeadm found none).
    #[serde(default)]
    pub current_version: String,
    /// What kubeadm writes.
    pub preferred_version: String,
    /// Whether the operator must convert it by hand.
    #[serde(default)]
    pub manual_upgrade_required: bool,
}

/// What `kubeadm upgrade plan` said on the first control-plane node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeadmPlan {
    /// Where it ran.
    pub node: String,
    /// The version it planned (the first hop).
    pub version: Version,
    /// kubeadm's description of the upgrade (`version in the v1.36 series`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The component targets.
    pub components: Vec<ComponentTarget>,
    /// Component configuration API versions.
    pub config_versions: Vec<ConfigVersion>,
    /// Why there is no plan (kubeadm refused, the package could not be fetched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl KubeadmPlan {
    /// No plan, and why (node and version left for the caller).
    fn failed(error: String) -> KubeadmPlan {
        KubeadmPlan {
            node: String::new(),
            version: Version::new(0, 0, 0),
            description: None,
            components: Vec::new(),
            config_versions: Vec::new(),
            error: Some(error),
        }
    }
}

/// Everything the probes saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Per node.
    pub observed: BTreeMap<String, Observation>,
    /// Nodes that could not be probed, and why (reported as checks not run).
    pub not_probed: Vec<(String, String)>,
    /// kubeadm's plan, when the ssh action's probe ran it.
    pub kubeadm_plan: Option<KubeadmPlan>,
}

/// Probes every node (at most [`PROBE_CONCURRENCY`] at once), each within `timeout`.
pub async fn probe_nodes(probe: &TargetProbe, requests: Vec<ProbeRequest>, timeout: Duration) -> ProbeReport {
    let results: Vec<(String, Result<Observation, String>, Option<KubeadmPlan>)> =
        futures::stream::iter(requests)
            .map(|req| async move {
                let (observed, plan) = probe_one(probe, &req, timeout).await;
                (req.ctx.node.clone(), observed, plan)
            })
            .buffer_unordered(PROBE_CONCURRENCY)
            .collect()
            .await;
    let mut report = ProbeReport::default();
    for (node, observed, plan) in results {
        match observed {
            Ok(o) => {
                report.observed.insert(node, o);
            }
            Err(why) => report.not_probed.push((node, why)),
        }
        if plan.is_some() {
            report.kubeadm_plan = plan;
        }
    }
    report.not_probed.sort();
    report
}

/// `Err` when this node cannot be probed by this action at all (not a failure of the node).
async fn probe_one(
    probe: &TargetProbe,
    req: &ProbeRequest,
    timeout: Duration,
) -> (Result<Observation, String>, Option<KubeadmPlan>) {
    match probe {
        TargetProbe::Releases(set) => (Ok(offers_from_set(set, &req.versions)), None),
        TargetProbe::Exec { command } => (Ok(probe_exec(command, req, timeout).await), None),
        TargetProbe::Ssh { kubeadm, .. } if kubeadm.package_manager == PackageManager::Dnf => {
            (Err("the dnf recipe has no target probe yet".into()), None)
        }
        TargetProbe::Ssh { options, kubeadm } => {
            let (o, plan) = probe_apt(options, kubeadm, req, timeout).await;
            (Ok(o), plan)
        }
    }
}

/// The minors `versions` fall in, each with the releases of `set` in it.
fn offers_from_set(set: &BTreeSet<Version>, versions: &BTreeSet<Version>) -> Observation {
    let minors = versions
        .iter()
        .map(|v| v.minor_version())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|m| {
            let releases = set.iter().filter(|r| r.minor_version() == m).map(Version::release).collect();
            (m, MinorOffer { releases, ..Default::default() })
        })
        .collect();
    Observation::Offers { minors, pin_files: Vec::new() }
}

/// An error on one line (ssh and command errors carry their stderr tail on further lines).
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ")
}

async fn probe_exec(command: &[String], req: &ProbeRequest, timeout: Duration) -> Observation {
    let mut versions = BTreeMap::new();
    for v in &req.versions {
        let ctx = NodeContext { to: v.to_string(), ..req.ctx.clone() };
        let quiet = |_line: OutputLine| {};
        let answer = run_exec(command, &ctx, timeout, &quiet).await.map_err(|e| one_line(&e));
        versions.insert(v.clone(), answer);
    }
    Observation::Answers { versions }
}

/// The apt probe's command for one node.
pub fn apt_probe_command(
    minors: &BTreeSet<MinorVersion>,
    kubeadm_plan: Option<&Version>,
    options: &KubeadmOptions,
) -> RemoteCommand {
    let mut args: Vec<String> = vec![
        "-c".into(),
        APT_PROBE_SCRIPT.into(),
        "refit-probe".into(),
        APT_REPO_FILE.into(),
        kubeadm_plan.map(|v| v.release().to_string()).unwrap_or_default(),
        if options.ignore_preflight_errors.is_empty() {
            String::new()
        } else {
            format!("--ignore-preflight-errors={}", options.ignore_preflight_errors.join(","))
        },
    ];
    args.extend(minors.iter().map(|m| format!("v{m}")));
    RemoteCommand::root("sh", args)
}

async fn probe_apt(
    options: &SshOptions,
    kubeadm: &KubeadmOptions,
    req: &ProbeRequest,
    timeout: Duration,
) -> (Observation, Option<KubeadmPlan>) {
    let minors: BTreeSet<MinorVersion> = req.versions.iter().map(Version::minor_version).collect();
    let command = apt_probe_command(&minors, req.kubeadm_plan.as_ref(), kubeadm);
    let lines = Mutex::new(Vec::new());
    let keep = |line: OutputLine| lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    let ran = run_ssh(std::slice::from_ref(&command), &req.ctx, options, timeout, &keep).await;
    let lines = lines.into_inner().unwrap_or_else(|p| p.into_inner());
    match ran {
        Err(e) => (Observation::Failed { reason: one_line(&e) }, None),
        Ok(()) => {
            let parsed = parse_apt_probe(&lines);
            let plan = req.kubeadm_plan.as_ref().map(|v| KubeadmPlan {
                node: req.ctx.node.clone(),
                version: v.clone(),
                ..parsed
                    .kubeadm_plan
                    .clone()
                    .unwrap_or_else(|| KubeadmPlan::failed("the probe did not get to kubeadm's plan".into()))
            });
            (parsed.observation, plan)
        }
    }
}

/// What the apt probe's output says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptProbe {
    /// The node's offers and pins.
    pub observation: Observation,
    /// kubeadm's plan when it ran (node and version are the caller's to fill in).
    pub kubeadm_plan: Option<KubeadmPlan>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpgradePlanJson {
    #[serde(default)]
    available_upgrades: Vec<AvailableUpgradeJson>,
    #[serde(default)]
    config_versions: Vec<ConfigVersion>,
}

#[derive(Deserialize)]
struct AvailableUpgradeJson {
    #[serde(default)]
    description: String,
    #[serde(default)]
    components: Vec<ComponentTarget>,
}

/// Reads the apt probe's output lines (see [`APT_PROBE_SCRIPT`]).
pub fn parse_apt_probe(lines: &[OutputLine]) -> AptProbe {
    let mut minors: BTreeMap<MinorVersion, MinorOffer> = BTreeMap::new();
    let mut offered: BTreeMap<MinorVersion, BTreeMap<String, BTreeSet<Version>>> = BTreeMap::new();
    let mut pin_files = Vec::new();
    let mut minor: Option<MinorVersion> = None;
    let mut package: Option<String> = None;
    let mut last_version: Option<String> = None;
    let mut plan_json: Option<String> = None;
    let mut plan_failed: Option<String> = None;
    for line in lines {
        let OutputLine::Stdout(text) = line else { continue };
        let Some(rest) = text.strip_prefix("refit-probe ") else {
            if let Some(json) = plan_json.as_mut() {
                json.push_str(text);
                json.push('\n');
            }
            continue;
        };
        let (kind, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "no-repository" => {
                return AptProbe {
                    observation: Observation::Failed {
                        reason: format!(
                            "no apt repository file {} (the kubeadm recipe switches that file to the target's minor)",
                            value.trim()
                        ),
                    },
                    kubeadm_plan: None,
                };
            }
            "pins" => pin_files = value.split_whitespace().map(str::to_string).collect(),
            "minor" => {
                minor = value.trim().trim_start_matches('v').parse().ok();
                if let Some(m) = minor {
                    minors.entry(m).or_default();
                }
                package = None;
            }
            "error" => {
                if let Some(m) = minor {
                    let offer = minors.entry(m).or_default();
                    let e = offer.error.get_or_insert_with(String::new);
                    if !e.is_empty() {
                        e.push_str(" / ");
                    }
                    e.push_str(value.trim());
                }
            }
            "offer" => {
                // `   kubeadm | 1.37.1-1.1 | http://... Packages`
                let mut cols = value.split('|').map(str::trim);
                if let (Some(m), Some(name), Some(version)) = (minor, cols.next(), cols.next())
                    && let Some(release) = package_release(version)
                {
                    offered.entry(m).or_default().entry(name.to_string()).or_default().insert(release);
                }
            }
            "policy" => {
                let Some(m) = minor else { continue };
                let offer = minors.entry(m).or_default();
                if !value.starts_with(' ') && value.ends_with(':') {
                    let name = value.trim_end_matches(':').to_string();
                    offer.packages.entry(name.clone()).or_default();
                    package = Some(name);
                    last_version = None;
                    continue;
                }
                let Some(policy) = package.as_ref().and_then(|p| offer.packages.get_mut(p)) else { continue };
                policy_line(policy, value, &mut last_version);
            }
            "kubeadm-plan" => plan_json = Some(String::new()),
            "kubeadm-plan-failed" => plan_failed = Some(value.trim().to_string()),
            _ => {}
        }
    }
    for (m, offer) in minors.iter_mut() {
        let per_package = offered.get(m);
        let mut all: Option<BTreeSet<Version>> = None;
        for name in PACKAGES {
            let have = per_package.and_then(|p| p.get(name)).cloned().unwrap_or_default();
            all = Some(match all {
                None => have,
                Some(a) => a.intersection(&have).cloned().collect(),
            });
        }
        offer.releases = all.unwrap_or_default();
    }
    let kubeadm_plan = plan_json.map(|json| {
        let stderr: Vec<&str> = lines
            .iter()
            .filter_map(|l| match l {
                OutputLine::Stderr(s) => Some(s.as_str()),
                OutputLine::Stdout(_) => None,
            })
            .filter(|s| !s.trim().is_empty() && !s.starts_with("Get:") && !s.starts_with("Fetched "))
            .collect();
        let tail = stderr
            .iter()
            .skip(stderr.len().saturating_sub(ERROR_TAIL_LINES))
            .copied()
            .collect::<Vec<_>>()
            .join(" / ");
        let empty = KubeadmPlan::failed;
        if let Some(why) = plan_failed {
            let what = if why == "download" {
                "the target's kubeadm package could not be fetched".to_string()
            } else {
                format!("kubeadm upgrade plan exited with code {why}")
            };
            return empty(if tail.is_empty() { what } else { format!("{what}: {tail}") });
        }
        match serde_json::from_str::<UpgradePlanJson>(&json) {
            Ok(p) => {
                let first = p.available_upgrades.into_iter().next();
                KubeadmPlan {
                    description: first.as_ref().map(|u| u.description.clone()).filter(|d| !d.is_empty()),
                    components: first.map(|u| u.components).unwrap_or_default(),
                    config_versions: p.config_versions,
                    error: None,
                    ..KubeadmPlan::failed(String::new())
                }
            }
            Err(e) => empty(format!("kubeadm upgrade plan printed no plan refit can read ({e})")),
        }
    });
    AptProbe { observation: Observation::Offers { minors, pin_files }, kubeadm_plan }
}

/// One line of a package's `apt-cache policy` block: `Candidate: V`, a version-table row
/// (` *** 1.36.4-1.1 1001`) or one of that row's sources (`   500 http://... Packages`,
/// `   100 /var/lib/dpkg/status`).
fn policy_line(policy: &mut PackagePolicy, value: &str, last_version: &mut Option<String>) {
    let trimmed = value.trim();
    if let Some(c) = trimmed.strip_prefix("Candidate:") {
        policy.candidate = c.trim().to_string();
        return;
    }
    let words: Vec<&str> = trimmed.trim_start_matches("***").split_whitespace().collect();
    match words.as_slice() {
        [first, second] if first.parse::<i32>().is_err() && second.parse::<i32>().is_ok() => {
            let priority = second.parse::<i32>().unwrap_or_default();
            policy.versions.insert(first.to_string(), PinnedVersion { priority, offered: false });
            *last_version = Some(first.to_string());
        }
        [priority, source, ..] if priority.parse::<i32>().is_ok() => {
            if *source != "/var/lib/dpkg/status"
                && let Some(row) = last_version.as_ref().and_then(|v| policy.versions.get_mut(v))
            {
                row.offered = true;
            }
        }
        _ => {}
    }
}

/// The read-only readiness probe (POSIX sh, as the login user: nothing needs root). Arguments:
/// the paths to measure, `--`, then the packages whose installed versions to report. Output
/// lines start with `refit-ready KIND`. A path that does not exist is measured at its nearest
/// existing parent (`/var/cache/dnf` on an apt node is `/var/cache`'s filesystem).
pub const READINESS_SCRIPT: &str = r#"set -u
echo "refit-ready hostname $(uname -n)"
if [ -r /etc/machine-id ]; then echo "refit-ready machine-id $(cat /etc/machine-id)"; fi
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  p=$1; shift; q=$p
  while [ ! -e "$q" ]; do q=$(dirname "$q"); done
  df -P -k "$q" | tail -n 1 | sed "s#^#refit-ready disk $p #"
done
[ $# -gt 0 ] && shift
for pkg in "$@"; do
  v=
  if command -v dpkg-query >/dev/null 2>&1; then
    v=$(dpkg-query -W -f '${db:Status-Abbrev} ${Version}' "$pkg" 2>/dev/null | sed -n 's/^ii *//p')
  elif command -v rpm >/dev/null 2>&1; then
    v=$(rpm -q --qf '%{VERSION}-%{RELEASE}' "$pkg" 2>/dev/null) || v=
  fi
  echo "refit-ready package $pkg $v"
done
"#;

/// The readiness probe's command: [`READINESS_SCRIPT`] over `paths`, and the installed
/// versions of `packages` (none when the recipe installs them itself).
pub fn readiness_command(paths: &[&str], packages: &[&str]) -> RemoteCommand {
    let mut args: Vec<String> = vec!["-c".into(), READINESS_SCRIPT.into(), "refit-ready".into()];
    args.extend(paths.iter().map(|p| p.to_string()));
    args.push("--".into());
    args.extend(packages.iter().map(|p| p.to_string()));
    RemoteCommand::user("sh", args)
}

/// Reads the readiness probe's output: `Err` when it does not look like the probe ran (no
/// host name, a path with no `df` line).
pub fn parse_readiness(lines: &[OutputLine], paths: &[&str]) -> Result<NodeReadiness, String> {
    let mut out = NodeReadiness::default();
    let mut by_mount: BTreeMap<String, Filesystem> = BTreeMap::new();
    for line in lines {
        let OutputLine::Stdout(text) = line else { continue };
        let Some(rest) = text.strip_prefix("refit-ready ") else { continue };
        let (kind, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "hostname" => out.hostname = value.trim().to_string(),
            "machine-id" => out.machine_id = Some(value.trim().to_string()).filter(|m| !m.is_empty()),
            "disk" => {
                // `PATH FILESYSTEM 1024-BLOCKS USED AVAILABLE CAPACITY MOUNTPOINT`
                let cols: Vec<&str> = value.split_whitespace().collect();
                let [path, _fs, size, _used, available, _capacity, mount @ ..] = cols.as_slice() else {
                    return Err(format!("df printed a line refit cannot read: {}", printable(value)));
                };
                let kib = |n: &str| n.parse::<u64>().ok().and_then(|k| k.checked_mul(1024));
                let (Some(size), Some(available)) = (kib(size), kib(available)) else {
                    return Err(format!("df printed a line refit cannot read: {}", printable(value)));
                };
                let fs = by_mount.entry(mount.join(" ")).or_insert_with(|| Filesystem {
                    mount: mount.join(" "),
                    paths: Vec::new(),
                    available,
                    size,
                });
                fs.paths.push(path.to_string());
            }
            "package" => {
                let (name, version) = value.split_once(' ').unwrap_or((value, ""));
                let version = version.trim();
                out.packages.insert(name.to_string(), (!version.is_empty()).then(|| version.to_string()));
            }
            _ => {}
        }
    }
    if out.hostname.is_empty() {
        return Err("the readiness probe printed nothing refit can read (is /bin/sh there?)".into());
    }
    if let Some(missing) =
        paths.iter().find(|p| !by_mount.values().any(|fs| fs.paths.iter().any(|q| q == *p)))
    {
        return Err(format!("df reported nothing for {missing}"));
    }
    out.filesystems = by_mount.into_values().collect();
    Ok(out)
}

fn printable(text: &str) -> String {
    refit_core::identity::printable(text, false)
}

/// Runs the readiness probe on one node over ssh (read-only, no sudo).
/// `paths`: [`WRITTEN_PATHS`] in a run (tests add a mount of their own).
pub async fn probe_readiness(
    options: &SshOptions,
    ctx: &NodeContext,
    paths: &[&str],
    packages: &[&str],
    timeout: Duration,
) -> Result<NodeReadiness, String> {
    let command = readiness_command(paths, packages);
    let lines = Mutex::new(Vec::new());
    let keep = |line: OutputLine| lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    run_ssh(std::slice::from_ref(&command), ctx, options, timeout, &keep).await.map_err(|e| one_line(&e))?;
    parse_readiness(&lines.into_inner().unwrap_or_else(|p| p.into_inner()), paths)
}

/// The readiness probe on every node (at most [`PROBE_CONCURRENCY`] at once), by node name.
/// `packages`: ask for the installed versions of the recipe's packages (the plan says they
/// are pre-installed).
pub async fn readiness_nodes(
    options: &SshOptions,
    nodes: Vec<NodeContext>,
    packages: bool,
    timeout: Duration,
) -> BTreeMap<String, Result<NodeReadiness, String>> {
    let asked: &[&str] = if packages { &PACKAGES } else { &[] };
    futures::stream::iter(nodes)
        .map(|ctx| async move {
            let r = probe_readiness(options, &ctx, WRITTEN_PATHS, asked, timeout).await;
            (ctx.node, r)
        })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str) -> Vec<OutputLine> {
        text.lines().map(|l| OutputLine::Stdout(l.to_string())).collect()
    }

    /// Real output of the script on a kubeadm sandbox node (1.36.4 installed, a 1001 pin on
    /// 1.36.*, the v1.37 channel offering 1.37.1, no v1.38 channel).
    const PINNED: &str = "refit-probe pins /etc/apt/preferences.d/kubernetes 
refit-probe minor v1.37
refit-probe offer    kubeadm | 1.37.1-1.1 | http://10.200.0.1:39559/core:/stable:/v1.37/deb  Packages
refit-probe offer    kubelet | 1.37.1-1.1 | http://10.200.0.1:39559/core:/stable:/v1.37/deb  Packages
refit-probe offer    kubectl | 1.37.1-1.1 | http://10.200.0.1:39559/core:/stable:/v1.37/deb  Packages
refit-probe policy kubeadm:
refit-probe policy   Installed: 1.36.4-1.1
refit-probe policy   Candidate: 1.36.4-1.1
refit-probe policy   Version table:
refit-probe policy      1.37.1-1.1 500
refit-probe policy         500 http://10.200.0.1:39559/core:/stable:/v1.37/deb  Packages
refit-probe policy  *** 1.36.4-1.1 1001
refit-probe policy         100 /var/lib/dpkg/status
refit-probe policy kubelet:
refit-probe policy   Installed: 1.36.4-1.1
refit-probe policy   Candidate: 1.37.1-1.1
refit-probe policy   Version table:
refit-probe policy      1.37.1-1.1 500
refit-probe policy         500 http://10.200.0.1:39559/core:/stable:/v1.37/deb  Packages
refit-probe minor v1.38
refit-probe error Err:2 http://10.200.0.1:39559/core:/stable:/v1.38/deb  Release
refit-probe error E: The repository 'http://10.200.0.1:39559/core:/stable:/v1.38/deb  Release' does not have a Release file.
";

    #[test]
    fn offers_pins_and_errors_are_read() {
        let p = parse_apt_probe(&out(PINNED));
        let Observation::Offers { minors, pin_files } = p.observation else { panic!("not offers") };
        assert_eq!(pin_files, ["/etc/apt/preferences.d/kubernetes"]);
        let v137 = &minors[&MinorVersion::new(1, 37)];
        assert_eq!(v137.releases, BTreeSet::from([Version::new(1, 37, 1)]));
        assert!(v137.error.is_none());
        let kubeadm = &v137.packages["kubeadm"];
        assert_eq!(kubeadm.candidate, "1.36.4-1.1");
        assert_eq!(kubeadm.versions["1.37.1-1.1"], PinnedVersion { priority: 500, offered: true });
        assert_eq!(kubeadm.versions["1.36.4-1.1"], PinnedVersion { priority: 1001, offered: false });
        assert_eq!(v137.packages["kubelet"].candidate, "1.37.1-1.1");
        let v138 = &minors[&MinorVersion::new(1, 38)];
        assert!(v138.releases.is_empty());
        assert!(v138.error.as_deref().unwrap().contains("does not have a Release file"), "{v138:?}");
        assert!(p.kubeadm_plan.is_none());
    }

    #[test]
    fn a_release_counts_only_when_all_three_packages_have_it() {
        let p = parse_apt_probe(&out("refit-probe minor v1.37
refit-probe offer    kubeadm | 1.37.2-1.1 | u Packages
refit-probe offer    kubeadm | 1.37.1-1.1 | u Packages
refit-probe offer    kubelet | 1.37.1-1.1 | u Packages
refit-probe offer    kubectl | 1.37.1-1.1 | u Packages
refit-probe offer    kubectl | 1.37.2-1.1 | u Packages
"));
        let Observation::Offers { minors, .. } = p.observation else { panic!() };
        assert_eq!(minors[&MinorVersion::new(1, 37)].releases, BTreeSet::from([Version::new(1, 37, 1)]));
        let none = parse_apt_probe(&out("refit-probe no-repository /etc/apt/sources.list.d/kubernetes.list"));
        assert!(
            matches!(none.observation, Observation::Failed { ref reason } if reason.contains("kubernetes.list"))
        );
    }

    #[test]
    fn kubeadms_json_plan_is_read_and_its_failures_explained() {
        let mut lines = out("refit-probe minor v1.37\nrefit-probe kubeadm-plan 1.37.1");
        lines.extend(out(r#"{
    "kind": "UpgradePlan",
    "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
    "availableUpgrades": [
        {
            "description": "version in the v1.36 series",
            "components": [
                {"name": "kube-apiserver", "currentVersion": "v1.36.4", "newVersion": "v1.37.1", "nodeName": "cp-1"},
                {"name": "CoreDNS", "currentVersion": "v1.14.2", "newVersion": "v1.14.6"},
                {"name": "etcd", "currentVersion": "3.6.8-0", "newVersion": "3.7.0-0", "nodeName": "cp-1"}
            ]
        }
    ],
    "configVersions": [
        {"group": "kubelet.config.k8s.io", "currentVersion": "v1beta1", "preferredVersion": "v1beta1", "manualUpgradeRequired": false}
    ]
}"#));
        lines.push(OutputLine::Stderr("Get:1 http://x kubeadm 1.37.1-1.1 [19.2 MB]".into()));
        let plan = parse_apt_probe(&lines).kubeadm_plan.unwrap();
        assert_eq!(plan.error, None);
        assert_eq!(plan.description.as_deref(), Some("version in the v1.36 series"));
        assert_eq!(plan.components.len(), 3);
        assert_eq!(plan.components[1].name, "CoreDNS");
        assert_eq!(plan.components[1].node_name, None);
        assert_eq!(plan.components[2].new_version, "3.7.0-0");
        assert_eq!(plan.config_versions[0].group, "kubelet.config.k8s.io");

        let mut failed = out(
            "refit-probe minor v1.37\nrefit-probe kubeadm-plan 1.37.1\nrefit-probe kubeadm-plan-failed 1",
        );
        failed.push(OutputLine::Stderr(
            "[ERROR CoreDNSUnsupportedPlugins]: there are unsupported plugins".into(),
        ));
        let plan = parse_apt_probe(&failed).kubeadm_plan.unwrap();
        let error = plan.error.unwrap();
        assert!(
            error.contains("exited with code 1") && error.contains("CoreDNSUnsupportedPlugins"),
            "{error}"
        );
    }

    #[test]
    fn the_command_carries_every_value_as_its_own_argument() {
        let options = KubeadmOptions {
            package_manager: PackageManager::Apt,
            ignore_preflight_errors: vec!["ImagePull".into(), "SystemVerification".into()],
        };
        let minors = BTreeSet::from([MinorVersion::new(1, 36), MinorVersion::new(1, 37)]);
        let c = apt_probe_command(&minors, Some(&Version::new(1, 36, 4)), &options);
        assert!(c.sudo);
        assert_eq!(c.program, "sh");
        assert_eq!(c.args[1], APT_PROBE_SCRIPT);
        assert_eq!(
            &c.args[2..],
            [
                "refit-probe",
                APT_REPO_FILE,
                "1.36.4",
                "--ignore-preflight-errors=ImagePull,SystemVerification",
                "v1.36",
                "v1.37"
            ]
        );
        let c = apt_probe_command(&minors, None, &KubeadmOptions::default());
        assert_eq!(&c.args[4..6], ["", ""]);
    }

    #[test]
    fn a_fixed_set_offers_its_releases_per_minor() {
        let set = BTreeSet::from([Version::new(1, 36, 4), Version::new(1, 37, 1)]);
        let o = offers_from_set(&set, &BTreeSet::from([Version::new(1, 37, 2)]));
        let Observation::Offers { minors, .. } = o else { panic!() };
        assert_eq!(minors.len(), 1);
        assert_eq!(minors[&MinorVersion::new(1, 37)].releases, BTreeSet::from([Version::new(1, 37, 1)]));
    }

    #[test]
    fn readiness_output_groups_paths_by_filesystem_and_reads_packages() {
        let o = parse_readiness(
            &out("refit-ready hostname w-1
refit-ready machine-id 0123abcd
refit-ready disk / /dev/vda1 10485760 8388608 2097152 80% /
refit-ready disk /var/lib /dev/vda1 10485760 8388608 2097152 80% /
refit-ready disk /tmp tmpfs 4096 3584 512 88% /tmp
refit-ready package kubeadm 1.37.1-1.1
refit-ready package kubelet 
"),
            &["/", "/var/lib", "/tmp"],
        )
        .unwrap();
        assert_eq!((o.hostname.as_str(), o.machine_id.as_deref()), ("w-1", Some("0123abcd")));
        assert_eq!(o.filesystems.len(), 2);
        assert_eq!(o.filesystems[0].mount, "/");
        assert_eq!(o.filesystems[0].paths, ["/", "/var/lib"]);
        assert_eq!(o.filesystems[0].available, 2 << 30);
        assert_eq!((o.filesystems[1].available, o.filesystems[1].size), (512 << 10, 4 << 20));
        assert_eq!(o.packages["kubeadm"].as_deref(), Some("1.37.1-1.1"));
        assert_eq!(o.packages["kubelet"], None);
        let missing = parse_readiness(&out("refit-ready hostname w-1"), &["/"]).unwrap_err();
        assert!(missing.contains("nothing for /"), "{missing}");
        assert!(parse_readiness(&out(""), &[]).is_err());
        let bad =
            parse_readiness(&out("refit-ready hostname h\nrefit-ready disk / x y z\n"), &["/"]).unwrap_err();
        assert!(bad.contains("cannot read"), "{bad}");
        let huge = "refit-ready disk / d 99999999999999999999 1 2 1% /";
        assert!(
            parse_readiness(&out(&format!("refit-ready hostname h\n{huge}")), &["/"]).is_err(),
            "no overflow"
        );
    }
}
