//! Benchmark: does a long batch run history slow the agent down? 100 cron batch jobs on the fake
//! Flink; a no-op pass is timed with an empty `runs` table and again after 200,000 recorded runs,
//! and `history` is timed on that table. The agent runs as a child process (its own time and RSS).
//!
//! Run: `cargo build --release && cargo run --release --example bench_batch [JOBS] [RUNS]`

use flink_gitops::state::{RunRecord, RunStatus, StateStore};
use flink_gitops::testing::FakeFlink;

mod common;
use common::{agent_binary, fake_flink_config, git, signed_repo, timed_agent};

fn batch_spec(n: usize) -> String {
    format!(
        "job_id: report-{n}\njob_type: batch\nartifact_path: artifacts/job.jar\nbatch_config:\n  cron: \"0 2 * * *\"\n  timezone: Europe/Berlin\n  max_runs: 1000000\n"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let binary = agent_binary();
    let fake = FakeFlink::new();
    let address = fake.serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = signed_repo(dir.path(), 0);
    std::fs::create_dir_all(repo.join("jobs")).unwrap();
    for n in 0..jobs {
        std::fs::write(repo.join(format!("jobs/report-{n}.yaml")), batch_spec(n)).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "reports"]);
    let config = fake_flink_config(dir.path(), &repo, address, "");
    let config_arg = config.to_str().unwrap();
    let apply = ["apply", "-c", config_arg, "--output", "json"];

    let (code, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &apply));
    println!(
        "first apply, {jobs} batch jobs scheduled: exit {code}, {seconds:.3} s, peak RSS {rss:.1} MiB"
    );
    let (code, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &apply));
    println!("no-op apply, empty run history: exit {code}, {seconds:.3} s, peak RSS {rss:.1} MiB");

    {
        let store = StateStore::open_exclusive(&dir.path().join("state")).unwrap();
        let records = store.jobs().unwrap();
        store.connection().execute_batch("BEGIN").unwrap();
        for i in 0..runs {
            let row = &records[i % records.len()];
            let at = 1_700_000_000_000 + i as i64 * 60_000;
            store
                .insert_run(&RunRecord {
                    id: 0,
                    job_id: row.job_id.clone(),
                    flink_job_id: format!("{:032x}", i + 1),
                    commit_id: row.commit_id.clone(),
                    spec_commit: row.commit_id.clone(),
                    spec_hash: row.spec_hash.clone(),
                    jar_sha256: row.jar_sha256.clone().unwrap_or_default(),
                    trigger: "cron".into(),
                    scheduled_for: None,
                    status: RunStatus::Finished,
                    submitted_at_ms: at,
                    deadline_ms: None,
                    ended_at_ms: Some(at + 30_000),
                    flink_state: Some("FINISHED".into()),
                    root_cause: None,
                })
                .unwrap();
        }
        store.connection().execute_batch("COMMIT").unwrap();
    }
    let size = std::fs::metadata(dir.path().join("state/state.db"))
        .map(|m| m.len() as f64 / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    println!("recorded {runs} finished runs (state.db {size:.1} MiB)");
    for pass in 1..=2 {
        let (code, seconds, rss) = tokio::task::block_in_place(|| timed_agent(&binary, &apply));
        println!(
            "no-op apply #{pass} with {runs} runs recorded: exit {code}, {seconds:.3} s, peak RSS {rss:.1} MiB"
        );
    }
    let (code, seconds, rss) = tokio::task::block_in_place(|| {
        timed_agent(
            &binary,
            &[
                "history", "-c", config_arg, "--job", "report-7", "--output", "json",
            ],
        )
    });
    println!(
        "history of one job ({} runs): exit {code}, {seconds:.3} s, peak RSS {rss:.1} MiB",
        runs / jobs
    );
    let (code, seconds, rss) = tokio::task::block_in_place(|| {
        timed_agent(&binary, &["history", "-c", config_arg, "--output", "json"])
    });
    println!(
        "history of everything ({runs} runs): exit {code}, {seconds:.3} s, peak RSS {rss:.1} MiB"
    );
}
