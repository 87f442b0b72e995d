//! `plan` and `status` follow a real git repository as commits are added (against the fake Flink:
//! what they show comes from git and the agent's records; Flink only says which jobs run).

mod support;

use flink_gitops::plan::flink_job_id;
use serde_json::Value;
use support::*;

/// The fake Flink, served by the returned runtime while the binary runs (keep both as long as the
/// test), and its URL.
fn serve_fake() -> (
    tokio::runtime::Runtime,
    flink_gitops::testing::FakeFlink,
    String,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = flink_gitops::testing::FakeFlink::new();
    let address = runtime.block_on(fake.serve()).unwrap();
    (runtime, fake, format!("http://{address}"))
}

fn actions(plan: &Value) -> Vec<(String, String)> {
    job_actions(&plan["plan"]["jobs"])
}

fn reasons(plan: &Value, job: &str) -> Vec<String> {
    plan["plan"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job)
        .unwrap()["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn plan_follows_the_branch_head() {
    let repo = SpecRepo::new();
    repo.write("artifacts/counter.jar", b"PK\x03\x04 fake v1")
        .write(
            "jobs/orders.yaml",
            stream_spec("orders", "artifacts/counter.jar", 1),
        )
        .write(
            "jobs/team/clicks.yaml",
            stream_spec("clicks", "artifacts/counter.jar", 1),
        );
    let first = repo.commit("two jobs");
    let work = tempfile::tempdir().unwrap();
    let (_runtime, _fake, flink_url) = serve_fake();
    let config = write_config(work.path(), &repo, &flink_url);
    let config_arg = config.to_str().unwrap();

    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(plan["revision"], first.as_str());
    assert_eq!(
        plan["flink_version"], "2.3.0-fake",
        "the version the cluster reports"
    );
    assert_eq!(
        actions(&plan),
        [
            ("clicks".into(), "create".into()),
            ("orders".into(), "create".into())
        ]
    );

    record_applied(&config, &first, |id| flink_job_id(id, 1));
    repo.write(
        "jobs/orders.yaml",
        stream_spec("orders", "artifacts/counter.jar", 2),
    )
    .remove("jobs/team/clicks.yaml")
    .write("artifacts/counter-v2.jar", b"PK\x03\x04 fake v2")
    .write(
        "jobs/fresh.yaml",
        stream_spec("fresh", "artifacts/counter-v2.jar", 1),
    );
    let second = repo.commit("scale orders, drop clicks, add fresh");
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(plan["revision"], second.as_str());
    assert_eq!(
        actions(&plan),
        [
            ("clicks".into(), "delete".into()),
            ("fresh".into(), "create".into()),
            ("orders".into(), "upgrade".into())
        ]
    );
    assert_eq!(reasons(&plan, "orders"), ["parallelism: 1 → 2"]);

    repo.write("artifacts/counter.jar", b"PK\x03\x04 fake v1, rebuilt");
    repo.commit("new JAR content, same spec");
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert!(reasons(&plan, "orders").contains(&"artifact content changed".to_string()));

    // Nothing recorded runs on the cluster, so an unchanged spec is drift to repair.
    repo.write(
        "jobs/orders.yaml",
        stream_spec("orders", "artifacts/counter.jar", 1),
    )
    .write("artifacts/counter.jar", b"PK\x03\x04 fake v1");
    repo.commit("back to the first spec");
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(
        reasons(&plan, "orders"),
        [format!(
            "drift: job {} is not on the cluster",
            flink_job_id("orders", 1)
        )]
    );

    // Recorded running while Flink does not run them: `status` reports it, with exit code 1.
    let status = flink_gitops_json(
        &["status", "-c", config_arg, "--output", "json", "--no-fetch"],
        1,
    );
    let orders = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == "orders")
        .unwrap();
    assert_eq!(orders["applied_commit"], first.as_str());
    assert_eq!(orders["last_savepoint"], "file:/tmp/savepoint-1");
    assert_eq!(orders["flink_state"], Value::Null);

    repo.write("jobs/orders.yaml", "job_id: orders\njob_type: stream\nartifact_path: artifacts/counter.jar\ndeployment: { parallelism: 0 }\n");
    repo.commit("broken spec");
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert_eq!(plan["refused"]["kind"], "spec");
    let error = &plan["refused"]["spec_errors"][0];
    assert_eq!(error["file"], "jobs/orders.yaml");
    assert_eq!(
        (error["line"].as_u64(), error["field"].as_str()),
        (Some(4), Some("deployment.parallelism"))
    );
    assert!(
        plan.get("plan").is_none(),
        "no plan from an invalid revision"
    );

    let text = flink_gitops(&["plan", "-c", config_arg]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("jobs/orders.yaml:4:28: `deployment.parallelism`: must be at least 1"),
        "{stdout}"
    );
}

#[test]
fn config_problems_exit_with_2_and_name_the_field() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("config.yaml");
    std::fs::write(
        &path,
        "repo: { url: /nowhere }\ntrust: { allowed_signers: k, commits: sometimes }\n",
    )
    .unwrap();
    let output = flink_gitops(&["plan", "-c", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`trust.commits`: `sometimes`: expected `every` or `head`"),
        "{stderr}"
    );

    let output = flink_gitops(&["plan", "-c", "/does/not/exist.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read config /does/not/exist.yaml")
    );

    let output = flink_gitops(&["plan", "--bogus"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_missing_repository_is_a_clear_failure() {
    let work = tempfile::tempdir().unwrap();
    let config = write_config_with(
        work.path(),
        &work.path().join("no-such-repo"),
        "http://127.0.0.1:9",
        "",
        "",
    );
    let output = flink_gitops(&["plan", "-c", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("fetching") && stderr.contains("no-such-repo"),
        "{stderr}"
    );
}

#[test]
fn validate_a_checkout_offline() {
    let repo = SpecRepo::new();
    repo.write("artifacts/counter.jar", b"PK").write(
        "jobs/orders.yaml",
        stream_spec("orders", "artifacts/counter.jar", 1),
    );
    let dir = repo.path().to_str().unwrap();
    let ok = flink_gitops_json(&["validate", dir, "--output", "json"], 0);
    assert_eq!(ok["jobs"], serde_json::json!(["orders"]));
    repo.write(
        "jobs/dup.yaml",
        stream_spec("orders", "artifacts/counter.jar", 1),
    );
    let bad = flink_gitops_json(&["validate", dir, "--output", "json"], 1);
    assert_eq!(bad["valid"], false);
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("already used by jobs/dup.yaml")
            || bad["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("already used by jobs/orders.yaml")
    );
}

/// A key valid for a time is judged at the agent's first sight of a commit, as `apply` judges it:
/// `plan` reads that time from the state database, and judges a commit the agent never saw now.
#[test]
fn plan_judges_a_retired_key_at_the_agents_first_sight_of_the_commit() {
    let repo = SpecRepo::new();
    repo.write("artifacts/a.jar", b"PK\x03\x04")
        .write("jobs/a.yaml", stream_spec("a", "artifacts/a.jar", 1));
    let commit = repo.commit("one job, signed by a key retired since");
    let work = tempfile::tempdir().unwrap();
    let (_runtime, _fake, flink_url) = serve_fake();
    let config = write_config_with(
        work.path(),
        repo.path(),
        &flink_url,
        &repo
            .signer
            .line("namespaces=\"git,flink-gitops-artifact\",valid-before=\"20240101Z\""),
        "artifacts: optional",
    );
    let plan_args = ["plan", "-c", config.to_str().unwrap(), "--output", "json"];

    let never_seen = flink_gitops_json(&plan_args, 1);
    assert_eq!(never_seen["refused"]["kind"], "signature", "{never_seen}");
    assert!(
        never_seen["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("expired: valid-before 2024-01-01"),
        "{never_seen}"
    );

    {
        let store =
            flink_gitops::state::StateStore::open_exclusive(&work.path().join("state")).unwrap();
        store.record_revision_seen(&commit).unwrap();
        store
            .connection()
            .execute(
                "UPDATE revisions SET first_seen_at = '2023-06-01T12:00:00+00:00' WHERE commit_id = ?1",
                [&commit],
            )
            .unwrap();
    }
    let seen_in_time = flink_gitops_json(&plan_args, 0);
    assert!(seen_in_time["refused"].is_null(), "{seen_in_time}");
    assert_eq!(actions(&seen_in_time), [("a".into(), "create".into())]);
}

#[test]
fn an_unreachable_cluster_is_reported_not_guessed() {
    let repo = SpecRepo::new();
    repo.write("artifacts/a.jar", b"PK\x03\x04")
        .write("jobs/a.yaml", stream_spec("a", "artifacts/a.jar", 1));
    repo.commit("one job");
    let work = tempfile::tempdir().unwrap();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(work.path(), &repo, &format!("http://127.0.0.1:{dead_port}"));
    let plan = flink_gitops_json(
        &["plan", "-c", config.to_str().unwrap(), "--output", "json"],
        1,
    );
    assert!(
        plan["plan"]["cluster_unreachable"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{plan}"
    );
    let jobs = plan["plan"]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{plan}");
    assert_eq!(
        (&jobs[0]["job_id"], &jobs[0]["action"]),
        (&"a".into(), &"create".into())
    );
}

#[test]
fn output_into_a_closed_pipe_keeps_the_commands_exit_code_and_does_not_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let repo = SpecRepo::new();
    repo.write("artifacts/counter.jar", b"PK")
        .write(
            "jobs/orders.yaml",
            stream_spec("orders", "artifacts/counter.jar", 1),
        )
        .write(
            "jobs/dup.yaml",
            stream_spec("orders", "artifacts/counter.jar", 1),
        );
    let mut ends = [0; 2];
    // SAFETY: pipe(2) fills `ends` with two new descriptors, owned below.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let (reader, writer) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // Like `validate … | head -0`: nobody reads, so every write is EPIPE.
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(["validate", repo.path().to_str().unwrap()])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "the verdict survives: {stderr}"
    );
}

/// A spec repository applied once to the fake Flink, which lives as long as this does.
struct Applied {
    work: tempfile::TempDir,
    config: std::path::PathBuf,
    _fake: flink_gitops::testing::FakeFlink,
    _runtime: tokio::runtime::Runtime,
}

impl Applied {
    fn first(repo: &SpecRepo) -> Applied {
        let work = tempfile::tempdir().unwrap();
        let (runtime, fake, flink_url) = serve_fake();
        let config = write_config(work.path(), repo, &flink_url);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("reconcile:\n  poll_interval: 100ms\n");
        std::fs::write(&config, text).unwrap();
        let (code, report) = apply(&config);
        assert_eq!(code, Some(0), "{report}");
        Applied {
            work,
            config,
            _fake: fake,
            _runtime: runtime,
        }
    }
}

/// `apply` keeps every spec it loaded in the state database by blob id; `plan` takes unchanged
/// specs from there. What it says must be what parsing every spec says, also when the change is
/// in a file a spec names (its JAR) rather than in the spec.
#[test]
fn specs_taken_from_the_memo_plan_exactly_as_parsed_ones() {
    let repo = SpecRepo::new();
    repo.write("artifacts/counter.jar", b"PK\x03\x04 fake v1")
        .write("artifacts/other.jar", b"PK\x03\x04 other")
        .write(
            "jobs/orders.yaml",
            counter_spec("orders", "artifacts/counter.jar", ""),
        )
        .write(
            "jobs/clicks.yaml",
            counter_spec("clicks", "artifacts/counter.jar", ""),
        )
        .write(
            "jobs/fraud.yaml",
            counter_spec("fraud", "artifacts/other.jar", ""),
        );
    repo.commit("three jobs");
    let applied = Applied::first(&repo);
    let (work, config) = (&applied.work, &applied.config);
    let config_arg = config.to_str().unwrap();

    let database = work.path().join("state/state.db");
    let memo_keys = || -> Vec<String> {
        let db = rusqlite::Connection::open(&database).unwrap();
        let mut keys: Vec<String> = db
            .prepare("SELECT key FROM spec_memo")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        keys.sort();
        keys
    };
    let kept = memo_keys();
    assert_eq!(kept.len(), 3, "one entry per spec: {kept:?}");

    // The shared JAR is rebuilt: two specs must be read again although their files are the same;
    // and one spec changes a field the running job does not use.
    repo.write("artifacts/counter.jar", b"PK\x03\x04 fake v1, rebuilt")
        .write(
            "jobs/fraud.yaml",
            counter_spec(
                "fraud",
                "artifacts/other.jar",
                "stream_config:\n  savepoint_trigger_interval: 60000\n",
            ),
        );
    repo.commit("rebuild counter, scale fraud");
    let with_memo = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(
        actions(&with_memo),
        [
            ("clicks".into(), "upgrade".into()),
            ("fraud".into(), "update".into()),
            ("orders".into(), "upgrade".into())
        ]
    );
    rusqlite::Connection::open(&database)
        .unwrap()
        .execute("DELETE FROM spec_memo", [])
        .unwrap();
    let parsed = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(with_memo["plan"], parsed["plan"]);

    // The next apply keeps this revision's specs only.
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report}");
    let now = memo_keys();
    assert_eq!(now.len(), 3);
    assert_ne!(now, kept, "the changed fraud spec has a new key");
    let unchanged = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(
        actions(&unchanged),
        [
            ("clicks".into(), "unchanged".into()),
            ("fraud".into(), "unchanged".into()),
            ("orders".into(), "unchanged".into())
        ]
    );
}

/// The memo only saves time: a memo the agent cannot read (here a value of the wrong type) makes
/// `apply` parse every spec, as `plan` does, instead of failing the pass; the specs it parsed
/// replace the memo.
#[test]
fn an_unreadable_memo_is_parsed_around() {
    let repo = SpecRepo::new();
    repo.write("artifacts/counter.jar", b"PK\x03\x04 fake v1")
        .write(
            "jobs/orders.yaml",
            counter_spec("orders", "artifacts/counter.jar", ""),
        );
    repo.commit("one job");
    let applied = Applied::first(&repo);
    let (work, config) = (&applied.work, &applied.config);
    let config_arg = config.to_str().unwrap();
    let changed = rusqlite::Connection::open(work.path().join("state/state.db"))
        .unwrap()
        .execute("UPDATE spec_memo SET observations_json = x'ff'", [])
        .unwrap();
    assert_eq!(changed, 1);

    repo.write(
        "jobs/orders.yaml",
        counter_spec(
            "orders",
            "artifacts/counter.jar",
            "stream_config:\n  savepoint_trigger_interval: 60000\n",
        ),
    );
    repo.commit("orders: periodic savepoints");
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report}");
    let after = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(actions(&after), [("orders".into(), "unchanged".into())]);
    let kinds: Vec<String> = rusqlite::Connection::open(work.path().join("state/state.db"))
        .unwrap()
        .prepare("SELECT typeof(observations_json) FROM spec_memo")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        kinds,
        ["text"],
        "the parsed spec replaced the unreadable entry"
    );
}

/// The objects the mirror at `state/repo.git` holds, by id.
fn mirror_objects(work: &std::path::Path) -> Vec<String> {
    let mirror = git2::Repository::open_bare(work.join("state/repo.git")).unwrap();
    let mut ids = Vec::new();
    mirror
        .odb()
        .unwrap()
        .foreach(|oid| {
            ids.push(oid.to_string());
            true
        })
        .unwrap();
    ids.sort();
    ids
}

#[test]
fn plan_reads_a_local_repository_in_place_and_refuses_an_object_that_does_not_match_its_id() {
    let repo = SpecRepo::new();
    repo.write("artifacts/counter.jar", b"PK\x03\x04 fake v1")
        .write(
            "jobs/orders.yaml",
            stream_spec("orders", "artifacts/counter.jar", 1),
        );
    let first = repo.commit("one job");
    let work = tempfile::tempdir().unwrap();
    let (_runtime, _fake, flink_url) = serve_fake();
    let config = write_config(work.path(), &repo, &flink_url);
    let config_arg = config.to_str().unwrap();

    // `apply`'s fetch fills the mirror; `plan` and `status` only read the repository in place.
    record_applied(&config, &first, |id| flink_job_id(id, 1));
    let fetched = mirror_objects(work.path());
    assert!(!fetched.is_empty());
    repo.write(
        "jobs/orders.yaml",
        stream_spec("orders", "artifacts/counter.jar", 2),
    );
    let second = repo.commit("scale orders");
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(plan["revision"], second.as_str());
    assert_eq!(reasons(&plan, "orders"), ["parallelism: 1 → 2"]);
    assert_eq!(
        mirror_objects(work.path()),
        fetched,
        "plan changes nothing, the mirror neither"
    );

    // The new spec's blob file now holds other content of the same length: reading it in place,
    // libgit2 hashes it and refuses it, as the copy of a fetch does.
    let spec = git2::Repository::open(repo.path())
        .unwrap()
        .revparse_single("HEAD:jobs/orders.yaml")
        .unwrap()
        .id()
        .to_string();
    let file = repo
        .path()
        .join(".git/objects")
        .join(&spec[..2])
        .join(&spec[2..]);
    let text = stream_spec("orders", "artifacts/counter.jar", 2);
    let forged_text = text.replacen("parallelism: 2", "parallelism: 9", 1);
    assert_eq!(forged_text.len(), text.len());
    let mut forged = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut forged,
        format!("blob {}\0{forged_text}", forged_text.len()).as_bytes(),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&file, permissions).unwrap();
    std::fs::write(&file, forged.finish().unwrap()).unwrap();

    let output = flink_gitops(&["plan", "-c", config_arg, "--output", "json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&spec) || stderr.contains(&spec),
        "the error names the object: {stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("parallelism: 1 → 9"),
        "the forged content is not planned: {stdout}"
    );
}
