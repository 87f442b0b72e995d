//! `flink-gitops plan --base REV --head REV`: a change reviewed before it is merged. Reads two
//! revisions of a checkout and verifies the commits between them (as `verify`); with `-c` also
//! the cluster and the agent's records. The comparison itself is [`crate::plan::review`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;
use tracing::warn;

use super::snapshot::Refusal;
use super::verify::{CommitLine, commit_lines, resolve_commit};
use super::{
    EXIT_FINDINGS, EXIT_OK, Failure, PlanFormat, load_config, output, review_output, usage,
};
use crate::config::Config;
use crate::flink::FlinkClient;
use crate::git::BlobStreams;
use crate::limits::Limits;
use crate::plan::review::{JarInfo, Live, Review, Side, review};
use crate::plan::slots::ClusterSlots;
use crate::plan::{Observed, plan};
use crate::spec::{Artifact, DesiredState, GitTree, RepoPath, SpecTree, load_desired};
use crate::state::{JobRecord, StateStore};
use crate::trust::AllowedSigners;
use crate::trust::commits::{Owners, Policy, Start, verify_range};

/// The command line of a range plan.
pub(super) struct RangeArgs {
    pub(super) repo: PathBuf,
    pub(super) base: String,
    pub(super) head: String,
    pub(super) config: Option<PathBuf>,
    pub(super) allowed_signers: Option<PathBuf>,
    pub(super) clean_merges: bool,
    pub(super) jobs_dir: Option<String>,
    pub(super) format: PlanFormat,
    /// `--check-state` (needs `-c`: the savepoints are in the agent's records).
    pub(super) state_check: Option<super::plan::StateCheckSetup>,
}

/// What the cluster said, when a config named one.
#[derive(Debug, Serialize)]
pub(super) struct ClusterView {
    /// The Flink REST URL (credentials redacted).
    pub(super) flink: String,
    /// Its version, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) flink_version: Option<String>,
    /// Why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

/// The answer of a range plan.
#[derive(Debug, Serialize)]
pub(super) struct RangeReport {
    /// The base as resolved.
    pub(super) base: String,
    /// The head as resolved.
    pub(super) head: String,
    /// The merge base the head was compared with, when the head does not descend from the base.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) merge_base: Option<String>,
    /// Per commit of the range, oldest first.
    pub(super) commits: Vec<CommitLine>,
    /// Who signed the range's commits.
    pub(super) signers: Vec<String>,
    /// Why the range would be refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) refused: Option<Refusal>,
    /// The cluster, with `-c`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cluster: Option<ClusterView>,
    /// The plan, unless the head's specs are invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) review: Option<Review>,
    /// With `-c`: why `apply` would refuse the head for task slots (or only warn, under
    /// `reconcile.slot_budget: warn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) slots_refusal: Option<String>,
    /// Whether that refusal is enforced.
    #[serde(skip)]
    pub(super) slots_enforced: bool,
}

impl RangeReport {
    /// The commit the head is compared with.
    pub(super) fn compared_with(&self) -> &str {
        self.merge_base.as_deref().unwrap_or(&self.base)
    }
}

/// What git says about the range.
struct Revisions {
    base: String,
    head: String,
    merge_base: Option<String>,
    commits: Vec<CommitLine>,
    refused: Option<Refusal>,
    specs: Result<(DesiredState, DesiredState), Refusal>,
    jars: (BTreeMap<String, JarInfo>, BTreeMap<String, JarInfo>),
    records: Vec<JobRecord>,
}

pub(super) async fn run(mut args: RangeArgs) -> Result<u8, Failure> {
    let config = args.config.as_deref().map(load_config).transpose()?;
    let format = args.format;
    let state_check = args.state_check.take();
    if state_check.is_some() && config.is_none() {
        return Err(usage(anyhow::anyhow!(
            "--check-state needs -c CONFIG: the savepoint to compare with is in the agent's records"
        )));
    }
    let repo_path = args.repo.clone();
    let blocking_config = config.clone();
    let revisions =
        tokio::task::spawn_blocking(move || read_revisions(&args, blocking_config.as_ref()))
            .await
            .map_err(anyhow::Error::from)??;

    let mut cluster_view = None;
    let mut live_inputs = None;
    if let Some(config) = &config {
        let client = FlinkClient::from_config(&config.flink)?;
        let flink = crate::util::redact_url(config.flink.url.as_str());
        match tokio::try_join!(
            client.overview(),
            client.jobs(),
            client.default_parallelism()
        ) {
            Ok((overview, jobs, default_parallelism)) => {
                cluster_view = Some(ClusterView {
                    flink,
                    flink_version: Some(overview.flink_version.clone()),
                    error: None,
                });
                live_inputs = Some((overview, jobs, default_parallelism));
            }
            Err(error) => {
                warn!(%error, "cannot read the cluster");
                cluster_view = Some(ClusterView {
                    flink,
                    flink_version: None,
                    error: Some(error.to_string()),
                });
            }
        }
    }

    let Revisions {
        base,
        head,
        merge_base,
        commits,
        mut refused,
        specs,
        jars,
        records,
    } = revisions;
    let mut slots_refusal = None;
    let review = match specs {
        Ok((base_desired, head_desired)) => {
            let mut live_plan = live_inputs.as_ref().map(|(_, jobs, _)| {
                // `apply` would act on the head as it is now: the cluster and the records.
                plan(
                    &head_desired,
                    Observed::Jobs(jobs),
                    &records,
                    chrono::Utc::now().timestamp_millis(),
                )
            });
            if let (Some(setup), Some(config), Some(plan), Some((_, _, default_parallelism))) = (
                state_check,
                config.as_ref(),
                live_plan.as_mut(),
                live_inputs.as_ref(),
            ) {
                let facts = StateFacts {
                    repo: &repo_path,
                    head: &head,
                    desired: &head_desired,
                    jars: &jars.1,
                    records: &records,
                    default_parallelism: *default_parallelism,
                };
                tokio::task::block_in_place(|| check_states(plan, config, setup, &facts))?;
            }
            let live = live_inputs.as_ref().zip(live_plan.as_ref()).map(
                |((overview, jobs, default_parallelism), plan)| Live {
                    plan,
                    records: &records,
                    cluster_jobs: jobs,
                    default_parallelism: *default_parallelism,
                    slots: Some(ClusterSlots::from(overview)),
                },
            );
            let reviewed = review(
                &Side {
                    desired: &base_desired,
                    jars: &jars.0,
                },
                &Side {
                    desired: &head_desired,
                    jars: &jars.1,
                },
                live.as_ref(),
            );
            slots_refusal = live_plan
                .as_ref()
                .and_then(|plan| crate::plan::slots::refusal_of(plan, &reviewed.slots));
            let mut reviewed = reviewed;
            for entry in live_plan.iter().flat_map(|plan| &plan.jobs) {
                // Only checked jobs are looked up: a search per job would be quadratic.
                let Some(verdict) = &entry.state_compatibility else {
                    continue;
                };
                if let Some(job) = reviewed.jobs.iter_mut().find(|j| j.job_id == entry.job_id) {
                    job.set_state_compatibility(verdict.clone());
                }
            }
            Some(reviewed)
        }
        Err(refusal) => {
            refused.get_or_insert(refusal);
            None
        }
    };
    let mut signers: Vec<String> = commits.iter().filter_map(|c| c.signer.clone()).collect();
    signers.sort_unstable();
    signers.dedup();
    let report = RangeReport {
        base,
        head,
        merge_base,
        commits,
        signers,
        refused,
        cluster: cluster_view,
        review,
        slots_refusal,
        slots_enforced: config
            .as_ref()
            .is_some_and(|c| c.reconcile.slot_budget == crate::config::SlotBudgetMode::Enforce),
    };
    match format {
        PlanFormat::Json => output::print_json(&report)?,
        PlanFormat::Text => review_output::print_text(&report),
        PlanFormat::Markdown => review_output::print_markdown(&report),
    }
    let cluster_failed = report.cluster.as_ref().is_some_and(|c| c.error.is_some());
    let slots_refused = report.slots_enforced && report.slots_refusal.is_some();
    Ok(
        if report.refused.is_some() || cluster_failed || slots_refused {
            EXIT_FINDINGS
        } else {
            EXIT_OK
        },
    )
}

/// What the state check of a range needs besides the live plan.
struct StateFacts<'a> {
    repo: &'a std::path::Path,
    head: &'a str,
    desired: &'a DesiredState,
    jars: &'a BTreeMap<String, JarInfo>,
    records: &'a [JobRecord],
    default_parallelism: u32,
}

/// `--check-state` on the live plan of the head: as `plan --check-state` does for the branch head.
fn check_states(
    plan: &mut crate::plan::Plan,
    config: &Config,
    setup: super::plan::StateCheckSetup,
    facts: &StateFacts<'_>,
) -> Result<(), Failure> {
    let (runner, savepoints) = setup.prepare(config)?;
    let repo = git2::Repository::open(facts.repo).map_err(|e| {
        usage(anyhow::anyhow!(
            "{}: not a git repository: {}",
            facts.repo.display(),
            e.message()
        ))
    })?;
    let head = git2::Oid::from_str(facts.head).map_err(anyhow::Error::from)?;
    // The digests the range plan hashed from the head's blobs: the JVM check runs those bytes.
    let artifacts: BTreeMap<String, std::sync::Arc<crate::revision::ArtifactCheck>> = facts
        .jars
        .iter()
        .map(|(job_id, jar)| {
            (
                job_id.clone(),
                std::sync::Arc::new(crate::revision::ArtifactCheck {
                    path: jar.path.clone(),
                    sha256: jar.sha256.clone(),
                    size: 0,
                    signer: None,
                }),
            )
        })
        .collect();
    crate::compat::check_plan(
        plan,
        runner.as_ref().map_err(String::as_str),
        config,
        &crate::compat::PlanStateInputs {
            desired: facts.desired,
            repo: &repo,
            head,
            artifacts: &artifacts,
            records: facts.records,
            savepoints: &savepoints,
            default_parallelism: facts.default_parallelism,
        },
    );
    Ok(())
}

fn read_revisions(args: &RangeArgs, config: Option<&Config>) -> Result<Revisions, Failure> {
    let signers_path = args
        .allowed_signers
        .clone()
        .or_else(|| config.map(|c| c.trust.allowed_signers.clone()))
        .ok_or_else(|| usage(anyhow::anyhow!("give --allowed-signers FILE or -c CONFIG")))?;
    let signers = AllowedSigners::load(&signers_path).map_err(usage)?;
    let owners = match config {
        Some(c) => Owners::new(&c.trust.owners).map_err(|e| usage(anyhow::anyhow!(e)))?,
        None => Owners::none(),
    };
    let repo = git2::Repository::discover(&args.repo).map_err(|e| {
        usage(anyhow::anyhow!(
            "{}: not a git repository: {}",
            args.repo.display(),
            e.message()
        ))
    })?;
    let base = resolve_commit(&repo, &args.base)?;
    let head = resolve_commit(&repo, &args.head)?;
    // A pull request whose base moved on is compared with the commit it branched from.
    let merge_base = repo.merge_base(base, head).map_err(|e| {
        usage(anyhow::anyhow!(
            "`{}` and `{}` have no common history: {}",
            args.base,
            args.head,
            e.message()
        ))
    })?;
    let policy = Policy {
        signers: &signers,
        mode: crate::config::CommitPolicy::Every,
        clean_merges: args.clean_merges || config.is_some_and(|c| c.trust.clean_merges),
        owners: &owners,
    };
    let now = chrono::Utc::now();
    let (commits, refused) =
        match verify_range(&repo, Start::Watermark(merge_base), head, &policy, |_| now) {
            Ok(report) => {
                let refused = report.first_refusal().map(|(verdict, error)| Refusal {
                    kind: "signature",
                    message: format!("commit {} ({}): {error}", verdict.commit, verdict.summary),
                    commits: Vec::new(),
                    spec_errors: Vec::new(),
                });
                (commit_lines(&report), refused)
            }
            Err(error) => (
                Vec::new(),
                Some(Refusal {
                    kind: "range",
                    message: error.to_string(),
                    commits: Vec::new(),
                    spec_errors: Vec::new(),
                }),
            ),
        };
    let jobs_dir = args
        .jobs_dir
        .clone()
        .or_else(|| config.map(|c| c.repo.jobs_dir.clone()))
        .unwrap_or_else(|| "jobs".into());
    let load =
        |commit: git2::Oid| -> Result<Result<DesiredState, Vec<crate::spec::SpecError>>, Failure> {
            let tree = GitTree::new(&repo, commit)
                .map_err(|e| anyhow::anyhow!("reading {commit}: {e}"))?;
            let mut desired = match load_desired(&tree, &jobs_dir) {
                Ok(desired) => desired,
                Err(errors) => return Ok(Err(errors)),
            };
            // With the agent's config, secrets are fingerprinted as the agent records them, so the
            // head compares with its records.
            if let Some(config) = config
                && let Err(errors) =
                    crate::secrets::Secrets::of(config).fingerprint_jobs(desired.jobs.values_mut())
            {
                return Ok(Err(errors));
            }
            Ok(Ok(desired))
        };
    let base_desired = load(merge_base)?.map_err(|errors| {
        anyhow::anyhow!(
            "the specs at the base {merge_base} are invalid ({} problem(s); first: {})",
            errors.len(),
            errors.first().map(ToString::to_string).unwrap_or_default()
        )
    })?;
    let specs = load(head)?.map_err(|errors| Refusal {
        kind: "spec",
        message: format!("the specs at {head} are invalid; nothing would be applied"),
        commits: Vec::new(),
        spec_errors: errors,
    });
    let mut hashed = HashMap::new();
    // A base JAR that cannot be read only loses its line in the plan; a head one refuses the head.
    let (base_jars, _) = jars_of(&repo, merge_base, &base_desired, &mut hashed)?;
    let (head_jars, jar_problems) = match &specs {
        Ok(desired) => jars_of(&repo, head, desired, &mut hashed)?,
        Err(_) => (BTreeMap::new(), Vec::new()),
    };
    let refused = refused.or_else(|| {
        (!jar_problems.is_empty()).then(|| Refusal {
            kind: "artifact",
            message: jar_problems.join("; "),
            commits: Vec::new(),
            spec_errors: Vec::new(),
        })
    });
    let specs = specs.map(|head_desired| (base_desired, head_desired));
    let records = match config {
        Some(config) => match StateStore::open_read_only(&config.state.dir)? {
            Some(store) => store.jobs()?,
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    Ok(Revisions {
        base: base.to_string(),
        head: head.to_string(),
        merge_base: (merge_base != base).then(|| merge_base.to_string()),
        commits,
        refused,
        specs,
        jars: (base_jars, head_jars),
        records,
    })
}

/// Per job, the JAR it runs at `commit`: in-repo JARs hashed (once per blob), URLs by their pin;
/// and the JARs that could not be read, each named with why.
fn jars_of(
    repo: &git2::Repository,
    commit: git2::Oid,
    desired: &DesiredState,
    hashed: &mut HashMap<git2::Oid, String>,
) -> Result<(BTreeMap<String, JarInfo>, Vec<String>), Failure> {
    let tree = GitTree::new(repo, commit).map_err(|e| anyhow::anyhow!("reading {commit}: {e}"))?;
    let streams = BlobStreams::new(repo)
        .map_err(|e| anyhow::anyhow!("reading the object database: {}", e.message()))?;
    let mut jars = BTreeMap::new();
    let mut problems = Vec::new();
    for (job_id, job) in &desired.jobs {
        let path = match (&job.spec.artifact, &job.spec.runner) {
            (Artifact::Url(url), _) => {
                if let Some(pin) = &job.spec.artifact_sha256 {
                    jars.insert(
                        job_id.clone(),
                        JarInfo {
                            path: crate::util::redact_url(url),
                            sha256: pin.clone(),
                        },
                    );
                }
                continue;
            }
            (Artifact::Path(path), _) => path,
            (_, Some(runner)) => runner,
            _ => continue,
        };
        match hash_in_tree(&tree, &streams, path.as_str(), hashed) {
            Ok(sha256) => {
                jars.insert(
                    job_id.clone(),
                    JarInfo {
                        path: path.to_string(),
                        sha256,
                    },
                );
            }
            Err(message) => problems.push(format!("job {job_id}: {path}: {message}")),
        }
    }
    Ok((jars, problems))
}

/// The sha256 of the file at `path` of `tree`, streamed with the JAR size limit.
fn hash_in_tree(
    tree: &GitTree<'_>,
    streams: &BlobStreams<'_>,
    path: &str,
    hashed: &mut HashMap<git2::Oid, String>,
) -> Result<String, String> {
    let repo_path = RepoPath::parse(path)?;
    let resolved = tree
        .resolve_file(&repo_path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "not found".to_string())?;
    let blob = tree.blob_id(&resolved).map_err(|e| e.to_string())?;
    if let Some(sha) = hashed.get(&blob) {
        return Ok(sha.clone());
    }
    let reader = streams
        .open(blob, Limits::DEFAULT.jar_bytes)
        .map_err(|e| e.to_string())?;
    let digest = crate::trust::artifacts::hash_jar(reader, path, Limits::DEFAULT.jar_bytes)
        .map_err(|e| e.to_string())?;
    hashed.insert(blob, digest.sha256.clone());
    Ok(digest.sha256)
}
