//! A bounded pool of logged-in connections shared by the remote scan and the
//! executor. At most `size` connections exist at once; a connection that
//! failed in a way that may have broken it is dropped rather than reused, and
//! a "too many connections" reply shrinks the pool for the rest of the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Mutex;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{ConnectOptions, FtpConn};
use super::reply::FtpFailure;

/// The shared pool.
pub struct Pool {
    opts: ConnectOptions,
    idle: Mutex<Vec<FtpConn>>,
    permits: Arc<Semaphore>,
    size: AtomicUsize,
}

/// A connection checked out of the pool; goes back on drop unless marked broken.
pub struct PooledConn<'a> {
    pool: &'a Pool,
    conn: Option<FtpConn>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(opts: ConnectOptions, size: usize) -> Pool {
        Pool {
            opts,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size: AtomicUsize::new(size),
        }
    }

    /// Starts the pool with one already-open connection (the one used to probe the server).
    pub fn put_idle(&self, conn: FtpConn) {
        self.idle_list().push(conn);
    }

    /// The idle connections (a plain mutex: it is never held across an await).
    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<FtpConn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current number of connections allowed.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Lowers the pool size by one (never below one), after the server said
    /// it has too many connections. Returns the new size.
    pub fn shrink(&self) -> usize {
        let mut cur = self.size.load(Ordering::Relaxed);
        while cur > 1 {
            match self
                .size
                .compare_exchange(cur, cur - 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.permits.forget_permits(1);
                    // If no permit was free right now, the next returned one is forgotten.
                    return cur - 1;
                }
                Err(now) => cur = now,
            }
        }
        cur
    }

    /// Checks out a connection, opening a new one if none is idle.
    pub async fn get(&self) -> Result<PooledConn<'_>, FtpFailure> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| FtpFailure::Network("connection pool closed".into()))?;
        let idle = self.idle_list().pop();
        let conn = match idle {
            Some(c) => c,
            None => FtpConn::connect(&self.opts).await?,
        };
        Ok(PooledConn {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// Closes the idle connections politely.
    pub async fn close(&self) {
        let conns: Vec<FtpConn> = std::mem::take(&mut *self.idle_list());
        for c in conns {
            c.quit().await;
        }
    }
}

impl PooledConn<'_> {
    pub fn conn(&mut self) -> &mut FtpConn {
        self.conn
            .as_mut()
            .expect("connection present until dropped")
    }

    /// Drops the connection instead of returning it to the pool.
    pub fn discard(mut self) {
        self.conn = None;
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.idle_list().push(c);
        }
    }
}
