//! Prometheus metrics, all named `flink_gitops_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, AtomicU64};

/// `action` and `result` of one job's reconciliation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// create, upgrade, delete...
    pub action: String,
    /// ok, failed, rolled_back...
    pub result: String,
}

/// A single `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// What kind.
    pub kind: String,
}

/// A single `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The recorded state of jobs.
    pub state: String,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Duration of reconcile passes.
    pub reconcile_duration: Histogram,
    /// Job actions by kind and result.
    pub actions: Family<ActionLabels, Counter>,
    /// Jobs by recorded state and kind.
    pub jobs: Family<JobStateLabels, Gauge>,
    /// Unix time of the last pass that applied the head.
    pub last_sync: Gauge<f64, AtomicU64>,
    /// Age of the head commit (commit time to now).
    pub head_commit_age: Gauge<f64, AtomicU64>,
    /// Refused heads by reason.
    pub refusals: Family<KindLabels, Counter>,
    /// 1 when the last contact with Flink succeeded.
    pub flink_up: Gauge<i64, AtomicI64>,
    /// 1 while the circuit breaker keeps the agent off the cluster.
    pub circuit_open: Gauge<i64, AtomicI64>,
    /// Polls by result.
    pub polls: Family<KindLabels, Counter>,
    /// Webhook requests by result.
    pub webhooks: Family<KindLabels, Counter>,
    /// Batch runs recorded, by status.
    pub batch_runs: Family<StateLabels, Gauge>,
    /// Repository polls failed in a row (0 after a successful one).
    pub poll_failures: Gauge<i64, AtomicI64>,
    /// Managed jobs by lifecycle phase (steady, stopping, ..., blocked).
    pub job_phases: Family<StateLabels, Gauge>,
    /// Failed tries in a row, per job that has any (0 is not exported).
    pub job_failures: Family<JobLabels, Gauge>,
    /// Periodic savepoints by result (`ok`, `failed`).
    pub periodic_savepoints: Family<KindLabels, Counter>,
    /// Seconds since each job's newest savepoint.
    pub savepoint_age: Family<JobLabels, Gauge>,
    /// Alerts per target and state (`delivered`, `waiting`, `failed_tries`).
    pub alerts: Family<AlertLabels, Gauge>,
    /// HTTP connections open now.
    pub http_connections: Gauge<i64, AtomicI64>,
    /// HTTP connections closed to make room for a newer one.
    pub http_evicted: Counter,
}

/// `state` and `kind` of managed jobs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabels {
    /// The recorded state.
    pub state: String,
    /// `jar`, `sql` or `python`.
    pub kind: String,
}

/// `target` and `state` of alert deliveries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The `notify:` target's name.
    pub target: String,
    /// `delivered`, `waiting` or `failed_tries`.
    pub state: String,
}

/// Labels of per-job series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The spec's job id.
    pub job_id: String,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flink_gitops");
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let actions = Family::<ActionLabels, Counter>::default();
        let jobs = Family::<JobStateLabels, Gauge>::default();
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let head_commit_age = Gauge::<f64, AtomicU64>::default();
        let refusals = Family::<KindLabels, Counter>::default();
        let flink_up = Gauge::<i64, AtomicI64>::default();
        let circuit_open = Gauge::<i64, AtomicI64>::default();
        let polls = Family::<KindLabels, Counter>::default();
        let webhooks = Family::<KindLabels, Counter>::default();
        let batch_runs = Family::<StateLabels, Gauge>::default();
        let job_phases = Family::<StateLabels, Gauge>::default();
        let poll_failures = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "poll_failures_in_a_row",
            "Repository polls failed in a row; polls back off while it is above 0",
            poll_failures.clone(),
        );
        let job_failures = Family::<JobLabels, Gauge>::default();
        let periodic_savepoints = Family::<KindLabels, Counter>::default();
        registry.register(
            "periodic_savepoints",
            "Periodic savepoints (stream_config.savepoint_trigger_interval) by result",
            periodic_savepoints.clone(),
        );
        let alerts = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "alerts",
            "Alerts per notify target: delivered, waiting (to be retried), failed tries",
            alerts.clone(),
        );
        let savepoint_age = Family::<JobLabels, Gauge>::default();
        registry.register(
            "savepoint_age_seconds",
            "Seconds since the newest savepoint of each job",
            savepoint_age.clone(),
        );
        registry.register(
            "job_phases",
            "Managed jobs by lifecycle phase; blocked jobs wait for a commit or `flink-gitops retry`",
            job_phases.clone(),
        );
        registry.register(
            "job_failures",
            "Failed tries in a row of a job that is backing off or blocked",
            job_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_duration.clone(),
        );
        registry.register("actions", "Job actions by kind and result", actions.clone());
        registry.register(
            "jobs",
            "Managed jobs by recorded state and kind (jar, sql, python)",
            jobs.clone(),
        );
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last pass that applied the branch head",
            last_sync.clone(),
        );
        registry.register(
            "head_commit_age_seconds",
            "Age of the branch head commit",
            head_commit_age.clone(),
        );
        registry.register(
            "refused_revisions",
            "Heads refused, by reason (signature, rollback, spec...)",
            refusals.clone(),
        );
        registry.register(
            "flink_up",
            "1 when the last contact with Flink succeeded",
            flink_up.clone(),
        );
        registry.register(
            "circuit_breaker_open",
            "1 while the agent stays off an unreachable cluster",
            circuit_open.clone(),
        );
        registry.register("polls", "Repository polls by result", polls.clone());
        registry.register("webhooks", "Webhook requests by result", webhooks.clone());
        registry.register(
            "batch_runs",
            "Batch runs recorded, by status (running, finished, failed, timed_out...)",
            batch_runs.clone(),
        );
        let http_connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "http_connections",
            "HTTP connections open now, at most server.max_connections",
            http_connections.clone(),
        );
        let http_evicted = Counter::default();
        registry.register(
            "http_evicted_connections",
            "HTTP connections closed because the table was full and a newer one came",
            http_evicted.clone(),
        );
        Metrics {
            registry,
            http_connections,
            http_evicted,
            reconcile_duration,
            actions,
            jobs,
            last_sync,
            head_commit_age,
            refusals,
            flink_up,
            circuit_open,
            polls,
            webhooks,
            batch_runs,
            job_phases,
            job_failures,
            poll_failures,
            periodic_savepoints,
            savepoint_age,
            alerts,
        }
    }

    /// The OpenMetrics exposition (what Prometheus asks for first).
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do not speak
    /// OpenMetrics (`promtool check metrics`, curl).
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }

    /// Counts one more of `kind` in a single-label family.
    pub fn count(family: &Family<KindLabels, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// OpenMetrics to the classic text format: a counter family `x` describes its samples `x_total`
/// there, and `# UNIT` and `# EOF` do not exist.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(described.as_deref().unwrap_or(line).trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::openmetrics_to_text;

    #[test]
    fn counters_are_described_by_their_sample_names_in_the_text_format() {
        let openmetrics = "# HELP flink_gitops_polls Polls by result.\n# TYPE flink_gitops_polls counter\nflink_gitops_polls_total{kind=\"ok\"} 3\n# HELP flink_gitops_jobs Jobs.\n# TYPE flink_gitops_jobs gauge\n# UNIT flink_gitops_jobs jobs\nflink_gitops_jobs 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(openmetrics),
            "# HELP flink_gitops_polls_total Polls by result.\n# TYPE flink_gitops_polls_total counter\nflink_gitops_polls_total{kind=\"ok\"} 3\n# HELP flink_gitops_jobs Jobs.\n# TYPE flink_gitops_jobs gauge\nflink_gitops_jobs 2\n"
        );
    }
}
