//! A change under review: two revisions of the spec repo compared job by job (a pull request's
//! base and head), optionally joined with the live plan. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::slots::{ClusterSlots, JobSlots, SlotBudget, SlotCount, live_slots, parallelism_of};
use super::{Action, Plan, only_in_place_changes, query_state_warning, spec_changes};
use crate::flink::JobOverview;
use crate::spec::program::Program;
use crate::spec::{DesiredJob, DesiredRunState, DesiredState, JobKind, JobType, UpgradeMode};
use crate::state::JobRecord;

/// The JAR a job runs (its own, or the runner a SQL or Python spec brings along).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JarInfo {
    /// Repository path or URL.
    pub path: String,
    /// Its sha256 (hex), hashed from the revision's blob or pinned in the spec.
    pub sha256: String,
}

impl std::fmt::Display for JarInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sha256 {})",
            self.path,
            self.sha256.get(..12).unwrap_or(&self.sha256)
        )
    }
}

/// One revision: its desired state and, per job, the JAR it runs.
pub struct Side<'a> {
    /// The specs.
    pub desired: &'a DesiredState,
    /// Per job id, the JAR (jobs without a JAR of their own are absent).
    pub jars: &'a BTreeMap<String, JarInfo>,
}

/// What the agent knows beyond git: the plan against the cluster and its records.
pub struct Live<'a> {
    /// `crate::plan::plan` of the head against the cluster and the records.
    pub plan: &'a Plan,
    /// The agent's records.
    pub records: &'a [JobRecord],
    /// The jobs on the cluster.
    pub cluster_jobs: &'a [JobOverview],
    /// `parallelism.default` of the cluster.
    pub default_parallelism: u32,
    /// `slots-total` and `slots-available`.
    pub slots: Option<ClusterSlots>,
}

/// How one file of a SQL or Python program changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    /// Repository path.
    pub path: String,
    /// Lines added.
    pub added: usize,
    /// Lines removed.
    pub removed: usize,
    /// The unified diff (`--- a/path`, `+++ b/path`).
    pub unified: String,
}

impl FileDiff {
    /// `+3 −1 lines in sql/x.sql`.
    pub fn summary(&self) -> String {
        format!("+{} −{} lines in {}", self.added, self.removed, self.path)
    }
}

/// The review of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobReview {
    /// The spec's `job_id`.
    pub job_id: String,
    /// `jar`, `sql` or `python`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobKind>,
    /// The spec file (at the head, else at the base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What applying the head would do to it.
    pub action: Action,
    /// Why: changed fields, the sources' diff summary, the JAR change.
    pub reasons: Vec<String>,
    /// How: `savepoint`, `last-state`, `stateless`, `in place`, `new`…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    /// Per changed source file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<FileDiff>,
    /// The JAR before and after, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jar: Option<(Option<JarInfo>, Option<JarInfo>)>,
    /// What could go wrong, for a reviewer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub risks: Vec<Risk>,
    /// The Flink job and its state, with the live plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flink: Option<String>,
    /// Whether the new version restores the running job's latest savepoint (`--check-state`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_compatibility: Option<super::compat::StateCompatibility>,
}

impl JobReview {
    /// Takes the state check of the live plan's entry: an incompatible verdict is a risk too.
    pub fn set_state_compatibility(&mut self, verdict: super::compat::StateCompatibility) {
        if matches!(
            verdict,
            super::compat::StateCompatibility::Incompatible { .. }
        ) {
            self.risks.push(risk("state lost", verdict.summary()));
        }
        self.state_compatibility = Some(verdict);
    }

    /// The action as shown to people (`update (no restart)` for an update).
    pub fn action_label(&self) -> &'static str {
        match self.action {
            Action::Update => "update (no restart)",
            other => other.as_str(),
        }
    }
}

/// Something a reviewer should know before the change is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Risk {
    /// A few words, for a table cell (`restart`, `+2 slots`).
    pub tag: String,
    /// The whole sentence.
    pub detail: String,
}

fn risk(tag: impl Into<String>, detail: impl Into<String>) -> Risk {
    Risk {
        tag: tag.into(),
        detail: detail.into(),
    }
}

/// The whole review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    /// Per job, ordered by job id.
    pub jobs: Vec<JobReview>,
    /// The slots before and after.
    pub slots: SlotBudget,
    /// Whether the actions come from the live plan (cluster and records) or from git alone.
    pub live: bool,
}

impl Review {
    /// Jobs that change.
    pub fn changed(&self) -> impl Iterator<Item = &JobReview> {
        self.jobs.iter().filter(|j| j.action != Action::Unchanged)
    }

    /// Jobs that stay as they are.
    pub fn unchanged(&self) -> impl Iterator<Item = &JobReview> {
        self.jobs.iter().filter(|j| j.action == Action::Unchanged)
    }
}

fn runs(job: &DesiredJob) -> bool {
    job.spec.state == DesiredRunState::Running
}

/// What the head does to a job the base had (or not), judged from git alone: a job of the base
/// is taken to be deployed as the base says.
fn offline_action(base: Option<&DesiredJob>, head: Option<&DesiredJob>) -> (Action, Vec<String>) {
    match (base, head) {
        (None, Some(job)) if runs(job) => {
            let mut reasons = vec![format!("new spec {}", job.file)];
            if let Some(path) = &job.spec.restore_from {
                reasons.push(format!("starts from restore_from {path}"));
            }
            (Action::Create, reasons)
        }
        (None, Some(_)) => (
            Action::Unchanged,
            vec!["new spec, suspended: nothing starts".into()],
        ),
        (Some(old), None) => (Action::Delete, vec![format!("spec {} removed", old.file)]),
        (Some(old), Some(new)) => {
            let changes = spec_changes(&old.canonical_json(), new);
            match (runs(old), runs(new)) {
                // The changes name `state` itself.
                (true, false) => (Action::Suspend, changes),
                (false, true) => (Action::Resume, changes),
                (false, false) if changes.is_empty() => (Action::Unchanged, changes),
                (false, false) => (
                    Action::Unchanged,
                    prefixed("suspended; the changes apply on resume", changes),
                ),
                (true, true) if changes.is_empty() => (Action::Unchanged, changes),
                (true, true)
                    if new.spec.job_type == JobType::Stream
                        && only_in_place_changes(&old.canonical_json(), new) =>
                {
                    (Action::Update, changes)
                }
                (true, true) => (Action::Upgrade, changes),
            }
        }
        (None, None) => (Action::Unchanged, Vec::new()),
    }
}

fn prefixed(first: &str, rest: Vec<String>) -> Vec<String> {
    std::iter::once(first.to_string()).chain(rest).collect()
}

/// How the action moves the job's state.
fn how(action: Action, base: Option<&DesiredJob>, head: Option<&DesiredJob>) -> Option<String> {
    let mode = |job: &DesiredJob| match job.spec.upgrade_mode {
        UpgradeMode::Savepoint => "savepoint",
        UpgradeMode::LastState => "last-state",
        UpgradeMode::Stateless => "stateless",
    };
    let batch = head
        .or(base)
        .is_some_and(|j| j.spec.job_type == JobType::Batch);
    Some(match action {
        Action::Create if head.is_some_and(|j| j.spec.restore_from.is_some()) => {
            "from restore_from".into()
        }
        Action::Create => "new".into(),
        Action::Upgrade if batch => "next run".into(),
        Action::Upgrade => mode(head?).into(),
        Action::Update => "in place".into(),
        Action::Suspend | Action::Delete | Action::Resume if batch => "-".into(),
        Action::Suspend | Action::Delete | Action::Resume => "savepoint".into(),
        Action::Restart => "latest state".into(),
        _ => return None,
    })
}

/// Per file, how the sources changed from `old` to `new` (files only in one are all added or
/// all removed).
pub fn source_diffs(old: Option<&Program>, new: Option<&Program>) -> Vec<FileDiff> {
    let (old, new): (BTreeMap<_, _>, BTreeMap<_, _>) = (
        old.map(Program::texts)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        new.map(Program::texts)
            .unwrap_or_default()
            .into_iter()
            .collect(),
    );
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    paths
        .into_iter()
        .filter_map(|path| {
            let (before, after) = (
                old.get(path).map(String::as_str).unwrap_or(""),
                new.get(path).map(String::as_str).unwrap_or(""),
            );
            if before == after {
                return None;
            }
            let diff = similar::TextDiff::from_lines(before, after);
            let (mut added, mut removed) = (0, 0);
            for change in diff.iter_all_changes() {
                match change.tag() {
                    similar::ChangeTag::Insert => added += 1,
                    similar::ChangeTag::Delete => removed += 1,
                    similar::ChangeTag::Equal => {}
                }
            }
            let unified = diff
                .unified_diff()
                .context_radius(2)
                .header(
                    &if old.contains_key(path) {
                        format!("a/{path}")
                    } else {
                        "/dev/null".into()
                    },
                    &if new.contains_key(path) {
                        format!("b/{path}")
                    } else {
                        "/dev/null".into()
                    },
                )
                .to_string();
            Some(FileDiff {
                path: path.clone(),
                added,
                removed,
                unified,
            })
        })
        .collect()
}

/// What could go wrong when `action` runs, for a reviewer.
fn risks(
    action: Action,
    base: Option<&DesiredJob>,
    head: Option<&DesiredJob>,
    sources_changed: bool,
    slots: Option<&JobSlots>,
) -> Vec<Risk> {
    let mut risks = Vec::new();
    let stream = head
        .or(base)
        .is_some_and(|j| j.spec.job_type == JobType::Stream);
    if let Some(job) = head.filter(|_| stream) {
        match action {
            Action::Upgrade | Action::Restart => {
                risks.push(risk(
                    "restart",
                    "the job stops and starts again: it processes nothing until the new version runs",
                ));
                match job.spec.upgrade_mode {
                    UpgradeMode::Stateless if action == Action::Upgrade => risks.push(risk(
                        "state dropped",
                        "upgrade_mode stateless: the new version starts WITHOUT the job's state",
                    )),
                    UpgradeMode::LastState if action == Action::Upgrade => risks.push(risk(
                        "last-state",
                        "upgrade_mode last-state: the new version starts from the newest checkpoint; what came after it is processed again",
                    )),
                    _ => {}
                }
            }
            _ => {}
        }
        if matches!(action, Action::Upgrade | Action::Resume | Action::Restart)
            && job.spec.allow_non_restored_state
            && job.spec.upgrade_mode != UpgradeMode::Stateless
        {
            risks.push(risk(
                "allow_non_restored_state",
                "allow_non_restored_state is set: state that no operator of the new version claims is dropped silently",
            ));
        }
        if action == Action::Upgrade
            && sources_changed
            && let Some(warning) = base
                .and_then(|b| b.program.as_ref())
                .zip(job.program.as_ref())
                .and_then(|(old, new)| query_state_warning(job, old, new))
        {
            risks.push(risk("state may not restore", warning));
        }
    }
    match action {
        Action::Suspend if stream => risks.push(risk(
            "stops",
            "the job stops; its savepoint is kept for resuming",
        )),
        Action::Delete if stream => risks.push(risk(
            "stops for good",
            "the job stops for good; its final savepoint is kept",
        )),
        Action::Delete => risks.push(risk(
            "runs cancelled",
            "runs going on are cancelled; no new run starts",
        )),
        _ => {}
    }
    if let Some(slots) = slots
        && let (SlotCount::Known(before), SlotCount::Known(after)) = (slots.holds, slots.needs)
        && after > before
    {
        let more = after - before;
        risks.push(risk(
            format!("+{more} slot{}", if more == 1 { "" } else { "s" }),
            format!(
                "takes {} more task slot(s): {before} → {after}",
                after - before
            ),
        ));
    }
    risks
}

/// The JAR line and the reasons it replaces.
fn jar_change(
    reasons: &mut Vec<String>,
    before: Option<&JarInfo>,
    after: Option<&JarInfo>,
) -> Option<(Option<JarInfo>, Option<JarInfo>)> {
    if before == after || before.is_none() || after.is_none() {
        return None;
    }
    let (before, after) = (before?, after?);
    reasons.retain(|r| {
        !(r.starts_with("artifact.path:")
            || r.starts_with("artifact.url:")
            || r.starts_with("artifact_sha256:")
            || r.starts_with("runner:")
            || r == "artifact content changed"
            || r == "runner JAR changed")
    });
    reasons.push(format!("JAR changed: {before} → {after}"));
    Some((Some(before.clone()), Some(after.clone())))
}

/// The offline slots of one job: what the base runs, what the head runs.
fn offline_slots(
    job_id: &str,
    base: Option<&DesiredJob>,
    head: Option<&DesiredJob>,
    action: Action,
) -> JobSlots {
    let stream_running = |job: Option<&DesiredJob>| {
        job.filter(|j| runs(j) && j.spec.job_type == JobType::Stream)
            .map(|j| parallelism_of(&j.spec, None))
            .unwrap_or(SlotCount::Known(0))
    };
    let batch = head
        .or(base)
        .is_some_and(|j| j.spec.job_type == JobType::Batch);
    JobSlots {
        job_id: job_id.to_string(),
        holds: stream_running(base),
        needs: stream_running(head),
        per_instance: head
            .filter(|j| runs(j))
            .map(|j| parallelism_of(&j.spec, None)),
        batch,
        may_roll_back: !batch && action == Action::Upgrade,
        recovering: false,
    }
}

/// Compares the `base` and `head` revisions job by job; with `live`, the actions and slots are
/// those `apply` would take against the cluster and the records now.
pub fn review(base: &Side<'_>, head: &Side<'_>, live: Option<&Live<'_>>) -> Review {
    let mut ids: BTreeSet<&str> = base
        .desired
        .jobs
        .keys()
        .chain(head.desired.jobs.keys())
        .map(String::as_str)
        .collect();
    if let Some(live) = live {
        ids.extend(live.plan.jobs.iter().map(|j| j.job_id.as_str()));
    }
    let live_slots_by_id: BTreeMap<String, JobSlots> = live
        .map(|l| {
            live_slots(
                l.plan,
                head.desired,
                l.records,
                l.cluster_jobs,
                l.default_parallelism,
            )
            .into_iter()
            .map(|s| (s.job_id.clone(), s))
            .collect()
        })
        .unwrap_or_default();
    let mut jobs = Vec::new();
    let mut slots = Vec::new();
    for job_id in ids {
        let (old, new) = (base.desired.jobs.get(job_id), head.desired.jobs.get(job_id));
        let (mut action, mut reasons) = offline_action(old, new);
        let mut flink = None;
        if let Some(entry) = live.and_then(|l| l.plan.jobs.iter().find(|j| j.job_id == job_id)) {
            // What `apply` would do now wins; the diffs below still show the change under review.
            action = entry.action;
            reasons = entry.reasons.clone();
            flink = match (&entry.flink_job_id, &entry.flink_state) {
                (Some(jid), Some(state)) => Some(format!("{jid} {state}")),
                (Some(jid), None) => Some(format!("{jid} (not on the cluster)")),
                _ => None,
            };
        }
        let sources = source_diffs(
            old.and_then(|j| j.program.as_ref()),
            new.and_then(|j| j.program.as_ref()),
        );
        if !sources.is_empty() {
            let summary = sources
                .iter()
                .map(FileDiff::summary)
                .collect::<Vec<_>>()
                .join(", ");
            match reasons
                .iter_mut()
                .find(|r| r.starts_with("sources changed"))
            {
                Some(reason) => *reason = format!("sources changed: {summary}"),
                None if action != Action::Create => {
                    reasons.push(format!("sources changed: {summary}"))
                }
                None => {}
            }
        }
        let jar = jar_change(&mut reasons, base.jars.get(job_id), head.jars.get(job_id));
        let job_slots = match live_slots_by_id.get(job_id) {
            Some(found) => found.clone(),
            None => offline_slots(job_id, old, new, action),
        };
        jobs.push(JobReview {
            job_id: job_id.to_string(),
            kind: new.or(old).map(|j| j.spec.artifact.kind()),
            file: new.or(old).map(|j| j.file.to_string()),
            action,
            how: how(action, old, new),
            risks: risks(action, old, new, !sources.is_empty(), Some(&job_slots)),
            reasons,
            sources: if action == Action::Create {
                Vec::new()
            } else {
                sources
            },
            jar,
            flink,
            state_compatibility: None,
        });
        slots.push(job_slots);
    }
    let budget = SlotBudget::new(slots, live.and_then(|l| l.slots));
    if let Some(problem) = budget.refusal() {
        for job in jobs
            .iter_mut()
            .filter(|j| budget.of(&j.job_id).is_some_and(|s| s.needs != s.holds))
        {
            job.risks.push(risk(
                "does not fit",
                format!("the revision cannot be scheduled: {problem}"),
            ));
        }
    }
    Review {
        jobs,
        slots: budget,
        live: live.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec;

    fn job(yaml: &str) -> DesiredJob {
        let spec = parse_spec("jobs/x.yaml", yaml).unwrap();
        let file = crate::spec::RepoPath::parse(&format!("jobs/{}.yaml", spec.job_id)).unwrap();
        DesiredJob::new(spec, file, "git-blob:1".into(), None)
    }

    fn state(jobs: &[DesiredJob]) -> DesiredState {
        DesiredState {
            jobs: jobs
                .iter()
                .map(|j| (j.spec.job_id.clone(), j.clone()))
                .collect(),
        }
    }

    const ORDERS: &str =
        "job_id: orders\njob_type: stream\nartifact_path: a.jar\ndeployment: { parallelism: 2 }\n";

    fn review_of(base: Vec<DesiredJob>, head: Vec<DesiredJob>) -> Review {
        let none = BTreeMap::new();
        let (base, head) = (state(&base), state(&head));
        review(
            &Side {
                desired: &base,
                jars: &none,
            },
            &Side {
                desired: &head,
                jars: &none,
            },
            None,
        )
    }

    #[test]
    fn every_action_kind_offline() {
        let orders = job(ORDERS);
        let scaled = job(&ORDERS.replace("parallelism: 2", "parallelism: 4"));
        let alerts = job(&format!(
            "{ORDERS}monitoring: {{ alert_on_failure: false }}\n"
        ));
        let suspended = job(&format!("{ORDERS}state: suspended\n"));
        let action = |base: Vec<DesiredJob>, head: Vec<DesiredJob>| {
            let r = review_of(base, head);
            (r.jobs[0].action, r.jobs[0].how.clone())
        };
        let o = || orders.clone();
        assert_eq!(
            action(vec![], vec![o()]),
            (Action::Create, Some("new".into()))
        );
        assert_eq!(
            action(vec![o()], vec![scaled.clone()]),
            (Action::Upgrade, Some("savepoint".into()))
        );
        assert_eq!(
            action(vec![o()], vec![alerts]),
            (Action::Update, Some("in place".into()))
        );
        assert_eq!(
            action(vec![o()], vec![suspended.clone()]).0,
            Action::Suspend
        );
        assert_eq!(action(vec![suspended], vec![o()]).0, Action::Resume);
        assert_eq!(action(vec![o()], vec![]).0, Action::Delete);
        assert_eq!(action(vec![o()], vec![o()]).0, Action::Unchanged);

        let upgrade = review_of(vec![o()], vec![scaled]);
        assert_eq!(upgrade.jobs[0].reasons, ["parallelism: 2 → 4"]);
        assert!(upgrade.jobs[0].risks.iter().any(|r| r.tag == "+2 slots"));
        assert_eq!((upgrade.slots.holds, upgrade.slots.needs), (2, 4));
    }

    #[test]
    fn stateless_and_non_restored_state_are_risks() {
        let orders = job(ORDERS);
        let stateless = job(&format!(
            "{}upgrade_mode: stateless\n",
            ORDERS.replace("a.jar", "b.jar")
        ));
        let r = review_of(vec![orders.clone()], vec![stateless]);
        assert!(
            r.jobs[0]
                .risks
                .iter()
                .any(|r| r.detail.contains("WITHOUT the job's state")),
            "{:?}",
            r.jobs[0].risks
        );
        let loose = job(&format!(
            "{}allow_non_restored_state: true\n",
            ORDERS.replace("a.jar", "b.jar")
        ));
        let r = review_of(vec![orders], vec![loose]);
        assert!(
            r.jobs[0]
                .risks
                .iter()
                .any(|r| r.tag == "allow_non_restored_state")
        );
    }

    #[test]
    fn sql_sources_are_diffed_per_file() {
        use crate::spec::program::SqlFile;
        let sql = |text: &str| Program::Sql {
            files: vec![
                SqlFile {
                    path: "sql/ddl.sql".into(),
                    text: "CREATE TABLE t (a INT);\n".into(),
                },
                SqlFile {
                    path: "sql/q.sql".into(),
                    text: text.into(),
                },
            ],
        };
        let old = sql("INSERT INTO s\nSELECT a\nFROM t;\n");
        let new = sql("INSERT INTO s\nSELECT a, COUNT(*)\nFROM t\nGROUP BY a;\n");
        let diffs = source_diffs(Some(&old), Some(&new));
        assert_eq!(diffs.len(), 1, "the unchanged file is left out");
        assert_eq!(diffs[0].summary(), "+3 −2 lines in sql/q.sql");
        assert!(
            diffs[0]
                .unified
                .starts_with("--- a/sql/q.sql\n+++ b/sql/q.sql\n"),
            "{}",
            diffs[0].unified
        );
        assert!(diffs[0].unified.contains("+GROUP BY a;"));
    }

    #[test]
    fn a_changed_jar_names_both_versions() {
        let v1 = job(ORDERS);
        let v2 = job(&ORDERS.replace("a.jar", "b.jar"));
        let jar = |path: &str, sha: &str| JarInfo {
            path: path.into(),
            sha256: sha.repeat(64),
        };
        let base_jars = BTreeMap::from([("orders".to_string(), jar("a.jar", "1"))]);
        let head_jars = BTreeMap::from([("orders".to_string(), jar("b.jar", "2"))]);
        let (base, head) = (state(&[v1]), state(&[v2]));
        let r = review(
            &Side {
                desired: &base,
                jars: &base_jars,
            },
            &Side {
                desired: &head,
                jars: &head_jars,
            },
            None,
        );
        assert_eq!(
            r.jobs[0].reasons,
            ["JAR changed: a.jar (sha256 111111111111) → b.jar (sha256 222222222222)"]
        );
    }
}
