//! Timestamps as the server records them: UTC, millisecond precision.
//!
//! Millisecond precision is what `meta.lastUpdated` shows, so `_since=<that value>` matches the
//! version it came from exactly.

use std::fmt;

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a FHIR instant (for example `2024-05-01T12:00:00Z` or `2024-05-01`)")]
pub struct TimestampError(String);

impl Timestamp {
    pub fn now() -> Self {
        Self(Utc::now().timestamp_millis())
    }

    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// The later of `self` and `other`: a new version is never older than the one it replaces,
    /// even when clocks of two replicas disagree.
    pub fn at_least(self, other: Self) -> Self {
        Self(self.0.max(other.0))
    }

    /// Parse a FHIR instant, or a dateTime/date (taken as the start of that day, UTC).
    pub fn parse_fhir(s: &str) -> Result<Self, TimestampError> {
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Ok(Self(dt.with_timezone(&Utc).timestamp_millis()));
        }
        let err = || TimestampError(s.chars().take(64).collect());
        let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| err())?;
        let dt = date.and_hms_opt(0, 0, 0).ok_or_else(err)?;
        Ok(Self(Utc.from_utc_datetime(&dt).timestamp_millis()))
    }

    fn datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }

    /// `2024-05-01T12:00:00.123Z`
    pub fn to_fhir(self) -> String {
        self.datetime().to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// `Wed, 01 May 2024 12:00:00 GMT` (RFC 9110 IMF-fixdate) for `Last-Modified`.
    pub fn to_http_date(self) -> String {
        self.datetime().format("%a, %d %b %Y %H:%M:%S GMT").to_string()
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_fhir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let t = Timestamp::parse_fhir("2024-05-01T12:00:00.123Z").unwrap();
        assert_eq!(t.to_fhir(), "2024-05-01T12:00:00.123Z");
        assert_eq!(t.to_http_date(), "Wed, 01 May 2024 12:00:00 GMT");
        let offset = Timestamp::parse_fhir("2024-05-01T14:00:00.123+02:00").unwrap();
        assert_eq!(offset, t);
        assert_eq!(Timestamp::parse_fhir("2024-05-01").unwrap().to_fhir(), "2024-05-01T00:00:00.000Z");
        for bad in ["yesterday", "2024-13-01", "2024-05-01T12:00:00", ""] {
            assert!(Timestamp::parse_fhir(bad).is_err(), "{bad}");
        }
    }
}
