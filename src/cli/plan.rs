//! `flink-gitops plan`: what `apply` would do to reach the branch head, changing nothing.

use serde::Serialize;

use super::snapshot::{Refusal, snapshot};
use super::verify::CommitLine;
use super::{EXIT_FINDINGS, EXIT_OK, Failure, OutputFormat, output};
use crate::config::SlotBudgetMode;
use crate::plan::slots::{ClusterSlots, SlotBudget, live_slots, refusal_of};
use crate::plan::{Action, Observed, Plan};
use crate::revision::ArtifactCheck;
use crate::state::SavepointTaken;

#[derive(Serialize)]
struct TrustSummary<'a> {
    verified_from: Option<&'a str>,
    commits: Vec<CommitLine>,
    artifacts: &'a std::collections::BTreeMap<String, std::sync::Arc<ArtifactCheck>>,
}

#[derive(Serialize)]
struct PlanReport<'a> {
    revision: &'a str,
    branch: &'a str,
    repo: &'a str,
    flink: &'a str,
    flink_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust: Option<TrustSummary<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a Refusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a Plan>,
    /// Task slots per job and in total against the cluster's, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    slots: Option<&'a SlotBudget>,
    /// Why `apply` would refuse (or, under `reconcile.slot_budget: warn`, warn about) this
    /// revision for task slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    slots_refusal: Option<&'a str>,
}

/// `plan --check-state`: where the JVM check's parts are.
#[derive(Debug, Clone)]
pub(super) struct StateCheckSetup {
    /// `--runner`, else the config's `runner.jar`.
    pub(super) runner: Option<std::path::PathBuf>,
    /// `--flink-home`.
    pub(super) flink_home: Option<std::path::PathBuf>,
}

pub(super) async fn run(
    config_path: &std::path::Path,
    format: OutputFormat,
    state_check: Option<StateCheckSetup>,
) -> Result<u8, Failure> {
    let snap = snapshot(config_path, true).await?;
    let computed = snap.revision.as_ref().ok().map(|revision| {
        let observed = match &snap.cluster {
            Ok((_, jobs)) => Observed::Jobs(jobs),
            Err(reason) => Observed::Unreachable(reason.clone()),
        };
        let mut plan = crate::plan::plan(
            revision.desired(),
            observed,
            &snap.records,
            chrono::Utc::now().timestamp_millis(),
        );
        for entry in &mut plan.jobs {
            if matches!(entry.action, Action::Delete | Action::Suspend) {
                continue;
            }
            let next = revision
                .desired()
                .jobs
                .get(&entry.job_id)
                .and_then(|job| job.spec.batch.as_ref())
                .and_then(|batch| {
                    crate::batch::next_run(batch, chrono::Utc::now())
                        .map(|next| crate::batch::schedule::in_zone(next, &batch.timezone))
                });
            if let Some(next) = next {
                entry.reasons.push(format!("next run at {next}"));
            }
        }
        plan
    });
    let mut computed = computed;
    if let (Some(setup), Some(plan), Ok(revision)) =
        (state_check, computed.as_mut(), snap.revision.as_ref())
    {
        tokio::task::block_in_place(|| check_states(&snap, revision, plan, setup))?;
    }
    let slots = snap
        .revision
        .as_ref()
        .ok()
        .zip(computed.as_ref())
        .zip(snap.cluster.as_ref().ok())
        .map(|((revision, plan), (overview, jobs))| {
            SlotBudget::new(
                live_slots(
                    plan,
                    revision.desired(),
                    &snap.records,
                    jobs,
                    snap.default_parallelism.unwrap_or(1),
                ),
                Some(ClusterSlots::from(overview)),
            )
        });
    let slots_refusal = computed
        .as_ref()
        .zip(slots.as_ref())
        .and_then(|(plan, budget)| refusal_of(plan, budget));
    let enforced = snap.config.reconcile.slot_budget == SlotBudgetMode::Enforce;
    let trust = snap.revision.as_ref().ok().map(|r| TrustSummary {
        verified_from: snap.watermark.as_deref(),
        commits: r
            .commits()
            .iter()
            .map(|(oid, signer)| CommitLine {
                commit: oid.to_string(),
                summary: String::new(),
                ok: true,
                signer: Some(signer.clone()),
                error: None,
            })
            .collect(),
        artifacts: r.artifacts(),
    });
    let repo_url = crate::util::redact_url(&snap.config.repo.url);
    let flink_url = crate::util::redact_url(snap.config.flink.url.as_str());
    let report = PlanReport {
        revision: &snap.head,
        branch: &snap.config.repo.branch,
        repo: &repo_url,
        flink: &flink_url,
        flink_version: snap
            .cluster
            .as_ref()
            .ok()
            .map(|(o, _)| o.flink_version.as_str()),
        trust,
        refused: snap.revision.as_ref().err(),
        plan: computed.as_ref(),
        slots: slots.as_ref(),
        slots_refusal: slots_refusal.as_deref(),
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_plan(
            &report.revision_line(),
            report.trust.as_ref().map(|t| t.commits.as_slice()),
            report.refused,
            computed.as_ref(),
            slots.as_ref(),
            &snap.cluster,
        ),
    }
    if let (OutputFormat::Text, Some(refusal)) = (format, &slots_refusal) {
        outln!(
            "{} {refusal}",
            if enforced {
                "apply would REFUSE this revision:"
            } else {
                "apply would warn (reconcile.slot_budget: warn):"
            }
        );
    }
    let failed =
        snap.revision.is_err() || snap.cluster.is_err() || (enforced && slots_refusal.is_some());
    // The process ends with this command: giving thousands of jobs back to the allocator one by
    // one would only delay its exit (by a millisecond or two for 1,000 jobs).
    std::mem::forget(computed);
    std::mem::forget(snap);
    Ok(if failed { EXIT_FINDINGS } else { EXIT_OK })
}

impl PlanReport<'_> {
    fn revision_line(&self) -> String {
        format!(
            "revision {} ({} of {})",
            crate::spec::source::short_id(self.revision),
            self.branch,
            self.repo
        )
    }
}

impl StateCheckSetup {
    /// What every state check needs besides the plan: the local runner (or why there is none),
    /// from `--runner` else the config's `runner.jar`, and the agent's savepoint ledger.
    pub(super) fn prepare(
        &self,
        config: &crate::config::Config,
    ) -> Result<
        (
            Result<crate::runner::LocalRunner, String>,
            Vec<SavepointTaken>,
        ),
        Failure,
    > {
        let runner = crate::runner::LocalRunner::find(
            self.runner.as_deref().or(config.runner_jar.as_deref()),
            self.flink_home.as_deref(),
        );
        let savepoints = match crate::state::StateStore::open_read_only(&config.state.dir)? {
            Some(store) => store.newest_savepoints()?,
            None => Vec::new(),
        };
        Ok((runner, savepoints))
    }
}

/// Adds each stateful change's state compatibility to the plan (`--check-state`). Blocking: one
/// or two JVMs per stateful change.
fn check_states(
    snap: &super::snapshot::Snapshot,
    revision: &crate::revision::VerifiedRevision,
    plan: &mut Plan,
    setup: StateCheckSetup,
) -> Result<(), Failure> {
    let config = &snap.config;
    let (runner, savepoints) = setup.prepare(config)?;
    let source = crate::git::GitSource::open(&config.state.dir.join("repo.git"), &config.repo)?;
    // The snapshot read a local repository in place: the head's objects may be only there.
    source.read_local_in_place()?;
    crate::compat::check_plan(
        plan,
        runner.as_ref().map_err(String::as_str),
        config,
        &crate::compat::PlanStateInputs {
            desired: revision.desired(),
            repo: source.repo(),
            head: revision.head(),
            artifacts: revision.artifacts(),
            records: &snap.records,
            savepoints: &savepoints,
            // The cluster's default parallelism decides the graph of a spec without one (chaining).
            default_parallelism: snap.default_parallelism.unwrap_or(1),
        },
    );
    Ok(())
}
