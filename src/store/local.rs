//! The local disk as a [`Store`]: the tree under the job's local root.
//! Every path written goes through [`crate::local::safe_path`], so no write
//! ever goes through a symbolic link. File I/O beyond a stat or a single
//! metadata call runs on a blocking thread.

use std::fs::{Metadata, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;

use super::Store;
use crate::ftp::FtpFailure;
use crate::ftp::conn::HashAlgo;
use crate::local::{is_temp_name, mtime_ns, safe_path, temp_name};
use crate::model::RelPath;

/// The local tree under `root`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn local_err(e: std::io::Error) -> FtpFailure {
    FtpFailure::Local(e.to_string())
}

fn path_err(p: &Path, e: std::io::Error) -> FtpFailure {
    FtpFailure::Local(format!("{}: {e}", p.display()))
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    /// The path of `rel` for writing, checked for symbolic links.
    pub fn writable(&self, rel: &RelPath) -> Result<PathBuf, FtpFailure> {
        safe_path(&self.root, rel).map_err(local_err)
    }

    /// A fresh temporary path beside `target`, in the same directory so
    /// that the rename into place is atomic.
    pub fn temp_beside(&self, target: &Path) -> PathBuf {
        target.parent().unwrap_or(Path::new(".")).join(temp_name())
    }

    /// Whether `temp` names one of ftpsync's temporary files inside the root.
    pub fn is_our_temp(&self, temp: &str) -> bool {
        let p = Path::new(temp);
        p.starts_with(&self.root)
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_temp_name)
    }

    /// A source file to send: its path and metadata, which must be a
    /// regular file's (a link or a directory is never sent).
    pub fn source_file(&self, rel: &RelPath) -> Result<(PathBuf, Metadata), FtpFailure> {
        let path = rel.to_local(&self.root);
        let md = std::fs::symlink_metadata(&path).map_err(|e| path_err(&path, e))?;
        if !md.is_file() {
            return Err(FtpFailure::Local(format!(
                "{} is no longer a regular file",
                path.display()
            )));
        }
        Ok((path, md))
    }

    /// Whether a file's size or modification time differ from `before` (or it is gone).
    pub fn changed_since(&self, path: &Path, before: &Metadata) -> bool {
        match std::fs::symlink_metadata(path) {
            Ok(now) => now.len() != before.len() || mtime_ns(&now) != mtime_ns(before),
            Err(_) => true,
        }
    }

    /// The metadata of a file just placed (links not followed).
    pub fn stat(&self, path: &Path) -> Result<Metadata, FtpFailure> {
        std::fs::symlink_metadata(path).map_err(local_err)
    }

    /// The length of a file, if it is there.
    pub fn len(&self, path: &Path) -> Option<u64> {
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// Whether `path` is a regular file (following links, as journaled temps are checked).
    pub fn is_file(&self, path: &str) -> bool {
        Path::new(path).is_file()
    }

    /// Exactly `len` bytes of a file from `offset` on.
    pub async fn read_at(
        &self,
        path: &Path,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, FtpFailure> {
        let path = path.to_path_buf();
        blocking(move || {
            use std::io::{Read, Seek};
            let mut f = std::fs::File::open(&path).map_err(local_err)?;
            f.seek(std::io::SeekFrom::Start(offset))
                .map_err(local_err)?;
            let mut buf = vec![0u8; len];
            f.read_exact(&mut buf).map_err(local_err)?;
            Ok(buf)
        })
        .await
    }

    /// Removes a file, best effort (a temporary file no longer wanted).
    pub async fn discard(&self, path: &Path) {
        let path = path.to_path_buf();
        blocking(move || {
            let _ = std::fs::remove_file(path);
        })
        .await;
    }

    /// Gives a received temporary file its permission bits and modification
    /// time (best effort) and renames it over `target`; never over a
    /// directory. The mode is set before the rename, so the file never
    /// shows under its name with other modes. On failure the temporary
    /// file is removed.
    pub async fn place(
        &self,
        temp: &Path,
        target: &Path,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<(), FtpFailure> {
        let (temp, target) = (temp.to_path_buf(), target.to_path_buf());
        blocking(move || {
            if let Ok(f) = std::fs::File::options().write(true).open(&temp) {
                if let Some(t) = mtime {
                    let _ = f.set_modified(t);
                }
                if let Some(m) = mode
                    && let Err(e) = f.set_permissions(Permissions::from_mode(m & 0o777))
                {
                    tracing::warn!("cannot set the mode of {}: {e}", target.display());
                }
            }
            rename_into(&temp, &target)
        })
        .await
    }

    /// [`LocalStore::place`] for a small file received into memory: in one
    /// trip to a blocking thread, writes `data` to the new file `temp`
    /// (never an existing one, beside `rel`'s path), gives it `mode` and
    /// `mtime`, and renames it over `rel`'s path, checked again for links.
    /// Returns the placed file's metadata and, with `sha`, the SHA-256 of
    /// `data`. On failure the temporary file is removed.
    pub async fn place_bytes(
        &self,
        rel: &RelPath,
        temp: &Path,
        data: Vec<u8>,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
        sha: bool,
    ) -> Result<(Metadata, Option<[u8; 32]>), FtpFailure> {
        let temp = temp.to_path_buf();
        let (root, rel) = (self.root.clone(), rel.clone());
        blocking(move || {
            // The data took a while to come: the directories on the way are
            // checked for links again right before the file is created.
            let target = safe_path(&root, &rel).map_err(local_err)?;
            let written = (|| -> std::io::Result<()> {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                // Never more open than `mode`, even before it is set exactly.
                let mut f = std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .mode(mode.map_or(0o666, |m| m & 0o777))
                    .open(&temp)?;
                f.write_all(&data)?;
                if let Some(t) = mtime {
                    let _ = f.set_modified(t);
                }
                if let Some(m) = mode
                    && let Err(e) = f.set_permissions(Permissions::from_mode(m & 0o777))
                {
                    tracing::warn!("cannot set the mode of {}: {e}", target.display());
                }
                Ok(())
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp);
                return Err(path_err(&temp, e));
            }
            rename_into(&temp, &target)?;
            let md = std::fs::symlink_metadata(&target).map_err(|e| path_err(&target, e))?;
            let sha = sha.then(|| crate::local::sha256_bytes(&data));
            Ok((md, sha))
        })
        .await
    }

    /// `data`'s digest with `algo` and its SHA-256 (off the async threads);
    /// `data` is handed back.
    pub async fn digests_of(&self, data: Vec<u8>, algo: HashAlgo) -> (Vec<u8>, Vec<u8>, [u8; 32]) {
        blocking(move || {
            let (digest, sha256) = crate::local::digests_bytes(&data, algo);
            (data, digest, sha256)
        })
        .await
    }

    /// SHA-256 of a file's content, `None` if it cannot be read.
    pub async fn sha256(&self, path: &Path) -> Option<[u8; 32]> {
        let path = path.to_path_buf();
        blocking(move || crate::local::sha256_file(&path).ok()).await
    }

    /// A file's digest with `algo` and its SHA-256, reading it once (off
    /// the async threads).
    pub async fn digests(
        &self,
        path: &Path,
        algo: HashAlgo,
    ) -> Result<(Vec<u8>, [u8; 32]), FtpFailure> {
        let path = path.to_path_buf();
        blocking(move || crate::local::digests_file(&path, algo).map_err(local_err)).await
    }
}

/// Renames `temp` over `target`, never over a directory; removes `temp`
/// when it cannot.
fn rename_into(temp: &Path, target: &Path) -> Result<(), FtpFailure> {
    if let Ok(md) = std::fs::symlink_metadata(target)
        && md.is_dir()
    {
        let _ = std::fs::remove_file(temp);
        return Err(FtpFailure::Local(format!(
            "{} is a directory",
            target.display()
        )));
    }
    std::fs::rename(temp, target).map_err(|e| {
        let _ = std::fs::remove_file(temp);
        path_err(target, e)
    })
}

#[async_trait]
impl Store for LocalStore {
    async fn create_root(&self) -> Result<(), FtpFailure> {
        std::fs::create_dir_all(&self.root).map_err(|e| path_err(&self.root, e))
    }

    async fn mkdir(&self, path: &RelPath, mode: Option<u32>) -> Result<(), FtpFailure> {
        let p = self.writable(path)?;
        match std::fs::create_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
            Err(e) => return Err(path_err(&p, e)),
        }
        match mode {
            Some(m) => std::fs::set_permissions(&p, Permissions::from_mode(m & 0o777))
                .map_err(|e| path_err(&p, e)),
            None => Ok(()),
        }
    }

    async fn rmdir(&self, path: &RelPath) -> Result<(), FtpFailure> {
        let p = self.writable(path)?;
        match std::fs::remove_dir(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(path_err(&p, e)),
        }
    }

    async fn delete(&self, path: &RelPath) -> Result<(), FtpFailure> {
        let p = self.writable(path)?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(path_err(&p, e)),
        }
    }

    /// Only files that are ftpsync's temporary names inside the root are
    /// removed; anything else that is there is an error.
    async fn remove_temp(&self, temp: &str, _once: bool) -> Result<bool, FtpFailure> {
        let p = Path::new(temp);
        if self.is_our_temp(temp) && std::fs::remove_file(p).is_ok() {
            return Ok(true);
        }
        if p.exists() {
            return Err(FtpFailure::Local(format!("{temp}: not removed")));
        }
        Ok(false)
    }
}
