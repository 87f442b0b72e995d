//! What one submission of a job consists of, stored so the last good one can be redeployed exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::flink::RunRequest;
use crate::secrets::{self, SecretError};
use crate::spec::program::Program;
use crate::spec::{Artifact, DesiredJob, JobKind, JobType, UpgradeMode};

/// The runner JAR's entry points (`runner/src`).
pub const SQL_RUNNER_CLASS: &str = "dev.flinkgitops.runner.SqlRunner";
/// See [`SQL_RUNNER_CLASS`].
pub const PYTHON_RUNNER_CLASS: &str = "dev.flinkgitops.runner.PythonRunner";
/// The name the agent's runner JAR is uploaded under.
pub const RUNNER_JAR_NAME: &str = "flink-gitops-runner.jar";

/// Everything needed to submit one version of a job, independent of the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The spec's job id.
    pub job_id: String,
    /// Stream or batch.
    pub job_type: JobType,
    /// SHA-256 of the JAR (the cache file name, and the key of uploaded JARs).
    pub jar_sha256: String,
    /// Name the JAR is uploaded under.
    pub jar_name: String,
    /// Main class override.
    pub entry_class: Option<String>,
    /// Program arguments.
    pub args: Vec<String>,
    /// Run parallelism (`None`: the cluster default, read when submitting).
    pub parallelism: Option<u32>,
    /// Per-job options (tags and retention added by the agent).
    pub flink_configuration: BTreeMap<String, String>,
    /// Where this job's savepoints go.
    pub savepoint_dir: String,
    /// How state moves on upgrade.
    pub upgrade_mode: UpgradeMode,
    /// Allow unclaimed savepoint state.
    pub allow_non_restored_state: bool,
    /// Health gate.
    pub health: Health,
    /// Checkpointing configured in the spec.
    pub checkpointing: bool,
    /// The canonical hash of the spec (and artifact) this came from.
    pub spec_hash: String,
    /// The canonical JSON of the spec this came from.
    pub spec_json: String,
    /// The commit this came from.
    pub commit: String,
    /// Where the JAR is fetched from when it is not in the spec repo; checked against `jar_sha256`
    /// (the spec's pin) and its detached signature before it is cached or uploaded.
    #[serde(default)]
    pub artifact_url: Option<String>,
    /// The spec demands a detached signature whatever the agent's policy.
    #[serde(default)]
    pub artifact_verification: bool,
    /// The state a new job starts from (the spec's one-shot `restore_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
    /// JAR, SQL or Python.
    #[serde(default = "jar_kind")]
    pub kind: JobKind,
    /// The SQL or Python program the runner JAR runs (`jar_sha256` is then the runner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<Program>,
}

fn one() -> u32 {
    1
}

fn jar_kind() -> JobKind {
    JobKind::Jar
}

/// The health gate, in milliseconds so it round-trips through JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// RUNNING this long.
    pub stable_for_ms: u64,
    /// Restarts tolerated.
    pub max_restarts: u32,
    /// One completed checkpoint needed (when checkpointing is on).
    pub require_checkpoint: bool,
    /// Completed checkpoints needed (when checkpoints are required); 1 unless the spec says more.
    #[serde(default = "one")]
    pub min_checkpoints: u32,
    /// Give up after this long.
    pub timeout_ms: u64,
    /// The newest completed checkpoint must be younger than this when the gate passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoint_age_ms: Option<u64>,
    /// Backpressure at or above this many thousandths restarts the stable window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backpressure_permille: Option<u16>,
}

impl Health {
    /// `stable_for` as a duration.
    pub fn stable_for(&self) -> Duration {
        Duration::from_millis(self.stable_for_ms)
    }

    /// `timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `max_checkpoint_age` as a duration.
    pub fn max_checkpoint_age(&self) -> Option<Duration> {
        self.max_checkpoint_age_ms.map(Duration::from_millis)
    }

    /// `max_backpressure` as a ratio (0..1).
    pub fn max_backpressure(&self) -> Option<f64> {
        self.max_backpressure_permille
            .map(|permille| f64::from(permille) / 1000.0)
    }
}

/// The key of the tags the agent adds to every job, readable back from `GET /jobs/:jid/config`.
pub const TAG_PREFIX: &str = "flink-gitops.";

impl Deployment {
    /// The deployment of a desired job at `commit`, whose JAR hashed to `jar_sha256`.
    pub fn of(job: &DesiredJob, commit: &str, jar_sha256: &str, config: &Config) -> Deployment {
        let spec = &job.spec;
        let mut options = spec.flink_configuration.clone();
        let spec_hash = job.spec_hash();
        let tags = format!(
            "{TAG_PREFIX}job-id:{},{TAG_PREFIX}spec-hash:{},{TAG_PREFIX}commit:{}",
            spec.job_id, spec_hash, commit
        );
        let merged_tags = match options.get("pipeline.global-job-parameters") {
            Some(existing) if !existing.is_empty() => format!("{existing},{tags}"),
            _ => tags,
        };
        options.insert("pipeline.global-job-parameters".into(), merged_tags);
        if !matches!(spec.artifact, Artifact::Path(_) | Artifact::Url(_)) {
            // A JAR names its own job; a SQL or Python program is named after its spec unless it
            // says otherwise (a SQL `SET 'pipeline.name'` wins over this).
            options
                .entry("pipeline.name".into())
                .or_insert_with(|| spec.job_id.clone());
        }
        if spec.job_type == JobType::Stream {
            // Cancelled jobs keep their checkpoints, so `last-state` and drift repair have state to start from.
            options
                .entry("execution.checkpointing.externalized-checkpoint-retention".into())
                .or_insert_with(|| "RETAIN_ON_CANCELLATION".into());
        }
        let file_name = |path: &str| path.rsplit('/').next().unwrap_or("job.jar").to_string();
        let jar_name = match (&spec.artifact, &spec.runner) {
            (Artifact::Path(path), _) => file_name(path.as_str()),
            (Artifact::Url(url), _) => file_name(url),
            (_, Some(runner)) => file_name(runner.as_str()),
            (_, None) => RUNNER_JAR_NAME.to_string(),
        };
        let entry_class = match spec.artifact {
            Artifact::Path(_) | Artifact::Url(_) => spec.entry_class.clone(),
            Artifact::Sql { .. } => Some(SQL_RUNNER_CLASS.to_string()),
            Artifact::Python { .. } => Some(PYTHON_RUNNER_CLASS.to_string()),
        };
        let jar_name = if jar_name.ends_with(".jar") {
            jar_name
        } else {
            format!("{jar_name}.jar")
        };
        Deployment {
            job_id: spec.job_id.clone(),
            job_type: spec.job_type,
            jar_sha256: jar_sha256.to_string(),
            jar_name,
            entry_class,
            args: spec.args.clone(),
            parallelism: spec.parallelism.map(|p| p.get()),
            flink_configuration: options,
            savepoint_dir: spec.savepoint_dir.clone().unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    config.flink.savepoint_dir.trim_end_matches('/'),
                    spec.job_id
                )
            }),
            upgrade_mode: spec.upgrade_mode,
            allow_non_restored_state: spec.allow_non_restored_state,
            health: Health {
                stable_for_ms: spec.health.stable_for.as_millis() as u64,
                max_restarts: spec.health.max_restarts,
                require_checkpoint: spec.health.require_checkpoint,
                min_checkpoints: spec.health.min_checkpoints.unwrap_or(1),
                timeout_ms: spec.health.timeout.as_millis() as u64,
                max_checkpoint_age_ms: spec
                    .health
                    .max_checkpoint_age
                    .map(|age| age.as_millis() as u64),
                max_backpressure_permille: spec
                    .health
                    .max_backpressure
                    .map(|ratio| (ratio.get() * 1000.0).round() as u16),
            },
            checkpointing: spec.checkpointing_enabled(),
            spec_hash,
            spec_json: job.canonical_json(),
            artifact_url: match &spec.artifact {
                Artifact::Url(url) => Some(url.clone()),
                _ => None,
            },
            artifact_verification: spec.artifact_verification,
            commit: commit.to_string(),
            kind: spec.artifact.kind(),
            program: job.program.clone(),
            restore_from: spec.restore_from.clone(),
        }
    }

    /// The `${secret:NAME}` names this deployment's SQL and arguments use.
    pub fn secret_names(&self) -> Result<Vec<String>, SecretError> {
        secrets::job_references(&self.args, self.program.as_ref()).map_err(|(_, e)| e)
    }

    /// The program arguments, with secrets filled in: the JAR's own, or the runner's (the SQL
    /// statements, or the Python files), so nothing has to be placed on the JobManager's host.
    fn program_args(
        &self,
        secret_values: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, SecretError> {
        let own_args = || {
            self.args
                .iter()
                .map(|arg| secrets::arg_substitute(arg, secret_values))
                .collect::<Result<Vec<_>, _>>()
        };
        match &self.program {
            None => own_args(),
            Some(program @ Program::Sql { .. }) => {
                let statements = program
                    .statements()
                    .map_err(|e| SecretError::BadReference {
                        reference: e.to_string(),
                    })?;
                let mut args = Vec::with_capacity(statements.len() * 2 + 1);
                if self.job_type == JobType::Batch {
                    args.push("--batch".to_string());
                }
                for statement in statements {
                    let flag = match statement.kind {
                        crate::spec::sql::StatementKind::Job => "--job",
                        _ => "--statement",
                    };
                    args.push(flag.to_string());
                    args.push(secrets::sql_substitute(&statement.text, secret_values)?);
                }
                Ok(args)
            }
            Some(Program::Python { entry, files }) => {
                use crate::spec::program::python_relative;
                let mut args = Vec::with_capacity(files.len() * 3 + 3);
                for file in files {
                    args.extend([
                        "--file".to_string(),
                        python_relative(entry, &file.path).to_string(),
                        file.base64.clone(),
                    ]);
                }
                args.extend([
                    "--entry".to_string(),
                    python_relative(entry, entry).to_string(),
                ]);
                args.push("--".to_string());
                args.extend(own_args()?);
                Ok(args)
            }
        }
    }

    /// The run request for this deployment as Flink job `flink_job_id`, restoring from `restore`
    /// if given, with `secret_values` (the values of [`Self::secret_names`]) filled in.
    pub fn run_request(
        &self,
        flink_job_id: &str,
        restore: Option<&str>,
        default_parallelism: u32,
        secret_values: &BTreeMap<String, String>,
    ) -> Result<RunRequest, SecretError> {
        Ok(RunRequest {
            entry_class: self.entry_class.clone(),
            program_args_list: self.program_args(secret_values)?,
            parallelism: self.parallelism.unwrap_or(default_parallelism),
            job_id: flink_job_id.to_string(),
            savepoint_path: restore.map(str::to_string),
            // NO_CLAIM leaves the savepoint untouched, so a rollback can start from it again.
            claim_mode: restore.map(|_| "NO_CLAIM".to_string()),
            allow_non_restored_state: self.allow_non_restored_state,
            flink_configuration: self.flink_configuration.clone(),
        })
    }
}

/// Why a submission is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingKind {
    /// First deployment.
    Create,
    /// New spec replacing a running one.
    Upgrade,
    /// Back from suspension.
    Resume,
    /// Drift repair of the same spec.
    Restart,
    /// The last good spec redeployed after a failed upgrade.
    Rollback,
}

/// A submission whose outcome is not known yet; survives crashes in the job's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Why.
    pub kind: PendingKind,
    /// What is being deployed.
    pub deployment: Deployment,
    /// The Flink job id chosen for it.
    pub flink_job_id: String,
    /// Its generation.
    pub generation: i64,
    /// The savepoint or checkpoint it starts from.
    pub restored_from: Option<String>,
    /// When it was submitted (epoch ms); failures after this belong to it.
    pub submitted_at_ms: i64,
    /// The revision being applied.
    pub head: String,
}
