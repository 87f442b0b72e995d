//! Loading a whole revision: every spec file under the jobs folder, read, checked and identified.

use std::collections::BTreeMap;

use crate::limits::Limits;

use super::memo::{MemoEntry, RecordingTree, SpecMemo};
use super::paths::is_spec_file;
use super::{
    Artifact, DesiredJob, DesiredState, EntryKind, JobSpec, RepoPath, SpecError, SpecTree,
    TreeError, parse_spec, program,
};

/// Reads and validates every spec under `jobs_dir` of `tree`; reports every problem of every file.
pub fn load_desired(tree: &dyn SpecTree, jobs_dir: &str) -> Result<DesiredState, Vec<SpecError>> {
    load_desired_with(tree, jobs_dir, &SpecMemo::none()).map(|loaded| loaded.desired)
}

/// A revision's desired state, and what the spec memo should keep of it.
pub struct Loaded {
    /// The jobs.
    pub desired: DesiredState,
    /// Entries for the specs the memo did not have.
    pub fresh: Vec<MemoEntry>,
    /// The keys of every spec of this revision the memo keeps (old entries not among them can go).
    pub kept: Vec<String>,
}

/// [`load_desired`], taking each spec whose file and everything it names are unchanged from
/// `memo` instead of parsing it again.
pub fn load_desired_with(
    tree: &dyn SpecTree,
    jobs_dir: &str,
    memo: &SpecMemo,
) -> Result<Loaded, Vec<SpecError>> {
    let dir = RepoPath::parse(jobs_dir).map_err(|reason| {
        vec![SpecError {
            file: jobs_dir.to_string(),
            line: 0,
            column: 0,
            field: Some("repo.jobs_dir".into()),
            message: reason,
        }]
    })?;
    let whole = |file: &str, message: String| SpecError {
        file: file.to_string(),
        line: 0,
        column: 0,
        field: None,
        message,
    };
    match tree.entry(&dir) {
        Ok(Some(EntryKind::Dir)) => {}
        // Git does not keep empty folders: removing the last spec removes the folder.
        Ok(None) => {
            return Ok(Loaded {
                desired: DesiredState::default(),
                fresh: Vec::new(),
                kept: Vec::new(),
            });
        }
        Ok(Some(_)) => {
            return Err(vec![whole(
                dir.as_str(),
                format!(
                    "the jobs folder `{dir}` is not a folder in {}",
                    tree.describe()
                ),
            )]);
        }
        Err(e) => return Err(vec![whole(dir.as_str(), e.to_string())]),
    }
    let files = tree.walk(&dir).map_err(|e| match &e {
        TreeError::BadName { path, reason } => vec![whole(
            path,
            format!("{reason}; rename it (a spec the agent cannot name is never taken as deleted)"),
        )],
        _ => vec![whole(dir.as_str(), e.to_string())],
    })?;

    let mut errors = Vec::new();
    // Jobs in file order, and where each job id was first seen.
    let mut loaded: Vec<DesiredJob> = Vec::with_capacity(files.len());
    let mut first_seen: foldhash::HashMap<String, usize> =
        foldhash::HashMap::with_capacity_and_hasher(files.len(), Default::default());
    let mut fresh = Vec::new();
    let mut kept = Vec::new();
    let mut checked = foldhash::HashMap::default();
    // Every spec file is named first: a memo read elsewhere is waited for only after that.
    let mut specs = Vec::new();
    for (path, kind) in files.iter().filter(|(p, _)| is_spec_file(p)) {
        let file = path.as_str();
        let named = match kind {
            EntryKind::File if memo.keeps() => Ok(tree
                .content_id(path)
                .ok()
                .and_then(|id| memo.key(path, &id))),
            EntryKind::File => Ok(None),
            EntryKind::Symlink(target) => Err(whole(
                file,
                format!("is a symlink (to `{target}`); spec files must be regular files"),
            )),
            _ => Err(whole(file, "is not a regular file".into())),
        };
        specs.push((path, named));
    }
    for (path, named) in specs {
        let file = path.as_str();
        let key = match named {
            Ok(key) => key,
            Err(problem) => {
                errors.push(problem);
                continue;
            }
        };
        let recalled = key
            .as_deref()
            .and_then(|key| memo.recall(key, path, tree, &mut checked));
        let job = match recalled {
            Some(job) => job,
            None => {
                let recording = RecordingTree::new(tree, path);
                match load_one(&recording, path) {
                    Ok(job) => {
                        if let Some(entry) =
                            key.clone().and_then(|key| recording.entry_for(key, &job))
                        {
                            fresh.push(entry);
                        }
                        job
                    }
                    Err(mut problems) => {
                        errors.append(&mut problems);
                        continue;
                    }
                }
            }
        };
        kept.extend(key);
        if let Some(first) = first_seen.get(&job.spec.job_id).map(|&at| &loaded[at]) {
            errors.push(SpecError {
                file: file.to_string(),
                line: 0,
                column: 0,
                field: Some("job_id".into()),
                message: format!(
                    "`{}` is already used by {}; job ids must be unique",
                    job.spec.job_id, first.file
                ),
            });
            continue;
        }
        first_seen.insert(job.spec.job_id.clone(), loaded.len());
        loaded.push(job);
    }
    // Built in one pass from job id order: inserted one by one, each key was searched for from
    // the root, and the large values were moved again whenever a node split.
    let mut ids: Vec<(String, usize)> = first_seen.into_iter().collect();
    ids.sort_unstable();
    let mut slots: Vec<Option<DesiredJob>> = loaded.into_iter().map(Some).collect();
    let jobs: BTreeMap<String, DesiredJob> = ids
        .into_iter()
        .filter_map(|(job_id, at)| slots[at].take().map(|job| (job_id, job)))
        .collect();
    let complete = errors.is_empty();
    errors.extend(super::dependencies::check_graph(&jobs, complete));
    if errors.is_empty() {
        Ok(Loaded {
            desired: DesiredState { jobs },
            fresh,
            kept,
        })
    } else {
        Err(errors)
    }
}

/// Reads, parses and checks one spec file with what it names in the tree.
fn load_one(tree: &dyn SpecTree, path: &RepoPath) -> Result<DesiredJob, Vec<SpecError>> {
    let file = path.as_str();
    let whole = |message: String| SpecError {
        file: file.to_string(),
        line: 0,
        column: 0,
        field: None,
        message,
    };
    let bytes = tree
        .read(path, Limits::DEFAULT.spec_file_bytes)
        .map_err(|e| vec![whole(strip_path_prefix(&e.to_string(), file))])?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![whole(format!(
                "is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))]);
        }
    };
    let spec = parse_spec(file, &text)?;
    let program = program::load(tree, file, &spec)?;
    if let Err((field, e)) = crate::secrets::job_references(&spec.args, program.as_ref()) {
        return Err(vec![SpecError {
            file: file.to_string(),
            line: 0,
            column: 0,
            field: Some(field.into()),
            message: e.to_string(),
        }]);
    }
    let artifact_content = match artifact_content(tree, &spec, program.as_ref()) {
        Ok(id) => id,
        Err(message) => {
            return Err(vec![SpecError {
                file: file.to_string(),
                line: 0,
                column: 0,
                field: Some(
                    if matches!(spec.artifact, Artifact::Path(_) | Artifact::Url(_)) {
                        "artifact_path"
                    } else {
                        "runner"
                    }
                    .into(),
                ),
                message,
            }]);
        }
    };
    Ok(DesiredJob::new(
        spec,
        path.clone(),
        artifact_content,
        program,
    ))
}

fn strip_path_prefix(message: &str, file: &str) -> String {
    message
        .strip_prefix(&format!("{file}: "))
        .unwrap_or(message)
        .to_string()
}

fn artifact_content(
    tree: &dyn SpecTree,
    spec: &JobSpec,
    program: Option<&program::Program>,
) -> Result<String, String> {
    let jar_content = |path: &RepoPath| {
        let resolved = tree
            .resolve_file(path)
            .map_err(|e| strip_path_prefix(&e.to_string(), path.as_str()))
            .map_err(|reason| format!("`{path}` {reason}"))?
            .ok_or_else(|| format!("`{path}` does not exist in {}", tree.describe()))?;
        if !resolved.as_str().ends_with(".jar") {
            return Err(format!("`{path}` must be a .jar file"));
        }
        tree.content_id(&resolved).map_err(|e| e.to_string())
    };
    match (&spec.artifact, program) {
        (Artifact::Url(_), _) => Ok(format!(
            "sha256:{}",
            spec.artifact_sha256.as_deref().unwrap_or_default()
        )),
        (Artifact::Path(path), _) => jar_content(path),
        (_, Some(program)) => {
            let sources = format!("sources-sha256:{}", program.digest());
            match &spec.runner {
                Some(runner) => Ok(format!("{sources};runner={}", jar_content(runner)?)),
                None => Ok(sources),
            }
        }
        (_, None) => Err("the SQL or Python sources were not loaded".into()),
    }
}
