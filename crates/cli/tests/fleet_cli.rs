//! `refit fleet` and `refit formats` through the real binary where no cluster is needed:
//! file formats and their errors, one `error:` per line, gate types, the approver's name, and
//! a profile that cannot generate a run. (Behaviour that needs member clusters is in
//! `fleet.rs`.)

mod support;

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::Value;
use support::refit;

struct Fleet {
    tmp: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet { tmp: tempfile::tempdir().unwrap() }
    }

    fn store(&self) -> PathBuf {
        self.tmp.path().join("refit.db")
    }

    fn cmd(&self) -> Command {
        let mut c = refit();
        c.arg("fleet").arg("--store").arg(self.store());
        c
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{c:?}: {err}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with `code`; returns its stderr (one line, one `error:`).
fn fails(c: &mut Command, code: i32) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(code), "{c:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(err.matches("error:").count(), 1, "one error: prefix: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn every_printed_format_is_accepted_by_the_command_that_reads_it() {
    let f = Fleet::new();
    let example = |name: &str| ok(refit().args(["formats", name]));
    let all = ok(refit().arg("formats"));
    let help = ok(refit().args(["help", "formats"]));
    for name in ["plan", "strategy", "window", "node-images", "profile", "catalog"] {
        let text = example(name);
        assert!(all.contains(&text), "refit formats shows {name}");
        assert!(help.contains(&text), "refit help formats shows {name}");
    }
    let window = f.file("w.yaml", &example("window"));
    let images = f.file("i.yaml", &example("node-images"));
    let plan = f.file("p.yaml", &example("plan"));
    let kubeconfig = f.file("k.conf", "apiVersion: v1\nkind: Config\n");
    // Every file is accepted (a refused one is exit 2 naming its field); what stops `member
    // add` here is the step after them: this kubeconfig reaches no cluster to bind to.
    let err = fails(
        f.cmd()
            .args(["member", "add", "m1", "--context", "x", "--window"])
            .arg(&window)
            .arg("--node-image-source")
            .arg(&images)
            .arg("--plan-file")
            .arg(&plan)
            .arg("--kubeconfig")
            .arg(&kubeconfig),
        1,
    );
    assert!(err.contains("cannot read the identity of the cluster"), "{err}");
    let strategy = f.file("s.yaml", &example("strategy"));
    ok(f.cmd().args(["strategy", "create", "-f"]).arg(&strategy));
    ok(f.cmd().args(["profile", "create", "-f"]).arg(f.file("pr.yaml", &example("profile"))));
    let catalog = f.file("c.yaml", &example("catalog"));
    let versions = ok(refit().args(["versions", "--catalog"]).arg(&catalog));
    assert!(versions.contains("1.37"), "{versions}");
    fails(refit().args(["formats", "windows"]), 2);
}

#[test]
fn wrong_shapes_are_refused_naming_the_field_and_what_was_expected_with_one_error_prefix() {
    let f = Fleet::new();
    let window = |text: &str| {
        let p = f.file("w.yaml", text);
        fails(f.cmd().args(["member", "add", "m", "--window"]).arg(p), 2)
    };
    let tail = "start: \"22:00\"\ndurationMinutes: 60\ntimeZone: UTC\n";
    for (recurrence, field) in [
        ("recurrence: [Saturday]\n", "recurrence"),
        ("recurrence: {weekly: Saturday}\n", "recurrence.weekly"),
        ("recurrence: {weekly: [Caturday]}\n", "recurrence.weekly[0]"),
        ("recurrence: {monthly: first}\n", "recurrence.monthly"),
    ] {
        let err = window(&format!("{recurrence}{tail}"));
        assert!(err.contains(&format!("field {field} (line 1")), "{recurrence}: {err}");
        assert!(err.contains("expected") || err.contains("unknown variant"), "{recurrence}: {err}");
    }
    let err =
        window("recurrence: {weekly: [Saturday]}\nstart: \"25:00\"\ndurationMinutes: 60\ntimeZone: UTC\n");
    assert!(err.contains("field start (line 2"), "{err}");
    let err = window("recurrence: {weekly: [Saturday]}\nstart: \"22:00\"\nduration: 60\ntimeZone: UTC\n");
    assert!(err.contains("duration") && err.contains("durationMinutes"), "{err}");

    let strategy = |text: &str| {
        let p = f.file("s.yaml", text);
        fails(f.cmd().args(["strategy", "create", "x", "-f"]).arg(p), 2)
    };
    let err = strategy("stages:\n  - name: s\n    groups:\n      - name: g\n        maxConcurrency: [2]\n");
    assert!(err.contains("field stages[0].groups[0].maxConcurrency (line 5"), "{err}");
    assert!(err.contains("s.yaml: the strategy is not valid: "), "{err}");
    let err = strategy("stages: {name: s}\n");
    assert!(err.contains("field stages (line 1") && err.contains("expected"), "{err}");
    let err = strategy(
        r#"{"stages": [{"name": "s", "groups": [{"name": "g"}], "afterStageWaitInSeconds": "soon"}]}"#,
    );
    assert!(err.contains("stages[0].afterStageWaitInSeconds"), "JSON too: {err}");

    let images = f.file("i.yaml", "- ubuntu/1\n- {family: ubuntu}\n");
    let err = fails(f.cmd().args(["member", "add", "m", "--node-image-source"]).arg(images), 2);
    assert!(err.contains("[1]") && err.contains("version"), "{err}");
    let profile = f.file("p.yaml", "name: weekly\nchannel: [Stable]\n");
    let err = fails(f.cmd().args(["profile", "create", "-f"]).arg(profile), 2);
    assert!(err.contains("field channel (line 2"), "{err}");
    let catalog = f
        .file("c.yaml", "schema: 1\nupdated: \"2026-01-01\"\nreleases:\n  - minor: \"1.36\"\n    ga: soon\n");
    let err = fails(refit().args(["versions", "--catalog"]).arg(catalog), 2);
    assert!(err.contains("releases[0].ga"), "{err}");
    // Nothing was stored.
    let members: Value = serde_json::from_str(&ok(f.cmd().args(["member", "list", "-o", "json"]))).unwrap();
    assert_eq!(members, serde_json::json!([]));
}

fn strategy_with_gates(f: &Fleet) {
    let s = f.file(
        "gates.yaml",
        "stages:\n  - name: canary\n    groups: [{name: canary}]\n    afterGates: [{type: Approval, displayName: canary looks good}]\n  - name: prod\n    groups: [{name: prod}]\n    beforeGates: [{type: ScheduledStart, startDay: Monday, startTime: \"09:00\", utcOffset: \"+01:00\"}]\n",
    );
    ok(f.cmd().args(["strategy", "create", "gated", "-f"]).arg(s));
    // Members as `member add` records them (bound to their clusters); none is reached here.
    let mut store = refit_store::Store::open(&f.store()).unwrap();
    for (m, g) in [("c-1", "canary"), ("p-1", "prod")] {
        store
            .add_member(&refit_store::fleet::MemberRecord {
                name: m.into(),
                kubeconfig: Some(f.file("k.conf", "apiVersion: v1\nkind: Config\n").display().to_string()),
                context: Some("x".into()),
                cluster_uid: Some(format!("uid-{m}")),
                update_group: Some(g.into()),
                ..Default::default()
            })
            .unwrap();
    }
    drop(store);
    ok(f.cmd().args([
        "run",
        "create",
        "r",
        "--upgrade-type",
        "Full",
        "--kubernetes-version",
        "1.37.1",
        "--strategy",
        "gated",
    ]));
}

#[test]
fn gate_list_types_are_approval_and_scheduled_start_with_the_display_name_apart() {
    let f = Fleet::new();
    strategy_with_gates(&f);
    let out = ok(f.cmd().args(["gate", "list", "--all"]));
    let header = out.lines().next().unwrap();
    let type_at = header.find("TYPE").unwrap();
    let name_at = header.find("NAME").unwrap();
    let rows: Vec<(&str, &str)> = out
        .lines()
        .skip(1)
        .map(|l| (l[type_at..name_at].trim(), l[name_at..].split("  ").next().unwrap().trim()))
        .collect();
    assert_eq!(rows, [("Approval", "canary looks good"), ("ScheduledStart", "")], "{out}");
}

#[test]
fn an_approval_without_by_or_user_names_the_operating_system_user() {
    let f = Fleet::new();
    strategy_with_gates(&f);
    let id = std::process::Command::new("id").arg("-un").output().unwrap();
    let me = String::from_utf8(id.stdout).unwrap().trim().to_string();
    assert!(!me.is_empty());
    ok(f.cmd().args(["gate", "approve", "r", "canary/after/1"]).env_remove("USER"));
    let gates: Value =
        serde_json::from_str(&ok(f.cmd().args(["gate", "list", "--all", "-o", "json"]))).unwrap();
    assert_eq!(gates[0]["approval"]["by"], me.as_str(), "{gates:#}");
    // $USER still wins over the OS name, and --by over both.
    ok(f.cmd().args(["gate", "approve", "r", "canary/after/1", "--by", "alice"]).env("USER", "bob"));
    let gates: Value =
        serde_json::from_str(&ok(f.cmd().args(["gate", "list", "--all", "-o", "json"]))).unwrap();
    assert_eq!(gates[0]["approval"]["by"], "alice");
}

#[test]
fn a_profile_that_can_read_no_member_fails_naming_each_member_and_why() {
    let f = Fleet::new();
    // An apiserver address nothing listens on.
    let kubeconfig = f.file(
        "dead.conf",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:9\", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    );
    // A member is added only with the identity of its cluster: an unreachable one, or one
    // without a context, is refused and nothing is written.
    let err = fails(f.cmd().args(["member", "add", "east-1", "--kubeconfig"]).arg(&kubeconfig), 2);
    assert!(err.contains("--kubeconfig and --context are required"), "{err}");
    let err = fails(
        f.cmd().args(["member", "add", "east-1", "--context", "x", "--kubeconfig"]).arg(&kubeconfig),
        1,
    );
    assert!(err.contains("cannot read the identity of the cluster"), "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&ok(f.cmd().args(["member", "list", "-o", "json"]))).unwrap(),
        serde_json::json!([])
    );
    // Members added while their clusters answered, which no longer do.
    let mut store = refit_store::Store::open(&f.store()).unwrap();
    for m in ["east-1", "west-1"] {
        store
            .add_member(&refit_store::fleet::MemberRecord {
                name: m.into(),
                kubeconfig: Some(kubeconfig.display().to_string()),
                context: Some("x".into()),
                cluster_uid: Some(format!("uid-{m}")),
                ..Default::default()
            })
            .unwrap();
    }
    drop(store);
    ok(f.cmd().args(["profile", "create", "weekly", "--channel", "Stable"]));
    let err = fails(f.cmd().args(["profile", "generate-run", "weekly"]), 1);
    assert!(err.contains("no run generated: no member could be read"), "{err}");
    assert!(err.contains("east-1: ") && err.contains("west-1: "), "{err}");
    let p: Value =
        serde_json::from_str(&ok(f.cmd().args(["profile", "show", "weekly", "-o", "json"]))).unwrap();
    assert_eq!(p["lastTrigger"]["status"], "Failed", "{p:#}");
    let runs: Value = serde_json::from_str(&ok(f.cmd().args(["run", "list", "-o", "json"]))).unwrap();
    assert_eq!(runs, serde_json::json!([]));
    // With no member at all it fails too, saying how to add one.
    let empty = Fleet::new();
    ok(empty.cmd().args(["profile", "create", "weekly", "--channel", "Stable"]));
    let err = fails(empty.cmd().args(["profile", "generate-run", "weekly"]), 1);
    assert!(err.contains("refit fleet member add"), "{err}");
}

#[test]
fn bad_stage_health_gates_are_refused_naming_the_field_and_the_fix_and_nothing_is_stored() {
    let f = Fleet::new();
    let stage = |gates: &str| {
        format!("stages:\n  - name: canary\n    groups: [{{name: canary}}]\n    healthGates: {gates}\n")
    };
    for (gates, says) in [
        ("[{type: pager}]", "health gate 'pager-1': unknown type 'pager' (expected"),
        (
            "[{type: http, url: 'gopher://shop/healthz'}]",
            "url: 'gopher://shop/healthz': the scheme must be http or https",
        ),
        ("[{type: http, url: 'http://u:secret@shop/'}]", "remove the user:password@ part"),
        ("[{type: http}]", "needs url:"),
        ("[{type: prometheus, url: 'http://prom:9090'}]", "needs query:"),
        ("[{type: http, url: 'http://shop/', soak: -5m}]", "soak '-5m' is negative"),
        ("[{type: http, url: 'http://shop/', timeout: 9000h}]", "at most one year"),
        (
            "[{type: http, url: 'http://shop/', soak: 10m, timeout: 5m}]",
            "make the timeout longer than the soak",
        ),
        ("[{type: command, command: []}]", "needs command:"),
        ("[{type: workloads}]", "put it in the members' plan file (gates:)"),
        ("[{type: http, url: 'http://shop/', sok: 2m}]", "sok"),
    ] {
        let p = f.file("s.yaml", &stage(gates));
        let err = fails(f.cmd().args(["strategy", "create", "x", "-f"]).arg(&p), 2);
        assert!(err.contains(says), "{gates}: {err}");
        assert!(!err.contains("secret"), "{err}");
        // The same file given to `run create --stages` is refused the same way.
        let err = fails(
            f.cmd()
                .args(["run", "create", "r", "--upgrade-type", "Full", "--kubernetes-version", "1.37.1"])
                .arg("--stages")
                .arg(&p),
            2,
        );
        assert!(err.contains(says), "{gates}: {err}");
    }
    let strategies: Value =
        serde_json::from_str(&ok(f.cmd().args(["strategy", "list", "-o", "json"]))).unwrap();
    assert_eq!(strategies, serde_json::json!([]));
    let runs: Value = serde_json::from_str(&ok(f.cmd().args(["run", "list", "-o", "json"]))).unwrap();
    assert_eq!(runs, serde_json::json!([]));
}

#[test]
fn a_run_carries_its_stage_health_gates_its_policy_and_what_a_failed_gate_does() {
    let f = Fleet::new();
    let p = f.file(
        "s.yaml",
        "stages:\n  - name: canary\n    groups: [{name: canary}]\n    healthGates: [{name: shop, type: http, url: 'http://127.0.0.1:9/healthz', soak: 30s, timeout: 5m}]\n  - name: prod\n    groups: [{name: prod}]\n",
    );
    let create = |name: &str, extra: &[&str]| {
        let mut c = f.cmd();
        c.args([
            "run",
            "create",
            name,
            "--upgrade-type",
            "Full",
            "--kubernetes-version",
            "1.37.1",
            "--stages",
        ])
        .arg(&p)
        .args(extra);
        c
    };
    ok(&mut create("strict", &["--policy", "strict", "--on-gate-failure", "fail"]));
    let v: Value = serde_json::from_str(&ok(f.cmd().args(["run", "show", "strict", "-o", "json"]))).unwrap();
    assert_eq!(v["spec"]["policy"], "strict", "{v:#}");
    assert_eq!(v["spec"]["onGateFailure"], "fail", "{v:#}");
    let gate = &v["stages"][0]["healthGates"][0];
    assert_eq!(gate["gate"]["name"], "shop", "{v:#}");
    assert_eq!(gate["gate"]["soakSeconds"], 30);
    // No member is in the canary group here: the stage is skipped, and its gate with it.
    assert_eq!(gate["state"], "Skipped");
    let table = ok(f.cmd().args(["run", "show", "strict"]));
    assert!(table.contains("version policy: strict; a failed health gate: fails the run"), "{table}");
    assert!(table.contains("health gate shop (http, soak 30s)"), "{table}");
    // The defaults, said as such.
    ok(&mut create("plain", &[]));
    let table = ok(f.cmd().args(["run", "show", "plain"]));
    assert!(table.contains("version policy: default; a failed health gate: pauses the run"), "{table}");
    // Bad values: exit 2, nothing created.
    for (flag, value) in [("--policy", "lax"), ("--on-gate-failure", "ignore")] {
        let out = create("bad", &[flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(value));
    }
    let runs: Value = serde_json::from_str(&ok(f.cmd().args(["run", "list", "-o", "json"]))).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(2), "{runs:#}");
}
