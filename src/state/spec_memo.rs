//! The spec memo's table: loaded specs kept by the blob id of their file.

use rusqlite::params;

use super::{StateError, StateStore, sqlite};
use crate::spec::{MemoEntry, PreparedMemo, SpecMemo};

/// The spec memo of the state database in `dir`, read in parts on a thread and a connection of
/// its own while the caller goes on: a load waits for a part only when it needs an entry the
/// parts before have not brought (a no-op `apply` over 1,000 jobs waited 2.6 ms for the whole
/// memo before its load began). When the memo cannot be read its parts end early, and the specs
/// they would have given are parsed.
pub fn spec_memo_beside(dir: &std::path::Path) -> SpecMemo {
    let (sender, parts) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    let reading = std::thread::Builder::new()
        .name("spec-memo".into())
        .spawn(move || match StateStore::open_read_only(&dir) {
            Ok(Some(store)) => store.spec_memo_in_parts(|entries| {
                // The load was done, or failed, without the rest.
                let _ = sender.send(PreparedMemo::new(entries));
            }),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "the spec memo cannot be read; parsing the specs it would give");
            }
        });
    if let Err(error) = reading {
        tracing::warn!(%error, "cannot start reading the spec memo; parsing every spec");
    }
    SpecMemo::in_parts(move || parts.recv().ok())
}

impl StateStore {
    /// Every kept spec, as stored. The memo only saves time: when it cannot be read it is empty,
    /// every spec is parsed, and (for the agent) what was parsed replaces it. The agent reads it in
    /// parts ([`spec_memo_beside`], [`Self::spec_memo_in_parts`]).
    #[cfg(test)]
    pub fn spec_memo_entries(&self) -> Vec<MemoEntry> {
        let mut entries = Vec::new();
        self.spec_memo_in_parts(|part| entries.extend(part));
        entries
    }

    /// Every kept spec, as stored, handed to `each` in parts as they are read: a first small one,
    /// then each twice the one before, so a load can start on the first while the rest are read.
    /// A part once handed over is whole; when the memo cannot be read further the rest is left out
    /// (those specs are parsed).
    pub fn spec_memo_in_parts(&self, mut each: impl FnMut(Vec<MemoEntry>)) {
        if let Err(error) = self.read_spec_memo(&mut each) {
            tracing::warn!(%error, "the spec memo cannot be read; parsing the specs it would give");
        }
    }

    fn read_spec_memo(&self, each: &mut impl FnMut(Vec<MemoEntry>)) -> Result<(), StateError> {
        const FIRST_PART: usize = 64;
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT key, spec_json, spec_hash, artifact_content, program_json, observations_json FROM spec_memo",
            )
            .map_err(sqlite(&self.path, "read spec memo"))?;
        let rows = statement
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
            .map_err(sqlite(&self.path, "read spec memo"))?;
        let mut size = FIRST_PART;
        let mut part = Vec::with_capacity(size);
        for row in rows {
            part.push(row.map_err(sqlite(&self.path, "read spec memo"))?);
            if part.len() == size {
                size *= 2;
                each(std::mem::replace(&mut part, Vec::with_capacity(size)));
            }
        }
        if !part.is_empty() {
            each(part);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> MemoEntry {
        MemoEntry {
            key: format!("g\njobs/{n:03}.yaml\nblob-{n}"),
            spec_json: format!("{{\"n\":{n}}}"),
            spec_hash: format!("hash-{n}"),
            artifact_content: "jar".into(),
            program_json: n.is_multiple_of(2).then(|| "{}".to_string()),
            observations_json: "[]".into(),
        }
    }

    #[test]
    fn the_memo_is_read_in_parts_each_twice_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        assert!(store.spec_memo_entries().is_empty());
        let kept: Vec<MemoEntry> = (0..200).map(entry).collect();
        let keys: Vec<String> = kept.iter().map(|e| e.key.clone()).collect();
        store.keep_spec_memo(&kept, &keys).unwrap();

        let mut parts = Vec::new();
        store.spec_memo_in_parts(|part| parts.push(part));
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            [64, 128, 8],
            "a small first part for the load to start on"
        );
        let mut read: Vec<MemoEntry> = parts.into_iter().flatten().collect();
        read.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(read, kept);
        let mut whole = store.spec_memo_entries();
        whole.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(whole, kept);
    }
}
