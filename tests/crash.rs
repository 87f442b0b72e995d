//! SIGKILL the agent at every intent step of an upgrade; the next start finishes or undoes the step:
//! exactly one instance runs, it restored the savepoint that was taken, and every intent has an outcome.
#![cfg(feature = "real-flink")]

mod support;

use flink_gitops::reconcile::restore::normalize as normalized;
use flink_gitops::state::StateStore;
use support::*;

/// The health gate shortened to 1 s: every round passes it once or twice.
fn fast_gate(spec: String) -> String {
    spec.replace("stable_for: 2s", "stable_for: 1s")
}

#[test]
fn a_killed_upgrade_is_completed_by_the_next_start() {
    let fixture = JobFixture::new(
        "crash",
        |job| fast_gate(counter_spec(job, "artifacts/counter-v1.jar", "")),
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

    let steps = [
        "before:stop",
        "after:stop",
        "before:submit",
        "after:submit",
        "before:health",
        "after:health",
        "before:promote",
        "after:promote",
    ];
    for (round, step) in steps.iter().enumerate() {
        let jar = if round % 2 == 0 {
            "counter-v2.jar"
        } else {
            "counter-v1.jar"
        };
        repo.write(
            spec_path,
            fast_gate(counter_spec(job, &format!("artifacts/{jar}"), "")),
        );
        repo.commit(&format!("upgrade {round} to {jar}"));
        apply_killed_at(config, step);

        let (code, report) = apply(config);
        assert_eq!(code, Some(0), "{step}: {report:#}");
        let running = one_running(job);
        let store = StateStore::open_read_only(&work.path().join("state"))
            .unwrap()
            .unwrap();
        let record = store.job(job).unwrap().unwrap();
        assert_eq!(
            record.flink_job_id.as_deref(),
            Some(running.as_str()),
            "{step}"
        );
        assert!(
            record.spec_json.contains(jar),
            "{step}: the record holds the new spec"
        );
        assert!(record.pending_json.is_none(), "{step}");
        assert!(
            store.open_intents().unwrap().is_empty(),
            "{step}: every intent has an outcome"
        );
        let restored = restored_from(&running).as_deref().map(normalized);
        assert_eq!(
            restored,
            record.last_savepoint.as_deref().map(normalized),
            "{step}: restored the recorded savepoint"
        );
        assert!(
            record
                .last_savepoint
                .as_deref()
                .unwrap_or_default()
                .contains("savepoint-"),
            "{step}: state came from a savepoint"
        );
    }
}

#[test]
fn a_killed_sql_upgrade_converges_like_a_jar_upgrade() {
    let fixture = JobFixture::new(
        "crash-sql",
        |job| {
            fast_gate(sql_spec(
                job,
                &["pipelines/clicks.sql", "pipelines/count.sql"],
                "",
            ))
        },
        "create",
    );
    let JobFixture {
        job,
        repo,
        work,
        config,
        ..
    } = &fixture;
    repo.write("pipelines/clicks.sql", CLICKS_SQL)
        .write("pipelines/count.sql", COUNT_SQL_V1);
    repo.commit("the SQL files");
    add_runner(config);
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");

    for (round, step) in [
        "after:stop",
        "before:submit",
        "after:submit",
        "before:promote",
    ]
    .iter()
    .enumerate()
    {
        let query = if round % 2 == 0 {
            COUNT_SQL_V2
        } else {
            COUNT_SQL_V1
        };
        repo.write("pipelines/count.sql", query);
        repo.commit(&format!("query change {round}"));
        apply_killed_at(config, step);

        let (code, report) = apply(config);
        assert_eq!(code, Some(0), "{step}: {report:#}");
        let running = one_running(job);
        let store = StateStore::open_read_only(&work.path().join("state"))
            .unwrap()
            .unwrap();
        let record = store.job(job).unwrap().unwrap();
        assert_eq!(
            record.flink_job_id.as_deref(),
            Some(running.as_str()),
            "{step}"
        );
        let deployment: flink_gitops::reconcile::Deployment =
            serde_json::from_str(record.deployment_json.as_deref().unwrap()).unwrap();
        let statements = deployment.program.unwrap().statements().unwrap();
        assert_eq!(
            statements.last().unwrap().text.contains("HAVING"),
            round % 2 == 0,
            "{step}: the record holds the new query"
        );
        assert!(
            store.open_intents().unwrap().is_empty(),
            "{step}: every intent has an outcome"
        );
        assert_eq!(
            restored_from(&running).as_deref().map(normalized),
            record.last_savepoint.as_deref().map(normalized),
            "{step}: restored the recorded savepoint"
        );
    }
}
