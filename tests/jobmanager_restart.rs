//! A JobManager restart (the local cluster stopped and started again, as `stop-cluster.sh` and
//! `start-cluster.sh` do): Flink forgets every job and savepoint operation, while savepoints and
//! retained checkpoints stay on disk. The agent must find the newest state itself.
//!
//! This test restarts the run's shared cluster, so it lives in a test binary of its own (cargo runs
//! test binaries one after another) and brings the cluster back even when it fails.
#![cfg(feature = "real-flink")]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use flink_gitops::reconcile::restore::normalize as normalized;
use flink_gitops::state::StateStore;
use support::*;

fn flink_local(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/flink-local");
    run(Command::new(script).args(args));
}

fn port() -> String {
    flink_url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

fn restart_cluster() {
    let dir = flink_dir().display().to_string();
    flink_local(&["stop", "--dir", &dir]);
    flink_local(&["start", "--dir", &dir, "--port", &port()]);
}

/// Starts the shared cluster again if a failed test left it down.
struct ClusterBack;

impl Drop for ClusterBack {
    fn drop(&mut self) {
        if flink_json("/overview").is_null() {
            let dir = flink_dir().display().to_string();
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/flink-local");
            let _ = Command::new(script)
                .args(["start", "--dir", &dir, "--port", &port()])
                .status();
        }
    }
}

/// The newest complete retained checkpoint of `jid` on disk, with its time.
fn newest_checkpoint_on_disk(jid: &str) -> Option<(SystemTime, String)> {
    complete_folders(&flink_dir().join("checkpoints").join(jid), "chk-")
        .into_iter()
        .max()
        .map(|(modified, path)| (modified, path.display().to_string()))
}

#[test]
fn a_jobmanager_restart_mid_upgrade_and_under_a_running_job_loses_no_state() {
    let _back = ClusterBack;
    let upgrading = unique("jmu");
    let running = unique("jmr");
    let _cleanup = CancelOnDrop(vec![upgrading.clone(), running.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    let path = |job: &str| format!("jobs/{job}.yaml");
    for job in [&upgrading, &running] {
        repo.write(
            &path(job),
            counter_spec(job, "artifacts/counter-v1.jar", ""),
        );
    }
    repo.commit("two jobs");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");

    // `running` is upgraded once, so it has a savepoint older than the checkpoints it takes after.
    repo.write(
        &path(&running),
        counter_spec(&running, "artifacts/counter-v2.jar", ""),
    );
    repo.commit("upgrade the running job");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let running_jid = one_running(&running);
    let upgrade_savepoint = outcome_of(&report, &running)["savepoint"]
        .as_str()
        .unwrap()
        .to_string();
    let savepoint_time =
        std::fs::metadata(PathBuf::from(normalized(&upgrade_savepoint)).join("_metadata"))
            .unwrap()
            .modified()
            .unwrap();
    // The test needs a retained checkpoint newer than the upgrade savepoint (one a second).
    wait_until(
        "a checkpoint newer than the upgrade savepoint",
        Duration::from_secs(30),
        || newest_checkpoint_on_disk(&running_jid).is_some_and(|(time, _)| time > savepoint_time),
    );

    // `upgrading` is in the middle of an upgrade: stopped with a savepoint, the agent killed.
    repo.write(
        &path(&upgrading),
        counter_spec(&upgrading, "artifacts/counter-v2.jar", ""),
    );
    repo.commit("upgrade the other job");
    apply_killed_at(&config, "after:stop");
    none_running(&upgrading);
    let stop_savepoint = {
        let store = StateStore::open_read_only(&work.path().join("state"))
            .unwrap()
            .unwrap();
        assert_eq!(store.job(&upgrading).unwrap().unwrap().phase, "stopping");
        store
            .restore_points(&upgrading)
            .unwrap()
            .into_iter()
            .find(|p| p.savepoint)
            .expect("the stop's savepoint was recorded before the kill")
            .path
    };

    restart_cluster();
    assert!(
        cluster_jobs_with_prefix("").is_empty(),
        "the restarted JobManager forgot every job"
    );
    let (newest_time, newest_checkpoint) =
        newest_checkpoint_on_disk(&running_jid).expect("retained checkpoints stay on disk");
    assert!(
        newest_time > savepoint_time,
        "the test needs a checkpoint newer than the upgrade savepoint"
    );

    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    // The interrupted upgrade finishes from the savepoint its stop took.
    let upgraded = one_running(&upgrading);
    assert_eq!(
        normalized(&restored_from(&upgraded).unwrap()),
        normalized(&stop_savepoint),
        "{report:#}"
    );
    let store = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let record = store.job(&upgrading).unwrap().unwrap();
    assert!(record.spec_json.contains("counter-v2"));
    assert_eq!(record.phase, "steady");
    // The job Flink forgot restarts from its newest retained checkpoint, not its older savepoint.
    assert_eq!(outcome_of(&report, &running)["action"], "restart");
    let restarted = one_running(&running);
    assert_ne!(restarted, running_jid);
    assert_eq!(
        normalized(&restored_from(&restarted).unwrap()),
        normalized(&newest_checkpoint),
        "{report:#}"
    );
    assert!(store.open_intents().unwrap().is_empty());
}
