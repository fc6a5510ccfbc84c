//! The release catalog a command uses, and refreshing it without a new build.
//!
//! Which catalog: `--catalog FILE` when given; else the one `refit catalog update` kept in the
//! state directory, when it is valid and at least as new as the one compiled in (a refit built
//! after the refresh knows more); else the compiled-in one. A kept catalog that no longer
//! reads (hand-edited, written by a newer refit) is skipped with a warning instead of making
//! every command fail: the compiled-in one is always there.
//!
//! Refreshing: from a whole catalog (`--from URL|FILE`) or from upstream's release markers;
//! the rules are `refit_core::refresh`'s. Nothing is written unless the result is valid and
//! something changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use refit_core::catalog::{Catalog, CatalogError};
use refit_core::refresh::{self, RefreshError, Refreshed};
use refit_exec::release::{Fetched, fetch};
use serde::Serialize;

/// Where upstream publishes its release markers (`stable-1.N.txt`).
pub const UPSTREAM: &str = "https://dl.k8s.io/release";

/// Where the catalog in use came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Origin {
    /// `--catalog FILE`.
    File {
        /// The file.
        path: PathBuf,
    },
    /// Kept by `refit catalog update`.
    Refreshed {
        /// The file.
        path: PathBuf,
    },
    /// Compiled into this binary.
    Embedded,
}

/// Why no catalog could be had.
#[derive(Debug, thiserror::Error)]
pub enum CatalogLoadError {
    /// `--catalog FILE` cannot be read.
    #[error("cannot read catalog {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A catalog that does not validate.
    #[error("{path}: {source}")]
    Invalid {
        /// The file (or `(embedded)`).
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: CatalogError,
    },
}

/// The catalog to use, and where it came from. `kept` is the refreshed catalog's path (None:
/// the default beside the store; a state directory that cannot be found means none).
pub fn load(explicit: Option<&Path>, kept: Option<&Path>) -> Result<(Catalog, Origin), CatalogLoadError> {
    if let Some(path) = explicit {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CatalogLoadError::Read { path: path.to_path_buf(), source })?;
        let c = Catalog::from_yaml(&text)
            .map_err(|source| CatalogLoadError::Invalid { path: path.to_path_buf(), source })?;
        return Ok((c, Origin::File { path: path.to_path_buf() }));
    }
    let embedded = Catalog::embedded()
        .map_err(|source| CatalogLoadError::Invalid { path: PathBuf::from("(embedded)"), source })?;
    let path = match kept {
        Some(p) => Some(p.to_path_buf()),
        None => refit_store::catalog::default_catalog_path().ok(),
    };
    let Some(path) = path else { return Ok((embedded, Origin::Embedded)) };
    match refit_store::catalog::read(&path) {
        Ok(None) => Ok((embedded, Origin::Embedded)),
        Ok(Some(text)) => match Catalog::from_yaml(&text) {
            Ok(c) if not_older(&c, &embedded) => Ok((c, Origin::Refreshed { path })),
            Ok(_) => Ok((embedded, Origin::Embedded)),
            Err(e) => {
                tracing::warn!(
                    "the refreshed catalog {} is not usable ({e}); using the built-in one (refit catalog update writes a new one)",
                    path.display()
                );
                Ok((embedded, Origin::Embedded))
            }
        },
        Err(e) => {
            tracing::warn!("the refreshed catalog is not usable ({e}); using the built-in one");
            Ok((embedded, Origin::Embedded))
        }
    }
}

fn not_older(kept: &Catalog, embedded: &Catalog) -> bool {
    match (kept.updated.parse::<Date>(), embedded.updated.parse::<Date>()) {
        (Ok(k), Ok(e)) => k >= e,
        _ => kept.updated >= embedded.updated,
    }
}

/// Where a refresh reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Source {
    /// A whole catalog at an http(s) address.
    Url {
        /// The address.
        url: String,
    },
    /// A whole catalog in a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// Upstream's release markers under `base` (`{base}/stable-1.N.txt`).
    Upstream {
        /// The base address.
        base: String,
    },
}

impl Source {
    /// `--from` as written: an http(s) address, else a file; absent: upstream's markers.
    pub fn parse(from: Option<&str>, upstream: &str) -> Source {
        match from {
            Some(f) if f.starts_with("http://") || f.starts_with("https://") => {
                Source::Url { url: f.to_string() }
            }
            Some(f) => Source::File { path: PathBuf::from(f) },
            None => Source::Upstream { base: upstream.trim_end_matches('/').to_string() },
        }
    }
}

/// What `refit catalog update` did.
#[derive(Debug, Clone, Serialize)]
pub struct Update {
    /// Where it read.
    pub source: Source,
    /// Where the catalog is kept.
    pub path: PathBuf,
    /// The catalog's date now.
    pub updated: String,
    /// What changed.
    #[serde(flatten)]
    pub refreshed: Refreshed,
}

/// Why a refresh changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The source could not be read (network, file, HTTP status).
    #[error("{0}")]
    Fetch(String),
    /// The source is not usable (invalid, older, a bad marker).
    #[error(transparent)]
    Refused(#[from] RefreshError),
    /// The catalog in use could not be read.
    #[error(transparent)]
    Load(#[from] CatalogLoadError),
    /// The refreshed catalog could not be written.
    #[error(transparent)]
    Store(#[from] refit_store::Error),
}

/// Refreshes the catalog kept at `path` (None: beside the default store) from `source`.
pub async fn update(source: Source, path: Option<&Path>, today: Date) -> Result<Update, UpdateError> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => refit_store::catalog::default_catalog_path()?,
    };
    let (current, _) = load(None, Some(&path))?;
    let (refreshed, text) = match &source {
        Source::Url { url } => {
            let text = match fetch(url).await.map_err(UpdateError::Fetch)? {
                Fetched::Body(t) => t,
                Fetched::Missing => return Err(UpdateError::Fetch(format!("{url} answered HTTP 404"))),
            };
            (refresh::adopt(&current, &text)?, text)
        }
        Source::File { path: file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| UpdateError::Fetch(format!("cannot read {}: {e}", file.display())))?;
            (refresh::adopt(&current, &text)?, text)
        }
        Source::Upstream { base } => {
            let mut markers = BTreeMap::new();
            for minor in refresh::minors_to_ask(&current, today) {
                let url = format!("{base}/stable-{}.{}.txt", minor.major, minor.minor);
                match fetch(&url).await.map_err(UpdateError::Fetch)? {
                    Fetched::Body(t) => {
                        markers.insert(minor, refresh::parse_marker(minor, &t)?);
                    }
                    Fetched::Missing => {}
                }
            }
            let r = refresh::with_patches(&current, &markers, today)?;
            let text = serde_saphyr::to_string(&r.catalog)
                .map_err(|e| RefreshError::Invalid(CatalogError::Parse(e.to_string())))?;
            (r, text)
        }
    };
    if refreshed.changed {
        refit_store::catalog::write(&path, &text)?;
    }
    Ok(Update { source, path, updated: refreshed.catalog.updated.clone(), refreshed })
}
