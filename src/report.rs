//! Output for people and for machines: the plan as text or JSON (schema
//! version 1, documented in the README), and the summary of a run.

use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::{Finished, Prepared};
use crate::exec::{RunReport, StopReason, op_label};
use crate::ftp::conn::HashCommand;
use crate::job::{Direction, VerifyMode};
use crate::model::Problem;
use crate::plan::{Op, PlanItem, Reason};
use crate::state::RunRecord;

/// `ftpsync plan --json` document.
#[derive(Serialize)]
pub struct PlanJson<'a> {
    pub version: u32,
    pub job: &'a str,
    pub direction: Direction,
    pub delete: bool,
    pub remote_root: &'a str,
    pub local_root: String,
    pub items: Vec<ItemJson<'a>>,
    pub summary: Summary,
    pub problems: Vec<&'a Problem>,
    pub skipped_untrusted: Vec<String>,
    pub delete_limit_exceeded: Option<&'a str>,
    pub state_reset: bool,
    /// How changes are detected in this run (`auto` resolved).
    pub compare: crate::job::CompareMode,
    /// The server's hash command used to compare files the state does not
    /// know (`HASH`, `XSHA256`, …), if it offers one.
    pub hash_command: Option<&'static str>,
    /// How transfers are checked in this run: `size`, or `hash` (the
    /// size and the server's hash command; see `verify` in the README).
    pub verify: &'static str,
    /// What adoption by time learned: the server's offset, MDTM asked.
    pub adoption: &'a crate::adoption::Adoption,
}

#[derive(Serialize)]
pub struct ItemJson<'a> {
    #[serde(flatten)]
    pub item: &'a PlanItem,
    pub description: &'static str,
}

#[derive(Serialize, Default)]
pub struct Summary {
    pub mkdir: usize,
    pub upload: usize,
    pub download: usize,
    pub delete: usize,
    pub rmdir: usize,
    pub adopt: usize,
    pub forget: usize,
    pub keep: usize,
    pub bytes: u64,
}

/// The counts of a plan's items by operation, and the bytes to transfer.
pub fn plan_summary(items: &[PlanItem]) -> Summary {
    let mut s = Summary::default();
    for i in items {
        match i.op {
            Op::Mkdir => s.mkdir += 1,
            Op::Upload => s.upload += 1,
            Op::Download => s.download += 1,
            Op::Delete => s.delete += 1,
            Op::Rmdir => s.rmdir += 1,
            Op::Adopt => s.adopt += 1,
            Op::Forget => s.forget += 1,
            Op::Keep => s.keep += 1,
        }
        if matches!(i.op, Op::Upload | Op::Download) {
            s.bytes += i.size.unwrap_or(0);
        }
    }
    s
}

/// The server's hash command when it checks this run's transfers: with
/// `verify: hash`, and with `auto` for uploads (where it rides in the same
/// round trip as SIZE).
fn hash_verified(p: &Prepared) -> Option<HashCommand> {
    let on = match p.job.verify {
        VerifyMode::Size => false,
        VerifyMode::Auto => p.job.direction == Direction::Push,
        VerifyMode::Hash => true,
    };
    p.hash_command.filter(|_| on)
}

pub fn plan_json(p: &Prepared) -> String {
    let doc = PlanJson {
        version: 1,
        job: &p.job.name,
        direction: p.job.direction,
        delete: p.job.delete,
        remote_root: &p.root,
        local_root: p.job.local_root.display().to_string(),
        items: p
            .plan
            .items
            .iter()
            .map(|item| ItemJson {
                item,
                description: item.reason.describe(p.job.direction),
            })
            .collect(),
        summary: plan_summary(&p.plan.items),
        problems: p.problems().collect(),
        skipped_untrusted: p
            .plan
            .skipped_untrusted
            .iter()
            .map(|r| r.to_string())
            .collect(),
        delete_limit_exceeded: p.delete_limit.as_deref(),
        state_reset: p.state_reset,
        compare: p.job.compare,
        hash_command: p.hash_command.map(|c| c.verb()),
        verify: if hash_verified(p).is_some() {
            "hash"
        } else {
            "size"
        },
        adoption: &p.adoption,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Bytes in binary units (`1.5 MiB`), as summaries and the history print them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn item_line(out: &mut String, item: &PlanItem, direction: Direction) {
    let size = item
        .size
        .map(|s| format!(" ({})", human_bytes(s)))
        .unwrap_or_default();
    let slash = if item.kind == crate::model::Kind::Dir {
        "/"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "  {:<8} {}{slash}{size}  — {}",
        op_label(item),
        item.path,
        item.reason.describe(direction)
    );
}

/// The plan as text. Hidden: state-only refreshes (they change nothing anyone sees).
pub fn plan_text(p: &Prepared) -> String {
    let mut out = String::new();
    let d = p.job.direction;
    let (from, to) = match d {
        Direction::Push => (
            p.job.local_root.display().to_string(),
            format!("{}:{}", p.job.remote.host, p.root),
        ),
        Direction::Pull => (
            format!("{}:{}", p.job.remote.host, p.root),
            p.job.local_root.display().to_string(),
        ),
    };
    let _ = writeln!(
        out,
        "job {}: {} {from} → {to}",
        p.job.name,
        if d == Direction::Push { "push" } else { "pull" }
    );
    problems_text(&mut out, p.problems());
    if let Some(cmd) = p.hash_command {
        let same = p
            .plan
            .items
            .iter()
            .filter(|i| i.reason == Reason::SameHash)
            .count();
        let _ = writeln!(
            out,
            "compare: the server's {} ({}) checks files the state does not know; {same} found identical",
            cmd.verb(),
            cmd.algo().name()
        );
    }
    if let Some(cmd) = hash_verified(p) {
        let _ = writeln!(
            out,
            "verify: each transfer is checked with the server's {} ({}) before it takes its name",
            cmd.verb(),
            cmd.algo().name()
        );
    }
    for line in p.adoption.describe() {
        let _ = writeln!(out, "{line}");
    }
    if p.state_reset {
        let _ = writeln!(
            out,
            "note: the state belonged to another server, root or direction and is not used"
        );
    }
    for u in &p.plan.skipped_untrusted {
        let _ = writeln!(
            out,
            "skipped: {u}/ (its listing failed; nothing below it is changed)"
        );
    }
    let shown: Vec<&PlanItem> = p
        .plan
        .items
        .iter()
        .filter(|i| i.reason != Reason::RecordRefresh)
        .collect();
    if shown.is_empty()
        || p.plan.changes().next().is_none() && shown.iter().all(|i| i.op != Op::Keep)
    {
        for i in &shown {
            item_line(&mut out, i, d);
        }
        let _ = writeln!(out, "nothing to do: the two sides are in sync");
        return out;
    }
    for i in shown {
        item_line(&mut out, i, d);
    }
    let s = plan_summary(&p.plan.items);
    let _ = writeln!(
        out,
        "plan: {} mkdir, {} upload, {} download, {} delete, {} rmdir, {} kept, {} adopted ({} to transfer)",
        s.mkdir,
        s.upload,
        s.download,
        s.delete,
        s.rmdir,
        s.keep,
        s.adopt,
        human_bytes(s.bytes)
    );
    if let Some(m) = &p.delete_limit {
        let _ = writeln!(out, "warning: {m}");
    }
    out
}

fn problems_text<'a>(out: &mut String, problems: impl Iterator<Item = &'a Problem>) {
    for pr in problems {
        let _ = writeln!(out, "warning: {}: {}", pr.path, pr.message);
    }
}

/// Why a run stopped early, for stderr: `None` if it ran to its end.
pub fn stop_text(report: &RunReport) -> Option<String> {
    let why = match report.stopped? {
        StopReason::Requested => "stop requested".to_string(),
        StopReason::Deadline(d) => format!("the run's deadline of {d:?} was reached"),
        StopReason::Unreachable(d) => {
            format!("the server was unreachable: every connection attempt failed for {d:?}")
        }
    };
    Some(format!(
        "STOPPED: {why}; {} items not started, {} abandoned in flight. Finished items are recorded; the next run continues from there.",
        report.not_started,
        report.abandoned.len()
    ))
}

/// One finished item as `-v` lists it.
pub fn item_text(item: &PlanItem, direction: Direction) -> String {
    let mut out = String::new();
    item_line(&mut out, item, direction);
    out
}

/// Why something in a run needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concern {
    /// The item failed (after its retries).
    Failed,
    /// A safety rule kept it from being done: a suspect or failed listing,
    /// or a delete not run because items failed.
    Refused,
    /// Both sides changed, or they differ and were never synced: the target was kept.
    Conflict,
    /// The target had changed since the last sync and was overwritten.
    Drift,
    /// Left alone on purpose (`delete: false`, a directory holding unsynced files).
    Kept,
}

impl Concern {
    fn label(self) -> &'static str {
        match self {
            Concern::Failed => "FAILED",
            Concern::Refused => "refused",
            Concern::Conflict => "conflict",
            Concern::Drift => "drift",
            Concern::Kept => "kept",
        }
    }
}

/// One thing a run's summary lists for a person, whatever the verbosity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attention {
    pub concern: Concern,
    /// `upload`, `delete`…; `null` for a skipped subtree.
    pub op: Option<&'static str>,
    pub path: String,
    pub reason: Option<Reason>,
    /// The server's reply code, if a reply caused the failure.
    pub code: Option<u32>,
    pub message: String,
}

fn concern_of(item: &PlanItem) -> Option<Concern> {
    use Reason::*;
    match (item.op, item.reason) {
        (Op::Keep, TargetChanged | BothChanged | Differs | TypeConflict) => Some(Concern::Conflict),
        (Op::Keep, SuspectListing | ListingUnconfirmed) => Some(Concern::Refused),
        (Op::Keep, _) | (Op::Forget, DeleteDisabled) => Some(Concern::Kept),
        (Op::Upload | Op::Download, TargetChanged | BothChanged | Differs) => Some(Concern::Drift),
        _ => None,
    }
}

/// What in a run needs a person: failures, refusals, conflicts kept, drift
/// overwritten, things left alone; most pressing first, then by path.
pub fn attention(report: &RunReport, direction: Direction) -> Vec<Attention> {
    let of_item = |concern, item: &PlanItem, message: String| Attention {
        concern,
        op: Some(op_label(item)),
        path: display_path(item),
        reason: Some(item.reason),
        code: None,
        message,
    };
    let mut out = Vec::new();
    for o in &report.outcomes {
        match &o.error {
            Some(e) => out.push(Attention {
                code: e.code(),
                ..of_item(Concern::Failed, &o.item, e.to_string())
            }),
            None => {
                if let Some(c) = concern_of(&o.item) {
                    out.push(of_item(
                        c,
                        &o.item,
                        o.item.reason.describe(direction).into(),
                    ));
                }
            }
        }
    }
    for item in &report.kept {
        if let Some(c) = concern_of(item) {
            out.push(of_item(c, item, item.reason.describe(direction).into()));
        }
    }
    for dir in &report.skipped_untrusted {
        out.push(Attention {
            concern: Concern::Refused,
            op: None,
            path: format!("{dir}/"),
            reason: None,
            code: None,
            message: "its listing failed; nothing below it was changed".into(),
        });
    }
    for item in &report.skipped_deletes {
        out.push(of_item(
            Concern::Refused,
            item,
            "not run because items failed (deletes run only after a clean pass)".into(),
        ));
    }
    out.sort_by(|a, b| (a.concern, &a.path).cmp(&(b.concern, &b.path)));
    out
}

fn display_path(item: &PlanItem) -> String {
    if item.kind == crate::model::Kind::Dir {
        format!("{}/", item.path)
    } else {
        item.path.to_string()
    }
}

/// An attention line as the summary prints it. Failures keep the form
/// `FAILED <op> <path>: <reply>` that scripts grep for.
pub fn attention_line(a: &Attention) -> String {
    match (a.concern, a.op) {
        (Concern::Failed, Some(op)) => format!("FAILED {op} {}: {}", a.path, a.message),
        (Concern::Refused, Some(op)) if op == "delete" || op == "rmdir" => {
            format!("{:<9} {op} {} — {}", a.concern.label(), a.path, a.message)
        }
        _ => format!("{:<9} {} — {}", a.concern.label(), a.path, a.message),
    }
}

/// The summary after a run: what needs a person (always, one line each),
/// then the counts.
pub fn run_text(p_name: &str, direction: Direction, report: &RunReport) -> String {
    let mut out = String::new();
    for a in attention(report, direction) {
        let _ = writeln!(out, "{}", attention_line(&a));
    }
    if !report.skipped_deletes.is_empty() {
        let _ = writeln!(
            out,
            "skipped {} deletes because items failed (deletes run only after a clean pass; set safety.delete_after_errors to change this)",
            report.skipped_deletes.len()
        );
    }
    let failed = report.failed().count();
    let _ = writeln!(
        out,
        "{p_name}: {} uploaded, {} downloaded, {} deleted, {} dirs created, {} dirs removed, {} adopted, {} transferred{}{}",
        report.done(Op::Upload),
        report.done(Op::Download),
        report.done(Op::Delete),
        report.done(Op::Mkdir),
        report.done(Op::Rmdir),
        report.done(Op::Adopt),
        human_bytes(report.bytes),
        if report.temps_removed > 0 {
            format!(
                ", {} leftover temporary files removed",
                report.temps_removed
            )
        } else {
            String::new()
        },
        if failed == 0 {
            String::new()
        } else {
            format!(", {failed} FAILED")
        },
    );
    out
}

/// The JSON schema version of `run --json` lines and `run --report`.
pub const RUN_SCHEMA: u32 = 1;

/// The final summary of `ftpsync run` as `--json` prints it and `--report`
/// writes it: the history entry of the run plus what needs a person.
#[derive(Serialize)]
pub struct RunSummary<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: u32,
    /// `null` when the job file could not be loaded.
    pub job: Option<&'a str>,
    pub direction: Option<Direction>,
    #[serde(flatten)]
    pub record: &'a RunRecord,
    pub duration_seconds: f64,
    /// The error that ended the run before or instead of executing it.
    pub error: Option<String>,
    pub temps_removed: usize,
    pub stopped: Option<StoppedJson>,
    pub attention: Vec<Attention>,
    pub warnings: Vec<&'a Problem>,
}

/// Why and where a run stopped early.
#[derive(Serialize)]
pub struct StoppedJson {
    /// `requested`, `deadline` or `unreachable`.
    pub reason: &'static str,
    pub not_started: usize,
    pub abandoned: Vec<String>,
}

/// Builds the summary of a finished run (or of a job that did not load:
/// `job` is `None`).
pub fn run_summary<'a>(
    job: Option<(&'a str, Direction)>,
    finished: &'a Finished,
) -> RunSummary<'a> {
    let direction = job.map(|(_, d)| d);
    let report = finished.report.as_ref().ok();
    RunSummary {
        kind: "summary",
        schema: RUN_SCHEMA,
        job: job.map(|(n, _)| n),
        direction,
        record: &finished.record,
        duration_seconds: finished.record.duration().as_millis() as f64 / 1000.0,
        error: finished.report.as_ref().err().map(|e| e.to_string()),
        temps_removed: report.map_or(0, |r| r.temps_removed),
        stopped: report.and_then(|r| {
            let reason = match r.stopped? {
                StopReason::Requested => "requested",
                StopReason::Deadline(_) => "deadline",
                StopReason::Unreachable(_) => "unreachable",
            };
            Some(StoppedJson {
                reason,
                not_started: r.not_started,
                abandoned: r.abandoned.iter().map(display_path).collect(),
            })
        }),
        attention: match (report, direction) {
            (Some(r), Some(d)) => attention(r, d),
            _ => Vec::new(),
        },
        warnings: report
            .map(|r| r.problems.iter().collect())
            .unwrap_or_default(),
    }
}
