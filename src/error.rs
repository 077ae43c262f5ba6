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
    /// A run stopped by SIGINT or SIGTERM exits with 128 + the signal's number.
    pub const SIGNAL_BASE: i32 = 128;

    /// `plan --detailed-exitcode` (Terraform's convention): any error,
    /// usage errors included.
    pub const PLAN_ERROR: i32 = 1;
    /// `plan --detailed-exitcode`: the plan changes something.
    pub const PLAN_CHANGES: i32 = 2;

    /// The exit code of a command over several jobs: the worst of theirs.
    /// Worst first: a stop by signal (the jobs after it did not start), 2
    /// (a job file or usage to fix), 3 (the server), 4 (a safety limit), 5
    /// (locked), 1 (some items failed), 0.
    pub fn worst(a: i32, b: i32) -> i32 {
        let rank = |code| match code {
            OK => 0,
            PARTIAL => 1,
            LOCKED => 2,
            SAFETY => 3,
            CONNECT => 4,
            USAGE => 5,
            _ => 6,
        };
        if rank(b) > rank(a) { b } else { a }
    }

    /// [`worst`] for `plan --detailed-exitcode`: an error, then changes, then 0.
    pub fn worst_detailed(a: i32, b: i32) -> i32 {
        let rank = |code| match code {
            OK => 0,
            PLAN_CHANGES => 1,
            _ => 2,
        };
        if rank(b) > rank(a) { b } else { a }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn worst_ranks_failures() {
            let all = |codes: &[i32]| codes.iter().copied().fold(OK, worst);
            assert_eq!(all(&[0, 1, 0]), 1);
            assert_eq!(all(&[1, 5, 1]), 5);
            assert_eq!(all(&[5, 4, 1]), 4);
            assert_eq!(all(&[4, 3, 5]), 3);
            assert_eq!(all(&[3, 2, 1]), 2);
            assert_eq!(all(&[2, 130, 0]), 130);
            assert_eq!(all(&[143, 2]), 143);
            let detailed = |codes: &[i32]| codes.iter().copied().fold(OK, worst_detailed);
            assert_eq!(detailed(&[0, 0]), 0);
            assert_eq!(detailed(&[0, 2, 0]), 2);
            assert_eq!(detailed(&[2, 1, 2]), 1);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{0}")]
    Usage(String),
    /// Connecting failed before or during login (or the first command
    /// after it): says what the server or the network said, that nothing
    /// was changed, and what to check.
    #[error("cannot connect to {server}: {} Nothing was changed. {}", sentence(.failure), connect_advice(.failure))]
    Connect { server: String, failure: FtpFailure },
    #[error(
        "login to {server} as {user} refused: {failure}. Nothing was changed. Check remote.user and the password (remote.password_env, remote.password_file or remote.password)"
    )]
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

/// A failure as a sentence: with a full stop, which a server's reply
/// text often has already.
fn sentence(f: &FtpFailure) -> String {
    let s = f.to_string();
    if s.ends_with('.') { s } else { format!("{s}.") }
}

/// What to check after a failed connection, by what went wrong.
fn connect_advice(f: &FtpFailure) -> &'static str {
    match f {
        FtpFailure::TlsRefused { .. } => {
            "No user name or password was sent. The server does not offer FTPS: enable TLS on the server, or set `remote.tls: none` to connect without encryption"
        }
        FtpFailure::Certificate { .. } => "No user name or password was sent",
        FtpFailure::Tls(_) | FtpFailure::TlsSetup(_) => {
            "No user name or password was sent. For a server with a certificate of its own, give its CA in remote.tls_ca_file"
        }
        FtpFailure::Network(_) => {
            "Check remote.host and remote.port, and that the FTP server is running and reachable from here"
        }
        FtpFailure::Timeout(_) => {
            "The server did not answer within `timeout`: check remote.host and remote.port, and any firewall on the way. A port for implicit FTPS (usually 990) says nothing until TLS starts: for it, set `remote.tls: implicit`"
        }
        FtpFailure::Unreachable(_) => "Check that the server is up, then run again",
        FtpFailure::Reply { code, .. } if (400..500).contains(code) => {
            "The server is busy or refuses connections for now: try again later"
        }
        _ => "Check the remote settings in the job file",
    }
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
