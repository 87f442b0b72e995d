//! The spec repository: a bare mirror in the state directory, fetched with git2, read without a work tree.

mod https;
mod local;
mod openssl;
mod pack_stream;
mod remote;
mod repack;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use git2::{CertificateCheckStatus, FetchOptions, Oid, RemoteCallbacks, Repository};

pub use pack_stream::{BlobCheckError, BlobReader, BlobStreamError, BlobStreams};
pub use remote::{HostKeyError, KnownHosts, Remote, fingerprint};

use crate::config::RepoConfig;
use crate::limits::Limits;

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
    #[error("fetching {} (branch {branch}): {reason}", crate::util::redact_url(.url))]
    Fetch {
        /// The remote URL.
        url: String,
        /// The branch.
        branch: String,
        /// Why: the agent's own refusal (host key, credentials, deadline) or git's error.
        reason: String,
    },
    /// The branch does not exist on the remote.
    #[error("branch `{branch}` not found in {}", crate::util::redact_url(.url))]
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
    fn fetch(config: &RepoConfig, reason: impl Into<String>) -> GitError {
        GitError::Fetch {
            url: config.url.clone(),
            branch: config.branch.clone(),
            reason: reason.into(),
        }
    }

    /// True when retrying later may succeed (network, remote hiccups).
    pub fn is_transient(&self) -> bool {
        matches!(self, GitError::Fetch { .. })
    }
}

/// Process-wide libgit2 settings the agent depends on.
///
/// - Pack mapping is bounded: with libgit2's defaults, reading a 400 MB JAR from a pack kept the whole
///   compressed object mapped (and resident) next to its inflated copy.
/// - Large trees stay cached: libgit2 caches parsed trees only up to 4 KiB, so every path lookup in a
///   folder of thousands of specs parsed that folder again, and `plan` grew with the square of the
///   specs in one folder (5,000 specs: 10.7 s, now 0.5 s).
/// - OpenSSL, which only ssh remotes use, reads its configuration on the first ssh fetch (see
///   `git::openssl`).
/// - https goes through the agent's own client (see `git::https`): libgit2 built with OpenSSL set up its
///   TLS context in every process at start, https remote or not, about a millisecond of every
///   command and most of OpenSSL's pages in the idle service.
///
/// # Safety
/// libgit2 keeps these settings in globals it reads without synchronization: call this before any
/// other thread exists, as `main` does before it starts the runtime.
pub unsafe fn tune_libgit2() -> Result<(), git2::Error> {
    // SAFETY: the caller guarantees no other thread is running (see above).
    unsafe {
        openssl::start_without_configuration();
        // Reports read a local repository in place (`GitSource::read_local_in_place`): every object
        // read is hashed against its id whatever libgit2's default.
        git2::opts::strict_hash_verification(true);
        https::register()?;
        git2::opts::set_mwindow_size(Limits::DEFAULT.git_pack_window_bytes)?;
        git2::opts::set_mwindow_mapped_limit(Limits::DEFAULT.git_pack_mapped_bytes)?;
        git2::opts::set_cache_object_limit(
            git2::ObjectType::Tree,
            Limits::DEFAULT.git_tree_cache_bytes,
        )?;
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
        format!("+refs/heads/{branch}:{}", tracking_ref_for(branch))
    }

    fn tracking_ref(&self) -> String {
        tracking_ref_for(&self.config.branch)
    }

    /// Fetches the branch and returns its head. Unchanged remotes transfer no objects.
    ///
    /// The fetch runs on a thread of its own so that `repo.fetch_timeout` bounds it whatever the server
    /// does; a fetch still running after its deadline is abandoned. Fetches of one mirror take turns:
    /// a second one waits (up to `repo.fetch_timeout`) for the first to end.
    pub fn fetch(&self) -> Result<Oid, GitError> {
        let mirror = self.repo.path().to_path_buf();
        let waited_until = Instant::now() + self.config.fetch_timeout;
        let in_flight = InFlight::claim(&mirror, waited_until).ok_or_else(|| {
            GitError::fetch(
                &self.config,
                format!(
                    "another fetch of this repository has not ended within repo.fetch_timeout ({})",
                    humantime::format_duration(self.config.fetch_timeout)
                ),
            )
        })?;
        let config = self.config.clone();
        let deadline = Instant::now() + config.fetch_timeout;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("git-fetch".into())
            .spawn(move || {
                // The turn comes back with the answer; after a timeout it ends with this thread.
                let fetched = fetch_into(&mirror, &config, deadline);
                let _ = sender.send((fetched, in_flight));
            })
            .map_err(|e| {
                GitError::fetch(&self.config, format!("cannot start the fetch thread: {e}"))
            })?;
        // A little grace beyond the deadline lets the thread report its own, more precise, error.
        let wait = self.config.fetch_timeout + Duration::from_secs(2);
        match receiver.recv_timeout(wait) {
            Ok((result, _in_flight)) => {
                result?;
                // Still in the fetch's turn, so no fetch of this process adds a pack meanwhile,
                // and before the caller reads; outside the fetch's time, which a large fold
                // would not fit in.
                fold_mirror_packs(&self.repo);
            }
            Err(_) => {
                return Err(GitError::fetch(
                    &self.config,
                    no_answer_in_time(&self.config),
                ));
            }
        }
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

    /// For reports, which change nothing: the branch's head in the repository a local `repo.url`
    /// names, read in place. This handle's object database also looks in that repository's, after
    /// the mirror's own; nothing is written to the mirror, whose tracking branch stays where the
    /// last fetch left it. libgit2 hashes every object it reads (strict hash verification, set in
    /// [`tune_libgit2`]), so an object whose content does not match its id is refused when read, as the
    /// copy of a fetch refuses it. `None` when the remote is not local, or its path is no
    /// repository or has no such branch: a fetch then gives libgit2's own answer.
    pub fn read_local_in_place(&self) -> Result<Option<Oid>, GitError> {
        if self.config.remote != Remote::Local {
            return Ok(None);
        }
        let Some((head, objects)) = local::source_path(&self.config.url)
            .and_then(|source| local::branch_in_place(&source, &self.config.branch))
        else {
            return Ok(None);
        };
        let Some(objects) = objects.to_str() else {
            return Ok(None);
        };
        let odb = self.repo.odb().map_err(|source| GitError::Object {
            operation: "opening the mirror's object database".into(),
            source,
        })?;
        odb.add_disk_alternate(objects)
            .map_err(|source| GitError::Object {
                operation: format!("reading the objects of {} in place", self.config.url),
                source,
            })?;
        Ok(Some(head))
    }

    /// The mirror, for reading trees, commits and signatures.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }
}

/// Mirrors with a fetch thread still running: one fetch per mirror at a time, and an abandoned
/// fetch is never joined by a second one.
static FETCHES_IN_FLIGHT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
static FETCH_ENDED: Condvar = Condvar::new();

struct InFlight(PathBuf);

impl InFlight {
    /// Waits (until `deadline`) for another fetch of the same mirror to end, then claims the mirror.
    fn claim(mirror: &Path, deadline: Instant) -> Option<InFlight> {
        let mut fetches = FETCHES_IN_FLIGHT
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if fetches
                .get_or_insert_with(HashSet::new)
                .insert(mirror.to_path_buf())
            {
                return Some(InFlight(mirror.to_path_buf()));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            fetches = FETCH_ENDED
                .wait_timeout(fetches, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(fetches) = FETCHES_IN_FLIGHT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            fetches.remove(&self.0);
        }
        FETCH_ENDED.notify_all();
    }
}

/// The agent's own reason for refusing a fetch (credentials, host key, https answer), which libgit2
/// would otherwise reduce to a generic message. Shared by the callbacks and the https transport.
#[derive(Clone, Default)]
struct Refusal(Arc<Mutex<Option<String>>>);

impl Refusal {
    /// Keeps `reason` for the fetch's error and hands it back.
    fn record(&self, reason: String) -> String {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
        reason
    }

    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A remote that asked for credentials the config does not give.
const NO_CREDENTIALS: &str = "the remote asks for credentials; set repo.auth.token_file (https) or repo.auth.ssh_key_file (ssh)";

/// A remote that refused the credentials from `source` (`the token in FILE`, `the key in FILE`).
fn credentials_refused(source: &str, user: &str) -> String {
    format!("authentication failed: the remote refused {source} for user `{user}`")
}

fn set_network_timeouts(timeout: Duration) -> Result<(), git2::Error> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: process-wide libgit2 options, read when a connection is made; a stale value only makes
    // one connection's per-read timeout differ, and the fetch deadline still bounds the whole fetch.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(millis)?;
        git2::opts::set_server_timeout_in_milliseconds(millis)?;
    }
    Ok(())
}

fn no_answer_in_time(config: &RepoConfig) -> String {
    format!(
        "no complete answer within repo.fetch_timeout ({})",
        humantime::format_duration(config.fetch_timeout)
    )
}

/// One fetch into the mirror at `mirror`, on the calling thread, giving up at `deadline`.
fn fetch_into(mirror: &Path, config: &RepoConfig, deadline: Instant) -> Result<(), GitError> {
    let fetch_error = |reason: String| GitError::fetch(config, reason);
    let repo = Repository::open_bare(mirror).map_err(|source| GitError::Cache {
        path: mirror.to_path_buf(),
        source,
    })?;
    if config.remote == Remote::Local
        && let Some(source) = local::source_path(&config.url)
    {
        let tracking_ref = tracking_ref_for(&config.branch);
        match local::copy_branch(&repo, &source, &config.branch, &tracking_ref, deadline) {
            Ok(true) => return Ok(()),
            // libgit2 says why the path is not a repository or has no such branch.
            Ok(false) => {}
            Err(error) => return Err(fetch_error(error.to_string())),
        }
    }
    let mut remote = repo
        .find_remote("origin")
        .map_err(|e| fetch_error(e.message().to_string()))?;
    set_network_timeouts(config.fetch_timeout).map_err(|e| fetch_error(e.message().to_string()))?;
    if matches!(config.remote, Remote::Ssh { .. }) {
        openssl::load_configuration().map_err(fetch_error)?;
    }
    let known_hosts = config
        .auth
        .known_hosts_file
        .as_deref()
        .map(KnownHosts::load)
        .transpose()
        .map_err(|e| fetch_error(e.to_string()))?;
    let secrets = Secrets::load(&config.auth)?;
    let refusal = Refusal::default();
    let _https = https::during(https::HttpsFetch {
        user: config
            .auth
            .username
            .clone()
            .or_else(|| {
                url::Url::parse(&config.url)
                    .ok()
                    .map(|url| url.username().to_string())
                    .filter(|user| !user.is_empty())
            })
            .unwrap_or_else(|| "git".into()),
        token: secrets.token.clone().zip(config.auth.token_file.clone()),
        ca_file: config.ca_file.clone(),
        deadline,
        refusal: refusal.clone(),
    });

    let mut callbacks = RemoteCallbacks::new();
    let auth = config.auth.clone();
    let credential_refusal = refusal.clone();
    let mut attempts = 0;
    callbacks.credentials(move |_url, username_from_url, allowed| {
        attempts += 1;
        let user = auth
            .username
            .as_deref()
            .or(username_from_url)
            .unwrap_or("git");
        let refuse =
            |reason: String| Err(git2::Error::from_str(&credential_refusal.record(reason)));
        if attempts > 1 {
            let source = match (&auth.token_file, &auth.ssh_key_file) {
                (Some(file), _) => format!("the token in {}", file.display()),
                (None, Some(file)) => format!("the key in {}", file.display()),
                (None, None) => "no credentials".into(),
            };
            return refuse(credentials_refused(&source, user));
        }
        if let Some(key) = auth
            .ssh_key_file
            .as_ref()
            .filter(|_| allowed.contains(git2::CredentialType::SSH_KEY))
        {
            return git2::Cred::ssh_key(user, None, key, secrets.passphrase.as_deref());
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return git2::Cred::username(user);
        }
        if let Some(token) = secrets
            .token
            .as_ref()
            .filter(|_| allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT))
        {
            return git2::Cred::userpass_plaintext(user, token);
        }
        refuse(NO_CREDENTIALS.into())
    });
    let ssh_endpoint = match &config.remote {
        Remote::Ssh { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    };
    let host_key_refusal = refusal.clone();
    callbacks.certificate_check(move |certificate, _host| {
        let Some(host_key) = certificate.as_hostkey() else {
            // Not an ssh host key: https certificates are checked by the agent's https client.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let refuse = |reason: String| {
            Err(git2::Error::new(
                git2::ErrorCode::Certificate,
                git2::ErrorClass::Ssh,
                host_key_refusal.record(reason),
            ))
        };
        let (Some((host, port)), Some(known_hosts)) = (&ssh_endpoint, &known_hosts) else {
            return refuse(
                "an ssh host key was offered, but no repo.auth.known_hosts_file is set".into(),
            );
        };
        let Some(key) = host_key.hostkey() else {
            return refuse("the ssh server's host key could not be read".into());
        };
        match known_hosts.check(host, *port, key) {
            Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
            Err(e) => refuse(e.to_string()),
        }
    });
    let past_deadline = move || Instant::now() >= deadline;
    callbacks.transfer_progress(move |_| !past_deadline());
    callbacks.sideband_progress(move |_| !past_deadline());
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks);
    options.download_tags(git2::AutotagOption::None);
    // Nothing reads it: the branch's own ref is what the agent follows.
    options.update_fetchhead(false);
    let result = remote.fetch(
        &[GitSource::refspec_for(&config.branch)],
        Some(&mut options),
        None,
    );
    drop(options);
    result.map_err(|e| {
        fetch_error(match refusal.take() {
            Some(reason) => reason,
            None if Instant::now() >= deadline => no_answer_in_time(config),
            None => e.message().to_string(),
        })
    })
}

/// Where the mirror keeps `branch`'s head as last fetched, by libgit2 or by a local copy.
fn tracking_ref_for(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

fn fold_mirror_packs(mirror: &Repository) {
    match repack::fold_packs(mirror, repack::PACKS_BEFORE_REPACK) {
        Ok(0) => {}
        Ok(packs) => {
            tracing::info!(packs, mirror = %mirror.path().display(), "the mirror's packs were folded into one")
        }
        Err(error) => {
            tracing::warn!(%error, mirror = %mirror.path().display(), "cannot fold the mirror's packs; the next fetch tries again")
        }
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
                    crate::util::read_file_limited(p, Limits::DEFAULT.secret_file_bytes)
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

/// Every object `repo` can read: tests compare a mirror with its origin.
#[cfg(test)]
fn all_objects(repo: &Repository) -> std::collections::BTreeSet<Oid> {
    let mut objects = std::collections::BTreeSet::new();
    repo.odb()
        .expect("object database")
        .foreach(|oid| {
            objects.insert(*oid);
            true
        })
        .expect("list the objects");
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin_with_a_commit(dir: &Path) -> Oid {
        let repo = Repository::init(dir).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = repo.treebuilder(None).unwrap().write().unwrap();
        let tree = repo.find_tree(tree).unwrap();
        repo.commit(
            Some("refs/heads/main"),
            &signature,
            &signature,
            "c",
            &tree,
            &[],
        )
        .unwrap()
    }

    fn config(url: &Path) -> RepoConfig {
        RepoConfig {
            url: url.display().to_string(),
            branch: "main".into(),
            jobs_dir: "jobs".into(),
            poll_interval: Duration::from_secs(30),
            auth: crate::config::RepoAuth::default(),
            watch: false,
            remote: Remote::Local,
            fetch_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }

    /// The service may fetch from the poll loop and from a webhook at once: the second waits its turn.
    #[test]
    fn a_fetch_waits_for_another_fetch_of_the_same_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let head = origin_with_a_commit(&dir.path().join("origin"));
        let config = config(&dir.path().join("origin"));
        let mirror = dir.path().join("mirror.git");
        let source = GitSource::open(&mirror, &config).unwrap();
        let held = InFlight::claim(source.repo().path(), Instant::now()).unwrap();
        let waiting = std::thread::spawn(move || source.fetch().map_err(|e| e.to_string()));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "the second fetch waits");
        drop(held);
        assert_eq!(waiting.join().unwrap(), Ok(head));
    }

    #[test]
    fn a_fetch_that_never_gets_its_turn_says_so() {
        let dir = tempfile::tempdir().unwrap();
        origin_with_a_commit(&dir.path().join("origin"));
        let mut config = config(&dir.path().join("origin"));
        config.fetch_timeout = Duration::from_millis(200);
        let source = GitSource::open(&dir.path().join("mirror.git"), &config).unwrap();
        let _held = InFlight::claim(source.repo().path(), Instant::now()).unwrap();
        let error = source.fetch().unwrap_err().to_string();
        assert!(
            error.contains("another fetch of this repository has not ended"),
            "{error}"
        );
    }
}
