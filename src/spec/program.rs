//! The SQL and Python sources of a spec, read from the revision's own tree (so the commit's
//! signature covers them) and checked before anything is submitted.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::limits::{Limits, in_units};

use super::sql::{self, Statement, StatementKind};
use super::{Artifact, EntryKind, JobSpec, RepoPath, SpecError, SpecTree, TreeError};

/// A SQL file as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlFile {
    /// Repo path.
    pub path: String,
    /// Its text.
    pub text: String,
}

/// A Python source (or data) file as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonFile {
    /// Repo path.
    pub path: String,
    /// Its bytes, base64: Python files need not be UTF-8, and run requests carry text.
    pub base64: String,
}

/// The program a SQL or Python spec runs, independent of the repository once loaded: a rollback
/// redeploys it exactly from the agent's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Program {
    /// SQL files executed in order.
    Sql {
        /// The files.
        files: Vec<SqlFile>,
    },
    /// A PyFlink program.
    Python {
        /// Repo path of the main file.
        entry: String,
        /// Every file shipped, the entry included.
        files: Vec<PythonFile>,
    },
}

impl Program {
    /// Every file with its text, in order (a Python file that is not UTF-8 shown lossily): what a
    /// reviewer diffs.
    pub fn texts(&self) -> Vec<(String, String)> {
        match self {
            Program::Sql { files } => files
                .iter()
                .map(|f| (f.path.clone(), f.text.clone()))
                .collect(),
            Program::Python { files, .. } => {
                use base64::Engine;
                files
                    .iter()
                    .map(|f| {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(&f.base64)
                            .unwrap_or_default();
                        (f.path.clone(), String::from_utf8_lossy(&bytes).into_owned())
                    })
                    .collect()
            }
        }
    }

    /// The statements of a SQL program in execution order (it was split once already when it was
    /// loaded, so this cannot fail for a loaded program).
    pub fn statements(&self) -> Result<Vec<Statement>, sql::SqlError> {
        let Program::Sql { files } = self else {
            return Ok(Vec::new());
        };
        let mut all = Vec::new();
        for file in files {
            all.extend(sql::split(&file.text)?);
        }
        Ok(all)
    }

    /// The statements of a SQL program with the file each comes from.
    pub fn statements_by_file(&self) -> Result<Vec<(&str, Statement)>, sql::SqlError> {
        let Program::Sql { files } = self else {
            return Ok(Vec::new());
        };
        let mut all = Vec::new();
        for file in files {
            all.extend(
                sql::split(&file.text)?
                    .into_iter()
                    .map(|s| (file.path.as_str(), s)),
            );
        }
        Ok(all)
    }

    /// A digest of every path and byte of the program, so any change to a source is an upgrade.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let mut add = |path: &str, bytes: &[u8]| {
            hash.update(path.as_bytes());
            hash.update([0]);
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        match self {
            Program::Sql { files } => {
                for file in files {
                    add(&file.path, file.text.as_bytes());
                }
            }
            Program::Python { entry, files } => {
                add("entry", entry.as_bytes());
                for file in files {
                    add(&file.path, file.base64.as_bytes());
                }
            }
        }
        hex::encode(hash.finalize())
    }
}

/// The folder of a Python entry (empty for a file at the repository root): the program's root.
pub fn python_root(entry: &str) -> &str {
    entry.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// A shipped file's path below the program's root.
pub fn python_relative<'a>(entry: &str, path: &'a str) -> &'a str {
    let root = python_root(entry);
    if root.is_empty() {
        path
    } else {
        path.strip_prefix(root)
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or(path)
    }
}

/// Reads and checks the sources of `spec` (declared in `spec_file`), if it is a SQL or Python job.
pub fn load(
    tree: &dyn SpecTree,
    spec_file: &str,
    spec: &JobSpec,
) -> Result<Option<Program>, Vec<SpecError>> {
    match &spec.artifact {
        Artifact::Path(_) | Artifact::Url(_) => Ok(None),
        Artifact::Sql { files } => load_sql(tree, spec_file, files).map(Some),
        Artifact::Python { entry, files } => load_python(tree, spec_file, entry, files).map(Some),
    }
}

fn error(file: &str, line: usize, message: String) -> SpecError {
    SpecError {
        file: file.to_string(),
        line: line as u64,
        column: u64::from(line > 0),
        field: None,
        message,
    }
}

/// The bytes of a regular file named by `field` of the spec, or why it cannot be used.
fn read_source(
    tree: &dyn SpecTree,
    spec_file: &str,
    field: &str,
    path: &RepoPath,
) -> Result<Vec<u8>, SpecError> {
    let named_by = format!("named by `{field}` in {spec_file}");
    let refuse = |message: String| error(path.as_str(), 0, format!("{message} ({named_by})"));
    match tree.entry(path) {
        Ok(Some(EntryKind::File)) => {}
        Ok(None) => return Err(refuse(format!("does not exist in {}", tree.describe()))),
        Ok(Some(EntryKind::Symlink(target))) => {
            return Err(refuse(format!(
                "is a symlink (to `{target}`); SQL and Python sources must be regular files"
            )));
        }
        Ok(Some(EntryKind::Dir)) => return Err(refuse("is a folder, not a file".into())),
        Ok(Some(EntryKind::Other)) => return Err(refuse("is not a regular file".into())),
        Err(e) => return Err(refuse(e.to_string())),
    }
    tree.read(path, Limits::DEFAULT.source_file_bytes)
        .map_err(|e| match e {
            TreeError::TooLarge { size, limit, .. } => refuse(format!(
                "is {size} bytes; a source file may be at most {limit} bytes ({})",
                in_units(limit)
            )),
            other => refuse(other.to_string()),
        })
}

/// Why the sources of one job, `total` bytes of `kind` files, are refused.
fn too_large_a_program(kind: &str, total: u64) -> String {
    let limit = Limits::DEFAULT.program_bytes;
    format!(
        "its {kind} files hold {total} bytes together; a job's sources may be at most {limit} bytes ({})",
        in_units(limit)
    )
}

fn load_sql(
    tree: &dyn SpecTree,
    spec_file: &str,
    paths: &[RepoPath],
) -> Result<Program, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let mut total = 0u64;
    // (file, line) of the job statement, once seen.
    let mut job_at: Option<(String, usize)> = None;
    for path in paths {
        let file = path.as_str();
        let bytes = match read_source(tree, spec_file, "sql", path) {
            Ok(bytes) => bytes,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        total += bytes.len() as u64;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                errors.push(error(
                    file,
                    0,
                    format!(
                        "is not UTF-8 (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                ));
                continue;
            }
        };
        let statements = match sql::split(&text) {
            Ok(statements) => statements,
            Err(e) => {
                let line = match e {
                    sql::SqlError::Unterminated { line, .. }
                    | sql::SqlError::UnclosedStatementSet { line } => line,
                };
                errors.push(error(file, line, e.to_string()));
                continue;
            }
        };
        if statements.is_empty() {
            errors.push(error(
                file,
                0,
                format!("has no SQL statements (named by `sql` in {spec_file})"),
            ));
        }
        for statement in &statements {
            let first_word = statement
                .text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            if let Some((job_file, job_line)) = &job_at {
                let what = if statement.kind == StatementKind::Job {
                    format!(
                        "a second job statement ({first_word}): {spec_file} runs exactly one job; put it in a spec of its own or join both in one EXECUTE STATEMENT SET"
                    )
                } else {
                    format!(
                        "`{first_word}` comes after the job statement at {job_file}:{job_line}; the INSERT or EXECUTE STATEMENT SET must be last"
                    )
                };
                errors.push(error(file, statement.line, what));
                continue;
            }
            if let Some(why) = refused_setup(&statement.text) {
                errors.push(error(file, statement.line, why));
                continue;
            }
            match statement.kind {
                StatementKind::Setup => {}
                StatementKind::Job => job_at = Some((file.to_string(), statement.line)),
                StatementKind::Other => errors.push(error(
                    file,
                    statement.line,
                    format!("`{first_word}` does not belong in a deployed pipeline: it runs SET, DDL and views, then one INSERT or EXECUTE STATEMENT SET"),
                )),
            }
        }
        files.push(SqlFile {
            path: file.to_string(),
            text,
        });
    }
    if total > Limits::DEFAULT.program_bytes {
        errors.push(error(spec_file, 0, too_large_a_program("SQL", total)));
    }
    if errors.is_empty() && job_at.is_none() {
        let last = paths.last().map(RepoPath::as_str).unwrap_or(spec_file);
        errors.push(error(
            last,
            0,
            format!("no INSERT or EXECUTE STATEMENT SET in the SQL of {spec_file}: a pipeline must write somewhere"),
        ));
    }
    if errors.is_empty() {
        Ok(Program::Sql { files })
    } else {
        Err(errors)
    }
}

/// Setup statements a spec may not run: options the agent owns (as in `flink_config`), and code
/// loaded from outside the signed repository.
fn refused_setup(text: &str) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    if words.first() == Some(&"SET") || words.first() == Some(&"RESET") {
        let key = text
            .split('\'')
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some((_, why)) = super::AGENT_OWNED_OPTIONS.iter().find(|(k, _)| *k == key) {
            return Some(format!("`{key}` is set by the agent: {why}"));
        }
        if key.starts_with("$internal.") {
            return Some(format!(
                "`{key}` is Flink's internal option; the agent sets what it needs"
            ));
        }
    }
    let loads_code = words
        .first()
        .is_some_and(|w| *w == "CREATE" || *w == "ALTER")
        && words.contains(&"FUNCTION")
        && words.windows(2).any(|w| w == ["USING", "JAR"]);
    loads_code.then(|| {
        "`CREATE FUNCTION … USING JAR` loads code that is neither pinned nor signed: put the function's classes in the spec's runner JAR (`runner:`), which is verified like any JAR".to_string()
    })
}

/// More files than this in a Python program's folders are refused (they travel in one request).
const PYTHON_FILE_LIMIT: usize = 1000;

fn load_python(
    tree: &dyn SpecTree,
    spec_file: &str,
    entry: &RepoPath,
    shipped: &[RepoPath],
) -> Result<Program, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut paths = vec![(entry.clone(), "python.entry")];
    for path in shipped {
        match tree.entry(path) {
            Ok(Some(EntryKind::Dir)) => match tree.walk(path) {
                Ok(found) => {
                    for (file, kind) in found {
                        match kind {
                            EntryKind::File => paths.push((file, "python.files")),
                            EntryKind::Symlink(target) => errors.push(error(
                                file.as_str(),
                                0,
                                format!("is a symlink (to `{target}`) in a folder named by `python.files` in {spec_file}; shipped files must be regular files"),
                            )),
                            _ => {}
                        }
                    }
                }
                Err(e) => errors.push(error(path.as_str(), 0, e.to_string())),
            },
            // Files, and what cannot be shipped, get read_source's verdict.
            _ => paths.push((path.clone(), "python.files")),
        }
    }
    let mut files: Vec<PythonFile> = Vec::new();
    let mut total = 0u64;
    // The entry's folder is the program's root on the cluster, as if run there with `python`.
    let root = python_root(entry.as_str());
    if paths.len() > PYTHON_FILE_LIMIT {
        errors.push(error(
            spec_file,
            0,
            format!(
                "`python` ships {} files; a job may ship at most {PYTHON_FILE_LIMIT}",
                paths.len()
            ),
        ));
        return Err(errors);
    }
    for (path, field) in paths {
        if files.iter().any(|f| f.path == path.as_str()) {
            continue;
        }
        if total > Limits::DEFAULT.program_bytes {
            // Stop reading: the total is already too large.
            break;
        }
        if !root.is_empty() && !path.as_str().starts_with(&format!("{root}/")) {
            errors.push(error(
                path.as_str(),
                0,
                format!("is outside `{root}`, the folder of `python.entry` in {spec_file}: the program's files are shipped relative to that folder, so they must lie below it"),
            ));
            continue;
        }
        match read_source(tree, spec_file, field, &path) {
            Ok(bytes) => {
                total += bytes.len() as u64;
                files.push(PythonFile {
                    path: path.as_str().to_string(),
                    base64: base64::engine::general_purpose::STANDARD.encode(bytes),
                });
            }
            Err(e) => errors.push(e),
        }
    }
    if total > Limits::DEFAULT.program_bytes {
        errors.push(error(spec_file, 0, too_large_a_program("Python", total)));
    }
    if errors.is_empty() {
        Ok(Program::Python {
            entry: entry.as_str().to_string(),
            files,
        })
    } else {
        Err(errors)
    }
}
