//! Task slots against the real Flink cluster, with the cluster to itself (`scripts/test` runs this
//! file alone, after the others): a revision that deletes a wide job and widens another fits the
//! cluster only because the delete runs first, and the slot budget counts the slots it frees.
#![cfg(feature = "real-flink")]

mod support;

use flink_gitops::state::AuditEntry;
use support::*;

/// The id of the first audit row of `job_id` with `action` in `phase` for `commit`.
fn first(log: &[AuditEntry], commit: &str, job_id: &str, action: &str, phase: &str) -> i64 {
    log.iter()
        .find(|e| {
            e.commit_id.as_deref() == Some(commit)
                && e.job_id.as_deref() == Some(job_id)
                && e.action == action
                && e.phase == phase
        })
        .unwrap_or_else(|| panic!("no {action} {phase} of {job_id} at {commit} in {log:#?}"))
        .id
}

#[test]
fn an_upgrade_that_needs_the_slots_of_a_deleted_job_runs_after_the_delete() {
    let overview = flink_json("/overview");
    let free = overview["slots-available"].as_u64().unwrap();
    assert!(
        free >= 3,
        "this test needs the cluster to itself, with at least 3 free task slots: {overview}"
    );
    let wide = unique("wide");
    let grow = unique("grow");
    let _cleanup = CancelOnDrop(vec![wide.clone(), grow.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    let spec = |job: &str, parallelism: u64| {
        counter_spec(job, "artifacts/counter-v1.jar", "")
            .replace("parallelism: 1", &format!("parallelism: {parallelism}"))
            .replace(
                "stable_for: 2s",
                "stable_for: 500ms\n  require_checkpoint: false",
            )
    };
    // Together they take every free slot.
    repo.write(&format!("jobs/{wide}.yaml"), spec(&wide, free - 1))
        .write(&format!("jobs/{grow}.yaml"), spec(&grow, 1));
    repo.commit("a wide job and a narrow one");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &wide, "create", "ok");
    expect(&report, &grow, "create", "ok");

    // One commit deletes the wide job, widens the narrow one and adds a job as wide as what is
    // left: together they fit only in the slots the deleted job frees, which the plan counts.
    // The widened job is upgraded statelessly and the new job has nothing to stop, so both would be
    // submitted while the wide job's stop with a savepoint still runs, if the stop did not come first.
    let fresh = unique("fresh");
    let _cleanup_fresh = CancelOnDrop(vec![fresh.clone()]);
    repo.remove(&format!("jobs/{wide}.yaml"))
        .write(
            &format!("jobs/{grow}.yaml"),
            spec(&grow, 2) + "upgrade_mode: stateless\n",
        )
        .write(&format!("jobs/{fresh}.yaml"), spec(&fresh, free - 2));
    let change = repo.commit("drop the wide job, widen the other, add a new one");
    let plan = flink_gitops_json(
        &["plan", "-c", config.to_str().unwrap(), "--output", "json"],
        0,
    );
    assert!(plan.get("slots_refusal").is_none(), "{plan:#}");

    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &wide, "delete", "ok");
    expect(&report, &grow, "upgrade", "ok");
    expect(&report, &fresh, "create", "ok");
    none_running(&wide);
    for (job, parallelism) in [(&grow, 2), (&fresh, free - 2)] {
        let jid = one_running(job);
        let overview = flink_json(&format!("/jobs/{jid}"));
        assert!(
            overview["vertices"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["parallelism"].as_u64() == Some(parallelism)),
            "{job} runs with {parallelism} slots: {overview:#}"
        );
    }
    // The wide job was gone (stopped, its savepoint recorded) before the others were submitted.
    let log = audit_log(work.path());
    let deleted = first(&log, &change, &wide, "delete", "outcome");
    for job in [&grow, &fresh] {
        assert!(
            deleted < first(&log, &change, job, "submit", "intent"),
            "{job} was submitted before the deleted job had stopped: {log:#?}"
        );
    }
}
