//! One logged-in FTP control connection: connect (optionally FTPS, explicit
//! or implicit, with the trust of [`super::tls`]),
//! login, FEAT, binary mode, and the operations ftpsync needs, every one under
//! a timeout. Paths are checked for CR/LF/NUL before they are sent.
//!
//! Round trips per small upload are kept down, since each one costs client and
//! server a wake-up per file. On a plaintext connection in passive mode,
//! uploads use a data connection of ftpsync's own. With servers known to
//! answer commands strictly in order (vsftpd,
//! ProFTPD, Pure-FTPd, pyftpdlib), commands that do not depend on each other's
//! replies are pipelined (the login, `CWD`+`EPSV`, `EPSV`+`STOR`,
//! `MDTM`+`SIZE`, `RNFR`+`RNTO`, `MDTM`+`EPSV`+`RETR` in one write, as lftp
//! does with `ftp:sync-mode off`), and a small upload's bytes go out without
//! waiting for the 150; on vsftpd an upload's checks follow its data without
//! waiting for the 226. Downloads read on a data connection of their own too.
//! A passive request for the next transfer rides behind each exchange (on
//! vsftpd behind every transfer, elsewhere behind an upload's checks), so
//! the next STOR, RETR or listing on the connection goes out with its port
//! already known: about one round trip per file and connection.
//! Other servers (libunftp among them works on several commands at once, and
//! answered RNTO before RNFR) get one command at a time. The pipelined login
//! doubles as the probe, and checks on the replies guard the choice; when
//! they fail, the pool goes back to one command at a time.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{Mode, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::list::{ListFormat, Listing, parse_listing, parse_mlsd_time};
use super::reply::{FtpFailure, Reply};
use super::tls::{ConnVerifier, Tickets, Trust, TrustSettings};
use crate::job::{Secret, TlsMode};
use crate::model::RemoteTime;
use crate::model::check_command_arg;

/// Where a resumed download continues (see [`FtpConn::download`]).
#[derive(Debug, Clone)]
pub struct Resume {
    /// Bytes of the partial file to keep.
    pub keep: u64,
    /// The last bytes of what is kept, to compare with the server's copy.
    pub overlap: Vec<u8>,
}

async fn write_timed(
    t: Duration,
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    data: &[u8],
) -> Result<(), FtpFailure> {
    match timeout(t, stream.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(FtpFailure::Network(format!("upload data: {e}"))),
        Err(_) => Err(FtpFailure::Timeout(t)),
    }
}

/// The run's limit on transfer bytes per second (`bwlimit`), shared by all
/// its connections; the default is none.
#[derive(Debug, Clone, Default)]
pub struct RateLimit(Option<async_speed_limit::Limiter>);

impl RateLimit {
    pub fn new(bytes_per_second: Option<u64>) -> RateLimit {
        RateLimit(bytes_per_second.map(|r| async_speed_limit::Limiter::new(r as f64)))
    }

    /// How many bytes to move between two waits: about a tenth of a
    /// second's worth (at least 4 KiB), at most `max`.
    fn chunk(&self, max: usize) -> usize {
        match &self.0 {
            Some(l) => ((l.speed_limit() / 10.0) as usize).clamp(4096, max.max(4096)),
            None => max,
        }
    }

    /// Accounts for `n` bytes moved, waiting as long as the limit requires.
    async fn take(&self, n: usize) {
        if let Some(l) = &self.0
            && n > 0
        {
            l.consume(n).await;
        }
    }
}

/// [`write_timed`] in pieces that keep to `rate`.
async fn write_paced(
    t: Duration,
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    data: &[u8],
    rate: &RateLimit,
) -> Result<(), FtpFailure> {
    for piece in data.chunks(rate.chunk(data.len()).max(1)) {
        write_timed(t, stream, piece).await?;
        rate.take(piece.len()).await;
    }
    Ok(())
}

async fn read_timed(
    t: Duration,
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> Result<usize, FtpFailure> {
    match timeout(t, stream.read(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(FtpFailure::Network(format!("transfer data: {e}"))),
        Err(_) => Err(FtpFailure::Timeout(t)),
    }
}

/// Reads `stream` to its end into `data`, each read under the timeout `t`.
/// The bytes land in `data`'s spare room directly: no zeroed buffer to
/// allocate and copy from for each listing.
async fn read_to_end_timed(
    t: Duration,
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    data: &mut Vec<u8>,
) -> Result<(), FtpFailure> {
    use tokio::io::AsyncReadExt;
    loop {
        if data.capacity() - data.len() < 16 * 1024 {
            data.reserve(64 * 1024);
        }
        match timeout(t, stream.read_buf(data)).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(FtpFailure::Network(format!("transfer data: {e}"))),
            Err(_) => return Err(FtpFailure::Timeout(t)),
        }
    }
}

/// Where a download's bytes go: a file on disk, or memory for a small
/// file that is then written to disk in one go (one trip to a blocking
/// thread instead of one for each of create, write and close).
pub(crate) enum Sink<'a> {
    File(&'a mut tokio::fs::File),
    /// At most `max` bytes: more is a [`FtpFailure::Verify`] (the listing
    /// said `max`), and the transfer is abandoned at once.
    Memory {
        data: Vec<u8>,
        max: u64,
    },
}

impl Sink<'_> {
    async fn put(&mut self, chunk: &[u8]) -> std::io::Result<Result<(), FtpFailure>> {
        match self {
            Sink::File(f) => f.write_all(chunk).await.map(Ok),
            Sink::Memory { data, max } => {
                if (data.len() + chunk.len()) as u64 > *max {
                    return Ok(Err(FtpFailure::Verify(format!(
                        "received more than the {max} bytes the listing said"
                    ))));
                }
                data.extend_from_slice(chunk);
                Ok(Ok(()))
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush().await,
            Sink::Memory { .. } => Ok(()),
        }
    }

    /// The read buffer's size: a small file's whole size and one byte more
    /// (to see an overrun), else `chunk`.
    fn buffer(&self, chunk: usize) -> usize {
        match self {
            Sink::File(_) => chunk,
            Sink::Memory { max, .. } => chunk.min(*max as usize + 1).max(1),
        }
    }
}

/// Reads a download's data into `sink` (a file whose length is `total`), paced
async fn receive(
    t: Duration,
    data: &mut (impl tokio::io::AsyncRead + Unpin),
    sink: &mut Sink<'_>,
    mut total: u64,
    mut overlap: &[u8],
    rate: &RateLimit,
    local: &Path,
) -> Result<u64, FtpFailure> {
    let local_err = |e: std::io::Error| FtpFailure::Local(format!("{}: {e}", local.display()));
    let mut buf = vec![0u8; sink.buffer(rate.chunk(256 * 1024))];
    loop {
        let n = read_timed(t, data, &mut buf).await?;
        if n == 0 {
            break;
        }
        rate.take(n).await;
        let mut chunk = &buf[..n];
        if !overlap.is_empty() {
            let k = overlap.len().min(chunk.len());
            if chunk[..k] != overlap[..k] {
                return Err(FtpFailure::Verify(
                    "the partial download does not match the server's file; starting over".into(),
                ));
            }
            overlap = &overlap[k..];
            chunk = &chunk[k..];
        }
        sink.put(chunk).await.map_err(local_err)??;
        total += chunk.len() as u64;
        crate::events::transferred(chunk.len() as u64);
    }
    if !overlap.is_empty() {
        return Err(FtpFailure::Verify(
            "the server's file is shorter than the partial download".into(),
        ));
    }
    sink.flush().await.map_err(local_err)?;
    Ok(total)
}

/// What a STOR sends.
enum Payload<'a> {
    Bytes(&'a [u8]),
    /// `len` bytes of `file` from `offset` (fewer if the file shrank).
    File {
        file: &'a std::fs::File,
        offset: u64,
        len: u64,
    },
}

/// Sends part of a file on a data connection, read in chunks of 256 KiB
/// (fewer bytes than `len` if the file shrank).
///
/// Not sendfile(2): to a server on the same machine, eight 64 MiB uploads
/// took 379 ms with it and 324 ms this way (medians of five), the machine's
/// CPU time 750 ms against 620. The page references sendfile queues cost
/// the receiving side more than the copy saves here, and over a real link
/// the copy is not what limits a transfer. Chunks of 64 KiB took 348 ms,
/// of 1 MiB 310 ms, at four times the memory per transfer.
async fn send_file_range(
    t: Duration,
    sock: &mut tokio::net::TcpStream,
    file: &std::fs::File,
    (offset, len): (u64, u64),
    rate: &RateLimit,
) -> Result<u64, FtpFailure> {
    use std::io::{Read, Seek};
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(offset))
        .map_err(|e| FtpFailure::Local(e.to_string()))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0;
    while sent < len {
        let want = (len - sent).min(buf.len() as u64) as usize;
        let n = file
            .read(&mut buf[..want])
            .map_err(|e| FtpFailure::Local(e.to_string()))?;
        if n == 0 {
            break;
        }
        write_paced(t, sock, &buf[..n], rate).await?;
        sent += n as u64;
        crate::events::transferred(n as u64);
    }
    Ok(sent)
}

/// Files up to this size are uploaded from one read.
pub const SMALL_FILE: u64 = 1 << 20;

/// Everything needed to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub tls: TlsMode,
    /// Which server certificates to trust.
    pub trust: TrustSettings,
    /// The trust, loaded by the first connection and shared by the others.
    pub loaded_trust: Arc<tokio::sync::OnceCell<Arc<Trust>>>,
    pub passive: bool,
    /// Limit for every operation, and for inactivity during a transfer.
    pub timeout: Duration,
    /// Whether the server handles pipelined commands, shared by a pool's
    /// connections (the first one to log in finds out).
    pub pipelining: Arc<PipelineVerdict>,
    /// Whether the server refused SITE CHMOD, shared by a pool's connections.
    pub chmod: Arc<ChmodVerdict>,
    /// Whether the server lists a directory over the control connection
    /// (`STAT .`) exactly as `LIST -a` does, shared by a pool's connections.
    pub stat_listing: Arc<StatListing>,
    /// Which TLS versions to offer, shared by a pool's connections.
    pub tls_versions: Arc<TlsVersions>,
    /// Ask MLSD for the `UNIX.mode` fact where the server offers it (a pull
    /// that keeps the server's modes).
    pub list_modes: bool,
    /// The run's byte-rate limit, shared by all its connections.
    pub rate: RateLimit,
}

/// Whether the server takes `SITE CHMOD`. Refused once, it is not sent
/// again for the rest of the run, and the refusal is logged once.
#[derive(Debug, Default)]
pub struct ChmodVerdict(AtomicBool);

impl ChmodVerdict {
    fn refused(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// Records a refusal; true for the first one.
    fn refuse(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
}

/// Which TLS versions a pool's connections offer. All that rustls
/// supports, until a TLS 1.3 connection runs out of session tickets (see
/// [`crate::ftp::tls::Tickets`]): then TLS 1.2, whose session every data
/// connection can resume, unless the server does not speak TLS 1.2 (then
/// the pool replaces each connection that runs out of tickets).
#[derive(Debug, Default)]
pub struct TlsVersions(AtomicU8);

impl TlsVersions {
    // 0: every version rustls supports.
    const TLS12: u8 = 1;
    const TLS13_ONLY: u8 = 2;

    fn tls12_only(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TLS12
    }

    /// After a TLS 1.3 connection ran out of tickets: new connections offer
    /// TLS 1.2 only, unless the server turned out not to speak it. True
    /// the first time.
    pub fn prefer_tls12(&self) -> bool {
        self.0
            .compare_exchange(0, Self::TLS12, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// A TLS 1.2 handshake failed: the server speaks TLS 1.3 only. True if
    /// TLS 1.2 was being offered alone.
    fn tls12_failed(&self) -> bool {
        self.0
            .compare_exchange(
                Self::TLS12,
                Self::TLS13_ONLY,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

/// Whether a server's `STAT .` gives the current directory's listing over
/// the control connection, as `LIST -a` gives it over a data connection.
/// Where it does (vsftpd), a scan lists without a data connection per
/// directory: no passive port, connect, accept and close on either side,
/// which on a server sharing the client's cores was half the CPU of a
/// listing. RFC 959 allows it but does not fix its form, so it is used only
/// once one connection has compared the two on a directory with entries,
/// and found them equal, `.` included (no hidden names left out).
#[derive(Debug, Default)]
pub struct StatListing {
    state: AtomicU8,
    /// Woken at each change, for batches waiting on the comparison.
    changed: tokio::sync::Notify,
}

/// Where the comparison of `STAT` and `LIST` stands (see [`StatListing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatVerdict {
    /// Not compared yet, and no connection is comparing.
    Unknown,
    /// A connection is comparing.
    Testing,
    Works,
    Refused,
}

impl StatListing {
    // 0: not known yet.
    const TESTING: u8 = 1;
    const WORKS: u8 = 2;
    const REFUSED: u8 = 3;

    fn get(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }
    /// Claims the comparison: true for one connection at a time.
    fn claim_test(&self) -> bool {
        self.state
            .compare_exchange(0, Self::TESTING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
    fn set(&self, v: u8) {
        self.state.store(v, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub fn verdict(&self) -> StatVerdict {
        match self.get() {
            Self::TESTING => StatVerdict::Testing,
            Self::WORKS => StatVerdict::Works,
            Self::REFUSED => StatVerdict::Refused,
            _ => StatVerdict::Unknown,
        }
    }

    /// Waits while a connection is comparing.
    pub async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.get() != Self::TESTING {
                return;
            }
            changed.await;
        }
    }
}

/// The most entries a directory may have had at the last sync to be listed
/// with `STAT`: a reply on the control connection may not exceed 256 KiB
/// (suppaftp), and 500 lines of the longest names stay under 160 KiB. A
/// directory that holds far more than the state knows (names the filters
/// exclude, others' files) breaks its connection: it is listed again with
/// `LIST` whatever the retry policy, and `STAT` is not used again in the run.
pub const STAT_LISTING_MAX_ENTRIES: usize = 500;

/// What is known about a server and pipelined commands.
#[derive(Debug, Default)]
pub struct PipelineVerdict(AtomicU8);

impl PipelineVerdict {
    // 0: not known yet.
    const WORKS: u8 = 1;
    const BROKEN: u8 = 2;

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Servers that handle one command at a time, in order, matched in the
/// welcome banner (lowercase): the only ones that get pipelined commands.
const IN_ORDER_SERVERS: [&str; 4] = ["vsftpd", "proftpd", "pure-ftpd", "pyftpdlib"];

/// Of those, the servers that do not read the control connection while a
/// transfer runs, so commands sent behind a STOR's data wait for its final
/// reply. Pure-FTPd's transfer loops handle commands, pyftpdlib runs them as
/// they come, and ProFTPD watches for ABOR during a transfer (what it does
/// with other commands is not checked): they are left out.
const QUIET_IN_TRANSFER_SERVERS: [&str; 1] = ["vsftpd"];

/// Servers that, after sending a download's or a listing's data, answer
/// the next command only once the client's close of the data connection
/// has reached them: one round trip per transfer that nothing needs (seen
/// with vsftpd 3.0.3 over a delayed link: the reply to a command pipelined
/// behind RETR or LIST comes a round trip after the 226). The client never
/// writes on such a connection, so it closes its sending half as soon as
/// the connection is open ([`half_close`]). Other servers are left out
/// until shown to take an early close without cutting the transfer.
const WAITS_FOR_DATA_CLOSE_SERVERS: [&str; 1] = ["vsftpd"];

/// A listing's data connection: a passive port to connect to, the
/// connection made already, or the failure to make it.
enum Data {
    Port(u16),
    Connected(tokio::net::TcpStream),
    Failed(FtpFailure),
}

/// How data connections are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataMode {
    Epsv,
    Pasv,
    Active,
}

/// What the server advertised in FEAT (RFC 2389).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    pub mlsd: bool,
    pub mfmt: bool,
    pub size: bool,
    pub epsv: bool,
    pub utf8: bool,
    pub rest: bool,
    /// MDTM reads a file's time (RFC 3659 §3).
    pub mdtm: bool,
    /// The best command the server offers to hash a file, if any.
    pub hash: Option<HashCommand>,
}

/// A content hash a server can compute (and ftpsync can compute locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HashAlgo {
    // In order of preference, best last.
    Md5,
    Sha1,
    Sha256,
}

impl HashAlgo {
    /// The name in HASH's FEAT line and replies (draft-bryan-ftpext-hash).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "SHA-256",
            HashAlgo::Sha1 => "SHA-1",
            HashAlgo::Md5 => "MD5",
        }
    }

    /// The digest's length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha1 => 20,
            HashAlgo::Md5 => 16,
        }
    }
}

/// How to ask the server for a file's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCommand {
    /// `HASH <path>` (draft-bryan-ftpext-hash), the algorithm chosen with
    /// `OPTS HASH <name>` at login.
    Hash(HashAlgo),
    /// `XSHA256`, `XSHA1` or `XMD5 <path>` (older servers: ProFTPD
    /// mod_digest, Serv-U, FileZilla Server).
    X(HashAlgo),
}

impl HashCommand {
    pub fn algo(self) -> HashAlgo {
        match self {
            HashCommand::Hash(a) | HashCommand::X(a) => a,
        }
    }

    /// The command's name, as `plan` shows it.
    pub fn verb(self) -> &'static str {
        match self {
            HashCommand::Hash(_) => "HASH",
            HashCommand::X(HashAlgo::Sha256) => "XSHA256",
            HashCommand::X(HashAlgo::Sha1) => "XSHA1",
            HashCommand::X(HashAlgo::Md5) => "XMD5",
        }
    }

    /// The best hash command in a FEAT reply (`keys` and their parameters):
    /// the strongest algorithm, and HASH before the X commands for it.
    /// Also whether HASH needs `OPTS HASH` to select it (it is not the
    /// one marked current with `*`).
    pub fn from_feat<'a>(
        feat: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Option<(HashCommand, bool)> {
        let mut best: Option<(HashCommand, bool)> = None;
        let mut consider = |cmd: HashCommand, select: bool| {
            let better = match best {
                None => true,
                Some((b, _)) => {
                    cmd.algo() > b.algo()
                        || (cmd.algo() == b.algo() && matches!(cmd, HashCommand::Hash(_)))
                }
            };
            if better {
                best = Some((cmd, select));
            }
        };
        for (key, value) in feat {
            let key = key.trim().to_ascii_uppercase();
            match key.as_str() {
                "HASH" => {
                    for name in value.unwrap_or_default().split(';') {
                        let name = name.trim();
                        let (name, current) = match name.strip_suffix('*') {
                            Some(n) => (n, true),
                            None => (name, false),
                        };
                        if let Some(a) = [HashAlgo::Sha256, HashAlgo::Sha1, HashAlgo::Md5]
                            .into_iter()
                            .find(|a| a.name().eq_ignore_ascii_case(name))
                        {
                            consider(HashCommand::Hash(a), !current);
                        }
                    }
                }
                "XSHA256" => consider(HashCommand::X(HashAlgo::Sha256), false),
                "XSHA1" => consider(HashCommand::X(HashAlgo::Sha1), false),
                "XMD5" => consider(HashCommand::X(HashAlgo::Md5), false),
                _ => {}
            }
        }
        best
    }
}

/// The digest in a reply to a hash command, `None` if the reply holds none
/// of the right length. HASH answers `213 SHA-256 0-49 <hex> <path>`; the X
/// commands `250 <hex>` or `213 <hex>`, some servers adding the path.
fn digest_of(reply: &Reply, cmd: HashCommand) -> Option<Vec<u8>> {
    if !(200..300).contains(&reply.code) {
        return None;
    }
    // The reply's text, without its code.
    let mut words = reply.text.split_whitespace();
    if let HashCommand::Hash(a) = cmd {
        // The algorithm, then the byte range, then the hash.
        if !words.next()?.eq_ignore_ascii_case(a.name()) {
            return None;
        }
        words.next()?;
    }
    let want = cmd.algo().digest_len();
    words
        .take(if matches!(cmd, HashCommand::Hash(_)) {
            1
        } else {
            2
        })
        .find_map(|w| decode_hex(w).filter(|d| d.len() == want))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A logged-in connection.
pub struct FtpConn {
    stream: AsyncRustlsFtpStream,
    pub features: Features,
    timeout: Duration,
    /// Whether `LIST -a` was refused, so plain `LIST` is used.
    plain_list: bool,
    /// vsftpd sets times with `MDTM <time> <path>` (when `mdtm_write` is on,
    /// its default) but does not advertise it; tried while it works.
    mdtm_write: bool,
    /// Plaintext control connection: raw writes are possible.
    plain: bool,
    /// Commands may be pipelined (plaintext, passive, an in-order server
    /// that passed the probe).
    pipeline: bool,
    /// With `pipeline`: the server leaves commands unread while a transfer
    /// runs ([`QUIET_IN_TRANSFER_SERVERS`]), so a STOR's checks can follow
    /// its data without waiting for the 226.
    quiet_in_transfer: bool,
    /// Downloads and listings close their end of the data connection as
    /// soon as it is open ([`WAITS_FOR_DATA_CLOSE_SERVERS`]).
    close_data_early: bool,
    /// A transfer was abandoned (dropped before its final reply): suppaftp
    /// reads that reply before its next command, and raw writes must wait
    /// for it too.
    abandoned: bool,
    verdict: Arc<PipelineVerdict>,
    chmod: Arc<ChmodVerdict>,
    stat_listing: Arc<StatListing>,
    rate: RateLimit,
    data_mode: DataMode,
    /// The control connection's peer: where data connections go.
    peer: IpAddr,
    /// The TLS sessions its data connections resume (None in clear text).
    tickets: Option<Arc<Tickets>>,
    /// A passive port the server opened ahead of the next transfer (the
    /// reply to an `EPSV`/`PASV` pipelined behind the previous exchange),
    /// and when: the next transfer skips that round trip.
    ready: Option<(u16, std::time::Instant)>,
    /// Out of step for good (a reply may or may not still come): the pool
    /// closes it instead of lending it again.
    retired: bool,
}

/// How long a passive port opened ahead of time is used. Servers close an
/// unused passive listener after a while (vsftpd's `accept_timeout`, 60 s
/// by default); a port older than this is asked for anew.
const READY_MAX_AGE: Duration = Duration::from_secs(5);

/// A failed rename, and which half failed: RNFR (the source) or RNTO (the
/// target; also used for connection failures, when it is not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenameError {
    From(FtpFailure),
    To(FtpFailure),
}

impl RenameError {
    pub fn failure(self) -> FtpFailure {
        match self {
            RenameError::From(f) | RenameError::To(f) => f,
        }
    }
}

/// What [`FtpConn::store_small`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Bytes sent.
    pub sent: u64,
    /// The file's size as the server reports it afterwards (SIZE), if it can.
    pub size: Option<u64>,
    /// The modification time set, if the server can set times.
    pub mtime: Option<RemoteTime>,
    /// The server's hash of the file (the algorithm of
    /// [`Features::hash`]), when asked for and given.
    pub digest: Option<Vec<u8>>,
}

/// What to do after a STOR, before the file is renamed into place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfterStore {
    /// Modification time to set (UTC).
    pub mtime: Option<chrono::NaiveDateTime>,
    /// Permission bits to set.
    pub mode: Option<u32>,
    /// Ask the server's hash of the file.
    pub hash: bool,
    /// Ask the file's size (where the server has SIZE).
    pub size: bool,
}

/// The commands that follow a STOR (see [`FtpConn::finish_store`]), and
/// which replies to expect.
struct Finish {
    cmds: Vec<String>,
    chmod: bool,
    set: Option<chrono::NaiveDateTime>,
    size: bool,
    hash: Option<HashCommand>,
}

/// How long a server may take to hash `len` bytes, beyond the usual
/// timeout: a second for every 32 MiB (disks and servers that hash at
/// 32 MiB/s are slow ones).
fn hashing_time(len: u64) -> Duration {
    Duration::from_secs(len / (32 << 20))
}

/// A command that lists a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMethod {
    Mlsd,
    /// `LIST -a`, or plain `LIST` where the server refuses `-a`.
    List,
}

/// One directory as listed.
#[derive(Debug, Clone)]
pub struct DirListing {
    /// False when CWD said the directory does not exist.
    pub exists: bool,
    pub listing: Listing,
    /// It came over the control connection (`STAT .`, see [`StatListing`]):
    /// where a reply can be ended early by a name that holds a line break,
    /// so deletes rest on it only once a `LIST` agrees.
    pub by_control: bool,
}

/// `CWD dir`, `STAT .` and `NOOP`, as one piece of a write.
fn stat_commands(dir: &str) -> Result<String, FtpFailure> {
    let dir = checked(dir)?;
    Ok(format!("CWD {dir}\r\nSTAT .\r\nNOOP\r\n"))
}

/// The listing in the body of a reply to `STAT .`: the lines between the
/// first and the last, in `LIST` format. `None` when the reply is not a
/// listing (one line, or a first line that is itself an entry); with it,
/// whether a `.` entry was shown (the server lists every name).
pub fn stat_listing(body: &[u8], now: chrono::NaiveDateTime) -> Option<(Listing, bool)> {
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let first_end = body.iter().position(|&b| b == b'\n')?;
    let last_start = body.iter().rposition(|&b| b == b'\n')? + 1;
    let first = &body[..first_end];
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    if first.len() < 4 || first[3] != b'-' {
        return None;
    }
    let opener = first.get(4..).unwrap_or_default();
    if matches!(
        super::list::parse_list_line(opener, now),
        super::list::ParsedLine::Entry(_) | super::list::ParsedLine::Ignored
    ) && !opener.is_empty()
    {
        return None;
    }
    let lines = if last_start > first_end + 1 {
        &body[first_end + 1..last_start]
    } else {
        &[][..]
    };
    let shows_dot = lines.split(|&b| b == b'\n').any(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        l.first() == Some(&b'd') && l.ends_with(b" .")
    });
    Some((parse_listing(ListFormat::List, lines, now), shows_dot))
}

/// Whether two listings hold the same entries, in any order.
fn same_entries(a: &Listing, b: &Listing) -> bool {
    fn key(l: &Listing) -> Vec<(&[u8], &super::list::EntryKind, Option<u64>, RemoteTime)> {
        let mut v: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.name.as_slice(), &e.kind, e.size, e.mtime))
            .collect();
        v.sort_unstable_by(|x, y| x.0.cmp(y.0));
        v
    }
    a.entries.len() == b.entries.len() && key(a) == key(b)
}

async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, suppaftp::FtpError>>,
) -> Result<T, FtpFailure> {
    match timeout(limit, fut).await {
        Ok(r) => r.map_err(FtpFailure::from),
        Err(_) => Err(FtpFailure::Timeout(limit)),
    }
}

fn checked(path: &str) -> Result<&str, FtpFailure> {
    check_command_arg(path).map_err(|_| FtpFailure::BadPath)?;
    Ok(path)
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, FtpFailure> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| FtpFailure::Network(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| FtpFailure::Network(format!("{host} has no address")))
}

/// A TLS connector for one control connection and its data connections,
/// and the verifier that tells why a certificate was refused.
async fn tls_connector(
    o: &ConnectOptions,
) -> Result<(AsyncRustlsConnector, Arc<ConnVerifier>, Arc<Tickets>), FtpFailure> {
    let trust = o
        .loaded_trust
        .get_or_try_init(|| async {
            let settings = o.trust.clone();
            match tokio::task::spawn_blocking(move || Trust::load(settings)).await {
                Ok(Ok(trust)) => Ok(Arc::new(trust)),
                Ok(Err(e)) => Err(FtpFailure::TlsSetup(e.to_string())),
                Err(e) => Err(FtpFailure::TlsSetup(e.to_string())),
            }
        })
        .await?;
    let tls = trust
        .client_config(o.tls_versions.tls12_only())
        .map_err(|e| FtpFailure::TlsSetup(e.to_string()))?;
    Ok((
        AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(tls.config)),
        tls.verifier,
        tls.tickets,
    ))
}

/// A failed TLS handshake: a refused certificate with its fingerprint, or
/// what suppaftp said.
fn handshake_failure(e: suppaftp::FtpError, verifier: &ConnVerifier) -> FtpFailure {
    match (e, verifier.refusal()) {
        (suppaftp::FtpError::SecureError(_), Some(r)) => FtpFailure::Certificate {
            reason: r.reason,
            fingerprint: r.fingerprint.to_string(),
        },
        (e, _) => e.into(),
    }
}

/// PBSZ 0 and PROT P on an implicit-FTPS connection (explicit FTPS gets
/// them from suppaftp's `into_secure`): data connections are encrypted too,
/// or the connection is given up before the login.
async fn protect_data(stream: &mut AsyncRustlsFtpStream, t: Duration) -> Result<(), FtpFailure> {
    for cmd in ["PBSZ 0", "PROT P"] {
        match timed(t, stream.custom_command(cmd, &[Status::CommandOk])).await {
            Ok(_) => {}
            Err(FtpFailure::Reply { code, text }) => {
                return Err(FtpFailure::TlsSetup(format!(
                    "the server refused {cmd} ({code} {text}): data connections would not be encrypted"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the next reply on `stream`, whatever its code, with its raw body
/// (all the lines of a multi-line reply).
async fn read_reply_from(
    stream: &mut AsyncRustlsFtpStream,
    t: Duration,
) -> Result<(Reply, Vec<u8>), FtpFailure> {
    match timeout(t, stream.read_response_in(&[])).await {
        Err(_) => Err(FtpFailure::Timeout(t)),
        Ok(Ok(r)) | Ok(Err(suppaftp::FtpError::UnexpectedResponse(r))) => {
            let reply = Reply::parse(&r.body)?;
            tracing::trace!("<- {} {}", reply.code, reply.text);
            Ok((reply, r.body))
        }
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Writes `bytes` on a plaintext control connection's socket.
async fn write_all_raw(
    sock: &tokio::net::TcpStream,
    bytes: &[u8],
    t: Duration,
) -> Result<(), FtpFailure> {
    let mut done = 0;
    while done < bytes.len() {
        match timeout(t, sock.writable()).await {
            Err(_) => return Err(FtpFailure::Timeout(t)),
            Ok(Err(e)) => return Err(FtpFailure::Network(format!("control connection: {e}"))),
            Ok(Ok(())) => {}
        }
        match sock.try_write(&bytes[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(FtpFailure::Network(format!("control connection: {e}"))),
        }
    }
    Ok(())
}

/// What a pipelined login learnt: FEAT's features (or its refusal), and
/// the port of the passive request that ended it, when the server opened one.
type LoginOutcome = (
    Result<Vec<(String, Option<String>)>, FtpFailure>,
    Option<u16>,
);

/// Logs in with USER, PASS, TYPE I, FEAT, OPTS UTF8 ON and EPSV in one
/// write (servers known to answer in order, plaintext, passive): one round
/// trip where one command at a time takes six, and the connection's first
/// transfer or listing finds its passive port open. The write is also the
/// pipelining probe: a server that reads one command per packet never
/// answers PASS, and then the pool stops pipelining
/// ([`PipelineVerdict::BROKEN`]) and the caller logs in again one command
/// at a time.
async fn login_pipelined(
    stream: &mut AsyncRustlsFtpStream,
    o: &ConnectOptions,
) -> Result<LoginOutcome, FtpFailure> {
    let t = o.timeout;
    let wire = format!(
        "USER {}\r\nPASS {}\r\nTYPE I\r\nFEAT\r\nOPTS UTF8 ON\r\nEPSV\r\n",
        o.user,
        o.password.expose()
    );
    tracing::trace!(
        "-> USER {}; PASS ****; TYPE I; FEAT; OPTS UTF8 ON; EPSV",
        o.user
    );
    {
        let sock = stream.get_ref().await;
        write_all_raw(&sock, wire.as_bytes(), t).await?;
    }
    let next = read_reply_from;
    let (user, _) = next(stream, t).await?;
    let limit = t.min(Duration::from_secs(5));
    let pass = match next(stream, limit).await {
        Err(FtpFailure::Timeout(_)) if o.pipelining.get() != PipelineVerdict::WORKS => {
            o.pipelining.set(PipelineVerdict::BROKEN);
            return Err(FtpFailure::Timeout(limit));
        }
        r => r?.0,
    };
    match user.code {
        // No password needed: PASS gets a 503 or a 230.
        230 if pass.code != 421 => {}
        331 if pass.code == 230 || pass.code == 202 => {}
        331 | 230 => return Err(pass.failure()),
        _ => return Err(user.failure()),
    }
    let (type_i, _) = next(stream, t).await?;
    let (feat, body) = next(stream, t).await?;
    let (utf8, _) = next(stream, t).await?;
    let (epsv, _) = next(stream, t).await?;
    for r in [&type_i, &feat, &utf8, &epsv] {
        if r.code == 421 {
            return Err(r.failure());
        }
    }
    if !(200..300).contains(&type_i.code) {
        return Err(type_i.failure());
    }
    // Anything but a 229 (a refusal) only means the first transfer asks again.
    let port = (epsv.code == 229).then(|| passive_port(&epsv)).flatten();
    o.pipelining.set(PipelineVerdict::WORKS);
    if feat.code != 211 {
        return Ok((Err(feat.failure()), port));
    }
    Ok((Ok(feat_lines(&body)), port))
}

/// The features in a FEAT reply (RFC 2389 §3.2): the lines between the
/// first and the last, each a space, a name and maybe its parameters.
fn feat_lines(body: &[u8]) -> Vec<(String, Option<String>)> {
    let text = String::from_utf8_lossy(body);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .skip(1)
        .take(lines.len().saturating_sub(2))
        .filter_map(|l| {
            let l = l.strip_prefix(' ')?.trim_end();
            match l.split_once(' ') {
                Some((name, params)) => Some((name.to_string(), Some(params.to_string()))),
                None if !l.is_empty() => Some((l.to_string(), None)),
                None => None,
            }
        })
        .collect()
}

impl FtpConn {
    /// Connects and logs in. A 530 at login is returned as a `Reply` failure
    /// with code 530 (the caller decides whether that ends the run).
    pub async fn connect(o: &ConnectOptions) -> Result<FtpConn, FtpFailure> {
        let verdict = o.pipelining.get();
        let conn = match Self::connect_once(o).await {
            Err(FtpFailure::Tls(e)) if o.tls_versions.tls12_failed() => {
                tracing::info!(
                    "the server refused a TLS 1.2 handshake ({e}); offering TLS 1.3 again"
                );
                Self::connect_once(o).await?
            }
            // The pipelined login went unanswered ([`login_pipelined`]).
            Err(FtpFailure::Timeout(_))
                if verdict != PipelineVerdict::BROKEN
                    && o.pipelining.get() == PipelineVerdict::BROKEN =>
            {
                tracing::info!("the server mishandles pipelined commands; sending one at a time");
                Self::connect_once(o).await?
            }
            r => r?,
        };
        Ok(conn)
    }

    async fn connect_once(o: &ConnectOptions) -> Result<FtpConn, FtpFailure> {
        let addr = resolve(&o.host, o.port)?;
        let t = o.timeout;
        let mut tickets = None;
        let mut stream = if o.tls == TlsMode::Implicit {
            let (connector, verifier, t13) = tls_connector(o).await?;
            tickets = Some(t13);
            let connect = AsyncRustlsFtpStream::connect_secure_implicit(addr, connector, &o.host);
            let mut stream = match timeout(t, connect).await {
                Err(_) => return Err(FtpFailure::Timeout(t)),
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(handshake_failure(e, &verifier)),
            };
            protect_data(&mut stream, t).await?;
            stream
        } else {
            match timeout(t, AsyncRustlsFtpStream::connect_timeout(addr, t)).await {
                Ok(r) => r.map_err(FtpFailure::from)?,
                Err(_) => return Err(FtpFailure::Timeout(t)),
            }
        };
        if o.tls == TlsMode::Explicit {
            let (connector, verifier, t13) = tls_connector(o).await?;
            tickets = Some(t13);
            stream = match timeout(t, stream.into_secure(connector, &o.host)).await {
                Err(_) => return Err(FtpFailure::Timeout(t)),
                Ok(Ok(s)) => s,
                // A reply instead of 234: the server will not do TLS (vsftpd
                // without ssl_enable answers AUTH TLS with "530 Please login").
                Ok(Err(suppaftp::FtpError::UnexpectedResponse(r))) => {
                    let r = Reply::parse(&r.body)?;
                    return Err(FtpFailure::TlsRefused {
                        code: r.code,
                        text: r.text,
                    });
                }
                Ok(Err(e)) => return Err(handshake_failure(e, &verifier)),
            };
        }
        // Commands are single small writes: do not let Nagle hold them back.
        let _ = stream.get_ref().await.set_nodelay(true);
        checked(&o.user)?;
        checked(o.password.expose())?;
        let banner = stream
            .get_welcome_msg()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let plain = o.tls == TlsMode::None;
        let in_order = plain && o.passive && IN_ORDER_SERVERS.iter().any(|b| banner.contains(b));
        let piped_login = in_order && o.pipelining.get() != PipelineVerdict::BROKEN;
        let mut opened_at_login = None;
        let feat = if piped_login {
            let (feat, port) = login_pipelined(&mut stream, o).await?;
            opened_at_login = port;
            feat
        } else {
            timed(t, stream.login(o.user.as_str(), o.password.expose())).await?;
            timed(t, stream.transfer_type(FileType::Binary)).await?;
            timed(t, stream.feat())
                .await
                .map(|f| f.into_iter().collect::<Vec<_>>())
        };
        let mut hash_select = None;
        let (mut features, mlst_facts) = match feat {
            Ok(f) => {
                let has = |k: &str| f.iter().any(|(key, _)| key.eq_ignore_ascii_case(k));
                hash_select =
                    HashCommand::from_feat(f.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
                let mlst = f
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("MLST"))
                    .and_then(|(_, v)| v.clone());
                let features = Features {
                    mlsd: has("MLST") || has("MLSD"),
                    mfmt: has("MFMT"),
                    size: has("SIZE"),
                    epsv: has("EPSV"),
                    utf8: has("UTF8"),
                    rest: has("REST"),
                    mdtm: has("MDTM"),
                    hash: None,
                };
                (features, mlst)
            }
            // FEAT is optional (RFC 2389): assume a minimal server.
            Err(FtpFailure::Reply { .. }) => (Features::default(), None),
            Err(e) => return Err(e),
        };
        if features.utf8 && !piped_login {
            let _ = timed(t, stream.opts("UTF8", Some("ON"))).await;
        }
        if o.list_modes
            && let Some(facts) = mlst_facts.as_deref().and_then(mlst_facts_with_mode)
        {
            // Best effort: without it the listing just shows no modes.
            let _ = timed(t, stream.opts("MLST", Some(facts))).await;
        }
        features.hash = match hash_select {
            Some((cmd @ HashCommand::Hash(a), true)) => {
                // Not the server's current algorithm: select it, or do without.
                let selected = timed(t, stream.opts("HASH", Some(a.name()))).await;
                selected.is_ok().then_some(cmd)
            }
            other => other.map(|(cmd, _)| cmd),
        };
        let mdtm_write = !features.mfmt && banner.contains("vsftpd");
        let pipeline = in_order && o.pipelining.get() != PipelineVerdict::BROKEN;
        let quiet_in_transfer = QUIET_IN_TRANSFER_SERVERS.iter().any(|b| banner.contains(b));
        let close_data_early = WAITS_FOR_DATA_CLOSE_SERVERS
            .iter()
            .any(|b| banner.contains(b));
        let data_mode = if !o.passive {
            DataMode::Active
        } else if features.epsv || addr.is_ipv6() {
            DataMode::Epsv
        } else {
            DataMode::Pasv
        };
        let mut stream = if o.passive {
            stream
        } else {
            stream.active_mode(t)
        };
        if o.passive {
            // Data connections go to the control connection's address, never to
            // the one in a PASV reply (bounce / SSRF: curl CVE-2020-8284).
            if data_mode == DataMode::Epsv {
                stream.set_mode(Mode::ExtendedPassive);
            } else {
                stream.set_mode(Mode::Passive);
                stream.set_passive_nat_workaround(true);
            }
        }
        let stream = stream.passive_stream_builder(move |addr| {
            Box::pin(async move {
                match timeout(t, tokio::net::TcpStream::connect(addr)).await {
                    Ok(r) => r.map_err(suppaftp::FtpError::ConnectionError),
                    Err(_) => Err(suppaftp::FtpError::ConnectionError(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "data connection timed out",
                    ))),
                }
            })
        });
        Ok(FtpConn {
            stream,
            features,
            timeout: t,
            plain_list: false,
            mdtm_write,
            plain,
            pipeline,
            quiet_in_transfer,
            close_data_early,
            abandoned: false,
            verdict: Arc::clone(&o.pipelining),
            chmod: Arc::clone(&o.chmod),
            stat_listing: Arc::clone(&o.stat_listing),
            rate: o.rate.clone(),
            data_mode,
            peer: addr.ip(),
            tickets,
            // Only where EPSV is the data mode: the port is reached the same way.
            ready: opened_at_login
                .filter(|_| data_mode == DataMode::Epsv)
                .map(|p| (p, std::time::Instant::now())),
            retired: false,
        })
    }

    /// Whether the connection can serve another operation ([`Self::retired`]).
    pub fn reusable(&self) -> bool {
        !self.retired
    }

    /// Whether this TLS 1.3 connection has used its last session ticket:
    /// its next data connection could not resume the control connection's
    /// session ([`Tickets`]).
    pub fn out_of_tls_sessions(&self) -> bool {
        self.tickets.as_ref().is_some_and(|t| t.exhausted())
    }

    /// Writes raw command bytes on a plaintext control connection.
    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FtpFailure> {
        debug_assert!(self.plain, "raw writes only on plaintext connections");
        let t = self.timeout;
        if self.abandoned {
            // NOOP through suppaftp first reads the abandoned transfer's reply.
            timed(t, self.stream.noop()).await?;
            self.abandoned = false;
        }
        let sock = self.stream.get_ref().await;
        write_all_raw(&sock, bytes, t).await
    }

    /// Reads the next reply, whatever its code.
    async fn read_reply(&mut self) -> Result<Reply, FtpFailure> {
        Ok(read_reply_from(&mut self.stream, self.timeout).await?.0)
    }

    /// Whether to pipeline now: the pool may have stopped since this
    /// connection was made.
    fn pipelining(&self) -> bool {
        self.pipeline && self.verdict.get() != PipelineVerdict::BROKEN
    }

    /// Takes the passive port opened ahead of time, if it is still fresh.
    /// Any other passive request replaces it on the server, so it is
    /// forgotten either way.
    fn take_ready(&mut self) -> Option<u16> {
        let (port, at) = self.ready.take()?;
        (at.elapsed() < READY_MAX_AGE).then_some(port)
    }

    /// Whether a passive request for the next transfer can ride behind this
    /// transfer's command: the server reads nothing while a transfer runs,
    /// so it answers that request only after the transfer's final reply.
    fn ahead_in_transfer(&self) -> bool {
        self.pipelining() && self.quiet_in_transfer
    }

    /// Reads the reply to a passive request sent ahead of time and keeps
    /// its port for the next transfer. A refusal only means the next
    /// transfer asks again; a transfer's or a check's reply in its place
    /// means the server answers out of order.
    async fn read_ready(&mut self) -> Result<(), FtpFailure> {
        let r = self.read_reply().await?;
        self.keep_ready(&r)
    }

    /// [`Self::read_ready`] with the reply already read.
    fn keep_ready(&mut self, r: &Reply) -> Result<(), FtpFailure> {
        match passive_port(r) {
            Some(port) => {
                self.ready = Some((port, std::time::Instant::now()));
                Ok(())
            }
            None if r.code == 421 => Err(r.failure()),
            None if r.code < 400 && !matches!(r.code, 227 | 229) => Err(self.out_of_order()),
            None => Ok(()),
        }
    }

    /// Sends `cmds` and returns one reply for each, in order: in one write
    /// when pipelining, else one command at a time. Replies are not judged
    /// (callers check they fit: see [`Self::out_of_order`]).
    async fn batch(&mut self, cmds: &[String]) -> Result<Vec<Reply>, FtpFailure> {
        let piped = self.pipelining();
        self.batch_with(cmds, piped).await
    }

    async fn batch_with(&mut self, cmds: &[String], piped: bool) -> Result<Vec<Reply>, FtpFailure> {
        for c in cmds {
            checked(c)?;
        }
        let mut replies = Vec::with_capacity(cmds.len());
        if piped {
            let mut wire = String::new();
            for c in cmds {
                tracing::trace!("-> {c}");
                wire.push_str(c);
                wire.push_str("\r\n");
            }
            self.write_raw(wire.as_bytes()).await?;
            for _ in cmds {
                let r = self.read_reply().await?;
                if r.code == 421 {
                    // The server is closing: nothing more comes.
                    return Err(r.failure());
                }
                replies.push(r);
            }
        } else {
            for c in cmds {
                let r = match timeout(self.timeout, self.stream.custom_command(c, &[])).await {
                    Err(_) => return Err(FtpFailure::Timeout(self.timeout)),
                    Ok(Ok(r)) | Ok(Err(suppaftp::FtpError::UnexpectedResponse(r))) => r,
                    Ok(Err(e)) => return Err(e.into()),
                };
                let r = Reply::parse(&r.body)?;
                if r.code == 421 {
                    return Err(r.failure());
                }
                replies.push(r);
            }
        }
        Ok(replies)
    }

    /// Pipelined replies that cannot belong to their commands: the server
    /// works on commands concurrently. The pool stops pipelining, and this
    /// connection, whose state is unknown, is retired by the (retryable) error.
    fn out_of_order(&mut self) -> FtpFailure {
        tracing::warn!(
            "the server answered pipelined commands out of order; sending one at a time"
        );
        self.verdict.set(PipelineVerdict::BROKEN);
        self.pipeline = false;
        FtpFailure::Network("replies out of order".into())
    }

    /// The command that sets `path`'s permission bits, unless there is no
    /// mode to set or the server refused SITE CHMOD earlier in the run.
    fn chmod_command(&self, path: &str, mode: Option<u32>) -> Option<String> {
        let mode = mode?;
        if self.chmod.refused() {
            return None;
        }
        Some(format!("SITE CHMOD {:03o} {path}", mode & 0o777))
    }

    /// Reads the reply to a [`Self::chmod_command`]: whether the mode was set.
    /// A refusal is no failure of the transfer; the first one is logged and
    /// SITE CHMOD is not sent again in this run.
    fn chmod_done(&self, reply: &Reply) -> bool {
        if (200..300).contains(&reply.code) {
            return true;
        }
        if !self.chmod.refuse() {
            return false;
        }
        if matches!(reply.code, 500 | 502 | 504) {
            // The server has no SITE CHMOD at all (libunftp, IIS): nothing
            // the user can change, so no warning on every run.
            tracing::info!(
                "the server has no SITE CHMOD ({} {}): files and directories keep the modes the server gives them",
                reply.code,
                reply.text
            );
        } else {
            tracing::warn!(
                "the server refused SITE CHMOD ({} {}): files and directories keep the modes the server gives them for the rest of this run (set `permissions: none` to stop asking)",
                reply.code,
                reply.text
            );
        }
        false
    }

    /// Sets the permission bits of a file or directory (`SITE CHMOD`, which
    /// vsftpd, ProFTPD, Pure-FTPd and pyftpdlib take). Returns whether they
    /// were set; a refusal is not an error (see [`Self::chmod_done`]).
    pub async fn chmod(&mut self, path: &str, mode: u32) -> Result<bool, FtpFailure> {
        let Some(cmd) = self.chmod_command(checked(path)?, Some(mode)) else {
            return Ok(false);
        };
        let r = self.batch(&[cmd]).await?;
        Ok(self.chmod_done(&r[0]))
    }

    /// A file's modification time as MDTM reports it (RFC 3659 §3: UTC, to
    /// the second), `None` when the server has no MDTM or does not tell.
    pub async fn mdtm(&mut self, path: &str) -> Result<Option<chrono::NaiveDateTime>, FtpFailure> {
        if !self.features.mdtm {
            return Ok(None);
        }
        let r = self.batch(&[format!("MDTM {}", checked(path)?)]).await?;
        if r[0].code != 213 {
            return Ok(None);
        }
        Ok(parse_mlsd_time(r[0].text.trim().as_bytes()))
    }

    /// The command that sets `path`'s time to `utc`, if the server can.
    fn set_mtime_command(&self, path: &str, utc: chrono::NaiveDateTime) -> Option<String> {
        let verb = if self.features.mfmt {
            "MFMT"
        } else if self.mdtm_write {
            "MDTM"
        } else {
            return None;
        };
        Some(format!("{verb} {} {path}", utc.format("%Y%m%d%H%M%S")))
    }

    /// Reads the reply to a set-time command sent with [`Self::set_mtime_command`].
    fn mtime_set(&mut self, reply: &Reply, utc: chrono::NaiveDateTime) -> Option<RemoteTime> {
        if reply.code == 213 {
            Some(RemoteTime::Exact(utc))
        } else {
            if reply.code >= 500 {
                // Not supported (or not here): stop trying the vsftpd form.
                self.mdtm_write = false;
            }
            None
        }
    }

    /// Uploads `data`, a whole file, to `remote` (STOR); then
    /// [`Self::finish_store`]. Pipelined, that is four waits for replies
    /// (229; 150+226; CHMOD+MDTM+SIZE+hash; and the caller's RNFR+RNTO)
    /// where one command at a time takes eight or more.
    pub async fn store_small(
        &mut self,
        remote: &str,
        data: &[u8],
        after: AfterStore,
    ) -> Result<Stored, FtpFailure> {
        let remote = checked(remote)?;
        let t = self.timeout;
        if self.plain && self.data_mode != DataMode::Active {
            let finish = self.finish_commands(remote, after);
            return self
                .store_direct(remote, Payload::Bytes(data), 0, &finish)
                .await;
        } else {
            let mut stream = timed(t, self.stream.put_with_stream(remote)).await?;
            write_paced(t, &mut stream, data, &self.rate).await?;
            timed(t, stream.finish()).await?;
        }
        self.finish_store(remote, data.len() as u64, after).await
    }

    /// After a STOR of `sent` bytes: sets the file's permission bits and
    /// modification time where the server can, asks its SIZE and, with
    /// `after.hash`, the server's hash of it ([`Features::hash`]), all in
    /// one round trip when pipelining.
    pub async fn finish_store(
        &mut self,
        remote: &str,
        sent: u64,
        after: AfterStore,
    ) -> Result<Stored, FtpFailure> {
        let remote = checked(remote)?;
        let finish = self.finish_commands(remote, after);
        if finish.cmds.is_empty() {
            return self.finish_replies(&finish, &[], sent, false);
        }
        let piped = self.pipelining();
        // The server reads the whole file to hash it: allow for that.
        let base = self.timeout;
        if finish.hash.is_some() {
            self.timeout = base + hashing_time(sent);
        }
        let replies = self.batch_with(&finish.cmds, piped).await;
        self.timeout = base;
        let replies = replies?;
        self.finish_replies(&finish, &replies, sent, piped)
    }

    /// The commands that follow a STOR of `remote` (see [`Self::finish_store`]).
    fn finish_commands(&self, remote: &str, after: AfterStore) -> Finish {
        let chmod = self.chmod_command(remote, after.mode);
        let set = after
            .mtime
            .and_then(|utc| Some((utc, self.set_mtime_command(remote, utc)?)));
        let hash = self.features.hash.filter(|_| after.hash);
        let mut cmds = Vec::new();
        if let Some(cmd) = &chmod {
            cmds.push(cmd.clone());
        }
        if let Some((_, cmd)) = &set {
            cmds.push(cmd.clone());
        }
        let size = self.features.size && after.size;
        if size {
            cmds.push(format!("SIZE {remote}"));
        }
        if let Some(cmd) = hash {
            cmds.push(format!("{} {remote}", cmd.verb()));
        }
        Finish {
            cmds,
            chmod: chmod.is_some(),
            set: set.map(|(utc, _)| utc),
            size,
            hash,
        }
    }

    /// Reads the replies to [`Self::finish_commands`]' commands, one each,
    /// in order. `piped`: they were pipelined, so a reply that cannot be
    /// its command's means the server answers out of order.
    fn finish_replies(
        &mut self,
        finish: &Finish,
        replies: &[Reply],
        sent: u64,
        piped: bool,
    ) -> Result<Stored, FtpFailure> {
        let mut replies = replies.iter();
        let mut next = || replies.next().expect("one reply per command");
        if finish.chmod {
            let r = next();
            self.chmod_done(r);
        }
        let mtime = match finish.set {
            Some(utc) => {
                let r = next();
                self.mtime_set(r, utc)
            }
            None => None,
        };
        let size = if finish.size {
            let r = next();
            match r.code {
                213 => match r.text.trim().parse::<u64>() {
                    Ok(n) => Some(n),
                    // A pipelined MDTM's "213 File modification time set" in SIZE's place.
                    Err(_) if finish.set.is_some() && piped => return Err(self.out_of_order()),
                    Err(_) => {
                        return Err(FtpFailure::Protocol(format!("bad SIZE reply {:?}", r.text)));
                    }
                },
                400..500 => return Err(r.failure()),
                _ => None,
            }
        } else {
            None
        };
        let digest = match finish.hash {
            Some(cmd) => {
                let r = next();
                if (400..500).contains(&r.code) {
                    return Err(r.failure());
                }
                let d = digest_of(r, cmd);
                if d.is_none() && r.code < 300 && piped {
                    // A 2xx without a digest where the hash's reply belongs.
                    return Err(self.out_of_order());
                }
                d
            }
            None => None,
        };
        Ok(Stored {
            sent,
            size,
            mtime,
            digest,
        })
    }

    /// STOR over a data connection of our own (plaintext, passive). When
    /// pipelining, `EPSV`/`PASV` and `STOR` go in one write (or `STOR`
    /// alone, on a passive port opened ahead of time) and the bytes go
    /// out as soon as the connection is up, the 150 read with the 226;
    /// otherwise the bytes wait for the 150. With `rest`,
    /// the server is told to write from that byte on (REST, not pipelined).
    /// Then `finish`'s commands: when pipelining, they go out as soon as the
    /// data is sent on servers that read nothing during a transfer, so their
    /// replies come right after the transfer's 226 instead of a round trip
    /// later; elsewhere right after the 226. Either way a passive request
    /// for the next transfer on this connection rides with them.
    async fn store_direct(
        &mut self,
        remote: &str,
        payload: Payload<'_>,
        rest: u64,
        finish: &Finish,
    ) -> Result<Stored, FtpFailure> {
        let t = self.timeout;
        let stor = format!("STOR {remote}");
        let pipelined = self.pipelining() && rest == 0;
        let ready = self.take_ready().filter(|_| pipelined);
        self.write_raw(
            self.passive_request("", &stor, pipelined, ready, false)
                .as_bytes(),
        )
        .await?;
        let mut sock = self.open_passive(&stor, rest, pipelined, ready).await?;
        let rate = self.rate.clone();
        let sent = async {
            let n = match payload {
                Payload::Bytes(data) => {
                    write_paced(t, &mut sock, data, &rate).await?;
                    data.len() as u64
                }
                Payload::File { file, offset, len } => {
                    send_file_range(t, &mut sock, file, (offset, len), &rate).await?
                }
            };
            match timeout(t, sock.shutdown()).await {
                Ok(Ok(())) => Ok(n),
                Ok(Err(e)) => Err(FtpFailure::Network(format!("upload data: {e}"))),
                Err(_) => Err(FtpFailure::Timeout(t)),
            }
        }
        .await;
        drop(sock);
        let n = match sent {
            Ok(n) => n + rest,
            Err(e @ (FtpFailure::Network(_) | FtpFailure::Timeout(_))) => {
                return Err(self.refusal_or(e).await);
            }
            Err(e) => {
                // A local failure (reading the file): the data connection was
                // closed early, so the server answers the STOR; read that
                // answer to stay in step, then report the local failure.
                self.transfer_outcome().await?;
                return Err(e);
            }
        };
        // Behind the data (servers that read nothing during a transfer), or
        // after the 226 (other in-order servers, only with checks to send):
        // the checks and a passive request for the next transfer.
        let behind = self.ahead_in_transfer();
        let after = !behind && self.pipelining() && !finish.cmds.is_empty();
        let mut cmds: Vec<&str> = finish.cmds.iter().map(String::as_str).collect();
        if behind || after {
            cmds.push(self.pasv_verb());
        }
        if behind {
            self.write_raw(command_wire(&cmds).as_bytes()).await?;
        }
        match self.transfer_outcome().await {
            // A check's reply (200, 213) where the transfer's belongs.
            Ok(code) if behind && code != 226 && code != 250 => {
                return Err(self.out_of_order());
            }
            Ok(_) => {}
            Err(e) => {
                if behind && matches!(e, FtpFailure::Reply { .. }) {
                    // The server goes on to answer what followed: stay in step.
                    for _ in &finish.cmds {
                        self.read_reply().await?;
                    }
                    self.read_ready().await?;
                }
                return Err(e);
            }
        }
        // The server reads the whole file to hash it: allow for that.
        let base = self.timeout;
        if finish.hash.is_some() {
            self.timeout = base + hashing_time(n);
        }
        let replies = if behind {
            self.read_replies(cmds.len()).await
        } else {
            let cmds: Vec<String> = cmds.iter().map(|c| (*c).to_owned()).collect();
            self.batch_with(&cmds, self.pipelining()).await
        };
        self.timeout = base;
        let replies = replies?;
        let piped = self.pipelining();
        let stored = self.finish_replies(finish, &replies, n, piped)?;
        if behind || after {
            let next = replies.last().expect("one reply per command");
            self.keep_ready(next)?;
        }
        Ok(stored)
    }

    /// Reads `n` replies to commands sent in one write; a 421 ends it.
    async fn read_replies(&mut self, n: usize) -> Result<Vec<Reply>, FtpFailure> {
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            let r = self.read_reply().await?;
            if r.code == 421 {
                return Err(r.failure());
            }
            replies.push(r);
        }
        Ok(replies)
    }

    /// The bytes that start a transfer: `before` (a command, or nothing),
    /// EPSV or PASV unless a port is `ready`, and with `pipelined` the
    /// transfer command `cmd` too, followed by a passive request for the
    /// next transfer with `ahead`.
    fn passive_request(
        &self,
        before: &str,
        cmd: &str,
        pipelined: bool,
        ready: Option<u16>,
        ahead: bool,
    ) -> String {
        let pasv = self.pasv_verb();
        let pasv_now = if ready.is_some() { "" } else { pasv };
        let cmd = if pipelined { cmd } else { "" };
        let pasv_next = if ahead { pasv } else { "" };
        command_wire(&[before, pasv_now, cmd, pasv_next])
    }

    /// Reads the reply to a passive request and returns its port. When the
    /// transfer command was `pipelined` behind a refused request, its reply
    /// is read too, to stay in step.
    async fn passive_reply(&mut self, pipelined: bool) -> Result<u16, FtpFailure> {
        let opened = self.read_reply().await?;
        match port_of(&opened) {
            Ok(port) => Ok(port),
            Err(failure) => {
                if pipelined {
                    // The command was sent too: its reply must be read to stay in step.
                    let r = self.read_reply().await?;
                    if r.code < 200 {
                        // The server went on with the transfer somehow: retire this connection.
                        return Err(FtpFailure::Protocol(format!(
                            "unexpected reply to {}: {} {}",
                            self.pasv_verb(),
                            opened.code,
                            opened.text
                        )));
                    }
                }
                Err(failure)
            }
        }
    }

    /// After [`Self::passive_request`]: reads the passive reply (unless a
    /// port was `ready`), sends REST
    /// (`rest` > 0) and `cmd` if they were not pipelined, connects the data
    /// connection and, not pipelining, waits for `cmd`'s 1xx. A refusal
    /// after REST is [`FtpFailure::RestartRefused`].
    async fn open_passive(
        &mut self,
        cmd: &str,
        rest: u64,
        pipelined: bool,
        ready: Option<u16>,
    ) -> Result<tokio::net::TcpStream, FtpFailure> {
        let port = match ready {
            Some(port) => port,
            None => self.passive_reply(pipelined).await?,
        };
        if rest > 0 {
            tracing::trace!("-> REST {rest}");
            self.write_raw(format!("REST {rest}\r\n").as_bytes())
                .await?;
            let r = self.read_reply().await?;
            if r.code != 350 {
                return Err(r.failure().as_restart_refusal());
            }
        }
        if !pipelined {
            tracing::trace!("-> {cmd}");
            self.write_raw(format!("{cmd}\r\n").as_bytes()).await?;
        }
        let sock = match self.connect_data(port).await {
            Ok(sock) => sock,
            // A server refusing the command after REST may close its
            // passive port before we connect: its reply says so.
            Err(e) if rest > 0 => return Err(self.refusal_or(e).await.as_restart_refusal()),
            Err(e) => return Err(e),
        };
        if !pipelined {
            // Servers not known to be strictly sequential get the usual
            // order: the bytes only after the 150.
            let verb = cmd.split(' ').next().unwrap_or(cmd);
            let opened = self.expect_preliminary(verb).await;
            opened.map_err(|e| if rest > 0 { e.as_restart_refusal() } else { e })?;
        }
        Ok(sock)
    }

    /// Connects to a passive port opened ahead right after the commands that
    /// use it went out, before their first reply is read: the connection's
    /// round trip overlaps that reply's. On a failure the caller reads the
    /// replies up to the transfer command's, which may be a refusal that
    /// closed the port ([`Self::refusal_or`]).
    async fn connect_ahead(&mut self, port: u16) -> Result<tokio::net::TcpStream, FtpFailure> {
        let t = self.timeout;
        let addr = SocketAddr::new(self.peer, port);
        match timeout(t, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(FtpFailure::Network(format!("data connection: {e}"))),
            Err(_) => Err(FtpFailure::Timeout(t)),
        }
    }

    /// For a download or a listing: closes our sending half of the data
    /// connection at once where the server waits for it
    /// ([`WAITS_FOR_DATA_CLOSE_SERVERS`]).
    async fn inbound(&self, mut sock: tokio::net::TcpStream) -> tokio::net::TcpStream {
        if self.close_data_early {
            use tokio::io::AsyncWriteExt;
            if let Err(e) = sock.shutdown().await {
                tracing::debug!("closing the sending half of a data connection: {e}");
            }
        }
        sock
    }

    /// Opens a data connection to `port` at the control connection's address
    /// (never the one in a PASV reply).
    async fn connect_data(&mut self, port: u16) -> Result<tokio::net::TcpStream, FtpFailure> {
        let t = self.timeout;
        let addr = SocketAddr::new(self.peer, port);
        let e = match timeout(t, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => FtpFailure::Network(format!("data connection: {e}")),
            Err(_) => FtpFailure::Timeout(t),
        };
        Err(self.refusal_or(e).await)
    }

    /// Reads a transfer command's first reply, which must be a 1xx.
    async fn expect_preliminary(&mut self, cmd: &str) -> Result<(), FtpFailure> {
        let r = self.read_reply().await?;
        if (100..200).contains(&r.code) {
            return Ok(());
        }
        Err(if r.code >= 400 {
            r.failure()
        } else {
            FtpFailure::Protocol(format!("unexpected reply to {cmd}: {} {}", r.code, r.text))
        })
    }

    /// After a broken data connection: a refused STOR shows that way, and
    /// the server's reason is better, if it comes at once. Otherwise the
    /// connection is out of step, and `e` (network or timeout) retires it.
    async fn refusal_or(&mut self, e: FtpFailure) -> FtpFailure {
        match timeout(Duration::from_millis(200), self.read_reply()).await {
            Ok(Ok(r)) if r.code >= 400 => r.failure(),
            _ => e,
        }
    }

    /// Reads a transfer's replies: any preliminary ones (150, 125), then the
    /// final one, which must be positive; returns its code.
    async fn transfer_outcome(&mut self) -> Result<u32, FtpFailure> {
        self.transfer_final().await.map(|r| r.code)
    }

    /// [`Self::transfer_outcome`] for a listing: a positive reply that says
    /// the directory could not be read is a failure. vsftpd lists a
    /// directory it cannot open as empty, with "226 Transfer done (but
    /// failed to open directory)": read as it is, everything in it would be
    /// taken for deleted on the server.
    async fn listing_outcome(&mut self) -> Result<(), FtpFailure> {
        let r = self.transfer_final().await?;
        if r.text.to_ascii_lowercase().contains("failed to open") {
            return Err(FtpFailure::Reply {
                code: 550,
                text: format!(
                    "the server could not read the directory: {} {}",
                    r.code, r.text
                ),
            });
        }
        Ok(())
    }

    async fn transfer_final(&mut self) -> Result<Reply, FtpFailure> {
        let mut r = self.read_reply().await?;
        let mut preliminary = 0;
        while (100..200).contains(&r.code) {
            preliminary += 1;
            if preliminary > 2 {
                return Err(FtpFailure::Protocol(format!(
                    "endless preliminary replies: {} {}",
                    r.code, r.text
                )));
            }
            r = self.read_reply().await?;
        }
        match r.code {
            200..=299 => Ok(r),
            400..=599 => Err(r.failure()),
            _ => Err(FtpFailure::Protocol(format!(
                "unexpected final reply to a transfer: {} {}",
                r.code, r.text
            ))),
        }
    }

    /// The login directory (PWD).
    pub async fn pwd(&mut self) -> Result<String, FtpFailure> {
        timed(self.timeout, self.stream.pwd()).await
    }

    /// Lists a directory. CWD first: it tells a missing directory from an
    /// empty one (many servers answer both alike to LIST), and lets `LIST -a`
    /// run without a path argument that some servers would misread.
    pub async fn list_dir(
        &mut self,
        dir: &str,
        now: chrono::NaiveDateTime,
    ) -> Result<DirListing, FtpFailure> {
        let method = self.list_methods().0;
        self.list_dir_by(dir, now, method).await
    }

    /// Whether [`Self::list_dir_scan`] may list over the control connection
    /// at all: a server without MLSD, on a pipelined (plaintext) connection.
    pub fn may_list_over_control(&self) -> bool {
        self.list_methods().0 == ListMethod::List && self.pipelining()
    }

    /// [`FtpConn::list_dir`] for a scan: with `control_ok` (a directory
    /// small enough at the last sync, at a first attempt), over the control
    /// connection where the server has shown that it lists the same way
    /// there ([`StatListing`]). While that is not known, one connection at
    /// a time lists with both and compares them.
    pub async fn list_dir_scan(
        &mut self,
        dir: &str,
        now: chrono::NaiveDateTime,
        control_ok: bool,
    ) -> Result<DirListing, FtpFailure> {
        let method = self.list_methods().0;
        if !control_ok || !self.may_list_over_control() {
            return self.list_dir_by(dir, now, method).await;
        }
        match self.stat_listing.get() {
            StatListing::WORKS => {
                let (exists, stat) = self.stat_dir(dir, now).await?;
                let Some((listing, _)) = stat else {
                    // Refused this time: stop asking.
                    self.stat_listing.set(StatListing::REFUSED);
                    return self.list_dir_by(dir, now, method).await;
                };
                Ok(DirListing {
                    exists,
                    listing,
                    by_control: true,
                })
            }
            0 if self.stat_listing.claim_test() => {
                let tried = match self.stat_dir(dir, now).await {
                    Err(e) if e.breaks_connection() => return Err(e),
                    other => other,
                };
                let listed = self.list_dir_by(dir, now, method).await;
                let verdict = match (&tried, &listed) {
                    (Ok((true, Some((stat, dot)))), Ok(l)) if l.exists => {
                        if l.listing.entries.is_empty() {
                            0
                        } else if *dot
                            && stat.bad_lines.is_empty()
                            && l.listing.bad_lines.is_empty()
                            && same_entries(stat, &l.listing)
                        {
                            StatListing::WORKS
                        } else {
                            StatListing::REFUSED
                        }
                    }
                    (Ok((_, None)), _) => StatListing::REFUSED,
                    _ => 0,
                };
                if verdict == StatListing::WORKS {
                    tracing::debug!("the server lists over the control connection (STAT)");
                }
                self.stat_listing.set(verdict);
                listed
            }
            _ => self.list_dir_by(dir, now, method).await,
        }
    }

    /// `CWD dir`, `STAT .` and `NOOP` in one write: whether the directory
    /// exists, and the listing in the reply, `None` when the reply is no
    /// listing. The NOOP's reply must come right after: a name holding a
    /// line break and a reply code can end the listing early, and its rest
    /// would otherwise be read as the replies to later commands (the
    /// connection is then given up, and the caller lists with LIST). An
    /// error that breaks the connection (a reply too large, out of step)
    /// also stops `STAT` for the run.
    async fn stat_dir(
        &mut self,
        dir: &str,
        now: chrono::NaiveDateTime,
    ) -> Result<(bool, Option<(Listing, bool)>), FtpFailure> {
        let commands = stat_commands(dir)?;
        tracing::trace!("-> CWD {dir}; STAT .; NOOP");
        let r = match self.write_raw(commands.as_bytes()).await {
            Ok(()) => self.read_stat_dir(now).await,
            Err(e) => Err(e),
        };
        self.refuse_stat_if_broken(&r);
        r
    }

    /// After a `STAT` exchange: one that broke its connection stops `STAT`
    /// for the run.
    fn refuse_stat_if_broken<T>(&self, r: &Result<T, FtpFailure>) {
        if r.as_ref().is_err_and(FtpFailure::breaks_connection) {
            self.stat_listing.set(StatListing::REFUSED);
        }
    }

    /// [`Self::stat_dir`] for several directories in one write, once the
    /// server has been found to list the same way over the control
    /// connection ([`StatVerdict::Works`]): over a link with latency, a
    /// connection waits one round trip for all of them instead of one
    /// each. `None` for a directory this gave no listing of (the server
    /// refused `STAT`, which also stops its use for the run, or `CWD`
    /// failed in another way than "no such directory"): the caller lists
    /// it on its own. An error that leaves the replies out of step stops
    /// `STAT` for the run too, and gives up the connection.
    pub async fn stat_dirs(
        &mut self,
        dirs: &[String],
        now: chrono::NaiveDateTime,
    ) -> Result<Vec<Option<DirListing>>, FtpFailure> {
        if self.stat_listing.get() != StatListing::WORKS || !self.may_list_over_control() {
            return Ok(vec![None; dirs.len()]);
        }
        let mut commands = String::new();
        for dir in dirs {
            commands.push_str(&stat_commands(dir)?);
        }
        tracing::trace!("-> CWD; STAT .; NOOP for {} directories", dirs.len());
        let r = self.exchange_stat_dirs(&commands, dirs.len(), now).await;
        self.refuse_stat_if_broken(&r);
        r
    }

    async fn exchange_stat_dirs(
        &mut self,
        commands: &str,
        count: usize,
        now: chrono::NaiveDateTime,
    ) -> Result<Vec<Option<DirListing>>, FtpFailure> {
        self.write_raw(commands.as_bytes()).await?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            match self.read_stat_dir(now).await {
                Ok((exists, Some((listing, _)))) => out.push(Some(DirListing {
                    exists,
                    listing,
                    by_control: true,
                })),
                Ok((_, None)) => {
                    self.stat_listing.set(StatListing::REFUSED);
                    out.push(None);
                }
                // Its three replies were read: the rest are in step.
                Err(e) if !e.breaks_connection() => out.push(None),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads the replies to one `CWD dir`, `STAT .` and `NOOP` (see
    /// [`Self::stat_dir`]). An error that does not break the connection
    /// comes only once all three were read.
    async fn read_stat_dir(
        &mut self,
        now: chrono::NaiveDateTime,
    ) -> Result<(bool, Option<(Listing, bool)>), FtpFailure> {
        let cwd = self.read_reply().await?;
        if cwd.code == 421 {
            return Err(cwd.failure());
        }
        let (stat, body) = read_reply_from(&mut self.stream, self.timeout).await?;
        if stat.code == 421 {
            return Err(stat.failure());
        }
        let out_of_step = || {
            FtpFailure::Protocol(
                "a listing over the control connection left the replies out of step".into(),
            )
        };
        match self.read_reply().await {
            Ok(noop) if (200..300).contains(&noop.code) => {}
            Ok(noop) if noop.code == 421 => return Err(noop.failure()),
            _ => return Err(out_of_step()),
        }
        let exists = match cwd.code {
            200..=299 => true,
            550 => false,
            _ => return Err(cwd.failure()),
        };
        if !exists {
            return Ok((false, Some((Listing::default(), false))));
        }
        if !(211..=213).contains(&stat.code) {
            return Ok((true, None));
        }
        Ok((true, stat_listing(&body, now)))
    }

    /// The listing command used for a scan, and a second, independent one
    /// if the server offers it (LIST beside MLSD), for confirming a listing.
    pub fn list_methods(&self) -> (ListMethod, Option<ListMethod>) {
        if self.features.mlsd {
            (ListMethod::Mlsd, Some(ListMethod::List))
        } else {
            (ListMethod::List, None)
        }
    }

    /// [`FtpConn::list_dir`] with a given listing command.
    pub async fn list_dir_by(
        &mut self,
        dir: &str,
        now: chrono::NaiveDateTime,
        method: ListMethod,
    ) -> Result<DirListing, FtpFailure> {
        let dir = checked(dir)?;
        let missing = DirListing {
            exists: false,
            listing: Listing::default(),
            by_control: false,
        };
        let format = if method == ListMethod::Mlsd {
            ListFormat::Mlsd
        } else {
            ListFormat::List
        };
        if !self.pipelining() {
            match timed(self.timeout, self.stream.cwd(dir)).await {
                Ok(()) => {}
                Err(FtpFailure::Reply { code: 550, .. }) => return Ok(missing),
                Err(e) => return Err(e),
            }
            let data = match self.data_lines(self.list_verb(method)).await {
                Err(FtpFailure::Reply { code, .. }) if self.refuses_list_a(method, code) => {
                    self.plain_list = true;
                    self.data_lines("LIST").await?
                }
                other => other?,
            };
            return Ok(DirListing {
                exists: true,
                listing: parse_listing(format, &data, now),
                by_control: false,
            });
        }
        loop {
            let cmd = self.list_verb(method);
            let data = match self.list_pipelined(dir, cmd).await {
                Ok(Some(data)) => data,
                Ok(None) => return Ok(missing),
                Err(FtpFailure::Reply { code, .. }) if self.refuses_list_a(method, code) => {
                    self.plain_list = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            return Ok(DirListing {
                exists: true,
                listing: parse_listing(format, &data, now),
                by_control: false,
            });
        }
    }

    /// The listing command for `method`: `MLSD`, `LIST -a`, or plain `LIST`
    /// where the server refused `-a`.
    fn list_verb(&self, method: ListMethod) -> &'static str {
        match method {
            ListMethod::Mlsd => "MLSD",
            ListMethod::List if self.plain_list => "LIST",
            ListMethod::List => "LIST -a",
        }
    }

    /// Whether a reply `code` to the listing command is a refusal of `-a`
    /// (then plain `LIST` is used from now on).
    fn refuses_list_a(&self, method: ListMethod, code: u32) -> bool {
        method == ListMethod::List && !self.plain_list && (500..=504).contains(&code)
    }

    /// Lists `dir` with `cmd`, pipelined: `CWD` and `EPSV`/`PASV` in one
    /// write and then the listing, or, on a passive port opened ahead of
    /// time, `CWD` and the listing in one write. On servers that read
    /// nothing during a transfer a passive request for the next transfer
    /// rides behind the listing. `None`: CWD said the directory does not
    /// exist (a listing that ran anyway, of the directory before, is
    /// read and thrown away).
    async fn list_pipelined(
        &mut self,
        dir: &str,
        cmd: &str,
    ) -> Result<Option<Vec<u8>>, FtpFailure> {
        let ahead = self.ahead_in_transfer();
        let cwd = format!("CWD {dir}");
        let Some(port) = self.take_ready() else {
            let r = self
                .batch_with(&[cwd, self.pasv_verb().into()], true)
                .await?;
            let port = port_of(&r[1]);
            if !(200..300).contains(&r[0].code) {
                if let Ok(port) = port {
                    // After a refused CWD the listener is still good for the next transfer.
                    self.ready = Some((port, std::time::Instant::now()));
                }
                return if r[0].code == 550 {
                    Ok(None)
                } else {
                    Err(r[0].failure())
                };
            }
            return self
                .read_direct(cmd, Data::Port(port?), ahead, false)
                .await
                .map(Some);
        };
        let pasv_next = if ahead { self.pasv_verb() } else { "" };
        self.write_raw(command_wire(&[&cwd, cmd, pasv_next]).as_bytes())
            .await?;
        let sock = match self.connect_ahead(port).await {
            Ok(sock) => Data::Connected(self.inbound(sock).await),
            Err(e) => Data::Failed(e),
        };
        let r = self.read_reply().await?;
        let found = match r.code {
            200..=299 => Ok(true),
            550 => Ok(false),
            _ => Err(r.failure()),
        };
        // The listing runs whatever CWD said: read it to stay in step.
        let data = self.read_direct(cmd, sock, ahead, true).await;
        match (found, data) {
            (Ok(true), data) => data.map(Some),
            (Ok(false), Err(e)) | (Err(_), Err(e)) if e.breaks_connection() => Err(e),
            (Ok(false), _) => Ok(None),
            (Err(e), _) => Err(e),
        }
    }

    /// Runs a listing command whose passive port is already known (or
    /// connected to), on a data connection of our own (`sent`: the command
    /// went out already);
    /// returns the raw bytes once the final reply says the listing is
    /// complete. With `ahead`, a passive request for the next transfer
    /// goes behind the command, and its reply is read last.
    async fn read_direct(
        &mut self,
        cmd: &str,
        data: Data,
        ahead: bool,
        sent: bool,
    ) -> Result<Vec<u8>, FtpFailure> {
        let t = self.timeout;
        if !sent {
            let pasv_next = if ahead { self.pasv_verb() } else { "" };
            self.write_raw(command_wire(&[cmd, pasv_next]).as_bytes())
                .await?;
        }
        let listed = async {
            let mut sock = match data {
                Data::Port(port) => {
                    let sock = self.connect_data(port).await?;
                    self.inbound(sock).await
                }
                Data::Connected(sock) => sock,
                // A refused listing may close its port before we connect.
                Data::Failed(e) => return Err(self.refusal_or(e).await),
            };
            self.expect_preliminary(cmd).await?;
            let mut data = Vec::new();
            if let Err(e) = read_to_end_timed(t, &mut sock, &mut data).await {
                return Err(self.refusal_or(e).await);
            }
            drop(sock);
            self.listing_outcome().await?;
            Ok(data)
        }
        .await;
        if ahead && listed.as_ref().err().is_none_or(|e| !e.breaks_connection()) {
            self.read_ready().await?;
        }
        listed
    }

    fn pasv_verb(&self) -> &'static str {
        if self.data_mode == DataMode::Epsv {
            "EPSV"
        } else {
            "PASV"
        }
    }

    /// Runs a listing command and returns its raw bytes (names stay byte-exact).
    /// The final reply is checked: a listing cut short fails here.
    async fn data_lines(&mut self, cmd: &str) -> Result<Vec<u8>, FtpFailure> {
        let t = self.timeout;
        self.ready = None;
        let (_, mut stream) = timed(
            t,
            self.stream
                .custom_data_command(cmd, &[Status::AboutToSend, Status::AlreadyOpen]),
        )
        .await?;
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match timeout(t, stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(FtpFailure::Network(format!("listing data: {e}"))),
                Err(_) => return Err(FtpFailure::Timeout(t)),
            };
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        timed(t, stream.finish()).await?;
        Ok(data)
    }

    pub async fn mkdir(&mut self, path: &str) -> Result<(), FtpFailure> {
        timed(self.timeout, self.stream.mkdir(checked(path)?)).await
    }

    pub async fn rmdir(&mut self, path: &str) -> Result<(), FtpFailure> {
        timed(self.timeout, self.stream.rmdir(checked(path)?)).await
    }

    pub async fn delete(&mut self, path: &str) -> Result<(), FtpFailure> {
        timed(self.timeout, self.stream.rm(checked(path)?)).await
    }

    /// RNFR + RNTO (pipelined where possible).
    pub async fn rename(&mut self, from: &str, to: &str) -> Result<(), RenameError> {
        let (from, to) = (
            checked(from).map_err(RenameError::From)?,
            checked(to).map_err(RenameError::From)?,
        );
        let (rnfr, rnto) = (format!("RNFR {from}"), format!("RNTO {to}"));
        if !self.pipelining() {
            let r = self
                .batch_with(std::slice::from_ref(&rnfr), false)
                .await
                .map_err(RenameError::From)?;
            if r[0].code != 350 {
                return Err(RenameError::From(r[0].failure()));
            }
            let r = self
                .batch_with(&[rnto], false)
                .await
                .map_err(RenameError::To)?;
            return match r[0].code {
                200..=299 => Ok(()),
                _ => Err(RenameError::To(r[0].failure())),
            };
        }
        let r = self
            .batch_with(&[rnfr, rnto], true)
            .await
            .map_err(RenameError::To)?;
        if r[1].code == 350 {
            // RNTO answered before RNFR.
            return Err(RenameError::To(self.out_of_order()));
        }
        // After a refused RNFR the RNTO's reply (503) says nothing more.
        if r[0].code != 350 {
            return Err(RenameError::From(r[0].failure()));
        }
        match r[1].code {
            200..=299 => Ok(()),
            _ => Err(RenameError::To(r[1].failure())),
        }
    }

    /// Whether `path` is an existing directory (CWD succeeds).
    pub async fn is_dir(&mut self, path: &str) -> Result<bool, FtpFailure> {
        match timed(self.timeout, self.stream.cwd(checked(path)?)).await {
            Ok(()) => Ok(true),
            Err(FtpFailure::Reply { code, .. }) if code >= 500 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// SIZE of a file (RFC 3659), `None` if the server has no SIZE or the file is missing.
    pub async fn size(&mut self, path: &str) -> Result<Option<u64>, FtpFailure> {
        if !self.features.size {
            return Ok(None);
        }
        match timed(self.timeout, self.stream.size(checked(path)?)).await {
            Ok(n) => Ok(Some(n as u64)),
            Err(FtpFailure::Reply { code, .. }) if code >= 500 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The server's hash of a file with its best hash command
    /// ([`Features::hash`]): `None` if it has none, or answers without a
    /// digest of the right length (a refusal, a missing file).
    /// `len` is the file's size as listed, to allow for the time hashing
    /// it takes.
    pub async fn hash(
        &mut self,
        path: &str,
        len: u64,
    ) -> Result<Option<(HashAlgo, Vec<u8>)>, FtpFailure> {
        let Some(cmd) = self.features.hash else {
            return Ok(None);
        };
        let base = self.timeout;
        self.timeout = base + hashing_time(len);
        let r = self
            .batch(&[format!("{} {}", cmd.verb(), checked(path)?)])
            .await;
        self.timeout = base;
        let r = r?;
        if (400..500).contains(&r[0].code) {
            return Err(r[0].failure());
        }
        Ok(digest_of(&r[0], cmd).map(|d| (cmd.algo(), d)))
    }

    /// Sets a file's modification time (UTC) with MFMT where advertised, or
    /// vsftpd's two-argument MDTM; returns the time set, or `None` if the
    /// server cannot.
    pub async fn set_mtime(
        &mut self,
        path: &str,
        utc: chrono::NaiveDateTime,
    ) -> Result<Option<RemoteTime>, FtpFailure> {
        let Some(cmd) = self.set_mtime_command(checked(path)?, utc) else {
            return Ok(None);
        };
        let r = self.batch(&[cmd]).await?;
        Ok(self.mtime_set(&r[0], utc))
    }

    /// Uploads `local` to `remote` (STOR), from byte `offset` on (REST, to
    /// resume a verified partial upload; a negative reply to that `REST` or
    /// to the `STOR` after it is [`FtpFailure::RestartRefused`]); then
    /// [`Self::finish_store`]'s commands. [`Stored::sent`] is the file's
    /// total size as sent (offset included).
    /// `len` is the file's size as just checked by the caller.
    pub async fn upload(
        &mut self,
        local: &Path,
        len: u64,
        remote: &str,
        offset: u64,
        after: AfterStore,
    ) -> Result<Stored, FtpFailure> {
        use tokio::io::AsyncSeekExt;
        let t = self.timeout;
        let local_err = |e: std::io::Error| FtpFailure::Local(format!("{}: {e}", local.display()));
        let remote = checked(remote)?;
        if self.plain && self.data_mode != DataMode::Active {
            let file = std::fs::File::open(local).map_err(local_err)?;
            let payload = Payload::File {
                file: &file,
                offset,
                len: len.saturating_sub(offset),
            };
            let finish = self.finish_commands(remote, after);
            return self.store_direct(remote, payload, offset, &finish).await;
        }
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        let refusal = |e: FtpFailure| {
            if offset > 0 {
                e.as_restart_refusal()
            } else {
                e
            }
        };
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(local_err)?;
            timed(t, self.stream.resume_transfer(offset as usize))
                .await
                .map_err(refusal)?;
        }
        let mut stream = timed(t, self.stream.put_with_stream(remote))
            .await
            .map_err(refusal)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = offset;
        loop {
            let n = file.read(&mut buf).await.map_err(local_err)?;
            if n == 0 {
                break;
            }
            write_paced(t, &mut stream, &buf[..n], &self.rate).await?;
            total += n as u64;
            crate::events::transferred(n as u64);
        }
        timed(t, stream.finish()).await?;
        self.finish_store(remote, total, after).await
    }

    /// Reads `remote` from byte `offset` to its end (REST + RETR): used to
    /// compare a small overlap before resuming.
    pub async fn read_from(
        &mut self,
        remote: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<u8>, FtpFailure> {
        let t = self.timeout;
        let remote = checked(remote)?;
        // suppaftp asks for a passive port of its own, which replaces one opened ahead.
        self.ready = None;
        timed(t, self.stream.resume_transfer(offset as usize)).await?;
        let mut stream = timed(t, self.stream.retr_as_stream(remote)).await?;
        let read = async {
            let mut data = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read_timed(t, &mut stream, &mut buf).await?;
                if n == 0 {
                    return Ok(data);
                }
                data.extend_from_slice(&buf[..n]);
                if data.len() > limit {
                    return Err(FtpFailure::Verify("more data than expected".into()));
                }
            }
        }
        .await;
        let data = match read {
            Ok(d) => d,
            Err(e) => {
                self.abandoned = true;
                return Err(e);
            }
        };
        timed(t, stream.finish()).await?;
        Ok(data)
    }

    /// Downloads `remote` (RETR) into the file `local`. With `resume`, the
    /// file keeps its first `resume.keep` bytes and the transfer starts
    /// `resume.overlap.len()` bytes earlier: those bytes must equal the tail
    /// of what is kept, or the download fails (and restarts from zero). A
    /// negative reply to that `REST` or to the `RETR` after it is
    /// [`FtpFailure::RestartRefused`].
    /// With `mdtm`, the file's time is asked too (MDTM, in the same write as
    /// EPSV and RETR when pipelining).
    /// Returns the file's total size, and the time MDTM gave.
    pub async fn download(
        &mut self,
        remote: &str,
        local: &Path,
        resume: Option<Resume>,
        mdtm: bool,
    ) -> Result<(u64, Option<chrono::NaiveDateTime>), FtpFailure> {
        use tokio::io::AsyncSeekExt;
        let local_err = |e: std::io::Error| FtpFailure::Local(format!("{}: {e}", local.display()));
        let remote = checked(remote)?;
        let (mut file, from) = match &resume {
            Some(r) => {
                let mut f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(local)
                    .await
                    .map_err(local_err)?;
                f.set_len(r.keep).await.map_err(local_err)?;
                f.seek(std::io::SeekFrom::Start(r.keep))
                    .await
                    .map_err(local_err)?;
                (f, Some((r.keep, r.overlap.as_slice())))
            }
            None => (
                tokio::fs::File::create(local).await.map_err(local_err)?,
                None,
            ),
        };
        let got = self
            .retrieve(remote, &mut Sink::File(&mut file), from, mdtm, local)
            .await;
        drop(file);
        got
    }

    /// Downloads `remote` (RETR) into memory: a file the listing said is
    /// `max` bytes long, and small. More bytes than `max` is a
    /// [`FtpFailure::Verify`]. With `mdtm`, as [`FtpConn::download`].
    pub async fn download_bytes(
        &mut self,
        remote: &str,
        max: u64,
        mdtm: bool,
    ) -> Result<(Vec<u8>, Option<chrono::NaiveDateTime>), FtpFailure> {
        let remote = checked(remote)?;
        let mut sink = Sink::Memory {
            data: Vec::with_capacity(max as usize),
            max,
        };
        let (_, time) = self
            .retrieve(remote, &mut sink, None, mdtm, Path::new(remote))
            .await?;
        match sink {
            Sink::Memory { data, .. } => Ok((data, time)),
            Sink::File(_) => unreachable!("the sink was made above"),
        }
    }

    /// The RETR of [`FtpConn::download`] into `sink`; `from` is the resume
    /// point (bytes kept, and the overlap to check before them).
    async fn retrieve(
        &mut self,
        remote: &str,
        sink: &mut Sink<'_>,
        from: Option<(u64, &[u8])>,
        mdtm: bool,
        local: &Path,
    ) -> Result<(u64, Option<chrono::NaiveDateTime>), FtpFailure> {
        let t = self.timeout;
        let mdtm = mdtm && self.features.mdtm;
        let (total, overlap) = from.unwrap_or((0, &[]));
        let start = total - overlap.len() as u64;
        let resumed = from.is_some();
        let refusal = |e: FtpFailure| if resumed { e.as_restart_refusal() } else { e };
        if self.plain && self.data_mode != DataMode::Active {
            // On servers that read nothing during a transfer, a passive
            // request for the next transfer rides behind the RETR.
            let ahead = self.ahead_in_transfer() && start == 0;
            let got = async {
                let (mut sock, time) = self.open_retr(remote, start, mdtm, ahead).await?;
                let rate = self.rate.clone();
                let received = receive(t, &mut sock, sink, total, overlap, &rate, local).await;
                drop(sock);
                let total = match received {
                    Ok(n) => n,
                    Err(e @ (FtpFailure::Network(_) | FtpFailure::Timeout(_))) => {
                        return Err(self.refusal_or(e).await);
                    }
                    Err(e) => {
                        // Ours (the disk, a mismatch): the data connection is
                        // closed early, and the server's answer read to stay in step.
                        if let Err(f) = self.transfer_outcome().await
                            && f.breaks_connection()
                        {
                            self.abandoned = true;
                        }
                        return Err(e);
                    }
                };
                self.transfer_outcome().await.map_err(refusal)?;
                Ok((total, time))
            }
            .await;
            if ahead {
                match &got {
                    // The request's reply follows the transfer's: read it to stay in step.
                    Ok(_) => self.read_ready().await?,
                    Err(e) if e.breaks_connection() => {}
                    // After an abandoned transfer it cannot be told from the
                    // transfer's own reply: this connection is not used again.
                    Err(_) if self.abandoned => self.retired = true,
                    Err(_) => self.read_ready().await?,
                }
            }
            return got;
        }
        if resumed {
            timed(t, self.stream.resume_transfer(start as usize))
                .await
                .map_err(FtpFailure::as_restart_refusal)?;
        }
        let mut stream = timed(t, self.stream.retr_as_stream(remote))
            .await
            .map_err(refusal)?;
        let rate = self.rate.clone();
        let received = receive(t, &mut stream, sink, total, overlap, &rate, local).await;
        let total = match received {
            Ok(n) => n,
            Err(e) => {
                self.abandoned = true;
                return Err(e);
            }
        };
        timed(t, stream.finish()).await?;
        let time = if mdtm { self.mdtm(remote).await? } else { None };
        Ok((total, time))
    }

    /// Starts a RETR of `remote` on a data connection of our own (plaintext,
    /// passive), from byte `rest` (REST) when it is not zero, and returns
    /// that connection, ready to read. With `mdtm`, MDTM is asked first.
    /// When pipelining (and not resuming), MDTM, EPSV and RETR go in one
    /// write and the data is read as soon as the connection is up (the 150
    /// is read with the final reply); else one command at a time.
    async fn open_retr(
        &mut self,
        remote: &str,
        rest: u64,
        mdtm: bool,
        ahead: bool,
    ) -> Result<(tokio::net::TcpStream, Option<chrono::NaiveDateTime>), FtpFailure> {
        let retr = format!("RETR {remote}");
        let pipelined = self.pipelining() && rest == 0;
        let ready = self.take_ready().filter(|_| pipelined);
        let mut time = None;
        let mut connected = None;
        if pipelined {
            let ask = if mdtm {
                format!("MDTM {remote}")
            } else {
                String::new()
            };
            self.write_raw(
                self.passive_request(&ask, &retr, true, ready, ahead)
                    .as_bytes(),
            )
            .await?;
            if let Some(port) = ready {
                connected = Some(match self.connect_ahead(port).await {
                    Ok(sock) => Ok(self.inbound(sock).await),
                    Err(e) => Err(e),
                });
            }
            if mdtm {
                let r = self.read_reply().await?;
                match r.code {
                    213 => match parse_mlsd_time(r.text.trim().as_bytes()) {
                        Some(t) => time = Some(t),
                        // EPSV's or PASV's reply in MDTM's place.
                        None if passive_port(&r).is_some() => return Err(self.out_of_order()),
                        None => {}
                    },
                    227 | 229 => return Err(self.out_of_order()),
                    _ => {}
                }
            }
        } else {
            if mdtm {
                time = self.mdtm(remote).await?;
            }
            self.write_raw(
                self.passive_request("", &retr, false, None, false)
                    .as_bytes(),
            )
            .await?;
        }
        match connected {
            Some(Ok(sock)) => return Ok((sock, time)),
            // A refused RETR may close its port before we connect: its reply says so.
            Some(Err(e)) => return Err(self.refusal_or(e).await),
            None => {}
        }
        let sock = self.open_passive(&retr, rest, pipelined, ready).await?;
        Ok((self.inbound(sock).await, time))
    }

    /// Says goodbye (best effort).
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), self.stream.quit()).await;
    }

    /// Says goodbye without waiting for the answer, at the end of a run:
    /// on a plaintext connection QUIT is written and the connection
    /// closed. The server ends its session on QUIT and closes its end after
    /// its reply, which tells the client nothing it needs; waiting for it
    /// only kept the run from ending. Over TLS (whose close is an exchange
    /// of its own), or after an abandoned transfer, this is [`Self::quit`].
    pub async fn quit_unanswered(self) {
        if !self.plain || self.abandoned {
            return self.quit().await;
        }
        let sock = self.stream.get_ref().await;
        let _ = write_all_raw(&sock, b"QUIT\r\n", Duration::from_secs(2)).await;
    }
}

/// The `OPTS MLST` argument that turns on the facts ftpsync reads, with
/// `UNIX.mode`, from FEAT's `MLST` line (`type*;size*;modify*;UNIX.mode;`:
/// a `*` marks the facts on now, RFC 3659 §7.8). `None` when the server
/// does not offer `UNIX.mode` or has it on already.
fn mlst_facts_with_mode(offered: &str) -> Option<String> {
    let facts: Vec<(&str, bool)> = offered
        .split(';')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| match f.strip_suffix('*') {
            Some(name) => (name, true),
            None => (f, false),
        })
        .collect();
    let mode = facts
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("unix.mode"))?;
    if mode.1 {
        return None;
    }
    let wanted = ["type", "size", "sizd", "modify", "unix.mode"];
    let mut arg = String::new();
    for (name, _) in facts
        .iter()
        .filter(|(name, _)| wanted.iter().any(|w| name.eq_ignore_ascii_case(w)))
    {
        arg.push_str(name);
        arg.push(';');
    }
    Some(arg)
}

/// Commands as they go on the wire in one write, the empty ones left out.
fn command_wire(cmds: &[&str]) -> String {
    let mut wire = String::new();
    for c in cmds.iter().filter(|c| !c.is_empty()) {
        tracing::trace!("-> {c}");
        wire.push_str(c);
        wire.push_str("\r\n");
    }
    wire
}

/// The port of a passive-mode reply, or why there is none: the server's
/// refusal, or a reply that cannot be read.
fn port_of(r: &Reply) -> Result<u16, FtpFailure> {
    match passive_port(r) {
        Some(port) => Ok(port),
        None if r.code >= 400 => Err(r.failure()),
        None => Err(FtpFailure::Protocol(format!(
            "cannot read the port in {} {}",
            r.code, r.text
        ))),
    }
}

/// The port of a passive-mode reply: `229 ... (|||port|)` or
/// `227 ... (h1,h2,h3,h4,p1,p2)`. The address in a 227 is ignored: data
/// connections go to the control connection's peer.
fn passive_port(r: &Reply) -> Option<u16> {
    let inner = |open: char, close: char| {
        let start = r.text.find(open)? + 1;
        let end = start + r.text[start..].find(close)?;
        Some(&r.text[start..end])
    };
    match r.code {
        229 => {
            let body = inner('(', ')')?;
            let d = body.chars().next()?;
            let fields: Vec<&str> = body.split(d).collect();
            // "|||port|" splits into ["", "", "", "port", ""]
            if fields.len() != 5 || fields[..3].iter().any(|f| !f.is_empty()) {
                return None;
            }
            fields[3].parse().ok().filter(|p| *p != 0)
        }
        227 => {
            // "(h1,h2,h3,h4,p1,p2)", or the six numbers bare after the text.
            let text = match inner('(', ')') {
                Some(t) if t.contains(',') => t,
                _ => &r.text,
            };
            let start = text.find(|c: char| c.is_ascii_digit())?;
            let nums: Vec<u16> = text[start..]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .take(6)
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            if nums.len() != 6 || nums.iter().any(|n| *n > 255) {
                return None;
            }
            Some(nums[4] * 256 + nums[5]).filter(|p| *p != 0)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_reply_is_read_as_a_listing() {
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 7)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        let names = |l: &Listing| -> Vec<String> {
            l.entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .collect()
        };
        // vsftpd's form: the lines of `LIST -a` between an opener and an end.
        let body = b"213-Status follows:\r\n\
drwxr-xr-x    2 102      105            80 Dec 07 19:18 .\r\n\
drwxr-xr-x    5 102      105           100 Dec 07 19:18 ..\r\n\
-rw-r--r--    1 102      105             2 Dec 07 19:18 .hidden\r\n\
-rw-r--r--    1 102      105          1990 Apr 04  2024 a file.txt\r\n\
213 End of status\r\n";
        let (l, dot) = stat_listing(body, now).unwrap();
        assert_eq!(names(&l), [".hidden", "a file.txt"]);
        assert_eq!(l.entries[1].size, Some(1990));
        assert!(l.bad_lines.is_empty());
        assert!(dot);
        // An empty directory, shown without `.`: a listing, but no sign
        // that hidden names are shown.
        let (l, dot) = stat_listing(b"213-Status follows:\r\n213 End of status\r\n", now).unwrap();
        assert!(l.entries.is_empty() && !dot);
        // A listing of names only (a directory among them, no `.`): no
        // sign that hidden names are shown.
        let names_only = b"213-Status follows:\r\n\
drwxr-xr-x    2 102      105            80 Dec 07 19:18 sub\r\n\
-rw-r--r--    1 102      105             2 Dec 07 19:18 x .\r\n\
213 End of status\r\n";
        let (l, dot) = stat_listing(names_only, now).unwrap();
        assert_eq!(names(&l), ["sub", "x ."]);
        assert!(!dot);
        // Not listings: one line, a first line that is itself an entry.
        assert!(stat_listing(b"213 Nothing to say\r\n", now).is_none());
        let opener_entry = b"213--rw-r--r--    1 102      105             2 Dec 07 19:18 a\r\n\
-rw-r--r--    1 102      105             2 Dec 07 19:18 b\r\n213 End\r\n";
        assert!(stat_listing(opener_entry, now).is_none());
        // Lines that are not LIST lines (a general status) are bad lines.
        let status =
            b"211-FTP server status:\r\n     Connected to 127.0.0.1\r\n211 End of status\r\n";
        let (l, dot) = stat_listing(status, now).unwrap();
        assert!(l.entries.is_empty() && !dot);
        assert_eq!(l.bad_lines.len(), 1);
    }

    #[test]
    fn features_in_a_feat_reply() {
        let body = b"211-Features:\r\n EPSV\r\n MLST type*;size*;modify*;\r\n UTF8\r\n REST STREAM\r\n211 End\r\n";
        assert_eq!(
            feat_lines(body),
            [
                ("EPSV".to_string(), None),
                ("MLST".to_string(), Some("type*;size*;modify*;".to_string())),
                ("UTF8".to_string(), None),
                ("REST".to_string(), Some("STREAM".to_string())),
            ]
        );
        assert_eq!(feat_lines(b"211 No features\r\n"), []);
    }

    #[test]
    fn best_hash_command_from_feat() {
        let pick = |feat: &[(&str, Option<&str>)]| HashCommand::from_feat(feat.iter().copied());
        assert_eq!(pick(&[("MLST", Some("size*;modify*;"))]), None);
        assert_eq!(
            pick(&[("HASH", Some("SHA-1;SHA-256*;MD5"))]),
            Some((HashCommand::Hash(HashAlgo::Sha256), false))
        );
        // Not the current one: it must be selected with OPTS HASH.
        assert_eq!(
            pick(&[("HASH", Some("SHA-1*;SHA-256;SHA-512;CRC32"))]),
            Some((HashCommand::Hash(HashAlgo::Sha256), true))
        );
        assert_eq!(
            pick(&[("XMD5", None), ("XSHA1", None), ("SIZE", None)]),
            Some((HashCommand::X(HashAlgo::Sha1), false))
        );
        // HASH beats the X command of the same algorithm, not a stronger one.
        assert_eq!(
            pick(&[("XSHA256", None), ("hash", Some("SHA-256*"))]),
            Some((HashCommand::Hash(HashAlgo::Sha256), false))
        );
        assert_eq!(
            pick(&[("HASH", Some("MD5*")), ("XSHA256", None)]),
            Some((HashCommand::X(HashAlgo::Sha256), false))
        );
        assert_eq!(pick(&[("HASH", Some("CRC32*;SHA-512"))]), None);
    }

    #[test]
    fn digests_in_hash_replies() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sha = decode_hex(hex).unwrap();
        let hash = HashCommand::Hash(HashAlgo::Sha256);
        let x = HashCommand::X(HashAlgo::Sha256);
        // As the server sends them: the code is not part of the text.
        let r = |code: u32, line: &str| {
            let reply = Reply::parse(format!("{line}\r\n").as_bytes()).unwrap();
            assert_eq!(reply.code, code);
            reply
        };
        assert_eq!(
            digest_of(
                &r(213, &format!("213 SHA-256 0-0 {hex} /www/a b.txt")),
                hash
            ),
            Some(sha.clone())
        );
        // Another algorithm than asked for, a refusal, a bad digest.
        assert_eq!(
            digest_of(&r(213, &format!("213 MD5 0-0 {hex} f")), hash),
            None
        );
        assert_eq!(digest_of(&r(550, "550 No such file"), hash), None);
        assert_eq!(digest_of(&r(213, "213 SHA-256 0-0 xyz f"), hash), None);
        assert_eq!(
            digest_of(&r(250, &format!("250 {hex}")), x),
            Some(sha.clone())
        );
        assert_eq!(
            digest_of(&r(213, &format!("213 /www/f {}", hex.to_uppercase())), x),
            Some(sha)
        );
        // A digest of the wrong length is not taken for another algorithm's.
        assert_eq!(
            digest_of(&r(250, "250 d41d8cd98f00b204e9800998ecf8427e"), x),
            None
        );
    }

    fn reply(code: u32, text: &str) -> Reply {
        Reply {
            code,
            text: text.into(),
        }
    }

    #[test]
    fn mlst_facts() {
        assert_eq!(
            mlst_facts_with_mode("type*;perm*;size*;modify*;unique;unix.mode;unix.uid;unix.gid;")
                .as_deref(),
            Some("type;size;modify;unix.mode;")
        );
        assert_eq!(
            mlst_facts_with_mode("modify*;Size*;Type*;UNIX.mode;").as_deref(),
            Some("modify;Size;Type;UNIX.mode;")
        );
        // On already, or not offered: nothing to ask.
        assert_eq!(mlst_facts_with_mode("type*;size*;UNIX.mode*;"), None);
        assert_eq!(mlst_facts_with_mode("type*;size*;modify*;"), None);
    }

    #[test]
    fn passive_ports() {
        assert_eq!(
            passive_port(&reply(229, "Entering Extended Passive Mode (|||30123|)")),
            Some(30123)
        );
        assert_eq!(passive_port(&reply(229, "EPSV ok (!!!2121!)")), Some(2121));
        assert_eq!(
            passive_port(&reply(227, "Entering Passive Mode (127,0,0,1,117,212).")),
            Some(117 * 256 + 212)
        );
        // Some servers leave out the parentheses.
        assert_eq!(
            passive_port(&reply(227, "Entering Passive Mode 10,0,0,1,4,1")),
            Some(1025)
        );
        // A number in the text before the address is not part of it.
        assert_eq!(
            passive_port(&reply(227, "Mode 2 (127,0,0,1,4,1)")),
            Some(1025)
        );
        for bad in [
            reply(229, "Entering Extended Passive Mode (|||0|)"),
            reply(229, "Entering Extended Passive Mode (|||x|)"),
            reply(229, "Entering Extended Passive Mode"),
            reply(229, "(||1|2|)"),
            reply(227, "Entering Passive Mode (127,0,0,1,300,1)"),
            reply(227, "Entering Passive Mode (127,0,0,1,117)"),
            reply(425, "Can't open data connection (|||30123|)"),
        ] {
            assert_eq!(passive_port(&bad), None, "{bad:?}");
        }
    }
}
