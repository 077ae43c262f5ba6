//! `ftpsync demo`: the built-in server on loopback, a sample site, and a
//! plan, run, plan, edit, run sequence a new user can watch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ftpsync::engine;
use ftpsync::error::{Error, exit};
use ftpsync::job::{Job, PasswordSource, Secret};
use ftpsync::{report, serve};

use super::run::run_job;

/// A line of the demo on stdout; a closed stdout just ends the printing.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = super::out::Stdout::default().print(&format!("{}\n", format_args!($($arg)*)));
    }};
}
use super::{ColorChoice, RunArgs, Ui, load};

pub async fn demo(source: Option<PathBuf>) -> Result<i32, Error> {
    let io = |e: std::io::Error| Error::Io(e.to_string());
    let work = tempfile::Builder::new()
        .prefix("ftpsync-demo-")
        .tempdir()
        .map_err(io)?;
    let server_root = work.path().join("server");
    std::fs::create_dir_all(server_root.join("www")).map_err(io)?;
    let site = match source {
        Some(s) => s,
        None if Path::new("examples/site").is_dir() => PathBuf::from("examples/site"),
        None => {
            let s = work.path().join("site");
            std::fs::create_dir_all(s.join("css")).map_err(io)?;
            std::fs::write(s.join("index.html"), "<h1>Hello from ftpsync</h1>\n").map_err(io)?;
            std::fs::write(s.join("css/site.css"), "body { font-family: sans-serif }\n")
                .map_err(io)?;
            s
        }
    };
    let site = std::path::absolute(&site).map_err(io)?;
    // The demo copies the site so it can edit a file between runs without touching yours.
    let local = work.path().join("local");
    copy_tree(&site, &local).map_err(io)?;
    let password = format!("demo-{:08x}", rand::random::<u32>());
    let server = serve::spawn_loopback(serve::ServeConfig {
        root: server_root.clone(),
        user: "demo".into(),
        password: password.clone(),
        passive_ports: None,
        tls: None,
    })
    .await
    .map_err(io)?;
    let job_path = work.path().join("demo.yaml");
    std::fs::write(
        &job_path,
        format!(
            "name: demo\ndirection: push\ndelete: true\nlocal:\n  path: local\nremote:\n  host: 127.0.0.1\n  port: {}\n  user: demo\n  root: /www\nstate: demo.db\n# The built-in server has no SITE CHMOD.\npermissions: none\n",
            server.addr.port()
        ),
    )
    .map_err(io)?;
    let mut job = load(&job_path)?;
    // The password goes to the job in memory, never into a file or the environment.
    job.remote.password = PasswordSource::Inline(Secret::new(password));
    say!(
        "== built-in FTP server on {} serving {}",
        server.addr,
        server_root.display()
    );
    say!(
        "== job file {}:\n{}",
        job_path.display(),
        std::fs::read_to_string(&job_path).map_err(io)?
    );
    say!("== ftpsync plan (first run: everything is new)");
    show_plan(&job).await?;
    say!("== ftpsync run");
    let args = RunArgs {
        force_delete: false,
        grace: Duration::from_secs(30),
        json: false,
        report: None,
        bwlimit: None,
    };
    let ui = Ui {
        verbose: 1,
        quiet: false,
        color: ColorChoice::Auto,
    };
    let code = run_job(&job, &args, &ui).await?;
    say!("== ftpsync plan (again: nothing to do)");
    show_plan(&job).await?;
    let edited = local.join("index.html");
    if edited.exists() {
        let mut text = std::fs::read_to_string(&edited).map_err(io)?;
        text.push_str("<p>edited by the demo</p>\n");
        std::fs::write(&edited, text).map_err(io)?;
        say!("== edited index.html locally; ftpsync plan");
        show_plan(&job).await?;
        say!("== ftpsync run");
        run_job(&job, &args, &ui).await?;
    }
    let same = trees_equal(&local, &server_root.join("www")).map_err(io)?;
    say!(
        "== server copy {} the local tree",
        if same {
            "is byte-identical to"
        } else {
            "DIFFERS from"
        }
    );
    server.stop().await;
    Ok(if same && code == exit::OK {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

async fn show_plan(job: &Job) -> Result<(), Error> {
    let prepared = engine::prepare(job, false, false).await?;
    let _ = super::out::Stdout::default().print(&report::plan_text(&prepared));
    prepared.pool.close().await;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if ft.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

fn trees_equal(a: &Path, b: &Path) -> std::io::Result<bool> {
    let list = |p: &Path| -> std::io::Result<Vec<(PathBuf, Option<Vec<u8>>)>> {
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(p).sort_by_file_name().min_depth(1) {
            let e = e.map_err(std::io::Error::other)?;
            let rel = e.path().strip_prefix(p).unwrap_or(e.path()).to_path_buf();
            let content = if e.file_type().is_file() {
                Some(std::fs::read(e.path())?)
            } else {
                None
            };
            out.push((rel, content));
        }
        Ok(out)
    };
    Ok(list(a)? == list(b)?)
}
