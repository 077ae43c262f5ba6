//! The `ftpsync` command line: parses arguments, calls the library, renders
//! errors and sets the exit code. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use ftpsync::error::{Error, exit};
use std::time::Duration;

use ftpsync::engine::{self};
use ftpsync::serve;

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
    /// Check job files and print what each resolves to, as a job file.
    Validate {
        /// Job files, or directories of *.yaml job files.
        #[arg(required = true)]
        jobs: Vec<PathBuf>,
    },
    /// Show what a run would do, and why. Changes nothing.
    Plan {
        /// Job files, or directories of *.yaml job files, planned in order.
        #[arg(required_unless_present_any = ["push", "pull"], conflicts_with_all = ["push", "pull"])]
        jobs: Vec<PathBuf>,
        #[command(flatten)]
        one_off: OneOffArgs,
        /// Machine-readable output (schema in the README).
        #[arg(long)]
        json: bool,
        /// Preview a run with --force-delete.
        #[arg(long)]
        force_delete: bool,
        /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on any error.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Run the jobs in order: scan, plan, execute, record. The first
    /// SIGINT/SIGTERM stops a run gracefully (and the jobs after it do not
    /// start); a second one abandons what is in flight.
    Run {
        /// Job files, or directories of *.yaml job files, run in order.
        #[arg(required_unless_present_any = ["push", "pull"], conflicts_with_all = ["push", "pull"])]
        jobs: Vec<PathBuf>,
        #[command(flatten)]
        one_off: OneOffArgs,
        /// Allow more deletes than safety.max_delete, for this run only.
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
    /// Write a commented job file for --push or --pull LOCAL URL (never overwrites).
    #[command(group(clap::ArgGroup::new("target").args(["push", "pull"]).required(true)))]
    Init {
        /// The job file to write.
        file: PathBuf,
        #[command(flatten)]
        target: OneOffArgs,
        /// Also remove on the target what the source no longer has.
        #[arg(long)]
        delete: bool,
        /// The environment variable that will hold the password.
        #[arg(long, default_value = "FTP_PASSWORD")]
        password_env: String,
    },
    /// Print a shell completion script (e.g. `ftpsync completions bash > /etc/bash_completion.d/ftpsync`).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff; e.g. `ftpsync man | man -l -`).
    Man,
    /// Print the JSON Schema of the job file, for editors.
    Schema,
}

mod cli;

use cli::demo::demo;
use cli::logging::init_logging;
use cli::oneoff::OneOffArgs;
use cli::out::{Stdout, eprint_line};
use cli::run::{not_loaded, run_job};
use cli::{ColorChoice, LogFormat, RunArgs, Ui, load, load_all};

/// One malloc arena for the whole process instead of glibc's default of
/// up to eight a core: every thread that allocates (the runtime's workers,
/// the blocking pool's scan and SQLite threads) otherwise gets an arena of
/// its own, and the memory freed in one is not reused by another. The
/// threads here mostly wait on the network or the disk, so they hardly
/// contend for one. A no-op re-run of 100,000 files peaked 6 MiB lower.
/// `MALLOC_ARENA_MAX` in the environment still decides when it is set.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; it is
        // called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Under --detailed-exitcode, 2 means "changes": a usage error must not say so.
            let detailed = std::env::args_os().any(|a| a == "--detailed-exitcode");
            let code = match e.exit_code() {
                0 => exit::OK,
                _ if detailed => exit::PLAN_ERROR,
                _ => exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let detailed = matches!(
        cli.command,
        Command::Plan {
            detailed_exitcode: true,
            ..
        }
    );
    let ui = Ui {
        verbose: cli.verbose,
        quiet: cli.quiet,
        color: cli.color,
    };
    ui.install();
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
            eprint_line(&format!("ftpsync: cannot start: {e}"));
            return ExitCode::from(if detailed {
                exit::PLAN_ERROR
            } else {
                exit::USAGE
            } as u8);
        }
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprint_line(&format!("ftpsync: error: {e}"));
            if detailed {
                exit::PLAN_ERROR
            } else {
                e.exit_code()
            }
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
    let mut out = Stdout::default();
    match cli.command {
        Command::Validate { jobs } => cli::validate::validate(cli::job_files(&jobs), &ui, &mut out),
        Command::Plan {
            jobs,
            one_off,
            json,
            force_delete,
            detailed_exitcode,
        } => {
            let args = cli::plan::PlanArgs {
                json,
                force_delete,
                detailed: detailed_exitcode,
            };
            cli::plan::plan(load_all(&jobs, &one_off)?, &args, &ui, &mut out).await
        }
        Command::Run {
            jobs,
            one_off,
            force_delete,
            grace,
            json,
            report,
            bwlimit,
        } => {
            let jobs = load_all(&jobs, &one_off)?;
            if report.is_some() && jobs.len() > 1 {
                return Err(Error::Usage(
                    "--report takes one job (each run would replace the file)".into(),
                ));
            }
            let args = RunArgs {
                force_delete,
                grace,
                json,
                report,
                bwlimit,
            };
            let several = jobs.len() > 1;
            let mut code = exit::OK;
            for job in jobs {
                let c = match job {
                    Ok(j) => match run_job(&j, &args, &ui).await {
                        Ok(c) => c,
                        Err(e) if several => {
                            eprint_line(&format!("ftpsync: error: {}: {e}", j.file.display()));
                            e.exit_code()
                        }
                        Err(e) => return Err(e),
                    },
                    // With --json/--report, a job that does not load still
                    // gets its summary.
                    Err(e) => {
                        let e = match not_loaded(e, &args, &ui) {
                            Err(e) => e,
                            Ok(c) => return Ok(c),
                        };
                        eprint_line(&format!("ftpsync: error: {e}"));
                        e.exit_code()
                    }
                };
                code = exit::worst(code, c);
                if c >= exit::SIGNAL_BASE {
                    // Stopped by a signal: the jobs after it do not start.
                    break;
                }
            }
            Ok(code)
        }
        Command::Adopt { job } => cli::adopt::adopt_job(&load(&job)?).await,
        Command::Init {
            file,
            target,
            delete,
            password_env,
        } => {
            let Some((direction, local, url)) = target.given() else {
                return Err(Error::Usage("init needs --push or --pull LOCAL URL".into()));
            };
            cli::init::init(&cli::init::InitArgs {
                file: &file,
                direction,
                local,
                url,
                delete,
                password_env: &password_env,
            })?;
            if !ui.quiet {
                out.print(&format!(
                    "wrote {0}; check it with `ftpsync validate {0}`, then `ftpsync plan {0}`\n",
                    file.display()
                ))?;
            }
            Ok(exit::OK)
        }
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ftpsync", &mut text);
            out.print(&String::from_utf8_lossy(&text))?;
            Ok(exit::OK)
        }
        Command::Man => {
            let mut text = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut text)
                .map_err(|e| Error::Io(format!("man page: {e}")))?;
            out.print(&String::from_utf8_lossy(&text))?;
            Ok(exit::OK)
        }
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&ftpsync::job::schema())
                .map_err(|e| Error::Io(format!("schema: {e}")))?;
            out.print(&format!("{schema}\n"))?;
            Ok(exit::OK)
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
            eprint_line(&format!(
                "serving {} on ftp://{user}@{addr}/ (Ctrl-C to stop)",
                root.display()
            ));
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
            if !ui.quiet {
                out.print(&ftpsync::daemon::schedule::schedule_text(
                    &entries,
                    chrono::Utc::now(),
                    count,
                ))?;
            }
            Ok(exit::OK)
        }
        Command::History { job, json, count } => {
            let j = load(&job)?;
            let runs = engine::history(&j, count).await?;
            if json {
                out.print(&format!("{}\n", ftpsync::history::history_json(&runs)))?;
            } else if !ui.quiet {
                out.print(&ftpsync::history::history_text(&j.name, &runs))?;
            }
            Ok(exit::OK)
        }
    }
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    ftpsync::job::parse_duration(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
