//! What a scan found: the entries of one side of a sync, keyed by path, plus
//! the subtrees whose scan could not be trusted and the names that were
//! skipped. Both the local and the remote scan produce a [`Tree`].

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;

use crate::model::RelPath;
use crate::model::RemoteTime;
use crate::model::time::PackedTime;

/// File or directory. Other kinds (symlinks, devices) are reported and skipped by the scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
        }
    }
}

/// A local file's fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct LocalMeta {
    /// The size plus one (see [`LocalMeta::size`]). A type that is never
    /// zero leaves `Option<LocalMeta>`, in every entry of the local tree
    /// and every record of the state, the size of a `LocalMeta`: 24 bytes
    /// rather than 32.
    size_plus_one: NonZeroU64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// SHA-256 of the content, computed only in `compare: hash` mode and only when needed.
    /// Boxed: most entries have none, and the tree holds a million of them.
    pub sha256: Option<Box<[u8; 32]>>,
}

impl LocalMeta {
    /// A file's size is at most `i64::MAX` (what `off_t` and the state's
    /// SQLite integers hold; the local scan skips a file that claims more).
    /// Anything at `u64::MAX` is kept as `u64::MAX - 1`, which no file has either.
    pub fn new(size: u64, mtime_ns: i64, sha256: Option<Box<[u8; 32]>>) -> LocalMeta {
        LocalMeta {
            size_plus_one: plus_one(size),
            mtime_ns,
            sha256,
        }
    }

    pub fn size(&self) -> u64 {
        self.size_plus_one.get() - 1
    }
}

/// A size kept as size + 1, so that it is never zero and an `Option` around
/// it (or around what holds it) costs no tag. `u64::MAX` saturates to
/// `u64::MAX - 1`: no file has either, and no listing is believed past
/// `i64::MAX` (what the state's SQLite integers hold).
fn plus_one(size: u64) -> NonZeroU64 {
    NonZeroU64::MIN.saturating_add(size)
}

impl std::fmt::Debug for LocalMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMeta")
            .field("size", &self.size())
            .field("mtime_ns", &self.mtime_ns)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// A remote file's fingerprint, exactly as the listing reported it.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteMeta {
    /// The size plus one (see [`plus_one`]), `None` when the listing gave
    /// none: one word where an `Option<u64>` takes two, in every entry of
    /// the remote tree and every record of the state.
    size_plus_one: Option<NonZeroU64>,
    /// The time, packed (see [`PackedTime`]): with the size, 16 bytes, and
    /// an `Option<RemoteMeta>` no more.
    time: PackedTime,
}

impl RemoteMeta {
    pub fn new(size: Option<u64>, mtime: RemoteTime) -> RemoteMeta {
        RemoteMeta {
            size_plus_one: size.map(plus_one),
            time: PackedTime::pack(mtime),
        }
    }

    /// The size the listing gave, if it gave one.
    pub fn size(&self) -> Option<u64> {
        self.size_plus_one.map(|s| s.get() - 1)
    }

    /// The time the listing gave (fractions of a second dropped).
    pub fn mtime(&self) -> RemoteTime {
        self.time.unpack()
    }

    pub fn set_mtime(&mut self, mtime: RemoteTime) {
        self.time = PackedTime::pack(mtime);
    }
}

impl std::fmt::Debug for RemoteMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMeta")
            .field("size", &self.size())
            .field("mtime", &self.mtime())
            .finish()
    }
}

/// One entry of a scanned tree: a file with its fingerprint, or a
/// directory (`meta` is `None`). The kind is not stored apart: a million
/// entries in each tree were 8 bytes apiece bigger with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<M> {
    pub meta: Option<M>,
}

impl<M> Entry<M> {
    pub fn dir() -> Self {
        Entry { meta: None }
    }
    pub fn file(meta: M) -> Self {
        Entry { meta: Some(meta) }
    }
    pub fn kind(&self) -> Kind {
        if self.meta.is_some() {
            Kind::File
        } else {
            Kind::Dir
        }
    }
}

/// Something a scan skipped or could not read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The path as far as it is known (may be lossy for undecodable names).
    pub path: String,
    pub message: String,
}

/// How one directory's listing was obtained. A listing that needed a retry,
/// came back empty, or came over the control connection, may be wrong in
/// the way that matters most (a name missing from it reads as "deleted on
/// the source"), so deletes rest on it only once a second, independent
/// listing agreed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListingFacts {
    /// An attempt failed before one came back.
    pub retried: bool,
    /// It held no entry at all.
    pub empty: bool,
    /// It came over the control connection (`STAT`), whose reply a name
    /// holding a line break could end early.
    pub by_control: bool,
    /// How many names it held (of every kind, refused names included).
    pub names: usize,
    /// A digest of those names, to compare a second listing with.
    pub digest: u64,
    pub second: SecondListing,
}

/// What a second listing of a directory said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecondListing {
    /// None was made.
    #[default]
    NotAsked,
    /// It held exactly the same names.
    Agreed,
    /// It held other names, failed, or could not be fully read.
    Disagreed,
}

/// A scanned side. `untrusted` holds directories whose listing failed: nothing
/// below them is known, so the planner neither deletes nor transfers there.
#[derive(Debug, Clone)]
pub struct Tree<M> {
    pub entries: BTreeMap<RelPath, Entry<M>>,
    pub untrusted: BTreeSet<RelPath>,
    /// Directories whose listing had unparseable lines or refused names: not
    /// everything in them is known, so deletes are never planned below them.
    pub incomplete: BTreeSet<RelPath>,
    /// How each listed directory's listing was obtained (the remote scan;
    /// the local one reads the disk and records none): what the planner's
    /// delete-trust rule asks about (see [`crate::plan`]).
    pub listings: BTreeMap<RelPath, ListingFacts>,
    /// Directories that directly hold something not synced (excluded by the
    /// filters, a symlink, a special file): they cannot be removed.
    pub holds_unsynced: BTreeSet<RelPath>,
    pub problems: Vec<Problem>,
    /// The mode bits the scan saw: of directories on the local disk (an
    /// upload reads its file's mode when it opens it), of files and
    /// directories in a remote listing that shows modes. Only what a
    /// transfer or mkdir gives its target: not part of a file's
    /// fingerprint, so a change of mode alone transfers nothing.
    pub modes: BTreeMap<RelPath, u32>,
    /// Whether the root itself exists.
    pub root_exists: bool,
    /// How many entries `entries` held when [`Tree::add`] last packed it.
    packed_len: usize,
}

/// [`Tree::add`] packs the entries once they grew by this fraction of
/// what was packed before (1/`PACK_GROWTH`): at most that share of the map
/// is ever in half-full nodes, and every entry is moved about
/// `PACK_GROWTH + 1` times in all.
const PACK_GROWTH: usize = 8;

/// Below this many entries [`Tree::add`] does not pack (compact does, at the end).
const PACK_MIN: usize = 4096;

impl<M> Default for Tree<M> {
    fn default() -> Self {
        Tree {
            entries: BTreeMap::new(),
            untrusted: BTreeSet::new(),
            incomplete: BTreeSet::new(),
            listings: BTreeMap::new(),
            holds_unsynced: BTreeSet::new(),
            problems: Vec::new(),
            modes: BTreeMap::new(),
            root_exists: true,
            packed_len: 0,
        }
    }
}

impl<M> Tree<M> {
    /// Rebuilds the maps with full nodes (see [`pack`]). Inserting paths in
    /// order (as the scans do) leaves a `BTreeMap`'s nodes about half full;
    /// packing them saves about a third of the tree's memory at a million
    /// entries. Call once a scan is done.
    pub fn compact(&mut self) {
        pack(&mut self.entries);
        pack(&mut self.modes);
        self.packed_len = self.entries.len();
    }

    /// Adds what a scan found at `path`, as `entries.insert` would.
    ///
    /// A map that grows by inserts in order (or a directory at a time) is
    /// mostly half-full nodes until [`Tree::compact`] packs it, and at its
    /// largest, at the end of a scan, that was the peak of a run: the
    /// entries are packed as they grow instead (see [`PACK_GROWTH`]).
    pub fn add(&mut self, path: RelPath, entry: Entry<M>) {
        self.entries.insert(path, entry);
        let len = self.entries.len();
        if len >= PACK_MIN && len >= self.packed_len + self.packed_len / PACK_GROWTH {
            pack(&mut self.entries);
            self.packed_len = len;
        }
    }

    pub fn file_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.kind() == Kind::File)
            .count()
    }
}

pub type LocalTree = Tree<LocalMeta>;
pub type RemoteTree = Tree<RemoteMeta>;

/// Rebuilds `map` with full nodes, without a second copy of it at any time.
///
/// A `BTreeMap` that grew by inserts has its nodes half to two thirds full.
/// Collecting it into a new map would pack them, but `FromIterator` first
/// gathers every entry in a `Vec`, so for a moment the entries are held
/// twice. `append` into a non-empty map instead merges the two in order and
/// builds the result with full nodes as it goes, while the consumed map's
/// nodes are freed one by one: the memory in use never grows.
pub fn pack<K: Ord, V>(map: &mut BTreeMap<K, V>) {
    let mut rest = std::mem::take(map);
    let Some(first) = rest.pop_first() else {
        return;
    };
    let mut packed = BTreeMap::from([first]);
    packed.append(&mut rest);
    *map = packed;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_size_leaves_room_for_the_option_and_reads_back_as_given() {
        assert_eq!(std::mem::size_of::<LocalMeta>(), 24);
        assert_eq!(std::mem::size_of::<Entry<LocalMeta>>(), 24);
        for size in [0, 1, 4096, i64::MAX as u64, u64::MAX - 1] {
            let m = LocalMeta::new(size, -5, None);
            assert_eq!((m.size(), m.mtime_ns), (size, -5));
            assert_eq!(m, LocalMeta::new(size, -5, None));
            assert_ne!(m, LocalMeta::new(size, -5, Some(Box::new([0; 32]))));
        }
        assert_ne!(LocalMeta::new(0, 0, None), LocalMeta::new(1, 0, None));
        assert_eq!(LocalMeta::new(u64::MAX, 0, None).size(), u64::MAX - 1);
        assert_eq!(
            format!("{:?}", LocalMeta::new(7, 9, None)),
            "LocalMeta { size: 7, mtime_ns: 9, sha256: None }"
        );
    }

    #[test]
    fn a_remote_size_is_one_word_and_reads_back_as_given() {
        // Two words (the time packed), with or without a time or a size.
        assert_eq!(std::mem::size_of::<RemoteMeta>(), 16);
        assert_eq!(std::mem::size_of::<Option<RemoteMeta>>(), 16);
        assert_eq!(std::mem::size_of::<Entry<RemoteMeta>>(), 16);
        for size in [
            None,
            Some(0),
            Some(1),
            Some(i64::MAX as u64),
            Some(u64::MAX - 1),
        ] {
            let m = RemoteMeta::new(size, RemoteTime::Unknown);
            assert_eq!(m.size(), size);
            assert_eq!(m, RemoteMeta::new(size, RemoteTime::Unknown));
        }
        assert_ne!(
            RemoteMeta::new(None, RemoteTime::Unknown),
            RemoteMeta::new(Some(0), RemoteTime::Unknown)
        );
        assert_eq!(
            format!("{:?}", RemoteMeta::new(None, RemoteTime::Unknown)),
            "RemoteMeta { size: None, mtime: Unknown }"
        );
    }

    #[test]
    fn add_inserts_and_packs_as_the_tree_grows() {
        let mut tree = LocalTree::default();
        let mut plain = BTreeMap::new();
        let root = RelPath::root();
        for i in 0..3 * PACK_MIN {
            // Out of order, as the remote scan's directories come back.
            let name = format!("f{:05}", i * 7919 % (3 * PACK_MIN));
            let path = root.join(name.as_bytes()).unwrap();
            tree.add(path.clone(), Entry::dir());
            plain.insert(path, Entry::dir());
        }
        assert_eq!(tree.entries, plain);
        assert!(
            tree.packed_len >= 2 * PACK_MIN,
            "not packed while growing ({})",
            tree.packed_len
        );
    }

    #[test]
    fn pack_keeps_every_entry_in_order() {
        for n in [0, 1, 2, 11, 12, 1000] {
            // Inserted out of order, one by one, as a scan does.
            let mut map = BTreeMap::new();
            for i in 0..n {
                map.insert(i * 7919 % 10007, i.to_string());
            }
            let before: Vec<(u32, String)> = map.clone().into_iter().collect();
            pack(&mut map);
            assert_eq!(map.len(), before.len());
            assert_eq!(map.into_iter().collect::<Vec<_>>(), before, "n = {n}");
        }
    }
}
