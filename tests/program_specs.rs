//! SQL and Python specs that must not deploy: each hostile input is a `validate` error that names
//! the file (and line, where there is one), and a revision holding one is refused by `apply`
//! without touching what runs. A Python job on a cluster that cannot run Python is refused before
//! anything is sent. (The in-process fake Flink; the real runs are in tests/sql_jobs.rs and
//! tests/python_jobs.rs.)

mod support;

use std::path::Path;

use flink_gitops::config::Config;
use flink_gitops::reconcile::{Agent, Outcome};
use flink_gitops::testing::FakeFlink;
use serde_json::Value;
use support::*;

fn write(root: &Path, path: &str, content: impl AsRef<[u8]>) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

fn spec(job_id: &str, program: &str) -> String {
    format!("job_id: {job_id}\njob_type: stream\n{program}\n")
}

fn errors_of(report: &Value) -> Vec<(String, u64, String)> {
    report["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {report:#}"))
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_string(),
                e["line"].as_u64().unwrap(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn hostile_sql_and_python_inputs_are_validate_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ddl = "CREATE TABLE s (x INT) WITH ('connector' = 'datagen');\nCREATE TABLE t (x INT) WITH ('connector' = 'blackhole');\n";
    write(
        root,
        "pipelines/ok.sql",
        format!("{ddl}INSERT INTO t SELECT x FROM s;\n"),
    );
    write(
        root,
        "jobs/escape.yaml",
        spec("escape", "sql: ../outside.sql"),
    );
    std::os::unix::fs::symlink("ok.sql", root.join("pipelines/link.sql")).unwrap();
    write(
        root,
        "jobs/link.yaml",
        spec("link", "sql: pipelines/link.sql"),
    );
    write(
        root,
        "pipelines/two.sql",
        format!("{ddl}INSERT INTO t SELECT x FROM s;\n\nINSERT INTO t SELECT x + 1 FROM s;\n"),
    );
    write(root, "jobs/two.yaml", spec("two", "sql: pipelines/two.sql"));
    write(root, "pipelines/empty.sql", "-- nothing here yet\n");
    write(
        root,
        "jobs/empty.yaml",
        spec("empty", "sql: pipelines/empty.sql"),
    );
    write(root, "pipelines/huge.sql", vec![b' '; 10 * 1024 * 1024]);
    write(
        root,
        "jobs/huge.yaml",
        spec("huge", "sql: pipelines/huge.sql"),
    );
    write(
        root,
        "jobs/py.yaml",
        spec("py", "python:\n  entry: py/missing.py"),
    );
    write(
        root,
        "pipelines/select.sql",
        format!("{ddl}SELECT * FROM s;\nINSERT INTO t SELECT x FROM s;\n"),
    );
    write(
        root,
        "jobs/select.yaml",
        spec("select", "sql: pipelines/select.sql"),
    );
    write(
        root,
        "pipelines/bare-secret.sql",
        format!("{ddl}INSERT INTO t SELECT ${{secret:X}} FROM s;\n"),
    );
    write(
        root,
        "jobs/secret.yaml",
        spec("secret", "sql: pipelines/bare-secret.sql"),
    );
    write(
        root,
        "pipelines/owned.sql",
        format!(
            "SET 'pipeline.global-job-parameters' = 'x';\nCREATE FUNCTION f AS 'com.example.F' USING JAR 'https://example.com/f.jar';\n{ddl}INSERT INTO t SELECT x FROM s;\n"
        ),
    );
    write(
        root,
        "jobs/owned.yaml",
        spec("owned", "sql: pipelines/owned.sql"),
    );
    write(
        root,
        "jobs/both.yaml",
        spec("both", "artifact_path: a.jar\nsql: pipelines/ok.sql"),
    );

    let output = flink_gitops(&["validate", root.to_str().unwrap(), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let errors = errors_of(&report);
    let expected: [(&str, u64, &str); 11] = [
        (
            "pipelines/owned.sql",
            1,
            "`pipeline.global-job-parameters` is set by the agent",
        ),
        (
            "pipelines/owned.sql",
            2,
            "`CREATE FUNCTION … USING JAR` loads code that is neither pinned nor signed",
        ),
        (
            "jobs/escape.yaml",
            3,
            "contains `..`; paths may not leave the repository",
        ),
        (
            "pipelines/link.sql",
            0,
            "is a symlink (to `ok.sql`); SQL and Python sources must be regular files (named by `sql` in jobs/link.yaml)",
        ),
        (
            "pipelines/two.sql",
            5,
            "a second job statement (INSERT): jobs/two.yaml runs exactly one job",
        ),
        (
            "pipelines/empty.sql",
            0,
            "has no SQL statements (named by `sql` in jobs/empty.yaml)",
        ),
        (
            "pipelines/huge.sql",
            0,
            "is 10485760 bytes; a source file may be at most 1048576 bytes (1 MiB)",
        ),
        ("py/missing.py", 0, "does not exist in directory"),
        (
            "pipelines/select.sql",
            3,
            "`SELECT` does not belong in a deployed pipeline",
        ),
        (
            "jobs/secret.yaml",
            0,
            "${secret:X} must stand inside a quoted string",
        ),
        (
            "jobs/both.yaml",
            4,
            "set exactly one of `artifact_path`, `artifact_url`, `sql` and `python`; `artifact_path` is set too",
        ),
    ];
    for (file, line, message) in expected {
        assert!(
            errors
                .iter()
                .any(|(f, l, m)| f == file && *l == line && m.contains(message)),
            "no error {file}:{line} `{message}` in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

async fn fake_agent(repo: &SpecRepo, work: &Path) -> (FakeFlink, Agent) {
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let path = write_config(work, repo, &format!("http://{address}"));
    std::fs::write(work.join("runner.jar"), b"PK\x03\x04 not really a runner").unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("runner:\n  jar: runner.jar\nreconcile:\n  poll_interval: 100ms\n");
    std::fs::write(&path, text).unwrap();
    let agent = Agent::open(Config::load(&path).unwrap()).unwrap();
    (fake, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_with_a_bad_sql_file_is_refused_and_the_running_pipeline_is_untouched() {
    let repo = SpecRepo::new();
    let ddl = "CREATE TABLE s (x INT) WITH ('connector' = 'datagen');\nCREATE TABLE t (x INT) WITH ('connector' = 'blackhole');\n";
    repo.write(
        "pipelines/p.sql",
        format!("{ddl}INSERT INTO t SELECT x FROM s;\n"),
    )
    .write(
        "jobs/p.yaml",
        spec(
            "p",
            "sql: pipelines/p.sql\nhealth:\n  stable_for: 0s\n  timeout: 2s",
        ),
    );
    repo.commit("a pipeline");
    let work = tempfile::tempdir().unwrap();
    let (fake, agent) = fake_agent(&repo, work.path()).await;
    let report = agent.apply_once().await.unwrap();
    assert!(report.converged(), "{report:#?}");
    let running = fake.jobs_with_prefix(&flink_gitops::plan::flink_job_prefix("p"));
    assert_eq!(running.len(), 1);

    repo.write(
        "pipelines/p.sql",
        format!("{ddl}INSERT INTO t SELECT x FROM s;\nINSERT INTO t SELECT 2 FROM s;\n"),
    );
    repo.commit("a second insert");
    let report = agent.apply_once().await.unwrap();
    let (kind, reason) = report.refused.clone().expect("the revision is refused");
    assert_eq!(kind, "spec");
    assert!(reason.contains("pipelines/p.sql:4:1"), "{reason}");
    assert_eq!(
        fake.jobs_with_prefix(&flink_gitops::plan::flink_job_prefix("p")),
        running,
        "the pipeline keeps running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_job_on_a_cluster_that_cannot_run_python_is_refused_before_submitting() {
    let repo = SpecRepo::new();
    repo.write("py/job.py", "print('never runs')\n").write(
        "jobs/py.yaml",
        spec(
            "py",
            "python:\n  entry: py/job.py\nhealth:\n  stable_for: 0s\n  timeout: 2s",
        ),
    );
    repo.commit("a Python job");
    let work = tempfile::tempdir().unwrap();
    let (fake, agent) = fake_agent(&repo, work.path()).await;
    let report = agent.apply_once().await.unwrap();
    let job = &report.jobs[0];
    assert!(
        matches!(
            job.outcome,
            Outcome::Failed | Outcome::Blocked | Outcome::Retrying
        ),
        "{report:#?}"
    );
    assert!(
        job.message.contains(
            "this Flink cluster cannot run Python jobs: its configuration has no python.executable"
        ),
        "{report:#?}"
    );
    assert!(
        fake.requests().keys().all(|r| !r.contains("/run")),
        "nothing was submitted: {:?}",
        fake.requests()
    );
}
