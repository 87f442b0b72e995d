//! `flink-gitops verify`: commit signatures checked offline, one line per commit.

use serde::Serialize;

use super::{EXIT_FINDINGS, EXIT_OK, Failure, OutputFormat, load_config, output, usage};
use crate::trust::AllowedSigners;
use crate::trust::commits::{Owners, Policy, RangeReport, Start, verify_range};

/// One commit's verdict as shown to people and machines.
#[derive(Debug, Serialize)]
pub struct CommitLine {
    /// The commit id.
    pub commit: String,
    /// First line of its message.
    pub summary: String,
    /// Accepted?
    pub ok: bool,
    /// Who signed it (or how it was accepted).
    pub signer: Option<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

pub(super) fn commit_lines(report: &RangeReport) -> Vec<CommitLine> {
    report
        .verdicts
        .iter()
        .map(|v| CommitLine {
            commit: v.commit.to_string(),
            summary: v.summary.clone(),
            ok: v.result.is_ok(),
            signer: v.result.as_ref().ok().map(|a| a.signer()),
            error: v.result.as_ref().err().map(ToString::to_string),
        })
        .collect()
}

#[derive(Serialize)]
struct VerifyReport {
    from: Option<String>,
    to: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    commits: Vec<CommitLine>,
}

pub(super) fn resolve_commit(repo: &git2::Repository, rev: &str) -> Result<git2::Oid, Failure> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| usage(anyhow::anyhow!("`{rev}` is not a commit: {}", e.message())))
}

pub(super) fn run(
    repo_dir: &std::path::Path,
    allowed_signers: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
    from: Option<&str>,
    to: &str,
    clean_merges: bool,
    format: OutputFormat,
) -> Result<u8, Failure> {
    let config = config.map(load_config).transpose()?;
    let signers_path = allowed_signers
        .map(std::path::Path::to_path_buf)
        .or_else(|| config.as_ref().map(|c| c.trust.allowed_signers.clone()))
        .ok_or_else(|| usage(anyhow::anyhow!("give --allowed-signers FILE or -c CONFIG")))?;
    let signers = AllowedSigners::load(&signers_path).map_err(usage)?;
    let owners = match &config {
        Some(c) => Owners::new(&c.trust.owners).map_err(|e| usage(anyhow::anyhow!(e)))?,
        None => Owners::none(),
    };
    let repo = git2::Repository::discover(repo_dir).map_err(|e| {
        usage(anyhow::anyhow!(
            "{}: not a git repository: {}",
            repo_dir.display(),
            e.message()
        ))
    })?;
    let head = resolve_commit(&repo, to)?;
    let start = match from {
        Some(rev) => Start::Watermark(resolve_commit(&repo, rev)?),
        None => Start::Root,
    };
    let policy = Policy {
        signers: &signers,
        mode: crate::config::CommitPolicy::Every,
        clean_merges: clean_merges || config.as_ref().is_some_and(|c| c.trust.clean_merges),
        owners: &owners,
    };
    let now = chrono::Utc::now();
    let (commits, refused) = match verify_range(&repo, start, head, &policy, |_| now) {
        Ok(report) => (commit_lines(&report), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let report = VerifyReport {
        from: from.map(str::to_string),
        to: head.to_string(),
        ok: refused.is_none() && commits.iter().all(|c| c.ok),
        refused,
        commits,
    };
    match format {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Text => output::print_verify(&report.commits, report.refused.as_deref()),
    }
    Ok(if report.ok { EXIT_OK } else { EXIT_FINDINGS })
}
