//! Which state a job's next instance starts from: chosen from every place that may hold it, never guessed.
//!
//! Candidates come from the stop the agent triggered (by its trigger id), Flink's checkpoint
//! statistics of the stopped instance (its latest savepoint, its retained checkpoints that the history
//! does not mark `discarded`), the instance's checkpoint folder when the checkpoint storage is a local
//! `file:` path (Flink forgets jobs when its JobManager restarts; the folder does not), and what the
//! agent recorded earlier. The newest usable one wins; a path Flink said does not exist is never
//! offered again.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::flink::CheckpointStats;

/// Where a candidate was found, in order of preference when two are equally new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The savepoint of the stop the agent triggered.
    StopTrigger,
    /// Flink's `latest.savepoint` of the instance.
    FlinkSavepoint,
    /// A retained checkpoint Flink lists and has not discarded.
    FlinkCheckpoint,
    /// A `chk-N/_metadata` in the instance's local checkpoint folder.
    CheckpointStorage,
    /// A `savepoint-<job>-*/_metadata` in the job's local savepoint folder.
    SavepointStorage,
    /// Recorded by the agent earlier (savepoints of its stops, checkpoints it saw).
    Recorded,
    /// What the operation asked to prefer (a rollback restores what the upgrade restored).
    Hint,
}

impl Source {
    /// The word for people and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::StopTrigger => "stop savepoint",
            Source::FlinkSavepoint => "latest savepoint",
            Source::FlinkCheckpoint => "retained checkpoint",
            Source::CheckpointStorage => "checkpoint on storage",
            Source::SavepointStorage => "savepoint on storage",
            Source::Recorded => "recorded",
            Source::Hint => "rollback state",
        }
    }
}

/// A place that may hold the job's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The savepoint or checkpoint path, as Flink takes it.
    pub path: String,
    /// When it was taken (epoch ms; 0 when unknown).
    pub taken_at_ms: i64,
    /// A savepoint (self-contained) rather than a checkpoint.
    pub savepoint: bool,
    /// Where it was found.
    pub source: Source,
}

/// Paths equal up to the `file:` scheme spelling (`file:/x`, `file:///x`, `/x`) and a trailing slash.
pub fn same_path(a: &str, b: &str) -> bool {
    normalize(a) == normalize(b)
}

/// A path without its `file:` scheme spelling or trailing slash, for comparisons.
pub fn normalize(path: &str) -> String {
    let bare = path
        .strip_prefix("file://")
        .or_else(|| path.strip_prefix("file:"))
        .unwrap_or(path);
    let bare = if bare.starts_with("//") {
        &bare[1..]
    } else {
        bare
    };
    bare.trim_end_matches('/').to_string()
}

/// The newest candidate that is not known to be unusable; equally new ones by [`Source`] order.
pub fn choose(candidates: &[Candidate], unusable: &BTreeSet<String>) -> Option<Candidate> {
    candidates
        .iter()
        .filter(|c| !unusable.contains(&normalize(&c.path)))
        .max_by(|a, b| {
            a.taken_at_ms
                .cmp(&b.taken_at_ms)
                .then(b.source.cmp(&a.source))
                .then(a.savepoint.cmp(&b.savepoint))
        })
        .cloned()
}

/// What Flink's checkpoint statistics of one instance offer, and the paths it says it discarded.
pub fn from_checkpoint_stats(stats: &CheckpointStats) -> (Vec<Candidate>, Vec<String>) {
    let mut offered = Vec::new();
    let mut discarded = Vec::new();
    for entry in &stats.history {
        let Some(path) = entry.external_path.clone() else {
            continue;
        };
        if entry.discarded {
            discarded.push(path);
        } else if entry.status == "COMPLETED" {
            offered.push(Candidate {
                path,
                taken_at_ms: entry.latest_ack_timestamp,
                savepoint: entry.is_savepoint,
                source: if entry.is_savepoint {
                    Source::FlinkSavepoint
                } else {
                    Source::FlinkCheckpoint
                },
            });
        }
    }
    if let Some(savepoint) = &stats.latest.savepoint
        && let Some(path) = &savepoint.external_path
        && !discarded.iter().any(|d| same_path(d, path))
        && !offered.iter().any(|c| same_path(&c.path, path))
    {
        // A savepoint belongs to whoever triggered it: Flink never discards one.
        offered.push(Candidate {
            path: path.clone(),
            taken_at_ms: savepoint.latest_ack_timestamp,
            savepoint: true,
            source: Source::FlinkSavepoint,
        });
    }
    if let Some(completed) = &stats.latest.completed
        && let Some(path) = &completed.external_path
    {
        // `latest.completed` says nothing about discarding; only a history entry that lists it
        // as kept makes it a candidate (a finished job's checkpoints are gone).
        let kept = stats.history.iter().any(|e| {
            e.id == completed.id && !e.discarded && e.external_path.as_deref() == Some(path)
        });
        if kept && !offered.iter().any(|c| same_path(&c.path, path)) {
            offered.push(Candidate {
                path: path.clone(),
                taken_at_ms: completed.latest_ack_timestamp,
                savepoint: completed.is_savepoint,
                source: Source::FlinkCheckpoint,
            });
        }
    }
    (offered, discarded)
}

/// The complete entries (folders holding `_metadata`) of a local `file:` folder: each entry's
/// name, the time its `_metadata` was written (epoch ms) and its path. `None` for other storage.
fn complete_entries(dir: &str) -> Option<Vec<(String, i64, std::path::PathBuf)>> {
    if !(dir.starts_with("file:") || dir.starts_with('/')) {
        return None;
    }
    let entries = std::fs::read_dir(normalize(dir)).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let modified = std::fs::metadata(entry.path().join("_metadata"))
                    .ok()?
                    .modified()
                    .ok()?;
                let taken_at_ms = modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_millis() as i64;
                let name = entry.file_name().to_string_lossy().into_owned();
                Some((name, taken_at_ms, entry.path()))
            })
            .collect(),
    )
}

/// The newest complete checkpoint (`chk-N` holding `_metadata`) of `flink_job_id` under a local
/// `file:` checkpoint directory; `None` for other storage or when there is none.
pub fn scan_checkpoint_storage(checkpoint_dir: &str, flink_job_id: &str) -> Option<Candidate> {
    let folder = format!("{}/{flink_job_id}", checkpoint_dir.trim_end_matches('/'));
    complete_entries(&folder)?
        .into_iter()
        .filter_map(|(name, taken_at_ms, path)| {
            let number: u64 = name.strip_prefix("chk-")?.parse().ok()?;
            Some((number, taken_at_ms, path))
        })
        .max_by_key(|(number, _, _)| *number)
        .map(|(_, taken_at_ms, path)| Candidate {
            path: format!("file://{}", path.display()),
            taken_at_ms,
            savepoint: false,
            source: Source::CheckpointStorage,
        })
}

/// The newest complete savepoint of the job in a local `file:` savepoint folder. Flink names a
/// savepoint `savepoint-<first 6 characters of the job id>-<random>`, and the agent's job ids of
/// one job share their first 16, so this finds a savepoint whose completion the agent never saw
/// (killed while Flink took it, then the JobManager forgot the operation).
pub fn scan_savepoint_storage(savepoint_dir: &str, flink_job_id: &str) -> Option<Candidate> {
    let prefix = format!("savepoint-{}-", flink_job_id.get(..6)?);
    complete_entries(savepoint_dir)?
        .into_iter()
        .filter(|(name, _, _)| name.starts_with(&prefix))
        .max_by_key(|(_, taken_at_ms, _)| *taken_at_ms)
        .map(|(_, taken_at_ms, path)| Candidate {
            path: format!("file:{}", path.display()),
            taken_at_ms,
            savepoint: true,
            source: Source::SavepointStorage,
        })
}

/// True when Flink's answer to a submission says its restore path does not exist.
pub fn is_missing_path_error(root_cause: &str) -> bool {
    root_cause.contains("Cannot find checkpoint or savepoint")
        || root_cause.contains("FileNotFoundException")
        || (root_cause.contains("_metadata") && root_cause.contains("does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flink::{CheckpointHistoryEntry, CompletedCheckpoint, LatestCheckpoints};

    fn candidate(path: &str, at: i64, source: Source) -> Candidate {
        Candidate {
            path: path.into(),
            taken_at_ms: at,
            savepoint: matches!(
                source,
                Source::StopTrigger | Source::FlinkSavepoint | Source::Hint
            ),
            source,
        }
    }

    #[test]
    fn the_newest_usable_candidate_wins() {
        let all = [
            candidate("file:/sp/savepoint-1", 100, Source::Recorded),
            candidate("file:/ck/j/chk-35", 300, Source::CheckpointStorage),
            candidate("file:/sp/savepoint-2", 200, Source::StopTrigger),
        ];
        assert_eq!(
            choose(&all, &BTreeSet::new()).unwrap().path,
            "file:/ck/j/chk-35"
        );
        let gone: BTreeSet<String> = [normalize("file:///ck/j/chk-35")].into();
        assert_eq!(choose(&all, &gone).unwrap().path, "file:/sp/savepoint-2");
        let all_gone: BTreeSet<String> = all.iter().map(|c| normalize(&c.path)).collect();
        assert_eq!(choose(&all, &all_gone), None);
        assert_eq!(choose(&[], &BTreeSet::new()), None);
    }

    #[test]
    fn equally_new_candidates_prefer_the_agents_own_stop() {
        let all = [
            candidate("file:/a", 100, Source::Recorded),
            candidate("file:/b", 100, Source::StopTrigger),
            candidate("file:/c", 100, Source::FlinkCheckpoint),
        ];
        assert_eq!(choose(&all, &BTreeSet::new()).unwrap().path, "file:/b");
    }

    #[test]
    fn path_spellings_compare_equal() {
        assert!(same_path("file:/tmp/x/", "file:///tmp/x"));
        assert!(same_path("/tmp/x", "file:/tmp/x"));
        assert!(!same_path("/tmp/x", "/tmp/y"));
    }

    fn history(
        id: u64,
        path: &str,
        at: i64,
        savepoint: bool,
        discarded: bool,
    ) -> CheckpointHistoryEntry {
        CheckpointHistoryEntry {
            id,
            status: "COMPLETED".into(),
            is_savepoint: savepoint,
            discarded,
            external_path: Some(path.into()),
            latest_ack_timestamp: at,
        }
    }

    #[test]
    fn discarded_checkpoints_of_a_finished_job_are_never_offered() {
        // A job stopped with a savepoint: Flink discards its checkpoints but `latest.completed`
        // still names the last one.
        let stats = CheckpointStats {
            latest: LatestCheckpoints {
                completed: Some(CompletedCheckpoint {
                    id: 33,
                    external_path: Some("file:/ck/j/chk-33".into()),
                    latest_ack_timestamp: 500,
                    is_savepoint: false,
                }),
                savepoint: Some(CompletedCheckpoint {
                    id: 34,
                    external_path: Some("file:/sp/savepoint-x".into()),
                    latest_ack_timestamp: 600,
                    is_savepoint: true,
                }),
                ..Default::default()
            },
            history: vec![
                history(34, "file:/sp/savepoint-x", 600, true, false),
                history(33, "file:/ck/j/chk-33", 500, false, true),
                history(32, "file:/ck/j/chk-32", 400, false, true),
            ],
            ..Default::default()
        };
        let (offered, discarded) = from_checkpoint_stats(&stats);
        assert_eq!(
            offered.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
            vec!["file:/sp/savepoint-x"]
        );
        assert_eq!(discarded.len(), 2);
    }

    #[test]
    fn a_cancelled_jobs_retained_checkpoint_is_offered() {
        let stats = CheckpointStats {
            latest: LatestCheckpoints {
                completed: Some(CompletedCheckpoint {
                    id: 35,
                    external_path: Some("file:/ck/j/chk-35".into()),
                    latest_ack_timestamp: 900,
                    is_savepoint: false,
                }),
                ..Default::default()
            },
            history: vec![
                history(35, "file:/ck/j/chk-35", 900, false, false),
                history(34, "file:/ck/j/chk-34", 800, false, true),
            ],
            ..Default::default()
        };
        let (offered, _) = from_checkpoint_stats(&stats);
        let chosen = choose(&offered, &BTreeSet::new()).unwrap();
        assert_eq!(chosen.path, "file:/ck/j/chk-35");
        assert_eq!(chosen.source, Source::FlinkCheckpoint);
    }

    #[test]
    fn the_storage_scan_finds_the_highest_complete_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("abc");
        for (name, complete) in [("chk-9", true), ("chk-12", true), ("chk-13", false)] {
            std::fs::create_dir_all(job.join(name)).unwrap();
            if complete {
                std::fs::write(job.join(name).join("_metadata"), b"m").unwrap();
            }
        }
        std::fs::create_dir_all(job.join("shared")).unwrap();
        let uri = format!("file://{}", dir.path().display());
        let found = scan_checkpoint_storage(&uri, "abc").unwrap();
        assert!(found.path.ends_with("/abc/chk-12"), "{}", found.path);
        assert!(found.taken_at_ms > 0);
        assert_eq!(scan_checkpoint_storage(&uri, "other"), None);
        assert_eq!(scan_checkpoint_storage("s3://bucket/ck", "abc"), None);
    }

    #[test]
    fn the_savepoint_scan_finds_the_jobs_newest_complete_savepoint() {
        let dir = tempfile::tempdir().unwrap();
        let jid = "abcdef0123456789000000000000000a";
        for (name, complete) in [
            ("savepoint-abcdef-111", true),
            ("savepoint-abcdef-222", false),
            ("savepoint-123456-333", true),
        ] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            if complete {
                std::fs::write(dir.path().join(name).join("_metadata"), b"m").unwrap();
            }
        }
        let uri = format!("file://{}", dir.path().display());
        let found = scan_savepoint_storage(&uri, jid).unwrap();
        assert!(
            found.path.ends_with("savepoint-abcdef-111"),
            "{}",
            found.path
        );
        assert_eq!(found.source, Source::SavepointStorage);
        assert_eq!(scan_savepoint_storage(&uri, "0000000000000000"), None);
    }

    #[test]
    fn missing_path_answers_are_recognised() {
        assert!(is_missing_path_error(
            "java.io.FileNotFoundException: Cannot find checkpoint or savepoint file/directory 'file:/x/chk-33' on file system 'file'."
        ));
        assert!(!is_missing_path_error(
            "java.lang.IllegalStateException: boom"
        ));
    }
}
