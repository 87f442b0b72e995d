//! Configuration that cannot work, or that would leak a secret, is refused at load with exit 2 and
//! the field named (issue 11's findings on config values and secrets). No Flink needed.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A config whose repo exists; `flink` and `extra` are spliced in.
fn config(work: &Path, repo: &SpecRepo, flink: &str, extra: &str) -> std::path::PathBuf {
    std::fs::write(
        work.join("allowed_signers"),
        repo.signer.line("namespaces=\"git\""),
    )
    .unwrap();
    let text = format!(
        "repo:\n  url: {}\ntrust:\n  allowed_signers: allowed_signers\nflink:\n{flink}\nstate:\n  dir: state\n{extra}",
        repo.path().display()
    );
    let path = work.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary with a 20 s bound (a `run` that did not refuse would otherwise serve forever).
fn bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refused(config: &Path, command: &str, field: &str, never: &str) -> String {
    let (code, stderr) = bounded(&[command, "-c", config.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{command}: {stderr}");
    assert!(
        stderr.contains(&format!("`{field}`")),
        "{command}: {stderr}"
    );
    if !never.is_empty() {
        assert!(
            !stderr.contains(never),
            "{command} printed a secret: {stderr}"
        );
    }
    stderr
}

#[test]
fn credentials_in_urls_are_refused_and_never_printed() {
    let repo = SpecRepo::new();
    repo.write("jobs/.keep", "").commit("empty");
    let work = tempfile::tempdir().unwrap();
    let path = config(
        work.path(),
        &repo,
        "  url: http://admin:s3cr3t-pw@127.0.0.1:9\n  savepoint_dir: file:///tmp/sp",
        "",
    );
    refused(&path, "plan", "flink.url", "s3cr3t-pw");
    refused(&path, "run", "flink.url", "s3cr3t-pw");

    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("admin:s3cr3t-pw@", "")
        .replace(
            &format!("url: {}", repo.path().display()),
            "url: https://bot:ghp_t0ken@git.example.com/specs.git",
        );
    std::fs::write(&path, text).unwrap();
    refused(&path, "plan", "repo.url", "ghp_t0ken");
}

#[test]
fn values_that_cannot_work_are_refused_at_load() {
    let repo = SpecRepo::new();
    repo.write("jobs/.keep", "").commit("empty");
    let work = tempfile::tempdir().unwrap();
    let flink = "  url: http://127.0.0.1:9\n  savepoint_dir: file:///tmp/sp";
    let zero = config(
        work.path(),
        &repo,
        &format!("{flink}\n  request_timeout: 0s"),
        "",
    );
    let stderr = refused(&zero, "plan", "flink.request_timeout", "");
    assert!(stderr.contains("between 100ms and 1h"), "{stderr}");

    // Used to make `run` panic with an overflow (exit 101).
    let absurd = config(
        work.path(),
        &repo,
        flink,
        "reconcile:\n  interval: 500000000000y\n",
    );
    let stderr = refused(&absurd, "run", "reconcile.interval", "");
    assert!(stderr.contains("10 years"), "{stderr}");
}

#[test]
fn secret_files_must_exist_hold_something_and_not_be_readable_by_others() {
    let repo = SpecRepo::new();
    repo.write("jobs/.keep", "").commit("empty");
    let work = tempfile::tempdir().unwrap();
    let flink = "  url: http://127.0.0.1:9\n  savepoint_dir: file:///tmp/sp";

    let missing = config(
        work.path(),
        &repo,
        &format!("{flink}\n  auth: {{ bearer_token_file: /nonexistent/flink-token }}"),
        "",
    );
    let stderr = refused(&missing, "plan", "flink.auth.bearer_token_file", "");
    assert!(stderr.contains("/nonexistent/flink-token"), "{stderr}");

    // An empty webhook secret would make every HMAC check pass.
    let secret = work.path().join("webhook-secret");
    std::fs::write(&secret, "  \n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let empty = config(
        work.path(),
        &repo,
        flink,
        &format!(
            "server:\n  listen: 127.0.0.1:0\n  webhook_secret_file: {}\n",
            secret.display()
        ),
    );
    let stderr = refused(&empty, "run", "server.webhook_secret_file", "");
    assert!(stderr.contains("is empty"), "{stderr}");

    // A readable-by-all secret is accepted, with a warning naming the file.
    std::fs::write(&secret, "a-long-shared-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = bounded(&["plan", "-c", empty.to_str().unwrap()]);
    assert_eq!(
        code,
        Some(1),
        "the cluster is unreachable, the config is fine: {stderr}"
    );
    assert!(
        stderr.contains("readable by its group or by others") && stderr.contains("webhook-secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("a-long-shared-secret"), "{stderr}");

    // Each file is judged at start-up by the limit of the code that reads it later: a secret of
    // 100 KiB (over the 64 KiB its reader takes) is refused now, not at the first HMAC check.
    std::fs::write(&secret, "s".repeat(100 * 1024)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = refused(&empty, "run", "server.webhook_secret_file", "");
    assert!(
        stderr.contains("larger than the limit of 65536 bytes"),
        "{stderr}"
    );
}

#[test]
fn a_secrets_folder_holding_the_agents_own_credentials_is_refused() {
    let repo = SpecRepo::new();
    repo.write("jobs/.keep", "").commit("empty");
    let work = tempfile::tempdir().unwrap();
    let shared = work.path().join("creds");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("webhook-secret"), "s3cret-hook\n").unwrap();
    std::fs::set_permissions(
        shared.join("webhook-secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let path = config(
        work.path(),
        &repo,
        "  url: http://127.0.0.1:1",
        "server:\n  webhook_secret_file: creds/webhook-secret\nsecrets:\n  dir: creds\n",
    );
    let stderr = refused(&path, "plan", "secrets.dir", "s3cret-hook");
    assert!(
        stderr.contains("a spec could read the agent's own credential"),
        "{stderr}"
    );
    // A folder of job secrets alone is fine, and so is a runner JAR that exists.
    let jobs = work.path().join("job-secrets");
    std::fs::create_dir(&jobs).unwrap();
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("dir: creds", "dir: job-secrets"),
    )
    .unwrap();
    let (code, stderr) = bounded(&["plan", "-c", path.to_str().unwrap()]);
    assert_ne!(code, Some(2), "{stderr}");
    let missing_runner =
        std::fs::read_to_string(&path).unwrap() + "runner:\n  jar: nowhere/runner.jar\n";
    std::fs::write(&path, missing_runner).unwrap();
    let stderr = refused(&path, "plan", "runner.jar", "");
    assert!(
        stderr.contains("build it with scripts/build-runner"),
        "{stderr}"
    );
}

#[test]
fn alert_targets_that_cannot_work_are_refused_at_load() {
    let repo = SpecRepo::new();
    repo.write("jobs/.keep", "").commit("empty");
    let work = tempfile::tempdir().unwrap();
    for (notify, reason) in [
        (
            "  - name: ops\n    webhook: https://hooks.example.com/x\n",
            "needs `secret_file`",
        ),
        (
            "  - name: ops\n    webhook: http://hooks.example.com/x\n    secret_file: key\n",
            "must be https://",
        ),
        (
            "  - name: ops\n    webhook: https://hooks.example.com/x\n    secret_file: key\n    events: [rolled_back, exploded]\n",
            "unknown event `exploded`",
        ),
    ] {
        std::fs::write(work.path().join("key"), "k").unwrap();
        std::fs::set_permissions(
            work.path().join("key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let path = config(
            work.path(),
            &repo,
            "  url: http://127.0.0.1:1",
            &format!("notify:\n{notify}"),
        );
        let stderr = refused(&path, "plan", "notify[0]", "");
        assert!(stderr.contains(reason), "{stderr}");
    }
}
