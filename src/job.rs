//! The job file: its YAML schema (version 1), defaults, validation, `${VAR}`
//! expansion and secrets.
//!
//! A job is loaded once per run. Every error names the file, and where the
//! YAML parser knows it the line, column and key, so a bad job file never
//! gets as far as touching a server or the disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local → remote.
    Push,
    /// Remote → local.
    Pull,
}

/// How changes to a file are detected (see the README's "compare" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain FTP.
    #[default]
    None,
    /// Explicit FTPS (AUTH TLS, then PBSZ 0 / PROT P); fails closed if refused.
    Explicit,
}

/// What the daemon does when a job's next run is due while it is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<String>,
    direction: Direction,
    #[serde(default)]
    delete: bool,
    local: RawLocal,
    remote: RawRemote,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    filters: RawFilters,
    #[serde(default)]
    compare: CompareMode,
    #[serde(default)]
    retry: RawRetry,
    timeout: Option<String>,
    deadline: Option<String>,
    state: Option<String>,
    state_save_interval: Option<String>,
    #[serde(default = "default_true")]
    atomic: bool,
    #[serde(default)]
    safety: RawSafety,
    schedule: Option<String>,
    timezone: Option<String>,
    overlap: Option<Overlap>,
    catch_up: Option<CatchUp>,
    jitter: Option<String>,
    on_success: Option<Vec<String>>,
    on_failure: Option<Vec<String>>,
    hook_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    host: String,
    #[serde(default = "default_port")]
    port: u16,
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
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFilters {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    give_up_after: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    max_delete: Option<serde_yaml::Value>,
    #[serde(default)]
    delete_after_errors: bool,
}

fn default_concurrency() -> usize {
    4
}
fn default_port() -> u16 {
    21
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
    /// Extra CA certificates (PEM) to trust, for servers with their own CA.
    pub tls_ca_file: Option<PathBuf>,
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
}

impl Filters {
    /// No filtering.
    pub fn none() -> Self {
        Filters {
            include: None,
            exclude: GlobSet::empty(),
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
        })
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
    /// Non-fatal remarks about the job file (e.g. an inline password).
    pub warnings: Vec<String>,
}

impl Job {
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
        let sources = [
            r.password_env.is_some(),
            r.password_file.is_some(),
            r.password.is_some(),
        ];
        if sources.iter().filter(|b| **b).count() > 1 {
            return Err(invalid(
                "remote.password_env",
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
        if r.port == 0 {
            return Err(invalid("remote.port", "must be 1..65535".into()));
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

        Ok(Job {
            name,
            file: file.to_owned(),
            direction: raw.direction,
            delete: raw.delete,
            local_root,
            remote: Remote {
                host,
                port: r.port,
                user,
                password,
                root,
                passive: r.passive,
                tls: r.tls,
                tls_ca_file: match &r.tls_ca_file {
                    Some(p) => Some(base.join(expand("remote.tls_ca_file", p)?)),
                    None => None,
                },
                max_connections: r.max_connections,
            },
            concurrency: raw.concurrency,
            filters,
            compare: raw.compare,
            retry,
            timeout,
            deadline,
            state_path,
            state_location,
            state_save_interval,
            atomic: raw.atomic,
            max_delete,
            delete_after_errors: raw.safety.delete_after_errors,
            schedule,
            overlap: raw.overlap.unwrap_or_default(),
            catch_up: raw.catch_up.unwrap_or_default(),
            jitter,
            on_success,
            on_failure,
            hook_timeout,
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
/// ignored) is set in a block-style job file, as a 1-based (line, column):
/// the value's column when it is on the key's line, else the key's. Follows
/// the nesting by indentation; a nested key in a flow mapping
/// (`remote: {port: 0}`) is found on its parent's line.
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
                && trimmed
                    .strip_prefix(segment)
                    .is_some_and(|r| r.starts_with(':'))
            {
                hit = Some((i, ind + segment.len() + 1));
                break;
            }
        }
        hit = hit.or_else(|| {
            let (i, from) = found?;
            let needle = format!("{segment}:");
            let pos = lines[i][from..].find(&needle)? + from;
            Some((i, pos + needle.len()))
        });
        found = Some(hit?);
    }
    let (i, from) = found?;
    let column = value_column(lines[i], from).unwrap_or(indent(lines[i]) + 1);
    Some((i + 1, column))
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
    use sha2::{Digest, Sha256};
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let digest = Sha256::digest(abs.to_string_lossy().as_bytes());
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
}
