//! The local side: scanning the tree under the job's local path (sorted,
//! filtered, symlinks never followed), hashing, and the safe construction of
//! local paths for writes.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::job::Filters;
use crate::model::RelPath;
use crate::model::{Entry, LocalMeta, LocalTree, PathInterner, Problem};

/// Prefix of the temporary names ftpsync writes beside their final names.
/// Entries with this prefix are never synced, and leftovers are removed.
pub const TEMP_PREFIX: &str = ".ftpsync-";
/// Suffix of the temporary names.
pub const TEMP_SUFFIX: &str = ".part";

/// Whether `name` is one of ftpsync's temporary names
/// (`.ftpsync-<16 hex>.part`).
pub fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .and_then(|r| r.strip_suffix(TEMP_SUFFIX))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A fresh temporary name for a file in the same directory as its target.
pub fn temp_name() -> String {
    format!("{TEMP_PREFIX}{:016x}{TEMP_SUFFIX}", rand::random::<u64>())
}

/// Nanoseconds since the epoch of a file's modification time.
pub fn mtime_ns(md: &fs::Metadata) -> i64 {
    match md.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        },
        Err(_) => 0,
    }
}

/// The process's umask (Linux: read from /proc, which does not change it;
/// elsewhere the common 022). Modes taken from a server are masked by it,
/// as a file the process created itself would be.
pub fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
            })
            .unwrap_or(0o022)
    })
}

/// Scans `root`. A missing root gives an empty tree with `root_exists =
/// false`; directories that cannot be read are marked untrusted; temporary
/// files of ftpsync are listed in `temps` for cleanup. A path `paths` knows
/// is taken from it rather than allocated again.
pub fn scan(root: &Path, filters: &Filters, paths: &PathInterner) -> (LocalTree, Vec<RelPath>) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, SCAN_THREADS);
    scan_with(root, filters, paths, threads)
}

/// [`scan`] with `threads` threads reading directories.
fn scan_with(
    root: &Path,
    filters: &Filters,
    paths: &PathInterner,
    threads: usize,
) -> (LocalTree, Vec<RelPath>) {
    let mut tree = LocalTree::default();
    let mut temps = Vec::new();
    match fs::symlink_metadata(root) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            tree.root_exists = false;
            tree.problems.push(Problem {
                path: root.display().to_string(),
                message: "local path is not a directory".into(),
            });
            return (tree, temps);
        }
        Err(_) => {
            tree.root_exists = false;
            return (tree, temps);
        }
    }
    let queue = DirQueue::new(RelPath::root());
    let parts: Vec<(LocalTree, Vec<RelPath>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (1..threads)
            .map(|_| s.spawn(|| walk_from(&queue, root, filters, paths)))
            .collect();
        let mut parts = vec![walk_from(&queue, root, filters, paths)];
        for w in workers {
            match w.join() {
                Ok(part) => parts.push(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        parts
    });
    for (mut part, mut found) in parts {
        tree.entries.append(&mut part.entries);
        tree.untrusted.append(&mut part.untrusted);
        tree.holds_unsynced.append(&mut part.holds_unsynced);
        tree.modes.append(&mut part.modes);
        tree.problems.append(&mut part.problems);
        temps.append(&mut found);
    }
    // In the same order whichever thread read what.
    tree.problems.sort_by(|a, b| a.path.cmp(&b.path));
    temps.sort();
    tree.compact();
    (tree, temps)
}

/// At most this many threads read directories at once: the metadata of a
/// tree is mostly in the page cache, and then the scan is bound by the CPU
/// (a stat for each name) while the remote scan mostly waits on the server.
const SCAN_THREADS: usize = 4;

/// The directories still to read, how many are being read (their
/// subdirectories are still to come), and whether a thread panicked.
struct DirQueue {
    state: Mutex<(Vec<RelPath>, usize, bool)>,
    changed: Condvar,
}

impl DirQueue {
    fn new(first: RelPath) -> DirQueue {
        DirQueue {
            state: Mutex::new((vec![first], 0, false)),
            changed: Condvar::new(),
        }
    }

    /// The next directory to read; `None` once every one has been read (or
    /// a thread panicked: the scan is over).
    fn next(&self) -> Option<RelPath> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.2 {
                return None;
            }
            if let Some(dir) = g.0.pop() {
                g.1 += 1;
                return Some(dir);
            }
            if g.1 == 0 {
                return None;
            }
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One directory read, with these subdirectories to read next.
    fn done(&self, subdirs: Vec<RelPath>) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.0.extend(subdirs);
        g.1 -= 1;
        self.changed.notify_all();
    }

    /// A thread panicked while reading a directory: the others stop
    /// instead of waiting for it, and the panic is raised by the scope.
    fn abandon(&self) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.2 = true;
        self.changed.notify_all();
    }
}

/// Abandons the queue if dropped while a directory is being read (a panic).
struct Reading<'a>(&'a DirQueue);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// One scanning thread: reads directories from `queue` until none is left,
/// into a tree of its own.
fn walk_from(
    queue: &DirQueue,
    root: &Path,
    filters: &Filters,
    paths: &PathInterner,
) -> (LocalTree, Vec<RelPath>) {
    let mut tree = LocalTree::default();
    let mut temps = Vec::new();
    while let Some(dir) = queue.next() {
        let reading = Reading(queue);
        let subdirs = read_one(root, &dir, filters, paths, &mut tree, &mut temps);
        std::mem::forget(reading);
        queue.done(subdirs);
    }
    (tree, temps)
}

/// Reads the directory `dir` into `tree`; returns its subdirectories to read.
fn read_one(
    root: &Path,
    dir: &RelPath,
    filters: &Filters,
    paths: &PathInterner,
    tree: &mut LocalTree,
    temps: &mut Vec<RelPath>,
) -> Vec<RelPath> {
    let mut subdirs = Vec::new();
    let abs = dir.to_local(root);
    let rd = match fs::read_dir(&abs) {
        Ok(rd) => rd,
        Err(e) => {
            tree.untrusted.insert(dir.clone());
            tree.problems.push(Problem {
                path: dir.to_string(),
                message: format!("cannot read directory: {e}"),
            });
            return subdirs;
        }
    };
    // Each name is copied out once: sorting on `DirEntry::file_name`
    // would copy it again for every comparison.
    let mut children = Vec::new();
    for item in rd {
        match item {
            Ok(item) => children.push((item.file_name(), item)),
            Err(e) => {
                tree.untrusted.insert(dir.clone());
                tree.problems.push(Problem {
                    path: dir.to_string(),
                    message: format!("directory listing failed: {e}"),
                });
                return subdirs;
            }
        }
    }
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (os_name, child) in children {
        let Some(name) = os_name.to_str() else {
            tree.problems.push(Problem {
                path: format!("{}/{}", dir, os_name.to_string_lossy()),
                message: "name is not valid UTF-8: skipped".into(),
            });
            continue;
        };
        let rel = match paths.join(dir, name.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                tree.problems.push(Problem {
                    path: format!("{dir}/{name:?}"),
                    message: format!("name refused ({e}): skipped"),
                });
                continue;
            }
        };
        // Relative to the directory's descriptor (fstatat, links not
        // followed): no walk of the whole path again for every name.
        let md = match child.metadata() {
            Ok(md) => md,
            Err(e) => {
                tree.problems.push(Problem {
                    path: rel.to_string(),
                    message: format!("cannot stat: {e}"),
                });
                // Unknown state: treat like an unreadable subtree so nothing is deleted for it.
                tree.untrusted.insert(rel);
                continue;
            }
        };
        let ft = md.file_type();
        if ft.is_dir() {
            if filters.excludes_dir(rel.as_str()) {
                tree.holds_unsynced.insert(dir.clone());
                continue;
            }
            // For a mkdir on the server. A file's mode is read when it is
            // uploaded (from the same stat that checks it is unchanged), so
            // it is not kept here for every file.
            tree.modes.insert(rel.clone(), md.permissions().mode());
            tree.add(rel.clone(), Entry::dir());
            subdirs.push(rel);
        } else if ft.is_file() {
            if is_temp_name(name) {
                temps.push(rel);
                continue;
            }
            if !filters.accepts_file(rel.as_str()) {
                tree.holds_unsynced.insert(dir.clone());
                continue;
            }
            if i64::try_from(md.len()).is_err() {
                // A broken file system's st_size of -1, read as unsigned.
                tree.holds_unsynced.insert(dir.clone());
                tree.problems.push(Problem {
                    path: rel.to_string(),
                    message: format!(
                        "the disk reports an impossible size ({} bytes): skipped",
                        md.len()
                    ),
                });
                continue;
            }
            tree.add(
                rel,
                Entry::file(LocalMeta::new(md.len(), mtime_ns(&md), None)),
            );
        } else if ft.is_symlink() {
            tree.holds_unsynced.insert(dir.clone());
            if filters.accepts_file(rel.as_str()) {
                tree.problems.push(Problem {
                    path: rel.to_string(),
                    message: "symbolic link: not followed, skipped".into(),
                });
            }
        } else {
            tree.holds_unsynced.insert(dir.clone());
            if filters.accepts_file(rel.as_str()) {
                tree.problems.push(Problem {
                    path: rel.to_string(),
                    message: "not a regular file or directory: skipped".into(),
                });
            }
        }
    }
    subdirs
}

/// SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    Ok(digest_with::<Sha256>(path)?.into())
}

/// The SHA-256 of `data`.
pub fn sha256_bytes(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// [`digests_file`] of bytes in memory.
pub fn digests_bytes(data: &[u8], algo: crate::ftp::conn::HashAlgo) -> (Vec<u8>, [u8; 32]) {
    use crate::ftp::conn::HashAlgo;
    let sha256 = sha256_bytes(data);
    let digest = match algo {
        HashAlgo::Sha256 => sha256.to_vec(),
        HashAlgo::Sha1 => sha1::Sha1::digest(data).to_vec(),
        HashAlgo::Md5 => md5::Md5::digest(data).to_vec(),
    };
    (digest, sha256)
}

/// A file's digest with `algo` (to compare with a server's hash command),
/// and its SHA-256 (what the state records), reading the file once.
pub fn digests_file(
    path: &Path,
    algo: crate::ftp::conn::HashAlgo,
) -> io::Result<(Vec<u8>, [u8; 32])> {
    use crate::ftp::conn::HashAlgo;
    let mut sha256 = Sha256::new();
    let mut other: Box<dyn sha2::digest::DynDigest> = match algo {
        HashAlgo::Sha256 => Box::new(Sha256::new()),
        HashAlgo::Sha1 => Box::new(sha1::Sha1::new()),
        HashAlgo::Md5 => Box::new(md5::Md5::new()),
    };
    read_chunks(path, |chunk| {
        sha256.update(chunk);
        if algo != HashAlgo::Sha256 {
            other.update(chunk);
        }
    })?;
    let sha256: [u8; 32] = sha256.finalize().into();
    let digest = if algo == HashAlgo::Sha256 {
        sha256.to_vec()
    } else {
        other.finalize().to_vec()
    };
    Ok((digest, sha256))
}

fn digest_with<D: sha2::Digest>(path: &Path) -> io::Result<sha2::digest::Output<D>> {
    let mut h = D::new();
    read_chunks(path, |chunk| h.update(chunk))?;
    Ok(h.finalize())
}

/// Feeds a file's content to `f`, a buffer at a time.
fn read_chunks(path: &Path, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}

/// The local path of `rel` for writing, after checking that no existing
/// component between `root` and it is a symbolic link: a link planted in the
/// tree could otherwise redirect a write outside the root.
pub fn safe_path(root: &Path, rel: &RelPath) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    for part in rel.as_str().split('/').filter(|s| !s.is_empty()) {
        p.push(part);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is a symbolic link; refusing to write through it",
                        p.display()
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    #[test]
    fn temp_names() {
        let t = temp_name();
        assert!(is_temp_name(&t), "{t}");
        assert!(!is_temp_name(".ftpsync-zz.part"));
        assert!(!is_temp_name("index.html"));
    }

    /// A scanning thread that panics while reading a directory stops the
    /// others, which would otherwise wait for its subdirectories forever.
    #[test]
    fn a_panicking_scan_thread_stops_the_others() {
        let q = std::sync::Arc::new(DirQueue::new(RelPath::root()));
        let taken = q.next();
        assert!(taken.is_some());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = std::sync::Arc::clone(&q);
        // Nothing queued, one directory being read: this one waits.
        std::thread::spawn(move || tx.send(waiting.next()).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _reading = Reading(&q);
            panic!("a directory that cannot be read");
        }));
        assert!(panicked.is_err());
        let next = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(next, Ok(None), "the other thread still waits");
    }

    /// Directories read by several threads at once give exactly the tree,
    /// temporary files and problems of one thread reading them all.
    #[test]
    fn threads_scan_the_same_tree_as_one() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let mut files = 0;
        for a in 0..6 {
            for b in 0..4 {
                let dir = r.join(format!("a{a}/b{b}/c"));
                fs::create_dir_all(&dir).unwrap();
                for f in 0..5 {
                    fs::write(dir.join(format!("f{f}.txt")), "x".repeat(f)).unwrap();
                    fs::write(r.join(format!("a{a}/b{b}/g{f}")), "y").unwrap();
                    files += 2;
                }
                std::os::unix::fs::symlink("/etc", dir.join("link")).unwrap();
            }
            fs::write(r.join(format!("a{a}/{}", temp_name())), "partial").unwrap();
        }
        fs::create_dir(r.join("locked")).unwrap();
        fs::set_permissions(r.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let f = Filters::new(&[], &["**/g4".into()]).unwrap();
        let one = scan_with(r, &f, &PathInterner::default(), 1);
        let four = scan_with(r, &f, &PathInterner::default(), 4);
        fs::set_permissions(r.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
        let kinds = |t: &LocalTree| -> Vec<(String, Option<u64>)> {
            t.entries
                .iter()
                .map(|(p, e)| (p.to_string(), e.meta.as_ref().map(|m| m.size())))
                .collect()
        };
        assert_eq!(
            one.0.entries.values().filter(|e| e.meta.is_some()).count(),
            files - 6 * 4,
            "every file but the excluded g4s"
        );
        assert_eq!(kinds(&four.0), kinds(&one.0));
        assert_eq!(four.0.untrusted, one.0.untrusted);
        assert_eq!(four.0.holds_unsynced, one.0.holds_unsynced);
        assert_eq!(four.0.modes, one.0.modes);
        assert_eq!(four.0.problems, one.0.problems);
        assert_eq!(four.1, one.1);
        assert_eq!(four.1.len(), 6);
        assert_eq!(
            four.0.problems.len(),
            6 * 4 + usize::from(!four.0.untrusted.is_empty())
        );
    }

    #[test]
    fn scan_sorted_filtered_no_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("b/c")).unwrap();
        fs::create_dir_all(r.join(".git")).unwrap();
        fs::write(r.join(".git/config"), "x").unwrap();
        fs::write(r.join("a.txt"), "hello").unwrap();
        fs::write(r.join("b/c/x.tmp"), "t").unwrap();
        fs::write(r.join("b/c/keep"), "").unwrap();
        fs::write(r.join(format!("b/{}", temp_name())), "partial").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        let f = Filters::new(&[], &[".git/**".into(), "**/*.tmp".into()]).unwrap();
        let known = RelPath::parse("b/c/keep").unwrap();
        let interner = PathInterner::new([known.clone()]);
        let (tree, temps) = scan(r, &f, &interner);
        let paths: Vec<_> = tree.entries.keys().map(|p| p.as_str().to_owned()).collect();
        assert_eq!(paths, ["a.txt", "b", "b/c", "b/c/keep"]);
        let (found, _) = tree.entries.get_key_value(&known).unwrap();
        assert!(
            RelPath::same_text(found, &known),
            "the scan made its own copy of a known path"
        );
        assert_eq!(
            tree.entries[&RelPath::parse("a.txt").unwrap()]
                .meta
                .as_ref()
                .unwrap()
                .size(),
            5
        );
        assert_eq!(
            tree.entries[&RelPath::parse("b").unwrap()].kind(),
            Kind::Dir
        );
        let with_modes: Vec<_> = tree.modes.keys().map(RelPath::as_str).collect();
        assert_eq!(
            with_modes,
            ["b", "b/c"],
            "modes are kept for directories only"
        );
        assert_eq!(temps.len(), 1);
        assert_eq!(tree.problems.len(), 1, "{:?}", tree.problems);
        assert!(tree.problems[0].message.contains("symbolic link"));
        assert!(tree.root_exists);
        let (missing, _) = scan(&r.join("nope"), &f, &PathInterner::default());
        assert!(!missing.root_exists);
    }

    #[test]
    fn safe_path_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", d.path().join("evil")).unwrap();
        assert!(safe_path(d.path(), &RelPath::parse("evil/x").unwrap()).is_err());
        assert!(safe_path(d.path(), &RelPath::parse("ok/x").unwrap()).is_ok());
    }
}
