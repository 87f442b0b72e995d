//! The one place YAML is parsed: serde-saphyr with strict options and resource budgets.

use serde::de::DeserializeOwned;

/// A YAML error reduced to a location and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// The parser's message without source snippet.
    pub message: String,
}

fn options() -> serde_saphyr::Options {
    // Defaults already bound events, depth, alias replays (alias bombs) and forbid duplicate keys.
    // Booleans must be true/false so `on`/`yes` never silently become `true`.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.with_snippet = false;
    options
}

/// Deserializes one YAML document with the project's strict options.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|error| {
        let location = error.location();
        YamlError {
            line: location.map(|l| l.line()).unwrap_or(0),
            column: location.map(|l| l.column()).unwrap_or(0),
            message: clean_message(&error.without_snippet().to_string()),
        }
    })
}

/// Drops the parser's own ` at line X column Y` suffix: our messages lead with `file:line:column`.
fn clean_message(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).trim();
    match first_line.rfind(" at line ") {
        Some(index) => first_line[..index].trim_end_matches(',').to_string(),
        None => first_line.to_string(),
    }
}
