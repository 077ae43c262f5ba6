//! The remote scan: lists the tree under the remote root, directories in
//! parallel over the connection pool, and turns listing entries into a
//! [`RemoteTree`]. Names are validated here (see [`crate::path`]); anything
//! that fails to list makes its subtree *untrusted*, never empty.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::list::EntryKind;
use super::pool::Pool;
use super::reply::{FtpFailure, ReplyClass};
use crate::job::{Filters, RetryPolicy};
use crate::local::is_temp_name;
use crate::path::RelPath;
use crate::tree::{Entry, Problem, RemoteMeta, RemoteTree};

/// What the scan needs besides the pool.
pub struct ScanInput {
    /// Absolute remote root.
    pub root: String,
    pub filters: Filters,
    pub retry: RetryPolicy,
    /// Directories under which the state remembers entries: an empty
    /// listing for one of them is suspicious.
    pub remembered_dirs: BTreeSet<RelPath>,
}

/// Result of listing one directory.
struct Listed {
    dir: RelPath,
    result: Result<super::conn::DirListing, FtpFailure>,
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
    let retryable =
        e.class() == ReplyClass::Transient || (e.too_many_connections() && e.code() == Some(530));
    if !retryable || attempt >= retry.max_attempts {
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
                Err(e) => match $crate::ftp::scan::retry_after(pool, retry, &e, attempt) {
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

/// Scans the remote tree. Returns the tree and the temporary files of
/// earlier interrupted runs that were found (relative paths).
pub async fn scan(pool: Arc<Pool>, input: Arc<ScanInput>) -> (RemoteTree, Vec<RelPath>) {
    let mut tree = RemoteTree::default();
    let mut temps = Vec::new();
    let now = chrono::Utc::now().naive_utc();
    let mut tasks: JoinSet<Listed> = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<Listed>, dir: RelPath| {
        let pool = Arc::clone(&pool);
        let input = Arc::clone(&input);
        tasks.spawn(async move {
            let abs = dir.to_remote(&input.root);
            let result = crate::with_retry!(&pool, &input.retry, |c| c.list_dir(&abs, now).await);
            Listed { dir, result }
        });
    };
    spawn(&mut tasks, RelPath::root());
    while let Some(joined) = tasks.join_next().await {
        let Ok(Listed { dir, result }) = joined else {
            continue;
        };
        let listing = match result {
            Ok(l) => l,
            Err(e) => {
                tree.untrusted.insert(dir.clone());
                tree.problems.push(Problem {
                    path: dir.to_remote(&input.root),
                    message: format!("listing failed: {e}"),
                });
                continue;
            }
        };
        if !listing.exists {
            if dir.is_root() {
                tree.root_exists = false;
            } else {
                // It was in the parent's listing a moment ago: do not trust either answer.
                tree.untrusted.insert(dir.clone());
                tree.problems.push(Problem {
                    path: dir.to_remote(&input.root),
                    message: "directory vanished while scanning".into(),
                });
            }
            continue;
        }
        for (line, text, reason) in &listing.listing.bad_lines {
            tree.problems.push(Problem {
                path: dir.to_remote(&input.root),
                message: format!("unparseable listing line {line} ({reason}): {text:?}"),
            });
        }
        if !listing.listing.bad_lines.is_empty() {
            // Some entries may be missing: nothing below may be deleted on the
            // strength of this listing.
            tree.incomplete.insert(dir.clone());
        }
        let mut kept = 0usize;
        for e in listing.listing.entries {
            let rel = match dir.join(&e.name) {
                Ok(r) => r,
                Err(why) => {
                    tree.problems.push(Problem {
                        path: format!(
                            "{}/{}",
                            dir.to_remote(&input.root),
                            String::from_utf8_lossy(&e.name).escape_debug()
                        ),
                        message: format!("name refused ({why}): skipped"),
                    });
                    // An entry we cannot represent exists: its directory is not fully known.
                    tree.incomplete.insert(dir.clone());
                    continue;
                }
            };
            kept += 1;
            match e.kind {
                EntryKind::Dir => {
                    if input.filters.excludes_dir(rel.as_str()) {
                        tree.holds_unsynced.insert(dir.clone());
                        continue;
                    }
                    tree.entries.insert(rel.clone(), Entry::dir());
                    spawn(&mut tasks, rel);
                }
                EntryKind::File => {
                    if is_temp_name(rel.name()) {
                        temps.push(rel);
                        continue;
                    }
                    if !input.filters.accepts_file(rel.as_str()) {
                        tree.holds_unsynced.insert(dir.clone());
                        continue;
                    }
                    tree.entries.insert(
                        rel,
                        Entry::file(RemoteMeta {
                            size: e.size,
                            mtime: e.mtime,
                        }),
                    );
                }
                EntryKind::Symlink | EntryKind::Other => {
                    tree.holds_unsynced.insert(dir.clone());
                    if input.filters.accepts_file(rel.as_str()) {
                        tree.problems.push(Problem {
                            path: rel.to_remote(&input.root),
                            message: "symbolic link or special file on the server: skipped".into(),
                        });
                    }
                }
            }
        }
        if kept == 0 && input.remembered_dirs.contains(&dir) {
            tree.suspect_empty.insert(dir.clone());
            tree.problems.push(Problem {
                path: dir.to_remote(&input.root),
                message: "listed as empty although the last sync put files there; no deletes below it (if it really was emptied, run with --force-delete)".into(),
            });
        }
    }
    (tree, temps)
}
