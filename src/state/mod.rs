//! SQLite state: what was applied, per job and per revision, and the append-only audit log.

mod migrations;
mod rollbacks;
pub(crate) mod runs;
mod spec_memo;
mod watermark;

pub use rollbacks::{RevisionChange, RevisionRollback};
pub use runs::{RunRecord, RunStatus, ScheduleCursor};
pub use spec_memo::spec_memo_beside;
pub use watermark::{WATERMARK_FILE, kept_watermark};

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::util::now_rfc3339;

/// Why the state store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another agent holds the state directory.
    #[error(
        "state directory {dir} is in use by another flink-gitops process{}; two agents must never manage the same state (stop the other one, or give this one its own state.dir)",
        holder.as_deref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: Option<String>,
    },
    /// The directory or lock file could not be created.
    #[error("state directory {dir}: {source}")]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("state database {path}: {operation}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer agent.
    #[error(
        "state database {path} has schema version {found}, newer than this agent understands ({supported}); upgrade flink-gitops"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this binary knows.
        supported: i64,
    },
    /// The database file was deleted or replaced after the store opened it: every write since goes
    /// to a file nobody will read again, and the watermark in it is lost at the next start.
    #[error(
        "state database {path} was {what} while the agent had it open; its writes would be lost, so the agent stops (restart it to continue from the file that is there now; the watermark kept in the file `watermark` beside it still guards against rollback)"
    )]
    Lost {
        /// The database file.
        path: PathBuf,
        /// Deleted, replaced by another file, or unreadable.
        what: String,
    },
    /// The watermark kept beside the database could not be read or written.
    #[error("watermark file {path}: {problem}")]
    KeptWatermark {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A read-only open found a database that needs migrating first.
    #[error(
        "state database {path} has schema version {found} and needs migration to {supported}; run `flink-gitops apply` once to migrate it"
    )]
    NeedsMigration {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The version this binary writes.
        supported: i64,
    },
}

/// What the agent recorded about one job it manages: always the last *good* deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// The spec's `job_id`.
    pub job_id: String,
    /// Canonical JSON of the applied spec (see `DesiredJob::canonical_json`); empty for a job
    /// adopted from the cluster whose spec the agent never recorded, and where a listing left it
    /// out ([`Self::spec_json_left_out`]).
    pub spec_json: String,
    /// SHA-256 of `spec_json`; for an adopted job whose spec was not recorded, the hash its
    /// Flink tags name.
    pub spec_hash: String,
    /// A listing for reports left `spec_json` out ([`StateStore::jobs_without_deployments`]):
    /// the row records a spec, named by `spec_hash`.
    #[serde(skip)]
    pub spec_json_left_out: bool,
    /// The commit the applied spec came from.
    pub commit_id: String,
    /// Flink job id of the current (or last) instance.
    pub flink_job_id: Option<String>,
    /// Submission counter; part of the next Flink job id.
    pub generation: i64,
    /// Uploaded JAR id.
    pub jar_id: Option<String>,
    /// SHA-256 of the uploaded JAR.
    pub jar_sha256: Option<String>,
    /// The newest savepoint (or retained checkpoint) known to hold this job's state.
    pub last_savepoint: Option<String>,
    /// `running`, `suspended`, `deleted` or `failed`.
    pub status: String,
    /// When this record last changed.
    pub updated_at: String,
    /// How to redeploy this spec (JSON of `reconcile::Deployment`).
    pub deployment_json: Option<String>,
    /// A deployment in flight from before the lifecycle phases (JSON of `reconcile::Pending`);
    /// read once and turned into a phase.
    pub pending_json: Option<String>,
    /// The lifecycle phase's name (`steady`, `stopping`, `stopped`, `submitted`, `verifying`, `blocked`).
    pub phase: String,
    /// The whole phase (JSON of `reconcile::lifecycle::Phase`); `None` when steady.
    pub phase_json: Option<String>,
    /// Consecutive failed tries of the job's current work (the backoff exponent).
    pub failures: i64,
    /// Of those, the ones that will fail again the same way; at `reconcile.max_failures` the job is blocked.
    pub permanent_failures: i64,
    /// Not tried again before this time (epoch ms).
    pub retry_at_ms: Option<i64>,
    /// The newest failure, for `status` and `plan`.
    pub last_error: Option<String>,
    /// A spec hash that failed and was rolled back (or blocked): not tried again until the spec changes.
    pub rejected_spec_hash: Option<String>,
}

/// An event still to be delivered to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The outbox id (the event id receivers see).
    pub event_id: i64,
    /// The target's name.
    pub target: String,
    /// Tries so far.
    pub attempts: u32,
    /// The event as JSON.
    pub body: String,
}

/// An event to put in the outbox, for the targets that want it.
#[derive(Debug, Clone, Copy)]
pub struct QueuedEvent<'a> {
    /// Its kind.
    pub event: &'a str,
    /// The job, for job events.
    pub job_id: Option<&'a str>,
    /// The event as JSON.
    pub body: &'a str,
    /// Who gets it; none queues nothing.
    pub targets: &'a [&'a str],
}

/// What noting a condition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionChange {
    /// Nothing new.
    Unchanged,
    /// It holds, not long enough yet.
    Pending,
    /// Its alert was queued.
    Raised,
    /// It cleared after its alert; the "resolved" was queued.
    Resolved,
}

fn enqueue_in(
    connection: &Connection,
    path: &Path,
    event: &QueuedEvent<'_>,
    dedupe_key: &str,
) -> Result<bool, StateError> {
    if event.targets.is_empty() {
        return Ok(false);
    }
    let inserted = connection
        .execute(
            "INSERT OR IGNORE INTO outbox (at, event, job_id, dedupe_key, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_rfc3339(), event.event, event.job_id, dedupe_key, event.body],
        )
        .map_err(sqlite(path, "queue an event"))?;
    if inserted == 1 {
        let id = connection.last_insert_rowid();
        for target in event.targets {
            connection
                .execute(
                    "INSERT INTO deliveries (event_id, target, next_at_ms) VALUES (?1, ?2, 0)",
                    params![id, target],
                )
                .map_err(sqlite(path, "queue an event"))?;
        }
    }
    Ok(inserted == 1)
}

/// An operation on a job that ended well, as the audit log has it: what alerts are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedOperation {
    /// The outcome's audit row, which keys its event.
    pub audit_id: i64,
    /// The revision being applied.
    pub commit_id: Option<String>,
    /// The job.
    pub job_id: Option<String>,
    /// `create`, `upgrade`, `rollback`...
    pub action: String,
    /// The outcome's detail (JSON).
    pub detail: Option<String>,
    /// The intent's detail (JSON): why a rollback happened.
    pub intent_detail: Option<String>,
}

/// A savepoint the agent knows of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SavepointTaken {
    /// The job.
    pub job_id: String,
    /// Where it is.
    pub path: String,
    /// `periodic`, `manual`, or empty for the stop savepoints of upgrades, suspends and deletes.
    pub kind: String,
    /// The revision whose spec the job ran, when recorded.
    pub commit_id: String,
    /// When it was taken (epoch ms).
    pub taken_at_ms: i64,
}

impl JobRecord {
    /// Whether the applied spec is `job`'s: compared by hash, so a listing need not read the
    /// spec's JSON. A job adopted without a recorded spec runs none the agent can redeploy, so it
    /// is never in sync (its hash is its tag's).
    pub fn applied_spec_is(&self, job: &crate::spec::DesiredJob) -> bool {
        (self.spec_json_left_out || !self.spec_json.is_empty())
            && job.has_spec_hash(&self.spec_hash)
    }

    /// What the last deployment runs: `jar` unless it recorded a SQL or Python program.
    pub fn job_kind(&self) -> crate::spec::JobKind {
        #[derive(serde::Deserialize)]
        struct KindOnly {
            kind: Option<crate::spec::JobKind>,
        }
        self.deployment_json
            .as_deref()
            .and_then(|json| serde_json::from_str::<KindOnly>(json).ok())
            .and_then(|d| d.kind)
            .unwrap_or(crate::spec::JobKind::Jar)
    }

    /// The lifecycle phase's name; a record built in memory without one is `steady`.
    pub fn phase_name(&self) -> &str {
        if self.phase.is_empty() {
            "steady"
        } else {
            &self.phase
        }
    }
}

/// A savepoint or retained checkpoint the agent knows of for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePoint {
    /// The job.
    pub job_id: String,
    /// The path, as Flink gave it.
    pub path: String,
    /// A savepoint rather than a checkpoint.
    pub savepoint: bool,
    /// The instance it belongs to.
    pub flink_job_id: Option<String>,
    /// When it was taken, epoch ms.
    pub taken_at_ms: i64,
    /// Why it cannot be restored (Flink said it does not exist, or discarded it).
    pub unusable: Option<String>,
}

/// An operator's request, queued for the agent's next pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Sequence number.
    pub id: i64,
    /// When it was queued.
    pub at: String,
    /// The job.
    pub job_id: String,
    /// `retry` or `retry-start-empty`.
    pub kind: String,
    /// Who asked (the user running the command).
    pub by: String,
}

/// A JAR the agent uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JarRecord {
    /// Its sha256.
    pub sha256: String,
    /// Flink's JAR id.
    pub jar_id: String,
}

/// What the agent recorded about one revision of the spec repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionRecord {
    /// The commit id.
    pub commit_id: String,
    /// When the agent first saw it (its clock, never the committer date).
    pub first_seen_at: String,
    /// When its signatures were verified.
    pub verified_at: Option<String>,
    /// The principal that signed it.
    pub signer: Option<String>,
    /// When it was fully applied.
    pub applied_at: Option<String>,
    /// `applied`, `failed`, `refused`...
    pub outcome: Option<String>,
    /// Details of the outcome.
    pub detail: Option<String>,
}

/// What an audit log entry is about. Stored as its name; the names are the audit log's
/// vocabulary (`history` and auditors read them), so a variant is never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    /// An operation began (its outcome is written when it ends): first deployment.
    Create,
    /// An operation began: a new spec replaces the running one.
    Upgrade,
    /// An operation began: the recorded spec is started again (drift, a forgotten job).
    Restart,
    /// An operation began: back from suspension.
    Resume,
    /// An operation began: the last good spec after a failed submission.
    Rollback,
    /// An operation began: stop with a savepoint and keep it.
    Suspend,
    /// An operation began: the spec was removed.
    Delete,
    /// A failed submission is stopped and the job blocked.
    Discard,
    /// Stop-with-savepoint.
    Stop,
    /// Cancel.
    Cancel,
    /// A JAR run request.
    Submit,
    /// A JAR upload.
    Upload,
    /// An `artifact_url` download.
    Download,
    /// The health gate of a submission.
    Health,
    /// A healthy submission becomes the last good deployment.
    Promote,
    /// The state the next instance starts from.
    ChooseState,
    /// The job is blocked until its spec changes or `retry`.
    Blocked,
    /// An operator asked to try a job again.
    Retry,
    /// A running job of ours was taken over after the state database was lost.
    Adopt,
    /// A savepoint of a job that runs on (periodic or manual).
    Savepoint,
    /// A savepoint disposed of by retention.
    Dispose,
    /// Fields the running job does not use were recorded without a restart.
    Update,
    /// A revert brought back a spec that ran before.
    RollbackByRevert,
    /// An unused JAR was deleted from the cluster.
    DeleteJar,
    /// A batch run was submitted.
    BatchRun,
    /// A batch job's spec revision was recorded.
    Schedule,
    /// An operator accepted a head that does not descend from the watermark
    /// (`apply --accept-rollback-to`).
    AcceptRollback,
    /// Every job a failed revision changed goes back to its previous spec (`rollback: revision`).
    RevisionRollback,
    /// A revision needed more task slots than the cluster could give its jobs (refused, or
    /// applied with a warning under `reconcile.slot_budget: warn`).
    SlotBudget,
}

impl AuditAction {
    /// The name stored in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Upgrade => "upgrade",
            AuditAction::Restart => "restart",
            AuditAction::Resume => "resume",
            AuditAction::Rollback => "rollback",
            AuditAction::Suspend => "suspend",
            AuditAction::Delete => "delete",
            AuditAction::Discard => "discard",
            AuditAction::Stop => "stop",
            AuditAction::Cancel => "cancel",
            AuditAction::Submit => "submit",
            AuditAction::Upload => "upload",
            AuditAction::Download => "download",
            AuditAction::Health => "health",
            AuditAction::Promote => "promote",
            AuditAction::ChooseState => "choose-state",
            AuditAction::Blocked => "blocked",
            AuditAction::Retry => "retry",
            AuditAction::Adopt => "adopt",
            AuditAction::Update => "update",
            AuditAction::Savepoint => "savepoint",
            AuditAction::Dispose => "dispose",
            AuditAction::RollbackByRevert => "rollback-by-revert",
            AuditAction::DeleteJar => "delete-jar",
            AuditAction::BatchRun => "batch-run",
            AuditAction::Schedule => "schedule",
            AuditAction::AcceptRollback => "accept-rollback",
            AuditAction::RevisionRollback => "revision-rollback",
            AuditAction::SlotBudget => "slot-budget",
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// When it was written.
    pub at: String,
    /// The revision being applied.
    pub commit_id: Option<String>,
    /// The job concerned.
    pub job_id: Option<String>,
    /// `deploy`, `upgrade`, `savepoint`, `cancel`...
    pub action: String,
    /// `intent` before the attempt, `outcome` after.
    pub phase: String,
    /// For an outcome, the id of its intent.
    pub intent_id: Option<i64>,
    /// For an outcome: `ok`, `failed`, `abandoned`.
    pub result: Option<String>,
    /// Free-form detail (JSON or text).
    pub detail: Option<String>,
}

/// The database file as the store opened it (device and inode), to notice when the path later
/// names another file or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DbIdentity {
    fn of(path: &Path) -> Result<DbIdentity, StateError> {
        let metadata = std::fs::metadata(path).map_err(|source| StateError::Io {
            dir: path.to_path_buf(),
            source,
        })?;
        Ok(DbIdentity {
            path: path.to_path_buf(),
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok` while the path still names the file that was opened; one `stat`, cheap enough for
    /// every loop iteration and every `/readyz`.
    pub fn check(&self) -> Result<(), StateError> {
        let lost = |what: String| StateError::Lost {
            path: self.path.clone(),
            what,
        };
        match std::fs::metadata(&self.path) {
            Ok(now) if now.dev() == self.dev && now.ino() == self.ino => Ok(()),
            Ok(now) => Err(lost(format!(
                "replaced by another file (device {} inode {} at open, now device {} inode {})",
                self.dev,
                self.ino,
                now.dev(),
                now.ino()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(lost("deleted".into())),
            // Unreadable is as bad as gone: nothing proves the writes still reach that path.
            Err(e) => Err(lost(format!("no longer checkable ({e})"))),
        }
    }
}

/// How long an exclusive open waits for a lock that names this process ([`StateStore::open_exclusive`]).
const OWN_LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// The state database, opened either exclusively (the one agent that acts) or read-only.
pub struct StateStore {
    connection: Connection,
    path: PathBuf,
    identity: DbIdentity,
    // Holding the files keeps the advisory locks for the store's lifetime: the lock file (which
    // names the holder) and the state directory itself, which cannot be unlinked from under us.
    _lock: Option<(File, File)>,
}

/// The columns [`job_from_row`] reads, in its order, from `jobs` joined with `job_documents`:
/// `$spec` stands for the spec JSON (NULL: left out), `$deployment`, `$pending` and `$phase` for
/// the documents.
macro_rules! job_columns {
    ($spec:literal, $deployment:literal, $pending:literal, $phase:literal) => {
        concat!(
            "job_id, ",
            $spec,
            ", spec_hash, commit_id, flink_job_id, generation, jar_id, jar_sha256, ",
            "last_savepoint, status, updated_at, ",
            $deployment,
            ", ",
            $pending,
            ", phase, ",
            $phase,
            ", failures, permanent_failures, retry_at_ms, last_error, rejected_spec_hash"
        )
    };
}

/// A job's row with all of its documents.
macro_rules! whole_jobs {
    ($rest:literal) => {
        concat!(
            "SELECT ",
            job_columns!(
                "spec_json",
                "job_documents.deployment_json",
                "job_documents.pending_json",
                "job_documents.phase_json"
            ),
            " FROM jobs LEFT JOIN job_documents USING (job_id) ",
            $rest
        )
    };
}

impl StateStore {
    /// Opens (creating and migrating) `dir/state.db`, refusing if another agent holds `dir`.
    pub fn open_exclusive(dir: &Path) -> Result<StateStore, StateError> {
        // A child process this process starts holds copies of its descriptors, the lock's among
        // them, until it runs its program: a store this process just closed can look held by
        // this process for that moment (seen in one of twelve runs of tests/faults.rs, four tests
        // at a time, each starting git).
        let own = format!("pid {} ", std::process::id());
        let started = std::time::Instant::now();
        let (lock, dir_lock) = loop {
            match StateStore::lock_dir(dir) {
                Err(StateError::Locked {
                    holder: Some(holder),
                    ..
                }) if holder.starts_with(&own) && started.elapsed() < OWN_LOCK_GRACE => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                locked => break locked?,
            }
        };
        let path = dir.join("state.db");
        let mut connection = Connection::open(&path).map_err(sqlite(&path, "open"))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            )
            .map_err(sqlite(&path, "configure"))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite(&path, "configure"))?;
        migrations::migrate(&mut connection, &path)?;
        let identity = DbIdentity::of(&path)?;
        Ok(StateStore {
            connection,
            path,
            identity,
            _lock: Some((lock, dir_lock)),
        })
    }

    /// Takes `dir`'s locks (the directory's and its `lock` file's) and writes this process into
    /// the file; refused with the holder the file names when another holds them.
    fn lock_dir(dir: &Path) -> Result<(File, File), StateError> {
        let io = |source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // The directory is the lock that counts: deleting the `lock` file (a clean-up script, a
        // person) must not let a second agent in, and a non-empty directory cannot be unlinked.
        let dir_lock = File::open(dir).map_err(io)?;
        let dir_locked = match dir_lock.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        };
        let lock_path = dir.join("lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) if dir_locked => {}
            Ok(()) | Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StateError::Locked {
                    dir: dir.to_path_buf(),
                    holder: (!holder.is_empty()).then(|| holder.to_string()),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "pid {} since {}", std::process::id(), now_rfc3339()).map_err(io)?;
        Ok((lock, dir_lock))
    }

    /// Opens `dir/state.db` read-only for reporting (`plan`, `status`), even while an agent runs.
    ///
    /// Returns `None` when no agent has written state there yet.
    pub fn open_read_only(dir: &Path) -> Result<Option<StateStore>, StateError> {
        let path = dir.join("state.db");
        if !path.exists() {
            return Ok(None);
        }
        // One thread uses a connection at a time (`Connection` is not `Sync`), so SQLite need not
        // lock it for every call, as rusqlite's own default flags say too.
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite(&path, "open read-only"))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite(&path, "configure"))?;
        let found: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite(&path, "read schema version"))?;
        let supported = migrations::LATEST;
        if found == 0 {
            // Created but not yet migrated (an agent is starting): nothing has been recorded.
            return Ok(None);
        }
        if found > supported {
            return Err(StateError::TooNew {
                path,
                found,
                supported,
            });
        }
        if found < supported {
            return Err(StateError::NeedsMigration {
                path,
                found,
                supported,
            });
        }
        // A reader reads each page once: SQLite's default 2 MiB page cache only took fresh memory
        // (`plan` over 1,000 jobs: peak RSS 30.1 MiB, 28.2 MiB with this).
        connection
            .pragma_update(None, "cache_size", -256i64)
            .map_err(sqlite(&path, "configure"))?;
        let identity = DbIdentity::of(&path)?;
        Ok(Some(StateStore {
            connection,
            path,
            identity,
            _lock: None,
        }))
    }

    /// Opens `dir/state.db` to queue an operator request while an agent may hold the directory:
    /// writable, but without the agent's lock and without migrating (the agent owns the schema).
    pub fn open_for_requests(dir: &Path) -> Result<Option<StateStore>, StateError> {
        let Some(reader) = StateStore::open_read_only(dir)? else {
            return Ok(None);
        };
        let path = reader.path.clone();
        drop(reader);
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite(&path, "open for a request"))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite(&path, "configure"))?;
        let identity = DbIdentity::of(&path)?;
        Ok(Some(StateStore {
            connection,
            path,
            identity,
            _lock: None,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file as it was opened.
    pub fn identity(&self) -> &DbIdentity {
        &self.identity
    }

    /// `Err(Lost)` when the database file was deleted or replaced since it was opened.
    pub fn check_identity(&self) -> Result<(), StateError> {
        self.identity.check()
    }

    /// Records the anti-rollback watermark: in the database and in the file kept beside it, which
    /// survives the database's loss (see [`kept_watermark`]).
    ///
    /// Each copy is written only when it holds something else: every pass with an unchanged head
    /// sets the watermark, and rewriting it cost a transaction and the file's three syncs.
    pub fn set_watermark(&self, commit: &str) -> Result<(), StateError> {
        if self.meta("watermark")?.as_deref() != Some(commit) {
            self.set_meta("watermark", commit)?;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // An unreadable copy is replaced, as it always was.
        if kept_watermark(dir).ok().flatten().as_deref() != Some(commit) {
            watermark::keep(dir, commit)?;
        }
        Ok(())
    }

    /// Every job record, ordered by job id.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        self.list_jobs(whole_jobs!(""))
    }

    /// The jobs `query` selects, ordered by job id.
    fn list_jobs(&self, query: &str) -> Result<Vec<JobRecord>, StateError> {
        let mut statement = self
            .connection
            .prepare(query)
            .map_err(sqlite(&self.path, "list jobs"))?;
        let rows = statement
            .query_map([], job_from_row)
            .map_err(sqlite(&self.path, "list jobs"))?;
        let mut records: Vec<JobRecord> = rows
            .collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "list jobs"))?;
        // Sorted here, not by SQLite: `ORDER BY job_id` walks the job id index and looks each row
        // up in the table from its root, where a scan reads the table's pages in order (`plan`
        // over 1,000 jobs: 1,000 lookups). Byte order, as SQLite's `BINARY` collation.
        records.sort_unstable_by(|a, b| a.job_id.cmp(&b.job_id));
        Ok(records)
    }

    /// Every job record as [`StateStore::jobs`] reads it, but without its recorded deployment
    /// (`deployment_json` is `None`) and its applied spec's JSON ([`JobRecord::spec_json_left_out`]):
    /// for reports over many jobs, which compare specs by hash and need the spec and deployment of
    /// the few that change, and read those with [`StateStore::fill_deployments`]. The deployment is
    /// about two thirds of a job (`plan` over 1,000 jobs: 1.7 of 2.6 MB) and is not read at all:
    /// it is kept beside the jobs' rows (`job_documents`); the spec JSON is most of the rest.
    pub fn jobs_without_deployments(&self) -> Result<Vec<JobRecord>, StateError> {
        // A change under way is read for the few jobs that make one: the reports decide by it.
        // An adopted job's empty spec JSON is read as it is: it records no spec.
        self.list_jobs(concat!(
            "SELECT ",
            job_columns!(
                "CASE WHEN spec_json = '' THEN '' END",
                "NULL",
                "CASE WHEN has_pending THEN (SELECT pending_json FROM job_documents AS d WHERE d.job_id = jobs.job_id) END",
                "CASE WHEN has_phase_json THEN (SELECT phase_json FROM job_documents AS d WHERE d.job_id = jobs.job_id) END"
            ),
            " FROM jobs"
        ))
    }

    /// Reads again, whole, each record of `records` that `wanted` picks and that has no deployment
    /// read: the row as it is now, so a record changed since it was listed (an agent may run) is
    /// still one row's view, not two. A record whose row is gone is kept as listed.
    pub fn fill_deployments(
        &self,
        records: &mut [JobRecord],
        wanted: impl Fn(&JobRecord) -> bool,
    ) -> Result<(), StateError> {
        let picked: Vec<usize> = (0..records.len())
            .filter(|&at| records[at].deployment_json.is_none() && wanted(&records[at]))
            .collect();
        // A few are looked up one by one; many (a refused revision picks every job) are read in
        // one listing. Looked up one by one, all 1,000 jobs of the benchmark cost 1.4 ms more than
        // one listing (`plan` with a refused head: 16.9 against 15.5 ms), and a listing of whole
        // rows is about 4 ms of CPU: it is the cheaper way from about three in four of them.
        if picked.len() <= (records.len() * 3 / 4).max(16) {
            for at in picked {
                if let Some(whole) = self.job(&records[at].job_id)? {
                    records[at] = whole;
                }
            }
            return Ok(());
        }
        let mut listed = self.jobs()?;
        for at in picked {
            if let Ok(found) = listed.binary_search_by(|w| w.job_id.cmp(&records[at].job_id)) {
                records[at] = std::mem::take(&mut listed[found]);
            }
        }
        Ok(())
    }

    /// One job record.
    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StateError> {
        // Prepared once per connection: the reconciler asks for one job at a time, and
        // `plan` for each job it reads again ([`StateStore::fill_deployments`]).
        self.connection
            .prepare_cached(whole_jobs!("WHERE job_id = ?1"))
            .and_then(|mut statement| statement.query_row([job_id], job_from_row).optional())
            .map_err(sqlite(&self.path, "read job"))
    }

    /// Inserts or replaces a job record: its row and its documents land together.
    pub fn put_job(&self, record: &JobRecord) -> Result<(), StateError> {
        // A savepoint, not a transaction: the caller may be in one already.
        self.connection
            .execute_batch("SAVEPOINT put_job")
            .map_err(sqlite(&self.path, "write job"))?;
        let written = self.write_job_rows(record);
        let ended = match written {
            Ok(()) => self.connection.execute_batch("RELEASE put_job"),
            Err(_) => self
                .connection
                .execute_batch("ROLLBACK TO put_job; RELEASE put_job"),
        };
        written.and(ended).map_err(sqlite(&self.path, "write job"))
    }

    fn write_job_rows(&self, record: &JobRecord) -> rusqlite::Result<()> {
        self.connection
            .prepare_cached(
                "INSERT INTO jobs (job_id, spec_json, spec_hash, commit_id, flink_job_id, generation, jar_id,
                                   jar_sha256, last_savepoint, status, updated_at, has_pending,
                                   phase, has_phase_json, failures, permanent_failures, retry_at_ms, last_error,
                                   rejected_spec_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
                 ON CONFLICT(job_id) DO UPDATE SET spec_json=excluded.spec_json, spec_hash=excluded.spec_hash,
                   commit_id=excluded.commit_id, flink_job_id=excluded.flink_job_id, generation=excluded.generation,
                   jar_id=excluded.jar_id, jar_sha256=excluded.jar_sha256, last_savepoint=excluded.last_savepoint,
                   status=excluded.status, updated_at=excluded.updated_at, has_pending=excluded.has_pending,
                   phase=excluded.phase, has_phase_json=excluded.has_phase_json,
                   failures=excluded.failures, permanent_failures=excluded.permanent_failures,
                   retry_at_ms=excluded.retry_at_ms, last_error=excluded.last_error,
                   rejected_spec_hash=excluded.rejected_spec_hash",
            )?
            .execute(params![
                record.job_id,
                record.spec_json,
                record.spec_hash,
                record.commit_id,
                record.flink_job_id,
                record.generation,
                record.jar_id,
                record.jar_sha256,
                record.last_savepoint,
                record.status,
                now_rfc3339(),
                record.pending_json.is_some(),
                record.phase_name(),
                record.phase_json.is_some(),
                record.failures,
                record.permanent_failures,
                record.retry_at_ms,
                record.last_error,
                record.rejected_spec_hash,
            ])?;
        if record.deployment_json.is_none()
            && record.pending_json.is_none()
            && record.phase_json.is_none()
        {
            self.connection
                .prepare_cached("DELETE FROM job_documents WHERE job_id = ?1")?
                .execute([&record.job_id])?;
        } else {
            self.connection
                .prepare_cached(
                    "INSERT INTO job_documents (job_id, deployment_json, pending_json, phase_json)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(job_id) DO UPDATE SET deployment_json = excluded.deployment_json,
                       pending_json = excluded.pending_json, phase_json = excluded.phase_json",
                )?
                .execute(params![
                    record.job_id,
                    record.deployment_json,
                    record.pending_json,
                    record.phase_json
                ])?;
        }
        Ok(())
    }

    /// Records that a revision was seen, keeping the first-seen time if it was seen before.
    pub fn record_revision_seen(&self, commit_id: &str) -> Result<RevisionRecord, StateError> {
        self.connection
            .execute(
                "INSERT INTO revisions (commit_id, first_seen_at) VALUES (?1, ?2) ON CONFLICT(commit_id) DO NOTHING",
                params![commit_id, now_rfc3339()],
            )
            .map_err(sqlite(&self.path, "record revision"))?;
        self.revision(commit_id)?.ok_or_else(|| StateError::Sqlite {
            path: self.path.clone(),
            operation: "record revision",
            source: rusqlite::Error::QueryReturnedNoRows,
        })
    }

    /// Marks a revision verified, with the principal that signed it.
    pub fn record_revision_verified(
        &self,
        commit_id: &str,
        signer: &str,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "UPDATE revisions SET verified_at = ?2, signer = ?3 WHERE commit_id = ?1",
                params![commit_id, now_rfc3339(), signer],
            )
            .map_err(sqlite(&self.path, "record verification"))?;
        Ok(())
    }

    /// Records the outcome of applying a revision. The same outcome again (every pass with an
    /// unchanged head and nothing failing) writes nothing: `applied_at` stays when the revision
    /// was first applied, and an idle agent does not sync the database every pass.
    pub fn record_revision_outcome(
        &self,
        commit_id: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StateError> {
        let applied_at = (outcome == "applied").then(now_rfc3339);
        self.connection
            .execute(
                "UPDATE revisions SET outcome = ?2, detail = ?3, applied_at = COALESCE(?4, applied_at)
                 WHERE commit_id = ?1 AND (outcome IS NOT ?2 OR detail IS NOT ?3
                                           OR (?4 IS NOT NULL AND applied_at IS NULL))",
                params![commit_id, outcome, detail, applied_at],
            )
            .map_err(sqlite(&self.path, "record revision outcome"))?;
        Ok(())
    }

    /// One revision record.
    pub fn revision(&self, commit_id: &str) -> Result<Option<RevisionRecord>, StateError> {
        self.connection
            .query_row(
                "SELECT commit_id, first_seen_at, verified_at, signer, applied_at, outcome, detail
                 FROM revisions WHERE commit_id = ?1",
                [commit_id],
                |row| {
                    Ok(RevisionRecord {
                        commit_id: row.get(0)?,
                        first_seen_at: row.get(1)?,
                        verified_at: row.get(2)?,
                        signer: row.get(3)?,
                        applied_at: row.get(4)?,
                        outcome: row.get(5)?,
                        detail: row.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(sqlite(&self.path, "read revision"))
    }

    /// A value from the key/value table (watermark and other singletons).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        self.connection
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(sqlite(&self.path, "read meta"))
    }

    /// Sets a value in the key/value table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.connection
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(sqlite(&self.path, "write meta"))?;
        Ok(())
    }

    /// Removes a value from the key/value table.
    pub fn remove_meta(&self, key: &str) -> Result<(), StateError> {
        self.connection
            .execute("DELETE FROM meta WHERE key = ?1", [key])
            .map_err(sqlite(&self.path, "delete meta"))?;
        Ok(())
    }

    /// Writes an intent before an action is attempted; returns its id for the outcome.
    pub fn audit_intent(
        &self,
        commit_id: Option<&str>,
        job_id: Option<&str>,
        action: AuditAction,
        detail: &str,
    ) -> Result<i64, StateError> {
        self.connection
            .execute(
                "INSERT INTO audit_log (at, commit_id, job_id, action, phase, detail) VALUES (?1, ?2, ?3, ?4, 'intent', ?5)",
                params![now_rfc3339(), commit_id, job_id, action.as_str(), detail],
            )
            .map_err(sqlite(&self.path, "write audit intent"))?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Writes the outcome of an intent.
    pub fn audit_outcome(
        &self,
        intent_id: i64,
        result: &str,
        detail: &str,
    ) -> Result<i64, StateError> {
        self.connection
            .execute(
                "INSERT INTO audit_log (at, commit_id, job_id, action, phase, intent_id, result, detail)
                 SELECT ?1, commit_id, job_id, action, 'outcome', id, ?3, ?4 FROM audit_log WHERE id = ?2 AND phase = 'intent'",
                params![now_rfc3339(), intent_id, result, detail],
            )
            .map_err(sqlite(&self.path, "write audit outcome"))?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Intents that have no outcome yet: work interrupted by a crash.
    pub fn open_intents(&self) -> Result<Vec<AuditEntry>, StateError> {
        self.audit_query(
            "SELECT id, at, commit_id, job_id, action, phase, intent_id, result, detail FROM audit_log
             WHERE id IN (SELECT intent_id FROM open_intents) ORDER BY id",
            [],
        )
    }

    /// The whole audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, StateError> {
        self.audit_log_since("")
    }

    /// The audit log from `since` (RFC 3339 UTC, as written) on, oldest first.
    pub fn audit_log_since(&self, since: &str) -> Result<Vec<AuditEntry>, StateError> {
        self.audit_query(
            "SELECT id, at, commit_id, job_id, action, phase, intent_id, result, detail FROM audit_log WHERE at >= ?1 ORDER BY id",
            [since],
        )
    }

    fn audit_query(
        &self,
        sql: &str,
        parameters: impl rusqlite::Params,
    ) -> Result<Vec<AuditEntry>, StateError> {
        let mut statement = self
            .connection
            .prepare(sql)
            .map_err(sqlite(&self.path, "read audit log"))?;
        let rows = statement
            .query_map(parameters, |row| {
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    commit_id: row.get(2)?,
                    job_id: row.get(3)?,
                    action: row.get(4)?,
                    phase: row.get(5)?,
                    intent_id: row.get(6)?,
                    result: row.get(7)?,
                    detail: row.get(8)?,
                })
            })
            .map_err(sqlite(&self.path, "read audit log"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "read audit log"))
    }

    /// The JAR uploaded for a digest, if any.
    pub fn jar(&self, sha256: &str) -> Result<Option<JarRecord>, StateError> {
        self.connection
            .query_row(
                "SELECT sha256, jar_id FROM jars WHERE sha256 = ?1",
                [sha256],
                |row| {
                    Ok(JarRecord {
                        sha256: row.get(0)?,
                        jar_id: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(sqlite(&self.path, "read jar"))
    }

    /// Every JAR the agent uploaded.
    pub fn jars(&self) -> Result<Vec<JarRecord>, StateError> {
        self.select_jars("SELECT sha256, jar_id FROM jars ORDER BY sha256")
    }

    /// The uploaded JARs that no running, suspended or failed job holds: the only ones that can be
    /// unused, so the full check of job phases and batch runs is needed only for these.
    pub fn jars_not_held_by_a_settled_job(&self) -> Result<Vec<JarRecord>, StateError> {
        self.select_jars(
            "SELECT sha256, jar_id FROM jars WHERE sha256 NOT IN (
                 SELECT jar_sha256 FROM jobs
                 WHERE status IN ('running', 'suspended', 'failed') AND jar_sha256 IS NOT NULL)
             ORDER BY sha256",
        )
    }

    fn select_jars(&self, query: &str) -> Result<Vec<JarRecord>, StateError> {
        let mut statement = self
            .connection
            .prepare(query)
            .map_err(sqlite(&self.path, "list jars"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(JarRecord {
                    sha256: row.get(0)?,
                    jar_id: row.get(1)?,
                })
            })
            .map_err(sqlite(&self.path, "list jars"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "list jars"))
    }

    /// Frees SQLite's page cache (it is read again on the next pass).
    pub fn release_cached_pages(&self) -> Result<(), StateError> {
        self.connection
            .release_memory()
            .map_err(sqlite(&self.path, "release the page cache"))
    }

    /// The soonest time after `after_ms` at which a job backing off is tried again.
    pub fn next_retry_at_ms(&self, after_ms: i64) -> Result<Option<i64>, StateError> {
        self.connection
            .query_row(
                "SELECT MIN(retry_at_ms) FROM jobs WHERE retry_at_ms > ?1",
                params![after_ms],
                |row| row.get(0),
            )
            .map_err(sqlite(&self.path, "read retry times"))
    }

    /// Remembers an uploaded JAR (replacing an older upload of the same digest).
    pub fn put_jar(&self, sha256: &str, jar_id: &str) -> Result<(), StateError> {
        self.connection
            .execute(
                "INSERT INTO jars (sha256, jar_id, uploaded_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(sha256) DO UPDATE SET jar_id = excluded.jar_id, uploaded_at = excluded.uploaded_at",
                params![sha256, jar_id, now_rfc3339()],
            )
            .map_err(sqlite(&self.path, "write jar"))?;
        Ok(())
    }

    /// Forgets an uploaded JAR.
    pub fn remove_jar(&self, sha256: &str) -> Result<(), StateError> {
        self.connection
            .execute("DELETE FROM jars WHERE sha256 = ?1", [sha256])
            .map_err(sqlite(&self.path, "delete jar"))?;
        Ok(())
    }

    /// Runs `f` in one immediate transaction: all of its writes land, or none.
    pub fn atomically<T>(
        &self,
        f: impl FnOnce(&StateStore) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sqlite(&self.path, "begin transaction"))?;
        match f(self) {
            Ok(value) => {
                self.connection
                    .execute_batch("COMMIT")
                    .map_err(sqlite(&self.path, "commit transaction"))?;
                Ok(value)
            }
            Err(error) => {
                let _ = self.connection.execute_batch("ROLLBACK");
                Err(error)
            }
        }
    }

    /// Records a savepoint or checkpoint of a job (kept as it was if already known).
    pub fn put_restore_point(
        &self,
        job_id: &str,
        path: &str,
        savepoint: bool,
        flink_job_id: Option<&str>,
        taken_at_ms: i64,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "INSERT INTO restore_points (job_id, path, savepoint, flink_job_id, taken_at_ms, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(job_id, path) DO NOTHING",
                params![job_id, path, savepoint, flink_job_id, taken_at_ms, now_rfc3339()],
            )
            .map_err(sqlite(&self.path, "record restore point"))?;
        Ok(())
    }

    /// Records a savepoint taken while the job ran on (`kind` `periodic` or `manual`), with the
    /// revision whose spec the job ran.
    pub fn put_savepoint_taken(
        &self,
        job_id: &str,
        path: &str,
        flink_job_id: &str,
        kind: &str,
        commit_id: &str,
        taken_at_ms: i64,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "INSERT INTO restore_points (job_id, path, savepoint, flink_job_id, taken_at_ms, recorded_at, kind, commit_id)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(job_id, path) DO NOTHING",
                params![job_id, path, flink_job_id, taken_at_ms, now_rfc3339(), kind, commit_id],
            )
            .map_err(sqlite(&self.path, "record savepoint"))?;
        Ok(())
    }

    /// The newest savepoint of each job (path, kind, taken at), of the jobs that have one.
    pub fn newest_savepoints(&self) -> Result<Vec<SavepointTaken>, StateError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT job_id, path, COALESCE(kind, ''), COALESCE(commit_id, ''), MAX(taken_at_ms)
                 FROM restore_points WHERE savepoint = 1 AND unusable IS NULL GROUP BY job_id",
            )
            .map_err(sqlite(&self.path, "read savepoints"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(SavepointTaken {
                    job_id: row.get(0)?,
                    path: row.get(1)?,
                    kind: row.get(2)?,
                    commit_id: row.get(3)?,
                    taken_at_ms: row.get(4)?,
                })
            })
            .map_err(sqlite(&self.path, "read savepoints"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sqlite(&self.path, "read savepoints"))
    }

    /// Puts an event in the outbox for `targets`, unless an event with the same `dedupe_key` was
    /// queued before; true when it was new.
    pub fn enqueue_event(
        &self,
        event: &str,
        job_id: Option<&str>,
        dedupe_key: &str,
        body: &str,
        targets: &[&str],
    ) -> Result<bool, StateError> {
        let path = self.path.clone();
        let tx = self
            .connection
            .unchecked_transaction()
            .map_err(sqlite(&path, "queue an event"))?;
        let queued = enqueue_in(
            &tx,
            &path,
            &QueuedEvent {
                event,
                job_id,
                body,
                targets,
            },
            dedupe_key,
        )?;
        tx.commit().map_err(sqlite(&path, "queue an event"))?;
        Ok(queued)
    }

    /// Operations and steps that ended well after the audit row `after`, with what their intent
    /// said, up to the newest audit row (returned too, as the next cursor). Which of them are news
    /// is the alerting side's call (`notify::event_of_operation`).
    pub fn finished_operations_after(
        &self,
        after: i64,
    ) -> Result<(Vec<FinishedOperation>, i64), StateError> {
        const OPERATION: &str = "read finished operations";
        let newest: i64 = self
            .connection
            .query_row("SELECT COALESCE(MAX(id), 0) FROM audit_log", [], |row| {
                row.get(0)
            })
            .map_err(sqlite(&self.path, OPERATION))?;
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT o.id, o.commit_id, o.job_id, o.action, o.detail, i.detail FROM audit_log o
                 JOIN audit_log i ON i.id = o.intent_id
                 WHERE o.id > ?1 AND o.id <= ?2 AND o.phase = 'outcome' AND o.result = 'ok'
                 ORDER BY o.id",
            )
            .map_err(sqlite(&self.path, OPERATION))?;
        let rows = statement
            .query_map(params![after, newest], |row| {
                Ok(FinishedOperation {
                    audit_id: row.get(0)?,
                    commit_id: row.get(1)?,
                    job_id: row.get(2)?,
                    action: row.get(3)?,
                    detail: row.get(4)?,
                    intent_detail: row.get(5)?,
                })
            })
            .map_err(sqlite(&self.path, OPERATION))?;
        let operations = rows
            .collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, OPERATION))?;
        Ok((operations, newest))
    }

    /// Queues the events of finished operations (each keyed by its audit row, so queuing one
    /// twice is a no-op) and moves the cursor to `cursor`, in one transaction.
    pub fn queue_operation_events(
        &self,
        events: &[(String, QueuedEvent<'_>)],
        cursor: i64,
    ) -> Result<(), StateError> {
        self.queue_events_with(events, "queue operation events", |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('alerts_audit_cursor', ?1)",
                [cursor.to_string()],
            )
            .map(drop)
        })
    }

    /// Queues `events` (each under its dedupe key) and runs `mark`, which records them queued,
    /// in one transaction: both land or neither does.
    pub(super) fn queue_events_with(
        &self,
        events: &[(String, QueuedEvent<'_>)],
        operation: &'static str,
        mark: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StateError> {
        let tx = self
            .connection
            .unchecked_transaction()
            .map_err(sqlite(&self.path, operation))?;
        for (dedupe_key, event) in events {
            enqueue_in(&tx, &self.path, event, dedupe_key)?;
        }
        mark(&tx).map_err(sqlite(&self.path, operation))?;
        tx.commit().map_err(sqlite(&self.path, operation))
    }

    /// The audit row up to which operations' events are queued.
    pub fn alerts_audit_cursor(&self) -> Result<i64, StateError> {
        Ok(self
            .meta("alerts_audit_cursor")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// The keys of the conditions being watched (pending or alerted).
    pub fn alert_conditions(&self) -> Result<std::collections::HashSet<String>, StateError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT key FROM alert_conditions")
            .map_err(sqlite(&self.path, "read alert conditions"))?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .map_err(sqlite(&self.path, "read alert conditions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "read alert conditions"))
    }

    /// Notes whether the condition `key` holds now. A condition that has held for `hold_ms`
    /// queues `raise` once; when it stops holding after that, `resolve` is queued and the
    /// condition forgotten. Both happen in one transaction with the condition's row, so a crash
    /// neither loses nor repeats an alert.
    pub fn observe_condition(
        &self,
        key: &str,
        holds: bool,
        hold_ms: i64,
        now_ms: i64,
        raise: &QueuedEvent<'_>,
        resolve: &QueuedEvent<'_>,
    ) -> Result<ConditionChange, StateError> {
        let path = self.path.clone();
        const OPERATION: &str = "record an alert condition";
        let tx = self
            .connection
            .unchecked_transaction()
            .map_err(sqlite(&path, OPERATION))?;
        let known: Option<(i64, bool)> = tx
            .query_row(
                "SELECT since_ms, raised FROM alert_conditions WHERE key = ?1",
                params![key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sqlite(&path, OPERATION))?;
        let change = match (holds, known) {
            (true, None) => {
                tx.execute(
                    "INSERT INTO alert_conditions (key, job_id, since_ms) VALUES (?1, ?2, ?3)",
                    params![key, raise.job_id, now_ms],
                )
                .map_err(sqlite(&path, OPERATION))?;
                if hold_ms <= 0 {
                    self.raise_in(&tx, key, now_ms, raise)?
                } else {
                    ConditionChange::Pending
                }
            }
            (true, Some((since, false))) if now_ms - since >= hold_ms => {
                self.raise_in(&tx, key, since, raise)?
            }
            (true, Some((_, false))) => ConditionChange::Pending,
            (true, Some((_, true))) => ConditionChange::Unchanged,
            (false, Some((since, raised))) => {
                tx.execute("DELETE FROM alert_conditions WHERE key = ?1", params![key])
                    .map_err(sqlite(&path, OPERATION))?;
                if raised {
                    enqueue_in(
                        &tx,
                        &path,
                        resolve,
                        &format!("condition:{key}:{since}:resolved"),
                    )?;
                    ConditionChange::Resolved
                } else {
                    ConditionChange::Unchanged
                }
            }
            (false, None) => ConditionChange::Unchanged,
        };
        tx.commit().map_err(sqlite(&path, OPERATION))?;
        Ok(change)
    }

    fn raise_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        key: &str,
        since: i64,
        raise: &QueuedEvent<'_>,
    ) -> Result<ConditionChange, StateError> {
        tx.execute(
            "UPDATE alert_conditions SET raised = 1 WHERE key = ?1",
            params![key],
        )
        .map_err(sqlite(&self.path, "record an alert condition"))?;
        enqueue_in(tx, &self.path, raise, &format!("condition:{key}:{since}"))?;
        Ok(ConditionChange::Raised)
    }

    /// Forgets the job's conditions without a "resolved" (the job was deleted or suspended).
    pub fn forget_conditions_of(&self, job_id: &str) -> Result<(), StateError> {
        self.connection
            .execute(
                "DELETE FROM alert_conditions WHERE job_id = ?1",
                params![job_id],
            )
            .map_err(sqlite(&self.path, "forget alert conditions"))?;
        Ok(())
    }

    /// When the earliest undelivered delivery to one of `targets` is due, epoch ms.
    pub fn next_delivery_at(&self, targets: &[&str]) -> Result<Option<i64>, StateError> {
        let placeholders = vec!["?"; targets.len()].join(", ");
        self.connection
            .query_row(
                &format!(
                    "SELECT MIN(next_at_ms) FROM deliveries WHERE delivered_at IS NULL AND target IN ({placeholders})"
                ),
                rusqlite::params_from_iter(targets),
                |row| row.get(0),
            )
            .map_err(sqlite(&self.path, "read deliveries"))
    }

    /// Deliveries to `target` that arrived since `since_ms` (for its rate limit).
    pub fn delivered_since(&self, target: &str, since_ms: i64) -> Result<u32, StateError> {
        self.connection
            .query_row(
                "SELECT COUNT(*) FROM deliveries WHERE target = ?1 AND delivered_ms >= ?2",
                params![target, since_ms],
                |row| row.get(0),
            )
            .map_err(sqlite(&self.path, "count deliveries"))
    }

    /// Deliveries due at `now_ms`, oldest first, at most `limit`.
    pub fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT d.event_id, d.target, d.attempts, o.body FROM deliveries d JOIN outbox o ON o.id = d.event_id
                 WHERE d.delivered_at IS NULL AND d.next_at_ms <= ?1 ORDER BY d.event_id LIMIT ?2",
            )
            .map_err(sqlite(&self.path, "read deliveries"))?;
        let rows = statement
            .query_map(params![now_ms, limit], |row| {
                Ok(Delivery {
                    event_id: row.get(0)?,
                    target: row.get(1)?,
                    attempts: row.get(2)?,
                    body: row.get(3)?,
                })
            })
            .map_err(sqlite(&self.path, "read deliveries"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "read deliveries"))
    }

    /// Per target: alerts delivered, alerts waiting, and failed tries so far.
    pub fn delivery_counts(&self) -> Result<Vec<(String, i64, i64, i64)>, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT target, SUM(delivered_at IS NOT NULL), SUM(delivered_at IS NULL),
                        SUM(attempts - (delivered_at IS NOT NULL))
                 FROM deliveries GROUP BY target",
            )
            .map_err(sqlite(&self.path, "count deliveries"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .map_err(sqlite(&self.path, "count deliveries"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "count deliveries"))
    }

    /// Records a delivery attempt: delivered, or failed with when to try again.
    pub fn record_delivery(
        &self,
        delivery: &Delivery,
        result: Result<(), (&str, i64)>,
    ) -> Result<(), StateError> {
        match result {
            Ok(()) => self.connection.execute(
                "UPDATE deliveries SET delivered_at = ?1, delivered_ms = ?4, attempts = attempts + 1, last_error = NULL WHERE event_id = ?2 AND target = ?3",
                params![now_rfc3339(), delivery.event_id, delivery.target, chrono::Utc::now().timestamp_millis()],
            ),
            Err((error, next_at_ms)) => self.connection.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_at_ms = ?1, last_error = ?2 WHERE event_id = ?3 AND target = ?4",
                params![next_at_ms, error, delivery.event_id, delivery.target],
            ),
        }
        .map_err(sqlite(&self.path, "record a delivery"))?;
        Ok(())
    }

    /// Marks a path as not restorable (recording it if it was not known).
    pub fn mark_unusable(&self, job_id: &str, path: &str, why: &str) -> Result<(), StateError> {
        self.connection
            .execute(
                "INSERT INTO restore_points (job_id, path, savepoint, taken_at_ms, recorded_at, unusable)
                 VALUES (?1, ?2, 0, 0, ?3, ?4)
                 ON CONFLICT(job_id, path) DO UPDATE SET unusable = excluded.unusable",
                params![job_id, path, now_rfc3339(), why],
            )
            .map_err(sqlite(&self.path, "mark restore point unusable"))?;
        Ok(())
    }

    /// Every restore point of a job, newest first.
    pub fn restore_points(&self, job_id: &str) -> Result<Vec<RestorePoint>, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT job_id, path, savepoint, flink_job_id, taken_at_ms, unusable FROM restore_points
                 WHERE job_id = ?1 ORDER BY taken_at_ms DESC",
            )
            .map_err(sqlite(&self.path, "read restore points"))?;
        let rows = statement
            .query_map([job_id], |row| {
                Ok(RestorePoint {
                    job_id: row.get(0)?,
                    path: row.get(1)?,
                    savepoint: row.get(2)?,
                    flink_job_id: row.get(3)?,
                    taken_at_ms: row.get(4)?,
                    unusable: row.get(5)?,
                })
            })
            .map_err(sqlite(&self.path, "read restore points"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "read restore points"))
    }

    /// Queues an operator request for the agent's next pass.
    pub fn queue_request(&self, job_id: &str, kind: &str, by: &str) -> Result<i64, StateError> {
        self.connection
            .execute(
                "INSERT INTO requests (at, job_id, kind, by) VALUES (?1, ?2, ?3, ?4)",
                params![now_rfc3339(), job_id, kind, by],
            )
            .map_err(sqlite(&self.path, "queue request"))?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Requests not yet handled, oldest first.
    pub fn open_requests(&self) -> Result<Vec<Request>, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT id, at, job_id, kind, by FROM requests WHERE done_at IS NULL ORDER BY id",
            )
            .map_err(sqlite(&self.path, "read requests"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(Request {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    job_id: row.get(2)?,
                    kind: row.get(3)?,
                    by: row.get(4)?,
                })
            })
            .map_err(sqlite(&self.path, "read requests"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "read requests"))
    }

    /// Marks a request handled.
    pub fn finish_request(&self, id: i64) -> Result<(), StateError> {
        self.connection
            .execute(
                "UPDATE requests SET done_at = ?2 WHERE id = ?1",
                params![id, now_rfc3339()],
            )
            .map_err(sqlite(&self.path, "finish request"))?;
        Ok(())
    }

    /// Raw access for statements not (yet) wrapped here; used by tests to prove invariants.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let spec_json: Option<String> = row.get(1)?;
    Ok(JobRecord {
        job_id: row.get(0)?,
        spec_json_left_out: spec_json.is_none(),
        spec_json: spec_json.unwrap_or_default(),
        spec_hash: row.get(2)?,
        commit_id: row.get(3)?,
        flink_job_id: row.get(4)?,
        generation: row.get(5)?,
        jar_id: row.get(6)?,
        jar_sha256: row.get(7)?,
        last_savepoint: row.get(8)?,
        status: row.get(9)?,
        updated_at: row.get(10)?,
        deployment_json: row.get(11)?,
        pending_json: row.get(12)?,
        phase: row.get(13)?,
        phase_json: row.get(14)?,
        failures: row.get(15)?,
        permanent_failures: row.get(16)?,
        retry_at_ms: row.get(17)?,
        last_error: row.get(18)?,
        rejected_spec_hash: row.get(19)?,
    })
}

fn sqlite<'a>(
    path: &'a Path,
    operation: &'static str,
) -> impl FnOnce(rusqlite::Error) -> StateError + 'a {
    move |source| StateError::Sqlite {
        path: path.to_path_buf(),
        operation,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job_id: &str) -> JobRecord {
        JobRecord {
            job_id: job_id.into(),
            spec_json: "{}".into(),
            spec_hash: "h".into(),
            commit_id: "c1".into(),
            flink_job_id: Some("f".repeat(32)),
            generation: 1,
            jar_id: None,
            jar_sha256: None,
            last_savepoint: None,
            status: "running".into(),
            ..JobRecord::default()
        }
    }

    #[test]
    fn records_listed_without_deployments_are_filled_as_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        // Written out of order: the listings are in job id order, not in the order of the rows.
        for n in (0..40).map(|n| (n * 17) % 40) {
            store
                .put_job(&JobRecord {
                    deployment_json: Some(format!("{{\"n\":{n}}}")),
                    // One adopted from the cluster without a recorded spec.
                    spec_json: if n == 7 { String::new() } else { "{}".into() },
                    ..record(&format!("job-{n:02}"))
                })
                .unwrap();
        }
        let whole = store.jobs().unwrap();
        let listed = store.jobs_without_deployments().unwrap();
        let names: Vec<String> = (0..40).map(|n| format!("job-{n:02}")).collect();
        assert_eq!(
            whole.iter().map(|r| &r.job_id).collect::<Vec<_>>(),
            names.iter().collect::<Vec<_>>()
        );
        assert!(listed.iter().all(|r| r.deployment_json.is_none()));
        // The spec JSON is left out where there is one, and says so.
        assert_eq!(
            listed,
            whole
                .iter()
                .map(|r| JobRecord {
                    deployment_json: None,
                    spec_json: String::new(),
                    spec_json_left_out: !r.spec_json.is_empty(),
                    ..r.clone()
                })
                .collect::<Vec<_>>()
        );
        assert!(!listed[7].spec_json_left_out && listed[7].spec_json.is_empty());
        assert!(whole.iter().all(|r| !r.spec_json_left_out));
        // A few, looked up one by one, and most, read in one listing.
        for picks in [3, 35] {
            let mut filled = listed.clone();
            store
                .fill_deployments(&mut filled, |r| {
                    r.job_id.as_str() < format!("job-{picks:02}").as_str()
                })
                .unwrap();
            let expected: Vec<JobRecord> = whole
                .iter()
                .enumerate()
                .map(|(n, r)| {
                    if n < picks {
                        r.clone()
                    } else {
                        listed[n].clone()
                    }
                })
                .collect();
            assert_eq!(filled, expected, "{picks} picked");
        }
    }

    #[test]
    fn a_second_exclusive_open_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateStore::open_exclusive(dir.path()).unwrap();
        let err = StateStore::open_exclusive(dir.path()).err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, StateError::Locked { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn deleting_the_lock_file_does_not_let_a_second_agent_in() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateStore::open_exclusive(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("lock")).unwrap();
        let err = StateStore::open_exclusive(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
    }

    #[test]
    fn a_deleted_or_replaced_database_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        store.check_identity().unwrap();
        let db = dir.path().join("state.db");
        std::fs::rename(&db, dir.path().join("aside.db")).unwrap();
        let err = store.check_identity().unwrap_err();
        assert!(
            matches!(&err, StateError::Lost { what, .. } if what == "deleted"),
            "{err}"
        );
        assert!(err.to_string().contains(&db.display().to_string()), "{err}");
        // A file at the same path is not the one we write to.
        std::fs::write(&db, b"").unwrap();
        let err = store.check_identity().unwrap_err();
        assert!(
            matches!(&err, StateError::Lost { what, .. } if what.starts_with("replaced")),
            "{err}"
        );
        std::fs::remove_file(&db).unwrap();
        std::fs::rename(dir.path().join("aside.db"), &db).unwrap();
        store.check_identity().unwrap();
    }

    #[test]
    fn the_watermark_is_also_kept_beside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        StateStore::open_exclusive(dir.path())
            .unwrap()
            .set_watermark(commit)
            .unwrap();
        std::fs::remove_file(dir.path().join("state.db")).unwrap();
        let fresh = StateStore::open_exclusive(dir.path()).unwrap();
        assert_eq!(fresh.meta("watermark").unwrap(), None);
        assert_eq!(kept_watermark(dir.path()).unwrap().as_deref(), Some(commit));
    }

    #[test]
    fn an_unchanged_watermark_is_not_written_again_and_a_bad_copy_is_replaced() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        let file = dir.path().join(WATERMARK_FILE);
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        store.set_watermark(commit).unwrap();
        let (changes, inode) = (
            store.connection.total_changes(),
            std::fs::metadata(&file).unwrap().ino(),
        );
        store.set_watermark(commit).unwrap();
        assert_eq!(store.connection.total_changes(), changes);
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);

        // Each copy is mended on its own: a file that went bad, a database that differs.
        std::fs::write(&file, "garbage").unwrap();
        store.set_watermark(commit).unwrap();
        assert_eq!(kept_watermark(dir.path()).unwrap().as_deref(), Some(commit));
        assert_eq!(store.connection.total_changes(), changes);
        store.set_meta("watermark", "c1").unwrap();
        let inode = std::fs::metadata(&file).unwrap().ino();
        store.set_watermark(commit).unwrap();
        assert_eq!(store.meta("watermark").unwrap().as_deref(), Some(commit));
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
        let other = "0123456789abcdef0123456789abcdef01234567";
        store.set_watermark(other).unwrap();
        assert_eq!(store.meta("watermark").unwrap().as_deref(), Some(other));
        assert_eq!(kept_watermark(dir.path()).unwrap().as_deref(), Some(other));
    }

    #[test]
    fn state_survives_reopening_and_reads_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open_exclusive(dir.path()).unwrap();
            store.put_job(&record("orders")).unwrap();
            store.set_meta("watermark", "c1").unwrap();
        }
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        assert_eq!(
            store.job("orders").unwrap().unwrap().flink_job_id,
            Some("f".repeat(32))
        );
        let reader = StateStore::open_read_only(dir.path()).unwrap().unwrap();
        assert_eq!(reader.meta("watermark").unwrap().as_deref(), Some("c1"));
        assert!(
            reader.put_job(&record("x")).is_err(),
            "read-only store must refuse writes"
        );
    }

    #[test]
    fn first_seen_time_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        let first = store.record_revision_seen("abc").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = store.record_revision_seen("abc").unwrap();
        assert_eq!(first.first_seen_at, again.first_seen_at);
    }

    #[test]
    fn audit_log_is_append_only_and_tracks_open_intents() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_exclusive(dir.path()).unwrap();
        let done = store
            .audit_intent(Some("c1"), Some("orders"), AuditAction::Create, "{}")
            .unwrap();
        store.audit_outcome(done, "ok", "running").unwrap();
        let open = store
            .audit_intent(Some("c1"), Some("orders"), AuditAction::Upgrade, "{}")
            .unwrap();
        let pending = store.open_intents().unwrap();
        assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), vec![open]);
        assert!(
            store
                .connection()
                .execute("DELETE FROM audit_log", [])
                .is_err()
        );
        assert!(
            store
                .connection()
                .execute("UPDATE audit_log SET result = 'x'", [])
                .is_err()
        );
        assert_eq!(store.audit_log().unwrap().len(), 3);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateStore::open_exclusive(dir.path()).unwrap());
        let connection = Connection::open(dir.path().join("state.db")).unwrap();
        connection
            .execute_batch("PRAGMA user_version = 999")
            .unwrap();
        drop(connection);
        let err = StateStore::open_exclusive(dir.path()).err().unwrap();
        assert!(
            matches!(err, StateError::TooNew { found: 999, .. }),
            "{err}"
        );
    }
}
