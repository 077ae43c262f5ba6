//! `ftpsync adopt`: records an existing deployment in the state without
//! transferring anything, and lists what the next run would still do.

use std::fmt::Write as _;

use tokio_util::sync::CancellationToken;

use ftpsync::engine::{self, RunOptions};
use ftpsync::error::Error;
use ftpsync::job::Job;
use ftpsync::model::Kind;
use ftpsync::plan::{Op, Reason};

/// Runs [`engine::adopt`] and prints what was adopted and what was left.
pub async fn adopt_job(j: &Job) -> Result<i32, Error> {
    let stop = CancellationToken::new();
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        })
    };
    let finished = engine::adopt(j, &RunOptions::default(), stop).await;
    watcher.abort();
    let report = finished.report?;
    for p in &report.problems {
        super::out::eprint_line(&format!("warning: {}: {}", p.path, p.message));
    }
    let adopted = |reason: Reason| {
        report
            .outcomes
            .iter()
            .filter(|o| o.item.op == Op::Adopt && o.item.kind == Kind::File)
            .filter(|o| o.item.reason == reason)
            .count()
    };
    let mut out = String::new();
    for item in &finished.left {
        let _ = writeln!(
            out,
            "left: {} {} ({})",
            ftpsync::exec::op_label(item),
            item.path,
            item.reason.describe(j.direction)
        );
    }
    let _ = writeln!(
        out,
        "{}: {} files adopted ({} by size and time, {} by the server's hash), {} items left for the next run",
        j.name,
        adopted(Reason::Identical) + adopted(Reason::SameTimeOffset) + adopted(Reason::SameHash),
        adopted(Reason::Identical) + adopted(Reason::SameTimeOffset),
        adopted(Reason::SameHash),
        finished.left.len(),
    );
    let _ = super::out::Stdout::default().print(&out);
    Ok(finished.record.exit_code)
}
