//! Batch jobs: cron schedules in the spec's time zone.

pub mod schedule;
