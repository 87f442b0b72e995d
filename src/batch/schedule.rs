//! When a batch job is due: cron in an IANA time zone, correct across DST changes, with missed
//! runs collapsed into one (no burst after downtime).

use chrono::{DateTime, LocalResult, TimeZone, Utc};

use super::zone::Zone;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    zone: Zone,
}

/// How many fire times are scanned at most when catching up after downtime.
const CATCH_UP_LIMIT: usize = 1_000_000;

impl Schedule {
    /// Parses a 5- or 6-field cron expression in the IANA time zone `zone`.
    pub fn parse(expression: &str, zone: &str) -> Result<Schedule, String> {
        let normalized = crate::spec::normalize_cron(expression)?;
        let cron = normalized
            .parse::<cron::Schedule>()
            .map_err(|e| format!("`{expression}`: {e}"))?;
        let zone = Zone::named(zone).ok_or_else(|| format!("`{zone}` is not an IANA time zone"))?;
        Ok(Schedule { cron, zone })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.fire_times(after).next()
    }

    /// Fire times strictly after `after`. A wall-clock time that happens twice when clocks go back
    /// fires only the first time, as cron does; otherwise one overlap could run a job twice.
    fn fire_times(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let local = self.zone.from_utc_datetime(&after.naive_utc());
        self.cron
            .after(&local)
            .filter(|time| {
                !matches!(
                    self.zone.from_local_datetime(&time.naive_local()),
                    LocalResult::Ambiguous(_, later) if later == *time
                )
            })
            .map(|t| t.with_timezone(&Utc))
            // Inside the overlap hour the crate may map a later wall-clock time to its first, earlier instant.
            .filter(move |t| *t > after)
    }

    /// The latest fire time in `(since, now]`: the one run to make up after downtime, however many
    /// were missed, together with how many were missed in all.
    pub fn latest_due(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, usize)> {
        let mut latest = None;
        let mut count = 0;
        for utc in self.fire_times(since).take(CATCH_UP_LIMIT) {
            if utc > now {
                break;
            }
            latest = Some(utc);
            count += 1;
        }
        latest.map(|t| (t, count))
    }
}

/// A time as the spec's author reads it: in the schedule's zone.
pub fn in_zone(time: DateTime<Utc>, zone: &str) -> String {
    match Zone::named(zone) {
        Some(tz) if zone != "UTC" => format!(
            "{} ({zone})",
            time.with_timezone(&tz)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        _ => time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::utc;

    #[test]
    fn daily_at_two_in_berlin_follows_summer_and_winter_time() {
        let schedule = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // Winter (UTC+1): 02:00 local is 01:00 UTC.
        assert_eq!(
            schedule.next_after(utc("2026-01-10T12:00:00Z")),
            Some(utc("2026-01-11T01:00:00Z"))
        );
        // Summer (UTC+2): 02:00 local is 00:00 UTC.
        assert_eq!(
            schedule.next_after(utc("2026-07-10T12:00:00Z")),
            Some(utc("2026-07-11T00:00:00Z"))
        );
    }

    #[test]
    fn the_spring_gap_and_the_autumn_overlap() {
        // 2026-03-29 02:00 Berlin jumps to 03:00: 02:30 does not exist that day and is not run.
        let schedule = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let next = schedule.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            next,
            utc("2026-03-30T00:30:00Z"),
            "the nonexistent 02:30 is skipped, not run twice the next day"
        );
        // 2026-10-25 02:30 Berlin happens twice (CEST then CET): the job runs once.
        let runs: Vec<_> = {
            let mut at = utc("2026-10-24T12:00:00Z");
            let mut found = Vec::new();
            while let Some(next) = schedule.next_after(at) {
                if next > utc("2026-10-26T12:00:00Z") {
                    break;
                }
                found.push(next);
                at = next;
            }
            found
        };
        let on_the_25th = runs
            .iter()
            .filter(|t| t.date_naive().to_string() == "2026-10-25")
            .count();
        assert_eq!(on_the_25th, 1, "{runs:?}");
    }

    #[test]
    fn a_look_between_the_two_occurrences_does_not_fire_the_second() {
        // 02:30 CEST is 00:30Z; 02:30 CET is 01:30Z. Looking at 01:00Z must not find 01:30Z.
        let schedule = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            schedule.latest_due(utc("2026-10-25T00:00:00Z"), utc("2026-10-25T01:00:00Z")),
            Some((utc("2026-10-25T00:30:00Z"), 1))
        );
        assert_eq!(
            schedule.latest_due(utc("2026-10-25T01:00:00Z"), utc("2026-10-25T12:00:00Z")),
            None
        );
        assert_eq!(
            schedule.next_after(utc("2026-10-25T01:00:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn missed_runs_collapse_into_the_latest() {
        let schedule = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        let (latest, missed) = schedule
            .latest_due(utc("2026-05-01T00:00:00Z"), utc("2026-05-01T01:00:05Z"))
            .unwrap();
        assert_eq!(latest, utc("2026-05-01T01:00:00Z"));
        assert_eq!(missed, 360);
        assert_eq!(
            schedule.latest_due(utc("2026-05-01T00:00:01Z"), utc("2026-05-01T00:00:09Z")),
            None
        );
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        assert!(
            Schedule::parse("0 2 * * *", "Mars/Base")
                .unwrap_err()
                .contains("Mars/Base")
        );
        assert!(Schedule::parse("0 25 * * *", "UTC").is_err());
    }
}
