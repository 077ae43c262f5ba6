//! The state: what the last successful sync saw on each side, per path, the
//! temporary files being written, and the history of runs. This module owns
//! the types every backend shares ([`StateRecord`], [`StateChange`],
//! [`Partial`], [`StateError`]) and the per-job lock file; the SQLite
//! backend is in [`sqlite`], the group-commit thread that owns the database
//! during a run in [`writer`].

use std::fs;
use std::path::{Path, PathBuf};

use crate::model::RelPath;
use crate::model::{Kind, LocalMeta, RemoteMeta};

pub mod sqlite;
pub mod writer;

pub use sqlite::{SCHEMA_VERSION, StateDb};
pub use writer::StateWriter;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "state database {path} was written by a newer ftpsync (schema {found}, this build knows {SCHEMA_VERSION}); nothing was changed"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error(
        "state database {path} is damaged ({message}); nothing was changed. Move it away to start over (the next run then re-adopts matching files)"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "another ftpsync is running this job (lock {path} is held); try again when it has finished"
    )]
    Locked { path: PathBuf },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database writer stopped: {0}")]
    Writer(String),
}

/// What the last sync saw of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    pub kind: Kind,
    pub local: Option<LocalMeta>,
    /// For files: the remote fingerprint; `mtime` is `Unknown` while not yet
    /// re-listed after an upload (the next listing fills it in).
    pub remote: Option<RemoteMeta>,
}

/// A change to the state, applied by the writer.
#[derive(Debug, Clone)]
pub enum StateChange {
    Put(RelPath, StateRecord),
    Remove(RelPath),
    /// A temporary file is about to be written (journal for cleanup and resume).
    PendingAdd(Partial),
    /// The temporary file (by its `temp` path) is gone (renamed or deleted).
    PendingRemove(String),
    /// The remote fingerprint of an existing record, as re-listed after an upload.
    RefreshRemote(RelPath, RemoteMeta),
}

/// A temporary file being written by a transfer: journaled so that the next
/// run can resume it (if its source is unchanged) or remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The temporary file: an absolute remote path (uploads) or an absolute local path (downloads).
    pub temp: String,
    /// Which side the temporary file is on.
    pub side: crate::model::Side,
    /// The path it will become.
    pub path: RelPath,
    /// The source's size when the transfer started.
    pub size: u64,
    /// The source's time when the transfer started: local mtime in ns
    /// (uploads) or the remote time as stored (downloads).
    pub stamp: String,
}

/// Holds the job's lock file; released on drop (and by the OS if the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

/// Takes the per-job lock beside the state database. A lock left by a killed
/// process is released by the OS, so it is never stale.
pub fn lock(state_path: &Path) -> Result<StateLock, StateError> {
    let lock_path = lock_path(state_path);
    if let Some(dir) = lock_path.parent() {
        fs::create_dir_all(dir).map_err(|e| StateError::Open {
            path: state_path.to_owned(),
            message: format!("cannot create directory {}: {e}", dir.display()),
        })?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StateError::Open {
            path: lock_path.clone(),
            message: e.to_string(),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(StateLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(StateError::Locked { path: lock_path }),
        Err(fs::TryLockError::Error(e)) => Err(StateError::Open {
            path: lock_path,
            message: format!("cannot lock: {e}"),
        }),
    }
}

fn lock_path(state_path: &Path) -> PathBuf {
    let mut s = state_path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let l = lock(&path).unwrap();
        assert!(matches!(lock(&path), Err(StateError::Locked { .. })));
        drop(l);
        lock(&path).unwrap();
    }
}
