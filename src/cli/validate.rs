//! `flink-gitops validate`: offline checks of the job specs in a checkout.

use serde::Serialize;

use super::{EXIT_FINDINGS, EXIT_OK, Failure, OutputFormat, output, usage};
use crate::spec::{DirTree, SpecError};

#[derive(Serialize)]
struct ValidateReport<'a> {
    source: String,
    valid: bool,
    jobs: Vec<&'a str>,
    errors: &'a [SpecError],
    /// `checked`, `no SQL jobs`, or why Flink's own SQL check did not run.
    sql_check: String,
}

pub(super) fn run(
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
                outln!("{error}");
            }
            if report.sql_check != "no SQL jobs" {
                outln!("Flink SQL check: {}", report.sql_check);
            }
            if report.valid {
                outln!(
                    "ok: {} job spec(s) valid in {}",
                    report.jobs.len(),
                    report.source
                );
            } else {
                outln!("{} problem(s) found in {}", errors.len(), report.source);
            }
        }
    }
    Ok(if report.valid { EXIT_OK } else { EXIT_FINDINGS })
}
