//! The in-process fake Flink (fault injection, benchmarks) must not invent: every field it returns
//! exists, with the same JSON type, in real Flink 2.3's answer to the same request on the same job.
#![cfg(feature = "real-flink")]

mod support;

use std::time::{Duration, Instant};

use flink_gitops::flink::{FlinkClient, RunRequest};
use flink_gitops::testing::FakeFlink;
use serde_json::Value;
use support::*;

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Paths where the fake answers something real Flink does not.
fn invented(fake: &Value, real: &Value, path: &str, found: &mut Vec<String>) {
    match (fake, real) {
        (Value::Object(fake), Value::Object(real)) => {
            for (key, value) in fake {
                let here = format!("{path}.{key}");
                match real.get(key) {
                    Some(other) => invented(value, other, &here, found),
                    None => found.push(format!("{here}: not in Flink's answer")),
                }
            }
        }
        (Value::Array(fake), Value::Array(real)) => {
            if let (Some(fake), Some(real)) = (fake.first(), real.first()) {
                invented(fake, real, &format!("{path}[0]"), found);
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (fake, real) if kind(fake) != kind(real) => found.push(format!(
            "{path}: {} in the fake, {} in Flink",
            kind(fake),
            kind(real)
        )),
        _ => {}
    }
}

async fn get_json(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}{path}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {base}{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Submits the counter under `jid`, waits for a completed checkpoint, returns the client.
async fn start_counter(base: &str, jid: &str) -> FlinkClient {
    let client =
        FlinkClient::new(&url::Url::parse(base).unwrap(), Duration::from_secs(30)).unwrap();
    let jar_id = client
        .upload_jar(&example_jar("counter-v1.jar"))
        .await
        .unwrap();
    let request = RunRequest {
        program_args_list: vec!["--name".into(), "contract".into()],
        parallelism: 1,
        job_id: jid.to_string(),
        flink_configuration: [(
            "execution.checkpointing.interval".to_string(),
            "1000 ms".to_string(),
        )]
        .into(),
        ..RunRequest::default()
    };
    assert_eq!(client.run_jar(&jar_id, &request).await.unwrap(), jid);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let checkpointed = client
            .checkpoints(jid)
            .await
            .is_ok_and(|c| c.latest.completed.is_some());
        if checkpointed {
            return client;
        }
        assert!(Instant::now() < deadline, "{base}: no checkpoint of {jid}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[test]
fn the_fake_flink_answers_only_with_fields_real_flink_has() {
    let spec_job = unique("contract");
    let _cleanup = CancelOnDrop(vec![spec_job.clone()]);
    let jid = flink_gitops::plan::flink_job_id(&spec_job, 1);
    let real_base = flink_url().trim_end_matches('/').to_string();
    let savepoints = format!(
        "file://{}",
        flink_dir().join("savepoints").join(&spec_job).display()
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let fake = FakeFlink::new();
        let fake_base = format!("http://{}", fake.serve().await.unwrap());
        let real_client = start_counter(&real_base, &jid).await;
        let fake_client = start_counter(&fake_base, &jid).await;
        let http = reqwest::Client::new();
        let mut found = Vec::new();
        let mut compare = async |path: String| {
            let real = get_json(&http, &real_base, &path).await;
            let fake = get_json(&http, &fake_base, &path).await;
            invented(&fake, &real, &path, &mut found);
        };
        for path in [
            "/overview".to_string(),
            "/jobmanager/config".to_string(),
            "/jobs/overview".to_string(),
            format!("/jobs/{jid}"),
            format!("/jobs/{jid}/checkpoints"),
            format!("/jobs/{jid}/checkpoints/config"),
            format!("/jobs/{jid}/config"),
            format!("/jobs/{jid}/exceptions"),
            "/jars".to_string(),
        ] {
            compare(path).await;
        }
        // Backpressure is asked per vertex; each side names its own vertices.
        let vertex_of = async |base: &str| {
            get_json(&http, base, &format!("/jobs/{jid}")).await["vertices"][0]["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (real_vertex, fake_vertex) = (vertex_of(&real_base).await, vertex_of(&fake_base).await);
        let backpressure = |vertex: &str| format!("/jobs/{jid}/vertices/{vertex}/backpressure");
        // The figures come from the metric store, which fills within its update interval; until
        // the vertex runs Flink may answer 500.
        let deadline = Instant::now() + Duration::from_secs(30);
        let real_backpressure = loop {
            let response = http
                .get(format!("{real_base}{}", backpressure(&real_vertex)))
                .send()
                .await
                .expect("real Flink answers");
            let status = response.status();
            let real: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() && real["subtasks"].as_array().is_some_and(|s| !s.is_empty()) {
                break real;
            }
            assert!(
                Instant::now() < deadline,
                "real Flink gave no backpressure figures within 30 s: {status} {real:#}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let fake_backpressure = get_json(&http, &fake_base, &backpressure(&fake_vertex)).await;
        // A savepoint while the job runs on, then its disposal, on both; compare both answers.
        let running_trigger = "fedcba9876543210fedcba9876543210";
        let mut disposals = Vec::new();
        for client in [&real_client, &fake_client] {
            client
                .trigger_savepoint(&jid, &savepoints, running_trigger)
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let location = loop {
                let poll = client
                    .savepoint_status(&jid, running_trigger)
                    .await
                    .unwrap();
                if poll.status.id == "COMPLETED" {
                    break poll.operation.unwrap().location.unwrap();
                }
                assert!(Instant::now() < deadline, "savepoint never completed");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            let trigger = client.dispose_savepoint(&location).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while client
                .disposal_status(&trigger)
                .await
                .map(|s| s.status.id != "COMPLETED")
                .unwrap_or(true)
            {
                assert!(Instant::now() < deadline, "disposal never completed");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            disposals.push(trigger);
        }
        compare(format!("/jobs/{jid}/savepoints/{running_trigger}")).await;
        let real_disposal = get_json(
            &http,
            &real_base,
            &format!("/savepoint-disposal/{}", disposals[0]),
        )
        .await;
        let fake_disposal = get_json(
            &http,
            &fake_base,
            &format!("/savepoint-disposal/{}", disposals[1]),
        )
        .await;
        // Stop with a savepoint on both and compare the finished operation.
        let trigger = "0123456789abcdef0123456789abcdef";
        for client in [&real_client, &fake_client] {
            client
                .stop_with_savepoint(&jid, &savepoints, trigger)
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while client
                .savepoint_status(&jid, trigger)
                .await
                .map(|s| s.status.id != "COMPLETED")
                .unwrap_or(true)
            {
                assert!(Instant::now() < deadline, "savepoint never completed");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        compare(format!("/jobs/{jid}/savepoints/{trigger}")).await;
        invented(
            &fake_disposal,
            &real_disposal,
            "/savepoint-disposal/:id",
            &mut found,
        );
        invented(
            &fake_backpressure,
            &real_backpressure,
            "/jobs/:id/vertices/:id/backpressure",
            &mut found,
        );
        assert!(
            found.is_empty(),
            "the fake Flink drifted from Flink 2.3:\n{}",
            found.join("\n")
        );
    });
}

#[test]
fn the_comparison_names_invented_fields_and_changed_types() {
    let real = serde_json::json!({"jobs": [{"jid": "a", "state": "RUNNING", "duration": 5}]});
    let fake =
        serde_json::json!({"jobs": [{"jid": "a", "state": 1, "made-up": true}], "extra": {}});
    let mut found = Vec::new();
    invented(&fake, &real, "", &mut found);
    found.sort();
    assert_eq!(
        found,
        [
            ".extra: not in Flink's answer",
            ".jobs[0].made-up: not in Flink's answer",
            ".jobs[0].state: number in the fake, string in Flink",
        ]
    );
}
