//! Alerts: events of a pass (deployed, rolled back with the root cause, commit refused, …) go to
//! an outbox in SQLite, then to each configured target that wants them: a generic webhook (JSON,
//! signed with HMAC-SHA256) or a Slack-compatible incoming webhook (readable text). Delivery is
//! retried with backoff, survives restarts, and carries an event id receivers can deduplicate on.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::Serialize;

use crate::plan::Action;
use crate::reconcile::{ApplyReport, Outcome};

/// The events a target may ask for.
pub const EVENTS: &[&str] = &[
    "deployed",
    "upgraded",
    "updated",
    "rolled_back",
    "failed",
    "blocked",
    "suspended",
    "deleted",
    "commit_refused",
];

/// The header carrying the body's HMAC-SHA256 (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "X-Flink-Gitops-Signature";
/// The header carrying the event id (the same on every retry).
pub const EVENT_ID_HEADER: &str = "X-Flink-Gitops-Event";

/// How a target wants its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// JSON body, signed with the key from the secret file.
    Webhook {
        /// The key.
        secret_file: std::path::PathBuf,
    },
    /// `{"text": …}` for Slack-compatible incoming webhooks (the URL is the secret).
    Slack,
    /// A command run with the event as JSON on stdin (mail, paging tools); exit 0 is delivered.
    Exec {
        /// The program and its arguments (no shell).
        command: Vec<String>,
    },
}

/// One configured target (`notify:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its name, unique, used in metrics and the outbox.
    pub name: String,
    /// Where to POST (unused by `exec` targets).
    pub url: url::Url,
    /// What it is.
    pub kind: TargetKind,
    /// The events it wants (all when the config names none).
    pub events: Vec<String>,
}

/// One event of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// One of [`EVENTS`].
    pub event: String,
    /// The job, for job events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The revision applied or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// What happened, in words.
    pub message: String,
    /// Flink's root cause, when something failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<String>,
    /// The Flink job concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flink_job_id: Option<String>,
    /// One condition is reported once: the same key is not enqueued again.
    #[serde(skip)]
    pub dedupe_key: String,
}

/// The events a pass report holds. A job whose spec sets `monitoring.alert_on_failure: false`
/// (in `desired`) raises no failure events (rolled back, failed, blocked).
pub fn events_of(report: &ApplyReport, desired: Option<&crate::spec::DesiredState>) -> Vec<Event> {
    let revision = report.revision.clone();
    let mut events = Vec::new();
    if let Some((kind, message)) = &report.refused {
        events.push(Event {
            event: "commit_refused".into(),
            job_id: None,
            revision: revision.clone(),
            message: format!("{kind}: {message}"),
            root_cause: None,
            flink_job_id: None,
            dedupe_key: format!("commit_refused:{}", revision.as_deref().unwrap_or_default()),
        });
    }
    for job in &report.jobs {
        let event = match (job.outcome, job.action) {
            (Outcome::RolledBack, _) => "rolled_back",
            (Outcome::Failed, _) => "failed",
            (Outcome::Blocked, _) => "blocked",
            (Outcome::Ok, Action::Create) => "deployed",
            (Outcome::Ok, Action::Upgrade | Action::Resume | Action::Restart) => "upgraded",
            (Outcome::Ok, Action::Update) => "updated",
            (Outcome::Ok, Action::Suspend) => "suspended",
            (Outcome::Ok, Action::Delete) => "deleted",
            _ => continue,
        };
        let quiet = desired
            .and_then(|d| d.jobs.get(&job.job_id))
            .is_some_and(|j| !j.spec.alert_on_failure);
        if quiet && matches!(event, "rolled_back" | "failed" | "blocked") {
            continue;
        }
        // A job that stays blocked or failing says so every pass: one alert per condition.
        let condition = crate::util::sha256_hex(
            format!(
                "{}|{}|{}",
                job.message,
                job.root_cause.as_deref().unwrap_or_default(),
                job.flink_job_id.as_deref().unwrap_or_default()
            )
            .as_bytes(),
        );
        events.push(Event {
            event: event.into(),
            job_id: Some(job.job_id.clone()),
            revision: revision.clone(),
            message: job.message.clone(),
            root_cause: job.root_cause.clone(),
            flink_job_id: job.flink_job_id.clone(),
            dedupe_key: format!("{event}:{}:{}", job.job_id, &condition[..16]),
        });
    }
    events
}

/// The body a target gets for an event stored as `json` (an [`Event`]) with outbox id `id`.
pub fn body_for(target: &Target, id: i64, json: &str) -> String {
    let event: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    match target.kind {
        TargetKind::Webhook { .. } | TargetKind::Exec { .. } => {
            let mut body = event;
            body["id"] = serde_json::json!(id);
            body.to_string()
        }
        TargetKind::Slack => {
            let field = |k: &str| event[k].as_str().unwrap_or_default().to_string();
            let mut text = format!("flink-gitops: {}", field("event").replace('_', " "));
            if !field("job_id").is_empty() {
                text.push_str(&format!(" {}", field("job_id")));
            }
            text.push_str(&format!(": {}", field("message")));
            if !field("root_cause").is_empty() {
                text.push_str(&format!("\nroot cause: {}", field("root_cause")));
            }
            serde_json::json!({ "text": text }).to_string()
        }
    }
}

/// `sha256=<hex>` of `body` under `key`.
pub fn signature(key: &[u8], body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before try `attempts + 1`: 2^attempts seconds, at most 10 minutes.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.min(10)).min(600))
}

/// How long an `exec` target's command may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one body; `Err` says why it did not arrive.
pub async fn send(
    client: &reqwest::Client,
    target: &Target,
    id: i64,
    body: String,
) -> Result<(), String> {
    if let TargetKind::Exec { command } = &target.kind {
        return run_command(command, id, body).await;
    }
    let mut request = client
        .post(target.url.clone())
        .header("Content-Type", "application/json")
        .header(EVENT_ID_HEADER, id.to_string());
    if let TargetKind::Webhook { secret_file } = &target.kind {
        let key = crate::util::read_file_limited(secret_file, 64 * 1024)
            .map_err(|e| format!("{}: {e}", secret_file.display()))?;
        let key = String::from_utf8_lossy(&key).trim().as_bytes().to_vec();
        request = request.header(SIGNATURE_HEADER, signature(&key, &body));
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| crate::util::redact_urls(&crate::util::error_chain(&e)))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}

async fn run_command(command: &[String], id: i64, body: String) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let (program, args) = command.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("FLINK_GITOPS_EVENT_ID", id.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .await
            .map_err(|e| format!("{program}: stdin: {e}"))?;
    }
    let output = tokio::time::timeout(EXEC_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{program} did not finish within {} s",
                EXEC_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(format!("{program} exited with {}: {last}", output.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exec_target_gets_the_event_on_stdin_and_its_exit_status_counts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("got");
        let target = |script: String| Target {
            name: "pager".into(),
            url: url::Url::parse("exec:pager").unwrap(),
            kind: TargetKind::Exec {
                command: vec!["sh".into(), "-c".into(), script],
            },
            events: vec!["failed".into()],
        };
        let client = reqwest::Client::new();
        let ok = target(format!(
            "cat > {} && echo \"$FLINK_GITOPS_EVENT_ID\" >> {}",
            file.display(),
            file.display()
        ));
        let body = body_for(&ok, 7, r#"{"event":"failed","message":"m"}"#);
        send(&client, &ok, 7, body).await.unwrap();
        let got = std::fs::read_to_string(&file).unwrap();
        assert!(
            got.contains(r#""event":"failed""#)
                && got.contains(r#""id":7"#)
                && got.ends_with("7\n"),
            "{got}"
        );
        let failing = target("echo 'pager down' >&2; exit 3".into());
        let error = send(&client, &failing, 8, "{}".into()).await.unwrap_err();
        assert!(error.contains("pager down"), "{error}");
    }

    #[test]
    fn alert_on_failure_false_silences_the_jobs_failure_events() {
        use crate::reconcile::JobOutcome;
        let spec = |extra: &str| {
            crate::spec::parse_spec(
                "jobs/o.yaml",
                &format!("job_id: orders\njob_type: stream\nartifact_path: a.jar\n{extra}"),
            )
            .unwrap()
        };
        let desired = |job| crate::spec::DesiredState {
            jobs: [(
                "orders".to_string(),
                crate::spec::DesiredJob {
                    spec: job,
                    file: crate::spec::RepoPath::parse("jobs/o.yaml").unwrap(),
                    artifact_content: String::new(),
                    program: None,
                    secrets: Default::default(),
                },
            )]
            .into(),
        };
        let plan = crate::plan::JobPlan {
            job_id: "orders".into(),
            action: Action::Upgrade,
            reasons: vec![],
            flink_job_id: None,
            flink_state: None,
            phase: "steady".into(),
            kind: None,
            source_diff: None,
            warnings: vec![],
        };
        let report = ApplyReport {
            jobs: vec![JobOutcome::new(&plan, Outcome::RolledBack, "rolled back")],
            ..ApplyReport::default()
        };
        let loud = desired(spec(""));
        assert_eq!(events_of(&report, Some(&loud)).len(), 1);
        let quiet = desired(spec("monitoring: { alert_on_failure: false }\n"));
        assert!(events_of(&report, Some(&quiet)).is_empty());
    }

    #[test]
    fn slack_gets_readable_text() {
        let slack = Target {
            name: "chat".into(),
            url: url::Url::parse("https://hooks.slack.com/services/x").unwrap(),
            kind: TargetKind::Slack,
            events: vec![],
        };
        let body = body_for(
            &slack,
            1,
            r#"{"event":"rolled_back","job_id":"orders","message":"rolled back","root_cause":"boom"}"#,
        );
        let text: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            text["text"],
            "flink-gitops: rolled back orders: rolled back\nroot cause: boom"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(20), Duration::from_secs(600));
    }
}

#[cfg(test)]
mod outbox_tests {
    use crate::state::StateStore;

    #[test]
    fn an_event_is_queued_once_per_condition_and_counted_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        let queue = |key: &str| {
            store
                .enqueue_event("blocked", Some("orders"), key, "{}", &["ops", "chat"])
                .unwrap()
        };
        assert!(queue("blocked:orders:1"));
        assert!(!queue("blocked:orders:1"), "the same condition again");
        assert!(queue("blocked:orders:2"));
        let due = store.due_deliveries(0, 10).unwrap();
        assert_eq!(due.len(), 4);
        store.record_delivery(&due[0], Ok(())).unwrap();
        store
            .record_delivery(&due[1], Err(("answered 500", i64::MAX)))
            .unwrap();
        let mut counts = store.delivery_counts().unwrap();
        counts.sort();
        // chat: one delivered, one waiting; ops: one failed try, both waiting (or the reverse).
        let total: Vec<(i64, i64, i64)> = counts.iter().map(|(_, d, w, f)| (*d, *w, *f)).collect();
        assert_eq!(total.iter().map(|c| c.0).sum::<i64>(), 1);
        assert_eq!(total.iter().map(|c| c.1).sum::<i64>(), 3);
        assert_eq!(total.iter().map(|c| c.2).sum::<i64>(), 1);
        assert_eq!(
            store.due_deliveries(0, 10).unwrap().len(),
            2,
            "the failed one waits"
        );
    }
}
