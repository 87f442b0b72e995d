//! The command line: `validate`, `plan`, `status`, with text or JSON output and stable exit codes.

mod history;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::flink::{ClusterOverview, FlinkClient, JobOverview};
use crate::git::GitSource;
use crate::plan::{Action, Observed, Plan};
use crate::revision::{
    ArtifactCheck, RevisionError, TrustMaterial, VerifiedRevision, verify_revision,
};
use crate::spec::{DirTree, SpecError};
use crate::state::{JobRecord, StateStore};
use crate::trust::AllowedSigners;
use crate::trust::commits::{Owners, Policy, RangeReport, Start, verify_range};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: findings (invalid specs, failed checks) or a failed operation.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `state.db` was deleted or replaced while the agent had it open; it stopped acting
/// (systemd's `Restart=on-failure` starts it again on the file that is there now).
pub const EXIT_STATE_LOST: u8 = 3;

/// GitOps agent for Apache Flink: keeps a Flink cluster in step with a Git repository of signed job specs.
#[derive(Debug, Parser)]
#[command(name = "flink-gitops", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Result format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the job specs in a checkout, offline (for pull-request checks).
    Validate {
        /// The repository checkout.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Folder of job specs inside the checkout.
        #[arg(long, default_value = "jobs")]
        jobs_dir: String,
        /// The runner JAR (scripts/build-runner): with it, a Flink distribution and `java`, the SQL
        /// of every SQL job is also parsed and validated by Flink's planner.
        #[arg(long, env = "FLINK_GITOPS_RUNNER")]
        runner: Option<PathBuf>,
        /// The Flink distribution for the SQL check.
        #[arg(long, env = "FLINK_HOME")]
        flink_home: Option<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show what `apply` would do to reach the branch head; changes nothing on the cluster.
    Plan {
        /// Configuration file.
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show every job's desired and applied revision, Flink state and last savepoint.
    Status {
        /// Configuration file.
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
        /// Use the last fetched head instead of fetching.
        #[arg(long)]
        no_fetch: bool,
    },
    /// List deployments and batch runs from the state database: time, revision, signer, action, result, savepoint.
    History {
        /// Configuration file.
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Only entries from this time on: an RFC 3339 time, or how long ago (`7d`, `12h`).
        #[arg(long)]
        since: Option<String>,
        /// Only the newest N entries.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Run as a service: poll the repo, reconcile, serve health, metrics, status and webhooks (systemd-ready).
    Run {
        /// Configuration file (reloaded on SIGHUP).
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// One reconcile pass: verify the branch head and move the cluster to it (exit 0 when every job converged).
    Apply {
        /// Configuration file.
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
        /// Accept this commit as the new head although it does not descend from the anti-rollback
        /// watermark (a branch reset on purpose, or a watermark that outlived a lost state DB). It
        /// must be the branch head and is still verified; this one pass moves the watermark to it,
        /// and the audit log records who did it.
        #[arg(long, value_name = "COMMIT")]
        accept_rollback_to: Option<String>,
    },
    /// Ask the agent to try a blocked or backing-off job again now, without a new commit (audited).
    ///
    /// The request is queued in the state database and handled at the start of the agent's next
    /// pass (the running service's, or the next `apply`).
    Retry {
        /// Configuration file.
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The job id.
        job: String,
        /// Start the job once without state when no savepoint or checkpoint can be restored
        /// (its state is lost; the audit log records who allowed it).
        #[arg(long)]
        start_empty: bool,
    },
    /// Take a savepoint of a running job now (before maintenance), audited with who asked; the
    /// job keeps running. Works beside a running agent.
    Savepoint {
        /// Configuration file.
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The job id.
        job: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Verify commit signatures offline (for pull-request pipelines): one line per commit.
    Verify {
        /// The repository.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// OpenSSH allowed_signers file (else the config's trust.allowed_signers).
        #[arg(long)]
        allowed_signers: Option<PathBuf>,
        /// Take allowed_signers, owners and clean_merges from this agent config.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Verify the commits after this one (exclusive; `--to` must descend from it). Default: from the root.
        #[arg(long)]
        from: Option<String>,
        /// The last commit to verify.
        #[arg(long, default_value = "HEAD")]
        to: String,
        /// Accept unsigned merges whose tree is the clean merge of verified parents.
        #[arg(long)]
        clean_merges: bool,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// A failure that ends a command, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// The whole error chain.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: EXIT_FINDINGS,
            error: error.into(),
        }
    }
}

/// The exit code an agent error maps to.
fn agent_failure(error: crate::reconcile::AgentError) -> Failure {
    use crate::reconcile::AgentError;
    match error {
        AgentError::Config(_) | AgentError::Trust(_) => usage(error),
        AgentError::State(crate::state::StateError::Lost { .. }) => Failure {
            code: EXIT_STATE_LOST,
            error: error.into(),
        },
        other => Failure::from(other),
    }
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: error.into(),
    }
}

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Validate {
            dir,
            jobs_dir,
            runner,
            flink_home,
            output,
        } => {
            let runner = crate::runner::LocalRunner::find(runner.as_deref(), flink_home.as_deref());
            validate(&dir, &jobs_dir, runner, output)
        }
        Command::Verify {
            repo,
            allowed_signers,
            config,
            from,
            to,
            clean_merges,
            output,
        } => tokio::task::spawn_blocking(move || {
            verify(
                &repo,
                allowed_signers.as_deref(),
                config.as_deref(),
                from.as_deref(),
                &to,
                clean_merges,
                output,
            )
        })
        .await
        .map_err(Failure::from)
        .and_then(|r| r),
        Command::Plan { config, output } => plan(&config, output).await,
        Command::Apply {
            config,
            output,
            accept_rollback_to,
        } => apply(&config, output, accept_rollback_to).await,
        Command::Run { config } => crate::service::run(&config)
            .await
            .map(|()| EXIT_OK)
            .map_err(agent_failure),
        Command::Status {
            config,
            output,
            no_fetch,
        } => status(&config, output, no_fetch).await,
        Command::History {
            config,
            job,
            since,
            limit,
            output,
        } => history(&config, job.as_deref(), since.as_deref(), limit, output),
        Command::Retry {
            config,
            job,
            start_empty,
        } => retry(&config, &job, start_empty),
        Command::Savepoint {
            config,
            job,
            output,
        } => savepoint(&config, &job, output).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", output::error_chain(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

/// What `savepoint` did.
#[derive(Serialize)]
struct SavepointReport {
    job_id: String,
    flink_job_id: String,
    savepoint: String,
    by: String,
}

async fn savepoint(
    config_path: &std::path::Path,
    job_id: &str,
    format: OutputFormat,
) -> Result<u8, Failure> {
    use crate::state::AuditAction;
    let config = Config::load(config_path).map_err(usage)?;
    let store = StateStore::open_for_requests(&config.state.dir)?.ok_or_else(|| {
        usage(anyhow::anyhow!(
            "no state in {}: the agent has not deployed anything yet",
            config.state.dir.display()
        ))
    })?;
    let Some(record) = store.job(job_id)? else {
        return Err(usage(anyhow::anyhow!(
            "the agent has no record of job `{job_id}` (see `flink-gitops status`)"
        )));
    };
    let (Some(jid), Some(deployment)) = (
        record.flink_job_id.clone(),
        record
            .deployment_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<crate::reconcile::Deployment>(j).ok()),
    ) else {
        return Err(usage(anyhow::anyhow!("`{job_id}` has never run")));
    };
    if record.status != "running" || record.phase_name() != "steady" {
        return Err(usage(anyhow::anyhow!(
            "`{job_id}` is {} (phase {}): a savepoint is taken of a steady running job",
            record.status,
            record.phase_name()
        )));
    }
    let client = FlinkClient::from_config(&config.flink)?;
    let state = client.job(&jid).await?.state;
    if state != "RUNNING" {
        return Err(usage(anyhow::anyhow!(
            "`{job_id}`'s Flink job {jid} is {state}, not RUNNING"
        )));
    }
    let by = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| user_name(&current_uid()));
    let trigger = crate::reconcile::new_trigger_id(&jid);
    let target = deployment.savepoint_dir.clone();
    let intent = store.audit_intent(
        Some(&record.commit_id),
        Some(job_id),
        AuditAction::Savepoint,
        &serde_json::json!({"flink_job_id": jid, "kind": "manual", "by": by, "trigger_id": trigger, "target": target})
            .to_string(),
    )?;
    let taken = async {
        client.trigger_savepoint(&jid, &target, &trigger).await?;
        crate::reconcile::wait_for_savepoint(&client, &config, &jid, &trigger).await
    }
    .await;
    match taken {
        Ok(path) => {
            store.audit_outcome(
                intent,
                "ok",
                &serde_json::json!({"savepoint": path}).to_string(),
            )?;
            store.put_savepoint_taken(
                job_id,
                &path,
                &jid,
                "manual",
                &record.commit_id,
                chrono::Utc::now().timestamp_millis(),
            )?;
            let report = SavepointReport {
                job_id: job_id.to_string(),
                flink_job_id: jid,
                savepoint: path,
                by,
            };
            match format {
                OutputFormat::Json => output::print_json(&report)?,
                OutputFormat::Text => println!(
                    "savepoint of {} ({}), requested by {}: {}",
                    report.job_id, report.flink_job_id, report.by, report.savepoint
                ),
            }
            Ok(EXIT_OK)
        }
        Err(error) => {
            store.audit_outcome(
                intent,
                "failed",
                &serde_json::json!({"error": error.full()}).to_string(),
            )?;
            Err(Failure::from(anyhow::anyhow!(
                "savepoint of {job_id} failed: {}",
                error.full()
            )))
        }
    }
}

fn retry(config_path: &std::path::Path, job_id: &str, start_empty: bool) -> Result<u8, Failure> {
    let config = Config::load(config_path).map_err(usage)?;
    let store = StateStore::open_for_requests(&config.state.dir)?.ok_or_else(|| {
        usage(anyhow::anyhow!(
            "no state in {}: the agent has not run yet, so there is nothing to retry",
            config.state.dir.display()
        ))
    })?;
    let Some(record) = store.job(job_id)? else {
        return Err(usage(anyhow::anyhow!(
            "the agent has no record of job `{job_id}` (see `flink-gitops status`)"
        )));
    };
    let by = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| user_name(&current_uid()));
    let kind = if start_empty {
        "retry-start-empty"
    } else {
        "retry"
    };
    let id = store.queue_request(job_id, kind, &by)?;
    println!(
        "queued request {id}: {kind} {job_id} (now {}{}); the agent handles it at the start of its next pass",
        record.phase,
        record
            .last_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    Ok(EXIT_OK)
}

/// The name `/etc/passwd` gives a user id, else `uid N`.
fn user_name(uid: &str) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The user id, from `/proc`.
fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

#[derive(Serialize)]
struct ValidateReport<'a> {
    source: String,
    valid: bool,
    jobs: Vec<&'a str>,
    errors: &'a [SpecError],
    /// `checked`, `no SQL jobs`, or why Flink's own SQL check did not run.
    sql_check: String,
}

fn validate(
    dir: &std::path::Path,
    jobs_dir: &str,
    runner: Result<crate::runner::LocalRunner, String>,
    format: OutputFormat,
) -> Result<u8, Failure> {
    let tree = DirTree::new(dir)
        .map_err(|e| usage(anyhow::anyhow!("cannot open {}: {e}", dir.display())))?;
    let folder_missing = crate::spec::RepoPath::parse(jobs_dir)
        .ok()
        .and_then(|dir| crate::spec::SpecTree::entry(&tree, &dir).ok())
        .is_some_and(|entry| entry.is_none());
    let result = if folder_missing {
        // In a pull request a missing jobs folder is almost always a wrong path, not "delete every job".
        Err(vec![SpecError {
            file: jobs_dir.to_string(),
            line: 0,
            column: 0,
            field: None,
            message: format!(
                "the jobs folder `{jobs_dir}` does not exist in {} (use --jobs-dir)",
                dir.display()
            ),
        }])
    } else {
        crate::spec::load_desired(&tree, jobs_dir)
    };
    let has_sql = |desired: &crate::spec::DesiredState| {
        desired
            .jobs
            .values()
            .any(|j| matches!(j.program, Some(crate::spec::program::Program::Sql { .. })))
    };
    // Flink's check runs only on specs that passed the static checks: they locate its findings.
    let (result, sql_check) = match (result, runner) {
        (Ok(desired), _) if !has_sql(&desired) => (Ok(desired), "no SQL jobs".to_string()),
        (Ok(desired), Ok(runner)) => match runner.check_sql(dir, desired.jobs.values()) {
            Ok(findings) if findings.is_empty() => (Ok(desired), "checked".to_string()),
            Ok(findings) => (Err(findings), "checked".to_string()),
            Err(reason) => (Ok(desired), format!("not run: {reason}")),
        },
        (Ok(desired), Err(reason)) => (Ok(desired), format!("not run: {reason}")),
        (Err(errors), _) => (
            Err(errors),
            "not run: fix the errors above first".to_string(),
        ),
    };
    let (jobs, errors): (Vec<&str>, &[SpecError]) = match &result {
        Ok(desired) => (desired.jobs.keys().map(String::as_str).collect(), &[]),
        Err(errors) => (Vec::new(), errors),
    };
    let report = ValidateReport {
        source: dir.display().to_string(),
        valid: errors.is_empty(),
        jobs,
        errors,
        sql_check,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => {
            for error in errors {
                println!("{error}");
            }
            if report.sql_check != "no SQL jobs" {
                println!("Flink SQL check: {}", report.sql_check);
            }
            if report.valid {
                println!(
                    "ok: {} job spec(s) valid in {}",
                    report.jobs.len(),
                    report.source
                );
            } else {
                println!("{} problem(s) found in {}", errors.len(), report.source);
            }
        }
    }
    Ok(if report.valid { EXIT_OK } else { EXIT_FINDINGS })
}

/// One commit's verdict as shown to people and machines.
#[derive(Debug, Serialize)]
pub struct CommitLine {
    /// The commit id.
    pub commit: String,
    /// First line of its message.
    pub summary: String,
    /// Accepted?
    pub ok: bool,
    /// Who signed it (or how it was accepted).
    pub signer: Option<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

fn commit_lines(report: &RangeReport) -> Vec<CommitLine> {
    report
        .verdicts
        .iter()
        .map(|v| CommitLine {
            commit: v.commit.to_string(),
            summary: v.summary.clone(),
            ok: v.result.is_ok(),
            signer: v.result.as_ref().ok().map(|a| a.signer()),
            error: v.result.as_ref().err().map(ToString::to_string),
        })
        .collect()
}

/// Why the branch head is not used; the cluster keeps the last verified state.
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// `signature`, `rollback`, `teleport`, `spec`, `artifact`...
    pub kind: &'static str,
    /// The reason, naming the commit or file.
    pub message: String,
    /// Per-commit verdicts when a commit was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commits: Vec<CommitLine>,
    /// Spec problems when the specs were refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spec_errors: Vec<SpecError>,
}

impl From<RevisionError> for Refusal {
    fn from(error: RevisionError) -> Refusal {
        let kind = error.kind();
        let message = error.to_string();
        match error {
            RevisionError::Commit { report, .. } => Refusal {
                kind,
                message,
                commits: commit_lines(&report),
                spec_errors: Vec::new(),
            },
            RevisionError::Specs(errors) => Refusal {
                kind,
                message: "the specs at this revision are invalid; nothing would be applied".into(),
                commits: Vec::new(),
                spec_errors: errors,
            },
            _ => Refusal {
                kind,
                message,
                commits: Vec::new(),
                spec_errors: Vec::new(),
            },
        }
    }
}

/// Everything a reporting command needs, read once.
struct Snapshot {
    config: Config,
    head: String,
    watermark: Option<String>,
    revision: Result<VerifiedRevision, Refusal>,
    records: Vec<JobRecord>,
    cluster: Result<(ClusterOverview, Vec<JobOverview>), String>,
}

fn history(
    config_path: &std::path::Path,
    job: Option<&str>,
    since: Option<&str>,
    limit: Option<usize>,
    format: OutputFormat,
) -> Result<u8, Failure> {
    let since = since
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&chrono::Utc))
                .or_else(|_| {
                    crate::util::parse_duration(text)
                        .ok()
                        .and_then(|ago| chrono::Duration::from_std(ago).ok())
                        .map(|ago| chrono::Utc::now() - ago)
                        .ok_or(())
                })
                .map_err(|()| {
                    usage(anyhow::anyhow!(
                        "--since `{text}`: give an RFC 3339 time (2026-11-01T00:00:00Z) or how long ago (7d, 12h)"
                    ))
                })
        })
        .transpose()?;
    let config = load_config(config_path)?;
    let store = StateStore::open_read_only(&config.state.dir)?;
    // Streamed as read: a JSON array written entry by entry, or table lines. With `--limit`
    // only the newest `limit` entries are kept on the way.
    let mut printed = 0usize;
    let mut print = |entry: &history::HistoryEntry| -> anyhow::Result<()> {
        match format {
            OutputFormat::Json => {
                let separator = if printed == 0 { "[\n  " } else { ",\n  " };
                print!("{separator}{}", serde_json::to_string(entry)?);
            }
            OutputFormat::Text => {
                if printed == 0 {
                    history::print_header();
                }
                history::print_entry(entry);
            }
        }
        printed += 1;
        Ok(())
    };
    if let Some(store) = &store {
        match limit {
            None => history::for_each(store, job, since, |entry| print(&entry))?,
            Some(limit) => {
                let mut newest = std::collections::VecDeque::with_capacity(limit.min(100_000));
                history::for_each(store, job, since, |entry| {
                    if newest.len() == limit {
                        newest.pop_front();
                    }
                    if limit > 0 {
                        newest.push_back(entry);
                    }
                    Ok(())
                })?;
                for entry in &newest {
                    print(entry)?;
                }
            }
        }
    }
    match (format, printed) {
        (OutputFormat::Json, 0) => println!("[]"),
        (OutputFormat::Json, _) => println!("\n]"),
        (OutputFormat::Text, 0) => println!("no deployments or runs recorded"),
        (OutputFormat::Text, _) => {}
    }
    Ok(EXIT_OK)
}

fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(usage)
}

/// Reads the first-seen time of a commit from the state DB, or now for a commit never seen.
fn first_seen_in(
    store: Option<&StateStore>,
) -> impl FnMut(git2::Oid) -> chrono::DateTime<chrono::Utc> + '_ {
    let now = chrono::Utc::now();
    move |oid| {
        store
            .and_then(|s| s.revision(&oid.to_string()).ok().flatten())
            .and_then(|r| chrono::DateTime::parse_from_rfc3339(&r.first_seen_at).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now)
    }
}

#[instrument(skip_all, fields(config = %config_path.display()))]
async fn snapshot(config_path: &std::path::Path, fetch: bool) -> Result<Snapshot, Failure> {
    let config = load_config(config_path)?;
    let trust = TrustMaterial::load(&config).map_err(usage)?;
    let blocking_config = config.clone();
    let (head, watermark, revision, records) =
        tokio::task::spawn_blocking(move || -> Result<_, Failure> {
            let config = blocking_config;
            let source = GitSource::open(&config.state.dir.join("repo.git"), &config.repo)?;
            let head = match (fetch, source.head()?) {
                (false, Some(head)) => head,
                _ => source.fetch()?,
            };
            let store = StateStore::open_read_only(&config.state.dir)?;
            let recorded = match &store {
                Some(s) => s.meta("watermark")?,
                None => None,
            };
            let kept = crate::state::kept_watermark(&config.state.dir)?;
            let records = match &store {
                Some(s) => s.jobs()?,
                None => Vec::new(),
            };
            let start = crate::revision::verification_start(
                source.repo(),
                &config,
                recorded.as_deref(),
                kept.as_deref(),
            )
            .map_err(|e| usage(anyhow::anyhow!(e)))?;
            let watermark = match start {
                Start::Watermark(w) | Start::Kept(w) => Some(w.to_string()),
                _ => None,
            };
            let revision = verify_revision(
                source.repo(),
                &config,
                &trust,
                start,
                head,
                first_seen_in(store.as_ref()),
            )
            .map_err(Refusal::from);
            Ok((head.to_string(), watermark, revision, records))
        })
        .await
        .map_err(anyhow::Error::from)??;
    match &revision {
        Ok(r) => info!(revision = %head, new_commits = r.commits.len(), "verified"),
        Err(refusal) => {
            warn!(revision = %head, kind = refusal.kind, reason = %refusal.message, "head refused")
        }
    }

    let client = FlinkClient::from_config(&config.flink)?;
    let cluster = match tokio::try_join!(client.overview(), client.jobs()) {
        Ok(found) => Ok(found),
        Err(e) => {
            warn!(error = %e, "cannot read the cluster");
            Err(e.to_string())
        }
    };
    Ok(Snapshot {
        config,
        head,
        watermark,
        revision,
        records,
        cluster,
    })
}

#[derive(Serialize)]
struct TrustSummary<'a> {
    verified_from: Option<&'a str>,
    commits: Vec<CommitLine>,
    artifacts: &'a std::collections::BTreeMap<String, ArtifactCheck>,
}

#[derive(Serialize)]
struct PlanReport<'a> {
    revision: &'a str,
    branch: &'a str,
    repo: &'a str,
    flink: &'a str,
    flink_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust: Option<TrustSummary<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a Refusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a Plan>,
}

async fn plan(config_path: &std::path::Path, format: OutputFormat) -> Result<u8, Failure> {
    let snap = snapshot(config_path, true).await?;
    let computed = snap.revision.as_ref().ok().map(|revision| {
        let observed = match &snap.cluster {
            Ok((_, jobs)) => Observed::Jobs(jobs),
            Err(reason) => Observed::Unreachable(reason.clone()),
        };
        let mut plan = crate::plan::plan(
            &revision.desired,
            observed,
            &snap.records,
            chrono::Utc::now().timestamp_millis(),
        );
        for entry in &mut plan.jobs {
            if matches!(entry.action, Action::Delete | Action::Suspend) {
                continue;
            }
            let next = revision
                .desired
                .jobs
                .get(&entry.job_id)
                .and_then(|job| job.spec.batch.as_ref())
                .and_then(|batch| {
                    crate::batch::next_run(batch, chrono::Utc::now())
                        .map(|next| crate::batch::schedule::in_zone(next, &batch.timezone))
                });
            if let Some(next) = next {
                entry.reasons.push(format!("next run at {next}"));
            }
        }
        plan
    });
    let trust = snap.revision.as_ref().ok().map(|r| TrustSummary {
        verified_from: snap.watermark.as_deref(),
        commits: r
            .commits
            .iter()
            .map(|(oid, signer)| CommitLine {
                commit: oid.to_string(),
                summary: String::new(),
                ok: true,
                signer: Some(signer.clone()),
                error: None,
            })
            .collect(),
        artifacts: &r.artifacts,
    });
    let repo_url = crate::util::redact_url(&snap.config.repo.url);
    let flink_url = crate::util::redact_url(snap.config.flink.url.as_str());
    let report = PlanReport {
        revision: &snap.head,
        branch: &snap.config.repo.branch,
        repo: &repo_url,
        flink: &flink_url,
        flink_version: snap
            .cluster
            .as_ref()
            .ok()
            .map(|(o, _)| o.flink_version.as_str()),
        trust,
        refused: snap.revision.as_ref().err(),
        plan: computed.as_ref(),
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_plan(
            &report.revision_line(),
            report.trust.as_ref().map(|t| t.commits.as_slice()),
            report.refused,
            computed.as_ref(),
            &snap.cluster,
        ),
    }
    let failed = snap.revision.is_err() || snap.cluster.is_err();
    Ok(if failed { EXIT_FINDINGS } else { EXIT_OK })
}

impl PlanReport<'_> {
    fn revision_line(&self) -> String {
        format!(
            "revision {} ({} of {})",
            crate::spec::source::short_id(self.revision),
            self.branch,
            self.repo
        )
    }
}

/// One row of `status`.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    /// The spec's job id.
    pub job_id: String,
    /// `jar`, `sql` or `python` (as desired, else as last deployed).
    pub kind: Option<crate::spec::JobKind>,
    /// The revision whose spec is desired (the verified branch head), if the spec exists there.
    pub desired_commit: Option<String>,
    /// The revision last applied.
    pub applied_commit: Option<String>,
    /// What the agent recorded (`running`, `scheduled`, `suspended`, `deleted`...).
    pub recorded_status: Option<String>,
    /// Batch jobs: the newest run (status, Flink job id, when it was submitted).
    pub last_run: Option<String>,
    /// Batch jobs on a cron schedule: the next fire time.
    pub next_run: Option<String>,
    /// The Flink job id.
    pub flink_job_id: Option<String>,
    /// Its state on the cluster.
    pub flink_state: Option<String>,
    /// Latest savepoint known to hold this job's state.
    pub last_savepoint: Option<String>,
    /// When the newest recorded savepoint was taken (RFC 3339), and how it came to be
    /// (`periodic`, `manual`, or empty for the stop of an upgrade, suspend or delete).
    pub last_savepoint_at: Option<String>,
    /// Seconds since then.
    pub last_savepoint_age_s: Option<i64>,
    /// The lifecycle phase (`steady`, `stopping`, `stopped`, `submitted`, `verifying`, `blocked`).
    pub phase: Option<String>,
    /// What the phase is doing, or why the job is blocked and what unblocks it.
    pub phase_detail: Option<String>,
    /// The newest failure, with how many in a row.
    pub last_error: Option<String>,
    /// When a backing-off job is tried again (RFC 3339).
    pub retry_at: Option<String>,
}

#[derive(Serialize)]
struct StatusReport<'a> {
    revision: &'a str,
    flink: &'a str,
    cluster_error: Option<&'a str>,
    refused: Option<&'a Refusal>,
    jobs: Vec<JobStatus>,
}

async fn status(
    config_path: &std::path::Path,
    format: OutputFormat,
    no_fetch: bool,
) -> Result<u8, Failure> {
    let snap = snapshot(config_path, !no_fetch).await?;
    let desired_ids: Vec<&String> = match &snap.revision {
        Ok(r) => r.desired.jobs.keys().collect(),
        Err(_) => Vec::new(),
    };
    let cluster_jobs: &[JobOverview] = snap
        .cluster
        .as_ref()
        .map(|(_, j)| j.as_slice())
        .unwrap_or(&[]);
    let mut ids: Vec<&String> = desired_ids.clone();
    ids.extend(snap.records.iter().map(|r| &r.job_id));
    ids.sort();
    ids.dedup();
    let (last_runs, savepoints) = match StateStore::open_read_only(&snap.config.state.dir)? {
        Some(store) => (store.last_runs()?, store.newest_savepoints()?),
        None => (Vec::new(), Vec::new()),
    };
    let savepoint_by_id: std::collections::HashMap<&str, &crate::state::SavepointTaken> =
        savepoints.iter().map(|s| (s.job_id.as_str(), s)).collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Keyed once, so that status stays linear in the number of jobs.
    let desired_set: std::collections::HashSet<&String> = desired_ids.iter().copied().collect();
    let records_by_id: std::collections::HashMap<&str, &crate::state::JobRecord> = snap
        .records
        .iter()
        .map(|r| (r.job_id.as_str(), r))
        .collect();
    let mut last_run_by_id = std::collections::HashMap::new();
    for run in &last_runs {
        last_run_by_id.entry(run.job_id.as_str()).or_insert(run);
    }
    let cluster_by_jid: std::collections::HashMap<&str, &JobOverview> =
        cluster_jobs.iter().map(|j| (j.jid.as_str(), j)).collect();
    let by_prefix = crate::plan::group_by_job_prefix(cluster_jobs);
    let jobs = ids
        .into_iter()
        .map(|id| {
            let record = records_by_id.get(id.as_str()).copied();
            let last_run = last_run_by_id.get(id.as_str()).map(|run| {
                format!(
                    "{} {} (submitted {})",
                    run.status.as_str(),
                    run.flink_job_id,
                    chrono::DateTime::from_timestamp_millis(run.submitted_at_ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default()
                )
            });
            let next_run = snap
                .revision
                .as_ref()
                .ok()
                .and_then(|r| r.desired.jobs.get(id))
                .and_then(|job| job.spec.batch.as_ref())
                .filter(|_| record.is_some_and(|r| r.status == "scheduled"))
                .and_then(|batch| crate::batch::next_run(batch, chrono::Utc::now()))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            let prefix = crate::plan::flink_job_prefix(id);
            let instance = record
                .and_then(|r| r.flink_job_id.as_deref())
                .and_then(|jid| cluster_by_jid.get(jid).copied())
                .or_else(|| {
                    by_prefix
                        .get(prefix.as_str())?
                        .iter()
                        .find(|j| crate::plan::is_alive(&j.state))
                        .copied()
                });
            let kind = snap
                .revision
                .as_ref()
                .ok()
                .and_then(|r| r.desired.jobs.get(id))
                .map(|job| job.spec.artifact.kind())
                .or_else(|| record.map(|r| r.job_kind()));
            JobStatus {
                job_id: id.clone(),
                kind,
                desired_commit: desired_set.contains(id).then(|| snap.head.clone()),
                applied_commit: record.map(|r| r.commit_id.clone()),
                recorded_status: record.map(|r| r.status.clone()),
                last_run,
                next_run,
                flink_job_id: instance
                    .map(|j| j.jid.clone())
                    .or_else(|| record.and_then(|r| r.flink_job_id.clone())),
                flink_state: instance.map(|j| j.state.clone()),
                // The ledger knows savepoints taken beside the agent (`flink-gitops savepoint`).
                last_savepoint: savepoint_by_id
                    .get(id.as_str())
                    .map(|s| s.path.clone())
                    .or_else(|| record.and_then(|r| r.last_savepoint.clone())),
                last_savepoint_at: savepoint_by_id.get(id.as_str()).and_then(|s| {
                    chrono::DateTime::from_timestamp_millis(s.taken_at_ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                }),
                last_savepoint_age_s: savepoint_by_id
                    .get(id.as_str())
                    .map(|s| (now_ms - s.taken_at_ms).max(0) / 1000),
                phase: record.map(|r| r.phase_name().to_string()),
                phase_detail: record
                    .filter(|r| r.phase_json.is_some())
                    .map(|r| crate::reconcile::lifecycle::Phase::of_record(r).describe()),
                last_error: record.and_then(|r| {
                    r.last_error.as_ref().map(|e| match r.failures {
                        0 => e.clone(),
                        n => format!("{e} ({n} failure(s) in a row)"),
                    })
                }),
                retry_at: record
                    .and_then(|r| r.retry_at_ms)
                    .filter(|at| *at > chrono::Utc::now().timestamp_millis())
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            }
        })
        .collect();
    let flink_url = crate::util::redact_url(snap.config.flink.url.as_str());
    let report = StatusReport {
        revision: &snap.head,
        flink: &flink_url,
        cluster_error: snap.cluster.as_ref().err().map(String::as_str),
        refused: snap.revision.as_ref().err(),
        jobs,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_status(
            report.revision,
            report.flink,
            report.cluster_error,
            report.refused,
            &report.jobs,
        ),
    }
    // A job that is blocked, or recorded running while Flink does not run it, is a finding.
    let unhealthy = report.jobs.iter().any(|job| {
        job.phase.as_deref() == Some("blocked")
            || (job.recorded_status.as_deref() == Some("running")
                && job.phase.as_deref() == Some("steady")
                && !job
                    .flink_state
                    .as_deref()
                    .is_some_and(crate::plan::is_alive))
    });
    Ok(
        if snap.cluster.is_err() || snap.revision.is_err() || unhealthy {
            EXIT_FINDINGS
        } else {
            EXIT_OK
        },
    )
}

#[derive(Serialize)]
struct VerifyReport {
    from: Option<String>,
    to: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    commits: Vec<CommitLine>,
}

fn resolve_commit(repo: &git2::Repository, rev: &str) -> Result<git2::Oid, Failure> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| usage(anyhow::anyhow!("`{rev}` is not a commit: {}", e.message())))
}

fn verify(
    repo_dir: &std::path::Path,
    allowed_signers: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
    from: Option<&str>,
    to: &str,
    clean_merges: bool,
    format: OutputFormat,
) -> Result<u8, Failure> {
    let config = config.map(load_config).transpose()?;
    let signers_path = allowed_signers
        .map(std::path::Path::to_path_buf)
        .or_else(|| config.as_ref().map(|c| c.trust.allowed_signers.clone()))
        .ok_or_else(|| usage(anyhow::anyhow!("give --allowed-signers FILE or -c CONFIG")))?;
    let signers = AllowedSigners::load(&signers_path).map_err(usage)?;
    let owners = match &config {
        Some(c) => Owners::new(&c.trust.owners).map_err(|e| usage(anyhow::anyhow!(e)))?,
        None => Owners::none(),
    };
    let repo = git2::Repository::discover(repo_dir).map_err(|e| {
        usage(anyhow::anyhow!(
            "{}: not a git repository: {}",
            repo_dir.display(),
            e.message()
        ))
    })?;
    let head = resolve_commit(&repo, to)?;
    let start = match from {
        Some(rev) => Start::Watermark(resolve_commit(&repo, rev)?),
        None => Start::Root,
    };
    let policy = Policy {
        signers: &signers,
        mode: crate::config::CommitPolicy::Every,
        clean_merges: clean_merges || config.as_ref().is_some_and(|c| c.trust.clean_merges),
        owners: &owners,
    };
    let now = chrono::Utc::now();
    let (commits, refused) = match verify_range(&repo, start, head, &policy, |_| now) {
        Ok(report) => (commit_lines(&report), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let report = VerifyReport {
        from: from.map(str::to_string),
        to: head.to_string(),
        ok: refused.is_none() && commits.iter().all(|c| c.ok),
        refused,
        commits,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_verify(&report.commits, report.refused.as_deref()),
    }
    Ok(if report.ok { EXIT_OK } else { EXIT_FINDINGS })
}

async fn apply(
    config_path: &std::path::Path,
    format: OutputFormat,
    accept_rollback_to: Option<String>,
) -> Result<u8, Failure> {
    let config = load_config(config_path)?;
    let mut agent = crate::reconcile::Agent::open(config).map_err(agent_failure)?;
    if let Some(commit) = accept_rollback_to {
        let by = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| user_name(&current_uid()));
        agent = agent.accept_rollback(crate::reconcile::RollbackAcceptance { commit, by });
    }
    // A failed pass is a failed operation (1), whatever its cause, except a lost database (3).
    let report = agent.apply_once().await.map_err(|e| match e {
        crate::reconcile::AgentError::State(crate::state::StateError::Lost { .. }) => {
            agent_failure(e)
        }
        other => Failure::from(other),
    })?;
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_apply(&report),
    }
    Ok(if report.converged() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}
