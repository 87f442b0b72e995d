//! Revisions of dependent jobs (`depends_on`) against the real Flink 2.3 cluster, through
//! `flink-gitops apply`: created upstream first, each after the health gate of the one before.
#![cfg(feature = "real-flink")]

mod support;

use flink_gitops::state::AuditEntry;
use support::*;

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

/// The detail of the first audit row of `job_id` with `action` in `phase` and `commit`.
fn detail_of(
    log: &[AuditEntry],
    job_id: &str,
    action: &str,
    phase: &str,
    commit: &str,
) -> serde_json::Value {
    log.iter()
        .find(|e| {
            e.job_id.as_deref() == Some(job_id)
                && e.action == action
                && e.phase == phase
                && e.commit_id.as_deref() == Some(commit)
        })
        .and_then(|e| e.detail.as_deref())
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| panic!("no {action} {phase} of {job_id} at {commit} in {log:#?}"))
}

#[test]
fn dependent_jobs_are_created_upstream_first_and_a_failed_revision_is_rolled_back_as_a_whole() {
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
        // The gate these jobs need is "it runs": the test waits for six of them.
        .replace(
            "stable_for: 2s",
            "stable_for: 500ms\n  require_checkpoint: false",
        )
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
    let v1 = repo.commit("a pipeline of three jobs");
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

    let v1_instances: Vec<String> = [&source, &enrich, &sink]
        .iter()
        .map(|j| one_running(j))
        .collect();

    // One commit changes all three, with `rollback: revision`; the sink's new build fails its
    // health gate. Source and enrich were upgraded by then (upstream first): they go back to v1
    // too, from the savepoints their upgrades took, downstream first.
    let revision_scope = "rollback: revision\n";
    repo.write(
        &format!("jobs/{source}.yaml"),
        spec(&source, "counter-v2.jar", "") + revision_scope,
    );
    repo.write(
        &format!("jobs/{enrich}.yaml"),
        spec(&enrich, "counter-v2.jar", &source) + revision_scope,
    );
    repo.write(
        &format!("jobs/{sink}.yaml"),
        spec(&sink, "counter-broken.jar", &enrich) + revision_scope,
    );
    let v2 = repo.commit("v2 of the pipeline, with a broken sink");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let log = audit_log(work.path());
    let v2_start = log
        .iter()
        .find(|e| e.commit_id.as_deref() == Some(v2.as_str()))
        .unwrap()
        .id;
    for job in [&source, &enrich, &sink] {
        let entry = expect(&report, job, "upgrade", "rolled_back");
        let now = one_running(job);
        assert!(
            !v1_instances.contains(&now),
            "{job} runs a new instance of v1"
        );
        // Back on v1, restored from the savepoint the upgrade to v2 started from.
        let upgrade_savepoint = detail_of(&log, job, "submit", "intent", &v2)["restore"]
            .as_str()
            .unwrap_or_else(|| panic!("the upgrade of {job} restored nothing: {log:#?}"))
            .to_string();
        assert!(
            flink_gitops::reconcile::restore::same_path(
                &restored_from(&now).unwrap_or_default(),
                &upgrade_savepoint
            ),
            "{job}: {entry:#}"
        );
        assert_eq!(status_row(&config, job)["applied_commit"], v1.as_str());
    }
    // The sink failed first; then enrich, then source were rolled back (downstream first).
    let rollback = |job: &str| first(&log, v2_start, job, "rollback", "intent");
    assert!(rollback(&sink) < rollback(&enrich) && rollback(&enrich) < rollback(&source));
    assert!(
        first(&log, v2_start, &source, "promote", "outcome") < rollback(&sink),
        "source was upgraded before the sink failed"
    );
    let revision_rollbacks: Vec<_> = log
        .iter()
        .filter(|e| e.action == "revision-rollback")
        .collect();
    assert_eq!(
        revision_rollbacks.len(),
        2,
        "one intent, one outcome: {log:#?}"
    );
    assert!(
        log.iter()
            .filter(|e| e.phase == "intent")
            .all(|i| log.iter().any(|o| o.intent_id == Some(i.id))),
        "every intent has its outcome"
    );

    // `history`: one revision-level rollback, named after the job that failed, plus the steps.
    let history = flink_gitops_json(
        &[
            "history",
            "-c",
            config.to_str().unwrap(),
            "--output",
            "json",
        ],
        0,
    );
    let entries = history.as_array().unwrap();
    let revision_level: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "revision-rollback")
        .collect();
    assert_eq!(revision_level.len(), 1, "{history:#}");
    assert_eq!(revision_level[0]["job_id"], sink.as_str());
    assert_eq!(revision_level[0]["revision"], v2.as_str());
    let detail = revision_level[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("rolled back with it: {enrich}, {source}"))
            || detail.contains(&format!("rolled back with it: {source}, {enrich}")),
        "{detail}"
    );

    // The revision is not tried again while it is the head: nothing restarts.
    let running: Vec<String> = [&source, &enrich, &sink]
        .iter()
        .map(|j| one_running(j))
        .collect();
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    for job in [&source, &enrich] {
        let entry = expect(&report, job, "upgrade", "blocked");
        assert!(
            entry["message"]
                .as_str()
                .unwrap()
                .contains("rolled back as a whole"),
            "{entry:#}"
        );
    }
    expect(&report, &sink, "blocked", "blocked");
    let still: Vec<String> = [&source, &enrich, &sink]
        .iter()
        .map(|j| one_running(j))
        .collect();
    assert_eq!(running, still);
}
