//! Shared set-up of the benchmarks: a signed spec repository with many jobs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs a command, panicking with its stderr on failure.
pub fn run(command: &mut Command) -> String {
    let output = command.output().expect("spawn");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs git in `repo`.
pub fn git(repo: &Path, args: &[&str]) -> String {
    run(Command::new("git").arg("-C").arg(repo).args(args))
}

/// A stream spec with an immediate health gate.
pub fn spec(n: usize, parallelism: u32) -> String {
    format!(
        "job_id: job-{n}\njob_type: stream\nartifact_path: artifacts/job.jar\ndeployment:\n  parallelism: {parallelism}\n  checkpoint_interval: 1000\nhealth:\n  stable_for: 0s\n  timeout: 10s\n"
    )
}

/// The release binary beside the running example.
pub fn agent_binary() -> PathBuf {
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("flink-gitops"))
        .unwrap();
    assert!(
        binary.exists(),
        "build the agent first: cargo build --release"
    );
    binary
}

/// Makes `dir/repo` with `jobs` specs in one SSH-signed commit and `dir/allowed_signers` trusting its key.
pub fn signed_repo(dir: &Path, jobs: usize) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("artifacts")).unwrap();
    let key = dir.join("key");
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "bench@example.com",
            "-f",
        ])
        .arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let public: Vec<&str> = public.split_whitespace().collect();
    std::fs::write(
        dir.join("allowed_signers"),
        format!(
            "bench@example.com namespaces=\"git,flink-gitops-artifact\" {} {}\n",
            public[0], public[1]
        ),
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for (k, v) in [
        ("user.name", "Bench"),
        ("user.email", "bench@example.com"),
        ("gpg.format", "ssh"),
        ("commit.gpgsign", "true"),
    ] {
        git(&repo, &["config", k, v]);
    }
    git(&repo, &["config", "user.signingkey", key.to_str().unwrap()]);
    std::fs::write(repo.join("artifacts/job.jar"), b"PK\x03\x04 bench").unwrap();
    for n in 0..jobs {
        let folder = repo.join(format!("jobs/team-{}", n % 20));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(format!("job-{n}.yaml")), spec(n, 1)).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "jobs"]);
    repo
}

/// Runs the agent under `/usr/bin/time`; returns (exit code, seconds, peak RSS MiB).
pub fn timed_agent(binary: &Path, args: &[&str]) -> (i32, f64, f64) {
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(binary)
        .args(args)
        .output()
        .expect("/usr/bin/time");
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let rss_kib: f64 = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0.0);
    (
        output.status.code().unwrap_or(-1),
        seconds,
        rss_kib / 1024.0,
    )
}

/// Writes `dir/config.yaml` for an agent on `repo` and the fake Flink at `address`, plus `extra` lines.
pub fn fake_flink_config(
    dir: &Path,
    repo: &Path,
    address: std::net::SocketAddr,
    extra: &str,
) -> PathBuf {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "repo: {{ url: {} }}\ntrust: {{ allowed_signers: allowed_signers, artifacts: optional }}\nflink: {{ url: http://{address}, savepoint_dir: file:///tmp/sp }}\nstate: {{ dir: state }}\n{extra}",
            repo.display()
        ),
    )
    .unwrap();
    config
}

/// This process's peak resident set so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
