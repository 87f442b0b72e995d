//! The HTTP server under a flood of idle and slow-header connections on loopback, with the daemon
//! at systemd's default limit of 1024 open files: `/healthz` keeps answering, slow headers are cut
//! off after `server.header_timeout`, and git polls keep the descriptors they need.

mod support;

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use support::daemon::*;
use support::*;

/// systemd's default soft `LimitNOFILE=`, under which 1,100 idle connections broke the service.
const DAEMON_OPEN_FILES: u64 = 1024;
/// Idle connections held at once: more than the daemon has descriptors.
const IDLE: usize = 1500;
/// Connections trickling their headers one byte at a time.
const SLOW: usize = 20;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/healthz` may take under the flood.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One `GET` on a new connection; the status code and body, or why there was none in time.
async fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        // HTTP/1.0: the server closes after the response, so reading to the end is the whole answer.
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {ANSWER_WITHIN:?}")),
    };
    let code = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Opens a connection, sends a request line, then one header byte every `every` until the server
/// closes it. Returns how long the server kept it open, or `None` if still open after `give_up`.
async fn trickle(port: u16, every: Duration, give_up: Duration) -> io::Result<Option<Duration>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let opened = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await?;
    let mut buffer = [0u8; 512];
    while opened.elapsed() < give_up {
        if stream.write_all(b"a").await.is_err() {
            return Ok(Some(opened.elapsed()));
        }
        // Whatever the server sends (an error response or nothing), the end of the stream is the close.
        match tokio::time::timeout(every, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(opened.elapsed())),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    Ok(None)
}

/// Opens up to `count` connections that never send a byte, `batch` at a time, until `deadline`.
/// Connections the server cannot take (its backlog full) time out and are not counted.
async fn open_idle(port: u16, count: usize, batch: usize, deadline: Instant) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    while held.len() < count && Instant::now() < deadline {
        let mut connecting = JoinSet::new();
        for _ in 0..batch.min(count - held.len()) {
            connecting.spawn(tokio::time::timeout(
                Duration::from_millis(300),
                TcpStream::connect(("127.0.0.1", port)),
            ));
        }
        while let Some(done) = connecting.join_next().await {
            if let Ok(Ok(Ok(stream))) = done {
                held.push(stream);
            }
        }
    }
    held
}

/// The flood may need more descriptors than this process is allowed by default elsewhere.
fn raise_own_open_files(wanted: u64) {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    if soft < wanted {
        let raised = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={wanted}:"),
            ])
            .status();
        assert!(
            raised.is_ok_and(|s| s.success()),
            "the test needs {wanted} open files (has {soft}) and prlimit could not raise it"
        );
    }
}

#[test]
fn healthz_answers_and_polls_work_through_a_flood_of_idle_and_slow_connections() {
    raise_own_open_files(IDLE as u64 + SLOW as u64 + 512);
    let repo = SpecRepo::new();
    repo.write("jobs/placeholder.txt", "specs go here");
    repo.commit("empty");
    let work = tempfile::tempdir().unwrap();
    // Nothing listens behind this Flink URL: the HTTP server and the git polls are under test.
    let flink = format!("http://127.0.0.1:{}", free_port());
    let config = service_config(
        work.path(),
        &repo,
        &flink,
        &format!("  header_timeout: {}s\n", HEADER_TIMEOUT.as_secs()),
        "1s",
    );
    let daemon =
        Daemon::start_with_open_files(&config, work.path().join("daemon.log"), DAEMON_OPEN_FILES);
    daemon.wait_for("/healthz", Duration::from_secs(10), |d| {
        d.get("/healthz").0 == 200
    });
    let port = daemon.port;
    // Dropping the runtime (also when an assertion unwinds) closes every socket the test opened;
    // dropping the daemon kills it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = || daemon.log_text();
    runtime.block_on(async {
        // Slow headers alone: each trickles a byte every 500 ms and must be cut off at the header
        // timeout, which does not restart with every byte.
        let mut slow = JoinSet::new();
        for _ in 0..SLOW {
            slow.spawn(trickle(
                port,
                Duration::from_millis(500),
                HEADER_TIMEOUT * 3,
            ));
        }
        let mut kept_open = Vec::new();
        while let Some(done) = slow.join_next().await {
            kept_open.push(done.unwrap().unwrap());
        }
        for held in &kept_open {
            let held = held.unwrap_or_else(|| {
                panic!(
                    "a slow-header connection was still open after {:?}; log:\n{}",
                    HEADER_TIMEOUT * 3,
                    log()
                )
            });
            assert!(
                held >= HEADER_TIMEOUT - Duration::from_millis(300)
                    && held <= HEADER_TIMEOUT + Duration::from_millis(1500),
                "slow-header connections are closed at the header timeout: {kept_open:?}"
            );
        }

        // The flood: idle connections, more than the daemon has descriptors, renewed all the time,
        // with slow-header connections reopened as the server closes them.
        let flood_started = unix_now();
        let mut idle = open_idle(port, IDLE, 100, Instant::now() + Duration::from_secs(4)).await;
        let idle_opened = idle.len();
        let renew = tokio::spawn(async move {
            loop {
                let fresh = open_idle(port, 25, 25, Instant::now() + Duration::from_secs(1)).await;
                let surplus = (idle.len() + fresh.len()).saturating_sub(IDLE);
                idle.drain(..surplus.min(idle.len()));
                idle.extend(fresh);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut trickling = JoinSet::new();
        for _ in 0..SLOW {
            trickling.spawn(async move {
                loop {
                    let _ = trickle(port, Duration::from_secs(1), Duration::from_secs(30)).await;
                }
            });
        }

        let mut answered = Vec::new();
        let probing = Instant::now();
        while probing.elapsed() < Duration::from_secs(6) {
            let started = Instant::now();
            match get(port, "/healthz").await {
                Ok((200, _)) => answered.push(started.elapsed()),
                other => panic!(
                    "/healthz under a flood of {idle_opened} idle and {SLOW} slow connections, \
                     after {} answers: {other:?}; log:\n{}",
                    answered.len(),
                    log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Polls run every second; with descriptors to spare they keep succeeding under the flood.
        let (code, body) = get(port, "/api/v1/status").await.unwrap_or_else(|e| {
            panic!("/api/v1/status under the flood: {e}; log:\n{}", log())
        });
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            status["last_poll_error"].is_null()
                && status["last_poll_ok"]
                    .as_f64()
                    .is_some_and(|at| at > flood_started),
            "git polls keep working under the flood: {status:#}"
        );
        answered.sort();
        eprintln!(
            "{idle_opened} idle + {SLOW} slow connections: {} /healthz answers, median {:?}, max {:?}",
            answered.len(),
            answered[answered.len() / 2],
            answered[answered.len() - 1]
        );
        renew.abort();
        trickling.abort_all();
    });
    drop(runtime);
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("flink_gitops_http_evicted_connections_total ") && !l.ends_with(" 0")
        ),
        "evictions are counted:\n{metrics}"
    );
}

#[test]
fn a_connection_limit_that_would_take_half_the_open_files_is_refused_at_start() {
    let repo = SpecRepo::new();
    repo.write("jobs/placeholder.txt", "specs go here");
    repo.commit("empty");
    let work = tempfile::tempdir().unwrap();
    let flink = format!("http://127.0.0.1:{}", free_port());
    let config = service_config(work.path(), &repo, &flink, "  max_connections: 600\n", "1s");
    let mut daemon =
        Daemon::start_with_open_files(&config, work.path().join("daemon.log"), DAEMON_OPEN_FILES);
    let status = daemon.wait_for_exit(
        "the daemon kept running with 600 connections of 1024 open files",
        Duration::from_secs(10),
    );
    let log = daemon.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("server.max_connections 600") && log.contains("1024 open files"),
        "{log}"
    );
}
