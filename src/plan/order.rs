//! The order in which one revision's steps run: what frees slots first (downstream first), then
//! what starts (upstream first), in waves of jobs that do not depend on each other. No I/O.
//!
//! A dependency is written `depends_on: [upstream]` in the downstream job's spec. Stopping a job
//! (delete, suspend, or an operation in flight that stops one) must not leave a downstream job
//! reading from nothing, and frees the slots that later steps need: the stop stage runs first,
//! downstream before upstream. Starting a job (create, upgrade, resume, restart, and anything
//! without a cluster action) needs its upstream healthy: the start stage runs upstream before
//! downstream, each wave after the health gates of the one before. Jobs without a dependency
//! path between them share a wave and run concurrently.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, JobPlan};
use crate::reconcile::lifecycle::{OpKind, Phase};
use crate::spec::DesiredState;
use crate::state::JobRecord;

/// Which jobs each job depends on: the desired specs' `depends_on`, and for jobs the revision no
/// longer has (being deleted) the `depends_on` of the spec they last ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    upstream: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    /// The graph of a revision and the agent's records.
    pub fn new<'a>(
        desired: &DesiredState,
        records: impl IntoIterator<Item = &'a JobRecord>,
    ) -> Graph {
        let mut upstream: BTreeMap<String, BTreeSet<String>> = desired
            .jobs
            .iter()
            .map(|(id, job)| {
                let targets = job
                    .spec
                    .depends_on
                    .iter()
                    .map(|d| d.job_id.clone())
                    .collect();
                (id.clone(), targets)
            })
            .collect();
        for record in records {
            if desired.jobs.contains_key(&record.job_id) {
                continue;
            }
            let recorded = recorded_depends_on(&record.spec_json);
            if !recorded.is_empty() {
                upstream.insert(record.job_id.clone(), recorded);
            }
        }
        Graph { upstream }
    }

    /// A graph from `(job, [upstream, …])` pairs.
    pub fn from_edges<'a>(edges: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) -> Graph {
        Graph {
            upstream: edges
                .into_iter()
                .map(|(job, ups)| (job.to_string(), ups.iter().map(|u| u.to_string()).collect()))
                .collect(),
        }
    }

    /// The jobs `job_id` names in `depends_on`.
    pub fn upstream_of(&self, job_id: &str) -> impl Iterator<Item = &str> {
        self.upstream
            .get(job_id)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether any job depends on another.
    pub fn is_empty(&self) -> bool {
        self.upstream.values().all(BTreeSet::is_empty)
    }

    /// Every job `job_id` depends on, directly or through others.
    fn all_upstream(&self, job_id: &str) -> BTreeSet<&str> {
        let mut found = BTreeSet::new();
        let mut todo: Vec<&str> = self.upstream_of(job_id).collect();
        while let Some(next) = todo.pop() {
            if next != job_id && found.insert(next) {
                todo.extend(self.upstream_of(next));
            }
        }
        found
    }
}

/// `spec.depends_on` of a recorded canonical spec JSON (empty when it has none or is unreadable).
fn recorded_depends_on(spec_json: &str) -> BTreeSet<String> {
    serde_json::from_str::<serde_json::Value>(spec_json)
        .ok()
        .and_then(|v| {
            v["spec"]["depends_on"].as_array().map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The two stages of a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Stops that free slots: downstream first.
    Stop,
    /// Everything else: upstream first, each wave after the health gates of the one before.
    Start,
}

/// The stage of one planned step; `phase` is the job's recorded phase (for an operation in flight).
pub fn stage_of(action: Action, phase: &Phase) -> Stage {
    match action {
        Action::Delete | Action::Suspend => Stage::Stop,
        Action::Continue
            if phase.operation().is_some_and(|op| {
                matches!(op.kind, OpKind::Suspend | OpKind::Delete | OpKind::Discard)
            }) =>
        {
            Stage::Stop
        }
        _ => Stage::Start,
    }
}

/// Whether a step of this action starts what the revision asks for, and so waits for its
/// upstream to reach the revision too: a failed upstream holds it back. Drift repair and
/// operations in flight are never held back (a job that should run is always brought back).
pub fn held_by_failed_upstream(action: Action) -> bool {
    matches!(action, Action::Create | Action::Upgrade | Action::Resume)
}

/// One wave: jobs (indices into the planned steps) that run concurrently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// The stage the wave belongs to.
    pub stage: Stage,
    /// Indices into the steps given to [`waves`], in their order.
    pub jobs: Vec<usize>,
}

/// The waves of a revision: `steps` are `(job_id, stage)`. The stop stage comes first, a job
/// after every job of the stage that depends on it (directly or through others); then the start
/// stage, a job after every job of the stage it depends on. Empty waves are left out. A cycle
/// (which `validate` refuses) cannot hang or drop anything: its jobs only lose their order.
pub fn waves(steps: &[(&str, Stage)], graph: &Graph) -> Vec<Wave> {
    let mut result = Vec::new();
    for stage in [Stage::Stop, Stage::Start] {
        let members: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].1 == stage).collect();
        let ids: BTreeMap<&str, usize> = members.iter().map(|&i| (steps[i].0, i)).collect();
        // For each member, the members it depends on (directly or through any job).
        let upstream_members: BTreeMap<usize, Vec<usize>> = members
            .iter()
            .map(|&i| {
                let ups = graph
                    .all_upstream(steps[i].0)
                    .into_iter()
                    .filter_map(|u| ids.get(u).copied())
                    .filter(|&u| u != i)
                    .collect();
                (i, ups)
            })
            .collect();
        // For each member, the members that must run before it.
        let before: BTreeMap<usize, Vec<usize>> = match stage {
            // Upstream first.
            Stage::Start => upstream_members,
            // Downstream first: the members that depend on it.
            Stage::Stop => {
                let mut downstream: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
                for (&i, ups) in &upstream_members {
                    for &u in ups {
                        downstream.entry(u).or_default().push(i);
                    }
                }
                downstream
            }
        };
        let mut level: BTreeMap<usize, usize> = BTreeMap::new();
        for &i in &members {
            level_of(i, &before, &mut level, &mut BTreeSet::new());
        }
        let depth = level.values().max().map_or(0, |m| m + 1);
        for wave_level in 0..depth {
            let jobs: Vec<usize> = members
                .iter()
                .copied()
                .filter(|i| level.get(i) == Some(&wave_level))
                .collect();
            if !jobs.is_empty() {
                result.push(Wave { stage, jobs });
            }
        }
    }
    result
}

/// The longest chain of `before` ending at `i` (memoized in `level`; `visiting` breaks cycles).
fn level_of(
    i: usize,
    before: &BTreeMap<usize, Vec<usize>>,
    level: &mut BTreeMap<usize, usize>,
    visiting: &mut BTreeSet<usize>,
) -> usize {
    if let Some(&known) = level.get(&i) {
        return known;
    }
    if !visiting.insert(i) {
        return 0;
    }
    let mut mine = 0;
    for &prior in before.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
        if visiting.contains(&prior) {
            continue;
        }
        mine = mine.max(level_of(prior, before, level, visiting) + 1);
    }
    visiting.remove(&i);
    level.insert(i, mine);
    mine
}

/// The order in which a revision's applied jobs are rolled back: downstream first, in waves of
/// jobs that do not depend on each other (each inner list, in the order given).
pub fn rollback_waves<'a>(jobs: &[&'a str], graph: &Graph) -> Vec<Vec<&'a str>> {
    let steps: Vec<(&str, Stage)> = jobs.iter().map(|j| (*j, Stage::Stop)).collect();
    waves(&steps, graph)
        .into_iter()
        .map(|wave| wave.jobs.into_iter().map(|i| jobs[i]).collect())
        .collect()
}

/// The steps of a plan as [`waves`] takes them.
pub fn steps_of(jobs: &[JobPlan], phase_of: impl Fn(&str) -> Phase) -> Vec<(&str, Stage)> {
    jobs.iter()
        .map(|entry| {
            (
                entry.job_id.as_str(),
                stage_of(entry.action, &phase_of(&entry.job_id)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waves as job ids, e.g. `[("stop", ["c"]), ("start", ["a", "x"])]`.
    fn named(steps: &[(&str, Stage)], graph: &Graph) -> Vec<(&'static str, Vec<String>)> {
        waves(steps, graph)
            .into_iter()
            .map(|w| {
                (
                    if w.stage == Stage::Stop {
                        "stop"
                    } else {
                        "start"
                    },
                    w.jobs.iter().map(|&i| steps[i].0.to_string()).collect(),
                )
            })
            .collect()
    }

    fn wave(stage: &'static str, jobs: &[&str]) -> (&'static str, Vec<String>) {
        (stage, jobs.iter().map(|j| j.to_string()).collect())
    }

    /// a ← b ← c (c depends on b, b on a), and x on its own.
    fn chain() -> Graph {
        Graph::from_edges([("b", &["a"][..]), ("c", &["b"][..])])
    }

    #[test]
    fn starts_go_upstream_first_and_unrelated_jobs_share_the_first_wave() {
        let steps = [
            ("c", Stage::Start),
            ("b", Stage::Start),
            ("a", Stage::Start),
            ("x", Stage::Start),
        ];
        assert_eq!(
            named(&steps, &chain()),
            [
                wave("start", &["a", "x"]),
                wave("start", &["b"]),
                wave("start", &["c"])
            ]
        );
    }

    #[test]
    fn stops_go_downstream_first_and_before_every_start() {
        let steps = [
            ("a", Stage::Stop),
            ("b", Stage::Stop),
            ("c", Stage::Stop),
            ("x", Stage::Start),
        ];
        assert_eq!(
            named(&steps, &chain()),
            [
                wave("stop", &["c"]),
                wave("stop", &["b"]),
                wave("stop", &["a"]),
                wave("start", &["x"])
            ]
        );
    }

    #[test]
    fn order_follows_dependencies_through_jobs_that_have_nothing_to_do() {
        // b is unchanged (a start-stage step without action), so c still waits for a, and on
        // delete a still waits for c.
        let starts = [("a", Stage::Start), ("c", Stage::Start)];
        assert_eq!(
            named(&starts, &chain()),
            [wave("start", &["a"]), wave("start", &["c"])]
        );
        let stops = [("a", Stage::Stop), ("c", Stage::Stop), ("b", Stage::Start)];
        assert_eq!(
            named(&stops, &chain()),
            [
                wave("stop", &["c"]),
                wave("stop", &["a"]),
                wave("start", &["b"])
            ]
        );
    }

    #[test]
    fn a_diamond_puts_both_branches_in_one_wave() {
        let graph = Graph::from_edges([
            ("left", &["root"][..]),
            ("right", &["root"][..]),
            ("sink", &["left", "right"][..]),
        ]);
        let steps = [
            ("sink", Stage::Start),
            ("right", Stage::Start),
            ("left", Stage::Start),
            ("root", Stage::Start),
        ];
        assert_eq!(
            named(&steps, &graph),
            [
                wave("start", &["root"]),
                wave("start", &["right", "left"]),
                wave("start", &["sink"])
            ]
        );
        assert_eq!(
            rollback_waves(&["root", "left", "right", "sink"], &graph),
            vec![vec!["sink"], vec!["left", "right"], vec!["root"]]
        );
    }

    #[test]
    fn without_dependencies_everything_is_one_wave_per_stage() {
        let steps = [("a", Stage::Start), ("b", Stage::Stop), ("c", Stage::Start)];
        assert_eq!(
            named(&steps, &Graph::default()),
            [wave("stop", &["b"]), wave("start", &["a", "c"])]
        );
        assert!(named(&[], &Graph::default()).is_empty());
    }

    #[test]
    fn a_cycle_neither_hangs_nor_drops_a_job() {
        let graph = Graph::from_edges([("a", &["b"][..]), ("b", &["a"][..])]);
        let steps = [("a", Stage::Start), ("b", Stage::Start), ("c", Stage::Stop)];
        let all: BTreeSet<String> = named(&steps, &graph)
            .into_iter()
            .flat_map(|(_, jobs)| jobs)
            .collect();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn deleted_jobs_keep_the_dependencies_they_were_deployed_with() {
        let spec = |deps: &str| {
            format!(r#"{{"spec":{{"job_id":"x","depends_on":{deps}}},"artifact_content":"a"}}"#)
        };
        let record = JobRecord {
            job_id: "c".into(),
            spec_json: spec(r#"["b"]"#),
            ..JobRecord::default()
        };
        let graph = Graph::new(&DesiredState::default(), [&record]);
        assert_eq!(graph.upstream_of("c").collect::<Vec<_>>(), ["b"]);
        assert!(recorded_depends_on("not json").is_empty());
        assert!(recorded_depends_on(&spec("[]")).is_empty());
    }

    #[test]
    fn the_stage_of_a_step_follows_its_action_or_the_operation_in_flight() {
        assert_eq!(stage_of(Action::Delete, &Phase::Steady), Stage::Stop);
        assert_eq!(stage_of(Action::Suspend, &Phase::Steady), Stage::Stop);
        assert_eq!(stage_of(Action::Upgrade, &Phase::Steady), Stage::Start);
        assert_eq!(stage_of(Action::Continue, &Phase::Steady), Stage::Start);
        let in_flight = |kind: &str| -> Phase {
            serde_json::from_value(serde_json::json!({
                "phase": "stopped", "restore": null,
                "op": {"kind": kind, "head": "h", "target": null, "predecessor": null, "empty_state_allowed": true}
            }))
            .unwrap()
        };
        assert_eq!(
            stage_of(Action::Continue, &in_flight("delete")),
            Stage::Stop
        );
        assert_eq!(
            stage_of(Action::Continue, &in_flight("discard")),
            Stage::Stop
        );
        assert_eq!(
            stage_of(Action::Continue, &in_flight("upgrade")),
            Stage::Start
        );
        assert!(held_by_failed_upstream(Action::Upgrade));
        assert!(!held_by_failed_upstream(Action::Restart));
        assert!(!held_by_failed_upstream(Action::Continue));
    }
}
