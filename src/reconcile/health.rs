//! The health gate: a deployment counts only once it has stayed RUNNING, without too many restarts,
//! and (with checkpointing on) has completed a checkpoint.

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::deployment::Deployment;
use crate::flink::{FlinkClient, root_cause};
use crate::spec::JobType;

/// The outcome of waiting on a new deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy.
    Healthy {
        /// Completed checkpoints seen.
        checkpoints: u64,
    },
    /// The agent is shutting down; the deployment stays pending and the next start judges it.
    Interrupted,
    /// Not healthy; roll back.
    Unhealthy {
        /// What went wrong, for people.
        reason: String,
        /// Flink's root cause, when it reported one.
        root_cause: Option<String>,
    },
}

fn terminal(state: &str) -> bool {
    matches!(state, "FAILED" | "CANCELED" | "FINISHED" | "SUSPENDED")
}

/// The newest failure of a job since `since_ms`, reduced to its root cause line.
pub async fn newest_failure(client: &FlinkClient, job_id: &str, since_ms: i64) -> Option<String> {
    let history = client.exceptions(job_id).await.ok()?;
    history
        .entries
        .iter()
        .find(|e| e.timestamp >= since_ms)
        .map(|e| root_cause(&e.stacktrace))
}

/// Waits until `job_id` is healthy per `deployment.health`, or decides it is not.
pub async fn wait_healthy(
    client: &FlinkClient,
    job_id: &str,
    deployment: &Deployment,
    since_ms: i64,
    poll: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Verdict {
    let health = &deployment.health;
    // The gate's clock started at submission, so a gate continued after a crash does not start
    // over; it still gets long enough to see the job stable.
    let elapsed =
        Duration::from_millis((chrono::Utc::now().timestamp_millis() - since_ms).max(0) as u64);
    let deadline = Instant::now()
        + health
            .timeout()
            .saturating_sub(elapsed)
            .max(health.stable_for() + poll * 3);
    let mut stable_since: Option<Instant> = None;
    let mut last_state = String::from("unknown");
    let mut checkpoints = 0;
    // Why the gate is still waiting beyond the job running, for the timeout's message.
    let mut waiting_for: Option<String> = None;
    loop {
        let now = Instant::now();
        match client.job(job_id).await {
            Ok(job) => {
                last_state = job.state.clone();
                let bounded_done = deployment.job_type == JobType::Batch && job.state == "FINISHED";
                if bounded_done {
                    return Verdict::Healthy { checkpoints: 0 };
                }
                if terminal(&job.state) {
                    return Verdict::Unhealthy {
                        reason: format!("job {job_id} is {}", job.state),
                        root_cause: newest_failure(client, job_id, since_ms).await,
                    };
                }
                let restarts = match client.exceptions(job_id).await {
                    Ok(history) => history
                        .entries
                        .iter()
                        .filter(|e| e.timestamp >= since_ms)
                        .count(),
                    Err(_) => 0,
                };
                // The REST cache can hide a short RESTARTING phase; its timestamp cannot hide.
                let restarted_at = job.timestamps.get("RESTARTING").copied().unwrap_or(0);
                let restarts =
                    restarts.max(usize::from(restarted_at >= since_ms && restarted_at > 0));
                if restarts > health.max_restarts as usize {
                    return Verdict::Unhealthy {
                        reason: format!(
                            "job {job_id} restarted {restarts} time(s) (health.max_restarts is {})",
                            health.max_restarts
                        ),
                        root_cause: newest_failure(client, job_id, since_ms).await,
                    };
                }
                let all_running = job.state == "RUNNING"
                    && !job.vertices.is_empty()
                    && job
                        .vertices
                        .iter()
                        .all(|v| v.status == "RUNNING" || v.status == "FINISHED");
                if all_running {
                    // A version that cannot keep up is not stable, however long it runs.
                    if let Some(limit) = health.max_backpressure()
                        && let Ok(Some((ratio, vertex))) = client.job_backpressure(job_id).await
                        && ratio >= limit
                    {
                        stable_since = None;
                        waiting_for = Some(format!(
                            "backpressure {:.0}% at {vertex} (health.max_backpressure is {limit})",
                            ratio * 100.0
                        ));
                        debug!(
                            job = job_id,
                            ratio, "backpressured; the stable window starts over"
                        );
                    } else {
                        let since = *stable_since.get_or_insert(now);
                        let stable = now.duration_since(since) >= health.stable_for();
                        let needs_checkpoint =
                            deployment.checkpointing && health.require_checkpoint;
                        let mut newest_checkpoint_at = None;
                        if (needs_checkpoint || health.max_checkpoint_age().is_some())
                            && let Ok(stats) = client.checkpoints(job_id).await
                        {
                            checkpoints = stats.counts.completed;
                            newest_checkpoint_at =
                                stats.latest.completed.map(|c| c.latest_ack_timestamp);
                        }
                        let wanted = health.min_checkpoints.max(1) as usize;
                        let enough = !needs_checkpoint || checkpoints as usize >= wanted;
                        let fresh = match health.max_checkpoint_age() {
                            None => true,
                            Some(max_age) => newest_checkpoint_at.is_some_and(|at| {
                                chrono::Utc::now().timestamp_millis() - at
                                    <= max_age.as_millis() as i64
                            }),
                        };
                        if !fresh {
                            waiting_for = Some(format!(
                                "no completed checkpoint younger than {} (health.max_checkpoint_age)",
                                crate::util::format_duration(
                                    health.max_checkpoint_age().unwrap_or_default()
                                )
                            ));
                        }
                        if stable && enough && fresh {
                            return Verdict::Healthy { checkpoints };
                        }
                    }
                } else {
                    stable_since = None;
                }
                debug!(job = job_id, state = %job.state, restarts, "waiting for health");
            }
            Err(error) => debug!(job = job_id, %error, "health probe failed; retrying"),
        }
        if Instant::now() >= deadline {
            return Verdict::Unhealthy {
                reason: format!(
                    "job {job_id} not healthy within {} (state {last_state}, {checkpoints} completed checkpoint(s){})",
                    crate::util::format_duration(health.timeout()),
                    waiting_for.map(|w| format!("; {w}")).unwrap_or_default()
                ),
                root_cause: newest_failure(client, job_id, since_ms).await,
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.cancelled() => return Verdict::Interrupted,
        }
    }
}
