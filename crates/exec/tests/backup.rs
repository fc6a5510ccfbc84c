//! The etcd backup against the testbed's REAL etcd (3.6, TLS with client-certificate auth).

use std::path::Path;
use std::time::Instant;

use refit_exec::backup::{Error, EtcdEndpoint, Failure, etcd_snapshot};
use refit_testbed::pki::Pki;
use refit_testbed::{shared, unique_namespace};
use sha2::{Digest, Sha256};

fn endpoint() -> EtcdEndpoint {
    let tb = shared().unwrap();
    let (url, pki) = tb.etcd_endpoint();
    EtcdEndpoint { url, ca_file: pki.ca_cert, cert_file: pki.admin_cert, key_file: pki.admin_key }
}

/// A URL nothing listens on (a port just released).
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("https://127.0.0.1:{port}")
}

/// Every base64 line of a PEM key: none may appear in an error.
fn key_lines(key: &Path) -> Vec<String> {
    std::fs::read_to_string(key)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 8)
        .map(str::to_string)
        .collect()
}

fn assert_no_key_material(msg: &str, key: &Path) {
    for line in key_lines(key) {
        assert!(!msg.contains(&line), "key material in an error: {msg}");
    }
    assert!(!msg.contains("PRIVATE KEY-----"), "{msg}");
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_snapshot_of_the_testbed_is_written_verified_and_holds_the_cluster() {
    let tb = shared().unwrap();
    // Something created just before the backup must be in it: it is a snapshot of now.
    let ns = unique_namespace("backup-marker");
    tb.create_namespace(&ns).await.unwrap();
    let ep = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");

    let start = Instant::now();
    let backup = etcd_snapshot(std::slice::from_ref(&ep), &backups, "pre-upgrade").await.unwrap();
    let ours = start.elapsed();

    assert_eq!(backup.path, backups.join("pre-upgrade.db"));
    assert_eq!(backup.endpoint, ep.url);
    assert_eq!(files_in(&backups), vec!["pre-upgrade.db".to_string()], "no .part left behind");
    let data = std::fs::read(&backup.path).unwrap();
    assert_eq!(backup.bytes, data.len() as u64);
    assert_eq!(backup.sha256, hex::encode(Sha256::digest(&data)));
    // etcd's trailer: the last 32 bytes are the SHA-256 of the database before them.
    let (db, trailer) = data.split_at(data.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer);
    assert_eq!(data.len() % 512, 32, "a bbolt file (whole pages) plus the digest");
    assert_eq!(u32::from_le_bytes(data[16..20].try_into().unwrap()), 0xED0C_DAED, "bbolt magic");
    // Plausible: more than an empty etcd, and it holds the cluster's objects.
    assert!(backup.bytes > 256 * 1024, "{} bytes", backup.bytes);
    let has = |needle: &str| db.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("/registry/namespaces/kube-system"));
    assert!(has(&format!("/registry/namespaces/{ns}")), "the namespace created just before is in it");
    assert!(has("/registry/daemonsets/kube-system/kube-proxy"));
    assert!(
        backup.etcd_version.as_deref().is_some_and(|v| v.starts_with("3.6")),
        "{:?}",
        backup.etcd_version
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&backup.path).unwrap().permissions().mode() & 0o777, 0o600);

    // etcd's own verification, where etcdutl is at hand (REFIT_ETCDUTL, or beside etcdctl
    // in the testbed cache): `snapshot status` reads the database, `snapshot restore` checks
    // the SHA-256 trailer exactly as a disaster recovery would.
    let etcdutl = std::env::var_os("REFIT_ETCDUTL")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(tb.etcdctl().with_file_name("etcdutl")))
        .filter(|p| p.exists());
    match etcdutl {
        Some(etcdutl) => {
            let out = std::process::Command::new(&etcdutl)
                .args(["snapshot", "status", "-w", "json"])
                .arg(&backup.path)
                .output()
                .unwrap();
            assert!(out.status.success(), "etcdutl status: {}", String::from_utf8_lossy(&out.stderr));
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(
                status["revision"].as_i64().unwrap() > 0 && status["totalKey"].as_i64().unwrap() > 100,
                "{status}"
            );
            let restored = dir.path().join("restored");
            let out = std::process::Command::new(&etcdutl)
                .args(["snapshot", "restore"])
                .arg(&backup.path)
                .arg(format!("--data-dir={}", restored.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "etcdutl restore: {}", String::from_utf8_lossy(&out.stderr));
            assert!(restored.join("member/snap/db").exists());
            // Control: the same file with one byte flipped is refused by the same check.
            let mut bad = data.clone();
            bad[4096 + 100] ^= 0xff;
            let bad_path = dir.path().join("corrupt.db");
            std::fs::write(&bad_path, &bad).unwrap();
            let out = std::process::Command::new(&etcdutl)
                .args(["snapshot", "restore"])
                .arg(&bad_path)
                .arg(format!("--data-dir={}", dir.path().join("restored-bad").display()))
                .output()
                .unwrap();
            assert!(!out.status.success(), "etcdutl must refuse a corrupted snapshot");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("sha256"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!("etcdutl snapshot status: {status}; snapshot restore (hash checked): ok");
        }
        None => {
            println!("etcdutl is not in the testbed cache (etcd 3.6 moved `snapshot status` there): skipped")
        }
    }

    // The peer, same etcd, same moment: etcdctl snapshot save (it does not verify the digest;
    // etcdutl, which does, is not part of the testbed build).
    let peer_path = dir.path().join("etcdctl.db");
    let start = Instant::now();
    let out = std::process::Command::new(tb.etcdctl())
        .arg(format!("--endpoints={}", ep.url))
        .arg(format!("--cacert={}", ep.ca_file.display()))
        .arg(format!("--cert={}", ep.cert_file.display()))
        .arg(format!("--key={}", ep.key_file.display()))
        .args(["snapshot", "save"])
        .arg(&peer_path)
        .output()
        .unwrap();
    let peer = start.elapsed();
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    let peer_data = std::fs::read(&peer_path).unwrap();
    let (pdb, ptrailer) = peer_data.split_at(peer_data.len() - 32);
    assert_eq!(Sha256::digest(pdb).as_slice(), ptrailer, "etcdctl's file has the same trailer");
    println!(
        "etcd snapshot: refit {} bytes in {:.0} ms; etcdctl snapshot save {} bytes in {:.0} ms",
        backup.bytes,
        ours.as_secs_f64() * 1000.0,
        peer_data.len(),
        peer.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn an_existing_backup_is_never_overwritten() {
    let ep = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("keep.db");
    std::fs::write(&existing, b"an older backup").unwrap();
    let err = etcd_snapshot(std::slice::from_ref(&ep), dir.path(), "keep").await.unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    assert!(err.to_string().contains("keep.db") && err.to_string().contains("another backup name"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"an older backup");
    assert_eq!(files_in(dir.path()), vec!["keep.db".to_string()]);

    // A second snapshot under a new name leaves the first one alone.
    let first = etcd_snapshot(std::slice::from_ref(&ep), dir.path(), "first").await.unwrap();
    let before = std::fs::read(&first.path).unwrap();
    let err = etcd_snapshot(std::slice::from_ref(&ep), dir.path(), "first").await.unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&first.path).unwrap(), before);
    // A stale .part from a crashed attempt is not a backup: it is reclaimed.
    std::fs::write(dir.path().join("second.db.part"), b"half of a crashed attempt").unwrap();
    let second = etcd_snapshot(&[ep], dir.path(), "second").await.unwrap();
    assert!(second.bytes > 1024);
    assert_eq!(files_in(dir.path()), vec!["first.db", "keep.db", "second.db"]);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_with_a_clear_error_and_nothing_is_written() {
    let ep = endpoint();
    let other = tempfile::tempdir().unwrap();
    let foreign = Pki::generate(other.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = EtcdEndpoint { ca_file: foreign.ca_cert.clone(), ..ep.clone() };
    let err = etcd_snapshot(&[wrong], dir.path(), "x").await.unwrap_err();
    let Error::AllEndpointsFailed(failures) = &err else { panic!("{err}") };
    assert!(matches!(failures[0].reason, Failure::Tls(_)), "{err}");
    let msg = err.to_string();
    eprintln!("wrong CA: {msg}");
    assert!(msg.contains(&ep.url), "names the endpoint: {msg}");
    assert!(msg.contains(&foreign.ca_cert.display().to_string()) && msg.contains("etcd's CA"), "{msg}");
    assert_no_key_material(&msg, &ep.key_file);
    assert!(files_in(dir.path()).is_empty(), "nothing written: {:?}", files_in(dir.path()));
}

#[tokio::test]
async fn a_client_certificate_etcd_does_not_trust_is_refused() {
    let ep = endpoint();
    let other = tempfile::tempdir().unwrap();
    let foreign = Pki::generate(other.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong =
        EtcdEndpoint { cert_file: foreign.admin_cert.clone(), key_file: foreign.admin_key.clone(), ..ep };
    let err = etcd_snapshot(&[wrong], dir.path(), "x").await.unwrap_err();
    let msg = err.to_string();
    eprintln!("foreign client certificate: {msg}");
    assert!(msg.contains("TLS") && msg.contains("client certificate"), "{msg}");
    assert_no_key_material(&msg, &foreign.admin_key);
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn an_unreadable_or_malformed_key_is_named_without_its_contents() {
    let ep = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL=\n").unwrap();
    let err = etcd_snapshot(&[EtcdEndpoint { key_file: bad_key.clone(), ..ep.clone() }], dir.path(), "x")
        .await
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("malformed key: {msg}");
    assert!(msg.contains("client key") && msg.contains(&bad_key.display().to_string()), "{msg}");
    assert!(!msg.contains("TOPSECRET"), "{msg}");
    let missing = dir.path().join("missing.key");
    let err = etcd_snapshot(&[EtcdEndpoint { key_file: missing, ..ep }], dir.path(), "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.key") && err.contains("cannot read"), "{err}");
}

#[tokio::test]
async fn a_dead_first_endpoint_falls_over_to_the_second() {
    let ep = endpoint();
    let dead = EtcdEndpoint { url: dead_url(), ..ep.clone() };
    let dir = tempfile::tempdir().unwrap();
    let backup = etcd_snapshot(&[dead.clone(), ep.clone()], dir.path(), "failover").await.unwrap();
    assert_eq!(backup.endpoint, ep.url);
    let data = std::fs::read(&backup.path).unwrap();
    let (db, trailer) = data.split_at(data.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer);

    // All dead: each endpoint is named with its reason.
    let dead2 = EtcdEndpoint { url: dead_url(), ..ep };
    let err = etcd_snapshot(&[dead.clone(), dead2.clone()], dir.path(), "none").await.unwrap_err();
    let msg = err.to_string();
    eprintln!("all dead: {msg}");
    assert!(msg.contains(&dead.url) && msg.contains(&dead2.url) && msg.contains("is etcd running"), "{msg}");
    assert_eq!(files_in(dir.path()), vec!["failover.db".to_string()]);
}

#[tokio::test]
async fn bad_input_is_refused_before_contacting_etcd() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(etcd_snapshot(&[], dir.path(), "x").await, Err(Error::NoEndpoints)));
    let ep = endpoint();
    for name in ["../escape", ".hidden", "a/b", ""] {
        assert!(
            matches!(
                etcd_snapshot(std::slice::from_ref(&ep), dir.path(), name).await,
                Err(Error::Name { .. })
            ),
            "{name}"
        );
    }
    let plain = EtcdEndpoint { url: ep.url.replace("https://", "http://"), ..ep };
    let err = etcd_snapshot(&[plain], dir.path(), "x").await.unwrap_err().to_string();
    assert!(err.contains("expected https://HOST:PORT"), "{err}");
}

/// What `--backup-command` users run, `etcdctl snapshot save`, against the real etcd: its file
/// passes the same check a backup command's output must pass (bbolt meta page, etcd's digest,
/// 0600 in a 0700 directory), and so does refit's own snapshot; a copy with a flipped byte
/// or cut short does not.
#[tokio::test]
async fn etcdctls_snapshot_and_refits_own_pass_the_backup_command_check() {
    use refit_exec::backup::check_snapshot_file;
    use std::os::unix::fs::PermissionsExt;
    let tb = shared().unwrap();
    let ep = endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    refit_exec::backup::private_dir(&dir).unwrap();
    let path = dir.join("etcdctl.db");
    let out = std::process::Command::new(tb.etcdctl())
        .arg(format!("--endpoints={}", ep.url))
        .arg(format!("--cacert={}", ep.ca_file.display()))
        .arg(format!("--cert={}", ep.cert_file.display()))
        .arg(format!("--key={}", ep.key_file.display()))
        .args(["snapshot", "save"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "etcdctl writes 0600");
    let checked = check_snapshot_file(&path).await.unwrap();
    assert_eq!(checked.bytes, std::fs::metadata(&path).unwrap().len());

    let ours = etcd_snapshot(std::slice::from_ref(&ep), &dir, "refit").await.unwrap();
    assert_eq!(check_snapshot_file(&ours.path).await.unwrap().sha256, ours.sha256);

    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    let flipped = dir.join("flipped.db");
    std::fs::write(&flipped, &data).unwrap();
    std::fs::set_permissions(&flipped, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = check_snapshot_file(&flipped).await.unwrap_err().to_string();
    assert!(err.contains("SHA-256"), "{err}");
    let cut = dir.join("cut.db");
    std::fs::write(&cut, &data[..4096 * 3 + 100]).unwrap();
    std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(check_snapshot_file(&cut).await.is_err());
}
