//! The service's HTTP endpoints: health, readiness, metrics, status, and the push webhook.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{KeyInit, Mac};
use serde_json::json;
use tracing::{info, warn};

use super::connections::{ConnectionMetrics, ServerLimits};
use super::{Shared, metrics::Metrics, unix_now};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Serves until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, limits: ServerLimits) {
    let counted = ConnectionMetrics {
        open: shared.metrics.http_connections.clone(),
        evicted: shared.metrics.http_evicted.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/webhook", post(webhook))
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .with_state(shared);
    super::connections::serve(listener, app, limits, counted).await;
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let window = shared
        .ready_window
        .read()
        .map(|w| w.as_secs_f64())
        .unwrap_or(300.0);
    let now = unix_now();
    let status = shared.status();
    let mut reasons = Vec::new();
    match shared.agent() {
        None => reasons.push("the state database is not open".to_string()),
        // Checked here too, not only by the loop: readiness must drop the moment the file goes.
        // One stat of the file and the status in memory: never the store, which a pass may hold.
        Some(agent) => {
            if let Err(lost) = agent.check_state() {
                reasons.push(lost.to_string());
            }
        }
    }
    match status.last_poll_ok {
        Some(at) if now - at <= window => {}
        Some(at) => reasons.push(format!("last successful poll {:.0}s ago", now - at)),
        None => reasons.push("no successful poll yet".into()),
    }
    if let Some(error) = &status.last_poll_error {
        reasons.push(format!("last poll failed: {error}"));
    }
    match (status.last_cluster_ok, &status.last_cluster_error) {
        (_, Some(error)) => reasons.push(format!("Flink unreachable: {error}")),
        (Some(at), None) if now - at > window => {
            reasons.push(format!("last contact with Flink {:.0}s ago", now - at))
        }
        (None, None) => reasons.push("no contact with Flink yet".into()),
        _ => {}
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the classic text format.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            shared.metrics.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            shared.metrics.render_text(),
        )
            .into_response()
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.status().clone();
    let agent = shared.agent();
    // The cluster is not asked per request: Flink's view is the last pass's, in the report.
    let statuses = agent
        .as_ref()
        .and_then(|a| a.job_statuses(&[]).ok())
        .unwrap_or_default();
    let active_runs = agent
        .as_ref()
        .and_then(|a| a.active_runs_all().ok())
        .unwrap_or_default();
    let jobs: Vec<_> = statuses
        .iter()
        .map(|job| {
            let running: Vec<_> = active_runs
                .iter()
                .filter(|run| run.job_id == job.job_id)
                .map(|run| json!({"flink_job_id": run.flink_job_id, "status": run.status, "submitted_at_ms": run.submitted_at_ms, "deadline_ms": run.deadline_ms}))
                .collect();
            let pass = status
                .last_pass
                .as_ref()
                .and_then(|pass| pass.job(&job.job_id));
            let mut row = serde_json::to_value(job).unwrap_or_default();
            let pass_error = pass.and_then(|p| p.error).map(str::to_string);
            if let Some(fields) = row.as_object_mut() {
                fields.insert("desired_revision".into(), json!(job.desired_commit));
                fields.insert("applied_revision".into(), json!(job.applied_commit));
                fields.insert("last_action".into(), json!(pass.map(|p| p.action)));
                fields.insert("health".into(), json!(pass.map(|p| p.outcome)));
                fields.insert("active_runs".into(), json!(running));
                fields.insert("retry_at_ms".into(), json!(job.retry_at_ms));
                fields.insert(
                    "last_error".into(),
                    json!(job.last_error.clone().or(pass_error)),
                );
            }
            row
        })
        .collect();
    Json(json!({
        "head": status.head,
        "last_applied": status.last_applied,
        "last_poll_ok": status.last_poll_ok,
        "last_poll_error": status.last_poll_error,
        "poll_failures": status.poll_failures,
        "next_poll_at": status.next_poll_at,
        "last_cluster_ok": status.last_cluster_ok,
        "flink_error": status.last_cluster_error,
        "circuit_open_until": status.circuit_open_until,
        "refused": status.last_pass.as_ref().and_then(|p| p.refused.clone()),
        "unmanaged": status.last_pass.as_ref().map(|p| p.unmanaged.clone()).unwrap_or_default(),
        "jobs": jobs,
    }))
    .into_response()
}

/// Checks the request's signature: GitHub/Gitea `X-Hub-Signature-256: sha256=<hex>`, Gitea
/// `X-Gitea-Signature: <hex>`, or GitLab's `X-Gitlab-Token` (a shared token, compared in constant time).
fn authentic(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let hex_signature = header("x-hub-signature-256")
        .and_then(|v| v.strip_prefix("sha256="))
        .or_else(|| header("x-gitea-signature"));
    if let Some(signature) = hex_signature {
        let Ok(expected) = hex::decode(signature.trim()) else {
            return false;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
            return false;
        };
        mac.update(body);
        return mac.verify_slice(&expected).is_ok();
    }
    if let Some(token) = header("x-gitlab-token") {
        let Ok(mut mac) = HmacSha256::new_from_slice(b"flink-gitops/token-compare") else {
            return false;
        };
        mac.update(secret);
        let expected = mac.finalize().into_bytes();
        let Ok(mut mac) = HmacSha256::new_from_slice(b"flink-gitops/token-compare") else {
            return false;
        };
        mac.update(token.as_bytes());
        return mac.verify_slice(&expected).is_ok();
    }
    false
}

async fn webhook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = shared.webhook_secret.read().ok().and_then(|s| s.clone());
    let Some(secret) = secret else {
        Metrics::count(&shared.metrics.webhooks, "disabled");
        return (
            StatusCode::NOT_FOUND,
            "webhooks are disabled: set server.webhook_secret_file\n",
        )
            .into_response();
    };
    if !authentic(&headers, &body, &secret) {
        Metrics::count(&shared.metrics.webhooks, "unauthorized");
        warn!("webhook refused: missing or wrong signature");
        return (StatusCode::UNAUTHORIZED, "missing or wrong signature\n").into_response();
    }
    Metrics::count(&shared.metrics.webhooks, "accepted");
    info!("webhook accepted: polling now");
    shared.trigger.notify_one();
    (StatusCode::ACCEPTED, "polling now\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &[u8], body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_of_github_gitea_and_gitlab() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = signed(b"s3cret", body);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            format!("sha256={good}").parse().unwrap(),
        );
        assert!(authentic(&headers, body, b"s3cret"));
        assert!(!authentic(&headers, b"tampered", b"s3cret"));
        assert!(!authentic(&headers, body, b"other"));
        let mut gitea = HeaderMap::new();
        gitea.insert("x-gitea-signature", good.parse().unwrap());
        assert!(authentic(&gitea, body, b"s3cret"));
        let mut gitlab = HeaderMap::new();
        gitlab.insert("x-gitlab-token", "s3cret".parse().unwrap());
        assert!(authentic(&gitlab, body, b"s3cret"));
        assert!(!authentic(&gitlab, body, b"s3cret2"));
        assert!(!authentic(&HeaderMap::new(), body, b"s3cret"));
    }
}
