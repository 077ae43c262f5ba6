//! Stopping a run: signals to `ftpsync run`, a server that goes away, and
//! the pool's connection cap.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::faults::{BY_FILE, faulty, no_temp_files, small_tree};
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::{Env, PASSWORD, assert_same_tree, snapshot};

/// Starts `ftpsync ARGS` in the background, output captured.
pub(crate) fn spawn(env: &Env, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(args)
        .env("FTPSYNC_TEST_PASSWORD", env.password())
        .env("HOME", env.dir.path())
        .env_remove("FTPSYNC_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Waits for the child, at most `limit`; returns (exit code, stdout+stderr, time taken).
pub(crate) fn finish(child: Child, limit: Duration) -> (i32, String, Duration) {
    let start = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if start.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("ftpsync did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = waiter.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASSWORD), "password leaked:\n{text}");
    (out.status.code().unwrap_or(-1), text, start.elapsed())
}

/// Waits until at least `n` files (temporary ones excluded) are on the server.
fn wait_for_files(root: &std::path::Path, n: usize, limit: Duration) {
    let start = Instant::now();
    while snapshot(root)
        .iter()
        .filter(|(k, v)| v.is_some() && !k.contains(".ftpsync-"))
        .count()
        < n
    {
        assert!(start.elapsed() < limit, "fewer than {n} files arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until an upload's temporary file is on the server.
fn wait_for_temps(root: &std::path::Path) {
    let start = Instant::now();
    while !snapshot(root).keys().any(|k| k.contains(".ftpsync-")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no upload started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn integrity_ok(env: &Env) {
    let db = rusqlite::Connection::open(env.state_path()).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn sigint_stops_gracefully_with_exit_130() {
    let f = faulty();
    small_tree(&f.env, 40);
    // Every rename waits: each upload sits on the server under its
    // temporary name for a while, so the signal finds some in flight.
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_millis(150))));
    let job = f
        .env
        .job("push", true, &format!("{BY_FILE}concurrency: 2\n"));
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    wait_for_files(&f.env.remote_disk, 4, Duration::from_secs(20));
    signal(&child, "INT");
    let (code, out, _) = finish(child, Duration::from_secs(20));
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("SIGINT: stopping"), "{out}");
    assert!(out.contains("STOPPED: stop requested"), "{out}");
    // The summary is printed, and the in-flight uploads finished within
    // the grace period: nothing was abandoned and no temporary file is left.
    assert!(out.contains("0 abandoned in flight"), "{out}");
    assert!(out.contains("test: "), "{out}");
    no_temp_files(&f.env.remote_disk);
    let done = snapshot(&f.env.remote_disk)
        .values()
        .filter(|v| v.is_some())
        .count();
    assert!(done < 40, "the run was not stopped early ({done} files)");
    integrity_ok(&f.env);
    // What finished is recorded: the next run uploads only the rest.
    f.proxy.clear_rules();
    let out = f.env.run(&job, 0);
    assert!(
        out.stdout.contains(&format!("{} uploaded", 40 - done)),
        "{}",
        out.all()
    );
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

#[test]
fn sigterm_with_no_grace_abandons_and_removes_temporaries() {
    let f = faulty();
    small_tree(&f.env, 30);
    // Renames hang: every upload in flight has its temporary file on the server.
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_secs(8))));
    let job = f
        .env
        .job("push", true, &format!("{BY_FILE}concurrency: 3\n"));
    let child = spawn(&f.env, &["run", "--grace", "0s", job.to_str().unwrap()]);
    wait_for_temps(&f.env.remote_disk);
    signal(&child, "TERM");
    let (code, out, took) = finish(child, Duration::from_secs(20));
    assert_eq!(code, 143, "{out}");
    assert!(took < Duration::from_secs(6), "took {took:?}:\n{out}");
    assert!(out.contains("STOPPED: stop requested"), "{out}");
    assert!(!out.contains(" 0 abandoned in flight"), "{out}");
    assert!(out.contains("leftover temporary files removed"), "{out}");
    no_temp_files(&f.env.remote_disk);
    integrity_ok(&f.env);
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

#[test]
fn second_signal_aborts_at_once() {
    let f = faulty();
    small_tree(&f.env, 12);
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_secs(8))));
    let job = f
        .env
        .job("push", false, &format!("{BY_FILE}concurrency: 2\n"));
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    wait_for_temps(&f.env.remote_disk);
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "INT");
    let (code, out, took) = finish(child, Duration::from_secs(20));
    assert_eq!(code, 130, "{out}");
    // The default grace (30 s) was cut short by the second signal.
    assert!(took < Duration::from_secs(6), "took {took:?}:\n{out}");
    assert!(out.contains("again: abandoning"), "{out}");
    integrity_ok(&f.env);
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
}

#[test]
fn deadline_stops_the_run_and_the_next_one_continues() {
    let f = faulty();
    small_tree(&f.env, 20);
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_millis(300))));
    let job = f.env.job(
        "push",
        false,
        &format!("{BY_FILE}concurrency: 2\ndeadline: 1500ms\n"),
    );
    let start = Instant::now();
    let out = f.env.run(&job, 1);
    assert!(start.elapsed() < Duration::from_secs(6), "{}", out.all());
    assert!(
        out.stderr.contains("deadline of 1.5s was reached"),
        "{}",
        out.all()
    );
    no_temp_files(&f.env.remote_disk);
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

#[test]
fn pool_shrink_caps_connections_even_when_all_are_checked_out() {
    use ftpsync::ftp::pool::Pool;
    let env = Env::builtin();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = env.connect_options();
        let pool = Pool::new(opts, 3);
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let c = pool.get().await.unwrap();
        // Every connection is checked out when the server says "too many".
        assert_eq!(pool.shrink(), 2);
        assert_eq!(pool.shrink(), 1);
        a.release();
        b.release();
        c.release();
        assert_eq!(
            pool.idle_count(),
            1,
            "connections beyond the new size stay open"
        );
        let one = pool.get().await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(300), pool.get()).await;
        assert!(
            second.is_err(),
            "a second connection was allowed after shrinking to 1"
        );
        one.release();
        assert!(pool.get().await.is_ok());
    });
}

#[test]
fn server_connection_limit_shrinks_the_pool() {
    let f = faulty();
    small_tree(&f.env, 60);
    f.proxy.set_max_sessions(2);
    let job = f.env.job("push", false, "concurrency: 8\n");
    let out = f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    assert!(f.proxy.peak_sessions() <= 2);
    // The first wave of connections is turned away once each; after that
    // the pool stays within the server's limit.
    assert!(
        f.proxy.rejected_sessions() <= 8,
        "{} sessions rejected:\n{}",
        f.proxy.rejected_sessions(),
        out.all()
    );
}

#[test]
fn unreachable_server_ends_the_run_with_exit_3() {
    let mut f = faulty();
    small_tree(&f.env, 300);
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_millis(20))));
    let extra = format!(
        "{BY_FILE}concurrency: 4\nretry:\n  max_attempts: 50\n  initial_backoff: 100ms\n  max_backoff: 1s\n  give_up_after: 2s\n"
    );
    let job = f.env.job("push", false, &extra);
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    wait_for_files(&f.env.remote_disk, 5, Duration::from_secs(20));
    // The server goes away: connections are cut and new ones refused (the
    // run's job file names the old proxy's port).
    f.new_proxy();
    let (code, out, took) = finish(child, Duration::from_secs(30));
    assert_eq!(code, 3, "{out}");
    // Without the bound, 50 attempts per item would keep it going for many minutes.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(out.contains("server was unreachable"), "{out}");
    integrity_ok(&f.env);
    // The server is back (a new proxy in front of it): the next run converges.
    let job = f.env.job("push", false, "concurrency: 4\n");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
}

/// A stop while the directories that received uploads are re-listed ends
/// the run at once: those listings are dropped (the next run completes the
/// records they were for), not awaited.
#[test]
fn a_stop_during_the_relisting_does_not_wait_for_it() {
    let f = faulty();
    crate::support::harness::write(&f.env.local, "a/x.txt", "x\n");
    // The listing of a, once its upload is done, waits 30 s in the proxy.
    f.proxy
        .add_rule(Rule::new("MLSD", Action::Delay(Duration::from_secs(30))).in_dir("/www/a"));
    let job = f.env.job("push", true, BY_FILE);
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    let start = Instant::now();
    while !f.proxy.commands().iter().any(|c| c == "CWD /www/a") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a was never listed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "TERM");
    let (code, out, took) = finish(child, Duration::from_secs(25));
    assert!(took < Duration::from_secs(10), "took {took:?}: {out}");
    // Every item was done before the stop: only the listing was dropped.
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SIGTERM: stopping"), "{out}");
    assert!(out.contains("1 uploaded"), "{out}");
    integrity_ok(&f.env);
    // The next run has nothing to transfer.
    f.proxy.clear_rules();
    let out = f.env.run(&job, 0);
    assert!(out.stdout.contains("0 uploaded"), "{}", out.all());
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}
