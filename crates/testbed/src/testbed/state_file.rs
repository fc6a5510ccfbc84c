//! `state.json`, written by several processes at once without losing a change.
//!
//! Why: a detached sandbox's state file is changed by the process that started it, by every
//! `refit sandbox upgrade-node` (a member's new apiserver pid and binaries) and by chaos tests
//! (etcd or kwok started again with a new pid). A plain "write my copy" lets a process that read
//! the file before etcd was restarted write the dead etcd pid back, and the sandbox then looks
//! stopped for good (CI: every rerun of the chaos test refused with "the sandbox is not
//! running"). So a save is a three-way merge under an exclusive `flock`: each field this
//! process changed since it last read or wrote the file is taken from its copy, every other field
//! from the file as it is now.

use std::path::Path;

use serde_json::Value;

use crate::Error;
use crate::pki::write_file;

/// Merges `ours` (this process's state) into `theirs` (the file now), both descended from
/// `base` (what this process last read or wrote). Objects merge key by key, arrays of the same
/// length element by element; where both sides changed the same leaf, ours wins (the process
/// saving acts on what it just did).
pub(super) fn merge3(base: &Value, ours: &Value, theirs: &Value) -> Value {
    if ours == base {
        return theirs.clone();
    }
    if theirs == base || ours == theirs {
        return ours.clone();
    }
    match (base, ours, theirs) {
        (Value::Object(b), Value::Object(o), Value::Object(t)) => {
            let mut out = serde_json::Map::new();
            for key in o.keys().chain(t.keys()) {
                if out.contains_key(key) {
                    continue;
                }
                let (b, o, t) = (b.get(key), o.get(key), t.get(key));
                let merged = match (o, t) {
                    (Some(o), Some(t)) => Some(merge3(b.unwrap_or(&Value::Null), o, t)),
                    // Removed by one side: kept only if the other changed it.
                    (Some(o), None) => (b != Some(o)).then(|| o.clone()),
                    (None, Some(t)) => (b != Some(t)).then(|| t.clone()),
                    (None, None) => None,
                };
                if let Some(v) = merged {
                    out.insert(key.clone(), v);
                }
            }
            Value::Object(out)
        }
        (Value::Array(b), Value::Array(o), Value::Array(t)) if b.len() == o.len() && o.len() == t.len() => {
            Value::Array(b.iter().zip(o).zip(t).map(|((b, o), t)| merge3(b, o, t)).collect())
        }
        _ => ours.clone(),
    }
}

/// Holds an exclusive lock (`flock`, through std's `File::lock`) on `dir/state.lock` until
/// dropped (closing the file releases it).
pub(super) struct Locked {
    _file: std::fs::File,
}

impl Locked {
    pub(super) fn take(dir: &Path) -> Result<Locked, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("state.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.lock().map_err(|e| Error::io(&path, e))?;
        Ok(Locked { _file: file })
    }
}

/// Reads `dir/state.json` as JSON (`None` when it does not exist yet).
pub(super) fn read(dir: &Path) -> Result<Option<Value>, Error> {
    let path = dir.join("state.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::State { path: path.clone(), detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Replaces `dir/state.json` with `value` (private; through a temporary file of this process,
/// renamed, so a reader never sees half a file).
pub(super) fn write(dir: &Path, value: &Value) -> Result<(), Error> {
    let path = dir.join("state.json");
    let tmp = dir.join(format!("state.json.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Config(e.to_string()))?;
    write_file(&tmp, &text, true)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_field_only_the_other_process_changed_is_kept() {
        // The bug this module exists for: etcd restarted by another process while this one
        // changed a member's apiserver pid.
        let base = json!({"etcd_pid": 10, "members": [{"pids": {"api": 20}}, {"pids": {"api": 30}}]});
        let ours = json!({"etcd_pid": 10, "members": [{"pids": {"api": 21}}, {"pids": {"api": 30}}]});
        let theirs = json!({"etcd_pid": 11, "members": [{"pids": {"api": 20}}, {"pids": {"api": 30}}]});
        assert_eq!(
            merge3(&base, &ours, &theirs),
            json!({"etcd_pid": 11, "members": [{"pids": {"api": 21}}, {"pids": {"api": 30}}]})
        );
    }

    #[test]
    fn removals_and_conflicts() {
        let base = json!({"a": 1, "b": {"x": 1}, "c": 3});
        // Ours removed b.x and changed c; theirs changed c too and added d.
        let ours = json!({"a": 1, "b": {}, "c": 4});
        let theirs = json!({"a": 1, "b": {"x": 1}, "c": 5, "d": 6});
        assert_eq!(merge3(&base, &ours, &theirs), json!({"a": 1, "b": {}, "c": 4, "d": 6}));
        // A key theirs removed and ours did not touch stays removed.
        let theirs = json!({"a": 1, "c": 3});
        assert_eq!(merge3(&base, &json!({"a": 2, "b": {"x": 1}, "c": 3}), &theirs), json!({"a": 2, "c": 3}));
        // Arrays of another length: ours whole.
        assert_eq!(merge3(&json!([1]), &json!([1, 2]), &json!([3])), json!([1, 2]));
        // Nothing changed here: the file as it is.
        assert_eq!(merge3(&base, &base, &theirs), theirs);
    }

    #[test]
    fn two_writers_under_the_lock_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let base = json!({"etcd_pid": 1, "kwok_pid": 2});
        write(dir.path(), &base).unwrap();
        let writer = |field: &'static str, value: i64| {
            let dir = dir.path().to_path_buf();
            let base = base.clone();
            std::thread::spawn(move || {
                let _lock = Locked::take(&dir).unwrap();
                let theirs = read(&dir).unwrap().unwrap();
                let mut ours = base.clone();
                ours[field] = json!(value);
                write(&dir, &merge3(&base, &ours, &theirs)).unwrap();
            })
        };
        let (a, b) = (writer("etcd_pid", 100), writer("kwok_pid", 200));
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap(), json!({"etcd_pid": 100, "kwok_pid": 200}));
    }
}
