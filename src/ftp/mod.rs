//! The FTP side: connections (login, TLS, FEAT, timeouts), TLS trust,
//! listing parsers, reply classification and the remote scan.

pub mod conn;
pub mod list;
pub mod pool;
pub mod reply;
pub mod scan;
pub mod tls;

pub use conn::{ConnectOptions, Features, FtpConn};
pub use reply::{FtpFailure, ReplyClass};
