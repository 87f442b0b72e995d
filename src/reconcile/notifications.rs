//! The agent's side of alerts: a pass's events into the outbox, and the outbox to the targets.

use std::time::Duration;

use tracing::{info, warn};

use super::{Agent, ApplyReport, now_ms};
use crate::notify;

/// Deliveries tried per pass; the rest wait for the next one.
const DELIVERIES_PER_PASS: u32 = 50;

impl Agent {
    /// Puts the report's events in the outbox, one delivery per target that wants each.
    pub(super) fn queue_events(&self, report: &ApplyReport) {
        let events = {
            let verified = self
                .verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            notify::events_of(report, verified.as_ref().map(|r| &r.desired))
        };
        for event in events {
            let targets: Vec<&str> = self
                .config
                .notify
                .iter()
                .filter(|t| t.events.contains(&event.event))
                .map(|t| t.name.as_str())
                .collect();
            if targets.is_empty() {
                continue;
            }
            let body = serde_json::to_string(&event).unwrap_or_default();
            let queued = self.with_store(|s| {
                s.enqueue_event(
                    &event.event,
                    event.job_id.as_deref(),
                    &event.dedupe_key,
                    &body,
                    &targets,
                )
            });
            match queued {
                Ok(true) => info!(event = %event.event, job_id = ?event.job_id, "alert queued"),
                Ok(false) => {}
                Err(error) => warn!(%error, event = %event.event, "alert could not be queued"),
            }
        }
    }

    /// Sends what is due in the outbox; a target that fails is tried again later with backoff,
    /// and never holds up the others for longer than its timeout.
    pub(super) async fn deliver_events(&self) {
        let due = match self.with_store(|s| s.due_deliveries(now_ms(), DELIVERIES_PER_PASS)) {
            Ok(due) => due,
            Err(error) => {
                warn!(%error, "alerts: cannot read the outbox");
                return;
            }
        };
        for delivery in due {
            let Some(target) = self
                .config
                .notify
                .iter()
                .find(|t| t.name == delivery.target)
            else {
                // A target removed from the config: its deliveries stay undelivered, not retried.
                continue;
            };
            let body = notify::body_for(target, delivery.event_id, &delivery.body);
            let sent = notify::send(&self.alerts, target, delivery.event_id, body).await;
            let result = match &sent {
                Ok(()) => Ok(()),
                Err(error) => {
                    let wait = notify::backoff(delivery.attempts);
                    warn!(target = %target.name, event_id = delivery.event_id, %error, retry_in = ?wait, "alert not delivered");
                    Err((
                        error.as_str(),
                        now_ms()
                            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                    ))
                }
            };
            if let Err(error) = self.with_store(|s| s.record_delivery(&delivery, result)) {
                warn!(%error, "alerts: cannot record a delivery");
            }
        }
    }
}

/// The HTTP client alerts are sent with: short timeouts, so a dead target costs little.
pub(super) fn alerts_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("flink-gitops/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}
