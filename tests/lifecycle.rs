//! The whole life of a streaming job against the real Flink 2.3 cluster, through `flink-gitops apply`.
#![cfg(feature = "real-flink")]

mod support;

use flink_gitops::reconcile::restore::same_path as same_savepoint;
use flink_gitops::state::StateStore;
use serde_json::Value;
use support::*;

#[test]
fn create_upgrade_rollback_revert_suspend_resume_delete() {
    let job = unique("life");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    let spec_path = format!("jobs/{job}.yaml");
    repo.write(
        &spec_path,
        counter_spec(&job, "artifacts/counter-v1.jar", ""),
    );
    let v1_commit = repo.commit("create");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);

    // create
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let created = expect(&report, &job, "create", "ok");
    let v1_jid = one_running(&job);
    assert_eq!(created["flink_job_id"], v1_jid.as_str());

    // upgrade v1 → v2 through a savepoint: the new job restored exactly that savepoint
    repo.write(
        &spec_path,
        counter_spec(&job, "artifacts/counter-v2.jar", ""),
    );
    let v2_commit = repo.commit("v2");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let upgraded = expect(&report, &job, "upgrade", "ok");
    let savepoint = upgraded["savepoint"].as_str().unwrap().to_string();
    let v2_jid = one_running(&job);
    assert_ne!(v2_jid, v1_jid);
    assert!(
        same_savepoint(&restored_from(&v2_jid).unwrap(), &savepoint),
        "restored from the upgrade savepoint"
    );
    assert_eq!(flink_json(&format!("/jobs/{v1_jid}"))["state"], "FINISHED");

    // a broken build: unhealthy, rolled back to v2 from the savepoint it took, with Flink's root cause
    repo.write(
        &spec_path,
        counter_spec(&job, "artifacts/counter-broken.jar", ""),
    );
    repo.commit("broken build");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let rolled = expect(&report, &job, "upgrade", "rolled_back");
    assert!(
        rolled["root_cause"]
            .as_str()
            .unwrap()
            .contains("counter-broken: simulated start-up failure"),
        "{rolled:#}"
    );
    let back_jid = one_running(&job);
    let rollback_savepoint = rolled["savepoint"].as_str().unwrap();
    assert!(same_savepoint(
        &restored_from(&back_jid).unwrap(),
        rollback_savepoint
    ));
    let state = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let record = state.job(&job).unwrap().unwrap();
    assert_eq!(
        record.commit_id, v2_commit,
        "the record keeps the last good revision"
    );
    assert_eq!(record.flink_job_id.as_deref(), Some(back_jid.as_str()));
    drop(state);

    // the spec that failed is not tried again until the spec changes (or `retry`)
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1));
    let held = expect(&report, &job, "blocked", "blocked");
    assert!(
        held["message"]
            .as_str()
            .unwrap()
            .contains("this spec failed and was rolled back"),
        "{held:#}"
    );
    assert_eq!(one_running(&job), back_jid);

    // git revert of the broken commit: the head's spec is the one running; nothing to do
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "unchanged", "unchanged");

    // git revert of v2: back to v1 through a savepoint, shown as a rollback to that revision
    repo.git(&["revert", "--no-edit", "HEAD~2"]);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let reverted = expect(&report, &job, "upgrade", "ok");
    assert!(
        reverted["message"].as_str().unwrap().contains(&format!(
            "a rollback: this spec ran before, from commit {}",
            &v1_commit[..12]
        )),
        "{reverted:#}"
    );
    let v1_again = one_running(&job);

    // suspend: stopped with a savepoint that is kept
    let spec = std::fs::read_to_string(repo.path().join(&spec_path)).unwrap();
    repo.write(&spec_path, format!("{spec}state: suspended\n"));
    repo.commit("suspend");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let suspended = expect(&report, &job, "suspend", "ok");
    let kept = suspended["savepoint"].as_str().unwrap().to_string();
    none_running(&job);
    assert_eq!(
        flink_json(&format!("/jobs/{v1_again}"))["state"],
        "FINISHED"
    );

    // resume from exactly that savepoint
    repo.write(&spec_path, spec.clone());
    repo.commit("resume");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "resume", "ok");
    let resumed = one_running(&job);
    assert!(same_savepoint(&restored_from(&resumed).unwrap(), &kept));

    // delete: stopped with a final savepoint, recorded
    repo.remove(&spec_path);
    repo.commit("delete");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let deleted = expect(&report, &job, "delete", "ok");
    let final_savepoint = deleted["savepoint"].as_str().unwrap().to_string();
    let state = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let record = state.job(&job).unwrap().unwrap();
    assert_eq!(
        (record.status.as_str(), record.last_savepoint.as_deref()),
        ("deleted", Some(final_savepoint.as_str()))
    );
    let log = state.audit_log().unwrap();
    assert!(
        log.iter()
            .any(|e| e.action == "delete" && e.phase == "outcome")
    );
    assert!(
        log.iter()
            .any(|e| e.action == "rollback" && e.result.as_deref() == Some("ok"))
    );
    assert!(log.iter().any(|e| e.action == "rollback-by-revert"));
    assert!(
        state.open_intents().unwrap().is_empty(),
        "every intent has its outcome"
    );
    none_running(&job);

    // the history an auditor reads: every deployment with its revision, signer and savepoint
    let config_arg = config.to_str().unwrap();
    let history = flink_gitops_json(
        &[
            "history", "-c", config_arg, "--job", &job, "--output", "json",
        ],
        0,
    );
    let entries = history.as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "promote",
            "promote",
            "rollback",
            "promote",
            "promote",
            "rollback-by-revert",
            "suspend",
            "promote",
            "delete"
        ],
        "{history:#}"
    );
    assert_eq!(entries[0]["revision"], v1_commit.as_str());
    assert!(entries.iter().all(|e| e["signer"] == "author@example.com"));
    assert_eq!(
        entries[1]["savepoint"],
        savepoint.as_str(),
        "v2 restored the upgrade savepoint"
    );
    assert_eq!(entries[6]["savepoint"], kept.as_str());
    assert_eq!(entries[8]["savepoint"], final_savepoint.as_str());
    let newest = flink_gitops_json(
        &[
            "history", "-c", config_arg, "--job", &job, "--limit", "2", "--output", "json",
        ],
        0,
    );
    let newest: Vec<&str> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(newest, ["promote", "delete"]);
    let since = entries[6]["at"].as_str().unwrap();
    let window = flink_gitops_json(
        &[
            "history", "-c", config_arg, "--job", &job, "--since", since, "--output", "json",
        ],
        0,
    );
    assert_eq!(
        window.as_array().unwrap().len(),
        3,
        "suspend, promote, delete"
    );
    let future = flink_gitops_json(
        &[
            "history",
            "-c",
            config_arg,
            "--since",
            "2999-01-01T00:00:00Z",
            "--output",
            "json",
        ],
        0,
    );
    assert_eq!(future, serde_json::json!([]));
    let bad = flink_gitops(&["history", "-c", config_arg, "--since", "last tuesday"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since `last tuesday`"));
    let table = flink_gitops(&["history", "-c", config_arg, "--job", &job]);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("rollback-by-revert"));
}

#[test]
fn adoption_after_losing_the_state_db_and_drift_repair() {
    let job = unique("adopt");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    repo.write(
        &format!("jobs/{job}.yaml"),
        counter_spec(&job, "artifacts/counter-v1.jar", ""),
    );
    repo.commit("create");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let first = one_running(&job);

    // The state DB is lost: the agent finds its job by id and never starts a second copy.
    let state_dir = work.path().join("state");
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(state_dir.join(file));
    }
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let adopted = expect(&report, &job, "adopt", "ok");
    assert!(
        adopted["message"]
            .as_str()
            .unwrap()
            .contains("runs the head's spec"),
        "{adopted:#}"
    );
    assert_eq!(one_running(&job), first);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "unchanged", "unchanged");

    // Someone cancels the job by hand: drift, restarted from its retained checkpoint.
    wait_until(
        "a checkpoint to restart from",
        std::time::Duration::from_secs(30),
        || has_completed_checkpoint(&first),
    );
    cancel_flink_job(&first);
    wait_until(
        "the cancellation",
        std::time::Duration::from_secs(10),
        || flink_json(&format!("/jobs/{first}"))["state"] == "CANCELED",
    );
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let restarted = expect(&report, &job, "restart", "ok");
    assert!(
        restarted["reasons"][0]
            .as_str()
            .unwrap()
            .contains("CANCELED"),
        "{restarted:#}"
    );
    let second = one_running(&job);
    assert_ne!(second, first);
    let restored = restored_from(&second).expect("restored from a checkpoint");
    assert!(
        restored.contains(&first),
        "restored from the cancelled job's retained checkpoint: {restored}"
    );
}

#[test]
fn fields_flink_does_not_use_are_updated_in_place_without_a_restart() {
    let fixture = JobFixture::new(
        "in-place",
        |job| counter_spec(job, "artifacts/counter-v1.jar", ""),
        "create",
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
    let running = one_running(job);

    // Alerts, the periodic savepoint interval and the health gate: nothing the running job uses.
    let spec = counter_spec(
        job,
        "artifacts/counter-v1.jar",
        "monitoring: { alert_on_failure: false, alert_on_backpressure: true }\nstream_config: { savepoint_trigger_interval: 600000 }\n",
    )
    .replace("stable_for: 2s", "stable_for: 5s");
    repo.write(spec_path, spec);
    let commit = repo.commit("alerts, savepoint interval and health gate only");
    let plan = flink_gitops_json(
        &["plan", "-c", config.to_str().unwrap(), "--output", "json"],
        0,
    );
    let planned = plan["plan"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap()
        .clone();
    assert_eq!(planned["action"], "update", "{planned:#}");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let updated = expect(&report, job, "update", "ok");
    assert!(
        updated["message"].as_str().unwrap().contains("no restart"),
        "{updated:#}"
    );
    assert_eq!(one_running(job), running, "the same Flink job runs on");
    let state = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let record = state.job(job).unwrap().unwrap();
    assert_eq!(record.commit_id, commit);
    assert!(record.spec_json.contains("\"alert_on_failure\":false"));
    assert!(
        state
            .audit_log()
            .unwrap()
            .iter()
            .any(|e| e.action == "update"
                && e.phase == "outcome"
                && e.result.as_deref() == Some("ok"))
    );
    drop(state);
    // In sync afterwards: nothing left to do.
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, job, "unchanged", "unchanged");
    // A change Flink does use is still an upgrade.
    repo.write(
        spec_path,
        std::fs::read_to_string(repo.path().join(spec_path))
            .unwrap()
            .replace("counter-v1.jar", "counter-v2.jar"),
    );
    repo.commit("v2");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, job, "upgrade", "ok");
    assert_ne!(one_running(job), running);
}

#[test]
fn the_health_gate_waits_for_the_checkpoints_the_spec_asks_for() {
    let fixture = JobFixture::new(
        "min-cp",
        |job| {
            counter_spec(job, "artifacts/counter-v1.jar", "").replace(
                "  max_restarts: 0\n",
                "  max_restarts: 0\n  min_checkpoints: 4\n",
            )
        },
        "four checkpoints before it counts as healthy",
    );
    let JobFixture {
        job, work, config, ..
    } = &fixture;
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, job, "create", "ok");
    let state = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let gate = state
        .audit_log()
        .unwrap()
        .into_iter()
        .find(|e| e.action == "health" && e.phase == "outcome" && e.job_id.as_deref() == Some(job))
        .unwrap();
    let detail: Value = serde_json::from_str(gate.detail.as_deref().unwrap()).unwrap();
    assert!(
        detail["checkpoints"].as_u64().unwrap() >= 4,
        "the gate passed with {detail}"
    );
}
