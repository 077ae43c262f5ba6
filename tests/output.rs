//! What `ftpsync run` prints: the `--json` lines and the `--report` file
//! (parsed, exact), the summary's list of what needs a person, each item
//! printed once with `-v`, `-q`, and progress bars on a terminal (under a
//! pseudo-terminal made by util-linux `script`) but not on a pipe.

use std::fs;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::faults::faulty;
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::{Env, Output, PASSWORD, write};

/// The `--json` stdout as objects, one per line (every line must parse).
fn json_lines(o: &Output) -> Vec<Value> {
    o.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect()
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == t).collect()
}

fn paths(lines: &[&Value]) -> Vec<String> {
    let mut p: Vec<String> = lines
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect();
    p.sort();
    p
}

#[test]
fn json_lines_and_report_say_exactly_what_happened() {
    let f = faulty();
    write(&f.env.local, "a.txt", "aaaa");
    write(&f.env.local, "d/b.txt", "bb");
    write(&f.env.local, "bad.txt", "refused");
    write(&f.env.remote_disk, "stray.txt", "not ours");
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Reply("553 Not allowed".into())).arg("bad.txt"));
    let job = f.env.job("push", true, "safety:\n  max_delete: 100%\n");
    let report = f.env.dir.path().join("report.json");
    let o = f.env.ftpsync(&[
        "run",
        "--json",
        "--report",
        report.to_str().unwrap(),
        job.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 1, "{}", o.all());
    let lines = json_lines(&o);
    let start = &lines[0];
    assert_eq!(start["type"], "start");
    assert_eq!(start["schema"], 1);
    assert_eq!(start["job"], "test");
    assert_eq!(start["direction"], "push");
    assert_eq!(start["remote"]["user"], "tester");
    assert_eq!(start["remote"]["root"], "/www");
    let scanned: Vec<(String, u64)> = of_type(&lines, "scanned")
        .iter()
        .map(|v| {
            (
                v["side"].as_str().unwrap().to_owned(),
                v["entries"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(scanned, [("remote".into(), 1), ("local".into(), 4)]);
    let planned = of_type(&lines, "planned");
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0]["upload"], 3);
    assert_eq!(planned[0]["mkdir"], 1);
    assert_eq!(planned[0]["delete"], 1);
    assert_eq!(planned[0]["bytes"], 4 + 2 + 7);
    assert_eq!(
        paths(&of_type(&lines, "item_started")),
        ["a.txt", "bad.txt", "d", "d/b.txt"]
    );
    assert_eq!(
        paths(&of_type(&lines, "item_finished")),
        ["a.txt", "d", "d/b.txt"]
    );
    let failed = of_type(&lines, "item_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["path"], "bad.txt");
    assert_eq!(failed[0]["op"], "upload");
    assert_eq!(failed[0]["code"], 553);
    assert_eq!(failed[0]["error"], "553 Not allowed");
    assert_eq!(failed[0]["size"], 7);
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["schema"], 1);
    assert_eq!(summary["outcome"], "partial");
    assert_eq!(summary["exit_code"], 1);
    assert_eq!(summary["uploaded"], 2);
    assert_eq!(summary["mkdirs"], 1);
    assert_eq!(summary["deleted"], 0);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["bytes"], 6);
    assert_eq!(summary["error"], Value::Null);
    assert_eq!(summary["stopped"], Value::Null);
    let attention: Vec<String> = summary["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {}",
                a["concern"].as_str().unwrap(),
                a["op"].as_str().unwrap(),
                a["path"].as_str().unwrap(),
                a["code"]
            )
        })
        .collect();
    assert_eq!(
        attention,
        ["failed upload bad.txt 553", "refused delete stray.txt null"]
    );
    // The report file is the summary line.
    let written: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(&written, summary);
    // Nothing on stdout is not JSON, and no password anywhere.
    assert!(!fs::read_to_string(&report).unwrap().contains(PASSWORD));
}

#[test]
fn report_is_written_when_the_run_fails_before_executing() {
    let mut env = Env::builtin();
    write(&env.local, "a.txt", "a");
    let report = env.dir.path().join("out/report.json");
    fs::create_dir_all(report.parent().unwrap()).unwrap();
    let r = report.to_str().unwrap();

    // A job file that does not load.
    let bad = env.dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "direction: push\nlocal:\n  path: x\nremote:\n  hots: h\n",
    )
    .unwrap();
    let o = env.ftpsync(&["run", "--json", "--report", r, bad.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{}", o.all());
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "{}", o.stdout);
    let v: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v, lines[0]);
    assert_eq!(v["job"], Value::Null);
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["exit_code"], 2);
    let err = v["error"].as_str().unwrap();
    assert!(err.contains(&format!("{}:5:3", bad.display())), "{err}");

    // A server that cannot be reached.
    env.stop_server();
    let job = env.job("push", false, "retry:\n  max_attempts: 1\n");
    let o = env.ftpsync(&["run", "--report", r, job.to_str().unwrap()]);
    assert_eq!(o.code, 3, "{}", o.all());
    let v: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["job"], "test");
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["exit_code"], 3);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect to 127.0.0.1:"),
        "{v}"
    );
    assert_eq!(v["uploaded"], 0);
}

#[test]
fn a_stopped_run_reports_why_and_what_was_left() {
    let f = faulty();
    for i in 0..6 {
        write(&f.env.local, &format!("f{i}.txt"), "x");
    }
    // Every upload takes a while: the deadline stops the run in the middle.
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Delay(Duration::from_millis(400))));
    let job = f.env.job("push", false, "concurrency: 1\ndeadline: 1s\n");
    let report = f.env.dir.path().join("report.json");
    let o = f.env.ftpsync(&[
        "run",
        "--json",
        "--report",
        report.to_str().unwrap(),
        job.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 1, "{}", o.all());
    let v: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["outcome"], "stopped");
    assert_eq!(v["stopped"]["reason"], "deadline");
    let done = v["uploaded"].as_u64().unwrap();
    let left = v["stopped"]["not_started"].as_u64().unwrap()
        + v["stopped"]["abandoned"].as_array().unwrap().len() as u64;
    assert!(done < 6, "{v}");
    assert_eq!(done + left, 6, "{v}");
    assert_eq!(json_lines(&o).last().unwrap(), &v);
}

#[test]
fn the_summary_lists_conflicts_drift_and_refusals_without_v() {
    // Push: the server's copy changed behind our back and is overwritten.
    let env = Env::builtin();
    write(&env.local, "page.html", "mine");
    let job = env.job("push", false, "");
    env.run(&job, 0);
    write(&env.remote_disk, "page.html", "edited on the server");
    let o = env.run(&job, 0);
    let want =
        "drift     page.html — changed on the server since the last sync (drift): overwritten";
    assert_eq!(
        o.stdout.lines().filter(|l| *l == want).count(),
        1,
        "{}",
        o.all()
    );

    // Pull: a local edit is kept, and said so.
    let env = Env::builtin();
    write(&env.remote_disk, "notes.txt", "server");
    let job = env.job("pull", false, "");
    env.run(&job, 0);
    write(&env.local, "notes.txt", "edited locally");
    let o = env.run(&job, 0);
    assert!(
        o.stdout
            .lines()
            .any(|l| l
                == "conflict  notes.txt — changed locally since the last sync: kept (conflict)"),
        "{}",
        o.all()
    );
}

#[test]
fn verbose_prints_each_item_once() {
    let f = faulty();
    write(&f.env.local, "alpha.txt", "1");
    write(&f.env.local, "beta-dir/gamma.txt", "22");
    write(&f.env.local, "omega.txt", "333");
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Reply("550 No".into())).arg("omega.txt"));
    let job = f.env.job("push", false, "");
    let o = f.env.ftpsync(&["-v", "run", job.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.all());
    let all = o.all();
    for p in ["alpha.txt", "beta-dir/gamma.txt", "omega.txt"] {
        assert_eq!(all.matches(p).count(), 1, "{p}:\n{all}");
    }
    // The directory: once as itself (its file's line names it too).
    assert_eq!(all.matches("beta-dir/ ").count(), 1, "{all}");
    // Items on stdout, the failure in the summary on stdout too.
    assert!(
        o.stdout
            .contains("  upload   alpha.txt (1 B)  — new locally"),
        "{all}"
    );
    assert!(
        o.stdout.contains("FAILED upload omega.txt: 550 No"),
        "{all}"
    );
}

#[test]
fn quiet_prints_only_errors() {
    let f = faulty();
    write(&f.env.local, "a.txt", "a");
    write(&f.env.local, "sub/c.txt", "c");
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    // Nothing to do: nothing printed at all.
    let o = f.env.ftpsync(&["-q", "run", job.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(o.stdout, "");
    assert_eq!(o.stderr, "");
    // A failure: its line on stderr, nothing else.
    write(&f.env.local, "b.txt", "b");
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Reply("550 No".into())).arg("b.txt"));
    let o = f.env.ftpsync(&["-q", "run", job.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert_eq!(o.stdout, "");
    assert_eq!(o.stderr, "FAILED upload b.txt: 550 No\n");
    // A directory that cannot be listed (every MLSD after the root's): the
    // reason for the exit code, nothing else.
    fs::remove_file(f.env.local.join("b.txt")).unwrap();
    f.proxy.clear_rules();
    f.proxy
        .add_rule(Rule::new("MLSD", Action::Reply("451 Aborted".into())).in_dir("/www/sub"));
    let o = f.env.ftpsync(&["-q", "run", job.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert_eq!(o.stdout, "");
    assert_eq!(
        o.stderr,
        "refused   sub/ — its listing failed; nothing below it was changed\n"
    );
}

/// A tree whose upload takes a few seconds through a proxy that slows each
/// rename: long enough for bars to draw and for progress lines.
fn slow_push() -> (crate::faults::Faulty, std::path::PathBuf) {
    let f = faulty();
    for i in 0..8 {
        write(&f.env.local, &format!("file{i}.bin"), vec![b'x'; 100_000]);
    }
    f.proxy
        .add_rule(Rule::new("RNTO", Action::Delay(Duration::from_millis(400))));
    let job = f.env.job("push", false, "concurrency: 2\n");
    (f, job)
}

#[test]
fn bars_on_a_terminal_plain_lines_on_a_pipe() {
    let (f, job) = slow_push();
    // util-linux `script` runs the real binary on a pseudo-terminal.
    let cmd = format!(
        "{} run {}",
        env!("CARGO_BIN_EXE_ftpsync"),
        job.to_str().unwrap()
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("FTPSYNC_TEST_PASSWORD", f.env.password())
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .env_remove("FTPSYNC_LOG")
        .output()
        .expect("util-linux script");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{tty}");
    assert!(tty.contains("test: 8 uploaded"), "{tty}");
    // The transfer bar: bytes of the total, files of the total, drawn with
    // cursor movements.
    assert!(tty.contains("/781.25 KiB"), "{tty}");
    assert!(tty.contains("/8 files"), "{tty}");
    assert!(tty.contains('\x1b'), "{tty}");
    if std::env::var_os("FTPSYNC_SHOW_TTY").is_some() {
        eprintln!("{tty:?}");
    }
    assert!(!tty.contains(PASSWORD));

    // The same run on pipes: no bars, no escape codes, a line now and then.
    let (f, job) = slow_push();
    let out = Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(["run", job.to_str().unwrap()])
        .env("FTPSYNC_TEST_PASSWORD", f.env.password())
        .env("FTPSYNC_PROGRESS_INTERVAL", "300ms")
        .env("TERM", "xterm")
        .env_remove("FTPSYNC_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "{stderr}"
    );
    assert!(
        !stderr.contains("/781.25 KiB") && !stdout.contains("/781.25 KiB"),
        "{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no progress line:\n{stderr}");
    for l in &lines {
        assert!(l.starts_with("progress: "), "{stderr}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" files, ") && l.contains(" of 781.2 KiB (")),
        "{stderr}"
    );
}

#[test]
fn json_progress_counts_the_bytes_of_a_transfer_in_flight() {
    let f = faulty();
    // Big enough to go through the streaming upload (not the one-read path
    // of small files); the rename waits, so the bytes are sent but the file
    // is not done yet.
    write(&f.env.local, "big.bin", vec![b'z'; 3 << 20]);
    f.proxy.add_rule(Rule::new(
        "RNTO",
        Action::Delay(Duration::from_millis(1500)),
    ));
    let job = f.env.job("push", false, "");
    let out = Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(["run", "--json", job.to_str().unwrap()])
        .env("FTPSYNC_TEST_PASSWORD", f.env.password())
        .env("FTPSYNC_PROGRESS_INTERVAL", "200ms")
        .env_remove("FTPSYNC_LOG")
        .output()
        .unwrap();
    let o = Output::from(out);
    assert_eq!(o.code, 0, "{}", o.all());
    let lines = json_lines(&o);
    let progress = of_type(&lines, "progress");
    let in_flight: Vec<&&Value> = progress
        .iter()
        .filter(|p| p["phase"] == "transfer" && p["files_done"] == 0)
        .collect();
    assert!(!in_flight.is_empty(), "{}", o.stdout);
    let last = in_flight.last().unwrap();
    assert_eq!(last["bytes_done"], 3 << 20, "{}", o.stdout);
    assert_eq!(last["bytes_total"], 3 << 20);
    assert_eq!(last["files_total"], 1);
    assert_eq!(last["current"][0], "big.bin");
    // Every progress line comes before the summary, which is last.
    assert_eq!(lines.last().unwrap()["type"], "summary");
}
