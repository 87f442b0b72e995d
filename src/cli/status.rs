//! `flink-gitops status`: every job's desired and applied revision, Flink state and last savepoint.

use serde::Serialize;

use super::snapshot::{Refusal, snapshot};
use super::{EXIT_FINDINGS, EXIT_OK, Failure, OutputFormat, output};
use crate::flink::JobOverview;
use crate::state::StateStore;

/// One row of `status`.
#[derive(Debug, Serialize)]
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
    /// When a backing-off job is tried again (RFC 3339).
    pub retry_at: Option<String>,
}

#[derive(Serialize)]
struct StatusReport<'a> {
    revision: &'a str,
    flink: &'a str,
    cluster_error: Option<&'a str>,
    refused: Option<&'a Refusal>,
    jobs: Vec<JobStatus>,
}

pub(super) async fn run(
    config_path: &std::path::Path,
    format: OutputFormat,
    no_fetch: bool,
) -> Result<u8, Failure> {
    let snap = snapshot(config_path, !no_fetch).await?;
    let desired_ids: Vec<&String> = match &snap.revision {
        Ok(r) => r.desired().jobs.keys().collect(),
        Err(_) => Vec::new(),
    };
    let cluster_jobs: &[JobOverview] = snap
        .cluster
        .as_ref()
        .map(|(_, j)| j.as_slice())
        .unwrap_or(&[]);
    let mut ids: Vec<&String> = desired_ids.clone();
    ids.extend(snap.records.iter().map(|r| &r.job_id));
    ids.sort();
    ids.dedup();
    let (last_runs, savepoints) = match StateStore::open_read_only(&snap.config.state.dir)? {
        Some(store) => (store.last_runs()?, store.newest_savepoints()?),
        None => (Vec::new(), Vec::new()),
    };
    let savepoint_by_id: std::collections::HashMap<&str, &crate::state::SavepointTaken> =
        savepoints.iter().map(|s| (s.job_id.as_str(), s)).collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Keyed once, so that status stays linear in the number of jobs.
    let desired_set: std::collections::HashSet<&String> = desired_ids.iter().copied().collect();
    let records_by_id: std::collections::HashMap<&str, &crate::state::JobRecord> = snap
        .records
        .iter()
        .map(|r| (r.job_id.as_str(), r))
        .collect();
    let mut last_run_by_id = std::collections::HashMap::new();
    for run in &last_runs {
        last_run_by_id.entry(run.job_id.as_str()).or_insert(run);
    }
    let cluster_by_jid: std::collections::HashMap<&str, &JobOverview> =
        cluster_jobs.iter().map(|j| (j.jid.as_str(), j)).collect();
    let by_prefix = crate::plan::group_by_job_prefix(cluster_jobs);
    let jobs = ids
        .into_iter()
        .map(|id| {
            let record = records_by_id.get(id.as_str()).copied();
            let last_run = last_run_by_id.get(id.as_str()).map(|run| {
                format!(
                    "{} {} (submitted {})",
                    run.status.as_str(),
                    run.flink_job_id,
                    chrono::DateTime::from_timestamp_millis(run.submitted_at_ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default()
                )
            });
            let next_run = snap
                .revision
                .as_ref()
                .ok()
                .and_then(|r| r.desired().jobs.get(id))
                .and_then(|job| job.spec.batch.as_ref())
                .filter(|_| record.is_some_and(|r| r.status == "scheduled"))
                .and_then(|batch| crate::batch::next_run(batch, chrono::Utc::now()))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            let prefix = crate::plan::flink_job_prefix(id);
            let instance = record
                .and_then(|r| r.flink_job_id.as_deref())
                .and_then(|jid| cluster_by_jid.get(jid).copied())
                .or_else(|| {
                    by_prefix
                        .get(prefix.as_str())?
                        .iter()
                        .find(|j| crate::plan::is_alive(&j.state))
                        .copied()
                });
            let kind = snap
                .revision
                .as_ref()
                .ok()
                .and_then(|r| r.desired().jobs.get(id))
                .map(|job| job.spec.artifact.kind())
                .or_else(|| record.map(|r| r.job_kind()));
            JobStatus {
                job_id: id.clone(),
                kind,
                desired_commit: desired_set.contains(id).then(|| snap.head.clone()),
                applied_commit: record.map(|r| r.commit_id.clone()),
                recorded_status: record.map(|r| r.status.clone()),
                last_run,
                next_run,
                flink_job_id: instance
                    .map(|j| j.jid.clone())
                    .or_else(|| record.and_then(|r| r.flink_job_id.clone())),
                flink_state: instance.map(|j| j.state.clone()),
                // The ledger knows savepoints taken beside the agent (`flink-gitops savepoint`).
                last_savepoint: savepoint_by_id
                    .get(id.as_str())
                    .map(|s| s.path.clone())
                    .or_else(|| record.and_then(|r| r.last_savepoint.clone())),
                last_savepoint_at: savepoint_by_id.get(id.as_str()).and_then(|s| {
                    chrono::DateTime::from_timestamp_millis(s.taken_at_ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                }),
                last_savepoint_age_s: savepoint_by_id
                    .get(id.as_str())
                    .map(|s| (now_ms - s.taken_at_ms).max(0) / 1000),
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
                retry_at: record
                    .and_then(|r| r.retry_at_ms)
                    .filter(|at| *at > chrono::Utc::now().timestamp_millis())
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            }
        })
        .collect();
    let flink_url = crate::util::redact_url(snap.config.flink.url.as_str());
    let report = StatusReport {
        revision: &snap.head,
        flink: &flink_url,
        cluster_error: snap.cluster.as_ref().err().map(String::as_str),
        refused: snap.revision.as_ref().err(),
        jobs,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_status(
            report.revision,
            report.flink,
            report.cluster_error,
            report.refused,
            &report.jobs,
        ),
    }
    // A job that is blocked, or recorded running while Flink does not run it, is a finding.
    let unhealthy = report.jobs.iter().any(|job| {
        job.phase.as_deref() == Some("blocked")
            || (job.recorded_status.as_deref() == Some("running")
                && job.phase.as_deref() == Some("steady")
                && !job
                    .flink_state
                    .as_deref()
                    .is_some_and(crate::plan::is_alive))
    });
    Ok(
        if snap.cluster.is_err() || snap.revision.is_err() || unhealthy {
            EXIT_FINDINGS
        } else {
            EXIT_OK
        },
    )
}
