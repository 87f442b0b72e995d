//! JARs named by `artifact_url`: fetched into the cache only after their pin and signature pass.

use crate::state::AuditAction;
use std::path::Path;

use chrono::Utc;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tracing::info;

use super::{Agent, Deployment, StepError};
use crate::trust::artifacts::{JAR_SIZE_LIMIT, hash_jar, verify_jar};

/// Detached signatures are small; anything bigger is not one.
const SIGNATURE_LIMIT: u64 = 16 * 1024;

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
            json!({"url": url, "jar_sha256": deployment.jar_sha256}),
        )?;
        match self.fetch_and_check(deployment, url, target).await {
            Ok(signer) => {
                self.outcome(
                    AuditAction::Download,
                    intent,
                    "ok",
                    json!({"signer": signer}),
                )?;
                info!(url, signer = ?signer, "artifact downloaded and verified");
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
        let partial = target.with_extension("jar.download");
        let fail = |message: String| StepError::permanent(format!("artifact_url {url}: {message}"));
        fetch_to_file(&self.downloads, url, &partial, JAR_SIZE_LIMIT)
            .await
            .map_err(fail)?;
        let signature = match fetch_to_memory(&self.downloads, &format!("{url}.sig")).await {
            Ok(found) => found,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(fail(format!("signature: {e}")));
            }
        };
        let hash_path = partial.clone();
        let name = url.to_string();
        let digest = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&hash_path).map_err(|e| e.to_string())?;
            hash_jar(file, &name, JAR_SIZE_LIMIT).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| StepError::permanent(e.to_string()))?;
        let policy = self
            .trust
            .artifact_policy(&self.config, deployment.artifact_verification);
        let checked = digest.map_err(StepError::permanent).and_then(|digest| {
            verify_jar(
                url,
                &digest,
                Some(&deployment.jar_sha256),
                signature.as_deref(),
                &policy,
                Utc::now(),
            )
            .map_err(|e| StepError::permanent(e.to_string()))
        });
        match checked {
            Ok(verified) => {
                std::fs::rename(&partial, target)
                    .map_err(|e| fail(format!("{}: {e}", target.display())))?;
                Ok(verified.map(|v| v.principal))
            }
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                Err(error)
            }
        }
    }
}

/// Streams `url` into `path`, refusing more than `limit` bytes.
async fn fetch_to_file(
    client: &reqwest::Client,
    url: &str,
    path: &Path,
    limit: u64,
) -> Result<(), String> {
    let mut out = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut written: u64 = 0;
    let mut write = async |chunk: &[u8]| -> Result<(), String> {
        written += chunk.len() as u64;
        if written > limit {
            return Err(format!("larger than the limit of {limit} bytes"));
        }
        out.write_all(chunk)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let result: Result<(), String> = match local_path(url)? {
        Some(local) => {
            use tokio::io::AsyncReadExt;
            let mut file = tokio::fs::File::open(&local)
                .await
                .map_err(|e| format!("{}: {e}", local.display()))?;
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                let read = file
                    .read(&mut buffer)
                    .await
                    .map_err(|e| format!("{}: {e}", local.display()))?;
                if read == 0 {
                    break Ok(());
                }
                write(&buffer[..read]).await?;
            }
        }
        None => {
            let mut response = client
                .get(url)
                .send()
                .await
                .map_err(|e| crate::util::error_chain(&e))?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            loop {
                match response
                    .chunk()
                    .await
                    .map_err(|e| crate::util::error_chain(&e))?
                {
                    Some(chunk) => write(&chunk).await?,
                    None => break Ok(()),
                }
            }
        }
    };
    result?;
    out.flush()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A small file (`url.sig`), or `None` when there is none.
async fn fetch_to_memory(client: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, String> {
    let bytes = match local_path(url)? {
        Some(local) => match tokio::fs::read(&local).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", local.display())),
        },
        None => {
            let response = client
                .get(url)
                .send()
                .await
                .map_err(|e| crate::util::error_chain(&e))?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !response.status().is_success() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            response
                .bytes()
                .await
                .map_err(|e| crate::util::error_chain(&e))?
                .to_vec()
        }
    };
    if bytes.len() as u64 > SIGNATURE_LIMIT {
        return Err(format!("{url}: larger than {SIGNATURE_LIMIT} bytes"));
    }
    Ok(Some(bytes))
}

fn local_path(url: &str) -> Result<Option<std::path::PathBuf>, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "file" => parsed
            .to_file_path()
            .map(Some)
            .map_err(|()| "not a local file path".to_string()),
        "https" => Ok(None),
        other => Err(format!("scheme `{other}` is not allowed")),
    }
}
