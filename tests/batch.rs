//! Batch jobs against the real Flink 2.3 cluster: cron runs recorded FINISHED, `max_runs`,
//! `ttl_seconds`, a crash right after a submit re-attached instead of resubmitted, and `history`.
#![cfg(feature = "real-flink")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn batch_spec(job_id: &str, extra_args: &str, batch_config: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: batch\nartifact_path: artifacts/batch-report.jar\ndeployment:\n  parallelism: 1\nargs: [\"--name\", \"{job_id}\", \"--records\", \"200\"{extra_args}]\nbatch_config:\n{batch_config}"
    )
}

fn history(config: &Path, job_id: &str) -> Vec<Value> {
    let report = flink_gitops_json(
        &[
            "history",
            "-c",
            config.to_str().unwrap(),
            "--job",
            job_id,
            "--output",
            "json",
        ],
        0,
    );
    report.as_array().unwrap().clone()
}

fn runs(config: &Path, job_id: &str) -> Vec<Value> {
    history(config, job_id)
        .into_iter()
        .filter(|e| e["kind"] == "run")
        .collect()
}

/// Applies every half second until `done` says so; returns the last report.
fn apply_until(
    config: &Path,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, report) = apply(config);
        if done(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last report {report:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn uploaded_jars(work: &Path) -> Vec<String> {
    flink_gitops::state::StateStore::open_read_only(&work.join("state"))
        .unwrap()
        .unwrap()
        .jars()
        .unwrap()
        .into_iter()
        .map(|j| j.jar_id)
        .collect()
}

fn jars_on_cluster() -> Vec<String> {
    flink_json("/jars")["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect()
}

fn flink_state(jid: &str) -> String {
    flink_json(&format!("/jobs/{jid}"))["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_service_runs_a_cron_job_records_it_finished_and_stops_at_max_runs() {
    let fixture = JobFixture::new(
        "cron",
        |job| {
            batch_spec(
                job,
                "",
                "  cron: \"*/4 * * * * *\"\n  timezone: Europe/Berlin\n  max_runs: 2\n",
            )
        },
        "nightly report, every 4 s for the test",
    );
    let JobFixture {
        job,
        repo,
        commit,
        work,
        config,
        ..
    } = &fixture;
    // The reconcile interval is long: only the batch schedule can wake the service in time.
    let mut text = std::fs::read_to_string(config).unwrap();
    text = text.replace("poll_interval: 5s", "poll_interval: 1m");
    text.push_str("  interval: 10m\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    text.push_str(&format!("server:\n  listen: 127.0.0.1:{port}\n"));
    std::fs::write(config, text).unwrap();
    let log = work.path().join("service.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(["-vv", "run", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);

    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let runs = runs(config, job);
        if runs.iter().filter(|r| r["result"] == "finished").count() == 2 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "two finished runs expected within 60 s; runs {runs:#?}\nlog:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for run in &finished {
        assert_eq!(run["revision"], commit.as_str());
        assert_eq!(run["signer"], "author@example.com", "{run:#}");
        assert_eq!(run["action"], "run (cron)");
        let jid = run["flink_job_id"].as_str().unwrap();
        assert_eq!(
            flink_state(jid),
            "FINISHED",
            "Flink agrees the run finished"
        );
    }
    // Deliberate: proving no third run needs a fire time to pass. One comes within 4 s, and a run
    // is recorded as it is submitted.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(runs(config, job).len(), 2, "max_runs: 2 stops scheduling");
    let metrics = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("flink_gitops_batch_runs{state=\"finished\"} 2"),
        "{metrics}"
    );
    let status = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/api/v1/status"))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let entry = &status["jobs"][0];
    assert_eq!(entry["recorded_status"], "scheduled", "{status:#}");
    assert_eq!(entry["active_runs"], serde_json::json!([]), "{status:#}");
    drop(guard);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("max_runs reached"), "{text}");

    // A new revision of the spec resets the count.
    repo.write(
        &format!("jobs/{job}.yaml"),
        batch_spec(
            job,
            ", \"--sleep-ms\", \"10\"",
            "  cron: \"*/4 * * * * *\"\n  timezone: Europe/Berlin\n  max_runs: 1\n",
        ),
    );
    let second = repo.commit("one more run with the new revision");
    apply_until(
        config,
        "a run of the new revision",
        Duration::from_secs(30),
        |_| {
            runs(config, job)
                .iter()
                .any(|r| r["revision"] == second.as_str() && r["result"] == "finished")
        },
    );
}

#[test]
fn ttl_cancels_a_run_that_is_still_going() {
    let fixture = JobFixture::new(
        "ttl",
        |job| batch_spec(job, ", \"--sleep-ms\", \"120000\"", "  ttl_seconds: 3\n"),
        "a report that hangs",
    );
    let JobFixture {
        job, work, config, ..
    } = &fixture;

    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let started = outcome_of(&report, job).clone();
    assert!(
        started["message"].as_str().unwrap().contains("run started"),
        "no cron: one run per revision starts at once: {started:#}"
    );
    let jid = started["flink_job_id"].as_str().unwrap().to_string();

    apply_until(
        config,
        "the TTL to cancel the run",
        Duration::from_secs(30),
        |report| {
            outcome_of(report, job)["message"]
                .as_str()
                .is_some_and(|m| m.contains("ttl_seconds"))
        },
    );
    let run = runs(config, job).pop().unwrap();
    assert_eq!(run["result"], "timed_out", "{run:#}");
    assert_eq!(run["flink_job_id"], jid.as_str());
    wait_until("Flink to cancel the run", Duration::from_secs(10), || {
        flink_state(&jid) == "CANCELED"
    });
    let kept = uploaded_jars(work.path());
    assert_eq!(
        kept.len(),
        1,
        "without cleanup_on_completion the JAR stays for the next run"
    );
    assert!(jars_on_cluster().contains(&kept[0]));
    // The revision ran once: nothing new starts.
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(runs(config, job).len(), 1);
}

#[test]
fn a_crash_right_after_submitting_a_run_is_reattached_not_resubmitted() {
    let fixture = JobFixture::new(
        "reattach",
        |job| {
            batch_spec(
                job,
                ", \"--sleep-ms\", \"6000\"",
                "  ttl_seconds: 120\n  cleanup_on_completion: true\n",
            )
        },
        "a slow report",
    );
    let JobFixture {
        job, work, config, ..
    } = &fixture;

    apply_killed_at(config, "after:batch-run");
    let recorded = runs(config, job);
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0]["result"], "submitting",
        "the outcome was never written"
    );
    let jid = recorded[0]["flink_job_id"].as_str().unwrap().to_string();

    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let message = outcome_of(&report, job)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&format!("re-attached to run {jid}")),
        "{message}"
    );
    let uploaded = uploaded_jars(work.path());
    assert_eq!(uploaded.len(), 1);
    let finished = apply_until(
        config,
        "the re-attached run to finish",
        Duration::from_secs(40),
        |_| runs(config, job)[0]["result"] == "finished",
    );
    assert_eq!(
        finished["jars_deleted"],
        serde_json::json!(uploaded),
        "cleanup_on_completion deletes the JAR once nothing needs it"
    );
    assert!(!jars_on_cluster().contains(&uploaded[0]));
    let all_runs = runs(config, job);
    assert_eq!(all_runs.len(), 1, "{all_runs:#?}");
    let instances = cluster_jobs_with_prefix(&flink_gitops::plan::flink_job_prefix(job));
    assert_eq!(
        instances,
        vec![(jid, "FINISHED".to_string())],
        "one Flink job, never two"
    );
}

#[test]
fn replace_cancels_the_run_still_going_and_deleting_the_spec_cancels_its_runs() {
    let fixture = JobFixture::new(
        "replace",
        |job| {
            batch_spec(
                job,
                ", \"--sleep-ms\", \"120000\"",
                "  cron: \"*/3 * * * * *\"\n  concurrency: replace\n",
            )
        },
        "a slow report every 3 s, newest wins",
    );
    let JobFixture {
        job,
        spec_path,
        repo,
        config,
        ..
    } = &fixture;

    apply_until(
        config,
        "a second run replacing the first",
        Duration::from_secs(40),
        |_| runs(config, job).len() >= 2,
    );
    let recorded = runs(config, job);
    assert_eq!(recorded[0]["result"], "replaced", "{recorded:#?}");
    let first = recorded[0]["flink_job_id"].as_str().unwrap().to_string();
    let second = recorded[1]["flink_job_id"].as_str().unwrap().to_string();
    wait_until(
        "Flink to cancel the replaced run",
        Duration::from_secs(10),
        || flink_state(&first) == "CANCELED",
    );

    repo.remove(spec_path);
    repo.commit("retire the report");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(outcome_of(&report, job)["action"], "delete");
    none_running(job);
    let last = runs(config, job)
        .into_iter()
        .find(|r| r["flink_job_id"] == second.as_str())
        .unwrap();
    assert!(
        matches!(last["result"].as_str(), Some("canceled" | "replaced")),
        "{last:#}"
    );
    let (_, report) = apply(config);
    assert!(
        report["jobs"].as_array().unwrap().is_empty(),
        "a deleted batch job is gone from the plan: {report:#}"
    );
}

#[test]
fn runs_missed_while_the_agent_was_down_run_once_not_in_a_burst() {
    let fixture = JobFixture::new(
        "missed",
        |job| batch_spec(job, "", "  cron: \"*/2 * * * * *\"\n  concurrency: allow\n"),
        "every 2 s",
    );
    let JobFixture { job, config, .. } = &fixture;

    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        outcome_of(&report, job)["message"]
            .as_str()
            .unwrap()
            .contains("schedule started"),
        "{report:#}"
    );
    let plan = flink_gitops_json(
        &["plan", "-c", config.to_str().unwrap(), "--output", "json"],
        0,
    );
    let entry = plan["plan"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["action"], "unchanged");
    assert!(
        entry["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("next run at ")),
        "plan says when the next run is: {entry:#}"
    );
    // Deliberate: no agent runs for 9 s, so at least two fire times (every 4 s) are missed; one
    // missed would not show that a catch-up runs once rather than once per miss.
    std::thread::sleep(Duration::from_secs(9));
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let message = outcome_of(&report, job)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("runs were missed while the agent was down; ran the latest once"),
        "{message}"
    );
    let recorded = runs(config, job);
    assert_eq!(
        recorded.len(),
        1,
        "one catch-up run, no burst: {recorded:#?}"
    );
    assert_eq!(recorded[0]["action"], "run (catch-up)");
}

#[test]
fn a_stream_job_that_becomes_a_batch_job_and_back_never_runs_twice() {
    let fixture = JobFixture::new(
        "switch",
        |job| counter_spec(job, "artifacts/counter-v1.jar", ""),
        "a stream job",
    );
    let JobFixture {
        job,
        spec_path,
        repo,
        work,
        config,
        ..
    } = &fixture;
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let stream_jid = one_running(job);

    // stream → batch: the stream stops with a savepoint first, then the batch run starts
    repo.write(spec_path, batch_spec(job, "", "  max_runs: 1\n"));
    repo.commit("the same job_id as a batch job");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        outcome_of(&report, job)["message"]
            .as_str()
            .unwrap()
            .contains("run started"),
        "{report:#}"
    );
    assert_eq!(
        flink_state(&stream_jid),
        "FINISHED",
        "stopped with a savepoint"
    );
    let state = flink_gitops::state::StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    assert!(
        state.job(job).unwrap().unwrap().last_savepoint.is_some(),
        "the stream's final savepoint is kept"
    );
    drop(state);
    apply_until(
        config,
        "the batch run to finish",
        Duration::from_secs(40),
        |_| {
            runs(config, job)
                .first()
                .is_some_and(|r| r["result"] == "finished")
        },
    );

    // batch → stream: no run is left, one stream instance runs
    repo.write(spec_path, counter_spec(job, "artifacts/counter-v1.jar", ""));
    repo.commit("back to streaming");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let again = one_running(job);
    assert_ne!(again, stream_jid);
    assert!(runs(config, job).iter().all(|r| r["result"] != "running"));
}

#[test]
fn a_failed_run_is_recorded_with_flinks_root_cause() {
    let fixture = JobFixture::new(
        "failing",
        |job| {
            format!(
                "job_id: {job}\njob_type: batch\nartifact_path: artifacts/counter-broken.jar\ndeployment:\n  parallelism: 1\n  restart_strategy: none\nargs: [\"--name\", \"{job}\"]\n"
            )
        },
        "a report whose build is broken",
    );
    let JobFixture { job, config, .. } = &fixture;
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "the run starts: {report:#}");
    let report = apply_until(
        config,
        "the run to fail",
        Duration::from_secs(40),
        |report| outcome_of(report, job)["outcome"] == "failed",
    );
    let failed = outcome_of(&report, job);
    assert!(
        failed["root_cause"]
            .as_str()
            .is_some_and(|c| c.contains("counter-broken: simulated start-up failure")),
        "{failed:#}"
    );
    let run = runs(config, job).pop().unwrap();
    assert_eq!(run["result"], "failed");
    assert!(
        run["detail"]
            .as_str()
            .unwrap()
            .contains("counter-broken: simulated start-up failure"),
        "{run:#}"
    );
    // One run per revision: a failed run is not retried until the spec changes.
    let (code, _) = apply(config);
    assert_eq!(code, Some(0));
    assert_eq!(runs(config, job).len(), 1);
}

#[test]
fn a_crash_before_the_submit_call_loses_that_run_instead_of_risking_two() {
    let fixture = JobFixture::new(
        "lost",
        |job| batch_spec(job, "", ""),
        "one run for this revision",
    );
    let JobFixture { job, config, .. } = &fixture;

    apply_killed_at(config, "before:batch-run");
    assert_eq!(runs(config, job)[0]["result"], "submitting");

    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let recorded = runs(config, job);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(recorded[0]["result"], "lost");
    assert!(
        recorded[0]["detail"]
            .as_str()
            .unwrap()
            .contains("the submission never reached the cluster"),
        "{recorded:#?}"
    );
    assert!(
        cluster_jobs_with_prefix(&flink_gitops::plan::flink_job_prefix(job)).is_empty(),
        "nothing reached Flink"
    );
}
