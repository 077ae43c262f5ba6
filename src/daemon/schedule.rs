//! A job's `schedule:` and `timezone:`: the crontab expression (parsed by
//! croner), the zone it is read in, and the fire times that follow from them.
//!
//! Everything here is pure: the daemon passes the current time in, so the
//! rules below are tested with fixed instants. This module owns
//!
//! - which expressions are accepted: 5 fields as in crontab(5) (day of week 0
//!   and 7 are Sunday, 1 is Monday), 6 fields with a leading seconds field, and
//!   the aliases `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`,
//!   `@yearly` and `@annually`;
//! - the zone: a named IANA zone, or the system's zone by default;
//! - the fire times, and what happens at daylight-saving changes;
//! - whether a run was missed while the daemon was down (for `catch_up`);
//! - the fixed per-job `jitter` offset;
//! - the text of `ftpsync schedule`.
//!
//! Daylight saving time. A pattern that fires in every hour (hour field `*`)
//! keeps its rhythm in real time, as croner does for "interval" patterns: the
//! wall clock times a spring-forward skips never exist and are not made up,
//! and the hour a fall-back repeats is two real hours, so it fires in both.
//! Every other pattern names wall clock times, and each of them fires once,
//! when the wall clock first reaches it: a time in a spring-forward gap fires
//! at the first instant after the gap (several skipped times are one run), and
//! a time in a repeated hour fires only on its first pass. croner does this for
//! patterns with a single fixed hour, minute and second (`30 2 * * *`), but it
//! skips the gap and fires twice in the repeated hour for patterns such as
//! `*/15 1-2 * * *` or `0 */2 * * *`, so this module searches the wall clock
//! itself for those.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{
    DateTime, Local, LocalResult, NaiveDateTime, SecondsFormat, TimeDelta, TimeZone, Timelike as _,
    Utc,
};
use chrono_tz::{OffsetName, Tz};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a `schedule:` or `timezone:` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The crontab expression; `message` is croner's, or ours for aliases.
    #[error("`{expr}`: {message}")]
    Expression { expr: String, message: String },
    /// Not a time zone chrono-tz knows.
    #[error("unknown time zone `{0}` (use an IANA name such as Europe/Berlin, or UTC)")]
    UnknownZone(String),
}

/// The zone a schedule's wall clock times are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// An IANA zone, given in the job or found as the system's zone.
    Named(Tz),
    /// The system's zone as the C library sees it (`chrono::Local`), used when
    /// it has no IANA name (e.g. `TZ` holds a POSIX rule).
    Local,
}

impl Zone {
    /// An IANA zone by its exact name, e.g. `Europe/Berlin` or `UTC`.
    pub fn parse(name: &str) -> Result<Zone, ScheduleError> {
        name.parse::<Tz>()
            .map(Zone::Named)
            .map_err(|_| ScheduleError::UnknownZone(name.to_owned()))
    }

    /// The system's zone, by name where it has one.
    ///
    /// `TZ` wins when it is set, as it does for `chrono::Local` and the C
    /// library (iana-time-zone only reads `/etc/localtime`): a daemon started
    /// with `TZ=Europe/Berlin` must not schedule in the machine's zone. A `TZ`
    /// that is not an IANA name, or a system zone without one, gives
    /// [`Zone::Local`].
    pub fn system() -> Zone {
        let name = match std::env::var("TZ") {
            Ok(tz) => Some(tz.strip_prefix(':').unwrap_or(&tz).to_owned()),
            Err(_) => iana_time_zone::get_timezone().ok(),
        };
        name.and_then(|n| n.parse::<Tz>().ok())
            .map_or(Zone::Local, Zone::Named)
    }

    /// The IANA name, or `local` for [`Zone::Local`].
    pub fn name(&self) -> &'static str {
        match self {
            Zone::Named(tz) => tz.name(),
            Zone::Local => "local",
        }
    }
}

/// A parsed `schedule:` with its zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    zone: Zone,
    /// The pattern fires in every hour of the day, so it follows real time
    /// across daylight-saving changes (see the module comment).
    every_hour: bool,
}

/// Aliases croner does not know, and what they stand for.
const EXTRA_ALIASES: [(&str, &str); 1] = [("@midnight", "@daily")];
const ALIASES: [&str; 7] = [
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
];

impl Schedule {
    /// Parses a crontab expression, read in `timezone` (an IANA name) or, when
    /// that is `None`, in the system's zone ([`Zone::system`]).
    ///
    /// An expression that never fires (`0 0 30 2 *`) is refused too.
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let zone = match timezone {
            Some(name) => Zone::parse(name)?,
            None => Zone::system(),
        };
        Schedule::with_zone(expr, zone)
    }

    /// Parses a crontab expression read in `zone`.
    pub fn with_zone(expr: &str, zone: Zone) -> Result<Schedule, ScheduleError> {
        let expr = expr.trim();
        let bad = |message: String| ScheduleError::Expression {
            expr: expr.to_owned(),
            message,
        };
        let mut pattern = expr;
        if expr.starts_with('@') {
            if !ALIASES.iter().any(|a| a.eq_ignore_ascii_case(expr)) {
                return Err(bad(format!(
                    "unknown alias (use one of {})",
                    ALIASES.join(", ")
                )));
            }
            if let Some((_, base)) = EXTRA_ALIASES
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(expr))
            {
                pattern = base;
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| bad(e.to_string()))?;
        // croner searches until the year 5000, so one search tells (about
        // 40 ms in a release build when nothing matches).
        if cron.find_next_occurrence(&reference_time(), false).is_err() {
            return Err(bad("never fires".into()));
        }
        let every_hour = (0..24).all(|h| cron.pattern.hour_match(h).unwrap_or(false));
        Ok(Schedule {
            expr: expr.to_owned(),
            cron,
            zone,
            every_hour,
        })
    }

    /// The expression as written in the job.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone the expression is read in, for callers that show or compare it.
    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// The zone's IANA name, or `local` (see [`Zone::name`]).
    pub fn zone_name(&self) -> &'static str {
        self.zone.name()
    }

    /// The first fire time strictly after `t`, or `None` past the year 5000.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone {
            Zone::Named(tz) => self.next_in(&tz, t),
            Zone::Local => self.next_in(&Local, t),
        }
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(after), |t| self.next_after(*t))
            .take(n)
            .collect()
    }

    /// The first run strictly after `t` when every run is delayed by `offset`
    /// (the job's [`jitter_offset`]): a fire time shortly before `t` may still
    /// have its run ahead.
    pub fn next_run_after(&self, t: DateTime<Utc>, offset: Duration) -> Option<DateTime<Utc>> {
        let offset = TimeDelta::from_std(offset).ok()?;
        Some(self.next_after(t.checked_sub_signed(offset)?)? + offset)
    }

    /// Whether at least one fire time lies in (`from`, `to`]: a run was missed
    /// while the daemon was down, the machine slept or the clock jumped. One
    /// search, however often the schedule fires.
    pub fn missed_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        from < to && self.next_after(from).is_some_and(|t| t <= to)
    }

    /// `t` in the schedule's zone: RFC 3339 with the offset, then the zone's
    /// abbreviation (`CET`), or its name where the zone has only a numeric one.
    pub fn format_local(&self, t: DateTime<Utc>) -> String {
        match self.zone {
            Zone::Named(tz) => {
                let local = t.with_timezone(&tz);
                let label = local
                    .offset()
                    .abbreviation()
                    .filter(|a| a.chars().all(|c| c.is_ascii_alphabetic()))
                    .unwrap_or(tz.name());
                format!(
                    "{} {label}",
                    local.to_rfc3339_opts(SecondsFormat::AutoSi, false)
                )
            }
            Zone::Local => format!(
                "{} local",
                t.with_timezone(&Local)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false)
            ),
        }
    }

    fn next_in<Z: TimeZone>(&self, zone: &Z, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(zone);
        if self.every_hour {
            // croner's own search runs in real time and has the rules we want.
            let next = self.cron.find_next_occurrence(&local, false).ok()?;
            return Some(next.with_timezone(&Utc));
        }
        // The first scheduled wall clock time the clock has not reached yet.
        // During the second pass of a repeated hour the clock has already
        // been up to the end of that hour.
        let wall = local.naive_local();
        let (from, inclusive) = match zone.from_local_datetime(&wall) {
            LocalResult::Ambiguous(_, later) if local >= later => (
                first_wall_where(zone, wall, |r| !matches!(r, LocalResult::Ambiguous(..)))?,
                true,
            ),
            _ => (wall, false),
        };
        let due = self.cron.find_next_occurrence(&from, inclusive).ok()?;
        first_instant_at(zone, due)
    }
}

/// Where the "never fires" check starts searching: any fixed instant does,
/// since a pattern without a year repeats within 400 years.
fn reference_time() -> NaiveDateTime {
    DateTime::<Utc>::UNIX_EPOCH.naive_utc()
}

/// The first instant the wall clock of `zone` shows `wall` or later: `wall`
/// itself, its first pass if it repeats, the end of the gap if it is skipped.
fn first_instant_at<Z: TimeZone>(zone: &Z, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let wall = match zone.from_local_datetime(&wall) {
        LocalResult::None => first_wall_where(zone, wall, |r| !matches!(r, LocalResult::None))?,
        _ => wall,
    };
    zone.from_local_datetime(&wall)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// The first whole second after `start` at which `done` holds for the zone's
/// resolution of the wall clock time, when it does not hold at `start`: the
/// end of the gap or of the repeated hour `start` is in. Bisects over a day,
/// which is wider than any daylight-saving change.
fn first_wall_where<Z: TimeZone>(
    zone: &Z,
    start: NaiveDateTime,
    done: impl Fn(&LocalResult<DateTime<Z>>) -> bool,
) -> Option<NaiveDateTime> {
    let at = |secs: i64| start + TimeDelta::seconds(secs);
    let holds = |secs: i64| done(&zone.from_local_datetime(&at(secs)));
    let (mut lo, mut hi) = (0, 86_400);
    if !holds(hi) {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if holds(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // Whole seconds: changes of offset happen on them.
    at(hi).with_nanosecond(0)
}

/// A job's fixed delay after each fire time, in [0, `jitter`): derived from
/// the job's name (SHA-256), so it is the same on every run and every machine
/// and jobs with the same schedule spread out. Whole seconds when `jitter` is
/// a second or more, milliseconds below that; zero when `jitter` is zero.
pub fn jitter_offset(job_name: &str, jitter: Duration) -> Duration {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(job_name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let hash = u64::from_be_bytes(first);
    if jitter >= Duration::from_secs(1) {
        Duration::from_secs(hash % jitter.as_secs())
    } else {
        let millis = jitter.subsec_millis();
        if millis == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(hash % u64::from(millis))
    }
}

/// What `ftpsync schedule JOB...` prints: for each job its name, expression,
/// zone and jitter, then its next `n` runs after `now` (jitter included), in
/// the job's zone and in UTC.
pub fn schedule_text(
    entries: &[(&str, &Schedule, Duration)],
    now: DateTime<Utc>,
    n: usize,
) -> String {
    let mut out = String::new();
    for (i, (name, schedule, jitter)) in entries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let jitter_note = if jitter.is_zero() {
            String::new()
        } else {
            format!(", jitter {}", format_duration(*jitter))
        };
        let _ = writeln!(
            out,
            "{name}  ({}, {}{jitter_note})",
            schedule.expr(),
            schedule.zone_name()
        );
        let offset = jitter_offset(name, *jitter);
        let runs: Vec<(String, String)> =
            std::iter::successors(schedule.next_run_after(now, offset), |t| {
                schedule.next_run_after(*t, offset)
            })
            .take(n)
            .map(|t| {
                (
                    schedule.format_local(t),
                    t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                )
            })
            .collect();
        if runs.is_empty() {
            out.push_str("  (no upcoming runs)\n");
        }
        let width = runs.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (local, utc) in runs {
            let _ = writeln!(out, "  {local:<width$}    {utc}");
        }
    }
    out
}

/// `30s`, `5m`, `1h`, `500ms`: the units the job file takes.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike as _, Weekday};

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("test time")
    }

    fn schedule(expr: &str, zone: &str) -> Schedule {
        Schedule::parse(expr, Some(zone)).expect("test schedule")
    }

    /// The next `n` fire times after `from`, in the schedule's zone.
    fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let s = schedule(expr, zone);
        s.upcoming(utc(from), n)
            .into_iter()
            .map(|t| s.format_local(t))
            .collect()
    }

    fn expression_error(expr: &str) -> String {
        match Schedule::parse(expr, Some("UTC")) {
            Err(ScheduleError::Expression { message, .. }) => message,
            other => panic!("{expr}: expected an expression error, got {other:?}"),
        }
    }

    // America/New_York, 2027-03-14: 02:00 EST jumps to 03:00 EDT (07:00Z).

    #[test]
    fn new_york_spring_forward() {
        // A daily time in the gap runs once, right after it.
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2027-03-13T12:00:00Z", 2),
            [
                "2027-03-14T03:00:00-04:00 EDT",
                "2027-03-15T02:30:00-04:00 EDT"
            ]
        );
        // Every hour keeps its rhythm: one real hour from 01:30 EST to 03:30 EDT.
        assert_eq!(
            fires("30 * * * *", "America/New_York", "2027-03-14T05:00:00Z", 4),
            [
                "2027-03-14T00:30:00-05:00 EST",
                "2027-03-14T01:30:00-05:00 EST",
                "2027-03-14T03:30:00-04:00 EDT",
                "2027-03-14T04:30:00-04:00 EDT"
            ]
        );
        // 02:00 to 02:45 are skipped: one run right after the gap for all four.
        assert_eq!(
            fires(
                "*/15 1-2 * * *",
                "America/New_York",
                "2027-03-14T05:00:00Z",
                6
            ),
            [
                "2027-03-14T01:00:00-05:00 EST",
                "2027-03-14T01:15:00-05:00 EST",
                "2027-03-14T01:30:00-05:00 EST",
                "2027-03-14T01:45:00-05:00 EST",
                "2027-03-14T03:00:00-04:00 EDT",
                "2027-03-15T01:00:00-04:00 EDT"
            ]
        );
    }

    // America/New_York, 2027-11-07: 02:00 EDT goes back to 01:00 EST (06:00Z),
    // so 01:00 to 01:59 happen twice.

    #[test]
    fn new_york_fall_back() {
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2027-11-07T04:00:00Z", 2),
            [
                "2027-11-07T01:30:00-04:00 EDT",
                "2027-11-08T01:30:00-05:00 EST"
            ]
        );
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2027-11-07T04:00:00Z", 2),
            [
                "2027-11-07T02:30:00-05:00 EST",
                "2027-11-08T02:30:00-05:00 EST"
            ]
        );
        // Every hour: the repeated hour is two real hours, and each runs.
        assert_eq!(
            fires("30 * * * *", "America/New_York", "2027-11-07T04:00:00Z", 4),
            [
                "2027-11-07T00:30:00-04:00 EDT",
                "2027-11-07T01:30:00-04:00 EDT",
                "2027-11-07T01:30:00-05:00 EST",
                "2027-11-07T02:30:00-05:00 EST"
            ]
        );
        // Fixed hours: the repeated hour runs on its first pass only.
        assert_eq!(
            fires(
                "*/15 1-2 * * *",
                "America/New_York",
                "2027-11-07T04:00:00Z",
                9
            ),
            [
                "2027-11-07T01:00:00-04:00 EDT",
                "2027-11-07T01:15:00-04:00 EDT",
                "2027-11-07T01:30:00-04:00 EDT",
                "2027-11-07T01:45:00-04:00 EDT",
                "2027-11-07T02:00:00-05:00 EST",
                "2027-11-07T02:15:00-05:00 EST",
                "2027-11-07T02:30:00-05:00 EST",
                "2027-11-07T02:45:00-05:00 EST",
                "2027-11-08T01:00:00-05:00 EST"
            ]
        );
    }

    // Europe/Berlin, 2027-03-28: 02:00 CET jumps to 03:00 CEST (01:00Z).

    #[test]
    fn berlin_spring_forward() {
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2027-03-27T12:00:00Z", 2),
            [
                "2027-03-28T03:00:00+02:00 CEST",
                "2027-03-29T02:30:00+02:00 CEST"
            ]
        );
        assert_eq!(
            fires("30 * * * *", "Europe/Berlin", "2027-03-27T23:00:00Z", 3),
            [
                "2027-03-28T00:30:00+01:00 CET",
                "2027-03-28T01:30:00+01:00 CET",
                "2027-03-28T03:30:00+02:00 CEST"
            ]
        );
        assert_eq!(
            fires("*/15 1-2 * * *", "Europe/Berlin", "2027-03-27T23:30:00Z", 6),
            [
                "2027-03-28T01:00:00+01:00 CET",
                "2027-03-28T01:15:00+01:00 CET",
                "2027-03-28T01:30:00+01:00 CET",
                "2027-03-28T01:45:00+01:00 CET",
                "2027-03-28T03:00:00+02:00 CEST",
                "2027-03-29T01:00:00+02:00 CEST"
            ]
        );
        // The time right after the gap is scheduled itself: still one run.
        assert_eq!(
            fires("0 2,3 * * *", "Europe/Berlin", "2027-03-27T12:00:00Z", 2),
            [
                "2027-03-28T03:00:00+02:00 CEST",
                "2027-03-29T02:00:00+02:00 CEST"
            ]
        );
    }

    // Europe/Berlin, 2027-10-31: 03:00 CEST goes back to 02:00 CET (01:00Z),
    // so 02:00 to 02:59 happen twice.

    #[test]
    fn berlin_fall_back() {
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2027-10-30T12:00:00Z", 2),
            [
                "2027-10-31T02:30:00+02:00 CEST",
                "2027-11-01T02:30:00+01:00 CET"
            ]
        );
        assert_eq!(
            fires("30 * * * *", "Europe/Berlin", "2027-10-30T23:00:00Z", 4),
            [
                "2027-10-31T01:30:00+02:00 CEST",
                "2027-10-31T02:30:00+02:00 CEST",
                "2027-10-31T02:30:00+01:00 CET",
                "2027-10-31T03:30:00+01:00 CET"
            ]
        );
        assert_eq!(
            fires("*/15 1-2 * * *", "Europe/Berlin", "2027-10-30T22:30:00Z", 9),
            [
                "2027-10-31T01:00:00+02:00 CEST",
                "2027-10-31T01:15:00+02:00 CEST",
                "2027-10-31T01:30:00+02:00 CEST",
                "2027-10-31T01:45:00+02:00 CEST",
                "2027-10-31T02:00:00+02:00 CEST",
                "2027-10-31T02:15:00+02:00 CEST",
                "2027-10-31T02:30:00+02:00 CEST",
                "2027-10-31T02:45:00+02:00 CEST",
                "2027-11-01T01:00:00+01:00 CET"
            ]
        );
        assert_eq!(
            fires("0 */2 * * *", "Europe/Berlin", "2027-10-30T21:30:00Z", 3),
            [
                "2027-10-31T00:00:00+02:00 CEST",
                "2027-10-31T02:00:00+02:00 CEST",
                "2027-10-31T04:00:00+01:00 CET"
            ]
        );
    }

    #[test]
    fn starting_inside_the_repeated_hour() {
        // 02:20 CEST, the first pass: the rest of the first pass still runs.
        assert_eq!(
            fires("*/15 1-2 * * *", "Europe/Berlin", "2027-10-31T00:20:00Z", 3),
            [
                "2027-10-31T02:30:00+02:00 CEST",
                "2027-10-31T02:45:00+02:00 CEST",
                "2027-11-01T01:00:00+01:00 CET"
            ]
        );
        // 02:10 CET, the second pass: those times already ran.
        assert_eq!(
            fires(
                "*/15 1-2 * * *",
                "Europe/Berlin",
                "2027-10-31T01:10:00.5Z",
                1
            ),
            ["2027-11-01T01:00:00+01:00 CET"]
        );
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2027-10-31T01:10:00Z", 1),
            ["2027-11-01T02:30:00+01:00 CET"]
        );
        // Every hour: the second pass runs too.
        assert_eq!(
            fires("30 * * * *", "Europe/Berlin", "2027-10-31T01:10:00Z", 1),
            ["2027-10-31T02:30:00+01:00 CET"]
        );
    }

    #[test]
    fn next_is_strictly_after() {
        let s = schedule("0 3 * * *", "UTC");
        assert_eq!(
            s.next_after(utc("2027-03-01T03:00:00Z")),
            Some(utc("2027-03-02T03:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2027-03-01T02:59:59.999Z")),
            Some(utc("2027-03-01T03:00:00Z"))
        );
        let every_second = schedule("* * * * * *", "UTC");
        assert_eq!(
            every_second.next_after(utc("2027-03-01T03:00:00.5Z")),
            Some(utc("2027-03-01T03:00:01Z"))
        );
    }

    #[test]
    fn day_of_week_zero_and_seven_are_sunday() {
        // 2027-03-01 is a Monday.
        let from = utc("2027-03-01T00:00:00Z");
        for expr in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN", "0 12 * * sun"] {
            let next = schedule(expr, "UTC").next_after(from).unwrap();
            assert_eq!(next, utc("2027-03-07T12:00:00Z"), "{expr}");
            assert_eq!(next.weekday(), Weekday::Sun);
        }
        let monday = schedule("0 12 * * 1", "UTC").next_after(from).unwrap();
        assert_eq!(monday, utc("2027-03-01T12:00:00Z"));
        assert_eq!(monday.weekday(), Weekday::Mon);
        let weekend = schedule("0 12 * * 6-7", "UTC").upcoming(from, 2);
        assert_eq!(
            weekend,
            [utc("2027-03-06T12:00:00Z"), utc("2027-03-07T12:00:00Z")]
        );
    }

    #[test]
    fn six_fields_lead_with_seconds() {
        let s = schedule("*/20 * * * * *", "UTC");
        assert_eq!(
            s.upcoming(utc("2027-03-01T00:00:05Z"), 3),
            [
                utc("2027-03-01T00:00:20Z"),
                utc("2027-03-01T00:00:40Z"),
                utc("2027-03-01T00:01:00Z")
            ]
        );
        let s = schedule("5 0 12 * * *", "UTC");
        assert_eq!(
            s.next_after(utc("2027-03-01T00:00:00Z")),
            Some(utc("2027-03-01T12:00:05Z"))
        );
        // Five fields fire on the minute.
        let s = schedule("0 12 * * *", "UTC");
        assert_eq!(
            s.next_after(utc("2027-03-01T00:00:00Z")),
            Some(utc("2027-03-01T12:00:00Z"))
        );
    }

    #[test]
    fn aliases() {
        // A Monday, 10:10.
        let from = utc("2027-03-01T10:10:00Z");
        for (alias, next) in [
            ("@hourly", "2027-03-01T11:00:00Z"),
            ("@daily", "2027-03-02T00:00:00Z"),
            ("@midnight", "2027-03-02T00:00:00Z"),
            ("@Daily", "2027-03-02T00:00:00Z"),
            ("@weekly", "2027-03-07T00:00:00Z"),
            ("@monthly", "2027-04-01T00:00:00Z"),
            ("@yearly", "2028-01-01T00:00:00Z"),
            ("@annually", "2028-01-01T00:00:00Z"),
        ] {
            let s = schedule(alias, "UTC");
            assert_eq!(s.next_after(from), Some(utc(next)), "{alias}");
            assert_eq!(s.expr(), alias);
        }
        assert!(expression_error("@reboot").contains("unknown alias"));
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        for expr in ["* * * *", "1 2 3 4 5 6 7", "0 0 * * * * 2027"] {
            let message = expression_error(expr);
            assert!(message.contains("5 or 6 fields"), "{expr}: {message}");
        }
        for expr in [
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "61 * * * * *",
        ] {
            let message = expression_error(expr);
            assert!(message.contains("out of bounds"), "{expr}: {message}");
        }
        for expr in ["", "hello", "every day", "* * * * mon-fry", "0/5 * * * *"] {
            assert!(!expression_error(expr).is_empty(), "{expr}");
        }
        assert_eq!(expression_error("0 0 30 2 *"), "never fires");
        let err = Schedule::parse(" 61 * * * * ", Some("UTC")).unwrap_err();
        assert!(
            err.to_string().starts_with("`61 * * * *`: "),
            "the expression is quoted: {err}"
        );
    }

    #[test]
    fn zones() {
        assert_eq!(
            Zone::parse("Europe/Berlin"),
            Ok(Zone::Named(chrono_tz::Europe::Berlin))
        );
        assert_eq!(Zone::parse("UTC").unwrap().name(), "UTC");
        for bad in ["Europe/Berln", "europe/berlin", "", "CET-1CEST"] {
            assert_eq!(
                Zone::parse(bad),
                Err(ScheduleError::UnknownZone(bad.into()))
            );
        }
        assert!(matches!(
            Schedule::parse("0 0 * * *", Some("Mars/Olympus")),
            Err(ScheduleError::UnknownZone(_))
        ));
        let s = schedule("0 0 * * *", "Asia/Tokyo");
        assert_eq!(s.zone_name(), "Asia/Tokyo");
        assert_eq!(
            s.next_after(utc("2027-03-01T00:00:00Z")),
            Some(utc("2027-03-01T15:00:00Z"))
        );
        // No timezone: the system's zone, by name where it has one.
        let system = Schedule::parse("0 0 * * *", None).unwrap();
        assert_eq!(system.zone(), Zone::system());
        assert!(!system.zone_name().is_empty());
    }

    #[test]
    fn local_zone_fires_at_local_times() {
        let s = Schedule::with_zone("30 4 * * *", Zone::Local).unwrap();
        assert_eq!(s.zone_name(), "local");
        let next = s.next_after(utc("2027-06-01T00:00:00Z")).unwrap();
        let local = next.with_timezone(&Local);
        assert_eq!((local.hour(), local.minute()), (4, 30));
        assert!(s.format_local(next).ends_with(" local"));
    }

    #[test]
    fn format_local_names_the_zone() {
        let t = utc("2027-03-28T00:45:12Z");
        assert_eq!(
            schedule("* * * * *", "Europe/Berlin").format_local(t),
            "2027-03-28T01:45:12+01:00 CET"
        );
        // UTC itself keeps its offset; the Z is for the UTC column.
        assert_eq!(
            schedule("* * * * *", "UTC").format_local(t),
            "2027-03-28T00:45:12+00:00 UTC"
        );
        // A zone whose abbreviation is only a number is named instead.
        assert_eq!(
            schedule("* * * * *", "Europe/Istanbul").format_local(t),
            "2027-03-28T03:45:12+03:00 Europe/Istanbul"
        );
        assert_eq!(
            schedule("* * * * *", "UTC").format_local(utc("2027-03-28T00:45:12.250Z")),
            "2027-03-28T00:45:12.250+00:00 UTC"
        );
    }

    #[test]
    fn missed_between_looks_at_one_occurrence() {
        let s = schedule("0 3 * * *", "UTC");
        let t = utc;
        assert!(s.missed_between(t("2027-03-01T02:00:00Z"), t("2027-03-01T03:00:00Z")));
        assert!(s.missed_between(t("2027-03-01T02:00:00Z"), t("2027-03-05T00:00:00Z")));
        assert!(!s.missed_between(t("2027-03-01T02:00:00Z"), t("2027-03-01T02:59:59Z")));
        // The start is excluded: that run is the one that already happened.
        assert!(!s.missed_between(t("2027-03-01T03:00:00Z"), t("2027-03-02T02:59:59Z")));
        // A clock that went back.
        assert!(!s.missed_between(t("2027-03-02T04:00:00Z"), t("2027-03-01T02:00:00Z")));
        assert!(!s.missed_between(t("2027-03-02T04:00:00Z"), t("2027-03-02T04:00:00Z")));

        // Cheap for a schedule that fires every second, over a year.
        let every_second = schedule("* * * * * *", "UTC");
        let started = std::time::Instant::now();
        assert!(every_second.missed_between(t("2027-01-01T00:00:00Z"), t("2028-01-01T00:00:00Z")));
        assert!(started.elapsed() < Duration::from_secs(1));
        let yearly = schedule("@yearly", "Europe/Berlin");
        assert!(!yearly.missed_between(t("2027-01-01T00:00:00Z"), t("2027-12-31T22:59:59Z")));
        assert!(yearly.missed_between(t("2027-01-01T00:00:00Z"), t("2027-12-31T23:00:00Z")));
    }

    #[test]
    fn jitter_is_fixed_and_within_bounds() {
        let jitter = Duration::from_secs(30);
        assert_eq!(jitter_offset("site", jitter), jitter_offset("site", jitter));
        assert_eq!(jitter_offset("site", Duration::ZERO), Duration::ZERO);
        assert_eq!(
            jitter_offset("site", Duration::from_micros(999)),
            Duration::ZERO
        );
        let names: Vec<String> = (0..50).map(|i| format!("job-{i}")).collect();
        for limit in [
            Duration::from_millis(1),
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_millis(1500),
            jitter,
            Duration::from_secs(3600),
        ] {
            for name in &names {
                assert!(jitter_offset(name, limit) < limit, "{name} {limit:?}");
            }
        }
        let distinct: std::collections::HashSet<Duration> =
            names.iter().map(|n| jitter_offset(n, jitter)).collect();
        assert!(distinct.len() > 10, "names spread out: {distinct:?}");
        // Whole seconds from a second up, so run times print plainly.
        assert!(
            names
                .iter()
                .all(|n| jitter_offset(n, jitter).subsec_nanos() == 0)
        );
    }

    #[test]
    fn a_run_delayed_by_jitter_can_be_due_after_its_fire_time() {
        let s = schedule("*/15 * * * *", "UTC");
        let offset = Duration::from_secs(12);
        assert_eq!(
            s.next_run_after(utc("2027-03-01T00:15:05Z"), offset),
            Some(utc("2027-03-01T00:15:12Z"))
        );
        assert_eq!(
            s.next_run_after(utc("2027-03-01T00:15:12Z"), offset),
            Some(utc("2027-03-01T00:30:12Z"))
        );
    }

    #[test]
    fn schedule_text_across_a_spring_forward() {
        let site = schedule("*/15 * * * *", "Europe/Berlin");
        let backup = schedule("30 2 * * *", "Europe/Berlin");
        let entries = [
            ("site", &site, Duration::from_secs(30)),
            ("backup", &backup, Duration::ZERO),
        ];
        // 01:40 CET, twenty minutes before the clocks jump to 03:00 CEST.
        // `site` runs 22 s after each fire time, on every machine.
        let text = schedule_text(&entries, utc("2027-03-28T00:40:00Z"), 3);
        assert_eq!(
            text,
            "\
site  (*/15 * * * *, Europe/Berlin, jitter 30s)
  2027-03-28T01:45:22+01:00 CET     2027-03-28T00:45:22Z
  2027-03-28T03:00:22+02:00 CEST    2027-03-28T01:00:22Z
  2027-03-28T03:15:22+02:00 CEST    2027-03-28T01:15:22Z

backup  (30 2 * * *, Europe/Berlin)
  2027-03-28T03:00:00+02:00 CEST    2027-03-28T01:00:00Z
  2027-03-29T02:30:00+02:00 CEST    2027-03-29T00:30:00Z
  2027-03-30T02:30:00+02:00 CEST    2027-03-30T00:30:00Z
"
        );
    }
}
