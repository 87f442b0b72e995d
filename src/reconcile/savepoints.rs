//! Periodic savepoints (`stream_config.savepoint_trigger_interval`): each running stream job gets a
//! savepoint when its newest one is older than the interval. Every savepoint is recorded with the
//! revision whose spec the job ran. Missed ones are not made up: after the agent was down, a job
//! gets one savepoint, not one per missed interval.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, warn};

use super::policy::StepError;
use super::{Agent, Deployment, PassContext, executor, now_ms};
use crate::plan::is_alive;
use crate::revision::VerifiedRevision;
use crate::spec::{DesiredRunState, JobType};
use crate::state::{AuditAction, JobRecord};

impl Agent {
    /// Takes the savepoints that are due, one job after the other, and asks the service to wake
    /// when the next one is; returns a line per savepoint taken or failed.
    pub(super) async fn periodic_savepoints(
        &self,
        pass: &PassContext,
        revision: &VerifiedRevision,
    ) -> Vec<String> {
        // Most revisions ask for none: then the job rows are not read at all.
        if revision
            .desired()
            .jobs
            .values()
            .all(|job| job.spec.savepoint_trigger_interval_ms.is_none())
        {
            return Vec::new();
        }
        let known = self.with_store(|s| Ok((s.jobs()?, s.newest_savepoints()?)));
        let (records, newest) = match known {
            Ok(found) => found,
            Err(error) => return vec![format!("periodic savepoints skipped: {error}")],
        };
        let newest: HashMap<&str, i64> = newest
            .iter()
            .map(|s| (s.job_id.as_str(), s.taken_at_ms))
            .collect();
        let mut notes = Vec::new();
        for job in revision.desired().jobs.values() {
            let spec = &job.spec;
            let Some(interval_ms) = spec.savepoint_trigger_interval_ms else {
                continue;
            };
            if spec.job_type != JobType::Stream || spec.state != DesiredRunState::Running {
                continue;
            }
            let Some(record) = records.iter().find(|r| {
                r.job_id == spec.job_id && r.status == "running" && r.phase_name() == "steady"
            }) else {
                continue;
            };
            // Only the instance the cluster listed RUNNING when the pass began: a job this pass
            // (re)deployed is looked at next time.
            let Some(instance) = record.flink_job_id.as_deref().and_then(|jid| {
                pass.instances_of(&spec.job_id)
                    .iter()
                    .find(|j| j.jid == jid && j.state == "RUNNING" && is_alive(&j.state))
            }) else {
                continue;
            };
            let last = newest
                .get(spec.job_id.as_str())
                .copied()
                .unwrap_or(0)
                .max(instance.start_time);
            let due = last.saturating_add(i64::try_from(interval_ms).unwrap_or(i64::MAX));
            if now_ms() < due {
                self.wake_at_ms(due);
                continue;
            }
            match self.take_savepoint(pass, record, "periodic").await {
                Ok(path) => {
                    notes.push(format!("{}: periodic savepoint {path}", spec.job_id));
                }
                Err(error) => {
                    warn!(job_id = %spec.job_id, error = %error.full(), "periodic savepoint failed");
                    notes.push(format!(
                        "{}: periodic savepoint failed: {}",
                        spec.job_id,
                        error.full()
                    ));
                }
            }
            self.wake_at_ms(
                now_ms().saturating_add(i64::try_from(interval_ms).unwrap_or(i64::MAX)),
            );
        }
        notes
    }

    /// A savepoint of the job's running instance into its savepoint folder, audited and recorded
    /// with the revision the job runs (`kind`: `periodic` or `manual`); its path.
    pub(super) async fn take_savepoint(
        &self,
        pass: &PassContext,
        record: &JobRecord,
        kind: &str,
    ) -> Result<String, StepError> {
        let jid = record
            .flink_job_id
            .clone()
            .ok_or_else(|| StepError::permanent("the job has no running instance"))?;
        let deployment: Deployment = record
            .deployment_json
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| {
                StepError::permanent("no recorded deployment to take the savepoint dir from")
            })?;
        let trigger = executor::new_trigger_id(&jid);
        let target = deployment.savepoint_dir.clone();
        let path = self
            .audited(
                &pass.head,
                &record.job_id,
                AuditAction::Savepoint,
                json!({"flink_job_id": jid, "kind": kind, "trigger_id": trigger, "target": target, "commit": record.commit_id}),
                async {
                    self.client.trigger_savepoint(&jid, &target, &trigger).await?;
                    self.poll_savepoint(&jid, &trigger).await
                },
                |location| json!({"savepoint": location}),
            )
            .await?;
        self.with_store(|s| {
            s.put_savepoint_taken(
                &record.job_id,
                &path,
                &jid,
                kind,
                &record.commit_id,
                now_ms(),
            )?;
            // The newest state of the job, for status and for restores.
            if let Some(mut current) = s.job(&record.job_id)? {
                current.last_savepoint = Some(path.clone());
                s.put_job(&current)?;
            }
            Ok(())
        })?;
        info!(job_id = %record.job_id, flink_job_id = %jid, savepoint = %path, kind, "savepoint taken");
        Ok(path)
    }

    /// Disposes of the savepoints each steady running stream job's retention policy lets go (the
    /// spec's `savepoints:`, else the agent's). Never: the job's newest savepoint, the one its
    /// record names, the newest of each Flink instance it had (the state a rollback to that
    /// deployment restores) unless older than `max_age`, or anything of a job in flight.
    pub(super) async fn apply_retention(
        &self,
        pass: &PassContext,
        revision: &VerifiedRevision,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        for job in revision.desired().jobs.values() {
            let spec = &job.spec;
            let Some(policy) = spec.savepoint_retention.or(self.config.savepoint_retention) else {
                continue;
            };
            if spec.job_type != JobType::Stream {
                continue;
            }
            let known =
                self.with_store(|s| Ok((s.job(&spec.job_id)?, s.restore_points(&spec.job_id)?)));
            let (Some(record), points) = (match known {
                Ok(found) => found,
                Err(error) => {
                    notes.push(format!("{}: retention skipped: {error}", spec.job_id));
                    continue;
                }
            }) else {
                continue;
            };
            // The state of a job in flight is uncertain: nothing of it goes.
            if record.phase_name() != "steady"
                || !matches!(record.status.as_str(), "running" | "suspended")
            {
                continue;
            }
            let candidates =
                disposable(&points, record.last_savepoint.as_deref(), policy, now_ms());
            for path in candidates {
                match self.dispose(pass, &record, &path).await {
                    Ok(()) => notes.push(format!("{}: disposed of savepoint {path}", spec.job_id)),
                    Err(error) => {
                        warn!(job_id = %spec.job_id, %path, error = %error.full(), "savepoint disposal failed");
                        notes.push(format!(
                            "{}: disposal of {path} failed: {}",
                            spec.job_id,
                            error.full()
                        ));
                        break;
                    }
                }
            }
        }
        notes.extend(self.retention_of_deleted_jobs(pass, revision).await);
        notes
    }

    /// Deleted specs: their savepoints go by the agent's policy, except the final one, which
    /// stays unless `savepoints.keep_final_on_delete` is false (then everything goes).
    async fn retention_of_deleted_jobs(
        &self,
        pass: &PassContext,
        revision: &VerifiedRevision,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        let policy = self.config.savepoint_retention;
        if policy.is_none() && self.config.keep_final_on_delete {
            return notes;
        }
        let records = match self.with_store(|s| s.jobs()) {
            Ok(records) => records,
            Err(error) => return vec![format!("retention of deleted jobs skipped: {error}")],
        };
        let deleted = records.into_iter().filter(|r| {
            r.status == "deleted"
                && r.phase_name() == "steady"
                && !revision.desired().jobs.contains_key(&r.job_id)
        });
        for record in deleted {
            let points = match self.with_store(|s| s.restore_points(&record.job_id)) {
                Ok(points) => points,
                Err(error) => {
                    notes.push(format!("{}: retention skipped: {error}", record.job_id));
                    continue;
                }
            };
            let candidates = if self.config.keep_final_on_delete {
                let Some(policy) = policy else { continue };
                disposable(&points, record.last_savepoint.as_deref(), policy, now_ms())
            } else {
                points
                    .iter()
                    .filter(|p| p.savepoint && p.unusable.is_none())
                    .map(|p| p.path.clone())
                    .collect()
            };
            for path in candidates {
                match self.dispose(pass, &record, &path).await {
                    Ok(()) => notes.push(format!(
                        "{} (deleted): disposed of savepoint {path}",
                        record.job_id
                    )),
                    Err(error) => {
                        notes.push(format!(
                            "{} (deleted): disposal of {path} failed: {}",
                            record.job_id,
                            error.full()
                        ));
                        break;
                    }
                }
            }
        }
        notes
    }

    async fn dispose(
        &self,
        pass: &PassContext,
        record: &JobRecord,
        path: &str,
    ) -> Result<(), StepError> {
        let disposed = self
            .audited(
                &pass.head,
                &record.job_id,
                AuditAction::Dispose,
                json!({"savepoint": path, "reason": "retention"}),
                async {
                    let trigger = self.client.dispose_savepoint(path).await?;
                    let deadline =
                        tokio::time::Instant::now() + self.config.reconcile.savepoint_timeout;
                    loop {
                        let poll = self.client.disposal_status(&trigger).await?;
                        if poll.status.id == "COMPLETED" {
                            let failure = poll
                                .operation
                                .and_then(|o| o.failure_cause)
                                .and_then(|c| c.stack_trace.or(c.class));
                            return match failure {
                                None => Ok(()),
                                Some(trace) => Err(StepError::permanent(format!(
                                    "Flink could not dispose of {path}: {}",
                                    crate::flink::root_cause(&trace)
                                ))),
                            };
                        }
                        if tokio::time::Instant::now() >= deadline {
                            return Err(StepError::transient(format!(
                                "disposal of {path} not completed in time"
                            )));
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                },
                |()| json!({"disposed": path}),
            )
            .await;
        disposed?;
        self.with_store(|s| s.mark_unusable(&record.job_id, path, "disposed of by retention"))?;
        info!(job_id = %record.job_id, savepoint = %path, "savepoint disposed of");
        Ok(())
    }

    fn wake_at_ms(&self, at_ms: i64) {
        if let Some(at) = DateTime::<Utc>::from_timestamp_millis(at_ms) {
            self.wake_batch_at(at);
        }
    }
}

/// The savepoints `policy` lets go, oldest last (see [`Agent::apply_retention`] for what is never
/// disposed of).
fn disposable(
    points: &[crate::state::RestorePoint],
    last_savepoint: Option<&str>,
    policy: crate::spec::Retention,
    now_ms: i64,
) -> Vec<String> {
    let mut savepoints: Vec<&crate::state::RestorePoint> = points
        .iter()
        .filter(|p| p.savepoint && p.unusable.is_none())
        .collect();
    savepoints.sort_by_key(|p| std::cmp::Reverse(p.taken_at_ms));
    let mut newest_of_instance = std::collections::HashSet::new();
    let mut seen_instances = std::collections::HashSet::new();
    for point in &savepoints {
        if seen_instances.insert(point.flink_job_id.clone()) {
            newest_of_instance.insert(point.path.as_str());
        }
    }
    let keep = policy.keep.map_or(usize::MAX, |k| k as usize);
    savepoints
        .iter()
        .enumerate()
        .filter(|(rank, point)| {
            let age_ms = now_ms - point.taken_at_ms;
            let too_old = policy
                .max_age
                .is_some_and(|max| age_ms > i64::try_from(max.as_millis()).unwrap_or(i64::MAX));
            let protected = *rank == 0
                || last_savepoint.is_some_and(|last| super::restore::same_path(last, &point.path))
                || (newest_of_instance.contains(point.path.as_str()) && !too_old);
            !protected && (*rank >= keep || too_old)
        })
        .map(|(_, point)| point.path.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Retention;
    use crate::state::RestorePoint;
    use std::time::Duration;

    fn point(path: &str, instance: &str, at: i64) -> RestorePoint {
        RestorePoint {
            job_id: "j".into(),
            path: path.into(),
            savepoint: true,
            flink_job_id: Some(instance.into()),
            taken_at_ms: at,
            unusable: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_each_instances_last_state() {
        let points = [
            point("p5", "i2", 500),
            point("p4", "i2", 400),
            point("p3", "i2", 300),
            point("s2", "i1", 200),
            point("p1", "i1", 100),
        ];
        let keep_two = Retention {
            keep: Some(2),
            max_age: None,
        };
        // p3 and p1 go; s2 is the state instance i1 ended with.
        assert_eq!(
            disposable(&points, Some("p5"), keep_two, 1000),
            ["p3", "p1"]
        );
        let young = Retention {
            keep: None,
            max_age: Some(Duration::from_millis(350)),
        };
        // Older than 350 ms at t=1000: p4 and older; the newest stays whatever its age.
        assert_eq!(
            disposable(&points, Some("p5"), young, 1000),
            ["p4", "p3", "s2", "p1"]
        );
        assert_eq!(disposable(&points, Some("p5"), young, 520), ["p1"]);
    }
}
