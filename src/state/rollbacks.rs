//! What each revision changed per job (enough to undo it), and revision rollbacks in progress.
//!
//! A promotion of a create, upgrade or resume records the deployment it replaced and the state the
//! new instance started from. When a job of a revision with `rollback: revision` fails, one row in
//! `revision_rollbacks` (with its audit intent) marks the revision; each change to undo is then
//! `pending`, `begun` (in the same transaction that records the job's rollback phase) or `skipped`,
//! so a pass interrupted at any point continues the rollback where it stood.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{AuditAction, StateError, StateStore, sqlite};
use crate::util::now_rfc3339;

/// One job's change by one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionChange {
    /// The revision (the head that started the operation).
    pub commit_id: String,
    /// The job.
    pub job_id: String,
    /// `create`, `upgrade` or `resume`.
    pub kind: String,
    /// The spec hash the revision deployed.
    pub spec_hash: String,
    /// The instance the revision started.
    pub flink_job_id: String,
    /// The instance it replaced, if any.
    pub previous_flink_job_id: Option<String>,
    /// The last good deployment before the revision (JSON of `reconcile::Deployment`); `None`
    /// for a create.
    pub previous_deployment_json: Option<String>,
    /// The commit of that deployment.
    pub previous_commit: Option<String>,
    /// The savepoint (or checkpoint) the new instance started from: the state a rollback restores.
    pub restored_from: Option<String>,
    /// `pending`, `begun` or `skipped` once a rollback of the revision concerns it.
    pub rollback_state: Option<String>,
}

/// A revision being (or having been) rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionRollback {
    /// The revision.
    pub commit_id: String,
    /// The job whose failure started it.
    pub trigger_job_id: String,
    /// Why, for people.
    pub reason: String,
    /// The revision-level audit intent (its outcome is written when the rollback ends).
    pub audit_intent: i64,
    /// When it ended (`None` while in progress).
    pub finished_at: Option<String>,
}

const CHANGE_COLUMNS: &str = "commit_id, job_id, kind, spec_hash, flink_job_id, previous_flink_job_id, previous_deployment_json, previous_commit, restored_from, rollback_state";

fn change_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionChange> {
    Ok(RevisionChange {
        commit_id: row.get(0)?,
        job_id: row.get(1)?,
        kind: row.get(2)?,
        spec_hash: row.get(3)?,
        flink_job_id: row.get(4)?,
        previous_flink_job_id: row.get(5)?,
        previous_deployment_json: row.get(6)?,
        previous_commit: row.get(7)?,
        restored_from: row.get(8)?,
        rollback_state: row.get(9)?,
    })
}

fn rollback_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionRollback> {
    Ok(RevisionRollback {
        commit_id: row.get(0)?,
        trigger_job_id: row.get(1)?,
        reason: row.get(2)?,
        audit_intent: row.get(3)?,
        finished_at: row.get(4)?,
    })
}

impl StateStore {
    /// Records a job's change by a revision (at its promotion). `pending` when a rollback of the
    /// revision already runs and the job takes part in it.
    pub fn record_revision_change(&self, change: &RevisionChange) -> Result<(), StateError> {
        self.connection
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO revision_changes ({CHANGE_COLUMNS}, applied_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    change.commit_id,
                    change.job_id,
                    change.kind,
                    change.spec_hash,
                    change.flink_job_id,
                    change.previous_flink_job_id,
                    change.previous_deployment_json,
                    change.previous_commit,
                    change.restored_from,
                    change.rollback_state,
                    now_rfc3339()
                ],
            )
            .map_err(sqlite(&self.path, "record a revision's change"))?;
        Ok(())
    }

    /// The rollback of `commit_id`, finished or not.
    pub fn revision_rollback(
        &self,
        commit_id: &str,
    ) -> Result<Option<RevisionRollback>, StateError> {
        self.connection
            .query_row(
                "SELECT commit_id, trigger_job_id, reason, audit_intent, finished_at FROM revision_rollbacks WHERE commit_id = ?1",
                [commit_id],
                rollback_from_row,
            )
            .optional()
            .map_err(sqlite(&self.path, "read a revision rollback"))
    }

    /// Revision rollbacks not finished yet (an interrupted pass left them), oldest first.
    pub fn unfinished_revision_rollbacks(&self) -> Result<Vec<RevisionRollback>, StateError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT commit_id, trigger_job_id, reason, audit_intent, finished_at FROM revision_rollbacks WHERE finished_at IS NULL ORDER BY audit_intent",
            )
            .map_err(sqlite(&self.path, "list revision rollbacks"))?;
        statement
            .query_map([], rollback_from_row)
            .and_then(Iterator::collect)
            .map_err(sqlite(&self.path, "list revision rollbacks"))
    }

    /// Starts the rollback of `commit_id` (once: `None` when it already started): the revision-level
    /// audit intent, and every change of the revision to a job in `members` becomes `pending`.
    /// Call inside a transaction with the failed job's own rollback phase.
    pub fn start_revision_rollback(
        &self,
        commit_id: &str,
        trigger_job_id: &str,
        reason: &str,
        members: &[String],
    ) -> Result<Option<i64>, StateError> {
        if self.revision_rollback(commit_id)?.is_some() {
            return Ok(None);
        }
        let intent = self.audit_intent(
            Some(commit_id),
            None,
            AuditAction::RevisionRollback,
            &serde_json::json!({"failed_job": trigger_job_id, "reason": reason, "jobs": members})
                .to_string(),
        )?;
        self.connection
            .execute(
                "INSERT INTO revision_rollbacks (commit_id, trigger_job_id, reason, audit_intent, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![commit_id, trigger_job_id, reason, intent, now_rfc3339()],
            )
            .map_err(sqlite(&self.path, "start a revision rollback"))?;
        for job_id in members {
            self.connection
                .execute(
                    "UPDATE revision_changes SET rollback_state = 'pending' WHERE commit_id = ?1 AND job_id = ?2 AND rollback_state IS NULL",
                    params![commit_id, job_id],
                )
                .map_err(sqlite(&self.path, "start a revision rollback"))?;
        }
        Ok(Some(intent))
    }

    /// The changes of `commit_id` that its rollback concerns (`pending`, `begun` or `skipped`).
    pub fn changes_to_roll_back(&self, commit_id: &str) -> Result<Vec<RevisionChange>, StateError> {
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT {CHANGE_COLUMNS} FROM revision_changes WHERE commit_id = ?1 AND rollback_state IS NOT NULL ORDER BY job_id"
            ))
            .map_err(sqlite(&self.path, "list a revision's changes"))?;
        statement
            .query_map([commit_id], change_from_row)
            .and_then(Iterator::collect)
            .map_err(sqlite(&self.path, "list a revision's changes"))
    }

    /// Moves one change's rollback on (`begun` or `skipped`).
    pub fn set_rollback_state(
        &self,
        commit_id: &str,
        job_id: &str,
        state: &str,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "UPDATE revision_changes SET rollback_state = ?3 WHERE commit_id = ?1 AND job_id = ?2",
                params![commit_id, job_id, state],
            )
            .map_err(sqlite(&self.path, "record a rollback step"))?;
        Ok(())
    }

    /// Ends the rollback of `commit_id`: its audit outcome and its end, in one transaction.
    pub fn finish_revision_rollback(
        &self,
        commit_id: &str,
        result: &str,
        detail: &str,
    ) -> Result<(), StateError> {
        self.atomically(|s| {
            let Some(rollback) = s.revision_rollback(commit_id)? else {
                return Ok(());
            };
            if rollback.finished_at.is_some() {
                return Ok(());
            }
            s.audit_outcome(rollback.audit_intent, result, detail)?;
            s.connection
                .execute(
                    "UPDATE revision_rollbacks SET finished_at = ?2 WHERE commit_id = ?1",
                    params![commit_id, now_rfc3339()],
                )
                .map_err(sqlite(&s.path, "finish a revision rollback"))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(job_id: &str) -> RevisionChange {
        RevisionChange {
            commit_id: "r2".into(),
            job_id: job_id.into(),
            kind: "upgrade".into(),
            spec_hash: "h2".into(),
            flink_job_id: format!("{job_id}-2"),
            previous_flink_job_id: Some(format!("{job_id}-1")),
            previous_deployment_json: Some("{}".into()),
            previous_commit: Some("r1".into()),
            restored_from: Some(format!("file:///sp/{job_id}/savepoint-1")),
            rollback_state: None,
        }
    }

    #[test]
    fn a_revision_rollback_starts_once_marks_its_members_and_ends_with_one_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        store.record_revision_change(&change("a")).unwrap();
        store.record_revision_change(&change("x")).unwrap();
        let members = vec!["a".to_string(), "c".to_string()];
        let intent = store
            .atomically(|s| s.start_revision_rollback("r2", "c", "c failed", &members))
            .unwrap()
            .expect("started");
        assert_eq!(
            store
                .start_revision_rollback("r2", "c", "again", &members)
                .unwrap(),
            None,
            "a second failure does not start a second rollback"
        );
        let todo = store.changes_to_roll_back("r2").unwrap();
        assert_eq!(todo.len(), 1, "x does not take part: {todo:?}");
        assert_eq!(todo[0].rollback_state.as_deref(), Some("pending"));
        assert_eq!(store.unfinished_revision_rollbacks().unwrap().len(), 1);
        store.set_rollback_state("r2", "a", "begun").unwrap();
        store
            .finish_revision_rollback("r2", "ok", "{\"jobs\":[\"a\"]}")
            .unwrap();
        store.finish_revision_rollback("r2", "ok", "{}").unwrap();
        assert!(store.unfinished_revision_rollbacks().unwrap().is_empty());
        let log = store.audit_log().unwrap();
        let outcomes: Vec<_> = log.iter().filter(|e| e.intent_id == Some(intent)).collect();
        assert_eq!(outcomes.len(), 1, "{log:#?}");
        assert_eq!(
            store
                .revision_rollback("r2")
                .unwrap()
                .unwrap()
                .trigger_job_id,
            "c"
        );
    }
}
