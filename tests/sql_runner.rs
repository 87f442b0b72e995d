//! The SQL runner JAR (`scripts/build-runner`) on the real cluster: a SQL pipeline handed over in the
//! run request runs under our job id and `SET` name, stops with a savepoint, and a changed version
//! restores its state from that savepoint; a file with two jobs or a malformed `SET` is refused by
//! the runner with a message Flink passes back.
#![cfg(feature = "real-flink")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flink_gitops::flink::{FlinkClient, RunRequest};
use flink_gitops::plan::flink_job_id;
use support::*;

fn build_runner(dir: &Path) -> PathBuf {
    let jar = dir.join("sql-runner.jar");
    run(Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-runner")).arg(&jar));
    jar
}

fn statements(name: &str, aggregate: &str) -> Vec<String> {
    [
        format!("SET 'pipeline.name' = '{name}'"),
        "CREATE TABLE clicks (user_id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20', 'fields.user_id.min' = '1', 'fields.user_id.max' = '5')".to_string(),
        "CREATE TABLE counts (user_id BIGINT, clicks BIGINT) WITH ('connector' = 'blackhole')".to_string(),
        format!("INSERT INTO counts SELECT user_id, {aggregate} FROM clicks GROUP BY user_id"),
    ]
    .into_iter()
    .flat_map(|statement| ["--statement".to_string(), statement])
    .collect()
}

fn request(job_id: &str, args: Vec<String>, savepoint: Option<String>) -> RunRequest {
    RunRequest {
        entry_class: None,
        program_args_list: args,
        parallelism: 1,
        job_id: job_id.to_string(),
        savepoint_path: savepoint,
        claim_mode: Some("NO_CLAIM".into()),
        allow_non_restored_state: false,
        flink_configuration: Default::default(),
    }
}

async fn wait_running(client: &FlinkClient, jid: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(job) = client.job(jid).await
            && job.state == "RUNNING"
        {
            return job.name;
        }
        assert!(Instant::now() < deadline, "{jid} never ran");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_pipeline_runs_from_the_request_and_restores_its_state_after_a_change() {
    let job = unique("sql-runner");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let work = tempfile::tempdir().unwrap();
    let jar = build_runner(work.path());
    let client = FlinkClient::new(&flink_url().parse().unwrap(), Duration::from_secs(30)).unwrap();
    let jar_id = client.upload_jar_as(&jar, "sql-runner.jar").await.unwrap();

    let first = flink_job_id(&job, 1);
    client
        .run_jar(
            &jar_id,
            &request(&first, statements(&job, "COUNT(*)"), None),
        )
        .await
        .unwrap();
    assert_eq!(
        wait_running(&client, &first).await,
        job,
        "SET 'pipeline.name' names the job"
    );

    // Once the checkpoint-free stream's counts hold something, stop it with a savepoint.
    tokio::task::block_in_place(|| {
        wait_until("clicks counted", Duration::from_secs(30), || {
            records_flowed(&first)
        })
    });
    let savepoints = format!("file://{}/savepoints", flink_dir().display());
    // Any 32 hex digits unique to this stop will do: the next instance's id is one.
    let second = flink_job_id(&job, 2);
    let trigger = second.clone();
    client
        .stop_with_savepoint(&first, &savepoints, &trigger)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let location = loop {
        let poll = client.savepoint_status(&first, &trigger).await.unwrap();
        if let Some(operation) = poll.operation {
            break operation
                .location
                .unwrap_or_else(|| panic!("savepoint failed: {:?}", operation.failure_cause));
        }
        assert!(Instant::now() < deadline, "no savepoint");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // A compatible change: the same grouping, a different expression over the same state.
    client
        .run_jar(
            &jar_id,
            &request(
                &second,
                statements(&format!("{job}-v2"), "COUNT(*) + 0"),
                Some(location.clone()),
            ),
        )
        .await
        .unwrap();
    assert_eq!(wait_running(&client, &second).await, format!("{job}-v2"));
    let restored = restored_from(&second).expect("the new version restored a savepoint");
    assert!(
        flink_gitops::reconcile::restore::same_path(&restored, &location),
        "restored {restored}, savepoint {location}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_or_a_malformed_set_are_refused_by_the_runner() {
    let job = unique("sql-refused");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let work = tempfile::tempdir().unwrap();
    let jar = build_runner(work.path());
    let client = FlinkClient::new(&flink_url().parse().unwrap(), Duration::from_secs(30))
        .unwrap()
        .with_retry_attempts(1);
    let jar_id = client.upload_jar_as(&jar, "sql-runner.jar").await.unwrap();

    let mut two_jobs = statements(&job, "COUNT(*)");
    two_jobs.extend([
        "--statement".into(),
        "INSERT INTO counts SELECT user_id, 1 FROM clicks".into(),
    ]);
    let error = client
        .run_jar(&jar_id, &request(&flink_job_id(&job, 1), two_jobs, None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("expected exactly one INSERT or EXECUTE STATEMENT SET, got 2"),
        "{error}"
    );

    let mut bad_set = statements(&job, "COUNT(*)");
    bad_set[1] = "SET pipeline.name = unquoted".into();
    let error = client
        .run_jar(&jar_id, &request(&flink_job_id(&job, 2), bad_set, None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("write SET as SET 'key' = 'value'"),
        "{error}"
    );
    assert!(
        cluster_jobs_with_prefix(&flink_gitops::plan::flink_job_prefix(&job))
            .iter()
            .all(|(_, state)| state != "RUNNING"),
        "nothing runs"
    );
}
