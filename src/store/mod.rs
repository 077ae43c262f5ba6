//! The seam between the executor and the two sides it changes: the local
//! disk ([`LocalStore`]) and the FTP server ([`FtpStore`]).
//!
//! The executor speaks only to these. It decides *what* happens (phases,
//! order, resume policy, journaling, verification, state records); a store
//! decides *how* on its side: FTP reply codes, REST, pipelining and the
//! small-file fast path live in [`ftp`], symlink-safe local paths and
//! blocking file I/O in [`local`].
//!
//! Two kinds of operation:
//! - [`Store`]: operations complete in themselves (mkdir, rmdir, delete,
//!   removing a temporary file), retried inside the store by its own rules.
//! - [`RemoteSession`]: the steps of one transfer attempt, which must run on
//!   one connection, in order. [`FtpStore::retrying`] runs an [`Attempt`]
//!   under the retry policy and starts it over on a fresh connection when a
//!   step fails in a way worth retrying; the attempt carries what it needs
//!   (a partial temporary file) from one try to the next.

pub mod ftp;
pub mod local;

use std::path::Path;

use async_trait::async_trait;

pub use crate::ftp::FtpFailure;
use crate::ftp::conn::HashAlgo;
pub use crate::ftp::conn::{Resume, Stored};
use crate::model::{RelPath, RemoteTime};
pub use ftp::FtpStore;
pub use local::LocalStore;

/// What an upload sets on the uploaded file besides its bytes, where the
/// server can.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetMeta {
    /// Modification time (UTC).
    pub mtime: Option<chrono::NaiveDateTime>,
    /// Permission bits.
    pub mode: Option<u32>,
    /// Also ask the server's hash of the file ([`Capabilities::hash`]).
    pub hash: bool,
    /// Also ask the file's size (SIZE). Not needed where a listing of the
    /// directory checks the sizes afterwards.
    pub size: bool,
}

/// What one side can do, where the executor's policy depends on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Transfers can start at an offset (FTP: REST advertised), so an
    /// interrupted one can be resumed.
    pub resume: bool,
    /// The algorithm of the server's hash command, if it offers one.
    pub hash: Option<HashAlgo>,
}

/// Operations on one side of the mirror, each complete in itself. Paths
/// are relative to the side's root.
#[async_trait]
pub trait Store: Send + Sync {
    /// Creates the root and any missing parents.
    async fn create_root(&self) -> Result<(), FtpFailure>;
    /// Creates a directory, with the permission bits `mode` where given and
    /// the side can set them; one that exists already is fine (it may have
    /// been created by an earlier attempt whose reply was lost).
    async fn mkdir(&self, path: &RelPath, mode: Option<u32>) -> Result<(), FtpFailure>;
    /// Removes an empty directory; one that is gone already is fine.
    async fn rmdir(&self, path: &RelPath) -> Result<(), FtpFailure>;
    /// Removes a file; one that is gone already (checked, not assumed) is fine.
    async fn delete(&self, path: &RelPath) -> Result<(), FtpFailure>;
    /// Removes one of ftpsync's temporary files, named as journaled (an
    /// absolute path on that side). `Ok(true)`: removed; `Ok(false)`: it
    /// was not there. `once`: a single, time-limited attempt (while a run
    /// stops), instead of the job's retry policy.
    async fn remove_temp(&self, temp: &str, once: bool) -> Result<bool, FtpFailure>;
}

/// The remote steps of one transfer attempt, on one connection. Paths are
/// absolute remote paths.
#[async_trait]
pub trait RemoteSession: Send {
    fn capabilities(&self) -> Capabilities;
    /// Sends the local file (`len` bytes as just checked) to `remote` from
    /// byte `offset` on (a verified partial upload), sets its permission
    /// bits to `mode` and its modification time to `mtime` where the server
    /// can, and asks its size.
    async fn send(
        &mut self,
        local: &Path,
        len: u64,
        remote: &str,
        offset: u64,
        set: SetMeta,
    ) -> Result<Stored, FtpFailure>;
    /// Sets a file's modification time; the time as the server now has
    /// it, or `None` if it cannot set times.
    async fn set_mtime(
        &mut self,
        remote: &str,
        mtime: chrono::NaiveDateTime,
    ) -> Result<Option<RemoteTime>, FtpFailure>;
    /// A file's size, `None` if the server cannot tell or it is missing.
    async fn size(&mut self, remote: &str) -> Result<Option<u64>, FtpFailure>;
    /// The server's hash of a file of `len` bytes ([`Capabilities::hash`]),
    /// `None` if it has no hash command or would not hash this file.
    async fn hash(&mut self, remote: &str, len: u64) -> Result<Option<Vec<u8>>, FtpFailure>;
    /// At most `len` bytes of `remote` from `offset` on; `None` if the
    /// server refuses or sends more (then nothing can be resumed).
    async fn read_at(
        &mut self,
        remote: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, FtpFailure>;
    /// Renames a checked temporary file over its final name.
    async fn place(&mut self, temp: &str, final_path: &str) -> Result<(), FtpFailure>;
    /// Removes a file (a temporary one this attempt or an earlier one wrote).
    async fn remove(&mut self, remote: &str) -> Result<(), FtpFailure>;
    /// Receives `remote` into the local file `local`, resuming per `resume`;
    /// returns the file's total size and, with `mtime`, the file's time as
    /// the server tells it to the second (MDTM), when it does.
    async fn fetch(
        &mut self,
        remote: &str,
        local: &Path,
        resume: Option<Resume>,
        mtime: bool,
    ) -> Result<(u64, Option<chrono::NaiveDateTime>), FtpFailure>;
    /// Receives a small file of `len` bytes (as listed) into memory; more
    /// than `len` bytes is a [`FtpFailure::Verify`]. `mtime` as for
    /// [`RemoteSession::fetch`].
    async fn fetch_bytes(
        &mut self,
        remote: &str,
        len: u64,
        mtime: bool,
    ) -> Result<(Vec<u8>, Option<chrono::NaiveDateTime>), FtpFailure>;
}

/// One attempt of a transfer, which [`FtpStore::retrying`] may run several
/// times; each run gets a session on a connection in step.
#[async_trait]
pub trait Attempt: Send {
    type Output: Send;
    async fn run(&mut self, session: &mut dyn RemoteSession) -> Result<Self::Output, FtpFailure>;
}
