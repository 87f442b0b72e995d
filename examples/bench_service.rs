//! Benchmark of `flink-gitops run` with 1,000 jobs on the in-process fake Flink: idle RSS and CPU per
//! minute, and commit-to-reconcile-start latency with a webhook and with polling.
//!
//! Run: `cargo build --release && cargo run --release --example bench_service [JOBS] [IDLE_SECONDS]`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flink_gitops::testing::FakeFlink;

mod common;
use common::{agent_binary, git, signed_repo, spec};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http(method: &str, url: &str, headers: &[String], body: &str) -> String {
    let mut command = Command::new("curl");
    command.args(["-s", "--max-time", "5", "-X", method]);
    for header in headers {
        command.args(["-H", header]);
    }
    if !body.is_empty() {
        command.args(["--data-binary", body]);
    }
    String::from_utf8_lossy(&command.arg(url).output().unwrap().stdout).into_owned()
}

fn status_head(port: u16) -> Option<String> {
    let body = http(
        "GET",
        &format!("http://127.0.0.1:{port}/api/v1/status"),
        &[],
        "",
    );
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    value["head"].as_str().map(str::to_string)
}

fn last_applied(port: u16) -> Option<String> {
    let body = http(
        "GET",
        &format!("http://127.0.0.1:{port}/api/v1/status"),
        &[],
        "",
    );
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    value["last_applied"].as_str().map(str::to_string)
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

fn proc_rss_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hmac(secret: &str, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let idle: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60);
    let binary = agent_binary();
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = signed_repo(dir.path(), jobs);
    std::fs::write(dir.path().join("secret"), "bench-secret").unwrap();

    let start = |poll: &str, state: &str| -> (Daemon, u16) {
        let port = free_port();
        let config = dir.path().join(format!("config-{state}.yaml"));
        std::fs::write(
            &config,
            format!(
                "repo: {{ url: {}, poll_interval: {poll}, watch: false }}\ntrust: {{ allowed_signers: allowed_signers, artifacts: optional }}\nflink: {{ url: http://{address}, savepoint_dir: file:///tmp/sp }}\nstate: {{ dir: {state} }}\nserver: {{ listen: 127.0.0.1:{port}, webhook_secret_file: secret }}\nreconcile: {{ interval: 1m, max_concurrency: 16, poll_interval: 100ms }}\n",
                repo.display()
            ),
        )
        .unwrap();
        let child = Command::new(&binary)
            .args(["run", "-c", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (Daemon(child), port)
    };

    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let (daemon, port) = start("30s", "state");
    let pid = daemon.0.id();
    let took = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(120), || {
            last_applied(port).as_deref() == Some(head.as_str())
        })
    });
    println!("service started and created {jobs} jobs in {took:.2?}");
    let cpu_before = proc_cpu_seconds(pid);
    let calls_before = fake.total_requests();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let cpu = proc_cpu_seconds(pid) - cpu_before;
    let calls = fake.total_requests() - calls_before;
    println!(
        "idle for {idle} s with {jobs} jobs (poll 30s, reconcile 1m): CPU {:.2} s per minute, {calls} REST calls, RSS {:.1} MiB (peak {:.1} MiB; anonymous {:.1} MiB, the rest is the binary's and libraries' pages)",
        cpu * 60.0 / idle as f64,
        proc_rss_mib(pid, "VmRSS:"),
        proc_rss_mib(pid, "VmHWM:"),
        proc_rss_mib(pid, "RssAnon:")
    );
    // For profiling by hand: the idle service stays as it is measured.
    if let Some(seconds) = std::env::var("BENCH_HOLD_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        println!("holding {seconds} s: the idle service is process {pid}");
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }

    let mut webhook = Vec::new();
    for round in 0..3 {
        std::fs::write(repo.join("jobs/team-7/job-7.yaml"), spec(7, 2 + round)).unwrap();
        git(&repo, &["commit", "-q", "-am", "change"]);
        let new_head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
        let body = r#"{"ref":"refs/heads/main"}"#;
        let started = Instant::now();
        http(
            "POST",
            &format!("http://127.0.0.1:{port}/webhook"),
            &[format!(
                "X-Hub-Signature-256: sha256={}",
                hmac("bench-secret", body)
            )],
            body,
        );
        tokio::task::block_in_place(|| {
            wait_until(Duration::from_secs(30), || {
                status_head(port).as_deref() == Some(new_head.as_str())
            })
        });
        webhook.push(started.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(daemon);

    // The same service started again on its own state: what a restart (an upgrade, a reboot)
    // leaves resident. Its first pass finds nothing to do; the idle time spans one more pass, after
    // which the memory the startup's status requests freed has gone back too.
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let (restarted, port) = start("30s", "state");
    let pid = restarted.0.id();
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(120), || {
            last_applied(port).as_deref() == Some(head.as_str())
        })
    });
    tokio::time::sleep(Duration::from_secs(idle)).await;
    println!(
        "restarted on that state, idle {} s after its first (no-op) pass: RSS {:.1} MiB (anonymous {:.1} MiB)",
        idle,
        proc_rss_mib(pid, "VmRSS:"),
        proc_rss_mib(pid, "RssAnon:")
    );
    drop(restarted);

    let (_polling, port) = start("5s", "state-poll");
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(120), || status_head(port).is_some())
    });
    let mut polling = Vec::new();
    for round in 0..3 {
        std::fs::write(repo.join("jobs/team-8/job-8.yaml"), spec(8, 2 + round)).unwrap();
        git(&repo, &["commit", "-q", "-am", "change"]);
        let new_head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
        let started = Instant::now();
        tokio::task::block_in_place(|| {
            wait_until(Duration::from_secs(30), || {
                status_head(port).as_deref() == Some(new_head.as_str())
            })
        });
        polling.push(started.elapsed());
    }
    let mean = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64;
    println!(
        "commit to reconcile start, webhook: {:?} (mean {:.3} s)",
        webhook,
        mean(&webhook)
    );
    println!(
        "commit to reconcile start, polling every 5s: {:?} (mean {:.3} s)",
        polling,
        mean(&polling)
    );
}
