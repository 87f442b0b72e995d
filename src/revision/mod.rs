//! A revision of the spec repo made trustworthy: commits verified, specs parsed, in-repo JARs checked.

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ArtifactPolicy as ArtifactRule, Config};
use crate::git::{BlobStreamError, BlobStreams};
use crate::limits::Limits;
use crate::spec::{Artifact, DesiredState, GitTree, MemoEntry, SpecError, SpecMemo, SpecTree};
use crate::state::{StateError, StateStore};
use crate::trust::artifacts::{ArtifactError, ArtifactPolicy, hash_jar, verify_jar};
use crate::trust::commits::{
    CommitError, Owners, Policy, RangeError, RangeReport, Start, verify_range,
};
use crate::trust::{AllowedSigners, AllowedSignersError};

mod folded;
pub use folded::{FoldError, FoldedRevision};

/// The trust material from the config, loaded once.
pub struct TrustMaterial {
    /// Parsed allowed_signers.
    pub signers: AllowedSigners,
    /// Compiled ownership rules.
    pub owners: Owners,
}

impl TrustMaterial {
    /// Loads allowed_signers and compiles the owners rules of `config`.
    pub fn load(config: &Config) -> Result<TrustMaterial, AllowedSignersError> {
        let signers = AllowedSigners::load(&config.trust.allowed_signers)?;
        let owners = Owners::new(&config.trust.owners).map_err(|reason| AllowedSignersError {
            path: config.source.clone(),
            line: 0,
            reason,
        })?;
        Ok(TrustMaterial { signers, owners })
    }

    /// What a job's JAR must satisfy: a detached signature is required by the agent's policy, or by
    /// the spec's `security.artifact_verification`.
    pub fn artifact_policy<'a>(
        &'a self,
        config: &'a Config,
        spec_demands_signature: bool,
    ) -> ArtifactPolicy<'a> {
        let signature_required = match (config.trust.artifacts, spec_demands_signature) {
            (ArtifactRule::Required, _) => Some("trust.artifacts is `required`"),
            (ArtifactRule::Optional, true) => Some("the spec sets security.artifact_verification"),
            (ArtifactRule::Optional, false) => None,
        };
        ArtifactPolicy {
            signers: &self.signers,
            namespace: &config.trust.artifact_namespace,
            signature_required,
        }
    }
}

/// What was established about one in-repo JAR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactCheck {
    /// Repo path of the JAR.
    pub path: String,
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Who signed it, when a detached signature was present.
    pub signer: Option<String>,
}

/// A revision whose every check passed. Only [`verify_revision`] makes one (and
/// [`FoldedRevision::unfold`] gives back one it made), so holding one is proof that the commits,
/// specs and JARs in it were checked.
#[derive(Debug, Clone)]
pub struct VerifiedRevision {
    head: Oid,
    commits: Vec<(Oid, String)>,
    desired: DesiredState,
    /// Jobs that share a JAR share its check.
    artifacts: BTreeMap<String, Arc<ArtifactCheck>>,
    memo_fresh: Vec<MemoEntry>,
    memo_kept: Vec<String>,
}

impl VerifiedRevision {
    /// The head commit.
    pub fn head(&self) -> Oid {
        self.head
    }

    /// Per new commit, oldest first: (commit, signer).
    pub fn commits(&self) -> &[(Oid, String)] {
        &self.commits
    }

    /// The desired state at the head.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// Per job id, its JAR's check (in-repo JARs only).
    pub fn artifacts(&self) -> &BTreeMap<String, Arc<ArtifactCheck>> {
        &self.artifacts
    }

    /// What the spec memo should keep of this revision: the specs it parsed, and the keys of all.
    /// Taken out once, before the revision is shared: the agent keeps the revision between passes,
    /// and the parsed specs' JSON (a megabyte for 1,000 new specs) is not needed after it is stored.
    pub fn take_memo_update(&mut self) -> (Vec<MemoEntry>, Vec<String>) {
        (
            std::mem::take(&mut self.memo_fresh),
            std::mem::take(&mut self.memo_kept),
        )
    }
}

/// Why a revision was refused; the cluster keeps the last verified state.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    /// Rollback, teleport or a walk failure.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A commit in the range failed verification.
    #[error("commit {commit} ({summary}): {error}")]
    Commit {
        /// The commit.
        commit: String,
        /// Its summary line.
        summary: String,
        /// Why.
        error: Box<CommitError>,
        /// The whole report, for per-commit output.
        report: Box<RangeReport>,
    },
    /// The head's specs are invalid.
    #[error("{} invalid spec(s); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    Specs(Vec<SpecError>),
    /// A JAR failed its checks.
    #[error("job {job_id}: {error}")]
    Artifact {
        /// The job.
        job_id: String,
        /// Why.
        error: ArtifactError,
    },
    /// The repository could not be read.
    #[error("reading the repository: {0}")]
    Git(String),
}

impl RevisionError {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RevisionError::Range(
                RangeError::Rollback { .. } | RangeError::LostWatermark { .. },
            ) => "rollback",
            RevisionError::Range(RangeError::Teleport { .. }) => "teleport",
            RevisionError::Range(_) => "range",
            RevisionError::Commit { .. } => "signature",
            RevisionError::Specs(_) => "spec",
            RevisionError::Artifact { .. } => "artifact",
            RevisionError::Git(_) => "git",
        }
    }
}

/// Verifies everything from `start` to `head` and loads the head's desired state.
///
/// `first_seen` gives the agent's first sight of each commit: key validity is judged then, never
/// at the (signer-controlled) committer date. Specs unchanged since `memo` was kept are taken
/// from it instead of being parsed again.
pub fn verify_revision(
    repo: &Repository,
    config: &Config,
    trust: &TrustMaterial,
    start: Start,
    head: Oid,
    first_seen: impl FnMut(Oid) -> DateTime<Utc>,
    memo: &SpecMemo,
) -> Result<VerifiedRevision, RevisionError> {
    let mut first_seen = first_seen;
    let policy = Policy {
        signers: &trust.signers,
        mode: config.trust.commits,
        clean_merges: config.trust.clean_merges,
        owners: &trust.owners,
    };
    let head_seen = first_seen(head);
    let report = verify_range(repo, start, head, &policy, &mut first_seen)?;
    if let Some((verdict, error)) = report.first_refusal() {
        return Err(RevisionError::Commit {
            commit: verdict.commit.to_string(),
            summary: verdict.summary.clone(),
            error: Box::new(error.clone()),
            report: Box::new(report.clone()),
        });
    }
    let commits = report
        .verdicts
        .iter()
        .filter_map(|v| v.result.as_ref().ok().map(|a| (v.commit, a.signer())))
        .collect();
    let tree = GitTree::new(repo, head).map_err(|e| RevisionError::Git(e.to_string()))?;
    let loaded = crate::spec::load_desired_with(&tree, &config.repo.jobs_dir, memo)
        .map_err(RevisionError::Specs)?;
    let mut desired = loaded.desired;
    crate::secrets::Secrets::of(config)
        .fingerprint_jobs(desired.jobs.values_mut())
        .map_err(RevisionError::Specs)?;
    // In job id order, so the map is built in one pass at the end instead of searched per job.
    let mut artifacts = Vec::with_capacity(desired.jobs.len());
    // Jobs that share a JAR (and its pin and signature demand) share one check: it is hashed once.
    let mut checked: foldhash::HashMap<(&str, Option<&str>, bool), Arc<ArtifactCheck>> =
        foldhash::HashMap::default();
    for (job_id, job) in &desired.jobs {
        // A JAR job's JAR, or the runner JAR a SQL or Python spec brings along.
        let path = match (&job.spec.artifact, &job.spec.runner) {
            (Artifact::Path(path), _) => path,
            (Artifact::Sql { .. } | Artifact::Python { .. }, Some(runner)) => runner,
            _ => continue,
        };
        let key = (
            path.as_str(),
            job.spec.artifact_sha256.as_deref(),
            job.spec.artifact_verification,
        );
        if let Some(check) = checked.get(&key) {
            artifacts.push((job_id.clone(), check.clone()));
            continue;
        }
        let artifact_policy = trust.artifact_policy(config, job.spec.artifact_verification);
        let check = check_in_repo_jar(
            repo,
            &tree,
            path.as_str(),
            job.spec.artifact_sha256.as_deref(),
            &artifact_policy,
            head_seen,
        )
        .map_err(|error| RevisionError::Artifact {
            job_id: job_id.clone(),
            error,
        })?;
        let check = Arc::new(check);
        checked.insert(key, check.clone());
        artifacts.push((job_id.clone(), check));
    }
    Ok(VerifiedRevision {
        head,
        commits,
        desired,
        artifacts: artifacts.into_iter().collect(),
        memo_fresh: loaded.fresh,
        memo_kept: loaded.kept,
    })
}

fn check_in_repo_jar(
    repo: &Repository,
    tree: &GitTree<'_>,
    path: &str,
    pin: Option<&str>,
    policy: &ArtifactPolicy<'_>,
    at: DateTime<Utc>,
) -> Result<ArtifactCheck, ArtifactError> {
    let io = |message: String| ArtifactError::Io {
        path: path.to_string(),
        source: std::io::Error::other(message),
    };
    let repo_path = crate::spec::RepoPath::parse(path).map_err(io)?;
    let resolved = tree
        .resolve_file(&repo_path)
        .map_err(|e| io(e.to_string()))?
        .ok_or_else(|| io("not found".into()))?;
    let blob_id = tree.blob_id(&resolved).map_err(|e| io(e.to_string()))?;
    let streams = BlobStreams::new(repo).map_err(|e| io(e.message().to_string()))?;
    // Streamed unless deltified; the stream fails its last read unless the bytes hash to the blob id,
    // so a corrupt mirror cannot pass as a signed JAR.
    let blob = streams
        .open(blob_id, Limits::DEFAULT.jar_bytes)
        .map_err(|e| match e {
            BlobStreamError::TooLarge { .. } => ArtifactError::TooLarge {
                path: path.to_string(),
                limit: Limits::DEFAULT.jar_bytes,
            },
            other => io(other.to_string()),
        })?;
    let digest = hash_jar(blob, path, Limits::DEFAULT.jar_bytes)?;
    let signature_path = crate::spec::RepoPath::parse(&format!("{path}.sig")).map_err(io)?;
    let signature = match tree.entry(&signature_path).map_err(|e| io(e.to_string()))? {
        Some(crate::spec::EntryKind::File) => Some(
            tree.read(&signature_path, Limits::DEFAULT.signature_bytes)
                .map_err(|e| io(e.to_string()))?,
        ),
        _ => None,
    };
    let signer = verify_jar(path, &digest, pin, signature.as_deref(), policy, at)?;
    Ok(ArtifactCheck {
        path: path.to_string(),
        sha256: digest.sha256,
        size: digest.size,
        signer: signer.map(|v| v.principal),
    })
}

/// A `first_seen` source that records the agent's first sight of each commit in the state DB.
///
/// A commit seen before keeps its first time, so a key retired since then does not condemn a
/// commit it signed while valid, and a key added later cannot vouch for an older sighting.
pub fn recording_first_seen(store: &StateStore) -> impl FnMut(Oid) -> DateTime<Utc> + '_ {
    move |oid| {
        let now = Utc::now();
        match store.record_revision_seen(&oid.to_string()) {
            Ok(record) => DateTime::parse_from_rfc3339(&record.first_seen_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(now),
            Err(error) => {
                tracing::warn!(commit = %oid, %error, "cannot record first sight; judging at now");
                now
            }
        }
    }
}

/// Records who signed each newly verified commit (the audit trail of trust).
pub fn record_verified(store: &StateStore, revision: &VerifiedRevision) -> Result<(), StateError> {
    for (commit, signer) in &revision.commits {
        store.record_revision_seen(&commit.to_string())?;
        store.record_revision_verified(&commit.to_string(), signer)?;
    }
    Ok(())
}

/// Where verification starts: the newest watermark that can still be found, else the configured
/// start commit, else the head alone.
///
/// `watermark` is the state database's, `kept` the copy beside it that outlives the database
/// ([`crate::state::kept_watermark`]). Normally they are equal. When they differ the newer one wins
/// (a database restored from an older backup must not reopen the range it had already closed); two
/// watermarks on different lines of history are an error for the operator, never a guess. With no
/// database watermark the kept one wins over `trust.start_commit` unless the start commit is newer.
pub fn verification_start(
    repo: &Repository,
    config: &Config,
    watermark: Option<&str>,
    kept: Option<&str>,
) -> Result<Start, String> {
    let recorded = watermark
        .map(|w| Oid::from_str(w).map_err(|e| format!("watermark `{w}` in the state DB: {e}")))
        .transpose()?;
    let kept = kept
        .map(|w| {
            Oid::from_str(w)
                .map_err(|e| format!("watermark `{w}` in {}: {e}", crate::state::WATERMARK_FILE))
        })
        .transpose()?;
    newest_start(repo, recorded, kept, || {
        config
            .trust
            .start_commit
            .as_ref()
            .map(|rev| {
                repo.revparse_single(rev)
                    .and_then(|o| o.peel_to_commit())
                    .map(|c| c.id())
                    .map_err(|e| format!("trust.start_commit `{rev}`: {}", e.message()))
            })
            .transpose()
    })
}

/// [`verification_start`] once the commits are parsed; `configured` is only resolved when no
/// database watermark makes it irrelevant (a broken start commit must not stop a running agent).
fn newest_start(
    repo: &Repository,
    recorded: Option<Oid>,
    kept: Option<Oid>,
    configured: impl FnOnce() -> Result<Option<Oid>, String>,
) -> Result<Start, String> {
    // Is `a` newer than `b` on one line of history?
    let newer = |a: Oid, b: Oid| {
        repo.graph_descendant_of(a, b).map_err(|e| {
            format!(
                "comparing the watermarks {a} and {b} (is the commit still in the mirror?): {}",
                e.message()
            )
        })
    };
    match (recorded, kept) {
        (Some(w), None) => return Ok(Start::Watermark(w)),
        (Some(w), Some(k)) if w == k => return Ok(Start::Watermark(w)),
        (Some(w), Some(k)) => {
            return if newer(k, w)? {
                Ok(Start::Watermark(k))
            } else if newer(w, k)? {
                Ok(Start::Watermark(w))
            } else {
                Err(format!(
                    "the state DB's watermark {w} and the one kept in {} ({k}) are on different lines of history; if one of them is intended, run `flink-gitops apply --accept-rollback-to <the branch head>` once",
                    crate::state::WATERMARK_FILE
                ))
            };
        }
        (None, _) => {}
    }
    Ok(match (kept, configured()?) {
        // A start commit configured after the last verified head: it still implies the watermark.
        (Some(k), Some(s)) if s != k && newer(s, k)? => Start::Configured(s),
        (Some(k), _) => Start::Kept(k),
        (None, Some(s)) => Start::Configured(s),
        (None, None) => Start::HeadOnly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with `base ← old ← new` and `base ← other`, made with git2 (no signatures:
    /// choosing the start only walks the graph).
    fn history() -> (tempfile::TempDir, Repository, [Oid; 4]) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let tree_id = repo.treebuilder(None).unwrap().write().unwrap();
        let commit = |message: &str, parent: Option<Oid>| {
            let parents: Vec<_> = parent
                .map(|p| repo.find_commit(p).unwrap())
                .into_iter()
                .collect();
            let parents: Vec<_> = parents.iter().collect();
            let tree = repo.find_tree(tree_id).unwrap();
            repo.commit(None, &signature, &signature, message, &tree, &parents)
                .unwrap()
        };
        let base = commit("base", None);
        let old = commit("old", Some(base));
        let new = commit("new", Some(old));
        let other = commit("other", Some(base));
        (dir, repo, [base, old, new, other])
    }

    /// The example repository's revision (JAR, SQL and Python jobs), with a secret fingerprint
    /// and a JAR check as the agent adds them.
    fn example_revision() -> VerifiedRevision {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo"))
            .arg(&repo)
            .status()
            .unwrap();
        assert!(copied.success());
        // `example-repo/build.sh` builds these; the loader only asks that they exist.
        std::fs::create_dir_all(repo.join("artifacts")).unwrap();
        for jar in ["counter-v1.jar", "batch-report.jar"] {
            std::fs::write(repo.join("artifacts").join(jar), b"PK\x03\x04").unwrap();
        }
        let tree = crate::spec::DirTree::new(&repo).unwrap();
        let mut desired = crate::spec::load_desired(&tree, "jobs").unwrap();
        let kinds: std::collections::BTreeSet<_> = desired
            .jobs
            .values()
            .map(|job| format!("{:?}", job.spec.artifact.kind()))
            .collect();
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        let (first, job) = desired.jobs.iter_mut().next().unwrap();
        job.secrets
            .insert("db_password".into(), "hmac-sha256:0123abcd".into());
        let artifacts = BTreeMap::from([(
            first.clone(),
            Arc::new(ArtifactCheck {
                path: "artifacts/job.jar".into(),
                sha256: "ab".repeat(32),
                size: 4096,
                signer: Some("release@example.com".into()),
            }),
        )]);
        let head = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        VerifiedRevision {
            head,
            commits: vec![(head, "alice@example.com".into())],
            desired,
            artifacts,
            memo_fresh: Vec::new(),
            memo_kept: Vec::new(),
        }
    }

    #[test]
    fn a_folded_revision_unfolds_to_the_verified_one() {
        let revision = example_revision();
        let unfolded = revision.fold().unwrap().unfold().unwrap();
        assert_eq!(unfolded.head(), revision.head());
        assert_eq!(unfolded.commits(), revision.commits());
        assert_eq!(unfolded.desired(), revision.desired());
        assert_eq!(unfolded.artifacts(), revision.artifacts());
        // What plans compare: the canonical JSON and its hash, secrets included.
        for (id, job) in &revision.desired().jobs {
            let back = &unfolded.desired().jobs[id];
            assert_eq!(back.canonical_json(), job.canonical_json(), "{id}");
            assert_eq!(back.spec_hash(), job.spec_hash(), "{id}");
        }
    }

    #[test]
    fn a_jar_check_of_a_job_the_revision_lacks_is_not_folded() {
        let mut revision = example_revision();
        let check = revision.artifacts.values().next().unwrap().clone();
        revision.artifacts.insert("no-such-job".into(), check);
        assert!(matches!(revision.fold(), Err(FoldError::Unfaithful)));
    }

    #[test]
    fn the_newest_watermark_that_can_be_found_wins() {
        let (_dir, repo, [base, old, new, other]) = history();
        let none = || Ok(None);
        let start = |recorded, kept, configured: Option<Oid>| {
            newest_start(&repo, recorded, kept, || Ok(configured))
        };
        // A database restored from an older backup does not reopen what the kept copy closed.
        assert_eq!(start(Some(old), Some(new), None), Ok(Start::Watermark(new)));
        // A kept copy behind the database (a crash between the two writes): the database wins.
        assert_eq!(start(Some(new), Some(old), None), Ok(Start::Watermark(new)));
        let diverged = start(Some(new), Some(other), None).unwrap_err();
        assert!(
            diverged.contains(&new.to_string()) && diverged.contains(&other.to_string()),
            "{diverged}"
        );
        // A lost database: the kept copy, unless the configured start commit is newer.
        assert_eq!(start(None, Some(new), Some(base)), Ok(Start::Kept(new)));
        assert_eq!(start(None, Some(new), Some(new)), Ok(Start::Kept(new)));
        assert_eq!(
            start(None, Some(old), Some(new)),
            Ok(Start::Configured(new))
        );
        assert_eq!(start(None, Some(new), Some(other)), Ok(Start::Kept(new)));
        assert_eq!(start(None, None, Some(base)), Ok(Start::Configured(base)));
        assert_eq!(newest_start(&repo, None, None, none), Ok(Start::HeadOnly));
        assert_eq!(
            newest_start(&repo, Some(old), None, || Err("never read".into())),
            Ok(Start::Watermark(old))
        );
    }
}
