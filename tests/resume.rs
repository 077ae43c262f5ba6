//! Resume that knows when to stop: a server that refuses a resumed
//! transfer (a negative reply to `REST`, or to the `STOR`/`RETR` after it)
//! gets one transfer from zero in the same run, the partial file is
//! removed, and the refusal is remembered in the state so later runs never
//! send `REST` for that direction to that server. Against real ProFTPD
//! with its default `AllowStoreRestart off`, and scripted refusals through
//! the fault proxy in front of the built-in server.

use std::fs;

use crate::faults::{Faulty, big_content, cut_once, faulty, faulty_external, no_temp_files};
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::write;
use crate::support::servers::start_proftpd;

/// Retries close together, so the tests wait for the transfers only.
const FAST_RETRY: &str = "retry:\n  initial_backoff: 10ms\n  max_backoff: 50ms\n";

/// The commands the proxy relayed since `from`.
fn since(f: &Faulty, from: usize) -> Vec<String> {
    f.proxy.commands()[from..].to_vec()
}

/// How many `REST` commands were followed directly by `verb`.
fn rest_then(cmds: &[String], verb: &str) -> usize {
    cmds.windows(2)
        .filter(|w| w[0].starts_with("REST ") && w[1].starts_with(verb))
        .count()
}

fn count(cmds: &[String], prefix: &str) -> usize {
    cmds.iter().filter(|c| c.starts_with(prefix)).count()
}

/// ProFTPD as Debian ships it accepts `REST` and answers the resumed `STOR`
/// with `451 Append/Restart not permitted`. An upload cut in the middle
/// tries the resume once, then sends the file from zero, in the same run;
/// the next run's interrupted upload goes from zero at once, without `REST`.
#[test]
fn proftpd_refused_upload_resume_converges_and_is_remembered() {
    let Some(server) = start_proftpd() else {
        return;
    };
    let f = faulty_external(server);
    let big = big_content(4 << 20, 11);
    write(&f.env.local, "big.bin", &big);
    f.proxy.add_rule(cut_once("STOR", 2 << 20, false));
    let job = f.env.job("push", false, FAST_RETRY);
    let out = f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.remote_disk.join("big.bin")).unwrap(), big);
    no_temp_files(&f.env.remote_disk);
    let cmds = since(&f, 0);
    // The cut STOR, the resumed one (refused), the one from zero.
    assert_eq!(count(&cmds, "STOR "), 3, "{cmds:?}");
    assert_eq!(rest_then(&cmds, "STOR "), 1, "{cmds:?}");
    // The server's own log: the refusal, exactly once.
    let log = f.env.server_log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("STOR ") && l.contains("-> 451"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("Append/Restart not permitted"), "{log}");
    assert!(
        out.stderr
            .contains("refused to resume the upload of big.bin"),
        "{}",
        out.all()
    );

    // The next run remembers: another cut upload starts over without REST.
    let before = f.proxy.commands().len();
    let big2 = big_content(3 << 20, 12);
    write(&f.env.local, "big2.bin", &big2);
    f.proxy.clear_rules();
    f.proxy.add_rule(cut_once("STOR", 1 << 20, false));
    f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.remote_disk.join("big2.bin")).unwrap(), big2);
    no_temp_files(&f.env.remote_disk);
    let cmds = since(&f, before);
    assert_eq!(count(&cmds, "REST "), 0, "{cmds:?}");
    assert_eq!(count(&cmds, "STOR "), 2, "{cmds:?}");
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

/// A refused download resume, scripted: `REST` refused outright, or the
/// `RETR` after it. Either way one download from zero in the same run, no
/// partial file left, and no `REST` in the next run.
fn refused_download_resume(refuse: Rule, retr: usize) {
    let f = faulty();
    let big = big_content(4 << 20, 13);
    write(&f.env.remote_disk, "big.bin", &big);
    f.proxy.add_rule(cut_once("RETR", 2 << 20, false));
    f.proxy.add_rule(refuse.times(1));
    let job = f.env.job("pull", false, FAST_RETRY);
    let out = f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.local.join("big.bin")).unwrap(), big);
    no_temp_files(&f.env.local);
    let cmds = since(&f, 0);
    assert_eq!(count(&cmds, "REST "), 1, "{cmds:?}");
    assert_eq!(f.proxy.fired(), 2, "{cmds:?}");
    assert!(
        out.stderr
            .contains("refused to resume the download of big.bin"),
        "{}",
        out.all()
    );
    assert_eq!(count(&cmds, "RETR "), retr, "{cmds:?}\n{}", out.all());

    let before = f.proxy.commands().len();
    let big2 = big_content(3 << 20, 14);
    write(&f.env.remote_disk, "big2.bin", &big2);
    f.proxy.clear_rules();
    f.proxy.add_rule(cut_once("RETR", 1 << 20, false));
    f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.local.join("big2.bin")).unwrap(), big2);
    no_temp_files(&f.env.local);
    let cmds = since(&f, before);
    assert_eq!(count(&cmds, "REST "), 0, "{cmds:?}");
    assert_eq!(count(&cmds, "RETR "), 2, "{cmds:?}");
}

#[test]
fn refused_rest_before_a_download_goes_from_zero_once() {
    refused_download_resume(
        Rule::new("REST", Action::Reply("502 REST not implemented".into())),
        2,
    ); // RETR: the cut one, the one from zero
}

#[test]
fn refused_retr_after_rest_goes_from_zero_once() {
    refused_download_resume(
        Rule::new("RETR", Action::Reply("451 Restart not permitted".into())),
        // RETR: the cut one, the refused one, then from zero. The proxy
        // answered the refused RETR itself, so the built-in server still
        // holds the REST marker and serves the next RETR from that offset:
        // the size check catches it and the next attempt goes from zero.
        4,
    );
}

/// A resumed upload the server stores wrongly (here: it says 350 and then
/// writes from byte zero, so the size is off) is caught by the size check,
/// sent again from zero in the same run, and not resumed again.
#[test]
fn resumed_upload_with_a_wrong_size_goes_from_zero_once() {
    let f = faulty();
    let big = big_content(4 << 20, 15);
    write(&f.env.local, "big.bin", &big);
    f.proxy.add_rule(cut_once("STOR", 2 << 20, false));
    // The resumed STOR's REST is answered by the proxy, not the server:
    // the server writes the rest of the file from its byte zero.
    f.proxy.add_rule(
        Rule::new("REST", Action::Reply("350 Restarting".into()))
            .skip(1)
            .times(1),
    );
    let job = f.env.job("push", false, FAST_RETRY);
    let out = f.env.run(&job, 0);
    assert_eq!(fs::read(f.env.remote_disk.join("big.bin")).unwrap(), big);
    no_temp_files(&f.env.remote_disk);
    let cmds = since(&f, 0);
    assert_eq!(count(&cmds, "STOR "), 3, "{cmds:?}");
    assert!(
        out.stderr.contains("bytes on the server after resuming"),
        "{}",
        out.all()
    );
}
