//! The local side: scanning the tree under the job's local path (sorted,
//! filtered, symlinks never followed), hashing, and the safe construction of
//! local paths for writes.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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
    walk(
        root,
        &RelPath::root(),
        filters,
        paths,
        &mut tree,
        &mut temps,
    );
    tree.compact();
    (tree, temps)
}

fn walk(
    root: &Path,
    dir: &RelPath,
    filters: &Filters,
    paths: &PathInterner,
    tree: &mut LocalTree,
    temps: &mut Vec<RelPath>,
) {
    let abs = dir.to_local(root);
    let rd = match fs::read_dir(&abs) {
        Ok(rd) => rd,
        Err(e) => {
            tree.untrusted.insert(dir.clone());
            tree.problems.push(Problem {
                path: dir.to_string(),
                message: format!("cannot read directory: {e}"),
            });
            return;
        }
    };
    let mut children = Vec::new();
    for item in rd {
        match item {
            Ok(item) => children.push(item),
            Err(e) => {
                tree.untrusted.insert(dir.clone());
                tree.problems.push(Problem {
                    path: dir.to_string(),
                    message: format!("directory listing failed: {e}"),
                });
                return;
            }
        }
    }
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let os_name = child.file_name();
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
        let md = match fs::symlink_metadata(child.path()) {
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
            walk(root, &rel, filters, paths, tree, temps);
        } else if ft.is_file() {
            if is_temp_name(name) {
                temps.push(rel);
                continue;
            }
            if !filters.accepts_file(rel.as_str()) {
                tree.holds_unsynced.insert(dir.clone());
                continue;
            }
            tree.add(
                rel,
                Entry::file(LocalMeta {
                    size: md.len(),
                    mtime_ns: mtime_ns(&md),
                    sha256: None,
                }),
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
                .size,
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
