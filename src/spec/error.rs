//! The one error type of spec checking: a problem located in a spec file.

use std::fmt;

use serde::Serialize;

/// One problem with one spec file, located as precisely as the YAML allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecError {
    /// Repo-relative file.
    pub file: String,
    /// 1-based line (0 when the whole file is meant).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Dotted name of the field, when one field is at fault.
    pub field: Option<String>,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SpecError {}
