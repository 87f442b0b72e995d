//! The validated spec model: what a revision asks the cluster to run.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RepoPath;
use super::program::Program;

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

/// What a failed health gate rolls back (`rollback:` in a spec, `reconcile.rollback` in the
/// agent's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackScope {
    /// Only the job that failed goes back to its last good spec (the default).
    Job,
    /// Every job of the revision that takes part goes back to its previous spec, downstream first.
    Revision,
}

/// One entry of `depends_on`: a job that must be running before this one starts, and that is
/// stopped only after this one. Compared and serialized as the job id alone: where it was written
/// only locates errors.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The upstream job.
    pub job_id: String,
    /// 1-based line and column of the entry in its spec file.
    pub line: u64,
    /// See `line`.
    pub column: u64,
}

impl PartialEq for Dependency {
    fn eq(&self, other: &Dependency) -> bool {
        self.job_id == other.job_id
    }
}

impl Eq for Dependency {}

impl Serialize for Dependency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.job_id)
    }
}

/// Read back from canonical JSON, a dependency has no position (line and column 0).
impl<'de> Deserialize<'de> for Dependency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Dependency, D::Error> {
        Ok(Dependency {
            job_id: String::deserialize(deserializer)?,
            line: 0,
            column: 0,
        })
    }
}

/// What runs: a JAR, or a SQL or Python program run by the runner JAR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        default,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[serde(
        rename = "monitoring",
        default,
        skip_serializing_if = "Watch::is_default"
    )]
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
    /// Jobs this one depends on (`depends_on`): started before it, stopped after it. Absent from
    /// the canonical JSON when empty, so specs without it keep their hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// What this job's failed health gate rolls back, and whether a revision rollback includes
    /// it; `None` follows the agent's `reconcile.rollback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackScope>,
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

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        crate::util::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// A job the repository asks for, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredJob {
    /// The validated spec. Boxed: a job is moved several times on its way into a revision's map,
    /// and 1,000 of them were 664 bytes each to copy at every step.
    pub spec: Box<JobSpec>,
    /// Repo-relative spec file.
    pub file: RepoPath,
    /// Identity of what runs in this revision: the JAR's (`git-blob:<oid>`, `sha256:<hex>` or the
    /// pinned digest), or the SQL/Python sources' (`sources-sha256:<hex>`, with the spec's runner).
    pub artifact_content: String,
    /// The SQL or Python sources, for those jobs.
    #[serde(skip)]
    pub program: Option<Program>,
    /// Keyed fingerprints of the `${secret:NAME}` values the job uses (never the values), so a
    /// changed secret redeploys the job; empty until the agent resolves them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// The canonical JSON of `spec`, made once. `spec` is never changed once a job is loaded, so
    /// it cannot go stale.
    #[serde(skip)]
    canonical_spec: Computed,
    /// SHA-256 of the canonical JSON without secrets, made once (or kept with the spec memo):
    /// every plan compares it with every job's record. It depends on `spec` and
    /// `artifact_content` only, which are never changed once a job is loaded.
    #[serde(skip)]
    hash_without_secrets: Computed,
}

/// A value computed from a job's other fields, which takes no part in comparing jobs.
#[derive(Debug, Clone, Default)]
struct Computed(std::sync::OnceLock<String>);

impl PartialEq for Computed {
    fn eq(&self, _: &Computed) -> bool {
        true
    }
}

impl Eq for Computed {}

impl DesiredJob {
    /// A job loaded from `file`; its secrets are fingerprinted later, by the agent.
    pub fn new(
        spec: impl Into<Box<JobSpec>>,
        file: RepoPath,
        artifact_content: String,
        program: Option<Program>,
    ) -> DesiredJob {
        DesiredJob {
            spec: spec.into(),
            file,
            artifact_content,
            program,
            secrets: BTreeMap::new(),
            canonical_spec: Computed::default(),
            hash_without_secrets: Computed::default(),
        }
    }

    /// A job whose spec's canonical JSON and hash are already known (read back from the spec
    /// memo, which keeps [`Self::hash_without_secrets`]).
    pub(crate) fn with_canonical_spec(
        mut self,
        canonical_spec: String,
        hash_without_secrets: String,
    ) -> DesiredJob {
        self.canonical_spec = Computed(canonical_spec.into());
        self.hash_without_secrets = Computed(hash_without_secrets.into());
        self
    }

    /// The canonical JSON of `spec` alone: keys sorted at every level.
    pub fn canonical_spec(&self) -> &str {
        self.canonical_spec.0.get_or_init(|| {
            // A JobSpec is plain data (strings, numbers, maps with string keys): it always
            // serializes.
            serde_json::to_value(&self.spec)
                .map(|value| value.to_string())
                .unwrap_or_default()
        })
    }

    /// Whether `hash` is [`Self::spec_hash`]; without secrets, without hashing again: a plan asks
    /// this for every job.
    pub fn has_spec_hash(&self, hash: &str) -> bool {
        if self.secrets.is_empty() {
            hash == self.hash_without_secrets()
        } else {
            hash == self.spec_hash()
        }
    }

    /// The canonical JSON of everything that, when changed, needs a redeploy: keys sorted at
    /// every level, so `artifact_content`, `secrets` (only when used, so the hashes of jobs
    /// without secrets stay what they were), then `spec`.
    pub fn canonical_json(&self) -> String {
        self.canonical_json_with(&self.secrets)
    }

    fn canonical_json_with(&self, secrets: &BTreeMap<String, String>) -> String {
        let artifact_content = serde_json::Value::from(self.artifact_content.as_str());
        let secrets = if secrets.is_empty() {
            String::new()
        } else {
            format!(",\"secrets\":{}", serde_json::json!(secrets))
        };
        format!(
            "{{\"artifact_content\":{artifact_content}{secrets},\"spec\":{}}}",
            self.canonical_spec()
        )
    }

    /// SHA-256 of [`Self::canonical_json`].
    pub fn spec_hash(&self) -> String {
        if self.secrets.is_empty() {
            self.hash_without_secrets().to_string()
        } else {
            crate::util::sha256_hex(self.canonical_json().as_bytes())
        }
    }

    /// SHA-256 of the canonical JSON the job has before its secrets are fingerprinted: its
    /// [`Self::spec_hash`] when it uses none. What the spec memo keeps.
    pub fn hash_without_secrets(&self) -> &str {
        self.hash_without_secrets.0.get_or_init(|| {
            crate::util::sha256_hex(self.canonical_json_with(&BTreeMap::new()).as_bytes())
        })
    }
}

/// All jobs a revision asks for, keyed by `job_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    /// The jobs.
    pub jobs: BTreeMap<String, DesiredJob>,
}

/// A ratio between 0 and 1, kept in thousandths so specs compare and hash exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ratio(pub(super) u16);

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

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ratio, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse::<f64>()
            .ok()
            .and_then(Ratio::parse)
            .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not a ratio")))
    }
}

/// What the agent watches on a running stream job (`monitoring:`), beyond the alert switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// A job whose most backpressured subtask is at or above this ratio is backpressured.
    pub backpressure_ratio: Ratio,
    /// How long it must stay backpressured before the alert.
    #[serde(with = "duration_text")]
    pub backpressure_for: Duration,
    /// A newest completed checkpoint older than this raises the `checkpoints` alert.
    #[serde(
        default,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest this many are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Older than this, a savepoint goes (unless protected).
    #[serde(
        default,
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

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        <Option<String> as serde::Deserialize>::deserialize(deserializer)?
            .map(|text| crate::util::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::DesiredJob;
    use crate::spec::{RepoPath, parse_spec};
    use crate::util::sha256_hex;

    fn job(yaml: &str) -> DesiredJob {
        DesiredJob::new(
            parse_spec("jobs/x.yaml", yaml).unwrap(),
            RepoPath::parse("jobs/x.yaml").unwrap(),
            "git-blob:af08443063503c3591f8a9d94bbe7d4b7207afba".into(),
            None,
        )
    }

    const SPEC: &str = "job_id: orders\njob_type: stream\nartifact_path: a.jar\n";

    #[test]
    fn a_job_is_compared_by_the_hash_of_its_canonical_json_with_its_secrets() {
        let mut orders = job(SPEC);
        let bare = orders.canonical_json();
        assert_eq!(orders.spec_hash(), sha256_hex(bare.as_bytes()));
        assert_eq!(orders.hash_without_secrets(), orders.spec_hash());
        assert!(orders.has_spec_hash(&sha256_hex(bare.as_bytes())));
        assert!(
            !orders.has_spec_hash(
                &job(&format!("{SPEC}deployment: {{ parallelism: 2 }}\n")).spec_hash()
            )
        );
        assert!(!orders.has_spec_hash(""));

        // Fingerprinted secrets are part of what runs: the hash kept without them no longer
        // names the job's spec.
        orders
            .secrets
            .insert("DB_PASSWORD".into(), "fingerprint-1".into());
        let with_secrets = orders.canonical_json();
        assert_ne!(with_secrets, bare);
        assert_eq!(orders.spec_hash(), sha256_hex(with_secrets.as_bytes()));
        assert!(orders.has_spec_hash(&sha256_hex(with_secrets.as_bytes())));
        assert!(!orders.has_spec_hash(&sha256_hex(bare.as_bytes())));
        assert_eq!(orders.hash_without_secrets(), sha256_hex(bare.as_bytes()));
    }

    #[test]
    fn a_job_recalled_with_its_hash_is_the_job_loaded() {
        let loaded = job(SPEC);
        let recalled = DesiredJob::new(
            loaded.spec.clone(),
            loaded.file.clone(),
            loaded.artifact_content.clone(),
            None,
        )
        .with_canonical_spec(
            loaded.canonical_spec().to_string(),
            loaded.hash_without_secrets().to_string(),
        );
        assert_eq!(recalled, loaded);
        assert_eq!(recalled.canonical_json(), loaded.canonical_json());
        assert_eq!(recalled.spec_hash(), loaded.spec_hash());
    }
}
