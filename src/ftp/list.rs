//! Strict parsers for FTP directory listings: MLSD (RFC 3659), Unix `ls -l`
//! style LIST, and DOS/IIS style LIST.
//!
//! This module owns exactly one job: turning the raw bytes of a listing into
//! [`ListEntry`] values, or saying precisely which lines it could not read.
//! It does no I/O, no time zone conversion and no path-safety checks: callers
//! must still reject names such as `..`, names containing `/`, NUL, CR or LF
//! before using them as paths or sending them in commands.
//!
//! Rules it keeps, because a sync tool deletes and overwrites on the strength
//! of what it parses here:
//! - Names are untrusted bytes and are kept exactly as the server sent them:
//!   no lossy UTF-8 conversion (that can merge distinct names) and no
//!   trimming (names with leading or trailing spaces exist). Only the line
//!   terminator (LF or CRLF) is removed.
//! - A line that does not parse strictly is reported as [`ParsedLine::Bad`],
//!   never guessed to be "a file named after the whole line" (the fallback
//!   in suppaftp's `File::from_str` does that for ACL markers, fifos, lines
//!   without a group column and even `total 8`).
//! - Timestamps keep the precision the server gave ([`RemoteTime`]), so that
//!   later comparisons do not invent seconds or years that were never sent.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};

use crate::model::RemoteTime;

/// Which listing command produced the data, so that [`parse_listing`] picks
/// the matching grammar instead of guessing per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// `MLSD` output (RFC 3659 facts followed by a name).
    Mlsd,
    /// `LIST` output in Unix `ls -l` or DOS/IIS style.
    List,
}

/// What kind of filesystem object an entry is; the sync planner treats each
/// kind differently (recurse, transfer, recreate link, or skip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (Unix `l` mode, MLSD `OS.unix=slink`/`symlink`).
    Symlink,
    /// Anything else: fifo, socket, device, door, unknown MLSD type.
    Other,
}

/// One object found in a listing, with only the facts the sync engine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Raw bytes of the name, exactly as sent (may be non-UTF-8, may have
    /// leading/trailing spaces).
    pub name: Vec<u8>,
    /// What kind of object this is.
    pub kind: EntryKind,
    /// Size in bytes; `None` when the listing gave none (DOS `<DIR>`, MLSD
    /// without `size`/`sizd`, device files), so "absent" is never read as 0.
    pub size: Option<u64>,
    /// Modification time at the precision the server gave.
    pub mtime: RemoteTime,
    /// Target of a symlink (Unix "name -> target", MLSD `OS.unix=slink:target`).
    pub link_target: Option<Vec<u8>>,
    /// Mode bits (permissions, and setuid/setgid/sticky as listed) from a
    /// Unix mode string or the MLSD `UNIX.mode` fact; `None` when the
    /// listing shows none (DOS/IIS, MLSD without the fact).
    pub mode: Option<u32>,
}

/// Result of parsing one listing line; keeps "nothing here" and "could not
/// read this" apart so callers can refuse to act on incomplete listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedLine {
    /// A real entry.
    Entry(ListEntry),
    /// Lines that carry no entry: "total N", blank lines, "." and "..", MLSD cdir/pdir.
    Ignored,
    /// Unparseable: the reason, for reporting.
    Bad(String),
}

/// Parses one MLSD line (`fact=value;fact=value; name`).
///
/// Facts end at the first `"; "` (fact values never contain `;`), so the
/// name may itself contain spaces, `;` and `=`. Fact names and the `type`
/// value are case-insensitive. A missing `type`, a malformed fact, or a bad
/// `size`/`modify` value makes the line [`ParsedLine::Bad`]. A trailing LF or
/// CRLF is removed; nothing else is.
pub fn parse_mlsd_line(line: &[u8]) -> ParsedLine {
    let line = strip_terminator(line);
    if is_blank(line) {
        return ParsedLine::Ignored;
    }
    match parse_mlsd(line) {
        Ok(parsed) => parsed,
        Err(reason) => ParsedLine::Bad(reason),
    }
}

/// Parses one LIST line, trying the Unix `ls -l` grammar and then the
/// DOS/IIS grammar; if neither matches strictly the line is
/// [`ParsedLine::Bad`] (never "the whole line is a file name").
///
/// `now` is the current UTC time, used to guess the year of "Mon DD HH:MM"
/// entries: the year chosen is the latest of next year, this year and last
/// year that puts the entry no more than one day after `now`. `ls` only
/// prints "HH:MM" for times in the last six months, so the entry is never
/// really in the future; the one-day slack absorbs servers whose local time
/// zone is ahead of UTC (up to +14h) plus some clock skew, and also lets a
/// server already in the new year on 31 December UTC get the next year.
pub fn parse_list_line(line: &[u8], now: NaiveDateTime) -> ParsedLine {
    let line = strip_terminator(line);
    if is_blank(line) {
        return ParsedLine::Ignored;
    }
    let toks = tokens(line);
    if is_total_line(line, &toks) {
        return ParsedLine::Ignored;
    }
    match parse_unix(line, &toks, now) {
        Ok(parsed) => return parsed,
        Err(Reject::Bad(reason)) => return ParsedLine::Bad(format!("Unix listing: {reason}")),
        Err(Reject::NotThisFormat) => {}
    }
    match parse_dos(line, &toks) {
        Ok(parsed) => parsed,
        Err(Reject::Bad(reason)) => ParsedLine::Bad(format!("DOS listing: {reason}")),
        Err(Reject::NotThisFormat) => {
            ParsedLine::Bad("not a Unix (ls -l) or DOS/IIS listing line".to_string())
        }
    }
}

/// A whole parsed listing: the entries, plus every line that could not be
/// read so the caller can report it and avoid deleting on a partial view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Entries in listing order.
    pub entries: Vec<ListEntry>,
    /// (1-based line number, line as lossy UTF-8 for messages, reason)
    pub bad_lines: Vec<(usize, String, String)>,
}

/// Splits raw listing data on LF (stripping a trailing CR), parses each line
/// with the format's parser, and collects entries and bad lines. A final LF
/// does not start an extra line.
pub fn parse_listing(format: ListFormat, data: &[u8], now: NaiveDateTime) -> Listing {
    let mut listing = Listing::default();
    if data.is_empty() {
        return listing;
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let parsed = match format {
            ListFormat::Mlsd => parse_mlsd_line(line),
            ListFormat::List => parse_list_line(line, now),
        };
        match parsed {
            ParsedLine::Entry(entry) => listing.entries.push(entry),
            ParsedLine::Ignored => {}
            ParsedLine::Bad(reason) => listing.bad_lines.push((
                index + 1,
                String::from_utf8_lossy(line).into_owned(),
                reason,
            )),
        }
    }
    listing
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// Why a grammar rejected a line: either it is clearly not that format (try
/// the next one) or it is that format but malformed (report it).
enum Reject {
    NotThisFormat,
    Bad(String),
}

/// Removes one line terminator (LF or CRLF) and nothing else.
fn strip_terminator(line: &[u8]) -> &[u8] {
    match line.strip_suffix(b"\n") {
        Some(rest) => rest.strip_suffix(b"\r").unwrap_or(rest),
        None => line,
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|&b| b == b' ' || b == b'\t')
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a non-empty run of ASCII digits (no sign, no spaces) without overflow.
fn parse_digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &c| {
        if c.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

/// A size: digits, up to `i64::MAX` (what the state's SQLite integers
/// hold; a listing that claims more is not believed).
fn parse_size(b: &[u8]) -> Option<u64> {
    parse_digits(b).filter(|&n| i64::try_from(n).is_ok())
}

fn num(b: &[u8]) -> Option<u32> {
    parse_digits(b).and_then(|v| u32::try_from(v).ok())
}

fn all_digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

/// `YYYYMMDD` → date.
fn date_from_digits(d: &[u8]) -> Option<NaiveDate> {
    let year = i32::try_from(num(&d[..4])?).ok()?;
    NaiveDate::from_ymd_opt(year, num(&d[4..6])?, num(&d[6..8])?)
}

/// Byte spans of maximal runs of non-space bytes (only SP separates fields).
fn tokens(line: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        out.push((start, i));
    }
    out
}

fn tok<'a>(line: &'a [u8], toks: &[(usize, usize)], i: usize) -> Option<&'a [u8]> {
    toks.get(i).map(|&(s, e)| &line[s..e])
}

/// Builds the final result from a name: empty names are bad, "." and ".."
/// are ignored.
fn finish_entry(
    name: &[u8],
    kind: EntryKind,
    size: Option<u64>,
    mtime: RemoteTime,
    link_target: Option<Vec<u8>>,
    mode: Option<u32>,
) -> Result<ParsedLine, String> {
    if name.is_empty() {
        return Err("empty name".to_string());
    }
    if name == b"." || name == b".." {
        return Ok(ParsedLine::Ignored);
    }
    Ok(ParsedLine::Entry(ListEntry {
        name: name.to_vec(),
        kind,
        size,
        mtime,
        link_target,
        mode,
    }))
}

// ---------------------------------------------------------------------------
// MLSD
// ---------------------------------------------------------------------------

fn parse_mlsd(line: &[u8]) -> Result<ParsedLine, String> {
    let sep = find(line, b"; ").ok_or("no \"; \" separating the facts from the name")?;
    let facts = &line[..sep];
    let name = &line[sep + 2..];

    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut type_value: Option<&[u8]> = None;
    let mut size: Option<u64> = None;
    let mut sizd: Option<u64> = None;
    let mut mtime = RemoteTime::Unknown;
    let mut mode = None;

    for fact in facts.split(|&b| b == b';') {
        let eq = fact
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| format!("malformed fact {:?} (no '=')", lossy(fact)))?;
        let (fact_name, value) = (&fact[..eq], &fact[eq + 1..]);
        if fact_name.is_empty() {
            return Err(format!("malformed fact {:?} (empty name)", lossy(fact)));
        }
        let key = fact_name.to_ascii_lowercase();
        if seen.contains(&key) {
            return Err(format!("duplicate fact {:?}", lossy(fact_name)));
        }
        match key.as_slice() {
            b"type" => type_value = Some(value),
            b"size" => {
                size = Some(
                    parse_size(value)
                        .ok_or_else(|| format!("bad size value {:?}", lossy(value)))?,
                );
            }
            b"sizd" => {
                sizd = Some(
                    parse_size(value)
                        .ok_or_else(|| format!("bad sizd value {:?}", lossy(value)))?,
                );
            }
            b"modify" => {
                let t = parse_mlsd_time(value)
                    .ok_or_else(|| format!("bad modify value {:?}", lossy(value)))?;
                mtime = RemoteTime::Exact(t);
            }
            b"unix.mode" => {
                mode = Some(
                    parse_octal_mode(value)
                        .ok_or_else(|| format!("bad UNIX.mode value {:?}", lossy(value)))?,
                );
            }
            _ => {}
        }
        seen.push(key);
    }

    let type_value = type_value.ok_or("missing type fact")?;
    let lower = type_value.to_ascii_lowercase();
    let (kind, link_target) = match lower.as_slice() {
        b"" => return Err("empty type fact".to_string()),
        b"file" => (EntryKind::File, None),
        b"dir" => (EntryKind::Dir, None),
        b"cdir" | b"pdir" => return Ok(ParsedLine::Ignored),
        b"os.unix=slink" | b"os.unix=symlink" => (EntryKind::Symlink, None),
        t if t.starts_with(b"os.unix=slink:") || t.starts_with(b"os.unix=symlink:") => {
            let colon = type_value
                .iter()
                .position(|&b| b == b':')
                .unwrap_or(type_value.len());
            let target = &type_value[(colon + 1).min(type_value.len())..];
            let target = (!target.is_empty()).then(|| target.to_vec());
            (EntryKind::Symlink, target)
        }
        _ => (EntryKind::Other, None),
    };
    finish_entry(name, kind, size.or(sizd), mtime, link_target, mode)
}

/// An octal mode of one to four digits (`0644`, `755`, `2775`), as in the
/// `UNIX.mode` fact (proposed in draft-ietf-ftpext2-mlst-unix, used by
/// ProFTPD and Pure-FTPd); pyftpdlib writes it as Python does, `0o644`.
fn parse_octal_mode(v: &[u8]) -> Option<u32> {
    let v = v.strip_prefix(b"0o").unwrap_or(v);
    if v.is_empty() || v.len() > 4 || !v.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    Some(v.iter().fold(0, |m, b| m * 8 + u32::from(b - b'0')))
}

/// `YYYYMMDDHHMMSS[.fff]` (RFC 3659 time-val, UTC); fractions are dropped.
/// Also the form of an MDTM reply (RFC 3659 §3).
pub fn parse_mlsd_time(v: &[u8]) -> Option<NaiveDateTime> {
    if v.len() < 14 || !v[..14].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if v.len() > 14 && (v[14] != b'.' || !all_digits(&v[15..])) {
        return None;
    }
    let date = date_from_digits(&v[..8])?;
    let time = NaiveTime::from_hms_opt(num(&v[8..10])?, num(&v[10..12])?, num(&v[12..14])?)?;
    Some(date.and_time(time))
}

// ---------------------------------------------------------------------------
// Unix `ls -l`
// ---------------------------------------------------------------------------

/// File type characters accepted as the first mode character: regular,
/// directory, symlink, fifo, socket, char/block device, Solaris door,
/// HP-UX network special, BSD whiteout.
const UNIX_TYPE_CHARS: &[u8] = b"-dlpscbDnw";
const UNIX_PERM_CHARS: &[u8] = b"rwxsStTl-";
const UNIX_MODE_SUFFIXES: &[u8] = b"+@.";

fn is_total_line(line: &[u8], toks: &[(usize, usize)]) -> bool {
    toks.len() == 2
        && toks[0].0 == 0
        && tok(line, toks, 0) == Some(b"total".as_slice())
        && tok(line, toks, 1).is_some_and(|t| t[0].is_ascii_digit())
}

/// The mode bits of a valid `ls -l` mode string (`-rwsr-x--T`): `s`/`S`
/// are setuid or setgid with or without execute, `t`/`T` sticky, `l`
/// (mandatory locking, in the group execute place) no execute.
fn mode_bits(mode: &[u8]) -> u32 {
    let mut bits = 0;
    for (i, &c) in mode[1..10].iter().enumerate() {
        let shift = 8 - i as u32;
        let execute_place = i % 3 == 2;
        let set = match c {
            b'-' | b'l' | b'S' | b'T' => false,
            b'r' => !execute_place && i % 3 == 0,
            b'w' => !execute_place && i % 3 == 1,
            _ => execute_place,
        };
        if set {
            bits |= 1 << shift;
        }
        if execute_place && matches!(c, b's' | b'S' | b't' | b'T') {
            // setuid (owner), setgid (group), sticky (other).
            bits |= match i {
                2 => 0o4000,
                5 => 0o2000,
                _ => 0o1000,
            };
        }
    }
    bits
}

fn parse_mode(mode: &[u8]) -> Option<EntryKind> {
    if mode.len() != 10 && mode.len() != 11 {
        return None;
    }
    if !UNIX_TYPE_CHARS.contains(&mode[0])
        || !mode[1..10].iter().all(|c| UNIX_PERM_CHARS.contains(c))
    {
        return None;
    }
    if mode.len() == 11 && !UNIX_MODE_SUFFIXES.contains(&mode[10]) {
        return None;
    }
    Some(match mode[0] {
        b'-' => EntryKind::File,
        b'd' => EntryKind::Dir,
        b'l' => EntryKind::Symlink,
        _ => EntryKind::Other,
    })
}

fn parse_unix(
    line: &[u8],
    toks: &[(usize, usize)],
    now: NaiveDateTime,
) -> Result<ParsedLine, Reject> {
    let Some(&(0, mode_end)) = toks.first() else {
        return Err(Reject::NotThisFormat);
    };
    let mode = &line[..mode_end];
    let Some(kind) = parse_mode(mode) else {
        // Looks like a mode string but is not a valid one: report it as a
        // malformed Unix line rather than "unknown format".
        if UNIX_TYPE_CHARS.contains(&mode[0]) && (mode.len() == 10 || mode.len() == 11) {
            return Err(Reject::Bad(format!(
                "invalid mode string {:?}",
                lossy(mode)
            )));
        }
        return Err(Reject::NotThisFormat);
    };
    let is_device = matches!(mode[0], b'c' | b'b');

    if !tok(line, toks, 1).is_some_and(all_digits) {
        return Err(Reject::Bad("link count is not a number".to_string()));
    }

    // Fields 2.. are: owner, group, size, date… or (no group column) owner,
    // size, date…. The two layouts cannot both match: the field after the
    // size must start a date, and a date never starts with a plain number.
    for size_index in [4, 3] {
        let Some((size, date_index)) = parse_unix_size(line, toks, size_index, is_device) else {
            continue;
        };
        let (mtime, date_end) = match parse_unix_date(line, toks, date_index, now) {
            Ok(found) => found,
            Err(DateError::Shape) => continue,
            Err(DateError::Invalid(reason)) => return Err(Reject::Bad(reason)),
        };
        return unix_name(line, date_end, kind, size, mtime, mode_bits(mode)).map_err(Reject::Bad);
    }
    Err(Reject::Bad(
        "no size and date columns after the owner/group columns".to_string(),
    ))
}

/// Size column at token `i`: digits, or `major, minor` / `major,minor` for
/// device files (size `None`). Returns the size and the next token index.
fn parse_unix_size(
    line: &[u8],
    toks: &[(usize, usize)],
    i: usize,
    is_device: bool,
) -> Option<(Option<u64>, usize)> {
    let t = tok(line, toks, i)?;
    if let Some(n) = parse_size(t) {
        return Some((Some(n), i + 1));
    }
    if !is_device {
        return None;
    }
    let comma = t.iter().position(|&b| b == b',')?;
    let (major, minor) = (&t[..comma], &t[comma + 1..]);
    if !all_digits(major) {
        return None;
    }
    if minor.is_empty() {
        // "major, minor" split over two tokens.
        let minor = tok(line, toks, i + 1)?;
        return all_digits(minor).then_some((None, i + 2));
    }
    all_digits(minor).then_some((None, i + 1))
}

enum DateError {
    /// The tokens do not have the shape of a date.
    Shape,
    /// They have the shape, but the values are impossible.
    Invalid(String),
}

/// Date columns starting at token `i`: `Mon DD HH:MM`, `Mon DD YYYY` or
/// `YYYY-MM-DD HH:MM`. Returns the time and the byte offset just after the
/// last date token.
fn parse_unix_date(
    line: &[u8],
    toks: &[(usize, usize)],
    i: usize,
    now: NaiveDateTime,
) -> Result<(RemoteTime, usize), DateError> {
    let first = tok(line, toks, i).ok_or(DateError::Shape)?;
    let second = tok(line, toks, i + 1).ok_or(DateError::Shape)?;

    if let Some((year, month, day)) = iso_date_shape(first) {
        let (hour, minute) = hh_mm_shape(second).ok_or(DateError::Shape)?;
        let t = NaiveDate::from_ymd_opt(year, month, day)
            .and_then(|d| d.and_hms_opt(hour, minute, 0))
            .ok_or_else(|| invalid_date(line, toks, i, i + 1))?;
        return Ok((RemoteTime::Minute(t), toks[i + 1].1));
    }

    let month = month_number(first).ok_or(DateError::Shape)?;
    if second.len() > 2 || !all_digits(second) {
        return Err(DateError::Shape);
    }
    let day = num(second).ok_or(DateError::Shape)?;
    let third = tok(line, toks, i + 2).ok_or(DateError::Shape)?;
    let end = toks[i + 2].1;

    if third.len() == 4 && all_digits(third) {
        let year =
            i32::try_from(num(third).ok_or(DateError::Shape)?).map_err(|_| DateError::Shape)?;
        let d = NaiveDate::from_ymd_opt(year, month, day)
            .ok_or_else(|| invalid_date(line, toks, i, i + 2))?;
        return Ok((RemoteTime::Day(d), end));
    }
    let (hour, minute) = hh_mm_shape(third).ok_or(DateError::Shape)?;
    let time = NaiveTime::from_hms_opt(hour, minute, 0)
        .ok_or_else(|| invalid_date(line, toks, i, i + 2))?;
    let t = guess_year(month, day, time, now).ok_or_else(|| invalid_date(line, toks, i, i + 2))?;
    Ok((RemoteTime::Minute(t), end))
}

fn invalid_date(line: &[u8], toks: &[(usize, usize)], first: usize, last: usize) -> DateError {
    DateError::Invalid(format!(
        "invalid date {:?}",
        lossy(&line[toks[first].0..toks[last].1])
    ))
}

/// Picks the year for a "Mon DD HH:MM" entry: the latest of next year, this
/// year and last year (relative to `now`) that is at most one day after
/// `now`. See [`parse_list_line`] for why.
fn guess_year(month: u32, day: u32, time: NaiveTime, now: NaiveDateTime) -> Option<NaiveDateTime> {
    let limit = now
        .checked_add_signed(TimeDelta::days(1))
        .unwrap_or(NaiveDateTime::MAX);
    [now.year() + 1, now.year(), now.year() - 1]
        .into_iter()
        .filter_map(|year| NaiveDate::from_ymd_opt(year, month, day))
        .map(|d| d.and_time(time))
        .find(|t| *t <= limit)
}

/// `YYYY-MM-DD` shape (values not yet validated).
fn iso_date_shape(t: &[u8]) -> Option<(i32, u32, u32)> {
    if t.len() != 10 || t[4] != b'-' || t[7] != b'-' {
        return None;
    }
    if !all_digits(&t[..4]) || !all_digits(&t[5..7]) || !all_digits(&t[8..]) {
        return None;
    }
    Some((
        i32::try_from(num(&t[..4])?).ok()?,
        num(&t[5..7])?,
        num(&t[8..])?,
    ))
}

/// `H:MM` or `HH:MM` shape (values not yet validated).
fn hh_mm_shape(t: &[u8]) -> Option<(u32, u32)> {
    let colon = t.iter().position(|&b| b == b':')?;
    let (h, m) = (&t[..colon], &t[colon + 1..]);
    if h.is_empty() || h.len() > 2 || !all_digits(h) || m.len() != 2 || !all_digits(m) {
        return None;
    }
    Some((num(h)?, num(m)?))
}

fn month_number(t: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    if t.len() != 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| m.as_slice().eq_ignore_ascii_case(t))
        .and_then(|p| u32::try_from(p + 1).ok())
}

/// The name is everything after the single space that follows the date.
fn unix_name(
    line: &[u8],
    date_end: usize,
    kind: EntryKind,
    size: Option<u64>,
    mtime: RemoteTime,
    mode: u32,
) -> Result<ParsedLine, String> {
    if date_end >= line.len() {
        return Err("missing name".to_string());
    }
    let name = &line[date_end + 1..];
    if kind == EntryKind::Symlink
        && let Some(arrow) = find(name, b" -> ")
    {
        let (link_name, target) = (&name[..arrow], &name[arrow + 4..]);
        if target.is_empty() {
            return Err("symlink with empty target".to_string());
        }
        return finish_entry(
            link_name,
            kind,
            size,
            mtime,
            Some(target.to_vec()),
            Some(mode),
        );
    }
    finish_entry(name, kind, size, mtime, None, Some(mode))
}

// ---------------------------------------------------------------------------
// DOS / IIS
// ---------------------------------------------------------------------------

/// IIS pads `<DIR>` so that names line up with the right-aligned size
/// column: `<DIR>` is followed by 9 padding spaces and the 1 separator.
const IIS_DIR_GAP: usize = 10;

fn parse_dos(line: &[u8], toks: &[(usize, usize)]) -> Result<ParsedLine, Reject> {
    let Some(&(0, date_end)) = toks.first() else {
        return Err(Reject::NotThisFormat);
    };
    let date_tok = &line[..date_end];
    let Some((month, day, year)) = dos_date_shape(date_tok) else {
        return Err(Reject::NotThisFormat);
    };
    let bad = |msg: String| Reject::Bad(msg);
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| bad(format!("invalid date {:?}", lossy(date_tok))))?;

    let time_tok = tok(line, toks, 1).ok_or_else(|| bad("missing time".to_string()))?;
    let time =
        dos_time(time_tok).ok_or_else(|| bad(format!("invalid time {:?}", lossy(time_tok))))?;

    let (size_start, size_end) = *toks
        .get(2)
        .ok_or_else(|| bad("missing size or <DIR> column".to_string()))?;
    let size_tok = &line[size_start..size_end];
    let (kind, size) = if size_tok == b"<DIR>" {
        (EntryKind::Dir, None)
    } else {
        let n =
            dos_size(size_tok).ok_or_else(|| bad(format!("invalid size {:?}", lossy(size_tok))))?;
        (EntryKind::File, Some(n))
    };

    if size_end >= line.len() {
        return Err(bad("missing name".to_string()));
    }
    let gap = line[size_end..].iter().take_while(|&&b| b == b' ').count();
    let name_start = if kind == EntryKind::Dir && gap >= IIS_DIR_GAP {
        size_end + IIS_DIR_GAP
    } else {
        size_end + 1
    };
    let mtime = RemoteTime::Minute(date.and_time(time));
    finish_entry(&line[name_start..], kind, size, mtime, None, None).map_err(Reject::Bad)
}

/// `MM-DD-YY` or `MM-DD-YYYY`; two-digit years 70–99 are 19xx, others 20xx.
fn dos_date_shape(t: &[u8]) -> Option<(u32, u32, i32)> {
    if (t.len() != 8 && t.len() != 10) || t[2] != b'-' || t[5] != b'-' {
        return None;
    }
    if !all_digits(&t[..2]) || !all_digits(&t[3..5]) || !all_digits(&t[6..]) {
        return None;
    }
    let year = i32::try_from(num(&t[6..])?).ok()?;
    let year = match t.len() {
        8 if year >= 70 => 1900 + year,
        8 => 2000 + year,
        _ => year,
    };
    Some((num(&t[..2])?, num(&t[3..5])?, year))
}

/// `hh:mmAM` / `hh:mmPM` (12-hour, case-insensitive) or `HH:MM` (24-hour).
fn dos_time(t: &[u8]) -> Option<NaiveTime> {
    let (clock, meridiem) = if t.len() > 2 && t[t.len() - 1].eq_ignore_ascii_case(&b'm') {
        let (clock, suffix) = t.split_at(t.len() - 2);
        let pm = match suffix[0].to_ascii_lowercase() {
            b'a' => false,
            b'p' => true,
            _ => return None,
        };
        (clock, Some(pm))
    } else {
        (t, None)
    };
    let (hour, minute) = hh_mm_shape(clock)?;
    let hour = match meridiem {
        None => hour,
        Some(_) if !(1..=12).contains(&hour) => return None,
        Some(false) => hour % 12,
        Some(true) => hour % 12 + 12,
    };
    NaiveTime::from_hms_opt(hour, minute, 0)
}

/// Plain digits, or digits grouped by `,` thousands separators (`1,234,567`).
fn dos_size(t: &[u8]) -> Option<u64> {
    if !t.contains(&b',') {
        return parse_size(t);
    }
    let mut groups = t.split(|&b| b == b',');
    let first = groups.next()?;
    if first.is_empty() || first.len() > 3 || !all_digits(first) {
        return None;
    }
    let mut digits = first.to_vec();
    for group in groups {
        if group.len() != 3 || !all_digits(group) {
            return None;
        }
        digits.extend_from_slice(group);
    }
    parse_size(&digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    fn dt(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
    }

    fn date(y: i32, mo: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, mo, d).unwrap()
    }

    /// A fixed "now" just after New Year, for year-guess tests.
    fn now() -> NaiveDateTime {
        dt(2026, 1, 2, 10, 0, 0)
    }

    fn entry(
        name: &[u8],
        kind: EntryKind,
        size: Option<u64>,
        mtime: RemoteTime,
        link_target: Option<&[u8]>,
    ) -> ParsedLine {
        ParsedLine::Entry(ListEntry {
            name: name.to_vec(),
            kind,
            size,
            mtime,
            link_target: link_target.map(<[u8]>::to_vec),
            mode: None,
        })
    }

    /// A LIST line parsed at [`now`], its mode left out: the tests of
    /// modes are [`unix_modes`] and [`mlsd_unix_mode`].
    fn list(line: &[u8]) -> ParsedLine {
        list_at(line, now())
    }

    /// [`list`] at another time.
    fn list_at(line: &[u8], now: NaiveDateTime) -> ParsedLine {
        match parse_list_line(line, now) {
            ParsedLine::Entry(e) => ParsedLine::Entry(ListEntry { mode: None, ..e }),
            other => other,
        }
    }

    fn mode_of(parsed: ParsedLine) -> Option<u32> {
        match parsed {
            ParsedLine::Entry(e) => e.mode,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[test]
    fn unix_modes() {
        for (line, mode) in [
            (
                &b"-rw-r--r--    1 102      105             5 Dec 01 11:10 a"[..],
                0o644,
            ),
            (
                b"-rw-------    1 102      105             5 Dec 01 11:10 a",
                0o600,
            ),
            (
                b"drwxr-x---    2 102      105          4096 Dec 01 11:10 d",
                0o750,
            ),
            (
                b"-rwsr-xr-x    1 0        0            5 Dec 01 11:10 a",
                0o4755,
            ),
            (
                b"-rwSr--r--    1 0        0            5 Dec 01 11:10 a",
                0o4644,
            ),
            (
                b"-rwxr-sr-x    1 0        0            5 Dec 01 11:10 a",
                0o2755,
            ),
            (
                b"-rw-r-lr--    1 0        0            5 Dec 01 11:10 a",
                0o644,
            ),
            (
                b"drwxrwxrwt    2 0        0         4096 Dec 01 11:10 tmp",
                0o1777,
            ),
            (
                b"drwxrwxrwT    2 0        0         4096 Dec 01 11:10 tmp",
                0o1776,
            ),
            (
                b"-rwxrwxrwx+   1 0        0            5 Dec 01 11:10 a",
                0o777,
            ),
            (b"----------    1 0        0            5 Dec 01 11:10 a", 0),
        ] {
            assert_eq!(
                mode_of(parse_list_line(line, now())),
                Some(mode),
                "{}",
                lossy(line)
            );
        }
        // DOS listings have no modes.
        assert_eq!(
            mode_of(parse_list_line(b"01-02-26  10:00AM       5 a", now())),
            None
        );
    }

    #[test]
    fn mlsd_unix_mode() {
        let line = |facts: &str| parse_mlsd_line(format!("{facts} a").as_bytes());
        assert_eq!(mode_of(line("type=file;UNIX.mode=0644;")), Some(0o644));
        assert_eq!(mode_of(line("type=file;unix.mode=4755;")), Some(0o4755));
        assert_eq!(mode_of(line("type=dir;UNIX.mode=755;")), Some(0o755));
        assert_eq!(mode_of(line("type=file;unix.mode=0o644;")), Some(0o644));
        assert_eq!(mode_of(line("type=file;size=1;")), None);
        for bad in ["0648", "", "07777x", "12345", "-644", "0o", "0x644"] {
            assert_bad(line(&format!("type=file;UNIX.mode={bad};")));
        }
    }

    fn assert_bad(parsed: ParsedLine) {
        assert!(
            matches!(parsed, ParsedLine::Bad(_)),
            "expected Bad, got {parsed:?}"
        );
    }

    // ----- MLSD -----

    #[test]
    fn mlsd_file() {
        assert_eq!(
            parse_mlsd_line(b"type=file;size=1024;modify=20261123225900;perm=r; report.txt"),
            entry(
                b"report.txt",
                EntryKind::File,
                Some(1024),
                RemoteTime::Exact(dt(2026, 11, 23, 22, 59, 0)),
                None
            )
        );
    }

    #[test]
    fn mlsd_dir_with_sizd() {
        assert_eq!(
            parse_mlsd_line(b"type=dir;sizd=4096;modify=20200101000000;UNIX.mode=0755; sub"),
            ParsedLine::Entry(ListEntry {
                name: b"sub".to_vec(),
                kind: EntryKind::Dir,
                size: Some(4096),
                mtime: RemoteTime::Exact(dt(2020, 1, 1, 0, 0, 0)),
                link_target: None,
                mode: Some(0o755),
            })
        );
    }

    #[test]
    fn mlsd_size_preferred_over_sizd_and_absent_facts() {
        assert_eq!(
            parse_mlsd_line(b"sizd=1;size=2;type=file; f"),
            entry(b"f", EntryKind::File, Some(2), RemoteTime::Unknown, None)
        );
        assert_eq!(
            parse_mlsd_line(b"type=dir; d"),
            entry(b"d", EntryKind::Dir, None, RemoteTime::Unknown, None)
        );
    }

    #[test]
    fn mlsd_cdir_pdir_and_dot_names_ignored() {
        assert_eq!(
            parse_mlsd_line(b"type=cdir;modify=20200101000000; ."),
            ParsedLine::Ignored
        );
        assert_eq!(parse_mlsd_line(b"type=pdir; .."), ParsedLine::Ignored);
        assert_eq!(
            parse_mlsd_line(b"type=cdir; /home/user"),
            ParsedLine::Ignored
        );
        assert_eq!(parse_mlsd_line(b"type=dir; ."), ParsedLine::Ignored);
        assert_eq!(parse_mlsd_line(b"type=dir; .."), ParsedLine::Ignored);
    }

    #[test]
    fn mlsd_symlinks() {
        assert_eq!(
            parse_mlsd_line(b"type=OS.unix=slink:/etc/target;size=11; link"),
            entry(
                b"link",
                EntryKind::Symlink,
                Some(11),
                RemoteTime::Unknown,
                Some(b"/etc/target")
            )
        );
        assert_eq!(
            parse_mlsd_line(b"type=OS.unix=symlink;modify=20200102030405; l2"),
            entry(
                b"l2",
                EntryKind::Symlink,
                None,
                RemoteTime::Exact(dt(2020, 1, 2, 3, 4, 5)),
                None
            )
        );
        assert_eq!(
            parse_mlsd_line(b"type=os.unix=slink:; l3"),
            entry(b"l3", EntryKind::Symlink, None, RemoteTime::Unknown, None)
        );
    }

    #[test]
    fn mlsd_other_types() {
        assert_eq!(
            parse_mlsd_line(b"type=OS.unix=chr-13/29; tty"),
            entry(b"tty", EntryKind::Other, None, RemoteTime::Unknown, None)
        );
    }

    #[test]
    fn mlsd_fractional_modify_dropped() {
        assert_eq!(
            parse_mlsd_line(b"modify=20261123225900.987;type=file;size=0; f"),
            entry(
                b"f",
                EntryKind::File,
                Some(0),
                RemoteTime::Exact(dt(2026, 11, 23, 22, 59, 0)),
                None
            )
        );
    }

    #[test]
    fn mlsd_name_with_spaces_semicolons_and_equals() {
        assert_eq!(
            parse_mlsd_line(b"type=file;size=1; my file; v2=x.txt "),
            entry(
                b"my file; v2=x.txt ",
                EntryKind::File,
                Some(1),
                RemoteTime::Unknown,
                None
            )
        );
        assert_eq!(
            parse_mlsd_line(b"type=file;size=1;   lead"),
            entry(
                b"  lead",
                EntryKind::File,
                Some(1),
                RemoteTime::Unknown,
                None
            )
        );
    }

    #[test]
    fn mlsd_fact_value_with_space() {
        // ProFTPD's UNIX.groupname can be e.g. "domain users".
        assert_eq!(
            parse_mlsd_line(b"type=file;UNIX.groupname=domain users;size=3; a"),
            entry(b"a", EntryKind::File, Some(3), RemoteTime::Unknown, None)
        );
    }

    #[test]
    fn mlsd_upper_case_facts() {
        assert_eq!(
            parse_mlsd_line(b"Type=FILE;Size=12;Modify=20200102030405;Perm=adfr; UP.TXT"),
            entry(
                b"UP.TXT",
                EntryKind::File,
                Some(12),
                RemoteTime::Exact(dt(2020, 1, 2, 3, 4, 5)),
                None
            )
        );
        assert_eq!(parse_mlsd_line(b"TYPE=CDIR; ."), ParsedLine::Ignored);
    }

    #[test]
    fn mlsd_terminator_stripped_only() {
        assert_eq!(
            parse_mlsd_line(b"type=file; a b \r\n"),
            entry(b"a b ", EntryKind::File, None, RemoteTime::Unknown, None)
        );
        assert_eq!(
            parse_mlsd_line(b"type=file; x\n"),
            entry(b"x", EntryKind::File, None, RemoteTime::Unknown, None)
        );
    }

    #[test]
    fn mlsd_bad_lines() {
        assert_eq!(
            parse_mlsd_line(b"size=1;modify=20200101000000; x"),
            ParsedLine::Bad("missing type fact".to_string())
        );
        assert_bad(parse_mlsd_line(b"type=file;modify=2020; x"));
        assert_bad(parse_mlsd_line(b"type=file;modify=20201301000000; x"));
        assert_bad(parse_mlsd_line(b"type=file;modify=20200101000000.; x"));
        assert_bad(parse_mlsd_line(b"type=file;modify=20200101000000Z; x"));
        assert_bad(parse_mlsd_line(b"type=file;size=12a; x"));
        assert_bad(parse_mlsd_line(b"type=file;size=+5; x"));
        assert_bad(parse_mlsd_line(b"type=file;size=; x"));
        assert_bad(parse_mlsd_line(
            b"type=file;size=99999999999999999999999; x",
        ));
        // Sizes past what the state holds (i64::MAX) are not believed.
        assert_bad(parse_mlsd_line(b"type=file;size=9223372036854775808; x"));
        assert_bad(parse_mlsd_line(b"type=file;size=18446744073709551615; x"));
        assert_bad(parse_list_line(
            b"-rw-r--r--    1 0        0        18446744073709551615 Jan 01  2020 x",
            NaiveDate::from_ymd_opt(2026, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap(),
        ));
        match parse_mlsd_line(b"type=file;size=9223372036854775807; x") {
            ParsedLine::Entry(e) => assert_eq!(e.size, Some(i64::MAX as u64)),
            other => panic!("{other:?}"),
        }
        assert_bad(parse_mlsd_line(b"type=file name"));
        assert_bad(parse_mlsd_line(b" name"));
        assert_bad(parse_mlsd_line(b"type=file;garbage; x"));
        assert_bad(parse_mlsd_line(b"type=file;=1; x"));
        assert_bad(parse_mlsd_line(b"type=file;;size=1; x"));
        assert_bad(parse_mlsd_line(b"type=file;type=dir; x"));
        assert_bad(parse_mlsd_line(b"type=; x"));
        assert_eq!(
            parse_mlsd_line(b"type=file; "),
            ParsedLine::Bad("empty name".to_string())
        );
    }

    #[test]
    fn mlsd_blank_ignored() {
        assert_eq!(parse_mlsd_line(b""), ParsedLine::Ignored);
        assert_eq!(parse_mlsd_line(b"\r\n"), ParsedLine::Ignored);
        assert_eq!(parse_mlsd_line(b"   "), ParsedLine::Ignored);
    }

    #[test]
    fn mlsd_non_utf8_name_kept() {
        assert_eq!(
            parse_mlsd_line(b"type=file;size=1; caf\xe9\xff\xfe"),
            entry(
                b"caf\xe9\xff\xfe",
                EntryKind::File,
                Some(1),
                RemoteTime::Unknown,
                None
            )
        );
    }

    // ----- Unix LIST -----

    #[test]
    fn unix_file_hh_mm_year_rollover() {
        // now = 2026-01-02 10:00: "Dec 31" must be last year.
        assert_eq!(
            list(b"-rw-r--r--    1 ftp      ftp          4096 Dec 31 23:15 notes.txt"),
            entry(
                b"notes.txt",
                EntryKind::File,
                Some(4096),
                RemoteTime::Minute(dt(2025, 12, 31, 23, 15, 0)),
                None
            )
        );
        assert_eq!(
            list(b"-rw-r--r--    1 ftp      ftp             7 Jan  2 09:00 today.txt"),
            entry(
                b"today.txt",
                EntryKind::File,
                Some(7),
                RemoteTime::Minute(dt(2026, 1, 2, 9, 0, 0)),
                None
            )
        );
    }

    #[test]
    fn unix_year_guess_one_day_slack() {
        // 22h ahead of now: server time zone ahead, still this year.
        assert_eq!(
            list(b"-rw-r--r-- 1 u g 1 Jan  3 08:00 a"),
            entry(
                b"a",
                EntryKind::File,
                Some(1),
                RemoteTime::Minute(dt(2026, 1, 3, 8, 0, 0)),
                None
            )
        );
        // 25h ahead: cannot be this year, so last year.
        assert_eq!(
            list(b"-rw-r--r-- 1 u g 1 Jan  3 11:00 a"),
            entry(
                b"a",
                EntryKind::File,
                Some(1),
                RemoteTime::Minute(dt(2025, 1, 3, 11, 0, 0)),
                None
            )
        );
        // Server already in the new year while UTC is still 31 December.
        let new_years_eve = dt(2026, 12, 31, 22, 0, 0);
        assert_eq!(
            list_at(b"-rw-r--r-- 1 u g 1 Jan  1 08:00 a", new_years_eve),
            entry(
                b"a",
                EntryKind::File,
                Some(1),
                RemoteTime::Minute(dt(2027, 1, 1, 8, 0, 0)),
                None
            )
        );
        assert_eq!(
            list_at(b"-rw-r--r-- 1 u g 1 Dec 31 21:00 a", new_years_eve),
            entry(
                b"a",
                EntryKind::File,
                Some(1),
                RemoteTime::Minute(dt(2026, 12, 31, 21, 0, 0)),
                None
            )
        );
    }

    #[test]
    fn unix_year_guess_feb_29() {
        assert_eq!(
            list_at(
                b"-rw-r--r-- 1 u g 1 Feb 29 12:00 leap",
                dt(2025, 1, 10, 0, 0, 0)
            ),
            entry(
                b"leap",
                EntryKind::File,
                Some(1),
                RemoteTime::Minute(dt(2024, 2, 29, 12, 0, 0)),
                None
            )
        );
        assert_bad(list_at(
            b"-rw-r--r-- 1 u g 1 Feb 29 12:00 leap",
            dt(2027, 3, 1, 0, 0, 0),
        ));
    }

    #[test]
    fn unix_file_with_year() {
        assert_eq!(
            list(b"-rw-r--r--   1 root     root          531 Apr  8  2019 old.tar"),
            entry(
                b"old.tar",
                EntryKind::File,
                Some(531),
                RemoteTime::Day(date(2019, 4, 8)),
                None
            )
        );
    }

    #[test]
    fn unix_dir() {
        assert_eq!(
            list(b"drwxr-xr-x   2 root     root         4096 Nov 23 22:59 sub"),
            entry(
                b"sub",
                EntryKind::Dir,
                Some(4096),
                RemoteTime::Minute(dt(2025, 11, 23, 22, 59, 0)),
                None
            )
        );
        assert_eq!(
            list(b"drwxrwxrwt   2 root     root         4096 nov 23  2020 tmp"),
            entry(
                b"tmp",
                EntryKind::Dir,
                Some(4096),
                RemoteTime::Day(date(2020, 11, 23)),
                None
            )
        );
    }

    #[test]
    fn unix_symlink() {
        assert_eq!(
            list(b"lrwxrwxrwx   1 root     root            7 Jan 25  2020 bin -> usr/bin"),
            entry(
                b"bin",
                EntryKind::Symlink,
                Some(7),
                RemoteTime::Day(date(2020, 1, 25)),
                Some(b"usr/bin")
            )
        );
        // Split at the first " -> ".
        assert_eq!(
            list(b"lrwxrwxrwx 1 u g 6 Jan 25  2020 a b -> c -> d"),
            entry(
                b"a b",
                EntryKind::Symlink,
                Some(6),
                RemoteTime::Day(date(2020, 1, 25)),
                Some(b"c -> d")
            )
        );
        // A regular file whose name contains " -> " is not split.
        assert_eq!(
            list(b"-rw-r--r-- 1 u g 6 Jan 25  2020 x -> y"),
            entry(
                b"x -> y",
                EntryKind::File,
                Some(6),
                RemoteTime::Day(date(2020, 1, 25)),
                None
            )
        );
        assert_bad(list(b"lrwxrwxrwx 1 u g 6 Jan 25  2020  -> y"));
        assert_bad(list(b"lrwxrwxrwx 1 u g 6 Jan 25  2020 x -> "));
    }

    #[test]
    fn unix_name_spaces_preserved() {
        assert_eq!(
            list(b"-rw-r--r-- 1 u g 5 Jan  1  2020   lead  and  trail  "),
            entry(
                b"  lead  and  trail  ",
                EntryKind::File,
                Some(5),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
    }

    #[test]
    fn unix_name_hash_and_unicode() {
        let line = "-rw-r--r-- 1 u g 5 Jan  1  2020 #tmp# héllo 日本.txt";
        assert_eq!(
            list(line.as_bytes()),
            entry(
                "#tmp# héllo 日本.txt".as_bytes(),
                EntryKind::File,
                Some(5),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
    }

    #[test]
    fn unix_non_utf8_name_kept() {
        assert_eq!(
            list(b"-rw-r--r-- 1 u g 5 Jan  1  2020 caf\xe9 \xb2\xe2\r\n"),
            entry(
                b"caf\xe9 \xb2\xe2",
                EntryKind::File,
                Some(5),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
    }

    #[test]
    fn unix_total_and_dots_ignored() {
        assert_eq!(list(b"total 8"), ParsedLine::Ignored);
        assert_eq!(list(b"total 0\r\n"), ParsedLine::Ignored);
        assert_eq!(
            list(b"drwxr-xr-x   2 u g 4096 Jan  1  2020 ."),
            ParsedLine::Ignored
        );
        assert_eq!(
            list(b"drwxr-xr-x   2 u g 4096 Jan  1  2020 .."),
            ParsedLine::Ignored
        );
        assert_bad(list(b"total foo"));
    }

    #[test]
    fn unix_acl_and_xattr_markers() {
        assert_eq!(
            list(b"drwxr-xr-x+  3 u g 4096 Jan  1  2020 acl"),
            entry(
                b"acl",
                EntryKind::Dir,
                Some(4096),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
        assert_eq!(
            list(b"-rw-r--r--@  1 u g 10 Jan  1  2020 mac"),
            entry(
                b"mac",
                EntryKind::File,
                Some(10),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
        assert_eq!(
            list(b"-rwsr-sr-x.  1 u g 10 Jan  1  2020 selinux"),
            entry(
                b"selinux",
                EntryKind::File,
                Some(10),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
    }

    #[test]
    fn unix_missing_group() {
        assert_eq!(
            list(b"-rw-r--r--   1 owner        1234 Jan  1  2020 nogroup"),
            entry(
                b"nogroup",
                EntryKind::File,
                Some(1234),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
        // Numeric owner, no group.
        assert_eq!(
            list(b"dr-xr-xr-x   2 1000 512 Apr  8  1994 d"),
            entry(
                b"d",
                EntryKind::Dir,
                Some(512),
                RemoteTime::Day(date(1994, 4, 8)),
                None
            )
        );
        // Numeric owner and group.
        assert_eq!(
            list(b"-rw-r--r-- 1 1000 1000 512 Apr  8  1994 f"),
            entry(
                b"f",
                EntryKind::File,
                Some(512),
                RemoteTime::Day(date(1994, 4, 8)),
                None
            )
        );
    }

    #[test]
    fn unix_device_fifo_socket() {
        assert_eq!(
            list(b"crw-rw-rw-   1 root root   1,   3 Jan  1  2020 null"),
            entry(
                b"null",
                EntryKind::Other,
                None,
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
        assert_eq!(
            list(b"brw-rw----   1 root disk 8,0 Jan  1  2020 sda"),
            entry(
                b"sda",
                EntryKind::Other,
                None,
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
        assert_eq!(
            list(b"prw-r--r--   1 u g 0 Jan  1  2020 pipe"),
            entry(
                b"pipe",
                EntryKind::Other,
                Some(0),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
        assert_eq!(
            list(b"srwxr-xr-x   1 u g 0 Jan  1  2020 sock"),
            entry(
                b"sock",
                EntryKind::Other,
                Some(0),
                RemoteTime::Day(date(2020, 1, 1)),
                None
            )
        );
        // "major, minor" is only valid for device files.
        assert_bad(list(b"-rw-r--r--   1 root root   1,   3 Jan  1  2020 f"));
    }

    #[test]
    fn unix_long_iso() {
        assert_eq!(
            list(b"-rw-r--r-- 1 u g 5 2026-11-23 22:59 iso.txt"),
            entry(
                b"iso.txt",
                EntryKind::File,
                Some(5),
                RemoteTime::Minute(dt(2026, 11, 23, 22, 59, 0)),
                None
            )
        );
        assert_bad(list(b"-rw-r--r-- 1 u g 5 2026-02-30 22:59 iso.txt"));
        // full-iso is not accepted.
        assert_bad(list(
            b"-rw-r--r-- 1 u g 5 2026-11-23 22:59:00.000000000 +0000 iso.txt",
        ));
    }

    #[test]
    fn unix_bad_lines() {
        assert_bad(list(b"hello world"));
        assert_bad(list(b"-rw-r--r-- 1 a b notasize Jan 1 2020 x"));
        assert_bad(list(b"-rw-r--r-- 1 a b 5 Jan 1 2020"));
        assert_eq!(
            list(b"-rw-r--r-- 1 a b 5 Jan 1 2020 "),
            ParsedLine::Bad("Unix listing: empty name".to_string())
        );
        assert_bad(list(b"-rwxrwxrwxz 1 a b 5 Jan 1 2020 x"));
        assert_bad(list(b"-rwxrwxrwq 1 a b 5 Jan 1 2020 x"));
        assert_bad(list(b"-rw-r--r-- x a b 5 Jan 1 2020 x"));
        assert_bad(list(b"-rw-r--r-- 1 a b 5 Feb 30 2020 x"));
        assert_bad(list(b"-rw-r--r-- 1 a b 5 Jan 1 25:00 x"));
        assert_bad(list(b"-rw-r--r-- 1 a b 5 Jan 1 12:60 x"));
        assert_bad(list(b"-rw-r--r-- 1 a b 5 Foo 1 2020 x"));
        assert_bad(list(b"-rw-r--r-- 1 a b 5 Jan 123 2020 x"));
        assert_bad(list(b"-rw-r--r-- 1 a b -5 Jan 1 2020 x"));
        assert_bad(list(b" -rw-r--r-- 1 a b 5 Jan 1 2020 x"));
        assert_bad(list(b"-rw-r--r--\t1 a b 5 Jan 1 2020 x"));
    }

    #[test]
    fn list_blank_lines_ignored() {
        assert_eq!(list(b""), ParsedLine::Ignored);
        assert_eq!(list(b"\r\n"), ParsedLine::Ignored);
        assert_eq!(list(b" \t "), ParsedLine::Ignored);
    }

    // ----- DOS / IIS LIST -----

    #[test]
    fn dos_dir_and_file() {
        assert_eq!(
            list(b"01-16-02  11:14AM       <DIR>          epsgWeb"),
            entry(
                b"epsgWeb",
                EntryKind::Dir,
                None,
                RemoteTime::Minute(dt(2002, 1, 16, 11, 14, 0)),
                None
            )
        );
        assert_eq!(
            list(b"04-08-14  03:09PM                  403 readme.txt\r\n"),
            entry(
                b"readme.txt",
                EntryKind::File,
                Some(403),
                RemoteTime::Minute(dt(2014, 4, 8, 15, 9, 0)),
                None
            )
        );
    }

    #[test]
    fn dos_name_spaces_preserved() {
        // IIS pads <DIR> by 9 spaces plus one separator; extra spaces belong to the name.
        assert_eq!(
            list(b"01-16-02  11:14AM       <DIR>            two lead "),
            entry(
                b"  two lead ",
                EntryKind::Dir,
                None,
                RemoteTime::Minute(dt(2002, 1, 16, 11, 14, 0)),
                None
            )
        );
        // Compact servers: one separator space.
        assert_eq!(
            list(b"01-16-02  11:14AM <DIR> d"),
            entry(
                b"d",
                EntryKind::Dir,
                None,
                RemoteTime::Minute(dt(2002, 1, 16, 11, 14, 0)),
                None
            )
        );
        assert_eq!(
            list(b"04-08-14  03:09PM                  403  spaced  name "),
            entry(
                b" spaced  name ",
                EntryKind::File,
                Some(403),
                RemoteTime::Minute(dt(2014, 4, 8, 15, 9, 0)),
                None
            )
        );
    }

    #[test]
    fn dos_twelve_oclock_edges() {
        let cases: [(&[u8], u32, u32); 6] = [
            (b"12:00AM", 0, 0),
            (b"12:59AM", 0, 59),
            (b"12:00PM", 12, 0),
            (b"12:30pm", 12, 30),
            (b"01:00AM", 1, 0),
            (b"11:59PM", 23, 59),
        ];
        for (time, h, m) in cases {
            let mut line = b"06-01-20  ".to_vec();
            line.extend_from_slice(time);
            line.extend_from_slice(b"  5 f");
            assert_eq!(
                list(&line),
                entry(
                    b"f",
                    EntryKind::File,
                    Some(5),
                    RemoteTime::Minute(dt(2020, 6, 1, h, m, 0)),
                    None
                ),
                "{}",
                String::from_utf8_lossy(time)
            );
        }
        assert_bad(list(b"06-01-20  00:10AM  5 f"));
        assert_bad(list(b"06-01-20  13:00PM  5 f"));
        assert_bad(list(b"06-01-20  11:00XM  5 f"));
    }

    #[test]
    fn dos_four_digit_year_and_24h() {
        assert_eq!(
            list(b"05-17-2007  07:58PM       <DIR>          muntemp"),
            entry(
                b"muntemp",
                EntryKind::Dir,
                None,
                RemoteTime::Minute(dt(2007, 5, 17, 19, 58, 0)),
                None
            )
        );
        assert_eq!(
            list(b"05-27-11  19:31                 1506 x.zip"),
            entry(
                b"x.zip",
                EntryKind::File,
                Some(1506),
                RemoteTime::Minute(dt(2011, 5, 27, 19, 31, 0)),
                None
            )
        );
        assert_bad(list(b"05-27-11  24:00  1506 x.zip"));
    }

    #[test]
    fn dos_two_digit_year_window() {
        for (yy, year) in [("70", 1970), ("99", 1999), ("00", 2000), ("69", 2069)] {
            let line = format!("01-02-{yy}  10:00AM  1 f");
            assert_eq!(
                list(line.as_bytes()),
                entry(
                    b"f",
                    EntryKind::File,
                    Some(1),
                    RemoteTime::Minute(dt(year, 1, 2, 10, 0, 0)),
                    None
                )
            );
        }
    }

    #[test]
    fn dos_thousands_separators() {
        assert_eq!(
            list(b"10-10-20  10:10AM            1,234,567 big.bin"),
            entry(
                b"big.bin",
                EntryKind::File,
                Some(1_234_567),
                RemoteTime::Minute(dt(2020, 10, 10, 10, 10, 0)),
                None
            )
        );
        assert_bad(list(b"10-10-20  10:10AM  1,23 f"));
        assert_bad(list(b"10-10-20  10:10AM  ,123 f"));
        assert_bad(list(b"10-10-20  10:10AM  1234,567 f"));
    }

    #[test]
    fn dos_dots_and_bad_lines() {
        assert_eq!(
            list(b"01-16-02  11:14AM       <DIR>          ."),
            ParsedLine::Ignored
        );
        assert_eq!(
            list(b"01-16-02  11:14AM       <DIR>          .."),
            ParsedLine::Ignored
        );
        assert_bad(list(b"13-01-20  10:00AM  5 f"));
        assert_bad(list(b"01-01-20  10:00AM  abc f"));
        assert_bad(list(b"01-01-20  10:00AM  5"));
        assert_bad(list(b"01-01-20  10:00AM  5 "));
        assert_bad(list(b"01-01-20"));
        assert_bad(list(b"1-1-20  10:00AM  5 f"));
    }

    // ----- RemoteTime -----

    #[test]
    fn remote_time_stored_round_trip() {
        let cases = [
            (
                RemoteTime::Exact(dt(2026, 11, 23, 22, 59, 0)),
                "exact:20261123225900",
            ),
            (
                RemoteTime::Minute(dt(2026, 11, 23, 22, 59, 0)),
                "minute:202611232259",
            ),
            (RemoteTime::Day(date(2026, 11, 23)), "day:20261123"),
            (
                RemoteTime::Exact(dt(1, 2, 3, 4, 5, 6)),
                "exact:00010203040506",
            ),
            (RemoteTime::Unknown, "unknown"),
        ];
        for (time, text) in cases {
            assert_eq!(time.to_stored(), text);
            assert_eq!(RemoteTime::parse_stored(text), Some(time));
        }
        for bad in [
            "",
            "UNKNOWN",
            "exact:2026112322590",
            "exact:2026112322590a",
            "exact:20261123225960",
            "minute:202613010000",
            "minute:20261123225",
            "day:2026112",
            "day:20260230",
            "day:+0260230",
            "foo:20261123",
            "exact 20261123225900",
        ] {
            assert_eq!(RemoteTime::parse_stored(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_time_to_stored_drops_unused_precision() {
        let t = dt(2026, 11, 23, 22, 59, 41);
        assert_eq!(RemoteTime::Minute(t).to_stored(), "minute:202611232259");
        let nanos = t.with_nanosecond(500_000_000).unwrap();
        assert_eq!(RemoteTime::Exact(nanos).to_stored(), "exact:20261123225941");
    }

    #[test]
    fn remote_time_same_as_table() {
        use RemoteTime::{Day, Exact, Minute, Unknown};
        let t = dt(2026, 11, 23, 22, 59, 30);
        let exact = Exact(t);
        let exact_other_second = Exact(dt(2026, 11, 23, 22, 59, 31));
        let exact_other_day = Exact(dt(2026, 11, 24, 0, 0, 0));
        let minute = Minute(dt(2026, 11, 23, 22, 59, 0));
        let minute_other = Minute(dt(2026, 11, 23, 23, 0, 0));
        let minute_other_day = Minute(dt(2026, 11, 22, 22, 59, 0));
        let day = Day(date(2026, 11, 23));
        let day_other = Day(date(2026, 11, 22));

        let table: [(RemoteTime, RemoteTime, bool); 20] = [
            (exact, exact, true),
            (exact, Exact(t.with_nanosecond(1).unwrap()), true),
            (exact, exact_other_second, false),
            (minute, minute, true),
            (minute, minute_other, false),
            (day, day, true),
            (day, day_other, false),
            (Unknown, Unknown, true),
            (minute, day, true),
            (minute_other, day, true),
            (minute_other_day, day, false),
            (exact, minute, true),
            (exact, minute_other, true),
            (exact, minute_other_day, false),
            (exact, day, true),
            (exact_other_day, day, false),
            (Unknown, exact, false),
            (Unknown, minute, false),
            (Unknown, day, false),
            (exact, Unknown, false),
        ];
        for (a, b, expected) in table {
            assert_eq!(a.same_as(&b), expected, "{a:?} vs {b:?}");
            assert_eq!(b.same_as(&a), expected, "{b:?} vs {a:?} (symmetry)");
        }
    }

    // ----- parse_listing -----

    #[test]
    fn listing_crlf_with_bad_line() {
        let data = b"total 8\r\n\
            drwxr-xr-x 2 u g 4096 Jan  1  2020 .\r\n\
            this is garbage\r\n\
            -rw-r--r-- 1 u g 5 Jan  1  2020 a \r\n\
            \r\n\
            01-16-02  11:14AM       <DIR>          dosdir\r\n\
            -rw-r--r-- 1 u g 9 Jan  1  2020 b";
        let listing = parse_listing(ListFormat::List, data, now());
        assert_eq!(
            listing.entries,
            vec![
                ListEntry {
                    name: b"a ".to_vec(),
                    kind: EntryKind::File,
                    size: Some(5),
                    mtime: RemoteTime::Day(date(2020, 1, 1)),
                    link_target: None,
                    mode: Some(0o644),
                },
                ListEntry {
                    name: b"dosdir".to_vec(),
                    kind: EntryKind::Dir,
                    size: None,
                    mtime: RemoteTime::Minute(dt(2002, 1, 16, 11, 14, 0)),
                    link_target: None,
                    mode: None,
                },
                ListEntry {
                    name: b"b".to_vec(),
                    kind: EntryKind::File,
                    size: Some(9),
                    mtime: RemoteTime::Day(date(2020, 1, 1)),
                    link_target: None,
                    mode: Some(0o644),
                },
            ]
        );
        assert_eq!(
            listing.bad_lines,
            vec![(
                3,
                "this is garbage".to_string(),
                "not a Unix (ls -l) or DOS/IIS listing line".to_string()
            )]
        );
    }

    #[test]
    fn listing_mlsd_lf_and_trailing_newline() {
        let data = b"type=cdir; .\ntype=file;size=3; x\xff\nsize=1; nope\n";
        let listing = parse_listing(ListFormat::Mlsd, data, now());
        assert_eq!(
            listing.entries,
            vec![ListEntry {
                name: b"x\xff".to_vec(),
                kind: EntryKind::File,
                size: Some(3),
                mtime: RemoteTime::Unknown,
                link_target: None,
                mode: None,
            }]
        );
        assert_eq!(
            listing.bad_lines,
            vec![(
                3,
                "size=1; nope".to_string(),
                "missing type fact".to_string()
            )]
        );
    }

    #[test]
    fn listing_empty_data() {
        assert_eq!(
            parse_listing(ListFormat::List, b"", now()),
            Listing::default()
        );
        assert_eq!(
            parse_listing(ListFormat::Mlsd, b"\r\n", now()),
            Listing::default()
        );
    }
}
