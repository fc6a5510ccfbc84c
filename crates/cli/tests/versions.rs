//! `refit versions` as a user runs it.

use assert_cmd::Command;

fn refit() -> Command {
    Command::cargo_bin("refit").unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = refit().args(args).args(["-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refused(args: &[&str], expected: &str) {
    let out = refit().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn the_path_walks_each_minor_on_its_newest_patch() {
    let p = json(&["versions", "--from", "1.35.2", "--to", "1.37"]);
    let hops: Vec<&str> = p["hops"].as_array().unwrap().iter().map(|h| h["to"].as_str().unwrap()).collect();
    assert_eq!(hops.len(), 2);
    assert!(hops[0].starts_with("1.36.") && hops[1].starts_with("1.37."));
    let strict = json(&["versions", "--from", "1.35.2", "--to", "1.37", "--policy", "strict"]);
    assert_eq!(strict["hops"].as_array().unwrap().len(), 3, "strict goes to the newest 1.35 patch first");
    let pinned = json(&["versions", "--from", "1.35.2", "--to", "1.37.0"]);
    assert_eq!(pinned["to"], "1.37.0");
}

#[test]
fn targets_from_a_version_and_the_full_list() {
    let from = json(&["versions", "--from", "1.36.0"]);
    let targets: Vec<&str> =
        from["targets"].as_array().unwrap().iter().map(|t| t["version"].as_str().unwrap()).collect();
    assert!(targets.contains(&"1.36.4") && targets.contains(&"1.37.0"));
    assert!(!targets.iter().any(|t| t.starts_with("1.38") || t.starts_with("1.35")));
    let all = json(&["versions", "--all"]);
    assert!(all.as_array().unwrap().iter().any(|r| r["version"] == "1.19.0"));
    let supported = json(&["versions"]);
    assert!(
        !supported.as_array().unwrap().iter().any(|r| r["version"] == "1.19.0"),
        "end of life hidden by default"
    );
}

#[test]
fn refusals_say_why_and_force_says_what_it_overrode() {
    refused(&["versions", "--from", "1.37.1", "--to", "1.36"], "downgrades are not supported");
    refused(&["versions", "--from", "1.30.1", "--to", "1.30.14"], "end of life");
    refused(&["versions", "--from", "1.36.1", "--to", "1.36.77"], "not a known Kubernetes release");
    refused(&["versions", "--from", "1.36.1", "--to", "1.39"], "no known release of 1.39");
    refused(&["versions", "--from", "one", "--to", "1.37"], "not a Kubernetes version");
    refused(&["versions", "--to", "1.37"], "--to needs --from");
    refused(&["versions", "--policy", "lax"], "unknown policy");
    let forced = json(&["versions", "--from", "1.37.1", "--to", "1.36.4", "--force"]);
    assert!(forced["forced"][0].as_str().unwrap().contains("downgrade"));
}

#[test]
fn a_catalog_file_replaces_the_built_in_one_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "schema: 1\nreleases: [oops").unwrap();
    refused(&["versions", "--catalog", bad.to_str().unwrap()], "bad.yaml");
    refused(&["versions", "--catalog", "/nonexistent/catalog.yaml"], "cannot read catalog");

    // A refreshed catalog with a 1.38 the binary has never heard of.
    let shipped = include_str!("../../../data/catalog.yaml");
    let newer = format!(
        "{shipped}\n  - minor: \"1.38\"\n    ga: \"2026-12-16\"\n    end_of_life: \"2028-02-28\"\n    patches: [\"1.38.0\"]\n    kubeadm: {{etcd: \"3.7.1-0\", coredns: \"v1.14.7\", pause: \"3.10.2\"}}\n    removed_apis: []\n"
    );
    let path = dir.path().join("newer.yaml");
    std::fs::write(&path, newer).unwrap();
    let p = json(&["versions", "--catalog", path.to_str().unwrap(), "--from", "1.37.1", "--to", "1.38"]);
    assert_eq!(p["to"], "1.38.0");
}

#[test]
fn path_output_snapshots() {
    let table = refit()
        .args(["versions", "--from", "1.35.2", "--to", "1.37", "--policy", "strict"])
        .output()
        .unwrap();
    insta::assert_snapshot!("path_table", String::from_utf8(table.stdout).unwrap());
    let json = refit()
        .args(["versions", "--from", "1.37.1", "--to", "1.36.4", "--force", "-o", "json"])
        .output()
        .unwrap();
    insta::assert_snapshot!("forced_path_json", String::from_utf8(json.stdout).unwrap());
    let yaml = refit().args(["versions", "--from", "1.36.0", "--to", "1.36", "-o", "yaml"]).output().unwrap();
    insta::assert_snapshot!("patch_path_yaml", String::from_utf8(yaml.stdout).unwrap());
}
