//! The pieces of the command line that are more than argument parsing.

pub mod adopt;
pub mod demo;
pub mod logging;
pub mod progress;
pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ftpsync::error::Error;
use ftpsync::job::Job;

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Loads a job file and prints its warnings.
pub fn load(path: &Path) -> Result<Job, Error> {
    let job = Job::load(path)?;
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    Ok(job)
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
