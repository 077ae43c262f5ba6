//! `on_success` / `on_failure` hooks: running a user's command after a run,
//! with the run's outcome in its environment, without letting it hurt the
//! daemon.
//!
//! A hook is started directly (no shell; a job that wants one writes
//! `["/bin/sh", "-c", "..."]`), with stdin from /dev/null, the run's
//! `FTPSYNC_*` variables added to the daemon's environment, and its output
//! captured and logged. It runs in a process group of its own, so that
//! stopping it stops what it started too: on timeout or cancellation the group
//! gets SIGTERM, then SIGKILL 2 s later. Processes a hook leaves behind after
//! exiting are stopped the same way, so nothing of a hook outlives
//! [`run_hook`] (short of a process that leaves the group with `setsid`).
//!
//! Off Linux, only the hook's own process is killed (SIGKILL, no grace).

use std::fmt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::Outcome;

/// How long a hook's process group has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How often to look whether a signalled group has gone.
const POLL: Duration = Duration::from_millis(20);

/// How long to wait for output still in the pipes once the group has gone,
/// and for a SIGKILLed process to be reaped. Keeps [`run_hook`] within its
/// bound even when a pipe is held open by a process outside the group.
const SETTLE: Duration = Duration::from_millis(100);

/// How much of each output stream is kept (the end: errors come last).
const TAIL_BYTES: usize = 4096;

/// How a hook ended. The caller logs it (with the job's name) and carries on:
/// a hook's failure never changes the run's outcome.
#[derive(Debug)]
pub enum HookOutcome {
    /// Exited with status 0.
    Ok(ExitStatus),
    /// Exited non-zero, or was killed by a signal it did not get from us.
    Failed(ExitStatus),
    /// Still running at the timeout; its process group was stopped.
    TimedOut,
    /// The daemon is shutting down; its process group was stopped.
    Cancelled,
    /// Could not be started (no such program, not executable, empty command)
    /// or waited for.
    SpawnError(String),
}

impl HookOutcome {
    /// Whether the hook ran and exited 0.
    pub fn is_ok(&self) -> bool {
        matches!(self, HookOutcome::Ok(_))
    }
}

impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookOutcome::Ok(status) | HookOutcome::Failed(status) => write!(f, "{status}"),
            HookOutcome::TimedOut => f.write_str("timed out"),
            HookOutcome::Cancelled => f.write_str("stopped by shutdown"),
            HookOutcome::SpawnError(msg) => write!(f, "could not start: {msg}"),
        }
    }
}

/// What a hook is told about the run it follows. Plain data, filled in by the
/// scheduler from the run's report, so this module needs nothing from the
/// engine.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// The job's name.
    pub job: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// The exit code `ftpsync run` would have returned for the run.
    pub exit_code: i32,
    /// What started the run, e.g. "schedule" or "startup".
    pub trigger: String,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the run finished.
    pub finished_at: DateTime<Utc>,
    /// Files uploaded.
    pub uploaded: u64,
    /// Files downloaded.
    pub downloaded: u64,
    /// Files and directories deleted.
    pub deleted: u64,
    /// Items that failed.
    pub failed: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// The run's JSON report, if one was written.
    pub report: Option<PathBuf>,
}

/// The `FTPSYNC_*` variables for a hook: strings a shell script can use
/// directly (times in RFC 3339 UTC, counts in decimal). `FTPSYNC_REPORT` is
/// absent when there is no report, or when its path is not UTF-8.
pub fn hook_env(ctx: &HookContext) -> Vec<(String, String)> {
    let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut env = vec![
        ("FTPSYNC_JOB", ctx.job.clone()),
        ("FTPSYNC_OUTCOME", ctx.outcome.as_str().to_owned()),
        ("FTPSYNC_EXIT_CODE", ctx.exit_code.to_string()),
        ("FTPSYNC_TRIGGER", ctx.trigger.clone()),
        ("FTPSYNC_STARTED_AT", time(&ctx.started_at)),
        ("FTPSYNC_FINISHED_AT", time(&ctx.finished_at)),
        ("FTPSYNC_UPLOADED", ctx.uploaded.to_string()),
        ("FTPSYNC_DOWNLOADED", ctx.downloaded.to_string()),
        ("FTPSYNC_DELETED", ctx.deleted.to_string()),
        ("FTPSYNC_FAILED", ctx.failed.to_string()),
        ("FTPSYNC_BYTES", ctx.bytes.to_string()),
    ];
    if let Some(report) = &ctx.report {
        match report.to_str() {
            Some(path) => env.push(("FTPSYNC_REPORT", path.to_owned())),
            None => tracing::warn!(
                job = %ctx.job,
                "the report path {} is not UTF-8; FTPSYNC_REPORT is not set",
                report.display()
            ),
        }
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Runs a hook to completion, or stops it at `timeout` or when `cancel`
/// fires. Returns within `timeout` plus the 2 s SIGTERM grace (and a fraction
/// of a second to collect output), whatever the hook does; never panics on
/// anything the hook does. The last 4 KiB of stdout are logged at info and of
/// stderr at warn, line by line, with the program as `hook`; run it inside a
/// span naming the job and the kind of hook.
///
/// If the returned future is dropped early, the hook's group gets SIGKILL.
pub async fn run_hook(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    cancel: &CancellationToken,
) -> HookOutcome {
    run_hook_hiding(argv, env, &[], timeout, cancel).await
}

/// [`run_hook`], with the variables named in `hide` removed from the
/// inherited environment: the daemon hides every job's `password_env`, so
/// a hook never sees a password.
pub async fn run_hook_hiding(
    argv: &[String],
    env: &[(String, String)],
    hide: &[String],
    timeout: Duration,
    cancel: &CancellationToken,
) -> HookOutcome {
    let Some((program, args)) = argv.split_first() else {
        return HookOutcome::SpawnError("the hook command is empty".to_owned());
    };
    let deadline = Instant::now() + timeout;
    let mut command = Command::new(program);
    for var in hide {
        command.env_remove(var);
    }
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return HookOutcome::SpawnError(format!("{program}: {e}")),
    };
    let mut group = Group::of(&child, program);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let mut out = Tail::default();
    let mut err = Tail::default();
    let ended = {
        let mut readers = pin!(async {
            tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err));
        });
        let mut supervise = pin!(supervise(&mut child, &mut group, deadline, cancel));
        let mut readers_done = false;
        let ended = loop {
            tokio::select! {
                ended = &mut supervise => break ended,
                () = &mut readers, if !readers_done => readers_done = true,
            }
        };
        if !readers_done {
            // The group has gone; a pipe still open belongs to a process that
            // left it. Take what has arrived and stop listening.
            let _ = tokio::time::timeout(SETTLE, &mut readers).await;
        }
        ended
    };
    log_output(program, &out, &err);
    match ended {
        Ended::Exited(Ok(status)) if status.success() => HookOutcome::Ok(status),
        Ended::Exited(Ok(status)) => HookOutcome::Failed(status),
        Ended::Exited(Err(e)) => HookOutcome::SpawnError(format!("waiting for {program}: {e}")),
        Ended::TimedOut => HookOutcome::TimedOut,
        Ended::Cancelled => HookOutcome::Cancelled,
    }
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Waits for the hook until the deadline or cancellation, then makes sure
/// nothing of its process group is left.
async fn supervise(
    child: &mut Child,
    group: &mut Group,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Ended {
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status),
        () = tokio::time::sleep_until(deadline) => Ended::TimedOut,
        () = cancel.cancelled() => Ended::Cancelled,
    };
    if matches!(ended, Ended::Exited(_)) && group.is_empty(child) {
        group.disarm();
        return ended;
    }
    if matches!(ended, Ended::Exited(_)) {
        tracing::warn!(hook = %group.program, "the hook left processes running; stopping them");
    }
    group.stop(child).await;
    ended
}

/// A hook's process group (its id is the hook's pid, from `process_group(0)`).
/// Dropped while armed, it sends SIGKILL to the group, so an abandoned
/// [`run_hook`] future leaves nothing running.
struct Group {
    pgid: Option<u32>,
    armed: bool,
    /// For log messages.
    program: String,
}

impl Group {
    fn of(child: &Child, program: &str) -> Self {
        Group {
            pgid: child.id(),
            armed: true,
            program: program.to_owned(),
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Whether the hook has exited (it is reaped here) and no other process
    /// of its group remains.
    fn is_empty(&self, child: &mut Child) -> bool {
        let leader_gone = !matches!(child.try_wait(), Ok(None));
        leader_gone && !self.pgid.is_some_and(group_exists)
    }

    /// SIGTERM, up to [`KILL_GRACE`] for the group to go, then SIGKILL and a
    /// short wait to reap the hook.
    async fn stop(&mut self, child: &mut Child) {
        self.signal(child, Signal::Term);
        let grace_over = Instant::now() + KILL_GRACE;
        while Instant::now() < grace_over {
            if self.is_empty(child) {
                self.disarm();
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        if self.is_empty(child) {
            self.disarm();
            return;
        }
        tracing::warn!(
            hook = %self.program,
            "the hook ignored SIGTERM for {}s; sending SIGKILL",
            KILL_GRACE.as_secs()
        );
        self.signal(child, Signal::Kill);
        self.disarm();
        // A process in uninterruptible sleep can outlast SIGKILL for a while;
        // kill_on_drop hands it to tokio's reaper then.
        let _ = tokio::time::timeout(SETTLE, child.wait()).await;
    }

    fn signal(&self, child: &mut Child, signal: Signal) {
        #[cfg(target_os = "linux")]
        if let Some(pgid) = self.pgid {
            signal_group(pgid, signal, &self.program);
            return;
        }
        // Without process-group signals, only the hook itself can be killed.
        let _ = signal;
        let _ = child.start_kill();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.armed
            && let Some(pgid) = self.pgid
        {
            signal_group(pgid, Signal::Kill, &self.program);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Signal {
    Term,
    Kill,
}

/// The group id as rustix takes it; never 0 or 1 (`kill(-1)` would signal
/// every process we may signal).
#[cfg(target_os = "linux")]
fn group_pid(pgid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pgid)
        .ok()
        .filter(|&p| p > 1)
        .and_then(rustix::process::Pid::from_raw)
}

#[cfg(target_os = "linux")]
fn signal_group(pgid: u32, signal: Signal, program: &str) {
    let Some(pid) = group_pid(pgid) else {
        return;
    };
    let signal = match signal {
        Signal::Term => rustix::process::Signal::TERM,
        Signal::Kill => rustix::process::Signal::KILL,
    };
    if let Err(e) = rustix::process::kill_process_group(pid, signal) {
        // ESRCH: the group went away on its own meanwhile.
        if e != rustix::io::Errno::SRCH {
            tracing::warn!(
                hook = program,
                "signalling the hook's process group {pgid} failed: {e}"
            );
        }
    }
}

/// Whether any process (zombies included) is still in the group. While one
/// is, the id cannot be reused, so the signals above reach only the hook's
/// processes.
#[cfg(target_os = "linux")]
fn group_exists(pgid: u32) -> bool {
    let Some(pid) = group_pid(pgid) else {
        return false;
    };
    // EPERM also means the group exists (a member changed its user).
    !matches!(
        rustix::process::test_kill_process_group(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

#[cfg(not(target_os = "linux"))]
fn group_exists(_pgid: u32) -> bool {
    false
}

/// The last [`TAIL_BYTES`] of a stream, and how many bytes came before.
#[derive(Debug, Default)]
struct Tail {
    kept: Vec<u8>,
    dropped: u64,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.kept.extend_from_slice(chunk);
        if self.kept.len() > TAIL_BYTES {
            let excess = self.kept.len() - TAIL_BYTES;
            self.kept.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The kept text, lossily decoded, starting at a character boundary.
    fn text(&self) -> String {
        let start = self
            .kept
            .iter()
            .position(|b| (b & 0b1100_0000) != 0b1000_0000)
            .unwrap_or(self.kept.len());
        String::from_utf8_lossy(&self.kept[start..]).into_owned()
    }
}

/// Reads a pipe to its end into `tail`. Read errors end the reading: the
/// output is only for the log.
async fn drain<R: AsyncRead + Unpin>(pipe: Option<R>, tail: &mut Tail) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
}

fn log_output(program: &str, out: &Tail, err: &Tail) {
    if out.dropped > 0 {
        tracing::info!(
            hook = program,
            "(stdout: {} earlier bytes not kept)",
            out.dropped
        );
    }
    for line in out.text().lines() {
        tracing::info!(hook = program, "{line}");
    }
    if err.dropped > 0 {
        tracing::warn!(
            hook = program,
            "(stderr: {} earlier bytes not kept)",
            err.dropped
        );
    }
    for line in err.text().lines() {
        tracing::warn!(hook = program, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Instant as StdInstant;

    fn sh(script: &str, args: &[&str]) -> Vec<String> {
        let mut argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        argv.push("hook".to_owned());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    fn context() -> HookContext {
        HookContext {
            job: "site".to_owned(),
            outcome: Outcome::Partial,
            exit_code: 3,
            trigger: "schedule".to_owned(),
            started_at: Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap(),
            finished_at: Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 42).unwrap(),
            uploaded: 5,
            downloaded: 0,
            deleted: 2,
            failed: 1,
            bytes: 123_456,
            report: Some(PathBuf::from("/var/lib/ftpsync/site.json")),
        }
    }

    /// Whether a pid belongs to a live process (a zombie counts as gone:
    /// whoever adopted it has not reaped it yet, but it runs no more).
    fn is_running(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    fn pids(path: &std::path::Path) -> Vec<u32> {
        std::fs::read_to_string(path)
            .expect("the hook wrote its pids")
            .split_whitespace()
            .map(|p| p.parse().expect("a pid"))
            .collect()
    }

    /// Waits briefly for processes to be gone: an orphaned grandchild killed
    /// by SIGTERM may take a moment to die.
    async fn all_gone(pids: &[u32]) -> bool {
        for _ in 0..50 {
            if !pids.iter().any(|&p| is_running(p)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[test]
    fn hook_env_has_every_variable() {
        let env = hook_env(&context());
        let get = |k: &str| {
            env.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("FTPSYNC_JOB"), Some("site"));
        assert_eq!(get("FTPSYNC_OUTCOME"), Some("partial"));
        assert_eq!(get("FTPSYNC_EXIT_CODE"), Some("3"));
        assert_eq!(get("FTPSYNC_TRIGGER"), Some("schedule"));
        assert_eq!(get("FTPSYNC_STARTED_AT"), Some("2026-12-01T10:00:00Z"));
        assert_eq!(get("FTPSYNC_FINISHED_AT"), Some("2026-12-01T10:00:42Z"));
        assert_eq!(get("FTPSYNC_UPLOADED"), Some("5"));
        assert_eq!(get("FTPSYNC_DOWNLOADED"), Some("0"));
        assert_eq!(get("FTPSYNC_DELETED"), Some("2"));
        assert_eq!(get("FTPSYNC_FAILED"), Some("1"));
        assert_eq!(get("FTPSYNC_BYTES"), Some("123456"));
        assert_eq!(get("FTPSYNC_REPORT"), Some("/var/lib/ftpsync/site.json"));
        assert_eq!(env.len(), 12);

        let without_report = hook_env(&HookContext {
            report: None,
            ..context()
        });
        assert!(!without_report.iter().any(|(k, _)| k == "FTPSYNC_REPORT"));
    }

    #[tokio::test]
    async fn the_environment_arrives_on_top_of_the_inherited_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dump = dir.path().join("env");
        let argv = sh("env > \"$1\"", &[dump.to_str().expect("UTF-8 temp path")]);
        let outcome = run_hook(
            &argv,
            &hook_env(&context()),
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await;
        assert!(outcome.is_ok(), "{outcome}");
        let env = std::fs::read_to_string(&dump).expect("env dump");
        let lines: Vec<&str> = env.lines().collect();
        assert!(lines.contains(&"FTPSYNC_JOB=site"), "{env}");
        assert!(lines.contains(&"FTPSYNC_OUTCOME=partial"), "{env}");
        assert!(lines.contains(&"FTPSYNC_FINISHED_AT=2026-12-01T10:00:42Z"));
        assert!(lines.contains(&"FTPSYNC_REPORT=/var/lib/ftpsync/site.json"));
        // Inherited, not replaced.
        assert!(lines.iter().any(|l| l.starts_with("PATH=")), "{env}");
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_failed() {
        let outcome = run_hook(
            &sh("echo to stderr >&2; exit 3", &[]),
            &[],
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await;
        match outcome {
            HookOutcome::Failed(status) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let argv = vec!["/nonexistent/ftpsync-hook".to_owned()];
        let outcome = run_hook(
            &argv,
            &[],
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await;
        match outcome {
            HookOutcome::SpawnError(msg) => {
                assert!(msg.contains("/nonexistent/ftpsync-hook"), "{msg}");
            }
            other => panic!("expected SpawnError, got {other:?}"),
        }
        let outcome = run_hook(&[], &[], Duration::from_secs(10), &CancellationToken::new()).await;
        assert!(matches!(outcome, HookOutcome::SpawnError(_)), "{outcome}");
    }

    #[tokio::test]
    async fn a_timeout_stops_the_hook_and_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("pids");
        let argv = sh(
            "sleep 30 & echo $$ $! > \"$1\"; wait",
            &[pidfile.to_str().expect("UTF-8 temp path")],
        );
        let started = StdInstant::now();
        let outcome = run_hook(
            &argv,
            &[],
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await;
        let took = started.elapsed();
        assert!(matches!(outcome, HookOutcome::TimedOut), "{outcome}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let pids = pids(&pidfile);
        assert_eq!(pids.len(), 2);
        assert!(all_gone(&pids).await, "still running: {pids:?}");
    }

    #[tokio::test]
    async fn a_hook_ignoring_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("pids");
        // An ignored signal stays ignored in the children too.
        let argv = sh(
            "trap '' TERM; sleep 30 & echo $$ $! > \"$1\"; wait",
            &[pidfile.to_str().expect("UTF-8 temp path")],
        );
        let started = StdInstant::now();
        let outcome = run_hook(
            &argv,
            &[],
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await;
        let took = started.elapsed();
        assert!(matches!(outcome, HookOutcome::TimedOut), "{outcome}");
        assert!(took >= KILL_GRACE, "took {took:?}");
        assert!(took < Duration::from_millis(3500), "took {took:?}");
        let pids = pids(&pidfile);
        assert!(all_gone(&pids).await, "still running: {pids:?}");
    }

    #[tokio::test]
    async fn cancel_stops_the_hook() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let started = StdInstant::now();
        let outcome = run_hook(&sh("sleep 30", &[]), &[], Duration::from_secs(60), &cancel).await;
        assert!(matches!(outcome, HookOutcome::Cancelled), "{outcome}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn processes_left_behind_are_stopped_and_do_not_hold_up_the_caller() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("pids");
        // The background sleep keeps the stdout pipe open after sh exits.
        let argv = sh(
            "sleep 30 & echo $! > \"$1\"; echo done",
            &[pidfile.to_str().expect("UTF-8 temp path")],
        );
        let started = StdInstant::now();
        let outcome = run_hook(
            &argv,
            &[],
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await;
        assert!(outcome.is_ok(), "{outcome}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let pids = pids(&pidfile);
        assert!(all_gone(&pids).await, "still running: {pids:?}");
    }

    #[test]
    fn the_tail_keeps_the_last_bytes_on_a_character_boundary() {
        let mut tail = Tail::default();
        tail.push(b"abc");
        assert_eq!(tail.text(), "abc");
        assert_eq!(tail.dropped, 0);

        let mut tail = Tail::default();
        tail.push(&vec![b'x'; TAIL_BYTES]);
        // "é" is two bytes; pushing it drops two 'x'.
        tail.push("é".as_bytes());
        assert_eq!(tail.kept.len(), TAIL_BYTES);
        assert_eq!(tail.dropped, 2);
        assert!(tail.text().ends_with("xé"));

        let mut tail = Tail::default();
        tail.push("é".as_bytes());
        tail.push(&vec![b'y'; TAIL_BYTES - 1]);
        // The first kept byte is the second half of "é": skipped.
        assert_eq!(tail.text(), "y".repeat(TAIL_BYTES - 1));
    }
}
