//! `rollback: revision`: when a job of a revision fails its health gate, every job that revision
//! changed and that takes part goes back to where it was, downstream first.
//!
//! The failed job's own rollback starts the revision's (in the transaction that records it, see
//! `failed_submission`); each promoted change of the revision was recorded with what it replaced
//! (`state::rollbacks`). Here each change is undone in [`order::rollback_waves`]: an upgrade runs
//! its previous deployment again from exactly the state the upgrade started from, a create is
//! removed (stopped with a savepoint that is kept), a resume is suspended again. A step is
//! `begun` in the transaction that records the job's first phase, and every phase is the ordinary
//! lifecycle's, so a crash anywhere is continued by the next pass; the revision-level audit
//! outcome is written once every step settled.

use std::collections::BTreeSet;

use futures::StreamExt;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::executor::set_phase;
use super::lifecycle::{Failure, OpKind, Operation, Phase, StopMethod};
use super::{Agent, Deployment, JobOutcome, Outcome, PassContext, StepError, new_trigger_id};
use crate::plan::order::{self, Graph};
use crate::plan::{Action, JobPlan};
use crate::spec::UpgradeMode;
use crate::spec::source::short_id;
use crate::state::{JobRecord, RevisionChange, RevisionRollback};

/// What became of one change of a revision being rolled back.
enum Step {
    /// Its rollback phase is recorded (now or before); it is driven until it settles.
    Begun,
    /// Nothing to undo: the job moved on, or nothing is known to go back to.
    Skipped(String),
    /// The job has an operation of its own in flight: the rollback waits for it.
    NotYet,
}

/// Whether a job is settled: no operation in flight.
fn settled(record: Option<&JobRecord>) -> bool {
    record.is_none_or(|r| matches!(r.phase_name(), "steady" | "blocked"))
}

impl Agent {
    /// Continues every revision rollback not finished yet; the outcomes of the jobs it moved.
    pub(super) async fn continue_revision_rollbacks(
        &self,
        pass: &PassContext,
        graph: &Graph,
    ) -> (Vec<JobOutcome>, Vec<String>) {
        let mut outcomes = Vec::new();
        let mut notes = Vec::new();
        let rollbacks = match self.with_store(|s| s.unfinished_revision_rollbacks()) {
            Ok(rollbacks) => rollbacks,
            Err(error) => {
                warn!(%error, "revision rollbacks could not be read");
                return (
                    outcomes,
                    vec![format!("revision rollbacks could not be read: {error}")],
                );
            }
        };
        for rollback in rollbacks {
            let span = info_span!("revision_rollback", revision = %short_id(&rollback.commit_id), failed_job = %rollback.trigger_job_id);
            match self
                .continue_revision_rollback(pass, graph, &rollback, &mut outcomes)
                .instrument(span)
                .await
            {
                Ok(note) => notes.push(note),
                Err(error) => notes.push(format!(
                    "revision {} rollback: {}; continued next pass",
                    short_id(&rollback.commit_id),
                    error.full()
                )),
            }
        }
        (outcomes, notes)
    }

    /// One revision's rollback, wave by wave; a wave whose jobs have not settled ends the pass's
    /// part (the next pass continues). Returns a line for the report.
    async fn continue_revision_rollback(
        &self,
        pass: &PassContext,
        graph: &Graph,
        rollback: &RevisionRollback,
        outcomes: &mut Vec<JobOutcome>,
    ) -> Result<String, StepError> {
        let revision = short_id(&rollback.commit_id).to_string();
        let changes = self.with_store(|s| s.changes_to_roll_back(&rollback.commit_id))?;
        let ids: Vec<&str> = changes.iter().map(|c| c.job_id.as_str()).collect();
        for wave in order::rollback_waves(&ids, graph) {
            let mut driven = Vec::new();
            let mut waiting = Vec::new();
            for job_id in wave {
                let Some(change) = changes.iter().find(|c| c.job_id == job_id) else {
                    continue;
                };
                let record = self.with_store(|s| s.job(job_id))?;
                let step = match change.rollback_state.as_deref() {
                    Some("pending") => self.begin_step(pass, rollback, change, record.as_ref())?,
                    Some("begun") if !settled(record.as_ref()) => Step::Begun,
                    _ => continue,
                };
                match step {
                    Step::Begun => driven.push(job_id),
                    Step::NotYet => waiting.push(job_id),
                    Step::Skipped(why) => info!(job_id, %why, "nothing to roll back"),
                }
            }
            let runs = driven.iter().map(|job_id| {
                let entry = JobPlan {
                    reasons: vec![format!(
                        "revision {revision} is rolled back: {}",
                        rollback.reason
                    )],
                    phase: "stopping".into(),
                    ..JobPlan::new(*job_id, Action::Continue)
                };
                let span = info_span!("job", revision = %revision, job_id = %job_id);
                let revision = &revision;
                async move {
                    let mut outcome = self.run_phases(pass, &entry).await;
                    if outcome.outcome == Outcome::Ok {
                        // A removed create or a suspended resume ends as a stop; say why.
                        outcome.outcome = Outcome::RolledBack;
                        outcome.message = format!(
                            "revision {revision} rolled back ({}): {}",
                            rollback.reason, outcome.message
                        );
                    }
                    outcome
                }
                .instrument(span)
            });
            let done: Vec<JobOutcome> = futures::stream::iter(runs)
                .buffer_unordered(self.config.reconcile.max_concurrency)
                .collect()
                .await;
            outcomes.extend(done);
            let unsettled: Vec<&str> = waiting
                .into_iter()
                .chain(driven)
                .filter(|job_id| {
                    !self
                        .with_store(|s| s.job(job_id))
                        .is_ok_and(|r| settled(r.as_ref()))
                })
                .collect();
            if !unsettled.is_empty() {
                return Ok(format!(
                    "revision {revision} is being rolled back ({}); waiting for {} before the jobs they depend on",
                    rollback.reason,
                    unsettled.join(", ")
                ));
            }
        }
        // A job of the revision still on its way (a step that failed transiently, say) is rolled
        // back once it arrives: the rollback stays open for it.
        let records = self.with_store(|s| s.jobs())?;
        let arriving: Vec<&str> = records
            .iter()
            .filter(|r| pass.rollback_members.contains(&r.job_id))
            .filter(|r| {
                Phase::of_record(r).operation().is_some_and(|op| {
                    op.head == rollback.commit_id
                        && op.revision_rollback.is_none()
                        && matches!(op.kind, OpKind::Create | OpKind::Upgrade | OpKind::Resume)
                })
            })
            .map(|r| r.job_id.as_str())
            .collect();
        if !arriving.is_empty() {
            return Ok(format!(
                "revision {revision} is being rolled back ({}); {} still on the way to it",
                rollback.reason,
                arriving.join(", ")
            ));
        }
        let changes = self.with_store(|s| s.changes_to_roll_back(&rollback.commit_id))?;
        let blocked: Vec<&str> = changes
            .iter()
            .filter(|c| {
                records
                    .iter()
                    .any(|r| r.job_id == c.job_id && r.phase_name() == "blocked")
            })
            .map(|c| c.job_id.as_str())
            .collect();
        let by_state = |state: &str| -> Vec<&str> {
            changes
                .iter()
                .filter(|c| c.rollback_state.as_deref() == Some(state))
                .map(|c| c.job_id.as_str())
                .collect()
        };
        let (undone, skipped) = (by_state("begun"), by_state("skipped"));
        let result = if blocked.is_empty() { "ok" } else { "blocked" };
        self.with_store(|s| {
            s.finish_revision_rollback(
                &rollback.commit_id,
                result,
                &json!({"rolled_back": undone, "skipped": skipped, "blocked": blocked}).to_string(),
            )
        })?;
        info!(result, rolled_back = ?undone, "revision rollback finished");
        Ok(format!(
            "revision {revision} rolled back ({}): {}{}",
            rollback.reason,
            if undone.is_empty() {
                "no other job had reached it".to_string()
            } else {
                format!("{} back where they were", undone.join(", "))
            },
            if blocked.is_empty() {
                String::new()
            } else {
                format!("; blocked: {}", blocked.join(", "))
            }
        ))
    }

    /// Records the first phase of one change's rollback (and its audit intent) with the step
    /// `begun`, in one transaction; or says why there is nothing to do yet.
    fn begin_step(
        &self,
        pass: &PassContext,
        rollback: &RevisionRollback,
        change: &RevisionChange,
        record: Option<&JobRecord>,
    ) -> Result<Step, StepError> {
        let job_id = change.job_id.as_str();
        let skip = |why: String| -> Result<Step, StepError> {
            self.with_store(|s| s.set_rollback_state(&change.commit_id, job_id, "skipped"))?;
            Ok(Step::Skipped(why))
        };
        let Some(record) = record else {
            return skip("the agent has no record of it".into());
        };
        match record.phase_name() {
            "steady" => {}
            "blocked" => return skip("it is blocked".into()),
            _ => return Ok(Step::NotYet),
        }
        // The instance may have been restarted since (drift): what counts is the spec it runs.
        let Some(instance) = record
            .flink_job_id
            .clone()
            .filter(|_| record.spec_hash == change.spec_hash)
        else {
            return skip(format!("it no longer runs the revision's {}", change.kind));
        };
        let reason = format!(
            "revision {} rolled back: {}",
            short_id(&rollback.commit_id),
            rollback.reason
        );
        let current: Option<Deployment> = record
            .deployment_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok());
        let savepoint_stop = |dir: &str| StopMethod::Savepoint {
            trigger_id: new_trigger_id(&instance),
            target_dir: dir.to_string(),
        };
        let stop_dir = current
            .as_ref()
            .map(|d| d.savepoint_dir.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}/{job_id}",
                    self.config.flink.savepoint_dir.trim_end_matches('/')
                )
            });
        let (op, stop) = match change.kind.as_str() {
            "upgrade" => {
                let Some(previous) = change
                    .previous_deployment_json
                    .as_deref()
                    .and_then(|j| serde_json::from_str::<Deployment>(j).ok())
                else {
                    return skip("its previous deployment is not known".into());
                };
                let op = Operation {
                    kind: OpKind::Rollback,
                    head: rollback.commit_id.clone(),
                    empty_state_allowed: previous.upgrade_mode == UpgradeMode::Stateless,
                    target: Some(previous),
                    predecessor: change.previous_flink_job_id.clone(),
                    restore_hint: change.restored_from.clone(),
                    failure: Some(Failure {
                        reason: reason.clone(),
                        root_cause: None,
                    }),
                    rejected_spec_hash: None,
                    audit_intent: None,
                    desired_spec_hash: None,
                    revision_rollback: Some(rollback.commit_id.clone()),
                };
                // The undone version's state is not kept: the job goes back to the upgrade's.
                (op, StopMethod::Cancel)
            }
            "create" | "resume" => {
                let op = Operation {
                    kind: if change.kind == "create" {
                        OpKind::Delete
                    } else {
                        OpKind::Suspend
                    },
                    head: rollback.commit_id.clone(),
                    empty_state_allowed: true,
                    target: None,
                    predecessor: Some(instance.clone()),
                    restore_hint: None,
                    failure: Some(Failure {
                        reason: reason.clone(),
                        root_cause: None,
                    }),
                    rejected_spec_hash: None,
                    audit_intent: None,
                    desired_spec_hash: None,
                    revision_rollback: Some(rollback.commit_id.clone()),
                };
                (op, savepoint_stop(&stop_dir))
            }
            other => return skip(format!("a {other} is not undone")),
        };
        let head = pass.head.clone();
        self.with_store(|s| {
            s.atomically(|s| {
                let mut op = op.clone();
                let intent = s.audit_intent(
                    Some(&head),
                    Some(job_id),
                    op.kind.audit_action(),
                    &json!({
                        "revision_rollback": rollback.commit_id,
                        "reason": reason,
                        "to_commit": change.previous_commit,
                        "from_savepoint": change.restored_from,
                        "flink_job_id": instance,
                    })
                    .to_string(),
                )?;
                op.audit_intent = Some(intent);
                let mut row = s.job(job_id)?.unwrap_or_else(|| record.clone());
                set_phase(
                    &mut row,
                    &Phase::Stopping {
                        op,
                        flink_job_id: instance.clone(),
                        stop: stop.clone(),
                    },
                );
                s.put_job(&row)?;
                s.set_rollback_state(&change.commit_id, job_id, "begun")
            })
        })?;
        super::failpoint("revision-rollback:begun");
        warn!(job_id, kind = %change.kind, to_commit = ?change.previous_commit, from = ?change.restored_from, "rolling back the job's part of the revision");
        Ok(Step::Begun)
    }

    /// The jobs of the revision's rollback that are taking part (`rollback: revision`, in the
    /// spec or by the agent's default), sorted.
    pub(super) fn members_of(
        &self,
        revision: &crate::revision::VerifiedRevision,
    ) -> BTreeSet<String> {
        revision
            .desired()
            .jobs
            .iter()
            .filter(|(_, job)| {
                job.spec.rollback.unwrap_or(self.config.reconcile.rollback)
                    == crate::spec::RollbackScope::Revision
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}
