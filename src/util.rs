//! Small helpers shared by several subsystems: durations, bounded reads, hashing.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Parses a human duration such as `30s`, `5m`, `1h30m` or `500ms`.
///
/// A bare number is refused: a unit makes the intent explicit (`30` could mean seconds or milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write it with a unit, e.g. `30s` or `5m`".into());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` has no unit; write e.g. `{trimmed}s` or `{trimmed}ms`"
        ));
    }
    let duration = humantime::parse_duration(trimmed)
        .map_err(|e| format!("`{trimmed}` is not a duration ({e}); use e.g. `30s`, `5m`, `1h`"))?;
    // Far larger values overflow clock arithmetic (and mean nothing for an agent that polls).
    if duration > MAX_DURATION {
        return Err(format!(
            "`{trimmed}` is longer than the 10 years any setting may take"
        ));
    }
    Ok(duration)
}

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Logs a warning when a secret file can be read by its group or by others.
pub fn warn_if_exposed(path: &std::path::Path, field: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "{field}: the secret file is readable by its group or by others; make it 0600 (or use a systemd credential)"
        );
    }
}

/// An error and every `source()` under it, joined by `: ` (transport errors hide the useful part there).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Formats a duration the way users write it in config files (`30s`, `5m`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Reads at most `limit` bytes of a file; a larger file is an error naming the limit.
pub fn read_file_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut buffer = Vec::new();
    file.take(limit + 1).read_to_end(&mut buffer)?;
    if buffer.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(buffer)
}

/// Hex-encoded SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The current wall-clock time; one place so tests and logs agree on the format.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
