//! Benchmark of reconcile passes with 1,000 jobs against the in-process fake Flink, running the real
//! `flink-gitops` binary as a child process (so its wall time and peak RSS are its own).
//!
//! Run: `cargo build --release && cargo run --release --example bench_reconcile [JOBS]`

use flink_gitops::testing::FakeFlink;

mod common;
use common::{agent_binary, fake_flink_config, git, signed_repo, spec, timed_agent};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let binary = agent_binary();
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = signed_repo(dir.path(), jobs);
    let config = fake_flink_config(
        dir.path(),
        &repo,
        address,
        "reconcile: { max_concurrency: 16, poll_interval: 100ms }\n",
    );
    let config_arg = config.to_str().unwrap();
    let apply = ["apply", "-c", config_arg, "--output", "json"];

    let (code, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &apply));
    println!(
        "first apply, {jobs} jobs created: exit {code}, {seconds:.2} s, peak RSS {rss:.1} MiB"
    );

    // For profiling by hand: keep the fake Flink and the state while you run the agent yourself.
    if let Some(seconds) = std::env::var("BENCH_HOLD_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        println!("holding {seconds} s: flink-gitops apply -c {config_arg}");
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    }

    for pass in 1..=3 {
        let before = fake.total_requests();
        let (code, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &apply));
        let calls = fake.total_requests() - before;
        println!(
            "no-op apply #{pass} ({jobs} jobs, head unchanged, all healthy): exit {code}, {seconds:.3} s, {calls} REST calls, peak RSS {rss:.1} MiB"
        );
    }

    // One plan is a few tens of milliseconds on a shared 2-core machine: five, each the first after
    // its own new commit (a real fetch, one spec not in the memo), give the median.
    let mut plans = Vec::new();
    let mut peak = 0.0f64;
    for round in 0..5u32 {
        std::fs::write(repo.join("jobs/team-7/job-7.yaml"), spec(7, 2 + round)).unwrap();
        git(&repo, &["commit", "-q", "-am", "scale job-7"]);
        let (code, seconds, rss) = tokio::task::block_in_place(|| {
            timed_agent(&binary, &["plan", "-c", config_arg, "--output", "json"])
        });
        assert_eq!(code, 0, "plan failed");
        plans.push(seconds);
        peak = peak.max(rss);
    }
    let mut sorted = plans.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "plan with one changed spec among {jobs}: median {:.3} s of {plans:.3?}, peak RSS {peak:.1} MiB",
        sorted[sorted.len() / 2]
    );
    let before = fake.total_requests();
    let (code, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &apply));
    println!(
        "apply of that change (savepoint upgrade of 1 job): exit {code}, {seconds:.3} s, {} REST calls, peak RSS {rss:.1} MiB",
        fake.total_requests() - before
    );
}
