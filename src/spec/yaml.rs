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
            message: friendlier(clean_message(&error.without_snippet().to_string())),
        }
    })
}

/// The dotted key path of the block-style YAML key on 1-based `line`, found from indentation.
///
/// Serde errors carry a position but not the field; this recovers the field name for messages.
pub fn key_path_at(text: &str, line: u64) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let key_of = |raw: &str| -> Option<(usize, String)> {
        let body = raw.trim_start();
        let indent = raw.len() - body.len();
        let body = body.strip_prefix("- ").unwrap_or(body);
        if body.starts_with('#') {
            return None;
        }
        let (key, _) = body.split_once(':')?;
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        let simple = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.$".contains(c));
        simple.then(|| (indent, key.to_string()))
    };
    let (mut indent, first) = key_of(lines.get(index)?)?;
    let mut path = vec![first];
    for raw in lines[..index].iter().rev() {
        if indent == 0 {
            break;
        }
        if let Some((parent_indent, key)) = key_of(raw).filter(|(parent, _)| *parent < indent) {
            path.push(key);
            indent = parent_indent;
        }
    }
    path.reverse();
    Some(path.join("."))
}

/// Drops the parser's own ` at line X column Y` suffix: our messages lead with `file:line:column`.
fn clean_message(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).trim();
    match first_line.rfind(" at line ") {
        Some(index) => first_line[..index].trim_end_matches(',').to_string(),
        None => first_line.to_string(),
    }
}

fn friendlier(message: String) -> String {
    if message.contains("untagged enum FlinkValue") {
        "must be a string, number or boolean (Flink options are flat `key: value` pairs)".into()
    } else if message.starts_with("budget breached") {
        format!("refused: the document expands beyond the YAML limits (an alias bomb?): {message}")
    } else if let Some((head, _)) = message.split_once(", set DuplicateKeyPolicy") {
        format!("{head} (each key may appear once)")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_follow_indentation() {
        let text = "a: 1\ndeployment:\n  parallelism: 0\n  nested:\n    deep: x\nflat: { k: v }\n";
        assert_eq!(key_path_at(text, 1).as_deref(), Some("a"));
        assert_eq!(
            key_path_at(text, 3).as_deref(),
            Some("deployment.parallelism")
        );
        assert_eq!(
            key_path_at(text, 5).as_deref(),
            Some("deployment.nested.deep")
        );
        assert_eq!(key_path_at(text, 6).as_deref(), Some("flat"));
        assert_eq!(key_path_at(text, 99), None);
    }
}
