//! `flink.tls` against a real TLS server that requires a client certificate (`openssl s_server`),
//! with a CA and certificates made by `openssl` in the test: mutual TLS works, and a missing client
//! certificate or an untrusted server is an error, never a silent plain-text fallback.

mod support;

use std::path::Path;

use flink_gitops::config::Config;
use flink_gitops::flink::FlinkClient;
use support::tls::{make_pki, serve};

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
    let (_server, port) = serve(dir.path(), true);

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
