//! Shared test fixtures: real git repositories, the shared real Flink cluster, the binary.
#![allow(dead_code)]

pub mod daemon;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Environment variables set by `scripts/test` for the real-Flink tests.
pub const FLINK_URL_VAR: &str = "FLINK_GITOPS_TEST_FLINK_URL";
/// Folder holding the example JARs built by `example-repo/build.sh`.
pub const JARS_VAR: &str = "FLINK_GITOPS_TEST_JARS";
/// The local cluster's working folder (savepoints, checkpoints).
pub const FLINK_DIR_VAR: &str = "FLINK_GITOPS_TEST_FLINK_DIR";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the real-Flink tests need the cluster and JARs that `scripts/test` \
             installs, builds and starts. Run the suite with `scripts/test` (it never skips these tests)."
        )
    })
}

/// The shared real Flink cluster of this test run.
pub fn flink_url() -> String {
    required_env(FLINK_URL_VAR)
}

/// A JAR built from `example-repo/jobs-src` (`counter-v1.jar`, ...).
pub fn example_jar(name: &str) -> PathBuf {
    let path = PathBuf::from(required_env(JARS_VAR)).join(name);
    assert!(
        path.is_file(),
        "{} was not built by example-repo/build.sh",
        path.display()
    );
    path
}

/// The cluster's working folder.
pub fn flink_dir() -> PathBuf {
    PathBuf::from(required_env(FLINK_DIR_VAR))
}

/// Runs a command and returns its stdout, panicking with stderr on failure.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An ed25519 key made by `ssh-keygen`, with the principal it stands for.
pub struct Signer {
    _dir: tempfile::TempDir,
    /// Private key file.
    pub key: PathBuf,
    /// e.g. `alice@example.com`.
    pub principal: String,
    /// `ssh-ed25519 AAAA…`.
    pub public: String,
}

impl Signer {
    /// A fresh key for `principal`.
    pub fn new(principal: &str) -> Signer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", principal, "-f"])
            .arg(&key));
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let public = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        Signer {
            _dir: dir,
            key,
            principal: principal.to_string(),
            public,
        }
    }

    /// An allowed_signers line for this key with the given options (at least `namespaces=`).
    pub fn line(&self, options: &str) -> String {
        format!("{} {options} {}\n", self.principal, self.public)
    }

    /// Signs a file with `ssh-keygen -Y sign`; returns the armored signature.
    pub fn sign(&self, file: &Path, namespace: &str, extra: &[&str]) -> Vec<u8> {
        run(Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
            .arg(&self.key)
            .args(extra)
            .arg(file));
        let sig = PathBuf::from(format!("{}.sig", file.display()));
        let armored = std::fs::read(&sig).unwrap();
        std::fs::remove_file(&sig).unwrap();
        armored
    }
}

/// A real git repository in a temporary folder, driven through the `git` command.
pub struct SpecRepo {
    dir: tempfile::TempDir,
    /// The key commits are signed with (`git commit -S`, gpg.format=ssh).
    pub signer: Signer,
}

impl SpecRepo {
    /// An empty repository on branch `main`; commits are SSH-signed by a fresh key.
    pub fn new() -> SpecRepo {
        Self::with_signer(Signer::new("author@example.com"))
    }

    /// An empty repository whose commits `signer` signs.
    pub fn with_signer(signer: Signer) -> SpecRepo {
        let dir = tempfile::tempdir().unwrap();
        let repo = SpecRepo { dir, signer };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.name", "Test Author"]);
        repo.git(&["config", "user.email", "author@example.com"]);
        repo.git(&["config", "gpg.format", "ssh"]);
        repo.git(&[
            "config",
            "user.signingkey",
            repo.signer.key.to_str().unwrap(),
        ]);
        repo.git(&["config", "commit.gpgsign", "true"]);
        repo
    }

    /// Signs `path` (a JAR in the work tree) as an artifact, writing `path.sig` beside it.
    pub fn sign_artifact(&self, path: &str) -> &Self {
        let armored = self
            .signer
            .sign(&self.path().join(path), "flink-gitops-artifact", &[]);
        self.write(&format!("{path}.sig"), armored)
    }

    /// The work tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the repository.
    pub fn git(&self, args: &[&str]) -> String {
        run(Command::new("git").arg("-C").arg(self.path()).args(args))
    }

    /// Writes a file (creating folders).
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        self
    }

    /// Removes a file.
    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.path().join(path)).unwrap();
        self
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }
}

/// A minimal stream spec.
pub fn stream_spec(job_id: &str, jar: &str, parallelism: u32) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\nartifact_path: {jar}\ndeployment:\n  parallelism: {parallelism}\n  checkpoint_interval: 2000\n"
    )
}

/// Writes an agent config for `repo` (trusting `signer`, JAR signatures optional) and returns its path.
pub fn write_config(work: &Path, repo: &SpecRepo, flink_url: &str) -> PathBuf {
    write_config_with(
        work,
        repo.path(),
        flink_url,
        &repo.signer.line("namespaces=\"git,flink-gitops-artifact\""),
        "artifacts: optional",
    )
}

/// Writes an agent config with an explicit allowed_signers text and extra `trust:` lines.
pub fn write_config_with(
    work: &Path,
    repo: &Path,
    flink_url: &str,
    allowed_signers: &str,
    trust_extra: &str,
) -> PathBuf {
    std::fs::write(work.join("allowed_signers"), allowed_signers).unwrap();
    let trust_extra = trust_extra
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>();
    let config = format!(
        "repo:\n  url: {}\n  branch: main\n  jobs_dir: jobs\n  poll_interval: 5s\ntrust:\n  allowed_signers: allowed_signers\n{trust_extra}flink:\n  url: {flink_url}\n  savepoint_dir: file://{}/savepoints\n  request_timeout: 5s\nstate:\n  dir: state\n",
        repo.display(),
        work.display()
    );
    let path = work.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Runs the `flink-gitops` binary.
pub fn flink_gitops(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(args)
        .env_remove("FLINK_GITOPS_CONFIG")
        .output()
        .expect("cannot run flink-gitops")
}

/// Runs the binary, expects `code`, and parses stdout as JSON.
pub fn flink_gitops_json(args: &[&str], code: i32) -> serde_json::Value {
    let output = flink_gitops(args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(code),
        "flink-gitops {args:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Records every job of `commit` as applied (running as `flink_job_of(job_id)`), as `apply` does.
pub fn record_applied(config_path: &Path, commit: &str, flink_job_of: impl Fn(&str) -> String) {
    use flink_gitops::config::Config;
    use flink_gitops::git::GitSource;
    use flink_gitops::spec::{GitTree, load_desired};
    use flink_gitops::state::{JobRecord, StateStore};

    let config = Config::load(config_path).unwrap();
    let source = GitSource::open(&config.state.dir.join("repo.git"), &config.repo).unwrap();
    source.fetch().unwrap();
    let oid = git2::Oid::from_str(commit).unwrap();
    let desired = load_desired(&GitTree::new(source.repo(), oid).unwrap(), "jobs").unwrap();
    let store = StateStore::open_exclusive(&config.state.dir).unwrap();
    for (id, job) in &desired.jobs {
        store
            .put_job(&JobRecord {
                job_id: id.clone(),
                spec_json: job.canonical_json(),
                spec_hash: job.spec_hash(),
                commit_id: commit.to_string(),
                flink_job_id: Some(flink_job_of(id)),
                generation: 1,
                jar_id: None,
                jar_sha256: None,
                last_savepoint: Some("file:/tmp/savepoint-1".into()),
                status: "running".into(),
                ..JobRecord::default()
            })
            .unwrap();
    }
}

/// A name no other test of this run uses (job ids can never be reused on a cluster).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// GET a Flink REST path of the shared cluster as JSON (via curl, usable from sync tests and `Drop`).
pub fn flink_json(path: &str) -> serde_json::Value {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("{}{path}", flink_url()))
        .output()
        .expect("curl");
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

/// The savepoint or checkpoint a job of the shared cluster was started from.
pub fn restored_from(jid: &str) -> Option<String> {
    flink_json(&format!("/jobs/{jid}/checkpoints"))["latest"]["restored"]["external_path"]
        .as_str()
        .map(str::to_string)
}

/// `(time its _metadata was written, folder)` of every complete savepoint or checkpoint folder
/// directly under `dir` whose name starts with `name_prefix`.
pub fn complete_folders(dir: &Path, name_prefix: &str) -> Vec<(std::time::SystemTime, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(name_prefix))
        .filter_map(|e| {
            let modified = std::fs::metadata(e.path().join("_metadata"))
                .ok()?
                .modified()
                .ok()?;
            Some((modified, e.path()))
        })
        .collect()
}

/// Asks `condition` every 250 ms until it holds; panics naming `what` when `timeout` passes first.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Flink has completed a checkpoint of job `jid` of the shared cluster.
pub fn has_completed_checkpoint(jid: &str) -> bool {
    flink_json(&format!("/jobs/{jid}/checkpoints"))["latest"]["completed"].is_object()
}

/// Every task of job `jid` runs: a job is RUNNING before its tasks are, and a savepoint needs them.
pub fn all_tasks_running(jid: &str) -> bool {
    flink_json(&format!("/jobs/{jid}"))["vertices"]
        .as_array()
        .is_some_and(|v| !v.is_empty() && v.iter().all(|v| v["status"] == "RUNNING"))
}

/// Records of job `jid` have crossed from one task to the next (into a keyed operator, its state
/// now holds something). Flink's figures lag by up to its metric fetcher's interval (10 s).
pub fn records_flowed(jid: &str) -> bool {
    flink_json(&format!("/jobs/{jid}"))["vertices"]
        .as_array()
        .is_some_and(|v| {
            v.iter()
                .any(|v| v["metrics"]["read-records"].as_u64().is_some_and(|n| n > 0))
        })
}

/// Cancels a job on the shared cluster.
pub fn cancel_flink_job(jid: &str) {
    let _ = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "PATCH"])
        .arg(format!("{}/jobs/{jid}?mode=cancel", flink_url()))
        .output();
}

/// Jobs on the cluster whose id starts with `prefix`, with their state.
pub fn cluster_jobs_with_prefix(prefix: &str) -> Vec<(String, String)> {
    flink_json("/jobs/overview")["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|j| {
            Some((
                j["jid"].as_str()?.to_string(),
                j["state"].as_str()?.to_string(),
            ))
        })
        .filter(|(jid, _)| jid.starts_with(prefix))
        .collect()
}

/// Cancels every still-running job of the given spec job ids when dropped, also when a test fails.
pub struct CancelOnDrop(pub Vec<String>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        for job_id in &self.0 {
            for (jid, state) in
                cluster_jobs_with_prefix(&flink_gitops::plan::flink_job_prefix(job_id))
            {
                if matches!(
                    state.as_str(),
                    "RUNNING" | "CREATED" | "INITIALIZING" | "RESTARTING"
                ) {
                    cancel_flink_job(&jid);
                }
            }
        }
    }
}

/// A config for reconcile tests: fast health gates and polling, JAR signatures optional.
pub fn write_apply_config(work: &Path, repo: &SpecRepo) -> PathBuf {
    let path = write_config(work, repo, &flink_url());
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace(
        &format!("savepoint_dir: file://{}/savepoints", work.display()),
        &format!(
            "savepoint_dir: file://{}/savepoints",
            flink_dir().join("savepoints").display()
        ),
    );
    text.push_str("reconcile:\n  poll_interval: 300ms\n  savepoint_timeout: 60s\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// A stream spec with a fast health gate, for reconcile tests.
pub fn counter_spec(job_id: &str, jar: &str, extra: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\nartifact_path: {jar}\ndeployment:\n  parallelism: 1\n  checkpoint_interval: 1000\n  restart_strategy: fixed-delay\n  max_restart_attempts: 2\n  restart_delay: 500\nargs: [\"--name\", \"{job_id}\", \"--rate\", \"20\"]\nhealth:\n  stable_for: 2s\n  max_restarts: 0\n  timeout: 60s\n{extra}"
    )
}

/// Copies the example JARs into a spec repo's `artifacts/`.
pub fn add_example_jars(repo: &SpecRepo) {
    for jar in [
        "counter-v1.jar",
        "counter-v2.jar",
        "counter-broken.jar",
        "batch-report.jar",
    ] {
        repo.write(
            &format!("artifacts/{jar}"),
            std::fs::read(example_jar(jar)).unwrap(),
        );
    }
}

/// Runs `apply --output json`; returns the exit code and the report.
pub fn apply(config: &Path) -> (Option<i32>, serde_json::Value) {
    let output = flink_gitops(&["apply", "-c", config.to_str().unwrap(), "--output", "json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "apply printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), report)
}

/// The report entry of one job.
pub fn outcome_of<'a>(report: &'a serde_json::Value, job_id: &str) -> &'a serde_json::Value {
    report["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {report}"))
        .iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| panic!("{job_id} not in {report}"))
}

/// The instances of a spec's job that are alive on the cluster.
pub fn running_instances(job_id: &str) -> Vec<String> {
    cluster_jobs_with_prefix(&flink_gitops::plan::flink_job_prefix(job_id))
        .into_iter()
        .filter(|(_, state)| {
            matches!(
                state.as_str(),
                "RUNNING" | "CREATED" | "INITIALIZING" | "RESTARTING"
            )
        })
        .map(|(jid, _)| jid)
        .collect()
}

/// Exactly one alive instance (waiting out the ~3 s REST cache); returns its Flink job id.
pub fn one_running(job_id: &str) -> String {
    for _ in 0..20 {
        let running = running_instances(job_id);
        if running.len() == 1 {
            return running[0].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    panic!(
        "expected exactly one running instance of {job_id}, found {:?}",
        running_instances(job_id)
    );
}

/// No alive instance (waiting out the REST cache).
pub fn none_running(job_id: &str) {
    for _ in 0..20 {
        if running_instances(job_id).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    panic!(
        "expected no running instance of {job_id}, found {:?}",
        running_instances(job_id)
    );
}

/// One job's spec committed to a fresh signed repo that holds the example JARs, with an apply config
/// beside it. The job's Flink jobs are cancelled when the fixture is dropped, also when a test fails.
pub struct JobFixture {
    _cleanup: CancelOnDrop,
    /// The spec's `job_id`.
    pub job: String,
    /// `jobs/<job>.yaml`.
    pub spec_path: String,
    /// The spec repository.
    pub repo: SpecRepo,
    /// The commit that added the spec.
    pub commit: String,
    /// Holds the config and the agent's state.
    pub work: tempfile::TempDir,
    /// The agent's config (see [`write_apply_config`]).
    pub config: PathBuf,
}

impl JobFixture {
    /// A job named after `prefix` whose spec is `spec(job_id)`, committed with `message`.
    pub fn new(prefix: &str, spec: impl FnOnce(&str) -> String, message: &str) -> JobFixture {
        let job = unique(prefix);
        let cleanup = CancelOnDrop(vec![job.clone()]);
        let repo = SpecRepo::new();
        add_example_jars(&repo);
        let spec_path = format!("jobs/{job}.yaml");
        repo.write(&spec_path, spec(&job));
        let commit = repo.commit(message);
        let work = tempfile::tempdir().unwrap();
        let config = write_apply_config(work.path(), &repo);
        JobFixture {
            _cleanup: cleanup,
            job,
            spec_path,
            repo,
            commit,
            work,
            config,
        }
    }
}

/// Runs `apply` with `FLINK_GITOPS_FAILPOINT=failpoint` and checks that the failpoint killed it.
pub fn apply_killed_at(config: &Path, failpoint: &str) {
    let killed = Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(["apply", "-c", config.to_str().unwrap(), "--output", "json"])
        .env("FLINK_GITOPS_FAILPOINT", failpoint)
        .output()
        .expect("cannot run flink-gitops");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9),
        "{failpoint}: the agent was not killed: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
}

/// Adds the runner JAR that `scripts/test` builds (`flink-gitops-runner.jar`) to an agent config,
/// for SQL and Python specs.
pub fn add_runner(config: &Path) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "runner:\n  jar: {}\n",
        example_jar("flink-gitops-runner.jar").display()
    ));
    std::fs::write(config, text).unwrap();
}

/// The DDL the SQL tests share: clicks from datagen, a blackhole sink.
pub const CLICKS_SQL: &str = "-- the clicks every version reads\nSET 'pipeline.name' = 'clicks per user';\nCREATE TABLE clicks (user_id BIGINT, url STRING) WITH (\n  'connector' = 'datagen',\n  'rows-per-second' = '20',\n  'fields.user_id.min' = '1',\n  'fields.user_id.max' = '5'\n);\nCREATE TABLE counts (user_id BIGINT, clicks BIGINT) WITH ('connector' = 'blackhole');\n";

/// Clicks per user: a stateful aggregate.
pub const COUNT_SQL_V1: &str =
    "INSERT INTO counts\nSELECT user_id, COUNT(*) AS clicks\nFROM clicks\nGROUP BY user_id;\n";

/// A filter after the aggregate: the plan's operators stay the same, so the state restores.
pub const COUNT_SQL_V2: &str = "INSERT INTO counts\nSELECT user_id, COUNT(*) AS clicks\nFROM clicks\nGROUP BY user_id\nHAVING COUNT(*) > 0;\n";

/// A stream spec running `files` in order, with a fast health gate like [`counter_spec`].
pub fn sql_spec(job_id: &str, files: &[&str], extra: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\nsql: [{}]\ndeployment:\n  parallelism: 1\n  checkpoint_interval: 1000\n  restart_strategy: fixed-delay\n  max_restart_attempts: 2\n  restart_delay: 500\nhealth:\n  stable_for: 2s\n  max_restarts: 0\n  timeout: 60s\n{extra}",
        files.join(", ")
    )
}

/// The report entry of `job_id`, checked to have done `action` with `outcome`.
pub fn expect(
    report: &serde_json::Value,
    job_id: &str,
    action: &str,
    outcome: &str,
) -> serde_json::Value {
    let entry = outcome_of(report, job_id).clone();
    assert_eq!(
        (entry["action"].as_str(), entry["outcome"].as_str()),
        (Some(action), Some(outcome)),
        "{report:#}"
    );
    entry
}

/// `status --output json`'s row of `job_id`.
pub fn status_row(config: &Path, job_id: &str) -> serde_json::Value {
    let status = flink_gitops_json(
        &["status", "-c", config.to_str().unwrap(), "--output", "json"],
        0,
    );
    status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| panic!("{job_id} not in {status:#}"))
        .clone()
}

/// The audit log of the agent whose state is in `work/state`.
pub fn audit_log(work: &Path) -> Vec<flink_gitops::state::AuditEntry> {
    flink_gitops::state::StateStore::open_read_only(&work.join("state"))
        .unwrap()
        .expect("no state database")
        .audit_log()
        .unwrap()
}

/// `(job_id, action)` of each entry of a plan's or review's `jobs` array, in order.
pub fn job_actions(jobs: &serde_json::Value) -> Vec<(String, String)> {
    jobs.as_array()
        .expect("a jobs array")
        .iter()
        .map(|j| {
            (
                j["job_id"].as_str().unwrap().to_string(),
                j["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
