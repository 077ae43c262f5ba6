//! Runs a [`Plan`] through the two [`crate::store`]s: mkdirs level by level,
//! then the transfers concurrently, then (only if nothing failed) deletes and
//! rmdirs, then the state-only items. Every finished item is sent to the
//! state writer at once, so an interrupted run resumes where it stopped. How
//! each side does an operation (FTP replies, REST, pipelining, local I/O) is
//! the stores' business; the transfer policy (temporary name, resume with an
//! overlap check, verification, placing, the record) is decided here.
//!
//! Uploads go to a temporary name in the target directory and are renamed
//! over the final name only after the transfer and a size check succeed;
//! downloads do the same on the local disk. A crash therefore never leaves a
//! partial file under a real name; leftover temporary files are removed by
//! the next run.
//!
//! A run can be stopped ([`StopSignals`]): no new item starts, items in
//! flight get a grace period to finish and are then abandoned, deletes are
//! not run, and the temporary files of abandoned transfers are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use async_trait::async_trait;

use crate::ftp::FtpFailure;
use crate::ftp::conn::HashAlgo;
use crate::ftp::pool::Pool;
use crate::job::{CompareMode, Job, VerifyMode};
use crate::local::{mtime_ns, temp_name};
use crate::model::RelPath;
use crate::model::RemoteTime;
use crate::model::Side;
use crate::model::{Kind, LocalMeta, LocalTree, RemoteMeta, RemoteTree};
use crate::plan::{Op, Plan, PlanItem};
use crate::stage::{Stage, Stages};
use crate::state::{Partial, Restart, StateChange, StateRecord, StateWriter};
use crate::store::{Attempt, FtpStore, LocalStore, RemoteSession, Resume, SetMeta, Store, Stored};
use chrono::Timelike;

/// Everything the executor reads.
pub struct ExecInput {
    pub job: Job,
    /// Absolute remote root.
    pub root: String,
    pub local: LocalTree,
    pub remote: RemoteTree,
    pub state: BTreeMap<RelPath, StateRecord>,
    /// Partial transfers of an interrupted run to resume, by path (temporary file path).
    pub resume: BTreeMap<RelPath, String>,
    /// Where each item's start and end are reported.
    pub events: crate::events::Events,
    /// The server as the state names it ([`crate::state::server_key`]).
    pub server: String,
    /// The directions in which the server refused a resume in an earlier
    /// run: this run does not try them.
    pub restart_refused: BTreeSet<Restart>,
}

/// How one item ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub item: PlanItem,
    pub error: Option<FtpFailure>,
}

/// How a run is asked to stop. Cheap to clone; the default never fires.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Fired to stop: no new item starts, and items in flight get `grace`
    /// to finish before they are abandoned.
    pub stop: CancellationToken,
    /// Fired to abandon the items in flight at once.
    pub abort: CancellationToken,
    pub grace: Duration,
    /// Set when the stop is the run's deadline: no grace, and partial
    /// transfers large enough to resume stay journaled for the next run.
    pub deadline: Arc<std::sync::atomic::AtomicBool>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub outcomes: Vec<Outcome>,
    /// Deletes and rmdirs not run because something failed earlier.
    pub skipped_deletes: Vec<PlanItem>,
    pub bytes: u64,
    pub temps_removed: usize,
    /// Why the run stopped before its end, if it did.
    pub stopped: Option<StopReason>,
    /// Items the stop kept from starting.
    pub not_started: usize,
    /// Items in flight when the stop's grace period ran out.
    pub abandoned: Vec<PlanItem>,
    /// Problems the scans reported (unreadable entries, refused names…).
    pub problems: Vec<crate::model::Problem>,
    /// Subtrees whose listing failed; nothing below them was changed.
    pub skipped_untrusted: Vec<RelPath>,
    /// What the plan left alone for a person to look at (conflicts,
    /// suspect listings, directories holding unsynced files).
    pub kept: Vec<PlanItem>,
}

/// Why a run ended before doing everything it planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Asked to stop (a signal, or the daemon shutting down).
    Requested,
    /// The job's `deadline` was reached.
    Deadline(Duration),
    /// Every connection attempt failed for `retry.give_up_after`.
    Unreachable(Duration),
}

impl RunReport {
    pub fn failed(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.error.is_some())
    }
    pub fn done(&self, op: Op) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.item.op == op && o.error.is_none())
            .count()
    }
}

struct Ctx {
    input: ExecInput,
    local: LocalStore,
    remote: FtpStore,
    writer: Arc<StateWriter>,
    bytes: AtomicU64,
    signals: StopSignals,
    /// Temporary files written and not yet placed or removed, with their side.
    temps: Mutex<BTreeMap<String, (Side, u64)>>,
    /// The directions in which the server refuses to resume: from the
    /// state, and learned during this run.
    restart_refused: Mutex<BTreeSet<Restart>>,
    /// New remote directories built under a temporary name ([`crate::stage`]).
    stages: Stages,
    /// What the uploads into existing directories recorded of the server's
    /// side, until their directory is listed again ([`Relister`]).
    sent: Mutex<HashMap<RelPath, RemoteMeta>>,
    /// Whether the server lists uploaded files as this run set them.
    listed_as_set: ListedAsSet,
}

/// How many uploaded files the server must have listed as predicted from
/// the size sent and the time set, in one form, with none otherwise,
/// before the run stops listing directories again after their uploads
/// where that form is predicted.
const LISTED_AS_SET: usize = 16;

/// Whether the server's listings show uploaded files as this run can
/// predict them: the size sent, and the time set with `MFMT` in the
/// listing's own form ([`as_listed`]). Re-listing a directory after its
/// uploads records the server's own view of them; once enough files have
/// come back as predicted in a form, and none otherwise, the directories
/// whose files are all predicted in such a form get the prediction as their
/// record instead of a listing. Each form earns trust on its own: a file
/// listed to the day says nothing of the zone a minute would show.
#[derive(Debug, Default)]
struct ListedAsSet {
    /// Files listed as predicted, by form ([`form`]).
    agreed: [AtomicUsize; 3],
    /// Up to [`MIN_DISTINCT`] distinct times among the exact agreements:
    /// files of one second (a checkout, an archive) do not show a server
    /// that rounds or clamps times.
    exact_times: Mutex<BTreeSet<chrono::NaiveDateTime>>,
    differed: AtomicBool,
    /// Which kinds of listing were seen: [`EXACT_FORM`], [`LS_FORM`].
    kinds: AtomicU8,
}

/// Listings to the second in UTC (MLSD).
const EXACT_FORM: u8 = 1;
/// Listings in the form of `ls -l` (LIST), taken as UTC.
const LS_FORM: u8 = 2;
/// Distinct seconds the exact agreements must span.
const MIN_DISTINCT: usize = crate::model::time::MIN_AGREEING;

/// The index of a time's form in [`ListedAsSet::agreed`].
fn form(t: &RemoteTime) -> Option<usize> {
    match t {
        RemoteTime::Exact(_) => Some(0),
        RemoteTime::Minute(_) => Some(1),
        RemoteTime::Day(_) => Some(2),
        RemoteTime::Unknown => None,
    }
}

impl ListedAsSet {
    /// Whether listings are MLSD's (`Some(true)`) or LIST's, if only one
    /// kind was seen and nothing differed.
    fn kind(&self) -> Option<bool> {
        if self.differed.load(Ordering::Relaxed) {
            return None;
        }
        match self.kinds.load(Ordering::Relaxed) {
            EXACT_FORM => Some(true),
            LS_FORM => Some(false),
            _ => None,
        }
    }

    /// Whether a prediction in the form of `t` can stand for a listing.
    fn trusts(&self, t: &RemoteTime) -> bool {
        let Some(i) = form(t) else { return false };
        if self.kind().is_none() || self.agreed[i].load(Ordering::Relaxed) < LISTED_AS_SET {
            return false;
        }
        i != 0 || lock(&self.exact_times).len() >= MIN_DISTINCT
    }

    /// The predictions for `files` (all uploaded this run, in one
    /// directory), if every one of them can stand for a listing.
    fn predict_all(
        &self,
        files: &[(RelPath, Option<RemoteMeta>)],
        now: chrono::NaiveDateTime,
    ) -> Option<Vec<(RelPath, RemoteMeta)>> {
        let exact = self.kind()?;
        files
            .iter()
            .map(|(path, sent)| {
                let p = predicted(sent.as_ref()?, exact, now)?;
                self.trusts(&p.mtime()).then(|| (path.clone(), p))
            })
            .collect()
    }

    /// A listing showed an uploaded file as `listed`; the upload recorded `sent`.
    fn saw(&self, sent: Option<&RemoteMeta>, listed: &RemoteMeta, now: chrono::NaiveDateTime) {
        let exact = matches!(listed.mtime(), RemoteTime::Exact(_));
        self.kinds
            .fetch_or(if exact { EXACT_FORM } else { LS_FORM }, Ordering::Relaxed);
        let same = sent.is_some_and(|s| {
            s.size().is_some()
                && s.size() == listed.size()
                && predicted(s, exact, now).is_some_and(|p| p == *listed)
        });
        match (same, form(&listed.mtime())) {
            (true, Some(i)) => {
                if let RemoteTime::Exact(t) = listed.mtime() {
                    let mut times = lock(&self.exact_times);
                    if times.len() < MIN_DISTINCT {
                        times.insert(t);
                    }
                }
                self.agreed[i].fetch_add(1, Ordering::Relaxed);
            }
            _ => self.differed.store(true, Ordering::Relaxed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a listing would show of a file uploaded with `sent` recorded, if
/// the time was set (see [`as_listed`]).
fn predicted(sent: &RemoteMeta, exact: bool, now: chrono::NaiveDateTime) -> Option<RemoteMeta> {
    match sent.mtime() {
        RemoteTime::Exact(t) => Some(RemoteMeta::new(sent.size(), as_listed(t, exact, now))),
        _ => None,
    }
}

/// How a listing shows a file whose time was set to `t` (UTC): MLSD to the
/// second; LIST as `ls -l` does, to the minute for a file of the last six
/// months and to the day for an older one (or one in the future), in the
/// server's zone, which is UTC where the prediction held.
fn as_listed(t: chrono::NaiveDateTime, exact: bool, now: chrono::NaiveDateTime) -> RemoteTime {
    if exact {
        return RemoteTime::Exact(t);
    }
    let age = now.signed_duration_since(t);
    if age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::days(182) {
        RemoteTime::Minute(
            t.with_second(0)
                .and_then(|m| m.with_nanosecond(0))
                .unwrap_or(t),
        )
    } else {
        RemoteTime::Day(t.date())
    }
}

impl Ctx {
    /// Sends a change to the state writer, keeping track of live temporary files.
    fn send(&self, change: StateChange) {
        {
            let mut temps = lock(&self.temps);
            match &change {
                StateChange::PendingAdd(p) => {
                    temps.insert(p.temp.clone(), (p.side, p.size));
                }
                StateChange::PendingRemove(t) => {
                    temps.remove(t);
                }
                _ => {}
            }
        }
        self.writer.send(change);
    }

    /// Whether a transfer in this direction may be resumed (REST).
    fn may_restart(&self, r: Restart) -> bool {
        !lock(&self.restart_refused).contains(&r)
    }

    /// The server refused to resume a transfer of `path`: no transfer in
    /// this direction resumes again, in this run or later ones (the state
    /// remembers it for this server).
    fn restart_refused(&self, r: Restart, path: &RelPath, why: &str) {
        let first = lock(&self.restart_refused).insert(r);
        let what = match r {
            Restart::Store => "upload",
            Restart::Retrieve => "download",
        };
        tracing::warn!(
            "the server refused to resume the {what} of {path} ({why}); sending it from the start{}",
            if first {
                ", and not resuming its transfers in this direction again"
            } else {
                ""
            }
        );
        if first {
            self.send(StateChange::RestartRefused(self.input.server.clone(), r));
        }
    }

    /// Whether no new item may start.
    fn stopping(&self) -> bool {
        self.signals.stop.is_cancelled()
            || self.signals.abort.is_cancelled()
            || self.remote.gave_up()
    }

    /// The store of one side.
    fn store(&self, side: Side) -> &dyn Store {
        match side {
            Side::Local => &self.local,
            Side::Remote => &self.remote,
        }
    }

    fn remote_path(&self, p: &RelPath) -> String {
        self.remote.path(p)
    }
    fn local_meta(&self, p: &RelPath) -> Option<LocalMeta> {
        self.input.local.entries.get(p).and_then(|e| e.meta.clone())
    }
    fn remote_meta(&self, p: &RelPath) -> Option<RemoteMeta> {
        self.input
            .remote
            .entries
            .get(p)
            .and_then(|e| e.meta.clone())
    }
}

/// Sorts out the temporary files left by interrupted runs (found by the
/// scans or journaled in the state). A journaled partial transfer that this
/// run's plan redoes, from a source that has not changed since, is kept to be
/// resumed; everything else is removed (best effort: failures are logged).
/// Returns how many were removed and the partials to resume, by path.
pub async fn sort_out_temps(
    pool: &Arc<Pool>,
    input: &ExecInput,
    plan: &Plan,
    remote_temps: &[RelPath],
    journaled: &[Partial],
    local_temps: &[RelPath],
    writer: &StateWriter,
) -> (usize, BTreeMap<RelPath, String>) {
    let root = &input.root;
    let (remote_store, local_store) = stores(input, pool);
    let mut resume = BTreeMap::new();
    for p in journaled {
        if resumable_partial(input, &local_store, plan, p) {
            resume.insert(p.path.clone(), p.temp.clone());
        }
    }
    let keep: BTreeSet<&String> = resume.values().collect();
    let mut removed = 0;
    let mut remote: BTreeSet<String> = remote_temps.iter().map(|p| p.to_remote(root)).collect();
    remote.extend(
        journaled
            .iter()
            .filter(|p| p.side == Side::Remote)
            .map(|p| p.temp.clone()),
    );
    for path in remote.into_iter().filter(|t| !keep.contains(t)) {
        match remote_store.remove_temp(&path, false).await {
            Ok(gone) => {
                removed += usize::from(gone);
                writer.send(StateChange::PendingRemove(path));
            }
            Err(e) => tracing::warn!("could not remove leftover temporary file {path}: {e}"),
        }
    }
    let mut local: BTreeSet<String> = local_temps
        .iter()
        .filter_map(|rel| local_store.writable(rel).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    local.extend(
        journaled
            .iter()
            .filter(|p| p.side == Side::Local)
            .map(|p| p.temp.clone()),
    );
    for path in local.into_iter().filter(|t| !keep.contains(t)) {
        if let Ok(true) = local_store.remove_temp(&path, false).await {
            removed += 1;
        }
        writer.send(StateChange::PendingRemove(path));
    }
    (removed, resume)
}

/// The stores of a run: the remote tree under the root over the pool, and
/// the local tree.
fn stores(input: &ExecInput, pool: &Arc<Pool>) -> (FtpStore, LocalStore) {
    let job = &input.job;
    (
        FtpStore::new(Arc::clone(pool), job.retry, job.timeout, input.root.clone()),
        LocalStore::new(job.local_root.clone()),
    )
}

/// Whether a journaled partial can be resumed by this run: the server has
/// not refused to resume in that direction, and the plan
/// transfers its path again, in the same direction, from a source whose
/// size and time are what they were when the partial was written.
fn resumable_partial(input: &ExecInput, local: &LocalStore, plan: &Plan, p: &Partial) -> bool {
    let (wanted, restart) = match p.side {
        Side::Remote => (Op::Upload, Restart::Store),
        Side::Local => (Op::Download, Restart::Retrieve),
    };
    if input.restart_refused.contains(&restart) {
        return false;
    }
    if !plan
        .items
        .iter()
        .any(|i| i.op == wanted && i.path == p.path)
    {
        return false;
    }
    match p.side {
        Side::Remote => {
            let parent = p.path.parent().unwrap_or_default().to_remote(&input.root);
            let in_dir = p.temp.rsplit_once('/').is_some_and(|(dir, name)| {
                (dir == parent || (dir.is_empty() && parent == "/"))
                    && crate::local::is_temp_name(name)
            });
            in_dir
                && input
                    .local
                    .entries
                    .get(&p.path)
                    .and_then(|e| e.meta.as_ref())
                    .is_some_and(|m| m.size() == p.size && m.mtime_ns.to_string() == p.stamp)
        }
        Side::Local => {
            local.is_our_temp(&p.temp)
                && local.is_file(&p.temp)
                && input
                    .remote
                    .entries
                    .get(&p.path)
                    .and_then(|e| e.meta.as_ref())
                    .is_some_and(|m| m.size() == Some(p.size) && m.mtime().to_stored() == p.stamp)
        }
    }
}

/// Executes `plan`, until it is done or `signals` stop it.
pub async fn execute(
    input: ExecInput,
    plan: &Plan,
    pool: Arc<Pool>,
    writer: Arc<StateWriter>,
    signals: StopSignals,
) -> RunReport {
    let (remote, local) = stores(&input, &pool);
    let input_restart_refused = input.restart_refused.clone();
    let input_atomic = input.job.atomic && input.job.stage_new_dirs;
    let ctx = Arc::new(Ctx {
        input,
        local,
        remote,
        writer,
        bytes: AtomicU64::new(0),
        signals,
        temps: Mutex::new(BTreeMap::new()),
        restart_refused: Mutex::new(input_restart_refused),
        stages: Stages::choose(plan, input_atomic),
        sent: Mutex::new(HashMap::new()),
        listed_as_set: ListedAsSet::default(),
    });
    let mut report = RunReport::default();

    if plan.create_target_root
        && let Err(e) = create_target_root(&ctx).await
    {
        // Nothing can be placed under a root that does not exist.
        for item in plan.changes() {
            ctx.input.events.outcome(item, Some(&e));
            report.outcomes.push(Outcome {
                item: item.clone(),
                error: Some(e.clone()),
            });
        }
        return report;
    }

    let by_op = |ops: &[Op]| -> Vec<PlanItem> {
        plan.items
            .iter()
            .filter(|i| ops.contains(&i.op))
            .cloned()
            .collect()
    };

    // 1. Directories, parents before children: one depth level at a time.
    let mkdirs = by_op(&[Op::Mkdir]);
    run_levels(&ctx, mkdirs, false, &mut report).await;

    // 2. Transfers, concurrently, skipping those whose directory failed to appear.
    let failed_dirs: Vec<RelPath> = report.failed().map(|o| o.item.path.clone()).collect();
    let transfers = by_op(&[Op::Upload, Op::Download]);
    let (blocked, transfers): (Vec<_>, Vec<_>) = transfers
        .into_iter()
        .partition(|i| failed_dirs.iter().any(|d| i.path.is_within(d)));
    for item in blocked {
        let error = FtpFailure::Verify("its directory could not be created".into());
        ctx.input.events.outcome(&item, Some(&error));
        report.outcomes.push(Outcome {
            item,
            error: Some(error),
        });
    }
    let transfers = schedule(transfers);
    let mut relister = Relister::new(&ctx, &transfers, failed_dirs);
    run_concurrent_with(&ctx, transfers, &mut report, Some(&mut relister)).await;

    // The staged directories are finished before anything is deleted. A
    // stopped run finishes them too, with what was stored, within the time
    // it gives removing temporary files; an aborted one leaves them to the
    // next run to remove.
    if ctx.signals.abort.is_cancelled() {
        relister.stages.abort_all();
    } else {
        for stage in ctx.stages.all() {
            relister.start_stage(&ctx, stage);
        }
    }
    let stop_limit = ctx.input.job.timeout.min(Duration::from_secs(5));
    let mut limit = ctx
        .stopping()
        .then(|| tokio::time::Instant::now() + stop_limit);
    loop {
        let joined = tokio::select! {
            biased;
            j = relister.stages.join_next_with_id() => j,
            _ = ctx.signals.abort.cancelled() => None,
            _ = ctx.signals.stop.cancelled(), if limit.is_none() => {
                limit = Some(tokio::time::Instant::now() + stop_limit);
                continue;
            }
            _ = async { match limit {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            } } => None,
        };
        match joined {
            Some(j) => stage_finished(&mut relister, j, &mut report),
            None => break,
        }
    }
    if !relister.stages.is_empty() {
        tracing::warn!(
            "left new directories unfinished (under temporary names) for the next run to remove"
        );
        relister.stages.abort_all();
        while let Some(j) = relister.stages.join_next_with_id().await {
            stage_finished(&mut relister, j, &mut report);
        }
    }

    // 3. Deletes last, and only if nothing failed (rclone's rule: an error
    // anywhere may mean the picture is incomplete) and the run was not stopped.
    let deletes = by_op(&[Op::Delete]);
    let rmdirs = by_op(&[Op::Rmdir]);
    let any_failed = report.failed().next().is_some();
    if ctx.stopping() {
        report.not_started += deletes.len() + rmdirs.len();
    } else if any_failed && !ctx.input.job.delete_after_errors {
        report.skipped_deletes = deletes.into_iter().chain(rmdirs).collect();
    } else {
        run_concurrent(&ctx, deletes, &mut report).await;
        run_levels(&ctx, rmdirs, true, &mut report).await;
    }

    // 4. State-only items.
    for item in by_op(&[Op::Adopt, Op::Forget]) {
        record_only(&ctx, &item);
        if item.reason != crate::plan::Reason::RecordRefresh {
            ctx.input.events.outcome(&item, None);
        }
        report.outcomes.push(Outcome { item, error: None });
    }

    // 5. The re-listings of the directories that received uploads (started
    // as each directory's last upload ended) are awaited. A stopped run
    // leaves them to the next one (the planner refreshes such records).
    // If one of them found the server listing otherwise than predicted,
    // the directories recorded as predicted are listed after all.
    let mut stopped = ctx.stopping();
    let mut second_pass = false;
    while !stopped {
        tokio::select! {
            next = relister.set.join_next() => if next.is_none() {
                if second_pass || !ctx.listed_as_set.differed.load(Ordering::Relaxed) {
                    break;
                }
                second_pass = true;
                for (dir, files) in std::mem::take(&mut relister.predicted) {
                    let ctx = Arc::clone(&ctx);
                    relister
                        .set
                        .spawn(async move { relist(&ctx, &dir, &files).await }.in_current_span());
                }
            },
            _ = ctx.signals.stop.cancelled() => stopped = true,
            _ = ctx.signals.abort.cancelled() => stopped = true,
        }
    }
    if stopped {
        ctx.remote.halt();
        relister.set.abort_all();
        // None outlives the run (a connection held, a record sent after
        // the state's last flush).
        while relister.set.join_next().await.is_some() {}
        remove_live_temps(&ctx, &mut report).await;
    }

    report.bytes = ctx.bytes.load(Ordering::Relaxed);
    report
}

/// Files bigger than this are started first.
const BIG_TRANSFER: u64 = 1 << 20;

/// The order transfers start in. Big files first, largest first, so that a
/// large file started last does not make the run's tail. The rest round-robin
/// over their directories, so that concurrent connections work in different
/// directories instead of queueing on one directory's lock on the server.
fn schedule(items: Vec<PlanItem>) -> Vec<PlanItem> {
    let (mut big, small): (Vec<_>, Vec<_>) = items
        .into_iter()
        .map(|i| (i.size.unwrap_or(0), i))
        .partition(|(n, _)| *n > BIG_TRANSFER);
    big.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.path.cmp(&b.1.path)));
    let mut by_dir: BTreeMap<RelPath, std::collections::VecDeque<PlanItem>> = BTreeMap::new();
    for (_, item) in small {
        by_dir
            .entry(item.path.parent().unwrap_or_default())
            .or_default()
            .push_back(item);
    }
    let mut out: Vec<PlanItem> = big.into_iter().map(|(_, i)| i).collect();
    while !by_dir.is_empty() {
        by_dir.retain(|_, q| match q.pop_front() {
            Some(item) => {
                out.push(item);
                !q.is_empty()
            }
            None => false,
        });
    }
    out
}

async fn create_target_root(ctx: &Ctx) -> Result<(), FtpFailure> {
    let target = match ctx.input.job.direction {
        crate::job::Direction::Pull => Side::Local,
        crate::job::Direction::Push => Side::Remote,
    };
    ctx.store(target).create_root().await
}

/// Runs items grouped by depth: ascending for mkdirs, descending for rmdirs.
async fn run_levels(
    ctx: &Arc<Ctx>,
    items: Vec<PlanItem>,
    deepest_first: bool,
    report: &mut RunReport,
) {
    let mut levels: BTreeMap<usize, Vec<PlanItem>> = BTreeMap::new();
    for i in items {
        levels.entry(i.path.depth()).or_default().push(i);
    }
    let order: Vec<usize> = if deepest_first {
        levels.keys().rev().copied().collect()
    } else {
        levels.keys().copied().collect()
    };
    for depth in order {
        let level = levels.remove(&depth).unwrap_or_default();
        // A child of a directory that failed to appear cannot be created either.
        let failed: Vec<RelPath> = report.failed().map(|o| o.item.path.clone()).collect();
        let (blocked, level): (Vec<_>, Vec<_>) = level
            .into_iter()
            .partition(|i| !deepest_first && failed.iter().any(|f| i.path.is_within(f)));
        for item in blocked {
            let error = FtpFailure::Verify("its parent directory could not be created".into());
            ctx.input.events.outcome(&item, Some(&error));
            report.outcomes.push(Outcome {
                item,
                error: Some(error),
            });
        }
        run_concurrent(ctx, level, report).await;
    }
}

/// Runs items concurrently, at most about twice the pool size in flight.
/// Once a stop is asked, no new item starts; those in flight get the grace
/// period and are then abandoned (their tasks dropped, their connections closed).
async fn run_concurrent(ctx: &Arc<Ctx>, items: Vec<PlanItem>, report: &mut RunReport) {
    run_concurrent_with(ctx, items, report, None).await
}

/// [`run_concurrent`], telling `relister` of each item that ends.
async fn run_concurrent_with(
    ctx: &Arc<Ctx>,
    items: Vec<PlanItem>,
    report: &mut RunReport,
    mut relister: Option<&mut Relister>,
) {
    let mut set: JoinSet<Outcome> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, PlanItem> = HashMap::new();
    let mut queue = items.into_iter();
    let mut grace_end: Option<tokio::time::Instant> = None;
    let mut aborted = false;
    loop {
        while !ctx.stopping() && set.len() < ctx.remote.connections() * 2 {
            let Some(item) = queue.next() else { break };
            let task_ctx = Arc::clone(ctx);
            let task_item = item.clone();
            let handle = set.spawn(
                async move {
                    let item = task_item;
                    let events = &task_ctx.input.events;
                    let error = events.item(&item, run_item(&task_ctx, &item)).await.err();
                    // The daemon's record of each item; `ftpsync run`
                    // prints items itself and hides this target.
                    if let Some(e) = &error {
                        tracing::warn!(target: ITEM_LOG, "{} {}: {e}", op_label(&item), item.path);
                    } else {
                        tracing::info!(target: ITEM_LOG, "{} {}", op_label(&item), item.path);
                    }
                    Outcome { item, error }
                }
                .in_current_span(),
            );
            running.insert(handle.id(), item);
        }
        if set.is_empty() {
            break;
        }
        let grace_over = async {
            match grace_end {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = set.join_next_with_id() => match joined {
                Some(Ok((id, o))) => {
                    running.remove(&id);
                    if let Some(r) = relister.as_deref_mut() {
                        r.ended(ctx, &o.item, o.error.is_none());
                    }
                    report.outcomes.push(o);
                }
                Some(Err(e)) => {
                    let item = running.remove(&e.id());
                    if let Some(item) = &item
                        && e.is_cancelled()
                        && let Some(stage) = ctx.stages.of(&item.path)
                    {
                        // The server may still be writing what it was sent.
                        stage.abandon();
                    }
                    if let (Some(r), Some(item)) = (relister.as_deref_mut(), &item) {
                        r.ended(ctx, item, false);
                    }
                    if e.is_cancelled() {
                        report.abandoned.extend(item);
                    } else if let Some(item) = item {
                        // A bug, not a server's doing: the item failed, and
                        // with it the run's right to delete.
                        tracing::error!("worker task failed: {e}");
                        let error = FtpFailure::Local(format!("internal error: {e}"));
                        ctx.input.events.outcome(&item, Some(&error));
                        report.outcomes.push(Outcome {
                            item,
                            error: Some(error),
                        });
                    }
                }
                None => break,
            },
            _ = ctx.signals.stop.cancelled(), if grace_end.is_none() => {
                // The deadline is a hard limit: no grace.
                let grace = if ctx.signals.deadline.load(Ordering::Relaxed) {
                    Duration::ZERO
                } else {
                    ctx.signals.grace
                };
                grace_end = Some(tokio::time::Instant::now() + grace);
                // Items waiting to retry give up now instead of after their backoff.
                ctx.remote.halt();
            }
            _ = grace_over, if !aborted => {
                aborted = true;
                set.abort_all();
            }
            _ = ctx.signals.abort.cancelled(), if !aborted => {
                aborted = true;
                ctx.remote.halt();
                set.abort_all();
            }
        }
    }
    report.not_started += queue.count();
}

/// After a stop: removes the temporary files of transfers that did not
/// finish, on both sides, one attempt each (the journal keeps the ones that
/// could not be removed, for the next run).
async fn remove_live_temps(ctx: &Arc<Ctx>, report: &mut RunReport) {
    let temps: Vec<(String, (Side, u64))> =
        std::mem::take(&mut *lock(&ctx.temps)).into_iter().collect();
    let deadline = ctx.signals.deadline.load(Ordering::Relaxed);
    let aborted = ctx.signals.abort.is_cancelled();
    // Each removal gets a short time of its own, and they run at once: a
    // hung server cannot hold the stop for minutes.
    let limit = ctx.input.job.timeout.min(Duration::from_secs(5));
    let mut set = JoinSet::new();
    for (temp, (side, size)) in temps {
        let restart = match side {
            Side::Remote => Restart::Store,
            Side::Local => Restart::Retrieve,
        };
        if deadline && size >= RESUME_MIN && ctx.may_restart(restart) {
            // The next run resumes it (it stays journaled).
            tracing::info!("keeping {temp} for the next run to resume");
            continue;
        }
        if aborted && side == Side::Remote {
            tracing::warn!("left {temp} for the next run to remove (aborted)");
            continue;
        }
        let ctx = Arc::clone(ctx);
        set.spawn(
            async move {
                let removed = tokio::time::timeout(limit, ctx.store(side).remove_temp(&temp, true))
                    .await
                    .is_ok_and(|r| r.is_ok());
                (temp, removed)
            }
            .in_current_span(),
        );
    }
    while let Some(joined) = set.join_next().await {
        let Ok((temp, removed)) = joined else {
            continue;
        };
        if removed {
            report.temps_removed += 1;
            ctx.send(StateChange::PendingRemove(temp));
        } else {
            tracing::warn!("could not remove temporary file {temp}; the next run will");
        }
    }
}

/// The log target of the executor's one line per item.
pub const ITEM_LOG: &str = "ftpsync::item";

/// A short verb for logs.
pub fn op_label(item: &PlanItem) -> &'static str {
    match item.op {
        Op::Mkdir => "mkdir",
        Op::Upload => "upload",
        Op::Download => "download",
        Op::Delete => "delete",
        Op::Rmdir => "rmdir",
        Op::Adopt => "adopt",
        Op::Forget => "forget",
        Op::Keep => "keep",
    }
}

async fn run_item(ctx: &Arc<Ctx>, item: &PlanItem) -> Result<(), FtpFailure> {
    match item.op {
        Op::Mkdir => {
            if item.side == Side::Remote
                && let Some(stage) = ctx.stages.of(&item.path)
            {
                // Recorded when the stage is in place.
                let temp = stage.temp_of(&item.path);
                return ctx.remote.mkdir(&temp, dir_mode(ctx, item)).await;
            }
            ctx.store(item.side)
                .mkdir(&item.path, dir_mode(ctx, item))
                .await?;
            put_dir(ctx, &item.path);
            Ok(())
        }
        Op::Upload => {
            let mut attempt = UploadAttempt {
                ctx,
                path: &item.path,
                partial: None,
            };
            if let Some(temp) = ctx.input.resume.get(&item.path)
                && let Some(m) = ctx.local_meta(&item.path)
            {
                attempt.partial = Some((temp.clone(), m.size(), m.mtime_ns));
            }
            let rec = ctx.remote.retrying(&mut attempt).await?;
            match ctx.stages.of(&item.path) {
                Some(stage) => stage.stored(item.path.clone(), rec),
                None => {
                    if let Some(sent) = &rec.remote {
                        lock(&ctx.sent).insert(item.path.clone(), sent.clone());
                    }
                    ctx.send(StateChange::Put(item.path.clone(), rec));
                }
            }
            Ok(())
        }
        Op::Download => {
            let mut attempt = DownloadAttempt {
                ctx,
                path: &item.path,
                partial: ctx
                    .input
                    .resume
                    .get(&item.path)
                    .map(std::path::PathBuf::from),
            };
            let result = ctx.remote.retrying(&mut attempt).await;
            // A large partial download stays (journaled) for the next run to resume.
            if let Some(partial) = attempt.partial
                && (ctx.local.len(&partial).is_none_or(|n| n < RESUME_MIN)
                    || !ctx.may_restart(Restart::Retrieve))
            {
                ctx.local.discard(&partial).await;
                ctx.send(StateChange::PendingRemove(
                    partial.to_string_lossy().into_owned(),
                ));
            }
            let rec = result?;
            ctx.send(StateChange::Put(item.path.clone(), rec));
            Ok(())
        }
        Op::Delete => {
            ctx.store(item.side).delete(&item.path).await?;
            ctx.send(StateChange::Remove(item.path.clone()));
            Ok(())
        }
        Op::Rmdir => {
            ctx.store(item.side).rmdir(&item.path).await?;
            ctx.send(StateChange::Remove(item.path.clone()));
            Ok(())
        }
        Op::Adopt | Op::Forget | Op::Keep => Ok(()),
    }
}

/// The mode a directory created on `item.side` gets: the source side's
/// (a server's masked by the local umask), or the job's `dir_mode`.
fn dir_mode(ctx: &Ctx, item: &PlanItem) -> Option<u32> {
    let modes = &ctx.input.job.modes;
    match item.side {
        Side::Remote => modes.dir_mode(ctx.input.local.modes.get(&item.path).copied(), 0),
        Side::Local => modes.dir_mode(
            ctx.input.remote.modes.get(&item.path).copied(),
            crate::local::umask(),
        ),
    }
}

fn put_dir(ctx: &Ctx, path: &RelPath) {
    ctx.send(StateChange::Put(
        path.clone(),
        StateRecord {
            kind: Kind::Dir,
            local: None,
            remote: None,
        },
    ));
}

fn record_only(ctx: &Ctx, item: &PlanItem) {
    match item.op {
        Op::Adopt => {
            // A hash the scan did not compute (the file did not change)
            // stays what the state recorded.
            let recorded = ctx
                .input
                .state
                .get(&item.path)
                .and_then(|r| r.local.as_ref());
            let local = ctx.local_meta(&item.path).map(|mut m| {
                if let Some(r) =
                    recorded.filter(|r| (r.size(), r.mtime_ns) == (m.size(), m.mtime_ns))
                {
                    m.sha256 = m.sha256.or_else(|| r.sha256.clone());
                }
                m
            });
            let rec = StateRecord {
                kind: item.kind,
                local,
                remote: ctx.remote_meta(&item.path),
            };
            ctx.send(StateChange::Put(item.path.clone(), rec));
        }
        Op::Forget => ctx.send(StateChange::Remove(item.path.clone())),
        _ => {}
    }
}

fn to_utc(ns: i64) -> Option<chrono::NaiveDateTime> {
    chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000), 0).map(|t| t.naive_utc())
}

/// Files at least this large resume an interrupted transfer (REST) instead
/// of starting over.
const RESUME_MIN: u64 = 1 << 20;
/// Bytes compared between the partial copy and the source before resuming.
const OVERLAP: u64 = 64 * 1024;

/// Uploads one file: STOR to a temporary name (resuming the previous
/// attempt's partial file where that is verified safe), check, rename into
/// place. Each attempt runs on one connection.
struct UploadAttempt<'a> {
    ctx: &'a Ctx,
    path: &'a RelPath,
    /// What a failed attempt leaves for the next one: the temporary remote
    /// file and the local file's (size, mtime) when it was written.
    partial: Option<(String, u64, i64)>,
}

#[async_trait]
impl Attempt for UploadAttempt<'_> {
    type Output = StateRecord;

    async fn run(&mut self, s: &mut dyn RemoteSession) -> Result<StateRecord, FtpFailure> {
        let (ctx, path) = (self.ctx, self.path);
        let job = &ctx.input.job;
        let (local_path, before) = ctx.local.source_file(path)?;
        let final_path = ctx.remote_path(path);
        let mtime = mtime_ns(&before);
        // The mode and the time are set before the rename, which keeps
        // them: the file never shows under its name without them.
        let utc = to_utc(mtime);
        let mode = job.modes.file_mode(
            Some(std::os::unix::fs::PermissionsExt::mode(
                &before.permissions(),
            )),
            0,
        );
        // The server's hash command checks the upload where it has one.
        let algo = s
            .capabilities()
            .hash
            .filter(|_| job.verify != VerifyMode::Size);
        let ask_hash = algo.is_some();
        // The local file's SHA-256, when checking the upload computed it.
        let mut sha = None;
        let stored = if let Some(stage) = ctx.stages.of(path) {
            // Into the directory being built, under its own name: the
            // listing that finishes the directory checks the size, and its
            // rename puts the file in place.
            let target = ctx.remote_path(&stage.temp_of(path));
            let set = SetMeta {
                mtime: utc,
                mode,
                hash: ask_hash,
                size: false,
            };
            let stored = s.send(&local_path, before.len(), &target, 0, set).await?;
            check_upload(ctx, &stored, &local_path, &before)?;
            sha = check_digest(ctx, algo, stored.digest.as_deref(), &local_path).await?;
            stored
        } else if job.atomic {
            let mut offset = 0;
            let mut tmp = None;
            if let Some((old, size, stamp)) = self.partial.take() {
                match resumable_upload(ctx, s, &old, &local_path, &before, (size, stamp)).await? {
                    Some(n) => {
                        tracing::info!("resuming upload of {path} at byte {n}");
                        offset = n;
                        tmp = Some(old);
                    }
                    None => {
                        if s.remove(&old).await.is_ok() {
                            ctx.send(StateChange::PendingRemove(old));
                        }
                    }
                }
            }
            let set = SetMeta {
                mtime: utc,
                mode,
                hash: ask_hash,
                size: true,
            };
            // At most two passes: a refused resume goes once more from zero.
            let (tmp, stored) = loop {
                let tmp = match tmp.take() {
                    Some(t) => t,
                    None => {
                        let parent = path.parent().unwrap_or_default();
                        let t = parent
                            .join(temp_name().as_bytes())
                            .map_err(|_| FtpFailure::BadPath)?;
                        let t = ctx.remote_path(&t);
                        ctx.send(StateChange::PendingAdd(Partial {
                            temp: t.clone(),
                            side: Side::Remote,
                            path: path.clone(),
                            size: before.len(),
                            stamp: mtime.to_string(),
                        }));
                        t
                    }
                };
                let refusal = match s.send(&local_path, before.len(), &tmp, offset, set).await {
                    Ok(st) if offset > 0 && st.size.is_some_and(|n| n != before.len()) => {
                        format!(
                            "{} bytes on the server after resuming at byte {offset} of {}",
                            st.size.unwrap_or_default(),
                            before.len()
                        )
                    }
                    Ok(st) => break (tmp, st),
                    Err(e @ FtpFailure::RestartRefused { .. }) => e.to_string(),
                    Err(e) if !e.retryable() && !e.breaks_connection() => {
                        // No attempt follows (a server that took the data, then
                        // said 552): remove what it kept, on this connection.
                        if s.remove(&tmp).await.is_ok() {
                            ctx.send(StateChange::PendingRemove(tmp));
                        }
                        return Err(e);
                    }
                    Err(e) => {
                        // The next attempt resumes or removes it (and the next run, if none).
                        self.partial = Some((tmp, before.len(), mtime));
                        return Err(e);
                    }
                };
                ctx.restart_refused(Restart::Store, path, &refusal);
                if s.remove(&tmp).await.is_ok() {
                    ctx.send(StateChange::PendingRemove(tmp));
                }
                offset = 0;
            };
            let placed = match check_upload(ctx, &stored, &local_path, &before) {
                Ok(()) => {
                    match check_digest(ctx, algo, stored.digest.as_deref(), &local_path).await {
                        Ok(d) => {
                            sha = d;
                            s.place(&tmp, &final_path).await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = placed {
                if !e.breaks_connection() && s.remove(&tmp).await.is_ok() {
                    ctx.send(StateChange::PendingRemove(tmp));
                } else {
                    self.partial = Some((tmp, before.len(), mtime));
                }
                return Err(e);
            }
            ctx.send(StateChange::PendingRemove(tmp));
            stored
        } else {
            // Without a temporary name the time is set only on a checked file.
            let set = SetMeta {
                mtime: None,
                mode,
                hash: ask_hash,
                size: true,
            };
            let mut stored = s
                .send(&local_path, before.len(), &final_path, 0, set)
                .await?;
            check_upload(ctx, &stored, &local_path, &before)?;
            sha = check_digest(ctx, algo, stored.digest.as_deref(), &local_path).await?;
            if let Some(t) = utc {
                stored.mtime = s.set_mtime(&final_path, t).await?;
            }
            stored
        };
        let bytes = stored.sent;
        ctx.bytes.fetch_add(bytes, Ordering::Relaxed);
        let remote_time = stored.mtime.unwrap_or(RemoteTime::Unknown);
        let sha = match sha {
            _ if job.compare != CompareMode::Hash => None,
            Some(d) => Some(d),
            None => ctx.local.sha256(&local_path).await,
        }
        .map(Box::new);
        Ok(StateRecord {
            kind: Kind::File,
            local: Some(LocalMeta::new(bytes, mtime, sha)),
            remote: Some(RemoteMeta::new(Some(bytes), remote_time)),
        })
    }
}

/// Decides whether a partial temporary upload can be resumed: the local file
/// is unchanged, the server has a prefix of it, and the last [`OVERLAP`]
/// bytes on the server equal the local bytes at that position; and the
/// server has not refused to resume an upload.
/// Returns the offset to resume from.
async fn resumable_upload(
    ctx: &Ctx,
    s: &mut dyn RemoteSession,
    tmp: &str,
    local: &Path,
    before: &std::fs::Metadata,
    recorded: (u64, i64),
) -> Result<Option<u64>, FtpFailure> {
    if !s.capabilities().resume
        || !ctx.may_restart(Restart::Store)
        || before.len() < RESUME_MIN
        || recorded != (before.len(), mtime_ns(before))
    {
        return Ok(None);
    }
    let Some(n) = s.size(tmp).await? else {
        return Ok(None);
    };
    if n < OVERLAP || n >= before.len() {
        return Ok(None);
    }
    let Some(remote_tail) = s.read_at(tmp, n - OVERLAP, OVERLAP as usize).await? else {
        return Ok(None);
    };
    let local_tail = ctx
        .local
        .read_at(local, n - OVERLAP, OVERLAP as usize)
        .await?;
    Ok((remote_tail == local_tail).then_some(n))
}

/// After the transfer: the bytes sent must be the file as it was before, and
/// still is (else it changed while uploading), and the server's size must agree.
fn check_upload(
    ctx: &Ctx,
    stored: &Stored,
    local: &Path,
    before: &std::fs::Metadata,
) -> Result<(), FtpFailure> {
    if ctx.local.changed_since(local, before) {
        return Err(FtpFailure::Verify(
            "local file changed during upload".to_string(),
        ));
    }
    if stored.sent != before.len() {
        return Err(FtpFailure::Verify(format!(
            "local file changed during upload ({} bytes before, {} sent)",
            before.len(),
            stored.sent
        )));
    }
    if let Some(size) = stored.size
        && size != stored.sent
    {
        return Err(FtpFailure::Verify(format!(
            "server has {size} bytes after upload of {}",
            stored.sent
        )));
    }
    Ok(())
}

/// After the size check, with the server's hash of what it received
/// (`theirs`, in `algo`): it must be the local file's. Under `verify: hash`
/// a missing one fails the item too. Returns the local file's SHA-256
/// when it was computed.
async fn check_digest(
    ctx: &Ctx,
    algo: Option<HashAlgo>,
    theirs: Option<&[u8]>,
    local: &Path,
) -> Result<Option<[u8; 32]>, FtpFailure> {
    let Some(algo) = algo else {
        return Ok(None);
    };
    let Some(theirs) = theirs else {
        if ctx.input.job.verify == VerifyMode::Hash {
            return Err(FtpFailure::Verify(format!(
                "the server did not give its {} of the file (verify: hash)",
                algo.name()
            )));
        }
        return Ok(None);
    };
    let (ours, sha256) = ctx.local.digests(local, algo).await?;
    if ours != theirs {
        return Err(FtpFailure::Verify(format!(
            "the server's {} of the file is not the local copy's",
            algo.name()
        )));
    }
    Ok(Some(sha256))
}

/// Downloads one file: RETR into a temporary file beside the target
/// (resuming the previous attempt's partial file after checking an
/// overlap), check the size, then rename into place.
struct DownloadAttempt<'a> {
    ctx: &'a Ctx,
    path: &'a RelPath,
    /// The partial temporary file a failed attempt left.
    partial: Option<std::path::PathBuf>,
}

#[async_trait]
impl Attempt for DownloadAttempt<'_> {
    type Output = StateRecord;

    async fn run(&mut self, s: &mut dyn RemoteSession) -> Result<StateRecord, FtpFailure> {
        let (ctx, path) = (self.ctx, self.path);
        let job = &ctx.input.job;
        let remote_meta = ctx.remote_meta(path);
        let expected = remote_meta.as_ref().and_then(|m| m.size());
        if self.partial.is_none()
            && let Some(len) = expected.filter(|&n| n <= IN_MEMORY_MAX)
        {
            return self.run_small(s, len).await;
        }
        let final_local = ctx.local.writable(path)?;
        let remote = ctx.remote_path(path);
        let mut resume = None;
        let tmp = match self.partial.take() {
            Some(old) => {
                let have = ctx.local.len(&old).unwrap_or(0);
                if s.capabilities().resume
                    && ctx.may_restart(Restart::Retrieve)
                    && have >= RESUME_MIN.max(OVERLAP)
                    && expected.is_some_and(|e| have < e)
                    && let Ok(tail) = ctx
                        .local
                        .read_at(&old, have - OVERLAP, OVERLAP as usize)
                        .await
                {
                    tracing::info!("resuming download of {path} at byte {have}");
                    resume = Some(Resume {
                        keep: have,
                        overlap: tail,
                    });
                }
                if resume.is_none() {
                    ctx.local.discard(&old).await;
                    ctx.send(StateChange::PendingRemove(
                        old.to_string_lossy().into_owned(),
                    ));
                    None
                } else {
                    Some(old)
                }
            }
            None => None,
        };
        let new_temp = || {
            let t = ctx.local.temp_beside(&final_local);
            ctx.send(StateChange::PendingAdd(Partial {
                temp: t.to_string_lossy().into_owned(),
                side: Side::Local,
                path: path.clone(),
                size: expected.unwrap_or(0),
                stamp: remote_meta
                    .as_ref()
                    .map(|m| m.mtime().to_stored())
                    .unwrap_or_default(),
            }));
            t
        };
        let mut tmp = tmp.unwrap_or_else(new_temp);
        // The listing's time when it has seconds (MLSD); else the server's
        // MDTM, asked with the RETR.
        let listed = remote_meta
            .as_ref()
            .map_or(RemoteTime::Unknown, |m| m.mtime());
        let ask_time = !matches!(listed, RemoteTime::Exact(_));
        let mut told = None;
        // At most two passes: a refused resume goes once more from zero.
        let bytes = loop {
            let resumed = resume.as_ref().map(|r| r.keep);
            let fetched = s.fetch(&remote, &tmp, resume.take(), ask_time).await;
            let fetched = fetched.map(|(b, t)| {
                told = t;
                b
            });
            let refusal = match fetched {
                Ok(b) if resumed.is_some() && expected.is_some_and(|e| e != b) => format!(
                    "received {b} bytes after resuming at byte {}, the listing said {}",
                    resumed.unwrap_or_default(),
                    expected.unwrap_or_default()
                ),
                Ok(b) => break b,
                Err(e @ FtpFailure::RestartRefused { .. }) => e.to_string(),
                Err(e) => {
                    if matches!(e, FtpFailure::Verify(_)) {
                        ctx.local.discard(&tmp).await;
                        ctx.send(StateChange::PendingRemove(
                            tmp.to_string_lossy().into_owned(),
                        ));
                    } else {
                        self.partial = Some(tmp);
                    }
                    return Err(e);
                }
            };
            ctx.restart_refused(Restart::Retrieve, path, &refusal);
            ctx.local.discard(&tmp).await;
            ctx.send(StateChange::PendingRemove(
                tmp.to_string_lossy().into_owned(),
            ));
            tmp = new_temp();
        };
        let tmp_key = tmp.to_string_lossy().into_owned();
        if let Some(expected) = expected
            && expected != bytes
        {
            ctx.local.discard(&tmp).await;
            return Err(FtpFailure::Verify(format!(
                "received {bytes} bytes, the listing said {expected}"
            )));
        }
        // Under `verify: hash`, the server's hash of the file must be the copy's.
        let mut sha = None;
        if job.verify == VerifyMode::Hash {
            let algo = s.capabilities().hash;
            let checked = match algo {
                Some(_) => match s.hash(&remote, bytes).await {
                    Ok(theirs) => check_digest(ctx, algo, theirs.as_deref(), &tmp).await,
                    Err(e) => Err(e),
                },
                None => Ok(None),
            };
            match checked {
                Ok(d) => sha = d,
                Err(e) => {
                    ctx.local.discard(&tmp).await;
                    ctx.send(StateChange::PendingRemove(tmp_key));
                    return Err(e);
                }
            }
        }
        // The server's time and mode on the local copy, as a mirror should.
        let mtime = server_time(listed, told);
        let mode = job.modes.file_mode(
            ctx.input.remote.modes.get(path).copied(),
            crate::local::umask(),
        );
        ctx.local.place(&tmp, &final_local, mtime, mode).await?;
        ctx.send(StateChange::PendingRemove(tmp_key));
        let md = ctx.local.stat(&final_local)?;
        ctx.bytes.fetch_add(bytes, Ordering::Relaxed);
        let sha = match sha {
            _ if job.compare != CompareMode::Hash => None,
            Some(d) => Some(d),
            None => ctx.local.sha256(&final_local).await,
        };
        Ok(downloaded_record(&md, sha, remote_meta))
    }
}

/// The record of a file just downloaded and placed (`md`), with its SHA-256
/// when the job compares hashes.
fn downloaded_record(
    md: &std::fs::Metadata,
    sha256: Option<[u8; 32]>,
    remote: Option<RemoteMeta>,
) -> StateRecord {
    StateRecord {
        kind: Kind::File,
        local: Some(LocalMeta::new(md.len(), mtime_ns(md), sha256.map(Box::new))),
        remote,
    }
}

/// Files the listing says are at most this long are downloaded into
/// memory and written to disk in one trip to a blocking thread; they are
/// below [`RESUME_MIN`], so no partial copy is ever kept of them. At most
/// one such file a connection is in memory at a time.
const IN_MEMORY_MAX: u64 = 256 * 1024;

impl DownloadAttempt<'_> {
    /// A small file of `len` bytes (as listed): RETR into memory, the
    /// checks of [`DownloadAttempt::run`], then a temporary file written,
    /// given its time and mode and renamed into place in one go.
    async fn run_small(
        &mut self,
        s: &mut dyn RemoteSession,
        len: u64,
    ) -> Result<StateRecord, FtpFailure> {
        let (ctx, path) = (self.ctx, self.path);
        let job = &ctx.input.job;
        let remote_meta = ctx.remote_meta(path);
        let final_local = ctx.local.writable(path)?;
        let remote = ctx.remote_path(path);
        let listed = remote_meta
            .as_ref()
            .map_or(RemoteTime::Unknown, |m| m.mtime());
        let ask_time = !matches!(listed, RemoteTime::Exact(_));
        let (data, told) = s.fetch_bytes(&remote, len, ask_time).await?;
        let bytes = data.len() as u64;
        if bytes != len {
            return Err(FtpFailure::Verify(format!(
                "received {bytes} bytes, the listing said {len}"
            )));
        }
        let mut data = data;
        let mut sha = None;
        if job.verify == VerifyMode::Hash
            && let Some(algo) = s.capabilities().hash
        {
            let theirs = s.hash(&remote, bytes).await?;
            let Some(theirs) = theirs else {
                return Err(FtpFailure::Verify(format!(
                    "the server did not give its {} of the file (verify: hash)",
                    algo.name()
                )));
            };
            let (back, ours, sha256) = ctx.local.digests_of(data, algo).await;
            data = back;
            if ours != theirs {
                return Err(FtpFailure::Verify(format!(
                    "the server's {} of the file is not the local copy's",
                    algo.name()
                )));
            }
            sha = Some(sha256);
        }
        let mtime = server_time(listed, told);
        let mode = job.modes.file_mode(
            ctx.input.remote.modes.get(path).copied(),
            crate::local::umask(),
        );
        let tmp = ctx.local.temp_beside(&final_local);
        let tmp_key = tmp.to_string_lossy().into_owned();
        ctx.send(StateChange::PendingAdd(Partial {
            temp: tmp_key.clone(),
            side: Side::Local,
            path: path.clone(),
            size: len,
            stamp: remote_meta
                .as_ref()
                .map(|m| m.mtime().to_stored())
                .unwrap_or_default(),
        }));
        let want_sha = job.compare == CompareMode::Hash && sha.is_none();
        let placed = ctx
            .local
            .place_bytes(path, &tmp, data, mtime, mode, want_sha)
            .await;
        // Renamed, or removed on failure: either way no longer there.
        ctx.send(StateChange::PendingRemove(tmp_key));
        let (md, computed) = placed?;
        ctx.bytes.fetch_add(bytes, Ordering::Relaxed);
        let sha = match sha {
            _ if job.compare != CompareMode::Hash => None,
            Some(d) => Some(d),
            None => computed,
        };
        Ok(downloaded_record(&md, sha, remote_meta))
    }
}

/// The modification time to give a downloaded file: the listing's when it
/// has seconds (MLSD), else MDTM's (`told`, asked with the RETR), else what
/// the listing shows (a minute, or the start of a day), read as UTC.
fn server_time(
    listed: RemoteTime,
    told: Option<chrono::NaiveDateTime>,
) -> Option<std::time::SystemTime> {
    let utc = match listed {
        RemoteTime::Exact(t) => Some(t),
        coarse => match told {
            Some(t) => Some(t),
            None => match coarse {
                RemoteTime::Minute(t) => Some(t),
                RemoteTime::Day(d) => Some(d.and_time(chrono::NaiveTime::MIN)),
                _ => None,
            },
        },
    };
    utc.map(|t| {
        let secs = t.and_utc().timestamp();
        if secs >= 0 {
            std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            std::time::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    })
}

/// Re-lists each directory that received uploads as soon as the last of its
/// uploads has ended, while other transfers go on, and records the remote
/// fingerprints as the server now reports them: one listing per directory
/// instead of a query per file. At the end of a run these listings were a
/// round trip or two per directory added to its tail.
///
/// A staged directory ([`crate::stage`]) is finished the same way, as soon
/// as the last of its uploads has ended.
struct Relister {
    /// Uploads not yet ended, by directory.
    left: HashMap<RelPath, usize>,
    /// Uploads that succeeded, by directory, until it is re-listed.
    done: HashMap<RelPath, Vec<RelPath>>,
    set: JoinSet<()>,
    /// Uploads not yet ended, by staged directory.
    staged_left: HashMap<RelPath, usize>,
    /// The staged directories being finished, or finished: each task
    /// records what it placed and returns the uploads that failed its checks.
    stages: JoinSet<Vec<(RelPath, FtpFailure)>>,
    /// The staged directory of each of those tasks.
    stage_tasks: HashMap<tokio::task::Id, RelPath>,
    started: BTreeSet<RelPath>,
    /// The directories of the run that could not be created.
    failed_dirs: Arc<Vec<RelPath>>,
    /// The directories whose uploads were recorded as predicted, not listed.
    predicted: Vec<(RelPath, Vec<RelPath>)>,
}

impl Relister {
    fn new(ctx: &Ctx, items: &[PlanItem], failed_dirs: Vec<RelPath>) -> Self {
        let mut left: HashMap<RelPath, usize> = HashMap::new();
        let mut staged_left: HashMap<RelPath, usize> = HashMap::new();
        for i in items.iter().filter(|i| i.op == Op::Upload) {
            match ctx.stages.of(&i.path) {
                Some(stage) => *staged_left.entry(stage.root.clone()).or_default() += 1,
                None => *left.entry(i.path.parent().unwrap_or_default()).or_default() += 1,
            }
        }
        Relister {
            left,
            done: HashMap::new(),
            set: JoinSet::new(),
            staged_left,
            stages: JoinSet::new(),
            stage_tasks: HashMap::new(),
            started: BTreeSet::new(),
            failed_dirs: Arc::new(failed_dirs),
            predicted: Vec::new(),
        }
    }

    /// Starts finishing `stage`, unless it was started already or its
    /// directory could not be created (then its items failed already).
    fn start_stage(&mut self, ctx: &Arc<Ctx>, stage: &Arc<Stage>) {
        if !self.started.insert(stage.root.clone())
            || self.failed_dirs.iter().any(|f| stage.root.is_within(f))
        {
            return;
        }
        let (ctx, stage, failed) = (
            Arc::clone(ctx),
            Arc::clone(stage),
            Arc::clone(&self.failed_dirs),
        );
        let root = stage.root.clone();
        let handle = self.stages.spawn(
            async move {
                let modes = &ctx.input.job.modes;
                let mode = modes.dir_mode(ctx.input.local.modes.get(&stage.root).copied(), 0);
                let finished = crate::stage::finish(&ctx.remote, &stage, mode, &failed).await;
                // Recorded as soon as it is in place, not when the run joins this task.
                for (path, rec) in finished.placed {
                    ctx.send(StateChange::Put(path, rec));
                }
                finished.failed
            }
            .in_current_span(),
        );
        self.stage_tasks.insert(handle.id(), root);
    }

    /// `item` ended (`ok`: it succeeded). Starts its directory's listing
    /// once none of the directory's uploads is left.
    fn ended(&mut self, ctx: &Arc<Ctx>, item: &PlanItem, ok: bool) {
        if item.op != Op::Upload {
            return;
        }
        if let Some(stage) = ctx.stages.of(&item.path) {
            let root = &stage.root;
            if let Some(left) = self.staged_left.get_mut(root) {
                *left -= 1;
                if *left == 0 && !ctx.signals.abort.is_cancelled() {
                    self.start_stage(ctx, stage);
                }
            }
            return;
        }
        let dir = item.path.parent().unwrap_or_default();
        if ok {
            self.done
                .entry(dir.clone())
                .or_default()
                .push(item.path.clone());
        }
        let Some(left) = self.left.get_mut(&dir) else {
            return;
        };
        *left -= 1;
        if *left > 0 {
            return;
        }
        self.left.remove(&dir);
        let Some(files) = self.done.remove(&dir) else {
            return;
        };
        if ctx.stopping() {
            // Their records stay as the uploads wrote them (the next run's
            // listing completes them).
            let mut sent = lock(&ctx.sent);
            for f in &files {
                sent.remove(f);
            }
            return;
        }
        let mut sent = lock(&ctx.sent);
        let metas: Vec<(RelPath, Option<RemoteMeta>)> = files
            .iter()
            .map(|f| (f.clone(), sent.get(f).cloned()))
            .collect();
        let now = chrono::Utc::now().naive_utc();
        if let Some(predictions) = ctx.listed_as_set.predict_all(&metas, now) {
            // As the listing would show them. Listed after all if a
            // listing still running finds the server otherwise.
            for (f, listed) in predictions {
                sent.remove(&f);
                ctx.send(StateChange::RefreshRemote(f, listed));
            }
            self.predicted.push((dir, files));
            return;
        }
        drop(sent);
        let ctx = Arc::clone(ctx);
        self.set
            .spawn(async move { relist(&ctx, &dir, &files).await }.in_current_span());
    }
}

/// A staged directory was finished: its records go to the state, and the
/// uploads that failed its checks fail in the report.
fn stage_finished(
    relister: &mut Relister,
    joined: Result<(tokio::task::Id, Vec<(RelPath, FtpFailure)>), tokio::task::JoinError>,
    report: &mut RunReport,
) {
    let failed = match joined {
        Ok((id, failed)) => {
            relister.stage_tasks.remove(&id);
            failed
        }
        Err(e) => {
            let Some(root) = relister.stage_tasks.remove(&e.id()) else {
                return;
            };
            let error = if e.is_cancelled() {
                FtpFailure::Verify("its new directory was left unfinished".into())
            } else {
                // A bug, not a server's doing: its uploads fail, and with
                // them the run's right to delete.
                tracing::error!("worker task failed: {e}");
                FtpFailure::Local(format!("internal error: {e}"))
            };
            report
                .outcomes
                .iter()
                .filter(|o| o.item.op == Op::Upload && o.item.path.is_within(&root))
                .map(|o| (o.item.path.clone(), error.clone()))
                .collect()
        }
    };
    for (path, error) in failed {
        tracing::warn!(target: ITEM_LOG, "upload {path}: {error}");
        if let Some(o) = report
            .outcomes
            .iter_mut()
            .find(|o| o.item.op == Op::Upload && o.item.path == path && o.error.is_none())
        {
            o.error = Some(error);
        }
    }
}

/// Lists `dir` and completes the records of the `files` this run uploaded
/// there with what the listing shows.
async fn relist(ctx: &Ctx, dir: &RelPath, files: &[RelPath]) {
    let Ok(entries) = ctx.remote.list_dir(dir).await else {
        return;
    };
    let mut wanted: BTreeSet<&str> = files.iter().map(|f| f.name()).collect();
    for e in entries {
        let Ok(name) = std::str::from_utf8(&e.name) else {
            continue;
        };
        if !wanted.remove(name) {
            continue;
        }
        let Ok(path) = dir.join(name.as_bytes()) else {
            continue;
        };
        let listed = RemoteMeta::new(e.size, e.mtime);
        let sent = lock(&ctx.sent).remove(&path);
        ctx.listed_as_set
            .saw(sent.as_ref(), &listed, chrono::Utc::now().naive_utc());
        // Completes the record this run's upload wrote.
        ctx.send(StateChange::RefreshRemote(path, listed));
    }
    if !wanted.is_empty() {
        // A file just placed that the listing does not show: nothing is
        // trusted without a listing, for the rest of the run.
        ctx.listed_as_set.differed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::plan::Reason;

    fn item(path: &str) -> PlanItem {
        let size = match path {
            "b/big" => 2 << 20,
            "huge" => 9 << 20,
            _ => 10,
        };
        PlanItem {
            op: Op::Upload,
            side: Side::Remote,
            path: RelPath::parse(path).unwrap(),
            kind: Kind::File,
            reason: Reason::New,
            size: Some(size),
        }
    }

    #[test]
    fn schedule_starts_big_files_and_spreads_directories() {
        let items: Vec<PlanItem> = [
            "a/1", "a/2", "a/3", "b/1", "b/big", "c/1", "c/2", "top", "huge",
        ]
        .into_iter()
        .map(item)
        .collect();
        let order: Vec<String> = schedule(items)
            .into_iter()
            .map(|i| i.path.as_str().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "huge", "b/big", "top", "a/1", "b/1", "c/1", "a/2", "c/2", "a/3"
            ]
        );
    }

    fn at(s: &str) -> chrono::NaiveDateTime {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn a_listing_is_predicted_in_its_own_form() {
        let now = at("2026-12-07 12:00:00");
        let t = at("2026-12-07 11:58:31");
        assert_eq!(as_listed(t, true, now), RemoteTime::Exact(t));
        assert_eq!(
            as_listed(t, false, now),
            RemoteTime::Minute(at("2026-12-07 11:58:00"))
        );
        // `ls` shows the year, not the time, for a file of six months ago
        // or more, and for one in the future.
        let old = at("2026-06-01 10:00:00");
        assert_eq!(as_listed(old, false, now), RemoteTime::Day(old.date()));
        let ahead = at("2026-12-08 09:00:00");
        assert_eq!(as_listed(ahead, false, now), RemoteTime::Day(ahead.date()));
        let recent = at("2026-06-10 10:00:00");
        assert!(matches!(
            as_listed(recent, false, now),
            RemoteTime::Minute(_)
        ));
    }

    #[test]
    fn listings_are_trusted_only_after_enough_agree_and_none_differs() {
        let now = at("2026-12-07 12:00:00");
        let sec = |i: usize| at("2026-12-07 11:58:00") + chrono::TimeDelta::seconds(i as i64);
        let exact = |i: usize| RemoteMeta::new(Some(10), RemoteTime::Exact(sec(i)));
        let minute = RemoteTime::Minute(at("2026-12-07 11:58:00"));
        let as_ls = RemoteMeta::new(Some(10), minute);
        let path = |p: &str| RelPath::parse(p).unwrap();

        // MLSD: sixteen agreeing files, over three or more seconds.
        let mlsd = ListedAsSet::default();
        for i in 0..LISTED_AS_SET - 1 {
            mlsd.saw(Some(&exact(i)), &exact(i), now);
        }
        assert!(!mlsd.trusts(&RemoteTime::Exact(sec(0))));
        mlsd.saw(Some(&exact(20)), &exact(20), now);
        assert!(mlsd.trusts(&RemoteTime::Exact(sec(0))));
        // All of one second (a checkout, an archive): not enough.
        let one = ListedAsSet::default();
        for _ in 0..2 * LISTED_AS_SET {
            one.saw(Some(&exact(7)), &exact(7), now);
        }
        assert!(!one.trusts(&RemoteTime::Exact(sec(7))));

        // LIST: minutes earn trust for minutes, days for days, not across.
        let list = ListedAsSet::default();
        for i in 0..LISTED_AS_SET {
            list.saw(Some(&exact(i)), &as_ls, now);
        }
        assert!(list.trusts(&minute));
        assert!(!list.trusts(&RemoteTime::Day(now.date())));
        let old = at("2026-01-02 03:04:05");
        let old_sent = RemoteMeta::new(Some(10), RemoteTime::Exact(old));
        let days = ListedAsSet::default();
        for _ in 0..LISTED_AS_SET {
            days.saw(
                Some(&old_sent),
                &RemoteMeta::new(Some(10), RemoteTime::Day(old.date())),
                now,
            );
        }
        assert!(days.trusts(&RemoteTime::Day(old.date())));
        assert!(!days.trusts(&minute));

        // A directory is recorded as predicted only if all its files are.
        let files = vec![(path("d/a"), Some(exact(1))), (path("d/b"), Some(exact(2)))];
        assert_eq!(
            list.predict_all(&files, now),
            Some(vec![
                (path("d/a"), as_ls.clone()),
                (path("d/b"), as_ls.clone())
            ])
        );
        let unset = RemoteMeta::new(Some(10), RemoteTime::Unknown);
        for odd in [None, Some(unset.clone()), Some(old_sent.clone())] {
            let mut f = files.clone();
            f.push((path("d/c"), odd.clone()));
            assert_eq!(list.predict_all(&f, now), None, "{odd:?}");
        }

        // One file otherwise, whatever came before or after: never.
        let cases = [
            // Another size.
            RemoteMeta::new(Some(11), RemoteTime::Exact(sec(3))),
            // Another second, or another minute (a server in another zone).
            RemoteMeta::new(Some(10), RemoteTime::Exact(sec(4))),
            RemoteMeta::new(Some(10), RemoteTime::Minute(at("2026-12-07 12:58:00"))),
            // No time, or only a day where a minute was due.
            RemoteMeta::new(Some(10), RemoteTime::Unknown),
            RemoteMeta::new(Some(10), RemoteTime::Day(now.date())),
        ];
        for odd in cases {
            let l = ListedAsSet::default();
            l.saw(Some(&exact(3)), &odd, now);
            for i in 0..2 * LISTED_AS_SET {
                l.saw(Some(&exact(i)), &exact(i), now);
            }
            assert!(!l.trusts(&RemoteTime::Exact(sec(0))), "{odd:?}");
            assert_eq!(l.predict_all(&files, now), None, "{odd:?}");
        }
        // An upload whose time was not set, or is not known.
        let no_time = ListedAsSet::default();
        for i in 0..2 * LISTED_AS_SET {
            no_time.saw(Some(&unset), &exact(i), now);
        }
        assert!(!no_time.trusts(&RemoteTime::Exact(sec(0))));
        // Listings of both kinds in one run.
        let mixed = ListedAsSet::default();
        for i in 0..LISTED_AS_SET {
            mixed.saw(Some(&exact(i)), &exact(i), now);
            mixed.saw(Some(&exact(i)), &as_ls, now);
        }
        assert!(!mixed.trusts(&RemoteTime::Exact(sec(0))));
        assert!(!mixed.trusts(&minute));
    }
}
