//! `flink-gitops status`: every job's desired and applied revision, Flink state and last savepoint.

use serde::Serialize;

use super::snapshot::{Refusal, snapshot};
use super::{EXIT_FINDINGS, EXIT_OK, Failure, OutputFormat, output};
use crate::flink::JobOverview;
use crate::plan::status::{JobStatus, StatusSources, job_statuses};
use crate::state::StateStore;

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
    let cluster_jobs: &[JobOverview] = snap
        .cluster
        .as_ref()
        .map(|(_, j)| j.as_slice())
        .unwrap_or(&[]);
    let (last_runs, savepoints) = tokio::task::block_in_place(|| -> Result<_, Failure> {
        Ok(match StateStore::open_read_only(&snap.config.state.dir)? {
            Some(store) => (store.last_runs()?, store.newest_savepoints()?),
            None => (Vec::new(), Vec::new()),
        })
    })?;
    let jobs = job_statuses(&StatusSources {
        desired: snap
            .revision
            .as_ref()
            .ok()
            .map(|r| (snap.head.as_str(), r.desired())),
        records: &snap.records,
        cluster: cluster_jobs,
        last_runs: &last_runs,
        savepoints: &savepoints,
        now: chrono::Utc::now(),
    });
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
