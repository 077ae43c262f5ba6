//! Adoption on a first run against a server that already holds the tree:
//! LIST-only with day-precision dates (vsftpd, files older than six months),
//! a server listing local time (vsftpd `use_localtime=YES`, TZ UTC+5),
//! server times shifted as by a clock that is off, MLSD (pyftpdlib), and a
//! tree put there by `lftp mirror -R`. Every identical file is adopted and
//! nothing is uploaded but the one file that really differs (same size,
//! other content, a time that agrees with nothing).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::harness::{Env, assert_same_tree, sample_tree, write};
use crate::support::servers::{
    ExternalServer, start_pyftpdlib, start_vsftpd, start_vsftpd_localtime,
};

/// One file of the deployment: where, what, and its local time (Unix seconds).
struct File {
    path: &'static str,
    content: Vec<u8>,
    mtime: i64,
}

const DAY: i64 = 86_400;

/// Files older than six months (LIST: `Jan 01  2020`, a day), recent ones
/// (LIST: `Nov 28 09:10`, a minute), with different times.
fn deployment() -> Vec<File> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let f = |path, content: &str, mtime| File {
        path,
        content: content.as_bytes().to_vec(),
        mtime,
    };
    vec![
        f("a.txt", "alpha\n", 1_577_840_461), // 2020-01-01 01:01:01
        f("old/b.txt", "bravo bravo\n", 1_560_594_030), // 2019-06-15 10:20:30
        File {
            path: "old/c.bin",
            content: (0..1000u32).map(|i| (i * 7) as u8).collect(),
            mtime: 1_614_834_367, // 2021-03-04 05:06:07
        },
        f("new/d.txt", "delta\n", now - 2 * DAY - 17),
        f("new/e.txt", "echo echo echo\n", now - 3 * DAY - 4242),
    ]
}

/// The file that differs: same size on both sides, other content, and a
/// server time two days older than the local one.
const DIFFERS: &str = "differs.txt";

fn set_mtime(path: &Path, secs: i64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs as u64))
        .unwrap();
}

/// The deployment with [`DIFFERS`] (its local side).
fn files() -> Vec<File> {
    let mut files = deployment();
    files.push(File {
        path: DIFFERS,
        content: b"version: local\n".to_vec(),
        mtime: files[3].mtime - DAY,
    });
    files
}

/// Writes the files on the server's disk, `shift` seconds later than the
/// local ones; [`DIFFERS`] with other content, two days older.
fn seed_remote(server: &ExternalServer, shift: i64) {
    for f in files() {
        let (content, at) = if f.path == DIFFERS {
            (b"version: other\n".to_vec(), f.mtime - 2 * DAY)
        } else {
            (f.content.clone(), f.mtime + shift)
        };
        server.write_remote_file(f.path, &content);
        set_mtime(&server.disk_root.join(f.path), at);
    }
}

fn seed_local(local: &Path) {
    for f in files() {
        write(local, f.path, &f.content);
        set_mtime(&local.join(f.path), f.mtime);
    }
}

/// The plan's items as (op, path, reason).
fn plan_items(env: &Env, job: &Path) -> Vec<(String, String, String)> {
    let v = env.plan_json(job);
    let mut items: Vec<(String, String, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            (s("op"), s("path"), s("reason"))
        })
        .collect();
    items.sort();
    items
}

/// Every file of the deployment adopted with `reason`, its directories
/// adopted, and only [`DIFFERS`] uploaded.
fn expected(reason: &str) -> Vec<(String, String, String)> {
    let mut want: Vec<(String, String, String)> = deployment()
        .iter()
        .map(|f| ("adopt".into(), f.path.into(), reason.into()))
        .collect();
    for d in ["new", "old"] {
        want.push(("adopt".into(), d.into(), "identical".into()));
    }
    want.push(("upload".into(), DIFFERS.into(), "differs".into()));
    want.sort();
    want
}

/// The inode of each deployment file on the server's disk: a transfer
/// (temporary file, then rename) gives a new one.
fn inodes(root: &Path) -> BTreeMap<&'static str, u64> {
    deployment()
        .iter()
        .map(|f| (f.path, std::fs::metadata(root.join(f.path)).unwrap().ino()))
        .collect()
}

/// Seeds the server `shift` seconds off, then checks the first plan (exact
/// items, and `learned` among its lines), that the run transfers only
/// [`DIFFERS`], and that the next plan is empty.
fn first_run_adopts(server: Option<ExternalServer>, shift: i64, reason: &str, learned: &[&str]) {
    let Some(server) = server else { return };
    seed_remote(&server, shift);
    let env = Env::external(server);
    seed_local(&env.local);
    let job = env.job("push", false, "");
    let text = env.ftpsync(&["plan", job.to_str().unwrap()]);
    assert_eq!(text.code, 0, "{}", text.all());
    let adoption: Vec<&str> = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("adoption: "))
        .collect();
    assert_eq!(adoption, learned, "{}", text.stdout);
    assert_eq!(plan_items(&env, &job), expected(reason), "{}", text.stdout);
    let before = inodes(&env.remote_disk);
    env.run(&job, 0);
    assert_eq!(
        inodes(&env.remote_disk),
        before,
        "an identical file was re-sent"
    );
    assert_eq!(
        std::fs::read(env.remote_disk.join(DIFFERS)).unwrap(),
        b"version: local\n"
    );
    assert_same_tree(&env.local, &env.remote_disk);
    assert_eq!(env.plan_ops(&job), vec![]);
}

/// vsftpd lists only LIST, with a day for files older than six months:
/// MDTM gives their seconds, and times that agree adopt them.
#[test]
fn vsftpd_list_with_days() {
    first_run_adopts(
        start_vsftpd(),
        0,
        "identical",
        &[
            "adoption: asked MDTM for 6 files (the listing gives only minutes or days); 5 of 6 same-size files adopted by time",
        ],
    );
}

/// vsftpd with `use_localtime=YES` in UTC+5 lists (and MDTMs) local time.
#[test]
fn vsftpd_local_time() {
    first_run_adopts(
        start_vsftpd_localtime("<+05>-5"),
        0,
        "same_time_offset",
        &[
            "adoption: server reports local time, UTC+5 (5 of 6 same-size files agree)",
            "adoption: asked MDTM for 6 files (the listing gives only minutes or days); 5 of 6 same-size files adopted by time",
        ],
    );
}

/// The server's copies are all 3 min 12 s later than the local ones (what a
/// server whose clock is off reports; the files' times on its disk are
/// shifted to make one): learned from the MDTM times.
#[test]
fn vsftpd_clock_off() {
    first_run_adopts(
        start_vsftpd(),
        192,
        "same_time_offset",
        &[
            "adoption: server clock is 3 min 12 s ahead (5 of 6 same-size files agree)",
            "adoption: asked MDTM for 6 files (the listing gives only minutes or days); 5 of 6 same-size files adopted by time",
        ],
    );
}

/// MLSD gives seconds in UTC: adopted as listed, no MDTM asked.
#[test]
fn pyftpdlib_mlsd() {
    first_run_adopts(start_pyftpdlib(), 0, "identical", &[]);
}

/// MLSD with the server's times 4 min behind.
#[test]
fn pyftpdlib_clock_off() {
    first_run_adopts(
        start_pyftpdlib(),
        -240,
        "same_time_offset",
        &["adoption: server clock is 4 min behind (5 of 6 same-size files agree)"],
    );
}

/// `ftpsync adopt` records the same adoption without transferring anything;
/// the next plan has only the file that differs.
#[test]
fn adopt_command_on_local_time_server() {
    let Some(server) = start_vsftpd_localtime("<-0330>3:30") else {
        return;
    };
    seed_remote(&server, 0);
    let env = Env::external(server);
    seed_local(&env.local);
    let job = env.job("push", false, "");
    let plan = env.ftpsync(&["plan", job.to_str().unwrap()]);
    assert!(
        plan.stdout
            .lines()
            .any(|l| l
                == "adoption: server reports local time, UTC−3:30 (5 of 6 same-size files agree)"),
        "{}",
        plan.stdout
    );
    let before = inodes(&env.remote_disk);
    let out = env.ftpsync(&["adopt", job.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(
            "test: 5 files adopted (5 by size and time, 0 by the server's hash), 1 items left"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(inodes(&env.remote_disk), before);
    assert_eq!(
        env.plan_ops(&job),
        vec![("upload".to_string(), DIFFERS.to_string())]
    );
}

/// Every file under `root` and its inode.
fn all_inodes(root: &Path) -> BTreeMap<String, u64> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            (rel, e.metadata().unwrap().ino())
        })
        .collect()
}

/// An existing deployment made by `lftp -e 'mirror -R'` (with `settings`
/// before it): ftpsync's first push re-sends nothing.
fn switch_from_lftp(server: Option<ExternalServer>, settings: &str) {
    let Some(server) = server else { return };
    let env = Env::external(server);
    sample_tree(&env.local);
    seed_local(&env.local);
    let script = format!(
        "set ftp:ssl-allow false; set net:max-retries 1; {settings} \
         open -u {},{} -p {} 127.0.0.1; mirror -R --no-perms {} {}",
        env.user,
        env.password(),
        env.port,
        env.local.display(),
        env.remote_root,
    );
    let lftp = Command::new("lftp")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        lftp.status.success(),
        "lftp failed: {}",
        String::from_utf8_lossy(&lftp.stderr)
    );
    assert_same_tree(&env.local, &env.remote_disk);
    let job = env.job("push", false, "");
    let items = plan_items(&env, &job);
    let not_adopted: Vec<_> = items.iter().filter(|(op, _, _)| op != "adopt").collect();
    let log = env.server_log();
    let set_times: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("MDTM") || l.contains("MFMT") || l.contains("SITE"))
        .collect();
    assert_eq!(
        not_adopted,
        Vec::<&(String, String, String)>::new(),
        "{set_times:#?}"
    );
    assert_eq!(items.len(), 23, "{items:?}");
    let before = all_inodes(&env.remote_disk);
    env.run(&job, 0);
    assert_eq!(
        all_inodes(&env.remote_disk),
        before,
        "something was re-sent"
    );
    assert_eq!(env.plan_ops(&job), vec![]);
}

/// vsftpd: lftp keeps times with vsftpd's two-argument MDTM, once told to
/// use it rather than `SITE UTIME`, which vsftpd does not have (by default
/// lftp leaves the upload times there, which nothing can match by time).
#[test]
fn switch_from_lftp_vsftpd() {
    switch_from_lftp(
        start_vsftpd(),
        "set ftp:use-site-utime false; set ftp:use-site-utime2 false; \
         set ftp:use-mdtm-overloaded true;",
    );
}

/// pyftpdlib: lftp keeps times with MFMT.
#[test]
fn switch_from_lftp_pyftpdlib() {
    switch_from_lftp(start_pyftpdlib(), "");
}
