//! Timestamps as precise as their source gave them. A remote listing may
//! say seconds (MLSD, UTC), minutes or only a day (LIST, server-local), and
//! the precision is part of the value so that comparisons never invent
//! digits the server did not send. It also learns a server's time offset
//! (a time zone, or a clock that is off) from files seen on both sides, for
//! adopting an existing tree on a first run.

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

    /// Whether this remote time and a local file's modification time
    /// (`local_ns`, nanoseconds since the epoch, UTC) can be the same
    /// moment, given that the server reports times `offset_s` seconds
    /// later than they are (0: a server that reports UTC, as RFC 3659 asks).
    ///
    /// - Exact: within [`TOLERANCE_S`] (the server drops the fraction).
    /// - Minute: the local time, shifted, falls in that minute.
    /// - Day, Unknown: never. A day says too little to call two files the
    ///   same; such files need a second-precision time (MDTM) first.
    pub fn agrees_with_local(&self, local_ns: i64, offset_s: i64) -> bool {
        let Some(local) = local_secs(local_ns).checked_add(offset_s) else {
            return false;
        };
        match *self {
            RemoteTime::Exact(t) => (t.and_utc().timestamp() - local).abs() <= TOLERANCE_S,
            RemoteTime::Minute(t) => {
                truncate_to_minute(t).and_utc().timestamp() == local - local.rem_euclid(60)
            }
            RemoteTime::Day(_) | RemoteTime::Unknown => false,
        }
    }
}

/// A [`RemoteTime`] in one word that is never zero, as the remote tree and
/// the state keep it: the variant's seconds since the epoch shifted left by
/// three bits, and the variant in those bits (1 to 4). A `RemoteTime` takes
/// 16 bytes, and an `Option` of what holds it one more word; at 100,000
/// files that was 1.6 MB across the remote tree and the state. Fractions of
/// a second are dropped, as every parser here drops them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackedTime(std::num::NonZeroU64);

impl std::fmt::Debug for PackedTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.unpack().fmt(f)
    }
}

impl PackedTime {
    const EXACT: u64 = 1;
    const MINUTE: u64 = 2;
    const DAY: u64 = 3;
    const UNKNOWN: u64 = 4;

    pub(crate) fn pack(t: RemoteTime) -> PackedTime {
        let (secs, tag) = match t {
            RemoteTime::Exact(t) => (t.and_utc().timestamp(), Self::EXACT),
            RemoteTime::Minute(t) => (t.and_utc().timestamp(), Self::MINUTE),
            RemoteTime::Day(d) => (d.and_time(NaiveTime::MIN).and_utc().timestamp(), Self::DAY),
            RemoteTime::Unknown => (0, Self::UNKNOWN),
        };
        // chrono's dates end at year ±262,143: under 2^43 seconds, so the
        // shift loses nothing.
        let word = ((secs << 3) as u64) | tag;
        PackedTime(std::num::NonZeroU64::new(word).unwrap_or(std::num::NonZeroU64::MIN))
    }

    pub(crate) fn unpack(self) -> RemoteTime {
        let word = self.0.get();
        let secs = (word as i64) >> 3;
        let at = || chrono::DateTime::from_timestamp(secs, 0).map(|t| t.naive_utc());
        match (word & 7, at()) {
            (Self::EXACT, Some(t)) => RemoteTime::Exact(t),
            (Self::MINUTE, Some(t)) => RemoteTime::Minute(t),
            (Self::DAY, Some(t)) => RemoteTime::Day(t.date()),
            _ => RemoteTime::Unknown,
        }
    }
}

/// A local modification time (nanoseconds) in whole seconds, rounded down
/// as servers round their times.
fn local_secs(ns: i64) -> i64 {
    ns.div_euclid(1_000_000_000)
}

/// How far apart two second-precision times of the same unchanged file may
/// be: a server drops the fraction of a second, and FAT-backed or
/// Windows servers round to even seconds.
pub const TOLERANCE_S: i64 = 1;

/// The fewest files that must agree on an offset before it is believed:
/// one or two odd files never define how a server reports time.
pub const MIN_AGREEING: usize = 3;

/// Offsets beyond this are not a time zone (UTC−12 to UTC+14) or a clock
/// that drifted: they are files that differ.
pub const MAX_OFFSET_S: i64 = 26 * 3600;

/// Time zones are whole quarter-hours (UTC+5:45 is the oddest in use).
const ZONE_STEP_S: i64 = 900;

/// What kind of offset a server's times have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetKind {
    /// A whole number of quarter-hours: the server reports local time.
    Zone,
    /// Anything else: the times are shifted as by a clock that is off.
    Clock,
}

/// A server's time offset, learned from files seen on both sides: the
/// server's time of a file minus the local file's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TimeOffset {
    pub seconds: i64,
    pub kind: OffsetKind,
    /// Files whose times agree on it, of the files compared.
    pub agreeing: usize,
    pub compared: usize,
}

impl TimeOffset {
    /// What was learned, for the plan: `server reports local time, UTC+5`,
    /// `server clock is 3 min 12 s ahead`.
    pub fn describe(&self) -> String {
        match self.kind {
            OffsetKind::Zone => {
                let sign = if self.seconds < 0 { '−' } else { '+' };
                let m = self.seconds.abs() / 60;
                let zone = if m % 60 == 0 {
                    format!("{}", m / 60)
                } else {
                    format!("{}:{:02}", m / 60, m % 60)
                };
                format!("server reports local time, UTC{sign}{zone}")
            }
            OffsetKind::Clock => {
                let s = self.seconds.abs();
                let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
                let mut parts = Vec::new();
                if h > 0 {
                    parts.push(format!("{h} h"));
                }
                if m > 0 {
                    parts.push(format!("{m} min"));
                }
                if sec > 0 {
                    parts.push(format!("{sec} s"));
                }
                let way = if self.seconds < 0 { "behind" } else { "ahead" };
                format!("server clock is {} {way}", parts.join(" "))
            }
        }
    }
}

/// Learns a server's time offset from files seen on both sides with the
/// same size: each pair is (local modification time in ns, the server's
/// time of the file to the second).
///
/// The rule: the offset on which the most files agree (within
/// [`TOLERANCE_S`]) is believed when at least [`MIN_AGREEING`] files and a
/// strict majority of those compared agree on it, and it is within
/// [`MAX_OFFSET_S`]. A whole number of quarter-hours is a time zone. Any
/// other offset (a clock that is off) is believed only when the agreeing
/// files have at least [`MIN_AGREEING`] different local times: a tree
/// checked out in one second and uploaded in one burst without keeping
/// times would otherwise look like a consistent offset. `None` when the
/// times agree as they are, or nothing is consistent enough.
pub fn learn_offset(pairs: &[(i64, NaiveDateTime)]) -> Option<TimeOffset> {
    let mut deltas: Vec<(i64, i64)> = pairs
        .iter()
        .filter_map(|&(local_ns, remote)| {
            let local = local_secs(local_ns);
            let delta = remote.and_utc().timestamp().checked_sub(local)?;
            Some((delta, local))
        })
        .collect();
    deltas.sort_unstable();
    let within = |center: i64| {
        let lo = deltas.partition_point(|&(d, _)| d < center - TOLERANCE_S);
        let hi = deltas.partition_point(|&(d, _)| d <= center + TOLERANCE_S);
        &deltas[lo..hi]
    };
    // Candidate centers: every delta, and the quarter-hour next to it.
    let mut best: Option<(usize, bool, i64)> = None;
    for &(d, _) in &deltas {
        let q = (d as f64 / ZONE_STEP_S as f64).round() as i64 * ZONE_STEP_S;
        for center in [q, d] {
            let support = within(center).len();
            let zone = center % ZONE_STEP_S == 0 && center.abs() <= 14 * 3600;
            let key = (support, zone, -center.abs());
            if best.is_none_or(|(s, z, c)| key > (s, z, -c.abs())) {
                best = Some((support, zone, center));
            }
        }
    }
    let (support, zone, center) = best?;
    if center.abs() <= TOLERANCE_S
        || center.abs() > MAX_OFFSET_S
        || support < MIN_AGREEING
        || support * 2 <= deltas.len()
    {
        return None;
    }
    if !zone {
        let mut times: Vec<i64> = within(center).iter().map(|&(_, l)| l).collect();
        times.sort_unstable();
        times.dedup();
        if times.len() < MIN_AGREEING {
            return None;
        }
    }
    Some(TimeOffset {
        seconds: center,
        kind: if zone {
            OffsetKind::Zone
        } else {
            OffsetKind::Clock
        },
        agreeing: support,
        compared: deltas.len(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i64 = 1_000_000_000;

    fn at(secs: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(secs, 0)
            .unwrap()
            .naive_utc()
    }

    #[test]
    fn a_packed_time_reads_back_as_it_was_given() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut times = vec![RemoteTime::Unknown];
        for date in [
            day(2026, 12, 7),
            day(1970, 1, 1),
            day(1969, 12, 31),
            day(1601, 1, 1),
            day(0, 1, 1),
            day(9999, 12, 31),
            day(2038, 1, 19),
        ] {
            for (h, m, s) in [(0, 0, 0), (23, 59, 59), (12, 34, 56)] {
                let t = date.and_hms_opt(h, m, s).unwrap();
                times.extend([RemoteTime::Exact(t), RemoteTime::Minute(t)]);
            }
            times.push(RemoteTime::Day(date));
        }
        for t in times {
            let packed = PackedTime::pack(t);
            assert_eq!(packed.unpack(), t);
            assert_eq!(packed.unpack().to_stored(), t.to_stored());
        }
        // Fractions are dropped, as the parsers drop them.
        let fraction = day(2026, 12, 7).and_hms_milli_opt(1, 2, 3, 456).unwrap();
        assert_eq!(
            PackedTime::pack(RemoteTime::Exact(fraction)).unpack(),
            RemoteTime::Exact(day(2026, 12, 7).and_hms_opt(1, 2, 3).unwrap())
        );
        // Different times stay different.
        assert_ne!(
            PackedTime::pack(RemoteTime::Exact(at(0))),
            PackedTime::pack(RemoteTime::Minute(at(0)))
        );
        assert_ne!(
            PackedTime::pack(RemoteTime::Exact(at(0))),
            PackedTime::pack(RemoteTime::Unknown)
        );
        assert_ne!(
            PackedTime::pack(RemoteTime::Exact(at(-1))),
            PackedTime::pack(RemoteTime::Exact(at(0)))
        );
    }

    /// A local time with a fraction of a second, as file systems keep it.
    fn local(secs: i64) -> i64 {
        secs * NS + 456_789_000
    }

    /// Files with different times (an hour apart), the server's copies
    /// `offset` seconds later.
    fn shifted(n: i64, offset: i64) -> Vec<(i64, NaiveDateTime)> {
        let base = 1_700_000_000;
        (0..n)
            .map(|i| (local(base + i * 3600), at(base + i * 3600 + offset)))
            .collect()
    }

    #[test]
    fn each_precision_agrees_only_as_far_as_it_says() {
        let t = 1_700_000_000; // 2023-11-14 22:13:20 UTC
        let l = local(t);
        assert!(RemoteTime::Exact(at(t)).agrees_with_local(l, 0));
        assert!(RemoteTime::Exact(at(t + 1)).agrees_with_local(l, 0));
        assert!(!RemoteTime::Exact(at(t + 2)).agrees_with_local(l, 0));
        assert!(!RemoteTime::Exact(at(t - 2)).agrees_with_local(l, 0));
        // Shifted by the server's offset.
        assert!(RemoteTime::Exact(at(t + 18_000)).agrees_with_local(l, 18_000));
        assert!(!RemoteTime::Exact(at(t + 18_000)).agrees_with_local(l, 0));
        // Minute: 22:13 holds 22:13:20; 22:14 does not.
        assert!(RemoteTime::Minute(at(t - 20)).agrees_with_local(l, 0));
        assert!(!RemoteTime::Minute(at(t + 40)).agrees_with_local(l, 0));
        assert!(RemoteTime::Minute(at(t - 20 + 3600)).agrees_with_local(l, 3600));
        // A day never settles it, nor an unknown time.
        assert!(!RemoteTime::Day(at(t).date()).agrees_with_local(l, 0));
        assert!(!RemoteTime::Unknown.agrees_with_local(l, 0));
        // Overflow is "no", not a panic.
        assert!(!RemoteTime::Exact(at(t)).agrees_with_local(i64::MAX, i64::MAX));
    }

    #[test]
    fn a_time_zone_is_learned_from_several_files() {
        let got = learn_offset(&shifted(4, 5 * 3600)).unwrap();
        assert_eq!(
            got,
            TimeOffset {
                seconds: 18_000,
                kind: OffsetKind::Zone,
                agreeing: 4,
                compared: 4
            }
        );
        assert_eq!(got.describe(), "server reports local time, UTC+5");
        // A second off either way (a dropped fraction) is still the zone.
        let mut pairs = shifted(4, -(3 * 3600 + 1800));
        pairs[1].1 += chrono::Duration::seconds(1);
        let got = learn_offset(&pairs).unwrap();
        assert_eq!((got.seconds, got.kind), (-12_600, OffsetKind::Zone));
        assert_eq!(got.describe(), "server reports local time, UTC−3:30");
    }

    #[test]
    fn a_clock_offset_needs_files_with_different_times() {
        let got = learn_offset(&shifted(3, 192)).unwrap();
        assert_eq!((got.seconds, got.kind), (192, OffsetKind::Clock));
        assert_eq!(got.describe(), "server clock is 3 min 12 s ahead");
        let behind = learn_offset(&shifted(5, -3723)).unwrap();
        assert_eq!(behind.describe(), "server clock is 1 h 2 min 3 s behind");
        // A tree checked out in one second and uploaded in one burst: a
        // consistent offset, but it says nothing.
        let burst: Vec<(i64, NaiveDateTime)> = (0..10)
            .map(|i| (local(1_700_000_000), at(1_700_000_192 + i % 2)))
            .collect();
        assert_eq!(learn_offset(&burst), None);
        // ...unless it is a whole zone, which a burst hits only by chance.
        let zone: Vec<(i64, NaiveDateTime)> = (0..10)
            .map(|_| (local(1_700_000_000), at(1_700_003_600)))
            .collect();
        assert_eq!(learn_offset(&zone).map(|o| o.seconds), Some(3600));
    }

    #[test]
    fn one_odd_file_never_defines_the_offset() {
        // Times that agree as they are: nothing to learn, whatever one file says.
        let mut pairs = shifted(4, 0);
        pairs.push((local(1_600_000_000), at(1_600_018_000)));
        assert_eq!(learn_offset(&pairs), None);
        // Two files are not enough, even when they are all there is.
        assert_eq!(learn_offset(&shifted(2, 18_000)), None);
        assert_eq!(learn_offset(&[]), None);
        // Three of six is no majority; four of six is.
        let scattered =
            |n: i64| (0..n).map(|i| (local(1_600_000_000 + i * 7), at(1_650_000_000 + i * 1001)));
        let mut half: Vec<_> = shifted(3, 3600);
        half.extend(scattered(3));
        assert_eq!(learn_offset(&half), None);
        let mut most: Vec<_> = shifted(4, 3600);
        most.extend(scattered(2));
        let got = learn_offset(&most).unwrap();
        assert_eq!((got.seconds, got.agreeing, got.compared), (3600, 4, 6));
        // Days apart is not a zone or a clock.
        assert_eq!(learn_offset(&shifted(5, 3 * 86_400)), None);
    }
}
