//! New directories built under a temporary name and renamed into place
//! whole: three commands per file (EPSV, STOR, MFMT) instead of six, a
//! listing that checks the sizes, the directory appearing complete or not
//! at all, and what faults, stops and crashes leave.

use std::fs;
use std::time::{Duration, Instant};

use crate::faults::{faulty, no_temp_files};
use crate::stop::{finish, signal, spawn};
use crate::support::fault_proxy::{Action, Rule};
use crate::support::harness::{assert_same_tree, snapshot, snapshot_live, write};

fn count(cmds: &[String], prefix: &str) -> usize {
    cmds.iter().filter(|c| c.starts_with(prefix)).count()
}

/// A temporary name of ftpsync's: `.ftpsync-<16 hex>.part`.
fn is_temp(name: &str) -> bool {
    name.strip_prefix(".ftpsync-")
        .and_then(|r| r.strip_suffix(".part"))
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn site(env: &crate::support::harness::Env) {
    write(&env.local, "site/a.txt", "alpha\n");
    write(&env.local, "site/b.txt", "bravo\n");
    write(&env.local, "site/sub/c.txt", "charlie\n");
    write(&env.local, "site/sub/deeper/d.txt", "delta\n");
    write(&env.local, "top.txt", "top\n");
}

#[test]
fn a_new_directory_is_built_aside_and_renamed_into_place_whole() {
    let f = faulty();
    site(&f.env);
    // The last file of the new directory is held, to look at the server meanwhile.
    f.proxy.add_rule(
        Rule::new("STOR", Action::Delay(Duration::from_millis(1500)))
            .arg("/deeper/d.txt")
            .times(1),
    );
    let job = f.env.job("push", false, "");
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    let start = Instant::now();
    while !f
        .proxy
        .commands()
        .iter()
        .any(|c| c.ends_with("/deeper/d.txt"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "d.txt never sent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Meanwhile: no `site` yet, only a temporary directory beside it.
    let top: Vec<String> = fs::read_dir(&f.env.remote_disk)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!top.contains(&"site".to_string()), "{top:?}");
    assert!(top.iter().any(|n| is_temp(n)), "{top:?}");
    let (code, out, _) = finish(child, Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);

    let cmds = f.proxy.commands();
    let root = f.env.remote_root.trim_end_matches('/');
    // The four files went straight to their names inside the temporary
    // directory: no SIZE and no rename of their own.
    let stors: Vec<&String> = cmds.iter().filter(|c| c.starts_with("STOR ")).collect();
    assert_eq!(stors.len(), 5, "{cmds:#?}");
    let staged: Vec<&&String> = stors
        .iter()
        .filter(|c| c.split('/').any(is_temp) && !c.ends_with(".part"))
        .collect();
    assert_eq!(staged.len(), 4, "{cmds:#?}");
    assert_eq!(count(&cmds, "SIZE "), 1, "only top.txt's: {cmds:#?}");
    // One rename for top.txt, one for the directory, each from a temporary name.
    let mut rntos: Vec<String> = cmds
        .iter()
        .filter_map(|c| c.strip_prefix("RNTO "))
        .map(str::to_owned)
        .collect();
    rntos.sort();
    assert_eq!(rntos, [format!("{root}/site"), format!("{root}/top.txt")]);
    let rnfrs: Vec<&String> = cmds.iter().filter(|c| c.starts_with("RNFR ")).collect();
    assert_eq!(rnfrs.len(), 2, "{cmds:#?}");
    assert!(
        rnfrs
            .iter()
            .all(|c| c.split('/').next_back().is_some_and(is_temp)),
        "{cmds:#?}"
    );
    // The state knows everything: nothing left to do, and a re-run lists
    // the directories as they are now.
    assert_eq!(f.env.plan_ops(&job), vec![]);
    let out = f.env.run(&job, 0);
    assert!(out.stdout.contains("0 uploaded"), "{}", out.all());
}

#[test]
fn a_file_that_fails_in_a_new_directory_fails_alone_and_leaves_nothing() {
    let f = faulty();
    site(&f.env);
    let root = f.env.remote_root.trim_end_matches('/').to_string();
    // b.txt's data goes through, then the server says 552: a partial copy
    // under b.txt's own name inside the temporary directory. a.txt gets a
    // transient 451 once, which is retried.
    f.proxy.add_rule(
        Rule::new("STOR", Action::ReplaceFinal("552 Exceeded storage".into())).arg("/b.txt"),
    );
    f.proxy.add_rule(
        Rule::new("STOR", Action::Reply("451 Try again".into()))
            .arg("/a.txt")
            .times(1),
    );
    write(&f.env.remote_disk, "stray.txt", "not ours");
    let job = f.env.job(
        "push",
        true,
        "retry:\n  initial_backoff: 20ms\n  max_backoff: 100ms\nsafety:\n  max_delete: 100%\n",
    );
    let out = f.env.run(&job, 1);
    assert_eq!(out.failed().len(), 1, "{}", out.all());
    assert!(
        out.stdout
            .contains("FAILED upload site/b.txt: 552 Exceeded storage"),
        "{}",
        out.all()
    );
    assert!(out.stdout.contains("skipped 1 deletes"), "{}", out.all());
    // The rest is in place, b.txt is not, and no temporary is left.
    assert!(!f.env.remote_disk.join("site/b.txt").exists());
    assert_eq!(
        fs::read(f.env.remote_disk.join("site/a.txt")).unwrap(),
        b"alpha\n"
    );
    assert_eq!(
        fs::read(f.env.remote_disk.join("site/sub/deeper/d.txt")).unwrap(),
        b"delta\n"
    );
    assert!(f.env.remote_disk.join("stray.txt").exists());
    no_temp_files(&f.env.remote_disk);
    let cmds = f.proxy.commands();
    // The copy the 552 left was removed before the rename, under its
    // temporary directory.
    let dele: Vec<&String> = cmds.iter().filter(|c| c.starts_with("DELE ")).collect();
    assert_eq!(dele.len(), 1, "{cmds:#?}\n{}", out.all());
    assert!(
        dele[0].ends_with("/b.txt") && dele[0].split('/').any(is_temp),
        "{dele:?}"
    );
    assert_eq!(count(&cmds, &format!("RNTO {root}/site")), 1, "{cmds:#?}");
    f.proxy.clear_rules();
    let out = f.env.run(&job, 0);
    assert!(out.stdout.contains("1 uploaded"), "{}", out.all());
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

/// A copy that the checking listing shows short (here cut on the server's
/// disk after its upload, while that listing is held) never reaches its
/// name: it fails, is removed, and the rest of the directory is placed.
#[test]
fn a_copy_the_listing_shows_short_is_removed_not_placed() {
    let f = faulty();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    write(&f.env.local, "new/x.bin", &content);
    write(&f.env.local, "new/y.txt", "y\n");
    // The scan's listing of the root passes; the check's waits a moment.
    f.proxy.add_rule(
        Rule::new("MLSD", Action::Delay(Duration::from_millis(1500)))
            .skip(1)
            .times(1),
    );
    let job = f.env.job("push", false, "");
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    let start = Instant::now();
    while count(&f.proxy.commands(), "MLSD") < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no checking listing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let temp = fs::read_dir(&f.env.remote_disk)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| is_temp(&n.to_string_lossy())))
        .expect("the temporary directory");
    fs::OpenOptions::new()
        .write(true)
        .open(temp.join("x.bin"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let (code, out, _) = finish(child, Duration::from_secs(30));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "FAILED upload new/x.bin: the server lists 1000 bytes after an upload of 200000"
        ),
        "{out}"
    );
    assert!(!f.env.remote_disk.join("new/x.bin").exists());
    assert_eq!(
        fs::read(f.env.remote_disk.join("new/y.txt")).unwrap(),
        b"y\n"
    );
    no_temp_files(&f.env.remote_disk);
    f.proxy.clear_rules();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

/// A server that will not rename a directory: the directory and each one
/// in it are created, and the files are moved into them one by one (a
/// server that refuses to rename one directory would refuse the others).
#[test]
fn a_refused_directory_rename_moves_the_entries_instead() {
    let f = faulty();
    site(&f.env);
    let root = f.env.remote_root.trim_end_matches('/').to_string();
    // The first RNTO to `site` (the directory's own) is refused.
    f.proxy.add_rule(
        Rule::new(
            "RNTO",
            Action::Reply("553 Cannot rename directories".into()),
        )
        .arg(format!("{root}/site"))
        .times(1),
    );
    let job = f.env.job("push", false, "");
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
    let cmds = f.proxy.commands();
    for made in ["site", "site/sub", "site/sub/deeper"] {
        let mkd = format!("MKD {root}/{made}");
        assert_eq!(
            cmds.iter().filter(|c| **c == mkd).count(),
            1,
            "{made}: {cmds:#?}"
        );
    }
    let mut rntos: Vec<&str> = cmds
        .iter()
        .filter_map(|c| c.strip_prefix("RNTO "))
        .collect();
    rntos.sort();
    let expected: Vec<String> = [
        "site",
        "site/a.txt",
        "site/b.txt",
        "site/sub/c.txt",
        "site/sub/deeper/d.txt",
        "top.txt",
    ]
    .iter()
    .map(|p| format!("{root}/{p}"))
    .collect();
    assert_eq!(rntos, expected, "{cmds:#?}");
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

/// A run killed while a new directory is being built leaves it under its
/// temporary name only; the next run removes it, files and all, and
/// uploads the directory again.
#[test]
fn a_killed_run_leaves_a_temporary_directory_that_the_next_run_removes() {
    let f = faulty();
    site(&f.env);
    f.proxy.add_rule(
        Rule::new("STOR", Action::Delay(Duration::from_secs(30)))
            .arg("/deeper/d.txt")
            .times(1),
    );
    let job = f.env.job("push", false, "concurrency: 1\n");
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    let start = Instant::now();
    while !f
        .proxy
        .commands()
        .iter()
        .any(|c| c.ends_with("/deeper/d.txt"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "d.txt never sent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "KILL");
    let _ = finish(child, Duration::from_secs(10));
    let left: Vec<String> = snapshot_live(&f.env.remote_disk).into_keys().collect();
    assert!(!left.iter().any(|k| k.starts_with("site")), "{left:?}");
    assert!(
        left.iter()
            .any(|k| k.split('/').next().is_some_and(is_temp) && k.ends_with("a.txt")),
        "{left:?}"
    );
    f.proxy.clear_rules();
    let before = f.proxy.commands().len();
    f.env.run(&job, 0);
    assert_same_tree(&f.env.local, &f.env.remote_disk);
    no_temp_files(&f.env.remote_disk);
    let cmds = f.proxy.commands()[before..].to_vec();
    // The leftover was emptied and removed: its three directories.
    let rmd: Vec<&String> = cmds.iter().filter(|c| c.starts_with("RMD ")).collect();
    assert_eq!(rmd.len(), 3, "{cmds:#?}");
    assert!(rmd.iter().all(|c| c.split('/').any(is_temp)), "{cmds:#?}");
    assert_eq!(f.env.plan_ops(&job), vec![]);
}

/// A stopped run puts what its new directories received in place (the
/// files stored so far), records it, and leaves no temporary directory;
/// the next run uploads the rest.
#[test]
fn a_stopped_run_puts_what_it_stored_in_place() {
    let f = faulty();
    for i in 0..30 {
        write(
            &f.env.local,
            &format!("n{}/f{i:02}.txt", i % 2),
            format!("{i}\n"),
        );
    }
    f.proxy
        .add_rule(Rule::new("STOR", Action::Delay(Duration::from_millis(150))));
    let job = f.env.job("push", false, "concurrency: 2\n");
    let child = spawn(&f.env, &["run", job.to_str().unwrap()]);
    let start = Instant::now();
    while count(&f.proxy.commands(), "STOR ") < 6 {
        assert!(start.elapsed() < Duration::from_secs(20), "too few uploads");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "INT");
    let (code, out, _) = finish(child, Duration::from_secs(20));
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("0 abandoned in flight"), "{out}");
    no_temp_files(&f.env.remote_disk);
    let done = snapshot(&f.env.remote_disk)
        .values()
        .filter(|v| v.is_some())
        .count();
    assert!((4..30).contains(&done), "{done} files in place:\n{out}");
    // What is in place is recorded: only the rest is left to upload.
    let ops = f.env.plan_ops(&job);
    let uploads = ops.iter().filter(|(op, _)| op == "upload").count();
    assert_eq!(uploads, 30 - done, "{ops:?}");
    assert!(
        ops.iter().all(|(op, _)| op == "upload" || op == "mkdir"),
        "{ops:?}"
    );
    f.proxy.clear_rules();
    let out = f.env.run(&job, 0);
    assert!(
        out.stdout.contains(&format!("{} uploaded", 30 - done)),
        "{}",
        out.all()
    );
    assert_same_tree(&f.env.local, &f.env.remote_disk);
}

/// The listing that checks a new directory is untrusted like any other: a
/// name that could reach outside it is never sent back, and the directory
/// is not put in place on a listing that cannot be read in full.
#[test]
fn a_hostile_listing_of_the_new_directory_is_refused() {
    for forged in [
        &b"type=file;size=2;modify=20240101000000; a.txt\r\ntype=file;size=1;modify=20240101000000; ../../evil\r\n"[..],
        &b"type=file;size=2;modify=20240101000000; a.txt\r\nnot a listing line\r\n"[..],
    ] {
        let f = faulty();
        write(&f.env.local, "new/a.txt", "a\n");
        // The scan's listing of the root passes; the check's is forged.
        f.proxy.add_rule(
            Rule::new("MLSD", Action::ReplaceData(forged.to_vec()))
                .skip(1)
                .times(1),
        );
        let job = f.env.job("push", false, "");
        let out = f.env.run(&job, 1);
        assert_eq!(out.failed().len(), 1, "{}", out.all());
        assert!(out.failed()[0].contains("new/a.txt"), "{}", out.all());
        let cmds = f.proxy.commands();
        assert!(!cmds.iter().any(|c| c.contains("..")), "{cmds:#?}");
        assert_eq!(count(&cmds, "RNFR "), 0, "{cmds:#?}");
        assert!(!f.env.remote_disk.join("new").exists());
        no_temp_files(&f.env.remote_disk);
        f.proxy.clear_rules();
        f.env.run(&job, 0);
        assert_same_tree(&f.env.local, &f.env.remote_disk);
    }
}
