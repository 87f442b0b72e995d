//! Text rendering of command results for people; JSON goes through serde unchanged.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::{CommitLine, JobStatus, Refusal};
use crate::flink::{ClusterOverview, JobOverview};
use crate::plan::slots::SlotBudget;
use crate::plan::{Action, Plan};
use crate::spec::source::short_id;

/// Set once stdout cannot be written (its reader went away, as in `plan | head`): the rest of the
/// output is dropped, and the command still finishes and exits with its own code.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes command output to stdout; after a failed write, nothing more is written.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(error) = std::io::stdout().lock().write_fmt(args) {
        stdout_failed(&error);
    }
}

/// Stops the output after a failed write; says why unless its reader just went away.
fn stdout_failed(error: &std::io::Error) {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
    if error.kind() != std::io::ErrorKind::BrokenPipe {
        eprintln!("error: cannot write the output: {error}");
    }
}

/// Prints a value as JSON on stdout: indented for a terminal, on one line for a program (as `gh`
/// does), where the indentation was two fifths of a plan over 1,000 jobs (0.67 of 0.42 MB).
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let stdout = std::io::stdout().lock();
    let for_a_person = stdout.is_terminal();
    // Written as it is made, through one small buffer: a string grown for a plan over 1,000 jobs
    // touched it twice over before a byte was written.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout);
    let written = if for_a_person {
        serde_json::to_writer_pretty(&mut out, value)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    let written = written
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(error) = written {
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<serde_json::Error>())
        {
            return Err(error.into());
        }
        stdout_failed(&error);
    }
    Ok(())
}

/// The whole `caused by` chain of an error on one line.
pub fn error_chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": caused by: ")
}

fn cluster_line(cluster: &Result<(ClusterOverview, Vec<JobOverview>), String>) -> String {
    match cluster {
        Ok((o, _)) => format!(
            "cluster  Flink {}, {} TaskManager(s), {}/{} slots free",
            o.flink_version, o.taskmanagers, o.slots_available, o.slots_total
        ),
        Err(reason) => format!("cluster  UNREACHABLE: {reason}"),
    }
}

/// Renders the per-commit verdicts of `verify`.
pub fn print_verify(commits: &[CommitLine], refused: Option<&str>) {
    if let Some(reason) = refused {
        outln!("REFUSED  {reason}");
    }
    for line in commits {
        let short = short_id(&line.commit);
        match (&line.signer, &line.error) {
            (Some(signer), _) => outln!("ok       {short}  {signer}  {}", line.summary),
            (_, Some(error)) => outln!("FAILED   {short}  {error}  ({})", line.summary),
            _ => {}
        }
    }
    let failed = commits.iter().filter(|c| !c.ok).count();
    outln!(
        "{} commit(s) verified, {failed} failed",
        commits.len() - failed
    );
}

fn print_refusal(refusal: &Refusal) {
    outln!("REFUSED ({}): {}", refusal.kind, refusal.message);
    for error in &refusal.spec_errors {
        outln!("  {error}");
    }
    for line in refusal.commits.iter().filter(|c| !c.ok) {
        outln!(
            "  {}  {}",
            short_id(&line.commit),
            line.error.as_deref().unwrap_or("")
        );
    }
    outln!("the cluster keeps the last verified state");
}

/// Renders `plan`.
pub fn print_plan(
    revision_line: &str,
    verified: Option<&[CommitLine]>,
    refused: Option<&Refusal>,
    plan: Option<&Plan>,
    slots: Option<&SlotBudget>,
    cluster: &Result<(ClusterOverview, Vec<JobOverview>), String>,
) {
    outln!("{revision_line}");
    outln!("{}", cluster_line(cluster));
    if let Some(commits) = verified {
        let mut signers: Vec<&str> = commits.iter().filter_map(|c| c.signer.as_deref()).collect();
        signers.sort_unstable();
        signers.dedup();
        outln!(
            "trust    {} new commit(s) verified; signed by {}",
            commits.len(),
            if signers.is_empty() {
                "-".to_string()
            } else {
                signers.join(", ")
            }
        );
    }
    outln!();
    if let Some(refusal) = refused {
        print_refusal(refusal);
        return;
    }
    let Some(plan) = plan else { return };
    if plan.jobs.is_empty() {
        outln!("  (no jobs)");
    }
    for job in &plan.jobs {
        let state = match (&job.flink_job_id, &job.flink_state) {
            (Some(jid), Some(state)) => format!("[{state} {}]", short_id(jid)),
            (Some(jid), None) => format!("[{} not listed]", short_id(jid)),
            _ => String::new(),
        };
        let reasons = job.reasons.join("; ");
        outln!(
            "  {:<10} {:<28} slots {:<7} {reasons} {state}",
            job.action.as_str(),
            job.job_id,
            super::review_output::slots_cell(slots.and_then(|s| s.of(&job.job_id)))
        );
        for warning in &job.warnings {
            outln!("             warning: {warning}");
        }
        // An incompatible verdict is among the warnings already.
        if let Some(verdict) = job.state_compatibility.as_ref().filter(|v| {
            !matches!(
                v,
                crate::plan::compat::StateCompatibility::Incompatible { .. }
            )
        }) {
            outln!("             {}", verdict.summary());
        }
        if let Some(diff) = &job.source_diff {
            for line in diff.lines() {
                outln!("             | {line}");
            }
        }
    }
    if plan.cluster_unreachable.is_some() {
        outln!();
        outln!("drift could not be checked: the cluster is unreachable");
    }
    if !plan.unmanaged.is_empty() {
        outln!();
        outln!("jobs on the cluster not deployed by flink-gitops (left alone):");
        for job in &plan.unmanaged {
            outln!("  {}  {:<10} {}", job.jid, job.state, job.name);
        }
    }
    let count = |wanted: &[Action]| {
        plan.jobs
            .iter()
            .filter(|j| wanted.contains(&j.action))
            .count()
    };
    match slots {
        Some(slots) => {
            outln!();
            outln!("slots    {}", slots.summary());
            if let Some(warning) = slots.rollback_warning() {
                outln!("         warning: {warning}");
            }
        }
        None => {
            outln!();
            outln!("slots    not checked: the cluster could not be read");
        }
    }
    let held = count(&[Action::Blocked, Action::Wait]);
    let unchanged = count(&[Action::Unchanged]);
    outln!();
    outln!(
        "{} to change, {unchanged} unchanged{}",
        plan.jobs.len() - held - unchanged,
        if held > 0 {
            format!(", {held} blocked or waiting")
        } else {
            String::new()
        }
    );
}

/// Renders `status`.
pub fn print_status(
    revision: &str,
    flink: &str,
    cluster_error: Option<&str>,
    refused: Option<&Refusal>,
    jobs: &[JobStatus],
) {
    outln!("revision {}  flink {flink}", short_id(revision));
    if let Some(reason) = cluster_error {
        outln!("cluster UNREACHABLE: {reason}");
    }
    if let Some(refusal) = refused {
        print_refusal(refusal);
    }
    outln!();
    outln!(
        "  {:<28} {:<6} {:<12} {:<12} {:<10} {:<32} {:<12} LAST SAVEPOINT",
        "JOB",
        "KIND",
        "DESIRED",
        "APPLIED",
        "RECORDED",
        "FLINK JOB",
        "FLINK STATE"
    );
    let dash = || "-".to_string();
    for job in jobs {
        outln!(
            "  {:<28} {:<6} {:<12} {:<12} {:<10} {:<32} {:<12} {}",
            job.job_id,
            job.kind.map_or("-", |k| k.as_str()),
            job.desired_commit
                .as_deref()
                .map(short_id)
                .map(str::to_string)
                .unwrap_or_else(dash),
            job.applied_commit
                .as_deref()
                .map(short_id)
                .map(str::to_string)
                .unwrap_or_else(dash),
            job.recorded_status.clone().unwrap_or_else(dash),
            job.flink_job_id.clone().unwrap_or_else(dash),
            job.flink_state.clone().unwrap_or_else(dash),
            match (&job.last_savepoint, job.last_savepoint_age_s) {
                (Some(path), Some(age)) => format!(
                    "{path} ({} ago)",
                    crate::util::format_duration(std::time::Duration::from_secs(age as u64))
                ),
                (Some(path), None) => path.clone(),
                (None, _) => dash(),
            },
        );
        if let Some(phase) = job.phase.as_deref().filter(|p| *p != "steady") {
            outln!(
                "  {:<28} phase {phase}: {}",
                "",
                job.phase_detail.clone().unwrap_or_else(dash)
            );
        }
        if let Some(error) = &job.last_error {
            outln!("  {:<28} last failure: {error}", "");
        }
        if let Some(at) = &job.retry_at {
            outln!("  {:<28} tried again at {at}", "");
        }
        if job.last_run.is_some() || job.next_run.is_some() {
            outln!(
                "  {:<28} last run: {}  next run: {}",
                "",
                job.last_run.clone().unwrap_or_else(dash),
                job.next_run.clone().unwrap_or_else(dash)
            );
        }
    }
}

/// Renders `apply`.
pub fn print_apply(report: &crate::reconcile::ApplyReport) {
    use crate::reconcile::Outcome;
    if let Some(revision) = &report.revision {
        outln!("revision {}", short_id(revision));
    }
    for note in &report.recovered {
        outln!("recovered: {note}");
    }
    for note in &report.revision_rollbacks {
        outln!("REVISION ROLLBACK: {note}");
    }
    if let Some((kind, message)) = &report.refused {
        outln!("REFUSED ({kind}): {message}");
        outln!("the cluster keeps the last verified state");
        return;
    }
    if let Some(error) = &report.cluster_error {
        outln!("cluster UNREACHABLE: {error}");
        outln!("no action taken, nothing marked applied");
        return;
    }
    for job in &report.jobs {
        let outcome = match job.outcome {
            Outcome::Ok => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::RolledBack => "ROLLED BACK",
            Outcome::Retrying => "RETRYING",
            Outcome::Blocked => "BLOCKED",
            Outcome::Held => "HELD",
            Outcome::Failed => "FAILED",
        };
        outln!(
            "  {:<10} {:<28} {:<11} {}",
            job.action.as_str(),
            job.job_id,
            outcome,
            job.message
        );
        if job.outcome != Outcome::Unchanged && !job.reasons.is_empty() {
            outln!(
                "  {:<10} {:<28} {:<11} why: {}",
                "",
                "",
                "",
                job.reasons.join("; ")
            );
        }
        if let Some(cause) = &job.root_cause {
            outln!("  {:<10} {:<28} {:<11} root cause: {cause}", "", "", "");
        }
        for warning in &job.warnings {
            outln!("  {:<10} {:<28} {:<11} warning: {warning}", "", "", "");
        }
    }
    if !report.unmanaged.is_empty() {
        outln!();
        outln!("jobs on the cluster not deployed by flink-gitops (left alone):");
        for job in &report.unmanaged {
            outln!("  {}  {:<10} {}", job.jid, job.state, job.name);
        }
    }
    for warning in &report.warnings {
        outln!("warning: {warning}");
    }
    for jar in &report.jars_deleted {
        outln!("deleted unused JAR {jar}");
    }
    let converged = report.converged();
    outln!();
    outln!(
        "{}",
        if converged {
            "converged"
        } else {
            "NOT converged"
        }
    );
}
