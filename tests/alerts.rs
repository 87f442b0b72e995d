//! Alerts on the real Flink 2.3 cluster: a receiver in the test gets signed webhooks for a
//! deployment, an automatic rollback (with Flink's root cause) and a refused unsigned commit; the
//! ones raised while it was down arrive once it is up, after the agent was restarted, exactly
//! once. A job with a slow sink raises a backpressure alert, and its "resolved" once it keeps up.
#![cfg(feature = "real-flink")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flink_gitops::notify::{EVENT_ID_HEADER, SIGNATURE_HEADER, signature};
use serde_json::Value;
use support::daemon::free_port;
use support::*;

/// One request the receiver got: its headers (lower-case names) and body.
type Received = Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>;

/// A tiny HTTP receiver on `port` that answers 200 to every POST and keeps what it got.
fn receiver(port: u16) -> Received {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let received: Received = Arc::default();
    let keep = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.trim().split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                }
            }
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            keep.lock()
                .unwrap()
                .push((headers, String::from_utf8_lossy(&body).into_owned()));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    received
}

fn events(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_str(body).unwrap())
        .collect()
}

/// Adds a webhook target `ops` on `port` wanting `events`, signed with `key`.
fn add_webhook(fixture: &JobFixture, port: u16, key: &str, events: &str) {
    let key_file = fixture.work.path().join("alert-key");
    std::fs::write(&key_file, key).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&fixture.config).unwrap();
    text.push_str(&format!(
        "notify:\n  - name: ops\n    webhook: http://127.0.0.1:{port}/hook\n    secret_file: alert-key\n    events: [{events}]\n"
    ));
    std::fs::write(&fixture.config, text).unwrap();
}

/// Checks every request's signature and event id header.
fn assert_signed(received: &Received, key: &str) {
    for (headers, body) in received.lock().unwrap().iter() {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == &name.to_ascii_lowercase())
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header(SIGNATURE_HEADER), signature(key.as_bytes(), body));
        let id: Value = serde_json::from_str(body).unwrap();
        assert_eq!(header(EVENT_ID_HEADER), id["id"].to_string());
    }
}

#[test]
fn a_job_with_a_slow_sink_raises_a_backpressure_alert_and_its_resolved() {
    let port = free_port();
    let slow_dir = tempfile::tempdir().unwrap();
    let slow = slow_dir.path().join("slow");
    std::fs::write(&slow, "").unwrap();
    let fixture = JobFixture::new(
        "backpressure",
        |job| {
            format!(
                "job_id: {job}\njob_type: stream\nartifact_path: artifacts/counter-v1.jar\ndeployment:\n  parallelism: 1\nargs: [\"--name\", \"{job}\", \"--rate\", \"5000\", \"--slow-while\", \"{}\"]\nhealth:\n  stable_for: 1s\n  timeout: 60s\nmonitoring:\n  alert_on_backpressure: true\n  backpressure_ratio: 0.5\n  backpressure_for: 3s\n",
                slow.display()
            )
        },
        "a job whose sink is slow while a file exists",
    );
    let key = "backpressure-key";
    add_webhook(&fixture, port, key, "backpressure");
    let received = receiver(port);
    let (code, report) = apply(&fixture.config);
    assert_eq!(code, Some(0), "{report:#}");

    // The network buffers between source and sink hold some 30,000 records before the source is
    // held back (hence 5,000 records/s against a sink that takes 50/s); Flink's figures come
    // from its metric store (up to 10 s behind), and the condition must hold for 3 s: a pass
    // every 2 s until the alert arrives.
    let wait_for = |what: &str, count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (code, report) = apply(&fixture.config);
            assert_eq!(code, Some(0), "{report:#}");
            if events(&received).len() >= count {
                return report;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} alert within 90 s; last report: {report:#}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    };
    let report = wait_for("backpressure", 1);
    let probe = &report["probes"][0];
    assert!(probe["backpressure"].as_f64().unwrap() >= 0.5, "{report:#}");
    let got = events(&received);
    assert_eq!(got[0]["event"], "backpressure", "{got:#?}");
    assert_eq!(got[0]["job_id"], fixture.job.as_str());
    assert!(
        got[0]["message"]
            .as_str()
            .unwrap()
            .contains("is backpressured"),
        "{got:#?}"
    );

    // The sink keeps up again: one "resolved", and nothing more on later passes.
    std::fs::remove_file(&slow).unwrap();
    wait_for("resolved", 2);
    let (code, _) = apply(&fixture.config);
    assert_eq!(code, Some(0));
    let got = events(&received);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[1]["event"], "resolved");
    assert_eq!(got[1]["resolves"], "backpressure");
    assert_eq!(got[1]["job_id"], fixture.job.as_str());
    assert_signed(&received, key);
}

#[test]
fn signed_alerts_for_a_rollback_and_a_refused_commit_arrive_once_after_the_receiver_was_down() {
    let port = free_port();
    let fixture = JobFixture::new(
        "alerts",
        |job| counter_spec(job, "artifacts/counter-v1.jar", ""),
        "create",
    );
    let key = "alert-key-123";
    add_webhook(&fixture, port, key, "deployed, rolled_back, commit_refused");
    let JobFixture {
        job,
        spec_path,
        repo,
        config,
        ..
    } = &fixture;

    // The receiver is down: a deployment and an automatic rollback happen meanwhile.
    let (code, report) = apply(config);
    assert_eq!(code, Some(0), "{report:#}");
    repo.write(
        spec_path,
        counter_spec(job, "artifacts/counter-broken.jar", ""),
    );
    repo.commit("broken build");
    let (code, report) = apply(config);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(outcome_of(&report, job)["outcome"], "rolled_back");

    // Up again; a new agent process (every `apply` is one) delivers what waited once its retry
    // is due (after 1 s, then 2 s), and only once: applies until both came, then one more.
    let received = receiver(port);
    let blocked_apply = || {
        let (code, report) = apply(config);
        assert_eq!(code, Some(1), "the broken spec stays blocked: {report:#}");
    };
    wait_until(
        "the two alerts that waited",
        Duration::from_secs(30),
        || {
            blocked_apply();
            events(&received).len() >= 2
        },
    );
    blocked_apply();
    // Each alert waited out its own retry backoff, so they may come in either order; their ids
    // give the order they were raised in.
    let mut got = events(&received);
    got.sort_by_key(|e| e["id"].as_i64());
    let kinds: Vec<&str> = got.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["deployed", "rolled_back"], "{got:#?}");
    let rolled = &got[1];
    assert_eq!(rolled["job_id"], job.as_str());
    assert!(
        rolled["root_cause"]
            .as_str()
            .unwrap()
            .contains("counter-broken: simulated start-up failure"),
        "{rolled:#}"
    );
    assert_signed(&received, key);

    // An unsigned commit is refused and said so, once however often the head is polled.
    repo.write("jobs/notes.txt", "not signed");
    repo.git(&["add", "-A"]);
    repo.git(&[
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "an unsigned commit",
    ]);
    for _ in 0..2 {
        let (code, report) = apply(config);
        assert_eq!(code, Some(1), "{report:#}");
        assert_eq!(report["refused"][0], "signature", "{report:#}");
    }
    let got = events(&received);
    let refused: Vec<&Value> = got
        .iter()
        .filter(|e| e["event"] == "commit_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{got:#?}");
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap()
            .contains("an unsigned commit")
            || refused[0]["message"]
                .as_str()
                .unwrap()
                .contains("not signed"),
        "{refused:#?}"
    );
}
