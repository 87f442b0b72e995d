//! `artifact_url` downloads from hostile servers on loopback (TLS with a throwaway CA, the fake
//! Flink): an endless `.sig`, a server trickling bytes, a downgrade redirect, a JAR too large and an
//! untrusted certificate all fail quickly, with bounded memory, and leave no partial file behind.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flink_gitops::testing::FakeFlink;
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

const JAR: &[u8] = b"PK\x03\x04 fake job";

/// What the artifact store answers for one path (anything else is a 404).
#[derive(Clone)]
enum Reply {
    File(Vec<u8>),
    /// Zeros without a length until the client hangs up (or `ENDLESS_CAP`, so old code cannot
    /// eat the test machine's memory).
    Endless,
    /// Declares 1,000 bytes and sends one per interval.
    Trickle(Duration),
    /// 302 to this URL.
    Redirect(String),
    /// Declares this many bytes and sends none.
    Declares(u64),
}

const ENDLESS_CAP: u64 = 128 * 1024 * 1024;

/// A hand-rolled HTTP/1.1 server (`Connection: close`, one request per connection) so the replies
/// can misbehave in ways a real server would not.
struct Store {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    /// Body bytes written to clients.
    sent: Arc<AtomicU64>,
    /// Request paths, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl Store {
    /// Serves over TLS with `dir/server.pem` when `tls` is given, else plain http.
    async fn start(tls: Option<&Path>) -> Store {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tls.map(acceptor);
        let store = Store {
            port,
            routes: Arc::default(),
            sent: Arc::default(),
            requests: Arc::default(),
        };
        let (routes, sent, requests) = (
            store.routes.clone(),
            store.sent.clone(),
            store.requests.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (routes, sent, requests) = (routes.clone(), sent.clone(), requests.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            // An untrusted client aborts the handshake: nothing to serve.
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                answer(stream, &routes, &sent, &requests).await;
                            }
                        }
                        None => answer(tcp, &routes, &sent, &requests).await,
                    }
                });
            }
        });
        store
    }

    fn route(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.to_string(), reply);
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    tls::openssl(
        dir,
        &[
            "x509",
            "-in",
            "server.pem",
            "-outform",
            "DER",
            "-out",
            "server.der",
        ],
    );
    tls::openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "server.key",
            "-outform",
            "DER",
            "-out",
            "server.key.der",
        ],
    );
    let certificate = std::fs::read(dir.join("server.der")).unwrap();
    let key = std::fs::read(dir.join("server.key.der")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    routes: &Mutex<HashMap<String, Reply>>,
    sent: &AtomicU64,
    requests: &Mutex<Vec<String>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) if head.len() < 8192 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    requests.lock().unwrap().push(path.clone());
    let reply = routes.lock().unwrap().get(&path).cloned();
    let status = |code: &str, extra: &str| {
        format!("HTTP/1.1 {code}\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    };
    let _ = match reply {
        None => {
            stream
                .write_all(&status("404 Not Found", "Content-Length: 0\r\n"))
                .await
        }
        Some(Reply::File(bytes)) => {
            let length = format!("Content-Length: {}\r\n", bytes.len());
            let _ = stream.write_all(&status("200 OK", &length)).await;
            sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            stream.write_all(&bytes).await
        }
        Some(Reply::Redirect(to)) => {
            let location = format!("Location: {to}\r\nContent-Length: 0\r\n");
            stream.write_all(&status("302 Found", &location)).await
        }
        Some(Reply::Declares(length)) => {
            let length = format!("Content-Length: {length}\r\n");
            stream.write_all(&status("200 OK", &length)).await
        }
        Some(Reply::Trickle(interval)) => {
            let _ = stream
                .write_all(&status("200 OK", "Content-Length: 1000\r\n"))
                .await;
            for _ in 0..1000 {
                if stream.write_all(b"P").await.is_err() || stream.flush().await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(interval).await;
            }
            Ok(())
        }
        Some(Reply::Endless) => {
            let _ = stream.write_all(&status("200 OK", "")).await;
            let zeros = vec![0u8; 64 * 1024];
            while sent.load(Ordering::SeqCst) < ENDLESS_CAP {
                if stream.write_all(&zeros).await.is_err() {
                    break;
                }
                sent.fetch_add(zeros.len() as u64, Ordering::SeqCst);
            }
            Ok(())
        }
    };
    let _ = stream.shutdown().await;
}

/// A spec repo, the fake Flink, a TLS artifact store and an agent config with a 2 s download deadline.
struct Setup {
    repo: SpecRepo,
    work: tempfile::TempDir,
    pki: tempfile::TempDir,
    store: Store,
    config: PathBuf,
    _flink: FakeFlink,
}

async fn setup() -> Setup {
    let flink = FakeFlink::new();
    let address = flink.serve().await.unwrap();
    let pki = tempfile::tempdir().unwrap();
    tls::make_pki(pki.path());
    let store = Store::start(Some(pki.path())).await;
    let repo = SpecRepo::new();
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &repo, &format!("http://{address}"));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "reconcile:\n  poll_interval: 100ms\n  retry_base: 10ms\n  retry_max: 20ms\n  download_timeout: 2s\n",
    );
    std::fs::write(&config, text).unwrap();
    Setup {
        repo,
        work,
        pki,
        store,
        config,
        _flink: flink,
    }
}

impl Setup {
    /// Commits a job fetching `url`, pinned to `JAR`'s digest.
    fn commit_job(&self, job_id: &str, url: &str) {
        self.repo.write(
            &format!("jobs/{job_id}.yaml"),
            format!(
                "job_id: {job_id}\njob_type: stream\nartifact_url: {url}\nartifact_signature: sha256:{}\ndeployment:\n  parallelism: 1\n  checkpoint_interval: 1000\nhealth:\n  stable_for: 0s\n  timeout: 10s\n",
                hex::encode(Sha256::digest(JAR))
            ),
        );
        self.repo.commit(&format!("{job_id} from {url}"));
    }

    /// Runs `apply` (trusting the store's CA when `trust_store` is set); returns the exit code, the
    /// job's report message and how long it took.
    async fn apply(&self, job_id: &str, trust_store: bool) -> (Option<i32>, String, Duration) {
        let started = Instant::now();
        let output = self.apply_output(trust_store, &[]).await;
        let took = started.elapsed();
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "apply printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        let message = outcome_of(&report, job_id)["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (output.status.code(), message, took)
    }

    fn assert_nothing_cached(&self) {
        assert_eq!(
            self.cached(),
            Vec::<String>::new(),
            "no partial download is left"
        );
    }

    /// Runs `apply --output json` with `extra` arguments, trusting the store's CA when `trust_store` is set.
    async fn apply_output(&self, trust_store: bool, extra: &[&str]) -> std::process::Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flink-gitops"));
        command
            .args([
                "apply",
                "-c",
                self.config.to_str().unwrap(),
                "--output",
                "json",
            ])
            .args(extra)
            .env_remove("FLINK_GITOPS_CONFIG");
        if trust_store {
            command.env("SSL_CERT_FILE", self.pki.path().join("ca.pem"));
        }
        command.output().await.unwrap()
    }

    /// Files in the artifact cache, partial downloads included.
    fn cached(&self) -> Vec<String> {
        match std::fs::read_dir(self.work.path().join("state/artifacts")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_signature_is_cut_off_at_its_limit_and_leaves_no_partial_file() {
    let s = setup().await;
    s.store.route("/job.jar", Reply::File(JAR.to_vec()));
    s.store.route("/job.jar.sig", Reply::Endless);
    let url = s.store.url("https", "/job.jar");
    s.commit_job("endless-sig", &url);

    let (code, message, took) = s.apply("endless-sig", true).await;
    assert_eq!(code, Some(1), "{message}");
    // What the agent took is what the socket buffers hold past its 16 KiB, not the whole stream.
    let sent = s.store.sent.load(Ordering::SeqCst);
    assert!(sent < 16 * 1024 * 1024, "the agent read {sent} bytes");
    assert!(
        message.contains(&format!("{url}.sig: larger than the limit of 16384 bytes")),
        "{message}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    s.assert_nothing_cached();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_server_fails_at_the_download_deadline_and_leaves_no_partial_file() {
    let s = setup().await;
    // 1,000 bytes at 4 a second would take four minutes; every read still comes well within
    // the 120 s read timeout, so only a deadline on the whole download stops it.
    s.store
        .route("/job.jar", Reply::Trickle(Duration::from_millis(250)));
    let url = s.store.url("https", "/job.jar");
    s.commit_job("trickle", &url);

    let (code, message, took) = s.apply("trickle", true).await;
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.contains(&format!(
            "{url}: not complete within the download deadline of 2s (reconcile.download_timeout)"
        )),
        "{message}"
    );
    assert!(
        s.store.sent.load(Ordering::SeqCst) > 0,
        "bytes were written"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    s.assert_nothing_cached();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_https_to_http_is_refused_and_one_to_https_is_followed() {
    let s = setup().await;
    let plain = Store::start(None).await;
    plain.route("/job.jar", Reply::File(JAR.to_vec()));
    s.store
        .route("/job.jar", Reply::Redirect(plain.url("http", "/job.jar")));
    s.commit_job("redirected", &s.store.url("https", "/job.jar"));

    let (code, message, _) = s.apply("redirected", true).await;
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.contains(&format!(
            "refused a downgrade redirect from https to {}",
            plain.url("http", "/job.jar")
        )),
        "{message}"
    );
    assert_eq!(
        plain.requests(),
        Vec::<String>::new(),
        "http was never asked"
    );
    s.assert_nothing_cached();

    // The same JAR behind an https → https redirect (a mirror, a CDN) is fetched.
    s.store.route("/job.jar", Reply::File(JAR.to_vec()));
    s.store.route(
        "/moved.jar",
        Reply::Redirect(s.store.url("https", "/job.jar")),
    );
    s.commit_job("redirected", &s.store.url("https", "/moved.jar"));
    let (code, message, _) = s.apply("redirected", true).await;
    assert_eq!(code, Some(0), "{message}");
    assert!(
        s.store.requests().contains(&"/job.jar".to_string()),
        "{:?}",
        s.store.requests()
    );
    assert_eq!(
        s.cached(),
        vec![format!("{}.jar", hex::encode(Sha256::digest(JAR)))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_or_a_jar_over_the_limit_leaves_no_partial_file() {
    let s = setup().await;
    s.store
        .route("/job.jar", Reply::Declares(2 * 1024 * 1024 * 1024));
    let url = s.store.url("https", "/job.jar");
    s.commit_job("too-large", &url);

    // Without the store's CA the TLS handshake fails before any byte of the JAR.
    let (code, message, _) = s.apply("too-large", false).await;
    assert_eq!(code, Some(1), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    s.assert_nothing_cached();

    // Trusted, but the JAR says it is 2 GiB: refused from its headers, nothing read or written.
    let (code, message, took) = s.apply("too-large", true).await;
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.contains(&format!("{url}: larger than the limit of 1073741824 bytes")),
        "{message}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    s.assert_nothing_cached();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_url_secret_stays_out_of_reports_logs_and_the_audit_log() {
    let s = setup().await;
    let secret = "Sig0nlyForTheStore";
    let url = format!(
        "{}?X-Amz-Credential=AKIA123&X-Amz-Signature={secret}",
        s.store.url("https", "/gone.jar")
    );
    s.commit_job("presigned", &url);
    let output = s.apply_output(true, &["-vv"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("HTTP 404"),
        "the failure is reported: {stdout}"
    );
    assert!(
        stdout.contains("X-Amz-Signature=***"),
        "the URL is still recognisable: {stdout}"
    );
    let audit = flink_gitops::state::StateStore::open_read_only(&s.work.path().join("state"))
        .unwrap()
        .unwrap()
        .audit_log()
        .unwrap();
    let audit_text = format!("{audit:?}");
    assert!(audit_text.contains("gone.jar"), "the download is audited");
    for (what, text) in [
        ("report", &*stdout),
        ("log", &*stderr),
        ("audit log", &audit_text),
    ] {
        assert!(
            !text.contains(secret),
            "the {what} holds the secret: {text}"
        );
        assert!(
            !text.contains("AKIA123"),
            "the {what} holds the credential: {text}"
        );
    }
}
