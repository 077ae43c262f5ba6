//! Synthetic scale benchmark of the planner and the state, no server needed:
//! builds a local and a remote tree of N files (default 1,000,000) in
//! directories of 100, writes a matching state to SQLite once, then times
//! what a `plan` from a warm state does with them: load the state, plan
//! (everything identical: a no-op), and reports the peak memory. As in a
//! run, the state is loaded before the trees are built, and the trees take
//! the state's copy of each path (what the scans do).
//!
//! cargo run --release --example plan_scale -- [FILES]
//!
//! The trees are built in memory (no disk scan, no listing), so this
//! measures the state and the planner, the part that grows with the tree.

use std::collections::BTreeMap;
use std::time::Instant;

use ftpsync::job::{CompareMode, Direction};
use ftpsync::model::{
    Entry, Kind, LocalMeta, LocalTree, PathInterner, RelPath, RemoteMeta, RemoteTime, RemoteTree,
};
use ftpsync::plan::{PlanOptions, plan};
use ftpsync::state::sqlite::StateDb;
use ftpsync::state::{StateChange, StateRecord};

/// A memory figure of this process (`VmHWM`: the peak so far; `VmRSS`:
/// now), in MiB (Linux).
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn peak_mib() -> f64 {
    status_mib("VmHWM:")
}

fn main() {
    let files: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("FILES is a number"))
        .unwrap_or(1_000_000);
    let per_dir = 100;
    let base = chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");

    let dirs = files.div_ceil(per_dir);
    let dir_path =
        |d: usize| RelPath::parse(&format!("d{:03}/sub{d:05}", d % 997)).expect("a valid path");
    let file_path = |dir: &RelPath, i: usize| {
        dir.join(format!("file-{i:03}.html").as_bytes())
            .expect("a valid name")
    };
    let metas = |n: i64| {
        let lm = LocalMeta::new(
            1000 + (n as u64 % 7000),
            1_704_067_200_000_000_000 + n * 1_000_000_000,
            None,
        );
        let rm = RemoteMeta::new(
            Some(lm.size()),
            RemoteTime::Exact(base + chrono::Duration::seconds(n)),
        );
        (lm, rm)
    };
    // The state first, on its own: the records it is written from are gone
    // (their memory free for the trees) before the trees are built, so the
    // peak below is that of a real `plan`: two trees, the state, the plan.
    let dir = tempfile::tempdir().expect("a temp dir");
    let db_path = dir.path().join("state.db");
    let t = Instant::now();
    {
        let mut records = Vec::with_capacity(files + dirs);
        for d in 0..dirs {
            let dir = dir_path(d);
            for p in [dir.parent().unwrap_or_default(), dir.clone()] {
                records.push(StateChange::Put(
                    p,
                    StateRecord {
                        kind: Kind::Dir,
                        local: None,
                        remote: None,
                    },
                ));
            }
            for i in 0..per_dir.min(files - d * per_dir) {
                let (lm, rm) = metas((d * per_dir + i) as i64);
                records.push(StateChange::Put(
                    file_path(&dir, i),
                    StateRecord {
                        kind: Kind::File,
                        local: Some(lm),
                        remote: Some(rm),
                    },
                ));
            }
        }
        let mut db = StateDb::open(&db_path, true)
            .expect("state opens")
            .expect("state created");
        db.apply(&records).expect("state written");
    }
    println!(
        "wrote the state ({:.0} MiB on disk) in {:.2} s (peak {:.0} MiB)",
        std::fs::metadata(&db_path).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
        peak_mib()
    );
    // In the order of a run: the state is loaded first, then the scans name
    // every path again, taking the state's copy of those it knows.
    let t = Instant::now();
    let db = StateDb::open(&db_path, false)
        .expect("state opens")
        .expect("state exists");
    let state: BTreeMap<RelPath, StateRecord> = db.load().expect("state loads");
    drop(db);
    let load = t.elapsed().as_secs_f64();
    println!(
        "loaded {} state records in {load:.2} s (peak {:.0} MiB, resident now {:.0} MiB)",
        state.len(),
        peak_mib(),
        status_mib("VmRSS:")
    );
    let t = Instant::now();
    let state = std::sync::Arc::new(state);
    let paths = PathInterner::over(std::sync::Arc::clone(&state));
    let mut local = LocalTree::default();
    let mut remote = RemoteTree::default();
    for d in 0..dirs {
        let dir = dir_path(d);
        for p in [dir.parent().unwrap_or_default(), dir.clone()] {
            let p = paths.get(p.as_str()).cloned().unwrap_or(p);
            local.add(p.clone(), Entry::dir());
            remote.add(p, Entry::dir());
        }
        for i in 0..per_dir.min(files - d * per_dir) {
            let (lm, rm) = metas((d * per_dir + i) as i64);
            let name = format!("file-{i:03}.html");
            let join = |dir: &RelPath| paths.join(dir, name.as_bytes()).expect("a valid name");
            local.add(join(&dir), Entry::file(lm));
            remote.add(join(&dir), Entry::file(rm));
        }
    }
    drop(paths);
    let state = std::sync::Arc::try_unwrap(state).expect("the interner is gone");
    // As the scans leave them.
    local.compact();
    remote.compact();
    println!(
        "built trees of {} entries in {:.2} s (peak {:.0} MiB, resident now {:.0} MiB)",
        local.entries.len(),
        t.elapsed().as_secs_f64(),
        peak_mib(),
        status_mib("VmRSS:")
    );
    let before = peak_mib();
    let t = Instant::now();
    let o = PlanOptions {
        direction: Direction::Push,
        delete: true,
        compare: CompareMode::Mtime,
    };
    let p = plan(&local, &remote, &state, &o);
    let planning = t.elapsed().as_secs_f64();
    let changes = p
        .items
        .iter()
        .filter(|i| i.reason != ftpsync::plan::Reason::RecordRefresh)
        .count();
    println!(
        "warm plan of {} state records: load {load:.2} s + plan {planning:.2} s = {:.2} s, {} items ({changes} changes); peak {:.0} MiB (before planning: {before:.0} MiB)",
        state.len(),
        load + planning,
        p.items.len(),
        peak_mib()
    );
}
