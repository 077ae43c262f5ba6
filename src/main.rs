//! The `ftpsync` command line: parses arguments, calls the library, renders
//! errors and sets the exit code. Nothing else lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ftpsync::error::{Error, exit};
use ftpsync::job::Job;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use ftpsync::engine::{self, RunOptions};
use ftpsync::job::{PasswordSource, Secret};
use ftpsync::{report, serve};

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
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Run the job: scan, plan, execute, record. The first SIGINT/SIGTERM
    /// stops it gracefully; a second one abandons what is in flight.
    Run {
        job: PathBuf,
        /// Allow more deletes than safety.max_delete, and deletes below
        /// directories that list as empty where files were synced, for this run only.
        #[arg(long)]
        force_delete: bool,
        /// After a stop signal, how long transfers in flight may take to finish.
        #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
        grace: Duration,
    },
    /// Run every job that has a `schedule:`, on time, until SIGTERM/SIGINT.
    /// SIGHUP re-reads the job files.
    Daemon {
        /// Job files, or directories of *.yaml job files.
        #[arg(default_value = "jobs")]
        paths: Vec<PathBuf>,
        /// Runs at once (default: the number of jobs, at most 4).
        #[arg(long)]
        max_parallel_jobs: Option<usize>,
        /// After SIGTERM/SIGINT, how long running jobs get to stop.
        #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
        grace: Duration,
        /// Serve /healthz and /metrics on this address (e.g. 127.0.0.1:9464).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print each job's next run times, in its zone and in UTC.
    Schedule {
        #[arg(required = true)]
        jobs: Vec<PathBuf>,
        /// How many run times to print per job.
        #[arg(short = 'n', long, default_value_t = 5)]
        count: usize,
    },
    /// Print what the job's runs did, newest first.
    History {
        job: PathBuf,
        /// JSON array of runs (schema in the README).
        #[arg(long)]
        json: bool,
        /// How many runs to print.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
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

fn init_logging(verbose: u8, format: LogFormat, daemon: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn};
    let default = match verbose {
        // The daemon has no summary on stdout: its log says what each run did.
        0 if daemon => "info,libunftp=off",
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
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            // Colour only for a person at a terminal, never in files or journals.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .boxed(),
        // One object per line; the daemon's job span puts `job` on every one.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed(),
    };
    let layer = fmt.with_filter(filter).with_filter(no_wire_trace);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        cli.log_format,
        matches!(cli.command, Command::Daemon { .. }),
    );
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
    // A blocking task of a stopped run (a local scan, hashing) must not
    // keep the process alive after the work is over.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
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
            if let Some(s) = &j.schedule {
                println!("  schedule:    {} ({})", s.expr(), s.zone_name());
            }
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
            let prepared = engine::prepare(&j, false, force_delete).await?;
            if json {
                println!("{}", report::plan_json(&prepared));
            } else {
                print!("{}", report::plan_text(&prepared));
            }
            prepared.pool.close().await;
            Ok(exit::OK)
        }
        Command::Run {
            job,
            force_delete,
            grace,
        } => {
            let j = load(&job)?;
            let code = run_job(&j, force_delete, grace, cli.verbose > 0).await?;
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
        Command::Daemon {
            paths,
            max_parallel_jobs,
            grace,
            listen,
        } => {
            ftpsync::daemon::run(ftpsync::daemon::DaemonOptions {
                paths,
                max_parallel_jobs,
                grace,
                listen,
            })
            .await
        }
        Command::Schedule { jobs, count } => {
            let mut loaded = Vec::new();
            for path in &jobs {
                let j = load(path)?;
                if j.schedule.is_none() {
                    return Err(Error::Usage(format!(
                        "{}: job {} has no schedule",
                        path.display(),
                        j.name
                    )));
                }
                loaded.push(j);
            }
            let entries: Vec<_> = loaded
                .iter()
                .filter_map(|j| Some((j.name.as_str(), j.schedule.as_ref()?, j.jitter)))
                .collect();
            print!(
                "{}",
                ftpsync::daemon::schedule::schedule_text(&entries, chrono::Utc::now(), count)
            );
            Ok(exit::OK)
        }
        Command::History { job, json, count } => {
            let j = load(&job)?;
            let runs = engine::history(&j, count).await?;
            if json {
                println!("{}", ftpsync::history::history_json(&runs));
            } else {
                print!("{}", ftpsync::history::history_text(&j.name, &runs));
            }
            Ok(exit::OK)
        }
    }
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    ftpsync::job::parse_duration(s)
}

/// Watches SIGINT and SIGTERM for one run: the first fires `stop` and
/// stores the signal's number in `got`; the second fires `abort`.
fn watch_signals(
    stop: CancellationToken,
    abort: CancellationToken,
    got: Arc<AtomicI32>,
    grace: Duration,
) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        for n in 0.. {
            let (name, number) = tokio::select! {
                _ = int.recv() => ("SIGINT", 2),
                _ = term.recv() => ("SIGTERM", 15),
            };
            if n == 0 {
                got.store(number, Ordering::Relaxed);
                eprintln!(
                    "ftpsync: {name}: stopping; transfers in flight get {grace:?} to finish (send it again to abort them now)"
                );
                stop.cancel();
            } else {
                eprintln!("ftpsync: {name} again: abandoning transfers in flight");
                abort.cancel();
                return;
            }
        }
    })
}

/// `ftpsync run`: one run of the engine, with signals, and its report.
async fn run_job(
    j: &Job,
    force_delete: bool,
    grace: Duration,
    verbose: bool,
) -> Result<i32, Error> {
    let stop = CancellationToken::new();
    let opts = RunOptions {
        force_delete,
        grace,
        ..RunOptions::default()
    };
    let watcher = watch_signals(
        stop.clone(),
        opts.abort.clone(),
        Arc::clone(&opts.stop_signal),
        grace,
    );
    let finished = engine::run(j, &opts, stop).await;
    watcher.abort();
    let report = finished.report?;
    for p in &report.problems {
        eprintln!("warning: {}: {}", p.path, p.message);
    }
    for u in &report.skipped_untrusted {
        eprintln!("warning: skipped {u}/: its listing failed, nothing below it was changed");
    }
    print!(
        "{}",
        report::run_text(&j.name, j.direction, &report, verbose)
    );
    if let Some(stop) = report::stop_text(&report) {
        eprintln!("ftpsync: {stop}");
    }
    Ok(finished.record.exit_code)
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
    let job_path = work.path().join("demo.yaml");
    std::fs::write(
        &job_path,
        format!(
            "name: demo\ndirection: push\ndelete: true\nlocal:\n  path: local\nremote:\n  host: 127.0.0.1\n  port: {}\n  user: demo\n  root: /www\nstate: demo.db\n",
            server.addr.port()
        ),
    )
    .map_err(io)?;
    let mut job = load(&job_path)?;
    // The password goes to the job in memory, never into a file or the environment.
    job.remote.password = PasswordSource::Inline(Secret::new(password));
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
    let code = run_job(&job, false, Duration::from_secs(30), true).await?;
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
        run_job(&job, false, Duration::from_secs(30), true).await?;
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
    let prepared = engine::prepare(job, false, false).await?;
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
