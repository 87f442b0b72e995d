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
    /// The canonical JSON of `spec`, made once: every plan compares it for every job. `spec` is
    /// never changed once a job is loaded, so it cannot go stale.
    #[serde(skip)]
    canonical_spec: CanonicalSpec,
}

/// A computed value that takes no part in comparing jobs.
#[derive(Debug, Clone, Default)]
struct CanonicalSpec(std::sync::OnceLock<String>);

impl PartialEq for CanonicalSpec {
    fn eq(&self, _: &CanonicalSpec) -> bool {
        true
    }
}

impl Eq for CanonicalSpec {}

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
            canonical_spec: CanonicalSpec::default(),
        }
    }

    /// A job whose spec's canonical JSON is already known (read back from the spec memo).
    pub(crate) fn with_canonical_spec(mut self, canonical_spec: String) -> DesiredJob {
        self.canonical_spec = CanonicalSpec(canonical_spec.into());
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

    /// Whether `json` is [`Self::canonical_json`], without making it: a plan asks this for every
    /// job.
    pub fn has_canonical_json(&self, json: &str) -> bool {
        if !self.secrets.is_empty() {
            return json == self.canonical_json();
        }
        json.strip_prefix("{\"artifact_content\":")
            .and_then(|rest| strip_json_string(rest, &self.artifact_content))
            .and_then(|rest| rest.strip_prefix(",\"spec\":"))
            .and_then(|rest| rest.strip_suffix('}'))
            .is_some_and(|spec| spec == self.canonical_spec())
    }

    /// The canonical JSON of everything that, when changed, needs a redeploy: keys sorted at
    /// every level, so `artifact_content`, `secrets` (only when used, so the hashes of jobs
    /// without secrets stay what they were), then `spec`.
    pub fn canonical_json(&self) -> String {
        let artifact_content = serde_json::Value::from(self.artifact_content.as_str());
        let secrets = if self.secrets.is_empty() {
            String::new()
        } else {
            format!(",\"secrets\":{}", serde_json::json!(self.secrets))
        };
        format!(
            "{{\"artifact_content\":{artifact_content}{secrets},\"spec\":{}}}",
            self.canonical_spec()
        )
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

/// `text` without its leading JSON string literal of `value` (as serde_json writes it), or `None`
/// when it does not start with one. Every plan asks this of every job: nothing is allocated.
fn strip_json_string<'t>(text: &'t str, value: &str) -> Option<&'t str> {
    struct Matching<'t> {
        rest: &'t [u8],
    }
    impl std::io::Write for Matching<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            match self.rest.strip_prefix(bytes) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(bytes.len())
                }
                None => Err(std::io::ErrorKind::InvalidData.into()),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut matching = Matching {
        rest: text.as_bytes(),
    };
    serde_json::to_writer(&mut matching, value).ok()?;
    text.get(text.len() - matching.rest.len()..)
}

#[cfg(test)]
mod tests {
    use super::strip_json_string;

    #[test]
    fn a_json_string_is_stripped_only_when_it_is_the_whole_literal() {
        for value in [
            "git-blob:af08443063503c3591f8a9d94bbe7d4b7207afba",
            "",
            "quote \" backslash \\ tab \t newline \n bell \u{7} é ☃ 𝄞",
            "sources-sha256:00;runner=git-blob:11",
        ] {
            let literal = serde_json::to_string(value).unwrap();
            let text = format!("{literal},\"spec\":{{}}}}");
            assert_eq!(
                strip_json_string(&text, value),
                Some(",\"spec\":{}}"),
                "{value:?}"
            );
            assert_eq!(strip_json_string(&literal, value), Some(""), "{value:?}");
            // Longer or shorter strings, and the literal cut short, are not it.
            assert_eq!(
                strip_json_string(&text, &format!("{value}x")),
                None,
                "{value:?}"
            );
            if let Some(shorter) = value
                .get(..value.len().saturating_sub(1))
                .filter(|s| *s != value)
            {
                assert_eq!(strip_json_string(&text, shorter), None, "{value:?}");
            }
            assert_eq!(
                strip_json_string(&literal[..literal.len() - 1], value),
                None
            );
        }
        // The same characters written another way (`\u0041` for `A`) are another text: canonical
        // JSON is compared as serde_json writes it.
        assert_eq!(strip_json_string("\"\\u0041\"", "A"), None);
    }
}
