//! What runs (`artifact_path`, `artifact_url`, `sql` or `python`) and the runner, signature and entry class that go with it.

use serde_saphyr::Spanned;

use super::Checker;
use crate::spec::paths::program_path;
use crate::spec::raw::{RawSpec, SqlFiles};
use crate::spec::{Artifact, RepoPath};

/// Exactly one of `artifact_path`, `artifact_url`, `sql` and `python`, checked.
pub(super) fn validate_artifact(raw: &RawSpec, check: &mut Checker<'_>) -> Option<Artifact> {
    const ONE_OF: &str = "set exactly one of `artifact_path`, `artifact_url`, `sql` and `python`";
    let given: Vec<(&str, serde_saphyr::Location)> = [
        (
            "artifact_path",
            raw.artifact_path.as_ref().map(|s| s.referenced),
        ),
        (
            "artifact_url",
            raw.artifact_url.as_ref().map(|s| s.referenced),
        ),
        ("sql", raw.sql.as_ref().map(|s| s.referenced)),
        ("python", raw.python.as_ref().map(|s| s.referenced)),
    ]
    .into_iter()
    .filter_map(|(name, at)| at.map(|at| (name, at)))
    .collect();
    if given.is_empty() {
        check.whole_file(
            Some("artifact_path"),
            "is required (or `artifact_url` with `artifact_signature`, or `sql`, or `python`)",
        );
        return None;
    }
    if given.len() > 1 {
        for (name, at) in &given[1..] {
            check.at(
                &Spanned::new((), *at, *at),
                name,
                format!("{ONE_OF}; `{}` is set too", given[0].0),
            );
        }
        return None;
    }
    if let Some(path) = &raw.artifact_path {
        return match RepoPath::parse(&path.value) {
            Ok(p) if p.is_root() => {
                check.at(path, "artifact_path", "must name a file");
                None
            }
            Ok(p) => Some(Artifact::Path(p)),
            Err(reason) => {
                check.at(path, "artifact_path", reason);
                None
            }
        };
    }
    if let Some(url) = &raw.artifact_url {
        return match url::Url::parse(&url.value) {
            Ok(u) if matches!(u.scheme(), "https" | "file") => {
                Some(Artifact::Url(url.value.clone()))
            }
            Ok(u) => {
                check.at(
                    url,
                    "artifact_url",
                    format!(
                        "scheme `{}` is not allowed; use https:// or file://",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                check.at(
                    url,
                    "artifact_url",
                    format!("`{}` is not a URL: {e}", url.value),
                );
                None
            }
        };
    }
    if let Some(sql) = &raw.sql {
        let names = match &sql.value {
            SqlFiles::One(name) => vec![name.clone()],
            SqlFiles::Many(names) => names.clone(),
        };
        if names.is_empty() {
            check.at(
                sql,
                "sql",
                "names no file; write `sql: path/to/file.sql` or a list of files",
            );
            return None;
        }
        let mut files: Vec<RepoPath> = Vec::new();
        for name in &names {
            match program_path(name, ".sql") {
                Ok(path) if files.contains(&path) => {
                    check.at(sql, "sql", format!("`{path}` is listed twice"));
                }
                Ok(path) => files.push(path),
                Err(reason) => check.at(sql, "sql", reason),
            }
        }
        return (files.len() == names.len()).then_some(Artifact::Sql { files });
    }
    let python = raw.python.as_ref()?;
    let Some(entry) = &python.value.entry else {
        check.at(
            python,
            "python.entry",
            "is required: the program's main `.py` file in the repository",
        );
        return None;
    };
    let entry = match program_path(entry, ".py") {
        Ok(entry) => Some(entry),
        Err(reason) => {
            check.at(python, "python.entry", reason);
            None
        }
    };
    let mut files = Vec::new();
    for name in python.value.files.iter().flatten() {
        match RepoPath::parse(name) {
            Ok(path) if path.is_root() => check.at(
                python,
                "python.files",
                "`.` would ship the whole repository; name the folders the program needs",
            ),
            Ok(path) => files.push(path),
            Err(reason) => check.at(python, "python.files", reason),
        }
    }
    let listed = python.value.files.as_ref().map_or(0, Vec::len);
    (files.len() == listed).then_some(Artifact::Python {
        entry: entry?,
        files,
    })
}

/// `runner:` names a JAR in the repository, and only SQL and Python jobs have a runner.
pub(super) fn validate_runner(
    raw: &RawSpec,
    artifact: Option<&Artifact>,
    check: &mut Checker<'_>,
) -> Option<RepoPath> {
    let runner = raw.runner.as_ref()?;
    if matches!(artifact, Some(Artifact::Path(_) | Artifact::Url(_))) {
        check.at(
            runner,
            "runner",
            "only SQL and Python jobs have a runner; a JAR job is its own entry point",
        );
        return None;
    }
    match program_path(&runner.value, ".jar") {
        Ok(path) => Some(path),
        Err(reason) => {
            check.at(runner, "runner", reason);
            None
        }
    }
}

/// `artifact_signature:` pins a downloaded JAR's sha256, and only a JAR's.
pub(super) fn validate_signature(
    raw: &RawSpec,
    artifact: Option<&Artifact>,
    check: &mut Checker<'_>,
) -> Option<String> {
    let artifact_sha256 = raw.artifact_signature.as_ref().and_then(|sig| {
        let digest = sig.value.strip_prefix("sha256:");
        match digest {
            Some(hexdigits)
                if hexdigits.len() == 64 && hexdigits.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(hexdigits.to_ascii_lowercase())
            }
            _ => {
                check.at(
                    sig,
                    "artifact_signature",
                    format!(
                        "`{}` must be `sha256:` followed by 64 hex digits",
                        sig.value
                    ),
                );
                None
            }
        }
    });
    if let (Some(Artifact::Sql { .. } | Artifact::Python { .. }), Some(sig)) =
        (artifact, &raw.artifact_signature)
    {
        check.at(
            sig,
            "artifact_signature",
            "pins a downloaded JAR; SQL and Python sources are read from the signed commit itself",
        );
    }
    if let (Some(Artifact::Sql { .. } | Artifact::Python { .. }), Some(class)) =
        (artifact, &raw.entry_class)
    {
        check.at(
            class,
            "entry_class",
            "does not apply to SQL and Python jobs: the runner JAR is their entry point",
        );
    }
    if let (Some(Artifact::Sql { .. }), Some(first)) =
        (artifact, raw.args.as_ref().and_then(|a| a.first()))
    {
        check.at(first, "args", "SQL jobs take no program arguments: write values into the SQL (`${secret:NAME}` for secrets)");
    }
    if let (Some(Artifact::Url(_)), None, Some(url)) =
        (artifact, &raw.artifact_signature, &raw.artifact_url)
    {
        check.at(url, "artifact_signature", "is required with `artifact_url`: a downloaded JAR must have its sha256 pinned in the signed spec");
    }
    artifact_sha256
}

/// `entry_class:` is a Java class name, and only JAR jobs have one.
pub(super) fn validate_entry_class(raw: &RawSpec, check: &mut Checker<'_>) -> Option<String> {
    raw.entry_class.as_ref().and_then(|class| {
        if valid_java_class(&class.value) {
            Some(class.value.clone())
        } else {
            check.at(
                class,
                "entry_class",
                format!("`{}` is not a Java class name", class.value),
            );
            None
        }
    })
}

fn valid_java_class(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
}
