//! The raw serde layer: every field of the YAML contract, including the ones refused (to explain why).

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use super::{Concurrency, DesiredRunState, JobType, RestartStrategy, RollbackScope, UpgradeMode};

/// A value with where it stands in the file, for error locations.
pub(super) type S<T> = Spanned<T>;

/// One spec file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    pub(super) job_id: Option<S<String>>,
    pub(super) job_type: Option<S<JobType>>,
    pub(super) artifact_path: Option<S<String>>,
    pub(super) artifact_url: Option<S<String>>,
    pub(super) artifact_signature: Option<S<String>>,
    pub(super) sql: Option<S<SqlFiles>>,
    pub(super) python: Option<S<RawPython>>,
    pub(super) runner: Option<S<String>>,
    pub(super) entry_class: Option<S<String>>,
    pub(super) deployment: Option<S<RawDeployment>>,
    pub(super) resources: Option<S<IgnoredAny>>,
    pub(super) security: Option<RawSecurity>,
    pub(super) monitoring: Option<RawMonitoring>,
    pub(super) args: Option<Vec<S<String>>>,
    pub(super) env_vars: Option<S<IgnoredAny>>,
    pub(super) batch_config: Option<S<RawBatch>>,
    pub(super) stream_config: Option<S<RawStream>>,
    pub(super) advanced: Option<RawAdvanced>,
    pub(super) state: Option<DesiredRunState>,
    pub(super) upgrade_mode: Option<UpgradeMode>,
    pub(super) allow_non_restored_state: Option<bool>,
    pub(super) restore_from: Option<S<String>>,
    pub(super) savepoints: Option<S<RawRetention>>,
    pub(super) flink_config: Option<std::collections::HashMap<S<String>, FlinkValue>>,
    pub(super) health: Option<RawHealth>,
    pub(super) depends_on: Option<S<Vec<S<String>>>>,
    pub(super) rollback: Option<RollbackScope>,
}

/// `savepoints: { keep: 5, max_age: 14d }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) keep: Option<u32>,
    pub(super) max_age: Option<String>,
}

/// `sql: file.sql` or `sql: [a.sql, b.sql]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SqlFiles {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPython {
    pub(super) entry: Option<String>,
    pub(super) files: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeployment {
    pub(super) parallelism: Option<S<u32>>,
    pub(super) checkpoint_interval: Option<S<u64>>,
    pub(super) savepoint_path: Option<S<String>>,
    pub(super) restart_strategy: Option<S<RestartStrategy>>,
    pub(super) max_restart_attempts: Option<S<u32>>,
    pub(super) restart_delay: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub(super) kerberos_principal: Option<S<IgnoredAny>>,
    pub(super) ssl_enabled: Option<S<IgnoredAny>>,
    pub(super) artifact_verification: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitoring {
    pub(super) metrics_port: Option<S<IgnoredAny>>,
    pub(super) log_level: Option<S<IgnoredAny>>,
    pub(super) alert_on_failure: Option<bool>,
    pub(super) alert_on_backpressure: Option<bool>,
    pub(super) backpressure_ratio: Option<S<f64>>,
    pub(super) backpressure_for: Option<S<String>>,
    pub(super) max_checkpoint_age: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatch {
    pub(super) cron: Option<S<String>>,
    pub(super) timezone: Option<S<String>>,
    pub(super) max_runs: Option<S<u32>>,
    pub(super) ttl_seconds: Option<S<u64>>,
    pub(super) cleanup_on_completion: Option<bool>,
    pub(super) concurrency: Option<Concurrency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStream {
    pub(super) savepoint_trigger_interval: Option<S<u64>>,
    pub(super) checkpoint_timeout: Option<S<u64>>,
    pub(super) min_pause_between_checkpoints: Option<u64>,
    pub(super) max_concurrent_checkpoints: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdvanced {
    pub(super) classloader_resolve_order: Option<S<IgnoredAny>>,
    pub(super) classloader_cache_mode: Option<S<IgnoredAny>>,
    pub(super) network_buffer_timeout: Option<u64>,
    pub(super) taskmanager_heap_size: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) stable_for: Option<S<String>>,
    pub(super) max_restarts: Option<u32>,
    pub(super) require_checkpoint: Option<bool>,
    pub(super) min_checkpoints: Option<S<u32>>,
    pub(super) max_checkpoint_age: Option<S<String>>,
    pub(super) max_backpressure: Option<S<f64>>,
    pub(super) timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FlinkValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl FlinkValue {
    pub(super) fn into_text(self) -> String {
        match self {
            FlinkValue::Bool(b) => b.to_string(),
            FlinkValue::Int(i) => i.to_string(),
            FlinkValue::Float(f) => f.to_string(),
            FlinkValue::Text(t) => t,
        }
    }
}
