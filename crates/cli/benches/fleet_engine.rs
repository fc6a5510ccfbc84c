//! The fleet run engine alone over 1,000 members: core's state machine (`next`, `apply` with
//! its rollups) and the store's version-checked writes, driven by `SimulatedMemberDriver` — an
//! in-process stand-in for member upgrades used only by this benchmark (members "succeed"
//! after a simulated delay on a virtual clock, about 1% fail). No cluster, no subprocess: the
//! numbers are the engine's own cost per state transition and its memory.
//!
//! Printed: transitions, wall time split into next / apply / store write, cost per transition,
//! the stored state's size, and peak RSS. There is no peer to compare with (Azure Fleet's
//! engine is a hosted service); the column to watch is the cost per transition as the fleet
//! grows (`FLEET_BENCH_MEMBERS`, default 1000).
//!
//! Run: `cargo bench -p refit-cli --bench fleet_engine`

use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use refit_core::fleet::{
    Decision, Event, Facts, FleetMember, MemberFacts, MemberVersions, RunState, Strategy, UpgradeSpec,
    UpgradeType, apply, freeze_targets, next, resolve,
};
use refit_store::Store;

/// Simulated member upgrades: a deterministic pseudo-random delay and outcome per member.
struct SimulatedMemberDriver {
    seed: u64,
    /// (finish time, member, succeeded), earliest first.
    running: BinaryHeap<std::cmp::Reverse<(Timestamp, String, bool)>>,
}

impl SimulatedMemberDriver {
    fn rand(&mut self) -> u64 {
        // xorshift64*: reproducible without a dependency.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn launch(&mut self, member: &str, now: Timestamp) {
        let minutes = 5 + (self.rand() % 26) as i64; // 5–30 simulated minutes
        let ok = !self.rand().is_multiple_of(100); // ~1% fail
        self.running.push(std::cmp::Reverse((
            now + SignedDuration::from_mins(minutes),
            member.to_string(),
            ok,
        )));
    }

    fn next_finish(&self) -> Option<Timestamp> {
        self.running.peek().map(|r| r.0.0)
    }

    fn finished_by(&mut self, now: Timestamp) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        while self.next_finish().is_some_and(|t| t <= now) {
            if let Some(std::cmp::Reverse((_, m, ok))) = self.running.pop() {
                out.push((m, ok));
            }
        }
        out
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Cost {
    transitions: u64,
    next: Duration,
    apply: Duration,
    write: Duration,
    bytes: usize,
}

fn record(
    store: &mut Store,
    state: &mut RunState,
    version: &mut i64,
    event: &Event,
    cost: &mut Cost,
) -> bool {
    let t = Instant::now();
    let next_state = match apply(state, event) {
        Ok(s) => s,
        Err(_) => return false,
    };
    cost.apply += t.elapsed();
    let t = Instant::now();
    *version = store.save_fleet_run(&next_state, *version, event).expect("store write");
    cost.write += t.elapsed();
    cost.bytes = serde_json::to_string(&next_state).map(|s| s.len()).unwrap_or(0);
    cost.transitions += 1;
    *state = next_state;
    true
}

fn main() {
    let n: usize = std::env::var("FLEET_BENCH_MEMBERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rss_start = peak_rss_kib();
    // Three stages: a canary of 10 members, then two waves of 10 groups each.
    let canary = 10.min(n);
    let per_wave = (n - canary) / 2;
    let groups = 10;
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let group = if i < canary {
            "canary".to_string()
        } else {
            let j = i - canary;
            let wave = if j < per_wave { 1 } else { 2 };
            format!("w{wave}-g{}", j % groups)
        };
        members.push(FleetMember {
            name: format!("m{i:04}"),
            update_group: Some(group),
            ..Default::default()
        });
    }
    let wave = |w: u32| {
        let gs: Vec<String> = (0..groups)
            .map(|g| format!("{{name: w{w}-g{g}, maxConcurrency: 5, maxAllowedFailures: \"10%\"}}"))
            .collect();
        format!(
            "  - name: wave-{w}\n    maxConcurrency: 50\n    maxAllowedFailures: \"10%\"\n    groups: [{}]\n",
            gs.join(", ")
        )
    };
    let text = format!(
        "stages:\n  - name: canary\n    groups: [{{name: canary, maxConcurrency: 2, maxAllowedFailures: 1}}]\n    afterStageWaitInSeconds: 3600\n{}{}",
        wave(1),
        wave(2)
    );
    let strategy = Strategy::parse(&text).expect("strategy");
    let plan = resolve(&strategy, &members).expect("plan");
    let spec = UpgradeSpec::new(UpgradeType::Full, Some("1.37.1".parse().expect("version")));
    let t0: Timestamp = "2026-06-10T12:00:00Z".parse().expect("time");
    let behind = MemberVersions {
        control_plane: Some("1.36.4".parse().expect("v")),
        nodes: Some("1.36.4".parse().expect("v")),
        ..Default::default()
    };
    let facts = Facts {
        members: members
            .iter()
            .map(|m| (m.name.clone(), MemberFacts { versions: behind.clone(), ..Default::default() }))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("refit.db")).expect("store");
    let mut state = RunState::new("bench", spec.clone(), strategy, plan.clone(), t0).expect("run");
    let mut version = store.create_fleet_run(&state).expect("create").version;
    let mut cost = Cost::default();
    let targets = freeze_targets(&spec, std::iter::empty());
    let wall = Instant::now();
    record(
        &mut store,
        &mut state,
        &mut version,
        &Event::Start { at: t0, targets: Some(targets), plan: Some(plan), by: None },
        &mut cost,
    );
    let mut sim = SimulatedMemberDriver { seed: 0x5EED_1234_ABCD_0001, running: BinaryHeap::new() };
    let mut now = t0;
    let mut launched = 0u64;
    loop {
        let t = Instant::now();
        let decisions = next(&state, &facts, now);
        cost.next += t.elapsed();
        let mut acted = false;
        let mut wake = None;
        for d in decisions {
            match d {
                Decision::Record(e) => acted |= record(&mut store, &mut state, &mut version, &e, &mut cost),
                Decision::StartMember { .. } => {
                    if let Some(e) = d.started(now, None)
                        && record(&mut store, &mut state, &mut version, &e, &mut cost)
                        && let Decision::StartMember { member, .. } = &d
                    {
                        sim.launch(member, now);
                        launched += 1;
                        acted = true;
                    }
                }
                Decision::Wait { until, .. } => wake = until,
            }
        }
        if acted {
            continue;
        }
        // Nothing to do now: advance the virtual clock to the next outcome or wake-up.
        let at = match (sim.next_finish(), wake) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        now = now.max(at);
        for (member, ok) in sim.finished_by(now) {
            let e = if ok {
                Event::MemberSucceeded { member, at: now, message: None }
            } else {
                Event::MemberFailed { member, at: now, error: "simulated failure".into() }
            };
            record(&mut store, &mut state, &mut version, &e, &mut cost);
        }
    }
    let elapsed = wall.elapsed();
    let p = state.progress();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / cost.transitions.max(1) as f64;
    println!("fleet run engine over {n} members (SimulatedMemberDriver: virtual clock, ~1% failures)");
    println!(
        "  run {}: {} completed, {} failed, {} skipped; {launched} member upgrades launched; simulated {:.1} h",
        state.status.state,
        p.completed,
        p.failed,
        p.skipped,
        now.duration_since(t0).as_secs_f64() / 3600.0
    );
    println!("  state transitions (apply + store write): {}", cost.transitions);
    println!("  wall time: {:.2} s", elapsed.as_secs_f64());
    println!(
        "  per transition: {:.0} µs total = apply {:.0} µs + store write {:.0} µs; next() {:.0} µs per transition",
        per(cost.apply + cost.write),
        per(cost.apply),
        per(cost.write),
        per(cost.next)
    );
    println!("  stored run state: {:.0} KiB of JSON per write", cost.bytes as f64 / 1024.0);
    println!(
        "  peak RSS: {:.1} MiB (at start {:.1} MiB)",
        peak_rss_kib() as f64 / 1024.0,
        rss_start as f64 / 1024.0
    );
    println!("  peer: none comparable (Azure Fleet's update-run engine is a hosted service)");
}
