//! `ftpsync daemon`: runs every scheduled job on time, in one process, on
//! the same engine as `ftpsync run`.
//!
//! One task owns the schedule: it wakes at least once a second, compares
//! each job's next fire time with the wall clock (so a suspended machine or
//! a clock that jumped is noticed), and starts runs as tasks of their own.
//! A job never runs twice at once; runs share `--max-parallel-jobs` and each
//! server's `remote.max_connections`. Signals: SIGTERM/SIGINT stop
//! scheduling and stop the running jobs gracefully, a second one abandons
//! what is in flight, SIGHUP re-reads the job files.
//!
//! - [`schedule`]: parsing `schedule:` and computing fire times in a zone.
//! - [`metrics`]: per-job counters and gauges, rendered for Prometheus.
//! - [`http`]: `/healthz` and `/metrics`.
//! - [`notify`]: systemd readiness and watchdog.
//! - [`hooks`]: `on_success` / `on_failure` commands.

pub mod hooks;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::engine::{self, RunOptions};
use crate::error::Error;
use crate::job::{CatchUp, Job, Overlap};
use crate::state::{RunOutcome, RunTrigger as Trigger};

/// A scheduled time more than this late counts as missed (the daemon was
/// stopped, the machine slept, the clock jumped) rather than merely late.
const MISSED_AFTER: Duration = Duration::from_secs(60);
/// The scheduler looks at the clock at least this often.
const TICK: Duration = Duration::from_secs(1);

/// Options of `ftpsync daemon`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Job files, or directories of `*.yaml` job files.
    pub paths: Vec<PathBuf>,
    /// At most this many runs at once (default: the number of jobs, at most 4).
    pub max_parallel_jobs: Option<usize>,
    /// How long running jobs get to stop after SIGTERM/SIGINT.
    pub grace: Duration,
    /// Where to serve /healthz and /metrics, if anywhere.
    pub listen: Option<String>,
}

/// What the scheduler knows of one job file.
struct Slot {
    job: Arc<Job>,
    /// The file's text when it was loaded, to tell a changed file on reload.
    text: String,
    next: Option<DateTime<Utc>>,
    running: bool,
    /// `overlap: queue`: one more run is due when the running one ends.
    queued: bool,
    /// A skipped tick was logged for the current run.
    skip_logged: bool,
    /// The file is gone (SIGHUP): drop the slot once its run ends.
    removed: bool,
}

/// A run's end, sent back to the scheduler.
struct Done {
    file: PathBuf,
}

/// Sends [`Done`] when dropped.
struct DoneGuard(mpsc::UnboundedSender<Done>, Option<PathBuf>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(file) = self.1.take() {
            let _ = self.0.send(Done { file });
        }
    }
}

/// The job files named by `paths`: files as given, directories' `*.yaml`
/// and `*.yml` files in name order.
pub fn job_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::Usage(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::Usage(format!(
                "{}: no such job file or directory",
                p.display()
            )));
        }
    }
    Ok(out)
}

/// Loads one job file for the daemon: its text and the job, or the error
/// (which names the file, line and key).
fn load_job(file: &Path) -> Result<(String, Job), Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
    let job = Job::from_str(&text, file)?;
    for w in &job.warnings {
        tracing::warn!("{}: {w}", file.display());
    }
    Ok((text, job))
}

/// The next time `job` fires strictly after `after`, jitter included.
fn next_fire(job: &Job, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let schedule = job.schedule.as_ref()?;
    schedule.next_run_after(after, schedule::jitter_offset(&job.name, job.jitter))
}

/// Whether a fire time of `job` was missed since its last recorded run.
async fn missed_since_last_run(job: &Job, now: DateTime<Utc>) -> bool {
    let Some(schedule) = job.schedule.clone() else {
        return false;
    };
    let path = job.state_path.clone();
    let last = tokio::task::spawn_blocking(move || {
        crate::state::StateDb::open(&path, false)
            .ok()
            .flatten()
            .and_then(|db| db.last_run().ok().flatten())
    })
    .await
    .ok()
    .flatten();
    let Some(last) = last else {
        return false;
    };
    let jitter = chrono::Duration::from_std(schedule::jitter_offset(&job.name, job.jitter))
        .unwrap_or_default();
    schedule.missed_between(last.started_at - jitter, now - jitter)
}

/// The daemon: everything the scheduler loop shares with the runs it starts.
struct Daemon {
    opts: DaemonOptions,
    slots: BTreeMap<PathBuf, Slot>,
    metrics: Arc<metrics::Metrics>,
    parallel: Arc<Semaphore>,
    servers: HashMap<String, (usize, Arc<Semaphore>)>,
    stop: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    done_tx: mpsc::UnboundedSender<Done>,
    /// The signal that stopped the daemon, for the exit codes of stopped runs.
    stop_signal: Arc<std::sync::atomic::AtomicI32>,
}

/// Runs the daemon until SIGTERM/SIGINT. Returns the exit code.
pub async fn run(opts: DaemonOptions) -> Result<i32, Error> {
    let files = job_files(&opts.paths)?;
    let mut slots = BTreeMap::new();
    let mut bad = 0;
    for file in &files {
        match load_job(file) {
            Ok((text, job)) => {
                if job.schedule.is_none() {
                    tracing::warn!(
                        "{}: job {} has no schedule: ignored",
                        file.display(),
                        job.name
                    );
                }
                slots.insert(file.clone(), new_slot(text, job));
            }
            Err(e) => {
                bad += 1;
                tracing::error!("{e}; this job is not scheduled");
            }
        }
    }
    let scheduled = slots.values().filter(|s| s.job.schedule.is_some()).count();
    if scheduled == 0 {
        return Err(Error::Usage(format!(
            "no scheduled jobs in {} ({} job files, {bad} invalid): give jobs a `schedule:`",
            opts.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            files.len()
        )));
    }
    let parallel = opts
        .max_parallel_jobs
        .unwrap_or_else(|| scheduled.min(4))
        .max(1);
    let metrics = Arc::new(metrics::Metrics::new());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut d = Daemon {
        opts,
        slots,
        metrics: Arc::clone(&metrics),
        parallel: Arc::new(Semaphore::new(parallel)),
        servers: HashMap::new(),
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        tracker: TaskTracker::new(),
        done_tx,
        stop_signal: Arc::default(),
    };
    d.refresh_servers();

    // Signals first, so that none is lost while starting.
    let sig = |k: SignalKind| signal(k).map_err(|e| Error::Io(format!("signal handler: {e}")));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;

    let http_state = Arc::new(http::HttpState::new(Arc::clone(&metrics), TICK * 30));
    let http_stop = CancellationToken::new();
    if let Some(addr) = &d.opts.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Usage(format!("--listen {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))?;
        tracing::info!("serving /healthz and /metrics on http://{bound}/");
        let state = Arc::clone(&http_state);
        let stop = http_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, state, stop).await {
                tracing::error!("metrics endpoint failed: {e}");
            }
        });
    }

    let now = Utc::now();
    let files: Vec<PathBuf> = d.slots.keys().cloned().collect();
    for file in files {
        d.plan_first_fire(&file, now).await;
    }
    d.publish();
    tracing::info!("daemon started: {scheduled} scheduled jobs, at most {parallel} at once");
    notify::ready();
    let watchdog = notify::watchdog_interval();
    let mut last_ping = tokio::time::Instant::now();

    let shutdown_signal = loop {
        http_state.beat();
        if let Some(every) = watchdog
            && last_ping.elapsed() >= every
        {
            notify::watchdog_ping();
            last_ping = tokio::time::Instant::now();
        }
        d.fire_due(Utc::now());
        let sleep = d.time_to_next(Utc::now());
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            Some(done) = done_rx.recv() => d.finished(done),
            _ = hup.recv() => {
                notify::reloading();
                d.reload().await;
                notify::ready();
            }
            _ = term.recv() => break ("SIGTERM", 15),
            _ = int.recv() => break ("SIGINT", 2),
        }
    };
    let (shutdown_signal, number) = shutdown_signal;
    d.stop_signal
        .store(number, std::sync::atomic::Ordering::Relaxed);

    let running = d.slots.values().filter(|s| s.running).count();
    tracing::info!(
        "{shutdown_signal}: stopping; {running} running jobs get {:?} to finish (send it again to abort them now)",
        d.opts.grace
    );
    notify::stopping();
    d.stop.cancel();
    d.tracker.close();
    // Past the grace period the engine abandons what is in flight; give it a
    // moment beyond that to remove temporary files and record the state.
    let limit = d.opts.grace + Duration::from_secs(10);
    tokio::select! {
        _ = d.tracker.wait() => {}
        _ = term.recv() => d.abort_now(&mut done_rx).await,
        _ = int.recv() => d.abort_now(&mut done_rx).await,
        _ = tokio::time::sleep(limit) => {
            tracing::error!("running jobs did not stop within {limit:?}; abandoning them");
            d.abort_now(&mut done_rx).await;
        }
    }
    http_stop.cancel();
    tracing::info!("daemon stopped");
    Ok(crate::error::exit::OK)
}

fn new_slot(text: String, job: Job) -> Slot {
    Slot {
        job: Arc::new(job),
        text,
        next: None,
        running: false,
        queued: false,
        skip_logged: false,
        removed: false,
    }
}

impl Daemon {
    /// The first fire time of a job that was just loaded: at once, as a
    /// catch-up, if a run was missed since its last recorded one.
    async fn plan_first_fire(&mut self, file: &Path, now: DateTime<Utc>) {
        let Some(slot) = self.slots.get_mut(file) else {
            return;
        };
        if slot.job.schedule.is_none() {
            return;
        }
        self.metrics.register_job(&slot.job.name);
        slot.next = next_fire(&slot.job, now);
        if slot.job.catch_up == CatchUp::One && missed_since_last_run(&slot.job, now).await {
            tracing::info!(
                job = %slot.job.name,
                "a scheduled run was missed while the daemon was not running; catching up once"
            );
            let job = Arc::clone(&slot.job);
            let file = file.to_path_buf();
            self.start(&file, job, Trigger::CatchUp);
        }
    }

    /// Starts the runs that are due.
    fn fire_due(&mut self, now: DateTime<Utc>) {
        let due: Vec<PathBuf> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.removed && s.next.is_some_and(|t| t <= now))
            .map(|(f, _)| f.clone())
            .collect();
        for file in due {
            // A job renamed to another file while its run goes on is still
            // the same job: its runs never overlap either.
            let name_busy = self.slots.iter().any(|(f, s)| {
                *f != file
                    && s.running
                    && self
                        .slots
                        .get(&file)
                        .is_some_and(|me| me.job.name == s.job.name)
            });
            let Some(slot) = self.slots.get_mut(&file) else {
                continue;
            };
            let Some(at) = slot.next else { continue };
            // The next tick strictly after now: however many were missed, at most one run.
            slot.next = next_fire(&slot.job, now);
            self.metrics.set_next_run(&slot.job.name, slot.next);
            let late = (now - at).to_std().unwrap_or_default();
            let trigger = if late > MISSED_AFTER {
                if slot.job.catch_up == CatchUp::Never {
                    tracing::info!(
                        job = %slot.job.name,
                        "the run due at {at} was missed (the machine slept or the clock jumped); catch_up: none, so it is skipped"
                    );
                    continue;
                }
                tracing::info!(job = %slot.job.name, "the run due at {at} was missed; catching up once");
                Trigger::CatchUp
            } else {
                Trigger::Schedule
            };
            if slot.running || name_busy {
                self.metrics.run_skipped(&slot.job.name);
                match slot.job.overlap {
                    Overlap::Queue => slot.queued = true,
                    Overlap::Skip => {
                        if !slot.skip_logged {
                            slot.skip_logged = true;
                            tracing::warn!(
                                job = %slot.job.name,
                                "tick skipped: the previous run is still going (overlap: skip); further skips of this run are not logged"
                            );
                        }
                    }
                }
                continue;
            }
            let job = Arc::clone(&slot.job);
            self.start(&file, job, trigger);
        }
    }

    /// How long the scheduler may sleep: until the next fire time, at most a tick.
    fn time_to_next(&self, now: DateTime<Utc>) -> Duration {
        self.slots
            .values()
            .filter_map(|s| s.next)
            .map(|t| (t - now).to_std().unwrap_or_default())
            .min()
            .unwrap_or(TICK)
            .min(TICK)
    }

    /// Starts one run of `job` as a task of its own.
    fn start(&mut self, file: &Path, job: Arc<Job>, trigger: Trigger) {
        if let Some(slot) = self.slots.get_mut(file) {
            slot.running = true;
            slot.skip_logged = false;
        }
        let server_limit = self
            .servers
            .get(&server_key(&job))
            .map(|(_, s)| Arc::clone(s));
        let opts = RunOptions {
            force_delete: false,
            grace: self.opts.grace,
            abort: self.abort.clone(),
            server_limit,
            trigger,
            stop_signal: Arc::clone(&self.stop_signal),
            bwlimit: None,
            events: Default::default(),
        };
        let stop = self.stop.clone();
        let parallel = Arc::clone(&self.parallel);
        let metrics = Arc::clone(&self.metrics);
        let done_tx = self.done_tx.clone();
        let file = file.to_path_buf();
        let secrets = self.secret_vars();
        let span = tracing::info_span!("job", job = %job.name);
        self.tracker.spawn(
            async move {
                // Sent when this task ends, even by a panic, so the job is never stuck "running".
                let _done = DoneGuard(done_tx, Some(file));
                let permit = tokio::select! {
                    p = parallel.acquire_owned() => p.ok(),
                    _ = stop.cancelled() => None,
                };
                if permit.is_some() {
                    run_once(&job, &opts, stop, &metrics, &secrets).await;
                }
            }
            .instrument(span),
        );
    }

    /// A run ended: the job may run again; a queued tick runs now.
    fn finished(&mut self, done: Done) {
        let Some(slot) = self.slots.get_mut(&done.file) else {
            return;
        };
        slot.running = false;
        if slot.removed {
            let name = slot.job.name.clone();
            self.slots.remove(&done.file);
            // The job may live on in another file (it was renamed).
            if !self.slots.values().any(|s| s.job.name == name) {
                self.metrics.remove_job(&name);
            }
            self.publish();
            return;
        }
        if std::mem::take(&mut slot.queued) && !self.stop.is_cancelled() {
            let job = Arc::clone(&slot.job);
            self.start(&done.file, job, Trigger::Schedule);
        }
    }

    /// SIGHUP: re-reads the job files. New and changed jobs take effect for
    /// their next tick; a file that no longer validates is reported and its
    /// previous version keeps running; removed jobs stop after their current run.
    async fn reload(&mut self) {
        tracing::info!("SIGHUP: re-reading the job files");
        let files = match job_files(&self.opts.paths) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("reload failed: {e}; keeping the jobs as they are");
                return;
            }
        };
        let now = Utc::now();
        let mut fresh = Vec::new();
        for file in &files {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("{}: {e}; keeping its previous version", file.display());
                    continue;
                }
            };
            if let Some(slot) = self.slots.get_mut(file)
                && slot.text == text
            {
                // Unchanged; back if it had been removed by an earlier reload.
                if slot.removed {
                    slot.removed = false;
                    slot.next = next_fire(&slot.job, now);
                }
                continue;
            }
            let job = match Job::from_str(&text, file) {
                Ok(j) => j,
                Err(e) => {
                    let keep = if self.slots.contains_key(file) {
                        "its previous version keeps running"
                    } else {
                        "it is not scheduled"
                    };
                    tracing::error!("{e}; {keep}");
                    continue;
                }
            };
            if job.schedule.is_none() {
                tracing::warn!(
                    "{}: job {} has no schedule: ignored",
                    file.display(),
                    job.name
                );
            }
            match self.slots.get_mut(file) {
                Some(slot) => {
                    tracing::info!(
                        "{}: job {} changed; the new version runs from its next tick",
                        file.display(),
                        job.name
                    );
                    if slot.job.name != job.name {
                        self.metrics.remove_job(&slot.job.name);
                    }
                    slot.job = Arc::new(job);
                    slot.text = text;
                    slot.removed = false;
                    slot.next = next_fire(&slot.job, now);
                    if slot.job.schedule.is_some() {
                        self.metrics.register_job(&slot.job.name);
                    }
                }
                None => {
                    tracing::info!("{}: new job {}", file.display(), job.name);
                    self.slots.insert(file.clone(), new_slot(text, job));
                    fresh.push(file.clone());
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .slots
            .keys()
            .filter(|f| !files.contains(f))
            .cloned()
            .collect();
        for file in gone {
            let Some(slot) = self.slots.get_mut(&file) else {
                continue;
            };
            if slot.running {
                tracing::info!(
                    "{}: job {} removed; it stops after its current run",
                    file.display(),
                    slot.job.name
                );
                slot.removed = true;
                slot.next = None;
            } else {
                tracing::info!("{}: job {} removed", file.display(), slot.job.name);
                self.metrics.remove_job(&slot.job.name);
                self.slots.remove(&file);
            }
        }
        for file in fresh {
            self.plan_first_fire(&file, now).await;
        }
        self.refresh_servers();
        self.publish();
    }

    /// One connection limit per server, the smallest any of its jobs asks for.
    fn refresh_servers(&mut self) {
        let mut wanted: HashMap<String, usize> = HashMap::new();
        for s in self
            .slots
            .values()
            .filter(|s| s.job.schedule.is_some() && !s.removed)
        {
            if let Some(n) = s.job.remote.max_connections {
                let e = wanted.entry(server_key(&s.job)).or_insert(n);
                *e = (*e).min(n);
            }
        }
        for (key, n) in wanted {
            // A limit that changed on reload applies to runs started from now on.
            if self.servers.get(&key).is_none_or(|(had, _)| *had != n) {
                self.servers.insert(key, (n, Arc::new(Semaphore::new(n))));
            }
        }
    }

    /// The environment variables that hold any job's password, hidden from hooks.
    fn secret_vars(&self) -> Vec<String> {
        self.slots
            .values()
            .filter_map(|s| match &s.job.remote.password {
                crate::job::PasswordSource::Env(var) => Some(var.clone()),
                _ => None,
            })
            .collect()
    }

    /// Metrics and systemd status that describe the whole daemon.
    fn publish(&self) {
        let jobs = self
            .slots
            .values()
            .filter(|s| s.job.schedule.is_some())
            .count();
        self.metrics.set_jobs(jobs);
        for s in self.slots.values() {
            self.metrics.set_next_run(&s.job.name, s.next);
        }
        notify::status(&format!("{jobs} scheduled jobs"));
    }

    /// A second signal (or the grace period and then some ran out): abandon
    /// what is in flight and wait for the runs to record their state.
    async fn abort_now(&self, done_rx: &mut mpsc::UnboundedReceiver<Done>) {
        tracing::warn!("abandoning the transfers in flight");
        self.abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
        while done_rx.try_recv().is_ok() {}
    }
}

/// The key of a job's server for shared connection limits.
fn server_key(job: &Job) -> String {
    format!(
        "{}:{}",
        job.remote.host.to_ascii_lowercase(),
        job.remote.port
    )
}

/// One run of a job in the daemon: the engine, then logs, metrics and hooks.
async fn run_once(
    job: &Job,
    opts: &RunOptions,
    stop: CancellationToken,
    metrics: &metrics::Metrics,
    secrets: &[String],
) {
    metrics.run_started(&job.name);
    let started = std::time::Instant::now();
    let finished = engine::run(job, opts, stop.clone()).await;
    if let Err(Error::State(crate::state::StateError::Locked { .. })) = &finished.report {
        // `ftpsync run` by hand (or another daemon) has the job: not a failure.
        tracing::warn!("skipped: another ftpsync is running this job");
        metrics.run_not_started(&job.name);
        metrics.run_skipped(&job.name);
        return;
    }
    let record = finished.record;
    match &finished.report {
        Ok(report) => {
            for p in &report.problems {
                tracing::warn!("{}: {}", p.path, p.message);
            }
            for u in &report.skipped_untrusted {
                tracing::warn!("skipped {u}/: its listing failed, nothing below it was changed");
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
    for e in &record.errors {
        tracing::warn!("{e}");
    }
    tracing::info!(
        outcome = record.outcome.as_str(),
        exit_code = record.exit_code,
        trigger = record.trigger.as_str(),
        "run finished: {} uploaded, {} downloaded, {} deleted, {} failed, {} bytes, {:.1}s",
        record.uploaded,
        record.downloaded,
        record.deleted,
        record.failed,
        record.bytes,
        started.elapsed().as_secs_f64()
    );
    metrics.run_finished(
        &job.name,
        &metrics::RunMetrics {
            outcome: record.outcome,
            files: record.uploaded + record.downloaded,
            bytes: record.bytes,
            duration: started.elapsed(),
            finished_at: record.finished_at,
        },
    );
    // A run stopped because the daemon is shutting down gets no hook.
    if stop.is_cancelled() {
        return;
    }
    let hook = if record.outcome == RunOutcome::Success {
        job.on_success.as_ref()
    } else {
        job.on_failure.as_ref()
    };
    let Some(argv) = hook else { return };
    let report = write_report(job, &record).await;
    let ctx = hooks::HookContext {
        job: job.name.clone(),
        outcome: record.outcome,
        exit_code: record.exit_code,
        trigger: record.trigger.as_str().to_owned(),
        started_at: record.started_at,
        finished_at: record.finished_at,
        uploaded: record.uploaded,
        downloaded: record.downloaded,
        deleted: record.deleted,
        failed: record.failed,
        bytes: record.bytes,
        report,
    };
    let env = hooks::hook_env(&ctx);
    let outcome = hooks::run_hook_hiding(argv, &env, secrets, job.hook_timeout, &stop).await;
    if outcome.is_ok() {
        tracing::info!("hook {}: {outcome}", argv[0]);
    } else {
        tracing::warn!("hook {} failed: {outcome}", argv[0]);
    }
}

/// Writes the run's history entry as JSON beside the state database, for
/// hooks (`FTPSYNC_REPORT`). Returns its path, or None if it could not be written.
async fn write_report(job: &Job, record: &crate::state::RunRecord) -> Option<PathBuf> {
    let mut path = job.state_path.clone().into_os_string();
    path.push(".last-run.json");
    let path = PathBuf::from(path);
    let text = crate::history::history_json(std::slice::from_ref(record));
    let target = path.clone();
    let written = tokio::task::spawn_blocking(move || std::fs::write(&target, text)).await;
    match written {
        Ok(Ok(())) => Some(path),
        _ => {
            tracing::warn!("could not write {}", path.display());
            None
        }
    }
}
