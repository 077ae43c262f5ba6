//! The mirror scenarios against third-party servers: vsftpd (LIST only, no
//! MLSD), pyftpdlib (MLSD, MFMT), ProFTPD (Debian defaults; in clear and
//! with TLS required) and Pure-FTPd (MLSD, MFMT). Skipped with a message when a server is
//! not installed, unless FTPSYNC_REQUIRE_INTEROP=1 (CI), where that fails.

use crate::mirror;
use crate::support::harness::Env;
use crate::support::servers::{
    ExternalServer, start_proftpd, start_proftpd_tls, start_pure_ftpd, start_pyftpdlib,
    start_vsftpd,
};

macro_rules! interop {
    ($name:ident, $start:ident, $scenario:path) => {
        #[test]
        fn $name() {
            let Some(server) = $start() else { return };
            $scenario(&env_for(server));
        }
    };
}

/// An [`Env`] for `server`, with `tls: explicit` and its certificate when
/// it made one (FTPS required).
fn env_for(server: ExternalServer) -> Env {
    let ca = server.tls_ca_file();
    let mut env = Env::external(server);
    if let Some(ca) = ca {
        env.remote_extra = format!("  tls: explicit\n  tls_ca_file: {}\n", ca.display());
    }
    env
}

interop!(
    vsftpd_push_and_rerun_is_noop,
    start_vsftpd,
    mirror::push_and_rerun_is_noop
);
interop!(
    vsftpd_push_incremental,
    start_vsftpd,
    mirror::push_incremental
);
interop!(vsftpd_push_filters, start_vsftpd, mirror::push_filters);
interop!(
    vsftpd_pull_incremental,
    start_vsftpd,
    mirror::pull_incremental
);
interop!(
    vsftpd_push_detects_drift,
    start_vsftpd,
    mirror::push_detects_drift
);
interop!(
    pyftpdlib_push_and_rerun_is_noop,
    start_pyftpdlib,
    mirror::push_and_rerun_is_noop
);
interop!(
    pyftpdlib_push_incremental,
    start_pyftpdlib,
    mirror::push_incremental
);
interop!(
    pyftpdlib_push_filters,
    start_pyftpdlib,
    mirror::push_filters
);
interop!(
    pyftpdlib_pull_incremental,
    start_pyftpdlib,
    mirror::pull_incremental
);
interop!(
    pyftpdlib_push_detects_drift,
    start_pyftpdlib,
    mirror::push_detects_drift
);

interop!(
    proftpd_push_and_rerun_is_noop,
    start_proftpd,
    mirror::push_and_rerun_is_noop
);
interop!(
    proftpd_push_incremental,
    start_proftpd,
    mirror::push_incremental
);
interop!(proftpd_push_filters, start_proftpd, mirror::push_filters);
interop!(
    proftpd_pull_incremental,
    start_proftpd,
    mirror::pull_incremental
);
interop!(
    proftpd_push_detects_drift,
    start_proftpd,
    mirror::push_detects_drift
);
interop!(
    proftpd_tls_push_and_rerun_is_noop,
    start_proftpd_tls,
    mirror::push_and_rerun_is_noop
);
interop!(
    proftpd_tls_push_incremental,
    start_proftpd_tls,
    mirror::push_incremental
);
interop!(
    proftpd_tls_pull_incremental,
    start_proftpd_tls,
    mirror::pull_incremental
);
interop!(
    pure_ftpd_push_and_rerun_is_noop,
    start_pure_ftpd,
    mirror::push_and_rerun_is_noop
);
interop!(
    pure_ftpd_push_incremental,
    start_pure_ftpd,
    mirror::push_incremental
);
interop!(
    pure_ftpd_push_filters,
    start_pure_ftpd,
    mirror::push_filters
);
interop!(
    pure_ftpd_pull_incremental,
    start_pure_ftpd,
    mirror::pull_incremental
);
interop!(
    pure_ftpd_push_detects_drift,
    start_pure_ftpd,
    mirror::push_detects_drift
);

/// After a push the server's copies carry the local modification times
/// (MFMT on pyftpdlib, two-argument MDTM on vsftpd).
fn keeps_modification_times(env: &Env) {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    crate::support::harness::write(&env.local, "old.txt", "old\n");
    let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(env.local.join("old.txt"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let job = env.job("push", false, "");
    env.run(&job, 0);
    let remote: SystemTime = std::fs::metadata(env.remote_disk.join("old.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(remote, t);
    assert_eq!(env.plan_ops(&job), vec![]);
}

interop!(
    vsftpd_keeps_modification_times,
    start_vsftpd,
    keeps_modification_times
);
interop!(
    pyftpdlib_keeps_modification_times,
    start_pyftpdlib,
    keeps_modification_times
);

interop!(
    proftpd_keeps_modification_times,
    start_proftpd,
    keeps_modification_times
);
interop!(
    proftpd_tls_keeps_modification_times,
    start_proftpd_tls,
    keeps_modification_times
);
interop!(
    pure_ftpd_keeps_modification_times,
    start_pure_ftpd,
    keeps_modification_times
);

/// Explicit FTPS against vsftpd, which requires data connections to resume
/// the control connection's TLS session (`require_ssl_reuse=YES`, its
/// default; rclone#7234): push, no-op re-run, pull back.
#[test]
fn vsftpd_ftps_push_and_pull() {
    use crate::support::harness::{assert_same_tree, sample_tree, test_data};
    let Some(server) = crate::support::servers::start_vsftpd_tls() else {
        return;
    };
    let mut env = Env::external(server);
    env.remote_extra = format!(
        "  tls: explicit\n  tls_ca_file: {}\n",
        test_data("localhost-cert.pem").display()
    );
    sample_tree(&env.local);
    let job = env.job("push", true, "");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(env.plan_ops(&job), vec![]);
    let pulled = env.dir.path().join("pulled");
    std::fs::create_dir_all(&pulled).unwrap();
    let original = std::mem::replace(&mut env.local, pulled);
    let state = env.dir.path().join("pull.db");
    let job = env.job("pull", false, &format!("state: {}\n", state.display()));
    env.run(&job, 0);
    assert_same_tree(&original, &env.local);
    // It really was FTPS, data connections included.
    let log = env.server_log();
    assert!(log.contains("AUTH TLS") && log.contains("PROT P"), "{log}");
}

/// ProFTPD refuses a data connection that does not resume the control
/// connection's TLS session (its default). With TLS 1.3 a session ticket
/// is good for one resumption and the server sends two after the control
/// connection's handshake: a push and a pull of hundreds of files over four
/// connections must still have every data connection resumed, and none
/// refused.
fn proftpd_tls_session_reuse_holds(protocol: &'static str, negotiated: &str) {
    use crate::support::harness::{assert_same_tree, write};
    let Some(server) = crate::support::servers::start_proftpd_tls_only(protocol) else {
        return;
    };
    let ca = server.tls_ca_file().expect("a self-signed certificate");
    let mut env = Env::external(server);
    env.remote_extra = format!("  tls: explicit\n  tls_ca_file: {}\n", ca.display());
    for i in 0..300 {
        write(
            &env.local,
            &format!("d{}/f{i:03}.txt", i % 6),
            format!("file {i}\n"),
        );
    }
    let job = env.job("push", true, "concurrency: 4\n");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    let pulled = env.dir.path().join("pulled");
    std::fs::create_dir_all(&pulled).unwrap();
    let original = std::mem::replace(&mut env.local, pulled);
    let state = env.dir.path().join("pull.db");
    let job = env.job(
        "pull",
        false,
        &format!("concurrency: 4\nstate: {}\n", state.display()),
    );
    env.run(&job, 0);
    assert_same_tree(&original, &env.local);
    let (log, tls) = (env.server_log(), env.tls_log());
    let refused = tls.matches("did not reuse").count();
    assert_eq!(refused, 0, "{refused} data connections refused:\n{tls}");
    // Nor refused by reply (an EPSV may find the server's few passive
    // ports all in TIME_WAIT: that 425 is the test server's, and retried).
    let refused_replies: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("-> 425") && !l.starts_with("EPSV"))
        .collect();
    assert!(refused_replies.is_empty(), "{refused_replies:#?}");
    // 300 uploads, 300 downloads and the listings: each one resumed.
    let reused = tls
        .matches("client reused TLS session for data connection")
        .count();
    assert!(reused >= 600, "{reused} resumed data connections:\n{tls}");
    // The data connections used the version expected.
    let want = format!("{negotiated} data connection accepted");
    assert!(tls.contains(&want), "no {want:?} in:\n{tls}");
}

#[test]
fn proftpd_tls12_session_reuse_holds() {
    proftpd_tls_session_reuse_holds("TLSv1.2", "TLSv1.2");
}

/// TLS 1.3 only: each connection that runs out of tickets is replaced.
#[test]
fn proftpd_tls13_session_reuse_holds() {
    proftpd_tls_session_reuse_holds("TLSv1.3", "TLSv1.3");
}

/// Both (ProFTPD's usual setting): TLS 1.3 first, then TLS 1.2 once the
/// server is seen not to renew tickets.
#[test]
fn proftpd_tls12_and_13_session_reuse_holds() {
    proftpd_tls_session_reuse_holds("TLSv1.2 TLSv1.3", "TLSv1.2");
}

/// Implicit FTPS (`tls: implicit`, TLS from the first byte) against
/// ProFTPD's `UseImplicitSSL`: push, no-op re-run; no AUTH TLS was sent
/// and the data connections were protected.
#[test]
fn proftpd_implicit_ftps_push() {
    use crate::support::harness::{assert_same_tree, sample_tree};
    use crate::support::servers::{ProftpdTls, start_proftpd_tls_with};
    let Some(server) = start_proftpd_tls_with(ProftpdTls {
        implicit: true,
        ..ProftpdTls::default()
    }) else {
        return;
    };
    let ca = server.tls_ca_file().expect("a self-signed certificate");
    let mut env = Env::external(server);
    env.remote_extra = format!("  tls: implicit\n  tls_ca_file: {}\n", ca.display());
    sample_tree(&env.local);
    let job = env.job("push", true, "");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(env.plan_ops(&job), vec![]);
    // ProFTPD's session processes may still be writing their last lines:
    // the log is read once it has stopped growing.
    let mut log = env.server_log();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = env.server_log();
        if now == log {
            break;
        }
        log = now;
    }
    assert!(!log.contains("AUTH TLS"), "{log}");
    assert!(log.contains("PROT P -> 200"), "{log}");
    // Explicit FTPS to the implicit port: no greeting comes, the run stops
    // with exit 3 and says what to set; no user name was sent.
    env.remote_extra = format!("  tls: explicit\n  tls_ca_file: {}\n", ca.display());
    let job = env.job("push", true, "timeout: 2s\nretry:\n  max_attempts: 1\n");
    let out = env.run(&job, 3);
    assert!(
        out.stderr.contains("set `remote.tls: implicit`"),
        "{}",
        out.all()
    );
    let users = env.server_log().matches("USER ").count();
    assert_eq!(users, log.matches("USER ").count());
}

/// A self-signed certificate made as people make them (`CA:TRUE`, as
/// `openssl req -x509` and Debian's proftpd-gencert do) works when given as
/// `tls_ca_file`; without it the run stops with exit 3, nothing sent, and
/// the fingerprint it prints pins the certificate.
#[test]
fn proftpd_ca_true_certificate_trusted_or_pinned() {
    use crate::support::harness::{assert_same_tree, sample_tree};
    use crate::support::servers::{ProftpdTls, start_proftpd_tls_with};
    let Some(server) = start_proftpd_tls_with(ProftpdTls {
        ca_true: true,
        ..ProftpdTls::default()
    }) else {
        return;
    };
    let ca = server.tls_ca_file().expect("a self-signed certificate");
    let pem = std::fs::read_to_string(&ca).unwrap();
    let mut env = Env::external(server);
    sample_tree(&env.local);
    env.remote_extra = format!("  tls: explicit\n  tls_ca_file: {}\n", ca.display());
    let job = env.job("push", true, "");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert!(pem.contains("BEGIN CERTIFICATE"));

    // Not trusted: refused, with the fingerprint to pin.
    crate::support::harness::write(&env.local, "new.txt", "new\n");
    env.remote_extra = "  tls: explicit\n".into();
    let job = env.job("push", true, "");
    let out = env.run(&job, 3);
    let logins = env.server_log().matches("USER ").count();
    let marker = "pin it with `remote.tls_fingerprint: ";
    let at = out
        .stderr
        .find(marker)
        .unwrap_or_else(|| panic!("{}", out.all()))
        + marker.len();
    let pin: String = out.stderr[at..].chars().take_while(|c| *c != '`').collect();
    assert!(pin.starts_with("sha256:"), "{pin}");
    assert!(!env.remote_disk.join("new.txt").exists());

    // Pinned: it works, and nothing else about the chain is checked.
    env.remote_extra = format!("  tls: explicit\n  tls_fingerprint: {pin}\n");
    let job = env.job("push", true, "");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert!(env.server_log().matches("USER ").count() > logins);
}

/// vsftpd lists a directory it cannot read as empty, with "226 Transfer
/// done (but failed to open directory)": a pull with delete must not read
/// that as "everything in it was deleted on the server".
#[test]
fn vsftpd_unreadable_directory_deletes_nothing() {
    use crate::support::harness::{snapshot, write};
    use std::os::unix::fs::PermissionsExt;
    let Some(server) = start_vsftpd() else { return };
    let env = Env::external(server);
    std::fs::remove_dir_all(&env.local).unwrap();
    for i in 0..4 {
        write(
            &env.remote_disk,
            &format!("d{}/f{i}.txt", i % 2),
            format!("file {i}\n"),
        );
    }
    let job = env.job("pull", true, "");
    env.run(&job, 0);
    let before = snapshot(&env.local);
    assert_eq!(before.len(), 6, "{before:?}");
    let d1 = env.remote_disk.join("d1");
    std::fs::set_permissions(&d1, std::fs::Permissions::from_mode(0o311)).unwrap();
    let out = env.ftpsync(&["run", job.to_str().unwrap()]);
    std::fs::set_permissions(&d1, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(snapshot(&env.local), before, "{}", out.all());
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr
            .contains("the server could not read the directory"),
        "{}",
        out.all()
    );
}
