//! The writer thread: during a run it owns the database and commits changes
//! as they arrive, so the transfer tasks never wait on SQLite.

use std::sync::mpsc;
use std::thread;

use super::{StateChange, StateDb, StateError};

/// How long the writer gathers completed items before committing them.
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
/// The most changes in one transaction.
const GROUP_MAX: usize = 4096;

enum WriterMsg {
    Change(StateChange),
    Flush(mpsc::Sender<Result<(), String>>),
}

/// A thread that owns the database during a run and commits changes as they
/// arrive: what completes within 20 ms shares one transaction (group
/// commit), so thousands of small files do not mean thousands of commits.
pub struct StateWriter {
    tx: mpsc::Sender<WriterMsg>,
    handle: Option<thread::JoinHandle<StateDb>>,
}

impl StateWriter {
    pub fn start(mut db: StateDb) -> StateWriter {
        let (tx, rx) = mpsc::channel::<WriterMsg>();
        let handle = thread::spawn(move || {
            let mut failed: Option<String> = None;
            while let Ok(first) = rx.recv() {
                let mut batch = Vec::new();
                let mut flushes = Vec::new();
                // Group commit: after the first change, wait GROUP_WINDOW (unless
                // a flush is asked for) and write everything queued by then in
                // one transaction. Sleeping rather than waking per message
                // keeps the senders from waking this thread thousands of times.
                if matches!(first, WriterMsg::Change(_)) {
                    thread::sleep(GROUP_WINDOW);
                }
                let mut next = Some(first);
                while let Some(msg) = next {
                    match msg {
                        WriterMsg::Change(c) => batch.push(c),
                        WriterMsg::Flush(ack) => flushes.push(ack),
                    }
                    next = if batch.len() >= GROUP_MAX {
                        None
                    } else {
                        rx.try_recv().ok()
                    };
                }
                if !batch.is_empty()
                    && failed.is_none()
                    && let Err(e) = db.apply(&batch)
                {
                    failed = Some(e.to_string());
                }
                for ack in flushes {
                    let _ = ack.send(failed.clone().map_or(Ok(()), Err));
                }
            }
            db
        });
        StateWriter {
            tx,
            handle: Some(handle),
        }
    }

    /// Queues a change; it is committed within moments.
    pub fn send(&self, change: StateChange) {
        let _ = self.tx.send(WriterMsg::Change(change));
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) -> Result<(), StateError> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.tx
            .send(WriterMsg::Flush(ack_tx))
            .map_err(|_| StateError::Writer("thread gone".into()))?;
        ack_rx
            .recv()
            .map_err(|_| StateError::Writer("thread gone".into()))?
            .map_err(StateError::Writer)
    }

    /// Flushes and hands the database back.
    pub fn finish(mut self) -> Result<StateDb, StateError> {
        self.flush()?;
        let handle = self.handle.take().expect("writer joined once");
        drop(self);
        handle
            .join()
            .map_err(|_| StateError::Writer("thread panicked".into()))
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it commits what is queued.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
