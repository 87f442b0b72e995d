//! Batch runs and schedule cursors.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{StateError, StateStore, sqlite};

/// Where a batch run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Recorded before the submit call; after a crash the cluster says whether it got there.
    Submitting,
    /// On the cluster and not finished.
    Running,
    /// Flink reported FINISHED.
    Finished,
    /// Flink reported FAILED (the root cause is recorded).
    Failed,
    /// Cancelled by someone else, or because its spec was deleted.
    Canceled,
    /// Cancelled by the agent at its `ttl_seconds` deadline.
    TimedOut,
    /// Cancelled because a newer run replaced it (`concurrency: replace`).
    Replaced,
    /// The submission never reached the cluster.
    Lost,
}

impl RunStatus {
    /// The text stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Submitting => "submitting",
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Replaced => "replaced",
            RunStatus::Lost => "lost",
        }
    }

    fn parse(text: &str) -> RunStatus {
        match text {
            "submitting" => RunStatus::Submitting,
            "running" => RunStatus::Running,
            "finished" => RunStatus::Finished,
            "failed" => RunStatus::Failed,
            "canceled" => RunStatus::Canceled,
            "timed_out" => RunStatus::TimedOut,
            "replaced" => RunStatus::Replaced,
            _ => RunStatus::Lost,
        }
    }
}

/// One run of a batch job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// Row id (0 before insertion).
    pub id: i64,
    /// The spec's job id.
    pub job_id: String,
    /// The Flink job id of this run.
    pub flink_job_id: String,
    /// The head when it was submitted.
    pub commit_id: String,
    /// The commit that introduced the spec revision it ran (`max_runs` counts per revision).
    pub spec_commit: String,
    /// Hash of that spec revision.
    pub spec_hash: String,
    /// The JAR it ran.
    pub jar_sha256: String,
    /// `cron`, `catch-up` or `revision`.
    pub trigger: String,
    /// The schedule time it answers (RFC 3339), for cron runs.
    pub scheduled_for: Option<String>,
    /// Where it stands.
    pub status: RunStatus,
    /// When it was submitted (Unix ms).
    pub submitted_at_ms: i64,
    /// When `ttl_seconds` cancels it (Unix ms).
    pub deadline_ms: Option<i64>,
    /// When it ended (Unix ms).
    pub ended_at_ms: Option<i64>,
    /// Flink's final state.
    pub flink_state: Option<String>,
    /// Why it failed.
    pub root_cause: Option<String>,
}

/// Where a cron schedule stands: fire times up to `cursor_ms` have been handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleCursor {
    /// The cron expression the cursor belongs to.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// Fire times at or before this (Unix ms) are done.
    pub cursor_ms: i64,
}

pub(crate) const RUN_COLUMNS: &str = "id, job_id, flink_job_id, commit_id, spec_commit, spec_hash, jar_sha256, trigger, scheduled_for, status, submitted_at_ms, deadline_ms, ended_at_ms, flink_state, root_cause";

pub(crate) fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = row.get(9)?;
    Ok(RunRecord {
        id: row.get(0)?,
        job_id: row.get(1)?,
        flink_job_id: row.get(2)?,
        commit_id: row.get(3)?,
        spec_commit: row.get(4)?,
        spec_hash: row.get(5)?,
        jar_sha256: row.get(6)?,
        trigger: row.get(7)?,
        scheduled_for: row.get(8)?,
        status: RunStatus::parse(&status),
        submitted_at_ms: row.get(10)?,
        deadline_ms: row.get(11)?,
        ended_at_ms: row.get(12)?,
        flink_state: row.get(13)?,
        root_cause: row.get(14)?,
    })
}

impl StateStore {
    /// Records a run before it is submitted; returns its id.
    pub fn insert_run(&self, run: &RunRecord) -> Result<i64, StateError> {
        self.connection
            .execute(
                "INSERT INTO runs (job_id, flink_job_id, commit_id, spec_commit, spec_hash, jar_sha256, trigger, scheduled_for, status, submitted_at_ms, deadline_ms, ended_at_ms, flink_state, root_cause)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    run.job_id,
                    run.flink_job_id,
                    run.commit_id,
                    run.spec_commit,
                    run.spec_hash,
                    run.jar_sha256,
                    run.trigger,
                    run.scheduled_for,
                    run.status.as_str(),
                    run.submitted_at_ms,
                    run.deadline_ms,
                    run.ended_at_ms,
                    run.flink_state,
                    run.root_cause
                ],
            )
            .map_err(sqlite(&self.path, "record run"))?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Records a run and moves its job's schedule cursor in one transaction: after a crash either
    /// both happened or neither did.
    pub fn insert_run_moving_cursor(
        &self,
        run: &RunRecord,
        cursor: Option<&ScheduleCursor>,
    ) -> Result<i64, StateError> {
        let transaction = self
            .connection
            .unchecked_transaction()
            .map_err(sqlite(&self.path, "begin run"))?;
        let id = self.insert_run(run)?;
        if let Some(cursor) = cursor {
            self.set_schedule_cursor(&run.job_id, cursor)?;
        }
        transaction
            .commit()
            .map_err(sqlite(&self.path, "commit run"))?;
        Ok(id)
    }

    /// Updates where a run stands.
    pub fn update_run(&self, run: &RunRecord) -> Result<(), StateError> {
        self.connection
            .execute(
                "UPDATE runs SET status = ?2, ended_at_ms = ?3, flink_state = ?4, root_cause = ?5 WHERE id = ?1",
                params![
                    run.id,
                    run.status.as_str(),
                    run.ended_at_ms,
                    run.flink_state,
                    run.root_cause
                ],
            )
            .map_err(sqlite(&self.path, "update run"))?;
        Ok(())
    }

    fn select_runs(
        &self,
        condition: &str,
        parameters: impl rusqlite::Params,
        operation: &'static str,
    ) -> Result<Vec<RunRecord>, StateError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE {condition}");
        let mut statement = self
            .connection
            .prepare(&sql)
            .map_err(sqlite(&self.path, operation))?;
        let rows = statement
            .query_map(parameters, run_from_row)
            .map_err(sqlite(&self.path, operation))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, operation))
    }

    /// Runs, oldest first; of one job when `job_id` is given.
    pub fn runs(&self, job_id: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        self.runs_since(job_id, i64::MIN)
    }

    /// Runs submitted at or after `since_ms` (Unix ms), oldest first; of one job when `job_id` is given.
    pub fn runs_since(
        &self,
        job_id: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<RunRecord>, StateError> {
        self.select_runs(
            "(?1 IS NULL OR job_id = ?1) AND submitted_at_ms >= ?2 ORDER BY id",
            params![job_id, since_ms],
            "read runs",
        )
    }

    /// The newest run of every job.
    pub fn last_runs(&self) -> Result<Vec<RunRecord>, StateError> {
        self.select_runs(
            "id IN (SELECT MAX(id) FROM runs GROUP BY job_id) ORDER BY job_id",
            [],
            "read last runs",
        )
    }

    /// Runs still on the cluster (`submitting` or `running`); of one job when `job_id` is given.
    pub fn active_runs(&self, job_id: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        self.select_runs(
            "status IN ('submitting', 'running') AND (?1 IS NULL OR job_id = ?1) ORDER BY id",
            [job_id],
            "read active runs",
        )
    }

    /// Runs that ended badly (failed, timed out) and whose alert is not queued yet (see
    /// [`StateStore::mark_runs_alerted`]); runs that ended otherwise are marked alerted on the way,
    /// in SQL, so a long history never passes through memory.
    pub fn ended_runs_not_alerted(&self) -> Result<Vec<RunRecord>, StateError> {
        self.connection
            .execute(
                "UPDATE runs SET alerted = 1 WHERE alerted = 0
                 AND status NOT IN ('submitting', 'running', 'failed', 'timed_out')",
                [],
            )
            .map_err(sqlite(&self.path, "mark runs alerted"))?;
        self.select_runs(
            "alerted = 0 AND status IN ('failed', 'timed_out') ORDER BY id LIMIT 1000",
            [],
            "read runs to alert",
        )
    }

    /// Queues the alerts of ended runs and marks `runs` alerted, in one transaction: a run's
    /// alert is queued once, whatever process or pass sees it end.
    pub fn mark_runs_alerted(
        &self,
        events: &[(String, super::QueuedEvent<'_>)],
        runs: &[i64],
    ) -> Result<(), StateError> {
        self.queue_events_with(events, "queue batch run alerts", |tx| {
            for id in runs {
                tx.execute("UPDATE runs SET alerted = 1 WHERE id = ?1", [id])?;
            }
            Ok(())
        })
    }

    /// How many runs one spec revision of a job has made (what `max_runs` limits).
    pub fn count_runs_of_revision(
        &self,
        job_id: &str,
        spec_commit: &str,
        spec_hash: &str,
    ) -> Result<u32, StateError> {
        self.connection
            .query_row(
                "SELECT COUNT(*) FROM runs WHERE job_id = ?1 AND spec_commit = ?2 AND spec_hash = ?3",
                [job_id, spec_commit, spec_hash],
                |row| row.get(0),
            )
            .map_err(sqlite(&self.path, "count runs"))
    }

    /// Whether a run with this Flink job id is recorded.
    pub fn run_known(&self, flink_job_id: &str) -> Result<bool, StateError> {
        self.connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE flink_job_id = ?1)",
                [flink_job_id],
                |row| row.get(0),
            )
            .map_err(sqlite(&self.path, "find run"))
    }

    /// How many runs are recorded in each status.
    pub fn run_status_counts(&self) -> Result<Vec<(String, i64)>, StateError> {
        let mut statement = self
            .connection
            .prepare("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
            .map_err(sqlite(&self.path, "count runs"))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sqlite(&self.path, "count runs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "count runs"))
    }

    /// Where the job's cron schedule stands.
    pub fn schedule_cursor(&self, job_id: &str) -> Result<Option<ScheduleCursor>, StateError> {
        self.connection
            .query_row(
                "SELECT cron, timezone, cursor_ms FROM batch_schedules WHERE job_id = ?1",
                [job_id],
                |row| {
                    Ok(ScheduleCursor {
                        cron: row.get(0)?,
                        timezone: row.get(1)?,
                        cursor_ms: row.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(sqlite(&self.path, "read schedule"))
    }

    /// Moves the job's cron schedule forward.
    pub fn set_schedule_cursor(
        &self,
        job_id: &str,
        cursor: &ScheduleCursor,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "INSERT INTO batch_schedules (job_id, cron, timezone, cursor_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(job_id) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, cursor_ms = excluded.cursor_ms",
                params![job_id, cursor.cron, cursor.timezone, cursor.cursor_ms],
            )
            .map_err(sqlite(&self.path, "write schedule"))?;
        Ok(())
    }

    /// Forgets the job's cron schedule (its spec was deleted or lost its cron).
    pub fn remove_schedule_cursor(&self, job_id: &str) -> Result<(), StateError> {
        self.connection
            .execute("DELETE FROM batch_schedules WHERE job_id = ?1", [job_id])
            .map_err(sqlite(&self.path, "delete schedule"))?;
        Ok(())
    }
}
