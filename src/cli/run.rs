//! `ftpsync run` for one job: signals, the engine, and what is printed
//! about the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use ftpsync::engine::{self, RunOptions};
use ftpsync::error::Error;
use ftpsync::job::Job;
use ftpsync::report;

use super::{RunArgs, Ui};

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
pub async fn run_job(j: &Job, args: &RunArgs, ui: &Ui) -> Result<i32, Error> {
    if args.json || args.report.is_some() {
        return Err(Error::Usage(
            "--json and --report are not implemented yet".into(),
        ));
    }
    let (force_delete, grace, verbose) = (args.force_delete, args.grace, ui.verbose > 0);
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
    if !ui.quiet {
        // A closed stdout (`| head`) does not change the run's outcome.
        let _ = super::out::Stdout::default().print(&report::run_text(
            &j.name,
            j.direction,
            &report,
            verbose,
        ));
    }
    if let Some(stop) = report::stop_text(&report) {
        eprintln!("ftpsync: {stop}");
    }
    Ok(finished.record.exit_code)
}
