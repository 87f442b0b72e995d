//! `monitoring:` checks: the alert switches and what counts as backpressured or stale.

use super::Checker;
use crate::spec::raw::RawMonitoring;
use crate::spec::{Ratio, Watch};

/// What `monitoring:` asks the agent to watch and report.
pub(super) struct Monitoring {
    pub(super) alert_on_failure: bool,
    pub(super) alert_on_backpressure: bool,
    pub(super) watch: Watch,
}

/// Without `monitoring:`, failures alert, backpressure does not, and [`Watch::default`] applies.
pub(super) fn validate_monitoring(
    monitoring: Option<&RawMonitoring>,
    check: &mut Checker<'_>,
) -> Monitoring {
    let (mut alert_on_failure, mut alert_on_backpressure) = (true, false);
    let mut watch = Watch::default();
    if let Some(monitoring) = monitoring {
        check.refuse(
            &monitoring.metrics_port,
            "monitoring.metrics_port",
            "metric reporters and their ports are configured for the whole cluster",
        );
        check.refuse(
            &monitoring.log_level,
            "monitoring.log_level",
            "log levels are configured for the whole cluster (log4j)",
        );
        alert_on_failure = monitoring.alert_on_failure.unwrap_or(true);
        alert_on_backpressure = monitoring.alert_on_backpressure.unwrap_or(false);
        if let Some(ratio) = &monitoring.backpressure_ratio {
            match Ratio::parse(ratio.value) {
                Some(r) if r.0 > 0 => watch.backpressure_ratio = r,
                _ => check.at(
                    ratio,
                    "monitoring.backpressure_ratio",
                    "must be a number above 0 and at most 1 (the share of time a task is backpressured)",
                ),
            }
        }
        if let Some(text) = &monitoring.backpressure_for {
            match crate::util::parse_duration(&text.value) {
                Ok(d) => watch.backpressure_for = d,
                Err(reason) => check.at(text, "monitoring.backpressure_for", reason),
            }
        }
        if let Some(text) = &monitoring.max_checkpoint_age {
            match crate::util::parse_duration(&text.value) {
                Ok(d) if !d.is_zero() => watch.max_checkpoint_age = Some(d),
                Ok(_) => check.at(
                    text,
                    "monitoring.max_checkpoint_age",
                    "must be longer than 0 s",
                ),
                Err(reason) => check.at(text, "monitoring.max_checkpoint_age", reason),
            }
        }
    }
    Monitoring {
        alert_on_failure,
        alert_on_backpressure,
        watch,
    }
}
