//! `flink.tls` against a real TLS server that requires a client certificate (`openssl s_server`),
//! with a CA and certificates made by `openssl` in the test: mutual TLS works, and a missing client
//! certificate or an untrusted server is an error, never a silent plain-text fallback.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flink_gitops::config::Config;
use flink_gitops::flink::FlinkClient;

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for the TLS tests (scripts/test installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    key(dir, "ca.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=flink-gitops test CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ],
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ] {
        key(dir, &format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("{san}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server -WWW` serves files from `dir` over TLS and insists on a client certificate.
fn serve(dir: &Path) -> (Server, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-WWW",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-CAfile",
            "ca.pem",
            "-Verify",
            "1",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

fn config(dir: &Path, port: u16, tls: &str) -> Config {
    std::fs::write(dir.join("allowed_signers"), "").unwrap();
    let text = format!(
        "repo:\n  url: {repo}\ntrust:\n  allowed_signers: allowed_signers\nflink:\n  url: https://127.0.0.1:{port}\n  request_timeout: 5s\n{tls}state:\n  dir: state\n",
        repo = dir.display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

fn overview(config: &Config) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = FlinkClient::from_config(&config.flink)
            .map_err(|e| e.to_string())?
            .with_retry_attempts(1);
        client
            .overview()
            .await
            .map(|o| o.flink_version)
            .map_err(|e| format!("{e:#}"))
    })
}

#[test]
fn mutual_tls_with_files_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    std::fs::write(
        dir.path().join("overview"),
        r#"{"taskmanagers":1,"slots-total":4,"slots-available":4,"jobs-running":0,"flink-version":"2.3.0"}"#,
    )
    .unwrap();
    let (_server, port) = serve(dir.path());

    let mutual = config(
        dir.path(),
        port,
        "  tls:\n    ca_file: ca.pem\n    cert_file: client.pem\n    key_file: client.key\n",
    );
    assert_eq!(overview(&mutual), Ok("2.3.0".to_string()));

    let no_client_certificate = config(dir.path(), port, "  tls:\n    ca_file: ca.pem\n");
    let error =
        overview(&no_client_certificate).expect_err("the server requires a client certificate");
    assert!(error.contains("CertificateRequired"), "{error}");

    let untrusted_server = config(
        dir.path(),
        port,
        "  tls:\n    cert_file: client.pem\n    key_file: client.key\n",
    );
    let error =
        overview(&untrusted_server).expect_err("the test CA is not trusted without ca_file");
    assert!(error.contains("UnknownIssuer"), "{error}");
}
