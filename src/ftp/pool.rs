//! A bounded pool of logged-in connections shared by the remote scan and the
//! executor. At most `size` connections exist at once; a connection that
//! failed in a way that may have broken it is dropped rather than reused, and
//! a "too many connections" reply shrinks the pool for the rest of the run.
//! [`with_retry!`](crate::with_retry) runs one operation on the pool under the
//! job's retry policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Mutex;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{ConnectOptions, FtpConn};
use super::reply::FtpFailure;
use crate::job::RetryPolicy;

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

/// Decides what happens after a failed attempt: `Some(wait)` to try again
/// after `wait`, `None` to give up. Transient failures are retried until the
/// policy's attempts run out; a "too many connections" reply also shrinks the pool.
pub fn retry_after(
    pool: &Pool,
    retry: &RetryPolicy,
    e: &FtpFailure,
    attempt: u32,
) -> Option<std::time::Duration> {
    if e.too_many_connections() {
        let n = pool.shrink();
        tracing::warn!("server says too many connections; using {n} from now on");
    }
    if !e.retryable() || attempt >= retry.max_attempts {
        return None;
    }
    let wait = retry.backoff(attempt + 1);
    tracing::debug!("attempt {attempt} failed ({e}); retrying in {wait:?}");
    Some(wait)
}

/// Runs `$body` (an expression using the connection `$c`, giving a
/// `Result<T, FtpFailure>`) on a pooled connection with the job's retry
/// policy. Transient failures are retried after a backoff, on a fresh
/// connection when the old one may be broken. A macro rather than a function
/// taking an async closure, so the futures stay `Send` for `tokio::spawn`.
#[macro_export]
macro_rules! with_retry {
    ($pool:expr, $retry:expr, |$c:ident| $body:expr) => {{
        let pool: &$crate::ftp::pool::Pool = $pool;
        let retry: &$crate::job::RetryPolicy = $retry;
        let mut attempt = 1u32;
        loop {
            let result = match pool.get().await {
                Ok(mut pc) => {
                    let r = {
                        let $c = pc.conn();
                        $body
                    };
                    if let Err(e) = &r
                        && e.breaks_connection()
                    {
                        pc.discard();
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => break Ok(v),
                Err(e) => match $crate::ftp::pool::retry_after(pool, retry, &e, attempt) {
                    Some(wait) => {
                        attempt += 1;
                        tokio::time::sleep(wait).await;
                    }
                    None => break Err(e),
                },
            }
        }
    }};
}
