//! Alerts: events of a pass (deployed, rolled back with the root cause, commit refused, …) go to
//! an outbox in SQLite, then to each configured target that wants them: a generic webhook (JSON,
//! signed with HMAC-SHA256) or a Slack-compatible incoming webhook (readable text). Delivery is
//! retried with backoff, survives restarts, and carries an event id receivers can deduplicate on.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde_json::Value;

use crate::reconcile::{ApplyReport, Outcome};

/// The events a target may ask for. A condition (failure, backpressure, checkpoints, the
/// cluster) is alerted once while it lasts; when it clears, the targets that got the alert get a
/// `resolved` event naming it.
pub const EVENTS: &[&str] = &[
    "deployed",
    "upgraded",
    "updated",
    "resumed",
    "rolled_back",
    "failed",
    "blocked",
    "suspended",
    "deleted",
    "drift_repaired",
    "batch_failed",
    "batch_timed_out",
    "commit_refused",
    "backpressure",
    "checkpoints",
    "cluster_unreachable",
];

/// The job-failure events; one condition, `failure`, covers them.
const FAILURE_EVENTS: &[&str] = &["rolled_back", "failed", "blocked"];

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
    /// Deliveries a minute at most (`max_per_minute`, default 20); the rest wait their turn.
    pub max_per_minute: u32,
}

impl Target {
    /// Whether it wants `event` (a `resolved` goes where the alert it resolves went).
    pub fn wants(&self, event: &Event) -> bool {
        let wants = |name: &str| self.events.iter().any(|e| e == name);
        match event.resolves.as_deref() {
            Some("failure") => FAILURE_EVENTS.iter().any(|e| wants(e)),
            Some(condition) => wants(condition),
            None => wants(&event.event),
        }
    }
}

/// One event of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// One of [`EVENTS`], or `resolved`.
    pub event: String,
    /// For `resolved`: the condition that cleared (`failure`, `backpressure`, `checkpoints`,
    /// `cluster_unreachable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolves: Option<String>,
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
}

impl Event {
    fn new(event: &str, job_id: Option<&str>, revision: Option<&String>, message: String) -> Event {
        Event {
            event: event.into(),
            resolves: None,
            job_id: job_id.map(str::to_string),
            revision: revision.cloned(),
            message,
            root_cause: None,
            flink_job_id: None,
        }
    }
}

/// The event an operation that ended well stands for (by its audit action), if any.
pub fn event_of_operation(action: &str) -> Option<&'static str> {
    Some(match action {
        "create" => "deployed",
        "upgrade" => "upgraded",
        "restart" => "drift_repaired",
        "resume" => "resumed",
        "rollback" => "rolled_back",
        "suspend" => "suspended",
        "delete" => "deleted",
        "update" => "updated",
        _ => return None,
    })
}

/// The alert for an operation the audit log says ended well, keyed by its audit row: a pass's
/// report adds its words and Flink's root cause when it has the job; without it (the process
/// died between the audit row and the outbox) the audit row alone says what happened.
pub fn operation_event(
    operation: &crate::state::FinishedOperation,
    report: &ApplyReport,
    desired: Option<&crate::spec::DesiredState>,
) -> Option<(String, Event)> {
    let kind = event_of_operation(&operation.action)?;
    let job_id = operation.job_id.as_deref()?;
    let spec = desired.and_then(|d| d.jobs.get(job_id)).map(|j| &j.spec);
    if kind == "rolled_back" && spec.is_some_and(|s| !s.alert_on_failure) {
        return None;
    }
    let json = |text: &Option<String>| -> Value {
        text.as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null)
    };
    let (detail, intent) = (json(&operation.detail), json(&operation.intent_detail));
    let reported = report.jobs.iter().find(|job| {
        job.job_id == job_id
            && match kind {
                "rolled_back" => job.outcome == Outcome::RolledBack,
                _ => job.outcome == Outcome::Ok,
            }
    });
    let flink_job_id = detail["flink_job_id"].as_str().map(str::to_string);
    let message = match reported {
        Some(job) => job.message.clone(),
        None => {
            let what = kind.replace('_', " ");
            match (&flink_job_id, detail["status"].as_str()) {
                (Some(id), _) => format!("{job_id} {what}: Flink job {id}"),
                _ => format!("{job_id} {what}"),
            }
        }
    };
    let mut event = Event::new(kind, Some(job_id), operation.commit_id.as_ref(), message);
    event.flink_job_id = flink_job_id.or_else(|| reported.and_then(|j| j.flink_job_id.clone()));
    if kind == "rolled_back" {
        event.root_cause = reported
            .and_then(|j| j.root_cause.clone())
            .or_else(|| intent["reason"].as_str().map(str::to_string));
    }
    Some((format!("audit:{}", operation.audit_id), event))
}

/// The alert for a batch run that ended badly (failed, or cancelled at its deadline), keyed by
/// its Flink job id; the report's words when the pass saw it end.
pub fn run_event(
    run: &crate::state::RunRecord,
    report: &ApplyReport,
    desired: Option<&crate::spec::DesiredState>,
) -> Option<(String, Event)> {
    use crate::state::RunStatus;
    let kind = match run.status {
        RunStatus::Failed => "batch_failed",
        RunStatus::TimedOut => "batch_timed_out",
        _ => return None,
    };
    let spec = desired
        .and_then(|d| d.jobs.get(&run.job_id))
        .map(|j| &j.spec);
    if spec.is_some_and(|s| !s.alert_on_failure) {
        return None;
    }
    let reported = report
        .jobs
        .iter()
        .flat_map(|job| &job.run_failures)
        .find(|failure| failure.flink_job_id == run.flink_job_id);
    let message = match reported {
        Some(failure) => failure.message.clone(),
        None if kind == "batch_failed" => {
            format!("{}: batch run {} failed", run.job_id, run.flink_job_id)
        }
        None => format!(
            "{}: batch run {} was cancelled at its deadline (ttl_seconds)",
            run.job_id, run.flink_job_id
        ),
    };
    let mut event = Event::new(kind, Some(&run.job_id), Some(&run.commit_id), message);
    event.root_cause = run.root_cause.clone();
    event.flink_job_id = Some(run.flink_job_id.clone());
    Some((format!("{kind}:{}", run.flink_job_id), event))
}

/// What a pass says to the alerting side.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a few per pass, consumed at once: boxing buys nothing"
)]
pub enum Signal {
    /// Something that happened once; `dedupe_key` keeps a repeated report from alerting twice.
    Once {
        /// The event.
        event: Event,
        /// Same key, same alert.
        dedupe_key: String,
    },
    /// A condition that holds or not now: alerted once after holding for `hold`, then
    /// `resolved` when it clears.
    Condition {
        /// Which condition, e.g. `backpressure:orders`.
        key: String,
        /// The job it belongs to.
        job_id: Option<String>,
        /// Whether it holds in this pass.
        holds: bool,
        /// How long it must hold before the alert.
        hold: Duration,
        /// The alert; `None` marks the condition alerted without one (a `Once` said it).
        raise: Option<Event>,
        /// The message when it clears.
        resolve: Event,
    },
}

/// What a pass report says: its events, and the conditions it saw hold or clear. A job whose spec
/// sets `monitoring.alert_on_failure: false` (in `desired`) raises no failure or checkpoint
/// alerts, one without `alert_on_backpressure` no backpressure alerts.
pub fn signals_of(
    report: &ApplyReport,
    desired: Option<&crate::spec::DesiredState>,
) -> Vec<Signal> {
    let revision = report.revision.as_ref();
    let mut signals = Vec::new();
    if let Some((kind, message)) = &report.refused {
        signals.push(Signal::Once {
            event: Event::new(
                "commit_refused",
                None,
                revision,
                format!("{kind}: {message}"),
            ),
            dedupe_key: format!(
                "commit_refused:{}",
                revision.map(String::as_str).unwrap_or_default()
            ),
        });
    } else {
        signals.push(Signal::Condition {
            key: "cluster".into(),
            job_id: None,
            holds: report.cluster_error.is_some(),
            hold: Duration::ZERO,
            raise: Some(Event::new(
                "cluster_unreachable",
                None,
                revision,
                format!(
                    "the Flink cluster cannot be reached: {}",
                    report.cluster_error.as_deref().unwrap_or_default()
                ),
            )),
            resolve: resolved(
                "cluster_unreachable",
                None,
                revision,
                "the Flink cluster answers again".into(),
            ),
        });
    }
    let spec_of = |job_id: &str| desired.and_then(|d| d.jobs.get(job_id)).map(|j| &j.spec);
    for job in &report.jobs {
        let spec = spec_of(&job.job_id);
        let alert_on_failure = spec.is_none_or(|s| s.alert_on_failure);
        let id = Some(job.job_id.as_str());
        let mut event = Event::new("", id, revision, job.message.clone());
        event.root_cause = job.root_cause.clone();
        event.flink_job_id = job.flink_job_id.clone();
        let failure = match job.outcome {
            Outcome::RolledBack => Some("rolled_back"),
            Outcome::Failed if job.run_failures.is_empty() => Some("failed"),
            Outcome::Blocked => Some("blocked"),
            _ => None,
        };
        let failure_key = format!("failure:{}", job.job_id);
        if let Some(kind) = failure {
            if !alert_on_failure {
                continue;
            }
            event.event = kind.into();
            let resolve = resolved(
                "failure",
                id,
                revision,
                format!("{} is healthy again", job.job_id),
            );
            if kind == "rolled_back" {
                // The rollback itself is news from the audit log (operation_event); here the
                // job only becomes a failing one, to be resolved once it is healthy again.
                signals.push(Signal::Condition {
                    key: failure_key,
                    job_id: id.map(str::to_string),
                    holds: true,
                    hold: Duration::ZERO,
                    raise: None,
                    resolve,
                });
            } else {
                signals.push(Signal::Condition {
                    key: failure_key,
                    job_id: id.map(str::to_string),
                    holds: true,
                    hold: Duration::ZERO,
                    raise: Some(event),
                    resolve,
                });
            }
            continue;
        }
        if matches!(job.outcome, Outcome::Ok | Outcome::Unchanged) {
            signals.push(Signal::Condition {
                key: failure_key,
                job_id: id.map(str::to_string),
                holds: false,
                hold: Duration::ZERO,
                raise: None,
                resolve: resolved(
                    "failure",
                    id,
                    revision,
                    format!("{} is healthy again", job.job_id),
                ),
            });
        }
    }
    for probe in &report.probes {
        let Some(spec) = spec_of(&probe.job_id) else {
            continue;
        };
        let id = Some(probe.job_id.as_str());
        if let (Some(ratio), true) = (probe.backpressure, spec.alert_on_backpressure) {
            let limit = spec.watch.backpressure_ratio;
            let vertex = probe.backpressured_vertex.as_deref().unwrap_or("a task");
            let mut event = Event::new(
                "backpressure",
                id,
                revision,
                format!(
                    "{} is backpressured: {vertex} at {:.0}% for {} or more (monitoring.backpressure_ratio is {limit})",
                    probe.job_id,
                    ratio * 100.0,
                    crate::util::format_duration(spec.watch.backpressure_for)
                ),
            );
            event.flink_job_id = Some(probe.flink_job_id.clone());
            signals.push(Signal::Condition {
                key: format!("backpressure:{}", probe.job_id),
                job_id: id.map(str::to_string),
                holds: ratio >= limit.get(),
                hold: spec.watch.backpressure_for,
                raise: Some(event),
                resolve: resolved(
                    "backpressure",
                    id,
                    revision,
                    format!(
                        "{} keeps up again ({vertex} at {:.0}%)",
                        probe.job_id,
                        ratio * 100.0
                    ),
                ),
            });
        }
        if let (Some(age), Some(max_age), true) = (
            probe.checkpoint_age_seconds,
            spec.watch.max_checkpoint_age,
            spec.alert_on_failure,
        ) {
            let mut event = Event::new(
                "checkpoints",
                id,
                revision,
                format!(
                    "{}: the newest completed checkpoint is {} old (monitoring.max_checkpoint_age is {}); {} failed checkpoint(s)",
                    probe.job_id,
                    crate::util::format_duration(Duration::from_secs_f64(age.max(0.0))),
                    crate::util::format_duration(max_age),
                    probe.failed_checkpoints.unwrap_or_default()
                ),
            );
            event.flink_job_id = Some(probe.flink_job_id.clone());
            signals.push(Signal::Condition {
                key: format!("checkpoints:{}", probe.job_id),
                job_id: id.map(str::to_string),
                holds: age > max_age.as_secs_f64(),
                hold: Duration::ZERO,
                raise: Some(event),
                resolve: resolved(
                    "checkpoints",
                    id,
                    revision,
                    format!("{} completes checkpoints again", probe.job_id),
                ),
            });
        }
    }
    signals
}

fn resolved(
    condition: &str,
    job_id: Option<&str>,
    revision: Option<&String>,
    message: String,
) -> Event {
    let mut event = Event::new("resolved", job_id, revision, message);
    event.resolves = Some(condition.into());
    event
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
            let what = match field("event").as_str() {
                "resolved" => format!("resolved ({})", field("resolves").replace('_', " ")),
                other => other.replace('_', " "),
            };
            let mut text = format!("flink-gitops: {what}");
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
        let key = crate::util::read_file_limited(
            secret_file,
            crate::limits::Limits::DEFAULT.secret_file_bytes,
        )
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
        // A command may exit without reading the event: its exit status says what happened.
        match stdin.write_all(body.as_bytes()).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(format!("{program}: stdin: {e}"));
            }
            _ => {}
        }
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
            max_per_minute: 20,
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
                crate::spec::DesiredJob::new(
                    job,
                    crate::spec::RepoPath::parse("jobs/o.yaml").unwrap(),
                    String::new(),
                    None,
                ),
            )]
            .into(),
        };
        let plan = crate::plan::JobPlan::new("orders", crate::plan::Action::Upgrade);
        let report = ApplyReport {
            jobs: vec![JobOutcome::new(&plan, Outcome::RolledBack, "rolled back")],
            ..ApplyReport::default()
        };
        let rollback = crate::state::FinishedOperation {
            audit_id: 7,
            commit_id: Some("abc".into()),
            job_id: Some("orders".into()),
            action: "rollback".into(),
            detail: Some(r#"{"flink_job_id":"f00"}"#.into()),
            intent_detail: Some(r#"{"reason":"boom"}"#.into()),
        };
        // The events that would be alerted: the operation's, one-offs, and conditions that hold
        // with an alert.
        let alerts = |desired: &crate::spec::DesiredState| -> Vec<String> {
            operation_event(&rollback, &report, Some(desired))
                .map(|(_, event)| event.event)
                .into_iter()
                .chain(
                    signals_of(&report, Some(desired)).into_iter().filter_map(
                        |signal| match signal {
                            Signal::Once { event, .. } => Some(event.event),
                            Signal::Condition {
                                holds: true,
                                raise: Some(event),
                                ..
                            } => Some(event.event),
                            Signal::Condition { .. } => None,
                        },
                    ),
                )
                .collect()
        };
        let loud = desired(spec(""));
        assert_eq!(alerts(&loud), ["rolled_back"]);
        let quiet = desired(spec("monitoring: { alert_on_failure: false }\n"));
        assert!(alerts(&quiet).is_empty());
    }

    #[test]
    fn slack_gets_readable_text() {
        let slack = Target {
            name: "chat".into(),
            url: url::Url::parse("https://hooks.slack.com/services/x").unwrap(),
            kind: TargetKind::Slack,
            events: vec![],
            max_per_minute: 20,
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
