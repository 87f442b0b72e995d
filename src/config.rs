//! The agent's configuration file: raw serde structs at the edge, validated types inside.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::Limits;
use crate::util::{parse_duration, read_file_limited};

/// Where the service looks for its configuration when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/flink-gitops/config.yaml";

/// Upper bound of `server.max_connections`; the service also refuses a value that would take more
/// than half of the process's open-file limit (see `service::check_fd_budget`).
const MAX_CONNECTIONS_LIMIT: usize = 16384;

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the config schema (unknown key, wrong type, syntax).
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line, 0 when unknown.
        line: u64,
        /// 1-based column, 0 when unknown.
        column: u64,
        /// What the parser said.
        message: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("{path}: `{field}`: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted key of the offending field.
        field: String,
        /// Why it was refused.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    repo: RawRepo,
    trust: RawTrust,
    #[serde(default)]
    flink: RawFlink,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    reconcile: RawReconcile,
    #[serde(default)]
    runner: RawRunner,
    #[serde(default)]
    secrets: RawSecrets,
    savepoints: Option<RawConfigRetention>,
    #[serde(default)]
    notify: Vec<RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    name: String,
    /// A generic JSON webhook's URL (not secret: the body is signed).
    webhook: Option<String>,
    /// The HMAC key of a webhook.
    secret_file: Option<String>,
    /// A file holding a Slack incoming-webhook URL (the URL is the secret).
    slack_url_file: Option<String>,
    /// A command (program and arguments, no shell) that gets the event on stdin.
    exec: Option<Vec<String>>,
    events: Option<Vec<String>>,
    /// At most this many deliveries a minute; the rest wait their turn.
    max_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfigRetention {
    keep: Option<u32>,
    max_age: Option<String>,
    keep_final_on_delete: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    jar: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    interval: Option<String>,
    max_concurrency: Option<u32>,
    savepoint_timeout: Option<String>,
    download_timeout: Option<String>,
    poll_interval: Option<String>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    max_failures: Option<u32>,
    rollback: Option<crate::spec::RollbackScope>,
    slot_budget: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    url: String,
    branch: Option<String>,
    jobs_dir: Option<String>,
    poll_interval: Option<String>,
    #[serde(default)]
    auth: RawRepoAuth,
    watch: Option<bool>,
    fetch_timeout: Option<String>,
    tls: Option<RawRepoTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepoTls {
    ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepoAuth {
    username: Option<String>,
    token_file: Option<String>,
    ssh_key_file: Option<String>,
    ssh_key_passphrase_file: Option<String>,
    known_hosts_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    allowed_signers: PathBuf,
    commits: Option<String>,
    artifacts: Option<String>,
    artifact_namespace: Option<String>,
    start_commit: Option<String>,
    clean_merges: Option<bool>,
    #[serde(default)]
    owners: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlink {
    url: Option<String>,
    savepoint_dir: Option<String>,
    request_timeout: Option<String>,
    submit_timeout: Option<String>,
    tls: Option<RawTls>,
    auth: Option<RawFlinkAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlinkAuth {
    bearer_token_file: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    webhook_secret_file: Option<String>,
    ready_window: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    request_timeout: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (relative paths inside it are resolved against its folder).
    pub source: PathBuf,
    /// The spec repository.
    pub repo: RepoConfig,
    /// Signature policy.
    pub trust: TrustConfig,
    /// The Flink cluster.
    pub flink: FlinkConfig,
    /// Where the agent keeps its state.
    pub state: StateConfig,
    /// The HTTP server for health, metrics and webhooks.
    pub server: ServerConfig,
    /// How `apply` acts on the cluster.
    pub reconcile: ReconcileConfig,
    /// The runner JAR of SQL and Python jobs (`runner.jar`), if any.
    pub runner_jar: Option<PathBuf>,
    /// Where `${secret:NAME}` values are read from (`secrets.dir`), if anywhere.
    pub secrets_dir: Option<PathBuf>,
    /// Where alerts go (`notify:`).
    pub notify: Vec<crate::notify::Target>,
    /// The default savepoint retention of stream jobs (`savepoints:`); none keeps everything.
    pub savepoint_retention: Option<crate::spec::Retention>,
    /// A deleted spec's final savepoint is kept (`savepoints.keep_final_on_delete`, default
    /// true); false disposes of it with the rest once the job is gone.
    pub keep_final_on_delete: bool,
    /// Put before NAME to make the file name: `PREFIX_` for `secrets.dir: credential:PREFIX`
    /// (systemd names the files of a folder given to `LoadCredential=PREFIX:…` `PREFIX_FILE`).
    pub secrets_prefix: String,
}

/// How `apply` acts on the cluster.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// How often the service reconciles for drift and health even when the head did not move.
    pub interval: Duration,
    /// Jobs reconciled at the same time.
    pub max_concurrency: usize,
    /// How long a savepoint may take before the step counts as failed (the old job keeps running).
    pub savepoint_timeout: Duration,
    /// The whole time one `artifact_url` download (the JAR, or its `.sig`) may take, from the
    /// request to the last byte: a per-read timeout alone lets a server trickling a byte at a time
    /// hold a pass for hours.
    pub download_timeout: Duration,
    /// How often job state is polled while waiting (health gate, savepoints).
    pub poll_interval: Duration,
    /// The first wait before a job whose step failed is tried again; doubled per failure.
    pub retry_base: Duration,
    /// The longest wait between two tries of a failing job.
    pub retry_max: Duration,
    /// Permanent failures of one operation (a savepoint Flink refuses, a restart that stays unhealthy)
    /// before the job is `blocked` until a new commit or `flink-gitops retry`.
    pub max_failures: u32,
    /// What a failed health gate rolls back when a spec does not say (`rollback:`): the job, or
    /// every job of the revision that takes part.
    pub rollback: crate::spec::RollbackScope,
    /// What a revision whose jobs the cluster's task slots cannot hold gets.
    pub slot_budget: SlotBudgetMode,
}

/// `reconcile.slot_budget`: what happens to a revision that needs more task slots than the
/// cluster can give its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotBudgetMode {
    /// Refused before any action, like an unsigned head: nothing running changes.
    Enforce,
    /// Applied anyway, with a warning (the jobs that find no slots wait in CREATED until their
    /// health gate gives up).
    Warn,
}

/// Where the spec repository lives and how it is read.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// A local path, `file://`, `https://` or `ssh://` URL, as git understands it.
    pub url: String,
    /// The branch whose head is the desired state.
    pub branch: String,
    /// Folder inside the repo that holds the job specs.
    pub jobs_dir: String,
    /// How often the remote is polled.
    pub poll_interval: Duration,
    /// Credentials for remote repositories, all read from files.
    pub auth: RepoAuth,
    /// For a local repository: watch its refs and poll at once when they change.
    pub watch: bool,
    /// What kind of remote `url` is.
    pub remote: crate::git::Remote,
    /// The longest a whole fetch may take, however slowly the server answers.
    pub fetch_timeout: Duration,
    /// A CA certificate (PEM) trusted for an https remote, besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Credentials for a remote spec repository; every secret is a file path.
#[derive(Debug, Clone, Default)]
pub struct RepoAuth {
    /// User name for https (defaults to `git` for tokens).
    pub username: Option<String>,
    /// File holding an https token or password.
    pub token_file: Option<PathBuf>,
    /// File holding an SSH private key.
    pub ssh_key_file: Option<PathBuf>,
    /// File holding the passphrase of that key.
    pub ssh_key_passphrase_file: Option<PathBuf>,
    /// The only host keys an ssh remote may present (OpenSSH `known_hosts` format).
    pub known_hosts_file: Option<PathBuf>,
}

/// Which commits must carry a trusted signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPolicy {
    /// Every commit between the last applied one and the new head.
    Every,
    /// Only the new head.
    Head,
}

/// Whether JARs need a detached signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactPolicy {
    /// Every JAR needs a valid `<artifact>.sig`.
    Required,
    /// Only specs with `security.artifact_verification: true` need one.
    Optional,
}

/// Signature policy.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// The OpenSSH allowed_signers file.
    pub allowed_signers: PathBuf,
    /// Which commits are verified.
    pub commits: CommitPolicy,
    /// Whether JAR signatures are mandatory.
    pub artifacts: ArtifactPolicy,
    /// SSHSIG namespace of artifact signatures.
    pub artifact_namespace: String,
    /// Commit trusted on a fresh install (else the current head, if it verifies).
    pub start_commit: Option<String>,
    /// Accept unsigned merge commits whose tree is the clean merge of verified parents.
    pub clean_merges: bool,
    /// Path globs mapped to the principals allowed to change them.
    pub owners: Vec<(String, Vec<String>)>,
}

/// The Flink cluster the agent manages.
#[derive(Debug, Clone)]
pub struct FlinkConfig {
    /// REST base URL.
    pub url: url::Url,
    /// Default savepoint target directory.
    pub savepoint_dir: String,
    /// Timeout for one REST call.
    pub request_timeout: Duration,
    /// Limit of `POST /jars/:id/run`, which runs the program's `main` (SQL planning, a Python
    /// process) inside the call.
    pub submit_timeout: Duration,
    /// TLS settings for an https URL (CA, client certificate for mutual TLS).
    pub tls: FlinkTls,
    /// Credentials for a cluster behind an authenticating proxy.
    pub auth: FlinkAuth,
}

/// TLS material, all files.
#[derive(Debug, Clone, Default)]
pub struct FlinkTls {
    /// PEM CA bundle to trust (in addition to the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM client key (mutual TLS).
    pub key_file: Option<PathBuf>,
}

/// How the agent authenticates to Flink's REST endpoint.
#[derive(Debug, Clone, Default)]
pub enum FlinkAuth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token from file>`.
    Bearer(PathBuf),
    /// HTTP basic auth with the password read from a file.
    Basic {
        /// User name.
        username: String,
        /// Password file.
        password_file: PathBuf,
    },
}

/// Where state lives.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Directory holding `state.db`, the repo cache and the lock.
    pub dir: PathBuf,
}

/// The agent's HTTP server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// File holding the webhook HMAC secret; without it `POST /webhook` is refused.
    pub webhook_secret_file: Option<PathBuf>,
    /// `/readyz` fails when the last poll or cluster contact is older than this.
    pub ready_window: Duration,
    /// Connections held open at once; each costs a file descriptor that git and SQLite also need.
    pub max_connections: NonZeroUsize,
    /// How long a connection may take to send a request's headers, counted from when it opens or
    /// its previous response was sent (so also the keep-alive idle limit).
    pub header_timeout: Duration,
    /// How long one request may take, body and handler included.
    pub request_timeout: Duration,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes =
            read_file_limited(path, Limits::DEFAULT.config_file_bytes).map_err(|source| {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!(
                "not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        let config = Self::parse(&text, path)?;
        config.check_secret_files()?;
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: config.source.clone(),
            field: field.to_string(),
            reason,
        };
        if let Some(jar) = &config.runner_jar {
            match std::fs::metadata(jar) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    return Err(invalid(
                        "runner.jar",
                        format!("{} is not a file", jar.display()),
                    ));
                }
                Err(e) => {
                    return Err(invalid(
                        "runner.jar",
                        format!(
                            "{}: {e} (build it with scripts/build-runner)",
                            jar.display()
                        ),
                    ));
                }
            }
        }
        if let Some(dir) = &config.secrets_dir {
            if !dir.is_dir() {
                return Err(invalid(
                    "secrets.dir",
                    format!("{} is not a readable folder", dir.display()),
                ));
            }
            // A spec may name any file in the folder: the agent's own credentials must not be one.
            let folder = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            for (field, file) in config.own_secret_files() {
                let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
                let readable_by_name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&config.secrets_prefix));
                if file.parent() == Some(folder.as_path()) && readable_by_name {
                    return Err(invalid(
                        "secrets.dir",
                        format!(
                            "{} holds {} ({field}): a spec could read the agent's own credential; keep job secrets in a folder of their own",
                            dir.display(),
                            file.display()
                        ),
                    ));
                }
            }
        }
        if let Some(file) = &config.repo.auth.known_hosts_file {
            crate::git::KnownHosts::load(file).map_err(|e| ConfigError::Invalid {
                path: config.source.clone(),
                field: "repo.auth.known_hosts_file".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(config)
    }

    /// The agent's own credential files, by field.
    fn own_secret_files(&self) -> Vec<(&'static str, &Path)> {
        let auth = &self.repo.auth;
        let mut files: Vec<(&'static str, &Path)> = [
            ("repo.auth.token_file", &auth.token_file),
            ("repo.auth.ssh_key_file", &auth.ssh_key_file),
            (
                "repo.auth.ssh_key_passphrase_file",
                &auth.ssh_key_passphrase_file,
            ),
            (
                "server.webhook_secret_file",
                &self.server.webhook_secret_file,
            ),
            ("flink.tls.key_file", &self.flink.tls.key_file),
        ]
        .into_iter()
        .filter_map(|(field, file)| file.as_deref().map(|f| (field, f)))
        .collect();
        for target in &self.notify {
            if let crate::notify::TargetKind::Webhook { secret_file } = &target.kind {
                files.push(("notify.secret_file", secret_file));
            }
        }
        match &self.flink.auth {
            FlinkAuth::None => {}
            FlinkAuth::Bearer(file) => files.push(("flink.auth.bearer_token_file", file)),
            FlinkAuth::Basic { password_file, .. } => {
                files.push(("flink.auth.password_file", password_file))
            }
        }
        files
    }

    /// Every secret and TLS file the config names must be readable and hold something: a missing
    /// or empty one is refused now, by field, instead of failing (or, for the webhook secret,
    /// accepting an HMAC with an empty key) later.
    fn check_secret_files(&self) -> Result<(), ConfigError> {
        // Each file is checked under the limit of the code that reads it later, so a file that passes
        // here is never refused later for its size (nor the reverse).
        let limits = Limits::DEFAULT;
        let mut files: Vec<(&str, &Path, bool, u64)> = Vec::new();
        let auth = &self.repo.auth;
        for (field, file, limit) in [
            (
                "repo.auth.token_file",
                &auth.token_file,
                limits.secret_file_bytes,
            ),
            // libgit2 reads the key itself.
            (
                "repo.auth.ssh_key_file",
                &auth.ssh_key_file,
                limits.credential_file_bytes,
            ),
            (
                "repo.auth.ssh_key_passphrase_file",
                &auth.ssh_key_passphrase_file,
                limits.secret_file_bytes,
            ),
            (
                "server.webhook_secret_file",
                &self.server.webhook_secret_file,
                limits.secret_file_bytes,
            ),
        ] {
            if let Some(file) = file {
                files.push((field, file, true, limit));
            }
        }
        for target in &self.notify {
            if let crate::notify::TargetKind::Webhook { secret_file } = &target.kind {
                files.push((
                    "notify.secret_file",
                    secret_file,
                    true,
                    limits.secret_file_bytes,
                ));
            }
        }
        match &self.flink.auth {
            FlinkAuth::None => {}
            FlinkAuth::Bearer(file) => files.push((
                "flink.auth.bearer_token_file",
                file,
                true,
                limits.credential_file_bytes,
            )),
            FlinkAuth::Basic { password_file, .. } => files.push((
                "flink.auth.password_file",
                password_file,
                true,
                limits.credential_file_bytes,
            )),
        }
        for (field, file, limit) in [
            (
                "repo.auth.known_hosts_file",
                &auth.known_hosts_file,
                limits.known_hosts_bytes,
            ),
            (
                "repo.tls.ca_file",
                &self.repo.ca_file,
                limits.credential_file_bytes,
            ),
        ] {
            if let Some(file) = file {
                files.push((field, file, false, limit));
            }
        }
        let tls = &self.flink.tls;
        for (field, file) in [
            ("flink.tls.ca_file", &tls.ca_file),
            ("flink.tls.cert_file", &tls.cert_file),
            ("flink.tls.key_file", &tls.key_file),
        ] {
            if let Some(file) = file {
                files.push((
                    field,
                    file,
                    field == "flink.tls.key_file",
                    limits.credential_file_bytes,
                ));
            }
        }
        for (field, file, secret, limit) in files {
            let invalid = |reason: String| ConfigError::Invalid {
                path: self.source.clone(),
                field: field.to_string(),
                reason,
            };
            let bytes = read_file_limited(file, limit)
                .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
            if String::from_utf8_lossy(&bytes).trim().is_empty() {
                return Err(invalid(format!(
                    "{} is empty; a secret must not be empty",
                    file.display()
                )));
            }
            if secret {
                crate::util::warn_if_exposed(file, field);
            }
        }
        Ok(())
    }

    /// Validates configuration text; `path` names the source in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = crate::spec::yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        // `credential:NAME` is a file systemd placed with LoadCredential= in $CREDENTIALS_DIRECTORY.
        let secret = |field: &str, value: &str| -> Result<PathBuf, ConfigError> {
            match value.strip_prefix("credential:") {
                Some(name) => {
                    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| ConfigError::Invalid {
                        path: path.to_path_buf(),
                        field: field.to_string(),
                        reason: format!("`{value}` needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=)"),
                    })?;
                    Ok(PathBuf::from(dir).join(name))
                }
                None => Ok(resolve(Path::new(value))),
            }
        };

        let repo_url = raw.repo.url.trim().to_string();
        if repo_url.is_empty() {
            return Err(invalid("repo.url", "must not be empty".into()));
        }
        if let Ok(parsed) = url::Url::parse(&repo_url)
            && matches!(parsed.scheme(), "http" | "https")
            && (!parsed.username().is_empty() || parsed.password().is_some())
        {
            return Err(invalid(
                "repo.url",
                "must not carry credentials (they would show in logs and status); use repo.auth.username and repo.auth.token_file".into(),
            ));
        }
        let remote =
            crate::git::Remote::parse(&repo_url).map_err(|reason| invalid("repo.url", reason))?;
        let repo_url = if remote == crate::git::Remote::Local && !repo_url.contains("://") {
            resolve(Path::new(&repo_url)).to_string_lossy().into_owned()
        } else {
            repo_url
        };
        let branch = raw.repo.branch.unwrap_or_else(|| "main".into());
        if branch.is_empty() || git2::Branch::name_is_valid(&branch).ok() != Some(true) {
            return Err(invalid(
                "repo.branch",
                format!("`{branch}` is not a valid branch name"),
            ));
        }
        let jobs_dir = raw.repo.jobs_dir.unwrap_or_else(|| "jobs".into());
        crate::spec::RepoPath::parse(&jobs_dir)
            .map_err(|reason| invalid("repo.jobs_dir", reason))?;
        let poll_interval = duration_field(raw.repo.poll_interval, "30s")
            .map_err(|reason| invalid("repo.poll_interval", reason))?;
        if poll_interval < Duration::from_secs(1) {
            return Err(invalid("repo.poll_interval", "must be at least 1s".into()));
        }
        let optional_secret = |field: &str, value: &Option<String>| {
            value.as_deref().map(|v| secret(field, v)).transpose()
        };
        let auth = RepoAuth {
            username: raw.repo.auth.username,
            token_file: optional_secret("repo.auth.token_file", &raw.repo.auth.token_file)?,
            ssh_key_file: optional_secret("repo.auth.ssh_key_file", &raw.repo.auth.ssh_key_file)?,
            ssh_key_passphrase_file: optional_secret(
                "repo.auth.ssh_key_passphrase_file",
                &raw.repo.auth.ssh_key_passphrase_file,
            )?,
            known_hosts_file: raw
                .repo
                .auth
                .known_hosts_file
                .as_deref()
                .map(|p| resolve(Path::new(p))),
        };
        if auth.token_file.is_some() && auth.ssh_key_file.is_some() {
            return Err(invalid(
                "repo.auth",
                "set either token_file (https) or ssh_key_file (ssh), not both".into(),
            ));
        }
        let ca_file = raw
            .repo
            .tls
            .and_then(|tls| tls.ca_file)
            .map(|p| resolve(Path::new(&p)));
        match &remote {
            crate::git::Remote::Ssh { .. } => {
                if auth.ssh_key_file.is_none() {
                    return Err(invalid(
                        "repo.auth.ssh_key_file",
                        "an ssh remote needs a private key file".into(),
                    ));
                }
                if auth.known_hosts_file.is_none() {
                    return Err(invalid(
                        "repo.auth.known_hosts_file",
                        "an ssh remote needs a known_hosts file with the server's host keys (there is no trust on first use)".into(),
                    ));
                }
            }
            _ if auth.ssh_key_file.is_some() || auth.known_hosts_file.is_some() => {
                return Err(invalid(
                    "repo.auth",
                    "ssh_key_file and known_hosts_file are for ssh remotes only".into(),
                ));
            }
            crate::git::Remote::Http if auth.token_file.is_some() => {
                return Err(invalid(
                    "repo.auth.token_file",
                    "a plain http:// or git:// remote would send the token in clear text; use an https:// remote"
                        .into(),
                ));
            }
            _ => {}
        }
        if ca_file.is_some() && remote != crate::git::Remote::Https {
            return Err(invalid(
                "repo.tls.ca_file",
                "is for https remotes only".into(),
            ));
        }
        let fetch_timeout = bounded_duration(
            raw.repo.fetch_timeout,
            "2m",
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )
        .map_err(|reason| invalid("repo.fetch_timeout", reason))?;

        let commits = match raw.trust.commits.as_deref().unwrap_or("every") {
            "every" => CommitPolicy::Every,
            "head" => CommitPolicy::Head,
            other => {
                return Err(invalid(
                    "trust.commits",
                    format!("`{other}`: expected `every` or `head`"),
                ));
            }
        };
        let artifacts = match raw.trust.artifacts.as_deref().unwrap_or("required") {
            "required" => ArtifactPolicy::Required,
            "optional" => ArtifactPolicy::Optional,
            other => {
                return Err(invalid(
                    "trust.artifacts",
                    format!("`{other}`: expected `required` or `optional`"),
                ));
            }
        };
        let artifact_namespace = raw
            .trust
            .artifact_namespace
            .unwrap_or_else(|| "flink-gitops-artifact".into());
        if artifact_namespace.is_empty() || artifact_namespace == "git" {
            return Err(invalid(
                "trust.artifact_namespace",
                "must be non-empty and differ from `git`, so a commit signature cannot pass as an artifact signature".into(),
            ));
        }
        for (glob, principals) in &raw.trust.owners {
            globset::Glob::new(glob)
                .map_err(|e| invalid(&format!("trust.owners.{glob}"), format!("bad glob: {e}")))?;
            if principals.is_empty() {
                return Err(invalid(
                    &format!("trust.owners.{glob}"),
                    "needs at least one principal".into(),
                ));
            }
        }
        let trust = TrustConfig {
            allowed_signers: resolve(&raw.trust.allowed_signers),
            commits,
            artifacts,
            artifact_namespace,
            start_commit: raw.trust.start_commit,
            clean_merges: raw.trust.clean_merges.unwrap_or(false),
            owners: raw.trust.owners.into_iter().collect(),
        };

        let flink_url_text = raw
            .flink
            .url
            .unwrap_or_else(|| "http://127.0.0.1:8081".into());
        let flink_url = url::Url::parse(&flink_url_text)
            .map_err(|e| invalid("flink.url", format!("`{flink_url_text}`: {e}")))?;
        if !matches!(flink_url.scheme(), "http" | "https") {
            return Err(invalid(
                "flink.url",
                "must be an http:// or https:// URL".into(),
            ));
        }
        if !flink_url.username().is_empty() || flink_url.password().is_some() {
            return Err(invalid(
                "flink.url",
                "must not carry credentials (they would show in logs and status); use flink.auth with a file".into(),
            ));
        }
        let savepoint_dir = raw
            .flink
            .savepoint_dir
            .unwrap_or_else(|| "file:///var/lib/flink/savepoints".into());
        if !savepoint_dir.contains("://") {
            return Err(invalid(
                "flink.savepoint_dir",
                format!(
                    "`{savepoint_dir}` needs a scheme Flink understands, e.g. file:///var/lib/flink/savepoints or s3://bucket/path"
                ),
            ));
        }
        let request_timeout = bounded_duration(
            raw.flink.request_timeout,
            "30s",
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )
        .map_err(|reason| invalid("flink.request_timeout", reason))?;
        let submit_timeout = bounded_duration(
            raw.flink.submit_timeout,
            "2m",
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )
        .map_err(|reason| invalid("flink.submit_timeout", reason))?;
        let raw_tls = raw.flink.tls.unwrap_or_default();
        let tls = FlinkTls {
            ca_file: optional_secret("flink.tls.ca_file", &raw_tls.ca_file)?,
            cert_file: optional_secret("flink.tls.cert_file", &raw_tls.cert_file)?,
            key_file: optional_secret("flink.tls.key_file", &raw_tls.key_file)?,
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(invalid(
                "flink.tls",
                "cert_file and key_file go together (mutual TLS)".into(),
            ));
        }
        let flink_auth = match raw.flink.auth {
            None => FlinkAuth::None,
            Some(RawFlinkAuth {
                bearer_token_file: Some(token),
                username: None,
                password_file: None,
            }) => FlinkAuth::Bearer(secret("flink.auth.bearer_token_file", &token)?),
            Some(RawFlinkAuth {
                bearer_token_file: None,
                username: Some(username),
                password_file: Some(password),
            }) => FlinkAuth::Basic {
                username,
                password_file: secret("flink.auth.password_file", &password)?,
            },
            Some(_) => {
                return Err(invalid(
                    "flink.auth",
                    "set either bearer_token_file, or username with password_file".into(),
                ));
            }
        };

        let state_dir = resolve(
            &raw.state
                .dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/flink-gitops")),
        );
        let listen_text = raw.server.listen.unwrap_or_else(|| "127.0.0.1:9464".into());
        let listen = listen_text
            .parse()
            .map_err(|e| invalid("server.listen", format!("`{listen_text}`: {e}")))?;
        let webhook_secret_file = optional_secret(
            "server.webhook_secret_file",
            &raw.server.webhook_secret_file,
        )?;
        let ready_window = duration_field(raw.server.ready_window, "5m")
            .map_err(|reason| invalid("server.ready_window", reason))?;
        let Some(max_connections) = NonZeroUsize::new(raw.server.max_connections.unwrap_or(256))
            .filter(|n| n.get() <= MAX_CONNECTIONS_LIMIT)
        else {
            return Err(invalid(
                "server.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
            ));
        };
        let header_timeout = bounded_duration(
            raw.server.header_timeout,
            "5s",
            Duration::from_millis(100),
            Duration::from_secs(300),
        )
        .map_err(|reason| invalid("server.header_timeout", reason))?;
        let server_request_timeout = bounded_duration(
            raw.server.request_timeout,
            "30s",
            Duration::from_millis(100),
            Duration::from_secs(600),
        )
        .map_err(|reason| invalid("server.request_timeout", reason))?;
        let reconcile_interval = duration_field(raw.reconcile.interval, "1m")
            .map_err(|reason| invalid("reconcile.interval", reason))?;
        if reconcile_interval < Duration::from_secs(1) {
            return Err(invalid("reconcile.interval", "must be at least 1s".into()));
        }

        let max_concurrency = raw.reconcile.max_concurrency.unwrap_or(4);
        if max_concurrency == 0 || max_concurrency > 64 {
            return Err(invalid(
                "reconcile.max_concurrency",
                "must be between 1 and 64".into(),
            ));
        }
        let savepoint_timeout = duration_field(raw.reconcile.savepoint_timeout, "10m")
            .map_err(|reason| invalid("reconcile.savepoint_timeout", reason))?;
        let download_timeout = bounded_duration(
            raw.reconcile.download_timeout,
            "10m",
            Duration::from_secs(1),
            Duration::from_secs(6 * 3600),
        )
        .map_err(|reason| invalid("reconcile.download_timeout", reason))?;
        let reconcile_poll = duration_field(raw.reconcile.poll_interval, "1s")
            .map_err(|reason| invalid("reconcile.poll_interval", reason))?;
        if reconcile_poll < Duration::from_millis(100) {
            return Err(invalid(
                "reconcile.poll_interval",
                "must be at least 100ms".into(),
            ));
        }

        let retry_base = duration_field(raw.reconcile.retry_base, "5s")
            .map_err(|reason| invalid("reconcile.retry_base", reason))?;
        let retry_max = duration_field(raw.reconcile.retry_max, "5m")
            .map_err(|reason| invalid("reconcile.retry_max", reason))?;
        if retry_max < retry_base || retry_max > Duration::from_secs(24 * 3600) {
            return Err(invalid(
                "reconcile.retry_max",
                "must be at least reconcile.retry_base and at most 24h".into(),
            ));
        }
        let max_failures = raw.reconcile.max_failures.unwrap_or(3);
        if !(1..=100).contains(&max_failures) {
            return Err(invalid(
                "reconcile.max_failures",
                "must be between 1 and 100".into(),
            ));
        }

        let slot_budget = match raw.reconcile.slot_budget.as_deref().unwrap_or("enforce") {
            "enforce" => SlotBudgetMode::Enforce,
            "warn" => SlotBudgetMode::Warn,
            other => {
                return Err(invalid(
                    "reconcile.slot_budget",
                    format!("`{other}`: expected `enforce` or `warn`"),
                ));
            }
        };

        let runner_jar = raw.runner.jar.as_deref().map(|p| resolve(Path::new(p)));
        if let Some(jar) = &runner_jar
            && !jar.to_string_lossy().ends_with(".jar")
        {
            return Err(invalid(
                "runner.jar",
                format!(
                    "{} must be a .jar file (build it with scripts/build-runner)",
                    jar.display()
                ),
            ));
        }
        let mut notify: Vec<crate::notify::Target> = Vec::new();
        for (index, target) in raw.notify.iter().enumerate() {
            let field = format!("notify[{index}]");
            let bad = |reason: String| invalid(&field, reason);
            if target.name.trim().is_empty() || notify.iter().any(|t| t.name == target.name) {
                return Err(bad(format!(
                    "`name` must be set and unique (`{}`)",
                    target.name
                )));
            }
            let events = match &target.events {
                None => crate::notify::EVENTS
                    .iter()
                    .map(|e| e.to_string())
                    .collect(),
                Some(events) => {
                    if let Some(unknown) = events
                        .iter()
                        .find(|e| !crate::notify::EVENTS.contains(&e.as_str()))
                    {
                        return Err(bad(format!(
                            "unknown event `{unknown}`; events are {}",
                            crate::notify::EVENTS.join(", ")
                        )));
                    }
                    events.clone()
                }
            };
            let max_per_minute = target.max_per_minute.unwrap_or(20);
            if max_per_minute == 0 {
                return Err(bad("`max_per_minute` must be at least 1".into()));
            }
            let loopback_or_https = |url: &url::Url| {
                url.scheme() == "https"
                    || (url.scheme() == "http"
                        && matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")))
            };
            if let Some(command) = &target.exec {
                if target.webhook.is_some()
                    || target.secret_file.is_some()
                    || target.slack_url_file.is_some()
                    || command.is_empty()
                {
                    return Err(bad("`exec` names a program (and its arguments), and nothing else is set with it".into()));
                }
                notify.push(crate::notify::Target {
                    name: target.name.clone(),
                    url: url::Url::parse("exec:command").map_err(|e| bad(e.to_string()))?,
                    kind: crate::notify::TargetKind::Exec {
                        command: command.clone(),
                    },
                    events,
                    max_per_minute,
                });
                continue;
            }
            let (url, kind) = match (&target.webhook, &target.secret_file, &target.slack_url_file) {
                (Some(url), Some(secret_file), None) => {
                    let url = url::Url::parse(url).map_err(|e| bad(format!("`webhook`: {e}")))?;
                    if !loopback_or_https(&url) {
                        return Err(bad(
                            "`webhook` must be https:// (http only on loopback)".into()
                        ));
                    }
                    let secret_file = secret(&format!("{field}.secret_file"), secret_file)?;
                    (url, crate::notify::TargetKind::Webhook { secret_file })
                }
                (Some(_), None, None) => {
                    return Err(bad(
                        "a `webhook` needs `secret_file`: its bodies are signed with HMAC-SHA256"
                            .into(),
                    ));
                }
                (None, None, Some(file)) => {
                    let file = secret(&format!("{field}.slack_url_file"), file)?;
                    let text = read_file_limited(&file, Limits::DEFAULT.slack_url_file_bytes)
                        .map_err(|e| bad(format!("{}: {e}", file.display())))?;
                    let url = url::Url::parse(String::from_utf8_lossy(&text).trim())
                        .map_err(|_| bad(format!("{} does not hold a URL", file.display())))?;
                    if !loopback_or_https(&url) {
                        return Err(bad("the Slack URL must be https://".into()));
                    }
                    (url, crate::notify::TargetKind::Slack)
                }
                _ => {
                    return Err(bad(
                        "set either `webhook` with `secret_file`, `slack_url_file`, or `exec`"
                            .into(),
                    ));
                }
            };
            notify.push(crate::notify::Target {
                name: target.name.clone(),
                url,
                kind,
                events,
                max_per_minute,
            });
        }
        let savepoint_retention = raw
            .savepoints
            .as_ref()
            .filter(|p| p.keep.is_some() || p.max_age.is_some())
            .map(|p| crate::spec::Retention::parse(p.keep, p.max_age.as_deref()))
            .transpose()
            .map_err(|reason| invalid("savepoints", reason))?;
        let keep_final_on_delete = raw
            .savepoints
            .as_ref()
            .and_then(|p| p.keep_final_on_delete)
            .unwrap_or(true);
        let (secrets_dir, secrets_prefix) = match raw.secrets.dir.as_deref() {
            None => (None, String::new()),
            Some(dir) => match dir.strip_prefix("credential:") {
                Some(prefix) => {
                    if prefix.is_empty() || prefix.contains('/') {
                        return Err(invalid(
                            "secrets.dir",
                            format!(
                                "`{dir}` must name the ID of a folder given to LoadCredential=, e.g. credential:job-secrets"
                            ),
                        ));
                    }
                    let file = secret("secrets.dir", dir)?;
                    (file.parent().map(Path::to_path_buf), format!("{prefix}_"))
                }
                None => (Some(resolve(Path::new(dir))), String::new()),
            },
        };
        Ok(Config {
            source: path.to_path_buf(),
            repo: RepoConfig {
                url: repo_url,
                branch,
                jobs_dir,
                poll_interval,
                auth,
                watch: raw.repo.watch.unwrap_or(true),
                remote,
                fetch_timeout,
                ca_file,
            },
            trust,
            flink: FlinkConfig {
                url: flink_url,
                savepoint_dir,
                request_timeout,
                submit_timeout,
                tls,
                auth: flink_auth,
            },
            state: StateConfig { dir: state_dir },
            runner_jar,
            secrets_dir,
            secrets_prefix,
            savepoint_retention,
            keep_final_on_delete,
            notify,
            server: ServerConfig {
                listen,
                webhook_secret_file,
                ready_window,
                max_connections,
                header_timeout,
                request_timeout: server_request_timeout,
            },
            reconcile: ReconcileConfig {
                interval: reconcile_interval,
                max_concurrency: max_concurrency as usize,
                savepoint_timeout,
                download_timeout,
                poll_interval: reconcile_poll,
                retry_base,
                retry_max,
                max_failures,
                rollback: raw
                    .reconcile
                    .rollback
                    .unwrap_or(crate::spec::RollbackScope::Job),
                slot_budget,
            },
        })
    }
}

fn duration_field(value: Option<String>, default: &str) -> Result<Duration, String> {
    parse_duration(value.as_deref().unwrap_or(default))
}

/// A duration field that only works between `min` and `max`; the error names both.
fn bounded_duration(
    value: Option<String>,
    default: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let duration = duration_field(value, default)?;
    if duration < min || duration > max {
        return Err(format!(
            "must be between {} and {}",
            crate::util::format_duration(min),
            crate::util::format_duration(max)
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "repo: { url: /srv/specs }\ntrust: { allowed_signers: signers }\n";

    #[test]
    fn defaults_fill_the_gaps() {
        let config = Config::parse(MINIMAL, Path::new("/etc/fg/config.yaml")).unwrap();
        assert_eq!(config.repo.branch, "main");
        assert_eq!(config.repo.jobs_dir, "jobs");
        assert_eq!(config.repo.poll_interval, Duration::from_secs(30));
        assert_eq!(
            config.trust.allowed_signers,
            PathBuf::from("/etc/fg/signers")
        );
        assert_eq!(config.trust.commits, CommitPolicy::Every);
        assert_eq!(config.trust.artifacts, ArtifactPolicy::Required);
        assert_eq!(config.flink.url.as_str(), "http://127.0.0.1:8081/");
        assert_eq!(config.flink.request_timeout, Duration::from_secs(30));
        assert_eq!(config.reconcile.download_timeout, Duration::from_secs(600));
        assert_eq!(config.server.listen.port(), 9464);
        assert_eq!(config.server.max_connections.get(), 256);
        assert_eq!(config.server.header_timeout, Duration::from_secs(5));
        assert_eq!(config.server.request_timeout, Duration::from_secs(30));
        assert_eq!(config.reconcile.rollback, crate::spec::RollbackScope::Job);
    }

    #[test]
    fn the_rollback_scope_is_job_or_revision() {
        let with = |scope: &str| {
            Config::parse(
                &format!("{MINIMAL}reconcile: {{ rollback: {scope} }}\n"),
                Path::new("c.yaml"),
            )
        };
        assert_eq!(
            with("revision").unwrap().reconcile.rollback,
            crate::spec::RollbackScope::Revision
        );
        let text = with("pipeline").unwrap_err().to_string();
        assert!(text.contains("unknown variant `pipeline`"), "{text}");
    }

    #[test]
    fn relative_repo_path_is_anchored_at_the_config_folder() {
        let config = Config::parse(
            "repo: { url: ../specs }\ntrust: { allowed_signers: /k }\n",
            Path::new("/etc/fg/config.yaml"),
        )
        .unwrap();
        assert_eq!(config.repo.url, "/etc/fg/../specs");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let err = Config::parse(
            "repo: { url: /x, brnch: main }\ntrust: { allowed_signers: k }\n",
            Path::new("c.yaml"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("brnch"), "{text}");
        assert!(text.starts_with("c.yaml:1:"), "{text}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                "repo: { url: /x, poll_interval: 30 }\ntrust: { allowed_signers: k }\n",
                "repo.poll_interval",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k, commits: some }\n",
                "trust.commits",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nflink: { url: 'ftp://x' }\n",
                "flink.url",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nflink: { savepoint_dir: /tmp/sp }\n",
                "flink.savepoint_dir",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nserver: { listen: 'nowhere' }\n",
                "server.listen",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nserver: { max_connections: 0 }\n",
                "server.max_connections",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nserver: { max_connections: 100000 }\n",
                "server.max_connections",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nserver: { header_timeout: 10ms }\n",
                "server.header_timeout",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nserver: { request_timeout: 1h }\n",
                "server.request_timeout",
            ),
            (
                "repo: { url: /x, jobs_dir: ../up }\ntrust: { allowed_signers: k }\n",
                "repo.jobs_dir",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k, artifact_namespace: git }\n",
                "trust.artifact_namespace",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nreconcile: { download_timeout: 500ms }\n",
                "reconcile.download_timeout",
            ),
            (
                "repo: { url: /x }\ntrust: { allowed_signers: k }\nreconcile: { download_timeout: 7h }\n",
                "reconcile.download_timeout",
            ),
        ];
        for (text, field) in cases {
            let err = Config::parse(text, Path::new("c.yaml")).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }
}
