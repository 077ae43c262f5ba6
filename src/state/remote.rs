//! The state kept on the server (`state: remote`), for runners that start
//! from nothing every time (CI). The state database itself travels: it lives
//! at `<root>/.ftpsync/<job name>.db`, is downloaded into a local working
//! copy before planning, and the working copy is written back during the run
//! and at its end, always to `<job name>.db.part` first and then renamed over
//! the real name, so the server only ever holds a whole database.
//!
//! Why the SQLite file and not an export: it is the format the rest of the
//! program already reads, versions and checks (schema version, `quick_check`),
//! the history travels with it, and a `VACUUM INTO` copy of it is one compact
//! file with no WAL beside it.
//!
//! A run also takes a lock on the server: the directory
//! `<root>/.ftpsync/<job name>.lock`, made with MKD, which is atomic on every
//! server (a second MKD of the same name fails). It is removed when the run
//! ends, however it ends; only a run killed outright (SIGKILL, a lost
//! runner) leaves it behind, and the next run then says so and stops.
//!
//! The state is read only when the server says it has none (550 and a
//! listing of `.ftpsync/` without it) as "no state yet"; any other failure,
//! and a file that is not a sound state database, is an error that stops
//! the run before anything is changed.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{StateDb, StateError};
use crate::ftp::FtpFailure;
use crate::job::RESERVED_DIR;
use crate::model::RelPath;
use crate::store::{Attempt, FtpStore, RemoteSession, SetMeta, Store};

/// The state of one job on the server, and the local working copy.
#[derive(Clone)]
pub struct RemoteState {
    store: FtpStore,
    /// `.ftpsync`, relative to the remote root.
    dir: RelPath,
    /// `.ftpsync/<name>.db`.
    file: RelPath,
    /// `.ftpsync/<name>.db.part`: where uploads go before the rename.
    temp: RelPath,
    /// `.ftpsync/<name>.lock`.
    lock: RelPath,
    /// The local working copy (the job's `state_path`).
    working: PathBuf,
}

/// Whether the server had a state to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Found,
    /// The server has none: the first run of this job against this root.
    Absent,
}

/// The file-name stem the job's name gives on the server: letters, digits,
/// `-`, `_` and `.` are kept, anything else becomes `_`.
pub fn file_stem(job_name: &str) -> String {
    let stem: String = job_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // A name of dots alone would not be a file name.
    if stem.chars().all(|c| c == '.') {
        format!("_{stem}")
    } else {
        stem
    }
}

impl RemoteState {
    /// The state of job `job_name` under the remote root of `store`, with
    /// its working copy at `working`.
    pub fn new(store: FtpStore, job_name: &str, working: PathBuf) -> RemoteState {
        let stem = file_stem(job_name);
        let rel = |name: String| {
            RelPath::parse(&format!("{RESERVED_DIR}/{name}"))
                .expect("a reserved directory and a sanitized name form a valid path")
        };
        RemoteState {
            dir: RelPath::parse(RESERVED_DIR).expect("a valid name"),
            file: rel(format!("{stem}.db")),
            temp: rel(format!("{stem}.db.part")),
            lock: rel(format!("{stem}.lock")),
            store,
            working,
        }
    }

    /// The state file's absolute path on the server.
    pub fn remote_file(&self) -> String {
        self.store.path(&self.file)
    }

    /// The working copy.
    pub fn working(&self) -> &Path {
        &self.working
    }

    /// Takes the job's lock on the server (creating `.ftpsync/` if needed).
    pub async fn lock(&self) -> Result<(), StateError> {
        let lock = self.store.path(&self.lock);
        let failed = |failure| StateError::RemoteWrite {
            path: lock.clone(),
            failure,
        };
        // Owner-only where the server takes SITE CHMOD: a web server running as
        // another user must not serve the state of a site it publishes.
        self.store
            .mkdir(&self.dir, Some(0o700))
            .await
            .map_err(failed)?;
        match self.store.create_dir_exclusive(&self.lock).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StateError::RemoteLocked { path: lock.clone() }),
            Err(e) => Err(failed(e)),
        }
    }

    /// Removes the lock (best effort: a failure is logged, and the next run
    /// reports the lock it finds), and closes the connection.
    pub async fn unlock(&self) {
        if let Err(e) = self.store.rmdir(&self.lock).await {
            tracing::warn!(
                "could not remove the lock {} on the server: {e}",
                self.store.path(&self.lock)
            );
        }
        self.close().await;
    }

    /// Closes the connection (a plan's, which takes no lock).
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// Downloads the server's state to `to` (a new file) and checks that it
    /// is a state database this build can use. On [`Fetched::Absent`] `to`
    /// does not exist.
    pub async fn fetch(&self, to: &Path) -> Result<Fetched, StateError> {
        let remote = self.remote_file();
        let read_failed = |failure| StateError::RemoteRead {
            path: remote.clone(),
            failure,
        };
        let mut attempt = Download {
            remote: &remote,
            local: to,
        };
        match self.store.retrying(&mut attempt).await {
            Ok(_) => {}
            Err(FtpFailure::Reply { code: 550, .. }) if !self.listed().await? => {
                remove_db_files(to);
                return Ok(Fetched::Absent);
            }
            Err(e) => {
                remove_db_files(to);
                return Err(read_failed(e));
            }
        }
        let check = to.to_owned();
        let checked = tokio::task::spawn_blocking(move || check_downloaded(&check))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        checked.map(|()| Fetched::Found).map_err(|message| {
            remove_db_files(to);
            StateError::RemoteCorrupt {
                path: remote,
                message,
            }
        })
    }

    /// Whether the listing of `.ftpsync/` shows the state file: a 550 to
    /// RETR means "no state" only when it does not.
    async fn listed(&self) -> Result<bool, StateError> {
        let entries =
            self.store
                .list_dir(&self.dir)
                .await
                .map_err(|failure| StateError::RemoteRead {
                    path: self.store.path(&self.dir),
                    failure,
                })?;
        let name = self.file.name().as_bytes();
        Ok(entries.iter().any(|e| e.name == name))
    }

    /// Replaces the working copy with the server's state, or removes it if
    /// the server has none. Only the job's lock holder may call this.
    pub async fn load_working_copy(&self) -> Result<Fetched, StateError> {
        let download = sibling(&self.working, ".download");
        remove_db_files(&download);
        if let Some(dir) = self.working.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Open {
                path: self.working.clone(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let fetched = self.fetch(&download).await?;
        // A WAL left beside the old copy must not be applied to the new one.
        remove_db_files(&self.working);
        if fetched == Fetched::Found {
            std::fs::rename(&download, &self.working).map_err(|e| StateError::Open {
                path: self.working.clone(),
                message: format!("cannot replace the working copy: {e}"),
            })?;
        }
        Ok(fetched)
    }

    /// Uploads `snapshot` (a closed database file) as the server's state:
    /// to the temporary name, checked, then renamed over the real one.
    pub async fn save(&self, snapshot: &Path) -> Result<(), StateError> {
        let failed = |failure| StateError::RemoteWrite {
            path: self.remote_file(),
            failure,
        };
        let len = std::fs::metadata(snapshot)
            .map_err(|e| failed(FtpFailure::Local(format!("{}: {e}", snapshot.display()))))?
            .len();
        let mut attempt = Upload {
            local: snapshot,
            len,
            temp: &self.store.path(&self.temp),
            remote: &self.remote_file(),
        };
        self.store.retrying(&mut attempt).await.map_err(failed)
    }
}

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a database file and its WAL and shared-memory files, if present.
pub fn remove_db_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(sibling(path, suffix));
    }
}

/// Whether a downloaded file is a state database this build can use: an
/// SQLite file (an empty or truncated file is not "no state"), sound, not
/// from a newer ftpsync, and written by ftpsync (schema version 1 or more).
fn check_downloaded(path: &Path) -> Result<(), String> {
    let head = std::fs::read(path).map_err(|e| e.to_string())?;
    if !head.starts_with(b"SQLite format 3\0") {
        return Err(format!(
            "not an SQLite database ({} bytes)",
            head.len().min(1 << 20)
        ));
    }
    let db = StateDb::open(path, false)
        .map_err(|e| e.to_string())?
        .ok_or("the file vanished")?;
    if db.version() < 1 {
        return Err("not written by ftpsync (no schema version)".into());
    }
    Ok(())
}

/// RETR of the state file into a fresh local file.
struct Download<'a> {
    remote: &'a str,
    local: &'a Path,
}

#[async_trait]
impl Attempt for Download<'_> {
    type Output = u64;
    async fn run(&mut self, s: &mut dyn RemoteSession) -> Result<u64, FtpFailure> {
        Ok(s.fetch(self.remote, self.local, None, false).await?.0)
    }
}

/// STOR of a snapshot to the temporary name, a size check, RNFR/RNTO.
struct Upload<'a> {
    local: &'a Path,
    len: u64,
    temp: &'a str,
    remote: &'a str,
}

#[async_trait]
impl Attempt for Upload<'_> {
    type Output = ();
    async fn run(&mut self, s: &mut dyn RemoteSession) -> Result<(), FtpFailure> {
        let owner_only = SetMeta {
            mtime: None,
            mode: Some(0o600),
            hash: false,
            size: true,
        };
        let stored = s
            .send(self.local, self.len, self.temp, 0, owner_only)
            .await?;
        if stored.sent != self.len || stored.size.is_some_and(|n| n != self.len) {
            return Err(FtpFailure::Verify(format!(
                "the server has {} bytes of {}",
                stored.size.unwrap_or(stored.sent),
                self.len
            )));
        }
        s.place(self.temp, self.remote).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe_file_names() {
        assert_eq!(file_stem("site"), "site");
        assert_eq!(file_stem("my site/prod"), "my_site_prod");
        assert_eq!(file_stem("v1.2-beta_3"), "v1.2-beta_3");
        assert_eq!(file_stem(".."), "_..");
        assert_eq!(file_stem("ä\r\n"), "___");
    }

    #[test]
    fn only_sound_state_databases_pass() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(
            check_downloaded(&empty)
                .unwrap_err()
                .contains("not an SQLite")
        );
        let text = d.path().join("text.db");
        std::fs::write(&text, b"<html>502 Bad Gateway</html>").unwrap();
        assert!(check_downloaded(&text).is_err());

        let good = d.path().join("good.db");
        let mut db = StateDb::open(&good, true).unwrap().unwrap();
        db.bind("push|remote").unwrap();
        drop(db);
        check_downloaded(&good).unwrap();
        // Cut short: the header is there, the pages are not.
        let bytes = std::fs::read(&good).unwrap();
        let cut = d.path().join("cut.db");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(check_downloaded(&cut).is_err());
        // An SQLite file that ftpsync did not write.
        let foreign = d.path().join("foreign.db");
        rusqlite::Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(
            check_downloaded(&foreign)
                .unwrap_err()
                .contains("not written by ftpsync")
        );
    }
}
