//! `plan --check-state` against the real Flink 2.3 cluster: before a change is applied, the plan
//! says per operator whether the new version restores the running job's latest savepoint, and the
//! deploy agrees: a changed uid is predicted lost (named by uid and name) and the upgrade fails its
//! restore and is rolled back; a compatible new version is predicted compatible and deploys
//! restored from the savepoint.
#![cfg(feature = "real-flink")]

mod support;

use std::path::Path;

use flink_gitops::reconcile::restore::same_path as same_savepoint;
use serde_json::Value;
use support::*;

/// `plan --check-state --output json` with the test's Flink distribution and runner JAR.
fn plan_checking_state(config: &Path, flink_home: &Path) -> Value {
    let flink_home = flink_home.to_str().unwrap();
    let runner = example_jar("flink-gitops-runner.jar");
    flink_gitops_json(
        &[
            "plan",
            "-c",
            config.to_str().unwrap(),
            "--output",
            "json",
            "--check-state",
            "--flink-home",
            flink_home,
            "--runner",
            runner.to_str().unwrap(),
        ],
        0,
    )
}

fn planned<'a>(plan: &'a Value, job_id: &str) -> &'a Value {
    plan["plan"]["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan in {plan:#}"))
        .iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| panic!("{job_id} not planned: {plan:#}"))
}

/// The Flink distribution the test cluster runs (its `lib/` has the jars the check needs).
fn flink_home() -> std::path::PathBuf {
    let output = std::process::Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/flink-local"),
    )
    .arg("home")
    .output()
    .expect("scripts/flink-local home");
    assert!(output.status.success(), "scripts/flink-local home failed");
    String::from_utf8_lossy(&output.stdout).trim().into()
}

#[test]
fn the_plan_predicts_which_state_a_new_version_restores_and_the_deploy_agrees() {
    let fixture = JobFixture::new(
        "state-compat",
        |job| counter_spec(job, "artifacts/counter-v1.jar", "upgrade_mode: savepoint\n"),
        "a stateful counter",
    );
    let JobFixture {
        job,
        repo,
        spec_path,
        config,
        ..
    } = &fixture;
    let home = flink_home();
    repo.write(
        "artifacts/counter-rekeyed.jar",
        std::fs::read(example_jar("counter-rekeyed.jar")).unwrap(),
    );
    let base = repo.commit("the rekeyed build, not used yet");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let v1_jid = one_running(job);

    // The counting operator under a new uid; no savepoint of the job exists yet.
    repo.write(
        spec_path,
        counter_spec(
            job,
            "artifacts/counter-rekeyed.jar",
            "upgrade_mode: savepoint\n",
        ),
    );
    let rekeyed = repo.commit("count under a new uid");
    let plan = plan_checking_state(config, &home);
    let entry = planned(&plan, job);
    assert_eq!(entry["action"], "upgrade", "{entry:#}");
    assert_eq!(
        entry["state_compatibility"],
        serde_json::json!({"verdict": "not_checked", "reason": "no savepoint recorded yet"}),
    );
    // Without the distribution it says why it could not check.
    let nowhere = tempfile::tempdir().unwrap();
    let plan = plan_checking_state(config, nowhere.path());
    let reason = planned(&plan, job)["state_compatibility"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.ends_with("has no lib/ folder"), "{reason}");

    // With the job's savepoint: the count's state (uid click-count) is named as lost.
    let taken = flink_gitops_json(
        &[
            "savepoint",
            "-c",
            config.to_str().unwrap(),
            job,
            "--output",
            "json",
        ],
        0,
    );
    let savepoint = taken["savepoint"].as_str().unwrap().to_string();
    let plan = plan_checking_state(config, &home);
    let entry = planned(&plan, job);
    let verdict = &entry["state_compatibility"];
    assert_eq!(verdict["verdict"], "incompatible", "{entry:#}");
    assert!(same_savepoint(
        verdict["savepoint"].as_str().unwrap(),
        &savepoint
    ));
    assert_eq!(verdict["allow_non_restored_state"], false);
    let lost = verdict["lost"].as_array().unwrap();
    assert_eq!(
        lost.len(),
        1,
        "only the count holds state that is lost: {verdict:#}"
    );
    assert_eq!(lost[0]["uid"], "click-count");
    assert_eq!(lost[0]["name"], "count per key");
    assert_eq!(lost[0]["reason"]["kind"], "not_in_new_version");
    assert!(lost[0]["state_size"].as_u64().unwrap() > 0);
    let lost_id = lost[0]["operator_id"].as_str().unwrap().to_string();
    let warning = entry["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|w| w.starts_with("state NOT compatible"))
        .unwrap_or_else(|| panic!("no state warning: {entry:#}"));
    assert!(
        warning.contains(&format!(
            "state of operator \"count per key\" (uid click-count, id {lost_id})"
        )) && warning.contains("the deploy will fail"),
        "{warning}"
    );
    // The text plan says the same.
    let text = flink_gitops(&[
        "plan",
        "-c",
        config.to_str().unwrap(),
        "--check-state",
        "--flink-home",
        home.to_str().unwrap(),
        "--runner",
        example_jar("flink-gitops-runner.jar").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("warning: state NOT compatible") && text.contains("uid click-count"),
        "{text}"
    );

    // So does the pull request's plan of the same change, in its markdown.
    let review = flink_gitops(&[
        "plan",
        "--repo",
        repo.path().to_str().unwrap(),
        "--base",
        &base,
        "--head",
        &rekeyed,
        "-c",
        config.to_str().unwrap(),
        "--check-state",
        "--flink-home",
        home.to_str().unwrap(),
        "--runner",
        example_jar("flink-gitops-runner.jar").to_str().unwrap(),
        "--output",
        "markdown",
    ]);
    let markdown = String::from_utf8_lossy(&review.stdout);
    assert!(
        markdown.contains("state lost")
            && markdown.contains(&format!(
                "state of operator \"count per key\" (uid click-count, id {lost_id})"
            )),
        "{markdown}\n{}",
        String::from_utf8_lossy(&review.stderr)
    );

    // The deploy agrees: Flink cannot map that very operator's state, the upgrade is rolled back.
    let (code, report) = apply(config);
    assert_eq!(code, Some(1), "{report:#}");
    let rolled = expect(&report, job, "upgrade", "rolled_back");
    let root_cause = rolled["root_cause"].as_str().unwrap_or_default();
    assert!(
        root_cause.contains(&format!(
            "Cannot map checkpoint/savepoint state for operator {lost_id}"
        )),
        "{rolled:#}"
    );
    let back_jid = one_running(job);
    assert_ne!(back_jid, v1_jid);

    // Version 2 keeps every uid (and runs with parallelism 2): compatible, and it restores.
    repo.write(
        spec_path,
        counter_spec(job, "artifacts/counter-v2.jar", "upgrade_mode: savepoint\n")
            .replace("parallelism: 1", "parallelism: 2"),
    );
    repo.commit("v2, twice as wide");
    let plan = plan_checking_state(config, &home);
    let entry = planned(&plan, job);
    assert_eq!(entry["action"], "upgrade", "{entry:#}");
    let verdict = &entry["state_compatibility"];
    assert_eq!(verdict["verdict"], "compatible", "{entry:#}");
    assert_eq!(
        verdict["restored"], 2,
        "the source and the count hold state"
    );
    let predicted_from = verdict["savepoint"].as_str().unwrap().to_string();
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    let upgraded = expect(&report, job, "upgrade", "ok");
    let v2_jid = one_running(job);
    let restored = restored_from(&v2_jid).unwrap();
    assert!(
        same_savepoint(&restored, upgraded["savepoint"].as_str().unwrap()),
        "{upgraded:#}"
    );
    // The upgrade's own stop savepoint is newer than the one compared: same job, same operators.
    assert!(!predicted_from.is_empty());
}

/// Clicks counted per URL instead of per user: the aggregate keeps its place in the plan (and so
/// its generated id) but its key changes from BIGINT to STRING.
const COUNT_BY_URL_SQL: &str = "INSERT INTO counts\nSELECT CAST(CHAR_LENGTH(url) AS BIGINT) AS user_id, COUNT(*) AS clicks\nFROM clicks\nGROUP BY url;\n";

#[test]
fn a_changed_sql_aggregate_is_predicted_and_the_deploy_agrees() {
    let job = unique("state-compat-sql");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    let (sources, query) = (
        format!("pipelines/{job}/sources.sql"),
        format!("pipelines/{job}/count.sql"),
    );
    let spec = sql_spec(&job, &[&sources, &query], "upgrade_mode: savepoint\n");
    repo.write(&sources, CLICKS_SQL)
        .write(&query, COUNT_SQL_V1)
        .write(&format!("jobs/{job}.yaml"), &spec);
    repo.commit("clicks per user");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);
    add_runner(&config);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    one_running(&job);
    flink_gitops_json(
        &[
            "savepoint",
            "-c",
            config.to_str().unwrap(),
            &job,
            "--output",
            "json",
        ],
        0,
    );

    repo.write(&query, COUNT_BY_URL_SQL);
    repo.commit("clicks per url");
    let plan = plan_checking_state(&config, &flink_home());
    let entry = planned(&plan, &job);
    let verdict = &entry["state_compatibility"];
    assert_eq!(verdict["verdict"], "incompatible", "{entry:#}");
    // The running version's graph (from the cached runner JAR and the recorded statements) shows
    // what the aggregate that receives the old state does now.
    let changed = verdict["changed"]
        .as_array()
        .unwrap_or_else(|| panic!("{verdict:#}"));
    assert_eq!(changed.len(), 1, "{verdict:#}");
    assert!(
        changed[0]["before"]
            .as_str()
            .unwrap()
            .contains("GroupAggregate(groupBy=[user_id]")
            && changed[0]["after"]
                .as_str()
                .unwrap()
                .contains("GroupAggregate(groupBy=[url]"),
        "{verdict:#}"
    );
    let aggregate = changed[0]["operator_id"].as_str().unwrap().to_string();

    // Flink hands that operator the old state and cannot read it with the new key: rolled back.
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let rolled = expect(&report, &job, "upgrade", "rolled_back");
    let root_cause = rolled["root_cause"].as_str().unwrap_or_default();
    assert!(
        root_cause.contains(&aggregate) || root_cause.contains("key serializer"),
        "{rolled:#}"
    );
}
