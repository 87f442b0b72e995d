//! Reconciliation: moves the cluster to the verified head, one crash-safe step at a time.
//!
//! Every action on the cluster writes an intent to the audit log before it is attempted and an
//! outcome after. The job's row always describes its last *good* deployment; a submission in flight
//! lives in `pending_json` until the health gate promotes it or a rollback replaces it, so a crash at
//! any point is finished or undone by the next pass (`recover`).

mod batch;
pub mod deployment;
mod download;
pub mod health;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{Instrument, info, info_span, warn};

use crate::config::Config;
use crate::flink::{FlinkClient, FlinkError, JobOverview};
use crate::git::{GitError, GitSource};
use crate::plan::{Action, JobPlan, Observed, flink_job_prefix, is_alive};
use crate::revision::{
    RevisionError, TrustMaterial, VerifiedRevision, record_verified, recording_first_seen,
    verification_start, verify_revision,
};
use crate::spec::{Artifact, DesiredJob, JobType};
use crate::state::{JobRecord, StateError, StateStore};
use crate::trust::AllowedSignersError;
use crate::trust::artifacts::{JAR_SIZE_LIMIT, hash_jar};

pub use deployment::{Deployment, Pending, PendingKind};
use health::Verdict;

/// Why a pass could not run at all (as opposed to a job failing, which the report carries).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// allowed_signers or owners are unusable.
    #[error(transparent)]
    Trust(#[from] AllowedSignersError),
    /// The spec repository could not be fetched.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// The Flink client could not be built.
    #[error(transparent)]
    Flink(#[from] FlinkError),
    /// A background task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// How one job's reconciliation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done, and healthy.
    Ok,
    /// Nothing to do.
    Unchanged,
    /// The new version was unhealthy; the last good one runs again.
    RolledBack,
    /// Not attempted (why is in the message).
    Skipped,
    /// Failed; the message and root cause say why.
    Failed,
}

/// What happened to one job in a pass.
#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    /// The spec's job id.
    pub job_id: String,
    /// What the plan asked for.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// What was done, for people.
    pub message: String,
    /// Why it was planned.
    pub reasons: Vec<String>,
    /// The Flink job now representing it.
    pub flink_job_id: Option<String>,
    /// The savepoint taken or restored.
    pub savepoint: Option<String>,
    /// Flink's root cause of a failure.
    pub root_cause: Option<String>,
    /// Values the job's own code overrode, and other notes.
    pub warnings: Vec<String>,
}

impl JobOutcome {
    fn new(plan: &JobPlan, outcome: Outcome, message: impl Into<String>) -> JobOutcome {
        JobOutcome {
            job_id: plan.job_id.clone(),
            action: plan.action,
            outcome,
            message: message.into(),
            reasons: plan.reasons.clone(),
            flink_job_id: plan.flink_job_id.clone(),
            savepoint: None,
            root_cause: None,
            warnings: Vec::new(),
        }
    }
}

/// The result of one `apply` pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// The branch head.
    pub revision: Option<String>,
    /// Why the head was refused (`kind`, message); the cluster kept its state.
    pub refused: Option<(String, String)>,
    /// Why the cluster could not be reached; nothing was done.
    pub cluster_error: Option<String>,
    /// What was finished or undone from an interrupted earlier pass.
    pub recovered: Vec<String>,
    /// Per job.
    pub jobs: Vec<JobOutcome>,
    /// Jobs on the cluster the agent did not deploy (never touched).
    pub unmanaged: Vec<JobOverview>,
    /// JARs deleted because no job uses them.
    pub jars_deleted: Vec<String>,
}

impl ApplyReport {
    /// True when the head was applied and every job converged.
    pub fn converged(&self) -> bool {
        self.refused.is_none()
            && self.cluster_error.is_none()
            && self
                .jobs
                .iter()
                .all(|j| matches!(j.outcome, Outcome::Ok | Outcome::Unchanged))
    }
}

/// A step failed; the message names what and why.
#[derive(Debug, Clone)]
struct StepError {
    message: String,
    root_cause: Option<String>,
}

impl StepError {
    fn new(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            root_cause: None,
        }
    }
}

impl From<FlinkError> for StepError {
    fn from(error: FlinkError) -> StepError {
        let root_cause = match &error {
            FlinkError::Status { root_cause, .. } => Some(root_cause.clone()),
            _ => None,
        };
        StepError {
            message: error.to_string(),
            root_cause,
        }
    }
}

impl From<StateError> for StepError {
    fn from(error: StateError) -> StepError {
        StepError::new(error.to_string())
    }
}

/// Kills this process with SIGKILL when `FLINK_GITOPS_FAILPOINT` names this point (crash tests).
fn failpoint(name: &str) {
    if std::env::var("FLINK_GITOPS_FAILPOINT").is_ok_and(|v| v == name) {
        warn!(failpoint = name, "failpoint reached: killing this process");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::thread::sleep(Duration::from_secs(10));
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A deterministic trigger id per job instance: re-sending a stop after a crash never starts a second savepoint.
fn stop_trigger_id(flink_job_id: &str) -> String {
    hex::encode(&Sha256::digest(format!("flink-gitops/stop/{flink_job_id}").as_bytes())[..16])
}

fn generation_of(flink_job_id: &str) -> i64 {
    flink_job_id
        .get(16..)
        .and_then(|g| i64::from_str_radix(g, 16).ok())
        .unwrap_or(0)
}

/// The agent: the only writer of its state directory.
pub struct Agent {
    shutdown: tokio_util::sync::CancellationToken,
    /// The last verified revision: an unchanged head is neither verified nor parsed again.
    verified: Arc<Mutex<Option<VerifiedRevision>>>,
    config: Config,
    client: FlinkClient,
    store: Arc<Mutex<StateStore>>,
    trust: Arc<TrustMaterial>,
    cache_dir: PathBuf,
    /// Fetches `artifact_url` JARs (system roots, rustls).
    downloads: reqwest::Client,
    /// When the batch scheduler needs the next pass; recomputed by every pass.
    batch_wakeup: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

struct PassContext {
    head: String,
    default_parallelism: u32,
}

impl Agent {
    /// Takes the state directory (refusing if another agent holds it) and loads the trust material.
    pub fn open(config: Config) -> Result<Agent, AgentError> {
        let store = StateStore::open_exclusive(&config.state.dir)?;
        let trust = TrustMaterial::load(&config)?;
        let client = FlinkClient::from_config(&config.flink)?;
        let cache_dir = config.state.dir.join("artifacts");
        std::fs::create_dir_all(&cache_dir)
            .map_err(|e| AgentError::Config(format!("{}: {e}", cache_dir.display())))?;
        let downloads = reqwest::Client::builder()
            .connect_timeout(config.flink.request_timeout.min(Duration::from_secs(30)))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("flink-gitops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::Config(format!("HTTP client for artifact_url: {e}")))?;
        Ok(Agent {
            downloads,
            shutdown: tokio_util::sync::CancellationToken::new(),
            verified: Arc::new(Mutex::new(None)),
            config,
            client,
            store: Arc::new(Mutex::new(store)),
            trust: Arc::new(trust),
            cache_dir,
            batch_wakeup: Mutex::new(None),
        })
    }

    /// The Flink client.
    pub fn client(&self) -> &FlinkClient {
        &self.client
    }

    /// The configuration this agent runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Cancelled on shutdown: the step in progress finishes, no new step starts, and a deployment
    /// waiting for its health gate stays pending for the next start to judge.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.shutdown.clone()
    }

    /// The recorded jobs (for status endpoints).
    pub fn records(&self) -> Result<Vec<JobRecord>, StateError> {
        self.with_store(StateStore::jobs)
    }

    /// Fetches the spec repository and returns its head, without verifying or acting.
    pub async fn fetch_head(&self) -> Result<String, AgentError> {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || -> Result<String, AgentError> {
            let source = GitSource::open(&config.state.dir.join("repo.git"), &config.repo)?;
            Ok(source.fetch()?.to_string())
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
    }

    fn with_store<T>(
        &self,
        f: impl FnOnce(&StateStore) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let guard = self
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    fn intent(
        &self,
        head: &str,
        job_id: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<i64, StepError> {
        let id = self.with_store(|s| {
            s.audit_intent(Some(head), Some(job_id), action, &detail.to_string())
        })?;
        failpoint(&format!("before:{action}"));
        Ok(id)
    }

    fn outcome(
        &self,
        action: &str,
        intent: i64,
        result: &str,
        detail: serde_json::Value,
    ) -> Result<(), StepError> {
        if result == "ok" {
            failpoint(&format!("after:{action}"));
        }
        self.with_store(|s| s.audit_outcome(intent, result, &detail.to_string()))?;
        Ok(())
    }

    /// One pass: fetch, verify, recover, plan, act. Returns what happened; `Err` only when nothing could be done.
    pub async fn apply_once(&self) -> Result<ApplyReport, AgentError> {
        let mut report = ApplyReport::default();
        let (head, verified) = self.fetch_and_verify().await?;
        report.revision = Some(head.clone());
        let span = info_span!("reconcile", revision = %crate::spec::source::short_id(&head));
        async move {
            let revision = match verified {
                Ok(revision) => revision,
                Err(error) => {
                    warn!(kind = error.kind(), %error, "head refused; the cluster keeps the last verified state");
                    report.refused = Some((error.kind().to_string(), error.to_string()));
                    return Ok(report);
                }
            };
            let default_parallelism = match self.client.overview().await {
                Ok(_) => self.client.default_parallelism().await.unwrap_or(1),
                Err(error) => {
                    warn!(%error, "cluster unreachable: no actions, nothing marked applied");
                    report.cluster_error = Some(error.to_string());
                    return Ok(report);
                }
            };
            let pass = PassContext {
                head: head.clone(),
                default_parallelism,
            };
            *self
                .batch_wakeup
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
            report.recovered = self.recover(&pass).await;
            let cluster_jobs = match self.client.jobs().await {
                Ok(jobs) => jobs,
                Err(error) => {
                    report.cluster_error = Some(error.to_string());
                    return Ok(report);
                }
            };
            let records = self.with_store(StateStore::jobs)?;
            let plan = crate::plan::plan(&revision.desired, Observed::Jobs(&cluster_jobs), &records);
            report.unmanaged = plan.unmanaged.clone();
            let tasks = plan.jobs.iter().map(|entry| {
                let record = records.iter().find(|r| r.job_id == entry.job_id).cloned();
                let instance = entry
                    .flink_job_id
                    .as_ref()
                    .and_then(|jid| cluster_jobs.iter().find(|j| &j.jid == jid))
                    .cloned();
                let span = info_span!("job", revision = %crate::spec::source::short_id(&head), job_id = %entry.job_id);
                self.act(&pass, entry, &revision, record, instance).instrument(span)
            });
            report.jobs = futures::stream::iter(tasks)
                .buffer_unordered(self.config.reconcile.max_concurrency)
                .collect()
                .await;
            report.jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
            report.jars_deleted = self.delete_unused_jars(&head).await;
            let failed: Vec<String> = report
                .jobs
                .iter()
                .filter(|j| !matches!(j.outcome, Outcome::Ok | Outcome::Unchanged))
                .map(|j| format!("{}: {}", j.job_id, j.message))
                .collect();
            let (outcome, detail) = if failed.is_empty() { ("applied", None) } else { ("failed", Some(failed.join("; "))) };
            self.with_store(|s| s.record_revision_outcome(&head, outcome, detail.as_deref()))?;
            info!(outcome, jobs = report.jobs.len(), "pass finished");
            Ok(report)
        }
        .instrument(span)
        .await
    }

    async fn fetch_and_verify(
        &self,
    ) -> Result<(String, Result<VerifiedRevision, RevisionError>), AgentError> {
        let config = self.config.clone();
        let store = Arc::clone(&self.store);
        let trust = Arc::clone(&self.trust);
        let cache_dir = self.cache_dir.clone();
        let verified_cache = Arc::clone(&self.verified);
        tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
            let source = GitSource::open(&config.state.dir.join("repo.git"), &config.repo)?;
            let head = source.fetch()?;
            let cached = verified_cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
                .filter(|revision| revision.head == head);
            if let Some(revision) = cached {
                return Ok((head.to_string(), Ok(revision)));
            }
            let guard = store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let watermark = guard.meta("watermark")?;
            let start = verification_start(source.repo(), &config, watermark.as_deref())
                .map_err(AgentError::Config)?;
            let verified = verify_revision(
                source.repo(),
                &config,
                &trust,
                start,
                head,
                recording_first_seen(&guard),
            );
            match &verified {
                Ok(revision) => {
                    record_verified(&guard, revision)?;
                    guard.set_meta("watermark", &head.to_string())?;
                    cache_jars(source.repo(), revision, &cache_dir).map_err(AgentError::Config)?;
                    *verified_cache
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(revision.clone());
                }
                Err(error) => {
                    guard.record_revision_seen(&head.to_string())?;
                    guard.record_revision_outcome(
                        &head.to_string(),
                        "refused",
                        Some(&error.to_string()),
                    )?;
                }
            }
            Ok((head.to_string(), verified))
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
    }

    fn cache_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha256}.jar"))
    }

    /// The deployment of a desired job, if its JAR is known.
    fn deployment_for(
        &self,
        job: &DesiredJob,
        revision: &VerifiedRevision,
    ) -> Result<Deployment, StepError> {
        let sha = match (&job.spec.artifact, revision.artifacts.get(&job.spec.job_id)) {
            (Artifact::Path(_), Some(check)) => check.sha256.clone(),
            (Artifact::Url(url), _) => job
                .spec
                .artifact_sha256
                .clone()
                .ok_or_else(|| StepError::new(format!("artifact_url {url}: no sha256 pin")))?,
            (Artifact::Path(path), None) => {
                return Err(StepError::new(format!("{path}: JAR was not verified")));
            }
        };
        Ok(Deployment::of(
            job,
            &revision.head.to_string(),
            &sha,
            &self.config,
        ))
    }

    async fn act(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
        instance: Option<JobOverview>,
    ) -> JobOutcome {
        let desired = revision.desired.jobs.get(&entry.job_id);
        let recorded: Option<Deployment> = record.as_ref().and_then(|r| {
            r.deployment_json
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
        });
        let recorded_type = recorded.as_ref().map(|d| d.job_type);
        let batch = match desired {
            Some(job) => job.spec.job_type == JobType::Batch,
            None => recorded_type == Some(JobType::Batch),
        };
        let failed = |error: StepError| {
            warn!(error = %error.message, "job failed");
            let mut outcome = JobOutcome::new(entry, Outcome::Failed, error.message);
            outcome.root_cause = error.root_cause;
            outcome
        };
        if batch {
            if let Some(stream) = recorded.filter(|d| d.job_type == JobType::Stream)
                && let Some(running) = instance.as_ref().filter(|i| is_alive(&i.state))
            {
                // A stream job that became a batch job keeps its state in a savepoint.
                if let Err(error) = self
                    .stop_with_savepoint(
                        &pass.head,
                        &entry.job_id,
                        &running.jid,
                        &stream.savepoint_dir,
                    )
                    .await
                {
                    return failed(error);
                }
            }
            let record = match self.with_store(|s| s.job(&entry.job_id)) {
                Ok(fresh) => fresh.or(record),
                Err(error) => return failed(error.into()),
            };
            return self
                .batch_pass(pass, entry, desired, revision, record)
                .await
                .unwrap_or_else(failed);
        }
        let instance = if recorded_type == Some(JobType::Batch) {
            // A batch job that became a stream job: its runs end here, and the stream starts fresh.
            if let Err(error) = self
                .cancel_all_runs(pass, &entry.job_id, "the job became a stream job")
                .await
                .and_then(|()| Ok(self.with_store(|s| s.remove_schedule_cursor(&entry.job_id))?))
            {
                return failed(error);
            }
            None
        } else {
            instance
        };
        if entry.action == Action::Unchanged {
            return JobOutcome::new(entry, Outcome::Unchanged, "in sync");
        }
        if matches!(
            entry.action,
            Action::Create | Action::Upgrade | Action::Resume
        ) {
            match self.with_store(|s| s.failed_attempt(&entry.job_id, &pass.head)) {
                Ok(Some(reason)) => {
                    let mut outcome = JobOutcome::new(
                        entry,
                        Outcome::Skipped,
                        "failed at this revision before; not retried until the head changes",
                    );
                    outcome.root_cause = Some(reason);
                    return outcome;
                }
                Ok(None) => {}
                Err(e) => return JobOutcome::new(entry, Outcome::Failed, e.to_string()),
            }
        }
        info!(action = entry.action.as_str(), reasons = ?entry.reasons, "acting");
        let result = match (entry.action, desired) {
            (Action::Create, Some(job)) => self.create(pass, entry, job, revision, record).await,
            (Action::Upgrade, Some(job)) => {
                self.upgrade(pass, entry, job, revision, record, instance)
                    .await
            }
            (Action::Resume, Some(job)) => self.resume(pass, entry, job, revision, record).await,
            (Action::Restart, _) => self.restart(pass, entry, record, instance).await,
            (Action::Suspend, _) => {
                self.stop_and_record(pass, entry, record, instance, "suspended")
                    .await
            }
            (Action::Delete, _) => {
                self.stop_and_record(pass, entry, record, instance, "deleted")
                    .await
            }
            (Action::Adopt, Some(job)) => self.adopt(entry, job, revision, instance).await,
            _ => Err(StepError::new("inconsistent plan")),
        };
        result.unwrap_or_else(|error| {
            warn!(error = %error.message, "job failed");
            let mut outcome = JobOutcome::new(entry, Outcome::Failed, error.message);
            outcome.root_cause = error.root_cause;
            outcome
        })
    }

    async fn create(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        job: &DesiredJob,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
    ) -> Result<JobOutcome, StepError> {
        let deployment = self.deployment_for(job, revision)?;
        let row = record.unwrap_or_else(|| JobRecord {
            job_id: entry.job_id.clone(),
            commit_id: pass.head.clone(),
            status: "new".into(),
            ..JobRecord::default()
        });
        let pending = self
            .prepare(pass, &row, PendingKind::Create, deployment, None)
            .await?;
        self.submit_and_settle(pass, entry, row, pending).await
    }

    async fn resume(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        job: &DesiredJob,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
    ) -> Result<JobOutcome, StepError> {
        let row = record.ok_or_else(|| StepError::new("no record to resume"))?;
        let deployment = self.deployment_for(job, revision)?;
        let restore = row.last_savepoint.clone();
        let pending = self
            .prepare(pass, &row, PendingKind::Resume, deployment, restore)
            .await?;
        self.submit_and_settle(pass, entry, row, pending).await
    }

    async fn upgrade(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        job: &DesiredJob,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
        instance: Option<JobOverview>,
    ) -> Result<JobOutcome, StepError> {
        let mut row = record.ok_or_else(|| StepError::new("no record to upgrade"))?;
        let deployment = self.deployment_for(job, revision)?;
        // Upload (and check) the new JAR before touching the running job.
        self.ensure_jar(&pass.head, &deployment).await?;
        let alive = instance.as_ref().filter(|i| is_alive(&i.state));
        let restore = match (alive, deployment.upgrade_mode) {
            (Some(running), crate::spec::UpgradeMode::Savepoint) => Some(
                self.stop_with_savepoint(
                    &pass.head,
                    &entry.job_id,
                    &running.jid,
                    &deployment.savepoint_dir,
                )
                .await?,
            ),
            (Some(running), crate::spec::UpgradeMode::LastState) => {
                let checkpoint = self
                    .client
                    .checkpoints(&running.jid)
                    .await?
                    .latest
                    .completed
                    .and_then(|c| c.external_path)
                    .ok_or_else(|| StepError::new(format!("last-state upgrade: job {} has no completed checkpoint; the old job keeps running", running.jid)))?;
                self.cancel(&pass.head, &entry.job_id, &running.jid).await?;
                self.with_store(|s| {
                    row.last_savepoint = Some(checkpoint.clone());
                    s.put_job(&row)
                })?;
                Some(checkpoint)
            }
            (Some(running), crate::spec::UpgradeMode::Stateless) => {
                self.cancel(&pass.head, &entry.job_id, &running.jid).await?;
                None
            }
            (None, mode) => {
                let state = self.latest_state(&row, instance.as_ref()).await;
                if mode == crate::spec::UpgradeMode::Stateless {
                    None
                } else {
                    state
                }
            }
        };
        let row = self.with_store(|s| s.job(&entry.job_id))?.unwrap_or(row);
        let earlier = self.earlier_commit_with(&entry.job_id, &deployment.spec_hash);
        let pending = self
            .prepare(pass, &row, PendingKind::Upgrade, deployment, restore)
            .await?;
        let mut outcome = self.submit_and_settle(pass, entry, row, pending).await?;
        if let (Some(commit), Outcome::Ok) = (earlier, outcome.outcome) {
            outcome.message = format!(
                "{} (a rollback: this spec ran before, from commit {})",
                outcome.message,
                crate::spec::source::short_id(&commit)
            );
            let intent = self.intent(
                &pass.head,
                &entry.job_id,
                "rollback-by-revert",
                json!({"to_commit": commit}),
            )?;
            self.outcome(
                "rollback-by-revert",
                intent,
                "ok",
                json!({"flink_job_id": outcome.flink_job_id}),
            )?;
        }
        Ok(outcome)
    }

    async fn restart(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        record: Option<JobRecord>,
        instance: Option<JobOverview>,
    ) -> Result<JobOutcome, StepError> {
        let row = record.ok_or_else(|| StepError::new("no record to restart"))?;
        let deployment: Deployment = row
            .deployment_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| StepError::new("no recorded deployment to restart from"))?;
        let restore = match deployment.upgrade_mode {
            crate::spec::UpgradeMode::Stateless => None,
            _ => self.latest_state(&row, instance.as_ref()).await,
        };
        warn!(restore = ?restore, "drift: restarting our job");
        let pending = self
            .prepare(pass, &row, PendingKind::Restart, deployment, restore)
            .await?;
        self.submit_and_settle(pass, entry, row, pending).await
    }

    async fn stop_and_record(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        record: Option<JobRecord>,
        instance: Option<JobOverview>,
        status: &str,
    ) -> Result<JobOutcome, StepError> {
        let mut row = record.ok_or_else(|| StepError::new("no record"))?;
        let savepoint_dir = row
            .deployment_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<Deployment>(j).ok())
            .map(|d| d.savepoint_dir)
            .unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    self.config.flink.savepoint_dir.trim_end_matches('/'),
                    row.job_id
                )
            });
        let mut outcome = JobOutcome::new(entry, Outcome::Ok, "");
        match instance.as_ref().filter(|i| is_alive(&i.state)) {
            Some(running) => {
                let location = self
                    .stop_with_savepoint(&pass.head, &entry.job_id, &running.jid, &savepoint_dir)
                    .await?;
                outcome.message = format!("stopped {} with savepoint {location}", running.jid);
                outcome.savepoint = Some(location);
            }
            None => {
                outcome.message = "was not running; its last savepoint is kept".into();
                outcome.savepoint = row.last_savepoint.clone();
            }
        }
        row = self.with_store(|s| s.job(&row.job_id))?.unwrap_or(row);
        row.status = status.to_string();
        row.commit_id = pass.head.clone();
        self.with_store(|s| s.put_job(&row))?;
        let action = if status == "deleted" {
            "delete"
        } else {
            "suspend"
        };
        let intent = self.intent(
            &pass.head,
            &row.job_id,
            action,
            json!({"final_savepoint": row.last_savepoint}),
        )?;
        self.outcome(
            action,
            intent,
            "ok",
            json!({"status": status, "savepoint": row.last_savepoint}),
        )?;
        info!(status, savepoint = ?row.last_savepoint, "recorded");
        Ok(outcome)
    }

    async fn adopt(
        &self,
        entry: &JobPlan,
        job: &DesiredJob,
        revision: &VerifiedRevision,
        instance: Option<JobOverview>,
    ) -> Result<JobOutcome, StepError> {
        let found = instance.ok_or_else(|| StepError::new("the job to adopt vanished"))?;
        let tags = self
            .client
            .job_config(&found.jid)
            .await?
            .execution_config
            .user_config;
        let running_hash = tags
            .get(&format!("{}spec-hash", deployment::TAG_PREFIX))
            .cloned()
            .unwrap_or_default();
        let running_commit = tags
            .get(&format!("{}commit", deployment::TAG_PREFIX))
            .cloned()
            .unwrap_or_default();
        let deployment = self.deployment_for(job, revision)?;
        let matches_head = running_hash == deployment.spec_hash;
        let row = JobRecord {
            job_id: entry.job_id.clone(),
            spec_json: if matches_head {
                deployment.spec_json.clone()
            } else {
                String::new()
            },
            spec_hash: running_hash.clone(),
            commit_id: if running_commit.is_empty() {
                revision.head.to_string()
            } else {
                running_commit
            },
            flink_job_id: Some(found.jid.clone()),
            generation: generation_of(&found.jid),
            jar_sha256: matches_head.then(|| deployment.jar_sha256.clone()),
            status: "running".into(),
            deployment_json: matches_head
                .then(|| serde_json::to_string(&deployment).unwrap_or_default()),
            ..JobRecord::default()
        };
        self.with_store(|s| s.put_job(&row))?;
        let intent = self.intent(
            &revision.head.to_string(),
            &entry.job_id,
            "adopt",
            json!({"flink_job_id": found.jid}),
        )?;
        self.outcome("adopt", intent, "ok", json!({"matches_head": matches_head}))?;
        let mut outcome = JobOutcome::new(
            entry,
            Outcome::Ok,
            if matches_head {
                format!(
                    "adopted running job {} (it runs the head's spec)",
                    found.jid
                )
            } else {
                format!(
                    "adopted running job {}; it runs another spec and will be upgraded next pass",
                    found.jid
                )
            },
        );
        outcome.flink_job_id = Some(found.jid);
        Ok(outcome)
    }

    /// The freshest state of a job that is not running: its latest retained checkpoint, else the recorded savepoint.
    async fn latest_state(
        &self,
        row: &JobRecord,
        instance: Option<&JobOverview>,
    ) -> Option<String> {
        if let Some(found) = instance
            && let Ok(stats) = self.client.checkpoints(&found.jid).await
        {
            let completed = stats.latest.completed.filter(|c| c.external_path.is_some());
            let savepoint = stats.latest.savepoint.filter(|c| c.external_path.is_some());
            let newest = match (completed, savepoint) {
                (Some(c), Some(s)) => Some(if c.latest_ack_timestamp >= s.latest_ack_timestamp {
                    c
                } else {
                    s
                }),
                (c, s) => c.or(s),
            };
            if let Some(path) = newest.and_then(|c| c.external_path) {
                return Some(path);
            }
        }
        row.last_savepoint.clone()
    }

    /// Chooses the next Flink job id, uploads the JAR and records the pending submission.
    async fn prepare(
        &self,
        pass: &PassContext,
        row: &JobRecord,
        kind: PendingKind,
        deployment: Deployment,
        restore: Option<String>,
    ) -> Result<Pending, StepError> {
        self.ensure_jar(&pass.head, &deployment).await?;
        let prefix = flink_job_prefix(&row.job_id);
        let cluster_jobs = self.client.jobs().await?;
        let alive: Vec<&JobOverview> = cluster_jobs
            .iter()
            .filter(|j| j.jid.starts_with(&prefix) && is_alive(&j.state))
            .collect();
        if let Some(other) = alive.first() {
            return Err(StepError::new(format!(
                "refusing to submit: job {} of ours is still {} (never two instances of one job)",
                other.jid, other.state
            )));
        }
        let highest_on_cluster = cluster_jobs
            .iter()
            .filter(|j| j.jid.starts_with(&prefix))
            .map(|j| generation_of(&j.jid))
            .max()
            .unwrap_or(0);
        let generation = row.generation.max(highest_on_cluster) + 1;
        let pending = Pending {
            kind,
            flink_job_id: crate::plan::flink_job_id(&row.job_id, generation),
            generation,
            restored_from: restore,
            submitted_at_ms: now_ms(),
            head: pass.head.clone(),
            deployment,
        };
        let mut updated = self
            .with_store(|s| s.job(&row.job_id))?
            .unwrap_or_else(|| row.clone());
        updated.generation = generation;
        updated.pending_json =
            Some(serde_json::to_string(&pending).map_err(|e| StepError::new(e.to_string()))?);
        self.with_store(|s| s.put_job(&updated))?;
        Ok(pending)
    }

    async fn submit_and_settle(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        row: JobRecord,
        pending: Pending,
    ) -> Result<JobOutcome, StepError> {
        if let Err(error) = self.submit(pass, &pending).await {
            if self.shutdown.is_cancelled() {
                return Err(error);
            }
            self.clear_pending(&row.job_id)?;
            let reason = format!("submit failed: {}", error.message);
            self.with_store(|s| {
                s.record_failed_attempt(
                    &row.job_id,
                    &pass.head,
                    &pending.deployment.spec_hash,
                    &reason,
                )
            })?;
            if pending.kind == PendingKind::Upgrade {
                let verdict = Verdict::Unhealthy {
                    reason,
                    root_cause: error.root_cause,
                };
                return self.roll_back(pass, entry, &pending, verdict).await;
            }
            return Err(error);
        }
        let verdict = health::wait_healthy(
            &self.client,
            &pending.flink_job_id,
            &pending.deployment,
            pending.submitted_at_ms,
            self.config.reconcile.poll_interval,
            &self.shutdown,
        )
        .await;
        self.settle(pass, entry, &pending, verdict).await
    }

    /// Finishes a submission: promote it when healthy, undo it (rolling back an upgrade) when not.
    async fn settle(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        pending: &Pending,
        verdict: Verdict,
    ) -> Result<JobOutcome, StepError> {
        let job_id = &pending.deployment.job_id;
        if verdict == Verdict::Interrupted {
            return Err(StepError::new(format!(
                "shutting down while {} waited for its health gate; the next start judges it",
                pending.flink_job_id
            )));
        }
        let intent = self.intent(
            &pass.head,
            job_id,
            "health",
            json!({"flink_job_id": pending.flink_job_id}),
        )?;
        match verdict {
            Verdict::Interrupted => Err(StepError::new("interrupted")),
            Verdict::Healthy { checkpoints } => {
                self.outcome("health", intent, "ok", json!({"checkpoints": checkpoints}))?;
                let warnings = self
                    .effective_config_warnings(pending, pass.default_parallelism)
                    .await;
                self.promote(pending)?;
                let mut outcome = JobOutcome::new(
                    entry,
                    Outcome::Ok,
                    match pending.kind {
                        PendingKind::Create => format!("deployed as {}", pending.flink_job_id),
                        PendingKind::Upgrade => format!(
                            "upgraded to {} from {}",
                            pending.flink_job_id,
                            pending
                                .restored_from
                                .as_deref()
                                .unwrap_or("no state (stateless)")
                        ),
                        PendingKind::Resume => format!(
                            "resumed as {} from {}",
                            pending.flink_job_id,
                            pending.restored_from.as_deref().unwrap_or("no savepoint")
                        ),
                        PendingKind::Restart => format!(
                            "restarted as {} from {}",
                            pending.flink_job_id,
                            pending.restored_from.as_deref().unwrap_or("no state")
                        ),
                        PendingKind::Rollback => format!("rolled back as {}", pending.flink_job_id),
                    },
                );
                outcome.flink_job_id = Some(pending.flink_job_id.clone());
                outcome.savepoint = pending.restored_from.clone();
                outcome.warnings = warnings;
                info!(flink_job_id = %pending.flink_job_id, "healthy");
                Ok(outcome)
            }
            Verdict::Unhealthy { reason, root_cause } => {
                self.outcome(
                    "health",
                    intent,
                    "failed",
                    json!({"reason": reason, "root_cause": root_cause}),
                )?;
                warn!(%reason, root_cause = ?root_cause, "deployment not healthy");
                let _ = self.cancel(&pass.head, job_id, &pending.flink_job_id).await;
                self.clear_pending(job_id)?;
                let full = match &root_cause {
                    Some(cause) => format!("{reason}: {cause}"),
                    None => reason.clone(),
                };
                self.with_store(|s| {
                    s.record_failed_attempt(
                        job_id,
                        &pending.head,
                        &pending.deployment.spec_hash,
                        &full,
                    )
                })?;
                match pending.kind {
                    PendingKind::Upgrade => {
                        self.roll_back(
                            pass,
                            entry,
                            pending,
                            Verdict::Unhealthy { reason, root_cause },
                        )
                        .await
                    }
                    PendingKind::Rollback => {
                        self.with_store(|s| {
                            if let Some(mut row) = s.job(job_id)? {
                                row.status = "failed".into();
                                s.put_job(&row)?;
                            }
                            Ok(())
                        })?;
                        Err(StepError {
                            message: format!("rollback failed too: {reason}"),
                            root_cause,
                        })
                    }
                    _ => Err(StepError {
                        message: reason,
                        root_cause,
                    }),
                }
            }
        }
    }

    async fn roll_back(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        failed: &Pending,
        verdict: Verdict,
    ) -> Result<JobOutcome, StepError> {
        let (reason, root_cause) = match verdict {
            Verdict::Unhealthy { reason, root_cause } => (reason, root_cause),
            Verdict::Healthy { .. } | Verdict::Interrupted => (String::new(), None),
        };
        let job_id = &failed.deployment.job_id;
        let row = self
            .with_store(|s| s.job(job_id))?
            .ok_or_else(|| StepError::new("no record to roll back to"))?;
        let last_good: Deployment = row
            .deployment_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| StepError {
                message: format!("{reason}; no last good deployment to roll back to"),
                root_cause: root_cause.clone(),
            })?;
        let intent = self.intent(
            &pass.head,
            job_id,
            "rollback",
            json!({"to_commit": last_good.commit, "from_savepoint": failed.restored_from, "reason": reason}),
        )?;
        warn!(to_commit = %last_good.commit, from = ?failed.restored_from, "rolling back to the last good spec");
        let pending = self
            .prepare(
                pass,
                &row,
                PendingKind::Rollback,
                last_good,
                failed.restored_from.clone(),
            )
            .await?;
        if let Err(error) = self.submit(pass, &pending).await {
            self.clear_pending(job_id)?;
            self.outcome(
                "rollback",
                intent,
                "failed",
                json!({"error": error.message}),
            )?;
            return Err(StepError::new(format!(
                "{reason}; rollback submit failed: {}",
                error.message
            )));
        }
        let verdict = health::wait_healthy(
            &self.client,
            &pending.flink_job_id,
            &pending.deployment,
            pending.submitted_at_ms,
            self.config.reconcile.poll_interval,
            &self.shutdown,
        )
        .await;
        let settled = Box::pin(self.settle(pass, entry, &pending, verdict)).await;
        self.outcome(
            "rollback",
            intent,
            if settled.is_ok() { "ok" } else { "failed" },
            json!({"flink_job_id": pending.flink_job_id}),
        )?;
        let mut outcome = settled?;
        outcome.outcome = Outcome::RolledBack;
        outcome.message = format!(
            "upgrade failed ({reason}); rolled back to commit {} as {}",
            crate::spec::source::short_id(&pending.deployment.commit),
            pending.flink_job_id
        );
        outcome.root_cause = root_cause;
        Ok(outcome)
    }

    fn promote(&self, pending: &Pending) -> Result<(), StepError> {
        let deployment = &pending.deployment;
        let intent = self.intent(
            &pending.head,
            &deployment.job_id,
            "promote",
            json!({"flink_job_id": pending.flink_job_id, "spec_hash": deployment.spec_hash, "commit": deployment.commit, "savepoint": pending.restored_from}),
        )?;
        self.with_store(|s| {
            let mut row = s.job(&deployment.job_id)?.unwrap_or_default();
            let jar = s.jar(&deployment.jar_sha256)?;
            row.job_id = deployment.job_id.clone();
            row.spec_json = deployment.spec_json.clone();
            row.spec_hash = deployment.spec_hash.clone();
            row.commit_id = deployment.commit.clone();
            row.flink_job_id = Some(pending.flink_job_id.clone());
            row.generation = row.generation.max(pending.generation);
            row.jar_id = jar.map(|j| j.jar_id);
            row.jar_sha256 = Some(deployment.jar_sha256.clone());
            if pending.restored_from.is_some() {
                row.last_savepoint = pending.restored_from.clone();
            }
            row.status = "running".into();
            row.deployment_json = serde_json::to_string(deployment).ok();
            row.pending_json = None;
            s.put_job(&row)
        })?;
        self.outcome("promote", intent, "ok", json!({"status": "running"}))?;
        Ok(())
    }

    /// The commit that last deployed exactly this spec of the job, if it ran before (a revert brings it back).
    fn earlier_commit_with(&self, job_id: &str, spec_hash: &str) -> Option<String> {
        let log = self.with_store(StateStore::audit_log).ok()?;
        log.iter()
            .rev()
            .filter(|e| {
                e.action == "promote" && e.phase == "intent" && e.job_id.as_deref() == Some(job_id)
            })
            .filter_map(|e| {
                e.detail
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            })
            .find(|d| d["spec_hash"] == spec_hash)
            .and_then(|d| d["commit"].as_str().map(str::to_string))
    }

    fn clear_pending(&self, job_id: &str) -> Result<(), StepError> {
        self.with_store(|s| {
            if let Some(mut row) = s.job(job_id)? {
                row.pending_json = None;
                s.put_job(&row)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    async fn submit(&self, pass: &PassContext, pending: &Pending) -> Result<(), StepError> {
        let deployment = &pending.deployment;
        let jar_id = self.ensure_jar(&pass.head, deployment).await?;
        let request = deployment.run_request(
            &pending.flink_job_id,
            pending.restored_from.as_deref(),
            pass.default_parallelism,
        );
        let intent = self.intent(
            &pass.head,
            &deployment.job_id,
            "submit",
            json!({"flink_job_id": pending.flink_job_id, "kind": pending.kind, "restore": pending.restored_from, "jar_sha256": deployment.jar_sha256}),
        )?;
        let result = self
            .run_jar_reuploading(&pass.head, deployment, &jar_id, &request)
            .await?;
        match result {
            Ok(returned) if returned == pending.flink_job_id => {
                self.outcome("submit", intent, "ok", json!({"flink_job_id": returned}))?;
                info!(flink_job_id = %returned, restore = ?pending.restored_from, "submitted");
                Ok(())
            }
            Ok(returned) => {
                self.outcome(
                    "submit",
                    intent,
                    "failed",
                    json!({"unexpected_job_id": returned}),
                )?;
                Err(StepError::new(format!(
                    "Flink returned job id {returned}, not the requested {}",
                    pending.flink_job_id
                )))
            }
            Err(error) => {
                self.outcome(
                    "submit",
                    intent,
                    "failed",
                    json!({"error": error.to_string()}),
                )?;
                Err(error.into())
            }
        }
    }

    /// Runs the uploaded JAR. The outer error is ours (state, upload); the inner one is Flink's answer.
    async fn run_jar_reuploading(
        &self,
        head: &str,
        deployment: &Deployment,
        jar_id: &str,
        request: &crate::flink::RunRequest,
    ) -> Result<Result<String, FlinkError>, StepError> {
        match self.client.run_jar(jar_id, request).await {
            Err(FlinkError::Status { root_cause, .. }) if root_cause.contains("does not exist") => {
                // The JobManager restarted and forgot its uploads: upload again, once.
                self.with_store(|s| s.remove_jar(&deployment.jar_sha256))?;
                let jar_id = self.ensure_jar(head, deployment).await?;
                Ok(self.client.run_jar(&jar_id, request).await)
            }
            other => Ok(other),
        }
    }

    /// Makes sure the JAR is on the cluster: reuse an upload with the same digest, else check the cached file again and upload it.
    async fn ensure_jar(&self, head: &str, deployment: &Deployment) -> Result<String, StepError> {
        let sha = &deployment.jar_sha256;
        if let Some(known) = self.with_store(|s| s.jar(sha))? {
            let on_cluster = self.client.jars().await?;
            if on_cluster.iter().any(|j| j.id == known.jar_id) {
                return Ok(known.jar_id);
            }
        }
        let path = self.cache_path(sha);
        if let Some(url) = &deployment.artifact_url
            && !path.exists()
        {
            self.download_jar(head, deployment, url, &path).await?;
        }
        let check_path = path.clone();
        let digest = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&check_path)?;
            hash_jar(file, &check_path.display().to_string(), JAR_SIZE_LIMIT)
                .map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| StepError::new(e.to_string()))?
        .map_err(|e| StepError::new(format!("JAR cache {}: {e}", path.display())))?;
        if &digest.sha256 != sha {
            return Err(StepError::new(format!(
                "JAR cache {} has sha256 {}, expected {sha}: refusing to upload",
                path.display(),
                digest.sha256
            )));
        }
        let intent = self.intent(
            head,
            &deployment.job_id,
            "upload",
            json!({"jar_sha256": sha, "name": deployment.jar_name}),
        )?;
        match self.client.upload_jar_as(&path, &deployment.jar_name).await {
            Ok(jar_id) => {
                self.with_store(|s| s.put_jar(sha, &jar_id))?;
                self.outcome("upload", intent, "ok", json!({"jar_id": jar_id}))?;
                Ok(jar_id)
            }
            Err(error) => {
                self.outcome(
                    "upload",
                    intent,
                    "failed",
                    json!({"error": error.to_string()}),
                )?;
                Err(error.into())
            }
        }
    }

    /// Stop-with-savepoint; the savepoint is recorded on the job before this returns.
    async fn stop_with_savepoint(
        &self,
        head: &str,
        job_id: &str,
        flink_job_id: &str,
        target: &str,
    ) -> Result<String, StepError> {
        let trigger = stop_trigger_id(flink_job_id);
        let intent = self.intent(
            head,
            job_id,
            "stop",
            json!({"flink_job_id": flink_job_id, "trigger_id": trigger, "target": target}),
        )?;
        match self.poll_stop(flink_job_id, target, &trigger).await {
            Ok(location) => {
                failpoint("after:stop");
                self.record_savepoint(job_id, &location)?;
                self.outcome("stop", intent, "ok", json!({"savepoint": location}))?;
                self.wait_terminal(flink_job_id).await;
                info!(savepoint = %location, "stopped with savepoint");
                Ok(location)
            }
            Err(error) => {
                self.outcome(
                    "stop",
                    intent,
                    "failed",
                    json!({"error": error.message, "root_cause": error.root_cause}),
                )?;
                Err(StepError {
                    message: format!(
                        "savepoint of {flink_job_id} failed, the job keeps running: {}",
                        error.message
                    ),
                    root_cause: error.root_cause,
                })
            }
        }
    }

    async fn poll_stop(
        &self,
        flink_job_id: &str,
        target: &str,
        trigger: &str,
    ) -> Result<String, StepError> {
        self.client
            .stop_with_savepoint(flink_job_id, target, trigger)
            .await?;
        let deadline = tokio::time::Instant::now() + self.config.reconcile.savepoint_timeout;
        loop {
            let poll = self.client.savepoint_status(flink_job_id, trigger).await?;
            if poll.status.id == "COMPLETED" {
                let operation = poll.operation.unwrap_or_default();
                if let Some(location) = operation.location {
                    return Ok(location);
                }
                let cause = operation
                    .failure_cause
                    .and_then(|c| c.stack_trace.or(c.class))
                    .map(|t| crate::flink::root_cause(&t));
                return Err(StepError {
                    message: "savepoint failed".into(),
                    root_cause: cause,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StepError::new(format!(
                    "savepoint not completed within {}",
                    crate::util::format_duration(self.config.reconcile.savepoint_timeout)
                )));
            }
            tokio::time::sleep(
                self.config
                    .reconcile
                    .poll_interval
                    .min(Duration::from_millis(500)),
            )
            .await;
        }
    }

    fn record_savepoint(&self, job_id: &str, location: &str) -> Result<(), StepError> {
        self.with_store(|s| {
            if let Some(mut row) = s.job(job_id)? {
                row.last_savepoint = Some(location.to_string());
                s.put_job(&row)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    async fn cancel(&self, head: &str, job_id: &str, flink_job_id: &str) -> Result<(), StepError> {
        let intent = self.intent(
            head,
            job_id,
            "cancel",
            json!({"flink_job_id": flink_job_id}),
        )?;
        match self.client.cancel(flink_job_id).await {
            // 409: already terminal; 404: gone. Either way it no longer runs.
            Ok(())
            | Err(FlinkError::Status {
                status: 409 | 404, ..
            }) => {
                self.outcome("cancel", intent, "ok", json!({}))?;
                self.wait_terminal(flink_job_id).await;
                Ok(())
            }
            Err(error) => {
                self.outcome(
                    "cancel",
                    intent,
                    "failed",
                    json!({"error": error.to_string()}),
                )?;
                Err(error.into())
            }
        }
    }

    /// Waits (bounded) until the REST cache shows the job terminal, so the duplicate guard sees the truth.
    async fn wait_terminal(&self, flink_job_id: &str) {
        for _ in 0..60 {
            match self.client.job(flink_job_id).await {
                Ok(job) if !is_alive(&job.state) => return,
                Err(e) if e.is_not_found() => return,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn effective_config_warnings(
        &self,
        pending: &Pending,
        default_parallelism: u32,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        let deployment = &pending.deployment;
        let jid = &pending.flink_job_id;
        if let Some(wanted) = deployment
            .flink_configuration
            .get("execution.checkpointing.interval")
        {
            let wanted_ms = wanted.trim_end_matches(" ms").trim().parse::<i64>().ok();
            if let (Ok(effective), Some(wanted_ms)) =
                (self.client.checkpoint_config(jid).await, wanted_ms)
                && effective.interval != wanted_ms
            {
                warnings.push(format!(
                    "the job's code overrides the checkpoint interval: {wanted_ms} ms in the spec, {} ms in effect",
                    effective.interval
                ));
            }
        }
        let wanted_parallelism = deployment.parallelism.unwrap_or(default_parallelism) as i64;
        if let Ok(config) = self.client.job_config(jid).await {
            let effective = config.execution_config.job_parallelism;
            if effective > 0 && effective != wanted_parallelism {
                warnings.push(format!(
                    "the job's code overrides parallelism: {wanted_parallelism} requested, {effective} in effect"
                ));
            }
        }
        for warning in &warnings {
            warn!("{warning}");
        }
        warnings
    }

    /// Finishes or undoes work a crash interrupted: open stop intents and pending submissions.
    async fn recover(&self, pass: &PassContext) -> Vec<String> {
        let mut recovered = Vec::new();
        let open = match self.with_store(StateStore::open_intents) {
            Ok(open) => open,
            Err(e) => return vec![format!("cannot read open intents: {e}")],
        };
        for intent in open {
            let detail: serde_json::Value = intent
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_default();
            let job_id = intent.job_id.clone().unwrap_or_default();
            let note = if intent.action == "stop" {
                let jid = detail["flink_job_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let trigger = detail["trigger_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let target = detail["target"].as_str().unwrap_or_default().to_string();
                // Re-sending the same trigger id never starts a second savepoint; it returns the first one's result.
                let location = match self.poll_stop(&jid, &target, &trigger).await {
                    Ok(location) => Some(location),
                    Err(_) => self
                        .client
                        .checkpoints(&jid)
                        .await
                        .ok()
                        .and_then(|c| c.latest.savepoint)
                        .and_then(|s| s.external_path),
                };
                match location {
                    Some(location) => {
                        let _ = self.record_savepoint(&job_id, &location);
                        self.wait_terminal(&jid).await;
                        let _ = self.with_store(|s| {
                            s.audit_outcome(
                                intent.id,
                                "recovered",
                                &json!({"savepoint": location}).to_string(),
                            )
                        });
                        format!(
                            "{job_id}: interrupted stop of {jid} completed; savepoint {location} recorded"
                        )
                    }
                    None => {
                        let _ = self.with_store(|s| s.audit_outcome(intent.id, "abandoned", "{}"));
                        format!(
                            "{job_id}: interrupted stop of {jid} left no savepoint; the job was not stopped"
                        )
                    }
                }
            } else {
                let _ = self.with_store(|s| s.audit_outcome(intent.id, "interrupted", "{}"));
                format!("{job_id}: {} was interrupted by a restart", intent.action)
            };
            warn!(recovery = %note);
            recovered.push(note);
        }
        let rows = self.with_store(StateStore::jobs).unwrap_or_default();
        for row in rows.into_iter().filter(|r| r.pending_json.is_some()) {
            let Some(pending) = row
                .pending_json
                .as_deref()
                .and_then(|j| serde_json::from_str::<Pending>(j).ok())
            else {
                let _ = self.clear_pending(&row.job_id);
                continue;
            };
            let placeholder = JobPlan {
                job_id: row.job_id.clone(),
                action: Action::Upgrade,
                reasons: vec!["recovering an interrupted deployment".into()],
                flink_job_id: Some(pending.flink_job_id.clone()),
                flink_state: None,
            };
            let note = match self.client.job(&pending.flink_job_id).await {
                Err(e) if e.is_not_found() => {
                    let _ = self.clear_pending(&row.job_id);
                    format!(
                        "{}: submission of {} never reached the cluster; will redo",
                        row.job_id, pending.flink_job_id
                    )
                }
                Err(e) => format!("{}: cannot check {}: {e}", row.job_id, pending.flink_job_id),
                Ok(_) => {
                    let verdict = health::wait_healthy(
                        &self.client,
                        &pending.flink_job_id,
                        &pending.deployment,
                        pending.submitted_at_ms,
                        self.config.reconcile.poll_interval,
                        &self.shutdown,
                    )
                    .await;
                    match self.settle(pass, &placeholder, &pending, verdict).await {
                        Ok(outcome) => format!(
                            "{}: interrupted deployment finished: {}",
                            row.job_id, outcome.message
                        ),
                        Err(error) => format!(
                            "{}: interrupted deployment failed: {}",
                            row.job_id, error.message
                        ),
                    }
                }
            };
            warn!(recovery = %note);
            recovered.push(note);
        }
        recovered
    }

    /// Deletes uploaded JARs that no job record or pending deployment uses.
    async fn delete_unused_jars(&self, head: &str) -> Vec<String> {
        let (jars, rows) = match self.with_store(|s| Ok((s.jars()?, s.jobs()?))) {
            Ok(found) => found,
            Err(_) => return Vec::new(),
        };
        let runs = self.with_store(|s| s.active_runs(None)).unwrap_or_default();
        let mut used: BTreeMap<String, ()> = BTreeMap::new();
        for run in &runs {
            used.insert(run.jar_sha256.clone(), ());
        }
        for row in &rows {
            let keeps_jar = match row.status.as_str() {
                "running" | "suspended" | "failed" => true,
                // A batch job between runs keeps its JAR unless it asked for clean-up.
                batch::SCHEDULED => !cleanup_on_completion(&row.spec_json),
                _ => false,
            };
            if keeps_jar && let Some(sha) = &row.jar_sha256 {
                used.insert(sha.clone(), ());
            }
            if let Some(pending) = row
                .pending_json
                .as_deref()
                .and_then(|j| serde_json::from_str::<Pending>(j).ok())
            {
                used.insert(pending.deployment.jar_sha256, ());
            }
        }
        let mut deleted = Vec::new();
        for jar in jars.into_iter().filter(|j| !used.contains_key(&j.sha256)) {
            let Ok(intent) = self.with_store(|s| {
                s.audit_intent(
                    Some(head),
                    None,
                    "delete-jar",
                    &json!({"jar_id": jar.jar_id}).to_string(),
                )
            }) else {
                continue;
            };
            let result = match self.client.delete_jar(&jar.jar_id).await {
                // 400: Flink says the file no longer exists.
                Ok(())
                | Err(FlinkError::Status {
                    status: 400 | 404, ..
                }) => "ok",
                Err(_) => "failed",
            };
            let _ = self.with_store(|s| s.audit_outcome(intent, result, "{}"));
            if result == "ok" {
                let _ = self.with_store(|s| s.remove_jar(&jar.sha256));
                deleted.push(jar.jar_id);
            }
        }
        deleted
    }
}

fn cleanup_on_completion(spec_json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(spec_json)
        .ok()
        .and_then(|v| v["spec"]["batch"]["cleanup_on_completion"].as_bool())
        .unwrap_or(false)
}

/// Writes each verified in-repo JAR of the revision into the cache, named by its sha256.
fn cache_jars(
    repo: &git2::Repository,
    revision: &VerifiedRevision,
    cache_dir: &std::path::Path,
) -> Result<(), String> {
    let tree = crate::spec::GitTree::new(repo, revision.head).map_err(|e| e.to_string())?;
    for check in revision.artifacts.values() {
        let target = cache_dir.join(format!("{}.jar", check.sha256));
        if target.exists() {
            continue;
        }
        let path = crate::spec::RepoPath::parse(&check.path)?;
        let resolved = crate::spec::SpecTree::resolve_file(&tree, &path)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} vanished", check.path))?;
        let blob_id = tree.blob_id(&resolved).map_err(|e| e.to_string())?;
        let blob = repo
            .find_blob(blob_id)
            .map_err(|e| e.message().to_string())?;
        let partial = cache_dir.join(format!("{}.jar.partial", check.sha256));
        std::fs::write(&partial, blob.content())
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        std::fs::rename(&partial, &target).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(())
}
