//! The remote scan: lists the tree under the remote root, directories in
//! parallel over the connection pool, and turns listing entries into a
//! [`RemoteTree`]. Names are validated here (see [`crate::path`]); anything
//! that fails to list makes its subtree *untrusted*, never empty. Each
//! directory's [`ListingFacts`] say how its listing was obtained (at the
//! first try or after a failure, empty or not), and [`confirm`] lists again
//! the directories the planner will not delete in on the strength of one
//! listing.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::conn::{ListMethod, STAT_LISTING_MAX_ENTRIES};
use super::list::EntryKind;
use super::pool::Pool;
use super::reply::FtpFailure;
use crate::job::{Filters, RetryPolicy};
use crate::local::is_temp_name;
use crate::model::RelPath;
use crate::model::{
    Entry, ListingFacts, PathInterner, Problem, RemoteMeta, RemoteTree, SecondListing,
};

/// What the scan needs besides the pool.
pub struct ScanInput {
    /// Absolute remote root.
    pub root: String,
    pub filters: Filters,
    pub retry: RetryPolicy,
    /// Counts the entries found, for progress.
    pub events: crate::events::Events,
    /// Directories expected to exist (the last sync's, from the state):
    /// they are listed from the start, beside the root, instead of one
    /// level at a time as their parents' listings name them, so a scan
    /// over a link with latency waits about as many round trips as its
    /// busiest connection has directories, not as the tree is deep. A
    /// listing is used only once the parent's listing shows the directory.
    pub expected: Vec<RelPath>,
    /// Directories (the root included) that held at most
    /// [`STAT_LISTING_MAX_ENTRIES`] entries at the last sync: a first
    /// attempt at listing one may go over the control connection (see
    /// [`super::conn::StatListing`]).
    pub small_dirs: HashSet<RelPath>,
    /// Whether the modes a listing shows are kept in [`RemoteTree::modes`]:
    /// only a pull that preserves permissions gives them to anything, and
    /// on a push they were a map of every remote file, unused.
    pub keep_modes: bool,
}

/// Result of listing one directory.
struct Listed {
    dir: RelPath,
    result: Result<super::conn::DirListing, FtpFailure>,
    /// Attempts made at the listing itself (connection failures not counted).
    tries: u32,
}

impl Listed {
    /// CWD said there is no such directory. A listing made ahead of its
    /// parent's may have come before the directory was made: it is not
    /// trusted against a parent that shows the directory.
    fn found_nothing(&self) -> bool {
        matches!(&self.result, Ok(l) if !l.exists)
    }
}

/// What a listing task did: its listings, and the directories it leaves
/// to be listed one by one.
struct Batch {
    listed: Vec<Listed>,
    again: Vec<RelPath>,
}

/// The most directories listed over the control connection in one write
/// (each reply may hold [`STAT_LISTING_MAX_ENTRIES`] lines).
const STAT_BATCH_MAX: usize = 32;

/// Lists one directory: over the control connection at a first attempt if
/// it is small (see [`super::conn::FtpConn::list_dir_scan`]), with retries.
async fn list_one(
    pool: &Pool,
    input: &ScanInput,
    dir: RelPath,
    now: chrono::NaiveDateTime,
) -> Listed {
    let abs = dir.to_remote(&input.root);
    let mut tries = 0u32;
    let small = input.small_dirs.contains(&dir);
    let mut result = crate::with_retry!(pool, &input.retry, |c| {
        tries += 1;
        c.list_dir_scan(&abs, now, small && tries == 1).await
    });
    if small && tries == 1 && result.as_ref().is_err_and(|e| e.breaks_connection()) {
        // A listing over the control connection that lost its
        // connection (a reply too large, or one out of step)
        // is made again with LIST, whatever the retry policy.
        result = crate::with_retry!(pool, &input.retry, |c| {
            tries += 1;
            c.list_dir(&abs, now).await
        });
    }
    Listed { dir, result, tries }
}

/// Lists small directories the state knows over one connection with
/// `STAT`, all in one write ([`super::conn::FtpConn::stat_dirs`]), once one
/// connection has found that the server lists the same way there: a
/// connection then waits one round trip for its share of the tree, where
/// one directory at a time it waited one round trip each. Until that is
/// known it waits, or lists its first directory on its own (which may make
/// the comparison). A directory the batch gives no listing of, or all of
/// them if its connection fails, are listed one by one: with `LIST`, as
/// any retry is, if the failure stopped `STAT` for the run.
async fn list_batch(
    pool: Arc<Pool>,
    input: Arc<ScanInput>,
    dirs: Vec<RelPath>,
    now: chrono::NaiveDateTime,
) -> Batch {
    use super::conn::StatVerdict;
    let mut listed = Vec::new();
    let mut dirs = std::collections::VecDeque::from(dirs);
    loop {
        match pool.stat_listing().verdict() {
            StatVerdict::Works => break,
            StatVerdict::Refused => break,
            StatVerdict::Testing => pool.stat_listing().settled().await,
            StatVerdict::Unknown => match dirs.pop_front() {
                Some(dir) => listed.push(list_one(&pool, &input, dir, now).await),
                None => break,
            },
        }
    }
    let dirs = Vec::from(dirs);
    if dirs.is_empty() || pool.stat_listing().verdict() != StatVerdict::Works {
        return Batch {
            listed,
            again: dirs,
        };
    }
    let abs: Vec<String> = dirs.iter().map(|d| d.to_remote(&input.root)).collect();
    let result = match pool.get().await {
        Ok(mut pc) => {
            let r = pc.conn().stat_dirs(&abs, now).await;
            match &r {
                Err(e) if e.breaks_connection() => pc.discard(),
                _ => pc.release(),
            }
            r
        }
        Err(e) => Err(e),
    };
    let mut again = Vec::new();
    match result {
        Ok(listings) => {
            for (dir, listing) in dirs.into_iter().zip(listings) {
                match listing {
                    Some(l) => listed.push(Listed {
                        dir,
                        result: Ok(l),
                        tries: 1,
                    }),
                    None => again.push(dir),
                }
            }
        }
        Err(_) => again = dirs,
    }
    Batch { listed, again }
}

/// The number of names in a listing and a digest of them, in any order:
/// what a second listing must match.
fn names_digest(listing: &super::list::Listing) -> (usize, u64) {
    let mut names: Vec<&[u8]> = listing.entries.iter().map(|e| e.name.as_slice()).collect();
    names.sort_unstable();
    let mut h = DefaultHasher::new();
    names.hash(&mut h);
    (names.len(), h.finish())
}

/// Scans the remote tree. Returns the tree and the temporary files and
/// directories of earlier interrupted runs that were found (relative
/// paths; a temporary directory is not listed). A path
/// `paths` knows is taken from it rather than allocated again.
///
/// A directory's listing counts only after its parent's listing named it
/// as a directory (`shown`); one listed ahead of that, from
/// [`ScanInput::expected`], waits in `early` until then, and is thrown
/// away if its parent never shows it. An early listing that found no
/// directory is not trusted for one that the parent shows: that one is
/// listed again, as a scan without expectations would.
pub async fn scan(
    pool: Arc<Pool>,
    input: Arc<ScanInput>,
    paths: Arc<PathInterner>,
) -> (RemoteTree, Vec<RelPath>) {
    let mut tree = RemoteTree::default();
    let mut temps = Vec::new();
    let now = chrono::Utc::now().naive_utc();
    let mut tasks: JoinSet<Batch> = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<Batch>, dir: RelPath| {
        let pool = Arc::clone(&pool);
        let input = Arc::clone(&input);
        tasks.spawn(
            async move {
                Batch {
                    listed: vec![list_one(&pool, &input, dir, now).await],
                    again: Vec::new(),
                }
            }
            .in_current_span(),
        );
    };
    let spawn_batch = |tasks: &mut JoinSet<Batch>, dirs: Vec<RelPath>| {
        let pool = Arc::clone(&pool);
        let input = Arc::clone(&input);
        tasks.spawn(list_batch(pool, input, dirs, now).in_current_span());
    };
    spawn(&mut tasks, RelPath::root());
    let mut listed_ahead: HashSet<RelPath> = HashSet::new();
    let mut expected: Vec<&RelPath> = input
        .expected
        .iter()
        .filter(|d| !d.is_root() && !input.filters.excludes_dir(d.as_str()))
        .collect();
    // Shallow ones first: parents tend to be listed before their children.
    expected.sort_by(|a, b| a.depth().cmp(&b.depth()).then_with(|| a.cmp(b)));
    // The small ones go in batches, one a connection (see `list_batch`).
    let mut small: Vec<RelPath> = Vec::new();
    for dir in expected {
        if listed_ahead.insert(dir.clone()) {
            if input.small_dirs.contains(dir) {
                small.push(dir.clone());
            } else {
                spawn(&mut tasks, dir.clone());
            }
        }
    }
    let per_batch = small
        .len()
        .div_ceil(pool.size().max(1))
        .clamp(1, STAT_BATCH_MAX);
    let mut small = small.into_iter().peekable();
    while small.peek().is_some() {
        let batch: Vec<RelPath> = small.by_ref().take(per_batch).collect();
        if batch.len() == 1 {
            spawn(&mut tasks, batch.into_iter().next().unwrap_or_default());
        } else {
            spawn_batch(&mut tasks, batch);
        }
    }
    let mut shown: HashSet<RelPath> = HashSet::from([RelPath::root()]);
    let mut early: HashMap<RelPath, Listed> = HashMap::new();
    let mut ready: Vec<Listed> = Vec::new();
    loop {
        let listed = match ready.pop() {
            Some(l) => l,
            None => match tasks.join_next().await {
                Some(Ok(batch)) => {
                    for dir in batch.again {
                        spawn(&mut tasks, dir);
                    }
                    ready.extend(batch.listed);
                    continue;
                }
                Some(Err(_)) => continue,
                None => break,
            },
        };
        if listed_ahead.remove(&listed.dir) {
            if !shown.contains(&listed.dir) {
                early.insert(listed.dir.clone(), listed);
                continue;
            }
            if listed.found_nothing() {
                spawn(&mut tasks, listed.dir);
                continue;
            }
        }
        let Listed { dir, result, tries } = listed;
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
        let (names, digest) = names_digest(&listing.listing);
        tree.listings.insert(
            dir.clone(),
            ListingFacts {
                retried: tries > 1,
                empty: names == 0,
                by_control: listing.by_control,
                names,
                digest,
                second: SecondListing::NotAsked,
            },
        );
        let known = tree.entries.len();
        for e in listing.listing.entries {
            let rel = match paths.join(&dir, &e.name) {
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
            if let Some(mode) = e.mode
                && input.keep_modes
                && matches!(e.kind, EntryKind::Dir | EntryKind::File)
            {
                tree.modes.insert(rel.clone(), mode);
            }
            match e.kind {
                EntryKind::Dir => {
                    // A new directory a run was building ([`crate::stage`]).
                    if is_temp_name(rel.name()) {
                        temps.push(rel);
                        continue;
                    }
                    if input.filters.excludes_dir(rel.as_str()) {
                        tree.holds_unsynced.insert(dir.clone());
                        continue;
                    }
                    tree.add(rel.clone(), Entry::dir());
                    shown.insert(rel.clone());
                    match early.remove(&rel) {
                        Some(l) if l.found_nothing() => spawn(&mut tasks, rel),
                        Some(l) => ready.push(l),
                        // Listed ahead: its listing is still coming.
                        None if listed_ahead.contains(&rel) => {}
                        None => spawn(&mut tasks, rel),
                    }
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
                    tree.add(rel, Entry::file(RemoteMeta::new(e.size, e.mtime)));
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
    }
    tree.compact();
    (tree, temps)
}

/// Lists each of `dirs` a second time, on a connection logged in for it and
/// with the server's other listing command where it has one (LIST beside
/// MLSD), and records in `tree` whether the names agree with the first
/// listing. A second listing that fails, or has lines it cannot read,
/// confirms nothing. One attempt each: a server that cannot list a
/// directory twice in a row does not get deletes there this run.
pub async fn confirm(
    pool: Arc<Pool>,
    input: Arc<ScanInput>,
    tree: &mut RemoteTree,
    dirs: &[RelPath],
) {
    let now = chrono::Utc::now().naive_utc();
    let mut tasks: JoinSet<(
        RelPath,
        &'static str,
        Result<super::conn::DirListing, FtpFailure>,
    )> = JoinSet::new();
    for dir in dirs.iter().filter(|d| tree.listings.contains_key(*d)) {
        let (pool, input, dir) = (Arc::clone(&pool), Arc::clone(&input), dir.clone());
        tasks.spawn(
            async move {
                let abs = dir.to_remote(&input.root);
                let mut pc = match pool.get_fresh().await {
                    Ok(pc) => pc,
                    Err(e) => return (dir, "on a new connection", Err(e)),
                };
                let (first, second) = pc.conn().list_methods();
                let method = second.unwrap_or(first);
                let result = pc.conn().list_dir_by(&abs, now, method).await;
                match &result {
                    Err(e) if e.breaks_connection() => pc.discard(),
                    _ => pc.release(),
                }
                let how = match method {
                    ListMethod::Mlsd => "MLSD, on a new connection",
                    ListMethod::List => "LIST, on a new connection",
                };
                (dir, how, result)
            }
            .in_current_span(),
        );
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((dir, method, result)) = joined else {
            continue;
        };
        let Some(facts) = tree.listings.get_mut(&dir) else {
            continue;
        };
        let why = if facts.retried {
            "needed a retry"
        } else if facts.empty {
            "came back empty"
        } else {
            "came over the control connection (STAT)"
        };
        let disagreement = match result {
            Err(e) => Some(format!("failed: {e}")),
            Ok(l) if !l.exists => Some("says the directory does not exist".into()),
            Ok(l) if !l.listing.bad_lines.is_empty() => {
                Some("has lines that could not be read".into())
            }
            Ok(l) => {
                let (names, digest) = names_digest(&l.listing);
                (names != facts.names || digest != facts.digest)
                    .then(|| format!("has other names ({names} instead of {})", facts.names))
            }
        };
        facts.second = match disagreement {
            None => SecondListing::Agreed,
            Some(how) => {
                tree.problems.push(Problem {
                    path: dir.to_remote(&input.root),
                    message: format!(
                        "its listing {why} and a second listing ({method}) {how}: no deletes below it this run"
                    ),
                });
                SecondListing::Disagreed
            }
        };
    }
}

/// The directories of `state` (and its root) that held at most
/// [`STAT_LISTING_MAX_ENTRIES`] entries: [`ScanInput::small_dirs`]. None
/// for an empty state (a first run knows nothing of the tree's size).
pub fn small_dirs<V>(
    state: &std::collections::BTreeMap<RelPath, V>,
    is_dir: impl Fn(&V) -> bool,
) -> HashSet<RelPath> {
    if state.is_empty() {
        return HashSet::new();
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for p in state.keys() {
        let parent = p.as_str().rsplit_once('/').map_or("", |(d, _)| d);
        *counts.entry(parent).or_default() += 1;
    }
    let small = |d: &str| counts.get(d).copied().unwrap_or(0) <= STAT_LISTING_MAX_ENTRIES;
    let mut out: HashSet<RelPath> = state
        .iter()
        .filter(|(p, v)| is_dir(v) && small(p.as_str()))
        .map(|(p, _)| p.clone())
        .collect();
    if small("") {
        out.insert(RelPath::root());
    }
    out
}
