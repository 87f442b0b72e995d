//! A verified revision as the service keeps it between passes.
//!
//! The agent keeps the last verified revision so that an unchanged head is neither verified nor
//! parsed again. Kept parsed, a revision of 1,000 jobs was 2.4 MiB of the idle service's heap: tens
//! of thousands of small blocks, spread between the blocks the pass that made them had freed, so
//! that the pages around them could not be given back. Folded, it is one deflated buffer, and a
//! pass or a status request unfolds it again in a few milliseconds.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use git2::Oid;
use serde::{Deserialize, Serialize};

use super::{ArtifactCheck, VerifiedRevision};
use crate::spec::program::Program;
use crate::spec::{DesiredJob, DesiredState, JobSpec, RepoPath};

/// A [`VerifiedRevision`] with its jobs and their JAR checks deflated. Only
/// [`VerifiedRevision::fold`] makes one, and only when unfolding it gives that revision back.
#[derive(Debug)]
pub struct FoldedRevision {
    head: Oid,
    commits: Vec<(Oid, String)>,
    /// Two lines per job, in job id order: its [`FoldedJob`], then its canonical spec (compact JSON
    /// has no line breaks).
    jobs: Box<[u8]>,
}

/// What a job holds besides its spec.
#[derive(Serialize, Deserialize)]
struct FoldedJob<'a> {
    id: Cow<'a, str>,
    file: Cow<'a, RepoPath>,
    artifact_content: Cow<'a, str>,
    /// [`DesiredJob::hash_without_secrets`]: a pass compares every job by it.
    hash: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    program: Option<Cow<'a, Program>>,
    #[serde(default, skip_serializing_if = "secrets_are_empty")]
    secrets: Cow<'a, BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact: Option<Cow<'a, ArtifactCheck>>,
}

fn secrets_are_empty(secrets: &BTreeMap<String, String>) -> bool {
    secrets.is_empty()
}

/// Why a revision could not be folded or unfolded; the agent then verifies the head again.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// Deflating or inflating failed.
    #[error("deflate: {0}")]
    Deflate(#[from] std::io::Error),
    /// A line did not parse.
    #[error("job line: {0}")]
    Json(#[from] serde_json::Error),
    /// The buffer ends after a job's first line.
    #[error("a job without its spec line")]
    Truncated,
    /// A JAR check names a job the revision does not have, or unfolding gave back something else.
    #[error("unfolding would not give back the verified revision")]
    Unfaithful,
}

impl VerifiedRevision {
    /// This revision folded; it is checked by unfolding it once.
    pub fn fold(&self) -> Result<FoldedRevision, FoldError> {
        if self
            .artifacts
            .keys()
            .any(|job_id| !self.desired.jobs.contains_key(job_id))
        {
            return Err(FoldError::Unfaithful);
        }
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::fast());
        for (id, job) in &self.desired.jobs {
            let folded = FoldedJob {
                id: Cow::Borrowed(id),
                file: Cow::Borrowed(&job.file),
                artifact_content: Cow::Borrowed(&job.artifact_content),
                hash: Cow::Borrowed(job.hash_without_secrets()),
                program: job.program.as_ref().map(Cow::Borrowed),
                secrets: Cow::Borrowed(&job.secrets),
                artifact: self.artifacts.get(id).map(|check| Cow::Borrowed(&**check)),
            };
            serde_json::to_writer(&mut encoder, &folded)?;
            encoder.write_all(b"\n")?;
            encoder.write_all(job.canonical_spec().as_bytes())?;
            encoder.write_all(b"\n")?;
        }
        let folded = FoldedRevision {
            head: self.head,
            commits: self.commits.clone(),
            jobs: encoder.finish()?.into_boxed_slice(),
        };
        let unfolded = folded.unfold()?;
        if unfolded.desired != self.desired || unfolded.artifacts != self.artifacts {
            return Err(FoldError::Unfaithful);
        }
        Ok(folded)
    }
}

impl FoldedRevision {
    /// The head commit.
    pub fn head(&self) -> Oid {
        self.head
    }

    /// The revision as it was verified.
    pub fn unfold(&self) -> Result<VerifiedRevision, FoldError> {
        let mut text = String::new();
        DeflateDecoder::new(&self.jobs[..]).read_to_string(&mut text)?;
        let mut desired = DesiredState::default();
        let mut artifacts = BTreeMap::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let job: FoldedJob<'_> = serde_json::from_str(line)?;
            let spec_json = lines.next().ok_or(FoldError::Truncated)?;
            let spec: JobSpec = serde_json::from_str(spec_json)?;
            let mut desired_job = DesiredJob::new(
                spec,
                job.file.into_owned(),
                job.artifact_content.into_owned(),
                job.program.map(Cow::into_owned),
            )
            .with_canonical_spec(spec_json.to_string(), job.hash.into_owned());
            desired_job.secrets = job.secrets.into_owned();
            let id = job.id.into_owned();
            if let Some(artifact) = job.artifact {
                artifacts.insert(id.clone(), std::sync::Arc::new(artifact.into_owned()));
            }
            desired.jobs.insert(id, desired_job);
        }
        Ok(VerifiedRevision {
            head: self.head,
            commits: self.commits.clone(),
            desired,
            artifacts,
            memo_fresh: Vec::new(),
            memo_kept: Vec::new(),
        })
    }
}
