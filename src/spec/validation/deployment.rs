//! `deployment:` checks: parallelism, checkpoints, savepoint path and restart strategy.

use std::num::NonZeroU32;

use serde_saphyr::Spanned;

use super::{Checker, FlinkOptions};
use crate::spec::RestartStrategy;
use crate::spec::raw::{RawDeployment, S};

/// The parallelism and savepoint directory `deployment:` sets; its Flink options go into `flink`.
pub(super) fn validate_deployment(
    deployment: Option<&S<RawDeployment>>,
    flink: &mut FlinkOptions,
    check: &mut Checker<'_>,
) -> (Option<NonZeroU32>, Option<String>) {
    let mut parallelism = None;
    let mut savepoint_dir = None;
    if let Some(deployment) = deployment {
        let d = &deployment.value;
        if let Some(p) = &d.parallelism {
            parallelism = NonZeroU32::new(p.value);
            if parallelism.is_none() {
                check.at(p, "deployment.parallelism", "must be at least 1");
            }
        }
        if let Some(interval) = &d.checkpoint_interval {
            if interval.value == 0 {
                check.at(
                    interval,
                    "deployment.checkpoint_interval",
                    "must be at least 1 ms; leave it out to disable checkpointing",
                );
            }
            flink.options.insert(
                "execution.checkpointing.interval".into(),
                format!("{} ms", interval.value),
            );
            flink.structured_keys.insert(
                "execution.checkpointing.interval",
                "deployment.checkpoint_interval",
            );
        }
        if let Some(path) = &d.savepoint_path {
            if path.value.contains("://") {
                savepoint_dir = Some(path.value.clone());
            } else if path.value.starts_with('/') {
                savepoint_dir = Some(format!("file://{}", path.value));
            } else {
                check.at(
                    path,
                    "deployment.savepoint_path",
                    format!(
                        "`{}` must be absolute or a URL such as s3://bucket/path",
                        path.value
                    ),
                );
            }
        }
        let strategy = d.restart_strategy.as_ref().map(|s| s.value);
        if let Some(s) = strategy {
            let name = match s {
                RestartStrategy::FixedDelay => "fixed-delay",
                RestartStrategy::ExponentialDelay => "exponential-delay",
                RestartStrategy::FailureRate => "failure-rate",
                RestartStrategy::None => "none",
            };
            flink
                .options
                .insert("restart-strategy.type".into(), name.into());
            flink
                .structured_keys
                .insert("restart-strategy.type", "deployment.restart_strategy");
        }
        let attempts_key = match strategy {
            Some(RestartStrategy::FixedDelay) => Some("restart-strategy.fixed-delay.attempts"),
            Some(RestartStrategy::ExponentialDelay) => {
                Some("restart-strategy.exponential-delay.attempts-before-reset-backoff")
            }
            Some(RestartStrategy::FailureRate) => {
                Some("restart-strategy.failure-rate.max-failures-per-interval")
            }
            Some(RestartStrategy::None) | None => None,
        };
        let delay_key = match strategy {
            Some(RestartStrategy::FixedDelay) => Some("restart-strategy.fixed-delay.delay"),
            Some(RestartStrategy::ExponentialDelay) => {
                Some("restart-strategy.exponential-delay.initial-backoff")
            }
            Some(RestartStrategy::FailureRate) => Some("restart-strategy.failure-rate.delay"),
            Some(RestartStrategy::None) | None => None,
        };
        for (value, key, field) in [
            (
                d.max_restart_attempts
                    .as_ref()
                    .map(|v| (v.value as u64, v.referenced, v.defined)),
                attempts_key,
                "deployment.max_restart_attempts",
            ),
            (
                d.restart_delay
                    .as_ref()
                    .map(|v| (v.value, v.referenced, v.defined)),
                delay_key,
                "deployment.restart_delay",
            ),
        ] {
            let Some((number, referenced, defined)) = value else {
                continue;
            };
            let spanned = Spanned::new((), referenced, defined);
            match key {
                Some(key) => {
                    let text = if field.ends_with("delay") { format!("{number} ms") } else { number.to_string() };
                    flink.options.insert(key.to_string(), text);
                }
                None => check.at(&spanned, field, "needs `deployment.restart_strategy` set to fixed-delay, exponential-delay or failure-rate"),
            }
        }
    }
    (parallelism, savepoint_dir)
}
