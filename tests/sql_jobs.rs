//! SQL jobs through `flink-gitops apply` on the real Flink 2.3 cluster, with the runner JAR that
//! `scripts/build-runner` makes: the whole life of a stream pipeline (a compatible query change
//! restoring its state from the savepoint, a broken change rolled back with Flink's root cause,
//! `git revert`, suspend/resume, delete), a batch pipeline on a cron with `max_runs` and a TTL,
//! and `${secret:NAME}` values that reach Flink and nothing else.
#![cfg(feature = "real-flink")]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flink_gitops::reconcile::restore::same_path as same_savepoint;
use flink_gitops::state::StateStore;
use serde_json::Value;
use support::*;

/// Valid SQL that Flink's planner refuses when the job is submitted.
const COUNT_BROKEN: &str = "INSERT INTO counts\nSELECT user_id, COUNT(referrer) AS clicks\nFROM clicks\nGROUP BY user_id;\n";

/// The apply config of these tests: the runner JAR and, when given, a secrets folder.
fn sql_config(work: &Path, repo: &SpecRepo, secrets: Option<&Path>) -> PathBuf {
    let path = write_apply_config(work, repo);
    add_runner(&path);
    if let Some(dir) = secrets {
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!("secrets:\n  dir: {}\n", dir.display()));
        std::fs::write(&path, text).unwrap();
    }
    path
}

fn plan_json(config: &Path) -> Value {
    let output = flink_gitops(&["plan", "-c", config.to_str().unwrap(), "--output", "json"]);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "plan printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn planned<'a>(plan: &'a Value, job_id: &str) -> &'a Value {
    plan["plan"]["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan in {plan:#}"))
        .iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| panic!("{job_id} not planned: {plan:#}"))
}

#[test]
fn a_sql_pipeline_upgrades_with_its_state_rolls_back_reverts_suspends_and_is_deleted() {
    let job = unique("sql-life");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    let dir = format!("pipelines/{job}");
    let (sources, query) = (format!("{dir}/sources.sql"), format!("{dir}/count.sql"));
    let spec_path = format!("jobs/{job}.yaml");
    repo.write(&sources, CLICKS_SQL)
        .write(&query, COUNT_SQL_V1)
        .write(&spec_path, sql_spec(&job, &[&sources, &query], ""));
    let v1_commit = repo.commit("clicks per user, in SQL");
    let work = tempfile::tempdir().unwrap();
    let config = sql_config(work.path(), &repo, None);

    // create: the runner runs the statements under our job id and the SET name
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "create", "ok");
    let v1_jid = one_running(&job);
    assert_eq!(
        flink_json(&format!("/jobs/{v1_jid}"))["name"],
        "clicks per user"
    );

    // a compatible change of the .sql file alone (the YAML is untouched) is an upgrade; plan shows
    // the diff and warns that the query keeps state
    repo.write(&query, COUNT_SQL_V2);
    let v2_commit = repo.commit("only users with clicks");
    let plan = plan_json(&config);
    let entry = planned(&plan, &job);
    assert_eq!(entry["action"], "upgrade", "{entry:#}");
    assert_eq!(entry["kind"], "sql");
    assert!(
        entry["source_diff"]
            .as_str()
            .unwrap()
            .contains("+HAVING COUNT(*) > 0"),
        "{entry:#}"
    );
    assert!(
        entry["warnings"][0]
            .as_str()
            .unwrap()
            .contains("may not restore"),
        "{entry:#}"
    );
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let upgraded = expect(&report, &job, "upgrade", "ok");
    let savepoint = upgraded["savepoint"].as_str().unwrap().to_string();
    let v2_jid = one_running(&job);
    assert_ne!(v2_jid, v1_jid);
    assert!(
        same_savepoint(&restored_from(&v2_jid).unwrap(), &savepoint),
        "the new query restored the upgrade savepoint"
    );

    // a change Flink refuses at submit: rolled back to v2 from the same savepoint, with its words
    repo.write(&query, COUNT_BROKEN);
    repo.commit("count referrers (there is no such column)");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let rolled = expect(&report, &job, "upgrade", "rolled_back");
    assert!(
        rolled["root_cause"]
            .as_str()
            .unwrap()
            .contains("Column 'referrer' not found"),
        "{rolled:#}"
    );
    let back_jid = one_running(&job);
    assert!(same_savepoint(
        &restored_from(&back_jid).unwrap(),
        rolled["savepoint"].as_str().unwrap()
    ));
    let state = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    assert_eq!(state.job(&job).unwrap().unwrap().commit_id, v2_commit);
    drop(state);

    // git revert of the broken commit: v2 runs already
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "unchanged", "unchanged");

    // git revert of v2: v1's query again, through a savepoint, seen as a rollback to v1
    repo.git(&["revert", "--no-edit", "HEAD~2"]);
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let reverted = expect(&report, &job, "upgrade", "ok");
    assert!(
        reverted["message"]
            .as_str()
            .unwrap()
            .contains(&format!("from commit {}", &v1_commit[..12])),
        "{reverted:#}"
    );
    let v1_again = one_running(&job);
    assert!(same_savepoint(
        &restored_from(&v1_again).unwrap(),
        reverted["savepoint"].as_str().unwrap()
    ));

    // suspend, then resume from the kept savepoint
    let spec = std::fs::read_to_string(repo.path().join(&spec_path)).unwrap();
    repo.write(&spec_path, format!("{spec}state: suspended\n"));
    repo.commit("suspend");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let kept = expect(&report, &job, "suspend", "ok")["savepoint"]
        .as_str()
        .unwrap()
        .to_string();
    none_running(&job);
    repo.write(&spec_path, spec);
    repo.commit("resume");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "resume", "ok");
    assert!(same_savepoint(
        &restored_from(&one_running(&job)).unwrap(),
        &kept
    ));

    // status and history say what kind of job this is
    let config_arg = config.to_str().unwrap();
    let row = status_row(&config, &job);
    assert_eq!(row["kind"], "sql", "{row:#}");

    // delete: stopped with a final savepoint that is recorded
    repo.remove(&spec_path);
    repo.commit("delete");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let final_savepoint = expect(&report, &job, "delete", "ok")["savepoint"]
        .as_str()
        .unwrap()
        .to_string();
    let state = StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let record = state.job(&job).unwrap().unwrap();
    assert_eq!(
        (record.status.as_str(), record.last_savepoint.as_deref()),
        ("deleted", Some(final_savepoint.as_str()))
    );
    none_running(&job);
    let history = flink_gitops_json(
        &[
            "history", "-c", config_arg, "--job", &job, "--output", "json",
        ],
        0,
    );
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["job_kind"] == "sql"),
        "{history:#}"
    );
}

fn batch_sql_spec(job_id: &str, file: &str, batch_config: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: batch\nsql: {file}\ndeployment:\n  parallelism: 1\nbatch_config:\n{batch_config}"
    )
}

/// A bounded report: `rows` generated rows at `rate` per second, counted per key into a blackhole.
fn report_sql(rows: u32, rate: u32) -> String {
    format!(
        "CREATE TABLE orders (customer BIGINT, amount INT) WITH (\n  'connector' = 'datagen',\n  'number-of-rows' = '{rows}',\n  'rows-per-second' = '{rate}',\n  'fields.customer.min' = '1',\n  'fields.customer.max' = '10'\n);\nCREATE TABLE totals (customer BIGINT, total BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO totals SELECT customer, SUM(amount) FROM orders GROUP BY customer;\n"
    )
}

fn runs(config: &Path, job_id: &str) -> Vec<Value> {
    flink_gitops_json(
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
    )
    .as_array()
    .unwrap()
    .iter()
    .filter(|e| e["kind"] == "run")
    .cloned()
    .collect()
}

#[test]
fn a_batch_sql_report_runs_on_its_cron_until_max_runs_and_its_ttl_cancels_a_slow_run() {
    let job = unique("sql-cron");
    let slow = unique("sql-ttl");
    let _cleanup = CancelOnDrop(vec![job.clone(), slow.clone()]);
    let repo = SpecRepo::new();
    repo.write("reports/totals.sql", report_sql(500, 10_000))
        .write("reports/slow.sql", report_sql(1_000_000, 5))
        .write(
            &format!("jobs/{job}.yaml"),
            batch_sql_spec(
                &job,
                "reports/totals.sql",
                "  cron: \"*/3 * * * * *\"\n  max_runs: 2\n",
            ),
        )
        .write(
            &format!("jobs/{slow}.yaml"),
            batch_sql_spec(&slow, "reports/slow.sql", "  ttl_seconds: 3\n"),
        );
    let commit = repo.commit("two reports in SQL");
    let work = tempfile::tempdir().unwrap();
    let config = sql_config(work.path(), &repo, None);

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, report) = apply(&config);
        let finished = runs(&config, &job)
            .iter()
            .filter(|r| r["result"] == "finished")
            .count();
        let timed_out = runs(&config, &slow)
            .iter()
            .any(|r| r["result"] == "timed_out");
        if finished == 2 && timed_out {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected 2 finished cron runs and a timed-out run; last report {report:#}\nruns {:#?} {:#?}",
            runs(&config, &job),
            runs(&config, &slow)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for run in runs(&config, &job) {
        assert_eq!(run["revision"], commit.as_str());
        // Between two applies a fire time may have passed unseen: it runs late, as a catch-up.
        assert!(
            matches!(
                run["action"].as_str(),
                Some("run (cron)" | "run (catch-up)")
            ),
            "{run:#}"
        );
        let jid = run["flink_job_id"].as_str().unwrap();
        let flink_job = flink_json(&format!("/jobs/{jid}"));
        assert_eq!(flink_job["state"], "FINISHED");
        // The runner ran the statements in batch mode: Flink says so in the job's plan.
        assert_eq!(flink_job["job-type"], "BATCH", "{flink_job:#}");
    }
    // Deliberate: proving no third run needs a fire time (every 3 s) to pass.
    std::thread::sleep(Duration::from_secs(4));
    let (_, report) = apply(&config);
    assert!(
        outcome_of(&report, &job)["message"]
            .as_str()
            .unwrap()
            .contains("max_runs reached"),
        "{report:#}"
    );
    assert_eq!(runs(&config, &job).len(), 2);
    let slow_run = runs(&config, &slow).pop().unwrap();
    let jid = slow_run["flink_job_id"].as_str().unwrap();
    wait_until(
        "Flink to cancel the slow run",
        Duration::from_secs(10),
        || flink_json(&format!("/jobs/{jid}"))["state"] == "CANCELED",
    );
}

#[test]
fn secrets_reach_flink_and_nothing_else_and_a_changed_value_redeploys() {
    const VALUE: &str = "tok-7f3a9-do-not-leak";
    let job = unique("sql-secret");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let work = tempfile::tempdir().unwrap();
    let secrets = work.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("SINK_TOKEN"), format!("{VALUE}\n")).unwrap();
    let repo = SpecRepo::new();
    let sql = "SET 'pipeline.name' = 'secret sink';\nCREATE TABLE ticks (n BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '5');\nCREATE TABLE sink_out (n BIGINT) WITH ('connector' = 'print', 'print-identifier' = '${secret:SINK_TOKEN}');\nINSERT INTO sink_out SELECT n FROM ticks;\n";
    repo.write("pipelines/secret.sql", sql).write(
        &format!("jobs/{job}.yaml"),
        sql_spec(&job, &["pipelines/secret.sql"], ""),
    );
    repo.commit("a sink with a token");
    let config = sql_config(work.path(), &repo, Some(&secrets));
    let config_arg = config.to_str().unwrap();

    let output = flink_gitops(&["-vv", "apply", "-c", config_arg, "--output", "json"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut said = String::from_utf8_lossy(&output.stdout).to_string();
    said.push_str(&String::from_utf8_lossy(&output.stderr));
    let jid = one_running(&job);
    // The value reached Flink: the print sink names its lines with it.
    let tm_out = std::fs::read_dir(flink_dir().join("log"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reached = tm_out.contains(VALUE);
    while !reached && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        reached = std::fs::read_dir(flink_dir().join("log"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains(VALUE)
            });
    }
    assert!(
        reached,
        "the print sink of {jid} never used the secret value"
    );

    for args in [
        vec!["plan", "-c", config_arg, "--output", "json"],
        vec!["plan", "-c", config_arg],
        vec!["status", "-c", config_arg, "--output", "json"],
        vec!["status", "-c", config_arg],
        vec!["history", "-c", config_arg, "--output", "json"],
    ] {
        let output = flink_gitops(&args);
        said.push_str(&String::from_utf8_lossy(&output.stdout));
        said.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    assert!(!said.contains(VALUE), "the value was printed:\n{said}");
    for entry in walk(&work.path().join("state")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
            "{} holds the secret value",
            entry.display()
        );
    }

    // A new value: plan names the secret (not the value) as the reason, and apply redeploys.
    std::fs::write(secrets.join("SINK_TOKEN"), "tok-rotated-2\n").unwrap();
    let plan = plan_json(&config);
    let entry = planned(&plan, &job);
    assert_eq!(entry["action"], "upgrade", "{entry:#}");
    assert_eq!(
        entry["reasons"],
        serde_json::json!(["secret `SINK_TOKEN` changed (value not shown)"])
    );
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "upgrade", "ok");
    assert_ne!(one_running(&job), jid);

    // Flink quotes the value back when it refuses it: the recorded root cause says the reference.
    repo.write(
        "pipelines/secret.sql",
        sql.replace(
            "'connector' = 'print', 'print-identifier' = '${secret:SINK_TOKEN}'",
            "'connector' = '${secret:SINK_TOKEN}'",
        ),
    );
    repo.commit("a connector named by the token (Flink has none of that name)");
    let output = flink_gitops(&["-vv", "apply", "-c", config_arg, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rolled = expect(&report, &job, "upgrade", "rolled_back");
    let cause = rolled["root_cause"].as_str().unwrap();
    assert!(cause.contains("${secret:SINK_TOKEN}"), "{rolled:#}");
    let mut said = String::from_utf8_lossy(&output.stdout).to_string();
    said.push_str(&String::from_utf8_lossy(&output.stderr));
    for args in [
        vec!["status", "-c", config_arg, "--output", "json"],
        vec!["history", "-c", config_arg, "--output", "json"],
    ] {
        said.push_str(&String::from_utf8_lossy(&flink_gitops(&args).stdout));
    }
    assert!(
        !said.contains("tok-rotated-2"),
        "the value was printed:\n{said}"
    );
    for entry in walk(&work.path().join("state")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w == b"tok-rotated-2"),
            "{} holds the secret value",
            entry.display()
        );
    }

    // A secret the folder lacks stops the revision before anything is touched, naming the spec.
    let spec_path = format!("jobs/{job}.yaml");
    repo.write(
        "pipelines/secret.sql",
        sql.replace("SINK_TOKEN", "MISSING_TOKEN"),
    );
    repo.commit("a token nobody placed");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let refused = report.to_string();
    assert!(
        refused.contains(&spec_path) && refused.contains("MISSING_TOKEN"),
        "{report:#}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn validate_asks_flinks_planner_and_points_at_the_file_line_and_column() {
    let flink_home = run(std::process::Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/flink-local"),
    )
    .arg("home"))
    .trim()
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::write(root.join("pipelines/clicks.sql"), CLICKS_SQL).unwrap();
    std::fs::write(root.join("pipelines/count.sql"), COUNT_SQL_V1).unwrap();
    std::fs::write(
        root.join("jobs/count.yaml"),
        sql_spec(
            "count",
            &["pipelines/clicks.sql", "pipelines/count.sql"],
            "",
        ),
    )
    .unwrap();
    let runner = example_jar("flink-gitops-runner.jar");
    let validate = || {
        let output = flink_gitops(&[
            "validate",
            root.to_str().unwrap(),
            "--runner",
            runner.to_str().unwrap(),
            "--flink-home",
            &flink_home,
            "--output",
            "json",
        ]);
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code(), report)
    };
    let (code, report) = validate();
    assert_eq!(
        (code, &report["sql_check"]),
        (Some(0), &Value::from("checked")),
        "{report:#}"
    );

    // `referrer` is on line 2 of the file, column 23 of that line
    std::fs::write(root.join("pipelines/count.sql"), COUNT_BROKEN).unwrap();
    let (code, report) = validate();
    assert_eq!(code, Some(1), "{report:#}");
    let error = &report["errors"][0];
    assert_eq!(
        (&error["file"], &error["line"], &error["column"]),
        (
            &Value::from("pipelines/count.sql"),
            &Value::from(2),
            &Value::from(23)
        ),
        "{report:#}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Column 'referrer' not found"),
        "{report:#}"
    );
}

#[test]
fn a_spec_brings_its_own_runner_jar_signed_like_any_jar() {
    let job = unique("sql-own-runner");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    repo.write("pipelines/clicks.sql", CLICKS_SQL)
        .write("pipelines/count.sql", COUNT_SQL_V1)
        .write(
            "artifacts/team-runner.jar",
            std::fs::read(example_jar("flink-gitops-runner.jar")).unwrap(),
        )
        .write(
            &format!("jobs/{job}.yaml"),
            sql_spec(
                &job,
                &["pipelines/clicks.sql", "pipelines/count.sql"],
                "runner: artifacts/team-runner.jar\n",
            ),
        );
    repo.commit("a pipeline with the team's runner, not signed yet");
    let work = tempfile::tempdir().unwrap();
    // No runner.jar in the agent's config, and JAR signatures required.
    let config = write_apply_config(work.path(), &repo);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("artifacts: optional", "artifacts: required");
    std::fs::write(&config, text).unwrap();

    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["refused"][0], "artifact", "{report:#}");
    assert!(
        report["refused"][1]
            .as_str()
            .unwrap()
            .contains("artifacts/team-runner.jar: no detached signature"),
        "{report:#}"
    );
    none_running(&job);

    repo.sign_artifact("artifacts/team-runner.jar");
    repo.commit("sign the runner");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "create", "ok");
    one_running(&job);
    let uploaded: Vec<String> = flink_json("/jars")["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        uploaded.iter().any(|n| n == "team-runner.jar"),
        "{uploaded:?}"
    );
}
