//! What a pass did, per job and as a whole: the answer of `apply` and of the service's status.

use serde::Serialize;

use crate::flink::JobOverview;
use crate::plan::{Action, JobPlan};

/// How one job's reconciliation ended in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done, and healthy.
    Ok,
    /// Nothing to do.
    Unchanged,
    /// The new version was unhealthy; the last good one runs again.
    RolledBack,
    /// A step failed or must wait; the job continues from its recorded phase after its backoff.
    Retrying,
    /// The agent will not act on the job until its spec changes or an operator runs `retry`.
    Blocked,
    /// Not started this pass: a job it depends on (`depends_on`) did not reach the revision.
    Held,
    /// The agent's own state could not be read or written.
    Failed,
}

impl Outcome {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::RolledBack => "rolled_back",
            Outcome::Retrying => "retrying",
            Outcome::Blocked => "blocked",
            Outcome::Held => "held",
            Outcome::Failed => "failed",
        }
    }
}

/// What happened to one job in a pass.
#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    /// The spec's job id.
    pub job_id: String,
    /// What the plan asked for.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// What was done, for people.
    pub message: String,
    /// Why it was planned.
    pub reasons: Vec<String>,
    /// The lifecycle phase the job is in after the pass.
    pub phase: String,
    /// The Flink job now representing it.
    pub flink_job_id: Option<String>,
    /// The savepoint taken or restored.
    pub savepoint: Option<String>,
    /// Flink's root cause of a failure.
    pub root_cause: Option<String>,
    /// Values the job's own code overrode, and other notes.
    pub warnings: Vec<String>,
    /// Batch runs that failed or were cancelled at their deadline this pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub run_failures: Vec<RunFailure>,
}

/// A batch run that ended badly.
#[derive(Debug, Clone, Serialize)]
pub struct RunFailure {
    /// The run's Flink job.
    pub flink_job_id: String,
    /// Cancelled at its `ttl_seconds` deadline (else it failed).
    pub timed_out: bool,
    /// What happened, for people.
    pub message: String,
    /// Flink's root cause of a failed run.
    pub root_cause: Option<String>,
}

/// What the agent saw of a running job it watches (`monitoring:`) this pass.
#[derive(Debug, Clone, Serialize)]
pub struct JobProbe {
    /// The spec's job id.
    pub job_id: String,
    /// The Flink job looked at.
    pub flink_job_id: String,
    /// The most backpressured subtask's ratio (0..1), when watched and Flink had figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backpressure: Option<f64>,
    /// The vertex that subtask belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backpressured_vertex: Option<String>,
    /// Seconds since the newest completed checkpoint (or since the job started, without one),
    /// when watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_age_seconds: Option<f64>,
    /// Failed checkpoints of this job instance, when watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_checkpoints: Option<u64>,
}

impl JobOutcome {
    /// An outcome for the job of `plan`.
    pub fn new(plan: &JobPlan, outcome: Outcome, message: impl Into<String>) -> JobOutcome {
        JobOutcome {
            job_id: plan.job_id.clone(),
            action: plan.action,
            outcome,
            message: message.into(),
            reasons: plan.reasons.clone(),
            phase: plan.phase.clone(),
            flink_job_id: plan.flink_job_id.clone(),
            savepoint: None,
            root_cause: None,
            warnings: Vec::new(),
            run_failures: Vec::new(),
        }
    }
}

/// The result of one `apply` pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// The branch head.
    pub revision: Option<String>,
    /// Periodic savepoints taken (or failed) this pass, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub savepoints: Vec<String>,
    /// Why the head was refused (`kind`, message); the cluster kept its state.
    pub refused: Option<(String, String)>,
    /// Why the cluster could not be reached; nothing was done.
    pub cluster_error: Option<String>,
    /// What was closed or handled before planning: interrupted intents, operator requests.
    pub recovered: Vec<String>,
    /// Revision rollbacks (`rollback: revision`) this pass started, continued or finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revision_rollbacks: Vec<String>,
    /// Per job.
    pub jobs: Vec<JobOutcome>,
    /// Jobs on the cluster the agent did not deploy (never touched).
    pub unmanaged: Vec<JobOverview>,
    /// JARs deleted because no job uses them.
    pub jars_deleted: Vec<String>,
    /// Warnings about the whole revision (e.g. task slots under `reconcile.slot_budget: warn`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What was seen of the running jobs the agent watches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<JobProbe>,
}

impl ApplyReport {
    /// True when the head was applied and every job converged.
    pub fn converged(&self) -> bool {
        self.refused.is_none()
            && self.cluster_error.is_none()
            && self
                .jobs
                .iter()
                .all(|j| matches!(j.outcome, Outcome::Ok | Outcome::Unchanged))
    }
}
