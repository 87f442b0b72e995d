//! `rollback: revision` survives a crash at any step: the `flink-gitops` binary is killed
//! (failpoints) while a revision of three dependent jobs is rolled back, against the in-process
//! fake Flink; the next `apply` finishes the rollback, downstream first, with one revision-level
//! audit entry. The same rollback runs against real Flink in tests/ordered_revisions.rs.

mod support;

use std::path::Path;

use flink_gitops::plan::{flink_job_prefix, is_alive};
use flink_gitops::reconcile::restore::same_path;
use flink_gitops::state::StateStore;
use flink_gitops::testing::FakeFlink;
use support::*;

/// A job of the pipeline source ← enrich ← sink on the fake (no health gate to wait for).
fn spec(job_id: &str, depends_on: &str, args: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\nartifact_path: artifacts/job.jar\nargs: [{args}]\ndepends_on: [{depends_on}]\nrollback: revision\ndeployment:\n  parallelism: 1\n  checkpoint_interval: 1000\nhealth:\n  stable_for: 0s\n  timeout: 2s\n"
    )
}

fn write_pipeline(repo: &SpecRepo, version: &str, sink_args: &str) {
    repo.write("jobs/source.yaml", spec("source", "", version));
    repo.write("jobs/enrich.yaml", spec("enrich", "source", version));
    repo.write("jobs/sink.yaml", spec("sink", "enrich", sink_args));
}

fn alive(fake: &FakeFlink, job_id: &str) -> Vec<String> {
    fake.jobs_with_prefix(&flink_job_prefix(job_id))
        .into_iter()
        .filter(|(_, state)| is_alive(state))
        .map(|(jid, _)| jid)
        .collect()
}

/// Runs `apply` (killed at `failpoint` when given) off the runtime that serves the fake.
async fn apply_at(config: &Path, failpoint: Option<&str>) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flink-gitops"));
    command.args(["apply", "-c", config.to_str().unwrap(), "--output", "json"]);
    if let Some(point) = failpoint {
        command.env("FLINK_GITOPS_FAILPOINT", point);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    if failpoint.is_some() {
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&output.status),
            Some(9),
            "{failpoint:?} was not reached: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_rollback_interrupted_at_any_step_is_finished_by_the_next_apply() {
    // Where the agent dies: once source is upgraded (before anything failed); once the sink's
    // failure recorded its own rollback and the revision's (nothing of either done); once the
    // first step of the revision's rollback (enrich's) is recorded.
    for failpoint in [
        "after:promote",
        "revision-rollback:started",
        "revision-rollback:begun",
    ] {
        let fake = FakeFlink::new();
        let address = fake.serve().await.unwrap();
        fake.fail_jobs_with_arg("--broken");
        let repo = SpecRepo::new();
        repo.write("artifacts/job.jar", b"PK\x03\x04 fake job");
        write_pipeline(&repo, "", "");
        let v1 = repo.commit("v1");
        let work = tempfile::tempdir().unwrap();
        let config = write_config(work.path(), &repo, &format!("http://{address}"));
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("reconcile:\n  poll_interval: 100ms\n  savepoint_timeout: 2s\n");
        std::fs::write(&config, text).unwrap();
        let (code, report) = apply_at(&config, None).await;
        assert_eq!(code, Some(0), "{report}");

        write_pipeline(&repo, "\"--v2\"", "\"--broken\"");
        let v2 = repo.commit("v2, with a broken sink");
        apply_at(&config, Some(failpoint)).await;
        let (code, report) = apply_at(&config, None).await;
        assert_eq!(code, Some(1), "{failpoint}: {report}");

        let store = StateStore::open_read_only(&work.path().join("state"))
            .unwrap()
            .unwrap();
        let log = store.audit_log().unwrap();
        for job_id in ["source", "enrich", "sink"] {
            let record = store.job(job_id).unwrap().unwrap();
            assert_eq!(
                (record.commit_id.as_str(), record.phase.as_str()),
                (v1.as_str(), "steady"),
                "{failpoint}: {job_id} is not back on v1: {report}"
            );
            let running = alive(&fake, job_id);
            assert_eq!(running.len(), 1, "{failpoint}: {job_id}: {running:?}");
            // Restored from the state its upgrade to v2 started from.
            let upgrade_restore = log
                .iter()
                .find(|e| {
                    e.job_id.as_deref() == Some(job_id)
                        && e.action == "submit"
                        && e.phase == "intent"
                        && e.commit_id.as_deref() == Some(v2.as_str())
                })
                .and_then(|e| e.detail.as_deref())
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|d| d["restore"].as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("{failpoint}: no upgrade of {job_id}: {log:#?}"));
            let restored = fake.restored_from(&running[0]).unwrap_or_default();
            assert!(
                same_path(&restored, &upgrade_restore),
                "{failpoint}: {job_id} restored {restored}, not {upgrade_restore}"
            );
        }
        let rollback_intent = |job_id: &str| {
            log.iter()
                .rfind(|e| {
                    e.job_id.as_deref() == Some(job_id)
                        && e.action == "rollback"
                        && e.phase == "intent"
                })
                .unwrap_or_else(|| panic!("{failpoint}: no rollback of {job_id}"))
                .id
        };
        assert!(
            rollback_intent("sink") < rollback_intent("enrich")
                && rollback_intent("enrich") < rollback_intent("source"),
            "{failpoint}: downstream first: {log:#?}"
        );
        let revision_level: Vec<_> = log
            .iter()
            .filter(|e| e.action == "revision-rollback")
            .collect();
        assert_eq!(revision_level.len(), 2, "{failpoint}: {revision_level:#?}");
        assert_eq!(
            revision_level[1].result.as_deref(),
            Some("ok"),
            "{failpoint}: the revision-level intent was not closed as interrupted"
        );
        let open: Vec<_> = log
            .iter()
            .filter(|i| i.phase == "intent" && !log.iter().any(|o| o.intent_id == Some(i.id)))
            .collect();
        assert!(open.is_empty(), "{failpoint}: intents left open: {open:#?}");
    }
}
