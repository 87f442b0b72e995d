//! Text rendering of command results for people; JSON goes through serde unchanged.

use serde::Serialize;

use crate::flink::{ClusterOverview, JobOverview};
use crate::plan::{Action, Plan};
use crate::spec::SpecError;
use crate::spec::source::short_id;

use super::JobStatus;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
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

/// Renders `plan`.
pub fn print_plan(
    revision_line: &str,
    plan: Option<&Plan>,
    spec_errors: &[SpecError],
    cluster: &Result<(ClusterOverview, Vec<JobOverview>), String>,
) {
    println!("{revision_line}");
    println!("{}", cluster_line(cluster));
    println!();
    if !spec_errors.is_empty() {
        println!("the specs at this revision are invalid; nothing would be applied:");
        for error in spec_errors {
            println!("  {error}");
        }
        return;
    }
    let Some(plan) = plan else { return };
    if plan.jobs.is_empty() {
        println!("  (no jobs)");
    }
    for job in &plan.jobs {
        let state = match (&job.flink_job_id, &job.flink_state) {
            (Some(jid), Some(state)) => format!("[{state} {}]", short_id(jid)),
            (Some(jid), None) => format!("[{} not listed]", short_id(jid)),
            _ => String::new(),
        };
        let reasons = job.reasons.join("; ");
        println!(
            "  {:<10} {:<28} {reasons} {state}",
            job.action.as_str(),
            job.job_id
        );
    }
    if plan.cluster_unreachable.is_some() {
        println!();
        println!("drift could not be checked: the cluster is unreachable");
    }
    if !plan.unmanaged.is_empty() {
        println!();
        println!("jobs on the cluster not deployed by flink-gitops (left alone):");
        for job in &plan.unmanaged {
            println!("  {}  {:<10} {}", job.jid, job.state, job.name);
        }
    }
    let changes = plan
        .jobs
        .iter()
        .filter(|j| j.action != Action::Unchanged)
        .count();
    println!();
    println!(
        "{changes} to change, {} unchanged",
        plan.jobs.len() - changes
    );
}

/// Renders `status`.
pub fn print_status(
    revision: &str,
    flink: &str,
    cluster_error: Option<&str>,
    spec_errors: &[SpecError],
    jobs: &[JobStatus],
) {
    println!("revision {}  flink {flink}", short_id(revision));
    if let Some(reason) = cluster_error {
        println!("cluster UNREACHABLE: {reason}");
    }
    for error in spec_errors {
        println!("invalid spec: {error}");
    }
    println!();
    println!(
        "  {:<28} {:<12} {:<12} {:<10} {:<32} {:<12} LAST SAVEPOINT",
        "JOB", "DESIRED", "APPLIED", "RECORDED", "FLINK JOB", "FLINK STATE"
    );
    let dash = || "-".to_string();
    for job in jobs {
        println!(
            "  {:<28} {:<12} {:<12} {:<10} {:<32} {:<12} {}",
            job.job_id,
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
            job.last_savepoint.clone().unwrap_or_else(dash),
        );
    }
}
