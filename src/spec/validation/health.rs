//! `health:` checks: when a new deployment counts as healthy.

use std::time::Duration;

use super::Checker;
use crate::spec::raw::{RawHealth, S};
use crate::spec::{HealthPolicy, Ratio};

pub(super) fn validate_health(raw: Option<&RawHealth>, check: &mut Checker<'_>) -> HealthPolicy {
    let mut policy = HealthPolicy {
        stable_for: Duration::from_secs(30),
        max_restarts: 0,
        require_checkpoint: true,
        min_checkpoints: None,
        max_checkpoint_age: None,
        max_backpressure: None,
        timeout: Duration::from_secs(300),
    };
    let Some(raw) = raw else { return policy };
    let mut duration = |value: &Option<S<String>>, field: &str, target: &mut Duration| {
        if let Some(text) = value {
            match crate::util::parse_duration(&text.value) {
                Ok(d) => *target = d,
                Err(reason) => check.at(text, field, reason),
            }
        }
    };
    duration(&raw.stable_for, "health.stable_for", &mut policy.stable_for);
    duration(&raw.timeout, "health.timeout", &mut policy.timeout);
    if let Some(max) = raw.max_restarts {
        policy.max_restarts = max;
    }
    if let Some(require) = raw.require_checkpoint {
        policy.require_checkpoint = require;
    }
    if let Some(min) = &raw.min_checkpoints {
        if min.value == 0 || !policy.require_checkpoint {
            check.at(
                min,
                "health.min_checkpoints",
                "must be at least 1, with `require_checkpoint` left on",
            );
        } else if min.value > 1 {
            policy.min_checkpoints = Some(min.value);
        }
    }
    if let Some(text) = &raw.max_checkpoint_age {
        match crate::util::parse_duration(&text.value) {
            Ok(d) if !d.is_zero() => policy.max_checkpoint_age = Some(d),
            Ok(_) => check.at(text, "health.max_checkpoint_age", "must be longer than 0 s"),
            Err(reason) => check.at(text, "health.max_checkpoint_age", reason),
        }
    }
    if let Some(ratio) = &raw.max_backpressure {
        match Ratio::parse(ratio.value) {
            Some(r) if r.0 > 0 => policy.max_backpressure = Some(r),
            _ => check.at(
                ratio,
                "health.max_backpressure",
                "must be a number above 0 and at most 1 (the share of time a task is backpressured)",
            ),
        }
    }
    if policy.timeout <= policy.stable_for {
        if let Some(timeout) = &raw.timeout {
            check.at(
                timeout,
                "health.timeout",
                format!(
                    "must be longer than `health.stable_for` ({})",
                    crate::util::format_duration(policy.stable_for)
                ),
            );
        } else {
            policy.timeout = policy.stable_for + Duration::from_secs(300);
        }
    }
    policy
}
