//! JARs on the cluster: cached by digest, checked again before every upload, uploaded once,
//! uploaded again when the JobManager forgot them, deleted when nothing needs them.

use crate::limits::Limits;
use crate::state::AuditAction;
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use super::lifecycle::Phase;
use super::policy::StepError;
use super::{Agent, Deployment, batch};
use crate::flink::FlinkError;
use crate::revision::VerifiedRevision;
use crate::spec::{Artifact, DesiredJob};
use crate::trust::artifacts::hash_jar;

impl Agent {
    pub(super) fn cache_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha256}.jar"))
    }

    /// The deployment of a desired job, if its JAR is known.
    pub(super) fn deployment_for(
        &self,
        job: &DesiredJob,
        revision: &VerifiedRevision,
    ) -> Result<Deployment, StepError> {
        let checked = revision.artifacts().get(&job.spec.job_id);
        let sha = match (&job.spec.artifact, &job.spec.runner, checked) {
            (Artifact::Path(_), _, Some(check)) => check.sha256.clone(),
            (Artifact::Url(url), _, _) => job.spec.artifact_sha256.clone().ok_or_else(|| {
                StepError::permanent(format!(
                    "artifact_url {}: no sha256 pin",
                    crate::util::redact_url(url)
                ))
            })?,
            (Artifact::Path(path), _, None) => {
                return Err(StepError::permanent(format!(
                    "{path}: JAR was not verified"
                )));
            }
            (_, Some(_), Some(check)) => check.sha256.clone(),
            (_, Some(runner), None) => {
                return Err(StepError::permanent(format!(
                    "{runner}: runner JAR was not verified"
                )));
            }
            (_, None, _) => self.runner_sha256.clone().ok_or_else(|| {
                StepError::permanent(format!(
                    "{} is a {} job and the agent has no runner JAR: set `runner.jar` in its config (build it with scripts/build-runner)",
                    job.file,
                    job.spec.artifact.kind().as_str()
                ))
            })?,
        };
        Ok(Deployment::of(
            job,
            &revision.head().to_string(),
            &sha,
            &self.config,
        ))
    }

    /// The run request of `deployment` with its secrets filled in, and the values (to redact
    /// them from whatever Flink answers). A Python job is refused here, before anything is sent,
    /// when the cluster has no Python for it.
    pub(super) fn run_request_with_secrets(
        &self,
        pass: &super::PassContext,
        deployment: &Deployment,
        flink_job_id: &str,
        restore: Option<&str>,
    ) -> Result<(crate::flink::RunRequest, BTreeMap<String, String>), StepError> {
        let default_parallelism = pass.default_parallelism;
        if deployment.kind == crate::spec::JobKind::Python {
            match &pass.python_executable {
                None => {
                    return Err(StepError::transient(format!(
                        "{} is a Python job and the cluster's configuration (/jobmanager/config) could not be read to check that it can run Python",
                        deployment.job_id
                    )));
                }
                Some(None) => {
                    return Err(StepError::permanent(format!(
                        "{} is a Python job and this Flink cluster cannot run Python jobs: its configuration has no python.executable (a Python with apache-flink 2.3.0 and its dependencies on every host, and flink-python in lib/; scripts/flink-local sets this up)",
                        deployment.job_id
                    )));
                }
                Some(Some(_)) => {}
            }
        }
        let secret_error = |e: crate::secrets::SecretError| {
            StepError::permanent(format!("{}: {e}", deployment.job_id))
        };
        let names = deployment.secret_names().map_err(secret_error)?;
        let values = crate::secrets::Secrets::of(&self.config)
            .values(&names)
            .map_err(secret_error)?;
        let request = deployment
            .run_request(flink_job_id, restore, default_parallelism, &values)
            .map_err(secret_error)?;
        Ok((request, values))
    }

    /// Everything a submission of `deployment` needs that can be known before the running job is
    /// touched: the cluster can run it, its secrets are there.
    pub(super) fn preflight(
        &self,
        pass: &super::PassContext,
        deployment: &Deployment,
    ) -> Result<(), StepError> {
        let probe = crate::plan::flink_job_id(&deployment.job_id, 0);
        self.run_request_with_secrets(pass, deployment, &probe, None)
            .map(|_| ())
    }

    /// `text` with the values of the secrets `deployment` uses replaced by their references.
    pub(super) fn redact_secrets_of(
        &self,
        deployment: Option<&Deployment>,
        text: String,
    ) -> String {
        let Some(deployment) = deployment else {
            return text;
        };
        let names = deployment.secret_names().unwrap_or_default();
        if names.is_empty() {
            return text;
        }
        let secrets = crate::secrets::Secrets::of(&self.config);
        let values: BTreeMap<String, String> = names
            .iter()
            .filter_map(|name| {
                let one = secrets.values(std::slice::from_ref(name)).ok()?;
                one.into_iter().next()
            })
            .collect();
        crate::secrets::redact(&text, &values)
    }

    /// Runs the uploaded JAR. The outer error is ours (state, upload); the inner one is Flink's answer.
    pub(super) async fn run_jar_reuploading(
        &self,
        head: &str,
        deployment: &Deployment,
        jar_id: &str,
        request: &crate::flink::RunRequest,
    ) -> Result<Result<String, FlinkError>, StepError> {
        let (_exclusive, _shared) = if deployment.kind == crate::spec::JobKind::Python {
            (Some(self.submit_gate.write().await), None)
        } else {
            (None, Some(self.submit_gate.read().await))
        };
        match self.client.run_jar(jar_id, request).await {
            // Only the JAR gone missing: a job's own "table … does not exist" is its failure.
            Err(FlinkError::Status { root_cause, .. })
                if root_cause.contains("does not exist") && root_cause.contains(jar_id) =>
            {
                // The JobManager restarted and forgot its uploads: upload again, once.
                self.with_store(|s| s.remove_jar(&deployment.jar_sha256))?;
                let jar_id = self.ensure_jar(head, deployment).await?;
                Ok(self.client.run_jar(&jar_id, request).await)
            }
            other => Ok(other),
        }
    }

    /// Makes sure the JAR is on the cluster: reuse an upload with the same digest, else check the cached file again and upload it.
    pub(super) async fn ensure_jar(
        &self,
        head: &str,
        deployment: &Deployment,
    ) -> Result<String, StepError> {
        let sha = &deployment.jar_sha256;
        if let Some(known) = self.with_store(|s| s.jar(sha))? {
            let on_cluster = self.client.jars().await?;
            if on_cluster.iter().any(|j| j.id == known.jar_id) {
                return Ok(known.jar_id);
            }
        }
        let path = self.cache_path(sha);
        if let Some(url) = &deployment.artifact_url
            && !path.exists()
        {
            self.download_jar(head, deployment, url, &path).await?;
        }
        let check_path = path.clone();
        let digest = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&check_path)?;
            hash_jar(
                file,
                &check_path.display().to_string(),
                Limits::DEFAULT.jar_bytes,
            )
            .map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| StepError::permanent(e.to_string()))?
        .map_err(|e| StepError::permanent(format!("JAR cache {}: {e}", path.display())))?;
        if &digest.sha256 != sha {
            return Err(StepError::permanent(format!(
                "JAR cache {} has sha256 {}, expected {sha}: refusing to upload",
                path.display(),
                digest.sha256
            )));
        }
        let intent = self.intent(
            head,
            &deployment.job_id,
            AuditAction::Upload,
            json!({"jar_sha256": sha, "name": deployment.jar_name}),
        )?;
        match self.client.upload_jar_as(&path, &deployment.jar_name).await {
            Ok(jar_id) => {
                self.with_store(|s| s.put_jar(sha, &jar_id))?;
                self.outcome(AuditAction::Upload, intent, "ok", json!({"jar_id": jar_id}))?;
                Ok(jar_id)
            }
            Err(error) => {
                self.outcome(
                    AuditAction::Upload,
                    intent,
                    "failed",
                    json!({"error": error.to_string()}),
                )?;
                Err(error.into())
            }
        }
    }

    /// Deletes uploaded JARs that no job record or pending deployment uses.
    pub(super) async fn delete_unused_jars(&self, head: &str) -> Vec<String> {
        // In a pass that changed nothing every JAR is held by a running job: one small query.
        let jars = match self.with_store(|s| s.jars_not_held_by_a_settled_job()) {
            Ok(jars) if !jars.is_empty() => jars,
            _ => return Vec::new(),
        };
        let Ok(rows) = self.with_store(|s| s.jobs()) else {
            return Vec::new();
        };
        let runs = self.with_store(|s| s.active_runs(None)).unwrap_or_default();
        let mut used: BTreeMap<String, ()> = BTreeMap::new();
        for run in &runs {
            used.insert(run.jar_sha256.clone(), ());
        }
        for row in &rows {
            let keeps_jar = match row.status.as_str() {
                "running" | "suspended" | "failed" => true,
                // A job being created keeps the JAR its phase is about to run.
                "new" => false,
                // A batch job between runs keeps its JAR unless it asked for clean-up.
                batch::SCHEDULED => !cleanup_on_completion(&row.spec_json),
                _ => false,
            };
            if keeps_jar && let Some(sha) = &row.jar_sha256 {
                used.insert(sha.clone(), ());
            }
            if let Some(target) = Phase::of_record(row)
                .operation()
                .and_then(|op| op.target.as_ref())
            {
                used.insert(target.jar_sha256.clone(), ());
            }
        }
        let mut deleted = Vec::new();
        for jar in jars.into_iter().filter(|j| !used.contains_key(&j.sha256)) {
            let Ok(intent) = self.with_store(|s| {
                s.audit_intent(
                    Some(head),
                    None,
                    AuditAction::DeleteJar,
                    &json!({"jar_id": jar.jar_id}).to_string(),
                )
            }) else {
                continue;
            };
            let result = match self.client.delete_jar(&jar.jar_id).await {
                // 400: Flink says the file no longer exists.
                Ok(())
                | Err(FlinkError::Status {
                    status: 400 | 404, ..
                }) => "ok",
                Err(_) => "failed",
            };
            let _ = self.with_store(|s| s.audit_outcome(intent, result, "{}"));
            if result == "ok" {
                let _ = self.with_store(|s| s.remove_jar(&jar.sha256));
                deleted.push(jar.jar_id);
            }
        }
        deleted
    }
}

pub(super) fn cleanup_on_completion(spec_json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(spec_json)
        .ok()
        .and_then(|v| v["spec"]["batch"]["cleanup_on_completion"].as_bool())
        .unwrap_or(false)
}

/// Hashes the configured runner JAR and keeps a copy in the cache under its sha256: the digest
/// taken at start is the one every SQL and Python submission is checked against.
pub(super) fn pin_runner(
    jar: &std::path::Path,
    cache_dir: &std::path::Path,
) -> Result<String, String> {
    let file =
        std::fs::File::open(jar).map_err(|e| format!("runner.jar {}: {e}", jar.display()))?;
    let digest = hash_jar(file, &jar.display().to_string(), Limits::DEFAULT.jar_bytes)
        .map_err(|e| format!("runner.jar {}: {e}", jar.display()))?;
    let target = cache_dir.join(format!("{}.jar", digest.sha256));
    if !target.exists() {
        let partial = super::download::PartialFile::at(
            cache_dir.join(format!("{}.jar.partial", digest.sha256)),
        );
        std::fs::copy(jar, partial.path()).map_err(|e| {
            format!(
                "runner.jar {} into {}: {e}",
                jar.display(),
                partial.path().display()
            )
        })?;
        let copied = std::fs::File::open(partial.path())
            .map_err(|e| format!("{}: {e}", partial.path().display()))?;
        let again = hash_jar(
            copied,
            &partial.path().display().to_string(),
            Limits::DEFAULT.jar_bytes,
        )
        .map_err(|e| format!("{}: {e}", partial.path().display()))?;
        if again.sha256 != digest.sha256 {
            return Err(format!(
                "runner.jar {} changed while it was being copied; try again",
                jar.display()
            ));
        }
        partial
            .persist(&target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(digest.sha256)
}

/// Writes each verified in-repo JAR of the revision into the cache, named by its sha256.
pub(super) fn cache_jars(
    repo: &git2::Repository,
    revision: &VerifiedRevision,
    cache_dir: &std::path::Path,
) -> Result<(), String> {
    let tree = crate::spec::GitTree::new(repo, revision.head()).map_err(|e| e.to_string())?;
    let streams = crate::git::BlobStreams::new(repo).map_err(|e| e.message().to_string())?;
    let mut seen = std::collections::HashSet::new();
    for check in revision.artifacts().values() {
        // Jobs sharing a JAR share its cached copy: one look each.
        if !seen.insert(check.sha256.as_str()) {
            continue;
        }
        let target = cache_dir.join(format!("{}.jar", check.sha256));
        if target.exists() {
            continue;
        }
        let path = crate::spec::RepoPath::parse(&check.path)?;
        let resolved = crate::spec::SpecTree::resolve_file(&tree, &path)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} vanished", check.path))?;
        let blob_id = tree.blob_id(&resolved).map_err(|e| e.to_string())?;
        let mut blob = streams
            .open(blob_id, Limits::DEFAULT.jar_bytes)
            .map_err(|e| format!("{}: {e}", check.path))?;
        let partial = super::download::PartialFile::at(
            cache_dir.join(format!("{}.jar.partial", check.sha256)),
        );
        // The stream's last read fails on bytes that are not the blob's; the partial file then goes.
        let mut file = std::fs::File::create(partial.path())
            .map_err(|e| format!("{}: {e}", partial.path().display()))?;
        std::io::copy(&mut blob, &mut file)
            .map_err(|e| format!("{} into {}: {e}", check.path, partial.path().display()))?;
        partial
            .persist(&target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(())
}
