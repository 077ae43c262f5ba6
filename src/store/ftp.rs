//! The FTP side as a [`Store`]: the connection pool under the job's retry
//! policy, and every FTP quirk the executor must not know about: which
//! reply codes mean "already there" or "gone already", servers that refuse
//! to rename over an existing file, REST, and the small-file fast path
//! (one read, pipelined commands) against big files read in chunks.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Attempt, Capabilities, RemoteSession, Resume, SetMeta, Store, Stored};
use crate::ftp::FtpFailure;
use crate::ftp::conn::{AfterStore, FtpConn, RenameError, SMALL_FILE};
use crate::ftp::list::{EntryKind, ListEntry};
use crate::ftp::pool::Pool;
use crate::job::RetryPolicy;
use crate::model::{RelPath, RemoteTime};
use crate::with_retry;

/// The remote tree under `root`, reached through a connection pool.
#[derive(Clone)]
pub struct FtpStore {
    pool: Arc<Pool>,
    retry: RetryPolicy,
    /// Limit for one operation: bounds the single attempts of [`Store::remove_temp`].
    timeout: Duration,
    /// Absolute remote root.
    root: String,
}

impl FtpStore {
    pub fn new(pool: Arc<Pool>, retry: RetryPolicy, timeout: Duration, root: String) -> FtpStore {
        FtpStore {
            pool,
            retry,
            timeout,
            root,
        }
    }

    /// The absolute remote path of `p`.
    pub fn path(&self, p: &RelPath) -> String {
        p.to_remote(&self.root)
    }

    /// How many operations can run at once (the pool's current size, which
    /// shrinks when the server says it has too many connections).
    pub fn connections(&self) -> usize {
        self.pool.size()
    }

    /// Closes the idle connections politely (more are opened if needed).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Makes operations waiting to retry give up at once (the run stops).
    pub fn halt(&self) {
        self.pool.halt();
    }

    /// Whether the server has been unreachable for `retry.give_up_after`.
    pub fn gave_up(&self) -> bool {
        self.pool.gave_up()
    }

    /// Runs `attempt` on a pooled connection, again on a fresh one after a
    /// transient failure, as the retry policy allows.
    pub async fn retrying<A: Attempt>(&self, attempt: &mut A) -> Result<A::Output, FtpFailure> {
        with_retry!(&self.pool, &self.retry, |c| attempt
            .run(&mut FtpSession { conn: c })
            .await)
    }

    /// The entries of a directory as the server lists them now.
    pub async fn list_dir(&self, dir: &RelPath) -> Result<Vec<ListEntry>, FtpFailure> {
        let abs = self.path(dir);
        let now = chrono::Utc::now().naive_utc();
        let listing = with_retry!(&self.pool, &self.retry, |c| c.list_dir(&abs, now).await)?;
        Ok(listing.listing.entries)
    }

    /// The entries of a directory that must exist and list in full: a
    /// listing with a line that cannot be read is an error, since what
    /// that line stands for is unknown.
    pub async fn list_dir_whole(&self, dir: &RelPath) -> Result<Vec<ListEntry>, FtpFailure> {
        let abs = self.path(dir);
        let now = chrono::Utc::now().naive_utc();
        let listing = with_retry!(&self.pool, &self.retry, |c| c.list_dir(&abs, now).await)?;
        if !listing.exists {
            return Err(FtpFailure::Verify(format!("{abs} is not there")));
        }
        if let Some((n, line, why)) = listing.listing.bad_lines.first() {
            return Err(FtpFailure::Verify(format!(
                "the listing of {abs} has a line that cannot be read (line {n}, {why}: {line:?})"
            )));
        }
        Ok(listing.listing.entries)
    }

    /// Creates a directory that must not exist yet (a lock): `Ok(false)`
    /// if it does. MKD is atomic on the server, so of two runs only one
    /// gets `Ok(true)`.
    pub async fn create_dir_exclusive(&self, dir: &RelPath) -> Result<bool, FtpFailure> {
        let p = self.path(dir);
        with_retry!(&self.pool, &self.retry, |c| match c.mkdir(&p).await {
            Ok(()) => Ok(true),
            Err(e @ FtpFailure::Reply { code, .. }) if code >= 500 => {
                if c.is_dir(&p).await? {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        })
    }

    /// Removes one of ftpsync's temporary files or directories (a staged
    /// new directory, [`crate::stage`], with everything in it).
    async fn remove_temp_with(&self, temp: &str, retry: &RetryPolicy) -> Result<bool, FtpFailure> {
        with_retry!(&self.pool, retry, |c| match c.delete(temp).await {
            Ok(()) => Ok(true),
            Err(FtpFailure::Reply { code: 550, .. }) => remove_tree(c, temp).await,
            Err(e) => Err(e),
        })
    }

    /// Removes a file by its absolute path; one that is gone already
    /// (checked, not assumed) is fine.
    pub async fn remove_file(&self, path: &str) -> Result<(), FtpFailure> {
        with_retry!(&self.pool, &self.retry, |c| delete_remote(c, path).await)
    }

    /// Renames `from` to `to` (absolute paths; a file or a directory). A
    /// retry that finds `from` gone and `to` there counts as done: the
    /// reply to the attempt that renamed it was lost.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), FtpFailure> {
        use std::sync::atomic::{AtomicBool, Ordering};
        // Only a retry can follow a rename whose reply was lost.
        let tried = AtomicBool::new(false);
        with_retry!(&self.pool, &self.retry, |c| {
            let retry = tried.swap(true, Ordering::Relaxed);
            match c.rename(from, to).await {
                Ok(()) => Ok(()),
                Err(RenameError::From(e @ FtpFailure::Reply { code: 550, .. })) if retry => {
                    if !exists_remote(c, from).await? && exists_remote(c, to).await? {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }
                Err(e) => Err(e.failure()),
            }
        })
    }
}

#[async_trait]
impl Store for FtpStore {
    async fn create_root(&self) -> Result<(), FtpFailure> {
        // mkdir -p, component by component; existing ones answer 550, which is fine.
        let root = &self.root;
        let mut prefix = String::new();
        for part in root.split('/').filter(|s| !s.is_empty()) {
            prefix = if prefix.is_empty() && root.starts_with('/') {
                format!("/{part}")
            } else if prefix.is_empty() {
                part.to_owned()
            } else {
                format!("{prefix}/{part}")
            };
            let p = prefix.as_str();
            with_retry!(&self.pool, &self.retry, |c| mkdir_idempotent(c, p).await)?;
        }
        Ok(())
    }

    /// MKD, then SITE CHMOD where a mode is given (a refused CHMOD leaves
    /// the directory as the server made it).
    async fn mkdir(&self, path: &RelPath, mode: Option<u32>) -> Result<(), FtpFailure> {
        let p = self.path(path);
        with_retry!(&self.pool, &self.retry, |c| mkdir_with_mode(c, &p, mode)
            .await)
    }

    async fn rmdir(&self, path: &RelPath) -> Result<(), FtpFailure> {
        let p = self.path(path);
        with_retry!(&self.pool, &self.retry, |c| rmdir_remote(c, &p).await)
    }

    async fn delete(&self, path: &RelPath) -> Result<(), FtpFailure> {
        let p = self.path(path);
        with_retry!(&self.pool, &self.retry, |c| delete_remote(c, &p).await)
    }

    async fn remove_temp(&self, temp: &str, once: bool) -> Result<bool, FtpFailure> {
        if !once {
            return self.remove_temp_with(temp, &self.retry).await;
        }
        let once = RetryPolicy {
            max_attempts: 1,
            ..self.retry
        };
        tokio::time::timeout(self.timeout, self.remove_temp_with(temp, &once))
            .await
            .unwrap_or(Err(FtpFailure::Timeout(self.timeout)))
    }
}

/// One pooled connection, lent to an [`Attempt`].
pub struct FtpSession<'a> {
    conn: &'a mut FtpConn,
}

#[async_trait]
impl RemoteSession for FtpSession<'_> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resume: self.conn.features.rest,
            hash: self.conn.features.hash.map(|c| c.algo()),
        }
    }

    /// Small files go in one read and pipelined commands
    /// ([`FtpConn::store_small`]); bigger ones in chunks.
    /// The mode is set before the time: neither changes the other, and
    /// both stay across the rename that follows (rename(2) keeps the inode).
    async fn send(
        &mut self,
        local: &Path,
        len: u64,
        remote: &str,
        offset: u64,
        set: SetMeta,
    ) -> Result<Stored, FtpFailure> {
        let c = &mut *self.conn;
        let after = AfterStore {
            mtime: set.mtime,
            mode: set.mode,
            hash: set.hash,
            size: set.size,
        };
        if offset == 0 && len <= SMALL_FILE {
            // A read of at most 1 MiB, inline: handing it to a blocking
            // thread would cost more than the read on this hot path.
            let local_err =
                |e: std::io::Error| FtpFailure::Local(format!("{}: {e}", local.display()));
            // One byte more than expected is enough to tell that the file grew.
            let file = std::fs::File::open(local).map_err(local_err)?;
            let mut data = Vec::with_capacity(len as usize + 1);
            std::io::Read::read_to_end(&mut std::io::Read::take(file, len + 1), &mut data)
                .map_err(local_err)?;
            return c.store_small(remote, &data, after).await;
        }
        c.upload(local, len, remote, offset, after).await
    }

    async fn set_mtime(
        &mut self,
        remote: &str,
        mtime: chrono::NaiveDateTime,
    ) -> Result<Option<RemoteTime>, FtpFailure> {
        self.conn.set_mtime(remote, mtime).await
    }

    async fn size(&mut self, remote: &str) -> Result<Option<u64>, FtpFailure> {
        self.conn.size(remote).await
    }

    async fn hash(&mut self, remote: &str, len: u64) -> Result<Option<Vec<u8>>, FtpFailure> {
        Ok(self.conn.hash(remote, len).await?.map(|(_, d)| d))
    }

    async fn read_at(
        &mut self,
        remote: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, FtpFailure> {
        match self.conn.read_from(remote, offset, len).await {
            Ok(d) => Ok(Some(d)),
            Err(FtpFailure::Reply { .. } | FtpFailure::Verify(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn place(&mut self, temp: &str, final_path: &str) -> Result<(), FtpFailure> {
        let c = &mut *self.conn;
        match c.rename(temp, final_path).await {
            Ok(()) => Ok(()),
            Err(RenameError::To(e @ FtpFailure::Reply { code, .. })) if code >= 500 => {
                // Some servers (IIS, FileZilla) refuse to rename over an existing
                // file: then delete the old one and rename. Only when RNFR was
                // accepted: a refused RNFR says nothing about the target. A crash
                // in between leaves the new content under the journaled temporary
                // name and the path absent, so the next run uploads it again.
                // A check that cannot be made (a listing refused, as libunftp
                // does while another file in the directory is renamed) proves
                // nothing: the rename's own refusal is what to report.
                match exists_remote(c, final_path).await {
                    Ok(true) => {}
                    Ok(false) => return Err(e),
                    Err(check) if check.breaks_connection() => return Err(check),
                    Err(_) => return Err(e),
                }
                delete_remote(c, final_path).await?;
                c.rename(temp, final_path)
                    .await
                    .map_err(RenameError::failure)
            }
            Err(e) => Err(e.failure()),
        }
    }

    async fn remove(&mut self, remote: &str) -> Result<(), FtpFailure> {
        self.conn.delete(remote).await
    }

    async fn fetch(
        &mut self,
        remote: &str,
        local: &Path,
        resume: Option<Resume>,
        mtime: bool,
    ) -> Result<(u64, Option<chrono::NaiveDateTime>), FtpFailure> {
        self.conn.download(remote, local, resume, mtime).await
    }

    async fn fetch_bytes(
        &mut self,
        remote: &str,
        len: u64,
        mtime: bool,
    ) -> Result<(Vec<u8>, Option<chrono::NaiveDateTime>), FtpFailure> {
        self.conn.download_bytes(remote, len, mtime).await
    }
}

async fn mkdir_idempotent(c: &mut FtpConn, path: &str) -> Result<(), FtpFailure> {
    match c.mkdir(path).await {
        Ok(()) => Ok(()),
        Err(e @ FtpFailure::Reply { code, .. }) if code >= 500 => {
            // Already there (or created by a lost earlier attempt)?
            if c.is_dir(path).await? {
                Ok(())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

async fn mkdir_with_mode(c: &mut FtpConn, path: &str, mode: Option<u32>) -> Result<(), FtpFailure> {
    mkdir_idempotent(c, path).await?;
    if let Some(m) = mode {
        c.chmod(path, m).await?;
    }
    Ok(())
}

async fn rmdir_remote(c: &mut FtpConn, path: &str) -> Result<(), FtpFailure> {
    match c.rmdir(path).await {
        Ok(()) => Ok(()),
        Err(e @ FtpFailure::Reply { code: 550, .. }) => {
            // Gone already (a lost reply to an earlier attempt)?
            if c.is_dir(path).await? {
                Err(e)
            } else {
                Ok(())
            }
        }
        Err(e) => Err(e),
    }
}

async fn delete_remote(c: &mut FtpConn, path: &str) -> Result<(), FtpFailure> {
    match c.delete(path).await {
        Ok(()) => Ok(()),
        Err(e @ FtpFailure::Reply { code: 550, .. }) => {
            // 550 is also the answer when an earlier DELE whose reply was lost
            // already removed it: check before calling it a failure.
            if exists_remote(c, path).await? {
                Err(e)
            } else {
                Ok(())
            }
        }
        Err(e) => Err(e),
    }
}

/// Most directories [`remove_tree`] goes through: a temporary directory is
/// one of ftpsync's staged directories, never a deep tree.
const MAX_TREE_DIRS: usize = 10_000;

/// Removes the directory `top` with everything in it (one of ftpsync's
/// temporary directories). `Ok(false)`: there is no such directory. Names
/// from the listings are checked like any untrusted name before use.
async fn remove_tree(c: &mut FtpConn, top: &str) -> Result<bool, FtpFailure> {
    let mut dirs = vec![top.to_owned()];
    let mut next = 0;
    while next < dirs.len() {
        let dir = dirs[next].clone();
        next += 1;
        let listing = c.list_dir(&dir, chrono::Utc::now().naive_utc()).await?;
        if !listing.exists {
            if next == 1 {
                return Ok(false);
            }
            continue;
        }
        for e in listing.listing.entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = crate::model::validate_name(&e.name).map_err(|why| {
                FtpFailure::Verify(format!(
                    "{dir} holds an entry whose name is refused ({why})"
                ))
            })?;
            let child = format!("{dir}/{name}");
            match e.kind {
                EntryKind::Dir if dirs.len() < MAX_TREE_DIRS => dirs.push(child),
                EntryKind::Dir => {
                    return Err(FtpFailure::Verify(format!(
                        "{top} holds more than {MAX_TREE_DIRS} directories"
                    )));
                }
                _ => delete_remote(c, &child).await?,
            }
        }
    }
    for d in dirs.iter().rev() {
        rmdir_remote(c, d).await?;
    }
    Ok(true)
}

/// Whether a remote file exists, by listing its parent directory.
async fn exists_remote(c: &mut FtpConn, path: &str) -> Result<bool, FtpFailure> {
    let (dir, name) = match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (".", path),
    };
    let listing = c.list_dir(dir, chrono::Utc::now().naive_utc()).await?;
    Ok(listing.exists
        && listing
            .listing
            .entries
            .iter()
            .any(|e| e.name == name.as_bytes()))
}
