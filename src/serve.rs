//! The built-in FTP server behind `ftpsync serve`, `ftpsync demo` and the in-process tests.
//!
//! It owns everything needed to run libunftp over one local directory for one user:
//! the [`ServeConfig`], a single-user authenticator, the accept loop ([`serve`]) and a
//! background loopback server for tests and the demo ([`spawn_loopback`], [`ServerHandle`]).
//!
//! libunftp's own `Server::listen` binds its listener itself and cannot report the port of a
//! listener bound to port 0, so we accept connections on our own [`TcpListener`] and hand each
//! socket to a fresh libunftp `Server` with `Server::service`.
//!
//! Logging: libunftp logs through slog into the `log` crate (targets `libunftp::…`). Without a
//! `log` backend that output is discarded; if the binary bridges `log` into `tracing`, filter the
//! `libunftp` target. libunftp redacts the PASS argument itself, and this module never logs the
//! password either.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use libunftp::options::{ActivePassiveMode, FtpsRequired};
use libunftp::{Server, ServerBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, DefaultUser, Principal};
use unftp_sbe_fs::Filesystem;

/// How long to pause after a failed `accept()` (for example EMFILE) before trying again, so a
/// persistent error does not spin the CPU.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Configuration of the built-in server.
#[derive(Clone)]
pub struct ServeConfig {
    /// Directory served as "/". Must exist and be a directory.
    pub root: PathBuf,
    /// The only accepted user name.
    pub user: String,
    /// Its password. Never logged: `Debug` redacts it.
    pub password: String,
    /// Port range for passive data connections; `None` keeps libunftp's default (49152–65535).
    pub passive_ports: Option<RangeInclusive<u16>>,
    /// `(certificate PEM, private key PEM)`: enables explicit FTPS (AUTH TLS), but does not
    /// require it, so plain clients still work.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("root", &self.root)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("passive_ports", &self.passive_ports)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Serve FTP on an already-bound listener until `shutdown` resolves.
///
/// Taking a bound listener (rather than an address) lets callers bind port 0 and learn the
/// port, as mini-redis does. The root directory and the TLS files are checked before the first
/// connection is accepted, so a bad configuration is an error here rather than a panic in a
/// background task. When `shutdown` resolves, the server stops accepting and closes every live
/// session's control connection.
///
/// # Errors
///
/// Fails if `config.root` does not exist or is not a directory, or if the TLS certificate or key
/// cannot be loaded. Errors while accepting or serving individual connections are logged, not
/// returned.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let factory = SessionFactory::new(config).await?;
    run_accept_loop(listener, factory, shutdown).await;
    Ok(())
}

/// A server running in the background on 127.0.0.1 with an OS-chosen port (for tests and the
/// demo). Dropping the handle aborts the server; [`ServerHandle::stop`] shuts it down and waits.
pub struct ServerHandle {
    /// Where the server listens (127.0.0.1 and the port the OS chose).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// Stop accepting connections, close live sessions and wait for the server task to end.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // An error means the task already ended, which is the goal anyway.
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "built-in FTP server ended with an error"),
                Err(error) => tracing::warn!(%error, "built-in FTP server task failed"),
            }
        }
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Aborting drops the accept loop, whose session set aborts every session (see
        // `run_accept_loop`).
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Start a server on 127.0.0.1 with an OS-chosen port and return once it accepts connections.
///
/// # Errors
///
/// Configuration errors (missing root, unreadable TLS files) and a failure to bind the loopback
/// port are returned here, not hidden in the background task.
pub async fn spawn_loopback(config: ServeConfig) -> io::Result<ServerHandle> {
    let factory = SessionFactory::new(config).await?;
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // A dropped sender (handle dropped without `stop`) also counts as shutdown.
        let shutdown = async move {
            let _ = shutdown_rx.await;
        };
        run_accept_loop(listener, factory, shutdown).await;
        Ok(())
    });
    tracing::debug!(%addr, "built-in FTP server listening");
    Ok(ServerHandle {
        addr,
        shutdown: Some(shutdown_tx),
        task: Some(task),
    })
}

/// Accept connections until `shutdown` resolves, servicing each one in its own task.
async fn run_accept_loop(
    listener: TcpListener,
    factory: SessionFactory,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut sessions = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(finished) = sessions.join_next() => {
                if let Err(error) = finished
                    && error.is_panic()
                {
                    tracing::warn!(%error, "FTP session task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => match factory.session(socket) {
                    Ok(session) => {
                        tracing::debug!(%peer, "FTP session started");
                        sessions.spawn(session);
                    }
                    Err(error) => tracing::warn!(%peer, %error, "could not start FTP session"),
                },
                Err(error) => {
                    tracing::warn!(%error, "accepting an FTP connection failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
        }
    }
    // Aborting a session task drops the future of `Server::service`, and with it the shutdown
    // notifier that libunftp created for that session; its control loop (a separate task) sees
    // the notifier's channel close, treats that as shutdown and closes the connection.
    sessions.shutdown().await;
}

/// Builds one libunftp `Server` per accepted connection from the validated configuration.
struct SessionFactory {
    root: PathBuf,
    authenticator: Arc<SingleUserAuthenticator>,
    passive_ports: Option<RangeInclusive<u16>>,
    tls: Option<(PathBuf, PathBuf)>,
}

impl SessionFactory {
    /// Check the root and TLS files now, so later failures can only come from the environment
    /// changing under a running server.
    async fn new(config: ServeConfig) -> io::Result<Self> {
        let root = checked_root(&config.root).await?;
        let factory = SessionFactory {
            authenticator: Arc::new(SingleUserAuthenticator {
                user: config.user,
                password: config.password,
            }),
            passive_ports: config.passive_ports,
            tls: config.tls,
            root,
        };
        // Building a server reads and parses the TLS files; do it once to report errors early.
        factory.build(factory.open_root()?)?;
        Ok(factory)
    }

    fn open_root(&self) -> io::Result<Filesystem> {
        Filesystem::new(self.root.clone()).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot open FTP root {}: {error}", self.root.display()),
            )
        })
    }

    /// Prepare the future that services one control connection.
    fn session(&self, socket: TcpStream) -> io::Result<impl Future<Output = ()> + Send + 'static> {
        let server = self.build(self.open_root()?)?;
        Ok(async move {
            if let Err(error) = server.service(socket).await {
                tracing::debug!(%error, "FTP session ended with an error");
            }
        })
    }

    /// Build a server around an already-opened root.
    ///
    /// libunftp wants a storage *generator* (`Fn() -> Filesystem`) and calls it once per
    /// `Server::service`. Opening the root here and handing the open directory over means the
    /// generator cannot fail inside libunftp's task, where a panic would go unseen.
    fn build(&self, storage: Filesystem) -> io::Result<Server<Filesystem, DefaultUser>> {
        let slot = Mutex::new(Some(storage));
        let root = self.root.clone();
        let generator = move || {
            let opened = slot.lock().ok().and_then(|mut slot| slot.take());
            opened.unwrap_or_else(|| {
                // Only reached if libunftp ever calls the generator twice for one session.
                Filesystem::new(root.clone()).expect("FTP root vanished while serving")
            })
        };
        let authenticator: Arc<dyn Authenticator + Send + Sync> = self.authenticator.clone();
        let mut builder = ServerBuilder::with_authenticator(Box::new(generator), authenticator)
            .greeting("ftpsync built-in FTP server")
            .active_passive_mode(ActivePassiveMode::ActiveAndPassive);
        if let Some(ports) = &self.passive_ports {
            builder = builder.passive_ports(ports.clone());
        }
        if let Some((cert, key)) = &self.tls {
            builder = builder
                .ftps(cert.clone(), key.clone())
                .ftps_required(FtpsRequired::None, FtpsRequired::None);
        }
        builder.build().map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid FTP server configuration: {error}"),
            )
        })
    }
}

/// Resolve `root` to an absolute path and make sure it is a directory.
async fn checked_root(root: &Path) -> io::Result<PathBuf> {
    let context = |error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("FTP root {}: {error}", root.display()),
        )
    };
    let absolute = tokio::fs::canonicalize(root).await.map_err(context)?;
    let metadata = tokio::fs::metadata(&absolute).await.map_err(context)?;
    if !metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("FTP root {} is not a directory", root.display()),
        ));
    }
    Ok(absolute)
}

/// Accepts exactly one user name and password.
struct SingleUserAuthenticator {
    user: String,
    password: String,
}

impl fmt::Debug for SingleUserAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleUserAuthenticator")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[async_trait]
impl Authenticator for SingleUserAuthenticator {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        // Check both fields every time so the timing does not reveal which one was wrong.
        let user_ok = constant_time_eq(username.as_bytes(), self.user.as_bytes());
        let password_ok = constant_time_eq(
            creds.password.as_deref().unwrap_or_default().as_bytes(),
            self.password.as_bytes(),
        ) && creds.password.is_some();
        match (user_ok, password_ok) {
            (true, true) => Ok(Principal {
                username: username.to_owned(),
            }),
            (false, _) => Err(AuthenticationError::BadUser),
            (true, false) => Err(AuthenticationError::BadPassword),
        }
    }
}

/// Compare two byte strings in time that depends only on their lengths, not on where they
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use suppaftp::tokio::AsyncFtpStream;
    use suppaftp::types::FileType;
    use suppaftp::{FtpError, Mode, Status};
    use tokio::io::AsyncReadExt;

    const USER: &str = "alice";
    const PASSWORD: &str = "s3cret";

    fn config(root: &Path) -> ServeConfig {
        ServeConfig {
            root: root.to_path_buf(),
            user: USER.to_owned(),
            password: PASSWORD.to_owned(),
            passive_ports: None,
            tls: None,
        }
    }

    async fn start() -> (tempfile::TempDir, ServerHandle) {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = spawn_loopback(config(dir.path()))
            .await
            .expect("server starts");
        (dir, server)
    }

    async fn client(server: &ServerHandle) -> AsyncFtpStream {
        let mut ftp = AsyncFtpStream::connect(server.addr).await.expect("connect");
        ftp.login(USER, PASSWORD).await.expect("login");
        ftp.transfer_type(FileType::Binary).await.expect("TYPE I");
        ftp
    }

    fn reply_code(error: &FtpError) -> Option<u32> {
        match error {
            FtpError::UnexpectedResponse(response) => std::str::from_utf8(&response.body)
                .ok()
                .and_then(|body| body.get(..3))
                .and_then(|code| code.parse().ok()),
            _ => None,
        }
    }

    async fn download(ftp: &mut AsyncFtpStream, path: &str) -> Vec<u8> {
        let mut stream = ftp.retr_as_stream(path).await.expect("RETR");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.expect("read data");
        stream.finish().await.expect("RETR completes");
        bytes
    }

    #[tokio::test]
    async fn login_succeeds_with_configured_credentials() {
        let (_dir, server) = start().await;
        let mut ftp = client(&server).await;
        assert_eq!(ftp.pwd().await.expect("PWD"), "/");
        ftp.quit().await.expect("QUIT");
        server.stop().await;
    }

    #[tokio::test]
    async fn wrong_password_and_unknown_user_get_530() {
        let (_dir, server) = start().await;
        for (user, password) in [(USER, "wrong"), ("mallory", PASSWORD), (USER, "")] {
            let mut ftp = AsyncFtpStream::connect(server.addr).await.expect("connect");
            let error = ftp
                .login(user, password)
                .await
                .expect_err("login must fail");
            assert_eq!(reply_code(&error), Some(530), "{user}: {error}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn upload_download_and_mlsd() {
        let (dir, server) = start().await;
        let mut ftp = client(&server).await;
        ftp.set_mode(Mode::ExtendedPassive);
        let content = b"line one\nline two\n\x00\xff binary".to_vec();
        let written = ftp
            .put_file("data.bin", &mut content.as_slice())
            .await
            .expect("STOR");
        assert_eq!(written, content.len() as u64);
        assert_eq!(
            std::fs::read(dir.path().join("data.bin")).expect("on disk"),
            content
        );

        assert_eq!(download(&mut ftp, "data.bin").await, content);

        let listing = ftp.mlsd(None).await.expect("MLSD");
        let line = listing
            .iter()
            .find(|line| line.ends_with(" data.bin"))
            .unwrap_or_else(|| panic!("data.bin missing from {listing:?}"));
        assert!(line.contains(&format!("size={};", content.len())), "{line}");
        assert!(line.contains("type=file;"), "{line}");

        let list = ftp.list(None).await.expect("LIST");
        assert!(
            list.iter().any(|line| line.ends_with("data.bin")),
            "{list:?}"
        );

        ftp.mkdir("sub").await.expect("MKD");
        assert!(dir.path().join("sub").is_dir());
        ftp.rename("data.bin", "sub/moved.bin")
            .await
            .expect("RNFR/RNTO");
        assert!(dir.path().join("sub/moved.bin").is_file());
        ftp.rm("sub/moved.bin").await.expect("DELE");
        assert!(!dir.path().join("sub/moved.bin").exists());
        ftp.quit().await.expect("QUIT");
        server.stop().await;
    }

    #[tokio::test]
    async fn active_mode_transfer_works() {
        let (dir, server) = start().await;
        let mut ftp = client(&server).await.active_mode(Duration::from_secs(5));
        ftp.put_file("active.txt", &mut &b"via PORT"[..])
            .await
            .expect("STOR over PORT");
        assert_eq!(
            std::fs::read(dir.path().join("active.txt")).expect("on disk"),
            b"via PORT"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn three_concurrent_clients_upload() {
        let (dir, server) = start().await;
        let mut tasks = JoinSet::new();
        for i in 0..3u8 {
            let mut ftp = client(&server).await;
            tasks.spawn(async move {
                let name = format!("client{i}.bin");
                let content = vec![i; 256 * 1024 + usize::from(i)];
                ftp.put_file(name.as_str(), &mut content.as_slice())
                    .await
                    .expect("STOR");
                ftp.quit().await.expect("QUIT");
                (name, content)
            });
        }
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            let (name, content) = joined.expect("client task");
            assert_eq!(
                std::fs::read(dir.path().join(&name)).expect("on disk"),
                content
            );
            done += 1;
        }
        assert_eq!(done, 3);
        server.stop().await;
    }

    #[tokio::test]
    async fn stop_refuses_new_connections_and_ends_sessions() {
        let (_dir, server) = start().await;
        let addr = server.addr;
        let mut live = client(&server).await;
        server.stop().await;
        assert!(
            AsyncFtpStream::connect(addr).await.is_err(),
            "connect after stop must fail"
        );
        let result = tokio::time::timeout(Duration::from_secs(5), live.noop()).await;
        assert!(
            matches!(result, Ok(Err(_))),
            "live session must be closed after stop, got {result:?}"
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_server() {
        let (_dir, server) = start().await;
        let addr = server.addr;
        drop(server);
        // The abort is asynchronous; give the runtime a moment to run it.
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "listener still accepting after drop");
    }

    #[tokio::test]
    async fn bad_root_is_reported_up_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = spawn_loopback(config(&dir.path().join("missing")))
            .await
            .expect_err("missing root");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let not_dir = spawn_loopback(config(&file)).await.expect_err("file root");
        assert_eq!(not_dir.kind(), io::ErrorKind::NotADirectory);

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let served = serve(listener, config(&file), std::future::pending()).await;
        assert!(served.is_err());
    }

    #[tokio::test]
    async fn bad_tls_files_are_reported_up_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.tls = Some((dir.path().join("cert.pem"), dir.path().join("key.pem")));
        let error = spawn_loopback(cfg).await.expect_err("missing TLS files");
        assert!(error.to_string().contains("configuration"), "{error}");
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let cfg = config(Path::new("/srv"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let auth = SingleUserAuthenticator {
            user: USER.to_owned(),
            password: PASSWORD.to_owned(),
        };
        assert!(!format!("{auth:?}").contains(PASSWORD));
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
    }

    /// Self-signed test certificate for `localhost` / 127.0.0.1 (P-256, CA:FALSE, valid until
    /// 2126), made with `openssl req -x509 -newkey ec ...`.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBvzCCAWWgAwIBAgIUUJrNJPhiLPQQTLkxhMWhJmxL/9gwCgYIKoZIzj0EAwIw\n\
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyMzIzMDc0MloYDzIxMjYxMDMw\n\
MjMwNzQyWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\n\
PQMBBwNCAARtYydKnBSMKJYOEdDA4mHtRFVF1uSVWP72mjwZCzu7/ok76pGQ1Fzk\n\
9n3Nf0uss+D6ODG7pERQqsEKP6jgd8Gjo4GSMIGPMB0GA1UdDgQWBBTYNRliULCo\n\
gjt3CvfNnlcrmbDNTTAfBgNVHSMEGDAWgBTYNRliULCogjt3CvfNnlcrmbDNTTAa\n\
BgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwDAYDVR0TAQH/BAIwADAOBgNVHQ8B\n\
Af8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwCgYIKoZIzj0EAwIDSAAwRQIg\n\
IsS/CPM8FK6kzMmp/xg3y/tu/B4+mb/lQM3jNupQiFYCIQDcdWfan+AWAtz13eXE\n\
Uxbif6Br5sGcr2KkzfXEhudx3w==\n\
-----END CERTIFICATE-----\n";
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMp539TWyLAj2Mmth\n\
fohbErKSIHdX63GnYy2Ub9UGngKhRANCAARtYydKnBSMKJYOEdDA4mHtRFVF1uSV\n\
WP72mjwZCzu7/ok76pGQ1Fzk9n3Nf0uss+D6ODG7pERQqsEKP6jgd8Gj\n\
-----END PRIVATE KEY-----\n";

    #[tokio::test]
    async fn explicit_ftps_is_offered_but_not_required() {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
        use suppaftp::tokio_rustls::{TlsConnector, rustls};

        let dir = tempfile::tempdir().expect("tempdir");
        let keys = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (keys.path().join("cert.pem"), keys.path().join("key.pem"));
        std::fs::write(&cert, TEST_CERT).expect("write cert");
        std::fs::write(&key, TEST_KEY).expect("write key");
        let mut cfg = config(dir.path());
        cfg.tls = Some((cert, key));
        let server = spawn_loopback(cfg).await.expect("FTPS server starts");

        // Plain FTP still works: TLS is offered, not required.
        client(&server).await.quit().await.expect("plain QUIT");

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).expect("parse cert"))
            .expect("trust cert");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = AsyncRustlsConnector::from(TlsConnector::from(Arc::new(tls)));
        let mut ftp = AsyncRustlsFtpStream::connect(server.addr)
            .await
            .expect("connect")
            .into_secure(connector, "localhost")
            .await
            .expect("AUTH TLS");
        ftp.login(USER, PASSWORD).await.expect("login over TLS");
        ftp.transfer_type(FileType::Binary).await.expect("TYPE I");
        ftp.put_file("secret.txt", &mut &b"over TLS"[..])
            .await
            .expect("STOR over PROT P");
        assert_eq!(
            std::fs::read(dir.path().join("secret.txt")).expect("on disk"),
            b"over TLS"
        );
        let mut stream = ftp.retr_as_stream("secret.txt").await.expect("RETR");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.expect("read data");
        stream.finish().await.expect("RETR completes");
        assert_eq!(bytes, b"over TLS");
        ftp.quit().await.expect("QUIT");
        server.stop().await;
    }

    /// Documents what the server advertises and how it answers the commands ftpsync relies on.
    #[tokio::test]
    async fn protocol_probes() {
        let (dir, server) = start().await;
        let mut ftp = client(&server).await;

        let mut features: Vec<String> = ftp
            .feat()
            .await
            .expect("FEAT")
            .into_iter()
            .map(|(name, value)| match value {
                Some(value) => format!("{name} {value}"),
                None => name,
            })
            .collect();
        features.sort();
        println!("FEAT: {features:?}");
        for wanted in [
            "EPSV",
            "MLSD",
            "MLST",
            "REST STREAM",
            "SIZE",
            "MDTM",
            "UTF8",
        ] {
            assert!(
                features.iter().any(|f| f == wanted),
                "{wanted} missing: {features:?}"
            );
        }

        // EPSV transfer.
        ftp.set_mode(Mode::ExtendedPassive);
        ftp.put_file("a.txt", &mut &b"0123456789"[..])
            .await
            .expect("STOR over EPSV");

        // REST + RETR.
        ftp.resume_transfer(3).await.expect("arm REST");
        assert_eq!(download(&mut ftp, "a.txt").await, b"3456789");

        // REST + STOR: truncates at the offset, then writes.
        ftp.resume_transfer(5).await.expect("arm REST");
        ftp.put_file("a.txt", &mut &b"ABCDE"[..])
            .await
            .expect("STOR at offset");
        assert_eq!(
            std::fs::read(dir.path().join("a.txt")).expect("on disk"),
            b"01234ABCDE"
        );

        // MFMT is not implemented by libunftp.
        let mfmt = ftp
            .custom_command("MFMT 20200102030405 a.txt", &[Status::File])
            .await
            .expect_err("MFMT unsupported");
        println!("MFMT: {mfmt}");
        assert_eq!(reply_code(&mfmt).map(|code| code / 100), Some(5));

        // RNFR/RNTO onto an existing file replaces it (rename(2) semantics).
        ftp.put_file("b.txt", &mut &b"old b"[..])
            .await
            .expect("STOR b");
        ftp.rename("a.txt", "b.txt")
            .await
            .expect("RNTO onto existing file");
        assert!(!dir.path().join("a.txt").exists());
        assert_eq!(
            std::fs::read(dir.path().join("b.txt")).expect("on disk"),
            b"01234ABCDE"
        );

        // RETR of a missing file: 150 first, 550 only at finish().
        let missing = match ftp.retr_as_stream("nope.txt").await {
            Ok(stream) => stream.finish().await.expect_err("missing file"),
            Err(error) => error,
        };
        assert_eq!(reply_code(&missing), Some(550), "{missing}");

        ftp.quit().await.expect("QUIT");
        server.stop().await;
    }
}
