//! `flink-gitops history`: deployments and batch runs from SQLite, with the revision and its signer.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

use crate::state::{AuditAction, AuditEntry, RunRecord, StateStore};

/// Audit actions that changed what runs on the cluster (uploads, health probes and stops are steps of these).
const DEPLOYMENT_ACTIONS: &[AuditAction] = &[
    AuditAction::Promote,
    AuditAction::Rollback,
    AuditAction::RollbackByRevert,
    AuditAction::Suspend,
    AuditAction::Delete,
    AuditAction::Adopt,
    AuditAction::Update,
    AuditAction::Schedule,
    AuditAction::Blocked,
    AuditAction::Retry,
];

/// One line of history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// When it happened (RFC 3339, UTC).
    pub at: String,
    /// The spec's job id.
    pub job_id: String,
    /// `deployment` or `run`.
    pub kind: &'static str,
    /// `jar`, `sql` or `python`: what the job runs (as last deployed).
    pub job_kind: &'static str,
    /// What was done: `promote`, `rollback`, `suspend`... or the run's trigger.
    pub action: String,
    /// How it ended.
    pub result: String,
    /// The revision applied or run.
    pub revision: Option<String>,
    /// The principal that signed that revision.
    pub signer: Option<String>,
    /// The Flink job.
    pub flink_job_id: Option<String>,
    /// The savepoint taken or restored.
    pub savepoint: Option<String>,
    /// Duration, schedule, root cause.
    pub detail: Option<String>,
}

fn millis_rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn field(detail: &serde_json::Value, key: &str) -> Option<String> {
    detail[key].as_str().map(str::to_string)
}

fn parse(detail: Option<&str>) -> serde_json::Value {
    detail
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default()
}

fn deployment_entries(log: &[AuditEntry]) -> Vec<HistoryEntry> {
    let intents: BTreeMap<i64, &AuditEntry> = log
        .iter()
        .filter(|e| e.phase == "intent")
        .map(|e| (e.id, e))
        .collect();
    log.iter()
        .filter(|e| {
            e.phase == "outcome" && DEPLOYMENT_ACTIONS.iter().any(|a| a.as_str() == e.action)
        })
        .filter_map(|outcome| {
            // With `--since` an outcome's intent may lie before the window; the outcome still counts.
            let before = outcome
                .intent_id
                .and_then(|id| intents.get(&id))
                .map(|intent| parse(intent.detail.as_deref()))
                .unwrap_or_default();
            let after = parse(outcome.detail.as_deref());
            Some(HistoryEntry {
                at: outcome.at.clone(),
                job_id: outcome.job_id.clone()?,
                kind: "deployment",
                job_kind: "jar",
                action: outcome.action.clone(),
                result: outcome.result.clone().unwrap_or_default(),
                revision: outcome.commit_id.clone(),
                signer: None,
                flink_job_id: field(&before, "flink_job_id")
                    .or_else(|| field(&after, "flink_job_id")),
                savepoint: field(&before, "savepoint")
                    .or_else(|| field(&after, "savepoint"))
                    .or_else(|| field(&before, "from_savepoint")),
                detail: field(&before, "reason")
                    .or_else(|| field(&before, "by").map(|by| format!("requested by {by}")))
                    .or_else(|| field(&before, "to_commit").map(|c| format!("to commit {c}")))
                    .or_else(|| {
                        // A rollback promotes an older commit's spec while the head is the failed one.
                        field(&before, "commit")
                            .filter(|c| Some(c) != outcome.commit_id.as_ref())
                            .map(|c| format!("runs the spec of commit {c}"))
                    }),
            })
        })
        .collect()
}

fn run_entry(run: &RunRecord) -> HistoryEntry {
    let mut detail = Vec::new();
    if let Some(at) = &run.scheduled_for {
        detail.push(format!("scheduled for {at}"));
    }
    if let Some(ended) = run.ended_at_ms {
        detail.push(format!(
            "took {:.1} s",
            (ended - run.submitted_at_ms) as f64 / 1000.0
        ));
    }
    if let Some(cause) = &run.root_cause {
        detail.push(cause.clone());
    }
    HistoryEntry {
        at: millis_rfc3339(run.submitted_at_ms),
        job_id: run.job_id.clone(),
        kind: "run",
        job_kind: "jar",
        action: format!("run ({})", run.trigger),
        result: run.status.as_str().to_string(),
        revision: Some(run.commit_id.clone()),
        signer: None,
        flink_job_id: Some(run.flink_job_id.clone()),
        savepoint: None,
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
    }
}

/// Every deployment and run recorded from `since` on, oldest first; of one job when `job_id` is given.
pub fn entries(
    store: &StateStore,
    job_id: Option<&str>,
    since: Option<DateTime<chrono::Utc>>,
) -> Result<Vec<HistoryEntry>, crate::state::StateError> {
    let audit_since = since
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    let runs_since = since.map_or(i64::MIN, |t| t.timestamp_millis());
    let mut entries = deployment_entries(&store.audit_log_since(&audit_since)?);
    entries.extend(store.runs_since(job_id, runs_since)?.iter().map(run_entry));
    entries.retain(|e| job_id.is_none_or(|id| e.job_id == id));
    let mut signers: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut kinds: BTreeMap<String, &'static str> = BTreeMap::new();
    for entry in &mut entries {
        if !kinds.contains_key(&entry.job_id) {
            let kind = store
                .job(&entry.job_id)?
                .map_or("jar", |r| r.job_kind().as_str());
            kinds.insert(entry.job_id.clone(), kind);
        }
        entry.job_kind = kinds.get(&entry.job_id).copied().unwrap_or("jar");
        if let Some(commit) = &entry.revision {
            if !signers.contains_key(commit) {
                let signer = store.revision(commit)?.and_then(|r| r.signer);
                signers.insert(commit.clone(), signer);
            }
            entry.signer = signers.get(commit).cloned().flatten();
        }
    }
    entries.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(entries)
}

/// Prints history as a table.
pub fn print(entries: &[HistoryEntry]) {
    if entries.is_empty() {
        println!("no deployments or runs recorded");
        return;
    }
    println!(
        "{:<24} {:<24} {:<10} {:<20} {:<11} {:<12} {:<24} {:<32} DETAIL",
        "TIME", "JOB", "KIND", "ACTION", "RESULT", "REVISION", "SIGNER", "FLINK JOB"
    );
    let dash = || "-".to_string();
    for e in entries {
        let detail = match (&e.savepoint, &e.detail) {
            (Some(s), Some(d)) => format!("savepoint {s}; {d}"),
            (Some(s), None) => format!("savepoint {s}"),
            (None, Some(d)) => d.clone(),
            (None, None) => String::new(),
        };
        println!(
            "{:<24} {:<24} {:<10} {:<20} {:<11} {:<12} {:<24} {:<32} {}",
            e.at,
            if e.job_kind == "jar" {
                e.job_id.clone()
            } else {
                format!("{} [{}]", e.job_id, e.job_kind)
            },
            e.kind,
            e.action,
            e.result,
            e.revision
                .as_deref()
                .map(|r| crate::spec::source::short_id(r).to_string())
                .unwrap_or_else(dash),
            e.signer.clone().unwrap_or_else(dash),
            e.flink_job_id.clone().unwrap_or_else(dash),
            detail
        );
    }
}
