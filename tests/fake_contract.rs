//! The in-process fake Flink (fault injection, benchmarks) must not invent: to every call the agent
//! makes, read or write, it answers with real Flink 2.3's HTTP status, and every field of its
//! answer (in every element of every array) exists, with the same JSON type, in Flink's answer.
#![cfg(feature = "real-flink")]

mod support;

use std::time::{Duration, Instant};

use flink_gitops::flink::RunRequest;
use flink_gitops::testing::{FakeFlink, Scenario};
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
            if real.is_empty() {
                if !fake.is_empty() {
                    found.push(format!(
                        "{path}: {} elements in the fake, none in Flink's answer to compare them with",
                        fake.len()
                    ));
                }
                return;
            }
            // Flink's elements need not all carry the same fields (an exception with or without a
            // task, a JAR with or without entry points): each of the fake's elements must match one
            // of them, and the closest one names its differences.
            for (index, element) in fake.iter().enumerate() {
                let here = format!("{path}[{index}]");
                let closest = real
                    .iter()
                    .map(|other| {
                        let mut differences = Vec::new();
                        invented(element, other, &here, &mut differences);
                        differences
                    })
                    .min_by_key(Vec::len)
                    .unwrap_or_default();
                found.extend(closest);
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

/// One answer: its HTTP status and its body as JSON (`null` when empty, a string when not JSON).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
}

/// What differs between the fake's and Flink's answer to the same call.
fn differences(call: &str, fake: &Answer, real: &Answer, found: &mut Vec<String>) {
    if fake.status != real.status {
        found.push(format!(
            "{call}: HTTP {} in the fake, {} in Flink ({})",
            fake.status, real.status, real.body
        ));
    }
    invented(&fake.body, &real.body, call, found);
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer { status, body }
}

/// Asks `path` every 300 ms until `done` holds for the answer; panics naming `what` after 60 s.
async fn poll(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    what: &str,
    done: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = send(http.get(format!("{base}{path}"))).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{base}: {what} within 60 s; last answer to {path}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn completed(answer: &Answer) -> bool {
    answer.body["status"]["id"] == "COMPLETED"
}

/// The run request the agent sends, for job `jid` with `name`.
fn run_request(jid: &str, name: &str) -> Value {
    serde_json::to_value(RunRequest {
        program_args_list: vec!["--name".into(), name.into()],
        parallelism: 1,
        job_id: jid.to_string(),
        flink_configuration: [(
            "execution.checkpointing.interval".to_string(),
            "1000 ms".to_string(),
        )]
        .into(),
        ..RunRequest::default()
    })
    .unwrap()
}

/// Drives one cluster, the real one or the fake (`fake` is then its handle, for the fault
/// scenarios real Flink is made to show by other means), through every call the agent makes,
/// in the agent's order, and returns each answer under the name of its call.
async fn exercise(
    base: &str,
    fake: Option<&FakeFlink>,
    spec_job: &str,
    savepoints: &str,
) -> Vec<(String, Answer)> {
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{base}{path}");
    let jid = flink_gitops::plan::flink_job_id(spec_job, 1);
    let other = flink_gitops::plan::flink_job_id(spec_job, 2);
    let unknown = "00000000000000000000000000000000";
    let mut answers: Vec<(String, Answer)> = Vec::new();
    let mut keep = |call: &str, answer: Answer| {
        answers.push((call.to_string(), answer.clone()));
        answer
    };
    let expect_success = |call: &str, answer: &Answer| {
        assert!(
            (200..300).contains(&answer.status),
            "{base}: {call}: {answer:?}"
        );
    };

    let jar = std::fs::read(example_jar("counter-v1.jar")).unwrap();
    let part = reqwest::multipart::Part::bytes(jar)
        .file_name("counter-v1.jar")
        .mime_str("application/x-java-archive")
        .unwrap();
    let upload = keep(
        "POST /jars/upload",
        send(
            http.post(url("/jars/upload"))
                .multipart(reqwest::multipart::Form::new().part("jarfile", part)),
        )
        .await,
    );
    expect_success("POST /jars/upload", &upload);
    let jar_id = upload.body["filename"]
        .as_str()
        .and_then(|f| f.rsplit('/').next())
        .unwrap()
        .to_string();
    for (call, job, name) in [
        ("POST /jars/:id/run", &jid, "contract"),
        ("POST /jars/:id/run (a second job)", &other, "contract-2"),
    ] {
        let answer = keep(
            call,
            send(
                http.post(url(&format!("/jars/{jar_id}/run")))
                    .json(&run_request(job, name)),
            )
            .await,
        );
        expect_success(call, &answer);
    }
    keep(
        "POST /jars/:id/run (the job id is taken)",
        send(
            http.post(url(&format!("/jars/{jar_id}/run")))
                .json(&run_request(&jid, "contract")),
        )
        .await,
    );
    keep(
        "POST /jars/:id/run (no such JAR)",
        send(
            http.post(url(&format!("/jars/{unknown}_gone.jar/run")))
                .json(&run_request(unknown, "gone")),
        )
        .await,
    );
    let cancel = keep(
        "PATCH /jobs/:id?mode=cancel (running)",
        send(http.patch(url(&format!("/jobs/{other}?mode=cancel")))).await,
    );
    expect_success("cancel", &cancel);
    keep(
        "PATCH /jobs/:id?mode=cancel (no such job)",
        send(http.patch(url(&format!("/jobs/{unknown}?mode=cancel")))).await,
    );
    poll(
        &http,
        base,
        &format!("/jobs/{jid}/checkpoints"),
        "a completed checkpoint",
        |a| a.body["latest"]["completed"].is_object(),
    )
    .await;

    // The reads, while the job runs.
    for path in [
        "/overview".to_string(),
        "/jobmanager/config".to_string(),
        "/jobs/overview".to_string(),
        format!("/jobs/{jid}"),
        format!("/jobs/{jid}/checkpoints"),
        format!("/jobs/{jid}/checkpoints/config"),
        format!("/jobs/{jid}/config"),
        format!("/jobs/{jid}/exceptions?maxExceptions=16"),
        "/jars".to_string(),
        format!("/jobs/{unknown}"),
    ] {
        let call = format!(
            "GET {}",
            path.replace(&jid, ":id").replace(unknown, ":unknown")
        );
        keep(&call, send(http.get(url(&path))).await);
    }
    // Backpressure is asked per vertex; each side names its own vertices. The figures come from
    // the metric store, which fills within its update interval; until the vertex runs Flink may
    // answer 500.
    let vertex = send(http.get(url(&format!("/jobs/{jid}")))).await.body["vertices"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let backpressure = poll(
        &http,
        base,
        &format!("/jobs/{jid}/vertices/{vertex}/backpressure"),
        "backpressure figures",
        |a| a.status == 200 && a.body["subtasks"].as_array().is_some_and(|s| !s.is_empty()),
    )
    .await;
    keep("GET /jobs/:id/vertices/:id/backpressure", backpressure);

    // A savepoint while the job runs on, polled until done; the fake is asked once as a savepoint
    // that never completes, which real Flink's first answer may or may not still be.
    let trigger = "fedcba9876543210fedcba9876543210";
    let body = serde_json::json!({"target-directory": savepoints, "cancel-job": false, "formatType": "CANONICAL", "triggerId": trigger});
    let triggered = keep(
        "POST /jobs/:id/savepoints",
        send(
            http.post(url(&format!("/jobs/{jid}/savepoints")))
                .json(&body),
        )
        .await,
    );
    expect_success("POST /jobs/:id/savepoints", &triggered);
    let status_path = format!("/jobs/{jid}/savepoints/{trigger}");
    if let Some(fake) = fake {
        fake.set_scenario(Scenario::SavepointNeverCompletes);
    }
    keep(
        "GET /jobs/:id/savepoints/:trigger (just triggered)",
        send(http.get(url(&status_path))).await,
    );
    if let Some(fake) = fake {
        fake.set_scenario(Scenario::Healthy);
    }
    let done = poll(&http, base, &status_path, "the savepoint", completed).await;
    let location = done.body["operation"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("{base}: the savepoint failed: {done:?}"))
        .to_string();
    keep("GET /jobs/:id/savepoints/:trigger (completed)", done);
    // The agent retries a trigger with the same id: it names the operation already made.
    keep(
        "POST /jobs/:id/savepoints (the trigger id again)",
        send(
            http.post(url(&format!("/jobs/{jid}/savepoints")))
                .json(&body),
        )
        .await,
    );
    let again = keep(
        "GET /jobs/:id/savepoints/:trigger (after the retry)",
        send(http.get(url(&status_path))).await,
    );
    assert_eq!(
        again.body["operation"]["location"].as_str(),
        Some(location.as_str()),
        "{base}: a retried trigger started another savepoint: {again:?}"
    );
    keep(
        "GET /jobs/:id/savepoints/:unknown",
        send(http.get(url(&format!("/jobs/{jid}/savepoints/{unknown}")))).await,
    );

    // A savepoint that fails: real Flink cannot write under /proc; the fake is told to fail it.
    let failing = "fedcba9876543210fedcba9876543211";
    let body = serde_json::json!({"target-directory": "file:///proc/flink-gitops-contract", "cancel-job": false, "formatType": "CANONICAL", "triggerId": failing});
    keep(
        "POST /jobs/:id/savepoints (to fail)",
        send(
            http.post(url(&format!("/jobs/{jid}/savepoints")))
                .json(&body),
        )
        .await,
    );
    if let Some(fake) = fake {
        fake.set_scenario(Scenario::SavepointFails);
    }
    let failed = poll(
        &http,
        base,
        &format!("/jobs/{jid}/savepoints/{failing}"),
        "the failing savepoint to end",
        completed,
    )
    .await;
    assert!(
        failed.body["operation"]["failure-cause"].is_object(),
        "{base}: the savepoint to /proc did not fail: {failed:?}"
    );
    keep("GET /jobs/:id/savepoints/:trigger (failed)", failed);
    if let Some(fake) = fake {
        fake.set_scenario(Scenario::Healthy);
    }

    // Its disposal.
    let disposal = keep(
        "POST /savepoint-disposal",
        send(
            http.post(url("/savepoint-disposal"))
                .json(&serde_json::json!({ "savepoint-path": location })),
        )
        .await,
    );
    expect_success("POST /savepoint-disposal", &disposal);
    let disposal_id = disposal.body["request-id"].as_str().unwrap().to_string();
    let disposed = poll(
        &http,
        base,
        &format!("/savepoint-disposal/{disposal_id}"),
        "the disposal",
        completed,
    )
    .await;
    keep("GET /savepoint-disposal/:trigger (completed)", disposed);
    keep(
        "GET /savepoint-disposal/:unknown",
        send(http.get(url(&format!("/savepoint-disposal/{unknown}")))).await,
    );

    // Stop with a savepoint, polled until done; then the calls on a job that has ended.
    let stop_trigger = "0123456789abcdef0123456789abcdef";
    let body = serde_json::json!({"targetDirectory": savepoints, "drain": false, "formatType": "CANONICAL", "triggerId": stop_trigger});
    let stopped = keep(
        "POST /jobs/:id/stop",
        send(http.post(url(&format!("/jobs/{jid}/stop"))).json(&body)).await,
    );
    expect_success("POST /jobs/:id/stop", &stopped);
    let done = poll(
        &http,
        base,
        &format!("/jobs/{jid}/savepoints/{stop_trigger}"),
        "the stop",
        completed,
    )
    .await;
    assert!(
        done.body["operation"]["location"].is_string(),
        "{base}: the stop failed: {done:?}"
    );
    keep("GET /jobs/:id/savepoints/:trigger (stopped)", done);
    poll(
        &http,
        base,
        &format!("/jobs/{jid}"),
        "the stopped job to finish",
        |a| a.body["state"] == "FINISHED",
    )
    .await;
    keep(
        "PATCH /jobs/:id?mode=cancel (finished)",
        send(http.patch(url(&format!("/jobs/{jid}?mode=cancel")))).await,
    );
    let late = "fedcba9876543210fedcba9876543212";
    let body = serde_json::json!({"target-directory": savepoints, "cancel-job": false, "formatType": "CANONICAL", "triggerId": late});
    let late_trigger = keep(
        "POST /jobs/:id/savepoints (finished)",
        send(
            http.post(url(&format!("/jobs/{jid}/savepoints")))
                .json(&body),
        )
        .await,
    );
    if (200..300).contains(&late_trigger.status) {
        let ended = poll(
            &http,
            base,
            &format!("/jobs/{jid}/savepoints/{late}"),
            "the savepoint of a finished job to end",
            completed,
        )
        .await;
        keep("GET /jobs/:id/savepoints/:trigger (finished job)", ended);
    }

    let lost = "fedcba9876543210fedcba9876543213";
    let body = serde_json::json!({"targetDirectory": savepoints, "drain": false, "formatType": "CANONICAL", "triggerId": lost});
    let lost_stop = keep(
        "POST /jobs/:unknown/stop",
        send(http.post(url(&format!("/jobs/{unknown}/stop"))).json(&body)).await,
    );
    if (200..300).contains(&lost_stop.status) {
        let ended = poll(
            &http,
            base,
            &format!("/jobs/{unknown}/savepoints/{lost}"),
            "the stop of an unknown job to end",
            completed,
        )
        .await;
        keep("GET /jobs/:unknown/savepoints/:trigger", ended);
    }

    let deleted = keep(
        "DELETE /jars/:id",
        send(http.delete(url(&format!("/jars/{jar_id}")))).await,
    );
    expect_success("DELETE /jars/:id", &deleted);
    keep(
        "DELETE /jars/:id (gone)",
        send(http.delete(url(&format!("/jars/{jar_id}")))).await,
    );
    answers
}

#[test]
fn the_fake_flink_answers_like_real_flink_to_every_call_the_agent_makes() {
    let spec_job = unique("contract");
    let _cleanup = CancelOnDrop(vec![spec_job.clone()]);
    let real_base = flink_url().trim_end_matches('/').to_string();
    let savepoints = format!(
        "file://{}",
        flink_dir().join("savepoints").join(&spec_job).display()
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let fake = FakeFlink::new();
        let fake_base = format!("http://{}", fake.serve().await.unwrap());
        let real = exercise(&real_base, None, &spec_job, &savepoints).await;
        let faked = exercise(&fake_base, Some(&fake), &spec_job, &savepoints).await;
        let mut found = Vec::new();
        for (call, real) in &real {
            match faked.iter().find(|(asked, _)| asked == call) {
                Some((_, fake)) => differences(call, fake, real, &mut found),
                None => found.push(format!(
                    "{call}: not asked of the fake, as an earlier answer of it differed"
                )),
            }
        }
        assert!(
            found.is_empty(),
            "the fake Flink drifted from Flink 2.3:\n{}",
            found.join("\n")
        );
    });
}

#[test]
fn the_comparison_names_invented_fields_and_changed_types() {
    let real = serde_json::json!({"jobs": [{"jid": "a", "state": "RUNNING", "duration": 5}, {"jid": "b", "state": "FAILED"}], "errors": []});
    let fake = serde_json::json!({"jobs": [{"jid": "a", "state": "RUNNING"}, {"jid": "a", "state": 1, "made-up": true}], "extra": {}, "errors": ["x"]});
    let mut found = Vec::new();
    invented(&fake, &real, "", &mut found);
    found.sort();
    assert_eq!(
        found,
        [
            ".errors: 1 elements in the fake, none in Flink's answer to compare them with",
            ".extra: not in Flink's answer",
            ".jobs[1].made-up: not in Flink's answer",
            ".jobs[1].state: number in the fake, string in Flink",
        ]
    );
}
