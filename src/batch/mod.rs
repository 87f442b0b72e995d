//! Batch jobs: when a run is due. The agent (`reconcile::batch`) carries the decision out.
//!
//! The decision is a pure function of the spec, the schedule cursor, the runs already made and the
//! clock, so DST edges, missed schedules and overlap rules are tested with an injected clock.

pub mod schedule;
pub mod zone;

use chrono::{DateTime, Utc};

use crate::spec::{BatchSpec, Concurrency};
use crate::state::ScheduleCursor;
use schedule::Schedule;

/// Why a run is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A cron fire time came round.
    Cron,
    /// Fire times were missed while the agent was down; the latest one runs once.
    CatchUp,
    /// No cron: one run per new revision of the spec.
    Revision,
}

impl Trigger {
    /// The text stored with the run.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::CatchUp => "catch-up",
            Trigger::Revision => "revision",
        }
    }
}

/// What the runs recorded so far say, for one batch job.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunCounts {
    /// Runs of the current spec revision (any outcome).
    pub of_revision: u32,
    /// Runs still on the cluster.
    pub active: u32,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a run.
    Run {
        /// Why.
        trigger: Trigger,
        /// The fire time it answers (cron runs).
        scheduled_for: Option<DateTime<Utc>>,
        /// Fire times that came round since the last look, including this one.
        missed: usize,
        /// Cancel the runs still going first (`concurrency: replace`).
        replace_active: bool,
    },
    /// Nothing to start.
    Wait {
        /// Why, for people.
        why: String,
        /// The next fire time, if there is one.
        next: Option<DateTime<Utc>>,
    },
}

/// The decision and where the schedule cursor goes (`None`: no cron, no cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// What to do.
    pub decision: Decision,
    /// Where the schedule's cursor stands after this tick; stored when it differs from the one
    /// read.
    pub cursor: Option<ScheduleCursor>,
}

/// The next fire time of a cron batch spec after `now` (`None` without cron).
pub fn next_run(batch: &BatchSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Schedule::parse(batch.cron.as_deref()?, &batch.timezone)
        .ok()?
        .next_after(now)
}

/// Decides whether a run of a batch job is due at `now`.
pub fn decide(
    batch: &BatchSpec,
    cursor: Option<&ScheduleCursor>,
    counts: RunCounts,
    now: DateTime<Utc>,
) -> Result<Tick, String> {
    let Some(expression) = &batch.cron else {
        let decision = if counts.of_revision == 0 {
            overlap(batch, counts, Trigger::Revision, None, 1)
        } else {
            Decision::Wait {
                why: "ran for this revision; the next change to the spec runs it again".into(),
                next: None,
            }
        };
        return Ok(Tick {
            decision: limit(batch, counts, decision),
            cursor: None,
        });
    };
    let schedule = Schedule::parse(expression, &batch.timezone)?;
    let fresh_cursor = ScheduleCursor {
        cron: expression.clone(),
        timezone: batch.timezone.clone(),
        cursor_ms: now.timestamp_millis(),
    };
    let current = cursor.filter(|c| c.cron == *expression && c.timezone == batch.timezone);
    let Some(current) = current else {
        let next = schedule.next_after(now);
        let why = match cursor {
            Some(old) => format!(
                "schedule changed from `{}` ({}); it takes effect from its next tick",
                old.cron, old.timezone
            ),
            None => "schedule started".to_string(),
        };
        return Ok(Tick {
            decision: limit(batch, counts, Decision::Wait { why, next }),
            cursor: Some(fresh_cursor),
        });
    };
    let since = DateTime::from_timestamp_millis(current.cursor_ms).unwrap_or(now);
    let due = schedule.latest_due(since, now);
    let (decision, cursor) = match due {
        Some((fire, missed)) => {
            let trigger = if missed > 1 {
                Trigger::CatchUp
            } else {
                Trigger::Cron
            };
            (
                overlap(batch, counts, trigger, Some(fire), missed),
                fresh_cursor,
            )
        }
        // With nothing due since the cursor, the cursor stays: the next pass scans the same empty
        // stretch (one fire time) and finds what this one would have, and a pass with nothing to
        // do writes nothing. A clock stepped back leaves it ahead, so no fire time runs twice.
        None => (
            Decision::Wait {
                why: "not due".into(),
                next: None,
            },
            current.clone(),
        ),
    };
    // A wait says when the schedule fires next.
    let decision = match limit(batch, counts, decision) {
        Decision::Wait { why, next: None } => Decision::Wait {
            why,
            next: schedule.next_after(now),
        },
        other => other,
    };
    Ok(Tick {
        decision,
        cursor: Some(cursor),
    })
}

fn overlap(
    batch: &BatchSpec,
    counts: RunCounts,
    trigger: Trigger,
    scheduled_for: Option<DateTime<Utc>>,
    missed: usize,
) -> Decision {
    if counts.active > 0 && batch.concurrency == Concurrency::Forbid {
        return Decision::Wait {
            why: format!(
                "the previous run is still going (concurrency: forbid); skipped the run{}",
                scheduled_for
                    .map(|t| format!(" scheduled for {}", t.to_rfc3339()))
                    .unwrap_or_default()
            ),
            next: None,
        };
    }
    Decision::Run {
        trigger,
        scheduled_for,
        missed,
        replace_active: counts.active > 0 && batch.concurrency == Concurrency::Replace,
    }
}

fn limit(batch: &BatchSpec, counts: RunCounts, decision: Decision) -> Decision {
    match (batch.max_runs, &decision) {
        (Some(max), _) if counts.of_revision >= max => Decision::Wait {
            why: format!(
                "max_runs reached: {} of {max} runs made for this spec revision; a new revision starts counting again",
                counts.of_revision
            ),
            next: None,
        },
        _ => decision,
    }
}

/// An RFC 3339 instant, for the schedule tests.
#[cfg(test)]
pub(crate) fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(cron: Option<&str>, zone: &str) -> BatchSpec {
        BatchSpec {
            cron: cron.map(str::to_string),
            timezone: zone.into(),
            max_runs: None,
            ttl_seconds: None,
            cleanup_on_completion: false,
            concurrency: Concurrency::Forbid,
        }
    }

    fn cursor_at(spec: &BatchSpec, at: &str) -> ScheduleCursor {
        ScheduleCursor {
            cron: spec.cron.clone().unwrap(),
            timezone: spec.timezone.clone(),
            cursor_ms: utc(at).timestamp_millis(),
        }
    }

    #[test]
    fn a_new_schedule_waits_for_its_first_tick() {
        let spec = batch(Some("0 2 * * *"), "Europe/Berlin");
        let tick = decide(
            &spec,
            None,
            RunCounts::default(),
            utc("2026-01-10T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            tick.decision,
            Decision::Wait {
                why: "schedule started".into(),
                next: Some(utc("2026-01-11T01:00:00Z"))
            }
        );
        assert_eq!(
            tick.cursor.unwrap().cursor_ms,
            utc("2026-01-10T12:00:00Z").timestamp_millis()
        );
    }

    #[test]
    fn a_due_tick_runs_once_and_moves_the_cursor() {
        let spec = batch(Some("0 2 * * *"), "Europe/Berlin");
        let cursor = cursor_at(&spec, "2026-01-10T12:00:00Z");
        let now = utc("2026-01-11T01:00:03Z");
        let tick = decide(&spec, Some(&cursor), RunCounts::default(), now).unwrap();
        assert_eq!(
            tick.decision,
            Decision::Run {
                trigger: Trigger::Cron,
                scheduled_for: Some(utc("2026-01-11T01:00:00Z")),
                missed: 1,
                replace_active: false
            }
        );
        let again = decide(&spec, tick.cursor.as_ref(), RunCounts::default(), now).unwrap();
        assert!(
            matches!(again.decision, Decision::Wait { .. }),
            "no second run for one tick"
        );
    }

    #[test]
    fn three_days_down_across_the_spring_change_runs_the_latest_once() {
        // Berlin skips 02:00–03:00 on 2026-03-29: 02:30 fires on the 27th, 28th, 30th only.
        let spec = batch(Some("30 2 * * *"), "Europe/Berlin");
        let cursor = cursor_at(&spec, "2026-03-26T12:00:00Z");
        let tick = decide(
            &spec,
            Some(&cursor),
            RunCounts::default(),
            utc("2026-03-30T08:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            tick.decision,
            Decision::Run {
                trigger: Trigger::CatchUp,
                scheduled_for: Some(utc("2026-03-30T00:30:00Z")),
                missed: 3,
                replace_active: false
            }
        );
    }

    #[test]
    fn the_cursor_stays_while_nothing_is_due_and_moves_with_a_due_tick() {
        let spec = batch(Some("0 2 * * *"), "UTC");
        let cursor = cursor_at(&spec, "2026-01-10T12:00:00Z");
        let quiet = decide(
            &spec,
            Some(&cursor),
            RunCounts::default(),
            utc("2026-01-10T18:00:00Z"),
        )
        .unwrap();
        assert!(matches!(quiet.decision, Decision::Wait { .. }));
        assert_eq!(
            quiet.cursor.as_ref(),
            Some(&cursor),
            "nothing due: not moved"
        );
        // From the cursor that stayed, the next tick is found as it would have been.
        let now = utc("2026-01-11T02:00:05Z");
        let due = decide(&spec, quiet.cursor.as_ref(), RunCounts::default(), now).unwrap();
        assert!(
            matches!(due.decision, Decision::Run { missed: 1, .. }),
            "{due:?}"
        );
        assert_eq!(due.cursor.unwrap().cursor_ms, now.timestamp_millis());
        // A due tick skipped by `max_runs` is used up all the same.
        let limited = BatchSpec {
            max_runs: Some(1),
            ..spec.clone()
        };
        let skipped = decide(
            &limited,
            Some(&cursor),
            RunCounts {
                of_revision: 1,
                active: 0,
            },
            now,
        )
        .unwrap();
        assert!(matches!(skipped.decision, Decision::Wait { .. }));
        assert_eq!(skipped.cursor.unwrap().cursor_ms, now.timestamp_millis());
        // A clock stepped back leaves the cursor ahead: the ticks it covers are not run again.
        let ahead = cursor_at(&spec, "2026-01-12T12:00:00Z");
        let back = decide(
            &spec,
            Some(&ahead),
            RunCounts::default(),
            utc("2026-01-11T12:00:00Z"),
        )
        .unwrap();
        assert!(matches!(back.decision, Decision::Wait { .. }));
        assert_eq!(back.cursor.as_ref(), Some(&ahead));
    }

    #[test]
    fn the_autumn_overlap_fires_once() {
        let spec = batch(Some("30 2 * * *"), "Europe/Berlin");
        let cursor = cursor_at(&spec, "2026-10-24T12:00:00Z");
        let tick = decide(
            &spec,
            Some(&cursor),
            RunCounts::default(),
            utc("2026-10-25T12:00:00Z"),
        )
        .unwrap();
        assert!(
            matches!(tick.decision, Decision::Run { missed: 1, .. }),
            "{tick:?}"
        );
    }

    #[test]
    fn a_changed_cron_takes_effect_from_its_next_tick() {
        let old = batch(Some("0 2 * * *"), "UTC");
        let cursor = cursor_at(&old, "2026-05-01T00:00:00Z");
        let new = batch(Some("0 * * * *"), "UTC");
        let now = utc("2026-05-01T05:30:00Z");
        let tick = decide(&new, Some(&cursor), RunCounts::default(), now).unwrap();
        match tick.decision {
            Decision::Wait { why, next } => {
                assert!(why.contains("0 2 * * *"), "{why}");
                assert_eq!(next, Some(utc("2026-05-01T06:00:00Z")));
            }
            other => panic!("the old cursor must not fire the new schedule: {other:?}"),
        }
        assert_eq!(tick.cursor.unwrap().cron, "0 * * * *");
    }

    #[test]
    fn overlap_rules() {
        let mut spec = batch(Some("*/10 * * * * *"), "UTC");
        let cursor = cursor_at(&spec, "2026-05-01T00:00:00Z");
        let now = utc("2026-05-01T00:00:10Z");
        let busy = RunCounts {
            of_revision: 1,
            active: 1,
        };
        let forbid = decide(&spec, Some(&cursor), busy, now).unwrap();
        assert!(
            matches!(&forbid.decision, Decision::Wait { why, .. } if why.contains("forbid")),
            "{forbid:?}"
        );
        spec.concurrency = Concurrency::Replace;
        assert!(matches!(
            decide(&spec, Some(&cursor), busy, now).unwrap().decision,
            Decision::Run {
                replace_active: true,
                ..
            }
        ));
        spec.concurrency = Concurrency::Allow;
        assert!(matches!(
            decide(&spec, Some(&cursor), busy, now).unwrap().decision,
            Decision::Run {
                replace_active: false,
                ..
            }
        ));
    }

    #[test]
    fn max_runs_counts_per_revision() {
        let mut spec = batch(Some("*/10 * * * * *"), "UTC");
        spec.max_runs = Some(2);
        let cursor = cursor_at(&spec, "2026-05-01T00:00:00Z");
        let now = utc("2026-05-01T00:00:10Z");
        let done = RunCounts {
            of_revision: 2,
            active: 0,
        };
        let tick = decide(&spec, Some(&cursor), done, now).unwrap();
        assert!(
            matches!(&tick.decision, Decision::Wait { why, .. } if why.contains("max_runs")),
            "{tick:?}"
        );
        let fresh_revision = RunCounts::default();
        assert!(matches!(
            decide(&spec, Some(&cursor), fresh_revision, now)
                .unwrap()
                .decision,
            Decision::Run { .. }
        ));
    }

    #[test]
    fn without_cron_one_run_per_revision() {
        let spec = batch(None, "UTC");
        let now = utc("2026-05-01T00:00:00Z");
        let first = decide(&spec, None, RunCounts::default(), now).unwrap();
        assert!(matches!(
            first.decision,
            Decision::Run {
                trigger: Trigger::Revision,
                ..
            }
        ));
        assert_eq!(first.cursor, None);
        let ran = RunCounts {
            of_revision: 1,
            active: 0,
        };
        assert!(matches!(
            decide(&spec, None, ran, now).unwrap().decision,
            Decision::Wait { .. }
        ));
    }
}
