//! The job spec contract: every field accepted or refused as `job-spec.md` documents.

use std::path::Path;
use std::time::Duration;

use flink_gitops::limits::Limits;
use flink_gitops::spec::{
    Artifact, Concurrency, DesiredRunState, DirTree, JobType, UpgradeMode, load_desired, parse_spec,
};

const FULL_STREAM: &str = r#"
job_id: etl-pipeline-001
job_type: stream
artifact_path: artifacts/etl-pipeline.jar
artifact_signature: "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
entry_class: com.example.EtlJob
deployment:
  parallelism: 4
  checkpoint_interval: 60000
  savepoint_path: /savepoints/etl-pipeline
  restart_strategy: fixed-delay
  max_restart_attempts: 3
  restart_delay: 10000
security:
  artifact_verification: true
monitoring:
  alert_on_failure: true
  alert_on_backpressure: true
args: ["--env", "production", "--config", "config/prod.yaml"]
stream_config:
  savepoint_trigger_interval: 300000
  checkpoint_timeout: 60000
  min_pause_between_checkpoints: 10000
  max_concurrent_checkpoints: 1
advanced:
  network_buffer_timeout: 100
state: suspended
upgrade_mode: last-state
allow_non_restored_state: true
flink_config:
  pipeline.name: etl
  table.exec.mini-batch.enabled: true
  taskmanager.network.memory.buffers-per-channel: 4
health:
  stable_for: 1m
  max_restarts: 2
  require_checkpoint: false
  timeout: 10m
"#;

#[test]
fn every_stream_field_is_applied() {
    let spec = parse_spec("jobs/etl.yaml", FULL_STREAM).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(spec.job_id, "etl-pipeline-001");
    assert_eq!(spec.job_type, JobType::Stream);
    assert_eq!(
        spec.artifact,
        Artifact::Path(flink_gitops::spec::RepoPath::parse("artifacts/etl-pipeline.jar").unwrap())
    );
    assert_eq!(
        spec.artifact_sha256.as_deref(),
        Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
    );
    assert_eq!(spec.entry_class.as_deref(), Some("com.example.EtlJob"));
    assert_eq!(spec.parallelism.map(|p| p.get()), Some(4));
    assert_eq!(
        spec.savepoint_dir.as_deref(),
        Some("file:///savepoints/etl-pipeline")
    );
    assert_eq!(
        spec.args,
        ["--env", "production", "--config", "config/prod.yaml"]
    );
    assert!(spec.artifact_verification);
    assert!(spec.alert_on_failure && spec.alert_on_backpressure);
    assert_eq!(spec.savepoint_trigger_interval_ms, Some(300_000));
    assert_eq!(spec.state, DesiredRunState::Suspended);
    assert_eq!(spec.upgrade_mode, UpgradeMode::LastState);
    assert!(spec.allow_non_restored_state);
    assert_eq!(spec.health.stable_for, Duration::from_secs(60));
    assert_eq!(spec.health.max_restarts, 2);
    assert!(!spec.health.require_checkpoint);
    assert_eq!(spec.health.timeout, Duration::from_secs(600));
    assert!(spec.batch.is_none());
    let expected = [
        ("execution.buffer-timeout.interval", "100 ms"),
        ("execution.checkpointing.interval", "60000 ms"),
        ("execution.checkpointing.max-concurrent-checkpoints", "1"),
        ("execution.checkpointing.min-pause", "10000 ms"),
        ("execution.checkpointing.timeout", "60000 ms"),
        ("pipeline.name", "etl"),
        ("restart-strategy.fixed-delay.attempts", "3"),
        ("restart-strategy.fixed-delay.delay", "10000 ms"),
        ("restart-strategy.type", "fixed-delay"),
        ("table.exec.mini-batch.enabled", "true"),
        ("taskmanager.network.memory.buffers-per-channel", "4"),
    ];
    let actual: Vec<(&str, &str)> = spec
        .flink_configuration
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(actual, expected);
    assert!(spec.checkpointing_enabled());
}

#[test]
fn batch_fields_and_defaults() {
    let spec = parse_spec(
        "jobs/report.yaml",
        "job_id: daily-report\njob_type: batch\nartifact_path: a.jar\nbatch_config:\n  cron: \"0 2 * * *\"\n  timezone: Europe/Berlin\n  max_runs: 10\n  ttl_seconds: 7200\n  cleanup_on_completion: true\n  concurrency: replace\n",
    )
    .unwrap();
    let batch = spec.batch.unwrap();
    assert_eq!(batch.cron.as_deref(), Some("0 2 * * *"));
    assert_eq!(batch.timezone, "Europe/Berlin");
    assert_eq!(batch.max_runs, Some(10));
    assert_eq!(batch.ttl_seconds, Some(7200));
    assert!(batch.cleanup_on_completion);
    assert_eq!(batch.concurrency, Concurrency::Replace);

    let minimal = parse_spec(
        "jobs/once.yaml",
        "job_id: once\njob_type: batch\nartifact_path: a.jar\n",
    )
    .unwrap();
    let batch = minimal.batch.clone().unwrap();
    assert_eq!(
        (batch.cron, batch.timezone.as_str(), batch.concurrency),
        (None, "UTC", Concurrency::Forbid)
    );
    assert_eq!(minimal.state, DesiredRunState::Running);
    assert_eq!(minimal.upgrade_mode, UpgradeMode::Savepoint);
    assert!(minimal.parallelism.is_none());
    assert!(!minimal.checkpointing_enabled());
}

#[test]
fn pinned_url_artifact_is_accepted() {
    let spec = parse_spec(
        "jobs/x.yaml",
        "job_id: x\njob_type: stream\nartifact_url: https://artifacts.example.com/x-1.0.jar\nartifact_signature: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    assert_eq!(
        spec.artifact,
        Artifact::Url("https://artifacts.example.com/x-1.0.jar".into())
    );
}

#[test]
fn every_bad_spec_in_the_corpus_gets_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-specs");
    let mut failures = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", path.display()))
            .trim();
        let name = format!("jobs/{}", path.file_name().unwrap().to_string_lossy());
        count += 1;
        match parse_spec(&name, &text) {
            Ok(_) => failures.push(format!(
                "{name}: accepted, expected an error containing `{expected}`"
            )),
            Err(errors) => {
                let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
                if !rendered
                    .iter()
                    .any(|e| e.contains(expected) && e.starts_with(&name))
                {
                    failures.push(format!("{name}: expected `{expected}`, got {rendered:#?}"));
                }
            }
        }
    }
    assert_eq!(count, 59, "every file of the corpus was read");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_problems_of_one_file_are_reported_together() {
    let errors = parse_spec(
        "jobs/multi.yaml",
        "job_id: Bad_Id\njob_type: stream\nartifact_path: ../x.jar\ndeployment: { parallelism: 0 }\nenv_vars: { A: b }\n",
    )
    .unwrap_err();
    let fields: Vec<_> = errors.iter().filter_map(|e| e.field.clone()).collect();
    assert_eq!(
        fields,
        [
            "job_id",
            "artifact_path",
            "deployment.parallelism",
            "env_vars"
        ],
        "{errors:#?}"
    );
}

fn write(root: &Path, path: &str, content: &[u8]) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

fn spec_text(id: &str, jar: &str) -> String {
    format!("job_id: {id}\njob_type: stream\nartifact_path: {jar}\n")
}

#[test]
fn a_checkout_with_many_problems_reports_each_file() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    write(root, "artifacts/a.jar", b"PK");
    write(
        root,
        "jobs/a.yaml",
        spec_text("orders", "artifacts/a.jar").as_bytes(),
    );
    write(
        root,
        "jobs/team/b.yml",
        spec_text("orders", "artifacts/a.jar").as_bytes(),
    );
    write(
        root,
        "jobs/c.yaml",
        spec_text("missing-jar", "artifacts/none.jar").as_bytes(),
    );
    write(root, "jobs/d.yaml", b"job_id: \xff\xfe\n");
    write(
        root,
        "jobs/e.yaml",
        &vec![b'#'; Limits::DEFAULT.spec_file_bytes as usize + 1],
    );
    write(
        root,
        "jobs/f.yaml",
        spec_text("not-a-jar", "jobs/a.yaml").as_bytes(),
    );
    write(root, "jobs/README.md", b"not a spec, ignored");
    std::os::unix::fs::symlink("/etc/passwd", root.join("artifacts/escape.jar")).unwrap();
    write(
        root,
        "jobs/g.yaml",
        spec_text("escape", "artifacts/escape.jar").as_bytes(),
    );
    std::os::unix::fs::symlink("../a.yaml", root.join("jobs/team/link.yaml")).unwrap();

    let tree = DirTree::new(root).unwrap();
    let errors = load_desired(&tree, "jobs").unwrap_err();
    let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expect = [
        ("jobs/team/b.yml", "`orders` is already used by jobs/a.yaml"),
        ("jobs/c.yaml", "`artifacts/none.jar` does not exist"),
        ("jobs/d.yaml", "is not UTF-8"),
        ("jobs/e.yaml", "over the limit of 262144 bytes"),
        ("jobs/f.yaml", "must be a .jar file"),
        ("jobs/g.yaml", "leaves the repository"),
        ("jobs/team/link.yaml", "is a symlink"),
    ];
    for (file, message) in expect {
        assert!(
            rendered
                .iter()
                .any(|e| e.starts_with(file) && e.contains(message)),
            "{file}: `{message}` not in {rendered:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{rendered:#?}");
}

#[test]
fn a_symlinked_jar_inside_the_repo_is_followed() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    write(root, "artifacts/v2/job.jar", b"PK v2");
    std::os::unix::fs::symlink("v2/job.jar", root.join("artifacts/current.jar")).unwrap();
    write(
        root,
        "jobs/a.yaml",
        spec_text("orders", "artifacts/current.jar").as_bytes(),
    );
    let desired = load_desired(&DirTree::new(root).unwrap(), "jobs").unwrap();
    let job = &desired.jobs["orders"];
    assert!(job.artifact_content.starts_with("sha256:"));
}

#[test]
fn a_missing_jobs_folder_means_no_jobs_for_the_agent_but_validate_refuses_it() {
    // git drops empty folders, so deleting the last spec deletes the folder: that is "no jobs".
    let repo = tempfile::tempdir().unwrap();
    let desired = load_desired(&DirTree::new(repo.path()).unwrap(), "jobs").unwrap();
    assert!(desired.jobs.is_empty());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(["validate", repo.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("the jobs folder `jobs` does not exist")
    );
}

#[test]
fn depends_on_targets_must_exist_and_form_no_cycle() {
    // orders → payments → ledger → orders is a cycle; audit depends on a job no spec has (as
    // after deleting `fraud` while audit still names it); refunds depends on orders, which is fine.
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    write(root, "artifacts/a.jar", b"PK");
    let spec = |id: &str, deps: &str| {
        format!(
            "{}depends_on: [{deps}]\nrollback: revision\n",
            spec_text(id, "artifacts/a.jar")
        )
    };
    write(
        root,
        "jobs/orders.yaml",
        spec("orders", "payments").as_bytes(),
    );
    write(
        root,
        "jobs/payments.yaml",
        spec("payments", "ledger").as_bytes(),
    );
    write(
        root,
        "jobs/ledger.yaml",
        spec("ledger", "orders").as_bytes(),
    );
    write(
        root,
        "jobs/team/audit.yaml",
        spec("audit", "orders, fraud").as_bytes(),
    );
    write(
        root,
        "jobs/refunds.yaml",
        spec("refunds", "orders").as_bytes(),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(["validate", root.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for expected in [
        "jobs/team/audit.yaml:4:22: `depends_on`: no spec of this revision has job_id `fraud` (a job cannot be deleted while others still depend on it)",
        "jobs/ledger.yaml:4:14: `depends_on`: dependency cycle: ledger → orders → payments → ledger",
    ] {
        assert!(stdout.contains(expected), "`{expected}` not in:\n{stdout}");
    }
    assert_eq!(stdout.matches("depends_on").count(), 2, "{stdout}");

    // Without the cycle and the unknown target, the same specs load, with their dependencies
    // and rollback scope in the canonical form (so a change to them is recorded).
    write(root, "jobs/ledger.yaml", spec("ledger", "").as_bytes());
    write(
        root,
        "jobs/team/audit.yaml",
        spec("audit", "orders").as_bytes(),
    );
    let desired = load_desired(&DirTree::new(root).unwrap(), "jobs").unwrap();
    let orders = &desired.jobs["orders"];
    let deps: Vec<&str> = orders
        .spec
        .depends_on
        .iter()
        .map(|d| d.job_id.as_str())
        .collect();
    assert_eq!(deps, ["payments"]);
    let canonical = orders.canonical_json();
    assert!(
        canonical.contains(r#""depends_on":["payments"]"#),
        "{canonical}"
    );
    assert!(
        canonical.contains(r#""rollback":"revision""#),
        "{canonical}"
    );
    assert!(
        !desired.jobs["ledger"]
            .canonical_json()
            .contains("depends_on")
    );
}
