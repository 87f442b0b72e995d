//! The Flink JobManager REST client: timeouts on every call, typed errors with Flink's root cause.

pub mod types;

use std::path::Path;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::limits::Limits;

pub use types::*;

/// Why a Flink REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum FlinkError {
    /// No connection could be made.
    #[error("Flink at {} is unreachable: {reason}", crate::util::redact_url(.url))]
    Unreachable {
        /// The request URL.
        url: String,
        /// The connection failure.
        reason: String,
    },
    /// The call took longer than the request timeout.
    #[error("{method} {} timed out after {}", crate::util::redact_url(.url), crate::util::format_duration(*after))]
    Timeout {
        /// HTTP method.
        method: String,
        /// The request URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// Flink answered with an error status.
    #[error("{method} {endpoint}: HTTP {status}: {root_cause}")]
    Status {
        /// HTTP method.
        method: String,
        /// The endpoint path.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The last `Caused by:` of Flink's stack trace, or its first line.
        root_cause: String,
    },
    /// The response was not what this endpoint returns.
    #[error("{method} {endpoint}: unexpected response: {reason}")]
    Decode {
        /// HTTP method.
        method: String,
        /// The endpoint path.
        endpoint: String,
        /// What did not fit.
        reason: String,
    },
    /// A local file (a JAR to upload) could not be read.
    #[error("reading {path}: {source}")]
    Local {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl FlinkError {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FlinkError::Unreachable { .. } => "unreachable",
            FlinkError::Timeout { .. } => "timeout",
            FlinkError::Status { status, .. } if *status >= 500 => "server_error",
            FlinkError::Status { status: 404, .. } => "not_found",
            FlinkError::Status { .. } => "client_error",
            FlinkError::Decode { .. } => "decode",
            FlinkError::Local { .. } => "local",
        }
    }

    /// True when the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), "unreachable" | "timeout" | "server_error")
    }

    /// True for a 404, e.g. a job or JAR id the cluster does not know.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FlinkError::Status { status: 404, .. })
    }
}

/// Reduces a Flink error body (`{"errors": [...]}` with Java stack traces) to the line a person needs.
pub fn root_cause(body: &str) -> String {
    let strings: Vec<String> = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
        .unwrap_or_default();
    let text = match strings.last() {
        Some(last) => last.as_str(),
        None => body,
    };
    let caused_by = text
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("Caused by: "))
        .next_back();
    let line = match caused_by {
        Some(line) => line,
        None => text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && *l != "<Exception on server side:")
            .unwrap_or("(empty error body)"),
    };
    let mut line = line.to_string();
    if line.len() > 500 {
        let mut cut = 500;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// What the agent takes from the cluster's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `parallelism.default` (1 when unset): the parallelism of a spec without one.
    pub default_parallelism: u32,
    /// `execution.checkpointing.dir` (or the older `state.checkpoints.dir`).
    pub checkpoint_dir: Option<String>,
    /// `python.executable`, when set and not empty.
    pub python_executable: Option<String>,
}

/// How long a connection to Flink is kept for reuse after its last request.
const FLINK_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);

/// A client for one Flink cluster.
#[derive(Debug, Clone)]
pub struct FlinkClient {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    submit_timeout: Duration,
    retry_attempts: u32,
    max_answer_bytes: usize,
}

impl FlinkClient {
    /// A client for the cluster at `base` whose calls each time out after `timeout`.
    pub fn new(base: &url::Url, timeout: Duration) -> Result<FlinkClient, FlinkError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("flink-gitops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FlinkError::Unreachable {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(FlinkClient {
            http,
            base: base.as_str().trim_end_matches('/').to_string(),
            timeout,
            submit_timeout: timeout,
            retry_attempts: 3,
            max_answer_bytes: Limits::DEFAULT.flink_answer_bytes,
        })
    }

    /// A client for the configured cluster, with its TLS material and credentials read from their files.
    pub fn from_config(config: &crate::config::FlinkConfig) -> Result<FlinkClient, FlinkError> {
        let local = |path: &std::path::Path, source: std::io::Error| FlinkError::Local {
            path: path.display().to_string(),
            source,
        };
        let read = |path: &std::path::Path| {
            crate::util::read_file_limited(path, Limits::DEFAULT.credential_file_bytes)
                .map_err(|e| local(path, e))
        };
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            // A pass opens up to `reconcile.max_concurrency` connections; kept for reqwest's default
            // 90 s, they held their buffers through the idle minute after it (about 0.8 MiB of the
            // idle service after a pass that created 1,000 jobs).
            .pool_idle_timeout(FLINK_IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("flink-gitops/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.tls.ca_file {
            let certificate = reqwest::Certificate::from_pem(&read(ca)?)
                .map_err(|e| local(ca, std::io::Error::other(e.to_string())))?;
            builder = builder.add_root_certificate(certificate);
        }
        if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
            let mut pem = read(cert)?;
            pem.extend_from_slice(b"\n");
            pem.extend_from_slice(&read(key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| local(cert, std::io::Error::other(e.to_string())))?;
            builder = builder.identity(identity);
        }
        let authorization = match &config.auth {
            crate::config::FlinkAuth::None => None,
            crate::config::FlinkAuth::Bearer(file) => Some(format!(
                "Bearer {}",
                String::from_utf8_lossy(&read(file)?).trim()
            )),
            crate::config::FlinkAuth::Basic {
                username,
                password_file,
            } => {
                use base64::Engine as _;
                let password = String::from_utf8_lossy(&read(password_file)?)
                    .trim()
                    .to_string();
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                ))
            }
        };
        if let Some(value) = authorization {
            let mut header =
                reqwest::header::HeaderValue::from_str(&value).map_err(|e| FlinkError::Decode {
                    method: "-".into(),
                    endpoint: "-".into(),
                    reason: format!("credential is not a valid header value: {e}"),
                })?;
            // Marked sensitive so it never shows in debug output or logs.
            header.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, header);
            builder = builder.default_headers(headers);
        }
        if config.url.scheme() == "http" {
            // Plain HTTP never verifies a certificate: skip reading the system's CA store (a few
            // milliseconds of every command's start). Flink does not redirect to https.
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let http = builder.build().map_err(|e| FlinkError::Unreachable {
            url: config.url.to_string(),
            reason: e.to_string(),
        })?;
        Ok(FlinkClient {
            http,
            base: config.url.as_str().trim_end_matches('/').to_string(),
            timeout: config.request_timeout,
            submit_timeout: config.submit_timeout,
            retry_attempts: 3,
            max_answer_bytes: Limits::DEFAULT.flink_answer_bytes,
        })
    }

    /// Sets how many times idempotent calls are tried on transient errors (at least once).
    pub fn with_retry_attempts(mut self, attempts: u32) -> FlinkClient {
        self.retry_attempts = attempts.max(1);
        self
    }

    /// Sets the largest answer read from Flink (default [`Limits::flink_answer_bytes`]).
    pub fn with_max_answer_bytes(mut self, bytes: usize) -> FlinkClient {
        self.max_answer_bytes = bytes;
        self
    }

    /// The cluster's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// An idempotent call (reads, cancel, triggers with our own id), retried on transient errors
    /// with exponential backoff and jitter.
    async fn call_idempotent<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, FlinkError> {
        let mut retry: u32 = 0;
        (|| self.call(method.clone(), endpoint, &build))
            .retry(self.retry_backoff())
            .sleep(tokio::time::sleep)
            .when(FlinkError::is_transient)
            .notify(|error, wait| {
                retry += 1;
                tracing::debug!(%endpoint, retry, %error, ?wait, "transient Flink error; retrying");
            })
            .await
    }

    /// The waits between tries of an idempotent call: 100 ms doubling up to 6.4 s, each plus up to
    /// itself again at random so that agents retrying together spread out.
    fn retry_backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_factor(2.0)
            .with_max_delay(Duration::from_millis(6400))
            .with_max_times(self.retry_attempts as usize - 1)
            .with_jitter()
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, FlinkError> {
        self.call_within(method, endpoint, self.timeout, build)
            .await
    }

    async fn call_within<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        timeout: Duration,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, FlinkError> {
        let url = format!("{}{endpoint}", self.base);
        let request = build(self.http.request(method.clone(), &url)).timeout(timeout);
        let response = request.send().await;
        // An answer, or an error within the timeout, is the agent getting on with its work.
        crate::util::mark_progress();
        let response = response.map_err(|e| self.transport_error(&method, &url, timeout, e))?;
        let status = response.status();
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&method, &url, timeout, e))?
        {
            if bytes.len() + chunk.len() > self.max_answer_bytes {
                return Err(FlinkError::Decode {
                    method: method.to_string(),
                    endpoint: endpoint.to_string(),
                    reason: format!(
                        "the answer is larger than {} bytes; not read",
                        self.max_answer_bytes
                    ),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            return Err(FlinkError::Status {
                method: method.to_string(),
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                root_cause: root_cause(&body),
            });
        }
        let body = if body.trim().is_empty() && status == StatusCode::ACCEPTED {
            "{}".to_string()
        } else {
            body
        };
        serde_json::from_str(&body).map_err(|e| FlinkError::Decode {
            method: method.to_string(),
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })
    }

    fn transport_error(
        &self,
        method: &Method,
        url: &str,
        timeout: Duration,
        error: reqwest::Error,
    ) -> FlinkError {
        if error.is_timeout() {
            FlinkError::Timeout {
                method: method.to_string(),
                url: url.to_string(),
                after: timeout,
            }
        } else {
            FlinkError::Unreachable {
                url: url.to_string(),
                reason: crate::util::error_chain(&error),
            }
        }
    }

    /// `GET /overview`.
    pub async fn overview(&self) -> Result<ClusterOverview, FlinkError> {
        self.call_idempotent(Method::GET, "/overview", |r| r).await
    }

    /// `GET /jobs/overview`: every job the cluster still remembers, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobOverview>, FlinkError> {
        let overview: JobsOverview = self
            .call_idempotent(Method::GET, "/jobs/overview", |r| r)
            .await?;
        Ok(overview.jobs)
    }

    /// `GET /jobs/:jid`.
    pub async fn job(&self, job_id: &str) -> Result<JobDetail, FlinkError> {
        self.call_idempotent(Method::GET, &format!("/jobs/{job_id}"), |r| r)
            .await
    }

    /// `GET /jobs/:jid/vertices/:vid/backpressure`.
    pub async fn backpressure(
        &self,
        job_id: &str,
        vertex_id: &str,
    ) -> Result<VertexBackPressure, FlinkError> {
        self.call_idempotent(
            Method::GET,
            &format!("/jobs/{job_id}/vertices/{vertex_id}/backpressure"),
            |r| r,
        )
        .await
    }

    /// The most backpressured subtask of a running job: its ratio (0..1) and vertex name.
    /// `None` while Flink has no figures yet (metrics lag the job by up to 10 s).
    pub async fn job_backpressure(
        &self,
        job_id: &str,
    ) -> Result<Option<(f64, String)>, FlinkError> {
        let job = self.job(job_id).await?;
        let mut worst: Option<(f64, String)> = None;
        for vertex in job.vertices.iter().filter(|v| v.status == "RUNNING") {
            let answer = self.backpressure(job_id, &vertex.id).await?;
            let ratio = answer
                .subtasks
                .iter()
                .map(|s| s.ratio)
                .fold(None, |max: Option<f64>, r| {
                    Some(max.map_or(r, |m| m.max(r)))
                });
            if let Some(ratio) = ratio
                && worst.as_ref().is_none_or(|(w, _)| ratio > *w)
            {
                worst = Some((ratio, vertex.name.clone()));
            }
        }
        Ok(worst)
    }

    /// `GET /jobs/:jid/checkpoints`.
    pub async fn checkpoints(&self, job_id: &str) -> Result<CheckpointStats, FlinkError> {
        self.call_idempotent(Method::GET, &format!("/jobs/{job_id}/checkpoints"), |r| r)
            .await
    }

    /// `GET /jobmanager/config`: the cluster-wide configuration.
    pub async fn cluster_config(&self) -> Result<Vec<ConfigEntry>, FlinkError> {
        self.call_idempotent(Method::GET, "/jobmanager/config", |r| r)
            .await
    }

    /// `POST /jars/upload` of the file at `path` under the name `name` (must end in `.jar`); returns the JAR id.
    pub async fn upload_jar_as(&self, path: &Path, name: &str) -> Result<String, FlinkError> {
        let local = |source| FlinkError::Local {
            path: path.display().to_string(),
            source,
        };
        // Streamed from disk: a JAR may be up to a gigabyte, the agent's memory stays small.
        let file = tokio::fs::File::open(path).await.map_err(local)?;
        let length = file.metadata().await.map_err(local)?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        let part = reqwest::multipart::Part::stream_with_length(body, length)
            .file_name(name.to_string())
            .mime_str("application/x-java-archive")
            .map_err(|e| FlinkError::Decode {
                method: "POST".into(),
                endpoint: "/jars/upload".into(),
                reason: e.to_string(),
            })?;
        let form = reqwest::multipart::Form::new().part("jarfile", part);
        let response: UploadResponse = self
            .call(Method::POST, "/jars/upload", |r| r.multipart(form))
            .await?;
        response
            .filename
            .rsplit('/')
            .next()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .ok_or_else(|| FlinkError::Decode {
                method: "POST".into(),
                endpoint: "/jars/upload".into(),
                reason: format!("no JAR id in filename `{}`", response.filename),
            })
    }

    /// `POST /jars/upload` under the file's own name; returns the JAR id.
    pub async fn upload_jar(&self, path: &Path) -> Result<String, FlinkError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "job.jar".into());
        self.upload_jar_as(path, &name).await
    }

    /// `GET /jobmanager/config`, the settings the agent uses.
    pub async fn settings(&self) -> Result<ClusterSettings, FlinkError> {
        let entries = self.cluster_config().await?;
        let value = |key: &str| {
            entries
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.trim().to_string())
        };
        Ok(ClusterSettings {
            default_parallelism: value("parallelism.default")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            checkpoint_dir: value("execution.checkpointing.dir")
                .or_else(|| value("state.checkpoints.dir")),
            python_executable: value("python.executable").filter(|v| !v.is_empty()),
        })
    }

    /// `GET /jobmanager/config` → `parallelism.default` (1 when unset).
    pub async fn default_parallelism(&self) -> Result<u32, FlinkError> {
        self.settings().await.map(|s| s.default_parallelism)
    }

    /// `POST /jars/:jarid/run`; returns the job id.
    pub async fn run_jar(&self, jar_id: &str, request: &RunRequest) -> Result<String, FlinkError> {
        // The JobManager runs the program's `main` inside this call: planning SQL or starting a
        // Python process takes seconds, longer on a cold cluster.
        let timeout = self.submit_timeout;
        let response: RunResponse = self
            .call_within(Method::POST, &format!("/jars/{jar_id}/run"), timeout, |r| {
                r.json(request)
            })
            .await?;
        Ok(response.jobid)
    }

    /// `GET /jars`.
    pub async fn jars(&self) -> Result<Vec<JarInfo>, FlinkError> {
        let list: JarList = self.call_idempotent(Method::GET, "/jars", |r| r).await?;
        Ok(list.files)
    }

    /// `DELETE /jars/:jarid`.
    pub async fn delete_jar(&self, jar_id: &str) -> Result<(), FlinkError> {
        let _: serde_json::Value = self
            .call_idempotent(Method::DELETE, &format!("/jars/{jar_id}"), |r| r)
            .await?;
        Ok(())
    }

    /// `POST /jobs/:jid/stop` with our trigger id (idempotent: the same id never starts a second savepoint).
    pub async fn stop_with_savepoint(
        &self,
        job_id: &str,
        target_directory: &str,
        trigger_id: &str,
    ) -> Result<String, FlinkError> {
        let body = StopRequest {
            target_directory: target_directory.to_string(),
            drain: false,
            format_type: "CANONICAL".into(),
            trigger_id: trigger_id.to_string(),
        };
        let response: TriggerResponse = self
            .call_idempotent(Method::POST, &format!("/jobs/{job_id}/stop"), |r| {
                r.json(&body)
            })
            .await?;
        Ok(response.request_id)
    }

    /// `POST /jobs/:jid/savepoints`: a savepoint while the job keeps running (idempotent by
    /// trigger id); poll it with [`Self::savepoint_status`].
    pub async fn trigger_savepoint(
        &self,
        job_id: &str,
        target_directory: &str,
        trigger_id: &str,
    ) -> Result<String, FlinkError> {
        let body = SavepointRequest {
            target_directory: target_directory.to_string(),
            cancel_job: false,
            format_type: "CANONICAL".into(),
            trigger_id: trigger_id.to_string(),
        };
        let response: TriggerResponse = self
            .call_idempotent(Method::POST, &format!("/jobs/{job_id}/savepoints"), |r| {
                r.json(&body)
            })
            .await?;
        Ok(response.request_id)
    }

    /// `POST /savepoint-disposal`: Flink deletes a savepoint (its files and any state it owns);
    /// poll it with [`Self::disposal_status`].
    pub async fn dispose_savepoint(&self, path: &str) -> Result<String, FlinkError> {
        let body = serde_json::json!({ "savepoint-path": path });
        let response: TriggerResponse = self
            .call(Method::POST, "/savepoint-disposal", |r| r.json(&body))
            .await?;
        Ok(response.request_id)
    }

    /// `GET /savepoint-disposal/:triggerid`.
    pub async fn disposal_status(&self, trigger_id: &str) -> Result<SavepointPoll, FlinkError> {
        self.call_idempotent(
            Method::GET,
            &format!("/savepoint-disposal/{trigger_id}"),
            |r| r,
        )
        .await
    }

    /// `GET /jobs/:jid/savepoints/:triggerid`.
    pub async fn savepoint_status(
        &self,
        job_id: &str,
        trigger_id: &str,
    ) -> Result<SavepointPoll, FlinkError> {
        self.call_idempotent(
            Method::GET,
            &format!("/jobs/{job_id}/savepoints/{trigger_id}"),
            |r| r,
        )
        .await
    }

    /// `GET /jobs/:jid/exceptions`, newest first.
    pub async fn exceptions(&self, job_id: &str) -> Result<ExceptionHistory, FlinkError> {
        let found: JobExceptions = self
            .call_idempotent(
                Method::GET,
                &format!("/jobs/{job_id}/exceptions?maxExceptions=16"),
                |r| r,
            )
            .await?;
        Ok(found.exception_history)
    }

    /// `GET /jobs/:jid/checkpoints/config`.
    pub async fn checkpoint_config(&self, job_id: &str) -> Result<CheckpointConfig, FlinkError> {
        self.call_idempotent(
            Method::GET,
            &format!("/jobs/{job_id}/checkpoints/config"),
            |r| r,
        )
        .await
    }

    /// `GET /jobs/:jid/config`.
    pub async fn job_config(&self, job_id: &str) -> Result<JobConfig, FlinkError> {
        self.call_idempotent(Method::GET, &format!("/jobs/{job_id}/config"), |r| r)
            .await
    }

    /// `PATCH /jobs/:jid?mode=cancel`.
    pub async fn cancel(&self, job_id: &str) -> Result<(), FlinkError> {
        let _: serde_json::Value = self
            .call_idempotent(Method::PATCH, &format!("/jobs/{job_id}?mode=cancel"), |r| r)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_over_the_limit_is_refused_not_read() {
        let fake = crate::testing::FakeFlink::new();
        let address = fake.serve().await.unwrap();
        fake.add_running_jobs((0..200).map(|n| format!("{n:032x}")));
        let base = url::Url::parse(&format!("http://{address}")).unwrap();
        let client = FlinkClient::new(&base, Duration::from_secs(5)).unwrap();
        assert_eq!(client.jobs().await.unwrap().len(), 200);
        let small = client.with_max_answer_bytes(4096);
        let error = small.jobs().await.unwrap_err().to_string();
        assert!(
            error.contains("/jobs/overview") && error.contains("larger than 4096 bytes"),
            "{error}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_is_tried_again_on_server_errors_as_often_as_configured_and_not_on_a_400() {
        use crate::testing::Fault;
        let fake = crate::testing::FakeFlink::new();
        let address = fake.serve().await.unwrap();
        let base = url::Url::parse(&format!("http://{address}")).unwrap();
        let client = FlinkClient::new(&base, Duration::from_secs(5)).unwrap();

        fake.fail_next("GET /jobs/overview", 2, Fault::Status(503));
        client
            .jobs()
            .await
            .expect("the third of three tries answers");
        assert_eq!(fake.faults_pending(), 0);

        fake.fail_next("GET /jobs/overview", 2, Fault::Status(503));
        let two_tries = client.clone().with_retry_attempts(2);
        let error = two_tries.jobs().await.unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert_eq!(fake.faults_pending(), 0, "both tries were made");

        fake.fail_next("GET /jobs/overview", 2, Fault::Status(400));
        client.jobs().await.unwrap_err();
        assert_eq!(fake.faults_pending(), 1, "a 400 is not tried again");
    }

    #[test]
    fn a_job_without_its_id_or_state_is_an_error_not_a_dead_job() {
        let parse = |job: &str| {
            serde_json::from_str::<types::JobsOverview>(&format!("{{\"jobs\":[{job}]}}"))
                .map(|o| o.jobs.len())
        };
        assert_eq!(parse(r#"{"jid":"a","state":"RUNNING"}"#).unwrap(), 1);
        let missing_state = parse(r#"{"jid":"a","name":"n"}"#).unwrap_err();
        assert!(
            missing_state.to_string().contains("state"),
            "{missing_state}"
        );
        let missing_id = parse(r#"{"state":"RUNNING"}"#).unwrap_err();
        assert!(missing_id.to_string().contains("jid"), "{missing_id}");
        assert!(serde_json::from_str::<types::JobDetail>(r#"{"jid":"a"}"#).is_err());
    }

    #[test]
    fn root_cause_takes_the_last_caused_by() {
        let body = serde_json::json!({"errors": [
            "org.apache.flink.runtime.rest.handler.RestHandlerException: Could not execute application.\n\tat org.apache.Foo\nCaused by: org.apache.flink.client.program.ProgramInvocationException: The main method caused an error\n\tat x\nCaused by: java.lang.IllegalStateException: counter-broken: simulated start-up failure\n\t... 12 more"
        ]})
        .to_string();
        assert_eq!(
            root_cause(&body),
            "java.lang.IllegalStateException: counter-broken: simulated start-up failure"
        );
    }

    #[test]
    fn root_cause_of_an_internal_error_and_of_junk() {
        let body = serde_json::json!({"errors": ["Internal server error.", "<Exception on server side:\njava.lang.NullPointerException: boom\n\tat x\nEnd of exception on server side>"]}).to_string();
        assert_eq!(root_cause(&body), "java.lang.NullPointerException: boom");
        assert_eq!(
            root_cause("{\"errors\":[\"Not found: /jobs/abc\"]}"),
            "Not found: /jobs/abc"
        );
        assert_eq!(
            root_cause("<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
    }
}
