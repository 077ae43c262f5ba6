//! Fault injection: the scriptable proxy (tests/support/fault_proxy.rs)
//! sits between ftpsync and the built-in server and fails commands, drops
//! connections, cuts data and rewrites listings. Each test asserts the
//! outcome on disk, the exit code and, where it matters, the commands sent.

use std::fs;
use std::time::Duration;

use crate::support::fault_proxy::{Action, FaultProxy, Rule};
use crate::support::harness::{Env, assert_same_tree, snapshot, snapshot_live, write};

/// An environment whose jobs talk to the server through a fault proxy.
pub(crate) struct Faulty {
    pub(crate) env: Env,
    pub(crate) proxy: FaultProxy,
    _rt: tokio::runtime::Runtime,
}

impl Faulty {
    /// Replaces the proxy with a new one on another port, in front of the
    /// same server: the old one's connections are cut and its port closed.
    pub(crate) fn new_proxy(&mut self) {
        let upstream = format!("127.0.0.1:{}", self.env.server_port())
            .parse()
            .unwrap();
        let proxy = self._rt.block_on(FaultProxy::start(upstream)).unwrap();
        self.env.via(proxy.addr().port());
        self.proxy = proxy;
    }
}

pub(crate) fn faulty() -> Faulty {
    faulty_in_front_of(Env::builtin())
}

/// A fault proxy in front of a third-party server: one that answers
/// commands in order, so ftpsync pipelines them.
pub(crate) fn faulty_external(server: crate::support::servers::ExternalServer) -> Faulty {
    faulty_in_front_of(Env::external(server))
}

fn faulty_in_front_of(mut env: Env) -> Faulty {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = format!("127.0.0.1:{}", env.server_port()).parse().unwrap();
    let proxy = rt.block_on(FaultProxy::start(upstream)).unwrap();
    env.via(proxy.addr().port());
    Faulty {
        env,
        proxy,
        _rt: rt,
    }
}

fn count(cmds: &[String], prefix: &str) -> usize {
    cmds.iter().filter(|c| c.starts_with(prefix)).count()
}

pub(crate) fn small_tree(env: &Env, n: usize) {
    for i in 0..n {
        write(
            &env.local,
            &format!("d{}/f{i:02}.txt", i % 3),
            format!("content of file {i}\n"),
        );
    }
}

/// Waits until the proxy has seen a command starting with `prefix`.
fn wait_for_command(proxy: &FaultProxy, prefix: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !proxy.commands().iter().any(|c| c.starts_with(prefix)) {
        assert!(std::time::Instant::now() < deadline, "no {prefix} seen");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Job settings for tests of uploads into new directories one file at a
/// time (each to a temporary name, checked and renamed), as uploads into
/// existing directories always go; by default a new directory is built
/// under a temporary name and renamed whole (see `staged.rs`).
pub(crate) const BY_FILE: &str = "stage_new_dirs: false\n";

pub(crate) fn no_temp_files(root: &std::path::Path) {
    for k in snapshot(root).keys() {
        assert!(!k.contains(".ftpsync-"), "temporary file left behind: {k}");
    }
}

#[test]
fn transient_replies_are_retried() {
    let f = faulty();
    small_tree(&f.env, 6);
    f.proxy.add_rule(
        Rule::new(
            "STOR",
            Action::Reply("451 Local error in processing".into()),
        )
        .times(2),
    );
    f.proxy.add_rule(
        Rule::new(
            "MKD",
            Action::Reply("421 Service not available, closing control connection".into()),
        )
        .times(1),
    );
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    // Both refusals fired and were retried past (other transient hiccups
    // under load may add attempts, never remove them).
    assert_eq!(f.proxy.fired(), 3);
    assert!(count(&f.proxy.commands(), "STOR ") >= 8);
    no_temp_files(&f.env.remote_disk);
}

#[test]
fn permanent_failure_fails_the_item_and_skips_deletes() {
    let f = faulty();
    small_tree(&f.env, 6);
    write(&f.env.remote_disk, "stray.txt", "not ours");
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Reply("553 Not allowed".into())).arg("f04.txt"));
    let job = f.env.job(
        "push",
        true,
        &format!("{BY_FILE}safety:\n  max_delete: 100%\n"),
    );
    let out = f.env.run(&job, 1);
    assert!(
        out.stdout
            .contains("FAILED upload d1/f04.txt: 553 Not allowed"),
        "{}\ncommands: {:#?}",
        out.all(),
        f.proxy.commands()
    );
    assert!(out.stdout.contains("skipped 1 deletes"), "{}", out.all());
    // The other files arrived, the stray was not deleted, no temp file is left.
    assert!(f.env.remote_disk.join("stray.txt").exists());
    assert!(!f.env.remote_disk.join("d1/f04.txt").exists());
    assert_eq!(
        fs::read(f.env.remote_disk.join("d2/f05.txt")).unwrap(),
        b"content of file 5\n"
    );
    no_temp_files(&f.env.remote_disk);
    // 553 is permanent: one attempt only.
    assert_eq!(count(&f.proxy.commands(), "RNTO /www/d1/f04.txt"), 1);
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

/// A refused RNTO is checked by listing the directory (is the target
/// there, to be replaced?). When that listing fails too, as libunftp's does
/// while another file in the directory is renamed, the rename's refusal is
/// what the item reports.
#[test]
fn refused_rename_is_reported_when_the_check_cannot_list() {
    let f = faulty();
    write(&f.env.local, "d1/a.txt", "a\n");
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Reply("553 Not allowed".into())).arg("a.txt"));
    // The scan lists only /www (d1 is new): an MLSD in d1 is the check's.
    f.proxy.add_rule(
        Rule::new("MLSD", Action::Reply("550 File not found".into()))
            .in_dir("/www/d1")
            .times(1),
    );
    let job = f.env.job("push", false, BY_FILE);
    let out = f.env.run(&job, 1);
    assert!(
        out.stdout
            .contains("FAILED upload d1/a.txt: 553 Not allowed"),
        "{}\ncommands: {:#?}",
        out.all(),
        f.proxy.commands()
    );
    assert_eq!(f.proxy.fired(), 2);
    no_temp_files(&f.env.remote_disk);
}

/// A re-run logs in, ahead of the scan, as many connections as the last
/// run's directories can use, and lists those directories at once instead
/// of after the root's listing: with the root's listing held back for
/// seconds, every subdirectory has been listed meanwhile.
#[test]
fn rerun_lists_known_directories_ahead_of_the_root() {
    let f = faulty();
    small_tree(&f.env, 6);
    let job = f.env.job("push", false, "concurrency: 4\n");
    f.env.run(&job, 0);
    let done = f.proxy.commands().len();
    let hold = Duration::from_secs(4);
    f.proxy.add_rule(
        Rule::new("MLSD", Action::Delay(hold))
            .in_dir("/www")
            .times(1),
    );
    let subdirs_listed = |cmds: &[String]| {
        (0..3).all(|d| {
            let cwd = format!("CWD /www/d{d}");
            cmds.iter()
                .skip_while(|c| **c != cwd)
                .any(|c| c.starts_with("MLSD"))
        })
    };
    let started = std::time::Instant::now();
    let seen_within = std::thread::scope(|s| {
        let run = s.spawn(|| f.env.run(&job, 0));
        let mut seen = None;
        while !run.is_finished() {
            if seen.is_none() && subdirs_listed(&f.proxy.commands()[done..]) {
                seen = Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        run.join().expect("the run");
        seen
    });
    let cmds = f.proxy.commands()[done..].to_vec();
    let by_session = f.proxy.commands_by_session()[done..].to_vec();
    // Listed before the root's listing could have been answered.
    assert!(
        seen_within.is_some_and(|t| t < hold),
        "{seen_within:?}: {by_session:#?}"
    );
    // The first connection, and one for each of the three directories: the
    // pool's warmed ones, not logins of the scan's own that race them (see
    // `warmed_connections_are_the_ones_the_next_gets_wait_for`).
    assert_eq!(count(&cmds, "USER "), 4, "{by_session:#?}");
    assert_eq!(count(&cmds, "MLSD"), 4, "{by_session:#?}");
}

/// `Pool::warm` takes its permits before it returns: a `get` right after
/// it, before the warming tasks have run, waits for a warmed connection
/// instead of logging in one of its own, and the pool logs in no more
/// connections than it hands out. (With the permits taken in the tasks,
/// such a `get` logged in itself and the warmed connection after it was
/// closed unused: the known-directories scan above saw 5 or 6 logins
/// instead of 4 when its tasks won the race, as they always do here on a
/// runtime with one thread.)
#[test]
fn warmed_connections_are_the_ones_the_next_gets_wait_for() {
    use ftpsync::ftp::pool::Pool;
    use std::sync::Arc;
    let f = faulty();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = &f.env;
        let opts = env.connect_options();
        let pool = Arc::new(Pool::new(opts, 4));
        // The first connection, idle, as the engine leaves it.
        pool.get().await.unwrap().release();
        pool.warm(3);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.get().await.unwrap());
        }
        for mut pc in held {
            pc.conn().pwd().await.unwrap();
            pc.release();
        }
        assert_eq!(pool.idle_count(), 4);
        pool.close().await;
    });
    let cmds = f.proxy.commands_by_session();
    assert_eq!(f.proxy.connections(), 4, "{cmds:#?}");
    assert_eq!(count(&f.proxy.commands(), "USER "), 4, "{cmds:#?}");
}

/// A first run (no state) logs in its other connections while the root is
/// being listed, not once the plan is made: with the root's listing held
/// 2 s, all four connections have logged in before it is answered.
#[test]
fn first_run_logs_in_while_the_root_is_listed() {
    let f = faulty();
    small_tree(&f.env, 6);
    let hold = Duration::from_secs(2);
    f.proxy
        .add_rule(Rule::new("MLSD", Action::Delay(hold)).times(1));
    let job = f.env.job("push", false, "concurrency: 4\n");
    let during_hold = std::thread::scope(|s| {
        let run = s.spawn(|| f.env.run(&job, 0));
        wait_for_command(&f.proxy, "MLSD");
        std::thread::sleep(hold / 2);
        let logins = count(&f.proxy.commands(), "USER ");
        run.join().expect("the run");
        logins
    });
    let cmds = f.proxy.commands_by_session();
    assert_eq!(during_hold, 4, "{cmds:#?}");
    assert_eq!(count(&f.proxy.commands(), "USER "), 4, "{cmds:#?}");
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

/// The pool says goodbye on all its connections at once, and the run does
/// not wait for the answers: a run whose QUIT replies each take 1.5 s ends
/// well before the first of them, and every connection was sent its QUIT.
#[test]
fn goodbyes_are_said_at_once_and_not_waited_for() {
    let f = faulty();
    small_tree(&f.env, 6);
    let job = f.env.job("push", false, "concurrency: 4\n");
    // The proxy may log a QUIT after the client has exited: wait for it.
    let quits_reach = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let quits = count(&f.proxy.commands(), "QUIT");
            if quits >= n || std::time::Instant::now() > deadline {
                break quits;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    f.env.run(&job, 0);
    // The first connection and one for each of the three directories.
    assert_eq!(quits_reach(4), 4, "{:#?}", f.proxy.commands());
    let hold = Duration::from_millis(1500);
    f.proxy.add_rule(Rule::new("QUIT", Action::Delay(hold)));
    let started = std::time::Instant::now();
    f.env.run(&job, 0);
    let took = started.elapsed();
    // Waiting for the replies, even all at once, would take 1.5 s.
    assert!(took < hold, "the run waited for its goodbyes: {took:?}");
    assert_eq!(quits_reach(8), 8, "{:#?}", f.proxy.commands());
}

#[test]
fn dropped_connections_and_cut_data_recover() {
    let f = faulty();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write(&f.env.local, "big.bin", &big);
    small_tree(&f.env, 5);
    f.proxy.add_rule(
        Rule::new(
            "STOR",
            Action::CutData {
                after_bytes: 10_000,
                kill_control: false,
            },
        )
        .arg(".part")
        .times(1),
    );
    f.proxy
        .add_rule(Rule::new("STOR", Action::DropControl).times(1));
    f.proxy.add_rule(
        Rule::new(
            "MLSD",
            Action::CutData {
                after_bytes: 20,
                kill_control: true,
            },
        )
        .times(1),
    );
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
    assert!(f.proxy.connections() > 1, "expected reconnections");
    // A rerun is a no-op: nothing was duplicated or half-recorded.
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

#[test]
fn lost_dele_reply_is_checked_not_failed() {
    let f = faulty();
    small_tree(&f.env, 6);
    let job = f.env.job("push", true, "");
    f.env.run(&job, 0);
    fs::remove_file(f.env.local.join("d0/f00.txt")).unwrap();
    f.proxy
        .add_rule(Rule::new("DELE", Action::DropAfterForward).times(1));
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    assert_eq!(count(&f.proxy.commands(), "DELE /www/d0/f00.txt"), 2);
}

#[test]
fn failed_or_suspicious_listings_never_delete() {
    let f = faulty();
    small_tree(&f.env, 6);
    let job = f.env.job("pull", true, "");
    // First sync the server's tree down.
    fs::remove_dir_all(&f.env.remote_disk).unwrap();
    fs::create_dir_all(&f.env.remote_disk).unwrap();
    for i in 0..6 {
        write(
            &f.env.remote_disk,
            &format!("d{}/f{i:02}.txt", i % 3),
            format!("content of file {i}\n"),
        );
    }
    fs::remove_dir_all(&f.env.local).unwrap();
    f.env.run(&job, 0);
    let before = snapshot(&f.env.local);
    // A listing that fails every time: its subtree is skipped, exit 1, nothing deleted.
    f.proxy.add_rule(Rule::new(
        "MLSD",
        Action::Reply("451 Requested action aborted".into()),
    ));
    let out = f.env.run(&job, 1);
    assert!(out.stderr.contains("listing failed"), "{}", out.all());
    assert_eq!(snapshot(&f.env.local), before);
    // A root that lists as empty while the state holds files: refused (exit 4).
    f.proxy.clear_rules();
    f.proxy
        .add_rule(Rule::new("MLSD", Action::TruncateLines(0)));
    let plan = f.env.ftpsync(&["plan", job.to_str().unwrap()]);
    assert_eq!(plan.code, 4, "{}", plan.all());
    let out = f.env.run(&job, 4);
    assert!(out.stderr.contains("refusing"), "{}", out.all());
    assert_eq!(snapshot(&f.env.local), before);
    // A listing with unparseable lines: nothing below it is deleted, and
    // the withheld deletes make the run partial (exit 1).
    f.proxy.clear_rules();
    let broken = b"type=dir;modify=20260101000000; d0\r\nthis is not mlsd\r\n".to_vec();
    f.proxy
        .add_rule(Rule::new("MLSD", Action::ReplaceData(broken)).times(1));
    let out = f.env.run(&job, 1);
    assert!(
        out.stderr.contains("unparseable listing line"),
        "{}",
        out.all()
    );
    assert_eq!(snapshot(&f.env.local), before);
}

#[test]
fn hostile_names_are_refused() {
    let f = faulty();
    write(&f.env.remote_disk, "ok.txt", "fine\n");
    let listing = concat!(
        "type=file;size=5;modify=20260101000000; ok.txt\r\n",
        "type=file;size=5;modify=20260101000000; ../evil.txt\r\n",
        "type=file;size=5;modify=20260101000000; /etc/evil\r\n",
        "type=file;size=5;modify=20260101000000; a\\b.txt\r\n",
        "type=dir;modify=20260101000000; ..\r\n",
        "type=file;size=5;modify=20260101000000; x\rDELE ok.txt\r\n",
    );
    f.proxy.add_rule(Rule::new(
        "MLSD",
        Action::ReplaceData(listing.as_bytes().to_vec()),
    ));
    let job = f.env.job("pull", true, "");
    let out = f.env.run(&job, 0);
    assert!(out.stderr.contains("name refused"), "{}", out.all());
    let keys: Vec<String> = snapshot(&f.env.local).into_keys().collect();
    assert_eq!(keys, ["ok.txt"]);
    assert!(!f.env.dir.path().join("evil.txt").exists());
    for c in f.proxy.commands() {
        assert!(!c.contains("evil") && !c.contains("DELE"), "sent {c:?}");
    }
}

#[test]
fn too_many_connections_shrinks_the_pool() {
    let f = faulty();
    small_tree(&f.env, 12);
    f.proxy.add_rule(
        Rule::new(
            "USER",
            Action::Reply("421 Too many connections (2) from this IP".into()),
        )
        .times(2),
    );
    let job = f.env.job("push", false, "concurrency: 6\n");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

#[test]
fn delete_limits_and_empty_roots() {
    let env = Env::builtin();
    small_tree(&env, 10);
    let job = env.job("push", true, "");
    env.run(&job, 0);
    for i in 0..6 {
        fs::remove_file(env.local.join(format!("d{}/f{i:02}.txt", i % 3))).unwrap();
    }
    let out = env.run(&job, 4);
    assert!(out.stderr.contains("--force-delete"), "{}", out.all());
    assert!(env.remote_disk.join("d0/f00.txt").exists());
    let out = env.ftpsync(&["run", "--force-delete", job.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_same_tree(&env.local, &env.remote_disk);
    // An empty local root with delete: true is refused, never "delete everything".
    fs::remove_dir_all(&env.local).unwrap();
    fs::create_dir_all(&env.local).unwrap();
    let out = env.run(&job, 4);
    assert!(out.stderr.contains("is empty"), "{}", out.all());
    assert!(env.remote_disk.join("d1/f07.txt").exists());
    // A missing one is an error too.
    fs::remove_dir_all(&env.local).unwrap();
    env.run(&job, 2);
    assert!(env.remote_disk.join("d1/f07.txt").exists());
}

#[test]
fn state_lock_and_damage() {
    let env = Env::builtin();
    small_tree(&env, 3);
    let job = env.job("push", false, "");
    let lock = ftpsync::state::lock(&env.state_path()).unwrap();
    let out = env.run(&job, 5);
    assert!(
        out.stderr.contains("another ftpsync is running this job"),
        "{}",
        out.all()
    );
    drop(lock);
    env.run(&job, 0);
    // A damaged database is reported and left as it is.
    let junk = b"SQLite format 3\0 but then garbage garbage garbage garbage garbage".repeat(100);
    fs::remove_file(env.state_path().with_extension("db-wal")).ok();
    fs::remove_file(env.state_path().with_extension("db-shm")).ok();
    fs::write(env.state_path(), &junk).unwrap();
    let out = env.run(&job, 2);
    assert!(out.stderr.contains("damaged"), "{}", out.all());
    assert_eq!(fs::read(env.state_path()).unwrap(), junk);
}

/// The state is checked while the first connection logs in, and a damaged
/// one ends the run at once: it does not wait for a login to a server that
/// never answers.
#[test]
fn damaged_state_does_not_wait_for_the_login() {
    let env = Env::builtin();
    small_tree(&env, 3);
    let job = env.job("push", false, "");
    env.run(&job, 0);
    let junk = b"SQLite format 3\0 but then garbage garbage garbage garbage garbage".repeat(100);
    fs::remove_file(env.state_path().with_extension("db-wal")).ok();
    fs::remove_file(env.state_path().with_extension("db-shm")).ok();
    fs::write(env.state_path(), &junk).unwrap();
    // A server that takes connections (the kernel's backlog) and never
    // sends its greeting.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let text = fs::read_to_string(&job).unwrap();
    let text = text.replace(&format!("port: {}", env.port), &format!("port: {port}"));
    fs::write(&job, text).unwrap();
    let started = std::time::Instant::now();
    let out = env.run(&job, 2);
    assert!(out.stderr.contains("damaged"), "{}", out.all());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}: {}",
        started.elapsed(),
        out.all()
    );
    assert_eq!(fs::read(env.state_path()).unwrap(), junk);
    drop(silent);
}

#[test]
fn sigkill_at_random_points_converges() {
    let env = Env::builtin();
    for i in 0..150 {
        let size = 1000 + (i * 7919) % 40_000;
        let body: Vec<u8> = (0..size).map(|b| ((b * 31 + i) % 256) as u8).collect();
        write(&env.local, &format!("d{}/f{i:03}.bin", i % 7), body);
    }
    let job = env.job("push", true, "concurrency: 4\n");
    let mut delay = 37u64;
    for round in 0..8 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ftpsync"))
            .args(["run", job.to_str().unwrap()])
            .env("FTPSYNC_TEST_PASSWORD", env.password())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        delay = (delay * 7 + 13) % 400;
        std::thread::sleep(Duration::from_millis(20 + delay));
        let _ = child.kill();
        let _ = child.wait();
        // No file on the server ever has partial content under its final name.
        // (The server may still be finishing a rename the client sent.)
        for (k, v) in snapshot_live(&env.remote_disk) {
            if let Some(content) = v
                && !k.contains(".ftpsync-")
            {
                assert_eq!(
                    fs::read(env.local.join(&k)).unwrap(),
                    content,
                    "round {round}: {k} is partial"
                );
            }
        }
        // Change something between crashes, as real life does.
        write(
            &env.local,
            &format!("d0/round{round}.txt"),
            format!("round {round}\n"),
        );
    }
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    let db = rusqlite::Connection::open(env.state_path()).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(env.plan_ops(&job), vec![]);
}

#[test]
fn pasv_address_is_ignored() {
    let f = faulty();
    small_tree(&f.env, 4);
    // Hide FEAT: no EPSV, no MLSD, so ftpsync uses PASV and LIST.
    f.proxy.add_rule(Rule::new(
        "FEAT",
        Action::Reply("502 Command not implemented".into()),
    ));
    // The PASV reply names 127.0.0.2, where nothing listens; only the control
    // connection's address works.
    f.proxy.set_pasv_advertised_ip([127, 0, 0, 2]);
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    let cmds = f.proxy.commands();
    assert!(count(&cmds, "PASV") >= 4, "{cmds:?}");
    assert_eq!(count(&cmds, "EPSV"), 0);
    assert!(count(&cmds, "LIST") >= 1, "{cmds:?}");
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

#[test]
fn rename_refused_over_existing_file_falls_back() {
    let f = faulty();
    write(&f.env.local, "a.txt", "version 1\n");
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    write(&f.env.local, "a.txt", "version 2, longer\n");
    f.proxy.add_rule(
        Rule::new(
            "RNTO",
            Action::Reply("553 Rename failed: file exists".into()),
        )
        .times(1),
    );
    f.env.run(&job, 0);
    assert_eq!(
        fs::read(f.env.remote_disk.join("a.txt")).unwrap(),
        b"version 2, longer\n"
    );
    let cmds = f.proxy.commands();
    let tail: Vec<&String> = cmds
        .iter()
        .filter(|c| c.starts_with("RNTO") || c.starts_with("DELE"))
        .collect();
    // The first run's rename, then the refused one, the delete and the retry.
    assert_eq!(
        tail,
        [
            "RNTO /www/a.txt",
            "RNTO /www/a.txt",
            "DELE /www/a.txt",
            "RNTO /www/a.txt"
        ]
    );
    no_temp_files(&f.env.remote_disk);
}

#[test]
fn lost_rnto_reply_converges() {
    let f = faulty();
    small_tree(&f.env, 4);
    f.proxy
        .add_rule(Rule::new("RNTO", Action::DropAfterForward).times(1));
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

#[test]
fn hung_server_hits_the_operation_timeout() {
    let f = faulty();
    small_tree(&f.env, 3);
    f.proxy
        .add_rule(Rule::new("SIZE", Action::Delay(Duration::from_secs(5))).times(1));
    let job = f.env.job("push", false, "timeout: 500ms\n");
    let start = std::time::Instant::now();
    f.env.run(&job, 0);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

#[test]
fn run_deadline_stops_a_slow_run() {
    let f = faulty();
    small_tree(&f.env, 3);
    f.proxy
        .add_rule(Rule::new("STOR", Action::Delay(Duration::from_secs(3))));
    let job = f.env.job("push", false, "timeout: 10s\ndeadline: 1s\n");
    let start = std::time::Instant::now();
    let out = f.env.run(&job, 1);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(out.stderr.contains("deadline"), "{}", out.all());
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

#[test]
fn non_utf8_names_are_skipped_not_mangled() {
    let f = faulty();
    write(&f.env.remote_disk, "ok.txt", "fine\n");
    let listing = b"type=file;size=5;modify=20260101000000; ok.txt\r\ntype=file;size=5;modify=20260101000000; caf\xe9.txt\r\n".to_vec();
    f.proxy
        .add_rule(Rule::new("MLSD", Action::ReplaceData(listing)));
    let job = f.env.job("pull", false, "");
    let out = f.env.run(&job, 0);
    assert!(out.stderr.contains("not valid UTF-8"), "{}", out.all());
    let keys: Vec<String> = snapshot(&f.env.local).into_keys().collect();
    assert_eq!(keys, ["ok.txt"]);
    assert_eq!(count(&f.proxy.commands(), "RETR"), 1);
}

#[test]
fn ftps_explicit_with_own_ca() {
    let mut env = Env::builtin_with_tls(true);
    env.remote_extra = format!(
        "  tls: explicit\n  tls_ca_file: {}\n",
        crate::support::harness::test_data("localhost-cert.pem").display()
    );
    small_tree(&env, 5);
    let job = env.job("push", true, "");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(env.plan_ops(&job), vec![]);
    // Without the CA the certificate is refused: exit 3, nothing sent in clear.
    env.remote_extra = "  tls: explicit\n".into();
    let job = env.job("push", true, "");
    let out = env.run(&job, 3);
    assert!(
        out.stderr
            .contains("the server's certificate was refused: ")
            && out
                .stderr
                .contains("pin it with `remote.tls_fingerprint: sha256:"),
        "{}",
        out.all()
    );
}

#[test]
fn tls_refused_fails_closed() {
    let mut f = faulty();
    f.env.remote_extra = "  tls: explicit\n".into();
    small_tree(&f.env, 2);
    let job = f.env.job("push", false, "");
    // The proxy answers AUTH with 534: ftpsync must not fall back to plain FTP.
    let out = f.env.run(&job, 3);
    assert!(out.stderr.contains("534"), "{}", out.all());
    let cmds = f.proxy.commands();
    assert!(
        cmds.iter()
            .all(|c| !c.starts_with("PASS") && !c.starts_with("USER")),
        "{cmds:?}"
    );
}

/// A rule that cuts the data connection of the next `verb` after `bytes`
/// (and the control connection too with `kill_control`).
pub(crate) fn cut_once(verb: &str, bytes: u64, kill_control: bool) -> Rule {
    Rule::new(
        verb,
        Action::CutData {
            after_bytes: bytes,
            kill_control,
        },
    )
    .times(1)
}

pub(crate) fn big_content(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8)
        .collect()
}

#[test]
fn interrupted_upload_resumes_after_checking_the_overlap() {
    let f = faulty();
    let big = big_content(4 << 20, 1);
    write(&f.env.local, "big.bin", &big);
    f.proxy.add_rule(cut_once("STOR", 2 << 20, false));
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.remote_disk.join("big.bin")).unwrap(), big);
    no_temp_files(&f.env.remote_disk);
    let cmds = f.proxy.commands();
    // The overlap was read back (REST + RETR of the temporary file), then the upload continued (REST + STOR).
    let rest: Vec<&String> = cmds.iter().filter(|c| c.starts_with("REST ")).collect();
    assert_eq!(rest.len(), 2, "{cmds:?}");
    assert_eq!(count(&cmds, "STOR "), 2);
    assert_eq!(count(&cmds, "RETR "), 1);
}

#[test]
fn interrupted_download_resumes_and_a_changed_file_restarts() {
    let f = faulty();
    let big = big_content(4 << 20, 2);
    write(&f.env.remote_disk, "big.bin", &big);
    f.proxy.add_rule(cut_once("RETR", 2 << 20, false));
    let job = f.env.job("pull", false, "");
    f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.local.join("big.bin")).unwrap(), big);
    let cmds = f.proxy.commands();
    assert_eq!(count(&cmds, "REST "), 1, "{cmds:?}");
    assert_eq!(count(&cmds, "RETR "), 2);
    no_temp_files(&f.env.local);
    // If the server's bytes do not match what was kept, the download starts over.
    // (A different size: a same-size rewrite within the listing's one-second
    // precision is invisible to any listing-based tool.)
    let changed = big_content((4 << 20) + 100, 3);
    write(&f.env.remote_disk, "big.bin", &changed);
    f.proxy.clear_rules();
    f.proxy.add_rule(cut_once("RETR", 2 << 20, false));
    // The resumed attempt is served other bytes, so the overlap check fails
    // and a third attempt downloads from zero.
    f.proxy
        .add_rule(Rule::new("RETR", Action::ReplaceData(big.clone())).times(1));
    f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.local.join("big.bin")).unwrap(), changed);
    let cmds = f.proxy.commands();
    assert_eq!(count(&cmds, "RETR "), 5, "{cmds:?}");
    assert_eq!(count(&cmds, "REST "), 2, "{cmds:?}");
    no_temp_files(&f.env.local);
}

#[test]
fn pull_never_writes_through_a_symlink() {
    let env = Env::builtin();
    let outside = env.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, env.local.join("evil")).unwrap();
    write(&env.remote_disk, "evil/payload.txt", "gotcha\n");
    write(&env.remote_disk, "fine.txt", "fine\n");
    let job = env.job("pull", false, "");
    let out = env.run(&job, 1);
    assert!(out.stdout.contains("FAILED mkdir evil"), "{}", out.all());
    assert!(out.stdout.contains("symbolic link"), "{}", out.all());
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the local root"
    );
    assert_eq!(fs::read(env.local.join("fine.txt")).unwrap(), b"fine\n");
}

#[test]
fn non_atomic_mode_and_active_mode() {
    let mut f = faulty();
    small_tree(&f.env, 4);
    f.env.remote_extra = "  passive: false\n".into();
    let job = f.env.job("push", false, "atomic: false\n");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    let cmds = f.proxy.commands();
    assert_eq!(count(&cmds, "RNFR"), 0, "{cmds:?}");
    assert_eq!(count(&cmds, "STOR /www/d0/f00.txt"), 1, "{cmds:?}");
    assert!(count(&cmds, "PORT ") >= 4, "{cmds:?}");
    assert_eq!(count(&cmds, "EPSV") + count(&cmds, "PASV"), 0, "{cmds:?}");
}

#[test]
fn password_from_file() {
    let env = Env::builtin();
    let pw = env.dir.path().join("password.txt");
    fs::write(&pw, format!("{}\n", env.password())).unwrap();
    write(&env.local, "a.txt", "a");
    let job = env.job("push", false, "");
    let text = fs::read_to_string(&job).unwrap().replace(
        "password_env: FTPSYNC_TEST_PASSWORD",
        &format!("password_file: {}", pw.display()),
    );
    fs::write(&job, text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(["run", job.to_str().unwrap()])
        .env_remove("FTPSYNC_TEST_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_tree(&env.local, &env.remote_disk);
}

#[test]
fn resume_across_runs() {
    let f = faulty();
    let big = big_content(4 << 20, 5);
    write(&f.env.local, "up/big.bin", &big);
    write(&f.env.remote_disk, "down/big.bin", big_content(3 << 20, 6));
    // One attempt only: the cut ends the run, leaving journaled partial files.
    let extra = "retry:\n  max_attempts: 1\n  initial_backoff: 10ms\n  max_backoff: 10ms\n";
    f.proxy.add_rule(cut_once("STOR", 2 << 20, true));
    let push = f.env.job(
        "push",
        false,
        &format!("{extra}filters:\n  include: [\"up/**\"]\n"),
    );
    f.env.run(&push, 1);
    assert!(
        snapshot(&f.env.remote_disk)
            .keys()
            .any(|k| k.starts_with("up/.ftpsync-"))
    );
    let before = f.proxy.commands().len();
    f.env.run(&push, 0);
    assert_eq!(fs::read(f.env.remote_disk.join("up/big.bin")).unwrap(), big);
    let cmds: Vec<String> = f.proxy.commands()[before..].to_vec();
    assert_eq!(count(&cmds, "REST "), 2, "the second run resumed: {cmds:?}");
    no_temp_files(&f.env.remote_disk);

    // The same for a download (another job, another state file).
    f.proxy.clear_rules();
    f.proxy.add_rule(cut_once("RETR", 2 << 20, true));
    let pull = f.env.job(
        "pull",
        false,
        &format!("{extra}state: pull.db\nfilters:\n  include: [\"down/**\"]\n"),
    );
    f.env.run(&pull, 1);
    assert!(
        snapshot(&f.env.local)
            .keys()
            .any(|k| k.starts_with("down/.ftpsync-"))
    );
    let before = f.proxy.commands().len();
    f.env.run(&pull, 0);
    assert_eq!(
        fs::read(f.env.local.join("down/big.bin")).unwrap(),
        big_content(3 << 20, 6)
    );
    let cmds: Vec<String> = f.proxy.commands()[before..].to_vec();
    assert_eq!(count(&cmds, "REST "), 1, "the second run resumed: {cmds:?}");
    no_temp_files(&f.env.local);
}

#[test]
fn emptied_server_directory_is_confirmed_then_mirrored_on_pull() {
    let env = Env::builtin();
    write(&env.remote_disk, "keep.txt", "k\n");
    write(&env.remote_disk, "gone/a.txt", "a\n");
    write(&env.remote_disk, "gone/b.txt", "b\n");
    let job = env.job("pull", true, "safety:\n  max_delete: 100%\n");
    env.run(&job, 0);
    fs::remove_file(env.remote_disk.join("gone/a.txt")).unwrap();
    fs::remove_file(env.remote_disk.join("gone/b.txt")).unwrap();
    // The server's directory lists as empty where files were synced: a
    // second listing (LIST beside MLSD) agrees, so the deletes go ahead.
    let out = env.run(&job, 0);
    assert!(!out.all().contains("force-delete"), "{}", out.all());
    assert_same_tree(&env.remote_disk, &env.local);
}

/// Faults in the middle of pipelined exchanges (EPSV+STOR, MDTM+SIZE,
/// RNFR+RNTO): a transient one is retried, a permanent one fails its item
/// alone, a lost reply is recovered, and replies never get mixed up.
fn pipelined_exchanges_survive_faults(f: &Faulty) {
    small_tree(&f.env, 9);
    // Over SMALL_FILE: sent with sendfile, from a verified offset if cut.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    write(&f.env.local, "big/big.bin", &big);
    let root = f.env.remote_root.trim_end_matches('/').to_string();
    let rules = [
        Rule::new("STOR", Action::Reply("451 Local error".into()))
            .arg("d2/")
            .times(1),
        Rule::new("SIZE", Action::Reply("451 Try again".into()))
            .arg("d0/")
            .times(1),
        Rule::new("RNFR", Action::Reply("450 Busy".into()))
            .arg("d0/")
            .times(1),
        Rule::new("RNTO", Action::Reply("553 Not allowed".into())).arg("d1/f04.txt"),
        Rule::new("RNTO", Action::DropAfterForward)
            .arg("d1/f01.txt")
            .times(1),
        Rule::new(
            "STOR",
            Action::CutData {
                after_bytes: 1_500_000,
                kill_control: false,
            },
        )
        .arg("/big/")
        .times(1),
    ];
    for r in rules {
        f.proxy.add_rule(r);
    }
    // Temporary names are random: the rules pick files by directory.
    let job = f.env.job(
        "push",
        false,
        &format!("{BY_FILE}concurrency: 2\nretry:\n  max_attempts: 8\n  initial_backoff: 20ms\n  max_backoff: 100ms\n"),
    );
    let out = f.env.run(&job, 1);
    assert!(
        out.stdout
            .contains("FAILED upload d1/f04.txt: 553 Not allowed"),
        "{}",
        out.all()
    );
    assert_eq!(out.failed().len(), 1, "{}", out.all());
    assert!(!f.env.remote_disk.join("d1/f04.txt").exists());
    no_temp_files(&f.env.remote_disk);
    // The cut made big.bin go again: resumed (REST, vsftpd), or from zero
    // after the size check caught the short file (pyftpdlib answers 226).
    let big_stors = count(&f.proxy.commands(), &format!("STOR {root}/big/.ftpsync-"));
    assert!(big_stors >= 2, "{:#?}", f.proxy.commands());
    // The exchanges really were pipelined.
    let piped = f.proxy.pipelined();
    for verb in ["STOR ", "SIZE ", "RNTO "] {
        assert!(
            piped.iter().any(|c| c.starts_with(verb)),
            "no pipelined {verb}in {piped:?}"
        );
    }
    // 553 is not retried. (A second RNTO can come from an attempt whose
    // pipelined RNFR was refused: its RNTO reaches the proxy too.)
    let rnto = count(&f.proxy.commands(), &format!("RNTO {root}/d1/f04.txt"));
    assert!((1..=2).contains(&rnto), "{rnto} RNTO for f04");
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

/// A STOR whose data went through but whose final reply is negative, with
/// the checks that follow it (MDTM, SIZE) already sent behind it: a 4xx is
/// retried, a 5xx fails that file alone, the replies after it stay in step,
/// and no temporary file is left; small files and sendfile'd big ones alike.
fn refused_store_with_its_checks_in_flight(f: &Faulty, checks_in_flight: bool) {
    small_tree(&f.env, 9);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    write(&f.env.local, "big/big.bin", &big);
    let root = f.env.remote_root.trim_end_matches('/').to_string();
    let rules = [
        Rule::new(
            "STOR",
            Action::ReplaceFinal("452 Insufficient storage".into()),
        )
        .arg("/d0/")
        .times(2),
        Rule::new("STOR", Action::ReplaceFinal("451 Aborted".into()))
            .arg("/big/")
            .times(1),
        Rule::new(
            "STOR",
            Action::ReplaceFinal("552 Exceeded storage allocation".into()),
        )
        .arg("/d1/")
        .times(1),
    ];
    for r in rules {
        f.proxy.add_rule(r);
    }
    let job = f.env.job(
        "push",
        false,
        &format!(
            "{BY_FILE}concurrency: 1\nretry:\n  initial_backoff: 20ms\n  max_backoff: 100ms\n"
        ),
    );
    let out = f.env.run(&job, 1);
    let failed = out.failed();
    assert_eq!(failed.len(), 1, "{}", out.all());
    assert!(
        failed[0].contains("552 Exceeded storage allocation"),
        "{}",
        out.all()
    );
    no_temp_files(&f.env.remote_disk);
    let cmds = f.proxy.commands();
    // On vsftpd, which leaves commands unread during a transfer, each STOR's
    // checks were sent before its reply came; pyftpdlib would answer them
    // during the transfer, so there they wait for the 226. (The proxy sees a
    // check as pipelined only if it gets there before the server's 226,
    // which on loopback it nearly always does, so "most", not "all".)
    let at = f.proxy.pipelined_at();
    let (mut checks, mut in_flight) = (0, 0);
    for (i, c) in cmds.iter().enumerate() {
        let Some(temp) = c.strip_prefix("STOR ") else {
            continue;
        };
        // The first check (SITE CHMOD, MDTM or MFMT) names the same file;
        // without checks in flight, a refused STOR gets none (its file is
        // removed: DELE).
        let Some(j) = (i + 1..cmds.len()).find(|&j| cmds[j].ends_with(temp)) else {
            continue;
        };
        if !cmds[j].starts_with("DELE ") {
            checks += 1;
            in_flight += usize::from(at.contains(&j));
        }
    }
    // With checks in flight, every one of the 13 STORs got them; else at
    // least the 9 placed (8 small files and big.bin; the retry of big.bin
    // also asks the SIZE of the copy the 451 left, to resume it).
    if checks_in_flight {
        assert_eq!(checks, 13, "{cmds:#?}");
        assert!(in_flight * 2 > checks, "{in_flight} of {checks}: {cmds:#?}");
    } else {
        assert!(checks >= 9, "{cmds:#?}");
        assert_eq!(in_flight, 0, "{cmds:#?}");
    }
    assert_eq!(
        count(&cmds, &format!("DELE {root}/d1/.ftpsync-")),
        1,
        "{cmds:#?}"
    );
    // The two 452s and the 451 were retried: 3 + 2 more STORs in d0, 2 for big.bin.
    assert_eq!(count(&cmds, &format!("STOR {root}/d0/")), 5, "{cmds:#?}");
    assert_eq!(count(&cmds, &format!("STOR {root}/big/")), 2, "{cmds:#?}");
    // The refused copies were never renamed into place.
    assert_eq!(count(&cmds, &format!("RNTO {root}/d0/")), 3, "{cmds:#?}");
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
}

/// Pulls over the pipelined download path (MDTM, EPSV and RETR in one
/// write): a refused RETR (4xx retried, 5xx failing its file alone), a cut
/// transfer, an MDTM refused (the listing's time is used) and an MDTM
/// answered with a passive reply (out of order: caught, retried, and
/// nothing pipelined after it) leave the local tree right and no temporary
/// file behind.
fn pipelined_downloads_survive_faults(f: &Faulty, lists_seconds: bool) {
    use std::time::{SystemTime, UNIX_EPOCH};
    // An hour ago, 7 s past a minute: LIST shows the minute (not the day).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = UNIX_EPOCH + Duration::from_secs((now - 3600) / 60 * 60);
    let t = minute + Duration::from_secs(7);
    for i in 0..9 {
        let rel = format!("d{}/f{i:02}.txt", i % 3);
        write(
            &f.env.remote_disk,
            &rel,
            format!("server file {i}\n").repeat(40),
        );
        fs::File::options()
            .write(true)
            .open(f.env.remote_disk.join(&rel))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let rules = [
        Rule::new("RETR", Action::Reply("450 Busy".into()))
            .arg("/d0/")
            .times(1),
        Rule::new("RETR", Action::Reply("550 Permission denied".into())).arg("d1/f04.txt"),
        Rule::new(
            "RETR",
            Action::CutData {
                after_bytes: 100,
                kill_control: false,
            },
        )
        .arg("/d2/")
        .times(1),
        Rule::new("MDTM", Action::Reply("550 Not now".into()))
            .arg("d2/f08.txt")
            .times(8),
    ];
    for r in rules {
        f.proxy.add_rule(r);
    }
    let job = f.env.job(
        "pull",
        false,
        "concurrency: 2\nretry:\n  max_attempts: 5\n  initial_backoff: 20ms\n  max_backoff: 100ms\n",
    );
    let out = f.env.run(&job, 1);
    let failed = out.failed();
    assert_eq!(
        failed,
        ["FAILED download d1/f04.txt: 550 Permission denied"],
        "{}",
        out.all()
    );
    assert!(!f.env.local.join("d1/f04.txt").exists());
    no_temp_files(&f.env.local);
    let mut expected = snapshot(&f.env.remote_disk);
    expected.remove("d1/f04.txt");
    assert_eq!(snapshot(&f.env.local), expected);
    let cmds = f.proxy.commands();
    let mtime = |rel: &str| {
        fs::metadata(f.env.local.join(rel))
            .unwrap()
            .modified()
            .unwrap()
    };
    if lists_seconds {
        // MLSD gives the seconds: no MDTM at all.
        assert_eq!(count(&cmds, "MDTM "), 0, "{cmds:#?}");
        assert_eq!(mtime("d2/f08.txt"), t);
    } else {
        // LIST shows minutes: MDTM in the same write as EPSV and RETR.
        let piped = f.proxy.pipelined();
        for verb in ["EPSV", "RETR "] {
            assert!(piped.iter().any(|c| c.starts_with(verb)), "{piped:?}");
        }
        // The refused MDTM leaves the listing's minute.
        assert_eq!(mtime("d2/f08.txt"), minute);
    }
    for i in [0, 1, 2, 3, 5, 6, 7] {
        let rel = format!("d{}/f{i:02}.txt", i % 3);
        assert_eq!(mtime(&rel), t, "{rel}");
    }
    // The 450 was retried, the 550 was not.
    let retr = |p: &str| {
        count(
            &cmds,
            &format!("RETR {}/{p}", f.env.remote_root.trim_end_matches('/')),
        )
    };
    assert_eq!(retr("d1/f04.txt"), 1, "{cmds:#?}");
    assert!(retr("d0/") > 3, "{cmds:#?}");
    f.proxy.clear_rules();
    // A passive reply where MDTM's belongs: out of order.
    if !lists_seconds {
        fs::remove_file(f.env.local.join("d0/f00.txt")).unwrap();
        f.proxy.add_rule(
            Rule::new(
                "MDTM",
                Action::Reply("229 Entering Extended Passive Mode (|||1|)".into()),
            )
            .times(1),
        );
        let out = f.env.run(&job, 0);
        assert!(out.stderr.contains("out of order"), "{}", out.all());
        assert_eq!(mtime("d0/f00.txt"), t);
        f.proxy.clear_rules();
    }
    f.env.run(&job, 0);
    assert_eq!(snapshot(&f.env.local), snapshot(&f.env.remote_disk));
    no_temp_files(&f.env.local);
}

/// A server that answers pipelined commands out of order (here: a second
/// 350 where RNTO's reply belongs) is caught; the item is retried and
/// nothing is pipelined from then on.
fn out_of_order_replies_stop_pipelining(f: &Faulty) {
    small_tree(&f.env, 6);
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Reply("350 Ready for RNTO".into())).times(1));
    let job = f.env.job("push", false, "concurrency: 1\n");
    let out = f.env.run(&job, 0);
    assert!(out.stderr.contains("out of order"), "{}", out.all());
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
    let cmds = f.proxy.commands();
    let faked = cmds.iter().position(|c| c.starts_with("RNTO ")).unwrap();
    let at = f.proxy.pipelined_at();
    assert!(
        at.iter().any(|&i| i <= faked),
        "nothing pipelined: {cmds:?}"
    );
    assert!(
        at.iter().all(|&i| i <= faked),
        "pipelined after the fault: {:?}",
        at.iter()
            .filter(|&&i| i > faked)
            .map(|&i| &cmds[i])
            .collect::<Vec<_>>()
    );
}

/// A server (or a router in front of it) that loses the second of two
/// commands sent in one packet never answers the pipelined login's PASS
/// (here: held back past ftpsync's patience, 5 s): ftpsync starts over on a
/// new connection and sends one command at a time.
fn failed_probe_means_one_command_at_a_time(f: &Faulty) {
    small_tree(&f.env, 3);
    f.proxy
        .add_rule(Rule::new("PASS", Action::Delay(Duration::from_secs(6))).times(1));
    let job = f.env.job("push", false, "concurrency: 2\n");
    let out = f.env.ftpsync(&["-v", "run", job.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr.contains("mishandles pipelined commands"),
        "{}",
        out.all()
    );
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    // Only the first login went pipelined (what followed the held PASS
    // never reached the server: ftpsync gave up on that connection).
    assert_eq!(f.proxy.pipelined(), ["PASS ****"]);
    assert_eq!(count(&f.proxy.commands(), "NOOP"), 0);
}

/// The login goes in one write (USER, PASS, TYPE I, FEAT, OPTS UTF8 ON) on
/// servers that answer in order; a wrong password is still reported as such.
fn login_is_one_write(f: &Faulty) {
    small_tree(&f.env, 3);
    let job = f.env.job("push", false, "concurrency: 2\n");
    f.env.run(&job, 0);
    let cmds = f.proxy.commands();
    let users = count(&cmds, "USER ");
    assert!(users >= 1, "{cmds:#?}");
    let piped = f.proxy.pipelined();
    for c in ["PASS ****", "TYPE I", "FEAT", "OPTS UTF8 ON"] {
        assert_eq!(
            piped.iter().filter(|p| *p == c).count(),
            users,
            "{c}: {piped:?}"
        );
    }
    assert_eq!(count(&cmds, "NOOP"), 0, "{cmds:#?}");
    let text = fs::read_to_string(&job).unwrap();
    if text.contains("user: anonymous") {
        return; // any password will do
    }
    let bad = text.replace(
        "password_env: FTPSYNC_TEST_PASSWORD",
        "password: wrong-password",
    );
    fs::write(&job, bad).unwrap();
    let out = f.env.ftpsync(&["run", job.to_str().unwrap()]);
    assert!(out.stderr.contains("530"), "{}", out.all());
    assert!(!out.all().contains("wrong-password"), "{}", out.all());
}

/// How many `verb` commands there are, and how many of them came right
/// after a passive request (`EPSV`/`PASV`) on the wire: the others used a
/// passive port opened ahead of time. With `but_after_listing`, a transfer
/// right after a listing between transfers (a directory re-listed once its
/// uploads ended) is not counted: the listing took the port opened ahead,
/// so the next transfer asks again.
fn after_passive(cmds: &[String], verb: &str, but_after_listing: bool) -> (usize, usize) {
    let listing = |c: &String| c.starts_with("MLSD") || c.starts_with("LIST");
    let mut all = 0;
    let mut fresh = 0;
    for (i, c) in cmds.iter().enumerate() {
        if c.starts_with(verb) {
            all += 1;
            // Only a listing between transfers: the scan's, before the
            // first, must leave a port open for it.
            let after_relisting = but_after_listing && all > 1 && i > 1 && listing(&cmds[i - 2]);
            if i > 0 && (cmds[i - 1] == "EPSV" || cmds[i - 1] == "PASV") && !after_relisting {
                fresh += 1;
            }
        }
    }
    (all, fresh)
}

/// Passive ports opened ahead: on one connection, each transfer after the
/// first uses the port that a passive request behind the previous exchange
/// opened, instead of waiting a round trip for one of its own. Behind a
/// transfer's command only on servers that read nothing during a transfer
/// (vsftpd); elsewhere only behind the checks that follow an upload's 226,
/// never during a transfer.
fn passive_ports_opened_ahead(f: &Faulty, quiet_in_transfer: bool) {
    small_tree(&f.env, 6);
    let push = f
        .env
        .job("push", false, &format!("{BY_FILE}concurrency: 1\n"));
    f.env.run(&push, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    let cmds = f.proxy.commands();
    // The login's last command opens the port of the connection's first
    // listing, which asks for none of its own.
    let login_end = cmds
        .iter()
        .position(|c| c == "OPTS UTF8 ON")
        .expect("login");
    assert_eq!(cmds[login_end + 1], "EPSV", "{cmds:#?}");
    let first_listing = cmds
        .iter()
        .position(|c| c.starts_with("MLSD") || c.starts_with("LIST"))
        .expect("a listing");
    assert!(
        !cmds[login_end + 2..first_listing]
            .iter()
            .any(|c| c == "EPSV" || c == "PASV"),
        "{cmds:#?}"
    );
    let (stors, fresh) = after_passive(&cmds, "STOR ", true);
    assert_eq!(stors, 6, "{cmds:#?}");
    assert!(
        fresh <= 1,
        "{fresh} of {stors} STOR asked for a port: {cmds:#?}"
    );
    // A passive request sent while a transfer runs (pipelined right behind
    // its command): only where the server does not read it until the end.
    let during = |from: usize| {
        let all = f.proxy.commands();
        f.proxy.pipelined_at().into_iter().any(|i| {
            i > from
                && (all[i] == "EPSV" || all[i] == "PASV")
                && ["STOR", "RETR", "LIST", "MLSD"]
                    .iter()
                    .any(|v| all[i - 1].starts_with(v))
        })
    };
    assert_eq!(during(0), quiet_in_transfer, "{cmds:#?}");

    // A pull into an empty directory, with no state: the same for RETR.
    let done = cmds.len();
    pull_afresh(f, 1);
    let cmds = f.proxy.commands()[done..].to_vec();
    let (retrs, fresh) = after_passive(&cmds, "RETR ", false);
    assert_eq!(retrs, 6, "{cmds:#?}");
    if quiet_in_transfer {
        assert!(
            fresh <= 1,
            "{fresh} of {retrs} RETR asked for a port: {cmds:#?}"
        );
    } else {
        assert_eq!(fresh, retrs, "{cmds:#?}");
    }
    assert_eq!(during(done), quiet_in_transfer, "{cmds:#?}");
}

/// Pulls the remote tree into an emptied local directory with no state,
/// with `concurrency` connections, and checks the trees are the same.
fn pull_afresh(f: &Faulty, concurrency: usize) {
    fs::remove_dir_all(&f.env.local).unwrap();
    fs::create_dir_all(&f.env.local).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", f.env.state_path().display()));
    }
    let pull = f
        .env
        .job("pull", false, &format!("concurrency: {concurrency}\n"));
    f.env.run(&pull, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

/// Downloads and listings close their sending half of the data connection
/// as soon as it is open where the server answers the next command only
/// once that close has reached it (vsftpd), and only there: each data
/// connection that brought data to the client saw the client's close
/// before the end of the server's data, or none did.
fn inbound_data_closed_early(f: &Faulty, early: bool) {
    small_tree(&f.env, 6);
    f.proxy.watch_inbound_closes();
    let push = f.env.job("push", false, "concurrency: 2\n");
    f.env.run(&push, 0);
    pull_afresh(f, 2);
    let closes = f.proxy.inbound_closes();
    let listings = count(&f.proxy.commands(), "MLSD") + count(&f.proxy.commands(), "LIST");
    // Every listing (push and pull) and the six downloads.
    assert_eq!(closes.len(), listings + 6, "{closes:?}");
    assert!(closes.iter().all(|c| *c == early), "{closes:?}");
}

/// libunftp (the built-in server) works on several commands at once, so it
/// is not on the list of servers that get pipelined commands: no probe, and
/// every command waits for the previous reply.
#[test]
fn other_servers_get_one_command_at_a_time() {
    let f = faulty();
    small_tree(&f.env, 6);
    let job = f.env.job("push", false, BY_FILE);
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    assert_eq!(f.proxy.pipelined(), Vec::<String>::new());
    assert_eq!(count(&f.proxy.commands(), "NOOP"), 0);
    assert!(count(&f.proxy.commands(), "RNTO ") >= 6);
}

/// A file that changes while it is being uploaded is sent again: the check
/// after the transfer compares its size and time with those it had before.
#[test]
fn a_file_changed_during_upload_is_sent_again() {
    let f = faulty();
    // Over SMALL_FILE: sent with sendfile, its length fixed at the start.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    write(&f.env.local, "big/big.bin", &big);
    // The STOR waits in the proxy while the file grows.
    f.proxy.add_rule(
        Rule::new("STOR", Action::Delay(Duration::from_millis(1500)))
            .arg("/big/")
            .times(1),
    );
    let job = f.env.job("push", false, "");
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_for_command(&f.proxy, "STOR ");
            use std::io::Write;
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(f.env.local.join("big/big.bin"))
                .unwrap();
            file.write_all(b"appended while uploading").unwrap();
        });
        f.env.run(&job, 0);
    });
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    assert!(count(&f.proxy.commands(), "STOR ") >= 2);
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

/// A file that grows on the server between its listing and its download
/// is not placed: a small file comes into memory, and the bytes beyond the
/// listed size end the transfer at once. Nothing is left on disk, the
/// retry fails the same way, and the next run, which lists the new size,
/// gets the file.
#[test]
fn a_file_grown_on_the_server_since_its_listing_is_not_placed() {
    let f = faulty();
    write(&f.env.remote_disk, "d/small.txt", "twenty bytes, listed");
    write(&f.env.remote_disk, "d/other.txt", "not touched\n");
    // The RETR waits in the proxy while the file grows.
    f.proxy.add_rule(
        Rule::new("RETR", Action::Delay(Duration::from_millis(1500)))
            .arg("small.txt")
            .times(1),
    );
    let job = f.env.job(
        "pull",
        false,
        "retry:\n  max_attempts: 2\n  initial_backoff: 20ms\n",
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_for_command(&f.proxy, "RETR ");
            use std::io::Write;
            fs::OpenOptions::new()
                .append(true)
                .open(f.env.remote_disk.join("d/small.txt"))
                .unwrap()
                .write_all(b", and then some")
                .unwrap();
        });
        let out = f.env.run(&job, 1);
        assert_eq!(
            out.failed(),
            ["FAILED download d/small.txt: received more than the 20 bytes the listing said"],
            "{}",
            out.all()
        );
    });
    let retrs = |cmds: Vec<String>| {
        cmds.iter()
            .filter(|c| c.starts_with("RETR ") && c.ends_with("small.txt"))
            .count()
    };
    assert_eq!(retrs(f.proxy.commands()), 2, "the retry fails the same way");
    assert!(!f.env.local.join("d/small.txt").exists());
    assert_eq!(
        fs::read(f.env.local.join("d/other.txt")).unwrap(),
        b"not touched\n"
    );
    no_temp_files(&f.env.local);
    f.env.run(&job, 0);
    assert_same_tree(&f.env.remote_disk, &f.env.local);
}

/// A local directory swapped for a link to elsewhere while a small file is
/// on its way is noticed before the file is written: the links are checked
/// again right before it is created, and nothing lands outside the tree.
#[test]
fn a_directory_swapped_for_a_link_during_a_download_is_not_written_through() {
    let f = faulty();
    write(&f.env.remote_disk, "d/a.txt", "server file\n");
    let outside = f.env.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    // The RETR waits in the proxy while the directory is swapped.
    f.proxy.add_rule(
        Rule::new("RETR", Action::Delay(Duration::from_millis(1500)))
            .arg("a.txt")
            .times(1),
    );
    let job = f.env.job("pull", false, "retry:\n  max_attempts: 1\n");
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_for_command(&f.proxy, "RETR ");
            fs::rename(f.env.local.join("d"), f.env.dir.path().join("d.moved")).unwrap();
            std::os::unix::fs::symlink(&outside, f.env.local.join("d")).unwrap();
        });
        let out = f.env.run(&job, 1);
        let failed = out.failed();
        assert_eq!(failed.len(), 1, "{}", out.all());
        assert!(
            failed[0].starts_with("FAILED download d/a.txt: ")
                && failed[0].ends_with("is a symbolic link; refusing to write through it"),
            "{}",
            out.all()
        );
    });
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the local root"
    );
}

/// A 421 to a command sent on its own (here the MDTM that sets the time
/// when `atomic: false`) ends that connection and is retried, not taken as
/// "the server cannot set times".
fn a_421_to_a_lone_command_is_retried(f: &Faulty) {
    use std::time::{SystemTime, UNIX_EPOCH};
    write(&f.env.local, "old.txt", "old\n");
    let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(f.env.local.join("old.txt"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    f.proxy.add_rule(
        Rule::new("MDTM", Action::Reply("421 Timeout, closing".into()))
            .arg("old.txt")
            .times(1),
    );
    let job = f.env.job("push", false, "atomic: false\n");
    f.env.run(&job, 0);
    let remote: SystemTime = fs::metadata(f.env.remote_disk.join("old.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(remote, t);
    assert_eq!(count(&f.proxy.commands(), "MDTM "), 2);
}

/// Listings over the pipelined path (CWD+EPSV in one write, LIST/MLSD on a
/// data connection of ftpsync's own) that fail, come back empty or are cut
/// never turn into deletions.
fn pipelined_listings_never_delete_wrongly(f: &Faulty) {
    small_tree(&f.env, 6);
    let push = f.env.job("push", false, "");
    f.env.run(&push, 0);
    let state = f.env.dir.path().join("pull.db");
    let pull = f
        .env
        .job("pull", true, &format!("state: {}\n", state.display()));
    f.env.run(&pull, 0);
    let before = snapshot(&f.env.local);
    // Listings that fail every time: exit 1, nothing deleted.
    for verb in ["LIST", "MLSD"] {
        f.proxy.add_rule(Rule::new(
            verb,
            Action::Reply("451 Requested action aborted".into()),
        ));
    }
    let out = f.env.run(&pull, 1);
    assert!(out.stderr.contains("listing failed"), "{}", out.all());
    assert_eq!(snapshot(&f.env.local), before);
    // Every listing empty while the state holds files: refused (exit 4).
    f.proxy.clear_rules();
    f.proxy.add_rule(Rule::new("*", Action::TruncateLines(0)));
    f.env.run(&pull, 4);
    assert_eq!(snapshot(&f.env.local), before);
    // A listing cut once: retried, nothing deleted.
    f.proxy.clear_rules();
    for verb in ["LIST", "MLSD"] {
        f.proxy.add_rule(
            Rule::new(
                verb,
                Action::CutData {
                    after_bytes: 10,
                    kill_control: false,
                },
            )
            .times(1),
        );
    }
    let fired = f.proxy.fired();
    f.env.run(&pull, 0);
    assert_eq!(f.proxy.fired(), fired + 1, "one listing was cut");
    assert_eq!(snapshot(&f.env.local), before);
    let piped = f.proxy.pipelined();
    assert!(
        piped.iter().any(|c| c == "EPSV" || c == "PASV"),
        "the listings were not pipelined: {piped:?}"
    );
}

macro_rules! on_server {
    ($name:ident, $start:path, $scenario:ident $(, $arg:expr)?) => {
        #[test]
        fn $name() {
            let Some(server) = $start() else { return };
            $scenario(&faulty_external(server) $(, $arg)?);
        }
    };
}

on_server!(
    vsftpd_pipelined_exchanges_survive_faults,
    crate::support::servers::start_vsftpd,
    pipelined_exchanges_survive_faults
);
on_server!(
    pyftpdlib_pipelined_exchanges_survive_faults,
    crate::support::servers::start_pyftpdlib,
    pipelined_exchanges_survive_faults
);
on_server!(
    vsftpd_pipelined_downloads_survive_faults,
    crate::support::servers::start_vsftpd,
    pipelined_downloads_survive_faults,
    false
);
on_server!(
    pyftpdlib_pipelined_downloads_survive_faults,
    crate::support::servers::start_pyftpdlib,
    pipelined_downloads_survive_faults,
    true
);
on_server!(
    vsftpd_refused_store_with_its_checks_in_flight,
    crate::support::servers::start_vsftpd,
    refused_store_with_its_checks_in_flight,
    true
);
on_server!(
    pyftpdlib_refused_store_with_its_checks_in_flight,
    crate::support::servers::start_pyftpdlib,
    refused_store_with_its_checks_in_flight,
    false
);
on_server!(
    vsftpd_out_of_order_replies_stop_pipelining,
    crate::support::servers::start_vsftpd,
    out_of_order_replies_stop_pipelining
);
on_server!(
    vsftpd_login_is_one_write,
    crate::support::servers::start_vsftpd,
    login_is_one_write
);
on_server!(
    pyftpdlib_login_is_one_write,
    crate::support::servers::start_pyftpdlib,
    login_is_one_write
);
on_server!(
    vsftpd_failed_probe_means_one_command_at_a_time,
    crate::support::servers::start_vsftpd,
    failed_probe_means_one_command_at_a_time
);
on_server!(
    vsftpd_a_421_to_a_lone_command_is_retried,
    crate::support::servers::start_vsftpd,
    a_421_to_a_lone_command_is_retried
);
on_server!(
    vsftpd_pipelined_listings_never_delete_wrongly,
    crate::support::servers::start_vsftpd,
    pipelined_listings_never_delete_wrongly
);
on_server!(
    pyftpdlib_pipelined_listings_never_delete_wrongly,
    crate::support::servers::start_pyftpdlib,
    pipelined_listings_never_delete_wrongly
);
on_server!(
    vsftpd_passive_ports_opened_ahead,
    crate::support::servers::start_vsftpd,
    passive_ports_opened_ahead,
    true
);
on_server!(
    vsftpd_inbound_data_closed_early,
    crate::support::servers::start_vsftpd,
    inbound_data_closed_early,
    true
);
on_server!(
    pyftpdlib_inbound_data_not_closed_early,
    crate::support::servers::start_pyftpdlib,
    inbound_data_closed_early,
    false
);
on_server!(
    pyftpdlib_passive_ports_opened_ahead,
    crate::support::servers::start_pyftpdlib,
    passive_ports_opened_ahead,
    false
);

/// A directory whose uploads have all ended is re-listed at once, while
/// uploads elsewhere go on: the listing that completes its records does not
/// wait for the run's last transfer, nor does it come before the
/// directory's own last upload.
#[test]
fn a_directory_is_relisted_as_soon_as_its_uploads_end() {
    let f = faulty();
    write(&f.env.local, "a/x.txt", "x\n");
    write(&f.env.local, "b/y.txt", "y\n");
    write(&f.env.local, "c/p.txt", "p\n");
    write(&f.env.local, "c/q.txt", "q\n");
    // b's upload and one of c's two (to temporary names) are held in the
    // proxy for 2 s.
    let hold = Duration::from_millis(2000);
    for dir in ["/b/.ftpsync-", "/c/.ftpsync-"] {
        f.proxy
            .add_rule(Rule::new("STOR", Action::Delay(hold)).arg(dir).times(1));
    }
    let job = f.env.job("push", false, BY_FILE);
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);

    // "#2 +0.153s MLSD" -> (session, seconds, command)
    let log: Vec<(String, f64, String)> = f
        .proxy
        .commands_by_session()
        .iter()
        .map(|l| {
            let (session, rest) = l.split_once(" +").unwrap();
            let (secs, cmd) = rest.split_once("s ").unwrap();
            (session.to_string(), secs.parse().unwrap(), cmd.to_string())
        })
        .collect();
    let last = |pred: &dyn Fn(&str) -> bool| {
        log.iter()
            .filter(|(_, _, c)| pred(c))
            .map(|(_, t, _)| *t)
            .reduce(f64::max)
            .unwrap_or_else(|| panic!("not found in {log:#?}"))
    };
    // When `dir` was listed: the listing that follows a CWD into it on the
    // same connection (the first run lists only the root before uploading).
    // Where in the log (the proxy's order of arrival) `dir` was listed.
    let listing = |dir: &str| {
        let cwd = log
            .iter()
            .position(|(_, _, c)| c.starts_with("CWD ") && c.ends_with(&format!("/{dir}")))
            .unwrap_or_else(|| panic!("{dir} never listed: {log:#?}"));
        cwd + log[cwd..]
            .iter()
            .position(|(s, _, c)| {
                *s == log[cwd].0 && (c.starts_with("MLSD") || c.starts_with("LIST"))
            })
            .unwrap_or_else(|| panic!("no listing after the CWD into {dir}: {log:#?}"))
    };
    let listed = |dir: &str| log[listing(dir)].1;
    let stor_y = last(&|c| c.starts_with("STOR ") && c.contains("/b/.ftpsync-"));
    assert!(
        listed("a") < stor_y + hold.as_secs_f64() - 0.5,
        "a was listed at {:.3}s, b's upload was held from {stor_y:.3}s: {log:#?}",
        listed("a")
    );
    // By order of arrival: the times have a resolution of 1 ms, and the
    // listing may follow the rename within it.
    let renamed_c = log
        .iter()
        .rposition(|(_, _, c)| c.starts_with("RNTO ") && c.contains("/c/"))
        .unwrap_or_else(|| panic!("c's uploads never renamed: {log:#?}"));
    assert!(
        listing("c") > renamed_c,
        "c was listed (command {}) before its last upload was renamed (command {renamed_c}): {log:#?}",
        listing("c")
    );

    // Every record was completed by the listings: the server's times are
    // in the state (the built-in server cannot be told a file's time, so
    // an upload alone records none).
    let db = ftpsync::state::StateDb::open(&f.env.state_path(), false)
        .unwrap()
        .unwrap();
    let state = db.load().unwrap();
    for p in ["a/x.txt", "b/y.txt", "c/p.txt", "c/q.txt"] {
        let remote = state[p].remote.as_ref().unwrap();
        assert_ne!(remote.mtime(), ftpsync::model::RemoteTime::Unknown, "{p}");
    }
}

/// A run with no state yet logs its other connections in as soon as the
/// first login succeeds, beside the state's creation rather than after it:
/// here the state cannot be created (another program holds SQLite's lock
/// on the empty file) until every connection of the pool has logged in.
#[test]
fn a_first_run_logs_in_while_its_state_is_created() {
    let f = faulty();
    write(&f.env.local, "a.txt", "a\n");
    let job = f.env.job("push", false, "concurrency: 4\n");
    let state = f.env.state_path();
    std::fs::write(&state, b"").unwrap();
    let holder = rusqlite::Connection::open(&state).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let child = crate::stop::spawn(&f.env, &["run", job.to_str().unwrap()]);
    let logins = || {
        f.proxy
            .commands_by_session()
            .iter()
            .filter(|l| l.contains("s PASS "))
            .count()
    };
    let start = std::time::Instant::now();
    while logins() < 4 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_unlock = f.proxy.commands_by_session();
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    let (code, out, _) = crate::stop::finish(child, Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert_same_tree(&f.env.local, &f.env.remote_disk);

    let logged_in: std::collections::BTreeSet<&str> = before_unlock
        .iter()
        .filter(|l| l.contains("s PASS "))
        .map(|l| l.split_once(' ').unwrap().0)
        .collect();
    assert_eq!(logged_in.len(), 4, "{before_unlock:#?}");
    assert!(
        !before_unlock.iter().any(|l| l.contains("s STOR ")),
        "{before_unlock:#?}"
    );
}

/// After a push into existing directories, each directory is listed again
/// to record the server's own view of what was placed, until enough
/// uploads (16) have listed exactly as predicted from the size sent and the
/// time set; the rest of the run records the prediction instead of
/// listing. Where a listing is not as predicted (`odd`: the first listing
/// after the uploads shows another time), or nothing can be predicted (a
/// server that cannot set times), every directory is listed again. Either
/// way the records are as precise as a listing's: a same-size change made
/// on the server afterwards, in another minute of the same day, is seen in
/// every directory.
fn relistings_stop_once_uploads_list_as_predicted(f: &Faulty, listed: Listed) {
    let odd = matches!(listed, Listed::Odd | Listed::LateOdd);
    // Enough directories that some still finish after the 16th agreeing
    // listing, even when the uploads run well ahead of the listings.
    const DIRS: usize = 60;
    for i in 0..DIRS {
        write(&f.env.local, &format!("d{i:02}/f.txt"), "first\n");
    }
    let job = f.env.job("push", false, "concurrency: 2\n");
    f.env.run(&job, 0);
    // New content of a new size in every directory, an hour ago (a
    // second apart: files of one second do not earn an MLSD server trust).
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let time_of = |i: usize| hour_ago + Duration::from_secs(i as u64);
    for i in 0..DIRS {
        let rel = format!("d{i:02}/f.txt");
        write(&f.env.local, &rel, format!("second {i}\n"));
        fs::File::options()
            .write(true)
            .open(f.env.local.join(&rel))
            .unwrap()
            .set_modified(time_of(i))
            .unwrap();
    }
    if odd {
        // After the scan's listings, the first one shows f.txt written in
        // 2001. Held 1.5 s (`LateOdd`), it comes once the other listings
        // have made the prediction trusted and directories were recorded
        // by it.
        if listed == Listed::LateOdd {
            f.proxy.add_rule(
                Rule::new("MLSD", Action::Delay(Duration::from_millis(1500)))
                    .skip(DIRS + 1)
                    .times(1),
            );
        }
        f.proxy.add_rule(
            Rule::new(
                "MLSD",
                Action::ReplaceData(b"type=file;size=9;modify=20010101000000; f.txt\r\n".to_vec()),
            )
            .skip(DIRS + 1)
            .times(1),
        );
    }
    let before = f.proxy.commands().len();
    let out = f.env.run(&job, 0);
    assert!(
        out.stdout.contains(&format!("{DIRS} uploaded")),
        "{}",
        out.all()
    );
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    let cmds = f.proxy.commands()[before..].to_vec();
    // The scan (the root and the directories, with MLSD, or on vsftpd with
    // STAT and once LIST to compare) ends before the first upload; what
    // follows are the listings after the uploads: at least 16, and not all
    // where the server lists as predicted; all where it does not.
    let first_store = cmds.iter().position(|c| c.starts_with("STOR")).unwrap();
    let relisted = cmds[first_store..]
        .iter()
        .filter(|c| c.starts_with("MLSD") || c.starts_with("LIST") || c.starts_with("STAT"))
        .count();
    if listed == Listed::AsPredicted {
        assert!(
            (16..DIRS).contains(&relisted),
            "{relisted} directories listed again: {cmds:#?}"
        );
    } else {
        assert_eq!(relisted, DIRS, "{cmds:#?}");
    }
    // The odd listing's record is not the server's: that file is drifted.
    let drifted = usize::from(odd);
    assert_eq!(
        f.env.plan_ops(&job).len(),
        drifted,
        "{:#?}",
        f.env.plan_json(&job)
    );

    // Changed on the server, same size, two minutes later the same day.
    for i in 0..DIRS {
        let p = f.env.remote_disk.join(format!("d{i:02}/f.txt"));
        let len = fs::metadata(&p).unwrap().len() as usize;
        fs::write(&p, "x".repeat(len)).unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(time_of(i) + Duration::from_secs(120))
            .unwrap();
    }
    let plan = f.env.plan_json(&job);
    let drifted = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["op"] == "upload" && i["reason"] == "target_changed")
        .count();
    assert_eq!(drifted, DIRS, "{plan:#}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    AsPredicted,
    /// The first listing after the uploads shows another time.
    Odd,
    /// The same listing, held until the prediction is trusted: the
    /// directories recorded as predicted by then are listed after all.
    LateOdd,
    /// The server cannot set times.
    NoTimeSet,
}

// MLSD, to the second.
on_server!(
    pyftpdlib_relistings_stop_once_uploads_list_as_predicted,
    crate::support::servers::start_pyftpdlib,
    relistings_stop_once_uploads_list_as_predicted,
    Listed::AsPredicted
);
// LIST in UTC, to the minute.
on_server!(
    vsftpd_relistings_stop_once_uploads_list_as_predicted,
    crate::support::servers::start_vsftpd,
    relistings_stop_once_uploads_list_as_predicted,
    Listed::AsPredicted
);
// One listing not as predicted.
on_server!(
    pyftpdlib_relists_every_directory_after_an_odd_listing,
    crate::support::servers::start_pyftpdlib,
    relistings_stop_once_uploads_list_as_predicted,
    Listed::Odd
);
on_server!(
    pyftpdlib_relists_predicted_directories_after_a_late_odd_listing,
    crate::support::servers::start_pyftpdlib,
    relistings_stop_once_uploads_list_as_predicted,
    Listed::LateOdd
);

/// The built-in server has no MFMT: no time is set, nothing is predicted.
#[test]
fn builtin_server_without_mfmt_is_relisted_after_every_upload() {
    relistings_stop_once_uploads_list_as_predicted(&faulty(), Listed::NoTimeSet);
}

/// On vsftpd (LIST only), a re-run's scan lists the directories the state
/// knows as small over the control connection (`STAT .`), once one
/// directory has listed the same both ways; the first run, which knows
/// nothing of the tree, lists with `LIST`. A delete that rests on a STAT
/// listing waits for a `LIST` of the directory to agree: a STAT reply that
/// leaves a name out (as one cut short by a name holding a line break
/// would) deletes nothing, while a file really gone from the server is
/// deleted.
#[test]
fn vsftpd_lists_known_directories_over_the_control_connection() {
    let Some(server) = crate::support::servers::start_vsftpd() else {
        return;
    };
    let f = faulty_external(server);
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_712_232_000); // 2024-04-04
    fs::remove_dir_all(&f.env.remote_disk).unwrap();
    fs::create_dir_all(&f.env.remote_disk).unwrap();
    for i in 0..9 {
        let rel = format!("d{}/f{i}.txt", i % 3);
        write(&f.env.remote_disk, &rel, format!("file {i}\n"));
        fs::File::options()
            .write(true)
            .open(f.env.remote_disk.join(&rel))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    fs::remove_dir_all(&f.env.local).unwrap();
    // One connection: the comparison is made on the first directory listed.
    let job = f.env.job("pull", true, "concurrency: 1\n");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.remote_disk, &f.env.local);
    let first = f.proxy.commands();
    assert!(!first.iter().any(|c| c.starts_with("STAT")), "{first:#?}");

    let listings = |from: usize| {
        let cmds = f.proxy.commands()[from..].to_vec();
        let stat = cmds.iter().filter(|c| *c == "STAT .").count();
        let list = cmds.iter().filter(|c| c.starts_with("LIST")).count();
        (stat, list, cmds)
    };
    let before = f.proxy.commands().len();
    let out = f.env.run(&job, 0);
    assert!(out.stdout.contains("0 downloaded"), "{}", out.all());
    let (stat, list, cmds) = listings(before);
    assert_eq!((stat, list), (4, 1), "{cmds:#?}");

    // d1/f4.txt is gone from the server; d2's STAT leaves out f5.txt.
    fs::remove_file(f.env.remote_disk.join("d1/f4.txt")).unwrap();
    let line =
        |name: &str| format!("-rw-r--r--    1 0        0               7 Apr 04  2024 {name}");
    let short = format!(
        "213-Status follows:\ndrwxr-xr-x    2 0        0              80 Apr 04  2024 .\ndrwxr-xr-x    5 0        0             100 Apr 04  2024 ..\n{}\n{}\n213 End of status",
        line("f2.txt"),
        line("f8.txt")
    );
    let d2 = format!("{}/d2", f.env.remote_root.trim_end_matches('/'));
    f.proxy
        .add_rule(Rule::new("STAT", Action::ReplaceFinal(short)).in_dir(d2.as_str()));
    let before = f.proxy.commands().len();
    let out = f.env.run(&job, 1);
    assert!(out.stdout.contains("1 deleted"), "{}", out.all());
    assert!(
        out.stderr
            .contains("came over the control connection (STAT) and a second listing (LIST"),
        "{}",
        out.all()
    );
    assert!(!f.env.local.join("d1/f4.txt").exists());
    assert_eq!(
        fs::read(f.env.local.join("d2/f5.txt")).unwrap(),
        b"file 5\n"
    );
    // d1 and d2 were each listed again with LIST to confirm their deletes.
    let (_, list, cmds) = listings(before);
    assert_eq!(list, 3, "{cmds:#?}");

    // d0's STAT reply is ended early by a line that looks like its end (as
    // a name holding a line break and a reply code would end it): the
    // NOOP behind it gets the rest of the listing for its reply, so the
    // connection is given up and d0 is listed with LIST. Nothing is lost.
    f.proxy.clear_rules();
    let cut = format!(
        "213-Status follows:\ndrwxr-xr-x    2 0        0              80 Apr 04  2024 .\n{}\n213 End\n{}\n{}\n213 End of status",
        line("f0.txt"),
        line("f3.txt"),
        line("f6.txt")
    );
    let d0 = format!("{}/d0", f.env.remote_root.trim_end_matches('/'));
    f.proxy
        .add_rule(Rule::new("STAT", Action::ReplaceFinal(cut)).in_dir(d0.as_str()));
    let before = f.proxy.commands().len();
    let out = f.env.run(&job, 0);
    assert!(
        out.stdout.contains("0 downloaded, 0 deleted"),
        "{}",
        out.all()
    );
    assert_same_tree(&f.env.remote_disk, &f.env.local);
    let cmds = f.proxy.commands()[before..].to_vec();
    let stat_at = cmds.iter().position(|c| c == "STAT .").unwrap();
    assert!(
        cmds[stat_at..].iter().any(|c| c.starts_with("LIST")),
        "{cmds:#?}"
    );
    assert_eq!(f.env.plan_ops(&job), vec![]);
}
