//! The lifecycle of one stream job as an explicit, persisted phase.
//!
//! Every operation (create, upgrade, restart, resume, rollback, suspend, delete) is the same walk:
//! `Steady → Stopping → Stopped → Submitted → Verifying → Steady`, with `Blocked` where the agent must
//! not guess. The phase is written to SQLite before the Flink call it leads to, so after a crash, a
//! JobManager restart or a transient error the next pass continues from the recorded phase: the
//! continuation is [`next_step`] of that phase and of what Flink says now. Nothing here does I/O.

use serde::{Deserialize, Serialize};

use super::deployment::Deployment;
use crate::spec::UpgradeMode;

/// Why an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// First deployment of a spec.
    Create,
    /// A new spec replaces the running one.
    Upgrade,
    /// The recorded spec is not running (drift, a lost JobManager): start it again from its state.
    Restart,
    /// Back from suspension.
    Resume,
    /// An upgrade failed: the last good spec runs again from the state the upgrade started from.
    Rollback,
    /// Stop with a savepoint and keep it.
    Suspend,
    /// The spec was removed: stop with a savepoint and keep it.
    Delete,
    /// A submission failed for good: stop what is left of it and block the job.
    Discard,
}

impl OpKind {
    /// The audit log's name for the start of this operation.
    pub fn audit_action(self) -> crate::state::AuditAction {
        use crate::state::AuditAction;
        match self {
            OpKind::Create => AuditAction::Create,
            OpKind::Upgrade => AuditAction::Upgrade,
            OpKind::Restart => AuditAction::Restart,
            OpKind::Resume => AuditAction::Resume,
            OpKind::Rollback => AuditAction::Rollback,
            OpKind::Suspend => AuditAction::Suspend,
            OpKind::Delete => AuditAction::Delete,
            OpKind::Discard => AuditAction::Discard,
        }
    }

    /// The word shown to people and written to the audit log.
    pub fn as_str(self) -> &'static str {
        self.audit_action().as_str()
    }
}

/// Why a submission failed, carried by the rollback or discard that follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What went wrong, for people.
    pub reason: String,
    /// Flink's root cause, when it gave one.
    pub root_cause: Option<String>,
}

impl Failure {
    /// Reason and root cause on one line.
    pub fn full(&self) -> String {
        match &self.root_cause {
            Some(cause) if !self.reason.contains(cause.as_str()) => {
                format!("{}: {cause}", self.reason)
            }
            _ => self.reason.clone(),
        }
    }
}

/// One operation on a job, from the moment it is decided until the job is steady again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Why.
    pub kind: OpKind,
    /// The revision that started it.
    pub head: String,
    /// What runs at the end; `None` for suspend, delete and discard.
    pub target: Option<Deployment>,
    /// The instance of the last good deployment: its savepoints and retained checkpoints are the
    /// candidates to restore from.
    pub predecessor: Option<String>,
    /// The next instance may start without state (a create, `upgrade_mode: stateless`, or an
    /// operator's one-shot `retry --start-empty`).
    pub empty_state_allowed: bool,
    /// A state to prefer when it is still restorable (a rollback restores what the upgrade restored).
    #[serde(default)]
    pub restore_hint: Option<String>,
    /// For a rollback or discard: why the submission before it failed.
    #[serde(default)]
    pub failure: Option<Failure>,
    /// For a rollback: the spec hash that failed; it is not tried again until the spec changes.
    #[serde(default)]
    pub rejected_spec_hash: Option<String>,
    /// The audit intent the operation opened; its outcome is written when the operation ends,
    /// in this process or in the one that continues it after a crash.
    #[serde(default)]
    pub audit_intent: Option<i64>,
    /// The hash of the spec the operation answers (also for suspend, whose target is nothing):
    /// when the operation blocks the job, this spec is not tried again until it changes.
    #[serde(default)]
    pub desired_spec_hash: Option<String>,
    /// Set when the operation undoes the job's part of a revision that is rolled back as a whole
    /// (`rollback: revision`): that revision. A rollback then restores exactly `restore_hint`, the
    /// state the revision's upgrade started from, never newer state of the version it undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_rollback: Option<String>,
}

impl Operation {
    /// The spec hash a block of this operation holds back.
    pub fn blocked_spec_hash(&self) -> Option<String> {
        self.rejected_spec_hash
            .clone()
            .or_else(|| self.desired_spec_hash.clone())
            .or_else(|| self.target.as_ref().map(|t| t.spec_hash.clone()))
    }
}

/// How a running instance is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum StopMethod {
    /// Stop-with-savepoint under a trigger id chosen (and recorded) before the call, so sending it
    /// again after a crash can never start a second savepoint.
    Savepoint {
        /// Our trigger id.
        trigger_id: String,
        /// Where the savepoint goes.
        target_dir: String,
    },
    /// Cancel (the retained checkpoint, if any, holds the state).
    Cancel,
}

/// A submission of a job, recorded before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The Flink job id (deterministic from the job id and generation).
    pub flink_job_id: String,
    /// Its generation.
    pub generation: i64,
    /// The savepoint or checkpoint it starts from.
    pub restored_from: Option<String>,
    /// When it was (last) sent, epoch ms: the health gate's clock and the floor for its failures.
    pub submitted_at_ms: i64,
}

/// Where a job's lifecycle stands, persisted in its row.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing in flight: the recorded (last good) deployment is what should run.
    #[default]
    Steady,
    /// The instance `flink_job_id` is being stopped for `op`.
    Stopping {
        /// The operation.
        op: Operation,
        /// The instance being stopped.
        flink_job_id: String,
        /// How.
        stop: StopMethod,
    },
    /// No instance runs; the next one starts from `restore` (`None`: empty, which `op` allows).
    Stopped {
        /// The operation.
        op: Operation,
        /// The chosen state.
        restore: Option<String>,
    },
    /// The submission is recorded; Flink may or may not have it yet.
    Submitted {
        /// The operation.
        op: Operation,
        /// The submission.
        submission: Submission,
    },
    /// Flink has the submission; the health gate decides.
    Verifying {
        /// The operation.
        op: Operation,
        /// The submission.
        submission: Submission,
    },
    /// The agent does not act on this job until its spec changes or an operator runs `retry`.
    Blocked {
        /// Why.
        reason: String,
        /// What would unblock it.
        unblock: String,
    },
}

impl Phase {
    /// The phase recorded in a job's row (`Steady` when none is recorded or it cannot be read).
    pub fn of_record(record: &crate::state::JobRecord) -> Phase {
        record
            .phase_json
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }

    /// The phase's name (the `jobs.phase` column).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Stopping { .. } => "stopping",
            Phase::Stopped { .. } => "stopped",
            Phase::Submitted { .. } => "submitted",
            Phase::Verifying { .. } => "verifying",
            Phase::Blocked { .. } => "blocked",
        }
    }

    /// The operation in flight, if any.
    pub fn operation(&self) -> Option<&Operation> {
        match self {
            Phase::Stopping { op, .. }
            | Phase::Stopped { op, .. }
            | Phase::Submitted { op, .. }
            | Phase::Verifying { op, .. } => Some(op),
            Phase::Steady | Phase::Blocked { .. } => None,
        }
    }

    /// The Flink job this phase is about: the one being stopped, or the one submitted.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Phase::Stopping { flink_job_id, .. } => Some(flink_job_id),
            Phase::Submitted { submission, .. } | Phase::Verifying { submission, .. } => {
                Some(&submission.flink_job_id)
            }
            _ => None,
        }
    }

    /// One line for `plan`, `status` and logs.
    pub fn describe(&self) -> String {
        match self {
            Phase::Steady => "steady".into(),
            Phase::Stopping {
                op,
                flink_job_id,
                stop,
            } => match stop {
                StopMethod::Savepoint { .. } => format!(
                    "{}: stopping {flink_job_id} with a savepoint",
                    op.kind.as_str()
                ),
                StopMethod::Cancel => {
                    format!("{}: cancelling {flink_job_id}", op.kind.as_str())
                }
            },
            Phase::Stopped { op, restore } => format!(
                "{}: stopped, next instance starts from {}",
                op.kind.as_str(),
                restore.as_deref().unwrap_or("no state")
            ),
            Phase::Submitted { op, submission } => format!(
                "{}: submitted {}",
                op.kind.as_str(),
                submission.flink_job_id
            ),
            Phase::Verifying { op, submission } => format!(
                "{}: health gate of {}",
                op.kind.as_str(),
                submission.flink_job_id
            ),
            Phase::Blocked { reason, unblock } => format!("{reason} (unblock: {unblock})"),
        }
    }
}

/// What Flink says about the instance a phase is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Running or on its way (CREATED, INITIALIZING, RUNNING, RESTARTING, RECONCILING, FAILING).
    Alive(String),
    /// CANCELLING: it may still process records; nothing new may start yet.
    Cancelling,
    /// FINISHED, FAILED, CANCELED or SUSPENDED.
    Ended(String),
    /// Flink does not know it (never submitted, or a JobManager restart forgot it).
    Missing,
    /// Flink could not be asked.
    Unreachable(String),
}

impl Seen {
    /// Classifies a Flink job state.
    pub fn of_state(state: &str) -> Seen {
        match state {
            "CANCELLING" => Seen::Cancelling,
            "FINISHED" | "FAILED" | "CANCELED" | "SUSPENDED" => Seen::Ended(state.to_string()),
            other => Seen::Alive(other.to_string()),
        }
    }
}

/// The next thing to do for a job, given its phase and what Flink says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing in flight: the plan decides whether an operation starts.
    Idle,
    /// Blocked: nothing until a spec change or `retry`.
    Blocked,
    /// Look again shortly (cancelling, or Flink unreachable).
    Wait(String),
    /// Send the recorded stop-with-savepoint trigger (again) and wait for its savepoint.
    AwaitSavepoint,
    /// Send the cancel (again).
    Cancel,
    /// The instance is gone: choose the state the next one starts from.
    ChooseState,
    /// An instance of ours runs though the job is stopped (a crash lost track of it): stop it first.
    StopStray(String),
    /// The operation has nothing to start (suspend, delete, discard): record its end.
    Finish,
    /// Record a new submission (next generation) and send it.
    Submit,
    /// Send the recorded submission again under the same Flink job id (Flink never had it, or forgot it).
    Resubmit,
    /// Run (or continue) the health gate.
    Verify,
    /// The submission ended before it was healthy.
    Unhealthy(String),
}

/// The continuation of `phase` given what Flink says about the instance it concerns; for
/// `Stopped`, what Flink says about any live instance of the job.
pub fn next_step(phase: &Phase, seen: &Seen) -> Step {
    match (phase, seen) {
        (Phase::Steady, _) => Step::Idle,
        (Phase::Blocked { .. }, _) => Step::Blocked,
        (_, Seen::Unreachable(reason)) => Step::Wait(format!("Flink unreachable: {reason}")),
        (Phase::Stopping { stop, .. }, Seen::Alive(_)) => match stop {
            StopMethod::Savepoint { .. } => Step::AwaitSavepoint,
            StopMethod::Cancel => Step::Cancel,
        },
        (Phase::Stopping { .. }, Seen::Cancelling) => {
            Step::Wait("the instance is CANCELLING".into())
        }
        (Phase::Stopping { .. }, Seen::Ended(_) | Seen::Missing) => Step::ChooseState,
        (Phase::Stopped { .. }, Seen::Alive(state)) => Step::StopStray(state.clone()),
        (Phase::Stopped { .. }, Seen::Cancelling) => {
            Step::Wait("an instance of the job is CANCELLING".into())
        }
        (Phase::Stopped { op, .. }, Seen::Ended(_) | Seen::Missing) => {
            if op.target.is_some() {
                Step::Submit
            } else {
                Step::Finish
            }
        }
        (Phase::Submitted { .. } | Phase::Verifying { .. }, Seen::Alive(_)) => Step::Verify,
        (Phase::Submitted { .. } | Phase::Verifying { .. }, Seen::Cancelling) => {
            Step::Unhealthy("the submission is CANCELLING".into())
        }
        (Phase::Submitted { .. } | Phase::Verifying { .. }, Seen::Ended(state)) => {
            Step::Unhealthy(format!("the submission is {state}"))
        }
        (Phase::Submitted { .. } | Phase::Verifying { .. }, Seen::Missing) => Step::Resubmit,
    }
}

/// How to stop the running instance `flink_job_id` at the start of `op`.
///
/// `has_checkpoint` says whether the instance has a completed checkpoint: a `last-state` upgrade
/// without one stops with a savepoint instead, so its state is never lost.
pub fn stop_method(
    op: &Operation,
    mode: UpgradeMode,
    has_checkpoint: bool,
    trigger_id: String,
    target_dir: String,
) -> StopMethod {
    let savepoint = StopMethod::Savepoint {
        trigger_id,
        target_dir,
    };
    match op.kind {
        OpKind::Upgrade => match mode {
            UpgradeMode::Savepoint => savepoint,
            UpgradeMode::LastState if has_checkpoint => StopMethod::Cancel,
            UpgradeMode::LastState => savepoint,
            UpgradeMode::Stateless => StopMethod::Cancel,
        },
        OpKind::Suspend | OpKind::Delete => savepoint,
        // A failed submission holds no state worth keeping.
        OpKind::Create | OpKind::Restart | OpKind::Resume | OpKind::Rollback | OpKind::Discard => {
            StopMethod::Cancel
        }
    }
}

/// The first phase of `op`: stop the predecessor if there is one to stop (a predecessor that is
/// already gone goes straight to choosing its state), else nothing to stop.
pub fn begin(op: Operation, stop: StopMethod) -> Phase {
    match op.predecessor.clone() {
        Some(flink_job_id) => Phase::Stopping {
            op,
            flink_job_id,
            stop,
        },
        None => Phase::Stopped { op, restore: None },
    }
}

/// The error classes of a failed step, each with one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// May succeed if tried again (unreachable, timeout, HTTP 5xx): the phase stays, the job is
    /// requeued with backoff, never blocked.
    Transient,
    /// Flink refused the request (HTTP 4xx): the submission failed.
    Refused,
    /// Will fail again the same way (a savepoint Flink could not take, an unhealthy restart):
    /// counts toward `reconcile.max_failures`, then the job is blocked.
    Permanent,
}

/// The phase after the submission of `op` failed (unhealthy, or refused by Flink), and whether the
/// failure counts toward the job's limit.
///
/// - An upgrade rolls back to the last good deployment, from the state the upgrade restored.
/// - A create (nothing ran before) is discarded and the job blocked until its spec changes.
/// - A restart, resume or rollback is the last good spec failing: it is tried again, with backoff,
///   until `max_failures`, then discarded and blocked. The failed instance is stopped first in every case.
pub fn after_failed_submission(
    op: &Operation,
    submission: &Submission,
    last_good: Option<&Deployment>,
    failure: Failure,
    permanent_failures: u32,
    max_failures: u32,
) -> (Phase, bool) {
    let cancel_failed = |op: Operation| Phase::Stopping {
        op,
        flink_job_id: submission.flink_job_id.clone(),
        stop: StopMethod::Cancel,
    };
    let discard = |failure: Failure| Operation {
        kind: OpKind::Discard,
        head: op.head.clone(),
        target: None,
        predecessor: op.predecessor.clone(),
        empty_state_allowed: false,
        restore_hint: None,
        failure: Some(failure),
        rejected_spec_hash: op.target.as_ref().map(|t| t.spec_hash.clone()),
        audit_intent: None,
        desired_spec_hash: op.desired_spec_hash.clone(),
        revision_rollback: None,
    };
    match op.kind {
        OpKind::Upgrade => match last_good {
            Some(good) => {
                let rollback = Operation {
                    kind: OpKind::Rollback,
                    head: op.head.clone(),
                    empty_state_allowed: good.upgrade_mode == UpgradeMode::Stateless,
                    target: Some(good.clone()),
                    predecessor: op.predecessor.clone(),
                    restore_hint: submission.restored_from.clone(),
                    rejected_spec_hash: op.target.as_ref().map(|t| t.spec_hash.clone()),
                    failure: Some(failure),
                    audit_intent: None,
                    desired_spec_hash: op.desired_spec_hash.clone(),
                    revision_rollback: None,
                };
                (cancel_failed(rollback), false)
            }
            None => (cancel_failed(discard(failure)), false),
        },
        OpKind::Create => (cancel_failed(discard(failure)), false),
        OpKind::Restart | OpKind::Resume | OpKind::Rollback => {
            if permanent_failures + 1 >= max_failures {
                let exhausted = Failure {
                    reason: format!(
                        "{} failed {} time(s): {}",
                        op.kind.as_str(),
                        permanent_failures + 1,
                        failure.reason
                    ),
                    root_cause: failure.root_cause,
                };
                (cancel_failed(discard(exhausted)), true)
            } else {
                let mut again = op.clone();
                again.restore_hint = submission.restored_from.clone();
                if again.kind == OpKind::Rollback && again.failure.is_none() {
                    again.failure = Some(failure);
                }
                (cancel_failed(again), true)
            }
        }
        OpKind::Suspend | OpKind::Delete | OpKind::Discard => {
            (cancel_failed(discard(failure)), false)
        }
    }
}

/// The wait before try `failures + 1` of a failing job: `base · 2^(failures-1)`, at most `max`,
/// plus up to a fifth of it as jitter (so jobs failing together do not retry together).
pub fn backoff(
    failures: u32,
    base: std::time::Duration,
    max: std::time::Duration,
    jitter_seed: u64,
) -> std::time::Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1u32 << exponent).min(max);
    let fifth = delay.as_millis() as u64 / 5;
    let jitter = if fifth == 0 { 0 } else { jitter_seed % fifth };
    delay + std::time::Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn deployment(hash: &str, mode: UpgradeMode) -> Deployment {
        Deployment {
            job_id: "orders".into(),
            job_type: crate::spec::JobType::Stream,
            jar_sha256: "aa".into(),
            jar_name: "a.jar".into(),
            entry_class: None,
            args: vec![],
            parallelism: Some(1),
            flink_configuration: Default::default(),
            savepoint_dir: "file:///sp/orders".into(),
            upgrade_mode: mode,
            allow_non_restored_state: false,
            health: super::super::deployment::Health {
                stable_for_ms: 0,
                max_restarts: 0,
                require_checkpoint: true,
                min_checkpoints: 1,
                timeout_ms: 1000,
                max_checkpoint_age_ms: None,
                max_backpressure_permille: None,
            },
            checkpointing: true,
            spec_hash: hash.into(),
            spec_json: "{}".into(),
            commit: "c1".into(),
            artifact_url: None,
            artifact_verification: false,
            kind: crate::spec::JobKind::Jar,
            program: None,
            restore_from: None,
        }
    }

    fn op(kind: OpKind, target: Option<Deployment>) -> Operation {
        Operation {
            kind,
            head: "c2".into(),
            target,
            predecessor: Some("old".into()),
            empty_state_allowed: false,
            restore_hint: None,
            failure: None,
            rejected_spec_hash: None,
            audit_intent: None,
            desired_spec_hash: None,
            revision_rollback: None,
        }
    }

    fn submission() -> Submission {
        Submission {
            flink_job_id: "new".into(),
            generation: 2,
            restored_from: Some("file:///sp/orders/savepoint-1".into()),
            submitted_at_ms: 0,
        }
    }

    fn savepoint_stop() -> StopMethod {
        StopMethod::Savepoint {
            trigger_id: "t".into(),
            target_dir: "file:///sp".into(),
        }
    }

    /// One phase of each kind, for every operation that can be in it.
    fn phases() -> Vec<Phase> {
        let mut all = vec![
            Phase::Steady,
            Phase::Blocked {
                reason: "r".into(),
                unblock: "u".into(),
            },
        ];
        for kind in [
            OpKind::Create,
            OpKind::Upgrade,
            OpKind::Restart,
            OpKind::Resume,
            OpKind::Rollback,
            OpKind::Suspend,
            OpKind::Delete,
            OpKind::Discard,
        ] {
            let target = (!matches!(kind, OpKind::Suspend | OpKind::Delete | OpKind::Discard))
                .then(|| deployment("h2", UpgradeMode::Savepoint));
            let op = op(kind, target);
            for stop in [savepoint_stop(), StopMethod::Cancel] {
                all.push(Phase::Stopping {
                    op: op.clone(),
                    flink_job_id: "old".into(),
                    stop,
                });
            }
            all.push(Phase::Stopped {
                op: op.clone(),
                restore: None,
            });
            if op.target.is_some() {
                all.push(Phase::Submitted {
                    op: op.clone(),
                    submission: submission(),
                });
                all.push(Phase::Verifying {
                    op,
                    submission: submission(),
                });
            }
        }
        all
    }

    fn observations() -> Vec<Seen> {
        vec![
            Seen::Alive("RUNNING".into()),
            Seen::Alive("RESTARTING".into()),
            Seen::Cancelling,
            Seen::Ended("FINISHED".into()),
            Seen::Ended("FAILED".into()),
            Seen::Ended("CANCELED".into()),
            Seen::Missing,
            Seen::Unreachable("connection refused".into()),
        ]
    }

    /// The whole table: each phase × each observation has exactly one continuation, and none of
    /// them can start a second instance or lose state.
    #[test]
    fn every_phase_and_observation_has_one_safe_continuation() {
        for phase in phases() {
            for seen in observations() {
                let step = next_step(&phase, &seen);
                let expected = match (&phase, &seen) {
                    (Phase::Steady, _) => Step::Idle,
                    (Phase::Blocked { .. }, _) => Step::Blocked,
                    (_, Seen::Unreachable(_)) => step.clone(),
                    (Phase::Stopping { stop, .. }, Seen::Alive(_)) => match stop {
                        StopMethod::Savepoint { .. } => Step::AwaitSavepoint,
                        StopMethod::Cancel => Step::Cancel,
                    },
                    (Phase::Stopping { .. }, Seen::Cancelling) => step.clone(),
                    (Phase::Stopping { .. }, Seen::Ended(_) | Seen::Missing) => Step::ChooseState,
                    (Phase::Stopped { .. }, Seen::Alive(state)) => Step::StopStray(state.clone()),
                    (Phase::Stopped { .. }, Seen::Cancelling) => step.clone(),
                    (Phase::Stopped { op, .. }, _) if op.target.is_some() => Step::Submit,
                    (Phase::Stopped { .. }, _) => Step::Finish,
                    (Phase::Submitted { .. } | Phase::Verifying { .. }, Seen::Alive(_)) => {
                        Step::Verify
                    }
                    (Phase::Submitted { .. } | Phase::Verifying { .. }, Seen::Missing) => {
                        Step::Resubmit
                    }
                    (Phase::Submitted { .. } | Phase::Verifying { .. }, _) => step.clone(),
                };
                assert_eq!(step, expected, "{} × {seen:?}", phase.describe());
                // Nothing is submitted while an instance may still run.
                if matches!(
                    seen,
                    Seen::Alive(_) | Seen::Cancelling | Seen::Unreachable(_)
                ) {
                    assert!(
                        !matches!(step, Step::Submit | Step::Resubmit),
                        "{} × {seen:?} would start a second instance",
                        phase.describe()
                    );
                }
                // Cancelling and unreachable only ever wait (or judge a cancelling submission).
                if matches!(seen, Seen::Cancelling | Seen::Unreachable(_)) {
                    assert!(
                        matches!(
                            step,
                            Step::Wait(_) | Step::Idle | Step::Blocked | Step::Unhealthy(_)
                        ),
                        "{} × {seen:?} → {step:?}",
                        phase.describe()
                    );
                }
                if let (Phase::Submitted { .. } | Phase::Verifying { .. }, Seen::Ended(state)) =
                    (&phase, &seen)
                {
                    assert_eq!(step, Step::Unhealthy(format!("the submission is {state}")));
                }
            }
        }
    }

    #[test]
    fn phases_round_trip_through_json_with_their_names() {
        for phase in phases() {
            let json = serde_json::to_string(&phase).unwrap();
            assert!(
                json.contains(&format!("\"phase\":\"{}\"", phase.name())),
                "{json}"
            );
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), phase);
        }
    }

    #[test]
    fn an_operation_without_a_predecessor_starts_stopped_and_one_with_starts_stopping() {
        let create = Operation {
            predecessor: None,
            empty_state_allowed: true,
            ..op(
                OpKind::Create,
                Some(deployment("h", UpgradeMode::Savepoint)),
            )
        };
        assert_eq!(
            begin(create.clone(), StopMethod::Cancel),
            Phase::Stopped {
                op: create,
                restore: None
            }
        );
        let upgrade = op(
            OpKind::Upgrade,
            Some(deployment("h", UpgradeMode::Savepoint)),
        );
        assert!(matches!(
            begin(upgrade, savepoint_stop()),
            Phase::Stopping { flink_job_id, .. } if flink_job_id == "old"
        ));
    }

    #[test]
    fn stop_methods_keep_state_unless_the_spec_says_stateless() {
        let stop = |kind, mode, has_checkpoint| {
            stop_method(
                &op(kind, None),
                mode,
                has_checkpoint,
                "t".into(),
                "d".into(),
            )
        };
        assert_eq!(
            stop(OpKind::Upgrade, UpgradeMode::Savepoint, true),
            savepoint_stop_with("d")
        );
        assert_eq!(
            stop(OpKind::Upgrade, UpgradeMode::LastState, true),
            StopMethod::Cancel
        );
        assert_eq!(
            stop(OpKind::Upgrade, UpgradeMode::LastState, false),
            savepoint_stop_with("d"),
            "last-state without a checkpoint falls back to a savepoint"
        );
        assert_eq!(
            stop(OpKind::Upgrade, UpgradeMode::Stateless, true),
            StopMethod::Cancel
        );
        for kind in [OpKind::Suspend, OpKind::Delete] {
            assert_eq!(
                stop(kind, UpgradeMode::Stateless, false),
                savepoint_stop_with("d")
            );
        }
    }

    fn savepoint_stop_with(dir: &str) -> StopMethod {
        StopMethod::Savepoint {
            trigger_id: "t".into(),
            target_dir: dir.into(),
        }
    }

    fn failure() -> Failure {
        Failure {
            reason: "job new is FAILED".into(),
            root_cause: Some("IllegalStateException: boom".into()),
        }
    }

    #[test]
    fn a_failed_upgrade_rolls_back_from_the_upgrades_state_and_rejects_the_spec() {
        let good = deployment("h1", UpgradeMode::Savepoint);
        let upgrade = op(
            OpKind::Upgrade,
            Some(deployment("h2", UpgradeMode::Savepoint)),
        );
        let (phase, counts) =
            after_failed_submission(&upgrade, &submission(), Some(&good), failure(), 0, 3);
        assert!(!counts);
        let Phase::Stopping {
            op,
            flink_job_id,
            stop,
        } = phase
        else {
            panic!("{phase:?}")
        };
        assert_eq!(flink_job_id, "new", "the failed instance is stopped first");
        assert_eq!(stop, StopMethod::Cancel);
        assert_eq!(op.kind, OpKind::Rollback);
        assert_eq!(op.target.as_ref(), Some(&good));
        assert_eq!(op.restore_hint, submission().restored_from);
        assert_eq!(op.rejected_spec_hash.as_deref(), Some("h2"));
        assert_eq!(op.predecessor.as_deref(), Some("old"));
        assert!(op.failure.unwrap().full().contains("IllegalStateException"));
    }

    #[test]
    fn a_failed_create_is_discarded_and_a_failing_restart_is_retried_up_to_the_limit() {
        let create = op(
            OpKind::Create,
            Some(deployment("h", UpgradeMode::Savepoint)),
        );
        let (phase, _) = after_failed_submission(&create, &submission(), None, failure(), 0, 3);
        assert!(
            matches!(&phase, Phase::Stopping { op, .. } if op.kind == OpKind::Discard && op.target.is_none())
        );
        let restart = op(
            OpKind::Restart,
            Some(deployment("h", UpgradeMode::Savepoint)),
        );
        let (phase, counts) = after_failed_submission(
            &restart,
            &submission(),
            Some(&deployment("h", UpgradeMode::Savepoint)),
            failure(),
            0,
            3,
        );
        assert!(counts);
        assert!(
            matches!(&phase, Phase::Stopping { op, .. } if op.kind == OpKind::Restart && op.restore_hint == submission().restored_from)
        );
        let (phase, _) = after_failed_submission(&restart, &submission(), None, failure(), 2, 3);
        let Phase::Stopping { op, .. } = phase else {
            panic!()
        };
        assert_eq!(op.kind, OpKind::Discard);
        assert!(
            op.failure.unwrap().reason.contains("failed 3 time(s)"),
            "the limit is named"
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_a_fifth() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, base, max, 0), Duration::from_secs(1));
        assert_eq!(backoff(2, base, max, 0), Duration::from_secs(2));
        assert_eq!(backoff(4, base, max, 0), Duration::from_secs(8));
        assert_eq!(backoff(30, base, max, 0), Duration::from_secs(60));
        let jittered = backoff(3, base, max, 123_456);
        assert!(jittered >= Duration::from_secs(4) && jittered < Duration::from_millis(4800));
        assert_eq!(backoff(1, Duration::ZERO, max, 99), Duration::ZERO);
    }
}
