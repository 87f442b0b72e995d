//! JARs named by `artifact_url`: fetched into the cache only after their pin and signature pass.

use crate::limits::Limits;
use crate::state::AuditAction;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::info;

use super::{Agent, Deployment, StepError};
use crate::trust::artifacts::{hash_jar, verify_jar};

/// More hops than this is a loop or a maze, not a mirror.
const REDIRECT_LIMIT: usize = 5;

/// Why fetching an `artifact_url` (or its `.sig`) failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL does not parse.
    #[error("{}: not a URL: {source}", crate::util::redact_url(.url))]
    NotAUrl {
        /// The URL.
        url: String,
        /// Why.
        source: url::ParseError,
    },
    /// Only https:// and file:// are fetched.
    #[error("{}: scheme `{scheme}` is not allowed (use https:// or file://)", crate::util::redact_url(.url))]
    Scheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A file:// URL that names no local path.
    #[error("{}: not a local file path", crate::util::redact_url(.url))]
    NotALocalPath {
        /// The URL.
        url: String,
    },
    /// More bytes than the limit; reading stopped there.
    #[error("{}: larger than the limit of {limit} bytes", crate::util::redact_url(.url))]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The download as a whole took longer than `reconcile.download_timeout`.
    #[error("{}: not complete within the download deadline of {} (reconcile.download_timeout)", crate::util::redact_url(.url), crate::util::format_duration(*.deadline))]
    Deadline {
        /// The URL.
        url: String,
        /// The deadline.
        deadline: Duration,
    },
    /// The server answered with an error status.
    #[error("{}: HTTP {status}", crate::util::redact_url(.url))]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// A redirect the policy refused (a downgrade to http, another scheme, too many hops).
    #[error("{}: {source}", crate::util::redact_url(.url))]
    Redirect {
        /// The URL.
        url: String,
        /// Which rule refused it.
        source: RedirectRefused,
    },
    /// Connecting, TLS or the transfer failed.
    #[error("{}: {message}", crate::util::redact_url(.url))]
    Transport {
        /// The URL.
        url: String,
        /// The whole error chain (reqwest hides the useful part in its sources).
        message: String,
    },
    /// Reading the local file or writing the partial download failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A redirect that is not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectRefused {
    /// https to http: the bytes would travel unauthenticated, so the pin would be all that is left.
    #[error("refused a downgrade redirect from https to {}", crate::util::redact_url(.to))]
    Downgrade {
        /// Where the server pointed.
        to: String,
    },
    /// Anything but https (file:, ftp:, …) is refused as a redirect target.
    #[error("refused a redirect to {}: only https redirects are followed", crate::util::redact_url(.to))]
    Scheme {
        /// Where the server pointed.
        to: String,
    },
    /// Too many hops.
    #[error("refused redirect number {hop} (to {}): at most {REDIRECT_LIMIT} are followed", crate::util::redact_url(.to))]
    TooMany {
        /// Which hop this would have been.
        hop: usize,
        /// Where the server pointed.
        to: String,
    },
}

/// The redirect rule for downloads: https to https only, at most `REDIRECT_LIMIT` hops.
pub(crate) fn judge_redirect(
    previous: &[url::Url],
    next: &url::Url,
) -> Result<(), RedirectRefused> {
    let to = next.to_string();
    if previous.len() > REDIRECT_LIMIT {
        return Err(RedirectRefused::TooMany {
            hop: previous.len(),
            to,
        });
    }
    match next.scheme() {
        "https" => Ok(()),
        "http" => Err(RedirectRefused::Downgrade { to }),
        _ => Err(RedirectRefused::Scheme { to }),
    }
}

/// reqwest's view of [`judge_redirect`], for the download client.
pub(crate) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        match judge_redirect(attempt.previous(), attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// How much one download may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DownloadLimits {
    /// Bytes of the JAR.
    pub jar: u64,
    /// Bytes of its `.sig`.
    pub signature: u64,
    /// Wall-clock time of each of the two downloads, from request to last byte.
    pub deadline: Duration,
}

/// A file being written that is deleted when dropped, unless [`PartialFile::persist`] moved it
/// into place: every early return, error or cancelled future cleans up after itself.
#[derive(Debug)]
pub(crate) struct PartialFile {
    path: PathBuf,
    persisted: bool,
}

impl PartialFile {
    /// Claims `path` for a download; the file itself is created by the first write.
    pub(crate) fn at(path: PathBuf) -> PartialFile {
        PartialFile {
            path,
            persisted: false,
        }
    }

    /// Where the bytes are.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to `target`; from then on it is no longer removed.
    pub(crate) fn persist(mut self, target: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, target)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.persisted {
            // NotFound is fine: the failure came before the first byte.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Agent {
    /// Fetches `url` (and `url.sig`), checks digest and signature, and only then moves it into the cache.
    pub(super) async fn download_jar(
        &self,
        head: &str,
        deployment: &Deployment,
        url: &str,
        target: &Path,
    ) -> Result<(), StepError> {
        let intent = self.intent(
            head,
            &deployment.job_id,
            AuditAction::Download,
            json!({"url": crate::util::redact_url(url), "jar_sha256": deployment.jar_sha256}),
        )?;
        match self.fetch_and_check(deployment, url, target).await {
            Ok(signer) => {
                self.outcome(
                    AuditAction::Download,
                    intent,
                    "ok",
                    json!({"signer": signer}),
                )?;
                info!(url = %crate::util::redact_url(url), signer = ?signer, "artifact downloaded and verified");
                Ok(())
            }
            Err(error) => {
                self.outcome(
                    AuditAction::Download,
                    intent,
                    "failed",
                    json!({"error": error.message}),
                )?;
                Err(error)
            }
        }
    }

    async fn fetch_and_check(
        &self,
        deployment: &Deployment,
        url: &str,
        target: &Path,
    ) -> Result<Option<String>, StepError> {
        // Every message names the URL, redacted: a presigned URL's query is a credential.
        let fail = |message: String| StepError::permanent(format!("artifact_url: {message}"));
        let limits = DownloadLimits {
            jar: Limits::DEFAULT.jar_bytes,
            signature: Limits::DEFAULT.signature_bytes,
            deadline: self.config.reconcile.download_timeout,
        };
        let (partial, signature) = fetch_jar(
            self.downloads().map_err(fail)?,
            url,
            target.with_extension("jar.download"),
            &limits,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        let hash_path = partial.path().to_path_buf();
        let name = crate::util::redact_url(url);
        let hash_name = name.clone();
        let digest = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&hash_path).map_err(|e| e.to_string())?;
            hash_jar(file, &hash_name, limits.jar).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| StepError::permanent(e.to_string()))?
        .map_err(StepError::permanent)?;
        let policy = self
            .trust
            .artifact_policy(&self.config, deployment.artifact_verification);
        let verified = verify_jar(
            &name,
            &digest,
            Some(&deployment.jar_sha256),
            signature.as_deref(),
            &policy,
            Utc::now(),
        )
        .map_err(|e| StepError::permanent(e.to_string()))?;
        partial
            .persist(target)
            .map_err(|e| fail(format!("{}: {e}", target.display())))?;
        Ok(verified.map(|v| v.principal))
    }
}

/// Downloads `url` into `partial` and `url.sig` into memory (`None` when there is none).
///
/// The returned guard still owns the file: dropping it without persisting deletes it.
pub(crate) async fn fetch_jar(
    client: &reqwest::Client,
    url: &str,
    partial: PathBuf,
    limits: &DownloadLimits,
) -> Result<(PartialFile, Option<Vec<u8>>), DownloadError> {
    let partial = PartialFile::at(partial);
    let path = partial.path().to_path_buf();
    let io = |source| DownloadError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::create(partial.path()).await.map_err(io)?;
    let found = within(
        limits.deadline,
        url,
        fetch_into(client, url, limits.jar, &mut file),
    )
    .await?;
    if !found {
        return Err(DownloadError::Status {
            url: url.to_string(),
            status: reqwest::StatusCode::NOT_FOUND,
        });
    }
    file.flush().await.map_err(io)?;
    drop(file);
    let signature_url = format!("{url}.sig");
    let mut signature = Vec::new();
    let signature_found = within(
        limits.deadline,
        &signature_url,
        fetch_into(client, &signature_url, limits.signature, &mut signature),
    )
    .await?;
    Ok((partial, signature_found.then_some(signature)))
}

/// Runs one download against its deadline, which covers connecting, headers and every byte.
async fn within<T>(
    deadline: Duration,
    url: &str,
    download: impl Future<Output = Result<T, DownloadError>>,
) -> Result<T, DownloadError> {
    tokio::time::timeout(deadline, download)
        .await
        .map_err(|_| DownloadError::Deadline {
            url: url.to_string(),
            deadline,
        })?
}

/// Streams `url` into `sink`, refusing byte `limit + 1` as it arrives; `false` when it does not exist.
async fn fetch_into(
    client: &reqwest::Client,
    url: &str,
    limit: u64,
    sink: &mut (impl AsyncWrite + Unpin),
) -> Result<bool, DownloadError> {
    let mut counted = LimitedSink {
        url,
        limit,
        written: 0,
        sink,
    };
    match local_path(url)? {
        Some(local) => {
            let io = |source| DownloadError::Io {
                path: local.display().to_string(),
                source,
            };
            let file = match tokio::fs::File::open(&local).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io(e)),
            };
            copy_limited(file, &mut counted, &local).await?;
        }
        None => {
            let transport = |e: reqwest::Error| transport_error(url, &e);
            let mut response = client.get(url).send().await.map_err(transport)?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(false);
            }
            if !response.status().is_success() {
                return Err(DownloadError::Status {
                    url: url.to_string(),
                    status: response.status(),
                });
            }
            // An honest server says up front that it is too large; a dishonest one is cut off below.
            if response
                .content_length()
                .is_some_and(|length| length > limit)
            {
                return Err(DownloadError::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                counted.write(&chunk).await?;
            }
        }
    }
    Ok(true)
}

/// A sink that counts what it is given and refuses anything past the limit.
struct LimitedSink<'a, W> {
    url: &'a str,
    limit: u64,
    written: u64,
    sink: &'a mut W,
}

impl<W: AsyncWrite + Unpin> LimitedSink<'_, W> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), DownloadError> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(DownloadError::TooLarge {
                url: self.url.to_string(),
                limit: self.limit,
            });
        }
        self.sink
            .write_all(chunk)
            .await
            .map_err(|source| DownloadError::Io {
                path: self.url.to_string(),
                source,
            })
    }
}

async fn copy_limited<W: AsyncWrite + Unpin>(
    mut source: impl AsyncRead + Unpin,
    sink: &mut LimitedSink<'_, W>,
    path: &Path,
) -> Result<(), DownloadError> {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = source
            .read(&mut buffer)
            .await
            .map_err(|source| DownloadError::Io {
                path: path.display().to_string(),
                source,
            })?;
        if read == 0 {
            return Ok(());
        }
        sink.write(&buffer[..read]).await?;
    }
}

/// A redirect our policy refused surfaces as a reqwest error whose source is ours: name it.
fn transport_error(url: &str, error: &reqwest::Error) -> DownloadError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RedirectRefused>() {
            return DownloadError::Redirect {
                url: url.to_string(),
                source: refused.clone(),
            };
        }
        source = cause.source();
    }
    DownloadError::Transport {
        url: url.to_string(),
        message: crate::util::error_chain(error),
    }
}

fn local_path(url: &str) -> Result<Option<PathBuf>, DownloadError> {
    let parsed = url::Url::parse(url).map_err(|source| DownloadError::NotAUrl {
        url: url.to_string(),
        source,
    })?;
    match parsed.scheme() {
        "file" => parsed
            .to_file_path()
            .map(Some)
            .map_err(|()| DownloadError::NotALocalPath {
                url: url.to_string(),
            }),
        "https" => Ok(None),
        other => Err(DownloadError::Scheme {
            url: url.to_string(),
            scheme: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).unwrap()
    }

    #[test]
    fn redirects_stay_on_https_and_stop_after_the_limit() {
        let start = [url("https://store.example/a.jar")];
        assert_eq!(
            judge_redirect(&start, &url("https://mirror.example/a.jar")),
            Ok(())
        );
        assert_eq!(
            judge_redirect(&start, &url("http://mirror.example/a.jar")),
            Err(RedirectRefused::Downgrade {
                to: "http://mirror.example/a.jar".into()
            })
        );
        assert!(matches!(
            judge_redirect(&start, &url("file:///etc/passwd")),
            Err(RedirectRefused::Scheme { .. })
        ));
        let hops: Vec<url::Url> = (0..=REDIRECT_LIMIT)
            .map(|n| url(&format!("https://store.example/{n}")))
            .collect();
        assert_eq!(
            judge_redirect(&hops[..REDIRECT_LIMIT], &url("https://store.example/last")),
            Ok(())
        );
        assert!(matches!(
            judge_redirect(&hops, &url("https://store.example/last")),
            Err(RedirectRefused::TooMany { .. })
        ));
    }

    fn limits(jar: u64, deadline: Duration) -> DownloadLimits {
        DownloadLimits {
            jar,
            signature: crate::limits::Limits::DEFAULT.signature_bytes,
            deadline,
        }
    }

    #[tokio::test]
    async fn an_endless_local_file_stops_at_the_limit_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.jar.download");
        let error = fetch_jar(
            &reqwest::Client::new(),
            "file:///dev/zero",
            partial.clone(),
            &limits(1024 * 1024, Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, DownloadError::TooLarge { limit, .. } if limit == 1024 * 1024),
            "{error}"
        );
        assert!(!partial.exists(), "the partial download is removed");
    }

    #[tokio::test]
    async fn a_local_signature_that_never_ends_is_cut_off_by_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let jar = dir.path().join("x.jar");
        std::fs::write(&jar, b"PK\x03\x04").unwrap();
        // A FIFO nobody writes to: the read blocks until the deadline, like a stalled server.
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join("x.jar.sig"))
            .status()
            .unwrap();
        assert!(status.success());
        let partial = dir.path().join("x.jar.download");
        let started = std::time::Instant::now();
        let error = fetch_jar(
            &reqwest::Client::new(),
            &format!("file://{}", jar.display()),
            partial.clone(),
            &limits(1024, Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not complete within the download deadline of 300ms"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!partial.exists(), "the partial download is removed");
        // The abandoned open still waits in the blocking pool, which the runtime waits for.
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("x.jar.sig")),
        );
    }
}
