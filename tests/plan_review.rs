//! `plan --base --head`: a change reviewed before it is merged, from a real signed git repository
//! through the real binary, offline. The markdown of each action kind is compared with a golden
//! file in `tests/data/plan-golden/` (`UPDATE_GOLDEN=1` rewrites them). Commit ids differ on every
//! run (each run signs with a fresh key), so the test replaces them with the fixture's names
//! (`<c0>`…) before comparing.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::*;

const SOURCES_SQL: &str = "CREATE TABLE sales (customer_id BIGINT, amount DECIMAL(10, 2)) WITH (\n  'connector' = 'datagen',\n  'rows-per-second' = '5'\n);\nCREATE TABLE revenue (customer_id BIGINT, sales BIGINT, total DECIMAL(10, 2)) WITH ('connector' = 'blackhole');\n";
const REVENUE_V1: &str = "INSERT INTO revenue\nSELECT customer_id, COUNT(*) AS sales, SUM(amount) AS total\nFROM sales\nGROUP BY customer_id;\n";
const REVENUE_V2: &str = "-- the same aggregate, read through a subquery\nINSERT INTO revenue\nSELECT customer_id, sales, total\nFROM (\n  SELECT customer_id, COUNT(*) AS sales, SUM(amount) AS total\n  FROM sales\n  GROUP BY customer_id\n);\n";

fn jar_spec(job_id: &str, jar: &str, parallelism: u32, extra: &str) -> String {
    format!(
        "job_id: {job_id}\njob_type: stream\nartifact_path: {jar}\ndeployment:\n  parallelism: {parallelism}\n  checkpoint_interval: 10000\n{extra}"
    )
}

/// The fixture: a signed history with one commit per action kind, and one unsigned commit.
struct History {
    repo: SpecRepo,
    work: tempfile::TempDir,
    /// `(name, commit id)`, oldest first.
    commits: Vec<(String, String)>,
}

impl History {
    fn new() -> History {
        let repo = SpecRepo::new();
        let mut commits = Vec::new();
        repo.write("artifacts/orders-v1.jar", b"PK\x03\x04 orders v1")
            .write("artifacts/orders-v2.jar", b"PK\x03\x04 orders v2")
            .write("artifacts/clicks.jar", b"PK\x03\x04 clicks")
            .write("artifacts/report.jar", b"PK\x03\x04 report")
            .write(
                "jobs/orders.yaml",
                jar_spec("orders", "artifacts/orders-v1.jar", 2, ""),
            )
            .write(
                "jobs/clicks.yaml",
                jar_spec("clicks", "artifacts/clicks.jar", 1, ""),
            )
            .write(
                "jobs/legacy.yaml",
                jar_spec("legacy", "artifacts/clicks.jar", 3, ""),
            )
            .write("pipelines/sources.sql", SOURCES_SQL)
            .write("pipelines/revenue.sql", REVENUE_V1)
            .write(
                "jobs/revenue.yaml",
                "job_id: revenue\njob_type: stream\nsql: [pipelines/sources.sql, pipelines/revenue.sql]\ndeployment: { parallelism: 1, checkpoint_interval: 10000 }\n",
            )
            .write(
                "jobs/report.yaml",
                "job_id: report\njob_type: batch\nartifact_path: artifacts/report.jar\ndeployment: { parallelism: 2 }\nbatch_config: { cron: \"0 2 * * *\", timezone: Europe/Berlin }\n",
            );
        commits.push(("c0".to_string(), repo.commit("five jobs")));
        repo.write(
            "jobs/fraud.yaml",
            jar_spec("fraud", "artifacts/clicks.jar", 2, ""),
        );
        commits.push(("c1".into(), repo.commit("fraud detection")));
        repo.write("pipelines/revenue.sql", REVENUE_V2);
        commits.push(("c2".into(), repo.commit("revenue: a subquery")));
        repo.write(
            "jobs/orders.yaml",
            jar_spec(
                "orders",
                "artifacts/orders-v1.jar",
                2,
                "monitoring: { alert_on_failure: false }\nhealth: { stable_for: 1m }\n",
            ),
        );
        commits.push(("c3".into(), repo.commit("orders: quieter alerts")));
        repo.write(
            "jobs/clicks.yaml",
            jar_spec("clicks", "artifacts/clicks.jar", 1, "state: suspended\n"),
        );
        commits.push(("c4".into(), repo.commit("clicks: pause")));
        repo.write(
            "jobs/clicks.yaml",
            jar_spec("clicks", "artifacts/clicks.jar", 1, ""),
        );
        commits.push(("c5".into(), repo.commit("clicks: resume")));
        repo.remove("jobs/legacy.yaml");
        commits.push(("c6".into(), repo.commit("legacy: retire")));
        repo.write(
            "jobs/orders.yaml",
            jar_spec(
                "orders",
                "artifacts/orders-v2.jar",
                4,
                "monitoring: { alert_on_failure: false }\nhealth: { stable_for: 1m }\nupgrade_mode: stateless\n",
            ),
        );
        repo.git(&["add", "-A"]);
        repo.git(&[
            "commit",
            "-q",
            "--no-gpg-sign",
            "-m",
            "orders v2 (committed without a signature)",
        ]);
        commits.push((
            "c7".into(),
            repo.git(&["rev-parse", "HEAD"]).trim().to_string(),
        ));
        repo.write(
            "jobs/fraud.yaml",
            jar_spec("fraud", "artifacts/clicks.jar", 3, ""),
        );
        commits.push(("c8".into(), repo.commit("fraud: one more worker")));
        let work = tempfile::tempdir().unwrap();
        std::fs::write(
            work.path().join("allowed_signers"),
            repo.signer.line("namespaces=\"git\""),
        )
        .unwrap();
        History {
            repo,
            work,
            commits,
        }
    }

    fn id(&self, name: &str) -> &str {
        &self.commits.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn signers(&self) -> PathBuf {
        self.work.path().join("allowed_signers")
    }

    /// `plan --base BASE --head HEAD --output FORMAT`: exit code and stdout.
    fn plan(&self, base: &str, head: &str, format: &str) -> (Option<i32>, String) {
        let output = flink_gitops(&[
            "plan",
            "--repo",
            self.repo.path().to_str().unwrap(),
            "--base",
            self.id(base),
            "--head",
            self.id(head),
            "--allowed-signers",
            self.signers().to_str().unwrap(),
            "--output",
            format,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// `text` with every commit id (whole or short) replaced by its fixture name.
    fn normalise(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (name, id) in &self.commits {
            text = text.replace(id, &format!("<{name}>"));
            text = text.replace(&id[..12], &format!("<{name}>"));
        }
        text
    }
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/plan-golden")
        .join(format!("{name}.md"))
}

/// Compares `actual` with the golden file `name`, or rewrites it with `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (UPDATE_GOLDEN=1 cargo test --test plan_review writes it)",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("golden", "actual")
            .to_string();
        panic!(
            "{} differs from the plan (UPDATE_GOLDEN=1 rewrites it after review):\n{diff}",
            path.display()
        );
    }
}

#[test]
fn the_markdown_of_every_action_kind_matches_its_golden_file() {
    let history = History::new();
    for (name, base, head) in [
        ("create", "c0", "c1"),
        ("upgrade-sql", "c1", "c2"),
        ("update-in-place", "c2", "c3"),
        ("suspend", "c3", "c4"),
        ("resume", "c4", "c5"),
        ("delete", "c5", "c6"),
    ] {
        let (code, markdown) = history.plan(base, head, "markdown");
        assert_eq!(code, Some(0), "{name}: {markdown}");
        check_golden(name, &history.normalise(&markdown));
    }
}

#[test]
fn a_range_with_an_unsigned_commit_is_refused_naming_it_and_still_planned() {
    let history = History::new();
    let unsigned = history.id("c7").to_string();
    let (code, markdown) = history.plan("c6", "c8", "markdown");
    assert_eq!(code, Some(1), "{markdown}");
    assert!(markdown.contains(&unsigned), "{markdown}");
    check_golden("refused-unsigned", &history.normalise(&markdown));

    let (code, text) = history.plan("c6", "c8", "text");
    assert_eq!(code, Some(1));
    assert!(
        text.contains(&format!("REFUSED (signature): commit {unsigned}")),
        "{text}"
    );
    assert!(text.contains("not signed"), "{text}");

    let (code, json) = history.plan("c6", "c8", "json");
    assert_eq!(code, Some(1));
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["refused"]["kind"], "signature");
    let verdicts: Vec<(&str, bool)> = json["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["commit"].as_str().unwrap(), c["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [(unsigned.as_str(), false), (history.id("c8"), true)]
    );
    // The plan is still there: what the range would do.
    let orders = json["review"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == "orders")
        .unwrap();
    assert_eq!(orders["action"], "upgrade");
    assert_eq!(orders["how"], "stateless");

    // The same range through `verify` fails the same commit.
    let verify = flink_gitops(&[
        "verify",
        "--repo",
        history.repo.path().to_str().unwrap(),
        "--allowed-signers",
        history.signers().to_str().unwrap(),
        "--from",
        history.id("c6"),
        "--to",
        history.id("c8"),
    ]);
    assert_eq!(verify.status.code(), Some(1));
}

#[test]
fn json_and_text_carry_the_same_plan() {
    let history = History::new();
    let (code, json) = history.plan("c0", "c6", "json");
    assert_eq!(code, Some(0), "{json}");
    let json: Value = serde_json::from_str(&json).unwrap();
    let actions = job_actions(&json["review"]["jobs"]);
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        actions,
        pairs(&[
            ("clicks", "unchanged"),
            ("fraud", "create"),
            ("legacy", "delete"),
            ("orders", "update"),
            ("report", "unchanged"),
            ("revenue", "upgrade"),
        ])
    );
    assert_eq!(json["signers"], serde_json::json!(["author@example.com"]));
    // Slots offline: orders 2 + clicks 1 + revenue 1 + fraud 2 after; legacy's 3 freed.
    assert_eq!(json["review"]["slots"]["needs"], 6);
    assert_eq!(json["review"]["slots"]["holds"], 7);
    assert_eq!(json["review"]["slots"]["released"], 3);
    let (_, text) = history.plan("c0", "c6", "text");
    assert!(
        text.contains("4 to change, 2 unchanged: clicks and report"),
        "{text}"
    );
    assert!(
        text.contains("+7 −3 lines in pipelines/revenue.sql"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_with_2() {
    let history = History::new();
    let repo = history.repo.path().to_str().unwrap();
    let no_signers = flink_gitops(&["plan", "--repo", repo, "--base", "HEAD~1"]);
    assert_eq!(no_signers.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_signers.stderr).contains("--allowed-signers"));
    let bad_rev = flink_gitops(&[
        "plan",
        "--repo",
        repo,
        "--base",
        "no-such-branch",
        "--allowed-signers",
        history.signers().to_str().unwrap(),
    ]);
    assert_eq!(bad_rev.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_rev.stderr).contains("`no-such-branch` is not a commit"));
    let markdown_without_range = flink_gitops(&["plan", "-c", "/nowhere.yaml", "-o", "markdown"]);
    assert_eq!(markdown_without_range.status.code(), Some(2));
}

#[test]
fn the_ci_example_is_valid_yaml_running_validate_verify_and_the_markdown_plan() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ci/github-pr-plan.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let workflow: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
    let steps = workflow["jobs"]["plan"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs.plan.steps in {workflow:#}"));
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    let runs_one = |needle: &str| runs.iter().any(|r| r.contains(needle));
    assert!(runs_one("flink-gitops validate"), "{runs:#?}");
    assert!(runs_one("flink-gitops verify"), "{runs:#?}");
    assert!(
        runs_one("flink-gitops plan") && runs_one("--base") && runs_one("--output markdown"),
        "{runs:#?}"
    );
    assert!(
        text.contains("<!-- flink-gitops-plan -->"),
        "the comment is found again by its marker"
    );
}
