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

/// Runs the agent; returns (exit code, seconds, peak RSS MiB). The time is the agent's own, from
/// its start to its exit: the peak RSS comes from `wait4`, so no `/usr/bin/time` is started and
/// timed with it (that added about 0.8 ms to each figure).
pub fn timed_agent(binary: &Path, args: &[&str]) -> (i32, f64, f64) {
    use std::io::Read;
    let started = Instant::now();
    // Reaped by `wait4` below, which also gives its peak RSS.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(binary)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    // Read while it runs: a plan over 1,000 jobs writes more than a pipe holds.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = pipe.read_to_end(&mut sink);
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the child is ours and not yet waited for; both pointers are valid.
    let waited = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(waited, child.id() as libc::pid_t, "wait4");
    out.join().unwrap();
    err.join().unwrap();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, seconds, usage.ru_maxrss as f64 / 1024.0)
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
