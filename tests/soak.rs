//! Randomized crash soak against the real Flink cluster: `apply` is killed with SIGKILL at a moment
//! drawn uniformly over the whole duration of each operation (create, savepoint upgrade, failed
//! upgrade with its rollback, a fixing upgrade, suspend, resume, delete, a batch run), then `apply`
//! runs again until the operation settles. After every kill:
//!
//! - it settles within 3 passes;
//! - there is never a second instance of a job (a sampler watches the cluster the whole time);
//! - a stateful instance restored the newest restorable state (the newest `_metadata` among the
//!   job's savepoints and its predecessor's retained checkpoints), and none started empty;
//! - every audit intent has an outcome.
//!
//! `FLINK_GITOPS_SOAK_KILLS` sets the number of kills (default 20, the suite's short variant);
//! `FLINK_GITOPS_SOAK_SEED` replays a run (the seed is printed at the start).
#![cfg(feature = "real-flink")]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flink_gitops::plan::{flink_job_prefix, is_alive};
use flink_gitops::reconcile::restore::normalize as normalized;
use flink_gitops::state::StateStore;
use serde_json::Value;
use support::*;

/// splitmix64: small, seedable, good enough to spread kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, upper)`.
    fn below(&mut self, upper: Duration) -> Duration {
        let micros = upper.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % micros)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Create,
    Upgrade,
    BrokenUpgrade,
    FixingUpgrade,
    Suspend,
    Resume,
    Delete,
    BatchRun,
}

const CYCLE: [Op; 8] = [
    Op::Create,
    Op::Upgrade,
    Op::BrokenUpgrade,
    Op::FixingUpgrade,
    Op::Suspend,
    Op::Resume,
    Op::Delete,
    Op::BatchRun,
];

fn stream_spec(job: &str, jar: &str, suspended: bool) -> String {
    let spec = counter_spec(job, &format!("artifacts/{jar}"), "")
        .replace("checkpoint_interval: 1000", "checkpoint_interval: 500")
        .replace("stable_for: 2s", "stable_for: 1s");
    if suspended {
        format!("{spec}state: suspended\n")
    } else {
        spec
    }
}

fn batch_spec(job: &str, revision: usize) -> String {
    format!(
        "job_id: {job}\njob_type: batch\nartifact_path: artifacts/batch-report.jar\ndeployment:\n  parallelism: 1\nargs: [\"--name\", \"{job}\", \"--records\", \"{}\"]\nbatch_config:\n  ttl_seconds: 120\n",
        200 + revision
    )
}

/// Per job, the most live instances (id, state) seen in one sample.
type Worst = Arc<Mutex<BTreeMap<String, Vec<(String, String)>>>>;

/// Watches the cluster for a second live instance of any of the jobs, the whole time.
struct Sampler {
    stop: Arc<AtomicBool>,
    worst: Worst,
    samples: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(jobs: Vec<String>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let worst: Worst = Arc::default();
        let samples = Arc::new(Mutex::new(0u64));
        let thread = {
            let (stop, worst, samples) = (stop.clone(), worst.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let overview = flink_json("/jobs/overview");
                    if let Some(all) = overview["jobs"].as_array() {
                        *samples.lock().unwrap() += 1;
                        for job in &jobs {
                            let prefix = flink_job_prefix(job);
                            let live: Vec<(String, String)> = all
                                .iter()
                                .filter_map(|j| {
                                    Some((
                                        j["jid"].as_str()?.to_string(),
                                        j["state"].as_str()?.to_string(),
                                    ))
                                })
                                .filter(|(jid, state)| {
                                    jid.starts_with(prefix.as_str()) && is_alive(state)
                                })
                                .collect();
                            let mut worst = worst.lock().unwrap();
                            let entry = worst.entry(job.clone()).or_default();
                            if live.len() > entry.len() {
                                *entry = live;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler {
            stop,
            worst,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (BTreeMap<String, Vec<(String, String)>>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let worst = self.worst.lock().unwrap().clone();
        let samples = *self.samples.lock().unwrap();
        (worst, samples)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The newest restorable state of a job whose savepoints go to `savepoint_dir` and whose
/// previous instance was `predecessor`.
fn newest_restorable(savepoint_dir: &str, predecessor: Option<&str>) -> Option<String> {
    let mut found = complete_folders(Path::new(&normalized(savepoint_dir)), "savepoint-");
    if let Some(jid) = predecessor {
        found.extend(complete_folders(
            &flink_dir().join("checkpoints").join(jid),
            "chk-",
        ));
    }
    found
        .into_iter()
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path.display().to_string())
}

/// Runs `apply` and SIGKILLs it after `after`; returns whether it was still running then.
fn apply_killed_after(config: &Path, after: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(["apply", "-c", config.to_str().unwrap(), "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run flink-gitops");
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5).min(after));
    }
    let alive = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    alive
}

fn job_outcome(report: &Value, job: &str) -> String {
    report["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["job_id"] == job))
        .and_then(|j| j["outcome"].as_str())
        .unwrap_or("-")
        .to_string()
}

fn settled(op: Op, code: Option<i32>, report: &Value, stream: &str) -> bool {
    match op {
        // The broken spec ends rolled back (or, when the rollback finished before the kill,
        // blocked on it while the last good spec runs).
        Op::BrokenUpgrade => matches!(
            job_outcome(report, stream).as_str(),
            "rolled_back" | "blocked"
        ),
        _ => code == Some(0),
    }
}

#[test]
fn randomized_sigkills_never_leave_a_job_down_or_doubled() {
    let kills_wanted: usize = std::env::var("FLINK_GITOPS_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("FLINK_GITOPS_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "soak: seed {seed} (replay with FLINK_GITOPS_SOAK_SEED={seed}), {kills_wanted} kills"
    );
    let mut rng = Rng(seed);

    let stream = unique("soak");
    let batch = unique("soakb");
    let _cleanup = CancelOnDrop(vec![stream.clone(), batch.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    let stream_path = format!("jobs/{stream}.yaml");
    let batch_path = format!("jobs/{batch}.yaml");
    repo.write(&batch_path, batch_spec(&batch, 0));
    repo.commit("a batch job");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("  retry_base: 500ms\n  retry_max: 2s\n");
    std::fs::write(&config, text).unwrap();
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");

    let sampler = Sampler::start(vec![stream.clone(), batch.clone()]);
    let mut durations: BTreeMap<Op, Duration> = BTreeMap::new();
    let mut kills = 0usize;
    let mut killed_per_op: BTreeMap<Op, usize> = BTreeMap::new();
    let mut max_passes = 0usize;
    let mut batch_revision = 0usize;
    let mut cycle = 0usize;
    while kills < kills_wanted {
        for op in CYCLE {
            let before = running_instances(&stream);
            let predecessor = before.first().cloned();
            let batch_jobs_before = cluster_jobs_with_prefix(&flink_job_prefix(&batch)).len();
            match op {
                Op::Create | Op::Resume => {
                    repo.write(&stream_path, stream_spec(&stream, "counter-v1.jar", false));
                }
                Op::Upgrade => {
                    repo.write(&stream_path, stream_spec(&stream, "counter-v2.jar", false));
                }
                Op::BrokenUpgrade => {
                    repo.write(
                        &stream_path,
                        stream_spec(&stream, "counter-broken.jar", false),
                    );
                }
                Op::FixingUpgrade => {
                    repo.write(&stream_path, stream_spec(&stream, "counter-v1.jar", false));
                }
                Op::Suspend => {
                    repo.write(&stream_path, stream_spec(&stream, "counter-v1.jar", true));
                }
                Op::Delete => {
                    repo.remove(&stream_path);
                }
                Op::BatchRun => {
                    batch_revision += 1;
                    repo.write(&batch_path, batch_spec(&batch, batch_revision));
                }
            }
            repo.commit(&format!("cycle {cycle}: {op:?}"));

            let calibrating = cycle == 0;
            let context = format!("seed {seed}, cycle {cycle}, {op:?}");
            let mut kill_note = String::from("not killed (calibration)");
            if calibrating {
                let started = Instant::now();
                let (code, report) = apply(&config);
                durations.insert(op, started.elapsed());
                assert!(settled(op, code, &report, &stream), "{context}: {report:#}");
            } else if kills < kills_wanted {
                let whole = durations[&op];
                let at = rng.below(whole);
                let was_running = apply_killed_after(&config, at);
                kills += 1;
                *killed_per_op.entry(op).or_default() += 1;
                kill_note = format!(
                    "killed at {:.2} s of {:.2} s{}",
                    at.as_secs_f64(),
                    whole.as_secs_f64(),
                    if was_running {
                        ""
                    } else {
                        " (it had already exited)"
                    }
                );
            }
            let mut passes = 0;
            loop {
                passes += 1;
                let (code, report) = apply(&config);
                if settled(op, code, &report, &stream) {
                    break;
                }
                assert!(
                    passes < 3,
                    "{context} ({kill_note}): not settled after {passes} passes: {report:#}"
                );
                // A pass that had to wait (backoff) is followed after the wait, as the service does.
                std::thread::sleep(Duration::from_millis(600));
            }
            max_passes = max_passes.max(passes);

            let store = StateStore::open_read_only(&work.path().join("state"))
                .unwrap()
                .unwrap();
            assert!(
                store.open_intents().unwrap().is_empty(),
                "{context} ({kill_note}): intents without outcome: {:#?}",
                store.open_intents().unwrap()
            );
            match op {
                Op::Suspend | Op::Delete => none_running(&stream),
                Op::BatchRun => {
                    let runs = cluster_jobs_with_prefix(&flink_job_prefix(&batch));
                    assert!(
                        runs.len() <= batch_jobs_before + 1,
                        "{context} ({kill_note}): a revision ran at most once: {runs:?}"
                    );
                }
                _ => {
                    let jid = one_running(&stream);
                    let record = store.job(&stream).unwrap().unwrap();
                    assert_eq!(
                        record.flink_job_id.as_deref(),
                        Some(jid.as_str()),
                        "{context}"
                    );
                    assert!(!record.spec_json.contains("counter-broken"), "{context}");
                    let restored = restored_from(&jid);
                    if op == Op::Create {
                        assert_eq!(restored, None, "{context}: a new job starts empty");
                    } else {
                        let restored = restored.unwrap_or_else(|| {
                            panic!("{context} ({kill_note}): a stateful job started empty")
                        });
                        let savepoint_dir = serde_json::from_str::<Value>(
                            record.deployment_json.as_deref().unwrap_or("{}"),
                        )
                        .unwrap()["savepoint_dir"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        let expected = newest_restorable(&savepoint_dir, predecessor.as_deref())
                            .unwrap_or_else(|| panic!("{context}: no state on disk"));
                        assert_eq!(
                            normalized(&restored),
                            normalized(&expected),
                            "{context} ({kill_note}): restored the newest restorable state"
                        );
                    }
                }
            }
            eprintln!("soak: {context}: {kill_note}; settled in {passes} pass(es)");
            if kills >= kills_wanted && !calibrating {
                break;
            }
        }
        cycle += 1;
    }
    let (worst, samples) = sampler.finish();
    for (job, live) in &worst {
        assert!(
            live.len() <= 1,
            "seed {seed}: two live instances of {job} at once: {live:?}"
        );
    }
    assert!(
        samples > 50,
        "the sampler watched the whole run ({samples} samples)"
    );
    eprintln!(
        "soak: seed {seed}: {kills} kills over {} operations {killed_per_op:?}; at most {max_passes} pass(es) to settle; {samples} cluster samples, never two instances",
        killed_per_op.len()
    );
}
