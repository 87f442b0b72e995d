//! Revisions of dependent jobs (`depends_on`) against the real Flink 2.3 cluster, through
//! `flink-gitops apply`: created upstream first, each after the health gate of the one before.
#![cfg(feature = "real-flink")]

mod support;

use flink_gitops::state::{AuditEntry, StateStore};
use support::*;

/// The audit log of the agent whose state is in `work/state`.
fn audit_log(work: &std::path::Path) -> Vec<AuditEntry> {
    StateStore::open_read_only(&work.join("state"))
        .unwrap()
        .expect("no state database")
        .audit_log()
        .unwrap()
}

/// The id of the first audit row of `job_id` with `action` in `phase`, at or after `from`.
fn first(log: &[AuditEntry], from: i64, job_id: &str, action: &str, phase: &str) -> i64 {
    log.iter()
        .find(|e| {
            e.id >= from
                && e.job_id.as_deref() == Some(job_id)
                && e.action == action
                && e.phase == phase
        })
        .unwrap_or_else(|| panic!("no {action} {phase} of {job_id} in {log:#?}"))
        .id
}

#[test]
fn dependent_jobs_are_created_upstream_first() {
    // source ← enrich ← sink (sink depends on enrich, enrich on source). The names sort the other
    // way round, so the order cannot come from the job ids.
    let source = unique("z-source");
    let enrich = unique("m-enrich");
    let sink = unique("a-sink");
    let _cleanup = CancelOnDrop(vec![source.clone(), enrich.clone(), sink.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    let spec = |job: &str, jar: &str, depends_on: &str| {
        counter_spec(
            job,
            &format!("artifacts/{jar}"),
            &format!("depends_on: [{depends_on}]\n"),
        )
        .replace("stable_for: 2s", "stable_for: 1s")
    };
    repo.write(
        &format!("jobs/{source}.yaml"),
        spec(&source, "counter-v1.jar", ""),
    );
    repo.write(
        &format!("jobs/{enrich}.yaml"),
        spec(&enrich, "counter-v1.jar", &source),
    );
    repo.write(
        &format!("jobs/{sink}.yaml"),
        spec(&sink, "counter-v1.jar", &enrich),
    );
    repo.commit("a pipeline of three jobs");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);

    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    for job in [&source, &enrich, &sink] {
        expect(&report, job, "create", "ok");
        one_running(job);
    }
    // Each job was submitted only after the job it depends on passed its health gate.
    let log = audit_log(work.path());
    let promoted = |job: &str| first(&log, 0, job, "promote", "outcome");
    let submitted = |job: &str| first(&log, 0, job, "submit", "intent");
    assert!(
        promoted(&source) < submitted(&enrich),
        "enrich was submitted before source was healthy: {log:#?}"
    );
    assert!(
        promoted(&enrich) < submitted(&sink),
        "sink was submitted before enrich was healthy: {log:#?}"
    );
}
