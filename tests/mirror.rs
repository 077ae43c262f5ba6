//! Mirror scenarios against the built-in server (libunftp, MLSD). The
//! scenario functions take any [`Env`], so `interop.rs` runs the same ones
//! against vsftpd and pyftpdlib.

use std::fs;

use crate::support::harness::{Env, assert_same_tree, sample_tree, snapshot, write};

fn ops(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Push a tree with awkward names, then a re-run is a no-op.
pub fn push_and_rerun_is_noop(env: &Env) {
    sample_tree(&env.local);
    let job = env.job("push", false, "");
    let out = env.run(&job, 0);
    assert!(out.stdout.contains("8 uploaded"), "{}", out.stdout);
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(env.plan_ops(&job), vec![], "second plan is not empty");
    let text = env.ftpsync(&["plan", job.to_str().unwrap()]);
    assert!(text.stdout.contains("nothing to do"), "{}", text.stdout);
    let out = env.run(&job, 0);
    assert!(out.stdout.contains("0 uploaded"), "{}", out.stdout);
    assert!(out.stdout.contains("0 B transferred"), "{}", out.stdout);
    // The state never holds the password.
    let db = fs::read(env.state_path()).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&env.password()));
}

/// Modify, add, delete and rename, with delete off and then on.
pub fn push_incremental(env: &Env) {
    sample_tree(&env.local);
    let job = env.job("push", false, "");
    env.run(&job, 0);
    write(&env.local, "index.html", "<h1>changed, longer</h1>\n");
    write(&env.local, "new/dir/added.txt", "added\n");
    fs::remove_file(env.local.join("css/site.css")).unwrap();
    fs::rename(env.local.join("empty.txt"), env.local.join("renamed.txt")).unwrap();
    let plan = env.plan_ops(&job);
    assert_eq!(
        plan,
        ops(&[
            ("mkdir", "new"),
            ("mkdir", "new/dir"),
            ("upload", "index.html"),
            ("upload", "new/dir/added.txt"),
            ("upload", "renamed.txt"),
            ("forget", "css/site.css"),
            ("forget", "empty.txt"),
        ])
    );
    env.run(&job, 0);
    // delete: false keeps what was deleted locally.
    assert!(env.remote_disk.join("css/site.css").exists());
    assert!(env.remote_disk.join("empty.txt").exists());
    assert_eq!(
        fs::read(env.remote_disk.join("index.html")).unwrap(),
        b"<h1>changed, longer</h1>\n"
    );
    // With delete: true the strays go.
    let job = env.job("push", true, "");
    assert_eq!(
        env.plan_ops(&job),
        ops(&[("delete", "css/site.css"), ("delete", "empty.txt")])
    );
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    fs::remove_dir_all(env.local.join("new")).unwrap();
    assert_eq!(
        env.plan_ops(&job),
        ops(&[
            ("delete", "new/dir/added.txt"),
            ("rmdir", "new/dir"),
            ("rmdir", "new")
        ])
    );
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(env.plan_ops(&job), vec![]);
}

/// Filters: excluded paths are neither uploaded nor deleted.
pub fn push_filters(env: &Env) {
    write(&env.local, "keep.txt", "k");
    write(&env.local, "skip.tmp", "t");
    write(&env.local, "sub/also.tmp", "t");
    write(&env.local, ".git/config", "g");
    write(&env.remote_disk, "server-only.tmp", "remote");
    let job = env.job(
        "push",
        true,
        "filters:\n  exclude: [\".git/**\", \"**/*.tmp\"]\n",
    );
    env.run(&job, 0);
    let snap = snapshot(&env.remote_disk);
    let keys: Vec<&str> = snap.keys().map(|s| s.as_str()).collect();
    assert_eq!(keys, ["keep.txt", "server-only.tmp", "sub"]);
}

/// Pull mirrors the server, incrementally, and keeps local edits.
pub fn pull_incremental(env: &Env) {
    sample_tree(&env.remote_disk);
    let job = env.job("pull", true, "");
    let out = env.run(&job, 0);
    assert!(out.stdout.contains("8 downloaded"), "{}", out.stdout);
    assert_same_tree(&env.remote_disk, &env.local);
    assert_eq!(env.plan_ops(&job), vec![]);
    // Change on the server: size differs, so every listing format sees it.
    write(
        &env.remote_disk,
        "index.html",
        "<h1>server edit, longer</h1>\n",
    );
    write(&env.remote_disk, "fresh.txt", "new on server\n");
    fs::remove_file(env.remote_disk.join(".htaccess")).unwrap();
    assert_eq!(
        env.plan_ops(&job),
        ops(&[
            ("download", "fresh.txt"),
            ("download", "index.html"),
            ("delete", ".htaccess"),
        ])
    );
    env.run(&job, 0);
    assert_same_tree(&env.remote_disk, &env.local);
    // A local edit is never overwritten by a pull: it is kept and reported.
    write(&env.local, "fresh.txt", "my local edit\n");
    let plan = env.plan_json(&job);
    let items = plan["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{plan}");
    assert_eq!(items[0]["op"], "keep");
    assert_eq!(items[0]["reason"], "target_changed");
    env.run(&job, 0);
    assert_eq!(
        fs::read(env.local.join("fresh.txt")).unwrap(),
        b"my local edit\n"
    );
}

/// Drift: a file changed on the server behind ftpsync's back is reported and overwritten by push.
pub fn push_detects_drift(env: &Env) {
    write(&env.local, "a.txt", "original\n");
    let job = env.job("push", false, "");
    env.run(&job, 0);
    write(&env.remote_disk, "a.txt", "edited on the server, longer\n");
    let plan = env.plan_json(&job);
    let items = plan["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{plan}");
    assert_eq!(items[0]["op"], "upload");
    assert_eq!(items[0]["reason"], "target_changed");
    env.run(&job, 0);
    assert_eq!(
        fs::read(env.remote_disk.join("a.txt")).unwrap(),
        b"original\n"
    );
}

#[test]
fn builtin_push_and_rerun_is_noop() {
    push_and_rerun_is_noop(&Env::builtin());
}

#[test]
fn builtin_push_incremental() {
    push_incremental(&Env::builtin());
}

#[test]
fn builtin_push_filters() {
    push_filters(&Env::builtin());
}

#[test]
fn builtin_pull_incremental() {
    pull_incremental(&Env::builtin());
}

#[test]
fn builtin_push_detects_drift() {
    push_detects_drift(&Env::builtin());
}

#[test]
fn first_run_adopts_identical_files() {
    let env = Env::builtin();
    write(&env.local, "same.txt", "same content\n");
    write(&env.local, "other.txt", "local version\n");
    write(&env.remote_disk, "same.txt", "same content\n");
    write(&env.remote_disk, "other.txt", "remote version\n");
    // Same modification time on both sides, as after an earlier upload that kept times.
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for root in [&env.local, &env.remote_disk] {
        for f in ["same.txt", "other.txt"] {
            fs::File::options()
                .write(true)
                .open(root.join(f))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
    let job = env.job("push", false, "");
    assert_eq!(
        env.plan_ops(&job),
        ops(&[("upload", "other.txt"), ("adopt", "same.txt")])
    );
    let out = env.run(&job, 0);
    assert!(out.stdout.contains("1 uploaded"), "{}", out.stdout);
    assert!(out.stdout.contains("1 adopted"), "{}", out.stdout);
    assert_same_tree(&env.local, &env.remote_disk);
}

#[test]
fn large_file_and_big_directory() {
    let env = Env::builtin();
    let big: Vec<u8> = (0..50u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    write(&env.local, "big/fifty.bin", &big);
    for i in 0..3000 {
        write(
            &env.local,
            &format!("many/f{i:04}.txt"),
            format!("file {i}\n"),
        );
    }
    let job = env.job("push", false, "concurrency: 8\n");
    let out = env.run(&job, 0);
    assert!(out.stdout.contains("3001 uploaded"), "{}", out.stdout);
    assert_eq!(
        fs::read(env.remote_disk.join("big/fifty.bin")).unwrap(),
        big
    );
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(env.plan_ops(&job), vec![]);
    // And back: pull into an empty directory gives the same bytes.
    fs::remove_dir_all(&env.local).unwrap();
    fs::remove_file(env.state_path()).unwrap();
    let job = env.job("pull", false, "concurrency: 8\nstate: pull.db\n");
    env.run(&job, 0);
    assert_same_tree(&env.remote_disk, &env.local);
}

#[test]
fn hash_mode_ignores_touched_files() {
    let env = Env::builtin();
    write(&env.local, "a.txt", "aaa");
    let job = env.job("push", false, "compare: hash\n");
    env.run(&job, 0);
    let f = fs::File::options()
        .write(true)
        .open(env.local.join("a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(env.plan_ops(&job), vec![]);
    write(&env.local, "a.txt", "bbb");
    assert_eq!(env.plan_ops(&job), ops(&[("upload", "a.txt")]));
}

#[test]
fn directories_holding_excluded_files_are_kept_not_failed() {
    let env = Env::builtin();
    write(&env.local, "old/x.txt", "x\n");
    write(&env.local, "keep.txt", "k\n");
    let job = env.job("push", true, "filters:\n  exclude: [\"**/*.log\"]\n");
    env.run(&job, 0);
    write(&env.remote_disk, "old/debug.log", "server-side log\n");
    fs::remove_dir_all(env.local.join("old")).unwrap();
    let plan = env.plan_json(&job);
    let items: Vec<(String, String, String)> = plan["items"]
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
        .collect();
    assert_eq!(
        items,
        [
            (
                "delete".to_string(),
                "old/x.txt".to_string(),
                "source_deleted".to_string()
            ),
            (
                "keep".to_string(),
                "old".to_string(),
                "holds_unsynced".to_string()
            ),
        ]
    );
    env.run(&job, 0);
    assert!(env.remote_disk.join("old/debug.log").exists());
    assert!(!env.remote_disk.join("old/x.txt").exists());
}
