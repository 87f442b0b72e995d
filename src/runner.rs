//! The runner JAR on this machine: `validate` hands every SQL pipeline of a checkout to its
//! `--check` mode (one JVM for all of them), which runs the DDL against an empty in-memory catalog
//! and explains the job statement, so a typo or an unknown column is reported with its file, line
//! and column before the change is merged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::reconcile::deployment::SQL_RUNNER_CLASS;
use crate::spec::program::Program;
use crate::spec::{DesiredJob, JobType, SpecError};

/// What the local check needs: the runner JAR, a Flink distribution and `java`.
#[derive(Debug, Clone)]
pub struct LocalRunner {
    /// The runner JAR (scripts/build-runner).
    pub jar: PathBuf,
    /// A Flink distribution whose `lib/` has the table planner.
    pub flink_home: PathBuf,
}

impl LocalRunner {
    /// The check's setup, or why it cannot run here (said in `validate`'s report, not an error:
    /// the static checks still ran).
    pub fn find(jar: Option<&Path>, flink_home: Option<&Path>) -> Result<LocalRunner, String> {
        let jar = jar.ok_or("no runner JAR (--runner or FLINK_GITOPS_RUNNER)")?;
        let flink_home = flink_home.ok_or("no Flink distribution (--flink-home or FLINK_HOME)")?;
        if !jar.is_file() {
            return Err(format!("runner JAR {} does not exist", jar.display()));
        }
        if !flink_home.join("lib").is_dir() {
            return Err(format!("{} has no lib/ folder", flink_home.display()));
        }
        let java = Command::new("java").arg("-version").output();
        if !java.is_ok_and(|o| o.status.success()) {
            return Err("`java` is not on PATH (a JDK 17 is needed)".into());
        }
        Ok(LocalRunner {
            jar: jar.to_path_buf(),
            flink_home: flink_home.to_path_buf(),
        })
    }

    /// Checks the SQL of every SQL job of the checkout at `root`; the problems found, located in
    /// their files. Pipelines that bring their own runner JAR (with their connectors) are checked
    /// with it, in a JVM of their own.
    pub fn check_sql<'a>(
        &self,
        root: &Path,
        jobs: impl Iterator<Item = &'a DesiredJob>,
    ) -> Result<Vec<SpecError>, String> {
        let mut by_runner: BTreeMap<PathBuf, Vec<&DesiredJob>> = BTreeMap::new();
        for job in jobs {
            if matches!(job.program, Some(Program::Sql { .. })) {
                let runner = match &job.spec.runner {
                    Some(path) => root.join(path.as_str()),
                    None => self.jar.clone(),
                };
                by_runner.entry(runner).or_default().push(job);
            }
        }
        let mut errors = Vec::new();
        for (runner, jobs) in by_runner {
            errors.extend(self.check_with(&runner, &jobs)?);
        }
        Ok(errors)
    }

    fn check_with(&self, runner: &Path, jobs: &[&DesiredJob]) -> Result<Vec<SpecError>, String> {
        let mut args: Vec<String> = Vec::new();
        let mut located: BTreeMap<String, Vec<(String, crate::spec::sql::Statement)>> =
            BTreeMap::new();
        for job in jobs {
            let Some(program) = &job.program else {
                continue;
            };
            let statements = program.statements_by_file().map_err(|e| e.to_string())?;
            args.extend(["--pipeline".to_string(), job.spec.job_id.clone()]);
            if job.spec.job_type == JobType::Batch {
                args.push("--batch".to_string());
            }
            for (_, statement) in &statements {
                let flag = match statement.kind {
                    crate::spec::sql::StatementKind::Job => "--job",
                    _ => "--statement",
                };
                args.push(flag.to_string());
                args.push(with_placeholder_secrets(&statement.text));
            }
            located.insert(
                job.spec.job_id.clone(),
                statements
                    .into_iter()
                    .map(|(file, s)| (file.to_string(), s))
                    .collect(),
            );
        }
        // The statements go through a file: a command line has limits that SQL files do not.
        let mut list =
            tempfile::NamedTempFile::new().map_err(|e| format!("a temporary file: {e}"))?;
        std::io::Write::write_all(&mut list, args.join("\0").as_bytes())
            .map_err(|e| format!("{}: {e}", list.path().display()))?;
        let output = Command::new("java")
            .arg("-cp")
            .arg(format!(
                "{}:{}/lib/*",
                runner.display(),
                self.flink_home.display()
            ))
            .arg(SQL_RUNNER_CLASS)
            .args(["--check", "--from"])
            .arg(list.path())
            .output()
            .map_err(|e| format!("java: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!("the SQL check failed to run: {last}"));
        }
        let mut errors = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.splitn(4, '\t').collect();
            let ["error", job_id, index, message] = fields[..] else {
                continue;
            };
            let statements = located.get(job_id).map(Vec::as_slice).unwrap_or_default();
            let index: usize = index.parse().unwrap_or(0);
            errors.push(locate(job_id, statements, index, &without_repeats(message)));
        }
        Ok(errors)
    }
}

/// `${secret:NAME}` stands inside string literals; any text keeps the statement valid.
fn with_placeholder_secrets(text: &str) -> String {
    let names = crate::secrets::references(text).unwrap_or_default();
    let values = names
        .into_iter()
        .map(|n| (n, "secret".to_string()))
        .collect();
    crate::secrets::sql_substitute(text, &values).unwrap_or_else(|_| text.to_string())
}

/// Flink says `line L, column C` within the statement: turn that into the file's line and column.
fn locate(
    job_id: &str,
    statements: &[(String, crate::spec::sql::Statement)],
    index: usize,
    message: &str,
) -> SpecError {
    let Some((file, statement)) = index.checked_sub(1).and_then(|i| statements.get(i)) else {
        let file = statements.last().map(|(f, _)| f.as_str()).unwrap_or(job_id);
        return SpecError {
            file: file.to_string(),
            line: 0,
            column: 0,
            field: None,
            message: format!("Flink's SQL check of {job_id}: {message}"),
        };
    };
    let (line, column) = match position(message) {
        Some((1, column)) => (statement.line, statement.column + column - 1),
        Some((line, column)) => (statement.line + line - 1, column),
        None => (statement.line, statement.column),
    };
    SpecError {
        file: file.clone(),
        line: line as u64,
        column: column as u64,
        field: None,
        message: format!("Flink's SQL check of {job_id}: {message}"),
    }
}

/// Flink wraps its exceptions in ones that repeat their first sentence ("SQL validation failed.
/// SQL validation failed. From line …"): say each sentence once.
fn without_repeats(message: &str) -> String {
    let mut sentences: Vec<&str> = Vec::new();
    for sentence in message.split_inclusive(". ") {
        if sentences.last().map(|s| s.trim()) != Some(sentence.trim()) {
            sentences.push(sentence);
        }
    }
    sentences.concat()
}

/// The first `line L, column C` in Flink's message (not fooled by words like "pipeline").
fn position(message: &str) -> Option<(usize, usize)> {
    message.match_indices("line ").find_map(|(at, _)| {
        let rest = &message[at + 5..];
        let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let rest = rest[line.len()..].strip_prefix(", column ")?;
        let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some((line.parse().ok()?, column.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flink_positions_map_to_the_file() {
        let statements =
            crate::spec::sql::split("SET 'a' = 'b';\n\n  INSERT INTO t\nSELECT x FORM s;")
                .unwrap()
                .into_iter()
                .map(|s| ("p.sql".to_string(), s))
                .collect::<Vec<_>>();
        let error = locate(
            "j",
            &statements,
            2,
            "SQL parse failed. Encountered \"s\" at line 2, column 15.",
        );
        assert_eq!(
            (error.file.as_str(), error.line, error.column),
            ("p.sql", 4, 15)
        );
        let error = locate(
            "j",
            &statements,
            2,
            "From line 1, column 13 to line 1, column 13: Object 't' not found",
        );
        assert_eq!((error.line, error.column), (3, 15));
        assert_eq!(position("no position"), None);
        assert_eq!(
            position("the pipeline failed at line 3, column 7"),
            Some((3, 7))
        );
        assert_eq!(
            without_repeats("SQL validation failed. SQL validation failed. From line 2: x"),
            "SQL validation failed. From line 2: x"
        );
    }
}
