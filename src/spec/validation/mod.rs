//! Validation: the raw YAML checked field by field into a [`JobSpec`], every problem reported.

mod artifact;
mod batch;
mod dependencies;
mod deployment;
mod flink_config;
mod health;
mod monitoring;
mod stream;

use std::collections::BTreeMap;

use super::paths::valid_job_id;
use super::raw::{RawSpec, S};
use super::{DesiredRunState, JobSpec, JobType, Retention, SpecError, UpgradeMode, yaml};

pub use batch::normalize_cron;
pub(crate) use flink_config::AGENT_OWNED_OPTIONS;

struct Checker<'a> {
    file: &'a str,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    fn at<T>(&mut self, spanned: &S<T>, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
            field: Some(field.to_string()),
            message: message.into(),
        });
    }

    fn whole_file(&mut self, field: Option<&str>, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: 0,
            column: 0,
            field: field.map(str::to_string),
            message: message.into(),
        });
    }

    fn refuse<T>(&mut self, spanned: &Option<S<T>>, field: &str, why: &str) {
        if let Some(s) = spanned {
            self.at(
                s,
                field,
                format!("not supported on a Flink session cluster: {why}"),
            );
        }
    }
}

/// The Flink options a spec sets, and which structured field set each, so that `flink_config`
/// cannot set one a second time.
#[derive(Default)]
struct FlinkOptions {
    options: BTreeMap<String, String>,
    structured_keys: BTreeMap<&'static str, &'static str>,
}

/// Parses one spec file's text. All problems in the file are returned, not just the first.
pub fn parse_spec(file: &str, text: &str) -> Result<JobSpec, Vec<SpecError>> {
    let raw: RawSpec = yaml::from_str(text).map_err(|e| {
        // An unknown field is named in the message itself; elsewhere name the key on that line.
        let field = (!e.message.starts_with("unknown field"))
            .then(|| yaml::key_path_at(text, e.line))
            .flatten();
        vec![SpecError {
            file: file.to_string(),
            line: e.line,
            column: e.column,
            field,
            message: e.message,
        }]
    })?;
    let mut check = Checker {
        file,
        errors: Vec::new(),
    };
    let spec = validate(raw, &mut check);
    match spec {
        Some(spec) if check.errors.is_empty() => Ok(spec),
        _ => Err(check.errors),
    }
}

fn validate(raw: RawSpec, check: &mut Checker<'_>) -> Option<JobSpec> {
    let job_id = match &raw.job_id {
        None => {
            check.whole_file(Some("job_id"), "is required");
            None
        }
        Some(id) if !valid_job_id(&id.value) => {
            check.at(
                id,
                "job_id",
                format!(
                    "`{}` must match [a-z0-9][a-z0-9-]{{0,62}} (lower-case letters, digits, dashes)",
                    id.value
                ),
            );
            None
        }
        Some(id) => Some(id.value.clone()),
    };
    let job_type = match &raw.job_type {
        None => {
            check.whole_file(Some("job_type"), "is required (`stream` or `batch`)");
            None
        }
        Some(t) => Some(t.value),
    };

    let artifact = artifact::validate_artifact(&raw, check);
    let runner = artifact::validate_runner(&raw, artifact.as_ref(), check);

    let artifact_sha256 = artifact::validate_signature(&raw, artifact.as_ref(), check);
    let entry_class = artifact::validate_entry_class(&raw, check);

    let mut flink = FlinkOptions::default();
    let (parallelism, savepoint_dir) =
        deployment::validate_deployment(raw.deployment.as_ref(), &mut flink, check);
    check.refuse(&raw.resources, "resources", "TaskManager and JobManager resources are set for the whole cluster (taskmanager.memory.process.size, taskmanager.numberOfTaskSlots)");
    check.refuse(&raw.env_vars, "env_vars", "all jobs share the TaskManager processes, so there is no per-job environment; pass values through `args` or `flink_config`");

    let mut artifact_verification = false;
    if let Some(security) = &raw.security {
        check.refuse(&security.kerberos_principal, "security.kerberos_principal", "Kerberos is configured for the cluster; the agent's own connection settings live in its config file");
        check.refuse(
            &security.ssl_enabled,
            "security.ssl_enabled",
            "TLS to the cluster is the agent's connection setting (`flink.tls` in its config file)",
        );
        artifact_verification = security.artifact_verification.unwrap_or(false);
    }
    let monitoring = monitoring::validate_monitoring(raw.monitoring.as_ref(), check);
    if let Some(advanced) = &raw.advanced {
        check.refuse(
            &advanced.classloader_resolve_order,
            "advanced.classloader_resolve_order",
            "class loading is configured for the whole cluster (classloader.resolve-order)",
        );
        check.refuse(
            &advanced.classloader_cache_mode,
            "advanced.classloader_cache_mode",
            "class loading is configured for the whole cluster",
        );
        check.refuse(
            &advanced.taskmanager_heap_size,
            "advanced.taskmanager_heap_size",
            "TaskManager memory is set for the whole cluster (taskmanager.memory.task.heap.size)",
        );
        if let Some(timeout) = advanced.network_buffer_timeout {
            flink.options.insert(
                "execution.buffer-timeout.interval".into(),
                format!("{timeout} ms"),
            );
            flink.structured_keys.insert(
                "execution.buffer-timeout.interval",
                "advanced.network_buffer_timeout",
            );
        }
    }

    let savepoint_trigger_interval_ms =
        stream::validate_stream(raw.stream_config.as_ref(), job_type, &mut flink, check);

    let batch = match (&raw.batch_config, job_type) {
        (Some(b), Some(JobType::Stream)) => {
            check.at(b, "batch_config", "only applies to `job_type: batch`");
            None
        }
        (b, Some(JobType::Batch)) => {
            Some(batch::validate_batch(b.as_ref().map(|b| &b.value), check))
        }
        _ => None,
    };

    flink_config::merge_flink_config(raw.flink_config, &mut flink, check);

    let restore_from = raw.restore_from.as_ref().and_then(|path| {
        let value = path.value.trim();
        if job_type == Some(JobType::Batch) {
            check.at(path, "restore_from", "only applies to `job_type: stream`");
            None
        } else if url::Url::parse(value).is_ok_and(|u| u.scheme().len() > 1) {
            // As Flink prints them: file:/…, file:///…, s3://…
            Some(value.to_string())
        } else if value.starts_with('/') {
            Some(format!("file://{value}"))
        } else {
            check.at(
                path,
                "restore_from",
                format!("`{value}` must be an absolute path or a URL such as s3://bucket/savepoints/savepoint-…"),
            );
            None
        }
    });
    let savepoint_retention = raw.savepoints.as_ref().and_then(|policy| {
        if job_type == Some(JobType::Batch) {
            check.at(policy, "savepoints", "only applies to `job_type: stream`");
            return None;
        }
        match Retention::parse(policy.value.keep, policy.value.max_age.as_deref()) {
            Ok(retention) => Some(retention),
            Err(reason) => {
                check.at(policy, "savepoints", reason);
                None
            }
        }
    });
    let health = health::validate_health(raw.health.as_ref(), check);
    let depends_on =
        dependencies::validate_depends_on(raw.depends_on.as_ref(), job_id.as_deref(), check);
    let state = raw.state.unwrap_or(DesiredRunState::Running);
    let upgrade_mode = raw.upgrade_mode.unwrap_or(UpgradeMode::Savepoint);
    let args = raw
        .args
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.value)
        .collect();

    Some(JobSpec {
        job_id: job_id?,
        job_type: job_type?,
        artifact: artifact?,
        runner,
        artifact_sha256,
        entry_class,
        parallelism,
        args,
        savepoint_dir,
        flink_configuration: flink.options,
        artifact_verification,
        alert_on_failure: monitoring.alert_on_failure,
        alert_on_backpressure: monitoring.alert_on_backpressure,
        watch: monitoring.watch,
        savepoint_trigger_interval_ms,
        batch,
        state,
        upgrade_mode,
        allow_non_restored_state: raw.allow_non_restored_state.unwrap_or(false),
        restore_from,
        savepoint_retention,
        health,
        depends_on,
        rollback: raw.rollback,
    })
}
