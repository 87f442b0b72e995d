//! `stream_config:` checks: periodic savepoints and checkpoint tuning of a stream job.

use super::{Checker, FlinkOptions};
use crate::spec::JobType;
use crate::spec::raw::{RawStream, S};

/// The periodic savepoint interval `stream_config:` sets; its Flink options go into `flink`.
pub(super) fn validate_stream(
    stream_config: Option<&S<RawStream>>,
    job_type: Option<JobType>,
    flink: &mut FlinkOptions,
    check: &mut Checker<'_>,
) -> Option<u64> {
    let mut savepoint_trigger_interval_ms = None;
    if let Some(stream) = stream_config {
        if job_type == Some(JobType::Batch) {
            check.at(
                stream,
                "stream_config",
                "only applies to `job_type: stream`",
            );
        }
        let s = &stream.value;
        if let Some(interval) = &s.savepoint_trigger_interval {
            if interval.value < 1000 {
                check.at(
                    interval,
                    "stream_config.savepoint_trigger_interval",
                    "must be at least 1000 ms",
                );
            }
            savepoint_trigger_interval_ms = Some(interval.value);
        }
        if let Some(timeout) = &s.checkpoint_timeout {
            if timeout.value == 0 {
                check.at(
                    timeout,
                    "stream_config.checkpoint_timeout",
                    "must be at least 1 ms",
                );
            }
            flink.options.insert(
                "execution.checkpointing.timeout".into(),
                format!("{} ms", timeout.value),
            );
            flink.structured_keys.insert(
                "execution.checkpointing.timeout",
                "stream_config.checkpoint_timeout",
            );
        }
        if let Some(pause) = s.min_pause_between_checkpoints {
            flink.options.insert(
                "execution.checkpointing.min-pause".into(),
                format!("{pause} ms"),
            );
            flink.structured_keys.insert(
                "execution.checkpointing.min-pause",
                "stream_config.min_pause_between_checkpoints",
            );
        }
        if let Some(max) = &s.max_concurrent_checkpoints {
            if max.value == 0 {
                check.at(
                    max,
                    "stream_config.max_concurrent_checkpoints",
                    "must be at least 1",
                );
            }
            flink.options.insert(
                "execution.checkpointing.max-concurrent-checkpoints".into(),
                max.value.to_string(),
            );
            flink.structured_keys.insert(
                "execution.checkpointing.max-concurrent-checkpoints",
                "stream_config.max_concurrent_checkpoints",
            );
        }
    }
    savepoint_trigger_interval_ms
}
