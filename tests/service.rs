//! `flink-gitops run` as a child process against the real cluster: pushes deploy without a restart,
//! webhooks, readiness, metrics, systemd notification, SIGTERM during an upgrade, secrets kept out of logs.
// Four tests need the real cluster; the other two (fake Flink) run in plain `cargo test` too.
#![cfg_attr(not(feature = "real-flink"), allow(dead_code, unused_imports))]

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::*;
use support::*;

fn hmac_hex(secret: &str, body: &str) -> String {
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

#[cfg(feature = "real-flink")]
#[test]
fn pushes_deploy_without_restart_webhooks_metrics_notify_and_no_secrets_in_logs() {
    let job = unique("svc");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    repo.write("jobs/placeholder.txt", "specs go here");
    repo.commit("empty");
    let work = tempfile::tempdir().unwrap();
    let secret = "whsec-7f3a9-do-not-log";
    let token = "flink-token-88c1-do-not-log";
    std::fs::write(work.path().join("webhook-secret"), secret).unwrap();
    std::fs::write(work.path().join("flink-token"), token).unwrap();
    // A long poll interval: only the webhook makes the daemon look at the repo quickly.
    let config = service_config(
        work.path(),
        &repo,
        &flink_url(),
        &format!(
            "  webhook_secret_file: {}\n",
            work.path().join("webhook-secret").display()
        ),
        "1h",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    // Only the webhook may make this daemon look at the repo: no watcher, no periodic pass.
    text = text
        .replace(
            "  poll_interval: 1h\n",
            "  poll_interval: 1h\n  watch: false\n",
        )
        .replace("  interval: 2s\n", "  interval: 1h\n");
    text = text.replace(
        "  request_timeout: 5s\n",
        &format!(
            "  request_timeout: 5s\n  auth:\n    bearer_token_file: {}\n",
            work.path().join("flink-token").display()
        ),
    );
    std::fs::write(&config, text).unwrap();

    let socket_dir = tempfile::tempdir().unwrap();
    let socket_path = socket_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let daemon = Daemon::start(
        &config,
        work.path().join("daemon.log"),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );

    let mut messages = String::new();
    let mut buffer = [0u8; 4096];
    while !messages.contains("READY=1") {
        let n = socket
            .recv(&mut buffer)
            .expect("READY=1 over NOTIFY_SOCKET");
        messages.push_str(&String::from_utf8_lossy(&buffer[..n]));
        messages.push('\n');
    }
    let n = socket.recv(&mut buffer).unwrap();
    let status = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(status.starts_with("STATUS=applied "), "{status}");
    daemon.wait_for("readiness", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });
    assert_eq!(daemon.get("/healthz"), (200, "ok\n".to_string()));

    // A signed commit, then a push webhook: deployed without restarting the daemon.
    repo.write(
        &format!("jobs/{job}.yaml"),
        counter_spec(&job, "artifacts/counter-v1.jar", ""),
    );
    repo.commit("add a job");
    // What the agent has done so far: its first poll and pass at start.
    let polls = |d: &Daemon| {
        d.metric("flink_gitops_polls_total{kind=\"ok\"}")
            + d.metric("flink_gitops_polls_total{kind=\"failed\"}")
    };
    let passes = |d: &Daemon| d.metric("flink_gitops_reconcile_duration_seconds_count");
    let refused = |d: &Daemon| d.metric("flink_gitops_webhooks_total{kind=\"unauthorized\"}");
    let (polls_before, passes_before, refused_before) =
        (polls(&daemon), passes(&daemon), refused(&daemon));
    let body = r#"{"ref":"refs/heads/main"}"#;
    assert_eq!(daemon.post_webhook(body, &[]), 401, "unsigned webhook");
    assert_eq!(
        daemon.post_webhook(body, &["X-Hub-Signature-256: sha256=00ff".to_string()]),
        401,
        "wrong signature"
    );
    assert_eq!(
        daemon.post_webhook(
            body,
            &[format!(
                "X-Hub-Signature-256: sha256={}",
                hmac_hex("not-the-secret", body)
            )]
        ),
        401
    );
    // The refusals are counted before the 401 is sent, so the counter reads exact at once.
    assert_eq!(
        refused(&daemon),
        refused_before + 3.0,
        "three refusals counted"
    );
    assert_eq!(
        (polls(&daemon), passes(&daemon)),
        (polls_before, passes_before),
        "a refused webhook must not start a poll or a pass"
    );
    assert_eq!(
        daemon.post_webhook(
            body,
            &[format!(
                "X-Hub-Signature-256: sha256={}",
                hmac_hex(secret, body)
            )]
        ),
        202
    );
    daemon.wait_for("the job deployed", Duration::from_secs(90), |_| {
        running_instances(&job).len() == 1
    });
    // Exactly one poll since the refusals, the accepted webhook's: a poll a refusal had woken
    // would have run at once, before the accepted one came (a poll that found the new head
    // runs a pass of seconds, and the later triggers wait for it and count again).
    daemon.wait_for(
        "the accepted webhook's pass",
        Duration::from_secs(30),
        |d| passes(d) == passes_before + 1.0,
    );
    assert_eq!(
        polls(&daemon),
        polls_before + 1.0,
        "one poll since the refusals, the accepted webhook's; log:\n{}",
        daemon.log_text()
    );
    daemon.wait_for("status reporting it", Duration::from_secs(30), |d| {
        let (_, body) = d.get("/api/v1/status");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        // The last pass's action and health for the job come from its report.
        status["jobs"].as_array().is_some_and(|jobs| {
            jobs.iter().any(|j| {
                j["job_id"] == job.as_str()
                    && j["recorded_status"] == "running"
                    && j["last_action"].is_string()
                    && j["health"].is_string()
            })
        })
    });

    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let parsed = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let names: Vec<&str> = parsed.samples.iter().map(|s| s.metric.as_str()).collect();
    for expected in [
        "flink_gitops_reconcile_duration_seconds_count",
        "flink_gitops_actions_total",
        "flink_gitops_flink_up",
        "flink_gitops_last_successful_sync_timestamp_seconds",
        "flink_gitops_webhooks_total",
        "flink_gitops_jobs",
        "flink_gitops_head_commit_age_seconds",
        "flink_gitops_circuit_breaker_open",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        parsed
            .samples
            .iter()
            .any(|s| s.metric == "flink_gitops_webhooks_total"
                && s.labels.get("kind") == Some("unauthorized"))
    );

    daemon.signal("TERM");
    let log = daemon.log_text();
    assert!(
        !log.contains(secret) && !log.contains(token),
        "a secret leaked into the logs"
    );
    assert!(
        log.contains(&format!("job_id={job}")),
        "reconcile log lines carry the job id: {}",
        log.lines()
            .filter(|l| l.contains("job"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.contains("revision="),
        "reconcile log lines carry the revision"
    );
}

#[cfg(feature = "real-flink")]
#[test]
fn readyz_follows_the_cluster_and_nothing_is_applied_while_it_is_down() {
    let flink_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = |args: &[&str]| {
        let status = Command::new(root.join("scripts/flink-local"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "flink-local {args:?}");
    };
    let dir = flink_dir.path().join("cluster");
    let dir_arg = dir.to_str().unwrap().to_string();
    struct StopCluster(String, PathBuf);
    impl Drop for StopCluster {
        fn drop(&mut self) {
            let _ = Command::new(self.1.join("scripts/flink-local"))
                .args(["stop", "--dir", &self.0])
                .status();
        }
    }
    let _stop = StopCluster(dir_arg.clone(), root.to_path_buf());
    local(&["start", "--dir", &dir_arg, "--port", &port.to_string()]);

    let repo = SpecRepo::new();
    repo.write("jobs/placeholder.txt", "nothing to run");
    repo.commit("no jobs");
    let work = tempfile::tempdir().unwrap();
    let config = service_config(
        work.path(),
        &repo,
        &format!("http://127.0.0.1:{port}"),
        "",
        "1s",
    );
    let daemon = Daemon::start(&config, work.path().join("daemon.log"), &[]);
    daemon.wait_for("ready", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });

    local(&["stop", "--dir", &dir_arg]);
    repo.write("jobs/note.txt", "a new head while the cluster is down");
    let during = repo.commit("change while down");
    daemon.wait_for("503", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 503
    });
    let (_, body) = daemon.get("/readyz");
    assert!(body.contains("Flink unreachable"), "{body}");
    // The agent polls and verifies the new head meanwhile, and does not mark it applied.
    let seen = |_: &Daemon| {
        let store = flink_gitops::state::StateStore::open_read_only(&work.path().join("state"))
            .unwrap()
            .unwrap();
        store.revision(&during).unwrap()
    };
    daemon.wait_for("the new head seen", Duration::from_secs(30), |d| {
        seen(d).is_some_and(|r| r.verified_at.is_some())
    });
    // The pass that verified it tries the cluster next; the check comes after that pass and the
    // one after it have ended (each pass, also one Flink refused, is counted when it ends).
    let passes = |d: &Daemon| d.metric("flink_gitops_reconcile_duration_seconds_count");
    let passes_at_verification = passes(&daemon);
    daemon.wait_for("two more passes", Duration::from_secs(30), |d| {
        passes(d) >= passes_at_verification + 2.0
    });
    let revision = seen(&daemon).unwrap();
    assert!(
        revision.applied_at.is_none(),
        "nothing may be marked applied while Flink is down: {revision:?}"
    );

    local(&["start", "--dir", &dir_arg, "--port", &port.to_string()]);
    daemon.wait_for("200 again", Duration::from_secs(60), |d| {
        d.get("/readyz").0 == 200
    });
    daemon.wait_for("the head applied", Duration::from_secs(30), |_| {
        let store = flink_gitops::state::StateStore::open_read_only(&work.path().join("state"))
            .unwrap()
            .unwrap();
        store
            .revision(&during)
            .unwrap()
            .is_some_and(|r| r.applied_at.is_some())
    });
}

#[cfg(feature = "real-flink")]
#[test]
fn sigterm_during_an_upgrade_leaves_state_the_next_start_completes() {
    let job = unique("term");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    let slow_gate = "health:\n  stable_for: 8s\n  timeout: 60s\n";
    let spec = |jar: &str| {
        counter_spec(&job, jar, "").replace(
            "health:\n  stable_for: 2s\n  max_restarts: 0\n  timeout: 60s\n",
            slow_gate,
        )
    };
    repo.write(
        &format!("jobs/{job}.yaml"),
        spec("artifacts/counter-v1.jar"),
    );
    repo.commit("v1");
    let work = tempfile::tempdir().unwrap();
    let config = service_config(work.path(), &repo, &flink_url(), "", "1s");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let v1 = running_instances(&job);

    let mut daemon = Daemon::start(&config, work.path().join("daemon.log"), &[]);
    daemon.wait_for("ready", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });
    repo.write(
        &format!("jobs/{job}.yaml"),
        spec("artifacts/counter-v2.jar"),
    );
    repo.commit("v2");
    // Wait until the new version runs and waits for its health gate, then stop the daemon.
    daemon.wait_for("the v2 job", Duration::from_secs(60), |_| {
        running_instances(&job).iter().any(|jid| !v1.contains(jid))
    });
    let stopped_at = Instant::now();
    daemon.signal("TERM");
    let status = daemon.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit; log:\n{}",
        daemon.log_text()
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(30),
        "exit within a bound"
    );
    let log = daemon.log_text();
    assert!(log.contains("shutting down"), "{log}");
    {
        let store = flink_gitops::state::StateStore::open_read_only(&work.path().join("state"))
            .unwrap()
            .unwrap();
        let record = store.job(&job).unwrap().unwrap();
        // SIGTERM came while v2 waited for its 8 s health gate: the gate is left for the next start.
        assert_eq!(record.phase, "verifying", "{record:#?}");
        let phase = record.phase_json.clone().unwrap();
        let savepoint = store
            .restore_points(&job)
            .unwrap()
            .into_iter()
            .find(|p| p.savepoint)
            .expect("the upgrade savepoint is recorded")
            .path;
        assert!(phase.contains(&savepoint), "v2 restores it: {phase}");
        assert!(
            record.spec_json.contains("counter-v1"),
            "v1 is still the last good spec"
        );
    }
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let running = running_instances(&job);
    assert_eq!(running.len(), 1, "{running:?}");
    let store = flink_gitops::state::StateStore::open_read_only(&work.path().join("state"))
        .unwrap()
        .unwrap();
    let record = store.job(&job).unwrap().unwrap();
    assert!(record.spec_json.contains("counter-v2"));
    assert_eq!(record.flink_job_id.as_deref(), Some(running[0].as_str()));
    assert!(store.open_intents().unwrap().is_empty());
}

#[cfg(feature = "real-flink")]
#[test]
fn a_commit_to_a_local_repo_is_seen_at_once_by_the_watcher() {
    let job = unique("watch");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    add_example_jars(&repo);
    repo.write("jobs/placeholder.txt", "specs go here");
    repo.commit("empty");
    let work = tempfile::tempdir().unwrap();
    // Polling alone would take an hour.
    let config = service_config(work.path(), &repo, &flink_url(), "", "1h");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("  interval: 2s\n", "  interval: 1h\n");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, work.path().join("daemon.log"), &[]);
    daemon.wait_for("ready", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });
    repo.write(
        &format!("jobs/{job}.yaml"),
        counter_spec(&job, "artifacts/counter-v1.jar", ""),
    );
    repo.commit("add a job");
    daemon.wait_for("the job deployed", Duration::from_secs(60), |_| {
        running_instances(&job).len() == 1
    });
    assert!(daemon.log_text().contains("watching the local repository"));

    // SIGHUP: a bad new config is refused and the running one kept; a good one is taken.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("trust:", "trust:\n  commits: sometimes"),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_for("the refusal", Duration::from_secs(10), |d| {
        d.log_text().contains("new configuration refused")
    });
    assert!(
        daemon.log_text().contains("trust.commits"),
        "the refusal names the field"
    );
    assert_eq!(
        daemon.get("/readyz").0,
        200,
        "still serving with the old config"
    );
    std::fs::write(
        &config,
        good.replace("ready_window: 1m", "ready_window: 2m"),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_for("the reload", Duration::from_secs(10), |d| {
        d.log_text().contains("configuration reloaded")
    });
    daemon.wait_for("ready after the reload", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });
    assert_eq!(
        running_instances(&job).len(),
        1,
        "a reload never starts a second instance"
    );
}

/// A service config for a spec repository with no jobs and the in-process fake Flink, which
/// `_runtime` serves for as long as the test holds it.
struct EmptyService {
    _runtime: tokio::runtime::Runtime,
    _repo: SpecRepo,
    work: tempfile::TempDir,
    config: PathBuf,
}

impl EmptyService {
    fn new() -> EmptyService {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let fake = flink_gitops::testing::FakeFlink::new();
        let address = runtime.block_on(fake.serve()).unwrap();
        let repo = SpecRepo::new();
        repo.write("jobs/placeholder.txt", "nothing to run");
        repo.commit("no jobs");
        let work = tempfile::tempdir().unwrap();
        let config = service_config(work.path(), &repo, &format!("http://{address}"), "", "1s");
        EmptyService {
            _runtime: runtime,
            _repo: repo,
            work,
            config,
        }
    }
}

#[test]
fn deleting_the_state_database_makes_the_service_unready_and_exit_for_a_restart() {
    let EmptyService {
        _runtime,
        _repo,
        work,
        config,
    } = EmptyService::new();
    let mut daemon = Daemon::start(&config, work.path().join("daemon.log"), &[]);
    daemon.wait_for("ready", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });

    let db = work.path().join("state/state.db");
    std::fs::remove_file(&db).unwrap();
    daemon.wait_for(
        "503 naming the lost database",
        Duration::from_secs(5),
        |d| {
            let (code, body) = d.get("/readyz");
            code == 503 && body.contains(&db.display().to_string()) && body.contains("deleted")
        },
    );
    let status = daemon.wait_for_exit(
        "still running with its database deleted",
        Duration::from_secs(10),
    );
    let log = daemon.log_text();
    assert_eq!(
        status.code(),
        Some(i32::from(flink_gitops::cli::EXIT_STATE_LOST)),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("STATE DATABASE LOST")
            && l.contains(&db.display().to_string())),
        "{log}"
    );

    // What systemd does next: the service starts again on a fresh database.
    let daemon = Daemon::start(&config, work.path().join("restart.log"), &[]);
    daemon.wait_for("ready after the restart", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });
}

#[test]
fn a_failing_repository_is_polled_with_backoff_not_in_a_tight_loop() {
    let repo = SpecRepo::new();
    repo.write("jobs/.keep", "").commit("empty");
    let work = tempfile::tempdir().unwrap();
    let config = service_config(work.path(), &repo, "http://127.0.0.1:9", "", "1s");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("poll_interval: 1s\n", "poll_interval: 1s\n  watch: false\n");
    std::fs::write(&config, text).unwrap();
    // The remote goes away: every fetch fails from now on.
    let gone = work.path().join("moved-away");
    std::fs::rename(repo.path(), &gone).unwrap();
    let daemon = Daemon::start(&config, work.path().join("daemon.log"), &[]);
    daemon.wait_for("the metrics endpoint", Duration::from_secs(20), |d| {
        d.get("/metrics").0 == 200
    });
    let failed = |d: &Daemon| d.metric("flink_gitops_polls_total{kind=\"failed\"}");
    daemon.wait_for("the first failed poll", Duration::from_secs(20), |d| {
        failed(d) >= 1.0
    });
    assert_eq!(
        failed(&daemon),
        1.0,
        "the second poll comes 1 s after the first"
    );
    // Watched from before it happens, each poll is seen within one look (250 ms).
    daemon.wait_for("the second failed poll", Duration::from_secs(20), |d| {
        failed(d) >= 2.0
    });
    let second_seen = Instant::now();
    daemon.wait_for("the fourth failed poll", Duration::from_secs(20), |d| {
        failed(d) >= 4.0
    });
    // Waits of 2 s and 4 s, each plus up to a fifth as jitter, came between the second and the
    // fourth; a tight loop makes about ten a second.
    let took = second_seen.elapsed();
    assert!(
        took >= Duration::from_millis(6000 - 250) && took <= Duration::from_millis(7200 + 500),
        "the fourth failed poll {took:?} after the second, not 6 to 7.2 s"
    );
    assert_eq!(failed(&daemon), 4.0, "no fifth poll before its 8 s wait");
    assert_eq!(daemon.metric("flink_gitops_poll_failures_in_a_row"), 4.0);
    let (_, status) = daemon.get("/api/v1/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    assert_eq!(status["poll_failures"], 4, "{status}");
    // The fifth poll waits 8 s (plus up to 1.6 s of jitter) from the fourth.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let next_in = status["next_poll_at"].as_f64().unwrap_or_default() - now;
    assert!(
        (8.0 - 0.5..=9.6).contains(&next_in),
        "the next poll in {next_in} s, not 8 to 9.6 s: {status}"
    );
    assert!(status["last_poll_error"].as_str().is_some(), "{status}");
}

#[test]
fn metrics_pass_promtools_linter_and_prometheus_gets_openmetrics() {
    let promtool = ["/usr/bin/promtool", "promtool"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .expect("promtool is needed for this test (scripts/test installs Debian's `prometheus`)");
    let repo = SpecRepo::new();
    repo.write("jobs/.keep", "").commit("empty");
    let work = tempfile::tempdir().unwrap();
    // Flink is not there: the counters of failed contacts and polls move all the same.
    let config = service_config(work.path(), &repo, "http://127.0.0.1:9", "", "1s");
    let daemon = Daemon::start(&config, work.path().join("daemon.log"), &[]);
    daemon.wait_for("a poll counted", Duration::from_secs(20), |d| {
        d.get("/metrics").1.contains("flink_gitops_polls_total")
    });
    let (code, text) = daemon.get("/metrics");
    assert_eq!(code, 200);
    use std::io::Write as _;
    let mut lint = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let linted = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    assert!(
        linted.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );

    // What Prometheus asks for: OpenMetrics, counters named without `_total`, ending in `# EOF`.
    let openmetrics = Command::new("curl")
        .args([
            "-s",
            "-H",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            &format!("http://127.0.0.1:{}/metrics", daemon.port),
        ])
        .output()
        .unwrap();
    let openmetrics = String::from_utf8_lossy(&openmetrics.stdout);
    assert!(
        openmetrics.contains("# TYPE flink_gitops_polls counter"),
        "{openmetrics}"
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
}

/// The watchdog pings (`WATCHDOG=1`) seen over `window`, starting `after` past READY=1, with
/// `WATCHDOG_USEC` at 1 s.
#[cfg(feature = "failpoints")]
fn watchdog_pings(failpoint: Option<&str>, after: Duration, window: Duration) -> usize {
    let EmptyService {
        _runtime,
        _repo,
        work,
        config,
    } = EmptyService::new();
    let socket_path = work.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut env = vec![
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    if let Some(failpoint) = failpoint {
        env.push(("FLINK_GITOPS_FAILPOINT", failpoint));
    }
    let _daemon = Daemon::start(&config, work.path().join("daemon.log"), &env);
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no READY=1");
        if let Ok(n) = socket.recv(&mut buffer)
            && String::from_utf8_lossy(&buffer[..n]).contains("READY=1")
        {
            break;
        }
    }
    let start = Instant::now() + after;
    let end = start + window;
    let mut pings = 0;
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buffer)
            && Instant::now() >= start
            && String::from_utf8_lossy(&buffer[..n]).contains("WATCHDOG=1")
        {
            pings += 1;
        }
    }
    pings
}

#[cfg(feature = "failpoints")]
#[test]
fn the_watchdog_is_fed_by_the_loops_progress_and_starves_when_it_hangs() {
    // The service_config reconciles every 2 s: the second pass starts within that and hangs.
    let hung = watchdog_pings(
        Some("hang:pass"),
        Duration::from_secs(5),
        Duration::from_secs(4),
    );
    assert_eq!(hung, 0, "a hung loop must not feed the watchdog");
    let alive = watchdog_pings(None, Duration::from_secs(5), Duration::from_secs(4));
    assert!(
        alive >= 4,
        "a live loop feeds it every half interval: {alive} pings in 4 s"
    );
}
