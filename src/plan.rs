//! The three-way comparison: local tree × remote tree × state → a plan of
//! operations, each with the reason for it. Pure: no I/O, so every case is
//! a unit test.
//!
//! The planner thinks in terms of a *source* and a *target* (push: local →
//! remote, pull: remote → local). For each path it asks whether each side
//! changed since the state recorded it, and then decides:
//!
//! | source | target | state | result |
//! |---|---|---|---|
//! | file | — | — | transfer (new) |
//! | file | — | seen | transfer (target lost it) |
//! | file | file | — | adopt if size/time match (time as [`crate::adoption`] judged it, where it did), else transfer (push) / conflict (pull) |
//! | file | file | seen | transfer if source changed; if target changed: overwrite (push, reported as drift) or keep (pull, conflict) |
//! | — | file | seen | delete if `delete: true`, else forget |
//! | — | file | — | delete if `delete: true` (never synced), else leave |
//! | — | — | seen | forget |
//!
//! Directories follow the same pattern with mkdir/rmdir. Nothing is planned
//! below a directory whose listing failed.
//!
//! **Listings are trusted for deletes only when they are complete** (one rule
//! for every row above that deletes, with or without state, push or pull): a
//! delete (or rmdir) on the target rests on the source's listing of the
//! directory that shows the path absent (the nearest directory above it that
//! the source has). It is planned only if that listing parsed completely,
//! and, if it needed a retry, came back empty or came over the control
//! connection (STAT), a second, independent listing agreed on its names. Otherwise the item is kept with
//! [`Reason::SuspectListing`] (incomplete) or [`Reason::ListingUnconfirmed`],
//! and [`Plan::unconfirmed`] names the directories to list again.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::job::{CompareMode, Direction};
use crate::model::RelPath;
use crate::model::{
    Entry, Kind, LocalMeta, LocalTree, RemoteMeta, RemoteTree, SecondListing, Tree,
};
use crate::model::{RemoteTime, Side};
use crate::state::StateRecord;

/// What an item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Mkdir,
    Upload,
    Download,
    Delete,
    Rmdir,
    /// Record in the state without transferring (already identical).
    Adopt,
    /// Drop from the state (gone, or deliberately left alone).
    Forget,
    /// Nothing is done; reported because the user should know (conflict, delete disabled, …).
    Keep,
}

/// Why an item is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Only the source has it and it was never synced.
    New,
    /// The source changed since the last sync.
    SourceChanged,
    /// The target changed behind ftpsync's back (drift); push overwrites it.
    TargetChanged,
    /// Both changed since the last sync.
    BothChanged,
    /// The target lost a path that the last sync put there.
    TargetMissing,
    /// Both exist, no state, and they differ.
    Differs,
    /// Both exist, no state, same size and time.
    Identical,
    /// Both exist, no state, same size, and the same time once the
    /// server's offset (time zone, clock) learned in this run is allowed for.
    SameTimeOffset,
    /// Both exist, no state, same size, and the server's hash of its file
    /// equals the local file's.
    SameHash,
    /// The state lacked the remote time (after an upload); taken from the listing.
    RecordRefresh,
    /// The source deleted it since the last sync.
    SourceDeleted,
    /// Only the target has it and ftpsync never synced it.
    NotInSource,
    /// Gone from both sides.
    Gone,
    /// A file on one side, a directory on the other.
    TypeConflict,
    /// A delete was wanted but `delete: false`.
    DeleteDisabled,
    /// No delete below a directory whose listing had unparseable lines or refused names.
    SuspectListing,
    /// No delete below a directory whose listing needed a retry or came back
    /// empty, and that a second listing did not confirm.
    ListingUnconfirmed,
    /// A directory that still holds things not synced (excluded, symlinks): not removed.
    HoldsUnsynced,
}

impl Reason {
    /// Human wording, from the point of view of `direction`.
    pub fn describe(self, direction: Direction) -> &'static str {
        use Direction::{Pull, Push};
        match (self, direction) {
            (Reason::New, Push) => "new locally",
            (Reason::New, Pull) => "new on the server",
            (Reason::SourceChanged, Push) => "changed locally",
            (Reason::SourceChanged, Pull) => "changed on the server",
            (Reason::TargetChanged, Push) => {
                "changed on the server since the last sync (drift): overwritten"
            }
            (Reason::TargetChanged, Pull) => "changed locally since the last sync: kept (conflict)",
            (Reason::BothChanged, Push) => {
                "changed on both sides since the last sync (drift): local copy wins"
            }
            (Reason::BothChanged, Pull) => {
                "changed on both sides since the last sync: local copy kept (conflict)"
            }
            (Reason::TargetMissing, Push) => "missing on the server since the last sync",
            (Reason::TargetMissing, Pull) => "missing locally since the last sync",
            (Reason::Differs, Push) => "differs on the server and was never synced: overwritten",
            (Reason::Differs, Pull) => "differs locally and was never synced: kept (conflict)",
            (Reason::Identical, _) => "already identical (same size and time)",
            (Reason::SameTimeOffset, _) => {
                "already identical (same size, and the same time once the server's offset is allowed for)"
            }
            (Reason::SameHash, _) => "already identical (same size, same hash on the server)",
            (Reason::RecordRefresh, _) => "state refreshed from the listing",
            (Reason::SourceDeleted, Push) => "deleted locally",
            (Reason::SourceDeleted, Pull) => "deleted on the server",
            (Reason::NotInSource, Push) => "not present locally",
            (Reason::NotInSource, Pull) => "not present on the server",
            (Reason::Gone, _) => "gone from both sides",
            (Reason::TypeConflict, _) => {
                "a file on one side and a directory on the other: left alone"
            }
            (Reason::DeleteDisabled, Push) => "deleted locally; kept on the server (delete: false)",
            (Reason::DeleteDisabled, Pull) => "deleted on the server; kept locally (delete: false)",
            (Reason::HoldsUnsynced, _) => {
                "not removed: it holds files the job does not sync (excluded by the filters, or links)"
            }
            (Reason::SuspectListing, _) => "not deleted: its directory's listing was incomplete",
            (Reason::ListingUnconfirmed, _) => {
                "not deleted: its directory's listing needed a retry, came back empty or came over the control connection, and a second listing did not confirm it"
            }
        }
    }

    /// Whether the item is a delete withheld by the delete-trust rule: the
    /// run did not finish the mirror, and a person should look.
    pub fn withholds_delete(self) -> bool {
        matches!(self, Reason::SuspectListing | Reason::ListingUnconfirmed)
    }
}

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    pub op: Op,
    pub side: Side,
    pub path: RelPath,
    pub kind: Kind,
    pub reason: Reason,
    /// Bytes to transfer (transfers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Files on both sides that the state does not know, already compared
/// before planning (by time to the second, or by the server's hash):
/// `Some(reason)` identical (adopted with that reason), `None` differs.
/// Files not in it are judged by [`same_content`].
pub type Verdicts = BTreeMap<RelPath, Option<Reason>>;

/// Options that shape the plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    pub direction: Direction,
    pub delete: bool,
    pub compare: CompareMode,
}

/// The result of planning.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Items in execution order: mkdirs (parents first), transfers, deletes,
    /// rmdirs (children first), then state-only items.
    pub items: Vec<PlanItem>,
    /// Directories whose subtree was skipped because a listing failed.
    pub skipped_untrusted: Vec<RelPath>,
    /// Whether the target root must be created first.
    pub create_target_root: bool,
    /// Source directories whose one listing withheld deletes and that were
    /// not listed a second time: listing them again may confirm it.
    #[serde(skip)]
    pub unconfirmed: BTreeSet<RelPath>,
}

impl Plan {
    /// Items that change something on a side (not state-only, not keep).
    pub fn changes(&self) -> impl Iterator<Item = &PlanItem> {
        self.items
            .iter()
            .filter(|i| !matches!(i.op, Op::Adopt | Op::Forget | Op::Keep))
    }
}

/// Whether a local file changed since the state recorded it.
pub fn local_changed(cur: &LocalMeta, rec: &LocalMeta, mode: CompareMode) -> bool {
    if cur.size() != rec.size() {
        return true;
    }
    match mode {
        CompareMode::Size => false,
        CompareMode::Auto | CompareMode::Mtime => cur.mtime_ns != rec.mtime_ns,
        CompareMode::Hash => {
            cur.mtime_ns != rec.mtime_ns
                && match (&cur.sha256, &rec.sha256) {
                    (Some(a), Some(b)) => a != b,
                    _ => true,
                }
        }
    }
}

/// Whether a remote file changed since the state recorded it. An unknown
/// recorded time (not yet re-listed after an upload) matches any time.
pub fn remote_changed(cur: &RemoteMeta, rec: &RemoteMeta, mode: CompareMode) -> bool {
    if let (Some(a), Some(b)) = (cur.size(), rec.size())
        && a != b
    {
        return true;
    }
    if mode == CompareMode::Size || rec.mtime() == RemoteTime::Unknown {
        return false;
    }
    !cur.mtime().same_as(&rec.mtime())
}

/// Whether a local and a remote file seen for the first time (no state) can
/// be taken as the same content: equal size, and (unless `compare: size`)
/// equal time at the listing's precision, taken as UTC. Servers in another
/// zone, or with days only, are compared before planning (see
/// [`crate::adoption`]) and their verdicts override this.
pub fn same_content(local: &LocalMeta, remote: &RemoteMeta, mode: CompareMode) -> bool {
    if remote.size() != Some(local.size()) {
        return false;
    }
    mode == CompareMode::Size || remote.mtime().agrees_with_local(local.mtime_ns, 0)
}

/// What is known about one path on the two sides, direction-neutral.
struct Facts {
    src: Option<Kind>,
    tgt: Option<Kind>,
    rec: Option<Kind>,
    src_changed: bool,
    tgt_changed: bool,
    /// Same content although there is no state (adoption).
    identical: bool,
    /// Why `identical` (adoption).
    adopt_reason: Reason,
    /// The recorded remote time is unknown and the listing now has one.
    refresh: bool,
    src_size: Option<u64>,
}

fn facts(
    local: Option<&Entry<LocalMeta>>,
    remote: Option<&Entry<RemoteMeta>>,
    rec: Option<&StateRecord>,
    o: &PlanOptions,
    verdict: Option<Option<Reason>>,
) -> Facts {
    let lf = local.and_then(|e| e.meta.as_ref());
    let rf = remote.and_then(|e| e.meta.as_ref());
    let l_changed = match (lf, rec.and_then(|r| r.local.as_ref())) {
        (Some(c), Some(r)) => local_changed(c, r, o.compare),
        (Some(_), None) => true,
        _ => false,
    };
    let r_changed = match (rf, rec.and_then(|r| r.remote.as_ref())) {
        (Some(c), Some(r)) => remote_changed(c, r, o.compare),
        (Some(_), None) => true,
        _ => false,
    };
    let (identical, adopt_reason) = match (lf, rf, verdict) {
        (Some(_), Some(_), Some(v)) => (v.is_some(), v.unwrap_or(Reason::Identical)),
        (Some(l), Some(r), None) => (same_content(l, r, o.compare), Reason::Identical),
        _ => (false, Reason::Identical),
    };
    let remote_refresh = match (rf, rec.and_then(|r| r.remote.as_ref())) {
        (Some(c), Some(r)) => r.mtime() == RemoteTime::Unknown && c.mtime() != RemoteTime::Unknown,
        _ => false,
    };
    // Touched but the same content (compare: hash): record the new time,
    // so the file is not hashed again next time.
    let local_refresh = match (lf, rec.and_then(|r| r.local.as_ref())) {
        (Some(c), Some(r)) => !l_changed && c.mtime_ns != r.mtime_ns && c.sha256.is_some(),
        _ => false,
    };
    let refresh = remote_refresh || local_refresh;
    let (src, tgt, src_changed, tgt_changed, src_size) = match o.direction {
        Direction::Push => (
            local.map(|e| e.kind()),
            remote.map(|e| e.kind()),
            l_changed,
            r_changed,
            lf.map(|m| m.size()),
        ),
        Direction::Pull => (
            remote.map(|e| e.kind()),
            local.map(|e| e.kind()),
            r_changed,
            l_changed,
            rf.and_then(|m| m.size()),
        ),
    };
    Facts {
        src,
        tgt,
        rec: rec.map(|r| r.kind),
        src_changed,
        tgt_changed,
        identical,
        adopt_reason,
        refresh,
        src_size,
    }
}

/// Why the source's listing cannot back a delete of `path` on the target.
struct Doubt {
    reason: Reason,
    /// The source directory whose listing it is.
    dir: RelPath,
    /// A second listing of `dir` has not been made yet.
    ask_again: bool,
}

/// The delete-trust rule (see the module comment): `path` is absent on the
/// `source` side; the listing that says so is that of the nearest directory
/// above it that the source has. The same rule whatever the state holds:
/// an empty listing below which the target (or the state) has something is
/// exactly the case of a delete planned below it.
fn listing_doubt<M>(source: &Tree<M>, path: &RelPath) -> Option<Doubt> {
    let mut dir = path.parent()?;
    while !dir.is_root()
        && source
            .entries
            .get(&dir)
            .is_none_or(|e| e.kind() != Kind::Dir)
    {
        dir = dir.parent()?;
    }
    if source.incomplete.contains(&dir) {
        return Some(Doubt {
            reason: Reason::SuspectListing,
            dir,
            ask_again: false,
        });
    }
    let facts = source.listings.get(&dir)?;
    if !(facts.retried || facts.empty || facts.by_control) || facts.second == SecondListing::Agreed
    {
        return None;
    }
    Some(Doubt {
        reason: Reason::ListingUnconfirmed,
        ask_again: facts.second == SecondListing::NotAsked,
        dir,
    })
}

/// One path and what each of the two trees and the state hold for it.
struct Seen<'a> {
    path: &'a RelPath,
    local: Option<&'a Entry<LocalMeta>>,
    remote: Option<&'a Entry<RemoteMeta>>,
    state: Option<&'a StateRecord>,
}

/// Every path of the two trees and the state, in order: a merge of the
/// three sorted maps, so the union is never built as a set of its own
/// (at a million paths that set cost memory and most of the planning time).
fn all_paths<'a>(
    local: &'a LocalTree,
    remote: &'a RemoteTree,
    state: &'a BTreeMap<RelPath, StateRecord>,
) -> impl Iterator<Item = Seen<'a>> {
    let mut l = local.entries.iter().peekable();
    let mut r = remote.entries.iter().peekable();
    let mut s = state.iter().peekable();
    std::iter::from_fn(move || {
        let path = [
            l.peek().map(|(p, _)| *p),
            r.peek().map(|(p, _)| *p),
            s.peek().map(|(p, _)| *p),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(Seen {
            path,
            local: l.next_if(|(p, _)| *p == path).map(|(_, e)| e),
            remote: r.next_if(|(p, _)| *p == path).map(|(_, e)| e),
            state: s.next_if(|(p, _)| *p == path).map(|(_, e)| e),
        })
    })
}

/// Plans a sync. `state` is what the last successful sync recorded.
pub fn plan(
    local: &LocalTree,
    remote: &RemoteTree,
    state: &BTreeMap<RelPath, StateRecord>,
    o: &PlanOptions,
) -> Plan {
    plan_verified(local, remote, state, o, &Verdicts::new())
}

/// [`plan`], where `verdicts` holds the files the state does not know that
/// were compared before planning (by time to the second, by the server's
/// hash): they are adopted, or not, as it says.
pub fn plan_verified(
    local: &LocalTree,
    remote: &RemoteTree,
    state: &BTreeMap<RelPath, StateRecord>,
    o: &PlanOptions,
    verdicts: &Verdicts,
) -> Plan {
    let (target_side, transfer) = match o.direction {
        Direction::Push => (Side::Remote, Op::Upload),
        Direction::Pull => (Side::Local, Op::Download),
    };
    let mut plan = Plan {
        create_target_root: match o.direction {
            Direction::Push => !remote.root_exists,
            Direction::Pull => !local.root_exists,
        },
        ..Plan::default()
    };
    let mut untrusted: BTreeSet<RelPath> = local.untrusted.clone();
    untrusted.extend(remote.untrusted.iter().cloned());
    plan.skipped_untrusted = untrusted.iter().cloned().collect();

    let mut mkdirs = Vec::new();
    let mut transfers = Vec::new();
    let mut deletes = Vec::new();
    let mut rmdirs = Vec::new();
    let mut records = Vec::new();
    for seen in all_paths(local, remote, state) {
        let path = seen.path;
        if path.is_root() || untrusted.iter().any(|u| path.is_within(u)) {
            continue;
        }
        let f = facts(
            seen.local,
            seen.remote,
            seen.state,
            o,
            verdicts.get(path).copied(),
        );
        let item = |op: Op, side: Side, kind: Kind, reason: Reason| PlanItem {
            op,
            side,
            path: path.clone(),
            kind,
            reason,
            size: None,
        };
        match (f.src, f.tgt) {
            (Some(Kind::File), None) => {
                let reason = if f.rec.is_some() {
                    Reason::TargetMissing
                } else {
                    Reason::New
                };
                transfers.push(PlanItem {
                    size: f.src_size,
                    ..item(transfer, target_side, Kind::File, reason)
                });
            }
            (Some(Kind::File), Some(Kind::File)) => {
                if f.rec != Some(Kind::File) {
                    if f.identical {
                        records.push(item(Op::Adopt, target_side, Kind::File, f.adopt_reason));
                    } else if o.direction == Direction::Push {
                        transfers.push(PlanItem {
                            size: f.src_size,
                            ..item(transfer, target_side, Kind::File, Reason::Differs)
                        });
                    } else {
                        records.push(item(Op::Keep, target_side, Kind::File, Reason::Differs));
                    }
                } else if f.tgt_changed {
                    let reason = if f.src_changed {
                        Reason::BothChanged
                    } else {
                        Reason::TargetChanged
                    };
                    if o.direction == Direction::Push {
                        transfers.push(PlanItem {
                            size: f.src_size,
                            ..item(transfer, target_side, Kind::File, reason)
                        });
                    } else {
                        records.push(item(Op::Keep, target_side, Kind::File, reason));
                    }
                } else if f.src_changed {
                    transfers.push(PlanItem {
                        size: f.src_size,
                        ..item(transfer, target_side, Kind::File, Reason::SourceChanged)
                    });
                } else if f.refresh {
                    records.push(item(
                        Op::Adopt,
                        target_side,
                        Kind::File,
                        Reason::RecordRefresh,
                    ));
                }
            }
            (Some(Kind::Dir), None) => {
                let reason = if f.rec.is_some() {
                    Reason::TargetMissing
                } else {
                    Reason::New
                };
                mkdirs.push(item(Op::Mkdir, target_side, Kind::Dir, reason));
            }
            (Some(Kind::Dir), Some(Kind::Dir)) => {
                if f.rec != Some(Kind::Dir) {
                    records.push(item(Op::Adopt, target_side, Kind::Dir, Reason::Identical));
                }
            }
            (Some(src), Some(_)) => {
                records.push(item(Op::Keep, target_side, src, Reason::TypeConflict));
            }
            (None, Some(tk)) => {
                let synced = f.rec.is_some();
                let reason = if synced {
                    Reason::SourceDeleted
                } else {
                    Reason::NotInSource
                };
                if !o.delete {
                    if synced {
                        records.push(item(Op::Forget, target_side, tk, Reason::DeleteDisabled));
                    }
                } else if let Some(doubt) = match o.direction {
                    Direction::Push => listing_doubt(local, path),
                    Direction::Pull => listing_doubt(remote, path),
                } {
                    if doubt.ask_again {
                        plan.unconfirmed.insert(doubt.dir);
                    }
                    records.push(item(Op::Keep, target_side, tk, doubt.reason));
                } else if tk == Kind::File {
                    if synced && f.tgt_changed && o.direction == Direction::Pull {
                        // Changed locally, deleted on the server: keep the local work.
                        records.push(item(Op::Keep, target_side, tk, Reason::TargetChanged));
                    } else {
                        deletes.push(item(Op::Delete, target_side, tk, reason));
                    }
                } else {
                    rmdirs.push(item(Op::Rmdir, target_side, tk, reason));
                }
            }
            (None, None) => {
                if let Some(k) = f.rec {
                    records.push(item(Op::Forget, target_side, k, Reason::Gone));
                }
            }
        }
    }
    // A kept item below a directory blocks that directory's removal.
    let blocked: Vec<RelPath> = records
        .iter()
        .filter(|i| i.op == Op::Keep)
        .map(|i| i.path.clone())
        .chain(transfers.iter().map(|i| i.path.clone()))
        .collect();
    rmdirs.retain(|d| !blocked.iter().any(|b| b.is_within(&d.path) && *b != d.path));
    // A directory that holds (or has below it) something the job does not
    // sync cannot be removed: say so instead of failing at RMD.
    let target_unsynced = match o.direction {
        Direction::Push => &remote.holds_unsynced,
        Direction::Pull => &local.holds_unsynced,
    };
    let (kept_dirs, removable): (Vec<PlanItem>, Vec<PlanItem>) = rmdirs
        .into_iter()
        .partition(|d| target_unsynced.iter().any(|u| u.is_within(&d.path)));
    rmdirs = removable;
    records.extend(kept_dirs.into_iter().map(|d| PlanItem {
        op: Op::Keep,
        reason: Reason::HoldsUnsynced,
        ..d
    }));
    mkdirs.sort_by(|a, b| {
        a.path
            .depth()
            .cmp(&b.path.depth())
            .then(a.path.cmp(&b.path))
    });
    rmdirs.sort_by(|a, b| {
        b.path
            .depth()
            .cmp(&a.path.depth())
            .then(a.path.cmp(&b.path))
    });
    plan.items.extend(mkdirs);
    plan.items.extend(transfers);
    plan.items.extend(deletes);
    plan.items.extend(rmdirs);
    plan.items.extend(records);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ListingFacts;
    use chrono::NaiveDate;

    fn t(s: &str) -> chrono::NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 1, 2)
            .unwrap()
            .and_hms_opt(3, 4, s.parse().unwrap())
            .unwrap()
    }
    fn ns(s: &str) -> i64 {
        t(s).and_utc().timestamp() * 1_000_000_000 + 123
    }
    fn lf(size: u64, sec: &str) -> Entry<LocalMeta> {
        Entry::file(LocalMeta::new(size, ns(sec), None))
    }
    fn rf(size: u64, sec: &str) -> Entry<RemoteMeta> {
        Entry::file(RemoteMeta::new(Some(size), RemoteTime::Exact(t(sec))))
    }
    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }
    fn rec(l: Option<&Entry<LocalMeta>>, r: Option<&Entry<RemoteMeta>>) -> StateRecord {
        StateRecord {
            kind: Kind::File,
            local: l.and_then(|e| e.meta.clone()),
            remote: r.and_then(|e| e.meta.clone()),
        }
    }

    struct Case {
        local: Option<Entry<LocalMeta>>,
        remote: Option<Entry<RemoteMeta>>,
        state: Option<StateRecord>,
    }

    fn run(c: &Case, direction: Direction, delete: bool) -> Vec<(Op, Side, Reason)> {
        let mut l = Tree::default();
        let mut r = Tree::default();
        let mut s = BTreeMap::new();
        if let Some(e) = &c.local {
            l.entries.insert(p("f"), e.clone());
        }
        if let Some(e) = &c.remote {
            r.entries.insert(p("f"), e.clone());
        }
        if let Some(e) = &c.state {
            s.insert(p("f"), e.clone());
        }
        let o = PlanOptions {
            direction,
            delete,
            compare: CompareMode::Auto,
        };
        plan(&l, &r, &s, &o)
            .items
            .into_iter()
            .map(|i| (i.op, i.side, i.reason))
            .collect()
    }

    #[test]
    fn all_paths_merges_the_three_maps_in_order() {
        let mut l = Tree::default();
        let mut r = Tree::default();
        let mut s = BTreeMap::new();
        for name in ["a", "a/x", "c"] {
            l.entries.insert(p(name), lf(1, "00"));
        }
        for name in ["a-b", "a/x", "c"] {
            r.entries.insert(p(name), rf(1, "00"));
        }
        for name in ["a", "a-b", "d"] {
            s.insert(p(name), rec(None, None));
        }
        let seen: Vec<(&str, bool, bool, bool)> = all_paths(&l, &r, &s)
            .map(|x| {
                let (l, r, s) = (x.local.is_some(), x.remote.is_some(), x.state.is_some());
                (x.path.as_str(), l, r, s)
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("a", true, false, true),
                ("a-b", false, true, true),
                ("a/x", true, true, false),
                ("c", true, true, false),
                ("d", false, false, true),
            ]
        );
    }

    #[test]
    fn three_way_table() {
        use Direction::{Pull, Push};
        use Op::*;
        let l1 = lf(10, "00");
        let l2 = lf(11, "30");
        let r1 = rf(10, "00");
        let r2 = rf(12, "40");
        let synced = rec(Some(&l1), Some(&r1));
        let some = |e: &Entry<LocalMeta>| Some(e.clone());
        let rs = |e: &Entry<RemoteMeta>| Some(e.clone());
        type Row = (Case, Direction, bool, Vec<(Op, Side, Reason)>);
        let rows: Vec<Row> = vec![
            // new locally
            (
                Case {
                    local: some(&l1),
                    remote: None,
                    state: None,
                },
                Push,
                false,
                vec![(Upload, Side::Remote, Reason::New)],
            ),
            // unchanged
            (
                Case {
                    local: some(&l1),
                    remote: rs(&r1),
                    state: Some(synced.clone()),
                },
                Push,
                true,
                vec![],
            ),
            // changed locally
            (
                Case {
                    local: some(&l2),
                    remote: rs(&r1),
                    state: Some(synced.clone()),
                },
                Push,
                false,
                vec![(Upload, Side::Remote, Reason::SourceChanged)],
            ),
            // drift on the server: push overwrites
            (
                Case {
                    local: some(&l1),
                    remote: rs(&r2),
                    state: Some(synced.clone()),
                },
                Push,
                false,
                vec![(Upload, Side::Remote, Reason::TargetChanged)],
            ),
            (
                Case {
                    local: some(&l2),
                    remote: rs(&r2),
                    state: Some(synced.clone()),
                },
                Push,
                false,
                vec![(Upload, Side::Remote, Reason::BothChanged)],
            ),
            // deleted on the server behind our back
            (
                Case {
                    local: some(&l1),
                    remote: None,
                    state: Some(synced.clone()),
                },
                Push,
                false,
                vec![(Upload, Side::Remote, Reason::TargetMissing)],
            ),
            // deleted locally
            (
                Case {
                    local: None,
                    remote: rs(&r1),
                    state: Some(synced.clone()),
                },
                Push,
                true,
                vec![(Delete, Side::Remote, Reason::SourceDeleted)],
            ),
            (
                Case {
                    local: None,
                    remote: rs(&r1),
                    state: Some(synced.clone()),
                },
                Push,
                false,
                vec![(Forget, Side::Remote, Reason::DeleteDisabled)],
            ),
            // stray on the server
            (
                Case {
                    local: None,
                    remote: rs(&r1),
                    state: None,
                },
                Push,
                false,
                vec![],
            ),
            (
                Case {
                    local: None,
                    remote: rs(&r1),
                    state: None,
                },
                Push,
                true,
                vec![(Delete, Side::Remote, Reason::NotInSource)],
            ),
            // first run: identical → adopt; different → upload
            (
                Case {
                    local: some(&l1),
                    remote: rs(&r1),
                    state: None,
                },
                Push,
                false,
                vec![(Adopt, Side::Remote, Reason::Identical)],
            ),
            (
                Case {
                    local: some(&l2),
                    remote: rs(&r1),
                    state: None,
                },
                Push,
                false,
                vec![(Upload, Side::Remote, Reason::Differs)],
            ),
            // gone everywhere
            (
                Case {
                    local: None,
                    remote: None,
                    state: Some(synced.clone()),
                },
                Push,
                true,
                vec![(Forget, Side::Remote, Reason::Gone)],
            ),
            // pull: mirror image
            (
                Case {
                    local: None,
                    remote: rs(&r1),
                    state: None,
                },
                Pull,
                false,
                vec![(Download, Side::Local, Reason::New)],
            ),
            (
                Case {
                    local: some(&l1),
                    remote: rs(&r2),
                    state: Some(synced.clone()),
                },
                Pull,
                false,
                vec![(Download, Side::Local, Reason::SourceChanged)],
            ),
            // pull: local edits are kept, never overwritten
            (
                Case {
                    local: some(&l2),
                    remote: rs(&r1),
                    state: Some(synced.clone()),
                },
                Pull,
                true,
                vec![(Keep, Side::Local, Reason::TargetChanged)],
            ),
            (
                Case {
                    local: some(&l2),
                    remote: rs(&r2),
                    state: Some(synced.clone()),
                },
                Pull,
                true,
                vec![(Keep, Side::Local, Reason::BothChanged)],
            ),
            (
                Case {
                    local: some(&l2),
                    remote: rs(&r1),
                    state: None,
                },
                Pull,
                true,
                vec![(Keep, Side::Local, Reason::Differs)],
            ),
            (
                Case {
                    local: some(&l1),
                    remote: None,
                    state: Some(synced.clone()),
                },
                Pull,
                true,
                vec![(Delete, Side::Local, Reason::SourceDeleted)],
            ),
            (
                Case {
                    local: some(&l2),
                    remote: None,
                    state: Some(synced.clone()),
                },
                Pull,
                true,
                vec![(Keep, Side::Local, Reason::TargetChanged)],
            ),
            (
                Case {
                    local: some(&l1),
                    remote: None,
                    state: None,
                },
                Pull,
                true,
                vec![(Delete, Side::Local, Reason::NotInSource)],
            ),
            (
                Case {
                    local: some(&l1),
                    remote: None,
                    state: None,
                },
                Pull,
                false,
                vec![],
            ),
        ];
        for (i, (case, dir, delete, want)) in rows.iter().enumerate() {
            assert_eq!(&run(case, *dir, *delete), want, "row {i}");
        }
    }

    #[test]
    fn minute_precision_and_unknown_times() {
        let l = LocalMeta::new(3, ns("42"), None);
        let minute = RemoteMeta::new(Some(3), RemoteTime::Minute(t("00")));
        assert!(same_content(&l, &minute, CompareMode::Auto));
        let day = RemoteMeta::new(Some(3), RemoteTime::Day(t("00").date()));
        assert!(!same_content(&l, &day, CompareMode::Auto));
        assert!(same_content(&l, &day, CompareMode::Size));
        let pending = RemoteMeta::new(Some(3), RemoteTime::Unknown);
        assert!(!remote_changed(&minute, &pending, CompareMode::Auto));
        let resized = RemoteMeta::new(Some(4), RemoteTime::Unknown);
        assert!(remote_changed(&resized, &pending, CompareMode::Auto));
    }

    #[test]
    fn verdicts_from_before_planning_override_the_time_rule() {
        let mut l: LocalTree = Tree::default();
        let mut r: RemoteTree = Tree::default();
        // "same" matches as listed; "shifted" is an hour off; "odd" matches
        // as listed but not by the server's learned offset.
        for name in ["same", "shifted", "odd"] {
            l.entries.insert(p(name), lf(5, "00"));
        }
        r.entries.insert(p("same"), rf(5, "00"));
        r.entries.insert(
            p("shifted"),
            Entry::file(RemoteMeta::new(
                Some(5),
                RemoteTime::Exact(t("00") + chrono::Duration::hours(1)),
            )),
        );
        r.entries.insert(p("odd"), rf(5, "00"));
        let o = PlanOptions {
            direction: Direction::Push,
            delete: false,
            compare: CompareMode::Auto,
        };
        let got = |v: &Verdicts| -> Vec<(Op, String, Reason)> {
            plan_verified(&l, &r, &BTreeMap::new(), &o, v)
                .items
                .into_iter()
                .map(|i| (i.op, i.path.to_string(), i.reason))
                .collect()
        };
        assert_eq!(
            got(&Verdicts::new()),
            vec![
                (Op::Upload, "shifted".into(), Reason::Differs),
                (Op::Adopt, "odd".into(), Reason::Identical),
                (Op::Adopt, "same".into(), Reason::Identical),
            ]
        );
        let mut v = Verdicts::new();
        v.insert(p("shifted"), Some(Reason::SameTimeOffset));
        v.insert(p("odd"), None);
        assert_eq!(
            got(&v),
            vec![
                (Op::Upload, "odd".into(), Reason::Differs),
                (Op::Adopt, "same".into(), Reason::Identical),
                (Op::Adopt, "shifted".into(), Reason::SameTimeOffset),
            ]
        );
    }

    #[test]
    fn hash_mode_ignores_touch() {
        let a = LocalMeta::new(3, 1, Some(Box::new([1; 32])));
        let touched = LocalMeta::new(3, 2, Some(Box::new([1; 32])));
        let edited = LocalMeta::new(3, 2, Some(Box::new([2; 32])));
        assert!(!local_changed(&touched, &a, CompareMode::Hash));
        assert!(local_changed(&touched, &a, CompareMode::Mtime));
        assert!(local_changed(&edited, &a, CompareMode::Hash));
    }

    #[test]
    fn ordering_dirs_and_untrusted() {
        let mut l: LocalTree = Tree::default();
        for d in ["a", "a/b", "z"] {
            l.entries.insert(p(d), Entry::dir());
        }
        l.entries.insert(p("a/b/f"), lf(1, "00"));
        let mut r: RemoteTree = Tree::default();
        r.entries.insert(p("old"), Entry::dir());
        r.entries.insert(p("old/deep"), Entry::dir());
        r.entries.insert(p("old/deep/x"), rf(1, "00"));
        r.entries.insert(p("bad"), Entry::dir());
        r.untrusted.insert(p("bad"));
        let mut s = BTreeMap::new();
        s.insert(p("bad/x"), rec(Some(&lf(1, "00")), Some(&rf(1, "00"))));
        let o = PlanOptions {
            direction: Direction::Push,
            delete: true,
            compare: CompareMode::Auto,
        };
        let got: Vec<(Op, String)> = plan(&l, &r, &s, &o)
            .items
            .into_iter()
            .map(|i| (i.op, i.path.to_string()))
            .collect();
        let want: Vec<(Op, String)> = vec![
            (Op::Mkdir, "a".into()),
            (Op::Mkdir, "z".into()),
            (Op::Mkdir, "a/b".into()),
            (Op::Upload, "a/b/f".into()),
            (Op::Delete, "old/deep/x".into()),
            (Op::Rmdir, "old/deep".into()),
            (Op::Rmdir, "old".into()),
        ];
        assert_eq!(got, want);
    }

    type Planned = (Op, Side, String, Reason);
    /// A case: its name, the listing's facts, whether it was incomplete,
    /// the items wanted and the directories to list again.
    type Row = (
        &'static str,
        Option<ListingFacts>,
        bool,
        Vec<Planned>,
        Vec<String>,
    );

    /// One directory `d` that the source listed (how: `facts`, `incomplete`)
    /// and that holds nothing on the source, while the target has `d/f`,
    /// `d/s/` and `d/s/g`: the items planned for those three and the
    /// directories to list again.
    fn below_listing(
        direction: Direction,
        with_state: bool,
        facts: Option<ListingFacts>,
        incomplete: bool,
    ) -> (Vec<Planned>, Vec<String>) {
        let mut local: LocalTree = Tree::default();
        let mut remote: RemoteTree = Tree::default();
        let targets = ["d/f", "d/s", "d/s/g"];
        let mut source_listings = BTreeMap::new();
        if let Some(f) = facts {
            source_listings.insert(p("d"), f);
        }
        let source_incomplete: BTreeSet<RelPath> = incomplete.then(|| p("d")).into_iter().collect();
        match direction {
            Direction::Push => {
                local.entries.insert(p("d"), Entry::dir());
                local.listings = source_listings;
                local.incomplete = source_incomplete;
                remote.entries.insert(p("d"), Entry::dir());
                remote.entries.insert(p("d/f"), rf(1, "00"));
                remote.entries.insert(p("d/s"), Entry::dir());
                remote.entries.insert(p("d/s/g"), rf(2, "00"));
            }
            Direction::Pull => {
                remote.entries.insert(p("d"), Entry::dir());
                remote.listings = source_listings;
                remote.incomplete = source_incomplete;
                local.entries.insert(p("d"), Entry::dir());
                local.entries.insert(p("d/f"), lf(1, "00"));
                local.entries.insert(p("d/s"), Entry::dir());
                local.entries.insert(p("d/s/g"), lf(2, "00"));
            }
        }
        let mut s = BTreeMap::new();
        if with_state {
            let dir = StateRecord {
                kind: Kind::Dir,
                local: None,
                remote: None,
            };
            s.insert(p("d"), dir.clone());
            s.insert(p("d/s"), dir);
            s.insert(p("d/f"), rec(Some(&lf(1, "00")), Some(&rf(1, "00"))));
            s.insert(p("d/s/g"), rec(Some(&lf(2, "00")), Some(&rf(2, "00"))));
        }
        let o = PlanOptions {
            direction,
            delete: true,
            compare: CompareMode::Auto,
        };
        let planned = plan(&local, &remote, &s, &o);
        let items = planned
            .items
            .into_iter()
            .filter(|i| targets.contains(&i.path.as_str()))
            .map(|i| (i.op, i.side, i.path.to_string(), i.reason))
            .collect();
        let again = planned.unconfirmed.iter().map(|d| d.to_string()).collect();
        (items, again)
    }

    /// The delete-trust rule, on the first run (or after a state reset:
    /// the planner then gets no state either) and with state, push and pull.
    #[test]
    fn deletes_rest_only_on_complete_listings() {
        let clean = ListingFacts {
            names: 1,
            ..ListingFacts::default()
        };
        let empty = ListingFacts {
            empty: true,
            ..ListingFacts::default()
        };
        let retried = ListingFacts {
            retried: true,
            ..clean
        };
        let retried_empty = ListingFacts {
            retried: true,
            ..empty
        };
        let by_control = ListingFacts {
            by_control: true,
            ..clean
        };
        let agreed = |f: ListingFacts| ListingFacts {
            second: SecondListing::Agreed,
            ..f
        };
        let disagreed = |f: ListingFacts| ListingFacts {
            second: SecondListing::Disagreed,
            ..f
        };
        for direction in [Direction::Push, Direction::Pull] {
            let side = match direction {
                Direction::Push => Side::Remote,
                Direction::Pull => Side::Local,
            };
            for with_state in [false, true] {
                let why = if with_state {
                    Reason::SourceDeleted
                } else {
                    Reason::NotInSource
                };
                let deleted = vec![
                    (Op::Delete, side, "d/f".to_string(), why),
                    (Op::Delete, side, "d/s/g".to_string(), why),
                    (Op::Rmdir, side, "d/s".to_string(), why),
                ];
                let kept = |r: Reason| {
                    vec![
                        (Op::Keep, side, "d/f".to_string(), r),
                        (Op::Keep, side, "d/s".to_string(), r),
                        (Op::Keep, side, "d/s/g".to_string(), r),
                    ]
                };
                let unconfirmed = kept(Reason::ListingUnconfirmed);
                let ask = vec!["d".to_string()];
                let rows: Vec<Row> = vec![
                    (
                        "no record (a local scan)",
                        None,
                        false,
                        deleted.clone(),
                        vec![],
                    ),
                    ("clean", Some(clean), false, deleted.clone(), vec![]),
                    (
                        "retried",
                        Some(retried),
                        false,
                        unconfirmed.clone(),
                        ask.clone(),
                    ),
                    (
                        "retried, confirmed",
                        Some(agreed(retried)),
                        false,
                        deleted.clone(),
                        vec![],
                    ),
                    (
                        "retried, contradicted",
                        Some(disagreed(retried)),
                        false,
                        unconfirmed.clone(),
                        vec![],
                    ),
                    (
                        "empty",
                        Some(empty),
                        false,
                        unconfirmed.clone(),
                        ask.clone(),
                    ),
                    (
                        "empty, confirmed",
                        Some(agreed(empty)),
                        false,
                        deleted.clone(),
                        vec![],
                    ),
                    (
                        "empty, contradicted",
                        Some(disagreed(empty)),
                        false,
                        unconfirmed.clone(),
                        vec![],
                    ),
                    (
                        "retried and empty",
                        Some(retried_empty),
                        false,
                        unconfirmed.clone(),
                        ask.clone(),
                    ),
                    (
                        "retried and empty, confirmed",
                        Some(agreed(retried_empty)),
                        false,
                        deleted.clone(),
                        vec![],
                    ),
                    (
                        "over the control connection",
                        Some(by_control),
                        false,
                        unconfirmed.clone(),
                        ask.clone(),
                    ),
                    (
                        "over the control connection, confirmed",
                        Some(agreed(by_control)),
                        false,
                        deleted.clone(),
                        vec![],
                    ),
                    (
                        "over the control connection, contradicted",
                        Some(disagreed(by_control)),
                        false,
                        unconfirmed.clone(),
                        vec![],
                    ),
                    (
                        "incomplete",
                        Some(clean),
                        true,
                        kept(Reason::SuspectListing),
                        vec![],
                    ),
                    (
                        "incomplete, confirmed",
                        Some(agreed(retried)),
                        true,
                        kept(Reason::SuspectListing),
                        vec![],
                    ),
                ];
                for (name, facts, incomplete, want, want_again) in rows {
                    let (got, again) = below_listing(direction, with_state, facts, incomplete);
                    let case = format!("{direction:?}, state: {with_state}, listing {name}");
                    assert_eq!(got, want, "{case}");
                    assert_eq!(again, want_again, "{case}");
                }
            }
        }
    }

    /// Only the listing that shows a path absent counts: a clean listing of
    /// `d/s` backs deletes in it although `d`'s listing needed a retry, and
    /// a retried listing of the root withholds deletes of what it misses.
    #[test]
    fn the_nearest_listing_decides() {
        let mut remote: RemoteTree = Tree::default();
        remote.entries.insert(p("d"), Entry::dir());
        remote.entries.insert(p("d/s"), Entry::dir());
        let retried = ListingFacts {
            retried: true,
            names: 1,
            ..ListingFacts::default()
        };
        remote.listings.insert(RelPath::root(), retried);
        remote.listings.insert(p("d"), retried);
        remote.listings.insert(
            p("d/s"),
            ListingFacts {
                names: 1,
                ..ListingFacts::default()
            },
        );
        let mut local: LocalTree = Tree::default();
        for d in ["d", "d/s", "gone"] {
            local.entries.insert(p(d), Entry::dir());
        }
        local.entries.insert(p("d/s/x"), lf(1, "00"));
        local.entries.insert(p("gone/y"), lf(1, "00"));
        let o = PlanOptions {
            direction: Direction::Pull,
            delete: true,
            compare: CompareMode::Auto,
        };
        let planned = plan(&local, &remote, &BTreeMap::new(), &o);
        let got: Vec<(Op, String, Reason)> = planned
            .items
            .iter()
            .map(|i| (i.op, i.path.to_string(), i.reason))
            .collect();
        assert_eq!(
            got,
            vec![
                (Op::Delete, "d/s/x".to_string(), Reason::NotInSource),
                (Op::Adopt, "d".to_string(), Reason::Identical),
                (Op::Adopt, "d/s".to_string(), Reason::Identical),
                (Op::Keep, "gone".to_string(), Reason::ListingUnconfirmed),
                (Op::Keep, "gone/y".to_string(), Reason::ListingUnconfirmed),
            ]
        );
        assert_eq!(
            planned.unconfirmed.into_iter().collect::<Vec<_>>(),
            vec![RelPath::root()]
        );
    }
}
