//! The pure meeting point of desired (git), observed (Flink) and recorded (SQLite) state.

pub mod compat;
pub mod order;
pub mod review;
pub mod slots;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::flink::JobOverview;
use crate::spec::{DesiredJob, DesiredRunState, DesiredState, JobType};
use crate::state::JobRecord;

/// What should happen to one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// First deployment.
    Create,
    /// Spec or artifact changed: redeploy through the upgrade mode.
    Upgrade,
    /// Only fields the running job does not use changed (alerts, the periodic savepoint interval,
    /// the health gate): recorded, no restart.
    Update,
    /// Stop with a savepoint and keep it.
    Suspend,
    /// Start again from the kept savepoint.
    Resume,
    /// Spec removed: stop with a savepoint, record it.
    Delete,
    /// Our job is no longer running on the cluster: start it again from its latest state.
    Restart,
    /// A job of ours runs on the cluster but the state database has no record of it.
    Adopt,
    /// An operation was interrupted (crash, restart, transient error): continue it from its phase.
    Continue,
    /// A step failed lately: the job is tried again after its backoff.
    Wait,
    /// The agent will not act on this job until its spec changes or an operator runs `retry`.
    Blocked,
    /// Nothing to do.
    Unchanged,
}

impl Action {
    /// The word shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Upgrade => "upgrade",
            Action::Update => "update",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Delete => "delete",
            Action::Restart => "restart",
            Action::Adopt => "adopt",
            Action::Continue => "continue",
            Action::Wait => "wait",
            Action::Blocked => "blocked",
            Action::Unchanged => "unchanged",
        }
    }
}

/// The plan for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobPlan {
    /// The spec's `job_id`.
    pub job_id: String,
    /// What to do.
    pub action: Action,
    /// Why, in words: changed fields, drift, adoption.
    pub reasons: Vec<String>,
    /// The Flink job this concerns, if one is known.
    pub flink_job_id: Option<String>,
    /// Its state on the cluster, when the cluster was reachable and still lists it.
    pub flink_state: Option<String>,
    /// The lifecycle phase the agent recorded for it (`steady` when nothing is in flight).
    pub phase: String,
    /// `jar`, `sql` or `python`, when the repository asks for the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::spec::JobKind>,
    /// For a changed SQL or Python program: a unified diff of its sources against the applied ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_diff: Option<String>,
    /// Risks worth reading before applying (e.g. state a changed query may not restore).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Whether the new version restores the running job's latest savepoint, per operator
    /// (`plan --check-state`; see [`compat`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_compatibility: Option<compat::StateCompatibility>,
}

impl JobPlan {
    /// `action` for `job_id`, steady, with nothing known yet about its Flink job, kind or risks.
    pub fn new(job_id: impl Into<String>, action: Action) -> JobPlan {
        JobPlan {
            job_id: job_id.into(),
            action,
            reasons: Vec::new(),
            flink_job_id: None,
            flink_state: None,
            phase: "steady".into(),
            kind: None,
            source_diff: None,
            warnings: Vec::new(),
            state_compatibility: None,
        }
    }
}

/// The whole plan for one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Per job, ordered by job id.
    pub jobs: Vec<JobPlan>,
    /// Jobs running on the cluster that the agent did not deploy: reported, never touched.
    pub unmanaged: Vec<JobOverview>,
    /// Set when the cluster could not be read; drift cannot be judged then.
    pub cluster_unreachable: Option<String>,
}

impl Plan {
    /// True when some job needs an action.
    pub fn has_changes(&self) -> bool {
        self.jobs.iter().any(|j| j.action != Action::Unchanged)
    }
}

/// What Flink reported, or why it could not be asked.
pub enum Observed<'a> {
    /// `GET /jobs/overview`.
    Jobs(&'a [JobOverview]),
    /// The cluster could not be read.
    Unreachable(String),
}

/// The first 16 hex characters of every Flink job id the agent gives this job.
pub fn flink_job_prefix(job_id: &str) -> JobPrefix {
    // Asked for every job of every plan: hashed in place, without formatting the input first,
    // and kept on the stack.
    let digest = Sha256::new()
        .chain_update(b"flink-gitops/job/")
        .chain_update(job_id.as_bytes())
        .finalize();
    let mut hex = [0u8; 16];
    // Cannot fail: 8 bytes make 16 hex characters.
    let _ = hex::encode_to_slice(&digest[..8], &mut hex);
    JobPrefix(hex)
}

/// [`flink_job_prefix`]: 16 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPrefix([u8; 16]);

impl JobPrefix {
    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for JobPrefix {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for JobPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of a Flink job id that names the spec job it belongs to ([`flink_job_prefix`]);
/// `None` for an id too short to have one.
pub fn job_prefix_of(jid: &str) -> Option<&str> {
    jid.get(..16)
}

/// The cluster's jobs grouped by the 16-hex prefix of their id, which names the spec job they belong
/// to ([`flink_job_prefix`]); each group keeps the cluster's order.
pub fn group_by_job_prefix<'a>(
    jobs: impl IntoIterator<Item = &'a JobOverview>,
) -> HashMap<&'a str, Vec<&'a JobOverview>> {
    let mut groups: HashMap<&str, Vec<&JobOverview>> = HashMap::default();
    for job in jobs {
        if let Some(prefix) = job_prefix_of(&job.jid) {
            groups.entry(prefix).or_default().push(job);
        }
    }
    groups
}

/// The Flink job id of a job's `generation`-th submission; ids can never be reused in a cluster.
pub fn flink_job_id(job_id: &str, generation: i64) -> String {
    format!("{}{:016x}", flink_job_prefix(job_id), generation)
}

/// Job states in which a job may still run tasks: alive, recovering by itself, or being cancelled.
/// Nothing new of the same job starts while one of its instances is in one of these.
pub fn is_alive(state: &str) -> bool {
    matches!(
        state,
        "RUNNING"
            | "CREATED"
            | "INITIALIZING"
            | "RESTARTING"
            | "RECONCILING"
            | "FAILING"
            | "CANCELLING"
    )
}

fn is_steady(record: &JobRecord) -> bool {
    record.phase_name() == "steady"
}

/// Compares desired, observed and recorded state at `now_ms`. No I/O.
pub fn plan(
    desired: &DesiredState,
    observed: Observed<'_>,
    recorded: &[JobRecord],
    now_ms: i64,
) -> Plan {
    // A job not deployed yet (`new`) is planned as new, but its phase and backoff count.
    let mut records: Vec<&JobRecord> = recorded
        .iter()
        .filter(|r| r.status != "deleted" || !is_steady(r))
        .collect();
    // Listed in job id order already, which the sort only checks; a job listed twice is planned
    // by its last record.
    records.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    records.dedup_by(|later, earlier| {
        let same = later.job_id == earlier.job_id;
        if same {
            *earlier = *later;
        }
        same
    });
    let (cluster_jobs, cluster_unreachable) = match observed {
        Observed::Jobs(jobs) => (Some(jobs), None),
        Observed::Unreachable(reason) => (None, Some(reason)),
    };

    let by_prefix = group_by_job_prefix(cluster_jobs.into_iter().flatten());
    // The prefixes of the cluster's jobs that belong to a job of ours.
    let mut claimed: HashSet<&str> = HashSet::default();
    let mut jobs = Vec::with_capacity(desired.jobs.len().max(records.len()));
    // Every job desired or recorded, in job id order, with both sides found by walking the two
    // ordered lists side by side: a thousand jobs were three tree searches each.
    let mut desired_jobs = desired.jobs.iter().peekable();
    let mut records = records.into_iter().peekable();
    loop {
        let job_id = match (
            desired_jobs.peek().map(|&(id, _)| id.as_str()),
            records.peek().map(|&record| record.job_id.as_str()),
        ) {
            (None, None) => break,
            (Some(desired), Some(recorded)) => desired.min(recorded),
            (Some(only), None) | (None, Some(only)) => only,
        };
        let desired_job = desired_jobs
            .next_if(|&(id, _)| id == job_id)
            .map(|(_, job)| job);
        let record = records.next_if(|record| record.job_id == job_id);
        let (claimed_prefix, mine) = by_prefix
            .get_key_value(flink_job_prefix(job_id).as_str())
            .map_or((None, &[][..]), |(prefix, mine)| {
                (Some(*prefix), mine.as_slice())
            });
        claimed.extend(claimed_prefix);
        let recorded_instance = record
            .and_then(|r| r.flink_job_id.as_deref())
            .and_then(|jid| mine.iter().find(|j| j.jid == jid).copied());
        let live_instance = mine.iter().find(|j| is_alive(&j.state)).copied();
        let instance = recorded_instance.or(live_instance);
        let mut entry = JobPlan {
            flink_job_id: instance
                .map(|j| j.jid.clone())
                .or_else(|| record.and_then(|r| r.flink_job_id.clone())),
            flink_state: instance.map(|j| j.state.clone()),
            phase: record
                .map(|r| r.phase_name())
                .unwrap_or("steady")
                .to_string(),
            kind: desired_job.map(|j| j.spec.artifact.kind()),
            ..JobPlan::new(job_id, Action::Unchanged)
        };
        if let (Some(job), Some(record)) = (desired_job, record) {
            (entry.source_diff, entry.warnings) = review_sources(record, job);
        }
        if let Some(record) = record
            && let Some((action, reasons)) =
                lifecycle_decision(record, desired_job, instance, now_ms)
        {
            entry.action = action;
            entry.reasons = reasons;
            jobs.push(entry);
            continue;
        }
        let tracked = record;
        let record = record.filter(|r| r.status != "new");
        match (desired_job, record) {
            (Some(job), None) => match live_instance {
                Some(found) => {
                    entry.action = Action::Adopt;
                    entry.reasons.push(format!(
                        "job {} of ours is {} on the cluster but the state database has no record of it",
                        found.jid, found.state
                    ));
                }
                None if job.spec.state == DesiredRunState::Suspended => {
                    entry
                        .reasons
                        .push("suspended in the spec and never deployed".into());
                }
                None => {
                    entry.action = Action::Create;
                    entry.reasons.push(format!("new spec {}", job.file));
                    if let Some(path) = &job.spec.restore_from {
                        entry
                            .reasons
                            .push(format!("starts from restore_from {path}"));
                    }
                }
            },
            (Some(job), Some(record)) => {
                let changes = if record.applied_spec_is(job) {
                    Vec::new()
                } else {
                    spec_changes(&record.spec_json, job)
                };
                match (job.spec.state, record.status.as_str()) {
                    (DesiredRunState::Suspended, "suspended") => {
                        if !changes.is_empty() {
                            entry
                                .reasons
                                .push("suspended; the changes apply on resume".into());
                            entry.reasons.extend(changes);
                        }
                    }
                    (DesiredRunState::Suspended, _) => {
                        entry.action = Action::Suspend;
                        entry.reasons.push("state: suspended".into());
                        entry.reasons.extend(changes);
                    }
                    (DesiredRunState::Running, "suspended") => {
                        entry.action = Action::Resume;
                        entry.reasons.push("state: running".into());
                        entry.reasons.extend(changes);
                    }
                    // In place only while the job runs: drift is repaired with the new spec.
                    (DesiredRunState::Running, "running")
                        if !changes.is_empty()
                            && job.spec.job_type == JobType::Stream
                            && instance.is_some_and(|j| is_alive(&j.state))
                            && only_in_place_changes(&record.spec_json, job) =>
                    {
                        entry.action = Action::Update;
                        entry.reasons = vec![
                            "no restart: only fields the running job does not use changed".into(),
                        ];
                        entry.reasons.extend(changes);
                    }
                    (DesiredRunState::Running, _) if !changes.is_empty() => {
                        entry.action = Action::Upgrade;
                        entry.reasons = changes;
                    }
                    (DesiredRunState::Running, _) if job.spec.job_type == JobType::Batch => {}
                    (DesiredRunState::Running, _) => {
                        if cluster_jobs.is_some() {
                            match instance {
                                Some(found) if is_alive(&found.state) => {}
                                Some(found) => {
                                    entry.action = Action::Restart;
                                    entry.reasons.push(format!(
                                        "drift: job {} is {} on the cluster",
                                        found.jid, found.state
                                    ));
                                }
                                None => {
                                    entry.action = Action::Restart;
                                    entry.reasons.push(format!(
                                        "drift: job {} is not on the cluster",
                                        record.flink_job_id.as_deref().unwrap_or("(none recorded)")
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            (None, Some(record)) => {
                entry.action = Action::Delete;
                entry.reasons.push(format!(
                    "spec removed (last applied from commit {})",
                    short(&record.commit_id)
                ));
            }
            (None, None) => continue,
        }
        // The hash is asked for last: a spec parsed afresh hashes its whole canonical JSON for it.
        if let (Some(job), Some(record)) = (desired_job, record)
            && entry.action == Action::Upgrade
            && record
                .rejected_spec_hash
                .as_deref()
                .is_some_and(|rejected| job.has_spec_hash(rejected))
        {
            // The spec was rolled back before: the last good one keeps running (or is brought back).
            let alive = instance.is_some_and(|j| is_alive(&j.state));
            entry.action = if alive || cluster_jobs.is_none() {
                Action::Blocked
            } else {
                Action::Restart
            };
            entry.reasons = vec![format!(
                "this spec failed and was rolled back{}; the last good spec (commit {}) {}; a commit that changes the spec, or `flink-gitops retry {job_id}`, tries it again",
                record
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                short(&record.commit_id),
                if entry.action == Action::Blocked {
                    "keeps running"
                } else {
                    "is not running and is restarted"
                }
            )];
        }
        if let Some(record) = tracked
            && let Some(retry_at) = record.retry_at_ms.filter(|at| *at > now_ms)
            && !matches!(entry.action, Action::Unchanged | Action::Blocked)
        {
            entry.reasons.insert(
                0,
                format!(
                    "{} planned; waiting {:.1} s before try {} after: {}",
                    entry.action.as_str(),
                    (retry_at - now_ms) as f64 / 1000.0,
                    record.failures + 1,
                    record.last_error.as_deref().unwrap_or("a failure")
                ),
            );
            entry.action = Action::Wait;
        }
        jobs.push(entry);
    }

    let recorded_instances: HashSet<&str> = recorded
        .iter()
        .filter_map(|r| r.flink_job_id.as_deref())
        .collect();
    let unmanaged = cluster_jobs
        .map(|all| {
            all.iter()
                .filter(|j| is_alive(&j.state))
                .filter(|j| job_prefix_of(&j.jid).is_none_or(|prefix| !claimed.contains(prefix)))
                .filter(|j| !recorded_instances.contains(j.jid.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Plan {
        jobs,
        unmanaged,
        cluster_unreachable,
    }
}

/// The decision for a job whose recorded phase is not steady: continue it, wait for its backoff,
/// or stay blocked; `None` when the normal comparison decides (steady, or blocked on a spec that
/// has since changed).
fn lifecycle_decision(
    record: &JobRecord,
    desired: Option<&DesiredJob>,
    instance: Option<&JobOverview>,
    now_ms: i64,
) -> Option<(Action, Vec<String>)> {
    if is_steady(record) {
        return None;
    }
    let phase = crate::reconcile::lifecycle::Phase::of_record(record);
    if record.phase == "blocked" {
        let rejected = record.rejected_spec_hash.as_deref();
        if desired.is_some_and(|job| !rejected.is_some_and(|hash| job.has_spec_hash(hash))) {
            return None;
        }
        if desired.is_none() && instance.is_none_or(|j| !is_alive(&j.state)) {
            // A blocked job whose spec was removed has nothing left to stop: its record goes.
            return None;
        }
        return Some((Action::Blocked, vec![phase.describe()]));
    }
    let mut reasons = vec![format!("interrupted: {}", phase.describe())];
    if let Some(error) = &record.last_error {
        reasons.push(format!("last failure: {error}"));
    }
    let waiting = record.retry_at_ms.is_some_and(|at| at > now_ms);
    Some((
        if waiting {
            Action::Wait
        } else {
            Action::Continue
        },
        reasons,
    ))
}

fn short(id: &str) -> &str {
    crate::spec::source::short_id(id)
}

/// Spec fields the running Flink job does not use: changing them needs no restart.
const IN_PLACE_FIELDS: &[&str] = &[
    "spec.alert_on_failure",
    "spec.alert_on_backpressure",
    "spec.savepoint_trigger_interval_ms",
    // One-shot, at creation: a running job has its own state.
    "spec.restore_from",
    // The order of a revision's steps and what a failed health gate rolls back.
    "spec.depends_on",
    "spec.rollback",
];

/// Whether every difference between the applied spec and the desired one is in a field the
/// running job does not use ([`IN_PLACE_FIELDS`], the health gate).
pub fn only_in_place_changes(applied_json: &str, desired: &DesiredJob) -> bool {
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    let (Some(before), Some(after)) = (parse(applied_json), parse(&desired.canonical_json()))
    else {
        return false;
    };
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &before, &mut old);
    flatten("", &after, &mut new);
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|key| old.get(*key) != new.get(*key))
        .all(|key| {
            IN_PLACE_FIELDS.contains(&key.as_str())
                || key.starts_with("spec.health.")
                || key.starts_with("spec.savepoint_retention.")
                || key.starts_with("spec.monitoring.")
        })
}

/// Whether a plan of `record`'s job, or a report on it, reads its recorded deployment: when the
/// job is not in the desired state (or none was verified), its spec changed (the review diffs the
/// applied sources with the desired ones, the slots count what the old version holds,
/// `--check-state` builds its graph), or a change of it is under way. Any other job runs the
/// desired spec, which says all a plan needs. Reports over many jobs read those without it
/// ([`crate::state::StateStore::jobs_without_deployments`]).
pub fn plan_reads_deployment(record: &JobRecord, desired: Option<&DesiredState>) -> bool {
    let Some(job) = desired.and_then(|d| d.jobs.get(&record.job_id)) else {
        return true;
    };
    !record.applied_spec_is(job) || record.phase_name() != "steady" || record.pending_json.is_some()
}

/// Human-readable differences between the applied canonical JSON and the desired job.
pub fn spec_changes(applied_json: &str, desired: &DesiredJob) -> Vec<String> {
    let desired_json = desired.canonical_json();
    if applied_json == desired_json {
        return Vec::new();
    }
    if applied_json.is_empty() {
        return vec!["the adopted job runs a spec the agent did not record".into()];
    }
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap_or(serde_json::Value::Null)
    };
    let mut before = BTreeMap::new();
    let mut after = BTreeMap::new();
    flatten("", &parse(applied_json), &mut before);
    flatten("", &parse(&desired_json), &mut after);
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let (old, new) = (before.get(key), after.get(key));
        if old == new {
            continue;
        }
        let name = key.strip_prefix("spec.").unwrap_or(key);
        if name == "artifact_content" {
            changes.extend(content_changes(old, new));
            continue;
        }
        if let Some(secret) = name.strip_prefix("secrets.") {
            changes.push(match (old, new) {
                (None, _) => format!("secret `{secret}` now used"),
                (_, None) => format!("secret `{secret}` no longer used"),
                _ => format!("secret `{secret}` changed (value not shown)"),
            });
            continue;
        }
        let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
        changes.push(format!("{name}: {} → {}", show(old), show(new)));
    }
    if changes.is_empty() {
        changes.push("spec changed".into());
    }
    changes
}

/// What changed in what runs: the JAR, or a program's sources and runner.
fn content_changes(old: Option<&String>, new: Option<&String>) -> Vec<String> {
    let split = |v: Option<&String>| {
        let text = v.map(String::as_str).unwrap_or_default();
        match text.split_once(";runner=") {
            Some((sources, runner)) => (sources.to_string(), Some(runner.to_string())),
            None => (text.to_string(), None),
        }
    };
    let ((old_sources, old_runner), (new_sources, new_runner)) = (split(old), split(new));
    if !new_sources.starts_with("sources-sha256:") {
        return vec!["artifact content changed".to_string()];
    }
    let mut changes = Vec::new();
    if old_sources != new_sources {
        changes.push("sources changed (see the diff)".to_string());
    }
    if old_runner != new_runner {
        changes.push("runner JAR changed".to_string());
    }
    changes
}

/// The diff of a SQL or Python job's sources against the applied deployment, and the risks of
/// the change.
fn review_sources(record: &JobRecord, job: &DesiredJob) -> (Option<String>, Vec<String>) {
    use crate::spec::program::Program;
    let Some(new) = &job.program else {
        return (None, Vec::new());
    };
    let old = record
        .deployment_json
        .as_deref()
        .and_then(|json| serde_json::from_str::<crate::reconcile::Deployment>(json).ok())
        .and_then(|d| d.program);
    let Some(old) = old else {
        return (None, Vec::new());
    };
    if old == *new {
        return (None, Vec::new());
    }
    // SQL and Python comments alike read as a file header in the diff.
    let text = |program: &Program| {
        let comment = if matches!(program, Program::Sql { .. }) {
            "--"
        } else {
            "#"
        };
        program
            .texts()
            .iter()
            .map(|(path, text)| format!("{comment} {path}\n{text}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let diff = similar::TextDiff::from_lines(&text(&old), &text(new))
        .unified_diff()
        .context_radius(2)
        .header("applied", "desired")
        .to_string();
    let warnings = query_state_warning(job, &old, new).into_iter().collect();
    (Some(diff), warnings)
}

/// The warning for a stateful stream job whose SQL query changed from `old` to `new` and keeps
/// state: Flink may not restore that state from the savepoint.
pub(crate) fn query_state_warning(
    job: &DesiredJob,
    old: &crate::spec::program::Program,
    new: &crate::spec::program::Program,
) -> Option<String> {
    use crate::spec::program::Program;
    let stateful_sql = |program: &Program| {
        program.statements().is_ok_and(|statements| {
            statements.iter().any(|s| {
                s.kind == crate::spec::sql::StatementKind::Job && is_stateful_query(&s.text)
            })
        })
    };
    (job.spec.job_type == JobType::Stream
        && job.spec.upgrade_mode != crate::spec::UpgradeMode::Stateless
        && (stateful_sql(old) || stateful_sql(new)))
    .then(|| {
        format!(
            "the query keeps state (aggregation, join, dedup or window): Flink finds its state by operator ids generated from the plan, so a changed query may not restore it from the savepoint; {}",
            if job.spec.allow_non_restored_state {
                "allow_non_restored_state is set, so state no operator claims is DROPPED silently"
            } else {
                "if it cannot, the new version fails to start and the agent rolls back to the applied one"
            }
        )
    })
}

/// Whether a job statement keeps state between records.
fn is_stateful_query(text: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect();
    let has = |w: &str| words.contains(&w);
    has("JOIN")
        || has("DISTINCT")
        || has("OVER")
        || has("MATCH_RECOGNIZE")
        || has("TUMBLE")
        || has("HOP")
        || has("CUMULATE")
        || has("SESSION")
        || words
            .windows(2)
            .any(|w| w == ["GROUP", "BY"] || w == ["ROW_NUMBER", "OVER"])
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, out);
            }
        }
        serde_json::Value::Null => {}
        other => {
            let text = match other {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(prefix.to_string(), text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec;

    /// The plan at a fixed time (the tests use no backoff).
    fn plan(desired: &DesiredState, observed: Observed<'_>, recorded: &[JobRecord]) -> Plan {
        super::plan(desired, observed, recorded, 0)
    }

    fn job(yaml: &str) -> DesiredJob {
        let spec = parse_spec("jobs/x.yaml", yaml).unwrap();
        DesiredJob::new(
            spec,
            crate::spec::RepoPath::parse("jobs/x.yaml").unwrap(),
            "git-blob:1".into(),
            None,
        )
    }

    const V1: &str =
        "job_id: orders\njob_type: stream\nartifact_path: a.jar\ndeployment: { parallelism: 2 }\n";

    fn desired(jobs: &[DesiredJob]) -> DesiredState {
        DesiredState {
            jobs: jobs
                .iter()
                .map(|j| (j.spec.job_id.clone(), j.clone()))
                .collect(),
        }
    }

    fn record_of(job: &DesiredJob, status: &str) -> JobRecord {
        JobRecord {
            job_id: job.spec.job_id.clone(),
            spec_json: job.canonical_json(),
            spec_hash: job.spec_hash(),
            commit_id: "c0ffee".into(),
            flink_job_id: Some(flink_job_id(&job.spec.job_id, 1)),
            generation: 1,
            jar_id: None,
            jar_sha256: None,
            last_savepoint: None,
            status: status.into(),
            ..JobRecord::default()
        }
    }

    fn running(jid: &str, state: &str) -> JobOverview {
        JobOverview {
            jid: jid.into(),
            name: "n".into(),
            state: state.into(),
            start_time: 0,
            end_time: -1,
        }
    }

    #[test]
    fn status_joins_desired_recorded_observed_and_the_savepoint_ledger() {
        let orders = job(V1);
        let fresh = job(&V1.replace("orders", "fresh"));
        let gone = job(&V1.replace("orders", "gone"));
        let desired = desired(&[orders.clone(), fresh]);
        let mut recorded = vec![record_of(&orders, "running"), record_of(&gone, "deleted")];
        recorded[0].last_savepoint = Some("file:///sp/old".into());
        recorded[0].failures = 2;
        recorded[0].last_error = Some("timeout".into());
        let orders_jid = recorded[0].flink_job_id.clone().unwrap();
        let cluster = [running(&orders_jid, "RUNNING")];
        let savepoints = [crate::state::SavepointTaken {
            job_id: "orders".into(),
            path: "file:///sp/new".into(),
            taken_at_ms: 1_000,
            kind: "periodic".into(),
            commit_id: "head1".into(),
        }];
        let now = chrono::DateTime::from_timestamp_millis(61_000).unwrap();
        let rows = status::job_statuses(&status::StatusSources {
            desired: Some(("head1", &desired)),
            records: &recorded,
            cluster: &cluster,
            last_runs: &[],
            savepoints: &savepoints,
            now,
        });
        let ids: Vec<&str> = rows.iter().map(|r| r.job_id.as_str()).collect();
        assert_eq!(ids, ["fresh", "gone", "orders"]);
        let (fresh, gone, orders) = (&rows[0], &rows[1], &rows[2]);
        assert_eq!(fresh.desired_commit.as_deref(), Some("head1"));
        assert_eq!(fresh.recorded_status, None);
        assert_eq!(gone.desired_commit, None, "not in the desired state");
        assert_eq!(gone.recorded_status.as_deref(), Some("deleted"));
        assert_eq!(gone.flink_state, None);
        assert_eq!(orders.applied_commit.as_deref(), Some("c0ffee"));
        assert_eq!(orders.flink_job_id.as_deref(), Some(orders_jid.as_str()));
        assert_eq!(orders.flink_state.as_deref(), Some("RUNNING"));
        assert_eq!(
            orders.last_savepoint.as_deref(),
            Some("file:///sp/new"),
            "the ledger is newer"
        );
        assert_eq!(orders.last_savepoint_age_s, Some(60));
        assert_eq!(orders.failures, 2);
        assert_eq!(
            orders.last_error.as_deref(),
            Some("timeout (2 failure(s) in a row)")
        );
    }

    /// `plan` and `status` read job records without their deployments and fill in those that
    /// planning and what follows it read; the plan, its slots and the status must come out as
    /// they do from whole records.
    #[test]
    fn reports_read_the_deployments_they_use_and_come_out_as_from_whole_records() {
        use crate::reconcile::Deployment;
        use crate::state::StateStore;
        let config = crate::config::Config::parse(
            "repo: { url: /srv/specs }\ntrust: { allowed_signers: signers }\n",
            std::path::Path::new("/etc/fg/config.yaml"),
        )
        .unwrap();
        let spec = |id: &str| V1.replace("orders", id);
        let same = job(&spec("same"));
        let changed_before = job(&spec("changed"));
        let changed = job(&spec("changed").replace("parallelism: 2", "parallelism: 3"));
        let stopped = job(&spec("stopped"));
        let gone = job(&spec("gone"));
        let suspended_before = job(&spec("suspended"));
        let suspended = job(&format!("{}state: suspended\n", spec("suspended")));
        let midway = job(&spec("midway"));
        let adopted = job(&spec("adopted"));
        let desired = desired(&[
            same.clone(),
            changed.clone(),
            stopped.clone(),
            suspended,
            midway.clone(),
            adopted.clone(),
        ]);
        let deployed = |job: &DesiredJob, edit: &dyn Fn(&mut serde_json::Value)| {
            let mut record = record_of(job, "running");
            let mut deployment =
                serde_json::to_value(Deployment::of(job, "c0ffee", "feed", &config)).unwrap();
            edit(&mut deployment);
            record.deployment_json = Some(deployment.to_string());
            record
        };
        let keep = |_: &mut serde_json::Value| {};
        let records = [
            deployed(&same, &keep),
            deployed(&changed_before, &keep),
            deployed(&stopped, &keep),
            // Only the recorded deployment says it ran SQL.
            deployed(&gone, &|d| d["kind"] = "sql".into()),
            deployed(&suspended_before, &keep),
            // Stopped on its way to four slots: only the recorded deployment knows.
            JobRecord {
                phase: "stopping".into(),
                ..deployed(&midway, &|d| d["parallelism"] = 4.into())
            },
            // Adopted from the cluster without a recorded spec; its tags name the desired spec's
            // hash, but the agent has nothing to redeploy it from until it upgrades it.
            JobRecord {
                spec_json: String::new(),
                ..record_of(&adopted, "running")
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let writer = StateStore::open_exclusive(dir.path()).unwrap();
        for record in &records {
            writer.put_job(record).unwrap();
        }
        let store = StateStore::open_read_only(dir.path()).unwrap().unwrap();
        // `stopped` is not on the cluster, and is restarted.
        let cluster: Vec<JobOverview> = records
            .iter()
            .filter(|r| r.job_id != "stopped")
            .map(|r| running(r.flink_job_id.as_deref().unwrap(), "RUNNING"))
            .collect();
        let now = chrono::DateTime::from_timestamp_millis(0).unwrap();
        let report = |records: &[JobRecord], plan: &Plan| {
            let status = status::job_statuses(&status::StatusSources {
                desired: Some(("head1", &desired)),
                records,
                cluster: &cluster,
                last_runs: &[],
                savepoints: &[],
                now,
            });
            (
                slots::live_slots(plan, &desired, records, &cluster, 1),
                serde_json::to_value(status).unwrap(),
            )
        };

        let whole = store.jobs().unwrap();
        let whole_plan = plan(&desired, Observed::Jobs(&cluster), &whole);
        let (whole_slots, whole_status) = report(&whole, &whole_plan);

        let mut listed = store.jobs_without_deployments().unwrap();
        store
            .fill_deployments(&mut listed, |r| plan_reads_deployment(r, Some(&desired)))
            .unwrap();
        let listed_plan = plan(&desired, Observed::Jobs(&cluster), &listed);
        let (listed_slots, listed_status) = report(&listed, &listed_plan);

        assert_eq!(listed_plan, whole_plan);
        let action_of = |id: &str| {
            let entry = listed_plan.jobs.iter().find(|j| j.job_id == id).unwrap();
            (entry.action, entry.reasons.clone())
        };
        assert_eq!(action_of("same"), (Action::Unchanged, Vec::new()));
        assert_eq!(
            action_of("adopted"),
            (
                Action::Upgrade,
                vec!["the adopted job runs a spec the agent did not record".to_string()]
            )
        );
        assert_eq!(action_of("changed").0, Action::Upgrade);
        assert_eq!(listed_slots, whole_slots);
        assert_eq!(listed_status, whole_status);
        let read: Vec<&str> = listed
            .iter()
            .filter(|r| r.deployment_json.is_some())
            .map(|r| r.job_id.as_str())
            .collect();
        assert_eq!(
            read,
            ["changed", "gone", "midway", "suspended"],
            "the jobs that run their desired spec are read without their deployment"
        );
    }

    #[test]
    fn job_ids_are_deterministic_and_distinct() {
        let a = flink_job_id("orders", 1);
        assert_eq!(a.len(), 32);
        assert_eq!(a, flink_job_id("orders", 1));
        assert_ne!(a, flink_job_id("orders", 2));
        assert!(a.starts_with(flink_job_prefix("orders").as_str()));
        assert!(!flink_job_id("orders2", 1).starts_with(flink_job_prefix("orders").as_str()));
    }

    #[test]
    fn new_spec_is_created() {
        let plan = plan(&desired(&[job(V1)]), Observed::Jobs(&[]), &[]);
        assert_eq!(plan.jobs[0].action, Action::Create);
    }

    #[test]
    fn changed_fields_are_named() {
        let v1 = job(V1);
        let v2 = job(&V1.replace("parallelism: 2", "parallelism: 4"));
        let rec = record_of(&v1, "running");
        let cluster = [running(rec.flink_job_id.as_deref().unwrap(), "RUNNING")];
        let plan = plan(&desired(&[v2]), Observed::Jobs(&cluster), &[rec]);
        assert_eq!(plan.jobs[0].action, Action::Upgrade);
        assert_eq!(plan.jobs[0].reasons, vec!["parallelism: 2 → 4".to_string()]);
    }

    #[test]
    fn fields_the_job_does_not_use_are_an_update_in_place() {
        let v1 = job(V1);
        let rec = record_of(&v1, "running");
        let cluster = [running(rec.flink_job_id.as_deref().unwrap(), "RUNNING")];
        let alerts = job(&format!(
            "{V1}monitoring: {{ alert_on_failure: false }}\nhealth: {{ stable_for: 1m }}\n"
        ));
        let plan_of = |job: DesiredJob| {
            plan(
                &desired(&[job]),
                Observed::Jobs(&cluster),
                std::slice::from_ref(&rec),
            )
        };
        let update = plan_of(alerts);
        assert_eq!(update.jobs[0].action, Action::Update, "{update:#?}");
        // The order of a revision's steps and the rollback scope are the agent's, not Flink's.
        let ordering = plan_of(job(&format!(
            "{V1}depends_on: [payments]\nrollback: revision\n"
        )));
        assert_eq!(ordering.jobs[0].action, Action::Update, "{ordering:#?}");
        assert!(
            ordering.jobs[0]
                .reasons
                .contains(&"depends_on: (unset) → [\"payments\"]".to_string()),
            "{ordering:#?}"
        );
        assert!(update.jobs[0].reasons[0].starts_with("no restart"));
        // With anything the job uses changed as well, it is an upgrade.
        let both = job(&format!(
            "{}monitoring: {{ alert_on_failure: false }}\n",
            V1.replace("parallelism: 2", "parallelism: 4")
        ));
        assert_eq!(plan_of(both).jobs[0].action, Action::Upgrade);
    }

    #[test]
    fn artifact_change_alone_is_an_upgrade() {
        let v1 = job(V1);
        let mut v2 = v1.clone();
        v2.artifact_content = "git-blob:2".into();
        let rec = record_of(&v1, "running");
        let plan = plan(&desired(&[v2]), Observed::Jobs(&[]), &[rec]);
        assert_eq!(plan.jobs[0].action, Action::Upgrade);
        assert_eq!(
            plan.jobs[0].reasons,
            vec!["artifact content changed".to_string()]
        );
    }

    #[test]
    fn every_desired_or_recorded_job_is_planned_once_in_job_id_order_whatever_the_records_order() {
        let named = |id: &str| job(&V1.replace("orders", id));
        let (b, c, d, e) = (named("b"), named("c"), named("d"), named("e"));
        // Listed twice, the last record is the job's: this one's spec is not the desired one.
        let listed_last = record_of(
            &job(&V1
                .replace("orders", "c")
                .replace("parallelism: 2", "parallelism: 4")),
            "running",
        );
        let records = [
            record_of(&e, "running"),
            record_of(&c, "running"),
            record_of(&named("a"), "running"),
            record_of(&b, "running"),
            listed_last,
        ];
        let jobs = [b, c, d, e];
        let running: Vec<JobOverview> = records
            .iter()
            .map(|r| running(r.flink_job_id.as_deref().unwrap(), "RUNNING"))
            .collect();
        let planned = plan(&desired(&jobs), Observed::Jobs(&running), &records);
        let actions: Vec<(&str, Action)> = planned
            .jobs
            .iter()
            .map(|j| (j.job_id.as_str(), j.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("a", Action::Delete),
                ("b", Action::Unchanged),
                ("c", Action::Upgrade),
                ("d", Action::Create),
                ("e", Action::Unchanged),
            ]
        );
        assert!(planned.unmanaged.is_empty(), "{:?}", planned.unmanaged);
        // The same plan from records in job id order, each once.
        let mut in_order: Vec<JobRecord> = records.to_vec();
        in_order.sort_by(|x, y| x.job_id.cmp(&y.job_id));
        in_order.remove(2);
        assert_eq!(
            plan(&desired(&jobs), Observed::Jobs(&running), &in_order).jobs,
            planned.jobs
        );
    }

    #[test]
    fn unchanged_running_job_and_drift() {
        let v1 = job(V1);
        let rec = record_of(&v1, "running");
        let jid = rec.flink_job_id.clone().unwrap();
        let ok = plan(
            &desired(std::slice::from_ref(&v1)),
            Observed::Jobs(&[running(&jid, "RUNNING")]),
            std::slice::from_ref(&rec),
        );
        assert_eq!(ok.jobs[0].action, Action::Unchanged);
        assert!(!ok.has_changes());
        let failed = plan(
            &desired(std::slice::from_ref(&v1)),
            Observed::Jobs(&[running(&jid, "FAILED")]),
            std::slice::from_ref(&rec),
        );
        assert_eq!(failed.jobs[0].action, Action::Restart);
        assert!(failed.jobs[0].reasons[0].contains("FAILED"));
        let missing = plan(
            &desired(std::slice::from_ref(&v1)),
            Observed::Jobs(&[]),
            std::slice::from_ref(&rec),
        );
        assert_eq!(missing.jobs[0].action, Action::Restart);
        let unknown = plan(
            &desired(&[v1]),
            Observed::Unreachable("down".into()),
            &[rec],
        );
        assert_eq!(unknown.jobs[0].action, Action::Unchanged);
        assert_eq!(unknown.cluster_unreachable.as_deref(), Some("down"));
    }

    #[test]
    fn a_cancelling_instance_counts_as_alive() {
        let v1 = job(V1);
        let rec = record_of(&v1, "running");
        let jid = rec.flink_job_id.clone().unwrap();
        let cancelling = plan(
            &desired(std::slice::from_ref(&v1)),
            Observed::Jobs(&[running(&jid, "CANCELLING")]),
            std::slice::from_ref(&rec),
        );
        assert_eq!(
            cancelling.jobs[0].action,
            Action::Unchanged,
            "no restart while the old instance may still run"
        );
        assert!(is_alive("CANCELLING"));
    }

    #[test]
    fn phases_backoff_and_rejected_specs_decide_the_plan() {
        let v1 = job(V1);
        let v2 = job(&V1.replace("parallelism: 2", "parallelism: 4"));
        let mut rec = record_of(&v1, "running");
        let jid = rec.flink_job_id.clone().unwrap();
        let alive = [running(&jid, "RUNNING")];
        // An operation in flight is continued, whatever the spec says now.
        rec.phase = "stopping".into();
        let p = super::plan(
            &desired(std::slice::from_ref(&v2)),
            Observed::Jobs(&alive),
            std::slice::from_ref(&rec),
            0,
        );
        assert_eq!(p.jobs[0].action, Action::Continue);
        assert_eq!(p.jobs[0].phase, "stopping");
        // ... after its backoff.
        rec.retry_at_ms = Some(10_000);
        let p = super::plan(
            &desired(std::slice::from_ref(&v2)),
            Observed::Jobs(&alive),
            std::slice::from_ref(&rec),
            5_000,
        );
        assert_eq!(p.jobs[0].action, Action::Wait);
        // A rolled-back spec is held while the last good one runs, and the job is brought back
        // when it does not.
        rec.phase = "steady".into();
        rec.retry_at_ms = None;
        rec.rejected_spec_hash = Some(v2.spec_hash());
        let p = super::plan(
            &desired(std::slice::from_ref(&v2)),
            Observed::Jobs(&alive),
            std::slice::from_ref(&rec),
            0,
        );
        assert_eq!(p.jobs[0].action, Action::Blocked);
        let p = super::plan(
            &desired(std::slice::from_ref(&v2)),
            Observed::Jobs(&[]),
            std::slice::from_ref(&rec),
            0,
        );
        assert_eq!(
            p.jobs[0].action,
            Action::Restart,
            "drift repair is never shadowed"
        );
        // A blocked job waits for a new spec; a changed spec is planned normally.
        rec.phase = "blocked".into();
        let p = super::plan(
            &desired(std::slice::from_ref(&v2)),
            Observed::Jobs(&alive),
            std::slice::from_ref(&rec),
            0,
        );
        assert_eq!(p.jobs[0].action, Action::Blocked);
        let v3 = job(&V1.replace("parallelism: 2", "parallelism: 3"));
        let p = super::plan(
            &desired(&[v3]),
            Observed::Jobs(&alive),
            std::slice::from_ref(&rec),
            0,
        );
        assert_eq!(p.jobs[0].action, Action::Upgrade);
    }

    #[test]
    fn suspend_resume_delete() {
        let v1 = job(V1);
        let suspended = job(&format!("{V1}state: suspended\n"));
        let rec = record_of(&v1, "running");
        let p = plan(
            &desired(std::slice::from_ref(&suspended)),
            Observed::Jobs(&[]),
            std::slice::from_ref(&rec),
        );
        assert_eq!(p.jobs[0].action, Action::Suspend);
        let rec_suspended = record_of(&suspended, "suspended");
        let p = plan(
            &desired(&[suspended]),
            Observed::Jobs(&[]),
            std::slice::from_ref(&rec_suspended),
        );
        assert_eq!(p.jobs[0].action, Action::Unchanged);
        let p = plan(
            &desired(&[v1]),
            Observed::Jobs(&[]),
            std::slice::from_ref(&rec_suspended),
        );
        assert_eq!(p.jobs[0].action, Action::Resume);
        let p = plan(&desired(&[]), Observed::Jobs(&[]), &[rec]);
        assert_eq!(p.jobs[0].action, Action::Delete);
    }

    #[test]
    fn our_unrecorded_job_is_adopted_and_foreign_jobs_are_reported() {
        let v1 = job(V1);
        let ours = running(&flink_job_id("orders", 7), "RUNNING");
        let foreign = running(&"ab".repeat(16), "RUNNING");
        let finished_foreign = running(&"cd".repeat(16), "FINISHED");
        let p = plan(
            &desired(&[v1]),
            Observed::Jobs(&[ours, foreign.clone(), finished_foreign]),
            &[],
        );
        assert_eq!(p.jobs[0].action, Action::Adopt);
        assert_eq!(p.unmanaged, vec![foreign]);
    }
}
