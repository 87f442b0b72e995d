//! Task slots: what each job of a plan holds now and needs after it, against the cluster's slots.
//!
//! A Flink job in one slot-sharing group (the default) occupies as many slots as its parallelism,
//! so a job's slots are its effective parallelism: the spec's `parallelism`, else the cluster's
//! `parallelism.default` (unknown offline). Pure arithmetic, no I/O.

use foldhash::HashMap;

use serde::Serialize;

use super::{Action, Plan, flink_job_prefix, is_alive, job_prefix_of};
use crate::flink::{ClusterOverview, JobOverview};
use crate::spec::{DesiredRunState, DesiredState, JobSpec, JobType};
use crate::state::JobRecord;

/// The slots one instance of a job occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotCount {
    /// A known number: the spec's parallelism, or the cluster's default read from the cluster.
    Known(u32),
    /// The cluster's `parallelism.default`, which an offline plan cannot know.
    ClusterDefault,
}

impl SlotCount {
    /// The known number, zero for the unknown default.
    fn known(self) -> u32 {
        match self {
            SlotCount::Known(n) => n,
            SlotCount::ClusterDefault => 0,
        }
    }

    /// The count times `instances` (several runs of a batch job at once).
    fn times(self, instances: u32) -> SlotCount {
        match self {
            SlotCount::Known(n) => SlotCount::Known(n.saturating_mul(instances)),
            SlotCount::ClusterDefault if instances == 0 => SlotCount::Known(0),
            SlotCount::ClusterDefault => SlotCount::ClusterDefault,
        }
    }
}

impl std::fmt::Display for SlotCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotCount::Known(n) => write!(f, "{n}"),
            SlotCount::ClusterDefault => f.write_str("default"),
        }
    }
}

/// The slots of a job's spec: its parallelism, else the cluster default when known.
pub fn parallelism_of(spec: &JobSpec, cluster_default: Option<u32>) -> SlotCount {
    match (spec.parallelism, cluster_default) {
        (Some(p), _) => SlotCount::Known(p.get()),
        (None, Some(default)) => SlotCount::Known(default),
        (None, None) => SlotCount::ClusterDefault,
    }
}

/// One job's slots before and after a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSlots {
    /// The spec's `job_id`.
    pub job_id: String,
    /// What its instances alive now hold (0 when none runs).
    pub holds: SlotCount,
    /// What it holds once the plan is applied (0 when it should not run).
    pub needs: SlotCount,
    /// What one instance of the desired version needs, when it should run at all: a batch job
    /// needs it while a run goes, a stream job all the time.
    pub per_instance: Option<SlotCount>,
    /// A batch job: its slots count only while a run goes.
    pub batch: bool,
    /// The plan restarts it into a new version, which rolls back to the old one if it fails its
    /// health gate (so a rollback needs `holds` again).
    pub may_roll_back: bool,
    /// It is brought back, not changed: drift repair, or an operation a crash interrupted. It
    /// was admitted when it was deployed, so its slots never make a revision not fit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recovering: bool,
}

impl JobSlots {
    fn releases(&self) -> u32 {
        self.holds.known().saturating_sub(self.needs.known())
    }

    fn acquires(&self) -> u32 {
        self.needs.known().saturating_sub(self.holds.known())
    }
}

/// The cluster's slots (`GET /overview`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClusterSlots {
    /// `slots-total`.
    pub total: u32,
    /// `slots-available`: free now.
    pub available: u32,
}

impl From<&ClusterOverview> for ClusterSlots {
    fn from(overview: &ClusterOverview) -> ClusterSlots {
        ClusterSlots {
            total: overview.slots_total,
            available: overview.slots_available,
        }
    }
}

/// The whole plan's slots against the cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotBudget {
    /// Per job, ordered as given.
    pub jobs: Vec<JobSlots>,
    /// Slots the jobs hold now (known counts only).
    pub holds: u32,
    /// Slots the jobs need once the plan is applied (known counts only).
    pub needs: u32,
    /// Slots freed by stopping, suspending, deleting or shrinking jobs.
    pub released: u32,
    /// Slots taken by new, resumed, restarted or growing jobs.
    pub acquired: u32,
    /// Jobs whose slots are the cluster's default parallelism, unknown offline; not in the sums.
    pub at_cluster_default: usize,
    /// Slots needed if every job the plan restarts into a new version rolled back to its old one
    /// while the rest of the plan stays applied.
    pub rollback_needs: u32,
    /// The cluster's slots, when it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSlots>,
    /// Slots missing for the plan, once stops freed theirs (0 when it fits).
    pub shortfall: u32,
    /// Slots a rollback would miss (0 when every rollback fits).
    pub rollback_shortfall: u32,
    /// Jobs one instance of which needs more slots than the whole cluster has: never scheduled.
    pub too_large: Vec<(String, u32)>,
}

impl SlotBudget {
    /// Sums `jobs` and compares them with `cluster`.
    pub fn new(jobs: Vec<JobSlots>, cluster: Option<ClusterSlots>) -> SlotBudget {
        let holds = jobs.iter().map(|j| j.holds.known()).sum::<u32>();
        let needs = jobs.iter().map(|j| j.needs.known()).sum::<u32>();
        let released = jobs.iter().map(JobSlots::releases).sum::<u32>();
        let acquired = jobs.iter().map(JobSlots::acquires).sum::<u32>();
        let at_cluster_default = jobs
            .iter()
            .filter(|j| {
                [Some(j.holds), Some(j.needs), j.per_instance]
                    .contains(&Some(SlotCount::ClusterDefault))
            })
            .count();
        let rollback_extra = jobs
            .iter()
            .filter(|j| j.may_roll_back)
            .map(JobSlots::releases)
            .sum::<u32>();
        let rollback_needs = needs + rollback_extra;
        let (shortfall, rollback_shortfall, too_large) = match cluster {
            Some(cluster) => {
                // What the plan's jobs can use: the free slots and those they hold themselves,
                // and what the jobs brought back need (they were admitted before).
                let recovering = jobs
                    .iter()
                    .filter(|j| j.recovering)
                    .map(JobSlots::acquires)
                    .sum::<u32>();
                let usable = cluster
                    .available
                    .saturating_add(holds)
                    .saturating_add(recovering);
                let too_large = jobs
                    .iter()
                    .filter(|j| !j.recovering)
                    .filter_map(|j| match j.per_instance {
                        Some(SlotCount::Known(n)) if n > cluster.total => {
                            Some((j.job_id.clone(), n))
                        }
                        _ => None,
                    })
                    .collect();
                (
                    needs.saturating_sub(usable),
                    rollback_needs.saturating_sub(usable),
                    too_large,
                )
            }
            None => (0, 0, Vec::new()),
        };
        SlotBudget {
            jobs,
            holds,
            needs,
            released,
            acquired,
            at_cluster_default,
            rollback_needs,
            cluster,
            shortfall,
            rollback_shortfall,
            too_large,
        }
    }

    /// The jobs' slots, by job id.
    pub fn of(&self, job_id: &str) -> Option<&JobSlots> {
        self.jobs.iter().find(|j| j.job_id == job_id)
    }

    /// Whether the plan can be scheduled on the cluster (`None` when the cluster was not asked).
    pub fn fits(&self) -> Option<bool> {
        self.cluster
            .map(|_| self.shortfall == 0 && self.too_large.is_empty())
    }

    /// Why the plan cannot be scheduled, with the numbers; `None` when it can (or the cluster was
    /// not asked).
    pub fn refusal(&self) -> Option<String> {
        let cluster = self.cluster?;
        let mut problems = Vec::new();
        if self.shortfall > 0 {
            let others = cluster
                .total
                .saturating_sub(cluster.available)
                .saturating_sub(self.holds);
            let stopping = self.releasing_jobs();
            problems.push(format!(
                "needs {} slots, the cluster has {}{} ({} free{}); {} short",
                self.needs,
                cluster.total,
                if others > 0 {
                    format!(", {others} of them taken by other jobs")
                } else {
                    String::new()
                },
                cluster.available + self.released,
                if stopping.is_empty() {
                    String::new()
                } else {
                    format!(" after stopping or shrinking {}", stopping.join(", "))
                },
                self.shortfall
            ));
        }
        for (job_id, slots) in &self.too_large {
            problems.push(format!(
                "{job_id} needs {slots} slots at once, more than the cluster's {}",
                cluster.total
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// A warning when a rollback of the restarted jobs would not find its slots.
    pub fn rollback_warning(&self) -> Option<String> {
        let cluster = self.cluster?;
        (self.shortfall == 0 && self.rollback_shortfall > 0).then(|| {
            format!(
                "a rollback of the restarted jobs would need {} slots, {} more than the cluster can give them ({} total)",
                self.rollback_needs, self.rollback_shortfall, cluster.total
            )
        })
    }

    /// One line for people: the totals and, with the cluster, whether they fit.
    pub fn summary(&self) -> String {
        let mut line = format!("{} after the change, {} before", self.needs, self.holds);
        let moves: Vec<String> = [
            (self.acquired > 0).then(|| format!("+{} taken", self.acquired)),
            (self.released > 0).then(|| format!("{} freed", self.released)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !moves.is_empty() {
            line.push_str(&format!(" ({})", moves.join(", ")));
        }
        if self.at_cluster_default > 0 {
            line.push_str(&format!(
                "; {} job(s) at the cluster's default parallelism not counted",
                self.at_cluster_default
            ));
        }
        let idle_batch: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.batch && j.needs == SlotCount::Known(0))
            .filter_map(|j| j.per_instance.map(|p| format!("{} {p}", j.job_id)))
            .collect();
        if !idle_batch.is_empty() {
            line.push_str(&format!(
                "; batch jobs take theirs only while a run goes ({})",
                idle_batch.join(", ")
            ));
        }
        match (self.cluster, self.refusal()) {
            (None, _) => line.push_str("; not checked against a cluster"),
            (Some(cluster), None) => line.push_str(&format!(
                "; the cluster has {}, {} free now: fits",
                cluster.total, cluster.available
            )),
            (Some(_), Some(refusal)) => line.push_str(&format!("; DOES NOT FIT: {refusal}")),
        }
        if self.rollback_needs != self.needs {
            line.push_str(&format!(
                "; a rollback of every restarted job would need {}",
                self.rollback_needs
            ));
        }
        line
    }

    fn releasing_jobs(&self) -> Vec<&str> {
        self.jobs
            .iter()
            .filter(|j| j.releases() > 0)
            .map(|j| j.job_id.as_str())
            .collect()
    }
}

/// Whether `plan` starts or grows a job, the only way a revision can run out of slots; a job
/// brought back (drift, a crash) was admitted before and is never what refuses a revision.
pub fn changes_slots(plan: &Plan) -> bool {
    plan.jobs
        .iter()
        .any(|j| matches!(j.action, Action::Create | Action::Upgrade | Action::Resume))
}

/// Why `apply` would refuse `plan` under `reconcile.slot_budget: enforce`, with the numbers.
pub fn refusal_of(plan: &Plan, budget: &SlotBudget) -> Option<String> {
    changes_slots(plan)
        .then(|| budget.refusal())
        .flatten()
        .map(|problem| format!("not enough task slots: {problem}"))
}

/// The slots of every job of a live `plan`: what its instances on the cluster hold (with the
/// parallelism recorded when it was deployed) and what the desired spec needs after the plan.
pub fn live_slots(
    plan: &Plan,
    desired: &DesiredState,
    records: &[JobRecord],
    cluster_jobs: &[JobOverview],
    cluster_default: u32,
) -> Vec<JobSlots> {
    let records: HashMap<&str, &JobRecord> =
        records.iter().map(|r| (r.job_id.as_str(), r)).collect();
    let mut alive: HashMap<&str, u32> = HashMap::default();
    for job in cluster_jobs.iter().filter(|j| is_alive(&j.state)) {
        if let Some(prefix) = job_prefix_of(&job.jid) {
            *alive.entry(prefix).or_default() += 1;
        }
    }
    plan.jobs
        .iter()
        .map(|entry| {
            let record = records.get(entry.job_id.as_str()).copied();
            let job = desired.jobs.get(&entry.job_id);
            // Unchanged, or changed in fields the running job does not use: it runs the desired
            // parallelism, and reading the recorded deployment is not needed (a no-op pass over
            // 1,000 jobs must stay cheap).
            let same_spec = matches!(entry.action, Action::Unchanged | Action::Update);
            let running_parallelism = job
                .filter(|_| same_spec)
                .map(|j| parallelism_of(&j.spec, Some(cluster_default)).known())
                .or_else(|| {
                    record
                        .and_then(|r| r.deployment_json.as_deref())
                        .and_then(|json| {
                            serde_json::from_str::<crate::reconcile::Deployment>(json).ok()
                        })
                        .map(|d| d.parallelism.unwrap_or(cluster_default))
                })
                .or_else(|| job.map(|j| parallelism_of(&j.spec, Some(cluster_default)).known()))
                .unwrap_or(cluster_default);
            let instances = alive
                .get(flink_job_prefix(&entry.job_id).as_str())
                .copied()
                .unwrap_or(0);
            let holds = SlotCount::Known(running_parallelism).times(instances);
            let wanted = job
                .filter(|j| j.spec.state == DesiredRunState::Running)
                .map(|j| parallelism_of(&j.spec, Some(cluster_default)));
            let batch = job.is_some_and(|j| j.spec.job_type == JobType::Batch);
            let needs = if batch {
                // Runs going on go on; the next one starts at its time, when slots are free.
                holds
            } else {
                match entry.action {
                    Action::Create
                    | Action::Upgrade
                    | Action::Restart
                    | Action::Resume
                    | Action::Continue => wanted.unwrap_or(SlotCount::Known(0)),
                    Action::Suspend | Action::Delete => SlotCount::Known(0),
                    Action::Update
                    | Action::Adopt
                    | Action::Wait
                    | Action::Blocked
                    | Action::Unchanged => holds,
                }
            };
            // Only what the plan starts must fit: a job already deployed is judged when it changes.
            let starts = matches!(
                entry.action,
                Action::Create
                    | Action::Upgrade
                    | Action::Restart
                    | Action::Resume
                    | Action::Continue
            );
            JobSlots {
                job_id: entry.job_id.clone(),
                holds,
                needs,
                per_instance: wanted.filter(|_| starts),
                batch,
                may_roll_back: !batch && entry.action == Action::Upgrade,
                recovering: matches!(entry.action, Action::Restart | Action::Continue),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, holds: u32, needs: u32) -> JobSlots {
        JobSlots {
            job_id: id.into(),
            holds: SlotCount::Known(holds),
            needs: SlotCount::Known(needs),
            per_instance: (needs > 0).then_some(SlotCount::Known(needs)),
            batch: false,
            may_roll_back: holds > 0 && needs > 0,
            recovering: false,
        }
    }

    const CLUSTER: ClusterSlots = ClusterSlots {
        total: 8,
        available: 2,
    };

    #[test]
    fn an_upgrade_from_2_to_4_needs_2_more() {
        let budget = SlotBudget::new(vec![job("orders", 2, 4)], Some(CLUSTER));
        assert_eq!((budget.holds, budget.needs), (2, 4));
        assert_eq!(budget.acquired, 2);
        assert_eq!(budget.shortfall, 0, "2 free slots are enough");
        assert_eq!(budget.fits(), Some(true));
        let tight = SlotBudget::new(
            vec![job("orders", 2, 4)],
            Some(ClusterSlots {
                total: 8,
                available: 1,
            }),
        );
        assert_eq!(tight.shortfall, 1);
        assert_eq!(tight.fits(), Some(false));
        assert_eq!(
            tight.refusal().unwrap(),
            "needs 4 slots, the cluster has 8, 5 of them taken by other jobs (1 free); 1 short"
        );
    }

    #[test]
    fn a_deleted_job_frees_its_slots_for_a_new_one() {
        let jobs = vec![job("legacy", 3, 0), job("fresh", 0, 4)];
        let budget = SlotBudget::new(jobs, Some(CLUSTER));
        assert_eq!(budget.released, 3);
        assert_eq!(budget.acquired, 4);
        assert_eq!(budget.needs, 4);
        assert_eq!(budget.shortfall, 0, "2 free + 3 freed >= 4");
        let crowded = SlotBudget::new(vec![job("legacy", 3, 0), job("fresh", 0, 6)], Some(CLUSTER));
        assert_eq!(crowded.shortfall, 1);
        assert_eq!(
            crowded.refusal().unwrap(),
            "needs 6 slots, the cluster has 8, 3 of them taken by other jobs (5 free after stopping or shrinking legacy); 1 short"
        );
    }

    #[test]
    fn a_running_batch_job_counts_while_its_run_goes() {
        let plan = Plan {
            jobs: vec![super::super::JobPlan::new("report", Action::Unchanged)],
            unmanaged: vec![],
            cluster_unreachable: None,
        };
        let spec = crate::spec::parse_spec(
            "jobs/report.yaml",
            "job_id: report\njob_type: batch\nartifact_path: a.jar\ndeployment: { parallelism: 3 }\nbatch_config: { cron: \"0 2 * * *\" }\n",
        )
        .unwrap();
        let desired = DesiredState {
            jobs: [(
                "report".to_string(),
                crate::spec::DesiredJob::new(
                    spec,
                    crate::spec::RepoPath::parse("jobs/report.yaml").unwrap(),
                    "git-blob:1".into(),
                    None,
                ),
            )]
            .into(),
        };
        let run = |state: &str| JobOverview {
            jid: super::super::flink_job_id("report", 4),
            name: "report".into(),
            state: state.into(),
            start_time: 0,
            end_time: -1,
        };
        let running = live_slots(&plan, &desired, &[], &[run("RUNNING")], 1);
        assert_eq!(running[0].holds, SlotCount::Known(3));
        assert_eq!(running[0].needs, SlotCount::Known(3), "the run goes on");
        assert!(running[0].batch);
        let budget = SlotBudget::new(running, Some(CLUSTER));
        assert_eq!((budget.holds, budget.needs, budget.shortfall), (3, 3, 0));
        let finished = live_slots(&plan, &desired, &[], &[run("FINISHED")], 1);
        assert_eq!(finished[0].holds, SlotCount::Known(0));
        assert_eq!(finished[0].needs, SlotCount::Known(0), "no run, no slots");
        assert_eq!(
            finished[0].per_instance, None,
            "unchanged: not judged again"
        );
        let mut changed = plan.clone();
        changed.jobs[0].action = Action::Upgrade;
        let upgraded = live_slots(&changed, &desired, &[], &[run("RUNNING")], 1);
        assert_eq!(upgraded[0].needs, SlotCount::Known(3), "the run goes on");
        assert_eq!(upgraded[0].per_instance, Some(SlotCount::Known(3)));
        assert!(
            !upgraded[0].may_roll_back,
            "a batch job runs the new version next time"
        );
        let small = SlotBudget::new(
            upgraded,
            Some(ClusterSlots {
                total: 2,
                available: 0,
            }),
        );
        assert_eq!(small.too_large, vec![("report".to_string(), 3)]);
    }

    #[test]
    fn a_job_brought_back_is_never_what_does_not_fit() {
        // orders fell off the cluster (drift) and others took its slots meanwhile: it is still
        // restarted, while a new job that needs slots does not fit.
        let mut restart = job("orders", 0, 2);
        restart.recovering = true;
        let full = ClusterSlots {
            total: 8,
            available: 0,
        };
        assert_eq!(
            SlotBudget::new(vec![restart.clone()], Some(full)).fits(),
            Some(true)
        );
        let budget = SlotBudget::new(vec![restart, job("fresh", 0, 1)], Some(full));
        assert_eq!(budget.shortfall, 1);
    }

    #[test]
    fn one_job_larger_than_the_cluster_never_fits() {
        let budget = SlotBudget::new(
            vec![job("huge", 0, 9)],
            Some(ClusterSlots {
                total: 8,
                available: 8,
            }),
        );
        assert_eq!(budget.too_large, vec![("huge".to_string(), 9)]);
        assert_eq!(budget.fits(), Some(false));
        assert!(
            budget
                .refusal()
                .unwrap()
                .contains("huge needs 9 slots at once, more than the cluster's 8")
        );
    }

    #[test]
    fn a_rollback_may_need_more_than_the_change() {
        // orders shrinks 4 -> 2 and fresh takes the 2 freed: a rollback of orders needs them back.
        let jobs = vec![job("orders", 4, 2), job("fresh", 0, 2)];
        let budget = SlotBudget::new(
            jobs,
            Some(ClusterSlots {
                total: 4,
                available: 0,
            }),
        );
        assert_eq!(budget.shortfall, 0);
        assert_eq!(budget.rollback_needs, 6);
        assert_eq!(budget.rollback_shortfall, 2);
        assert!(
            budget
                .rollback_warning()
                .unwrap()
                .contains("would need 6 slots")
        );
    }

    #[test]
    fn offline_the_cluster_default_is_counted_apart() {
        let jobs = vec![
            job("orders", 2, 2),
            JobSlots {
                job_id: "fresh".into(),
                holds: SlotCount::Known(0),
                needs: SlotCount::ClusterDefault,
                per_instance: Some(SlotCount::ClusterDefault),
                batch: false,
                may_roll_back: false,
                recovering: false,
            },
        ];
        let budget = SlotBudget::new(jobs, None);
        assert_eq!((budget.needs, budget.at_cluster_default), (2, 1));
        assert_eq!(budget.fits(), None);
        assert_eq!(
            budget.summary(),
            "2 after the change, 2 before; 1 job(s) at the cluster's default parallelism not counted; not checked against a cluster"
        );
    }
}
