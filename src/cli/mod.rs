//! The pieces of the command line that are more than argument parsing.

pub mod adopt;
pub mod demo;
pub mod init;
pub mod logging;
pub mod oneoff;
pub mod out;
pub mod plan;
pub mod progress;
pub mod run;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ftpsync::error::Error;
use ftpsync::job::Job;

use oneoff::OneOffArgs;

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `-q` for the places that print without a [`Ui`] at hand (set once, by
/// [`Ui::install`]).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Loads a job file and prints its warnings (not under `-q`).
pub fn load(path: &Path) -> Result<Job, Error> {
    let job = Job::load(path)?;
    if !QUIET.load(Ordering::Relaxed) {
        for w in &job.warnings {
            out::eprint_line(&format!("warning: {w}"));
        }
    }
    Ok(job)
}

/// The jobs of `plan`, `run` and `validate`, in order: the one-off job, or
/// each job file, directories giving their `*.yaml`/`*.yml` files in name
/// order. A job file that does not load is its error, in its place.
pub fn load_all(paths: &[PathBuf], one_off: &OneOffArgs) -> Result<Vec<Result<Job, Error>>, Error> {
    if let Some((direction, local, url)) = one_off.given() {
        return Ok(vec![Ok(oneoff::job(direction, local, url)?)]);
    }
    Ok(job_files(paths)
        .into_iter()
        .map(|f| f.and_then(|f| load(&f)))
        .collect())
}

/// The job files named by `paths` (see [`load_all`]); an empty or
/// unreadable directory is an error in its place.
pub fn job_files(paths: &[PathBuf]) -> Vec<Result<PathBuf, Error>> {
    let mut files = Vec::new();
    for p in paths {
        if !p.is_dir() {
            files.push(Ok(p.clone()));
            continue;
        }
        match ftpsync::daemon::job_files(std::slice::from_ref(p)) {
            Ok(found) if found.is_empty() => files.push(Err(Error::Usage(format!(
                "{}: no *.yaml or *.yml job files in this directory",
                p.display()
            )))),
            Ok(found) => files.extend(found.into_iter().map(Ok)),
            Err(e) => files.push(Err(e)),
        }
    }
    files
}

/// `--color`: whether diagnostics and progress use ANSI colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Only when stderr is a terminal and `NO_COLOR` is unset.
    Auto,
    Always,
    Never,
}

/// What the person (or pipeline) asked to see, shared by every command.
#[derive(Clone, Copy, Debug)]
pub struct Ui {
    /// `-v` count.
    pub verbose: u8,
    /// `-q`: only errors.
    pub quiet: bool,
    pub color: ColorChoice,
}

impl Ui {
    /// Makes `-q` known to the helpers that print without a `Ui` ([`load`]).
    pub fn install(&self) {
        QUIET.store(self.quiet, Ordering::Relaxed);
    }

    /// Whether stderr gets ANSI codes.
    pub fn ansi_stderr(&self) -> bool {
        match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none()
            }
        }
    }
}

/// The options of one `ftpsync run`.
#[derive(Clone, Debug)]
pub struct RunArgs {
    pub force_delete: bool,
    pub grace: Duration,
    /// `--json`: one JSON object per line on stdout instead of the text summary.
    pub json: bool,
    /// `--report FILE`: the final summary as JSON, written also on failure.
    pub report: Option<PathBuf>,
    /// `--bwlimit`: bytes per second, overriding the job's `bwlimit`.
    pub bwlimit: Option<u64>,
}
