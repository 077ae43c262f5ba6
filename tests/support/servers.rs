//! Real third-party FTP servers on 127.0.0.1 for interoperability tests.
//!
//! * [`start_vsftpd`] runs Debian's vsftpd 3.0.3 in the foreground with a
//!   private config file, temp root and port. Login is **anonymous** (user
//!   `anonymous`, any password) with upload, mkdir, delete, rename,
//!   overwrite and `MDTM <time> <file>` enabled. vsftpd has no MLSD and no
//!   MFMT, so clients must use `LIST` (`LIST -a` shows dotfiles, plus `.`
//!   and `..`) and `MDTM YYYYMMDDHHMMSS path` to set times.
//! * [`start_pyftpdlib`] runs `python -m pyftpdlib` (2.2.0) with a user and
//!   password, write access, MLSD and MFMT.
//! * ProFTPD and Pure-FTPd: see below.
//!
//! Each call starts its own server process (own port, own passive port
//! range, own temp dir), so tests may run them in parallel. Dropping the
//! [`ExternalServer`] kills the server and all its session processes and
//! deletes the temp dir. Every server runs under a small `sh` watchdog that
//! also kills it when the test process dies without running `Drop`.
//!
//! When a server cannot be started, the functions print
//! `SKIPPED: <kind> not available: <reason>` to stderr and return `None`,
//! unless `FTPSYNC_REQUIRE_INTEROP=1` is set (CI sets it), in which case
//! they panic.
//!
//! ProFTPD and Pure-FTPd:
//!
//! * [`start_proftpd`] runs ProFTPD 1.3.8 (`proftpd -n`) with Debian's
//!   default settings (`AllowOverwrite on`, `ListOptions "-l"`, and the
//!   compiled-in `AllowStoreRestart off`: a `STOR` after `REST` is refused
//!   with 451), a virtual user from an `AuthUserFile`, mod_digest (HASH,
//!   XSHA256, ...) and a command log; [`start_proftpd_tls`] adds mod_tls with
//!   `TLSRequired on`, its default TLSOptions (data connections must reuse
//!   the control connection's TLS session) and a self-signed certificate
//!   made at start ([`ExternalServer::tls_ca_file`]).
//! * [`start_pure_ftpd`] runs Pure-FTPd 1.0.50 with a virtual user from a
//!   PureDB (`pure-pw`), chrooted into its home.
//!
//! ProFTPD, Pure-FTPd and vsftpd conflict as Debian packages (`ftp-server`),
//! so at most one is installed; the others are unpacked with `dpkg -x` into
//! /opt/ftpsync-servers/<package> (.ci/run does that), where the starters
//! also look.
//!
//! Environment overrides: `FTPSYNC_VSFTPD` (path of the vsftpd binary),
//! `FTPSYNC_PROFTPD`, `FTPSYNC_PURE_FTPD` (likewise), `FTPSYNC_PYTHON` (a
//! python that can `import pyftpdlib`).
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a freshly spawned server may take to accept a login.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Number of ports in each server's passive data-port range.
const PASV_PORTS: u16 = 32;
/// Attempts with fresh ports when a port turned out to be taken.
const START_ATTEMPTS: usize = 5;

/// A third-party FTP server running on 127.0.0.1 for the duration of a test.
pub struct ExternalServer {
    /// `"vsftpd"` or `"pyftpdlib"`.
    pub kind: &'static str,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Remote path (as the FTP client sees it) of an empty writable
    /// directory to use as a job's remote root.
    pub remote_root: String,
    /// The same directory on the local disk, to compare trees
    /// byte-for-byte after a push (or to seed remote content before a pull;
    /// call [`ExternalServer::fix_disk_ownership`] after writing there).
    pub disk_root: PathBuf,
    /// The watchdog shell; the server is its child.
    child: Child,
    /// Server log (vsftpd protocol log, or pyftpdlib's stderr).
    log_path: PathBuf,
    /// stdout/stderr of the watchdog and the server.
    stderr_path: PathBuf,
    /// vsftpd's fd 0, where it writes its fatal "500 OOPS" messages;
    /// ProFTPD's SystemLog.
    oops_path: Option<PathBuf>,
    /// Owner (uid, gid) of files written by the server, when it differs from
    /// the test process (vsftpd's anonymous user when running as root).
    owner: Option<(u32, u32)>,
    /// Deleted last (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl ExternalServer {
    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The PEM certificate of a server that made its own self-signed one at
    /// start ([`start_proftpd_tls`]): the job's `tls_ca_file`.
    pub fn tls_ca_file(&self) -> Option<PathBuf> {
        let path = self._dir.path().join(SELF_SIGNED_CERT);
        path.is_file().then_some(path)
    }

    /// ProFTPD's TLS log (`TLSLog`), empty for other servers.
    pub fn tls_log(&self) -> String {
        fs::read_to_string(self._dir.path().join("tls.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's log so far (vsftpd: full protocol log; pyftpdlib: its
    /// stderr), plus anything the server printed to stdout/stderr. Handy in
    /// assertion messages.
    pub fn log(&self) -> String {
        let mut out = fs::read_to_string(&self.log_path).unwrap_or_default();
        if self.log_path != self.stderr_path {
            let extra = fs::read_to_string(&self.stderr_path).unwrap_or_default();
            if !extra.trim().is_empty() {
                out.push_str("\n--- server stdout/stderr ---\n");
                out.push_str(&extra);
            }
        }
        if let Some(oops) = &self.oops_path {
            let extra = fs::read_to_string(oops).unwrap_or_default();
            if !extra.trim().is_empty() {
                out.push_str(&format!("\n--- {} error log ---\n", self.kind));
                out.push_str(&extra);
            }
        }
        out
    }

    /// Hand everything under `disk_root` to the user the server writes
    /// files as. Call this after creating files/dirs in `disk_root` directly
    /// (e.g. to seed a remote tree): vsftpd's anonymous user cannot delete
    /// or overwrite entries in directories the test (root) created.
    /// No-op for servers that run as the test user.
    pub fn fix_disk_ownership(&self) {
        if let Some((uid, gid)) = self.owner {
            chown_tree(&self.disk_root, uid, gid)
                .unwrap_or_else(|e| panic!("chown -R {}: {e}", self.disk_root.display()));
        }
    }

    /// Write `data` to `disk_root/rel` (creating parent directories) as if
    /// it had been uploaded, owned by the server's user.
    pub fn write_remote_file(&self, rel: &str, data: &[u8]) {
        let path = self.disk_root.join(rel.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, data).unwrap();
        self.fix_disk_ownership();
    }
}

impl Drop for ExternalServer {
    fn drop(&mut self) {
        let root = self.child.id();
        // Kill the server and its per-session processes (vsftpd sessions
        // call setsid(), so a process-group kill would miss them).
        let victims = descendants(root);
        kill_pids(&victims);
        // Closing the watchdog's stdin also makes it kill the server.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        // Anything forked in the meantime.
        kill_pids(&descendants(root));
    }
}

impl std::fmt::Debug for ExternalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalServer")
            .field("kind", &self.kind)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("remote_root", &self.remote_root)
            .field("disk_root", &self.disk_root)
            .finish()
    }
}

/// Start a private vsftpd on 127.0.0.1. `None` (with a `SKIPPED:` line on
/// stderr) when vsftpd cannot run here; panics instead when
/// `FTPSYNC_REQUIRE_INTEROP=1`.
///
/// Login: user `anonymous`, password as given in the struct (vsftpd accepts
/// any password for anonymous). As root, the session is chrooted into a
/// root-owned directory and `remote_root` is `/data`; as a non-root user,
/// vsftpd runs with `run_as_launching_user=YES` (no chroot) and
/// `remote_root` is the absolute directory path.
pub fn start_vsftpd() -> Option<ExternalServer> {
    unavailable_or(try_start_vsftpd(Vsftpd::default()), "vsftpd")
}

/// [`start_vsftpd`] with a local (non-anonymous) login as vsftpd ships it:
/// `local_umask=077`, so uploads land as 0600 and directories as 0700
/// unless the client sends `SITE CHMOD` (which vsftpd never allows
/// anonymous users). User `ftp` (or `nobody`), any password, checked by a
/// PAM service of the test suite's own (/etc/pam.d/ftpsync-test, written
/// here, only used by these servers); no chroot, so `remote_root` is the
/// directory's absolute path. Needs root (PAM, setuid to the user).
pub fn start_vsftpd_local_user() -> Option<ExternalServer> {
    let opts = Vsftpd {
        local_user: true,
        ..Vsftpd::default()
    };
    unavailable_or(try_start_vsftpd(opts), "vsftpd (local user)")
}

/// [`start_vsftpd`] listing in local time (`use_localtime=YES`) with the
/// server process in the POSIX time zone `tz` (e.g. `"<+05>-5"`, UTC+5).
/// vsftpd then reports local time in both LIST and MDTM.
pub fn start_vsftpd_localtime(tz: &'static str) -> Option<ExternalServer> {
    let opts = Vsftpd {
        localtime: Some(tz),
        ..Vsftpd::default()
    };
    unavailable_or(try_start_vsftpd(opts), "vsftpd (local time)")
}

/// [`start_vsftpd`] with explicit FTPS offered (the test certificate,
/// tests/data/localhost-*.pem) and vsftpd's default `require_ssl_reuse=YES`:
/// data connections must resume the control connection's TLS session.
pub fn start_vsftpd_tls() -> Option<ExternalServer> {
    let opts = Vsftpd {
        tls: true,
        ..Vsftpd::default()
    };
    unavailable_or(try_start_vsftpd(opts), "vsftpd")
}

/// Start a private pyftpdlib server on 127.0.0.1 (user `ftpsync`, random
/// password, write access, `remote_root` = `/data`). `None` (with a
/// `SKIPPED:` line) when no python with pyftpdlib is found; panics instead
/// when `FTPSYNC_REQUIRE_INTEROP=1`.
pub fn start_pyftpdlib() -> Option<ExternalServer> {
    unavailable_or(try_start_pyftpdlib(), "pyftpdlib")
}

fn unavailable_or(result: Result<ExternalServer, String>, kind: &str) -> Option<ExternalServer> {
    match result {
        Ok(server) => Some(server),
        Err(reason) => {
            if std::env::var("FTPSYNC_REQUIRE_INTEROP").as_deref() == Ok("1") {
                panic!(
                    "{kind} is required (FTPSYNC_REQUIRE_INTEROP=1) but could not be started: {reason}"
                );
            }
            eprintln!("SKIPPED: {kind} not available: {reason}");
            None
        }
    }
}

// ---------------------------------------------------------------- vsftpd ---

enum StartError {
    /// The chosen port was taken in the meantime: try again with new ports.
    PortBusy(String),
    Fatal(String),
}

/// How a vsftpd is set up.
#[derive(Debug, Clone, Copy, Default)]
struct Vsftpd {
    /// Explicit FTPS with the test certificate.
    tls: bool,
    /// A local user's login (see [`start_vsftpd_local_user`]) instead of anonymous.
    local_user: bool,
    /// `use_localtime=YES` with this `TZ` (see [`start_vsftpd_localtime`]).
    localtime: Option<&'static str>,
}

/// The PAM service of [`start_vsftpd_local_user`].
const PAM_SERVICE: &str = "ftpsync-test";
const PAM_CONFIG: &str = "\
# Written by ftpsync's test suite (tests/support/servers.rs) for its private
# vsftpd on 127.0.0.1: logs in the users ftp and nobody with any password.
auth required pam_succeed_if.so quiet user in ftp:nobody
auth required pam_permit.so
account required pam_permit.so
session required pam_permit.so
";

/// Writes [`PAM_CONFIG`] where PAM looks for the service, unless it is there.
fn install_pam_service() -> Result<(), String> {
    let path = Path::new("/etc/pam.d").join(PAM_SERVICE);
    if fs::read_to_string(&path).is_ok_and(|s| s == PAM_CONFIG) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, PAM_CONFIG)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn try_start_vsftpd(opts: Vsftpd) -> Result<ExternalServer, String> {
    let bin = find_vsftpd()?;
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        match spawn_vsftpd(&bin, opts) {
            Ok(server) => return Ok(server),
            Err(StartError::PortBusy(e)) => last = e,
            Err(StartError::Fatal(e)) => return Err(e),
        }
    }
    Err(format!("ports kept being taken: {last}"))
}

fn find_vsftpd() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FTPSYNC_VSFTPD") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("FTPSYNC_VSFTPD={} is not a file", p.display()))
        };
    }
    let mut dirs: Vec<PathBuf> = vec![
        "/usr/sbin".into(),
        Path::new(UNPACKED_SERVERS).join("vsftpd/usr/sbin"),
        "/usr/local/sbin".into(),
        "/sbin".into(),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter()
        .map(|d| d.join("vsftpd"))
        .find(|p| p.is_file())
        .ok_or_else(|| "no vsftpd binary found (apt-get install vsftpd)".to_string())
}

fn spawn_vsftpd(bin: &Path, opts: Vsftpd) -> Result<ExternalServer, StartError> {
    let fatal = StartError::Fatal;
    let tls = opts.tls;
    if opts.local_user {
        if effective_uid() != 0 {
            return Err(fatal(
                "a local-user login needs root (PAM and setuid to the user)".into(),
            ));
        }
        install_pam_service().map_err(fatal)?;
    }
    let dir = tempfile::Builder::new()
        .prefix("ftpsync-vsftpd-")
        .tempdir()
        .map_err(|e| fatal(format!("creating temp dir: {e}")))?;
    let base = dir.path().to_path_buf();
    let is_root = effective_uid() == 0;

    // Layout: <base>/root      anonymous root (chroot), root-owned 0755:
    //                          vsftpd refuses a chroot root the user can write
    //         <base>/root/data the writable remote root
    //         <base>/empty     secure_chroot_dir (must exist, not writable)
    let anon_root = base.join("root");
    let data = anon_root.join("data");
    let empty = base.join("empty");
    for d in [&anon_root, &data, &empty] {
        fs::create_dir_all(d).map_err(|e| fatal(format!("mkdir {}: {e}", d.display())))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .map_err(|e| fatal(format!("chmod {}: {e}", d.display())))?;
    }

    let (ftp_user, owner) = if is_root {
        // Debian's vsftpd package creates the `ftp` system user; fall back
        // to `nobody` (always present) if it is missing.
        let (name, uid, gid) = ["ftp", "nobody"]
            .iter()
            .find_map(|n| lookup_user(n).map(|(u, g)| (*n, u, g)))
            .ok_or_else(|| fatal("neither user `ftp` nor `nobody` exists".into()))?;
        std::os::unix::fs::chown(&data, Some(uid), Some(gid))
            .map_err(|e| fatal(format!("chown {}: {e}", data.display())))?;
        (name, Some((uid, gid)))
    } else {
        ("ftp", None)
    };
    // The unprivileged helper process runs as nopriv_user (default nobody).
    let nopriv = if lookup_user("nobody").is_some() {
        "nobody"
    } else {
        ftp_user
    };

    let remote_root = if is_root && !opts.local_user {
        "/data".to_string()
    } else {
        data.to_str()
            .ok_or_else(|| fatal(format!("non-UTF-8 temp path {}", data.display())))?
            .to_string()
    };

    let port = free_port().map_err(fatal)?;
    let (pasv_lo, pasv_hi) = free_port_range(PASV_PORTS).map_err(fatal)?;
    let log_path = base.join("vsftpd.log");
    let stderr_path = base.join("stderr.log");
    let oops_path = base.join("oops.log");
    let conf_path = base.join("vsftpd.conf");

    let mut conf = include_str!("../data/vsftpd-base.conf")
        .replace("@PORT@", &port.to_string())
        .replace("@PASV_LO@", &pasv_lo.to_string())
        .replace("@PASV_HI@", &pasv_hi.to_string())
        .replace("@FTP_USER@", ftp_user)
        .replace("@ANON_ROOT@", &anon_root.display().to_string())
        .replace("@EMPTY@", &empty.display().to_string());
    conf.push_str(&format!(
        "port_enable=YES
connect_from_port_20=NO
nopriv_user={nopriv}
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file={log}
",
        log = log_path.display(),
    ));
    if !is_root {
        conf.push_str("run_as_launching_user=YES\n");
    }
    let mut user = "anonymous".to_string();
    let mut password = "ftpsync@example.invalid".to_string();
    if opts.local_user {
        conf = conf
            .replace("anonymous_enable=YES", "anonymous_enable=NO")
            .replace("local_enable=NO", "local_enable=YES");
        conf.push_str(&format!(
            "local_umask=077\nchmod_enable=YES\npam_service_name={PAM_SERVICE}\nlocal_root={}\n",
            data.display()
        ));
        user = ftp_user.to_string();
        password = format!("pw-{:016x}", random_u64());
    }
    if tls {
        conf.push_str(&format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nrequire_ssl_reuse=YES\n\
             rsa_cert_file={}\nrsa_private_key_file={}\n",
            super::harness::test_data("localhost-cert.pem").display(),
            super::harness::test_data("localhost-key.pem").display(),
        ));
    }
    if opts.localtime.is_some() {
        conf = conf.replace("use_localtime=NO", "use_localtime=YES");
    }
    // vsftpd insists the config file is owned by the user running it.
    write_file(&conf_path, conf.as_bytes(), 0o600).map_err(fatal)?;

    // vsftpd writes fatal "500 OOPS" messages to fd 0 (the inetd socket in
    // inetd mode), so fd 0 is opened read-write on a file.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("ftpsync-watchdog")
        .arg(&oops_path)
        .arg(bin)
        .arg(&conf_path)
        .env("TZ", opts.localtime.unwrap_or("UTC"));
    let mut server = spawn_watched(cmd, &stderr_path, |child| ExternalServer {
        kind: "vsftpd",
        port,
        user,
        password,
        remote_root,
        disk_root: data.clone(),
        child,
        log_path: log_path.clone(),
        stderr_path: stderr_path.clone(),
        oops_path: Some(oops_path.clone()),
        owner,
        _dir: dir,
    })?;
    wait_ready(&mut server)?;
    Ok(server)
}

// ------------------------------------------------------------- pyftpdlib ---

fn try_start_pyftpdlib() -> Result<ExternalServer, String> {
    let python = find_python()?;
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        match spawn_pyftpdlib(&python) {
            Ok(server) => return Ok(server),
            Err(StartError::PortBusy(e)) => last = e,
            Err(StartError::Fatal(e)) => return Err(e),
        }
    }
    Err(format!("ports kept being taken: {last}"))
}

/// The first of `$FTPSYNC_PYTHON`, `/opt/ftpsync-venv/bin/python`, `python3`
/// that can import pyftpdlib (looked up once per test binary).
pub fn find_python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let mut candidates: Vec<PathBuf> = Vec::new();
            if let Some(p) = std::env::var_os("FTPSYNC_PYTHON") {
                candidates.push(p.into());
            }
            candidates.push("/opt/ftpsync-venv/bin/python".into());
            candidates.push("python3".into());
            let mut tried = Vec::new();
            for c in candidates {
                let out = Command::new(&c)
                    .args(["-c", "import pyftpdlib; print(pyftpdlib.__ver__)"])
                    .stdin(Stdio::null())
                    .output();
                match out {
                    Ok(o) if o.status.success() => return Ok(c),
                    Ok(o) => {
                        let err = String::from_utf8_lossy(&o.stderr);
                        let last = err.lines().last().unwrap_or("").trim().to_string();
                        tried.push(format!("{}: {last}", c.display()));
                    }
                    Err(e) => tried.push(format!("{}: {e}", c.display())),
                }
            }
            Err(format!(
                "no python with pyftpdlib (pip install pyftpdlib==2.2.0; tried {})",
                tried.join("; ")
            ))
        })
        .clone()
}

fn spawn_pyftpdlib(python: &Path) -> Result<ExternalServer, StartError> {
    let fatal = StartError::Fatal;
    let dir = tempfile::Builder::new()
        .prefix("ftpsync-pyftpdlib-")
        .tempdir()
        .map_err(|e| fatal(format!("creating temp dir: {e}")))?;
    let home = dir.path().join("home");
    let data = home.join("data");
    fs::create_dir_all(&data).map_err(|e| fatal(format!("mkdir {}: {e}", data.display())))?;
    let port = free_port().map_err(fatal)?;
    let (pasv_lo, pasv_hi) = free_port_range(PASV_PORTS).map_err(fatal)?;
    let password = format!("pw-{:016x}", random_u64());
    let stderr_path = dir.path().join("pyftpdlib.log");

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("ftpsync-watchdog")
        .arg("/dev/null")
        .arg(python)
        .args(["-u", "-m", "pyftpdlib", "-i", "127.0.0.1", "-w"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-d")
        .arg(&home)
        .args(["-u", "ftpsync", "-P", &password])
        .arg("-r")
        .arg(format!("{pasv_lo}-{pasv_hi}"))
        .env("TZ", "UTC")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut server = spawn_watched(cmd, &stderr_path, |child| ExternalServer {
        kind: "pyftpdlib",
        port,
        user: "ftpsync".into(),
        password,
        remote_root: "/data".into(),
        disk_root: data.clone(),
        child,
        log_path: stderr_path.clone(),
        stderr_path: stderr_path.clone(),
        oops_path: None,
        owner: None,
        _dir: dir,
    })?;
    wait_ready(&mut server)?;
    Ok(server)
}

// ------------------------------------------------------ ProFTPD, Pure-FTPd ---

/// Where [`ExternalServer::tls_ca_file`] finds a certificate made at start.
const SELF_SIGNED_CERT: &str = "server-cert.pem";
/// Where .ci/run unpacks server packages that conflict with the installed one.
const UNPACKED_SERVERS: &str = "/opt/ftpsync-servers";

/// Start a private ProFTPD on 127.0.0.1 with Debian's default settings
/// (see the module docs): user `ftpsync`, random password, `remote_root` =
/// `/data` (chrooted with `DefaultRoot ~`). [`ExternalServer::log`] is its
/// command log, one `COMMAND ARGS -> CODE TEXT` line per command (`PASS
/// (hidden)`). `None` (with a `SKIPPED:` line) when ProFTPD cannot run
/// here; panics instead when `FTPSYNC_REQUIRE_INTEROP=1`.
pub fn start_proftpd() -> Option<ExternalServer> {
    unavailable_or(try_start(|| spawn_proftpd(None)), "ProFTPD")
}

/// [`start_proftpd`] with mod_tls: `TLSRequired on` (control and data),
/// TLS 1.2 and 1.3, the default TLSOptions (so a data connection that does
/// not resume the control connection's session is refused with 425), and a
/// self-signed certificate for 127.0.0.1/localhost made at start, which
/// [`ExternalServer::tls_ca_file`] returns.
pub fn start_proftpd_tls() -> Option<ExternalServer> {
    unavailable_or(
        try_start(|| spawn_proftpd(Some(ProftpdTls::default()))),
        "ProFTPD (TLS)",
    )
}

/// [`start_proftpd_tls`] offering only `protocol` (ProFTPD's `TLSProtocol`
/// spelling: `TLSv1.2` or `TLSv1.3`). Its TLS log is
/// [`ExternalServer::tls_log`].
pub fn start_proftpd_tls_only(protocol: &'static str) -> Option<ExternalServer> {
    let tls = ProftpdTls {
        protocols: protocol,
        ..ProftpdTls::default()
    };
    unavailable_or(try_start(|| spawn_proftpd(Some(tls))), "ProFTPD (TLS)")
}

/// How [`start_proftpd_tls_with`] sets up TLS.
#[derive(Debug, Clone, Copy)]
pub struct ProftpdTls {
    /// `TLSProtocol`.
    pub protocols: &'static str,
    /// Implicit FTPS (`TLSOptions UseImplicitSSL`): TLS from the first byte.
    pub implicit: bool,
    /// A certificate made the way people usually make one
    /// (`openssl req -x509` with `CA:TRUE`) instead of a leaf certificate.
    pub ca_true: bool,
}

impl Default for ProftpdTls {
    fn default() -> Self {
        ProftpdTls {
            protocols: "TLSv1.2 TLSv1.3",
            implicit: false,
            ca_true: false,
        }
    }
}

/// [`start_proftpd_tls`] set up as `tls` says.
pub fn start_proftpd_tls_with(tls: ProftpdTls) -> Option<ExternalServer> {
    unavailable_or(try_start(|| spawn_proftpd(Some(tls))), "ProFTPD (TLS)")
}

/// Start a private Pure-FTPd on 127.0.0.1: virtual user `ftpsync` with a
/// random password (PureDB made with `pure-pw`), chrooted into its home,
/// `remote_root` = `/data`, no anonymous logins, otherwise Pure-FTPd's
/// defaults (dotfiles listed only with `LIST -a`, MLSD, MFMT). It logs to
/// syslog only, so [`ExternalServer::log`] has just its stderr. `None`
/// (with a `SKIPPED:` line) when Pure-FTPd cannot run here; panics instead
/// when `FTPSYNC_REQUIRE_INTEROP=1`.
pub fn start_pure_ftpd() -> Option<ExternalServer> {
    unavailable_or(try_start(spawn_pure_ftpd), "Pure-FTPd")
}

fn try_start(
    mut spawn: impl FnMut() -> Result<ExternalServer, StartError>,
) -> Result<ExternalServer, String> {
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        match spawn() {
            Ok(server) => return Ok(server),
            Err(StartError::PortBusy(e)) => last = e,
            Err(StartError::Fatal(e)) => return Err(e),
        }
    }
    Err(format!("ports kept being taken: {last}"))
}

/// `$VAR` if set, else the first of `/usr/sbin/NAME`, the unpacked package
/// `UNPACKED_SERVERS/PACKAGE/usr/sbin/NAME`, `NAME` on `$PATH`.
fn find_server_binary(var: &str, name: &str, package: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} is not a file", p.display()))
        };
    }
    let mut dirs: Vec<PathBuf> = vec![
        "/usr/sbin".into(),
        Path::new(UNPACKED_SERVERS).join(package).join("usr/sbin"),
        "/usr/local/sbin".into(),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no {name} binary found (apt-get install {package}, or apt-get download \
                 {package} && dpkg -x {package}_*.deb {UNPACKED_SERVERS}/{package})"
            )
        })
}

/// The user the servers' virtual user maps to, and its (uid, gid): as root
/// `nobody` (so permissions are enforced as for a real user), otherwise the
/// test process's own user.
fn virtual_user_ids() -> Result<(String, u32, u32), String> {
    if effective_uid() == 0 {
        let (uid, gid) = lookup_user("nobody").ok_or("user `nobody` does not exist")?;
        return Ok(("nobody".into(), uid, gid));
    }
    let uid = effective_uid();
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[2].parse() == Ok(uid))
                .then(|| Some((f[0].to_string(), uid, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| format!("uid {uid} is not in /etc/passwd"))
}

/// Runs `program args` with `stdin` as input; its stdout on success.
fn run_tool(program: &Path, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("writing to {}: {e}", program.display()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("{}: non-UTF-8 output", program.display()))
}

/// A self-signed end-entity certificate (not `CA:TRUE`) for 127.0.0.1 and
/// localhost, valid for two days, with its key: (cert, key) in `dir`.
fn make_self_signed_cert(dir: &Path, ca_true: bool) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join(SELF_SIGNED_CERT);
    let key = dir.join("server-key.pem");
    let conf = dir.join("openssl-req.cnf");
    write_file(
        &conf,
        if ca_true {
            // What `openssl req -x509` gives by default (and Debian's
            // proftpd-gencert): a CA certificate used as the server's own.
            &b"[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
              [dn]\nCN = localhost\n\
              [ext]\nbasicConstraints = critical, CA:TRUE\n\
              subjectKeyIdentifier = hash\n\
              subjectAltName = IP:127.0.0.1, DNS:localhost\n"[..]
        } else {
            &b"[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
              [dn]\nCN = localhost\n\
              [ext]\nbasicConstraints = critical, CA:FALSE\n\
              keyUsage = critical, digitalSignature, keyEncipherment\n\
              extendedKeyUsage = serverAuth\n\
              subjectAltName = IP:127.0.0.1, DNS:localhost\n"[..]
        },
        0o600,
    )?;
    let path = |p: &Path| p.to_str().map(str::to_string).ok_or("non-UTF-8 temp path");
    run_tool(
        Path::new("openssl"),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-config",
            &path(&conf)?,
            "-keyout",
            &path(&key)?,
            "-out",
            &path(&cert)?,
        ],
        "",
    )?;
    Ok((cert, key))
}

fn spawn_proftpd(tls_setup: Option<ProftpdTls>) -> Result<ExternalServer, StartError> {
    let tls = tls_setup.is_some();
    let fatal = StartError::Fatal;
    let bin = find_server_binary("FTPSYNC_PROFTPD", "proftpd", "proftpd-core").map_err(fatal)?;
    // Modules live beside the binary: <prefix>/usr/sbin -> <prefix>/usr/lib/proftpd.
    let modules = bin
        .parent()
        .and_then(Path::parent)
        .map(|usr| usr.join("lib/proftpd"))
        .filter(|m| m.join("mod_digest.so").is_file())
        .ok_or_else(|| fatal(format!("no mod_digest.so beside {}", bin.display())))?;
    if tls && !modules.join("mod_tls.so").is_file() {
        return Err(fatal(format!(
            "no mod_tls.so in {} (Debian package proftpd-mod-crypto)",
            modules.display()
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("ftpsync-proftpd-")
        .tempdir()
        .map_err(|e| fatal(format!("creating temp dir: {e}")))?;
    let base = dir.path().to_path_buf();
    let (sys_user, uid, gid) = virtual_user_ids().map_err(fatal)?;
    let sys_group = fs::read_to_string("/etc/group")
        .ok()
        .and_then(|g| {
            g.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("#{gid}"));
    // <base>/home is the user's chroot, <base>/home/data the remote root.
    let home = base.join("home");
    let data = home.join("data");
    fs::create_dir_all(&data).map_err(|e| fatal(format!("mkdir {}: {e}", data.display())))?;
    for d in [&home, &data] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .map_err(|e| fatal(format!("chmod {}: {e}", d.display())))?;
    }
    std::os::unix::fs::chown(&data, Some(uid), Some(gid))
        .map_err(|e| fatal(format!("chown {}: {e}", data.display())))?;

    let password = format!("pw-{:016x}", random_u64());
    let hash = run_tool(
        Path::new("openssl"),
        &["passwd", "-6", "-stdin"],
        &format!("{password}\n"),
    )
    .map_err(fatal)?;
    let passwd = base.join("passwd");
    let group = base.join("group");
    write_file(
        &passwd,
        format!(
            "ftpsync:{}:{uid}:{gid}::{}:/bin/false\n",
            hash.trim(),
            home.display()
        )
        .as_bytes(),
        0o600,
    )
    .map_err(fatal)?;
    write_file(&group, format!("ftpsync::{gid}:\n").as_bytes(), 0o600).map_err(fatal)?;

    let port = free_port().map_err(fatal)?;
    let (pasv_lo, pasv_hi) = free_port_range(PASV_PORTS).map_err(fatal)?;
    let log_path = base.join("commands.log");
    let system_log = base.join("system.log");
    let stderr_path = base.join("stderr.log");
    let b = base.display();
    let mut conf = format!(
        r#"# ftpsync test server: Debian's proftpd.conf defaults, private paths.
ServerName "ftpsync-test"
ServerType standalone
DefaultServer on
UseIPv6 off
DefaultAddress 127.0.0.1
SocketBindTight on
Port {port}
PassivePorts {pasv_lo} {pasv_hi}
User {sys_user}
Group {sys_group}
ModulePath {modules}
LoadModule mod_digest.c
<IfModule mod_ident.c>
  IdentLookups off
</IfModule>
UseReverseDNS off
<IfModule mod_delay.c>
  DelayEngine off
</IfModule>
WtmpLog off
ScoreboardFile {b}/proftpd.scoreboard
PidFile {b}/proftpd.pid
SystemLog {system_log}
TransferLog {b}/xfer.log
LogFormat commands "%r -> %s %S"
ExtendedLog {log} ALL commands
AuthOrder mod_auth_file.c
AuthUserFile {passwd}
AuthGroupFile {group}
RequireValidShell off
DefaultRoot ~
ShowSymlinks on
ListOptions "-l"
DenyFilter \*.*/
MaxInstances 30
Umask 022 022
AllowOverwrite on
TimeoutNoTransfer 600
TimeoutStalled 600
TimeoutIdle 1200
"#,
        modules = modules.display(),
        system_log = system_log.display(),
        log = log_path.display(),
        passwd = passwd.display(),
        group = group.display(),
    );
    if let Some(setup) = tls_setup {
        let protocols = setup.protocols;
        let (cert, key) = make_self_signed_cert(&base, setup.ca_true).map_err(fatal)?;
        conf.push_str(&format!(
            "LoadModule mod_tls.c\nTLSEngine on\nTLSRequired on\nTLSProtocol {protocols}\n\
             TLSRSACertificateFile {}\nTLSRSACertificateKeyFile {}\nTLSVerifyClient off\n\
             TLSLog {b}/tls.log\n",
            cert.display(),
            key.display()
        ));
        if setup.implicit {
            conf.push_str("TLSOptions UseImplicitSSL\n");
        }
    }
    write_file(&base.join("proftpd.conf"), conf.as_bytes(), 0o600).map_err(fatal)?;

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("ftpsync-watchdog")
        .arg("/dev/null")
        .arg(&bin)
        .arg("-n")
        .arg("-c")
        .arg(base.join("proftpd.conf"))
        .env("TZ", "UTC");
    let mut server = spawn_watched(cmd, &stderr_path, |child| ExternalServer {
        kind: if tls { "ProFTPD (TLS)" } else { "ProFTPD" },
        port,
        user: "ftpsync".into(),
        password,
        remote_root: "/data".into(),
        disk_root: data.clone(),
        child,
        log_path: log_path.clone(),
        stderr_path: stderr_path.clone(),
        oops_path: Some(system_log.clone()),
        owner: (effective_uid() == 0).then_some((uid, gid)),
        _dir: dir,
    })?;
    if tls_setup.is_some_and(|t| t.implicit) {
        // TLS from the first byte: wait for the port to take connections.
        wait_ready_with(&mut server, probe_listening)?;
    } else if tls {
        // The plain-text probe cannot log in (TLSRequired): wait for the banner.
        wait_banner(&mut server)?;
    } else {
        wait_ready(&mut server)?;
    }
    Ok(server)
}

fn spawn_pure_ftpd() -> Result<ExternalServer, StartError> {
    let fatal = StartError::Fatal;
    let bin = find_server_binary("FTPSYNC_PURE_FTPD", "pure-ftpd", "pure-ftpd").map_err(fatal)?;
    // pure-pw ships in the same package: <prefix>/usr/sbin -> <prefix>/usr/bin.
    let pure_pw = bin
        .parent()
        .and_then(Path::parent)
        .map(|usr| usr.join("bin/pure-pw"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("pure-pw"));
    let dir = tempfile::Builder::new()
        .prefix("ftpsync-pure-ftpd-")
        .tempdir()
        .map_err(|e| fatal(format!("creating temp dir: {e}")))?;
    let base = dir.path().to_path_buf();
    let (_, uid, gid) = virtual_user_ids().map_err(fatal)?;
    let home = base.join("home");
    let data = home.join("data");
    fs::create_dir_all(&data).map_err(|e| fatal(format!("mkdir {}: {e}", data.display())))?;
    for d in [&home, &data] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .map_err(|e| fatal(format!("chmod {}: {e}", d.display())))?;
    }
    std::os::unix::fs::chown(&data, Some(uid), Some(gid))
        .map_err(|e| fatal(format!("chown {}: {e}", data.display())))?;
    let password = format!("pw-{:016x}", random_u64());
    let pdb = base.join("pureftpd.pdb");
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| fatal(format!("non-UTF-8 temp path {}", p.display())))
    };
    run_tool(
        &pure_pw,
        &[
            "useradd",
            "ftpsync",
            "-u",
            &uid.to_string(),
            "-g",
            &gid.to_string(),
            "-d",
            &path(&home)?,
            "-f",
            &path(&base.join("pureftpd.passwd"))?,
            "-m",
            "-F",
            &path(&pdb)?,
        ],
        &format!("{password}\n{password}\n"),
    )
    .map_err(fatal)?;
    // pure-pw hashes with argon2id at a cost that takes about 3 s per login
    // on this project's machines (and over the probe's 5 s under load):
    // put a SHA-512 crypt hash in its place, which Pure-FTPd checks with
    // crypt(3), and rebuild the database.
    let passwd_file = base.join("pureftpd.passwd");
    let hash = run_tool(
        Path::new("openssl"),
        &["passwd", "-6", "-stdin"],
        &format!("{password}\n"),
    )
    .map_err(fatal)?;
    let line = fs::read_to_string(&passwd_file)
        .map_err(|e| fatal(format!("reading {}: {e}", passwd_file.display())))?;
    let mut fields: Vec<&str> = line.trim_end().split(':').collect();
    if fields.len() < 3 {
        return Err(fatal(format!("unexpected pure-pw line {line:?}")));
    }
    fields[1] = hash.trim();
    write_file(
        &passwd_file,
        format!("{}\n", fields.join(":")).as_bytes(),
        0o600,
    )
    .map_err(fatal)?;
    run_tool(
        &pure_pw,
        &["mkdb", &path(&pdb)?, "-f", &path(&passwd_file)?],
        "",
    )
    .map_err(fatal)?;

    let port = free_port().map_err(fatal)?;
    let (pasv_lo, pasv_hi) = free_port_range(PASV_PORTS).map_err(fatal)?;
    let stderr_path = base.join("pure-ftpd.log");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("ftpsync-watchdog")
        .arg("/dev/null")
        .arg(&bin)
        .arg("-S")
        .arg(format!("127.0.0.1,{port}"))
        .arg("-p")
        .arg(format!("{pasv_lo}:{pasv_hi}"))
        .arg("-l")
        .arg(format!("puredb:{}", path(&pdb)?))
        // No anonymous logins, chroot everyone, no reverse DNS, IPv4 only,
        // the minimum uid lowered for a non-root test user.
        .args(["-E", "-A", "-H", "-4", "-u", "1"])
        .arg("-g")
        .arg(base.join("pure-ftpd.pid"))
        .env("TZ", "UTC");
    let mut server = spawn_watched(cmd, &stderr_path, |child| ExternalServer {
        kind: "Pure-FTPd",
        port,
        user: "ftpsync".into(),
        password,
        remote_root: "/data".into(),
        disk_root: data.clone(),
        child,
        log_path: stderr_path.clone(),
        stderr_path: stderr_path.clone(),
        oops_path: None,
        owner: (effective_uid() == 0).then_some((uid, gid)),
        _dir: dir,
    })?;
    wait_ready(&mut server)?;
    Ok(server)
}

// ------------------------------------------------------ process handling ---

/// `sh -c WATCHDOG ftpsync-watchdog FD0_FILE PROGRAM ARGS...`: runs PROGRAM
/// with fd 0 opened read-write on FD0_FILE, exits with its status when it
/// exits, and kills it when our end of the watchdog's stdin pipe closes
/// (i.e. when the test process dies, even without running destructors).
const WATCHDOG: &str = r#"fd0="$1"; shift
exec 3<&0
"$@" 0<>"$fd0" 3<&- &
pid=$!
( while read -r _; do :; done; kill -KILL "$pid" 2>/dev/null ) <&3 3<&- >/dev/null 2>&1 &
watcher=$!
exec 3<&-
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

fn spawn_watched(
    mut cmd: Command,
    stderr_path: &Path,
    build: impl FnOnce(Child) -> ExternalServer,
) -> Result<ExternalServer, StartError> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_path)
        .map_err(|e| StartError::Fatal(format!("open {}: {e}", stderr_path.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| StartError::Fatal(format!("dup: {e}")))?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        // Own process group: a Ctrl-C in the terminal running the tests
        // reaches the test binary, whose death then stops the watchdog.
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| StartError::Fatal(format!("spawning sh: {e}")))?;
    Ok(build(child))
}

/// Wait until the server accepts a login and lists `remote_root` over a
/// passive data connection. On failure the server is dropped (killed).
fn wait_ready(server: &mut ExternalServer) -> Result<(), StartError> {
    wait_ready_with(server, probe)
}

/// Wait until a server that requires TLS answers `AUTH TLS` with 234.
fn wait_banner(server: &mut ExternalServer) -> Result<(), StartError> {
    wait_ready_with(server, probe_auth_tls)
}

fn wait_ready_with(
    server: &mut ExternalServer,
    check: fn(&ExternalServer) -> Result<(), String>,
) -> Result<(), StartError> {
    let kind = server.kind;
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = server.log();
            let msg = format!(
                "{kind} exited during startup ({status}): {}",
                tail(&log, 1500)
            );
            let busy = log.contains("could not bind")
                || log.contains("Address already in use")
                || log.contains("Errno 98");
            return Err(if busy {
                StartError::PortBusy(msg)
            } else {
                StartError::Fatal(msg)
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(StartError::Fatal(format!(
                "{kind} did not accept connections on {addr} within {STARTUP_TIMEOUT:?}: {}",
                tail(&server.log(), 1500)
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check(server).map_err(|e| {
        StartError::Fatal(format!(
            "{kind} on port {} accepts connections but a probe failed: {e}; log: {}",
            server.port,
            tail(&server.log(), 1500)
        ))
    })
}

/// USER/PASS, CWD remote_root, TYPE I, PASV + LIST, QUIT.
fn probe(server: &ExternalServer) -> Result<(), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    let timeout = Duration::from_secs(5);
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut cmd = |line: Option<String>, want: &[&str]| -> Result<String, String> {
        if let Some(line) = &line {
            writer
                .write_all(format!("{line}\r\n").as_bytes())
                .map_err(|e| format!("sending {line}: {e}"))?;
        }
        let reply = read_reply(&mut reader)?;
        if want.iter().any(|w| reply.starts_with(w)) {
            Ok(reply)
        } else {
            let what = line.unwrap_or_else(|| "banner".into());
            let what = if what.starts_with("PASS ") {
                "PASS ***".into()
            } else {
                what
            };
            Err(format!("{what} -> {}", reply.trim_end()))
        }
    };
    cmd(None, &["220"])?;
    let r = cmd(Some(format!("USER {}", server.user)), &["230", "331"])?;
    if r.starts_with("331") {
        cmd(Some(format!("PASS {}", server.password)), &["230"])?;
    }
    cmd(Some(format!("CWD {}", server.remote_root)), &["250"])?;
    cmd(Some("TYPE I".into()), &["200"])?;
    let pasv = cmd(Some("PASV".into()), &["227"])?;
    let data_addr = parse_pasv(&pasv)?;
    let mut data = TcpStream::connect_timeout(&data_addr, timeout)
        .map_err(|e| format!("data connection to {data_addr}: {e}"))?;
    data.set_read_timeout(Some(timeout)).ok();
    cmd(Some("LIST -a".into()), &["150", "125"])?;
    let mut listing = Vec::new();
    data.read_to_end(&mut listing)
        .map_err(|e| format!("reading LIST data: {e}"))?;
    drop(data);
    cmd(None, &["226", "250"])?;
    cmd(Some("QUIT".into()), &["221"])?;
    Ok(())
}

/// Banner, `AUTH TLS` -> 234 (then drops the connection before the handshake).
fn probe_listening(server: &ExternalServer) -> Result<(), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map(drop)
        .map_err(|e| format!("connect: {e}"))
}

fn probe_auth_tls(server: &ExternalServer) -> Result<(), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    let timeout = Duration::from_secs(5);
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let banner = read_reply(&mut reader)?;
    if !banner.starts_with("220") {
        return Err(format!("banner {:?}", banner.trim_end()));
    }
    writer
        .write_all(b"AUTH TLS\r\n")
        .map_err(|e| format!("sending AUTH TLS: {e}"))?;
    let reply = read_reply(&mut reader)?;
    if reply.starts_with("234") {
        Ok(())
    } else {
        Err(format!("AUTH TLS -> {}", reply.trim_end()))
    }
}

fn read_reply(reader: &mut impl BufRead) -> Result<String, String> {
    let mut all = String::new();
    let mut first_code: Option<String> = None;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("reading reply: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed (got so far: {all:?})"));
        }
        all.push_str(&line);
        let code = line.get(..3).unwrap_or("").to_string();
        let sep = line.as_bytes().get(3).copied();
        match &first_code {
            None if sep == Some(b'-') => first_code = Some(code),
            None => return Ok(all),
            Some(c) if *c == code && sep == Some(b' ') => return Ok(all),
            Some(_) => {}
        }
    }
}

fn parse_pasv(reply: &str) -> Result<SocketAddr, String> {
    let inner = reply
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside)
        .ok_or_else(|| format!("bad PASV reply {reply:?}"))?;
    let nums: Vec<u16> = inner
        .split(',')
        .map(|s| s.trim().parse::<u16>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad PASV reply {reply:?}"))?;
    if nums.len() != 6 {
        return Err(format!("bad PASV reply {reply:?}"));
    }
    let ip = [nums[0] as u8, nums[1] as u8, nums[2] as u8, nums[3] as u8];
    Ok((ip, nums[4] * 256 + nums[5]).into())
}

/// All descendants of `root` (not `root` itself), from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may contain spaces and ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if !out.contains(&c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("sh")
        .arg("-c")
        .arg(r#"kill -KILL "$@" 2>/dev/null; exit 0"#)
        .arg("sh")
        .args(pids.iter().map(|p| p.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ----------------------------------------------------------------- ports ---

/// Ports handed out by this test binary (never reused within the process).
fn taken_ports() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(|| Mutex::new(HashSet::new()))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port that 127.0.0.1:0 just gave us (and that no other server of this
/// process got).
fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("local_addr: {e}"))?
            .port();
        drop(listener);
        if taken_ports().lock().unwrap().insert(port) {
            return Ok(port);
        }
    }
    Err("could not find a free TCP port".into())
}

/// `len` consecutive free ports for passive data connections, below the
/// kernel's ephemeral range (so outgoing connections don't land in it).
fn free_port_range(len: u16) -> Result<(u16, u16), String> {
    let (eph_lo, eph_hi) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Prefer [10000, eph_lo); fall back to above the ephemeral range.
    let (lo, hi) = if eph_lo >= 10000 + 4 * len {
        (10000, eph_lo - len)
    } else {
        (eph_hi.saturating_add(1).max(1024), u16::MAX - len)
    };
    if hi <= lo {
        return Err("no room for a passive port range".into());
    }
    let mut taken = taken_ports().lock().unwrap();
    for _ in 0..200 {
        let start = lo + (random_u64() % u64::from(hi - lo)) as u16;
        let range = start..start + len;
        if range
            .clone()
            .all(|p| !taken.contains(&p) && port_is_free(p))
        {
            taken.extend(range);
            return Ok((start, start + len - 1));
        }
    }
    Err("could not find a free passive port range".into())
}

// ----------------------------------------------------------------- misc ---

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn effective_uid() -> u32 {
    // /proc/self belongs to the process's effective uid.
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid();
    }
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// (uid, gid) of a user from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}
