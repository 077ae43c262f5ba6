//! `ftpsync daemon`, `schedule` and `history`, as real processes against
//! real servers: schedules, overlap, signals, reload, catch-up, metrics,
//! hooks, JSON logs and systemd notification.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::faults::faulty;
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::{Env, PASSWORD, assert_same_tree, snapshot, snapshot_live, write};

/// Writes a job file for `env` named `name` into `dir`.
fn job_file(env: &Env, dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = fs::read_to_string(env.job("push", true, extra)).unwrap();
    let text = text.replacen("name: test\n", &format!("name: {name}\n"), 1);
    let text = text.replace(
        &format!("state: {}", env.state_path().display()),
        &format!(
            "state: {}",
            env.dir.path().join(format!("{name}.db")).display()
        ),
    );
    let path = dir.join(format!("{name}.yaml"));
    fs::write(&path, text).unwrap();
    path
}

/// A running daemon with its stderr in a file.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(env: &Env, args: &[&str], extra_env: &[(&str, &str)]) -> Daemon {
        let log = env.dir.path().join(format!("daemon-{}.log", rand_suffix()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsync"));
        cmd.arg("daemon")
            .args(args)
            .env("FTPSYNC_TEST_PASSWORD", env.password())
            .env("HOME", env.dir.path())
            .env_remove("FTPSYNC_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Daemon {
            child: Some(cmd.spawn().unwrap()),
            log,
        }
    }

    fn log(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!text.contains(PASSWORD), "password leaked:\n{text}");
        text
    }

    /// Waits until `cond` holds, at most `limit`.
    fn wait(&self, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of /metrics, read from the log.
    fn http_addr(&self) -> String {
        let mut addr = String::new();
        self.wait(Duration::from_secs(10), "the HTTP listener", || {
            let log = self.log();
            match log.split("on http://").nth(1) {
                Some(rest) => {
                    addr = rest.split('/').next().unwrap().to_owned();
                    true
                }
                None => false,
            }
        });
        addr
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{sig}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the daemon to exit; returns its exit code and how long it took.
    fn exit(&mut self, limit: Duration) -> (i32, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status.code().unwrap_or(-1), start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("daemon did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_suffix() -> u32 {
    rand::random()
}

/// GET over HTTP/1.1: (status, headers, body).
fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The value of one series in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

/// The job's history as JSON, through `ftpsync history --json`.
fn history(env: &Env, job: &Path) -> Vec<serde_json::Value> {
    let out = env.ftpsync(&["history", "--json", "-n", "1000", job.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", out.stdout))
        .as_array()
        .unwrap()
        .clone()
}

fn same_tree(a: &Path, b: &Path) -> bool {
    if !b.is_dir() {
        return false;
    }
    let strip = |m: std::collections::BTreeMap<String, Option<Vec<u8>>>| {
        m.into_iter()
            .filter(|(k, _)| !k.starts_with(".ftpsync"))
            .collect::<Vec<_>>()
    };
    // The daemon may be writing either tree while it is read.
    strip(snapshot_live(a)) == strip(snapshot_live(b))
}

fn integrity_ok(db: &Path) {
    let db = rusqlite::Connection::open(db).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn two_jobs_on_schedule_metrics_hooks_and_history() {
    let a = Env::builtin();
    let b = Env::builtin();
    for i in 0..3 {
        write(&a.local, &format!("a{i}.txt"), format!("a {i}\n"));
        write(&b.local, &format!("sub/b{i}.txt"), format!("b {i}\n"));
    }
    let jobs = a.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    let hook_out = a.dir.path().join("hook.env");
    let hook = format!(
        "schedule: \"* * * * * *\"\non_success: [\"sh\", \"-c\", \"env > {}\"]\n",
        hook_out.display()
    );
    let job_a = job_file(&a, &jobs, "alpha", &hook);
    // The second job's server, and a job without a schedule (ignored).
    let job_b = job_file(
        &b,
        &jobs,
        "beta",
        "schedule: \"*/2 * * * * *\"\ntimezone: Europe/Berlin\n",
    );
    job_file(&b, &jobs, "manual", "");
    // systemd's notification socket.
    let sock_path = a.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut d = Daemon::start(
        &a,
        &[jobs.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut said = Vec::new();
    while !said.iter().any(|m: &String| m.contains("READY=1")) {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("no READY=1 from the daemon");
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // The watchdog is pinged from the scheduler loop (every 200 ms here).
    while !said.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("no WATCHDOG=1 from the daemon");
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    d.wait(Duration::from_secs(15), "both jobs to converge", || {
        same_tree(&a.local, &a.remote_disk) && same_tree(&b.local, &b.remote_disk)
    });
    assert!(
        d.log().contains("job manual has no schedule: ignored"),
        "{}",
        d.log()
    );
    // A change is pushed within the next tick.
    write(&a.local, "a1.txt", "changed\n");
    let changed = Instant::now();
    d.wait(Duration::from_secs(5), "the change to be pushed", || {
        fs::read(a.remote_disk.join("a1.txt")).unwrap() == b"changed\n"
    });
    assert!(changed.elapsed() < Duration::from_secs(3));
    // The hook saw the outcome.
    d.wait(Duration::from_secs(5), "the hook", || hook_out.exists());
    let env_text = fs::read_to_string(&hook_out).unwrap();
    assert!(env_text.contains("FTPSYNC_JOB=alpha"), "{env_text}");
    assert!(env_text.contains("FTPSYNC_OUTCOME=success"), "{env_text}");
    assert!(env_text.contains("FTPSYNC_EXIT_CODE=0"), "{env_text}");
    let report = env_text
        .lines()
        .find_map(|l| l.strip_prefix("FTPSYNC_REPORT="))
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(report[0]["outcome"], "success");
    assert!(!env_text.contains(PASSWORD));

    // /healthz and /metrics.
    let addr = d.http_addr();
    let (status, _, body) = http_get(&addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // The run that pushed the change may still be finishing.
    d.wait(
        Duration::from_secs(5),
        "the metrics of the last run",
        || {
            let (_, _, text) = http_get(&addr, "/metrics");
            metric(&text, "ftpsync_files_transferred_total{job=\"alpha\"}") == Some(4.0)
        },
    );
    let (status, head, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert_eq!(metric(&text, "ftpsync_jobs"), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, "ftpsync_files_transferred_total{job=\"alpha\"}"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ftpsync_files_transferred_total{job=\"beta\"}"),
        Some(3.0),
        "{text}"
    );
    let ok_runs = metric(
        &text,
        "ftpsync_runs_total{job=\"alpha\",outcome=\"success\"}",
    )
    .unwrap();
    assert!(ok_runs >= 2.0, "{text}");
    assert!(metric(&text, "ftpsync_next_run_timestamp_seconds{job=\"beta\"}").is_some());
    assert_eq!(
        metric(
            &text,
            "ftpsync_runs_total{job=\"manual\",outcome=\"success\"}"
        ),
        None
    );

    d.signal("TERM");
    let (code, took) = d.exit(Duration::from_secs(20));
    assert_eq!(code, 0, "{}", d.log());
    assert!(took < Duration::from_secs(5));
    assert!(d.log().contains("daemon stopped"));

    // Every run is in the history, with what it did.
    let runs = history(&a, &job_a);
    assert!(runs.len() as f64 >= ok_runs, "{runs:?}");
    let uploaded: u64 = runs.iter().map(|r| r["uploaded"].as_u64().unwrap()).sum();
    assert_eq!(uploaded, 4, "{runs:?}");
    for r in &runs {
        assert_eq!(r["trigger"], "schedule");
        assert!(r["started_at"].as_str().unwrap().ends_with('Z'));
        assert!(r["finished_at"].as_str().unwrap() >= r["started_at"].as_str().unwrap());
    }
    let runs_b = history(&b, &job_b);
    assert!(!runs_b.is_empty());
    assert_eq!(runs_b.last().unwrap()["uploaded"], 3);
}

#[test]
fn a_slow_job_never_overlaps_and_logs_skips_once_per_run() {
    let f = faulty();
    for i in 0..3 {
        write(&f.env.local, &format!("f{i}.txt"), format!("{i}\n"));
    }
    // Each rename waits 800 ms: a run takes about 2.5 s, the schedule ticks every second.
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_millis(800))));
    let jobs = f.env.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    let job = job_file(
        &f.env,
        &jobs,
        "slow",
        "schedule: \"* * * * * *\"\nconcurrency: 1\n",
    );
    let mut d = Daemon::start(
        &f.env,
        &["--log-format", "json", jobs.to_str().unwrap()],
        &[],
    );
    d.wait(Duration::from_secs(20), "the first run", || {
        same_tree(&f.env.local, &f.env.remote_disk)
    });
    std::thread::sleep(Duration::from_secs(3));
    d.signal("INT");
    let (code, _) = d.exit(Duration::from_secs(20));
    assert_eq!(code, 0, "{}", d.log());
    let log = d.log();
    // Every line is a JSON object; every line about the job names it.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finished: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("run finished")
        })
        .collect();
    assert!(!finished.is_empty(), "{log}");
    // Overlapping runs would have hit the job's lock.
    assert!(!lines.iter().any(|l| l["level"] == "ERROR"), "{log}");
    for l in &finished {
        assert_eq!(l["span"]["job"], "slow", "{l}");
    }
    let skips = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("tick skipped")
        })
        .count();
    let runs = history(&f.env, &job);
    assert!(runs.len() >= 2, "{runs:?}");
    // Skips are logged once per run that had them, never once per tick.
    assert!(
        skips >= 1 && skips <= runs.len(),
        "{skips} skip lines for {} runs:\n{log}",
        runs.len()
    );
    // Runs never overlap (history is newest first).
    for pair in runs.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert!(
            newer["started_at"].as_str().unwrap() >= older["finished_at"].as_str().unwrap(),
            "overlapping runs: {older} and {newer}"
        );
    }
}

#[test]
fn sigterm_during_a_transfer_stops_within_the_grace_period() {
    let f = faulty();
    write(&f.env.local, "big.bin", vec![7u8; 4 << 20]);
    for i in 0..6 {
        write(&f.env.local, &format!("s{i}.txt"), format!("{i}\n"));
    }
    // The transfers are done but their renames hang longer than the grace period.
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_secs(20))));
    let jobs = f.env.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    let job = job_file(&f.env, &jobs, "big", "schedule: \"* * * * * *\"\n");
    let mut d = Daemon::start(&f.env, &["--grace", "1s", jobs.to_str().unwrap()], &[]);
    d.wait(Duration::from_secs(20), "uploads in flight", || {
        snapshot_live(&f.env.remote_disk)
            .keys()
            .any(|k| k.contains(".ftpsync-"))
    });
    std::thread::sleep(Duration::from_millis(500));
    d.signal("TERM");
    let (code, took) = d.exit(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", d.log());
    assert!(took < Duration::from_secs(8), "took {took:?}:\n{}", d.log());
    // No partial content under a final name, no temporary left, a sound state.
    for (k, v) in snapshot(&f.env.remote_disk) {
        assert!(!k.contains(".ftpsync-"), "temporary file left: {k}");
        if let Some(content) = v {
            assert_eq!(fs::read(f.env.local.join(&k)).unwrap(), content, "{k}");
        }
    }
    let db = f.env.dir.path().join("big.db");
    integrity_ok(&db);
    let runs = history(&f.env, &job);
    assert_eq!(runs[0]["outcome"], "stopped", "{runs:?}");
    assert_eq!(runs[0]["exit_code"], 143);
    // The next run converges.
    f.proxy.clear_rules();
    let out = f.env.ftpsync(&["run", job.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

#[test]
fn sighup_reloads_new_changed_and_broken_job_files() {
    let a = Env::builtin();
    let b = Env::builtin();
    write(&a.local, "a.txt", "a\n");
    write(&b.local, "b.txt", "b\n");
    let jobs = a.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    let job_a = job_file(&a, &jobs, "alpha", "schedule: \"* * * * * *\"\n");
    let d = Daemon::start(&a, &[jobs.to_str().unwrap()], &[]);
    d.wait(Duration::from_secs(15), "alpha to converge", || {
        same_tree(&a.local, &a.remote_disk)
    });
    // Break alpha's file: an unknown key on line 3.
    let good = fs::read_to_string(&job_a).unwrap();
    fs::write(
        &job_a,
        good.replacen("direction: push\n", "direction: push\nbogus_key: 1\n", 1),
    )
    .unwrap();
    d.signal("HUP");
    d.wait(Duration::from_secs(10), "the reload error", || {
        d.log().contains("its previous version keeps running")
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("its previous version keeps running"))
        .unwrap();
    assert!(line.contains(&format!("{}:3:", job_a.display())), "{line}");
    assert!(line.contains("bogus_key"), "{line}");
    // The old version keeps running: a change is still pushed.
    write(&a.local, "a2.txt", "more\n");
    d.wait(Duration::from_secs(10), "alpha to keep running", || {
        same_tree(&a.local, &a.remote_disk)
    });
    // A new job file: it starts after the next SIGHUP.
    job_file(&b, &jobs, "beta", "schedule: \"* * * * * *\"\n");
    d.signal("HUP");
    d.wait(Duration::from_secs(15), "beta to start", || {
        same_tree(&b.local, &b.remote_disk)
    });
    assert!(d.log().contains("new job beta"), "{}", d.log());
}

#[test]
fn one_catch_up_run_after_downtime_and_none_with_catch_up_none() {
    let env = Env::builtin();
    write(&env.local, "x.txt", "x\n");
    let jobs = env.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    // Once a year: no regular tick during the test.
    let job = job_file(&env, &jobs, "yearly", "schedule: \"@yearly\"\n");
    let out = env.ftpsync(&["run", job.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    // The last run was two years ago: the daemon was down over a tick.
    let db = rusqlite::Connection::open(env.dir.path().join("yearly.db")).unwrap();
    db.execute(
        "UPDATE runs SET started_at = '2024-06-01T00:00:00.000Z', finished_at = '2024-06-01T00:00:01.000Z'",
        [],
    )
    .unwrap();
    drop(db);
    let mut d = Daemon::start(&env, &[jobs.to_str().unwrap()], &[]);
    d.wait(Duration::from_secs(10), "the catch-up run", || {
        history(&env, &job).len() == 2
    });
    std::thread::sleep(Duration::from_secs(3));
    let runs = history(&env, &job);
    assert_eq!(runs.len(), 2, "a burst of catch-up runs: {runs:?}");
    assert_eq!(runs[0]["trigger"], "catch_up");
    assert_eq!(runs[1]["trigger"], "manual");
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(10)).0, 0);

    // With catch_up: none, the missed run is not made up.
    let job = job_file(
        &env,
        &jobs,
        "yearly",
        "schedule: \"@yearly\"\ncatch_up: none\n",
    );
    let db = rusqlite::Connection::open(env.dir.path().join("yearly.db")).unwrap();
    db.execute(
        "UPDATE runs SET started_at = '2024-06-01T00:00:00.000Z', finished_at = '2024-06-01T00:00:01.000Z'",
        [],
    )
    .unwrap();
    drop(db);
    let mut d = Daemon::start(&env, &[jobs.to_str().unwrap()], &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(history(&env, &job).len(), 2);
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(10)).0, 0);
}

#[test]
fn schedule_prints_next_runs_in_zone_and_utc() {
    let env = Env::builtin();
    let jobs = env.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    let job = job_file(
        &env,
        &jobs,
        "nightly",
        "schedule: \"30 2 * * *\"\ntimezone: America/New_York\n",
    );
    let out = env.ftpsync(&["schedule", job.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("nightly"), "{}", out.stdout);
    assert!(out.stdout.contains("America/New_York"), "{}", out.stdout);
    let times: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.trim_end().ends_with('Z'))
        .collect();
    assert_eq!(times.len(), 5, "{}", out.stdout);
    for l in times {
        // 02:30 New York time is 06:30 or 07:30 UTC.
        assert!(l.contains("T02:30:00-0"), "{l}");
        assert!(l.contains("T06:30:00Z") || l.contains("T07:30:00Z"), "{l}");
    }
    // A job without a schedule is an error for `schedule`, naming the file.
    let plain = job_file(&env, &jobs, "plain", "");
    let out = env.ftpsync(&["schedule", plain.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("has no schedule"), "{}", out.all());
}

#[test]
fn jobs_on_one_server_share_its_connection_limit() {
    let f = faulty();
    for i in 0..40 {
        write(
            &f.env.local,
            &format!("d{}/f{i:02}.txt", i % 4),
            format!("{i}\n"),
        );
    }
    // Slow renames keep every connection busy for a while.
    f.proxy
        .add_rule(Rule::new("RNFR", Action::Delay(Duration::from_millis(30))));
    let jobs = f.env.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    // Two jobs, each asking for 4 connections, on a server limited to 2 in all.
    let extra = "schedule: \"* * * * * *\"\nconcurrency: 4\n";
    job_file(&f.env, &jobs, "one", extra);
    let two = job_file(&f.env, &jobs, "two", extra);
    let text = fs::read_to_string(&two).unwrap();
    let text = text.replace(
        &format!("  root: {}\n", f.env.remote_root),
        &format!("  root: {}/two\n  max_connections: 2\n", f.env.remote_root),
    );
    fs::write(&two, text).unwrap();
    let one = jobs.join("one.yaml");
    let text = fs::read_to_string(&one).unwrap();
    let text = text.replace(
        &format!("  root: {}\n", f.env.remote_root),
        &format!("  root: {}/one\n  max_connections: 2\n", f.env.remote_root),
    );
    fs::write(&one, text).unwrap();
    let mut d = Daemon::start(&f.env, &[jobs.to_str().unwrap()], &[]);
    d.wait(Duration::from_secs(30), "both jobs to converge", || {
        same_tree(&f.env.local, &f.env.remote_disk.join("one"))
            && same_tree(&f.env.local, &f.env.remote_disk.join("two"))
    });
    d.signal("TERM");
    assert_eq!(d.exit(Duration::from_secs(20)).0, 0, "{}", d.log());
    assert!(
        f.proxy.peak_sessions() <= 2,
        "{} connections at once",
        f.proxy.peak_sessions()
    );
    assert!(f.proxy.connections() >= 2);
}
