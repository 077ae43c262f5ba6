//! Transfers checked with the server's hash command (`verify`): against
//! ProFTPD with mod_digest, a real server that offers `HASH`, through the
//! fault proxy, which records the commands it received and can forge the
//! server's answer to the hash command (a copy that arrived damaged).

use std::fs;

use crate::faults::{Faulty, faulty, faulty_external};
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::{assert_same_tree, snapshot, write};
use crate::support::servers::start_proftpd;

/// Bytes that do not repeat in short cycles, so a resend or a damaged
/// copy cannot look right by accident.
fn varied(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn proftpd() -> Option<Faulty> {
    start_proftpd().map(faulty_external)
}

/// The commands the server received whose verb is `verb`.
fn sent(f: &Faulty, verb: &str) -> Vec<String> {
    f.proxy
        .commands()
        .into_iter()
        .filter(|c| c.split(' ').next() == Some(verb))
        .collect()
}

/// The hash command's reply with a digest that belongs to no file here.
fn forged_hash() -> Action {
    Action::Reply(format!("213 SHA-256 0-1 {} forged", "00".repeat(32)))
}

#[test]
fn every_upload_is_checked_with_the_servers_hash() {
    let Some(f) = proftpd() else { return };
    let env = &f.env;
    write(&env.local, "a.txt", "alpha\n");
    write(&env.local, "d/c.txt", "gamma\n");
    // Bigger than a small file: sent with its own data path, same check.
    write(&env.local, "big.bin", varied(3 << 20, 1));
    let job = env.job("push", false, "");

    let plan = env.ftpsync(&["plan", job.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout.lines().any(|l| l
            == "verify: each transfer is checked with the server's HASH (SHA-256) before it takes its name"),
        "{}",
        plan.stdout
    );
    assert_eq!(env.plan_json(&job)["verify"], "hash");

    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    // One hash per file, asked under a temporary name before the rename:
    // the file's own (a.txt, big.bin), or its new directory's (d/c.txt).
    let hashes = sent(&f, "HASH");
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    for h in &hashes {
        let temp = |c: &str| c.starts_with(".ftpsync-") && c.ends_with(".part");
        let parts: Vec<&str> = h.split('/').collect();
        assert!(
            temp(parts[parts.len() - 1]) || (temp(parts[parts.len() - 2]) && h.ends_with("/c.txt")),
            "{h}"
        );
    }
}

#[test]
fn a_copy_the_server_hashes_differently_never_takes_the_name() {
    let Some(f) = proftpd() else { return };
    let env = &f.env;
    write(&env.local, "a.txt", "old content\n");
    let job = env.job("push", false, "");
    env.run(&job, 0);

    write(&env.local, "a.txt", "new content, longer\n");
    f.proxy.add_rule(Rule::new("HASH", forged_hash()));
    let o = env.run(&job, 1);
    assert!(
        o.all()
            .contains("the server's SHA-256 of the file is not the local copy's"),
        "{}",
        o.all()
    );
    // The real name keeps what it had; no temporary file is left behind.
    assert_eq!(
        snapshot(&env.remote_disk),
        [("a.txt".to_string(), Some(b"old content\n".to_vec()))].into()
    );
    // Each attempt sent the file again (retry.max_attempts: 3).
    assert_eq!(sent(&f, "STOR").len(), 1 + 3);

    // Damaged once: the retry sends it again and it is placed.
    f.proxy.clear_rules();
    f.proxy.add_rule(Rule::new("HASH", forged_hash()).times(1));
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(sent(&f, "STOR").len(), 4 + 2);
}

#[test]
fn verify_size_sends_no_hash_command() {
    let Some(f) = proftpd() else { return };
    let env = &f.env;
    write(&env.local, "a.txt", "alpha\n");
    let job = env.job("push", false, "verify: size\n");
    assert_eq!(env.plan_json(&job)["verify"], "size");
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(sent(&f, "HASH"), Vec::<String>::new());
}

#[test]
fn verify_hash_checks_downloads_too() {
    let Some(f) = proftpd() else { return };
    let env = &f.env;
    write(&env.remote_disk, "a.txt", "alpha\n");
    write(&env.remote_disk, "d/big.bin", varied(2 << 20, 2));
    let job = env.job("pull", false, "verify: hash\n");
    env.run(&job, 0);
    assert_same_tree(&env.remote_disk, &env.local);
    assert_eq!(sent(&f, "HASH").len(), 2);

    // A download the server hashes differently is not placed.
    write(&env.remote_disk, "a.txt", "alpha, changed\n");
    f.proxy.add_rule(Rule::new("HASH", forged_hash()));
    let o = env.run(&job, 1);
    assert!(o.all().contains("is not the local copy's"), "{}", o.all());
    assert_eq!(fs::read(env.local.join("a.txt")).unwrap(), b"alpha\n");
    let names: Vec<_> = fs::read_dir(&env.local)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "a temporary file was left: {names:?}");
}

#[test]
fn verify_hash_without_a_hash_command_changes_nothing() {
    let f = faulty();
    let env = &f.env;
    write(&env.local, "a.txt", "alpha\n");
    let job = env.job("push", false, "verify: hash\n");
    let o = env.run(&job, 2);
    assert!(
        o.stderr.contains("`verify: hash`, but")
            && o.stderr.contains("offers no hash command")
            && o.stderr.contains("Nothing was changed"),
        "{}",
        o.all()
    );
    assert_eq!(snapshot(&env.remote_disk), Default::default());
    assert_eq!(sent(&f, "STOR"), Vec::<String>::new());
}

/// A first run over an identical tree whose times say nothing (each file a
/// different age on the server): the server's hash adopts every file, and
/// nothing is sent; a file of the same size but other bytes is uploaded.
#[test]
fn first_run_adopts_identical_files_by_the_servers_hash() {
    use std::time::{Duration, SystemTime};
    let Some(f) = proftpd() else { return };
    let env = &f.env;
    let files = ["a.txt", "d/b.bin", "d/e/c.html"];
    for (i, rel) in files.iter().enumerate() {
        let data = varied(1000 + i * 4000, i as u8);
        write(&env.local, rel, &data);
        write(&env.remote_disk, rel, &data);
        let age = Duration::from_secs(86_400 * (3 + 17 * i as u64) + 3_607 * i as u64);
        fs::File::options()
            .write(true)
            .open(env.remote_disk.join(rel))
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }
    // Same size, one byte different.
    let mut other = varied(2000, 9);
    write(&env.local, "same-size.txt", &other);
    other[1000] ^= 1;
    write(&env.remote_disk, "same-size.txt", &other);
    fs::File::options()
        .write(true)
        .open(env.remote_disk.join("same-size.txt"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(86_400 * 40))
        .unwrap();
    let job = env.job("push", false, "");

    let mut ops: Vec<(String, String, String)> = env.plan_json(&job)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "file")
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            (s("op"), s("path"), s("reason"))
        })
        .collect();
    ops.sort();
    let t = |op: &str, p: &str, r: &str| (op.to_owned(), p.to_owned(), r.to_owned());
    assert_eq!(
        ops,
        vec![
            t("adopt", "a.txt", "same_hash"),
            t("adopt", "d/b.bin", "same_hash"),
            t("adopt", "d/e/c.html", "same_hash"),
            t("upload", "same-size.txt", "differs"),
        ]
    );
    env.run(&job, 0);
    assert_same_tree(&env.local, &env.remote_disk);
    let stored = sent(&f, "STOR");
    assert_eq!(stored.len(), 1, "{stored:?}");
}
