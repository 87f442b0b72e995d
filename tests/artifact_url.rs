//! `artifact_url` JARs against the real cluster: fetched, checked against the spec's sha256 pin and
//! their detached signature, and only then uploaded; a tampered or unsigned JAR never reaches Flink.
#![cfg(feature = "real-flink")]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::*;

fn url_spec(job_id: &str, url: &str, sha256: &str, extra: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: batch\nartifact_url: {url}\nartifact_signature: sha256:{sha256}\ndeployment:\n  parallelism: 1\nargs: [\"--name\", \"{job_id}\", \"--records\", \"100\"]\n{extra}"
    )
}

fn audit_results(work: &Path, action: &str) -> Vec<(String, Option<String>)> {
    flink_gitops::state::StateStore::open_read_only(&work.join("state"))
        .unwrap()
        .unwrap()
        .audit_log()
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action && e.phase == "outcome")
        .map(|e| (e.result.unwrap_or_default(), e.detail))
        .collect()
}

#[test]
fn a_signed_pinned_url_jar_runs_and_a_tampered_or_unsigned_one_is_refused() {
    let job = unique("url");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    let store = tempfile::tempdir().unwrap();
    let jar = store.path().join("batch-report.jar");
    let bytes = std::fs::read(example_jar("batch-report.jar")).unwrap();
    std::fs::write(&jar, &bytes).unwrap();
    let signature = repo.signer.sign(&jar, "flink-gitops-artifact", &[]);
    std::fs::write(store.path().join("batch-report.jar.sig"), signature).unwrap();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let url = format!("file://{}", jar.display());
    let spec_path = format!("jobs/{job}.yaml");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);

    // A pin that is not the file's digest: refused before anything is uploaded.
    let wrong = "0".repeat(64);
    repo.write(&spec_path, url_spec(&job, &url, &wrong, ""));
    repo.commit("report from the artifact store, wrong pin");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let refused = outcome_of(&report, &job);
    // A wrong pin counts toward the job's failure limit; nothing runs meanwhile.
    assert_eq!(refused["outcome"], "retrying", "{report:#}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("sha256 is {sha256}, but the spec pins {wrong}")),
        "{message}"
    );
    assert_eq!(
        audit_results(work.path(), "upload"),
        vec![],
        "nothing uploaded"
    );

    // The right pin and a trusted signature: downloaded, uploaded, run to FINISHED.
    repo.write(&spec_path, url_spec(&job, &url, &sha256, ""));
    repo.commit("the right pin");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let downloads = audit_results(work.path(), "download");
    assert_eq!(downloads.last().unwrap().0, "ok", "{downloads:?}");
    assert!(
        downloads
            .last()
            .unwrap()
            .1
            .as_deref()
            .unwrap()
            .contains("author@example.com"),
        "the signer is recorded: {downloads:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, report) = apply(&config);
        let message = outcome_of(&report, &job)["message"]
            .as_str()
            .unwrap()
            .to_string();
        if message.contains("FINISHED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The spec demands a signature and the store's .sig is gone: a new digest is refused.
    let mut changed = bytes.clone();
    changed.extend_from_slice(b"\0");
    let unsigned = store.path().join("unsigned.jar");
    std::fs::write(&unsigned, &changed).unwrap();
    let unsigned_sha = hex::encode(Sha256::digest(&changed));
    repo.write(
        &spec_path,
        url_spec(
            &job,
            &format!("file://{}", unsigned.display()),
            &unsigned_sha,
            "security:\n  artifact_verification: true\n",
        ),
    );
    repo.commit("an unsigned build");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let message = outcome_of(&report, &job)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("no detached signature") && message.contains("artifact_verification"),
        "{message}"
    );
    assert!(
        !work
            .path()
            .join(format!("state/artifacts/{unsigned_sha}.jar"))
            .exists(),
        "a refused JAR is not cached"
    );
}

#[test]
fn an_https_artifact_url_is_fetched_only_from_a_trusted_server() {
    let job = unique("https");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    let store = tempfile::tempdir().unwrap();
    support::tls::make_pki(store.path());
    let bytes = std::fs::read(example_jar("batch-report.jar")).unwrap();
    let jar = store.path().join("batch-report.jar");
    std::fs::write(&jar, &bytes).unwrap();
    let signature = repo.signer.sign(&jar, "flink-gitops-artifact", &[]);
    std::fs::write(store.path().join("batch-report.jar.sig"), signature).unwrap();
    let (_server, port) = support::tls::serve(store.path(), false);
    let url = format!("https://127.0.0.1:{port}/batch-report.jar");
    repo.write(
        &format!("jobs/{job}.yaml"),
        url_spec(&job, &url, &hex::encode(Sha256::digest(&bytes)), ""),
    );
    repo.commit("report from an https artifact store");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);
    let apply_trusting = |ca: Option<&Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flink-gitops"));
        command.args(["apply", "-c", config.to_str().unwrap(), "--output", "json"]);
        if let Some(ca) = ca {
            command.env("SSL_CERT_FILE", ca);
        }
        let output = command.output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (output.status.code(), report)
    };

    // The server's CA is not in the trust store: nothing is downloaded.
    let (code, report) = apply_trusting(None);
    assert_eq!(code, Some(1), "{report:#}");
    let message = outcome_of(&report, &job)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_eq!(audit_results(work.path(), "upload"), vec![]);

    // Trusted (SSL_CERT_FILE is how the system store is pointed elsewhere): fetched, verified, run.
    let (code, report) = apply_trusting(Some(&store.path().join("ca.pem")));
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        outcome_of(&report, &job)["message"]
            .as_str()
            .unwrap()
            .contains("run started"),
        "{report:#}"
    );
    let downloads = audit_results(work.path(), "download");
    assert_eq!(downloads.last().unwrap().0, "ok", "{downloads:?}");
    assert!(
        downloads
            .last()
            .unwrap()
            .1
            .as_deref()
            .unwrap()
            .contains("author@example.com"),
        "the .sig came over https too: {downloads:?}"
    );
}
