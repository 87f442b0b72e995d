//! Periodic savepoints on the real Flink 2.3 cluster: `stream_config.savepoint_trigger_interval`
//! gives a running job a savepoint whenever its newest one is older than the interval, recorded
//! with the revision it ran and shown by `status`; the job keeps running; after the agent was
//! away for several intervals it gets one savepoint, not a burst.
#![cfg(feature = "real-flink")]

mod support;

use std::time::{Duration, Instant};

use flink_gitops::state::StateStore;
use support::*;

fn savepoints_of(work: &std::path::Path, job: &str) -> Vec<(String, String, String)> {
    audit_log(work)
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
    // The time is the behaviour here: the count over it shows the interval is kept.
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
    let row = status_row(config, job);
    assert_eq!(
        row["last_savepoint"],
        taken.last().unwrap().0.as_str(),
        "{row:#}"
    );
    assert!(
        row["last_savepoint_age_s"].as_i64().unwrap() < 10,
        "{row:#}"
    );

    // Deliberate: away for 9 s, so at least two 4 s intervals pass; one savepoint when the agent
    // is back, not one per interval missed.
    std::thread::sleep(Duration::from_secs(9));
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

/// Flink's own CLI against the shared cluster.
fn flink_cli(args: &[&str]) -> String {
    let home = run(std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/flink-local"),
    )
    .arg("home"))
    .trim()
    .to_string();
    let address = flink_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut all = vec![args[0], "-m", &address];
    all.extend(&args[1..]);
    run(std::process::Command::new(format!("{home}/bin/flink"))
        .env("FLINK_CONF_DIR", flink_dir().join("conf"))
        .args(&all))
}

#[test]
fn restore_from_starts_a_new_job_from_a_savepoint_of_a_job_run_by_hand() {
    // A job someone started with `flink run`, stopped with a savepoint to move it into the repo.
    let jar = example_jar("counter-v1.jar");
    let submitted = flink_cli(&[
        "run",
        "-d",
        "-p",
        "1",
        jar.to_str().unwrap(),
        "--name",
        "by-hand",
        "--rate",
        "20",
    ]);
    let by_hand = submitted
        .split_whitespace()
        .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no job id in: {submitted}"))
        .to_string();
    struct CancelByHand(String);
    impl Drop for CancelByHand {
        fn drop(&mut self) {
            cancel_flink_job(&self.0);
        }
    }
    let _cancel = CancelByHand(by_hand.clone());
    wait_until(
        "every task of the job run by hand",
        Duration::from_secs(60),
        || all_tasks_running(&by_hand),
    );
    let target = format!(
        "file://{}/by-hand",
        flink_dir().join("savepoints").display()
    );
    let stopped = flink_cli(&["stop", "--savepointPath", &target, &by_hand]);
    let savepoint = stopped
        .split_whitespace()
        .find(|w| w.contains("savepoint-"))
        .unwrap_or_else(|| panic!("no savepoint in: {stopped}"))
        .trim_end_matches('.')
        .to_string();

    let fixture = JobFixture::new(
        "restore-from",
        |job| {
            counter_spec(
                job,
                "artifacts/counter-v1.jar",
                &format!("restore_from: {savepoint}\n"),
            )
        },
        "move the job run by hand into the repo",
    );
    let JobFixture {
        job,
        spec_path,
        repo,
        config,
        ..
    } = &fixture;
    let plan = flink_gitops_json(
        &["plan", "-c", config.to_str().unwrap(), "--output", "json"],
        0,
    );
    assert!(
        plan.to_string()
            .contains(&format!("starts from restore_from {savepoint}")),
        "{plan:#}"
    );
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let created = one_running(job);
    assert!(
        flink_gitops::reconcile::restore::same_path(&restored_from(&created).unwrap(), &savepoint),
        "the new job restored the savepoint of the job run by hand"
    );

    // restore_from is one-shot: changing it later does not touch the running job.
    let spec = std::fs::read_to_string(repo.path().join(spec_path)).unwrap();
    repo.write(spec_path, spec.replace(&savepoint, "/somewhere/else"));
    repo.commit("restore_from changed after the fact");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(outcome_of(&report, job)["action"], "update", "{report:#}");
    assert_eq!(one_running(job), created);
}

#[test]
fn the_savepoint_command_takes_one_now_audited_and_the_job_runs_on() {
    let fixture = JobFixture::new(
        "manual-sp",
        |job| counter_spec(job, "artifacts/counter-v1.jar", ""),
        "a job",
    );
    let JobFixture {
        job, work, config, ..
    } = &fixture;
    let config_arg = config.to_str().unwrap();
    // Nothing deployed yet: a clear refusal, exit 2.
    let early = flink_gitops(&["savepoint", "-c", config_arg, job]);
    assert_eq!(early.status.code(), Some(2));
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let running = one_running(job);

    let taken = flink_gitops_json(&["savepoint", "-c", config_arg, job, "--output", "json"], 0);
    let path = taken["savepoint"].as_str().unwrap().to_string();
    assert_eq!(taken["flink_job_id"], running.as_str());
    let local = path.strip_prefix("file:").unwrap_or(&path);
    assert!(
        std::path::Path::new(local).join("_metadata").is_file(),
        "{taken:#}"
    );
    assert_eq!(one_running(job), running, "the job runs on");
    let store = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let outcome = store
        .audit_log()
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| e.action == "savepoint" && e.phase == "intent")
        .unwrap();
    assert!(
        outcome.detail.unwrap().contains("\"kind\":\"manual\""),
        "audited as manual with who asked"
    );
    assert!(store.open_intents().unwrap().is_empty());
    drop(store);
    let row = status_row(config, job);
    assert_eq!(row["last_savepoint"], path.as_str(), "{row:#}");
}

#[test]
fn retention_disposes_old_savepoints_through_flink_and_a_revert_still_restores() {
    let fixture = JobFixture::new(
        "retention",
        |job| {
            counter_spec(
                job,
                "artifacts/counter-v1.jar",
                "stream_config: { savepoint_trigger_interval: 2000 }\nsavepoints: { keep: 2 }\n",
            )
        },
        "savepoints every 2 s, two kept",
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
    // Passes a second apart, as the service makes them, until four savepoints were taken: two
    // kept, two disposed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let (code, report) = apply(config);
        assert_eq!(code, Some(0), "{report:#}");
        let taken = savepoints_of(work.path(), job);
        if taken.len() == 4 {
            break taken;
        }
        assert!(
            Instant::now() < deadline,
            "four savepoints in 30 s at 2 s intervals: {taken:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let disposed: Vec<String> = audit_log(work.path())
        .into_iter()
        .filter(|e| e.action == "dispose" && e.phase == "outcome" && e.result.as_deref() == Some("ok"))
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e.detail.as_deref().unwrap()).unwrap()["disposed"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        disposed.len(),
        2,
        "of four savepoints, the two oldest were disposed of: {disposed:#?}"
    );
    let on_disk = |path: &str| {
        std::path::Path::new(path.strip_prefix("file:").unwrap_or(path))
            .join("_metadata")
            .is_file()
    };
    for path in &disposed {
        assert!(!on_disk(path), "Flink deleted {path}");
    }
    let newest: Vec<&String> = taken.iter().rev().take(2).map(|(p, _, _)| p).collect();
    for path in &newest {
        assert!(!disposed.contains(path), "the two newest stay: {path}");
        assert!(on_disk(path), "{path}");
    }

    // An upgrade and its revert after the disposals: both restore their savepoint.
    let spec = std::fs::read_to_string(repo.path().join(spec_path)).unwrap();
    repo.write(spec_path, spec.replace("counter-v1.jar", "counter-v2.jar"));
    repo.commit("v2");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let reverted = outcome_of(&report, job).clone();
    assert_eq!(reverted["action"], "upgrade", "{report:#}");
    let back = one_running(job);
    assert!(flink_gitops::reconcile::restore::same_path(
        &restored_from(&back).unwrap(),
        reverted["savepoint"].as_str().unwrap()
    ));
}
