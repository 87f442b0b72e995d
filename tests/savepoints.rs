//! Periodic savepoints on the real Flink 2.3 cluster: `stream_config.savepoint_trigger_interval`
//! gives a running job a savepoint whenever its newest one is older than the interval, recorded
//! with the revision it ran and shown by `status`; the job keeps running; after the agent was
//! away for several intervals it gets one savepoint, not a burst.

mod support;

use std::time::{Duration, Instant};

use flink_gitops::state::StateStore;
use support::*;

fn savepoints_of(work: &std::path::Path, job: &str) -> Vec<(String, String, String)> {
    let store = StateStore::open_read_only(&work.join("state"))
        .unwrap()
        .unwrap();
    store
        .audit_log()
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.action == "savepoint"
                && e.phase == "outcome"
                && e.job_id.as_deref() == Some(job)
                && e.result.as_deref() == Some("ok")
        })
        .map(|e| {
            let detail: serde_json::Value =
                serde_json::from_str(e.detail.as_deref().unwrap_or("{}")).unwrap();
            (
                detail["savepoint"].as_str().unwrap_or_default().to_string(),
                e.commit_id.unwrap_or_default(),
                e.at,
            )
        })
        .collect()
}

#[test]
fn a_running_job_gets_a_savepoint_every_interval_recorded_with_its_revision_and_no_burst() {
    let fixture = JobFixture::new(
        "periodic",
        |job| {
            counter_spec(
                job,
                "artifacts/counter-v1.jar",
                "stream_config: { savepoint_trigger_interval: 4000 }\n",
            )
        },
        "a job with savepoints every 4 s",
    );
    let JobFixture {
        job,
        commit,
        work,
        config,
        ..
    } = &fixture;
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let running = one_running(job);

    // Passes every second for 11 s: the first savepoint about 4 s after the start, then every 4 s.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(11) {
        let (code, report) = apply(config);
        assert_eq!(code, Some(0), "{report:#}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let taken = savepoints_of(work.path(), job);
    assert!(
        (2..=3).contains(&taken.len()),
        "two or three savepoints in 11 s at 4 s intervals: {taken:#?}"
    );
    for (path, revision, _) in &taken {
        assert_eq!(revision, commit, "recorded with the revision the job runs");
        let local = path.strip_prefix("file:").unwrap_or(path);
        assert!(
            std::path::Path::new(local).join("_metadata").is_file(),
            "{path} is a complete savepoint"
        );
    }
    assert_eq!(
        one_running(job),
        running,
        "the job ran on through its savepoints"
    );
    let status = flink_gitops_json(
        &["status", "-c", config.to_str().unwrap(), "--output", "json"],
        0,
    );
    let row = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        row["last_savepoint"],
        taken.last().unwrap().0.as_str(),
        "{row:#}"
    );
    assert!(
        row["last_savepoint_age_s"].as_i64().unwrap() < 10,
        "{row:#}"
    );

    // Away for three intervals: one savepoint when the agent is back, not three.
    std::thread::sleep(Duration::from_secs(12));
    let before = savepoints_of(work.path(), job).len();
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        savepoints_of(work.path(), job).len(),
        before + 1,
        "{report:#}"
    );
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        savepoints_of(work.path(), job).len(),
        before + 1,
        "not due again yet"
    );
}
