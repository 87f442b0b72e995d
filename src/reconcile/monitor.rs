//! Watching running stream jobs between changes: how backpressured they are and how old their
//! newest checkpoint is, for the jobs whose spec asks (`monitoring:`). The figures go into the
//! pass report; the alerting side turns them into conditions.

use futures::StreamExt;
use tracing::{debug, warn};

use super::{Agent, JobOutcome, JobProbe, Outcome, now_ms};
use crate::revision::VerifiedRevision;
use crate::spec::{DesiredRunState, JobType};

impl Agent {
    /// Probes the running stream jobs of this pass that watch backpressure or checkpoint age.
    pub(super) async fn probe_watched_jobs(
        &self,
        revision: &VerifiedRevision,
        outcomes: &[JobOutcome],
    ) -> Vec<JobProbe> {
        let watched = outcomes.iter().filter_map(|outcome| {
            let job = revision.desired().jobs.get(&outcome.job_id)?;
            let spec = &job.spec;
            let wanted = spec.alert_on_backpressure || spec.watch.max_checkpoint_age.is_some();
            let running = spec.job_type == JobType::Stream
                && spec.state == DesiredRunState::Running
                && matches!(outcome.outcome, Outcome::Ok | Outcome::Unchanged);
            let flink_job_id = outcome.flink_job_id.clone()?;
            (wanted && running).then(|| (outcome.job_id.clone(), flink_job_id, spec.clone()))
        });
        let probes = watched.map(|(job_id, flink_job_id, spec)| async move {
            let mut probe = JobProbe {
                job_id,
                flink_job_id,
                backpressure: None,
                backpressured_vertex: None,
                checkpoint_age_seconds: None,
                failed_checkpoints: None,
            };
            if spec.alert_on_backpressure {
                match self.client.job_backpressure(&probe.flink_job_id).await {
                    Ok(Some((ratio, vertex))) => {
                        probe.backpressure = Some(ratio);
                        probe.backpressured_vertex = Some(vertex);
                    }
                    Ok(None) => debug!(job_id = %probe.job_id, "no backpressure figures yet"),
                    Err(error) => {
                        warn!(job_id = %probe.job_id, %error, "backpressure probe failed")
                    }
                }
            }
            if spec.watch.max_checkpoint_age.is_some() {
                match self.client.checkpoints(&probe.flink_job_id).await {
                    Ok(stats) => {
                        let newest = match stats.latest.completed {
                            Some(completed) => Some(completed.latest_ack_timestamp),
                            // No checkpoint yet: its age runs from the job's start.
                            None => self
                                .client
                                .job(&probe.flink_job_id)
                                .await
                                .ok()
                                .map(|job| job.start_time),
                        };
                        probe.checkpoint_age_seconds =
                            newest.map(|at| (now_ms() - at).max(0) as f64 / 1000.0);
                        probe.failed_checkpoints = Some(stats.counts.failed);
                    }
                    Err(error) => {
                        warn!(job_id = %probe.job_id, %error, "checkpoint probe failed")
                    }
                }
            }
            probe
        });
        futures::stream::iter(probes)
            .buffer_unordered(self.config.reconcile.max_concurrency)
            .collect()
            .await
    }
}
