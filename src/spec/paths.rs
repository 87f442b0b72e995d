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
    match check(&text).map_err(serde::de::Error::custom)? {
        Form::Normal => Ok(text),
        Form::Loose => Err(serde::de::Error::custom(format!(
            "`{text}` is not normalized"
        ))),
    }
}

/// A valid path as written: already in its normal form, or one that normalizing changes.
enum Form {
    Normal,
    Loose,
}

/// The path rules, without making the normal form: most paths (every name a tree walk finds,
/// every path read back from the state database) are in it already.
fn check(text: &str) -> Result<Form, String> {
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
    let mut form = Form::Normal;
    for part in text.split('/') {
        match part {
            "" | "." => form = Form::Loose,
            ".." => {
                return Err(format!(
                    "`{text}` contains `..`; paths may not leave the repository"
                ));
            }
            ".git" => return Err(format!("`{text}` points into `.git`")),
            _ => {}
        }
    }
    Ok(form)
}

impl RepoPath {
    /// Validates and normalizes a repo-relative path (`./a//b` becomes `a/b`).
    pub fn parse(text: &str) -> Result<RepoPath, String> {
        RepoPath::normalize(text.to_string())
    }

    /// [`RepoPath::parse`] of a text already owned, kept as it is when it is in normal form.
    fn normalize(text: String) -> Result<RepoPath, String> {
        match check(&text)? {
            Form::Normal => Ok(RepoPath(text)),
            Form::Loose => Ok(RepoPath(
                text.split('/')
                    .filter(|part| !matches!(*part, "" | "."))
                    .collect::<Vec<_>>()
                    .join("/"),
            )),
        }
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
            return RepoPath::parse(relative);
        }
        let mut joined = String::with_capacity(self.0.len() + 1 + relative.len());
        joined.push_str(&self.0);
        joined.push('/');
        joined.push_str(relative);
        RepoPath::normalize(joined)
    }

    /// Where a symlink at this path points, if that stays inside the repository.
    pub fn join_link(&self, target: &str) -> Result<RepoPath, String> {
        let dir = self.0.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        RepoPath::parse(&super::source::normalize_link(dir, target)?)
    }

    /// True if `self` is `dir` or lies below it.
    pub fn starts_with(&self, dir: &RepoPath) -> bool {
        dir.is_root()
            || self
                .0
                .strip_prefix(dir.0.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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

    #[test]
    fn joined_paths_and_prefixes_follow_the_same_rules() {
        let dir = RepoPath::parse("jobs/team-1").unwrap();
        assert_eq!(dir.join("a.yaml").unwrap().as_str(), "jobs/team-1/a.yaml");
        assert_eq!(
            dir.join("./x//a.yaml").unwrap().as_str(),
            "jobs/team-1/x/a.yaml"
        );
        assert!(dir.join("../../../a.yaml").is_err());
        assert!(dir.join("x/.git/config").is_err());
        assert_eq!(RepoPath::root().join("a/").unwrap().as_str(), "a");
        assert!(RepoPath::parse("").unwrap().is_root());

        let file = dir.join("a.yaml").unwrap();
        assert!(file.starts_with(&dir));
        assert!(dir.starts_with(&dir));
        assert!(file.starts_with(&RepoPath::root()));
        assert!(
            !RepoPath::parse("jobs/team-10/a.yaml")
                .unwrap()
                .starts_with(&dir)
        );
        assert!(!RepoPath::parse("jobs").unwrap().starts_with(&dir));
    }

    #[test]
    fn a_stored_path_must_be_in_its_normal_form() {
        let read = |json: &str| serde_json::from_str::<RepoPath>(json);
        assert_eq!(read(r#""jobs/a.yaml""#).unwrap().as_str(), "jobs/a.yaml");
        let loose = read(r#""jobs//a.yaml""#).unwrap_err().to_string();
        assert!(loose.contains("is not normalized"), "{loose}");
        assert!(read(r#""../a.yaml""#).is_err());
        assert!(read(r#""/a.yaml""#).is_err());
    }
}
