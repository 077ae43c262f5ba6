//! Adoption by time: a file on both sides that the state does not know (a
//! first run, `ftpsync adopt`, a state that was reset) and has the same size
//! on both is taken as identical when its times agree once the server's way
//! of reporting time is understood. Where the listing gives only a minute or
//! a day (LIST), the server is asked MDTM (RFC 3659 §3: to the second); the
//! server's offset (a time zone, or a clock that is off) is learned from all
//! the files with second-precision times (see [`learn_offset`]); and each
//! such file gets a verdict for the planner. Same-size files that time
//! cannot settle are left to the server's hash command, if it has one
//! (`engine::adopt_by_server_hash`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDateTime;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::ftp::pool::Pool;
use crate::job::{CompareMode, RetryPolicy};
use crate::model::time::{TimeOffset, learn_offset};
use crate::model::{Kind, LocalTree, RelPath, RemoteTime, RemoteTree};
use crate::plan::{Reason, Verdicts};
use crate::state::StateRecord;

/// At most this many MDTM commands per run. One MDTM costs a round trip on
/// one of the pool's connections (a few milliseconds nearby, ~10 s for
/// 1,000 files at 40 ms over four connections), far less than re-sending;
/// a larger tree is adopted over several `ftpsync adopt` runs, each of
/// which records what it adopted, so the next asks only about the rest.
pub const MDTM_CAP: usize = 10_000;

/// What adoption by time found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Adoption {
    /// Per file compared to the second: `Some(reason)` identical, `None`
    /// differs. Files not here are judged by the planner's own rule.
    #[serde(skip)]
    pub verdicts: Verdicts,
    /// The server's offset, when one was learned (times that agree as they
    /// are learn nothing).
    pub offset: Option<TimeOffset>,
    /// The same-size files compared to the second (MLSD times and MDTM
    /// answers).
    pub compared: usize,
    /// MDTM commands sent (files whose listing gave only a minute or a day).
    pub mdtm_asked: usize,
    /// Files that needed MDTM but were over [`MDTM_CAP`].
    pub mdtm_over_cap: usize,
    /// The files adopted by time.
    pub adopted: usize,
}

impl Adoption {
    /// The lines `ftpsync plan` prints about it (none when nothing needed
    /// learning).
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(o) = &self.offset {
            lines.push(format!(
                "adoption: {} ({} of {} same-size files agree)",
                o.describe(),
                o.agreeing,
                o.compared
            ));
        }
        if self.mdtm_asked > 0 {
            lines.push(format!(
                "adoption: asked MDTM for {} files (the listing gives only minutes or days); {} of {} same-size files adopted by time",
                self.mdtm_asked, self.adopted, self.compared
            ));
        }
        if self.mdtm_over_cap > 0 {
            lines.push(format!(
                "adoption: {} more files need MDTM (at most {MDTM_CAP} per run); `ftpsync adopt` again continues with them",
                self.mdtm_over_cap
            ));
        }
        lines
    }
}

/// What [`by_time`] needs from the run.
pub struct TimeInput<'a> {
    pub pool: &'a Arc<Pool>,
    pub retry: RetryPolicy,
    /// Absolute remote root.
    pub root: &'a str,
    pub compare: CompareMode,
    /// Whether the server has MDTM.
    pub mdtm: bool,
}

/// Compares the same-size files the state does not know by time (see the
/// module comment). With `compare: size` there is nothing to do: size alone
/// settles it.
pub async fn by_time(
    input: &TimeInput<'_>,
    local: &LocalTree,
    remote: &RemoteTree,
    state: &BTreeMap<RelPath, StateRecord>,
) -> Adoption {
    let mut out = Adoption::default();
    if input.compare == CompareMode::Size {
        return out;
    }
    // (path, local mtime in ns, the server's time to the second)
    let mut pairs: Vec<(RelPath, i64, NaiveDateTime)> = Vec::new();
    let mut ask = JoinSet::new();
    for (p, e) in &local.entries {
        // Files the state knows first: on a re-run that is nearly all of
        // them, and they need no look-up in the remote tree.
        if state.get(p).is_some_and(|r| r.kind == Kind::File) {
            continue;
        }
        let (Some(lm), Some(rm)) = (
            e.meta.as_ref(),
            remote.entries.get(p).and_then(|r| r.meta.as_ref()),
        ) else {
            continue;
        };
        if rm.size() != Some(lm.size()) {
            continue;
        }
        if let RemoteTime::Exact(t) = rm.mtime() {
            pairs.push((p.clone(), lm.mtime_ns, t));
            continue;
        }
        if !input.mdtm {
            continue;
        }
        if out.mdtm_asked == MDTM_CAP {
            out.mdtm_over_cap += 1;
            continue;
        }
        out.mdtm_asked += 1;
        let (pool, retry) = (Arc::clone(input.pool), input.retry);
        let (rel, abs, local_ns) = (p.clone(), p.to_remote(input.root), lm.mtime_ns);
        ask.spawn(async move {
            let answer = crate::with_retry!(&pool, &retry, |c| c.mdtm(&abs).await);
            match answer {
                Ok(Some(t)) => Some((rel, local_ns, t)),
                _ => None,
            }
        });
    }
    while let Some(done) = ask.join_next().await {
        if let Ok(Some(pair)) = done {
            pairs.push(pair);
        }
    }
    let times: Vec<(i64, NaiveDateTime)> = pairs.iter().map(|(_, l, r)| (*l, *r)).collect();
    out.offset = learn_offset(&times);
    out.compared = pairs.len();
    let (offset, reason) = match &out.offset {
        Some(o) => (o.seconds, Reason::SameTimeOffset),
        None => (0, Reason::Identical),
    };
    for (p, local_ns, t) in pairs {
        let same = RemoteTime::Exact(t).agrees_with_local(local_ns, offset);
        out.adopted += usize::from(same);
        out.verdicts.insert(p, same.then_some(reason));
    }
    out
}
