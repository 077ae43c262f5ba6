//! One run of a job, top to bottom: lock, connect, scan both sides and read
//! the state, plan, check the safety limits, execute, record. [`run`] is the
//! one entry point of `ftpsync run` and of the daemon: it may be called many
//! times at once in one process (each call has its own pool, state and
//! secrets; nothing is process-global), and it stops cleanly when its
//! cancellation token fires. `ftpsync plan` calls [`prepare`] and stops
//! after planning.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use chrono::{DateTime, Utc};

use crate::error::{Error, exit};
use crate::events::{Event, Events};
use crate::exec::{self, ExecInput, RunReport, StopReason, StopSignals};
use crate::ftp::conn::{ConnectOptions, FtpConn, HashCommand, RateLimit};
use crate::ftp::pool::Pool;
use crate::ftp::reply::{FtpFailure, ReplyClass};
use crate::ftp::scan::{self, ScanInput};
use crate::job::{CompareMode, DeleteLimit, Direction, Job, StateLocation, VerifyMode};
use crate::local;
use crate::model::RelPath;
use crate::model::{Kind, LocalTree, PathInterner, Problem, RemoteTree};
use crate::plan::{self, Op, Plan, PlanItem, PlanOptions};
use crate::state::remote::{self, Fetched, RemoteState};
use crate::state::{RunOutcome, RunRecord, RunTrigger, StateDb, StateRecord, StateWriter};
use crate::store::FtpStore;

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Allow more deletes than `safety.max_delete` for this run.
    pub force_delete: bool,
    /// Once the run's token fires, how long items in flight may take to
    /// finish before they are abandoned.
    pub grace: Duration,
    /// Fired to abandon items in flight at once (a second signal).
    pub abort: CancellationToken,
    /// Connections to this job's server shared with other runs (the
    /// daemon's `remote.max_connections`).
    pub server_limit: Option<Arc<Semaphore>>,
    /// What started the run, for the history.
    pub trigger: RunTrigger,
    /// The number of the signal that fired the run's token, if one did: a
    /// stopped run's exit code is 128 + it (SIGTERM's when unknown).
    pub stop_signal: Arc<std::sync::atomic::AtomicI32>,
    /// Bytes per second for the run's transfers, over all its connections
    /// (`--bwlimit`); overrides the job's `bwlimit`.
    pub bwlimit: Option<u64>,
    /// Where the run reports scan progress, the plan and each item as it
    /// happens (default: nowhere).
    pub events: Events,
}

/// Everything known after scanning and planning.
pub struct Prepared {
    pub job: Job,
    pub root: String,
    pub local: LocalTree,
    pub remote: RemoteTree,
    pub state: BTreeMap<RelPath, StateRecord>,
    pub plan: Plan,
    pub remote_temps: Vec<RelPath>,
    pub local_temps: Vec<RelPath>,
    pub pending: Vec<crate::state::Partial>,
    pub pool: Arc<Pool>,
    pub db: Option<StateDb>,
    /// Set when the state belonged to another server/root/direction and was dropped.
    pub state_reset: bool,
    /// A delete-limit problem, if the plan exceeds it.
    pub delete_limit: Option<String>,
    /// The server's hash command, if it offers one: files the state does
    /// not know are compared with it (see [`adopt_by_server_hash`]).
    pub hash_command: Option<HashCommand>,
    /// What adoption by time learned (MDTM asked, the server's offset).
    pub adoption: crate::adoption::Adoption,
    /// With `state: remote`: where the state lives on the server, for the
    /// saves during the run.
    pub remote_state: Option<RemoteState>,
}

impl Prepared {
    /// Everything the scans skipped or could not read.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.local
            .problems
            .iter()
            .chain(self.remote.problems.iter())
    }
}

fn binding(job: &Job, root: &str) -> String {
    if job.state_location == StateLocation::Remote {
        // The state lives under the root it describes, and each runner checks
        // the repository out somewhere else: the local path is not part of it.
        return format!("{:?}|remote-state|{root}", job.direction);
    }
    format!(
        "{:?}|{}:{}|{}|{}|{}",
        job.direction,
        job.remote.host,
        job.remote.port,
        job.remote.user,
        root,
        job.local_root.display()
    )
}

/// Connects, scans and plans. `for_run` opens (and creates) the state
/// database under the job's lock; otherwise it is only read if present.
/// (The caller holds the lock: see [`crate::state::lock`].) `force_delete`
/// lifts `safety.max_delete`, so the plan shows no delete-limit problem.
///
/// With `state: remote`, `for_run` takes the job's lock on the server and
/// replaces the working copy with the server's state; a plan reads the
/// server's state from a temporary copy.
pub async fn prepare(job: &Job, for_run: bool, force_delete: bool) -> Result<Prepared, Error> {
    let mut remote = None;
    let prepared = prepare_limited(
        job,
        for_run,
        force_delete,
        None,
        None,
        &Events::default(),
        &mut remote,
    )
    .await;
    if let Some(r) = remote {
        // A caller that plans for a run ([`adopt`]) goes through the engine's
        // own paths; here nothing is kept on the server.
        r.state.unlock().await;
    }
    prepared
}

/// What a run holds of the state on the server (`state: remote`).
struct RemoteRun {
    state: RemoteState,
    /// The working copy holds the server's state (or the server has none),
    /// so it may be written back.
    loaded: bool,
}

async fn prepare_limited(
    job: &Job,
    for_run: bool,
    force_delete: bool,
    server_limit: Option<Arc<Semaphore>>,
    bwlimit: Option<u64>,
    events: &Events,
    remote_run: &mut Option<RemoteRun>,
) -> Result<Prepared, Error> {
    let server = format!("{}:{}", job.remote.host, job.remote.port);
    let password = job
        .remote
        .password()
        .map_err(|m| Error::Usage(format!("{}: {m}", job.file.display())))?;
    let opts = ConnectOptions {
        host: job.remote.host.clone(),
        port: job.remote.port,
        user: job.remote.user.clone(),
        password,
        tls: job.remote.tls,
        trust: crate::ftp::tls::TrustSettings {
            ca_file: job.remote.tls_ca_file.clone(),
            fingerprint: job.remote.tls_fingerprint,
            insecure_skip_verify: job.remote.tls_insecure_skip_verify,
        },
        loaded_trust: Default::default(),
        passive: job.remote.passive,
        timeout: job.timeout,
        pipelining: Default::default(),
        stat_listing: Default::default(),
        chmod: Default::default(),
        tls_versions: Default::default(),
        list_modes: job.direction == Direction::Pull
            && job.modes.permissions == crate::job::Permissions::Preserve,
        rate: RateLimit::new(bwlimit.or(job.bwlimit)),
    };
    for w in crate::ftp::tls::risk_warnings(&opts.host, &opts.user, opts.tls, &opts.trust) {
        tracing::warn!("{w}");
    }

    // The state on the server has a connection of its own, so that saving
    // it during the run never waits behind the transfers.
    let remote_mode = job.state_location == StateLocation::Remote;
    let state_pool = remote_mode.then(|| {
        Arc::new(
            Pool::new(opts.clone(), 1)
                .with_give_up_after(job.retry.give_up_after)
                .with_server_limit(server_limit.clone()),
        )
    });
    let pool = Arc::new(
        Pool::new(opts.clone(), job.concurrency)
            .with_give_up_after(job.retry.give_up_after)
            .with_server_limit(server_limit.clone()),
    );
    // Connections logged in ahead of time do not outlive a preparation
    // that fails.
    let halt_on_error = pool.halt_on_drop();

    // The state is opened and checked (SQLite's quick_check reads it all)
    // while the first connection logs in: a damaged or too-new database
    // still stops the run before anything on the server is changed, and
    // its error comes first. The state on the server is read once connected.
    //
    // A run with no state yet (no file, or an empty one) most likely has
    // the whole tree to transfer: once the first login has succeeded, the
    // others start at once, beside the state's creation (its first writes
    // wait for the disk) rather than after it.
    let path = job.state_path.clone();
    let no_state_yet = for_run
        && !remote_mode
        && tokio::fs::metadata(&path)
            .await
            .map_or(true, |m| m.is_file() && m.len() == 0);
    let mut warmed = false;
    // With an absolute root the state's binding is known before the login,
    // and the records are read beside it where the state is bound to it (a
    // state bound elsewhere is not read at all: a plan ignores it and a
    // run resets it). Otherwise they are read once PWD gives the root.
    let expected = given_absolute_root(&job.remote.root).map(|root| binding(job, &root));
    let ((db, preloaded), (first_permit, first)) = {
        let state_open = async {
            if remote_mode {
                Ok((None, None))
            } else {
                blocking(move || {
                    let opened = StateDb::open_reading(&path, for_run, |db| match &expected {
                        Some(bind) if db.binding()?.as_deref() == Some(bind.as_str()) => {
                            Ok(Some(db.load()?))
                        }
                        _ => Ok(None),
                    })?;
                    Ok(match opened {
                        Some((db, records)) => (Some(db), records),
                        None => (None, None),
                    })
                })
                .await
            }
        };
        // First connection: login problems end the run here with a clear message.
        let first_login = async {
            let permit = match &server_limit {
                Some(s) => Arc::clone(s).acquire_owned().await.ok(),
                None => None,
            };
            (permit, connect_first(&opts, job, &server).await)
        };
        tokio::pin!(state_open, first_login);
        tokio::select! {
            // A bad state does not wait for a login that may be retrying.
            db = &mut state_open => (db?, first_login.await),
            login = &mut first_login => {
                if no_state_yet && login.1.is_ok() {
                    pool.warm(job.concurrency.saturating_sub(1));
                    warmed = true;
                }
                (state_open.await?, login)
            }
        }
    };
    let mut first = first?;
    tracing::debug!("phase: logged in, state opened");
    let root = absolute_root(&mut first, &job.remote.root)
        .await
        .map_err(|failure| Error::Connect {
            server: server.clone(),
            failure,
        })?;
    let hash_command = first.features.hash;
    let has_mdtm = first.features.mdtm;
    // Only then is it worth a pass over the state for the scan's small
    // directories (see `ScanInput::small_dirs`).
    let may_stat = first.may_list_over_control();
    pool.put_idle(first, first_permit);
    if job.verify == VerifyMode::Hash && hash_command.is_none() {
        return Err(Error::Usage(format!(
            "{}: `verify: hash`, but {server} offers no hash command (its FEAT lists none of HASH, XSHA256, XSHA1, XMD5). Nothing was changed. Use `verify: auto` to check sizes only on this server",
            job.file.display()
        )));
    }

    let remote_state = state_pool.map(|state_pool| {
        let store = FtpStore::new(state_pool, job.retry, job.timeout, root.clone());
        RemoteState::new(store, &job.name, job.state_path.clone())
    });
    // A plan reads the server's state from a copy of its own, removed after.
    let plan_copy = match &remote_state {
        Some(rs) if for_run => {
            rs.lock().await?;
            let slot = remote_run.insert(RemoteRun {
                state: rs.clone(),
                loaded: false,
            });
            slot.state.load_working_copy().await?;
            slot.loaded = true;
            None
        }
        Some(_) => Some(tempfile::tempdir().map_err(|e| Error::Io(e.to_string()))?),
        None => None,
    };
    let db = match (&remote_state, &plan_copy) {
        (Some(rs), Some(dir)) => {
            let copy = dir.path().join("state.db");
            let fetched = rs.fetch(&copy).await;
            rs.close().await;
            match fetched? {
                Fetched::Found => blocking(move || Ok(StateDb::open(&copy, false)?)).await?,
                Fetched::Absent => None,
            }
        }
        (Some(rs), None) => {
            let path = rs.working().to_owned();
            blocking(move || Ok(StateDb::open(&path, true)?)).await?
        }
        (None, _) => db,
    };

    let bind = binding(job, &root);
    let (db, state, pending, state_reset) =
        blocking(move || load_state(db, preloaded, &bind, for_run)).await?;
    let db = if plan_copy.is_some() { None } else { db };
    drop(plan_copy);
    tracing::debug!("phase: state loaded ({} records)", state.len());
    let job = &Job {
        compare: effective_compare(job, &state),
        ..job.clone()
    };

    // The scan lists each directory on its own: log in, ahead of it, as
    // many connections as the last run's directories can use. With no
    // state (a first run, or after a reset) a run has the whole tree to
    // transfer, most likely, and its connections log in while the root is
    // listed; a plan alone opens only what the scan asks for.
    let dirs = state.values().filter(|r| r.kind == Kind::Dir).count();
    let ahead = if state.is_empty() && for_run {
        job.concurrency
    } else {
        dirs
    };
    if !warmed {
        pool.warm(ahead.min(job.concurrency.saturating_sub(1)));
    }

    // Scan both sides at once: the local walk on a blocking thread, the
    // remote one over the pool. Both take the state's copy of a path it knows.
    // The interner looks paths up in the state's map itself (no list of
    // its own): the map is shared until both scans are done.
    let state = Arc::new(state);
    let paths = Arc::new(PathInterner::over(Arc::clone(&state)));
    let filters = job.filters.clone();
    let local_root = job.local_root.clone();
    let local_paths = Arc::clone(&paths);
    let local_scan =
        tokio::task::spawn_blocking(move || local::scan(&local_root, &filters, &local_paths));
    let scan_input = Arc::new(ScanInput {
        root: root.clone(),
        filters: job.filters.clone(),
        retry: job.retry,
        events: events.clone(),
        expected: state
            .iter()
            .filter(|(_, r)| r.kind == Kind::Dir)
            .map(|(p, _)| p.clone())
            .collect(),
        small_dirs: if may_stat {
            scan::small_dirs(&state, |r| r.kind == Kind::Dir)
        } else {
            Default::default()
        },
        keep_modes: job.direction == Direction::Pull
            && job.modes.permissions == crate::job::Permissions::Preserve,
    });
    let (mut remote, remote_temps) =
        scan::scan(Arc::clone(&pool), Arc::clone(&scan_input), paths).await;
    events.emit(Event::Scanned {
        side: crate::model::Side::Remote,
        entries: remote.entries.len() as u64,
    });
    tracing::debug!("phase: remote scanned ({} entries)", remote.entries.len());
    let (mut local, local_temps) = local_scan
        .await
        .map_err(|e| Error::Io(format!("local scan failed: {e}")))?;
    tracing::debug!("phase: local scanned ({} entries)", local.entries.len());
    // Both scans dropped their interner: the map is ours again (a copy
    // only if something unforeseen still held it).
    let state = Arc::unwrap_or_clone(state);
    events.emit(Event::Scanned {
        side: crate::model::Side::Local,
        entries: local.entries.len() as u64,
    });
    for p in local.problems.iter().chain(remote.problems.iter()) {
        events.emit(Event::Warning(p));
    }
    let problems_before_confirm = remote.problems.len();

    if job.compare == CompareMode::Hash {
        fill_hashes(job, &mut local, &state).await;
    }
    let time_input = crate::adoption::TimeInput {
        pool: &pool,
        retry: job.retry,
        root: &root,
        compare: job.compare,
        mdtm: has_mdtm,
    };
    let adoption = crate::adoption::by_time(&time_input, &local, &remote, &state).await;
    let mut verdicts = adoption.verdicts.clone();
    if let Some(cmd) = hash_command {
        let todo = unsettled_by_time(job.compare, &local, &remote, &state, &verdicts);
        let same = adopt_by_server_hash(&pool, job, &root, cmd, &mut local, todo).await;
        verdicts.extend(same.into_iter().map(|p| (p, Some(plan::Reason::SameHash))));
    }

    // Refuse the dangerous cases before planning anything.
    match job.direction {
        Direction::Push => {
            if !local.root_exists {
                return Err(Error::Usage(format!(
                    "local path {} does not exist or is not a directory; nothing was changed",
                    job.local_root.display()
                )));
            }
            if job.delete && local.entries.is_empty() && remote.file_count() + state.len() > 0 {
                return Err(Error::Safety(format!(
                    "local path {} is empty and delete: true would remove everything under {root} on the server; refusing (nothing was changed)",
                    job.local_root.display()
                )));
            }
        }
        Direction::Pull => {
            if !remote.root_exists {
                return Err(Error::Usage(format!(
                    "remote.root {root} does not exist on {server}; nothing was changed. Check remote.root in {} (a path without a leading / starts at the login directory)",
                    job.file.display()
                )));
            }
            if job.delete
                && remote.entries.is_empty()
                && remote.untrusted.is_empty()
                && local.file_count() + state.len() > 0
            {
                return Err(Error::Safety(format!(
                    "remote root {root} on {server} lists as empty and delete: true would remove everything under {}; refusing (nothing was changed)",
                    job.local_root.display()
                )));
            }
        }
    }

    let options = PlanOptions {
        direction: job.direction,
        delete: job.delete,
        compare: job.compare,
    };
    let mut plan = plan::plan_verified(&local, &remote, &state, &options, &verdicts);
    if !plan.unconfirmed.is_empty() {
        // Deletes wait on listings that needed a retry, came back empty or came over STAT:
        // list those directories again, and plan with what that says.
        let dirs: Vec<RelPath> = plan.unconfirmed.iter().cloned().collect();
        scan::confirm(Arc::clone(&pool), scan_input, &mut remote, &dirs).await;
        for p in remote.problems.iter().skip(problems_before_confirm) {
            events.emit(Event::Warning(p));
        }
        plan = plan::plan_verified(&local, &remote, &state, &options, &verdicts);
    }
    // `--force-delete` lifts the delete limit (a plan previews that).
    let delete_limit = if force_delete {
        None
    } else {
        check_delete_limit(job, &plan, &state, &local, &remote)
    };
    halt_on_error.disarm();
    Ok(Prepared {
        job: job.clone(),
        root,
        local,
        remote,
        state,
        plan,
        remote_temps,
        local_temps,
        pending,
        pool,
        db,
        state_reset,
        delete_limit,
        hash_command,
        adoption,
        remote_state: if for_run { remote_state } else { None },
    })
}

/// What `compare: auto` means for this run: `hash` when the state is kept
/// on the server (the runners that use it check files out afresh, so times
/// say nothing) or when the state recorded hashes (it was written that
/// way); `mtime` otherwise. The other modes are what they say.
fn effective_compare(job: &Job, state: &BTreeMap<RelPath, StateRecord>) -> CompareMode {
    if job.compare != CompareMode::Auto {
        return job.compare;
    }
    let hashed = state
        .values()
        .any(|r| r.local.as_ref().is_some_and(|l| l.sha256.is_some()));
    if job.state_location == StateLocation::Remote || hashed {
        CompareMode::Hash
    } else {
        CompareMode::Mtime
    }
}

/// The files on both sides that the state does not know and that are the
/// same size but not the same time (by the `verdicts` of adoption by time,
/// else by the planner's rule): what only a hash can settle.
fn unsettled_by_time(
    compare: CompareMode,
    local: &LocalTree,
    remote: &RemoteTree,
    state: &BTreeMap<RelPath, StateRecord>,
    verdicts: &plan::Verdicts,
) -> Vec<RelPath> {
    let mut todo = Vec::new();
    for (p, e) in &local.entries {
        let (Some(lm), Some(rm)) = (
            e.meta.as_ref(),
            remote.entries.get(p).and_then(|r| r.meta.as_ref()),
        ) else {
            continue;
        };
        if state.get(p).is_some_and(|r| r.kind == Kind::File) || rm.size() != Some(lm.size()) {
            continue;
        }
        let same_time = match verdicts.get(p) {
            Some(v) => v.is_some(),
            None => plan::same_content(lm, rm, compare),
        };
        if !same_time {
            todo.push(p.clone());
        }
    }
    todo
}

/// With a server hash command, the files of `todo` (see
/// [`unsettled_by_time`]) are hashed on both sides, and those whose digests
/// match are returned, to be adopted without a transfer. Their local
/// SHA-256 is filled in for the record. A file the server will not hash is
/// simply not in the set (it is transferred, or reported as differing).
async fn adopt_by_server_hash(
    pool: &Arc<Pool>,
    job: &Job,
    root: &str,
    cmd: HashCommand,
    local: &mut LocalTree,
    todo: Vec<RelPath>,
) -> BTreeSet<RelPath> {
    let mut tasks = tokio::task::JoinSet::new();
    for p in todo {
        let (pool, retry) = (Arc::clone(pool), job.retry);
        let (file, abs) = (p.to_local(&job.local_root), p.to_remote(root));
        let len = local
            .entries
            .get(&p)
            .and_then(|e| e.meta.as_ref())
            .map_or(0, |m| m.size());
        let rel = p;
        tasks.spawn(async move {
            let algo = cmd.algo();
            let ours = tokio::task::spawn_blocking(move || local::digests_file(&file, algo));
            let theirs = crate::with_retry!(&pool, &retry, |c| c.hash(&abs, len).await);
            let (Ok(Ok((digest, sha256))), Ok(Some((_, server)))) = (ours.await, theirs) else {
                return None;
            };
            (digest == server).then_some((rel, sha256))
        });
    }
    let mut same = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some((p, sha256))) = done {
            if let Some(m) = local.entries.get_mut(&p).and_then(|e| e.meta.as_mut()) {
                m.sha256 = Some(Box::new(sha256));
            }
            same.insert(p);
        }
    }
    same
}

/// Runs SQLite (or other blocking) work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(format!("state task failed: {e}")))?
}

/// What the state says before a run: its records and journaled partials,
/// bound to this job's server, root and direction. For a run, a state bound
/// elsewhere is reset; for a plan, it is only read and treated as empty.
/// `preloaded`: the records, read from `db` before the binding was known;
/// used if the binding holds.
#[allow(clippy::type_complexity)]
fn load_state(
    mut db: Option<StateDb>,
    preloaded: Option<BTreeMap<RelPath, StateRecord>>,
    bind: &str,
    for_run: bool,
) -> Result<
    (
        Option<StateDb>,
        BTreeMap<RelPath, StateRecord>,
        Vec<crate::state::Partial>,
        bool,
    ),
    Error,
> {
    let mut state_reset = false;
    let state = match db.as_mut() {
        Some(db) if for_run => {
            state_reset = db.bind(bind)?;
            match preloaded {
                // Read before the binding was checked: good if it held.
                Some(records) if !state_reset => records,
                _ => db.load()?,
            }
        }
        Some(db) => {
            if db.binding()?.is_some_and(|b| b != bind) {
                state_reset = true;
                BTreeMap::new()
            } else {
                match preloaded {
                    Some(records) => records,
                    None => db.load()?,
                }
            }
        }
        None => BTreeMap::new(),
    };
    let pending = match &db {
        Some(db) => db.pending()?,
        None => Vec::new(),
    };
    Ok((db, state, pending, state_reset))
}

async fn connect_first(opts: &ConnectOptions, job: &Job, server: &str) -> Result<FtpConn, Error> {
    let mut attempt = 1;
    loop {
        match FtpConn::connect(opts).await {
            Ok(c) => return Ok(c),
            Err(failure) => {
                if failure.class() == ReplyClass::Auth && !failure.too_many_connections() {
                    return Err(Error::Login {
                        server: server.to_owned(),
                        user: job.remote.user.clone(),
                        failure,
                    });
                }
                // A TLS failure on the first connection is mostly a setting
                // that cannot work (implicit FTPS to a plain port): one more
                // try covers a hiccup without making a wrong setting slow.
                let tls_again = !matches!(failure, FtpFailure::Tls(_)) || attempt < 2;
                if !failure.retryable() || !tls_again || attempt >= job.retry.max_attempts {
                    return Err(Error::Connect {
                        server: server.to_owned(),
                        failure,
                    });
                }
                attempt += 1;
                tokio::time::sleep(job.retry.backoff(attempt)).await;
            }
        }
    }
}

/// Makes a relative `remote.root` absolute against the login directory, so
/// the CWDs of the scan cannot change what later paths mean.
async fn absolute_root(c: &mut FtpConn, root: &str) -> Result<String, crate::ftp::FtpFailure> {
    if let Some(root) = given_absolute_root(root) {
        return Ok(root);
    }
    let root = root.trim_end_matches('/');
    let home = c.pwd().await?;
    let home = home.trim_end_matches('/');
    Ok(if root.is_empty() || root == "." {
        if home.is_empty() {
            "/".into()
        } else {
            home.to_owned()
        }
    } else {
        format!("{home}/{root}")
    })
}

/// The job's remote root as [`absolute_root`] gives it, if it is absolute
/// already (known before logging in).
fn given_absolute_root(root: &str) -> Option<String> {
    let root = if root.len() > 1 {
        root.trim_end_matches('/')
    } else {
        root
    };
    root.starts_with('/').then(|| root.to_owned())
}

/// In hash mode, hashes the local files whose time changed but size did not.
async fn fill_hashes(job: &Job, local: &mut LocalTree, state: &BTreeMap<RelPath, StateRecord>) {
    let mut todo = Vec::new();
    for (p, e) in &local.entries {
        if let (Some(m), Some(rec)) = (&e.meta, state.get(p).and_then(|r| r.local.as_ref()))
            && m.size() == rec.size()
            && m.mtime_ns != rec.mtime_ns
        {
            todo.push(p.clone());
        }
    }
    let root = job.local_root.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        todo.into_iter()
            .filter_map(|p| local::sha256_file(&p.to_local(&root)).ok().map(|h| (p, h)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (p, h) in hashed {
        if let Some(m) = local.entries.get_mut(&p).and_then(|e| e.meta.as_mut()) {
            m.sha256 = Some(Box::new(h));
        }
    }
}

/// `safety.max_delete`: the deletes of a plan against the files tracked.
fn check_delete_limit(
    job: &Job,
    plan: &Plan,
    state: &BTreeMap<RelPath, StateRecord>,
    local: &LocalTree,
    remote: &RemoteTree,
) -> Option<String> {
    let deletes = plan.items.iter().filter(|i| i.op == Op::Delete).count() as u64;
    if deletes == 0 {
        return None;
    }
    let tracked = state.values().filter(|r| r.kind == Kind::File).count();
    let target_files = match job.direction {
        Direction::Push => remote.file_count(),
        Direction::Pull => local.file_count(),
    };
    let base = tracked.max(target_files) as u64;
    let (limit, label) = match job.max_delete {
        DeleteLimit::Count(n) => (n, format!("{n} files")),
        DeleteLimit::Percent(p) => (
            ((base as f64) * p / 100.0).floor() as u64,
            format!("{p}% of {base} tracked files"),
        ),
    };
    (deletes > limit).then(|| {
        format!(
            "the plan deletes {deletes} files, more than safety.max_delete allows ({label}); nothing was changed. Check the plan with `ftpsync plan`, then rerun with --force-delete to allow it once"
        )
    })
}

/// Runs `job` once: takes its lock, connects, scans, plans, executes and
/// records. When `cancel` fires (or the job's deadline passes, or the server
/// stays unreachable for `retry.give_up_after`), no new item starts, items
/// in flight get `opts.grace` to finish, temporary files are removed, what
/// finished is recorded, and the report says why it stopped.
///
/// Every run that got the job's lock is recorded in the job's history,
/// whatever its outcome; [`Finished::record`] is that entry.
pub async fn run(job: &Job, opts: &RunOptions, cancel: CancellationToken) -> Finished {
    run_as(job, opts, cancel, Mode::Sync).await
}

/// `ftpsync adopt`: a run that records in the state what is already the
/// same on both sides (by size and time, or by the server's hash command)
/// and changes nothing else: no transfer, no delete, no mkdir. What a run
/// would still do is in [`Finished::left`].
pub async fn adopt(job: &Job, opts: &RunOptions, cancel: CancellationToken) -> Finished {
    run_as(job, opts, cancel, Mode::Adopt).await
}

/// What [`run_locked`] leaves for [`run_as`] to finish with, however far
/// it got.
#[derive(Default)]
struct Held {
    /// The state on the server, once locked.
    remote: Option<RemoteRun>,
    /// The plan's items an adoption left undone.
    left: Vec<crate::plan::PlanItem>,
    /// The state was opened, and checked if it existed.
    checked: bool,
    /// The run's state writer, to record the run with.
    writer: Option<Arc<StateWriter>>,
    /// The run's connections, to close once it is over.
    pool: Option<Arc<Pool>>,
}

/// What a run does with its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Everything.
    Sync,
    /// Only the state-only items (see [`adopt`]).
    Adopt,
}

async fn run_as(job: &Job, opts: &RunOptions, cancel: CancellationToken, mode: Mode) -> Finished {
    let started_at = Utc::now();
    tracing::debug!("phase: run starts");
    let lock = match crate::state::lock(&job.state_path) {
        Ok(l) => l,
        Err(e) => {
            let report = Err(Error::from(e));
            let record = run_record(opts, started_at, &report);
            return Finished {
                record,
                report,
                left: Vec::new(),
            };
        }
    };
    let mut held = Held::default();
    let mut report = run_locked(job, opts, cancel, mode, &mut held).await;
    let Held {
        remote,
        left,
        checked,
        writer,
        pool,
    } = held;
    let mut record = run_record(opts, started_at, &report);
    tracing::debug!("phase: run done");
    // The run's own writer records it, in the connection that wrote its
    // state: one opening and one checkpoint of the database, not two. The
    // goodbyes to the server (written, not waited for) go meanwhile.
    let goodbyes = async {
        if let Some(pool) = pool {
            pool.close().await;
        }
    };
    let recorded = match writer {
        Some(w) => {
            let rec = record.clone();
            let (_, written) = tokio::join!(
                goodbyes,
                tokio::task::spawn_blocking(move || {
                    w.record_run(rec);
                    match Arc::try_unwrap(w) {
                        Ok(w) => w.finish().map(drop),
                        Err(w) => w.flush(),
                    }
                })
            );
            match written {
                Ok(Ok(())) => true,
                // Recorded the usual way below (a failed writer wrote no row).
                Ok(Err(e)) => {
                    tracing::debug!("the run's state writer could not record it: {e}");
                    false
                }
                Err(_) => false,
            }
        }
        None => {
            goodbyes.await;
            false
        }
    };
    // A damaged or too-new database is left as it is.
    if !recorded && !matches!(report, Err(Error::State(_))) {
        let path = job.state_path.clone();
        let rec = record.clone();
        let saved = tokio::task::spawn_blocking(move || -> Result<(), crate::state::StateError> {
            let db = if checked {
                StateDb::reopen(&path)?
            } else {
                StateDb::open(&path, true)?
            };
            if let Some(mut db) = db {
                db.record_run(&rec)?;
            }
            Ok(())
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not record the run in the history: {e}"),
            Err(e) => tracing::warn!("could not record the run in the history: {e}"),
        }
    }
    if let Some(r) = remote {
        if r.loaded
            && let Err(e) = save_remote(&r.state, None).await
        {
            // What the run did is done; the next one re-checks it.
            tracing::error!("{e}");
            record.errors.insert(0, e.to_string());
            if record.exit_code == exit::OK {
                record.outcome = RunOutcome::Partial;
                record.exit_code = exit::PARTIAL;
            }
            if let Ok(rep) = &mut report {
                rep.problems.push(Problem {
                    path: r.state.remote_file(),
                    message: format!(
                        "{e}; what this run did is done, and the next run checks it again"
                    ),
                });
            }
        }
        r.state.unlock().await;
    }
    drop(lock);
    tracing::debug!("phase: history recorded");
    Finished {
        record,
        report,
        left,
    }
}

/// Writes the working copy back to the server: a snapshot taken through
/// the run's writer while it runs, or of the closed working copy after.
async fn save_remote(rs: &RemoteState, writer: Option<&Arc<StateWriter>>) -> Result<(), Error> {
    let snapshot = remote::sibling(rs.working(), ".snapshot");
    remote::remove_db_files(&snapshot);
    let to = snapshot.clone();
    let written = match writer {
        Some(w) => {
            let w = Arc::clone(w);
            blocking(move || Ok(w.snapshot(to)?)).await
        }
        None => {
            let working = rs.working().to_owned();
            blocking(move || {
                let db = StateDb::open(&working, true)?.ok_or_else(|| {
                    Error::Io(format!("the working copy {} is gone", working.display()))
                })?;
                Ok(db.snapshot(&to)?)
            })
            .await
        }
    };
    let saved = match written {
        Ok(()) => rs.save(&snapshot).await.map_err(Error::from),
        Err(e) => Err(e),
    };
    remote::remove_db_files(&snapshot);
    saved
}

/// Saves the state to the server every `every` while a run executes, when
/// something changed since the last save, so that a run killed midway keeps
/// what it did. A failed save is logged; the next one (or the final one)
/// tries again.
async fn save_periodically(
    rs: RemoteState,
    writer: Arc<StateWriter>,
    every: Duration,
    done: CancellationToken,
) {
    let mut saved = writer.sent();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = done.cancelled() => return,
        }
        let sent = writer.sent();
        if sent == saved {
            continue;
        }
        match save_remote(&rs, Some(&writer)).await {
            Ok(()) => {
                tracing::debug!("state saved on the server ({})", rs.remote_file());
                saved = sent;
            }
            Err(e) => tracing::warn!("{e}; trying again later"),
        }
    }
}

/// What [`run`] returns: the report (or the error that ended the run) and
/// the history entry it wrote.
#[derive(Debug)]
pub struct Finished {
    pub record: RunRecord,
    pub report: Result<RunReport, Error>,
    /// What [`adopt`] left for the next run (transfers, deletes, conflicts),
    /// in plan order; empty for a normal run.
    pub left: Vec<crate::plan::PlanItem>,
}

/// A run that ended in `error` before the engine got to it (a job file that
/// does not load): nothing was locked, touched or recorded.
pub fn failed_before_start(started_at: DateTime<Utc>, error: Error) -> Finished {
    let report = Err(error);
    let record = run_record(&RunOptions::default(), started_at, &report);
    Finished {
        record,
        report,
        left: Vec::new(),
    }
}

/// The history entry of a run: counts, outcome, exit code, first errors.
fn run_record(
    opts: &RunOptions,
    started_at: DateTime<Utc>,
    report: &Result<RunReport, Error>,
) -> RunRecord {
    let mut rec = RunRecord {
        started_at,
        finished_at: Utc::now(),
        trigger: opts.trigger,
        outcome: RunOutcome::Success,
        exit_code: exit::OK,
        uploaded: 0,
        downloaded: 0,
        deleted: 0,
        mkdirs: 0,
        rmdirs: 0,
        adopted: 0,
        failed: 0,
        bytes: 0,
        errors: Vec::new(),
    };
    let r = match report {
        Ok(r) => r,
        Err(e) => {
            rec.outcome = match e {
                Error::Safety(_) => RunOutcome::Refused,
                _ => RunOutcome::Failed,
            };
            rec.exit_code = e.exit_code();
            rec.errors.push(e.to_string());
            return rec;
        }
    };
    let n = |op| r.done(op) as u64;
    rec.uploaded = n(Op::Upload);
    rec.downloaded = n(Op::Download);
    rec.deleted = n(Op::Delete);
    rec.mkdirs = n(Op::Mkdir);
    rec.rmdirs = n(Op::Rmdir);
    rec.adopted = n(Op::Adopt);
    rec.failed = r.failed().count() as u64;
    rec.bytes = r.bytes;
    for o in r.failed().take(crate::state::MAX_RUN_ERRORS) {
        rec.errors.push(format!(
            "FAILED {} {}: {}",
            exec::op_label(&o.item),
            o.item.path,
            o.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
        ));
    }
    (rec.outcome, rec.exit_code) = match r.stopped {
        Some(StopReason::Requested) => {
            let sig = opts.stop_signal.load(std::sync::atomic::Ordering::Relaxed);
            // The shell's convention for a process ended by a signal: 128 + its number.
            (RunOutcome::Stopped, 128 + if sig > 0 { sig } else { 15 })
        }
        Some(StopReason::Deadline(_)) => (RunOutcome::Stopped, exit::PARTIAL),
        Some(StopReason::Unreachable(_)) => (RunOutcome::Failed, exit::CONNECT),
        None if rec.failed > 0
            || !r.skipped_untrusted.is_empty()
            || r.kept.iter().any(|i| i.reason.withholds_delete()) =>
        {
            (RunOutcome::Partial, exit::PARTIAL)
        }
        None => (RunOutcome::Success, exit::OK),
    };
    if let Some(stop) = crate::report::stop_text(r) {
        rec.errors.insert(0, stop);
    }
    rec
}

/// The job's recorded runs, newest first (empty if it never ran).
pub async fn history(job: &Job, limit: usize) -> Result<Vec<RunRecord>, Error> {
    let path = job.state_path.clone();
    let runs = tokio::task::spawn_blocking(move || -> Result<Vec<RunRecord>, Error> {
        Ok(match StateDb::open(&path, false)? {
            Some(db) => db.history(limit)?,
            None => Vec::new(),
        })
    })
    .await
    .map_err(|e| Error::Io(e.to_string()))??;
    Ok(runs)
}

async fn run_locked(
    job: &Job,
    opts: &RunOptions,
    cancel: CancellationToken,
    mode: Mode,
    held: &mut Held,
) -> Result<RunReport, Error> {
    let signals = StopSignals {
        stop: cancel.child_token(),
        abort: opts.abort.child_token(),
        grace: opts.grace,
        deadline: Arc::default(),
    };
    // The deadline is a stop with no grace: what is in flight is abandoned.
    let deadline_hit = Arc::clone(&signals.deadline);
    let _deadline = job.deadline.map(|limit| {
        let signals = signals.clone();
        let hit = Arc::clone(&deadline_hit);
        let task = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            hit.store(true, std::sync::atomic::Ordering::Relaxed);
            signals.stop.cancel();
        });
        AbortOnDrop(task)
    });
    let reason = |pool_gave_up: bool| {
        if pool_gave_up {
            StopReason::Unreachable(job.retry.give_up_after)
        } else if deadline_hit.load(std::sync::atomic::Ordering::Relaxed) {
            StopReason::Deadline(job.deadline.unwrap_or_default())
        } else {
            StopReason::Requested
        }
    };
    let mut prepared = tokio::select! {
        p = prepare_limited(job, true, opts.force_delete, opts.server_limit.clone(), opts.bwlimit, &opts.events, &mut held.remote) => p?,
        _ = signals.stop.cancelled() => {
            return Ok(RunReport { stopped: Some(reason(false)), ..RunReport::default() });
        }
    };
    // Prepared for a run: the state was opened, and checked if it existed.
    held.checked = true;
    if mode == Mode::Adopt {
        let (kept, rest) = std::mem::take(&mut prepared.plan.items)
            .into_iter()
            .partition(|i| matches!(i.op, Op::Adopt | Op::Forget));
        prepared.plan.items = kept;
        prepared.plan.create_target_root = false;
        prepared.delete_limit = None;
        // Nothing on either side is touched, not even leftover temporary files.
        prepared.remote_temps.clear();
        prepared.local_temps.clear();
        held.left = rest;
    }
    let pool = Arc::clone(&prepared.pool);
    held.pool = Some(Arc::clone(&pool));
    let mut report = execute_prepared(prepared, opts, signals.clone(), &mut held.writer).await?;
    // A stop that came when everything was already done changed nothing.
    let cut_short =
        report.not_started > 0 || !report.abandoned.is_empty() || report.failed().next().is_some();
    let asked = signals.stop.is_cancelled() || signals.abort.is_cancelled();
    if pool.gave_up() || (asked && cut_short) {
        report.stopped = Some(reason(pool.gave_up()));
    }
    Ok(report)
}

/// Aborts a helper task when the run it belongs to ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Executes a prepared plan and records the results. The state's writer
/// is left in `keep` for the caller to record the run with.
async fn execute_prepared(
    mut p: Prepared,
    opts: &RunOptions,
    signals: StopSignals,
    keep: &mut Option<Arc<StateWriter>>,
) -> Result<RunReport, Error> {
    if let Some(msg) = &p.delete_limit
        && !opts.force_delete
    {
        p.pool.close().await;
        return Err(Error::Safety(msg.clone()));
    }
    opts.events.emit(Event::Planned(&p.plan));
    let problems: Vec<Problem> = p.problems().cloned().collect();
    let skipped_untrusted = p.plan.skipped_untrusted.clone();
    let kept: Vec<PlanItem> = p
        .plan
        .items
        .iter()
        .filter(|i| i.op == Op::Keep)
        .cloned()
        .collect();
    let db =
        p.db.take()
            .ok_or_else(|| Error::Io("state database not open".into()))?;
    let server =
        crate::state::server_key(&p.job.remote.user, &p.job.remote.host, p.job.remote.port);
    let key = server.clone();
    let (db, restart_refused) = blocking(move || {
        let refused = db.restart_refused(&key)?;
        Ok((db, refused))
    })
    .await?;
    let writer = Arc::new(StateWriter::start(db));
    *keep = Some(Arc::clone(&writer));
    let mut input = ExecInput {
        job: p.job.clone(),
        root: p.root.clone(),
        local: std::mem::take(&mut p.local),
        remote: std::mem::take(&mut p.remote),
        state: std::mem::take(&mut p.state),
        resume: Default::default(),
        events: opts.events.clone(),
        server,
        restart_refused,
    };
    let (temps_removed, resume) = exec::sort_out_temps(
        &p.pool,
        &input,
        &p.plan,
        &p.remote_temps,
        &p.pending,
        &p.local_temps,
        &writer,
    )
    .await;
    input.resume = resume;
    let saving = CancellationToken::new();
    let saver = p.remote_state.clone().map(|rs| {
        tokio::spawn(save_periodically(
            rs,
            Arc::clone(&writer),
            p.job.state_save_interval,
            saving.clone(),
        ))
    });
    tracing::debug!("phase: planned ({} items)", p.plan.items.len());
    let mut report = exec::execute(
        input,
        &p.plan,
        Arc::clone(&p.pool),
        Arc::clone(&writer),
        signals,
    )
    .await;
    tracing::debug!("phase: executed");
    saving.cancel();
    if let Some(saver) = saver {
        let _ = saver.await;
    }
    report.temps_removed += temps_removed;
    report.problems = problems;
    report.skipped_untrusted = skipped_untrusted.into_iter().collect();
    report.kept = kept;
    // Everything the run did is committed before its outcome is known (a
    // failure to write it is the run's). The caller closes the connections
    // while it records the run.
    blocking(move || Ok(writer.flush()?)).await?;
    tracing::debug!("phase: state written");
    Ok(report)
}
