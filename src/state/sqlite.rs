//! The SQLite backend: one file per job in WAL mode, schema versioned with
//! `PRAGMA user_version` and upgraded step by step (`MIGRATIONS`). A run
//! opens it for writing under the job's lock; `plan` and `history` open it
//! read-only and may do so while a run writes.
//!
//! Durability: every completed operation is committed within about 20 ms
//! (completions that arrive together share one transaction, see
//! [`super::StateWriter`]). WAL with `synchronous=NORMAL` keeps the database
//! consistent across a crash of ftpsync at any point; a power loss may forget
//! the last few commits, which only means the next run re-checks those files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use chrono::{DateTime, Utc};

use super::{
    MAX_RUNS, Partial, Restart, RunOutcome, RunRecord, RunTrigger, StateChange, StateError,
    StateRecord, StateStore, kept_errors, utc_text,
};
use crate::model::{Kind, LocalMeta, RelPath, RemoteMeta, RemoteTime};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;

/// The schema steps: `MIGRATIONS[v]` takes a database from version `v` to
/// `v + 1`. Opening an older database runs the missing steps in one
/// transaction, so it is either fully upgraded or left as it was.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 0 → 1: the records and the journal of temporary files.
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS entries (
        path TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('file', 'dir')),
        local_size INTEGER,
        local_mtime_ns INTEGER,
        local_sha256 BLOB,
        remote_size INTEGER,
        remote_mtime TEXT
     );
     CREATE TABLE IF NOT EXISTS pending (
        temp TEXT PRIMARY KEY,
        side TEXT NOT NULL CHECK (side IN ('local', 'remote')),
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        stamp TEXT NOT NULL
     );",
    // 1 → 2: the history of runs. Times are RFC 3339 UTC text (see
    // `utc_text`), `errors` a JSON array of strings; `id` orders the runs;
    // `triggered_by` is `RunRecord::trigger` (TRIGGER is an SQL keyword).
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        triggered_by TEXT NOT NULL CHECK (triggered_by IN ('schedule', 'catch_up', 'manual')),
        outcome TEXT NOT NULL
            CHECK (outcome IN ('success', 'partial', 'failed', 'stopped', 'refused')),
        exit_code INTEGER NOT NULL,
        uploaded INTEGER NOT NULL,
        downloaded INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        mkdirs INTEGER NOT NULL,
        rmdirs INTEGER NOT NULL,
        adopted INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        errors TEXT NOT NULL
     );",
];

/// The columns of `runs` in the order [`StateDb::history`] reads them.
const RUN_COLUMNS: &str = "started_at, finished_at, triggered_by, outcome, exit_code, uploaded, downloaded, deleted, mkdirs, rmdirs, adopted, failed, bytes, errors";

/// An open state database.
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
    /// The schema as opened: [`SCHEMA_VERSION`], except for a read-only
    /// database, which is read as it is and never upgraded.
    version: i64,
}

impl StateDb {
    /// Opens the database, creating and upgrading it if `create` is set
    /// (for a run, under the job's lock).
    ///
    /// `create = false` is for `plan` and `history`, which may look while
    /// another process holds the lock and writes: it opens an existing
    /// database read-only (WAL readers see the last commit and never block
    /// the writer), reads an older schema as it is, and returns `Ok(None)`
    /// if there is none.
    ///
    /// A database that is damaged or newer than this build is refused before
    /// anything could write to it: it is checked through a read-only
    /// connection first, so not even a WAL checkpoint touches the file.
    pub fn open(path: &Path, create: bool) -> Result<Option<StateDb>, StateError> {
        Ok(Self::open_reading(path, create, |_| Ok(()))?.map(|(db, ())| db))
    }

    /// [`StateDb::open`], and `read` run on the database as soon as it is
    /// known to be sound. A run that reads its records at once reads them
    /// through the connection that checked the file, whose page cache the
    /// check has just filled, before the connection for writing is opened
    /// (a database that needs a migration is read after it, as it is).
    pub fn open_reading<R>(
        path: &Path,
        create: bool,
        read: impl FnOnce(&StateDb) -> Result<R, StateError>,
    ) -> Result<Option<(StateDb, R)>, StateError> {
        let exists = path.exists();
        if !create && !exists {
            return Ok(None);
        }
        let mut read = Some(read);
        let mut early = None;
        if exists {
            let (conn, version) = Self::connect_checked(path, false)?;
            let checked = StateDb {
                conn,
                path: path.to_owned(),
                version,
            };
            if !create {
                let r = read.take().map(|read| read(&checked)).transpose()?;
                return Ok(r.map(|r| (checked, r)));
            }
            if version == SCHEMA_VERSION {
                early = read.take().map(|read| read(&checked)).transpose()?;
            }
        } else if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| StateError::Open {
                path: path.to_owned(),
                message: format!("cannot create directory: {e}"),
            })?;
        }
        let (mut conn, version) = Self::connect_checked(path, true)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(|e| corrupt(path, e))?;
        if version < SCHEMA_VERSION {
            migrate(&mut conn, path)?;
        }
        let db = StateDb {
            conn,
            path: path.to_owned(),
            version: SCHEMA_VERSION,
        };
        let r = match (early, read) {
            (Some(r), _) => r,
            (None, Some(read)) => read(&db)?,
            (None, None) => unreachable!("the records are read once"),
        };
        Ok(Some((db, r)))
    }

    /// [`StateDb::open`] with `create`, for a state this run has already
    /// opened and checked, and still holds the job's lock on: the schema
    /// version is checked again, but not every page (`quick_check` reads
    /// the whole file, once a run is enough).
    pub fn reopen(path: &Path) -> Result<Option<StateDb>, StateError> {
        if !path.exists() {
            return Self::open(path, true);
        }
        let (conn, version) = Self::connect_checked(path, true)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(|e| corrupt(path, e))?;
        if version < SCHEMA_VERSION {
            // Not one this run opened (that one was migrated): the full way.
            drop(conn);
            return Self::open(path, true);
        }
        Ok(Some(StateDb {
            conn,
            path: path.to_owned(),
            version,
        }))
    }

    /// Opens a connection and refuses a database this build cannot use.
    /// `write` opens it for writing (creating the file if needed); the
    /// read-only opening also runs `quick_check`, so a file that exists is
    /// checked once, before anything could write to it.
    fn connect_checked(path: &Path, write: bool) -> Result<(Connection, i64), StateError> {
        let flags = if write {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| StateError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| corrupt(path, e))?;
        let version = user_version(&conn).map_err(|e| corrupt(path, e))?;
        if version < 0 {
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                message: format!("schema version {version}"),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: path.to_owned(),
                found: version,
            });
        }
        if !write {
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| corrupt(path, e))?;
            if check != "ok" {
                return Err(StateError::Corrupt {
                    path: path.to_owned(),
                    message: check,
                });
            }
        }
        Ok((conn, version))
    }

    /// The schema version as opened (0: an empty file, no ftpsync state).
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The identity of the job the state belongs to (direction, server, roots).
    pub fn binding(&self) -> Result<Option<String>, StateError> {
        if self.version < 1 {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'binding'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records the binding; if it differs from the stored one, the old records
    /// describe another tree and are dropped. Returns whether that happened.
    /// An unchanged binding is not written again: most runs open a state
    /// bound to their own tree, and need no write transaction for it.
    pub fn bind(&mut self, binding: &str) -> Result<bool, StateError> {
        let old = self.binding()?;
        if old.as_deref() == Some(binding) {
            return Ok(false);
        }
        let reset = old.is_some();
        let tx = self.conn.transaction()?;
        if reset {
            tx.execute("DELETE FROM entries", [])?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('binding', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![binding],
        )?;
        tx.commit()?;
        Ok(reset)
    }

    /// The directions in which `server` ([`super::server_key`]) refused to
    /// resume a transfer in an earlier run. Kept in `meta` (one key per
    /// server and direction, valued with the time it was learned), which
    /// every schema since version 1 has: no migration, and it survives a
    /// binding change (it describes the server, not the tree).
    pub fn restart_refused(&self, server: &str) -> Result<BTreeSet<Restart>, StateError> {
        let mut out = BTreeSet::new();
        if self.version < 1 {
            return Ok(out);
        }
        for r in [Restart::Store, Restart::Retrieve] {
            let found: Option<String> = self
                .conn
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    params![restart_key(server, r)],
                    |row| row.get(0),
                )
                .optional()?;
            if found.is_some() {
                out.insert(r);
            }
        }
        Ok(out)
    }

    /// Every record, by path.
    pub fn load(&self) -> Result<BTreeMap<RelPath, StateRecord>, StateError> {
        if self.version < 1 {
            return Ok(BTreeMap::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT path, kind, local_size, local_mtime_ns, local_sha256, remote_size, remote_mtime FROM entries",
        )?;
        let mut rows = stmt.query([])?;
        // Collected, then built in one go: a map built from sorted entries
        // has full nodes (inserting one by one leaves them half full).
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            // Text columns are read in place (not copied into a String
            // each): a state of a million records is three million copies less.
            let path = text_column(row, 0)?;
            let bad = |what: &str| StateError::Corrupt {
                path: self.path.clone(),
                message: format!("{what} in record {path:?}"),
            };
            let rel = RelPath::parse(path).map_err(|_| bad("bad path"))?;
            let kind = match text_column(row, 1)? {
                "file" => Kind::File,
                "dir" => Kind::Dir,
                _ => return Err(bad("bad kind")),
            };
            let local = match (row.get::<_, Option<i64>>(2)?, row.get::<_, Option<i64>>(3)?) {
                (Some(size), Some(mtime_ns)) => {
                    let sha: Option<Vec<u8>> = row.get(4)?;
                    Some(LocalMeta::new(
                        u64::try_from(size).map_err(|_| bad("bad size"))?,
                        mtime_ns,
                        sha.and_then(|v| v.try_into().ok()).map(Box::new),
                    ))
                }
                _ => None,
            };
            let remote_size: Option<i64> = row.get(5)?;
            let remote_mtime = match row.get_ref(6)? {
                rusqlite::types::ValueRef::Null => None,
                _ => Some(text_column(row, 6)?),
            };
            let remote = match (remote_size, remote_mtime) {
                (None, None) => None,
                // A negative size is one an older version kept of a listing
                // that claimed more than i64::MAX bytes: read as unknown.
                (size, mtime) => Some(RemoteMeta::new(
                    size.and_then(|s| u64::try_from(s).ok()),
                    mtime
                        .and_then(RemoteTime::parse_stored)
                        .unwrap_or(RemoteTime::Unknown),
                )),
            };
            out.push((
                rel,
                StateRecord {
                    kind,
                    local,
                    remote,
                },
            ));
        }
        drop(rows);
        drop(stmt);
        // The pages read for this are not needed again before the run's
        // writes: give the page cache back (2 MiB, at the peak of a run).
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(out.into_iter().collect())
    }

    /// Temporary files that were being written when a run stopped.
    pub fn pending(&self) -> Result<Vec<Partial>, StateError> {
        if self.version < 1 {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT temp, side, path, size, stamp FROM pending ORDER BY temp")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let temp: String = row.get(0)?;
            let side = match row.get::<_, String>(1)?.as_str() {
                "local" => crate::model::Side::Local,
                _ => crate::model::Side::Remote,
            };
            let Ok(path) = RelPath::parse(&row.get::<_, String>(2)?) else {
                continue;
            };
            out.push(Partial {
                temp,
                side,
                path,
                size: row.get::<_, i64>(3)?.max(0) as u64,
                stamp: row.get(4)?,
            });
        }
        Ok(out)
    }

    /// Applies changes in one transaction.
    pub fn apply(&mut self, changes: &[StateChange]) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO entries (path, kind, local_size, local_mtime_ns, local_sha256, remote_size, remote_mtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(path) DO UPDATE SET kind = excluded.kind, local_size = excluded.local_size,
                   local_mtime_ns = excluded.local_mtime_ns, local_sha256 = excluded.local_sha256,
                   remote_size = excluded.remote_size, remote_mtime = excluded.remote_mtime",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM entries WHERE path = ?1")?;
            let mut padd = tx.prepare_cached(
                "INSERT OR REPLACE INTO pending (temp, side, path, size, stamp) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut prm = tx.prepare_cached("DELETE FROM pending WHERE temp = ?1")?;
            let mut refresh = tx.prepare_cached(
                "UPDATE entries SET remote_size = ?2, remote_mtime = ?3 WHERE path = ?1 AND kind = 'file'",
            )?;
            let mut note =
                tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
            for c in changes {
                match c {
                    StateChange::Put(p, r) => {
                        let l = r.local.as_ref();
                        let rm = r.remote.as_ref();
                        put.execute(params![
                            p.as_str(),
                            r.kind.as_str(),
                            l.map(|l| l.size() as i64),
                            l.map(|l| l.mtime_ns),
                            l.and_then(|l| l.sha256.as_ref().map(|h| h.to_vec())),
                            rm.and_then(|m| m.size().map(|s| s as i64)),
                            rm.map(|m| m.mtime().to_stored()),
                        ])?;
                    }
                    StateChange::Remove(p) => {
                        del.execute(params![p.as_str()])?;
                    }
                    StateChange::PendingAdd(p) => {
                        let side = match p.side {
                            crate::model::Side::Local => "local",
                            crate::model::Side::Remote => "remote",
                        };
                        padd.execute(params![
                            p.temp,
                            side,
                            p.path.as_str(),
                            p.size as i64,
                            p.stamp
                        ])?;
                    }
                    StateChange::PendingRemove(p) => {
                        prm.execute(params![p])?;
                    }
                    StateChange::RefreshRemote(p, m) => {
                        refresh.execute(params![
                            p.as_str(),
                            m.size().map(|s| s as i64),
                            m.mtime().to_stored()
                        ])?;
                    }
                    StateChange::RestartRefused(server, restart) => {
                        note.execute(params![
                            restart_key(server, *restart),
                            utc_text(&Utc::now())
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Appends a run to the history and drops all but the newest
    /// [`MAX_RUNS`], in one transaction. For runs that end before the writer
    /// starts (connect failures, refusals); during a run use
    /// [`super::StateWriter::record_run`].
    pub fn record_run(&mut self, run: &RunRecord) -> Result<(), StateError> {
        // A list of strings always encodes.
        let errors =
            serde_json::to_string(&kept_errors(&run.errors)).unwrap_or_else(|_| "[]".to_owned());
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ),
            params![
                utc_text(&run.started_at),
                utc_text(&run.finished_at),
                run.trigger.as_str(),
                run.outcome.as_str(),
                run.exit_code,
                count(run.uploaded),
                count(run.downloaded),
                count(run.deleted),
                count(run.mkdirs),
                count(run.rmdirs),
                count(run.adopted),
                count(run.failed),
                count(run.bytes),
                errors,
            ],
        )?;
        // The id of the oldest run to drop, if there are more than MAX_RUNS.
        tx.execute(
            "DELETE FROM runs WHERE id <= (SELECT id FROM runs ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![count(MAX_RUNS as u64)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` runs, newest (last recorded) first.
    pub fn history(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        if self.version < 2 {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
        ))?;
        let mut rows = stmt.query(params![count(limit as u64)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(self.run_from_row(row)?);
        }
        Ok(out)
    }

    /// The newest run, if any.
    pub fn last_run(&self) -> Result<Option<RunRecord>, StateError> {
        Ok(self.history(1)?.into_iter().next())
    }

    fn run_from_row(&self, row: &rusqlite::Row<'_>) -> Result<RunRecord, StateError> {
        let bad = |what: &str| StateError::Corrupt {
            path: self.path.clone(),
            message: format!("{what} in the history of runs"),
        };
        let time = |i: usize| -> Result<DateTime<Utc>, StateError> {
            let text: String = row.get(i)?;
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad("bad time"))
        };
        let number = |i: usize| -> Result<u64, StateError> {
            u64::try_from(row.get::<_, i64>(i)?).map_err(|_| bad("negative count"))
        };
        let errors: String = row.get(13)?;
        Ok(RunRecord {
            started_at: time(0)?,
            finished_at: time(1)?,
            trigger: RunTrigger::parse(&row.get::<_, String>(2)?)
                .ok_or_else(|| bad("bad trigger"))?,
            outcome: RunOutcome::parse(&row.get::<_, String>(3)?)
                .ok_or_else(|| bad("bad outcome"))?,
            exit_code: row.get(4)?,
            uploaded: number(5)?,
            downloaded: number(6)?,
            deleted: number(7)?,
            mkdirs: number(8)?,
            rmdirs: number(9)?,
            adopted: number(10)?,
            failed: number(11)?,
            bytes: number(12)?,
            errors: serde_json::from_str(&errors).map_err(|_| bad("bad error list"))?,
        })
    }

    /// Writes a consistent copy of the database, as of its last commit, to
    /// the new file `to` (`VACUUM INTO`): one compact file with no WAL
    /// beside it, which is what travels to the server with `state: remote`.
    pub fn snapshot(&self, to: &Path) -> Result<(), StateError> {
        let target = to.to_str().ok_or_else(|| StateError::Open {
            path: to.to_owned(),
            message: "the path is not UTF-8".into(),
        })?;
        self.conn.execute("VACUUM INTO ?1", params![target])?;
        Ok(())
    }

    /// `PRAGMA integrity_check` result ("ok" when healthy).
    pub fn integrity_check(&self) -> Result<String, StateError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// The SQLite store; the methods are inherent too, so callers need not
/// import the trait.
impl StateStore for StateDb {
    fn binding(&self) -> Result<Option<String>, StateError> {
        StateDb::binding(self)
    }
    fn bind(&mut self, binding: &str) -> Result<bool, StateError> {
        StateDb::bind(self, binding)
    }
    fn load(&self) -> Result<BTreeMap<RelPath, StateRecord>, StateError> {
        StateDb::load(self)
    }
    fn pending(&self) -> Result<Vec<Partial>, StateError> {
        StateDb::pending(self)
    }
    fn apply(&mut self, changes: &[StateChange]) -> Result<(), StateError> {
        StateDb::apply(self, changes)
    }
    fn record_run(&mut self, run: &RunRecord) -> Result<(), StateError> {
        StateDb::record_run(self, run)
    }
    fn history(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        StateDb::history(self, limit)
    }
    fn last_run(&self) -> Result<Option<RunRecord>, StateError> {
        StateDb::last_run(self)
    }
    fn snapshot(&self, to: &Path) -> Result<(), StateError> {
        StateDb::snapshot(self, to)
    }
}

/// A count or size as SQLite stores it (a signed 64-bit integer; no real
/// count comes near the limit).
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn corrupt(path: &Path, e: rusqlite::Error) -> StateError {
    StateError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The `meta` key remembering that `server` refused a resume in direction `r`.
fn restart_key(server: &str, r: Restart) -> String {
    format!("restart_refused:{}:{server}", r.as_str())
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction. The version
/// is read again inside it, so two openers cannot both run a step.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = user_version(&tx)?;
    if version > SCHEMA_VERSION {
        return Err(StateError::TooNew {
            path: path.to_owned(),
            found: version,
        });
    }
    let first = usize::try_from(version).unwrap_or(0);
    for step in MIGRATIONS.iter().skip(first) {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// A text column of `row`, borrowed from SQLite's copy of the row. A
/// value of another type fails as `row.get::<_, String>` would (naming the
/// column and the type found), and so does text that is not UTF-8.
fn text_column<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    let value = row.get_ref(i)?;
    value.as_str().map_err(|e| match e {
        rusqlite::types::FromSqlError::InvalidType => rusqlite::Error::InvalidColumnType(
            i,
            row.as_ref()
                .column_name(i)
                .map_or_else(|_| i.to_string(), str::to_owned),
            value.data_type(),
        ),
        other => rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            Box::new(other),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{file_record as rec, run_record};
    use crate::state::{MAX_RUN_ERRORS, StateWriter};

    /// The schema of version 1 exactly as ftpsync 0.1 created it, so the
    /// migration is tested against what is on disk out there, not against
    /// `MIGRATIONS[0]`.
    const V1_SCHEMA: &str = "PRAGMA journal_mode=WAL;
         BEGIN;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS entries (
            path TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('file', 'dir')),
            local_size INTEGER,
            local_mtime_ns INTEGER,
            local_sha256 BLOB,
            remote_size INTEGER,
            remote_mtime TEXT
         );
         CREATE TABLE IF NOT EXISTS pending (
            temp TEXT PRIMARY KEY,
            side TEXT NOT NULL CHECK (side IN ('local', 'remote')),
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            stamp TEXT NOT NULL
         );
         PRAGMA user_version = 1;
         COMMIT;";

    /// A version 1 database holding a binding, a file, a directory and a
    /// journaled temporary file, written with plain SQL.
    fn v1_database(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(V1_SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO meta VALUES ('binding', 'push|h');
             INSERT INTO entries VALUES ('a/b c.txt', 'file', 5, 1700000000123456789,
                 x'0707070707070707070707070707070707070707070707070707070707070707', 5, NULL);
             INSERT INTO entries VALUES ('a', 'dir', NULL, NULL, NULL, NULL, NULL);
             INSERT INTO pending VALUES ('/www/.ftpsync-1.part', 'remote', 'a/b c.txt', 5, '1');",
        )
        .unwrap();
    }

    fn v1_expected() -> BTreeMap<RelPath, StateRecord> {
        let dir = StateRecord {
            kind: Kind::Dir,
            local: None,
            remote: None,
        };
        BTreeMap::from([
            (RelPath::parse("a").unwrap(), dir),
            (RelPath::parse("a/b c.txt").unwrap(), rec()),
        ])
    }

    /// A remote size an older version kept of a listing that claimed more
    /// than i64::MAX bytes (stored negative) reads as unknown, not as a
    /// damaged state nor as a size of nearly 2^64 bytes.
    #[test]
    fn a_negative_remote_size_reads_as_unknown() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        v1_database(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("UPDATE entries SET remote_size = -1 WHERE kind = 'file'")
            .unwrap();
        let state = StateDb::open(&path, false)
            .unwrap()
            .unwrap()
            .load()
            .unwrap();
        let remote = state["a/b c.txt"].remote.as_ref().unwrap();
        assert_eq!(remote.size(), None);
    }

    fn raw_version(path: &Path) -> i64 {
        user_version(&Connection::open(path).unwrap()).unwrap()
    }

    /// A refused resume is remembered per server and direction, across a
    /// binding change, in a database of any schema since version 1.
    #[test]
    fn refused_restarts_are_remembered_per_server() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        v1_database(&path);
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        let a = crate::state::server_key("u", "ftp.example", 21);
        let b = crate::state::server_key("other", "ftp.example", 21);
        assert!(db.restart_refused(&a).unwrap().is_empty());
        db.apply(&[StateChange::RestartRefused(a.clone(), Restart::Store)])
            .unwrap();
        assert!(db.bind("pull|h").unwrap());
        drop(db);
        let db = StateDb::open(&path, false).unwrap().unwrap();
        assert_eq!(
            db.restart_refused(&a).unwrap(),
            BTreeSet::from([Restart::Store])
        );
        assert!(db.restart_refused(&b).unwrap().is_empty());
        assert_eq!(db.load().unwrap(), BTreeMap::new());
    }

    #[test]
    fn roundtrip_and_versioning() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s/state.db");
        assert!(StateDb::open(&path, false).unwrap().is_none());
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        assert!(!db.bind("push|h").unwrap());
        let p = RelPath::parse("a/b c.txt").unwrap();
        db.apply(&[
            StateChange::Put(p.clone(), rec()),
            StateChange::PendingAdd(Partial {
                temp: "/www/.ftpsync-0000000000000001.part".into(),
                side: crate::model::Side::Remote,
                path: p.clone(),
                size: 5,
                stamp: "1".into(),
            }),
        ])
        .unwrap();
        let all = db.load().unwrap();
        assert_eq!(all.get(&p), Some(&rec()));
        assert_eq!(db.pending().unwrap().len(), 1);
        // The same binding again keeps the records and writes nothing.
        let changes = db.conn.total_changes();
        assert!(!db.bind("push|h").unwrap());
        assert_eq!(db.conn.total_changes(), changes);
        assert_eq!(db.load().unwrap().len(), 1);
        // Another binding drops the records.
        assert!(db.bind("push|other").unwrap());
        assert!(db.load().unwrap().is_empty());
        drop(db);
        assert_eq!(raw_version(&path), SCHEMA_VERSION);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        // A newer database is refused, for a run and for a plan, and left
        // byte for byte as it was.
        let before = fs::read(&path).unwrap();
        for create in [true, false] {
            let err = StateDb::open(&path, create).err().unwrap();
            assert!(matches!(err, StateError::TooNew { found: 99, .. }), "{err}");
            assert_eq!(fs::read(&path).unwrap(), before);
        }
    }

    #[test]
    fn version_1_migrates_keeping_its_data() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        v1_database(&path);
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        assert_eq!(raw_version(&path), 2);
        assert_eq!(db.binding().unwrap().as_deref(), Some("push|h"));
        assert_eq!(db.load().unwrap(), v1_expected());
        let pending = db.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].temp, "/www/.ftpsync-1.part");
        assert_eq!(pending[0].side, crate::model::Side::Remote);
        assert!(db.history(10).unwrap().is_empty());
        assert_eq!(db.last_run().unwrap(), None);
        // The upgraded database works like a new one.
        assert!(!db.bind("push|h").unwrap());
        db.record_run(&run_record(0)).unwrap();
        assert_eq!(db.last_run().unwrap(), Some(run_record(0)));
        assert_eq!(db.integrity_check().unwrap(), "ok");
        drop(db);
        // Opening it again runs no step twice.
        let db = StateDb::open(&path, true).unwrap().unwrap();
        assert_eq!(db.history(10).unwrap(), vec![run_record(0)]);
        assert_eq!(db.load().unwrap(), v1_expected());
    }

    #[test]
    fn failed_migration_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        v1_database(&path);
        // A table in the way makes step 1 → 2 fail halfway through the
        // transaction (after the version check, before the version bump).
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE runs (x); INSERT INTO runs VALUES (1);")
            .unwrap();
        let err = StateDb::open(&path, true).err().unwrap();
        assert!(err.to_string().contains("runs"), "{err}");
        assert_eq!(raw_version(&path), 1);
        let conn = Connection::open(&path).unwrap();
        let entries: i64 = conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .unwrap();
        let runs: i64 = conn
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!((entries, runs), (2, 1));
        drop(conn);

        // From version 0 both steps share the transaction: when the second
        // fails, the first's tables are gone too.
        let path = d.path().join("v0.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE runs (x);")
            .unwrap();
        assert!(StateDb::open(&path, true).is_err());
        assert_eq!(raw_version(&path), 0);
        let tables: Vec<String> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, vec!["runs"]);
    }

    #[test]
    fn history_is_newest_first_and_pruned() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        assert_eq!(db.last_run().unwrap(), None);
        let nth = |i: i64| {
            let mut r = run_record(0);
            r.started_at += chrono::TimeDelta::seconds(i);
            r.finished_at += chrono::TimeDelta::seconds(i);
            r.exit_code = i32::try_from(i).unwrap();
            r
        };
        let total = MAX_RUNS as i64 + 5;
        for i in 0..total {
            db.record_run(&nth(i)).unwrap();
        }
        let all = db.history(usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_RUNS);
        assert_eq!(all[0], nth(total - 1));
        assert_eq!(all[MAX_RUNS - 1], nth(5));
        assert_eq!(db.history(2).unwrap(), vec![nth(total - 1), nth(total - 2)]);
        assert_eq!(db.last_run().unwrap(), Some(nth(total - 1)));
        // Through the trait, as the engine sees it.
        let store: Box<dyn StateStore> = Box::new(db);
        assert_eq!(store.last_run().unwrap(), Some(nth(total - 1)));
    }

    #[test]
    fn run_errors_are_capped_when_stored() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        let mut run = run_record(0);
        run.outcome = RunOutcome::Failed;
        run.trigger = RunTrigger::Schedule;
        run.errors = (0..15)
            .map(|i| format!("upload f{i}: 451 aborted"))
            .collect();
        db.record_run(&run).unwrap();
        let back = db.last_run().unwrap().unwrap();
        assert_eq!(back.errors, run.errors[..MAX_RUN_ERRORS]);
        assert_eq!(back.outcome, RunOutcome::Failed);
        assert_eq!(back.trigger, RunTrigger::Schedule);
    }

    #[test]
    fn corrupt_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        fs::write(
            &path,
            b"this is not a database, just some text that is long enough",
        )
        .unwrap();
        let err = StateDb::open(&path, true).err().unwrap();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert_eq!(
            fs::read(&path).unwrap(),
            b"this is not a database, just some text that is long enough"
        );
    }

    /// `open_reading` reads a sound database (through the connection that
    /// checked it) and hands back one that writes; it never reads a damaged
    /// one, and leaves it as it was.
    #[test]
    fn open_reading_reads_only_a_sound_database() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        db.apply(&[StateChange::Put(
            RelPath::parse("a/b.txt").unwrap(),
            crate::state::tests::file_record(),
        )])
        .unwrap();
        drop(db);
        let (mut db, records) = StateDb::open_reading(&path, true, |db| db.load())
            .unwrap()
            .unwrap();
        assert_eq!(
            records.keys().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["a/b.txt"]
        );
        db.apply(&[StateChange::Remove(RelPath::parse("a/b.txt").unwrap())])
            .unwrap();
        assert!(db.load().unwrap().is_empty());
        drop(db);

        let mut bytes = fs::read(&path).unwrap();
        let page = 4096;
        for b in &mut bytes[page..page + 200] {
            *b = 0xa5;
        }
        fs::write(&path, &bytes).unwrap();
        let mut read = false;
        let err = StateDb::open_reading(&path, true, |_| {
            read = true;
            Ok(())
        })
        .err()
        .unwrap();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(!read, "a damaged database was read");
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    /// A database of an older schema is read by `open_reading` only after
    /// its migration, through the connection that migrated it.
    #[test]
    fn open_reading_reads_an_old_schema_after_its_migration() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        v1_database(&path);
        let (db, seen) = StateDb::open_reading(&path, true, |db| Ok(db.version()))
            .unwrap()
            .unwrap();
        assert_eq!(seen, SCHEMA_VERSION);
        assert_eq!(db.version(), SCHEMA_VERSION);
    }

    /// A record whose path is not text (a blob: the column's text affinity
    /// turns numbers into text), or is text that is not UTF-8, is refused,
    /// the blob with the column's name and the type found.
    #[test]
    fn records_with_bad_column_types_are_refused_by_name() {
        for (value, want) in [
            (
                "x'00ff'",
                "Invalid column type Blob at index: 0, name: path",
            ),
            (
                "CAST(x'ff' AS TEXT)",
                "Conversion error from type Text at index: 0",
            ),
        ] {
            let d = tempfile::tempdir().unwrap();
            let path = d.path().join("state.db");
            let db = StateDb::open(&path, true).unwrap().unwrap();
            db.conn
                .execute_batch(&format!(
                    "INSERT INTO entries (path, kind) VALUES ({value}, 'file')"
                ))
                .unwrap();
            let err = db.load().err().unwrap().to_string();
            assert!(err.contains(want), "{value}: {err}");
        }
    }

    fn insert_run_sql(exit_code: i32) -> String {
        format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES ('2025-03-01T13:00:00.000Z',
             '2025-03-01T13:00:01.000Z', 'manual', 'success', {exit_code}, 0, 0, 0, 0, 0, 0, 0, 0, '[]')"
        )
    }

    #[test]
    fn reader_sees_commits_while_a_run_writes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        // The run: holds the lock and owns the database through the writer.
        let _lock = crate::state::lock(&path).unwrap();
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        db.bind("push|h").unwrap();
        db.record_run(&run_record(0)).unwrap();
        let w = StateWriter::start(db);
        w.send(StateChange::Put(RelPath::parse("a").unwrap(), rec()));
        w.record_run(run_record(1));
        w.flush().unwrap();

        // `ftpsync history` meanwhile, in another process.
        let mut reader = StateDb::open(&path, false).unwrap().unwrap();
        assert_eq!(
            reader.history(10).unwrap(),
            vec![run_record(1), run_record(0)]
        );
        assert_eq!(reader.load().unwrap().len(), 1);
        assert_eq!(reader.binding().unwrap().as_deref(), Some("push|h"));
        assert!(
            reader.record_run(&run_record(2)).is_err(),
            "reader can write"
        );

        // A write transaction in progress: readers, old and new, see the
        // last commit and do not wait for it.
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch(&format!(
                "BEGIN IMMEDIATE; {}; DELETE FROM entries;",
                insert_run_sql(7)
            ))
            .unwrap();
        let started = std::time::Instant::now();
        let late = StateDb::open(&path, false).unwrap().unwrap();
        for r in [&reader, &late] {
            assert_eq!(r.last_run().unwrap(), Some(run_record(1)));
            assert_eq!(r.load().unwrap().len(), 1);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(reader.last_run().unwrap().unwrap().exit_code, 7);
        assert!(late.load().unwrap().is_empty());

        // The writer goes on while the readers are open.
        w.record_run(run_record(3));
        w.flush().unwrap();
        assert_eq!(late.last_run().unwrap(), Some(run_record(3)));
        drop((reader, late, other));
        let db = w.finish().unwrap();
        assert_eq!(db.history(usize::MAX).unwrap().len(), 4);
        assert_eq!(db.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn read_only_open_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        // An older database is read as it is, not upgraded.
        let path = d.path().join("v1.db");
        v1_database(&path);
        let before = fs::read(&path).unwrap();
        let db = StateDb::open(&path, false).unwrap().unwrap();
        assert_eq!(db.binding().unwrap().as_deref(), Some("push|h"));
        assert_eq!(db.load().unwrap(), v1_expected());
        assert_eq!(db.pending().unwrap().len(), 1);
        assert_eq!(db.history(10).unwrap(), vec![]);
        drop(db);
        assert_eq!(raw_version(&path), 1);
        assert_eq!(fs::read(&path).unwrap(), before);

        // A closed database, WAL files gone: opens, reads, stays as it was.
        let path = d.path().join("v2.db");
        let mut db = StateDb::open(&path, true).unwrap().unwrap();
        db.record_run(&run_record(0)).unwrap();
        drop(db);
        assert!(!d.path().join("v2.db-wal").exists());
        let before = fs::read(&path).unwrap();
        let db = StateDb::open(&path, false).unwrap().unwrap();
        assert_eq!(db.last_run().unwrap(), Some(run_record(0)));
        drop(db);
        assert_eq!(fs::read(&path).unwrap(), before);

        // A run killed with its last commits still in the WAL: the reader
        // recovers them from the WAL without writing the database.
        let live = d.path().join("live.db");
        let mut db = StateDb::open(&live, true).unwrap().unwrap();
        db.record_run(&run_record(0)).unwrap();
        let killed = d.path().join("killed.db");
        fs::copy(&live, &killed).unwrap();
        fs::copy(d.path().join("live.db-wal"), d.path().join("killed.db-wal")).unwrap();
        drop(db);
        let before = fs::read(&killed).unwrap();
        let db = StateDb::open(&killed, false).unwrap().unwrap();
        assert_eq!(db.last_run().unwrap(), Some(run_record(0)));
        drop(db);
        assert_eq!(fs::read(&killed).unwrap(), before);

        // An empty file (version 0) holds no state.
        let path = d.path().join("empty.db");
        fs::write(&path, b"").unwrap();
        let db = StateDb::open(&path, false).unwrap().unwrap();
        assert_eq!(db.binding().unwrap(), None);
        assert!(db.load().unwrap().is_empty());
        assert!(db.pending().unwrap().is_empty());
        assert!(db.history(10).unwrap().is_empty());
        drop(db);
        assert_eq!(fs::read(&path).unwrap(), b"");
    }
}
