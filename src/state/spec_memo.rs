//! The spec memo's table: loaded specs kept by the blob id of their file.

use rusqlite::params;

use super::{StateError, StateStore, sqlite};
use crate::spec::{MemoEntry, SpecMemo};

impl StateStore {
    /// Every kept spec, for this build to use where it can.
    pub fn spec_memo(&self) -> SpecMemo {
        SpecMemo::new(self.spec_memo_entries())
    }

    /// Every kept spec, as stored. The memo only saves time: when it cannot be read it is empty,
    /// every spec is parsed, and (for the agent) what was parsed replaces it.
    pub fn spec_memo_entries(&self) -> Vec<MemoEntry> {
        self.read_spec_memo().unwrap_or_else(|error| {
            tracing::warn!(%error, "the spec memo cannot be read; parsing every spec");
            Vec::new()
        })
    }

    fn read_spec_memo(&self) -> Result<Vec<MemoEntry>, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT key, spec_json, spec_hash, artifact_content, program_json, observations_json FROM spec_memo",
            )
            .map_err(sqlite(&self.path, "read spec memo"))?;
        let entries = statement
            .query_map([], |row| {
                Ok(MemoEntry {
                    key: row.get(0)?,
                    spec_json: row.get(1)?,
                    spec_hash: row.get(2)?,
                    artifact_content: row.get(3)?,
                    program_json: row.get(4)?,
                    observations_json: row.get(5)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sqlite(&self.path, "read spec memo"))?;
        Ok(entries)
    }

    /// Keeps the specs a load parsed, and drops those no longer in the revision (or made by
    /// another build), so the table holds one revision's worth.
    pub fn keep_spec_memo(&self, fresh: &[MemoEntry], kept: &[String]) -> Result<(), StateError> {
        self.atomically(|s| {
            let mut insert = s
                .connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO spec_memo (key, spec_json, spec_hash, artifact_content, program_json, observations_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sqlite(&s.path, "keep spec memo"))?;
            for entry in fresh {
                insert
                    .execute(params![
                        entry.key,
                        entry.spec_json,
                        entry.spec_hash,
                        entry.artifact_content,
                        entry.program_json,
                        entry.observations_json
                    ])
                    .map_err(sqlite(&s.path, "keep spec memo"))?;
            }
            let rows: usize = s
                .connection
                .query_row("SELECT COUNT(*) FROM spec_memo", [], |row| row.get(0))
                .map_err(sqlite(&s.path, "count spec memo"))?;
            if rows > kept.len() {
                let kept = serde_json::to_string(kept).unwrap_or_else(|_| "[]".into());
                s.connection
                    .execute(
                        "DELETE FROM spec_memo WHERE key NOT IN (SELECT value FROM json_each(?1))",
                        [kept],
                    )
                    .map_err(sqlite(&s.path, "prune spec memo"))?;
            }
            Ok(())
        })
    }
}
