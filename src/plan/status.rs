//! Where desired (git), observed (Flink) and recorded (SQLite) state meet for `status` and
//! `/api/v1/status`: one row per job known to any of them.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::flink::JobOverview;
use crate::spec::DesiredState;
use crate::state::{JobRecord, RunRecord, SavepointTaken};

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// The spec's job id.
    pub job_id: String,
    /// `jar`, `sql` or `python` (as desired, else as last deployed).
    pub kind: Option<crate::spec::JobKind>,
    /// The revision whose spec is desired (the verified branch head), if the spec exists there.
    pub desired_commit: Option<String>,
    /// The revision last applied.
    pub applied_commit: Option<String>,
    /// What the agent recorded (`running`, `scheduled`, `suspended`, `deleted`...).
    pub recorded_status: Option<String>,
    /// Batch jobs: the newest run (status, Flink job id, when it was submitted).
    pub last_run: Option<String>,
    /// Batch jobs on a cron schedule: the next fire time.
    pub next_run: Option<String>,
    /// The Flink job id.
    pub flink_job_id: Option<String>,
    /// Its state on the cluster.
    pub flink_state: Option<String>,
    /// Latest savepoint known to hold this job's state.
    pub last_savepoint: Option<String>,
    /// When the newest recorded savepoint was taken (RFC 3339), and how it came to be
    /// (`periodic`, `manual`, or empty for the stop of an upgrade, suspend or delete).
    pub last_savepoint_at: Option<String>,
    /// Seconds since then.
    pub last_savepoint_age_s: Option<i64>,
    /// The lifecycle phase (`steady`, `stopping`, `stopped`, `submitted`, `verifying`, `blocked`).
    pub phase: Option<String>,
    /// What the phase is doing, or why the job is blocked and what unblocks it.
    pub phase_detail: Option<String>,
    /// The newest failure, with how many in a row.
    pub last_error: Option<String>,
    /// Failures in a row (0 when the last attempt succeeded).
    pub failures: i64,
    /// When a backing-off job is tried again (RFC 3339).
    pub retry_at: Option<String>,
    /// The recorded retry time (epoch ms), past or not: `/api/v1/status` shows it as it always did.
    #[serde(skip)]
    pub retry_at_ms: Option<i64>,
}

/// Everything the status of the jobs is made from; each source may be missing or empty.
pub struct StatusSources<'a> {
    /// The verified head and its desired state, when the head was verified.
    pub desired: Option<(&'a str, &'a DesiredState)>,
    /// The agent's job records.
    pub records: &'a [JobRecord],
    /// The jobs on the cluster (empty when it was not asked).
    pub cluster: &'a [JobOverview],
    /// Per batch job, its newest run.
    pub last_runs: &'a [RunRecord],
    /// Per job, the newest savepoint in the ledger.
    pub savepoints: &'a [SavepointTaken],
    /// The time the status is for.
    pub now: DateTime<Utc>,
}

/// One [`JobStatus`] per job desired or recorded, sorted by job id.
pub fn job_statuses(sources: &StatusSources<'_>) -> Vec<JobStatus> {
    let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let now_ms = sources.now.timestamp_millis();
    let desired_jobs = sources.desired.map(|(_, desired)| &desired.jobs);
    let mut ids: Vec<&String> = desired_jobs
        .into_iter()
        .flat_map(|jobs| jobs.keys())
        .collect();
    ids.extend(sources.records.iter().map(|r| &r.job_id));
    ids.sort();
    ids.dedup();
    // Keyed once, so that status stays linear in the number of jobs.
    let records_by_id: HashMap<&str, &JobRecord> = sources
        .records
        .iter()
        .map(|r| (r.job_id.as_str(), r))
        .collect();
    let savepoint_by_id: HashMap<&str, &SavepointTaken> = sources
        .savepoints
        .iter()
        .map(|s| (s.job_id.as_str(), s))
        .collect();
    let mut last_run_by_id = HashMap::new();
    for run in sources.last_runs {
        last_run_by_id.entry(run.job_id.as_str()).or_insert(run);
    }
    let cluster_by_jid: HashMap<&str, &JobOverview> = sources
        .cluster
        .iter()
        .map(|j| (j.jid.as_str(), j))
        .collect();
    let by_prefix = super::group_by_job_prefix(sources.cluster);
    ids.into_iter()
        .map(|id| {
            let record = records_by_id.get(id.as_str()).copied();
            let desired = desired_jobs.and_then(|jobs| jobs.get(id));
            let last_run = last_run_by_id.get(id.as_str()).map(|run| {
                format!(
                    "{} {} (submitted {})",
                    run.status.as_str(),
                    run.flink_job_id,
                    DateTime::from_timestamp_millis(run.submitted_at_ms)
                        .map(rfc3339)
                        .unwrap_or_default()
                )
            });
            let next_run = desired
                .and_then(|job| job.spec.batch.as_ref())
                .filter(|_| record.is_some_and(|r| r.status == "scheduled"))
                .and_then(|batch| crate::batch::next_run(batch, sources.now))
                .map(rfc3339);
            let prefix = super::flink_job_prefix(id);
            let instance = record
                .and_then(|r| r.flink_job_id.as_deref())
                .and_then(|jid| cluster_by_jid.get(jid).copied())
                .or_else(|| {
                    by_prefix
                        .get(prefix.as_str())?
                        .iter()
                        .find(|j| super::is_alive(&j.state))
                        .copied()
                });
            let savepoint = savepoint_by_id.get(id.as_str());
            JobStatus {
                job_id: id.clone(),
                kind: desired
                    .map(|job| job.spec.artifact.kind())
                    .or_else(|| record.map(|r| r.job_kind())),
                desired_commit: desired
                    .and(sources.desired)
                    .map(|(head, _)| head.to_string()),
                applied_commit: record.map(|r| r.commit_id.clone()),
                recorded_status: record.map(|r| r.status.clone()),
                last_run,
                next_run,
                flink_job_id: instance
                    .map(|j| j.jid.clone())
                    .or_else(|| record.and_then(|r| r.flink_job_id.clone())),
                flink_state: instance.map(|j| j.state.clone()),
                // The ledger knows savepoints taken beside the agent (`flink-gitops savepoint`).
                last_savepoint: savepoint
                    .map(|s| s.path.clone())
                    .or_else(|| record.and_then(|r| r.last_savepoint.clone())),
                last_savepoint_at: savepoint
                    .and_then(|s| DateTime::from_timestamp_millis(s.taken_at_ms).map(rfc3339)),
                last_savepoint_age_s: savepoint.map(|s| (now_ms - s.taken_at_ms).max(0) / 1000),
                phase: record.map(|r| r.phase_name().to_string()),
                phase_detail: record
                    .filter(|r| r.phase_json.is_some())
                    .map(|r| crate::reconcile::lifecycle::Phase::of_record(r).describe()),
                last_error: record.and_then(|r| {
                    r.last_error.as_ref().map(|e| match r.failures {
                        0 => e.clone(),
                        n => format!("{e} ({n} failure(s) in a row)"),
                    })
                }),
                failures: record.map_or(0, |r| r.failures),
                retry_at_ms: record.and_then(|r| r.retry_at_ms),
                retry_at: record
                    .and_then(|r| r.retry_at_ms)
                    .filter(|at| *at > now_ms)
                    .and_then(DateTime::from_timestamp_millis)
                    .map(rfc3339),
            }
        })
        .collect()
}
