//! Timestamps as precise as their source gave them. A remote listing may
//! say seconds (MLSD, UTC), minutes or only a day (LIST, server-local), and
//! the precision is part of the value so that comparisons never invent
//! digits the server did not send.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// A timestamp as precise as the server gave it.
///
/// Listings differ in precision and time zone (MLSD is UTC to the second;
/// LIST is server-local to the minute or day, sometimes with a guessed
/// year), so the precision is part of the value and comparisons go through
/// [`RemoteTime::same_as`] rather than `==` across variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteTime {
    /// MLSD `modify` fact: UTC, seconds precision (fractions dropped).
    Exact(NaiveDateTime),
    /// LIST "Mon DD HH:MM" (year guessed), "YYYY-MM-DD HH:MM" or DOS
    /// "MM-DD-YY hh:mmAM": server-local time, minute precision.
    Minute(NaiveDateTime),
    /// LIST "Mon DD YYYY": day precision.
    Day(NaiveDate),
    /// No timestamp available.
    Unknown,
}

impl RemoteTime {
    /// Stable text form for storing in a database, e.g.
    /// `"exact:20261123225900"`, `"minute:202611232259"`, `"day:20261123"`,
    /// `"unknown"`. Sub-second and sub-minute parts that the variant does not
    /// carry are dropped. Round-trips through [`RemoteTime::parse_stored`] for
    /// years 0–9999, which covers everything the parsers here produce.
    pub fn to_stored(&self) -> String {
        match self {
            RemoteTime::Exact(t) => format!(
                "exact:{:04}{:02}{:02}{:02}{:02}{:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            RemoteTime::Minute(t) => format!(
                "minute:{:04}{:02}{:02}{:02}{:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute()
            ),
            RemoteTime::Day(d) => format!("day:{:04}{:02}{:02}", d.year(), d.month(), d.day()),
            RemoteTime::Unknown => "unknown".to_string(),
        }
    }

    /// Parses the text written by [`RemoteTime::to_stored`]; `None` for
    /// anything else (wrong prefix, wrong length, non-digits, impossible
    /// dates), so a corrupted database value is never silently accepted.
    pub fn parse_stored(s: &str) -> Option<RemoteTime> {
        if s == "unknown" {
            return Some(RemoteTime::Unknown);
        }
        let (kind, digits) = s.split_once(':')?;
        let d = digits.as_bytes();
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        match (kind, d.len()) {
            ("exact", 14) => {
                let date = date_from_digits(&d[..8])?;
                let time =
                    NaiveTime::from_hms_opt(num(&d[8..10])?, num(&d[10..12])?, num(&d[12..14])?)?;
                Some(RemoteTime::Exact(date.and_time(time)))
            }
            ("minute", 12) => {
                let date = date_from_digits(&d[..8])?;
                let time = NaiveTime::from_hms_opt(num(&d[8..10])?, num(&d[10..12])?, 0)?;
                Some(RemoteTime::Minute(date.and_time(time)))
            }
            ("day", 8) => Some(RemoteTime::Day(date_from_digits(d)?)),
            _ => None,
        }
    }

    /// Whether two observations of the same file are compatible with
    /// "unchanged".
    ///
    /// - Same precision: equal (Exact to the second, Minute to the minute).
    /// - Minute vs Day: date only, because `ls` switches a file from the
    ///   "HH:MM" form to the year form once it is six months old.
    /// - Exact vs Minute or Day: date only. Exact is UTC and Minute/Day are
    ///   server-local; no conversion is possible, so only the calendar date
    ///   fields are compared.
    /// - Unknown matches only Unknown.
    pub fn same_as(&self, other: &RemoteTime) -> bool {
        use RemoteTime::{Day, Exact, Minute, Unknown};
        match (*self, *other) {
            (Exact(a), Exact(b)) => truncate_to_second(a) == truncate_to_second(b),
            (Minute(a), Minute(b)) => truncate_to_minute(a) == truncate_to_minute(b),
            (Day(a), Day(b)) => a == b,
            (Unknown, Unknown) => true,
            (Minute(a), Day(b)) | (Day(b), Minute(a)) => a.date() == b,
            (Exact(a), Minute(b)) | (Minute(b), Exact(a)) => a.date() == b.date(),
            (Exact(a), Day(b)) | (Day(b), Exact(a)) => a.date() == b,
            _ => false,
        }
    }
}

fn truncate_to_second(t: NaiveDateTime) -> NaiveDateTime {
    t.with_nanosecond(0).unwrap_or(t)
}

fn truncate_to_minute(t: NaiveDateTime) -> NaiveDateTime {
    let t = truncate_to_second(t);
    t.with_second(0).unwrap_or(t)
}

/// Digits (already checked to be ASCII digits) as a number.
fn num(d: &[u8]) -> Option<u32> {
    std::str::from_utf8(d).ok()?.parse().ok()
}

/// `YYYYMMDD` → date.
fn date_from_digits(d: &[u8]) -> Option<NaiveDate> {
    let year = i32::try_from(num(d.get(..4)?)?).ok()?;
    NaiveDate::from_ymd_opt(year, num(d.get(4..6)?)?, num(d.get(6..8)?)?)
}
