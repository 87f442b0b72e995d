//! Benchmark of a JAR upload: peak memory of the agent's Flink client while it uploads a large
//! JAR to a receiver that reads and discards it (so the figure is the client's own).
//!
//! Run: `cargo run --release --example bench_upload [MIB]` (default 512)

mod common;
use common::peak_rss_mib;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flink_gitops::flink::FlinkClient;

/// Answers one upload like Flink does, after reading the whole request and throwing it away.
fn discarding_receiver(received: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0u64;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut sink = [0u8; 64 * 1024];
            let mut left = length;
            while left > 0 {
                let n = reader.read(&mut sink).unwrap_or(0);
                if n == 0 {
                    break;
                }
                left -= n as u64;
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            let body = r#"{"filename":"/tmp/flink-web-upload/abc_job.jar","status":"success"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("big.jar");
    let mut file = std::fs::File::create(&jar).unwrap();
    let block = vec![0x5au8; 1024 * 1024];
    for _ in 0..mib {
        file.write_all(&block).unwrap();
    }
    drop(file);
    drop(block);
    let received = Arc::new(AtomicU64::new(0));
    let port = discarding_receiver(Arc::clone(&received));
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let client = FlinkClient::new(&base, Duration::from_secs(600)).unwrap();
    let before = peak_rss_mib();
    let started = Instant::now();
    let id = client.upload_jar(&jar).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    assert!(got > mib * 1024 * 1024, "the receiver got only {got} bytes");
    println!(
        "uploaded {mib} MiB JAR (id {id}, {got} bytes received) in {seconds:.2} s; peak RSS {before:.1} MiB before, {:.1} MiB after",
        peak_rss_mib()
    );
}
