//! An in-process fake of the Flink REST API for fault injection and scale (500s, timeouts, slow or
//! failing savepoints, thousands of jobs). Lifecycle behaviour is proven against the real cluster; this
//! fake only covers what the real one cannot show on demand.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// A fault to inject, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// Behaves like a healthy cluster.
    Healthy,
    /// Every request answers HTTP 500 with a Flink-style stack trace.
    ServerError500,
    /// Every request takes this long before answering (beyond the agent's timeout).
    SlowResponses(Duration),
    /// Savepoints complete with a failure cause; the job keeps running.
    SavepointFails,
    /// Savepoints stay IN_PROGRESS forever.
    SavepointNeverCompletes,
    /// Newly submitted jobs fail right after start.
    JobFailsAfterStart,
}

#[derive(Debug, Clone)]
struct FakeJob {
    name: String,
    state: String,
    start: i64,
    restored_from: Option<String>,
    user_config: BTreeMap<String, String>,
    /// Slots it takes while it runs (its run request's parallelism).
    parallelism: u32,
}

/// A fault for the next requests matching a `METHOD /path-pattern` (job ids, trigger ids and JAR
/// ids appear as `:id`, e.g. `POST /jars/:id/run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status (and a Flink-style error body) without handling the request.
    Status(u16),
    /// Handle the request only after this delay (a client that timed out never sees the answer,
    /// but the request still takes effect, like a slow JobManager).
    Delay(Duration),
}

#[derive(Debug, Clone)]
struct FaultRule {
    pattern: String,
    remaining: u32,
    fault: Fault,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, FakeJob>,
    jars: BTreeMap<String, String>,
    triggers: HashMap<String, String>,
    scenario: Option<Scenario>,
    requests: BTreeMap<String, u64>,
    rules: Vec<FaultRule>,
    failing_arg: Option<String>,
    missing_paths: Vec<String>,
    backpressure: f64,
    checkpoint_acked_at: Option<i64>,
    required_authorization: Option<String>,
    slots_total: Option<u32>,
}

/// The fake's slots when a test does not set them: more than any test uses.
const DEFAULT_SLOTS: u32 = 100_000;

impl Inner {
    fn slots_total(&self) -> u32 {
        self.slots_total.unwrap_or(DEFAULT_SLOTS)
    }

    /// Slots taken by the jobs that run (one per parallel task, as with one slot-sharing group).
    fn slots_used(&self) -> u32 {
        self.jobs
            .values()
            .filter(|j| j.state == "RUNNING")
            .map(|j| j.parallelism)
            .sum()
    }

    /// Jobs waiting in CREATED start, oldest first, as far as the free slots go (as Flink's
    /// scheduler does when slots are freed).
    fn schedule_waiting(&mut self) {
        let mut waiting: Vec<(i64, String)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.state == "CREATED")
            .map(|(jid, j)| (j.start, jid.clone()))
            .collect();
        waiting.sort();
        for (_, jid) in waiting {
            let free = self.slots_total().saturating_sub(self.slots_used());
            if let Some(job) = self.jobs.get_mut(&jid)
                && job.parallelism <= free
            {
                job.state = "RUNNING".into();
            }
        }
    }
}

/// The fake server's shared state.
#[derive(Clone, Default)]
pub struct FakeFlink {
    inner: Arc<Mutex<Inner>>,
    total: Arc<AtomicU64>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn flink_error(status: StatusCode, message: &str) -> Response {
    let trace = format!(
        "org.apache.flink.runtime.rest.handler.RestHandlerException: {message}\n\tat org.apache.flink.Fake.handle(Fake.java:1)\nCaused by: java.lang.RuntimeException: {message}\n\t... 3 more"
    );
    (status, Json(json!({"errors": [trace]}))).into_response()
}

impl FakeFlink {
    /// A healthy fake with no jobs.
    pub fn new() -> FakeFlink {
        FakeFlink::default()
    }

    /// From now on, a request without exactly this `Authorization` header gets 401, as behind an
    /// authenticating proxy.
    pub fn require_authorization(&self, value: &str) {
        self.lock().required_authorization = Some(value.to_string());
    }

    /// The cluster has `total` task slots (`/overview`); a job submitted when too few are free
    /// waits in CREATED, as on Flink.
    pub fn set_slots(&self, total: u32) {
        let mut inner = self.lock();
        inner.slots_total = Some(total);
        inner.schedule_waiting();
    }

    /// Sets the fault scenario.
    pub fn set_scenario(&self, scenario: Scenario) {
        self.lock().scenario = Some(scenario);
    }

    /// Injects `fault` into the next `times` requests matching `pattern` (`METHOD /path-pattern`).
    pub fn fail_next(&self, pattern: &str, times: u32, fault: Fault) {
        self.lock().rules.push(FaultRule {
            pattern: pattern.to_string(),
            remaining: times,
            fault,
        });
    }

    /// Injected faults not served yet (a test whose faults never fired proves nothing).
    pub fn faults_pending(&self) -> u32 {
        self.lock().rules.iter().map(|rule| rule.remaining).sum()
    }

    /// Submissions restoring from `path` are refused as Flink refuses a savepoint or checkpoint
    /// that no longer exists: HTTP 400 with `FileNotFoundException`, and a FAILED job under that id.
    pub fn delete_state(&self, path: &str) {
        self.lock().missing_paths.push(path.to_string());
    }

    /// Jobs whose program arguments contain `marker` fail right after they start.
    pub fn fail_jobs_with_arg(&self, marker: &str) {
        self.lock().failing_arg = Some(marker.to_string());
    }

    /// Every running subtask reports this backpressured ratio (0..1) from now on.
    pub fn set_backpressure(&self, ratio: f64) {
        self.lock().backpressure = ratio;
    }

    /// Every job's newest completed checkpoint was acknowledged at `epoch_ms` (else at its start).
    pub fn set_checkpoint_acked_at(&self, epoch_ms: i64) {
        self.lock().checkpoint_acked_at = Some(epoch_ms);
    }

    /// A JobManager restart: every job and savepoint operation is forgotten; uploaded JARs stay.
    pub fn forget_jobs(&self) {
        let mut inner = self.lock();
        inner.jobs.clear();
        inner.triggers.clear();
    }

    /// Ids and states of the jobs whose id starts with `prefix`.
    pub fn jobs_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.lock()
            .jobs
            .iter()
            .filter(|(jid, _)| jid.starts_with(prefix))
            .map(|(jid, job)| (jid.clone(), job.state.clone()))
            .collect()
    }

    /// The savepoint or checkpoint a job was started from.
    pub fn restored_from(&self, jid: &str) -> Option<String> {
        self.lock()
            .jobs
            .get(jid)
            .and_then(|j| j.restored_from.clone())
    }

    /// Adds `count` RUNNING jobs with the given ids.
    pub fn add_running_jobs(&self, ids: impl IntoIterator<Item = String>) {
        let mut inner = self.lock();
        for jid in ids {
            inner.jobs.insert(
                jid.clone(),
                FakeJob {
                    name: format!("job-{jid}"),
                    state: "RUNNING".into(),
                    start: now_ms(),
                    restored_from: None,
                    user_config: BTreeMap::new(),
                    parallelism: 1,
                },
            );
        }
    }

    /// The state of a job, if known.
    pub fn job_state(&self, jid: &str) -> Option<String> {
        self.lock().jobs.get(jid).map(|j| j.state.clone())
    }

    /// Requests served, in total.
    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests served per `METHOD path-pattern`.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serves on `127.0.0.1:0`; returns the bound address. The server lives as long as the runtime.
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route("/overview", get(overview))
            .route("/jobmanager/config", get(jobmanager_config))
            .route("/jobs/overview", get(jobs_overview))
            .route("/jobs/{jid}", get(job).patch(cancel))
            .route("/jobs/{jid}/checkpoints", get(checkpoints))
            .route("/jobs/{jid}/checkpoints/config", get(checkpoint_config))
            .route("/jobs/{jid}/config", get(job_config))
            .route("/jobs/{jid}/exceptions", get(exceptions))
            .route(
                "/jobs/{jid}/vertices/{vid}/backpressure",
                get(vertex_backpressure),
            )
            .route("/jobs/{jid}/stop", post(stop))
            .route("/jobs/{jid}/savepoints", post(trigger_savepoint))
            .route("/savepoint-disposal", post(dispose_savepoint))
            .route("/savepoint-disposal/{trigger}", get(disposal_status))
            .route("/jobs/{jid}/savepoints/{trigger}", get(savepoint_status))
            .route("/jars", get(jars))
            .route("/jars/upload", post(upload))
            .route("/jars/{jar}", axum::routing::delete(delete_jar))
            .route("/jars/{jar}/run", post(run))
            .fallback(any(not_found))
            .layer(axum::middleware::from_fn_with_state(self.clone(), faults))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(address)
    }
}

async fn faults(
    State(fake): State<FakeFlink>,
    method: Method,
    uri: Uri,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    fake.total.fetch_add(1, Ordering::Relaxed);
    let pattern = uri
        .path()
        .split('/')
        .map(|part| {
            if part.len() >= 32 || part.ends_with(".jar") {
                ":id"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    let key = format!("{method} {pattern}");
    let sent = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (scenario, fault) = {
        let mut inner = fake.lock();
        if inner
            .required_authorization
            .as_ref()
            .is_some_and(|required| sent.as_ref() != Some(required))
        {
            return (StatusCode::UNAUTHORIZED, "401 Unauthorized").into_response();
        }
        *inner.requests.entry(key.clone()).or_default() += 1;
        let fault = inner
            .rules
            .iter_mut()
            .find(|rule| rule.pattern == key && rule.remaining > 0)
            .map(|rule| {
                rule.remaining -= 1;
                rule.fault.clone()
            });
        (inner.scenario.clone(), fault)
    };
    match fault {
        Some(Fault::Status(status)) => {
            return flink_error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected failure",
            );
        }
        Some(Fault::Delay(delay)) => {
            // Like a slow JobManager, the request takes effect even when the client gave up:
            // it is handled on a task of its own that the dropped connection cannot cancel.
            let handled = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                next.run(request).await
            });
            return handled.await.unwrap_or_else(|_| {
                flink_error(StatusCode::INTERNAL_SERVER_ERROR, "fake handler panicked")
            });
        }
        None => {}
    }
    match scenario {
        Some(Scenario::ServerError500) => {
            return flink_error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
        }
        Some(Scenario::SlowResponses(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    next.run(request).await
}

async fn not_found(uri: Uri) -> Response {
    flink_error(StatusCode::NOT_FOUND, &format!("Not found: {}", uri.path()))
}

async fn overview(State(fake): State<FakeFlink>) -> Json<Value> {
    let inner = fake.lock();
    let running = inner.jobs.values().filter(|j| j.state == "RUNNING").count();
    let (total, used) = (inner.slots_total(), inner.slots_used());
    Json(
        json!({"taskmanagers": 1, "slots-total": total, "slots-available": total.saturating_sub(used), "jobs-running": running, "flink-version": "2.3.0-fake"}),
    )
}

async fn jobmanager_config() -> Json<Value> {
    Json(json!([{"key": "parallelism.default", "value": "1"}]))
}

async fn jobs_overview(State(fake): State<FakeFlink>) -> Json<Value> {
    let inner = fake.lock();
    let jobs: Vec<Value> = inner
        .jobs
        .iter()
        .map(|(jid, j)| json!({"jid": jid, "name": j.name, "state": j.state, "start-time": j.start, "end-time": -1}))
        .collect();
    Json(json!({ "jobs": jobs }))
}

async fn job(State(fake): State<FakeFlink>, Path(jid): Path<String>) -> Response {
    let inner = fake.lock();
    match inner.jobs.get(&jid) {
        Some(j) => Json(json!({
            "jid": jid, "name": j.name, "state": j.state, "start-time": j.start, "end-time": -1,
            "timestamps": {"RUNNING": j.start},
            "vertices": [{"id": "v1", "name": "source", "parallelism": 1, "status": j.state}]
        }))
        .into_response(),
        None => flink_error(StatusCode::NOT_FOUND, "Job could not be found."),
    }
}

async fn cancel(State(fake): State<FakeFlink>, Path(jid): Path<String>) -> Response {
    let mut inner = fake.lock();
    match inner.jobs.get_mut(&jid) {
        Some(j)
            if matches!(
                j.state.as_str(),
                "RUNNING" | "RESTARTING" | "CREATED" | "CANCELED"
            ) =>
        {
            j.state = "CANCELED".into();
            inner.schedule_waiting();
            (StatusCode::ACCEPTED, Json(json!({}))).into_response()
        }
        Some(j) => flink_error(
            StatusCode::CONFLICT,
            &format!(
                "Job cancellation failed because the job has already reached another terminal state ({}).",
                j.state
            ),
        ),
        None => flink_error(StatusCode::NOT_FOUND, "Job could not be found."),
    }
}

async fn checkpoints(State(fake): State<FakeFlink>, Path(jid): Path<String>) -> Response {
    let inner = fake.lock();
    match inner.jobs.get(&jid) {
        Some(j) => Json(json!({
            "counts": {"restored": 0, "total": 1, "in_progress": 0, "completed": 1, "failed": 0},
            "latest": {
                "completed": {"id": 1, "external_path": format!("file:/fake/checkpoints/{jid}/chk-1"), "latest_ack_timestamp": inner.checkpoint_acked_at.unwrap_or(j.start), "is_savepoint": false},
                "restored": j.restored_from.as_ref().map(|p| json!({"id": 1, "restore_timestamp": j.start, "is_savepoint": true, "external_path": p}))
            }
        }))
        .into_response(),
        None => flink_error(StatusCode::NOT_FOUND, "Job could not be found."),
    }
}

async fn vertex_backpressure(
    State(fake): State<FakeFlink>,
    Path((jid, _vid)): Path<(String, String)>,
) -> Response {
    let inner = fake.lock();
    if !inner.jobs.contains_key(&jid) {
        return flink_error(StatusCode::NOT_FOUND, "Job could not be found.");
    }
    let ratio = inner.backpressure;
    let level = if ratio > 0.5 {
        "high"
    } else if ratio > 0.1 {
        "low"
    } else {
        "ok"
    };
    Json(json!({
        "status": "ok", "backpressureLevel": level, "end-timestamp": now_ms(),
        "subtasks": [{"subtask": 0, "backpressureLevel": level, "ratio": ratio, "idleRatio": 1.0 - ratio, "busyRatio": 0.0, "backpressure-level": level}],
        "backpressure-level": level
    }))
    .into_response()
}

async fn checkpoint_config() -> Json<Value> {
    Json(json!({"interval": 1000, "timeout": 600000, "min_pause": 0, "max_concurrent": 1}))
}

async fn job_config(State(fake): State<FakeFlink>, Path(jid): Path<String>) -> Json<Value> {
    let user_config = fake
        .lock()
        .jobs
        .get(&jid)
        .map(|j| j.user_config.clone())
        .unwrap_or_default();
    Json(
        json!({"jid": jid, "execution-config": {"job-parallelism": 1, "user-config": user_config}}),
    )
}

async fn exceptions(State(fake): State<FakeFlink>, Path(jid): Path<String>) -> Json<Value> {
    let inner = fake.lock();
    let entries = match inner.jobs.get(&jid) {
        Some(j) if j.state == "FAILED" || j.state == "RESTARTING" => vec![
            json!({"exceptionName": "java.lang.IllegalStateException", "stacktrace": "java.lang.IllegalStateException: injected start-up failure\n\tat Fake.open(Fake.java:1)", "timestamp": now_ms()}),
        ],
        _ => Vec::new(),
    };
    Json(json!({"exceptionHistory": {"entries": entries, "truncated": false}}))
}

/// Why Flink 2.3 fails a savepoint (or a stop with one) of job `jid`, if it does: it accepts the
/// request (202) and ends the operation with this cause, for a job that does not run.
fn savepoint_refusal(inner: &Inner, jid: &str) -> Option<String> {
    match inner.jobs.get(jid).map(|j| j.state.as_str()) {
        Some("RUNNING") => None,
        // A job that has ended is no longer known to the dispatcher.
        None | Some("FINISHED" | "CANCELED" | "FAILED") => Some(format!(
            "org.apache.flink.runtime.messages.FlinkJobNotFoundException: Could not find Flink job ({jid})"
        )),
        Some(_) => Some(
            "org.apache.flink.runtime.checkpoint.CheckpointException: Not all required tasks are currently running."
                .to_string(),
        ),
    }
}

async fn stop(
    State(fake): State<FakeFlink>,
    Path(jid): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let trigger = body["triggerId"].as_str().unwrap_or("0").to_string();
    let target = body["targetDirectory"]
        .as_str()
        .unwrap_or("file:/fake/savepoints")
        .to_string();
    let mut inner = fake.lock();
    let scenario = inner.scenario.clone();
    if inner.triggers.contains_key(&trigger) {
        // Like Flink, a trigger id already used names the operation it started: a retried
        // request starts nothing new.
        return (StatusCode::ACCEPTED, Json(json!({"request-id": trigger}))).into_response();
    }
    inner.triggers.insert(trigger.clone(), jid.clone());
    if let Some(cause) = savepoint_refusal(&inner, &jid) {
        inner.triggers.insert(format!("{trigger}/failed"), cause);
    } else if scenario == Some(Scenario::Healthy)
        || scenario.is_none()
        || scenario == Some(Scenario::JobFailsAfterStart)
    {
        if let Some(j) = inner.jobs.get_mut(&jid) {
            j.state = "FINISHED".into();
        }
        inner.schedule_waiting();
        inner.triggers.insert(
            format!("{trigger}/location"),
            format!(
                "{}/savepoint-{}",
                target.trim_end_matches('/'),
                &jid[..6.min(jid.len())]
            ),
        );
    }
    (StatusCode::ACCEPTED, Json(json!({"request-id": trigger}))).into_response()
}

async fn trigger_savepoint(
    State(fake): State<FakeFlink>,
    Path(jid): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let trigger = body["triggerId"].as_str().unwrap_or("0").to_string();
    let target = body["target-directory"]
        .as_str()
        .unwrap_or("file:/fake/savepoints")
        .to_string();
    let mut inner = fake.lock();
    if inner.triggers.contains_key(&trigger) {
        // A retried request: the operation of this trigger id is already under way.
        return (StatusCode::ACCEPTED, Json(json!({"request-id": trigger}))).into_response();
    }
    inner.triggers.insert(trigger.clone(), jid.clone());
    if let Some(cause) = savepoint_refusal(&inner, &jid) {
        inner.triggers.insert(format!("{trigger}/failed"), cause);
        return (StatusCode::ACCEPTED, Json(json!({"request-id": trigger}))).into_response();
    }
    inner.triggers.insert(
        format!("{trigger}/location"),
        format!(
            "{}/savepoint-{}-{trigger}",
            target.trim_end_matches('/'),
            &jid[..6.min(jid.len())]
        ),
    );
    (StatusCode::ACCEPTED, Json(json!({"request-id": trigger}))).into_response()
}

async fn dispose_savepoint(State(fake): State<FakeFlink>, Json(body): Json<Value>) -> Response {
    let path = body["savepoint-path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut inner = fake.lock();
    let trigger = format!("{:032x}", inner.triggers.len() + 1);
    inner.triggers.insert(format!("{trigger}/disposed"), path);
    Json(json!({"request-id": trigger})).into_response()
}

async fn disposal_status(State(fake): State<FakeFlink>, Path(trigger): Path<String>) -> Response {
    match fake.lock().triggers.get(&format!("{trigger}/disposed")) {
        Some(_) => Json(json!({"status": {"id": "COMPLETED"}, "operation": {}})).into_response(),
        None => flink_error(
            StatusCode::NOT_FOUND,
            "There is no savepoint disposal with this triggerId",
        ),
    }
}

async fn savepoint_status(
    State(fake): State<FakeFlink>,
    Path((_jid, trigger)): Path<(String, String)>,
) -> Response {
    let inner = fake.lock();
    match inner.scenario {
        Some(Scenario::SavepointNeverCompletes) => Json(json!({"status": {"id": "IN_PROGRESS"}, "operation": null})).into_response(),
        Some(Scenario::SavepointFails) => Json(json!({"status": {"id": "COMPLETED"}, "operation": {"failure-cause": {"class": "java.io.IOException", "stack-trace": "org.apache.flink.runtime.checkpoint.CheckpointException: An Exception occurred while triggering the checkpoint. IO-problem detected.\nCaused by: java.io.IOException: injected: disk full"}}})).into_response(),
        _ if inner.triggers.contains_key(&format!("{trigger}/failed")) => {
            let cause = &inner.triggers[&format!("{trigger}/failed")];
            Json(json!({"status": {"id": "COMPLETED"}, "operation": {"failure-cause": {"class": "java.util.concurrent.CompletionException", "stack-trace": format!("java.util.concurrent.CompletionException: {cause}\n\tat org.apache.flink.Fake.trigger(Fake.java:1)")}}})).into_response()
        }
        _ => match inner.triggers.get(&format!("{trigger}/location")) {
            Some(location) => Json(json!({"status": {"id": "COMPLETED"}, "operation": {"location": location}})).into_response(),
            None => flink_error(StatusCode::NOT_FOUND, "There is no savepoint operation with this triggerId"),
        },
    }
}

async fn jars(State(fake): State<FakeFlink>) -> Json<Value> {
    let files: Vec<Value> = fake
        .lock()
        .jars
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name, "uploaded": 0}))
        .collect();
    Json(json!({"address": "fake", "files": files}))
}

async fn upload(State(fake): State<FakeFlink>, body: axum::body::Bytes) -> Json<Value> {
    let id = format!("{:016x}_job.jar", body.len() as u64 ^ now_ms() as u64);
    fake.lock().jars.insert(id.clone(), "job.jar".into());
    Json(json!({"filename": format!("/tmp/flink-web-upload/{id}"), "status": "success"}))
}

async fn delete_jar(State(fake): State<FakeFlink>, Path(jar): Path<String>) -> Response {
    match fake.lock().jars.remove(&jar) {
        Some(_) => Json(json!({})).into_response(),
        None => flink_error(
            StatusCode::BAD_REQUEST,
            &format!("File {jar} does not exist"),
        ),
    }
}

async fn run(
    State(fake): State<FakeFlink>,
    Path(jar): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut inner = fake.lock();
    if !inner.jars.contains_key(&jar) {
        return flink_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Jar file /tmp/{jar} does not exist"),
        );
    }
    let jid = body["jobId"].as_str().unwrap_or_default().to_string();
    if inner.jobs.contains_key(&jid) {
        return flink_error(
            StatusCode::BAD_REQUEST,
            "DuplicateApplicationSubmissionException: Application has already been submitted.",
        );
    }
    if let Some(path) = body["savepointPath"].as_str()
        && inner.missing_paths.iter().any(|missing| missing == path)
    {
        // Flink 2.3 registers the job (FAILED) before it finds the state missing.
        inner.jobs.insert(
            jid.clone(),
            FakeJob {
                name: "job".into(),
                state: "FAILED".into(),
                start: now_ms(),
                restored_from: None,
                user_config: BTreeMap::new(),
                parallelism: 0,
            },
        );
        return flink_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "java.io.FileNotFoundException: Cannot find checkpoint or savepoint file/directory '{path}' on file system 'file'."
            ),
        );
    }
    let failing_arg = inner.failing_arg.as_deref().is_some_and(|marker| {
        body["programArgsList"]
            .as_array()
            .is_some_and(|args| args.iter().any(|a| a.as_str() == Some(marker)))
    });
    // A job that crashes at start keeps restarting (as Flink's default restart strategy does);
    // one under `JobFailsAfterStart` fails for good.
    let parallelism = body["parallelism"].as_u64().unwrap_or(1) as u32;
    let state = if inner.scenario == Some(Scenario::JobFailsAfterStart) {
        "FAILED"
    } else if failing_arg {
        "RESTARTING"
    } else if inner.slots_used() + parallelism > inner.slots_total() {
        // Flink keeps a job whose slots cannot be had in CREATED until they can.
        "CREATED"
    } else {
        "RUNNING"
    };
    inner.jobs.insert(
        jid.clone(),
        FakeJob {
            name: body["programArgsList"][1]
                .as_str()
                .unwrap_or("job")
                .to_string(),
            state: state.into(),
            start: now_ms(),
            restored_from: body["savepointPath"].as_str().map(str::to_string),
            // Like Flink, hand the global job parameters back in the job's user config.
            user_config: body["flinkConfiguration"]["pipeline.global-job-parameters"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .filter_map(|pair| pair.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            parallelism,
        },
    );
    Json(json!({"jobid": jid, "applicationId": jid})).into_response()
}
