//! IANA time zones for cron schedules: jiff's bundled time zone database behind chrono's
//! `TimeZone`, which the cron crate computes in.
//!
//! jiff keeps the database as one byte string in the binary. chrono-tz, used before, had a table
//! entry with a pointer in it for every transition of every zone (28,571), which the dynamic loader
//! relocated at every start of every command: 270 more pages written before `main`, 0.7 ms of
//! `flink-gitops --version` (3.5 ms), and a megabyte of the idle service's memory.

use chrono::{
    DateTime, Datelike, FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Timelike, Utc,
};

/// An IANA time zone, named as the database names it (`Europe/Berlin`, `UTC`).
#[derive(Clone, Debug)]
pub struct Zone(jiff::tz::TimeZone);

/// A zone's offset from UTC at one instant. chrono rebuilds a zone from an offset, so the offset
/// carries its zone.
#[derive(Clone, Debug)]
pub struct ZoneOffset {
    zone: Zone,
    fixed: FixedOffset,
}

impl Zone {
    /// The zone named exactly `name`; `None` for a name the database does not have, or has in
    /// another case (a spec says `Europe/Berlin`, not `europe/berlin`).
    pub fn named(name: &str) -> Option<Zone> {
        let zone = jiff::tz::TimeZone::get(name).ok()?;
        (zone.iana_name() == Some(name)).then_some(Zone(zone))
    }

    /// `offset` of this zone, as chrono takes it.
    fn with_offset(&self, offset: jiff::tz::Offset) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            // jiff's offsets stay within ±26 hours, chrono's within ±24: a zone never comes near
            // either.
            fixed: FixedOffset::east_opt(offset.seconds()).unwrap_or_else(|| Utc.fix()),
        }
    }
}

/// `local` as jiff's civil time; `None` outside jiff's years (-9999 to 9999) or in a leap second.
fn civil(local: &NaiveDateTime) -> Option<jiff::civil::DateTime> {
    jiff::civil::DateTime::new(
        i16::try_from(local.year()).ok()?,
        i8::try_from(local.month()).ok()?,
        i8::try_from(local.day()).ok()?,
        i8::try_from(local.hour()).ok()?,
        i8::try_from(local.minute()).ok()?,
        i8::try_from(local.second()).ok()?,
        i32::try_from(local.nanosecond()).ok()?,
    )
    .ok()
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl std::fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fixed.fmt(f)
    }
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Zone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    /// A wall-clock time skipped when clocks go forward has no offset; one that happens twice when
    /// they go back has two, the earlier instant first.
    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        let Some(civil) = civil(local) else {
            return MappedLocalTime::None;
        };
        match self.0.to_ambiguous_timestamp(civil).offset() {
            jiff::tz::AmbiguousOffset::Unambiguous { offset } => {
                MappedLocalTime::Single(self.with_offset(offset))
            }
            jiff::tz::AmbiguousOffset::Gap { .. } => MappedLocalTime::None,
            jiff::tz::AmbiguousOffset::Fold { before, after } => {
                MappedLocalTime::Ambiguous(self.with_offset(before), self.with_offset(after))
            }
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        let instant = utc.and_utc();
        let timestamp = jiff::Timestamp::new(instant.timestamp(), 0).unwrap_or(
            if instant < DateTime::<Utc>::UNIX_EPOCH {
                jiff::Timestamp::MIN
            } else {
                jiff::Timestamp::MAX
            },
        );
        self.with_offset(self.0.to_offset(timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::utc;

    fn local(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn names_are_the_databases_exactly() {
        for name in [
            "Europe/Berlin",
            "UTC",
            "America/New_York",
            "US/Eastern",
            "Etc/GMT+5",
        ] {
            assert!(Zone::named(name).is_some(), "{name}");
        }
        for name in ["europe/berlin", "Europe/Nowhere", "", "CEST", "+02:00"] {
            assert!(Zone::named(name).is_none(), "{name}");
        }
    }

    #[test]
    fn offsets_in_summer_and_winter_and_across_both_changes() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        let at = |text| {
            utc(text)
                .with_timezone(&berlin)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        assert_eq!(at("2026-01-10T12:00:00Z"), "2026-01-10T13:00:00+01:00");
        assert_eq!(at("2026-07-10T12:00:00Z"), "2026-07-10T14:00:00+02:00");
        // 02:30 does not exist on 29 March 2026, and happens twice on 25 October.
        assert_eq!(
            berlin.from_local_datetime(&local("2026-03-29 02:30:00")),
            MappedLocalTime::None
        );
        match berlin.from_local_datetime(&local("2026-10-25 02:30:00")) {
            MappedLocalTime::Ambiguous(first, second) => {
                assert_eq!(first.with_timezone(&Utc), utc("2026-10-25T00:30:00Z"));
                assert_eq!(second.with_timezone(&Utc), utc("2026-10-25T01:30:00Z"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            berlin
                .from_local_datetime(&local("2026-10-25 04:00:00"))
                .single()
                .map(|t| t.with_timezone(&Utc)),
            Some(utc("2026-10-25T03:00:00Z"))
        );
        // Outside jiff's years: no local time, and the nearest instant's offset for a UTC one.
        let far = NaiveDate::from_ymd_opt(20_000, 1, 1)
            .unwrap()
            .and_time(NaiveTime::MIN);
        assert_eq!(berlin.from_local_datetime(&far), MappedLocalTime::None);
        assert_eq!(
            berlin
                .offset_from_utc_datetime(&far)
                .fix()
                .local_minus_utc(),
            3600
        );
    }
}
