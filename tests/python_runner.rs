//! The Python runner (`PythonRunner` in the `scripts/build-runner` JAR) on the real cluster: a PyFlink
//! program whose files travel base64-encoded in the run request runs under our job id and
//! `pipeline.name`, imports a shipped helper module on the TaskManagers, stops with a savepoint,
//! and a changed version restores its keyed state from it; a program that raises while it builds
//! its job is refused with the Python exception as the root cause of Flink's answer.
#![cfg(feature = "real-flink")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use flink_gitops::flink::{FlinkClient, RunRequest};
use flink_gitops::plan::flink_job_id;
use support::*;

const ENTRY_CLASS: &str = "dev.flinkgitops.runner.PythonRunner";
/// The example program and its helper package, relative to `example-repo/jobs-src/py`.
const FILES: [&str; 4] = [
    "counter.py",
    "broken.py",
    "lib/__init__.py",
    "lib/clicks.py",
];

fn build_runner(dir: &Path) -> PathBuf {
    let jar = dir.join("runner.jar");
    run(Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-runner")).arg(&jar));
    jar
}

/// `--file PATH BASE64` for every file, the entry, then the program's own arguments after `--`.
fn program_args(entry: &str, args: &[&str]) -> Vec<String> {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo/jobs-src/py");
    let mut list = Vec::new();
    for file in FILES {
        let content = std::fs::read(sources.join(file)).unwrap();
        list.extend([
            "--file".to_string(),
            file.to_string(),
            base64::engine::general_purpose::STANDARD.encode(content),
        ]);
    }
    list.extend(["--entry".to_string(), entry.to_string(), "--".to_string()]);
    list.extend(args.iter().map(|a| a.to_string()));
    list
}

fn request(job_id: &str, args: Vec<String>, name: &str, savepoint: Option<String>) -> RunRequest {
    RunRequest {
        entry_class: Some(ENTRY_CLASS.into()),
        program_args_list: args,
        parallelism: 1,
        job_id: job_id.to_string(),
        savepoint_path: savepoint,
        claim_mode: Some("NO_CLAIM".into()),
        allow_non_restored_state: false,
        flink_configuration: [("pipeline.name".to_string(), name.to_string())].into(),
    }
}

/// Waits until the job and all its tasks run (a Python task stays INITIALIZING while its Python
/// worker starts, and fails there when the worker cannot import the shipped modules).
async fn wait_running(jid: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = flink_json(&format!("/jobs/{jid}"));
        let vertices = job["vertices"].as_array().cloned().unwrap_or_default();
        if job["state"] == "RUNNING"
            && !vertices.is_empty()
            && vertices.iter().all(|v| v["status"] == "RUNNING")
        {
            return job["name"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline && job["state"] != "FAILED",
            "{jid} never ran: {job}\n{}",
            flink_json(&format!("/jobs/{jid}/exceptions"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_job_runs_from_the_request_and_restores_its_state_after_a_change() {
    let job = unique("py-runner");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let work = tempfile::tempdir().unwrap();
    let jar = build_runner(work.path());
    let client = FlinkClient::new(&flink_url().parse().unwrap(), Duration::from_secs(120)).unwrap();
    let jar_id = client.upload_jar_as(&jar, "runner.jar").await.unwrap();

    let first = flink_job_id(&job, 1);
    let started = Instant::now();
    let jid = client
        .run_jar(
            &jar_id,
            &request(&first, program_args("counter.py", &[]), &job, None),
        )
        .await
        .unwrap();
    assert_eq!(jid, first, "the run request's job id is the job's");
    assert_eq!(
        wait_running(&first).await,
        job,
        "pipeline.name of the run request names the job"
    );
    eprintln!("run request to all tasks RUNNING: {:?}", started.elapsed());

    // Once the keyed counts hold something, stop with a savepoint.
    tokio::task::block_in_place(|| {
        wait_until("clicks counted", Duration::from_secs(30), || {
            records_flowed(&first)
        })
    });
    let savepoints = format!("file://{}/savepoints", flink_dir().display());
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

    // A compatible change: the same keyed state (uid "py-click-count"), a new output format.
    client
        .run_jar(
            &jar_id,
            &request(
                &second,
                program_args("counter.py", &["--format", "v2"]),
                &format!("{job}-v2"),
                Some(location.clone()),
            ),
        )
        .await
        .unwrap();
    assert_eq!(wait_running(&second).await, format!("{job}-v2"));
    let restored = restored_from(&second).expect("the new version restored a savepoint");
    assert!(
        flink_gitops::reconcile::restore::same_path(&restored, &location),
        "restored {restored}, savepoint {location}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_error_at_submit_time_is_the_root_cause_of_the_refusal() {
    let job = unique("py-refused");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let work = tempfile::tempdir().unwrap();
    let jar = build_runner(work.path());
    let client = FlinkClient::new(&flink_url().parse().unwrap(), Duration::from_secs(120))
        .unwrap()
        .with_retry_attempts(1);
    let jar_id = client.upload_jar_as(&jar, "runner.jar").await.unwrap();

    let error = client
        .run_jar(
            &jar_id,
            &request(
                &flink_job_id(&job, 1),
                program_args("broken.py", &[]),
                &job,
                None,
            ),
        )
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.ends_with(": ValueError: --rate must be positive, got -1"),
        "the Python exception is the root cause: {text}"
    );

    // A path leaving the shipped tree is refused before any Python runs.
    let mut escape = program_args("counter.py", &[]);
    escape[1] = "../counter.py".into();
    let error = client
        .run_jar(
            &jar_id,
            &request(&flink_job_id(&job, 2), escape, &job, None),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("empty, . or .. segment in path: ../counter.py"),
        "{error}"
    );
    assert!(
        cluster_jobs_with_prefix(&flink_gitops::plan::flink_job_prefix(&job)).is_empty(),
        "nothing was submitted"
    );
}
