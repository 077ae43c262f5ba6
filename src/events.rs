//! What a run reports while it runs, for whoever shows it: the engine, the
//! executor and the remote scan emit [`Event`]s to an [`Observer`] and count
//! scan entries and transferred bytes in [`Progress`]; the command line
//! renders them (JSON lines, bars, periodic lines). A run without an
//! observer ([`Events::default`], the daemon's and the tests') pays one
//! branch per event and nothing per buffer.
//!
//! Bytes are counted per buffer with one relaxed atomic add, found through
//! a task-local set around each transfer (see [`transferred`]); a renderer
//! reads the counters from its own ticker ([`Progress::snapshot`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::ftp::FtpFailure;
use crate::model::{Problem, Side};
use crate::plan::{Op, Plan, PlanItem};

/// Something that happened in a run, in the order it happened.
#[derive(Debug)]
pub enum Event<'a> {
    /// A side's scan is complete: this many entries (files and directories) found.
    Scanned { side: Side, entries: u64 },
    /// Something a scan skipped or could not read.
    Warning(&'a Problem),
    /// The plan is made; execution starts.
    Planned(&'a Plan),
    /// An item started (a transfer, mkdir, delete, rmdir).
    ItemStarted(&'a PlanItem),
    /// An item is done and recorded (state-only items included).
    ItemFinished(&'a PlanItem),
    /// An item failed, after its retries.
    ItemFailed(&'a PlanItem, &'a FtpFailure),
}

/// Receives a run's events. Called from the run's tasks: keep it quick.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// The event sink of one run: cheap to clone; the default discards everything.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<Shared>>);

struct Shared {
    observer: Arc<dyn Observer>,
    progress: Progress,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(observed)"
        } else {
            "Events(none)"
        })
    }
}

impl Events {
    /// Events sent to `observer`, with progress counters.
    pub fn new(observer: Arc<dyn Observer>) -> Events {
        Events(Some(Arc::new(Shared {
            observer,
            progress: Progress::default(),
        })))
    }

    /// The counters, if anyone observes the run.
    pub fn progress(&self) -> Option<&Progress> {
        self.0.as_ref().map(|s| &s.progress)
    }

    pub(crate) fn emit(&self, event: Event<'_>) {
        let Some(s) = &self.0 else { return };
        match &event {
            Event::Scanned { side, entries } => s.progress.scan_done(*side, *entries),
            Event::Planned(plan) => s.progress.planned(plan),
            Event::ItemFinished(item) | Event::ItemFailed(item, _) => s.progress.finished(item),
            Event::ItemStarted(_) | Event::Warning(_) => {}
        }
        s.observer.event(&event);
    }

    /// Adds `n` entries found on the server to the scan count.
    pub(crate) fn remote_entries(&self, n: u64) {
        if let Some(s) = &self.0 {
            s.progress.remote_entries.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Runs one item: emits [`Event::ItemStarted`], runs `work` with its
    /// bytes counted (a transfer's bytes show as in flight until it ends),
    /// then emits [`Event::ItemFinished`] or [`Event::ItemFailed`].
    pub(crate) async fn item<T, F>(&self, item: &PlanItem, work: F) -> Result<T, FtpFailure>
    where
        F: Future<Output = Result<T, FtpFailure>>,
    {
        let Some(s) = &self.0 else {
            return work.await;
        };
        self.emit(Event::ItemStarted(item));
        let counter = Arc::new(AtomicU64::new(0));
        // Unlisted when done, and also when the run abandons the item
        // (its task is dropped mid-transfer).
        let _listed = is_transfer(item).then(|| InFlightGuard {
            progress: &s.progress,
            id: s.progress.start(item, Arc::clone(&counter)),
        });
        let out = SENT.scope(counter, work).await;
        self.outcome(item, out.as_ref().err());
        out
    }

    /// Emits how an item ended: finished, or failed with `error`.
    pub(crate) fn outcome(&self, item: &PlanItem, error: Option<&FtpFailure>) {
        match error {
            None => self.emit(Event::ItemFinished(item)),
            Some(e) => self.emit(Event::ItemFailed(item, e)),
        }
    }
}

tokio::task_local! {
    /// The byte counter of the transfer this task is running.
    static SENT: Arc<AtomicU64>;
}

/// Counts `n` bytes sent or received by the transfer running in this task
/// (nothing if none is observed). Called by the FTP layer once per buffer.
pub(crate) fn transferred(n: u64) {
    let _ = SENT.try_with(|c| c.fetch_add(n, Ordering::Relaxed));
}

/// What a run has done so far, as counters a renderer reads when it likes.
#[derive(Default)]
pub struct Progress {
    local_entries: AtomicU64,
    remote_entries: AtomicU64,
    local_done: AtomicBool,
    remote_done: AtomicBool,
    planned: AtomicBool,
    /// When the plan was made: transfers begin then.
    planned_at: OnceLock<Instant>,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    next_id: AtomicU64,
    /// Transfers in flight (touched once at each start and end, never per buffer).
    in_flight: Mutex<BTreeMap<u64, InFlight>>,
}

/// Removes a transfer from the in-flight list when it ends or is dropped.
struct InFlightGuard<'a> {
    progress: &'a Progress,
    id: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.progress.unlist(self.id);
    }
}

struct InFlight {
    path: String,
    size: u64,
    sent: Arc<AtomicU64>,
}

/// A reading of [`Progress`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Entries found so far, and whether that side's scan is complete.
    pub local_entries: u64,
    pub local_done: bool,
    pub remote_entries: u64,
    pub remote_done: bool,
    /// Whether the plan is made (the run is past scanning).
    pub planned: bool,
    /// How long ago the plan was made (the transfers' time so far).
    pub since_planned: Option<Duration>,
    /// Transfers: files finished (done or failed) of all, and their bytes;
    /// the bytes of transfers in flight count as far as they got.
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Paths being transferred now, in the order they started.
    pub current: Vec<String>,
}

impl Progress {
    fn scan_done(&self, side: Side, entries: u64) {
        let (count, done) = match side {
            Side::Local => (&self.local_entries, &self.local_done),
            Side::Remote => (&self.remote_entries, &self.remote_done),
        };
        count.store(entries, Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
    }

    fn planned(&self, plan: &Plan) {
        let (mut files, mut bytes) = (0, 0);
        for i in plan.items.iter().filter(|i| is_transfer(i)) {
            files += 1;
            bytes += i.size.unwrap_or(0);
        }
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        let _ = self.planned_at.set(Instant::now());
        self.planned.store(true, Ordering::Relaxed);
    }

    fn start(&self, item: &PlanItem, sent: Arc<AtomicU64>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = InFlight {
            path: item.path.to_string(),
            size: item.size.unwrap_or(0),
            sent,
        };
        self.lock().insert(id, entry);
        id
    }

    fn unlist(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn finished(&self, item: &PlanItem) {
        if is_transfer(item) {
            self.files_done.fetch_add(1, Ordering::Relaxed);
            self.bytes_done
                .fetch_add(item.size.unwrap_or(0), Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the counters. A transfer that is retried counts as far as its
    /// furthest attempt, never past its size.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            local_entries: self.local_entries.load(Ordering::Relaxed),
            local_done: self.local_done.load(Ordering::Relaxed),
            remote_entries: self.remote_entries.load(Ordering::Relaxed),
            remote_done: self.remote_done.load(Ordering::Relaxed),
            planned: self.planned.load(Ordering::Relaxed),
            since_planned: self.planned_at.get().map(Instant::elapsed),
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            current: Vec::new(),
        };
        for f in self.lock().values() {
            s.bytes_done += f.sent.load(Ordering::Relaxed).min(f.size);
            s.current.push(f.path.clone());
        }
        s.bytes_done = s.bytes_done.min(s.bytes_total);
        s
    }
}

fn is_transfer(item: &PlanItem) -> bool {
    matches!(item.op, Op::Upload | Op::Download)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, RelPath};
    use crate::plan::Reason;

    struct Collect(Mutex<Vec<String>>);
    impl Observer for Collect {
        fn event(&self, event: &Event<'_>) {
            let line = match event {
                Event::ItemStarted(i) => format!("start {}", i.path),
                Event::ItemFinished(i) => format!("done {}", i.path),
                Event::ItemFailed(i, e) => format!("failed {} {:?}", i.path, e.code()),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    fn upload(path: &str, size: u64) -> PlanItem {
        PlanItem {
            op: Op::Upload,
            side: Side::Remote,
            path: RelPath::parse(path).unwrap(),
            kind: Kind::File,
            reason: Reason::New,
            size: Some(size),
        }
    }

    #[tokio::test]
    async fn bytes_in_flight_count_up_to_the_size_and_then_as_done() {
        let seen = Arc::new(Collect(Mutex::new(Vec::new())));
        let events = Events::new(seen.clone());
        let (a, b) = (upload("a", 100), upload("b", 50));
        let plan = Plan {
            items: vec![a.clone(), b.clone()],
            ..Plan::default()
        };
        events.emit(Event::Planned(&plan));
        let progress = events.progress().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let ev = events.clone();
        let item = a.clone();
        let task = tokio::spawn(async move {
            ev.item(&item, async {
                transferred(60);
                // A retried attempt sends again: never more than the size.
                transferred(60);
                let _ = ready_tx.send(());
                let _ = rx.await;
                Ok(())
            })
            .await
            .unwrap();
        });
        ready_rx.await.unwrap();
        let s = progress.snapshot();
        assert_eq!((s.bytes_done, s.bytes_total), (100, 150));
        assert_eq!((s.files_done, s.files_total), (0, 2));
        assert_eq!(s.current, ["a"]);
        tx.send(()).unwrap();
        task.await.unwrap();
        let failed = events
            .item(&b, async {
                transferred(20);
                Err::<(), _>(FtpFailure::Reply {
                    code: 550,
                    text: "no".into(),
                })
            })
            .await;
        assert_eq!(failed.unwrap_err().code(), Some(550));
        let s = progress.snapshot();
        assert_eq!((s.bytes_done, s.files_done), (150, 2));
        assert!(s.current.is_empty());
        // An abandoned transfer (its future dropped) leaves the list too.
        let ev = events.clone();
        let c = upload("c", 10);
        let abandoned = tokio::spawn(async move {
            ev.item(&c, std::future::pending::<Result<(), FtpFailure>>())
                .await
        });
        while progress.snapshot().current.is_empty() {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        assert!(progress.snapshot().current.is_empty());
        // Outside an observed transfer, counting is a no-op.
        transferred(10);
        assert_eq!(progress.snapshot().bytes_done, 150);
        let lines = seen.0.lock().unwrap().clone();
        assert_eq!(
            lines[1..],
            [
                "start a",
                "done a",
                "start b",
                "failed b Some(550)",
                "start c"
            ]
        );
    }

    #[tokio::test]
    async fn without_an_observer_work_still_runs() {
        let events = Events::default();
        assert!(events.progress().is_none());
        let n = events.item(&upload("a", 1), async { Ok(7) }).await;
        assert_eq!(n.unwrap(), 7);
    }
}
