//! The `ftpsync` command line: parses arguments, calls the library, renders
//! errors and sets the exit code. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ftpsync::error::{Error, exit};
use std::time::Duration;

use ftpsync::engine::{self};
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
    /// Only errors (a run with nothing to do prints nothing).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Colours on stderr: auto (a terminal without NO_COLOR), always, never.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    color: ColorChoice,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
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
        /// One JSON object per line on stdout (schema in the README).
        #[arg(long)]
        json: bool,
        /// Also write the final summary as JSON to FILE, on failure too.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Cap the transfer rate of the whole run, over all its connections
        /// (e.g. 2MiB/s, 500KiB/s); overrides the job's `bwlimit`.
        #[arg(long, value_name = "RATE", value_parser = ftpsync::job::parse_rate)]
        bwlimit: Option<u64>,
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
    /// Record an existing deployment in the state without transferring
    /// anything; files that differ are listed and left for the next run.
    Adopt { job: PathBuf },
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

mod cli;

use cli::demo::demo;
use cli::logging::init_logging;
use cli::run::run_job_file;
use cli::{ColorChoice, LogFormat, RunArgs, Ui, load};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = Ui {
        verbose: cli.verbose,
        quiet: cli.quiet,
        color: cli.color,
    };
    init_logging(
        &ui,
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

async fn dispatch(cli: Cli) -> Result<i32, Error> {
    let ui = Ui {
        verbose: cli.verbose,
        quiet: cli.quiet,
        color: cli.color,
    };
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
            json,
            report,
            bwlimit,
        } => {
            let args = RunArgs {
                force_delete,
                grace,
                json,
                report,
                bwlimit,
            };
            run_job_file(&job, &args, &ui).await
        }
        Command::Adopt { job } => cli::adopt::adopt_job(&load(&job)?).await,
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
