//! The command line: validation errors, exit codes and the JSON plan.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::harness::{Env, Output, PASSWORD, assert_same_tree, sample_tree, write};

#[test]
fn validate_reports_file_line_and_key() {
    let env = Env::builtin();
    let path = env.dir.path().join("bad.yaml");
    fs::write(
        &path,
        "direction: push\nlocal:\n  path: x\nremote:\n  host: h\n  prot: 21\n",
    )
    .unwrap();
    let o = env.ftpsync(&["validate", path.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{}", o.all());
    let want = format!("{}:6:3: remote: unknown field `prot`", path.display());
    assert!(o.stderr.contains(&want), "{}", o.stderr);
    fs::write(
        &path,
        "direction: sideways\nlocal:\n  path: x\nremote:\n  host: h\n",
    )
    .unwrap();
    let o = env.ftpsync(&["validate", path.to_str().unwrap()]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains(&format!(
            "{}:1:12: direction: unknown variant `sideways`",
            path.display()
        )),
        "{}",
        o.stderr
    );
    let o = env.ftpsync(&["validate", "/nonexistent/job.yaml"]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("/nonexistent/job.yaml: cannot read"),
        "{}",
        o.stderr
    );
    let job = env.job("push", false, "");
    let o = env.ftpsync(&["validate", job.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::builtin();
    let o = env.ftpsync(&["frobnicate"]);
    assert_eq!(o.code, 2);
}

#[test]
fn wrong_password_exits_3() {
    let env = Env::builtin();
    let job = env.job("push", false, "");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(["run", job.to_str().unwrap()])
        .env("FTPSYNC_TEST_PASSWORD", "wrong-password")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("login to 127.0.0.1"), "{err}");
    assert!(err.contains("530"), "{err}");
    assert!(!err.contains("wrong-password"), "{err}");
}

#[test]
fn unreachable_server_exits_3() {
    let mut env = Env::builtin();
    env.stop_server();
    let job = env.job("push", false, "");
    let o = env.ftpsync(&["run", job.to_str().unwrap()]);
    assert_eq!(o.code, 3, "{}", o.all());
    assert!(o.stderr.contains("cannot connect"), "{}", o.stderr);
}

#[test]
fn plan_changes_nothing_and_json_is_stable() {
    let env = Env::builtin();
    write(&env.local, "a.txt", "hello");
    write(&env.local, "d/b.txt", "");
    let job = env.job("push", false, "");
    let v = env.plan_json(&job);
    // plan neither transfers nor creates the state database.
    assert!(!env.remote_disk.join("a.txt").exists());
    assert!(!env.state_path().exists());
    assert_eq!(v["version"], 1);
    assert_eq!(v["job"], "test");
    assert_eq!(v["direction"], "push");
    assert_eq!(v["remote_root"], "/www");
    let items: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} {} {} {} {}",
                i["op"], i["side"], i["path"], i["kind"], i["reason"]
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            r#""mkdir" "remote" "d" "dir" "new""#,
            r#""upload" "remote" "a.txt" "file" "new""#,
            r#""upload" "remote" "d/b.txt" "file" "new""#,
        ]
    );
    assert_eq!(v["items"][1]["size"], 5);
    assert_eq!(v["items"][1]["description"], "new locally");
    assert_eq!(v["summary"]["upload"], 2);
    assert_eq!(v["summary"]["mkdir"], 1);
    assert_eq!(v["summary"]["bytes"], 5);
}

#[test]
fn demo_runs_a_real_mirror() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .arg("demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("nothing to do: the two sides are in sync"),
        "{out}"
    );
    assert!(
        out.contains("server copy is byte-identical to the local tree"),
        "{out}"
    );
    // Without -v nothing but warnings is logged (the suppaftp cap once let
    // its debug lines through).
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("DEBUG") && !err.contains("INFO"),
        "log lines at the default level:\n{err}"
    );
}

#[test]
fn trace_logging_never_shows_the_password() {
    let env = Env::builtin();
    write(&env.local, "a.txt", "a");
    let job = env.job("push", false, "");
    for level in ["trace", "suppaftp=trace"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ftpsync"))
            .args(["-vv", "run", job.to_str().unwrap()])
            .env("FTPSYNC_TEST_PASSWORD", env.password())
            .env("FTPSYNC_LOG", level)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("USER tester") || err.contains("DEBUG"),
            "{level}: no log output"
        );
        assert!(
            !err.contains(&env.password()),
            "{level}: password in the log"
        );
    }
}

/// Runs the binary with `envs` (no FTPSYNC_LOG), in `dir`, with stdin empty;
/// asserts that the test server's password never shows.
fn ftpsync_with(env: &Env, dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsync"));
    cmd.args(args)
        .current_dir(dir)
        .env("HOME", env.dir.path())
        .env_remove("FTPSYNC_LOG")
        .env_remove("FTPSYNC_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let o = Output::from(out);
    assert!(!o.all().contains(PASSWORD), "password leaked:\n{}", o.all());
    o
}

#[test]
fn plan_detailed_exitcode_says_whether_there_is_anything_to_do() {
    let mut env = Env::builtin();
    write(&env.local, "a.txt", "hello");
    let job = env.job("push", false, "");
    let job = job.to_str().unwrap();
    let detailed = |env: &Env| env.ftpsync(&["plan", "--detailed-exitcode", job]);
    let o = detailed(&env);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stdout.contains("upload"), "{}", o.stdout);
    // Without the flag, a plan with changes is a success.
    assert_eq!(env.ftpsync(&["plan", job]).code, 0);
    env.run(Path::new(job), 0);
    assert_eq!(detailed(&env).code, 0);
    // Adopted or kept items are no changes; an edit is.
    write(&env.local, "a.txt", "hello again");
    assert_eq!(detailed(&env).code, 2);
    // Errors are 1, usage errors included (clap's own exit 2 would say "changes").
    let o = env.ftpsync(&["plan", "--detailed-exitcode", "--no-such-flag", job]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("--no-such-flag"), "{}", o.stderr);
    assert_eq!(
        env.ftpsync(&["plan", "--detailed-exitcode", "/nonexistent.yaml"])
            .code,
        1
    );
    assert_eq!(env.ftpsync(&["plan", "--detailed-exitcode"]).code, 1);
    // Without the flag, usage errors stay 2.
    assert_eq!(env.ftpsync(&["plan", "--no-such-flag", job]).code, 2);
    env.stop_server();
    let o = detailed(&env);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("cannot connect"), "{}", o.stderr);
}

#[test]
fn quiet_prints_only_errors() {
    let env = Env::builtin();
    write(&env.local, "a.txt", "a");
    let job = env.job("push", false, "");
    let job = job.to_str().unwrap();
    for args in [
        &["-q", "validate", job][..],
        &["-q", "plan", job],
        &["-q", "plan", "--detailed-exitcode", job],
    ] {
        let o = env.ftpsync(args);
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("", ""), "{args:?}");
        assert_eq!(o.code, if args.len() == 4 { 2 } else { 0 }, "{args:?}");
    }
    // A run that transfers prints its summary without -q; a no-op run under
    // -q prints nothing at all.
    let o = env.run(Path::new(job), 0);
    assert!(o.stdout.contains("1 uploaded"), "{}", o.stdout);
    let o = env.ftpsync(&["-q", "run", job]);
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (0, "", ""));
    let o = env.ftpsync(&["run", job]);
    assert!(!o.stdout.is_empty());
    // Warnings are not errors; errors still show.
    let inline = env.dir.path().join("inline.yaml");
    fs::write(
        &inline,
        "direction: push\nlocal:\n  path: x\nremote:\n  host: h\n  password: not-the-real-one\n",
    )
    .unwrap();
    let o = env.ftpsync(&["validate", inline.to_str().unwrap()]);
    assert!(o.stderr.contains("warning:"), "{}", o.stderr);
    let o = env.ftpsync(&["-q", "validate", inline.to_str().unwrap()]);
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (0, "", ""));
    let o = env.ftpsync(&["-q", "validate", "/nonexistent.yaml"]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("/nonexistent.yaml: cannot read"),
        "{}",
        o.stderr
    );
}

#[test]
fn closed_stdout_ends_quietly() {
    let env = Env::builtin();
    sample_tree(&env.local);
    let job = env.job("push", false, "schedule: \"@daily\"\n");
    let job = job.to_str().unwrap();
    for args in [
        &["plan", job][..],
        &["plan", "--json", job],
        &["validate", job],
        &["schedule", job],
        &["history", job],
        &["schema"],
        &["man"],
        &["completions", "bash"],
        &["--help"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ftpsync"))
            .args(args)
            .env("FTPSYNC_TEST_PASSWORD", env.password())
            .env("HOME", env.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Like `| head -0`: the reader goes away before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn validate_prints_the_job_in_its_own_vocabulary() {
    let env = Env::builtin();
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/site.yaml");
    let o = env.ftpsync(&["validate", site.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], format!("# {}: ok", site.display()));
    // Paths as the loader resolves them: absolute, relative to the job file.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/../examples/site");
    for want in [
        "name: site",
        "direction: push",
        "delete: true",
        &format!("  path: {}", examples.display()),
        "  host: ftp.example.com",
        "  port: 21",
        "  user: deploy",
        "  password_env: FTP_PASSWORD",
        "  root: /www",
        "  tls: none",
        "  max_connections: 4",
        "  include: []",
        r#"  exclude: [".git/**", "**/*.tmp"]"#,
        "compare: auto",
        "verify: auto",
        "  initial_backoff: 1s",
        "timeout: 1m",
        "  max_delete: 50%",
        r#"schedule: "*/15 * * * *""#,
        "timezone: Europe/Berlin",
        "overlap: skip",
        "catch_up: one",
        "jitter: 30s",
        r#"on_failure: [curl, "-fsS", "-m", "10", "--retry", "3", "https://hc-ping.com/your-uuid/fail"]"#,
    ] {
        assert!(lines.contains(&want), "no line {want:?} in\n{}", o.stdout);
    }
    assert!(!o.stdout.contains("Push") && !o.stdout.contains("Explicit"));
    // The output is itself a job file that resolves to the same job.
    let again = env.dir.path().join("again.yaml");
    fs::write(&again, &o.stdout).unwrap();
    let o2 = env.ftpsync(&["validate", again.to_str().unwrap()]);
    assert_eq!(o2.code, 0, "{}", o2.all());
    assert_eq!(
        o2.stdout.lines().skip(1).collect::<Vec<_>>(),
        lines[1..].to_vec()
    );
    // An inline password is never printed; `$` survives the round trip.
    let inline = env.dir.path().join("inline.yaml");
    fs::write(
        &inline,
        "direction: pull\nlocal:\n  path: \"d$$x\"\nremote:\n  host: h\n  tls: explicit\n  password: hunter2-inline\n",
    )
    .unwrap();
    let o = env.ftpsync(&["validate", inline.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(!o.all().contains("hunter2"), "{}", o.all());
    assert!(
        o.stdout
            .contains("\n  # password: set in the job file (not shown)\n")
    );
    assert!(o.stdout.contains("\n  tls: explicit\n"), "{}", o.stdout);
    assert!(o.stdout.contains("/d$$x\n"), "{}", o.stdout);
}

#[test]
fn completions_and_man_page() {
    let env = Env::builtin();
    for (shell, marker) in [
        ("bash", "_ftpsync()"),
        ("zsh", "#compdef ftpsync"),
        ("fish", "complete -c ftpsync"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let o = env.ftpsync(&["completions", shell]);
        assert_eq!(o.code, 0, "{}", o.all());
        assert!(o.stdout.contains(marker), "{shell}: {}", o.stdout);
        assert!(o.stdout.contains("detailed-exitcode"), "{shell}");
    }
    let o = env.ftpsync(&["man"]);
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.starts_with(".ie \\n(.g .ds Aq \\(aq"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains(".TH ftpsync 1"), "{}", o.stdout);
    assert!(o.stdout.contains("ftpsync\\-init"), "{}", o.stdout);
}

/// The YAML job files shipped in `dir` (recursively).
fn shipped_jobs(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        // CI pipeline files in examples/ci are not job files.
        .filter(|p| {
            !p.components().any(|c| c.as_os_str() == "workflows") && !p.ends_with("gitlab-ci.yml")
        })
        .collect()
}

#[test]
fn schema_accepts_what_the_loader_accepts_and_rejects_the_same_keys() {
    let env = Env::builtin();
    let o = env.ftpsync(&["schema"]);
    assert_eq!(o.code, 0);
    let schema: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    // What the schema says is wrong: the JSON pointers of the failing values.
    let schema_errors = |text: &str| -> Vec<String> {
        let doc: serde_json::Value = serde_yaml::from_str(text).unwrap();
        validator
            .iter_errors(&doc)
            .map(|e| e.instance_path().as_str().to_owned())
            .collect()
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped: Vec<PathBuf> = [root.join("jobs"), root.join("examples")]
        .iter()
        .flat_map(|d| shipped_jobs(d))
        .collect();
    assert!(shipped.len() >= 2, "{shipped:?}");
    for file in shipped {
        let text = fs::read_to_string(&file).unwrap();
        ftpsync::job::Job::from_str(&text, &file).unwrap();
        assert_eq!(
            schema_errors(&text),
            Vec::<String>::new(),
            "{}",
            file.display()
        );
    }
    let minimal = "direction: push\nlocal:\n  path: x\nremote:\n  host: h\n";
    // Accepted by both (the schema must not be stricter than the loader).
    for extra in [
        "timeout: 30\n",
        "timeout: 1.5\nretry: {initial_backoff: 500ms, max_backoff: \" 5 m \"}\n",
        "safety:\n  max_delete: 10\n",
        "safety:\n  max_delete: 12.5%\n",
        "deadline: ~\ncompare: hash\n",
        "  port: 65535\n  tls: explicit\n  max_connections: 1\n",
    ] {
        let text = format!("{minimal}{extra}");
        let loaded = ftpsync::job::Job::from_str(&text, Path::new("/j/x.yaml"));
        assert!(loaded.is_ok(), "{extra:?}: {:?}", loaded.err());
        assert_eq!(schema_errors(&text), Vec::<String>::new(), "{extra:?}");
    }
    // Refused by both, at the same key.
    for (extra, key) in [
        ("  prot: 21\n", "remote"),
        ("direction: sideways\n", "direction"),
        ("  port: 0\n", "remote.port"),
        ("  port: 70000\n", "remote.port"),
        ("concurrency: 0\n", "concurrency"),
        ("concurrency: 65\n", "concurrency"),
        ("timeout: soon\n", "timeout"),
        ("retry: {max_attempts: 0}\n", "retry.max_attempts"),
        ("retry: {max_backoff: 1d}\n", "retry.max_backoff"),
        ("delete: maybe\n", "delete"),
        ("safety:\n  max_delete: 101%\n", "safety.max_delete"),
        ("safety:\n  max_delete: -1\n", "safety.max_delete"),
        ("catch_up: all\n", "catch_up"),
        ("  max_connections: 0\n", "remote.max_connections"),
    ] {
        let text = if extra.starts_with("direction") {
            minimal.replace("direction: push\n", extra)
        } else {
            format!("{minimal}{extra}")
        };
        let err = ftpsync::job::Job::from_str(&text, Path::new("/j/x.yaml"))
            .unwrap_err()
            .to_string();
        let message = err.splitn(4, ':').nth(3).unwrap_or("").trim_start();
        assert!(
            message.starts_with(&format!("{key}: ")),
            "{extra:?}: loader said {err}"
        );
        let pointer = format!("/{}", key.replace('.', "/"));
        assert_eq!(schema_errors(&text), [pointer], "{extra:?}");
    }
    // A missing required key: the loader's "missing field", the schema's `required` at the top.
    let text = "direction: push\nlocal:\n  path: x\n";
    let err = ftpsync::job::Job::from_str(text, Path::new("/j/x.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("missing field `remote`"), "{err}");
    assert_eq!(schema_errors(text), [""]);
}

#[test]
fn init_writes_a_job_that_validates_and_runs() {
    let env = Env::builtin();
    sample_tree(&env.local);
    let url = format!("ftp://tester@127.0.0.1:{}/www", env.port);
    let args = [
        "init",
        "--push",
        "local",
        &url,
        "jobs/site.yaml",
        "--delete",
        "--password-env",
        "FTPSYNC_TEST_PASSWORD",
    ];
    let o = ftpsync_with(&env, env.dir.path(), &args, &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    let file = env.dir.path().join("jobs/site.yaml");
    let text = fs::read_to_string(&file).unwrap();
    for want in [
        "direction: push ",
        "delete: true ",
        "  path: ../local ",
        "  host: 127.0.0.1\n",
        &format!("  port: {}\n", env.port),
        "  user: tester\n",
        "  password_env: FTPSYNC_TEST_PASSWORD ",
        "  root: /www ",
        "  tls: none ",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // It refuses to overwrite.
    fs::write(&file, format!("{text}# edited\n")).unwrap();
    let o = ftpsync_with(&env, env.dir.path(), &args, &[]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.stderr.contains("already exists; not overwritten"),
        "{}",
        o.stderr
    );
    assert!(fs::read_to_string(&file).unwrap().ends_with("# edited\n"));
    // It validates, against the loader and the schema, and runs.
    let f = file.to_str().unwrap();
    let o = env.ftpsync(&["validate", f]);
    assert_eq!(o.code, 0, "{}", o.all());
    let schema = serde_json::from_str(&env.ftpsync(&["schema"]).stdout).unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert!(jsonschema::validator_for(&schema).unwrap().is_valid(&doc));
    env.run(&file, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    // --push or --pull is required.
    let o = ftpsync_with(&env, env.dir.path(), &["init", "other.yaml"], &[]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(!env.dir.path().join("other.yaml").exists());
}

#[test]
fn one_off_url_runs_without_a_job_file() {
    let env = Env::builtin();
    sample_tree(&env.local);
    let url = format!("ftp://tester@127.0.0.1:{}/www", env.port);
    let local = env.local.to_str().unwrap();
    let pw = [("FTPSYNC_PASSWORD", PASSWORD)];
    let dir = env.dir.path();
    let o = ftpsync_with(
        &env,
        dir,
        &["plan", "--detailed-exitcode", "--push", local, &url],
        &pw,
    );
    assert_eq!(o.code, 2, "{}", o.all());
    let o = ftpsync_with(&env, dir, &["run", "--push", local, &url], &pw);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_same_tree(&env.local, &env.remote_disk);
    // The state is kept as for a job: the same command line has nothing to do.
    let states: Vec<_> = fs::read_dir(dir.join(".local/state/ftpsync"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".db"))
        .collect();
    assert!(
        states.len() == 1 && states[0].starts_with("127_0_0_1-") && states[0].ends_with(".db"),
        "{states:?}"
    );
    let o = ftpsync_with(
        &env,
        dir,
        &["plan", "--detailed-exitcode", "--push", local, &url],
        &pw,
    );
    assert_eq!(o.code, 0, "{}", o.all());
    // --pull into an empty directory, relative to the current directory.
    fs::create_dir_all(dir.join("copy")).unwrap();
    let o = ftpsync_with(&env, dir, &["run", "--pull", "copy", &url], &pw);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_same_tree(&env.remote_disk, &dir.join("copy"));
    // Without FTPSYNC_PASSWORD and no terminal to ask on: a clear error.
    let o = ftpsync_with(&env, dir, &["plan", "--push", local, &url], &[]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stderr.contains("set FTPSYNC_PASSWORD"), "{}", o.stderr);
    // A password in the URL is refused and never repeated.
    let with_pw = format!("ftp://tester:{PASSWORD}@127.0.0.1:{}/www", env.port);
    let o = ftpsync_with(&env, dir, &["run", "--push", local, &with_pw], &[]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.stderr.contains("password in the URL is refused"),
        "{}",
        o.stderr
    );
    // A job file and a one-off together are a usage error.
    let job = env.job("push", false, "");
    let o = ftpsync_with(
        &env,
        dir,
        &["plan", job.to_str().unwrap(), "--push", local, &url],
        &pw,
    );
    assert_eq!(o.code, 2, "{}", o.all());
}

#[test]
fn several_jobs_run_in_order_and_exit_with_the_worst_code() {
    let env = Env::builtin();
    write(&env.local, "a.txt", "a");
    let good = fs::read_to_string(env.job("push", false, "")).unwrap();
    let jobs = env.dir.path().join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    fs::write(jobs.join("1-good.yaml"), &good).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = good
        .replace(
            &format!("port: {}", env.port),
            &format!("port: {closed_port}"),
        )
        .replace("state.db", "state-2.db");
    fs::write(jobs.join("2-unreachable.yaml"), unreachable).unwrap();
    let dir = jobs.to_str().unwrap();
    // 0 and 3: 3.
    let o = env.ftpsync(&["run", dir]);
    assert_eq!(o.code, 3, "{}", o.all());
    assert!(env.remote_disk.join("a.txt").exists(), "the good job ran");
    assert!(
        o.stderr.contains("2-unreachable.yaml: cannot connect"),
        "{}",
        o.stderr
    );
    // A bad job file (2) is worse than a server that is down (3); the
    // others still run.
    fs::write(jobs.join("0-bad.yaml"), "direction: push\n").unwrap();
    write(&env.local, "b.txt", "b");
    let o = env.ftpsync(&["run", dir]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(env.remote_disk.join("b.txt").exists(), "the good job ran");
    assert!(
        o.stderr.contains("0-bad.yaml:1:1: missing field `local`"),
        "{}",
        o.stderr
    );
    let o = env.ftpsync(&["validate", dir]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stdout.contains("1-good.yaml: ok"), "{}", o.stdout);
    let o = env.ftpsync(&["plan", "--detailed-exitcode", dir]);
    assert_eq!(o.code, 1, "{}", o.all());
    // Files are taken in the order given; two good ones plan one after the other.
    let good_file = jobs.join("1-good.yaml");
    let g = good_file.to_str().unwrap();
    write(&env.local, "c.txt", "c");
    let o = env.ftpsync(&["plan", "--detailed-exitcode", g, g]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert_eq!(o.stdout.matches(" c.txt (").count(), 2, "{}", o.stdout);
    let o = env.ftpsync(&["validate", env.dir.path().join("server").to_str().unwrap()]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("no *.yaml or *.yml job files"),
        "{}",
        o.stderr
    );
}

/// Every run leaves exactly one line in the history, written with the
/// outcome it had, whether it got as far as writing state (through the
/// run's own state connection) or stopped before (a failed login); and the
/// state is closed after each: no write-ahead log or shared-memory file
/// is left beside it.
#[test]
fn each_run_is_recorded_once_and_the_state_is_left_closed() {
    let env = Env::builtin();
    sample_tree(&env.local);
    let job = env.job("push", true, "");
    let job_arg = job.to_str().unwrap();
    let state = env.state_path();
    let leftovers = || {
        ["-wal", "-shm", "-journal"]
            .iter()
            .map(|s| PathBuf::from(format!("{}{s}", state.display())))
            .filter(|p| p.exists())
            .collect::<Vec<_>>()
    };
    let run = |code: i32| {
        let o = env.ftpsync(&["run", job_arg]);
        assert_eq!(o.code, code, "{}", o.all());
        assert_eq!(leftovers(), Vec::<PathBuf>::new());
    };
    run(0);
    run(0);
    write(&env.local, "css/site.css", "body{color:red}\n");
    run(0);
    // A run that cannot log in: recorded too, as failed.
    let refused = Command::new(env!("CARGO_BIN_EXE_ftpsync"))
        .args(["run", job_arg])
        .env("FTPSYNC_TEST_PASSWORD", "not-the-password")
        .env("HOME", env.dir.path())
        .env_remove("FTPSYNC_LOG")
        .output()
        .unwrap();
    let refused_code = refused.status.code().unwrap();
    assert_ne!(refused_code, 0);
    assert_eq!(leftovers(), Vec::<PathBuf>::new());

    let out = env.ftpsync(&["history", "--json", "-n", "100", job_arg]);
    assert_eq!(out.code, 0, "{}", out.all());
    let runs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    let got: Vec<(String, i64, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_owned(),
                r["exit_code"].as_i64().unwrap(),
                r["uploaded"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("failed".to_owned(), i64::from(refused_code), 0),
            ("success".to_owned(), 0, 1),
            ("success".to_owned(), 0, 0),
            ("success".to_owned(), 0, 8),
        ]
    );
}
