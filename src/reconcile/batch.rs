//! Batch jobs in a pass: record the spec revision, watch the runs on the cluster, start the one that is due.
//!
//! A run is written to SQLite (`submitting`) before the submit call and its Flink job id is derived
//! from the job's generation, so a crash between the two is resolved by asking the cluster for that id:
//! a run that got there is re-attached, never submitted twice.

use crate::state::AuditAction;
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, warn};

use super::{Agent, JobOutcome, Outcome, PassContext, StepError, generation_of, now_ms};
use crate::batch::schedule::in_zone;
use crate::batch::{Decision, RunCounts, Trigger, decide};
use crate::plan::{Action, JobPlan, flink_job_id, flink_job_prefix, is_alive};
use crate::revision::VerifiedRevision;
use crate::spec::{DesiredJob, DesiredRunState};
use crate::state::{JobRecord, RunRecord, RunStatus, StateStore};

use super::Deployment;

/// A run of the job's current spec revision, submitted now.
fn new_run(
    pass: &PassContext,
    row: &JobRecord,
    deployment: &Deployment,
    flink_job_id: &str,
    trigger: &str,
    status: RunStatus,
) -> RunRecord {
    RunRecord {
        id: 0,
        job_id: row.job_id.clone(),
        flink_job_id: flink_job_id.to_string(),
        commit_id: pass.head.clone(),
        spec_commit: row.commit_id.clone(),
        spec_hash: row.spec_hash.clone(),
        jar_sha256: deployment.jar_sha256.clone(),
        trigger: trigger.to_string(),
        scheduled_for: None,
        status,
        submitted_at_ms: now_ms(),
        deadline_ms: None,
        ended_at_ms: None,
        flink_state: None,
        root_cause: None,
    }
}

/// What watching a job's runs found.
struct Watched {
    /// Runs whose state changed, with a note for people.
    changed: Vec<(RunRecord, String)>,
    /// Runs still on the cluster afterwards.
    still_active: u32,
}

/// A run that is due, and how to start it.
struct Due {
    trigger: Trigger,
    scheduled_for: Option<DateTime<Utc>>,
    ttl_seconds: Option<u64>,
    replace_active: bool,
    /// Where the schedule cursor goes once the run is recorded.
    cursor: Option<crate::state::ScheduleCursor>,
}

/// How often a running run is looked at between other wake-ups (its TTL deadline wakes the agent on time).
const ACTIVE_RUN_CHECK: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// The row status of a batch job whose schedule is live.
pub(super) const SCHEDULED: &str = "scheduled";

impl Agent {
    /// One pass over a batch job: the plan's action on its record, then its runs and schedule.
    pub(super) async fn batch_pass(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        job: Option<&DesiredJob>,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
    ) -> Result<JobOutcome, StepError> {
        let mut notes = Vec::new();
        let mut outcome_kind = Outcome::Unchanged;
        let row = match (entry.action, job) {
            (Action::Create | Action::Upgrade | Action::Resume | Action::Adopt, Some(job)) => {
                let deployment = self.deployment_for(job, revision)?;
                let row = self.record_batch_revision(pass, entry, record, &deployment, job)?;
                if entry.action == Action::Adopt {
                    self.adopt_run(pass, entry, &row, &deployment)?;
                }
                notes.push(match entry.action {
                    Action::Create | Action::Adopt => "new batch job".to_string(),
                    Action::Resume => "resumed its schedule".to_string(),
                    _ => format!(
                        "new spec revision from {}",
                        crate::spec::source::short_id(&pass.head)
                    ),
                });
                outcome_kind = Outcome::Ok;
                Some(row)
            }
            (Action::Suspend, _) => {
                let mut row = record.ok_or_else(|| StepError::permanent("no record to suspend"))?;
                row.status = "suspended".into();
                row.commit_id = pass.head.clone();
                self.audited_put(pass, &row, AuditAction::Suspend)?;
                notes.push("schedule suspended; a run in progress finishes".to_string());
                outcome_kind = Outcome::Ok;
                Some(row)
            }
            (Action::Delete, _) => {
                let mut row = record.ok_or_else(|| StepError::permanent("no record to delete"))?;
                self.cancel_all_runs(pass, &row.job_id, "its spec was deleted")
                    .await?;
                row.status = "deleted".into();
                row.commit_id = pass.head.clone();
                self.audited_put(pass, &row, AuditAction::Delete)?;
                self.with_store(|s| s.remove_schedule_cursor(&row.job_id))?;
                notes.push("deleted; its runs were cancelled".to_string());
                outcome_kind = Outcome::Ok;
                None
            }
            _ => record,
        };
        let mut failure: Option<(String, Option<String>)> = None;
        let mut run_failures = Vec::new();
        let watched = self.watch_runs(pass, &entry.job_id).await?;
        for (run, note) in watched.changed {
            if run.status == RunStatus::Failed {
                failure = Some((note.clone(), run.root_cause.clone()));
            }
            if matches!(run.status, RunStatus::Failed | RunStatus::TimedOut) {
                run_failures.push(super::report::RunFailure {
                    flink_job_id: run.flink_job_id.clone(),
                    timed_out: run.status == RunStatus::TimedOut,
                    message: note.clone(),
                    root_cause: run.root_cause.clone(),
                });
            }
            notes.push(note);
            outcome_kind = Outcome::Ok;
        }
        let mut started = None;
        if let (Some(row), Some(job)) = (row, job)
            && row.status == SCHEDULED
            && job.spec.state == DesiredRunState::Running
            && let Some(batch) = &job.spec.batch
        {
            let counts = RunCounts {
                of_revision: self.with_store(|s| {
                    s.count_runs_of_revision(&row.job_id, &row.commit_id, &row.spec_hash)
                })?,
                active: watched.still_active,
            };
            let cursor = self.with_store(|s| s.schedule_cursor(&row.job_id))?;
            let now = Utc::now();
            let tick = decide(batch, cursor.as_ref(), counts, now).map_err(StepError::permanent)?;
            // A due tick moves the cursor in the same transaction that records its run (see `start_run`),
            // so a crash in between neither loses the tick nor runs it twice.
            if !matches!(tick.decision, Decision::Run { .. }) && tick.cursor != cursor {
                match &tick.cursor {
                    Some(cursor) => {
                        self.with_store(|s| s.set_schedule_cursor(&row.job_id, cursor))?
                    }
                    None => self.with_store(|s| s.remove_schedule_cursor(&row.job_id))?,
                }
            }
            match tick.decision {
                Decision::Run {
                    trigger,
                    scheduled_for,
                    missed,
                    replace_active,
                } => {
                    if trigger == Trigger::CatchUp {
                        warn!(
                            missed,
                            scheduled_for = ?scheduled_for,
                            "{missed} scheduled runs were missed while the agent was not running; running the latest once"
                        );
                        notes.push(format!(
                            "{missed} runs were missed while the agent was down; ran the latest once"
                        ));
                    }
                    let deployment: Deployment = row
                        .deployment_json
                        .as_deref()
                        .and_then(|j| serde_json::from_str(j).ok())
                        .ok_or_else(|| StepError::permanent("no recorded deployment to run"))?;
                    let run = self
                        .start_run(
                            pass,
                            &row,
                            &deployment,
                            Due {
                                trigger,
                                scheduled_for,
                                ttl_seconds: batch.ttl_seconds,
                                replace_active,
                                cursor: tick.cursor,
                            },
                        )
                        .await?;
                    notes.push(format!(
                        "run started as {} ({}{})",
                        run.flink_job_id,
                        trigger.as_str(),
                        scheduled_for
                            .map(|t| format!(", scheduled for {}", in_zone(t, &batch.timezone)))
                            .unwrap_or_default()
                    ));
                    outcome_kind = Outcome::Ok;
                    started = Some(run.flink_job_id);
                }
                Decision::Wait { why, next } => {
                    if let Some(next) = next {
                        self.wake_batch_at(next);
                    }
                    let next_text = next.map(|t| t.to_rfc3339()).unwrap_or_default();
                    if why == "not due" {
                        tracing::debug!(next = %next_text, "batch job not due");
                    } else {
                        info!(next = %next_text, "no batch run: {why}");
                    }
                    notes.push(match next {
                        Some(next) => {
                            format!("{why}; next run at {}", in_zone(next, &batch.timezone))
                        }
                        None => why,
                    });
                }
            }
        }
        if watched.still_active > 0 || started.is_some() {
            self.wake_batch_at(Utc::now() + ACTIVE_RUN_CHECK);
        }
        if let Some((message, root_cause)) = failure {
            let mut outcome = JobOutcome::new(entry, Outcome::Failed, message);
            outcome.root_cause = root_cause;
            outcome.run_failures = run_failures;
            return Ok(outcome);
        }
        let mut outcome = JobOutcome::new(entry, outcome_kind, notes.join("; "));
        outcome.run_failures = run_failures;
        if started.is_some() {
            outcome.flink_job_id = started;
        }
        Ok(outcome)
    }

    /// Stores the spec revision a batch job now runs; `max_runs` counts from its commit.
    fn record_batch_revision(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        record: Option<JobRecord>,
        deployment: &Deployment,
        job: &DesiredJob,
    ) -> Result<JobRecord, StepError> {
        let mut row = record.unwrap_or_else(|| JobRecord {
            job_id: entry.job_id.clone(),
            ..JobRecord::default()
        });
        if row.spec_hash != deployment.spec_hash {
            row.commit_id = pass.head.clone();
        }
        row.spec_json = deployment.spec_json.clone();
        row.spec_hash = deployment.spec_hash.clone();
        row.jar_sha256 = Some(deployment.jar_sha256.clone());
        row.deployment_json = Some(
            serde_json::to_string(deployment).map_err(|e| StepError::permanent(e.to_string()))?,
        );
        row.status = if job.spec.state == DesiredRunState::Running {
            SCHEDULED.into()
        } else {
            "suspended".into()
        };
        self.audited_put(pass, &row, AuditAction::Schedule)?;
        Ok(row)
    }

    /// A run of ours is on the cluster but the state database does not know it (it was lost or
    /// replaced): record it as a run so it is watched and counted, never started a second time.
    fn adopt_run(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        row: &JobRecord,
        deployment: &Deployment,
    ) -> Result<(), StepError> {
        let Some(jid) = entry.flink_job_id.clone() else {
            return Ok(());
        };
        if self.with_store(|s| s.run_known(&jid))? {
            return Ok(());
        }
        let run = new_run(pass, row, deployment, &jid, "adopted", RunStatus::Running);
        let intent = self.intent(
            &pass.head,
            &row.job_id,
            AuditAction::Adopt,
            json!({"flink_job_id": jid}),
        )?;
        self.with_store(|s| {
            s.insert_run(&run)?;
            // Later runs must take later ids than the adopted one.
            if let Some(mut fresh) = s.job(&row.job_id)? {
                fresh.generation = fresh.generation.max(generation_of(&jid));
                s.put_job(&fresh)?;
            }
            Ok(())
        })?;
        self.outcome(AuditAction::Adopt, intent, "ok", json!({"run": true}))?;
        warn!(flink_job_id = %jid, "adopted a batch run the state database did not know");
        Ok(())
    }

    fn audited_put(
        &self,
        pass: &PassContext,
        row: &JobRecord,
        action: AuditAction,
    ) -> Result<(), StepError> {
        let intent = self.intent(
            &pass.head,
            &row.job_id,
            action,
            json!({"spec_hash": row.spec_hash, "commit": row.commit_id, "status": row.status}),
        )?;
        self.with_store(|s| s.put_job(row))?;
        self.outcome(action, intent, "ok", json!({"status": row.status}))?;
        Ok(())
    }

    /// Cancels every run of the job still on the cluster.
    pub(super) async fn cancel_all_runs(
        &self,
        pass: &PassContext,
        job_id: &str,
        why: &str,
    ) -> Result<(), StepError> {
        for run in self.active_runs(job_id)? {
            self.cancel_run(pass, run, RunStatus::Canceled, why).await?;
        }
        Ok(())
    }

    fn active_runs(&self, job_id: &str) -> Result<Vec<RunRecord>, StepError> {
        Ok(self.with_store(|s| s.active_runs(Some(job_id)))?)
    }

    /// Brings every active run of the job up to date with the cluster: finished, failed, timed out, lost.
    async fn watch_runs(&self, pass: &PassContext, job_id: &str) -> Result<Watched, StepError> {
        let mut changed = Vec::new();
        let mut still_active = 0;
        for mut run in self.active_runs(job_id)? {
            let jid = run.flink_job_id.clone();
            match self.client.job(&jid).await {
                Ok(detail) if !is_alive(&detail.state) => {
                    run.status = match detail.state.as_str() {
                        "FINISHED" => RunStatus::Finished,
                        "FAILED" => RunStatus::Failed,
                        _ => RunStatus::Canceled,
                    };
                    run.flink_state = Some(detail.state.clone());
                    run.ended_at_ms = Some(if detail.end_time > 0 {
                        detail.end_time
                    } else {
                        now_ms()
                    });
                    if run.status == RunStatus::Failed {
                        let cause =
                            super::health::newest_failure(&self.client, &jid, run.submitted_at_ms)
                                .await;
                        let deployment = self
                            .with_store(|s| s.job(job_id))?
                            .and_then(|r| r.deployment_json)
                            .and_then(|json| serde_json::from_str::<Deployment>(&json).ok());
                        run.root_cause =
                            cause.map(|c| self.redact_secrets_of(deployment.as_ref(), c));
                    }
                    self.with_store(|s| s.update_run(&run))?;
                    let seconds = (run.ended_at_ms.unwrap_or_default()
                        - detail.start_time.max(run.submitted_at_ms))
                        as f64
                        / 1000.0;
                    info!(flink_job_id = %jid, state = %detail.state, seconds, "batch run ended");
                    let note = format!("run {jid} {} after {seconds:.1} s", detail.state);
                    changed.push((run, note));
                }
                Ok(detail) => {
                    if run.status == RunStatus::Submitting {
                        run.status = RunStatus::Running;
                        self.with_store(|s| s.update_run(&run))?;
                        warn!(flink_job_id = %jid, "re-attached to a run whose submission was interrupted");
                        changed.push((
                            run.clone(),
                            format!("re-attached to run {jid} ({})", detail.state),
                        ));
                    }
                    if let Some(deadline) = run.deadline_ms {
                        if now_ms() >= deadline {
                            let ttl = (deadline - run.submitted_at_ms) / 1000;
                            let note = format!(
                                "run {jid} cancelled: still going at its ttl_seconds deadline ({ttl} s)"
                            );
                            let run = self
                                .cancel_run(pass, run, RunStatus::TimedOut, &note)
                                .await?;
                            changed.push((run, note));
                            continue;
                        }
                        if let Some(at) = DateTime::from_timestamp_millis(deadline) {
                            self.wake_batch_at(at);
                        }
                    }
                    still_active += 1;
                }
                Err(error) if error.is_not_found() => {
                    let never_submitted = run.status == RunStatus::Submitting;
                    run.status = RunStatus::Lost;
                    run.ended_at_ms = Some(now_ms());
                    run.root_cause = Some(if never_submitted {
                        "the submission never reached the cluster".into()
                    } else {
                        "the run is no longer known to the cluster (JobManager restarted?)".into()
                    });
                    self.with_store(|s| s.update_run(&run))?;
                    warn!(flink_job_id = %jid, "batch run lost");
                    let note = format!(
                        "run {jid} lost: {}",
                        run.root_cause.clone().unwrap_or_default()
                    );
                    changed.push((run, note));
                }
                Err(error) => {
                    warn!(flink_job_id = %jid, %error, "cannot check batch run; will look again");
                    still_active += 1;
                }
            }
        }
        Ok(Watched {
            changed,
            still_active,
        })
    }

    async fn cancel_run(
        &self,
        pass: &PassContext,
        mut run: RunRecord,
        status: RunStatus,
        why: &str,
    ) -> Result<RunRecord, StepError> {
        warn!(flink_job_id = %run.flink_job_id, why, "cancelling batch run");
        self.cancel(&pass.head, &run.job_id, &run.flink_job_id)
            .await?;
        run.status = status;
        run.ended_at_ms = Some(now_ms());
        run.flink_state = Some("CANCELED".into());
        run.root_cause = Some(why.to_string());
        self.with_store(|s| s.update_run(&run))?;
        Ok(run)
    }

    async fn start_run(
        &self,
        pass: &PassContext,
        row: &JobRecord,
        deployment: &Deployment,
        due: Due,
    ) -> Result<RunRecord, StepError> {
        let Due {
            trigger,
            scheduled_for,
            ttl_seconds,
            replace_active,
            cursor,
        } = due;
        // The JAR and the request's needs first: when they cannot be had, the run going is not
        // replaced and the tick is tried again.
        self.preflight(pass, deployment)?;
        let jar_id = self.ensure_jar(&pass.head, deployment).await?;
        if replace_active {
            for run in self.active_runs(&row.job_id)? {
                self.cancel_run(pass, run, RunStatus::Replaced, "replaced by a newer run")
                    .await?;
            }
        }
        let prefix = flink_job_prefix(&row.job_id);
        let highest_on_cluster = self
            .client
            .jobs()
            .await?
            .iter()
            .filter(|j| j.jid.starts_with(prefix.as_str()))
            .map(|j| generation_of(&j.jid))
            .max()
            .unwrap_or(0);
        let mut updated = self
            .with_store(|s| s.job(&row.job_id))?
            .unwrap_or_else(|| row.clone());
        let generation = updated.generation.max(highest_on_cluster) + 1;
        let jid = flink_job_id(&row.job_id, generation);
        // Before anything is recorded: a request that cannot be made leaves no run behind.
        let (request, secret_values) =
            self.run_request_with_secrets(pass, deployment, &jid, None)?;
        updated.generation = generation;
        updated.flink_job_id = Some(jid.clone());
        self.with_store(|s| s.put_job(&updated))?;
        let mut run = new_run(
            pass,
            row,
            deployment,
            &jid,
            trigger.as_str(),
            RunStatus::Submitting,
        );
        run.scheduled_for = scheduled_for.map(|t| t.to_rfc3339());
        run.deadline_ms = ttl_seconds.map(|ttl| {
            run.submitted_at_ms
                .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX).saturating_mul(1000))
        });
        run.id = self.with_store(|s| s.insert_run_moving_cursor(&run, cursor.as_ref()))?;
        let intent = self.intent(
            &pass.head,
            &row.job_id,
            AuditAction::BatchRun,
            json!({"flink_job_id": jid, "trigger": trigger.as_str(), "scheduled_for": run.scheduled_for, "jar_sha256": deployment.jar_sha256}),
        )?;
        let result = self
            .run_jar_reuploading(&pass.head, deployment, &jar_id, &request)
            .await?;
        match result {
            Ok(_) => {
                // A crash before the next line leaves the run `submitting`; the next pass finds it on the cluster.
                self.outcome(
                    AuditAction::BatchRun,
                    intent,
                    "ok",
                    json!({"flink_job_id": jid}),
                )?;
                run.status = RunStatus::Running;
                self.with_store(|s| s.update_run(&run))?;
                info!(flink_job_id = %jid, trigger = trigger.as_str(), "batch run submitted");
                if let Some(deadline) = run.deadline_ms.and_then(DateTime::from_timestamp_millis) {
                    self.wake_batch_at(deadline);
                }
                Ok(run)
            }
            Err(error) => {
                let step = StepError::from(error).redact_secrets(&secret_values);
                run.status = RunStatus::Failed;
                run.ended_at_ms = Some(now_ms());
                run.root_cause = Some(
                    step.root_cause
                        .clone()
                        .unwrap_or_else(|| step.message.clone()),
                );
                self.with_store(|s| s.update_run(&run))?;
                self.outcome(
                    AuditAction::BatchRun,
                    intent,
                    "failed",
                    json!({"error": step.message}),
                )?;
                Err(step.context("batch run submit failed"))
            }
        }
    }

    pub(super) fn wake_batch_at(&self, at: DateTime<Utc>) {
        let mut wakeup = self
            .batch_wakeup
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *wakeup = Some(wakeup.map_or(at, |current| current.min(at)));
    }

    /// When the batch scheduler next needs a pass (a fire time, a TTL deadline, a run to watch).
    pub fn next_batch_wakeup(&self) -> Option<DateTime<Utc>> {
        *self
            .batch_wakeup
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Batch runs still on the cluster, of every job (for the status endpoint).
    pub fn active_runs_all(&self) -> Result<Vec<RunRecord>, crate::state::StateError> {
        self.with_store(|s| s.active_runs(None))
    }

    /// Per alert target: delivered, waiting, failed tries (for metrics).
    pub fn delivery_counts(
        &self,
    ) -> Result<Vec<(String, i64, i64, i64)>, crate::state::StateError> {
        self.with_store(StateStore::delivery_counts)
    }

    /// The newest savepoint of each job (for metrics).
    pub fn newest_savepoints(
        &self,
    ) -> Result<Vec<crate::state::SavepointTaken>, crate::state::StateError> {
        self.with_store(StateStore::newest_savepoints)
    }

    /// How many runs are recorded in each status (for metrics).
    pub fn run_status_counts(&self) -> Result<Vec<(String, i64)>, crate::state::StateError> {
        self.with_store(StateStore::run_status_counts)
    }
}
