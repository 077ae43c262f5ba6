//! `ftpsync run` for one job: signals, the engine, and what is printed
//! about the run. Each thing is printed once: with `-v` the items on stdout
//! as they finish; warnings and errors on stderr; the summary (what needs a
//! person, then the counts) on stdout at the end. `--json` replaces all of
//! stdout with one JSON object per line; `--report FILE` also writes the
//! summary object to FILE, whatever the outcome. `-q` leaves only errors.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use ftpsync::engine::{self, Finished, RunOptions};
use ftpsync::error::{Error, exit};
use ftpsync::events::{Event, Events, Observer};
use ftpsync::job::{Direction, Job};
use ftpsync::plan::Reason;
use ftpsync::report::{self, Concern};

use super::progress::{self, Mode};
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
                progress::eprintln(&format!(
                    "ftpsync: {name}: stopping; transfers in flight get {grace:?} to finish (send it again to abort them now)"
                ));
                stop.cancel();
            } else {
                progress::eprintln(&format!(
                    "ftpsync: {name} again: abandoning transfers in flight"
                ));
                abort.cancel();
                return;
            }
        }
    })
}

/// `ftpsync run JOB`: loads the job file and runs it. A job that does not
/// load still gets its `--json` summary and `--report`.
/// Writes the `--json` summary and `--report` (if asked) of a job file that
/// did not load (nothing was locked, touched or recorded), and gives the
/// error back to be printed.
pub fn not_loaded(error: Error, args: &RunArgs, ui: &Ui) -> Result<i32, Error> {
    finish(
        None,
        engine::failed_before_start(chrono::Utc::now(), error),
        args,
        ui,
    )
}

/// One run of `j` with signals, and what is printed (and written) about it.
pub async fn run_job(j: &Job, args: &RunArgs, ui: &Ui) -> Result<i32, Error> {
    if args.json {
        print_json(&start_line(j));
    }
    let events = Events::new(Arc::new(Printer {
        json: args.json,
        verbose: ui.verbose > 0 && !ui.quiet,
        quiet: ui.quiet,
        direction: j.direction,
    }));
    let opts = RunOptions {
        force_delete: args.force_delete,
        grace: args.grace,
        bwlimit: args.bwlimit,
        events: events.clone(),
        ..RunOptions::default()
    };
    let mode = if ui.quiet {
        Mode::Off
    } else if args.json {
        Mode::Json
    } else if progress::bars_possible() {
        Mode::Bars
    } else {
        Mode::Lines
    };
    let ticker = progress::start(mode, events);
    let stop = CancellationToken::new();
    let watcher = watch_signals(
        stop.clone(),
        opts.abort.clone(),
        Arc::clone(&opts.stop_signal),
        args.grace,
    );
    let finished = engine::run(j, &opts, stop).await;
    watcher.abort();
    ticker.finish().await;
    finish(Some((&j.name, j.direction)), finished, args, ui)
}

/// Prints the summary and writes the report; returns the exit code (or the
/// error that ended the run, for `main` to print).
fn finish(
    job: Option<(&str, Direction)>,
    finished: Finished,
    args: &RunArgs,
    ui: &Ui,
) -> Result<i32, Error> {
    let summary = report::run_summary(job, &finished);
    let mut code = finished.record.exit_code;
    if let Some(file) = &args.report
        && let Err(e) = write_report(file, &summary)
    {
        progress::eprintln(&format!(
            "ftpsync: cannot write the report {}: {e}",
            file.display()
        ));
        if code == exit::OK {
            code = exit::USAGE;
        }
    }
    if args.json {
        print_json(&summary);
    }
    let report = finished.report?;
    let direction = job.map_or(Direction::Push, |(_, d)| d);
    if args.json {
        // stdout is the JSON; stderr still says why a run stopped.
    } else if ui.quiet {
        // Only what makes the exit code non-zero: failed items and
        // subtrees skipped because their listing failed.
        for a in report::attention(&report, direction) {
            if a.concern == Concern::Failed || (a.concern == Concern::Refused && a.op.is_none()) {
                progress::eprintln(&report::attention_line(&a));
            }
        }
    } else {
        // A closed stdout (`| head`) does not change the run's outcome.
        let _ = super::out::Stdout::default().print(&report::run_text(
            job.map_or("", |(n, _)| n),
            direction,
            &report,
        ));
    }
    if let Some(stop) = report::stop_text(&report) {
        progress::eprintln(&format!("ftpsync: {stop}"));
    }
    Ok(code)
}

/// Writes the report next to its final name and renames it over, so a
/// reader never sees half a file.
fn write_report(file: &Path, summary: &report::RunSummary<'_>) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.write_all(b"\n")?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// The first `--json` line: which job, from where to where. Never the password.
fn start_line(j: &Job) -> serde_json::Value {
    json!({
        "type": "start",
        "schema": report::RUN_SCHEMA,
        "job": j.name,
        "direction": j.direction,
        "delete": j.delete,
        "local_root": j.local_root.display().to_string(),
        "remote": {
            "host": j.remote.host,
            "port": j.remote.port,
            "user": j.remote.user,
            "root": j.remote.root,
        },
    })
}

/// One JSON object on one line of stdout.
pub(super) fn print_json(value: &impl Serialize) {
    if let Ok(line) = serde_json::to_string(value) {
        progress::println(&line);
    }
}

/// Renders the run's events as they happen: JSON lines, or the `-v` item
/// lines and the scans' warnings.
struct Printer {
    json: bool,
    verbose: bool,
    quiet: bool,
    direction: Direction,
}

impl Observer for Printer {
    fn event(&self, event: &Event<'_>) {
        if self.json {
            print_json(&event_json(event));
            return;
        }
        match event {
            Event::Warning(p) if !self.quiet => {
                progress::eprintln(&format!("warning: {}: {}", p.path, p.message));
            }
            Event::ItemFinished(item) if self.verbose && item.reason != Reason::RecordRefresh => {
                let line = report::item_text(item, self.direction);
                progress::println(line.trim_end());
            }
            _ => {}
        }
    }
}

/// An event as its `--json` line (schema in the README).
fn event_json(event: &Event<'_>) -> serde_json::Value {
    let item = |kind: &str, item: &ftpsync::plan::PlanItem| {
        let mut v = json!({ "type": kind });
        if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
            (v.as_object_mut(), serde_json::to_value(item))
        {
            obj.extend(fields);
        }
        v
    };
    match event {
        Event::Scanned { side, entries } => {
            json!({ "type": "scanned", "side": side, "entries": entries })
        }
        Event::Warning(p) => json!({ "type": "warning", "path": p.path, "message": p.message }),
        Event::Planned(plan) => {
            let mut v = json!({ "type": "planned" });
            if let (Some(obj), Ok(serde_json::Value::Object(fields))) = (
                v.as_object_mut(),
                serde_json::to_value(report::plan_summary(&plan.items)),
            ) {
                obj.extend(fields);
            }
            v
        }
        Event::ItemStarted(i) => item("item_started", i),
        Event::ItemFinished(i) => item("item_finished", i),
        Event::ItemFailed(i, e) => {
            let mut v = item("item_failed", i);
            v["code"] = json!(e.code());
            v["error"] = json!(e.to_string());
            v
        }
    }
}
