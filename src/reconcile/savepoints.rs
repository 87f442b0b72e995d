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
        for job in revision.desired.jobs.values() {
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

    fn wake_at_ms(&self, at_ms: i64) {
        if let Some(at) = DateTime::<Utc>::from_timestamp_millis(at_ms) {
            self.wake_batch_at(at);
        }
    }
}
