//! Hand-written, lenient serde types for the Flink 2.x REST endpoints the agent uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /overview`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ClusterOverview {
    /// Registered TaskManagers.
    pub taskmanagers: u32,
    /// All slots.
    pub slots_total: u32,
    /// Free slots.
    pub slots_available: u32,
    /// Running jobs.
    pub jobs_running: u32,
    /// Flink version string.
    pub flink_version: String,
}

/// One entry of `GET /jobs/overview`. `jid` and `state` are required: an answer without them is
/// an error, never a job that silently reads as "not alive".
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct JobOverview {
    /// 32-hex job id.
    pub jid: String,
    /// The name the job's code gave it.
    #[serde(default)]
    pub name: String,
    /// Job status (`RUNNING`, `FAILED`...).
    pub state: String,
    /// Start time, epoch ms.
    #[serde(rename = "start-time", default)]
    pub start_time: i64,
    /// End time, epoch ms, or -1.
    #[serde(rename = "end-time", default)]
    pub end_time: i64,
}

/// `GET /jobs/overview`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobsOverview {
    /// Jobs, newest first.
    pub jobs: Vec<JobOverview>,
}

/// One vertex of `GET /jobs/:jid`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Vertex {
    /// Vertex id.
    pub id: String,
    /// Operator chain name.
    pub name: String,
    /// Parallelism.
    pub parallelism: u32,
    /// Execution state.
    pub status: String,
}

/// One subtask of `GET /jobs/:jid/vertices/:vid/backpressure`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SubtaskBackPressure {
    /// Subtask index.
    pub subtask: u32,
    /// Share of time it was backpressured (0..1).
    pub ratio: f64,
    /// Share of time it was busy (0..1).
    #[serde(rename = "busyRatio")]
    pub busy_ratio: f64,
}

/// `GET /jobs/:jid/vertices/:vid/backpressure` (built from task metrics, so it lags like them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct VertexBackPressure {
    /// `ok` once metrics exist.
    pub status: String,
    /// `ok`, `low` or `high`.
    #[serde(rename = "backpressureLevel")]
    pub level: String,
    /// When the figures were computed, epoch ms.
    #[serde(rename = "end-timestamp")]
    pub end_timestamp: i64,
    /// Per subtask.
    pub subtasks: Vec<SubtaskBackPressure>,
}

/// `GET /jobs/:jid`; `jid` and `state` are required, as in [`JobOverview`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct JobDetail {
    /// 32-hex job id.
    pub jid: String,
    /// Job name.
    #[serde(default)]
    pub name: String,
    /// Job status.
    pub state: String,
    /// Start, epoch ms.
    #[serde(rename = "start-time", default)]
    pub start_time: i64,
    /// End, epoch ms, or -1.
    #[serde(rename = "end-time", default)]
    pub end_time: i64,
    /// Last time each state was entered (0 = never).
    #[serde(default)]
    pub timestamps: BTreeMap<String, i64>,
    /// Vertices.
    #[serde(default)]
    pub vertices: Vec<Vertex>,
}

/// `counts` of `GET /jobs/:jid/checkpoints`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CheckpointCounts {
    /// Restores.
    pub restored: u64,
    /// All checkpoints triggered.
    pub total: u64,
    /// In flight.
    pub in_progress: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
}

/// A completed checkpoint or savepoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CompletedCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// Where it is stored.
    pub external_path: Option<String>,
    /// When the last subtask acknowledged it, epoch ms.
    pub latest_ack_timestamp: i64,
    /// Whether it is a savepoint.
    pub is_savepoint: bool,
}

/// The checkpoint or savepoint a job was restored from.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RestoredCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// When it was restored, epoch ms.
    pub restore_timestamp: i64,
    /// Whether it was a savepoint.
    pub is_savepoint: bool,
    /// Its location.
    pub external_path: Option<String>,
}

/// A failed checkpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct FailedCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// When it failed, epoch ms.
    pub failure_timestamp: i64,
    /// Why.
    pub failure_message: Option<String>,
}

/// `latest` of `GET /jobs/:jid/checkpoints`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LatestCheckpoints {
    /// Latest completed checkpoint.
    pub completed: Option<CompletedCheckpoint>,
    /// Latest savepoint.
    pub savepoint: Option<CompletedCheckpoint>,
    /// What the job was restored from.
    pub restored: Option<RestoredCheckpoint>,
    /// Latest failure.
    pub failed: Option<FailedCheckpoint>,
}

/// `GET /jobs/:jid/checkpoints`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CheckpointStats {
    /// Counters.
    pub counts: CheckpointCounts,
    /// Latest of each kind.
    pub latest: LatestCheckpoints,
    /// The most recent checkpoints and savepoints, newest first (Flink keeps a bounded number).
    pub history: Vec<CheckpointHistoryEntry>,
}

/// One entry of a job's checkpoint history.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CheckpointHistoryEntry {
    /// Checkpoint id.
    pub id: u64,
    /// `COMPLETED`, `IN_PROGRESS` or `FAILED`.
    pub status: String,
    /// Whether it is a savepoint.
    pub is_savepoint: bool,
    /// Flink deleted its files (subsumed, or the job finished and did not retain it).
    pub discarded: bool,
    /// Where it is stored.
    pub external_path: Option<String>,
    /// When the last subtask acknowledged it, epoch ms.
    pub latest_ack_timestamp: i64,
}

/// One `{key, value}` of `GET /jobmanager/config`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ConfigEntry {
    /// Option name.
    pub key: String,
    /// Option value.
    pub value: String,
}

/// `POST /jars/upload` response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UploadResponse {
    /// Server path; its last segment is the JAR id.
    pub filename: String,
    /// `success`.
    pub status: String,
}

/// `POST /jars/:jarid/run` body; built from this typed struct because Flink drops unknown fields silently.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRequest {
    /// Main class, when the manifest has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_class: Option<String>,
    /// Program arguments.
    pub program_args_list: Vec<String>,
    /// Always sent: Flink runs at 1 without it, whatever the cluster default.
    pub parallelism: u32,
    /// The agent-chosen job id.
    pub job_id: String,
    /// Savepoint or checkpoint to restore from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
    /// `NO_CLAIM` keeps the savepoint usable for rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_mode: Option<String>,
    /// Allow state no operator claims.
    pub allow_non_restored_state: bool,
    /// Per-job options.
    pub flink_configuration: BTreeMap<String, String>,
}

/// `POST /jars/:jarid/run` response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunResponse {
    /// The job id.
    pub jobid: String,
}

/// One uploaded JAR of `GET /jars`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct JarInfo {
    /// The JAR id (`<uuid>_<name>.jar`).
    pub id: String,
    /// The uploaded file name.
    pub name: String,
    /// Upload time, epoch ms.
    pub uploaded: i64,
}

/// `GET /jars`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JarList {
    /// Uploaded JARs.
    pub files: Vec<JarInfo>,
}

/// `POST /jobs/:jid/stop` body (camelCase, unlike the savepoint trigger).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StopRequest {
    /// Where the savepoint goes.
    pub target_directory: String,
    /// Never drain for upgrades: windows must not be flushed early.
    pub drain: bool,
    /// `CANONICAL` savepoints survive state-backend changes.
    pub format_type: String,
    /// Our idempotency key.
    pub trigger_id: String,
}

/// `POST /jobs/:jid/savepoints` body: a savepoint of a job that keeps running.
#[derive(Debug, Clone, Serialize)]
pub struct SavepointRequest {
    /// Where the savepoint goes.
    #[serde(rename = "target-directory")]
    pub target_directory: String,
    /// Always false: the job runs on.
    #[serde(rename = "cancel-job")]
    pub cancel_job: bool,
    /// `CANONICAL` savepoints survive state-backend changes.
    #[serde(rename = "formatType")]
    pub format_type: String,
    /// Our idempotency key.
    #[serde(rename = "triggerId")]
    pub trigger_id: String,
}

/// `{"request-id": ...}` of asynchronous triggers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TriggerResponse {
    /// The trigger id to poll.
    #[serde(rename = "request-id")]
    pub request_id: String,
}

/// `{"id": "IN_PROGRESS"|"COMPLETED"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct QueueStatus {
    /// Status id.
    pub id: String,
}

/// `failure-cause` of an asynchronous operation.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct FailureCause {
    /// Exception class.
    pub class: Option<String>,
    /// The Java stack trace.
    #[serde(rename = "stack-trace")]
    pub stack_trace: Option<String>,
}

/// `operation` of a savepoint poll.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SavepointOperation {
    /// Where the savepoint is (success).
    pub location: Option<String>,
    /// Why it failed (failure; the status still says COMPLETED).
    #[serde(rename = "failure-cause")]
    pub failure_cause: Option<FailureCause>,
}

/// `GET /jobs/:jid/savepoints/:triggerid`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SavepointPoll {
    /// Queue status.
    pub status: QueueStatus,
    /// Result, once completed.
    pub operation: Option<SavepointOperation>,
}

/// One entry of `GET /jobs/:jid/exceptions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExceptionEntry {
    /// Exception class.
    pub exception_name: String,
    /// The stack trace.
    pub stacktrace: String,
    /// When, epoch ms.
    pub timestamp: i64,
}

/// `exceptionHistory` of `GET /jobs/:jid/exceptions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ExceptionHistory {
    /// Newest first.
    pub entries: Vec<ExceptionEntry>,
    /// Older entries were dropped.
    pub truncated: bool,
}

/// `GET /jobs/:jid/exceptions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct JobExceptions {
    /// The history.
    pub exception_history: ExceptionHistory,
}

/// `GET /jobs/:jid/checkpoints/config` (the job's effective checkpoint settings).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CheckpointConfig {
    /// Interval in ms (a huge value when checkpointing is off).
    pub interval: i64,
    /// Timeout in ms.
    pub timeout: i64,
    /// Minimum pause in ms.
    pub min_pause: i64,
    /// Concurrent checkpoints.
    pub max_concurrent: i64,
}

/// `execution-config` of `GET /jobs/:jid/config`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ExecutionConfig {
    /// Effective job parallelism.
    #[serde(rename = "job-parallelism")]
    pub job_parallelism: i64,
    /// Global job parameters.
    #[serde(rename = "user-config")]
    pub user_config: BTreeMap<String, String>,
}

/// `GET /jobs/:jid/config`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct JobConfig {
    /// Execution config.
    #[serde(rename = "execution-config")]
    pub execution_config: ExecutionConfig,
}
