//! What `plan` and `status` read before they report: config, verified head, records, cluster.

use serde::Serialize;
use tracing::{Instrument, info, instrument, warn};

use super::verify::{CommitLine, commit_lines};
use super::{Failure, load_config, usage};
use crate::config::Config;
use crate::flink::{ClusterOverview, FlinkClient, JobOverview};
use crate::git::GitSource;
use crate::revision::{RevisionError, TrustMaterial, VerifiedRevision, verify_revision};
use crate::spec::{PreparedMemo, SpecError, SpecMemo};
use crate::state::{JobRecord, StateStore};
use crate::trust::commits::Start;

/// Why the branch head is not used; the cluster keeps the last verified state.
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// `signature`, `rollback`, `teleport`, `spec`, `artifact`...
    pub kind: &'static str,
    /// The reason, naming the commit or file.
    pub message: String,
    /// Per-commit verdicts when a commit was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commits: Vec<CommitLine>,
    /// Spec problems when the specs were refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spec_errors: Vec<SpecError>,
}

impl From<RevisionError> for Refusal {
    fn from(error: RevisionError) -> Refusal {
        let kind = error.kind();
        let message = error.to_string();
        match error {
            RevisionError::Commit { report, .. } => Refusal {
                kind,
                message,
                commits: commit_lines(&report),
                spec_errors: Vec::new(),
            },
            RevisionError::Specs(errors) => Refusal {
                kind,
                message: "the specs at this revision are invalid; nothing would be applied".into(),
                commits: Vec::new(),
                spec_errors: errors,
            },
            _ => Refusal {
                kind,
                message,
                commits: Vec::new(),
                spec_errors: Vec::new(),
            },
        }
    }
}

/// Everything a reporting command needs, read once.
pub(super) struct Snapshot {
    pub(super) config: Config,
    pub(super) head: String,
    pub(super) watermark: Option<String>,
    pub(super) revision: Result<VerifiedRevision, Refusal>,
    /// Without the recorded deployment, except where a plan reads it
    /// ([`crate::plan::plan_reads_deployment`]).
    pub(super) records: Vec<JobRecord>,
    pub(super) cluster: Result<(ClusterOverview, Vec<JobOverview>), String>,
    /// The cluster's `parallelism.default` (the slots of a job without `parallelism`).
    pub(super) default_parallelism: Option<u32>,
    /// What the reading used and the report does not: given back with the snapshot, after the
    /// report, not before it (the mirror's packs unmapped, 1,000 spec memo entries freed).
    _held: Held,
}

/// The mirror, the spec memo and the state connections a snapshot was read with.
struct Held {
    _source: GitSource,
    _memo: SpecMemo,
    _stores: [Option<StateStore>; 2],
}

/// Reads the first-seen time of a commit from the state DB, or now for a commit never seen (or
/// without a state DB).
fn first_seen_in(
    store: Option<&StateStore>,
) -> impl FnMut(git2::Oid) -> chrono::DateTime<chrono::Utc> + '_ {
    let now = chrono::Utc::now();
    move |oid| {
        store
            .and_then(|s| s.revision(&oid.to_string()).ok().flatten())
            .and_then(|r| chrono::DateTime::parse_from_rfc3339(&r.first_seen_at).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now)
    }
}

#[instrument(skip_all, fields(config = %config_path.display()))]
pub(super) async fn snapshot(
    config_path: &std::path::Path,
    fetch: bool,
) -> Result<Snapshot, Failure> {
    let config = load_config(config_path)?;
    let trust = TrustMaterial::load(&config).map_err(usage)?;
    // The cluster is asked on the runtime's worker while this thread reads the repository and the
    // database, and finds the answers waiting: handed from another thread, the reading's result
    // waited for a wake-up on `plan`'s critical path (0.5 ms over 1,000 jobs).
    let flink = config.flink.clone();
    let asking = tokio::spawn(
        async move {
            let client = FlinkClient::from_config(&flink)?;
            Ok::<_, crate::flink::FlinkError>(tokio::join!(
                async {
                    tokio::try_join!(client.overview(), client.jobs()).map_err(|e| {
                        warn!(error = %e, "cannot read the cluster");
                        e.to_string()
                    })
                },
                client.default_parallelism()
            ))
        }
        .instrument(tracing::Span::current()),
    );
    let local = tokio::task::block_in_place(|| -> Result<_, Failure> {
        // Set once the specs are loaded: the state thread's parsing ahead stops.
        let loaded = std::sync::atomic::AtomicBool::new(false);
        let loaded = &loaded;
        std::thread::scope(|scope| {
            // The watermark (which the verification starts from), the spec memo, then the records
            // are read on a second core while git fetches and the specs load.
            let (watermark_sender, watermark_receiver) = std::sync::mpsc::sync_channel(1);
            let (memo_sender, memo_receiver) = std::sync::mpsc::channel();
            let state_dir = &config.state.dir;
            let stored = scope.spawn(move || -> Result<_, Failure> {
                let Some(store) = StateStore::open_read_only(state_dir)? else {
                    let _ = watermark_sender.send(None);
                    return Ok((None, Vec::new()));
                };
                let _ = watermark_sender.send(store.meta("watermark")?);
                // Sent unparsed, part by part as read: the load recalls the first specs while the
                // rest are read, and parses each spec as it recalls it while this thread reads the
                // records. Parsed here first, the load waited for the parse and then for the
                // records (plan over 1,000 specs, 20 pairs: wall 5 %, CPU 7 % more).
                let mut parts = Vec::new();
                store.spec_memo_in_parts(|entries| {
                    let part = PreparedMemo::new(entries);
                    let _ = memo_sender.send(part.clone());
                    parts.push(part);
                });
                drop(memo_sender);
                let records = store.jobs_without_deployments()?;
                // Then this core parses from the other end until the load is done.
                for part in parts.iter().rev() {
                    part.parse_ahead(loaded);
                }
                Ok((Some(store), records))
            });
            let join_reader = |reader: std::thread::ScopedJoinHandle<'_, Result<_, Failure>>| {
                reader
                    .join()
                    .map_err(|_| anyhow::anyhow!("reading the state database panicked"))?
            };
            let source = GitSource::open(&config.state.dir.join("repo.git"), &config.repo)?;
            let head = match (fetch, source.head()?) {
                (false, Some(head)) => head,
                // A report reads a local repository where it is: copying its new objects into the
                // mirror is the fetch's work, which `apply` does.
                _ => match source.read_local_in_place()? {
                    Some(head) => head,
                    None => source.fetch()?,
                },
            };
            let kept = crate::state::kept_watermark(&config.state.dir)?;
            let start_from = |recorded: Option<&str>| {
                crate::revision::verification_start(
                    source.repo(),
                    &config,
                    recorded,
                    kept.as_deref(),
                )
                .map_err(|e| usage(anyhow::anyhow!(e)))
            };
            // Waited for part by part when the specs load, after the commits are verified. The
            // parts end when the reader is done with the memo, or failed (it says why when joined).
            let memo = SpecMemo::in_parts(move || memo_receiver.recv().ok());
            // When a commit was first seen changes a verdict only for a key valid for a time: the
            // state database is asked only then (its own connection: the reader's is busy).
            let seen = if trust.signers.any_time_bound() {
                StateStore::open_read_only(&config.state.dir)?
            } else {
                None
            };
            let verify = |start| {
                verify_revision(
                    source.repo(),
                    &config,
                    &trust,
                    start,
                    head,
                    first_seen_in(seen.as_ref()),
                    &memo,
                )
                .map_err(Refusal::from)
            };
            // The database's watermark is the kept one unless a crash or a restored backup came
            // between them: the commits are verified from the kept one while the reader opens the
            // database (waiting for it was 1.5 ms of `plan`'s critical path), and verified again
            // from the start both give when the database says otherwise.
            let guessed = kept
                .as_deref()
                .and_then(|kept| start_from(Some(kept)).ok())
                .map(|start| (start, verify(start)));
            let Ok(recorded) = watermark_receiver.recv() else {
                // The reader failed before it read the watermark, and says why.
                join_reader(stored)?;
                return Err(anyhow::anyhow!("the state database reader stopped").into());
            };
            let (start, revision) = match guessed {
                Some(guessed) if recorded == kept => guessed,
                _ => {
                    let start = start_from(recorded.as_deref())?;
                    (start, verify(start))
                }
            };
            let watermark = match start {
                Start::Watermark(w) | Start::Kept(w) => Some(w.to_string()),
                _ => None,
            };
            loaded.store(true, std::sync::atomic::Ordering::Relaxed);
            let (store, mut records) = join_reader(stored)?;
            if let Some(store) = &store {
                let desired = revision.as_ref().ok().map(VerifiedRevision::desired);
                store.fill_deployments(&mut records, |record| {
                    crate::plan::plan_reads_deployment(record, desired)
                })?;
            }
            let held = Held {
                _source: source,
                _memo: memo,
                _stores: [store, seen],
            };
            Ok((head.to_string(), watermark, revision, records, held))
        })
    });
    let (cluster, default_parallelism) = asking.await.map_err(anyhow::Error::from)??;
    let (head, watermark, revision, records, held) = local?;
    match &revision {
        Ok(r) => info!(revision = %head, new_commits = r.commits().len(), "verified"),
        Err(refusal) => {
            warn!(revision = %head, kind = refusal.kind, reason = %refusal.message, "head refused")
        }
    }

    Ok(Snapshot {
        config,
        head,
        watermark,
        revision,
        records,
        cluster,
        default_parallelism: default_parallelism.ok(),
        _held: held,
    })
}
