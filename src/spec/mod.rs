//! Job specs: the v1 YAML contract parsed into typed, validated desired state.

pub mod program;
pub mod source;
pub mod sql;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub use source::{DirTree, EntryKind, GitTree, SpecTree, TreeError};

/// Spec files larger than this are refused: a job spec is a page of YAML, not a data file.
pub const SPEC_SIZE_LIMIT: u64 = 256 * 1024;

/// A normalized path inside the repository: relative, `/`-separated, no `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RepoPath(String);

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
        RepoPath::parse(&source::normalize_link(dir, target)?)
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

/// One problem with one spec file, located as precisely as the YAML allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecError {
    /// Repo-relative file.
    pub file: String,
    /// 1-based line (0 when the whole file is meant).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Dotted name of the field, when one field is at fault.
    pub field: Option<String>,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SpecError {}

/// Stream or batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// An unbounded streaming job kept running.
    Stream,
    /// A bounded job run on a schedule or once per revision.
    Batch,
}

/// Whether the job should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredRunState {
    /// Running (the default).
    Running,
    /// Stopped with a savepoint that is kept for resuming.
    Suspended,
}

/// How state moves from the old job to the new one on upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Stop with a savepoint, start the new version from it.
    Savepoint,
    /// Start from the latest completed retained checkpoint.
    LastState,
    /// Cancel and start fresh.
    Stateless,
}

/// Flink restart strategies the spec may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartStrategy {
    /// `fixed-delay`.
    FixedDelay,
    /// `exponential-delay`.
    ExponentialDelay,
    /// `failure-rate`.
    FailureRate,
    /// `none`: never restart.
    None,
}

/// What to do when a batch run is due while the previous one still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Skip the new run (the default).
    Forbid,
    /// Cancel the running one and start the new one.
    Replace,
    /// Run both.
    Allow,
}

/// What runs: a JAR, or a SQL or Python program run by the runner JAR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Artifact {
    /// A JAR file in the spec repository.
    Path(RepoPath),
    /// A JAR at an https or file URL; its digest must be pinned.
    Url(String),
    /// SQL files in the repository, executed in order.
    Sql {
        /// The files.
        files: Vec<RepoPath>,
    },
    /// A PyFlink program in the repository.
    Python {
        /// The main file.
        entry: RepoPath,
        /// More files or folders shipped with it.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        files: Vec<RepoPath>,
    },
}

/// The three kinds of job, for `status`, `history` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// A JAR with its own `main`.
    Jar,
    /// A Flink SQL pipeline.
    Sql,
    /// A PyFlink program.
    Python,
}

impl JobKind {
    /// `jar`, `sql` or `python`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Jar => "jar",
            JobKind::Sql => "sql",
            JobKind::Python => "python",
        }
    }
}

impl Artifact {
    /// Which kind of job this artifact makes.
    pub fn kind(&self) -> JobKind {
        match self {
            Artifact::Path(_) | Artifact::Url(_) => JobKind::Jar,
            Artifact::Sql { .. } => JobKind::Sql,
            Artifact::Python { .. } => JobKind::Python,
        }
    }
}

/// When a new deployment counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthPolicy {
    /// How long it must stay RUNNING.
    #[serde(with = "duration_text")]
    pub stable_for: Duration,
    /// Restarts tolerated while stabilising.
    pub max_restarts: u32,
    /// Whether one completed checkpoint is required (only meaningful with checkpointing on).
    pub require_checkpoint: bool,
    /// Completed checkpoints of the new instance required (`health.min_checkpoints`), when more
    /// than one: the new version must show it keeps making progress, not just start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_checkpoints: Option<u32>,
    /// The newest completed checkpoint must be younger than this when the gate passes
    /// (`health.max_checkpoint_age`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "optional_duration_text"
    )]
    pub max_checkpoint_age: Option<Duration>,
    /// Backpressure at or above this ratio restarts the `stable_for` window
    /// (`health.max_backpressure`): a version that cannot keep up is not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backpressure: Option<Ratio>,
    /// How long to wait for all of the above before declaring the deployment failed.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

/// The batch part of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchSpec {
    /// Cron expression as written (5 or 6 fields); `None` means once per revision.
    pub cron: Option<String>,
    /// IANA time zone of the schedule.
    pub timezone: String,
    /// Runs allowed per spec revision.
    pub max_runs: Option<u32>,
    /// A run still going after this long is cancelled.
    pub ttl_seconds: Option<u64>,
    /// Delete the uploaded JAR after a run when nothing else needs it.
    pub cleanup_on_completion: bool,
    /// Overlap policy.
    pub concurrency: Concurrency,
}

/// A validated job spec. Serialized, it is the canonical form that is hashed and diffed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSpec {
    /// The job's identity forever.
    pub job_id: String,
    /// Stream or batch.
    pub job_type: JobType,
    /// The JAR, or the SQL or Python program.
    pub artifact: Artifact,
    /// The spec's own runner JAR in the repository (SQL and Python jobs that bring connectors);
    /// `None` runs them on the agent's configured runner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<RepoPath>,
    /// Pinned `sha256:` digest of the JAR, lower-case hex.
    pub artifact_sha256: Option<String>,
    /// Main class when the manifest has none.
    pub entry_class: Option<String>,
    /// Run parallelism; `None` means the cluster default.
    pub parallelism: Option<NonZeroU32>,
    /// Program arguments.
    pub args: Vec<String>,
    /// Savepoint directory for this job (else the agent's default).
    pub savepoint_dir: Option<String>,
    /// Per-job Flink options, from the structured fields and `flink_config`.
    pub flink_configuration: BTreeMap<String, String>,
    /// This job needs a detached artifact signature whatever the policy.
    pub artifact_verification: bool,
    /// Report failures of this job.
    pub alert_on_failure: bool,
    /// Report backpressure of this job.
    pub alert_on_backpressure: bool,
    /// What "backpressured" and "checkpoints too old" mean for this job's alerts.
    #[serde(rename = "monitoring", skip_serializing_if = "Watch::is_default")]
    pub watch: Watch,
    /// Periodic savepoints, in milliseconds.
    pub savepoint_trigger_interval_ms: Option<u64>,
    /// Batch scheduling, for batch jobs.
    pub batch: Option<BatchSpec>,
    /// Running or suspended.
    pub state: DesiredRunState,
    /// Upgrade mode.
    pub upgrade_mode: UpgradeMode,
    /// Allow savepoint state that no operator claims.
    pub allow_non_restored_state: bool,
    /// A savepoint or retained checkpoint a new job starts from (one-shot: only at creation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
    /// This job's savepoint retention (else the agent's `savepoints:` policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub savepoint_retention: Option<Retention>,
    /// Health gate.
    pub health: HealthPolicy,
}

impl JobSpec {
    /// Whether checkpointing is configured for this job.
    pub fn checkpointing_enabled(&self) -> bool {
        self.flink_configuration
            .get("execution.checkpointing.interval")
            .is_some_and(|v| v != "0" && v != "0 ms")
    }
}

mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::util::format_duration(*value))
    }
}

/// A job the repository asks for, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredJob {
    /// The validated spec.
    pub spec: JobSpec,
    /// Repo-relative spec file.
    pub file: RepoPath,
    /// Identity of what runs in this revision: the JAR's (`git-blob:<oid>`, `sha256:<hex>` or the
    /// pinned digest), or the SQL/Python sources' (`sources-sha256:<hex>`, with the spec's runner).
    pub artifact_content: String,
    /// The SQL or Python sources, for those jobs.
    #[serde(skip)]
    pub program: Option<program::Program>,
    /// Keyed fingerprints of the `${secret:NAME}` values the job uses (never the values), so a
    /// changed secret redeploys the job; empty until the agent resolves them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl DesiredJob {
    /// The canonical JSON of everything that, when changed, needs a redeploy.
    pub fn canonical_json(&self) -> String {
        let mut value =
            serde_json::json!({ "spec": self.spec, "artifact_content": self.artifact_content });
        // Only present when used, so the hashes of jobs without secrets stay what they were.
        if !self.secrets.is_empty() {
            value["secrets"] = serde_json::json!(self.secrets);
        }
        value.to_string()
    }

    /// SHA-256 of [`Self::canonical_json`].
    pub fn spec_hash(&self) -> String {
        crate::util::sha256_hex(self.canonical_json().as_bytes())
    }
}

/// All jobs a revision asks for, keyed by `job_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    /// The jobs.
    pub jobs: BTreeMap<String, DesiredJob>,
}

// ---------------------------------------------------------------------------------------------
// Raw serde layer: every field of the contract, including the ones we refuse (to explain why).

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    job_id: Option<S<String>>,
    job_type: Option<S<JobType>>,
    artifact_path: Option<S<String>>,
    artifact_url: Option<S<String>>,
    artifact_signature: Option<S<String>>,
    sql: Option<S<SqlFiles>>,
    python: Option<S<RawPython>>,
    runner: Option<S<String>>,
    entry_class: Option<S<String>>,
    deployment: Option<S<RawDeployment>>,
    resources: Option<S<IgnoredAny>>,
    security: Option<RawSecurity>,
    monitoring: Option<RawMonitoring>,
    args: Option<Vec<S<String>>>,
    env_vars: Option<S<IgnoredAny>>,
    batch_config: Option<S<RawBatch>>,
    stream_config: Option<S<RawStream>>,
    advanced: Option<RawAdvanced>,
    state: Option<DesiredRunState>,
    upgrade_mode: Option<UpgradeMode>,
    allow_non_restored_state: Option<bool>,
    restore_from: Option<S<String>>,
    savepoints: Option<S<RawRetention>>,
    flink_config: Option<std::collections::HashMap<S<String>, FlinkValue>>,
    health: Option<RawHealth>,
}

/// `savepoints: { keep: 5, max_age: 14d }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    keep: Option<u32>,
    max_age: Option<String>,
}

/// A ratio between 0 and 1, kept in thousandths so specs compare and hash exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ratio(u16);

impl Ratio {
    /// From a number written in a spec; `None` outside 0..=1.
    pub fn parse(value: f64) -> Option<Ratio> {
        (0.0..=1.0)
            .contains(&value)
            .then(|| Ratio((value * 1000.0).round() as u16))
    }

    /// As a fraction.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Serialize for Ratio {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// What the agent watches on a running stream job (`monitoring:`), beyond the alert switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Watch {
    /// A job whose most backpressured subtask is at or above this ratio is backpressured.
    pub backpressure_ratio: Ratio,
    /// How long it must stay backpressured before the alert.
    #[serde(with = "duration_text")]
    pub backpressure_for: Duration,
    /// A newest completed checkpoint older than this raises the `checkpoints` alert.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "optional_duration_text"
    )]
    pub max_checkpoint_age: Option<Duration>,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch {
            backpressure_ratio: Ratio(500),
            backpressure_for: Duration::from_secs(60),
            max_checkpoint_age: None,
        }
    }
}

impl Watch {
    fn is_default(&self) -> bool {
        *self == Watch::default()
    }
}

/// Which savepoints retention disposes of (see the README, "Savepoint retention").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// The newest this many are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Older than this, a savepoint goes (unless protected).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "optional_duration_text"
    )]
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Validates the raw policy; `why` names the field in errors.
    pub(crate) fn parse(keep: Option<u32>, max_age: Option<&str>) -> Result<Retention, String> {
        if keep == Some(0) {
            return Err(
                "`keep` must be at least 1: the newest savepoint is never disposed of".into(),
            );
        }
        let max_age = max_age.map(crate::util::parse_duration).transpose()?;
        if keep.is_none() && max_age.is_none() {
            return Err("set `keep`, `max_age` or both".into());
        }
        Ok(Retention { keep, max_age })
    }
}

mod optional_duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&crate::util::format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }
}

/// `sql: file.sql` or `sql: [a.sql, b.sql]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SqlFiles {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPython {
    entry: Option<String>,
    files: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    parallelism: Option<S<u32>>,
    checkpoint_interval: Option<S<u64>>,
    savepoint_path: Option<S<String>>,
    restart_strategy: Option<S<RestartStrategy>>,
    max_restart_attempts: Option<S<u32>>,
    restart_delay: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    kerberos_principal: Option<S<IgnoredAny>>,
    ssl_enabled: Option<S<IgnoredAny>>,
    artifact_verification: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitoring {
    metrics_port: Option<S<IgnoredAny>>,
    log_level: Option<S<IgnoredAny>>,
    alert_on_failure: Option<bool>,
    alert_on_backpressure: Option<bool>,
    backpressure_ratio: Option<S<f64>>,
    backpressure_for: Option<S<String>>,
    max_checkpoint_age: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    cron: Option<S<String>>,
    timezone: Option<S<String>>,
    max_runs: Option<S<u32>>,
    ttl_seconds: Option<S<u64>>,
    cleanup_on_completion: Option<bool>,
    concurrency: Option<Concurrency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    savepoint_trigger_interval: Option<S<u64>>,
    checkpoint_timeout: Option<S<u64>>,
    min_pause_between_checkpoints: Option<u64>,
    max_concurrent_checkpoints: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdvanced {
    classloader_resolve_order: Option<S<IgnoredAny>>,
    classloader_cache_mode: Option<S<IgnoredAny>>,
    network_buffer_timeout: Option<u64>,
    taskmanager_heap_size: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    stable_for: Option<S<String>>,
    max_restarts: Option<u32>,
    require_checkpoint: Option<bool>,
    min_checkpoints: Option<S<u32>>,
    max_checkpoint_age: Option<S<String>>,
    max_backpressure: Option<S<f64>>,
    timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FlinkValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl FlinkValue {
    fn into_text(self) -> String {
        match self {
            FlinkValue::Bool(b) => b.to_string(),
            FlinkValue::Int(i) => i.to_string(),
            FlinkValue::Float(f) => f.to_string(),
            FlinkValue::Text(t) => t,
        }
    }
}

/// Options the agent sets itself; a spec may not override them through `flink_config`.
pub(crate) const AGENT_OWNED_OPTIONS: &[(&str, &str)] = &[
    (
        "execution.state-recovery.path",
        "the agent chooses the savepoint or checkpoint to restore from",
    ),
    (
        "execution.savepoint.path",
        "the agent chooses the savepoint or checkpoint to restore from",
    ),
    (
        "$internal.pipeline.job-id",
        "the agent assigns job ids to recognise its jobs",
    ),
    ("parallelism.default", "use `deployment.parallelism`"),
    (
        "pipeline.global-job-parameters",
        "the agent tags its jobs there to recognise them",
    ),
    (
        "execution.checkpointing.externalized-checkpoint-retention",
        "the agent keeps cancelled jobs' checkpoints for last-state upgrades and drift repair",
    ),
];

// ---------------------------------------------------------------------------------------------
// Validation.

struct Checker<'a> {
    file: &'a str,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    fn at<T>(&mut self, spanned: &S<T>, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
            field: Some(field.to_string()),
            message: message.into(),
        });
    }

    fn whole_file(&mut self, field: Option<&str>, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: 0,
            column: 0,
            field: field.map(str::to_string),
            message: message.into(),
        });
    }

    fn refuse<T>(&mut self, spanned: &Option<S<T>>, field: &str, why: &str) {
        if let Some(s) = spanned {
            self.at(
                s,
                field,
                format!("not supported on a Flink session cluster: {why}"),
            );
        }
    }
}

fn valid_job_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn valid_java_class(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
}

/// Normalizes a cron expression to the 6- or 7-field form the `cron` crate reads.
pub fn normalize_cron(expression: &str) -> Result<String, String> {
    let fields = expression.split_whitespace().count();
    let normalized = match fields {
        5 => format!("0 {}", expression.trim()),
        6 => expression.trim().to_string(),
        _ => {
            return Err(format!(
                "`{expression}` has {fields} fields; use 5 (`min hour day month weekday`) or 6 with seconds first"
            ));
        }
    };
    normalized
        .parse::<cron::Schedule>()
        .map_err(|e| format!("`{expression}` is not a valid cron expression: {e}"))?;
    Ok(normalized)
}

/// Parses one spec file's text. All problems in the file are returned, not just the first.
pub fn parse_spec(file: &str, text: &str) -> Result<JobSpec, Vec<SpecError>> {
    let raw: RawSpec = yaml::from_str(text).map_err(|e| {
        // An unknown field is named in the message itself; elsewhere name the key on that line.
        let field = (!e.message.starts_with("unknown field"))
            .then(|| yaml::key_path_at(text, e.line))
            .flatten();
        vec![SpecError {
            file: file.to_string(),
            line: e.line,
            column: e.column,
            field,
            message: e.message,
        }]
    })?;
    let mut check = Checker {
        file,
        errors: Vec::new(),
    };
    let spec = validate(raw, &mut check);
    match spec {
        Some(spec) if check.errors.is_empty() => Ok(spec),
        _ => Err(check.errors),
    }
}

fn validate(raw: RawSpec, check: &mut Checker<'_>) -> Option<JobSpec> {
    let job_id = match &raw.job_id {
        None => {
            check.whole_file(Some("job_id"), "is required");
            None
        }
        Some(id) if !valid_job_id(&id.value) => {
            check.at(
                id,
                "job_id",
                format!(
                    "`{}` must match [a-z0-9][a-z0-9-]{{0,62}} (lower-case letters, digits, dashes)",
                    id.value
                ),
            );
            None
        }
        Some(id) => Some(id.value.clone()),
    };
    let job_type = match &raw.job_type {
        None => {
            check.whole_file(Some("job_type"), "is required (`stream` or `batch`)");
            None
        }
        Some(t) => Some(t.value),
    };

    let artifact = validate_artifact(&raw, check);
    let runner = validate_runner(&raw, artifact.as_ref(), check);

    let artifact_sha256 = raw.artifact_signature.as_ref().and_then(|sig| {
        let digest = sig.value.strip_prefix("sha256:");
        match digest {
            Some(hexdigits)
                if hexdigits.len() == 64 && hexdigits.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(hexdigits.to_ascii_lowercase())
            }
            _ => {
                check.at(
                    sig,
                    "artifact_signature",
                    format!(
                        "`{}` must be `sha256:` followed by 64 hex digits",
                        sig.value
                    ),
                );
                None
            }
        }
    });
    if let (Some(Artifact::Sql { .. } | Artifact::Python { .. }), Some(sig)) =
        (&artifact, &raw.artifact_signature)
    {
        check.at(
            sig,
            "artifact_signature",
            "pins a downloaded JAR; SQL and Python sources are read from the signed commit itself",
        );
    }
    if let (Some(Artifact::Sql { .. } | Artifact::Python { .. }), Some(class)) =
        (&artifact, &raw.entry_class)
    {
        check.at(
            class,
            "entry_class",
            "does not apply to SQL and Python jobs: the runner JAR is their entry point",
        );
    }
    if let (Some(Artifact::Sql { .. }), Some(first)) =
        (&artifact, raw.args.as_ref().and_then(|a| a.first()))
    {
        check.at(first, "args", "SQL jobs take no program arguments: write values into the SQL (`${secret:NAME}` for secrets)");
    }
    if let (Some(Artifact::Url(_)), None, Some(url)) =
        (&artifact, &raw.artifact_signature, &raw.artifact_url)
    {
        check.at(url, "artifact_signature", "is required with `artifact_url`: a downloaded JAR must have its sha256 pinned in the signed spec");
    }

    let entry_class = raw.entry_class.as_ref().and_then(|class| {
        if valid_java_class(&class.value) {
            Some(class.value.clone())
        } else {
            check.at(
                class,
                "entry_class",
                format!("`{}` is not a Java class name", class.value),
            );
            None
        }
    });

    let mut flink: BTreeMap<String, String> = BTreeMap::new();
    let mut structured_keys: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    let mut parallelism = None;
    let mut savepoint_dir = None;
    if let Some(deployment) = &raw.deployment {
        let d = &deployment.value;
        if let Some(p) = &d.parallelism {
            parallelism = NonZeroU32::new(p.value);
            if parallelism.is_none() {
                check.at(p, "deployment.parallelism", "must be at least 1");
            }
        }
        if let Some(interval) = &d.checkpoint_interval {
            if interval.value == 0 {
                check.at(
                    interval,
                    "deployment.checkpoint_interval",
                    "must be at least 1 ms; leave it out to disable checkpointing",
                );
            }
            flink.insert(
                "execution.checkpointing.interval".into(),
                format!("{} ms", interval.value),
            );
            structured_keys.insert(
                "execution.checkpointing.interval",
                "deployment.checkpoint_interval",
            );
        }
        if let Some(path) = &d.savepoint_path {
            if path.value.contains("://") {
                savepoint_dir = Some(path.value.clone());
            } else if path.value.starts_with('/') {
                savepoint_dir = Some(format!("file://{}", path.value));
            } else {
                check.at(
                    path,
                    "deployment.savepoint_path",
                    format!(
                        "`{}` must be absolute or a URL such as s3://bucket/path",
                        path.value
                    ),
                );
            }
        }
        let strategy = d.restart_strategy.as_ref().map(|s| s.value);
        if let Some(s) = strategy {
            let name = match s {
                RestartStrategy::FixedDelay => "fixed-delay",
                RestartStrategy::ExponentialDelay => "exponential-delay",
                RestartStrategy::FailureRate => "failure-rate",
                RestartStrategy::None => "none",
            };
            flink.insert("restart-strategy.type".into(), name.into());
            structured_keys.insert("restart-strategy.type", "deployment.restart_strategy");
        }
        let attempts_key = match strategy {
            Some(RestartStrategy::FixedDelay) => Some("restart-strategy.fixed-delay.attempts"),
            Some(RestartStrategy::ExponentialDelay) => {
                Some("restart-strategy.exponential-delay.attempts-before-reset-backoff")
            }
            Some(RestartStrategy::FailureRate) => {
                Some("restart-strategy.failure-rate.max-failures-per-interval")
            }
            Some(RestartStrategy::None) | None => None,
        };
        let delay_key = match strategy {
            Some(RestartStrategy::FixedDelay) => Some("restart-strategy.fixed-delay.delay"),
            Some(RestartStrategy::ExponentialDelay) => {
                Some("restart-strategy.exponential-delay.initial-backoff")
            }
            Some(RestartStrategy::FailureRate) => Some("restart-strategy.failure-rate.delay"),
            Some(RestartStrategy::None) | None => None,
        };
        for (value, key, field) in [
            (
                d.max_restart_attempts
                    .as_ref()
                    .map(|v| (v.value as u64, v.referenced, v.defined)),
                attempts_key,
                "deployment.max_restart_attempts",
            ),
            (
                d.restart_delay
                    .as_ref()
                    .map(|v| (v.value, v.referenced, v.defined)),
                delay_key,
                "deployment.restart_delay",
            ),
        ] {
            let Some((number, referenced, defined)) = value else {
                continue;
            };
            let spanned = Spanned::new((), referenced, defined);
            match key {
                Some(key) => {
                    let text = if field.ends_with("delay") { format!("{number} ms") } else { number.to_string() };
                    flink.insert(key.to_string(), text);
                }
                None => check.at(&spanned, field, "needs `deployment.restart_strategy` set to fixed-delay, exponential-delay or failure-rate"),
            }
        }
    }
    check.refuse(&raw.resources, "resources", "TaskManager and JobManager resources are set for the whole cluster (taskmanager.memory.process.size, taskmanager.numberOfTaskSlots)");
    check.refuse(&raw.env_vars, "env_vars", "all jobs share the TaskManager processes, so there is no per-job environment; pass values through `args` or `flink_config`");

    let mut artifact_verification = false;
    if let Some(security) = &raw.security {
        check.refuse(&security.kerberos_principal, "security.kerberos_principal", "Kerberos is configured for the cluster; the agent's own connection settings live in its config file");
        check.refuse(
            &security.ssl_enabled,
            "security.ssl_enabled",
            "TLS to the cluster is the agent's connection setting (`flink.tls` in its config file)",
        );
        artifact_verification = security.artifact_verification.unwrap_or(false);
    }
    let (mut alert_on_failure, mut alert_on_backpressure) = (true, false);
    let mut watch = Watch::default();
    if let Some(monitoring) = &raw.monitoring {
        check.refuse(
            &monitoring.metrics_port,
            "monitoring.metrics_port",
            "metric reporters and their ports are configured for the whole cluster",
        );
        check.refuse(
            &monitoring.log_level,
            "monitoring.log_level",
            "log levels are configured for the whole cluster (log4j)",
        );
        alert_on_failure = monitoring.alert_on_failure.unwrap_or(true);
        alert_on_backpressure = monitoring.alert_on_backpressure.unwrap_or(false);
        if let Some(ratio) = &monitoring.backpressure_ratio {
            match Ratio::parse(ratio.value) {
                Some(r) if r.0 > 0 => watch.backpressure_ratio = r,
                _ => check.at(
                    ratio,
                    "monitoring.backpressure_ratio",
                    "must be a number above 0 and at most 1 (the share of time a task is backpressured)",
                ),
            }
        }
        if let Some(text) = &monitoring.backpressure_for {
            match crate::util::parse_duration(&text.value) {
                Ok(d) => watch.backpressure_for = d,
                Err(reason) => check.at(text, "monitoring.backpressure_for", reason),
            }
        }
        if let Some(text) = &monitoring.max_checkpoint_age {
            match crate::util::parse_duration(&text.value) {
                Ok(d) if !d.is_zero() => watch.max_checkpoint_age = Some(d),
                Ok(_) => check.at(
                    text,
                    "monitoring.max_checkpoint_age",
                    "must be longer than 0 s",
                ),
                Err(reason) => check.at(text, "monitoring.max_checkpoint_age", reason),
            }
        }
    }
    if let Some(advanced) = &raw.advanced {
        check.refuse(
            &advanced.classloader_resolve_order,
            "advanced.classloader_resolve_order",
            "class loading is configured for the whole cluster (classloader.resolve-order)",
        );
        check.refuse(
            &advanced.classloader_cache_mode,
            "advanced.classloader_cache_mode",
            "class loading is configured for the whole cluster",
        );
        check.refuse(
            &advanced.taskmanager_heap_size,
            "advanced.taskmanager_heap_size",
            "TaskManager memory is set for the whole cluster (taskmanager.memory.task.heap.size)",
        );
        if let Some(timeout) = advanced.network_buffer_timeout {
            flink.insert(
                "execution.buffer-timeout.interval".into(),
                format!("{timeout} ms"),
            );
            structured_keys.insert(
                "execution.buffer-timeout.interval",
                "advanced.network_buffer_timeout",
            );
        }
    }

    let mut savepoint_trigger_interval_ms = None;
    if let Some(stream) = &raw.stream_config {
        if job_type == Some(JobType::Batch) {
            check.at(
                stream,
                "stream_config",
                "only applies to `job_type: stream`",
            );
        }
        let s = &stream.value;
        if let Some(interval) = &s.savepoint_trigger_interval {
            if interval.value < 1000 {
                check.at(
                    interval,
                    "stream_config.savepoint_trigger_interval",
                    "must be at least 1000 ms",
                );
            }
            savepoint_trigger_interval_ms = Some(interval.value);
        }
        if let Some(timeout) = &s.checkpoint_timeout {
            if timeout.value == 0 {
                check.at(
                    timeout,
                    "stream_config.checkpoint_timeout",
                    "must be at least 1 ms",
                );
            }
            flink.insert(
                "execution.checkpointing.timeout".into(),
                format!("{} ms", timeout.value),
            );
            structured_keys.insert(
                "execution.checkpointing.timeout",
                "stream_config.checkpoint_timeout",
            );
        }
        if let Some(pause) = s.min_pause_between_checkpoints {
            flink.insert(
                "execution.checkpointing.min-pause".into(),
                format!("{pause} ms"),
            );
            structured_keys.insert(
                "execution.checkpointing.min-pause",
                "stream_config.min_pause_between_checkpoints",
            );
        }
        if let Some(max) = &s.max_concurrent_checkpoints {
            if max.value == 0 {
                check.at(
                    max,
                    "stream_config.max_concurrent_checkpoints",
                    "must be at least 1",
                );
            }
            flink.insert(
                "execution.checkpointing.max-concurrent-checkpoints".into(),
                max.value.to_string(),
            );
            structured_keys.insert(
                "execution.checkpointing.max-concurrent-checkpoints",
                "stream_config.max_concurrent_checkpoints",
            );
        }
    }

    let batch = match (&raw.batch_config, job_type) {
        (Some(b), Some(JobType::Stream)) => {
            check.at(b, "batch_config", "only applies to `job_type: batch`");
            None
        }
        (b, Some(JobType::Batch)) => Some(validate_batch(b.as_ref().map(|b| &b.value), check)),
        _ => None,
    };

    if let Some(options) = raw.flink_config {
        let mut options: Vec<_> = options.into_iter().collect();
        options.sort_by(|a, b| a.0.value.cmp(&b.0.value));
        for (key, value) in options {
            if key.value.trim().is_empty() {
                check.at(&key, "flink_config", "option names must not be empty");
                continue;
            }
            if let Some((_, why)) = AGENT_OWNED_OPTIONS.iter().find(|(k, _)| *k == key.value) {
                check.at(
                    &key,
                    &format!("flink_config.{}", key.value),
                    format!("is set by the agent: {why}"),
                );
                continue;
            }
            if let Some(field) = structured_keys.get(key.value.as_str()) {
                check.at(
                    &key,
                    &format!("flink_config.{}", key.value),
                    format!("is already set by `{field}`; set it in one place"),
                );
                continue;
            }
            if key.value.starts_with("restart-strategy.")
                && structured_keys.contains_key("restart-strategy.type")
            {
                check.at(&key, &format!("flink_config.{}", key.value), "restart options are set by `deployment.restart_strategy`; set them in one place");
                continue;
            }
            flink.insert(key.value, value.into_text());
        }
    }

    let restore_from = raw.restore_from.as_ref().and_then(|path| {
        let value = path.value.trim();
        if job_type == Some(JobType::Batch) {
            check.at(path, "restore_from", "only applies to `job_type: stream`");
            None
        } else if url::Url::parse(value).is_ok_and(|u| u.scheme().len() > 1) {
            // As Flink prints them: file:/…, file:///…, s3://…
            Some(value.to_string())
        } else if value.starts_with('/') {
            Some(format!("file://{value}"))
        } else {
            check.at(
                path,
                "restore_from",
                format!("`{value}` must be an absolute path or a URL such as s3://bucket/savepoints/savepoint-…"),
            );
            None
        }
    });
    let savepoint_retention = raw.savepoints.as_ref().and_then(|policy| {
        if job_type == Some(JobType::Batch) {
            check.at(policy, "savepoints", "only applies to `job_type: stream`");
            return None;
        }
        match Retention::parse(policy.value.keep, policy.value.max_age.as_deref()) {
            Ok(retention) => Some(retention),
            Err(reason) => {
                check.at(policy, "savepoints", reason);
                None
            }
        }
    });
    let health = validate_health(raw.health.as_ref(), check);
    let state = raw.state.unwrap_or(DesiredRunState::Running);
    let upgrade_mode = raw.upgrade_mode.unwrap_or(UpgradeMode::Savepoint);
    let args = raw
        .args
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.value)
        .collect();

    Some(JobSpec {
        job_id: job_id?,
        job_type: job_type?,
        artifact: artifact?,
        runner,
        artifact_sha256,
        entry_class,
        parallelism,
        args,
        savepoint_dir,
        flink_configuration: flink,
        artifact_verification,
        alert_on_failure,
        alert_on_backpressure,
        watch,
        savepoint_trigger_interval_ms,
        batch,
        state,
        upgrade_mode,
        allow_non_restored_state: raw.allow_non_restored_state.unwrap_or(false),
        restore_from,
        savepoint_retention,
        health,
    })
}

/// Exactly one of `artifact_path`, `artifact_url`, `sql` and `python`, checked.
fn validate_artifact(raw: &RawSpec, check: &mut Checker<'_>) -> Option<Artifact> {
    const ONE_OF: &str = "set exactly one of `artifact_path`, `artifact_url`, `sql` and `python`";
    let given: Vec<(&str, serde_saphyr::Location)> = [
        (
            "artifact_path",
            raw.artifact_path.as_ref().map(|s| s.referenced),
        ),
        (
            "artifact_url",
            raw.artifact_url.as_ref().map(|s| s.referenced),
        ),
        ("sql", raw.sql.as_ref().map(|s| s.referenced)),
        ("python", raw.python.as_ref().map(|s| s.referenced)),
    ]
    .into_iter()
    .filter_map(|(name, at)| at.map(|at| (name, at)))
    .collect();
    if given.is_empty() {
        check.whole_file(
            Some("artifact_path"),
            "is required (or `artifact_url` with `artifact_signature`, or `sql`, or `python`)",
        );
        return None;
    }
    if given.len() > 1 {
        for (name, at) in &given[1..] {
            check.at(
                &Spanned::new((), *at, *at),
                name,
                format!("{ONE_OF}; `{}` is set too", given[0].0),
            );
        }
        return None;
    }
    if let Some(path) = &raw.artifact_path {
        return match RepoPath::parse(&path.value) {
            Ok(p) if p.is_root() => {
                check.at(path, "artifact_path", "must name a file");
                None
            }
            Ok(p) => Some(Artifact::Path(p)),
            Err(reason) => {
                check.at(path, "artifact_path", reason);
                None
            }
        };
    }
    if let Some(url) = &raw.artifact_url {
        return match url::Url::parse(&url.value) {
            Ok(u) if matches!(u.scheme(), "https" | "file") => {
                Some(Artifact::Url(url.value.clone()))
            }
            Ok(u) => {
                check.at(
                    url,
                    "artifact_url",
                    format!(
                        "scheme `{}` is not allowed; use https:// or file://",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                check.at(
                    url,
                    "artifact_url",
                    format!("`{}` is not a URL: {e}", url.value),
                );
                None
            }
        };
    }
    if let Some(sql) = &raw.sql {
        let names = match &sql.value {
            SqlFiles::One(name) => vec![name.clone()],
            SqlFiles::Many(names) => names.clone(),
        };
        if names.is_empty() {
            check.at(
                sql,
                "sql",
                "names no file; write `sql: path/to/file.sql` or a list of files",
            );
            return None;
        }
        let mut files: Vec<RepoPath> = Vec::new();
        for name in &names {
            match program_path(name, ".sql") {
                Ok(path) if files.contains(&path) => {
                    check.at(sql, "sql", format!("`{path}` is listed twice"));
                }
                Ok(path) => files.push(path),
                Err(reason) => check.at(sql, "sql", reason),
            }
        }
        return (files.len() == names.len()).then_some(Artifact::Sql { files });
    }
    let python = raw.python.as_ref()?;
    let Some(entry) = &python.value.entry else {
        check.at(
            python,
            "python.entry",
            "is required: the program's main `.py` file in the repository",
        );
        return None;
    };
    let entry = match program_path(entry, ".py") {
        Ok(entry) => Some(entry),
        Err(reason) => {
            check.at(python, "python.entry", reason);
            None
        }
    };
    let mut files = Vec::new();
    for name in python.value.files.iter().flatten() {
        match RepoPath::parse(name) {
            Ok(path) if path.is_root() => check.at(
                python,
                "python.files",
                "`.` would ship the whole repository; name the folders the program needs",
            ),
            Ok(path) => files.push(path),
            Err(reason) => check.at(python, "python.files", reason),
        }
    }
    let listed = python.value.files.as_ref().map_or(0, Vec::len);
    (files.len() == listed).then_some(Artifact::Python {
        entry: entry?,
        files,
    })
}

fn program_path(name: &str, extension: &str) -> Result<RepoPath, String> {
    let path = RepoPath::parse(name)?;
    if !path.as_str().ends_with(extension) {
        return Err(format!("`{name}` must be a {extension} file"));
    }
    Ok(path)
}

/// `runner:` names a JAR in the repository, and only SQL and Python jobs have a runner.
fn validate_runner(
    raw: &RawSpec,
    artifact: Option<&Artifact>,
    check: &mut Checker<'_>,
) -> Option<RepoPath> {
    let runner = raw.runner.as_ref()?;
    if matches!(artifact, Some(Artifact::Path(_) | Artifact::Url(_))) {
        check.at(
            runner,
            "runner",
            "only SQL and Python jobs have a runner; a JAR job is its own entry point",
        );
        return None;
    }
    match program_path(&runner.value, ".jar") {
        Ok(path) => Some(path),
        Err(reason) => {
            check.at(runner, "runner", reason);
            None
        }
    }
}

/// The longest a batch run may be given before it is cancelled (30 days).
const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

fn validate_batch(raw: Option<&RawBatch>, check: &mut Checker<'_>) -> BatchSpec {
    let mut spec = BatchSpec {
        cron: None,
        timezone: "UTC".into(),
        max_runs: None,
        ttl_seconds: None,
        cleanup_on_completion: false,
        concurrency: Concurrency::Forbid,
    };
    let Some(raw) = raw else { return spec };
    if let Some(cron) = &raw.cron {
        match normalize_cron(&cron.value) {
            Ok(_) => spec.cron = Some(cron.value.trim().to_string()),
            Err(reason) => check.at(cron, "batch_config.cron", reason),
        }
    }
    if let Some(tz) = &raw.timezone {
        match tz.value.parse::<chrono_tz::Tz>() {
            Ok(_) => spec.timezone = tz.value.clone(),
            Err(_) => check.at(
                tz,
                "batch_config.timezone",
                format!(
                    "`{}` is not an IANA time zone name such as `Europe/Berlin` or `UTC`",
                    tz.value
                ),
            ),
        }
    }
    if let Some(max) = &raw.max_runs {
        if max.value == 0 {
            check.at(
                max,
                "batch_config.max_runs",
                "must be at least 1; use `state: suspended` to stop scheduling",
            );
        }
        spec.max_runs = Some(max.value);
    }
    if let Some(ttl) = &raw.ttl_seconds {
        if ttl.value == 0 || ttl.value > MAX_TTL_SECONDS {
            check.at(
                ttl,
                "batch_config.ttl_seconds",
                format!("must be between 1 and {MAX_TTL_SECONDS} (30 days)"),
            );
        }
        spec.ttl_seconds = Some(ttl.value);
    }
    spec.cleanup_on_completion = raw.cleanup_on_completion.unwrap_or(false);
    spec.concurrency = raw.concurrency.unwrap_or(Concurrency::Forbid);
    spec
}

fn validate_health(raw: Option<&RawHealth>, check: &mut Checker<'_>) -> HealthPolicy {
    let mut policy = HealthPolicy {
        stable_for: Duration::from_secs(30),
        max_restarts: 0,
        require_checkpoint: true,
        min_checkpoints: None,
        max_checkpoint_age: None,
        max_backpressure: None,
        timeout: Duration::from_secs(300),
    };
    let Some(raw) = raw else { return policy };
    let mut duration = |value: &Option<S<String>>, field: &str, target: &mut Duration| {
        if let Some(text) = value {
            match crate::util::parse_duration(&text.value) {
                Ok(d) => *target = d,
                Err(reason) => check.at(text, field, reason),
            }
        }
    };
    duration(&raw.stable_for, "health.stable_for", &mut policy.stable_for);
    duration(&raw.timeout, "health.timeout", &mut policy.timeout);
    if let Some(max) = raw.max_restarts {
        policy.max_restarts = max;
    }
    if let Some(require) = raw.require_checkpoint {
        policy.require_checkpoint = require;
    }
    if let Some(min) = &raw.min_checkpoints {
        if min.value == 0 || !policy.require_checkpoint {
            check.at(
                min,
                "health.min_checkpoints",
                "must be at least 1, with `require_checkpoint` left on",
            );
        } else if min.value > 1 {
            policy.min_checkpoints = Some(min.value);
        }
    }
    if let Some(text) = &raw.max_checkpoint_age {
        match crate::util::parse_duration(&text.value) {
            Ok(d) if !d.is_zero() => policy.max_checkpoint_age = Some(d),
            Ok(_) => check.at(text, "health.max_checkpoint_age", "must be longer than 0 s"),
            Err(reason) => check.at(text, "health.max_checkpoint_age", reason),
        }
    }
    if let Some(ratio) = &raw.max_backpressure {
        match Ratio::parse(ratio.value) {
            Some(r) if r.0 > 0 => policy.max_backpressure = Some(r),
            _ => check.at(
                ratio,
                "health.max_backpressure",
                "must be a number above 0 and at most 1 (the share of time a task is backpressured)",
            ),
        }
    }
    if policy.timeout <= policy.stable_for {
        if let Some(timeout) = &raw.timeout {
            check.at(
                timeout,
                "health.timeout",
                format!(
                    "must be longer than `health.stable_for` ({})",
                    crate::util::format_duration(policy.stable_for)
                ),
            );
        } else {
            policy.timeout = policy.stable_for + Duration::from_secs(300);
        }
    }
    policy
}

// ---------------------------------------------------------------------------------------------
// Loading a whole revision.

fn is_spec_file(path: &RepoPath) -> bool {
    let name = path.as_str();
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Reads and validates every spec under `jobs_dir` of `tree`; reports every problem of every file.
pub fn load_desired(tree: &dyn SpecTree, jobs_dir: &str) -> Result<DesiredState, Vec<SpecError>> {
    let dir = RepoPath::parse(jobs_dir).map_err(|reason| {
        vec![SpecError {
            file: jobs_dir.to_string(),
            line: 0,
            column: 0,
            field: Some("repo.jobs_dir".into()),
            message: reason,
        }]
    })?;
    let whole = |file: &str, message: String| SpecError {
        file: file.to_string(),
        line: 0,
        column: 0,
        field: None,
        message,
    };
    match tree.entry(&dir) {
        Ok(Some(EntryKind::Dir)) => {}
        // Git does not keep empty folders: removing the last spec removes the folder.
        Ok(None) => return Ok(DesiredState::default()),
        Ok(Some(_)) => {
            return Err(vec![whole(
                dir.as_str(),
                format!(
                    "the jobs folder `{dir}` is not a folder in {}",
                    tree.describe()
                ),
            )]);
        }
        Err(e) => return Err(vec![whole(dir.as_str(), e.to_string())]),
    }
    let files = tree.walk(&dir).map_err(|e| match &e {
        TreeError::BadName { path, reason } => vec![whole(
            path,
            format!("{reason}; rename it (a spec the agent cannot name is never taken as deleted)"),
        )],
        _ => vec![whole(dir.as_str(), e.to_string())],
    })?;

    let mut errors = Vec::new();
    let mut jobs: BTreeMap<String, DesiredJob> = BTreeMap::new();
    for (path, kind) in files.iter().filter(|(p, _)| is_spec_file(p)) {
        let file = path.as_str();
        match kind {
            EntryKind::File => {}
            EntryKind::Symlink(target) => {
                errors.push(whole(
                    file,
                    format!("is a symlink (to `{target}`); spec files must be regular files"),
                ));
                continue;
            }
            _ => {
                errors.push(whole(file, "is not a regular file".into()));
                continue;
            }
        }
        let bytes = match tree.read(path, SPEC_SIZE_LIMIT) {
            Ok(b) => b,
            Err(e) => {
                errors.push(whole(file, strip_path_prefix(&e.to_string(), file)));
                continue;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                errors.push(whole(
                    file,
                    format!(
                        "is not UTF-8 (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                ));
                continue;
            }
        };
        let spec = match parse_spec(file, &text) {
            Ok(spec) => spec,
            Err(mut problems) => {
                errors.append(&mut problems);
                continue;
            }
        };
        let program = match program::load(tree, file, &spec) {
            Ok(program) => program,
            Err(mut problems) => {
                errors.append(&mut problems);
                continue;
            }
        };
        if let Err((field, e)) = crate::secrets::job_references(&spec.args, program.as_ref()) {
            errors.push(SpecError {
                file: file.to_string(),
                line: 0,
                column: 0,
                field: Some(field.into()),
                message: e.to_string(),
            });
            continue;
        }
        let artifact_content = match artifact_content(tree, &spec, program.as_ref()) {
            Ok(id) => id,
            Err(message) => {
                errors.push(SpecError {
                    file: file.to_string(),
                    line: 0,
                    column: 0,
                    field: Some(
                        if matches!(spec.artifact, Artifact::Path(_) | Artifact::Url(_)) {
                            "artifact_path"
                        } else {
                            "runner"
                        }
                        .into(),
                    ),
                    message,
                });
                continue;
            }
        };
        if let Some(first) = jobs.get(&spec.job_id) {
            errors.push(SpecError {
                file: file.to_string(),
                line: 0,
                column: 0,
                field: Some("job_id".into()),
                message: format!(
                    "`{}` is already used by {}; job ids must be unique",
                    spec.job_id, first.file
                ),
            });
            continue;
        }
        jobs.insert(
            spec.job_id.clone(),
            DesiredJob {
                spec,
                file: path.clone(),
                artifact_content,
                program,
                secrets: BTreeMap::new(),
            },
        );
    }
    if errors.is_empty() {
        Ok(DesiredState { jobs })
    } else {
        Err(errors)
    }
}

fn strip_path_prefix(message: &str, file: &str) -> String {
    message
        .strip_prefix(&format!("{file}: "))
        .unwrap_or(message)
        .to_string()
}

fn artifact_content(
    tree: &dyn SpecTree,
    spec: &JobSpec,
    program: Option<&program::Program>,
) -> Result<String, String> {
    let jar_content = |path: &RepoPath| {
        let resolved = tree
            .resolve_file(path)
            .map_err(|e| strip_path_prefix(&e.to_string(), path.as_str()))
            .map_err(|reason| format!("`{path}` {reason}"))?
            .ok_or_else(|| format!("`{path}` does not exist in {}", tree.describe()))?;
        if !resolved.as_str().ends_with(".jar") {
            return Err(format!("`{path}` must be a .jar file"));
        }
        tree.content_id(&resolved).map_err(|e| e.to_string())
    };
    match (&spec.artifact, program) {
        (Artifact::Url(_), _) => Ok(format!(
            "sha256:{}",
            spec.artifact_sha256.as_deref().unwrap_or_default()
        )),
        (Artifact::Path(path), _) => jar_content(path),
        (_, Some(program)) => {
            let sources = format!("sources-sha256:{}", program.digest());
            match &spec.runner {
                Some(runner) => Ok(format!("{sources};runner={}", jar_content(runner)?)),
                None => Ok(sources),
            }
        }
        (_, None) => Err("the SQL or Python sources were not loaded".into()),
    }
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
    fn cron_accepts_five_and_six_fields() {
        assert_eq!(normalize_cron("0 2 * * *").unwrap(), "0 0 2 * * *");
        assert_eq!(normalize_cron("*/10 * * * * *").unwrap(), "*/10 * * * * *");
        assert!(normalize_cron("* * *").is_err());
        assert!(normalize_cron("99 * * * *").is_err());
    }
}
