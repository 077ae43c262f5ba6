//! `ftpsync history`: a job's recorded runs ([`crate::state::RunRecord`],
//! newest first) as a table for people or as JSON for machines. Pure
//! formatting: reading the runs is the state store's job.

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::human_bytes;
use crate::state::RunRecord;

/// The runs as a table, one line per run, newest first as given; the first
/// error of a run that has any is indented under it. Times are UTC, so the
/// table reads the same on every machine the state is looked at from.
pub fn history_text(job: &str, runs: &[RunRecord]) -> String {
    let mut out = String::new();
    if runs.is_empty() {
        let _ = writeln!(out, "job {job}: no runs recorded");
        return out;
    }
    let plural = if runs.len() == 1 { "" } else { "s" };
    let _ = writeln!(out, "job {job}: {} run{plural}, newest first", runs.len());
    let _ = writeln!(
        out,
        "{:<19}  {:>8}  {:<8}  {:<7}  {:>4}  {:>6}  {:>6}  {:>6}  {:>6}  {:>10}",
        "started (UTC)",
        "duration",
        "trigger",
        "outcome",
        "exit",
        "up",
        "down",
        "del",
        "failed",
        "bytes"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "{:<19}  {:>8}  {:<8}  {:<7}  {:>4}  {:>6}  {:>6}  {:>6}  {:>6}  {:>10}",
            run.started_at.format("%Y-%m-%d %H:%M:%S"),
            duration_text(run.duration()),
            run.trigger.as_str(),
            run.outcome.as_str(),
            run.exit_code,
            run.uploaded,
            run.downloaded,
            run.deleted,
            run.failed,
            human_bytes(run.bytes),
        );
        if let Some(first) = run.errors.first() {
            let line = first.lines().next().unwrap_or_default();
            let more = match run.errors.len() - 1 {
                0 => String::new(),
                n => format!(" (+{n} more)"),
            };
            let _ = writeln!(out, "    {line}{more}");
        }
    }
    out
}

/// One run in `ftpsync history --json`: the record as stored, plus its
/// duration so consumers need not parse two times to get it.
#[derive(Serialize)]
struct RunJson<'a> {
    #[serde(flatten)]
    run: &'a RunRecord,
    duration_seconds: f64,
}

/// The runs as a JSON array, newest first as given.
pub fn history_json(runs: &[RunRecord]) -> String {
    let doc: Vec<RunJson> = runs
        .iter()
        .map(|run| RunJson {
            run,
            duration_seconds: run.duration().as_millis() as f64 / 1000.0,
        })
        .collect();
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// `0.4s`, `42.0s`, `4m05s`, `2h03m`: short enough for a column, exact
/// enough to tell a slow run from a fast one.
fn duration_text(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}.{}s", d.subsec_millis() / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeDelta, TimeZone, Utc};

    use super::*;
    use crate::state::{RunOutcome, RunTrigger};

    /// A failed scheduled run (newest) and a partial catch-up run.
    fn two_runs() -> Vec<RunRecord> {
        let older_start = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
        let newer_start = Utc.with_ymd_and_hms(2025, 3, 1, 13, 0, 0).unwrap();
        vec![
            RunRecord {
                started_at: newer_start,
                finished_at: newer_start + TimeDelta::milliseconds(2_400),
                trigger: RunTrigger::Schedule,
                outcome: RunOutcome::Failed,
                exit_code: 3,
                uploaded: 0,
                downloaded: 0,
                deleted: 0,
                mkdirs: 0,
                rmdirs: 0,
                adopted: 0,
                failed: 0,
                bytes: 0,
                errors: vec!["cannot connect to ftp.example.com:21: connection refused".into()],
            },
            RunRecord {
                started_at: older_start,
                finished_at: older_start + TimeDelta::milliseconds(65_250),
                trigger: RunTrigger::CatchUp,
                outcome: RunOutcome::Partial,
                exit_code: 1,
                uploaded: 3,
                downloaded: 0,
                deleted: 1,
                mkdirs: 2,
                rmdirs: 0,
                adopted: 4,
                failed: 2,
                bytes: 1_572_864,
                errors: vec![
                    "upload a.txt: 553 Permission denied".into(),
                    "upload b.txt: 553 Permission denied".into(),
                ],
            },
        ]
    }

    #[test]
    fn text_is_a_table_newest_first() {
        assert_eq!(
            history_text("site", &two_runs()),
            "\
job site: 2 runs, newest first
started (UTC)        duration  trigger   outcome  exit      up    down     del  failed       bytes
2025-03-01 13:00:00      2.4s  schedule  failed      3       0       0       0       0         0 B
    cannot connect to ftp.example.com:21: connection refused
2025-03-01 12:00:00     1m05s  catch_up  partial     1       3       0       1       2     1.5 MiB
    upload a.txt: 553 Permission denied (+1 more)
"
        );
    }

    #[test]
    fn text_without_runs() {
        assert_eq!(history_text("site", &[]), "job site: no runs recorded\n");
        let one = history_text("site", &two_runs()[1..]);
        assert!(one.starts_with("job site: 1 run, newest first\n"), "{one}");
    }

    #[test]
    fn json_has_every_field_and_the_duration() {
        assert_eq!(
            history_json(&two_runs()),
            r#"[
  {
    "started_at": "2025-03-01T13:00:00.000Z",
    "finished_at": "2025-03-01T13:00:02.400Z",
    "trigger": "schedule",
    "outcome": "failed",
    "exit_code": 3,
    "uploaded": 0,
    "downloaded": 0,
    "deleted": 0,
    "mkdirs": 0,
    "rmdirs": 0,
    "adopted": 0,
    "failed": 0,
    "bytes": 0,
    "errors": [
      "cannot connect to ftp.example.com:21: connection refused"
    ],
    "duration_seconds": 2.4
  },
  {
    "started_at": "2025-03-01T12:00:00.000Z",
    "finished_at": "2025-03-01T12:01:05.250Z",
    "trigger": "catch_up",
    "outcome": "partial",
    "exit_code": 1,
    "uploaded": 3,
    "downloaded": 0,
    "deleted": 1,
    "mkdirs": 2,
    "rmdirs": 0,
    "adopted": 4,
    "failed": 2,
    "bytes": 1572864,
    "errors": [
      "upload a.txt: 553 Permission denied",
      "upload b.txt: 553 Permission denied"
    ],
    "duration_seconds": 65.25
  }
]"#
        );
        assert_eq!(history_json(&[]), "[]");
    }

    #[test]
    fn durations_fit_a_column() {
        let ms = Duration::from_millis;
        assert_eq!(duration_text(ms(0)), "0.0s");
        assert_eq!(duration_text(ms(59_990)), "59.9s");
        assert_eq!(duration_text(ms(60_000)), "1m00s");
        assert_eq!(duration_text(ms(3_599_000)), "59m59s");
        assert_eq!(duration_text(ms(3_600_000 * 26 + 180_000)), "26h03m");
    }
}
