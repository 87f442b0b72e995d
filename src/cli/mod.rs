//! The command line: `validate`, `plan`, `status`, with text or JSON output and stable exit codes.

/// `println!` for command output: a reader that went away (`plan | head`) is not a panic.
macro_rules! outln {
    () => {
        $crate::cli::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output; see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!($($arg)*))
    };
}

mod apply;
mod history;
mod output;
mod plan;
mod plan_range;
mod request;
mod retry;
mod review_output;
mod savepoint;
mod snapshot;
mod status;
mod validate;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, DEFAULT_CONFIG_PATH};

pub use crate::plan::status::JobStatus;
pub use snapshot::Refusal;
pub use verify::CommitLine;

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

/// Result format of `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum PlanFormat {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
    /// A pull-request comment (with `--base`).
    Markdown,
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
    ///
    /// With `--base`, compares two revisions of a checkout instead (a pull request's base and
    /// head): offline, or with `-c` also against the live cluster and the agent's records.
    Plan {
        /// Configuration file (optional with `--base`: then it adds the cluster and the records).
        #[arg(short, long, env = "FLINK_GITOPS_CONFIG")]
        config: Option<PathBuf>,
        /// Output format (`markdown`: a pull-request comment; only with `--base`).
        #[arg(long, short, value_enum, default_value_t)]
        output: PlanFormat,
        /// The checkout to read the revisions from (with `--base`).
        #[arg(long, requires = "base")]
        repo: Option<PathBuf>,
        /// The revision the change is compared with (e.g. `origin/main`); when the head does not
        /// descend from it, their merge base is used, as a pull request shows it.
        #[arg(long)]
        base: Option<String>,
        /// The revision under review.
        #[arg(long, requires = "base", default_value = "HEAD")]
        head: String,
        /// OpenSSH allowed_signers file for the commits of the range (else the config's).
        #[arg(long, requires = "base")]
        allowed_signers: Option<PathBuf>,
        /// Accept unsigned merges whose tree is the clean merge of verified parents.
        #[arg(long, requires = "base")]
        clean_merges: bool,
        /// Folder of job specs in the repository (else the config's `repo.jobs_dir`, else `jobs`).
        #[arg(long, requires = "base")]
        jobs_dir: Option<String>,
        /// For every stream job upgraded or resumed with changes, build its new job graph and say,
        /// per operator, whether it restores the job's latest savepoint (needs `java`, a Flink
        /// distribution and the runner JAR; the savepoint must be readable from this machine).
        #[arg(long)]
        check_state: bool,
        /// The runner JAR with the state check (scripts/build-runner); default: the config's runner.jar.
        #[arg(long, env = "FLINK_GITOPS_RUNNER")]
        runner: Option<PathBuf>,
        /// The Flink distribution for the state check.
        #[arg(long, env = "FLINK_HOME")]
        flink_home: Option<PathBuf>,
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

/// Runs a parsed command line and returns the process exit code. Commands that only read files,
/// git or SQLite run off the async workers (`block_in_place`, `spawn_blocking`).
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
            tokio::task::block_in_place(|| validate::run(&dir, &jobs_dir, runner, output))
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
            verify::run(
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
        Command::Plan {
            config,
            output,
            repo,
            base: Some(base),
            head,
            allowed_signers,
            clean_merges,
            jobs_dir,
            check_state,
            runner,
            flink_home,
        } => {
            plan_range::run(plan_range::RangeArgs {
                repo: repo.unwrap_or_else(|| PathBuf::from(".")),
                base,
                head,
                config,
                allowed_signers,
                clean_merges,
                jobs_dir,
                format: output,
                state_check: check_state.then_some(plan::StateCheckSetup { runner, flink_home }),
            })
            .await
        }
        Command::Plan {
            config,
            output,
            check_state,
            runner,
            flink_home,
            ..
        } => {
            let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let state_check = check_state.then_some(plan::StateCheckSetup { runner, flink_home });
            match output {
                PlanFormat::Text => plan::run(&config, OutputFormat::Text, state_check).await,
                PlanFormat::Json => plan::run(&config, OutputFormat::Json, state_check).await,
                PlanFormat::Markdown => Err(usage(anyhow::anyhow!(
                    "--output markdown reviews a change: give --base REV (and --head REV)"
                ))),
            }
        }
        Command::Apply {
            config,
            output,
            accept_rollback_to,
        } => apply::run(&config, output, accept_rollback_to).await,
        Command::Run { config } => crate::service::run(&config)
            .await
            .map(|()| EXIT_OK)
            .map_err(agent_failure),
        Command::Status {
            config,
            output,
            no_fetch,
        } => status::run(&config, output, no_fetch).await,
        Command::History {
            config,
            job,
            since,
            limit,
            output,
        } => tokio::task::block_in_place(|| {
            history::run(&config, job.as_deref(), since.as_deref(), limit, output)
        }),
        Command::Retry {
            config,
            job,
            start_empty,
        } => tokio::task::block_in_place(|| retry::run(&config, &job, start_empty)),
        Command::Savepoint {
            config,
            job,
            output,
        } => savepoint::run(&config, &job, output).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", output::error_chain(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(usage)
}
