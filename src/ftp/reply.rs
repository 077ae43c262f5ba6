//! Failures of FTP operations and how they are classified for retries.
//!
//! RFC 959 §4.2: a 4yz reply is a transient negative completion ("the action
//! may be requested again"), a 5yz one permanent. ftpsync decides on the code
//! alone (the text is for humans): 4xx, network faults and timeouts are
//! retried with backoff, 5xx fail the item, 530 at login fails the run.

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// Retry after a backoff, on a fresh connection if the old one is broken.
    Transient,
    /// Fail this item; the run continues.
    Permanent,
    /// Login refused: the run stops.
    Auth,
}

/// A failed FTP operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FtpFailure {
    /// The server answered with a negative (or unexpected) reply.
    #[error("{code} {text}")]
    Reply { code: u32, text: String },
    /// The connection broke or could not be made.
    #[error("network error: {0}")]
    Network(String),
    /// The operation took longer than the configured timeout.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// TLS failed on a connection: the handshake (other than a refused
    /// certificate) or a record that could not be read. The connection is
    /// given up; a new one may work, so this is retried.
    #[error("TLS error: {0}")]
    Tls(String),
    /// TLS cannot work as configured: the trust settings cannot be loaded,
    /// or the server refuses to encrypt data connections. Not retried.
    #[error("TLS error: {0}")]
    TlsSetup(String),
    /// The server answered AUTH TLS (or PBSZ/PROT) with a reply other than
    /// success: it does not offer FTPS. Nothing more was sent.
    #[error("the server refused AUTH TLS ({code} {text})")]
    TlsRefused { code: u32, text: String },
    /// The server's certificate is not trusted; the fingerprint is in the
    /// form `remote.tls_fingerprint` takes. Nothing more was sent.
    #[error(
        "the server's certificate was refused: {reason}. Its SHA-256 fingerprint is {fingerprint}; if this is your server's certificate, pin it with `remote.tls_fingerprint: {fingerprint}`, or give the CA that issued it (or the certificate itself) in remote.tls_ca_file"
    )]
    Certificate { reason: String, fingerprint: String },
    /// The server said something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A path that cannot be sent safely (CR, LF or NUL).
    #[error("refusing to send a path containing CR, LF or NUL")]
    BadPath,
    /// Data did not match what was expected (e.g. size after a transfer).
    #[error("{0}")]
    Verify(String),
    /// A local file operation failed.
    #[error("local I/O: {0}")]
    Local(String),
    /// The server refused to resume a transfer: a negative reply to `REST`,
    /// or to the `STOR`/`RETR` right after it (ProFTPD's default
    /// `AllowStoreRestart off` answers 451). The connection is in step.
    #[error("{code} {text} (refused to resume the transfer)")]
    RestartRefused { code: u32, text: String },
    /// Every attempt to connect has failed for at least this long: the pool
    /// gives up and the run stops (see `retry.give_up_after`).
    #[error("server unreachable: every connection attempt failed for {0:?}")]
    Unreachable(std::time::Duration),
}

impl FtpFailure {
    /// The reply code, if the server gave one.
    pub fn code(&self) -> Option<u32> {
        match self {
            FtpFailure::Reply { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn class(&self) -> ReplyClass {
        match self {
            FtpFailure::Reply { code, .. } => classify(*code),
            FtpFailure::Network(_)
            | FtpFailure::Timeout(_)
            | FtpFailure::Verify(_)
            | FtpFailure::RestartRefused { .. }
            | FtpFailure::Tls(_) => ReplyClass::Transient,
            FtpFailure::TlsSetup(_)
            | FtpFailure::TlsRefused { .. }
            | FtpFailure::Certificate { .. }
            | FtpFailure::Protocol(_)
            | FtpFailure::BadPath
            | FtpFailure::Local(_)
            | FtpFailure::Unreachable(_) => ReplyClass::Permanent,
        }
    }

    /// A negative reply turned into [`FtpFailure::RestartRefused`] (for a
    /// failure of a command that resumed a transfer); anything else as it is.
    pub fn as_restart_refusal(self) -> FtpFailure {
        match self {
            FtpFailure::Reply { code, text } if code >= 400 => {
                FtpFailure::RestartRefused { code, text }
            }
            other => other,
        }
    }

    /// Whether the operation may be tried again: transient failures, and a
    /// 530 that says the server is full (some servers answer "too many
    /// connections" at login with 530 rather than 421).
    pub fn retryable(&self) -> bool {
        self.class() == ReplyClass::Transient || self.too_many_connections()
    }

    /// Whether the control connection should be dropped and a new one made
    /// before the next command (after a break, a timeout or a 421).
    pub fn breaks_connection(&self) -> bool {
        match self {
            FtpFailure::Reply { code, .. } => *code == 421,
            FtpFailure::Network(_)
            | FtpFailure::Timeout(_)
            | FtpFailure::Protocol(_)
            | FtpFailure::Tls(_)
            | FtpFailure::TlsSetup(_)
            | FtpFailure::TlsRefused { .. }
            | FtpFailure::Certificate { .. } => true,
            _ => false,
        }
    }

    /// Whether a reply says the server has too many connections (RFC 959's
    /// 421, or the 530 some servers send), so the pool should shrink.
    pub fn too_many_connections(&self) -> bool {
        match self {
            FtpFailure::Reply { code, text } if *code == 421 || *code == 530 => {
                let t = text.to_ascii_lowercase();
                [
                    "too many",
                    "maximum number",
                    "max clients",
                    "simultaneous",
                    "try again later",
                    "overloaded",
                ]
                .iter()
                .any(|k| t.contains(k))
            }
            _ => false,
        }
    }
}

/// Class of a reply code.
pub fn classify(code: u32) -> ReplyClass {
    match code {
        530 => ReplyClass::Auth,
        400..=499 => ReplyClass::Transient,
        _ => ReplyClass::Permanent,
    }
}

impl From<suppaftp::FtpError> for FtpFailure {
    fn from(e: suppaftp::FtpError) -> Self {
        use suppaftp::FtpError as E;
        match e {
            E::ConnectionError(io) => FtpFailure::Network(io.to_string()),
            E::SecureError(s) => FtpFailure::Tls(s),
            E::UnexpectedResponse(r) => reply_failure(&r.body),
            E::BadResponse => FtpFailure::Protocol("malformed reply".into()),
            E::InvalidAddress(a) => FtpFailure::Protocol(format!("invalid address in reply: {a}")),
            E::DataConnectionAlreadyOpen => {
                FtpFailure::Protocol("data connection already open".into())
            }
        }
    }
}

/// A server reply: its code and the text of its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u32,
    pub text: String,
}

impl Reply {
    /// Parses a raw reply (`b"550 No such file\r\n"`). suppaftp's `Status`
    /// maps unknown codes to 0, so the code is read from the text.
    pub fn parse(body: &[u8]) -> Result<Reply, FtpFailure> {
        let text = String::from_utf8_lossy(body);
        let code = text
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u32>().ok());
        let line = text.lines().last().unwrap_or("").trim();
        let msg = line.get(4..).unwrap_or("").trim().to_string();
        match code {
            Some(code) => Ok(Reply { code, text: msg }),
            None => Err(FtpFailure::Protocol(format!(
                "unparseable reply {:?}",
                text.trim()
            ))),
        }
    }

    /// This reply as a failure.
    pub fn failure(&self) -> FtpFailure {
        FtpFailure::Reply {
            code: self.code,
            text: self.text.clone(),
        }
    }
}

/// Builds a failure from a raw reply (`b"550 No such file\r\n"`).
pub fn reply_failure(body: &[u8]) -> FtpFailure {
    match Reply::parse(body) {
        Ok(r) => r.failure(),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for c in [421, 425, 426, 450, 451, 452] {
            assert_eq!(classify(c), ReplyClass::Transient, "{c}");
        }
        for c in [500, 501, 550, 552, 553] {
            assert_eq!(classify(c), ReplyClass::Permanent, "{c}");
        }
        assert_eq!(classify(530), ReplyClass::Auth);
        let f = reply_failure(b"554 Invalid REST parameter\r\n");
        assert_eq!(f.code(), Some(554));
        assert_eq!(f.class(), ReplyClass::Permanent);
        let f = reply_failure(b"421-Too many\r\n421 Too many connections (8) from this IP\r\n");
        assert_eq!(f.code(), Some(421));
        assert!(f.too_many_connections());
        assert!(f.breaks_connection());
        assert!(!reply_failure(b"530 Login incorrect.\r\n").too_many_connections());
        // vsftpd without TLS answers AUTH TLS with 530: that is no login refusal.
        let f = FtpFailure::TlsRefused {
            code: 530,
            text: "Please login with USER and PASS.".into(),
        };
        assert_eq!(f.class(), ReplyClass::Permanent);
        assert!(!f.retryable());
        // A TLS record that cannot be read breaks that connection only: a
        // new one is tried. Settings that cannot work and refused
        // certificates are not retried.
        let f = FtpFailure::Tls("received corrupt message of type InvalidContentType".into());
        assert!(f.retryable() && f.breaks_connection());
        for f in [
            FtpFailure::TlsSetup("the server refused PROT P (534 no)".into()),
            FtpFailure::Certificate {
                reason: "UnknownIssuer".into(),
                fingerprint: "sha256:00".into(),
            },
        ] {
            assert!(!f.retryable() && f.breaks_connection(), "{f}");
        }
    }
}
