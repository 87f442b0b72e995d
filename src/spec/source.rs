//! Where spec files are read from: a commit's tree in the git object database, or a checkout on disk.

use std::path::{Component, Path, PathBuf};

use super::RepoPath;

/// What a path in the tree is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular (or executable) file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link with its raw target.
    Symlink(String),
    /// Anything else (a submodule, a socket...).
    Other,
}

/// A failure to read the tree itself (not a problem with a spec).
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Git refused a lookup.
    #[error("{path}: git: {source}")]
    Git {
        /// The repo-relative path.
        path: String,
        /// The git error.
        source: git2::Error,
    },
    /// A file system read failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than allowed.
    #[error("{path}: {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The repo-relative path.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A symlink points outside the repository or loops.
    #[error("{path}: {reason}")]
    BadLink {
        /// The repo-relative path.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// A folder, or a file that looks like a spec, has a name the agent cannot use. It is an
    /// error, never a silent skip: skipping a spec would read as deleting its job.
    #[error("{path}: {reason}; rename it (a spec the agent cannot name is never taken as deleted)")]
    BadName {
        /// The path, with the unusable bytes shown as U+FFFD.
        path: String,
        /// What is wrong with the name.
        reason: String,
    },
}

/// Whether an entry the agent cannot name must stop the walk: a folder (it may hold specs) or a
/// file whose name ends like a spec's.
fn unnamed_entry_matters(lossy_name: &str, is_dir: bool) -> bool {
    is_dir || lossy_name.ends_with(".yaml") || lossy_name.ends_with(".yml")
}

/// A read-only view of a repository's files at one revision.
pub trait SpecTree {
    /// Names this tree in messages (`commit 3f2a1c0`, `directory ./specs`).
    fn describe(&self) -> String;
    /// What the path is, without following a final symlink; `None` if absent.
    fn entry(&self, path: &RepoPath) -> Result<Option<EntryKind>, TreeError>;
    /// Every file and symlink below `dir`, recursively, in a stable order.
    fn walk(&self, dir: &RepoPath) -> Result<Vec<(RepoPath, EntryKind)>, TreeError>;
    /// The bytes of a regular file, refusing files over `limit`.
    fn read(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, TreeError>;
    /// A cheap identity of a file's content that changes whenever the content does.
    fn content_id(&self, path: &RepoPath) -> Result<String, TreeError>;

    /// Follows symlinks (at most 8 hops) to a regular file that stays inside the repository.
    fn resolve_file(&self, path: &RepoPath) -> Result<Option<RepoPath>, TreeError> {
        let mut current = path.clone();
        for _ in 0..8 {
            match self.entry(&current)? {
                None => return Ok(None),
                Some(EntryKind::File) => return Ok(Some(current)),
                Some(EntryKind::Symlink(target)) => {
                    current = current
                        .join_link(&target)
                        .map_err(|reason| TreeError::BadLink {
                            path: path.to_string(),
                            reason,
                        })?;
                }
                Some(EntryKind::Dir) | Some(EntryKind::Other) => {
                    return Err(TreeError::BadLink {
                        path: path.to_string(),
                        reason: "is not a regular file".into(),
                    });
                }
            }
        }
        Err(TreeError::BadLink {
            path: path.to_string(),
            reason: "too many levels of symbolic links".into(),
        })
    }
}

/// A commit's tree read from the object database (no work tree involved).
pub struct GitTree<'repo> {
    repo: &'repo git2::Repository,
    tree: git2::Tree<'repo>,
    commit: git2::Oid,
    /// The ids of the files and links the walks found: a load asks for the content id of every
    /// spec file it walked past, and a lookup by path reads each folder on the way again.
    walked: std::cell::RefCell<foldhash::HashMap<RepoPath, git2::Oid>>,
}

impl<'repo> GitTree<'repo> {
    /// The tree of `commit` in `repo`.
    pub fn new(repo: &'repo git2::Repository, commit: git2::Oid) -> Result<Self, TreeError> {
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|source| TreeError::Git {
                path: String::new(),
                source,
            })?;
        Ok(GitTree {
            repo,
            tree,
            commit,
            walked: Default::default(),
        })
    }

    /// The commit this tree belongs to.
    pub fn commit(&self) -> git2::Oid {
        self.commit
    }

    /// The blob id of a file.
    pub fn blob_id(&self, path: &RepoPath) -> Result<git2::Oid, TreeError> {
        if let Some(id) = self.walked.borrow().get(path) {
            return Ok(*id);
        }
        let entry = self
            .tree
            .get_path(Path::new(path.as_str()))
            .map_err(git_err(path))?;
        Ok(entry.id())
    }

    fn kind_of(
        &self,
        entry: &git2::TreeEntry<'_>,
        path: &RepoPath,
    ) -> Result<EntryKind, TreeError> {
        Ok(match entry.filemode() {
            0o100644 | 0o100755 => EntryKind::File,
            0o040000 => EntryKind::Dir,
            0o120000 => {
                let blob = self
                    .repo
                    .find_blob(entry.id())
                    .map_err(|source| TreeError::Git {
                        path: path.to_string(),
                        source,
                    })?;
                EntryKind::Symlink(String::from_utf8_lossy(blob.content()).into_owned())
            }
            _ => EntryKind::Other,
        })
    }
}

fn git_err(path: &RepoPath) -> impl FnOnce(git2::Error) -> TreeError + '_ {
    move |source| TreeError::Git {
        path: path.to_string(),
        source,
    }
}

impl SpecTree for GitTree<'_> {
    fn describe(&self) -> String {
        format!("commit {}", short_id(&self.commit.to_string()))
    }

    fn entry(&self, path: &RepoPath) -> Result<Option<EntryKind>, TreeError> {
        if path.is_root() {
            return Ok(Some(EntryKind::Dir));
        }
        match self.tree.get_path(Path::new(path.as_str())) {
            Ok(entry) => self.kind_of(&entry, path).map(Some),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(source) => Err(TreeError::Git {
                path: path.to_string(),
                source,
            }),
        }
    }

    fn walk(&self, dir: &RepoPath) -> Result<Vec<(RepoPath, EntryKind)>, TreeError> {
        let subtree = if dir.is_root() {
            self.tree.clone()
        } else {
            let entry = self
                .tree
                .get_path(Path::new(dir.as_str()))
                .map_err(git_err(dir))?;
            self.repo.find_tree(entry.id()).map_err(git_err(dir))?
        };
        let mut found = Vec::new();
        let mut failure = None;
        let mut relative = String::new();
        subtree
            .walk(git2::TreeWalkMode::PreOrder, |parent, entry| {
                let is_dir = entry.kind() == Some(git2::ObjectType::Tree);
                let named = match entry.name() {
                    Ok(name) => {
                        relative.clear();
                        relative.push_str(parent);
                        relative.push_str(name);
                        dir.join(&relative)
                            .map_err(|reason| format!("the name is not a usable path ({reason})"))
                    }
                    Err(_) => Err("the name is not UTF-8".to_string()),
                };
                let lossy = || String::from_utf8_lossy(entry.name_bytes());
                let full = match named {
                    Ok(path) => path,
                    Err(reason) if unnamed_entry_matters(&lossy(), is_dir) => {
                        let lossy = lossy();
                        failure = Some(TreeError::BadName {
                            path: format!("{}/{parent}{lossy}", dir.as_str().trim_end_matches('/')),
                            reason,
                        });
                        return git2::TreeWalkResult::Abort;
                    }
                    Err(_) => return git2::TreeWalkResult::Skip,
                };
                match self.kind_of(entry, &full) {
                    Ok(EntryKind::Dir) => {}
                    Ok(kind) => {
                        self.walked.borrow_mut().insert(full.clone(), entry.id());
                        found.push((full, kind));
                    }
                    Err(e) => {
                        failure = Some(e);
                        return git2::TreeWalkResult::Abort;
                    }
                }
                git2::TreeWalkResult::Ok
            })
            .or_else(|e| if failure.is_some() { Ok(()) } else { Err(e) })
            .map_err(git_err(dir))?;
        if let Some(e) = failure {
            return Err(e);
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    fn read(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, TreeError> {
        let entry = self
            .tree
            .get_path(Path::new(path.as_str()))
            .map_err(git_err(path))?;
        let odb = self.repo.odb().map_err(git_err(path))?;
        let (size, _) = odb.read_header(entry.id()).map_err(git_err(path))?;
        if size as u64 > limit {
            return Err(TreeError::TooLarge {
                path: path.to_string(),
                size: size as u64,
                limit,
            });
        }
        let blob = self.repo.find_blob(entry.id()).map_err(git_err(path))?;
        Ok(blob.content().to_vec())
    }

    fn content_id(&self, path: &RepoPath) -> Result<String, TreeError> {
        Ok(format!("git-blob:{}", self.blob_id(path)?))
    }
}

/// A checkout on disk, for offline `validate` in pull-request pipelines.
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    /// A view of the directory `root`.
    pub fn new(root: &Path) -> Result<Self, TreeError> {
        let root = root.canonicalize().map_err(|source| TreeError::Io {
            path: root.display().to_string(),
            source,
        })?;
        Ok(DirTree { root })
    }

    fn full(&self, path: &RepoPath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    fn io_err(path: &RepoPath) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
        move |source| TreeError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Refuses a path whose parent folders lead outside the root through a symlink.
    fn check_inside(&self, path: &RepoPath) -> Result<(), TreeError> {
        let full = self.full(path);
        let parent = full.parent().unwrap_or(&self.root);
        match parent.canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(()),
            Ok(real) => Err(TreeError::BadLink {
                path: path.to_string(),
                reason: format!(
                    "a parent folder is a symlink leading outside the repository (to {})",
                    real.display()
                ),
            }),
            Err(_) => Ok(()),
        }
    }
}

impl SpecTree for DirTree {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn entry(&self, path: &RepoPath) -> Result<Option<EntryKind>, TreeError> {
        self.check_inside(path)?;
        let meta = match std::fs::symlink_metadata(self.full(path)) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io_err(path)(e)),
        };
        let kind = meta.file_type();
        Ok(Some(if kind.is_symlink() {
            let target = std::fs::read_link(self.full(path)).map_err(Self::io_err(path))?;
            EntryKind::Symlink(target.to_string_lossy().into_owned())
        } else if kind.is_file() {
            EntryKind::File
        } else if kind.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::Other
        }))
    }

    fn walk(&self, dir: &RepoPath) -> Result<Vec<(RepoPath, EntryKind)>, TreeError> {
        let mut found = Vec::new();
        let mut pending = vec![dir.clone()];
        while let Some(current) = pending.pop() {
            let listing = std::fs::read_dir(self.full(&current)).map_err(Self::io_err(&current))?;
            for item in listing {
                let item = item.map_err(Self::io_err(&current))?;
                let raw_name = item.file_name();
                let lossy = raw_name.to_string_lossy().into_owned();
                if current.is_root() && lossy == ".git" {
                    continue;
                }
                let named = match raw_name.to_str() {
                    Some(name) => current
                        .join(name)
                        .map_err(|reason| format!("the name is not a usable path ({reason})")),
                    None => Err("the name is not UTF-8".to_string()),
                };
                let child = match named {
                    Ok(child) => child,
                    Err(reason) => {
                        let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
                        if unnamed_entry_matters(&lossy, is_dir) {
                            return Err(TreeError::BadName {
                                path: format!("{}/{lossy}", current.as_str().trim_end_matches('/')),
                                reason,
                            });
                        }
                        continue;
                    }
                };
                match self.entry(&child)? {
                    Some(EntryKind::Dir) => pending.push(child),
                    Some(kind) => found.push((child, kind)),
                    None => {}
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    fn read(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, TreeError> {
        self.check_inside(path)?;
        let full = self.full(path);
        let size = std::fs::metadata(&full).map_err(Self::io_err(path))?.len();
        if size > limit {
            return Err(TreeError::TooLarge {
                path: path.to_string(),
                size,
                limit,
            });
        }
        crate::util::read_file_limited(&full, limit).map_err(Self::io_err(path))
    }

    fn content_id(&self, path: &RepoPath) -> Result<String, TreeError> {
        let full = self.full(path);
        let mut file = std::fs::File::open(&full).map_err(Self::io_err(path))?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = std::io::Read::read(&mut file, &mut buffer).map_err(Self::io_err(path))?;
            if read == 0 {
                break;
            }
            sha2::Digest::update(&mut hasher, &buffer[..read]);
        }
        Ok(format!(
            "sha256:{}",
            hex::encode(sha2::Digest::finalize(hasher))
        ))
    }
}

/// The first 12 characters of a commit id, as shown to people.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Normalizes a link target relative to the folder holding the link; `Err` if it leaves the repo.
pub(crate) fn normalize_link(link_dir: &str, target: &str) -> Result<String, String> {
    if target.starts_with('/') {
        return Err(format!(
            "symlink to absolute path `{target}` leaves the repository"
        ));
    }
    let mut parts: Vec<&str> = link_dir.split('/').filter(|p| !p.is_empty()).collect();
    for component in Path::new(target).components() {
        match component {
            Component::Normal(name) => {
                parts.push(name.to_str().ok_or("symlink target is not UTF-8")?)
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!("symlink to `{target}` leaves the repository"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "symlink to absolute path `{target}` leaves the repository"
                ));
            }
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit with `jobs/a.yaml`, `jobs/team/b.yaml` and `jobs/link.yaml` (a symlink to `a.yaml`).
    fn commit_with_specs(repo: &git2::Repository) -> git2::Oid {
        let a = repo.blob(b"job_id: a\n").unwrap();
        let b = repo.blob(b"job_id: b\n").unwrap();
        let link = repo.blob(b"a.yaml").unwrap();
        let mut team = repo.treebuilder(None).unwrap();
        team.insert("b.yaml", b, 0o100644).unwrap();
        let team = team.write().unwrap();
        let mut jobs = repo.treebuilder(None).unwrap();
        jobs.insert("a.yaml", a, 0o100644).unwrap();
        jobs.insert("link.yaml", link, 0o120000).unwrap();
        jobs.insert("team", team, 0o040000).unwrap();
        let jobs = jobs.write().unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        root.insert("jobs", jobs, 0o040000).unwrap();
        let root = repo.find_tree(root.write().unwrap()).unwrap();
        let who = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(None, &who, &who, "specs", &root, &[]).unwrap()
    }

    #[test]
    fn content_ids_are_the_same_before_and_after_a_walk() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let commit = commit_with_specs(&repo);
        let path = |p: &str| RepoPath::parse(p).unwrap();
        let files = ["jobs/a.yaml", "jobs/link.yaml", "jobs/team/b.yaml"];

        let looked_up: Vec<String> = {
            let tree = GitTree::new(&repo, commit).unwrap();
            files
                .iter()
                .map(|f| tree.content_id(&path(f)).unwrap())
                .collect()
        };
        let tree = GitTree::new(&repo, commit).unwrap();
        let found = tree.walk(&path("jobs")).unwrap();
        assert_eq!(
            found.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            files
        );
        let after_walk: Vec<String> = files
            .iter()
            .map(|f| tree.content_id(&path(f)).unwrap())
            .collect();
        assert_eq!(after_walk, looked_up);
        assert_eq!(
            after_walk[0],
            format!(
                "git-blob:{}",
                git2::Oid::hash_object(git2::ObjectType::Blob, b"job_id: a\n").unwrap()
            )
        );
        // The link is its own blob (its target's name), not the file it points to.
        assert_ne!(after_walk[1], after_walk[0]);
        // A folder and a missing path are looked up as before.
        assert!(tree.content_id(&path("jobs/team")).is_ok());
        assert!(tree.content_id(&path("jobs/none.yaml")).is_err());
    }
}
