//! The error policy against injected faults at every step of an upgrade and of a rollback (the
//! in-process fake Flink; the same lifecycle runs against real Flink in tests/lifecycle.rs,
//! tests/soak.rs and tests/jobmanager_restart.rs).
//!
//! The invariant after every pass: a job that ran is running, or its recorded phase says what the
//! next pass continues, or it is blocked with a reason while its last good instance runs.

mod support;

use std::time::Duration;

use flink_gitops::config::Config;
use flink_gitops::plan::{flink_job_prefix, is_alive};
use flink_gitops::reconcile::{Agent, ApplyReport, Outcome};
use flink_gitops::state::{JobRecord, StateStore};
use flink_gitops::testing::{FakeFlink, Fault, Scenario};
use support::*;

const JOB: &str = "orders";
const SPEC: &str = "jobs/orders.yaml";

fn spec(parallelism: u32, args: &[&str]) -> String {
    let args = if args.is_empty() {
        String::new()
    } else {
        format!("args: [{}]\n", args.join(", "))
    };
    format!(
        "job_id: {JOB}\njob_type: stream\nartifact_path: artifacts/job.jar\n{args}deployment:\n  parallelism: {parallelism}\n  checkpoint_interval: 1000\nhealth:\n  stable_for: 0s\n  timeout: 2s\n"
    )
}

struct Setup {
    repo: SpecRepo,
    work: tempfile::TempDir,
    fake: FakeFlink,
    config: Config,
}

async fn setup() -> Setup {
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let repo = SpecRepo::new();
    repo.write("artifacts/job.jar", b"PK\x03\x04 fake job");
    repo.write(SPEC, spec(1, &[]));
    repo.commit("orders v1");
    let work = tempfile::tempdir().unwrap();
    let path = write_config(work.path(), &repo, &format!("http://{address}"));
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "reconcile:\n  poll_interval: 100ms\n  savepoint_timeout: 2s\n  retry_base: 10ms\n  retry_max: 20ms\n  max_failures: 3\n",
    );
    text = text.replace(
        "request_timeout: 5s",
        "request_timeout: 300ms\n  submit_timeout: 300ms",
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    Setup {
        repo,
        work,
        fake,
        config,
    }
}

/// The agent's state database, read-only (the agent holds it).
fn store(s: &Setup) -> StateStore {
    StateStore::open_read_only(&s.work.path().join("state"))
        .unwrap()
        .unwrap()
}

fn record(s: &Setup) -> JobRecord {
    store(s).job(JOB).unwrap().unwrap()
}

fn alive(s: &Setup) -> Vec<String> {
    s.fake
        .jobs_with_prefix(&flink_job_prefix(JOB))
        .into_iter()
        .filter(|(_, state)| is_alive(state))
        .map(|(jid, _)| jid)
        .collect()
}

/// Never two instances; and none only while a recorded phase says what comes next.
fn assert_never_left_down(s: &Setup, context: &str, report: &ApplyReport) {
    let live = alive(s);
    assert!(live.len() <= 1, "{context}: two instances {live:?}");
    if live.is_empty() {
        let record = record(s);
        assert!(
            !matches!(record.phase.as_str(), "steady" | "blocked"),
            "{context}: nothing runs and nothing continues it: {record:#?}\n{report:#?}"
        );
    }
}

/// The pause between two passes: it outlasts a retry's wait (retry_max 20 ms plus up to a fifth),
/// as the service waits it out before its next pass.
const BETWEEN_PASSES: Duration = Duration::from_millis(30);

/// Passes until the job settles (converged, or rolled back / blocked with the old job running).
async fn settle(agent: &Agent, s: &Setup, context: &str) -> ApplyReport {
    for _ in 0..12 {
        let report = agent.apply_once().await.unwrap();
        assert_never_left_down(s, context, &report);
        let Some(job) = report.jobs.iter().find(|j| j.job_id == JOB) else {
            // The cluster could not be read at all this pass: nothing was done.
            assert!(report.cluster_error.is_some(), "{context}: {report:#?}");
            tokio::time::sleep(BETWEEN_PASSES).await;
            continue;
        };
        if matches!(
            job.outcome,
            Outcome::Ok | Outcome::Unchanged | Outcome::RolledBack | Outcome::Blocked
        ) {
            return report;
        }
        tokio::time::sleep(BETWEEN_PASSES).await;
    }
    panic!("{context}: the job did not settle within 12 passes")
}

/// The Flink calls of an upgrade (savepoint stop, state choice, submit, health gate), each failing
/// transiently more often than the client retries.
const UPGRADE_STEPS: &[&str] = &[
    "POST /jobs/:id/stop",
    "GET /jobs/:id/savepoints/:id",
    "GET /jobs/:id",
    "GET /jobs/:id/checkpoints",
    "GET /jobs/overview",
    "POST /jars/:id/run",
    "GET /jobs/:id/exceptions",
];

/// An upgrade that fails and its rollback also cancel the failed instance.
const ROLLBACK_STEPS: &[&str] = &[
    "POST /jobs/:id/stop",
    "GET /jobs/:id/savepoints/:id",
    "GET /jobs/:id",
    "GET /jobs/:id/checkpoints",
    "GET /jobs/overview",
    "POST /jars/:id/run",
    "GET /jobs/:id/exceptions",
    "PATCH /jobs/:id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_at_every_step_of_an_upgrade_never_leave_the_job_down() {
    for step in UPGRADE_STEPS {
        for fault in [Fault::Status(503), Fault::Delay(Duration::from_millis(500))] {
            let context = format!("{step} {fault:?}");
            let s = setup().await;
            let agent = Agent::open(s.config.clone()).unwrap();
            assert!(agent.apply_once().await.unwrap().converged(), "{context}");
            let v1 = alive(&s);
            s.repo.write(SPEC, spec(2, &[]));
            s.repo.commit("orders v2");
            s.fake.fail_next(step, 4, fault.clone());
            let report = settle(&agent, &s, &context).await;
            assert!(
                s.fake.faults_pending() < 4,
                "{context}: the fault was served"
            );
            assert!(report.converged(), "{context}: {report:#?}");
            let live = alive(&s);
            assert_eq!(live.len(), 1, "{context}");
            assert_ne!(live, v1, "{context}: upgraded");
            let record = record(&s);
            assert!(record.spec_json.contains("\"parallelism\":2"), "{context}");
            assert_eq!(record.phase, "steady", "{context}");
            assert_eq!(record.failures, 0, "{context}: success resets the count");
            let restored = s.fake.restored_from(&live[0]).unwrap_or_default();
            assert!(
                restored.contains("savepoint-"),
                "{context}: the upgrade restored its savepoint, not {restored}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_at_every_step_of_a_rollback_never_leave_the_job_down() {
    for step in ROLLBACK_STEPS {
        let context = format!("rollback, {step}");
        let s = setup().await;
        let agent = Agent::open(s.config.clone()).unwrap();
        assert!(agent.apply_once().await.unwrap().converged(), "{context}");
        s.fake.fail_jobs_with_arg("--crash");
        s.repo.write(SPEC, spec(1, &["--crash"]));
        s.repo.commit("orders v2 crashes at start");
        // The faults hit the upgrade's calls and then the rollback's (cancel, state, submit).
        s.fake.fail_next(step, 4, Fault::Status(503));
        let report = settle(&agent, &s, &context).await;
        assert!(
            s.fake.faults_pending() < 4,
            "{context}: the fault was served"
        );
        let job = report.jobs.iter().find(|j| j.job_id == JOB).unwrap();
        let live = alive(&s);
        assert_eq!(live.len(), 1, "{context}: {report:#?}");
        let record = record(&s);
        assert!(
            !record.spec_json.contains("--crash"),
            "{context}: the last good spec runs"
        );
        assert!(
            matches!(job.outcome, Outcome::RolledBack | Outcome::Blocked),
            "{context}: {job:#?}"
        );
        let restored = s.fake.restored_from(&live[0]).unwrap_or_default();
        assert!(
            restored.contains("savepoint-"),
            "{context}: rolled back from the upgrade's savepoint, not {restored:?}"
        );
        // The failed spec is not tried again: later passes keep the job as it is.
        let again = agent.apply_once().await.unwrap();
        let job = again.jobs.iter().find(|j| j.job_id == JOB).unwrap();
        assert_eq!(job.outcome, Outcome::Blocked, "{context}: {job:#?}");
        assert!(job.message.contains("rolled back"), "{}", job.message);
        assert_eq!(alive(&s), live, "{context}: nothing restarted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_500_on_create_is_retried_without_a_new_commit() {
    let s = setup().await;
    s.fake
        .fail_next("POST /jars/:id/run", 1, Fault::Status(500));
    let agent = Agent::open(s.config.clone()).unwrap();
    let first = agent.apply_once().await.unwrap();
    let job = first.jobs.iter().find(|j| j.job_id == JOB).unwrap();
    assert_eq!(job.outcome, Outcome::Retrying, "{job:#?}");
    assert!(job.message.contains("HTTP 500"), "{}", job.message);
    let report = settle(&agent, &s, "create").await;
    assert!(report.converged(), "{report:#?}");
    assert_eq!(alive(&s).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_that_timed_out_but_reached_flink_is_verified_not_sent_twice() {
    let s = setup().await;
    let agent = Agent::open(s.config.clone()).unwrap();
    assert!(agent.apply_once().await.unwrap().converged());
    s.repo.write(SPEC, spec(2, &[]));
    s.repo.commit("orders v2");
    // Flink takes the submission, but only answers after the client gave up.
    s.fake.fail_next(
        "POST /jars/:id/run",
        1,
        Fault::Delay(Duration::from_millis(500)),
    );
    let first = agent.apply_once().await.unwrap();
    assert_eq!(first.jobs[0].outcome, Outcome::Retrying, "{first:#?}");
    assert!(first.jobs[0].message.contains("timed out"), "{first:#?}");
    assert_eq!(
        record(&s).phase,
        "submitted",
        "the submission stays recorded"
    );
    // Flink takes it after all, once its delay is over; the next pass finds it and verifies it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.fake.jobs_with_prefix(&flink_job_prefix(JOB)).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the delayed submission never reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = settle(&agent, &s, "slow submit").await;
    assert!(report.converged(), "{report:#?}");
    let ours = s.fake.jobs_with_prefix(&flink_job_prefix(JOB));
    assert_eq!(
        ours.len(),
        2,
        "v1 finished and one v2, never a second v2: {ours:?}"
    );
    assert_eq!(
        s.fake.requests()["POST /jars/:id/run"],
        2,
        "create + one upgrade submit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_flink_keeps_refusing_blocks_the_job_and_retry_brings_it_back() {
    let s = setup().await;
    let agent = Agent::open(s.config.clone()).unwrap();
    assert!(agent.apply_once().await.unwrap().converged());
    let running = alive(&s);
    s.fake.set_scenario(Scenario::SavepointFails);
    s.repo.write(SPEC, spec(2, &[]));
    s.repo.commit("orders v2");
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(BETWEEN_PASSES).await;
        let report = agent.apply_once().await.unwrap();
        assert_never_left_down(&s, "savepoint fails", &report);
        let job = report
            .jobs
            .iter()
            .find(|j| j.job_id == JOB)
            .unwrap()
            .clone();
        outcomes.push(job.outcome);
        assert_eq!(alive(&s), running, "the old job keeps running");
    }
    assert_eq!(
        outcomes,
        vec![Outcome::Retrying, Outcome::Retrying, Outcome::Blocked]
    );
    let blocked = record(&s);
    assert_eq!(blocked.phase, "blocked");
    assert!(
        blocked
            .last_error
            .as_deref()
            .unwrap()
            .contains("injected: disk full"),
        "{blocked:#?}"
    );
    // Blocked stays blocked: no further attempts.
    let before = s.fake.requests().get("POST /jobs/:id/stop").copied();
    let report = agent.apply_once().await.unwrap();
    assert_eq!(report.jobs[0].outcome, Outcome::Blocked);
    assert!(report.jobs[0].message.contains("flink-gitops retry orders"));
    assert_eq!(
        s.fake.requests().get("POST /jobs/:id/stop").copied(),
        before
    );

    // The operator fixes the storage and asks for a retry, through the command line.
    s.fake.set_scenario(Scenario::Healthy);
    let config_path = s.work.path().join("config.yaml");
    let queued = flink_gitops(&["retry", "-c", config_path.to_str().unwrap(), JOB]);
    assert!(queued.status.success(), "{queued:?}");
    assert!(String::from_utf8_lossy(&queued.stdout).contains("queued request"));
    let report = agent.apply_once().await.unwrap();
    assert!(report.converged(), "{report:#?}");
    assert!(
        report
            .recovered
            .iter()
            .any(|n| n.contains("retry requested"))
    );
    assert!(record(&s).spec_json.contains("\"parallelism\":2"));
    assert_eq!(alive(&s).len(), 1);
    let audit = store(&s).audit_log().unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "retry" && e.result.as_deref() == Some("ok")),
        "the retry is audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_is_blocked_until_the_spec_changes() {
    let s = setup().await;
    s.fake.fail_jobs_with_arg("--crash");
    s.repo.write(SPEC, spec(1, &["--crash"]));
    s.repo.commit("orders crashes at start");
    let agent = Agent::open(s.config.clone()).unwrap();
    let report = agent.apply_once().await.unwrap();
    let job = report.jobs.iter().find(|j| j.job_id == JOB).unwrap();
    assert_eq!(job.outcome, Outcome::Blocked, "{job:#?}");
    assert!(
        job.root_cause
            .as_deref()
            .unwrap_or_default()
            .contains("injected start-up failure"),
        "{job:#?}"
    );
    assert!(alive(&s).is_empty());
    let again = agent.apply_once().await.unwrap();
    assert_eq!(
        again.jobs[0].outcome,
        Outcome::Blocked,
        "not retried at the same spec"
    );
    s.repo.write(SPEC, spec(1, &[]));
    s.repo.commit("fix the crash");
    let fixed = agent.apply_once().await.unwrap();
    assert!(fixed.converged(), "{fixed:#?}");
    assert_eq!(alive(&s).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_job_restarts_from_its_newest_recorded_state_never_empty() {
    let s = setup().await;
    let agent = Agent::open(s.config.clone()).unwrap();
    assert!(agent.apply_once().await.unwrap().converged());
    s.repo.write(SPEC, spec(2, &[]));
    s.repo.commit("orders v2");
    assert!(agent.apply_once().await.unwrap().converged());
    let upgraded = record(&s);
    // The JobManager restarts: Flink forgets every job; the agent still knows the savepoint.
    s.fake.forget_jobs();
    let report = agent.apply_once().await.unwrap();
    assert!(report.converged(), "{report:#?}");
    let live = alive(&s);
    assert_eq!(live.len(), 1);
    let restored = s.fake.restored_from(&live[0]).unwrap_or_default();
    assert!(
        !restored.is_empty(),
        "a stateful job is never restarted empty"
    );
    assert_ne!(upgraded.flink_job_id.as_deref(), Some(live[0].as_str()));

    // All of its state is gone too: blocked with the reason, not started empty.
    let store = StateStore::open_for_requests(&s.work.path().join("state"))
        .unwrap()
        .unwrap();
    for point in store.restore_points(JOB).unwrap() {
        store
            .mark_unusable(JOB, &point.path, "deleted by the test")
            .unwrap();
    }
    drop(store);
    s.fake.forget_jobs();
    let report = agent.apply_once().await.unwrap();
    let job = &report.jobs[0];
    assert_eq!(job.outcome, Outcome::Blocked, "{job:#?}");
    assert!(
        job.message.contains("no restorable state"),
        "{}",
        job.message
    );
    assert!(job.message.contains("--start-empty"), "{}", job.message);
    assert!(alive(&s).is_empty(), "not started empty");
    let config_path = s.work.path().join("config.yaml");
    let queued = flink_gitops(&[
        "retry",
        "-c",
        config_path.to_str().unwrap(),
        JOB,
        "--start-empty",
    ]);
    assert!(queued.status.success(), "{queued:?}");
    let report = agent.apply_once().await.unwrap();
    assert!(report.converged(), "{report:#?}");
    let live = alive(&s);
    assert_eq!(
        s.fake.restored_from(&live[0]),
        None,
        "started empty, once, as asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_flink_cannot_find_is_marked_and_the_next_newest_is_restored() {
    let s = setup().await;
    let agent = Agent::open(s.config.clone()).unwrap();
    assert!(agent.apply_once().await.unwrap().converged());
    s.repo.write(SPEC, spec(2, &[]));
    s.repo.commit("orders v2");
    let upgraded = agent.apply_once().await.unwrap();
    assert!(upgraded.converged());
    let savepoint = upgraded.jobs[0].savepoint.clone().unwrap();
    let points = store(&s).restore_points(JOB).unwrap();
    // The newest known state is v2's checkpoint (recorded when it was promoted); it is gone.
    let newest = points.first().unwrap().path.clone();
    assert_ne!(newest, savepoint);
    s.fake.delete_state(&newest);
    s.fake.forget_jobs();
    let report = agent.apply_once().await.unwrap();
    assert!(report.converged(), "{report:#?}");
    let live = alive(&s);
    assert_eq!(live.len(), 1);
    assert_eq!(
        s.fake.restored_from(&live[0]).as_deref(),
        Some(savepoint.as_str()),
        "the next newest state"
    );
    let points = store(&s).restore_points(JOB).unwrap();
    let marked = points.iter().find(|p| p.path == newest).unwrap();
    assert!(
        marked
            .unusable
            .as_deref()
            .unwrap()
            .contains("Cannot find checkpoint or savepoint"),
        "{marked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspend_whose_savepoint_keeps_failing_is_blocked_and_stays_blocked() {
    let s = setup().await;
    let agent = Agent::open(s.config.clone()).unwrap();
    assert!(agent.apply_once().await.unwrap().converged());
    let running = alive(&s);
    s.fake.set_scenario(Scenario::SavepointFails);
    s.repo
        .write(SPEC, format!("{}state: suspended\n", spec(1, &[])));
    s.repo.commit("suspend orders");
    for _ in 0..3 {
        tokio::time::sleep(BETWEEN_PASSES).await;
        agent.apply_once().await.unwrap();
    }
    assert_eq!(record(&s).phase, "blocked");
    // Blocked means no further savepoint attempts on that spec, however many passes follow.
    let stops = s.fake.requests().get("POST /jobs/:id/stop").copied();
    for _ in 0..2 {
        tokio::time::sleep(BETWEEN_PASSES).await;
        let report = agent.apply_once().await.unwrap();
        assert_eq!(report.jobs[0].outcome, Outcome::Blocked, "{report:#?}");
    }
    assert_eq!(s.fake.requests().get("POST /jobs/:id/stop").copied(), stops);
    assert_eq!(alive(&s), running, "the job keeps running meanwhile");
}
