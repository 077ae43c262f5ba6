//! Test harness: a sync environment (a local tree, a server and a job file)
//! and a runner for the real `ftpsync` binary.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ftpsync::serve::{ServeConfig, ServerHandle, spawn_loopback};

use super::servers::ExternalServer;

/// The password of every test server; tests assert that it never leaks.
pub const PASSWORD: &str = "s3cret-Pa55word!";

enum Server {
    Builtin {
        _rt: tokio::runtime::Runtime,
        handle: Option<ServerHandle>,
    },
    External(ExternalServer),
    /// Some other address (e.g. a fault proxy in front of a server).
    None,
}

/// A local tree, a server whose directory is the job's remote root, and a
/// scratch directory for job files and the state database.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The job's local path.
    pub local: PathBuf,
    /// The remote root as a directory on this machine's disk.
    pub remote_disk: PathBuf,
    /// The remote root as the FTP client names it.
    pub remote_root: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Extra YAML lines inside the job's `remote:` mapping (indented by two spaces).
    pub remote_extra: String,
    server: Server,
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Output {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The summary's `FAILED …` lines.
    pub fn failed(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("FAILED"))
            .collect()
    }
}

impl Env {
    /// An environment with the built-in (libunftp) server.
    pub fn builtin() -> Env {
        Self::builtin_with_tls(false)
    }

    /// The built-in server offering explicit FTPS with the test certificate
    /// (tests/data/localhost-*.pem, for 127.0.0.1 and localhost).
    pub fn builtin_with_tls(tls: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server_root = dir.path().join("server");
        fs::create_dir_all(server_root.join("www")).unwrap();
        let local = dir.path().join("local");
        fs::create_dir_all(&local).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt
            .block_on(spawn_loopback(ServeConfig {
                root: server_root.clone(),
                user: "tester".into(),
                password: PASSWORD.into(),
                passive_ports: None,
                tls: tls.then(|| {
                    (
                        test_data("localhost-cert.pem"),
                        test_data("localhost-key.pem"),
                    )
                }),
            }))
            .unwrap();
        let port = handle.addr.port();
        Env {
            local,
            remote_disk: server_root.join("www"),
            remote_root: "/www".into(),
            host: "127.0.0.1".into(),
            port,
            user: "tester".into(),
            remote_extra: String::new(),
            server: Server::Builtin {
                _rt: rt,
                handle: Some(handle),
            },
            dir,
        }
    }

    /// An environment in front of a third-party server.
    pub fn external(server: ExternalServer) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local");
        fs::create_dir_all(&local).unwrap();
        Env {
            local,
            remote_disk: server.disk_root.clone(),
            remote_root: server.remote_root.clone(),
            host: "127.0.0.1".into(),
            port: server.port,
            user: server.user.clone(),
            remote_extra: String::new(),
            server: Server::External(server),
            dir,
        }
    }

    /// Points the jobs at another address (a proxy in front of this env's server).
    pub fn via(&mut self, port: u16) {
        self.port = port;
    }

    /// The third-party server's log (empty for the built-in one).
    pub fn server_log(&self) -> String {
        match &self.server {
            Server::External(s) => s.log(),
            _ => String::new(),
        }
    }

    /// The external server's TLS log ([`ExternalServer::tls_log`]).
    pub fn tls_log(&self) -> String {
        match &self.server {
            Server::External(s) => s.tls_log(),
            _ => String::new(),
        }
    }

    /// The real server's port (not the proxy's).
    pub fn server_port(&self) -> u16 {
        match &self.server {
            Server::Builtin { handle, .. } => handle.as_ref().map(|h| h.addr.port()).unwrap_or(0),
            Server::External(s) => s.port,
            Server::None => self.port,
        }
    }

    pub fn password(&self) -> String {
        match &self.server {
            Server::External(s) => s.password.clone(),
            _ => PASSWORD.into(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Writes a job file; `extra` is appended as top-level YAML and replaces
    /// the defaults of the top-level keys it sets.
    pub fn job(&self, direction: &str, delete: bool, extra: &str) -> PathBuf {
        let path = self.dir.path().join("job.yaml");
        let mut text = format!(
            "name: test\ndirection: {direction}\ndelete: {delete}\nlocal:\n  path: {}\nremote:\n  host: {}\n  port: {}\n  user: {}\n  password_env: FTPSYNC_TEST_PASSWORD\n  root: {}\n",
            self.local.display(),
            self.host,
            self.port,
            self.user,
            self.remote_root,
        );
        text.push_str(&self.remote_extra);
        let sets = |key: &str| extra.lines().any(|l| l.starts_with(&format!("{key}:")));
        let state = format!("state: {}\n", self.state_path().display());
        let defaults = [
            ("concurrency", "concurrency: 4\n"),
            (
                "retry",
                "retry:\n  max_attempts: 3\n  initial_backoff: 50ms\n  max_backoff: 200ms\n",
            ),
            ("timeout", "timeout: 10s\n"),
            ("state", state.as_str()),
        ];
        for (key, yaml) in defaults {
            if !sets(key) {
                text.push_str(yaml);
            }
        }
        text.push_str(extra);
        fs::write(&path, text).unwrap();
        path
    }

    /// Plain-FTP connection options for this server, for tests that drive
    /// the connection pool directly.
    pub fn connect_options(&self) -> ftpsync::ftp::conn::ConnectOptions {
        ftpsync::ftp::conn::ConnectOptions {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: ftpsync::job::Secret::new(self.password()),
            tls: ftpsync::job::TlsMode::None,
            trust: Default::default(),
            loaded_trust: Default::default(),
            passive: true,
            timeout: std::time::Duration::from_secs(10),
            pipelining: Default::default(),
            stat_listing: Default::default(),
            chmod: Default::default(),
            tls_versions: Default::default(),
            list_modes: false,
            rate: Default::default(),
        }
    }

    /// Runs `ftpsync ARGS` with the server password in the environment.
    /// `FTPSYNC_TEST_LOG`, if set, is passed on as `FTPSYNC_LOG` (e.g.
    /// `FTPSYNC_TEST_LOG=ftpsync=debug`, to see a failing test's run).
    pub fn ftpsync(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsync"));
        cmd.args(args)
            .env("FTPSYNC_TEST_PASSWORD", self.password())
            .env("HOME", self.dir.path())
            .env_remove("FTPSYNC_LOG");
        if let Ok(filter) = std::env::var("FTPSYNC_TEST_LOG") {
            cmd.env("FTPSYNC_LOG", filter);
        }
        let out = cmd.output().unwrap();
        let o = Output::from(out);
        assert!(
            !o.all().contains(PASSWORD) && !o.all().contains(&self.password()),
            "password leaked in output:\n{}",
            o.all()
        );
        o
    }

    /// `ftpsync run JOB`, asserting the exit code.
    pub fn run(&self, job: &Path, code: i32) -> Output {
        let o = self.ftpsync(&["run", job.to_str().unwrap()]);
        assert_eq!(o.code, code, "ftpsync run exited {}:\n{}", o.code, o.all());
        o
    }

    /// `ftpsync plan --json JOB` parsed, asserting success.
    pub fn plan_json(&self, job: &Path) -> serde_json::Value {
        let o = self.ftpsync(&["plan", "--json", job.to_str().unwrap()]);
        assert_eq!(o.code, 0, "plan failed:\n{}", o.all());
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", o.stdout))
    }

    /// The plan's items as (op, path) pairs, state-record refreshes left out.
    pub fn plan_ops(&self, job: &Path) -> Vec<(String, String)> {
        let v = self.plan_json(job);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["reason"] != "record_refresh")
            .map(|i| {
                (
                    i["op"].as_str().unwrap().to_owned(),
                    i["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Stops the built-in server (to test connection failures).
    pub fn stop_server(&mut self) {
        if let Server::Builtin { handle, _rt } = &mut self.server
            && let Some(h) = handle.take()
        {
            _rt.block_on(h.stop());
        }
    }
}

/// A file under tests/data.
pub fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Writes a file, creating parent directories.
pub fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// Every entry under `root`: relative path → `Some(content)` for files, `None` for directories.
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    walk(root, false)
}

/// Like [`snapshot`], for a tree a server may still be changing (its client
/// just killed): an entry that vanishes while it is read, a temporary file
/// renamed meanwhile, is left out.
pub fn snapshot_live(root: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    walk(root, true)
}

fn walk(root: &Path, live: bool) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let gone = |e: &std::io::Error| live && e.kind() == std::io::ErrorKind::NotFound;
    let mut out = std::collections::BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = match e {
            Ok(e) => e,
            Err(e) if e.io_error().is_some_and(gone) => continue,
            Err(e) => panic!("{e}"),
        };
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let v = if e.file_type().is_file() {
            match fs::read(e.path()) {
                Ok(v) => Some(v),
                Err(e) if gone(&e) => continue,
                Err(e) => panic!("{rel}: {e}"),
            }
        } else {
            None
        };
        out.insert(rel, v);
    }
    out
}

/// Asserts two trees are byte-identical (same paths, same contents, same dirs).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let ka: Vec<_> = sa.keys().collect();
    let kb: Vec<_> = sb.keys().collect();
    assert_eq!(
        ka,
        kb,
        "trees have different paths: {} vs {}",
        a.display(),
        b.display()
    );
    for (k, v) in &sa {
        assert!(sb[k] == *v, "content of {k} differs");
    }
}

/// A small site with the awkward names the brief asks for.
pub fn sample_tree(root: &Path) {
    write(root, "index.html", "<h1>hi</h1>\n");
    write(root, "css/site.css", "body{}\n");
    write(root, "with space/file name.txt", "spaces\n");
    write(root, "ünïcödé/日本語.txt", "unicode\n");
    write(root, "hash#dir/a#b.txt", "hash\n");
    write(root, "empty.txt", "");
    write(root, ".htaccess", "Deny from none\n");
    fs::create_dir_all(root.join("empty-dir/nested-empty")).unwrap();
    let big: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(root, "data/blob.bin", big);
}
