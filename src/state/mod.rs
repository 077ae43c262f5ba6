//! The state: what the last successful sync saw on each side, per path, the
//! temporary files being written, and the history of runs. This module owns
//! what every backend shares: the [`StateStore`] trait the engine talks to,
//! its types ([`StateRecord`], [`StateChange`], [`Partial`], [`RunRecord`],
//! [`StateError`]) and the per-job lock file. The SQLite backend is in
//! [`sqlite`], the group-commit thread that owns the store during a run in
//! [`writer`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use crate::model::RelPath;
use crate::model::{Kind, LocalMeta, RemoteMeta};

pub mod remote;
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
    #[error(
        "another ftpsync is running this job: its lock {path} exists on the server. If no run is going (one was killed), remove that directory on the server and run again"
    )]
    RemoteLocked { path: String },
    #[error("cannot read the state on the server ({path}): {failure}; nothing was changed")]
    RemoteRead {
        path: String,
        failure: crate::ftp::FtpFailure,
    },
    #[error(
        "the state on the server ({path}) cannot be used: {message}; nothing was changed. Delete it on the server to start over (the next run then adopts or uploads every file)"
    )]
    RemoteCorrupt { path: String, message: String },
    #[error("cannot save the state on the server ({path}): {failure}")]
    RemoteWrite {
        path: String,
        failure: crate::ftp::FtpFailure,
    },
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
    /// A server (`user@host:port`, see [`server_key`]) refused to resume a
    /// transfer in this direction: later runs do not try.
    RestartRefused(String, Restart),
}

/// A transfer direction whose resume (`REST` before `STOR` or `RETR`) a
/// server can refuse, e.g. ProFTPD's default `AllowStoreRestart off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Restart {
    /// `REST` + `STOR`: resuming an upload.
    Store,
    /// `REST` + `RETR`: resuming a download.
    Retrieve,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Store => "store",
            Restart::Retrieve => "retrieve",
        }
    }
}

/// How the state names a server in what it remembers about it:
/// `user@host:port` (never a password).
pub fn server_key(user: &str, host: &str, port: u16) -> String {
    format!("{user}@{host}:{port}")
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

/// What a run needs from the state, whatever keeps it: the engine and the
/// daemon see only this, so another backend (a server database for a fleet of
/// daemons) lands in one new file beside [`sqlite`].
pub trait StateStore: Send {
    /// The identity of the job the state belongs to (direction, server,
    /// roots), if one was recorded.
    fn binding(&self) -> Result<Option<String>, StateError>;

    /// Records the binding; if it differs from the stored one, the records
    /// describe another tree and are dropped. Returns whether that happened.
    fn bind(&mut self, binding: &str) -> Result<bool, StateError>;

    /// Every record, by path.
    fn load(&self) -> Result<BTreeMap<RelPath, StateRecord>, StateError>;

    /// Temporary files that were being written when a run stopped.
    fn pending(&self) -> Result<Vec<Partial>, StateError>;

    /// Applies changes atomically: all of them or none.
    fn apply(&mut self, changes: &[StateChange]) -> Result<(), StateError>;

    /// Appends a run to the history, keeping the newest [`MAX_RUNS`] and the
    /// first [`MAX_RUN_ERRORS`] error lines of each.
    fn record_run(&mut self, run: &RunRecord) -> Result<(), StateError>;

    /// Up to `limit` runs, newest first.
    fn history(&self, limit: usize) -> Result<Vec<RunRecord>, StateError>;

    /// The newest run, if any: what `/healthz` and the scheduler's catch-up
    /// look at.
    fn last_run(&self) -> Result<Option<RunRecord>, StateError> {
        Ok(self.history(1)?.into_iter().next())
    }

    /// Writes a consistent copy of everything committed so far to the new
    /// file `to`, in the format [`StateDb::open`] reads (for `state: remote`).
    fn snapshot(&self, to: &Path) -> Result<(), StateError>;
}

/// A boxed store is a store, so the writer and the engine can hold a
/// backend chosen at run time.
impl<S: StateStore + ?Sized> StateStore for Box<S> {
    fn binding(&self) -> Result<Option<String>, StateError> {
        (**self).binding()
    }
    fn bind(&mut self, binding: &str) -> Result<bool, StateError> {
        (**self).bind(binding)
    }
    fn load(&self) -> Result<BTreeMap<RelPath, StateRecord>, StateError> {
        (**self).load()
    }
    fn pending(&self) -> Result<Vec<Partial>, StateError> {
        (**self).pending()
    }
    fn apply(&mut self, changes: &[StateChange]) -> Result<(), StateError> {
        (**self).apply(changes)
    }
    fn record_run(&mut self, run: &RunRecord) -> Result<(), StateError> {
        (**self).record_run(run)
    }
    fn history(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        (**self).history(limit)
    }
    fn last_run(&self) -> Result<Option<RunRecord>, StateError> {
        (**self).last_run()
    }
    fn snapshot(&self, to: &Path) -> Result<(), StateError> {
        (**self).snapshot(to)
    }
}

/// The most runs the history keeps: recording one more drops the oldest, so
/// a daemon running every minute never grows the database without bound.
pub const MAX_RUNS: usize = 1000;

/// The most error lines kept per run; the full list is in the run's log.
pub const MAX_RUN_ERRORS: usize = 10;

/// The longest error line kept, in characters (a server's reply can be long).
pub const MAX_RUN_ERROR_LEN: usize = 1000;

/// One finished run, as the history keeps it. The error lines come from the
/// engine's messages, which never contain a password; nothing else here is
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// When the run started (RFC 3339 UTC, millisecond precision).
    #[serde(serialize_with = "serialize_utc")]
    pub started_at: DateTime<Utc>,
    /// When the run ended, whatever the outcome.
    #[serde(serialize_with = "serialize_utc")]
    pub finished_at: DateTime<Utc>,
    pub trigger: RunTrigger,
    pub outcome: RunOutcome,
    /// The exit code `ftpsync run` would have returned (see [`crate::error::exit`]).
    pub exit_code: i32,
    pub uploaded: u64,
    pub downloaded: u64,
    pub deleted: u64,
    pub mkdirs: u64,
    pub rmdirs: u64,
    pub adopted: u64,
    /// Items that failed.
    pub failed: u64,
    /// Bytes transferred, both directions.
    pub bytes: u64,
    /// The first few error lines (at most [`MAX_RUN_ERRORS`]), in the order
    /// they happened.
    pub errors: Vec<String>,
}

impl RunRecord {
    /// How long the run took; zero if the clock went backwards meanwhile.
    pub fn duration(&self) -> std::time::Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    /// The daemon's schedule came due.
    Schedule,
    /// The daemon started and found a scheduled run missed while it was down.
    CatchUp,
    /// `ftpsync run`, or a run asked of the daemon by hand.
    #[default]
    Manual,
}

/// How a run ended: in the history, in `ftpsync_runs_total{outcome}` and in
/// a hook's `FTPSYNC_OUTCOME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Everything done.
    Success,
    /// Some items failed; the rest were done and recorded.
    Partial,
    /// Nothing could be done: could not connect, log in or scan, or another error.
    Failed,
    /// Cancelled by a signal or the run's deadline; finished items are recorded.
    Stopped,
    /// A safety rule (delete limits, an empty root) stopped it before any change.
    Refused,
}

impl RunTrigger {
    const ALL: [RunTrigger; 3] = [
        RunTrigger::Schedule,
        RunTrigger::CatchUp,
        RunTrigger::Manual,
    ];

    /// The name in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RunTrigger::Schedule => "schedule",
            RunTrigger::CatchUp => "catch_up",
            RunTrigger::Manual => "manual",
        }
    }

    /// The inverse of [`RunTrigger::as_str`].
    pub fn parse(s: &str) -> Option<RunTrigger> {
        RunTrigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RunOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [RunOutcome; 5] = [
        RunOutcome::Success,
        RunOutcome::Partial,
        RunOutcome::Failed,
        RunOutcome::Stopped,
        RunOutcome::Refused,
    ];

    /// The name in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Partial => "partial",
            RunOutcome::Failed => "failed",
            RunOutcome::Stopped => "stopped",
            RunOutcome::Refused => "refused",
        }
    }

    /// The inverse of [`RunOutcome::as_str`].
    pub fn parse(s: &str) -> Option<RunOutcome> {
        RunOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A time as the history writes it: RFC 3339, UTC with `Z`, milliseconds
/// (fixed width, so the text sorts as the times do).
pub fn utc_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn serialize_utc<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&utc_text(t))
}

/// The error lines a backend keeps: the first [`MAX_RUN_ERRORS`], each cut
/// to [`MAX_RUN_ERROR_LEN`] characters.
fn kept_errors(errors: &[String]) -> Vec<String> {
    errors
        .iter()
        .take(MAX_RUN_ERRORS)
        .map(|e| match e.char_indices().nth(MAX_RUN_ERROR_LEN) {
            Some((cut, _)) => format!("{}…", &e[..cut]),
            None => e.clone(),
        })
        .collect()
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
pub(crate) mod tests {
    use super::*;

    /// A file record with every field set.
    pub(crate) fn file_record() -> StateRecord {
        StateRecord {
            kind: Kind::File,
            local: Some(LocalMeta::new(
                5,
                1_700_000_000_123_456_789,
                Some(Box::new([7; 32])),
            )),
            remote: Some(RemoteMeta::new(Some(5), crate::model::RemoteTime::Unknown)),
        }
    }

    /// A run with every field set, at whole milliseconds (what the history keeps).
    pub(crate) fn run_record(minute: u32) -> RunRecord {
        use chrono::TimeZone;
        let started_at = Utc.with_ymd_and_hms(2025, 3, 1, 12, minute, 0).unwrap();
        RunRecord {
            started_at,
            finished_at: started_at + chrono::TimeDelta::milliseconds(65_250),
            trigger: RunTrigger::CatchUp,
            outcome: RunOutcome::Partial,
            exit_code: 1,
            uploaded: 3,
            downloaded: 0,
            deleted: 1,
            mkdirs: 2,
            rmdirs: 0,
            adopted: 4,
            failed: 1,
            bytes: 1_572_864,
            errors: vec!["upload a.txt: 553 Permission denied".into()],
        }
    }

    /// The state holds one record per path, at a million paths: 48 bytes
    /// each (it was 72 with two-word optional sizes, 56 with the remote
    /// time unpacked).
    #[test]
    fn a_record_is_six_words() {
        assert_eq!(std::mem::size_of::<StateRecord>(), 48);
    }

    #[test]
    fn run_record_serializes_as_documented() {
        let json = serde_json::to_value(run_record(0)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "started_at": "2025-03-01T12:00:00.000Z",
                "finished_at": "2025-03-01T12:01:05.250Z",
                "trigger": "catch_up",
                "outcome": "partial",
                "exit_code": 1,
                "uploaded": 3,
                "downloaded": 0,
                "deleted": 1,
                "mkdirs": 2,
                "rmdirs": 0,
                "adopted": 4,
                "failed": 1,
                "bytes": 1_572_864,
                "errors": ["upload a.txt: 553 Permission denied"],
            })
        );
        assert_eq!(run_record(0).duration().as_millis(), 65_250);
    }

    #[test]
    fn names_round_trip_and_match_serde() {
        for t in RunTrigger::ALL {
            assert_eq!(RunTrigger::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for o in RunOutcome::ALL {
            assert_eq!(RunOutcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        assert_eq!(RunOutcome::parse("ok"), None);
    }

    #[test]
    fn errors_are_capped() {
        let many: Vec<String> = (0..25).map(|i| format!("error {i}")).collect();
        let kept = kept_errors(&many);
        assert_eq!(kept.len(), MAX_RUN_ERRORS);
        assert_eq!(kept[9], "error 9");
        let long = "é".repeat(MAX_RUN_ERROR_LEN + 5);
        let kept = kept_errors(&[long]);
        assert_eq!(kept[0].chars().count(), MAX_RUN_ERROR_LEN + 1);
        assert!(kept[0].ends_with('…'));
    }

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
