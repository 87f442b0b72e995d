//! The command line: `validate`, `plan`, `status`, with text or JSON output and stable exit codes.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::flink::{ClusterOverview, FlinkClient, JobOverview};
use crate::git::GitSource;
use crate::plan::{Observed, Plan};
use crate::spec::{DesiredState, DirTree, GitTree, SpecError};
use crate::state::{JobRecord, StateStore};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: findings (invalid specs, failed checks) or a failed operation.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;

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
            output,
        } => validate(&dir, &jobs_dir, output),
        Command::Plan { config, output } => plan(&config, output).await,
        Command::Status {
            config,
            output,
            no_fetch,
        } => status(&config, output, no_fetch).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", output::error_chain(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

#[derive(Serialize)]
struct ValidateReport<'a> {
    source: String,
    valid: bool,
    jobs: Vec<&'a str>,
    errors: &'a [SpecError],
}

fn validate(dir: &std::path::Path, jobs_dir: &str, format: OutputFormat) -> Result<u8, Failure> {
    let tree = DirTree::new(dir)
        .map_err(|e| usage(anyhow::anyhow!("cannot open {}: {e}", dir.display())))?;
    let result = crate::spec::load_desired(&tree, jobs_dir);
    let (jobs, errors): (Vec<&str>, &[SpecError]) = match &result {
        Ok(desired) => (desired.jobs.keys().map(String::as_str).collect(), &[]),
        Err(errors) => (Vec::new(), errors),
    };
    let report = ValidateReport {
        source: dir.display().to_string(),
        valid: errors.is_empty(),
        jobs,
        errors,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => {
            for error in errors {
                println!("{error}");
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

/// Everything a reporting command needs, read once.
struct Snapshot {
    config: Config,
    head: String,
    desired: Result<DesiredState, Vec<SpecError>>,
    records: Vec<JobRecord>,
    cluster: Result<(ClusterOverview, Vec<JobOverview>), String>,
}

fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(usage)
}

#[instrument(skip_all, fields(config = %config_path.display()))]
async fn snapshot(config_path: &std::path::Path, fetch: bool) -> Result<Snapshot, Failure> {
    let config = load_config(config_path)?;
    let state_dir = config.state.dir.clone();
    let repo_config = config.repo.clone();
    let jobs_dir = config.repo.jobs_dir.clone();
    let (head, desired) = tokio::task::spawn_blocking(move || -> Result<_, Failure> {
        let source = GitSource::open(&state_dir.join("repo.git"), &repo_config)?;
        let head = match (fetch, source.head()?) {
            (false, Some(head)) => head,
            _ => source.fetch()?,
        };
        let tree = GitTree::new(source.repo(), head)?;
        let desired = crate::spec::load_desired(&tree, &jobs_dir);
        Ok((head.to_string(), desired))
    })
    .await
    .map_err(anyhow::Error::from)??;
    info!(revision = %head, "read desired state");

    let records = match StateStore::open_read_only(&config.state.dir)? {
        Some(store) => store.jobs()?,
        None => Vec::new(),
    };
    let client = FlinkClient::new(&config.flink.url, config.flink.request_timeout)?;
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
        desired,
        records,
        cluster,
    })
}

#[derive(Serialize)]
struct PlanReport<'a> {
    revision: &'a str,
    branch: &'a str,
    repo: &'a str,
    flink: &'a str,
    flink_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a Plan>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    spec_errors: &'a [SpecError],
}

async fn plan(config_path: &std::path::Path, format: OutputFormat) -> Result<u8, Failure> {
    let snap = snapshot(config_path, true).await?;
    let (computed, spec_errors): (Option<Plan>, &[SpecError]) = match &snap.desired {
        Ok(desired) => {
            let observed = match &snap.cluster {
                Ok((_, jobs)) => Observed::Jobs(jobs),
                Err(reason) => Observed::Unreachable(reason.clone()),
            };
            (
                Some(crate::plan::plan(desired, observed, &snap.records)),
                &[],
            )
        }
        Err(errors) => (None, errors),
    };
    let report = PlanReport {
        revision: &snap.head,
        branch: &snap.config.repo.branch,
        repo: &snap.config.repo.url,
        flink: snap.config.flink.url.as_str(),
        flink_version: snap
            .cluster
            .as_ref()
            .ok()
            .map(|(o, _)| o.flink_version.as_str()),
        plan: computed.as_ref(),
        spec_errors,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_plan(
            &report.revision_line(),
            computed.as_ref(),
            spec_errors,
            &snap.cluster,
        ),
    }
    let failed = !spec_errors.is_empty() || snap.cluster.is_err();
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
    /// The revision whose spec is desired (the branch head), if the spec exists there.
    pub desired_commit: Option<String>,
    /// The revision last applied.
    pub applied_commit: Option<String>,
    /// What the agent recorded (`running`, `suspended`, `deleted`...).
    pub recorded_status: Option<String>,
    /// The Flink job id.
    pub flink_job_id: Option<String>,
    /// Its state on the cluster.
    pub flink_state: Option<String>,
    /// Latest savepoint known to hold this job's state.
    pub last_savepoint: Option<String>,
}

#[derive(Serialize)]
struct StatusReport<'a> {
    revision: &'a str,
    flink: &'a str,
    cluster_error: Option<&'a str>,
    spec_errors: &'a [SpecError],
    jobs: Vec<JobStatus>,
}

async fn status(
    config_path: &std::path::Path,
    format: OutputFormat,
    no_fetch: bool,
) -> Result<u8, Failure> {
    let snap = snapshot(config_path, !no_fetch).await?;
    let (desired_ids, spec_errors): (Vec<&String>, &[SpecError]) = match &snap.desired {
        Ok(d) => (d.jobs.keys().collect(), &[]),
        Err(e) => (Vec::new(), e),
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
    let jobs = ids
        .into_iter()
        .map(|id| {
            let record = snap.records.iter().find(|r| &r.job_id == id);
            let prefix = crate::plan::flink_job_prefix(id);
            let instance = record
                .and_then(|r| r.flink_job_id.as_deref())
                .and_then(|jid| cluster_jobs.iter().find(|j| j.jid == jid))
                .or_else(|| {
                    cluster_jobs
                        .iter()
                        .find(|j| j.jid.starts_with(&prefix) && crate::plan::is_alive(&j.state))
                });
            JobStatus {
                job_id: id.clone(),
                desired_commit: desired_ids.contains(&id).then(|| snap.head.clone()),
                applied_commit: record.map(|r| r.commit_id.clone()),
                recorded_status: record.map(|r| r.status.clone()),
                flink_job_id: instance
                    .map(|j| j.jid.clone())
                    .or_else(|| record.and_then(|r| r.flink_job_id.clone())),
                flink_state: instance.map(|j| j.state.clone()),
                last_savepoint: record.and_then(|r| r.last_savepoint.clone()),
            }
        })
        .collect();
    let report = StatusReport {
        revision: &snap.head,
        flink: snap.config.flink.url.as_str(),
        cluster_error: snap.cluster.as_ref().err().map(String::as_str),
        spec_errors,
        jobs,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_status(
            report.revision,
            report.flink,
            report.cluster_error,
            spec_errors,
            &report.jobs,
        ),
    }
    Ok(if snap.cluster.is_err() || !spec_errors.is_empty() {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}
