//! The remote scan: lists the tree under the remote root, directories in
//! parallel over the connection pool, and turns listing entries into a
//! [`RemoteTree`]. Names are validated here (see [`crate::path`]); anything
//! that fails to list makes its subtree *untrusted*, never empty.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::list::EntryKind;
use super::pool::Pool;
use super::reply::FtpFailure;
use crate::job::{Filters, RetryPolicy};
use crate::local::is_temp_name;
use crate::model::RelPath;
use crate::model::{Entry, Problem, RemoteMeta, RemoteTree};

/// What the scan needs besides the pool.
pub struct ScanInput {
    /// Absolute remote root.
    pub root: String,
    pub filters: Filters,
    pub retry: RetryPolicy,
    /// Directories under which the state remembers entries: an empty
    /// listing for one of them is suspicious.
    pub remembered_dirs: BTreeSet<RelPath>,
    /// Counts the entries found, for progress.
    pub events: crate::events::Events,
}

/// Result of listing one directory.
struct Listed {
    dir: RelPath,
    result: Result<super::conn::DirListing, FtpFailure>,
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
        tasks.spawn(
            async move {
                let abs = dir.to_remote(&input.root);
                let result =
                    crate::with_retry!(&pool, &input.retry, |c| c.list_dir(&abs, now).await);
                Listed { dir, result }
            }
            .in_current_span(),
        );
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
        let known = tree.entries.len();
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
            if let Some(mode) = e.mode
                && matches!(e.kind, EntryKind::Dir | EntryKind::File)
            {
                tree.modes.insert(rel.clone(), mode);
            }
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
        input
            .events
            .remote_entries((tree.entries.len() - known) as u64);
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
