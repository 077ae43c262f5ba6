//! The `ftpsync` command line: parses arguments, calls the library, renders
//! errors and sets the exit code. Nothing else lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ftpsync::error::{Error, exit};
use ftpsync::job::Job;
use ftpsync::{report, serve, state, sync};

#[derive(Parser)]
#[command(
    name = "ftpsync",
    version,
    about = "Mirror directory trees between a local disk and FTP/FTPS servers"
)]
struct Cli {
    /// More output (-v: every item; -vv: protocol debugging).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a job file and print what it resolves to.
    Validate { job: PathBuf },
    /// Show what a run would do, and why. Changes nothing.
    Plan {
        job: PathBuf,
        /// Machine-readable output (schema in the README).
        #[arg(long)]
        json: bool,
        /// Preview a run with --force-delete.
        #[arg(long)]
        force_delete: bool,
    },
    /// Run the job: scan, plan, execute, record.
    Run {
        job: PathBuf,
        /// Allow more deletes than safety.max_delete, and deletes below
        /// directories that list as empty where files were synced, for this run only.
        #[arg(long)]
        force_delete: bool,
    },
    /// Serve a directory over FTP (the built-in libunftp server).
    Serve {
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "127.0.0.1:2121")]
        listen: String,
        #[arg(long, default_value = "demo")]
        user: String,
        /// Name of the environment variable that holds the password.
        #[arg(long)]
        password_env: String,
    },
    /// Try ftpsync: serve a temporary directory on loopback and mirror a sample site into it.
    Demo {
        /// Directory to publish (default: examples/site, or a generated sample).
        #[arg(long)]
        source: Option<PathBuf>,
    },
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn};
    let default = match verbose {
        0 => "warn,libunftp=off",
        1 => "info,libunftp=off",
        _ => "debug,libunftp=info",
    };
    let filter = EnvFilter::try_from_env("FTPSYNC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // suppaftp traces every command it sends, PASS included: never let that
    // through, whatever FTPSYNC_LOG asks for (a cap, not a level of its own).
    let no_wire_trace = filter_fn(|meta| {
        !(meta.target().starts_with("suppaftp") && *meta.level() == tracing::Level::TRACE)
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter)
        .with_filter(no_wire_trace);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ftpsync: cannot start: {e}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ftpsync: error: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

fn load(path: &Path) -> Result<Job, Error> {
    let job = Job::load(path)?;
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    Ok(job)
}

async fn dispatch(cli: Cli) -> Result<i32, Error> {
    match cli.command {
        Command::Validate { job } => {
            let j = load(&job)?;
            println!("{}: ok", job.display());
            println!("  name:        {}", j.name);
            println!("  direction:   {:?}, delete: {}", j.direction, j.delete);
            println!("  local:       {}", j.local_root.display());
            println!(
                "  remote:      {}@{}:{}{} (tls: {:?})",
                j.remote.user, j.remote.host, j.remote.port, j.remote.root, j.remote.tls
            );
            println!("  state:       {}", j.state_path.display());
            if let Err(m) = j.remote.password() {
                println!("  warning:     {m}");
            }
            Ok(exit::OK)
        }
        Command::Plan {
            job,
            json,
            force_delete,
        } => {
            let j = load(&job)?;
            let prepared = sync::prepare(&j, false, force_delete).await?;
            if json {
                println!("{}", report::plan_json(&prepared));
            } else {
                print!("{}", report::plan_text(&prepared));
            }
            prepared.pool.close().await;
            Ok(exit::OK)
        }
        Command::Run { job, force_delete } => {
            let j = load(&job)?;
            let code = run_job(&j, force_delete, cli.verbose > 0).await?;
            Ok(code)
        }
        Command::Serve {
            root,
            listen,
            user,
            password_env,
        } => {
            let password = std::env::var(&password_env).map_err(|_| {
                Error::Usage(format!(
                    "--password-env: environment variable {password_env} is not set"
                ))
            })?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| Error::Usage(format!("--listen {listen}: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::Io(e.to_string()))?;
            eprintln!(
                "serving {} on ftp://{user}@{addr}/ (Ctrl-C to stop)",
                root.display()
            );
            let config = serve::ServeConfig {
                root,
                user,
                password,
                passive_ports: None,
                tls: None,
            };
            serve::serve(listener, config, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| Error::Io(format!("serve: {e}")))?;
            Ok(exit::OK)
        }
        Command::Demo { source } => demo(source).await,
    }
}

/// `ftpsync run`: lock, prepare, execute, report, within the job's deadline.
async fn run_job(j: &Job, force_delete: bool, verbose: bool) -> Result<i32, Error> {
    let lock = state::lock(&j.state_path)?;
    let result = match j.deadline {
        // Stopping drops the run's tasks; what finished is already queued for
        // the state writer, which commits it as it shuts down.
        Some(limit) => tokio::time::timeout(limit, run_locked(j, force_delete, verbose))
            .await
            .unwrap_or(Err(Error::Deadline(limit))),
        None => run_locked(j, force_delete, verbose).await,
    };
    drop(lock);
    result
}

async fn run_locked(j: &Job, force_delete: bool, verbose: bool) -> Result<i32, Error> {
    let prepared = sync::prepare(j, true, force_delete).await?;
    for p in prepared.problems() {
        eprintln!("warning: {}: {}", p.path, p.message);
    }
    let untrusted = !prepared.plan.skipped_untrusted.is_empty();
    for u in &prepared.plan.skipped_untrusted {
        eprintln!("warning: skipped {u}/: its listing failed, nothing below it was changed");
    }
    let direction = prepared.job.direction;
    let name = prepared.job.name.clone();
    let report = sync::run(prepared, sync::RunOptions { force_delete }).await?;
    print!("{}", report::run_text(&name, direction, &report, verbose));
    Ok(if report.failed().next().is_some() || untrusted {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

async fn demo(source: Option<PathBuf>) -> Result<i32, Error> {
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
    // SAFETY: set before any other thread reads the environment for this variable.
    unsafe { std::env::set_var("FTPSYNC_DEMO_PASSWORD", &password) };
    let job_path = work.path().join("demo.yaml");
    std::fs::write(
        &job_path,
        format!(
            "name: demo\ndirection: push\ndelete: true\nlocal:\n  path: local\nremote:\n  host: 127.0.0.1\n  port: {}\n  user: demo\n  password_env: FTPSYNC_DEMO_PASSWORD\n  root: /www\nstate: demo.db\n",
            server.addr.port()
        ),
    )
    .map_err(io)?;
    let job = load(&job_path)?;
    println!(
        "== built-in FTP server on {} serving {}",
        server.addr,
        server_root.display()
    );
    println!(
        "== job file {}:\n{}",
        job_path.display(),
        std::fs::read_to_string(&job_path).map_err(io)?
    );
    println!("== ftpsync plan (first run: everything is new)");
    show_plan(&job).await?;
    println!("== ftpsync run");
    let code = run_job(&job, false, true).await?;
    println!("== ftpsync plan (again: nothing to do)");
    show_plan(&job).await?;
    let edited = local.join("index.html");
    if edited.exists() {
        let mut text = std::fs::read_to_string(&edited).map_err(io)?;
        text.push_str("<p>edited by the demo</p>\n");
        std::fs::write(&edited, text).map_err(io)?;
        println!("== edited index.html locally; ftpsync plan");
        show_plan(&job).await?;
        println!("== ftpsync run");
        run_job(&job, false, true).await?;
    }
    let same = trees_equal(&local, &server_root.join("www")).map_err(io)?;
    println!(
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
    let prepared = sync::prepare(job, false, false).await?;
    print!("{}", report::plan_text(&prepared));
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
