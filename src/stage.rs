//! New directories published whole. A directory that a push creates on the
//! server is built under a temporary name beside its place, with its files
//! stored under their own names inside it; once they are in, one listing of
//! each of its directories checks every file's size, anything else found
//! there (what a failed transfer left) is removed, and one rename puts the
//! directory in place. Each file costs `EPSV`, `STOR` and `MFMT` instead of
//! also `SIZE`, `RNFR` and `RNTO`, and the directory appears complete or not
//! at all (less the files that failed, as with one rename per file).
//!
//! This module chooses which new directories are built so ([`Stages::choose`])
//! and finishes one ([`finish`]); the executor stores the files into them and
//! sends the records [`finish`] returns. A run that dies before the rename
//! leaves only the temporary directory, which the next run's scan finds by
//! its name and removes, files and all.
//!
//! Only small directories are staged ([`MAX_FILES`], [`MAX_BYTES`]) and only
//! with small files ([`MAX_FILE`]): what an interrupted run loses is its
//! work in the directories it had not finished, so that is kept small, and
//! files large enough to resume an interrupted transfer go one by one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinSet;

use crate::ftp::FtpFailure;
use crate::ftp::list::{EntryKind, ListEntry};
use crate::local::temp_name;
use crate::model::{Kind, RelPath, RemoteMeta};
use crate::plan::{Op, Plan};
use crate::state::StateRecord;
use crate::store::{FtpStore, Store};

/// At most this many files in a staged directory (with its subdirectories).
pub const MAX_FILES: usize = 1000;
/// At most this many bytes in a staged directory.
pub const MAX_BYTES: u64 = 64 << 20;
/// No file larger than this in a staged directory: larger ones resume an
/// interrupted transfer, which needs a journaled temporary file of their own.
pub const MAX_FILE: u64 = 1 << 20;

/// One new directory built under a temporary name.
#[derive(Debug)]
pub struct Stage {
    /// The directory, as it will be named.
    pub root: RelPath,
    /// Where it is built: a temporary name in the same parent.
    pub temp: RelPath,
    /// The new directories in it, `root` first, parents before children
    /// (real names).
    pub dirs: Vec<RelPath>,
    /// The files stored so far, with their records (the remote part is
    /// completed from the checking listing).
    stored: Mutex<Vec<(RelPath, StateRecord)>>,
    /// An upload into it was dropped mid-way (a stop's grace ran out): the
    /// server may still be writing it, so the directory is not placed.
    abandoned: AtomicBool,
}

impl Stage {
    /// Where `path` (within [`Stage::root`]) is while the directory is built.
    pub fn temp_of(&self, path: &RelPath) -> RelPath {
        path.rebase(&self.root, &self.temp)
            .unwrap_or_else(|| self.temp.clone())
    }

    /// A file of the stage was stored and checked on the way.
    pub fn stored(&self, path: RelPath, record: StateRecord) {
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path, record));
    }

    /// An upload into the directory was dropped mid-way.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    fn take_stored(&self) -> Vec<(RelPath, StateRecord)> {
        std::mem::take(&mut *self.stored.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The staged directories of a run, by their real path.
#[derive(Debug, Default)]
pub struct Stages {
    by_root: HashMap<RelPath, Arc<Stage>>,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    files: usize,
    bytes: u64,
    too_big: bool,
}

impl Tally {
    fn fits(&self) -> bool {
        self.files >= 1 && self.files <= MAX_FILES && self.bytes <= MAX_BYTES && !self.too_big
    }
}

impl Stages {
    /// Chooses the directories of `plan` to build under a temporary name:
    /// the new remote directories whose parent exists, or failing the size
    /// limits their new subdirectories, each holding at least one upload.
    /// Nothing is staged without `atomic` (the server may forbid renames).
    pub fn choose(plan: &Plan, atomic: bool) -> Stages {
        let mut stages = Stages::default();
        if !atomic {
            return stages;
        }
        let new_dirs: HashSet<&RelPath> = plan
            .items
            .iter()
            .filter(|i| i.op == Op::Mkdir && i.side == crate::model::Side::Remote)
            .map(|i| &i.path)
            .collect();
        if new_dirs.is_empty() {
            return stages;
        }
        let mut tally: HashMap<RelPath, Tally> = HashMap::new();
        for i in plan
            .items
            .iter()
            .filter(|i| i.op == Op::Upload && i.side == crate::model::Side::Remote)
        {
            let size = i.size.unwrap_or(u64::MAX);
            let mut up = i.path.parent();
            while let Some(dir) = up.filter(|d| new_dirs.contains(d)) {
                let t = tally.entry(dir.clone()).or_default();
                t.files += 1;
                t.bytes = t.bytes.saturating_add(size);
                t.too_big |= size > MAX_FILE;
                up = dir.parent();
            }
        }
        let mut children: HashMap<RelPath, Vec<&RelPath>> = HashMap::new();
        let mut todo: Vec<&RelPath> = Vec::new();
        for d in &new_dirs {
            match d.parent() {
                Some(p) if new_dirs.contains(&p) => children.entry(p).or_default().push(d),
                _ => todo.push(d),
            }
        }
        while let Some(d) = todo.pop() {
            if tally.get(d).is_some_and(Tally::fits) {
                let parent = d.parent().unwrap_or_default();
                let Ok(temp) = parent.join(temp_name().as_bytes()) else {
                    continue;
                };
                stages.by_root.insert(
                    d.clone(),
                    Arc::new(Stage {
                        root: d.clone(),
                        temp,
                        dirs: Vec::new(),
                        stored: Mutex::new(Vec::new()),
                        abandoned: AtomicBool::new(false),
                    }),
                );
            } else if let Some(c) = children.get(d) {
                todo.extend(c.iter().copied());
            }
        }
        // Each new directory inside a stage, parents first.
        let mut inside: HashMap<RelPath, Vec<RelPath>> = HashMap::new();
        let mut sorted: Vec<&RelPath> = new_dirs.into_iter().collect();
        sorted.sort_by_key(|d| (d.depth(), d.as_str().to_owned()));
        for d in sorted {
            if let Some(s) = stages.of(d) {
                inside.entry(s.root.clone()).or_default().push(d.clone());
            }
        }
        for (root, dirs) in inside {
            if let Some(s) = stages.by_root.get_mut(&root).and_then(Arc::get_mut) {
                s.dirs = dirs;
            }
        }
        stages
    }

    pub fn is_empty(&self) -> bool {
        self.by_root.is_empty()
    }

    /// The stage `path` lies in (or is the root of), if any.
    pub fn of(&self, path: &RelPath) -> Option<&Arc<Stage>> {
        if self.by_root.is_empty() {
            return None;
        }
        let mut up = Some(path.clone());
        while let Some(p) = up {
            if let Some(s) = self.by_root.get(&p) {
                return Some(s);
            }
            up = p.parent();
        }
        None
    }

    /// The stages, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Stage>> {
        self.by_root.values()
    }
}

/// What finishing a stage gave: the records to send (its directories and
/// the files that are in place) and the files that failed after all.
#[derive(Debug, Default)]
pub struct Finished {
    pub placed: Vec<(RelPath, StateRecord)>,
    pub failed: Vec<(RelPath, FtpFailure)>,
}

/// Finishes `stage` once none of its uploads is running: checks each
/// stored file's size in a listing of its directory, removes whatever else
/// is there, and renames the directory into place. A server that refuses
/// to rename a directory gets the directory created and each entry moved
/// into it. `mode`: the permission bits for that directory. `failed_dirs`:
/// the directories of the run that could not be created.
pub async fn finish(
    store: &FtpStore,
    stage: &Stage,
    mode: Option<u32>,
    failed_dirs: &[RelPath],
) -> Finished {
    let stored = stage.take_stored();
    let out = Finished::default();
    // A directory that could not be created holds nothing (its uploads did not start).
    let dirs: Vec<&RelPath> = stage
        .dirs
        .iter()
        .filter(|d| !failed_dirs.iter().any(|f| d.is_within(f)))
        .collect();
    if stage.abandoned.load(Ordering::SeqCst) {
        let e = FtpFailure::Verify(
            "an upload into its new directory was abandoned; the directory was not put in place"
                .into(),
        );
        return abandon(store, stage, stored, e, out).await;
    }
    if dirs.first() != Some(&&stage.root) {
        return abandon(
            store,
            stage,
            stored,
            FtpFailure::Verify("its directory could not be created".into()),
            out,
        )
        .await;
    }

    // 1. The listings, all at once.
    let mut lists = JoinSet::new();
    for &dir in &dirs {
        let (store, dir, temp) = (store.clone(), dir.clone(), stage.temp_of(dir));
        lists.spawn(async move { (dir, store.list_dir_whole(&temp).await) });
    }
    let mut listed: HashMap<RelPath, Vec<ListEntry>> = HashMap::new();
    while let Some(joined) = lists.join_next().await {
        match joined {
            Ok((dir, Ok(entries))) => {
                listed.insert(dir, entries);
            }
            Ok((dir, Err(e))) => {
                let e = FtpFailure::Verify(format!(
                    "could not list the new directory {dir} to check its files: {e}"
                ));
                return abandon(store, stage, stored, e, out).await;
            }
            Err(e) => {
                let e = FtpFailure::Local(format!("internal error: {e}"));
                return abandon(store, stage, stored, e, out).await;
            }
        }
    }

    // 2. Each stored file at its size; anything else removed.
    let mut by_dir: HashMap<RelPath, HashMap<Vec<u8>, (RelPath, StateRecord)>> = HashMap::new();
    for (path, rec) in stored {
        by_dir
            .entry(path.parent().unwrap_or_default())
            .or_default()
            .insert(path.name().as_bytes().to_vec(), (path, rec));
    }
    let mut out = out;
    let mut good: Vec<(RelPath, StateRecord)> = Vec::new();
    let mut strays: Vec<String> = Vec::new();
    for &dir in &dirs {
        let mut files = by_dir.remove(dir).unwrap_or_default();
        for e in listed.remove(dir).unwrap_or_default() {
            if e.kind == EntryKind::Dir {
                continue;
            }
            // A name from the server is untrusted: one that could reach
            // outside the directory is never sent back in a command.
            let name = match crate::model::validate_name(&e.name) {
                Ok(n) => n.to_owned(),
                Err(why) => {
                    let e = FtpFailure::Verify(format!(
                        "the new directory {dir} holds an entry whose name is refused ({why})"
                    ));
                    let stored: Vec<_> = by_dir
                        .into_values()
                        .flat_map(HashMap::into_values)
                        .chain(files.into_values())
                        .chain(good)
                        .collect();
                    return abandon(store, stage, stored, e, out).await;
                }
            };
            let temp_path = || format!("{}/{name}", store.path(&stage.temp_of(dir)));
            match files.remove(&e.name) {
                Some((path, mut rec)) => {
                    let sent = rec.remote.as_ref().and_then(RemoteMeta::size);
                    if e.kind == EntryKind::File && e.size.is_some() && e.size == sent {
                        rec.remote = Some(RemoteMeta::new(e.size, e.mtime));
                        good.push((path, rec));
                    } else {
                        out.failed.push((
                            path,
                            FtpFailure::Verify(format!(
                                "the server lists {} bytes after an upload of {}",
                                e.size.map_or("no".into(), |n| n.to_string()),
                                sent.unwrap_or_default()
                            )),
                        ));
                        strays.push(temp_path());
                    }
                }
                None => strays.push(temp_path()),
            }
        }
        // Stored, then not listed.
        for (_, (path, _)) in files {
            out.failed.push((
                path,
                FtpFailure::Verify("not in the listing of its directory after the upload".into()),
            ));
        }
    }
    for stray in strays {
        if let Err(e) = store.remove_file(&stray).await {
            // It could be a partial file: never under a real name.
            let e = FtpFailure::Verify(format!(
                "could not remove {stray}, left by a failed upload: {e}"
            ));
            return abandon(store, stage, good, e, out).await;
        }
    }

    // 3. Into place.
    let (from, to) = (store.path(&stage.temp), store.path(&stage.root));
    match store.rename(&from, &to).await {
        Ok(()) => {}
        Err(FtpFailure::Reply { code, .. }) if code >= 500 => {
            tracing::info!(
                "the server refused to rename {from} to {to}; moving its entries one by one"
            );
            return move_entries(store, stage, &dirs, good, mode, out).await;
        }
        Err(e) => return abandon(store, stage, good, e, out).await,
    }
    out.placed
        .extend(dirs.iter().map(|&d| (d.clone(), dir_record())));
    out.placed.extend(good);
    out
}

fn dir_record() -> StateRecord {
    StateRecord {
        kind: Kind::Dir,
        local: None,
        remote: None,
    }
}

/// The stage cannot be placed: its files fail with `e`, and the temporary
/// directory is removed (or left for the next run, which removes it).
async fn abandon(
    store: &FtpStore,
    stage: &Stage,
    stored: Vec<(RelPath, StateRecord)>,
    e: FtpFailure,
    mut out: Finished,
) -> Finished {
    out.failed
        .extend(stored.into_iter().map(|(p, _)| (p, e.clone())));
    let temp = store.path(&stage.temp);
    if let Err(e) = store.remove_temp(&temp, false).await {
        tracing::warn!("could not remove {temp}: {e}; the next run will");
    }
    out
}

/// The server refused to rename the directory: creates it and each
/// directory in it, then moves the files into them one by one (a server
/// that will not rename a directory would not rename its subdirectories
/// either). Files whose directory could not be made, or that could not be
/// moved, fail; the temporary directory is then removed.
async fn move_entries(
    store: &FtpStore,
    stage: &Stage,
    dirs: &[&RelPath],
    good: Vec<(RelPath, StateRecord)>,
    mode: Option<u32>,
    mut out: Finished,
) -> Finished {
    if let Err(e) = store.mkdir(&stage.root, mode).await {
        return abandon(store, stage, good, e, out).await;
    }
    out.placed.push((stage.root.clone(), dir_record()));
    let mut made: Vec<&RelPath> = vec![&stage.root];
    // Parents first, as `dirs` is ordered.
    for &d in dirs.iter().skip(1) {
        if !d.parent().is_some_and(|p| made.contains(&&p)) {
            continue;
        }
        match store.mkdir(d, None).await {
            Ok(()) => {
                made.push(d);
                out.placed.push((d.clone(), dir_record()));
            }
            Err(e) => tracing::warn!("could not create {d}: {e}"),
        }
    }
    for (path, rec) in good {
        let result = if path.parent().is_some_and(|p| made.contains(&&p)) {
            let (from, to) = (store.path(&stage.temp_of(&path)), store.path(&path));
            store.rename(&from, &to).await
        } else {
            Err(FtpFailure::Verify(
                "its directory could not be created".into(),
            ))
        };
        match result {
            Ok(()) => out.placed.push((path, rec)),
            Err(e) => out.failed.push((path, e)),
        }
    }
    let temp = store.path(&stage.temp);
    if let Err(e) = store.remove_temp(&temp, false).await {
        tracing::warn!("could not remove {temp}: {e}; the next run will");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Side;
    use crate::plan::{PlanItem, Reason};

    fn item(op: Op, path: &str, size: u64) -> PlanItem {
        PlanItem {
            op,
            side: Side::Remote,
            path: RelPath::parse(path).unwrap(),
            kind: if op == Op::Mkdir {
                Kind::Dir
            } else {
                Kind::File
            },
            reason: Reason::New,
            size: (op == Op::Upload).then_some(size),
        }
    }

    fn plan(items: Vec<PlanItem>) -> Plan {
        Plan {
            items,
            ..Plan::default()
        }
    }

    fn roots(s: &Stages) -> Vec<String> {
        let mut r: Vec<String> = s.all().map(|s| s.root.as_str().to_owned()).collect();
        r.sort();
        r
    }

    #[test]
    fn new_directories_under_existing_ones_are_staged_with_all_they_hold() {
        let p = plan(vec![
            item(Op::Mkdir, "a", 0),
            item(Op::Mkdir, "a/b", 0),
            item(Op::Mkdir, "a/b/c", 0),
            item(Op::Mkdir, "old/new", 0),
            item(Op::Mkdir, "empty", 0),
            item(Op::Upload, "a/1", 10),
            item(Op::Upload, "a/b/c/2", 10),
            item(Op::Upload, "old/new/3", 10),
            item(Op::Upload, "old/4", 10),
            item(Op::Upload, "top", 10),
        ]);
        let s = Stages::choose(&p, true);
        assert_eq!(roots(&s), ["a", "old/new"]);
        let a = s.of(&RelPath::parse("a/b/c/2").unwrap()).unwrap();
        assert_eq!(a.root.as_str(), "a");
        let dirs: Vec<&str> = a.dirs.iter().map(RelPath::as_str).collect();
        assert_eq!(dirs, ["a", "a/b", "a/b/c"]);
        // The temporary name is a sibling that the scans know as one of ours.
        assert_eq!(a.temp.parent(), Some(RelPath::root()));
        assert!(crate::local::is_temp_name(a.temp.name()));
        assert_eq!(
            a.temp_of(&RelPath::parse("a/b/c/2").unwrap()).as_str(),
            format!("{}/b/c/2", a.temp.as_str())
        );
        let n = s.of(&RelPath::parse("old/new").unwrap()).unwrap();
        assert_eq!(n.temp.parent(), Some(RelPath::parse("old").unwrap()));
        // Existing directories, new empty ones and the root are not staged.
        assert!(s.of(&RelPath::parse("old/4").unwrap()).is_none());
        assert!(s.of(&RelPath::parse("top").unwrap()).is_none());
        assert!(s.of(&RelPath::parse("empty").unwrap()).is_none());
        assert!(Stages::choose(&p, false).is_empty());
    }

    #[test]
    fn a_directory_over_the_limits_stages_its_subdirectories_instead() {
        let mut items = vec![
            item(Op::Mkdir, "big", 0),
            item(Op::Mkdir, "big/small", 0),
            item(Op::Mkdir, "big/huge", 0),
            item(Op::Mkdir, "many", 0),
            item(Op::Mkdir, "heavy", 0),
            item(Op::Upload, "big/small/1", 10),
            item(Op::Upload, "big/huge/1", MAX_FILE + 1),
            item(Op::Upload, "big/huge/2", 10),
            item(Op::Upload, "big/3", 10),
        ];
        for i in 0..=MAX_FILES {
            items.push(item(Op::Upload, &format!("many/{i}"), 1));
        }
        for i in 0..65 {
            items.push(item(Op::Upload, &format!("heavy/{i}"), MAX_FILE));
        }
        let s = Stages::choose(&plan(items), true);
        assert_eq!(roots(&s), ["big/small"]);
    }
}
