//! How `plan` scales with the number of specs: a fresh agent (no records) planning N new jobs against
//! the in-process fake Flink, for several N. Linear growth keeps the time per spec flat.
//!
//! Run: `cargo build --release && cargo run --release --example bench_plan [N ...]` [--with-cluster] [--flat] (default 1000 2500 5000 10000)

use flink_gitops::testing::FakeFlink;

mod common;
use common::{agent_binary, fake_flink_config, git, signed_repo, timed_agent};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `--with-cluster`: also apply, then plan again with every job running and recorded.
    let with_cluster = std::env::args().any(|a| a == "--with-cluster");
    // `--flat`: every spec directly in `jobs/` instead of 20 team folders.
    let flat = std::env::args().any(|a| a == "--flat");
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 2500, 5000, 10000]
    } else {
        sizes
    };
    let binary = agent_binary();
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    for specs in sizes {
        let dir = tempfile::tempdir().unwrap();
        let repo = signed_repo(dir.path(), specs);
        if flat {
            for team in 0..20 {
                let folder = repo.join(format!("jobs/team-{team}"));
                for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                    std::fs::rename(entry.path(), repo.join("jobs").join(entry.file_name()))
                        .unwrap();
                }
                let _ = std::fs::remove_dir(folder);
            }
            git(&repo, &["add", "-A"]);
            git(&repo, &["commit", "-q", "-m", "one folder"]);
        }
        let config = fake_flink_config(dir.path(), &repo, address, "");
        let config_arg = config.to_str().unwrap();
        let plan = ["plan", "-c", config_arg, "--output", "json"];
        // The first run also fetches the repository into the agent's mirror; the second is the plan alone.
        let (_, first, _) = tokio::task::block_in_place(|| timed_agent(&binary, &plan));
        let (code, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &plan));
        println!(
            "plan of {specs} new jobs: exit {code}, first run (with fetch) {first:.3} s, again {seconds:.3} s ({:.1} µs per spec), peak RSS {rss:.1} MiB",
            seconds * 1e6 / specs as f64
        );
        if with_cluster {
            let apply = ["apply", "-c", config_arg, "--output", "json"];
            let (code, applied, _) = tokio::task::block_in_place(|| timed_agent(&binary, &apply));
            let (_, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &plan));
            println!(
                "  after apply (exit {code}, {applied:.1} s): plan with {specs} running jobs and records {seconds:.3} s ({:.1} µs per spec), peak RSS {rss:.1} MiB",
                seconds * 1e6 / specs as f64
            );
            fake.forget_jobs();
        }
    }
}
