//! The spec repository: a bare mirror in the state directory, fetched with git2, read without a work tree.

use std::path::{Path, PathBuf};

use git2::{FetchOptions, Oid, RemoteCallbacks, Repository};

use crate::config::RepoConfig;

/// Why the spec repository could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The local mirror could not be created or opened.
    #[error("repository cache {path}: {source}")]
    Cache {
        /// The mirror's path.
        path: PathBuf,
        /// The git error.
        source: git2::Error,
    },
    /// Fetching from the remote failed.
    #[error("fetching {url} (branch {branch}): {}", source.message())]
    Fetch {
        /// The remote URL.
        url: String,
        /// The branch.
        branch: String,
        /// The git error.
        source: git2::Error,
    },
    /// The branch does not exist on the remote.
    #[error("branch `{branch}` not found in {url}")]
    NoBranch {
        /// The remote URL.
        url: String,
        /// The branch.
        branch: String,
    },
    /// A credential file could not be read.
    #[error("credential file {path}: {source}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Any other object-database failure.
    #[error("{operation}: {source}")]
    Object {
        /// What was being done.
        operation: String,
        /// The git error.
        source: git2::Error,
    },
}

impl GitError {
    /// True when retrying later may succeed (network, remote hiccups).
    pub fn is_transient(&self) -> bool {
        matches!(self, GitError::Fetch { .. })
    }
}

/// The largest piece of a pack file libgit2 maps at once (its default is 1 GiB on 64-bit).
const PACK_WINDOW: usize = 32 * 1024 * 1024;

/// The most of all pack files libgit2 keeps mapped (its default is 8 GiB on 64-bit).
const PACK_MAPPED_LIMIT: usize = 128 * 1024 * 1024;

/// Bounds how much of the pack files libgit2 keeps mapped. With its defaults, reading a 400 MB
/// JAR from a pack kept the whole compressed object mapped (and resident) next to its inflated copy.
///
/// # Safety
/// libgit2 keeps these settings in globals it reads without synchronization: call this before any
/// other thread exists, as `main` does before it starts the runtime.
pub unsafe fn bound_pack_mapping() -> Result<(), git2::Error> {
    // SAFETY: the caller guarantees no other thread is running (see above).
    unsafe {
        git2::opts::set_mwindow_size(PACK_WINDOW)?;
        git2::opts::set_mwindow_mapped_limit(PACK_MAPPED_LIMIT)?;
    }
    Ok(())
}

/// A bare mirror of the configured branch.
pub struct GitSource {
    repo: Repository,
    config: RepoConfig,
}

impl GitSource {
    /// Opens the mirror under `cache_dir`, creating it on first use and pointing `origin` at the configured URL.
    pub fn open(cache_dir: &Path, config: &RepoConfig) -> Result<GitSource, GitError> {
        let cache = |source| GitError::Cache {
            path: cache_dir.to_path_buf(),
            source,
        };
        let repo = match Repository::open_bare(cache_dir) {
            Ok(repo) => repo,
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                Repository::init_bare(cache_dir).map_err(cache)?
            }
            Err(e) => return Err(cache(e)),
        };
        match repo.find_remote("origin") {
            Ok(remote) if remote.url().ok() == Some(config.url.as_str()) => {}
            Ok(_) => repo.remote_set_url("origin", &config.url).map_err(cache)?,
            Err(_) => {
                repo.remote_with_fetch("origin", &config.url, &Self::refspec_for(&config.branch))
                    .map_err(cache)?;
            }
        }
        Ok(GitSource {
            repo,
            config: config.clone(),
        })
    }

    fn refspec_for(branch: &str) -> String {
        format!("+refs/heads/{branch}:refs/remotes/origin/{branch}")
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.config.branch)
    }

    /// Fetches the branch and returns its head. Unchanged remotes transfer no objects.
    pub fn fetch(&self) -> Result<Oid, GitError> {
        let fetch_error = |source| GitError::Fetch {
            url: self.config.url.clone(),
            branch: self.config.branch.clone(),
            source,
        };
        let mut remote = self.repo.find_remote("origin").map_err(fetch_error)?;
        let mut callbacks = RemoteCallbacks::new();
        let auth = self.config.auth.clone();
        let secrets = Secrets::load(&auth)?;
        let mut attempts = 0;
        callbacks.credentials(move |_url, username_from_url, allowed| {
            attempts += 1;
            if attempts > 3 {
                return Err(git2::Error::from_str("authentication failed (credentials refused)"));
            }
            let user = auth.username.as_deref().or(username_from_url).unwrap_or("git");
            if let Some(key) = auth.ssh_key_file.as_ref().filter(|_| allowed.contains(git2::CredentialType::SSH_KEY)) {
                return git2::Cred::ssh_key(user, None, key, secrets.passphrase.as_deref());
            }
            if let Some(token) = secrets
                .token
                .as_ref()
                .filter(|_| allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT))
            {
                return git2::Cred::userpass_plaintext(user, token);
            }
            Err(git2::Error::from_str(
                "the remote asks for credentials; set repo.auth.token_file (https) or repo.auth.ssh_key_file (ssh)",
            ))
        });
        let mut options = FetchOptions::new();
        options.remote_callbacks(callbacks);
        options.download_tags(git2::AutotagOption::None);
        remote
            .fetch(
                &[Self::refspec_for(&self.config.branch)],
                Some(&mut options),
                None,
            )
            .map_err(fetch_error)?;
        self.head()?.ok_or_else(|| GitError::NoBranch {
            url: self.config.url.clone(),
            branch: self.config.branch.clone(),
        })
    }

    /// The branch head as of the last fetch, if any fetch succeeded.
    pub fn head(&self) -> Result<Option<Oid>, GitError> {
        match self.repo.refname_to_id(&self.tracking_ref()) {
            Ok(oid) => Ok(Some(oid)),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(source) => Err(GitError::Object {
                operation: format!("resolving {}", self.tracking_ref()),
                source,
            }),
        }
    }

    /// The mirror, for reading trees, commits and signatures.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }
}

struct Secrets {
    token: Option<String>,
    passphrase: Option<String>,
}

impl Secrets {
    fn load(auth: &crate::config::RepoAuth) -> Result<Secrets, GitError> {
        let read = |path: &Option<PathBuf>| -> Result<Option<String>, GitError> {
            path.as_ref()
                .map(|p| {
                    crate::util::read_file_limited(p, 64 * 1024)
                        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
                        .map_err(|source| GitError::Secret {
                            path: p.clone(),
                            source,
                        })
                })
                .transpose()
        };
        Ok(Secrets {
            token: read(&auth.token_file)?,
            passphrase: read(&auth.ssh_key_passphrase_file)?,
        })
    }
}
