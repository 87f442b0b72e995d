//! Commit verification: every new commit signed by a trusted key, no rollback or teleport, path ownership.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};

use super::{AllowedSigners, GIT_NAMESPACE, SignatureError, Verified, verify_armored};
use crate::config::CommitPolicy;

/// Path globs mapped to the principals allowed to change files under them.
#[derive(Debug, Clone)]
pub struct Owners {
    rules: Vec<(String, globset::GlobMatcher, Vec<String>)>,
}

impl Owners {
    /// Compiles `(glob, principals)` pairs; `Err` names the bad glob.
    pub fn new(rules: &[(String, Vec<String>)]) -> Result<Owners, String> {
        let rules = rules
            .iter()
            .map(|(glob, principals)| {
                let matcher = globset::GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("owners glob `{glob}`: {e}"))?
                    .compile_matcher();
                Ok((glob.clone(), matcher, principals.clone()))
            })
            .collect::<Result<_, String>>()?;
        Ok(Owners { rules })
    }

    /// No ownership rules.
    pub fn none() -> Owners {
        Owners { rules: Vec::new() }
    }

    fn violation(&self, file: &str, signer: &Verified) -> Option<CommitError> {
        self.rules
            .iter()
            .filter(|(_, matcher, _)| matcher.is_match(file))
            .find(|(_, _, owners)| !owners.iter().any(|o| signer.principals.contains(o)))
            .map(|(glob, _, owners)| CommitError::NotOwner {
                file: file.to_string(),
                glob: glob.clone(),
                principal: signer.principal.clone(),
                owners: owners.join(", "),
            })
    }
}

/// What the commit checks need to know.
pub struct Policy<'a> {
    /// Trusted keys.
    pub signers: &'a AllowedSigners,
    /// Every commit since the watermark, or only the head.
    pub mode: CommitPolicy,
    /// Accept unsigned merges whose tree is the clean merge of verified parents.
    pub clean_merges: bool,
    /// Path ownership.
    pub owners: &'a Owners,
}

/// How a commit was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// Signed by a trusted key.
    Signed(Verified),
    /// Unsigned merge whose tree is exactly the conflict-free merge of its verified parents.
    CleanMerge,
}

impl Acceptance {
    /// What the audit log records as the signer.
    pub fn signer(&self) -> String {
        match self {
            Acceptance::Signed(v) => v.principal.clone(),
            Acceptance::CleanMerge => "(clean merge of verified parents)".into(),
        }
    }
}

/// Why one commit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// No signature.
    #[error("not signed")]
    Unsigned,
    /// More than one signature header: libgit2 strips only the first, so the rest would ride along unsigned.
    #[error("carries {0} signature headers; exactly one is allowed")]
    MultipleSignatures(usize),
    /// The signature failed.
    #[error("{0}")]
    Signature(#[from] SignatureError),
    /// An unsigned merge while `clean_merges` is off.
    #[error(
        "unsigned merge commit (set trust.clean_merges to accept clean merges of verified parents)"
    )]
    UnsignedMerge,
    /// An unsigned merge with more than two parents.
    #[error("unsigned merge of {0} parents; only two-parent clean merges can be checked")]
    Octopus(usize),
    /// A parent of an unsigned merge was not verified.
    #[error("unsigned merge whose parent {0} is not verified")]
    ParentNotVerified(String),
    /// The parents conflict, so no clean merge exists.
    #[error("unsigned merge of conflicting parents")]
    MergeConflict,
    /// An "evil merge": the tree holds content that is not the clean merge of the parents.
    #[error(
        "unsigned merge whose tree {actual} differs from the clean merge of its parents ({expected}): it adds content no trusted signer wrote"
    )]
    NotCleanMerge {
        /// The commit's tree.
        actual: String,
        /// The computed clean merge.
        expected: String,
    },
    /// A file under an owned path changed by someone else.
    #[error("changes {file}, owned by {owners} (rule `{glob}`), but is signed by {principal}")]
    NotOwner {
        /// The file.
        file: String,
        /// The glob.
        glob: String,
        /// Who signed.
        principal: String,
        /// Who may.
        owners: String,
    },
    /// Git could not read it.
    #[error("cannot read commit: {0}")]
    Git(String),
}

/// Why the new head as a whole is refused, before any commit is judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The head moved back to an ancestor of the last applied commit.
    #[error(
        "rollback refused: the new head {head} is an older commit than the last applied {watermark}; undo a change with a new (revert) commit instead"
    )]
    Rollback {
        /// Last applied commit.
        watermark: String,
        /// Offered head.
        head: String,
    },
    /// The head moved to a commit that does not descend from the last applied commit.
    #[error(
        "history rewrite refused: the new head {head} does not descend from the last applied {watermark} (force-push or another line of history)"
    )]
    Teleport {
        /// Last applied commit.
        watermark: String,
        /// Offered head.
        head: String,
    },
    /// The state database has no watermark, and the head does not descend from the copy kept beside it.
    #[error(
        "rollback refused: the state database has no watermark (it was deleted or reset), but the watermark kept beside it says {watermark} was verified, and the new head {head} does not descend from it; if the branch was reset on purpose, stop the service and run `flink-gitops apply --accept-rollback-to {head}` once (recorded in the audit log)"
    )]
    LostWatermark {
        /// The kept watermark.
        watermark: String,
        /// Offered head.
        head: String,
    },
    /// The configured start commit is not an ancestor of the head.
    #[error("the new head {head} does not descend from trust.start_commit {start}")]
    NotFromStart {
        /// The configured start.
        start: String,
        /// Offered head.
        head: String,
    },
    /// Git failed while walking history.
    #[error("{0}")]
    Git(String),
}

/// The verdict on one commit.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The commit.
    pub commit: Oid,
    /// First line of its message.
    pub summary: String,
    /// Accepted, or why not.
    pub result: Result<Acceptance, CommitError>,
}

/// The verdicts on a range, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RangeReport {
    /// One per commit judged.
    pub verdicts: Vec<Verdict>,
}

impl RangeReport {
    /// True when every commit was accepted.
    pub fn all_accepted(&self) -> bool {
        self.verdicts.iter().all(|v| v.result.is_ok())
    }

    /// The first refusal, if any.
    pub fn first_refusal(&self) -> Option<(&Verdict, &CommitError)> {
        self.verdicts
            .iter()
            .find_map(|v| v.result.as_ref().err().map(|e| (v, e)))
    }
}

fn git(e: git2::Error) -> RangeError {
    RangeError::Git(e.message().to_string())
}

/// Where verification starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The last applied commit: the head must descend from it; commits after it are judged.
    Watermark(Oid),
    /// A fresh state database, but the watermark kept beside it survived: like `Watermark`, with
    /// its own refusal that says how to override it.
    Kept(Oid),
    /// A fresh install's configured `trust.start_commit`: trusted itself, commits after it are judged.
    Configured(Oid),
    /// A fresh install without a start commit: only the head is judged.
    HeadOnly,
    /// The whole history up to the head (the offline `verify` command without `--from`).
    Root,
}

impl Start {
    fn trusted_base(self) -> Option<Oid> {
        match self {
            Start::Watermark(oid) | Start::Kept(oid) | Start::Configured(oid) => Some(oid),
            Start::HeadOnly | Start::Root => None,
        }
    }
}

/// The commits to judge to move from `start` to `head`, oldest first, after the ancestry checks.
pub fn commits_to_verify(
    repo: &Repository,
    start: Start,
    head: Oid,
    mode: CommitPolicy,
) -> Result<Vec<Oid>, RangeError> {
    let (watermark, start_commit) = match start {
        Start::Watermark(w) | Start::Kept(w) => (Some(w), None),
        Start::Configured(s) => (None, Some(s)),
        Start::HeadOnly => return Ok(vec![head]),
        Start::Root => (None, None),
    };
    let base = match (watermark, start_commit) {
        (Some(w), _) => {
            if head == w {
                return Ok(Vec::new());
            }
            if !repo.graph_descendant_of(head, w).map_err(git)? {
                let (watermark, head_text) = (w.to_string(), head.to_string());
                return Err(if matches!(start, Start::Kept(_)) {
                    RangeError::LostWatermark {
                        watermark,
                        head: head_text,
                    }
                } else if repo.graph_descendant_of(w, head).map_err(git)? {
                    RangeError::Rollback {
                        watermark,
                        head: head_text,
                    }
                } else {
                    RangeError::Teleport {
                        watermark,
                        head: head_text,
                    }
                });
            }
            Some(w)
        }
        (None, Some(start)) => {
            if head != start && !repo.graph_descendant_of(head, start).map_err(git)? {
                return Err(RangeError::NotFromStart {
                    start: start.to_string(),
                    head: head.to_string(),
                });
            }
            if head == start {
                return Ok(vec![head]);
            }
            Some(start)
        }
        (None, None) => None,
    };
    if mode == CommitPolicy::Head {
        return Ok(vec![head]);
    }
    let mut walk = repo.revwalk().map_err(git)?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(git)?;
    walk.push(head).map_err(git)?;
    if let Some(base) = base {
        walk.hide(base).map_err(git)?;
    }
    walk.collect::<Result<Vec<_>, _>>().map_err(git)
}

/// Verifies the range from `start` to `head`; `first_seen` gives the time each commit's keys are judged at.
///
/// git2 is read in order on this thread; the signature checks, the costly and independent part,
/// run on every core; then each commit is judged in order, since a clean merge needs its
/// parents' verdicts.
pub fn verify_range(
    repo: &Repository,
    start: Start,
    head: Oid,
    policy: &Policy<'_>,
    mut first_seen: impl FnMut(Oid) -> DateTime<Utc>,
) -> Result<RangeReport, RangeError> {
    let commits = commits_to_verify(repo, start, head, policy.mode)?;
    let trusted_base = start.trusted_base();
    let read: Vec<ReadCommit> = commits
        .into_iter()
        .map(|oid| ReadCommit {
            oid,
            at: first_seen(oid),
            signature: read_signature(repo, oid),
        })
        .collect();
    let checked = check_signatures_in_parallel(&read, policy.signers);
    let mut accepted: HashSet<Oid> = HashSet::new();
    let mut report = RangeReport::default();
    for (ReadCommit { oid, at, .. }, signature) in read.iter().zip(checked) {
        let summary = repo
            .find_commit(*oid)
            .ok()
            .and_then(|c| c.summary().ok().flatten().map(str::to_string))
            .unwrap_or_default();
        let result = signature
            .and_then(|verified| judge(repo, *oid, verified, policy, *at, &accepted, trusted_base));
        if result.is_ok() {
            accepted.insert(*oid);
        }
        report.verdicts.push(Verdict {
            commit: *oid,
            summary,
            result,
        });
    }
    Ok(report)
}

/// A commit of the range as read from git, before its signature is checked.
struct ReadCommit {
    oid: Oid,
    /// The time its keys are judged at.
    at: DateTime<Utc>,
    signature: Result<Option<SignedParts>, CommitError>,
}

/// A commit's signature and the payload it signs.
struct SignedParts {
    signature: Vec<u8>,
    payload: Vec<u8>,
}

impl SignedParts {
    /// The signer, when the signature is a git-namespace signature by a key trusted at `at`.
    fn verify(&self, signers: &AllowedSigners, at: DateTime<Utc>) -> Result<Verified, CommitError> {
        Ok(verify_armored(
            &self.signature,
            &self.payload,
            GIT_NAMESPACE,
            signers,
            at,
        )?)
    }
}

/// The commit's one signature, if any (two or more are refused).
fn read_signature(repo: &Repository, oid: Oid) -> Result<Option<SignedParts>, CommitError> {
    let headers = signature_headers(repo, oid)?;
    if headers > 1 {
        return Err(CommitError::MultipleSignatures(headers));
    }
    match repo.extract_signature(&oid, None) {
        Ok((signature, payload)) => Ok(Some(SignedParts {
            signature: signature.to_vec(),
            payload: payload.to_vec(),
        })),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(CommitError::Git(e.message().into())),
    }
}

/// Checks every signature read, on as many threads as there are cores; `Ok(None)` for an
/// unsigned commit.
fn check_signatures_in_parallel(
    read: &[ReadCommit],
    signers: &AllowedSigners,
) -> Vec<Result<Option<Verified>, CommitError>> {
    let check = |ReadCommit {
                     at,
                     signature: parts,
                     ..
                 }: &ReadCommit| {
        match parts {
            Err(error) => Err(error.clone()),
            Ok(None) => Ok(None),
            Ok(Some(parts)) => parts.verify(signers, *at).map(Some),
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Below a few hundred commits a thread costs more than it saves.
    if threads == 1 || read.len() < 256 {
        return read.iter().map(check).collect();
    }
    let chunk = read.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = read
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn signature_headers(repo: &Repository, oid: Oid) -> Result<usize, CommitError> {
    let odb = repo
        .odb()
        .map_err(|e| CommitError::Git(e.message().into()))?;
    let object = odb
        .read(oid)
        .map_err(|e| CommitError::Git(e.message().into()))?;
    let data = object.data();
    let header_end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    Ok(data[..header_end]
        .split(|b| *b == b'\n')
        .filter(|line| line.starts_with(b"gpgsig"))
        .count())
}

/// Verifies one commit: its signature (or clean-merge status) and path ownership.
pub fn verify_commit(
    repo: &Repository,
    oid: Oid,
    policy: &Policy<'_>,
    at: DateTime<Utc>,
    accepted: &HashSet<Oid>,
    trusted_base: Option<Oid>,
) -> Result<Acceptance, CommitError> {
    let verified = match read_signature(repo, oid)? {
        None => None,
        Some(parts) => Some(parts.verify(policy.signers, at)?),
    };
    judge(repo, oid, verified, policy, at, accepted, trusted_base)
}

/// A commit's verdict once its signature (if any) was checked: path ownership for a signed one,
/// the clean-merge rule for an unsigned merge.
fn judge(
    repo: &Repository,
    oid: Oid,
    verified: Option<Verified>,
    policy: &Policy<'_>,
    at: DateTime<Utc>,
    accepted: &HashSet<Oid>,
    trusted_base: Option<Oid>,
) -> Result<Acceptance, CommitError> {
    let commit = repo
        .find_commit(oid)
        .map_err(|e| CommitError::Git(e.message().into()))?;
    let Some(verified) = verified else {
        return match commit.parent_count() {
            0 | 1 => Err(CommitError::Unsigned),
            _ if !policy.clean_merges => Err(CommitError::UnsignedMerge),
            _ => check_clean_merge(repo, &commit, policy, at, accepted, trusted_base),
        };
    };
    for file in changed_files(repo, &commit)? {
        if let Some(violation) = policy.owners.violation(&file, &verified) {
            return Err(violation);
        }
    }
    Ok(Acceptance::Signed(verified))
}

fn check_clean_merge(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    policy: &Policy<'_>,
    at: DateTime<Utc>,
    accepted: &HashSet<Oid>,
    trusted_base: Option<Oid>,
) -> Result<Acceptance, CommitError> {
    let gitfail = |e: git2::Error| CommitError::Git(e.message().into());
    if commit.parent_count() != 2 {
        return Err(CommitError::Octopus(commit.parent_count()));
    }
    let parents: Vec<git2::Commit<'_>> = commit.parents().collect();
    for parent in &parents {
        let id = parent.id();
        let trusted = accepted.contains(&id)
            || trusted_base.is_some_and(|base| id == base || repo.graph_descendant_of(base, id).unwrap_or(false))
            // In head-only mode the parents were not walked: each must carry a trusted signature itself.
            || (policy.mode == CommitPolicy::Head
                && verify_commit(repo, id, &Policy { clean_merges: false, ..*policy }, at, accepted, trusted_base).is_ok());
        if !trusted {
            return Err(CommitError::ParentNotVerified(id.to_string()));
        }
    }
    let mut index = repo
        .merge_commits(&parents[0], &parents[1], None)
        .map_err(gitfail)?;
    if index.has_conflicts() {
        return Err(CommitError::MergeConflict);
    }
    let expected = index.write_tree_to(repo).map_err(gitfail)?;
    if expected != commit.tree_id() {
        return Err(CommitError::NotCleanMerge {
            actual: commit.tree_id().to_string(),
            expected: expected.to_string(),
        });
    }
    Ok(Acceptance::CleanMerge)
}

/// Files a commit changes. For a merge, only files that differ from every parent: what the merge itself wrote.
fn changed_files(repo: &Repository, commit: &git2::Commit<'_>) -> Result<Vec<String>, CommitError> {
    let gitfail = |e: git2::Error| CommitError::Git(e.message().into());
    let tree = commit.tree().map_err(gitfail)?;
    let diff_against = |parent: Option<&git2::Tree<'_>>| -> Result<HashSet<String>, CommitError> {
        let mut changed = HashSet::new();
        tree_changes(repo, parent, Some(&tree), "", &mut changed).map_err(gitfail)?;
        Ok(changed)
    };
    let mut files: Option<HashSet<String>> = None;
    if commit.parent_count() == 0 {
        files = Some(diff_against(None)?);
    }
    for parent in commit.parents() {
        let changed = diff_against(Some(&parent.tree().map_err(gitfail)?))?;
        files = Some(match files {
            None => changed,
            Some(previous) => previous.intersection(&changed).cloned().collect(),
        });
    }
    let mut files: Vec<String> = files.unwrap_or_default().into_iter().collect();
    files.sort();
    Ok(files)
}

/// Adds to `changed` every path below `prefix` that differs between two trees (`None`: empty),
/// named as `git diff-tree -r` names them: files, links and submodules, never folders. A folder
/// with the same id on both sides has the same content and is not entered, so a commit that
/// changes one spec among thousands costs the folders on its path (libgit2's tree diff walks
/// every entry of both trees).
fn tree_changes(
    repo: &Repository,
    old: Option<&git2::Tree<'_>>,
    new: Option<&git2::Tree<'_>>,
    prefix: &str,
    changed: &mut HashSet<String>,
) -> Result<(), git2::Error> {
    type Entry = (Oid, i32);
    let entries = |tree: Option<&git2::Tree<'_>>| -> std::collections::BTreeMap<Vec<u8>, Entry> {
        tree.into_iter()
            .flat_map(|t| t.iter())
            .map(|e| (e.name_bytes().to_vec(), (e.id(), e.filemode())))
            .collect()
    };
    let (before, after) = (entries(old), entries(new));
    let names: std::collections::BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    let is_folder = |entry: &Entry| entry.1 == i32::from(git2::FileMode::Tree);
    for name in names {
        let (was, is) = (before.get(name), after.get(name));
        if was == is {
            continue;
        }
        let path = format!("{prefix}{}", String::from_utf8_lossy(name));
        if was.is_some_and(|e| !is_folder(e)) || is.is_some_and(|e| !is_folder(e)) {
            changed.insert(path.clone());
        }
        let folder = |entry: Option<&Entry>| -> Result<Option<git2::Tree<'_>>, git2::Error> {
            entry
                .filter(|e| is_folder(e))
                .map(|e| repo.find_tree(e.0))
                .transpose()
        };
        let (was_folder, is_folder_now) = (folder(was)?, folder(is)?);
        if was_folder.is_some() || is_folder_now.is_some() {
            tree_changes(
                repo,
                was_folder.as_ref(),
                is_folder_now.as_ref(),
                &format!("{path}/"),
                changed,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What libgit2's own tree diff names: the reference `tree_changes` must agree with.
    fn diffed_by_libgit2(
        repo: &Repository,
        old: Option<&git2::Tree<'_>>,
        new: &git2::Tree<'_>,
    ) -> HashSet<String> {
        let diff = repo.diff_tree_to_tree(old, Some(new), None).unwrap();
        diff.deltas()
            .flat_map(|d| [d.old_file().path(), d.new_file().path()])
            .flatten()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// A file of a test tree: its path, its content and its mode.
    type File<'a> = (&'a str, &'a str, git2::FileMode);
    /// The same, with its path split into names.
    type SplitFile<'a> = (Vec<&'a str>, &'a str, git2::FileMode);

    /// Builds a tree from files, folders made as the paths need them.
    fn tree(repo: &Repository, files: &[File<'_>]) -> Oid {
        fn build(repo: &Repository, files: &[SplitFile<'_>]) -> Oid {
            let mut builder = repo.treebuilder(None).unwrap();
            let mut folders: std::collections::BTreeMap<&str, Vec<SplitFile<'_>>> =
                Default::default();
            for (parts, content, mode) in files {
                if parts.len() == 1 {
                    let id = match mode {
                        git2::FileMode::Commit => {
                            Oid::hash_object(git2::ObjectType::Commit, content.as_bytes()).unwrap()
                        }
                        _ => repo.blob(content.as_bytes()).unwrap(),
                    };
                    builder.insert(parts[0], id, i32::from(*mode)).unwrap();
                } else {
                    folders.entry(parts[0]).or_default().push((
                        parts[1..].to_vec(),
                        content,
                        *mode,
                    ));
                }
            }
            for (name, inside) in folders {
                let id = build(repo, &inside);
                builder
                    .insert(name, id, i32::from(git2::FileMode::Tree))
                    .unwrap();
            }
            builder.write().unwrap()
        }
        let split: Vec<_> = files
            .iter()
            .map(|(path, content, mode)| (path.split('/').collect(), *content, *mode))
            .collect();
        build(repo, &split)
    }

    #[test]
    fn tree_changes_name_what_libgit2s_diff_names() {
        use git2::FileMode::{Blob, BlobExecutable, Commit, Link};
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let many: Vec<String> = (0..40)
            .map(|i| format!("jobs/team-{}/job-{i}.yaml", i % 7))
            .collect();
        let base: Vec<File<'_>> = many
            .iter()
            .map(|p| (p.as_str(), "job_id: x\n", Blob))
            .chain([
                ("README.md", "readme", Blob),
                ("artifacts/a.jar", "jar", Blob),
                ("deep/a/b/c/d.txt", "d", Blob),
                ("run.sh", "echo", Blob),
                ("link", "README.md", Link),
                ("vendored", "0123456789abcdef", Commit),
                ("thing", "a file", Blob),
            ])
            .collect();
        let variant = |change: &dyn Fn(&mut Vec<File<'_>>)| {
            let mut files = base.clone();
            change(&mut files);
            tree(&repo, &files)
        };
        let trees = [
            variant(&|_| {}),
            // One spec's content.
            variant(&|f| f[7].1 = "job_id: changed\n"),
            // A spec added in a new folder, one removed.
            variant(&|f| {
                f.push(("jobs/team-new/added.yaml", "new", Blob));
                f.remove(3);
            }),
            // The mode alone, same content.
            variant(&|f| {
                let at = f.iter().position(|e| e.0 == "run.sh").unwrap();
                f[at].2 = BlobExecutable;
            }),
            // A file becomes a folder and a folder a file.
            variant(&|f| {
                f.retain(|e| e.0 != "thing" && !e.0.starts_with("deep/"));
                f.push(("thing/inside.txt", "now a folder", Blob));
                f.push(("deep", "now a file", Blob));
            }),
            // A link retargeted, a link turned into a file with the same text, a submodule moved on.
            variant(&|f| {
                let at = f.iter().position(|e| e.0 == "link").unwrap();
                f[at].2 = Blob;
                let at = f.iter().position(|e| e.0 == "vendored").unwrap();
                f[at].1 = "fedcba9876543210";
            }),
            // Everything under one folder gone.
            variant(&|f| f.retain(|e| !e.0.starts_with("jobs/"))),
            // Names that sort differently as folders and files (`a.b` before `a/`).
            variant(&|f| {
                f.push(("jobs.d", "x", Blob));
                f.push(("jobs-x/file", "x", Blob));
            }),
        ];
        let trees: Vec<git2::Tree<'_>> = trees
            .iter()
            .map(|id| repo.find_tree(*id).unwrap())
            .collect();
        for (i, old_tree) in trees.iter().enumerate() {
            let mut ours = HashSet::new();
            tree_changes(&repo, None, Some(old_tree), "", &mut ours).unwrap();
            assert_eq!(
                ours,
                diffed_by_libgit2(&repo, None, old_tree),
                "tree {i} against nothing"
            );
            for (j, new_tree) in trees.iter().enumerate() {
                let mut ours = HashSet::new();
                tree_changes(&repo, Some(old_tree), Some(new_tree), "", &mut ours).unwrap();
                assert_eq!(
                    ours,
                    diffed_by_libgit2(&repo, Some(old_tree), new_tree),
                    "tree {i} against tree {j}"
                );
                assert_eq!(ours.is_empty(), i == j, "tree {i} against tree {j}");
            }
        }
    }
}
