//! Loading a whole revision: every spec file under the jobs folder, read, checked and identified.

use std::collections::BTreeMap;

use crate::limits::Limits;

use super::paths::is_spec_file;
use super::{
    Artifact, DesiredJob, DesiredState, EntryKind, JobSpec, RepoPath, SpecError, SpecTree,
    TreeError, parse_spec, program,
};

/// Reads and validates every spec under `jobs_dir` of `tree`; reports every problem of every file.
pub fn load_desired(tree: &dyn SpecTree, jobs_dir: &str) -> Result<DesiredState, Vec<SpecError>> {
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
        Ok(None) => return Ok(DesiredState::default()),
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
    let mut jobs: BTreeMap<String, DesiredJob> = BTreeMap::new();
    for (path, kind) in files.iter().filter(|(p, _)| is_spec_file(p)) {
        let file = path.as_str();
        match kind {
            EntryKind::File => {}
            EntryKind::Symlink(target) => {
                errors.push(whole(
                    file,
                    format!("is a symlink (to `{target}`); spec files must be regular files"),
                ));
                continue;
            }
            _ => {
                errors.push(whole(file, "is not a regular file".into()));
                continue;
            }
        }
        let bytes = match tree.read(path, Limits::DEFAULT.spec_file_bytes) {
            Ok(b) => b,
            Err(e) => {
                errors.push(whole(file, strip_path_prefix(&e.to_string(), file)));
                continue;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                errors.push(whole(
                    file,
                    format!(
                        "is not UTF-8 (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                ));
                continue;
            }
        };
        let spec = match parse_spec(file, &text) {
            Ok(spec) => spec,
            Err(mut problems) => {
                errors.append(&mut problems);
                continue;
            }
        };
        let program = match program::load(tree, file, &spec) {
            Ok(program) => program,
            Err(mut problems) => {
                errors.append(&mut problems);
                continue;
            }
        };
        if let Err((field, e)) = crate::secrets::job_references(&spec.args, program.as_ref()) {
            errors.push(SpecError {
                file: file.to_string(),
                line: 0,
                column: 0,
                field: Some(field.into()),
                message: e.to_string(),
            });
            continue;
        }
        let artifact_content = match artifact_content(tree, &spec, program.as_ref()) {
            Ok(id) => id,
            Err(message) => {
                errors.push(SpecError {
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
                });
                continue;
            }
        };
        if let Some(first) = jobs.get(&spec.job_id) {
            errors.push(SpecError {
                file: file.to_string(),
                line: 0,
                column: 0,
                field: Some("job_id".into()),
                message: format!(
                    "`{}` is already used by {}; job ids must be unique",
                    spec.job_id, first.file
                ),
            });
            continue;
        }
        jobs.insert(
            spec.job_id.clone(),
            DesiredJob {
                spec,
                file: path.clone(),
                artifact_content,
                program,
                secrets: BTreeMap::new(),
            },
        );
    }
    let complete = errors.is_empty();
    errors.extend(super::dependencies::check_graph(&jobs, complete));
    if errors.is_empty() {
        Ok(DesiredState { jobs })
    } else {
        Err(errors)
    }
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
