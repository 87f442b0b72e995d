//! Fault injection and scale against the in-process fake Flink: what the real cluster cannot show on
//! demand. Every lifecycle behaviour itself is proven against the real cluster (tests/lifecycle.rs).

mod support;

use flink_gitops::config::Config;
use flink_gitops::reconcile::{Agent, Outcome};
use flink_gitops::state::StateStore;
use flink_gitops::testing::{FakeFlink, Scenario};
use support::*;

fn fast_spec(job_id: &str, parallelism: u32) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\nartifact_path: artifacts/job.jar\ndeployment:\n  parallelism: {parallelism}\n  checkpoint_interval: 1000\nhealth:\n  stable_for: 0s\n  timeout: 10s\n"
    )
}

struct Setup {
    repo: SpecRepo,
    work: tempfile::TempDir,
    fake: FakeFlink,
    config: Config,
}

async fn setup(jobs: usize, extra: &str) -> Setup {
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let repo = SpecRepo::new();
    repo.write("artifacts/job.jar", b"PK\x03\x04 fake job");
    for n in 0..jobs {
        repo.write(
            &format!("jobs/team-{}/job-{n}.yaml", n % 10),
            fast_spec(&format!("job-{n}"), 1),
        );
    }
    repo.commit("jobs");
    let work = tempfile::tempdir().unwrap();
    let path = write_config(work.path(), &repo, &format!("http://{address}"));
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "reconcile:\n  poll_interval: 100ms\n  max_concurrency: 8\n{extra}"
    ));
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    Setup {
        repo,
        work,
        fake,
        config,
    }
}

fn outcome<'a>(
    report: &'a flink_gitops::reconcile::ApplyReport,
    job_id: &str,
) -> &'a flink_gitops::reconcile::JobOutcome {
    report.jobs.iter().find(|j| j.job_id == job_id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_op_pass_costs_the_same_few_calls_for_10_or_1000_jobs() {
    let mut calls = Vec::new();
    for jobs in [10, 1000] {
        let s = setup(jobs, "").await;
        let agent = Agent::open(s.config.clone()).unwrap();
        let created = agent.apply_once().await.unwrap();
        assert!(
            created.converged(),
            "{:?}",
            created.jobs.iter().find(|j| j.outcome != Outcome::Ok)
        );
        assert_eq!(created.jobs.len(), jobs);
        let before = s.fake.total_requests();
        let noop = agent.apply_once().await.unwrap();
        assert!(noop.converged());
        assert!(noop.jobs.iter().all(|j| j.outcome == Outcome::Unchanged));
        calls.push(s.fake.total_requests() - before);
    }
    assert_eq!(
        calls[0], calls[1],
        "REST calls of a no-op pass must not grow with the number of jobs: {calls:?}"
    );
    // The README's benchmark figure (3 REST calls), whatever the job count.
    assert_eq!(calls[1], 3, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_with_nothing_to_do_writes_nothing() {
    use std::os::unix::fs::MetadataExt as _;
    let s = setup(10, "").await;
    // A scheduled batch job that is not due (it fires on 29 February only) keeps its schedule's
    // cursor where it was.
    s.repo.write(
        "jobs/nightly.yaml",
        "job_id: nightly\njob_type: batch\nartifact_path: artifacts/job.jar\n\
         batch_config: { cron: \"0 3 29 2 *\", timezone: Europe/Berlin }\n",
    );
    s.repo.commit("a scheduled batch job");
    let state = s.work.path().join("state");
    let agent = Agent::open(s.config.clone()).unwrap();
    assert!(agent.apply_once().await.unwrap().converged());
    // The second pass may still queue the alerts of what the first one did.
    assert!(agent.apply_once().await.unwrap().converged());
    // `data_version` moves when another connection commits.
    let watcher = rusqlite::Connection::open_with_flags(
        state.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let version = || -> i64 {
        watcher
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .unwrap()
    };
    let store = StateStore::open_read_only(&state).unwrap().unwrap();
    let head = store.meta("watermark").unwrap().unwrap();
    let applied_at = store.revision(&head).unwrap().unwrap().applied_at;
    assert!(applied_at.is_some());
    let (before, watermark_file) = (
        version(),
        std::fs::metadata(state.join("watermark")).unwrap().ino(),
    );
    for _ in 0..2 {
        let noop = agent.apply_once().await.unwrap();
        assert!(noop.converged());
        assert!(noop.jobs.iter().all(|j| j.outcome == Outcome::Unchanged));
    }
    // An agent that starts again (every `apply` does) loads the specs from the spec memo, read
    // beside its verification: nothing is parsed, so nothing is kept again either.
    drop(agent);
    let again = Agent::open(s.config.clone()).unwrap();
    let noop = again.apply_once().await.unwrap();
    assert!(noop.converged());
    assert!(noop.jobs.iter().all(|j| j.outcome == Outcome::Unchanged));
    assert_eq!(
        version(),
        before,
        "a pass with nothing to do committed a write"
    );
    assert_eq!(
        std::fs::metadata(state.join("watermark")).unwrap().ino(),
        watermark_file,
        "the kept watermark was written again"
    );
    assert_eq!(
        store.revision(&head).unwrap().unwrap().applied_at,
        applied_at,
        "applied_at says when the revision was first applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_mean_no_actions_and_nothing_marked_applied() {
    let s = setup(3, "").await;
    s.fake.set_scenario(Scenario::ServerError500);
    let agent = Agent::open(s.config.clone()).unwrap();
    let report = agent.apply_once().await.unwrap();
    assert!(report.jobs.is_empty());
    let error = report.cluster_error.clone().unwrap();
    assert!(
        error.contains("HTTP 500") && error.contains("injected failure"),
        "{error}"
    );
    assert!(!report.converged());
    drop(agent);
    let store = StateStore::open_read_only(&s.work.path().join("state"))
        .unwrap()
        .unwrap();
    assert!(store.jobs().unwrap().is_empty());
    let revision = store
        .revision(report.revision.as_deref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        revision.applied_at, None,
        "nothing may be marked applied while the cluster is unreachable"
    );
    assert!(
        store.audit_log().unwrap().is_empty(),
        "no action was attempted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_reported_as_such() {
    let mut s = setup(1, "").await;
    s.config.flink.request_timeout = std::time::Duration::from_millis(300);
    s.fake
        .set_scenario(Scenario::SlowResponses(std::time::Duration::from_secs(2)));
    let agent = Agent::open(s.config.clone()).unwrap();
    let report = agent.apply_once().await.unwrap();
    assert!(
        report
            .cluster_error
            .as_deref()
            .unwrap()
            .contains("timed out after 300ms"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_endless_savepoint_leaves_the_old_job_running() {
    for (scenario, expected) in [
        (Scenario::SavepointFails, "injected: disk full"),
        (
            Scenario::SavepointNeverCompletes,
            "savepoint not completed within 1s",
        ),
    ] {
        let s = setup(1, "  savepoint_timeout: 1s\n").await;
        let agent = Agent::open(s.config.clone()).unwrap();
        let created = agent.apply_once().await.unwrap();
        assert!(created.converged());
        let running = outcome(&created, "job-0").flink_job_id.clone().unwrap();

        s.fake.set_scenario(scenario.clone());
        s.repo
            .write("jobs/team-0/job-0.yaml", fast_spec("job-0", 2));
        s.repo.commit("scale up");
        let report = agent.apply_once().await.unwrap();
        let job = outcome(&report, "job-0");
        assert_eq!(job.outcome, Outcome::Retrying, "{scenario:?}: {job:?}");
        let detail = format!(
            "{} {}",
            job.message,
            job.root_cause.clone().unwrap_or_default()
        );
        assert!(detail.contains(expected), "{scenario:?}: {detail}");
        if scenario == Scenario::SavepointFails {
            assert!(detail.contains("the job keeps running"), "{detail}");
        }
        assert_eq!(s.fake.job_state(&running).as_deref(), Some("RUNNING"));
        let record = agent_record(&agent, &s, "job-0");
        assert_eq!(record.flink_job_id.as_deref(), Some(running.as_str()));
        assert!(
            record.spec_json.contains("\"parallelism\":1"),
            "the record still holds the running spec"
        );
    }
}

fn agent_record(agent: &Agent, s: &Setup, job_id: &str) -> flink_gitops::state::JobRecord {
    let _ = agent;
    StateStore::open_read_only(&s.work.path().join("state"))
        .unwrap()
        .unwrap()
        .job(job_id)
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_is_refused() {
    let s = setup(1, "").await;
    let _first = Agent::open(s.config.clone()).unwrap();
    let error = Agent::open(s.config.clone()).err().unwrap().to_string();
    assert!(
        error.contains("in use by another flink-gitops process"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flinks_bearer_token_and_basic_auth_are_sent_and_a_wrong_one_is_a_clear_401() {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("agent:s3cret-pass");
    let cases = [
        (
            "{ bearer_token_file: flink-token }",
            "t0ken-for-flink",
            "Bearer t0ken-for-flink".to_string(),
        ),
        (
            "{ username: agent, password_file: flink-token }",
            "s3cret-pass",
            format!("Basic {basic}"),
        ),
    ];
    for (auth, secret, header) in cases {
        let s = setup(1, "").await;
        s.fake.require_authorization(&header);
        let path = s.work.path().join("config.yaml");
        let token = s.work.path().join("flink-token");
        std::fs::write(&token, secret).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let with_auth = |text: &str| {
            text.replace(
                "  request_timeout: 5s\n",
                &format!("  request_timeout: 5s\n  auth: {auth}\n"),
            )
        };
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, with_auth(&text)).unwrap();
        let agent = Agent::open(Config::load(&path).unwrap()).unwrap();
        let report = agent.apply_once().await.unwrap();
        assert_eq!(
            outcome(&report, "job-0").outcome,
            Outcome::Ok,
            "{auth}: {report:#?}"
        );
        drop(agent);

        // Another secret in the file: every call is refused, and the report says why.
        std::fs::write(&token, "not-the-secret").unwrap();
        let agent = Agent::open(Config::load(&path).unwrap()).unwrap();
        let report = agent.apply_once().await.unwrap();
        let error = report.cluster_error.clone().unwrap_or_default();
        assert!(error.contains("401"), "{auth}: {report:#?}");
    }
}
