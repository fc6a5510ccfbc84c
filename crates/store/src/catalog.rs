//! The refreshed release catalog, kept next to the store (`<state dir>/catalog.yaml`).
//!
//! `refit catalog update` writes it; every command that reads the catalog prefers it to the
//! one compiled in when it is newer. It is written like everything refit keeps: in the private
//! state directory (0700), as a 0600 file, complete or not at all (a temporary file fsynced
//! and renamed over the old one), never through a symlink.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, default_path, private_dir, private_file};

/// The file's name in the state directory.
pub const FILE: &str = "catalog.yaml";

/// Where the refreshed catalog lives: beside the default store (`REFIT_STATE_DIR`, else the
/// user's state directory).
pub fn default_catalog_path() -> Result<PathBuf, Error> {
    let store = default_path()?;
    Ok(store.parent().map(|d| d.join(FILE)).unwrap_or_else(|| PathBuf::from(FILE)))
}

/// The refreshed catalog's text, if one was written.
pub fn read(path: &Path) -> Result<Option<String>, Error> {
    private_file(path)?;
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Permissions { path: path.to_path_buf(), source }),
    }
}

/// Replaces the refreshed catalog with `text`, atomically.
pub fn write(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    private_dir(dir)?;
    private_file(path)?;
    let io = |source| Error::Dir { path: path.to_path_buf(), source };
    let tmp = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        // A temporary name planted as a symlink is refused, not followed.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn written_private_and_whole_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let path = state.join(FILE);
        assert_eq!(read(&path).unwrap(), None);
        write(&path, "schema: 1\n").unwrap();
        write(&path, "schema: 1\nupdated: x\n").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("schema: 1\nupdated: x\n"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&state), 0o700);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)]);
    }

    #[test]
    fn a_catalog_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(read(&path), Err(Error::Unsafe { .. })));
        assert!(matches!(write(&path, "y"), Err(Error::Unsafe { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
    }
}
