//! The command line: validation errors, exit codes and the JSON plan.

use std::fs;

use crate::support::harness::{Env, write};

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
