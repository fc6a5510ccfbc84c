//! The real build script against a corrupted cache entry (kwok: the quickest warm rebuild).

use refit_testbed::{BuildEvent, Cache, Check, Component, EntryState, TestbedVersions};

#[test]
fn a_corrupt_entry_is_detected_and_rebuilt_and_a_second_build_does_nothing() {
    let versions = TestbedVersions::from_env().unwrap();
    let component = Component::Kwok(versions.kwok.clone());
    let real = Cache::from_env().unwrap();
    assert!(matches!(real.state(&component, Check::Quick), EntryState::Ready(_)), "build the testbed first");

    // A private cache holding a copy of the real entry.
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::at(tmp.path().to_path_buf());
    let from = real.entry_dir(&component);
    let to = cache.entry_dir(&component);
    std::fs::create_dir_all(&to).unwrap();
    for f in ["kwok", "kwok.yaml", "manifest.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    assert!(matches!(cache.state(&component, Check::Full), EntryState::Ready(_)));

    // Truncate the binary, as a build killed mid-copy or a full disk would leave it.
    let bin = to.join("kwok");
    let len = std::fs::metadata(&bin).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&bin).unwrap().set_len(len / 2).unwrap();
    assert!(matches!(cache.state(&component, Check::Quick), EntryState::Corrupt(_)));

    let mut events = Vec::new();
    cache.ensure(std::slice::from_ref(&component), Check::Full, &mut |e| events.push(e)).unwrap();
    assert!(
        events.iter().any(|e| matches!(e, BuildEvent::Started { reason, .. } if reason.contains("bytes"))),
        "the rebuild says why: {events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, BuildEvent::Output { .. })), "progress lines are reported");
    assert!(events.iter().any(|e| matches!(e, BuildEvent::Finished { .. })));
    assert!(matches!(cache.state(&component, Check::Full), EntryState::Ready(_)));
    let out = std::process::Command::new(&bin).arg("--version").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("kwok version v{}", versions.kwok)), "{text}");

    let mut again = Vec::new();
    cache.ensure(std::slice::from_ref(&component), Check::Full, &mut |e| again.push(e)).unwrap();
    assert!(matches!(again.as_slice(), [BuildEvent::Cached(_)]), "{again:?}");
}
