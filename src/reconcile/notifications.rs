//! The agent's side of alerts: a pass's events into the outbox, and the outbox to the targets.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};

use super::{Agent, ApplyReport, now_ms};
use crate::notify;
use crate::revision::VerifiedRevision;
use crate::spec::DesiredState;
use crate::state::{ConditionChange, Delivery, QueuedEvent};

/// Deliveries tried per round; the rest wait for the next one.
const DELIVERIES_PER_ROUND: u32 = 200;

impl Agent {
    /// Puts the report's events in the outbox, and notes the conditions it saw, each with its
    /// alert or "resolved" in the same transaction.
    pub(super) fn queue_events(&self, report: &ApplyReport) {
        // Which alerts each job wants: the revision last verified says.
        let revision = self.last_verified();
        let desired = revision.as_deref().map(VerifiedRevision::desired);
        self.queue_operation_events(report, desired);
        self.queue_run_events(report, desired);
        let signals = notify::signals_of(report, desired);
        // Most passes clear conditions that never held: only the known ones cost a write.
        let watched = match self.with_store(|s| s.alert_conditions()) {
            Ok(keys) => keys,
            Err(error) => {
                warn!(%error, "alerts: cannot read the alert conditions");
                return;
            }
        };
        let now = now_ms();
        for job in &report.jobs {
            if job.outcome == super::Outcome::Ok
                && matches!(
                    job.action,
                    crate::plan::Action::Delete | crate::plan::Action::Suspend
                )
                && let Err(error) = self.with_store(|s| s.forget_conditions_of(&job.job_id))
            {
                warn!(%error, job_id = %job.job_id, "alerts: cannot forget the job's conditions");
            }
        }
        for signal in signals {
            let result = match &signal {
                notify::Signal::Once { event, dedupe_key } => {
                    let body = serde_json::to_string(event).unwrap_or_default();
                    let targets = self.targets_for(event);
                    self.with_store(|s| {
                        s.enqueue_event(
                            &event.event,
                            event.job_id.as_deref(),
                            dedupe_key,
                            &body,
                            &targets,
                        )
                    })
                    .map(|queued| queued.then_some(event))
                }
                notify::Signal::Condition {
                    key,
                    job_id,
                    holds,
                    hold,
                    raise,
                    resolve,
                } => {
                    if !holds && !watched.contains(key) {
                        continue;
                    }
                    let raise_body = raise
                        .as_ref()
                        .map(|e| serde_json::to_string(e).unwrap_or_default())
                        .unwrap_or_default();
                    let raise_targets = raise
                        .as_ref()
                        .map(|e| self.targets_for(e))
                        .unwrap_or_default();
                    let resolve_body = serde_json::to_string(resolve).unwrap_or_default();
                    let resolve_targets = self.targets_for(resolve);
                    let job_id = job_id.as_deref();
                    let raise_event = QueuedEvent {
                        event: raise.as_ref().map_or("", |e| e.event.as_str()),
                        job_id,
                        body: &raise_body,
                        targets: &raise_targets,
                    };
                    let resolve_event = QueuedEvent {
                        event: &resolve.event,
                        job_id,
                        body: &resolve_body,
                        targets: &resolve_targets,
                    };
                    let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
                    self.with_store(|s| {
                        s.observe_condition(key, *holds, hold_ms, now, &raise_event, &resolve_event)
                    })
                    .map(|change| match change {
                        ConditionChange::Raised => raise.as_ref(),
                        ConditionChange::Resolved => Some(resolve),
                        ConditionChange::Pending | ConditionChange::Unchanged => None,
                    })
                }
            };
            match result {
                Ok(Some(event)) => {
                    info!(event = %event.event, resolves = ?event.resolves, job_id = ?event.job_id, message = %event.message, "alert")
                }
                Ok(None) => {}
                Err(error) => warn!(%error, "alert could not be queued"),
            }
        }
        self.alerts_queued.notify_one();
    }

    /// Queues an alert for every operation the audit log says ended well since the last call,
    /// keyed by its audit row. An operation whose process died before its alert was queued gets
    /// it from the next pass (of the next process), and none gets two.
    fn queue_operation_events(&self, report: &ApplyReport, desired: Option<&DesiredState>) {
        let finished = self.with_store(|s| {
            let cursor = s.alerts_audit_cursor()?;
            s.finished_operations_after(cursor)
                .map(|found| (found, cursor))
        });
        let ((operations, cursor), previous) = match finished {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "alerts: cannot read the audit log");
                return;
            }
        };
        // A pass that audited nothing writes nothing.
        if operations.is_empty() && cursor == previous {
            return;
        }
        let events: Vec<(String, notify::Event)> = operations
            .iter()
            .filter_map(|operation| notify::operation_event(operation, report, desired))
            .collect();
        self.queue_keyed(&events, |queued| {
            self.with_store(|s| s.queue_operation_events(queued, cursor))
        });
    }

    /// Queues an alert for every batch run that ended badly and was not alerted yet, however
    /// the pass that saw it end was cut short.
    fn queue_run_events(&self, report: &ApplyReport, desired: Option<&DesiredState>) {
        let runs = match self.with_store(|s| s.ended_runs_not_alerted()) {
            Ok(runs) => runs,
            Err(error) => {
                warn!(%error, "alerts: cannot read ended batch runs");
                return;
            }
        };
        if runs.is_empty() {
            return;
        }
        let events: Vec<(String, notify::Event)> = runs
            .iter()
            .filter_map(|run| notify::run_event(run, report, desired))
            .collect();
        let ids: Vec<i64> = runs.iter().map(|run| run.id).collect();
        self.queue_keyed(&events, |queued| {
            self.with_store(|s| s.mark_runs_alerted(queued, &ids))
        });
    }

    /// Queues `events` (each with its dedupe key) through `write`, which does it in one
    /// transaction with whatever marks them queued, and logs them.
    fn queue_keyed(
        &self,
        events: &[(String, notify::Event)],
        write: impl FnOnce(&[(String, QueuedEvent)]) -> Result<(), crate::state::StateError>,
    ) {
        let bodies: Vec<(String, Vec<&str>)> = events
            .iter()
            .map(|(_, event)| {
                (
                    serde_json::to_string(event).unwrap_or_default(),
                    self.targets_for(event),
                )
            })
            .collect();
        let queued: Vec<(String, QueuedEvent)> = events
            .iter()
            .zip(&bodies)
            .map(|((dedupe_key, event), (body, targets))| {
                (
                    dedupe_key.clone(),
                    QueuedEvent {
                        event: &event.event,
                        job_id: event.job_id.as_deref(),
                        body,
                        targets,
                    },
                )
            })
            .collect();
        match write(&queued) {
            Ok(()) => {
                for (_, event) in events {
                    info!(event = %event.event, job_id = ?event.job_id, message = %event.message, "alert");
                }
            }
            Err(error) => warn!(%error, "alerts could not be queued"),
        }
    }

    fn targets_for(&self, event: &notify::Event) -> Vec<&str> {
        self.config
            .notify
            .iter()
            .filter(|t| t.wants(event))
            .map(|t| t.name.as_str())
            .collect()
    }

    /// Sends what is due in the outbox, each target on its own so a slow or dead one holds up
    /// no other; a failed delivery is tried again later with backoff, and a target gets at most
    /// its `max_per_minute`. Returns when the next delivery is due, if one waits.
    pub async fn deliver_events(&self) -> Option<i64> {
        let due = match self.with_store(|s| s.due_deliveries(now_ms(), DELIVERIES_PER_ROUND)) {
            Ok(due) => due,
            Err(error) => {
                warn!(%error, "alerts: cannot read the outbox");
                return None;
            }
        };
        let mut per_target: BTreeMap<&str, Vec<Delivery>> = BTreeMap::new();
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
            per_target
                .entry(target.name.as_str())
                .or_default()
                .push(delivery);
        }
        let rounds = per_target.into_iter().map(|(name, deliveries)| async move {
            let target = self.config.notify.iter().find(|t| t.name == name)?;
            let minute_ago = now_ms() - 60_000;
            let sent = self
                .with_store(|s| s.delivered_since(&target.name, minute_ago))
                .unwrap_or(0);
            let allowed = target.max_per_minute.saturating_sub(sent) as usize;
            if deliveries.len() > allowed {
                warn!(target = %target.name, waiting = deliveries.len() - allowed, max_per_minute = target.max_per_minute, "alerts held back by the target's rate limit");
            }
            for delivery in deliveries.iter().take(allowed) {
                self.deliver_one(target, delivery).await;
            }
            // Held back by the limit: due again once the oldest of the minute's deliveries ages out.
            (deliveries.len() > allowed).then(|| now_ms() + 5_000)
        });
        let held: Vec<Option<i64>> = futures::future::join_all(rounds).await;
        let names: Vec<&str> = self.config.notify.iter().map(|t| t.name.as_str()).collect();
        let next_retry = self
            .with_store(|s| s.next_delivery_at(&names))
            .ok()
            .flatten();
        held.into_iter().flatten().chain(next_retry).min()
    }

    async fn deliver_one(&self, target: &notify::Target, delivery: &Delivery) {
        let body = notify::body_for(target, delivery.event_id, &delivery.body);
        let client = self.alerts.get_or_init(alerts_client);
        let sent = notify::send(client, target, delivery.event_id, body).await;
        let result = match &sent {
            Ok(()) => Ok(()),
            Err(error) => {
                let wait = notify::backoff(delivery.attempts);
                warn!(target = %target.name, event_id = delivery.event_id, %error, retry_in = ?wait, "alert not delivered");
                Err((
                    error.as_str(),
                    now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                ))
            }
        };
        if let Err(error) = self.with_store(|s| s.record_delivery(delivery, result)) {
            warn!(%error, "alerts: cannot record a delivery");
        }
    }

    /// Wakes when a pass queued alerts (for the service's delivery task).
    pub fn alerts_queued(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.alerts_queued)
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
