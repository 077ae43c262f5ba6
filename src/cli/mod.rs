//! The pieces of the command line that are more than argument parsing.

pub mod demo;
pub mod logging;
pub mod run;

use std::path::Path;

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
