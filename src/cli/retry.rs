//! `flink-gitops retry`: queues a request to try a blocked or backing-off job again.

use super::request::{recorded_job, requested_by};
use super::{EXIT_OK, Failure};

pub(super) fn run(
    config_path: &std::path::Path,
    job_id: &str,
    start_empty: bool,
) -> Result<u8, Failure> {
    let (_, store, record) = recorded_job(
        config_path,
        job_id,
        "the agent has not run yet, so there is nothing to retry",
    )?;
    let by = requested_by();
    let kind = if start_empty {
        "retry-start-empty"
    } else {
        "retry"
    };
    let id = store.queue_request(job_id, kind, &by)?;
    outln!(
        "queued request {id}: {kind} {job_id} (now {}{}); the agent handles it at the start of its next pass",
        record.phase,
        record
            .last_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    Ok(EXIT_OK)
}
