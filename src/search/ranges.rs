//! FHIR dates and numbers as the ranges search compares.
//!
//! A FHIR date has the precision it was written with: `2020` is all of 2020, `2020-03-01` the
//! whole day. Search compares such values as half-open ranges of milliseconds since the epoch
//! (`[lo, hi)`), for stored values and query values alike. A time without a zone is taken as
//! UTC, and so is a date (FHIR leaves the zone of a date unsaid).
//!
//! A query number has the precision of its digits: `100` means `[99.5, 100.5)`, `100.0` means
//! `[99.95, 100.05)` (R4, 3.1.1.5.5). Stored numbers are compared as the values they are.

use chrono::{DateTime, Datelike as _, NaiveDate, NaiveDateTime, TimeZone as _, Utc};

/// `[lo, hi)` in milliseconds since the epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub lo: i64,
    pub hi: i64,
}

impl DateRange {
    /// Everything: a `Period` without start and end bounds nothing.
    pub const ALL: Self = Self { lo: i64::MIN, hi: i64::MAX };
}

/// The range a FHIR `date`, `dateTime` or `instant` covers; `None` if `s` is none of them.
pub fn date_range(s: &str) -> Option<DateRange> {
    let s = s.trim();
    let Some((date, time)) = s.split_once('T') else { return date_only(s) };
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let (clock, zone) = split_zone(time);
    // hh:mm, hh:mm:ss or hh:mm:ss.fff...; the precision is that of the last part written.
    let mut parts = clock.split(':');
    let hour: u32 = parts.next()?.parse().ok()?;
    let minute: u32 = parts.next()?.parse().ok()?;
    let (second, nanos, step_ms) = match parts.next() {
        None => (0, 0, 60_000),
        Some(sec) => {
            let (whole, fraction) = sec.split_once('.').unwrap_or((sec, ""));
            let second: u32 = whole.parse().ok()?;
            if !fraction.chars().all(|c| c.is_ascii_digit()) || fraction.len() > 9 || whole.len() != 2 {
                return None;
            }
            let digits = u32::try_from(fraction.len()).ok()?;
            let nanos: u32 =
                if fraction.is_empty() { 0 } else { fraction.parse::<u32>().ok()? * 10u32.pow(9 - digits) };
            // Below a millisecond, the range is the millisecond the value falls in.
            let step = if digits >= 3 { 1 } else { 1000 / 10i64.pow(digits) };
            (second, nanos, step)
        }
    };
    if parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let naive = day.and_hms_nano_opt(hour, minute, second.min(59), nanos)?;
    let lo = match zone {
        Zone::Utc => Utc.from_utc_datetime(&naive).timestamp_millis(),
        Zone::Offset(offset) => naive.and_local_timezone(offset).single()?.timestamp_millis(),
    };
    Some(DateRange { lo, hi: lo.checked_add(step_ms)? })
}

fn date_only(s: &str) -> Option<DateRange> {
    let digits_ok = |part: &str, len: usize| part.len() == len && part.chars().all(|c| c.is_ascii_digit());
    let mut parts = s.split('-');
    let year_s = parts.next()?;
    if !digits_ok(year_s, 4) {
        return None;
    }
    let year: i32 = year_s.parse().ok()?;
    let (start, end) = match (parts.next(), parts.next(), parts.next()) {
        (None, ..) => (NaiveDate::from_ymd_opt(year, 1, 1)?, NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?),
        (Some(m), None, _) if digits_ok(m, 2) => {
            let start = NaiveDate::from_ymd_opt(year, m.parse().ok()?, 1)?;
            let next = if start.month() == 12 {
                NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, start.month() + 1, 1)?
            };
            (start, next)
        }
        (Some(m), Some(d), None) if digits_ok(m, 2) && digits_ok(d, 2) => {
            let start = NaiveDate::from_ymd_opt(year, m.parse().ok()?, d.parse().ok()?)?;
            (start, start.succ_opt()?)
        }
        _ => return None,
    };
    Some(DateRange { lo: midnight_utc(start)?, hi: midnight_utc(end)? })
}

fn midnight_utc(day: NaiveDate) -> Option<i64> {
    let naive: NaiveDateTime = day.and_hms_opt(0, 0, 0)?;
    Some(Utc.from_utc_datetime(&naive).timestamp_millis())
}

enum Zone {
    Utc,
    Offset(chrono::FixedOffset),
}

/// `10:00:00+02:00` -> (`10:00:00`, +2h); `10:00Z` -> (`10:00`, UTC); no zone: UTC.
fn split_zone(time: &str) -> (&str, Zone) {
    if let Some(clock) = time.strip_suffix('Z') {
        return (clock, Zone::Utc);
    }
    if let Some(at) = time.rfind(['+', '-']) {
        let (clock, zone) = time.split_at(at);
        let parsed = DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{zone}")).ok();
        if let Some(dt) = parsed {
            return (clock, Zone::Offset(*dt.offset()));
        }
    }
    (time, Zone::Utc)
}

/// A query number and the half-width its precision implies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberRange {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Parse a FHIR decimal as written in a query (`100`, `100.00`, `1e2`, `-0.5`).
pub fn number_range(s: &str) -> Option<NumberRange> {
    let s = s.trim();
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) {
        return None;
    }
    let value: f64 = s.parse().ok().filter(|v: &f64| v.is_finite())?;
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let fraction_digits = mantissa.split_once('.').map_or(0, |(_, f)| f.len());
    let scale = exponent.checked_sub(i32::try_from(fraction_digits).ok()?)?;
    let half = 0.5 * 10f64.powi(scale);
    Some(NumberRange { value, lo: value - half, hi: value + half })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn partial_dates_are_the_whole_period_they_name() {
        let year = date_range("2020").unwrap();
        assert_eq!((year.lo, year.hi), (ms("2020-01-01T00:00:00Z"), ms("2021-01-01T00:00:00Z")));
        let month = date_range("2020-12").unwrap();
        assert_eq!((month.lo, month.hi), (ms("2020-12-01T00:00:00Z"), ms("2021-01-01T00:00:00Z")));
        let day = date_range("2020-02-29").unwrap();
        assert_eq!((day.lo, day.hi), (ms("2020-02-29T00:00:00Z"), ms("2020-03-01T00:00:00Z")));
        for bad in ["20", "2020-13", "2021-02-29", "2020-1-01", "x", "2020-01-01-01", ""] {
            assert_eq!(date_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_carry_their_zone_and_precision() {
        let minute = date_range("2020-05-01T10:30+02:00").unwrap();
        assert_eq!((minute.lo, minute.hi), (ms("2020-05-01T08:30:00Z"), ms("2020-05-01T08:31:00Z")));
        let second = date_range("2020-05-01T10:30:15Z").unwrap();
        assert_eq!(second.hi - second.lo, 1000);
        let tenth = date_range("2020-05-01T10:30:15.1-05:00").unwrap();
        assert_eq!((tenth.lo, tenth.hi - tenth.lo), (ms("2020-05-01T15:30:15.100Z"), 100));
        let milli = date_range("2020-05-01T10:30:15.123456Z").unwrap();
        assert_eq!((milli.lo, milli.hi - milli.lo), (ms("2020-05-01T10:30:15.123Z"), 1));
        // No zone: UTC.
        assert_eq!(date_range("2020-05-01T10:30:15").unwrap().lo, ms("2020-05-01T10:30:15Z"));
        for bad in ["2020-05-01T25:00Z", "2020-05-01T10", "2020-05-01T10:30:1Z", "2020-05-01T10:30:15.x"] {
            assert_eq!(date_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers_have_the_precision_of_their_digits() {
        let n = number_range("100").unwrap();
        assert_eq!((n.lo, n.hi), (99.5, 100.5));
        let n = number_range("100.00").unwrap();
        assert!((n.lo - 99.995).abs() < 1e-9 && (n.hi - 100.005).abs() < 1e-9);
        let n = number_range("1e2").unwrap();
        assert_eq!((n.value, n.lo, n.hi), (100.0, 50.0, 150.0));
        let n = number_range("-0.5").unwrap();
        assert!((n.lo + 0.55).abs() < 1e-9);
        for bad in ["", "abc", "1,5", "NaN", "inf"] {
            assert_eq!(number_range(bad), None, "{bad}");
        }
    }
}
