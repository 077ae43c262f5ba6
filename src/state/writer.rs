//! The writer thread: during a run it owns the store and commits changes as
//! they arrive, so the transfer tasks never wait on the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use super::{RunRecord, StateChange, StateDb, StateError, StateStore};

/// How long the writer gathers completed items before committing them.
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
/// The most changes in one transaction.
const GROUP_MAX: usize = 4096;

enum WriterMsg {
    Change(StateChange),
    Run(Box<RunRecord>),
    Flush(mpsc::Sender<Result<(), String>>),
    Snapshot(PathBuf, mpsc::Sender<Result<(), String>>),
}

/// A thread that owns the store during a run and commits changes as they
/// arrive: what completes within 20 ms shares one transaction (group
/// commit), so thousands of small files do not mean thousands of commits.
/// Everything is written in the order it was sent.
pub struct StateWriter<S: StateStore + 'static = StateDb> {
    tx: mpsc::Sender<WriterMsg>,
    handle: Option<thread::JoinHandle<S>>,
    /// Changes and runs sent so far: tells whether a snapshot would differ
    /// from the last one.
    sent: Arc<AtomicU64>,
    /// Someone waits on the writer (a flush, a snapshot): it stops
    /// gathering changes and commits at once.
    urgent: Arc<AtomicBool>,
}

/// What the writer thread keeps between messages. After the first failed
/// write nothing more is written, and every flush reports that failure.
struct Committer<S> {
    store: S,
    batch: Vec<StateChange>,
    failed: Option<String>,
}

impl<S: StateStore> Committer<S> {
    /// Commits the changes gathered so far in one transaction.
    fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if self.failed.is_none()
            && let Err(e) = self.store.apply(&batch)
        {
            self.failed = Some(e.to_string());
        }
    }

    /// Records a run after the changes sent before it.
    fn record_run(&mut self, run: &RunRecord) {
        self.commit();
        if self.failed.is_none()
            && let Err(e) = self.store.record_run(run)
        {
            self.failed = Some(e.to_string());
        }
    }
}

impl<S: StateStore + 'static> StateWriter<S> {
    /// Starts the thread; it owns `store` until [`StateWriter::finish`]
    /// hands it back (or the writer is dropped).
    pub fn start(store: S) -> StateWriter<S> {
        Self::start_with_window(store, GROUP_WINDOW)
    }

    /// [`StateWriter::start`], gathering changes for `window` before each commit.
    fn start_with_window(store: S, window: std::time::Duration) -> StateWriter<S> {
        let (tx, rx) = mpsc::channel::<WriterMsg>();
        let urgent = Arc::new(AtomicBool::new(false));
        let hurried = Arc::clone(&urgent);
        let handle = thread::spawn(move || {
            let mut c = Committer {
                store,
                batch: Vec::new(),
                failed: None,
            };
            while let Ok(first) = rx.recv() {
                let mut flushes = Vec::new();
                // Group commit: after the first change, wait `window` (unless
                // someone waits on a flush or a snapshot) and write everything
                // queued by then in one transaction. Sleeping rather than
                // waking per message keeps the senders from waking this
                // thread thousands of times; a flush wakes it (unpark).
                if matches!(first, WriterMsg::Change(_)) {
                    let until = std::time::Instant::now() + window;
                    while !hurried.swap(false, Ordering::AcqRel) {
                        let now = std::time::Instant::now();
                        if now >= until {
                            break;
                        }
                        thread::park_timeout(until - now);
                    }
                }
                let mut next = Some(first);
                while let Some(msg) = next {
                    match msg {
                        WriterMsg::Change(change) => c.batch.push(change),
                        WriterMsg::Run(run) => c.record_run(&run),
                        WriterMsg::Flush(ack) => {
                            // Its hurry is served by this round.
                            hurried.store(false, Ordering::Release);
                            flushes.push(ack);
                        }
                        WriterMsg::Snapshot(to, ack) => {
                            hurried.store(false, Ordering::Release);
                            c.commit();
                            let result = match &c.failed {
                                Some(e) => Err(e.clone()),
                                None => c.store.snapshot(&to).map_err(|e| e.to_string()),
                            };
                            let _ = ack.send(result);
                        }
                    }
                    next = if c.batch.len() >= GROUP_MAX {
                        None
                    } else {
                        rx.try_recv().ok()
                    };
                }
                c.commit();
                for ack in flushes {
                    let _ = ack.send(c.failed.clone().map_or(Ok(()), Err));
                }
            }
            c.store
        });
        StateWriter {
            tx,
            handle: Some(handle),
            sent: Arc::default(),
            urgent,
        }
    }

    /// Ends the current group's wait: a flush or a snapshot was just queued.
    fn hurry(&self) {
        self.urgent.store(true, Ordering::Release);
        if let Some(h) = &self.handle {
            h.thread().unpark();
        }
    }

    /// Queues a change; it is committed within moments.
    pub fn send(&self, change: StateChange) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(WriterMsg::Change(change));
    }

    /// Queues the run's record, written after every change sent before it.
    /// [`StateWriter::flush`] waits for it and reports a failure to write it.
    pub fn record_run(&self, run: RunRecord) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(WriterMsg::Run(Box::new(run)));
    }

    /// How many changes and runs were sent so far: a snapshot taken when
    /// this has not moved since the last one would be the same.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Commits everything sent so far, then writes a consistent copy of
    /// the store to the new file `to` (see [`StateStore::snapshot`]). Blocks
    /// until it is written.
    pub fn snapshot(&self, to: PathBuf) -> Result<(), StateError> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.tx
            .send(WriterMsg::Snapshot(to, ack_tx))
            .map_err(|_| StateError::Writer("thread gone".into()))?;
        self.hurry();
        ack_rx
            .recv()
            .map_err(|_| StateError::Writer("thread gone".into()))?
            .map_err(StateError::Writer)
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) -> Result<(), StateError> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.tx
            .send(WriterMsg::Flush(ack_tx))
            .map_err(|_| StateError::Writer("thread gone".into()))?;
        self.hurry();
        ack_rx
            .recv()
            .map_err(|_| StateError::Writer("thread gone".into()))?
            .map_err(StateError::Writer)
    }

    /// Flushes and hands the store back.
    pub fn finish(mut self) -> Result<S, StateError> {
        self.flush()?;
        let handle = self.handle.take().expect("writer joined once");
        drop(self);
        handle
            .join()
            .map_err(|_| StateError::Writer("thread panicked".into()))
    }
}

impl<S: StateStore + 'static> Drop for StateWriter<S> {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it commits what is queued.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::RelPath;
    use crate::state::tests::{file_record, run_record};
    use crate::state::{Partial, StateRecord};

    #[test]
    fn writer_batches_and_flushes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let db = StateDb::open(&path, true).unwrap().unwrap();
        let w = StateWriter::start(db);
        for i in 0..100 {
            w.send(StateChange::Put(
                RelPath::parse(&format!("f{i}")).unwrap(),
                file_record(),
            ));
        }
        w.flush().unwrap();
        let db = w.finish().unwrap();
        assert_eq!(db.load().unwrap().len(), 100);
        assert_eq!(db.integrity_check().unwrap(), "ok");
    }

    /// A flush does not wait out the window in which the writer gathers
    /// changes (here ten seconds): it is committed at once.
    #[test]
    fn flush_does_not_wait_for_the_group_window() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let db = StateDb::open(&path, true).unwrap().unwrap();
        let w = StateWriter::start_with_window(db, std::time::Duration::from_secs(10));
        for round in 0..3 {
            let started = std::time::Instant::now();
            w.send(StateChange::Put(
                RelPath::parse(&format!("f{round}")).unwrap(),
                file_record(),
            ));
            w.flush().unwrap();
            let took = started.elapsed();
            assert!(
                took < std::time::Duration::from_secs(5),
                "round {round}: {took:?}"
            );
            let reader = StateDb::open(&path, false).unwrap().unwrap();
            assert_eq!(reader.load().unwrap().len(), round + 1);
        }
        drop(w);
    }

    #[test]
    fn run_is_recorded_and_flushed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let db = StateDb::open(&path, true).unwrap().unwrap();
        let w = StateWriter::start(db);
        w.send(StateChange::Put(
            RelPath::parse("a").unwrap(),
            file_record(),
        ));
        w.record_run(run_record(0));
        w.flush().unwrap();
        // Committed, as another process would see it.
        let reader = StateDb::open(&path, false).unwrap().unwrap();
        assert_eq!(reader.last_run().unwrap(), Some(run_record(0)));
        assert_eq!(reader.load().unwrap().len(), 1);
        drop(w);
    }

    #[test]
    fn snapshot_holds_everything_sent_before_it() {
        let d = tempfile::tempdir().unwrap();
        let db = StateDb::open(&d.path().join("state.db"), true)
            .unwrap()
            .unwrap();
        let w = StateWriter::start(db);
        assert_eq!(w.sent(), 0);
        for i in 0..10 {
            w.send(StateChange::Put(
                RelPath::parse(&format!("f{i}")).unwrap(),
                file_record(),
            ));
        }
        w.record_run(run_record(0));
        assert_eq!(w.sent(), 11);
        // No flush: the snapshot itself commits what was sent before it.
        let copy = d.path().join("copy.db");
        w.snapshot(copy.clone()).unwrap();
        assert!(!d.path().join("copy.db-wal").exists());
        let snap = StateDb::open(&copy, false).unwrap().unwrap();
        assert_eq!(snap.load().unwrap().len(), 10);
        assert_eq!(snap.last_run().unwrap(), Some(run_record(0)));
        assert_eq!(snap.integrity_check().unwrap(), "ok");
        // The target must be new: an existing file is never overwritten.
        assert!(w.snapshot(copy).is_err());
        drop(w);
    }

    /// A store that logs what it is asked to write, to see the order.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl StateStore for Log {
        fn binding(&self) -> Result<Option<String>, StateError> {
            Ok(None)
        }
        fn bind(&mut self, _: &str) -> Result<bool, StateError> {
            Ok(false)
        }
        fn load(&self) -> Result<BTreeMap<RelPath, StateRecord>, StateError> {
            Ok(BTreeMap::new())
        }
        fn pending(&self) -> Result<Vec<Partial>, StateError> {
            Ok(Vec::new())
        }
        fn apply(&mut self, changes: &[StateChange]) -> Result<(), StateError> {
            let mut log = self.0.lock().unwrap();
            for c in changes {
                match c {
                    StateChange::Put(p, _) => log.push(format!("put {p}")),
                    _ => log.push("other".into()),
                }
            }
            log.push("commit".into());
            Ok(())
        }
        fn record_run(&mut self, run: &RunRecord) -> Result<(), StateError> {
            if run.exit_code < 0 {
                return Err(StateError::Writer("disk full".into()));
            }
            self.0
                .lock()
                .unwrap()
                .push(format!("run {}", run.exit_code));
            Ok(())
        }
        fn history(&self, _: usize) -> Result<Vec<RunRecord>, StateError> {
            Ok(Vec::new())
        }
        fn snapshot(&self, _: &std::path::Path) -> Result<(), StateError> {
            self.0.lock().unwrap().push("snapshot".into());
            Ok(())
        }
    }

    #[test]
    fn run_is_written_in_order_with_the_changes() {
        let log = Log::default();
        let w: StateWriter<Box<dyn StateStore>> = StateWriter::start(Box::new(log.clone()));
        let put = |p: &str| StateChange::Put(RelPath::parse(p).unwrap(), file_record());
        w.send(put("a"));
        w.send(put("b"));
        w.record_run(run_record(0));
        w.send(put("c"));
        w.flush().unwrap();
        // How the changes fall into transactions depends on timing; the
        // order, and the run coming after its changes are committed, do not.
        let log_now = log.0.lock().unwrap().clone();
        let writes: Vec<&str> = log_now
            .iter()
            .map(String::as_str)
            .filter(|e| *e != "commit")
            .collect();
        assert_eq!(writes, ["put a", "put b", "run 1", "put c"]);
        let run_at = log_now.iter().position(|e| e == "run 1").unwrap();
        assert_eq!(log_now[run_at - 1], "commit", "{log_now:?}");
        assert_eq!(log_now.last().unwrap(), "commit", "{log_now:?}");
        // A run that cannot be written is reported by the next flush.
        let mut bad = run_record(0);
        bad.exit_code = -1;
        w.record_run(bad);
        let err = w.flush().err().unwrap();
        assert!(err.to_string().contains("disk full"), "{err}");
        w.finish().err().unwrap();
    }
}
