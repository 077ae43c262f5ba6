//! The progress of `ftpsync run`, read from the engine's counters
//! ([`ftpsync::events::Progress`]) by a ticker: bars on a terminal (spans
//! drawn by tracing-indicatif, so log lines print above them instead of
//! tearing them), a plain line every interval when stderr is not a
//! terminal, `progress` objects with `--json`, nothing with `-q`.
//!
//! The interval of the plain lines and JSON objects is 10 s, or
//! `FTPSYNC_PROGRESS_INTERVAL` (e.g. `2s`).

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::style::ProgressStyle;

use ftpsync::events::{Events, Snapshot};
use ftpsync::report::human_bytes;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Json,
    Off,
}

/// Whether stderr can show bars: a terminal that is not `TERM=dumb`.
pub fn bars_possible() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// The ticker of one run.
pub struct Ticker {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Ticker {
    /// Stops the ticker and clears its bars.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

/// Starts showing the progress of the run that reports to `events`.
pub fn start(mode: Mode, events: Events) -> Ticker {
    let stop = CancellationToken::new();
    let task = (mode != Mode::Off && events.progress().is_some()).then(|| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let Some(progress) = events.progress() else {
                return;
            };
            let every = match mode {
                Mode::Bars => Duration::from_millis(100),
                _ => interval(),
            };
            let mut bars = Bars::default();
            let mut rate = Rate::default();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let s = progress.snapshot();
                rate.update(&s);
                match mode {
                    Mode::Bars => bars.show(&s),
                    Mode::Lines => eprintln(&format!("progress: {}", line(&s, &rate))),
                    Mode::Json => super::run::print_json(&progress_json(&s, &rate)),
                    Mode::Off => {}
                }
            }
        })
    });
    Ticker { stop, task }
}

/// `FTPSYNC_PROGRESS_INTERVAL`, or 10 s.
fn interval() -> Duration {
    std::env::var("FTPSYNC_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| ftpsync::job::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(10))
}

/// The transfer rate since the transfers began (when the plan was made:
/// the first reading may come seconds later, with much already sent).
#[derive(Default)]
struct Rate {
    bytes_per_second: u64,
}

impl Rate {
    fn update(&mut self, s: &Snapshot) {
        if let Some(secs) = s
            .since_planned
            .map(|d| d.as_secs_f64())
            .filter(|&t| t > 0.0)
        {
            self.bytes_per_second = (s.bytes_done as f64 / secs) as u64;
        }
    }

    /// Seconds left at this rate, if there is one.
    fn eta(&self, s: &Snapshot) -> Option<u64> {
        (self.bytes_per_second > 0).then(|| {
            s.bytes_total
                .saturating_sub(s.bytes_done)
                .div_ceil(self.bytes_per_second)
        })
    }
}

fn scan_text(s: &Snapshot) -> String {
    let side = |n: u64, done: bool| match (n, done) {
        (0, false) => "…".to_string(),
        (n, true) => format!("{n} entries"),
        (n, false) => format!("{n} entries so far"),
    };
    format!(
        "local {}, remote {}",
        side(s.local_entries, s.local_done),
        side(s.remote_entries, s.remote_done)
    )
}

fn current_text(s: &Snapshot) -> String {
    const SHOWN: usize = 3;
    let mut t = s
        .current
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if s.current.len() > SHOWN {
        t.push_str(&format!(" and {} more", s.current.len() - SHOWN));
    }
    t
}

/// One plain progress line.
fn line(s: &Snapshot, rate: &Rate) -> String {
    if !s.planned {
        return format!("scanning: {}", scan_text(s));
    }
    let pct = (s.bytes_done * 100)
        .checked_div(s.bytes_total)
        .unwrap_or(100);
    let mut out = format!(
        "{}/{} files, {} of {} ({pct}%), {}/s",
        s.files_done,
        s.files_total,
        human_bytes(s.bytes_done),
        human_bytes(s.bytes_total),
        human_bytes(rate.bytes_per_second),
    );
    if let Some(eta) = rate.eta(s) {
        out.push_str(&format!(", ETA {}", eta_text(eta)));
    }
    if !s.current.is_empty() {
        out.push_str(&format!("; now: {}", current_text(s)));
    }
    out
}

fn eta_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// A `progress` object of `--json` (schema in the README).
fn progress_json(s: &Snapshot, rate: &Rate) -> serde_json::Value {
    json!({
        "type": "progress",
        "phase": if s.planned { "transfer" } else { "scan" },
        "local_entries": s.local_entries,
        "remote_entries": s.remote_entries,
        "files_done": s.files_done,
        "files_total": s.files_total,
        "bytes_done": s.bytes_done,
        "bytes_total": s.bytes_total,
        "bytes_per_second": rate.bytes_per_second,
        "eta_seconds": rate.eta(s),
        "current": s.current,
    })
}

/// The bars: a spinner while scanning, then the transfer bar with a line
/// naming the files in flight. Each is a span that tracing-indicatif draws;
/// dropping the span clears its bar.
#[derive(Default)]
struct Bars {
    scan: Option<tracing::Span>,
    transfer: Option<(tracing::Span, tracing::Span)>,
}

/// A span with a bar of this style (only spans with `indicatif.pb_show` get one).
fn bar_span(name: &'static str, template: &str) -> tracing::Span {
    let span = match name {
        "scan" => tracing::info_span!("scan", indicatif.pb_show = tracing::field::Empty),
        "files" => tracing::info_span!("files", indicatif.pb_show = tracing::field::Empty),
        _ => tracing::info_span!("transfer", indicatif.pb_show = tracing::field::Empty),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        span.pb_set_style(&style.progress_chars("=> "));
    }
    span
}

impl Bars {
    fn show(&mut self, s: &Snapshot) {
        if !s.planned {
            let scan = self
                .scan
                .get_or_insert_with(|| bar_span("scan", "{spinner} scanning: {wide_msg}"));
            scan.pb_set_message(&scan_text(s));
            scan.pb_start();
            return;
        }
        self.scan = None;
        if s.files_total == 0 {
            return;
        }
        let (bar, files) = self.transfer.get_or_insert_with(|| {
            let bar = bar_span(
                "transfer",
                "{spinner} {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} [{wide_bar}]",
            );
            let files = bar_span("files", "  {wide_msg}");
            bar.pb_set_length(s.bytes_total.max(1));
            bar.pb_start();
            files.pb_start();
            (bar, files)
        });
        bar.pb_set_length(s.bytes_total.max(1));
        bar.pb_set_position(s.bytes_done);
        bar.pb_set_message(&format!("{}/{} files", s.files_done, s.files_total));
        files.pb_set_message(&current_text(s));
    }
}

/// Prints a line on stdout without tearing the bars.
pub fn println(line: &str) {
    match tracing_indicatif::writer::get_indicatif_stdout_writer() {
        Some(mut w) => {
            let _ = writeln!(w, "{line}");
        }
        None => {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

/// Prints a line on stderr without tearing the bars.
pub fn eprintln(line: &str) {
    match tracing_indicatif::writer::get_indicatif_stderr_writer() {
        Some(mut w) => {
            let _ = writeln!(w, "{line}");
        }
        None => {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_from_the_plan_not_from_the_first_reading() {
        // The first reading comes up to an interval after the plan, with
        // 100 MiB already sent in the 10 s since: 10 MiB/s, not 100 MiB
        // over the few microseconds since the reading began.
        let mut rate = Rate::default();
        let mut s = Snapshot {
            planned: true,
            since_planned: Some(Duration::from_secs(10)),
            bytes_done: 100 << 20,
            bytes_total: 200 << 20,
            ..Snapshot::default()
        };
        rate.update(&s);
        assert_eq!(rate.bytes_per_second, 10 << 20);
        assert_eq!(rate.eta(&s), Some(10));
        s.since_planned = Some(Duration::from_secs(20));
        s.bytes_done = 120 << 20;
        rate.update(&s);
        assert_eq!(rate.bytes_per_second, 6 << 20);
        // Before the plan: no rate.
        let mut before = Rate::default();
        before.update(&Snapshot::default());
        assert_eq!(before.bytes_per_second, 0);
        assert_eq!(before.eta(&s), None);
    }

    #[test]
    fn plain_lines_say_the_phase_counts_rate_and_files() {
        let mut s = Snapshot {
            local_entries: 12,
            local_done: true,
            remote_entries: 3,
            ..Snapshot::default()
        };
        let rate = Rate::default();
        assert_eq!(
            line(&s, &rate),
            "scanning: local 12 entries, remote 3 entries so far"
        );
        s.planned = true;
        s.files_done = 1;
        s.files_total = 4;
        s.bytes_done = 512 * 1024;
        s.bytes_total = 2 * 1024 * 1024;
        s.current = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let rate = Rate {
            bytes_per_second: 256 * 1024,
        };
        assert_eq!(
            line(&s, &rate),
            "1/4 files, 512.0 KiB of 2.0 MiB (25%), 256.0 KiB/s, ETA 6s; now: a, b, c and 2 more"
        );
        let v = progress_json(&s, &rate);
        assert_eq!(v["phase"], "transfer");
        assert_eq!(v["eta_seconds"], 6);
        assert_eq!(v["current"].as_array().unwrap().len(), 5);
    }
}
