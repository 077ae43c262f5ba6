//! The delete-trust rule against a real server (libunftp through the fault
//! proxy): a directory listing that fails with a 4xx and then comes back
//! empty never deletes anything, on the first run, after a state reset and
//! with state, push and pull; a directory that really is empty, confirmed
//! by a second listing, is mirrored. A state bound to another tree is not
//! used.

use std::fs;
use std::path::Path;

use crate::faults::{Faulty, faulty};
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::{Env, snapshot, write};

/// The server's tree: `keep.txt` and `d/{a,b}.txt`.
fn server_tree(env: &Env) {
    write(&env.remote_disk, "keep.txt", "keep\n");
    write(&env.remote_disk, "d/a.txt", "a\n");
    write(&env.remote_disk, "d/b.txt", "b\n");
}

/// Copies the server's tree to the local side as another tool would (same
/// contents and times), without ftpsync and its state.
fn copy_to_local(env: &Env) {
    copy_tree(&env.remote_disk, &env.local);
}

/// Copies the server tree's files from `from` to `to`, keeping their times.
fn copy_tree(from: &Path, to: &Path) {
    for rel in ["keep.txt", "d/a.txt", "d/b.txt"] {
        let (from, to) = (from.join(rel), to.join(rel));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap();
        let mtime = fs::metadata(&from).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(&to)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
}

/// The listing of `d` (the second MLSD: the root is listed first) fails
/// once with a 4xx; the retry comes back empty. Every other listing,
/// including the second one by LIST, is relayed as the server sends it.
fn fail_then_empty(f: &Faulty) {
    f.proxy.clear_rules();
    f.proxy.add_rule(
        Rule::new(
            "MLSD",
            Action::Reply("450 Requested file action not taken".into()),
        )
        .in_dir("/www/d")
        .times(1),
    );
    f.proxy.add_rule(
        Rule::new("MLSD", Action::TruncateLines(0))
            .in_dir("/www/d")
            .times(1),
    );
}

fn remove_state(env: &Env) {
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", env.state_path().display());
        let _ = fs::remove_file(p);
    }
}

/// `ftpsync plan --json` items as (op, path, reason).
fn plan_items(env: &Env, job: &Path) -> Vec<(String, String, String)> {
    let v = env.plan_json(job);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["op"].as_str().unwrap().to_owned(),
                i["path"].as_str().unwrap().to_owned(),
                i["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn items(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(o, p, r)| (o.to_string(), p.to_string(), r.to_string()))
        .collect()
}

/// How the state stands before the broken listing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Before {
    /// Never synced: the local copy was made by another tool.
    FirstRun,
    /// Synced, then the state file removed.
    Reset,
    /// Synced.
    WithState,
}

fn prepare_pull(f: &Faulty, before: Before) -> std::path::PathBuf {
    server_tree(&f.env);
    let job = f.env.job("pull", true, "safety:\n  max_delete: 100%\n");
    match before {
        Before::FirstRun => copy_to_local(&f.env),
        Before::Reset => {
            f.env.run(&job, 0);
            remove_state(&f.env);
        }
        Before::WithState => {
            f.env.run(&job, 0);
        }
    }
    job
}

fn broken_listing_never_deletes_on_pull(before: Before) {
    let f = faulty();
    let job = prepare_pull(&f, before);
    let local_before = snapshot(&f.env.local);
    let withheld = [
        ("keep", "d/a.txt", "listing_unconfirmed"),
        ("keep", "d/b.txt", "listing_unconfirmed"),
    ];
    let want = match before {
        Before::WithState => items(&withheld),
        Before::FirstRun | Before::Reset => items(&[
            ("adopt", "d", "identical"),
            withheld[0],
            withheld[1],
            ("adopt", "keep.txt", "identical"),
        ]),
    };
    fail_then_empty(&f);
    assert_eq!(plan_items(&f.env, &job), want, "{before:?}");
    // The second listing of d was by LIST, on a connection of its own.
    let cmds = f.proxy.commands();
    assert!(
        cmds.iter().any(|c| c.starts_with("LIST")),
        "no second listing: {cmds:?}"
    );
    fail_then_empty(&f);
    let out = f.env.run(&job, 1);
    assert_eq!(snapshot(&f.env.local), local_before, "{before:?}");
    for path in ["d/a.txt", "d/b.txt"] {
        assert!(
            out.stdout.contains(&format!(
                "refused   {path} — not deleted: its directory's listing needed a retry, came back empty or came over the control connection, and a second listing did not confirm it"
            )),
            "{before:?}: {}",
            out.all()
        );
    }
    assert!(
        out.stderr
            .contains("its listing needed a retry and a second listing (LIST, on a new connection) has other names (2 instead of 0)"),
        "{}",
        out.all()
    );
    // The server answers properly again: nothing to do, nothing was lost.
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_eq!(snapshot(&f.env.local), local_before);
    assert_eq!(plan_items(&f.env, &job), vec![]);
}

#[test]
fn broken_listing_never_deletes_on_a_first_pull() {
    broken_listing_never_deletes_on_pull(Before::FirstRun);
}

#[test]
fn broken_listing_never_deletes_on_a_pull_after_a_state_reset() {
    broken_listing_never_deletes_on_pull(Before::Reset);
}

#[test]
fn broken_listing_never_deletes_on_a_pull_with_state() {
    broken_listing_never_deletes_on_pull(Before::WithState);
}

/// The directory really was emptied on the server: the listing that needed
/// a retry is confirmed by LIST, and the local copies go.
fn confirmed_empty_directory_is_mirrored(before: Before) {
    let f = faulty();
    let job = prepare_pull(&f, before);
    fs::remove_file(f.env.remote_disk.join("d/a.txt")).unwrap();
    fs::remove_file(f.env.remote_disk.join("d/b.txt")).unwrap();
    let deleted = [("delete", "d/a.txt", ""), ("delete", "d/b.txt", "")];
    let why = match before {
        Before::WithState => "source_deleted",
        Before::FirstRun | Before::Reset => "not_in_source",
    };
    let mut want: Vec<(String, String, String)> = deleted
        .iter()
        .map(|(o, p, _)| (o.to_string(), p.to_string(), why.to_string()))
        .collect();
    if before != Before::WithState {
        want.extend(items(&[
            ("adopt", "d", "identical"),
            ("adopt", "keep.txt", "identical"),
        ]));
    }
    fail_then_empty(&f);
    assert_eq!(plan_items(&f.env, &job), want, "{before:?}");
    fail_then_empty(&f);
    let out = f.env.run(&job, 0);
    assert!(!f.env.local.join("d/a.txt").exists(), "{}", out.all());
    assert!(!f.env.local.join("d/b.txt").exists(), "{}", out.all());
    assert_eq!(fs::read(f.env.local.join("keep.txt")).unwrap(), b"keep\n");
    assert!(f.env.local.join("d").is_dir());
}

#[test]
fn confirmed_empty_directory_is_mirrored_on_a_first_pull() {
    confirmed_empty_directory_is_mirrored(Before::FirstRun);
}

#[test]
fn confirmed_empty_directory_is_mirrored_after_a_state_reset() {
    confirmed_empty_directory_is_mirrored(Before::Reset);
}

#[test]
fn confirmed_empty_directory_is_mirrored_with_state() {
    confirmed_empty_directory_is_mirrored(Before::WithState);
}

/// An empty listing without any error, of a directory that has files
/// locally, is listed again before anything is deleted in it.
#[test]
fn empty_listing_is_confirmed_before_deleting() {
    let f = faulty();
    let job = prepare_pull(&f, Before::WithState);
    let local_before = snapshot(&f.env.local);
    let arm = || {
        f.proxy.clear_rules();
        f.proxy.add_rule(
            Rule::new("MLSD", Action::TruncateLines(0))
                .in_dir("/www/d")
                .times(1),
        );
    };
    arm();
    assert_eq!(
        plan_items(&f.env, &job),
        items(&[
            ("keep", "d/a.txt", "listing_unconfirmed"),
            ("keep", "d/b.txt", "listing_unconfirmed"),
        ])
    );
    arm();
    let out = f.env.run(&job, 1);
    assert!(
        out.stderr
            .contains("its listing came back empty and a second listing (LIST, on a new connection) has other names (2 instead of 0)"),
        "{}",
        out.all()
    );
    assert_eq!(snapshot(&f.env.local), local_before);
}

/// Push: the server's listing is the target's, and a broken one can only
/// hide files from ftpsync. It re-sends what it cannot see and deletes
/// nothing it cannot see: the stray file on the server stays.
fn broken_listing_never_deletes_on_push(before: Before) {
    let f = faulty();
    server_tree(&f.env);
    copy_to_local(&f.env);
    let job = f.env.job("push", true, "safety:\n  max_delete: 100%\n");
    if before != Before::FirstRun {
        f.env.run(&job, 0);
    }
    if before == Before::Reset {
        remove_state(&f.env);
    }
    write(&f.env.remote_disk, "d/stray.txt", "stray\n");
    let remote_before = snapshot(&f.env.remote_disk);
    let want = match before {
        Before::WithState => items(&[
            ("upload", "d/a.txt", "target_missing"),
            ("upload", "d/b.txt", "target_missing"),
        ]),
        Before::FirstRun | Before::Reset => items(&[
            ("upload", "d/a.txt", "new"),
            ("upload", "d/b.txt", "new"),
            ("adopt", "d", "identical"),
            ("adopt", "keep.txt", "identical"),
        ]),
    };
    fail_then_empty(&f);
    assert_eq!(plan_items(&f.env, &job), want, "{before:?}");
    fail_then_empty(&f);
    f.env.run(&job, 0);
    assert_eq!(snapshot(&f.env.remote_disk), remote_before, "{before:?}");
    // With a proper listing the stray is seen, and deleted as the job asks.
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert!(!f.env.remote_disk.join("d/stray.txt").exists());
}

#[test]
fn broken_listing_never_deletes_on_a_first_push() {
    broken_listing_never_deletes_on_push(Before::FirstRun);
}

#[test]
fn broken_listing_never_deletes_on_a_push_after_a_state_reset() {
    broken_listing_never_deletes_on_push(Before::Reset);
}

#[test]
fn broken_listing_never_deletes_on_a_push_with_state() {
    broken_listing_never_deletes_on_push(Before::WithState);
}

/// A state bound to another tree (here: the job's local path changed) is
/// reset, and none of its records is used, nor even read: `keep.txt`, identical on both
/// sides and recorded as synced by the old binding, is adopted as on a
/// first run instead of being taken as known. For a plan the state is only
/// read, and treated as empty; the run then resets it, and after that it
/// is the state of the new binding.
#[test]
fn a_state_bound_to_another_tree_is_not_used() {
    let env = Env::builtin();
    server_tree(&env);
    let job = env.job("pull", true, "safety:\n  max_delete: 100%\n");
    env.run(&job, 0);
    // The same files under another local path, and one the server lacks.
    let other = env.dir.path().join("other-local");
    copy_tree(&env.local, &other);
    write(&other, "extra.txt", "x\n");
    // A record the old binding left that this build cannot read: it is
    // never read under the new binding (a plan ignores the old records, a
    // run drops them), so it stops neither.
    rusqlite::Connection::open(env.state_path())
        .unwrap()
        .execute_batch("INSERT INTO entries (path, kind) VALUES ('../outside', 'file')")
        .unwrap();
    let moved = env.dir.path().join("moved.yaml");
    let text = fs::read_to_string(&job).unwrap();
    let local_line = format!("  path: {}\n", env.local.display());
    assert!(text.contains(&local_line), "{text}");
    fs::write(
        &moved,
        text.replace(&local_line, &format!("  path: {}\n", other.display())),
    )
    .unwrap();
    let first_run_items = items(&[
        ("delete", "extra.txt", "not_in_source"),
        ("adopt", "d", "identical"),
        ("adopt", "d/a.txt", "identical"),
        ("adopt", "d/b.txt", "identical"),
        ("adopt", "keep.txt", "identical"),
    ]);
    let plan = env.plan_json(&moved);
    assert_eq!(plan["state_reset"], serde_json::json!(true), "{plan}");
    assert_eq!(plan_items(&env, &moved), first_run_items);
    env.run(&moved, 0);
    assert!(!other.join("extra.txt").exists());
    assert_eq!(plan_items(&env, &moved), Vec::new());
    // Back to the first path: bound elsewhere again, so a reset once more.
    assert_eq!(env.plan_json(&job)["state_reset"], serde_json::json!(true));
}
