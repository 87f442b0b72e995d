//! The `flink-gitops` binary: parses the command line, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use flink_gitops::cli::{Cli, LogFormat, run};
use tracing_subscriber::EnvFilter;

fn init_logging(cli: &Cli) {
    let service = matches!(cli.command, flink_gitops::cli::Command::Run { .. });
    let default = match cli.verbose {
        0 if service => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    // Only the service lives long enough for arenas to matter; a command uses both cores.
    let service = matches!(cli.command, flink_gitops::cli::Command::Run { .. });
    if service {
        flink_gitops::util::use_one_allocator_arena();
    } else {
        flink_gitops::util::keep_heap_for_command();
    }
    // SAFETY: still single-threaded; the runtime and its threads start below.
    if let Err(e) = unsafe { flink_gitops::git::tune_libgit2() } {
        tracing::warn!(error = %e, "cannot tune libgit2; large JARs and large spec folders cost more");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if !service {
        // A command's own work runs on the thread that waits for it and on its blocking threads;
        // the Flink calls need one worker (a second was started, and stopped, for nothing).
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(flink_gitops::cli::EXIT_FINDINGS);
        }
    };
    runtime.block_on(run(cli))
}
