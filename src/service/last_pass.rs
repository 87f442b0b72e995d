//! What the service keeps of its last pass: what `/api/v1/status` and the status line show.
//!
//! Not the pass's report itself. With 1,000 jobs its outcomes were thousands of small blocks,
//! made while the pass ran and so spread over the whole heap; each one kept its page resident
//! through the idle time. Kept here, the job ids are one string and the outcomes one vector.

use serde::Serialize;

use crate::flink::JobOverview;
use crate::plan::Action;
use crate::reconcile::{ApplyReport, Outcome};

/// The last pass, as the service shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LastPass {
    /// Why the head was refused (`kind`, message); the cluster kept its state.
    pub refused: Option<(String, String)>,
    /// The head was applied and every job converged.
    pub converged: bool,
    /// The jobs the pass reported on.
    pub jobs: usize,
    /// Jobs on the cluster the agent did not deploy.
    pub unmanaged: Vec<JobOverview>,
    #[serde(skip)]
    outcomes: Outcomes,
}

/// Per job, in job id order: its id (a range of `ids`), what the pass did and how it ended.
#[derive(Debug, Clone, Default)]
struct Outcomes {
    ids: String,
    jobs: Vec<JobPass>,
}

#[derive(Debug, Clone)]
struct JobPass {
    id_start: usize,
    id_end: usize,
    action: Action,
    outcome: Outcome,
    /// Only jobs whose pass went wrong have one.
    error: Option<String>,
}

/// One job's part of the last pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPassView<'a> {
    /// What the plan asked for.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// Flink's root cause, else the message of an outcome that is neither ok nor unchanged.
    pub error: Option<&'a str>,
}

impl LastPass {
    /// What is kept of `report`. When a job appears twice, its first outcome counts.
    pub fn of(report: &ApplyReport) -> LastPass {
        let mut order: Vec<usize> = (0..report.jobs.len()).collect();
        // Stable: of one job's outcomes the first stays first.
        order.sort_by(|&a, &b| report.jobs[a].job_id.cmp(&report.jobs[b].job_id));
        order.dedup_by(|&mut later, &mut first| {
            report.jobs[later].job_id == report.jobs[first].job_id
        });
        let mut outcomes = Outcomes {
            ids: String::with_capacity(order.iter().map(|&i| report.jobs[i].job_id.len()).sum()),
            jobs: Vec::with_capacity(order.len()),
        };
        for index in order {
            let job = &report.jobs[index];
            let error = job.root_cause.clone().or_else(|| {
                (!matches!(job.outcome, Outcome::Ok | Outcome::Unchanged))
                    .then(|| job.message.clone())
            });
            let id_start = outcomes.ids.len();
            outcomes.ids.push_str(&job.job_id);
            outcomes.jobs.push(JobPass {
                id_start,
                id_end: outcomes.ids.len(),
                action: job.action,
                outcome: job.outcome,
                error,
            });
        }
        LastPass {
            refused: report.refused.clone(),
            converged: report.converged(),
            jobs: report.jobs.len(),
            unmanaged: report.unmanaged.clone(),
            outcomes,
        }
    }

    /// `job_id`'s part of the pass, if the pass reported on it.
    pub fn job(&self, job_id: &str) -> Option<JobPassView<'_>> {
        let outcomes = &self.outcomes;
        let found = outcomes
            .jobs
            .binary_search_by(|job| outcomes.ids[job.id_start..job.id_end].cmp(job_id))
            .ok()?;
        let job = &outcomes.jobs[found];
        Some(JobPassView {
            action: job.action,
            outcome: job.outcome,
            error: job.error.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::JobOutcome;

    fn outcome(job_id: &str, action: Action, outcome: Outcome, message: &str) -> JobOutcome {
        JobOutcome {
            job_id: job_id.into(),
            action,
            outcome,
            message: message.into(),
            reasons: Vec::new(),
            phase: "running".into(),
            flink_job_id: None,
            savepoint: None,
            root_cause: None,
            warnings: Vec::new(),
            run_failures: Vec::new(),
        }
    }

    #[test]
    fn each_job_is_found_with_its_first_outcome_and_its_error() {
        let mut failed = outcome(
            "b-job",
            Action::Upgrade,
            Outcome::Retrying,
            "savepoint failed",
        );
        failed.root_cause = Some("java.io.IOException: disk full".into());
        let report = ApplyReport {
            jobs: vec![
                outcome("c-job", Action::Create, Outcome::Ok, "created"),
                failed,
                outcome(
                    "a-job",
                    Action::Upgrade,
                    Outcome::Blocked,
                    "unhealthy twice",
                ),
                outcome(
                    "b-job",
                    Action::Unchanged,
                    Outcome::Unchanged,
                    "a second report of b-job",
                ),
                outcome("ab", Action::Unchanged, Outcome::Unchanged, "in sync"),
            ],
            ..ApplyReport::default()
        };
        let pass = LastPass::of(&report);
        assert_eq!(pass.jobs, 5);
        assert!(!pass.converged);
        let view = |action, outcome, error| {
            Some(JobPassView {
                action,
                outcome,
                error,
            })
        };
        assert_eq!(pass.job("c-job"), view(Action::Create, Outcome::Ok, None));
        assert_eq!(
            pass.job("b-job"),
            view(
                Action::Upgrade,
                Outcome::Retrying,
                Some("java.io.IOException: disk full")
            )
        );
        assert_eq!(
            pass.job("a-job"),
            view(Action::Upgrade, Outcome::Blocked, Some("unhealthy twice"))
        );
        assert_eq!(
            pass.job("ab"),
            view(Action::Unchanged, Outcome::Unchanged, None)
        );
        for missing in ["", "a", "b", "d-job", "c-job-2"] {
            assert_eq!(pass.job(missing), None, "{missing}");
        }
        assert_eq!(LastPass::default().job("a-job"), None);
    }
}
