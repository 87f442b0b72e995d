//! A spec the agent cannot name (a non-UTF-8 file name, a `\` in it, or a folder so named) is an
//! error that names it, never a silent skip that would read as deleting the job (issue 11).
//! Checked through `validate` (a checkout) and `plan` (the git objects of the head). No Flink needed.

mod support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use support::*;

const SPEC: &str = "job_id: orders\njob_type: stream\nartifact_path: artifacts/a.jar\ndeployment: { parallelism: 1 }\n";

fn write_raw(dir: &Path, name: &[u8], content: &str) {
    let path = dir.join(OsStr::from_bytes(name));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn validate(dir: &Path) -> (Option<i32>, String) {
    let output = flink_gitops(&["validate", dir.to_str().unwrap()]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn validate_names_every_spec_it_cannot_read() {
    for (name, reason) in [
        (&b"jobs/ord\xffers.yaml"[..], "not UTF-8"),
        (&b"jobs/or\\ders.yaml"[..], "not a usable path"),
        (&b"jobs/te\xffam/orders.yaml"[..], "not UTF-8"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_raw(dir.path(), b"artifacts/a.jar", "PK");
        write_raw(dir.path(), name, SPEC);
        let (code, stdout) = validate(dir.path());
        assert_eq!(code, Some(1), "{}: {stdout}", String::from_utf8_lossy(name));
        assert!(stdout.contains(reason), "{stdout}");
        assert!(stdout.contains("rename it"), "{stdout}");
        assert!(!stdout.contains("ok: 0 job spec(s) valid"), "{stdout}");
    }
    // A non-spec file with an odd name (a README, an image) is not a spec: it is left alone.
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path(), b"artifacts/a.jar", "PK");
    write_raw(dir.path(), b"jobs/orders.yaml", SPEC);
    write_raw(dir.path(), b"jobs/notes-\xff.txt", "x");
    let (code, stdout) = validate(dir.path());
    assert_eq!(code, Some(0), "{stdout}");
}

#[test]
fn plan_refuses_a_head_whose_spec_was_renamed_to_an_unusable_name() {
    let repo = SpecRepo::new();
    repo.write("artifacts/a.jar", b"PK\x03\x04 jar")
        .write("jobs/orders.yaml", SPEC);
    repo.commit("orders");
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &repo, "http://127.0.0.1:9");
    repo.remove("jobs/orders.yaml");
    write_raw(repo.path(), b"jobs/ord\xffers.yaml", SPEC);
    repo.commit("rename orders to a non-UTF-8 name");
    let output = flink_gitops(&["plan", "-c", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("REFUSED") && stdout.contains("not UTF-8"),
        "{stdout}"
    );
    assert!(
        !stdout
            .lines()
            .any(|l| l.trim_start().starts_with("delete ")),
        "never read as a deletion: {stdout}"
    );
}
