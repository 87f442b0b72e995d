//! `${secret:NAME}` in SQL and program arguments, replaced from files at submit time.
//!
//! The agent never records a value: plans, status, SQLite and logs see the reference, and a keyed
//! fingerprint (HMAC-SHA256 under a key kept beside the state, mode 0600) tells when a value
//! changed, so the job is redeployed without the value being guessable from the records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};

use crate::config::Config;
use crate::limits::Limits;
use crate::spec::program::Program;
use crate::spec::{DesiredJob, SpecError};

const OPEN: &str = "${secret:";

/// Why a secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A reference is malformed.
    #[error(
        "`{reference}` is not a secret reference: write ${{secret:NAME}} with NAME made of letters, digits, `_`, `-` and `.`"
    )]
    BadReference {
        /// The text found.
        reference: String,
    },
    /// A SQL reference outside a string literal.
    #[error(
        "${{secret:{name}}} must stand inside a quoted string ('…${{secret:{name}}}…'), so its value cannot change the statement"
    )]
    OutsideString {
        /// The secret's name.
        name: String,
    },
    /// No folder to read from.
    #[error(
        "${{secret:{name}}} is used but the agent has no secrets folder: set `secrets.dir` in its config"
    )]
    NoFolder {
        /// The secret's name.
        name: String,
    },
    /// The file could not be read or is empty.
    #[error("${{secret:{name}}}: {reason}")]
    Unreadable {
        /// The secret's name.
        name: String,
        /// Why (names the file, never its content).
        reason: String,
    },
    /// The fingerprint key could not be read or created.
    #[error("secret fingerprint key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The names referenced in `text`, in order of first use.
pub fn references(text: &str) -> Result<Vec<String>, SecretError> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err(SecretError::BadReference {
                reference: rest[at..].chars().take(40).collect(),
            });
        };
        let name = &after[..end];
        if !valid_name(name) {
            return Err(SecretError::BadReference {
                reference: format!("{OPEN}{name}}}"),
            });
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        rest = &after[end + 1..];
    }
    Ok(names)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Every name a job's SQL and arguments reference, or the field with a malformed reference.
pub fn job_references(
    args: &[String],
    program: Option<&Program>,
) -> Result<Vec<String>, (&'static str, SecretError)> {
    let mut names = Vec::new();
    let statements = program
        .map(Program::statements)
        .transpose()
        .map_err(|e| {
            (
                "sql",
                SecretError::BadReference {
                    reference: e.to_string(),
                },
            )
        })?
        .unwrap_or_default();
    for statement in &statements {
        let found = references(&statement.text).map_err(|e| ("sql", e))?;
        let placeholders = found.iter().map(|n| (n.clone(), String::new())).collect();
        sql_substitute(&statement.text, &placeholders).map_err(|e| ("sql", e))?;
        for name in found {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for arg in args {
        for name in references(arg).map_err(|e| ("args", e))? {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// Replaces the references of one SQL statement (comments already removed by the splitter).
/// A reference must stand inside a single-quoted string literal; its value is placed there with
/// its quotes doubled, so a value can never end the literal. Double-quoted and backquoted
/// identifiers are skipped whole, whatever quotes they hold.
pub fn sql_substitute(
    text: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, SecretError> {
    let mut out = String::with_capacity(text.len());
    // The quote character of the literal or identifier the scan is in.
    let mut open: Option<char> = None;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with(OPEN) {
            let after = &rest[OPEN.len()..];
            let end = after.find('}').ok_or_else(|| SecretError::BadReference {
                reference: rest.chars().take(40).collect(),
            })?;
            let name = &after[..end];
            match open {
                Some('\'') => {}
                // Inside an identifier it is a name, not a reference.
                Some(_) => {
                    out.push_str(&rest[..OPEN.len() + end + 1]);
                    rest = &after[end + 1..];
                    continue;
                }
                None => {
                    return Err(SecretError::OutsideString {
                        name: name.to_string(),
                    });
                }
            }
            let value = values.get(name).ok_or_else(|| SecretError::NoFolder {
                name: name.to_string(),
            })?;
            out.push_str(&value.replace('\'', "''"));
            rest = &after[end + 1..];
            continue;
        }
        match (open, c) {
            (None, '\'' | '"' | '`') => open = Some(c),
            // A doubled quote closes and reopens: the same state after both.
            (Some(q), c) if c == q => open = None,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

/// Replaces the references of a program argument verbatim.
pub fn arg_substitute(
    text: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, SecretError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let end = after.find('}').ok_or_else(|| SecretError::BadReference {
            reference: rest[at..].chars().take(40).collect(),
        })?;
        let name = &after[..end];
        let value = values.get(name).ok_or_else(|| SecretError::NoFolder {
            name: name.to_string(),
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` with every value in `values` replaced by its reference: for Flink's answers, which may
/// quote a statement back.
pub fn redact(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    // Longest first, so a value containing another is replaced whole.
    let mut ordered: Vec<_> = values.iter().filter(|(_, v)| !v.is_empty()).collect();
    ordered.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (name, value) in ordered {
        let reference = format!("{OPEN}{name}}}");
        out = out.replace(value.as_str(), &reference);
        let quoted = value.replace('\'', "''");
        if quoted != *value {
            out = out.replace(&quoted, &reference);
        }
        // A message cut short may end in the first part of a value.
        for prefix_len in (4..value.len()).rev() {
            if let Some(prefix) = value.get(..prefix_len)
                && let Some(kept) = out.strip_suffix(prefix)
            {
                out = format!("{kept}{reference}");
                break;
            }
        }
    }
    out
}

/// The agent's secrets folder and fingerprint key.
pub struct Secrets {
    dir: Option<PathBuf>,
    prefix: String,
    key_file: PathBuf,
    size_limit: u64,
}

impl Secrets {
    /// The secrets of `config` (nothing is read until a job uses a secret).
    pub fn of(config: &Config) -> Secrets {
        Secrets {
            dir: config.secrets_dir.clone(),
            prefix: config.secrets_prefix.clone(),
            key_file: config.state.dir.join("secret-fingerprint.key"),
            size_limit: Limits::DEFAULT.secret_file_bytes,
        }
    }

    /// The values of `names`.
    pub fn values(&self, names: &[String]) -> Result<BTreeMap<String, String>, SecretError> {
        names
            .iter()
            .map(|name| Ok((name.clone(), self.value(name)?)))
            .collect()
    }

    fn value(&self, name: &str) -> Result<String, SecretError> {
        let dir = self.dir.as_ref().ok_or_else(|| SecretError::NoFolder {
            name: name.to_string(),
        })?;
        let path = dir.join(format!("{}{name}", self.prefix));
        let unreadable = |reason: String| SecretError::Unreadable {
            name: name.to_string(),
            reason,
        };
        let bytes = crate::util::read_file_limited(&path, self.size_limit)
            .map_err(|e| unreadable(format!("{}: {e}", path.display())))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| unreadable(format!("{} is not UTF-8", path.display())))?;
        // Files written with `echo` end in a newline that is not part of the secret.
        let value = text.strip_suffix('\n').unwrap_or(&text);
        let value = value.strip_suffix('\r').unwrap_or(value);
        if value.is_empty() {
            return Err(unreadable(format!("{} is empty", path.display())));
        }
        Ok(value.to_string())
    }

    fn key(&self) -> Result<Vec<u8>, SecretError> {
        let fail = |reason: String| SecretError::Key {
            path: self.key_file.display().to_string(),
            reason,
        };
        let read = || -> Result<Option<Vec<u8>>, SecretError> {
            match std::fs::read(&self.key_file) {
                Ok(key) if key.len() == 32 => Ok(Some(key)),
                Ok(key) => Err(fail(format!(
                    "holds {} bytes, expected 32; delete it to make a new key (jobs using secrets then redeploy once)",
                    key.len()
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(fail(e.to_string())),
            }
        };
        if let Some(key) = read()? {
            return Ok(key);
        }
        let mut key = [0u8; 32];
        getrandom(&mut key).map_err(|e| fail(e.to_string()))?;
        write_private(&self.key_file, &key).map_err(|e| fail(e.to_string()))?;
        // Another process may have won the race: whatever is on disk is the key.
        read()?.ok_or_else(|| fail("vanished after it was written".into()))
    }

    /// Fills each job's `secrets` with fingerprints of the values it references; every problem is
    /// reported against the spec file that made it.
    pub fn fingerprint_jobs<'a>(
        &self,
        jobs: impl Iterator<Item = &'a mut DesiredJob>,
    ) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut key = None;
        for job in jobs {
            let problem = |field: &str, e: SecretError| SpecError {
                file: job.file.to_string(),
                line: 0,
                column: 0,
                field: Some(field.to_string()),
                message: e.to_string(),
            };
            let names = match job_references(&job.spec.args, job.program.as_ref()) {
                Ok(names) if names.is_empty() => continue,
                Ok(names) => names,
                Err((field, e)) => {
                    errors.push(problem(field, e));
                    continue;
                }
            };
            let values = match self.values(&names) {
                Ok(values) => values,
                Err(e) => {
                    errors.push(problem("secrets", e));
                    continue;
                }
            };
            if key.is_none() {
                match self.key() {
                    Ok(k) => key = Some(k),
                    Err(e) => {
                        errors.push(problem("secrets", e));
                        continue;
                    }
                }
            }
            let key = key.as_deref().unwrap_or_default();
            job.secrets = values
                .iter()
                .map(|(name, value)| (name.clone(), fingerprint(key, name, value)))
                .collect();
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn fingerprint(key: &[u8], name: &str, value: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Writes a new file of mode 0600 whole or not at all: written beside it, synced, then linked
/// into place (a link never replaces a file another process made first).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(
        ".{}.{}.partial",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| match std::fs::hard_link(&partial, path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    });
    let _ = std::fs::remove_file(&partial);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, String> {
        BTreeMap::from([("DB_PW".to_string(), "it's s3cret".to_string())])
    }

    #[test]
    fn references_are_found_once_and_checked() {
        assert_eq!(
            references("a ${secret:DB_PW} b ${secret:x.y} ${secret:DB_PW}").unwrap(),
            vec!["DB_PW", "x.y"]
        );
        assert!(references("${secret:../etc/passwd}").is_err());
        assert!(references("${secret:open").is_err());
        assert!(references("${secret:}").is_err());
    }

    #[test]
    fn sql_values_stay_inside_their_string() {
        let text = "CREATE TABLE t (x INT) WITH ('password' = '${secret:DB_PW}')";
        assert_eq!(
            sql_substitute(text, &values()).unwrap(),
            "CREATE TABLE t (x INT) WITH ('password' = 'it''s s3cret')"
        );
        assert_eq!(
            sql_substitute("SELECT ${secret:DB_PW}", &values()),
            Err(SecretError::OutsideString {
                name: "DB_PW".into()
            })
        );
    }

    #[test]
    fn quotes_of_identifiers_and_comments_do_not_confuse_the_scan() {
        let text = "INSERT INTO `it's` SELECT \"a'b\", '${secret:DB_PW}' FROM t";
        assert_eq!(
            sql_substitute(text, &values()).unwrap(),
            "INSERT INTO `it's` SELECT \"a'b\", 'it''s s3cret' FROM t"
        );
        // Outside a string even after an identifier holding a quote.
        assert!(sql_substitute("SELECT `it's`, ${secret:DB_PW}", &values()).is_err());
        assert_eq!(
            sql_substitute("SELECT 'a''b', '${secret:DB_PW}'", &values()).unwrap(),
            "SELECT 'a''b', 'it''s s3cret'"
        );
    }

    #[test]
    fn systemd_credentials_are_read_by_their_prefix_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("job-secrets_DB_PW"), "pw\n").unwrap();
        std::fs::write(dir.path().join("webhook-secret"), "hook").unwrap();
        let secrets = Secrets {
            dir: Some(dir.path().to_path_buf()),
            prefix: "job-secrets_".into(),
            key_file: dir.path().join("key"),
            size_limit: crate::limits::Limits::DEFAULT.secret_file_bytes,
        };
        assert_eq!(secrets.value("DB_PW").unwrap(), "pw");
        assert!(matches!(
            secrets.value("webhook-secret"),
            Err(SecretError::Unreadable { .. })
        ));
    }

    #[test]
    fn a_value_cut_off_at_the_end_of_a_message_is_redacted_too() {
        let cut = "Flink: invalid option 'it's s3c";
        assert_eq!(
            redact(cut, &values()),
            "Flink: invalid option '${secret:DB_PW}"
        );
    }

    #[test]
    fn redaction_replaces_plain_and_quoted_values() {
        let said = "error near 'it''s s3cret' and it's s3cret";
        let redacted = redact(said, &values());
        assert!(!redacted.contains("s3cret"), "{redacted}");
        assert_eq!(
            arg_substitute("--pw=${secret:DB_PW}", &values()).unwrap(),
            "--pw=it's s3cret"
        );
    }
}
