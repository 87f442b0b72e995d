//! The slot budget: a revision whose jobs the cluster's task slots cannot hold is shown by `plan`
//! and refused by `apply` before any action (or applied with a warning under
//! `reconcile.slot_budget: warn`). Fake Flink with a set number of slots, and one real-Flink check.

mod support;

use flink_gitops::plan::flink_job_prefix;
use flink_gitops::state::StateStore;
use flink_gitops::testing::FakeFlink;
use serde_json::Value;
use support::*;

fn spec(job_id: &str, parallelism: u32) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\nartifact_path: artifacts/job.jar\ndeployment:\n  parallelism: {parallelism}\n  checkpoint_interval: 1000\nhealth:\n  stable_for: 0s\n  timeout: 2s\n"
    )
}

/// A fake cluster with 4 slots, running `orders` (parallelism 2) applied from a signed repo.
struct Setup {
    _runtime: tokio::runtime::Runtime,
    fake: FakeFlink,
    repo: SpecRepo,
    work: tempfile::TempDir,
    config: std::path::PathBuf,
    orders_jid: String,
}

impl Setup {
    fn new(extra_config: &str) -> Setup {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let fake = FakeFlink::new();
        fake.set_slots(4);
        let address = runtime.block_on(fake.serve()).unwrap();
        let repo = SpecRepo::new();
        repo.write("artifacts/job.jar", b"PK\x03\x04 job")
            .write("jobs/orders.yaml", spec("orders", 2));
        repo.commit("orders");
        let work = tempfile::tempdir().unwrap();
        let config = write_config(work.path(), &repo, &format!("http://{address}"));
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(extra_config);
        std::fs::write(&config, text).unwrap();
        let (code, report) = apply(&config);
        assert_eq!(code, Some(0), "{report:#}");
        let orders_jid = expect(&report, "orders", "create", "ok")["flink_job_id"]
            .as_str()
            .unwrap()
            .to_string();
        Setup {
            _runtime: runtime,
            fake,
            repo,
            work,
            config,
            orders_jid,
        }
    }

    /// orders 2 → 4 and a new job of 2: 6 slots where the cluster has 4.
    fn commit_too_much(&self) -> String {
        self.repo
            .write("jobs/orders.yaml", spec("orders", 4))
            .write("jobs/fraud.yaml", spec("fraud", 2));
        self.repo.commit("orders: 4 workers; fraud detection")
    }

    fn submissions(&self) -> u64 {
        self.fake
            .requests()
            .get("POST /jars/:id/run")
            .copied()
            .unwrap_or(0)
    }

    fn slot_audit(&self) -> Vec<(String, Option<String>)> {
        audit_log(self.work.path())
            .into_iter()
            .filter(|e| e.action == "slot-budget")
            .map(|e| (e.phase, e.result))
            .collect()
    }
}

const SHORT: &str = "needs 6 slots, the cluster has 4 (2 free); 2 short";

#[test]
fn a_revision_that_does_not_fit_is_shown_by_plan_and_refused_by_apply() {
    let setup = Setup::new("");
    let head = setup.commit_too_much();
    let config = setup.config.to_str().unwrap();

    // `plan` shows every job's slots and the shortfall, before anything is applied.
    let plan = flink_gitops_json(&["plan", "-c", config, "--output", "json"], 1);
    assert_eq!(
        plan["slots_refusal"],
        format!("not enough task slots: {SHORT}"),
        "{plan:#}"
    );
    let slots = &plan["slots"];
    assert_eq!(
        (&slots["holds"], &slots["needs"], &slots["shortfall"]),
        (&Value::from(2), &Value::from(6), &Value::from(2)),
        "{plan:#}"
    );
    let text = String::from_utf8_lossy(&flink_gitops(&["plan", "-c", config]).stdout).into_owned();
    assert!(text.contains(&format!("DOES NOT FIT: {SHORT}")), "{text}");
    assert!(
        text.contains(&format!(
            "apply would REFUSE this revision: not enough task slots: {SHORT}"
        )),
        "{text}"
    );
    assert!(text.contains("slots 2 → 4"), "{text}");

    // The range plan with the agent's config says the same, ready for the pull request.
    let range = flink_gitops(&[
        "plan",
        "--repo",
        setup.repo.path().to_str().unwrap(),
        "--base",
        "HEAD~1",
        "-c",
        config,
        "--output",
        "markdown",
    ]);
    let markdown = String::from_utf8_lossy(&range.stdout);
    if std::env::var("SHOW_MARKDOWN").is_ok() {
        eprintln!("{markdown}");
    }
    assert_eq!(range.status.code(), Some(1), "{markdown}");
    assert!(
        markdown.contains(&format!(
            "⛔ **`apply` would refuse this revision now:** not enough task slots: {SHORT}."
        )),
        "{markdown}"
    );
    assert!(
        markdown.contains("*Live plan: against Flink 2.3.0-fake"),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!("DOES NOT FIT: {SHORT}")),
        "{markdown}"
    );
    assert!(
        markdown.contains("| `fraud` | **create** | new | 0 → 2 | +2 slots, does not fit |"),
        "{markdown}"
    );

    // `apply` refuses the revision before any action: nothing submitted, orders runs on.
    let before = setup.submissions();
    for _ in 0..2 {
        let (code, report) = apply(&setup.config);
        assert_eq!(code, Some(1), "{report:#}");
        assert_eq!(report["refused"][0], "slots", "{report:#}");
        assert_eq!(
            report["refused"][1],
            format!("not enough task slots: {SHORT}"),
            "{report:#}"
        );
        assert_eq!(report["jobs"], serde_json::json!([]));
    }
    assert_eq!(setup.submissions(), before, "no job was submitted");
    assert_eq!(
        setup.fake.jobs_with_prefix(&flink_job_prefix("orders")),
        [(setup.orders_jid.clone(), "RUNNING".to_string())]
    );
    assert!(
        setup
            .fake
            .jobs_with_prefix(&flink_job_prefix("fraud"))
            .is_empty()
    );
    // Recorded like other refusals: the revision's outcome, and one audit entry for two passes.
    let store = StateStore::open_read_only(&setup.work.path().join("state"))
        .unwrap()
        .unwrap();
    let revision = store.revision(&head).unwrap().unwrap();
    assert_eq!(revision.outcome.as_deref(), Some("refused"));
    assert_eq!(
        revision.detail.as_deref(),
        Some(format!("not enough task slots: {SHORT}").as_str())
    );
    assert_eq!(
        setup.slot_audit(),
        [
            ("intent".to_string(), None),
            ("outcome".to_string(), Some("refused".to_string()))
        ]
    );
    let text = String::from_utf8_lossy(
        &flink_gitops(&["apply", "-c", setup.config.to_str().unwrap()]).stdout,
    )
    .into_owned();
    assert!(
        text.contains(&format!("REFUSED (slots): not enough task slots: {SHORT}")),
        "{text}"
    );

    // Once the cluster has the slots, the same revision is applied.
    setup.fake.set_slots(6);
    let (code, report) = apply(&setup.config);
    assert_eq!(code, Some(0), "{report:#}");
    expect(&report, "orders", "upgrade", "ok");
    expect(&report, "fraud", "create", "ok");
}

#[test]
fn under_warn_the_revision_is_applied_with_a_warning() {
    let setup = Setup::new("reconcile:\n  slot_budget: warn\n");
    setup.commit_too_much();
    let config = setup.config.to_str().unwrap();
    let plan = flink_gitops(&["plan", "-c", config]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "apply would warn (reconcile.slot_budget: warn): not enough task slots: {SHORT}"
        )),
        "{text}"
    );
    let before = setup.submissions();
    let (_, report) = apply(&setup.config);
    assert!(report["refused"].is_null(), "{report:#}");
    assert_eq!(
        report["warnings"],
        serde_json::json!([format!("not enough task slots: {SHORT}")]),
        "{report:#}"
    );
    assert!(setup.submissions() > before, "the jobs were submitted");
    assert_eq!(
        setup.slot_audit(),
        [
            ("intent".to_string(), None),
            ("outcome".to_string(), Some("warned".to_string()))
        ]
    );
}

#[test]
fn an_unknown_slot_budget_mode_is_a_config_error() {
    let work = tempfile::tempdir().unwrap();
    let repo = SpecRepo::new();
    let config = write_config(work.path(), &repo, "http://127.0.0.1:9");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("reconcile:\n  slot_budget: sometimes\n");
    std::fs::write(&config, text).unwrap();
    let output = flink_gitops(&["plan", "-c", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("`reconcile.slot_budget`: `sometimes`: expected `enforce` or `warn`"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Real Flink: a parallelism above the cluster's slots (read first, whatever else runs on it)
/// is reported by `plan` and refused by `apply` with the numbers; no Flink job is submitted.
#[cfg(feature = "real-flink")]
#[test]
fn real_flink_a_parallelism_above_the_clusters_slots_is_refused_before_apply() {
    let total = flink_json("/overview")["slots-total"]
        .as_u64()
        .expect("slots-total in /overview") as u32;
    let too_many = total + 1;
    let fixture = JobFixture::new(
        "slots",
        |job| {
            counter_spec(job, "artifacts/counter-v1.jar", "")
                .replace("parallelism: 1", &format!("parallelism: {too_many}"))
        },
        "a job wider than the cluster",
    );
    let config = fixture.config.to_str().unwrap();
    let too_large = format!(
        "{} needs {too_many} slots at once, more than the cluster's {total}",
        fixture.job
    );

    let plan = flink_gitops_json(&["plan", "-c", config, "--output", "json"], 1);
    assert_eq!(plan["slots"]["needs"], too_many, "{plan:#}");
    assert_eq!(
        plan["slots"]["too_large"],
        serde_json::json!([[fixture.job, too_many]]),
        "{plan:#}"
    );
    let text = String::from_utf8_lossy(&flink_gitops(&["plan", "-c", config]).stdout).into_owned();
    assert!(text.contains(&too_large), "{text}");

    let (code, report) = apply(&fixture.config);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["refused"][0], "slots", "{report:#}");
    let message = report["refused"][1].as_str().unwrap();
    assert!(message.contains(&too_large), "{message}");
    assert!(
        message.contains(&format!("needs {too_many} slots, the cluster has {total}")),
        "{message}"
    );
    assert!(
        cluster_jobs_with_prefix(&flink_job_prefix(&fixture.job)).is_empty(),
        "no Flink job was submitted"
    );
}
