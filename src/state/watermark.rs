//! The anti-rollback watermark's second copy: a small file beside `state.db` that outlives it.
//!
//! Deleting `state.db` (a clean-up, a person "resetting" the agent) would otherwise also forget the
//! newest verified commit, and a force-push back to an older signed commit would be adopted. The
//! file is written whole (temporary file, fsync, rename, fsync of the directory), so it holds the
//! old or the new commit after a crash, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::limits::Limits;

use super::StateError;

/// The file's name in the state directory.
pub const WATERMARK_FILE: &str = "watermark";

fn problem(path: &Path, problem: impl ToString) -> StateError {
    StateError::KeptWatermark {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// The watermark kept in `dir/watermark`, if the agent ever recorded one there.
///
/// A file that exists but does not hold a commit id is an error, not "none": treating it as absent
/// would switch the rollback guard off exactly when something tampered with it.
pub fn kept_watermark(dir: &Path) -> Result<Option<String>, StateError> {
    let path = dir.join(WATERMARK_FILE);
    let bytes = match crate::util::read_file_limited(&path, Limits::DEFAULT.watermark_file_bytes) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(problem(&path, e)),
    };
    let text = String::from_utf8(bytes).map_err(|_| problem(&path, "not UTF-8"))?;
    let commit = text.trim();
    if commit.len() < 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(problem(
            &path,
            format!(
                "does not hold a commit id (found {commit:?}); restore it or remove it knowingly"
            ),
        ));
    }
    Ok(Some(commit.to_ascii_lowercase()))
}

/// Replaces `dir/watermark` with `commit`, durably.
pub(super) fn keep(dir: &Path, commit: &str) -> Result<(), StateError> {
    let path = dir.join(WATERMARK_FILE);
    let temporary: PathBuf = dir.join(format!("{WATERMARK_FILE}.tmp"));
    let io = |e: std::io::Error| problem(&path, e);
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    writeln!(file, "{commit}").map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(io)?;
    // The rename is only durable once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_watermark_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kept_watermark(dir.path()).unwrap(), None);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        keep(dir.path(), commit).unwrap();
        assert_eq!(kept_watermark(dir.path()).unwrap().as_deref(), Some(commit));
        assert!(!dir.path().join("watermark.tmp").exists());

        std::fs::write(dir.path().join(WATERMARK_FILE), "").unwrap();
        let error = kept_watermark(dir.path()).unwrap_err().to_string();
        assert!(error.contains("does not hold a commit id"), "{error}");
        std::fs::write(dir.path().join(WATERMARK_FILE), "x".repeat(1000)).unwrap();
        assert!(kept_watermark(dir.path()).is_err());
    }
}
