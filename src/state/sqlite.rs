//! The SQLite backend: one file per job in WAL mode, schema versioned with
//! `PRAGMA user_version`.
//!
//! Durability: every completed operation is committed within about 20 ms
//! (completions that arrive together share one transaction, see
//! [`super::StateWriter`]). WAL with `synchronous=NORMAL` keeps the database
//! consistent across a crash of ftpsync at any point; a power loss may forget
//! the last few commits, which only means the next run re-checks those files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Partial, StateChange, StateError, StateRecord};
use crate::model::{Kind, LocalMeta, RelPath, RemoteMeta, RemoteTime};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

/// An open state database.
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
}

impl StateDb {
    /// Opens (creating if needed) the database. `create = false` opens an
    /// existing one read-only-ish for `plan` and returns `Ok(None)` if there is none.
    pub fn open(path: &Path, create: bool) -> Result<Option<StateDb>, StateError> {
        let open_err = |message: String| StateError::Open {
            path: path.to_owned(),
            message,
        };
        if !create && !path.exists() {
            return Ok(None);
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create directory: {e}")))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        let corrupt = |e: rusqlite::Error| StateError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(corrupt)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: path.to_owned(),
                found: version,
            });
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                message: check,
            });
        }
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(corrupt)?;
        if version == 0 {
            conn.execute_batch(
                "BEGIN;
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
                 COMMIT;",
            )?;
        }
        Ok(Some(StateDb {
            conn,
            path: path.to_owned(),
        }))
    }

    /// The identity of the job the state belongs to (direction, server, roots).
    pub fn binding(&self) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'binding'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records the binding; if it differs from the stored one, the old records
    /// describe another tree and are dropped. Returns whether that happened.
    pub fn bind(&mut self, binding: &str) -> Result<bool, StateError> {
        let old = self.binding()?;
        let reset = old.as_deref().is_some_and(|o| o != binding);
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

    /// Every record, by path.
    pub fn load(&self) -> Result<BTreeMap<RelPath, StateRecord>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT path, kind, local_size, local_mtime_ns, local_sha256, remote_size, remote_mtime FROM entries",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = BTreeMap::new();
        while let Some(row) = rows.next()? {
            let path: String = row.get(0)?;
            let bad = |what: &str| StateError::Corrupt {
                path: self.path.clone(),
                message: format!("{what} in record {path:?}"),
            };
            let rel = RelPath::parse(&path).map_err(|_| bad("bad path"))?;
            let kind = match row.get::<_, String>(1)?.as_str() {
                "file" => Kind::File,
                "dir" => Kind::Dir,
                _ => return Err(bad("bad kind")),
            };
            let local = match (row.get::<_, Option<i64>>(2)?, row.get::<_, Option<i64>>(3)?) {
                (Some(size), Some(mtime_ns)) => {
                    let sha: Option<Vec<u8>> = row.get(4)?;
                    Some(LocalMeta {
                        size: u64::try_from(size).map_err(|_| bad("bad size"))?,
                        mtime_ns,
                        sha256: sha.and_then(|v| v.try_into().ok()),
                    })
                }
                _ => None,
            };
            let remote_size: Option<i64> = row.get(5)?;
            let remote_mtime: Option<String> = row.get(6)?;
            let remote = match (remote_size, remote_mtime) {
                (None, None) => None,
                (size, mtime) => Some(RemoteMeta {
                    size: size.map(|s| s as u64),
                    mtime: mtime
                        .as_deref()
                        .and_then(RemoteTime::parse_stored)
                        .unwrap_or(RemoteTime::Unknown),
                }),
            };
            out.insert(
                rel,
                StateRecord {
                    kind,
                    local,
                    remote,
                },
            );
        }
        Ok(out)
    }

    /// Temporary files that were being written when a run stopped.
    pub fn pending(&self) -> Result<Vec<Partial>, StateError> {
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
            for c in changes {
                match c {
                    StateChange::Put(p, r) => {
                        let l = r.local.as_ref();
                        let rm = r.remote.as_ref();
                        put.execute(params![
                            p.as_str(),
                            r.kind.as_str(),
                            l.map(|l| l.size as i64),
                            l.map(|l| l.mtime_ns),
                            l.and_then(|l| l.sha256.map(|h| h.to_vec())),
                            rm.and_then(|m| m.size.map(|s| s as i64)),
                            rm.map(|m| m.mtime.to_stored()),
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
                            m.size.map(|s| s as i64),
                            m.mtime.to_stored()
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// `PRAGMA integrity_check` result ("ok" when healthy).
    pub fn integrity_check(&self) -> Result<String, StateError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateWriter;

    fn rec() -> StateRecord {
        StateRecord {
            kind: Kind::File,
            local: Some(LocalMeta {
                size: 5,
                mtime_ns: 1_700_000_000_123_456_789,
                sha256: Some([7; 32]),
            }),
            remote: Some(RemoteMeta {
                size: Some(5),
                mtime: RemoteTime::Unknown,
            }),
        }
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
        // Another binding drops the records.
        assert!(db.bind("push|other").unwrap());
        assert!(db.load().unwrap().is_empty());
        drop(db);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = StateDb::open(&path, true).err().unwrap();
        assert!(matches!(err, StateError::TooNew { found: 99, .. }), "{err}");
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

    #[test]
    fn writer_batches_and_flushes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let db = StateDb::open(&path, true).unwrap().unwrap();
        let w = StateWriter::start(db);
        for i in 0..100 {
            w.send(StateChange::Put(
                RelPath::parse(&format!("f{i}")).unwrap(),
                rec(),
            ));
        }
        w.flush().unwrap();
        let db = w.finish().unwrap();
        assert_eq!(db.load().unwrap().len(), 100);
        assert_eq!(db.integrity_check().unwrap(), "ok");
    }
}
