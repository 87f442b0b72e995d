//! `flink-gitops history`: deployments and batch runs from SQLite, with the revision and its signer.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

use super::{EXIT_OK, Failure, OutputFormat, load_config, usage};
use crate::state::{AuditAction, RunRecord, StateStore};

/// Audit actions that changed what runs on the cluster (uploads, health probes and stops are steps of these).
const DEPLOYMENT_ACTIONS: &[AuditAction] = &[
    AuditAction::Promote,
    AuditAction::Rollback,
    AuditAction::RollbackByRevert,
    AuditAction::Suspend,
    AuditAction::Delete,
    AuditAction::Adopt,
    AuditAction::Update,
    AuditAction::Schedule,
    AuditAction::Blocked,
    AuditAction::Retry,
    AuditAction::RevisionRollback,
];

/// One line of history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// When it happened (RFC 3339, UTC).
    pub at: String,
    /// The spec's job id.
    pub job_id: String,
    /// `deployment` or `run`.
    pub kind: &'static str,
    /// `jar`, `sql` or `python`: what the job runs (as last deployed).
    pub job_kind: &'static str,
    /// What was done: `promote`, `rollback`, `suspend`... or the run's trigger.
    pub action: String,
    /// How it ended.
    pub result: String,
    /// The revision applied or run.
    pub revision: Option<String>,
    /// The principal that signed that revision.
    pub signer: Option<String>,
    /// The Flink job.
    pub flink_job_id: Option<String>,
    /// The savepoint taken or restored.
    pub savepoint: Option<String>,
    /// Duration, schedule, root cause.
    pub detail: Option<String>,
}

fn millis_rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn field(detail: &serde_json::Value, key: &str) -> Option<String> {
    detail[key].as_str().map(str::to_string)
}

fn parse(detail: Option<&str>) -> serde_json::Value {
    detail
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default()
}

/// An operation's outcome, with its intent's detail (which may lie before a `--since` window).
struct DeploymentRow {
    at: String,
    job_id: String,
    action: String,
    result: Option<String>,
    commit_id: Option<String>,
    detail: Option<String>,
    intent_detail: Option<String>,
}

fn deployment_entry(row: DeploymentRow) -> HistoryEntry {
    let before = parse(row.intent_detail.as_deref());
    let after = parse(row.detail.as_deref());
    if row.action == AuditAction::RevisionRollback.as_str() {
        let list = |key: &str| {
            after[key]
                .as_array()
                .map(|jobs| {
                    jobs.iter()
                        .filter_map(|j| j.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|jobs| !jobs.is_empty())
        };
        let mut detail = field(&before, "reason").unwrap_or_default();
        for (key, label) in [
            ("rolled_back", "rolled back with it"),
            ("skipped", "nothing to undo"),
            ("blocked", "blocked"),
        ] {
            if let Some(jobs) = list(key) {
                detail.push_str(&format!("; {label}: {jobs}"));
            }
        }
        return HistoryEntry {
            at: row.at,
            job_id: row.job_id,
            kind: "deployment",
            job_kind: "jar",
            action: row.action,
            result: row.result.unwrap_or_default(),
            revision: row.commit_id,
            signer: None,
            flink_job_id: None,
            savepoint: None,
            detail: Some(detail),
        };
    }
    HistoryEntry {
        detail: field(&before, "reason")
            .or_else(|| field(&before, "by").map(|by| format!("requested by {by}")))
            .or_else(|| field(&before, "to_commit").map(|c| format!("to commit {c}")))
            .or_else(|| {
                // A rollback promotes an older commit's spec while the head is the failed one.
                field(&before, "commit")
                    .filter(|c| Some(c) != row.commit_id.as_ref())
                    .map(|c| format!("runs the spec of commit {c}"))
            }),
        at: row.at,
        job_id: row.job_id,
        kind: "deployment",
        job_kind: "jar",
        action: row.action,
        result: row.result.unwrap_or_default(),
        revision: row.commit_id,
        signer: None,
        flink_job_id: field(&before, "flink_job_id").or_else(|| field(&after, "flink_job_id")),
        savepoint: field(&before, "savepoint")
            .or_else(|| field(&after, "savepoint"))
            .or_else(|| field(&before, "from_savepoint")),
    }
}

fn run_entry(run: &RunRecord) -> HistoryEntry {
    let mut detail = Vec::new();
    if let Some(at) = &run.scheduled_for {
        detail.push(format!("scheduled for {at}"));
    }
    if let Some(ended) = run.ended_at_ms {
        detail.push(format!(
            "took {:.1} s",
            (ended - run.submitted_at_ms) as f64 / 1000.0
        ));
    }
    if let Some(cause) = &run.root_cause {
        detail.push(cause.clone());
    }
    HistoryEntry {
        at: millis_rfc3339(run.submitted_at_ms),
        job_id: run.job_id.clone(),
        kind: "run",
        job_kind: "jar",
        action: format!("run ({})", run.trigger),
        result: run.status.as_str().to_string(),
        revision: Some(run.commit_id.clone()),
        signer: None,
        flink_job_id: Some(run.flink_job_id.clone()),
        savepoint: None,
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
    }
}

/// Calls `each` with every deployment and run recorded from `since` on, oldest first; of one job
/// when `job_id` is given. The audit log and the runs are read in one merged pass of two ordered
/// queries, so memory stays flat however many rows there are.
pub fn for_each(
    store: &StateStore,
    job_id: Option<&str>,
    since: Option<DateTime<chrono::Utc>>,
    mut each: impl FnMut(HistoryEntry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let audit_since = since
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    let runs_since = since.map_or(i64::MIN, |t| t.timestamp_millis());
    let actions = DEPLOYMENT_ACTIONS
        .iter()
        .map(|a| format!("'{}'", a.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let connection = store.connection();
    let mut deployments = connection.prepare(&format!(
        // A revision rollback concerns several jobs: it is listed under the job whose failure
        // started it, and shown for each job it rolled back.
        "SELECT o.at, COALESCE(o.job_id, json_extract(i.detail, '$.failed_job')), o.action, o.result,
                o.commit_id, o.detail, i.detail
         FROM audit_log o LEFT JOIN audit_log i ON i.id = o.intent_id
         WHERE o.phase = 'outcome' AND o.action IN ({actions})
           AND (o.job_id IS NOT NULL OR o.action = 'revision-rollback')
           AND o.at >= ?1
           AND (?2 IS NULL OR o.job_id = ?2
                OR (o.job_id IS NULL AND (json_extract(i.detail, '$.failed_job') = ?2
                    OR EXISTS (SELECT 1 FROM json_each(o.detail, '$.rolled_back') WHERE value = ?2))))
         ORDER BY o.id"
    ))?;
    let mut deployments = deployments
        .query_map(rusqlite::params![audit_since, job_id], |row| {
            Ok(DeploymentRow {
                at: row.get(0)?,
                job_id: row.get(1)?,
                action: row.get(2)?,
                result: row.get(3)?,
                commit_id: row.get(4)?,
                detail: row.get(5)?,
                intent_detail: row.get(6)?,
            })
        })?
        .map(|row| row.map(deployment_entry))
        .peekable();
    let mut runs = connection.prepare(&format!(
        "SELECT {} FROM runs WHERE (?1 IS NULL OR job_id = ?1) AND submitted_at_ms >= ?2
         ORDER BY submitted_at_ms, id",
        crate::state::runs::RUN_COLUMNS
    ))?;
    let mut runs = runs
        .query_map(
            rusqlite::params![job_id, runs_since],
            crate::state::runs::run_from_row,
        )?
        .map(|row| row.map(|run| run_entry(&run)))
        .peekable();
    // Per job its kind, per revision its signer: as many as there are jobs and revisions.
    let mut signers: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut kinds: BTreeMap<String, &'static str> = BTreeMap::new();
    loop {
        // The older first; a deployment before a run at the same instant.
        let take_deployment = match (deployments.peek(), runs.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
            (Some(Ok(d)), Some(Ok(r))) => d.at <= r.at,
        };
        let next = if take_deployment {
            deployments.next()
        } else {
            runs.next()
        };
        let Some(entry) = next else { break };
        let mut entry = entry?;
        if !kinds.contains_key(&entry.job_id) {
            let kind = store
                .job(&entry.job_id)?
                .map_or("jar", |r| r.job_kind().as_str());
            kinds.insert(entry.job_id.clone(), kind);
        }
        entry.job_kind = kinds.get(&entry.job_id).copied().unwrap_or("jar");
        if let Some(commit) = &entry.revision {
            if !signers.contains_key(commit) {
                let signer = store.revision(commit)?.and_then(|r| r.signer);
                signers.insert(commit.clone(), signer);
            }
            entry.signer = signers.get(commit).cloned().flatten();
        }
        each(entry)?;
    }
    Ok(())
}

/// The table's header line.
pub fn print_header() {
    outln!(
        "{:<24} {:<24} {:<10} {:<20} {:<11} {:<12} {:<24} {:<32} DETAIL",
        "TIME",
        "JOB",
        "KIND",
        "ACTION",
        "RESULT",
        "REVISION",
        "SIGNER",
        "FLINK JOB"
    );
}

/// Prints one entry as a line of the table.
pub fn print_entry(e: &HistoryEntry) {
    let dash = || "-".to_string();
    let detail = match (&e.savepoint, &e.detail) {
        (Some(s), Some(d)) => format!("savepoint {s}; {d}"),
        (Some(s), None) => format!("savepoint {s}"),
        (None, Some(d)) => d.clone(),
        (None, None) => String::new(),
    };
    outln!(
        "{:<24} {:<24} {:<10} {:<20} {:<11} {:<12} {:<24} {:<32} {}",
        e.at,
        if e.job_kind == "jar" {
            e.job_id.clone()
        } else {
            format!("{} [{}]", e.job_id, e.job_kind)
        },
        e.kind,
        e.action,
        e.result,
        e.revision
            .as_deref()
            .map(|r| crate::spec::source::short_id(r).to_string())
            .unwrap_or_else(dash),
        e.signer.clone().unwrap_or_else(dash),
        e.flink_job_id.clone().unwrap_or_else(dash),
        detail
    );
}

pub(super) fn run(
    config_path: &std::path::Path,
    job: Option<&str>,
    since: Option<&str>,
    limit: Option<usize>,
    format: OutputFormat,
) -> Result<u8, Failure> {
    let since = since
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&chrono::Utc))
                .or_else(|_| {
                    crate::util::parse_duration(text)
                        .ok()
                        .and_then(|ago| chrono::Duration::from_std(ago).ok())
                        .map(|ago| chrono::Utc::now() - ago)
                        .ok_or(())
                })
                .map_err(|()| {
                    usage(anyhow::anyhow!(
                        "--since `{text}`: give an RFC 3339 time (2026-11-01T00:00:00Z) or how long ago (7d, 12h)"
                    ))
                })
        })
        .transpose()?;
    let config = load_config(config_path)?;
    let store = StateStore::open_read_only(&config.state.dir)?;
    // Streamed as read: a JSON array written entry by entry, or table lines. With `--limit`
    // only the newest `limit` entries are kept on the way.
    let mut printed = 0usize;
    let mut print = |entry: &HistoryEntry| -> anyhow::Result<()> {
        match format {
            OutputFormat::Json => {
                let separator = if printed == 0 { "[\n  " } else { ",\n  " };
                out!("{separator}{}", serde_json::to_string(entry)?);
            }
            OutputFormat::Text => {
                if printed == 0 {
                    print_header();
                }
                print_entry(entry);
            }
        }
        printed += 1;
        Ok(())
    };
    if let Some(store) = &store {
        match limit {
            None => for_each(store, job, since, |entry| print(&entry))?,
            Some(limit) => {
                let mut newest = std::collections::VecDeque::with_capacity(limit.min(100_000));
                for_each(store, job, since, |entry| {
                    if newest.len() == limit {
                        newest.pop_front();
                    }
                    if limit > 0 {
                        newest.push_back(entry);
                    }
                    Ok(())
                })?;
                for entry in &newest {
                    print(entry)?;
                }
            }
        }
    }
    match (format, printed) {
        (OutputFormat::Json, 0) => outln!("[]"),
        (OutputFormat::Json, _) => outln!("\n]"),
        (OutputFormat::Text, 0) => outln!("no deployments or runs recorded"),
        (OutputFormat::Text, _) => {}
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RunStatus;

    fn run(job_id: &str, n: i64, submitted_at_ms: i64) -> RunRecord {
        RunRecord {
            id: 0,
            job_id: job_id.into(),
            flink_job_id: format!("{n:032x}"),
            commit_id: "c0ffee".into(),
            spec_commit: "c0ffee".into(),
            spec_hash: "h".into(),
            jar_sha256: "j".into(),
            trigger: "cron".into(),
            scheduled_for: None,
            status: RunStatus::Finished,
            submitted_at_ms,
            deadline_ms: None,
            ended_at_ms: Some(submitted_at_ms + 1_000),
            flink_state: Some("FINISHED".into()),
            root_cause: None,
        }
    }

    #[test]
    fn deployments_and_runs_come_merged_oldest_first_and_filtered_by_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        // Runs an hour, and a minute, ago; a deployment now; a run of another job in between.
        store
            .insert_run(&run("report", 1, now - 3_600_000))
            .unwrap();
        store.insert_run(&run("other", 2, now - 1_800_000)).unwrap();
        store.insert_run(&run("report", 3, now - 60_000)).unwrap();
        let intent = store
            .audit_intent(Some("c0ffee"), Some("report"), AuditAction::Promote, "{}")
            .unwrap();
        store
            .audit_outcome(intent, "ok", r#"{"flink_job_id":"abc"}"#)
            .unwrap();
        let collect = |job: Option<&str>, since: Option<DateTime<chrono::Utc>>| {
            let mut seen = Vec::new();
            for_each(&store, job, since, |e| {
                seen.push(format!("{} {}", e.job_id, e.kind));
                Ok(())
            })
            .unwrap();
            seen
        };
        assert_eq!(
            collect(None, None),
            ["report run", "other run", "report run", "report deployment"]
        );
        assert_eq!(
            collect(Some("report"), None),
            ["report run", "report run", "report deployment"]
        );
        // A revision rollback is one entry, under the job that failed, shown for each job it
        // took back, and for no other.
        let revision = store
            .atomically(|s| {
                s.start_revision_rollback(
                    "c0ffee",
                    "sink",
                    "sink failed: unhealthy",
                    &["enrich".into(), "report".into(), "sink".into()],
                )
            })
            .unwrap()
            .unwrap();
        store
            .finish_revision_rollback(
                "c0ffee",
                "ok",
                r#"{"rolled_back":["enrich","report"],"skipped":[],"blocked":[]}"#,
            )
            .unwrap();
        let mut rollbacks = Vec::new();
        for_each(&store, None, None, |e| {
            if e.action == "revision-rollback" {
                rollbacks.push(e);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(rollbacks.len(), 1, "intent {revision}");
        assert_eq!(rollbacks[0].job_id, "sink");
        assert_eq!(
            rollbacks[0].detail.as_deref(),
            Some("sink failed: unhealthy; rolled back with it: enrich, report")
        );
        for job in ["sink", "enrich", "report"] {
            assert!(
                collect(Some(job), None).contains(&"sink deployment".to_string()),
                "{job}"
            );
        }
        assert!(!collect(Some("other"), None).contains(&"sink deployment".to_string()));
        let ten_minutes_ago = chrono::Utc::now() - chrono::Duration::minutes(10);
        assert_eq!(
            collect(Some("report"), Some(ten_minutes_ago)),
            ["report run", "report deployment", "sink deployment"]
        );
    }
}
