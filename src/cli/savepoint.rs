//! `flink-gitops savepoint`: a savepoint of a running job now, audited with who asked.

use serde::Serialize;

use super::request::{recorded_job, requested_by};
use super::{EXIT_OK, Failure, OutputFormat, output, usage};
use crate::flink::FlinkClient;

/// What `savepoint` did.
#[derive(Serialize)]
struct SavepointReport {
    job_id: String,
    flink_job_id: String,
    savepoint: String,
    by: String,
}

pub(super) async fn run(
    config_path: &std::path::Path,
    job_id: &str,
    format: OutputFormat,
) -> Result<u8, Failure> {
    use crate::state::AuditAction;
    // The database is used off the async workers (the Flink calls are what this command awaits).
    let (config, store, record) = tokio::task::block_in_place(|| {
        recorded_job(
            config_path,
            job_id,
            "the agent has not deployed anything yet",
        )
    })?;
    let (Some(jid), Some(deployment)) = (
        record.flink_job_id.clone(),
        record
            .deployment_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<crate::reconcile::Deployment>(j).ok()),
    ) else {
        return Err(usage(anyhow::anyhow!("`{job_id}` has never run")));
    };
    if record.status != "running" || record.phase_name() != "steady" {
        return Err(usage(anyhow::anyhow!(
            "`{job_id}` is {} (phase {}): a savepoint is taken of a steady running job",
            record.status,
            record.phase_name()
        )));
    }
    let client = FlinkClient::from_config(&config.flink)?;
    let state = client.job(&jid).await?.state;
    if state != "RUNNING" {
        return Err(usage(anyhow::anyhow!(
            "`{job_id}`'s Flink job {jid} is {state}, not RUNNING"
        )));
    }
    let by = requested_by();
    let trigger = crate::reconcile::new_trigger_id(&jid);
    let target = deployment.savepoint_dir.clone();
    let intent = tokio::task::block_in_place(|| {
        store.audit_intent(
            Some(&record.commit_id),
            Some(job_id),
            AuditAction::Savepoint,
            &serde_json::json!({"flink_job_id": jid, "kind": "manual", "by": by, "trigger_id": trigger, "target": target})
                .to_string(),
        )
    })?;
    let taken = async {
        client.trigger_savepoint(&jid, &target, &trigger).await?;
        crate::reconcile::wait_for_savepoint(&client, &config, &jid, &trigger).await
    }
    .await;
    match taken {
        Ok(path) => {
            tokio::task::block_in_place(|| {
                store.audit_outcome(
                    intent,
                    "ok",
                    &serde_json::json!({"savepoint": path}).to_string(),
                )?;
                store.put_savepoint_taken(
                    job_id,
                    &path,
                    &jid,
                    "manual",
                    &record.commit_id,
                    chrono::Utc::now().timestamp_millis(),
                )
            })?;
            let report = SavepointReport {
                job_id: job_id.to_string(),
                flink_job_id: jid,
                savepoint: path,
                by,
            };
            match format {
                OutputFormat::Json => output::print_json(&report)?,
                OutputFormat::Text => outln!(
                    "savepoint of {} ({}), requested by {}: {}",
                    report.job_id,
                    report.flink_job_id,
                    report.by,
                    report.savepoint
                ),
            }
            Ok(EXIT_OK)
        }
        Err(error) => {
            tokio::task::block_in_place(|| {
                store.audit_outcome(
                    intent,
                    "failed",
                    &serde_json::json!({"error": error.full()}).to_string(),
                )
            })?;
            Err(Failure::from(anyhow::anyhow!(
                "savepoint of {job_id} failed: {}",
                error.full()
            )))
        }
    }
}
