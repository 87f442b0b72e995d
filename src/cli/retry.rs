//! `flink-gitops retry`: queues a request to try a blocked or backing-off job again.

use super::requester::{current_uid, user_name};
use super::{EXIT_OK, Failure, usage};
use crate::config::Config;
use crate::state::StateStore;

pub(super) fn run(
    config_path: &std::path::Path,
    job_id: &str,
    start_empty: bool,
) -> Result<u8, Failure> {
    let config = Config::load(config_path).map_err(usage)?;
    let store = StateStore::open_for_requests(&config.state.dir)?.ok_or_else(|| {
        usage(anyhow::anyhow!(
            "no state in {}: the agent has not run yet, so there is nothing to retry",
            config.state.dir.display()
        ))
    })?;
    let Some(record) = store.job(job_id)? else {
        return Err(usage(anyhow::anyhow!(
            "the agent has no record of job `{job_id}` (see `flink-gitops status`)"
        )));
    };
    let by = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| user_name(&current_uid()));
    let kind = if start_empty {
        "retry-start-empty"
    } else {
        "retry"
    };
    let id = store.queue_request(job_id, kind, &by)?;
    println!(
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
