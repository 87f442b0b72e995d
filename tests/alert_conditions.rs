//! Alert conditions against the in-process fake Flink, which can be made backpressured, behind on
//! checkpoints or unreachable on demand: each condition is alerted once while it lasts and gets a
//! "resolved" when it clears; a target's rate limit holds the rest back. The backpressure of a
//! real job on the real cluster is in tests/alerts.rs. An operation whose process is killed
//! between its audit row and its alert is alerted by the next process, once.

mod support;

use flink_gitops::config::Config;
use flink_gitops::reconcile::Agent;
use flink_gitops::testing::{FakeFlink, Scenario};
use serde_json::Value;
use support::*;

const SPEC: &str = "job_id: watched\njob_type: stream\nartifact_path: artifacts/job.jar\ndeployment:\n  checkpoint_interval: 1000\nhealth:\n  stable_for: 0s\n  timeout: 10s\nmonitoring:\n  alert_on_backpressure: true\n  backpressure_ratio: 0.6\n  backpressure_for: 0s\n  max_checkpoint_age: 30s\n";

/// What an exec target wrote: one JSON event per line.
fn got(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `event` or `resolved(condition)`, per event.
fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["resolves"].as_str() {
            Some(condition) => format!("resolved({condition})"),
            None => e["event"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_condition_alerts_once_then_resolves_and_a_rate_limit_holds_the_rest_back() {
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let repo = SpecRepo::new();
    repo.write("artifacts/job.jar", b"PK\x03\x04 fake job");
    repo.write("jobs/watched.yaml", SPEC);
    repo.commit("a watched job");
    let work = tempfile::tempdir().unwrap();
    let path = write_config(work.path(), &repo, &format!("http://{address}"));
    let (all, limited) = (
        work.path().join("all.jsonl"),
        work.path().join("limited.jsonl"),
    );
    let exec = |file: &std::path::Path| {
        format!(
            "[sh, -c, 'cat >> {} && echo >> {}']",
            file.display(),
            file.display()
        )
    };
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "notify:\n  - name: all\n    exec: {}\n  - name: limited\n    exec: {}\n    max_per_minute: 2\n    events: [deployed, backpressure, checkpoints, cluster_unreachable]\n",
        exec(&all),
        exec(&limited)
    ));
    std::fs::write(&path, text).unwrap();
    let agent = Agent::open(Config::load(&path).unwrap()).unwrap();
    let apply = async || {
        let report = agent.apply_once().await.unwrap();
        serde_json::to_value(&report).unwrap()
    };

    let report = apply().await;
    assert_eq!(report["jobs"][0]["outcome"], "ok", "{report:#}");
    assert_eq!(names(&got(&all)), ["deployed"]);

    // Backpressured: one alert however many passes see it, naming the ratio and the limit.
    fake.set_backpressure(0.9);
    for _ in 0..2 {
        let report = apply().await;
        assert_eq!(report["probes"][0]["backpressure"], 0.9, "{report:#}");
    }
    let events = got(&all);
    assert_eq!(names(&events), ["deployed", "backpressure"]);
    let message = events[1]["message"].as_str().unwrap();
    assert!(
        message.contains("90%") && message.contains("backpressure_ratio is 0.6"),
        "{message}"
    );
    fake.set_backpressure(0.1);
    apply().await;
    apply().await;
    assert_eq!(
        names(&got(&all)),
        ["deployed", "backpressure", "resolved(backpressure)"]
    );

    // The newest checkpoint is two minutes old, then fresh again.
    fake.set_checkpoint_acked_at(chrono::Utc::now().timestamp_millis() - 120_000);
    apply().await;
    apply().await;
    fake.set_checkpoint_acked_at(chrono::Utc::now().timestamp_millis());
    apply().await;
    let events = got(&all);
    assert_eq!(
        names(&events[3..]),
        ["checkpoints", "resolved(checkpoints)"]
    );
    assert!(
        events[3]["message"]
            .as_str()
            .unwrap()
            .contains("max_checkpoint_age is 30s"),
        "{:#}",
        events[3]
    );

    // The cluster answers 500 to everything, then recovers.
    fake.set_scenario(Scenario::ServerError500);
    let report = apply().await;
    assert!(report["cluster_error"].is_string(), "{report:#}");
    apply().await;
    fake.set_scenario(Scenario::Healthy);
    apply().await;
    let events = got(&all);
    assert_eq!(
        names(&events[5..]),
        ["cluster_unreachable", "resolved(cluster_unreachable)"]
    );

    // The limited target wanted 7 of these within the minute and got 2; the rest wait.
    assert_eq!(names(&got(&limited)), ["deployed", "backpressure"]);
    let counts = agent.delivery_counts().unwrap();
    let limited_counts = counts.iter().find(|c| c.0 == "limited").unwrap();
    assert_eq!(
        (limited_counts.1, limited_counts.2),
        (2, 5),
        "delivered, waiting: {counts:?}"
    );
}

/// A repo with one plain job, an agent config for the fake Flink at `address`, and an exec target
/// `all` writing to the returned file.
fn plain_job_with_a_target(
    address: std::net::SocketAddr,
) -> (
    SpecRepo,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let repo = SpecRepo::new();
    repo.write("artifacts/job.jar", b"PK\x03\x04 fake job");
    repo.write(
        "jobs/plain.yaml",
        "job_id: plain\njob_type: stream\nartifact_path: artifacts/job.jar\nhealth:\n  stable_for: 0s\n  timeout: 10s\n",
    );
    repo.commit("a plain job");
    let work = tempfile::tempdir().unwrap();
    let path = write_config(work.path(), &repo, &format!("http://{address}"));
    let all = work.path().join("all.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "notify:\n  - name: all\n    exec: [sh, -c, 'cat >> {0} && echo >> {0}']\n",
        all.display()
    ));
    std::fs::write(&path, text).unwrap();
    (repo, work, path, all)
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_killed_before_its_alert_was_queued_is_alerted_once_by_the_next_process() {
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let (_repo, _work, config, all) = plain_job_with_a_target(address);
    let run = |config: std::path::PathBuf, killed_at: Option<&'static str>| {
        tokio::task::spawn_blocking(move || match killed_at {
            Some(step) => {
                apply_killed_at(&config, step);
                None
            }
            None => Some(apply(&config)),
        })
    };

    // Killed once the deployment's outcome is in the audit log, before the pass could queue
    // its alert: nothing was sent.
    run(config.clone(), Some("after:promote")).await.unwrap();
    assert!(got(&all).is_empty(), "{:?}", got(&all));

    // The next process finds the job deployed (nothing to do) and still alerts it, once.
    for _ in 0..2 {
        let (code, report) = run(config.clone(), None).await.unwrap().unwrap();
        assert_eq!(code, Some(0), "{report:#}");
        assert_eq!(report["jobs"][0]["outcome"], "unchanged", "{report:#}");
    }
    let events = got(&all);
    assert_eq!(names(&events), ["deployed"], "{events:#?}");
    assert_eq!(events[0]["job_id"], "plain");
    assert!(events[0]["flink_job_id"].is_string(), "{:#}", events[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_that_fails_is_alerted_once_with_flinks_root_cause() {
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let (repo, _work, config, all) = plain_job_with_a_target(address);
    repo.write(
        "jobs/plain.yaml",
        "job_id: plain\njob_type: batch\nartifact_path: artifacts/job.jar\n",
    );
    repo.commit("a batch job run once at apply");
    fake.set_scenario(Scenario::JobFailsAfterStart);
    let agent = Agent::open(Config::load(&config).unwrap()).unwrap();
    let mut failed = None;
    for _ in 0..10 {
        let report = agent.apply_once().await.unwrap();
        if failed.is_none() {
            failed = got(&all).into_iter().find(|e| e["event"] == "batch_failed");
        }
        if failed.is_some() && report.jobs.iter().all(|j| j.run_failures.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let failed = failed.expect("no batch_failed alert");
    assert_eq!(failed["job_id"], "plain", "{failed:#}");
    assert!(failed["flink_job_id"].is_string(), "{failed:#}");
    assert!(failed["root_cause"].is_string(), "{failed:#}");
    let events = got(&all);
    let kinds = names(&events);
    assert_eq!(
        kinds.iter().filter(|k| *k == "batch_failed").count(),
        1,
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_refuses_a_backpressured_version_and_one_without_fresh_checkpoints() {
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let (repo, _work, config, _all) = plain_job_with_a_target(address);
    let spec = |health: &str, args: &str| {
        format!(
            "job_id: plain\njob_type: stream\nartifact_path: artifacts/job.jar\ndeployment:\n  checkpoint_interval: 1000\nargs: [{args}]\nhealth:\n  stable_for: 1s\n  timeout: 3s\n{health}"
        )
    };
    let agent = Agent::open(Config::load(&config).unwrap()).unwrap();
    let outcome = async |health: &str, args: &str, message: &str| {
        repo.write("jobs/plain.yaml", spec(health, args));
        repo.commit(message);
        let report = serde_json::to_value(agent.apply_once().await.unwrap()).unwrap();
        report["jobs"][0].clone()
    };

    // Backpressured at 90 % against a bound of 50 %: the stable window never completes.
    fake.set_backpressure(0.9);
    let job = outcome("  max_backpressure: 0.5\n", "", "bounded backpressure").await;
    assert_eq!(job["outcome"], "blocked", "{job:#}");
    let message = job["message"].as_str().unwrap();
    assert!(
        message.contains("backpressure 90%") && message.contains("health.max_backpressure is 0.5"),
        "{job:#}"
    );

    // Keeping up, it passes the same gate.
    fake.set_backpressure(0.1);
    let job = outcome("  max_backpressure: 0.5\n", "\"--v\", \"2\"", "keeps up").await;
    assert_eq!(job["outcome"], "ok", "{job:#}");

    // Checkpoints stall (the newest is ten minutes old): an upgrade that asks for fresh ones is
    // rolled back, with what it waited for.
    fake.set_checkpoint_acked_at(chrono::Utc::now().timestamp_millis() - 600_000);
    let job = outcome(
        "  max_checkpoint_age: 30s\n",
        "\"--v\", \"3\"",
        "fresh checkpoints",
    )
    .await;
    assert_eq!(job["outcome"], "rolled_back", "{job:#}");
    assert!(
        job["message"]
            .as_str()
            .unwrap()
            .contains("no completed checkpoint younger than 30s (health.max_checkpoint_age)"),
        "{job:#}"
    );
}
