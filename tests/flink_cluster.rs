//! `status` and `plan` read jobs this test submits itself to the real Flink 2.3 cluster.
#![cfg(feature = "real-flink")]

mod support;

use std::time::{Duration, Instant};

use flink_gitops::flink::{FlinkClient, RunRequest};
use flink_gitops::plan::flink_job_id;
use serde_json::Value;
use support::*;

struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: FlinkClient,
    started: Vec<String>,
}

impl Cluster {
    fn connect() -> Cluster {
        let url = url::Url::parse(&flink_url()).unwrap();
        Cluster {
            runtime: tokio::runtime::Runtime::new().unwrap(),
            client: FlinkClient::new(&url, Duration::from_secs(30)).unwrap(),
            started: Vec::new(),
        }
    }

    fn submit(&mut self, jar: &str, job_id: &str) {
        let path = example_jar(jar);
        let client = self.client.clone();
        let request = RunRequest {
            program_args_list: vec!["--name".into(), format!("test-{job_id}")],
            parallelism: 1,
            job_id: job_id.to_string(),
            flink_configuration: [(
                "execution.checkpointing.interval".to_string(),
                "2000 ms".to_string(),
            )]
            .into(),
            ..RunRequest::default()
        };
        let returned = self.runtime.block_on(async move {
            let jar_id = client.upload_jar(&path).await.unwrap();
            client.run_jar(&jar_id, &request).await.unwrap()
        });
        assert_eq!(returned, job_id, "Flink must keep the job id we chose");
        self.started.push(job_id.to_string());
    }

    fn wait_for_state(&self, job_id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self
                .runtime
                .block_on(self.client.job(job_id))
                .map(|j| j.state);
            if found.as_deref().ok() == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} never reached {state}: {found:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn cancel(&self, job_id: &str) {
        self.runtime.block_on(self.client.cancel(job_id)).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for job in &self.started {
            let _ = self.runtime.block_on(self.client.cancel(job));
        }
    }
}

fn job_entry<'a>(report: &'a Value, list: &str, job_id: &str) -> &'a Value {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {report}"))
        .iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| panic!("{job_id} not in {report}"))
}

#[test]
fn status_and_plan_read_jobs_on_the_real_cluster() {
    let mut cluster = Cluster::connect();
    let ours = unique("counter");
    let orphan = unique("orphan");
    let ours_jid = flink_job_id(&ours, 1);
    let orphan_jid = flink_job_id(&orphan, 3);
    let foreign_jid = format!("{:032x}", u128::from(std::process::id()) << 64 | 0xf0f0);

    let repo = SpecRepo::new();
    repo.write(
        "artifacts/counter-v1.jar",
        std::fs::read(example_jar("counter-v1.jar")).unwrap(),
    )
    .write(
        "jobs/ours.yaml",
        stream_spec(&ours, "artifacts/counter-v1.jar", 1),
    )
    .write(
        "jobs/orphan.yaml",
        stream_spec(&orphan, "artifacts/counter-v1.jar", 1),
    );
    let commit = repo.commit("two counters");
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &repo, &flink_url());
    let config_arg = config.to_str().unwrap();

    cluster.submit("counter-v1.jar", &ours_jid);
    cluster.submit("counter-v1.jar", &orphan_jid);
    cluster.submit("counter-v1.jar", &foreign_jid);
    for jid in [&ours_jid, &orphan_jid, &foreign_jid] {
        cluster.wait_for_state(jid, "RUNNING");
    }
    // `ours` is recorded as applied; `orphan` runs with one of our ids but the state DB lost it.
    record_applied(&config, &commit, |id| flink_job_id(id, 1));
    {
        let store =
            flink_gitops::state::StateStore::open_exclusive(&work.path().join("state")).unwrap();
        store
            .connection()
            .execute("DELETE FROM jobs WHERE job_id = ?1", [&orphan])
            .unwrap();
    }

    let status = flink_gitops_json(&["status", "-c", config_arg, "--output", "json"], 0);
    let row = job_entry(&status, "jobs", &ours);
    assert_eq!(row["flink_job_id"], ours_jid.as_str());
    assert_eq!(row["flink_state"], "RUNNING");
    assert_eq!(row["applied_commit"], commit.as_str());
    assert_eq!(row["desired_commit"], commit.as_str());

    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(
        job_entry(&plan["plan"], "jobs", &ours)["action"],
        "unchanged"
    );
    let adopt = job_entry(&plan["plan"], "jobs", &orphan);
    assert_eq!(adopt["action"], "adopt");
    assert_eq!(adopt["flink_job_id"], orphan_jid.as_str());
    let unmanaged: Vec<&str> = plan["plan"]["unmanaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jid"].as_str().unwrap())
        .collect();
    assert!(unmanaged.contains(&foreign_jid.as_str()), "{unmanaged:?}");
    assert!(!unmanaged.contains(&ours_jid.as_str()) && !unmanaged.contains(&orphan_jid.as_str()));

    cluster.cancel(&ours_jid);
    cluster.wait_for_state(&ours_jid, "CANCELED");
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 0);
    let drift = job_entry(&plan["plan"], "jobs", &ours);
    assert_eq!(drift["action"], "restart");
    assert_eq!(
        drift["reasons"][0],
        format!("drift: job {ours_jid} is CANCELED on the cluster")
    );

    let text = flink_gitops(&["plan", "-c", config_arg]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("cluster  Flink 2.3.0"), "{stdout}");
    assert!(
        stdout.contains("not deployed by flink-gitops (left alone)"),
        "{stdout}"
    );
}
