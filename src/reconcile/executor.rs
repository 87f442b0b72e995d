//! Drives one stream job through its lifecycle phases.
//!
//! Each step observes the instance its phase is about, asks [`next_step`] what to do, does it, and
//! records the phase that follows *before* the Flink call that leads to it. A failed step goes to
//! the error policy ([`Agent::on_error`]); a crash leaves the recorded phase for the next pass.

use crate::state::AuditAction;
use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::lifecycle::{
    ErrorClass, Failure, OpKind, Operation, Phase, Seen, Step, StopMethod, Submission,
    after_failed_submission, backoff, begin, next_step, stop_method,
};
use super::policy::{StepError, is_duplicate_submission};
use super::restore::{self, Candidate, Source};
use super::{Agent, Deployment, JobOutcome, Outcome, PassContext, Pending, PendingKind, now_ms};
use crate::flink::JobOverview;
use crate::plan::{Action, JobPlan, flink_job_id, is_alive};
use crate::revision::VerifiedRevision;
use crate::spec::UpgradeMode;
use crate::state::{JobRecord, Request, StateError, StateStore};

/// Steps one pass takes for one job before it yields (each waits at most a few seconds, the
/// health gate and savepoints excepted): a runaway loop becomes a retry, not a hang.
const MAX_STEPS: usize = 64;

/// How long one step waits for a CANCELLING instance before looking again.
const CANCELLING_POLL: Duration = Duration::from_millis(250);

pub(super) fn set_phase(record: &mut JobRecord, phase: &Phase) {
    record.phase = phase.name().to_string();
    record.phase_json = match phase {
        Phase::Steady => None,
        other => serde_json::to_string(other).ok(),
    };
}

/// A trigger id for a stop, unique per attempt; recorded before the stop is sent, so sending it
/// again after a crash returns the first stop's result instead of starting a second savepoint.
pub fn new_trigger_id(flink_job_id: &str) -> String {
    let nonce = format!(
        "flink-gitops/stop/{flink_job_id}/{}/{}",
        now_ms(),
        std::process::id()
    );
    hex::encode(&Sha256::digest(nonce.as_bytes())[..16])
}

/// Turns a submission recorded by an agent from before the lifecycle phases into the phase that
/// continues it. Returns true when the row changed.
pub(super) fn adopt_legacy_pending(row: &mut JobRecord) -> bool {
    let Some(pending) = row
        .pending_json
        .take()
        .and_then(|json| serde_json::from_str::<Pending>(&json).ok())
    else {
        return false;
    };
    let kind = match pending.kind {
        PendingKind::Create => OpKind::Create,
        PendingKind::Upgrade => OpKind::Upgrade,
        PendingKind::Resume => OpKind::Resume,
        PendingKind::Restart => OpKind::Restart,
        PendingKind::Rollback => OpKind::Rollback,
    };
    let op = Operation {
        kind,
        head: pending.head.clone(),
        empty_state_allowed: kind == OpKind::Create
            || pending.deployment.upgrade_mode == UpgradeMode::Stateless,
        target: Some(pending.deployment),
        predecessor: row.flink_job_id.clone(),
        restore_hint: pending.restored_from.clone(),
        failure: None,
        rejected_spec_hash: None,
        audit_intent: None,
        desired_spec_hash: None,
        revision_rollback: None,
    };
    let phase = Phase::Submitted {
        op,
        submission: Submission {
            flink_job_id: pending.flink_job_id,
            generation: pending.generation,
            restored_from: pending.restored_from,
            submitted_at_ms: pending.submitted_at_ms,
        },
    };
    set_phase(row, &phase);
    true
}

/// Applies an operator request to the store (inside the caller's transaction); returns a note.
pub(super) fn apply_request(
    store: &StateStore,
    head: &str,
    request: &Request,
) -> Result<String, StateError> {
    let Some(mut row) = store.job(&request.job_id)? else {
        let intent = store.audit_intent(
            Some(head),
            Some(&request.job_id),
            AuditAction::Retry,
            &json!({"by": request.by, "kind": request.kind}).to_string(),
        )?;
        store.audit_outcome(intent, "unknown-job", "{}")?;
        return Ok(format!(
            "{}: retry requested by {}, but the agent has no record of this job",
            request.job_id, request.by
        ));
    };
    let was = Phase::of_record(&row).describe();
    let intent = store.audit_intent(
        Some(head),
        Some(&request.job_id),
        AuditAction::Retry,
        &json!({"by": request.by, "kind": request.kind, "phase": was}).to_string(),
    )?;
    if matches!(Phase::of_record(&row), Phase::Blocked { .. }) {
        set_phase(&mut row, &Phase::Steady);
    }
    row.failures = 0;
    row.permanent_failures = 0;
    row.retry_at_ms = None;
    row.rejected_spec_hash = None;
    store.put_job(&row)?;
    if request.kind == "retry-start-empty" {
        store.set_meta(&start_empty_key(&request.job_id), &request.by)?;
    }
    store.audit_outcome(intent, "ok", &json!({"phase": row.phase}).to_string())?;
    Ok(format!(
        "{}: retry requested by {} ({}); was {was}",
        request.job_id,
        request.by,
        if request.kind == "retry-start-empty" {
            "may start without state once"
        } else {
            "tried again now"
        }
    ))
}

fn start_empty_key(job_id: &str) -> String {
    format!("start-empty/{job_id}")
}

impl Agent {
    /// One stream job in one pass: start what the plan decided, then walk the phases until the job
    /// is steady, blocked, waiting for a retry, or the agent shuts down.
    pub(super) async fn drive(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
        instance: Option<JobOverview>,
    ) -> JobOutcome {
        let first = entry.reasons.first().cloned().unwrap_or_default();
        match entry.action {
            Action::Unchanged => return JobOutcome::new(entry, Outcome::Unchanged, "in sync"),
            Action::Wait => return JobOutcome::new(entry, Outcome::Retrying, first),
            Action::Blocked => return JobOutcome::new(entry, Outcome::Blocked, first),
            Action::Adopt => {
                return match revision.desired().jobs.get(&entry.job_id) {
                    Some(job) => self
                        .adopt(entry, job, revision, instance)
                        .await
                        .unwrap_or_else(|error| self.on_error(pass, entry, error)),
                    None => JobOutcome::new(entry, Outcome::Failed, "no spec to adopt"),
                };
            }
            Action::Update => {
                return match (revision.desired().jobs.get(&entry.job_id), record) {
                    (Some(job), Some(record)) => self
                        .update_in_place(pass, entry, job, revision, record)
                        .unwrap_or_else(|error| self.on_error(pass, entry, error)),
                    _ => JobOutcome::new(entry, Outcome::Failed, "no spec or record to update"),
                };
            }
            Action::Continue => {}
            Action::Create
            | Action::Upgrade
            | Action::Restart
            | Action::Resume
            | Action::Suspend
            | Action::Delete => {
                info!(action = entry.action.as_str(), reasons = ?entry.reasons, "starting");
                if let Err(error) = self
                    .begin_operation(pass, entry, revision, record, instance)
                    .await
                {
                    return self.on_error(pass, entry, error);
                }
            }
        }
        self.run_phases(pass, entry).await
    }

    /// Records a spec whose changes the running job does not use (alerts, periodic savepoints,
    /// the health gate): the record and its redeployable deployment move to the new revision,
    /// nothing is sent to Flink.
    fn update_in_place(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        job: &crate::spec::DesiredJob,
        revision: &VerifiedRevision,
        mut record: JobRecord,
    ) -> Result<JobOutcome, StepError> {
        let deployment = self.deployment_for(job, revision)?;
        let intent = self.intent(
            &pass.head,
            &entry.job_id,
            AuditAction::Update,
            json!({"changes": entry.reasons, "from_commit": record.commit_id, "spec_hash": deployment.spec_hash}),
        )?;
        record.spec_json = deployment.spec_json.clone();
        record.spec_hash = deployment.spec_hash.clone();
        record.commit_id = pass.head.clone();
        record.deployment_json = Some(
            serde_json::to_string(&deployment)
                .map_err(|e| StepError::permanent(format!("internal: {e}")))?,
        );
        self.with_store(|s| s.put_job(&record))?;
        self.outcome(
            AuditAction::Update,
            intent,
            "ok",
            json!({"flink_job_id": record.flink_job_id}),
        )?;
        info!(changes = ?entry.reasons, "updated in place");
        Ok(JobOutcome::new(
            entry,
            Outcome::Ok,
            format!(
                "updated in place, no restart: {} runs on",
                record.flink_job_id.as_deref().unwrap_or("the job")
            ),
        ))
    }

    /// Records the first phase of the operation the plan decided (and its audit intent).
    async fn begin_operation(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
        instance: Option<JobOverview>,
    ) -> Result<(), StepError> {
        let job_id = &entry.job_id;
        let last_good: Option<Deployment> = record.as_ref().and_then(|r| {
            r.deployment_json
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
        });
        let kind = match entry.action {
            Action::Create => OpKind::Create,
            Action::Upgrade => OpKind::Upgrade,
            Action::Restart => OpKind::Restart,
            Action::Resume => OpKind::Resume,
            Action::Suspend => OpKind::Suspend,
            Action::Delete => OpKind::Delete,
            other => {
                return Err(StepError::permanent(format!(
                    "{} starts no operation",
                    other.as_str()
                )));
            }
        };
        let desired = revision.desired().jobs.get(job_id);
        let target =
            match kind {
                OpKind::Create | OpKind::Upgrade | OpKind::Resume => {
                    let job = desired.ok_or_else(|| StepError::permanent("no spec for the job"))?;
                    Some(self.deployment_for(job, revision)?)
                }
                OpKind::Restart => Some(last_good.clone().ok_or_else(|| {
                    StepError::permanent("no recorded deployment to restart from")
                })?),
                _ => None,
            };
        if let Some(target) = &target {
            // The new JAR is checked and uploaded, and the submission's needs checked, before the
            // running job is touched.
            self.preflight(pass, target)?;
            self.ensure_jar(&pass.head, target).await?;
        }
        let alive = instance.as_ref().filter(|i| is_alive(&i.state));
        // A create starts a new lineage: a deleted job of the same id does not pass its state on.
        let recorded_instance = record
            .as_ref()
            .filter(|r| r.status != "new" && kind != OpKind::Create)
            .and_then(|r| r.flink_job_id.clone());
        let predecessor = alive.map(|i| i.jid.clone()).or(recorded_instance);
        let start_empty = self
            .with_store(|s| s.meta(&start_empty_key(job_id)))?
            .is_some_and(|by| !by.is_empty());
        let mode = target
            .as_ref()
            .or(last_good.as_ref())
            .map(|d| d.upgrade_mode)
            .unwrap_or(UpgradeMode::Savepoint);
        let op = Operation {
            kind,
            head: pass.head.clone(),
            empty_state_allowed: kind == OpKind::Create
                || predecessor.is_none() && record.as_ref().is_none_or(|r| r.status == "new")
                || mode == UpgradeMode::Stateless
                || start_empty,
            target,
            predecessor: predecessor.clone(),
            restore_hint: None,
            failure: None,
            rejected_spec_hash: None,
            audit_intent: None,
            desired_spec_hash: desired.map(|job| job.spec_hash()),
            revision_rollback: None,
        };
        let has_checkpoint = match (alive, mode, kind) {
            (Some(running), UpgradeMode::LastState, OpKind::Upgrade) => self
                .client
                .checkpoints(&running.jid)
                .await
                .map(|c| c.counts.completed > 0)
                .map_err(StepError::from)?,
            _ => false,
        };
        let savepoint_dir = op
            .target
            .as_ref()
            .or(last_good.as_ref())
            .map(|d| d.savepoint_dir.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}/{job_id}",
                    self.config.flink.savepoint_dir.trim_end_matches('/')
                )
            });
        let stop = match alive {
            Some(running) => stop_method(
                &op,
                mode,
                has_checkpoint,
                new_trigger_id(&running.jid),
                savepoint_dir,
            ),
            // Nothing runs: the predecessor's state is chosen without stopping anything.
            None => StopMethod::Cancel,
        };
        let mut op = op;
        let head = pass.head.clone();
        self.with_store(|s| {
            s.atomically(|s| {
                let mut row = s.job(job_id)?.unwrap_or_else(|| JobRecord {
                    job_id: job_id.clone(),
                    commit_id: head.clone(),
                    status: "new".into(),
                    ..JobRecord::default()
                });
                let intent = s.audit_intent(
                    Some(&head),
                    Some(job_id),
                    kind.audit_action(),
                    &json!({
                        "predecessor": op.predecessor,
                        "spec_hash": op.target.as_ref().map(|t| &t.spec_hash),
                        "commit": op.target.as_ref().map(|t| &t.commit),
                        "reasons": entry.reasons,
                    })
                    .to_string(),
                )?;
                op.audit_intent = Some(intent);
                if start_empty {
                    s.remove_meta(&start_empty_key(job_id))?;
                }
                let first = match begin(op.clone(), stop.clone()) {
                    // A new job the spec gives a state to start from (`restore_from`).
                    Phase::Stopped { op, restore: None } if op.kind == OpKind::Create => {
                        let restore = op.target.as_ref().and_then(|t| t.restore_from.clone());
                        Phase::Stopped { op, restore }
                    }
                    other => other,
                };
                set_phase(&mut row, &first);
                s.put_job(&row)
            })
        })?;
        Ok(())
    }

    /// Walks the recorded phases of a job until it is steady, blocked or must wait.
    pub(super) async fn run_phases(&self, pass: &PassContext, entry: &JobPlan) -> JobOutcome {
        let job_id = &entry.job_id;
        let mut outcome = JobOutcome::new(entry, Outcome::Ok, "");
        for _ in 0..MAX_STEPS {
            let record = match self.with_store(|s| s.job(job_id)) {
                Ok(Some(record)) => record,
                Ok(None) => return JobOutcome::new(entry, Outcome::Failed, "no record of the job"),
                Err(error) => return JobOutcome::new(entry, Outcome::Failed, error.to_string()),
            };
            let phase = Phase::of_record(&record);
            outcome.phase = phase.name().to_string();
            match &phase {
                Phase::Steady => {
                    if outcome.message.is_empty() {
                        outcome.message = "steady".into();
                    }
                    return outcome;
                }
                Phase::Blocked { reason, unblock } => {
                    outcome.outcome = Outcome::Blocked;
                    outcome.message = format!("{reason} (unblock: {unblock})");
                    return outcome;
                }
                Phase::Stopped { .. } | Phase::Submitted { .. }
                    if record.retry_at_ms.is_some_and(|at| at > now_ms()) =>
                {
                    outcome.outcome = Outcome::Retrying;
                    outcome.message = format!(
                        "{}; tried again in {:.1} s",
                        record.last_error.as_deref().unwrap_or("failed"),
                        (record.retry_at_ms.unwrap_or_default() - now_ms()) as f64 / 1000.0
                    );
                    return outcome;
                }
                _ => {}
            }
            if self.shutdown.is_cancelled() {
                outcome.outcome = Outcome::Retrying;
                outcome.message = format!(
                    "shutting down; the next start continues from: {}",
                    phase.describe()
                );
                return outcome;
            }
            let (seen, stray) = self.observe(pass, &record, &phase).await;
            let step = next_step(&phase, &seen);
            debug!(phase = %phase.describe(), ?seen, ?step, "lifecycle step");
            if let Err(error) = self
                .execute(pass, record, phase, step, stray, &mut outcome)
                .await
            {
                let mut failed = self.on_error(pass, entry, error);
                if failed.savepoint.is_none() {
                    failed.savepoint = outcome.savepoint.clone();
                }
                return failed;
            }
        }
        self.on_error(
            pass,
            entry,
            StepError::transient(format!(
                "did not settle within {MAX_STEPS} steps; continues next pass"
            )),
        )
    }

    /// What Flink says about the instance `phase` concerns; for `Stopped`, about any live
    /// instance of the job (returned too, so it can be stopped).
    async fn observe(
        &self,
        pass: &PassContext,
        record: &JobRecord,
        phase: &Phase,
    ) -> (Seen, Option<String>) {
        if let Phase::Stopped { .. } = phase {
            // Asked one by one (not by listing every job of the cluster): the instances that were
            // alive when the pass began, and the newest one this agent submitted.
            let mut suspects: Vec<String> = pass
                .instances_of(&record.job_id)
                .iter()
                .filter(|j| is_alive(&j.state))
                .map(|j| j.jid.clone())
                .collect();
            if record.generation > 0 {
                suspects.push(flink_job_id(&record.job_id, record.generation));
            }
            suspects.dedup();
            for jid in suspects {
                match self.client.job(&jid).await {
                    Ok(detail) if is_alive(&detail.state) => {
                        return (Seen::of_state(&detail.state), Some(jid));
                    }
                    Ok(_) => {}
                    Err(error) if error.is_not_found() => {}
                    Err(error) => return (Seen::Unreachable(error.to_string()), None),
                }
            }
            return (Seen::Missing, None);
        }
        let Some(jid) = phase.instance() else {
            return (Seen::Missing, None);
        };
        match self.client.job(jid).await {
            Ok(detail) => (Seen::of_state(&detail.state), None),
            Err(error) if error.is_not_found() => (Seen::Missing, None),
            Err(error) => (Seen::Unreachable(error.to_string()), None),
        }
    }

    async fn execute(
        &self,
        pass: &PassContext,
        record: JobRecord,
        phase: Phase,
        step: Step,
        stray: Option<String>,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let job_id = record.job_id.clone();
        match (step, phase) {
            (Step::Idle | Step::Blocked, _) => Ok(()),
            (Step::Wait(why), _) if why.starts_with("Flink unreachable") => {
                Err(StepError::transient(why))
            }
            (Step::Wait(_), _) => {
                tokio::time::sleep(CANCELLING_POLL).await;
                Ok(())
            }
            (
                Step::AwaitSavepoint,
                Phase::Stopping {
                    op,
                    flink_job_id,
                    stop:
                        StopMethod::Savepoint {
                            trigger_id,
                            target_dir,
                        },
                },
            ) => {
                // The savepoint is recorded the moment Flink names it, before anything else.
                let stop_and_record = async {
                    let location = self
                        .poll_stop(&flink_job_id, &target_dir, &trigger_id)
                        .await?;
                    self.with_store(|s| {
                        s.put_restore_point(&job_id, &location, true, Some(&flink_job_id), now_ms())
                    })?;
                    Ok(location)
                };
                let location = self
                    .audited(
                        &pass.head,
                        &job_id,
                        AuditAction::Stop,
                        json!({"flink_job_id": flink_job_id, "trigger_id": trigger_id, "target": target_dir, "operation": op.kind}),
                        stop_and_record,
                        |location| json!({"savepoint": location}),
                    )
                    .await?;
                info!(savepoint = %location, flink_job_id = %flink_job_id, "stopped with savepoint");
                outcome.savepoint = Some(location);
                self.wait_terminal(&flink_job_id).await;
                Ok(())
            }
            (
                Step::Cancel,
                Phase::Stopping {
                    op, flink_job_id, ..
                },
            ) => {
                // Only a last good instance's state is worth restoring; a failed submission's is not.
                if op.predecessor.as_deref() == Some(flink_job_id.as_str()) {
                    self.record_newest_checkpoint(&job_id, &flink_job_id).await;
                }
                self.cancel(&pass.head, &job_id, &flink_job_id).await
            }
            (
                Step::ChooseState,
                Phase::Stopping {
                    op,
                    flink_job_id,
                    stop,
                },
            ) => {
                self.choose_state(pass, record, op, &flink_job_id, &stop, outcome)
                    .await
            }
            (Step::StopStray(state), Phase::Stopped { op, .. }) => {
                let Some(jid) = stray else {
                    return Err(StepError::transient(
                        "a live instance vanished while looked at",
                    ));
                };
                warn!(flink_job_id = %jid, %state, "an instance of ours runs though the job is stopped; stopping it first");
                self.store_phase(
                    &job_id,
                    &Phase::Stopping {
                        op,
                        flink_job_id: jid,
                        stop: StopMethod::Cancel,
                    },
                )
            }
            (Step::Finish, Phase::Stopped { op, restore }) => {
                self.finish(record, op, restore, outcome)
            }
            (Step::Submit, Phase::Stopped { op, restore }) => {
                self.submit_new(pass, record, op, restore, outcome).await
            }
            (
                Step::Resubmit,
                Phase::Submitted { op, submission } | Phase::Verifying { op, submission },
            ) => {
                let again = Submission {
                    submitted_at_ms: now_ms(),
                    ..submission
                };
                self.send_submission(pass, record, op, again, outcome).await
            }
            (
                Step::Verify,
                Phase::Submitted { op, submission } | Phase::Verifying { op, submission },
            ) => self.verify(pass, record, op, submission, outcome).await,
            (
                Step::Unhealthy(reason),
                Phase::Submitted { op, submission } | Phase::Verifying { op, submission },
            ) => {
                let root_cause = super::health::newest_failure(
                    &self.client,
                    &submission.flink_job_id,
                    submission.submitted_at_ms,
                )
                .await;
                let failure = Failure {
                    reason: format!("{} {reason}", submission.flink_job_id),
                    root_cause,
                };
                self.failed_submission(pass, record, op, submission, failure, outcome)
            }
            (step, phase) => Err(StepError::permanent(format!(
                "internal: step {step:?} does not apply to phase {}",
                phase.describe()
            ))),
        }
    }

    fn store_phase(&self, job_id: &str, phase: &Phase) -> Result<(), StepError> {
        self.with_store(|s| {
            let mut row = s.job(job_id)?.unwrap_or_default();
            set_phase(&mut row, phase);
            s.put_job(&row)
        })?;
        Ok(())
    }

    /// Remembers the newest retained checkpoint of an instance that is about to be cancelled.
    async fn record_newest_checkpoint(&self, job_id: &str, flink_job_id: &str) {
        if let Ok(stats) = self.client.checkpoints(flink_job_id).await
            && let Some(completed) = stats.latest.completed
            && let Some(path) = completed.external_path
        {
            let _ = self.with_store(|s| {
                s.put_restore_point(
                    job_id,
                    &path,
                    false,
                    Some(flink_job_id),
                    completed.latest_ack_timestamp,
                )
            });
        }
    }

    /// Every place the state of `op`'s predecessor may be, with the paths Flink says are gone.
    async fn state_candidates(
        &self,
        pass: &PassContext,
        record: &JobRecord,
        op: &Operation,
        stopped: &str,
        stop: &StopMethod,
    ) -> Result<(Vec<Candidate>, BTreeSet<String>), StepError> {
        let job_id = &record.job_id;
        let mut candidates = Vec::new();
        let mut unusable = BTreeSet::new();
        if op.revision_rollback.is_some() && op.kind == OpKind::Rollback {
            // Undoing a revision restores the state its upgrade started from, or nothing: any
            // newer state is the undone version's.
            for point in self.with_store(|s| s.restore_points(job_id))? {
                if point.unusable.is_some() {
                    unusable.insert(restore::normalize(&point.path));
                }
            }
            if let Some(hint) = &op.restore_hint {
                candidates.push(Candidate {
                    path: hint.clone(),
                    taken_at_ms: 0,
                    savepoint: true,
                    source: Source::Hint,
                });
            }
            return Ok((candidates, unusable));
        }
        let predecessor = op.predecessor.as_deref();
        if let (StopMethod::Savepoint { trigger_id, .. }, Some(pred)) = (stop, predecessor)
            && pred == stopped
            && let Ok(poll) = self.client.savepoint_status(stopped, trigger_id).await
            && let Some(location) = poll.operation.and_then(|o| o.location)
        {
            candidates.push(Candidate {
                path: location,
                taken_at_ms: now_ms(),
                savepoint: true,
                source: Source::StopTrigger,
            });
        }
        if let Some(pred) = predecessor {
            match self.client.checkpoints(pred).await {
                Ok(stats) => {
                    let (offered, discarded) = restore::from_checkpoint_stats(&stats);
                    for path in discarded {
                        self.with_store(|s| s.mark_unusable(job_id, &path, "Flink discarded it"))?;
                    }
                    candidates.extend(offered);
                }
                // Flink forgot the job (a JobManager restart): storage and records still know.
                Err(error) if error.is_not_found() => {}
                // Choosing from part of the truth could restore an older state: wait instead.
                Err(error) => return Err(error.into()),
            }
            let checkpoint_dir = op
                .target
                .as_ref()
                .and_then(|t| {
                    t.flink_configuration
                        .get("execution.checkpointing.dir")
                        .or_else(|| t.flink_configuration.get("state.checkpoints.dir"))
                        .cloned()
                })
                .or_else(|| pass.checkpoint_dir.clone());
            if let Some(dir) = checkpoint_dir
                && let Some(found) = restore::scan_checkpoint_storage(&dir, pred)
            {
                candidates.push(found);
            }
        }
        let mut savepoint_dirs: Vec<&str> = Vec::new();
        if let StopMethod::Savepoint { target_dir, .. } = stop {
            savepoint_dirs.push(target_dir);
        }
        if let Some(target) = &op.target {
            savepoint_dirs.push(&target.savepoint_dir);
        }
        savepoint_dirs.dedup();
        if let Some(pred) = predecessor {
            for dir in savepoint_dirs {
                if let Some(found) = restore::scan_savepoint_storage(dir, pred) {
                    candidates.push(found);
                }
            }
        }
        let recorded = self.with_store(|s| s.restore_points(job_id))?;
        for point in &recorded {
            if let Some(why) = &point.unusable {
                debug!(path = %point.path, %why, "not restorable");
                unusable.insert(restore::normalize(&point.path));
            } else {
                candidates.push(Candidate {
                    path: point.path.clone(),
                    taken_at_ms: point.taken_at_ms,
                    savepoint: point.savepoint,
                    source: Source::Recorded,
                });
            }
        }
        if let Some(path) = &record.last_savepoint
            && !candidates.iter().any(|c| restore::same_path(&c.path, path))
        {
            candidates.push(Candidate {
                path: path.clone(),
                taken_at_ms: 0,
                savepoint: path.contains("savepoint-"),
                source: Source::Recorded,
            });
        }
        if let Some(hint) = &op.restore_hint {
            let taken = candidates
                .iter()
                .filter(|c| restore::same_path(&c.path, hint))
                .map(|c| c.taken_at_ms)
                .max()
                .unwrap_or(0);
            candidates.push(Candidate {
                path: hint.clone(),
                taken_at_ms: taken,
                savepoint: true,
                source: Source::Hint,
            });
        }
        Ok((candidates, unusable))
    }

    /// The predecessor is gone: choose the state the next instance starts from, or block.
    async fn choose_state(
        &self,
        pass: &PassContext,
        record: JobRecord,
        op: Operation,
        stopped: &str,
        stop: &StopMethod,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let job_id = record.job_id.clone();
        let stateless = op
            .target
            .as_ref()
            .is_some_and(|t| t.upgrade_mode == UpgradeMode::Stateless);
        if op.kind == OpKind::Discard || (stateless && op.kind != OpKind::Suspend) {
            return self.store_phase(&job_id, &Phase::Stopped { op, restore: None });
        }
        let (candidates, unusable) = self
            .state_candidates(pass, &record, &op, stopped, stop)
            .await?;
        match restore::choose(&candidates, &unusable) {
            Some(chosen) => {
                info!(path = %chosen.path, source = chosen.source.as_str(), candidates = candidates.len(), "state chosen");
                self.with_store(|s| {
                    s.atomically(|s| {
                        s.put_restore_point(
                            &job_id,
                            &chosen.path,
                            chosen.savepoint,
                            op.predecessor.as_deref(),
                            chosen.taken_at_ms,
                        )?;
                        let intent = s.audit_intent(
                            Some(&pass.head),
                            Some(&job_id),
                            AuditAction::ChooseState,
                            &json!({"operation": op.kind, "predecessor": op.predecessor}).to_string(),
                        )?;
                        s.audit_outcome(
                            intent,
                            "ok",
                            &json!({"savepoint": chosen.path, "source": chosen.source, "candidates": candidates.len()}).to_string(),
                        )?;
                        let mut row = s.job(&job_id)?.unwrap_or_default();
                        set_phase(
                            &mut row,
                            &Phase::Stopped {
                                op: op.clone(),
                                restore: Some(chosen.path.clone()),
                            },
                        );
                        s.put_job(&row)
                    })
                })?;
                outcome.savepoint = Some(chosen.path);
                Ok(())
            }
            None if op.empty_state_allowed
                || matches!(op.kind, OpKind::Suspend | OpKind::Delete) =>
            {
                self.store_phase(&job_id, &Phase::Stopped { op, restore: None })
            }
            None => {
                let tried = if unusable.is_empty() {
                    "no savepoint or retained checkpoint of it is known".to_string()
                } else {
                    format!(
                        "every known one is gone: {}",
                        unusable.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                let reason = format!(
                    "no restorable state for the next instance of {job_id} (it continues {}): {tried}; a stateful job is never started empty",
                    op.predecessor.as_deref().unwrap_or("no instance")
                );
                let unblock = format!(
                    "a commit that sets `upgrade_mode: stateless`, or `flink-gitops retry {job_id} --start-empty` to start it empty once"
                );
                self.block(&pass.head, &job_id, &op, reason, unblock, outcome)
            }
        }
    }

    /// Records `Blocked` and closes the operation's audit intent.
    fn block(
        &self,
        head: &str,
        job_id: &str,
        op: &Operation,
        reason: String,
        unblock: String,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        warn!(%reason, "blocked");
        let rejected = op.blocked_spec_hash();
        self.with_store(|s| {
            s.atomically(|s| {
                let mut row = s.job(job_id)?.unwrap_or_default();
                set_phase(
                    &mut row,
                    &Phase::Blocked {
                        reason: reason.clone(),
                        unblock: unblock.clone(),
                    },
                );
                row.rejected_spec_hash = rejected.clone().or(row.rejected_spec_hash.clone());
                row.last_error = Some(reason.clone());
                row.retry_at_ms = None;
                s.put_job(&row)?;
                let intent = s.audit_intent(
                    Some(head),
                    Some(job_id),
                    AuditAction::Blocked,
                    &json!({"reason": reason, "unblock": unblock}).to_string(),
                )?;
                s.audit_outcome(intent, "blocked", "{}")?;
                if let Some(opened) = op.audit_intent {
                    s.audit_outcome(opened, "blocked", &json!({"reason": reason}).to_string())?;
                }
                Ok(())
            })
        })?;
        outcome.outcome = Outcome::Blocked;
        outcome.root_cause = op.failure.as_ref().and_then(|f| f.root_cause.clone());
        Ok(())
    }

    /// An operation that starts nothing ends: suspended, deleted, or (a discarded submission) blocked.
    fn finish(
        &self,
        record: JobRecord,
        op: Operation,
        restore: Option<String>,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let job_id = record.job_id.clone();
        match op.kind {
            OpKind::Suspend | OpKind::Delete => {
                let status = if op.kind == OpKind::Suspend {
                    "suspended"
                } else {
                    "deleted"
                };
                self.with_store(|s| {
                    s.atomically(|s| {
                        let mut row = s.job(&job_id)?.unwrap_or_default();
                        if restore.is_some() {
                            row.last_savepoint = restore.clone();
                        }
                        row.status = status.into();
                        row.commit_id = op.head.clone();
                        set_phase(&mut row, &Phase::Steady);
                        row.failures = 0;
                        row.permanent_failures = 0;
                        row.retry_at_ms = None;
                        row.last_error = None;
                        s.put_job(&row)?;
                        if let Some(opened) = op.audit_intent {
                            s.audit_outcome(
                                opened,
                                "ok",
                                &json!({"status": status, "savepoint": row.last_savepoint})
                                    .to_string(),
                            )?;
                        }
                        Ok(())
                    })
                })?;
                outcome.message = match &restore {
                    Some(path) => format!("{status}; its state is kept in {path}"),
                    None => format!("{status}; it was not running and no state was found to keep"),
                };
                outcome.savepoint = restore;
                info!(status, savepoint = ?outcome.savepoint, "recorded");
                Ok(())
            }
            _ => {
                let failure = op.failure.clone().unwrap_or(Failure {
                    reason: "the submission failed".into(),
                    root_cause: None,
                });
                outcome.message = failure.full();
                let unblock = format!(
                    "a commit that changes the spec of {job_id}, or `flink-gitops retry {job_id}`"
                );
                self.block(&op.head, &job_id, &op, failure.full(), unblock, outcome)
            }
        }
    }

    /// Records a new submission (the next generation) and sends it.
    async fn submit_new(
        &self,
        pass: &PassContext,
        record: JobRecord,
        op: Operation,
        restore: Option<String>,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let job_id = record.job_id.clone();
        if restore.is_none() && !op.empty_state_allowed {
            return self.block(
                &pass.head,
                &job_id,
                &op,
                format!("refusing to start {job_id} without state"),
                format!("`flink-gitops retry {job_id} --start-empty` starts it empty once"),
                outcome,
            );
        }
        // The step before (`Stopped` observed) found no live instance; ids are never reused, so
        // the next generation is past every id the cluster listed and every one recorded.
        let highest = pass
            .instances_of(&job_id)
            .iter()
            .map(|j| super::generation_of(&j.jid))
            .max()
            .unwrap_or(0);
        let generation = record.generation.max(highest) + 1;
        let submission = Submission {
            flink_job_id: flink_job_id(&job_id, generation),
            generation,
            restored_from: restore,
            submitted_at_ms: now_ms(),
        };
        self.with_store(|s| {
            let mut row = s.job(&job_id)?.unwrap_or_default();
            row.generation = generation;
            set_phase(
                &mut row,
                &Phase::Submitted {
                    op: op.clone(),
                    submission: submission.clone(),
                },
            );
            s.put_job(&row)
        })?;
        let record = self.with_store(|s| s.job(&job_id))?.unwrap_or(record);
        self.send_submission(pass, record, op, submission, outcome)
            .await
    }

    /// Sends a recorded submission; on success the job is `Verifying`.
    async fn send_submission(
        &self,
        pass: &PassContext,
        record: JobRecord,
        op: Operation,
        submission: Submission,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let job_id = record.job_id.clone();
        let target = op
            .target
            .clone()
            .ok_or_else(|| StepError::permanent("internal: nothing to submit"))?;
        let jar_id = self.ensure_jar(&pass.head, &target).await?;
        let (request, secret_values) = self.run_request_with_secrets(
            pass,
            &target,
            &submission.flink_job_id,
            submission.restored_from.as_deref(),
        )?;
        let intent = self.intent(
            &pass.head,
            &job_id,
            AuditAction::Submit,
            json!({"flink_job_id": submission.flink_job_id, "kind": op.kind, "restore": submission.restored_from, "jar_sha256": target.jar_sha256}),
        )?;
        let answer = self
            .run_jar_reuploading(&pass.head, &target, &jar_id, &request)
            .await?;
        match answer {
            Ok(returned) if returned == submission.flink_job_id => {
                self.outcome(
                    AuditAction::Submit,
                    intent,
                    "ok",
                    json!({"flink_job_id": returned}),
                )?;
                info!(flink_job_id = %returned, restore = ?submission.restored_from, "submitted");
                self.store_phase(&job_id, &Phase::Verifying { op, submission })
            }
            Ok(returned) => {
                self.outcome(
                    AuditAction::Submit,
                    intent,
                    "failed",
                    json!({"unexpected_job_id": returned}),
                )?;
                Err(StepError::permanent(format!(
                    "Flink returned job id {returned}, not the requested {}",
                    submission.flink_job_id
                )))
            }
            Err(error) if is_duplicate_submission(&error) => {
                // Flink has it already (an earlier send got through): look at it next step.
                self.outcome(
                    AuditAction::Submit,
                    intent,
                    "duplicate",
                    json!({"flink_job_id": submission.flink_job_id}),
                )?;
                Ok(())
            }
            Err(error) => {
                let step = StepError::from(error).redact_secrets(&secret_values);
                self.outcome(
                    AuditAction::Submit,
                    intent,
                    "failed",
                    json!({"error": step.message, "root_cause": step.root_cause, "class": step.class}),
                )?;
                if step.class == ErrorClass::Transient {
                    return Err(step);
                }
                let failure = Failure {
                    reason: format!("Flink refused to run {}", submission.flink_job_id),
                    root_cause: step.root_cause.clone().or(Some(step.message.clone())),
                };
                self.failed_submission(pass, record, op, submission, failure, outcome)
            }
        }
    }

    /// The health gate of a submission Flink runs; promotes it, or hands it to the failure policy.
    async fn verify(
        &self,
        pass: &PassContext,
        record: JobRecord,
        op: Operation,
        submission: Submission,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let job_id = record.job_id.clone();
        if record.phase != "verifying" {
            self.store_phase(
                &job_id,
                &Phase::Verifying {
                    op: op.clone(),
                    submission: submission.clone(),
                },
            )?;
        }
        let target = op
            .target
            .clone()
            .ok_or_else(|| StepError::permanent("internal: nothing to verify"))?;
        let intent = self.intent(
            &pass.head,
            &job_id,
            AuditAction::Health,
            json!({"flink_job_id": submission.flink_job_id}),
        )?;
        let verdict = super::health::wait_healthy(
            &self.client,
            &submission.flink_job_id,
            &target,
            submission.submitted_at_ms,
            self.config.reconcile.poll_interval,
            &self.shutdown,
        )
        .await;
        match verdict {
            super::health::Verdict::Healthy { checkpoints } => {
                self.outcome(
                    AuditAction::Health,
                    intent,
                    "ok",
                    json!({"checkpoints": checkpoints}),
                )?;
                self.promote(pass, op, submission, outcome).await
            }
            super::health::Verdict::Interrupted => {
                self.outcome(AuditAction::Health, intent, "interrupted", json!({}))?;
                Err(StepError::interrupted(format!(
                    "shutting down while {} waited for its health gate; the next start continues it",
                    submission.flink_job_id
                )))
            }
            super::health::Verdict::Unhealthy { reason, root_cause } => {
                self.outcome(
                    AuditAction::Health,
                    intent,
                    "failed",
                    json!({"reason": reason, "root_cause": root_cause}),
                )?;
                warn!(%reason, root_cause = ?root_cause, "deployment not healthy");
                let failure = Failure { reason, root_cause };
                self.failed_submission(pass, record, op, submission, failure, outcome)
            }
        }
    }

    /// A submission failed (unhealthy, or refused): a restore path Flink could not find is marked
    /// and the state chosen again; anything else goes to [`after_failed_submission`].
    fn failed_submission(
        &self,
        pass: &PassContext,
        record: JobRecord,
        op: Operation,
        submission: Submission,
        failure: Failure,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let job_id = record.job_id.clone();
        // Flink's words may quote the job's SQL or arguments back: they are recorded, so no value.
        let failure = Failure {
            reason: failure.reason,
            root_cause: failure
                .root_cause
                .map(|cause| self.redact_secrets_of(op.target.as_ref(), cause)),
        };
        let full = failure.full();
        // The spec's own `restore_from` is not chosen again when Flink cannot find it: the create
        // fails, never starts empty.
        let chosen_by_agent = !(op.kind == OpKind::Create
            && op.target.as_ref().is_some_and(|t| t.restore_from.is_some()));
        if let Some(path) = &submission.restored_from
            && chosen_by_agent
            && restore::is_missing_path_error(&full)
        {
            warn!(%path, "Flink cannot find the state; choosing again");
            let predecessor = op.predecessor.clone();
            self.with_store(|s| {
                s.atomically(|s| {
                    s.mark_unusable(&job_id, path, &full)?;
                    let mut row = s.job(&job_id)?.unwrap_or_default();
                    set_phase(
                        &mut row,
                        &Phase::Stopping {
                            flink_job_id: predecessor
                                .clone()
                                .unwrap_or_else(|| submission.flink_job_id.clone()),
                            op: Operation {
                                restore_hint: op
                                    .restore_hint
                                    .clone()
                                    .filter(|h| !restore::same_path(h, path)),
                                ..op.clone()
                            },
                            stop: StopMethod::Cancel,
                        },
                    );
                    s.put_job(&row)
                })
            })?;
            return Ok(());
        }
        let last_good: Option<Deployment> = record
            .deployment_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok());
        let (next, counts) = after_failed_submission(
            &op,
            &submission,
            last_good.as_ref(),
            failure.clone(),
            record.permanent_failures.max(0) as u32,
            self.config.reconcile.max_failures,
        );
        let head = pass.head.clone();
        let starts_revision_rollback = op.head == pass.head
            && op.revision_rollback.is_none()
            && matches!(op.kind, OpKind::Create | OpKind::Upgrade)
            && matches!(&next, Phase::Stopping { op: next_op, .. } if matches!(next_op.kind, OpKind::Rollback | OpKind::Discard))
            && pass.rollback_members.contains(&job_id);
        let retry_at = counts.then(|| {
            now_ms()
                + backoff(
                    record.failures.max(0) as u32 + 1,
                    self.config.reconcile.retry_base,
                    self.config.reconcile.retry_max,
                    now_ms() as u64,
                )
                .as_millis() as i64
        });
        self.with_store(|s| {
            s.atomically(|s| {
                let mut next = next.clone();
                if let Phase::Stopping { op: next_op, .. } = &mut next
                    && next_op.kind != op.kind
                {
                    if let Some(opened) = op.audit_intent {
                        s.audit_outcome(opened, "failed", &json!({"reason": full}).to_string())?;
                    }
                    let action = next_op.kind.audit_action();
                    let intent = s.audit_intent(
                        Some(&head),
                        Some(&job_id),
                        action,
                        &json!({
                            "to_commit": next_op.target.as_ref().map(|t| &t.commit),
                            "from_savepoint": submission.restored_from,
                            "reason": full,
                            "failed_flink_job_id": submission.flink_job_id,
                        })
                        .to_string(),
                    )?;
                    next_op.audit_intent = Some(intent);
                }
                let mut row = s.job(&job_id)?.unwrap_or_default();
                set_phase(&mut row, &next);
                row.last_error = Some(full.clone());
                if counts {
                    row.failures += 1;
                    row.permanent_failures += 1;
                    row.retry_at_ms = retry_at;
                }
                s.put_job(&row)?;
                // `rollback: revision`: this job's failure takes the revision's other jobs back
                // too; recorded with its own rollback, so a crash cannot separate the two.
                if starts_revision_rollback {
                    let members: Vec<String> = pass.rollback_members.iter().cloned().collect();
                    let reason = format!("{job_id} failed: {full}");
                    if s.start_revision_rollback(&head, &job_id, &reason, &members)?
                        .is_some()
                    {
                        warn!(revision = %head, %reason, "rolling back the whole revision");
                    }
                }
                Ok(())
            })
        })?;
        if starts_revision_rollback {
            super::failpoint("revision-rollback:started");
        }
        outcome.root_cause = failure.root_cause.clone();
        if let Phase::Stopping { op: next_op, .. } = &next
            && next_op.kind == OpKind::Rollback
        {
            warn!(to_commit = ?next_op.target.as_ref().map(|t| &t.commit), from = ?submission.restored_from, "rolling back to the last good spec");
        }
        Ok(())
    }

    /// The submission is healthy: it becomes the job's last good deployment.
    async fn promote(
        &self,
        pass: &PassContext,
        op: Operation,
        submission: Submission,
        outcome: &mut JobOutcome,
    ) -> Result<(), StepError> {
        let target = op
            .target
            .clone()
            .ok_or_else(|| StepError::permanent("internal: nothing to promote"))?;
        let job_id = target.job_id.clone();
        let earlier = (op.kind == OpKind::Upgrade)
            .then(|| self.earlier_commit_with(&job_id, &target.spec_hash))
            .flatten();
        let intent = self.intent(
            &op.head,
            &job_id,
            AuditAction::Promote,
            json!({"flink_job_id": submission.flink_job_id, "spec_hash": target.spec_hash, "commit": target.commit, "savepoint": submission.restored_from}),
        )?;
        let member = pass.rollback_members.contains(&job_id);
        self.with_store(|s| {
            s.atomically(|s| {
                let mut row = s.job(&job_id)?.unwrap_or_default();
                if matches!(op.kind, OpKind::Create | OpKind::Upgrade | OpKind::Resume) {
                    // What this revision changed, so that a revision rollback can undo it; a job
                    // arriving while its revision is rolled back is undone with the others.
                    let create = op.kind == OpKind::Create;
                    let rolling_back = member && s.revision_rollback(&op.head)?.is_some();
                    s.record_revision_change(&crate::state::RevisionChange {
                        commit_id: op.head.clone(),
                        job_id: job_id.clone(),
                        kind: op.kind.as_str().to_string(),
                        spec_hash: target.spec_hash.clone(),
                        flink_job_id: submission.flink_job_id.clone(),
                        previous_flink_job_id: op.predecessor.clone().filter(|_| !create),
                        previous_deployment_json: row.deployment_json.clone().filter(|_| !create),
                        previous_commit: (!create).then(|| row.commit_id.clone()),
                        restored_from: submission.restored_from.clone(),
                        rollback_state: rolling_back.then(|| "pending".to_string()),
                    })?;
                }
                let jar = s.jar(&target.jar_sha256)?;
                row.job_id = job_id.clone();
                row.spec_json = target.spec_json.clone();
                row.spec_hash = target.spec_hash.clone();
                row.commit_id = target.commit.clone();
                row.flink_job_id = Some(submission.flink_job_id.clone());
                row.generation = row.generation.max(submission.generation);
                row.jar_id = jar.map(|j| j.jar_id);
                row.jar_sha256 = Some(target.jar_sha256.clone());
                if submission.restored_from.is_some() {
                    row.last_savepoint = submission.restored_from.clone();
                }
                row.status = "running".into();
                row.deployment_json = serde_json::to_string(&target).ok();
                row.pending_json = None;
                set_phase(&mut row, &Phase::Steady);
                row.failures = 0;
                row.permanent_failures = 0;
                row.retry_at_ms = None;
                if op.kind == OpKind::Rollback {
                    row.rejected_spec_hash = op.rejected_spec_hash.clone();
                    row.last_error = op.failure.as_ref().map(Failure::full);
                } else {
                    row.rejected_spec_hash = None;
                    row.last_error = None;
                }
                s.put_job(&row)?;
                if let Some(opened) = op.audit_intent {
                    s.audit_outcome(
                        opened,
                        "ok",
                        &json!({"flink_job_id": submission.flink_job_id}).to_string(),
                    )?;
                }
                Ok(())
            })
        })?;
        self.outcome(
            AuditAction::Promote,
            intent,
            "ok",
            json!({"status": "running"}),
        )?;
        self.record_newest_checkpoint(&job_id, &submission.flink_job_id)
            .await;
        outcome.flink_job_id = Some(submission.flink_job_id.clone());
        outcome.savepoint = submission.restored_from.clone();
        outcome.warnings = self
            .effective_config_warnings(&target, &submission.flink_job_id, pass.default_parallelism)
            .await;
        let from = submission.restored_from.as_deref().unwrap_or("no state");
        outcome.message = match op.kind {
            OpKind::Create => format!("deployed as {}", submission.flink_job_id),
            OpKind::Upgrade => format!("upgraded to {} from {from}", submission.flink_job_id),
            OpKind::Resume => format!("resumed as {} from {from}", submission.flink_job_id),
            OpKind::Restart => format!("restarted as {} from {from}", submission.flink_job_id),
            OpKind::Rollback if op.revision_rollback.is_some() => {
                outcome.outcome = Outcome::RolledBack;
                format!(
                    "{}: back on commit {} as {} from {from}",
                    op.failure
                        .as_ref()
                        .map_or("the revision was rolled back", |f| f.reason.as_str()),
                    crate::spec::source::short_id(&target.commit),
                    submission.flink_job_id
                )
            }
            OpKind::Rollback => {
                let failure = op.failure.clone().unwrap_or(Failure {
                    reason: "the upgrade failed".into(),
                    root_cause: None,
                });
                outcome.outcome = Outcome::RolledBack;
                outcome.root_cause = failure.root_cause.clone();
                format!(
                    "upgrade failed ({}); rolled back to commit {} as {} from {from}",
                    failure.reason,
                    crate::spec::source::short_id(&target.commit),
                    submission.flink_job_id
                )
            }
            OpKind::Suspend | OpKind::Delete | OpKind::Discard => {
                format!("{} as {}", op.kind.as_str(), submission.flink_job_id)
            }
        };
        if let Some(commit) = earlier {
            outcome.message = format!(
                "{} (a rollback: this spec ran before, from commit {})",
                outcome.message,
                crate::spec::source::short_id(&commit)
            );
            let intent = self.intent(
                &op.head,
                &job_id,
                AuditAction::RollbackByRevert,
                json!({"to_commit": commit}),
            )?;
            self.outcome(
                AuditAction::RollbackByRevert,
                intent,
                "ok",
                json!({"flink_job_id": submission.flink_job_id}),
            )?;
        }
        info!(flink_job_id = %submission.flink_job_id, "healthy; promoted");
        Ok(())
    }

    /// The one error policy: transient failures requeue the job with backoff (its phase stays),
    /// permanent ones count toward `reconcile.max_failures` and then block it.
    pub(super) fn on_error(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        error: StepError,
    ) -> JobOutcome {
        let job_id = &entry.job_id;
        let mut outcome = JobOutcome::new(entry, Outcome::Retrying, error.full());
        outcome.root_cause = error.root_cause.clone();
        if error.interrupted {
            return outcome;
        }
        let record = match self.with_store(|s| s.job(job_id)) {
            Ok(Some(record)) => record,
            // A job that failed before its first phase was recorded still gets its backoff.
            Ok(None) => JobRecord {
                job_id: job_id.clone(),
                commit_id: pass.head.clone(),
                status: "new".into(),
                ..JobRecord::default()
            },
            Err(state) => {
                outcome.outcome = Outcome::Failed;
                outcome.message = format!("{}; and recording it failed: {state}", error.full());
                return outcome;
            }
        };
        let phase = Phase::of_record(&record);
        let failures = record.failures.max(0) as u32 + 1;
        let delay = backoff(
            failures,
            self.config.reconcile.retry_base,
            self.config.reconcile.retry_max,
            now_ms() as u64 ^ u64::from(std::process::id()),
        );
        let counts = error.class != ErrorClass::Transient;
        let permanent = record.permanent_failures.max(0) as u32 + u32::from(counts);
        let limit = self.config.reconcile.max_failures;
        let op = phase.operation().cloned();
        let result = self.with_store(|s| {
            s.atomically(|s| {
                let mut row = s.job(job_id)?.unwrap_or_else(|| record.clone());
                row.failures = i64::from(failures);
                row.permanent_failures = i64::from(permanent);
                row.last_error = Some(error.full());
                row.retry_at_ms = Some(now_ms() + delay.as_millis() as i64);
                if counts && permanent >= limit {
                    let reason = format!(
                        "{} failed {permanent} time(s) in a row: {}",
                        op.as_ref().map_or("reconciling", |op| op.kind.as_str()),
                        error.full()
                    );
                    let unblock = format!(
                        "a commit that changes the spec of {job_id}, or `flink-gitops retry {job_id}`"
                    );
                    if let Some(opened) = op.as_ref().and_then(|op| op.audit_intent) {
                        s.audit_outcome(opened, "blocked", &json!({"reason": reason}).to_string())?;
                    }
                    row.rejected_spec_hash = op
                        .as_ref()
                        .and_then(Operation::blocked_spec_hash)
                        .or(row.rejected_spec_hash.take());
                    set_phase(&mut row, &Phase::Blocked { reason, unblock });
                    row.retry_at_ms = None;
                } else if counts && matches!(phase, Phase::Stopping { stop: StopMethod::Savepoint { .. }, .. }) {
                    // Flink could not take the savepoint: the old job keeps running, and the
                    // operation starts over (with a new trigger) after the backoff.
                    if let Some(opened) = op.as_ref().and_then(|op| op.audit_intent) {
                        s.audit_outcome(opened, "failed", &json!({"reason": error.full()}).to_string())?;
                    }
                    set_phase(&mut row, &Phase::Steady);
                }
                s.put_job(&row)?;
                Ok(row)
            })
        });
        match result {
            Ok(row) => {
                outcome.phase = row.phase.clone();
                if row.phase == "blocked" {
                    outcome.outcome = Outcome::Blocked;
                    outcome.message = Phase::of_record(&row).describe();
                } else {
                    outcome.message = format!(
                        "{}; tried again in {:.1} s (failure {failures}{})",
                        error.full(),
                        delay.as_secs_f64(),
                        if counts {
                            format!(", {permanent} of {limit} before the job is blocked")
                        } else {
                            String::new()
                        }
                    );
                }
                warn!(error = %error.full(), class = ?error.class, failures, phase = %row.phase, head = %pass.head, "step failed");
            }
            Err(state) => {
                outcome.outcome = Outcome::Failed;
                outcome.message = format!("{}; and recording it failed: {state}", error.full());
            }
        }
        outcome
    }
}
