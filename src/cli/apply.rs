//! `flink-gitops apply`: one reconcile pass towards the verified branch head.

use super::request::requested_by;
use super::{EXIT_FINDINGS, EXIT_OK, Failure, OutputFormat, agent_failure, load_config, output};

pub(super) async fn run(
    config_path: &std::path::Path,
    format: OutputFormat,
    accept_rollback_to: Option<String>,
) -> Result<u8, Failure> {
    let config = load_config(config_path)?;
    let mut agent = crate::reconcile::Agent::open(config).map_err(agent_failure)?;
    if let Some(commit) = accept_rollback_to {
        let by = requested_by();
        agent = agent.accept_rollback(crate::reconcile::RollbackAcceptance { commit, by });
    }
    // A failed pass is a failed operation (1), whatever its cause, except a lost database (3).
    let report = agent.apply_once().await.map_err(|e| match e {
        crate::reconcile::AgentError::State(crate::state::StateError::Lost { .. }) => {
            agent_failure(e)
        }
        other => Failure::from(other),
    })?;
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_apply(&report),
    }
    Ok(if report.converged() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}
