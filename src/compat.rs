//! State compatibility before merge: the runner JAR's `StateCompat` builds a job's new graph and reads
//! its latest savepoint with this machine's JDK and Flink distribution; [`crate::plan::compat`]
//! compares them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{debug, info_span};

use crate::config::Config;
use crate::plan::compat::{Facts, StateCompatibility, compare};
use crate::reconcile::Deployment;
use crate::runner::LocalRunner;
use crate::spec::{Artifact, DesiredJob, JobKind, JobType, UpgradeMode};
use crate::state::{JobRecord, SavepointTaken};

/// The runner JAR's entry point for this check (`runner/src`).
pub const STATE_COMPAT_CLASS: &str = "dev.flinkgitops.runner.StateCompat";

/// Why `StateCompat` gave no facts.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The program's `main` failed or built no job.
    #[error("the job graph could not be built here: {0}")]
    Graph(String),
    /// The savepoint's `_metadata` could not be read.
    #[error("savepoint not readable from here: {0}")]
    Savepoint(String),
    /// The JVM did not run, or said something that is not the helper's JSON.
    #[error("the state check failed to run: {0}")]
    Run(String),
}

/// A program as the agent submits it, for `StateCompat --jar`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRun {
    /// The JAR whose `main` builds the job (the runner JAR for SQL).
    pub jar: PathBuf,
    /// Its entry class, when not the manifest's.
    pub entry_class: Option<String>,
    /// The program arguments (secrets replaced by a placeholder).
    pub args: Vec<String>,
    /// The job's parallelism.
    pub parallelism: u32,
    /// The job's Flink options.
    pub options: BTreeMap<String, String>,
}

impl ProgramRun {
    /// What the agent would submit for `deployment` (its run request), with `jar` on this machine.
    /// Secrets are not read: a placeholder stands for each, as in `validate`.
    pub fn of(
        deployment: &Deployment,
        jar: PathBuf,
        default_parallelism: u32,
    ) -> Result<ProgramRun, String> {
        let names = deployment.secret_names().map_err(|e| e.to_string())?;
        let placeholders = names
            .into_iter()
            .map(|name| (name, "secret".to_string()))
            .collect();
        let probe = crate::plan::flink_job_id(&deployment.job_id, 0);
        let request = deployment
            .run_request(&probe, None, default_parallelism, &placeholders)
            .map_err(|e| e.to_string())?;
        Ok(ProgramRun {
            jar,
            entry_class: request.entry_class,
            args: request.program_args_list,
            parallelism: request.parallelism,
            options: request.flink_configuration,
        })
    }

    fn helper_args(&self) -> Vec<String> {
        let mut args = vec!["--jar".to_string(), self.jar.display().to_string()];
        if let Some(class) = &self.entry_class {
            args.extend(["--class".to_string(), class.clone()]);
        }
        args.extend(["--parallelism".to_string(), self.parallelism.to_string()]);
        for (key, value) in &self.options {
            args.extend(["--option".to_string(), key.clone(), value.clone()]);
        }
        args.push("--".to_string());
        args.extend(self.args.iter().cloned());
        args
    }
}

impl LocalRunner {
    /// Runs `StateCompat` once: the job graph of `program` and/or the operator states of the
    /// savepoint at `savepoint`.
    pub fn state_facts(
        &self,
        program: Option<&ProgramRun>,
        savepoint: Option<&str>,
    ) -> Result<Facts, HelperError> {
        let mut args = Vec::new();
        if let Some(path) = savepoint {
            args.extend(["--savepoint".to_string(), path.to_string()]);
        }
        if let Some(program) = program {
            args.extend(program.helper_args());
        }
        // Through a file: SQL statements do not fit every command line.
        let mut list = tempfile::NamedTempFile::new()
            .map_err(|e| HelperError::Run(format!("a temporary file: {e}")))?;
        for arg in &args {
            list.write_all(arg.as_bytes())
                .and_then(|()| list.write_all(b"\0"))
                .map_err(|e| HelperError::Run(format!("{}: {e}", list.path().display())))?;
        }
        let output = Command::new("java")
            .arg("-cp")
            .arg(format!(
                "{}:{}/lib/*",
                self.jar.display(),
                self.flink_home.display()
            ))
            .arg(STATE_COMPAT_CLASS)
            .arg("--from")
            .arg(list.path())
            .output()
            .map_err(|e| HelperError::Run(format!("java: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        #[derive(serde::Deserialize)]
        struct Failure {
            error: FailureDetail,
        }
        #[derive(serde::Deserialize)]
        struct FailureDetail {
            stage: String,
            message: String,
        }
        match line {
            Some(line) if output.status.success() => serde_json::from_str(line)
                .map_err(|e| HelperError::Run(format!("{STATE_COMPAT_CLASS} printed {e}: {line}"))),
            Some(line) => match serde_json::from_str::<Failure>(line) {
                Ok(failure) if failure.error.stage == "graph" => {
                    Err(HelperError::Graph(failure.error.message))
                }
                Ok(failure) if failure.error.stage == "savepoint" => {
                    Err(HelperError::Savepoint(failure.error.message))
                }
                Ok(failure) => Err(HelperError::Run(failure.error.message)),
                Err(_) => Err(HelperError::Run(line.to_string())),
            },
            None => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                // An old runner JAR has no StateCompat: say which JAR to rebuild.
                Err(HelperError::Run(format!(
                    "{} ({}): {last}",
                    STATE_COMPAT_CLASS,
                    self.jar.display()
                )))
            }
        }
    }
}

/// The newest savepoint known to hold the job's state: the agent's savepoint ledger (periodic,
/// manual and stop savepoints), else the one recorded with the job.
pub fn latest_savepoint<'a>(
    job_id: &str,
    record: Option<&'a JobRecord>,
    ledger: &'a [SavepointTaken],
) -> Option<&'a str> {
    ledger
        .iter()
        .filter(|s| s.job_id == job_id)
        .max_by_key(|s| s.taken_at_ms)
        .map(|s| s.path.as_str())
        .or_else(|| record.and_then(|r| r.last_savepoint.as_deref()))
}

/// Everything [`check_job_state`] needs to know about one job.
pub struct JobStateInputs<'a> {
    /// The new version (the desired spec).
    pub job: &'a DesiredJob,
    /// The commit it comes from (tagged on the job like the agent does).
    pub commit: &'a str,
    /// The JAR the new version runs, on this machine: the job's JAR, or for SQL the spec's
    /// `runner` or the agent's `runner.jar` (see [`new_program_jar`]); else why it is not here.
    pub program_jar: Result<&'a Path, String>,
    /// What the agent recorded for the job (the running version's deployment).
    pub record: Option<&'a JobRecord>,
    /// The savepoint to compare with ([`latest_savepoint`]).
    pub savepoint: Option<&'a str>,
    /// The cluster's `parallelism.default`, for specs without a parallelism.
    pub default_parallelism: u32,
}

/// Whether the new version of a stream job can restore the running version's latest savepoint,
/// per operator. Needs a JDK, a Flink distribution and a runner JAR with `StateCompat` (`runner`,
/// or why there is none); runs one or two JVMs (the running version's graph, built from the
/// recorded deployment with its JAR from the agent's cache `state.dir/artifacts`, names changed
/// operators whose ids Flink derives from the graph's shape, as SQL's).
pub fn check_job_state(
    runner: Result<&LocalRunner, &str>,
    config: &Config,
    inputs: &JobStateInputs<'_>,
) -> StateCompatibility {
    let job = inputs.job;
    let spec = &job.spec;
    let _span = info_span!("check_state", job_id = %spec.job_id).entered();
    if spec.job_type == JobType::Batch {
        return StateCompatibility::not_checked("batch job: every run starts without state");
    }
    if spec.upgrade_mode == UpgradeMode::Stateless {
        return StateCompatibility::not_checked(
            "stateless upgrade: the new version starts without state",
        );
    }
    if spec.artifact.kind() == JobKind::Python {
        return StateCompatibility::not_checked(
            "Python jobs are not checked (their graph is built by the cluster's Python)",
        );
    }
    let runner = match runner {
        Ok(runner) => runner,
        Err(reason) => return StateCompatibility::not_checked(reason),
    };
    let Some(savepoint) = inputs.savepoint else {
        return StateCompatibility::not_checked("no savepoint recorded yet");
    };
    let jar = match &inputs.program_jar {
        Ok(jar) => jar.to_path_buf(),
        Err(reason) => return StateCompatibility::not_checked(reason.clone()),
    };
    let new_deployment = Deployment::of(job, inputs.commit, "", config);
    let new_program = match ProgramRun::of(&new_deployment, jar, inputs.default_parallelism) {
        Ok(program) => program,
        Err(reason) => {
            return StateCompatibility::not_checked(format!(
                "the new version's run request: {reason}"
            ));
        }
    };
    let old_program = inputs
        .record
        .and_then(|r| r.deployment_json.as_deref())
        .and_then(|json| serde_json::from_str::<Deployment>(json).ok())
        .and_then(|old| {
            let jar = config
                .state
                .dir
                .join("artifacts")
                .join(format!("{}.jar", old.jar_sha256));
            if !jar.is_file() {
                debug!(jar = %jar.display(), "the running version's JAR is not cached: no old graph");
                return None;
            }
            ProgramRun::of(&old, jar, inputs.default_parallelism).ok()
        });
    // The running version's graph only adds names and descriptions: built beside the new one.
    let (new_facts, old_graph) = std::thread::scope(|scope| {
        let old = old_program
            .as_ref()
            .map(|program| scope.spawn(move || runner.state_facts(Some(program), None)));
        let new = runner.state_facts(Some(&new_program), Some(savepoint));
        let old_graph = old
            .and_then(|handle| handle.join().ok())
            .and_then(|facts| match facts {
                Ok(facts) => facts.graph,
                Err(error) => {
                    debug!(%error, "the running version's graph could not be built");
                    None
                }
            });
        (new, old_graph)
    });
    let facts = match new_facts {
        Ok(facts) => facts,
        Err(HelperError::Savepoint(message)) => {
            return StateCompatibility::not_checked(format!(
                "savepoint {savepoint} not readable from here: {message}"
            ));
        }
        Err(HelperError::Graph(message)) => {
            return StateCompatibility::not_checked(format!(
                "the new version's job graph could not be built here: {message}"
            ));
        }
        Err(error) => return StateCompatibility::not_checked(error.to_string()),
    };
    match (facts.graph, facts.savepoint) {
        (Some(graph), Some(taken)) => compare(
            &graph,
            old_graph.as_ref(),
            &taken,
            spec.allow_non_restored_state,
        ),
        _ => StateCompatibility::not_checked(format!(
            "{STATE_COMPAT_CLASS} answered without a graph or savepoint"
        )),
    }
}

/// A JAR on this machine: one of the agent's cache, or a temporary copy of a blob of the spec
/// repository (deleted when dropped).
pub enum LocalJar {
    /// A file that stays.
    Kept(PathBuf),
    /// A copy deleted on drop.
    Temporary(tempfile::TempPath),
}

impl LocalJar {
    /// Where it is.
    pub fn path(&self) -> &Path {
        match self {
            LocalJar::Kept(path) => path,
            LocalJar::Temporary(path) => path,
        }
    }
}

/// The JAR the new version of `job` runs, read from commit `head` of the spec repository `repo`
/// (or the agent's JAR cache when it holds the same digest): the job's own JAR, or for a SQL job
/// the spec's `runner`, else the agent's `runner.jar`. `sha256` is the digest the revision's checks
/// recorded for the job's repository JAR, when known.
pub fn new_program_jar(
    repo: &git2::Repository,
    head: git2::Oid,
    job: &DesiredJob,
    sha256: Option<&str>,
    config: &Config,
) -> Result<LocalJar, String> {
    let cached = |sha: &str| {
        let path = config
            .state
            .dir
            .join("artifacts")
            .join(format!("{sha}.jar"));
        path.is_file().then_some(LocalJar::Kept(path))
    };
    let from_repo = |path: &crate::spec::RepoPath| -> Result<LocalJar, String> {
        if let Some(jar) = sha256.and_then(cached) {
            return Ok(jar);
        }
        let tree = crate::spec::GitTree::new(repo, head).map_err(|e| e.to_string())?;
        let id = tree.blob_id(path).map_err(|e| e.to_string())?;
        let blob = repo
            .find_blob(id)
            .map_err(|e| format!("{path}: git: {e}"))?;
        let mut file = tempfile::Builder::new()
            .suffix(".jar")
            .tempfile()
            .map_err(|e| format!("a temporary file for {path}: {e}"))?;
        file.write_all(blob.content())
            .map_err(|e| format!("a temporary copy of {path}: {e}"))?;
        Ok(LocalJar::Temporary(file.into_temp_path()))
    };
    match (&job.spec.artifact, &job.spec.runner) {
        (Artifact::Path(path), _) => from_repo(path),
        (Artifact::Url(url), _) => job
            .spec
            .artifact_sha256
            .as_deref()
            .and_then(cached)
            .ok_or_else(|| {
                format!(
                    "the JAR at {} is not downloaded yet (apply downloads it)",
                    crate::util::redact_url(url)
                )
            }),
        (_, Some(runner)) => from_repo(runner),
        (_, None) => config
            .runner_jar
            .clone()
            .map(LocalJar::Kept)
            .ok_or_else(|| "no runner JAR in the config (runner.jar) for this SQL job".into()),
    }
}

/// What [`check_plan`] reads besides the plan: the new revision, the agent's records and where to
/// find JARs.
pub struct PlanStateInputs<'a> {
    /// The desired state of the new revision.
    pub desired: &'a crate::spec::DesiredState,
    /// The spec repository holding `head`.
    pub repo: &'a git2::Repository,
    /// The new revision.
    pub head: git2::Oid,
    /// Per job id, the digest its repository JAR (or spec runner) was checked to have, when known
    /// (`VerifiedRevision::artifacts`): a JAR the agent cached with that digest is used as is.
    pub artifacts: &'a BTreeMap<String, std::sync::Arc<crate::revision::ArtifactCheck>>,
    /// The agent's job records.
    pub records: &'a [JobRecord],
    /// The agent's savepoint ledger (`StateStore::newest_savepoints`).
    pub savepoints: &'a [SavepointTaken],
    /// The cluster's `parallelism.default` (1 when unknown).
    pub default_parallelism: u32,
}

/// Sets `state_compatibility` of every stream job the plan upgrades or resumes with changes (a
/// stateful change), and adds a warning when state would not be restored. Blocking: one or two JVMs
/// per such job.
pub fn check_plan(
    plan: &mut crate::plan::Plan,
    runner: Result<&LocalRunner, &str>,
    config: &Config,
    inputs: &PlanStateInputs<'_>,
) {
    use crate::plan::Action;
    let commit = inputs.head.to_string();
    for entry in &mut plan.jobs {
        if !matches!(entry.action, Action::Upgrade | Action::Resume) {
            continue;
        }
        let Some(job) = inputs.desired.jobs.get(&entry.job_id) else {
            continue;
        };
        let record = inputs.records.iter().find(|r| r.job_id == entry.job_id);
        let jar = new_program_jar(
            inputs.repo,
            inputs.head,
            job,
            inputs
                .artifacts
                .get(&entry.job_id)
                .map(|a| a.sha256.as_str()),
            config,
        );
        let verdict = check_job_state(
            runner,
            config,
            &JobStateInputs {
                job,
                commit: &commit,
                program_jar: jar.as_ref().map(LocalJar::path).map_err(Clone::clone),
                record,
                savepoint: latest_savepoint(&entry.job_id, record, inputs.savepoints),
                default_parallelism: inputs.default_parallelism,
            },
        );
        if matches!(verdict, StateCompatibility::Incompatible { .. }) {
            entry.warnings.push(verdict.summary());
        }
        entry.state_compatibility = Some(verdict);
    }
}
