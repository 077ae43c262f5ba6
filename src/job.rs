//! The job file: its YAML schema (version 1), defaults, validation, `${VAR}`
//! expansion and secrets.
//!
//! [`schema`] is the same schema as JSON Schema, derived from the types the
//! loader reads, for editors.
//!
//! A job is loaded once per run. Every error names the file, and where the
//! YAML parser knows it the line, column and key, so a bad job file never
//! gets as far as touching a server or the disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::daemon::schedule::{Schedule, ScheduleError, Zone};

/// A job file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parsed but is not allowed; `at` is the (line, column) of
    /// the key's value where the text shows it.
    #[error("{}: {key}: {message}", place(.file, *.at))]
    Invalid {
        file: PathBuf,
        at: Option<(usize, usize)>,
        key: String,
        message: String,
    },
}

/// `file:line:column`, or `file` alone when the position is unknown.
fn place(file: &Path, at: Option<(usize, usize)>) -> String {
    match at {
        Some((line, column)) => format!("{}:{line}:{column}", file.display()),
        None => file.display().to_string(),
    }
}

/// Which way a job copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local → remote.
    Push,
    /// Remote → local.
    Pull,
}

/// How changes to a file are detected (see the README's "compare" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompareMode {
    /// Size and modification time (the default).
    #[default]
    Auto,
    /// Size only.
    Size,
    /// Size and modification time.
    Mtime,
    /// Size, and SHA-256 of the local file when its time changed.
    Hash,
}

/// How a transfer is checked before it takes the file's name (see the
/// README's "Verification" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// The size always; uploads also by the server's hash command where it
    /// offers one (it rides in the same round trip as SIZE).
    #[default]
    Auto,
    /// The size only.
    Size,
    /// The size, and every upload and download by the server's hash
    /// command; a server without one is an error.
    Hash,
}

/// Where the state of a job is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateLocation {
    /// A database on this machine ([`Job::state_path`]).
    #[default]
    Local,
    /// On the server, under `<remote.root>/.ftpsync/` (see
    /// [`crate::state::remote`]); [`Job::state_path`] is the working copy.
    Remote,
}

/// The directory under both roots that belongs to ftpsync (the state kept on
/// the server): never scanned, transferred or deleted, whatever the filters say.
pub const RESERVED_DIR: &str = ".ftpsync";

/// FTPS mode of the control and data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain FTP.
    #[default]
    None,
    /// Explicit FTPS (AUTH TLS, then PBSZ 0 / PROT P); fails closed if refused.
    Explicit,
    /// Implicit FTPS: TLS from the first byte (port 990 unless given), then
    /// PBSZ 0 / PROT P; fails closed if the data channel cannot be protected.
    Implicit,
}

/// Whether file and directory modes are carried over (see [`ModePolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permissions {
    /// The source's permission bits go to the target (the default).
    #[default]
    Preserve,
    /// Modes are left as the target makes them.
    None,
}

/// The modes a transfer or a mkdir gives the target: `permissions`,
/// `file_mode` and `dir_mode`. Only the permission bits (0o777) are ever
/// carried: setuid, setgid and sticky bits never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModePolicy {
    pub permissions: Permissions,
    /// Every file gets this mode, whatever the source's.
    pub file: Option<u32>,
    /// Every directory gets this mode, whatever the source's.
    pub dir: Option<u32>,
}

impl ModePolicy {
    /// The mode to give a target file whose source has `source` (if known),
    /// or `None` to leave it as the target makes it. A source's mode is
    /// masked by `umask` (a pull masks the server's modes with the local
    /// umask); an explicit `file_mode` is given as it is.
    pub fn file_mode(&self, source: Option<u32>, umask: u32) -> Option<u32> {
        self.pick(self.file, source, umask)
    }

    /// The same for a directory (`dir_mode`). The owner always keeps
    /// read, write and search permission: ftpsync must be able to go on
    /// syncing into it.
    pub fn dir_mode(&self, source: Option<u32>, umask: u32) -> Option<u32> {
        self.pick(self.dir, source, umask).map(|m| m | 0o700)
    }

    fn pick(&self, explicit: Option<u32>, source: Option<u32>, umask: u32) -> Option<u32> {
        match (explicit, self.permissions) {
            (Some(m), _) => Some(m),
            (None, Permissions::Preserve) => source.map(|m| m & 0o777 & !umask),
            (None, Permissions::None) => None,
        }
    }
}

/// What the daemon does when a job's next run is due while it is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip that run (the default), like systemd timers and Kubernetes' `Forbid`.
    #[default]
    Skip,
    /// Run it as soon as the current run ends.
    Queue,
}

/// What the daemon does about runs missed while it was down, the machine
/// slept or the clock jumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, JsonSchema)]
pub enum CatchUp {
    /// One run at once if any were missed, never a burst (systemd's
    /// `Persistent=true`); the default.
    #[default]
    #[serde(rename = "one")]
    One,
    /// Wait for the next fire time.
    #[serde(rename = "none")]
    Never,
}

/// A password, kept out of `Debug` and `Display` so it cannot leak into logs
/// or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: call only where it is sent to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

// ---- raw YAML schema -------------------------------------------------------

/// An ftpsync job file (version 1).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ftpsync job")]
struct RawJob {
    name: Option<String>,
    direction: Direction,
    #[serde(default)]
    delete: bool,
    local: RawLocal,
    remote: RawRemote,
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    concurrency: usize,
    #[serde(default)]
    filters: RawFilters,
    #[serde(default)]
    compare: CompareMode,
    #[serde(default)]
    verify: VerifyMode,
    #[serde(default)]
    retry: RawRetry,
    #[schemars(with = "Option<DurationText>")]
    timeout: Option<String>,
    #[schemars(with = "Option<DurationText>")]
    deadline: Option<String>,
    state: Option<String>,
    state_save_interval: Option<String>,
    #[serde(default = "default_true")]
    atomic: bool,
    #[serde(default = "default_true")]
    stage_new_dirs: bool,
    #[serde(default)]
    safety: RawSafety,
    schedule: Option<String>,
    timezone: Option<String>,
    overlap: Option<Overlap>,
    catch_up: Option<CatchUp>,
    #[schemars(with = "Option<DurationText>")]
    jitter: Option<String>,
    on_success: Option<Vec<String>>,
    on_failure: Option<Vec<String>>,
    #[schemars(with = "Option<DurationText>")]
    hook_timeout: Option<String>,
    permissions: Option<Permissions>,
    #[schemars(with = "Option<ModeText>")]
    file_mode: Option<serde_yaml::Value>,
    #[schemars(with = "Option<ModeText>")]
    dir_mode: Option<serde_yaml::Value>,
    #[schemars(with = "Option<RateText>")]
    bwlimit: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    host: String,
    /// Default 21, or 990 with `tls: implicit`.
    #[schemars(range(min = 1))]
    port: Option<u16>,
    #[serde(default = "default_user")]
    user: String,
    password_env: Option<String>,
    password_file: Option<String>,
    password: Option<String>,
    #[serde(default = "default_root")]
    root: String,
    #[serde(default = "default_true")]
    passive: bool,
    #[serde(default)]
    tls: TlsMode,
    tls_ca_file: Option<String>,
    /// The server certificate's SHA-256 fingerprint (`sha256:AB:CD:…`):
    /// trusted whatever its chain, names and dates.
    tls_fingerprint: Option<String>,
    /// Accept any server certificate (warned about on every run).
    #[serde(default)]
    tls_insecure_skip_verify: bool,
    #[schemars(range(min = 1))]
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawFilters {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[schemars(range(min = 1))]
    max_attempts: Option<u32>,
    #[schemars(with = "Option<DurationText>")]
    initial_backoff: Option<String>,
    #[schemars(with = "Option<DurationText>")]
    max_backoff: Option<String>,
    #[schemars(with = "Option<DurationText>")]
    give_up_after: Option<String>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    #[schemars(with = "Option<MaxDeleteText>")]
    max_delete: Option<serde_yaml::Value>,
    #[serde(default)]
    delete_after_errors: bool,
}

fn default_concurrency() -> usize {
    4
}
fn default_user() -> String {
    "anonymous".into()
}
fn default_root() -> String {
    "/".into()
}
fn default_true() -> bool {
    true
}

/// How a duration is written (see [`parse_duration`]); only describes the schema.
enum DurationText {}

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: 500ms, 30s, 5m or 1h (a bare number is seconds).",
            "anyOf": [
                {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*$"},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}

/// How `file_mode`/`dir_mode` are written (see [`parse_mode`]); only describes the schema.
enum ModeText {}

impl JsonSchema for ModeText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Mode".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Octal permission bits, 0000 to 0777: 0644 or \"0o644\".",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 777},
                {"type": "string", "pattern": r"^\s*(0o)?[0-7]{1,4}\s*$"}
            ]
        })
    }
}

/// How `bwlimit` is written (see [`parse_rate`]); only describes the schema.
enum RateText {}

impl JsonSchema for RateText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Bytes per second over all connections: 500KiB/s, 2MiB/s, 10MB/s (a bare number is bytes per second).",
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(B|k|K|KiB|KB|kB|m|M|MiB|MB|g|G|GiB|GB)?\s*(/s)?\s*$"}
            ]
        })
    }
}

/// How `safety.max_delete` is written (see [`parse_delete_limit`]); only describes the schema.
enum MaxDeleteText {}

impl JsonSchema for MaxDeleteText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MaxDelete".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The most deletes one run may make: a count (100) or a percentage of the tracked files (10%).",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*([0-9]+|(100(\.0*)?|[0-9]{1,2}(\.[0-9]*)?|\.[0-9]+)\s*%)\s*$"}
            ]
        })
    }
}

/// The job file's JSON Schema, derived from the types the loader reads (so
/// unknown keys, types, enums and ranges are refused as the loader refuses
/// them). Draft 7, which editors' YAML plugins understand.
pub fn schema() -> serde_json::Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawJob>()
        .to_value()
}

// ---- validated job ---------------------------------------------------------

/// Where the password comes from; resolved only when connecting.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// No password configured (anonymous login sends a placeholder).
    None,
    Env(String),
    File(PathBuf),
    /// Inline in the job file (discouraged: a warning is printed).
    Inline(Secret),
}

/// Connection settings of the remote side.
#[derive(Debug, Clone)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: PasswordSource,
    /// Directory on the server that mirrors the local path.
    pub root: String,
    pub passive: bool,
    pub tls: TlsMode,
    /// Extra CA certificates (PEM) to trust, for servers with their own CA,
    /// or the server's own (self-signed) certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// The pinned fingerprint of the server's certificate.
    pub tls_fingerprint: Option<crate::ftp::tls::Fingerprint>,
    /// Any server certificate is accepted.
    pub tls_insecure_skip_verify: bool,
    /// The most connections the daemon opens to this host and port, counted
    /// over all its jobs (`None`: no limit beyond each job's `concurrency`).
    pub max_connections: Option<usize>,
}

impl Remote {
    /// Reads the password from its source.
    pub fn password(&self) -> Result<Secret, String> {
        match &self.password {
            PasswordSource::None => Ok(Secret::new(if self.user == "anonymous" {
                "ftpsync@"
            } else {
                ""
            })),
            PasswordSource::Env(var) => std::env::var(var)
                .map(Secret::new)
                .map_err(|_| format!("remote.password_env: environment variable {var} is not set")),
            PasswordSource::File(path) => std::fs::read_to_string(path)
                .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
                .map_err(|e| format!("remote.password_file: cannot read {}: {e}", path.display())),
            PasswordSource::Inline(s) => Ok(s.clone()),
        }
    }
}

/// Retry policy for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// When every connection attempt to the server has failed for this long,
    /// the run stops (exit code 3) instead of retrying on.
    pub give_up_after: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (1-based; attempt 1 has no wait).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(2).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff)
    }
}

/// The deletion limit of `safety.max_delete`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeleteLimit {
    Count(u64),
    Percent(f64),
}

/// Include and exclude globs, matched against paths relative to the roots.
#[derive(Debug, Clone)]
pub struct Filters {
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// The patterns as written, for `ftpsync validate`.
    include_patterns: Vec<String>,
    exclude_patterns: Vec<String>,
}

impl Filters {
    /// No filtering.
    pub fn none() -> Self {
        Filters {
            include: None,
            exclude: GlobSet::empty(),
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
        }
    }

    /// Whether `rel` is ftpsync's own directory at the root
    /// ([`RESERVED_DIR`]) or inside it.
    fn reserved(rel: &str) -> bool {
        rel.split('/').next() == Some(RESERVED_DIR)
    }

    /// Builds the filter; `Err((index, message))` names a bad pattern.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, (String, String)> {
        let build = |key: &str, pats: &[String]| -> Result<GlobSet, (String, String)> {
            let mut b = GlobSetBuilder::new();
            for (i, p) in pats.iter().enumerate() {
                if p.is_empty() {
                    return Err((format!("filters.{key}[{i}]"), "empty pattern".into()));
                }
                let g = Glob::new(p).map_err(|e| (format!("filters.{key}[{i}]"), e.to_string()))?;
                b.add(g);
            }
            b.build()
                .map_err(|e| (format!("filters.{key}"), e.to_string()))
        };
        Ok(Filters {
            include: if include.is_empty() {
                None
            } else {
                Some(build("include", include)?)
            },
            exclude: build("exclude", exclude)?,
            include_patterns: include.to_vec(),
            exclude_patterns: exclude.to_vec(),
        })
    }

    /// The include and exclude patterns, as given.
    pub fn patterns(&self) -> (&[String], &[String]) {
        (&self.include_patterns, &self.exclude_patterns)
    }

    /// Whether a directory is excluded (and so not descended into).
    pub fn excludes_dir(&self, rel: &str) -> bool {
        Self::reserved(rel)
            || self.exclude.is_match(rel)
            || self.exclude.is_match(format!("{rel}/"))
    }

    /// Whether a file takes part in the sync.
    pub fn accepts_file(&self, rel: &str) -> bool {
        if Self::reserved(rel) || self.exclude.is_match(rel) {
            return false;
        }
        match &self.include {
            Some(inc) => inc.is_match(rel),
            None => true,
        }
    }
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// The job file it came from.
    pub file: PathBuf,
    pub direction: Direction,
    pub delete: bool,
    pub local_root: PathBuf,
    pub remote: Remote,
    pub concurrency: usize,
    pub filters: Filters,
    pub compare: CompareMode,
    pub verify: VerifyMode,
    pub retry: RetryPolicy,
    /// Time limit of each FTP operation (and of data inactivity).
    pub timeout: Duration,
    /// Time limit of a whole run, if any.
    pub deadline: Option<Duration>,
    /// The state database; with [`StateLocation::Remote`], the local working
    /// copy of the one on the server.
    pub state_path: PathBuf,
    pub state_location: StateLocation,
    /// How often a run writes the state back to the server (`state: remote`).
    pub state_save_interval: Duration,
    pub atomic: bool,
    /// With `atomic`: a new remote directory is built under a temporary
    /// name and renamed into place whole ([`crate::stage`]).
    pub stage_new_dirs: bool,
    pub max_delete: DeleteLimit,
    pub delete_after_errors: bool,
    /// When the daemon runs the job (`None`: only by hand), in its zone.
    pub schedule: Option<Schedule>,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    /// Upper bound of the job's fixed delay after each fire time
    /// (see [`crate::daemon::schedule::jitter_offset`]).
    pub jitter: Duration,
    /// Commands (argv, no shell) run after a run that succeeded or failed.
    pub on_success: Option<Vec<String>>,
    pub on_failure: Option<Vec<String>>,
    /// Limit for each hook command.
    pub hook_timeout: Duration,
    /// Modes given to transferred files and created directories.
    pub modes: ModePolicy,
    /// The most bytes per second a run transfers, over all its connections.
    pub bwlimit: Option<u64>,
    /// Non-fatal remarks about the job file (e.g. an inline password).
    pub warnings: Vec<String>,
}

/// A job given on the command line instead of in a job file
/// (`ftpsync run --push LOCAL ftp://user@host/path`).
#[derive(Debug, Clone)]
pub struct OneOff {
    pub direction: Direction,
    /// The local root; a relative path is taken from the current directory.
    pub local: PathBuf,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: PasswordSource,
    pub root: String,
    pub tls: TlsMode,
}

impl OneOff {
    /// The server side as a URL (no password), naming the job in messages.
    pub fn url(&self) -> String {
        let scheme = match self.tls {
            TlsMode::None => "ftp",
            // One-off URLs have no scheme for implicit FTPS (a job file's
            // `tls: implicit`); ftps:// is explicit, as it always was here.
            TlsMode::Explicit | TlsMode::Implicit => "ftps",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{}@{host}:{}{}", self.user, self.port, self.root)
    }
}

impl Job {
    /// The job of a one-off run: the job file's defaults for everything the
    /// command line does not give, and a state database derived from what
    /// it syncs (direction, local root, server and root), so the same
    /// command line finds its state again.
    pub fn one_off(o: OneOff) -> Result<Job, JobError> {
        // The label names the job in messages: never with a line break in it.
        let label = PathBuf::from(o.url().replace(['\r', '\n', '\0'], "?"));
        let invalid = |key: &str, message: String| JobError::Invalid {
            file: label.clone(),
            at: None,
            key: key.to_owned(),
            message,
        };
        if o.host.is_empty() {
            return Err(invalid("remote.host", "must not be empty".into()));
        }
        for (key, v) in [
            ("remote.host", &o.host),
            ("remote.user", &o.user),
            ("remote.root", &o.root),
        ] {
            if v.contains(['\r', '\n', '\0']) {
                return Err(invalid(key, "must not contain CR, LF or NUL".into()));
            }
        }
        if o.port == 0 {
            return Err(invalid("remote.port", "must be 1..65535".into()));
        }
        let local =
            std::path::absolute(&o.local).map_err(|e| invalid("local.path", e.to_string()))?;
        // Every other key at its default, exactly as in a minimal job file.
        let mut job = Job::from_str(
            "direction: push\nlocal:\n  path: .\nremote:\n  host: localhost\n",
            &label,
        )?;
        let identity = format!(
            "one-off {} {} {}",
            if o.direction == Direction::Push {
                "push"
            } else {
                "pull"
            },
            local.display(),
            o.url()
        );
        job.name = o.host.clone();
        job.state_path = state_path_for(&job.name, &identity);
        job.file = label;
        job.direction = o.direction;
        job.local_root = local;
        job.remote.host = o.host;
        job.remote.port = o.port;
        job.remote.user = o.user;
        job.remote.password = o.password;
        job.remote.root = o.root;
        job.remote.tls = o.tls;
        Ok(job)
    }

    /// Loads and validates a job file.
    pub fn load(file: &Path) -> Result<Job, JobError> {
        let text = std::fs::read_to_string(file).map_err(|source| JobError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::from_str(&text, file)
    }

    /// Parses job text; `file` is used for relative paths and messages.
    pub fn from_str(text: &str, file: &Path) -> Result<Job, JobError> {
        let raw: RawJob = serde_yaml::from_str(text).map_err(|e| syntax_error(file, text, &e))?;
        let cx = Source { file, text };
        let invalid = |key: &str, message: String| cx.invalid(key, message);
        let expand = |key: &str, v: &str| cx.expand(key, v);
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());

        let name = match &raw.name {
            Some(n) => expand("name", n)?,
            None => file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "job".into()),
        };
        if name.is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        let local_path = expand("local.path", &raw.local.path)?;
        if local_path.is_empty() {
            return Err(invalid("local.path", "must not be empty".into()));
        }
        let local_root = base.join(local_path);

        let r = &raw.remote;
        let host = expand("remote.host", &r.host)?;
        if host.is_empty() {
            return Err(invalid("remote.host", "must not be empty".into()));
        }
        let user = expand("remote.user", &r.user)?;
        let root = expand("remote.root", &r.root)?;
        for (key, v) in [
            ("remote.host", &host),
            ("remote.user", &user),
            ("remote.root", &root),
        ] {
            if v.contains(['\r', '\n', '\0']) {
                return Err(invalid(key, "must not contain CR, LF or NUL".into()));
            }
        }
        let mut warnings = Vec::new();
        let given: Vec<&str> = [
            ("remote.password_env", r.password_env.is_some()),
            ("remote.password_file", r.password_file.is_some()),
            ("remote.password", r.password.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();
        if given.len() > 1 {
            // Point at the later one in the file: the first was fine alone.
            let later = given
                .iter()
                .max_by_key(|key| key_location(text, key))
                .map_or("remote.password", |key| *key);
            return Err(invalid(
                later,
                "give only one of password_env, password_file and password".into(),
            ));
        }
        let password = if let Some(v) = &r.password_env {
            PasswordSource::Env(v.clone())
        } else if let Some(p) = &r.password_file {
            PasswordSource::File(base.join(expand("remote.password_file", p)?))
        } else if let Some(p) = &r.password {
            warnings.push(format!(
                "{}: remote.password: the password is written in the job file; prefer password_env or password_file",
                cx.place("remote.password")
            ));
            PasswordSource::Inline(Secret::new(expand("remote.password", p)?))
        } else {
            PasswordSource::None
        };
        let port = r.port.unwrap_or(match r.tls {
            TlsMode::Implicit => 990,
            TlsMode::None | TlsMode::Explicit => 21,
        });
        if port == 0 {
            return Err(invalid("remote.port", "must be 1..65535".into()));
        }
        let tls_fingerprint = match &r.tls_fingerprint {
            Some(f) => Some(
                f.parse::<crate::ftp::tls::Fingerprint>()
                    .map_err(|m| invalid("remote.tls_fingerprint", m))?,
            ),
            None => None,
        };
        if r.tls == TlsMode::None {
            for (key, given) in [
                ("remote.tls_fingerprint", r.tls_fingerprint.is_some()),
                (
                    "remote.tls_insecure_skip_verify",
                    r.tls_insecure_skip_verify,
                ),
            ] {
                if given {
                    return Err(invalid(
                        key,
                        "has no effect without TLS: set `remote.tls: explicit` (or implicit)"
                            .into(),
                    ));
                }
            }
        }
        let trust_keys: Vec<&str> = [
            ("remote.tls_ca_file", r.tls_ca_file.is_some()),
            ("remote.tls_fingerprint", r.tls_fingerprint.is_some()),
            (
                "remote.tls_insecure_skip_verify",
                r.tls_insecure_skip_verify,
            ),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();
        if trust_keys.len() > 1 {
            let later = trust_keys
                .iter()
                .max_by_key(|key| key_location(text, key))
                .map_or("remote.tls_fingerprint", |key| *key);
            return Err(invalid(
                later,
                "give only one of tls_ca_file, tls_fingerprint and tls_insecure_skip_verify \
                 (a pin or the opt-out decides alone, so the others would be ignored)"
                    .into(),
            ));
        }
        if r.max_connections == Some(0) {
            return Err(invalid(
                "remote.max_connections",
                "must be at least 1".into(),
            ));
        }

        if !(1..=64).contains(&raw.concurrency) {
            return Err(invalid("concurrency", "must be between 1 and 64".into()));
        }
        let exp_list = |key: &str, v: &[String]| -> Result<Vec<String>, JobError> {
            v.iter()
                .enumerate()
                .map(|(i, s)| expand(&format!("{key}[{i}]"), s))
                .collect()
        };
        let include = exp_list("filters.include", &raw.filters.include)?;
        let exclude = exp_list("filters.exclude", &raw.filters.exclude)?;
        let filters = Filters::new(&include, &exclude).map_err(|(k, m)| invalid(&k, m))?;

        let dur =
            |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, JobError> {
                match v {
                    None => Ok(default),
                    Some(s) => parse_duration(s).map_err(|m| invalid(key, m)),
                }
            };
        let retry = RetryPolicy {
            max_attempts: raw.retry.max_attempts.unwrap_or(5),
            initial_backoff: dur(
                "retry.initial_backoff",
                &raw.retry.initial_backoff,
                Duration::from_secs(1),
            )?,
            max_backoff: dur(
                "retry.max_backoff",
                &raw.retry.max_backoff,
                Duration::from_secs(60),
            )?,
            give_up_after: dur(
                "retry.give_up_after",
                &raw.retry.give_up_after,
                Duration::from_secs(60),
            )?,
        };
        if retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1".into()));
        }
        if retry.give_up_after.is_zero() {
            return Err(invalid("retry.give_up_after", "must be more than 0".into()));
        }
        let timeout = dur("timeout", &raw.timeout, Duration::from_secs(60))?;
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be more than 0".into()));
        }

        let deadline = match &raw.deadline {
            None => None,
            Some(s) => Some(parse_duration(s).map_err(|m| invalid("deadline", m))?),
        };
        if deadline.is_some_and(|d| d.is_zero()) {
            return Err(invalid("deadline", "must be more than 0".into()));
        }
        let state = raw
            .state
            .as_deref()
            .map(|s| expand("state", s))
            .transpose()?;
        let (state_path, state_location) = match state.as_deref() {
            // `./remote` names a local file called remote.
            Some("remote") => (
                default_state_path(&format!("{name}.remote"), file),
                StateLocation::Remote,
            ),
            Some(s) => (base.join(s), StateLocation::Local),
            None => (default_state_path(&name, file), StateLocation::Local),
        };
        let state_save_interval = dur(
            "state_save_interval",
            &raw.state_save_interval,
            Duration::from_secs(30),
        )?;
        if state_save_interval.is_zero() {
            return Err(invalid("state_save_interval", "must be more than 0".into()));
        }
        if raw.state_save_interval.is_some() && state_location == StateLocation::Local {
            warnings.push(format!(
                "{}: state_save_interval: has no effect without state: remote",
                cx.place("state_save_interval")
            ));
        }
        let max_delete = match &raw.safety.max_delete {
            None => DeleteLimit::Percent(50.0),
            Some(v) => parse_delete_limit(v).map_err(|m| invalid("safety.max_delete", m))?,
        };
        let schedule = cx.schedule(&raw, &mut warnings)?;
        let jitter = dur("jitter", &raw.jitter, Duration::ZERO)?;
        let on_success = cx.hook("on_success", raw.on_success.as_deref())?;
        let on_failure = cx.hook("on_failure", raw.on_failure.as_deref())?;
        let hook_timeout = dur("hook_timeout", &raw.hook_timeout, Duration::from_secs(30))?;
        if hook_timeout.is_zero() {
            return Err(invalid("hook_timeout", "must be more than 0".into()));
        }

        let mode = |key: &str, v: &Option<serde_yaml::Value>| -> Result<Option<u32>, JobError> {
            v.as_ref()
                .map(|v| parse_mode(v).map_err(|m| invalid(key, m)))
                .transpose()
        };
        let modes = ModePolicy {
            permissions: raw.permissions.unwrap_or_default(),
            file: mode("file_mode", &raw.file_mode)?,
            dir: mode("dir_mode", &raw.dir_mode)?,
        };
        if modes.permissions == Permissions::None && (modes.file.is_some() || modes.dir.is_some()) {
            return Err(invalid(
                "permissions",
                "`none` leaves modes alone: remove it, or remove file_mode and dir_mode".into(),
            ));
        }
        let bwlimit = match &raw.bwlimit {
            None => None,
            Some(v) => Some(parse_rate_value(v).map_err(|m| invalid("bwlimit", m))?),
        };

        Ok(Job {
            name,
            file: file.to_owned(),
            direction: raw.direction,
            delete: raw.delete,
            local_root,
            remote: Remote {
                host,
                port,
                user,
                password,
                root,
                passive: r.passive,
                tls: r.tls,
                tls_ca_file: match &r.tls_ca_file {
                    Some(p) => Some(base.join(expand("remote.tls_ca_file", p)?)),
                    None => None,
                },
                tls_fingerprint,
                tls_insecure_skip_verify: r.tls_insecure_skip_verify,
                max_connections: r.max_connections,
            },
            concurrency: raw.concurrency,
            filters,
            compare: raw.compare,
            verify: raw.verify,
            retry,
            timeout,
            deadline,
            state_path,
            state_location,
            state_save_interval,
            atomic: raw.atomic,
            stage_new_dirs: raw.stage_new_dirs,
            max_delete,
            delete_after_errors: raw.safety.delete_after_errors,
            schedule,
            overlap: raw.overlap.unwrap_or_default(),
            catch_up: raw.catch_up.unwrap_or_default(),
            jitter,
            on_success,
            on_failure,
            hook_timeout,
            modes,
            bwlimit,
            warnings,
        })
    }
}

/// The job text being validated, for errors and warnings that point into it.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// `file:line:column` of `key`'s value, or `file` when the text does not show it.
    fn place(&self, key: &str) -> String {
        place(self.file, key_location(self.text, key))
    }

    fn invalid(&self, key: &str, message: String) -> JobError {
        JobError::Invalid {
            file: self.file.to_owned(),
            at: key_location(self.text, key),
            key: key.to_owned(),
            message,
        }
    }

    fn expand(&self, key: &str, value: &str) -> Result<String, JobError> {
        expand_env(value).map_err(|m| self.invalid(key, m))
    }

    /// `schedule:` read in `timezone:` (default: the system's zone). The keys
    /// that only matter to a schedule are accepted without one, with a warning.
    fn schedule(
        &self,
        raw: &RawJob,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Schedule>, JobError> {
        let zone = match &raw.timezone {
            Some(name) => Some(
                Zone::parse(&self.expand("timezone", name)?)
                    .map_err(|e| self.invalid("timezone", e.to_string()))?,
            ),
            None => None,
        };
        let Some(expr) = &raw.schedule else {
            let given = [
                ("timezone", raw.timezone.is_some()),
                ("overlap", raw.overlap.is_some()),
                ("catch_up", raw.catch_up.is_some()),
                ("jitter", raw.jitter.is_some()),
            ];
            for (key, _) in given.iter().filter(|(_, given)| *given) {
                warnings.push(format!(
                    "{}: {key}: has no effect without schedule",
                    self.place(key)
                ));
            }
            return Ok(None);
        };
        let expr = self.expand("schedule", expr)?;
        Schedule::with_zone(&expr, zone.unwrap_or_else(Zone::system))
            .map(Some)
            .map_err(|e| match e {
                ScheduleError::UnknownZone(_) => self.invalid("timezone", e.to_string()),
                ScheduleError::Expression { .. } => self.invalid("schedule", e.to_string()),
            })
    }

    /// A hook: an argv whose first element names the command.
    fn hook(&self, key: &str, argv: Option<&[String]>) -> Result<Option<Vec<String>>, JobError> {
        let Some(argv) = argv else {
            return Ok(None);
        };
        if argv.is_empty() {
            return Err(self.invalid(
                key,
                "must list the command and its arguments, e.g. [curl, -fsS, \"https://…\"]".into(),
            ));
        }
        let argv = argv
            .iter()
            .enumerate()
            .map(|(i, arg)| {
                let arg = self.expand(&format!("{key}[{i}]"), arg)?;
                if arg.contains('\0') {
                    return Err(self.invalid(&format!("{key}[{i}]"), "must not contain NUL".into()));
                }
                Ok(arg)
            })
            .collect::<Result<Vec<String>, JobError>>()?;
        if argv[0].is_empty() {
            return Err(self.invalid(&format!("{key}[0]"), "the command must not be empty".into()));
        }
        Ok(Some(argv))
    }
}

fn syntax_error(file: &Path, text: &str, e: &serde_yaml::Error) -> JobError {
    let (mut line, mut column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    // A duplicate key is reported at the start of its mapping: point at the
    // second occurrence instead.
    if let Some(key) = e
        .to_string()
        .strip_prefix("duplicate field `")
        .and_then(|r| r.split('`').next())
        && let Some((i, l)) = lines_with_key(text, key).nth(1)
    {
        line = i + 1;
        column = l.len() - l.trim_start().len() + 1;
    }
    // serde_yaml_ng appends " at line L column C"; the location is already in front.
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    JobError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// Where the value of `key` (`remote.port`; an index such as `[2]` is
/// ignored) is set in a job file, as a 1-based (line, column): the value's
/// column when it is on the key's line, else the key's. Follows the nesting
/// by indentation, and by braces in flow mappings (`remote: {port: 0}`, or a
/// whole `{...}` document); keys may be quoted (`"port": 0`).
fn key_location(text: &str, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let value_column = |line: &str, from: usize| {
        let rest = &line[from..];
        let value = rest.trim_start();
        if value.is_empty() || value.starts_with('#') {
            None
        } else {
            Some(from + (rest.len() - value.len()) + 1)
        }
    };
    // (line index, byte where the key's value starts) of the key found so far.
    let mut found: Option<(usize, usize)> = None;
    for segment in key.split('.').map(|s| s.split('[').next().unwrap_or(s)) {
        let (start, parent_indent) = match found {
            Some((i, _)) => (i + 1, Some(indent(lines[i]))),
            None => (0, None),
        };
        let mut block_indent = None;
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let ind = indent(line);
            if parent_indent.is_some_and(|p| ind <= p) {
                break;
            }
            if ind == *block_indent.get_or_insert(ind)
                && let Some(n) = key_len(trimmed, segment)
            {
                hit = Some((i, ind + n));
                break;
            }
        }
        hit = hit.or_else(|| flow_key(&lines, found.unwrap_or((0, 0)), segment));
        found = Some(hit?);
    }
    let (i, from) = found?;
    let column = value_column(lines[i], from).unwrap_or(indent(lines[i]) + 1);
    Some((i + 1, column))
}

/// The length of `segment` as a key at the start of `s` (bare, `"quoted"` or
/// `'quoted'`), up to and including its colon, if `s` starts with it.
fn key_len(s: &str, segment: &str) -> Option<usize> {
    let rest = [("", ""), ("\"", "\""), ("'", "'")]
        .iter()
        .find_map(|(open, close)| {
            s.strip_prefix(open)?
                .strip_prefix(segment)?
                .strip_prefix(close)
        })?;
    let after = rest.trim_start_matches([' ', '\t']).strip_prefix(':')?;
    Some(s.len() - after.len())
}

/// Where `segment` is a key directly inside the flow mapping (`{...}`)
/// that starts at `from` (line index, byte) or later: the (line index, byte
/// after its colon). `None` when no flow mapping starts there, or it ends
/// without the key.
fn flow_key(lines: &[&str], from: (usize, usize), segment: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    // The last character outside quotes and blanks: a key follows `{` or `,`.
    let mut prev = None;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, line) in lines.iter().enumerate().skip(from.0) {
        let start = if i == from.0 { from.1 } else { 0 };
        for (off, c) in line[start..].char_indices() {
            let at = start + off;
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    prev = Some(c);
                }
                continue;
            }
            if c.is_whitespace() {
                continue;
            }
            if c == '#' && (at == 0 || line[..at].ends_with([' ', '\t'])) {
                break;
            }
            if depth == 1
                && matches!(prev, Some('{' | ','))
                && let Some(n) = key_len(&line[at..], segment)
            {
                return Some((i, at + n));
            }
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' if depth <= 1 => return None,
                '}' | ']' => depth -= 1,
                '"' | '\'' => quote = Some(c),
                _ if depth == 0 => return None,
                _ => {}
            }
            prev = Some(c);
        }
    }
    None
}

/// The lines (index, text) that set `key:` at any indentation.
fn lines_with_key<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    text.lines().enumerate().filter(move |(_, l)| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|r| r.starts_with(':'))
    })
}

/// The default state database: `$XDG_STATE_HOME/ftpsync/<name>-<hash>.db`
/// (or `~/.local/state/...`), the hash taken from the job file's absolute path
/// so two jobs with the same name do not share a state.
fn default_state_path(name: &str, file: &Path) -> PathBuf {
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    state_path_for(name, &abs.to_string_lossy())
}

/// `$XDG_STATE_HOME/ftpsync/<name>-<hash of identity>.db`.
fn state_path_for(name: &str, identity: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(identity.as_bytes());
    let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join("ftpsync").join(format!("{safe}-{short}.db"))
}

/// Expands `${VAR}` references; `$$` is a literal `$`.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${ in value".to_string())?;
            let var = &body[..end];
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad variable name ${{{var}}}"));
            }
            let val =
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
            out.push_str(&val);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

/// A mode as `chmod` takes it: octal digits, as a YAML number (`0644`,
/// `644`) or string (`"0644"`, `"0o644"`). Only permission bits (at most
/// 0o777): setuid, setgid and sticky are refused.
fn parse_mode(v: &serde_yaml::Value) -> Result<u32, String> {
    let text = match v {
        serde_yaml::Value::Number(n) if n.is_u64() => n.to_string(),
        serde_yaml::Value::String(s) => s.trim().to_string(),
        _ => return Err("must be an octal mode like 0644".into()),
    };
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("`{text}` is not an octal mode like 0644"))?;
    if digits.is_empty() || mode > 0o777 {
        return Err(format!(
            "`{text}`: only permission bits (0000 to 0777) can be set; setuid, setgid and sticky bits are never carried"
        ));
    }
    Ok(mode)
}

fn parse_rate_value(v: &serde_yaml::Value) -> Result<u64, String> {
    match v {
        serde_yaml::Value::Number(n) => parse_rate(&n.to_string()),
        serde_yaml::Value::String(s) => parse_rate(s),
        _ => Err("must be a rate like 2MiB/s".into()),
    }
}

/// Parses a byte rate: `500KiB/s`, `2MiB/s`, `1.5MB/s`, `800k` (the `/s` is
/// optional; `k`/`m`/`g` alone are binary like `KiB`, `KB`/`MB`/`GB` decimal;
/// a bare number is bytes per second). Must be at least 1 byte per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let body = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = body
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(body.len());
    let (num, unit) = (&body[..split], body[split..].trim());
    let bad = || format!("`{t}` is not a rate (e.g. 500KiB/s, 2MiB/s, 10MB/s)");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let factor: f64 = match unit {
        "" | "B" => 1.0,
        "k" | "K" | "KiB" => 1024.0,
        "KB" | "kB" => 1e3,
        "m" | "M" | "MiB" => 1024.0 * 1024.0,
        "MB" => 1e6,
        "g" | "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "GB" => 1e9,
        _ => {
            return Err(format!(
                "`{t}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    let rate = (n * factor).floor();
    if !(1.0..=1e15).contains(&rate) {
        return Err(format!(
            "`{t}`: must be between 1 byte per second and 1 PB/s"
        ));
    }
    Ok(rate as u64)
}

fn parse_delete_limit(v: &serde_yaml::Value) -> Result<DeleteLimit, String> {
    match v {
        serde_yaml::Value::Number(n) => n
            .as_u64()
            .map(DeleteLimit::Count)
            .ok_or_else(|| "must be a whole number or a percentage like 50%".into()),
        serde_yaml::Value::String(s) => {
            let s = s.trim();
            if let Some(p) = s.strip_suffix('%') {
                let p: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{s}` is not a percentage"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err("a percentage must be between 0% and 100%".into());
                }
                Ok(DeleteLimit::Percent(p))
            } else {
                s.parse()
                    .map(DeleteLimit::Count)
                    .map_err(|_| format!("`{s}` is not a count or a percentage"))
            }
        }
        _ => Err("must be a whole number or a percentage like 50%".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Job, JobError> {
        Job::from_str(text, Path::new("/jobs/site.yaml"))
    }

    const MINIMAL: &str =
        "direction: push\nlocal:\n  path: ./public\nremote:\n  host: ftp.example.com\n";

    #[test]
    fn minimal_job_gets_defaults() {
        let job = load(MINIMAL).unwrap();
        assert_eq!(job.name, "site");
        assert_eq!(job.direction, Direction::Push);
        assert!(!job.delete);
        assert_eq!(job.local_root, PathBuf::from("/jobs/./public"));
        assert_eq!(job.remote.port, 21);
        assert_eq!(job.remote.user, "anonymous");
        assert_eq!(job.remote.root, "/");
        assert_eq!(job.concurrency, 4);
        assert_eq!(job.compare, CompareMode::Auto);
        assert_eq!(job.retry.max_attempts, 5);
        assert_eq!(job.max_delete, DeleteLimit::Percent(50.0));
        assert!(job.atomic);
        assert!(job.schedule.is_none());
        assert_eq!(job.overlap, Overlap::Skip);
        assert_eq!(job.catch_up, CatchUp::One);
        assert_eq!(job.jitter, Duration::ZERO);
        assert_eq!(job.on_success, None);
        assert_eq!(job.on_failure, None);
        assert_eq!(job.hook_timeout, Duration::from_secs(30));
        assert_eq!(job.remote.max_connections, None);
        assert_eq!(job.retry.give_up_after, Duration::from_secs(60));
        assert!(job.warnings.is_empty());
    }

    #[test]
    fn job_can_be_shared_between_tasks() {
        fn shareable<T: Clone + std::fmt::Debug + Send + Sync>() {}
        shareable::<Job>();
    }

    #[test]
    fn daemon_keys() {
        // SAFETY: test-only variable, no other thread reads it.
        unsafe { std::env::set_var("FTPSYNC_TEST_PING", "https://hc.example/abc") };
        let job = load(&format!(
            "{MINIMAL}  max_connections: 2
retry:
  give_up_after: 5m
schedule: \"*/15 * * * *\"
timezone: Europe/Berlin
overlap: queue
catch_up: none
jitter: 30s
on_success: [curl, -fsS, \"${{FTPSYNC_TEST_PING}}\"]
on_failure:
  - /usr/local/bin/alert
  - site failed
hook_timeout: 10s
"
        ))
        .unwrap();
        let schedule = job.schedule.as_ref().unwrap();
        assert_eq!(schedule.expr(), "*/15 * * * *");
        assert_eq!(schedule.zone_name(), "Europe/Berlin");
        assert_eq!(job.overlap, Overlap::Queue);
        assert_eq!(job.catch_up, CatchUp::Never);
        assert_eq!(job.jitter, Duration::from_secs(30));
        assert_eq!(
            job.on_success.as_deref(),
            Some(
                &[
                    "curl".to_owned(),
                    "-fsS".into(),
                    "https://hc.example/abc".into()
                ][..]
            )
        );
        assert_eq!(
            job.on_failure.as_deref(),
            Some(&["/usr/local/bin/alert".to_owned(), "site failed".into()][..])
        );
        assert_eq!(job.hook_timeout, Duration::from_secs(10));
        assert_eq!(job.remote.max_connections, Some(2));
        assert_eq!(job.retry.give_up_after, Duration::from_secs(300));
        assert!(job.warnings.is_empty(), "{:?}", job.warnings);

        let job = load(&format!("{MINIMAL}schedule: \"@daily\"\ncatch_up: one\n")).unwrap();
        assert_eq!(job.schedule.unwrap().zone(), Zone::system());
        assert_eq!(job.catch_up, CatchUp::One);
    }

    #[test]
    fn tls_keys() {
        let job = load(&format!("{MINIMAL}  tls: implicit\n")).unwrap();
        assert_eq!((job.remote.tls, job.remote.port), (TlsMode::Implicit, 990));
        let job = load(&format!("{MINIMAL}  tls: implicit\n  port: 2990\n")).unwrap();
        assert_eq!(job.remote.port, 2990);
        let job = load(&format!("{MINIMAL}  tls: explicit\n")).unwrap();
        assert_eq!(job.remote.port, 21);
        assert_eq!(job.remote.tls_fingerprint, None);
        assert!(!job.remote.tls_insecure_skip_verify);
        let pin = "sha256:CB:DD:17:E2:F2:5F:BF:22:71:45:01:6E:97:77:63:5F:62:56:22:F1:23:66:DE:09:FF:80:84:FF:9D:73:7D:BA";
        let job = load(&format!(
            "{MINIMAL}  tls: explicit\n  tls_fingerprint: {}\n",
            pin.to_ascii_lowercase()
                .replace(':', "")
                .replacen("sha256", "sha256:", 1)
        ))
        .unwrap();
        assert_eq!(
            job.remote.tls_fingerprint.map(|f| f.to_string()).as_deref(),
            Some(pin)
        );
        let job = load(&format!(
            "{MINIMAL}  tls: implicit\n  tls_insecure_skip_verify: true\n"
        ))
        .unwrap();
        assert!(job.remote.tls_insecure_skip_verify);
    }

    #[test]
    fn tls_key_errors_name_line_and_key() {
        let err = |extra: &str| load(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
        assert_eq!(
            err("  tls: explicit\n  tls_fingerprint: sha256:AB:CD\n"),
            "/jobs/site.yaml:7:20: remote.tls_fingerprint: expected `sha256:` and 32 bytes in hex (64 digits, colons optional), as `openssl x509 -noout -fingerprint -sha256` prints them"
        );
        assert_eq!(
            err(&format!("  tls_fingerprint: {}\n", "ab".repeat(32))),
            "/jobs/site.yaml:6:20: remote.tls_fingerprint: has no effect without TLS: set `remote.tls: explicit` (or implicit)"
        );
        assert_eq!(
            err("  tls_insecure_skip_verify: true\n"),
            "/jobs/site.yaml:6:29: remote.tls_insecure_skip_verify: has no effect without TLS: set `remote.tls: explicit` (or implicit)"
        );
        assert_eq!(
            err("  tls: explicit\n  tls_ca_file: ca.pem\n  tls_insecure_skip_verify: true\n"),
            "/jobs/site.yaml:8:29: remote.tls_insecure_skip_verify: give only one of tls_ca_file, tls_fingerprint and tls_insecure_skip_verify (a pin or the opt-out decides alone, so the others would be ignored)"
        );
        assert!(
            err(&format!(
                "  tls: explicit\n  tls_fingerprint: {}\n  tls_ca_file: ca.pem\n",
                "ab".repeat(32)
            ))
            .starts_with("/jobs/site.yaml:8:16: remote.tls_ca_file: give only one of ")
        );
        assert!(
            err("  tls: implicit\n  port: 0\n").starts_with("/jobs/site.yaml:7:9: remote.port: ")
        );
    }

    #[test]
    fn daemon_key_errors_name_line_and_key() {
        let err = |extra: &str| load(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
        assert_eq!(
            err("schedule: \"61 * * * *\"\n"),
            "/jobs/site.yaml:6:11: schedule: `61 * * * *`: Component error: Number out of bounds."
        );
        assert_eq!(
            err("schedule: 0 0 * *\n"),
            "/jobs/site.yaml:6:11: schedule: `0 0 * *`: Invalid pattern: Pattern must have 5 or 6 fields when years are disallowed."
        );
        assert_eq!(
            err("schedule: \"@daily\"\ntimezone: Europe/Berln\n"),
            "/jobs/site.yaml:7:11: timezone: unknown time zone `Europe/Berln` (use an IANA name such as Europe/Berlin, or UTC)"
        );
        // A bad zone is an error even without a schedule.
        assert!(err("timezone: Nowhere\n").starts_with("/jobs/site.yaml:6:11: timezone: "));
        assert_eq!(
            err("  max_connections: 0\n"),
            "/jobs/site.yaml:6:20: remote.max_connections: must be at least 1"
        );
        assert_eq!(
            err("retry: {give_up_after: 0s}\n"),
            "/jobs/site.yaml:6:24: retry.give_up_after: must be more than 0"
        );
        assert_eq!(
            err("hook_timeout: 0\n"),
            "/jobs/site.yaml:6:15: hook_timeout: must be more than 0"
        );
        assert!(err("jitter: soon\n").starts_with("/jobs/site.yaml:6:9: jitter: "));
        assert_eq!(
            err("on_success: []\n"),
            "/jobs/site.yaml:6:13: on_success: must list the command and its arguments, e.g. [curl, -fsS, \"https://…\"]"
        );
        assert_eq!(
            err("on_failure:\n  - \"\"\n  - x\n"),
            "/jobs/site.yaml:6:1: on_failure[0]: the command must not be empty"
        );
        // Wrong types and unknown values are the YAML parser's errors, with the key.
        assert!(
            err("overlap: replace\n")
                .starts_with("/jobs/site.yaml:6:10: overlap: unknown variant `replace`"),
        );
        assert!(err("catch_up: all\n").contains("catch_up: unknown variant `all`"));
        assert!(
            err("on_success: curl\n").starts_with("/jobs/site.yaml:6:13: on_success: invalid type")
        );
        assert!(
            err("  max_connections: -1\n")
                .starts_with("/jobs/site.yaml:6:20: remote.max_connections: ")
        );
    }

    #[test]
    fn schedule_keys_without_schedule_warn() {
        let job = load(&format!("{MINIMAL}timezone: UTC\njitter: 5s\n")).unwrap();
        assert!(job.schedule.is_none());
        assert_eq!(
            job.warnings,
            [
                "/jobs/site.yaml:6:11: timezone: has no effect without schedule",
                "/jobs/site.yaml:7:9: jitter: has no effect without schedule"
            ]
        );
    }

    #[test]
    fn key_location_follows_the_nesting() {
        let text = "\
# a job
direction: push
local:
  path: x   # relative
remote:
  host: h

  # the port
  port:
    21
retry: {max_attempts: 0, max_backoff: 1s}
filters:
  exclude:
    - a
";
        assert_eq!(key_location(text, "direction"), Some((2, 12)));
        assert_eq!(key_location(text, "local.path"), Some((4, 9)));
        assert_eq!(key_location(text, "remote.port"), Some((9, 3)));
        assert_eq!(key_location(text, "retry.max_backoff"), Some((11, 39)));
        assert_eq!(key_location(text, "filters.exclude[0]"), Some((13, 3)));
        // `host` is only under `remote`, `path` only under `local`.
        assert_eq!(key_location(text, "host"), None);
        assert_eq!(key_location(text, "remote.path"), None);
        assert_eq!(key_location(text, "schedule"), None);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = load("direction: push\nlocal:\n  path: x\nremote:\n  host: h\n  hots: y\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/jobs/site.yaml:6:3: "), "{err}");
        assert!(err.contains("unknown field `hots`"), "{err}");
    }

    #[test]
    fn bad_type_names_line_and_key() {
        let err = load(&format!("{MINIMAL}concurrency: lots\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/jobs/site.yaml:6:14: concurrency: "),
            "{err}"
        );
    }

    #[test]
    fn duplicate_key_points_at_the_second_one() {
        let err = load(&format!("{MINIMAL}concurrency: 2\nconcurrency: 3\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/jobs/site.yaml:7:1: duplicate field `concurrency`");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = load(&format!("{MINIMAL}concurrency: 0\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/jobs/site.yaml:6:14: concurrency: must be between 1 and 64"
        );
        let err = load(&format!("{MINIMAL}retry:\n  initial_backoff: 3 days\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retry.initial_backoff"), "{err}");
        let err = load(&format!("{MINIMAL}filters:\n  exclude: [\"a[\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("filters.exclude[0]"), "{err}");
    }

    #[test]
    fn env_expansion() {
        // SAFETY: test-only variable, no other thread reads it.
        unsafe { std::env::set_var("FTPSYNC_TEST_HOST", "h.example") };
        assert_eq!(
            expand_env("a${FTPSYNC_TEST_HOST}b$$c$d").unwrap(),
            "ah.exampleb$c$d"
        );
        assert!(
            expand_env("${FTPSYNC_TEST_NOPE}")
                .unwrap_err()
                .contains("FTPSYNC_TEST_NOPE")
        );
        let err =
            load("direction: push\nlocal:\n  path: x\nremote:\n  host: ${FTPSYNC_TEST_NOPE}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("remote.host"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let job = load(&format!("{MINIMAL}  password: hunter2-secret\n")).unwrap();
        let dbg = format!("{job:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(job.warnings.len(), 1);
        assert_eq!(job.remote.password().unwrap().expose(), "hunter2-secret");
    }

    #[test]
    fn durations_and_limits() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("fast").is_err());
        let job = load(&format!("{MINIMAL}safety:\n  max_delete: 10\n")).unwrap();
        assert_eq!(job.max_delete, DeleteLimit::Count(10));
        let job = load(&format!("{MINIMAL}safety:\n  max_delete: 5%\n")).unwrap();
        assert_eq!(job.max_delete, DeleteLimit::Percent(5.0));
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        };
        assert_eq!(p.backoff(2), Duration::from_secs(1));
        assert_eq!(p.backoff(3), Duration::from_secs(2));
        assert_eq!(p.backoff(5), Duration::from_secs(5));
    }

    #[test]
    fn permission_keys() {
        let job = load(MINIMAL).unwrap();
        assert_eq!(job.modes, ModePolicy::default());
        assert_eq!(job.modes.file_mode(Some(0o104755), 0), Some(0o755));
        assert_eq!(job.modes.file_mode(Some(0o666), 0o022), Some(0o644));
        assert_eq!(job.modes.dir_mode(None, 0), None);
        assert_eq!(job.modes.dir_mode(Some(0o555), 0), Some(0o755));
        assert_eq!(job.bwlimit, None);
        let job = load(&format!(
            "{MINIMAL}file_mode: 0644\ndir_mode: \"0o750\"\nbwlimit: 2MiB/s\n"
        ))
        .unwrap();
        assert_eq!(job.modes.file, Some(0o644));
        assert_eq!(job.modes.dir, Some(0o750));
        assert_eq!(job.modes.file_mode(Some(0o600), 0o077), Some(0o644));
        assert_eq!(job.modes.dir_mode(Some(0o777), 0o022), Some(0o750));
        assert_eq!(job.bwlimit, Some(2 << 20));
        let job = load(&format!("{MINIMAL}permissions: none\n")).unwrap();
        assert_eq!(job.modes.file_mode(Some(0o644), 0), None);
        for (text, key, at, wanted) in [
            (
                "file_mode: 0844\n",
                "file_mode",
                "6:12",
                "not an octal mode",
            ),
            (
                "dir_mode: 4755\n",
                "dir_mode",
                "6:11",
                "only permission bits",
            ),
            ("file_mode: [1]\n", "file_mode", "6:12", "octal mode"),
            (
                "permissions: none\nfile_mode: 0644\n",
                "permissions",
                "6:14",
                "`none`",
            ),
            (
                "bwlimit: 2 parsecs\n",
                "bwlimit",
                "6:10",
                "unknown unit `parsecs`",
            ),
            ("bwlimit: 0\n", "bwlimit", "6:10", "between 1 byte"),
            ("bwlimit: fast\n", "bwlimit", "6:10", "not a rate"),
        ] {
            let e = load(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("/jobs/site.yaml:{at}: {key}: ")) && e.contains(wanted),
                "{text:?}: {e}"
            );
        }
        let e = load(&format!("{MINIMAL}permissions: keep\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/jobs/site.yaml:6:14: ") && e.contains("preserve"),
            "{e}"
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2MiB/s"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_rate("1.5MB/s"), Ok(1_500_000));
        assert_eq!(parse_rate("800k"), Ok(800 * 1024));
        assert_eq!(parse_rate("100KB/s"), Ok(100_000));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert!(parse_rate("").is_err());
        assert!(parse_rate("/s").is_err());
        assert!(parse_rate("-1M").is_err());
        assert!(parse_rate("0.1").is_err());
    }

    #[test]
    fn state_remote_and_the_reserved_directory() {
        let job = load(&format!(
            "{MINIMAL}state: remote\nstate_save_interval: 5s\n"
        ))
        .unwrap();
        assert_eq!(job.state_location, StateLocation::Remote);
        assert_eq!(job.state_save_interval, Duration::from_secs(5));
        assert!(job.state_path.to_string_lossy().contains("site_remote-"));
        let job = load(&format!("{MINIMAL}state: ./remote\n")).unwrap();
        assert_eq!(job.state_location, StateLocation::Local);
        assert_eq!(job.state_path, PathBuf::from("/jobs/./remote"));
        let f = Filters::new(&["**".into()], &[]).unwrap();
        assert!(f.excludes_dir(".ftpsync"));
        assert!(!f.accepts_file(".ftpsync/site.db"));
        assert!(!f.accepts_file(".ftpsync"));
        assert!(f.accepts_file(".ftpsync-0123456789abcdef.part"));
        assert!(f.accepts_file("a/.ftpsync/x"));
    }

    #[test]
    fn filters_match_paths() {
        let f = Filters::new(&[], &[".git/**".into(), "**/*.tmp".into()]).unwrap();
        assert!(f.excludes_dir(".git"));
        assert!(!f.accepts_file(".git/config"));
        assert!(!f.accepts_file("a/b/c.tmp"));
        assert!(!f.accepts_file("c.tmp"));
        assert!(f.accepts_file("a/b/c.txt"));
        assert!(!f.excludes_dir("a"));
        let f = Filters::new(&["*.html".into()], &[]).unwrap();
        assert!(f.accepts_file("index.html"));
        assert!(f.accepts_file("a/b.html"));
        assert!(!f.accepts_file("a/b.css"));
    }

    #[test]
    fn every_value_error_names_line_and_column() {
        // Durations, numbers the parser or the loader refuses, and the other
        // semantic checks: each names file:line:column and the key.
        let cases = [
            (
                "timeout: soon\n",
                "6:10: timeout: `soon` is not a duration (e.g. 500ms, 30s, 5m)",
            ),
            (
                "timeout: 99999999999999999999999h\n",
                "6:10: timeout: `99999999999999999999999h` is out of range",
            ),
            ("timeout: 0\n", "6:10: timeout: must be more than 0"),
            ("deadline: 0s\n", "6:11: deadline: must be more than 0"),
            (
                "jitter: 1d\n",
                "6:9: jitter: `1d`: unknown unit `d` (use ms, s, m or h)",
            ),
            (
                "hook_timeout: -1s\n",
                "6:15: hook_timeout: `-1s` is not a duration (e.g. 500ms, 30s, 5m)",
            ),
            (
                "retry:\n  max_backoff: 5 days\n",
                "7:16: retry.max_backoff: `5 days`: unknown unit `days` (use ms, s, m or h)",
            ),
            (
                "retry: {initial_backoff: nope}\n",
                "6:26: retry.initial_backoff: `nope` is not a duration (e.g. 500ms, 30s, 5m)",
            ),
            ("  port: 0\n", "6:9: remote.port: must be 1..65535"),
            (
                "  port: 70000\n",
                "6:9: remote.port: invalid value: integer `70000`, expected u16",
            ),
            (
                "concurrency: 0\n",
                "6:14: concurrency: must be between 1 and 64",
            ),
            (
                "concurrency: 65\n",
                "6:14: concurrency: must be between 1 and 64",
            ),
            (
                "concurrency: -2\n",
                "6:14: concurrency: invalid type: integer `-2`, expected usize",
            ),
            (
                "retry: {max_attempts: 0}\n",
                "6:23: retry.max_attempts: must be at least 1",
            ),
            (
                "retry:\n  max_attempts: 99999999999\n",
                "7:17: retry.max_attempts: invalid value: integer `99999999999`, expected u32",
            ),
            (
                "  max_connections: 0\n",
                "6:20: remote.max_connections: must be at least 1",
            ),
            (
                "safety:\n  max_delete: 101%\n",
                "7:15: safety.max_delete: a percentage must be between 0% and 100%",
            ),
            (
                "safety:\n  max_delete: 3.5\n",
                "7:15: safety.max_delete: must be a whole number or a percentage like 50%",
            ),
            (
                "  password_env: A\n  password_file: b\n",
                "7:18: remote.password_file: give only one of password_env, password_file and password",
            ),
            (
                "  password: a\n  password_file: b\n",
                "7:18: remote.password_file: give only one of password_env, password_file and password",
            ),
        ];
        for (extra, want) in cases {
            let got = load(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
            assert_eq!(got, format!("/jobs/site.yaml:{want}"), "for {extra:?}");
        }
    }

    #[test]
    fn positions_in_flow_mappings_and_quoted_keys() {
        let err = |t: &str| load(t).unwrap_err().to_string();
        assert_eq!(
            err("{direction: push, local: {path: x}, remote: {host: h, port: 0}}\n"),
            "/jobs/site.yaml:1:61: remote.port: must be 1..65535"
        );
        assert_eq!(
            err("{local: {path: x}, remote: {host: h}, direction: push, timeout: 0}\n"),
            "/jobs/site.yaml:1:65: timeout: must be more than 0"
        );
        assert_eq!(
            err(&format!("{MINIMAL}\"concurrency\": 0\n")),
            "/jobs/site.yaml:6:16: concurrency: must be between 1 and 64"
        );
        assert_eq!(
            err(&format!("{MINIMAL}retry: {{'max_attempts' : 0}}\n")),
            "/jobs/site.yaml:6:26: retry.max_attempts: must be at least 1"
        );
        assert_eq!(
            err("direction: push\nlocal: {path: x}\nremote: {\n  host: h,\n  \"port\": 0 }\n"),
            "/jobs/site.yaml:5:11: remote.port: must be 1..65535"
        );
        // Only the mapping the key belongs to, never a sibling's key or a string.
        let text = "{local: {path: x, port: 1}, remote: {host: \"port: 2\", port: 3}}";
        assert_eq!(key_location(text, "remote.port"), Some((1, 61)));
        assert_eq!(key_location(text, "remote.host"), Some((1, 44)));
        assert_eq!(key_location(text, "remote.user"), None);
        assert_eq!(key_location(text, "timeout"), None);
    }

    #[test]
    fn one_off_jobs_take_the_defaults_and_a_state_of_their_own() {
        let o = OneOff {
            direction: Direction::Pull,
            local: PathBuf::from("/srv/mirror"),
            host: "ftp.example.com".into(),
            port: 2121,
            user: "me".into(),
            password: PasswordSource::Env("FTPSYNC_PASSWORD".into()),
            root: "/pub".into(),
            tls: TlsMode::Explicit,
        };
        let job = Job::one_off(o.clone()).unwrap();
        assert_eq!(job.name, "ftp.example.com");
        assert_eq!(
            job.file,
            PathBuf::from("ftps://me@ftp.example.com:2121/pub")
        );
        assert_eq!(job.direction, Direction::Pull);
        assert_eq!(job.local_root, PathBuf::from("/srv/mirror"));
        assert_eq!(
            (
                job.remote.port,
                job.remote.user.as_str(),
                job.remote.root.as_str()
            ),
            (2121, "me", "/pub")
        );
        assert_eq!(job.remote.tls, TlsMode::Explicit);
        assert_eq!(job.concurrency, 4);
        assert!(!job.delete);
        let name = job
            .state_path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with("ftp_example_com-") && name.ends_with(".db"),
            "{name}"
        );
        // The same command line finds the same state; another root does not.
        assert_eq!(Job::one_off(o.clone()).unwrap().state_path, job.state_path);
        let other = Job::one_off(OneOff {
            root: "/other".into(),
            ..o.clone()
        })
        .unwrap();
        assert_ne!(other.state_path, job.state_path);
        let err = Job::one_off(OneOff {
            root: "/a\r\nDELE x".into(),
            ..o.clone()
        })
        .unwrap_err();
        assert_eq!(err.to_string().split(": ").nth(1), Some("remote.root"));
        assert!(Job::one_off(OneOff { port: 0, ..o }).is_err());
    }

    #[test]
    fn schema_is_draft_7_and_closed() {
        let s = schema();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(
            s["required"],
            serde_json::json!(["direction", "local", "remote"])
        );
    }
}
