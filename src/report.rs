//! Output for people and for machines: the plan as text or JSON (schema
//! version 1, documented in the README), and the summary of a run.

use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::Prepared;
use crate::exec::{RunReport, StopReason, op_label};
use crate::job::Direction;
use crate::model::Problem;
use crate::plan::{Op, PlanItem, Reason};

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

fn summary(items: &[PlanItem]) -> Summary {
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
        summary: summary(&p.plan.items),
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
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Bytes in binary units (`1.5 MiB`), as summaries and the history print them.
pub(crate) fn human_bytes(n: u64) -> String {
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
    let s = summary(&p.plan.items);
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

/// The summary after a run; failures are listed one per line with their reply.
pub fn run_text(p_name: &str, direction: Direction, report: &RunReport, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        for o in &report.outcomes {
            if o.error.is_none() && o.item.reason != Reason::RecordRefresh {
                item_line(&mut out, &o.item, direction);
            }
        }
    }
    let failed: Vec<_> = report.failed().collect();
    for o in &failed {
        let _ = writeln!(
            out,
            "FAILED {} {}: {}",
            op_label(&o.item),
            o.item.path,
            o.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    if report.skipped_deletes > 0 {
        let _ = writeln!(
            out,
            "skipped {} deletes because items failed (deletes run only after a clean pass; set safety.delete_after_errors to change this)",
            report.skipped_deletes
        );
    }
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
        if failed.is_empty() {
            String::new()
        } else {
            format!(", {} FAILED", failed.len())
        },
    );
    out
}
