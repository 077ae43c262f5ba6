//! A bounded pool of logged-in connections shared by the remote scan and the
//! executor. At most `size` connections exist at once (idle ones included);
//! a connection goes back to the pool only after an operation on it finished
//! with the connection in step, so one abandoned mid-command (a cancelled
//! task, a timeout) is closed rather than reused. A "too many connections"
//! reply shrinks the pool for the rest of the run, also when every
//! connection is checked out at that moment. When every connection attempt
//! has failed for `give_up_after`, the pool gives up: it answers
//! [`FtpFailure::Unreachable`] at once and [`Pool::halted`] fires, so a run
//! facing a dead server stops instead of waiting out each item's backoff.
//! [`with_retry!`](crate::with_retry) runs one operation on the pool under the
//! job's retry policy.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::conn::{ConnectOptions, FtpConn};
use super::reply::FtpFailure;
use crate::job::RetryPolicy;

/// An open connection and, in the daemon, its share of the server's
/// connection limit (held for as long as the connection is open).
struct Slot {
    conn: FtpConn,
    _server_permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Says goodbye, then gives back its share of the server limit.
    async fn quit(self) {
        let Slot {
            conn,
            _server_permit: permit,
        } = self;
        conn.quit().await;
        drop(permit);
    }

    /// [`Slot::quit`] without waiting for the server's answer. A share of
    /// the daemon's limit on the server's sessions is held until the server
    /// has answered the QUIT (in the background: the run does not wait), so
    /// the next run's connection does not come while the server still
    /// counts this session.
    async fn quit_unanswered(self) {
        let Slot {
            conn,
            _server_permit: permit,
        } = self;
        match permit {
            Some(permit) => {
                tokio::spawn(async move {
                    conn.quit().await;
                    drop(permit);
                });
            }
            None => conn.quit_unanswered().await,
        }
    }
}

/// The shared pool.
pub struct Pool {
    opts: ConnectOptions,
    idle: Mutex<Vec<Slot>>,
    permits: Arc<Semaphore>,
    size: AtomicUsize,
    /// Permits a shrink could not take because none was free: the next
    /// ones returned are retired instead.
    debt: AtomicUsize,
    /// Connections checked out right now.
    checked_out: AtomicUsize,
    /// A limit shared with other pools to the same server (the daemon's
    /// `remote.max_connections`).
    server_limit: Option<Arc<Semaphore>>,
    give_up_after: Duration,
    /// When the current run of failed connection attempts began.
    failing_since: Mutex<Option<Instant>>,
    /// Fired when the pool gives up on the server or the run stops.
    halt: CancellationToken,
    gave_up: std::sync::atomic::AtomicBool,
    /// Signalled when a connection goes back to the idle list.
    returned: tokio::sync::Notify,
}

/// A connection checked out of the pool. It goes back on drop only after
/// [`PooledConn::release`]; otherwise it is closed.
pub struct PooledConn<'a> {
    pool: &'a Pool,
    slot: Option<Slot>,
    permit: Option<OwnedSemaphorePermit>,
    in_step: bool,
}

impl Pool {
    pub fn new(opts: ConnectOptions, size: usize) -> Pool {
        Pool {
            opts,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size: AtomicUsize::new(size),
            debt: AtomicUsize::new(0),
            checked_out: AtomicUsize::new(0),
            server_limit: None,
            give_up_after: Duration::from_secs(60),
            failing_since: Mutex::new(None),
            halt: CancellationToken::new(),
            returned: tokio::sync::Notify::new(),
            gave_up: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// What is known of the server's listings over the control connection.
    pub fn stat_listing(&self) -> &super::conn::StatListing {
        &self.opts.stat_listing
    }

    /// How long connection attempts may fail in a row before the pool gives up.
    pub fn with_give_up_after(mut self, d: Duration) -> Pool {
        self.give_up_after = d;
        self
    }

    /// Shares a connection limit with other pools to the same server.
    pub fn with_server_limit(mut self, limit: Option<Arc<Semaphore>>) -> Pool {
        self.server_limit = limit;
        self
    }

    /// Starts the pool with one already-open connection (the one used to probe
    /// the server). `permit` is its share of the server limit, if any.
    pub fn put_idle(&self, conn: FtpConn, permit: Option<OwnedSemaphorePermit>) {
        self.idle_list().push(Slot {
            conn,
            _server_permit: permit,
        });
    }

    /// The idle connections (a plain mutex: it is never held across an await).
    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections waiting in the pool.
    pub fn idle_count(&self) -> usize {
        self.idle_list().len()
    }

    /// The current number of connections allowed.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Lowers the pool size by one (never below one), after the server said
    /// it has too many connections. Returns the new size. A free permit is
    /// retired at once; if every connection is checked out, the next one
    /// returned is closed and its permit retired. Idle connections beyond the
    /// new size are closed.
    pub fn shrink(&self) -> usize {
        let mut cur = self.size.load(Ordering::Relaxed);
        while cur > 1 {
            match self
                .size
                .compare_exchange(cur, cur - 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if self.permits.forget_permits(1) == 0 {
                        self.debt.fetch_add(1, Ordering::Relaxed);
                    }
                    self.trim_idle();
                    return cur - 1;
                }
                Err(now) => cur = now,
            }
        }
        cur
    }

    /// Closes idle connections so that idle + checked out fits the size.
    fn trim_idle(&self) {
        let allowed = self
            .size()
            .saturating_sub(self.checked_out.load(Ordering::Relaxed));
        let mut idle = self.idle_list();
        while idle.len() > allowed {
            idle.pop();
        }
    }

    /// Retires one owed permit, if a shrink left any debt.
    fn pay_debt(&self) -> bool {
        self.debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok()
    }

    /// Fires when the pool has given up on the server, or [`Pool::halt`] was called.
    pub fn halted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.halt.cancelled()
    }

    /// Whether the pool has given up or was halted.
    pub fn is_halted(&self) -> bool {
        self.halt.is_cancelled()
    }

    /// Stops retries: operations waiting for a retry give up at once.
    pub fn halt(&self) {
        self.halt.cancel();
    }

    /// Halts the pool when dropped, unless disarmed first.
    pub fn halt_on_drop(&self) -> tokio_util::sync::DropGuard {
        self.halt.clone().drop_guard()
    }

    /// Whether the pool gave up because the server was unreachable.
    pub fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::Relaxed)
    }

    /// A permit for one connection, checked out with no connection in it yet.
    async fn checkout(&self) -> Result<PooledConn<'_>, FtpFailure> {
        if self.gave_up() {
            return Err(FtpFailure::Unreachable(self.give_up_after));
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| FtpFailure::Network("connection pool closed".into()))?;
        Ok(self.checked_out_with(permit))
    }

    /// A checkout on a permit already taken.
    fn checked_out_with(&self, permit: OwnedSemaphorePermit) -> PooledConn<'_> {
        self.checked_out.fetch_add(1, Ordering::Relaxed);
        PooledConn {
            pool: self,
            slot: None,
            permit: Some(permit),
            in_step: false,
        }
    }

    /// Checks out a connection, opening a new one if none is idle.
    pub async fn get(&self) -> Result<PooledConn<'_>, FtpFailure> {
        let mut pc = self.checkout().await?;
        let idle = self.idle_list().pop();
        pc.slot = Some(match idle {
            Some(s) if s.conn.out_of_tls_sessions() => {
                // Its next data connection could not resume the control
                // connection's TLS session, which servers that require reuse
                // refuse: replace it with one on TLS 1.2, whose session lasts
                // (or, on a server with TLS 1.3 only, with fresh tickets).
                if self.opts.tls_versions.prefer_tls12() {
                    tracing::info!(
                        "the server sends no new TLS 1.3 session tickets, and each is good for one \
                         data connection: using TLS 1.2 for this server's connections"
                    );
                } else {
                    tracing::debug!("out of TLS 1.3 session tickets: a new control connection");
                }
                s.quit().await;
                self.open().await?
            }
            Some(s) => s,
            None => self.open().await?,
        });
        Ok(pc)
    }

    /// Opens up to `n` more connections in the background, each returned to
    /// the pool as soon as it has logged in: over a link with latency a
    /// login is several round trips, and a scan that will list many
    /// directories need not wait for them one wave at a time. Each holds a
    /// checkout permit while it logs in, so the pool stays within its size;
    /// a failed login is left for the next `get` to meet.
    ///
    /// The permits are taken here, before this returns: a `get` that comes
    /// after waits for a connection being warmed instead of opening one of
    /// its own. (Taken in the background tasks, a `get` could win a permit
    /// first and log in itself, and the warmed connection that followed
    /// was one too many, closed again as soon as it was idle.)
    pub fn warm(self: &Arc<Self>, n: usize) {
        if self.gave_up() {
            return;
        }
        let n = n.min(self.size().saturating_sub(self.idle_count()));
        for _ in 0..n {
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                break;
            };
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                let warmed = async {
                    let mut pc = pool.checked_out_with(permit);
                    pc.slot = Some(pool.open().await?);
                    pc.release();
                    Ok::<(), FtpFailure>(())
                };
                tokio::select! {
                    _ = pool.halted() => {}
                    r = warmed => match r {
                        // As a get would: the server's limit is the pool's from now on.
                        Err(e) if e.too_many_connections() => {
                            let n = pool.shrink();
                            tracing::debug!("server says too many connections; using {n} from now on");
                        }
                        Err(e) => tracing::debug!("opening a connection ahead of time failed: {e}"),
                        Ok(()) => {}
                    },
                }
            });
        }
    }

    /// A connection logged in just now, not one that served earlier
    /// commands: for a second listing that must not share the first one's
    /// session. An idle connection is closed to make room, so the pool
    /// stays within its size.
    pub async fn get_fresh(&self) -> Result<PooledConn<'_>, FtpFailure> {
        let mut pc = self.checkout().await?;
        let idle = self.idle_list().pop();
        if let Some(old) = idle {
            old.conn.quit().await;
        }
        pc.slot = Some(self.open().await?);
        Ok(pc)
    }

    /// Opens a connection, within the server limit, keeping track of how
    /// long attempts have been failing.
    async fn open(&self) -> Result<Slot, FtpFailure> {
        let server_permit = match &self.server_limit {
            Some(s) => loop {
                // While the server's limit is taken (by this pool or others),
                // a connection this pool returns is as good as a new one: take
                // it, or tasks waiting here would hold every pool permit and
                // the returned connection would wait for a permit forever.
                tokio::select! {
                    permit = Arc::clone(s).acquire_owned() => break Some(
                        permit.map_err(|_| FtpFailure::Network("connection limit closed".into()))?,
                    ),
                    _ = self.returned.notified() => {
                        if let Some(slot) = self.idle_list().pop() {
                            return Ok(slot);
                        }
                    }
                }
            },
            None => None,
        };
        match FtpConn::connect(&self.opts).await {
            Ok(conn) => {
                *self.failing_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(Slot {
                    conn,
                    _server_permit: server_permit,
                })
            }
            Err(e) => Err(self.connect_failed(e)),
        }
    }

    /// Records a failed connection attempt; gives up once attempts that
    /// could not reach the server have failed for `give_up_after`.
    fn connect_failed(&self, e: FtpFailure) -> FtpFailure {
        let unreachable = matches!(e, FtpFailure::Network(_) | FtpFailure::Timeout(_))
            || (e.code() == Some(421) && !e.too_many_connections());
        if !unreachable {
            return e;
        }
        let mut since = self.failing_since.lock().unwrap_or_else(|p| p.into_inner());
        let started = *since.get_or_insert_with(Instant::now);
        if started.elapsed() >= self.give_up_after {
            if !self.gave_up.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "every connection attempt failed for {:?} ({e}); giving up",
                    self.give_up_after
                );
            }
            self.halt.cancel();
            return FtpFailure::Unreachable(self.give_up_after);
        }
        e
    }

    /// Closes the idle connections politely, all at once, and without
    /// waiting for the server's answers where the connection allows it
    /// ([`FtpConn::quit_unanswered`]): over a link with latency each
    /// goodbye would wait a round trip for its reply, and even on loopback
    /// a server that ends a process for each session answers the last of
    /// eight QUITs milliseconds later.
    pub async fn close(&self) {
        let slots: Vec<Slot> = std::mem::take(&mut *self.idle_list());
        let mut quits = tokio::task::JoinSet::new();
        for s in slots {
            quits.spawn(s.quit_unanswered());
        }
        while quits.join_next().await.is_some() {}
    }
}

impl PooledConn<'_> {
    pub fn conn(&mut self) -> &mut FtpConn {
        &mut self
            .slot
            .as_mut()
            .expect("connection present until dropped")
            .conn
    }

    /// Marks the connection as in step (its last operation finished), so it
    /// goes back to the pool on drop.
    pub fn release(mut self) {
        self.in_step = true;
        // The server answered: whatever failed to connect before, it is reachable.
        *self
            .pool
            .failing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Closes the connection instead of returning it to the pool.
    pub fn discard(mut self) {
        self.in_step = false;
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        let pool = self.pool;
        pool.checked_out.fetch_sub(1, Ordering::Relaxed);
        let retire = pool.pay_debt();
        // The connection goes back before its permit, so that the task the
        // permit wakes finds it instead of opening another one.
        if let Some(slot) = self.slot.take()
            && self.in_step
            && slot.conn.reusable()
            && !retire
        {
            pool.idle_list().push(slot);
            pool.returned.notify_one();
            pool.trim_idle();
        }
        if let Some(permit) = self.permit.take() {
            if retire {
                permit.forget();
            } else {
                drop(permit);
            }
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
                    match &r {
                        Err(e) if e.breaks_connection() => pc.discard(),
                        _ => pc.release(),
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
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            // The run is stopping or the server is gone: no more attempts.
                            _ = pool.halted() => break Err(e),
                        }
                    }
                    None => break Err(e),
                },
            }
        }
    }};
}
