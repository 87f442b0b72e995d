//! `flink_config:` checks: free-form Flink options, except those the agent or a structured field owns.

use std::collections::HashMap;

use super::{Checker, FlinkOptions};
use crate::spec::raw::{FlinkValue, S};

/// Options the agent sets itself; a spec may not override them through `flink_config`.
pub(crate) const AGENT_OWNED_OPTIONS: &[(&str, &str)] = &[
    (
        "execution.state-recovery.path",
        "the agent chooses the savepoint or checkpoint to restore from",
    ),
    (
        "execution.savepoint.path",
        "the agent chooses the savepoint or checkpoint to restore from",
    ),
    (
        "$internal.pipeline.job-id",
        "the agent assigns job ids to recognise its jobs",
    ),
    ("parallelism.default", "use `deployment.parallelism`"),
    (
        "pipeline.global-job-parameters",
        "the agent tags its jobs there to recognise them",
    ),
    (
        "execution.checkpointing.externalized-checkpoint-retention",
        "the agent keeps cancelled jobs' checkpoints for last-state upgrades and drift repair",
    ),
];

/// Adds the spec's `flink_config:` options to `flink`, refusing any set elsewhere.
pub(super) fn merge_flink_config(
    flink_config: Option<HashMap<S<String>, FlinkValue>>,
    flink: &mut FlinkOptions,
    check: &mut Checker<'_>,
) {
    if let Some(options) = flink_config {
        let mut options: Vec<_> = options.into_iter().collect();
        options.sort_by(|a, b| a.0.value.cmp(&b.0.value));
        for (key, value) in options {
            if key.value.trim().is_empty() {
                check.at(&key, "flink_config", "option names must not be empty");
                continue;
            }
            if let Some((_, why)) = AGENT_OWNED_OPTIONS.iter().find(|(k, _)| *k == key.value) {
                check.at(
                    &key,
                    &format!("flink_config.{}", key.value),
                    format!("is set by the agent: {why}"),
                );
                continue;
            }
            if let Some(field) = flink.structured_keys.get(key.value.as_str()) {
                check.at(
                    &key,
                    &format!("flink_config.{}", key.value),
                    format!("is already set by `{field}`; set it in one place"),
                );
                continue;
            }
            if key.value.starts_with("restart-strategy.")
                && flink.structured_keys.contains_key("restart-strategy.type")
            {
                check.at(&key, &format!("flink_config.{}", key.value), "restart options are set by `deployment.restart_strategy`; set them in one place");
                continue;
            }
            flink.options.insert(key.value, value.into_text());
        }
    }
}
