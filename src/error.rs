//! The top-level error of a command and its exit code. Errors are data; the
//! CLI (`main.rs`) is the one place that renders them and exits.

use crate::ftp::FtpFailure;
use crate::job::JobError;
use crate::state::StateError;

/// Exit codes (documented in the README).
pub mod exit {
    /// Everything done.
    pub const OK: i32 = 0;
    /// Some items failed (each is listed with its reply).
    pub const PARTIAL: i32 = 1;
    /// Bad job file, usage, or local setup (missing local root, state database problems).
    pub const USAGE: i32 = 2;
    /// Could not connect or log in.
    pub const CONNECT: i32 = 3;
    /// A safety limit stopped the run before anything was deleted.
    pub const SAFETY: i32 = 4;
    /// Another ftpsync is running the same job.
    pub const LOCKED: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {server}: {failure}")]
    Connect { server: String, failure: FtpFailure },
    #[error("login to {server} as {user} refused: {failure}")]
    Login {
        server: String,
        user: String,
        failure: FtpFailure,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Safety(String),
    #[error("{0}")]
    Io(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Job(_) | Error::Usage(_) | Error::Io(_) => exit::USAGE,
            Error::State(StateError::Locked { .. } | StateError::RemoteLocked { .. }) => {
                exit::LOCKED
            }
            // The server could not be asked (network, 4xx): try again later.
            Error::State(
                StateError::RemoteRead { failure, .. } | StateError::RemoteWrite { failure, .. },
            ) if failure.retryable() || failure.breaks_connection() => exit::CONNECT,
            Error::State(_) => exit::USAGE,
            Error::Connect { .. } | Error::Login { .. } => exit::CONNECT,
            Error::Safety(_) => exit::SAFETY,
        }
    }
}
