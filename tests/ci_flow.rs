//! The CI recipe end to end: a repository cloned afresh for every run, no
//! local state (a new HOME each time), `state: remote`. Each run goes
//! through the fault proxy, which records the commands the server received.
//! Also the ways the state on the server can be unusable, the lock, saves
//! during a run, and `ftpsync adopt`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::faults::{Faulty, faulty};
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::{Env, Output, PASSWORD, snapshot, write};

/// Runs git in `dir`, with an identity and no user configuration.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "ci")
        .env("GIT_AUTHOR_EMAIL", "ci@example.com")
        .env("GIT_COMMITTER_NAME", "ci")
        .env("GIT_COMMITTER_EMAIL", "ci@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The job file the repository carries: the site in `site/`, pushed to
/// the env's server through its proxy, the state on the server.
fn job_yaml(env: &Env, extra: &str) -> String {
    format!(
        "name: deploy\ndirection: push\ndelete: true\nlocal:\n  path: site\nremote:\n  host: {}\n  port: {}\n  user: {}\n  password_env: FTPSYNC_TEST_PASSWORD\n  root: {}\nstate: remote\nretry:\n  max_attempts: 3\n  initial_backoff: 50ms\n  max_backoff: 200ms\ntimeout: 10s\n{extra}",
        env.host, env.port, env.user, env.remote_root
    )
}

/// `ftpsync ARGS` as a fresh runner runs it: a new, empty HOME (so no
/// state on this machine), in `cwd`.
fn fresh_runner(env: &Env, cwd: &Path, args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(args)
        .current_dir(cwd)
        .env("FTPSYNC_TEST_PASSWORD", env.password())
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .env_remove("FTPSYNC_LOG")
        .output()
        .unwrap();
    let o = Output::from(out);
    assert!(!o.all().contains(PASSWORD), "password leaked:\n{}", o.all());
    o
}

/// The commands received since `from` (an index into the proxy's log).
fn commands_since(f: &Faulty, from: usize) -> Vec<String> {
    f.proxy.commands()[from..].to_vec()
}

fn with_verb<'a>(cmds: &'a [String], verb: &str) -> Vec<&'a str> {
    cmds.iter()
        .filter(|c| c.split(' ').next() == Some(verb))
        .map(String::as_str)
        .collect()
}

/// Sets every file's modification time under `root` to `t` (a checkout's
/// times are whenever it happened).
fn touch_all(root: &Path, t: SystemTime) {
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            fs::File::options()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
}

/// The server's tree without ftpsync's own directory.
fn served(env: &Env) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut s = snapshot(&env.remote_disk);
    s.retain(|k, _| !k.starts_with(".ftpsync"));
    s
}

fn reserved_dir(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(env.remote_disk.join(".ftpsync"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fresh_clones_upload_nothing_the_second_time() {
    let f = faulty();
    let env = &f.env;
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    write(&repo, "site/index.html", "<h1>v1</h1>\n");
    write(&repo, "site/css/site.css", "body{}\n");
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write(&repo, "site/img/logo.bin", &blob);
    write(&repo, "deploy.yaml", job_yaml(env, ""));
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "v1"]);
    let clone = |name: &str| -> PathBuf {
        git(work.path(), &["clone", "-q", "repo", name]);
        work.path().join(name)
    };

    // First runner: nothing on the server yet, so everything is sent.
    let c1 = clone("c1");
    let o = fresh_runner(env, &c1, &["run", "deploy.yaml"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout.contains(
            "deploy: 3 uploaded, 0 downloaded, 0 deleted, 2 dirs created, 0 dirs removed, 0 adopted"
        ),
        "{}",
        o.stdout
    );
    assert_eq!(served(env), snapshot(&c1.join("site")));
    // The state, and no lock or temporary file left.
    assert_eq!(reserved_dir(env), ["deploy.db"]);

    // Second runner: another clone, every time new, no local state.
    let c2 = clone("c2");
    touch_all(&c2, SystemTime::now() + Duration::from_secs(3600));
    let before = f.proxy.commands().len();
    let o = fresh_runner(env, &c2, &["run", "deploy.yaml"]);
    assert_eq!(o.code, 0, "{}", o.all());
    // The touched files are recognised by their hashes; their new times
    // are recorded (counted as adopted), nothing is sent.
    assert!(
        o.stdout
            .contains("deploy: 0 uploaded, 0 downloaded, 0 deleted, 0 dirs created, 0 dirs removed, 3 adopted, 0 B transferred"),
        "{}",
        o.stdout
    );
    let cmds = commands_since(&f, before);
    // The only upload is the state itself, to its temporary name, renamed
    // into place; the lock is made and removed; nothing else is changed.
    assert_eq!(
        with_verb(&cmds, "STOR"),
        ["STOR /www/.ftpsync/deploy.db.part"],
        "{cmds:?}"
    );
    assert_eq!(
        with_verb(&cmds, "RNTO"),
        ["RNTO /www/.ftpsync/deploy.db"],
        "{cmds:?}"
    );
    assert_eq!(with_verb(&cmds, "DELE"), Vec::<&str>::new(), "{cmds:?}");
    assert_eq!(
        with_verb(&cmds, "RMD"),
        ["RMD /www/.ftpsync/deploy.lock"],
        "{cmds:?}"
    );
    assert_eq!(
        with_verb(&cmds, "RETR"),
        ["RETR /www/.ftpsync/deploy.db"],
        "{cmds:?}"
    );
    assert_eq!(reserved_dir(env), ["deploy.db"]);

    // A plan on a fresh runner reads the same state: nothing to do.
    let o = fresh_runner(env, &c2, &["plan", "--json", "deploy.yaml"]);
    assert_eq!(o.code, 0, "{}", o.all());
    let plan: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(plan["compare"], "hash");
    assert_eq!(plan["summary"]["upload"], 0, "{}", o.stdout);

    // A new commit: the third runner sends exactly the changed file.
    write(&repo, "site/index.html", "<h1>v2</h1>\n");
    fs::remove_file(repo.join("site/css/site.css")).unwrap();
    git(&repo, &["commit", "-qam", "v2"]);
    let c3 = clone("c3");
    let before = f.proxy.commands().len();
    let o = fresh_runner(env, &c3, &["run", "deploy.yaml"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout.contains(
            "deploy: 1 uploaded, 0 downloaded, 1 deleted, 0 dirs created, 1 dirs removed"
        ),
        "{}",
        o.stdout
    );
    let cmds = commands_since(&f, before);
    let stors = with_verb(&cmds, "STOR");
    assert_eq!(stors.len(), 2, "{cmds:?}");
    assert!(stors.iter().any(|c| c.starts_with("STOR /www/.ftpsync-")));
    assert_eq!(
        with_verb(&cmds, "DELE"),
        ["DELE /www/css/site.css"],
        "{cmds:?}"
    );
    assert_eq!(served(env), snapshot(&c3.join("site")));

    // The history travels with the state: a fresh runner's copy holds
    // every run so far.
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(["plan", "deploy.yaml"])
        .current_dir(&c3)
        .env("FTPSYNC_TEST_PASSWORD", env.password())
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .output()
        .unwrap();
    assert!(o.status.success());
    let db = reserved(env, "deploy.db");
    let runs: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM runs WHERE outcome = 'success'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(runs, 3);
}

/// A copy of a file in the server's `.ftpsync/`, to read without
/// touching the original.
fn reserved(env: &Env, name: &str) -> PathBuf {
    let copy = env.dir.path().join(format!("copy-of-{name}"));
    fs::copy(env.remote_disk.join(".ftpsync").join(name), &copy).unwrap();
    copy
}

/// A job in the env's scratch directory with the state on the server.
fn remote_job(env: &Env, extra: &str) -> PathBuf {
    env.job("push", true, &format!("state: remote\n{extra}"))
}

#[test]
fn an_unusable_state_on_the_server_stops_the_run() {
    let f = faulty();
    let env = &f.env;
    write(&env.local, "a.txt", "a\n");
    write(&env.local, "b.txt", "b\n");
    write(&env.remote_disk, "old.txt", "never synced\n");
    let job = remote_job(env, "");
    let stors = |from: usize| with_verb(&commands_since(&f, from), "STOR").len();
    let dels = |from: usize| with_verb(&commands_since(&f, from), "DELE").len();

    /// A name, the server's state file, a fault, the exit code, the message.
    type Case<'a> = (&'a str, &'a [u8], Option<Rule>, i32, &'a str);
    let cases: [Case; 4] = [
        // Not a database (an HTML error page, say).
        (
            "garbage",
            b"<html>502</html>",
            None,
            2,
            "cannot be used: not an SQLite database",
        ),
        // Empty: not "no state".
        (
            "empty",
            b"",
            None,
            2,
            "cannot be used: not an SQLite database",
        ),
        // The server will not give it (4xx every time): try later.
        (
            "transient",
            b"",
            Some(Rule::new("RETR", Action::Reply("451 Local error".into())).arg(".ftpsync")),
            3,
            "cannot read the state on the server (/www/.ftpsync/test.db): 451 Local error",
        ),
        // A 550 although the listing shows the file: not "no state".
        (
            "refused",
            b"",
            Some(Rule::new("RETR", Action::Reply("550 Permission denied".into())).arg(".ftpsync")),
            2,
            "cannot read the state on the server (/www/.ftpsync/test.db): 550 Permission denied",
        ),
    ];
    for (name, content, rule, code, message) in cases {
        write(&env.remote_disk, ".ftpsync/test.db", content);
        f.proxy.clear_rules();
        if let Some(r) = rule {
            f.proxy.add_rule(r);
        }
        let before = f.proxy.commands().len();
        let o = env.ftpsync(&["run", job.to_str().unwrap()]);
        assert_eq!(o.code, code, "{name}: {}", o.all());
        assert!(o.stderr.contains(message), "{name}: {}", o.stderr);
        assert!(
            o.stderr.contains("nothing was changed"),
            "{name}: {}",
            o.stderr
        );
        assert_eq!((stors(before), dels(before)), (0, 0), "{name}");
        // The state is left as it was, the lock is released.
        assert_eq!(
            fs::read(env.remote_disk.join(".ftpsync/test.db")).unwrap(),
            content,
            "{name}"
        );
        assert_eq!(reserved_dir(env), ["test.db"], "{name}");
    }
    f.proxy.clear_rules();

    // Another run holds the lock: exit 5, nothing done, its lock kept.
    fs::remove_file(env.remote_disk.join(".ftpsync/test.db")).unwrap();
    fs::create_dir(env.remote_disk.join(".ftpsync/test.lock")).unwrap();
    let before = f.proxy.commands().len();
    let o = env.ftpsync(&["run", job.to_str().unwrap()]);
    assert_eq!(o.code, 5, "{}", o.all());
    assert!(
        o.stderr
            .contains("its lock /www/.ftpsync/test.lock exists on the server"),
        "{}",
        o.stderr
    );
    assert_eq!((stors(before), dels(before)), (0, 0));
    assert!(env.remote_disk.join(".ftpsync/test.lock").is_dir());

    // No state at all (550, and the listing agrees): a first run, under
    // the first-run rules. Deleting the file that was never synced is more
    // than safety.max_delete allows of a server holding one file.
    fs::remove_dir(env.remote_disk.join(".ftpsync/test.lock")).unwrap();
    let o = env.run(&job, 4);
    assert!(o.stderr.contains("safety.max_delete"), "{}", o.stderr);
    assert!(env.remote_disk.join("old.txt").exists());
    let o = env.ftpsync(&["run", "--force-delete", job.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout
            .contains("test: 2 uploaded, 0 downloaded, 1 deleted"),
        "{}",
        o.stdout
    );
    assert_eq!(reserved_dir(env), ["test.db"]);
    // A plan reads the server's state without taking the lock or writing.
    let before = f.proxy.commands().len();
    assert_eq!(env.plan_ops(&job), Vec::<(String, String)>::new());
    let cmds = commands_since(&f, before);
    assert_eq!(with_verb(&cmds, "MKD"), Vec::<&str>::new(), "{cmds:?}");
    assert_eq!(with_verb(&cmds, "STOR"), Vec::<&str>::new(), "{cmds:?}");
}

#[test]
fn the_state_is_saved_on_the_server_during_the_run() {
    let f = faulty();
    let env = &f.env;
    for i in 0..12 {
        write(&env.local, &format!("f{i:02}.txt"), format!("file {i}\n"));
    }
    // One upload at a time, each slowed down: the run takes seconds.
    f.proxy.add_rule(
        Rule::new("STOR", Action::Delay(Duration::from_millis(300))).arg("/www/.ftpsync-"),
    );
    let job = remote_job(env, "concurrency: 1\nstate_save_interval: 200ms\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(["run", job.to_str().unwrap()])
        .env("FTPSYNC_TEST_PASSWORD", env.password())
        .env("HOME", env.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed outright once a few files are up and a save has happened.
    let state = env.remote_disk.join(".ftpsync/test.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let uploaded = (0..12)
            .filter(|i| env.remote_disk.join(format!("f{i:02}.txt")).exists())
            .count();
        if uploaded >= 4 && state.exists() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let uploaded: Vec<usize> = (0..12)
        .filter(|i| env.remote_disk.join(format!("f{i:02}.txt")).exists())
        .collect();
    assert!(uploaded.len() < 12, "the run finished before the kill");

    // The saved state knows some of what was done: a fresh runner (no
    // local working copy) uploads only what is not recorded.
    fs::remove_dir_all(env.dir.path().join(".local")).unwrap();
    let saved: Vec<String> = rusqlite::Connection::open(reserved(env, "test.db"))
        .unwrap()
        .prepare("SELECT path FROM entries ORDER BY path")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        !saved.is_empty() && saved.len() <= uploaded.len(),
        "{saved:?} of {uploaded:?}"
    );
    // The killed run's lock is still there: the next run says so.
    let o = env.ftpsync(&["run", job.to_str().unwrap()]);
    assert_eq!(o.code, 5, "{}", o.all());
    fs::remove_dir(env.remote_disk.join(".ftpsync/test.lock")).unwrap();
    f.proxy.clear_rules();
    let before = f.proxy.commands().len();
    let o = env.run(&job, 0);
    // What the saved state records is not sent again. What was uploaded
    // after the last save is unknown to it: adopted if its time on the
    // server matches (it was set before the rename), else sent again.
    // What never arrived is sent.
    let cmds = commands_since(&f, before);
    let mut placed = with_verb(&cmds, "RNTO");
    placed.retain(|c| !c.starts_with("RNTO /www/.ftpsync/"));
    for p in &saved {
        assert!(
            !placed.contains(&format!("RNTO /www/{p}").as_str()),
            "{p}: {cmds:?}"
        );
    }
    for i in (0..12).filter(|i| !uploaded.contains(i)) {
        assert!(
            placed.contains(&format!("RNTO /www/f{i:02}.txt").as_str()),
            "{cmds:?}"
        );
    }
    assert!(
        o.stdout
            .contains(&format!("test: {} uploaded,", placed.len())),
        "{}",
        o.stdout
    );
    assert_eq!(served(env), snapshot(&env.local));
}

#[test]
fn adopt_records_an_existing_deployment_without_transferring() {
    let f = faulty();
    let env = &f.env;
    write(&env.local, "same.txt", "same\n");
    write(&env.local, "dir/same too.txt", "same too\n");
    write(&env.local, "differs.txt", "local\n");
    write(&env.local, "new.txt", "new\n");
    write(&env.remote_disk, "same.txt", "same\n");
    write(&env.remote_disk, "dir/same too.txt", "same too\n");
    write(&env.remote_disk, "differs.txt", "remote\n");
    write(&env.remote_disk, "extra.txt", "only on the server\n");
    // The deployment's files carry the local times (as a mirror sets them).
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    touch_all(&env.local, t);
    touch_all(&env.remote_disk, t);
    let before_tree = snapshot(&env.remote_disk);
    let job = remote_job(env, "");
    let before = f.proxy.commands().len();
    let o = env.ftpsync(&["adopt", job.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        o.stdout,
        "left: upload differs.txt (differs on the server and was never synced: overwritten)\n\
         left: upload new.txt (new locally)\n\
         left: delete extra.txt (not present locally)\n\
         test: 2 files adopted (2 by size and time, 0 by the server's hash), 3 items left for the next run\n"
    );
    let cmds = commands_since(&f, before);
    assert_eq!(
        with_verb(&cmds, "STOR"),
        ["STOR /www/.ftpsync/test.db.part"],
        "{cmds:?}"
    );
    assert_eq!(with_verb(&cmds, "DELE"), Vec::<&str>::new(), "{cmds:?}");
    let mut after = snapshot(&env.remote_disk);
    after.retain(|k, _| !k.starts_with(".ftpsync"));
    assert_eq!(after, before_tree);

    // The next run does what was left, and only that.
    let o = env.run(&job, 0);
    assert!(
        o.stdout
            .contains("test: 2 uploaded, 0 downloaded, 1 deleted, 0 dirs created"),
        "{}",
        o.stdout
    );
}
