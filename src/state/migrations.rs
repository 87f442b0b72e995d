//! Append-only schema migrations keyed by `PRAGMA user_version`; never edit one once released.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StateError;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, revisions, the audit log and a key/value table.
    "CREATE TABLE jobs (
        job_id         TEXT PRIMARY KEY,
        spec_json      TEXT NOT NULL,
        spec_hash      TEXT NOT NULL,
        commit_id      TEXT NOT NULL,
        flink_job_id   TEXT,
        generation     INTEGER NOT NULL DEFAULT 0,
        jar_id         TEXT,
        jar_sha256     TEXT,
        last_savepoint TEXT,
        status         TEXT NOT NULL,
        updated_at     TEXT NOT NULL
    );
    CREATE TABLE revisions (
        commit_id     TEXT PRIMARY KEY,
        first_seen_at TEXT NOT NULL,
        verified_at   TEXT,
        signer        TEXT,
        applied_at    TEXT,
        outcome       TEXT,
        detail        TEXT
    );
    CREATE TABLE audit_log (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        TEXT NOT NULL,
        commit_id TEXT,
        job_id    TEXT,
        action    TEXT NOT NULL,
        phase     TEXT NOT NULL CHECK (phase IN ('intent', 'outcome')),
        intent_id INTEGER REFERENCES audit_log(id),
        result    TEXT,
        detail    TEXT,
        CHECK ((phase = 'intent') = (intent_id IS NULL))
    );
    CREATE INDEX audit_log_by_job ON audit_log(job_id, id);
    CREATE UNIQUE INDEX audit_log_one_outcome ON audit_log(intent_id) WHERE intent_id IS NOT NULL;
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // 2: what is being deployed (pending), how to redeploy the last good spec, uploaded JARs, failed
    // attempts (read once by migration 4, which replaced them with the rejected spec hash).
    "ALTER TABLE jobs ADD COLUMN deployment_json TEXT;
    ALTER TABLE jobs ADD COLUMN pending_json TEXT;
    CREATE TABLE jars (
        sha256      TEXT PRIMARY KEY,
        jar_id      TEXT NOT NULL,
        uploaded_at TEXT NOT NULL
    );
    CREATE TABLE failed_attempts (
        job_id    TEXT NOT NULL,
        commit_id TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        reason    TEXT NOT NULL,
        at        TEXT NOT NULL,
        PRIMARY KEY (job_id, commit_id)
    );",
    // 3: batch runs and where each batch schedule stands.
    "CREATE TABLE runs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id          TEXT NOT NULL,
        flink_job_id    TEXT NOT NULL UNIQUE,
        commit_id       TEXT NOT NULL,
        spec_commit     TEXT NOT NULL,
        spec_hash       TEXT NOT NULL,
        jar_sha256      TEXT NOT NULL,
        trigger         TEXT NOT NULL,
        scheduled_for   TEXT,
        status          TEXT NOT NULL,
        submitted_at_ms INTEGER NOT NULL,
        deadline_ms     INTEGER,
        ended_at_ms     INTEGER,
        flink_state     TEXT,
        root_cause      TEXT
    );
    CREATE INDEX runs_by_job ON runs(job_id, id);
    CREATE INDEX runs_by_status ON runs(status);
    CREATE INDEX runs_by_revision ON runs(job_id, spec_commit, spec_hash);
    CREATE TABLE batch_schedules (
        job_id    TEXT PRIMARY KEY,
        cron      TEXT NOT NULL,
        timezone  TEXT NOT NULL,
        cursor_ms INTEGER NOT NULL
    );",
    // 4: the explicit lifecycle (phase per job, error policy counters), restore points the agent
    // knows of, and operator requests (`retry`). Failed attempts become the rejected spec hash.
    "ALTER TABLE jobs ADD COLUMN phase TEXT NOT NULL DEFAULT 'steady'
        CHECK (phase IN ('steady', 'stopping', 'stopped', 'submitted', 'verifying', 'blocked'));
    ALTER TABLE jobs ADD COLUMN phase_json TEXT;
    ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN permanent_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN retry_at_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN last_error TEXT;
    ALTER TABLE jobs ADD COLUMN rejected_spec_hash TEXT;
    UPDATE jobs SET rejected_spec_hash = (
        SELECT f.spec_hash FROM failed_attempts f WHERE f.job_id = jobs.job_id ORDER BY f.at DESC LIMIT 1
    ) WHERE rejected_spec_hash IS NULL;
    CREATE TABLE restore_points (
        job_id       TEXT NOT NULL,
        path         TEXT NOT NULL,
        savepoint    INTEGER NOT NULL CHECK (savepoint IN (0, 1)),
        flink_job_id TEXT,
        taken_at_ms  INTEGER NOT NULL,
        recorded_at  TEXT NOT NULL,
        unusable     TEXT,
        PRIMARY KEY (job_id, path)
    );
    CREATE TABLE requests (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      TEXT NOT NULL,
        job_id  TEXT NOT NULL,
        kind    TEXT NOT NULL CHECK (kind IN ('retry', 'retry-start-empty')),
        by      TEXT NOT NULL,
        done_at TEXT
    );",
    // 5: what each savepoint was taken for and the revision the job ran, so retention and
    // reverts can tell them apart.
    "ALTER TABLE restore_points ADD COLUMN kind TEXT;
    ALTER TABLE restore_points ADD COLUMN commit_id TEXT;",
    // 6: alerts: events waiting to reach their targets (one row per event, one per target).
    "CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         TEXT NOT NULL,
        event      TEXT NOT NULL,
        job_id     TEXT,
        dedupe_key TEXT NOT NULL UNIQUE,
        body       TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        event_id     INTEGER NOT NULL REFERENCES outbox(id),
        target       TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at_ms   INTEGER NOT NULL,
        delivered_at TEXT,
        last_error   TEXT,
        PRIMARY KEY (event_id, target)
    );",
    // 7: conditions alerts are about (one alert until it clears, then a "resolved"), and when
    // each delivery arrived, for per-target rate limits.
    "CREATE TABLE alert_conditions (
        key       TEXT PRIMARY KEY,
        job_id    TEXT,
        since_ms  INTEGER NOT NULL,
        raised    INTEGER NOT NULL DEFAULT 0
    );
    ALTER TABLE deliveries ADD COLUMN delivered_ms INTEGER;",
    // 8: the audit row up to which operations' events are queued. What was done before alerts
    // derived from the audit log is history, not news.
    // Likewise, every batch run that ended is marked once its alert (if any) is queued.
    "INSERT OR REPLACE INTO meta (key, value)
        SELECT 'alerts_audit_cursor', CAST(COALESCE(MAX(id), 0) AS TEXT) FROM audit_log;
    ALTER TABLE runs ADD COLUMN alerted INTEGER NOT NULL DEFAULT 0;
    UPDATE runs SET alerted = 1 WHERE status NOT IN ('submitting', 'running');
    CREATE INDEX runs_not_alerted ON runs(id) WHERE alerted = 0;",
    // 9: what each revision changed per job (to undo it), and revision rollbacks
    // (`rollback: revision`) with the progress of each job's step.
    "CREATE TABLE revision_changes (
        commit_id                TEXT NOT NULL,
        job_id                   TEXT NOT NULL,
        kind                     TEXT NOT NULL CHECK (kind IN ('create', 'upgrade', 'resume')),
        spec_hash                TEXT NOT NULL,
        flink_job_id             TEXT NOT NULL,
        previous_flink_job_id    TEXT,
        previous_deployment_json TEXT,
        previous_commit          TEXT,
        restored_from            TEXT,
        rollback_state           TEXT CHECK (rollback_state IN ('pending', 'begun', 'skipped')),
        applied_at               TEXT NOT NULL,
        PRIMARY KEY (commit_id, job_id)
    );
    CREATE TABLE revision_rollbacks (
        commit_id      TEXT PRIMARY KEY,
        trigger_job_id TEXT NOT NULL,
        reason         TEXT NOT NULL,
        audit_intent   INTEGER NOT NULL REFERENCES audit_log(id),
        started_at     TEXT NOT NULL,
        finished_at    TEXT
    );",
    // 10: loaded specs by the blob id of their file (see spec::memo): derived data, safe to drop.
    "CREATE TABLE spec_memo (
        key               TEXT PRIMARY KEY,
        spec_json         TEXT NOT NULL,
        artifact_content  TEXT NOT NULL,
        program_json      TEXT,
        observations_json TEXT NOT NULL
    );",
    // 11: a job's documents (its recorded deployment, and while a change is made the lifecycle
    // phase's data and the legacy pending deployment) in a table of their own, with a flag in the
    // job's row for each of the latter two. They were two thirds of a row, more while a job
    // changed, and SQLite leaves a page as it was when a row shrinks: after the first `apply` of
    // 1,000 jobs each row had a 4 KiB page to itself, and `plan` or `status` read 1,000 pages to
    // list the jobs. The rows are copied into a new table, packed.
    "CREATE TABLE job_documents (
        job_id          TEXT PRIMARY KEY,
        deployment_json TEXT,
        pending_json    TEXT,
        phase_json      TEXT,
        CHECK (COALESCE(deployment_json, pending_json, phase_json) IS NOT NULL)
    );
    INSERT INTO job_documents (job_id, deployment_json, pending_json, phase_json)
        SELECT job_id, deployment_json, pending_json, phase_json FROM jobs
        WHERE COALESCE(deployment_json, pending_json, phase_json) IS NOT NULL;
    CREATE TABLE jobs_packed (
        job_id             TEXT PRIMARY KEY,
        spec_json          TEXT NOT NULL,
        spec_hash          TEXT NOT NULL,
        commit_id          TEXT NOT NULL,
        flink_job_id       TEXT,
        generation         INTEGER NOT NULL DEFAULT 0,
        jar_id             TEXT,
        jar_sha256         TEXT,
        last_savepoint     TEXT,
        status             TEXT NOT NULL,
        updated_at         TEXT NOT NULL,
        has_pending        INTEGER NOT NULL DEFAULT 0 CHECK (has_pending IN (0, 1)),
        phase              TEXT NOT NULL DEFAULT 'steady'
            CHECK (phase IN ('steady', 'stopping', 'stopped', 'submitted', 'verifying', 'blocked')),
        has_phase_json     INTEGER NOT NULL DEFAULT 0 CHECK (has_phase_json IN (0, 1)),
        failures           INTEGER NOT NULL DEFAULT 0,
        permanent_failures INTEGER NOT NULL DEFAULT 0,
        retry_at_ms        INTEGER,
        last_error         TEXT,
        rejected_spec_hash TEXT
    );
    INSERT INTO jobs_packed
        SELECT job_id, spec_json, spec_hash, commit_id, flink_job_id, generation, jar_id, jar_sha256,
               last_savepoint, status, updated_at, pending_json IS NOT NULL, phase,
               phase_json IS NOT NULL, failures, permanent_failures, retry_at_ms, last_error,
               rejected_spec_hash
        FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_packed RENAME TO jobs;",
    // 12: the spec memo keeps each spec's hash, so a plan compares a thousand unchanged jobs with
    // their records by hash. Derived data: the old entries go.
    "DROP TABLE spec_memo;
    CREATE TABLE spec_memo (
        key               TEXT PRIMARY KEY,
        spec_json         TEXT NOT NULL,
        spec_hash         TEXT NOT NULL,
        artifact_content  TEXT NOT NULL,
        program_json      TEXT,
        observations_json TEXT NOT NULL
    );",
    // 13: the intents without an outcome, kept by the database itself as the log is written. A
    // pass found them by scanning the whole audit log, which only grows: 3 ms of a no-op `apply`
    // over 1,000 jobs once 8,000 entries were written, and more with every pass that acts.
    "CREATE TABLE open_intents (
        intent_id INTEGER PRIMARY KEY REFERENCES audit_log(id)
    );
    INSERT INTO open_intents (intent_id)
        SELECT id FROM audit_log AS intent
        WHERE phase = 'intent'
          AND NOT EXISTS (SELECT 1 FROM audit_log AS outcome WHERE outcome.intent_id = intent.id);
    CREATE TRIGGER audit_log_intent_opens AFTER INSERT ON audit_log WHEN NEW.phase = 'intent'
        BEGIN INSERT INTO open_intents (intent_id) VALUES (NEW.id); END;
    CREATE TRIGGER audit_log_outcome_closes AFTER INSERT ON audit_log WHEN NEW.phase = 'outcome'
        BEGIN DELETE FROM open_intents WHERE intent_id = NEW.intent_id; END;",
];

/// The schema version this binary writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`LATEST`] in one exclusive transaction.
pub fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StateError> {
    let failed = |operation: &'static str| {
        move |source| StateError::Sqlite {
            path: path.to_path_buf(),
            operation,
            source,
        }
    };
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Exclusive)
        .map_err(failed("begin migration"))?;
    let found: i64 = transaction
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(failed("read schema version"))?;
    if found > LATEST {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: LATEST,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        transaction
            .execute_batch(sql)
            .map_err(failed("apply migration"))?;
        transaction
            .pragma_update(None, "user_version", index as i64 + 1)
            .map_err(failed("set schema version"))?;
    }
    transaction.commit().map_err(failed("commit migration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{JobRecord, StateStore};

    fn pages_of(connection: &Connection, table: &str) -> i64 {
        connection
            .query_row(
                "SELECT count(*) FROM dbstat WHERE name = ?1",
                [table],
                |row| row.get(0),
            )
            .unwrap()
    }

    #[test]
    fn job_documents_move_beside_the_jobs_and_the_jobs_are_packed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut connection = Connection::open(&path).unwrap();
        // A database as version 10 left it: 200 jobs with documents of the size the agent records,
        // a deployment for every other one, a pending one for every third, every fifth changing.
        let transaction = connection.transaction().unwrap();
        for sql in &MIGRATIONS[..10] {
            transaction.execute_batch(sql).unwrap();
        }
        transaction.pragma_update(None, "user_version", 10).unwrap();
        let document =
            |kind: &str, n: usize| format!("{{\"{kind}\":{n},\"pad\":\"{}\"}}", "d".repeat(1700));
        for n in 0..200 {
            transaction
                .execute(
                    "INSERT INTO jobs (job_id, spec_json, spec_hash, commit_id, status, updated_at,
                                       deployment_json, pending_json, phase, phase_json, failures)
                     VALUES (?1, ?2, 'h', 'c1', 'running', 't', ?3, ?4, ?5, ?6, ?7)",
                    rusqlite::params![
                        format!("job-{n:03}"),
                        "s".repeat(600),
                        (n % 2 == 0).then(|| document("deployed", n)),
                        (n % 3 == 0).then(|| document("pending", n)),
                        if n % 5 == 0 { "verifying" } else { "steady" },
                        (n % 5 == 0).then(|| document("phase", n)),
                        n as i64
                    ],
                )
                .unwrap();
        }
        transaction.commit().unwrap();
        let before = pages_of(&connection, "jobs");
        drop(connection);

        let store = StateStore::open_exclusive(dir.path()).unwrap();
        let jobs = store.jobs().unwrap();
        assert_eq!(jobs.len(), 200);
        for (n, job) in jobs.iter().enumerate() {
            assert_eq!(job.job_id, format!("job-{n:03}"));
            assert_eq!(job.spec_json, "s".repeat(600));
            assert_eq!(
                (job.phase_name(), job.phase_json.clone()),
                if n % 5 == 0 {
                    ("verifying", Some(document("phase", n)))
                } else {
                    ("steady", None)
                }
            );
            assert_eq!(job.failures, n as i64);
            assert_eq!(
                job.deployment_json,
                (n % 2 == 0).then(|| document("deployed", n))
            );
            assert_eq!(
                job.pending_json,
                (n % 3 == 0).then(|| document("pending", n))
            );
            assert_eq!(store.job(&job.job_id).unwrap().as_ref(), Some(job));
        }
        // Listed without deployments, a job still shows the change being made.
        let listed = store.jobs_without_deployments().unwrap();
        let expected: Vec<JobRecord> = jobs
            .iter()
            .map(|job| JobRecord {
                deployment_json: None,
                spec_json: String::new(),
                spec_json_left_out: true,
                ..job.clone()
            })
            .collect();
        assert_eq!(listed, expected);
        // Written again with one document fewer, and with none.
        let mut changed = jobs[0].clone();
        changed.pending_json = None;
        store.put_job(&changed).unwrap();
        let mut emptied = jobs[30].clone();
        emptied.deployment_json = None;
        emptied.pending_json = None;
        emptied.phase = "steady".into();
        emptied.phase_json = None;
        store.put_job(&emptied).unwrap();
        let read = |id: &str| {
            let mut job = store.job(id).unwrap().unwrap();
            job.updated_at = String::new();
            job
        };
        let unstamped = |mut job: JobRecord| {
            job.updated_at = String::new();
            job
        };
        assert_eq!(read("job-000"), unstamped(changed));
        assert_eq!(read("job-030"), unstamped(emptied));
        drop(store);

        let connection = Connection::open(&path).unwrap();
        let after = pages_of(&connection, "jobs");
        assert!(
            after * 3 < before,
            "the jobs table kept {after} of its {before} pages"
        );
        assert!(
            connection
                .prepare("SELECT deployment_json FROM jobs")
                .is_err()
        );
        let documents: i64 = connection
            .query_row("SELECT count(*) FROM job_documents", [], |row| row.get(0))
            .unwrap();
        // Those with any of 100 deployed, 67 pending, 40 changing; job-030 lost all three.
        let with_any = (0..200)
            .filter(|n| n % 2 == 0 || n % 3 == 0 || n % 5 == 0)
            .count();
        assert_eq!(documents, with_any as i64 - 1);
    }

    #[test]
    fn open_intents_are_those_of_the_log_without_an_outcome_and_follow_it() {
        use crate::state::AuditAction;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut connection = Connection::open(&path).unwrap();
        // A log as version 12 left it: 300 intents, every third still without its outcome.
        let transaction = connection.transaction().unwrap();
        for sql in &MIGRATIONS[..12] {
            transaction.execute_batch(sql).unwrap();
        }
        transaction.pragma_update(None, "user_version", 12).unwrap();
        let mut open_before = Vec::new();
        for n in 0..300 {
            transaction
                .execute(
                    "INSERT INTO audit_log (at, job_id, action, phase, detail)
                     VALUES ('t', ?1, 'upgrade', 'intent', '{}')",
                    [format!("job-{n}")],
                )
                .unwrap();
            let intent = transaction.last_insert_rowid();
            if n % 3 == 0 {
                open_before.push(intent);
            } else {
                transaction
                    .execute(
                        "INSERT INTO audit_log (at, job_id, action, phase, intent_id, result)
                         VALUES ('t', ?1, 'upgrade', 'outcome', ?2, 'ok')",
                        rusqlite::params![format!("job-{n}"), intent],
                    )
                    .unwrap();
            }
        }
        transaction.commit().unwrap();
        drop(connection);

        let store = StateStore::open_exclusive(dir.path()).unwrap();
        let open = |store: &StateStore| -> Vec<i64> {
            store.open_intents().unwrap().iter().map(|e| e.id).collect()
        };
        assert_eq!(open(&store), open_before);
        let closed = open_before[7];
        store.audit_outcome(closed, "interrupted", "{}").unwrap();
        let new = store
            .audit_intent(Some("c2"), Some("job-1"), AuditAction::Upgrade, "{}")
            .unwrap();
        let mut expected: Vec<i64> = open_before
            .iter()
            .copied()
            .filter(|&i| i != closed)
            .collect();
        expected.push(new);
        assert_eq!(open(&store), expected);
        // An outcome for an id that is not an intent writes nothing, and closes nothing.
        store.audit_outcome(new + 1000, "ok", "{}").unwrap();
        assert_eq!(open(&store), expected);
        assert_eq!(store.audit_log().unwrap().len(), 300 + 200 + 2);
    }
}
