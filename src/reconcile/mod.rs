//! Reconciliation: moves the cluster to the verified head, one crash-safe step at a time.
//!
//! A pass fetches and verifies the head, handles operator requests, closes audit intents a crash
//! left open, plans (desired × observed × recorded, including each job's lifecycle phase), and
//! drives every job that needs it through its phases ([`lifecycle`]). Every action on the cluster
//! writes an intent to the audit log before it is attempted and an outcome after; the phase that
//! follows a Flink call is recorded before the call, so a crash at any point is continued by the
//! next pass from the recorded phase.

mod batch;
pub mod deployment;
mod download;
mod executor;
pub mod health;
mod jars;
pub mod lifecycle;
mod monitor;
mod notifications;
pub mod policy;
mod report;
pub mod restore;
mod revision_rollback;
mod savepoints;
mod waves;

use crate::state::AuditAction;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::runtime::RuntimeFlavor;
use tracing::{Instrument, info, info_span, warn};

use crate::config::Config;
use crate::flink::{FlinkClient, FlinkError, JobOverview};
use crate::git::{GitError, GitSource};
use crate::plan::{JobPlan, Observed, is_alive};
use crate::revision::{
    FoldedRevision, RevisionError, TrustMaterial, VerifiedRevision, record_verified,
    recording_first_seen, verification_start, verify_revision,
};
use crate::spec::{DesiredJob, JobType};
use crate::state::{DbIdentity, JobRecord, StateError, StateStore};
use crate::trust::AllowedSignersError;
use crate::trust::commits::Start;

pub use deployment::{Deployment, Pending, PendingKind};
pub use executor::new_trigger_id;
use jars::cache_jars;
use lifecycle::Phase;
pub use policy::StepError;
pub use report::{ApplyReport, JobOutcome, JobProbe, Outcome, RunFailure};

/// For `--accept-rollback-to`: why the head needs accepting (the refusal it overrides), or `None`
/// when it descends from the watermark anyway. The named commit must be the head: an operator
/// accepts the commit they looked at, not whatever the branch points to by then.
fn accepted_rollback(
    repo: &git2::Repository,
    acceptance: &RollbackAcceptance,
    head: git2::Oid,
    start: &Result<Start, String>,
) -> Result<Option<String>, AgentError> {
    let named = repo
        .revparse_single(&acceptance.commit)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| {
            AgentError::Config(format!(
                "--accept-rollback-to {}: {}",
                acceptance.commit,
                e.message()
            ))
        })?;
    if named != head {
        return Err(AgentError::Config(format!(
            "--accept-rollback-to {named}: the branch head is {head}, not that commit; nothing was accepted"
        )));
    }
    Ok(match start {
        Err(problem) => Some(problem.clone()),
        Ok(Start::Watermark(w) | Start::Kept(w))
            if *w != head && !repo.graph_descendant_of(head, *w).unwrap_or(false) =>
        {
            Some(format!("the head does not descend from the watermark {w}"))
        }
        Ok(_) => {
            info!(%head, "--accept-rollback-to: the head descends from the watermark; nothing to accept");
            None
        }
    })
}

/// The cluster as a pass reads it: (default parallelism, checkpoint folder, Python executable),
/// and its jobs, which can fail on their own.
struct ClusterView {
    settings: (u32, Option<String>, Option<Option<String>>),
    slots: crate::plan::slots::ClusterSlots,
    jobs: Result<Vec<JobOverview>, FlinkError>,
}

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

/// Kills this process with SIGKILL when `FLINK_GITOPS_FAILPOINT` names this point (crash tests;
/// compiled in only with the `failpoints` feature).
#[cfg(feature = "failpoints")]
fn failpoint(name: &str) {
    if std::env::var("FLINK_GITOPS_FAILPOINT").is_ok_and(|v| v == name) {
        warn!(failpoint = name, "failpoint reached: killing this process");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::thread::sleep(Duration::from_secs(10));
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn failpoint(_name: &str) {}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
    kept_revision: Arc<Mutex<Option<KeptRevision>>>,
    config: Config,
    client: FlinkClient,
    store: Arc<Mutex<StateStore>>,
    trust: Arc<TrustMaterial>,
    cache_dir: PathBuf,
    /// Fetches `artifact_url` JARs (system roots, rustls; redirects only to https).
    /// Fetches `artifact_url` JARs; built on first use (building one reads the system's CA
    /// certificates, which a pass without downloads does not need).
    downloads: std::sync::OnceLock<reqwest::Client>,
    /// When the batch scheduler needs the next pass; recomputed by every pass.
    batch_wakeup: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// The database file as opened: checked before the pass writes, and by the service loop.
    state_identity: DbIdentity,
    /// An operator's one-shot acceptance of a head that does not descend from the watermark.
    accept_rollback: Option<RollbackAcceptance>,
    /// Whether a store call first hands its async worker over (see [`Agent::serving`]).
    hands_off_store_calls: bool,
    /// The sha256 of the configured runner JAR, pinned when the agent started: its cached copy is
    /// what SQL and Python jobs run on, whatever happens to `runner.jar` afterwards.
    runner_sha256: Option<String>,
    /// Sends alerts (short timeouts).
    alerts: std::sync::OnceLock<reqwest::Client>,
    /// Told when a pass queued alerts, so the service delivers them now.
    alerts_queued: Arc<tokio::sync::Notify>,
    /// A Python submission has the JobManager to itself (PyFlink's driver keeps process-wide
    /// state while it builds the job); others share it.
    submit_gate: tokio::sync::RwLock<()>,
}

/// The last verified revision as the agent keeps it: as verified, until the service folds it for
/// the idle time after its pass (see [`FoldedRevision`]). A command, which runs one pass, never
/// pays for folding.
#[derive(Clone)]
enum KeptRevision {
    Verified(Arc<VerifiedRevision>),
    Folded(Arc<FoldedRevision>),
}

impl KeptRevision {
    fn head(&self) -> git2::Oid {
        match self {
            KeptRevision::Verified(revision) => revision.head(),
            KeptRevision::Folded(folded) => folded.head(),
        }
    }

    fn revision(&self) -> Result<Arc<VerifiedRevision>, crate::revision::FoldError> {
        match self {
            KeptRevision::Verified(revision) => Ok(Arc::clone(revision)),
            KeptRevision::Folded(folded) => folded.unfold().map(Arc::new),
        }
    }
}

/// `apply --accept-rollback-to COMMIT`: this one pass may move the watermark to `commit` although
/// it does not descend from it. The commit must be the branch head and is still verified alone.
#[derive(Debug, Clone)]
pub struct RollbackAcceptance {
    /// The commit the operator names (any revision the mirror resolves).
    pub commit: String,
    /// Who accepted it, for the audit log.
    pub by: String,
}

/// What a pass knows of the cluster and the revision it applies.
pub(crate) struct PassContext {
    head: String,
    default_parallelism: u32,
    /// The cluster's checkpoint storage (`execution.checkpointing.dir`), where retained
    /// checkpoints can be found after Flink forgot their job.
    checkpoint_dir: Option<String>,
    /// `python.executable` of the cluster (without it, it cannot run PyFlink jobs); the outer
    /// `None` when the configuration could not be read.
    python_executable: Option<Option<String>>,
    /// Our jobs on the cluster when the pass began, by job prefix: every instance of a job that
    /// may be alive is one of these or one the pass submitted itself (recorded in its row).
    instances: std::collections::HashMap<String, Vec<JobOverview>>,
    /// The head's jobs whose failed health gate rolls back the whole revision, and which a
    /// revision rollback includes (`rollback: revision`, in the spec or by default).
    rollback_members: std::collections::BTreeSet<String>,
}

impl PassContext {
    /// The instances of `job_id` the cluster listed when the pass began.
    fn instances_of(&self, job_id: &str) -> &[JobOverview] {
        self.instances
            .get(crate::plan::flink_job_prefix(job_id).as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

impl Agent {
    /// Takes the state directory (refusing if another agent holds it) and loads the trust material.
    pub fn open(config: Config) -> Result<Agent, AgentError> {
        let store = StateStore::open_exclusive(&config.state.dir)?;
        let state_identity = store.identity().clone();
        let trust = TrustMaterial::load(&config)?;
        let client = FlinkClient::from_config(&config.flink)?;
        let cache_dir = config.state.dir.join("artifacts");
        std::fs::create_dir_all(&cache_dir)
            .map_err(|e| AgentError::Config(format!("{}: {e}", cache_dir.display())))?;
        let runner_sha256 = match &config.runner_jar {
            Some(jar) => Some(jars::pin_runner(jar, &cache_dir).map_err(AgentError::Config)?),
            None => None,
        };
        Ok(Agent {
            downloads: std::sync::OnceLock::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            kept_revision: Arc::new(Mutex::new(None)),
            config,
            client,
            store: Arc::new(Mutex::new(store)),
            trust: Arc::new(trust),
            cache_dir,
            batch_wakeup: Mutex::new(None),
            state_identity,
            accept_rollback: None,
            hands_off_store_calls: false,
            runner_sha256,
            submit_gate: tokio::sync::RwLock::new(()),
            alerts: std::sync::OnceLock::new(),
            alerts_queued: Arc::default(),
        })
    }

    /// Lets the next pass accept `acceptance.commit` as the head although it does not descend
    /// from the watermark (see [`RollbackAcceptance`]).
    pub fn accept_rollback(mut self, acceptance: RollbackAcceptance) -> Agent {
        self.accept_rollback = Some(acceptance);
        self
    }

    /// For the service, whose runtime also serves HTTP, runs timers and delivers alerts: a store
    /// call first hands its worker to another thread, so SQLite's waits never hold those up. A
    /// command runs one pass and nothing beside it, where each hand-off would only cost a thread
    /// switch (6–10 ms of a no-op pass over 1,000 jobs).
    pub fn serving(mut self) -> Agent {
        self.hands_off_store_calls = true;
        self
    }

    /// `Err(StateError::Lost)` once `state.db` was deleted or replaced under the agent: from then
    /// on its writes reach nobody, so it must stop. Costs one `stat`, and takes no lock.
    pub fn check_state(&self) -> Result<(), StateError> {
        self.state_identity.check()
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

    /// Every job's status from the last verified revision, the records and `cluster` (the jobs
    /// on the cluster, or none when it was not asked), through the one join in [`crate::plan::status`].
    pub fn job_statuses(
        &self,
        cluster: &[JobOverview],
    ) -> Result<Vec<crate::plan::status::JobStatus>, StateError> {
        let (records, last_runs, savepoints) =
            self.with_store(|s| Ok((s.jobs()?, s.last_runs()?, s.newest_savepoints()?)))?;
        let verified = self.last_verified();
        let head = verified.as_ref().map(|r| r.head().to_string());
        Ok(crate::plan::status::job_statuses(
            &crate::plan::status::StatusSources {
                desired: head
                    .as_deref()
                    .zip(verified.as_deref().map(VerifiedRevision::desired)),
                records: &records,
                cluster,
                last_runs: &last_runs,
                savepoints: &savepoints,
                now: chrono::Utc::now(),
            },
        ))
    }

    /// The revision last verified.
    fn last_verified(&self) -> Option<Arc<VerifiedRevision>> {
        let kept = self
            .kept_revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        kept.revision()
            .inspect_err(
                |error| warn!(%error, head = %kept.head(), "the kept revision cannot be unfolded"),
            )
            .ok()
    }

    /// Folds the revision the last pass verified, for the time until the next pass (the service
    /// calls it when a pass is over). One that cannot be folded is kept as it is.
    pub fn fold_kept_revision(&self) {
        let kept = self
            .kept_revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(KeptRevision::Verified(revision)) = kept else {
            return;
        };
        let folded = match revision.fold() {
            Ok(folded) => folded,
            Err(error) => {
                warn!(%error, head = %revision.head(), "the verified revision cannot be folded; it is kept as it is");
                return;
            }
        };
        let mut kept = self
            .kept_revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Unless a newer pass replaced it meanwhile.
        if matches!(&*kept, Some(KeptRevision::Verified(current)) if Arc::ptr_eq(current, &revision))
        {
            *kept = Some(KeptRevision::Folded(Arc::new(folded)));
        }
    }

    /// Frees the store's page cache, for the idle time between passes.
    pub fn release_cached_pages(&self) -> Result<(), StateError> {
        self.with_store(StateStore::release_cached_pages)
    }

    /// The soonest time after `after_ms` at which a job backing off is tried again.
    pub fn next_retry_at_ms(&self, after_ms: i64) -> Result<Option<i64>, StateError> {
        self.with_store(|s| s.next_retry_at_ms(after_ms))
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

    /// Runs `f` with the store. SQLite waits for the disk, and the lock for whoever holds it: in
    /// the service ([`Agent::serving`]) the worker first hands its other tasks to another thread,
    /// so the HTTP server and timers keep running meanwhile.
    fn with_store<T>(
        &self,
        f: impl FnOnce(&StateStore) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let run = || f(&self.store.lock().unwrap_or_else(PoisonError::into_inner));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime)
                if self.hands_off_store_calls
                    && runtime.runtime_flavor() == RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }

    /// The HTTP client for `artifact_url` downloads.
    fn downloads(&self) -> Result<&reqwest::Client, String> {
        if let Some(client) = self.downloads.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(
                self.config
                    .flink
                    .request_timeout
                    .min(Duration::from_secs(30)),
            )
            .read_timeout(Duration::from_secs(120))
            .redirect(download::redirect_policy())
            .user_agent(concat!("flink-gitops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client for artifact_url: {e}"))?;
        Ok(self.downloads.get_or_init(|| client))
    }

    fn intent(
        &self,
        head: &str,
        job_id: &str,
        action: AuditAction,
        detail: serde_json::Value,
    ) -> Result<i64, StepError> {
        let id = self.with_store(|s| {
            s.audit_intent(Some(head), Some(job_id), action, &detail.to_string())
        })?;
        failpoint(&format!("before:{}", action.as_str()));
        Ok(id)
    }

    fn outcome(
        &self,
        action: AuditAction,
        intent: i64,
        result: &str,
        detail: serde_json::Value,
    ) -> Result<(), StepError> {
        if result == "ok" {
            failpoint(&format!("after:{}", action.as_str()));
        }
        self.with_store(|s| s.audit_outcome(intent, result, &detail.to_string()))?;
        Ok(())
    }

    /// The one way the agent calls Flink to change something: the intent is written before the
    /// call, the outcome (with `ok_detail` of the answer, or the error) after it.
    async fn audited<T>(
        &self,
        head: &str,
        job_id: &str,
        action: AuditAction,
        detail: serde_json::Value,
        call: impl std::future::Future<Output = Result<T, StepError>>,
        ok_detail: impl FnOnce(&T) -> serde_json::Value,
    ) -> Result<T, StepError> {
        let intent = self.intent(head, job_id, action, detail)?;
        match call.await {
            Ok(value) => {
                self.outcome(action, intent, "ok", ok_detail(&value))?;
                Ok(value)
            }
            Err(error) => {
                self.outcome(
                    action,
                    intent,
                    "failed",
                    json!({"error": error.message, "root_cause": error.root_cause, "class": error.class}),
                )?;
                Err(error)
            }
        }
    }

    /// One pass: fetch, verify, handle requests, close interrupted intents, plan, act; then its
    /// events go to the outbox and what is due of the outbox to its targets. Returns what
    /// happened; `Err` only when nothing could be done.
    pub async fn apply_once(&self) -> Result<ApplyReport, AgentError> {
        let report = self.reconcile_once().await?;
        if !self.config.notify.is_empty() {
            self.deliver_events().await;
        }
        Ok(report)
    }

    /// One pass, its events put in the outbox; the service delivers them on its own task.
    pub async fn reconcile_once(&self) -> Result<ApplyReport, AgentError> {
        let report = self.pass().await?;
        self.queue_events(&report);
        Ok(report)
    }

    async fn pass(&self) -> Result<ApplyReport, AgentError> {
        let mut report = ApplyReport::default();
        // The cluster is read while the head is fetched and verified: neither waits for the other.
        let (verified, cluster) = tokio::join!(self.fetch_and_verify(), self.read_cluster());
        let (head, verified) = verified?;
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
            let ClusterView { settings, slots, jobs: cluster_jobs } = match cluster {
                Ok(view) => view,
                Err(error) => {
                    warn!(%error, "cluster unreachable: no actions, nothing marked applied");
                    report.cluster_error = Some(error.to_string());
                    return Ok(report);
                }
            };
            let (default_parallelism, checkpoint_dir, python_executable) = settings;
            let mut pass = PassContext {
                head: head.clone(),
                default_parallelism,
                checkpoint_dir,
                python_executable,
                instances: Default::default(),
                rollback_members: self.members_of(&revision),
            };
            *self
                .batch_wakeup
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
            let (recovered, records) = self.prepare_pass(&pass)?;
            report.recovered = recovered;
            let cluster_jobs = match cluster_jobs {
                Ok(jobs) => jobs,
                Err(error) => {
                    report.cluster_error = Some(error.to_string());
                    return Ok(report);
                }
            };
            pass.instances = crate::plan::group_by_job_prefix(&cluster_jobs)
                .into_iter()
                .map(|(prefix, jobs)| (prefix.to_string(), jobs.into_iter().cloned().collect()))
                .collect();
            let pass = pass;
            let plan = crate::plan::plan(
                revision.desired(),
                Observed::Jobs(&cluster_jobs),
                &records,
                now_ms(),
            );
            report.unmanaged = plan.unmanaged.clone();
            if self.slot_budget(&head, &plan, &revision, &records, &cluster_jobs, default_parallelism, slots, &mut report)? {
                return Ok(report);
            }
            // Keyed once: a lookup per job would make a pass quadratic in the number of jobs.
            let records_by_id: HashMap<String, JobRecord> =
                records.into_iter().map(|r| (r.job_id.clone(), r)).collect();
            let cluster_by_jid: HashMap<&str, &JobOverview> =
                cluster_jobs.iter().map(|j| (j.jid.as_str(), j)).collect();
            // In dependency order: stops downstream first, then starts upstream first.
            let graph = crate::plan::order::Graph::new(revision.desired(), records_by_id.values());
            report.jobs = self
                .act_in_order(&pass, &graph, &plan.jobs, &revision, records_by_id, &cluster_by_jid)
                .await;
            // `rollback: revision`: a failed job of a revision takes the revision's other jobs back.
            let (rolled_back, notes) = self.continue_revision_rollbacks(&pass, &graph).await;
            report.revision_rollbacks = notes;
            for mut outcome in rolled_back {
                match report.jobs.iter_mut().find(|j| j.job_id == outcome.job_id) {
                    Some(planned) => {
                        outcome.action = planned.action;
                        outcome.reasons = std::mem::take(&mut planned.reasons);
                        *planned = outcome;
                    }
                    None => report.jobs.push(outcome),
                }
            }
            report.jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
            report.probes = self.probe_watched_jobs(&revision, &report.jobs).await;
            report.savepoints = self.periodic_savepoints(&pass, &revision).await;
            report.savepoints.extend(self.apply_retention(&pass, &revision).await);
            report.jars_deleted = self.delete_unused_jars(&head).await;
            let failed: Vec<String> = report
                .jobs
                .iter()
                .filter(|j| !matches!(j.outcome, Outcome::Ok | Outcome::Unchanged))
                .map(|j| format!("{}: {}", j.job_id, j.message))
                .collect();
            let (outcome, detail) = if failed.is_empty() { ("applied", None) } else { ("failed", Some(failed.join("; "))) };
            // "applied" written into a deleted database would be read by nobody; say so instead.
            self.with_store(|s| {
                s.check_identity()?;
                s.record_revision_outcome(&head, outcome, detail.as_deref())
            })?;
            info!(outcome, jobs = report.jobs.len(), "pass finished");
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// What a pass needs from the cluster: that it answers, its settings, and its jobs.
    async fn read_cluster(&self) -> Result<ClusterView, FlinkError> {
        let overview = self.client.overview().await?;
        // Unreadable settings leave the Python executable unknown (`None`), not unset.
        let settings = match self.client.settings().await {
            Ok(found) => (
                found.default_parallelism,
                found.checkpoint_dir,
                Some(found.python_executable),
            ),
            Err(_) => (1, None, None),
        };
        Ok(ClusterView {
            settings,
            slots: crate::plan::slots::ClusterSlots::from(&overview),
            jobs: self.client.jobs().await,
        })
    }

    /// The slots the revision's jobs need against the cluster's (`reconcile.slot_budget`). A
    /// revision that does not fit is refused before any action (true: the pass ends here), or
    /// goes ahead with a warning; either is audited, a refusal once per revision.
    #[allow(clippy::too_many_arguments)]
    fn slot_budget(
        &self,
        head: &str,
        plan: &crate::plan::Plan,
        revision: &VerifiedRevision,
        records: &[JobRecord],
        cluster_jobs: &[JobOverview],
        default_parallelism: u32,
        slots: crate::plan::slots::ClusterSlots,
        report: &mut ApplyReport,
    ) -> Result<bool, StateError> {
        use crate::config::SlotBudgetMode;
        use crate::plan::slots::{SlotBudget, changes_slots, live_slots};
        if !changes_slots(plan) {
            return Ok(false);
        }
        let budget = SlotBudget::new(
            live_slots(
                plan,
                revision.desired(),
                records,
                cluster_jobs,
                default_parallelism,
            ),
            Some(slots),
        );
        if let Some(warning) = budget.rollback_warning() {
            warn!("{warning}");
            report.warnings.push(warning);
        }
        let Some(problem) = budget.refusal() else {
            return Ok(false);
        };
        let enforce = self.config.reconcile.slot_budget == SlotBudgetMode::Enforce;
        let message = format!("not enough task slots: {problem}");
        let detail = json!({
            "needs": budget.needs, "holds": budget.holds, "slots_total": slots.total,
            "slots_available": slots.available, "shortfall": budget.shortfall, "reason": message,
        })
        .to_string();
        self.with_store(|s| {
            s.check_identity()?;
            // The service tries a refused revision on every pass: one audit entry says it.
            let already = s.revision(head)?.is_some_and(|r| {
                r.outcome.as_deref() == Some("refused")
                    && r.detail.as_deref() == Some(message.as_str())
            });
            if !already {
                let intent = s.audit_intent(Some(head), None, AuditAction::SlotBudget, &detail)?;
                s.audit_outcome(intent, if enforce { "refused" } else { "warned" }, &detail)?;
            }
            if enforce {
                s.record_revision_outcome(head, "refused", Some(&message))?;
            }
            Ok(())
        })?;
        if enforce {
            warn!(%problem, "revision refused: its jobs cannot be scheduled; nothing running changes");
            report.refused = Some(("slots".into(), message));
        } else {
            warn!(%problem, "the revision's jobs may not all be scheduled (reconcile.slot_budget: warn)");
            report.warnings.push(message);
        }
        Ok(enforce)
    }

    /// Before planning: operator requests are applied, and audit intents that no recorded phase
    /// continues (their process died) are closed as interrupted, so every intent has an outcome.
    /// Returns what it did, for the report, and the job records as they now stand.
    fn prepare_pass(
        &self,
        pass: &PassContext,
    ) -> Result<(Vec<String>, Vec<JobRecord>), StateError> {
        let mut notes = Vec::new();
        self.with_store(|s| {
            for request in s.open_requests()? {
                let note = s.atomically(|s| {
                    let note = executor::apply_request(s, &pass.head, &request)?;
                    s.finish_request(request.id)?;
                    Ok(note)
                })?;
                info!(job_id = %request.job_id, by = %request.by, "{note}");
                notes.push(note);
            }
            let mut continued = std::collections::BTreeSet::new();
            let mut rows = s.jobs()?;
            for row in &mut rows {
                if executor::adopt_legacy_pending(row) {
                    s.put_job(row)?;
                    notes.push(format!(
                        "{}: a deployment in flight from an older agent continues as phase {}",
                        row.job_id, row.phase
                    ));
                }
                if row.phase_json.is_some()
                    && let Some(intent) = Phase::of_record(row)
                        .operation()
                        .and_then(|op| op.audit_intent)
                {
                    continued.insert(intent);
                }
            }
            // A revision rollback's own intent stays open until its last job settled.
            for rollback in s.unfinished_revision_rollbacks()? {
                continued.insert(rollback.audit_intent);
            }
            // `flink-gitops savepoint` runs beside the agent: its intent is its own while it waits.
            let manual_window =
                chrono::Duration::from_std(self.config.reconcile.savepoint_timeout * 2)
                    .unwrap_or(chrono::Duration::MAX);
            for intent in s.open_intents()? {
                if continued.contains(&intent.id) {
                    continue;
                }
                let recent = chrono::DateTime::parse_from_rfc3339(&intent.at)
                    .is_ok_and(|at| chrono::Utc::now().signed_duration_since(at) < manual_window);
                if intent.action == AuditAction::Savepoint.as_str() && recent {
                    continue;
                }
                s.audit_outcome(intent.id, "interrupted", "{}")?;
                let note = format!(
                    "{}: {} was interrupted (its phase continues it)",
                    intent.job_id.as_deref().unwrap_or("-"),
                    intent.action
                );
                warn!(recovery = %note);
                notes.push(note);
            }
            Ok(rows)
        })
        .map(|rows| (notes, rows))
    }

    async fn fetch_and_verify(
        &self,
    ) -> Result<(String, Result<Arc<VerifiedRevision>, RevisionError>), AgentError> {
        let config = self.config.clone();
        let store = Arc::clone(&self.store);
        let trust = Arc::clone(&self.trust);
        let cache_dir = self.cache_dir.clone();
        let kept_revision = Arc::clone(&self.kept_revision);
        let accept = self.accept_rollback.clone();
        tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
            let source = GitSource::open(&config.state.dir.join("repo.git"), &config.repo)?;
            let head = source.fetch()?;
            let kept = kept_revision
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .filter(|kept| kept.head() == head);
            if let Some(kept) = kept {
                match kept.revision() {
                    Ok(revision) => return Ok((head.to_string(), Ok(revision))),
                    Err(error) => {
                        warn!(%error, %head, "the kept revision cannot be unfolded; verifying the head again");
                    }
                }
            }
            // The store is held only to read and record, never while commits are checked or JARs
            // cached: the HTTP API, alert delivery and `flink-gitops savepoint` use it meanwhile.
            let lock = || store.lock().unwrap_or_else(PoisonError::into_inner);
            let guard = lock();
            // Nothing is verified into (nor a watermark written to) a database nobody will read.
            guard.check_identity()?;
            let watermark = guard.meta("watermark")?;
            let kept = crate::state::kept_watermark(&config.state.dir)?;
            let start = verification_start(
                source.repo(),
                &config,
                watermark.as_deref(),
                kept.as_deref(),
            );
            let accepted = match &accept {
                Some(acceptance) => accepted_rollback(source.repo(), acceptance, head, &start)?,
                None => None,
            };
            let start = match &accepted {
                // The operator vouches for the history; the head itself must still be signed.
                Some(_) => Start::HeadOnly,
                None => start.map_err(AgentError::Config)?,
            };
            let intent = match (&accepted, &accept) {
                (Some(refusal), Some(acceptance)) => Some(guard.audit_intent(
                    Some(&head.to_string()),
                    None,
                    AuditAction::AcceptRollback,
                    &json!({
                        "head": head.to_string(),
                        "watermark": watermark,
                        "kept_watermark": kept,
                        "refused_because": refusal,
                        "by": acceptance.by,
                    })
                    .to_string(),
                )?),
                _ => None,
            };
            drop(guard);
            let memo = crate::state::spec_memo_beside(&config.state.dir);
            let mut verified = verify_revision(
                source.repo(),
                &config,
                &trust,
                start,
                head,
                |commit| recording_first_seen(&lock())(commit),
                &memo,
            );
            let memo_update = verified.as_mut().ok().map(VerifiedRevision::take_memo_update);
            let verified = verified.map(Arc::new);
            let guard = lock();
            guard.check_identity()?;
            match &verified {
                Ok(revision) => {
                    record_verified(&guard, revision)?;
                    guard.set_watermark(&head.to_string())?;
                    if let Some((fresh, kept)) = &memo_update
                        && (!fresh.is_empty() || memo.len() != kept.len())
                    {
                        guard.keep_spec_memo(fresh, kept)?;
                    }
                    if let Some(intent) = intent {
                        warn!(head = %head, "rollback accepted by the operator: the watermark moved to the head");
                        guard.audit_outcome(intent, "ok", &json!({"watermark": head.to_string()}).to_string())?;
                    }
                    drop(guard);
                    cache_jars(
                        source.repo(),
                        revision,
                        &cache_dir,
                    ).map_err(AgentError::Config)?;
                    *kept_revision.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(KeptRevision::Verified(Arc::clone(revision)));
                }
                Err(error) => {
                    guard.record_revision_seen(&head.to_string())?;
                    guard.record_revision_outcome(
                        &head.to_string(),
                        "refused",
                        Some(&error.to_string()),
                    )?;
                    if let Some(intent) = intent {
                        guard.audit_outcome(intent, "refused", &json!({"error": error.to_string()}).to_string())?;
                    }
                }
            }
            Ok((head.to_string(), verified))
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
    }

    /// The jobs and their lifecycle, one job: batch jobs go to the batch scheduler, stream jobs
    /// through their phases.
    async fn act(
        &self,
        pass: &PassContext,
        entry: &JobPlan,
        revision: &VerifiedRevision,
        record: Option<JobRecord>,
        instance: Option<JobOverview>,
    ) -> JobOutcome {
        let desired = revision.desired().jobs.get(&entry.job_id);
        // A job whose applied spec is the desired one runs the job type it asks for: its recorded
        // deployment (kilobytes of JSON, for every job of every pass) need not be read.
        let in_sync = desired.filter(|job| record.as_ref().is_some_and(|r| r.applied_spec_is(job)));
        let recorded: Option<Deployment> = match in_sync {
            Some(_) => None,
            None => record.as_ref().and_then(|r| {
                r.deployment_json
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok())
            }),
        };
        let recorded_type = match in_sync {
            Some(job) => Some(job.spec.job_type),
            None => recorded.as_ref().map(|d| d.job_type),
        };
        let batch = match desired {
            Some(job) => job.spec.job_type == JobType::Batch,
            None => recorded_type == Some(JobType::Batch),
        };
        let failed = |error: StepError| {
            warn!(error = %error.message, "job failed");
            let mut outcome = JobOutcome::new(entry, Outcome::Retrying, error.message);
            outcome.root_cause = error.root_cause;
            outcome
        };
        if batch {
            if let Some(stream) = recorded.filter(|d| d.job_type == JobType::Stream)
                && let Some(running) = instance.as_ref().filter(|i| is_alive(&i.state))
            {
                // A stream job that became a batch job keeps its state in a savepoint.
                if let Err(error) = self
                    .stop_with_savepoint_now(
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
        self.drive(pass, entry, revision, record, instance).await
    }

    async fn adopt(
        &self,
        entry: &JobPlan,
        job: &DesiredJob,
        revision: &VerifiedRevision,
        instance: Option<JobOverview>,
    ) -> Result<JobOutcome, StepError> {
        let found = instance.ok_or_else(|| StepError::permanent("the job to adopt vanished"))?;
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
                revision.head().to_string()
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
            &revision.head().to_string(),
            &entry.job_id,
            AuditAction::Adopt,
            json!({"flink_job_id": found.jid}),
        )?;
        self.outcome(
            AuditAction::Adopt,
            intent,
            "ok",
            json!({"matches_head": matches_head}),
        )?;
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

    /// Stop-with-savepoint at once (a stream job turning into a batch job); the savepoint is recorded.
    async fn stop_with_savepoint_now(
        &self,
        head: &str,
        job_id: &str,
        flink_job_id: &str,
        target: &str,
    ) -> Result<String, StepError> {
        let trigger = executor::new_trigger_id(flink_job_id);
        let location = self
            .audited(
                head,
                job_id,
                AuditAction::Stop,
                json!({"flink_job_id": flink_job_id, "trigger_id": trigger, "target": target}),
                self.poll_stop(flink_job_id, target, &trigger),
                |location| json!({"savepoint": location}),
            )
            .await?;
        self.with_store(|s| {
            s.put_restore_point(job_id, &location, true, Some(flink_job_id), now_ms())?;
            if let Some(mut row) = s.job(job_id)? {
                row.last_savepoint = Some(location.clone());
                s.put_job(&row)?;
            }
            Ok(())
        })?;
        self.wait_terminal(flink_job_id).await;
        Ok(location)
    }

    pub(super) async fn poll_stop(
        &self,
        flink_job_id: &str,
        target: &str,
        trigger: &str,
    ) -> Result<String, StepError> {
        self.client
            .stop_with_savepoint(flink_job_id, target, trigger)
            .await?;
        self.poll_savepoint(flink_job_id, trigger).await
    }

    /// Waits for the savepoint `trigger` of `flink_job_id` (up to `reconcile.savepoint_timeout`).
    pub(super) async fn poll_savepoint(
        &self,
        flink_job_id: &str,
        trigger: &str,
    ) -> Result<String, StepError> {
        wait_for_savepoint(&self.client, &self.config, flink_job_id, trigger).await
    }
}

/// Waits for the savepoint `trigger` of `flink_job_id` (up to `reconcile.savepoint_timeout`); its
/// location, or why there is none.
pub async fn wait_for_savepoint(
    client: &FlinkClient,
    config: &Config,
    flink_job_id: &str,
    trigger: &str,
) -> Result<String, StepError> {
    {
        let deadline = tokio::time::Instant::now() + config.reconcile.savepoint_timeout;
        loop {
            let poll = client.savepoint_status(flink_job_id, trigger).await?;
            if poll.status.id == "COMPLETED" {
                let operation = poll.operation.unwrap_or_default();
                if let Some(location) = operation.location {
                    return Ok(location);
                }
                let cause = operation
                    .failure_cause
                    .and_then(|c| c.stack_trace.or(c.class))
                    .map(|t| crate::flink::root_cause(&t));
                let mut failed = StepError::permanent(format!(
                    "Flink could not take the savepoint of {flink_job_id}; the job keeps running"
                ));
                failed.root_cause = cause;
                return Err(failed);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StepError::transient(format!(
                    "savepoint not completed within {}",
                    crate::util::format_duration(config.reconcile.savepoint_timeout)
                )));
            }
            tokio::time::sleep(
                config
                    .reconcile
                    .poll_interval
                    .min(Duration::from_millis(500)),
            )
            .await;
        }
    }
}

impl Agent {
    /// The commit that last deployed exactly this spec of the job, if it ran before (a revert brings it back).
    pub(super) fn earlier_commit_with(&self, job_id: &str, spec_hash: &str) -> Option<String> {
        let log = self.with_store(StateStore::audit_log).ok()?;
        log.iter()
            .rev()
            .filter(|e| {
                e.action == AuditAction::Promote.as_str()
                    && e.phase == "intent"
                    && e.job_id.as_deref() == Some(job_id)
            })
            .filter_map(|e| {
                e.detail
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            })
            .find(|d| d["spec_hash"] == spec_hash)
            .and_then(|d| d["commit"].as_str().map(str::to_string))
    }

    /// Cancels `flink_job_id` (audited) and waits until Flink shows it ended.
    pub(super) async fn cancel(
        &self,
        head: &str,
        job_id: &str,
        flink_job_id: &str,
    ) -> Result<(), StepError> {
        let call = async {
            match self.client.cancel(flink_job_id).await {
                // 409: already terminal; 404: gone. Either way it no longer runs.
                Ok(())
                | Err(FlinkError::Status {
                    status: 409 | 404, ..
                }) => Ok(()),
                Err(error) => Err(StepError::from(error)),
            }
        };
        self.audited(
            head,
            job_id,
            AuditAction::Cancel,
            json!({"flink_job_id": flink_job_id}),
            call,
            |_| json!({}),
        )
        .await?;
        self.wait_terminal(flink_job_id).await;
        Ok(())
    }

    /// Waits (bounded) until the REST cache shows the job terminal, so the duplicate guard sees the truth.
    pub(super) async fn wait_terminal(&self, flink_job_id: &str) {
        for _ in 0..60 {
            match self.client.job(flink_job_id).await {
                Ok(job) if !is_alive(&job.state) => return,
                Err(e) if e.is_not_found() => return,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    pub(super) async fn effective_config_warnings(
        &self,
        deployment: &Deployment,
        jid: &str,
        default_parallelism: u32,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
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
}
