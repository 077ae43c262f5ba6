//! One logged-in FTP control connection: connect (optionally explicit FTPS),
//! login, FEAT, binary mode, and the operations ftpsync needs, every one under
//! a timeout. Paths are checked for CR/LF/NUL before they are sent.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{Mode, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::list::{ListFormat, Listing, RemoteTime, parse_listing};
use super::reply::FtpFailure;
use crate::job::{Secret, TlsMode};
use crate::path::check_command_arg;

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

/// Files up to this size are uploaded from one read.
const SMALL_FILE: u64 = 1 << 20;

/// Everything needed to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub tls: TlsMode,
    /// PEM file with extra CA certificates to trust (self-signed servers).
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub passive: bool,
    /// Limit for every operation, and for inactivity during a transfer.
    pub timeout: Duration,
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
}

/// One directory as listed.
#[derive(Debug, Clone)]
pub struct DirListing {
    /// False when CWD said the directory does not exist.
    pub exists: bool,
    pub listing: Listing,
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

fn tls_connector(o: &ConnectOptions) -> Result<AsyncRustlsConnector, FtpFailure> {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FtpFailure::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &o.tls_ca_file {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| FtpFailure::Tls(format!("cannot read {}: {e}", ca.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| FtpFailure::Tls(format!("{}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| FtpFailure::Tls(format!("{}: {e}", ca.display())))?;
        }
    }
    // A fresh config per connection gives each one its own session cache:
    // a shared cache makes data channels resume another connection's session,
    // which servers that require reuse refuse (rclone#7234).
    let config = builder.with_root_certificates(roots).with_no_client_auth();
    Ok(AsyncRustlsConnector::from(
        tokio_rustls::TlsConnector::from(Arc::new(config)),
    ))
}

impl FtpConn {
    /// Connects and logs in. A 530 at login is returned as a `Reply` failure
    /// with code 530 (the caller decides whether that ends the run).
    pub async fn connect(o: &ConnectOptions) -> Result<FtpConn, FtpFailure> {
        let addr = resolve(&o.host, o.port)?;
        let t = o.timeout;
        let mut stream = match timeout(t, AsyncRustlsFtpStream::connect_timeout(addr, t)).await {
            Ok(r) => r.map_err(FtpFailure::from)?,
            Err(_) => return Err(FtpFailure::Timeout(t)),
        };
        if o.tls == TlsMode::Explicit {
            let connector = tls_connector(o)?;
            stream = timed(t, stream.into_secure(connector, &o.host)).await?;
        }
        // Commands are single small writes: do not let Nagle hold them back.
        let _ = stream.get_ref().await.set_nodelay(true);
        checked(&o.user)?;
        checked(o.password.expose())?;
        timed(t, stream.login(o.user.as_str(), o.password.expose())).await?;
        timed(t, stream.transfer_type(FileType::Binary)).await?;
        let features = match timed(t, stream.feat()).await {
            Ok(f) => {
                let has = |k: &str| f.keys().any(|key| key.eq_ignore_ascii_case(k));
                Features {
                    mlsd: has("MLST") || has("MLSD"),
                    mfmt: has("MFMT"),
                    size: has("SIZE"),
                    epsv: has("EPSV"),
                    utf8: has("UTF8"),
                    rest: has("REST"),
                }
            }
            // FEAT is optional (RFC 2389): assume a minimal server.
            Err(FtpFailure::Reply { .. }) => Features::default(),
            Err(e) => return Err(e),
        };
        if features.utf8 {
            let _ = timed(t, stream.opts("UTF8", Some("ON"))).await;
        }
        let mdtm_write = !features.mfmt
            && stream
                .get_welcome_msg()
                .is_some_and(|w| w.to_ascii_lowercase().contains("vsftpd"));
        let mut stream = if o.passive {
            stream
        } else {
            stream.active_mode(t)
        };
        if o.passive {
            // Data connections go to the control connection's address, never to
            // the one in a PASV reply (bounce / SSRF: curl CVE-2020-8284).
            if features.epsv || addr.is_ipv6() {
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
        })
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
        let dir = checked(dir)?;
        match timed(self.timeout, self.stream.cwd(dir)).await {
            Ok(()) => {}
            Err(FtpFailure::Reply { code: 550, .. }) => {
                return Ok(DirListing {
                    exists: false,
                    listing: Listing::default(),
                });
            }
            Err(e) => return Err(e),
        }
        let (format, data) = if self.features.mlsd {
            (ListFormat::Mlsd, self.data_lines("MLSD").await?)
        } else if self.plain_list {
            (ListFormat::List, self.data_lines("LIST").await?)
        } else {
            match self.data_lines("LIST -a").await {
                Ok(d) => (ListFormat::List, d),
                Err(FtpFailure::Reply { code, .. }) if (500..=504).contains(&code) => {
                    self.plain_list = true;
                    (ListFormat::List, self.data_lines("LIST").await?)
                }
                Err(e) => return Err(e),
            }
        };
        Ok(DirListing {
            exists: true,
            listing: parse_listing(format, &data, now),
        })
    }

    /// Runs a listing command and returns its raw bytes (names stay byte-exact).
    /// The final reply is checked: a listing cut short fails here.
    async fn data_lines(&mut self, cmd: &str) -> Result<Vec<u8>, FtpFailure> {
        let t = self.timeout;
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

    pub async fn rename(&mut self, from: &str, to: &str) -> Result<(), FtpFailure> {
        timed(
            self.timeout,
            self.stream.rename(checked(from)?, checked(to)?),
        )
        .await
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

    /// Sets a file's modification time (UTC) with MFMT where advertised, or
    /// vsftpd's two-argument MDTM; returns the time set, or `None` if the
    /// server cannot.
    pub async fn set_mtime(
        &mut self,
        path: &str,
        utc: chrono::NaiveDateTime,
    ) -> Result<Option<RemoteTime>, FtpFailure> {
        let verb = if self.features.mfmt {
            "MFMT"
        } else if self.mdtm_write {
            "MDTM"
        } else {
            return Ok(None);
        };
        let cmd = format!("{verb} {} {}", utc.format("%Y%m%d%H%M%S"), checked(path)?);
        match timed(
            self.timeout,
            self.stream.custom_command(cmd, &[Status::File]),
        )
        .await
        {
            Ok(_) => Ok(Some(RemoteTime::Exact(utc))),
            Err(FtpFailure::Reply { .. }) => {
                self.mdtm_write = false;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Uploads `local` to `remote` (STOR), from byte `offset` on (REST, to
    /// resume a verified partial upload). Returns the file's total size as
    /// sent (offset included).
    /// `len` is the file's size as just checked by the caller.
    pub async fn upload(
        &mut self,
        local: &Path,
        len: u64,
        remote: &str,
        offset: u64,
    ) -> Result<u64, FtpFailure> {
        use tokio::io::AsyncSeekExt;
        let t = self.timeout;
        let local_err = |e: std::io::Error| FtpFailure::Local(format!("{}: {e}", local.display()));
        let remote = checked(remote)?;
        // Small files (most of a website) are read in one go: it saves the
        // thread hops of async file I/O, which dominate for many tiny files.
        if offset == 0 && len <= SMALL_FILE {
            let data = std::fs::read(local).map_err(local_err)?;
            let mut stream = timed(t, self.stream.put_with_stream(remote)).await?;
            write_timed(t, &mut stream, &data).await?;
            timed(t, stream.finish()).await?;
            return Ok(data.len() as u64);
        }
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(local_err)?;
            timed(t, self.stream.resume_transfer(offset as usize)).await?;
        }
        let mut stream = timed(t, self.stream.put_with_stream(remote)).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = offset;
        loop {
            let n = file.read(&mut buf).await.map_err(local_err)?;
            if n == 0 {
                break;
            }
            write_timed(t, &mut stream, &buf[..n]).await?;
            total += n as u64;
        }
        timed(t, stream.finish()).await?;
        Ok(total)
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
        timed(t, self.stream.resume_transfer(offset as usize)).await?;
        let mut stream = timed(t, self.stream.retr_as_stream(checked(remote)?)).await?;
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = read_timed(t, &mut stream, &mut buf).await?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            if data.len() > limit {
                return Err(FtpFailure::Verify("more data than expected".into()));
            }
        }
        timed(t, stream.finish()).await?;
        Ok(data)
    }

    /// Downloads `remote` (RETR) into the file `local`. With `resume`, the
    /// file keeps its first `resume.keep` bytes and the transfer starts
    /// `resume.overlap.len()` bytes earlier: those bytes must equal the tail
    /// of what is kept, or the download fails (and restarts from zero).
    /// Returns the file's total size.
    pub async fn download(
        &mut self,
        remote: &str,
        local: &Path,
        resume: Option<Resume>,
    ) -> Result<u64, FtpFailure> {
        use tokio::io::AsyncSeekExt;
        let t = self.timeout;
        let local_err = |e: std::io::Error| FtpFailure::Local(format!("{}: {e}", local.display()));
        let remote = checked(remote)?;
        let (mut file, mut total, mut overlap) = match &resume {
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
                let start = r.keep - r.overlap.len() as u64;
                timed(t, self.stream.resume_transfer(start as usize)).await?;
                (f, r.keep, r.overlap.as_slice())
            }
            None => (
                tokio::fs::File::create(local).await.map_err(local_err)?,
                0,
                &[][..],
            ),
        };
        let mut stream = timed(t, self.stream.retr_as_stream(remote)).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = read_timed(t, &mut stream, &mut buf).await?;
            if n == 0 {
                break;
            }
            let mut chunk = &buf[..n];
            if !overlap.is_empty() {
                let k = overlap.len().min(chunk.len());
                if chunk[..k] != overlap[..k] {
                    return Err(FtpFailure::Verify(
                        "the partial download does not match the server's file; starting over"
                            .into(),
                    ));
                }
                overlap = &overlap[k..];
                chunk = &chunk[k..];
            }
            file.write_all(chunk).await.map_err(local_err)?;
            total += chunk.len() as u64;
        }
        if !overlap.is_empty() {
            return Err(FtpFailure::Verify(
                "the server's file is shorter than the partial download".into(),
            ));
        }
        file.flush().await.map_err(local_err)?;
        drop(file);
        timed(t, stream.finish()).await?;
        Ok(total)
    }

    /// Says goodbye (best effort).
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), self.stream.quit()).await;
    }
}
