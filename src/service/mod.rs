//! `flink-gitops run`: the long-running service (poll loop, webhook triggers, HTTP endpoints,
//! systemd notification, signals).

pub mod connections;
pub mod http;
pub mod last_pass;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::limits::Limits;
use crate::reconcile::{Agent, AgentError, Outcome};

/// How long a shutdown waits for the step in progress before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// The longest wait between two polls of a repository that keeps failing.
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The wait before the next poll after `failures` failed polls in a row.
fn poll_backoff(failures: u32, poll_interval: Duration) -> Duration {
    crate::reconcile::lifecycle::backoff(
        failures,
        poll_interval,
        POLL_BACKOFF_MAX.max(poll_interval),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0),
    )
}

/// Consecutive failed contacts with Flink that open the circuit breaker.
const BREAKER_THRESHOLD: u32 = 3;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the service knows about itself, for `/readyz`, `/api/v1/status` and `STATUS=`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceStatus {
    /// Branch head at the last successful poll.
    pub head: Option<String>,
    /// Unix time of the last successful poll.
    pub last_poll_ok: Option<f64>,
    /// Why the last poll failed, if it did.
    pub last_poll_error: Option<String>,
    /// Polls failed in a row; the next one waits `poll_interval · 2^(n-1)`, at most
    /// [`POLL_BACKOFF_MAX`] (or the poll interval when that is longer), with jitter.
    pub poll_failures: u32,
    /// Unix time of the next poll while polls fail.
    pub next_poll_at: Option<f64>,
    /// Unix time of the last successful contact with Flink.
    pub last_cluster_ok: Option<f64>,
    /// Why the last contact with Flink failed, if it did.
    pub last_cluster_error: Option<String>,
    /// Unix time until which the circuit breaker keeps the agent off the cluster.
    pub circuit_open_until: Option<f64>,
    /// The last reconcile pass.
    pub last_pass: Option<last_pass::LastPass>,
    /// The head last applied with every job converged.
    pub last_applied: Option<String>,
}

/// State shared by the loop and the HTTP server.
pub struct Shared {
    /// Status.
    pub status: RwLock<ServiceStatus>,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Triggers a poll at once (webhooks, the repo watcher); several triggers coalesce into one.
    pub trigger: Notify,
    /// The webhook HMAC secret.
    pub webhook_secret: RwLock<Option<Vec<u8>>>,
    /// The agent, replaced on SIGHUP.
    pub agent: RwLock<Option<Arc<Agent>>>,
    /// How recent polls and cluster contact must be for `/readyz`.
    pub ready_window: RwLock<Duration>,
}

impl Shared {
    fn status(&self) -> std::sync::RwLockReadGuard<'_, ServiceStatus> {
        self.status.read().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut ServiceStatus)) {
        f(&mut self.status.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// The current agent.
    pub fn agent(&self) -> Option<Arc<Agent>> {
        self.agent.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn read_secret(config: &Config) -> Result<Option<Vec<u8>>, AgentError> {
    config
        .server
        .webhook_secret_file
        .as_ref()
        .map(|p| {
            let secret = crate::util::read_file_limited(p, Limits::DEFAULT.secret_file_bytes)
                .map(|bytes| String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec())
                .map_err(|e| {
                    AgentError::Config(format!("server.webhook_secret_file {}: {e}", p.display()))
                })?;
            if secret.is_empty() {
                // An HMAC with an empty key would accept anyone's webhook.
                return Err(AgentError::Config(format!(
                    "server.webhook_secret_file {} is empty",
                    p.display()
                )));
            }
            Ok(secret)
        })
        .transpose()
}

/// Refuses a connection limit that could take the descriptors git, SQLite and Flink requests need:
/// at most half of the process's open-file limit goes to HTTP connections.
fn check_fd_budget(config: &Config) -> Result<(), AgentError> {
    let wanted = config.server.max_connections.get() as u64;
    match connections::open_file_limit() {
        Some(limit) if wanted > limit / 2 => Err(AgentError::Config(format!(
            "server.max_connections {wanted} would take more than half of the {limit} open files \
             this process may have (systemd LimitNOFILE=); lower it or raise the limit"
        ))),
        _ => Ok(()),
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "systemd notification failed");
    }
}

/// Runs the service until SIGTERM or SIGINT. Returns when shut down cleanly.
pub async fn run(config_path: &Path) -> Result<(), AgentError> {
    let config = Config::load(config_path).map_err(|e| AgentError::Config(e.to_string()))?;
    check_fd_budget(&config)?;
    let agent = Arc::new(Agent::open(config.clone())?.serving());
    let shared = Arc::new(Shared {
        status: RwLock::new(ServiceStatus::default()),
        metrics: metrics::Metrics::new(),
        trigger: Notify::new(),
        webhook_secret: RwLock::new(read_secret(&config)?),
        agent: RwLock::new(Some(Arc::clone(&agent))),
        ready_window: RwLock::new(config.server.ready_window),
    });
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| AgentError::Config(format!("server.listen {}: {e}", config.server.listen)))?;
    info!(listen = %config.server.listen, "HTTP server listening");
    let server = tokio::spawn(http::serve(
        listener,
        Arc::clone(&shared),
        connections::ServerLimits::of(&config),
    ));
    crate::util::mark_progress();
    if let Some(watchdog) = sd_notify::watchdog_enabled() {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(watchdog / 2).await;
                // Fed only while the loop (or a pass talking to Flink) gets on: a hung loop
                // stops the pings and systemd restarts the service.
                if shared.agent().is_some() && crate::util::since_progress_or_idle() < watchdog {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        });
    }

    let deliveries = tokio::spawn(deliver_alerts(Arc::clone(&shared)));
    let _watcher = watch_local_repo(&config, Arc::clone(&shared));
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| AgentError::Config(e.to_string()))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| AgentError::Config(e.to_string()))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| AgentError::Config(e.to_string()))?;

    let mut config = config;
    let mut agent = agent;
    let mut ready_sent = false;
    let mut next_reconcile = tokio::time::Instant::now();
    let mut failures: u32 = 0;
    loop {
        crate::util::mark_progress();
        agent
            .check_state()
            .map_err(|lost| state_lost(&agent, &server, lost))?;
        // One poll, and a pass when the head moved or the reconcile interval came round.
        let stopped = {
            let pass =
                poll_and_reconcile(&agent, &shared, &config, &mut next_reconcile, &mut failures);
            tokio::pin!(pass);
            let stopped = tokio::select! {
                _ = &mut pass => false,
                _ = terminate.recv() => true,
                _ = interrupt.recv() => true,
            };
            if stopped {
                info!("shutting down: finishing the step in progress");
                notify(&[
                    sd_notify::NotifyState::Stopping,
                    sd_notify::NotifyState::Status("finishing the step in progress"),
                ]);
                agent.shutdown_token().cancel();
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut pass)
                    .await
                    .is_err()
                {
                    warn!(
                        "the step in progress did not finish in time; the next start recovers it"
                    );
                }
            }
            stopped
        };
        if stopped {
            break;
        }
        // A pass that found the database gone ends here, before READY=1 or another status line.
        agent
            .check_state()
            .map_err(|lost| state_lost(&agent, &server, lost))?;
        if !ready_sent {
            notify(&[sd_notify::NotifyState::Ready]);
            ready_sent = true;
        }
        notify(&[sd_notify::NotifyState::Status(&status_line(&shared))]);

        let jitter = Duration::from_millis(u64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_millis())
                .unwrap_or(0)
                % (config.repo.poll_interval.as_millis().clamp(1, 1000) as u32 / 10 + 1),
        ));
        // Wake for the next poll, or earlier when the reconcile interval comes round first;
        // while polls fail, only after their backoff.
        let until_reconcile = next_reconcile.saturating_duration_since(tokio::time::Instant::now());
        let next_poll = match shared.status().next_poll_at {
            Some(at) => Duration::from_secs_f64((at - unix_now()).max(0.1)),
            None => config.repo.poll_interval + jitter,
        };
        let wait =
            tokio::time::sleep(next_poll.min(until_reconcile.max(Duration::from_millis(100))));
        crate::util::set_idle(true);
        let stopped = tokio::select! {
            _ = wait => false,
            _ = shared.trigger.notified() => { info!("triggered: polling now"); false }
            _ = hangup.recv() => {
                let (new_config, new_agent, problem) = reload(config_path, &config, &shared, agent)?;
                match problem {
                    None => {
                        info!("configuration reloaded");
                        next_reconcile = tokio::time::Instant::now();
                    }
                    Some(e) => error!(error = %e, "new configuration refused; keeping the running one"),
                }
                config = new_config;
                agent = new_agent;
                false
            }
            _ = terminate.recv() => true,
            _ = interrupt.recv() => true,
        };
        crate::util::set_idle(false);
        if stopped {
            notify(&[sd_notify::NotifyState::Stopping]);
            break;
        }
    }
    server.abort();
    deliveries.abort();
    info!("stopped");
    Ok(())
}

/// Delivers alerts on their own task, so a slow or dead target never holds up a pass: after each
/// pass that queued some, and when a retry is due.
async fn deliver_alerts(shared: Arc<Shared>) {
    const LONGEST_WAIT: Duration = Duration::from_secs(5);
    loop {
        let Some(agent) = shared.agent() else {
            tokio::time::sleep(LONGEST_WAIT).await;
            continue;
        };
        let queued = agent.alerts_queued();
        let wait = if agent.config().notify.is_empty() {
            LONGEST_WAIT
        } else {
            agent
                .deliver_events()
                .await
                .map(|at| {
                    Duration::from_millis(
                        (at - chrono::Utc::now().timestamp_millis()).max(0) as u64,
                    )
                })
                .unwrap_or(LONGEST_WAIT)
                .clamp(Duration::from_millis(200), LONGEST_WAIT)
        };
        // A reload (SIGHUP) replaces the agent once nobody holds the old one: never wait with it.
        drop(agent);
        tokio::select! {
            _ = queued.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The database was deleted or replaced under the agent: log it loudly, stop acting, and return
/// the error that makes `run` exit non-zero ([`crate::cli::EXIT_STATE_LOST`]) so systemd restarts
/// the service on the file that is there now (the kept watermark still guards against rollback).
fn state_lost(
    agent: &Agent,
    server: &tokio::task::JoinHandle<()>,
    lost: crate::state::StateError,
) -> AgentError {
    error!(
        path = %agent.config().state.dir.join("state.db").display(),
        error = %lost,
        "STATE DATABASE LOST: stopping the agent"
    );
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(&format!("state database lost: {lost}")),
    ]);
    agent.shutdown_token().cancel();
    server.abort();
    AgentError::State(lost)
}

/// Loads and checks the new configuration completely before the running agent is replaced.
fn reload(
    path: &Path,
    old: &Config,
    shared: &Shared,
    agent: Arc<Agent>,
) -> Result<(Config, Arc<Agent>, Option<String>), AgentError> {
    let checked = (|| -> Result<(Config, Option<Vec<u8>>), String> {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        if config.state.dir != old.state.dir {
            return Err("state.dir cannot change while running; restart the service".into());
        }
        if config.server.listen != old.server.listen {
            return Err("server.listen cannot change while running; restart the service".into());
        }
        if connections::ServerLimits::of(&config) != connections::ServerLimits::of(old) {
            return Err("server.max_connections, header_timeout and request_timeout cannot change while running; restart the service".into());
        }
        crate::revision::TrustMaterial::load(&config).map_err(|e| e.to_string())?;
        let secret = read_secret(&config).map_err(|e| e.to_string())?;
        Ok((config, secret))
    })();
    let (config, secret) = match checked {
        Ok(found) => found,
        Err(e) => return Ok((old.clone(), agent, Some(e))),
    };
    // The new agent takes the state directory's lock over from the old one.
    *shared.agent.write().unwrap_or_else(|p| p.into_inner()) = None;
    // Others (an HTTP request, an alert delivery to a slow target) may hold it a little longer.
    let mut agent = agent;
    for _ in 0..3000 {
        match Arc::try_unwrap(agent) {
            Ok(only) => {
                drop(only);
                break;
            }
            Err(still_shared) => {
                agent = still_shared;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    match Agent::open(config.clone()).map(Agent::serving) {
        Ok(new_agent) => {
            let new_agent = Arc::new(new_agent);
            *shared.agent.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&new_agent));
            *shared
                .webhook_secret
                .write()
                .unwrap_or_else(|p| p.into_inner()) = secret;
            *shared
                .ready_window
                .write()
                .unwrap_or_else(|p| p.into_inner()) = config.server.ready_window;
            Ok((config, new_agent, None))
        }
        Err(e) => {
            let previous = Arc::new(Agent::open(old.clone())?.serving());
            *shared.agent.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&previous));
            Ok((old.clone(), previous, Some(e.to_string())))
        }
    }
}

/// For a repository on this machine: watch its refs and poll at once (debounced) when they change.
fn watch_local_repo(config: &Config, shared: Arc<Shared>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    if !config.repo.watch {
        return None;
    }
    if config.repo.remote != crate::git::Remote::Local {
        return None;
    }
    let url = &config.repo.url;
    let path = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    let git_dir = if path.join(".git").is_dir() {
        path.join(".git")
    } else {
        path
    };
    if !git_dir.join("refs").is_dir() {
        return None;
    }
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (our own fetch opens the repository's files) must not trigger another poll.
        if event.is_ok_and(|e| !e.kind.is_access() && !e.kind.is_other()) {
            let _ = sender.send(());
        }
    })
    .map_err(|e| warn!(error = %e, "cannot watch the repository; polling only"))
    .ok()?;
    // Branch updates land in refs/ or packed-refs; watching the directory covers both.
    if let Err(e) = watcher.watch(&git_dir, notify::RecursiveMode::Recursive) {
        warn!(error = %e, dir = %git_dir.display(), "cannot watch the repository; polling only");
        return None;
    }
    info!(dir = %git_dir.display(), "watching the local repository for new commits");
    tokio::spawn(async move {
        while receiver.recv().await.is_some() {
            // Debounce: a commit touches many files; poll once when they settle.
            tokio::time::sleep(Duration::from_millis(300)).await;
            while receiver.try_recv().is_ok() {}
            shared.trigger.notify_one();
        }
    });
    Some(watcher)
}

fn status_line(shared: &Shared) -> String {
    let status = shared.status();
    if let Some(error) = &status.last_cluster_error {
        return format!("Flink unreachable: {error}");
    }
    match (&status.head, &status.last_pass) {
        (Some(head), Some(pass)) => {
            let jobs = pass.jobs;
            let short = crate::spec::source::short_id(head);
            match &pass.refused {
                Some((kind, _)) => {
                    format!("head {short} refused ({kind}); cluster keeps the last verified state")
                }
                None if pass.converged => format!("applied {short}; {jobs} jobs in sync"),
                None => format!("head {short}: not every job converged"),
            }
        }
        _ => "starting".into(),
    }
}

async fn poll_and_reconcile(
    agent: &Arc<Agent>,
    shared: &Shared,
    config: &Config,
    next_reconcile: &mut tokio::time::Instant,
    failures: &mut u32,
) {
    let head = match agent.fetch_head().await {
        Ok(head) => {
            metrics::Metrics::count(&shared.metrics.polls, "ok");
            shared.update(|s| {
                s.last_poll_ok = Some(unix_now());
                s.last_poll_error = None;
                s.poll_failures = 0;
                s.next_poll_at = None;
            });
            shared.metrics.poll_failures.set(0);
            head
        }
        Err(e) => {
            metrics::Metrics::count(&shared.metrics.polls, "failed");
            warn!(error = %e, "poll failed");
            let failures = shared.status().poll_failures + 1;
            let wait = poll_backoff(failures, config.repo.poll_interval);
            shared.update(|s| {
                s.last_poll_error = Some(crate::util::redact_urls(&e.to_string()));
                s.poll_failures = failures;
                s.next_poll_at = Some(unix_now() + wait.as_secs_f64());
            });
            shared.metrics.poll_failures.set(i64::from(failures));
            // Nothing can be reconciled without the repository: no pass before the next poll.
            *next_reconcile = (*next_reconcile).max(tokio::time::Instant::now() + wait);
            warn!(
                failures,
                next_poll_in_s = wait.as_secs_f64(),
                "polls fail; backing off"
            );
            return;
        }
    };
    let moved = shared.status().head.as_deref() != Some(head.as_str());
    let due = tokio::time::Instant::now() >= *next_reconcile;
    let breaker_open = shared
        .status()
        .circuit_open_until
        .is_some_and(|until| unix_now() < until);
    shared.update(|s| s.head = Some(head.clone()));
    if !moved && !due {
        return;
    }
    if breaker_open {
        // Stay off the cluster, but still probe it cheaply so the breaker can close.
        match agent.client().overview().await {
            Ok(_) => shared.update(|s| s.circuit_open_until = None),
            Err(e) => {
                shared.update(|s| {
                    s.last_cluster_error = Some(crate::util::redact_urls(&e.to_string()))
                });
                return;
            }
        }
    }
    *next_reconcile = tokio::time::Instant::now() + config.reconcile.interval;
    let started = std::time::Instant::now();
    hang_if_told(shared).await;
    let result = agent.reconcile_once().await;
    shared
        .metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let folding = Arc::clone(agent);
    if let Err(error) = tokio::task::spawn_blocking(move || folding.fold_kept_revision()).await {
        warn!(%error, "folding the verified revision did not finish");
    }
    if let Some(wakeup) = agent.next_batch_wakeup() {
        let until = (wakeup - chrono::Utc::now()).to_std().unwrap_or_default();
        *next_reconcile = (*next_reconcile).min(tokio::time::Instant::now() + until);
    }
    // A job backing off is tried again when its wait is over, not at the next interval.
    let now_ms = chrono::Utc::now().timestamp_millis();
    if let Ok(Some(retry_at)) = agent.next_retry_at_ms(now_ms) {
        let until = Duration::from_millis((retry_at - now_ms) as u64);
        *next_reconcile = (*next_reconcile).min(tokio::time::Instant::now() + until);
    }
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            warn!(error = %e, "reconcile pass failed");
            return;
        }
    };
    for job in &report.jobs {
        if job.outcome == Outcome::Unchanged {
            continue;
        }
        let result = job.outcome.as_str();
        shared
            .metrics
            .actions
            .get_or_create(&metrics::ActionLabels {
                action: job.action.as_str().to_string(),
                result: result.to_string(),
            })
            .inc();
    }
    for line in &report.savepoints {
        let result = if line.contains("savepoint failed") {
            "failed"
        } else {
            "ok"
        };
        metrics::Metrics::count(&shared.metrics.periodic_savepoints, result);
    }
    if let Ok(counts) = agent.delivery_counts() {
        shared.metrics.alerts.clear();
        for (target, delivered, waiting, failed) in counts {
            for (state, value) in [
                ("delivered", delivered),
                ("waiting", waiting),
                ("failed_tries", failed),
            ] {
                shared
                    .metrics
                    .alerts
                    .get_or_create(&metrics::AlertLabels {
                        target: target.clone(),
                        state: state.to_string(),
                    })
                    .set(value);
            }
        }
    }
    if let Ok(newest) = agent.newest_savepoints() {
        shared.metrics.savepoint_age.clear();
        let now = chrono::Utc::now().timestamp_millis();
        for savepoint in newest {
            shared
                .metrics
                .savepoint_age
                .get_or_create(&metrics::JobLabels {
                    job_id: savepoint.job_id,
                })
                .set((now - savepoint.taken_at_ms).max(0) / 1000);
        }
    }
    if let Some((kind, _)) = &report.refused {
        metrics::Metrics::count(&shared.metrics.refusals, kind);
    }
    match &report.cluster_error {
        Some(error) => {
            *failures += 1;
            shared.metrics.flink_up.set(0);
            let open = *failures >= BREAKER_THRESHOLD;
            shared.metrics.circuit_open.set(i64::from(open));
            shared.update(|s| {
                s.last_cluster_error = Some(error.clone());
                if open {
                    s.circuit_open_until =
                        Some(unix_now() + config.reconcile.interval.as_secs_f64());
                }
            });
        }
        None if report.refused.is_none() => {
            *failures = 0;
            shared.metrics.flink_up.set(1);
            shared.metrics.circuit_open.set(0);
            shared.update(|s| {
                s.last_cluster_ok = Some(unix_now());
                s.last_cluster_error = None;
                s.circuit_open_until = None;
            });
        }
        None => {}
    }
    if report.converged() {
        shared.metrics.last_sync.set(unix_now());
        shared.update(|s| s.last_applied = Some(head.clone()));
    }
    if let Ok(records) = agent.records() {
        shared.metrics.jobs.clear();
        shared.metrics.job_phases.clear();
        shared.metrics.job_failures.clear();
        for record in &records {
            let phase = record.phase_name().to_string();
            shared
                .metrics
                .job_phases
                .get_or_create(&metrics::StateLabels { state: phase })
                .inc();
            if record.failures > 0 {
                shared
                    .metrics
                    .job_failures
                    .get_or_create(&metrics::JobLabels {
                        job_id: record.job_id.clone(),
                    })
                    .set(record.failures);
            }
        }
        for record in records {
            let kind = record.job_kind();
            shared
                .metrics
                .jobs
                .get_or_create(&metrics::JobStateLabels {
                    state: record.status,
                    kind: kind.as_str().to_string(),
                })
                .inc();
        }
    }
    if let Ok(counts) = agent.run_status_counts() {
        shared.metrics.batch_runs.clear();
        for (status, count) in counts {
            shared
                .metrics
                .batch_runs
                .get_or_create(&metrics::StateLabels { state: status })
                .set(count);
        }
    }
    let repo = config.state.dir.join("repo.git");
    let commit = head.clone();
    // git2 reads the disk: off the async workers.
    if let Ok(Some(age)) =
        tokio::task::spawn_blocking(move || head_commit_age(&repo, &commit)).await
    {
        shared.metrics.head_commit_age.set(age);
    }
    let last_pass = last_pass::LastPass::of(&report);
    drop(report);
    shared.update(|s| s.last_pass = Some(last_pass));
    // Idle until the next pass: SQLite's page cache and what the pass freed go back to the system.
    if let Err(error) = agent.release_cached_pages() {
        warn!(%error, "cannot release the state store's page cache");
    }
    crate::util::return_freed_memory();
}

fn head_commit_age(mirror: &Path, head: &str) -> Option<f64> {
    let repo = git2::Repository::open_bare(mirror).ok()?;
    let commit = repo.find_commit(git2::Oid::from_str(head).ok()?).ok()?;
    Some((unix_now() - commit.time().seconds() as f64).max(0.0))
}

/// Failpoint `hang:pass`: every pass after the first hangs for good, as a deadlocked loop would
/// (for the watchdog test).
#[cfg(feature = "failpoints")]
async fn hang_if_told(shared: &Shared) {
    if std::env::var("FLINK_GITOPS_FAILPOINT").is_ok_and(|v| v == "hang:pass")
        && shared.status().last_pass.is_some()
    {
        warn!("failpoint hang:pass reached: this pass never ends");
        std::future::pending::<()>().await;
    }
}

#[cfg(not(feature = "failpoints"))]
async fn hang_if_told(_shared: &Shared) {}
