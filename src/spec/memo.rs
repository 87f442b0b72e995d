//! Loaded specs kept by the git blob id of their file, so a revision that changes one spec out of
//! a thousand parses one.
//!
//! Loading a spec is deterministic: its result depends only on the file's bytes and on what the
//! loader observed in the tree (which paths exist, what they are, the blob id of each file it
//! read). An entry keeps those observations; it is used only when every one of them is observed
//! again in the new tree, so a hit gives exactly what loading would have given. An entry is also
//! tied to the build of the agent that made it, since another build may validate differently.

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::program::Program;
use super::{DesiredJob, EntryKind, JobSpec, RepoPath, SpecTree, TreeError};

/// What the loader saw in the tree while it loaded one spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "seen", rename_all = "snake_case")]
pub(crate) enum Observation {
    /// `entry(path)`.
    Entry {
        path: RepoPath,
        found: Option<EntryKind>,
    },
    /// A file read, or its content id asked for.
    Content { path: RepoPath, id: String },
    /// `walk(dir)`.
    Walk {
        dir: RepoPath,
        found: Vec<(RepoPath, EntryKind)>,
    },
}

/// One loaded spec as the state database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoEntry {
    /// [`SpecMemo::key`] of the spec file.
    pub key: String,
    /// The canonical JSON of the spec ([`DesiredJob::canonical_spec`]).
    pub spec_json: String,
    /// [`DesiredJob::hash_without_secrets`].
    pub spec_hash: String,
    /// [`DesiredJob::artifact_content`].
    pub artifact_content: String,
    /// The SQL or Python sources, as JSON.
    pub program_json: Option<String>,
    /// What loading observed in the tree, as JSON.
    pub observations_json: String,
}

/// Where the entries come from when they are not all read already: the next part of them, read
/// on another thread and waited for only when a load needs an entry it has not found yet (the
/// repository is fetched and the commits verified meanwhile); `None` once there is no more.
type EntrySource = Box<dyn FnMut() -> Option<PreparedMemo> + Send>;

/// Memo entries by key, each given to the one load that recalls it. A handle: clones share the
/// entries, so another thread can parse them ahead of the load ([`PreparedMemo::parse_ahead`]).
#[derive(Clone)]
pub struct PreparedMemo(Arc<HashMap<String, Kept>>);

/// One entry as a load takes it: its observations are checked, then its parts are moved into
/// the job (a thousand unchanged specs are not copied again).
struct Kept {
    observations_json: String,
    parts: Mutex<Parts>,
}

/// An entry's job, as stored or parsed already; taken by the load that recalls it.
enum Parts {
    Stored {
        spec_json: String,
        spec_hash: String,
        artifact_content: String,
        program_json: Option<String>,
    },
    Parsed {
        spec: Box<JobSpec>,
        program: Option<Program>,
        spec_json: String,
        spec_hash: String,
        artifact_content: String,
    },
    /// Did not read back, or was taken.
    Gone,
}

impl Parts {
    /// Parsed in place; `Gone` when the stored spec or program does not read back.
    fn parse(&mut self) {
        if let Parts::Stored {
            spec_json,
            spec_hash,
            artifact_content,
            program_json,
        } = self
        {
            *self = match parse_entry(spec_json, program_json.as_deref()) {
                Some((spec, program)) => Parts::Parsed {
                    spec,
                    program,
                    spec_json: std::mem::take(spec_json),
                    spec_hash: std::mem::take(spec_hash),
                    artifact_content: std::mem::take(artifact_content),
                },
                None => Parts::Gone,
            };
        }
    }
}

impl PreparedMemo {
    /// The entries, each parsed when a load recalls it (or a helper parses it first).
    pub fn new(entries: impl IntoIterator<Item = MemoEntry>) -> PreparedMemo {
        PreparedMemo(Arc::new(
            entries
                .into_iter()
                .map(|entry| {
                    let kept = Kept {
                        observations_json: entry.observations_json,
                        parts: Mutex::new(Parts::Stored {
                            spec_json: entry.spec_json,
                            spec_hash: entry.spec_hash,
                            artifact_content: entry.artifact_content,
                            program_json: entry.program_json,
                        }),
                    };
                    (entry.key, kept)
                })
                .collect(),
        ))
    }

    /// Parses entries ahead of the load that recalls them, from the other end of the load's order
    /// (the spec files' paths), until `stop` is set or none is left. An entry the load is parsing
    /// is passed over; one parsed here is taken by the load as it is. An idle core does in the
    /// meantime what the load would do last.
    pub fn parse_ahead(&self, stop: &AtomicBool) {
        // Asked part after part: parts the load reached the end before are not looked at.
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut keys: Vec<&String> = self.0.keys().collect();
        // A key is `generation\npath\nblob id`: by path, last first.
        keys.sort_unstable_by(|a, b| b.cmp(a));
        for key in keys {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Ok(mut parts) = self.0[key].parts.try_lock() {
                parts.parse();
            }
        }
    }
}

/// A stored spec and program, or `None` when either does not read back (then the file is parsed
/// again).
fn parse_entry(
    spec_json: &str,
    program_json: Option<&str>,
) -> Option<(Box<JobSpec>, Option<Program>)> {
    let spec: Box<JobSpec> = serde_json::from_str(spec_json).ok()?;
    let program: Option<Program> = match program_json {
        Some(json) => Some(serde_json::from_str(json).ok()?),
        None => None,
    };
    Some((spec, program))
}

/// The entries a load may use, and the build they must come from.
pub struct SpecMemo {
    generation: Option<&'static str>,
    /// The parts received so far, in the order they came.
    first: std::cell::OnceCell<Box<Part>>,
    source: std::cell::RefCell<Option<EntrySource>>,
}

/// One part of a memo's entries, and the part received after it.
struct Part {
    entries: PreparedMemo,
    next: std::cell::OnceCell<Box<Part>>,
}

impl SpecMemo {
    /// A memo that never hits (offline commands, tests of the loader itself).
    pub fn none() -> SpecMemo {
        SpecMemo {
            generation: None,
            first: Default::default(),
            source: None.into(),
        }
    }

    /// The stored entries, for this build, all read already (the agent reads them in parts:
    /// [`SpecMemo::in_parts`]).
    #[cfg(test)]
    pub fn new(entries: impl IntoIterator<Item = MemoEntry>) -> SpecMemo {
        SpecMemo {
            generation: build_generation(),
            first: Box::new(Part {
                entries: PreparedMemo::new(entries),
                next: Default::default(),
            })
            .into(),
            source: None.into(),
        }
    }

    /// The entries `source` gives, asked for when a load first needs them.
    #[cfg(test)]
    pub fn later(source: impl FnOnce() -> PreparedMemo + Send + 'static) -> SpecMemo {
        let mut source = Some(source);
        SpecMemo::in_parts(move || source.take().map(|read| read()))
    }

    /// The entries `next_part` gives part by part, each asked for when a load needs an entry the
    /// parts before it do not have; `None` ends them. A load recalls its first specs while the
    /// rest are still being read.
    pub fn in_parts(next_part: impl FnMut() -> Option<PreparedMemo> + Send + 'static) -> SpecMemo {
        SpecMemo {
            generation: build_generation(),
            first: Default::default(),
            source: Some(Box::new(next_part) as EntrySource).into(),
        }
    }

    /// The part after `slot`, received now if it was not yet; `None` when there is no more.
    fn part<'m>(&'m self, slot: &'m std::cell::OnceCell<Box<Part>>) -> Option<&'m Part> {
        if let Some(part) = slot.get() {
            return Some(part);
        }
        let entries = {
            let mut source = self.source.borrow_mut();
            let entries = source.as_mut().and_then(|next_part| next_part());
            if entries.is_none() {
                *source = None;
            }
            entries?
        };
        Some(slot.get_or_init(|| {
            Box::new(Part {
                entries,
                next: Default::default(),
            })
        }))
    }

    /// The parts in the order they came, each one not received yet waited for when reached.
    fn parts(&self) -> impl Iterator<Item = &Part> {
        let mut slot = &self.first;
        std::iter::from_fn(move || {
            let part = self.part(slot)?;
            slot = &part.next;
            Some(part)
        })
    }

    /// The entry under `key`, waiting for further parts while it is not found.
    fn find(&self, key: &str) -> Option<&Kept> {
        self.parts().find_map(|part| part.entries.0.get(key))
    }

    /// How many entries were read (every part is waited for).
    pub fn len(&self) -> usize {
        self.parts().map(|part| part.entries.0.len()).sum()
    }

    /// True when no entry was read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this memo keeps anything (else a load need not name its spec files).
    pub(crate) fn keeps(&self) -> bool {
        self.generation.is_some()
    }

    /// The key of the spec file `file` whose content id is `content_id`, or `None` when this
    /// build cannot name itself (then nothing is kept).
    pub(crate) fn key(&self, file: &RepoPath, content_id: &str) -> Option<String> {
        self.generation
            .map(|generation| format!("{generation}\n{file}\n{content_id}"))
    }

    /// The job kept under `key`, when every observation it was made from holds in `tree`.
    /// `checked` remembers, for one tree, which observation lists held: jobs that share a JAR or
    /// a runner share the same list, which is then looked at once. A key names one file, which a
    /// load recalls once: the entry is moved into the job, and a second recall finds nothing.
    pub(crate) fn recall<'m>(
        &'m self,
        key: &str,
        file: &RepoPath,
        tree: &dyn SpecTree,
        checked: &mut HashMap<&'m str, bool>,
    ) -> Option<DesiredJob> {
        let entry = self.find(key)?;
        let holds_now = *checked
            .entry(entry.observations_json.as_str())
            .or_insert_with(|| {
                serde_json::from_str::<Vec<Observation>>(&entry.observations_json)
                    .is_ok_and(|observations| observations.iter().all(|seen| holds(seen, tree)))
            });
        if !holds_now {
            return None;
        }
        // A lock poisoned by a panic elsewhere leaves the entry as it was: a miss at worst.
        let mut parts = entry.parts.lock().ok()?;
        parts.parse();
        match std::mem::replace(&mut *parts, Parts::Gone) {
            Parts::Parsed {
                spec,
                program,
                spec_json,
                spec_hash,
                artifact_content,
            } => Some(
                DesiredJob::new(spec, file.clone(), artifact_content, program)
                    .with_canonical_spec(spec_json, spec_hash),
            ),
            _ => None,
        }
    }
}

fn holds(seen: &Observation, tree: &dyn SpecTree) -> bool {
    match seen {
        Observation::Entry { path, found } => tree.entry(path).is_ok_and(|now| now == *found),
        Observation::Content { path, id } => tree.content_id(path).is_ok_and(|now| now == *id),
        Observation::Walk { dir, found } => tree.walk(dir).is_ok_and(|now| now == *found),
    }
}

/// This build of the agent: its version and the size and time of its executable, which change
/// with every rebuild. `None` when the executable cannot be looked at.
fn build_generation() -> Option<&'static str> {
    static GENERATION: OnceLock<Option<String>> = OnceLock::new();
    GENERATION
        .get_or_init(|| {
            let exe = std::env::current_exe().ok()?;
            let metadata = std::fs::metadata(exe).ok()?;
            let modified = metadata
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            Some(format!(
                "{}/{}/{}",
                env!("CARGO_PKG_VERSION"),
                metadata.len(),
                modified.as_nanos()
            ))
        })
        .as_deref()
}

/// A tree that writes down what it is asked and answers, so the answers can be checked again.
pub(crate) struct RecordingTree<'a> {
    inner: &'a dyn SpecTree,
    /// The spec file itself: its content id is the entry's key already.
    spec_file: &'a RepoPath,
    seen: std::cell::RefCell<Vec<Observation>>,
    /// A lookup failed: the load's outcome depends on an error, which is not kept.
    failed: std::cell::Cell<bool>,
}

impl<'a> RecordingTree<'a> {
    pub(crate) fn new(inner: &'a dyn SpecTree, spec_file: &'a RepoPath) -> RecordingTree<'a> {
        RecordingTree {
            inner,
            spec_file,
            seen: Default::default(),
            failed: Default::default(),
        }
    }

    /// The entry for a job loaded through this tree; `None` when it cannot be kept.
    pub(crate) fn entry_for(self, key: String, job: &DesiredJob) -> Option<MemoEntry> {
        // The positions of `depends_on` entries locate errors found across specs (a cycle made
        // by another spec's change); the canonical JSON does not carry them.
        if self.failed.get() || !job.spec.depends_on.is_empty() {
            return None;
        }
        let spec_json = job.canonical_spec().to_string();
        // Kept only what reads back as the same spec: a field that does not round-trip would
        // otherwise change a job's hash on the next load.
        if serde_json::from_str::<JobSpec>(&spec_json).ok().as_ref() != Some(&job.spec) {
            tracing::debug!(file = %job.file, "spec does not read back from its canonical JSON; not kept");
            return None;
        }
        let program_json = match &job.program {
            Some(program) => Some(serde_json::to_string(program).ok()?),
            None => None,
        };
        Some(MemoEntry {
            key,
            spec_json,
            spec_hash: job.hash_without_secrets().to_string(),
            artifact_content: job.artifact_content.clone(),
            program_json,
            observations_json: serde_json::to_string(&self.seen.into_inner()).ok()?,
        })
    }

    fn note<T>(
        &self,
        result: Result<T, TreeError>,
        seen: impl FnOnce(&T) -> Observation,
    ) -> Result<T, TreeError> {
        match &result {
            Ok(value) => self.seen.borrow_mut().push(seen(value)),
            Err(_) => self.failed.set(true),
        }
        result
    }
}

impl SpecTree for RecordingTree<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn entry(&self, path: &RepoPath) -> Result<Option<EntryKind>, TreeError> {
        self.note(self.inner.entry(path), |found| Observation::Entry {
            path: path.clone(),
            found: found.clone(),
        })
    }

    fn walk(&self, dir: &RepoPath) -> Result<Vec<(RepoPath, EntryKind)>, TreeError> {
        self.note(self.inner.walk(dir), |found| Observation::Walk {
            dir: dir.clone(),
            found: found.clone(),
        })
    }

    fn read(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, TreeError> {
        let bytes = self.inner.read(path, limit);
        match &bytes {
            // The same content id means the same bytes, so the same answer under the same limit.
            Ok(_) if path != self.spec_file => {
                self.content_id(path)?;
            }
            Ok(_) => {}
            Err(_) => self.failed.set(true),
        }
        bytes
    }

    fn content_id(&self, path: &RepoPath) -> Result<String, TreeError> {
        self.note(self.inner.content_id(path), |id| Observation::Content {
            path: path.clone(),
            id: id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::spec::{GitTree, load_desired, load_desired_with};

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn write(dir: &Path, path: &str, text: &str) {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }

    /// A repository with a JAR job, a SQL job, a Python job with a folder, and a job with every
    /// optional section; returns its head.
    fn repo(dir: &Path) -> git2::Oid {
        git(dir, &["init", "-q"]);
        write(dir, "artifacts/a.jar", "jar v1");
        write(
            dir,
            "jobs/a.yaml",
            "job_id: a\njob_type: stream\nartifact_path: artifacts/a.jar\n",
        );
        write(
            dir,
            "jobs/full.yaml",
            "job_id: full\njob_type: stream\nartifact_path: artifacts/a.jar\nargs: [\"--x\", \"${secret:token}\"]\n\
             upgrade_mode: last-state\nstream_config: { savepoint_trigger_interval: 60000 }\n\
             deployment: { parallelism: 3, checkpoint_interval: 10000 }\n\
             health: { stable_for: 1m 30s, max_backpressure: 0.35, max_checkpoint_age: 2m, min_checkpoints: 2 }\n\
             monitoring: { backpressure_ratio: 0.8, backpressure_for: 5m }\n\
             savepoints: { keep: 3, max_age: 7d }\n",
        );
        write(
            dir,
            "sql/a.sql",
            "CREATE TABLE s (x INT) WITH ('connector' = 'datagen');\n\
             CREATE TABLE k (x INT) WITH ('connector' = 'blackhole');\n\
             INSERT INTO k SELECT x FROM s;\n",
        );
        write(
            dir,
            "jobs/q.yaml",
            "job_id: q\njob_type: stream\nsql: [sql/a.sql]\n",
        );
        write(dir, "py/main.py", "print(1)\n");
        write(dir, "py/lib/util.py", "X = 1\n");
        write(
            dir,
            "jobs/p.yaml",
            "job_id: p\njob_type: stream\npython: { entry: py/main.py, files: [py/lib] }\n",
        );
        write(
            dir,
            "jobs/b.yaml",
            "job_id: b\njob_type: batch\nartifact_path: artifacts/a.jar\nbatch_config: { cron: \"0 2 * * *\", timezone: Europe/Paris, max_runs: 3 }\n",
        );
        commit(dir)
    }

    fn commit(dir: &Path) -> git2::Oid {
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-qm", "c", "--allow-empty"]);
        git2::Oid::from_str(&git(dir, &["rev-parse", "HEAD"])).unwrap()
    }

    /// What the state database holds once a load's fresh entries are stored beside `kept`.
    fn stored(fresh: &[MemoEntry], kept: &[MemoEntry]) -> Vec<MemoEntry> {
        kept.iter().chain(fresh).cloned().collect()
    }

    #[test]
    fn a_recalled_revision_is_the_parsed_one_and_a_changed_file_is_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let head = repo(dir.path());
        let repository = git2::Repository::open(dir.path()).unwrap();
        let tree = GitTree::new(&repository, head).unwrap();
        let parsed = load_desired(&tree, "jobs").unwrap();

        let first = load_desired_with(&tree, "jobs", &SpecMemo::new([])).unwrap();
        assert_eq!(first.desired, parsed);
        assert_eq!(first.fresh.len(), 5, "every spec is new to an empty memo");
        assert_eq!(first.kept.len(), 5);

        let kept = stored(&first.fresh, &[]);
        let memo = SpecMemo::new(kept.clone());
        // Read on another thread and waited for when the load first needs it: the same jobs.
        let ahead = kept.clone();
        let read_beside = SpecMemo::later(move || {
            std::thread::spawn(move || PreparedMemo::new(ahead))
                .join()
                .unwrap()
        });
        // Parsed ahead on another thread, all of it or while the load runs: the same jobs.
        let parsed_first = PreparedMemo::new(kept.clone());
        parsed_first.parse_ahead(&AtomicBool::new(false));
        let parsed_first = SpecMemo::later(move || parsed_first);
        let racing = PreparedMemo::new(kept.clone());
        let helper = racing.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let helper_stop = stop.clone();
        let helping = std::thread::spawn(move || helper.parse_ahead(&helper_stop));
        let racing = SpecMemo::later(move || racing);
        // Read in parts of two on another thread, each waited for when first needed.
        let (part_sender, parts) = std::sync::mpsc::channel();
        let mut rest = kept.clone();
        let feeding = std::thread::spawn(move || {
            while !rest.is_empty() {
                let part: Vec<MemoEntry> = rest.drain(..rest.len().min(2)).collect();
                part_sender.send(PreparedMemo::new(part)).unwrap();
            }
        });
        let in_parts = SpecMemo::in_parts(move || parts.recv().ok());
        for memo in [&memo, &read_beside, &parsed_first, &racing, &in_parts] {
            let second = load_desired_with(&tree, "jobs", memo).unwrap();
            assert_eq!(second.desired, parsed);
            assert!(second.fresh.is_empty(), "nothing changed: nothing parsed");
            for (id, job) in &parsed.jobs {
                let recalled = &second.desired.jobs[id];
                assert_eq!(recalled.canonical_json(), job.canonical_json(), "{id}");
                assert_eq!(recalled.spec_hash(), job.spec_hash(), "{id}");
                assert_eq!(
                    recalled.spec_hash(),
                    crate::util::sha256_hex(job.canonical_json().as_bytes()),
                    "{id}"
                );
                assert_eq!(recalled.program, job.program, "{id}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        helping.join().unwrap();
        feeding.join().unwrap();
        // A load takes what it recalls: the same memo gives a second load nothing.
        let again = load_desired_with(&tree, "jobs", &memo).unwrap();
        assert_eq!(again.desired, parsed);
        assert_eq!(again.fresh.len(), 5);

        // Files a spec names, not the spec itself: the SQL, a file in the Python folder, the JAR.
        write(
            dir.path(),
            "sql/a.sql",
            "CREATE TABLE s (x INT) WITH ('connector' = 'datagen');\n\
             CREATE TABLE k (x INT) WITH ('connector' = 'blackhole');\n\
             INSERT INTO k SELECT x + 1 FROM s;\n",
        );
        write(dir.path(), "py/lib/more.py", "Y = 2\n");
        write(dir.path(), "artifacts/a.jar", "jar v2");
        let head = commit(dir.path());
        let tree = GitTree::new(&repository, head).unwrap();
        let third = load_desired_with(&tree, "jobs", &SpecMemo::new(kept.clone())).unwrap();
        assert_eq!(third.desired, load_desired(&tree, "jobs").unwrap());
        let parsed_again: std::collections::BTreeSet<&str> = third
            .fresh
            .iter()
            .map(|e| e.key.split('\n').nth(1).unwrap())
            .collect();
        assert_eq!(
            parsed_again,
            [
                "jobs/a.yaml",
                "jobs/b.yaml",
                "jobs/full.yaml",
                "jobs/p.yaml",
                "jobs/q.yaml"
            ]
            .into(),
            "every spec names a changed file"
        );
        assert_ne!(
            third.desired.jobs["q"].artifact_content,
            parsed.jobs["q"].artifact_content
        );

        // One spec changed: only it is parsed.
        let kept = stored(&third.fresh, &kept);
        write(
            dir.path(),
            "jobs/a.yaml",
            "job_id: a\njob_type: stream\nartifact_path: artifacts/a.jar\ndeployment: { parallelism: 2 }\n",
        );
        let head = commit(dir.path());
        let tree = GitTree::new(&repository, head).unwrap();
        let fourth = load_desired_with(
            &tree,
            "jobs",
            &SpecMemo::later(move || PreparedMemo::new(kept)),
        )
        .unwrap();
        assert_eq!(fourth.desired, load_desired(&tree, "jobs").unwrap());
        assert_eq!(fourth.fresh.len(), 1);
        assert!(fourth.fresh[0].key.contains("\njobs/a.yaml\n"));
    }

    #[test]
    fn an_entry_of_another_build_or_a_failed_lookup_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let head = repo(dir.path());
        let repository = git2::Repository::open(dir.path()).unwrap();
        let tree = GitTree::new(&repository, head).unwrap();
        let first = load_desired_with(&tree, "jobs", &SpecMemo::new([])).unwrap();
        let other_build: Vec<MemoEntry> = first
            .fresh
            .iter()
            .map(|e| MemoEntry {
                key: e.key.replacen(build_generation().unwrap(), "0.0.0/1/2", 1),
                ..e.clone()
            })
            .collect();
        let loaded = load_desired_with(&tree, "jobs", &SpecMemo::new(other_build)).unwrap();
        assert_eq!(loaded.fresh.len(), 5);

        // An entry whose spec was tampered with in the database still must read back: a spec
        // that does not parse is a miss, never a job.
        let broken: Vec<MemoEntry> = first
            .fresh
            .iter()
            .map(|e| MemoEntry {
                spec_json: "{\"job_id\": 1}".into(),
                ..e.clone()
            })
            .collect();
        let loaded = load_desired_with(&tree, "jobs", &SpecMemo::new(broken.clone())).unwrap();
        assert_eq!(loaded.desired, load_desired(&tree, "jobs").unwrap());
        assert_eq!(loaded.fresh.len(), 5);
        let loaded = load_desired_with(
            &tree,
            "jobs",
            &SpecMemo::later({
                let broken = broken.clone();
                move || PreparedMemo::new(broken)
            }),
        )
        .unwrap();
        assert_eq!(loaded.desired, load_desired(&tree, "jobs").unwrap());
        assert_eq!(loaded.fresh.len(), 5);
        let parsed_first = PreparedMemo::new(broken);
        parsed_first.parse_ahead(&AtomicBool::new(false));
        let loaded =
            load_desired_with(&tree, "jobs", &SpecMemo::later(move || parsed_first)).unwrap();
        assert_eq!(loaded.desired, load_desired(&tree, "jobs").unwrap());
        assert_eq!(loaded.fresh.len(), 5);
    }

    #[test]
    fn the_canonical_json_is_what_it_always_was() {
        let dir = tempfile::tempdir().unwrap();
        let head = repo(dir.path());
        let repository = git2::Repository::open(dir.path()).unwrap();
        let tree = GitTree::new(&repository, head).unwrap();
        let mut desired = load_desired(&tree, "jobs").unwrap();
        desired
            .jobs
            .get_mut("full")
            .unwrap()
            .secrets
            .insert("token".into(), "fingerprint".into());
        for (id, job) in &desired.jobs {
            // The form every recorded spec_hash was made with.
            let mut value =
                serde_json::json!({ "spec": job.spec, "artifact_content": job.artifact_content });
            if !job.secrets.is_empty() {
                value["secrets"] = serde_json::json!(job.secrets);
            }
            assert_eq!(job.canonical_json(), value.to_string(), "{id}");
            let read_back: JobSpec = serde_json::from_str(job.canonical_spec()).unwrap();
            assert_eq!(
                read_back, *job.spec,
                "{id} reads back from its canonical JSON"
            );
        }
    }

    #[test]
    fn a_part_is_waited_for_only_while_an_entry_is_not_found() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let head = repo(dir.path());
        let repository = git2::Repository::open(dir.path()).unwrap();
        let first = load_desired_with(
            &GitTree::new(&repository, head).unwrap(),
            "jobs",
            &SpecMemo::new([]),
        )
        .unwrap();
        let kept = stored(&first.fresh, &[]);
        let in_parts = |asked: &Arc<AtomicUsize>| {
            let asked = asked.clone();
            let mut parts =
                vec![PreparedMemo::new(kept.clone()), PreparedMemo::new([])].into_iter();
            SpecMemo::in_parts(move || {
                asked.fetch_add(1, Ordering::Relaxed);
                parts.next()
            })
        };

        let asked = Arc::new(AtomicUsize::new(0));
        let memo = in_parts(&asked);
        let again =
            load_desired_with(&GitTree::new(&repository, head).unwrap(), "jobs", &memo).unwrap();
        assert!(again.fresh.is_empty());
        assert_eq!(
            asked.load(Ordering::Relaxed),
            1,
            "every spec was in the first part: no other was waited for"
        );
        assert_eq!(memo.len(), kept.len());
        assert_eq!(
            asked.load(Ordering::Relaxed),
            3,
            "counting waits for every part"
        );

        // A changed spec's key is in no part: every part is waited for before it is parsed.
        write(
            dir.path(),
            "jobs/a.yaml",
            "job_id: a\njob_type: stream\nartifact_path: artifacts/a.jar\ndeployment: { parallelism: 2 }\n",
        );
        let changed = commit(dir.path());
        let asked = Arc::new(AtomicUsize::new(0));
        let loaded = load_desired_with(
            &GitTree::new(&repository, changed).unwrap(),
            "jobs",
            &in_parts(&asked),
        )
        .unwrap();
        assert_eq!(loaded.fresh.len(), 1);
        assert_eq!(
            loaded.desired.jobs["a"].spec.parallelism,
            std::num::NonZeroU32::new(2)
        );
        assert_eq!(asked.load(Ordering::Relaxed), 3);
    }
}
