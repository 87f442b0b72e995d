//! Path rules: repository-relative paths, job ids, and which files are specs or programs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A normalized path inside the repository: relative, `/`-separated, no `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RepoPath(#[serde(deserialize_with = "normalized")] String);

/// A stored path is checked again when it is read back: it is not trusted more than a spec.
fn normalized<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    let path = RepoPath::parse(&text).map_err(serde::de::Error::custom)?;
    if path.0 != text {
        return Err(serde::de::Error::custom(format!(
            "`{text}` is not normalized"
        )));
    }
    Ok(path.0)
}

impl RepoPath {
    /// Validates and normalizes a repo-relative path (`./a//b` becomes `a/b`).
    pub fn parse(text: &str) -> Result<RepoPath, String> {
        if text.starts_with('/') {
            return Err(format!(
                "`{text}` is absolute; paths are relative to the repository root"
            ));
        }
        if text.contains('\\') || text.contains('\0') {
            return Err(format!(
                "`{text}` contains a backslash or NUL; use `/` separators"
            ));
        }
        let mut parts = Vec::new();
        for part in text.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(format!(
                        "`{text}` contains `..`; paths may not leave the repository"
                    ));
                }
                ".git" => return Err(format!("`{text}` points into `.git`")),
                other => parts.push(other),
            }
        }
        Ok(RepoPath(parts.join("/")))
    }

    /// The repository root.
    pub fn root() -> RepoPath {
        RepoPath(String::new())
    }

    /// True for the repository root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A child path.
    pub fn join(&self, relative: &str) -> Result<RepoPath, String> {
        if self.is_root() {
            RepoPath::parse(relative)
        } else {
            RepoPath::parse(&format!("{}/{relative}", self.0))
        }
    }

    /// Where a symlink at this path points, if that stays inside the repository.
    pub fn join_link(&self, target: &str) -> Result<RepoPath, String> {
        let dir = self.0.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        RepoPath::parse(&super::source::normalize_link(dir, target)?)
    }

    /// True if `self` is `dir` or lies below it.
    pub fn starts_with(&self, dir: &RepoPath) -> bool {
        dir.is_root() || self.0 == dir.0 || self.0.starts_with(&format!("{}/", dir.0))
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "." } else { &self.0 })
    }
}

pub(super) fn valid_job_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

pub(super) fn program_path(name: &str, extension: &str) -> Result<RepoPath, String> {
    let path = RepoPath::parse(name)?;
    if !path.as_str().ends_with(extension) {
        return Err(format!("`{name}` must be a {extension} file"));
    }
    Ok(path)
}

pub(super) fn is_spec_file(path: &RepoPath) -> bool {
    let name = path.as_str();
    name.ends_with(".yaml") || name.ends_with(".yml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths_are_normalized_and_confined() {
        assert_eq!(RepoPath::parse("./a//b/").unwrap().as_str(), "a/b");
        assert!(RepoPath::parse("/etc/passwd").is_err());
        assert!(RepoPath::parse("a/../../b").is_err());
        assert!(RepoPath::parse(".git/config").is_err());
        let link = RepoPath::parse("artifacts/current.jar").unwrap();
        assert_eq!(
            link.join_link("v2/job.jar").unwrap().as_str(),
            "artifacts/v2/job.jar"
        );
        assert_eq!(
            link.join_link("../lib/job.jar").unwrap().as_str(),
            "lib/job.jar"
        );
        assert!(link.join_link("../../outside.jar").is_err());
        assert!(link.join_link("/etc/passwd").is_err());
    }
}
