//! A PyFlink job through `flink-gitops apply` on the real Flink 2.3 cluster: its files are read
//! from the signed commit and travel in the run request; it deploys, upgrades through a savepoint
//! that its keyed state is restored from, and a version that raises while it builds its job is
//! rolled back with the Python exception's last line as the root cause.
#![cfg(feature = "real-flink")]

mod support;

use std::path::Path;

use flink_gitops::reconcile::restore::same_path as same_savepoint;
use support::*;

fn python_spec(job_id: &str, args: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\npython:\n  entry: py/counter.py\n  files: [py/lib]\nargs: [{args}]\ndeployment:\n  parallelism: 1\n  checkpoint_interval: 1000\n  restart_strategy: fixed-delay\n  max_restart_attempts: 2\n  restart_delay: 500\nhealth:\n  stable_for: 3s\n  max_restarts: 0\n  timeout: 90s\n"
    )
}

#[test]
fn a_pyflink_job_deploys_upgrades_with_its_state_and_a_python_error_is_rolled_back() {
    let job = unique("py-life");
    let _cleanup = CancelOnDrop(vec![job.clone()]);
    let repo = SpecRepo::new();
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo/jobs-src/py");
    for file in ["counter.py", "lib/__init__.py", "lib/clicks.py"] {
        repo.write(
            &format!("py/{file}"),
            std::fs::read(sources.join(file)).unwrap(),
        );
    }
    let spec_path = format!("jobs/{job}.yaml");
    repo.write(&spec_path, python_spec(&job, "\"--rate\", \"20\""));
    repo.commit("a click counter in Python");
    let work = tempfile::tempdir().unwrap();
    let config = write_apply_config(work.path(), &repo);
    add_runner(&config);

    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, &job, "create", "ok");
    let v1_jid = one_running(&job);
    assert_eq!(
        flink_json(&format!("/jobs/{v1_jid}"))["name"],
        job.as_str(),
        "a Python job is named after its spec"
    );

    // v2 prints another format from the same keyed state: an upgrade through a savepoint
    repo.write(
        &spec_path,
        python_spec(&job, "\"--rate\", \"20\", \"--format\", \"v2\""),
    );
    repo.commit("v2 output");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(0), "{report:#}");
    let upgraded = expect(&report, &job, "upgrade", "ok");
    let v2_jid = one_running(&job);
    assert!(same_savepoint(
        &restored_from(&v2_jid).unwrap(),
        upgraded["savepoint"].as_str().unwrap()
    ));

    // a changed helper module that raises while the job is built: rolled back, with Python's words
    let broken = std::fs::read_to_string(sources.join("lib/clicks.py"))
        .unwrap()
        .replace(
            "    if rate <= 0:",
            "    if rate > 0:\n        raise ValueError(f\"rates above zero are not allowed today: {rate}\")\n    if rate <= 0:",
        );
    repo.write("py/lib/clicks.py", broken);
    repo.commit("a helper that refuses every rate");
    let (code, report) = apply(&config);
    assert_eq!(code, Some(1), "{report:#}");
    let rolled = expect(&report, &job, "upgrade", "rolled_back");
    assert!(
        rolled["root_cause"]
            .as_str()
            .unwrap()
            .starts_with("ValueError: rates above zero are not allowed today: 20"),
        "{rolled:#}"
    );
    let back_jid = one_running(&job);
    assert!(same_savepoint(
        &restored_from(&back_jid).unwrap(),
        rolled["savepoint"].as_str().unwrap()
    ));
    let row = status_row(&config, &job);
    assert_eq!(row["kind"], "python", "{row:#}");
}
