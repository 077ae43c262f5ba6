//! Files as users expect them: modes (SITE CHMOD on push, the listing's
//! modes on pull), modification times to the second, `bwlimit`, and the
//! messages of failed connections, through the real binary against vsftpd,
//! pyftpdlib and the built-in server.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::harness::{Env, Output, PASSWORD, assert_same_tree, snapshot, write};
use crate::support::servers::{
    ExternalServer, start_proftpd, start_pure_ftpd, start_pyftpdlib, start_vsftpd,
    start_vsftpd_local_user,
};

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mtime(path: &Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn mtime_of(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// This process's umask (the binary inherits it).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// Every path under `root` with its mode bits.
fn modes(root: &Path) -> Vec<(String, u32)> {
    snapshot(root)
        .keys()
        .map(|rel| (rel.clone(), mode_of(&root.join(rel))))
        .collect()
}

/// The commands the server logged (vsftpd's `log_ftp_protocol`), in order.
fn commands(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("FTP command: Client \"127.0.0.1\", \""))
        .map(|(_, c)| c.trim_end_matches('"').to_string())
        .collect()
}

/// A local tree whose modes differ from what vsftpd's `local_umask=077`
/// gives: world-readable pages, a script, a private file, a group-readable
/// directory, and a setuid program (its setuid bit is never sent).
fn tree_with_modes(root: &Path) {
    write(root, "index.html", "<h1>hi</h1>\n");
    write(root, "cgi/run.sh", "#!/bin/sh\necho hi\n");
    write(root, "secret.txt", "s3\n");
    write(root, "team/notes.txt", "notes\n");
    write(root, "bin/tool", "tool\n");
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    write(root, "big.bin", big);
    for (rel, mode) in [
        ("index.html", 0o644),
        ("cgi/run.sh", 0o755),
        ("cgi", 0o755),
        ("secret.txt", 0o600),
        ("team", 0o750),
        ("team/notes.txt", 0o640),
        ("bin", 0o711),
        ("bin/tool", 0o4755),
        ("big.bin", 0o664),
    ] {
        chmod(&root.join(rel), mode);
    }
}

/// A push to vsftpd as it ships (`local_umask=077`) gives the server's
/// copies the local modes: SITE CHMOD on the temporary file, before its
/// rename. A second run does nothing, and neither does a change of mode
/// alone.
#[test]
fn vsftpd_push_gives_local_modes() {
    let Some(server) = start_vsftpd_local_user() else {
        return;
    };
    let env = Env::external(server);
    tree_with_modes(&env.local);
    let job = env.job("push", false, "");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    let want: Vec<(String, u32)> = modes(&env.local)
        .into_iter()
        .map(|(p, m)| (p, m & 0o777))
        .collect();
    assert_eq!(modes(&env.remote_disk), want);
    // Each temporary file got its mode before it was renamed into place.
    let cmds = commands(&env.server_log());
    let renames: Vec<&String> = cmds.iter().filter(|c| c.starts_with("RNFR ")).collect();
    assert_eq!(renames.len(), 6, "{cmds:#?}");
    for rnfr in renames {
        let temp = &rnfr["RNFR ".len()..];
        let at = cmds.iter().position(|c| c == rnfr).unwrap();
        assert!(
            cmds[..at]
                .iter()
                .any(|c| c.starts_with("SITE CHMOD ") && c.ends_with(&format!(" {temp}"))),
            "no SITE CHMOD of {temp} before its rename: {cmds:#?}"
        );
    }
    assert_eq!(env.plan_ops(&job), vec![]);
    chmod(&env.local.join("index.html"), 0o600);
    assert_eq!(env.plan_ops(&job), vec![]);
}

/// A push gives the server's copies the local modes (SITE CHMOD), and a
/// second run does nothing.
fn push_gives_local_modes(server: ExternalServer) {
    let env = Env::external(server);
    tree_with_modes(&env.local);
    let job = env.job("push", false, "");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    let want: Vec<(String, u32)> = modes(&env.local)
        .into_iter()
        .map(|(p, m)| (p, m & 0o777))
        .collect();
    assert_eq!(modes(&env.remote_disk), want);
    assert_eq!(env.plan_ops(&job), vec![]);
}

#[test]
fn proftpd_push_gives_local_modes() {
    if let Some(server) = start_proftpd() {
        push_gives_local_modes(server);
    }
}

#[test]
fn pure_ftpd_push_gives_local_modes() {
    if let Some(server) = start_pure_ftpd() {
        push_gives_local_modes(server);
    }
}

/// `file_mode` and `dir_mode` give every file and directory those modes,
/// also without temporary names (`atomic: false`).
#[test]
fn vsftpd_push_explicit_modes() {
    let Some(server) = start_vsftpd_local_user() else {
        return;
    };
    let env = Env::external(server);
    tree_with_modes(&env.local);
    let job = env.job(
        "push",
        false,
        "file_mode: 0640\ndir_mode: 0755\natomic: false\n",
    );
    env.run(&job, 0);
    for (rel, mode) in modes(&env.remote_disk) {
        let dir = env.remote_disk.join(&rel).is_dir();
        assert_eq!(mode, if dir { 0o755 } else { 0o640 }, "{rel}");
    }
}

/// `permissions: none` sends no SITE CHMOD: the server's umask decides.
#[test]
fn vsftpd_push_permissions_none() {
    let Some(server) = start_vsftpd_local_user() else {
        return;
    };
    let env = Env::external(server);
    tree_with_modes(&env.local);
    let job = env.job("push", false, "permissions: none\n");
    env.run(&job, 0);
    for (rel, mode) in modes(&env.remote_disk) {
        let dir = env.remote_disk.join(&rel).is_dir();
        assert_eq!(mode, if dir { 0o700 } else { 0o600 }, "{rel}");
    }
    let cmds = commands(&env.server_log());
    assert!(!cmds.iter().any(|c| c.starts_with("SITE")), "{cmds:#?}");
}

/// vsftpd refuses SITE CHMOD to anonymous users: the push still succeeds,
/// says so once, and stops asking.
#[test]
fn vsftpd_chmod_refused_warns_once() {
    let Some(server) = start_vsftpd() else {
        return;
    };
    let env = Env::external(server);
    for f in ["a.txt", "b.txt", "d/c.txt"] {
        write(&env.local, f, f);
    }
    let job = env.job("push", false, "concurrency: 1\n");
    let out = env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("SITE CHMOD"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.all());
    assert!(
        warnings[0].ends_with(
            "the server refused SITE CHMOD (550 Permission denied.): files and directories keep the modes the server gives them for the rest of this run (set `permissions: none` to stop asking)"
        ),
        "{}",
        warnings[0]
    );
    let cmds = commands(&env.server_log());
    let chmods = cmds.iter().filter(|c| c.starts_with("SITE CHMOD")).count();
    assert_eq!(chmods, 1, "{cmds:#?}");
}

/// Seconds since the epoch of a time this many seconds ago, not on a
/// minute boundary (so a minute-precision time would be caught).
fn ago(secs: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = now - secs;
    t - t % 60 + 37
}

/// Files on the server with modes the local side must mask (0666), special
/// bits it must drop (setuid, setgid, sticky), a recent time (LIST: minutes)
/// and one older than six months (LIST: only the day).
const SERVER_FILES: [(&str, u32); 5] = [
    ("page.html", 0o666),
    ("run.sh", 0o755),
    ("private.txt", 0o600),
    ("suid", 0o4755),
    ("shared/sgid", 0o2750),
];

fn seed_server(server: &ExternalServer) -> Vec<(String, u64)> {
    let mut times = Vec::new();
    for (i, (rel, _)) in SERVER_FILES.iter().enumerate() {
        server.write_remote_file(rel, format!("{rel}\n").as_bytes());
        // Every other file is old: 2017, its LIST line shows only the day.
        let t = if i % 2 == 0 {
            ago(3_600)
        } else {
            1_500_000_007
        };
        times.push((rel.to_string(), t));
    }
    fs::create_dir_all(server.disk_root.join("sticky")).unwrap();
    server.fix_disk_ownership();
    // After the chown, which clears setuid and setgid bits.
    for (rel, mode) in SERVER_FILES {
        chmod(&server.disk_root.join(rel), mode);
    }
    chmod(&server.disk_root.join("shared"), 0o2775);
    chmod(&server.disk_root.join("sticky"), 0o1777);
    for (rel, t) in &times {
        set_mtime(&server.disk_root.join(rel), *t);
    }
    times
}

/// A pull gives each file the server's time to the second and its mode
/// masked by the umask, never setuid, setgid or sticky bits.
fn pull_modes_and_times(server: ExternalServer) -> Env {
    let times = seed_server(&server);
    let env = Env::external(server);
    let job = env.job("pull", false, "");
    env.run(&job, 0);
    assert_same_tree(&env.remote_disk, &env.local);
    let mask = umask();
    let mut want: Vec<(String, u32)> = SERVER_FILES
        .iter()
        .map(|(rel, mode)| (rel.to_string(), mode & 0o777 & !mask))
        .collect();
    want.push(("shared".into(), (0o775 & !mask) | 0o700));
    want.push(("sticky".into(), (0o777 & !mask) | 0o700));
    want.sort();
    assert_eq!(modes(&env.local), want, "umask {mask:o}");
    for (rel, t) in times {
        assert_eq!(
            mtime_of(&env.local.join(&rel)),
            UNIX_EPOCH + Duration::from_secs(t),
            "{rel}"
        );
    }
    assert_eq!(env.plan_ops(&job), vec![]);
    env
}

/// vsftpd has no MLSD: its LIST shows minutes or only a day, so each
/// downloaded file costs exactly one MDTM.
#[test]
fn vsftpd_pull_modes_and_times() {
    let Some(server) = start_vsftpd() else {
        return;
    };
    let env = pull_modes_and_times(server);
    let cmds = commands(&env.server_log());
    let mdtms = cmds.iter().filter(|c| c.starts_with("MDTM ")).count();
    assert_eq!(mdtms, SERVER_FILES.len(), "{cmds:#?}");
}

/// pyftpdlib's MLSD gives seconds and, once asked with OPTS MLST, UNIX.mode.
#[test]
fn pyftpdlib_pull_modes_and_times() {
    let Some(server) = start_pyftpdlib() else {
        return;
    };
    pull_modes_and_times(server);
}

/// `bwlimit` caps the whole run, over all its connections: four files of
/// 256 KiB over four connections at 256 KiB/s take about four seconds (a
/// limit per connection would take one).
#[test]
fn bwlimit_caps_a_push_over_all_connections() {
    let env = Env::builtin();
    for i in 0..4 {
        write(&env.local, &format!("f{i}.bin"), vec![i as u8; 256 << 10]);
    }
    let job = env.job("push", false, "concurrency: 4\nbwlimit: 256KiB/s\n");
    let started = Instant::now();
    env.run(&job, 0);
    let took = started.elapsed();
    assert_same_tree(&env.local, &env.remote_disk);
    // 1 MiB at 256 KiB/s, less what may go out before the first wait (a
    // tenth of a second's worth per connection, and the bucket's).
    assert!(
        took >= Duration::from_millis(3_200) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

/// `--bwlimit` on `run` caps a pull too, and wins over the job's value.
#[test]
fn bwlimit_flag_caps_a_pull() {
    let env = Env::builtin();
    write(&env.remote_disk, "big.bin", vec![7u8; 768 << 10]);
    let job = env.job("pull", false, "bwlimit: 1GiB/s\n");
    let started = Instant::now();
    let out = env.ftpsync(&["run", "--bwlimit", "256KiB/s", job.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.all());
    assert_same_tree(&env.remote_disk, &env.local);
    assert!(
        took >= Duration::from_millis(2_500) && took < Duration::from_secs(20),
        "{took:?}"
    );
    let out = env.ftpsync(&["run", "--bwlimit", "2parsecs", job.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains(
            "invalid value '2parsecs' for '--bwlimit <RATE>': `2parsecs`: unknown unit `parsecs`"
        ),
        "{}",
        out.stderr
    );
}

/// Runs `ftpsync run JOB` with `vars` in the environment.
fn run_with(job: &Path, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsync"));
    cmd.args(["run", job.to_str().unwrap()])
        .env_remove("FTPSYNC_LOG")
        .env("HOME", job.parent().unwrap());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tls: explicit` against vsftpd without TLS: vsftpd answers AUTH TLS with
/// "530 Please login with USER and PASS.", which is no login refusal.
#[test]
fn vsftpd_tls_refused_says_so() {
    let Some(server) = start_vsftpd() else {
        return;
    };
    let mut env = Env::external(server);
    env.remote_extra = "  tls: explicit\n".into();
    let job = env.job("push", false, "");
    let out = env.run(&job, 3);
    assert_eq!(
        out.stderr,
        format!(
            "ftpsync: error: cannot connect to 127.0.0.1:{}: the server refused AUTH TLS (530 Please login with USER and PASS.). Nothing was changed. No user name or password was sent. The server does not offer FTPS: enable TLS on the server, or set `remote.tls: none` to connect without encryption\n",
            env.port
        )
    );
    // Nothing after AUTH TLS (before it: the harness's startup probe).
    let cmds = commands(&env.server_log());
    assert_eq!(
        cmds.last().map(String::as_str),
        Some("AUTH TLS"),
        "{cmds:#?}"
    );
    assert_eq!(cmds.iter().filter(|c| c.starts_with("USER")).count(), 1);
}

/// The built-in server without TLS refuses AUTH TLS its own way.
#[test]
fn builtin_tls_refused_says_so() {
    let mut env = Env::builtin();
    env.remote_extra = "  tls: explicit\n".into();
    let job = env.job("push", false, "");
    let out = env.run(&job, 3);
    let want = format!(
        "ftpsync: error: cannot connect to 127.0.0.1:{}: the server refused AUTH TLS (",
        env.port
    );
    assert!(out.stderr.starts_with(&want), "{}", out.stderr);
    assert!(
        out.stderr
            .ends_with("). Nothing was changed. No user name or password was sent. The server does not offer FTPS: enable TLS on the server, or set `remote.tls: none` to connect without encryption\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn wrong_password_says_so() {
    let env = Env::builtin();
    let job = env.job("push", false, "");
    let out = run_with(&job, &[("FTPSYNC_TEST_PASSWORD", "not-the-password")]);
    assert_eq!(out.code, 3, "{}", out.all());
    assert_eq!(
        out.stderr,
        format!(
            "ftpsync: error: login to 127.0.0.1:{} as tester refused: 530 Authentication failed. Nothing was changed. Check remote.user and the password (remote.password_env, remote.password_file or remote.password)\n",
            env.port
        )
    );
    assert!(!out.all().contains(PASSWORD));
}

#[test]
fn connection_refused_says_so() {
    let mut env = Env::builtin();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.via(port);
    let job = env.job("push", false, "retry:\n  max_attempts: 1\n");
    let out = env.run(&job, 3);
    assert_eq!(
        out.stderr,
        format!(
            "ftpsync: error: cannot connect to 127.0.0.1:{port}: network error: Connection refused (os error 111). Nothing was changed. Check remote.host and remote.port, and that the FTP server is running and reachable from here\n"
        )
    );
}

#[test]
fn wrong_root_says_so() {
    let mut env = Env::builtin();
    env.remote_root = "/no/such/dir".into();
    let job = env.job("pull", false, "");
    let out = env.run(&job, 2);
    assert_eq!(
        out.stderr,
        format!(
            "ftpsync: error: remote.root /no/such/dir does not exist on 127.0.0.1:{}; nothing was changed. Check remote.root in {} (a path without a leading / starts at the login directory)\n",
            env.port,
            job.display()
        )
    );
    assert!(snapshot(&env.local).is_empty());
}
